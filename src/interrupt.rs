//! Ctrl-C: the first asks the sweep to stop (the trial in progress is recorded as
//! interrupted, finished ones are kept, uploads are finished); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once, by the command line); `first` tells the user what the
/// first Ctrl-C does.
pub fn install(first: impl Fn() + Send + 'static) {
    let installed = ctrlc::set_handler(move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(crate::error::exit::INTERRUPTED));
        }
        first();
    });
    if let Err(error) = installed {
        tracing::warn!("cannot handle Ctrl-C: {error}");
    }
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
