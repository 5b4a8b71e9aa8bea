//! Training and evaluating one network: frozen prefix, optimizer, batches, metrics.

use candle_core::{D, DType, Tensor};
use candle_nn::loss::cross_entropy;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Batchable;
use crate::features::Features;
use crate::metrics::Metrics;
use crate::model::{Mode, Network};
use crate::optim::{Optimizer, Param};
use crate::spec::{Adapter, StopMetric, TrainSpec};

/// Images per evaluation batch.
const EVAL_BATCH: usize = 1024;
/// Texts per evaluation batch: a text is a sequence of token vectors, each with its attention.
const EVAL_TEXT_BATCH: usize = 128;

/// Mean training loss over the steps since the previous point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Step at the end of the interval (from 1).
    pub step: usize,
    /// Mean training loss over the interval.
    pub loss: f64,
}

/// Accuracy, mean loss and the other metrics on a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Macro-F1, calibration error, per-class accuracy, confusion matrix; absent from records
    /// written before xferlab measured them.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// How early stopping went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    /// Step of the best validation; the trained model has its weights.
    pub best_step: usize,
    /// That validation's loss or accuracy (the metric watched).
    pub best: f64,
    /// The last step run: before the planned last one when patience ran out.
    pub stop_step: usize,
    /// Examples held out for validation.
    pub validation_examples: usize,
}

/// Early stopping's split of the training examples (`targets`): of each class, round(holdout
/// x its count) examples, at most all but one, chosen by a seeded shuffle, validate; the rest
/// train. Both lists ascending.
pub(crate) fn holdout(
    targets: &[u32],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<u32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut validate) = (Vec::new(), Vec::new());
    for class in 0..classes as u32 {
        let mut members: Vec<u32> = (0..targets.len() as u32)
            .filter(|&i| targets[i as usize] == class)
            .collect();
        members.shuffle(&mut rng);
        let held = ((fraction * members.len() as f64).round() as usize)
            .min(members.len().saturating_sub(1));
        validate.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    train.sort_unstable();
    validate.sort_unstable();
    (train, validate)
}

