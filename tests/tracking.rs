//! Sweeps logged to a real MLflow server, read back through its REST API: parent and nested
//! runs, params, metric histories, tags, artifacts; Ctrl-C; a server down at the start or
//! killed mid-sweep, then `sync` (twice); a rejected value named with its key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::mlflow::{self, Api, Run, Server};
use common::{SMALL_SWEEP, Test};
use serde_json::Value;

/// A sweep whose trials take long enough to be interrupted in the middle.
const SLOW: &str = "--set=train.steps=1500";

/// The parent run and the children by trial id; panics when a trial has two runs.
fn sweep_runs(api: &Api, experiment: &str) -> (Run, BTreeMap<String, Run>) {
    let runs = api.runs(experiment);
    let parents: Vec<&Run> = runs.iter().filter(|r| !r.is_child()).collect();
    assert_eq!(parents.len(), 1, "one parent run: {parents:?}");
    let parent = parents[0].clone();
    let mut children = BTreeMap::new();
    for run in runs.iter().filter(|r| r.is_child()) {
        assert_eq!(run.tag("mlflow.parentRunId"), Some(parent.id()));
        let trial = run.tag("xferlab.trial_id").expect("a trial id tag");
        assert!(
            children.insert(trial.clone(), run.clone()).is_none(),
            "trial {trial} has two runs"
        );
    }
    (parent, children)
}

