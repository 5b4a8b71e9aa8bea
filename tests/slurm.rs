//! `xferlab submit --slurm` and `xferlab status` against a REAL single-node Slurm cluster:
//! Debian's slurmctld, slurmd and munge on loopback, started by scripts/slurm-local.sh once for
//! this test binary and stopped by its recorded PIDs when the binary exits. A cluster that
//! cannot start fails these tests; they never skip.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::mlflow::{Api, shared};
use common::{Ran, Test};
use serde_json::Value;

/// The cluster of this test binary.
struct Cluster {
    conf: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh")
}

/// Where this binary's cluster lives: its own folder and ports, so it runs beside a
/// developer's cluster or another test binary's.
fn cluster_env(command: &mut Command) -> &mut Command {
    static PORT: OnceLock<u16> = OnceLock::new();
    let port = *PORT.get_or_init(|| {
        (0..100)
            .map(|i| 20000 + (std::process::id() as u16 % 2000) * 10 + i * 20)
            .find(|&p| (p..p + 4).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
            .expect("free ports for the cluster")
    });
    command
        .env("SLURM_LOCAL_DIR", cluster_dir())
        .env("SLURM_LOCAL_PORT_BASE", port.to_string())
        // Trials here are small, and the tests run at once: let 16 array tasks share the 2
        // real cores (each runs one thread).
        .env("SLURM_LOCAL_CPUS", "16")
}

fn cluster_dir() -> String {
    format!("/tmp/xferlab-slurm-{}", std::process::id())
}

extern "C" fn stop_cluster() {
    let _ = cluster_env(Command::new(script()).arg("stop")).output();
    let _ = std::fs::remove_dir_all(cluster_dir());
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let output = cluster_env(Command::new(script()).arg("start"))
            .output()
            .expect("scripts/slurm-local.sh runs");
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(stop_cluster) };
        assert!(
            output.status.success(),
            "the Slurm cluster did not start (scripts/slurm-local.sh install must have run: \
             scripts/test does it):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Cluster {
            conf: Path::new(&cluster_dir()).join("etc/slurm.conf"),
        }
    })
}

impl Cluster {
    /// A test folder whose commands talk to this cluster.
    fn test(&self) -> Test {
        Test::new().env("SLURM_CONF", self.conf.to_str().unwrap())
    }

