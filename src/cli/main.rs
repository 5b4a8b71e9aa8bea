//! The `xferlab` command line: parses arguments, calls the library, prints what it returns,
//! and maps errors to exit codes.

mod args;
mod models;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use xferlab::device::DeviceChoice;
use xferlab::error::{Error, exit};
use xferlab::experiment::Experiment;
use xferlab::export;
use xferlab::report::{self, Format};
use xferlab::runner::{self, RunOptions};
use xferlab::spec;
use xferlab::store::RunStore;
use xferlab::tracking::Target;

use args::{Cli, Command, PredictFormat};

fn main() -> ExitCode {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { xferlab::device::prepare_process() };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    xferlab::interrupt::install(|signal| {
        eprintln!(
            "\ninterrupted ({signal}): stopping after recording the trial in progress (Ctrl-C again to quit at once)"
        )
    });
    match execute(Cli::parse().command) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            match &error {
                Error::Input(input) => eprint!("{input}"),
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(error.exit_code())
        }
    }
}

fn execute(command: Command) -> Result<u8, Error> {
    match command {
        Command::Validate(args) => {
            let experiment = Experiment::prepare(&args.spec, &args.overrides)?;
            experiment.device(None)?;
            Ok(exit::SUCCESS)
        }
        Command::Plan { spec, json } => {
            let plan = Experiment::prepare(&spec.spec, &spec.overrides)?.plan;
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plans serialise")
                ),
                false => print!("{}", xferlab::plan::render(&plan)),
            }
            Ok(exit::SUCCESS)
        }
        Command::Run {
            spec,
            device,
            jobs,
            feature_cache_mb,
            trials,
            wait,
            store,
        } => {
            let experiment = Experiment::prepare(&spec.spec, &spec.overrides)?;
            let options = RunOptions {
                device: experiment.device(device)?,
                store: store.clone(),
                jobs: usize::from(jobs),
                feature_cache_mb,
                trials,
                wait,
            };
            let progress = progress::Progress::default();
            let summary = runner::run(&experiment, &options, &|e| progress.show(e))?;
            let run_store = RunStore::new(&store, &experiment.plan.name);
            let records = run_store.records(&experiment.plan)?;
            let built = report::build(
                &experiment.plan,
                &records,
                report::Metric::Accuracy,
                report::Correction::Holm,
            );
            print!("{}", report::render(&built, Format::Table));
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
        Command::Estimate {
            spec,
            device,
            store,
        } => {
            let experiment = Experiment::prepare(&spec.spec, &spec.overrides)?;
            let device = experiment.device(device)?;
            let estimates =
                xferlab::estimate::estimate(&experiment, &store, &device, &|m| eprintln!("{m}"))?;
            print!("{}", xferlab::estimate::render(&estimates));
            let written = RunStore::new(&store, &experiment.plan.name);
            eprintln!(
                "estimates written to {}",
                written.root().join(xferlab::estimate::FILE).display()
            );
            if Target::of(&experiment.loaded.spec).is_some() {
                eprintln!(
                    "MLflow: they go to the sweep's parent run (estimates.json, and beside the measured accuracies in report.md) when the sweep runs, or with `xferlab sync`"
                );
            }
            Ok(exit::SUCCESS)
        }
        Command::Submit {
            spec,
            slurm,
            parallel,
            trials_per_task,
            partition,
            time,
            gpus_per_task,
            cpus_per_task,
            sbatch_args,
            resume,
            dry_run,
            store,
        } => {
            let experiment = Experiment::prepare(&spec.spec, &spec.overrides)?;
            let launcher = experiment.loaded.spec.launcher.as_ref();
            let Some(mut settings) = launcher
                .and_then(|l| l.slurm.clone())
                .or_else(|| slurm.then(Default::default))
            else {
                return Err(xferlab::InputError::new("say where to submit the sweep")
                    .with_help("add --slurm, or a `launcher: {slurm: {}}` block to the spec")
                    .into());
            };
            settings.parallel = parallel.or(settings.parallel);
            settings.trials_per_task = trials_per_task.unwrap_or(settings.trials_per_task);
            settings.partition = partition.or(settings.partition);
            settings.time = time.or(settings.time);
            settings.gpus_per_task = gpus_per_task.or(settings.gpus_per_task);
            settings.cpus_per_task = cpus_per_task.or(settings.cpus_per_task);
            settings.sbatch_args.extend(sbatch_args);
            let submission = xferlab::slurm::Submission {
                experiment: &experiment,
                store,
                settings,
                resume,
            };
            let Some(job) = submission.submit(dry_run)? else {
                eprintln!("nothing to submit: every trial has a finished record");
                return Ok(exit::SUCCESS);
            };
            let what = format!(
                "{} trial(s) as {} array task(s)",
                job.trials.len(),
                job.tasks
            );
            match &job.job_id {
                None => {
                    let script = std::fs::read_to_string(&job.script)
                        .map_err(Error::io(format!("cannot read {}", job.script.display())))?;
                    print!("{script}");
                    eprintln!(
                        "dry run: {what} written to {}; submit it with: sbatch {}",
                        job.script.display(),
                        job.script.display()
                    );
                }
                Some(id) => {
                    println!("{id}");
                    eprintln!(
                        "submitted Slurm job {id}: {what}; script {}\nfollow it: xferlab status {}   (squeue -j {id}; logs in {})",
                        job.script.display(),
                        spec.spec.display(),
                        job.script.with_file_name("logs").display()
                    );
                }
            }
            Ok(exit::SUCCESS)
        }
        Command::Status { run, store } => {
            let run_store = RunStore::find(&run, &store)?;
            let plan = run_store.plan()?;
            let states = xferlab::status::of(&run_store, &plan)?;
            print!("{}", xferlab::status::render(&run_store, &plan, &states));
            for job in xferlab::slurm::jobs(&run_store)? {
                let id = job.job_id.as_deref().unwrap_or("?");
                let slurm = xferlab::slurm::describe(id)
                    .unwrap_or_else(|| "Slurm does not answer here".into());
                println!(
                    "Slurm job {id} ({}: {} trials as {} tasks): {slurm}",
                    job.script.file_name().unwrap_or_default().to_string_lossy(),
                    job.trials.len(),
                    job.tasks
                );
            }
            let left = states
                .iter()
                .filter(|s| **s != xferlab::status::State::Finished)
                .count();
            if left == 0 {
                return Ok(exit::SUCCESS);
            }
            eprintln!(
                "{left} trial(s) not finished: `xferlab run SPEC` runs them here, `xferlab submit SPEC --slurm --resume` on the cluster"
            );
            Ok(exit::FAILED)
        }
        Command::Report {
            runs,
            format,
            metric,
            correction,
            plots,
            html,
            store,
        } => {
            let mut sweeps = Vec::new();
            for run in &runs {
                let run_store = RunStore::find(run, &store)?;
                let plan = run_store.plan()?;
                let records = run_store.records(&plan)?;
                let built = report::build(&plan, &records, metric, correction);
                sweeps.push((run_store, plan, records, built));
            }
            if let [(_, _, _, a), (_, _, _, b)] = &sweeps[..] {
                report::check_comparison(format, plots.is_some(), html.is_some())?;
                print!("{}", report::compare(a, b, format == Format::Md));
                return Ok(exit::SUCCESS);
            }
            let (run_store, plan, records, built) = &sweeps[0];
            print!("{}", report::render(built, format));
            // Estimates are an extra: a damaged file is a warning, not a failed report.
            let estimates = run_store.estimates().unwrap_or_else(|e| {
                eprintln!("warning: {e}; `xferlab estimate SPEC` writes it again");
                None
            });
            if let (Format::Table | Format::Md, Some(estimates)) = (format, estimates)
                && let Some(compared) = xferlab::estimate::compare(built, &estimates)
            {
                print!("{compared}");
            }
            let drawn = report::publish(
                run_store,
                plan,
                records,
                built,
                plots.as_deref(),
                html.as_deref(),
            )?;
            if let Some(dir) = plots {
                eprintln!("{drawn} figure(s) written to {}", dir.display());
            }
            if let Some(file) = html {
                eprintln!("page written to {}", file.display());
            }
            Ok(exit::SUCCESS)
        }
        Command::Export {
            run,
            trial,
            best,
            metric,
            out,
            device,
            store,
        } => {
            let run_store = RunStore::find(&run, &store)?;
            let plan = run_store.plan()?;
            let records = run_store.records(&plan)?;
            let choice = match trial {
                Some(trial) => export::Choice::Trial(trial),
                None => export::Choice::Best(best.filter(|s| !s.is_empty()), metric),
            };
            let (trial, record) = export::choose(&plan, &records, &choice)?;
            let device = device.unwrap_or(DeviceChoice::Auto).open()?;
            let exported = export::export(&run_store, trial, &record, &out, &device, &|m| {
                eprintln!("{m}")
            })?;
            let p = &exported.provenance;
            eprintln!(
                "exported trial {} ({} t={} f={}) to {}: accuracy {:.4} recorded, {:.4} measured now",
                p.trial,
                p.strategies.join("="),
                p.transfer_depth,
                p.freeze_depth,
                out.display(),
                p.eval.accuracy,
                p.exported_accuracy
            );
            Ok(exit::SUCCESS)
        }
        Command::Predict {
            model,
            inputs,
            top,
            format,
            device,
        } => {
            let device = device.unwrap_or(DeviceChoice::Auto).open()?;
            let loaded = export::Loaded::open(&model, &device)?;
            let inputs = export::inputs(&loaded.exported, &inputs)?;
            let predictions = loaded.predict(&inputs, usize::from(top), &device)?;
            match format {
                PredictFormat::Json => {
                    let json =
                        serde_json::to_string_pretty(&predictions).expect("predictions serialise");
                    println!("{json}");
                }
                PredictFormat::Text => {
                    for p in &predictions {
                        let top: Vec<String> = (p.top.iter())
                            .map(|r| format!("{} {:.4}", r.class, r.probability))
                            .collect();
                        println!("{}: {}", p.input, top.join(", "));
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        Command::Sync { run, to, store } => {
            let run_store = RunStore::find(&run, &store)?;
            let target = Target::for_sync(to, &run_store.saved_spec()?)?;
            let outcome = xferlab::tracking::sync(&target, &run_store, &|m| eprintln!("{m}"))?;
            eprint!("{}", outcome.describe(&target, run_store.root()));
            Ok(match outcome.missed.is_empty() && outcome.ended {
                true => exit::SUCCESS,
                false => exit::FAILED,
            })
        }
        Command::Models => {
            for (model, input) in xferlab::model::summary::examples() {
                print!(
                    "{}",
                    models::table(&xferlab::model::summary::summary(&model, input)?)
                );
            }
            Ok(exit::SUCCESS)
        }
        Command::Schema => {
            print!("{}", spec::json_schema());
            Ok(exit::SUCCESS)
        }
    }
}
