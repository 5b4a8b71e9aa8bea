//! Seeded dropout, the same on every device and thread count.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;
use rayon::prelude::*;

use super::Mode;

/// Seeded dropout: candle's CPU generator cannot be seeded, so the keep-mask comes from a
/// counter-based hash of (seed, call, element), made on the host and uploaded. The n-th call
/// of a dropout built with the same seed drops the same elements, whatever the device or
/// thread count.
pub struct Dropout {
    p: f32,
    seed: u64,
    calls: AtomicU64,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Self {
        Dropout {
            p: p as f32,
            seed,
            calls: AtomicU64::new(0),
        }
    }

    /// Drops elements with probability p and scales the rest by 1/(1-p), in training only.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        if mode == Mode::Infer || self.p == 0.0 {
            return Ok(x.clone());
        }
        let stream = mix(self.seed, self.calls.fetch_add(1, Ordering::Relaxed));
        let (p, scale) = (self.p, 1.0 / (1.0 - self.p));
        let mask: Vec<f32> = (0..x.elem_count() as u64)
            .into_par_iter()
            // The top 24 bits as a uniform number in [0, 1), exact in f32.
            .map(|i| {
                let u = (mix(stream, i) >> 40) as f32 / (1u64 << 24) as f32;
                if u < p { 0.0 } else { scale }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// splitmix64's finaliser: a bijective, well-mixed hash of one word.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of two words (a seed and an index), distinct for swapped arguments.
pub fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b))
}
