//! The experiment spec: serde types that reject unknown keys and generate the JSON Schema.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::datasets::{DatasetSpec, default_datasets};

/// One transfer-learning experiment: a source model, a target task, and the sweep to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Experiment name; the run store keeps the sweep in a folder of this name.
    pub name: String,
    /// Kind of data; the model and every dataset must belong to it.
    #[serde(default)]
    pub domain: Domain,
    /// Named datasets that `source` and `target` refer to. The built-in `glyphs` is always there.
    #[serde(default = "default_datasets")]
    pub datasets: BTreeMap<String, DatasetSpec>,
    /// Architecture, cut into blocks plus a new classification head.
    pub model: ModelSpec,
    /// Where the source model's weights come from.
    pub source: SourceSpec,
    /// The target task every trial is trained and evaluated on.
    pub target: TargetSpec,
    /// How each trial trains on the target.
    pub train: TrainSpec,
    /// Strategies to compare: names, or raw `{transfer_depth, freeze_depth}` pairs.
    pub strategies: Vec<StrategyEntry>,
    /// Freeze depth for `partial_freeze`, `prefix_frozen` and `prefix_finetune` (usually swept).
    #[serde(default)]
    pub freeze_depth: Option<usize>,
    /// Seed of the trial: initialisation, target sampling and batch order.
    #[serde(default)]
    pub seed: u64,
    /// Sweep axes: a key path (e.g. `train.lr`, `target.train.per_class`) and the values to try.
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<serde_json::Value>>,
    /// Also save each trial's trained weights as safetensors in the run store.
    #[serde(default)]
    pub checkpoints: bool,
    /// Tracking servers that receive the sweep besides the run store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<TrackingSpec>,
    /// Where trials run: auto (a GPU when the binary has CUDA and one answers, else the CPU),
    /// cpu, cuda or cuda:N; `--device` overrides it. Not part of a trial's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        with = "Option<String>",
        regex(pattern = r"^(auto|cpu|cuda(:[0-9]+)?)$")
    )]
    pub device: Option<super::DeviceChoice>,
    /// How `xferlab submit` sends the sweep to a cluster; `run` ignores it. Not part of a
    /// trial's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<LauncherSpec>,
}

/// Cluster launchers `xferlab submit` knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LauncherSpec {
    /// Slurm: the sweep becomes one job array; `submit --slurm` flags override these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmSpec>,
}

/// A Slurm job array: each array task runs `trials_per_task` trials of the plan, writing into
/// the shared run store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// Array tasks running at once (sbatch `--array=...%N`); all that Slurm can place when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<std::num::NonZeroU32>,
    /// Trials each array task runs, one after another.
    #[serde(default = "one")]
    pub trials_per_task: std::num::NonZeroUsize,
    /// Partition (queue) to submit to; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Time limit of each array task, in Slurm's format (`30`, `2:00:00`, `1-12:00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// GPUs for each array task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_task: Option<std::num::NonZeroU32>,
    /// CPU cores for each array task; a task uses that many threads (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<std::num::NonZeroU32>,
    /// More `#SBATCH` options, written as given: `--account=proj`, `--mem=16G`, `--qos=low`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
}

impl Default for SlurmSpec {
    fn default() -> Self {
        SlurmSpec {
            parallel: None,
            trials_per_task: one(),
            partition: None,
            time: None,
            gpus_per_task: None,
            cpus_per_task: None,
            sbatch_args: Vec::new(),
        }
    }
}

fn one() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::MIN
}

/// Tracking servers that receive the sweep besides the run store (the source of truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackingSpec {
    /// An MLflow tracking server: the sweep is a parent run, each trial a nested run.
    #[serde(default)]
    pub mlflow: Option<MlflowSpec>,
}

/// An MLflow tracking server. Credentials come from `MLFLOW_TRACKING_TOKEN` or
/// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, never from the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MlflowSpec {
    /// Server address, e.g. `http://127.0.0.1:5000`; `MLFLOW_TRACKING_URI` sets it too.
    pub uri: String,
    /// Experiment the sweep is logged under (created when missing); the spec's `name` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

/// Kind of data a spec works on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// Image tensors (channels x height x width).
    #[default]
    Vision,
    /// Texts, tokenised for a pretrained encoder (`model: {arch: bert}`).
    Text,
}

impl Domain {
    /// The domain as a spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Vision => "vision",
            Domain::Text => "text",
        }
    }
}

