//! Training and evaluating one network: frozen prefix, optimizer, batches, metrics.

use candle_core::{D, DType, Tensor};
use candle_nn::loss::cross_entropy;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Batchable;
use crate::model::Network;
use crate::optim::Optimizer;
use crate::spec::TrainSpec;

/// Frozen-prefix outputs of a whole training set are kept when they take at most this much.
const FEATURE_CACHE_BYTES: usize = 1 << 30;
/// Images per evaluation batch.
const EVAL_BATCH: usize = 1024;

/// Mean training loss over the steps since the previous point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Step at the end of the interval (from 1).
    pub step: usize,
    /// Mean training loss over the interval.
    pub loss: f64,
}

/// Accuracy and mean loss on a data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// How training ended.
#[derive(Debug)]
pub enum Fit {
    /// Every step ran.
    Done(Vec<CurvePoint>),
    /// The loss stopped being a finite number.
    Diverged {
        /// Step at the end of the interval whose mean loss was not finite.
        step: usize,
        /// The curve up to there.
        curve: Vec<CurvePoint>,
    },
    /// Ctrl-C stopped it.
    Interrupted {
        /// Steps run.
        step: usize,
        /// The curve up to there.
        curve: Vec<CurvePoint>,
    },
}

/// Number of optimizer steps `train` asks for on `examples` examples.
pub fn step_count(train: &TrainSpec, examples: usize) -> usize {
    let batch = train.batch_size.min(examples).max(1);
    match (train.steps, train.epochs) {
        (Some(steps), _) => steps,
        (None, Some(epochs)) => epochs * examples.div_ceil(batch),
        (None, None) => 0,
    }
}

/// Batch indices: successive seeded permutations of the examples, a batch may span two.
struct BatchOrder {
    rng: ChaCha8Rng,
    order: Vec<u32>,
    next: usize,
}

impl BatchOrder {
    fn new(examples: usize, seed: u64) -> Self {
        BatchOrder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            order: (0..examples as u32).collect(),
            next: examples,
        }
    }

    fn take(&mut self, batch: usize) -> Vec<u32> {
        let mut indices = Vec::with_capacity(batch);
        while indices.len() < batch {
            if self.next == self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.next = 0;
            }
            let take = (batch - indices.len()).min(self.order.len() - self.next);
            indices.extend_from_slice(&self.order[self.next..self.next + take]);
            self.next += take;
        }
        indices
    }
}

/// Outputs of blocks 1..f for all of `inputs`, computed once in evaluation-sized chunks,
/// when they fit in [`FEATURE_CACHE_BYTES`]; frozen blocks then cost nothing per step.
fn frozen_features(
    net: &Network,
    inputs: &Tensor,
    freeze_depth: usize,
) -> candle_core::Result<Option<Tensor>> {
    let examples = inputs.dim(0)?;
    let one = net.forward_blocks(&inputs.narrow(0, 0, 1)?, 0..freeze_depth)?;
    if one.elem_count() * examples * 4 > FEATURE_CACHE_BYTES {
        return Ok(None);
    }
    let mut chunks = Vec::new();
    for start in (0..examples).step_by(EVAL_BATCH) {
        let chunk = inputs.narrow(0, start, EVAL_BATCH.min(examples - start))?;
        chunks.push(net.forward_blocks(&chunk, 0..freeze_depth)?.detach());
    }
    Ok(Some(Tensor::cat(&chunks, 0)?))
}

/// Trains `net` on `data` with blocks 1..`freeze_depth` frozen: their variables are not given
/// to the optimizer and their output is detached, so no gradient graph is built through them.
pub fn fit(
    net: &Network,
    data: &Batchable,
    train: &TrainSpec,
    freeze_depth: usize,
    seed: u64,
) -> candle_core::Result<Fit> {
    let examples = data.targets.dim(0)?;
    let blocks = net.block_count();
    let batch = train.batch_size.min(examples);
    let steps = step_count(train, examples);
    let cached = if freeze_depth > 0 {
        frozen_features(net, &data.inputs, freeze_depth)?
    } else {
        None
    };
    let (inputs, frozen_per_step) = match cached {
        Some(features) => (features, false),
        None => (data.inputs.clone(), freeze_depth > 0),
    };
    let mut optimizer = Optimizer::new(train, net.trainable_vars(freeze_depth))?;
    let mut order = BatchOrder::new(examples, seed);
    let mut curve = Vec::new();
    let mut loss_sum = Tensor::zeros((), DType::F32, inputs.device())?;
    let mut since_log = 0;
    for step in 1..=steps {
        if crate::interrupt::requested() {
            return Ok(Fit::Interrupted {
                step: step - 1,
                curve,
            });
        }
        let indices = Tensor::new(order.take(batch), inputs.device())?;
        let mut x = inputs.index_select(&indices, 0)?;
        if frozen_per_step {
            x = net.forward_blocks(&x, 0..freeze_depth)?.detach();
        }
        let logits = net.head(&net.forward_blocks(&x, freeze_depth..blocks)?)?;
        let loss = cross_entropy(&logits, &data.targets.index_select(&indices, 0)?)?;
        optimizer.backward_step(&loss)?;
        // Summed on the device and read only when logged: no host round trip per step.
        loss_sum = (loss_sum + loss.detach())?;
        since_log += 1;
        if step % train.log_every == 0 || step == steps {
            let mean = f64::from(loss_sum.to_scalar::<f32>()?) / since_log as f64;
            if !mean.is_finite() {
                return Ok(Fit::Diverged { step, curve });
            }
            tracing::debug!(step, loss = mean, "training loss");
            curve.push(CurvePoint { step, loss: mean });
            loss_sum = loss_sum.zeros_like()?;
            since_log = 0;
        }
    }
    Ok(Fit::Done(curve))
}

