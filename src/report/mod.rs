//! Result tables: trials grouped by strategy, depths and swept axes; mean, std and a 95%
//! interval over seeds; the gain over `scratch` paired by seed; the best strategy and depths
//! at each setting, with its statistical ties.

pub mod html;
pub mod plots;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::plan::Plan;
use crate::store::{Status, TrialRecord};
use crate::table::{self, Layout};
pub use stats::Summary;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// A Markdown table.
    Md,
    /// Comma-separated values.
    Csv,
    /// JSON.
    Json,
}

/// One group of trials: same strategy, depths and swept values, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Strategy (or `raw`).
    pub strategy: String,
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
    /// Eval accuracy over seeds.
    pub accuracy: Option<Summary>,
    /// Mean eval loss.
    pub loss_mean: Option<f64>,
    /// Accuracy minus scratch's, paired by seed (same data subset, same everything but the
    /// strategy), over the seeds both finished.
    pub gain: Option<Summary>,
    /// Final-accuracy by seed, for pairing and plots.
    #[serde(skip)]
    pub by_seed: BTreeMap<u64, f64>,
}

impl Row {
    /// `strategy t=T f=F`.
    pub fn label(&self) -> String {
        format!(
            "{} t={} f={}",
            self.strategy, self.transfer_depth, self.freeze_depth
        )
    }
}

/// The best row at one setting of the axes, and the rows whose intervals overlap its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Values of the report's axes.
    pub axes: Vec<Value>,
    /// The row with the highest mean accuracy.
    pub best: String,
    /// Its accuracy.
    pub accuracy: Summary,
    /// Rows statistically tied with it (95% intervals overlap).
    pub tied: Vec<String>,
}

/// A sweep's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Experiment name.
    pub name: String,
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
}

fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Groups the plan's trials with their records.
pub fn build(plan: &Plan, records: &[TrialRecord]) -> Report {
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
        for strategy in &trial.strategies {
            let key = serde_json::to_string(&(
                strategy,
                trial.config.transfer_depth,
                trial.config.freeze_depth,
                &values,
            ))
            .expect("json");
            let at = *index.entry(key).or_insert_with(|| {
                rows.push(Row {
                    strategy: strategy.clone(),
                    transfer_depth: trial.config.transfer_depth,
                    freeze_depth: trial.config.freeze_depth,
                    axes: values.clone(),
                    count: 0,
                    failed: 0,
                    missing: 0,
                    accuracy: None,
                    loss_mean: None,
                    gain: None,
                    by_seed: BTreeMap::new(),
                });
                losses.push(Vec::new());
                rows.len() - 1
            });
            let row = &mut rows[at];
            match record {
                Some(r) if r.status == Status::Finished => {
                    let eval = r.eval.expect("finished trials have an evaluation");
                    row.count += 1;
                    row.by_seed.insert(trial.config.seed, eval.accuracy);
                    losses[at].push(eval.loss);
                }
                Some(r) if r.status == Status::Failed => row.failed += 1,
                _ => row.missing += 1,
            }
        }
    }
    for (row, losses) in rows.iter_mut().zip(&losses) {
        row.accuracy = Summary::of(&row.by_seed.values().copied().collect::<Vec<_>>());
        row.loss_mean = Summary::of(losses).map(|s| s.mean);
    }
    // Scratch ignores axes it does not depend on (they are null in its config).
    let scratch: Vec<Row> = rows
        .iter()
        .filter(|r| r.strategy == "scratch")
        .cloned()
        .collect();
    for row in rows.iter_mut().filter(|r| r.strategy != "scratch") {
        let baseline = scratch.iter().find(|s| {
            s.axes
                .iter()
                .zip(&row.axes)
                .all(|(a, b)| a.is_null() || a == b)
        });
        if let Some(base) = baseline {
            let differences: Vec<f64> = row
                .by_seed
                .iter()
                .filter_map(|(seed, accuracy)| Some(accuracy - base.by_seed.get(seed)?))
                .collect();
            row.gain = Summary::of(&differences);
        }
    }
    let strategy_rank = |s: &str| {
        plan.strategies
            .iter()
            .position(|p| p == s)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by(|a, b| {
        a.axes
            .iter()
            .zip(&b.axes)
            .map(|(x, y)| order(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(strategy_rank(&a.strategy).cmp(&strategy_rank(&b.strategy)))
            .then(a.transfer_depth.cmp(&b.transfer_depth))
            .then(a.freeze_depth.cmp(&b.freeze_depth))
    });
    Report {
        name: plan.name.clone(),
        best: best(&rows),
        axes,
        rows,
        trials: plan.trials.len(),
        finished,
        failed,
        missing: plan.trials.len() - finished - failed,
    }
}

/// At each setting of the axes (rows are sorted by them), the best row and its ties.
/// Scratch, whose null axes match every setting, competes at each one.
fn best(rows: &[Row]) -> Vec<Best> {
    let mut settings: Vec<&Vec<Value>> = Vec::new();
    for row in rows.iter().filter(|r| r.strategy != "scratch") {
        if !settings.contains(&&row.axes) {
            settings.push(&row.axes);
        }
    }
    if settings.is_empty() {
        settings = rows.iter().map(|r| &r.axes).take(1).collect();
    }
    settings
        .into_iter()
        .filter_map(|axes| {
            let here: Vec<&Row> = rows
                .iter()
                .filter(|r| {
                    r.axes
                        .iter()
                        .zip(axes)
                        .all(|(a, b)| a == b || (r.strategy == "scratch" && a.is_null()))
                })
                .filter(|r| r.accuracy.is_some())
                .collect();
            let top = here.iter().max_by(|a, b| {
                let (x, y) = (a.accuracy.unwrap().mean, b.accuracy.unwrap().mean);
                x.total_cmp(&y)
            })?;
            let accuracy = top.accuracy.unwrap();
            Some(Best {
                axes: axes.clone(),
                best: top.label(),
                accuracy,
                tied: here
                    .iter()
                    .filter(|r| !std::ptr::eq(**r, *top))
                    .filter(|r| r.accuracy.unwrap().overlaps(&accuracy))
                    .map(|r| r.label())
                    .collect(),
            })
        })
        .collect()
}

fn short(axis: &str) -> &str {
    axis.rsplit('.').next().unwrap_or(axis)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn number(value: Option<f64>, signed: bool) -> String {
    match value {
        Some(v) if signed => format!("{v:+.4}"),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

fn half_width(summary: Option<Summary>) -> String {
    summary
        .and_then(|s| s.ci95)
        .map_or("-".into(), |h| format!("±{h:.4}"))
}

/// `per_class=5 lr=0.01`, or `all` when nothing is swept.
fn setting(axes: &[String], values: &[Value]) -> String {
    let parts: Vec<String> = axes
        .iter()
        .zip(values)
        .map(|(a, v)| format!("{}={}", short(a), cell(v)))
        .collect();
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(" ")
    }
}

/// Renders a report.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report).expect("reports serialise") + "\n",
        Format::Csv => csv(report),
        Format::Table | Format::Md => text(report, format == Format::Md),
    }
}

/// Strategy, t, f and the axes' values: the cells that name a row.
fn row_key_cells(row: &Row) -> Vec<String> {
    let mut cells = vec![
        row.strategy.clone(),
        row.transfer_depth.to_string(),
        row.freeze_depth.to_string(),
    ];
    cells.extend(row.axes.iter().map(cell));
    cells
}

fn csv(report: &Report) -> String {
    let mut header: Vec<String> = vec!["strategy".into(), "t".into(), "f".into()];
    header.extend(report.axes.iter().cloned());
    header.extend(
        [
            "finished",
            "failed",
            "missing",
            "accuracy_mean",
            "accuracy_std",
            "accuracy_ci95",
            "loss_mean",
            "gain_mean",
            "gain_ci95",
            "gain_pairs",
            "gain_excludes_zero",
        ]
        .map(String::from),
    );
    let raw = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let quote = |c: String| {
        if c.contains(',') {
            format!("\"{c}\"")
        } else {
            c
        }
    };
    let mut out = header.join(",") + "\n";
    for row in &report.rows {
        let mut line = row_key_cells(row);
        line.extend([
            row.count.to_string(),
            row.failed.to_string(),
            row.missing.to_string(),
            raw(row.accuracy.map(|a| a.mean)),
            raw(row.accuracy.and_then(|a| a.std)),
            raw(row.accuracy.and_then(|a| a.ci95)),
            raw(row.loss_mean),
            raw(row.gain.map(|g| g.mean)),
            raw(row.gain.and_then(|g| g.ci95)),
            row.gain.map(|g| g.n.to_string()).unwrap_or_default(),
            row.gain
                .map(|g| g.excludes_zero().to_string())
                .unwrap_or_default(),
        ]);
        out += &(line.into_iter().map(quote).collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

/// The layout of a text table: a Markdown table, or columns with a rule under the header.
fn layout(markdown: bool) -> Layout {
    if markdown {
        Layout::Markdown
    } else {
        Layout::Ruled
    }
}

/// Two sweeps side by side: rows matched by strategy, depths and setting.
pub fn compare(a: &Report, b: &Report, markdown: bool) -> String {
    let key = |report: &Report, row: &Row| {
        (
            row.strategy.clone(),
            row.transfer_depth,
            row.freeze_depth,
            setting(&report.axes, &row.axes),
        )
    };
    let mut keys: Vec<(String, usize, usize, String)> = Vec::new();
    for (report, row) in a
        .rows
        .iter()
        .map(|r| (a, r))
        .chain(b.rows.iter().map(|r| (b, r)))
    {
        let k = key(report, row);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    fn find<'r>(
        report: &'r Report,
        k: &(String, usize, usize, String),
        key: impl Fn(&Report, &Row) -> (String, usize, usize, String),
    ) -> Option<&'r Row> {
        report.rows.iter().find(|r| key(report, r) == *k)
    }
    let accuracy = |row: Option<&Row>| match row.and_then(|r| r.accuracy) {
        Some(s) => format!("{:.4} {} (n={})", s.mean, half_width(Some(s)), s.n),
        None => "-".into(),
    };
    let header: Vec<String> = [
        "strategy".to_string(),
        "t".into(),
        "f".into(),
        "setting".into(),
        format!("A: {}", a.name),
        format!("B: {}", b.name),
        "B - A".into(),
    ]
    .to_vec();
    let lines: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let (x, y) = (find(a, k, key), find(b, k, key));
            let difference = match (x.and_then(|r| r.accuracy), y.and_then(|r| r.accuracy)) {
                (Some(x), Some(y)) => format!("{:+.4}", y.mean - x.mean),
                _ => "-".into(),
            };
            vec![
                k.0.clone(),
                k.1.to_string(),
                k.2.to_string(),
                k.3.clone(),
                accuracy(x),
                accuracy(y),
                difference,
            ]
        })
        .collect();
    let title = format!(
        "A: {} ({} of {} finished)  B: {} ({} of {} finished)",
        a.name, a.finished, a.trials, b.name, b.finished, b.trials
    );
    let mut out = if markdown {
        format!("**{title}**\n\n")
    } else {
        format!("{title}\n")
    };
    out += &table::render(
        &header,
        &lines,
        |c| c == 1 || c == 2 || c >= 4,
        layout(markdown),
    );
    out
}

fn text(report: &Report, markdown: bool) -> String {
    let mut header: Vec<String> = vec!["strategy".into(), "t".into(), "f".into()];
    header.extend(report.axes.iter().map(|a| short(a).to_string()));
    header.extend(
        [
            "n",
            "accuracy",
            "± std",
            "95% CI",
            "gain vs scratch",
            "95% CI",
        ]
        .map(String::from),
    );
    let mut lines: Vec<Vec<String>> = Vec::new();
    for row in &report.rows {
        let mut line = row_key_cells(row);
        let mut n = row.count.to_string();
        if row.failed > 0 {
            n += &format!(" ({} failed)", row.failed);
        }
        if row.missing > 0 {
            n += &format!(" ({} not run)", row.missing);
        }
        let gain = match row.gain {
            Some(g) if g.excludes_zero() => format!("{:+.4}*", g.mean),
            Some(g) => format!("{:+.4} ", g.mean),
            None => "- ".into(),
        };
        line.extend([
            n,
            number(row.accuracy.map(|a| a.mean), false),
            number(row.accuracy.and_then(|a| a.std), false),
            half_width(row.accuracy),
            gain,
            half_width(row.gain),
        ]);
        lines.push(line);
    }
    let numeric = |column: usize| column == 1 || column == 2 || column >= 3 + report.axes.len();
    let summary = format!(
        "{}: {} trials, {} finished, {} failed, {} not run",
        report.name, report.trials, report.finished, report.failed, report.missing
    );
    let mut out = if markdown {
        format!("**{summary}**\n\n")
    } else {
        format!("{summary}\n")
    };
    out += &table::render(&header, &lines, numeric, layout(markdown));
    if markdown {
        out += "\n";
    }
    let _ = writeln!(
        out,
        "gain: accuracy minus scratch's with the same seed and data; * its 95% interval (Student's t) excludes zero"
    );
    if !report.best.is_empty() {
        let _ = writeln!(
            out,
            "{}best (ties: 95% intervals overlap):",
            if markdown { "\n" } else { "" }
        );
        for best in &report.best {
            let ties = if best.tied.is_empty() {
                String::new()
            } else {
                format!("; tied: {}", best.tied.join(", "))
            };
            let _ = writeln!(
                out,
                "{}{}: {} {:.4}{ties}",
                if markdown { "- " } else { "  " },
                setting(&report.axes, &best.axes),
                best.best,
                best.accuracy.mean,
            );
        }
    }
    out
}
