//! A report as text for people and files: aligned table, Markdown, CSV and JSON, and two
//! sweeps side by side. The numbers come from `group`; here they are only laid out.

use std::fmt::Write;

use serde_json::Value;

use super::{Correction, Report, Row, Summary};
use crate::error::InputError;
use crate::plan::StrategyLabel;
use crate::spec::DepthFamily;
use crate::table::{self, Layout};

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

/// The last part of an axis' key path: `per_class` for `target.train.per_class`.
pub(super) fn short(axis: &str) -> &str {
    axis.rsplit('.').next().unwrap_or(axis)
}

/// A swept value in a cell: strings without quotes, `-` for none.
pub(super) fn cell(value: &Value) -> String {
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
pub(crate) fn setting(axes: &[String], values: &[Value]) -> String {
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
    let (t, f) = row.depth_cells();
    let mut cells = vec![row.strategy.to_string(), t, f];
    cells.extend(row.axes.iter().map(cell));
    cells
}

fn csv(report: &Report) -> String {
    let mut header: Vec<String> = vec!["strategy".into(), "t".into(), "f".into()];
    header.extend(report.axes.iter().cloned());
    let metric = report.metric.name();
    header.extend(["finished", "failed", "missing"].map(String::from));
    header.extend(["mean", "std", "ci95"].map(|s| format!("{metric}_{s}")));
    header.extend(
        [
            "loss_mean",
            "trainable_parameters",
            "gain_mean",
            "gain_ci95",
            "gain_pairs",
            "gain_excludes_zero",
            "gain_p",
            "gain_significant",
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
            raw(row.value.map(|a| a.mean)),
            raw(row.value.and_then(|a| a.std)),
            raw(row.value.and_then(|a| a.ci95)),
            raw(row.loss_mean),
            row.trainable_parameters
                .map(|n| n.to_string())
                .unwrap_or_default(),
            raw(row.gain.map(|g| g.mean)),
            raw(row.gain.and_then(|g| g.ci95)),
            row.gain.map(|g| g.n.to_string()).unwrap_or_default(),
            row.gain
                .map(|g| g.excludes_zero().to_string())
                .unwrap_or_default(),
            raw(row.gain_p),
            row.gain
                .map(|_| row.gain_significant.to_string())
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

/// What matches rows of two sweeps: strategy, depths and setting.
type Key = (StrategyLabel, usize, usize, String);

/// Checks what `report RUN_A RUN_B` is asked for: two sweeps side by side are a table (or
/// Markdown); the other formats, figures and the page apply to one sweep, so asking for
/// them is an input error rather than being silently ignored.
pub fn check_comparison(format: Format, plots: bool, html: bool) -> Result<(), InputError> {
    let mut asked = Vec::new();
    match format {
        Format::Csv => asked.push("--format csv"),
        Format::Json => asked.push("--format json"),
        Format::Table | Format::Md => {}
    }
    if plots {
        asked.push("--plots");
    }
    if html {
        asked.push("--html");
    }
    if asked.is_empty() {
        return Ok(());
    }
    let (last, rest) = asked.split_last().expect("not empty");
    let (what, verb) = match rest {
        [] => (last.to_string(), "applies"),
        _ => (format!("{} and {last}", rest.join(", ")), "apply"),
    };
    Err(InputError::new(format!(
        "{what} {verb} to one sweep, not to comparing two"
    ))
    .with_help(
        "comparing two sweeps prints a table or md; --format csv/json, --plots and --html apply to one sweep: report each sweep on its own",
    ))
}

/// Two sweeps side by side: rows matched by strategy, depths and setting.
pub fn compare(a: &Report, b: &Report, markdown: bool) -> String {
    let key = |report: &Report, row: &Row| {
        (
            row.strategy,
            row.transfer_depth,
            row.freeze_depth,
            setting(&report.axes, &row.axes),
        )
    };
    let mut keys: Vec<Key> = Vec::new();
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
        k: &Key,
        key: impl Fn(&Report, &Row) -> Key,
    ) -> Option<&'r Row> {
        report.rows.iter().find(|r| key(report, r) == *k)
    }
    let value = |row: Option<&Row>| match row.and_then(|r| r.value) {
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
            let difference = match (x.and_then(|r| r.value), y.and_then(|r| r.value)) {
                (Some(x), Some(y)) => format!("{:+.4}", y.mean - x.mean),
                _ => "-".into(),
            };
            vec![
                k.0.to_string(),
                k.1.to_string(),
                k.2.to_string(),
                k.3.clone(),
                value(x),
                value(y),
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
    header.push("n".into());
    if report.adapted {
        header.push("trained params".into());
    }
    header.extend(
        [
            report.metric.name(),
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
            Some(g) if hurts(report, row) => format!("{:+.4}!", g.mean),
            Some(g) if row.gain_significant => format!("{:+.4}*", g.mean),
            Some(g) => format!("{:+.4} ", g.mean),
            None => "- ".into(),
        };
        line.push(n);
        if report.adapted {
            line.push(
                row.trainable_parameters
                    .map_or("-".into(), |p| p.to_string()),
            );
        }
        line.extend([
            number(row.value.map(|a| a.mean), false),
            number(row.value.and_then(|a| a.std), false),
            half_width(row.value),
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
        "gain: {} minus scratch's with the same seed and data; 95% CI: Student's t; * {}; ! the same, worse than scratch{}",
        report.metric.name(),
        star(report),
        match report.metric.higher_is_better() {
            true => "",
            false => " (lower is better)",
        }
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
            let worse: Vec<String> = (report.rows.iter())
                .filter(|row| row.axes == best.axes && hurts(report, row))
                .map(Row::label)
                .collect();
            let ties = match worse.is_empty() {
                true => ties,
                false => format!("{ties}; worse than scratch: {}", worse.join(", ")),
            };
            let _ = writeln!(
                out,
                "{}{}: {} {:.4}{ties}",
                if markdown { "- " } else { "  " },
                setting(&report.axes, &best.axes),
                best.best,
                best.value.mean,
            );
        }
    }
    let chosen: Vec<String> = (report.rows.iter())
        .filter(|row| !row.chosen.is_empty())
        .map(|row| {
            let seeds: Vec<String> = (row.chosen.iter())
                .map(|(seed, (t, f))| match row.searched {
                    Some(DepthFamily::PartialFreeze) | None => format!("f={f} (seed {seed})"),
                    _ => format!("t={t} f={f} (seed {seed})"),
                })
                .collect();
            format!("{}: {}", setting(&report.axes, &row.axes), seeds.join(", "))
        })
        .collect();
    if !chosen.is_empty() {
        let _ = writeln!(out, "{}auto_depth chose:", if markdown { "\n" } else { "" });
        for line in chosen {
            let _ = writeln!(out, "{}{line}", if markdown { "- " } else { "  " });
        }
    }
    let verdicts = verdicts(report);
    if !verdicts.is_empty() {
        let _ = writeln!(out, "{}against scratch:", if markdown { "\n" } else { "" });
        for verdict in verdicts {
            let _ = writeln!(out, "{}{verdict}", if markdown { "- " } else { "  " });
        }
    }
    out
}

/// What the stars mean under the report's correction.
fn star(report: &Report) -> String {
    let tested = report.gains_tested();
    match report.correction {
        _ if tested == 0 => "differs from zero (no gain here has two seeds to test)".into(),
        Correction::Holm => format!(
            "differs from zero at 5% by a paired t-test, Holm-corrected over the {tested} gains (`--correction none`: each interval alone)"
        ),
        Correction::None => "its 95% interval excludes zero (uncorrected for the number of gains: `--correction holm` corrects)".into(),
    }
}

/// Whether a row is significantly worse than the baseline it is paired with.
fn hurts(report: &Report, row: &Row) -> bool {
    row.gain_significant && row.gain.is_some_and(|g| hurts_direction(report, g.mean))
}

/// Whether a gain of this sign is a loss for the report's metric.
fn hurts_direction(report: &Report, gain: f64) -> bool {
    match report.metric.higher_is_better() {
        true => gain < 0.0,
        false => gain > 0.0,
    }
}

/// One line per gain that is not a clear win: negative transfer said plainly, and gains too
/// uncertain to tell, with about how many seeds would tell a difference of their size.
fn verdicts(report: &Report) -> Vec<String> {
    let interval = |g: &Summary| match g.interval() {
        Some((low, high)) => format!("{:+.4}, 95% CI {low:+.4}..{high:+.4}", g.mean),
        None => format!("{:+.4}", g.mean),
    };
    let mut lines = Vec::new();
    for row in &report.rows {
        let (Some(g), Some(_)) = (row.gain, row.gain_p) else {
            continue;
        };
        let at = setting(&report.axes, &row.axes);
        if hurts(report, row) {
            let instead = match row.strategy.name() {
                "finetune" => "train from scratch instead",
                _ => "train from scratch or fine-tune instead",
            };
            lines.push(format!(
                "{} hurts at {at} ({}): {instead}",
                row.label(),
                interval(&g)
            ));
        } else if !row.gain_significant && g.excludes_zero() {
            lines.push(format!(
                "{} at {at}: {} than scratch on its own ({}), not after Holm's correction over the {} gains: more seeds would settle it",
                row.label(),
                if hurts_direction(report, g.mean) { "worse" } else { "better" },
                interval(&g),
                report.gains_tested()
            ));
        } else if !row.gain_significant {
            let more = match g.values_to_resolve() {
                Some(n) => format!(
                    "about {n} seeds would resolve a difference of this size (now {})",
                    g.n
                ),
                None => "a difference this small would need more than 1000 seeds".into(),
            };
            lines.push(format!(
                "{} at {at}: no detectable difference ({}); {more}",
                row.label(),
                interval(&g)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparing_two_sweeps_refuses_what_applies_to_one() {
        assert!(check_comparison(Format::Table, false, false).is_ok());
        assert!(check_comparison(Format::Md, false, false).is_ok());
        let error = check_comparison(Format::Csv, false, false).unwrap_err();
        assert_eq!(
            error.message,
            "--format csv applies to one sweep, not to comparing two"
        );
        let error = check_comparison(Format::Json, true, true).unwrap_err();
        assert_eq!(
            error.message,
            "--format json, --plots and --html apply to one sweep, not to comparing two"
        );
        assert!(check_comparison(Format::Table, false, true).is_err());
    }
}
