//! Ctrl-C: the first asks the sweep to stop (the trial in progress is recorded as
//! interrupted, finished ones are kept, uploads are finished); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_CODE: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once, by the command line).
pub fn install() {
    let installed = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_CODE));
        }
        eprintln!(
            "\ninterrupted: stopping after recording the trial in progress (Ctrl-C again to quit at once)"
        );
    });
    if let Err(error) = installed {
        tracing::warn!("cannot handle Ctrl-C: {error}");
    }
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