/// Architecture of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture name.
    pub arch: Arch,
    /// Hidden layer widths of `mlp`, one block each.
    #[serde(default)]
    pub hidden: Option<Vec<usize>>,
    /// `bert`: how the encoder's token vectors become one vector for the head: `mean` over
    /// the real tokens or the `cls` token's. Default: what the model folder's
    /// `1_Pooling/config.json` declares (sentence-transformers models), else `cls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// `bert`: texts are cut to this many tokens, [CLS] and [SEP] included (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// `bert`: the encoder's shape, Hugging Face's `config.json`; read from the source's model
    /// folder when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::model::bert::BertConfig>,
    /// `bert`: the Hugging Face `tokenizer.json` texts are tokenised with; the source's model
    /// folder's when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
}

/// Default `max_length` of `bert`.
pub const DEFAULT_MAX_LENGTH: usize = 128;

impl ModelSpec {
    /// A model with no options beyond its architecture.
    pub fn plain(arch: Arch) -> Self {
        ModelSpec {
            arch,
            hidden: None,
            pooling: None,
            max_length: None,
            config: None,
            tokenizer: None,
        }
    }

    /// Tokens per text, at most (`bert`).
    pub fn max_length(&self) -> usize {
        self.max_length.unwrap_or(DEFAULT_MAX_LENGTH)
    }
}

/// How a text encoder's token vectors become one vector (`model.pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the real tokens' vectors (the attention mask's), as sentence-transformers.
    Mean,
    /// The first token's, [CLS], as BERT's classifiers.
    Cls,
}

/// Architectures in the model zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Fully connected blocks (linear + ReLU), one per `hidden` width.
    Mlp,
    /// Four 3x3 conv blocks and one linear block (5 blocks).
    Cnn6,
    /// EfficientNet-Lite0 (9 blocks: stem, 7 MBConv stages, final 1x1 conv to 1280
    /// channels), for 3-channel images of at least 32x32; reads EfficientNet-PyTorch
    /// checkpoints such as the ImageNet `efficientnet-lite0-57934424.pth`.
    EfficientnetLite0,
    /// ResNet-18 in torchvision's layout (5 blocks: stem, layer1..layer4; 512 features), for
    /// 3-channel images of at least 32x32; reads torchvision and timm checkpoints.
    Resnet18,
    /// ResNet-34, as `resnet18` with 3, 4, 6, 3 basic blocks per layer.
    Resnet34,
    /// ResNet-50, as `resnet18` with 3, 4, 6, 3 bottleneck blocks per layer (2048 features).
    Resnet50,
    /// A BERT-family text encoder (`domain: text`; Hugging Face's `model_type: bert`): b1 the
    /// embeddings, b2..b(L+1) the L encoder layers, then pooling; its shape and tokenizer
    /// come from the source's model folder (`config.json`, `tokenizer.json`).
    Bert,
}

/// Where the source model comes from: exactly one of `pretrain` or `checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Train the source model here, once, and reuse it from the run store.
    #[serde(default)]
    pub pretrain: Option<PretrainSpec>,
    /// A checkpoint with the blocks' weights: safetensors or PyTorch `.pth`/`.pt` (zip or
    /// legacy), in xferlab's names (`b1.conv.weight`, ...), EfficientNet-PyTorch's
    /// (`_conv_stem.weight`, ...; `efficientnet_lite0` only) or torchvision's and timm's
    /// (`conv1.weight`, `layer1.0.conv1.weight`, ...; the ResNets). Relative to the spec's
    /// folder.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// A model in the local Hugging Face cache, `ORG/NAME` (e.g. `timm/resnet50.a1_in1k`); its
    /// weights file becomes `checkpoint` when the spec is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// How the checkpoint names its tensors; told from the names when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<CheckpointLayout>,
}

/// Tensor naming conventions of checkpoints (`source.layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointLayout {
    /// xferlab's own (`b1.conv.weight`, ...), what `xferlab run` saves.
    Xferlab,
    /// torchvision's ResNets (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.weight`).
    Torchvision,
    /// timm's ResNets: the same names as torchvision's.
    Timm,
    /// EfficientNet-PyTorch's (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ...).
    EfficientnetPytorch,
    /// Hugging Face transformers' BERT (`embeddings.word_embeddings.weight`,
    /// `encoder.layer.N....`, with or without `bert.`).
    Huggingface,
}

/// Pretraining of the source model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainSpec {
    /// Data the source model is trained on.
    pub data: DataSelection,
    /// How the source model is trained.
    pub train: TrainSpec,
    /// Seed of the source model's initialisation and batch order.
    #[serde(default)]
    pub seed: u64,
}

