//! A sweep on a Slurm cluster: one job array whose tasks each run a share of the plan's
//! trials with `xferlab run --trial`, all writing into one shared run store. Slurm schedules;
//! the run store's per-trial locks and atomic records keep every trial run once, whoever runs
//! it. `submit` writes a readable sbatch script into the store (so a submission can be read
//! and re-run by hand) and hands it to `sbatch`; `status` asks `squeue` (and `sacct` where
//! accounting answers) about the jobs the store remembers.
//!
//! ```text
//! <store>/<name>/slurm/submit-<n>.sbatch      the n-th submission's script
//! <store>/<name>/slurm/jobs/<job id>.json     what it submitted: job id, script, trial ids
//! <store>/<name>/slurm/logs/<job>_<task>.out  each array task's output
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, InputError, Result};
use crate::experiment::Experiment;
use crate::spec::SlurmSpec;
use crate::store::{RunStore, Status, write_atomic};

/// Seconds before a task's time limit that Slurm sends SIGUSR1 (`--signal`): time to record
/// the trial in progress as interrupted and exit cleanly.
pub const WARNING_SECONDS: u32 = 120;

/// What `submit` sends.
pub struct Submission<'a> {
    /// The checked spec.
    pub experiment: &'a Experiment,
    /// Root of the run store; written into the script as an absolute path, since tasks may
    /// start anywhere.
    pub store: PathBuf,
    /// The array's settings: the spec's `launcher.slurm` with the command line's flags on top.
    pub settings: SlurmSpec,
    /// Only the trials without a finished record.
    pub resume: bool,
}

/// A submission written (and, unless it was a dry run, submitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Slurm's job id of the array; None for a dry run.
    pub job_id: Option<String>,
    /// The sbatch script.
    pub script: PathBuf,
    /// Array tasks.
    pub tasks: usize,
    /// Trial ids, in the order tasks take them.
    pub trials: Vec<String>,
    /// Unix time of the submission.
    pub submitted_at: u64,
}

impl Submission<'_> {
    /// The trials to submit: all of the plan's, or with `resume` those without a finished
    /// record.
    fn trials(&self, store: &RunStore) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for trial in &self.experiment.plan.trials {
            let done = self.resume
                && store
                    .record(&trial.id)?
                    .is_some_and(|r| r.status == Status::Finished);
            if !done {
                ids.push(trial.id.clone());
            }
        }
        Ok(ids)
    }

    /// Writes the script into the store and, unless `dry_run`, submits it with `sbatch`.
    /// None when every trial already has a finished record.
    pub fn submit(&self, dry_run: bool) -> Result<Option<Job>> {
        // Without sbatch, refuse before writing anything.
        if !dry_run {
            run_sbatch(&["--version".as_ref()])?;
        }
        let (store, _) = crate::runner::open_store(self.experiment, &absolute(&self.store))?;
        let trials = self.trials(&store)?;
        if trials.is_empty() {
            return Ok(None);
        }
        let per_task = self.settings.trials_per_task.get();
        let tasks = trials.len().div_ceil(per_task);
        let dir = store.root().join("slurm");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(Error::io(format!("cannot create {}", logs.display())))?;
        let script = next_script(&dir)?;
        write_atomic(&script, self.script(&script, &store, &trials).as_bytes())?;
        let mut job = Job {
            job_id: None,
            script,
            tasks,
            trials,
            submitted_at: crate::store::now(),
        };
        if dry_run {
            return Ok(Some(job));
        }
        let id = sbatch(&job.script)?;
        let record = dir.join("jobs").join(format!("{id}.json"));
        job.job_id = Some(id);
        write_atomic(
            &record,
            &serde_json::to_vec_pretty(&job).expect("jobs serialise"),
        )?;
        Ok(Some(job))
    }

    /// The sbatch script: `#SBATCH` options, then the trial ids and the `xferlab run` each
    /// array task execs for its share.
    pub fn script(&self, path: &Path, store: &RunStore, trials: &[String]) -> String {
        let settings = &self.settings;
        let per_task = settings.trials_per_task.get();
        let tasks = trials.len().div_ceil(per_task);
        let loaded = &self.experiment.loaded;
        let name = &self.experiment.plan.name;
        let spec = absolute(&loaded.file.path);
        let logs = store.root().join("slurm").join("logs");
        let throttle = settings
            .parallel
            .map(|n| format!("%{n}"))
            .unwrap_or_default();
        let mut options = vec![
            format!("--job-name=xferlab-{name}"),
            format!("--array=0-{}{throttle}", tasks - 1),
            format!("--output={}", logs.join("%A_%a.out").display()),
            format!("--chdir={}", absolute(Path::new(".")).display()),
            // Slurm's warning before the time limit: xferlab records the trial in progress as
            // interrupted and exits; finished trials are kept.
            format!("--signal=B:USR1@{WARNING_SECONDS}"),
            // A preempted or failed node's task is requeued; it skips what is finished.
            "--requeue".to_string(),
            "--open-mode=append".to_string(),
        ];
        let optional = [
            ("partition", settings.partition.clone()),
            ("time", settings.time.clone()),
            (
                "gpus-per-task",
                settings.gpus_per_task.map(|n| n.to_string()),
            ),
            (
                "cpus-per-task",
                settings.cpus_per_task.map(|n| n.to_string()),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                options.push(format!("--{key}={value}"));
            }
        }
        options.extend(settings.sbatch_args.iter().cloned());

        let mut run = vec![
            quote(
                &std::env::current_exe()
                    .map_or_else(|_| "xferlab".to_string(), |p| p.display().to_string()),
            ),
            "run".into(),
            quote(&spec.display().to_string()),
            "--store".into(),
            quote(
                &store
                    .root()
                    .parent()
                    .unwrap_or(store.root())
                    .display()
                    .to_string(),
            ),
        ];
        for set in &loaded.overrides {
            run.push("--set".into());
            run.push(quote(set));
        }
        // Each trial belongs to one task: one held by another process (the task's last run,
        // still exiting after a requeue; an earlier array's task) is waited for, not skipped.
        run.push("--wait".into());
        run.push("--trial".into());
        run.push("\"${SHARE[*]}\"".into());

        let mut out = format!(
            "#!/bin/bash\n\
             # xferlab sweep `{name}`: {} trial(s) as {tasks} array task(s) of up to {per_task},\n\
             # written by `xferlab submit`. Submit it again by hand: sbatch {}\n\
             # Follow it: xferlab status {}   (or squeue --me)\n",
            trials.len(),
            path.display(),
            quote(&spec.display().to_string()),
        );
        for option in &options {
            out.push_str(&format!("#SBATCH {option}\n"));
        }
        out.push_str(&format!(
            "\nset -euo pipefail\n\
             # As many threads as cores Slurm gave the task.\n\
             export RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}\n\n\
             # Plan trial ids (`xferlab plan SPEC` lists them); task i runs the {per_task} from i*{per_task}.\n\
             TRIALS=(\n"
        ));
        for chunk in trials.chunks(per_task) {
            out.push_str(&format!("  {}\n", chunk.join(" ")));
        }
        out.push_str(&format!(
            ")\n\
             SHARE=(\"${{TRIALS[@]:SLURM_ARRAY_TASK_ID*{per_task}:{per_task}}}\")\n\
             IFS=,\n\
             # exec: the signals Slurm sends the batch shell reach xferlab itself.\n\
             exec {}\n",
            run.join(" ")
        ));
        out
    }
}

