//! Architectures cut into named blocks (`b1`..`bL`) plus a new classification `head`.
//!
//! Every parameter is named under its block (`b2.conv.weight`), so freezing blocks 1..f is
//! leaving their variables out of the optimizer, transferring blocks 1..t is copying the
//! tensors whose names start with `b1.`..`bt.`, and a checkpoint is a plain safetensors file.

pub mod batch_norm;
pub mod bert;
pub mod conv;
pub mod depthwise;
mod dropout;
pub mod efficientnet;
mod im2col;
pub mod import;
pub mod lora;
mod parameters;
pub mod resnet;
mod rows;
pub mod summary;
mod winograd;

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};

use crate::data::{ImageShape, Input};
use crate::spec::{Arch, LoraSpec, ModelSpec};
use batch_norm::is_running_statistic;
use conv::Conv2d;
use parameters::Parameters;

/// Name of block `i` (from 1).
pub fn block_name(i: usize) -> String {
    format!("b{i}")
}

/// Number of blocks L of a model, without building it.
pub fn block_count(model: &ModelSpec) -> usize {
    match model.arch {
        Arch::Mlp => model.hidden.as_ref().map_or(0, Vec::len),
        Arch::Cnn6 => CNN6_BLOCKS,
        Arch::EfficientnetLite0 => efficientnet::BLOCKS,
        Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => resnet::BLOCKS,
        // The embeddings and the encoder layers; the config is there once the spec is loaded.
        Arch::Bert => model.config.as_ref().map_or(0, |c| c.num_hidden_layers + 1),
    }
}

/// cnn6: four 3x3 convolutions and one linear layer.
const CNN6_BLOCKS: usize = 5;

/// The block a parameter belongs to (1..=L), or None for the head.
pub fn block_of(parameter: &str) -> Option<usize> {
    parameter.split('.').next()?.strip_prefix('b')?.parse().ok()
}

enum Layer {
    Conv(Conv2d),
    Linear(lora::Linear),
    Relu,
    MaxPool2,
    Flatten,
}

impl Layer {
    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match self {
            Layer::Conv(conv) => conv.forward(x),
            Layer::Linear(linear) => linear.forward(x, mode),
            Layer::Relu => conv::Activation::Relu.forward(x),
            Layer::MaxPool2 => depthwise::max_pool_2x2(x),
            Layer::Flatten => x.flatten_from(1),
        }
    }
}

/// One block: a few simple layers (mlp, cnn6), or an EfficientNet or ResNet block.
enum Block {
    Layers(Vec<Layer>),
    EfficientNet(efficientnet::Block),
    ResNet(resnet::Block),
    Bert(bert::Block),
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        match self {
            Block::Layers(layers) => {
                // mlp's and cnn6's layers differ between modes only in LoRA's dropout.
                let mut x = x.clone();
                for layer in layers {
                    x = layer.forward(&x, mode)?;
                }
                Ok(x)
            }
            Block::EfficientNet(block) => block.forward(x, mode),
            Block::ResNet(block) => block.forward(x, mode),
            Block::Bert(block) => match mask {
                Some(mask) => block.forward(x, mask, mode),
                None => candle_core::bail!("texts need their attention mask"),
            },
        }
    }
}

/// How blocks run. Training: batch statistics, running statistics updated (BatchNorm).
/// Inference: running statistics, untouched; frozen blocks always run so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The blocks being trained.
    Train,
    /// Frozen blocks, evaluation and feature extraction.
    Infer,
}

/// Why a source model's tensors do not fit a network; reads after the source's name.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    /// A tensor a transferred block needs is absent.
    #[error("has no tensor `{name}` (needed for block {block})")]
    Missing {
        /// The parameter.
        name: String,
        /// Its block.
        block: usize,
    },
    /// A tensor has another shape than the parameter.
    #[error("tensor `{name}` has shape {found:?}, the model needs {needed:?}")]
    Shape {
        /// The parameter.
        name: String,
        /// The tensor's shape.
        found: Vec<usize>,
        /// The parameter's shape.
        needed: Vec<usize>,
    },
    /// A tensor does not hold floating-point numbers.
    #[error("tensor `{name}` holds {dtype:?}, not floating-point weights")]
    NotFloat {
        /// The parameter.
        name: String,
        /// What it holds.
        dtype: DType,
    },
    /// Copying failed.
    #[error("cannot be copied: {0}")]
    Copy(#[from] candle_core::Error),
}

