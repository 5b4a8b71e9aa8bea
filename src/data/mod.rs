//! Datasets: where images come from (generated, IDX, image folders), their size and
//! channels as the model wants them; texts (folders, tables) tokenised for the model; class
//! subsets, sampling, tensors.

pub mod folder;
mod generated;
pub mod idx;
pub mod text;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{InputError, Result, shown};
use crate::spec::{DataSelection, DatasetFormat, DatasetSpec, ModelSpec, Split};
use text::Texts;
use tokens::Tokens;

/// Channels, height and width of every image in a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Colour channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageShape {
    /// Values per image.
    pub fn values(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// What a network reads: images of one shape, or token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Images.
    Image(ImageShape),
    /// Token ids with an attention mask (the text domain).
    Tokens,
}

impl From<ImageShape> for Input {
    fn from(shape: ImageShape) -> Self {
        Input::Image(shape)
    }
}

/// One split of a dataset in memory: pixels scaled to [0, 1], one label per image.
#[derive(Debug)]
pub struct Images {
    /// Image shape.
    pub shape: ImageShape,
    /// `labels.len() * shape.values()` values in [0, 1].
    pub pixels: Vec<f32>,
    /// Original class labels.
    pub labels: Vec<u32>,
}

impl Images {
    /// How many images each class has.
    pub fn class_counts(&self) -> BTreeMap<u32, usize> {
        count(&self.labels)
    }
}

pub(crate) fn count(labels: &[u32]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for &label in labels {
        *counts.entry(label).or_insert(0) += 1;
    }
    counts
}

/// Images or texts and relabelled classes ready for training, on a device.
#[derive(Debug, Clone)]
pub struct Batchable {
    /// (N, C, H, W), standardised; or (N, S) token ids (u32), padded.
    pub inputs: Tensor,
    /// Texts: which tokens are real.
    pub mask: Option<Mask>,
    /// (N,) class indices 0..classes, as u32.
    pub targets: Tensor,
    /// Number of classes.
    pub classes: usize,
    /// Each example's index among its split's images (distinct): what the feature cache keys.
    pub images: Vec<u32>,
}

/// Which tokens of padded texts are real: padding sits at the end of each text.
#[derive(Debug, Clone)]
pub struct Mask {
    /// (N, S), 1 for a real token and 0 for padding (f32), on the device.
    pub tensor: Tensor,
    /// Real tokens per text, on the host: a batch's longest is known without reading the
    /// device.
    pub lengths: Vec<u32>,
}

impl Mask {
    /// The longest text among `examples` (indices into the rows).
    pub fn longest(&self, examples: impl IntoIterator<Item = usize>) -> usize {
        (examples.into_iter())
            .map(|i| self.lengths[i] as usize)
            .max()
            .unwrap_or(0)
    }
}

impl Batchable {
    /// The examples at `rows`, in that order (e.g. early stopping's validation split).
    pub fn subset(&self, rows: &[u32]) -> candle_core::Result<Batchable> {
        let at = Tensor::new(rows, self.inputs.device())?;
        let mask = match &self.mask {
            Some(mask) => Some(Mask {
                tensor: mask.tensor.index_select(&at, 0)?,
                lengths: rows.iter().map(|&r| mask.lengths[r as usize]).collect(),
            }),
            None => None,
        };
        Ok(Batchable {
            inputs: self.inputs.index_select(&at, 0)?,
            mask,
            targets: self.targets.index_select(&at, 0)?,
            classes: self.classes,
            images: rows.iter().map(|&r| self.images[r as usize]).collect(),
        })
    }
}

/// The datasets of a spec, each split loaded once and shared.
pub struct Catalog {
    specs: BTreeMap<String, DatasetSpec>,
    loaded: Mutex<HashMap<(String, Split), Arc<Images>>>,
    texts: Mutex<HashMap<(String, Split), Arc<Texts>>>,
    tokens: Mutex<HashMap<TokensKey, Arc<Tokens>>>,
    counts: Mutex<HashMap<(String, Split), BTreeMap<u32, usize>>>,
}

/// A split tokenised by one tokenizer at one `max_length`.
type TokensKey = (String, Split, std::path::PathBuf, usize);

