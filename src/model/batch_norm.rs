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

use candle_core::{Tensor, Var};

use super::Mode;
use super::parameters::Parameters;

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

    /// Normalises `x` (N, C, H, W) in `mode`; in training mode also updates the running
    /// statistics.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let channels = self.weight.dim(0)?;
        let per_channel = |t: &Tensor| t.reshape((1, channels, 1, 1));
        match mode {
            Mode::Infer => {
                let running_var = self.running_var.as_tensor();
                let scale = (&self.weight / (running_var + self.epsilon)?.sqrt()?)?;
                let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
                x.broadcast_mul(&per_channel(&scale)?)?
                    .broadcast_add(&per_channel(&shift)?)
            }
            Mode::Train => {
                let (batch, _, height, width) = x.dims4()?;
                let mean = x.mean_keepdim((0, 2, 3))?;
                let centred = x.broadcast_sub(&mean)?;
                let variance = centred.sqr()?.mean_keepdim((0, 2, 3))?;
                let y = centred
                    .broadcast_div(&(&variance + self.epsilon)?.sqrt()?)?
                    .broadcast_mul(&per_channel(&self.weight)?)?
                    .broadcast_add(&per_channel(&self.bias)?)?;
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
}
