//! ResNet-18, -34 and -50 in torchvision's layout, cut into xferlab's blocks: b1 the stem
//! (`conv1` 7x7 stride 2, `bn1`, ReLU, 3x3 max pool stride 2), b2..b5 torchvision's `layer1`
//! to `layer4`; then global average pooling and the head (torchvision's `fc`).
//!
//! It follows torchvision's `models/resnet.py` (which timm's ResNets share, names included):
//! bias-free convolutions with symmetric padding k / 2, BatchNorm with epsilon 1e-5, ReLU;
//! ResNet-18/34 stack basic blocks (two 3x3 convolutions), ResNet-50 bottlenecks (1x1, 3x3,
//! 1x1 to 4x the width) with the stride on the 3x3 ("ResNet v1.5"); the first unit of a layer
//! that changes stride or width adds a `downsample` shortcut (1x1 convolution with the
//! stride, then BatchNorm). A checkpoint's names map to xferlab's by prefix alone:
//! `conv1.` and `bn1.` go under `b1.`, `layerN.` becomes `b{N+1}.`, `fc.` the head.

use candle_core::Tensor;

use super::Mode;
use super::batch_norm::BatchNorm;
use super::conv::{Activation, Conv2d};
use super::depthwise::max_pool_3x3_stride_2;
use super::lora::Lora;
use super::parameters::Parameters;
use crate::spec::Arch;

/// Number of blocks, L: the stem and four layers.
pub const BLOCKS: usize = 5;
/// torchvision's BatchNorm epsilon (PyTorch's default).
pub const BATCH_NORM_EPSILON: f64 = 1e-5;
/// Channels out of the stem.
pub const STEM_CHANNELS: usize = 64;

/// A ResNet's shape: units per layer, and whether they are bottlenecks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Residual units in layer1..layer4.
    pub units: [usize; 4],
    /// Bottleneck units (1x1, 3x3, 1x1, 4x expansion) rather than basic ones (3x3, 3x3).
    pub bottleneck: bool,
}

/// The ResNets xferlab has, as torchvision builds them.
pub fn depth(arch: Arch) -> Option<Depth> {
    let (units, bottleneck) = match arch {
        Arch::Resnet18 => ([2, 2, 2, 2], false),
        Arch::Resnet34 => ([3, 4, 6, 3], false),
        Arch::Resnet50 => ([3, 4, 6, 3], true),
        Arch::Mlp | Arch::Cnn6 | Arch::EfficientnetLite0 | Arch::Bert => return None,
    };
    Some(Depth { units, bottleneck })
}

impl Depth {
    /// Output channels of a unit: the layer's width, times 4 for bottlenecks.
    fn expansion(self) -> usize {
        if self.bottleneck { 4 } else { 1 }
    }

    /// Width of the features the head reads (512 or 2048).
    pub fn features(self) -> usize {
        512 * self.expansion()
    }

    /// Each layer's units in words, for `xferlab models`.
    pub fn describe(self, layer: usize) -> String {
        let width = 64 << layer;
        let stride = if layer == 0 { 1 } else { 2 };
        let unit = if self.bottleneck {
            format!("bottleneck 1x1 {width}, 3x3 {width}, 1x1 {}", width * 4)
        } else {
            format!("basic 3x3 {width}, 3x3 {width}")
        };
        format!("{} x {unit}, stride {stride}", self.units[layer])
    }
}

/// The checkpoint (torchvision, timm) name of an xferlab parameter, or None.
pub fn checkpoint_name(xferlab: &str) -> Option<String> {
    if let Some(rest) = xferlab.strip_prefix("b1.") {
        return Some(rest.to_string());
    }
    if let Some(rest) = xferlab.strip_prefix("head.") {
        return Some(format!("fc.{rest}"));
    }
    let (block, rest) = xferlab.split_once('.')?;
    let layer: usize = block.strip_prefix('b')?.parse().ok()?;
    (2..=BLOCKS)
        .contains(&layer)
        .then(|| format!("layer{}.{rest}", layer - 1))
}

/// The xferlab name of a checkpoint (torchvision, timm) tensor, or None for a name ResNet
/// does not know.
pub fn xferlab_name(checkpoint: &str) -> Option<String> {
    if checkpoint.starts_with("conv1.") || checkpoint.starts_with("bn1.") {
        return Some(format!("b1.{checkpoint}"));
    }
    if let Some(rest) = checkpoint.strip_prefix("fc.") {
        return Some(format!("head.{rest}"));
    }
    let rest = checkpoint.strip_prefix("layer")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    (1..BLOCKS)
        .contains(&layer)
        .then(|| format!("b{}.{rest}", layer + 1))
}

/// A bias-free convolution and its BatchNorm.
pub struct ConvBn {
    conv: Conv2d,
    /// A 1x1 convolution's LoRA update, when the network gives its block one.
    lora: Option<Lora>,
    bn: BatchNorm,
}