impl Catalog {
    /// A catalog over the spec's datasets; nothing is read until asked.
    pub fn new(specs: &BTreeMap<String, DatasetSpec>) -> Self {
        Catalog {
            specs: specs.clone(),
            loaded: Mutex::new(HashMap::new()),
            texts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn spec(&self, name: &str) -> Result<&DatasetSpec, InputError> {
        self.specs
            .get(name)
            .ok_or_else(|| InputError::new(format!("no dataset named `{name}`")))
    }

    /// One split of a dataset, loaded on first use, at the size and channels the spec asks.
    pub fn images(&self, name: &str, split: Split) -> Result<Arc<Images>, InputError> {
        let key = (name.to_string(), split);
        if let Some(images) = self.loaded.lock().expect("catalog lock").get(&key) {
            return Ok(images.clone());
        }
        let spec = self.spec(name)?;
        let images = Arc::new(match spec.format {
            DatasetFormat::Generated => fitted(
                generated::images(&spec.generated.clone().unwrap_or_default(), split),
                spec,
            ),
            DatasetFormat::Idx => fitted(idx::images(dir_of(spec, name)?, split)?, spec),
            DatasetFormat::ImageFolder => {
                let shape = self.shape(name)?;
                let listing = folder::list(
                    dir_of(spec, name)?,
                    split,
                    spec.holdout,
                    folder::Kind::Images,
                )?;
                let read = folder::images(&listing, shape, spec.skip_unreadable)?;
                if !read.skipped.is_empty() {
                    let files: Vec<String> = read.skipped.iter().map(|p| shown(p)).collect();
                    tracing::warn!(
                        "dataset `{name}`, {} split: skipped {} unreadable image{} (skip_unreadable): {}",
                        split.name(),
                        files.len(),
                        if files.len() == 1 { "" } else { "s" },
                        files.join(", ")
                    );
                }
                read.images
            }
            DatasetFormat::TextFolder | DatasetFormat::TextTable => {
                return Err(InputError::new(format!(
                    "dataset `{name}` holds texts, not images"
                )));
            }
        });
        self.loaded
            .lock()
            .expect("catalog lock")
            .insert(key, images.clone());
        Ok(images)
    }

    /// Images per class of one split, without reading the images when the format allows.
    pub fn class_counts(
        &self,
        name: &str,
        split: Split,
    ) -> Result<BTreeMap<u32, usize>, InputError> {
        let key = (name.to_string(), split);
        if let Some(counts) = self.counts.lock().expect("catalog lock").get(&key) {
            return Ok(counts.clone());
        }
        let spec = self.spec(name)?;
        let counts = match spec.format {
            DatasetFormat::Generated => {
                generated::class_counts(&spec.generated.clone().unwrap_or_default(), split)
            }
            DatasetFormat::Idx => count(&idx::checked_labels(dir_of(spec, name)?, split)?),
            // What is skipped is known only once decoded.
            DatasetFormat::ImageFolder if spec.skip_unreadable => {
                self.images(name, split)?.class_counts()
            }
            DatasetFormat::ImageFolder => folder::class_counts(&folder::list(
                dir_of(spec, name)?,
                split,
                spec.holdout,
                folder::Kind::Images,
            )?),
            DatasetFormat::TextFolder | DatasetFormat::TextTable => {
                count(&self.texts(name, split)?.labels)
            }
        };
        self.counts
            .lock()
            .expect("catalog lock")
            .insert(key, counts.clone());
        Ok(counts)
    }

    /// One split of a text dataset, read on first use.
    pub fn texts(&self, name: &str, split: Split) -> Result<Arc<Texts>, InputError> {
        let key = (name.to_string(), split);
        if let Some(texts) = self.texts.lock().expect("catalog lock").get(&key) {
            return Ok(texts.clone());
        }
        let spec = self.spec(name)?;
        let texts = Arc::new(match spec.format {
            DatasetFormat::TextFolder => text::folder(dir_of(spec, name)?, split, spec.holdout)?,
            DatasetFormat::TextTable => text::table(spec, name, split)?,
            _ => {
                return Err(InputError::new(format!(
                    "dataset `{name}` holds images, not texts"
                )));
            }
        });
        self.texts
            .lock()
            .expect("catalog lock")
            .insert(key, texts.clone());
        Ok(texts)
    }

    /// One split of a text dataset tokenised for `model`, once per tokenizer and length.
    pub fn tokens(
        &self,
        name: &str,
        split: Split,
        model: &ModelSpec,
    ) -> Result<Arc<Tokens>, InputError> {
        let tokenizer = model.tokenizer.clone().ok_or_else(|| {
            InputError::new("texts need a tokenizer: `model.tokenizer` or a model folder")
        })?;
        let key = (name.to_string(), split, tokenizer, model.max_length());
        if let Some(tokens) = self.tokens.lock().expect("catalog lock").get(&key) {
            return Ok(tokens.clone());
        }
        let texts = self.texts(name, split)?;
        let tokens = Arc::new(tokens::tokenize(&texts.texts, &key.2, key.3)?);
        self.tokens
            .lock()
            .expect("catalog lock")
            .insert(key, tokens.clone());
        Ok(tokens)
    }

    /// The names of the classes `labels` of a dataset's train split: image and text folders'
    /// folder names, text tables' labels, and the numbers themselves for IDX files and the
    /// generated domain.
    pub fn class_names(&self, name: &str, labels: &[u32]) -> Result<Vec<String>, InputError> {
        let spec = self.spec(name)?;
        let known: Vec<String> = match spec.format {
            DatasetFormat::TextFolder | DatasetFormat::TextTable => {
                self.texts(name, Split::Train)?.classes.clone()
            }
            DatasetFormat::ImageFolder => {
                let kind = folder::Kind::Images;
                folder::list(dir_of(spec, name)?, Split::Train, spec.holdout, kind)?.classes
            }
            DatasetFormat::Idx | DatasetFormat::Generated => {
                return Ok(labels.iter().map(u32::to_string).collect());
            }
        };
        (labels.iter())
            .map(|&l| {
                known
                    .get(l as usize)
                    .cloned()
                    .ok_or_else(|| InputError::new(format!("dataset `{name}` has no class {l}")))
            })
            .collect()
    }

    /// What a network reads from the dataset.
    pub fn input(&self, name: &str) -> Result<Input, InputError> {
        match self.spec(name)?.format.is_text() {
            true => Ok(Input::Tokens),
            false => self.shape(name).map(Input::Image),
        }
    }

    /// The shape of the dataset's images, as the model sees them.
    pub fn shape(&self, name: &str) -> Result<ImageShape, InputError> {
        let spec = self.spec(name)?;
        let native = match spec.format {
            DatasetFormat::Generated => {
                generated::shape(&spec.generated.clone().unwrap_or_default())
            }
            DatasetFormat::Idx => idx::shape(dir_of(spec, name)?, Split::Train)?,
            DatasetFormat::ImageFolder => {
                let size = spec.image_size.ok_or_else(|| {
                    InputError::new(format!("image folder `{name}` needs an `image_size`"))
                })?;
                ImageShape {
                    channels: 3,
                    height: size,
                    width: size,
                }
            }
            DatasetFormat::TextFolder | DatasetFormat::TextTable => {
                return Err(InputError::new(format!(
                    "dataset `{name}` holds texts, not images"
                )));
            }
        };
        let size = spec.image_size;
        Ok(ImageShape {
            channels: spec.channels.unwrap_or(native.channels),
            height: size.unwrap_or(native.height),
            width: size.unwrap_or(native.width),
        })
    }

    /// The selected subset as tensors on `device` (images standardised, texts tokenised for
    /// `model`): classes relabelled in the order given, `per_class` examples of each drawn
    /// with `seed` (a smaller `per_class` with the same seed draws a subset of a larger one).
    pub fn select(
        &self,
        selection: &DataSelection,
        model: &ModelSpec,
        seed: u64,
        device: &Device,
    ) -> Result<Batchable> {
        let spec = self.spec(&selection.dataset)?;
        if spec.format.is_text() {
            let texts = self.texts(&selection.dataset, selection.split)?;
            let (chosen, classes) = choose(&texts.labels, selection, seed);
            let tokens = self.tokens(&selection.dataset, selection.split, model)?;
            let length = tokens.length;
            let mut ids = Vec::with_capacity(chosen.len() * length);
            let mut mask = Vec::with_capacity(chosen.len() * length);
            let mut lengths = Vec::with_capacity(chosen.len());
            for &(index, _) in &chosen {
                ids.extend_from_slice(&tokens.ids[index * length..(index + 1) * length]);
                let real = tokens.lengths[index];
                mask.extend((0..length).map(|i| if i < real as usize { 1f32 } else { 0.0 }));
                lengths.push(real);
            }
            return batchable(chosen, classes, device, |n| {
                let tensor = Tensor::from_vec(mask, (n, length), device)?;
                Ok((
                    Tensor::from_vec(ids, (n, length), device)?,
                    Some(Mask { tensor, lengths }),
                ))
            });
        }
        let images = self.images(&selection.dataset, selection.split)?;
        let (chosen, classes) = choose(&images.labels, selection, seed);
        let len = images.shape.values();
        let plane = images.shape.height * images.shape.width;
        let channels = images.shape.channels;
        let (mean, std) = spec.standardisation();
        let mean: Vec<f32> = (0..channels).map(|c| mean.get(c) as f32).collect();
        let std: Vec<f32> = (0..channels).map(|c| std.get(c) as f32).collect();
        let mut pixels = Vec::with_capacity(chosen.len() * len);
        for &(index, _) in &chosen {
            let image = &images.pixels[index * len..(index + 1) * len];
            pixels.extend(
                (image.iter().enumerate()).map(|(i, p)| (p - mean[i / plane]) / std[i / plane]),
            );
        }
        let shape = images.shape;
        batchable(chosen, classes, device, |n| {
            let dims = (n, shape.channels, shape.height, shape.width);
            Ok((Tensor::from_vec(pixels, dims, device)?, None))
        })
    }
}

/// The examples a selection takes, as (index in the split, new label), and its classes.
fn choose(labels: &[u32], selection: &DataSelection, seed: u64) -> (Vec<(usize, u32)>, usize) {
    let classes: Vec<u32> = match &selection.classes {
        Some(classes) => classes.clone(),
        None => count(labels).into_keys().collect(),
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
    let position: HashMap<u32, usize> = classes.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    for (index, label) in labels.iter().enumerate() {
        if let Some(&new_label) = position.get(label) {
            by_class[new_label].push(index);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen: Vec<(usize, u32)> = Vec::new();
    for (new_label, indices) in by_class.iter_mut().enumerate() {
        if let Some(per_class) = selection.per_class {
            indices.shuffle(&mut rng);
            indices.truncate(per_class);
        }
        chosen.extend(indices.iter().map(|&i| (i, new_label as u32)));
    }
    (chosen, classes.len())
}

/// A [`Batchable`] of the `chosen` examples, whose inputs (and mask) `inputs` makes.
fn batchable(
    chosen: Vec<(usize, u32)>,
    classes: usize,
    device: &Device,
    inputs: impl FnOnce(usize) -> Result<(Tensor, Option<Mask>)>,
) -> Result<Batchable> {
    let targets: Vec<u32> = chosen.iter().map(|&(_, label)| label).collect();
    let (inputs, mask) = inputs(chosen.len())?;
    Ok(Batchable {
        inputs,
        mask,
        targets: Tensor::from_vec(targets, chosen.len(), device)?,
        classes,
        images: chosen.iter().map(|&(index, _)| index as u32).collect(),
    })
}

fn dir_of<'a>(spec: &'a DatasetSpec, name: &str) -> Result<&'a std::path::Path, InputError> {
    spec.dir
        .as_deref()
        .ok_or_else(|| InputError::new(format!("dataset `{name}` has no `dir`")))
}

/// Images at the size and channels the spec asks, when it asks for others than the files'.
fn fitted(images: Images, spec: &DatasetSpec) -> Images {
    let native = images.shape;
    let size = spec.image_size.unwrap_or(native.height);
    let channels = spec.channels.unwrap_or(native.channels);
    if (size, size, channels) == (native.height, native.width, native.channels) {
        return images;
    }
    let len = native.values();
    // On all cores: a whole split is fitted on first use (Fashion-MNIST's 60,000 images took
    // a fifth of a one-trial run on one core).
    let fitted: Vec<Vec<f32>> = images
        .pixels
        .par_chunks(len)
        .map(|image| {
            let bytes: Vec<u8> = image.iter().map(|p| (p * 255.0).round() as u8).collect();
            let (w, h) = (native.width as u32, native.height as u32);
            let decoded = match native.channels {
                1 => image::GrayImage::from_raw(w, h, bytes).map(image::DynamicImage::from),
                _ => {
                    // Planes (CHW) to interleaved RGB (HWC).
                    let plane = native.height * native.width;
                    let rgb: Vec<u8> = (0..plane * 3)
                        .map(|i| bytes[(i % 3) * plane + i / 3])
                        .collect();
                    image::RgbImage::from_raw(w, h, rgb).map(image::DynamicImage::from)
                }
            };
            folder::fit(&decoded.expect("sizes match"), size, channels)
        })
        .collect();
    Images {
        shape: ImageShape {
            channels,
            height: size,
            width: size,
        },
        pixels: fitted.concat(),
        labels: images.labels,
    }
}
