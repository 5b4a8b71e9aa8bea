//! The `xferlab` command line: parses arguments, calls the library, maps errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xferlab::data::Catalog;
use xferlab::device::DeviceChoice;
use xferlab::error::{Error, InputError};
use xferlab::plan::{self, Plan};
use xferlab::report::{self, Format};
use xferlab::runner::{self, RunOptions};
use xferlab::spec::{self, LoadedSpec, Spec};
use xferlab::store::{RunStore, write_atomic};
use xferlab::tracking::Target;

/// Exit codes, as documented in the README.
mod exit {
    /// Everything worked.
    pub const SUCCESS: u8 = 0;
    /// The run ended with failed trials, or something failed while running.
    pub const FAILED: u8 = 1;
    /// Bad input: spec, override, data path, checkpoint, arguments.
    pub const BAD_INPUT: u8 = 2;
    /// Stopped by Ctrl-C (finished trials are kept; `run` again resumes).
    pub const INTERRUPTED: u8 = xferlab::interrupt::EXIT_CODE;
}

/// Declarative transfer-learning experiments: how much does transfer help, and how deep to freeze?
///
/// Write one YAML spec (see experiments/), then: `xferlab validate` it, `xferlab plan` it to
/// see the trials, `xferlab run` it (interrupt and re-run at will: finished trials are kept),
/// and `xferlab report` it.
#[derive(Parser)]
#[command(version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct SpecArgs {
    /// The experiment spec (YAML).
    spec: PathBuf,
    /// Override a spec key: `--set train.lr=0.01`, `--set sweep.seed=[0,1,2]` (value is YAML).
    /// Layers: spec file < XFERLAB_* environment (XFERLAB_TRAIN__LR=0.01) < --set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a spec; prints nothing but errors.
    Validate(SpecArgs),
    /// Show the trials a spec expands to, after merging equal ones.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print the plan as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the sweep, skipping trials the run store already has; prints the result table.
    Run {
        #[command(flatten)]
        spec: SpecArgs,
        /// Where tensors live: cpu, cuda, cuda:N, or auto (a GPU when the binary has CUDA and
        /// one answers, else the CPU). Default: the spec's `device`, else auto.
        #[arg(long, value_name = "DEVICE", value_parser = device_choice)]
        device: Option<DeviceChoice>,
        /// Trials run at once. One small trial leaves a big GPU mostly idle: try 4-8 there.
        /// Records do not depend on it.
        #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256), env = "XFERLAB_JOBS")]
        jobs: u16,
        /// MiB of frozen-block outputs kept in device memory and reused across epochs,
        /// evaluation and trials that share the source model, freeze_depth and data; 0 runs
        /// frozen blocks every step. A trial whose features do not fit runs them every step.
        /// On a GPU each of the --jobs has its own CUDA stream and an equal share.
        #[arg(
            long,
            value_name = "MIB",
            default_value_t = 4096,
            env = "XFERLAB_FEATURE_CACHE_MB"
        )]
        feature_cache_mb: usize,
        /// Run only this trial: its index in the plan, or its id (a unique prefix will do).
        #[arg(long, value_name = "ID|INDEX")]
        trial: Option<String>,
        /// Root folder of the run store.
        #[arg(long, default_value = "runs", env = "XFERLAB_STORE")]
        store: PathBuf,
    },
    /// Result tables of a sweep, its figures and an HTML page; or two sweeps compared.
    ///
    /// Per group of trials: mean, std and 95% interval over seeds, the gain over scratch
    /// paired by seed, and the best strategy and depth at each setting, with its ties.
    /// With two sweeps (RUN_A RUN_B), compares them side by side.
    Report {
        /// A sweep folder (runs/NAME) or the spec that made it; a second one to compare.
        #[arg(required = true, num_args = 1..=2, value_name = "RUN")]
        runs: Vec<PathBuf>,
        /// Output format (a comparison prints as table or md).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Also write the figures as SVG and PNG into this folder.
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Also write one self-contained HTML page: tables, figures, failed trials, facts, spec.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Root folder of the run store (when RUN is a spec).
        #[arg(long, default_value = "runs", env = "XFERLAB_STORE")]
        store: PathBuf,
    },
    /// Upload to the tracking server what it has not got yet; safe to repeat.
    ///
    /// Each trial is found again by its `xferlab.trial_id` tag, so running sync twice, or
    /// after a partial upload, leaves every trial on the server exactly once.
    Sync {
        /// A sweep folder (runs/NAME) or the spec that made it.
        run: PathBuf,
        /// Server address; by default the spec's `tracking.mlflow.uri`, else MLFLOW_TRACKING_URI.
        #[arg(long, value_name = "URI")]
        to: Option<String>,
        /// Root folder of the run store (when RUN is a spec).
        #[arg(long, default_value = "runs", env = "XFERLAB_STORE")]
        store: PathBuf,
    },
    /// Print the JSON Schema of experiment specs.
    Schema,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    xferlab::interrupt::install();
    match execute(Cli::parse().command) {
        Ok(code) => ExitCode::from(code),
        Err(Error::Input(error)) => {
            eprint!("{error}");
            ExitCode::from(exit::BAD_INPUT)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// Loads, expands and checks a spec: everything `validate` promises.
fn prepare(args: &SpecArgs) -> Result<(LoadedSpec, Catalog, Plan), Error> {
    let loaded = spec::load(&args.spec, &args.overrides)?;
    let catalog = Catalog::new(&loaded.spec.datasets);
    let plan = plan::plan(&loaded, &catalog)?;
    if let Some(deepest) = plan
        .trials
        .iter()
        .filter(|t| t.config.source.is_some())
        .max_by_key(|t| t.config.transfer_depth)
    {
        // A checkpoint that does not fit is an error in the spec line that names it.
        xferlab::source::check_checkpoint(&deepest.config, &catalog).map_err(|e| match e {
            Error::Input(e) => loaded
                .error("source.checkpoint", e.message)
                .with_help(
                    e.help
                        .unwrap_or_else(|| "relative paths start at the spec file's folder".into()),
                )
                .into(),
            e => e,
        })?;
    }
    Ok((loaded, catalog, plan))
}

fn execute(command: Command) -> Result<u8, Error> {
    match command {
        Command::Validate(args) => {
            prepare(&args)?;
            Ok(exit::SUCCESS)
        }
        Command::Plan { spec, json } => {
            let (_, _, plan) = prepare(&spec)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plans serialise")
                );
            } else {
                print!("{}", plan::render(&plan));
            }
            Ok(exit::SUCCESS)
        }
        Command::Run {
            spec,
            device,
            jobs,
            feature_cache_mb,
            trial,
            store,
        } => {
            let (loaded, catalog, plan) = prepare(&spec)?;
            let device = match (device, &loaded.spec.device) {
                (Some(choice), _) => choice.open()?,
                (None, None) => DeviceChoice::Auto.open()?,
                // A device the spec names and this machine lacks is an error at that line.
                (None, Some(name)) => name.parse::<DeviceChoice>()?.open().map_err(|e| {
                    let help = e.help.unwrap_or_default();
                    loaded.error("device", e.message).with_help(help)
                })?,
            };
            let options = RunOptions {
                store: store.clone(),
                device,
                jobs: usize::from(jobs),
                cache_bytes: feature_cache_mb.saturating_mul(1 << 20),
                trial,
            };
            let summary = runner::run(&loaded, &plan, &catalog, &options)?;
            let run_store = RunStore::new(&store, &plan.name);
            let records = run_store.records(&plan)?;
            print!(
                "{}",
                report::render(&report::build(&plan, &records), Format::Table)
            );
            eprintln!(
                "run store: {} ({} run now, {} already done, {} failed, {} busy elsewhere)",
                run_store.root().display(),
                summary.finished + summary.failed,
                summary.already_done,
                summary.failed,
                summary.busy
            );
            if let Some(tracking) = &summary.tracking {
                eprint!("{tracking}");
            }
            Ok(if summary.interrupted {
                eprintln!(
                    "interrupted: finished trials are kept; run the same command again to resume"
                );
                exit::INTERRUPTED
            } else if summary.failed > 0 {
                exit::FAILED
            } else {
                exit::SUCCESS
            })
        }
        Command::Report {
            runs,
            format,
            plots,
            html,
            store,
        } => {
            let mut sweeps = Vec::new();
            for run in &runs {
                let run_store = open_run(run, &store)?;
                let plan = run_store.plan()?;
                let records = run_store.records(&plan)?;
                let built = report::build(&plan, &records);
                sweeps.push((run_store, plan, records, built));
            }
            if let [(_, _, _, a), (_, _, _, b)] = &sweeps[..] {
                print!("{}", report::compare(a, b, format == Format::Md));
                return Ok(exit::SUCCESS);
            }
            let (run_store, plan, records, built) = &sweeps[0];
            print!("{}", report::render(built, format));
            if plots.is_none() && html.is_none() {
                return Ok(exit::SUCCESS);
            }
            let figures = report::plots::figures(built, plan, records)?;
            if let Some(dir) = plots {
                for figure in &figures {
                    let png = figure.png()?;
                    write_atomic(
                        &dir.join(format!("{}.svg", figure.name)),
                        figure.svg.as_bytes(),
                    )?;
                    write_atomic(&dir.join(format!("{}.png", figure.name)), &png)?;
                }
                eprintln!("{} figure(s) written to {}", figures.len(), dir.display());
            }
            if let Some(file) = html {
                let identity = run_store.saved_identity()?;
                let page = report::html::Page {
                    report: built,
                    records,
                    figures: &figures,
                    spec_yaml: &run_store.spec_yaml()?,
                    overrides: &run_store.overrides()?,
                    identity: identity.as_ref(),
                };
                write_atomic(&file, report::html::render(&page).as_bytes())?;
                eprintln!("page written to {}", file.display());
            }
            Ok(exit::SUCCESS)
        }
        Command::Sync { run, to, store } => {
            let run_store = open_run(&run, &store)?;
            let spec: Spec = serde_yaml::from_str(&run_store.spec_yaml()?).map_err(|e| {
                InputError::new(format!(
                    "cannot read the spec saved in {}: {e}",
                    run_store.root().display()
                ))
            })?;
            let target = match (to, Target::of(&spec)) {
                (Some(uri), found) => Target {
                    uri,
                    experiment: found.map_or(spec.name.clone(), |t| t.experiment),
                },
                (None, Some(target)) => target,
                (None, None) => match std::env::var(spec::MLFLOW_URI_VARIABLE) {
                    Ok(uri) if !uri.is_empty() => Target {
                        uri,
                        experiment: spec.name.clone(),
                    },
                    _ => {
                        return Err(InputError::new(format!(
                            "the sweep in {} names no tracking server",
                            run_store.root().display()
                        ))
                        .with_help("give one: xferlab sync RUN --to http://127.0.0.1:5000")
                        .into());
                    }
                },
            };
            xferlab::tracking::mlflow::Client::new(&target.uri).map_err(|e| {
                InputError::new(e.to_string()).with_help("e.g. --to http://127.0.0.1:5000")
            })?;
            let outcome = xferlab::tracking::sync(&target, &run_store, &|m| eprintln!("{m}"))?;
            eprint!("{}", outcome.describe(&target, run_store.root()));
            Ok(if outcome.missed.is_empty() && outcome.ended {
                exit::SUCCESS
            } else {
                exit::FAILED
            })
        }
        Command::Schema => {
            print!("{}", spec::json_schema());
            Ok(exit::SUCCESS)
        }
    }
}

/// `--device`'s value, with clap's own error layout.
fn device_choice(name: &str) -> Result<DeviceChoice, String> {
    name.parse()
        .map_err(|e: InputError| format!("{}; use {}", e.message, xferlab::device::CHOICES))
}

/// A sweep folder, or the folder of the sweep a spec file names.
fn open_run(run: &Path, store: &Path) -> Result<RunStore, Error> {
    if run.is_file() {
        let loaded = spec::load(run, &[])?;
        return RunStore::open(&store.join(&loaded.spec.name));
    }
    if !run.exists() {
        return Err(InputError::new(format!("{} does not exist", run.display()))
            .with_help("give a sweep folder (runs/NAME) or a spec file")
            .into());
    }
    RunStore::open(run)
}
