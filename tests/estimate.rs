//! `xferlab estimate` on the quickstart's task: a score per candidate depth before training,
//! written to the store; after the sweep, `report` puts each beside the accuracy measured at
//! that depth with Kendall's tau. A sweep with nothing transferred has nothing to estimate.

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
