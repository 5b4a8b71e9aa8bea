//! EfficientNet-Lite's layers and xferlab's blocks made of them, freshly initialised; a
//! checkpoint's weights are then copied in by name like any source model's.
//!
//! Convolutions pad as TensorFlow's "SAME" does (output ceil(input / stride), the odd pixel
//! of padding at the bottom and right), ReLU6 everywhere, no squeeze-excitation, and a
//! residual connection in every MBConv whose stride is 1 and whose input and output widths
//! agree. Every BatchNorm keeps its four tensors apart (not folded into the convolution), so
//! that a trainable block can update its statistics.

use candle_core::Tensor;

use super::{BATCH_NORM_EPSILON, BLOCKS, FEATURES, STAGES, STEM_CHANNELS};
use crate::model::Mode;
use crate::model::batch_norm::BatchNorm;
use crate::model::conv::{self, Activation, Conv2d};
use crate::model::depthwise::depthwise_conv2d;
use crate::model::lora::Lora;
use crate::model::parameters::Parameters;

/// A bias-free convolution with TensorFlow's "SAME" padding, then BatchNorm.
pub struct ConvBn {
    weight: Tensor,
    /// A 1x1 convolution's LoRA update, when the network gives its block one.
    lora: Option<Lora>,
    bn: BatchNorm,
    kernel: usize,
    stride: usize,
    groups: usize,
}

/// TensorFlow's "SAME" padding of one spatial dimension: (before, after) for an output of
/// ceil(size / stride), the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = size.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Where a convolution and its BatchNorm sit, and their shapes.
struct ConvSpec<'a> {
    conv: &'a str,
    bn: &'a str,
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    depthwise: bool,
}

impl ConvBn {
    fn new(p: &mut Parameters, spec: ConvSpec) -> candle_core::Result<Self> {
        let per_group = if spec.depthwise { 1 } else { spec.input };
        let (kernel, output) = (spec.kernel, spec.output);
        let weight = p.uniform(
            format!("{}.weight", spec.conv),
            &[output, per_group, kernel, kernel],
            per_group * kernel * kernel,
        )?;
        let lora = match (kernel, spec.depthwise) {
            (1, false) => p.lora(spec.conv, (spec.input, output), Some(spec.stride))?,
            _ => None,
        };
        Ok(ConvBn {
            weight,
            lora,
            bn: BatchNorm::new(p, spec.bn, output, BATCH_NORM_EPSILON)?,
            kernel,
            stride: spec.stride,
            groups: if spec.depthwise { spec.input } else { 1 },
        })
    }

    /// The convolution, BatchNorm, then `activation`; in inference mode without a LoRA update
    /// one convolution with BatchNorm and the activation in its epilogue.
    fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        activation: Activation,
    ) -> candle_core::Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let (top, bottom) = same_padding(height, self.kernel, self.stride);
        let (left, right) = same_padding(width, self.kernel, self.stride);
        if mode == Mode::Infer && self.lora.is_none() {
            let epilogue = self.bn.epilogue(activation)?;
            return match self.groups {
                1 => {
                    let padding = (top, bottom, left, right);
                    conv::conv2d(x, &self.weight, self.stride, padding, &epilogue)
                }
                _ => {
                    let (w, s) = (&self.weight, self.stride);
                    depthwise_conv2d(x, w, (top, bottom), (left, right), s, Some(&epilogue))
                }
            };
        }
        let y = if self.groups > 1 {
            let (w, s) = (&self.weight, self.stride);
            depthwise_conv2d(x, w, (top, bottom), (left, right), s, None)?
        } else if top == bottom && left == right && top == left {
            Conv2d::new(self.weight.clone(), None, self.stride, top)?.forward(x)?
        } else {
            let padded = x
                .pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?;
            Conv2d::new(self.weight.clone(), None, self.stride, 0)?.forward(&padded)?
        };
        // A 1x1 convolution's "SAME" padding is none, so the update sees the same input.
        let y = match &self.lora {
            Some(lora) => (y + lora.forward(x, mode)?)?,
            None => y,
        };
        activation.forward(&self.bn.forward(&y, mode)?)
    }
}

