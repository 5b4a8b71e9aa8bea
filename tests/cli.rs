//! The command line: help, schema drift, the shipped experiments, plans, layering.

mod common;

use common::{SMALL_SWEEP, Test};

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schema_matches_the_spec_types() {
    let committed = std::fs::read_to_string(repo("schemas/experiment.schema.json")).unwrap();
    let ran = Test::new().run(&["schema"]);
    assert_eq!(ran.code, 0);
    assert!(
        committed == ran.stdout,
        "schemas/experiment.schema.json is stale: run `just schema` and commit it"
    );
}

#[test]
fn help_teaches_the_commands() {
    let ran = Test::new().run(&["--help"]);
    assert_eq!(ran.code, 0);
    insta::assert_snapshot!(ran.stdout);
    let run_help = Test::new().run(&["run", "--help"]);
    insta::assert_snapshot!(run_help.stdout);
}

#[test]
fn shipped_experiments_validate() {
    for spec in [
        "experiments/quickstart.yaml",
        "experiments/fmnist-a-to-b.yaml",
        "experiments/imagenet-to-fashion.yaml",
        "benches/cpu.yaml",
        "benches/small-a-to-b.yaml",
    ] {
        let ran = Test::new().run(&["validate", &repo(spec)]);
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (0, "", ""),
            "{spec}"
        );
    }
}

#[test]
fn quickstart_plan_is_stable() {
    let ran = Test::new().run(&["plan", &repo("experiments/quickstart.yaml")]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    insta::assert_snapshot!(ran.stdout);
}

#[test]
fn fmnist_plan_has_135_distinct_trials() {
    let ran = Test::new().run(&["plan", &repo("experiments/fmnist-a-to-b.yaml")]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.starts_with("fmnist-a-to-b: 135 trials (270 strategy x sweep points, 135 merged as equal), model with 5 blocks\n"), "{}", ran.stdout.lines().next().unwrap_or(""));
    // Every (t, f) the design names, once per (per_class, seed): 15 pairs x 9.
    let pairs: std::collections::BTreeSet<(String, String)> = ran
        .stdout
        .lines()
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[3].to_string(), cells[4].to_string())
        })
        .collect();
    assert_eq!(pairs.len(), 15);
}

#[test]
fn resolved_trial_config_is_canonical() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let ran = test.run(&["plan", "spec.yaml", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    // Scratch transfers nothing, so its config has no source; transfer's has one.
    insta::assert_json_snapshot!("scratch_config", plan["trials"][0]["config"]);
    assert!(plan["trials"][1]["config"]["source"]["pretrain"].is_object());
}

#[test]
fn layers_stack_file_then_environment_then_set() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let lr = |test: &Test, args: &[&str]| -> f64 {
        let mut all = vec!["plan", "spec.yaml", "--json"];
        all.extend(args);
        let ran = test.run(&all);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        plan["trials"][0]["config"]["train"]["lr"].as_f64().unwrap()
    };
    assert_eq!(lr(&test, &[]), 1.0e-3);
    let test = test.env("XFERLAB_TRAIN__LR", "0.5");
    assert_eq!(lr(&test, &[]), 0.5);
    assert_eq!(lr(&test, &["--set", "train.lr=0.25"]), 0.25);
}

#[test]
fn sweep_axes_can_be_set_from_the_command_line() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let ran = test.run(&[
        "plan",
        "spec.yaml",
        "--set",
        "sweep.seed=[0,1,2]",
        "--set",
        "sweep.train.lr=[0.01,0.001]",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.starts_with("small: 48 trials"), "{}", ran.stdout);
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let test = Test::new()
        .file("spec.yaml", SMALL_SWEEP)
        .env("XFERLAB_TRAIN__BATCH_SIZE", "many");
    let ran = test.run(&["validate", "spec.yaml"]);
    assert_eq!(ran.code, 2);
    insta::assert_snapshot!(ran.stderr);
}

