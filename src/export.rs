//! `xferlab export` and `xferlab predict`: one trial's trained network as a folder that needs
//! nothing else (its weights with any LoRA update folded in, its architecture, class names
//! and preprocessing, a model card), and predictions from such a folder.
//!
//! ```text
//! DIR/model.safetensors   the network's tensors, named as in checkpoints (b1..bL, head)
//! DIR/model.json          Exported: architecture, classes, preprocessing, provenance
//! DIR/tokenizer.json      text models: the tokenizer
//! DIR/README.md           the model card
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{Catalog, ImageShape, Input};
use crate::error::{Error, InputError, Result};
use crate::experiment::Experiment;
use crate::model::Network;
use crate::plan::{Plan, Trial, derive_seed};
use crate::report::Metric;
use crate::runner::{self, RunOptions};
use crate::spec::{Adapter, DataSelection, ModelSpec};
use crate::store::{RunStore, Status, TrialRecord};
use crate::train::Evaluation;

/// The weights file of an exported model.
pub const WEIGHTS: &str = "model.safetensors";
/// The description file of an exported model.
pub const DESCRIPTION: &str = "model.json";
/// A text model's tokenizer, copied beside it.
pub const TOKENIZER: &str = "tokenizer.json";

/// What `model.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported {
    /// The architecture (for `bert`, its config; the tokenizer is `tokenizer.json`).
    pub model: ModelSpec,
    /// Class names, in the order of the network's outputs.
    pub classes: Vec<String>,
    /// How inputs become the network's input.
    pub input: Preprocessing,
    /// Where it came from.
    pub provenance: Provenance,
}

/// How an input is prepared, as the sweep prepared its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preprocessing {
    /// An image: the shorter side resized to `size` and the centre cropped (torchvision's
    /// Resize and CenterCrop), `channels` 1 (grey) or 3 (RGB), scaled to [0, 1], then
    /// (x - mean) / std per channel.
    Image {
        /// 1 or 3.
        channels: usize,
        /// Side of the square the network sees.
        size: usize,
        /// Per channel.
        mean: Vec<f64>,
        /// Per channel.
        std: Vec<f64>,
    },
    /// A text: tokenised with `tokenizer.json`, cut to `max_length` tokens.
    Text {
        /// Tokens per text at most, [CLS] and [SEP] included.
        max_length: usize,
    },
}

/// The trial an exported model is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// The sweep's name.
    pub sweep: String,
    /// The sweep's id (`sweep.json`; MLflow tags its runs with it) and the git commit of the
    /// spec's repository, when the store has them.
    pub sweep_id: Option<String>,
    /// The git commit the spec was in when the sweep started.
    pub git_commit: Option<String>,
    /// The trial's id.
    pub trial: String,
    /// The strategies that name it.
    pub strategies: Vec<String>,
    /// Blocks transferred from the source model.
    pub transfer_depth: usize,
    /// Blocks frozen.
    pub freeze_depth: usize,
    /// The adapter its trainable blocks used, if any.
    pub adapter: Option<Adapter>,
    /// The source model (a pretraining hash or a checkpoint path), if it transferred.
    pub source: Option<String>,
    /// The sweep's axes at this trial.
    pub axes: std::collections::BTreeMap<String, serde_json::Value>,
    /// Its evaluation as recorded.
    pub eval: Evaluation,
    /// The exported network's accuracy on the same eval data, measured while exporting.
    pub exported_accuracy: f64,
    /// How the weights were had: kept by the sweep (`checkpoints: true`) or retrained.
    pub weights: String,
    /// The xferlab that exported it.
    pub xferlab_version: String,
}

/// Which trial to export.
pub enum Choice {
    /// By plan index, id or unique id prefix.
    Trial(String),
    /// The finished trial with the best `metric`, among those a strategy names when given.
    Best(Option<String>, Metric),
}

