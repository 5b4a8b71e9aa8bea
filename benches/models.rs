//! Each shipped pretrained architecture on the CPU, what its trials spend their time on: the
//! forward pass in inference mode (frozen blocks, the feature cache, evaluation) and a
//! training step (train mode, forward, cross-entropy, backward: scratch and finetune). Batch
//! 32 of 224x224 images forward, 32 of 96x96 trained (cnn6: 32 of 28x28 grey images;
//! EfficientNet-Lite0 also at imagenet-to-fashion's 32x32: 256 forward, 32 trained); MiniLM-L6 (all-MiniLM-L6-v2's shape)
//! embeds 64 texts of 128 tokens and trains on 16 of 64 (minilm-to-spam's step). Fresh weights: the arithmetic does not depend on their
//! values. Median of 5 runs after a warm-up.
//!
//! Prints one tab-separated row per measurement: name, seconds, items, unit. `benches/
//! pytorch_models.py` prints the same rows for PyTorch; `scripts/bench-models` runs both and
//! prints them side by side (`just bench-cpu`); `cargo bench --bench models -- "resnet18
//! train"` runs only the rows whose name contains `resnet18 train`.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use xferlab::data::{ImageShape, Input};
use xferlab::model::bert::BertConfig;
use xferlab::model::{Mode, Network};
use xferlab::spec::{Arch, ModelSpec};

const RUNS: usize = 5;
/// all-MiniLM-L6-v2's shape (its config.json), so the bench builds without the assets.
const MINILM: &str = r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
    "hidden_act": "gelu"}"#;

fn median_seconds(mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    run()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// A training step on `x` (images, or token ids with their `mask`) with labels 0, 1, 2, ...
/// modulo `classes`: forward in train mode through every block and the head, cross-entropy,
/// backward.
fn train_step_seconds(
    net: &Network,
    x: &Tensor,
    mask: Option<&Tensor>,
    classes: u32,
) -> Result<f64> {
    let labels = (0..x.dim(0)? as u32)
        .map(|i| i % classes)
        .collect::<Vec<_>>();
    let labels = Tensor::new(labels, x.device())?;
    median_seconds(|| {
        let features = net.forward_blocks(x, mask, 0..net.block_count(), Mode::Train)?;
        let loss = candle_nn::loss::cross_entropy(&net.head(&features)?, &labels)?;
        loss.backward().map(drop)
    })
}

fn row(name: &str, seconds: f64, items: usize, unit: &str) {
    println!("{name}\t{seconds:.4}\t{items}\t{unit}");
}

fn image(size: usize) -> ImageShape {
    ImageShape {
        channels: 3,
        height: size,
        width: size,
    }
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { xferlab::device::prepare_process() };
    let cpu = &Device::Cpu;
    let only = std::env::args()
        .nth(1)
        .filter(|a| a != "--bench")
        .unwrap_or_default();
    let chosen = |row: &str| row.contains(&only);
    for (arch, name) in [
        (Arch::EfficientnetLite0, "efficientnet_lite0"),
        (Arch::Resnet18, "resnet18"),
    ] {
        let model = ModelSpec::plain(arch);
        let forward = format!("{name} forward 224x224");
        if chosen(&forward) {
            let net = Network::new(&model, image(224), 1000, 0, cpu)?;
            let x = Tensor::randn(0f32, 1., (32, 3, 224, 224), cpu)?;
            let seconds = median_seconds(|| net.forward(&x, None).map(drop))?;
            row(&forward, seconds, 32, "images");
        }
        let train = format!("{name} train step 96x96");
        if !chosen(&train) {
            continue;
        }
        let net = Network::new(&model, image(96), 10, 0, cpu)?;
        let x = Tensor::randn(0f32, 1., (32, 3, 96, 96), cpu)?;
        let seconds = train_step_seconds(&net, &x, None, 10)?;
        row(&train, seconds, 32, "images");
    }
    // EfficientNet-Lite0 at imagenet-to-fashion's 32x32: planes of 1x1 to 16x16, where fixed
    // costs per plane weigh most. Forward in evaluation's large batches, a step at batch 32.
    let forward = "efficientnet_lite0 forward 32x32";
    let train = "efficientnet_lite0 train step 32x32";
    if chosen(forward) || chosen(train) {
        let net = Network::new(
            &ModelSpec::plain(Arch::EfficientnetLite0),
            image(32),
            10,
            0,
            cpu,
        )?;
        if chosen(forward) {
            let x = Tensor::randn(0f32, 1., (256, 3, 32, 32), cpu)?;
            let seconds = median_seconds(|| net.forward(&x, None).map(drop))?;
            row(forward, seconds, 256, "images");
        }
        if chosen(train) {
            let x = Tensor::randn(0f32, 1., (32, 3, 32, 32), cpu)?;
            row(train, train_step_seconds(&net, &x, None, 10)?, 32, "images");
        }
    }
    // cnn6, the small A-to-B sweep's network: its scratch and finetune trials' step.
    let train = "cnn6 train step 28x28";
    if chosen(train) {
        let grey = ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let net = Network::new(&ModelSpec::plain(Arch::Cnn6), grey, 10, 0, cpu)?;
        let x = Tensor::randn(0f32, 1., (32, 1, 28, 28), cpu)?;
        let seconds = train_step_seconds(&net, &x, None, 10)?;
        row(train, seconds, 32, "images");
    }
    let (embed, train) = (
        "minilm_l6 embed 128 tokens",
        "minilm_l6 train step 64 tokens",
    );
    if !chosen(embed) && !chosen(train) {
        return Ok(());
    }
    let config: BertConfig = serde_json::from_str(MINILM).expect("MiniLM's config.json");
    let (texts, tokens) = (64, 128);
    let model = ModelSpec {
        config: Some(config),
        max_length: Some(tokens),
        ..ModelSpec::plain(Arch::Bert)
    };
    let net = Network::new(&model, Input::Tokens, 2, 0, cpu)?;
    let ids: Vec<u32> = (0..texts * tokens)
        .map(|i| 1000 + (i * 7919 % 29000) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (texts, tokens), cpu)?;
    let mask = Tensor::ones((texts, tokens), DType::F32, cpu)?;
    if chosen(embed) {
        let seconds = median_seconds(|| net.forward(&ids, Some(&mask)).map(drop))?;
        row(embed, seconds, texts, "texts");
    }
    // minilm-to-spam's step (scratch, finetune): 16 texts of 64 tokens, two classes.
    if chosen(train) {
        let (ids, mask) = (
            ids.narrow(0, 0, 16)?.narrow(1, 0, 64)?,
            mask.narrow(0, 0, 16)?.narrow(1, 0, 64)?,
        );
        let seconds = train_step_seconds(&net, &ids.contiguous()?, Some(&mask.contiguous()?), 2)?;
        row(train, seconds, 16, "texts");
    }
    Ok(())
}