/// How training ended.
#[derive(Debug)]
pub enum Fit {
    /// Every step ran, or early stopping stopped it (with the best validation's weights kept).
    Done(Vec<CurvePoint>, Option<EarlyStop>),
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
    /// Batches of the examples `order` lists.
    fn new(order: Vec<u32>, seed: u64) -> Self {
        BatchOrder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            next: order.len(),
            order,
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

/// Batch indices go to the device this many steps at a time, not once per step.
const UPLOAD_STEPS: usize = 256;

/// The variables of blocks above `freeze_depth` (those `adapter` trains) and of the head,
/// each with its learning rate factor (layer-wise decay, the head's own rate).
pub fn params(
    net: &Network,
    train: &TrainSpec,
    freeze_depth: usize,
    adapter: Option<Adapter>,
) -> Vec<Param> {
    let blocks = net.block_count();
    net.trainable(freeze_depth)
        .into_iter()
        .filter_map(|(name, var)| {
            let block = crate::model::block_of(&name);
            let trains = match adapter {
                None => true,
                // BitFit: biases (BatchNorm's and LayerNorm's shifts are named `bias` too).
                Some(Adapter::Bitfit) => block.is_none() || name.ends_with(".bias"),
                Some(Adapter::Lora) => block.is_none() || crate::model::lora::is_lora(&name),
            };
            trains.then(|| Param {
                factor: train.rate_factor(block, blocks),
                name,
                var,
            })
        })
        .collect()
}

/// Trains `net` on `data` with blocks 1..`freeze_depth` frozen: their variables are not given
/// to the optimizer and their output is detached, so no gradient graph is built through them.
/// With `features` (their output, cached) the frozen blocks do not run at all. Above the
/// freeze depth `adapter` chooses what trains (all when None); `train` adds early stopping,
/// gradual unfreezing and the rates.
pub fn fit(
    net: &Network,
    data: &Batchable,
    features: Option<&Features>,
    train: &TrainSpec,
    (freeze_depth, adapter): (usize, Option<Adapter>),
    seed: u64,
) -> candle_core::Result<Fit> {
    let stopping = train.early_stopping.as_ref();
    let (trained, validation) = match stopping {
        None => ((0..data.targets.dim(0)? as u32).collect(), None),
        Some(stop) => {
            let targets = data.targets.to_vec1::<u32>()?;
            let seed = crate::plan::derive_seed(seed, "holdout");
            let (trained, held) = holdout(&targets, data.classes, stop.holdout, seed);
            if held.is_empty() {
                candle_core::bail!(
                    "early stopping's holdout {} of {} training examples leaves none to validate: raise holdout or the examples per class",
                    stop.holdout,
                    targets.len()
                );
            }
            let features = features.map(|f| f.subset(&held));
            (trained, Some((data.subset(&held)?, features)))
        }
    };
    let examples = trained.len();
    let blocks = net.block_count();
    let batch = train.batch_size.min(examples);
    let steps = step_count(train, examples);
    let device = data.inputs.device();
    let (inputs, first_block) = match features {
        Some(features) => (&features.tensor, freeze_depth),
        None => (&data.inputs, 0),
    };
    // Gradual unfreezing starts with every block frozen and adds one block from the top to
    // the optimizer every `unfreeze_every` steps, down to `freeze_depth`; the blocks between
    // the cached prefix and the current depth run without gradients.
    let mut frozen = match train.unfreeze_every {
        Some(_) => blocks.max(freeze_depth),
        None => freeze_depth,
    };
    let mut optimizer = Optimizer::new(train, params(net, train, frozen, adapter))?;
    let mut order = BatchOrder::new(trained, seed);
    // The best validation so far (step, value), its weights, and validations since.
    let mut best: Option<(usize, f64)> = None;
    let mut kept = Vec::new();
    let mut waited = 0;
    let mut stop_step = steps;
    let mut curve = Vec::new();
    // Losses stay on the device: the sum since the last curve point, and the curve points
    // not read yet. They are read with each upload of batch indices, so the host waits for
    // the device once every UPLOAD_STEPS steps, not once per point.
    let mut loss_sum: Option<Tensor> = None;
    let mut since_log = 0;
    let mut unread: Vec<(usize, Tensor)> = Vec::new();
    // (examples, rows of `inputs`) of the next UPLOAD_STEPS batches, one row per step, and
    // for texts each batch's longest text (from the host's lengths, not read back).
    let mut upcoming = None;
    for step in 1..=steps {
        if crate::interrupt::requested() {
            if let Some(step) = read_losses(&mut unread, &mut curve)? {
                return Ok(Fit::Diverged { step, curve });
            }
            return Ok(Fit::Interrupted {
                step: step - 1,
                curve,
            });
        }
        let within = (step - 1) % UPLOAD_STEPS;
        if within == 0
            && let Some(step) = read_losses(&mut unread, &mut curve)?
        {
            return Ok(Fit::Diverged { step, curve });
        }
        if within == 0 {
            let count = UPLOAD_STEPS.min(steps + 1 - step);
            let taken = order.take(count * batch);
            let rows = match features {
                Some(features) => taken.iter().map(|&i| features.rows[i as usize]).collect(),
                None => taken.clone(),
            };
            let longest: Vec<usize> = match &data.mask {
                Some(mask) => (taken.chunks(batch))
                    .map(|b| mask.longest(b.iter().map(|&i| i as usize)))
                    .collect(),
                None => Vec::new(),
            };
            upcoming = Some((
                Tensor::from_vec(taken, (count, batch), device)?,
                Tensor::from_vec(rows, (count, batch), device)?,
                longest,
            ));
        }
        let (taken, rows, longest) = upcoming.as_ref().expect("uploaded at the first step");
        let examples = taken.get(within)?;
        let x = inputs.index_select(&rows.get(within)?, 0)?;
        let mask = (data.mask.as_ref())
            .map(|m| m.tensor.index_select(&examples, 0))
            .transpose()?;
        if let Some(every) = train.unfreeze_every {
            let depth = blocks.saturating_sub((step - 1) / every).max(freeze_depth);
            if depth < frozen {
                let unfrozen = params(net, train, depth, adapter).into_iter().filter(|p| {
                    crate::model::block_of(&p.name).is_some_and(|b| b > depth && b <= frozen)
                });
                optimizer.add(unfrozen.collect())?;
                frozen = depth;
            }
        }
        let (mut x, mask) = trimmed(x, mask, longest.get(within), first_block < blocks)?;
        if first_block < frozen {
            x = net
                .forward_blocks(&x, mask.as_ref(), first_block..frozen, Mode::Infer)?
                .detach();
        }
        let last = net.forward_blocks(&x, mask.as_ref(), frozen..blocks, Mode::Train)?;
        let logits = net.head(&last)?;
        let loss = cross_entropy(&logits, &data.targets.index_select(&examples, 0)?)?;
        if let Some(schedule) = &train.schedule {
            optimizer.set_lr(train.lr * schedule.factor(step - 1, steps));
        }
        optimizer.backward_step(&loss)?;
        loss_sum = Some(match loss_sum {
            Some(sum) => (sum + loss.detach())?,
            None => loss.detach(),
        });
        since_log += 1;
        let mut last = step == steps;
        if let (Some(stop), Some((held, held_features))) = (stopping, &validation)
            && (step % stop.every == 0 || last)
        {
            let eval = evaluate(net, held, held_features.as_ref(), freeze_depth)?;
            let value = match stop.metric {
                StopMetric::Loss => eval.loss,
                StopMetric::Accuracy => eval.accuracy,
            };
            let better = best.is_none_or(|(_, b)| match stop.metric {
                StopMetric::Loss => value < b,
                StopMetric::Accuracy => value > b,
            });
            if better {
                best = Some((step, value));
                kept = net.snapshot(freeze_depth)?;
                waited = 0;
            } else {
                waited += 1;
            }
            if waited >= stop.patience {
                stop_step = step;
                last = true;
            }
        }
        if step % train.log_every == 0 || last {
            let sum = loss_sum.take().expect("a step ran");
            unread.push((step, (sum / since_log as f64)?));
            since_log = 0;
        }
        if last {
            break;
        }
    }
    if let Some(step) = read_losses(&mut unread, &mut curve)? {
        return Ok(Fit::Diverged { step, curve });
    }
    let early = match (best, &validation) {
        (Some((best_step, best)), Some((held, _))) => {
            Network::restore(&kept)?;
            Some(EarlyStop {
                best_step,
                best,
                stop_step,
                validation_examples: held.targets.dim(0)?,
            })
        }
        _ => None,
    };
    Ok(Fit::Done(curve, early))
}

/// A batch of texts cut to its `longest` text (padding sits at the end): the mask always,
/// the inputs when they still are token ids or token vectors (`tokens`), not pooled vectors.
fn trimmed(
    x: Tensor,
    mask: Option<Tensor>,
    longest: Option<&usize>,
    tokens: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (Some(mask), Some(&longest)) = (mask, longest) else {
        return Ok((x, None));
    };
    let x = if tokens { x.narrow(1, 0, longest)? } else { x };
    Ok((x, Some(mask.narrow(1, 0, longest)?)))
}

/// Moves the curve points still on the device to `curve`, up to the first whose loss is not
/// finite: its step is returned.
fn read_losses(
    unread: &mut Vec<(usize, Tensor)>,
    curve: &mut Vec<CurvePoint>,
) -> candle_core::Result<Option<usize>> {
    if unread.is_empty() {
        return Ok(None);
    }
    let means: Vec<&Tensor> = unread.iter().map(|(_, mean)| mean).collect();
    let means = Tensor::stack(&means, 0)?.to_vec1::<f32>()?;
    for ((step, _), mean) in unread.drain(..).zip(means) {
        let loss = f64::from(mean);
        if !loss.is_finite() {
            return Ok(Some(step));
        }
        tracing::debug!(step, loss, "training loss");
        curve.push(CurvePoint { step, loss });
    }
    Ok(None)
}

/// Accuracy and mean loss of `net` on `data`, in large batches; with `features` (the output of
/// its frozen blocks 1..`freeze_depth` on `data`) only the blocks after them run.
pub fn evaluate(
    net: &Network,
    data: &Batchable,
    features: Option<&Features>,
    freeze_depth: usize,
) -> candle_core::Result<Evaluation> {
    let examples = data.targets.dim(0)?;
    let device = data.inputs.device();
    let blocks = net.block_count();
    let mut loss = Tensor::zeros((), DType::F32, device)?;
    // Each example's predicted class and confidence, read back once at the end.
    let (mut predicted, mut confidence) = (Vec::new(), Vec::new());
    let batch = match data.mask {
        Some(_) => EVAL_TEXT_BATCH,
        None => EVAL_BATCH,
    };
    for start in (0..examples).step_by(batch) {
        let len = batch.min(examples - start);
        let targets = data.targets.narrow(0, start, len)?;
        let mask = (data.mask.as_ref())
            .map(|m| m.tensor.narrow(0, start, len))
            .transpose()?;
        let longest = (data.mask.as_ref()).map(|m| m.longest(start..start + len));
        let (x, first_block) = match features {
            Some(features) => {
                let rows = Tensor::new(&features.rows[start..start + len], device)?;
                (features.tensor.index_select(&rows, 0)?, freeze_depth)
            }
            None => (data.inputs.narrow(0, start, len)?, 0),
        };
        let (x, mask) = trimmed(x, mask, longest.as_ref(), first_block < blocks)?;
        let last = net.forward_blocks(&x, mask.as_ref(), first_block..blocks, Mode::Infer)?;
        let logits = net.head(&last)?.detach();
        loss = (loss + (cross_entropy(&logits, &targets)? * len as f64)?)?;
        predicted.push(logits.argmax(D::Minus1)?);
        confidence.push(candle_nn::ops::softmax_last_dim(&logits)?.max(D::Minus1)?);
    }
    let truth = data.targets.to_vec1::<u32>()?;
    let predicted = match predicted.is_empty() {
        true => Vec::new(),
        false => Tensor::cat(&predicted, 0)?.to_vec1::<u32>()?,
    };
    let confidence = match confidence.is_empty() {
        true => Vec::new(),
        false => Tensor::cat(&confidence, 0)?.to_vec1::<f32>()?,
    };
    let hits = truth.iter().zip(&predicted).filter(|(t, p)| t == p).count();
    let examples = examples.max(1) as f64;
    Ok(Evaluation {
        accuracy: hits as f64 / examples,
        loss: f64::from(loss.to_scalar::<f32>()?) / examples,
        metrics: Some(Metrics::of(&truth, &predicted, &confidence, data.classes)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_example_once_per_epoch() {
        let mut order = BatchOrder::new((0..10).collect(), 3);
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
    use crate::features::{FeatureCache, Key};
    use crate::spec::{Arch, ModelSpec};

    fn setup(model: &ModelSpec, side: usize, examples: usize) -> (Network, Batchable, TrainSpec) {
        let shape = ImageShape {
            channels: 1,
            height: side,
            width: side,
        };
        let net = Network::new(model, shape, 3, 5, &Device::Cpu).unwrap();
        let inputs = Tensor::randn(0f32, 1.0, (examples, 1, side, side), &Device::Cpu).unwrap();
        let targets = Tensor::new(
            (0..examples as u32).map(|i| i % 3).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let data = Batchable {
            inputs,
            mask: None,
            targets,
            classes: 3,
            // Images in some order other than their rows in the cache.
            images: (0..examples as u32).rev().collect(),
        };
        let train = serde_yaml::from_str::<TrainSpec>(
            "{steps: 20, batch_size: 8, optimizer: adam, lr: 0.01, log_every: 5}",
        )
        .unwrap();
        (net, data, train)
    }

    fn mlp() -> ModelSpec {
        ModelSpec {
            hidden: Some(vec![16, 8]),
            ..ModelSpec::plain(Arch::Mlp)
        }
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
        let (net, data, train) = setup(&mlp(), 4, 30);
        let before = (
            flat(&net, "b1.linear.weight"),
            flat(&net, "b2.linear.weight"),
            flat(&net, "head.weight"),
        );
        let Fit::Done(curve, None) = fit(&net, &data, None, &train, (1, None), 0).unwrap() else {
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

    /// The rate each parameter gets, read back from the optimizer `fit` builds: block i of L
    /// at `lr * D^(L - i)`, the head at `head_lr`; frozen blocks absent, and freezing one more
    /// block leaves every other rate as it was; a schedule scales them all.
    #[test]
    fn layer_wise_rates_leave_frozen_blocks_out_and_do_not_shift_the_others() {
        let model = ModelSpec {
            hidden: Some(vec![16, 8, 8]),
            ..ModelSpec::plain(Arch::Mlp)
        };
        let (net, _, mut train) = setup(&model, 4, 8);
        train.layer_lr_decay = Some(0.5);
        train.head_lr = Some(0.03);
        let rates = |freeze_depth| {
            let optimizer =
                Optimizer::new(&train, params(&net, &train, freeze_depth, None)).unwrap();
            let rates: Vec<(String, f64)> = (optimizer.rates().into_iter())
                .map(|(name, rate)| (name.to_string(), rate))
                .collect();
            rates
        };
        let expected = |name: &str| match crate::model::block_of(name) {
            Some(1) => 0.0025,
            Some(2) => 0.005,
            Some(3) => 0.01,
            None => 0.03,
            Some(b) => panic!("no block {b}"),
        };
        let frozen = rates(1);
        assert_eq!(frozen.len(), 6, "b2, b3 and the head: weights and biases");
        for (name, rate) in &frozen {
            assert_ne!(crate::model::block_of(name), Some(1), "{name} is frozen");
            assert!((rate - expected(name)).abs() < 1e-12, "{name}: {rate}");
        }
        let all = rates(0);
        assert_eq!(all.len(), 8);
        for (name, rate) in &all {
            assert!((rate - expected(name)).abs() < 1e-12, "{name}: {rate}");
        }
        let mut optimizer = Optimizer::new(&train, params(&net, &train, 0, None)).unwrap();
        optimizer.set_lr(train.lr * 0.5);
        for (name, rate) in optimizer.rates() {
            assert!(
                (rate - expected(name) * 0.5).abs() < 1e-12,
                "{name}: {rate}"
            );
        }
    }

    #[test]
    fn the_holdout_is_stratified_seeded_and_leaves_every_class_a_training_example() {
        let targets: Vec<u32> = (0..23).map(|i| [0, 0, 1, 2][i % 4]).chain([3]).collect();
        let (train, held) = holdout(&targets, 4, 0.25, 9);
        assert_eq!(holdout(&targets, 4, 0.25, 9), (train.clone(), held.clone()));
        assert_ne!(
            holdout(&targets, 4, 0.25, 10).1,
            held,
            "another seed, another split"
        );
        let count = |rows: &[u32], class| {
            rows.iter()
                .filter(|&&r| targets[r as usize] == class)
                .count()
        };
        // 12, 6 and 5 examples: 3, 2 (1.5 rounds up) and 1 validate; the lone 3 trains.
        assert_eq!([0, 1, 2, 3].map(|c| count(&held, c)), [3, 2, 1, 0]);
        let mut all: Vec<u32> = train.iter().chain(&held).copied().collect();
        all.sort();
        assert_eq!(all, (0..24).collect::<Vec<_>>());
    }

    /// Early stopping stops `patience` validations after the best one and leaves that
    /// validation's weights in the model: validating again gives the recorded best loss.
    #[test]
    fn early_stopping_keeps_the_best_validation_and_stops_on_patience() {
        let (net, data, mut train) = setup(&mlp(), 4, 60);
        // Random inputs: the validation loss soon stops improving.
        train.steps = Some(2000);
        train.lr = 0.05;
        let stop = crate::spec::EarlyStoppingSpec {
            holdout: 0.25,
            every: 10,
            patience: 3,
            metric: StopMetric::Loss,
        };
        train.early_stopping = Some(stop.clone());
        let Fit::Done(curve, Some(early)) = fit(&net, &data, None, &train, (1, None), 4).unwrap()
        else {
            panic!("no early stop recorded")
        };
        assert!(early.stop_step < 2000, "{early:?}");
        assert_eq!(early.stop_step, early.best_step + 3 * 10, "{early:?}");
        assert_eq!(early.validation_examples, 15, "a quarter of 20 per class");
        assert_eq!(curve.last().unwrap().step, early.stop_step);
        let targets = data.targets.to_vec1::<u32>().unwrap();
        let seed = crate::plan::derive_seed(4, "holdout");
        let (_, held) = holdout(&targets, 3, 0.25, seed);
        let again = evaluate(&net, &data.subset(&held).unwrap(), None, 1).unwrap();
        assert!(
            (again.loss - early.best).abs() < 1e-6,
            "{again:?} vs {early:?}"
        );

        // With epochs, steps count the examples left for training: 2 x ceil(45 / 8).
        let (net, data, mut train) = setup(&mlp(), 4, 60);
        train.steps = None;
        train.epochs = Some(2);
        train.early_stopping = Some(crate::spec::EarlyStoppingSpec {
            patience: 100,
            ..stop
        });
        let Fit::Done(_, Some(early)) = fit(&net, &data, None, &train, (0, None), 4).unwrap()
        else {
            panic!("no early stop recorded")
        };
        assert_eq!(early.stop_step, 12);
    }

    /// BitFit: above the freeze depth only biases move; weights keep their values bit for bit;
    /// the head trains whole; the trainable count is the biases above f plus the head.
    #[test]
    fn bitfit_trains_biases_above_the_freeze_depth_and_the_head() {
        let (net, data, train) = setup(&mlp(), 4, 30);
        let flat_of = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Values, not tensors: the optimizer updates variables in place.
        let before: Vec<(String, Vec<f32>)> = (net.tensors().iter())
            .map(|(n, t)| (n.clone(), flat_of(t)))
            .collect();
        let trained = params(&net, &train, 1, Some(Adapter::Bitfit));
        let names: Vec<&str> = trained.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b2.linear.bias", "head.bias", "head.weight"]);
        let count: usize = trained.iter().map(|p| p.var.elem_count()).sum();
        assert_eq!(count, 8 + 3 + 8 * 3);
        fit(&net, &data, None, &train, (1, Some(Adapter::Bitfit)), 0).unwrap();
        let after = net.tensors();
        for (name, values) in &before {
            let moved = *values != flat_of(&after[name]);
            assert_eq!(moved, names.contains(&name.as_str()), "{name}");
        }
    }

    /// LoRA: above the freeze depth only the low-rank matrices train, the layers' own
    /// weights and biases keep their values bit for bit; the head trains whole; the
    /// trainable count is r (in + out) per adapted layer plus the head.
    #[test]
    fn lora_trains_its_matrices_and_leaves_the_weights_bit_identical() {
        let (_, data, train) = setup(&mlp(), 4, 30);
        let lora = crate::spec::LoraSpec {
            rank: 2,
            alpha: 4.0,
            dropout: 0.1,
        };
        let shape = ImageShape {
            channels: 1,
            height: 4,
            width: 4,
        };
        let net = Network::with_lora(&mlp(), shape, 3, 5, &Device::Cpu, (lora, 1)).unwrap();
        let before: Vec<(String, Vec<f32>)> = (net.tensors().into_keys())
            .map(|n| {
                let values = flat(&net, &n);
                (n, values)
            })
            .collect();
        let trained = params(&net, &train, 1, Some(Adapter::Lora));
        let names: Vec<&str> = trained.iter().map(|p| p.name.as_str()).collect();
        let expected = [
            "b2.linear.lora_a",
            "b2.linear.lora_b",
            "head.bias",
            "head.weight",
        ];
        assert_eq!(names, expected);
        let count: usize = trained.iter().map(|p| p.var.elem_count()).sum();
        assert_eq!(count, 2 * (16 + 8) + 3 + 8 * 3);
        fit(&net, &data, None, &train, (1, Some(Adapter::Lora)), 0).unwrap();
        for (name, values) in &before {
            let moved = *values != flat(&net, name);
            assert_eq!(moved, names.contains(&name.as_str()), "{name}");
        }
    }

    /// With full rank, LoRA can express any update of the weight, so it fits the training
    /// data about as well as a plain fine-tune (which also trains the biases); rank 1 cannot.
    #[test]
    fn full_rank_lora_fits_like_a_plain_finetune() {
        // b1 maps 16 inputs to 6, so rank 6 is full; random labels make it a memorising task
        // that needs the capacity.
        let model = ModelSpec {
            hidden: Some(vec![6]),
            ..ModelSpec::plain(Arch::Mlp)
        };
        let (plain, data, mut train) = setup(&model, 4, 48);
        train.steps = Some(600);
        train.lr = 0.02;
        let shape = ImageShape {
            channels: 1,
            height: 4,
            width: 4,
        };
        let final_loss = |net: &Network, adapter| {
            fit(net, &data, None, &train, (0, adapter), 0).unwrap();
            evaluate(net, &data, None, 1).unwrap().loss
        };
        let lora = |rank| {
            let spec = crate::spec::LoraSpec {
                rank,
                alpha: rank as f64,
                dropout: 0.0,
            };
            let net = Network::with_lora(&model, shape, 3, 5, &Device::Cpu, (spec, 0)).unwrap();
            final_loss(&net, Some(Adapter::Lora))
        };
        let untrained = evaluate(&plain, &data, None, 1).unwrap().loss;
        let finetune = final_loss(&plain, None);
        let (full, one) = (lora(6), lora(1));
        println!(
            "training loss: untrained {untrained:.4}, fine-tune {finetune:.4}, LoRA rank 6 {full:.4}, rank 1 {one:.4}"
        );
        assert!(finetune < 0.5 * untrained);
        assert!(
            (full - finetune).abs() < 0.15 * untrained,
            "{full} vs {finetune}"
        );
        assert!(one > full, "{one} vs {full}");
    }

    /// Gradual unfreezing: the head alone for the first `unfreeze_every` steps, then one more
    /// block from the top every `unfreeze_every` steps, never below `freeze_depth`.
    #[test]
    fn gradual_unfreezing_moves_one_more_block_every_so_many_steps() {
        let moved = |steps, freeze_depth| {
            let (net, data, mut train) = setup(&mlp(), 4, 30);
            train.steps = Some(steps);
            train.unfreeze_every = Some(5);
            let before: Vec<(String, Vec<f32>)> = (net.tensors().into_keys())
                .map(|n| {
                    let values = flat(&net, &n);
                    (n, values)
                })
                .collect();
            fit(&net, &data, None, &train, (freeze_depth, None), 0).unwrap();
            let mut moved: Vec<String> = (before.into_iter())
                .filter(|(n, v)| *v != flat(&net, n))
                .map(|(n, _)| n)
                .collect();
            moved.sort();
            moved
        };
        let head = ["head.bias", "head.weight"];
        let b2 = ["b2.linear.bias", "b2.linear.weight"];
        let b1 = ["b1.linear.bias", "b1.linear.weight"];
        assert_eq!(moved(5, 0), head);
        assert_eq!(moved(10, 0), [&b2[..], &head].concat());
        assert_eq!(moved(11, 0), [&b1[..], &b2, &head].concat());
        assert_eq!(
            moved(30, 1),
            [&b2[..], &head].concat(),
            "freeze_depth is the floor"
        );
    }

    /// The rates are the ones applied: a block at a ten-thousandth of the rate barely moves.
    #[test]
    fn a_block_at_a_tiny_rate_barely_moves() {
        let moved = |decay| {
            let (net, data, mut train) = setup(&mlp(), 4, 30);
            train.layer_lr_decay = decay;
            let before = flat(&net, "b1.linear.weight");
            fit(&net, &data, None, &train, (0, None), 0).unwrap();
            let after = flat(&net, "b1.linear.weight");
            (before.iter().zip(&after))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        // b1 of 2 blocks trains at lr * D: Adam moves a weight by at most about its rate.
        let (plain, decayed) = (moved(None), moved(Some(1e-4)));
        assert!(plain > 1e-2, "{plain}");
        assert!(decayed < 20.0 * 0.01 * 1e-4 * 1.5, "{decayed}");
    }

    /// Trains and evaluates the same network twice, once on cached features of blocks 1..f
    /// (filled in two parts, as by two trials with nested subsets) and once running the frozen
    /// blocks every step, and compares every weight and the evaluation.
    fn caching_changes_nothing(model: ModelSpec, side: usize, freeze_depth: usize) {
        let (cached, data, mut train) = setup(&model, side, 40);
        let (plain, _, _) = setup(&model, side, 40);
        // More steps than one upload of batch indices holds.
        train.steps = Some(UPLOAD_STEPS + 20);
        let cache = FeatureCache::new(1 << 20);
        let key = Key {
            source: "test".into(),
            depth: freeze_depth,
            data: "random".into(),
        };
        let part = Batchable {
            inputs: data.inputs.narrow(0, 10, 15).unwrap(),
            mask: None,
            targets: data.targets.narrow(0, 10, 15).unwrap(),
            classes: 3,
            images: data.images[10..25].to_vec(),
        };
        cache
            .features(key.clone(), &cached, &part)
            .unwrap()
            .unwrap();
        let features = cache.features(key, &cached, &data).unwrap().unwrap();
        assert_eq!(features.tensor.dim(0).unwrap(), 40, "cached once per image");
        let Fit::Done(with, _) = fit(
            &cached,
            &data,
            Some(&features),
            &train,
            (freeze_depth, None),
            7,
        )
        .unwrap() else {
            panic!("diverged")
        };
        let Fit::Done(without, _) =
            fit(&plain, &data, None, &train, (freeze_depth, None), 7).unwrap()
        else {
            panic!("diverged")
        };
        // Every fifth step and the last, across the upload boundary, in order.
        let steps: Vec<usize> = with.iter().map(|p| p.step).collect();
        let mut expected: Vec<usize> = (5..=UPLOAD_STEPS + 20).step_by(5).collect();
        expected.push(UPLOAD_STEPS + 20);
        expected.dedup();
        assert_eq!(steps, expected);
        for (a, b) in with.iter().zip(&without) {
            assert!(
                a.loss.is_finite() && (a.loss - b.loss).abs() < 1e-4,
                "{a:?} {b:?}"
            );
        }
        let names = cached.tensors();
        assert!(names.len() > 2);
        for name in names.keys() {
            let (a, b) = (flat(&cached, name), flat(&plain, name));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{name} differs by {worst}");
        }
        let with = evaluate(&cached, &data, Some(&features), freeze_depth).unwrap();
        let without = evaluate(&plain, &data, None, freeze_depth).unwrap();
        assert_eq!(with.accuracy, without.accuracy);
        assert!(
            (with.loss - without.loss).abs() < 1e-4,
            "{with:?} {without:?}"
        );
    }

    #[test]
    fn cached_features_train_an_mlp_like_its_frozen_blocks_every_step() {
        caching_changes_nothing(mlp(), 4, 1);
    }

    #[test]
    fn cached_features_train_a_cnn_like_its_frozen_blocks_every_step() {
        let cnn6 = ModelSpec::plain(Arch::Cnn6);
        caching_changes_nothing(cnn6.clone(), 8, 2);
        caching_changes_nothing(cnn6, 8, 4);
    }
}
