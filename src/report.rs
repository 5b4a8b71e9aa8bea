//! Result tables: trials grouped by strategy, depths and swept axes, mean ± std over seeds,
//! and the gain over `scratch` at the same settings.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::plan::Plan;
use crate::store::{Status, TrialRecord};

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
    /// Mean eval accuracy.
    pub accuracy_mean: Option<f64>,
    /// Sample standard deviation of eval accuracy.
    pub accuracy_std: Option<f64>,
    /// Mean eval loss.
    pub loss_mean: Option<f64>,
    /// Mean accuracy minus scratch's at the same settings.
    pub gain_over_scratch: Option<f64>,
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
    /// Trials in the plan.
    pub trials: usize,
    /// Finished trials.
    pub finished: usize,
    /// Failed trials.
    pub failed: usize,
    /// Trials not run yet.
    pub missing: usize,
}

fn mean_std(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (Some(mean), std)
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
    struct Group {
        row: Row,
        accuracies: Vec<f64>,
        losses: Vec<f64>,
    }
    let mut groups: Vec<Group> = Vec::new();
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
                groups.push(Group {
                    row: Row {
                        strategy: strategy.clone(),
                        transfer_depth: trial.config.transfer_depth,
                        freeze_depth: trial.config.freeze_depth,
                        axes: values.clone(),
                        count: 0,
                        failed: 0,
                        missing: 0,
                        accuracy_mean: None,
                        accuracy_std: None,
                        loss_mean: None,
                        gain_over_scratch: None,
                    },
                    accuracies: Vec::new(),
                    losses: Vec::new(),
                });
                groups.len() - 1
            });
            let group = &mut groups[at];
            match record {
                Some(r) if r.status == Status::Finished => {
                    let eval = r.eval.expect("finished trials have an evaluation");
                    group.row.count += 1;
                    group.accuracies.push(eval.accuracy);
                    group.losses.push(eval.loss);
                }
                Some(r) if r.status == Status::Failed => group.row.failed += 1,
                _ => group.row.missing += 1,
            }
        }
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|g| {
            let mut row = g.row;
            (row.accuracy_mean, row.accuracy_std) = mean_std(&g.accuracies);
            row.loss_mean = mean_std(&g.losses).0;
            row
        })
        .collect();
    // Scratch ignores axes it does not depend on (they are null in its config).
    let scratch: Vec<Row> = rows
        .iter()
        .filter(|r| r.strategy == "scratch")
        .cloned()
        .collect();
    for row in &mut rows {
        let baseline = scratch.iter().find(|s| {
            s.axes
                .iter()
                .zip(&row.axes)
                .all(|(a, b)| a.is_null() || a == b)
        });
        if let (Some(base), Some(mean)) =
            (baseline.and_then(|s| s.accuracy_mean), row.accuracy_mean)
        {
            row.gain_over_scratch = Some(mean - base);
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
        axes,
        rows,
        trials: plan.trials.len(),
        finished,
        failed,
        missing: plan.trials.len() - finished - failed,
    }
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

/// Renders a report.
pub fn render(report: &Report, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(report).expect("reports serialise") + "\n";
    }
    let mut header: Vec<String> = vec!["strategy".into(), "t".into(), "f".into()];
    header.extend(report.axes.iter().map(|a| {
        if format == Format::Csv {
            a.clone()
        } else {
            short(a).to_string()
        }
    }));
    let mut lines: Vec<Vec<String>> = Vec::new();
    if format == Format::Csv {
        header.extend(
            [
                "finished",
                "failed",
                "missing",
                "accuracy_mean",
                "accuracy_std",
                "loss_mean",
                "gain_over_scratch",
            ]
            .map(String::from),
        );
        for row in &report.rows {
            let mut line = vec![
                row.strategy.clone(),
                row.transfer_depth.to_string(),
                row.freeze_depth.to_string(),
            ];
            line.extend(row.axes.iter().map(cell));
            let raw = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
            line.extend([
                row.count.to_string(),
                row.failed.to_string(),
                row.missing.to_string(),
                raw(row.accuracy_mean),
                raw(row.accuracy_std),
                raw(row.loss_mean),
                raw(row.gain_over_scratch),
            ]);
            lines.push(line);
        }
        let mut out = header.join(",") + "\n";
        for line in lines {
            out += &(line
                .iter()
                .map(|c| {
                    if c.contains(',') {
                        format!("\"{c}\"")
                    } else {
                        c.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
                + "\n");
        }
        return out;
    }
    header.extend(["n", "accuracy", "± std", "gain vs scratch"].map(String::from));
    for row in &report.rows {
        let mut line = vec![
            row.strategy.clone(),
            row.transfer_depth.to_string(),
            row.freeze_depth.to_string(),
        ];
        line.extend(row.axes.iter().map(cell));
        let mut n = row.count.to_string();
        if row.failed > 0 {
            n += &format!(" ({} failed)", row.failed);
        }
        if row.missing > 0 {
            n += &format!(" ({} not run)", row.missing);
        }
        line.extend([
            n,
            number(row.accuracy_mean, false),
            number(row.accuracy_std, false),
            number(row.gain_over_scratch, true),
        ]);
        lines.push(line);
    }
    let numeric = |column: usize| column == 1 || column == 2 || column >= 3 + report.axes.len();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let pad = |text: &str, c: usize| {
        let fill = " ".repeat(widths[c] - text.chars().count());
        if numeric(c) {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = String::new();
    let summary = format!(
        "{}: {} trials, {} finished, {} failed, {} not run",
        report.name, report.trials, report.finished, report.failed, report.missing
    );
    match format {
        Format::Md => {
            let _ = writeln!(out, "**{summary}**\n");
            let _ = writeln!(
                out,
                "| {} |",
                (0..header.len())
                    .map(|c| pad(&header[c], c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(
                out,
                "|{}|",
                (0..header.len())
                    .map(|c| if numeric(c) {
                        format!("{}:", "-".repeat(widths[c] + 1))
                    } else {
                        "-".repeat(widths[c] + 2)
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            );
            for line in &lines {
                let _ = writeln!(
                    out,
                    "| {} |",
                    (0..header.len())
                        .map(|c| pad(&line[c], c))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        _ => {
            let _ = writeln!(out, "{summary}");
            let _ = writeln!(
                out,
                "{}",
                (0..header.len())
                    .map(|c| pad(&header[c], c))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
            );
            let _ = writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            for line in &lines {
                let _ = writeln!(
                    out,
                    "{}",
                    (0..header.len())
                        .map(|c| pad(&line[c], c))
                        .collect::<Vec<_>>()
                        .join("  ")
                        .trim_end()
                );
            }
        }
    }
    out
}