/// Picks the trial `choice` names from a sweep's plan and records; it must have finished.
pub fn choose<'a>(
    plan: &'a Plan,
    records: &[TrialRecord],
    choice: &Choice,
) -> Result<(&'a Trial, TrialRecord)> {
    let finished = |id: &str| {
        (records.iter()).find(|r| r.id == id && r.status == Status::Finished && r.eval.is_some())
    };
    match choice {
        Choice::Trial(wanted) => {
            let trial = runner::select(plan, std::slice::from_ref(wanted))?[0];
            match (
                finished(&trial.id),
                records.iter().find(|r| r.id == trial.id),
            ) {
                (Some(record), _) => Ok((trial, record.clone())),
                (None, Some(record)) => Err(InputError::new(format!(
                    "trial {} {}: there is no trained model to export{}",
                    trial.id,
                    record.status.name(),
                    record
                        .error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" ({e})"))
                ))
                .with_help("export a finished trial: `xferlab report` lists them, or use --best")
                .into()),
                (None, None) => Err(InputError::new(format!(
                    "trial {} has not run: there is no trained model to export",
                    trial.id
                ))
                .with_help("run it first (`xferlab run SPEC --trial ID`), or use --best")
                .into()),
            }
        }
        Choice::Best(strategy, metric) => {
            let named = |t: &&Trial| {
                (strategy.as_ref()).is_none_or(|s| t.strategies.iter().any(|l| l.name() == s))
            };
            let scored = (plan.trials.iter().filter(named)).filter_map(|t: &'a Trial| {
                let record = finished(&t.id)?;
                Some((t, record, metric.of(record.eval.as_ref()?)?))
            });
            let best = scored.reduce(|a, b| {
                let better = if metric.higher_is_better() {
                    b.2 > a.2
                } else {
                    b.2 < a.2
                };
                if better { b } else { a }
            });
            match best {
                Some((trial, record, _)) => Ok((trial, record.clone())),
                None => {
                    let which = strategy
                        .as_ref()
                        .map_or(String::new(), |s| format!(" of `{s}`"));
                    let mut names: Vec<&str> = (plan.trials.iter())
                        .flat_map(|t| t.strategies.iter().map(|l| l.name()))
                        .collect();
                    names.sort();
                    names.dedup();
                    Err(InputError::new(format!(
                        "no finished trial{which} to export (--best compares {})",
                        metric.name()
                    ))
                    .with_help(format!("strategies in this sweep: {}", names.join(", ")))
                    .into())
                }
            }
        }
    }
}

