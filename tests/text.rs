//! The text domain end to end, with the real all-MiniLM-L6-v2 and real e-mails (both fetched
//! by `scripts/assets`): a partial-freeze trial leaves the frozen layers exactly as the
//! checkpoint has them, cached features change no result, and a text sweep killed mid-run
//! resumes to the records of a run never killed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{Test, asset, text_sweep};
use serde_json::Value;
use xferlab::model::{bert, block_of};

fn run(test: &Test, extra: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["run", "spec.yaml", "--device", "cpu"];
    args.extend(extra);
    let ran = test.run(&args);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let records = test.records("texts");
    assert_eq!(records.len(), 4, "{}", ran.stderr);
    for record in records.values() {
        assert_eq!(record["status"], "finished", "{record}");
    }
    records
}

fn strategy(records: &BTreeMap<String, Value>, name: &str) -> Value {
    let found = records
        .values()
        .find(|r| r["strategies"][0] == name)
        .unwrap_or_else(|| panic!("no {name} trial"));
    found.clone()
}

fn flat(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn frozen_layers_stay_the_checkpoints_and_cached_features_change_nothing() {
    let spec = text_sweep() + "checkpoints: true\n";
    let cached = Test::new().file("spec.yaml", &spec);
    let plain = Test::new().file("spec.yaml", &spec);
    let with = run(&cached, &[]);
    let without = run(&plain, &["--feature-cache-mb", "0"]);
    assert_eq!(
        with.keys().collect::<Vec<_>>(),
        without.keys().collect::<Vec<_>>()
    );
    for (id, a) in &with {
        let b = &without[id];
        assert_eq!(a["eval"]["accuracy"], b["eval"]["accuracy"], "{id}");
        let loss = |r: &Value| r["eval"]["loss"].as_f64().unwrap();
        assert!((loss(a) - loss(b)).abs() < 1e-4, "{id}: {a} {b}");
        for (p, q) in a["curve"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["curve"].as_array().unwrap())
        {
            let (p, q) = (p["loss"].as_f64().unwrap(), q["loss"].as_f64().unwrap());
            assert!((p - q).abs() < 1e-4, "{id}: curve {p} vs {q}");
        }
    }

    // The trained partial_freeze model against the checkpoint, tensor by tensor.
    let trial = strategy(&with, "partial_freeze");
    assert_eq!(trial["freeze_depth"], 3);
    let id = trial["id"].as_str().unwrap();
    let trained = candle_core::safetensors::load(
        cached.join(&format!("runs/texts/checkpoints/{id}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let source =
        candle_core::safetensors::load(asset("all-minilm-l6-v2/model.safetensors"), &Device::Cpu)
            .unwrap();
    let (mut frozen, mut changed) = (0, 0);
    for (name, tensor) in &source {
        let Some(ours) = bert::xferlab_name(name) else {
            continue;
        };
        let block = block_of(&ours).unwrap();
        let same = flat(tensor) == flat(&trained[&ours]);
        if block <= 3 {
            assert!(same, "{ours} (block {block}) is frozen but changed");
            frozen += 1;
        } else if !same {
            changed += 1;
        }
    }
    assert_eq!(frozen, 5 + 2 * 16, "b1's 5 tensors and two layers of 16");
    assert!(changed > 16, "blocks 4..7 train: {changed} tensors changed");
    assert_eq!(trained["head.weight"].dims(), [2, 384]);
}

/// Results without the timings, which differ from run to run.
fn results(records: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    (records.iter())
        .map(|(id, r)| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("timings");
            (id.clone(), r)
        })
        .collect()
}

#[test]
fn a_text_sweep_killed_mid_run_resumes_to_the_same_records() {
    // Trials that train the top four blocks only: the debug build's optimizer is slow over
    // all 22.7 M parameters.
    let spec = text_sweep().replace("steps: 6,", "steps: 16,").replace(
        "strategies: [scratch, transfer, partial_freeze, finetune]",
        "strategies: [partial_freeze, transfer]\nsweep: {seed: [0, 1]}",
    );
    assert!(spec.contains("sweep:"));
    let reference = Test::new().file("spec.yaml", &spec);
    let expected = results(&run(&reference, &[]));

    let test = Test::new().file("spec.yaml", &spec);
    let mut child = test
        .command(&["run", "spec.yaml", "--device", "cpu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while test.records("texts").is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before any kill"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run hangs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = test.records("texts").len();
    assert!(kept < 4, "killed after {kept} of 4 trials");
    assert_eq!(results(&run(&test, &[])), expected);
}

/// `source: {hub: ORG/NAME}` finds a text encoder in the local Hugging Face cache as the
/// libraries lay it out, and its folder supplies the config, the tokenizer and the pooling.
#[test]
fn a_text_encoder_in_the_hugging_face_cache_is_found_by_name() {
    let test = Test::new();
    let model = test.join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    let snapshot = model.join("snapshots/0a1b");
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(model.join("refs")).unwrap();
    std::fs::write(model.join("refs/main"), "0a1b").unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
    ] {
        let target = asset(&format!("all-minilm-l6-v2/{file}"));
        std::os::unix::fs::symlink(target, snapshot.join(file)).unwrap();
    }
    let folder = asset("all-minilm-l6-v2/config.json");
    let spec = text_sweep().replace(
        &format!(
            "source: {{checkpoint: {}}}",
            folder.parent().unwrap().display()
        ),
        "source: {hub: sentence-transformers/all-MiniLM-L6-v2}",
    );
    assert!(spec.contains("hub:"), "{spec}");
    let hub = test.join("hub");
    let test = (test.file("spec.yaml", spec)).env("HF_HUB_CACHE", hub.to_str().unwrap());
    let ran = test.run(&["plan", "spec.yaml", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let plan: Value = serde_json::from_str(&ran.stdout).unwrap();
    let config = &plan["trials"][1]["config"];
    assert_eq!(
        config["model"]["pooling"], "mean",
        "from 1_Pooling/config.json"
    );
    assert_eq!(config["model"]["config"]["num_hidden_layers"], 6);
    assert!(
        config["model"]["tokenizer"]
            .as_str()
            .unwrap()
            .ends_with("0a1b/tokenizer.json")
    );
    assert!(
        config["source"]["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("0a1b/model.safetensors")
    );
}
