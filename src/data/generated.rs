//! The built-in generated domain, "glyphs": each class is a choice of stroke for each of the
//! four quadrants of the image. Classes share strokes, so features learnt on some classes
//! (a source task) help to tell the others apart (a target task) from few examples.
//! Deterministic: image `i` of class `c` in a split depends only on the domain's options.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{ImageShape, Images};
use crate::spec::{GeneratedSpec, Split};

/// Number of distinct strokes a quadrant can hold.
const STROKES: usize = 6;
/// Probability that a quadrant shows a random stroke instead of its class's stroke.
const CONFUSION: f64 = 0.15;

pub(super) fn shape(spec: &GeneratedSpec) -> ImageShape {
    ImageShape {
        channels: 1,
        height: spec.image_size,
        width: spec.image_size,
    }
}

pub(super) fn class_counts(spec: &GeneratedSpec, split: Split) -> BTreeMap<u32, usize> {
    (0..spec.classes)
        .map(|c| (c, per_class(spec, split)))
        .collect()
}

fn per_class(spec: &GeneratedSpec, split: Split) -> usize {
    match split {
        Split::Train => spec.train_per_class,
        Split::Test => spec.test_per_class,
    }
}

/// The stroke of each quadrant for every class: distinct classes, chosen by the domain seed.
fn glyphs(spec: &GeneratedSpec) -> Vec<[usize; 4]> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut glyphs: Vec<[usize; 4]> = Vec::new();
    while glyphs.len() < spec.classes as usize {
        let glyph = [(); 4].map(|_| rng.random_range(0..STROKES));
        // Classes differ in at least two quadrants, so no class is another with noise.
        if glyphs
            .iter()
            .all(|g| g.iter().zip(&glyph).filter(|(a, b)| a != b).count() >= 2)
        {
            glyphs.push(glyph);
        }
    }
    glyphs
}

/// Whether stroke `stroke` covers point (u, v) of its box, both in [0, 1].
fn covers(stroke: usize, u: f32, v: f32) -> bool {
    let near = |a: f32, b: f32| (a - b).abs() < 0.2;
    match stroke {
        0 => near(v, 0.5),                                           // horizontal bar
        1 => near(u, 0.5),                                           // vertical bar
        2 => near(u, v),                                             // diagonal
        3 => near(u, 1.0 - v),                                       // anti-diagonal
        4 => !(0.2..=0.8).contains(&u) || !(0.2..=0.8).contains(&v), // square ring
        _ => (near(u, 0.5) && near(v, 0.5)) || near(u, 0.1) && near(v, 0.9), // dot pair
    }
}

pub(super) fn images(spec: &GeneratedSpec, split: Split) -> Images {
    let shape = shape(spec);
    let size = spec.image_size;
    let half = size / 2;
    let box_size = half - 2;
    let glyphs = glyphs(spec);
    let count = per_class(spec, split);
    let noise = Normal::new(0.0, spec.noise.max(0.0) as f32).expect("noise is finite");
    let split_salt: u64 = match split {
        Split::Train => 0x7472_6169_6e00_0000,
        Split::Test => 0x7465_7374_0000_0000,
    };
    let mut pixels = Vec::with_capacity(glyphs.len() * count * shape.values());
    let mut labels = Vec::with_capacity(glyphs.len() * count);
    for (class, glyph) in glyphs.iter().enumerate() {
        for i in 0..count {
            let seed = spec.seed ^ split_salt ^ ((class as u64) << 32) ^ i as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut image = vec![0f32; size * size];
            for (quadrant, &own) in glyph.iter().enumerate() {
                let stroke = if rng.random_bool(CONFUSION) {
                    rng.random_range(0..STROKES)
                } else {
                    own
                };
                let intensity: f32 = rng.random_range(0.5..1.0);
                let top = (quadrant / 2) * half + rng.random_range(0..3);
                let left = (quadrant % 2) * half + rng.random_range(0..3);
                for y in 0..box_size {
                    for x in 0..box_size {
                        let (u, v) = (
                            (x as f32 + 0.5) / box_size as f32,
                            (y as f32 + 0.5) / box_size as f32,
                        );
                        if covers(stroke, u, v) {
                            image[(top + y) * size + left + x] = intensity;
                        }
                    }
                }
            }
            pixels.extend(
                image
                    .iter()
                    .map(|p| (p + noise.sample(&mut rng)).clamp(0.0, 1.0)),
            );
            labels.push(class as u32);
        }
    }
    Images {
        shape,
        pixels,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_splits_differ() {
        let spec = GeneratedSpec {
            train_per_class: 3,
            test_per_class: 3,
            ..GeneratedSpec::default()
        };
        let a = images(&spec, Split::Train);
        let b = images(&spec, Split::Train);
        let test = images(&spec, Split::Test);
        assert_eq!(a.pixels, b.pixels);
        assert_ne!(a.pixels, test.pixels);
        assert_eq!(a.labels.len(), 60);
        assert!(a.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    }

    #[test]
    fn classes_are_distinct_glyphs() {
        let glyphs = glyphs(&GeneratedSpec::default());
        assert_eq!(glyphs.len(), 20);
        for (i, a) in glyphs.iter().enumerate() {
            for b in &glyphs[i + 1..] {
                assert!(a.iter().zip(b).filter(|(x, y)| x != y).count() >= 2);
            }
        }
    }
}
