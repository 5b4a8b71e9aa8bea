//! Strategy labels: what put a trial in the plan, a named strategy or a raw pair of depths.
//! They stay typed from the planner to the report and the tracking server, and are written
//! to `plan.json` and the trial records as the strategy's name or `raw`, the strings those
//! files have always held (so stores written before the labels were typed still load).

use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::spec::{Strategy, StrategyEntry};

/// What resolved to a trial: a named strategy, or a raw `{transfer_depth, freeze_depth}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyLabel {
    /// A named preset.
    Named(Strategy),
    /// A raw pair of depths from the spec.
    Raw,
}

impl StrategyLabel {
    /// The label of one entry of a spec's `strategies`.
    pub fn of(entry: &StrategyEntry) -> Self {
        match entry {
            StrategyEntry::Named(strategy) => StrategyLabel::Named(*strategy),
            StrategyEntry::Raw(_) => StrategyLabel::Raw,
        }
    }

    /// As written in files and tables: the strategy's name, or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            StrategyLabel::Named(strategy) => strategy.name(),
            StrategyLabel::Raw => "raw",
        }
    }
}

impl fmt::Display for StrategyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for StrategyLabel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StrategyLabel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name == StrategyLabel::Raw.name() {
            return Ok(StrategyLabel::Raw);
        }
        Strategy::deserialize(de::value::StrDeserializer::<D::Error>::new(&name))
            .map(StrategyLabel::Named)
    }
}

/// Labels, each once, in the order the spec names them: those that resolved to one trial
/// (equal trials are merged), or all of a spec's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StrategyLabels(Vec<StrategyLabel>);

impl StrategyLabels {
    /// Adds `label` unless it is there already.
    pub fn insert(&mut self, label: StrategyLabel) {
        if !self.0.contains(&label) {
            self.0.push(label);
        }
    }

    /// The names joined by `separator`: `transfer=partial_freeze` in tables, commas in tags.
    pub fn join(&self, separator: &str) -> String {
        let names: Vec<&str> = self.0.iter().map(|l| l.name()).collect();
        names.join(separator)
    }

    /// Puts the labels in the order they have in `order` (those not in it last).
    pub fn sort_as(&mut self, order: &StrategyLabels) {
        self.0
            .sort_by_key(|label| order.iter().position(|x| x == label).unwrap_or(usize::MAX));
    }
}

impl Deref for StrategyLabels {
    type Target = [StrategyLabel];

    fn deref(&self) -> &[StrategyLabel] {
        &self.0
    }
}

impl FromIterator<StrategyLabel> for StrategyLabels {
    fn from_iter<I: IntoIterator<Item = StrategyLabel>>(labels: I) -> Self {
        let mut out = StrategyLabels::default();
        for label in labels {
            out.insert(label);
        }
        out
    }
}

impl<'a> IntoIterator for &'a StrategyLabels {
    type Item = &'a StrategyLabel;
    type IntoIter = std::slice::Iter<'a, StrategyLabel>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_as_todays_strings() {
        let labels: StrategyLabels = [
            StrategyLabel::Named(Strategy::Scratch),
            StrategyLabel::Named(Strategy::PartialFreeze),
            StrategyLabel::Raw,
            StrategyLabel::Raw,
        ]
        .into_iter()
        .collect();
        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, r#"["scratch","partial_freeze","raw"]"#);
        assert_eq!(
            serde_json::from_str::<StrategyLabels>(&json).unwrap(),
            labels
        );
        assert_eq!(labels.join("="), "scratch=partial_freeze=raw");
    }

    #[test]
    fn every_name_a_record_can_hold_loads() {
        for name in Strategy::names().iter().chain(&["raw"]) {
            let label: StrategyLabel = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(label.name(), *name);
        }
        let error = serde_json::from_str::<StrategyLabel>(r#""scrath""#).unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `scrath`"),
            "{error}"
        );
    }
}
