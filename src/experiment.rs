//! A spec resolved once into what the commands need: loaded with its layers, expanded into
//! its plan, every sweep point checked, a checkpoint source checked against the deepest
//! transfer, and the device chosen (`--device` > the spec's `device` > auto). `validate`
//! promises exactly what this checks, so `run` fails on nothing `validate` let through.

use std::path::Path;

use candle_core::Device;

use crate::data::Catalog;
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::spec::{self, DeviceChoice, LoadedSpec};

/// A loaded, planned and checked spec. Outside this crate only `prepare` makes one, so
/// whoever holds one holds a checked spec.
#[non_exhaustive]
pub struct Experiment {
    /// The spec with the layers it came from.
    pub loaded: LoadedSpec,
    /// Its datasets.
    pub catalog: Catalog,
    /// Its trials.
    pub plan: Plan,
}

impl Experiment {
    /// Loads `spec` with `--set` overrides on top, plans it and checks it.
    pub fn prepare(spec: &Path, overrides: &[String]) -> Result<Self> {
        let loaded = spec::load(spec, overrides)?;
        let catalog = Catalog::new(&loaded.spec.datasets);
        let plan = plan::plan(&loaded, &catalog)?;
        let experiment = Experiment {
            loaded,
            catalog,
            plan,
        };
        experiment.check_checkpoint()?;
        Ok(experiment)
    }

    /// A checkpoint that does not fit the deepest transfer is an error at the spec line that
    /// names it, before anything trains.
    fn check_checkpoint(&self) -> Result<()> {
        let Some(deepest) = (self.plan.trials.iter())
            .filter(|t| t.config.source.is_some())
            .max_by_key(|t| t.config.transfer_depth)
        else {
            return Ok(());
        };
        crate::source::check_checkpoint(&deepest.config, &self.catalog).map_err(|e| match e {
            Error::Input(e) => self
                .loaded
                .error("source.checkpoint", e.message)
                .with_help(
                    e.help
                        .unwrap_or_else(|| "relative paths start at the spec file's folder".into()),
                )
                .into(),
            e => e,
        })
    }

    /// Opens the device trials run on: `given` (`--device`), else the spec's `device`, else
    /// auto. A device the spec names and this machine lacks is an error at that line.
    pub fn device(&self, given: Option<DeviceChoice>) -> Result<Device> {
        match (given, self.loaded.spec.device) {
            (Some(choice), _) => Ok(choice.open()?),
            (None, None) => Ok(DeviceChoice::Auto.open()?),
            (None, Some(named)) => named.open().map_err(|e| {
                let help = e.help.unwrap_or_default();
                self.loaded
                    .error("device", e.message)
                    .with_help(help)
                    .into()
            }),
        }
    }
}
