//! Depthwise convolution (one k x k filter per channel) and padded max pooling.
//!
//! candle runs a grouped `conv2d` as one small convolution per group: for a depthwise layer
//! of 1152 channels that is 1152 convolutions, and EfficientNet-Lite0's forward pass spent
//! most of its time there. On the CPU, depthwise convolution is one custom op whose forward
//! and backward passes are direct loops over each (image, channel) plane, in parallel: the
//! tensor-op formulation below allocates a full-size tensor per kernel tap in both passes,
//! and training spent most of its time faulting those pages in. Elsewhere (CUDA) each kernel
//! tap is one broadcast multiply of a shifted view of the (padded) input by that tap's
//! per-channel weights, summed; stride 2 first splits the input into its four even/odd row
//! and column phases, so that every tap reads one phase at stride 1. Both sum the taps in
//! the same order, so they agree bit for bit in the forward pass (tested). The same shifted
//! views make ResNet's padded max pooling.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::Epilogue;
use super::{f32_values, host_values, is_cpu_f32};

/// The k*k shifted views of `x` (N, C, H, W) that a k x k window at `stride` 1 or 2 reads
/// after zero padding `(top, bottom)` and `(left, right)`: view (u, v) holds, at each output
/// pixel, the input the window's tap (u, v) sees. Row-major over (u, v).
pub(crate) fn windows(
    x: &Tensor,
    kernel: usize,
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
    stride: usize,
) -> Result<Vec<Tensor>> {
    let (batch, channels, height, width) = x.dims4()?;
    if stride != 1 && stride != 2 {
        candle_core::bail!("window stride {stride}: only 1 and 2 are implemented");
    }
    let padded_height = height + top + bottom;
    let padded_width = width + left + right;
    if kernel == 0 || padded_height < kernel || padded_width < kernel {
        candle_core::bail!("window {kernel} does not fit the padded input");
    }
    let out_height = (padded_height - kernel) / stride + 1;
    let out_width = (padded_width - kernel) / stride + 1;
    // Stride 2 reads even and odd rows and columns apart: pad to an even size first.
    let (extra_height, extra_width) = if stride == 2 {
        (padded_height % 2, padded_width % 2)
    } else {
        (0, 0)
    };
    let x = x
        .pad_with_zeros(2, top, bottom + extra_height)?
        .pad_with_zeros(3, left, right + extra_width)?;
    // phases[r][c]: rows r, r + stride, ...; columns c, c + stride, ...
    let phases: Vec<Vec<Tensor>> = if stride == 1 {
        vec![vec![x]]
    } else {
        let (h, w) = (
            (padded_height + extra_height) / 2,
            (padded_width + extra_width) / 2,
        );
        let split = x.reshape((batch, channels, h, 2, w, 2))?;
        (0..2)
            .map(|r| {
                (0..2)
                    .map(|c| {
                        split
                            .narrow(3, r, 1)?
                            .narrow(5, c, 1)?
                            .reshape((batch, channels, h, w))
                    })
                    .collect()
            })
            .collect::<Result<_>>()?
    };
    let mut views = Vec::with_capacity(kernel * kernel);
    for u in 0..kernel {
        for v in 0..kernel {
            views.push(
                phases[u % stride][v % stride]
                    .narrow(2, u / stride, out_height)?
                    .narrow(3, v / stride, out_width)?,
            );
        }
    }
    Ok(views)
}

