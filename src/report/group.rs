//! A sweep's results as numbers: trials grouped into rows by strategy, depths and swept
//! axes; mean, std and a 95% interval over seeds; the gain over the baseline paired by
//! seed; the best strategy and depths at each setting, with its statistical ties.
//!
//! The baseline rule lives here and only here: scratch is the baseline of every setting,
//! because it transfers nothing and so depends on none of the axes its config leaves null.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::Summary;
use crate::plan::{Plan, StrategyLabel};
use crate::spec::{DepthFamily, Strategy};
use crate::store::{Status, TrialRecord};
use crate::train::Evaluation;

/// One group of trials: same strategy, depths and swept values, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Strategy (or `raw`).
    pub strategy: StrategyLabel,
    /// transfer_depth.
    pub transfer_depth: usize,
    /// freeze_depth.
    pub freeze_depth: usize,
    /// Values of the report's axes.
    pub axes: Vec<Value>,
    /// Finished trials.
    pub count: usize,
    /// Failed trials.
    pub failed: usize,
    /// Trials of the plan with no record yet.
    pub missing: usize,
    /// The report's metric over seeds.
    pub value: Option<Summary>,
    /// Mean eval loss.
    pub loss_mean: Option<f64>,
    /// Parameters its trials trained (the head's included), when their records say.
    pub trainable_parameters: Option<usize>,
    /// The metric minus the baseline's, paired by seed (same data subset, same everything but
    /// the strategy), over the seeds both finished.
    pub gain: Option<Summary>,
    /// `auto_depth`: the family of depths its trials searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched: Option<DepthFamily>,
    /// `auto_depth`: the (transfer_depth, freeze_depth) each seed's trial chose.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub chosen: BTreeMap<u64, (usize, usize)>,
    /// The gain's paired t-test p-value, adjusted by the report's correction.
    pub gain_p: Option<f64>,
    /// Whether the gain differs from zero at the 5% level after that correction.
    pub gain_significant: bool,
    /// The metric by seed, for pairing and plots.
    #[serde(skip)]
    pub by_seed: BTreeMap<u64, f64>,
    /// The trial of each seed in `by_seed`.
    #[serde(skip)]
    pub trial_ids: BTreeMap<u64, String>,
}

impl Row {
    /// A group with no trial counted yet, at depths (t, f) and the given axis values.
    fn empty(strategy: StrategyLabel, (t, f): (usize, usize), axes: Vec<Value>) -> Row {
        Row {
            strategy,
            transfer_depth: t,
            freeze_depth: f,
            axes,
            count: 0,
            failed: 0,
            missing: 0,
            value: None,
            loss_mean: None,
            trainable_parameters: None,
            gain: None,
            searched: None,
            chosen: BTreeMap::new(),
            gain_p: None,
            gain_significant: false,
            by_seed: BTreeMap::new(),
            trial_ids: BTreeMap::new(),
        }
    }

    /// `strategy t=T f=F`.
    pub fn label(&self) -> String {
        let (t, f) = self.depth_cells();
        format!("{} t={t} f={f}", self.strategy)
    }

    /// The depths (t, f) as tables show them: `auto` for the one each `auto_depth` trial
    /// chose (both for `prefix_frozen`, the transfer depth for `prefix_finetune`).
    pub fn depth_cells(&self) -> (String, String) {
        let (t, f) = (self.transfer_depth, self.freeze_depth);
        let auto = || "auto".to_string();
        match self.searched {
            None => (t.to_string(), f.to_string()),
            Some(DepthFamily::PartialFreeze) => (t.to_string(), auto()),
            Some(DepthFamily::PrefixFrozen) => (auto(), auto()),
            Some(DepthFamily::PrefixFinetune) => (auto(), f.to_string()),
        }
    }

    /// Whether this row is a baseline, which other rows' gains are measured against and
    /// which competes at every setting of the axes: scratch.
    pub fn is_baseline(&self) -> bool {
        self.strategy == StrategyLabel::Named(Strategy::Scratch)
    }

    /// Whether the row belongs at `setting` (values of the report's axes): a row at its own
    /// values; a baseline also wherever its null axes (values it does not depend on) stand.
    pub fn belongs_at(&self, setting: &[Value]) -> bool {
        self.axes
            .iter()
            .zip(setting)
            .all(|(own, at)| own == at || (self.is_baseline() && own.is_null()))
    }
}

/// The baseline row that `row`'s gain is measured against; none for a baseline itself.
pub fn baseline_of<'r>(rows: &'r [Row], row: &Row) -> Option<&'r Row> {
    if row.is_baseline() {
        return None;
    }
    rows.iter()
        .find(|base| base.is_baseline() && base.belongs_at(&row.axes))
}

/// The settings of the axes that rows cover, in row order: those of the rows that are not
/// baselines (a baseline's null axes are no setting of their own), or the first row's when
/// only baselines are there.
pub fn settings(rows: &[Row]) -> Vec<&[Value]> {
    let mut settings: Vec<&[Value]> = Vec::new();
    for row in rows.iter().filter(|r| !r.is_baseline()) {
        if !settings.contains(&row.axes.as_slice()) {
            settings.push(&row.axes);
        }
    }
    if settings.is_empty() {
        settings = rows.iter().map(|r| r.axes.as_slice()).take(1).collect();
    }
    settings
}