impl Mismatch {
    /// The parameter named by the mismatch.
    pub fn name(&self) -> Option<&str> {
        match self {
            Mismatch::Missing { name, .. }
            | Mismatch::Shape { name, .. }
            | Mismatch::NotFloat { name, .. } => Some(name),
            Mismatch::Copy(_) => None,
        }
    }
}

/// A network: blocks, then a linear head (after global average pooling for convolutional
/// features that keep their spatial size). Owns its parameters in a [`VarMap`].
pub struct Network {
    blocks: Vec<Block>,
    head: Linear,
    pool: bool,
    varmap: VarMap,
}

impl Network {
    /// Builds a freshly initialised network for `input` (images or tokens) and `classes`
    /// outputs.
    pub fn new(
        model: &ModelSpec,
        input: impl Into<Input>,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Network::build(
            model,
            input.into(),
            classes,
            Parameters::new(seed, device),
            seed,
        )
    }

    /// `new`, with a LoRA update as `lora` says on every linear layer and 1x1 convolution of
    /// the blocks above `above` (the freeze depth).
    pub fn with_lora(
        model: &ModelSpec,
        input: impl Into<Input>,
        classes: usize,
        seed: u64,
        device: &Device,
        (lora, above): (LoraSpec, usize),
    ) -> candle_core::Result<Self> {
        let p = Parameters::new(seed, device).with_lora(lora, above, seed);
        Network::build(model, input.into(), classes, p, seed)
    }

    fn build(
        model: &ModelSpec,
        input: Input,
        classes: usize,
        mut p: Parameters,
        seed: u64,
    ) -> candle_core::Result<Self> {
        let input = match (input, model.arch) {
            (Input::Image(shape), _) => shape,
            // Texts have no image shape; only the text encoder reads them.
            (Input::Tokens, Arch::Bert) => ImageShape {
                channels: 0,
                height: 0,
                width: 0,
            },
            (Input::Tokens, arch) => {
                candle_core::bail!("{} does not read texts", import::arch_name(arch))
            }
        };
        let mut blocks = Vec::new();
        let mut pool = false;
        let features = match model.arch {
            Arch::Mlp => {
                let mut width = input.values();
                for (i, &hidden) in model.hidden.iter().flatten().enumerate() {
                    let name = block_name(i + 1);
                    let linear = p.block_linear(&format!("{name}.linear"), width, hidden)?;
                    let mut layers = vec![Layer::Linear(linear), Layer::Relu];
                    if i == 0 {
                        layers.insert(0, Layer::Flatten);
                    }
                    blocks.push(Block::Layers(layers));
                    width = hidden;
                }
                width
            }
            Arch::Cnn6 => {
                let c = input.channels;
                let mut conv = |name, i, o| p.conv3x3(name, i, o).map(Layer::Conv);
                let layers = [
                    vec![conv("b1.conv", c, 32)?, Layer::Relu],
                    vec![conv("b2.conv", 32, 32)?, Layer::Relu, Layer::MaxPool2],
                    vec![conv("b3.conv", 32, 64)?, Layer::Relu],
                    vec![conv("b4.conv", 64, 64)?, Layer::Relu, Layer::MaxPool2],
                ];
                blocks.extend(layers.into_iter().map(Block::Layers));
                let flat = 64 * (input.height / 4) * (input.width / 4);
                blocks.push(Block::Layers(vec![
                    Layer::Flatten,
                    Layer::Linear(p.block_linear("b5.linear", flat, 256)?),
                    Layer::Relu,
                ]));
                debug_assert_eq!(blocks.len(), CNN6_BLOCKS);
                256
            }
            Arch::EfficientnetLite0 => {
                let built = efficientnet::blocks::build(&mut p, input.channels)?;
                blocks.extend(built.into_iter().map(Block::EfficientNet));
                pool = true;
                efficientnet::FEATURES
            }
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => {
                let depth = resnet::depth(model.arch).expect("a ResNet");
                let built = resnet::build(&mut p, depth, input.channels)?;
                blocks.extend(built.into_iter().map(Block::ResNet));
                pool = true;
                depth.features()
            }
            Arch::Bert => {
                let Some(config) = &model.config else {
                    candle_core::bail!("bert needs its config (config.json)")
                };
                let pooling = model.pooling.unwrap_or(crate::spec::Pooling::Cls);
                let built = bert::build(&mut p, config, pooling, seed)?;
                blocks.extend(built.into_iter().map(Block::Bert));
                config.hidden_size
            }
        };
        let head = p.linear("head", features, classes)?;
        Ok(Network {
            blocks,
            head,
            pool,
            varmap: p.varmap,
        })
    }

