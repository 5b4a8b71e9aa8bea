//! Tracking servers: a sink that receives a sweep's records besides the run store, which
//! stays the source of truth. A sweep is a parent run; each trial a nested run, found again
//! by its `xferlab.trial_id` tag, so uploading twice (`xferlab sync`) changes nothing.
//!
//! During `run`, uploads happen on a background thread: training never waits on the
//! network, and a server that is down costs the sweep nothing but a message at the end.

pub mod mlflow;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use self::mlflow::{Client, Metric, Run, TrackingError};
use crate::error::Result;
use crate::plan::{Plan, hex};
use crate::report::{self, Format};
use crate::store::{RunStore, Status, SweepIdentity, TrialRecord};

/// How long a sink leaves a server alone after it stopped answering.
const RETRY_DOWN_AFTER: Duration = Duration::from_secs(30);

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
    pub fn of(spec: &crate::spec::Spec) -> Option<Self> {
        let mlflow = spec.tracking.as_ref()?.mlflow.as_ref()?;
        Some(Target {
            uri: mlflow.uri.clone(),
            experiment: mlflow
                .experiment
                .clone()
                .unwrap_or_else(|| spec.name.clone()),
        })
    }
}

/// How a sweep ended, in MLflow's words.
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

    fn mlflow(self) -> &'static str {
        match self {
            SweepStatus::Running => "RUNNING",
            SweepStatus::Finished => "FINISHED",
            SweepStatus::Failed => "FAILED",
            SweepStatus::Killed => "KILLED",
        }
    }
}

/// The sweep's report, attached to its parent run when it ends.
pub struct Report {
    /// Markdown rendering.
    pub markdown: String,
    /// JSON rendering.
    pub json: String,
}

