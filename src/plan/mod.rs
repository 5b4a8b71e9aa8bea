//! The sweep expanded into trials: every combination of the sweep axes, every strategy
//! resolved to its (transfer_depth, freeze_depth), equal trials run once, stable ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod check;
mod check_model;

use crate::data::Catalog;
use crate::error::InputError;
use crate::model::block_count;
use crate::spec::{
    Adapter, DatasetSpec, LoadedSpec, ModelSpec, SourceSpec, Spec, Strategy, StrategyEntry,
    TargetSpec, TrainSpec, suggest,
};
use crate::table::{self, Layout};

mod label;

pub use label::{StrategyLabel, StrategyLabels};

/// Everything that determines a trial's result, in canonical form: its id is a hash of this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialConfig {
    /// Architecture.
    pub model: ModelSpec,
    /// The source model; absent when nothing is transferred (transfer_depth 0).
    pub source: Option<SourceSpec>,
    /// The datasets the trial reads.
    pub datasets: BTreeMap<String, DatasetSpec>,
    /// Target data.
    pub target: TargetSpec,
    /// Target training.
    pub train: TrainSpec,
    /// Seed of initialisation, target sampling and batch order.
    pub seed: u64,
    /// Blocks 1..t start from the source model.
    pub transfer_depth: usize,
    /// Blocks 1..f are frozen.
    pub freeze_depth: usize,
    /// Blocks above f train only what the adapter trains (absent: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<Adapter>,
    /// `auto_depth`: the trial chooses its freeze depth (`freeze_depth` is 0 until then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_depth: bool,
}

impl TrialConfig {
    /// The stable id: the first 12 hex digits of the SHA-256 of the canonical JSON.
    pub fn id(&self) -> String {
        // serde_json's map keeps keys sorted, so equal configs give equal text.
        let canonical = serde_json::to_value(self)
            .expect("configs serialise")
            .to_string();
        hex(&Sha256::digest(canonical.as_bytes()))[..12].to_string()
    }
}

/// A seed for one purpose (`init`, `batches`, `target.train`, ...), derived from a trial's or a
/// pretraining's seed, so that the random streams of one seed do not correlate.
pub fn derive_seed(seed: u64, purpose: &str) -> u64 {
    let digest = Sha256::digest(format!("{seed}/{purpose}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One trial of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Stable id.
    pub id: String,
    /// Every strategy (or `raw`) that resolved to this trial, in the spec's order.
    pub strategies: StrategyLabels,
    /// The swept values this trial has, by axis (`freeze_depth` is in `config`).
    pub axes: BTreeMap<String, Value>,
    /// The canonical config.
    pub config: TrialConfig,
}

/// The expanded sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Experiment name.
    pub name: String,
    /// Number of blocks L of the model (the largest across sweep points).
    pub blocks: usize,
    /// Sweep axes other than `freeze_depth` (which every trial shows as f).
    pub axes: Vec<String>,
    /// Strategy labels in the order the spec names them.
    pub strategies: StrategyLabels,
    /// (combination, strategy) pairs before equal trials were merged.
    pub expanded: usize,
    /// Distinct trials.
    pub trials: Vec<Trial>,
}

/// Value at a dotted key path of a JSON tree (null where absent).
pub fn lookup<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .unwrap_or(&Value::Null)
}

/// The value at a dotted key path of a YAML tree, for writing: keys missing on the way (an
/// optional key the spec leaves out, e.g. `train.head_lr`, or `train.lora.rank` with no
/// `train.lora`) are added, mappings on the way and null at the end.
fn set<'a>(value: &'a mut serde_yaml::Value, path: &str) -> Option<&'a mut serde_yaml::Value> {
    path.split('.').try_fold(value, |v, key| {
        if v.is_null() {
            *v = serde_yaml::Value::Mapping(Default::default());
        }
        let mapping = v.as_mapping_mut()?;
        Some(mapping.entry(key.into()).or_insert(serde_yaml::Value::Null))
    })
}

/// The axis names in the order they vary (last fastest): `seed` last, the rest sorted.
fn axis_order(spec: &Spec) -> Vec<String> {
    let mut axes: Vec<String> = spec
        .sweep
        .keys()
        .filter(|k| *k != "seed")
        .cloned()
        .collect();
    if spec.sweep.contains_key("seed") {
        axes.push("seed".into());
    }
    axes
}