    /// Number of blocks, L.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Runs blocks `range` (0-based: `0..f` is blocks 1..f) in `mode`; texts with their
    /// attention mask.
    pub fn forward_blocks(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        range: Range<usize>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks[range] {
            x = block.forward(&x, mask, mode)?;
        }
        Ok(x)
    }

    /// Runs the head on the last block's output.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pool {
            self.head.forward(&x.mean((2, 3))?)
        } else {
            self.head.forward(x)
        }
    }

    /// Logits for a batch of images (or texts with their mask), in inference mode.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.head(&self.forward_blocks(x, mask, 0..self.blocks.len(), Mode::Infer)?)
    }

    /// The variables the optimizer updates when blocks 1..`freeze_depth` are frozen: never
    /// BatchNorm's running statistics, which training mode updates itself.
    pub fn trainable_vars(&self, freeze_depth: usize) -> Vec<Var> {
        let vars = self.trainable(freeze_depth);
        vars.into_iter().map(|(_, var)| var).collect()
    }

    /// `trainable_vars` with their names, sorted by name.
    pub fn trainable(&self, freeze_depth: usize) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(String, Var)> = data
            .iter()
            .filter(|(name, _)| !is_running_statistic(name))
            .filter(|(name, _)| block_of(name).is_none_or(|b| b > freeze_depth))
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Copies of the tensors training changes above `freeze_depth` (the head's and the
    /// trainable blocks', BatchNorm's running statistics included), to `restore` later.
    pub fn snapshot(&self, freeze_depth: usize) -> candle_core::Result<Vec<(Var, Tensor)>> {
        let data = self.varmap.data().lock().expect("varmap lock");
        data.iter()
            .filter(|(name, _)| block_of(name).is_none_or(|b| b > freeze_depth))
            .map(|(_, var)| Ok((var.clone(), var.as_tensor().copy()?)))
            .collect()
    }

    /// Puts a `snapshot`'s tensors back.
    pub fn restore(snapshot: &[(Var, Tensor)]) -> candle_core::Result<()> {
        for (var, tensor) in snapshot {
            var.set(tensor)?;
        }
        Ok(())
    }

    /// Copies blocks 1..=`depth` from `source` (tensors by name, BatchNorm's running
    /// statistics included, LoRA's matrices not: the source has none); names the first
    /// tensor that is missing or does not fit.
    pub fn transfer_from(
        &self,
        source: &HashMap<String, Tensor>,
        depth: usize,
    ) -> Result<(), Mismatch> {
        self.copy_from(source, |name| {
            block_of(name).is_some_and(|b| b <= depth) && !lora::is_lora(name)
        })
    }

    /// Copies every parameter, the head's too, from `source`.
    pub fn load_all(&self, source: &HashMap<String, Tensor>) -> Result<(), Mismatch> {
        self.copy_from(source, |_| true)
    }

    fn copy_from(
        &self,
        source: &HashMap<String, Tensor>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), Mismatch> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().filter(|n| wanted(n)).collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let tensor = source.get(name).ok_or_else(|| Mismatch::Missing {
                name: name.clone(),
                block: block_of(name).unwrap_or(self.blocks.len() + 1),
            })?;
            if tensor.dims() != var.dims() {
                return Err(Mismatch::Shape {
                    name: name.clone(),
                    found: tensor.dims().to_vec(),
                    needed: var.dims().to_vec(),
                });
            }
            if !matches!(
                tensor.dtype(),
                DType::F16 | DType::BF16 | DType::F32 | DType::F64
            ) {
                return Err(Mismatch::NotFloat {
                    name: name.clone(),
                    dtype: tensor.dtype(),
                });
            }
            let value = tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(var.device()))?;
            var.set(&value)?;
        }
        Ok(())
    }

    /// Every parameter by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    }

    /// Saves every parameter to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> candle_core::Result<()> {
        self.varmap.save(path)
    }
}

