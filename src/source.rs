//! The source model: pretrained once and kept in the run store under a content hash of
//! everything it depends on, or read from a checkpoint (safetensors or PyTorch, in xferlab's
//! names or EfficientNet-PyTorch's: `crate::model::import`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::Catalog;
use crate::error::{Error, InputError, Origin, Result, shown};
use crate::model::Network;
use crate::model::import::{self, Layout, Mapped};
use crate::plan::{TrialConfig, derive_seed, hex};
use crate::spec::{Arch, CheckpointLayout, DatasetSpec, ModelSpec, PretrainSpec};
use crate::store::{lock, remove_stale_temps, save_atomic, write_atomic};
use crate::train::{self, Fit};

/// Bumped when pretraining changes in a way that changes its weights (2: data sampling,
/// initialisation and batch order take seeds derived from `pretrain.seed`, not the seed itself).
const PRETRAIN_FORMAT: u32 = 2;

/// A source model's weights by parameter name.
pub struct SourceModel {
    /// Parameters (`b1.conv.weight`, ...).
    pub tensors: HashMap<String, Tensor>,
    /// What it is: `pretrain:<hash>` or the checkpoint's path.
    pub label: String,
}

#[derive(Serialize)]
struct PretrainKey<'a> {
    format: u32,
    model: &'a ModelSpec,
    pretrain: &'a PretrainSpec,
    dataset: &'a DatasetSpec,
}

/// Source models of one process, each loaded or pretrained once.
pub struct Sources {
    dir: PathBuf,
    device: Device,
    loaded: HashMap<String, Arc<SourceModel>>,
}

impl Sources {
    /// Pretrained models live in `<store>/sources`.
    pub fn new(store: &Path, device: &Device) -> Self {
        Sources {
            dir: store.join("sources"),
            device: device.clone(),
            loaded: HashMap::new(),
        }
    }

    /// The source model of a trial (which transfers at least one block).
    pub fn get(
        &mut self,
        config: &TrialConfig,
        catalog: &Catalog,
        say: &dyn Fn(&str),
    ) -> Result<Arc<SourceModel>> {
        let source = config
            .source
            .as_ref()
            .expect("only trials with transfer_depth > 0 ask for a source");
        let key = match (&source.pretrain, &source.checkpoint) {
            (Some(pretrain), _) => {
                let dataset = &config.datasets[&pretrain.data.dataset];
                let key = PretrainKey {
                    format: PRETRAIN_FORMAT,
                    model: &config.model,
                    pretrain,
                    dataset,
                };
                let json =
                    serde_json::to_string(&serde_json::to_value(&key).expect("keys serialise"))
                        .expect("json");
                format!("pretrain:{}", &hex(&Sha256::digest(json.as_bytes()))[..16])
            }
            (None, Some(path)) => path.display().to_string(),
            (None, None) => unreachable!("validation requires a source"),
        };
        if let Some(model) = self.loaded.get(&key) {
            return Ok(model.clone());
        }
        let tensors = match (&source.pretrain, &source.checkpoint) {
            (Some(pretrain), _) => {
                self.pretrained(&key["pretrain:".len()..], config, pretrain, catalog, say)?
            }
            (None, Some(path)) => {
                let mapped = read_checkpoint(path, config.model.arch, source.layout)?;
                say(&describe(path, &mapped));
                mapped.tensors
            }
            (None, None) => unreachable!("validation requires a source"),
        };
        let model = Arc::new(SourceModel {
            tensors,
            label: key.clone(),
        });
        self.loaded.insert(key, model.clone());
        Ok(model)
    }

