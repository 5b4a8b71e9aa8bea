//! Drawing figures: panels side by side as SVG (plotters), and SVG as PNG through resvg
//! with an embedded font, so a machine without fonts draws the same picture.
//!
//! Colours are Okabe and Ito's, safe for colour-blind readers; every series also has its own
//! marker or dash pattern, so a greyscale print still tells them apart.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::{Axis, Panel};
use crate::error::{Error, Result};
use crate::plan::StrategyLabel;
use crate::spec::Strategy;

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

/// Colour and marker index of a strategy: the same in every figure (its place among the
/// named strategies; raw pairs after them).
fn style_index(strategy: StrategyLabel) -> usize {
    match strategy {
        StrategyLabel::Named(strategy) => strategy as usize,
        StrategyLabel::Raw => Strategy::names().len(),
    }
}

/// How a failure to draw figure `name` is reported: the drawing library's own words.
fn failed<E: std::fmt::Display>(name: &str) -> impl Fn(E) -> Error + Copy + '_ {
    move |reason| Error::Figure {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Draws figure `name`'s panels side by side, sharing the y range.
pub(super) fn draw(
    name: &str,
    panels: &[Panel],
    x_axis: Axis,
    y_desc: &str,
    log_x: bool,
    legend: SeriesLabelPosition,
) -> Result<String> {
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
    if y_desc.starts_with("eval ") {
        // An interval may reach past what a metric in [0, 1] can be; the axis does not.
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
        root.fill(&WHITE).map_err(failed(name))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let place = Place {
                figure: name,
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
        root.present().map_err(failed(name))?;
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
    /// The figure's name, for errors.
    figure: &'a str,
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    panel: &'a Panel,
    x_axis: &'a Axis<'a>,
    y_desc: &'a str,
    legend: SeriesLabelPosition,
}

fn draw_panel<X>(place: Place, x: X, y: Range<f64>) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let Place {
        figure,
        area,
        panel,
        x_axis,
        y_desc,
        legend,
    } = place;
    let error = failed::<DrawingAreaErrorKind<_>>(figure);
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
        let i = style_index(series.strategy);
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

/// Renders figure `name`'s SVG to PNG at twice its size, with the embedded font.
pub(super) fn png(name: &str, svg: &str) -> Result<Vec<u8>> {
    let mut fonts = resvg::usvg::fontdb::Database::new();
    fonts.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
    let family = fonts
        .faces()
        .next()
        .and_then(|f| f.families.first())
        .map(|(family, _)| family.clone())
        .ok_or_else(|| failed(name)("the embedded font did not load"))?;
    fonts.set_sans_serif_family(family);
    let options = resvg::usvg::Options {
        fontdb: std::sync::Arc::new(fonts),
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(failed(name))?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(2.0)
        .ok_or_else(|| failed(name)("figure too large"))?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| failed(name)("figure has no area"))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(2.0, 2.0),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(failed(name))
}
