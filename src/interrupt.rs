//! Stopping a sweep: the first SIGINT (Ctrl-C), SIGTERM (`scancel`, preemption, a shutdown)
//! or SIGUSR1 (Slurm's warning before a time limit, `xferlab submit`'s `--signal`) asks the
//! sweep to stop: the trial in progress is recorded as interrupted, finished ones are kept,
//! uploads are finished. A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once, by the command line); `first` tells the user what the first
/// signal does, given its name.
pub fn install(first: impl Fn(&str) + Send + 'static) {
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]) {
        Ok(signals) => signals,
        Err(error) => return tracing::warn!("cannot handle Ctrl-C: {error}"),
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(crate::error::exit::INTERRUPTED));
            }
            first(match signal {
                SIGINT => "Ctrl-C",
                SIGTERM => "SIGTERM",
                _ => "SIGUSR1",
            });
        }
    });
}

/// Whether a stopping signal came.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
