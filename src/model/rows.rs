//! LayerNorm and a linear layer's bias over the last dimension (BERT's token vectors), each
//! one op with its own backward pass on the CPU.
//!
//! In candle's tensor ops, each is a chain of broadcast ops whose backward passes reduce the
//! gradient over every leading dimension (a bias's gradient is a sum over all tokens) with
//! candle's general strided reduction, one element at a time on one thread, beside a
//! full-size temporary per op: a MiniLM training step spent more time there than in its
//! matrix multiplies. Here a row is one token's vector: the ops run over rows in parallel, and
//! the per-column sums of the gradients are summed per chunk of rows, then the chunks added.
//! Elsewhere (CUDA) the same arithmetic in candle's ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_values, host_values, is_cpu_f32};

/// LayerNorm over the last dimension: (x - mean) / sqrt(variance + eps) * weight + bias, the
/// variance biased (divided by the width), as PyTorch's `LayerNorm`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !is_cpu_f32(x) {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        return centred
            .broadcast_div(&(variance + eps)?.sqrt()?)?
            .broadcast_mul(weight)?
            .broadcast_add(bias);
    }
    let x = x.contiguous()?;
    x.apply_op3(weight, bias, LayerNorm { eps: eps as f32 })
}

/// `x + bias`, `bias` along the last dimension.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !is_cpu_f32(x) {
        return x.broadcast_add(bias);
    }
    x.contiguous()?.apply_op2(bias, AddBias)
}

/// Column sums of a `width`-wide matrix of `rows` rows, where `add(r, sums)` adds row r's
/// terms: per chunk of rows in parallel, then the chunks' sums added in order. The chunks
/// depend on `rows` alone (not on how rayon schedules them), so a rerun sums in the same
/// order and trains to the same numbers.
fn column_sums<const N: usize>(
    rows: usize,
    width: usize,
    add: impl Fn(usize, &mut [Vec<f32>; N]) + Sync,
) -> [Vec<f32>; N] {
    let chunk = rows.div_ceil(64).max(16);
    let zeros = || std::array::from_fn(|_| vec![0f32; width]);
    let chunks: Vec<[Vec<f32>; N]> = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut sums = zeros();
            (c * chunk..rows.min((c + 1) * chunk)).for_each(|r| add(r, &mut sums));
            sums
        })
        .collect();
    chunks.into_iter().fold(zeros(), |mut total, sums| {
        for (total, sums) in total.iter_mut().zip(&sums) {
            total.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
        }
        total
    })
}

struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    /// A row's mean and 1 / sqrt(variance + eps).
    fn statistics(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let variance = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        (mean, 1.0 / (variance + self.eps).sqrt())
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_values(x, layout)?;
        let (weight, bias) = (
            f32_values(weight, weight_layout)?,
            f32_values(bias, bias_layout)?,
        );
        let width = weight.len();
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(width)
            .zip(xs.par_chunks(width))
            .for_each(|(out, row)| {
                let (mean, scale) = self.statistics(row);
                for (((o, &v), w), b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                    *o = (v - mean) * scale * w + b;
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad, weight_c) = (grad.contiguous()?, weight.contiguous()?);
        let (xs, g, w) = (
            host_values(x)?,
            host_values(&grad)?,
            host_values(&weight_c)?,
        );
        let width = w.len();
        let row = |r: usize| &xs[r * width..][..width];
        // Each row's statistics once, for both passes below.
        let statistics: Vec<(f32, f32)> = xs
            .par_chunks(width)
            .map(|row| self.statistics(row))
            .collect();
        // dx = scale * (g w - mean(g w) - x̂ mean(g w x̂)), per row.
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(width).enumerate().for_each(|(r, dx)| {
            let (mean, scale) = statistics[r];
            let gr = &g[r * width..][..width];
            let (mut sum_gw, mut sum_gwx) = (0f32, 0f32);
            for ((&gv, &wv), &v) in gr.iter().zip(w.iter()).zip(row(r)) {
                sum_gw += gv * wv;
                sum_gwx += gv * wv * (v - mean) * scale;
            }
            let n = width as f32;
            let (mean_gw, mean_gwx) = (sum_gw / n, sum_gwx / n);
            for (((d, &gv), &wv), &v) in dx.iter_mut().zip(gr).zip(w.iter()).zip(row(r)) {
                let xhat = (v - mean) * scale;
                *d = scale * (gv * wv - mean_gw - xhat * mean_gwx);
            }
        });
        let [grad_weight, grad_bias] = column_sums(xs.len() / width, width, |r, [gw, gb]| {
            let (mean, scale) = statistics[r];
            let gr = &g[r * width..][..width];
            for (((gw, gb), &gv), &v) in gw.iter_mut().zip(gb.iter_mut()).zip(gr).zip(row(r)) {
                *gw += gv * (v - mean) * scale;
                *gb += gv;
            }
        });
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(grad_weight, weight.shape(), device)?),
            Some(Tensor::from_vec(grad_bias, bias.shape(), device)?),
        ))
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, bias) = (f32_values(x, layout)?, f32_values(bias, bias_layout)?);
        let mut out = xs.to_vec();
        out.par_chunks_mut(bias.len()).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = host_values(&grad)?;
        let width = bias.elem_count();
        let [sums] = column_sums(g.len() / width, width, |r, [sums]| {
            let row = &g[r * width..][..width];
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        });
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(sums, bias.shape(), bias.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn worst(a: &Tensor, b: &Tensor) -> f32 {
        (flat(a).iter().zip(flat(b)))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// The ops against the same arithmetic in candle's tensor ops, differentiated by candle:
    /// values and every gradient within 1e-4.
    #[test]
    fn the_cpu_ops_agree_with_candles_broadcast_ops_and_their_gradients() {
        let device = Device::Cpu;
        let var = |shape: &[usize], mean: f32| {
            Var::from_tensor(&Tensor::randn(mean, 1f32, shape, &device).unwrap()).unwrap()
        };
        let (x, weight, bias) = (var(&[3, 5, 24], 0.5), var(&[24], 1.0), var(&[24], 0.0));
        let cosine = Tensor::arange(0f32, x.elem_count() as f32, &device)
            .unwrap()
            .cos()
            .unwrap()
            .reshape(x.shape())
            .unwrap();
        let loss = |y: &Tensor| (y * &cosine).unwrap().sum_all().unwrap();
        let eps = 1e-5;
        let centred = x
            .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let variance = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normalised = (centred.broadcast_div(&(variance + eps).unwrap().sqrt().unwrap()))
            .unwrap()
            .broadcast_mul(&weight)
            .unwrap();
        let cases = [
            (
                "layer norm",
                layer_norm(&x, &weight, &bias, eps).unwrap(),
                normalised.broadcast_add(&bias).unwrap(),
            ),
            (
                "bias",
                add_bias(&x, &bias).unwrap(),
                x.broadcast_add(&bias).unwrap(),
            ),
        ];
        for (case, ours, theirs) in cases {
            assert!(worst(&ours, &theirs) < 1e-4, "{case}");
            let (ours, theirs) = (
                loss(&ours).backward().unwrap(),
                loss(&theirs).backward().unwrap(),
            );
            for (name, v) in [("x", &x), ("weight", &weight), ("bias", &bias)] {
                match (ours.get(v), theirs.get(v)) {
                    (Some(o), Some(t)) => assert!(worst(o, t) < 1e-4, "{case}: {name}"),
                    (o, t) => assert_eq!(o.is_some(), t.is_some(), "{case}: {name}"),
                }
            }
        }
    }

    /// A bias gradient summed over many rows has the same bits on 1, 2 or 7 threads: a
    /// rerun of a trial trains to the same numbers.
    #[test]
    fn column_sums_do_not_depend_on_the_threads() {
        let (rows, width) = (5000, 37);
        let values: Vec<f32> = (0..rows * width)
            .map(|i| (i as f32 * 0.37).sin() * 1e3)
            .collect();
        let sums = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                column_sums(rows, width, |r, [sums]: &mut [Vec<f32>; 1]| {
                    let row = &values[r * width..][..width];
                    sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                })
            })
        };
        let one = sums(1);
        assert_eq!(one, sums(2));
        assert_eq!(one, sums(7));
    }
}
