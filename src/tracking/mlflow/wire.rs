//! The JSON shapes of MLflow's REST API that xferlab reads and writes: runs as the server
//! describes them, metrics and tags as it accepts them, and its error replies.

use serde::Deserialize;
use serde_json::{Value, json};

/// A run as the server describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct RunInfo {
    /// Its id.
    pub run_id: String,
    /// `RUNNING`, `FINISHED`, `FAILED` or `KILLED`.
    pub status: String,
    /// Where its artifacts go: `mlflow-artifacts:/EXP/RUN/artifacts` when proxied.
    pub artifact_uri: String,
}

/// A run with its tags.
#[derive(Debug, Clone)]
pub struct Run {
    /// Id, status, artifact location.
    pub info: RunInfo,
    /// Tags by key.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// A run as the server sends it: tags as a list of pairs.
#[derive(Deserialize)]
pub(super) struct RawRun {
    info: RunInfo,
    #[serde(default)]
    data: RawRunData,
}

#[derive(Default, Deserialize)]
struct RawRunData {
    #[serde(default)]
    tags: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    value: String,
}

impl From<RawRun> for Run {
    fn from(raw: RawRun) -> Self {
        Run {
            info: raw.info,
            tags: raw
                .data
                .tags
                .into_iter()
                .map(|t| (t.key, t.value))
                .collect(),
        }
    }
}

/// One metric value at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name.
    pub key: String,
    /// Value; NaN and infinities are sent as MLflow's strings for them.
    pub value: f64,
    /// Unix time in milliseconds.
    pub timestamp: u64,
    /// Step.
    pub step: u64,
}

/// Tags or params as the API takes them: `[{"key", "value"}]`.
pub(super) fn key_values(items: &[(String, String)]) -> Vec<Value> {
    items
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": value }))
        .collect()
}

/// A metric as `runs/log-batch` takes it.
pub(super) fn metric_json(metric: &Metric) -> Value {
    // A bare NaN would be stored as 0 and the rest of the batch dropped: send the strings.
    let value = match metric.value {
        v if v.is_nan() => json!("NaN"),
        v if v == f64::INFINITY => json!("Infinity"),
        v if v == f64::NEG_INFINITY => json!("-Infinity"),
        v => json!(v),
    };
    json!({ "key": metric.key, "value": value, "timestamp": metric.timestamp, "step": metric.step })
}

/// The string at a JSON pointer of a reply (empty when absent).
pub(super) fn string_at(reply: &Value, pointer: &str) -> String {
    reply
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The server's `{"error_code", "message"}`, or the start of whatever else it answered.
pub(super) fn server_message(status: reqwest::StatusCode, body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error_code: String,
        message: String,
    }
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => format!("{}: {}", e.error_code, e.message),
        Err(_) => {
            let text: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(200).collect();
            format!("HTTP {status}: {text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_metrics_are_sent_as_mlflow_strings() {
        let metric = |value| Metric {
            key: "train_loss".into(),
            value,
            timestamp: 1,
            step: 2,
        };
        assert_eq!(metric_json(&metric(f64::NAN))["value"], "NaN");
        assert_eq!(
            metric_json(&metric(f64::NEG_INFINITY))["value"],
            "-Infinity"
        );
        assert_eq!(metric_json(&metric(0.5))["value"], 0.5);
    }
}
