//! Figures of a sweep: which lines each one shows, from the report's rows and the trials'
//! training curves. `draw` turns them into SVG (plotters) and PNG (resvg):
//!
//! - the metric (accuracy by default) against depth for each strategy family, one panel per setting (target size),
//!   with 95% intervals: the figure of Yosinski et al. 2014 for this sweep;
//! - gain over scratch against target size (log axis), each strategy at its best depth;
//! - training loss against step per strategy (at its best depth), mean with a ±std band.
//!
//! A panel per setting of the axes; the baseline (scratch) is in every panel, by the
//! report's one rule for where a baseline belongs.

mod draw;

use std::collections::BTreeMap;

use plotters::chart::SeriesLabelPosition;
use serde_json::Value;

use super::{Metric, Report, Row, Summary, setting, short};
use crate::error::Result;
use crate::plan::{Plan, StrategyLabel};
use crate::spec::Strategy;
use crate::store::{Status, TrialRecord};

/// One figure.
pub struct Figure {
    /// File stem: `accuracy-vs-depth` (`macro_f1-`, `ece-`), `gain-vs-size`, `training-curves`.
    pub name: &'static str,
    /// What it shows, for captions.
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

impl Figure {
    /// The figure as PNG at twice its size, drawn with the embedded font.
    pub fn png(&self) -> Result<Vec<u8>> {
        draw::png(self.name, &self.svg)
    }
}

/// A line: (x, y, half-width of its interval or band).
struct Series {
    name: String,
    /// Its strategy, which fixes its colour and marker in every figure.
    strategy: StrategyLabel,
    points: Vec<(f64, f64, Option<f64>)>,
    /// Drawn dashed, without markers (a reference level).
    dashed: bool,
    /// The half-widths are a shaded band rather than error bars.
    band: bool,
}

struct Panel {
    title: String,
    series: Vec<Series>,
}

/// How an axis is drawn.
struct Axis<'a> {
    desc: &'a str,
    /// At most this many labels.
    labels: usize,
}

/// The figures a report can show (those its sweep has data for).
pub fn figures(report: &Report, plan: &Plan, records: &[TrialRecord]) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let depth = depth_panels(report, plan.blocks);
    let (name, y) = match report.metric {
        Metric::Accuracy => ("accuracy-vs-depth", "eval accuracy (fraction correct)"),
        Metric::MacroF1 => ("macro_f1-vs-depth", "eval macro-F1"),
        Metric::Ece => ("ece-vs-depth", "eval ECE (lower is better)"),
    };
    if depth.iter().any(|p| !p.series.is_empty()) {
        figures.push(Figure {
            name,
            title: format!(
                "Eval {} against depth (mean and 95% interval over seeds)",
                report.metric.name()
            ),
            svg: draw::draw(
                name,
                &depth,
                Axis {
                    desc: "depth (blocks transferred or frozen)",
                    labels: plan.blocks + 1,
                },
                y,
                false,
                SeriesLabelPosition::LowerRight,
            )?,
        });
    }
    if let Some(gain) = gain_panel(report) {
        figures.push(Figure {
            name: "gain-vs-size",
            title: "Gain over scratch against target size (paired by seed; 95% interval)".into(),
            svg: draw::draw(
                "gain-vs-size",
                &[gain],
                Axis {
                    desc: "examples per class (log scale)",
                    labels: 12,
                },
                &format!("gain over scratch ({})", report.metric.name()),
                true,
                SeriesLabelPosition::UpperRight,
            )?,
        });
    }
    let curves = curve_panels(report, plan, records);
    if curves.iter().any(|p| !p.series.is_empty()) {
        figures.push(Figure {
            name: "training-curves",
            title: "Training loss against step (mean ± std over seeds)".into(),
            svg: draw::draw(
                "training-curves",
                &curves,
                Axis {
                    desc: "optimizer step",
                    labels: 8,
                },
                "training loss (cross-entropy, nats)",
                false,
                SeriesLabelPosition::UpperRight,
            )?,
        });
    }
    Ok(figures)
}

/// Settings of the axes, in report order, each with the rows that belong at it.
fn settings(report: &Report) -> Vec<(&[Value], Vec<&Row>)> {
    super::settings(&report.rows)
        .into_iter()
        .map(|axes| {
            let rows = report.rows.iter().filter(|r| r.belongs_at(axes)).collect();
            (axes, rows)
        })
        .collect()
}

fn point(x: f64, summary: Option<Summary>) -> Option<(f64, f64, Option<f64>)> {
    summary.map(|s| (x, s.mean, s.ci95))
}

