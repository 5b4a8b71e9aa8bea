//! The sweep: picks the trials still to run, runs them one by one (resuming where a killed
//! run stopped), shows progress, and writes each record to the run store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::data::Catalog;
use crate::error::{Error, InputError, Result};
use crate::features::{self, FeatureCache};
use crate::model::Network;
use crate::plan::{Plan, Trial};
use crate::source::Sources;
use crate::spec::{DataSelection, LoadedSpec};
use crate::store::{RunStore, Status, SweepIdentity, Timings, TrialRecord};
use crate::tracking::{self, Sink, SweepStatus};
use crate::train::{self, Fit};

/// How to run a sweep.
pub struct RunOptions {
    /// Root of the run store.
    pub store: PathBuf,
    /// Where tensors live.
    pub device: Device,
    /// Trials run at once on the device.
    pub jobs: usize,
    /// Bytes of frozen-prefix features kept for reuse across trials (0: none).
    pub cache_bytes: usize,
    /// Run only this trial (an id, an id prefix, or a plan index).
    pub trial: Option<String>,
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

/// A seed for one purpose, derived from a trial's seed, so streams do not correlate.
pub fn derive_seed(seed: u64, purpose: &str) -> u64 {
    let digest = Sha256::digest(format!("{seed}/{purpose}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The trials `--trial` picks: one by index, id or unique id prefix; all when absent.
pub fn select<'a>(plan: &'a Plan, trial: Option<&str>) -> Result<Vec<&'a Trial>, InputError> {
    let Some(wanted) = trial else {
        return Ok(plan.trials.iter().collect());
    };
    if let Ok(index) = wanted.parse::<usize>()
        && let Some(trial) = plan.trials.get(index)
    {
        return Ok(vec![trial]);
    }
    let matches: Vec<&Trial> = plan
        .trials
        .iter()
        .filter(|t| t.id.starts_with(wanted))
        .collect();
    match matches.len() {
        1 => Ok(matches),
        0 => Err(
            InputError::new(format!("no trial has index or id `{wanted}`")).with_help(format!(
                "indexes run from 0 to {}; `xferlab plan SPEC` lists ids",
                plan.trials.len().saturating_sub(1)
            )),
        ),
        n => Err(InputError::new(format!("`{wanted}` starts {n} trial ids"))
            .with_help("give more of the id")),
    }
}

/// Runs the plan's selected trials that have no finished record yet (the spec and any
/// checkpoint source are checked before: see `xferlab validate`).
pub fn run(
    loaded: &LoadedSpec,
    plan: &Plan,
    catalog: &Catalog,
    options: &RunOptions,
) -> Result<Summary> {
    let selected = select(plan, options.trial.as_deref())?;
    let store = RunStore::new(&options.store, &plan.name);
    // Credentials written into a tracking address stay out of the store (and its uploads).
    let mut saved = loaded.spec.clone();
    if let Some(mlflow) = saved.tracking.as_mut().and_then(|t| t.mlflow.as_mut()) {
        mlflow.uri = tracking::mlflow::redact(&mlflow.uri);
    }
    let spec_yaml = serde_yaml::to_string(&saved).expect("specs serialise");
    store.write_plan(&spec_yaml, &loaded.overrides, plan)?;
    let identity = store.identity(|| SweepIdentity::new(git_commit(&loaded.file.path)))?;
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
    let progress = Progress::new(pending.len() as u64, summary.already_done);
    let lanes = Lane::open(options)?;
    let shared = Shared {
        catalog,
        store: &store,
        checkpoints: loaded.spec.checkpoints,
        progress: &progress,
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
    progress.finish();
    if let Some(error) = error {
        return Err(error);
    }
    if let (Some(sink), Some(target)) = (sink, &target) {
        let records = store.records(plan)?;
        let status = SweepStatus::of(plan, &records, summary.interrupted);
        let report = tracking::Report::of(plan, &records);
        eprintln!(
            "MLflow: finishing uploads to {}",
            tracking::mlflow::redact(&target.uri)
        );
        let outcome = sink.finish(status, report);
        summary.tracking = Some(outcome.describe(target, store.root()));
    }
    Ok(summary)
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
    catalog: &'a Catalog,
    store: &'a RunStore,
    checkpoints: bool,
    progress: &'a Progress,
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
                    lanes.push(lane(device, options.cache_bytes / options.jobs));
                }
                lanes
            }
            _ => vec![lane(options.device.clone(), options.cache_bytes)],
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
        let Some(_lock) = self.store.try_lock_trial(&trial.id)? else {
            self.progress.say(&format!(
                "trial {} is being run by another process: skipped",
                trial.id
            ));
            self.progress.advance();
            return Err(Skipped::Busy);
        };
        // Another process may have finished it between the scan and the lock.
        if self
            .store
            .record(&trial.id)?
            .is_some_and(|r| r.status == Status::Finished)
        {
            self.progress.advance();
            return Err(Skipped::Done);
        }
        self.progress.start(trial);
        tracing::info!(trial = %trial.id, strategies = ?trial.strategies, t = trial.config.transfer_depth, f = trial.config.freeze_depth, "trial started");
        let record = self.trial(trial, lane)?;
        self.store.write_record(&record)?;
        tracing::info!(trial = %record.id, status = ?record.status, eval = ?record.eval, error = ?record.error, "trial recorded");
        self.progress.done(&record);
        Ok(record)
    }

