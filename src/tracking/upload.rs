//! A sweep on a tracking server: its parent run, found again or created, and each trial
//! as a nested run under it, put there exactly once; the report attached at the end.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::mapping::{
    metrics, params, run_name, sweep_status, tag, tag_filter, trial_end_ms, trial_status,
    trial_tags,
};
use super::mlflow::{Client, ClientError, Run, TrackingError};
use super::{SweepStatus, Target};
use crate::estimate::Estimates;
use crate::plan::{Plan, hex};
use crate::report::{self, Format};
use crate::store::{RunStore, SweepIdentity, TrialRecord};

/// The sweep's report, attached to its parent run when it ends.
pub struct Report {
    /// Markdown rendering.
    pub markdown: String,
    /// JSON rendering.
    pub json: String,
}

impl Report {
    /// The report of a plan's records, with the estimates set beside them when there are
    /// some.
    pub fn of(plan: &Plan, records: &[TrialRecord], estimates: Option<&Estimates>) -> Self {
        let built = report::build(
            plan,
            records,
            report::Metric::Accuracy,
            report::Correction::Holm,
        );
        let compared = estimates.and_then(|e| crate::estimate::compare(&built, e));
        Report {
            markdown: report::render(&built, Format::Md) + compared.as_deref().unwrap_or(""),
            json: report::render(&built, Format::Json),
        }
    }
}