/// The target task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Data each trial trains on.
    pub train: DataSelection,
    /// Data each trial is evaluated on.
    pub eval: DataSelection,
}

/// A subset of one dataset split: some classes (relabelled 0..k in the order given), some images each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSelection {
    /// Name of a dataset under `datasets`.
    pub dataset: String,
    /// Which split of the dataset.
    #[serde(default)]
    pub split: Split,
    /// Original class labels to keep; all classes when left out.
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    /// Images drawn per class (with the trial's seed); all when left out.
    #[serde(default)]
    pub per_class: Option<usize>,
}

/// A dataset split.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training split.
    #[default]
    Train,
    /// The held-out test split.
    Test,
}

impl Split {
    /// The split as a spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Number of optimiser steps (give this or `epochs`).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Number of passes over the training data (give this or `steps`).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Images per step.
    pub batch_size: usize,
    /// Optimiser.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay (`adamw`, `sgd`).
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Momentum (`sgd`).
    #[serde(default)]
    pub momentum: Option<f64>,
    /// Record the mean training loss every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// How the learning rate changes over the steps: a linear warmup from 0, then constant,
    /// linear or cosine decay to 0 (Hugging Face's schedules). Constant `lr` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Discriminative (layer-wise) learning rates: block i of L trains at
    /// `lr * layer_lr_decay^(L - i)`, the top block at `lr`; frozen blocks have no rate and do
    /// not shift the others'. In (0, 1]; ULMFiT uses 1/2.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_lr_decay: Option<f64>,
    /// The new head's learning rate; `lr` when absent. A schedule scales it like the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
    /// Stop when a validation split carved from the training examples stops improving, and
    /// keep the best step's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// For `gradual_unfreeze` (other strategies' trials leave it out): steps between
    /// unfreezing one more block from the top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze_every: Option<usize>,
    /// For trials whose adapter is `lora` (other trials leave it out): its rank, alpha and
    /// dropout; absent, the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// For `auto_depth` trials (other trials leave it out): how the search starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_depth: Option<AutoDepthSpec>,
}

/// `train.auto_depth`: how `auto_depth` orders its candidate depths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoDepthSpec {
    /// `halving` (default): every depth f = 0..L starts the first rung. `logme`: LogME of
    /// the source's frozen features at each depth 1..L (on the training examples the search
    /// trains on) ranks them first, and only the better half starts, with f = 0, which LogME
    /// cannot score: a rung or more fewer.
    #[serde(default)]
    pub order: DepthOrder,
    /// Which depths are the candidates: `partial_freeze` (default: t = L, f = 0..L),
    /// `prefix_frozen` (t = f = 0..L, Yosinski's AnB: how many blocks to transfer and
    /// freeze) or `prefix_finetune` (t = 0..L, f = 0: how many blocks to transfer).
    #[serde(default)]
    pub family: DepthFamily,
}

/// The strategy whose depths `auto_depth` searches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepthFamily {
    /// t = L, f = d: how deep to freeze.
    #[default]
    PartialFreeze,
    /// t = f = d: how many blocks to transfer, all frozen.
    PrefixFrozen,
    /// t = d, f = 0: how many blocks to transfer, all trained.
    PrefixFinetune,
}

impl DepthFamily {
    /// The strategy whose `depths` give a candidate's (t, f).
    pub fn strategy(self) -> Strategy {
        match self {
            DepthFamily::PartialFreeze => Strategy::PartialFreeze,
            DepthFamily::PrefixFrozen => Strategy::PrefixFrozen,
            DepthFamily::PrefixFinetune => Strategy::PrefixFinetune,
        }
    }
}

/// How `auto_depth` orders its candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepthOrder {
    /// Every candidate starts.
    #[default]
    Halving,
    /// LogME keeps the better half of f = 1..L, and f = 0.
    Logme,
}

/// LoRA's settings (`train.lora`, Hu et al., 2021): each eligible layer W above the freeze
/// depth stays frozen and learns W + (alpha / rank) B A instead, A (rank x in) drawn like a
/// linear layer's weight, B (out x rank) starting at zero; dropout applies to the low-rank
/// path's input. Defaults are PEFT's: rank 8, alpha 8, dropout 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// The rank r of the update B A (at least 1).
    #[serde(default = "LoraSpec::default_rank")]
    pub rank: usize,
    /// The update is scaled by alpha / rank.
    #[serde(default = "LoraSpec::default_alpha")]
    pub alpha: f64,
    /// Dropout on the low-rank path's input while training, in [0, 1).
    #[serde(default)]
    pub dropout: f64,
}

