//! `xferlab estimate`: how well each candidate freeze depth f will transfer, scored on the
//! source model's frozen features before anything trains.
//!
//! For every distinct (source model, target training selection, seed) of the sweep's
//! transferring trials, the source's blocks run once over the target's training examples;
//! after each block 1..L the output is pooled to one vector per example (the mean over the
//! spatial positions of a convolutional block's output, the model's own pooling over the
//! real tokens of an encoder layer's) and scored with LogME. Sources that keep a classifier
//! (pretrained by the sweep) are also scored with LEEP on their full network. The scores go
//! to `<store>/<name>/estimates.json`, where `xferlab report` finds them.

pub mod score;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{InputError, Result};
use crate::experiment::Experiment;
use crate::model::{Mode, Network, block_count};
use crate::plan::derive_seed;
use crate::source::Sources;
use crate::spec::Pooling;
use crate::store::RunStore;

/// The file under the sweep's folder.
pub const FILE: &str = "estimates.json";

/// One score of one candidate depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The sweep's axes at this point, seed and freeze_depth left out: the report's setting.
    pub setting: BTreeMap<String, Value>,
    /// The seed that drew the target's training examples.
    pub seed: u64,
    /// The source model.
    pub source: String,
    /// Blocks 1..depth frozen: the features scored.
    pub depth: usize,
    /// LogME of the pooled features at `depth` (per example; higher is better).
    pub logme: f64,
    /// LEEP of the source's own classifier (at depth L only, for sources that keep one).
    pub leep: Option<f64>,
    /// Training examples scored.
    pub examples: usize,
}

/// Every estimate of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// The sweep's name.
    pub name: String,
    /// Network blocks, L.
    pub blocks: usize,
    /// By setting, seed and depth.
    pub estimates: Vec<Estimate>,
}

/// Scores every candidate depth of every transferring point of the experiment on `device`,
/// with the source models of the store at `root` (pretraining them there when missing), and
/// writes them beside the sweep's records.
pub fn estimate(
    experiment: &Experiment,
    root: &Path,
    device: &Device,
    say: &dyn Fn(&str),
) -> Result<Estimates> {
    let (plan, catalog) = (&experiment.plan, &experiment.catalog);
    let mut sources = Sources::new(root, device);
    let mut seen = HashSet::new();
    let mut estimates = Vec::new();
    let mut blocks = 0;
    for trial in plan.trials.iter().filter(|t| t.config.transfer_depth > 0) {
        let c = &trial.config;
        let point = serde_json::to_string(&(&c.source, &c.target.train, c.seed, &c.model))
            .expect("configs serialise");
        if !seen.insert(point) {
            continue;
        }
        let source = sources.get(c, catalog, say)?;
        let data = catalog.select(
            &c.target.train,
            &c.model,
            derive_seed(c.seed, "target.train"),
            device,
        )?;
        let labels = data.targets.to_vec1::<u32>()?;
        let input = catalog.input(&c.target.train.dataset)?;
        blocks = block_count(&c.model);
        let net = Network::new(&c.model, input, 1, 0, device)?;
        net.transfer_from(&source.tensors, blocks)
            .map_err(|m| InputError::new(format!("source model {} {m}", source.label)))?;
        let logme = logme_by_depth(&net, &data, &c.model)?;
        // A source pretrained by the sweep keeps its classifier: LEEP scores its predictions.
        let leep = match source.tensors.get("head.weight") {
            Some(head) => {
                let source_net = Network::new(&c.model, input, head.dim(0)?, 0, device)?;
                source_net
                    .load_all(&source.tensors)
                    .map_err(|m| InputError::new(format!("source model {} {m}", source.label)))?;
                let probabilities = predictions(&source_net, &data)?;
                Some(score::leep(&probabilities, &labels, data.classes))
            }
            None => None,
        };
        let mut setting = trial.axes.clone();
        setting.remove("seed");
        for (depth, logme) in logme {
            estimates.push(Estimate {
                setting: setting.clone(),
                seed: c.seed,
                source: source.label.clone(),
                depth,
                logme,
                leep: leep.filter(|_| depth == blocks),
                examples: labels.len(),
            });
        }
        say(&format!(
            "scored depths 1..{blocks} of {} on {} examples ({})",
            source.label,
            labels.len(),
            describe(&setting, c.seed)
        ));
    }
    if estimates.is_empty() {
        return Err(InputError::new(format!(
            "sweep `{}` has no trial that transfers: there is no depth to estimate",
            plan.name
        ))
        .with_help("add transfer, partial_freeze or prefix_frozen to `strategies`")
        .into());
    }
    let estimates = Estimates {
        name: plan.name.clone(),
        blocks,
        estimates,
    };
    let store = RunStore::new(root, &plan.name);
    let json = serde_json::to_vec_pretty(&estimates).expect("estimates serialise");
    crate::store::write_atomic(&store.root().join(FILE), &json)?;
    Ok(estimates)
}