/// Writes `trial` of the sweep in `store` to `out` as an exported model. Weights come from its
/// checkpoint, else from retraining it on `device` (told through `say`); either way the
/// network is evaluated again on the trial's eval data before anything is written.
pub fn export(
    store: &RunStore,
    trial: &Trial,
    record: &TrialRecord,
    out: &Path,
    device: &Device,
    say: &dyn Fn(&str),
) -> Result<Exported> {
    let config = &trial.config;
    let checkpoint = store.checkpoint_path(&trial.id);
    let (mut tensors, weights) = if checkpoint.exists() {
        let tensors = candle_core::safetensors::load(&checkpoint, device)?;
        (
            tensors,
            format!("kept by the sweep ({})", checkpoint.display()),
        )
    } else {
        say(&format!(
            "trial {}: its weights were not kept (`checkpoints: true` keeps them); retraining it",
            trial.id
        ));
        (
            retrain(store, trial, device)?,
            "retrained by `xferlab export` (the sweep kept no checkpoint)".into(),
        )
    };
    if config.adapter == Some(Adapter::Lora) {
        let lora = config.train.lora.unwrap_or_default();
        crate::model::lora::merge(&mut tensors, lora.alpha / lora.rank as f64)?;
    }
    let catalog = Catalog::new(&config.datasets);
    let selection = &config.target.train;
    let labels = classes_of(&catalog, selection)?;
    let classes = catalog.class_names(&selection.dataset, &labels)?;
    let input = catalog.input(&selection.dataset)?;
    let net = Network::new(&config.model, input, classes.len(), 0, device)?;
    net.load_all(&tensors)
        .map_err(|m| InputError::new(format!("the trial's weights {m}")))?;
    let eval = catalog.select(
        &config.target.eval,
        &config.model,
        derive_seed(config.seed, "target.eval"),
        device,
    )?;
    let exported_accuracy = crate::train::evaluate(&net, &eval, None, 0)?.accuracy;
    let recorded = record
        .eval
        .clone()
        .expect("finished trials have an evaluation");
    let preprocessing = match input {
        Input::Image(shape) => image_preprocessing(&config.datasets[&selection.dataset], shape),
        Input::Tokens => Preprocessing::Text {
            max_length: config
                .model
                .max_length
                .unwrap_or(crate::spec::DEFAULT_MAX_LENGTH),
        },
    };
    let mut model = config.model.clone();
    std::fs::create_dir_all(out).map_err(Error::io(format!("cannot create {}", out.display())))?;
    if let Some(tokenizer) = model.tokenizer.take() {
        std::fs::copy(&tokenizer, out.join(TOKENIZER))
            .map_err(Error::io(format!("cannot copy {}", tokenizer.display())))?;
    }
    let identity = store.saved_identity()?;
    let exported = Exported {
        model,
        classes,
        input: preprocessing,
        provenance: Provenance {
            sweep: store
                .root()
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into()),
            sweep_id: identity.as_ref().map(|i| i.id.clone()),
            git_commit: identity.and_then(|i| i.git_commit),
            trial: trial.id.clone(),
            strategies: trial
                .strategies
                .iter()
                .map(|l| l.name().to_string())
                .collect(),
            transfer_depth: config.transfer_depth,
            // The record's: an auto_depth trial's chosen depth.
            freeze_depth: record.freeze_depth,
            adapter: config.adapter,
            source: record.source.clone(),
            axes: trial.axes.clone(),
            eval: recorded,
            exported_accuracy,
            weights,
            xferlab_version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    crate::store::save_atomic(&out.join(WEIGHTS), |path| net.save(path))?;
    let json = serde_json::to_vec_pretty(&exported).expect("descriptions serialise");
    crate::store::write_atomic(&out.join(DESCRIPTION), &json)?;
    crate::store::write_atomic(
        &out.join("README.md"),
        card(&exported, &trial.config).as_bytes(),
    )?;
    Ok(exported)
}

/// The original labels a selection trains on, in the order of the network's outputs.
fn classes_of(catalog: &Catalog, selection: &DataSelection) -> Result<Vec<u32>> {
    if let Some(classes) = &selection.classes {
        return Ok(classes.clone());
    }
    let labels = match catalog.input(&selection.dataset)? {
        Input::Tokens => catalog
            .texts(&selection.dataset, selection.split)?
            .labels
            .clone(),
        Input::Image(_) => catalog
            .images(&selection.dataset, selection.split)?
            .labels
            .clone(),
    };
    Ok(crate::data::count(&labels).into_keys().collect())
}

fn image_preprocessing(dataset: &crate::spec::DatasetSpec, shape: ImageShape) -> Preprocessing {
    let (mean, std) = dataset.standardisation();
    let per = |p: &crate::spec::PerChannel| (0..shape.channels).map(|c| p.get(c)).collect();
    Preprocessing::Image {
        channels: shape.channels,
        size: shape.height,
        mean: per(&mean),
        std: per(&std),
    }
}

/// Runs the sweep's trial again, alone, into a scratch store that borrows the sweep's source
/// models, with checkpoints kept; returns its weights. Trials are deterministic, so this is
/// the network the sweep trained (on the same kind of device); `export` checks its accuracy.
fn retrain(store: &RunStore, trial: &Trial, device: &Device) -> Result<HashMap<String, Tensor>> {
    let spec = store.root().join("spec.yaml");
    let mut experiment = Experiment::prepare(&spec, &["checkpoints=true".to_string()])?;
    // Retraining is not part of the sweep: nothing goes to its tracking server.
    experiment.loaded.spec.tracking = None;
    if !experiment.plan.trials.iter().any(|t| t.id == trial.id) {
        return Err(InputError::new(format!(
            "the spec saved in {} no longer plans trial {}: it cannot be retrained",
            store.root().display(),
            trial.id
        ))
        .into());
    }
    let scratch = tempfile::tempdir().map_err(Error::io("cannot make a scratch store"))?;
    let sources = store.root().join("../sources");
    if let Ok(sources) = sources.canonicalize() {
        std::os::unix::fs::symlink(&sources, scratch.path().join("sources"))
            .map_err(Error::io(format!("cannot link {}", sources.display())))?;
    }
    let options = RunOptions {
        device: device.clone(),
        store: scratch.path().to_path_buf(),
        jobs: 1,
        feature_cache_mb: 4096,
        trials: vec![trial.id.clone()],
        wait: false,
    };
    runner::run(&experiment, &options, &|_| {})?;
    let again = RunStore::new(scratch.path(), &experiment.plan.name);
    match again.record(&trial.id)? {
        Some(record) if record.status == Status::Finished => {}
        Some(record) => {
            return Err(InputError::new(format!(
                "retraining trial {} {}: {}",
                trial.id,
                record.status.name(),
                record.error.unwrap_or_default()
            ))
            .into());
        }
        None => {
            return Err(
                InputError::new(format!("retraining trial {} was interrupted", trial.id)).into(),
            );
        }
    }
    Ok(candle_core::safetensors::load(
        again.checkpoint_path(&trial.id),
        device,
    )?)
}

/// The model card: what the model is, where it came from, how well it did.
fn card(exported: &Exported, config: &crate::plan::TrialConfig) -> String {
    let p = &exported.provenance;
    let mut s = String::new();
    let strategy = p.strategies.join(" = ");
    let _ = writeln!(s, "# {} — trial {} ({strategy})\n", p.sweep, p.trial);
    let _ = writeln!(
        s,
        "A classifier of {} classes (architecture `{}`) exported by xferlab {} from sweep `{}`.\n",
        exported.classes.len(),
        crate::model::import::arch_name(exported.model.arch),
        p.xferlab_version,
        p.sweep
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    if let Some(id) = &p.sweep_id {
        let _ = writeln!(s, "| sweep id | {id} |");
    }
    if let Some(commit) = &p.git_commit {
        let _ = writeln!(s, "| spec's git commit | {commit} |");
    }
    let _ = writeln!(
        s,
        "| source model | {} |",
        p.source.as_deref().unwrap_or("none (trained from scratch)")
    );
    let _ = writeln!(s, "| strategy | {strategy} |");
    let _ = writeln!(
        s,
        "| transfer_depth / freeze_depth | {} / {} |",
        p.transfer_depth, p.freeze_depth
    );
    if let Some(adapter) = p.adapter {
        let detail = match (adapter, config.train.lora) {
            (Adapter::Lora, Some(l)) => format!(
                "lora (rank {}, alpha {}, dropout {}; folded into the weights)",
                l.rank, l.alpha, l.dropout
            ),
            (Adapter::Lora, None) => "lora".into(),
            (Adapter::Bitfit, _) => "bitfit".into(),
        };
        let _ = writeln!(s, "| adapter | {detail} |");
    }
    for (axis, value) in &p.axes {
        let _ = writeln!(s, "| {axis} | {value} |");
    }
    let selection = |d: &DataSelection| {
        let classes = d
            .classes
            .as_ref()
            .map_or("all".into(), |c| format!("{c:?}"));
        let per = d
            .per_class
            .map_or(String::new(), |n| format!(", {n} per class"));
        format!(
            "`{}` {} split, classes {classes}{per}",
            d.dataset,
            d.split.name()
        )
    };
    let _ = writeln!(s, "| trained on | {} |", selection(&config.target.train));
    let _ = writeln!(s, "| evaluated on | {} |", selection(&config.target.eval));
    if !p.axes.contains_key("seed") {
        let _ = writeln!(s, "| seed | {} |", config.seed);
    }
    let _ = writeln!(s, "| accuracy (recorded) | {:.4} |", p.eval.accuracy);
    let _ = writeln!(
        s,
        "| accuracy (exported model, measured at export) | {:.4} |",
        p.exported_accuracy
    );
    let _ = writeln!(s, "| loss | {:.4} |", p.eval.loss);
    if let Some(m) = &p.eval.metrics {
        let _ = writeln!(s, "| macro-F1 | {:.4} |", m.macro_f1);
        let _ = writeln!(s, "| expected calibration error (15 bins) | {:.4} |", m.ece);
    }
    let _ = writeln!(s, "| weights | {} |", p.weights);
    let _ = writeln!(
        s,
        "\nClasses, in output order: {}.\n",
        exported.classes.join(", ")
    );
    let _ = writeln!(
        s,
        "Input: {}.\n",
        match &exported.input {
            Preprocessing::Image {
                channels,
                size,
                mean,
                std,
            } => format!(
                "{} image, shorter side resized to {size} and centre cropped, scaled to [0, 1], standardised with mean {mean:?} and std {std:?}",
                if *channels == 1 { "a grey" } else { "an RGB" }
            ),
            Preprocessing::Text { max_length } =>
                format!("a text, tokenised with tokenizer.json, cut to {max_length} tokens"),
        }
    );
    let _ = writeln!(
        s,
        "Predict: `xferlab predict DIR INPUTS...` (see `xferlab predict --help`). The whole trial config is the sweep's `plan.json` entry for this id."
    );
    s
}

/// One input's most probable classes.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The file, or the text.
    pub input: String,
    /// The most probable classes, most probable first.
    pub top: Vec<Ranked>,
}

/// A class and its probability.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// The class name.
    pub class: String,
    /// Its softmax probability.
    pub probability: f64,
}

