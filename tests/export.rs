//! `xferlab export` and `xferlab predict` on a sweep over real photos: the exported folder
//! classifies the eval photos exactly as the trial did, whether its weights were kept or
//! trained again; LoRA updates are folded into plain weights; a failed trial is refused.

mod common;

use common::{Test, write_folder};
use serde_json::Value;

/// The photo sweep with LoRA beside scratch, at a rate that trains in 20 steps.
fn spec() -> String {
    common::PHOTO_SWEEP
        .replace(
            "train: {steps: 20, batch_size: 9, lr: 1.0e-3}",
            "train: {steps: 20, batch_size: 9, lr: 1.0e-2, lora: {rank: 4, alpha: 8}}",
        )
        .replace(
            "strategies: [scratch, transfer, finetune]",
            "strategies: [scratch, lora]",
        )
}

fn json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Top-1 predictions of `predict --format json` on the eval photos, scored against their
/// folders: the fraction right.
fn accuracy_of_predictions(test: &Test, model: &str) -> f64 {
    let mut files: Vec<String> = Vec::new();
    for class in ["cat", "coffee", "rocket"] {
        for entry in std::fs::read_dir(test.join(&format!("photos/test/{class}"))).unwrap() {
            let path = entry.unwrap().path();
            files.push(
                path.strip_prefix(test.path())
                    .unwrap()
                    .display()
                    .to_string(),
            );
        }
    }
    let mut args = vec![
        "predict", model, "--format", "json", "--top", "2", "--device", "cpu",
    ];
    args.extend(files.iter().map(String::as_str));
    let ran = test.run(&args);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let predictions: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(predictions.len(), files.len());
    let right = (predictions.iter())
        .filter(|p| {
            let top = &p["top"];
            assert_eq!(top.as_array().unwrap().len(), 2);
            assert!(top[0]["probability"].as_f64() >= top[1]["probability"].as_f64());
            let input = p["input"].as_str().unwrap();
            input.contains(&format!("/{}/", top[0]["class"].as_str().unwrap()))
        })
        .count();
    right as f64 / files.len() as f64
}