/// A sweep's parent run on a server, and how to put trials under it.
pub struct Uploader<'a> {
    client: Client,
    store: &'a RunStore,
    experiment: String,
    experiment_id: String,
    parent: Run,
    common_tags: Vec<(String, String)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<'a> Uploader<'a> {
    /// Finds the sweep's parent run (by its `xferlab.sweep_id` tag and name), or creates it;
    /// marks it RUNNING and attaches the resolved spec.
    pub fn open(
        target: &Target,
        store: &'a RunStore,
        identity: &SweepIdentity,
        plan: &Plan,
    ) -> std::result::Result<Self, UploadError> {
        let client = Client::new(&target.uri)?;
        let spec_yaml = store.spec_yaml()?;
        let spec_hash = hex(&Sha256::digest(spec_yaml.as_bytes()))[..16].to_string();
        let mut common_tags = vec![
            tag("xferlab.sweep_id", &identity.id),
            tag("xferlab.spec_hash", spec_hash),
            tag("xferlab.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(commit) = &identity.git_commit {
            common_tags.push(tag("xferlab.git_commit", commit));
        }
        let experiment_id = client.experiment(&target.experiment)?;
        let parent = {
            let _lock = store.lock_tracking()?;
            let filter = format!(
                "{} and attributes.run_name = '{}'",
                tag_filter("xferlab.sweep_id", &identity.id),
                plan.name.replace('\'', "\\'")
            );
            let found = client
                .search(&experiment_id, &filter)?
                .into_iter()
                .find(|r| !r.tags.contains_key("mlflow.parentRunId"));
            match found {
                Some(run) => {
                    if run.info.status != "RUNNING" {
                        client.set_status(&run.info.run_id, "RUNNING", None)?;
                    }
                    run
                }
                None => client.create_run(
                    &experiment_id,
                    &plan.name,
                    identity.created_at * 1000,
                    &common_tags,
                )?,
            }
        };
        let params = [
            ("sweep.name", plan.name.clone()),
            ("sweep.trials", plan.trials.len().to_string()),
            ("sweep.blocks", plan.blocks.to_string()),
            ("sweep.strategies", plan.strategies.join(",")),
            ("sweep.axes", plan.axes.join(",")),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let run_id = &parent.info.run_id;
        client.log(run_id, "logging the sweep", &params, &[], &common_tags)?;
        client.upload(&parent.info, "spec.yaml", spec_yaml.into_bytes())?;
        Ok(Uploader {
            client,
            store,
            experiment: target.experiment.clone(),
            experiment_id,
            parent,
            common_tags,
        })
    }

    /// Puts one trial on the server, exactly once: a run already holding this very record
    /// is completed (or left alone when complete); runs of an older record of the trial
    /// are deleted. Returns whether anything was uploaded.
    pub fn trial(&self, record: &TrialRecord) -> std::result::Result<bool, UploadError> {
        let json = serde_json::to_vec_pretty(record).expect("records serialise");
        let fingerprint = hex(&Sha256::digest(&json))[..16].to_string();
        let started = record.timings.started_at * 1000;
        let run = {
            let _lock = self.store.lock_tracking()?;
            let filter = format!(
                "{} and {}",
                tag_filter("mlflow.parentRunId", &self.parent.info.run_id),
                tag_filter("xferlab.trial_id", &record.id)
            );
            let mut current = None;
            for run in self.client.search(&self.experiment_id, &filter)? {
                if current.is_none()
                    && run.tags.get("xferlab.record").map(String::as_str) == Some(&fingerprint)
                {
                    current = Some(run);
                } else {
                    self.client.delete_run(&run.info.run_id)?;
                }
            }
            match current {
                // The status is set last: a run that has one holds the whole record.
                Some(run) if run.info.status != "RUNNING" => return Ok(false),
                Some(run) => run,
                None => {
                    let tags = [
                        tag("mlflow.parentRunId", &self.parent.info.run_id),
                        tag("xferlab.trial_id", &record.id),
                        tag("xferlab.record", &fingerprint),
                    ];
                    self.client.create_run(
                        &self.experiment_id,
                        &run_name(record),
                        started,
                        &tags,
                    )?
                }
            }
        };
        let what = format!("logging trial {}", record.id);
        let run_id = &run.info.run_id;
        self.client.log(
            run_id,
            &what,
            &params(record),
            &metrics(record),
            &trial_tags(record, &self.common_tags),
        )?;
        self.client.upload(&run.info, "record.json", json)?;
        let status = trial_status(record.status);
        self.client
            .set_status(run_id, status, Some(trial_end_ms(record)))?;
        Ok(true)
    }

    /// Marks the parent run as `status` says (RUNNING while trials remain), with the report.
    pub fn end(&self, plan: &Plan, interrupted: bool) -> std::result::Result<(), UploadError> {
        // Under the lock, from the records as they are now: of several processes sharing the
        // sweep (a Slurm array), the one that ends last sees every record and sets the status.
        let _lock = self.store.lock_tracking()?;
        let records = self.store.records(plan)?;
        let status = SweepStatus::of(plan, &records, interrupted);
        // A damaged estimates file does not keep the report from the server.
        let estimates = self.store.estimates().unwrap_or(None);
        let report = Report::of(plan, &records, estimates.as_ref());
        let info = &self.parent.info;
        if let Some(estimates) = &estimates {
            let json = serde_json::to_vec_pretty(estimates).expect("estimates serialise");
            self.client.upload(info, crate::estimate::FILE, json)?;
        }
        self.client
            .upload(info, "report.md", report.markdown.into_bytes())?;
        self.client
            .upload(info, "report.json", report.json.into_bytes())?;
        let end = (status != SweepStatus::Running).then(now_ms);
        self.client
            .set_status(&info.run_id, sweep_status(status), end)?;
        Ok(())
    }

    /// Where the sweep is, for messages: server, experiment, parent run.
    pub fn describe(&self) -> String {
        format!(
            "{}, experiment `{}`, run {}",
            self.client.uri(),
            self.experiment,
            self.parent.info.run_id
        )
    }
}

/// Why an upload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The server did not answer or refused.
    #[error(transparent)]
    Server(#[from] TrackingError),
    /// The tracking settings cannot work (e.g. not an http address).
    #[error(transparent)]
    Setup(#[from] ClientError),
    /// The run store could not be read.
    #[error(transparent)]
    Store(#[from] crate::error::Error),
}

impl UploadError {
    /// Whether the server did not answer (rather than refusing one request).
    pub(super) fn unreachable(&self) -> bool {
        matches!(self, UploadError::Server(TrackingError::Unreachable { .. }))
    }
}
