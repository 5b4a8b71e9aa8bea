//! BatchNorm over the channels of NCHW tensors, with the two behaviours a practitioner needs
//! when freezing part of a pretrained network.
//!
//! In [`Mode::Infer`] (frozen blocks, evaluation, feature extraction) it normalises with its
//! running statistics and leaves them untouched, as a per-channel affine map. In
//! [`Mode::Train`] (trainable blocks) it normalises with the batch's statistics and updates
//! the running ones as PyTorch does: `running = (1 - momentum) * running + momentum * batch`,
//! with momentum 0.1 and the batch variance unbiased (n / (n - 1)) for the update only. The
//! running statistics are variables of the network (so they are transferred with their block
//! and saved in checkpoints) but never given to the optimizer.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use super::Mode;
use super::conv::{Activation, Epilogue};
use super::parameters::Parameters;
use super::{f32_values, host_values};

/// PyTorch's default BatchNorm momentum.
pub const MOMENTUM: f64 = 0.1;

/// The names of a BatchNorm's running statistics end so; they are not trainable.
pub const RUNNING: [&str; 2] = [".running_mean", ".running_var"];

/// Whether `parameter` is a running statistic rather than a trainable weight.
pub fn is_running_statistic(parameter: &str) -> bool {
    RUNNING.iter().any(|end| parameter.ends_with(end))
}

/// One BatchNorm layer: `weight`, `bias`, `running_mean`, `running_var` under its name.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    epsilon: f64,
}

impl BatchNorm {
    /// A fresh BatchNorm of `channels` named `name`: weight 1, bias 0, mean 0, variance 1.
    pub(crate) fn new(
        p: &mut Parameters,
        name: &str,
        channels: usize,
        epsilon: f64,
    ) -> candle_core::Result<Self> {
        Ok(BatchNorm {
            weight: p
                .constant(format!("{name}.weight"), channels, 1.0)?
                .as_tensor()
                .clone(),
            bias: p
                .constant(format!("{name}.bias"), channels, 0.0)?
                .as_tensor()
                .clone(),
            running_mean: p.constant(format!("{name}.running_mean"), channels, 0.0)?,
            running_var: p.constant(format!("{name}.running_var"), channels, 1.0)?,
            epsilon,
        })
    }