/// The next free `submit-<n>.sbatch` in `dir`.
fn next_script(dir: &Path) -> Result<PathBuf> {
    let taken = std::fs::read_dir(dir)
        .map_err(Error::io(format!("cannot read {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("submit-") && name.ends_with(".sbatch")
        })
        .count();
    Ok(dir.join(format!("submit-{}.sbatch", taken + 1)))
}

/// Runs `sbatch` with `args`; one that is not installed is a clear error.
fn run_sbatch(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    Command::new("sbatch")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => InputError::new(
                "`sbatch` was not found: xferlab submit --slurm needs Slurm's client commands",
            )
            .with_help(
                "run it on the cluster's login node, or install them (Debian: apt install \
                 slurm-client); `--dry-run` writes the script without submitting it",
            )
            .into(),
            _ => Error::io("cannot run sbatch")(e),
        })
}

/// Submits `script`; Slurm's job id, or Slurm's own words when it refuses.
fn sbatch(script: &Path) -> Result<String> {
    let output = run_sbatch(&["--parsable".as_ref(), script.as_os_str()])?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(InputError::new(format!("sbatch refused the job: {said}"))
            .with_help(format!(
                "the script is {}; `sinfo` lists partitions",
                script.display()
            ))
            .into());
    }
    // `--parsable` prints `id` or `id;cluster`.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout.trim().split(';').next().unwrap_or_default();
    if id.is_empty() {
        return Err(Error::io("sbatch gave no job id")(std::io::Error::other(
            stdout.into_owned(),
        )));
    }
    Ok(id.to_string())
}

/// The jobs submitted for a sweep, oldest first.
pub fn jobs(store: &RunStore) -> Result<Vec<Job>> {
    let dir = store.root().join("slurm").join("jobs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()))(e)),
    };
    let mut jobs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            jobs.push(crate::store::read_json::<Job>(&path)?);
        }
    }
    jobs.sort_by_key(|j| j.submitted_at);
    Ok(jobs)
}

/// What Slurm says about a job's array tasks: `squeue`'s states of those still queued or
/// running, and `sacct`'s of all where accounting answers. None when neither answers.
pub fn describe(job: &str) -> Option<String> {
    // Every task, filtered here: `squeue -j JOB` can miss a requeued task waiting to restart.
    let queued = answer("squeue", &["-h", "-r", "-o", "%i %T"]).map(|all| {
        (all.lines())
            .filter_map(|line| line.split_once(' '))
            .filter(|(task, _)| task.split('_').next() == Some(job))
            .map(|(_, state)| format!("{state}\n"))
            .collect::<String>()
    });
    let accounted = answer("sacct", &["-n", "-X", "-P", "-j", job, "-o", "State"]);
    let tally = |lines: &str| {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for state in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            *counts.entry(state).or_default() += 1;
        }
        counts
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (queued, accounted) {
        (_, Some(accounted)) if !accounted.trim().is_empty() => {
            Some(format!("sacct: {}", tally(&accounted)))
        }
        (Some(queued), _) if queued.trim().is_empty() => {
            Some("squeue: none queued or running".into())
        }
        (Some(queued), _) => Some(format!("squeue: {}", tally(&queued))),
        (None, _) => None,
    }
}

/// A Slurm command's output, when it ran and succeeded.
fn answer(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `path` made absolute against the current folder (compute nodes start elsewhere).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_survive_the_shell() {
        for word in [
            "plain",
            "train.lr=0.01",
            "sweep.seed=[0, 1]",
            "it's",
            "",
            "$HOME",
        ] {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }
}
