//! BatchNorm the way practitioners need it: frozen blocks run on their running statistics and
//! leave them untouched, bit for bit, while trainable blocks update theirs; the statistics are
//! never given to the optimizer, and evaluation changes none of them.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use xferlab::data::{Batchable, ImageShape};
use xferlab::model::batch_norm::is_running_statistic;
use xferlab::model::{Network, block_of};
use xferlab::spec::{Arch, ModelSpec, TrainSpec};
use xferlab::train::{Fit, evaluate, fit};

/// A partial_freeze fit at f = 5 leaves every running statistic of blocks 1..5 as the
/// source had it, bit for bit, and updates those of the trainable blocks.
#[test]
fn frozen_blocks_keep_the_source_running_statistics_and_trainable_ones_update() {
    let device = Device::Cpu;
    let model = ModelSpec::plain(Arch::EfficientnetLite0);
    let shape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let source = Network::new(&model, shape, 4, 1, &device).unwrap();
    // Statistics unlike a fresh network's, so that a reset would show.
    let source: HashMap<String, Tensor> = (source.tensors().into_iter())
        .map(|(name, t)| {
            let t = if is_running_statistic(&name) {
                Tensor::rand(0.5f32, 1.5, t.dims(), &device).unwrap()
            } else {
                t
            };
            (name, t)
        })
        .collect();
    let net = Network::new(&model, shape, 3, 2, &device).unwrap();
    net.transfer_from(&source, 9).unwrap();
    let examples = 12;
    let data = Batchable {
        inputs: Tensor::randn(0f32, 1.0, (examples, 3, 32, 32), &device).unwrap(),
        mask: None,
        targets: Tensor::new(
            (0..examples as u32).map(|i| i % 3).collect::<Vec<_>>(),
            &device,
        )
        .unwrap(),
        classes: 3,
        images: (0..examples as u32).collect(),
    };
    let train = serde_yaml::from_str::<TrainSpec>(
        "{steps: 2, batch_size: 6, optimizer: adam, lr: 0.01, log_every: 1}",
    )
    .unwrap();
    let freeze_depth = 5;
    assert!(matches!(
        fit(&net, &data, None, &train, (freeze_depth, None), 0).unwrap(),
        Fit::Done(..)
    ));
    let trainable = net.trainable_vars(freeze_depth);
    let after = net.tensors();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut frozen = 0;
    for (name, tensor) in &after {
        if !is_running_statistic(name) {
            continue;
        }
        let block = block_of(name).unwrap();
        assert!(
            !trainable.iter().any(|v| v.as_tensor().id() == tensor.id()),
            "{name} is given to the optimizer"
        );
        if block <= freeze_depth {
            assert_eq!(flat(tensor), flat(&source[name]), "{name} moved");
            frozen += 1;
        } else {
            assert_ne!(flat(tensor), flat(&source[name]), "{name} did not update");
        }
    }
    assert!(frozen > 0);
    let _ = evaluate(&net, &data, None, freeze_depth).unwrap();
    assert_eq!(
        flat(&net.tensors()["b9.bn.running_var"]),
        flat(&after["b9.bn.running_var"]),
        "evaluation runs in inference mode"
    );
}