/// Expands, checks and deduplicates the sweep of a loaded spec.
pub fn plan(loaded: &LoadedSpec, catalog: &Catalog) -> Result<Plan, InputError> {
    let spec = &loaded.spec;
    // A YAML tree, not JSON: JSON would turn a NaN or infinite value into null.
    let base = serde_yaml::to_value(spec).expect("specs serialise");
    let order = axis_order(spec);
    let mut values: BTreeMap<&String, Vec<serde_yaml::Value>> = BTreeMap::new();
    for axis in &order {
        let at = format!("sweep.{axis}");
        if spec.sweep[axis].is_empty() {
            return Err(loaded.error(&at, format!("sweep axis `{axis}` has no values")));
        }
        if axis == "sweep" || axis.starts_with("sweep.") || axis == "name" {
            return Err(loaded.error(&at, format!("`{axis}` cannot be swept")));
        }
        // A key the spec types do not have is refused by them (unknown field); other errors
        // (null for a required key of a section the spec leaves out) are the values' to
        // settle, each below.
        let mut probe = base.clone();
        let known = set(&mut probe, axis).is_some()
            && serde_yaml::from_value::<Spec>(probe)
                .map_or_else(|e| !e.to_string().contains("unknown field"), |_| true);
        if !known {
            let error = InputError::new(format!("sweep axis `{axis}` is not a key of the spec"))
                .with_origin(loaded.origin(&at, true));
            let valid = key_paths(&serde_json::to_value(spec).expect("specs serialise"));
            let names: Vec<&str> = valid.iter().map(String::as_str).collect();
            return Err(match suggest::nearest(axis, &names) {
                Some(name) => error.with_help(format!("did you mean `{name}`?")),
                None => error.with_help("any key path of the spec can be swept, e.g. seed, freeze_depth, train.lr, train.steps, target.train.per_class"),
            });
        }
        // Each value must fit its key on its own: the error can then point at that value.
        let mut typed = Vec::new();
        for (i, value) in spec.sweep[axis].iter().enumerate() {
            let value = serde_yaml::to_value(value).expect("JSON values are YAML values");
            let mut point = base.clone();
            *set(&mut point, axis).expect("axes were checked") = value.clone();
            if let Err(e) = serde_yaml::from_value::<Spec>(point) {
                return Err(loaded.error(
                    &format!("{at}.{i}"),
                    format!(
                        "sweep value {} does not fit `{axis}`: {}",
                        spec.sweep[axis][i],
                        crate::spec::load::plain(&e.to_string())
                    ),
                ));
            }
            typed.push(value);
        }
        values.insert(axis, typed);
    }

    let mut combinations: Vec<Vec<(&String, usize)>> = vec![Vec::new()];
    for axis in &order {
        combinations = combinations
            .into_iter()
            .flat_map(|combo| {
                (0..values[axis].len()).map(move |i| {
                    let mut next = combo.clone();
                    next.push((axis, i));
                    next
                })
            })
            .collect();
    }

    let mut trials: Vec<Trial> = Vec::new();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut expanded = 0;
    let mut blocks = 0;
    for combo in &combinations {
        let mut point = base.clone();
        for &(axis, i) in combo {
            *set(&mut point, axis).expect("axes were checked") = values[axis][i].clone();
        }
        // An error about a swept key points at the sweep value that set it.
        let at = |path: &str, message: String| -> InputError {
            let swept = combo
                .iter()
                .find(|(a, _)| path == a.as_str() || path.starts_with(&format!("{a}.")));
            match swept {
                Some((axis, i)) => loaded.error(
                    &format!("sweep.{axis}.{i}"),
                    format!(
                        "{message} (at sweep value {axis} = {})",
                        spec.sweep[*axis][*i]
                    ),
                ),
                None => loaded.error(path, message),
            }
        };
        let point: Spec = serde_yaml::from_value(point).map_err(|e| {
            let axes: Vec<String> = combo
                .iter()
                .map(|(a, i)| format!("{a} = {}", spec.sweep[*a][*i]))
                .collect();
            loaded.error(
                "sweep",
                format!(
                    "sweep values do not fit together ({}): {e}",
                    axes.join(", ")
                ),
            )
        })?;
        check::check(&point, catalog, &at)?;
        let l = block_count(&point.model);
        blocks = blocks.max(l);
        for entry in &point.strategies {
            expanded += 1;
            let ((t, f), adapter) = match entry {
                StrategyEntry::Named(s) => {
                    (s.depths(l, point.freeze_depth.unwrap_or(0)), s.adapter())
                }
                StrategyEntry::Raw(raw) => ((raw.transfer_depth, raw.freeze_depth), raw.adapter),
            };
            let label = StrategyLabel::of(entry);
            let mut config = trial_config(&point, t, f);
            config.adapter = adapter;
            config.auto_depth = *entry == StrategyEntry::Named(Strategy::AutoDepth);
            config.auto_depth = *entry == StrategyEntry::Named(Strategy::AutoDepth);
            if *entry != StrategyEntry::Named(Strategy::GradualUnfreeze) {
                config.train.unfreeze_every = None;
            }
            config.train.auto_depth = match config.auto_depth {
                true => Some(config.train.auto_depth.unwrap_or_default()),
                false => None,
            };
            // LoRA's settings, defaults written out, belong to LoRA's trials only.
            config.train.lora = match adapter {
                Some(Adapter::Lora) => Some(config.train.lora.unwrap_or_default()),
                _ => None,
            };
            let id = config.id();
            if let Some(&existing) = by_id.get(&id) {
                trials[existing].strategies.insert(label);
                continue;
            }
            let config_json = serde_json::to_value(&config).expect("configs serialise");
            let axes = order
                .iter()
                .filter(|a| *a != "freeze_depth")
                .map(|a| (a.clone(), lookup(&config_json, a).clone()))
                .collect();
            by_id.insert(id.clone(), trials.len());
            trials.push(Trial {
                index: trials.len(),
                id,
                strategies: [label].into_iter().collect(),
                axes,
                config,
            });
        }
    }
    let strategies: StrategyLabels = spec.strategies.iter().map(StrategyLabel::of).collect();
    // A merged trial lists its names in the order the spec gives them.
    for trial in &mut trials {
        trial.strategies.sort_as(&strategies);
    }
    Ok(Plan {
        name: spec.name.clone(),
        blocks,
        axes: order.into_iter().filter(|a| a != "freeze_depth").collect(),
        strategies,
        expanded,
        trials,
    })
}

