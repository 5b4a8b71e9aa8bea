//! One trial, start to end: its data (sampled with seeds derived from the trial's), its
//! network with blocks 1..t transferred, the frozen prefix's features from the cache, fitting,
//! evaluation, the checkpoint, and its record. Which errors end only this trial and which stop
//! the sweep is decided here, in `run`.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;

use crate::auto_depth::{self, AutoDepth, Rung};
use crate::data::{Batchable, Catalog};
use crate::error::{Error, InputError, Result};
use crate::features::{self, FeatureCache, Features};
use crate::model::Network;
use crate::plan::{Trial, TrialConfig, derive_seed};
use crate::source::Sources;
use crate::spec::{Adapter, DataSelection, DepthOrder};
use crate::store::{RunStore, Status, Timings, TrialRecord};
use crate::train::{self, Fit};

/// What running a trial needs besides the trial itself.
pub struct Context<'a> {
    /// The datasets.
    pub catalog: &'a Catalog,
    /// Where checkpoints go.
    pub store: &'a RunStore,
    /// Whether to save the trained weights.
    pub checkpoints: bool,
    /// Where tensors live.
    pub device: &'a Device,
    /// Source models loaded (or pretrained) on that device.
    pub sources: &'a Mutex<Sources>,
    /// Frozen-prefix features on that device.
    pub cache: &'a FeatureCache,
    /// Tells the user about long work (pretraining a source model).
    pub say: &'a dyn Fn(&str),
}

/// Runs one trial and returns its record, finished, failed or interrupted. Bad input and a
/// store that cannot be written (a full disk) are errors that stop the sweep; anything else
/// (a diverging loss, a failed tensor operation) fails only this trial, in its record.
pub fn run(trial: &Trial, context: &Context) -> Result<TrialRecord> {
    let mut record = TrialRecord {
        id: trial.id.clone(),
        index: trial.index,
        strategies: trial.strategies.clone(),
        transfer_depth: trial.config.transfer_depth,
        freeze_depth: trial.config.freeze_depth,
        axes: trial.axes.clone(),
        status: Status::Failed,
        error: None,
        eval: None,
        curve: Vec::new(),
        steps: 0,
        timings: Timings {
            started_at: crate::store::now(),
            setup_seconds: 0.0,
            train_seconds: 0.0,
            eval_seconds: 0.0,
        },
        device: crate::device::name(context.device),
        source: None,
        xferlab_version: env!("CARGO_PKG_VERSION").to_string(),
        config: trial.config.clone(),
        early_stopping: None,
        trainable_parameters: None,
        auto_depth: None,
    };
    match train_and_evaluate(trial, context, &mut record) {
        Ok(()) => Ok(record),
        Err(e @ (Error::Input(_) | Error::Io { .. })) => Err(e),
        Err(Error::Interrupted) => {
            record.status = Status::Interrupted;
            record.error = Some("interrupted while preparing the trial".into());
            Ok(record)
        }
        Err(e) => {
            record.error = Some(e.to_string());
            Ok(record)
        }
    }
}

/// The trial's target data, sampled with seeds of its own.
struct TargetData {
    train: Batchable,
    eval: Batchable,
}

