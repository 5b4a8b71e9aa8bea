//! A report's files: its figures as SVG and PNG in a folder, and its HTML page.

use std::path::Path;

use super::{Report, html, plots};
use crate::error::Result;
use crate::plan::Plan;
use crate::store::{RunStore, TrialRecord, write_atomic};

/// Writes the figures into `plots` and the page to `html`, each when given; returns how many
/// figures were drawn (none when neither is asked for).
pub fn publish(
    store: &RunStore,
    plan: &Plan,
    records: &[TrialRecord],
    report: &Report,
    plots: Option<&Path>,
    html: Option<&Path>,
) -> Result<usize> {
    if plots.is_none() && html.is_none() {
        return Ok(0);
    }
    let figures = plots::figures(report, plan, records)?;
    if let Some(dir) = plots {
        for figure in &figures {
            let svg = dir.join(format!("{}.svg", figure.name));
            write_atomic(&svg, figure.svg.as_bytes())?;
            write_atomic(&dir.join(format!("{}.png", figure.name)), &figure.png()?)?;
        }
    }
    if let Some(file) = html {
        let identity = store.saved_identity()?;
        let page = html::Page {
            report,
            records,
            figures: &figures,
            spec_yaml: &store.spec_yaml()?,
            overrides: &store.overrides()?,
            identity: identity.as_ref(),
        };
        write_atomic(file, html::render(&page).as_bytes())?;
    }
    Ok(figures.len())
}
