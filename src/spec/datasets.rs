//! The spec's datasets: where images come from (generated, IDX files, image folders) and how
//! they are resized, converted and standardised; and the built-in `glyphs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A dataset the spec can draw samples from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Storage format.
    pub format: DatasetFormat,
    /// Folder holding the files (`idx`, `image_folder`); relative paths start at the spec
    /// file's folder.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Options of the built-in generated domain (`generated` only).
    #[serde(default)]
    pub generated: Option<GeneratedSpec>,
    /// A named standardisation instead of `mean` and `std`: `imagenet` (mean 0.485, 0.456,
    /// 0.406; std 0.229, 0.224, 0.225; RGB), what ImageNet weights expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
    /// Mean subtracted from inputs after scaling them to [0, 1]: one number, or one per channel
    /// (ImageNet models: [0.485, 0.456, 0.406], or `normalize: imagenet`).
    #[serde(default)]
    pub mean: PerChannel,
    /// Standard deviation inputs are divided by after subtracting the mean: one number, or one
    /// per channel (ImageNet models: [0.229, 0.224, 0.225]).
    #[serde(default = "PerChannel::one")]
    pub std: PerChannel,
    /// Side of the square images a model sees: each image's shorter side is resized to it and
    /// the centre cropped. Required for `image_folder`; for the others, their own size when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Colour channels a model sees: 1 (grey) or 3 (RGB), converted as needed. Default: 3 for
    /// `image_folder`, the files' own for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// `image_folder` without train/ and test/ folders: the fraction of each class held out
    /// as the test split (chosen by a hash of each file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// `image_folder`: skip images that cannot be decoded, and list them, instead of refusing
    /// the spec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unreadable: bool,
    /// `text_table`: the CSV (with a header row) or JSONL file of the train split, or of both
    /// with `holdout`; relative paths start at the spec file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `text_table`: the file of the test split, in the same format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_file: Option<PathBuf>,
    /// `text_table`: the column or JSON field holding the text (default `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// `text_table`: the column or JSON field holding the label (default `label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_field: Option<String>,
    /// `text_table`: the labels, as written in the file, in the order they are numbered
    /// (0, 1, ...); every label of the train split, sorted, when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Named standardisations (`normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// ImageNet's per-channel mean and standard deviation, as torchvision's models use.
    Imagenet,
}

impl DatasetSpec {
    /// The mean and standard deviation inputs are standardised with: `normalize`'s, or
    /// `mean` and `std`.
    pub fn standardisation(&self) -> (PerChannel, PerChannel) {
        match self.normalize {
            Some(Normalization::Imagenet) => (
                PerChannel::Each(vec![0.485, 0.456, 0.406]),
                PerChannel::Each(vec![0.229, 0.224, 0.225]),
            ),
            None => (self.mean.clone(), self.std.clone()),
        }
    }
}

/// A normalisation value: one number for every channel, or one per channel.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PerChannel {
    /// The same for every channel.
    All(f64),
    /// One per channel, in order.
    Each(Vec<f64>),
}

impl Default for PerChannel {
    fn default() -> Self {
        PerChannel::All(0.0)
    }
}

impl PerChannel {
    fn one() -> Self {
        PerChannel::All(1.0)
    }

    /// The value for channel `c` (a list must have one per channel: checked by the planner).
    pub fn get(&self, c: usize) -> f64 {
        match self {
            PerChannel::All(value) => *value,
            PerChannel::Each(values) => values[c],
        }
    }

    /// Every value given.
    pub fn values(&self) -> &[f64] {
        match self {
            PerChannel::All(value) => std::slice::from_ref(value),
            PerChannel::Each(values) => values,
        }
    }
}

// Hand-written so a wrong value gets "expected a number or a list of numbers" instead of the
// untagged enum's "data did not match any variant".
impl<'de> Deserialize<'de> for PerChannel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PerChannelVisitor;
        impl<'de> Visitor<'de> for PerChannelVisitor {
            type Value = PerChannel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a list of numbers (one per channel)")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<PerChannel, E> {
                Ok(PerChannel::All(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<PerChannel, E> {
                Ok(PerChannel::All(value as f64))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<PerChannel, E> {
                Ok(PerChannel::All(value as f64))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<PerChannel, A::Error> {
                Vec::<f64>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(PerChannel::Each)
            }
        }
        deserializer.deserialize_any(PerChannelVisitor)
    }
}

/// Storage format of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// The built-in generated image domain: deterministic, nothing to download.
    Generated,
    /// MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-...`).
    Idx,
    /// PNG and JPEG files in `dir/<class>/<image>` (torchvision's ImageFolder), split into
    /// `dir/train/` and `dir/test/`, or by `holdout`.
    ImageFolder,
    /// Texts, one UTF-8 document per file, in `dir/<class>/<file>`, split as `image_folder`.
    TextFolder,
    /// Texts in a CSV or JSONL `file` (and `test_file`, or `holdout`), one row per text, its
    /// label in another column.
    TextTable,
}

impl DatasetFormat {
    /// Whether the format holds texts (the text domain) rather than images.
    pub fn is_text(self) -> bool {
        matches!(self, DatasetFormat::TextFolder | DatasetFormat::TextTable)
    }
}

/// The built-in generated domain: glyphs made of strokes placed in the four quadrants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSpec {
    /// Seed of the domain: which glyph each class is.
    #[serde(default = "default_domain_seed")]
    pub seed: u64,
    /// Number of classes.
    #[serde(default = "default_generated_classes")]
    pub classes: u32,
    /// Side of the square images, in pixels (a multiple of 4, at least 8).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Standard deviation of the pixel noise.
    #[serde(default = "default_noise")]
    pub noise: f64,
    /// Images per class in the train split.
    #[serde(default = "default_train_per_class")]
    pub train_per_class: usize,
    /// Images per class in the test split.
    #[serde(default = "default_test_per_class")]
    pub test_per_class: usize,
}

impl Default for GeneratedSpec {
    fn default() -> Self {
        Self {
            seed: default_domain_seed(),
            classes: default_generated_classes(),
            image_size: default_image_size(),
            noise: default_noise(),
            train_per_class: default_train_per_class(),
            test_per_class: default_test_per_class(),
        }
    }
}

/// Name of the built-in generated dataset, present in every spec.
pub const BUILTIN_DATASET: &str = "glyphs";

pub(super) fn default_datasets() -> BTreeMap<String, DatasetSpec> {
    BTreeMap::from([(BUILTIN_DATASET.to_string(), builtin_dataset())])
}

/// The built-in generated dataset with its default options.
pub fn builtin_dataset() -> DatasetSpec {
    DatasetSpec {
        format: DatasetFormat::Generated,
        dir: None,
        generated: Some(GeneratedSpec::default()),
        mean: PerChannel::All(0.0),
        std: PerChannel::All(1.0),
        image_size: None,
        channels: None,
        holdout: None,
        normalize: None,
        skip_unreadable: false,
        file: None,
        test_file: None,
        text_field: None,
        label_field: None,
        labels: None,
    }
}
fn default_domain_seed() -> u64 {
    7
}
fn default_generated_classes() -> u32 {
    20
}
fn default_image_size() -> usize {
    16
}
fn default_noise() -> f64 {
    0.5
}
fn default_train_per_class() -> usize {
    1000
}
fn default_test_per_class() -> usize {
    200
}
