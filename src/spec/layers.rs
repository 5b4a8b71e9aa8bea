//! The layers above the spec file, each a figment provider: MLflow's `MLFLOW_TRACKING_URI`,
//! the `XFERLAB_KEY__PATH=value` environment variables and the `--set key.path=value`
//! overrides. Every value is read as YAML, as the file is, so it means the same in each.

use figment::providers::{Env, Serialized};
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};

use super::load::{ENV_PREFIX, MLFLOW_URI_VARIABLE};
use super::location::PositionMap;
use crate::error::{InputError, Origin};

pub(super) const MLFLOW_ENV_NAME: &str = "MLflow's environment variables";

/// `MLFLOW_TRACKING_URI`, read as text whatever it looks like.
pub(super) struct MlflowEnv(serde_json::Value);

impl MlflowEnv {
    pub(super) fn read() -> Self {
        MlflowEnv(match std::env::var(MLFLOW_URI_VARIABLE) {
            Ok(uri) if !uri.is_empty() => {
                serde_json::json!({ "tracking": { "mlflow": { "uri": uri } } })
            }
            _ => serde_json::json!({}),
        })
    }
}

impl Provider for MlflowEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(MLFLOW_ENV_NAME)
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::defaults(&self.0).data()
    }
}

pub(super) const OVERRIDE_NAME: &str = "--set";
pub(super) const ENV_NAME: &str = "`XFERLAB_` environment variables";

/// Values set by key path, each read as YAML (`0.1`, `adam`, `[1, 2]`): the `--set key.path=value`
/// overrides, or the `XFERLAB_KEY__PATH=value` environment variables.
pub(super) struct Overrides {
    name: &'static str,
    values: serde_json::Value,
}

impl Overrides {
    pub(super) fn parse(items: &[String]) -> Result<Self, InputError> {
        let mut root = serde_json::Map::new();
        for item in items {
            let origin = Origin::Override(item.clone());
            let Some((key, text)) = item.split_once('=') else {
                return Err(InputError::new("an override must look like KEY=VALUE")
                    .with_origin(origin)
                    .with_help("e.g. --set train.lr=0.01 or --set sweep.seed=[0,1,2]"));
            };
            set(&mut root, key.trim(), text, origin, "override")?;
        }
        Ok(Overrides {
            name: OVERRIDE_NAME,
            values: serde_json::Value::Object(root),
        })
    }

    /// The `XFERLAB_` variables but those in `ignore` (keys, as figment names them: `store`),
    /// `__` separating keys. Read as YAML like `--set` (figment's own reading would take
    /// `1.e999` for an infinity, and so `null`, `010` for 10, and `1e-3` for text).
    pub(super) fn from_environment(ignore: &[&str]) -> Result<Self, InputError> {
        let variables = Env::prefixed(ENV_PREFIX).split("__").ignore(ignore);
        Self::from_variables(variables.iter().map(|(key, text)| (key.to_string(), text)))
    }

