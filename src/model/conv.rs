//! Convolutions cheaper than candle's, and what follows them in inference mode.
//!
//! candle differentiates `conv2d` with `conv_transpose2d` for the input gradient, a direct loop
//! on the CPU and on CUDA, and computes that gradient even when the input needs none: the
//! first trainable block, whose input is an image batch or cached frozen features. On the
//! CPU both passes are xferlab's kernels (`super::im2col`). Elsewhere the input gradient is a
//! forward convolution with the flipped kernel (im2col and a matrix multiply) of the output
//! gradient, spread out with zeros between its pixels at stride 2 and more, and the kernel
//! gradient candle's own formula. Either way the input gradient is skipped when the input
//! does not need it. `just bench-kernels` measures the difference.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::im2col::{self, Geometry};
use super::winograd;
use super::{f32_values, host_values, is_cpu_f32};

/// A square-kernel convolution (out, in, k, k) with symmetric zero padding, any stride, one
/// group, and an optional bias.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A convolution with `weight` (out, in, k, k) and `bias` (out); `padding` at most k - 1.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (_, _, k, k_width) = weight.dims4()?;
        if k != k_width || padding >= k || stride == 0 {
            candle_core::bail!(
                "conv2d: kernel {:?}, padding {padding}, stride {stride} are not supported",
                weight.dims()
            );
        }
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// Convolves `x` (N, in, H, W) into (N, out, H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.padding;
        let y = if is_cpu_f32(x) {
            // The kernel op carries its own backward pass, and the bias (the epilogue's shift).
            let op = CpuConv {
                stride: self.stride,
                padding: (p, p, p, p),
                epilogue: Epilogue::default(),
            };
            let (x, weight) = (x.contiguous()?, self.weight.contiguous()?);
            return match &self.bias {
                Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, op),
                None => x.apply_op2(&weight, op),
            };
        } else if x.track_op() || self.weight.track_op() {
            let y = conv2d(
                x,
                &self.weight,
                self.stride,
                (p, p, p, p),
                &Epilogue::default(),
            )?;
            x.apply_op2(
                &self.weight,
                Backward {
                    output: y,
                    stride: self.stride,
                    padding: self.padding,
                },
            )?
        } else {
            conv2d(
                x,
                &self.weight,
                self.stride,
                (p, p, p, p),
                &Epilogue::default(),
            )?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The convolution (and its bias), then `epilogue`, without a gradient graph: for
    /// inference mode, whose blocks are frozen and whose output nothing differentiates.
    pub fn forward_infer(&self, x: &Tensor, mut epilogue: Epilogue) -> Result<Tensor> {
        if let Some(bias) = &self.bias {
            // (y + b) * scale + shift = y * scale + (b * scale + shift).
            let bias = bias.to_vec1::<f32>()?;
            let scale = |i: usize| epilogue.scale.as_ref().map_or(1.0, |s| s[i]);
            let shift = |i: usize| epilogue.shift.as_ref().map_or(0.0, |s| s[i]);
            let folded = (0..bias.len()).map(|i| bias[i] * scale(i) + shift(i));
            epilogue.shift = Some(folded.collect());
        }
        let p = self.padding;
        conv2d(x, &self.weight, self.stride, (p, p, p, p), &epilogue)
    }
}

/// Records a convolution already computed (`output`) on a device other than the CPU in the
/// gradient graph with this file's backward pass; its forward only hands that output over.
struct Backward {
    output: Tensor,
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, self.output.shape().clone())),
            _ => candle_core::bail!("conv2d: output is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, self.output.shape().clone())),
            _ => candle_core::bail!("conv2d: output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (s, p) = (self.stride, self.padding);
        let (out_c, in_c, k, _) = weight.dims4()?;
        let grad_x = if x.track_op() {
            // The adjoint of a convolution: put s - 1 zeros between the gradient's pixels,
            // then convolve with the kernel flipped in space and its channels swapped. Input
            // rows and columns past the last window (when (H + 2p - k) is not a multiple of
            // s) get zeros: the extra padding after.
            let (_, _, height, width) = x.dims4()?;
            let spread = spread(grad, s)?;
            let rest = |size: usize| (size + 2 * p - k) % s;
            let flipped = flip_spatial(weight)?.transpose(0, 1)?.contiguous()?;
            let edge = k - 1 - p;
            let padding = (edge, edge + rest(height), edge, edge + rest(width));
            Some(conv2d(&spread, &flipped, 1, padding, &Epilogue::default())?)
        } else {
            None
        };
        // Batch and channels swapped: a convolution of the input with the gradient as kernel,
        // dilated by the stride; windows past the kernel's size are cut off. candle's cuDNN
        // path runs only contiguous kernels (others take a direct loop).
        let grad_weight = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?.contiguous()?, p, 1, s, 1)?
            .transpose(0, 1)?;
        let grad_weight = if grad_weight.dim(2)? != k || grad_weight.dim(3)? != k {
            grad_weight.narrow(2, 0, k)?.narrow(3, 0, k)?
        } else {
            grad_weight
        };
        debug_assert_eq!(grad_weight.dims(), [out_c, in_c, k, k]);
        Ok((grad_x, Some(grad_weight)))
    }
}