/// The inputs `predict` was given, as the model takes them: image files as they are; for a
/// text model, a file's lines, standard input's lines for `-`, and other arguments as texts.
pub fn inputs(exported: &Exported, given: &[String]) -> Result<Vec<String>> {
    if matches!(exported.input, Preprocessing::Image { .. }) {
        return Ok(given.to_vec());
    }
    let mut texts = Vec::new();
    for arg in given {
        let lines = if arg == "-" {
            std::io::read_to_string(std::io::stdin())
                .map_err(Error::io("cannot read standard input"))?
        } else if Path::new(arg).is_file() {
            std::fs::read_to_string(arg).map_err(Error::io(format!("cannot read {arg}")))?
        } else {
            texts.push(arg.clone());
            continue;
        };
        texts.extend(
            lines
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    if texts.is_empty() {
        return Err(InputError::new("no texts to classify: the files given are empty").into());
    }
    Ok(texts)
}

/// A model read back from an exported folder.
pub struct Loaded {
    /// What `model.json` says.
    pub exported: Exported,
    net: Network,
    dir: PathBuf,
}

impl Loaded {
    /// Reads an exported folder.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let description = dir.join(DESCRIPTION);
        if !description.is_file() {
            return Err(
                InputError::new(format!("{} has no {DESCRIPTION}", dir.display()))
                    .with_help("give a folder `xferlab export` wrote")
                    .into(),
            );
        }
        let exported: Exported = crate::store::read_json(&description)?;
        let input = match exported.input {
            Preprocessing::Image { channels, size, .. } => Input::Image(ImageShape {
                channels,
                height: size,
                width: size,
            }),
            Preprocessing::Text { .. } => Input::Tokens,
        };
        let net = Network::new(&exported.model, input, exported.classes.len(), 0, device)?;
        let tensors = candle_core::safetensors::load(dir.join(WEIGHTS), device)?;
        net.load_all(&tensors)
            .map_err(|m| InputError::new(format!("{} {m}", dir.join(WEIGHTS).display())))?;
        Ok(Loaded {
            exported,
            net,
            dir: dir.to_path_buf(),
        })
    }

    /// The `top` most probable classes of each image file (image models) or text (text
    /// models).
    pub fn predict(
        &self,
        inputs: &[String],
        top: usize,
        device: &Device,
    ) -> Result<Vec<Prediction>> {
        let (x, mask) = match &self.exported.input {
            Preprocessing::Image {
                channels,
                size,
                mean,
                std,
            } => {
                let mut pixels = Vec::with_capacity(inputs.len() * channels * size * size);
                for file in inputs {
                    let image = image::open(file).map_err(|e| {
                        InputError::new(format!("cannot read image {file}: {e}"))
                            .with_help("give PNG or JPEG files")
                    })?;
                    let values = crate::data::folder::fit(&image, *size, *channels);
                    let plane = size * size;
                    pixels.extend(values.iter().enumerate().map(|(i, v)| {
                        let c = i / plane;
                        ((f64::from(*v) - mean[c]) / std[c]) as f32
                    }));
                }
                (
                    Tensor::from_vec(pixels, (inputs.len(), *channels, *size, *size), device)?,
                    None,
                )
            }
            Preprocessing::Text { max_length } => {
                let tokens =
                    crate::data::tokens::tokenize(inputs, &self.dir.join(TOKENIZER), *max_length)?;
                let n = inputs.len();
                let mask: Vec<f32> = (tokens.lengths.iter())
                    .flat_map(|&l| {
                        (0..tokens.length).map(move |i| if i < l as usize { 1.0 } else { 0.0 })
                    })
                    .collect();
                (
                    Tensor::from_vec(tokens.ids, (n, tokens.length), device)?,
                    Some(Tensor::from_vec(mask, (n, tokens.length), device)?),
                )
            }
        };
        let logits = self.net.forward(&x, mask.as_ref())?;
        let probabilities = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        Ok((inputs.iter().zip(probabilities))
            .map(|(input, p)| {
                let mut ranked: Vec<Ranked> = (self.exported.classes.iter().cloned())
                    .zip(p)
                    .map(|(class, p)| Ranked {
                        class,
                        probability: f64::from(p),
                    })
                    .collect();
                ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
                ranked.truncate(top);
                Prediction {
                    input: input.clone(),
                    top: ranked,
                }
            })
            .collect())
    }
}
