//! How xferlab's records are written in MLflow's terms: a trial's run name, params
//! (its resolved config flattened to dotted keys), metrics (the training curve, the
//! evaluation, timings), tags, and the statuses of runs. Pure functions of the records,
//! so uploading a record again sends identical values.

use std::collections::BTreeMap;

use serde_json::Value;

use super::SweepStatus;
use super::mlflow::Metric;
use crate::store::{Status, TrialRecord};

/// A tag or param: (key, value).
pub(super) fn tag(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_string(), value.into())
}

/// A search filter on one tag (backquoted: the key has a dot).
pub(super) fn tag_filter(key: &str, value: &str) -> String {
    format!("tags.`{key}` = '{}'", value.replace('\'', "\\'"))
}

/// The MLflow status of a sweep's parent run.
pub(super) fn sweep_status(status: SweepStatus) -> &'static str {
    match status {
        SweepStatus::Running => "RUNNING",
        SweepStatus::Finished => "FINISHED",
        SweepStatus::Failed => "FAILED",
        SweepStatus::Killed => "KILLED",
    }
}

/// The MLflow status of an ended trial's run.
pub(super) fn trial_status(status: Status) -> &'static str {
    match status {
        Status::Finished => "FINISHED",
        Status::Failed => "FAILED",
        Status::Interrupted => "KILLED",
    }
}

/// When a trial's run ended (ms): its start plus the time it spent.
pub(super) fn trial_end_ms(record: &TrialRecord) -> u64 {
    let t = &record.timings;
    let seconds = t.setup_seconds + t.train_seconds + t.eval_seconds;
    t.started_at * 1000 + (seconds * 1000.0) as u64
}

/// `strategy t1 f0 axis=value`: a trial's run name.
pub(super) fn run_name(record: &TrialRecord) -> String {
    let mut name = format!(
        "{} t{} f{}",
        record.strategies.join("="),
        record.transfer_depth,
        record.freeze_depth
    );
    for (axis, value) in &record.axes {
        name += &format!(" {axis}={value}");
    }
    name
}

/// The trial's resolved config flattened to dotted keys, plus the axes people filter by.
pub(super) fn params(record: &TrialRecord) -> Vec<(String, String)> {
    let mut flat = BTreeMap::new();
    flatten(
        "",
        &serde_json::to_value(&record.config).expect("configs serialise"),
        &mut flat,
    );
    let config = &record.config;
    flat.insert("strategy".into(), record.strategies.join("="));
    if let Some(per_class) = config.target.train.per_class {
        flat.insert("per_class".into(), per_class.to_string());
    }
    flat.insert("lr".into(), config.train.lr.to_string());
    flat.into_iter().collect()
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The training curve as `train_loss` by step, the evaluation at the last step, and timings.
/// Timestamps come from the record, so uploading it again sends identical values.
pub(super) fn metrics(record: &TrialRecord) -> Vec<Metric> {
    let t = &record.timings;
    let started = t.started_at * 1000;
    let train_start = started + (t.setup_seconds * 1000.0) as u64;
    let per_step = t.train_seconds * 1000.0 / record.steps.max(1) as f64;
    let mut metrics: Vec<Metric> = record
        .curve
        .iter()
        .map(|point| Metric {
            key: "train_loss".into(),
            value: point.loss,
            timestamp: train_start + (per_step * point.step as f64) as u64,
            step: point.step as u64,
        })
        .collect();
    let end = train_start + (t.train_seconds * 1000.0) as u64 + (t.eval_seconds * 1000.0) as u64;
    let at_end = |key: &str, value: f64| Metric {
        key: key.into(),
        value,
        timestamp: end,
        step: record.steps as u64,
    };
    if let Some(eval) = &record.eval {
        metrics.push(at_end("eval_accuracy", eval.accuracy));
        metrics.push(at_end("eval_loss", eval.loss));
        if let Some(more) = &eval.metrics {
            metrics.push(at_end("eval_macro_f1", more.macro_f1));
            metrics.push(at_end("eval_ece", more.ece));
        }
    }
    if let Some(trained) = record.trainable_parameters {
        metrics.push(at_end("trainable_parameters", trained as f64));
    }
    metrics.push(at_end("setup_seconds", t.setup_seconds));
    metrics.push(at_end("train_seconds", t.train_seconds));
    metrics.push(at_end("eval_seconds", t.eval_seconds));
    metrics
}

/// A trial run's tags: the sweep's own, then the trial's device, strategies, source, error.
pub(super) fn trial_tags(
    record: &TrialRecord,
    common: &[(String, String)],
) -> Vec<(String, String)> {
    let mut tags = common.to_vec();
    tags.push(tag("xferlab.device", &record.device));
    tags.push(tag("xferlab.strategies", record.strategies.join(",")));
    if let Some(source) = &record.source {
        tags.push(tag("xferlab.source", source));
    }
    if let Some(error) = &record.error {
        tags.push(tag("xferlab.error", error));
    }
    tags
}
