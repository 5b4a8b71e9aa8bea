//! Loading a spec: figment layers (defaults < YAML file < `XFERLAB_` environment < `--set`),
//! with every error mapped back to a file position, variable or override.
//!
//! Every value a person writes is YAML, read by serde_yaml: the file, an `XFERLAB_` variable
//! and a `--set` alike, so `1e-3`, `0x10` or `[0, 1]` mean the same in each. A value is never
//! allowed to change meaning on its way to the typed spec: the layers hold JSON values, where a
//! NaN or an infinity would become `null` (for `per_class`, "every image"), so those are
//! refused as written, at their line and column.

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Format, Yaml};
use figment::{Figment, Metadata};

use super::datasets::BUILTIN_DATASET;
use super::layers::{
    ENV_NAME, MLFLOW_ENV_NAME, MlflowEnv, OVERRIDE_NAME, Overrides, setting_variable,
};
use super::location::PositionMap;
use super::types::Spec;
use crate::error::{InputError, Origin, Position, shown};

/// Prefix of environment variables that override spec keys (`XFERLAB_TRAIN__LR=0.01`).
pub const ENV_PREFIX: &str = "XFERLAB_";

/// MLflow's conventional variable for the tracking server: sets `tracking.mlflow.uri`.
pub const MLFLOW_URI_VARIABLE: &str = "MLFLOW_TRACKING_URI";

/// `XFERLAB_` variables that set command-line options, not spec keys: clap reads each
/// (`env = ...`), and the loader skips every one of `ALL`.
pub mod command_line_variables {
    /// `--jobs`.
    pub const JOBS: &str = "XFERLAB_JOBS";
    /// `--feature-cache-mb`.
    pub const FEATURE_CACHE_MB: &str = "XFERLAB_FEATURE_CACHE_MB";
    /// `--store`.
    pub const STORE: &str = "XFERLAB_STORE";
    /// Every one of them.
    pub const ALL: [&str; 3] = [JOBS, FEATURE_CACHE_MB, STORE];
}

/// A spec file as read, for locating errors in it.
#[derive(Debug)]
pub struct SpecFile {
    /// The file.
    pub path: PathBuf,
    text: String,
    positions: PositionMap,
}

impl SpecFile {
    /// Reads and parses a YAML file, reporting syntax errors with their position.
    pub fn read(path: &Path) -> Result<Self, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(format!("cannot read spec file {}: {e}", path.display()))
        })?;
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(InputError::new("the spec file is empty")
                .with_origin(Origin::File {
                    path: path.to_path_buf(),
                    position: None,
                    line_text: None,
                })
                .with_help("start from experiments/quickstart.yaml"));
        }
        let positions = PositionMap::parse(&text).map_err(|e| {
            InputError::new(format!("YAML syntax error: {}", e.message)).with_origin(Origin::File {
                path: path.to_path_buf(),
                position: Some(e.position),
                line_text: line_of(&text, e.position.line),
            })
        })?;
        let file = SpecFile {
            path: path.to_path_buf(),
            text,
            positions,
        };
        match file.positions.non_finite() {
            Some(number) => Err(file.non_finite_error(number)),
            None => Ok(file),
        }
    }

    /// A NaN or an infinity in the file, refused where it is written.
    fn non_finite_error(&self, number: &super::location::NonFinite) -> InputError {
        // A sweep value is named by its axis (`sweep.target.train.per_class.0`).
        let axis = number
            .path
            .strip_prefix("sweep.")
            .and_then(|rest| rest.rsplit_once('.'))
            .filter(|(axis, index)| {
                index.parse::<usize>().is_ok()
                    && self.positions.key(&format!("sweep.{axis}")).is_some()
            });
        let message = match axis {
            Some((axis, _)) => format!(
                "sweep value `{}` does not fit `{axis}`: it is not a finite number",
                number.text
            ),
            None => format!(
                "`{}`: `{}` is not a finite number",
                number.path, number.text
            ),
        };
        InputError::new(message)
            .with_origin(self.origin_at(Some(number.position)))
            .with_help(NON_FINITE_HELP)
    }

    /// Where in this file the value (or, with `key`, the key) at `key_path` is.
    pub fn origin(&self, key_path: &str, key: bool) -> Origin {
        let position = if key {
            self.positions
                .key(key_path)
                .or_else(|| self.positions.value(key_path))
        } else {
            self.positions.value(key_path)
        };
        self.origin_at(position)
    }

    fn origin_at(&self, position: Option<Position>) -> Origin {
        Origin::File {
            path: self.path.clone(),
            position,
            line_text: position.and_then(|p| line_of(&self.text, p.line)),
        }
    }
}