    /// A Slurm client command's output.
    fn client(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until every task of array job `id` has left the queue. (`squeue -j ID` can miss
    /// a requeued task waiting to start again, so all tasks are listed: `ID_TASK`.)
    fn wait(&self, id: &str, test: &Test) {
        let started = Instant::now();
        let queued = || {
            let tasks = self.client("squeue", &["-h", "-r", "-o", "%i"]);
            tasks
                .lines()
                .any(|task| task.trim().split('_').next() == Some(id))
        };
        while queued() {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "job {id} still queued after 10 minutes; logs:\n{}",
                logs(test)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until `ready` holds, polling.
    fn until(&self, what: &str, test: &Test, ready: impl Fn() -> bool) {
        let started = Instant::now();
        while !ready() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "waited 5 minutes for {what}; logs:\n{}",
                logs(test)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What slurmctld and slurmd logged last, and every array task's output in the test's store.
fn logs(test: &Test) -> String {
    let mut out = String::new();
    for daemon in ["slurmctld", "slurmd"] {
        let log = std::fs::read_to_string(format!("{}/log/{daemon}.log", cluster_dir()));
        let log = log.unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("mpi/pmix")).collect();
        out += &format!(
            "== {daemon}.log (last lines)\n{}\n",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    out + &task_logs(test)
}

/// Every array task's output in the test's store.
fn task_logs(test: &Test) -> String {
    let mut out = String::new();
    for folder in std::fs::read_dir(test.join("runs")).into_iter().flatten() {
        let dir = folder.unwrap().path().join("slurm/logs");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            out += &format!(
                "== {}\n{}",
                file.display(),
                std::fs::read_to_string(&file).unwrap_or_default()
            );
        }
    }
    out
}

fn quickstart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments/quickstart.yaml")
        .display()
        .to_string()
}

/// `submit` of `spec`, which must succeed; the job id it prints.
fn submit(test: &Test, spec: &str, args: &[&str]) -> String {
    let ran = test.run(&[&["submit", spec, "--slurm"], args].concat());
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    ran.stdout.trim().to_string()
}

/// What a record says about training and evaluation, without times and places.
fn result(record: &Value) -> Value {
    let mut record = record.clone();
    let map = record.as_object_mut().unwrap();
    for key in ["timings", "device"] {
        map.remove(key);
    }
    record
}

fn results(records: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    records
        .iter()
        .map(|(k, v)| (k.clone(), result(v)))
        .collect()
}

/// The count `xferlab status` prints for `state`.
fn count(status: &str, state: &str) -> usize {
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with(state))
        .unwrap_or_else(|| panic!("no `{state}` line in:\n{status}"));
    line[line.find(state).unwrap() + state.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn report(test: &Test, folder: &str) -> String {
    let ran = test.run(&["report", folder]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    ran.stdout
}

#[test]
fn an_array_ends_with_the_records_and_report_of_a_local_run() {
    let cluster = cluster();
    let test = cluster.test();
    let seed = "sweep.seed=[0]";
    let local = test.run(&["run", &quickstart(), "--set", seed, "--store", "local"]);
    assert_eq!(local.code, 0, "{}", local.stderr);

    let started = Instant::now();
    let id = submit(
        &test,
        &quickstart(),
        &["--set", seed, "--parallel", "2", "--trials-per-task", "4"],
    );
    cluster.wait(&id, &test);
    eprintln!(
        "15 trials as 4 tasks, 2 at a time: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let local = test.records("../local/quickstart");
    let array = test.records("quickstart");
    assert_eq!(array.len(), 15, "{}", logs(&test));
    assert_eq!(results(&array), results(&local));
    assert_eq!(
        report(&test, "runs/quickstart"),
        report(&test, "local/quickstart")
    );
    // One task pretrained the source model; the others waited for it and read its file.
    let logs = task_logs(&test);
    assert_eq!(
        logs.matches("pretraining source model").count(),
        1,
        "{logs}"
    );
    assert_eq!(
        logs.matches("] ").count(),
        15,
        "every trial ran once:\n{logs}"
    );

    let script =
        std::fs::read_to_string(test.join("runs/quickstart/slurm/submit-1.sbatch")).unwrap();
    eprintln!("{script}");
    assert!(script.contains("#SBATCH --array=0-3%2\n"), "{script}");
    let store = test.path().canonicalize().unwrap().join("runs");
    assert!(
        script.contains(&format!(" --store {} ", store.display())),
        "{script}"
    );

    let status = test.run(&["status", "runs/quickstart"]);
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert_eq!(count(&status.stdout, "finished"), 15, "{}", status.stdout);
}

#[test]
fn a_sweep_cancelled_half_way_and_resumed_runs_every_trial_once() {
    let cluster = cluster();
    let test = cluster.test();
    let seeds = "sweep.seed=[0]";
    let id = submit(&test, &quickstart(), &["--set", seeds, "--parallel", "1"]);
    cluster.until("5 records", &test, || test.records("quickstart").len() >= 5);
    cluster.client("scancel", &[&id]);
    cluster.wait(&id, &test);

    let before = test.records("quickstart");
    let finished: BTreeMap<_, _> = before
        .iter()
        .filter(|(_, r)| r["status"] == "finished")
        .collect();
    assert!(finished.len() < 15, "the cancel came too late");
    let status = test.run(&["status", "runs/quickstart"]);
    eprintln!("{}{}", status.stdout, status.stderr);
    assert_eq!(status.code, 1, "trials are left");
    assert_eq!(
        count(&status.stdout, "finished"),
        finished.len(),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(&format!("Slurm job {id} ")),
        "{}",
        status.stdout
    );
    // The report works on the partial sweep and says what is not run.
    assert!(report(&test, "runs/quickstart").contains(&format!(
        "{} not run",
        15 - finished.len() - before.values().filter(|r| r["status"] == "failed").count()
    )));

    let again = submit(
        &test,
        &quickstart(),
        &["--set", seeds, "--resume", "--parallel", "2"],
    );
    assert_eq!(job_trials(&test, &again).len(), 15 - finished.len());
    cluster.wait(&again, &test);

    let after = test.records("quickstart");
    assert_eq!(after.len(), 15, "{}", logs(&test));
    assert!(after.values().all(|r| r["status"] == "finished"));
    for (id, record) in finished {
        assert_eq!(&after[id], record, "finished trial {id} ran again");
    }
    let status = test.run(&["status", "runs/quickstart"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    let nothing = test.run(&[
        "submit",
        &quickstart(),
        "--slurm",
        "--set",
        seeds,
        "--resume",
    ]);
    assert_eq!(nothing.code, 0);
    assert!(
        nothing.stderr.contains("nothing to submit"),
        "{}",
        nothing.stderr
    );
}

/// The trial ids job `id` submitted, in task order.
fn job_trials(test: &Test, id: &str) -> Vec<String> {
    let job: Value = serde_json::from_slice(
        &std::fs::read(test.join(&format!("runs/quickstart/slurm/jobs/{id}.json"))).unwrap(),
    )
    .unwrap();
    serde_json::from_value(job["trials"].clone()).unwrap()
}

#[test]
fn killed_preempted_warned_and_requeued_tasks_lose_nothing() {
    let cluster = cluster();
    // Four finetune trials long enough to be caught running, one per task.
    let spec = std::fs::read_to_string(quickstart())
        .unwrap()
        .replace(
            "[scratch, transfer, partial_freeze, finetune]",
            "[finetune]",
        )
        .replace("steps: 200", "steps: 3000");
    let spec = spec[..spec.find("sweep:").unwrap()].to_string() + "sweep: {seed: [0, 1, 2, 3]}\n";
    let test = cluster.test().file("long.yaml", spec);
    let id = submit(&test, "long.yaml", &[]);
    let trials = job_trials(&test, &id);
    let sources = test.join("runs/sources");
    cluster.until("all four trials running", &test, || {
        std::fs::read_dir(&sources).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        }) && count(&test.run(&["status", "runs/quickstart"]).stdout, "running") == 4
    });
    std::thread::sleep(Duration::from_secs(1));
    // exec in the script makes xferlab the batch shell: --batch signals reach it. Task 0 is
    // killed outright; task 1 preempted (SIGTERM); task 2 warned of its time limit (SIGUSR1,
    // which the script asks Slurm for); task 3 requeued by Slurm, and started again at once.
    let task = |i: usize| format!("{id}_{i}");
    cluster.client("scancel", &["--batch", "--signal=KILL", &task(0)]);
    cluster.client("scancel", &["--batch", "--signal=TERM", &task(1)]);
    cluster.client("scancel", &["--batch", "--signal=USR1", &task(2)]);
    cluster.client("scontrol", &["requeue", &task(3)]);
    cluster.until("the requeued task pending", &test, || {
        cluster
            .client("squeue", &["-h", "-j", &task(3), "-o", "%T"])
            .trim()
            == "PENDING"
    });
    // Slurm delays a requeued job by minutes; start it now, but not within seconds of its
    // last run ending on this node, whose credential slurmd still refuses then.
    std::thread::sleep(Duration::from_secs(3));
    cluster.client(
        "scontrol",
        &["update", &format!("JobId={}", task(3)), "StartTime=now"],
    );
    cluster.wait(&id, &test);

    let records = test.records("quickstart");
    let status = |i: usize| records.get(&trials[i]).map(|r| r["status"].clone());
    assert_eq!(status(0), None, "the killed task wrote nothing");
    assert_eq!(status(1), Some("interrupted".into()));
    assert_eq!(status(2), Some("interrupted".into()));
    assert_eq!(
        status(3),
        Some("finished".into()),
        "the requeued task ran it again:\n{}",
        logs(&test)
    );
    let output = logs(&test);
    for signal in ["SIGTERM", "SIGUSR1"] {
        assert!(
            output.contains(&format!("interrupted ({signal})")),
            "{output}"
        );
    }
    let status = test.run(&["status", "runs/quickstart"]).stdout;
    assert_eq!(count(&status, "finished"), 1, "{status}");
    assert_eq!(count(&status, "interrupted"), 2, "{status}");
    assert_eq!(count(&status, "not started"), 1, "{status}");

    let requeued = records[&trials[3]].clone();
    let again = submit(&test, "long.yaml", &["--resume"]);
    assert_eq!(job_trials(&test, &again), trials[..3]);
    cluster.wait(&again, &test);
    let records = test.records("quickstart");
    assert_eq!(records.len(), 4, "{}", logs(&test));
    assert!(
        records.values().all(|r| r["status"] == "finished"),
        "{records:?}"
    );
    assert_eq!(
        records[&trials[3]], requeued,
        "a finished trial is never run again"
    );
}

#[test]
fn a_tracked_sweep_through_slurm_has_one_parent_and_a_run_per_trial() {
    let cluster = cluster();
    let test = cluster.test();
    let uri = shared();
    let sets = [
        "--set",
        "sweep.seed=[0]",
        "--set",
        &format!("tracking={{mlflow: {{uri: '{uri}', experiment: slurm-array}}}}"),
    ];
    let id = submit(
        &test,
        &quickstart(),
        &[&sets[..], &["--trials-per-task", "3"]].concat(),
    );
    cluster.wait(&id, &test);
    assert_eq!(test.records("quickstart").len(), 15, "{}", logs(&test));

    let runs = Api::new(uri).runs("slurm-array");
    let parents: Vec<_> = runs.iter().filter(|r| !r.is_child()).collect();
    assert_eq!(parents.len(), 1, "one parent run");
    assert_eq!(parents[0].info("status"), "FINISHED");
    let mut trials: Vec<_> = runs
        .iter()
        .filter(|r| r.is_child())
        .map(|r| r.tag("xferlab.trial_id").unwrap())
        .collect();
    trials.sort();
    let mut ids: Vec<_> = test.records("quickstart").into_keys().collect();
    ids.sort();
    assert_eq!(trials, ids, "one nested run per trial");
}

#[test]
fn bad_submissions_are_refused_clearly() {
    let cluster = cluster();
    let test = cluster.test();
    let seed = ["--set", "sweep.seed=[0]"];
    let refused = |args: &[&str], code: i32, says: &str| -> Ran {
        let ran = test.run(&[&["submit", &quickstart(), "--slurm"], &seed[..], args].concat());
        assert_eq!(ran.code, code, "{args:?}: {}{}", ran.stdout, ran.stderr);
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
        ran
    };
    // Slurm's own words for a partition it does not have.
    refused(&["--partition", "nosuch"], 2, "invalid partition");
    refused(&["--parallel", "0"], 2, "--parallel");
    refused(&["--trials-per-task", "0"], 2, "--trials-per-task");
    // No sbatch on PATH: say what is missing and how to get it, and write nothing.
    let ran = test
        .command(
            &[
                &["submit", &quickstart(), "--slurm", "--store", "nowhere"],
                &seed[..],
            ]
            .concat(),
        )
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let ran = Ran::from(ran);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("`sbatch` was not found"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("slurm-client"), "{}", ran.stderr);
    assert!(
        !test.join("nowhere").exists(),
        "nothing written without sbatch"
    );
    // Neither a launcher block nor --slurm.
    let ran = test.run(&[&["submit", &quickstart()], &seed[..]].concat());
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("--slurm"), "{}", ran.stderr);

    // A relative store is written into the script as an absolute path.
    let ran = test.run(
        &[
            &[
                "submit",
                &quickstart(),
                "--slurm",
                "--dry-run",
                "--store",
                "rel/store",
            ],
            &seed[..],
        ]
        .concat(),
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let root = test.path().canonicalize().unwrap().join("rel/store");
    assert!(
        ran.stdout.contains(&format!("--store {} ", root.display())),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(&format!(
            "--output={}/quickstart/slurm/logs/%A_%a.out",
            root.display()
        )),
        "{}",
        ran.stdout
    );

    // A spec with an error is refused before anything is written or submitted.
    let test = test.file(
        "bad.yaml",
        std::fs::read_to_string(quickstart())
            .unwrap()
            .replace("steps: 200", "steps: -1"),
    );
    let ran = test.run(&["submit", "bad.yaml", "--slurm", "--store", "bad"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("bad.yaml:"), "{}", ran.stderr);
    assert!(!test.join("bad").exists(), "nothing written for a bad spec");
}

#[test]
fn the_spec_launcher_block_and_the_flags_make_the_script() {
    let spec = std::fs::read_to_string(quickstart()).unwrap()
        + "launcher:\n  slurm: {parallel: 3, trials_per_task: 5, partition: gpu, time: '1:00:00', sbatch_args: [--mem=4G]}\n";
    let test = Test::new().file("spec.yaml", spec);
    let script = |args: &[&str]| {
        let ran = test.run(&[&["submit", "spec.yaml", "--dry-run"], args].concat());
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        ran.stdout
    };
    // The block alone chooses Slurm; 75 trials, 5 per task.
    let from_spec = script(&[]);
    for line in [
        "#SBATCH --array=0-14%3\n",
        "#SBATCH --partition=gpu\n",
        "#SBATCH --time=1:00:00\n",
        "#SBATCH --mem=4G\n",
    ] {
        assert!(from_spec.contains(line), "{line}in:\n{from_spec}");
    }
    assert!(!from_spec.contains("--gpus-per-task"), "{from_spec}");
    // --set and flags override it; --sbatch-arg adds to its sbatch_args.
    let overridden = script(&[
        "--set",
        "launcher.slurm.partition=cpu",
        "--parallel",
        "7",
        "--trials-per-task",
        "25",
        "--gpus-per-task",
        "1",
        "--cpus-per-task",
        "4",
        "--sbatch-arg=--account=proj",
    ]);
    for line in [
        "#SBATCH --array=0-2%7\n",
        "#SBATCH --partition=cpu\n",
        "#SBATCH --gpus-per-task=1\n",
        "#SBATCH --cpus-per-task=4\n",
        "#SBATCH --mem=4G\n",
        "#SBATCH --account=proj\n",
        "SHARE=(\"${TRIALS[@]:SLURM_ARRAY_TASK_ID*25:25}\")\n",
        " --set launcher.slurm.partition=cpu --wait --trial ",
    ] {
        assert!(overridden.contains(line), "{line}in:\n{overridden}");
    }
    // The script is bash that runs each task's share: run task 2 of 3 with `xferlab` made a
    // function that prints its arguments.
    let script_file = test.join("runs/quickstart/slurm/submit-2.sbatch");
    let text = std::fs::read_to_string(&script_file)
        .unwrap()
        .replace("exec ", "");
    let text = text.replacen(
        "\nset -euo pipefail\n",
        &format!(
            "\nset -euo pipefail\n{} () {{ printf '%s\\n' \"$@\"; }}\n",
            common::binary()
        ),
        1,
    );
    let ran = Command::new("bash")
        .arg("-c")
        .arg(&text)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    let args = String::from_utf8(ran.stdout).unwrap();
    let share = args.lines().last().unwrap();
    let plan: Value =
        serde_json::from_str(&test.run(&["plan", "spec.yaml", "--json"]).stdout).unwrap();
    let ids: Vec<&str> = (50..75)
        .map(|i| plan["trials"][i]["id"].as_str().unwrap())
        .collect();
    assert_eq!(share, ids.join(","), "{args}");
}