/// Depthwise convolution of `x` (N, C, H, W) with `weight` (C, 1, k, k), after zero padding
/// `(top, bottom)` and `(left, right)`, at `stride` 1 or 2. With an `epilogue` (inference
/// mode) it follows in the same pass and no gradient graph is recorded.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    top_bottom: (usize, usize),
    left_right: (usize, usize),
    stride: usize,
    epilogue: Option<&Epilogue>,
) -> Result<Tensor> {
    let (_, channels, height, width) = x.dims4()?;
    let (weight_channels, one, kernel, kernel_width) = weight.dims4()?;
    if weight_channels != channels || one != 1 || kernel != kernel_width {
        candle_core::bail!(
            "depthwise kernel {:?} does not fit {channels} channels",
            weight.dims()
        );
    }
    if !x.device().is_cpu() {
        let y = depthwise_views(x, weight, top_bottom, left_right, stride)?;
        return match epilogue {
            Some(epilogue) => epilogue.forward(&y.detach()),
            None => Ok(y),
        };
    }
    let (padded_height, padded_width) = (
        height + top_bottom.0 + top_bottom.1,
        width + left_right.0 + left_right.1,
    );
    if stride == 0 || kernel == 0 || padded_height < kernel || padded_width < kernel {
        candle_core::bail!("depthwise kernel {kernel} does not fit the padded input");
    }
    let op = Depthwise {
        kernel,
        stride,
        top: top_bottom.0,
        left: left_right.0,
        out_height: (padded_height - kernel) / stride + 1,
        out_width: (padded_width - kernel) / stride + 1,
        epilogue: epilogue.cloned().unwrap_or_default(),
    };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match epilogue {
        Some(_) => x.detach().apply_op2_no_bwd(&weight.detach(), &op),
        None => x.apply_op2(&weight, op),
    }
}

