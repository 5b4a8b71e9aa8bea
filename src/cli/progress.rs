//! A sweep's progress for people: a bar with ETA on a terminal, one line per trial otherwise.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use xferlab::runner::Event;
use xferlab::store::{Status, TrialRecord};

/// Draws a sweep's events on standard error.
#[derive(Default)]
pub struct Progress {
    bar: OnceLock<Option<ProgressBar>>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// Shows one event.
    pub fn show(&self, event: Event) {
        match event {
            Event::Planned {
                pending,
                already_done,
            } => {
                if already_done > 0 {
                    eprintln!("{already_done} trial(s) already finished in the run store: skipped");
                }
                self.total.store(pending as u64, Ordering::Relaxed);
                self.bar.get_or_init(|| {
                    std::io::stderr().is_terminal().then(|| {
                        let bar = ProgressBar::new(pending as u64);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{bar:30} {pos}/{len} trials  {elapsed} elapsed, ETA {eta}  {msg}",
                            )
                            .expect("a valid template"),
                        );
                        bar
                    })
                });
            }
            Event::Started(trial) => {
                if let Some(bar) = self.bar() {
                    bar.set_message(format!(
                        "{} t={} f={}",
                        trial.strategies.join("="),
                        trial.config.transfer_depth,
                        trial.config.freeze_depth
                    ));
                }
            }
            Event::Busy(trial) => {
                self.say(&format!(
                    "trial {} is being run by another process: skipped",
                    trial.id
                ));
                self.advance();
            }
            Event::Done(_) => {
                self.advance();
            }
            Event::Ended(record) => {
                let done = self.advance();
                self.say(&line(record, done, self.total.load(Ordering::Relaxed)));
            }
            Event::Note(message) => self.say(message),
            Event::Over => {
                if let Some(bar) = self.bar() {
                    bar.finish_and_clear();
                }
            }
        }
    }

    fn bar(&self) -> Option<&ProgressBar> {
        self.bar.get().and_then(Option::as_ref)
    }

    fn say(&self, message: &str) {
        match self.bar() {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// Counts one more trial dealt with; returns how many are.
    fn advance(&self) -> u64 {
        if let Some(bar) = self.bar() {
            bar.inc(1);
        }
        self.done.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// `[3/75] <id> transfer t=5 f=5 per_class=20 seed=1 accuracy 0.8123 (1.2s)`.
fn line(record: &TrialRecord, done: u64, total: u64) -> String {
    let error = record.error.as_deref().unwrap_or("no reason given");
    let result = match (record.status, &record.eval) {
        (Status::Finished, Some(eval)) => format!("accuracy {:.4}", eval.accuracy),
        (Status::Interrupted, _) => format!("INTERRUPTED: {error}"),
        _ => format!("FAILED: {error}"),
    };
    let timings = &record.timings;
    let seconds = timings.setup_seconds + timings.train_seconds + timings.eval_seconds;
    let axes: Vec<String> = (record.axes.iter())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "[{done}/{total}] {} {} t={} f={} {} {result} ({seconds:.1}s)",
        record.id,
        record.strategies.join("="),
        record.transfer_depth,
        record.freeze_depth,
        axes.join(" "),
    )
}
