//! A 3×3 convolution with a cheaper backward pass than candle's.
//!
//! candle differentiates `conv2d` with `conv_transpose2d` for the input gradient, a direct loop
//! on the CPU and on CUDA, and computes that gradient even when the input needs none: the
//! first trainable block, whose input is an image batch or cached frozen features. Here the
//! input gradient is a forward convolution with the flipped kernel (im2col and a matrix
//! multiply on both backends), and it is skipped when the input does not need it. The kernel
//! gradient is candle's own. `just bench-kernels` measures the difference.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Storage, Tensor};

const SIZE: usize = 3;
const PADDING: usize = 1;

/// A 3×3, stride-1, padding-1 convolution with bias.
pub struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    /// The positions of a flattened 3×3 kernel, reversed: flips it in both spatial axes.
    flip: Tensor,
}

impl Conv3x3 {
    /// A convolution with `weight` (out, in, 3, 3) and `bias` (out), on `device`.
    pub fn new(weight: Tensor, bias: Tensor, device: &Device) -> Result<Self> {
        let flip: Vec<u32> = (0..(SIZE * SIZE) as u32).rev().collect();
        Ok(Conv3x3 {
            weight,
            bias,
            flip: Tensor::new(flip, device)?,
        })
    }

    /// Convolves `x` (N, in, H, W) into (N, out, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.detach().conv2d(&self.weight.detach(), PADDING, 1, 1, 1)?;
        let y = if x.track_op() || self.weight.track_op() {
            x.apply_op2(
                &self.weight,
                Backward {
                    output: y,
                    flip: self.flip.clone(),
                },
            )?
        } else {
            y
        };
        let channels = self.bias.dims1()?;
        y.broadcast_add(&self.bias.reshape((1, channels, 1, 1))?)
    }
}

/// Records a convolution already computed (`output`) in the gradient graph with this file's
/// backward pass; its forward only hands that output over.
struct Backward {
    output: Tensor,
    flip: Tensor,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "conv3x3"
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
            _ => candle_core::bail!("conv3x3: output is not on the CPU"),
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
            _ => candle_core::bail!("conv3x3: output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = if x.track_op() {
            // The adjoint of a stride-1 convolution: convolve the gradient with the kernel
            // flipped in space and with input and output channels swapped.
            let (out_c, in_c, h, w) = weight.dims4()?;
            let flipped = weight
                .reshape((out_c * in_c, h * w))?
                .index_select(&self.flip, 1)?
                .reshape((out_c, in_c, h, w))?
                .transpose(0, 1)?
                .contiguous()?;
            Some(grad.conv2d(&flipped, SIZE - 1 - PADDING, 1, 1, 1)?)
        } else {
            None
        };
        // Batch and channels swapped: a convolution of the input with the gradient as kernel.
        // candle's cuDNN path runs only contiguous kernels (others take a direct loop).
        let grad_weight = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?.contiguous()?, PADDING, 1, 1, 1)?
            .transpose(0, 1)?;
        Ok((grad_x, Some(grad_weight)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

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

    #[test]
    fn gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 4, 7, 6), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (5, 4, 3, 3), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev).unwrap()).unwrap();
        let conv = Conv3x3::new(w.as_tensor().clone(), b.as_tensor().clone(), &dev).unwrap();
        let ours = conv.forward(x.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .conv2d(w.as_tensor(), 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(max_diff(&ours, &theirs), 0.0);
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
            assert_eq!(o.dims(), t.dims());
            assert!(max_diff(o, t) < 1e-4, "{}", max_diff(o, t));
        }
    }

    #[test]
    fn an_input_that_needs_no_gradient_gets_none() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 5), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let conv = Conv3x3::new(w.as_tensor().clone(), b, &dev).unwrap();
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
        let frozen = Conv3x3::new(w.as_tensor().detach(), conv.bias.clone(), &dev).unwrap();
        assert!(!frozen.forward(&x).unwrap().track_op());
    }
}
