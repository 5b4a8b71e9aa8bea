//! EfficientNet-Lite0, cut into xferlab's blocks: b1 the stem, b2..b8 the
//! seven MBConv stages, b9 the final 1x1 convolution to 1280 channels; then global average
//! pooling and the classifier (the head).
//!
//! It follows the model code published with the ImageNet weights xferlab imports
//! (`efficientnet_lite_pytorch`, repository ml-illustrated/EfficientNet-Lite-PyTorch,
//! `model.py` and `utils.py`), itself a port of TensorFlow's: convolutions pad as
//! TensorFlow's "SAME" does (output ceil(input / stride), the odd pixel of padding at the
//! bottom and right), ReLU6 everywhere, BatchNorm with epsilon 1e-3, no squeeze-excitation,
//! stem (32) and head (1280) widths not scaled, and a residual connection in every block
//! whose stride is 1 and whose input and output widths agree (the layers: `blocks.rs`).
//! BatchNorm runs on its running statistics in frozen blocks and on the batch's in trainable
//! ones (`crate::model::batch_norm`).
//!
//! The checkpoint's names map to xferlab's by the two tables below ([`RENAMES`] and
//! [`STAGES`]), checkable against the file in a minute.

use std::collections::HashMap;
use std::ops::Range;

pub(crate) mod blocks;

use candle_core::{Device, Tensor};

use super::{Mismatch, Mode, Network};
use crate::checkpoint::StateDict;
use crate::data::ImageShape;
use crate::spec::{Arch, ModelSpec};

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

/// The EfficientNet-PyTorch name of an xferlab parameter (the inverse of [`xferlab_name`]),
/// for errors about a tensor the checkpoint lacks.
pub fn checkpoint_name(xferlab: &str) -> Option<String> {
    if let Some((to, from)) =
        (RENAMES[..5].iter().map(|(f, t)| (t, f))).find(|(to, _)| xferlab.starts_with(*to))
    {
        return Some(format!("{from}{}", &xferlab[to.len()..]));
    }
    let (block, rest) = xferlab.split_once('.')?;
    let stage = STAGES.iter().find(|s| s.block == block)?;
    let (within, rest) = rest.split_once('.')?;
    let index = stage.checkpoint_blocks.start + within.parse::<usize>().ok()?;
    let (from, to) = RENAMES[5..].iter().find(|(_, to)| rest.starts_with(to))?;
    Some(format!("_blocks.{index}.{from}{}", &rest[to.len()..]))
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

pub use blocks::{Block, same_padding};

/// EfficientNet-Lite0 with its blocks b1..b9 and a head, in inference mode: a
/// [`Network`] built from a whole checkpoint, head included (for checking the import
/// against ImageNet's own classes).
pub struct EfficientNetLite {
    net: Network,
}

impl EfficientNetLite {
    /// Builds the network from tensors under xferlab's names (see [`import`]), with a head
    /// of `classes` outputs; names the first tensor that is missing or does not fit.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        classes: usize,
    ) -> Result<Self, Mismatch> {
        let model = ModelSpec::plain(Arch::EfficientnetLite0);
        let shape = ImageShape {
            channels: 3,
            height: IMAGE_SIZE,
            width: IMAGE_SIZE,
        };
        let net = Network::new(&model, shape, classes, 0, &Device::Cpu)?;
        net.load_all(tensors)?;
        Ok(EfficientNetLite { net })
    }

    /// Number of blocks, L (9).
    pub fn block_count(&self) -> usize {
        self.net.block_count()
    }

    /// Runs blocks `range` (0-based: `0..f` is blocks 1..f) on NCHW images or features.
    pub fn forward_blocks(&self, x: &Tensor, range: Range<usize>) -> candle_core::Result<Tensor> {
        self.net.forward_blocks(x, None, range, Mode::Infer)
    }

    /// Global average pooling and the classifier, on b9's output.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.net.head(x)
    }

    /// Logits for a batch of NCHW images.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward(x, None)
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
            if let Some(to) = to {
                assert_eq!(checkpoint_name(to).as_deref(), Some(from), "{to}");
            }
        }
    }

    #[test]
    fn a_missing_or_misshaped_tensor_is_named() {
        let empty = HashMap::new();
        let Err(Mismatch::Missing { name, block }) = EfficientNetLite::from_tensors(&empty, 10)
        else {
            panic!("built from nothing");
        };
        assert_eq!((name.as_str(), block), ("b1.bn.bias", 1));
        let model = ModelSpec::plain(Arch::EfficientnetLite0);
        let shape = ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        let mut wrong = Network::new(&model, shape, 10, 0, &Device::Cpu)
            .unwrap()
            .tensors();
        wrong.insert(
            "b1.conv.weight".to_string(),
            Tensor::zeros((32, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
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
