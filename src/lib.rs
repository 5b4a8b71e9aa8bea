//! xferlab: declarative transfer-learning experiments on candle.
//!
//! Data flows one way: spec → plan → runner → train → store → report.

pub mod auto_depth;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod estimate;
pub mod experiment;
pub mod export;
pub mod features;
pub mod interrupt;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plan;
pub mod report;
pub mod runner;
pub mod slurm;
pub mod source;
pub mod spec;
pub mod status;
pub mod store;
pub mod table;
pub mod tracking;
pub mod train;
pub mod trial;

pub use error::{Error, InputError, Result};
