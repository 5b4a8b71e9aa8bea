//! ResNet-18/34/50 against torchvision itself: the same weights through torchvision's
//! forward pass (`scripts/resnet-reference.py`, which made tests/data/resnet/torchvision.json)
//! and through xferlab's checkpoint import and blocks give the same logits within 1e-4. No
//! real ResNet weights can be fetched offline and a random resnet50 is 100 MB, so both sides
//! draw every tensor from the same counter-based generator (described in the script). Then
//! a tiny sweep transfers such a torchvision-layout checkpoint through every strategy, and
//! bad checkpoints are refused by name.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::Test;
use xferlab::data::ImageShape;
use xferlab::model::Network;
use xferlab::model::import::{self, Layout};
use xferlab::spec::{Arch, ModelSpec};

/// splitmix64, as the generator script computes it with numpy.
fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Values u_0..u_{n-1} of `stream`, in [0, 1).
fn uniform(stream: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| (splitmix64((stream << 32) | i) >> 40) as f64 / (1u64 << 24) as f64)
        .collect()
}

/// Tensor `name` of `shape` from stream `stream`, by the script's rules.
fn value(name: &str, shape: &[usize], stream: u64) -> Tensor {
    let u = uniform(stream, shape.iter().product());
    let values: Vec<f32> = u
        .iter()
        .map(|&u| {
            if name.ends_with("running_var") {
                0.5 + u
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                0.2 * (u - 0.5)
            } else if shape.len() == 1 {
                0.5 + 0.5 * u
            } else {
                let fan_in: usize = shape[1..].iter().product();
                (2.0 * u - 1.0) * (3.0 / fan_in as f64).sqrt()
            }
        })
        .map(|v| v as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn model(arch: Arch) -> ModelSpec {
    ModelSpec::plain(arch)
}

/// The generator's state dict under torchvision's names, `num_batches_tracked` included,
/// with a 1000-class `fc`.
fn torchvision_state(arch: Arch) -> HashMap<String, Tensor> {
    let shape = ImageShape {
        channels: 3,
        height: 64,
        width: 64,
    };
    let net = Network::new(&model(arch), shape, 1000, 0, &Device::Cpu).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = (net.tensors().into_iter())
        .map(|(name, t)| {
            let theirs = Layout::Torchvision.checkpoint_name(&name).unwrap();
            (theirs, t.dims().to_vec())
        })
        .collect();
    shapes.sort();
    let mut state: HashMap<String, Tensor> = (shapes.iter().enumerate())
        .map(|(k, (name, shape))| (name.clone(), value(name, shape, k as u64)))
        .collect();
    for (name, _) in &shapes {
        if let Some(bn) = name.strip_suffix(".running_mean") {
            let counter = Tensor::new(100i64, &Device::Cpu).unwrap();
            state.insert(format!("{bn}.num_batches_tracked"), counter);
        }
    }
    state
}

/// Writes the generator's torchvision checkpoint for `arch`, changed by `change`.
fn write_checkpoint(
    dir: &Path,
    arch: Arch,
    change: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let mut state = torchvision_state(arch);
    change(&mut state);
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&state, &path).unwrap();
    path
}

#[test]
fn logits_agree_with_torchvision_on_the_same_weights() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/resnet/torchvision.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let input_shape: Vec<usize> = serde_json::from_value(reference["input_shape"].clone()).unwrap();
    let stream = reference["input_stream"].as_u64().unwrap();
    let input: Vec<f32> = (uniform(stream, input_shape.iter().product()).iter())
        .map(|u| (2.0 * u - 1.0) as f32)
        .collect();
    let input = Tensor::from_vec(input, input_shape.as_slice(), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (arch, name, tensors) in [
        (Arch::Resnet18, "resnet18", 102),
        (Arch::Resnet34, "resnet34", 182),
        (Arch::Resnet50, "resnet50", 267),
    ] {
        // Through the checkpoint reader and the layout's detection and renaming.
        let path = write_checkpoint(dir.path(), arch, |_| {});
        let state = xferlab::checkpoint::read(&path).unwrap();
        let mapped = import::map(&state, arch, None).unwrap();
        assert_eq!(mapped.layout, Layout::Torchvision, "{name}");
        let mut dropped = mapped.dropped.clone();
        dropped.retain(|n| !n.ends_with(".num_batches_tracked"));
        dropped.sort();
        assert_eq!(dropped, ["fc.bias", "fc.weight"], "{name}");
        // The old classifier is what the reference's logits come from: rename it too.
        let mut tensors_with_head = mapped.tensors.clone();
        for theirs in &dropped {
            let ours = Layout::Torchvision.xferlab_name(theirs).unwrap();
            tensors_with_head.insert(ours, state.get(theirs).unwrap().clone());
        }
        assert_eq!(tensors_with_head.len(), tensors, "{name}");

        let shape = ImageShape {
            channels: 3,
            height: input_shape[2],
            width: input_shape[3],
        };
        let net = Network::new(&model(arch), shape, 1000, 7, &Device::Cpu).unwrap();
        net.load_all(&tensors_with_head).unwrap();
        let ours = net.forward(&input, None).unwrap().to_vec2::<f32>().unwrap();
        let theirs: Vec<Vec<f32>> =
            serde_json::from_value(reference["logits"][name].clone()).unwrap();
        let (mut worst, mut largest) = (0f32, 0f32);
        for (o, t) in ours.iter().flatten().zip(theirs.iter().flatten()) {
            worst = worst.max((o - t).abs());
            largest = largest.max(t.abs());
        }
        println!("{name}: largest |logit| {largest:.3}, largest difference {worst:.2e}");
        assert_eq!(ours.len(), 2);
        assert!(worst < 1e-4, "{name}: logits differ by {worst}");
    }
}

fn spec(checkpoint: &Path, strategies: &str, layout: &str) -> String {
    format!(
        r#"name: resnet-tiny
datasets:
  rgb: {{format: generated, channels: 3,
        generated: {{classes: 3, image_size: 32, train_per_class: 12, test_per_class: 12}},
        mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
model: {{arch: resnet18}}
source: {{checkpoint: {}{layout}}}
target:
  train: {{dataset: rgb, classes: [0, 1, 2], per_class: 6}}
  eval: {{dataset: rgb, split: test, classes: [0, 1, 2]}}
train: {{steps: 4, batch_size: 9, optimizer: adam, lr: 1.0e-3}}
strategies: {strategies}
freeze_depth: 3
checkpoints: true
"#,
        checkpoint.display()
    )
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
fn a_tiny_sweep_transfers_a_torchvision_checkpoint_through_every_strategy() {
    let test = Test::new().env("NO_COLOR", "1");
    let weights = write_checkpoint(test.path(), Arch::Resnet18, |_| {});
    let test = test.file(
        "tiny.yaml",
        spec(
            &weights,
            "[scratch, transfer, partial_freeze, finetune]",
            "",
        ),
    );
    let ran = test.run(&["run", "tiny.yaml", "--device", "cpu", "--store", "runs"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("(torchvision's (timm's) layout): 100 tensors mapped, dropped the old classifier (fc.bias, fc.weight) and 20 BatchNorm num_batches_tracked counters"),
        "{said}"
    );
    let records = test.records("resnet-tiny");
    assert_eq!(records.len(), 4);
    for record in records.values() {
        assert_eq!(record["status"], "finished", "{record}");
    }
    // partial_freeze's saved weights: blocks 1..3 hold the checkpoint's BatchNorm statistics
    // bit for bit, blocks 4 and 5 trained their own.
    let partial = (records.values())
        .find(|r| r["strategies"][0] == "partial_freeze")
        .unwrap();
    let id = partial["id"].as_str().unwrap();
    let saved = candle_core::safetensors::load(
        test.join(&format!("runs/resnet-tiny/checkpoints/{id}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let source = torchvision_state(Arch::Resnet18);
    for (ours, theirs) in [
        ("b1.bn1.running_mean", "bn1.running_mean"),
        (
            "b3.0.downsample.1.running_var",
            "layer2.0.downsample.1.running_var",
        ),
        ("b3.1.bn2.running_mean", "layer2.1.bn2.running_mean"),
    ] {
        assert_eq!(flat(&saved[ours]), flat(&source[theirs]), "{ours}");
    }
    for (ours, theirs) in [
        ("b4.0.bn1.running_var", "layer3.0.bn1.running_var"),
        ("b5.1.bn2.running_mean", "layer4.1.bn2.running_mean"),
    ] {
        assert_ne!(flat(&saved[ours]), flat(&source[theirs]), "{ours}");
    }
}

/// Validates a resnet18 spec transferring from the generator's checkpoint, changed.
fn validate_changed(
    change: impl FnOnce(&mut HashMap<String, Tensor>),
    layout: &str,
) -> common::Ran {
    let test = Test::new();
    let path = write_checkpoint(test.path(), Arch::Resnet18, change);
    let test = test.file("changed.yaml", spec(&path, "[transfer]", layout));
    test.run(&["validate", "changed.yaml"])
}

#[test]
fn a_bad_checkpoint_is_refused_by_name_in_both_layouts() {
    let ran = validate_changed(
        |state| {
            state.remove("layer2.0.downsample.1.running_var");
        },
        "",
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for part in [
        "`b3.0.downsample.1.running_var`",
        "`layer2.0.downsample.1.running_var` in torchvision's (timm's) layout",
        "changed.yaml:",
    ] {
        assert!(ran.stderr.contains(part), "{part}: {}", ran.stderr);
    }

    let ran = validate_changed(
        |state| {
            let wide = Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
            state.insert("conv1.weight".into(), wide);
        },
        "",
    );
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for part in ["`b1.conv1.weight`", "[64, 3, 3, 3]", "[64, 3, 7, 7]"] {
        assert!(ran.stderr.contains(part), "{part}: {}", ran.stderr);
    }

    // A layout named wrongly: torchvision's names are not EfficientNet-PyTorch's.
    let ran = validate_changed(|_| {}, ", layout: efficientnet_pytorch");
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("EfficientNet-PyTorch's layout")
            && ran.stderr.contains("which `resnet18` does not read"),
        "{}",
        ran.stderr
    );
    // Named rightly, it reads as when detected.
    let ran = validate_changed(|_| {}, ", layout: timm");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn an_efficientnet_checkpoint_does_not_feed_a_resnet() {
    let weights = common::asset("efficientnet-lite0/efficientnet-lite0-57934424.pth");
    let test = Test::new().file("wrong.yaml", spec(&weights, "[transfer]", ""));
    let ran = test.run(&["validate", "wrong.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for part in [
        "EfficientNet-PyTorch's layout",
        "which `resnet18` does not read",
        "EfficientNet-PyTorch's checkpoints feed `efficientnet_lite0`",
    ] {
        assert!(ran.stderr.contains(part), "{part}: {}", ran.stderr);
    }
}

/// A timm ResNet in the Hugging Face cache, as the hub libraries lay it out, is found by
/// `hub: timm/NAME` and read in timm's (torchvision's) names.
#[test]
fn a_timm_resnet_in_the_hugging_face_cache_is_found_and_read() {
    let test = Test::new();
    let snapshot = test.join("hf/models--timm--resnet18.a1_in1k/snapshots/r1");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(test.join("hf/models--timm--resnet18.a1_in1k/refs")).unwrap();
    std::fs::write(
        test.join("hf/models--timm--resnet18.a1_in1k/refs/main"),
        "r1",
    )
    .unwrap();
    write_checkpoint(&snapshot, Arch::Resnet18, |_| {});
    let spec = spec(Path::new("unused"), "[transfer]", "")
        .replace("{checkpoint: unused}", "{hub: timm/resnet18.a1_in1k}");
    let cache = test.join("hf").to_str().unwrap().to_string();
    let test = test.file("hub.yaml", spec).env("HF_HUB_CACHE", &cache);
    let ran = test.run(&["plan", "hub.yaml"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let ran = test.run(&["run", "hub.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("(torchvision's (timm's) layout): 100 tensors mapped"),
        "{}",
        ran.stderr
    );
}