impl LoraSpec {
    fn default_rank() -> usize {
        8
    }
    fn default_alpha() -> f64 {
        8.0
    }
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: LoraSpec::default_rank(),
            alpha: LoraSpec::default_alpha(),
            dropout: 0.0,
        }
    }
}

/// Early stopping (`train.early_stopping`): validate every `every` steps on a seeded split of
/// the training examples (never the eval data); stop after `patience` validations without
/// improvement; restore the best validation's weights at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    /// Fraction of each class's training examples held out for validation, in (0, 1); at
    /// least one example of each class stays for training.
    pub holdout: f64,
    /// Validate every this many steps (and after the last).
    pub every: usize,
    /// Validations without improvement before stopping (at least 1).
    pub patience: usize,
    /// What improves: a lower validation loss, or a higher validation accuracy.
    #[serde(default)]
    pub metric: StopMetric,
}

/// What early stopping watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Mean validation cross-entropy, lower is better.
    #[default]
    Loss,
    /// Validation accuracy, higher is better.
    Accuracy,
}

impl TrainSpec {
    /// What `lr` is multiplied by for a parameter of block `block` (None: the head) of a
    /// model of `blocks` blocks.
    pub fn rate_factor(&self, block: Option<usize>, blocks: usize) -> f64 {
        match block {
            None => self.head_lr.map_or(1.0, |head| head / self.lr),
            Some(i) => self
                .layer_lr_decay
                .map_or(1.0, |decay| decay.powi((blocks.saturating_sub(i)) as i32)),
        }
    }
}

/// A learning-rate schedule (`train.schedule`), as Hugging Face's `get_*_schedule_with_warmup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Steps over which the rate rises linearly from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// What follows the warmup.
    #[serde(default)]
    pub decay: Decay,
}

/// The learning rate after the warmup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// `lr` to the end.
    #[default]
    Constant,
    /// Linearly from `lr` to 0 at the last step.
    Linear,
    /// Half a cosine from `lr` to 0 at the last step.
    Cosine,
}

impl ScheduleSpec {
    /// The factor `lr` is multiplied by at step `step` (from 0) of `steps`: Hugging Face's
    /// formulas (`transformers.optimization`), step 0 of a warmup included (factor 0).
    pub fn factor(&self, step: usize, steps: usize) -> f64 {
        let warmup = self.warmup_steps;
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (steps.saturating_sub(warmup)).max(1) as f64;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => (1.0 - progress).max(0.0),
            Decay::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

/// Optimisers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (AdamW with no weight decay).
    #[default]
    Adam,
    /// Adam with decoupled weight decay (default 0.01).
    Adamw,
    /// Stochastic gradient descent with momentum (default 0.9).
    Sgd,
}

/// A named strategy: a preset over (transfer_depth, freeze_depth).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// t = 0, f = 0: the from-scratch baseline.
    Scratch,
    /// t = L, f = L: frozen feature extractor, only the head trains.
    Transfer,
    /// t = L, f = freeze_depth.
    PartialFreeze,
    /// t = L, f = 0: full fine-tuning.
    Finetune,
    /// t = freeze_depth, f = freeze_depth (Yosinski et al. 2014 "AnB").
    PrefixFrozen,
    /// t = freeze_depth, f = 0 (Yosinski et al. 2014 "AnB+").
    PrefixFinetune,
    /// t = L, f = 0 with `adapter: bitfit`: every transferred block trains its biases only.
    Bitfit,
    /// t = L, f = freeze_depth, reached gradually (ULMFiT): every block starts frozen and one
    /// more unfreezes from the top every `train.unfreeze_every` steps, down to f.
    GradualUnfreeze,
    /// t = L, f = 0 with `adapter: lora`: every transferred block's linear layers and 1x1
    /// convolutions learn a low-rank update (`train.lora`), their weights frozen.
    Lora,
    /// t = L, f chosen by the trial itself: successive halving over f = 0..L on a held-out
    /// fifth of the training examples, then the chosen depth trained with the full budget.
    AutoDepth,
}

/// A parameter-efficient way to train the blocks above the freeze depth: only some of their
/// parameters train; the rest keep the source model's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// BitFit (Ben Zaken et al., 2022): only bias terms train (linear, convolution, and
    /// BatchNorm's and LayerNorm's shifts); the new head trains whole.
    Bitfit,
    /// LoRA (Hu et al., 2021): linear layers and 1x1 convolutions keep their weights and
    /// learn a low-rank update (`train.lora`); nothing else in those blocks trains; the new
    /// head trains whole.
    Lora,
}