const NON_FINITE_HELP: &str =
    "every number in a spec must be finite: no key takes NaN or an infinity";

fn line_of(text: &str, line: usize) -> Option<String> {
    text.lines().nth(line.checked_sub(1)?).map(str::to_string)
}

/// A spec with the layers it came from, so later checks can say where a value was set.
#[derive(Debug)]
pub struct LoadedSpec {
    /// The extracted spec, relative paths resolved.
    pub spec: Spec,
    /// The YAML file.
    pub file: SpecFile,
    /// The `--set` overrides, as given.
    pub overrides: Vec<String>,
    figment: Figment,
}

impl LoadedSpec {
    /// Where the value at `key_path` was set: the file, a variable or an override.
    pub fn origin(&self, key_path: &str, key: bool) -> Origin {
        // Sweep axes are key paths themselves: look the axis up as one key.
        let lookup = match key_path.strip_prefix("sweep.") {
            Some(_) => "sweep",
            None => key_path,
        };
        let mut path = lookup;
        let metadata = loop {
            if let Some(metadata) = self.figment.find_metadata(path) {
                break Some(metadata);
            }
            match path.rfind('.') {
                Some(i) => path = &path[..i],
                None => break None,
            }
        };
        origin_from(metadata, key_path, key, &self.file)
    }

    /// Turns `source.hub` into the `checkpoint` file it names in the local Hugging Face cache.
    fn resolve_hub(&mut self) -> Result<(), InputError> {
        let source = &self.spec.source;
        let Some(name) = source.hub.clone() else {
            return Ok(());
        };
        if source.checkpoint.is_some() || source.pretrain.is_some() {
            return Err(self
                .error(
                    "source.hub",
                    "`source` has `hub` and `checkpoint` or `pretrain`",
                )
                .with_help("give exactly one of `pretrain`, `checkpoint` or `hub`"));
        }
        let found = super::hub::resolve(&name, &super::hub::caches()).map_err(|looked| {
            let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            self.error(
                "source.hub",
                format!("`{name}` is not in the local Hugging Face cache"),
            )
            .with_help(format!(
                "xferlab downloads nothing; fetch it once (e.g. `hf download {name}`), or set HF_HUB_CACHE. Looked for: {}",
                looked.join(", ")
            ))
        })?;
        self.spec.source.checkpoint = Some(found);
        Ok(())
    }

    /// `model: {arch: bert}` with a model folder as its source (`source.checkpoint` a folder,
    /// or `source.hub`): the folder's weights file becomes the checkpoint, and it supplies what
    /// the model leaves out: `config` (config.json), `tokenizer` (tokenizer.json) and
    /// `pooling` (sentence-transformers' 1_Pooling/config.json, else `cls`).
    fn resolve_encoder(&mut self) -> Result<(), InputError> {
        if self.spec.model.arch != super::Arch::Bert {
            return Ok(());
        }
        let key = match self.spec.source.hub {
            Some(_) => "source.hub",
            None => "source.checkpoint",
        };
        let folder = match &self.spec.source.checkpoint {
            Some(path) if path.is_dir() => {
                let weights = super::hub::WEIGHTS.iter().map(|w| path.join(w));
                let Some(file) = weights.clone().find(|w| w.is_file()) else {
                    let looked: Vec<String> = weights.map(|w| shown(&w)).collect();
                    return Err(self
                        .error(
                            key,
                            format!("model folder {} has no weights file", shown(path)),
                        )
                        .with_help(format!("looked for {}", looked.join(", "))));
                };
                let folder = path.clone();
                self.spec.source.checkpoint = Some(file);
                Some(folder)
            }
            Some(path) => path.parent().map(Path::to_path_buf),
            None => None,
        };
        let needs = |this: &Self, what: &str| {
            this.error("model", format!("bert needs {what}"))
                .with_help("point `source.checkpoint` at a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), or name one in the local cache with `source.hub`")
        };
        if self.spec.model.config.is_none() {
            let folder =
                (folder.as_deref()).ok_or_else(|| needs(self, "`config` (a config.json)"))?;
            self.spec.model.config = Some(read_encoder_config(&folder.join("config.json"))?);
        }
        if self.spec.model.tokenizer.is_none() {
            let folder = (folder.as_deref())
                .ok_or_else(|| needs(self, "a `tokenizer` (a tokenizer.json)"))?;
            let tokenizer = folder.join("tokenizer.json");
            if !tokenizer.is_file() {
                return Err(self
                    .error(
                        key,
                        format!("model folder {} has no tokenizer.json", shown(folder)),
                    )
                    .with_help("give `model.tokenizer`, a Hugging Face tokenizer.json"));
            }
            self.spec.model.tokenizer = Some(tokenizer);
        }
        if self.spec.model.pooling.is_none() {
            self.spec.model.pooling = Some(
                folder
                    .map(|f| declared_pooling(&f.join("1_Pooling/config.json")))
                    .unwrap_or(super::Pooling::Cls),
            );
        }
        Ok(())
    }