/// (depth, LogME) of `net`'s frozen, pooled features at every depth 1..L on `data`: what
/// `estimate` records and `auto_depth`'s `order: logme` ranks by.
pub(crate) fn logme_by_depth(
    net: &Network,
    data: &crate::data::Batchable,
    model: &crate::spec::ModelSpec,
) -> candle_core::Result<Vec<(usize, f64)>> {
    let labels = data.targets.to_vec1::<u32>()?;
    let pooling = model.pooling.unwrap_or(Pooling::Cls);
    let features = pooled_features(net, data, pooling)?;
    Ok((features.iter().enumerate())
        .map(|(i, rows)| (i + 1, score::logme(rows, &labels, data.classes)))
        .collect())
}

/// The pooled output of every block 1..L for every example, as one matrix per depth: blocks
/// run one at a time over batches of 256, in inference mode, as the feature cache runs them.
fn pooled_features(
    net: &Network,
    data: &crate::data::Batchable,
    pooling: Pooling,
) -> candle_core::Result<Vec<DMatrix<f64>>> {
    let n = data.targets.dim(0)?;
    let blocks = net.block_count();
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); blocks];
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let mut x = data.inputs.narrow(0, start, len)?;
        let mask = match &data.mask {
            Some(mask) => Some(mask.tensor.narrow(0, start, len)?),
            None => None,
        };
        for (b, depth_rows) in rows.iter_mut().enumerate() {
            x = net.forward_blocks(&x, mask.as_ref(), b..b + 1, Mode::Infer)?;
            depth_rows.extend(pool(&x, mask.as_ref(), pooling)?.to_vec2::<f32>()?);
        }
    }
    Ok(rows
        .into_iter()
        .map(|depth| {
            let width = depth.first().map_or(0, Vec::len);
            DMatrix::from_row_iterator(n, width, depth.into_iter().flatten().map(f64::from))
        })
        .collect())
}

/// One vector per example: (N, C, H, W) averaged over positions, (N, S, H) token vectors
/// pooled as the model pools (over the real tokens, or the first), (N, F) as it is.
fn pool(x: &Tensor, mask: Option<&Tensor>, pooling: Pooling) -> candle_core::Result<Tensor> {
    match (x.rank(), mask) {
        (4, _) => x.mean((2, 3)),
        (3, Some(mask)) => crate::model::bert::pool(x, &mask.to_dtype(x.dtype())?, pooling),
        _ => x.flatten_from(1),
    }
}

/// The source classifier's class probabilities for every example.
fn predictions(net: &Network, data: &crate::data::Batchable) -> candle_core::Result<DMatrix<f64>> {
    let n = data.targets.dim(0)?;
    let mut rows = Vec::with_capacity(n);
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let x = data.inputs.narrow(0, start, len)?;
        let mask = match &data.mask {
            Some(mask) => Some(mask.tensor.narrow(0, start, len)?),
            None => None,
        };
        let logits = net.forward(&x, mask.as_ref())?.to_dtype(DType::F32)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        rows.extend(p.to_vec2::<f32>()?);
    }
    let z = rows.first().map_or(0, Vec::len);
    Ok(DMatrix::from_row_iterator(
        n,
        z,
        rows.into_iter().flatten().map(f64::from),
    ))
}

fn describe(setting: &BTreeMap<String, Value>, seed: u64) -> String {
    let mut parts: Vec<String> = (setting.iter()).map(|(k, v)| format!("{k}={v}")).collect();
    parts.push(format!("seed={seed}"));
    parts.join(" ")
}

/// The estimates as a table per setting: each depth's LogME (mean over seeds) and its rank,
/// best first, with LEEP for sources that have it.
pub fn render(estimates: &Estimates) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for group in by_setting(estimates) {
        let _ = writeln!(out, "{} ({}):", setting_name(&group.setting), group.source);
        let mut ranked: Vec<&DepthScore> = group.depths.iter().collect();
        ranked.sort_by(|a, b| b.logme.total_cmp(&a.logme));
        let header = ["rank", "f", "LogME", "seeds", "LEEP"]
            .map(String::from)
            .to_vec();
        let lines: Vec<Vec<String>> = (ranked.iter().enumerate())
            .map(|(rank, d)| {
                vec![
                    (rank + 1).to_string(),
                    d.depth.to_string(),
                    format!("{:.4}", d.logme),
                    d.seeds.to_string(),
                    d.leep.map_or("-".into(), |l| format!("{l:.4}")),
                ]
            })
            .collect();
        out += &crate::table::render(&header, &lines, |_| true, crate::table::Layout::Plain);
        out.push('\n');
    }
    out += "LogME: per-example log evidence of a Bayesian linear model on the frozen, pooled features at depth f (You et al., 2021); LEEP: the source classifier's (Nguyen et al., 2020). Higher is better for both.\n";
    out
}

