//! Real data and real checkpoints: Debian's Fashion-MNIST IDX files, a pretrained source
//! model reused as a safetensors checkpoint, and checkpoints that do not fit.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::Test;

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

fn spec(source: &str) -> String {
    format!(
        r#"name: fm
datasets:
  fmnist: {{format: idx, dir: {FMNIST}, mean: 0.2860, std: 0.3530}}
model: {{arch: mlp, hidden: [32, 16]}}
source:
{source}
target:
  train: {{dataset: fmnist, classes: [1, 7], per_class: 20}}
  eval: {{dataset: fmnist, split: test, classes: [1, 7]}}
train: {{steps: 30, batch_size: 20, lr: 1.0e-3}}
strategies: [scratch, transfer]
"#
    )
}

const PRETRAIN: &str = "  pretrain:\n    data: {dataset: fmnist, classes: [0, 2, 4], per_class: 300}\n    train: {steps: 60, batch_size: 32, lr: 1.0e-3}";

fn record(test: &Test, strategy: &str) -> serde_json::Value {
    let dir = test.join("runs/fm/trials");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .find(|r| r["strategies"][0] == strategy)
        .unwrap()
}

#[test]
fn fashion_mnist_trains_and_its_source_model_is_a_reusable_checkpoint() {
    assert!(
        std::path::Path::new(FMNIST).is_dir(),
        "the tests read Fashion-MNIST: run scripts/test, or apt-get install dataset-fashion-mnist"
    );
    let test = Test::new().file("pretrain.yaml", spec(PRETRAIN));
    let ran = test.run(&["run", "pretrain.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // Trouser against sneaker from 20 real images each: far above chance.
    let scratch = record(&test, "scratch");
    assert!(
        scratch["eval"]["accuracy"].as_f64().unwrap() > 0.9,
        "{scratch}"
    );
    let transfer = record(&test, "transfer");
    let source = transfer["source"]
        .as_str()
        .unwrap()
        .strip_prefix("pretrain:")
        .unwrap()
        .to_string();

    // The pretrained source is a plain safetensors file: use it as a checkpoint source.
    let checkpoint = test.join(&format!("runs/sources/{source}.safetensors"));
    let names: Vec<String> = candle_core::safetensors::load(&checkpoint, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect();
    assert!(
        names.contains(&"b1.linear.weight".to_string())
            && names.contains(&"head.weight".to_string()),
        "{names:?}"
    );
    std::fs::remove_dir_all(test.join("runs/fm")).unwrap();
    let test = test.file(
        "checkpoint.yaml",
        spec(&format!("  checkpoint: {}", checkpoint.display())),
    );
    let ran = test.run(&["run", "checkpoint.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let from_checkpoint = record(&test, "transfer");
    assert_eq!(from_checkpoint["source"], checkpoint.display().to_string());
    // Same weights, same seed, same data: the same result as transferring from the pretrain.
    assert_eq!(from_checkpoint["eval"], transfer["eval"]);
    assert_ne!(from_checkpoint["id"], transfer["id"]);

    // The same file in a Hugging Face cache, as the hub libraries lay it out: `hub: ORG/NAME`.
    let model = test.join("hf/models--someone--fm-mlp");
    std::fs::create_dir_all(model.join("snapshots/r1")).unwrap();
    std::fs::create_dir_all(model.join("refs")).unwrap();
    std::fs::write(model.join("refs/main"), "r1").unwrap();
    std::fs::copy(&checkpoint, model.join("snapshots/r1/model.safetensors")).unwrap();
    std::fs::remove_dir_all(test.join("runs/fm")).unwrap();
    let cache = test.join("hf").to_str().unwrap().to_string();
    let test = test
        .file("hub.yaml", spec("  hub: someone/fm-mlp"))
        .env("HF_HUB_CACHE", &cache);
    let ran = test.run(&["run", "hub.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let from_hub = record(&test, "transfer");
    assert!(
        from_hub["source"]
            .as_str()
            .unwrap()
            .ends_with("models--someone--fm-mlp/snapshots/r1/model.safetensors"),
        "{from_hub}"
    );
    assert_eq!(from_hub["eval"], transfer["eval"]);
    // A name the cache lacks is refused at its line, saying where xferlab looked.
    let absent = test.file("absent.yaml", spec("  hub: someone/absent"));
    let ran = absent.run(&["validate", "absent.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("`someone/absent` is not in the local Hugging Face cache")
            && ran.stderr.contains("absent.yaml:6:8")
            && ran.stderr.contains("models--someone--absent/snapshots"),
        "{}",
        ran.stderr
    );
}

/// Tensors of a checkpoint file: name, shape, dtype.
type Tensors<'a> = &'a [(&'a str, &'a [usize], DType)];

fn write_checkpoint(test: &Test, name: &str, tensors: Tensors) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, shape, dtype)| {
            (
                n.to_string(),
                Tensor::zeros(*shape, *dtype, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, test.join(name)).unwrap();
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_by_name() {
    let test = Test::new().file("spec.yaml", spec("  checkpoint: ckpt.safetensors"));
    let cases: [(Tensors, &str); 3] = [
        (
            &[
                ("b1.linear.weight", &[32, 784], DType::F32),
                ("b1.linear.bias", &[32], DType::F32),
            ],
            "has no tensor `b2.linear.bias` (needed for block 2)",
        ),
        (
            &[
                ("b1.linear.weight", &[32, 100], DType::F32),
                ("b1.linear.bias", &[32], DType::F32),
                ("b2.linear.weight", &[16, 32], DType::F32),
                ("b2.linear.bias", &[16], DType::F32),
            ],
            "tensor `b1.linear.weight` has shape [32, 100], the model needs [32, 784]",
        ),
        (
            &[
                ("b1.linear.weight", &[32, 784], DType::U8),
                ("b1.linear.bias", &[32], DType::F32),
                ("b2.linear.weight", &[16, 32], DType::F32),
                ("b2.linear.bias", &[16], DType::F32),
            ],
            "tensor `b1.linear.weight` holds U8, not floating-point weights",
        ),
    ];
    for (tensors, expected) in cases {
        write_checkpoint(&test, "ckpt.safetensors", tensors);
        let ran = test.run(&["validate", "spec.yaml"]);
        assert_eq!(ran.code, 2, "{}", ran.stderr);
        assert!(
            ran.stderr.contains(expected),
            "expected `{expected}` in:\n{}",
            ran.stderr
        );
        assert!(ran.stderr.contains("ckpt.safetensors"), "{}", ran.stderr);
    }
}
