//! The background sink of a running sweep: records are queued as trials end and uploaded
//! on a thread of their own, so training never waits on the network; a server that is down
//! is left alone for a while and costs the sweep nothing but a message at the end.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Outcome, Target, Uploader};
use crate::plan::Plan;
use crate::store::{RunStore, SweepIdentity, TrialRecord};

/// How long a sink leaves a server alone after it stopped answering.
const RETRY_DOWN_AFTER: Duration = Duration::from_secs(30);

/// What the upload thread is asked to do.
enum Job {
    Trial(Box<TrialRecord>),
    /// The sweep's end; true when this process was interrupted.
    End(bool),
}

/// Uploads a running sweep's records on a background thread.
pub struct Sink {
    jobs: mpsc::Sender<Job>,
    worker: JoinHandle<Outcome>,
}

impl Sink {
    /// Starts the thread; it reaches the server in the background.
    pub fn start(target: Target, store: RunStore, identity: SweepIdentity, plan: Plan) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker = std::thread::spawn(move || {
            let mut outcome = Outcome::default();
            let mut uploader: Option<Uploader> = None;
            let mut down_since: Option<Instant> = None;
            for job in queue {
                let retry = down_since.is_none_or(|t| t.elapsed() >= RETRY_DOWN_AFTER);
                if retry && uploader.is_none() {
                    match Uploader::open(&target, &store, &identity, &plan) {
                        Ok(u) => {
                            outcome.place = Some(u.describe());
                            uploader = Some(u);
                            down_since = None;
                        }
                        Err(e) => {
                            tracing::warn!("MLflow: {e}");
                            outcome.problem(&e);
                            down_since = Some(Instant::now());
                        }
                    }
                }
                let ready = uploader.as_ref().filter(|_| retry);
                match job {
                    Job::Trial(record) => match ready.map(|u| u.trial(&record)) {
                        Some(Ok(uploaded)) => {
                            down_since = None;
                            if uploaded {
                                outcome.uploaded += 1;
                            } else {
                                outcome.present += 1;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!("MLflow: {e}");
                            if e.unreachable() {
                                down_since = Some(Instant::now());
                            }
                            outcome.problem(&e);
                            outcome.missed.push(record.id.clone());
                        }
                        None => outcome.missed.push(record.id.clone()),
                    },
                    Job::End(interrupted) => {
                        if let Some(u) = ready {
                            match u.end(&plan, interrupted) {
                                Ok(()) => outcome.ended = true,
                                Err(e) => outcome.problem(&e),
                            }
                        }
                    }
                }
            }
            outcome
        });
        Sink { jobs, worker }
    }

    /// Queues a finished, failed or interrupted trial's record.
    pub fn trial(&self, record: &TrialRecord) {
        // A worker that ended early has already counted what it could not do.
        let _ = self.jobs.send(Job::Trial(Box::new(record.clone())));
    }

    /// Queues the sweep's end (`interrupted` when this process was stopped) and waits for
    /// every upload to be done or given up.
    pub fn finish(self, interrupted: bool) -> Outcome {
        let _ = self.jobs.send(Job::End(interrupted));
        drop(self.jobs);
        self.worker.join().unwrap_or_else(|_| Outcome {
            problems: vec!["the upload thread panicked".into()],
            ..Outcome::default()
        })
    }
}
