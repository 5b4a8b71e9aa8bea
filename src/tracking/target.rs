//! Where a sweep is logged (a tracking server and experiment), and how a sweep stands as a
//! whole, which its parent run on the server shows.

use crate::error::InputError;
use crate::plan::Plan;
use crate::spec::{MLFLOW_URI_VARIABLE, Spec};
use crate::store::{Status, TrialRecord};

/// Where a sweep is logged: an MLflow server and experiment.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address; may hold credentials, so show it only through `mlflow::redact`.
    pub uri: String,
    /// Experiment name.
    pub experiment: String,
}

impl Target {
    /// The MLflow server and experiment a spec names (the experiment defaults to its name).
    pub fn of(spec: &Spec) -> Option<Self> {
        let mlflow = spec.tracking.as_ref()?.mlflow.as_ref()?;
        Some(Target {
            uri: mlflow.uri.clone(),
            experiment: mlflow
                .experiment
                .clone()
                .unwrap_or_else(|| spec.name.clone()),
        })
    }

    /// Where `xferlab sync` uploads a saved sweep: `to` (`--to`), else the server its spec
    /// names, else `MLFLOW_TRACKING_URI`; the experiment is the spec's either way.
    pub fn for_sync(to: Option<String>, spec: &Spec) -> Result<Self, InputError> {
        let named = Target::of(spec);
        let experiment = named
            .as_ref()
            .map_or_else(|| spec.name.clone(), |t| t.experiment.clone());
        let uri = match (to, named) {
            (Some(uri), _) => uri,
            (None, Some(target)) => target.uri,
            (None, None) => match std::env::var(MLFLOW_URI_VARIABLE) {
                Ok(uri) if !uri.is_empty() => uri,
                _ => {
                    return Err(InputError::new(format!(
                        "the sweep `{}` names no tracking server",
                        spec.name
                    ))
                    .with_help("give one: xferlab sync RUN --to http://127.0.0.1:5000"));
                }
            },
        };
        super::mlflow::Client::new(&uri).map_err(|e| {
            InputError::new(e.to_string()).with_help("e.g. --to http://127.0.0.1:5000")
        })?;
        Ok(Target { uri, experiment })
    }
}

/// How a sweep stands, as its parent run on the tracking server shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepStatus {
    /// Trials remain and nothing stopped it (e.g. `run --trial` ran one of them).
    Running,
    /// Every trial finished.
    Finished,
    /// Some trial failed.
    Failed,
    /// Stopped by Ctrl-C.
    Killed,
}

impl SweepStatus {
    /// What the records of `plan` say; `interrupted` when this process was stopped.
    pub fn of(plan: &Plan, records: &[TrialRecord], interrupted: bool) -> Self {
        let has = |status| records.iter().any(|r| r.status == status);
        if interrupted || has(Status::Interrupted) {
            SweepStatus::Killed
        } else if has(Status::Failed) {
            SweepStatus::Failed
        } else if records.len() == plan.trials.len() {
            SweepStatus::Finished
        } else {
            SweepStatus::Running
        }
    }
}
