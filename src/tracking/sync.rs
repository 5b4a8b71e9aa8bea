//! `xferlab sync`: uploads what the server does not have yet, from the run store.

use super::{Outcome, Target, Uploader};
use crate::error::Result;
use crate::store::{RunStore, SweepIdentity};

/// Uploads everything the server does not have yet: `xferlab sync`. Safe to repeat.
pub fn sync(target: &Target, store: &RunStore, say: &dyn Fn(&str)) -> Result<Outcome> {
    let plan = store.plan()?;
    let records = store.records(&plan)?;
    // A store made before sweeps had identities gets one now.
    let identity = store.identity(|| SweepIdentity::new(None))?;
    let mut outcome = Outcome::default();
    let uploader = match Uploader::open(target, store, &identity, &plan) {
        Ok(u) => u,
        Err(e) => {
            outcome.problem(&e);
            outcome.missed = records.iter().map(|r| r.id.clone()).collect();
            return Ok(outcome);
        }
    };
    outcome.place = Some(uploader.describe());
    for (i, record) in records.iter().enumerate() {
        match uploader.trial(record) {
            Ok(true) => {
                outcome.uploaded += 1;
                say(&format!("uploaded trial {}", record.id));
            }
            Ok(false) => outcome.present += 1,
            Err(e) => {
                outcome.problem(&e);
                outcome.missed.push(record.id.clone());
                if e.unreachable() {
                    outcome
                        .missed
                        .extend(records[i + 1..].iter().map(|r| r.id.clone()));
                    return Ok(outcome);
                }
            }
        }
    }
    match uploader.end(&plan, false) {
        Ok(()) => outcome.ended = true,
        Err(e) => outcome.problem(&e),
    }
    Ok(outcome)
}