impl Report {
    /// The report of a plan's records.
    pub fn of(plan: &Plan, records: &[TrialRecord]) -> Self {
        let built = report::build(plan, records);
        Report {
            markdown: report::render(&built, Format::Md),
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

fn tag(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_string(), value.into())
}

/// A search filter on one tag (backquoted: the key has a dot).
fn tag_filter(key: &str, value: &str) -> String {
    format!("tags.`{key}` = '{}'", value.replace('\'', "\\'"))
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
        let client = Client::new(&target.uri).map_err(UploadError::Setup)?;
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
        let status = match record.status {
            Status::Finished => "FINISHED",
            Status::Failed => "FAILED",
            Status::Interrupted => "KILLED",
        };
        let t = &record.timings;
        let seconds = t.setup_seconds + t.train_seconds + t.eval_seconds;
        let end = started + (seconds * 1000.0) as u64;
        self.client.set_status(run_id, status, Some(end))?;
        Ok(true)
    }

    /// Marks the parent run as `status` says (RUNNING while trials remain), with the report.
    pub fn end(
        &self,
        status: SweepStatus,
        report: &Report,
    ) -> std::result::Result<(), UploadError> {
        let info = &self.parent.info;
        self.client
            .upload(info, "report.md", report.markdown.clone().into_bytes())?;
        self.client
            .upload(info, "report.json", report.json.clone().into_bytes())?;
        let end = (status != SweepStatus::Running).then(now_ms);
        self.client.set_status(&info.run_id, status.mlflow(), end)?;
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
    #[error("{0}")]
    Setup(String),
    /// The run store could not be read.
    #[error(transparent)]
    Store(#[from] crate::error::Error),
}

impl UploadError {
    fn unreachable(&self) -> bool {
        matches!(self, UploadError::Server(TrackingError::Unreachable { .. }))
    }
}

fn run_name(record: &TrialRecord) -> String {
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
fn params(record: &TrialRecord) -> Vec<(String, String)> {
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
fn metrics(record: &TrialRecord) -> Vec<Metric> {
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
    }
    metrics.push(at_end("setup_seconds", t.setup_seconds));
    metrics.push(at_end("train_seconds", t.train_seconds));
    metrics.push(at_end("eval_seconds", t.eval_seconds));
    metrics
}

fn trial_tags(record: &TrialRecord, common: &[(String, String)]) -> Vec<(String, String)> {
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

/// What a sink or a sync did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Server, experiment and parent run, once reached.
    pub place: Option<String>,
    /// Trials uploaded now.
    pub uploaded: usize,
    /// Trials that were there already.
    pub present: usize,
    /// Ids of trials not uploaded.
    pub missed: Vec<String>,
    /// Why: the first failure of each kind seen.
    pub problems: Vec<String>,
    /// Whether the parent run was given its final status and report.
    pub ended: bool,
}

impl Outcome {
    fn problem(&mut self, error: &UploadError) {
        let text = error.to_string();
        if !self.problems.contains(&text) {
            self.problems.push(text);
        }
    }

    /// Lines for the user: where things went, and what to do about what did not.
    pub fn describe(&self, target: &Target, run_folder: &Path) -> String {
        let uri = mlflow::redact(&target.uri);
        let mut text = match &self.place {
            Some(place) => format!(
                "MLflow: {} trial(s) uploaded, {} already there ({place})\n",
                self.uploaded, self.present
            ),
            None => format!("MLflow: nothing uploaded to {uri}\n"),
        };
        const SHOWN: usize = 3;
        for problem in self.problems.iter().take(SHOWN) {
            text += &format!("  {problem}\n");
        }
        if self.problems.len() > SHOWN {
            text += &format!("  and {} more problem(s)\n", self.problems.len() - SHOWN);
        }
        if !self.missed.is_empty() || !self.ended {
            text += &format!(
                "MLflow: {} trial(s) not uploaded{}; they are safe in the run store. Upload them with:\n  xferlab sync {}\n",
                self.missed.len(),
                if self.ended {
                    ""
                } else {
                    " and the sweep not marked as ended"
                },
                crate::error::shown(run_folder)
            );
        }
        text
    }
}

enum Job {
    Trial(Box<TrialRecord>),
    End(SweepStatus, Report),
}

/// Uploads a running sweep's records on a background thread.
pub struct Sink {
    jobs: mpsc::Sender<Job>,
    worker: JoinHandle<Outcome>,
}

impl Sink {
    /// Starts the thread; it reaches the server in the background.
    pub fn start(target: Target, store: RunStore, identity: SweepIdentity, plan: Plan) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker = std::thread::spawn(move || {
            let mut outcome = Outcome::default();
            let mut uploader: Option<Uploader> = None;
            let mut down_since: Option<Instant> = None;
            for job in queue {
                let retry = down_since.is_none_or(|t| t.elapsed() >= RETRY_DOWN_AFTER);
                if retry && uploader.is_none() {
                    match Uploader::open(&target, &store, &identity, &plan) {
                        Ok(u) => {
                            outcome.place = Some(u.describe());
                            uploader = Some(u);
                            down_since = None;
                        }
                        Err(e) => {
                            tracing::warn!("MLflow: {e}");
                            outcome.problem(&e);
                            down_since = Some(Instant::now());
                        }
                    }
                }
                let ready = uploader.as_ref().filter(|_| retry);
                match job {
                    Job::Trial(record) => match ready.map(|u| u.trial(&record)) {
                        Some(Ok(uploaded)) => {
                            down_since = None;
                            if uploaded {
                                outcome.uploaded += 1;
                            } else {
                                outcome.present += 1;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!("MLflow: {e}");
                            if e.unreachable() {
                                down_since = Some(Instant::now());
                            }
                            outcome.problem(&e);
                            outcome.missed.push(record.id.clone());
                        }
                        None => outcome.missed.push(record.id.clone()),
                    },
                    Job::End(status, report) => {
                        if let Some(u) = ready {
                            match u.end(status, &report) {
                                Ok(()) => outcome.ended = true,
                                Err(e) => outcome.problem(&e),
                            }
                        }
                    }
                }
            }
            outcome
        });
        Sink { jobs, worker }
    }

    /// Queues a finished, failed or interrupted trial's record.
    pub fn trial(&self, record: &TrialRecord) {
        // A worker that ended early has already counted what it could not do.
        let _ = self.jobs.send(Job::Trial(Box::new(record.clone())));
    }

    /// Queues the sweep's end and waits for every upload to be done or given up.
    pub fn finish(self, status: SweepStatus, report: Report) -> Outcome {
        let _ = self.jobs.send(Job::End(status, report));
        drop(self.jobs);
        self.worker.join().unwrap_or_else(|_| Outcome {
            problems: vec!["the upload thread panicked".into()],
            ..Outcome::default()
        })
    }
}

/// Uploads everything the server does not have yet: `xferlab sync`. Safe to repeat.
pub fn sync(target: &Target, store: &RunStore, say: &dyn Fn(&str)) -> Result<Outcome> {
    let plan = store.plan()?;
    let records = store.records(&plan)?;
    let report = Report::of(&plan, &records);
    // A store made before sweeps had identities gets one now.
    let identity = store.identity(|| SweepIdentity::new(None))?;
    let mut outcome = Outcome::default();
    let uploader = match Uploader::open(target, store, &identity, &plan) {
        Ok(u) => u,
        Err(e) => {
            outcome.problem(&e);
            outcome.missed = records.iter().map(|r| r.id.clone()).collect();
            return Ok(outcome);
        }
    };
    outcome.place = Some(uploader.describe());
    for (i, record) in records.iter().enumerate() {
        match uploader.trial(record) {
            Ok(true) => {
                outcome.uploaded += 1;
                say(&format!("uploaded trial {}", record.id));
            }
            Ok(false) => outcome.present += 1,
            Err(e) => {
                outcome.problem(&e);
                outcome.missed.push(record.id.clone());
                if e.unreachable() {
                    outcome
                        .missed
                        .extend(records[i + 1..].iter().map(|r| r.id.clone()));
                    return Ok(outcome);
                }
            }
        }
    }
    match uploader.end(SweepStatus::of(&plan, &records, false), &report) {
        Ok(()) => outcome.ended = true,
        Err(e) => outcome.problem(&e),
    }
    Ok(outcome)
}