/// Accuracy and mean loss of `net` on `data`, in large batches.
pub fn evaluate(net: &Network, data: &Batchable) -> candle_core::Result<Evaluation> {
    let examples = data.targets.dim(0)?;
    let mut correct = Tensor::zeros((), DType::F32, data.inputs.device())?;
    let mut loss = Tensor::zeros((), DType::F32, data.inputs.device())?;
    for start in (0..examples).step_by(EVAL_BATCH) {
        let len = EVAL_BATCH.min(examples - start);
        let targets = data.targets.narrow(0, start, len)?;
        let logits = net.forward(&data.inputs.narrow(0, start, len)?)?.detach();
        loss = (loss + (cross_entropy(&logits, &targets)? * len as f64)?)?;
        let hits = logits
            .argmax(D::Minus1)?
            .eq(&targets)?
            .to_dtype(DType::F32)?
            .sum_all()?;
        correct = (correct + hits)?;
    }
    let examples = examples.max(1) as f64;
    Ok(Evaluation {
        accuracy: f64::from(correct.to_scalar::<f32>()?) / examples,
        loss: f64::from(loss.to_scalar::<f32>()?) / examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_example_once_per_epoch() {
        let mut order = BatchOrder::new(10, 3);
        let mut first: Vec<u32> = order.take(4);
        first.extend(order.take(4));
        first.extend(order.take(2));
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<u32>>());
        assert_eq!(order.take(25).len(), 25);
    }
}

#[cfg(test)]
mod freezing_tests {
    use candle_core::Device;

    use super::*;
    use crate::data::ImageShape;
    use crate::spec::{Arch, ModelSpec, OptimizerKind};

    fn setup(examples: usize) -> (Network, Batchable, TrainSpec) {
        let model = ModelSpec {
            arch: Arch::Mlp,
            hidden: Some(vec![16, 8]),
        };
        let shape = ImageShape {
            channels: 1,
            height: 4,
            width: 4,
        };
        let net = Network::new(&model, shape, 3, 5, &Device::Cpu).unwrap();
        let inputs = Tensor::randn(0f32, 1.0, (examples, 1, 4, 4), &Device::Cpu).unwrap();
        let targets = Tensor::new(
            (0..examples as u32).map(|i| i % 3).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let data = Batchable {
            inputs,
            targets,
            classes: 3,
        };
        let train = TrainSpec {
            steps: Some(20),
            epochs: None,
            batch_size: 8,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            weight_decay: None,
            momentum: None,
            log_every: 5,
        };
        (net, data, train)
    }

    fn flat(net: &Network, name: &str) -> Vec<f32> {
        net.tensors()[name]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn frozen_blocks_do_not_change_and_the_rest_trains() {
        let (net, data, train) = setup(30);
        let before = (
            flat(&net, "b1.linear.weight"),
            flat(&net, "b2.linear.weight"),
            flat(&net, "head.weight"),
        );
        let Fit::Done(curve) = fit(&net, &data, &train, 1, 0).unwrap() else {
            panic!("diverged")
        };
        assert_eq!(
            curve.iter().map(|p| p.step).collect::<Vec<_>>(),
            vec![5, 10, 15, 20]
        );
        assert_eq!(
            flat(&net, "b1.linear.weight"),
            before.0,
            "block 1 is frozen"
        );
        assert_ne!(flat(&net, "b2.linear.weight"), before.1);
        assert_ne!(flat(&net, "head.weight"), before.2);
    }

    #[test]
    fn cached_frozen_features_train_like_a_forward_pass_every_step() {
        let (cached, data, train) = setup(30);
        let (per_step, _, _) = setup(30);
        fit(&cached, &data, &train, 1, 0).unwrap();
        // The same training with the frozen prefix recomputed each step (no cache).
        let mut optimizer = Optimizer::new(&train, per_step.trainable_vars(1)).unwrap();
        let mut order = BatchOrder::new(30, 0);
        for _ in 0..20 {
            let indices = Tensor::new(order.take(8), &Device::Cpu).unwrap();
            let x = per_step
                .forward_blocks(&data.inputs.index_select(&indices, 0).unwrap(), 0..1)
                .unwrap()
                .detach();
            let logits = per_step
                .head(&per_step.forward_blocks(&x, 1..2).unwrap())
                .unwrap();
            let loss =
                cross_entropy(&logits, &data.targets.index_select(&indices, 0).unwrap()).unwrap();
            optimizer.backward_step(&loss).unwrap();
        }
        for name in ["b2.linear.weight", "head.weight"] {
            let (a, b) = (flat(&cached, name), flat(&per_step, name));
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
                "{name} differs"
            );
        }
    }
}
