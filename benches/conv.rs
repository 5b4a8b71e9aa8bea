//! One convolution's forward and backward pass at each cnn6 shape (batch 64, 28×28 images):
//! candle's `conv2d` against xferlab's `Conv3x3`, with the input a constant (the first trainable
//! block) and a variable (every later one). `just bench-conv [DEVICE]`; prints milliseconds,
//! the median of 20 passes after a warm-up.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use xferlab::device::DeviceChoice;
use xferlab::model::conv::Conv3x3;

const BATCH: usize = 64;
const PASSES: usize = 20;

fn median_ms(device: &Device, mut pass: impl FnMut() -> Result<()>) -> Result<f64> {
    pass()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        let start = Instant::now();
        pass()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[PASSES / 2])
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
    println!("{PASSES} passes of forward + backward on {device:?}, median ms");
    println!(
        "{:<22} {:>14} {:>14} {:>14} {:>14}",
        "block (in→out, size)", "candle, const", "Conv3x3, const", "candle, var", "Conv3x3, var"
    );
    for (block, input, output, size) in [
        ("b1", 1, 32, 28),
        ("b2", 32, 32, 28),
        ("b3", 32, 64, 14),
        ("b4", 64, 64, 14),
    ] {
        let x = Tensor::randn(0f32, 1., (BATCH, input, size, size), &device)?;
        let x_var = Var::from_tensor(&x)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 0.1, (output, input, 3, 3), &device)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(output, x.dtype(), &device)?)?;
        let conv = Conv3x3::new(
            weight.as_tensor().clone(),
            bias.as_tensor().clone(),
            &device,
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
            median_ms(&device, || candle(&x))?,
            median_ms(&device, || ours(&x))?,
            median_ms(&device, || candle(x_var.as_tensor()))?,
            median_ms(&device, || ours(x_var.as_tensor()))?,
        );
    }
    Ok(())
}