/// The gradients of a convolution (stride `s`, padding `top` and `left` before) on the CPU
/// (see [`im2col::backward`]): the input's (when `want_x`) and the kernel's.
fn cpu_backward(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    s: usize,
    (top, left): (usize, usize),
    want_x: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let (o, _, k, _) = weight.dims4()?;
    let (_, _, oh, ow) = grad.dims4()?;
    let geometry = Geometry {
        n,
        c,
        h,
        w,
        o,
        k,
        stride: s,
        top,
        left,
        oh,
        ow,
    };
    let (x, weight, grad) = (x.contiguous()?, weight.contiguous()?, grad.contiguous()?);
    let (xs, ws, gs) = (host_values(&x)?, host_values(&weight)?, host_values(&grad)?);
    let (gx, gw) = im2col::backward(&geometry, &xs, &ws, &gs, want_x);
    let device = x.device();
    let grad_x = gx
        .map(|gx| Tensor::from_vec(gx, (n, c, h, w), device))
        .transpose()?;
    Ok((grad_x, Tensor::from_vec(gw, (o, c, k, k), device)?))
}

/// `grad` (N, C, H, W) with `stride - 1` zeros between neighbouring pixels:
/// (N, C, (H - 1) * stride + 1, (W - 1) * stride + 1).
fn spread(grad: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(grad.clone());
    }
    let (n, c, h, w) = grad.dims4()?;
    grad.reshape((n, c, h, 1, w, 1))?
        .pad_with_zeros(3, 0, stride - 1)?
        .pad_with_zeros(5, 0, stride - 1)?
        .reshape((n, c, h * stride, w * stride))?
        .narrow(2, 0, (h - 1) * stride + 1)?
        .narrow(3, 0, (w - 1) * stride + 1)
}

/// `weight` (out, in, k, k) flipped in both spatial axes.
fn flip_spatial(weight: &Tensor) -> Result<Tensor> {
    let (o, i, h, w) = weight.dims4()?;
    let reversed: Vec<u32> = (0..(h * w) as u32).rev().collect();
    let reversed = Tensor::new(reversed, weight.device())?;
    weight
        .reshape((o * i, h * w))?
        .index_select(&reversed, 1)?
        .reshape((o, i, h, w))
}

/// What follows a convolution in inference mode, applied per output channel while its
/// output is still in cache: `y * scale + shift`, then the activation.
#[derive(Debug, Clone, Default)]
pub struct Epilogue {
    /// Per output channel; none is 1.
    pub scale: Option<Vec<f32>>,
    /// Per output channel; none is 0.
    pub shift: Option<Vec<f32>>,
    /// Applied last.
    pub activation: Activation,
}

impl Epilogue {
    /// The epilogue on `y` (N, C, H, W) in tensor operations.
    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let channels = y.dim(1)?;
        let per_channel = |v: &[f32]| Tensor::new(v, y.device())?.reshape((1, channels, 1, 1));
        let y = match &self.scale {
            Some(scale) => y.broadcast_mul(&per_channel(scale)?)?,
            None => y.clone(),
        };
        let y = match &self.shift {
            Some(shift) => y.broadcast_add(&per_channel(shift)?)?,
            None => y,
        };
        self.activation.forward(&y)
    }

    /// The epilogue in place on `planes`, consecutive planes of `plane` values each, the
    /// first of channel `first`, channels counted modulo their number.
    pub fn apply(&self, planes: &mut [f32], plane: usize, first: usize) {
        if self.scale.is_none() && self.shift.is_none() && self.activation == Activation::Identity {
            return;
        }
        let channels = (self.scale.as_ref().or(self.shift.as_ref())).map_or(1, Vec::len);
        for (i, values) in planes.chunks_mut(plane).enumerate() {
            let channel = (first + i) % channels;
            let scale = self.scale.as_ref().map_or(1.0, |s| s[channel]);
            let shift = self.shift.as_ref().map_or(0.0, |s| s[channel]);
            for v in values {
                *v = self.activation.apply(*v * scale + shift);
            }
        }
    }
}