    /// Variables as (key path, value): (`train.lr`, `0.01`) for `XFERLAB_TRAIN__LR=0.01`.
    fn from_variables(
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, InputError> {
        let mut entries: Vec<(String, String)> = variables.into_iter().collect();
        // The environment has no order: sort, so a conflict is reported the same way each time.
        entries.sort();
        let mut root = serde_json::Map::new();
        for (key, text) in entries {
            let origin = Origin::Env(variable_name(&key));
            set(&mut root, &key, &text, origin, "variable")?;
        }
        Ok(Overrides {
            name: ENV_NAME,
            values: serde_json::Value::Object(root),
        })
    }
}

/// The `XFERLAB_` variable that sets `key_path`.
fn variable_name(key_path: &str) -> String {
    format!("{ENV_PREFIX}{}", key_path.to_uppercase().replace('.', "__"))
}

/// The `XFERLAB_` variable that set `key_path`: its own, or the one of a key above it
/// (`XFERLAB_SWEEP__SEED=[0, x]` sets `sweep.seed.1`).
pub(super) fn setting_variable(key_path: &str) -> String {
    let mut path = key_path;
    loop {
        let name = variable_name(path);
        if std::env::var_os(&name).is_some() {
            return name;
        }
        match path.rfind('.') {
            Some(i) => path = &path[..i],
            None => return variable_name(key_path),
        }
    }
}

/// Sets `key` (a dotted key path) to the YAML `text` in `root`.
fn set(
    root: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    text: &str,
    origin: Origin,
    kind: &str,
) -> Result<(), InputError> {
    let value = read_value(text).map_err(|reason| {
        InputError::new(format!("cannot read the value of `{key}`: {reason}"))
            .with_origin(origin.clone())
    })?;
    // A sweep axis is itself a key path: `sweep.train.lr` sets the axis `train.lr`.
    let segments: Vec<&str> = match key.strip_prefix("sweep.") {
        Some(axis) => vec!["sweep", axis],
        None => key.split('.').collect(),
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(InputError::new(format!("`{key}` is not a key path"))
            .with_origin(origin)
            .with_help("key paths are names joined by dots, e.g. target.train.per_class"));
    }
    insert(root, &segments, value).map_err(|depth| {
        let prefix = segments[..=depth].join(".");
        InputError::new(format!(
            "`{key}` sets a key inside `{prefix}`, which another {kind} sets to a value"
        ))
        .with_origin(origin)
    })
}

/// Why a value could not be read.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("{0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{0} is not a finite number")]
    NonFinite(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// A value as YAML, refused when it holds a NaN or an infinity: JSON, and so the layers,
/// cannot hold one; it would turn into null.
fn read_value(text: &str) -> Result<serde_json::Value, ValueError> {
    let value: serde_yaml::Value = serde_yaml::from_str(text)?;
    if let Some(number) = non_finite(&value) {
        // Name it as written (`.nan`, `-.inf`), as the file's check does.
        let written = PositionMap::parse(text)
            .ok()
            .and_then(|map| map.non_finite().map(|n| format!("`{}`", n.text)))
            .unwrap_or_else(|| number.to_string());
        return Err(ValueError::NonFinite(written));
    }
    Ok(serde_json::to_value(value)?)
}

/// The first NaN or infinity in a YAML value.
fn non_finite(value: &serde_yaml::Value) -> Option<f64> {
    match value {
        serde_yaml::Value::Number(n) => n.as_f64().filter(|f| !f.is_finite()),
        serde_yaml::Value::Sequence(items) => items.iter().find_map(non_finite),
        serde_yaml::Value::Mapping(map) => map.values().find_map(non_finite),
        serde_yaml::Value::Tagged(tagged) => non_finite(&tagged.value),
        _ => None,
    }
}

/// Puts `value` at `segments` in `map`; fails with the index of the segment that already
/// holds a value, where a mapping would have to be.
fn insert(
    map: &mut serde_json::Map<String, serde_json::Value>,
    segments: &[&str],
    value: serde_json::Value,
) -> Result<(), usize> {
    let (first, rest) = segments.split_first().expect("segments are never empty");
    if rest.is_empty() {
        map.insert(first.to_string(), value);
        return Ok(());
    }
    let child = map
        .entry(first.to_string())
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    match child {
        serde_json::Value::Object(child) => insert(child, rest, value).map_err(|depth| depth + 1),
        _ => Err(0),
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::defaults(&self.values).data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_yaml_as_set_values_are() {
        // Not through the process environment: other tests load specs at the same time.
        let read = |pairs: &[(&str, &str)]| {
            Overrides::from_variables(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        // figment's own reading took `1e-3` and `0x10` for text, and `sweep.x.y` for nested keys.
        let layer = read(&[
            ("train.lr", "1e-3"),
            ("sweep.target.train.per_class", "[5, 0x10]"),
        ])
        .unwrap();
        assert_eq!(
            layer.values,
            serde_json::json!({
                "train": {"lr": 0.001},
                "sweep": {"target.train.per_class": [5, 16]}
            })
        );
        // figment's own reading took `010` for 10; YAML, as in the file, for text.
        assert_eq!(
            read(&[("seed", "010")]).unwrap().values,
            serde_json::json!({"seed": "010"})
        );
        // figment's own reading took `1.e999` for an infinity, which JSON turns into null.
        assert_eq!(
            read(&[("sweep.seed", "[1, 1.e999]")]).unwrap().values,
            serde_json::json!({"sweep": {"seed": [1, "1.e999"]}})
        );
        let error = read(&[("sweep.seed", "[1, -.inf]")]).err().unwrap();
        assert_eq!(
            error.origin,
            Some(Origin::Env("XFERLAB_SWEEP__SEED".into()))
        );
        assert_eq!(
            error.message,
            "cannot read the value of `sweep.seed`: `-.inf` is not a finite number"
        );
        let error = read(&[("train", "1"), ("train.lr", "2")]).err().unwrap();
        assert!(
            error.message.contains("which another variable sets"),
            "{}",
            error.message
        );
    }

    #[test]
    fn override_syntax_errors_name_the_override() {
        let error = Overrides::parse(&["train.lr".into()]).err().unwrap();
        assert_eq!(error.origin, Some(Origin::Override("train.lr".into())));
        let error = Overrides::parse(&["train..lr=1".into()]).err().unwrap();
        assert!(
            error.message.contains("is not a key path"),
            "{}",
            error.message
        );
        let error = Overrides::parse(&["train=1".into(), "train.lr=2".into()])
            .err()
            .unwrap();
        assert!(
            error
                .message
                .contains("which another override sets to a value"),
            "{}",
            error.message
        );
    }
}