/// The best row at one setting of the axes, and the rows whose intervals overlap its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Values of the report's axes.
    pub axes: Vec<Value>,
    /// The row with the best mean of the metric.
    pub best: String,
    /// Its metric.
    pub value: Summary,
    /// Rows statistically tied with it (95% intervals overlap).
    pub tied: Vec<String>,
    /// The best row's best trial (its seed with the best metric).
    pub trial: Option<String>,
}

/// What a report's tables compare: one number of each finished trial's evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction classified correctly.
    #[default]
    Accuracy,
    /// Mean F1 over classes.
    #[value(name = "macro_f1")]
    MacroF1,
    /// Expected calibration error (15 bins); lower is better.
    Ece,
}

impl Metric {
    /// The name tables and files use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro_f1",
            Metric::Ece => "ece",
        }
    }

    /// Whether a larger value is better (the best row's direction).
    pub fn higher_is_better(self) -> bool {
        self != Metric::Ece
    }

    /// The metric of one evaluation; None for a record written before xferlab measured it.
    pub fn of(self, eval: &Evaluation) -> Option<f64> {
        match self {
            Metric::Accuracy => Some(eval.accuracy),
            Metric::MacroF1 => eval.metrics.as_ref().map(|m| m.macro_f1),
            Metric::Ece => eval.metrics.as_ref().map(|m| m.ece),
        }
    }

    /// Orders two means so that the better is greater.
    pub fn order(self, a: f64, b: f64) -> std::cmp::Ordering {
        match self.higher_is_better() {
            true => a.total_cmp(&b),
            false => b.total_cmp(&a),
        }
    }
}

/// How the stars of many gains over scratch account for being many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Holm's step-down correction over every gain in the report: the chance of any false
    /// star stays at 5%.
    #[default]
    Holm,
    /// None: a star where a gain's own 95% interval excludes zero.
    None,
}

/// A sweep's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Experiment name.
    pub name: String,
    /// What the rows compare.
    pub metric: Metric,
    /// How significance of the gains is decided.
    pub correction: Correction,
    /// Swept axes that group rows (all but `seed` and `freeze_depth`).
    pub axes: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
    /// Best strategy and depths at each setting of the axes.
    pub best: Vec<Best>,
    /// Trials in the plan.
    pub trials: usize,
    /// Finished trials.
    pub finished: usize,
    /// Failed trials.
    pub failed: usize,
    /// Trials not run yet.
    pub missing: usize,
    /// Whether some trial trains through an adapter (BitFit, LoRA): the tables then show
    /// each row's trainable parameters, which its depths no longer tell.
    #[serde(skip)]
    pub adapted: bool,
}

impl Report {
    /// How many gains have a p-value (two or more paired seeds): the family Holm corrects.
    pub fn gains_tested(&self) -> usize {
        self.rows.iter().filter(|r| r.gain_p.is_some()).count()
    }
}

fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Groups the plan's trials with their records, comparing them by `metric`.
pub fn build(
    plan: &Plan,
    records: &[TrialRecord],
    metric: Metric,
    correction: Correction,
) -> Report {
    let axes: Vec<String> = plan.axes.iter().filter(|a| *a != "seed").cloned().collect();
    let by_id: HashMap<&str, &TrialRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut losses: Vec<Vec<f64>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let (mut finished, mut failed) = (0, 0);
    for trial in &plan.trials {
        let record = by_id.get(trial.id.as_str());
        match record.map(|r| r.status) {
            Some(Status::Finished) => finished += 1,
            Some(Status::Failed) => failed += 1,
            // An interrupted trial is run again: it counts as not run.
            Some(Status::Interrupted) | None => {}
        }
        let values: Vec<Value> = axes
            .iter()
            .map(|a| trial.axes.get(a).cloned().unwrap_or(Value::Null))
            .collect();
        for &strategy in &trial.strategies {
            let key = serde_json::to_string(&(
                strategy,
                trial.config.transfer_depth,
                trial.config.freeze_depth,
                &values,
            ))
            .expect("json");
            let at = *index.entry(key).or_insert_with(|| {
                rows.push(Row::empty(
                    strategy,
                    (trial.config.transfer_depth, trial.config.freeze_depth),
                    values.clone(),
                ));
                losses.push(Vec::new());
                rows.len() - 1
            });
            let row = &mut rows[at];
            if trial.config.auto_depth {
                row.searched = Some(trial.config.train.auto_depth.unwrap_or_default().family);
            }
            match record {
                Some(r) if r.status == Status::Finished => {
                    let eval = r.eval.as_ref().expect("finished trials have an evaluation");
                    row.count += 1;
                    row.trainable_parameters = row.trainable_parameters.or(r.trainable_parameters);
                    if r.auto_depth.is_some() {
                        let depths = (r.transfer_depth, r.freeze_depth);
                        row.chosen.insert(trial.config.seed, depths);
                    }
                    if let Some(value) = metric.of(eval) {
                        row.by_seed.insert(trial.config.seed, value);
                        row.trial_ids.insert(trial.config.seed, r.id.clone());
                    }
                    losses[at].push(eval.loss);
                }
                Some(r) if r.status == Status::Failed => row.failed += 1,
                _ => row.missing += 1,
            }
        }
    }
    for (row, losses) in rows.iter_mut().zip(&losses) {
        row.value = Summary::of(&row.by_seed.values().copied().collect::<Vec<_>>());
        row.loss_mean = Summary::of(losses).map(|s| s.mean);
    }
    let gains: Vec<Option<Summary>> = rows
        .iter()
        .map(|row| {
            let base = baseline_of(&rows, row)?;
            let differences: Vec<f64> = row
                .by_seed
                .iter()
                .filter_map(|(seed, value)| Some(value - base.by_seed.get(seed)?))
                .collect();
            Summary::of(&differences)
        })
        .collect();
    for (row, gain) in rows.iter_mut().zip(gains) {
        row.gain = gain;
    }
    // The family: every gain with a p-value (two or more seeds).
    let (tested, p): (Vec<usize>, Vec<f64>) = (rows.iter().enumerate())
        .filter_map(|(i, row)| Some((i, row.gain?.p_value()?)))
        .unzip();
    let adjusted = match correction {
        Correction::Holm => super::stats::holm(&p),
        Correction::None => p,
    };
    for (&i, p) in tested.iter().zip(adjusted) {
        rows[i].gain_p = Some(p);
        rows[i].gain_significant = p < 0.05;
    }
    let strategy_rank = |s: StrategyLabel| {
        plan.strategies
            .iter()
            .position(|p| *p == s)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by(|a, b| {
        a.axes
            .iter()
            .zip(&b.axes)
            .map(|(x, y)| order(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(strategy_rank(a.strategy).cmp(&strategy_rank(b.strategy)))
            .then(a.transfer_depth.cmp(&b.transfer_depth))
            .then(a.freeze_depth.cmp(&b.freeze_depth))
    });
    Report {
        name: plan.name.clone(),
        metric,
        correction,
        best: best(&rows, metric),
        axes,
        rows,
        trials: plan.trials.len(),
        finished,
        failed,
        missing: plan.trials.len() - finished - failed,
        adapted: plan.trials.iter().any(|t| t.config.adapter.is_some()),
    }
}

/// At each setting of the axes (rows are sorted by them), the best row by `metric` and its
/// ties. A baseline, whose null axes match every setting, competes at each one.
fn best(rows: &[Row], metric: Metric) -> Vec<Best> {
    settings(rows)
        .into_iter()
        .filter_map(|axes| {
            let here: Vec<&Row> = rows
                .iter()
                .filter(|r| r.belongs_at(axes))
                .filter(|r| r.value.is_some())
                .collect();
            let top = here
                .iter()
                .max_by(|a, b| metric.order(a.value.unwrap().mean, b.value.unwrap().mean))?;
            let value = top.value.unwrap();
            let seed = (top.by_seed.iter())
                .max_by(|a, b| metric.order(*a.1, *b.1))
                .map(|(seed, _)| seed);
            Some(Best {
                trial: seed.and_then(|s| top.trial_ids.get(s).cloned()),
                axes: axes.to_vec(),
                best: top.label(),
                value,
                tied: here
                    .iter()
                    .filter(|r| !std::ptr::eq(**r, *top))
                    .filter(|r| r.value.unwrap().overlaps(&value))
                    .map(|r| r.label())
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(strategy: Strategy, axes: Vec<Value>) -> Row {
        Row::empty(StrategyLabel::Named(strategy), (0, 0), axes)
    }

    #[test]
    fn scratch_is_the_baseline_of_every_setting_it_does_not_depend_on() {
        // Axes: (per_class, lr); scratch does not depend on per_class here.
        let rows = vec![
            row(Strategy::Scratch, vec![Value::Null, json!(0.1)]),
            row(Strategy::Transfer, vec![json!(5), json!(0.1)]),
            row(Strategy::Transfer, vec![json!(20), json!(0.1)]),
            row(Strategy::Finetune, vec![json!(20), json!(0.2)]),
        ];
        assert_eq!(baseline_of(&rows, &rows[1]), Some(&rows[0]));
        assert_eq!(baseline_of(&rows, &rows[2]), Some(&rows[0]));
        assert_eq!(baseline_of(&rows, &rows[3]), None, "lr differs");
        assert_eq!(baseline_of(&rows, &rows[0]), None, "no baseline of its own");
        assert!(rows[0].belongs_at(&rows[2].axes));
        assert!(!rows[1].belongs_at(&rows[2].axes));
        let axes: Vec<&[Value]> = rows[1..].iter().map(|r| r.axes.as_slice()).collect();
        assert_eq!(settings(&rows), axes);
        // With only baselines, their own values are the one setting.
        assert_eq!(settings(&rows[..1]), [rows[0].axes.as_slice()]);
    }
}
