//! Frozen-prefix features shared across trials.
//!
//! When blocks 1..f are frozen they are the source model's blocks 1..f, unchanged for the whole
//! trial, and the input pipeline has no randomness: their output on an image is the same in
//! every epoch, at evaluation, and in every trial with the same source model, f and dataset.
//! The cache computes it once per (source model, f, dataset split, image) and trials train
//! only blocks f+1..L and the head on it. Memory is bounded: least recently used entries make
//! room, and a trial whose features would not fit at all runs its frozen blocks every step.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};

use crate::data::Batchable;
use crate::model::{Mode, Network};

/// Images per forward pass when filling the cache. Every pass has exactly this many (the last
/// one padded): matrix kernels sum in an order that depends on the shapes, so fixed shapes
/// make an image's features the same whichever trial asked first and with which images.
const CHUNK: usize = 256;
/// Texts per forward pass: a text is far more work than a small image, and a chunk is
/// padded to full size.
const TEXT_CHUNK: usize = 32;

/// What a cache entry holds features of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The source model's label (`pretrain:<hash>` or a checkpoint path).
    pub source: String,
    /// f: the features are the output of blocks 1..f.
    pub depth: usize,
    /// The dataset's name, split and settings (normalisation is part of the input).
    pub data: String,
}

/// Frozen-prefix features of one trial's examples: row `rows[i]` of `tensor` belongs to
/// example `i` of the trial's data.
#[derive(Debug, Clone)]
pub struct Features {
    /// Blocks 1..f applied to images, one row per image (shared with other trials).
    pub tensor: Tensor,
    /// For each example of the trial, its row in `tensor`.
    pub rows: Vec<u32>,
}

impl Features {
    /// The features of the examples at `examples` (indexes into `rows`), sharing the tensor.
    pub fn subset(&self, examples: &[u32]) -> Features {
        Features {
            tensor: self.tensor.clone(),
            rows: examples.iter().map(|&e| self.rows[e as usize]).collect(),
        }
    }
}

struct Entry {
    /// Row of each image (by its index in the split) in `tensor`.
    rows: HashMap<u32, u32>,
    tensor: Option<Tensor>,
    row_bytes: usize,
    last_used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.rows.len() * self.row_bytes
    }
}

struct State {
    entries: HashMap<Key, Entry>,
    used: usize,
    clock: u64,
}

/// Features shared by the trials that run on one device, at most `budget` bytes of them.
pub struct FeatureCache {
    budget: usize,
    state: Mutex<State>,
}

