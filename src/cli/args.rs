//! The command line's arguments, as clap parses them; `--help` is written here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xferlab::device::{CHOICES, DeviceChoice};
use xferlab::error::InputError;
use xferlab::report::{Correction, Format, Metric};
use xferlab::spec::command_line_variables as env;

/// Declarative transfer-learning experiments: how much does transfer help, and how deep to freeze?
///
/// Write one YAML spec (see experiments/), then: `xferlab validate` it, `xferlab plan` it to
/// see the trials, `xferlab run` it (interrupt and re-run at will: finished trials are kept),
/// and `xferlab report` it.
#[derive(Parser)]
#[command(version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A spec file and its overrides.
#[derive(clap::Args)]
pub struct SpecArgs {
    /// The experiment spec (YAML).
    pub spec: PathBuf,
    /// Override a spec key: `--set train.lr=0.01`, `--set sweep.seed=[0,1,2]` (value is YAML).
    /// Layers: spec file < XFERLAB_* environment (XFERLAB_TRAIN__LR=0.01) < --set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Parse and check a spec; prints nothing but errors.
    ///
    /// Checks what `run` checks before it trains: every sweep point, the data it names, a
    /// checkpoint source against the deepest transfer, and the spec's device.
    Validate(SpecArgs),
    /// Show the trials a spec expands to, after merging equal ones.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print the plan as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Score each candidate freeze depth before training: LogME of the source's frozen
    /// features, and LEEP of its classifier.
    ///
    /// For every source model and target training selection (size, seed) the sweep
    /// transfers, the source's blocks run once over the target's training examples; the
    /// pooled output after each block is scored (LogME, You et al. 2021). Prints a ranking of
    /// depths per setting, best first, and writes <store>/<name>/estimates.json; once the
    /// sweep has run, `xferlab report` shows each estimate beside the accuracy measured at
    /// that depth, with Kendall's tau. Seconds where the sweep takes minutes or hours.
    Estimate {
        #[command(flatten)]
        spec: SpecArgs,
        /// Where tensors live: cpu, cuda, cuda:N, or auto. Default: the spec's `device`, else
        /// auto.
        #[arg(long, value_name = "DEVICE", value_parser = device_choice)]
        device: Option<DeviceChoice>,
        /// Root folder of the run store (source models are pretrained and kept there).
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
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
        #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256), env = env::JOBS)]
        jobs: u16,
        /// MiB of frozen-block outputs kept in device memory and reused across epochs,
        /// evaluation and trials that share the source model, freeze_depth and data; 0 runs
        /// frozen blocks every step. A trial whose features do not fit runs them every step.
        /// On a GPU each of the --jobs has its own CUDA stream and an equal share.
        #[arg(long, value_name = "MIB", default_value_t = 4096, env = env::FEATURE_CACHE_MB)]
        feature_cache_mb: usize,
        /// Run only this trial: its index in the plan, or its id (a unique prefix will do).
        /// Repeat it, or separate with commas, for several: `--trial 0,5,3f2a`.
        #[arg(long = "trial", value_name = "ID|INDEX", value_delimiter = ',')]
        trials: Vec<String>,
        /// When another process is running a trial, wait for it, then run the trial unless
        /// that process finished it (by default such a trial is skipped as busy). Slurm
        /// scripts use it: a requeued task may start while its last run is still exiting.
        #[arg(long)]
        wait: bool,
        /// Root folder of the run store.
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
    },
    /// Send the sweep to a Slurm cluster as one job array, all tasks writing into one store.
    ///
    /// Writes a readable sbatch script into the run store (<store>/<name>/slurm/), submits it
    /// with `sbatch` and prints the job id. Each array task runs its share of the plan's trials
    /// with `xferlab run --trial`; the source model is pretrained once (the first task that
    /// needs it, under the store's lock, while the others wait). The store must be on a
    /// filesystem every node sees, with working `flock` and `rename` (see the README).
    /// Options override the spec's `launcher: {slurm: {...}}` block.
    Submit {
        #[command(flatten)]
        spec: SpecArgs,
        /// Submit to Slurm (the launcher xferlab knows; also chosen by the spec's
        /// `launcher.slurm`).
        #[arg(long)]
        slurm: bool,
        /// Array tasks running at once (`--array=...%N`); default: as many as Slurm places.
        #[arg(long, value_name = "N")]
        parallel: Option<std::num::NonZeroU32>,
        /// Trials each task runs, one after another (default 1).
        #[arg(long, value_name = "K")]
        trials_per_task: Option<std::num::NonZeroUsize>,
        /// Slurm partition (queue).
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// Time limit per task, Slurm's format: 30, 2:00:00, 1-12:00:00. Slurm warns xferlab
        /// 120 s before it, and the trial in progress is recorded as interrupted.
        #[arg(long, value_name = "T")]
        time: Option<String>,
        /// GPUs per task.
        #[arg(long, value_name = "G")]
        gpus_per_task: Option<std::num::NonZeroU32>,
        /// CPU cores per task (the task uses as many threads; 1 by default).
        #[arg(long, value_name = "C")]
        cpus_per_task: Option<std::num::NonZeroU32>,
        /// One more `#SBATCH` option, e.g. --sbatch-arg=--account=proj (repeat for more).
        #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
        sbatch_args: Vec<String>,
        /// Submit only the trials with no finished record (failed, interrupted, killed and
        /// never started ones), as a smaller array. A trial still running elsewhere is
        /// waited for by the new task that meets it, and run only if it did not finish.
        #[arg(long)]
        resume: bool,
        /// Write the script and print it; submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Root folder of the run store (written into the script as an absolute path).
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
    },
    /// How a sweep stands: trials finished, failed, interrupted, running, not started.
    ///
    /// Read from the run store, so it covers local runs and cluster jobs alike; for jobs
    /// `xferlab submit` sent, also what `squeue` (and `sacct`, where accounting is on) says.
    /// Exit code 0 when every trial is finished, 1 when some are left.
    Status {
        /// A sweep folder (runs/NAME) or the spec that made it.
        run: PathBuf,
        /// Root folder of the run store (when RUN is a spec).
        #[arg(long, default_value = "runs", env = env::STORE)]
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
        /// What the tables, the best rows and the figures compare: accuracy, macro_f1, or ece
        /// (expected calibration error; lower is better). Gains over scratch are paired by
        /// seed either way.
        #[arg(long, value_enum, default_value_t = Metric::Accuracy)]
        metric: Metric,
        /// How the stars (gains over scratch that differ from zero) account for the sweep
        /// testing many gains: holm (Holm's correction over all of them: the chance of any
        /// false star stays at 5%) or none (each gain's own 95% interval).
        #[arg(long, value_enum, default_value_t = Correction::Holm)]
        correction: Correction,
        /// Also write the figures as SVG and PNG into this folder (one sweep only).
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Also write one self-contained HTML page: tables, figures, failed trials, facts, spec
        /// (one sweep only).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Root folder of the run store (when RUN is a spec).
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
    },
    /// Write one trial's trained network as a folder that needs nothing else.
    ///
    /// DIR gets model.safetensors (LoRA updates folded into the weights), model.json (the
    /// architecture, class names, preprocessing and where it came from), tokenizer.json for
    /// text models, and README.md, a model card. The weights are the trial's checkpoint when
    /// the sweep kept it (`checkpoints: true`); otherwise the trial is trained again, alone,
    /// as the sweep trained it. Either way the network is evaluated on the trial's eval data
    /// before anything is written, and both accuracies go into the card.
    ///
    /// The best trial: `xferlab export runs/quickstart --best --out model`
    ///
    /// The best LoRA trial by macro-F1: `xferlab export runs/quickstart --best lora --metric
    /// macro_f1 --out model`
    ///
    /// One trial: `xferlab export runs/quickstart --trial 3f2a --out model`
    Export {
        /// A sweep folder (runs/NAME) or the spec that made it.
        run: PathBuf,
        /// The trial: its index in the plan or its id (a unique prefix will do).
        #[arg(
            long,
            value_name = "ID|INDEX",
            required_unless_present = "best",
            conflicts_with = "best"
        )]
        trial: Option<String>,
        /// The finished trial with the best --metric; given a strategy name, the best of that
        /// strategy's trials.
        #[arg(long, value_name = "STRATEGY", num_args = 0..=1, default_missing_value = "")]
        best: Option<String>,
        /// What --best maximises: accuracy, macro_f1, or ece (minimised).
        #[arg(long, value_enum, default_value_t = Metric::Accuracy)]
        metric: Metric,
        /// The folder to write (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Where to evaluate, and retrain a trial whose weights were not kept: cpu, cuda,
        /// cuda:N or auto (default auto).
        #[arg(long, value_name = "DEVICE", value_parser = device_choice)]
        device: Option<DeviceChoice>,
        /// Root folder of the run store (when RUN is a spec).
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
    },
    /// Classify images or texts with a model `xferlab export` wrote.
    ///
    /// Prints each input's most probable classes with their probabilities. Image models take
    /// PNG or JPEG files, prepared as the sweep prepared its data. Text models take texts: an
    /// argument naming a file stands for its lines (one text each), `-` for standard input's
    /// lines, and any other argument is a text itself.
    ///
    /// `xferlab predict model photo1.jpg photo2.png`
    ///
    /// `xferlab predict spam-model "WIN a FREE cruise" mails.txt --format json`
    Predict {
        /// A folder `xferlab export` wrote.
        model: PathBuf,
        /// Image files; or texts, text files and `-` for a text model.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<String>,
        /// Classes shown per input.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        top: u16,
        /// Output format: lines, or one JSON array.
        #[arg(long, value_enum, default_value_t = PredictFormat::Text)]
        format: PredictFormat,
        /// Where to run: cpu, cuda, cuda:N or auto (default auto).
        #[arg(long, value_name = "DEVICE", value_parser = device_choice)]
        device: Option<DeviceChoice>,
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
        #[arg(long, default_value = "runs", env = env::STORE)]
        store: PathBuf,
    },
    /// List the architectures: their blocks, what is inside each, parameters and output shapes.
    ///
    /// Blocks are the units of transfer_depth and freeze_depth; the head (new in every trial)
    /// is not one. Shapes are for the input shown (28x28 grey, or 224x224 RGB for
    /// EfficientNet); parameters are trainable ones.
    Models,
    /// Print the JSON Schema of experiment specs.
    Schema,
}

/// `--device`'s value, with clap's own error layout.
fn device_choice(name: &str) -> Result<DeviceChoice, String> {
    name.parse()
        .map_err(|e: InputError| format!("{}; use {CHOICES}", e.message))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every option read from an `XFERLAB_` variable must be one the spec loader skips, or
    /// setting it breaks loading the spec ("unknown key `jobs`").
    #[test]
    fn every_option_variable_is_skipped_by_the_spec_loader() {
        let cli = Cli::command();
        let mut seen = Vec::new();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                if let Some(name) = arg.get_env() {
                    let name = name.to_string_lossy().into_owned();
                    assert!(env::ALL.contains(&name.as_str()), "{name} is not in ALL");
                    seen.push(name);
                }
            }
        }
        for name in env::ALL {
            assert!(seen.iter().any(|s| s == name), "{name} is no option's");
        }
    }
}

/// How `predict` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictFormat {
    /// `INPUT: class 0.93, class 0.05, ...`, one line per input.
    Text,
    /// `[{"input": ..., "top": [{"class": ..., "probability": ...}]}]`.
    Json,
}