fn train_and_evaluate(trial: &Trial, context: &Context, record: &mut TrialRecord) -> Result<()> {
    let started = Instant::now();
    let mut config = &trial.config;
    let (catalog, device) = (context.catalog, context.device);
    let data = TargetData {
        train: catalog.select(
            &config.target.train,
            &config.model,
            derive_seed(config.seed, "target.train"),
            device,
        )?,
        eval: catalog.select(
            &config.target.eval,
            &config.model,
            derive_seed(config.seed, "target.eval"),
            device,
        )?,
    };
    let chosen;
    if config.auto_depth {
        let (search, depths) = choose_depth(config, context, &data, record)?;
        let mut at = config.clone();
        (at.transfer_depth, at.freeze_depth) = depths;
        (record.transfer_depth, record.freeze_depth) = depths;
        record.auto_depth = Some(search);
        chosen = at;
        config = &chosen;
    }
    let input = catalog.input(&config.target.train.dataset)?;
    let (classes, seed) = (data.train.classes, derive_seed(config.seed, "init"));
    let net = match (config.adapter, config.train.lora) {
        (Some(Adapter::Lora), Some(lora)) => {
            let lora = (lora, config.freeze_depth);
            Network::with_lora(&config.model, input, classes, seed, device, lora)?
        }
        _ => Network::new(&config.model, input, classes, seed, device)?,
    };
    let (train_features, eval_features) = transfer(config, context, &net, &data, record)?;
    record.timings.setup_seconds = started.elapsed().as_secs_f64();

    let trained = train::params(&net, &config.train, config.freeze_depth, config.adapter);
    record.trainable_parameters = Some(trained.iter().map(|p| p.var.elem_count()).sum());
    let training = Instant::now();
    let fit = train::fit(
        &net,
        &data.train,
        train_features.as_ref(),
        &config.train,
        (config.freeze_depth, config.adapter),
        derive_seed(config.seed, "batches"),
    )?;
    record.timings.train_seconds = training.elapsed().as_secs_f64();
    record.steps = train::step_count(&config.train, data.train.targets.dim(0)?);
    match fit {
        Fit::Done(curve, early) => {
            record.curve = curve;
            if let Some(early) = early {
                record.steps = early.stop_step;
                record.early_stopping = Some(early);
            }
        }
        Fit::Interrupted { step, curve } => {
            record.curve = curve;
            record.steps = step;
            record.status = Status::Interrupted;
            record.error = Some(format!("interrupted after step {step}"));
            return Ok(());
        }
        Fit::Diverged { step, curve } => {
            record.curve = curve;
            record.steps = step;
            record.error = Some(format!(
                "training loss became NaN or infinite by step {step}"
            ));
            return Ok(());
        }
    }

    let evaluating = Instant::now();
    record.eval = Some(train::evaluate(
        &net,
        &data.eval,
        eval_features.as_ref(),
        config.freeze_depth,
    )?);
    record.timings.eval_seconds = evaluating.elapsed().as_secs_f64();
    if context.checkpoints {
        context
            .store
            .write_checkpoint(&trial.id, |path| net.save(path))?;
    }
    record.status = Status::Finished;
    Ok(())
}

