//! The sweep: picks the trials still to run, runs them one by one (resuming where a killed
//! run stopped), shows progress, and writes each record to the run store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::data::Catalog;
use crate::error::{Error, InputError, Result};
use crate::model::Network;
use crate::plan::{Plan, Trial};
use crate::source::Sources;
use crate::spec::LoadedSpec;
use crate::store::{RunStore, Status, SweepIdentity, Timings, TrialRecord};
use crate::tracking::{self, Sink, SweepStatus};
use crate::train::{self, Fit};

/// How to run a sweep.
pub struct RunOptions {
    /// Root of the run store.
    pub store: PathBuf,
    /// Where tensors live.
    pub device: Device,
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

/// Name of a device for records.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
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
    let mut sources = Sources::new(&options.store, &options.device);
    for trial in pending {
        if crate::interrupt::requested() {
            summary.interrupted = true;
            break;
        }
        let Some(_lock) = store.try_lock_trial(&trial.id)? else {
            summary.busy += 1;
            progress.say(&format!(
                "trial {} is being run by another process: skipped",
                trial.id
            ));
            progress.advance();
            continue;
        };
        // Another process may have finished it between the scan and the lock.
        if store
            .record(&trial.id)?
            .is_some_and(|r| r.status == Status::Finished)
        {
            summary.already_done += 1;
            progress.advance();
            continue;
        }
        progress.start(trial);
        tracing::info!(trial = %trial.id, strategies = ?trial.strategies, t = trial.config.transfer_depth, f = trial.config.freeze_depth, "trial started");
        let record = run_trial(
            trial,
            catalog,
            &mut sources,
            &store,
            loaded.spec.checkpoints,
            &options.device,
            &|m| progress.say(m),
        )?;
        store.write_record(&record)?;
        tracing::info!(trial = %record.id, status = ?record.status, eval = ?record.eval, error = ?record.error, "trial recorded");
        if let Some(sink) = &sink {
            sink.trial(&record);
        }
        progress.done(&record);
        match record.status {
            Status::Finished => summary.finished += 1,
            Status::Failed => summary.failed += 1,
            Status::Interrupted => {
                summary.interrupted = true;
                break;
            }
        }
    }
    progress.finish();
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

fn run_trial(
    trial: &Trial,
    catalog: &Catalog,
    sources: &mut Sources,
    store: &RunStore,
    save_checkpoint: bool,
    device: &Device,
    say: &dyn Fn(&str),
) -> Result<TrialRecord> {
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
        device: device_name(device),
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
        if config.transfer_depth > 0 {
            let source = sources.get(config, catalog, say)?;
            net.transfer_from(&source.tensors, config.transfer_depth)
                .map_err(|m| InputError::new(format!("source model {} {m}", source.label)))?;
            record.source = Some(source.label.clone());
        }
        record.timings.setup_seconds = started.elapsed().as_secs_f64();
        let training = Instant::now();
        let fit = train::fit(
            &net,
            &train_data,
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
        record.eval = Some(train::evaluate(&net, &eval_data)?);
        record.timings.eval_seconds = evaluating.elapsed().as_secs_f64();
        if save_checkpoint {
            store.write_checkpoint(&trial.id, |path| net.save(path))?;
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

/// A progress bar with ETA on a terminal; plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
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
            done: std::cell::Cell::new(0),
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

    fn advance(&self) {
        self.done.set(self.done.get() + 1);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn done(&self, record: &TrialRecord) {
        self.advance();
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
            self.done.get(),
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

/// The device `--device` names: `cpu`, `cuda`, `cuda:N`, or `auto` (a GPU when the binary has
/// CUDA and one answers, else the CPU).
pub fn parse_device(name: &str) -> Result<Device, InputError> {
    let cuda = |ordinal: usize| {
        Device::new_cuda(ordinal).map_err(|e| {
            InputError::new(format!("cannot use CUDA device {ordinal}: {e}"))
                .with_help("xferlab uses CUDA only when built with `--features cuda` (`just build-gpu`) on a machine with a GPU; use --device cpu")
        })
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(ordinal) => cuda(ordinal),
            None => Err(InputError::new(format!("unknown device `{other}`"))
                .with_help("use cpu, cuda, cuda:N or auto")),
        },
    }
}