fn depth_panels(report: &Report, blocks: usize) -> Vec<Panel> {
    settings(report)
        .into_iter()
        .map(|(axes, rows)| {
            let mut series = Vec::new();
            // Families that vary a depth are lines over it...
            for (family, x_of) in [
                (
                    Strategy::PartialFreeze,
                    (|r: &Row| r.freeze_depth) as fn(&Row) -> usize,
                ),
                (Strategy::PrefixFrozen, |r: &Row| r.transfer_depth),
                (Strategy::PrefixFinetune, |r: &Row| r.transfer_depth),
            ] {
                let family = StrategyLabel::Named(family);
                let mut points: Vec<_> = rows
                    .iter()
                    .filter(|r| r.strategy == family)
                    .filter_map(|r| point(x_of(r) as f64, r.value))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                if !points.is_empty() {
                    series.push(Series {
                        name: family.to_string(),
                        strategy: family,
                        points,
                        dashed: false,
                        band: false,
                    });
                }
            }
            // ...the others are reference levels across the depths.
            for reference in [Strategy::Scratch, Strategy::Transfer, Strategy::Finetune] {
                let reference = StrategyLabel::Named(reference);
                if let Some(s) = rows
                    .iter()
                    .find(|r| r.strategy == reference)
                    .and_then(|r| r.value)
                {
                    series.push(Series {
                        name: format!("{reference} ({:.3})", s.mean),
                        strategy: reference,
                        points: vec![(0.0, s.mean, None), (blocks as f64, s.mean, None)],
                        dashed: true,
                        band: false,
                    });
                }
            }
            Panel {
                title: setting(&report.axes, axes),
                series,
            }
        })
        .collect()
}

/// The report axis that is the target size, when it is swept.
fn size_axis(report: &Report) -> Option<usize> {
    report
        .axes
        .iter()
        .position(|a| a == "target.train.per_class")
}

fn gain_panel(report: &Report) -> Option<Panel> {
    let at = size_axis(report)?;
    // By name, so the legend lists the strategies alphabetically.
    let mut best: BTreeMap<&str, (StrategyLabel, BTreeMap<u64, &Row>)> = BTreeMap::new();
    for row in report.rows.iter().filter(|r| r.gain.is_some()) {
        let Some(size) = row.axes[at].as_u64() else {
            continue;
        };
        let slot = best
            .entry(row.strategy.name())
            .or_insert_with(|| (row.strategy, BTreeMap::new()))
            .1
            .entry(size)
            .or_insert(row);
        if better(report.metric, row, slot) {
            *slot = row;
        }
    }
    let series: Vec<Series> = best
        .into_values()
        .map(|(strategy, by_size)| Series {
            name: format!("{strategy} (best depth)"),
            strategy,
            points: by_size
                .into_iter()
                .filter_map(|(size, row)| point(size as f64, row.gain))
                .collect(),
            dashed: false,
            band: false,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let sizes: std::collections::BTreeSet<u64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0 as u64))
        .collect();
    (sizes.len() >= 2).then(|| Panel {
        title: format!(
            "best depth of each strategy at each {}",
            short(&report.axes[at])
        ),
        series,
    })
}

/// Whether `row` has a better mean of `metric` than `than` (a row without one never has).
fn better(metric: Metric, row: &Row, than: &Row) -> bool {
    match (row.value, than.value) {
        (Some(a), Some(b)) => metric.order(a.mean, b.mean).is_gt(),
        (Some(_), None) => true,
        _ => false,
    }
}

fn curve_panels(report: &Report, plan: &Plan, records: &[TrialRecord]) -> Vec<Panel> {
    let by_id: BTreeMap<&str, &TrialRecord> = records
        .iter()
        .filter(|r| r.status == Status::Finished)
        .map(|r| (r.id.as_str(), r))
        .collect();
    settings(report)
        .into_iter()
        .map(|(axes, rows)| {
            // Each strategy at its best depth here.
            let mut best: BTreeMap<&str, &Row> = BTreeMap::new();
            for row in rows.iter().filter(|r| r.value.is_some()) {
                let slot = best.entry(row.strategy.name()).or_insert(row);
                if better(report.metric, row, slot) {
                    *slot = row;
                }
            }
            let series =
                best.into_values()
                    .filter_map(|row| {
                        let curves: Vec<&Vec<crate::train::CurvePoint>> =
                            plan.trials
                                .iter()
                                .filter(|t| {
                                    t.strategies.contains(&row.strategy)
                                        && t.config.transfer_depth == row.transfer_depth
                                        && t.config.freeze_depth == row.freeze_depth
                                        && report.axes.iter().zip(&row.axes).all(|(a, v)| {
                                            t.axes.get(a).unwrap_or(&Value::Null) == v
                                        })
                                })
                                .filter_map(|t| by_id.get(t.id.as_str()).map(|r| &r.curve))
                                .collect();
                        let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
                        for curve in curves {
                            for p in curve {
                                by_step.entry(p.step).or_default().push(p.loss);
                            }
                        }
                        let points: Vec<_> = by_step
                            .into_iter()
                            .filter_map(|(step, losses)| {
                                Summary::of(&losses).map(|s| (step as f64, s.mean, s.std))
                            })
                            .collect();
                        (!points.is_empty()).then(|| Series {
                            name: row.label(),
                            strategy: row.strategy,
                            points,
                            dashed: false,
                            band: true,
                        })
                    })
                    .collect();
            Panel {
                title: setting(&report.axes, axes),
                series,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_figure_that_cannot_be_rendered_is_a_figure_error_naming_it() {
        let figure = Figure {
            name: "gain-vs-size",
            title: String::new(),
            svg: "not an SVG document".into(),
        };
        let error = figure.png().unwrap_err();
        assert!(
            matches!(&error, Error::Figure { name, .. } if name == "gain-vs-size"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("cannot draw figure gain-vs-size: "),
            "{error}"
        );
    }
}