    /// An error about the value at `key_path`, located.
    pub fn error(&self, key_path: &str, message: impl Into<String>) -> InputError {
        InputError::new(message).with_origin(self.origin(key_path, false))
    }
}

/// Loads `path` with the environment and `--set` overrides on top.
pub fn load(path: &Path, given: &[String]) -> Result<LoadedSpec, InputError> {
    let file = SpecFile::read(path)?;
    let overrides = Overrides::parse(given)?;
    // figment names a variable by its key: `XFERLAB_JOBS` is `jobs`.
    let command_line: Vec<String> = command_line_variables::ALL
        .iter()
        .map(|v| v.strip_prefix(ENV_PREFIX).unwrap_or(v).to_lowercase())
        .collect();
    let command_line: Vec<&str> = command_line.iter().map(String::as_str).collect();
    let environment = Overrides::from_environment(&command_line)?;
    let figment = Figment::new()
        .merge(Yaml::file_exact(path))
        .merge(MlflowEnv::read())
        .merge(environment)
        .merge(overrides);
    let mut spec: Spec = match figment.extract() {
        Ok(spec) => spec,
        Err(error) => return Err(map_figment_error(error, &file)),
    };
    let base = path.parent().unwrap_or(Path::new(""));
    resolve_paths(&mut spec, base);
    spec.datasets
        .entry(BUILTIN_DATASET.to_string())
        .or_insert_with(super::datasets::builtin_dataset);
    let mut loaded = LoadedSpec {
        spec,
        file,
        overrides: given.to_vec(),
        figment,
    };
    loaded.resolve_hub()?;
    loaded.resolve_encoder()?;
    Ok(loaded)
}

