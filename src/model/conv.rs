//! A convolution with a cheaper backward pass than candle's.
//!
//! candle differentiates `conv2d` with `conv_transpose2d` for the input gradient, a direct loop
//! on the CPU and on CUDA, and computes that gradient even when the input needs none: the
//! first trainable block, whose input is an image batch or cached frozen features. Here the
//! input gradient is a forward convolution with the flipped kernel (im2col and a matrix
//! multiply on both backends) of the output gradient, spread out with zeros between its
//! pixels at stride 2 and more; it is skipped when the input does not need it. The kernel
//! gradient is candle's own formula. `just bench-kernels` measures the difference.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

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
        let y = x
            .detach()
            .conv2d(&self.weight.detach(), self.padding, self.stride, 1, 1)?;
        let y = if x.track_op() || self.weight.track_op() {
            x.apply_op2(
                &self.weight,
                Backward {
                    output: y,
                    stride: self.stride,
                    padding: self.padding,
                },
            )?
        } else {
            y
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Records a convolution already computed (`output`) in the gradient graph with this file's
/// backward pass; its forward only hands that output over.
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
            let (rest_h, rest_w) = (rest(height), rest(width));
            Some(if rest_h == 0 && rest_w == 0 {
                spread.conv2d(&flipped, edge, 1, 1, 1)?
            } else {
                spread
                    .pad_with_zeros(2, edge, edge + rest_h)?
                    .pad_with_zeros(3, edge, edge + rest_w)?
                    .conv2d(&flipped, 0, 1, 1, 1)?
            })
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
            assert_eq!(max_diff(&ours, &theirs), 0.0, "{case}");
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
            for var in [&x, &w, &b] {
                let (o, t) = (ours.get(var).unwrap(), theirs.get(var).unwrap());
                assert_eq!(o.dims(), t.dims(), "{case}");
                assert!(max_diff(o, t) < 1e-4, "{case}: {}", max_diff(o, t));
            }
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
