//! What `xferlab models` shows: each architecture cut into its blocks, what is inside each,
//! its trainable parameters and the shape it hands on for a given input, and the checkpoint
//! layouts it reads. Counted and measured on a real network (built on the CPU, one zero
//! image through each block), so the table cannot drift from the code.

use candle_core::{DType, Device, Tensor};

use super::batch_norm::is_running_statistic;
use super::import::Layout;
use super::{Mode, Network, block_of, efficientnet, resnet};
use crate::data::{ImageShape, Input};
use crate::spec::{Arch, ModelSpec, Pooling};

/// Tokens per text in the example input of a text encoder.
const EXAMPLE_TOKENS: usize = 16;

/// One block as `xferlab models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSummary {
    /// `b1`, `b2`, ...
    pub name: String,
    /// Its layers, in words.
    pub inside: String,
    /// Trainable parameters (BatchNorm's running statistics not counted).
    pub parameters: usize,
    /// The shape of its output for one image, e.g. `[32, 112, 112]`.
    pub output: Vec<usize>,
}

/// An architecture as `xferlab models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The model, as a spec names it.
    pub model: ModelSpec,
    /// The input the shapes are for (texts: `EXAMPLE_TOKENS` tokens).
    pub input: Input,
    /// Its blocks.
    pub blocks: Vec<BlockSummary>,
    /// Width of the features the new head reads.
    pub features: usize,
    /// The checkpoint layouts it reads, with an example name each.
    pub layouts: String,
}

/// Every architecture, with an example configuration and input.
pub fn examples() -> Vec<(ModelSpec, Input)> {
    let grey = ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let rgb = ImageShape {
        channels: 3,
        height: 224,
        width: 224,
    };
    vec![
        (
            ModelSpec {
                hidden: Some(vec![128, 64]),
                ..ModelSpec::plain(Arch::Mlp)
            },
            grey.into(),
        ),
        (ModelSpec::plain(Arch::Cnn6), grey.into()),
        (ModelSpec::plain(Arch::EfficientnetLite0), rgb.into()),
        (ModelSpec::plain(Arch::Resnet18), rgb.into()),
        (ModelSpec::plain(Arch::Resnet34), rgb.into()),
        (ModelSpec::plain(Arch::Resnet50), rgb.into()),
        (
            ModelSpec {
                pooling: Some(Pooling::Mean),
                config: Some(minilm_l6()),
                ..ModelSpec::plain(Arch::Bert)
            },
            Input::Tokens,
        ),
    ]
}

/// all-MiniLM-L6-v2's shape (its `config.json`): the example text encoder.
fn minilm_l6() -> super::bert::BertConfig {
    super::bert::BertConfig {
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        hidden_act: "gelu".into(),
    }
}

/// Builds `model` for `input` and measures each block.
pub fn summary(model: &ModelSpec, input: Input) -> candle_core::Result<Summary> {
    let net = Network::new(model, input, 2, 0, &Device::Cpu)?;
    let tensors = net.tensors();
    let cpu = &Device::Cpu;
    let (mut x, mask, shape) = match input {
        Input::Image(s) => {
            let x = Tensor::zeros((1, s.channels, s.height, s.width), DType::F32, cpu)?;
            (x, None, s)
        }
        Input::Tokens => {
            let ones = Tensor::ones((1, EXAMPLE_TOKENS), DType::F32, cpu)?;
            let none = ImageShape {
                channels: 0,
                height: 0,
                width: 0,
            };
            (
                Tensor::zeros((1, EXAMPLE_TOKENS), DType::U32, cpu)?,
                Some(ones),
                none,
            )
        }
    };
    let mut blocks = Vec::new();
    for (i, inside) in insides(model, shape).into_iter().enumerate() {
        x = net.forward_blocks(&x, mask.as_ref(), i..i + 1, Mode::Infer)?;
        let parameters = (tensors.iter())
            .filter(|(name, _)| block_of(name) == Some(i + 1) && !is_running_statistic(name))
            .map(|(_, t)| t.elem_count())
            .sum();
        blocks.push(BlockSummary {
            name: super::block_name(i + 1),
            inside,
            parameters,
            output: x.dims()[1..].to_vec(),
        });
    }
    let features = tensors["head.weight"].dims()[1];
    let layouts = (Layout::ALL.into_iter())
        .filter(|layout| layout.reads(model.arch))
        .map(|layout| format!("{} ({})", layout.name(), layout.example()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Summary {
        model: model.clone(),
        input,
        blocks,
        features,
        layouts,
    })
}

/// Each block's layers in words.
fn insides(model: &ModelSpec, input: ImageShape) -> Vec<String> {
    match model.arch {
        Arch::Mlp => {
            let mut width = input.values();
            let hidden = model.hidden.clone().unwrap_or_default();
            (hidden.iter().enumerate())
                .map(|(i, &h)| {
                    let flatten = if i == 0 { "flatten, " } else { "" };
                    let text = format!("{flatten}linear {width}->{h}, relu");
                    width = h;
                    text
                })
                .collect()
        }
        Arch::Cnn6 => vec![
            format!("conv3x3 {}->32, relu", input.channels),
            "conv3x3 32->32, relu, maxpool 2".into(),
            "conv3x3 32->64, relu".into(),
            "conv3x3 64->64, relu, maxpool 2".into(),
            "flatten, linear ->256, relu".into(),
        ],
        Arch::EfficientnetLite0 => {
            let mut all = vec![format!(
                "conv3x3 stride 2 {}->32, batchnorm, relu6",
                input.channels
            )];
            all.extend(efficientnet::STAGES.iter().map(|s| {
                format!(
                    "{} MBConv (expand {}, {k}x{k} depthwise, stride {}) {}->{}",
                    s.checkpoint_blocks.len(),
                    s.expand,
                    s.stride,
                    s.input,
                    s.output,
                    k = s.kernel
                )
            }));
            all.push("conv1x1 320->1280, batchnorm, relu6".into());
            all
        }
        Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => {
            let depth = resnet::depth(model.arch).expect("a ResNet");
            let mut all = vec![format!(
                "conv7x7 stride 2 {}->64, batchnorm, relu, maxpool 3x3 stride 2",
                input.channels
            )];
            all.extend((0..4).map(|layer| depth.describe(layer)));
            all
        }
        Arch::Bert => {
            let Some(c) = &model.config else {
                return Vec::new();
            };
            let mut all = vec![format!(
                "embeddings: {} tokens, {} positions, {} types, width {}, layernorm",
                c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.hidden_size
            )];
            let layer = format!(
                "self-attention ({} heads), feed-forward {}->{}, {}, 2 layernorms",
                c.num_attention_heads, c.hidden_size, c.intermediate_size, c.hidden_act
            );
            all.extend((0..c.num_hidden_layers).map(|_| layer.clone()));
            if let (Some(last), Some(pooling)) = (all.last_mut(), model.pooling) {
                let pooling = match pooling {
                    Pooling::Mean => "mean over tokens",
                    Pooling::Cls => "the [CLS] token",
                };
                *last += &format!("; pooling: {pooling}");
            }
            all
        }
    }
}