/// A BERT-family `config.json`; another model type, or a file that is not one, is bad input.
fn read_encoder_config(path: &Path) -> Result<crate::model::bert::BertConfig, InputError> {
    let at_file = |message: String| {
        InputError::new(message).with_origin(Origin::File {
            path: path.to_path_buf(),
            position: None,
            line_text: None,
        })
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| at_file(format!("cannot read {}: {e}", shown(path))))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| at_file(format!("{} is not JSON: {e}", shown(path))))?;
    if let Some(kind) = value.get("model_type").and_then(|t| t.as_str())
        && kind != "bert"
    {
        return Err(at_file(format!(
            "{} describes a `{kind}` model; xferlab's text encoder reads `model_type: bert`",
            shown(path)
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| at_file(format!("{} is not a BERT config.json: {e}", shown(path))))
}

/// The pooling a sentence-transformers `1_Pooling/config.json` declares; `cls` without one.
fn declared_pooling(path: &Path) -> super::Pooling {
    let declared = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    match declared {
        Some(config) if config["pooling_mode_mean_tokens"] == true => super::Pooling::Mean,
        _ => super::Pooling::Cls,
    }
}

/// Makes relative paths start at the spec file's folder, and absolute, so a trial's config
/// (and so its id) does not depend on the folder `xferlab` runs in.
fn resolve_paths(spec: &mut Spec, base: &Path) {
    let resolve = |p: &mut PathBuf| {
        let joined = base.join(&*p);
        *p = std::path::absolute(&joined).unwrap_or(joined);
    };
    for dataset in spec.datasets.values_mut() {
        dataset.dir.as_mut().map(resolve);
        dataset.file.as_mut().map(resolve);
        dataset.test_file.as_mut().map(resolve);
    }
    spec.source.checkpoint.as_mut().map(resolve);
    spec.model.tokenizer.as_mut().map(resolve);
}

fn map_figment_error(error: figment::Error, file: &SpecFile) -> InputError {
    let origin =
        |key_path: &str, key: bool| origin_from(error.metadata.as_ref(), key_path, key, file);
    let mut segments = error.path.clone();
    // figment puts the offending field itself at the end of the path for field errors.
    let field = match &error.kind {
        Kind::UnknownField(field, _) => Some(field.to_string()),
        Kind::MissingField(field) => Some(field.to_string()),
        _ => None,
    };
    if field.is_some() && segments.last() == field.as_ref() {
        segments.pop();
    }
    let parent = segments.join(".");
    // An error about the spec as a whole points at the file, not at its first line.
    let whole_file = Origin::File {
        path: file.path.clone(),
        position: None,
        line_text: None,
    };
    let within = if parent.is_empty() {
        "the spec".to_string()
    } else {
        format!("`{parent}`")
    };
    let child = |key: &str| {
        if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        }
    };
    match &error.kind {
        Kind::UnknownField(field, expected) => {
            InputError::new(format!("unknown key `{field}` in {within}"))
                .with_origin(origin(&child(field), true))
                .with_help(super::suggest::help(field, expected, "valid keys"))
        }
        Kind::UnknownVariant(value, expected) => {
            InputError::new(format!("unknown value `{value}` for `{parent}`"))
                .with_origin(origin(&parent, false))
                .with_help(super::suggest::help(value, expected, "valid values"))
        }
        Kind::MissingField(field) if parent.is_empty() => {
            InputError::new(format!("missing key `{field}` in the spec"))
                .with_origin(whole_file)
                .with_help(format!("add `{field}:` at the top level"))
        }
        Kind::MissingField(field) => InputError::new(format!("missing key `{field}` in {within}"))
            .with_origin(origin(&parent, true)),
        kind if parent.is_empty() => {
            InputError::new(format!("{within}: {}", plain(&kind.to_string())))
                .with_origin(whole_file)
        }
        kind => InputError::new(format!("{within}: {}", plain(&kind.to_string())))
            .with_origin(origin(&parent, false)),
    }
}

/// Serde's type names in words a spec author uses.
pub fn plain(message: &str) -> String {
    [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected f64", "expected a number"),
        ("expected a floating point number", "expected a number"),
        // Longest first: "signed int " is inside "unsigned int ".
        ("unsigned int ", ""),
        ("signed int ", ""),
        ("found string", "found text"),
        ("found sequence", "found a list"),
        ("found map", "found a mapping"),
        // YAML 1.1's yes/no/on/off are text in YAML 1.2, which serde_yaml reads.
        ("expected a boolean", "expected true or false"),
        ("found unit", "found null"),
        ("unit value", "null"),
        // A YAML integer beyond 64 bits: serde's type and the JSON layers are no concern of a
        // spec author's.
        (" as u128", ""),
        (" as i128", ""),
        (
            "JSON number out of range",
            "the number does not fit in 64 bits: whole numbers go from -9223372036854775808 to 18446744073709551615",
        ),
        (
            "expected a map",
            "expected a mapping of keys (name:, model:, ...)",
        ),
        (
            "repetition limit exceeded",
            "its aliases (`*name`) expand to too many values; refused, as an alias bomb would be",
        ),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// Where a value came from, given the metadata of the provider that set it.
fn origin_from(metadata: Option<&Metadata>, key_path: &str, key: bool, file: &SpecFile) -> Origin {
    match metadata {
        Some(m) if m.name == OVERRIDE_NAME => Origin::Override(key_path.to_string()),
        Some(m) if m.name == MLFLOW_ENV_NAME => Origin::Env(MLFLOW_URI_VARIABLE.to_string()),
        Some(m) if m.name == ENV_NAME => Origin::Env(setting_variable(key_path)),
        _ => file.origin(key_path, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "name: layers
model: {arch: mlp, hidden: [8]}
source: {checkpoint: weights/source.safetensors}
target:
  train: {dataset: glyphs, classes: [0, 1]}
  eval: {dataset: glyphs, classes: [0, 1], split: test}
train: {steps: 10, batch_size: 4, lr: 0.1}
strategies: [scratch]
";

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error
    fn layers_are_file_then_environment_then_overrides() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("spec.yaml", SPEC)?;
            let path = jail.directory().join("spec.yaml");
            let file_only = load(&path, &[]).unwrap().spec;
            assert_eq!((file_only.train.lr, file_only.train.steps), (0.1, Some(10)));

            jail.set_env("XFERLAB_TRAIN__LR", "0.5");
            jail.set_env("XFERLAB_TRAIN__STEPS", "20");
            let env = load(&path, &[]).unwrap().spec;
            assert_eq!((env.train.lr, env.train.steps), (0.5, Some(20)));

            let set = load(
                &path,
                &["train.lr=0.25".into(), "sweep.train.steps=[1, 2]".into()],
            )
            .unwrap()
            .spec;
            assert_eq!((set.train.lr, set.train.steps), (0.25, Some(20)));
            assert_eq!(
                set.sweep["train.steps"],
                vec![serde_json::json!(1), serde_json::json!(2)]
            );
            // Relative paths start at the spec file's folder; the built-in dataset is always there.
            assert_eq!(
                set.source.checkpoint.unwrap(),
                jail.directory().join("weights/source.safetensors")
            );
            assert!(set.datasets.contains_key(BUILTIN_DATASET));
            Ok(())
        });
    }
}
