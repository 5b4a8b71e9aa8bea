//! The run store, the source of truth: one folder per sweep, one file per trial record.
//!
//! ```text
//! <store>/<name>/spec.yaml                 resolved spec of the latest `run`
//! <store>/<name>/overrides.json            its `--set` overrides
//! <store>/<name>/plan.json                 its trial table
//! <store>/<name>/sweep.json                the sweep's identity (made by its first `run`)
//! <store>/<name>/trials/<id>.json          one record per ended trial
//! <store>/<name>/checkpoints/<id>.safetensors
//! <store>/<name>/locks/<id>.lock           held (flock) while a process runs the trial
//! <store>/sources/<hash>.safetensors       pretrained source models, shared by sweeps
//! ```
//! Every file is written to a temporary name in its folder and renamed into place, so a
//! reader (or a process killed mid-write) never sees half a file, and processes on many
//! machines can share one store: a record is one file named by its trial id.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::{Plan, StrategyLabels, TrialConfig};
use crate::train::{CurvePoint, Evaluation};

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained and evaluated.
    Finished,
    /// Stopped by an error; `error` says why.
    Failed,
    /// Stopped by Ctrl-C or a stop signal; `run` runs it again.
    Interrupted,
}

impl Status {
    /// The name records spell it with.
    pub fn name(self) -> &'static str {
        match self {
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

impl SweepIdentity {
    /// A new identity, now.
    pub fn new(git_commit: Option<String>) -> Self {
        SweepIdentity {
            id: format!("{:016x}", rand::random::<u64>()),
            created_at: now(),
            git_commit,
        }
    }
}

/// Unix time now, in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A sweep's identity, fixed by its first `run`: tracking servers find its runs by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepIdentity {
    /// Random, 16 hex digits.
    pub id: String,
    /// Unix time of the first `run`.
    pub created_at: u64,
    /// Git commit of the repository holding the spec, when it is in one.
    pub git_commit: Option<String>,
}

/// Wall-clock times of a trial, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Unix time the trial started.
    pub started_at: u64,
    /// Loading data and weights.
    pub setup_seconds: f64,
    /// Training.
    pub train_seconds: f64,
    /// Evaluation.
    pub eval_seconds: f64,
}

/// Everything known about one ended trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Stable id.
    pub id: String,
    /// Position in the plan.
    pub index: usize,
    /// Strategies that resolved to this trial (written as their names, or `raw`).
    pub strategies: StrategyLabels,
    /// Blocks 1..t started from the source model.
    pub transfer_depth: usize,
    /// Blocks 1..f were frozen.
    pub freeze_depth: usize,
    /// Swept values.
    pub axes: std::collections::BTreeMap<String, serde_json::Value>,
    /// Finished or failed.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// Evaluation on the target's eval data.
    pub eval: Option<Evaluation>,
    /// Training loss every `log_every` steps.
    pub curve: Vec<CurvePoint>,
    /// Optimizer steps run.
    pub steps: usize,
    /// Times.
    pub timings: Timings,
    /// Device the trial ran on.
    pub device: String,
    /// Source model it started from: a pretrain hash or a checkpoint path.
    pub source: Option<String>,
    /// xferlab version that ran it.
    pub xferlab_version: String,
    /// Canonical config.
    pub config: TrialConfig,
    /// With `train.early_stopping`: the best validation's step and value, and the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<crate::train::EarlyStop>,
    /// Parameters the optimizer trained (the head's included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_parameters: Option<usize>,
    /// `auto_depth`: the depth chosen and how (its rungs); `freeze_depth` is the chosen one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_depth: Option<crate::auto_depth::AutoDepth>,
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    synced_temp(path, bytes)?
        .persist(path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()))(e.error))?;
    Ok(())
}

/// A new temporary file beside `path` (its folder created when missing), named
/// `.tmp-<file name>-<random>` so that `remove_stale_temps` can find what a killed writer left.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    // Readable by all, as files people open (reports, figures) should be.
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o644))
        .prefix(&temp_prefix(path))
        .tempfile_in(dir)
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!(".tmp-{}-", name.unwrap_or_default())
}

/// Removes the temporary files a killed writer of `path` left. Call it only while holding
/// the lock that guards writing `path`, so no live writer's file is removed.
pub fn remove_stale_temps(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            tracing::debug!(path = %stale.display(), "removing a temporary file a killed run left");
            std::fs::remove_file(&stale)
                .map_err(Error::io(format!("cannot remove {}", stale.display())))?;
        }
    }
    Ok(())
}