/// Depthwise convolution as k*k shifted views multiplied and summed, in tensor operations
/// (differentiated by candle): any device.
fn depthwise_views(
    x: &Tensor,
    weight: &Tensor,
    top_bottom: (usize, usize),
    left_right: (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    let (channels, kernel) = (x.dim(1)?, weight.dim(2)?);
    let mut sum: Option<Tensor> = None;
    for (i, view) in windows(x, kernel, top_bottom, left_right, stride)?
        .iter()
        .enumerate()
    {
        let w = weight
            .narrow(2, i / kernel, 1)?
            .narrow(3, i % kernel, 1)?
            .reshape((1, channels, 1, 1))?;
        let term = view.broadcast_mul(&w)?;
        sum = Some(match sum {
            None => term,
            Some(s) => (s + term)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("depthwise kernel of size 0".into()))
}

/// The CPU depthwise convolution. Each (image, channel) plane is first laid out as the
/// padded input's stride x stride phases (phase (a, b) holds padded rows a, a + s, ... and
/// columns b, b + s, ...), each `pitch` wide: tap (u, v) then reads phase (u % s, v % s) at
/// a fixed offset, and one tap over the whole plane is one run of contiguous memory (the
/// `pitch - out_width` values past each output row are computed and dropped). Row by row,
/// the small planes of late stages (3x3) spent their time in loop overhead.
struct Depthwise {
    kernel: usize,
    stride: usize,
    top: usize,
    left: usize,
    out_height: usize,
    out_width: usize,
    /// Applied to each output plane once its taps are summed (forward only).
    epilogue: Epilogue,
}

impl Depthwise {
    /// Width of a phase row and of the work rows (output rows plus the columns dropped).
    fn pitch(&self) -> usize {
        self.out_width + (self.kernel - 1) / self.stride
    }

    /// Values in one phase: rows enough for every tap's run, plus one for the last run's
    /// dropped columns.
    fn phase_len(&self) -> usize {
        (self.out_height + (self.kernel - 1) / self.stride + 1) * self.pitch()
    }

    /// The output plane's values in work rows.
    fn run_len(&self) -> usize {
        self.out_height * self.pitch()
    }

    /// Every tap (u, v) that reads any of the input, row-major (the views' order), with the
    /// part of its run that does: a tap's other values read padding (zeros), so skipping them
    /// changes no sum, and on the late stages' small planes (1x1 to 4x4, where a 5x5 kernel
    /// mostly overhangs the input) most of the work went there. Made once per call: integer
    /// divisions per tap and plane cost more than a small plane's arithmetic.
    fn taps(&self, height: usize, width: usize) -> Vec<Tap> {
        let (k, s, pitch, phase) = (self.kernel, self.stride, self.pitch(), self.phase_len());
        // The output indices whose window position `o * s + u` lands on the input, padded by
        // `before` in front of `size` values.
        let reads = |u: usize, before: usize, size: usize, outputs: usize| {
            let first = before.saturating_sub(u).div_ceil(s);
            let last = ((before + size).saturating_sub(u + 1) / s).min(outputs - 1);
            (before + size > u && first <= last).then_some((first, last))
        };
        (0..k * k)
            .filter_map(|index| {
                let (u, v) = (index / k, index % k);
                let (top, bottom) = reads(u, self.top, height, self.out_height)?;
                let (left, right) = reads(v, self.left, width, self.out_width)?;
                let phase_start = ((u % s) * s + v % s) * phase + (u / s) * pitch + v / s;
                let (begin, end) = (top * pitch + left, bottom * pitch + right + 1);
                Some(Tap {
                    index,
                    from: phase_start + begin,
                    run: begin..end,
                })
            })
            .collect()
    }

    /// Calls `each(at, i, 1)` for every pixel of a `width`-wide input plane of `pixels` that
    /// a tap can read: its index in the plane and its index in the phases (phase after phase).
    /// Row by row with running counters: a division per pixel cost more than the taps.
    /// At stride 1 `each` gets runs instead: `each(at, i, n)` for n pixels in a row.
    fn placed(&self, pixels: usize, width: usize, mut each: impl FnMut(usize, usize, usize)) {
        let (s, pitch, phase) = (self.stride, self.pitch(), self.phase_len());
        let rows = phase / pitch - 1;
        for y in 0..pixels / width {
            let (a, row) = ((y + self.top) % s, (y + self.top) / s);
            if row >= rows {
                break;
            }
            if s == 1 {
                let run = width.min(pitch.saturating_sub(self.left));
                each(y * width, row * pitch + self.left, run);
                continue;
            }
            let start = a * s * phase + row * pitch;
            let (mut b, mut column) = (self.left % s, self.left / s);
            for x in 0..width {
                if column >= pitch {
                    break;
                }
                each(y * width + x, start + b * phase + column, 1);
                b += 1;
                if b == s {
                    (b, column) = (0, column + 1);
                }
            }
        }
    }

    /// The phases of input plane `xp` (`width` wide) into `phases` (zero elsewhere).
    fn split(&self, xp: &[f32], width: usize, phases: &mut [f32]) {
        phases.fill(0.0);
        self.placed(xp.len(), width, |at, i, n| {
            phases[i..i + n].copy_from_slice(&xp[at..at + n]);
        });
    }
}

/// One kernel tap of the CPU depthwise kernel: work rows' values `run` (output rows at
/// `pitch`) add `w[index]` times the phases' values from `from` on.
struct Tap {
    index: usize,
    from: usize,
    run: std::ops::Range<usize>,
}

/// Per-thread buffers of the CPU depthwise kernel, reused plane after plane.
#[derive(Default)]
struct Scratch {
    phases: Vec<f32>,
    run: Vec<f32>,
    grad_phases: Vec<f32>,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = x_layout.shape().dims4()?;
        let (xs, ws) = (f32_values(x, x_layout)?, f32_values(weight, weight_layout)?);
        let k = self.kernel;
        let (oh, ow, pitch) = (self.out_height, self.out_width, self.pitch());
        let (phase, run) = (self.phase_len(), self.run_len());
        let taps = self.taps(height, width);
        let mut out = vec![0f32; batch * channels * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            Scratch::default,
            |scratch, (plane, out)| {
                let xp = &xs[plane * height * width..][..height * width];
                let wp = &ws[(plane % channels) * k * k..][..k * k];
                scratch.phases.resize(self.stride.pow(2) * phase, 0.0);
                self.split(xp, width, &mut scratch.phases);
                scratch.run.clear();
                scratch.run.resize(run, 0.0);
                for tap in &taps {
                    let from = &scratch.phases[tap.from..][..tap.run.len()];
                    let w = wp[tap.index];
                    let to = &mut scratch.run[tap.run.clone()];
                    (to.iter_mut().zip(from)).for_each(|(o, &x)| *o += w * x);
                }
                for (out, row) in out.chunks_mut(ow).zip(scratch.run.chunks(pitch)) {
                    out.copy_from_slice(&row[..ow]);
                }
                self.epilogue.apply(out, oh * ow, plane % channels);
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, channels, height, width) = x.dims4()?;
        let (x, weight, grad) = (x.contiguous()?, weight.contiguous()?, grad.contiguous()?);
        let (xs, ws, gs) = (host_values(&x)?, host_values(&weight)?, host_values(&grad)?);
        let k = self.kernel;
        let (oh, ow, pitch) = (self.out_height, self.out_width, self.pitch());
        let (phase, run) = (self.phase_len(), self.run_len());
        let want_x = x.track_op();
        let mut grad_x = vec![0f32; if want_x { xs.len() } else { 0 }];
        // Each plane's share of its channel's kernel gradient, summed over images below.
        let mut partial = vec![0f32; batch * channels * k * k];
        let taps = self.taps(height, width);
        let plane_grad =
            |scratch: &mut Scratch, plane: usize, gx: Option<&mut [f32]>, gw: &mut [f32]| {
                let xp = &xs[plane * height * width..][..height * width];
                let wp = &ws[(plane % channels) * k * k..][..k * k];
                let gp = &gs[plane * oh * ow..][..oh * ow];
                let phases = self.stride.pow(2) * phase;
                scratch.phases.resize(phases, 0.0);
                self.split(xp, width, &mut scratch.phases);
                // The output gradient in work rows, zero in the dropped columns.
                scratch.run.clear();
                scratch.run.resize(run, 0.0);
                for (row, g) in scratch.run.chunks_mut(pitch).zip(gp.chunks(ow)) {
                    row[..ow].copy_from_slice(g);
                }
                scratch.grad_phases.clear();
                scratch
                    .grad_phases
                    .resize(if gx.is_some() { phases } else { 0 }, 0.0);
                for tap in &taps {
                    let from = &scratch.phases[tap.from..][..tap.run.len()];
                    let g = &scratch.run[tap.run.clone()];
                    gw[tap.index] = dot(g, from);
                    if gx.is_some() {
                        let to = &mut scratch.grad_phases[tap.from..][..tap.run.len()];
                        let w = wp[tap.index];
                        (to.iter_mut().zip(g)).for_each(|(x, &g)| *x += w * g);
                    }
                }
                if let Some(gx) = gx {
                    let grad_phases = &scratch.grad_phases;
                    self.placed(gx.len(), width, |at, i, n| {
                        gx[at..at + n].copy_from_slice(&grad_phases[i..i + n]);
                    });
                }
            };
        if want_x {
            grad_x
                .par_chunks_mut(height * width)
                .zip(partial.par_chunks_mut(k * k))
                .enumerate()
                .for_each_init(Scratch::default, |scratch, (plane, (gx, gw))| {
                    plane_grad(scratch, plane, Some(gx), gw)
                });
        } else {
            partial
                .par_chunks_mut(k * k)
                .enumerate()
                .for_each_init(Scratch::default, |scratch, (plane, gw)| {
                    plane_grad(scratch, plane, None, gw)
                });
        }
        let mut grad_w = vec![0f32; channels * k * k];
        for (plane, gw) in partial.chunks(k * k).enumerate() {
            let c = plane % channels;
            for (sum, g) in grad_w[c * k * k..][..k * k].iter_mut().zip(gw) {
                *sum += g;
            }
        }
        let grad_x = if want_x {
            Some(Tensor::from_vec(grad_x, x.shape(), x.device())?)
        } else {
            None
        };
        let grad_w = Tensor::from_vec(grad_w, weight.shape(), weight.device())?;
        Ok((grad_x, Some(grad_w)))
    }
}

/// The sum of `a[j] * b[j]`, in eight partial sums: one running f32 sum is a chain of
/// dependent additions that neither vectorises nor overlaps.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a, b) = (a.chunks_exact(8), b[..a.len()].chunks_exact(8));
    let tail: f32 = (a.remainder().iter().zip(b.remainder()))
        .map(|(x, y)| x * y)
        .sum();
    let mut lanes = [0f32; 8];
    for (a, b) in a.zip(b) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// 3x3 max pooling at stride 2 with one pixel of padding (ResNet's stem), for inputs that
/// are never negative (after a ReLU): padding with zeros then equals PyTorch's padding with
/// -inf. candle's `max_pool2d` has no padding, and no backward pass when the window is
/// larger than the stride. On the CPU one op each way ([`MaxPool`]); elsewhere the maximum of
/// shifted views, which candle differentiates (eight maxima, each with a backward pass of
/// masks: a tenth of a ResNet-18 training step when the CPU took that path too).
pub fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        let pool = MaxPool {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        return x.contiguous()?.apply_op1(pool);
    }
    maximum(&windows(x, 3, (1, 1), (1, 1), 2)?)
}

/// 2x2 max pooling at stride 2 (cnn6), any side: a last odd row or column is dropped, as
/// candle and PyTorch do. candle's own `max_pool2d` passes only a quarter of the gradient to
/// each maximum (its backward multiplies by the share of maxima in the window where it means
/// to divide). On the CPU one op each way ([`MaxPool`]); elsewhere the maximum of the four
/// shifted views, whose gradient candle splits between tied maxima.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        let pool = MaxPool {
            kernel: 2,
            stride: 2,
            padding: 0,
        };
        return x.contiguous()?.apply_op1(pool);
    }
    let (_, _, height, width) = x.dims4()?;
    let x = x
        .narrow(2, 0, height / 2 * 2)?
        .narrow(3, 0, width / 2 * 2)?;
    maximum(&windows(&x, 2, (0, 0), (0, 0), 2)?)
}

