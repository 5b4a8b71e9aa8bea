//! Figures of a sweep, drawn in Rust (plotters) as SVG, and as PNG through resvg with an
//! embedded font (so a machine without fonts draws the same picture):
//!
//! - accuracy against depth for each strategy family, one panel per setting (target size),
//!   with 95% intervals: the figure of Yosinski et al. 2014 for this sweep;
//! - gain over scratch against target size (log axis), each strategy at its best depth;
//! - training loss against step per strategy (at its best depth), mean with a ±std band.
//!
//! Colours are Okabe and Ito's, safe for colour-blind readers; every series also has its own
//! marker or dash pattern, so a greyscale print still tells them apart.

use std::collections::BTreeMap;
use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde_json::Value;

use super::{Report, Row, Summary, setting, short};
use crate::plan::Plan;
use crate::store::{Status, TrialRecord};

/// One figure.
pub struct Figure {
    /// File stem: `accuracy-vs-depth`, `gain-vs-size`, `training-curves`.
    pub name: &'static str,
    /// What it shows, for captions.
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
];

const PANEL: (u32, u32) = (460, 360);
const FONT: &str = "sans-serif";

/// A line: (x, y, half-width of its interval or band).
struct Series {
    name: String,
    /// Its strategy, which fixes its colour and marker in every figure.
    strategy: String,
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

/// Colour and marker index of a strategy: the same in every figure.
fn style_index(strategy: &str) -> usize {
    const ORDER: [&str; 6] = [
        "scratch",
        "transfer",
        "partial_freeze",
        "finetune",
        "prefix_frozen",
        "prefix_finetune",
    ];
    ORDER
        .iter()
        .position(|s| *s == strategy)
        .unwrap_or(ORDER.len())
}

/// How an axis is drawn.
struct Axis<'a> {
    desc: &'a str,
    /// At most this many labels.
    labels: usize,
}

