//! Proof that EfficientNet-Lite0 and its import are right, against an outside reference and
//! without PyTorch: the real ImageNet weights classify three real photos (shipped in
//! scikit-image's wheel, put in assets/ by `scripts/assets`) into the right ImageNet classes.
//!
//! Preprocessing is the reference's (`efficientnet_lite_pytorch`'s README, torchvision):
//! resize the shorter side to 224 (bilinear, antialiased), normalise with ImageNet's mean
//! and standard deviation; the centre 224x224 crop lets the three photos share a batch.

mod common;

use std::path::Path;

use candle_core::{D, Device, Tensor};
use common::asset;
use xferlab::checkpoint;
use xferlab::data::folder;
use xferlab::model::efficientnet::{self, EfficientNetLite, IMAGE_SIZE};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A photo as the reference feeds it: CHW, shorter side resized to 224, centre-cropped (as
/// image folders are: `data::folder::fit`), normalised.
fn preprocess(path: &Path) -> Tensor {
    let image = image::open(path).unwrap();
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let values: Vec<f32> = (folder::fit(&image, IMAGE_SIZE, 3).into_iter().enumerate())
        .map(|(i, v)| (v - MEAN[i / plane]) / STD[i / plane])
        .collect();
    Tensor::from_vec(values, (3, IMAGE_SIZE, IMAGE_SIZE), &Device::Cpu).unwrap()
}

#[test]
fn efficientnet_lite0_with_imagenet_weights_names_three_real_photos() {
    let state =
        checkpoint::read(&asset("efficientnet-lite0/efficientnet-lite0-57934424.pth")).unwrap();
    let imported = efficientnet::import(&state);
    // Every tensor is placed except BatchNorm's step counters, one per BatchNorm (49).
    assert_eq!(imported.tensors.len(), 247);
    assert_eq!(imported.dropped.len(), 49);
    assert!(
        imported
            .dropped
            .iter()
            .all(|n| n.ends_with(".num_batches_tracked"))
    );
    let model = EfficientNetLite::from_tensors(&imported.tensors, 1000).unwrap();
    assert_eq!(model.block_count(), 9);

    // (photo, what it shows, the ImageNet classes that count as right)
    let photos = [
        ("chelsea.png", "a tabby cat", [281, 282, 285]),
        ("coffee.png", "a cup of coffee", [967, 968, 504]),
        ("rocket.jpg", "a rocket", [657, 744, 812]),
    ];
    let batch: Vec<Tensor> = photos
        .iter()
        .map(|(file, ..)| preprocess(&asset(&format!("photos/{file}"))))
        .collect();
    let batch = Tensor::stack(&batch, 0).unwrap();

    // Shapes through the blocks: 112 after the stem, 7 after the last stage.
    let started = std::time::Instant::now();
    let features = model.forward_blocks(&batch, 0..1).unwrap();
    assert_eq!(features.dims(), [3, 32, 112, 112]);
    let features = model.forward_blocks(&features, 1..9).unwrap();
    assert_eq!(features.dims(), [3, 1280, 7, 7]);
    let logits = model.head(&features).unwrap();
    assert_eq!(logits.dims(), [3, 1000]);
    println!(
        "forward pass of 3 images at 224x224 on the CPU: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();

    let mut wrong = Vec::new();
    for ((file, shows, right), p) in photos.iter().zip(&probabilities) {
        let mut ranked: Vec<(usize, f32)> = p.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top5 = &ranked[..5];
        let listed: Vec<String> = top5
            .iter()
            .map(|(class, p)| format!("{class} ({p:.3})"))
            .collect();
        println!("{file} ({shows}): top-5 {}", listed.join(", "));
        if !top5.iter().any(|(class, _)| right.contains(class)) {
            wrong.push(format!("{file}: none of {right:?} in the top-5"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}
