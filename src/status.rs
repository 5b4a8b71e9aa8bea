//! Where a sweep stands, from the run store alone (so it answers for a local `run`, a Slurm
//! array, or both at once): each trial finished, failed, interrupted, running (a process
//! holds its lock, on any machine sharing the store) or not started.

use std::fmt::Write;

use crate::error::Result;
use crate::plan::Plan;
use crate::store::{RunStore, Status};

/// Where one trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Has a finished record.
    Finished,
    /// Its record says it failed (and no process is running it again).
    Failed,
    /// Its record says it was stopped (and no process is running it again).
    Interrupted,
    /// A process holds its lock now.
    Running,
    /// No record, no process.
    NotStarted,
}

impl State {
    /// Every state, in the order `render` lists them.
    pub const ALL: [State; 5] = [
        State::Finished,
        State::Failed,
        State::Interrupted,
        State::Running,
        State::NotStarted,
    ];

    fn name(self) -> &'static str {
        match self {
            State::Finished => "finished",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
            State::Running => "running",
            State::NotStarted => "not started",
        }
    }
}

/// Each of the plan's trials' state, in plan order.
pub fn of(store: &RunStore, plan: &Plan) -> Result<Vec<State>> {
    let mut states = Vec::with_capacity(plan.trials.len());
    for trial in &plan.trials {
        let status = store.record(&trial.id)?.map(|r| r.status);
        states.push(match status {
            Some(Status::Finished) => State::Finished,
            _ if store.is_running(&trial.id)? => State::Running,
            Some(Status::Failed) => State::Failed,
            Some(Status::Interrupted) => State::Interrupted,
            None => State::NotStarted,
        });
    }
    Ok(states)
}

/// The counts per state, with the trials that need a look (failed, interrupted, running)
/// named by plan index and id.
pub fn render(store: &RunStore, plan: &Plan, states: &[State]) -> String {
    const NAMED: usize = 6;
    let mut out = format!(
        "sweep `{}` ({}): {} trials\n",
        plan.name,
        store.root().display(),
        plan.trials.len()
    );
    for state in State::ALL {
        let trials: Vec<_> = (plan.trials.iter().enumerate())
            .zip(states)
            .filter(|(_, s)| **s == state)
            .map(|((i, t), _)| format!("#{i} {}", t.id))
            .collect();
        let _ = write!(out, "  {:<12} {:>5}", state.name(), trials.len());
        if matches!(state, State::Failed | State::Interrupted | State::Running) {
            let shown = trials.iter().take(NAMED).cloned().collect::<Vec<_>>();
            let more = trials.len().saturating_sub(NAMED);
            let _ = write!(out, "   {}", shown.join(", "));
            if more > 0 {
                let _ = write!(out, ", and {more} more");
            }
        }
        out = out.trim_end().to_string();
        out.push('\n');
    }
    out
}
