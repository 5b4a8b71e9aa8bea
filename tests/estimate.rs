//! `xferlab estimate` on the quickstart's task: a score per candidate depth before training,
//! written to the store; after the sweep, `report` puts each beside the accuracy measured at
//! that depth with Kendall's tau; a sweep with nothing transferred has nothing to estimate.
//! And the `auto_depth` strategy, which chooses the depth itself.

mod common;

use common::Test;

const SETTINGS: [&str; 4] = [
    "--set",
    "sweep.seed=[0, 1]",
    "--set",
    "sweep.target.train.per_class=[5, 20]",
];

fn args<'a>(command: &'a str, spec: &'a str) -> Vec<&'a str> {
    let mut args = vec![command, spec];
    args.extend(SETTINGS);
    args
}

#[test]
fn estimates_rank_depths_before_training_and_the_report_checks_them() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/quickstart.yaml");
    let test = Test::new();
    let ran = test.run(&args("estimate", spec));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // Per setting, each of the mlp's 3 depths ranked, LEEP at the full network (the
    // pretrained source keeps its classifier).
    for setting in ["per_class=5 (pretrain:", "per_class=20 (pretrain:"] {
        assert!(ran.stdout.contains(setting), "{}", ran.stdout);
    }
    let table: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(table.len(), 6, "{}", ran.stdout);
    assert!(
        table
            .iter()
            .all(|l| l.split_whitespace().nth(3) == Some("2")),
        "2 seeds: {table:?}"
    );
    let file = test.join("runs/quickstart/estimates.json");
    let estimates: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let entries = estimates["estimates"].as_array().unwrap();
    assert_eq!(entries.len(), 2 * 2 * 3, "2 sizes x 2 seeds x 3 depths");
    for e in entries {
        let logme = e["logme"].as_f64().unwrap();
        assert!(logme.is_finite() && logme < 0.0, "{e}");
        assert_eq!(e["leep"].is_null(), e["depth"] != 3, "{e}");
    }
    // After the sweep, the report sets each estimate beside the accuracy at its depth.
    let ran = test.run(&args("run", spec));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report = test.run(&["report", "runs/quickstart"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(
        report.stdout.contains("estimate vs measured"),
        "{}",
        report.stdout
    );
    let taus: Vec<f64> = (report.stdout.lines())
        .filter_map(|l| {
            l.split("tau ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(taus.len(), 2, "{}", report.stdout);
    assert!(taus.iter().all(|t| (-1.0..=1.0).contains(t)), "{taus:?}");
    // A damaged estimates file costs the comparison, with a warning, not the report.
    std::fs::write(&file, "{\"broken").unwrap();
    let report = test.run(&["report", "runs/quickstart"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(
        !report.stdout.contains("estimate vs measured"),
        "{}",
        report.stdout
    );
    assert!(
        report.stderr.contains("estimates.json") && report.stderr.contains("writes it again"),
        "{}",
        report.stderr
    );
}

#[test]
fn a_sweep_that_transfers_nothing_has_nothing_to_estimate() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/quickstart.yaml");
    let test = Test::new();
    let ran = test.run(&["estimate", spec, "--set", "strategies=[scratch]"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("has no trial that transfers"),
        "{}",
        ran.stderr
    );
    assert!(!test.join("runs/quickstart/estimates.json").exists());
}

/// `auto_depth` chooses each trial's freeze depth by successive halving on held-out training
/// examples: its record keeps every rung, the steps spent and the chosen depth, a rerun
/// chooses the same, and the report shows `auto` with each seed's choice; likewise the
/// transferred-and-frozen prefix's depth with `family: prefix_frozen`.
#[test]
fn auto_depth_chooses_a_depth_by_successive_halving() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/quickstart.yaml");
    let test = Test::new();
    let mut args = vec![
        "run",
        spec,
        "--set",
        "strategies=[scratch, auto_depth]",
        "--set",
        "sweep.seed=[0, 1]",
    ];
    args.extend([
        "--set",
        "sweep.target.train.per_class=[20]",
        "--set",
        "train.steps=40",
    ]);
    let ran = test.run(&args);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("auto_depth chose:"), "{}", ran.stdout);
    let records = test.records("quickstart");
    let auto: Vec<&serde_json::Value> = records
        .values()
        .filter(|r| r["config"]["auto_depth"] == true)
        .collect();
    assert_eq!(auto.len(), 2);
    for record in &auto {
        let search = &record["auto_depth"];
        let rungs = search["rungs"].as_array().unwrap();
        // mlp of 3 blocks: f = 0..3 are 4 candidates, 2 rungs of 10 and 20 steps (4, then 2).
        let steps: Vec<u64> = rungs.iter().map(|r| r["steps"].as_u64().unwrap()).collect();
        assert_eq!(steps, [10, 20]);
        let tried = |r: usize| rungs[r]["scores"].as_array().unwrap().len();
        assert_eq!((tried(0), tried(1)), (4, 2));
        assert_eq!(search["total_steps"], 4 * 10 + 2 * 20 + 40);
        // The survivor of the last rung is the chosen depth, and the record's freeze depth.
        let last: Vec<(u64, f64)> = (rungs[1]["scores"].as_array().unwrap().iter())
            .map(|s| (s[0].as_u64().unwrap(), s[1].as_f64().unwrap()))
            .collect();
        let best = last
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .unwrap();
        assert_eq!(search["chosen"], best.0);
        assert_eq!(record["freeze_depth"], best.0);
        assert_eq!(
            search["holdout_examples"], 20,
            "a fifth of 20 per class, 5 classes"
        );
    }
    // Ordered by LogME: the better two of f = 1..3 and f = 0 start: 3 candidates, the same
    // 2 rungs of 10 and 20 steps (3, then 2), 10 steps fewer.
    let mut ordered = args.clone();
    ordered.extend([
        "--set",
        "train.auto_depth={order: logme}",
        "--store",
        "ordered",
    ]);
    let ran = test.run(&ordered);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for record in test.records_in("ordered", "quickstart").values() {
        if record["config"]["auto_depth"] != true {
            continue;
        }
        assert_eq!(record["config"]["train"]["auto_depth"]["order"], "logme");
        let search = &record["auto_depth"];
        let logme = search["logme"].as_array().unwrap();
        assert_eq!(logme.len(), 3, "depths 1..3 scored: {search}");
        let first: Vec<u64> = (search["rungs"][0]["scores"].as_array().unwrap().iter())
            .map(|s| s[0].as_u64().unwrap())
            .collect();
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], 0, "f = 0 always starts");
        // The depth LogME ranked last did not start.
        let worst = (logme.iter())
            .map(|s| (s[0].as_u64().unwrap(), s[1].as_f64().unwrap()))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .unwrap();
        assert!(!first.contains(&worst.0), "{search}");
        assert_eq!(search["total_steps"], 3 * 10 + 2 * 20 + 40);
    }
    // The prefix family (t = f = d): the chosen depth is both depths; its d = L candidate is
    // the same network as partial freezing's f = L (t = L), so it scores the same in rung 1.
    let mut prefix = args.clone();
    prefix.extend([
        "--set",
        "train.auto_depth={family: prefix_frozen}",
        "--store",
        "prefix",
    ]);
    let ran = test.run(&prefix);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains("auto_depth t=auto f=auto"),
        "{}",
        ran.stdout
    );
    let first_rung = |record: &serde_json::Value| -> Vec<(u64, f64)> {
        (record["auto_depth"]["rungs"][0]["scores"]
            .as_array()
            .unwrap()
            .iter())
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_f64().unwrap()))
        .collect()
    };
    let mut prefixed = 0;
    for record in test.records_in("prefix", "quickstart").values() {
        if record["config"]["auto_depth"] != true {
            continue;
        }
        prefixed += 1;
        let chosen = &record["auto_depth"]["chosen"];
        assert_eq!(&record["transfer_depth"], chosen);
        assert_eq!(&record["freeze_depth"], chosen);
        let seed = &record["config"]["seed"];
        let plain = auto.iter().find(|r| &r["config"]["seed"] == seed).unwrap();
        let (ours, theirs) = (first_rung(record), first_rung(plain));
        assert_eq!(ours.len(), 4);
        assert_eq!(ours[3], theirs[3], "t = f = 3 either way");
        assert!(
            ran.stdout
                .contains(&format!("t={chosen} f={chosen} (seed {seed})")),
            "{}",
            ran.stdout
        );
    }
    assert_eq!(prefixed, 2);
    // Run again into another store: the same choices, the same accuracies.
    let mut again = args.clone();
    again.extend(["--store", "again"]);
    let ran = test.run(&again);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for (id, record) in test.records_in("again", "quickstart") {
        let first = &records[&id];
        assert_eq!(record["auto_depth"], first["auto_depth"]);
        assert_eq!(record["eval"]["accuracy"], first["eval"]["accuracy"]);
    }
}