/// `auto_depth`: successive halving over the depths 0..L of the family searched (see
/// [`crate::auto_depth`]): every candidate starts from the same weights, trains on most of
/// the training examples and is scored on a seeded fifth of each class held out. Returns the
/// search and the chosen (transfer_depth, freeze_depth).
fn choose_depth(
    config: &TrialConfig,
    context: &Context,
    data: &TargetData,
    record: &mut TrialRecord,
) -> Result<(AutoDepth, (usize, usize))> {
    let targets = data.train.targets.to_vec1::<u32>()?;
    let seed = derive_seed(config.seed, "auto_depth");
    let (kept, held) = train::holdout(&targets, data.train.classes, auto_depth::HOLDOUT, seed);
    if held.is_empty() {
        return Err(InputError::new(format!(
            "auto_depth scores depths on a fifth of each class's training examples, and {} examples leave none",
            targets.len()
        ))
        .with_help("give auto_depth at least 3 training examples per class (target.train.per_class)")
        .into());
    }
    let search = TargetData {
        train: data.train.subset(&kept)?,
        eval: data.train.subset(&held)?,
    };
    let input = context.catalog.input(&config.target.train.dataset)?;
    let budget = train::step_count(&config.train, targets.len());
    let blocks = crate::model::block_count(&config.model);
    let settings = config.train.auto_depth.unwrap_or_default();
    let family = settings.family.strategy();
    let mut candidates: Vec<usize> = (0..=blocks).collect();
    // A candidate: the trial's config at depths (t, f), scored on held-out images of the train
    // split (their cached features are keyed so), and a network from the trial's own start.
    let candidate = |(t, f): (usize, usize)| -> Result<(TrialConfig, Network)> {
        let mut probe = config.clone();
        (probe.transfer_depth, probe.freeze_depth) = (t, f);
        probe.target.eval = probe.target.train.clone();
        let init = derive_seed(config.seed, "init");
        let classes = data.train.classes;
        let net = Network::new(&probe.model, input, classes, init, context.device)?;
        Ok((probe, net))
    };
    let mut logme = None;
    if settings.order == DepthOrder::Logme {
        // The source's blocks, all transferred, run once over the search's training part.
        let (probe, net) = candidate((blocks, 0))?;
        transfer(&probe, context, &net, &search, record)?;
        let scores = crate::estimate::logme_by_depth(&net, &search.train, &config.model)?;
        candidates = auto_depth::survivors(&scores);
        candidates.push(0);
        candidates.sort_unstable();
        logme = Some(scores);
    }
    let (mut rungs, mut total) = (Vec::new(), budget);
    for steps in auto_depth::rung_steps(candidates.len(), budget) {
        let mut scores = Vec::new();
        for &depth in &candidates {
            let (mut probe, net) = candidate(family.depths(blocks, depth))?;
            probe.train.steps = Some(steps);
            probe.train.epochs = None;
            probe.train.early_stopping = None;
            let (features, held_features) = transfer(&probe, context, &net, &search, record)?;
            let fit = train::fit(
                &net,
                &search.train,
                features.as_ref(),
                &probe.train,
                (probe.freeze_depth, None),
                derive_seed(config.seed, "batches"),
            )?;
            let accuracy = match fit {
                Fit::Done(..) => {
                    let held = held_features.as_ref();
                    train::evaluate(&net, &search.eval, held, probe.freeze_depth)?.accuracy
                }
                // A candidate whose loss diverged scores nothing.
                Fit::Diverged { .. } => 0.0,
                Fit::Interrupted { .. } => return Err(Error::Interrupted),
            };
            scores.push((depth, accuracy));
            total += steps;
        }
        candidates = auto_depth::survivors(&scores);
        rungs.push(Rung { steps, scores });
    }
    let search = AutoDepth {
        chosen: candidates[0],
        rungs,
        total_steps: total,
        holdout_examples: held.len(),
        logme,
    };
    Ok((search, family.depths(blocks, candidates[0])))
}

/// Copies blocks 1..t from the source model into `net`, and returns the frozen prefix's
/// features on the train and eval data when the cache holds them.
fn transfer(
    config: &TrialConfig,
    context: &Context,
    net: &Network,
    data: &TargetData,
    record: &mut TrialRecord,
) -> Result<(Option<Features>, Option<Features>)> {
    if config.transfer_depth == 0 {
        return Ok((None, None));
    }
    let source =
        context
            .sources
            .lock()
            .expect("sources lock")
            .get(config, context.catalog, context.say)?;
    net.transfer_from(&source.tensors, config.transfer_depth)
        .map_err(|m| InputError::new(format!("source model {} {m}", source.label)))?;
    record.source = Some(source.label.clone());
    // Features depend on the source, the depth, and the inputs: the dataset's split and
    // definition (and for texts how they are tokenised), whatever subset or seed the trial
    // samples from it.
    let features = |selection: &DataSelection, data| {
        let key = features::Key {
            source: source.label.clone(),
            depth: config.freeze_depth,
            data: serde_json::json!([
                selection.dataset,
                selection.split,
                config.datasets[&selection.dataset],
                config.model.tokenizer,
                config.model.max_length
            ])
            .to_string(),
        };
        context.cache.features(key, net, data)
    };
    Ok((
        features(&config.target.train, &data.train)?,
        features(&config.target.eval, &data.eval)?,
    ))
}
