//! The sweep: picks the trials still to run (resuming where a killed run stopped), hands
//! them to `--jobs` lanes under per-trial locks, tallies what happened, feeds the tracker,
//! and tells an observer each step so the command line can show progress.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::Device;

use crate::error::{Error, InputError, Result};
use crate::experiment::Experiment;
use crate::features::FeatureCache;
use crate::plan::{Plan, Trial};
use crate::source::Sources;
use crate::store::{RunStore, Status, SweepIdentity, TrialRecord};
use crate::tracking::{self, Sink};
use crate::trial;

/// How to run a sweep.
pub struct RunOptions {
    /// Root of the run store.
    pub store: PathBuf,
    /// Where tensors live.
    pub device: Device,
    /// Trials run at once on the device.
    pub jobs: usize,
    /// MiB of frozen-prefix features kept for reuse across trials (0: none).
    pub feature_cache_mb: usize,
    /// Run only these trials (ids, id prefixes, or plan indexes); all when empty.
    pub trials: Vec<String>,
    /// Wait for a trial another process holds, then run it unless that process finished it
    /// (else skip it as busy).
    pub wait: bool,
}

/// What a `run` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Trials selected.
    pub selected: usize,
    /// Already finished before this run.
    pub already_done: usize,
    /// Run now and finished.
    pub finished: usize,
    /// Run now and failed.
    pub failed: usize,
    /// Skipped because another process was running them.
    pub busy: usize,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// What the tracking server got, when the spec names one.
    pub tracking: Option<String>,
}

/// What a sweep tells its observer, as it happens (from every job's thread).
#[derive(Debug)]
pub enum Event<'a> {
    /// The trials to run now; `already_done` were finished by an earlier run.
    Planned {
        /// Trials to run.
        pending: usize,
        /// Trials skipped because the run store has them finished.
        already_done: usize,
    },
    /// A trial starts.
    Started(&'a Trial),
    /// A trial was not run: another process holds its lock.
    Busy(&'a Trial),
    /// A trial was not run: another process finished it since the scan.
    Done(&'a Trial),
    /// A trial ended (finished, failed or interrupted) and its record is written.
    Ended(&'a TrialRecord),
    /// Long work worth a line: pretraining a source model, finishing uploads.
    Note(&'a str),
    /// Every trial is dealt with (uploads may still be finishing).
    Over,
}

/// Receives a sweep's events; called from every job's thread.
pub type Observer<'a> = &'a (dyn Fn(Event) + Sync);

/// The trials `--trial` picks, in plan order: each by index, id or unique id prefix; all
/// when none is named.
pub fn select<'a>(plan: &'a Plan, wanted: &[String]) -> Result<Vec<&'a Trial>, InputError> {
    if wanted.is_empty() {
        return Ok(plan.trials.iter().collect());
    }
    let mut picked = vec![false; plan.trials.len()];
    for wanted in wanted {
        picked[pick(plan, wanted)?] = true;
    }
    Ok(plan
        .trials
        .iter()
        .zip(picked)
        .filter_map(|(trial, picked)| picked.then_some(trial))
        .collect())
}

/// The plan index of one trial named by index, id or unique id prefix.
fn pick(plan: &Plan, wanted: &str) -> Result<usize, InputError> {
    if let Ok(index) = wanted.parse::<usize>()
        && index < plan.trials.len()
    {
        return Ok(index);
    }
    let matches: Vec<usize> = (0..plan.trials.len())
        .filter(|&i| plan.trials[i].id.starts_with(wanted))
        .collect();
    match matches[..] {
        [index] => Ok(index),
        [] => Err(
            InputError::new(format!("no trial has index or id `{wanted}`")).with_help(format!(
                "indexes run from 0 to {}; `xferlab plan SPEC` lists ids",
                plan.trials.len().saturating_sub(1)
            )),
        ),
        _ => Err(
            InputError::new(format!("`{wanted}` starts {} trial ids", matches.len()))
                .with_help("give more of the id"),
        ),
    }
}

/// Runs the experiment's selected trials that have no finished record yet.
pub fn run(experiment: &Experiment, options: &RunOptions, observe: Observer) -> Result<Summary> {
    let (loaded, plan) = (&experiment.loaded, &experiment.plan);
    let selected = select(plan, &options.trials)?;
    let (store, identity) = open_store(experiment, &options.store)?;
    let target = tracking::Target::of(&loaded.spec);
    let sink = target
        .as_ref()
        .map(|t| Sink::start(t.clone(), store.clone(), identity, plan.clone()));

    let mut summary = Summary {
        selected: selected.len(),
        ..Summary::default()
    };
    let mut pending = Vec::new();
    for trial in selected {
        match store.record(&trial.id)? {
            Some(record) if record.status == Status::Finished => summary.already_done += 1,
            _ => pending.push(trial),
        }
    }
    observe(Event::Planned {
        pending: pending.len(),
        already_done: summary.already_done,
    });
    let lanes = Lane::open(options)?;
    let shared = Shared {
        experiment,
        store: &store,
        observe,
        wait: options.wait,
    };
    let queue = Mutex::new(pending.into_iter());
    let tally = Mutex::new((summary, None::<Error>));
    // Each job takes the next trial until none is left, one fails the sweep, or Ctrl-C.
    let job = |lane: &Lane| {
        loop {
            let stopping = tally.lock().expect("tally lock").1.is_some();
            if stopping || crate::interrupt::requested() {
                break;
            }
            let Some(trial) = queue.lock().expect("queue lock").next() else {
                break;
            };
            let outcome = shared.run(trial, lane);
            let mut tally = tally.lock().expect("tally lock");
            match outcome {
                Ok(record) => {
                    if let Some(sink) = &sink {
                        sink.trial(&record);
                    }
                    match record.status {
                        Status::Finished => tally.0.finished += 1,
                        Status::Failed => tally.0.failed += 1,
                        Status::Interrupted => tally.0.interrupted = true,
                    }
                }
                Err(Skipped::Busy) => tally.0.busy += 1,
                Err(Skipped::Done) => tally.0.already_done += 1,
                Err(Skipped::Error(e)) => {
                    tally.1.get_or_insert(e);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for i in 1..options.jobs.max(1) {
            let lane = &lanes[i % lanes.len()];
            scope.spawn(move || job(lane));
        }
        job(&lanes[0]);
    });
    let (mut summary, error) = tally.into_inner().expect("tally lock");
    summary.interrupted |= crate::interrupt::requested();
    observe(Event::Over);
    if let Some(error) = error {
        return Err(error);
    }
    if let (Some(sink), Some(target)) = (sink, &target) {
        observe(Event::Note(&format!(
            "MLflow: finishing uploads to {}",
            tracking::mlflow::redact(&target.uri)
        )));
        let outcome = sink.finish(summary.interrupted);
        summary.tracking = Some(outcome.describe(target, store.root()));
    }
    Ok(summary)
}

/// The sweep's folder under the store `root`, with the spec and plan saved into it and the
/// sweep's identity (made now by the first to come).
pub fn open_store(experiment: &Experiment, root: &Path) -> Result<(RunStore, SweepIdentity)> {
    let loaded = &experiment.loaded;
    let store = RunStore::new(root, &experiment.plan.name);
    // Credentials written into a tracking address stay out of the store (and its uploads).
    let mut saved = loaded.spec.clone();
    if let Some(mlflow) = saved.tracking.as_mut().and_then(|t| t.mlflow.as_mut()) {
        mlflow.uri = tracking::mlflow::redact(&mlflow.uri);
    }
    let spec_yaml = serde_yaml::to_string(&saved).expect("specs serialise");
    store.write_plan(&spec_yaml, &loaded.overrides, &experiment.plan)?;
    let identity = store.identity(|| SweepIdentity::new(git_commit(&loaded.file.path)))?;
    Ok((store, identity))
}

/// The commit checked out in the git repository holding `file`, if it is in one.
fn git_commit(file: &Path) -> Option<String> {
    let dir = std::path::absolute(file).ok()?.parent()?.to_path_buf();
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !commit.is_empty()).then_some(commit)
}

/// What every job of a sweep shares.
struct Shared<'a> {
    experiment: &'a Experiment,
    store: &'a RunStore,
    observe: Observer<'a>,
    /// `RunOptions::wait`.
    wait: bool,
}

/// A device with the source models and frozen-prefix features loaded on it. On the CPU every
/// job shares one. On a GPU each job gets its own: its own CUDA stream keeps the GPU busy while
/// others wait, and a cuBLAS handle must not be used by two threads at once; tensors cannot be
/// shared across candle devices, so each lane loads the source model (once) and fills its own
/// cache, with an equal share of the budget.
struct Lane {
    device: Device,
    sources: Mutex<Sources>,
    cache: FeatureCache,
}

impl Lane {
    fn open(options: &RunOptions) -> Result<Vec<Lane>> {
        let cache_bytes = options.feature_cache_mb.saturating_mul(1 << 20);
        let lane = |device: Device, cache_bytes| Lane {
            sources: Mutex::new(Sources::new(&options.store, &device)),
            cache: FeatureCache::new(cache_bytes),
            device,
        };
        Ok(match options.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } if options.jobs > 1 => {
                let mut lanes = Vec::new();
                for _ in 0..options.jobs {
                    let device = Device::new_cuda_with_stream(gpu_id)?;
                    lanes.push(lane(device, cache_bytes / options.jobs));
                }
                lanes
            }
            _ => vec![lane(options.device.clone(), cache_bytes)],
        })
    }
}