    /// Inference mode's normalisation as y = x * scale + shift per channel: (scale, shift).
    fn inference_affine(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let running_var = self.running_var.as_tensor();
        let scale = (&self.weight / (running_var + self.epsilon)?.sqrt()?)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Inference mode's normalisation and then `activation` as a convolution's epilogue.
    pub fn epilogue(&self, activation: Activation) -> candle_core::Result<Epilogue> {
        let (scale, shift) = self.inference_affine()?;
        Ok(Epilogue {
            scale: Some(scale.to_vec1()?),
            shift: Some(shift.to_vec1()?),
            activation,
        })
    }

    /// Normalises `x` (N, C, H, W) in `mode`; in training mode also updates the running
    /// statistics.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let channels = self.weight.dim(0)?;
        let per_channel = |t: &Tensor| t.reshape((1, channels, 1, 1));
        match mode {
            Mode::Infer => {
                let (scale, shift) = self.inference_affine()?;
                x.broadcast_mul(&per_channel(&scale)?)?
                    .broadcast_add(&per_channel(&shift)?)
            }
            Mode::Train => {
                let (batch, _, height, width) = x.dims4()?;
                let affine = (&self.weight, &self.bias);
                let (y, mean, variance) = if x.device().is_cpu() {
                    normalise_on_cpu(x, affine, self.epsilon)?
                } else {
                    normalise_in_tensor_ops(x, affine, self.epsilon)?
                };
                let n = batch * height * width;
                // PyTorch refuses a single value per channel; its update would divide by 0.
                let unbiased = if n > 1 {
                    n as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                let update = |running: &Var, batch: Tensor| -> candle_core::Result<()> {
                    let batch = batch.detach().flatten_all()?;
                    running.set(&((running.as_tensor() * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?)
                };
                update(&self.running_mean, mean)?;
                update(&self.running_var, (variance * unbiased)?)?;
                Ok(y)
            }
        }
    }
}

/// Training mode's normalisation with the batch's statistics, then the affine map:
/// (x - mean) / sqrt(variance + epsilon) * weight + bias, the mean and the biased variance per
/// channel, as any device runs it in tensor operations.
fn normalise_in_tensor_ops(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    epsilon: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim((0, 2, 3))?;
    let normalised = centred.broadcast_div(&(&variance + epsilon)?.sqrt()?)?;
    let per_channel = |t: &Tensor| t.reshape((1, t.dim(0)?, 1, 1));
    let y = normalised
        .broadcast_mul(&per_channel(weight)?)?
        .broadcast_add(&per_channel(bias)?)?;
    Ok((y, mean, variance))
}

/// What [`normalise_in_tensor_ops`] computes, as one CPU op.
fn normalise_on_cpu(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    epsilon: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let op = Normalise::new(epsilon);
    let y = x.contiguous()?.apply_op3(weight, bias, op.clone())?;
    let (mean, variance) = op.statistics(x.device())?;
    Ok((y, mean, variance))
}

/// A batch's mean and (biased) variance, per channel.
type Statistics = (Vec<f32>, Vec<f32>);

/// Training mode's normalisation on the CPU, as one op: per-channel batch mean and (biased)
/// variance, x̂ = (x - mean) / sqrt(variance + epsilon), y = x̂ weight + bias; and its
/// gradients dx = weight (dy - mean(dy) - x̂ mean(dy x̂)) / sqrt(variance + epsilon),
/// dweight = sum(dy x̂), dbias = sum(dy), each channel's sums in f64. In tensor operations it
/// was ten full-size allocations forward and more backward.
#[derive(Clone)]
struct Normalise {
    epsilon: f64,
    /// The batch's mean and variance per channel, from the forward pass; shared by the clone
    /// given to candle and the caller's.
    statistics: Arc<Mutex<Option<Statistics>>>,
}

impl Normalise {
    fn new(epsilon: f64) -> Self {
        Normalise {
            epsilon,
            statistics: Arc::new(Mutex::new(None)),
        }
    }

    /// The mean and variance the forward pass found, as (C,) tensors.
    fn statistics(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let guard = self.statistics.lock().expect("statistics lock");
        let (mean, variance) = guard.as_ref().expect("the forward pass ran");
        Ok((
            Tensor::new(mean.as_slice(), device)?,
            Tensor::new(variance.as_slice(), device)?,
        ))
    }

    fn scale(&self, variance: f32) -> f32 {
        (1.0 / (variance as f64 + self.epsilon).sqrt()) as f32
    }
}

/// Per channel of an NCHW tensor, the sum of `f(plane)` over its planes (plane = n * C + c),
/// channels in parallel.
fn per_channel_sums(batch: usize, channels: usize, f: impl Fn(usize) -> f64 + Sync) -> Vec<f64> {
    (0..channels)
        .into_par_iter()
        .map(|c| (0..batch).map(|n| f(n * channels + c)).sum())
        .collect()
}

impl CustomOp3 for Normalise {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let plane = height * width;
        let xs = f32_values(x, layout)?;
        let weight = f32_values(weight, weight_layout)?;
        let bias = f32_values(bias, bias_layout)?;
        let count = (batch * plane) as f64;
        let of = |p: usize| &xs[p * plane..][..plane];
        let mean: Vec<f64> =
            per_channel_sums(batch, channels, |p| of(p).iter().map(|&v| v as f64).sum())
                .into_iter()
                .map(|sum| sum / count)
                .collect();
        let variance: Vec<f64> = per_channel_sums(batch, channels, |p| {
            let m = mean[p % channels];
            of(p).iter().map(|&v| (v as f64 - m).powi(2)).sum()
        })
        .into_iter()
        .map(|sum| sum / count)
        .collect();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let variance: Vec<f32> = variance.iter().map(|&v| v as f32).collect();
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(plane).enumerate().for_each(|(p, out)| {
            let c = p % channels;
            let (m, scale) = (mean[c], self.scale(variance[c]));
            let (w, b) = (weight[c] * scale, bias[c]);
            for (o, &v) in out.iter_mut().zip(of(p)) {
                *o = (v - m) * w + b;
            }
        });
        *self.statistics.lock().expect("statistics lock") = Some((mean, variance));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, channels, height, width) = x.dims4()?;
        let plane = height * width;
        let (x, grad, weight) = (x.contiguous()?, grad.contiguous()?, weight.contiguous()?);
        let (xs, g) = (host_values(&x)?, host_values(&grad)?);
        let weight = host_values(&weight)?;
        let guard = self.statistics.lock().expect("statistics lock");
        let (mean, variance) = guard.as_ref().expect("the forward pass ran");
        let count = (batch * plane) as f64;
        let range = |p: usize| p * plane..(p + 1) * plane;
        // x̂, from x and the statistics, rather than kept from the forward pass.
        let xhat = |p: usize| {
            let c = p % channels;
            let (m, scale) = (mean[c], self.scale(variance[c]));
            xs[range(p)].iter().map(move |&v| (v - m) * scale)
        };
        let sum_g = per_channel_sums(batch, channels, |p| {
            g[range(p)].iter().map(|&v| v as f64).sum()
        });
        let sum_gx = per_channel_sums(batch, channels, |p| {
            (g[range(p)].iter().zip(xhat(p)))
                .map(|(&a, b)| a as f64 * b as f64)
                .sum()
        });
        let mut dx = vec![0f32; g.len()];
        dx.par_chunks_mut(plane).enumerate().for_each(|(p, dx)| {
            let c = p % channels;
            let scale = self.scale(variance[c]) * weight[c];
            let (mg, mgx) = ((sum_g[c] / count) as f32, (sum_gx[c] / count) as f32);
            for ((d, &gv), xv) in dx.iter_mut().zip(&g[range(p)]).zip(xhat(p)) {
                *d = (gv - mg - xv * mgx) * scale;
            }
        });
        let device = x.device();
        let per_channel = |sums: Vec<f64>| {
            let sums: Vec<f32> = sums.into_iter().map(|v| v as f32).collect();
            Tensor::from_vec(sums, channels, device)
        };
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(per_channel(sum_gx)?),
            Some(per_channel(sum_g)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn inference_leaves_the_statistics_and_training_updates_them_as_pytorch_does() {
        let device = Device::Cpu;
        let mut p = Parameters::new(0, &device);
        let bn = BatchNorm::new(&mut p, "bn", 2, 1e-3).unwrap();
        // Channel 0: 1, 2, 3, 4 (mean 2.5, biased variance 1.25, unbiased 5/3); channel 1: 0s.
        let x = Tensor::from_vec(
            vec![1f32, 2., 0., 0., 3., 4., 0., 0.],
            (2, 2, 1, 2),
            &device,
        )
        .unwrap();
        let inferred = bn.forward(&x, Mode::Infer).unwrap();
        assert_eq!(values(bn.running_mean.as_tensor()), vec![0.0, 0.0]);
        assert_eq!(values(bn.running_var.as_tensor()), vec![1.0, 1.0]);
        let scale = 1.0 / (1.0f32 + 1e-3).sqrt();
        assert!((values(&inferred)[1] - 2.0 * scale).abs() < 1e-6);

        let trained = values(&bn.forward(&x, Mode::Train).unwrap());
        let mean = values(bn.running_mean.as_tensor());
        let var = values(bn.running_var.as_tensor());
        assert!((mean[0] - 0.25).abs() < 1e-6 && mean[1] == 0.0, "{mean:?}");
        assert!((var[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6, "{var:?}");
        assert!((var[1] - 0.9).abs() < 1e-6, "{var:?}");
        let expected = (1.0 - 2.5) / (1.25f32 + 1e-3).sqrt();
        assert!((trained[0] - expected).abs() < 1e-5, "{trained:?}");
    }

    /// The CPU op against the tensor operations candle differentiates: output, statistics
    /// and the gradients of the input, weight and bias within float tolerance.
    #[test]
    fn the_cpu_normalisation_agrees_with_tensor_operations() {
        let device = Device::Cpu;
        let x = Var::from_tensor(
            &(Tensor::randn(0f32, 2., (4, 3, 5, 7), &device).unwrap() + 1.5).unwrap(),
        )
        .unwrap();
        let weight =
            Var::from_tensor(&Tensor::new(&[0.5f32, -2.0, 1.5], &device).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::new(&[0.1f32, 0.0, -3.0], &device).unwrap()).unwrap();
        let affine = (weight.as_tensor(), bias.as_tensor());
        let ours = normalise_on_cpu(&x, affine, 1e-3).unwrap();
        let theirs = normalise_in_tensor_ops(&x, affine, 1e-3).unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let (a, b) = (values(a), values(b));
            assert_eq!(a.len(), b.len(), "{what}");
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{what}: {worst}");
        };
        close(&ours.0, &theirs.0, "output");
        close(&ours.1, &theirs.1, "mean");
        close(&ours.2, &theirs.2, "variance");
        let weights = Tensor::arange(0f32, 420., &device)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((4, 3, 5, 7))
            .unwrap();
        let grads = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (ours, theirs) = (grads(&ours.0), grads(&theirs.0));
        for (var, what) in [(&x, "input"), (&weight, "weight"), (&bias, "bias")] {
            let gradient = |g: &candle_core::backprop::GradStore| g.get(var).unwrap().clone();
            close(&gradient(&ours), &gradient(&theirs), what);
        }
    }
}
