//! Tracking servers: a sink that receives a sweep's records besides the run store, which
//! stays the source of truth. A sweep is a parent run; each trial a nested run, found again
//! by its `xferlab.trial_id` tag, so uploading twice (`xferlab sync`) changes nothing.
//!
//! During `run`, uploads happen on a background thread: training never waits on the
//! network, and a server that is down costs the sweep nothing but a message at the end.

mod mapping;
pub mod mlflow;
mod outcome;
mod sink;
mod sync;
mod target;
mod upload;

pub use outcome::Outcome;
pub use sink::Sink;
pub use sync::sync;
pub use target::{SweepStatus, Target};
pub use upload::{Report, UploadError, Uploader};