    fn pretrained(
        &self,
        hash: &str,
        config: &TrialConfig,
        pretrain: &PretrainSpec,
        catalog: &Catalog,
        say: &dyn Fn(&str),
    ) -> Result<HashMap<String, Tensor>> {
        let path = self.dir.join(format!("{hash}.safetensors"));
        // One process pretrains; others wait for it and then read its file.
        let _lock = lock(&self.dir.join(format!("{hash}.lock")), true)?;
        if !path.is_file() {
            remove_stale_temps(&path)?;
            say(&format!("pretraining source model {hash}"));
            let started = Instant::now();
            let seed = |purpose| derive_seed(pretrain.seed, purpose);
            let data = catalog.select(&pretrain.data, &config.model, seed("data"), &self.device)?;
            let input = catalog.input(&pretrain.data.dataset)?;
            let net = Network::new(
                &config.model,
                input,
                data.classes,
                seed("init"),
                &self.device,
            )?;
            let batches = seed("batches");
            let curve = match train::fit(&net, &data, None, &pretrain.train, (0, None), batches)? {
                Fit::Done(curve, _) => curve,
                Fit::Interrupted { .. } => return Err(Error::Interrupted),
                Fit::Diverged { step, .. } => {
                    return Err(InputError::new(format!("pretraining the source model diverged: the training loss was not finite at step {step}"))
                        .with_help("lower source.pretrain.train.lr")
                        .into());
                }
            };
            save_atomic(&path, |temp| net.save(temp))?;
            let meta = serde_json::json!({
                "model": config.model, "pretrain": pretrain,
                "seconds": started.elapsed().as_secs_f64(), "curve": curve,
            });
            write_atomic(
                &self.dir.join(format!("{hash}.json")),
                &serde_json::to_vec_pretty(&meta).expect("json"),
            )?;
            say(&format!(
                "pretrained source model {hash} in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(candle_core::safetensors::load(&path, &self.device)?)
    }
}

/// What was read from a checkpoint: its layout, how many tensors were mapped, which were
/// dropped.
fn describe(path: &Path, mapped: &Mapped) -> String {
    let counters = (mapped.dropped.iter())
        .filter(|n| n.ends_with(".num_batches_tracked"))
        .count();
    let mut dropped: Vec<&str> = (mapped.dropped.iter())
        .filter(|n| !n.ends_with(".num_batches_tracked"))
        .map(String::as_str)
        .collect();
    dropped.sort();
    let mut said = format!(
        "checkpoint {} ({} layout): {} tensors mapped",
        shown(path),
        mapped.layout.name(),
        mapped.tensors.len()
    );
    let mut parts = Vec::new();
    if !dropped.is_empty() {
        let what = match mapped.layout {
            Layout::HuggingFace => "what the new head and pooling replace",
            _ => "the old classifier",
        };
        parts.push(format!("{what} ({})", dropped.join(", ")));
    }
    if counters > 0 {
        parts.push(format!("{counters} BatchNorm num_batches_tracked counters"));
    }
    if !parts.is_empty() {
        said += &format!(", dropped {}", parts.join(" and "));
    }
    said
}

/// Reads a checkpoint (safetensors or PyTorch) and maps its tensors to `arch`'s parameter
/// names; a file that is not one, or that belongs to another architecture, is bad input.
pub fn read_checkpoint(
    path: &Path,
    arch: Arch,
    layout: Option<CheckpointLayout>,
) -> Result<Mapped> {
    if !path.is_file() {
        return Err(InputError::new(format!("checkpoint {} does not exist", shown(path))).into());
    }
    let state = crate::checkpoint::read(path)?;
    import::map(&state, arch, layout.map(Layout::from)).map_err(|e| {
        let help = match &e {
            import::ImportError::WrongArch { layout, .. } => {
                format!("{} checkpoints feed {}", layout.name(), layout.readers())
            }
            import::ImportError::Unplaced { .. } => {
                "is it a checkpoint of another architecture or width, or another layout \
                 (`source.layout`)?"
                    .to_string()
            }
        };
        InputError::new(format!("checkpoint {} {e}", shown(path)))
            .with_help(help)
            .with_origin(Origin::File {
                path: path.to_path_buf(),
                position: None,
                line_text: None,
            })
            .into()
    })
}

/// Checks that a checkpoint source has every tensor, with the right shape, for the deepest
/// transfer in the plan: a bad checkpoint fails before any training.
pub fn check_checkpoint(config: &TrialConfig, catalog: &Catalog) -> Result<()> {
    let Some(source) = config.source.as_ref() else {
        return Ok(());
    };
    let Some(path) = source.checkpoint.as_ref() else {
        return Ok(());
    };
    let mapped = read_checkpoint(path, config.model.arch, source.layout)?;
    let input = catalog.input(&config.target.train.dataset)?;
    let net = Network::new(&config.model, input, 1, 0, &Device::Cpu)?;
    net.transfer_from(&mapped.tensors, config.transfer_depth)
        .map_err(|mismatch| {
            let theirs = mismatch
                .name()
                .and_then(|name| mapped.layout.checkpoint_name(name))
                .map(|name| format!(" (`{name}` in {} layout)", mapped.layout.name()))
                .unwrap_or_default();
            InputError::new(format!("checkpoint {} {mismatch}{theirs}", shown(path)))
                .with_origin(Origin::File {
                    path: path.clone(),
                    position: None,
                    line_text: None,
                })
                .into()
        })
}