/// Mobile inverted bottleneck: expand (1x1), depthwise (k x k), project (1x1).
pub struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(&y, mode, Activation::Relu6)?;
        }
        y = self.depthwise.forward(&y, mode, Activation::Relu6)?;
        y = self.project.forward(&y, mode, Activation::Identity)?;
        if self.residual { y + x } else { Ok(y) }
    }
}

/// One of xferlab's EfficientNet blocks.
pub enum Block {
    /// The stem (b1) or the final 1x1 convolution (b9), each followed by ReLU6.
    ConvBn(ConvBn),
    /// An MBConv stage (b2..b8).
    Stage(Vec<MbConv>),
}

impl Block {
    /// Runs the block on NCHW images or features in `mode`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match self {
            Block::ConvBn(conv) => conv.forward(x, mode, Activation::Relu6),
            Block::Stage(stage) => {
                let mut x = x.clone();
                for mbconv in stage {
                    x = mbconv.forward(&x, mode)?;
                }
                Ok(x)
            }
        }
    }
}

/// EfficientNet-Lite0's blocks b1..b9 for images of `channels` channels, freshly initialised
/// (convolutions uniform in ±1/sqrt(fan_in), BatchNorm weight 1, bias 0, mean 0, var 1).
pub(crate) fn build(p: &mut Parameters, channels: usize) -> candle_core::Result<Vec<Block>> {
    let mut blocks = Vec::with_capacity(BLOCKS);
    blocks.push(Block::ConvBn(ConvBn::new(
        p,
        ConvSpec {
            conv: "b1.conv",
            bn: "b1.bn",
            input: channels,
            output: STEM_CHANNELS,
            kernel: 3,
            stride: 2,
            depthwise: false,
        },
    )?));
    for stage in &STAGES {
        let mut stage_blocks = Vec::new();
        for i in 0..stage.checkpoint_blocks.len() {
            let input = if i == 0 { stage.input } else { stage.output };
            let stride = if i == 0 { stage.stride } else { 1 };
            let wide = input * stage.expand;
            let name = |part: &str| format!("{}.{i}.{part}", stage.block);
            let expand = if stage.expand == 1 {
                None
            } else {
                let (conv, bn) = (name("expand_conv"), name("expand_bn"));
                Some(ConvBn::new(
                    p,
                    ConvSpec {
                        conv: &conv,
                        bn: &bn,
                        input,
                        output: wide,
                        kernel: 1,
                        stride: 1,
                        depthwise: false,
                    },
                )?)
            };
            let (conv, bn) = (name("depthwise_conv"), name("depthwise_bn"));
            let depthwise = ConvBn::new(
                p,
                ConvSpec {
                    conv: &conv,
                    bn: &bn,
                    input: wide,
                    output: wide,
                    kernel: stage.kernel,
                    stride,
                    depthwise: true,
                },
            )?;
            let (conv, bn) = (name("project_conv"), name("project_bn"));
            let project = ConvBn::new(
                p,
                ConvSpec {
                    conv: &conv,
                    bn: &bn,
                    input: wide,
                    output: stage.output,
                    kernel: 1,
                    stride: 1,
                    depthwise: false,
                },
            )?;
            stage_blocks.push(MbConv {
                expand,
                depthwise,
                project,
                residual: stride == 1 && input == stage.output,
            });
        }
        blocks.push(Block::Stage(stage_blocks));
    }
    blocks.push(Block::ConvBn(ConvBn::new(
        p,
        ConvSpec {
            conv: "b9.conv",
            bn: "b9.bn",
            input: STAGES[STAGES.len() - 1].output,
            output: FEATURES,
            kernel: 1,
            stride: 1,
            depthwise: false,
        },
    )?));
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
        assert_eq!(same_padding(15, 3, 2), (1, 1));
    }
}