/// The elementwise maximum of a pooling window's shifted views (`windows`), in candle's ops.
fn maximum(views: &[Tensor]) -> Result<Tensor> {
    views[1..]
        .iter()
        .try_fold(views[0].clone(), |max, view| max.maximum(view))
}

/// Max pooling on the CPU: `kernel` x `kernel` windows at `stride`, `padding` pixels of
/// -inf on each side. The gradient goes whole to each window's first maximum in row-major
/// order, and a NaN in a window is its maximum, as in PyTorch (a diverged trial's NaN must
/// reach the loss, where training stops on it).
struct MaxPool {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    /// Output rows or columns for an input side: PyTorch's floor((side + 2p - k) / s) + 1.
    fn side(&self, side: usize) -> usize {
        (side + 2 * self.padding)
            .checked_sub(self.kernel)
            .map_or(0, |inside| inside / self.stride + 1)
    }

    /// For each output pixel of one (N, C) plane, `each(out index, input index of the
    /// window's first maximum)`.
    fn argmax(
        &self,
        xs: &[f32],
        (height, width): (usize, usize),
        mut each: impl FnMut(usize, usize),
    ) {
        let (oh, ow) = (self.side(height), self.side(width));
        // The input rows (or columns) window `i` covers: inside the plane, never empty.
        let span = |i: usize, side: usize| {
            let start = (i * self.stride).saturating_sub(self.padding);
            let end = (i * self.stride + self.kernel - self.padding).min(side);
            start..end
        };
        for i in 0..oh {
            let rows = span(i, height);
            for j in 0..ow {
                let columns = span(j, width);
                let mut best = rows.start * width + columns.start;
                for y in rows.clone() {
                    for x in columns.clone() {
                        let value = xs[y * width + x];
                        if value > xs[best] || value.is_nan() {
                            best = y * width + x;
                        }
                    }
                }
                each(i * ow + j, best);
            }
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let xs = f32_values(x, layout)?;
        let (oh, ow) = (self.side(height), self.side(width));
        let mut out = vec![0f32; batch * channels * oh * ow];
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(plane, out)| {
                    let xp = &xs[plane * height * width..][..height * width];
                    self.argmax(xp, (height, width), |o, i| out[o] = xp[i]);
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, height, width) = x.dims4()?;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (xs, gs) = (host_values(&x)?, host_values(&grad)?);
        let (plane, out_plane) = (height * width, self.side(height) * self.side(width));
        let mut dx = vec![0f32; xs.len()];
        if out_plane > 0 {
            dx.par_chunks_mut(plane).enumerate().for_each(|(p, dx)| {
                let (xp, gp) = (&xs[p * plane..][..plane], &gs[p * out_plane..][..out_plane]);
                self.argmax(xp, (height, width), |o, i| dx[i] += gp[o]);
            });
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conv::Activation;
    use candle_core::{Device, Var};

    #[test]
    fn it_agrees_with_candles_grouped_convolution() {
        let device = Device::Cpu;
        for (kernel, stride, size, padding) in [
            (3, 1, 9, ((1, 1), (1, 1))),
            (5, 1, 8, ((2, 2), (2, 2))),
            (3, 2, 10, ((0, 1), (0, 1))),
            (5, 2, 14, ((1, 2), (1, 2))),
            (3, 2, 7, ((1, 1), (1, 1))),
            (5, 2, 7, ((2, 2), (1, 2))),
        ] {
            let x = Tensor::randn(0f32, 1., (2, 6, size, size), &device).unwrap();
            let w = Tensor::randn(0f32, 1., (6, 1, kernel, kernel), &device).unwrap();
            let ours = depthwise_conv2d(&x, &w, padding.0, padding.1, stride, None).unwrap();
            let ((top, bottom), (left, right)) = padding;
            let theirs = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap()
                .conv2d(&w, 0, stride, 1, 6)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "k{kernel} s{stride} {size}");
            let largest_difference = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let difference = largest_difference(&ours, &theirs);
            assert!(
                difference < 1e-4,
                "k{kernel} s{stride} {size}: {difference}"
            );
            // Inference mode's BatchNorm and ReLU6 in the same pass.
            let epilogue = Epilogue {
                scale: Some(vec![0.5, 2.0, -1.0, 1.0, 3.0, 0.25]),
                shift: Some(vec![0.1, -0.2, 0.3, 5.0, 0.0, -1.0]),
                activation: Activation::Relu6,
            };
            let fused =
                depthwise_conv2d(&x, &w, padding.0, padding.1, stride, Some(&epilogue)).unwrap();
            let apart = epilogue.forward(&ours).unwrap();
            let difference = largest_difference(&fused, &apart);
            assert!(
                difference < 1e-5,
                "k{kernel} s{stride} {size}: {difference}"
            );
        }
    }

    /// Forward as candle's `max_pool2d` (odd sides too); the gradient reaches each window's
    /// maximum whole, where candle's passes a quarter of it.
    #[test]
    fn two_by_two_pooling_gives_the_maximum_its_whole_gradient() {
        let device = Device::Cpu;
        let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &device).unwrap();
        let grads = max_pool_2x2(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let expected = [0f32, 0., 0., 1.];
        assert_eq!(
            grads
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            expected
        );
        let candles = x
            .max_pool2d(2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let quarter = [0f32, 0., 0., 0.25];
        assert_eq!(
            candles
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            quarter
        );
        for size in [7, 8, 28] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, size, size), &device).unwrap())
                    .unwrap();
            let ours = max_pool_2x2(&x).unwrap();
            let theirs = x.max_pool2d(2).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let difference = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(difference.to_scalar::<f32>().unwrap(), 0.0, "side {size}");
            // Random values have no ties: the gradient is 1 at each window's maximum, 0
            // elsewhere, four times candle's.
            let ours = ours.sum_all().unwrap().backward().unwrap();
            let ours = ours.get(&x).unwrap().clone();
            let total = ours.sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(
                total as usize,
                2 * 3 * (size / 2) * (size / 2),
                "side {size}"
            );
            if size % 2 == 0 {
                let theirs = theirs.sum_all().unwrap().backward().unwrap();
                let quadrupled = (theirs.get(&x).unwrap() * 4.0).unwrap();
                let difference = (ours - quadrupled)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert_eq!(difference.to_scalar::<f32>().unwrap(), 0.0, "side {size}");
            }
        }
    }

    /// A NaN is its window's maximum (PyTorch's rule): a diverged network's NaN reaches the
    /// loss instead of being pooled away.
    #[test]
    fn pooling_keeps_nan() {
        let device = Device::Cpu;
        let x = Tensor::new(&[[[[1f32, f32::NAN, 2., 0.], [3., 4., 0., 1.]]]], &device).unwrap();
        let pooled = max_pool_2x2(&x).unwrap().flatten_all().unwrap();
        let pooled = pooled.to_vec1::<f32>().unwrap();
        assert!(pooled[0].is_nan() && pooled[1] == 2.0, "{pooled:?}");
        let pooled = max_pool_3x3_stride_2(&x).unwrap().flatten_all().unwrap();
        let pooled = pooled.to_vec1::<f32>().unwrap();
        assert!(pooled[0].is_nan() && pooled[1].is_nan(), "{pooled:?}");
    }

    #[test]
    fn max_pooling_agrees_with_candles_on_non_negative_input() {
        let device = Device::Cpu;
        for size in [8, 9, 112] {
            let x = Tensor::randn(0f32, 1., (2, 3, size, size + 3), &device)
                .unwrap()
                .relu()
                .unwrap();
            let ours = max_pool_3x3_stride_2(&x).unwrap();
            // PyTorch's output: floor((size + 2 - 3) / 2) + 1 per side.
            let theirs = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{size}");
            assert_eq!(ours.dims()[2], (size - 1) / 2 + 1);
            let same = (ours.eq(&theirs).unwrap().to_dtype(candle_core::DType::F32))
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(same, 1.0, "{size}");
            // Positive random values have no ties: the gradient is candle's of the maximum of
            // the shifted views.
            let x = (Tensor::randn(5f32, 1., x.shape(), &device).unwrap())
                .clamp(0f32, 10f32)
                .unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let ours = max_pool_3x3_stride_2(&x).unwrap().sum_all().unwrap();
            let views = windows(&x, 3, (1, 1), (1, 1), 2).unwrap();
            let theirs = maximum(&views).unwrap().sum_all().unwrap();
            let (ours, theirs) = (ours.backward().unwrap(), theirs.backward().unwrap());
            let difference = (ours.get(&x).unwrap() - theirs.get(&x).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(difference.to_scalar::<f32>().unwrap(), 0.0, "{size}");
        }
    }

    /// The CPU kernel against the shifted views that candle differentiates: the forward pass
    /// bit for bit, the gradients of input and kernel within 1e-4, the input's only when it
    /// needs one.
    #[test]
    fn the_cpu_kernel_agrees_with_the_views_and_their_gradients() {
        let device = Device::Cpu;
        for (kernel, stride, (h, w), padding) in [
            (3, 1, (9, 7), ((1, 1), (1, 1))),
            (5, 2, (14, 11), ((1, 2), (2, 2))),
            (3, 2, (7, 8), ((0, 1), (1, 1))),
            (5, 1, (4, 4), ((2, 2), (2, 2))),
            // The late stages at 32x32: kernels overhanging 1x1 and 2x2 planes.
            (5, 1, (1, 1), ((2, 2), (2, 2))),
            (5, 2, (2, 2), ((1, 2), (1, 2))),
            (3, 1, (2, 2), ((1, 1), (1, 1))),
        ] {
            let case = format!("k{kernel} s{stride} {h}x{w}");
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, h, w), &device).unwrap()).unwrap();
            let weight = Var::from_tensor(
                &Tensor::randn(0f32, 1., (5, 1, kernel, kernel), &device).unwrap(),
            )
            .unwrap();
            let ours = depthwise_conv2d(&x, &weight, padding.0, padding.1, stride, None).unwrap();
            let theirs = depthwise_views(&x, &weight, padding.0, padding.1, stride).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&ours), flat(&theirs), "{case}");
            let cosine = Tensor::arange(0f32, ours.elem_count() as f32, &device)
                .unwrap()
                .cos()
                .unwrap()
                .reshape(ours.shape())
                .unwrap();
            let loss = |y: &Tensor| (y * &cosine).unwrap().sum_all().unwrap();
            let (ours, theirs) = (
                loss(&ours).backward().unwrap(),
                loss(&theirs).backward().unwrap(),
            );
            for var in [&x, &weight] {
                let (o, t) = (flat(ours.get(var).unwrap()), flat(theirs.get(var).unwrap()));
                let worst = o
                    .iter()
                    .zip(&t)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{case}: {worst}");
            }
            // A constant input (images, cached features) gets no gradient.
            let constant = x.as_tensor().detach();
            let grads = loss(
                &depthwise_conv2d(&constant, &weight, padding.0, padding.1, stride, None).unwrap(),
            )
            .backward()
            .unwrap();
            assert!(grads.get(&constant).is_none() && grads.get(&weight).is_some());
        }
    }
}
