//! What a sink or a sync did, and the lines that tell the user.

use std::path::Path;

use super::mlflow;
use super::{Target, UploadError};

/// What a sink or a sync did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Server, experiment and parent run, once reached.
    pub place: Option<String>,
    /// Trials uploaded now.
    pub uploaded: usize,
    /// Trials that were there already.
    pub present: usize,
    /// Ids of trials not uploaded.
    pub missed: Vec<String>,
    /// Why: the first failure of each kind seen.
    pub problems: Vec<String>,
    /// Whether the parent run was given its final status and report.
    pub ended: bool,
}

impl Outcome {
    /// Notes a failure, once per distinct message.
    pub(super) fn problem(&mut self, error: &UploadError) {
        let text = error.to_string();
        if !self.problems.contains(&text) {
            self.problems.push(text);
        }
    }

    /// Lines for the user: where things went, and what to do about what did not.
    pub fn describe(&self, target: &Target, run_folder: &Path) -> String {
        let uri = mlflow::redact(&target.uri);
        let mut text = match &self.place {
            Some(place) => format!(
                "MLflow: {} trial(s) uploaded, {} already there ({place})\n",
                self.uploaded, self.present
            ),
            None => format!("MLflow: nothing uploaded to {uri}\n"),
        };
        const SHOWN: usize = 3;
        for problem in self.problems.iter().take(SHOWN) {
            text += &format!("  {problem}\n");
        }
        if self.problems.len() > SHOWN {
            text += &format!("  and {} more problem(s)\n", self.problems.len() - SHOWN);
        }
        if !self.missed.is_empty() || !self.ended {
            text += &format!(
                "MLflow: {} trial(s) not uploaded{}; they are safe in the run store. Upload them with:\n  xferlab sync {}\n",
                self.missed.len(),
                if self.ended {
                    ""
                } else {
                    " and the sweep not marked as ended"
                },
                crate::error::shown(run_folder)
            );
        }
        text
    }
}
