//! Transfer from real ImageNet weights: EfficientNet-Lite0's published checkpoint (legacy
//! PyTorch format, EfficientNet-PyTorch names; put in assets/ by `scripts/assets`) feeds a
//! tiny sweep of every strategy on RGB glyphs, through the feature cache, and the frozen
//! blocks' BatchNorm statistics come out of training exactly as the checkpoint had them. A
//! checkpoint with a tensor missing or of the wrong shape is refused by name, xferlab's and
//! the checkpoint's.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::Test;
use xferlab::model::efficientnet;

/// The real EfficientNet-Lite0 ImageNet weights.
fn weights() -> PathBuf {
    common::asset("efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

fn spec(checkpoint: &Path, strategies: &str) -> String {
    format!(
        r#"name: imagenet-tiny
datasets:
  rgb: {{format: generated, channels: 3,
        generated: {{classes: 3, image_size: 32, train_per_class: 20, test_per_class: 20}},
        mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
model: {{arch: efficientnet_lite0}}
source: {{checkpoint: {}}}
target:
  train: {{dataset: rgb, classes: [0, 1, 2], per_class: 5}}
  eval: {{dataset: rgb, split: test, classes: [0, 1, 2]}}
train: {{steps: 8, batch_size: 10, optimizer: adam, lr: 1.0e-3}}
strategies: {strategies}
freeze_depth: 5
checkpoints: true
"#,
        checkpoint.display()
    )
}

fn records(test: &Test) -> Vec<serde_json::Value> {
    std::fs::read_dir(test.join("runs/imagenet-tiny/trials"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_tiny_sweep_transfers_imagenet_weights_through_every_strategy() {
    let weights = weights();
    let test = Test::new()
        .file(
            "tiny.yaml",
            spec(&weights, "[scratch, transfer, partial_freeze, finetune]"),
        )
        .env("RUST_LOG", "xferlab::features=debug")
        .env("NO_COLOR", "1");
    let ran = test.run(&["run", "tiny.yaml", "--device", "cpu", "--store", "runs"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("245 tensors mapped, dropped the old classifier (_fc.bias, _fc.weight) and 49 BatchNorm num_batches_tracked counters"),
        "{said}"
    );
    // The frozen prefix runs once per image: for transfer (f = 9) and partial_freeze
    // (f = 5), on the training and on the evaluation images.
    assert_eq!(said.matches("feature cache filled").count(), 4, "{said}");
    let records = records(&test);
    assert_eq!(records.len(), 4);
    for record in &records {
        assert_eq!(record["status"], "finished", "{record}");
        let accuracy = record["eval"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{record}");
    }

    // partial_freeze's saved weights: blocks 1..5 hold the checkpoint's BatchNorm statistics
    // bit for bit, block 6 trained its own.
    let partial = records
        .iter()
        .find(|r| r["strategies"][0] == "partial_freeze")
        .unwrap();
    let id = partial["id"].as_str().unwrap();
    let saved = candle_core::safetensors::load(
        test.join(&format!("runs/imagenet-tiny/checkpoints/{id}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let source = efficientnet::import(&xferlab::checkpoint::read(&weights).unwrap()).tensors;
    for name in [
        "b1.bn.running_mean",
        "b3.1.expand_bn.running_var",
        "b5.2.project_bn.running_mean",
    ] {
        assert_eq!(flat(&saved[name]), flat(&source[name]), "{name}");
    }
    for name in ["b6.0.expand_bn.running_var", "b9.bn.running_mean"] {
        assert_ne!(flat(&saved[name]), flat(&source[name]), "{name}");
    }
}

/// Writes the real checkpoint as safetensors, changed by `change`, and validates a spec that
/// transfers from it.
fn validate_changed(change: impl FnOnce(&mut HashMap<String, Tensor>)) -> common::Ran {
    let state = xferlab::checkpoint::read(&weights()).unwrap();
    let mut tensors: HashMap<String, Tensor> = state.tensors.into_iter().collect();
    change(&mut tensors);
    let test = Test::new();
    let path = test.join("changed.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let test = test.file("changed.yaml", spec(&path, "[transfer]"));
    test.run(&["validate", "changed.yaml"])
}

#[test]
fn a_misshaped_or_missing_tensor_is_named_as_xferlab_and_the_checkpoint_call_it() {
    let ran = validate_changed(|tensors| {
        tensors.insert(
            "_blocks.3._depthwise_conv.weight".into(),
            Tensor::zeros((144, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for part in [
        "`b4.0.depthwise_conv.weight`",
        "`_blocks.3._depthwise_conv.weight`",
        "[144, 1, 3, 3]",
        "[144, 1, 5, 5]",
        "changed.yaml:",
    ] {
        assert!(ran.stderr.contains(part), "{part}: {}", ran.stderr);
    }

    let ran = validate_changed(|tensors| {
        tensors.remove("_bn0.running_var");
    });
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for part in ["`b1.bn.running_var`", "`_bn0.running_var`", "changed.yaml:"] {
        assert!(ran.stderr.contains(part), "{part}: {}", ran.stderr);
    }
}