fn trial_config(point: &Spec, t: usize, f: usize) -> TrialConfig {
    let mut used: Vec<&str> = vec![&point.target.train.dataset, &point.target.eval.dataset];
    let source = (t > 0).then(|| point.source.clone());
    if let (true, Some(pretrain)) = (t > 0, &point.source.pretrain) {
        used.push(&pretrain.data.dataset);
    }
    TrialConfig {
        model: point.model.clone(),
        source,
        datasets: point
            .datasets
            .iter()
            .filter(|(k, _)| used.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        target: point.target.clone(),
        train: point.train.clone(),
        seed: point.seed,
        transfer_depth: t,
        freeze_depth: f,
        adapter: None,
        auto_depth: false,
    }
}

/// Every key path of a JSON tree that leads to a value, e.g. `train.lr`.
fn key_paths(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(map) = value {
        for (key, child) in map {
            if key == "sweep" {
                continue;
            }
            out.push(key.clone());
            out.extend(key_paths(child).into_iter().map(|p| format!("{key}.{p}")));
        }
    }
    out
}

/// The trial table `xferlab plan` prints.
pub fn render(plan: &Plan) -> String {
    let mut header = vec![
        "index".to_string(),
        "id".into(),
        "strategy".into(),
        "t".into(),
        "f".into(),
    ];
    header.extend(
        plan.axes
            .iter()
            .map(|a| a.rsplit('.').next().unwrap_or(a).to_string()),
    );
    let rows: Vec<Vec<String>> = plan
        .trials
        .iter()
        .map(|t| {
            let mut row = vec![
                t.index.to_string(),
                t.id.clone(),
                t.strategies.join("="),
                t.config.transfer_depth.to_string(),
                t.config.freeze_depth.to_string(),
            ];
            row.extend(plan.axes.iter().map(|a| match &t.axes[a] {
                Value::Null => "-".to_string(),
                v => v.to_string(),
            }));
            row
        })
        .collect();
    let mut out = format!(
        "{}: {} trials ({} strategy x sweep points, {} merged as equal), model with {} blocks\n",
        plan.name,
        plan.trials.len(),
        plan.expanded,
        plan.expanded - plan.trials.len(),
        plan.blocks
    );
    out += &table::render(&header, &rows, |_| false, Layout::Plain);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Strategy;

    fn plan_of(yaml: &str, overrides: &[&str]) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, yaml).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let loaded = crate::spec::load(&path, &overrides).unwrap();
        plan(&loaded, &Catalog::new(&loaded.spec.datasets)).unwrap()
    }

    const SPEC: &str = "name: t
model: {arch: mlp, hidden: [8, 8, 8]}
source: {pretrain: {data: {dataset: glyphs, classes: [0, 1]}, train: {steps: 1, batch_size: 2, lr: 0.1}}}
target:
  train: {dataset: glyphs, classes: [2, 3], per_class: 2}
  eval: {dataset: glyphs, classes: [2, 3], split: test}
