//! Image folders from real photos: a folder in torchvision's layout made by the test from the
//! photos scripts/assets fetches (crops of a cat, a coffee cup and a rocket, as PNG and
//! JPEG), swept end to end with a source pretrained on the generated glyphs resized to the
//! same RGB size.

mod common;

use common::{PHOTO_SWEEP as SPEC, Test, write_folder};

#[test]
fn a_sweep_trains_on_an_image_folder_of_real_photos() {
    let test = Test::new().file("spec.yaml", SPEC);
    write_folder(&test.join("photos"), 8);
    let plan = test.run(&["plan", "spec.yaml"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let records = test.records("photos");
    assert_eq!(records.len(), 3);
    for record in records.values() {
        assert_eq!(record["status"], "finished", "{record}");
        let accuracy = record["eval"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
    }
}

#[test]
fn a_corrupt_photo_is_refused_by_validate_naming_the_file() {
    let test = Test::new().file("spec.yaml", SPEC);
    write_folder(&test.join("photos"), 8);
    std::fs::write(
        test.join("photos/test/rocket/3.jpg"),
        b"\xff\xd8 not a jpeg",
    )
    .unwrap();
    let ran = test.run(&["validate", "spec.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("photos/test/rocket/3.jpg") && ran.stderr.contains("cannot decode"),
        "{}",
        ran.stderr
    );
}

/// With `skip_unreadable`, a corrupt file is left out and listed, and the classes count
/// only what was read: a `per_class` the class no longer has is refused.
#[test]
fn skip_unreadable_leaves_a_corrupt_photo_out_and_lists_it() {
    let spec = SPEC.replacen(
        "image_size: 32,",
        "image_size: 32, skip_unreadable: true,",
        1,
    );
    let test = Test::new().file("spec.yaml", &spec);
    write_folder(&test.join("photos"), 7);
    std::fs::write(
        test.join("photos/train/rocket/3.jpg"),
        b"\xff\xd8 not a jpeg",
    )
    .unwrap();
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "0"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("skipped 1 unreadable image")
            && ran.stderr.contains("photos/train/rocket/3.jpg"),
        "{}",
        ran.stderr
    );
    // A second one leaves rocket 5 readable training images: 6 per class is one too many.
    let two = test.join("photos/train/rocket/2.png");
    std::fs::write(&two, b"not a png either").unwrap();
    let ran = test.run(&["validate", "spec.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("per_class"), "{}", ran.stderr);
}

/// `normalize: imagenet` is ImageNet's per-channel mean and std: the same trial as with the
/// numbers written out, bit for bit.
#[test]
fn normalize_imagenet_is_the_written_out_mean_and_std() {
    let written = SPEC.replace(
        "mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]",
        "mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]",
    );
    let named = SPEC.replace(
        "mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]",
        "normalize: imagenet",
    );
    let test = Test::new()
        .file("written.yaml", &written)
        .file("named.yaml", named.replace("name: photos", "name: named"));
    write_folder(&test.join("photos"), 6);
    for spec in ["written.yaml", "named.yaml"] {
        let ran = test.run(&["run", spec, "--device", "cpu", "--trial", "0"]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    }
    let accuracy = |name: &str| {
        let records = test.records(name);
        records.values().next().unwrap()["eval"]["accuracy"].clone()
    };
    assert_eq!(accuracy("photos"), accuracy("named"));
    let both = SPEC.replacen("image_size: 32,", "image_size: 32, normalize: imagenet,", 1);
    let test = test.file("both.yaml", both);
    let ran = test.run(&["validate", "both.yaml"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("give either `normalize` or `mean` and `std`"),
        "{}",
        ran.stderr
    );
}

#[test]
fn holdout_splits_each_class_into_disjoint_train_and_test() {
    let test = Test::new();
    write_folder(&test.join("all"), 5);
    // One folder of classes, no train/ or test/: move train's classes up, drop test.
    let flat = test.join("flat");
    std::fs::rename(test.join("all/train"), &flat).unwrap();
    let spec = SPEC
        .replace(
            "{format: image_folder, dir: photos, image_size: 32,",
            "{format: image_folder, dir: flat, holdout: 0.4, image_size: 32,",
        )
        .replace("per_class: 6", "per_class: 3");
    let test = test.file("spec.yaml", spec);
    let ran = test.run(&["run", "spec.yaml", "--device", "cpu", "--trial", "0"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // 5 images a class: 2 held out for test, 3 to train on, so per_class 4 is too many.
    let ran = test.run(&["validate", "spec.yaml", "--set", "target.train.per_class=4"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("per_class 4 is more than class 0 has: 3 images"),
        "{}",
        ran.stderr
    );
}