impl FeatureCache {
    /// A cache holding at most `budget` bytes; 0 turns caching off.
    pub fn new(budget: usize) -> Self {
        FeatureCache {
            budget,
            state: Mutex::new(State {
                entries: HashMap::new(),
                used: 0,
                clock: 0,
            }),
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.state.lock().expect("cache lock").used
    }

    /// The output of `net`'s blocks 1..`key.depth` on `data`, from the cache, computing what
    /// it lacks. `net`'s blocks 1..f must be the source model's, untrained. `None` when the
    /// features would not fit in the budget even with every other entry evicted.
    pub fn features(
        &self,
        key: Key,
        net: &Network,
        data: &Batchable,
    ) -> candle_core::Result<Option<Features>> {
        if self.budget == 0 || key.depth == 0 || data.images.is_empty() {
            return Ok(None);
        }
        // One lock for all: filling is one forward pass over images no trial has asked for
        // yet, short next to training, and eviction then never races with a fill.
        let mut state = self.state.lock().expect("cache lock");
        state.clock += 1;
        let mut entry = match state.entries.remove(&key) {
            Some(entry) => entry,
            None => Entry {
                rows: HashMap::new(),
                tensor: None,
                row_bytes: row_size(net, data, key.depth)?,
                last_used: 0,
            },
        };
        state.used -= entry.bytes();
        entry.last_used = state.clock;
        // A trial's images are distinct (see `Catalog::select`).
        let missing: Vec<u32> = (data.images.iter().copied())
            .filter(|image| !entry.rows.contains_key(image))
            .collect();
        let bytes = (entry.rows.len() + missing.len()) * entry.row_bytes;
        if bytes > self.budget {
            tracing::debug!(
                ?key,
                bytes,
                "features do not fit the cache: frozen blocks run every step"
            );
            if !entry.rows.is_empty() {
                state.used += entry.bytes();
                state.entries.insert(key, entry);
            }
            return Ok(None);
        }
        while state.used + bytes > self.budget {
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
                .expect("the budget holds this entry alone");
            let evicted = state.entries.remove(&oldest).expect("present");
            state.used -= evicted.bytes();
            tracing::debug!(?oldest, bytes = evicted.bytes(), "feature cache evicted");
        }
        if !missing.is_empty() {
            let position: HashMap<u32, u32> = data
                .images
                .iter()
                .enumerate()
                .map(|(at, &image)| (image, at as u32))
                .collect();
            let mut parts: Vec<Tensor> = entry.tensor.iter().cloned().collect();
            let size = if data.mask.is_some() {
                TEXT_CHUNK
            } else {
                CHUNK
            };
            for chunk in missing.chunks(size) {
                let mut at: Vec<u32> = chunk.iter().map(|i| position[i]).collect();
                at.resize(size, at[0]);
                let at = Tensor::new(at, data.inputs.device())?;
                let x = data.inputs.index_select(&at, 0)?;
                let mask = data
                    .mask
                    .as_ref()
                    .map(|m| m.tensor.index_select(&at, 0))
                    .transpose()?;
                let out = net
                    .forward_blocks(&x, mask.as_ref(), 0..key.depth, Mode::Infer)?
                    .detach();
                parts.push(out.narrow(0, 0, chunk.len())?);
            }
            tracing::debug!(
                source = %key.source,
                depth = key.depth,
                images = missing.len(),
                "feature cache filled: frozen blocks ran once on these images"
            );
            let tensor = Tensor::cat(&parts, 0)?;
            for image in missing {
                let row = entry.rows.len() as u32;
                entry.rows.insert(image, row);
            }
            entry.tensor = Some(tensor);
        }
        let features = Features {
            tensor: entry.tensor.clone().expect("filled"),
            rows: data.images.iter().map(|i| entry.rows[i]).collect(),
        };
        state.used += bytes;
        state.entries.insert(key, entry);
        Ok(Some(features))
    }
}

/// Bytes of one image's features at `depth`.
fn row_size(net: &Network, data: &Batchable, depth: usize) -> candle_core::Result<usize> {
    let mask = (data.mask.as_ref())
        .map(|m| m.tensor.narrow(0, 0, 1))
        .transpose()?;
    let first = data.inputs.narrow(0, 0, 1)?;
    let one = net.forward_blocks(&first, mask.as_ref(), 0..depth, Mode::Infer)?;
    Ok(one.elem_count() * DType::F32.size_in_bytes())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::data::ImageShape;
    use crate::spec::{Arch, ModelSpec};

    /// An MLP whose block 1 has 4 outputs: 16 bytes of features per image.
    fn net() -> Network {
        let model = ModelSpec {
            hidden: Some(vec![4, 2]),
            ..ModelSpec::plain(Arch::Mlp)
        };
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        Network::new(&model, shape, 2, 0, &Device::Cpu).unwrap()
    }

    /// Images `images` of a split whose image i has every pixel equal to i.
    fn data(images: &[u32]) -> Batchable {
        let pixels: Vec<f32> = images.iter().flat_map(|&i| [i as f32; 4]).collect();
        Batchable {
            inputs: Tensor::from_vec(pixels, (images.len(), 1, 2, 2), &Device::Cpu).unwrap(),
            mask: None,
            targets: Tensor::zeros(images.len(), DType::U32, &Device::Cpu).unwrap(),
            classes: 2,
            images: images.to_vec(),
        }
    }

    fn key(data: &str) -> Key {
        Key {
            source: "s".into(),
            depth: 1,
            data: data.into(),
        }
    }

    fn rows_of(features: &Features) -> Vec<Vec<f32>> {
        let rows = Tensor::new(features.rows.as_slice(), &Device::Cpu).unwrap();
        features
            .tensor
            .index_select(&rows, 0)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn each_image_is_computed_once_and_found_again_in_any_order() {
        let (net, cache) = (net(), FeatureCache::new(1024));
        let first = cache
            .features(key("a"), &net, &data(&[3, 1, 4]))
            .unwrap()
            .unwrap();
        let again = cache
            .features(key("a"), &net, &data(&[4, 9, 3]))
            .unwrap()
            .unwrap();
        assert_eq!(again.tensor.dim(0).unwrap(), 4, "images 3, 1, 4 and 9");
        assert_eq!(cache.used(), 4 * 16);
        let (first, again) = (rows_of(&first), rows_of(&again));
        assert_eq!(
            (&again[0], &again[2]),
            (&first[2], &first[0]),
            "images 4 and 3"
        );
        let direct = net
            .forward_blocks(&data(&[4, 9, 3]).inputs, None, 0..1, Mode::Infer)
            .unwrap();
        for (cached, direct) in again.iter().zip(direct.to_vec2::<f32>().unwrap()) {
            for (a, b) in cached.iter().zip(direct) {
                assert!((a - b).abs() < 1e-5, "{cached:?}");
            }
        }
    }

    #[test]
    fn the_least_recently_used_entry_makes_room_and_what_cannot_fit_is_refused() {
        let (net, cache) = (net(), FeatureCache::new(10 * 16));
        let d = data(&[0, 1, 2, 3]);
        assert!(cache.features(key("a"), &net, &d).unwrap().is_some());
        assert!(cache.features(key("b"), &net, &d).unwrap().is_some());
        // Touch a: b is now the least recently used.
        assert!(cache.features(key("a"), &net, &d).unwrap().is_some());
        assert_eq!(cache.used(), 8 * 16);
        assert!(cache.features(key("c"), &net, &d).unwrap().is_some());
        assert_eq!(cache.used(), 8 * 16, "b was evicted for c");
        let state = cache.state.lock().unwrap();
        let mut held: Vec<&str> = state.entries.keys().map(|k| k.data.as_str()).collect();
        held.sort();
        assert_eq!(held, ["a", "c"]);
        drop(state);
        // Eleven images do not fit in ten rows, whatever is evicted: refused, nothing lost.
        let big = data(&(0..11).collect::<Vec<_>>());
        assert!(cache.features(key("d"), &net, &big).unwrap().is_none());
        assert!(cache.features(key("a"), &net, &big).unwrap().is_none());
        assert_eq!(cache.used(), 8 * 16);
        assert_eq!(
            cache.state.lock().unwrap().entries.len(),
            2,
            "no empty entry for d"
        );
        assert!(
            FeatureCache::new(0)
                .features(key("a"), &net, &d)
                .unwrap()
                .is_none()
        );
    }
}