/// The figures a report can show (those its sweep has data for).
pub fn figures(
    report: &Report,
    plan: &Plan,
    records: &[TrialRecord],
) -> Result<Vec<Figure>, String> {
    let mut figures = Vec::new();
    let depth = depth_panels(report, plan.blocks);
    if depth.iter().any(|p| !p.series.is_empty()) {
        figures.push(Figure {
            name: "accuracy-vs-depth",
            title: "Eval accuracy against depth (mean and 95% interval over seeds)".into(),
            svg: draw(
                &depth,
                Axis {
                    desc: "depth (blocks transferred or frozen)",
                    labels: plan.blocks + 1,
                },
                "eval accuracy (fraction correct)",
                false,
                SeriesLabelPosition::LowerRight,
            )?,
        });
    }
    if let Some(gain) = gain_panel(report) {
        figures.push(Figure {
            name: "gain-vs-size",
            title: "Gain over scratch against target size (paired by seed; 95% interval)".into(),
            svg: draw(
                &[gain],
                Axis {
                    desc: "examples per class (log scale)",
                    labels: 12,
                },
                "gain over scratch (accuracy, fraction)",
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
            svg: draw(
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

/// Settings of the axes, in report order, each with its rows (scratch's null axes match all).
fn settings(report: &Report) -> Vec<(Vec<Value>, Vec<&Row>)> {
    let mut out: Vec<(Vec<Value>, Vec<&Row>)> = Vec::new();
    for row in report.rows.iter().filter(|r| r.strategy != "scratch") {
        if !out.iter().any(|(axes, _)| *axes == row.axes) {
            out.push((row.axes.clone(), Vec::new()));
        }
    }
    if out.is_empty() {
        out.push((
            report
                .rows
                .first()
                .map(|r| r.axes.clone())
                .unwrap_or_default(),
            Vec::new(),
        ));
    }
    for (axes, rows) in &mut out {
        rows.extend(report.rows.iter().filter(|r| {
            r.axes
                .iter()
                .zip(axes.iter())
                .all(|(a, b)| a == b || (r.strategy == "scratch" && a.is_null()))
        }));
    }
    out
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
                    "partial_freeze",
                    (|r: &Row| r.freeze_depth) as fn(&Row) -> usize,
                ),
                ("prefix_frozen", |r: &Row| r.transfer_depth),
                ("prefix_finetune", |r: &Row| r.transfer_depth),
            ] {
                let mut points: Vec<_> = rows
                    .iter()
                    .filter(|r| r.strategy == family)
                    .filter_map(|r| point(x_of(r) as f64, r.accuracy))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                if !points.is_empty() {
                    series.push(Series {
                        name: family.into(),
                        strategy: family.into(),
                        points,
                        dashed: false,
                        band: false,
                    });
                }
            }
            // ...the others are reference levels across the depths.
            for reference in ["scratch", "transfer", "finetune"] {
                if let Some(s) = rows
                    .iter()
                    .find(|r| r.strategy == reference)
                    .and_then(|r| r.accuracy)
                {
                    series.push(Series {
                        name: format!("{reference} ({:.3})", s.mean),
                        strategy: reference.into(),
                        points: vec![(0.0, s.mean, None), (blocks as f64, s.mean, None)],
                        dashed: true,
                        band: false,
                    });
                }
            }
            Panel {
                title: setting(&report.axes, &axes),
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
    let mut best: BTreeMap<&str, BTreeMap<u64, &Row>> = BTreeMap::new();
    for row in report.rows.iter().filter(|r| r.gain.is_some()) {
        let Some(size) = row.axes[at].as_u64() else {
            continue;
        };
        let slot = best
            .entry(&row.strategy)
            .or_default()
            .entry(size)
            .or_insert(row);
        if row.accuracy.map(|a| a.mean) > slot.accuracy.map(|a| a.mean) {
            *slot = row;
        }
    }
    let series: Vec<Series> = best
        .into_iter()
        .map(|(strategy, by_size)| Series {
            name: format!("{strategy} (best depth)"),
            strategy: strategy.into(),
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
            for row in rows.iter().filter(|r| r.accuracy.is_some()) {
                let slot = best.entry(&row.strategy).or_insert(row);
                if row.accuracy.map(|a| a.mean) > slot.accuracy.map(|a| a.mean) {
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
                            strategy: row.strategy.clone(),
                            points,
                            dashed: false,
                            band: true,
                        })
                    })
                    .collect();
            Panel {
                title: setting(&report.axes, &axes),
                series,
            }
        })
        .collect()
}

/// Draws panels side by side, sharing the y range.
fn draw(
    panels: &[Panel],
    x_axis: Axis,
    y_desc: &str,
    log_x: bool,
    legend: SeriesLabelPosition,
) -> Result<String, String> {
    let values = || {
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.points)
    };
    let range = |low: f64, high: f64, pad: f64| {
        let span = (high - low).max(1e-6);
        (low - span * pad)..(high + span * pad)
    };
    let (x_low, x_high) = values().fold((f64::MAX, f64::MIN), |(l, h), p| (l.min(p.0), h.max(p.0)));
    let (y_low, y_high) = values().fold((f64::MAX, f64::MIN), |(l, h), p| {
        let e = p.2.unwrap_or(0.0);
        (l.min(p.1 - e), h.max(p.1 + e))
    });
    let mut y = range(y_low, y_high, 0.08);
    if y_desc.starts_with("eval accuracy") {
        // An interval may reach past what an accuracy can be; the axis does not.
        y = y.start.max(0.0)..y.end.min(1.0);
    }
    if y_desc.contains("gain") {
        // Zero, the line of no gain, is always in view.
        y = y.start.min(-0.01)..y.end.max(0.01);
    }
    let mut svg = String::new();
    {
        let size = (PANEL.0 * panels.len().max(1) as u32, PANEL.1);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let place = Place {
                area,
                panel,
                x_axis: &x_axis,
                y_desc,
                legend: legend.clone(),
            };
            if log_x {
                let x = (x_low * 0.8)..(x_high * 1.25);
                draw_panel(place, x.log_scale(), y.clone())?;
            } else {
                draw_panel(place, range(x_low, x_high, 0.06), y.clone())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A tick label: integers plainly, and on a log axis only 1, 2 and 5 times a power of ten.
fn tick(value: f64, log: bool) -> String {
    if log {
        let mantissa = value / 10f64.powf(value.log10().floor());
        if ![1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
            return String::new();
        }
    }
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// Where and how a panel is drawn.
struct Place<'a, 'b> {
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    panel: &'a Panel,
    x_axis: &'a Axis<'a>,
    y_desc: &'a str,
    legend: SeriesLabelPosition,
}

fn draw_panel<X>(place: Place, x: X, y: Range<f64>) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let Place {
        area,
        panel,
        x_axis,
        y_desc,
        legend,
    } = place;
    let error = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(error)?;
    let log = x_axis.desc.contains("log");
    chart
        .configure_mesh()
        .x_desc(x_axis.desc)
        .y_desc(y_desc)
        .x_labels(x_axis.labels)
        .x_label_formatter(&|v| tick(*v, log))
        // Rounded first, so a tick a hair below zero does not show as -0.00.
        .y_label_formatter(&|v| format!("{:.2}", (v * 100.0).round() / 100.0 + 0.0))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(error)?;
    for series in &panel.series {
        let i = style_index(&series.strategy);
        let colour = COLOURS[i % COLOURS.len()];
        let style = ShapeStyle::from(colour).stroke_width(2);
        let line: Vec<(f64, f64)> = series.points.iter().map(|p| (p.0, p.1)).collect();
        if series.band {
            let mut outline: Vec<(f64, f64)> = series
                .points
                .iter()
                .map(|p| (p.0, p.1 + p.2.unwrap_or(0.0)))
                .collect();
            outline.extend(
                series
                    .points
                    .iter()
                    .rev()
                    .map(|p| (p.0, p.1 - p.2.unwrap_or(0.0))),
            );
            chart
                .draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.18))))
                .map_err(error)?;
        }
        let drawn = if series.dashed {
            chart.draw_series(DashedLineSeries::new(line, 6 + 4 * i as u32, 5, style))
        } else {
            chart.draw_series(LineSeries::new(line, style))
        }
        .map_err(error)?;
        drawn.label(&series.name).legend(move |(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 22, y)],
                ShapeStyle::from(colour).stroke_width(2),
            )
        });
        if series.dashed || series.band {
            continue;
        }
        chart
            .draw_series(series.points.iter().filter_map(|&(x, y, e)| {
                e.map(|e| ErrorBar::new_vertical(x, y - e, y, y + e, style, 8))
            }))
            .map_err(error)?;
        let filled = style.filled();
        match i % 3 {
            0 => chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|&(x, y, _)| Circle::new((x, y), 4, filled)),
            ),
            1 => chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|&(x, y, _)| TriangleMarker::new((x, y), 5, filled)),
            ),
            _ => chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|&(x, y, _)| Cross::new((x, y), 5, style)),
            ),
        }
        .map_err(error)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(error)?;
    Ok(())
}

/// Renders an SVG figure to PNG at twice its size, with the embedded font.
pub fn png(svg: &str) -> Result<Vec<u8>, String> {
    let mut fonts = resvg::usvg::fontdb::Database::new();
    fonts.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
    let family = fonts
        .faces()
        .next()
        .and_then(|f| f.families.first())
        .map(|(name, _)| name.clone())
        .ok_or("the embedded font did not load")?;
    fonts.set_sans_serif_family(family);
    let options = resvg::usvg::Options {
        fontdb: std::sync::Arc::new(fonts),
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| e.to_string())?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(2.0)
        .ok_or("figure too large")?;
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("figure has no area")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(2.0, 2.0),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
}
