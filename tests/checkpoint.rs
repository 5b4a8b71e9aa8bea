//! Reading checkpoints other programs wrote: the real EfficientNet-Lite0 ImageNet weights
//! (PyTorch's legacy format), tiny zip and legacy files made without PyTorch
//! (`tests/data/checkpoint/make.py`), and files that must be refused without a panic.

mod common;

use std::path::{Path, PathBuf};

use candle_core::DType;
use xferlab::checkpoint::{self, Format};

/// The real EfficientNet-Lite0 ImageNet weights.
fn efficientnet_lite0() -> PathBuf {
    common::asset("efficientnet-lite0/efficientnet-lite0-57934424.pth")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/checkpoint")
        .join(name)
}

/// Writes `bytes` to a file in a temporary folder and reads it as a checkpoint.
fn read_bytes(bytes: &[u8]) -> Result<checkpoint::StateDict, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pth");
    std::fs::write(&path, bytes).unwrap();
    checkpoint::read(&path).map_err(|e| e.to_string())
}

#[test]
fn the_real_efficientnet_lite0_weights_read_as_296_tensors() {
    let state = checkpoint::read(&efficientnet_lite0()).unwrap();
    assert_eq!(state.format, Format::PytorchLegacy);
    assert_eq!(state.tensors.len(), 296);
    let shape = |name: &str| state.get(name).unwrap().dims().to_vec();
    assert_eq!(shape("_conv_stem.weight"), [32, 3, 3, 3]);
    assert_eq!(shape("_blocks.0._depthwise_conv.weight"), [32, 1, 3, 3]);
    assert_eq!(shape("_blocks.15._project_conv.weight"), [320, 1152, 1, 1]);
    assert_eq!(shape("_conv_head.weight"), [1280, 320, 1, 1]);
    assert_eq!(shape("_fc.weight"), [1000, 1280]);
    assert_eq!(shape("_fc.bias"), [1000]);
    assert!(state.get("_blocks.0._expand_conv.weight").is_none());
    // The file's order is the model's: stem first, classifier last.
    assert_eq!(state.tensors[0].0, "_conv_stem.weight");
    assert_eq!(state.tensors[295].0, "_fc.bias");

    let var = state.get("_bn0.running_var").unwrap();
    assert_eq!(var.dtype(), DType::F32);
    // Variances are never negative; a few channels of this stem are dead (variance exactly
    // 0 in the published file, as Python reads it too), the rest positive.
    let var = var.to_vec1::<f32>().unwrap();
    assert!(var.iter().all(|v| *v >= 0.0 && v.is_finite()));
    assert_eq!(var.iter().filter(|v| **v > 0.0).count(), 28);
    assert!((var[1] - 70.371574).abs() < 1e-4, "{}", var[1]);
    let tracked = state.get("_bn0.num_batches_tracked").unwrap();
    assert_eq!(tracked.dtype(), DType::I64);
    assert_eq!(tracked.dims(), [] as [usize; 0]);
    // Trained weights: finite, neither all zero nor huge.
    let stem = state
        .get("_conv_stem.weight")
        .unwrap()
        .flatten_all()
        .unwrap();
    let stem = stem.to_vec1::<f32>().unwrap();
    assert!(stem.iter().all(|v| v.is_finite() && v.abs() < 100.0));
    assert!(stem.iter().any(|v| v.abs() > 0.01));
}

#[test]
fn tiny_zip_and_legacy_files_made_without_pytorch_read_alike() {
    for (name, format) in [
        ("tiny-zip.pth", Format::PytorchZip),
        ("tiny-legacy.pth", Format::PytorchLegacy),
    ] {
        let state = checkpoint::read(&fixture(name)).unwrap();
        assert_eq!(state.format, format, "{name}");
        let names: Vec<&str> = state.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "layer.weight",
                "layer.weight_t",
                "layer.window",
                "bn.num_batches_tracked"
            ]
        );
        let matrix = |n: &str| state.get(n).unwrap().to_vec2::<f32>().unwrap();
        // A parameter, its transpose (strides 1, 4) and a 2x2 window at offset 5, all
        // views of one storage holding 0..11.
        assert_eq!(
            matrix("layer.weight"),
            [[0., 1., 2., 3.], [4., 5., 6., 7.], [8., 9., 10., 11.]]
        );
        assert_eq!(
            matrix("layer.weight_t"),
            [[0., 4., 8.], [1., 5., 9.], [2., 6., 10.], [3., 7., 11.]]
        );
        assert_eq!(matrix("layer.window"), [[5., 6.], [9., 10.]]);
        let tracked = state.get("bn.num_batches_tracked").unwrap();
        assert_eq!(tracked.to_scalar::<i64>().unwrap(), 7);
    }
}