/// Every record is on the server once, with its params, full curve and final metrics.
fn assert_uploaded(api: &Api, experiment: &str, records: &BTreeMap<String, Value>) -> Run {
    let (parent, children) = sweep_runs(api, experiment);
    assert_eq!(
        children.keys().collect::<BTreeSet<_>>(),
        records.keys().collect::<BTreeSet<_>>()
    );
    for (id, record) in records {
        let run = &children[id];
        assert_eq!(run.info("status"), "FINISHED", "{id}");
        let config = &record["config"];
        let param = |key| {
            run.param(key)
                .unwrap_or_else(|| panic!("{id} has no param {key}"))
        };
        assert_eq!(
            param("transfer_depth"),
            record["transfer_depth"].to_string()
        );
        assert_eq!(param("freeze_depth"), record["freeze_depth"].to_string());
        assert_eq!(param("seed"), config["seed"].to_string());
        assert_eq!(
            param("per_class"),
            config["target"]["train"]["per_class"].to_string()
        );
        assert_eq!(
            param("lr").parse::<f64>().unwrap(),
            config["train"]["lr"].as_f64().unwrap()
        );
        let strategies: Vec<&str> = record["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(param("strategy"), strategies.join("="));
        assert_eq!(
            param("model.arch"),
            config["model"]["arch"].as_str().unwrap()
        );
        let curve: Vec<(u64, f64)> = record["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["step"].as_u64().unwrap(), p["loss"].as_f64().unwrap()))
            .collect();
        assert!(!curve.is_empty());
        assert_eq!(api.history(&run.id(), "train_loss"), curve, "{id}");
        assert_eq!(
            run.metric("eval_accuracy"),
            record["eval"]["accuracy"].as_f64()
        );
        for (metric, key) in [("eval_macro_f1", "macro_f1"), ("eval_ece", "ece")] {
            assert_eq!(run.metric(metric), record["eval"][key].as_f64(), "{metric}");
        }
        assert_eq!(
            run.metric("trainable_parameters"),
            record["trainable_parameters"].as_f64()
        );
        assert_eq!(run.tag("xferlab.device").as_deref(), Some("cpu"));
        assert_eq!(
            run.tag("xferlab.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(run.tag("xferlab.spec_hash").is_some());
        assert_eq!(api.artifacts(&run.id()), ["record.json"]);
    }
    parent
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn a_sweep_is_a_parent_run_with_one_nested_run_per_trial() {
    let uri = mlflow::shared();
    let experiment = unique("nested");
    let secret = "s3cret-token-4711";
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        // A password in the address too: it must not reach the store either.
        .env(
            "MLFLOW_TRACKING_URI",
            &uri.replace("http://", &format!("http://ann:{secret}@")),
        )
        .env("MLFLOW_TRACKING_TOKEN", secret);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(test.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "spec.yaml"]);
    git(&["commit", "-q", "-m", "spec"]);
    let commit = git(&["rev-parse", "HEAD"]);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    // Estimates made before the sweep go to its parent run with the report.
    let estimated = test.run(&["estimate", "spec.yaml", &set, "--device", "cpu"]);
    assert_eq!(estimated.code, 0, "{}", estimated.stderr);
    assert!(
        estimated.stderr.contains("MLflow: they go to"),
        "{}",
        estimated.stderr
    );
    // A loss at every one of 1200 steps: more metrics than one log-batch call may carry.
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        &set,
        "--set=train.steps=1200",
        "--set=train.log_every=1",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("16 trial(s) uploaded"),
        "{}",
        ran.stderr
    );

    let api = Api::new(uri);
    let records = test.records("small");
    assert_eq!(records.len(), 16);
    let parent = assert_uploaded(&api, &experiment, &records);
    assert_eq!(parent.info("status"), "FINISHED");
    assert_eq!(parent.info("run_name"), "small");
    assert_eq!(parent.param("sweep.trials").as_deref(), Some("16"));
    assert_eq!(parent.tag("xferlab.git_commit"), Some(commit.clone()));
    let (_, children) = sweep_runs(&api, &experiment);
    for run in children.values() {
        assert_eq!(run.tag("xferlab.git_commit"), Some(commit.clone()));
        assert_eq!(api.history(&run.id(), "train_loss").len(), 1200);
    }
    assert_eq!(
        api.artifacts(&parent.id()),
        ["estimates.json", "report.json", "report.md", "spec.yaml"]
    );
    let estimates = api.artifact(&parent, "estimates.json");
    assert!(estimates.contains("\"logme\""), "{estimates}");
    let spec = api.artifact(&parent, "spec.yaml");
    assert!(spec.contains(&experiment), "the resolved spec: {spec}");
    let report = api.artifact(&parent, "report.md");
    assert!(report.contains("| finetune"), "{report}");
    assert!(report.contains("Kendall's tau"), "{report}");

    // The token went to the server only: not to the store, the output, or the server's data.
    let search = serde_json::to_string(
        &api.runs(&experiment)
            .iter()
            .map(|r| &r.0)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!search.contains(secret));
    assert!(!ran.stdout.contains(secret) && !ran.stderr.contains(secret));
    for entry in walk(&test.join("runs")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the token",
            entry.display()
        );
    }
}

#[test]
fn a_text_sweep_is_logged_as_an_image_sweep_is() {
    let uri = mlflow::shared();
    let experiment = unique("texts");
    let test = Test::new()
        .file("spec.yaml", common::text_sweep())
        .env("MLFLOW_TRACKING_URI", uri);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", &set]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("4 trial(s) uploaded"), "{}", ran.stderr);
    let api = Api::new(uri);
    let records = test.records("texts");
    assert_eq!(records.len(), 4);
    let parent = assert_uploaded(&api, &experiment, &records);
    assert_eq!(parent.info("status"), "FINISHED");
    let (_, children) = sweep_runs(&api, &experiment);
    for run in children.values() {
        assert_eq!(run.param("model.arch").as_deref(), Some("bert"));
        assert_eq!(run.param("model.max_length").as_deref(), Some("24"));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits until the sweep has `n` records, checking the process still runs.
fn wait_for_records(test: &Test, child: &mut std::process::Child, n: usize) {
    let started = Instant::now();
    while test.records("small").len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no record came"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended too early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_marks_runs_killed_and_a_resumed_sweep_finishes_them() {
    let uri = mlflow::shared();
    let experiment = unique("ctrl-c");
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        .env("MLFLOW_TRACKING_URI", uri);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let args = ["run", "spec.yaml", "--device", "cpu", SLOW, &set];
    let mut child = test
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_records(&test, &mut child, 2);
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );

    let interrupted: Vec<String> = test
        .records("small")
        .into_iter()
        .filter(|(_, r)| r["status"] == "interrupted")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        interrupted.len(),
        1,
        "the trial in progress is marked: {stderr}"
    );
    let api = Api::new(uri);
    let (parent, children) = sweep_runs(&api, &experiment);
    assert_eq!(parent.info("status"), "KILLED");
    assert_eq!(children[&interrupted[0]].info("status"), "KILLED");

    let ran = test.run(&args);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let records = test.records("small");
    assert!(records.values().all(|r| r["status"] == "finished"));
    let parent = assert_uploaded(&api, &experiment, &records);
    assert_eq!(parent.info("status"), "FINISHED");
}

#[test]
fn a_server_down_at_the_start_costs_nothing_and_sync_uploads_later() {
    let uri = mlflow::shared();
    let experiment = unique("down");
    let nobody = format!("http://127.0.0.1:{}", mlflow::free_port());
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        .env("MLFLOW_TRACKING_URI", &nobody);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", &set]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("finetune"), "the table is printed");
    assert!(
        ran.stderr.contains("16 trial(s) not uploaded"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("xferlab sync runs/small"),
        "{}",
        ran.stderr
    );
    assert_eq!(test.records("small").len(), 16);

    for (time, expected) in [
        (1, "16 trial(s) uploaded, 0 already there"),
        (2, "0 trial(s) uploaded, 16 already there"),
    ] {
        let synced = test.run(&["sync", "runs/small", "--to", uri]);
        assert_eq!(synced.code, 0, "sync {time}: {}", synced.stderr);
        assert!(
            synced.stderr.contains(expected),
            "sync {time}: {}",
            synced.stderr
        );
    }
    let parent = assert_uploaded(&Api::new(uri), &experiment, &test.records("small"));
    assert_eq!(parent.info("status"), "FINISHED");
}

#[test]
fn a_server_killed_mid_sweep_loses_nothing_and_sync_twice_uploads_each_trial_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = mlflow::free_port();
    let mut server = Server::start(dir.path(), port);
    let experiment = unique("killed");
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        .env("MLFLOW_TRACKING_URI", &server.uri);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let mut child = test
        .command(&["run", "spec.yaml", "--device", "cpu", SLOW, &set])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_records(&test, &mut child, 3);
    server.stop();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not uploaded"), "{stderr}");
    assert_eq!(
        test.records("small").len(),
        16,
        "the sweep finished locally"
    );

    let server = Server::start(dir.path(), port);
    for time in 1..=2 {
        let synced = test.run(&["sync", "runs/small"]);
        assert_eq!(synced.code, 0, "sync {time}: {}", synced.stderr);
    }
    let parent = assert_uploaded(&Api::new(&server.uri), &experiment, &test.records("small"));
    assert_eq!(parent.info("status"), "FINISHED");
}

#[test]
fn a_value_the_server_rejects_is_reported_with_its_key_and_the_sweep_goes_on() {
    let uri = mlflow::shared();
    let experiment = unique("rejected");
    // Param keys may have at most 250 characters; this dataset's keys have more.
    let long = "d".repeat(260);
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP.replace("glyphs", &long))
        .env("MLFLOW_TRACKING_URI", uri);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        "--set=sweep.seed=[0]",
        &set,
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("param `datasets.{long}.format`")),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("INVALID_PARAMETER_VALUE"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("exceeds the maximum length of 250"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("8 trial(s) not uploaded"),
        "{}",
        ran.stderr
    );
    assert_eq!(test.records("small").len(), 8);

    let synced = test.run(&["sync", "runs/small"]);
    assert_eq!(
        synced.code, 1,
        "a rejected upload fails sync: {}",
        synced.stderr
    );
    assert!(
        synced.stderr.contains("exceeds the maximum length"),
        "{}",
        synced.stderr
    );
}

#[test]
fn failed_trials_end_failed_with_their_reason() {
    let uri = mlflow::shared();
    let experiment = unique("failed");
    // SGD at an absurd learning rate: every trial's loss overflows.
    let spec = SMALL_SWEEP.replace(
        "train: {steps: 60, batch_size: 16, lr: 1.0e-3, log_every: 20}",
        "train: {steps: 60, batch_size: 16, optimizer: sgd, lr: 1.0e+38, log_every: 20}",
    );
    let test = Test::new()
        .file("spec.yaml", spec)
        .env("MLFLOW_TRACKING_URI", uri);
    let set = format!("--set=tracking.mlflow.experiment={experiment}");
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        "--set=sweep.seed=[0]",
        &set,
    ]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("8 trial(s) uploaded"), "{}", ran.stderr);
    let (parent, children) = sweep_runs(&Api::new(uri), &experiment);
    assert_eq!(parent.info("status"), "FAILED");
    assert_eq!(children.len(), 8);
    for run in children.values() {
        assert_eq!(run.info("status"), "FAILED");
        let error = run.tag("xferlab.error").expect("the reason as a tag");
        assert!(
            error.starts_with("training loss became NaN or infinite"),
            "{error}"
        );
        assert_eq!(run.metric("eval_accuracy"), None);
    }
}
