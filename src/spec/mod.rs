//! The experiment spec: types, layered loading with located errors, JSON Schema. The floor
//! of the crate: it knows nothing of data, models, devices or trackers (the planner checks
//! what needs them).

mod datasets;
mod device;
pub mod hub;
mod layers;
pub mod load;
pub mod location;
pub mod suggest;
mod types;

pub use datasets::*;
pub use device::{CHOICES, DeviceChoice};
pub use load::{LoadedSpec, MLFLOW_URI_VARIABLE, command_line_variables, load};
pub use types::*;

/// The JSON Schema of the spec, as committed in `schemas/experiment.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Spec);
    serde_json::to_string_pretty(&schema).expect("a schema always serialises") + "\n"
}
