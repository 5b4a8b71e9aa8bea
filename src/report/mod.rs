//! Reports of a sweep: its trials grouped and summarised (`group`, with the statistics in
//! `stats`), laid out as text (`render`), drawn as figures (`plots`) and gathered on one
//! HTML page (`html`), written to files by `publish`.

mod group;
pub mod html;
pub mod plots;
mod publish;
mod render;
mod stats;

pub use group::{Best, Correction, Metric, Report, Row, baseline_of, build, settings};
pub use publish::publish;
pub(crate) use render::setting;
pub use render::{Format, check_comparison, compare, render};
pub use stats::Summary;

use render::{cell, short};