#[test]
fn an_exported_trial_predicts_as_it_was_evaluated() {
    let test = Test::new().file("spec.yaml", spec());
    write_folder(&test.join("photos"), 6);
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let records = test.records("photos");
    let lora = (records.values())
        .find(|r| r["config"]["adapter"] == "lora")
        .unwrap();
    let recorded = lora["eval"]["accuracy"].as_f64().unwrap();
    // With an adapter in the sweep, the table shows what each row trained: LoRA's rank-4
    // matrices on b5's linear layer (4 x (64 x 8 x 8 in + 256 out)) and the head (256 x 3 + 3).
    let trained = lora["trainable_parameters"].as_u64().unwrap();
    assert_eq!(trained, 4 * (64 * 8 * 8 + 256) + 256 * 3 + 3);
    let row = ran.stdout.lines().find(|l| l.starts_with("lora ")).unwrap();
    assert!(ran.stdout.contains("trained params"), "{}", ran.stdout);
    assert!(
        row.split_whitespace().any(|c| c == trained.to_string()),
        "{row}"
    );

    // No checkpoint was kept: export trains the trial again.
    let ran = test.run(&[
        "export",
        "runs/photos",
        "--best",
        "lora",
        "--out",
        "retrained",
        "--device",
        "cpu",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("retraining it"), "{}", ran.stderr);
    let exported = json(&test.join("retrained/model.json"));
    assert_eq!(
        exported["classes"],
        serde_json::json!(["cat", "coffee", "rocket"])
    );
    assert_eq!(exported["provenance"]["trial"], lora["id"]);
    assert_eq!(
        exported["provenance"]["exported_accuracy"].as_f64(),
        Some(recorded)
    );
    assert_eq!(exported["input"]["image"]["size"], 32);
    let card = std::fs::read_to_string(test.join("retrained/README.md")).unwrap();
    assert!(card.contains("lora (rank 4, alpha 8"), "{card}");
    let sweep = json(&test.join("runs/photos/sweep.json"));
    assert!(
        card.contains(&format!("| sweep id | {} |", sweep["id"].as_str().unwrap())),
        "{card}"
    );
    assert!(
        card.contains(&format!("| accuracy (recorded) | {recorded:.4} |")),
        "{card}"
    );
    // LoRA's matrices are folded into the weights: the file holds the plain cnn6's tensors.
    let weights = std::fs::read(test.join("retrained/model.safetensors")).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&weights, &candle_core::Device::Cpu);
    let names: Vec<String> = tensors.unwrap().into_keys().collect();
    assert_eq!(
        names.len(),
        12,
        "cnn6's 5 blocks and head, weight and bias each: {names:?}"
    );

    // The photos classified from their files, as `predict` prepares them, score what the
    // trial scored on them.
    assert_eq!(accuracy_of_predictions(&test, "retrained"), recorded);

    // Kept by the sweep (`checkpoints: true`; the trial's id does not change): the same
    // weights, bit for bit, as retraining made.
    let ran = test.run(&[
        "run",
        "spec.yaml",
        "--device",
        "cpu",
        "--set",
        "checkpoints=true",
        "--store",
        "kept",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let id = lora["id"].as_str().unwrap();
    let ran = test.run(&[
        "export",
        "kept/photos",
        "--trial",
        &id[..6],
        "--out",
        "kept-model",
        "--device",
        "cpu",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!ran.stderr.contains("retraining"), "{}", ran.stderr);
    assert_eq!(
        std::fs::read(test.join("kept-model/model.safetensors")).unwrap(),
        weights
    );

    // Text output: one line per input, classes with probabilities.
    let ran = test.run(&[
        "predict",
        "kept-model",
        "photos/test/cat/0.png",
        "--device",
        "cpu",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.starts_with("photos/test/cat/0.png: "),
        "{}",
        ran.stdout
    );
    assert_eq!(
        ran.stdout.matches(", ").count(),
        2,
        "3 classes: {}",
        ran.stdout
    );
}

#[test]
fn a_failed_or_missing_trial_is_not_exported() {
    // A learning rate that makes the loss infinite: the trial fails, and is recorded so.
    let spec = spec().replace("lr: 1.0e-2,", "lr: 1.0e+30,");
    let test = Test::new().file("spec.yaml", spec);
    write_folder(&test.join("photos"), 6);
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "0"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let ran = test.run(&["export", "runs/photos", "--trial", "0", "--out", "m"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(!test.join("m").exists());
    let id = &test.records("photos").into_keys().next().unwrap();
    insta::assert_snapshot!("failed", ran.stderr.replace(id.as_str(), "<id>"));
    let ran = test.run(&["export", "runs/photos", "--trial", "1", "--out", "m"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("has not run"), "{}", ran.stderr);
    let ran = test.run(&["export", "runs/photos", "--best", "finetune", "--out", "m"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    insta::assert_snapshot!("no_best", ran.stderr);
    let ran = test.run(&["predict", "runs", "photos/test/cat/0.png"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("has no model.json"), "{}", ran.stderr);
}

/// A text model: the tokenizer travels with it, class names are the folders', and `predict`
/// reads texts given as arguments and as files of lines.
#[test]
fn an_exported_text_model_classifies_texts() {
    let spec = common::text_sweep().replace(
        "strategies: [scratch, transfer, partial_freeze, finetune]",
        "strategies: [transfer]",
    );
    let test = Test::new().file("texts.yaml", spec);
    let ran = test.run(&["run", "texts.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let ran = test.run(&[
        "export",
        "texts.yaml",
        "--best",
        "--out",
        "m",
        "--device",
        "cpu",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let exported = json(&test.join("m/model.json"));
    assert_eq!(exported["classes"], serde_json::json!(["ham", "spam"]));
    assert_eq!(exported["input"]["text"]["max_length"], 24);
    assert!(test.join("m/tokenizer.json").is_file());
    let recorded = exported["provenance"]["eval"]["accuracy"].as_f64();
    assert_eq!(
        exported["provenance"]["exported_accuracy"].as_f64(),
        recorded
    );
    let test = test.file(
        "mails.txt",
        "Meeting moved to 3pm, see agenda attached\n\nYou WON a FREE prize, click now\n",
    );
    let ran = test.run(&[
        "predict",
        "m",
        "Lunch tomorrow?",
        "mails.txt",
        "--format",
        "json",
        "--device",
        "cpu",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let predictions: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    let inputs: Vec<&str> = predictions
        .iter()
        .map(|p| p["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "Lunch tomorrow?",
            "Meeting moved to 3pm, see agenda attached",
            "You WON a FREE prize, click now"
        ]
    );
    for p in &predictions {
        let total: f64 = p["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "both classes shown, summing to 1: {p}"
        );
    }
}
