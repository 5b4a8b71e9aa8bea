//! End to end on generated data: run, interrupt with SIGKILL, resume, report; one trial alone;
//! several processes on one store; the same trial twice gives the same record.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{SMALL_SWEEP, Test};

fn records(test: &Test, name: &str) -> Vec<serde_json::Value> {
    let dir = test.join(&format!("runs/{name}/trials"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            serde_json::from_slice(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{} is not whole: {e}", p.display()))
        })
        .collect()
}

fn plan_ids(test: &Test) -> BTreeSet<String> {
    let ran = test.run(&["plan", "spec.yaml", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    plan["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_sweep_resumes_and_loses_nothing() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let ids = plan_ids(&test);
    assert_eq!(ids.len(), 16, "4 strategies over 2 sizes x 2 seeds");

    // Kill -9 as soon as the first record lands, mid-sweep.
    let mut child = test
        .command(&["run", "spec.yaml", "--device", "cpu"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while records(&test, "small").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no record was written"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let survived = records(&test, "small").len();
    assert!(
        survived >= 1 && survived < ids.len(),
        "killed after {survived} of {} trials",
        ids.len()
    );

    let resumed = test.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed
            .stderr
            .contains(&format!("{survived} trial(s) already finished")),
        "{}",
        resumed.stderr
    );
    let done: Vec<String> = records(&test, "small")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(done.iter().cloned().collect::<BTreeSet<_>>(), ids);
    assert_eq!(done.len(), ids.len());
    assert!(
        records(&test, "small")
            .iter()
            .all(|r| r["status"] == "finished" && r["eval"]["accuracy"].as_f64().is_some())
    );
    let leftovers: Vec<_> = std::fs::read_dir(test.join("runs/small/trials"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".json"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );

    // A third run has nothing left to do.
    let again = test.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert!(
        again
            .stderr
            .contains(&format!("{} trial(s) already finished", ids.len())),
        "{}",
        again.stderr
    );

    // The report reads the store, by folder or by spec, in every format.
    let numbers = [
        (r"[-+]?\d+\.\d{4}", "[x.xxxx]"),
        (r"about \d+ seeds", "about [n] seeds"),
    ];
    let table = test.run(&["report", "runs/small"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    insta::with_settings!({filters => numbers.to_vec()}, {
        insta::assert_snapshot!("report_table", table.stdout);
        insta::assert_snapshot!("report_md", test.run(&["report", "spec.yaml", "--format", "md"]).stdout);
    });
    let csv = test
        .run(&["report", "runs/small", "--format", "csv"])
        .stdout;
    assert_eq!(csv.lines().count(), 1 + 8, "header and 8 groups:\n{csv}");
    assert!(
        csv.starts_with(
            "strategy,t,f,target.train.per_class,finished,failed,missing,accuracy_mean"
        )
    );
    let json: serde_json::Value = serde_json::from_str(
        &test
            .run(&["report", "runs/small", "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(json["finished"], 16);
    let scratch = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["strategy"] == "scratch")
        .unwrap();
    assert_eq!(scratch["count"], 2);
    assert!(scratch["gain"].is_null(), "scratch has no gain over itself");
    let transfer = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["strategy"] == "transfer")
        .unwrap();
    assert_eq!(transfer["gain"]["n"], 2, "paired over both seeds");
    assert_eq!(transfer["value"]["n"], 2);
    assert!(transfer["value"]["ci95"].as_f64().unwrap() > 0.0);
}

#[test]
fn one_trial_runs_alone_by_index_or_id() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let ids: Vec<String> = plan_ids(&test).into_iter().collect();
    let by_index = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "3"]);
    assert_eq!(by_index.code, 0, "{}", by_index.stderr);
    assert_eq!(records(&test, "small").len(), 1);
    assert_eq!(records(&test, "small")[0]["index"], 3);
    let by_id = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        "--trial",
        &ids[0][..6],
    ]);
    assert_eq!(by_id.code, 0, "{}", by_id.stderr);
    assert_eq!(records(&test, "small").len(), 2);
    assert!(by_id.stdout.contains("2 finished"), "{}", by_id.stdout);
    let missing = test.run(&["run", "spec.yaml", "--trial", "999"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("no trial has index or id `999`"),
        "{}",
        missing.stderr
    );
}

#[test]
fn processes_sharing_a_store_run_each_trial_once() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let ids = plan_ids(&test);
    let children: Vec<_> = (0..3)
        .map(|_| {
            test.command(&["run", "spec.yaml", "--device", "cpu"])
                .output()
        })
        .collect();
    let mut ran_now = 0;
    for output in children {
        let output = output.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        // "run store: ... (N run now, ..."
        let n: usize = stderr
            .split(" run now")
            .next()
            .unwrap()
            .rsplit('(')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        ran_now += n;
    }
    let done = records(&test, "small");
    assert_eq!(done.len(), ids.len());
    assert_eq!(
        ran_now,
        ids.len(),
        "every trial ran exactly once across the processes"
    );
}

#[test]
fn a_trial_run_twice_gives_the_same_record() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let first = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "2"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let a = records(&test, "small").remove(0);
    assert!(
        first.stderr.contains("pretraining source model"),
        "{}",
        first.stderr
    );
    // The sweep folder goes; the pretrained source model stays in the store and is reused.
    std::fs::remove_dir_all(test.join("runs/small")).unwrap();
    let second = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "2"]);
    assert!(!second.stderr.contains("pretraining"), "{}", second.stderr);
    let b = records(&test, "small").remove(0);
    assert_eq!(a["eval"], b["eval"]);
    assert_eq!(a["curve"], b["curve"]);
    assert_eq!(a["config"], b["config"]);
    assert!(
        a["strategies"][0] == "partial_freeze" && a["freeze_depth"] == 1,
        "{a}"
    );
}

#[test]
fn a_diverging_trial_is_recorded_as_failed_and_the_sweep_goes_on() {
    // SGD at an absurd learning rate: the loss overflows to infinity or NaN.
    let spec = SMALL_SWEEP.replace(
        "train: {steps: 60, batch_size: 16, lr: 1.0e-3, log_every: 20}",
        "train: {steps: 60, batch_size: 16, optimizer: sgd, lr: 1.0e+38, log_every: 20}",
    );
    let test = Test::new().file("spec.yaml", spec);
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        "--set",
        "sweep.target.train.per_class=[5]",
        "--set",
        "sweep.seed=[0]",
    ]);
    assert_eq!(ran.code, 1, "failed trials exit with 1: {}", ran.stderr);
    let all = records(&test, "small");
    assert_eq!(all.len(), 4, "every trial has a record");
    for record in &all {
        assert_eq!(record["status"], "failed", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(
            error.starts_with("training loss became NaN or infinite by step "),
            "{error}"
        );
        assert!(record["eval"].is_null());
    }
    let report = test.run(&["report", "runs/small"]);
    assert!(
        report.stdout.contains("0 finished, 4 failed"),
        "{}",
        report.stdout
    );
    assert!(report.stdout.contains("0 (1 failed)"), "{}", report.stdout);
}