/// The estimates of one setting and source, averaged over seeds.
pub struct Group {
    /// The setting (the report's axes but freeze_depth).
    pub setting: BTreeMap<String, Value>,
    /// The source model.
    pub source: String,
    /// By depth.
    pub depths: Vec<DepthScore>,
}

/// One depth's scores, averaged over seeds.
pub struct DepthScore {
    /// Blocks 1..depth frozen.
    pub depth: usize,
    /// Mean LogME.
    pub logme: f64,
    /// Seeds averaged.
    pub seeds: usize,
    /// Mean LEEP, where there is one.
    pub leep: Option<f64>,
}

/// The estimates grouped by setting and source, settings in the order of their values
/// (numbers as numbers: per_class 5, 20, 100), depths ascending.
pub fn by_setting(estimates: &Estimates) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut scores: Vec<BTreeMap<usize, Vec<&Estimate>>> = Vec::new();
    for e in &estimates.estimates {
        let at = groups
            .iter()
            .position(|g| g.setting == e.setting && g.source == e.source);
        let at = at.unwrap_or_else(|| {
            groups.push(Group {
                setting: e.setting.clone(),
                source: e.source.clone(),
                depths: Vec::new(),
            });
            scores.push(BTreeMap::new());
            groups.len() - 1
        });
        scores[at].entry(e.depth).or_default().push(e);
    }
    for (group, scores) in groups.iter_mut().zip(scores) {
        group.depths = (scores.into_iter())
            .map(|(depth, scores)| {
                let seeds = scores.len();
                let logme = scores.iter().map(|e| e.logme).sum::<f64>() / seeds as f64;
                let leeps: Vec<f64> = scores.iter().filter_map(|e| e.leep).collect();
                let leep =
                    (!leeps.is_empty()).then(|| leeps.iter().sum::<f64>() / leeps.len() as f64);
                DepthScore {
                    depth,
                    logme,
                    seeds,
                    leep,
                }
            })
            .collect();
    }
    groups.sort_by(|a, b| {
        (a.setting.values().zip(b.setting.values()))
            .map(|(x, y)| match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => x.to_string().cmp(&y.to_string()),
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.source.cmp(&b.source))
    });
    groups
}

/// The setting as the report names it: `per_class=10 lr=0.01`, or `all` with no axes.
fn setting_name(setting: &BTreeMap<String, Value>) -> String {
    let (axes, values): (Vec<String>, Vec<Value>) =
        setting.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
    crate::report::setting(&axes, &values)
}

/// Each depth's estimate beside the accuracy the sweep measured there, per setting, with
/// Kendall's tau between them: rows of the partial-freeze family (all L blocks transferred,
/// blocks 1..f frozen, f >= 1, `transfer` included), whose frozen features are the ones
/// scored. None when no setting has two such depths measured.
pub fn compare(report: &crate::report::Report, estimates: &Estimates) -> Option<String> {
    use std::fmt::Write as _;
    let header = ["setting", "f", "LogME", report.metric.name()]
        .map(String::from)
        .to_vec();
    let mut lines = Vec::new();
    let mut taus = Vec::new();
    for Group {
        setting,
        source,
        depths,
    } in by_setting(estimates)
    {
        let measured = |depth: usize| {
            report
                .rows
                .iter()
                .find(|row| {
                    row.transfer_depth == estimates.blocks
                        && row.freeze_depth == depth
                        && (report.axes.iter().zip(&row.axes))
                            .all(|(a, v)| setting.get(a) == Some(v))
                })?
                .value
                .map(|v| v.mean)
        };
        let pairs: Vec<(usize, f64, f64)> = (depths.iter())
            .filter_map(|d| Some((d.depth, d.logme, measured(d.depth)?)))
            .collect();
        if pairs.len() < 2 {
            continue;
        }
        let name = setting_name(&setting);
        for &(depth, logme, value) in &pairs {
            lines.push(vec![
                name.clone(),
                depth.to_string(),
                format!("{logme:.4}"),
                format!("{value:.4}"),
            ]);
        }
        let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().map(|&(_, l, v)| (l, v)).unzip();
        // ECE is better lower: its rank agreement with a higher-is-better score is negated.
        let sign = if report.metric.higher_is_better() {
            1.0
        } else {
            -1.0
        };
        let tau = score::kendall_tau(&x, &y).map(|t| sign * t);
        taus.push(format!(
            "{name} ({source}): tau {} over {} depths",
            tau.map_or("-".into(), |t| format!("{t:+.2}")),
            pairs.len()
        ));
    }
    if taus.is_empty() {
        return None;
    }
    let mut out = String::from(
        "\nestimate vs measured (LogME of the frozen features at f; rows with t = L):\n",
    );
    out += &crate::table::render(&header, &lines, |c| c >= 1, crate::table::Layout::Plain);
    let _ = writeln!(
        out,
        "Kendall's tau, LogME against {} (+1: same ranking of depths, -1: reversed):",
        report.metric.name()
    );
    for tau in taus {
        let _ = writeln!(out, "  {tau}");
    }
    Some(out)
}
