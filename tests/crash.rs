//! Crashes: a sweep killed with SIGKILL again and again (at random moments, and just as a
//! record or a checkpoint is being written) ends with exactly the records of a run that was
//! never killed, each once and whole; a full disk is a clear error that loses nothing.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{SMALL_SWEEP, Test};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// 40 trials with checkpoints; a loss logged every step makes records large enough that a
/// kill can land while one is being written.
fn spec() -> String {
    SMALL_SWEEP
        .replace("steps: 60,", "steps: 300,")
        .replace("log_every: 20}", "log_every: 1}")
        .replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4]")
        + "checkpoints: true\n"
}

/// Names of the temporary files in a folder of the run store.
fn temps(test: &Test, folder: &str) -> BTreeSet<String> {
    std::fs::read_dir(test.join(&format!("runs/small/{folder}")))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().to_string_lossy().into_owned();
                    name.starts_with(".tmp-").then_some(name)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a trial's record says, without its timings (which differ from run to run).
fn result(record: &Value) -> Value {
    let mut record = record.clone();
    record.as_object_mut().unwrap().remove("timings");
    record
}

enum Moment {
    /// After a random delay: pretraining, training, evaluating, anything.
    Random(Duration),
    /// As soon as a temporary file appears in this folder of the sweep.
    Writing(&'static str),
}

/// Runs until the moment comes and kills the run there; false when the run ended first.
fn kill_at(child: &mut Child, test: &Test, moment: &Moment) -> bool {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = match moment {
            Moment::Random(delay) => started.elapsed() >= *delay,
            Moment::Writing(folder) => !temps(test, folder).is_empty(),
        };
        if now {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run hangs"
        );
    }
}

#[test]
fn a_sweep_killed_at_random_moments_ends_with_every_record_once_and_whole() {
    let reference = Test::new().file("spec.yaml", spec());
    let ran = reference.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let expected = reference.records("small");
    assert_eq!(expected.len(), 40);

    let test = Test::new().file("spec.yaml", spec());
    let seed = 20261123;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut kills, mut mid_record, mut mid_checkpoint) = (0, 0, 0);
    for attempt in 0..60 {
        let moment = match attempt % 3 {
            0 => Moment::Random(Duration::from_millis(rng.random_range(0..400))),
            1 => Moment::Writing("trials"),
            _ => Moment::Writing("checkpoints"),
        };
        let mut child = test
            .command(&["run", "spec.yaml", "--device", "cpu"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if !kill_at(&mut child, &test, &moment) {
            break;
        }
        kills += 1;
        // A temporary file left behind means the kill landed inside that write.
        mid_record += usize::from(!temps(&test, "trials").is_empty());
        mid_checkpoint += usize::from(!temps(&test, "checkpoints").is_empty());
        let done = test.records("small");
        assert!(done.values().all(|r| r["status"] == "finished"));
        if kills >= 30 {
            break;
        }
    }
    eprintln!(
        "seed {seed}: {kills} kills, {mid_record} inside a record write, {mid_checkpoint} inside a checkpoint write"
    );
    assert!(kills >= 20, "only {kills} kills before the sweep ended");
    assert!(mid_record >= 1, "no kill landed inside a record write");
    assert!(
        mid_checkpoint >= 1,
        "no kill landed inside a checkpoint write"
    );

    let ran = test.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let got = test.records("small");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (id, record) in &expected {
        assert_eq!(result(&got[id]), result(record), "trial {id} differs");
        assert!(
            test.join(&format!("runs/small/checkpoints/{id}.safetensors"))
                .is_file()
        );
    }
    assert!(
        temps(&test, "trials").is_empty(),
        "stale temporary records left"
    );
    assert!(
        temps(&test, "checkpoints").is_empty(),
        "stale temporary checkpoints left"
    );
    let report = test.run(&["report", "runs/small"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(
        report
            .stdout
            .starts_with("small: 40 trials, 40 finished, 0 failed, 0 not run"),
        "{}",
        report.stdout
    );
}

/// Runs `script` in a private mount namespace (as root: directly) where `dir` is a tmpfs of
/// `size`, so the store can fill up for real.
fn on_small_disk(dir: &Path, size: &str, script: &str) -> std::process::Output {
    let mount = format!(
        "mount -t tmpfs -o size={size} tmpfs '{}' && {script}",
        dir.display()
    );
    std::process::Command::new("unshare")
        .args(["--map-root-user", "--mount", "sh", "-c", &mount])
        .output()
        .expect("unshare runs")
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing_written() {
    let test = Test::new().file("spec.yaml", spec());
    let store = test.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let xferlab = common::binary();
    // 400 KiB: the source model, a few records and checkpoints, then no space.
    let output = on_small_disk(
        &store,
        "400k",
        &format!(
            "cd '{}' && '{xferlab}' run spec.yaml --device cpu --store store 2>&1; echo \"exit $?\"; \
             '{xferlab}' report store/small 2>&1; echo \"report exit $?\"",
            test.path().display()
        ),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("exit 1\n"),
        "a run-time error exits with 1: {text}"
    );
    assert!(
        text.contains("report exit 0"),
        "what was written still reads: {text}"
    );
    let finished: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("small: 40 trials, "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no report header: {text}"));
    assert!(
        (1..40).contains(&finished),
        "some trials were written before the disk filled: {text}"
    );
}

#[test]
fn a_store_that_cannot_be_created_is_a_clear_error() {
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        .file("store", "a file where the store's folder should be");
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", "--store", "store"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with("error: cannot create store/small"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
}
