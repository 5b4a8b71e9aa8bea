//! The experiment spec: types, layered loading, validation, JSON Schema.

pub mod load;
pub mod location;
pub mod suggest;
mod types;
pub mod validate;

pub use load::{LoadedSpec, MLFLOW_URI_VARIABLE, load};
pub use types::*;

/// The JSON Schema of the spec, as committed in `schemas/experiment.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Spec);
    serde_json::to_string_pretty(&schema).expect("a schema always serialises") + "\n"
}
