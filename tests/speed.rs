//! The speed-ups change no result: feature caching (any budget, evictions included) and
//! several trials at once give the records and weights of the plain way.

mod common;

use std::collections::BTreeMap;

use common::Test;
use serde_json::Value;

/// cnn6 on generated 8x8 glyphs: every strategy that freezes, at two depths, two data
/// sizes that nest (same seed), two seeds; with checkpoints to compare weights.
const CNN_SWEEP: &str = r#"name: cnn
datasets:
  glyphs: {format: generated, generated: {image_size: 8, train_per_class: 60, test_per_class: 150}}
model: {arch: cnn6}
source:
  pretrain:
    data: {dataset: glyphs, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
    train: {epochs: 1, batch_size: 32, lr: 1.0e-3}
target:
  train: {dataset: glyphs, classes: [15, 16, 17], per_class: 5}
  eval: {dataset: glyphs, split: test, classes: [15, 16, 17]}
train: {steps: 24, batch_size: 8, lr: 1.0e-3, log_every: 8}
strategies: [scratch, transfer, partial_freeze, prefix_frozen]
sweep:
  freeze_depth: [1, 3]
  target.train.per_class: [5, 20]
  seed: [0, 1]
checkpoints: true
"#;

/// Runs the sweep with `args` in a fresh folder; returns the records without their timings.
fn sweep(args: &[&str]) -> (Test, BTreeMap<String, Value>) {
    let test = Test::new().file("cnn.yaml", CNN_SWEEP);
    let mut all = vec!["run", "cnn.yaml", "--device", "cpu"];
    all.extend_from_slice(args);
    let ran = test.run(&all);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let mut records = test.records("cnn");
    for record in records.values_mut() {
        record.as_object_mut().unwrap().remove("timings");
    }
    (test, records)
}

fn weights(test: &Test, id: &str) -> BTreeMap<String, Vec<f32>> {
    let path = test.join(&format!("runs/cnn/checkpoints/{id}.safetensors"));
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Same trials, every one finished, the same record but for float differences up to
/// `tolerance` in losses, accuracies and weights (0: bit for bit).
fn assert_same(
    a: &(Test, BTreeMap<String, Value>),
    b: &(Test, BTreeMap<String, Value>),
    tolerance: f32,
) {
    assert_eq!(
        a.1.keys().collect::<Vec<_>>(),
        b.1.keys().collect::<Vec<_>>()
    );
    assert!(a.1.len() >= 20, "{} trials", a.1.len());
    if tolerance == 0.0 {
        assert_eq!(a.1, b.1);
    }
    let close = |x: &Value, y: &Value| {
        (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= f64::from(tolerance)
    };
    for (id, x) in &a.1 {
        let y = &b.1[id];
        assert_eq!(x["status"], "finished", "{id}: {x}");
        for key in [
            "config",
            "status",
            "steps",
            "strategies",
            "source",
            "device",
        ] {
            assert_eq!(x[key], y[key], "{id}: {key}");
        }
        assert!(
            close(&x["eval"]["accuracy"], &y["eval"]["accuracy"]),
            "{id}"
        );
        assert!(close(&x["eval"]["loss"], &y["eval"]["loss"]), "{id}");
        let (cx, cy) = (
            x["curve"].as_array().unwrap(),
            y["curve"].as_array().unwrap(),
        );
        assert_eq!(cx.len(), 3);
        for (px, py) in cx.iter().zip(cy) {
            assert!(close(&px["loss"], &py["loss"]), "{id}: {px} {py}");
        }
        let (wx, wy) = (weights(&a.0, id), weights(&b.0, id));
        assert_eq!(wx.keys().collect::<Vec<_>>(), wy.keys().collect::<Vec<_>>());
        for (name, vx) in &wx {
            let worst = vx
                .iter()
                .zip(&wy[name])
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tolerance, "{id}: {name} differs by {worst}");
        }
    }
}

#[test]
fn feature_caching_gives_the_weights_of_running_frozen_blocks_every_step() {
    let plain = sweep(&["--feature-cache-mb", "0"]);
    let cached = sweep(&[]);
    assert_same(&plain, &cached, 1e-4);
    // In 2 MiB, block 1's outputs (8 KiB an image) on 60 training images fit, on the 450 test
    // images they do not: evictions and the fallback to running frozen blocks every step
    // change nothing either.
    let tight = sweep(&["--feature-cache-mb", "2"]);
    assert_same(&plain, &tight, 1e-4);
}

#[test]
fn two_jobs_give_the_records_of_one() {
    let one = sweep(&["--jobs", "1"]);
    let two = sweep(&["--jobs", "2"]);
    // Bit for bit: an image's cached features do not depend on which trial computed them.
    assert_same(&one, &two, 0.0);
}
