//! xferlab's own kernels against candle's, on one device: first that they agree (exits 1 if
//! not), then their time. The 3×3 convolution's forward and backward at each cnn6 shape
//! (batch 64, 28×28 images), with the input a constant (the first trainable block) and a
//! variable (every later one); one Adam step over cnn6's parameters.
//! `just bench-kernels [DEVICE]`; prints milliseconds, the median of 20 runs after a warm-up.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};
use xferlab::data::ImageShape;
use xferlab::device::DeviceChoice;
use xferlab::model::Network;
use xferlab::model::conv::Conv2d;
use xferlab::optim::Adam;
use xferlab::spec::{Arch, ModelSpec};

const BATCH: usize = 64;
const RUNS: usize = 20;

fn median_ms(device: &Device, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    run()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        run()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// Largest difference between `a` and `b`, relative to the largest magnitude in `b`.
fn relative_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(f32::MIN_POSITIVE))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // cargo bench passes `--bench`.
    let choice: DeviceChoice = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .unwrap_or_else(|| "auto".into())
        .parse()?;
    let device = choice.open()?;
    let disagreement = agreement(&device)?;
    if disagreement > 1e-4 {
        return Err(format!("xferlab's kernels disagree with candle's on {device:?}").into());
    }
    println!("\n{RUNS} runs on {device:?}, median ms");
    convolutions(&device)?;
    adam(&device)?;
    Ok(())
}

/// Prints and returns the largest relative difference between xferlab's results and candle's.
fn agreement(device: &Device) -> Result<f32> {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 32, 14, 14), device)?)?;
    let weight = Var::from_tensor(&Tensor::randn(0f32, 0.1, (64, 32, 3, 3), device)?)?;
    let bias = Var::from_tensor(&Tensor::randn(0f32, 0.1, 64, device)?)?;
    let conv = Conv2d::new(
        weight.as_tensor().clone(),
        Some(bias.as_tensor().clone()),
        1,
        1,
    )?;
    let ours = conv.forward(x.as_tensor())?;
    let theirs = x
        .as_tensor()
        .conv2d(weight.as_tensor(), 1, 1, 1, 1)?
        .broadcast_add(&bias.as_tensor().reshape((1, 64, 1, 1))?)?;
    let mut worst = relative_diff(&ours, &theirs)?;
    let cosine = Tensor::arange(0f32, ours.elem_count() as f32, device)?
        .cos()?
        .reshape(ours.shape())?;
    let ours = (ours * &cosine)?.sum_all()?.backward()?;
    let theirs = (theirs * &cosine)?.sum_all()?.backward()?;
    for (name, var) in [("input", &x), ("kernel", &weight), ("bias", &bias)] {
        let diff = relative_diff(ours.get(var).unwrap(), theirs.get(var).unwrap())?;
        println!("conv3x3 gradient of the {name}: relative difference {diff:.1e}");
        worst = worst.max(diff);
    }

    // Both networks start from the same weights (the same seed) and see the same batch.
    let x = Tensor::randn(0f32, 1., (8, 1, 28, 28), device)?;
    let mut after = Vec::new();
    for ours in [true, false] {
        let net = cnn6(device)?;
        let vars = net.trainable_vars(0);
        let (mut adam, mut adamw) = (
            Adam::new(vars.clone(), params())?,
            AdamW::new(vars, params())?,
        );
        for _ in 0..5 {
            let grads = net.forward(&x, None)?.sqr()?.mean_all()?.backward()?;
            if ours {
                adam.step(&grads)?;
            } else {
                adamw.step(&grads)?;
            }
        }
        after.push(net.tensors());
    }
    let adam_diff = after[0]
        .iter()
        .map(|(name, t)| relative_diff(t, &after[1][name]))
        .try_fold(0f32, |worst, d| d.map(|d| worst.max(d)))?;
    println!(
        "cnn6 after 5 Adam steps, against candle-nn's AdamW: relative difference {adam_diff:.1e}"
    );
    Ok(worst.max(adam_diff))
}

fn cnn6(device: &Device) -> Result<Network> {
    let model = ModelSpec::plain(Arch::Cnn6);
    let shape = ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    Network::new(&model, shape, 5, 0, device)
}

/// Adam as fmnist-a-to-b trains with it.
fn params() -> ParamsAdamW {
    ParamsAdamW {
        lr: 1e-3,
        weight_decay: 0.0,
        ..Default::default()
    }
}

fn convolutions(device: &Device) -> Result<()> {
    println!(
        "{:<22} {:>14} {:>14} {:>14} {:>14}",
        "conv (in→out, size)", "candle, const", "xferlab, const", "candle, var", "xferlab, var"
    );
    for (block, input, output, size) in [
        ("b1", 1, 32, 28),
        ("b2", 32, 32, 28),
        ("b3", 32, 64, 14),
        ("b4", 64, 64, 14),
    ] {
        let x = Tensor::randn(0f32, 1., (BATCH, input, size, size), device)?;
        let x_var = Var::from_tensor(&x)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 0.1, (output, input, 3, 3), device)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(output, x.dtype(), device)?)?;
        let conv = Conv2d::new(
            weight.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            1,
            1,
        )?;
        let candle = |x: &Tensor| {
            let y = x.conv2d(weight.as_tensor(), 1, 1, 1, 1)?;
            let y = y.broadcast_add(&bias.as_tensor().reshape((1, output, 1, 1))?)?;
            y.sum_all()?.backward().map(drop)
        };
        let ours = |x: &Tensor| conv.forward(x)?.sum_all()?.backward().map(drop);
        println!(
            "{:<22} {:>14.2} {:>14.2} {:>14.2} {:>14.2}",
            format!("{block} ({input}→{output}, {size}×{size})"),
            median_ms(device, || candle(&x))?,
            median_ms(device, || ours(&x))?,
            median_ms(device, || candle(x_var.as_tensor()))?,
            median_ms(device, || ours(x_var.as_tensor()))?,
        );
    }
    Ok(())
}

/// One optimizer step over every cnn6 parameter, the gradients already computed.
fn adam(device: &Device) -> Result<()> {
    let net = cnn6(device)?;
    let x = Tensor::zeros((BATCH, 1, 28, 28), DType::F32, device)?;
    let grads = net.forward(&x, None)?.sqr()?.mean_all()?.backward()?;
    let vars = net.trainable_vars(0);
    let mut candle = AdamW::new(vars.clone(), params())?;
    let mut ours = Adam::new(vars, params())?;
    println!(
        "Adam step over cnn6 ({} tensors): candle-nn AdamW {:.3}, xferlab {:.3}",
        net.trainable_vars(0).len(),
        median_ms(device, || candle.step(&grads))?,
        median_ms(device, || ours.step(&grads))?,
    );
    Ok(())
}
