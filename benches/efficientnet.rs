//! EfficientNet-Lite0 on the CPU: the forward pass in inference mode (as frozen blocks and the
//! feature cache run it), images per second at 224x224 (ImageNet's size) and at 32x32 (the
//! size experiments/imagenet-to-fashion.yaml uses), batch 32, with the time of each block at
//! 224; then one training step at 32x32 (train mode, forward, cross-entropy, backward; what
//! scratch and finetune trials repeat). Weights are fresh: the arithmetic does not depend on
//! their values. `just bench-efficientnet`; prints the median of 5 runs after a warm-up.
//! `benches/pytorch_efficientnet.py` measures the same in PyTorch.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use xferlab::data::ImageShape;
use xferlab::model::{Mode, Network};
use xferlab::spec::{Arch, ModelSpec};

const BATCH: usize = 32;
const RUNS: usize = 5;

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

fn main() -> Result<()> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { xferlab::device::prepare_process() };
    let model = ModelSpec::plain(Arch::EfficientnetLite0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("EfficientNet-Lite0 forward, inference mode, batch {BATCH}, CPU ({threads} threads)");
    for size in [224, 32] {
        let shape = ImageShape {
            channels: 3,
            height: size,
            width: size,
        };
        let net = Network::new(&model, shape, 1000, 0, &Device::Cpu)?;
        let x = Tensor::zeros((BATCH, 3, size, size), DType::F32, &Device::Cpu)?;
        let seconds = median_seconds(|| net.forward(&x, None).map(drop))?;
        println!(
            "{size}x{size}: {:.3} s per batch, {:.1} images/s",
            seconds,
            BATCH as f64 / seconds
        );
        if size == 224 {
            let mut input = x.clone();
            for block in 0..net.block_count() {
                let output = net.forward_blocks(&input, None, block..block + 1, Mode::Infer)?;
                let ms = median_seconds(|| {
                    net.forward_blocks(&input, None, block..block + 1, Mode::Infer)
                        .map(drop)
                })? * 1e3;
                println!("  b{}: {ms:.1} ms", block + 1);
                input = output;
            }
        }
    }
    let shape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let net = Network::new(&model, shape, 10, 0, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1., (BATCH, 3, 32, 32), &Device::Cpu)?;
    let labels = Tensor::new(
        (0..BATCH as u32).map(|i| i % 10).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let step = || {
        let features = net.forward_blocks(&x, None, 0..net.block_count(), Mode::Train)?;
        let loss = candle_nn::loss::cross_entropy(&net.head(&features)?, &labels)?;
        loss.backward().map(drop)
    };
    let seconds = median_seconds(step)?;
    println!(
        "training step 32x32: {seconds:.3} s per batch, {:.1} images/s",
        BATCH as f64 / seconds
    );
    Ok(())
}