#[test]
fn report_of_a_missing_run_is_bad_input() {
    let ran = Test::new().run(&["report", "runs/nothing"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("runs/nothing does not exist"),
        "{}",
        ran.stderr
    );
}

#[test]
fn the_spec_names_the_device_and_the_command_line_overrides_it() {
    let test = Test::new().file(
        "spec.yaml",
        format!("{SMALL_SWEEP}device: cuda\n").replace("seed: [0, 1]", "seed: [0]"),
    );
    if cfg!(feature = "cuda") {
        return; // a CUDA build may find a GPU
    }
    let ran = test.run(&["run", "spec.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot use CUDA device 0"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("spec.yaml:"),
        "points at the spec: {}",
        ran.stderr
    );
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "0"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let record = test.records("small").into_values().next().unwrap();
    assert_eq!(record["device"], "cpu");
}

/// `--trial` names several trials, by index or id, repeated or separated by commas (as the
/// Slurm script passes a task's share); one unknown name refuses them all.
#[test]
fn run_trial_takes_several() {
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    let plan = test.run(&["plan", "spec.yaml", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let id = plan["trials"][5]["id"].as_str().unwrap().to_string();
    let ran = test.run(&["run", "spec.yaml", "--trial", "0,zzz"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("no trial has index or id `zzz`"),
        "{}",
        ran.stderr
    );
    assert!(test.records("small").is_empty());
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--trial",
        &format!("2,{id}"),
        "--trial",
        "0",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let mut indexes: Vec<u64> = (test.records("small").values())
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    indexes.sort();
    assert_eq!(indexes, [0, 2, 5]);
}

/// Every `[env: XFERLAB_...=]` the help of any subcommand advertises, with the subcommand.
fn advertised_variables() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for command in [
        "validate", "plan", "run", "submit", "status", "report", "sync", "schema",
    ] {
        let help = Test::new().run(&[command, "--help"]).stdout;
        for piece in help.split("[env: ").skip(1) {
            let name = piece.split('=').next().unwrap().to_string();
            found.push((command.to_string(), name));
        }
    }
    found
}

/// Regression: `XFERLAB_JOBS=2 xferlab plan SPEC` failed with "unknown key `jobs` in the spec"
/// although `run --help` advertises the variable: the spec loader read every `XFERLAB_`
/// variable as a spec key. Any option with an `env` is covered here as soon as it is added.
#[test]
fn option_variables_are_not_read_as_spec_keys() {
    let advertised = advertised_variables();
    let names: std::collections::BTreeSet<&str> =
        advertised.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains("XFERLAB_JOBS") && names.contains("XFERLAB_FEATURE_CACHE_MB"),
        "{names:?}"
    );
    let spec = SMALL_SWEEP.replace("seed: [0, 1]", "seed: [0]");
    for name in names {
        let value = if name == "XFERLAB_STORE" {
            "store"
        } else {
            "2"
        };
        let test = Test::new().file("spec.yaml", &spec).env(name, value);
        for args in [
            &["validate", "spec.yaml"][..],
            &["plan", "spec.yaml"],
            &["run", "spec.yaml", "--trial", "0", "--device", "cpu"],
        ] {
            let ran = test.run(args);
            assert_eq!(
                ran.code, 0,
                "{name}={value} xferlab {args:?}: {}",
                ran.stderr
            );
        }
    }
}

/// `validate` checks what `run` checks: a device this build cannot open is refused by both.
#[test]
fn validate_refuses_a_device_run_refuses() {
    if cfg!(feature = "cuda") {
        return; // a CUDA build may find the GPU
    }
    let test = Test::new().file("spec.yaml", SMALL_SWEEP);
    for command in ["validate", "run"] {
        let ran = test.run(&[command, "spec.yaml", "--set", "device=cuda:9"]);
        assert_eq!(ran.code, 2, "{command}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("cannot use CUDA device 9") && ran.stderr.contains("--set device"),
            "{command}: {}",
            ran.stderr
        );
    }
}

/// A name too long for a folder is refused by `validate`, with the limit, not at run time
/// with "File name too long".
#[test]
fn validate_refuses_a_name_too_long_for_a_folder() {
    let long = "n".repeat(300);
    let test = Test::new().file(
        "spec.yaml",
        SMALL_SWEEP.replace("name: small", &format!("name: {long}")),
    );
    let ran = test.run(&["validate", "spec.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("spec.yaml:1:7") && ran.stderr.contains("at most 200 characters"),
        "{}",
        ran.stderr
    );
}

/// `xferlab models` lists every architecture's blocks; their parameters add up to the
/// published counts once the 1000-class ImageNet classifier is counted back in:
/// EfficientNet-Lite0 4,652,008 (its paper), ResNet-18/34/50 11,689,512, 21,797,672 and
/// 25,557,032 (torchvision's model cards); and all-MiniLM-L6-v2's blocks with its pooler
/// (384x384 + 384) 22,713,216 (its model card).
#[test]
fn models_lists_the_blocks_with_published_parameter_counts() {
    let ran = Test::new().run(&["models"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    insta::assert_snapshot!(ran.stdout);
    // The parameters of an architecture's blocks, from its table.
    let blocks = |arch: &str| -> usize {
        let table = ran.stdout.split(&format!("\n{arch} (")).nth(1).unwrap();
        let table = table.split("\n\n").next().unwrap();
        (table.lines())
            .filter(|l| l.starts_with('b') && l[1..2].parse::<u8>().is_ok())
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .nth(1)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum()
    };
    for (arch, features, published) in [
        ("efficientnet_lite0", 1280, 4_652_008),
        ("resnet18", 512, 11_689_512),
        ("resnet34", 512, 21_797_672),
        ("resnet50", 2048, 25_557_032),
    ] {
        assert_eq!(blocks(arch) + features * 1000 + 1000, published, "{arch}");
    }
    assert_eq!(blocks("bert") + 384 * 384 + 384, 22_713_216);
}

/// A key the spec leaves out (an optional one, like `train.head_lr`) can be swept; a key no
/// spec has is still refused.
#[test]
fn optional_keys_left_out_of_the_spec_can_be_swept() {
    let spec = SMALL_SWEEP.replace(
        "  seed: [0, 1]\n",
        "  seed: [0, 1]\n  train.head_lr: [0.001, 0.01]\n",
    );
    let test = Test::new().file("spec.yaml", &spec);
    let ran = test.run(&["plan", "spec.yaml", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let rates: std::collections::BTreeSet<String> = (plan["trials"].as_array().unwrap().iter())
        .map(|t| t["config"]["train"]["head_lr"].to_string())
        .collect();
    assert_eq!(rates, ["0.001".to_string(), "0.01".into()].into());
    let typo = Test::new().file(
        "spec.yaml",
        spec.replace("train.head_lr", "train.head_rate"),
    );
    let ran = typo.run(&["plan", "spec.yaml"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("sweep axis `train.head_rate` is not a key of the spec"),
        "{}",
        ran.stderr
    );
}