/// An activation fused into a convolution's epilogue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activation {
    /// None.
    #[default]
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
}

impl Activation {
    /// The activation, with a gradient: on the CPU one op each way (candle's ReLU6 is a
    /// maximum and a minimum, each a full pass with masks to differentiate), elsewhere
    /// tensor operations.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(x.clone()),
            _ if is_cpu_f32(x) => x.apply_op1(self),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }

    fn apply(self, y: f32) -> f32 {
        match self {
            Activation::Identity => y,
            // Not `y.max(0.0)`, which turns NaN into 0: a diverged trial's NaN must reach the
            // loss, as through PyTorch's ReLU.
            Activation::Relu => {
                if y < 0.0 {
                    0.0
                } else {
                    y
                }
            }
            Activation::Relu6 => y.clamp(0.0, 6.0),
        }
    }
}

/// A convolution of `x` (N, C, H, W) with `weight` (O, C, k, k) after zero padding
/// (top, bottom, left, right), then `epilogue`; no gradient graph. On the CPU xferlab's kernel
/// ([`im2col::forward`]: the epilogue runs while the output is in cache); elsewhere candle's
/// `conv2d` and tensor operations.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize, usize, usize),
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let (x, weight) = (x.detach(), weight.detach());
    if is_cpu_f32(&x) {
        let op = CpuConv {
            stride,
            padding,
            epilogue: epilogue.clone(),
        };
        return x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &op);
    }
    let (top, bottom, left, right) = padding;
    let y = if top == bottom && left == right && top == left {
        x.conv2d(&weight, top, stride, 1, 1)?
    } else {
        x.pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .conv2d(&weight, 0, stride, 1, 1)?
    };
    epilogue.forward(&y)
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = (f32_values(x, layout)?.par_iter())
            .map(|&v| self.apply(v))
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// The gradient passes where the output is strictly inside the activation's linear
    /// range (PyTorch's choice at the kinks).
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (y, grad) = (y.contiguous()?, grad.contiguous()?);
        let (ys, gs) = (host_values(&y)?, host_values(&grad)?);
        let upper = match self {
            Activation::Relu6 => 6.0,
            _ => f32::INFINITY,
        };
        let dx: Vec<f32> = (ys.par_iter().zip(&gs[..]))
            .map(|(&y, &g)| if y > 0.0 && y < upper { g } else { 0.0 })
            .collect();
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// [`conv2d`]'s CPU kernel; without an epilogue ([`Conv2d::forward`]) also its backward pass.
struct CpuConv {
    stride: usize,
    padding: (usize, usize, usize, usize),
    epilogue: Epilogue,
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_values(x, x_layout)?, f32_values(w, w_layout)?);
        let (n, c, h, width) = x_layout.shape().dims4()?;
        let (o, wc, k, kw) = w_layout.shape().dims4()?;
        let (s, (top, bottom, left, right)) = (self.stride, self.padding);
        if wc != c || k != kw || s == 0 || h + top + bottom < k || width + left + right < k {
            candle_core::bail!(
                "conv2d-cpu: input {:?}, kernel {:?}, stride {s}, padding {:?}",
                x_layout.dims(),
                w_layout.dims(),
                self.padding
            );
        }
        let oh = (h + top + bottom - k) / s + 1;
        let ow = (width + left + right - k) / s + 1;
        let geometry = Geometry {
            n,
            c,
            h,
            w: width,
            o,
            k,
            stride: s,
            top,
            left,
            oh,
            ow,
        };
        let y = if winograd::applies(&geometry) {
            winograd::forward(&geometry, x, w, &self.epilogue)
        } else {
            im2col::forward(&geometry, x, w, &self.epilogue)
        };
        Ok((CpuStorage::F32(y), Shape::from((n, o, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let e = &self.epilogue;
        if e.scale.is_some() || e.shift.is_some() || e.activation != Activation::Identity {
            candle_core::bail!("conv2d-cpu: an epilogue has no backward pass");
        }
        let (top, _, left, _) = self.padding;
        let (gx, gw) = cpu_backward(x, weight, grad, self.stride, (top, left), x.track_op())?;
        Ok((gx, Some(gw)))
    }
}

/// [`CpuConv`] with a bias (out): added as the epilogue's shift, its gradient the output
/// gradient summed over each channel's planes. One op instead of a broadcast add after the
/// convolution, whose gradient candle reduces over three axes on one thread.
impl CustomOp3 for CpuConv {
    fn name(&self) -> &'static str {
        "conv2d-bias-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = CpuConv {
            epilogue: Epilogue {
                shift: Some(f32_values(bias, bias_layout)?.to_vec()),
                ..Epilogue::default()
            },
            stride: self.stride,
            padding: self.padding,
        };
        CustomOp2::cpu_fwd(&op, x, x_layout, w, w_layout)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_weight) = CustomOp2::bwd(self, x, weight, output, grad)?;
        let (_, channels, h, w) = grad.dims4()?;
        let grad = grad.contiguous()?;
        let gs = host_values(&grad)?;
        let mut sums = vec![0f64; channels];
        for (at, plane) in gs.chunks(h * w).enumerate() {
            sums[at % channels] += plane.iter().map(|&g| g as f64).sum::<f64>();
        }
        let sums: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
        let grad_bias = Tensor::from_vec(sums, channels, grad.device())?;
        Ok((grad_x, grad_weight, Some(grad_bias)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Outputs and gradients against candle's `conv2d` for the kernels the architectures
    /// use: cnn6's 3x3, ResNet's 7x7 stem, its strided 3x3 and 1x1, EfficientNet's 1x1;
    /// odd sides leave rows past the last strided window. Square inputs: candle's own
    /// backward pass takes the height's output padding for the width too.
    #[test]
    fn gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        for (kernel, stride, padding, side) in [
            (3, 1, 1, 7),
            (7, 2, 3, 13),
            (3, 2, 1, 9),
            (3, 2, 1, 8),
            (1, 2, 0, 9),
            (1, 1, 0, 5),
            (3, 2, 0, 10),
            // Images big enough that the CPU kernel multiplies two of the three at a time,
            // then one; and one at a time, a 1x1 image being its own column matrix.
            (3, 1, 1, 200),
            (1, 1, 0, 700),
        ] {
            let case = format!("k{kernel} s{stride} p{padding} side {side}");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 4, side, side), &dev).unwrap())
                .unwrap();
            let w =
                Var::from_tensor(&Tensor::randn(0f32, 0.3, (5, 4, kernel, kernel), &dev).unwrap())
                    .unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev).unwrap()).unwrap();
            let conv = Conv2d::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
                stride,
                padding,
            )
            .unwrap();
            let ours = conv.forward(x.as_tensor()).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.as_tensor().reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "{case}");
            // A loss that weighs every output differently, so a wrong flip or transpose shows.
            let weights = Tensor::arange(0f32, ours.elem_count() as f32, &dev)
                .unwrap()
                .reshape(ours.shape())
                .unwrap()
                .cos()
                .unwrap();
            let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
            let ours = loss(&ours).backward().unwrap();
            let theirs = loss(&theirs).backward().unwrap();
            // The bias's gradient is each channel's loss weights summed: in f64 here, the
            // reference (candle sums 1.5 million f32 values at side 700, off by 1e-5).
            let per_channel = weights.transpose(0, 1).unwrap().flatten_from(1).unwrap();
            let per_channel = per_channel.to_dtype(DType::F64).unwrap().sum(1).unwrap();
            let bias = per_channel.to_dtype(DType::F32).unwrap();
            assert!(max_diff(ours.get(&b).unwrap(), &bias) < 1e-3, "{case}");
            for var in [&x, &w] {
                let (o, t) = (ours.get(var).unwrap(), theirs.get(var).unwrap());
                assert_eq!(o.dims(), t.dims(), "{case}");
                // Relative to the largest value: a kernel's gradient sums 120,000 terms here.
                let scale = t
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let relative = max_diff(o, t) / scale.max(1.0);
                assert!(relative < 1e-5, "{case}: {relative}");
            }
        }
    }

    /// The CPU kernel against candle's `conv2d` and tensor operations: kernels 1, 3, 5 and 7,
    /// strides 1 and 2, symmetric and "SAME" (uneven) padding, one image (the multiply in
    /// parallel) and several (images in parallel), with and without an epilogue.
    #[test]
    fn the_cpu_kernel_matches_candles_conv2d() {
        let dev = Device::Cpu;
        for (batch, kernel, stride, padding, side) in [
            (3, 3, 1, (1, 1, 1, 1), 7),
            (1, 3, 1, (1, 1, 1, 1), 6),
            (4, 1, 1, (0, 0, 0, 0), 5),
            (3, 1, 2, (0, 0, 0, 0), 9),
            (2, 7, 2, (3, 3, 3, 3), 13),
            (3, 3, 2, (0, 1, 0, 1), 8),
            (2, 5, 2, (1, 2, 1, 2), 9),
            (2, 3, 2, (0, 0, 0, 0), 10),
            (1, 5, 1, (2, 2, 2, 2), 4),
        ] {
            let case = format!("n{batch} k{kernel} s{stride} p{padding:?} side {side}");
            let x = Tensor::randn(0f32, 1., (batch, 4, side, side), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (5, 4, kernel, kernel), &dev).unwrap();
            let (top, bottom, left, right) = padding;
            let theirs = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap()
                .conv2d(&w, 0, stride, 1, 1)
                .unwrap();
            let ours = conv2d(&x, &w, stride, padding, &Epilogue::default()).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{case}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "{case}");
            let (scale, shift) = (
                vec![0.5, -1.0, 2.0, 1.0, 3.0],
                vec![0.1, 0.2, -0.3, 4.0, 0.0],
            );
            let per = |v: &[f32]| Tensor::new(v, &dev).unwrap().reshape((1, 5, 1, 1)).unwrap();
            let affine = theirs
                .broadcast_mul(&per(&scale))
                .unwrap()
                .broadcast_add(&per(&shift))
                .unwrap();
            for (activation, expected) in [
                (Activation::Relu, affine.relu().unwrap()),
                (Activation::Relu6, affine.clamp(0f32, 6f32).unwrap()),
            ] {
                let epilogue = Epilogue {
                    scale: Some(scale.clone()),
                    shift: Some(shift.clone()),
                    activation,
                };
                let ours = conv2d(&x, &w, stride, padding, &epilogue).unwrap();
                assert!(max_diff(&ours, &expected) < 1e-4, "{case} {activation:?}");
            }
        }
    }

    /// ReLU keeps NaN (PyTorch's rule): a diverged trial fails instead of training on zeros.
    #[test]
    fn relu_keeps_nan() {
        assert!(Activation::Relu.apply(f32::NAN).is_nan());
        assert_eq!(Activation::Relu.apply(-1.0), 0.0);
    }

    /// ReLU and ReLU6 and their gradients against candle's `relu` and `clamp`, away from the
    /// kinks (where each picks its own side).
    #[test]
    fn activations_match_candles() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..200).map(|i| (i as f32 - 60.5) * 0.1).collect();
        let x = Var::from_tensor(&Tensor::new(values, &dev).unwrap()).unwrap();
        let weights = Tensor::arange(0f32, 200., &dev).unwrap().cos().unwrap();
        for (ours, theirs) in [
            (Activation::Relu.forward(&x).unwrap(), x.relu().unwrap()),
            (
                Activation::Relu6.forward(&x).unwrap(),
                x.clamp(0f32, 6f32).unwrap(),
            ),
        ] {
            assert_eq!(max_diff(&ours, &theirs), 0.0);
            let grad = |y: &Tensor| {
                let grads = (y * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                grads.get(&x).unwrap().clone()
            };
            assert_eq!(max_diff(&grad(&ours), &grad(&theirs)), 0.0);
        }
    }

    #[test]
    fn an_input_that_needs_no_gradient_gets_none() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 5), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let conv = Conv2d::new(w.as_tensor().clone(), Some(b.clone()), 1, 1).unwrap();
        let grads = conv
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        let expected = x
            .conv2d(w.as_tensor(), 1, 1, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(grads.get(&w).unwrap(), expected.get(&w).unwrap()) < 1e-4);
        // Without any variable no graph is recorded at all.
        let frozen = Conv2d::new(w.as_tensor().detach(), Some(b), 1, 1).unwrap();
        assert!(!frozen.forward(&x).unwrap().track_op());
    }
}
