//! Depthwise convolution (one k x k filter per channel) as k*k shifted multiply-adds.
//!
//! candle runs a grouped `conv2d` as one small convolution per group: for a depthwise layer
//! of 1152 channels that is 1152 convolutions, and EfficientNet-Lite0's forward pass spent
//! most of its time there. Here each kernel tap is one broadcast multiply of a shifted view
//! of the (padded) input by that tap's per-channel weights, summed; stride 2 first splits
//! the input into its four even/odd row and column phases, so that every tap reads one
//! phase at stride 1. Only tensor operations are used, so candle's autograd differentiates
//! it as it is. The same shifted views make ResNet's padded max pooling.

use candle_core::{Result, Tensor};

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
/// `(top, bottom)` and `(left, right)`, at `stride` 1 or 2.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    top_bottom: (usize, usize),
    left_right: (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    let channels = x.dim(1)?;
    let (weight_channels, one, kernel, kernel_width) = weight.dims4()?;
    if weight_channels != channels || one != 1 || kernel != kernel_width {
        candle_core::bail!(
            "depthwise kernel {:?} does not fit {channels} channels",
            weight.dims()
        );
    }
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

/// 3x3 max pooling at stride 2 with one pixel of padding (ResNet's stem), for inputs that
/// are never negative (after a ReLU): padding with zeros then equals PyTorch's padding with
/// -inf. candle's `max_pool2d` has no padding, and no backward pass when the window is
/// larger than the stride; a maximum of shifted views has both.
pub fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    let views = windows(x, 3, (1, 1), (1, 1), 2)?;
    let mut max = views[0].clone();
    for view in &views[1..] {
        max = max.maximum(view)?;
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
            let ours = depthwise_conv2d(&x, &w, padding.0, padding.1, stride).unwrap();
            let ((top, bottom), (left, right)) = padding;
            let theirs = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap()
                .conv2d(&w, 0, stride, 1, 6)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "k{kernel} s{stride} {size}");
            let difference = (ours - &theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                difference < 1e-4,
                "k{kernel} s{stride} {size}: {difference}"
            );
        }
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
        }
    }
}