/// Writes `path` atomically with `save`, which writes the file it is given (e.g. a
/// safetensors writer). Its failures are the store's I/O errors, which stop a sweep.
pub fn save_atomic(path: &Path, save: impl FnOnce(&Path) -> candle_core::Result<()>) -> Result<()> {
    let context = || format!("cannot write {}", path.display());
    let temp = temp_beside(path)?;
    save(temp.path()).map_err(|e| Error::io(context())(std::io::Error::other(e)))?;
    // On disk before the rename, as records are: else a crash could leave an empty file
    // under the final name.
    temp.as_file().sync_all().map_err(Error::io(context()))?;
    temp.persist(path)
        .map_err(|e| Error::io(context())(e.error))?;
    Ok(())
}

/// A synced temporary file beside `path` holding `bytes`.
fn synced_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let context = || format!("cannot write {}", path.display());
    let mut file = temp_beside(path)?;
    std::io::Write::write_all(&mut file, bytes).map_err(Error::io(context()))?;
    file.as_file().sync_all().map_err(Error::io(context()))?;
    Ok(file)
}

/// An exclusive lock on a file, released when dropped or when the process dies.
pub struct Lock(#[allow(dead_code)] File);

/// Takes the lock on `path`: waits for it when `wait`, else returns None when it is held.
pub fn lock(path: &Path, wait: bool) -> Result<Option<Lock>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("cannot open lock {}", path.display())))?;
    if wait {
        file.lock()
            .map_err(Error::io(format!("cannot lock {}", path.display())))?;
        return Ok(Some(Lock(file)));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock(file))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("cannot lock {}", path.display()))(e))
        }
    }
}

/// A JSON file of the run store, read and parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes =
        std::fs::read(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
    parse_json(path, &bytes)
}

