//! One self-contained HTML page per sweep: the tables, the figures as inline SVG, failed
//! trials, run facts and the spec. No network, no JavaScript.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::plots::Figure;
use super::{Report, setting, short};
use crate::store::{Status, SweepIdentity, TrialRecord};

/// What the page shows besides the report itself.
pub struct Page<'a> {
    /// The report.
    pub report: &'a Report,
    /// The records it was built from.
    pub records: &'a [TrialRecord],
    /// Its figures.
    pub figures: &'a [Figure],
    /// The resolved spec of the latest run.
    pub spec_yaml: &'a str,
    /// The `--set` overrides of the latest run.
    pub overrides: &'a [String],
    /// The sweep's identity, when the store has one.
    pub identity: Option<&'a SweepIdentity>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str =
    "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:.25em .6em}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eee}
tr.failed td{background:#fde8e0}pre{background:#f4f4f4;padding:1em;overflow-x:auto}
figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.4em}svg{max-width:100%;height:auto}
.note{background:#fff4d6;border-left:4px solid #e69f00;padding:.5em 1em}";

/// The page.
pub fn render(page: &Page) -> String {
    let report = page.report;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>xferlab: {name}</title><style>{STYLE}</style></head><body>\n<h1>{name}</h1>\n<p>{trials} trials: {finished} finished, {failed} failed, {missing} not run.</p>\n",
        name = escape(&report.name),
        trials = report.trials,
        finished = report.finished,
        failed = report.failed,
        missing = report.missing,
    );
    if !page.overrides.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"note\">This sweep ran with overrides of its spec file: <code>{}</code>. The spec below is the result.</p>",
            escape(
                &page
                    .overrides
                    .iter()
                    .map(|o| format!("--set {o}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        );
    }
    out += "<h2>Results</h2>\n";
    results_table(&mut out, report);
    let metric = report.metric.name();
    let _ = writeln!(
        out,
        "<p>{metric}: mean over seeds, sample standard deviation and 95% interval (Student's t). Gain: {metric} minus scratch's with the same seed and data, over the seeds both finished; <b>*</b> marks a 95% interval that excludes zero.</p>"
    );
    if !report.best.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Best strategy and depth</h2>\n<table><tr><th>setting</th><th>best</th><th>{metric}</th><th>tied (95% intervals overlap)</th></tr>"
        );
        for best in &report.best {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.4}</td><td>{}</td></tr>",
                escape(&setting(&report.axes, &best.axes)),
                escape(&best.best),
                best.value.mean,
                escape(&best.tied.join(", "))
            );
        }
        out += "</table>\n";
        confusion_matrices(&mut out, report, page.records);
    }
    out += "<h2>Figures</h2>\n";
    for figure in page.figures {
        // The SVG's own XML declaration is not allowed inside HTML.
        let svg = figure.svg.trim_start_matches(|c| c != '<');
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => &rest[rest.find("?>").map_or(0, |i| i + 2)..],
            None => svg,
        };
        let _ = writeln!(
            out,
            "<figure id=\"{}\"><figcaption>{}</figcaption>{}</figure>",
            figure.name,
            escape(&figure.title),
            svg.trim()
        );
    }
    failed_trials(&mut out, page.records);
    run_facts(&mut out, page);
    let _ = writeln!(
        out,
        "<h2>Spec</h2>\n<pre>{}</pre>\n</body></html>",
        escape(page.spec_yaml)
    );
    out
}

fn results_table(out: &mut String, report: &Report) {
    out.push_str("<table id=\"results\"><tr><th>strategy</th><th>t</th><th>f</th>");
    for axis in &report.axes {
        let _ = write!(out, "<th>{}</th>", escape(short(axis)));
    }
    let _ = writeln!(
        out,
        "<th>n</th><th>failed</th><th>not run</th><th>{}</th><th>± std</th><th>95% CI</th><th>gain vs scratch</th><th>95% CI</th></tr>",
        report.metric.name()
    );
    let number = |v: Option<f64>, format: fn(f64) -> String| v.map_or("-".into(), format);
    for row in &report.rows {
        let class = if row.failed > 0 {
            " class=\"failed\""
        } else {
            ""
        };
        let (t, f) = row.depth_cells();
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td class=\"n\">{t}</td><td class=\"n\">{f}</td>",
            escape(row.strategy.name()),
        );
        for value in &row.axes {
            let _ = write!(out, "<td class=\"n\">{}</td>", escape(&super::cell(value)));
        }
        let mark = if row.gain_significant { "*" } else { "" };
        let _ = writeln!(
            out,
            "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}{mark}</td><td class=\"n\">{}</td></tr>",
            row.count,
            row.failed,
            row.missing,
            number(row.value.map(|a| a.mean), |v| format!("{v:.4}")),
            number(row.value.and_then(|a| a.std), |v| format!("{v:.4}")),
            number(row.value.and_then(|a| a.ci95), |v| format!("±{v:.4}")),
            number(row.gain.map(|g| g.mean), |v| format!("{v:+.4}")),
            number(row.gain.and_then(|g| g.ci95), |v| format!("±{v:.4}")),
        );
    }
    out.push_str("</table>\n");
}