impl ConvBn {
    /// A convolution named `conv` and a BatchNorm named `bn`, padding kernel / 2.
    fn new(
        p: &mut Parameters,
        (conv, bn): (&str, &str),
        (input, output): (usize, usize),
        kernel: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let fan_in = input * kernel * kernel;
        let weight = p.uniform(
            format!("{conv}.weight"),
            &[output, input, kernel, kernel],
            fan_in,
        )?;
        let lora = match kernel {
            1 => p.lora(conv, (input, output), Some(stride))?,
            _ => None,
        };
        Ok(ConvBn {
            conv: Conv2d::new(weight, None, stride, kernel / 2)?,
            lora,
            bn: BatchNorm::new(p, bn, output, BATCH_NORM_EPSILON)?,
        })
    }

    /// The convolution, BatchNorm, then `activation`; in inference mode without a LoRA update
    /// as one convolution with BatchNorm and the activation in its epilogue.
    fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        activation: Activation,
    ) -> candle_core::Result<Tensor> {
        if mode == Mode::Infer && self.lora.is_none() {
            return self.conv.forward_infer(x, self.bn.epilogue(activation)?);
        }
        let y = self.conv.forward(x)?;
        let y = match &self.lora {
            Some(lora) => (y + lora.forward(x, mode)?)?,
            None => y,
        };
        activation.forward(&self.bn.forward(&y, mode)?)
    }
}

/// A residual unit: its convolutions with ReLU between them, plus the shortcut, then ReLU.
pub struct Unit {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Unit {
    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            let last = i + 1 == self.convs.len();
            let activation = if last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            y = conv.forward(&y, mode, activation)?;
        }
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x, mode, Activation::Identity)?,
            None => x.clone(),
        };
        Activation::Relu.forward(&(y + shortcut)?)
    }
}

/// One of xferlab's ResNet blocks.
pub enum Block {
    /// b1: conv1, bn1, ReLU, max pool.
    Stem(ConvBn),
    /// b2..b5: torchvision's layer1..layer4.
    Layer(Vec<Unit>),
}

impl Block {
    /// Runs the block on NCHW images or features in `mode`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match self {
            Block::Stem(stem) => max_pool_3x3_stride_2(&stem.forward(x, mode, Activation::Relu)?),
            Block::Layer(units) => {
                let mut x = x.clone();
                for unit in units {
                    x = unit.forward(&x, mode)?;
                }
                Ok(x)
            }
        }
    }
}

/// A ResNet's blocks b1..b5 for images of `channels` channels, freshly initialised
/// (convolutions uniform in ±1/sqrt(fan_in), BatchNorm weight 1, bias 0, mean 0, var 1).
pub(crate) fn build(
    p: &mut Parameters,
    depth: Depth,
    channels: usize,
) -> candle_core::Result<Vec<Block>> {
    let stem = ConvBn::new(p, ("b1.conv1", "b1.bn1"), (channels, STEM_CHANNELS), 7, 2)?;
    let mut blocks = vec![Block::Stem(stem)];
    let mut input = STEM_CHANNELS;
    for (layer, &count) in depth.units.iter().enumerate() {
        let width = 64 << layer;
        let output = width * depth.expansion();
        let mut units = Vec::with_capacity(count);
        for u in 0..count {
            let stride = if u == 0 && layer > 0 { 2 } else { 1 };
            let name = |part: &str| format!("b{}.{u}.{part}", layer + 2);
            let conv = |p: &mut Parameters, i: usize, io, kernel, stride| {
                let (c, b) = (name(&format!("conv{i}")), name(&format!("bn{i}")));
                ConvBn::new(p, (&c, &b), io, kernel, stride)
            };
            let convs = if depth.bottleneck {
                vec![
                    conv(p, 1, (input, width), 1, 1)?,
                    conv(p, 2, (width, width), 3, stride)?,
                    conv(p, 3, (width, output), 1, 1)?,
                ]
            } else {
                vec![
                    conv(p, 1, (input, width), 3, stride)?,
                    conv(p, 2, (width, width), 3, 1)?,
                ]
            };
            let downsample = if stride != 1 || input != output {
                let (c, b) = (name("downsample.0"), name("downsample.1"));
                Some(ConvBn::new(p, (&c, &b), (input, output), 1, stride)?)
            } else {
                None
            };
            units.push(Unit { convs, downsample });
            input = output;
        }
        blocks.push(Block::Layer(units));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_map_to_blocks_and_back() {
        let cases = [
            ("conv1.weight", Some("b1.conv1.weight")),
            ("bn1.running_var", Some("b1.bn1.running_var")),
            ("layer1.0.conv2.weight", Some("b2.0.conv2.weight")),
            (
                "layer2.0.downsample.0.weight",
                Some("b3.0.downsample.0.weight"),
            ),
            ("layer4.2.bn3.running_mean", Some("b5.2.bn3.running_mean")),
            ("fc.weight", Some("head.weight")),
            ("layer5.0.conv1.weight", None),
            ("layer0.0.conv1.weight", None),
            ("classifier.weight", None),
            ("_conv_stem.weight", None),
        ];
        for (from, to) in cases {
            assert_eq!(xferlab_name(from).as_deref(), to, "{from}");
            if let Some(to) = to {
                assert_eq!(checkpoint_name(to).as_deref(), Some(from), "{to}");
            }
        }
    }
}