/// Whether `x` takes xferlab's own CPU kernels: on the CPU, in f32 (elsewhere candle's ops).
pub(crate) fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// A contiguous CPU tensor's f32 values, read where they lie (a read lock on its storage):
/// what the CPU kernels' backward passes read. Callers pass `t.contiguous()?`, which is `t`
/// itself when it already is.
pub(crate) fn host_values(t: &Tensor) -> candle_core::Result<HostValues<'_>> {
    let (storage, layout) = t.storage_and_layout();
    let range = match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let values = f32_values(cpu, layout)?;
            let start = layout.start_offset();
            start..start + values.len()
        }
        _ => candle_core::bail!("a CPU kernel's backward pass got a tensor off the CPU"),
    };
    Ok(HostValues { storage, range })
}

/// [`host_values`]: derefs to the values.
pub(crate) struct HostValues<'a> {
    storage: candle_core::StorageRef<'a>,
    range: Range<usize>,
}

impl std::ops::Deref for HostValues<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)) => {
                &all[self.range.clone()]
            }
            _ => unreachable!("host_values checked the storage"),
        }
    }
}

/// The f32 values a contiguous CPU layout covers: what the CPU kernels read.
pub(crate) fn f32_values<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let (candle_core::CpuStorage::F32(all), Some((start, end))) =
        (storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("a CPU kernel expects contiguous f32 values");
    };
    Ok(&all[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnn6() -> ModelSpec {
        ModelSpec::plain(Arch::Cnn6)
    }

    #[test]
    fn cnn6_has_the_designed_blocks_and_shapes() {
        let shape = ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let net = Network::new(&cnn6(), shape, 5, 0, &Device::Cpu).unwrap();
        assert_eq!(net.block_count(), 5);
        let tensors = net.tensors();
        assert_eq!(tensors["b1.conv.weight"].dims(), &[32, 1, 3, 3]);
        assert_eq!(tensors["b2.conv.weight"].dims(), &[32, 32, 3, 3]);
        assert_eq!(tensors["b3.conv.weight"].dims(), &[64, 32, 3, 3]);
        assert_eq!(tensors["b4.conv.weight"].dims(), &[64, 64, 3, 3]);
        assert_eq!(tensors["b5.linear.weight"].dims(), &[256, 3136]);
        assert_eq!(tensors["head.weight"].dims(), &[5, 256]);
        let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, None).unwrap().dims(), &[2, 5]);
    }

    #[test]
    fn freezing_leaves_the_prefix_out_and_transfer_copies_only_it() {
        let model = ModelSpec {
            hidden: Some(vec![8, 8, 4]),
            ..ModelSpec::plain(Arch::Mlp)
        };
        let shape = ImageShape {
            channels: 1,
            height: 4,
            width: 4,
        };
        let source = Network::new(&model, shape, 3, 1, &Device::Cpu).unwrap();
        let target = Network::new(&model, shape, 2, 2, &Device::Cpu).unwrap();
        assert_eq!(target.trainable_vars(0).len(), 8);
        assert_eq!(target.trainable_vars(2).len(), 4);
        target.transfer_from(&source.tensors(), 2).unwrap();
        let (s, t) = (source.tensors(), target.tensors());
        let same =
            |name: &str| s[name].to_vec2::<f32>().unwrap() == t[name].to_vec2::<f32>().unwrap();
        assert!(same("b1.linear.weight") && same("b2.linear.weight"));
        assert!(!same("b3.linear.weight"));
        let mut missing = source.tensors();
        missing.remove("b2.linear.bias");
        assert!(
            target
                .transfer_from(&missing, 2)
                .unwrap_err()
                .to_string()
                .contains("`b2.linear.bias`")
        );
    }

    #[test]
    fn same_seed_same_weights() {
        let shape = ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let a = Network::new(&cnn6(), shape, 3, 9, &Device::Cpu)
            .unwrap()
            .tensors();
        let b = Network::new(&cnn6(), shape, 3, 9, &Device::Cpu)
            .unwrap()
            .tensors();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a["b3.conv.weight"]), flat(&b["b3.conv.weight"]));
    }
}