    fn trial(&self, trial: &Trial, lane: &Lane) -> Result<TrialRecord> {
        let (catalog, device) = (self.catalog, &lane.device);
        let config = &trial.config;
        let started = Instant::now();
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut record = TrialRecord {
            id: trial.id.clone(),
            index: trial.index,
            strategies: trial.strategies.clone(),
            transfer_depth: config.transfer_depth,
            freeze_depth: config.freeze_depth,
            axes: trial.axes.clone(),
            status: Status::Failed,
            error: None,
            eval: None,
            curve: Vec::new(),
            steps: 0,
            timings: Timings {
                started_at,
                setup_seconds: 0.0,
                train_seconds: 0.0,
                eval_seconds: 0.0,
            },
            device: crate::device::name(device),
            source: None,
            xferlab_version: env!("CARGO_PKG_VERSION").to_string(),
            config: config.clone(),
        };
        let outcome = (|| -> Result<()> {
            let train_data = catalog.select(
                &config.target.train,
                derive_seed(config.seed, "target.train"),
                device,
            )?;
            let eval_data = catalog.select(
                &config.target.eval,
                derive_seed(config.seed, "target.eval"),
                device,
            )?;
            let shape = catalog.shape(&config.target.train.dataset)?;
            let net = Network::new(
                &config.model,
                shape,
                train_data.classes,
                derive_seed(config.seed, "init"),
                device,
            )?;
            let (mut train_features, mut eval_features) = (None, None);
            if config.transfer_depth > 0 {
                let source =
                    (lane.sources.lock().expect("sources lock"))
                        .get(config, catalog, &|m| self.progress.say(m))?;
                net.transfer_from(&source.tensors, config.transfer_depth)
                    .map_err(|m| InputError::new(format!("source model {} {m}", source.label)))?;
                record.source = Some(source.label.clone());
                let features = |selection: &DataSelection, data| {
                    let key = features::Key {
                        source: source.label.clone(),
                        depth: config.freeze_depth,
                        data: serde_json::json!([
                            selection.dataset,
                            selection.split,
                            config.datasets[&selection.dataset]
                        ])
                        .to_string(),
                    };
                    lane.cache.features(key, &net, data)
                };
                train_features = features(&config.target.train, &train_data)?;
                eval_features = features(&config.target.eval, &eval_data)?;
            }
            record.timings.setup_seconds = started.elapsed().as_secs_f64();
            let training = Instant::now();
            let fit = train::fit(
                &net,
                &train_data,
                train_features.as_ref(),
                &config.train,
                config.freeze_depth,
                derive_seed(config.seed, "batches"),
            )?;
            record.timings.train_seconds = training.elapsed().as_secs_f64();
            record.steps = train::step_count(&config.train, train_data.targets.dim(0)?);
            match fit {
                Fit::Done(curve) => record.curve = curve,
                Fit::Interrupted { step, curve } => {
                    record.curve = curve;
                    record.steps = step;
                    record.status = Status::Interrupted;
                    record.error = Some(format!("interrupted by Ctrl-C after step {step}"));
                    return Ok(());
                }
                Fit::Diverged { step, curve } => {
                    record.curve = curve;
                    record.steps = step;
                    record.error = Some(format!(
                        "training loss became NaN or infinite by step {step}"
                    ));
                    return Ok(());
                }
            }
            let evaluating = Instant::now();
            record.eval = Some(train::evaluate(
                &net,
                &eval_data,
                eval_features.as_ref(),
                config.freeze_depth,
            )?);
            record.timings.eval_seconds = evaluating.elapsed().as_secs_f64();
            if self.checkpoints {
                self.store
                    .write_checkpoint(&trial.id, |path| net.save(path))?;
            }
            record.status = Status::Finished;
            Ok(())
        })();
        match outcome {
            Ok(()) => Ok(record),
            // Bad input and a store that cannot be written (full disk) stop the sweep; anything
            // else fails only this trial.
            Err(e @ (Error::Input(_) | Error::Io { .. })) => Err(e),
            Err(Error::Interrupted) => {
                record.status = Status::Interrupted;
                record.error = Some("interrupted by Ctrl-C while preparing the trial".into());
                Ok(record)
            }
            Err(e) => {
                record.error = Some(e.to_string());
                Ok(record)
            }
        }
    }
}

/// A progress bar with ETA on a terminal; plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
}

impl Progress {
    fn new(total: u64, already_done: usize) -> Self {
        if already_done > 0 {
            eprintln!("{already_done} trial(s) already finished in the run store: skipped");
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} trials  {elapsed} elapsed, ETA {eta}  {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: AtomicU64::new(0),
        }
    }

    fn say(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    fn start(&self, trial: &Trial) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} t={} f={}",
                trial.strategies.join("="),
                trial.config.transfer_depth,
                trial.config.freeze_depth
            ));
        }
    }

    /// Counts one more trial dealt with; returns how many are.
    fn advance(&self) -> u64 {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.done.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn done(&self, record: &TrialRecord) {
        let done = self.advance();
        let error = record.error.as_deref().unwrap_or("no reason given");
        let result = match (record.status, &record.eval) {
            (Status::Finished, Some(eval)) => format!("accuracy {:.4}", eval.accuracy),
            (Status::Interrupted, _) => format!("INTERRUPTED: {error}"),
            _ => format!("FAILED: {error}"),
        };
        let seconds = record.timings.setup_seconds
            + record.timings.train_seconds
            + record.timings.eval_seconds;
        let axes: Vec<String> = record
            .axes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.say(&format!(
            "[{}/{}] {} {} t={} f={} {} {result} ({seconds:.1}s)",
            done,
            self.total,
            record.id,
            record.strategies.join("="),
            record.transfer_depth,
            record.freeze_depth,
            axes.join(" "),
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