/// Why a job did not run a trial.
enum Skipped {
    /// Another process holds its lock.
    Busy,
    /// Another process finished it since the scan.
    Done,
    /// Something that stops the sweep: bad input, a run store that cannot be written.
    Error(Error),
}

impl From<Error> for Skipped {
    fn from(error: Error) -> Self {
        Skipped::Error(error)
    }
}

impl Shared<'_> {
    /// Runs one trial under its lock and writes its record.
    fn run(&self, trial: &Trial, lane: &Lane) -> std::result::Result<TrialRecord, Skipped> {
        let Some(_lock) = self.store.lock_trial(&trial.id, self.wait)? else {
            (self.observe)(Event::Busy(trial));
            return Err(Skipped::Busy);
        };
        // Another process may have finished it between the scan and the lock.
        if self
            .store
            .record(&trial.id)?
            .is_some_and(|r| r.status == Status::Finished)
        {
            (self.observe)(Event::Done(trial));
            return Err(Skipped::Done);
        }
        (self.observe)(Event::Started(trial));
        tracing::info!(trial = %trial.id, strategies = ?trial.strategies, t = trial.config.transfer_depth, f = trial.config.freeze_depth, "trial started");
        let say = |message: &str| (self.observe)(Event::Note(message));
        let context = trial::Context {
            catalog: &self.experiment.catalog,
            store: self.store,
            checkpoints: self.experiment.loaded.spec.checkpoints,
            device: &lane.device,
            sources: &lane.sources,
            cache: &lane.cache,
            say: &say,
        };
        let record = trial::run(trial, &context)?;
        self.store.write_record(&record)?;
        tracing::info!(trial = %record.id, status = ?record.status, eval = ?record.eval, error = ?record.error, "trial recorded");
        (self.observe)(Event::Ended(&record));
        Ok(record)
    }
}