impl Strategy {
    /// Every strategy name as written in specs, in the order of the variants. They are
    /// serde's own spelling (`rename_all` above), read back from the derive, so the names
    /// have one home, which the spec parser, its error messages and the schema also use.
    pub fn names() -> &'static [&'static str] {
        variant_names::<Strategy>()
    }

    /// Whether the preset reads `freeze_depth`.
    pub fn uses_freeze_depth(self) -> bool {
        matches!(
            self,
            Strategy::PartialFreeze
                | Strategy::PrefixFrozen
                | Strategy::PrefixFinetune
                | Strategy::GradualUnfreeze
        )
    }

    /// The preset's (transfer_depth, freeze_depth) for a network of `blocks` blocks.
    pub fn depths(self, blocks: usize, freeze_depth: usize) -> (usize, usize) {
        match self {
            Strategy::Scratch => (0, 0),
            Strategy::Transfer => (blocks, blocks),
            Strategy::PartialFreeze => (blocks, freeze_depth),
            Strategy::Finetune => (blocks, 0),
            Strategy::PrefixFrozen => (freeze_depth, freeze_depth),
            Strategy::PrefixFinetune => (freeze_depth, 0),
            Strategy::Bitfit | Strategy::Lora => (blocks, 0),
            // f = 0 stands in until the trial has chosen.
            Strategy::AutoDepth => (blocks, 0),
            Strategy::GradualUnfreeze => (blocks, freeze_depth),
        }
    }

    /// The adapter the preset trains with.
    pub fn adapter(self) -> Option<Adapter> {
        match self {
            Strategy::Bitfit => Some(Adapter::Bitfit),
            Strategy::Lora => Some(Adapter::Lora),
            _ => None,
        }
    }

    /// The name as written in specs.
    pub fn name(self) -> &'static str {
        Strategy::names()[self as usize]
    }
}

/// The variant names of a unit-only enum as its derived `Deserialize` spells them: the
/// derive hands them to `deserialize_enum`, where this probe keeps them.
fn variant_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only an enum's names are read"))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(de::Error::custom("names read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    // The probe always ends in an error: what it is after is the names it kept.
    let _ = T::deserialize(Probe(&mut names));
    names
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `strategies`: a strategy name or a raw pair of depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StrategyEntry {
    /// A named preset.
    Named(Strategy),
    /// Raw depths.
    Raw(RawDepths),
}

/// A raw (transfer_depth, freeze_depth) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDepths {
    /// Blocks 1..t start from the source model.
    pub transfer_depth: usize,
    /// Blocks 1..f are frozen (f <= t).
    pub freeze_depth: usize,
    /// Blocks above f train only what the adapter trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<Adapter>,
}

// Hand-written so a misspelt name gets serde's "unknown variant, expected one of" (and so a
// did-you-mean) instead of the untagged enum's "data did not match any variant".
impl<'de> Deserialize<'de> for StrategyEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = StrategyEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a strategy name or {transfer_depth, freeze_depth}")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<StrategyEntry, E> {
                Strategy::deserialize(de::value::StrDeserializer::<E>::new(name))
                    .map(StrategyEntry::Named)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrategyEntry, A::Error> {
                RawDepths::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(StrategyEntry::Raw)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

fn default_log_every() -> usize {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hugging_faces_formulas() {
        let schedule = |warmup_steps, decay| ScheduleSpec {
            warmup_steps,
            decay,
        };
        let linear = schedule(10, Decay::Linear);
        for (step, expected) in [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (99, 1.0 / 90.0)] {
            assert!(
                (linear.factor(step, 100) - expected).abs() < 1e-12,
                "step {step}"
            );
        }
        let cosine = schedule(0, Decay::Cosine);
        assert_eq!(cosine.factor(0, 100), 1.0);
        assert!((cosine.factor(50, 100) - 0.5).abs() < 1e-12);
        assert!(
            (cosine.factor(25, 100) - (0.5 + 0.5 * std::f64::consts::FRAC_1_SQRT_2)).abs() < 1e-12
        );
        assert_eq!(schedule(4, Decay::Constant).factor(60, 100), 1.0);
    }

    #[test]
    fn strategy_names_are_serdes_spelling() {
        assert_eq!(Strategy::names().len(), 10);
        for name in Strategy::names() {
            let strategy: Strategy = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(strategy.name(), *name);
            assert_eq!(serde_json::to_value(strategy).unwrap(), *name);
        }
        assert_eq!(Strategy::PrefixFinetune.name(), "prefix_finetune");
    }
}