/// The JSON of a run-store file, or what is wrong with it.
fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::CorruptRecord {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// One sweep's folder in the run store.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

impl RunStore {
    /// The folder of sweep `name` under `store` (created on first write).
    pub fn new(store: &Path, name: &str) -> Self {
        RunStore {
            root: store.join(name),
        }
    }

    /// An existing sweep folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("plan.json").is_file() {
            return Err(Error::from(crate::error::InputError::new(format!(
                "{} is not a sweep folder of the run store (it has no plan.json)",
                root.display()
            )).with_help("give a folder like runs/<name>, or the spec file; `xferlab run SPEC` creates it")));
        }
        Ok(RunStore {
            root: root.to_path_buf(),
        })
    }

    /// The sweep a command names: a sweep folder (runs/NAME), or a spec file, whose sweep is
    /// looked up under `store`.
    pub fn find(run: &Path, store: &Path) -> Result<Self> {
        if run.is_file() {
            let loaded = crate::spec::load(run, &[])?;
            return RunStore::open(&store.join(&loaded.spec.name));
        }
        if !run.exists() {
            return Err(
                crate::error::InputError::new(format!("{} does not exist", run.display()))
                    .with_help("give a sweep folder (runs/NAME) or a spec file")
                    .into(),
            );
        }
        RunStore::open(run)
    }

    /// The resolved spec of the latest `run`, read back.
    pub fn saved_spec(&self) -> Result<crate::spec::Spec> {
        serde_yaml::from_str(&self.spec_yaml()?).map_err(|e| {
            crate::error::InputError::new(format!(
                "cannot read the spec saved in {}: {e}",
                self.root.display()
            ))
            .into()
        })
    }

    /// The transferability estimates `xferlab estimate` wrote, if it ran.
    pub fn estimates(&self) -> Result<Option<crate::estimate::Estimates>> {
        let path = self.root.join(crate::estimate::FILE);
        path.is_file().then(|| read_json(&path)).transpose()
    }

    /// The sweep folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Saves the resolved spec, the `--set` overrides it came with, and its plan.
    pub fn write_plan(&self, spec_yaml: &str, overrides: &[String], plan: &Plan) -> Result<()> {
        write_atomic(&self.root.join("spec.yaml"), spec_yaml.as_bytes())?;
        let json = serde_json::to_vec_pretty(overrides).expect("strings serialise");
        write_atomic(&self.root.join("overrides.json"), &json)?;
        let json = serde_json::to_vec_pretty(plan).expect("plans serialise");
        write_atomic(&self.root.join("plan.json"), &json)
    }

    /// The sweep's identity: the one saved, else `new` saved now (when processes race,
    /// the first to save wins and every one returns its identity).
    pub fn identity(&self, new: impl FnOnce() -> SweepIdentity) -> Result<SweepIdentity> {
        let path = self.root.join("sweep.json");
        if !path.is_file() {
            let json = serde_json::to_vec_pretty(&new()).expect("identities serialise");
            match synced_temp(&path, &json)?.persist_noclobber(&path) {
                Ok(_) => {}
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(format!("cannot write {}", path.display()))(
                        e.error,
                    ));
                }
            }
        }
        read_json(&path)
    }

    /// The saved plan.
    pub fn plan(&self) -> Result<Plan> {
        read_json(&self.root.join("plan.json"))
    }

    /// The `--set` overrides of the latest `run` (none in a store made before they were kept).
    pub fn overrides(&self) -> Result<Vec<String>> {
        let path = self.root.join("overrides.json");
        if !path.is_file() {
            return Ok(Vec::new());
        }
        read_json(&path)
    }

    /// The sweep's identity, when a `run` made one.
    pub fn saved_identity(&self) -> Result<Option<SweepIdentity>> {
        let path = self.root.join("sweep.json");
        path.is_file().then(|| read_json(&path)).transpose()
    }

    /// The resolved spec of the latest `run`, as saved.
    pub fn spec_yaml(&self) -> Result<String> {
        let path = self.root.join("spec.yaml");
        std::fs::read_to_string(&path).map_err(Error::io(format!("cannot read {}", path.display())))
    }

    /// Takes the lock that serialises finding or creating this sweep's tracking-server runs.
    pub fn lock_tracking(&self) -> Result<Lock> {
        Ok(lock(&self.root.join("locks").join("tracking.lock"), true)?.expect("waited for"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("trials").join(format!("{id}.json"))
    }

    /// Where a trial's trained weights go.
    pub fn checkpoint_path(&self, id: &str) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("{id}.safetensors"))
    }

    /// The record of trial `id`, if it has one.
    pub fn record(&self, id: &str) -> Result<Option<TrialRecord>> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => parse_json(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read record {}", path.display()))(
                e,
            )),
        }
    }

    /// Writes a trial's record (atomically; the record is what marks a trial done).
    pub fn write_record(&self, record: &TrialRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("records serialise");
        write_atomic(&self.record_path(&record.id), &json)
    }

    /// Takes trial `id`'s lock, or None when another process holds it (with `wait`, waits for
    /// it instead); with it, clears what a killed run of the trial left half-written.
    pub fn lock_trial(&self, id: &str, wait: bool) -> Result<Option<Lock>> {
        let path = self.trial_lock_path(id);
        // `is_running` holds the lock for an instant; a runner meeting that tries again.
        let mut tries = 0;
        let lock = loop {
            match lock(&path, wait)? {
                Some(lock) => break lock,
                None if tries < 3 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                None => return Ok(None),
            }
        };
        remove_stale_temps(&self.record_path(id))?;
        remove_stale_temps(&self.checkpoint_path(id))?;
        Ok(Some(lock))
    }

    /// Whether a process (here or on another machine sharing the store) holds trial `id`'s
    /// lock: it is running the trial. Tells by taking the lock for an instant.
    pub fn is_running(&self, id: &str) -> Result<bool> {
        let path = self.trial_lock_path(id);
        Ok(path.is_file() && lock(&path, false)?.is_none())
    }

    fn trial_lock_path(&self, id: &str) -> PathBuf {
        self.root.join("locks").join(format!("{id}.lock"))
    }

    /// Saves trial `id`'s trained weights with `save`, atomically.
    pub fn write_checkpoint(
        &self,
        id: &str,
        save: impl FnOnce(&Path) -> candle_core::Result<()>,
    ) -> Result<()> {
        save_atomic(&self.checkpoint_path(id), save)
    }

    /// The records of the plan's trials that have one, in plan order.
    pub fn records(&self, plan: &Plan) -> Result<Vec<TrialRecord>> {
        let mut records = Vec::new();
        for trial in &plan.trials {
            if let Some(record) = self.record(&trial.id)? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_is_not_json_is_a_corrupt_record_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path(), "sweep");
        let path = store.record_path("0123456789ab");
        write_atomic(&path, b"{\"id\": ").unwrap();
        match store.record("0123456789ab") {
            Err(error @ Error::CorruptRecord { .. }) => {
                let text = error.to_string();
                assert!(text.contains(&path.display().to_string()), "{text}");
                assert!(text.contains("line 1"), "{text}");
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        write_atomic(&dir.path().join("sweep").join("plan.json"), b"[]").unwrap();
        assert!(matches!(store.plan(), Err(Error::CorruptRecord { .. })));
    }
}