train: {steps: 1, batch_size: 2, lr: 0.1}
strategies: [scratch, transfer, partial_freeze, finetune, prefix_frozen, prefix_finetune, {transfer_depth: 2, freeze_depth: 1}]
sweep: {freeze_depth: [0, 1, 2, 3]}
";

    #[test]
    fn presets_resolve_to_depths() {
        assert_eq!(Strategy::Scratch.depths(5, 2), (0, 0));
        assert_eq!(Strategy::Transfer.depths(5, 2), (5, 5));
        assert_eq!(Strategy::PartialFreeze.depths(5, 2), (5, 2));
        assert_eq!(Strategy::Finetune.depths(5, 2), (5, 0));
        assert_eq!(Strategy::PrefixFrozen.depths(5, 2), (2, 2));
        assert_eq!(Strategy::PrefixFinetune.depths(5, 2), (2, 0));
        assert_eq!(Strategy::Lora.depths(5, 2), (5, 0));
        assert_eq!(Strategy::Lora.adapter(), Some(Adapter::Lora));
    }

    /// LoRA's settings are in LoRA's trials' configs (defaults written out, sweepable) and in
    /// no other trial's, so adding `train.lora` to a spec changes no other trial's id.
    #[test]
    fn lora_settings_belong_to_lora_trials() {
        let spec = SPEC.replace(
            "strategies: [scratch, transfer,",
            "strategies: [lora, {transfer_depth: 3, freeze_depth: 2, adapter: lora}, scratch, transfer,",
        );
        let plan = plan_of(&spec, &[]);
        let lora: Vec<&Trial> = (plan.trials.iter())
            .filter(|t| t.config.adapter == Some(Adapter::Lora))
            .collect();
        assert_eq!(lora.len(), 2);
        assert!(
            lora.iter()
                .all(|t| t.config.train.lora == Some(crate::spec::LoraSpec::default()))
        );
        let others = |plan: &Plan| -> Vec<String> {
            (plan.trials.iter())
                .filter(|t| t.config.adapter.is_none() && !t.config.auto_depth)
                .map(|t| t.id.clone())
                .collect()
        };
        assert!(
            plan.trials
                .iter()
                .all(|t| t.config.adapter.is_some() || t.config.train.lora.is_none())
        );
        let swept = plan_of(&spec, &["sweep.train.lora.rank=[2, 4]"]);
        let ranks: Vec<usize> = (swept.trials.iter())
            .filter_map(|t| t.config.train.lora.map(|l| l.rank))
            .collect();
        assert_eq!(ranks, [2, 2, 4, 4], "each rank for both LoRA entries");
        // Likewise auto_depth's settings, in its trials only.
        let five = spec.replace("per_class: 2", "per_class: 5");
        let plan5 = plan_of(&five, &[]);
        let auto = plan_of(
            &five.replace("strategies: [lora,", "strategies: [auto_depth, lora,"),
            &[],
        );
        for trial in &auto.trials {
            let settings = trial.config.train.auto_depth;
            assert_eq!(settings.is_some(), trial.config.auto_depth, "{}", trial.id);
        }
        assert_eq!(others(&auto), others(&plan5));
        assert_eq!(others(&swept), others(&plan));
    }

    #[test]
    fn equal_trials_run_once_under_every_name() {
        let plan = plan_of(SPEC, &[]);
        assert_eq!(plan.expanded, 28);
        let pairs: Vec<(usize, usize)> = plan
            .trials
            .iter()
            .map(|t| (t.config.transfer_depth, t.config.freeze_depth))
            .collect();
        let distinct: std::collections::BTreeSet<_> = pairs.iter().collect();
        assert_eq!(pairs.len(), distinct.len(), "no (t, f) twice: {pairs:?}");
        // (0,0) (3,3) (3,0) (3,1) (3,2) (1,1) (2,2) (1,0) (2,0) (2,1)
        assert_eq!(plan.trials.len(), 10);
        let labels = |t: usize, f: usize| {
            plan.trials
                .iter()
                .find(|x| (x.config.transfer_depth, x.config.freeze_depth) == (t, f))
                .unwrap()
                .strategies
                .join(",")
        };
        assert_eq!(labels(0, 0), "scratch,prefix_frozen,prefix_finetune");
        assert_eq!(labels(3, 3), "transfer,partial_freeze,prefix_frozen");
        assert_eq!(labels(3, 0), "partial_freeze,finetune,prefix_finetune");
        assert_eq!(labels(2, 1), "raw");
        // Scratch transfers nothing, so it does not depend on the source.
        assert!(plan.trials[0].config.source.is_none());
    }

    #[test]
    fn ids_are_stable_and_follow_the_config() {
        let a = plan_of(SPEC, &[]);
        let b = plan_of(SPEC, &[]);
        assert_eq!(
            a.trials.iter().map(|t| &t.id).collect::<Vec<_>>(),
            b.trials.iter().map(|t| &t.id).collect::<Vec<_>>()
        );
        let c = plan_of(SPEC, &["train.lr=0.2"]);
        assert!(a.trials.iter().zip(&c.trials).all(|(x, y)| x.id != y.id));
        // Scratch does not depend on the source, so changing the source keeps its id.
        let d = plan_of(SPEC, &["source.pretrain.seed=4"]);
        assert_eq!(a.trials[0].id, d.trials[0].id);
        assert_ne!(a.trials[1].id, d.trials[1].id);
    }
}