/// The confusion matrix of each setting's best trial: rows are true classes, columns
/// predicted ones, counts of eval examples; the diagonal is shaded.
fn confusion_matrices(out: &mut String, report: &Report, records: &[TrialRecord]) {
    let matrices: Vec<_> = (report.best.iter())
        .filter_map(|best| {
            let record = records
                .iter()
                .find(|r| Some(&r.id) == best.trial.as_ref())?;
            let metrics = record.eval.as_ref()?.metrics.as_ref()?;
            Some((best, record, metrics))
        })
        .collect();
    if matrices.is_empty() {
        return;
    }
    out.push_str("<h2>Confusion matrices of the best trials</h2>\n<p>Rows: true class; columns: predicted class (the original class labels of the target); counts of eval examples.</p>\n");
    for (best, record, metrics) in matrices {
        let classes = metrics.confusion.len();
        let labels: Vec<String> = match &record.config.target.train.classes {
            Some(given) if given.len() == classes => given.iter().map(u32::to_string).collect(),
            _ => (0..classes).map(|c| c.to_string()).collect(),
        };
        let _ = write!(
            out,
            "<table class=\"confusion\"><caption>{}: {} seed {} (trial {}), accuracy {:.4}, macro-F1 {:.4}, ECE {:.4}</caption><tr><th>true \\ predicted</th>",
            escape(&setting(&report.axes, &best.axes)),
            escape(&best.best),
            record.config.seed,
            record.id,
            record.eval.as_ref().map_or(0.0, |e| e.accuracy),
            metrics.macro_f1,
            metrics.ece,
        );
        for label in &labels {
            let _ = write!(out, "<th>{}</th>", escape(label));
        }
        out.push_str("</tr>\n");
        for (t, row) in metrics.confusion.iter().enumerate() {
            let _ = write!(out, "<tr><th>{}</th>", escape(&labels[t]));
            for (p, count) in row.iter().enumerate() {
                let shade = if t == p {
                    " style=\"background:#e3f1e3\""
                } else {
                    ""
                };
                let _ = write!(out, "<td class=\"n\"{shade}>{count}</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
}

fn failed_trials(out: &mut String, records: &[TrialRecord]) {
    let failed: Vec<&TrialRecord> = records
        .iter()
        .filter(|r| r.status != Status::Finished)
        .collect();
    let _ = writeln!(
        out,
        "<h2>Failed and interrupted trials ({})</h2>",
        failed.len()
    );
    if failed.is_empty() {
        out.push_str("<p>None.</p>\n");
        return;
    }
    out.push_str("<table id=\"failed\"><tr><th>trial</th><th>strategy</th><th>t</th><th>f</th><th>axes</th><th>status</th><th>reason</th></tr>\n");
    for r in failed {
        let axes: Vec<String> = r.axes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "<tr class=\"failed\"><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            r.id,
            escape(&r.strategies.join("=")),
            r.transfer_depth,
            r.freeze_depth,
            escape(&axes.join(" ")),
            r.status,
            escape(r.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>\n");
}

fn run_facts(out: &mut String, page: &Page) {
    let records = page.records;
    let set = |f: fn(&TrialRecord) -> String| {
        records
            .iter()
            .map(f)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let busy: f64 = records
        .iter()
        .map(|r| r.timings.setup_seconds + r.timings.train_seconds + r.timings.eval_seconds)
        .sum();
    let train: f64 = records.iter().map(|r| r.timings.train_seconds).sum();
    let mut facts = vec![
        ("devices", set(|r| r.device.clone())),
        ("xferlab versions", set(|r| r.xferlab_version.clone())),
        (
            "time in trials",
            format!("{busy:.1} s (training {train:.1} s)"),
        ),
        (
            "source models",
            set(|r| r.source.clone().unwrap_or_else(|| "none".into())),
        ),
    ];
    if let Some(identity) = page.identity {
        facts.push(("sweep id", identity.id.clone()));
        if let Some(commit) = &identity.git_commit {
            facts.push(("git commit of the spec", commit.clone()));
        }
    }
    out.push_str("<h2>Run facts</h2>\n<table id=\"facts\">\n");
    for (name, value) in facts {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    }
    out.push_str("</table>\n");
}