/// The three pickles that open every legacy file: magic number, version 1001, system.
fn legacy_preamble() -> Vec<u8> {
    let mut bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e".to_vec();
    bytes.extend_from_slice(b"\x80\x02M\xe9\x03.");
    bytes.extend_from_slice(b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.");
    bytes
}

#[test]
fn a_file_whose_pickle_calls_os_system_is_refused_naming_it() {
    let mut bytes = legacy_preamble();
    // os.system("touch pwned"): GLOBAL, the argument, TUPLE1, REDUCE, STOP.
    bytes.extend_from_slice(b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwned\x85R.");
    let error = read_bytes(&bytes).unwrap_err();
    assert!(error.contains("`os.system`"), "{error}");
    assert!(error.contains("refused"), "{error}");

    // The same inside a real state dict: the call hides among the tensors.
    let mut bytes = legacy_preamble();
    bytes.extend_from_slice(
        b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00acbuiltins\neval\nX\x01\x00\x00\x001\x85Ru.",
    );
    let error = read_bytes(&bytes).unwrap_err();
    assert!(error.contains("`builtins.eval`"), "{error}");

    let error = checkpoint::read(&fixture("malicious-zip.pth")).unwrap_err();
    assert!(error.to_string().contains("`os.system`"), "{error}");
}

#[test]
fn truncated_and_foreign_files_are_errors_not_panics() {
    let real = std::fs::read(fixture("tiny-legacy.pth")).unwrap();
    let zip = std::fs::read(fixture("tiny-zip.pth")).unwrap();
    for file in [&real, &zip] {
        // Every cut, from inside the magic number to the last storage byte.
        for length in 0..file.len() {
            let result = read_bytes(&file[..length]);
            assert!(result.is_err(), "cut at {length} read");
        }
    }
    let big = std::fs::read(efficientnet_lite0()).unwrap();
    for length in [
        20,
        137,
        10_000,
        42_486,
        47_000,
        big.len() / 2,
        big.len() - 1,
    ] {
        let error = read_bytes(&big[..length]).unwrap_err();
        assert!(error.contains("checkpoint"), "{error}");
    }
    let mut trailing = real.clone();
    trailing.push(0);
    assert!(read_bytes(&trailing).unwrap_err().contains("follow"));
    let error = read_bytes(b"not a checkpoint at all").unwrap_err();
    assert!(error.contains("not a checkpoint xferlab reads"), "{error}");
    let missing = checkpoint::read(Path::new("/nonexistent/model.pth")).unwrap_err();
    assert!(missing.to_string().contains("cannot be read"), "{missing}");
}

#[test]
fn damaged_bytes_anywhere_are_errors_or_tensors_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let path = Path::new("damaged.pth");
    for name in ["tiny-legacy.pth", "tiny-zip.pth"] {
        let original = std::fs::read(fixture(name)).unwrap();
        for round in 0..3000 {
            let mut bytes = original.clone();
            let mut changes = Vec::new();
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
                changes.push((at, bytes[at]));
            }
            let outcome = std::panic::catch_unwind(|| checkpoint::parse(&bytes, path).is_ok());
            assert!(
                outcome.is_ok(),
                "{name} round {round}: {changes:?} panicked"
            );
        }
    }
}

#[test]
fn safetensors_files_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let t = candle_core::Tensor::arange(0f32, 6., &candle_core::Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("b.w".to_string(), t.clone())]),
        &path,
    )
    .unwrap();
    let state = checkpoint::read(&path).unwrap();
    assert_eq!(state.format, Format::Safetensors);
    assert_eq!(
        state.get("b.w").unwrap().to_vec2::<f32>().unwrap(),
        t.to_vec2::<f32>().unwrap()
    );
}
