//! `cargo xtask`: the project's command line — a thin layer over the `shaping` library.

mod batches_cmd;
mod bench;
mod exit;
mod export_cmd;
mod judge_cmd;
mod quality_cmds;
mod workspace;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shaping::ShapingExitCode;

use workspace::Workspace;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Training data as a build artifact: build, check and inspect datasets."
)]
struct Cli {
    /// The repository to act on (default: `$SHAPING_ROOT`, else the nearest directory above the
    /// current one holding models.toml).
    #[arg(long, global = true)]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List pipelines, their dependencies and outputs.
    List,
    /// Show each output as CURRENT / STALE (with reasons) / PARTIAL / MISSING.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit with STALE_DATA (4) unless everything is CURRENT (for CI).
        #[arg(long)]
        check: bool,
    },
    /// Run one pipeline now, whatever its status. Flags after the name go to the pipeline
    /// (--limit N, --workers N, -o PATH, --annotate / --no-annotate, --no-cache, --refresh,
    /// --no-wait, --batch).
    Run {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate exactly the outputs that are not CURRENT, in dependency order.
    Data {
        /// Only these pipelines (and whatever stale inputs they need).
        names: Vec<String>,
        /// Say what would run, and why, without running it.
        #[arg(long)]
        dry_run: bool,
        /// Regenerate the selected pipelines even if CURRENT.
        #[arg(long)]
        force: bool,
        /// Pipelines run at once within a dependency level (they split each model's limits).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Fail at once instead of waiting when another run is generating one of these outputs.
        #[arg(long)]
        no_wait: bool,
    },
    /// Scaffold a new pipeline crate under pipelines/.
    New { name: String },
    /// Show the response caches (size, entries) and prune them.
    Cache {
        /// Remove answers stored more than this many days ago.
        #[arg(long)]
        prune_older_than: Option<u64>,
        /// Delete the cache of these pipelines (all with --all).
        #[arg(long)]
        clear: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Batch jobs (`run --batch`, `batch = true`): list them with their live status, cancel
    /// one, or remove downloaded ones.
    Batches {
        /// Cancel this job (our id or the provider's).
        #[arg(long, conflicts_with = "clean")]
        cancel: Option<String>,
        /// Remove the files of downloaded jobs.
        #[arg(long)]
        clean: bool,
        /// Show saved state only; do not ask the providers.
        #[arg(long)]
        offline: bool,
    },
    /// Install build prerequisites (cmake, clang) and fetch the default local model.
    Setup,
    /// Random samples of a dataset, readable in a terminal.
    Sample {
        name: String,
        #[arg(short = 'n', long = "n", default_value_t = quality_cmds::DEFAULT_SAMPLE_N)]
        n: usize,
        /// Complete prompts and responses instead of truncated ones.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The validation checklist, automated: per-sample detectors and dataset checks. Exit code 0
    /// when everything passes, CHECKS_FAILED (3) when a check fails, SETUP_ERROR (7) when the
    /// input cannot be checked.
    Check {
        /// Only these datasets (default: all, plus the training-set check over all of them).
        #[arg(conflicts_with = "file")]
        names: Vec<String>,
        /// Check any JSONL of samples, conversations (`{"id"?, "messages"}`) or preference
        /// pairs (`{"id"?, "prompt", "chosen", "rejected"}`), with the default thresholds and
        /// identity/voice.toml, as a whole training set.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// Machine-readable output (with --file: one JSON object per sample, then the results).
        #[arg(long)]
        json: bool,
        /// List every failing sample with its reasons.
        #[arg(long)]
        samples: bool,
        /// Also score every sample 1-5 with a hosted judge model (cost shown first; answers cached).
        #[arg(long, conflicts_with = "file")]
        judge: bool,
        /// The model alias that judges.
        #[arg(long, default_value = shaping::judge::DEFAULT_ALIAS, requires = "judge")]
        judge_model: String,
    },
    /// Write a self-contained HTML report per dataset.
    Report {
        names: Vec<String>,
        /// Directory for the pages (default training/report).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Run the review snapshot tests and open the review of changed datasets.
    Review,
    /// Write a dataset in a training-ready format (trl, openai, sharegpt, parquet) and
    /// optionally push it to the Hugging Face Hub. Refuses data that is not CURRENT
    /// (STALE_DATA (4)) unless --allow-stale.
    Export(export_cmd::ExportArgs),
    /// Benchmark the dispatcher: bench-pipeline (built like `run` builds pipelines) against a separate mock-llm.
    Bench(bench::BenchArgs),
    /// Run every test of the workspace (after setup). Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    shaping::cli::exit_quietly_on_closed_pipe();
    let code = match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of_error(&e)
        }
    };
    exit::process(code)
}

/// Run a command; the exit code it ends with ([`ShapingExitCode`]).
fn run(cli: Cli) -> Result<i32> {
    let ws = Workspace::discover(cli.root.as_deref())?;
    match cli.command {
        Command::Bench(args) => {
            bench::bench_cmd(args, ws.root())?;
            Ok(ShapingExitCode::OK)
        }
        Command::List => {
            let pipelines = ws.describe_all()?;
            for d in &pipelines {
                println!("{}  → {}", d.name, d.output);
                for f in &d.files {
                    println!("    file  {} = {}", f.name, f.path);
                }
                for m in &d.models {
                    println!("    model {m}");
                }
            }
            Ok(ShapingExitCode::OK)
        }
        Command::Status { json, check } => {
            let pipelines = ws.describe_all()?;
            let evaluated = ws.evaluate(&pipelines)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&evaluated)?);
            } else {
                for e in &evaluated {
                    println!("{}: {}", e.name, e.status);
                    // A lowered bar is always visible: every loosened threshold and its reason.
                    let quality = pipelines
                        .iter()
                        .find(|d| d.name == e.name)
                        .map(|d| &d.quality);
                    if let Some(Ok(config)) = quality.map(|q| {
                        serde_json::from_value::<shaping::quality::QualityConfig>(q.clone())
                    }) {
                        for loosening in config.loosenings() {
                            println!("  quality threshold {loosening}");
                        }
                    }
                    println!();
                }
            }
            let all_current = evaluated.iter().all(|e| e.status.is_current());
            if check && !all_current {
                let stale: Vec<&str> = evaluated
                    .iter()
                    .filter(|e| !e.status.is_current())
                    .map(|e| e.name.as_str())
                    .collect();
                eprintln!(
                    "not CURRENT: {}. Run `cargo xtask data` to regenerate them, then commit the outputs.",
                    stale.join(", ")
                );
                return Ok(ShapingExitCode::STALE_DATA);
            }
            Ok(ShapingExitCode::OK)
        }
        Command::Run { name, args } => {
            let pipelines = ws.describe_all()?;
            let Some(d) = pipelines.iter().find(|d| d.name == name) else {
                return Err(unknown_pipeline(&name, &pipelines).into());
            };
            ws.ensure_models(std::slice::from_ref(d))?;
            let status = ws.run_pipeline(&d.name, &args, 1, false)?;
            Ok(exit::code_of_child(status))
        }
        Command::Data {
            names: selected,
            dry_run,
            force,
            jobs,
            no_wait,
        } => ws.data(&selected, dry_run, force, jobs, no_wait),
        Command::New { name } => {
            let dir = ws.scaffold(&name)?;
            println!(
                "created {} — build and run it with `cargo xtask run {name} --limit 3`",
                dir.display()
            );
            Ok(ShapingExitCode::OK)
        }
        Command::Cache {
            prune_older_than,
            clear,
            all,
        } => {
            if all || !clear.is_empty() {
                for info in shaping::cache::list_caches(ws.root())? {
                    if all || clear.contains(&info.pipeline) {
                        std::fs::remove_file(&info.path)
                            .with_context(|| format!("removing {}", info.path.display()))?;
                        println!("cleared {} ({} answers)", info.pipeline, info.entries);
                    }
                }
            }
            if let Some(days) = prune_older_than {
                for info in shaping::cache::list_caches(ws.root())? {
                    let removed = shaping::cache::prune(&info.path, days * 86_400)?;
                    println!(
                        "{}: pruned {removed} answers older than {days} days",
                        info.pipeline
                    );
                }
            }
            let infos = shaping::cache::list_caches(ws.root())?;
            if infos.is_empty() {
                println!(
                    "no response caches yet ({})",
                    ws.root().join(".shaping/cache").display()
                );
            }
            let mut total = 0;
            for info in &infos {
                total += info.bytes;
                println!(
                    "{:<28} {:>8} answers {:>10}",
                    info.pipeline,
                    info.entries,
                    human_bytes(info.bytes)
                );
            }
            if infos.len() > 1 {
                println!(
                    "{:<28} {:>8}         {:>10}",
                    "total",
                    "",
                    human_bytes(total)
                );
            }
            Ok(ShapingExitCode::OK)
        }
        Command::Batches {
            cancel,
            clean,
            offline,
        } => batches_cmd::batches(ws.root(), cancel.as_deref(), clean, offline),
        Command::Setup => {
            workspace::ensure_build_prerequisites()?;
            let pipelines = ws.describe_all()?;
            ws.ensure_models(&pipelines)?;
            println!("ready: prerequisites installed, pipelines built, local models present");
            Ok(ShapingExitCode::OK)
        }
        Command::Sample {
            name,
            n,
            full,
            seed,
        } => {
            let datasets = datasets(&ws, std::slice::from_ref(&name))?;
            quality_cmds::sample_cmd(&datasets[0], n, full, seed)?;
            Ok(ShapingExitCode::OK)
        }
        Command::Check {
            names,
            file,
            json,
            samples,
            judge,
            judge_model,
        } => {
            let output = quality_cmds::CheckOutput { json, samples };
            let outcome = match &file {
                Some(path) => quality_cmds::check_file_cmd(path, output, ws.root()),
                None => datasets(&ws, &names).and_then(|datasets| {
                    let passed =
                        quality_cmds::check_cmd(&datasets, output, ws.root(), names.is_empty())?;
                    if judge {
                        let judged =
                            judge_cmd::judge_cmd(&datasets, ws.root(), &judge_model, json)?;
                        return Ok(passed && judged);
                    }
                    Ok(passed)
                }),
            };
            match outcome {
                Ok(true) => Ok(ShapingExitCode::OK),
                Ok(false) => Ok(ShapingExitCode::CHECKS_FAILED),
                // Input that cannot be checked is a set-up error, whatever the error's type.
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(match exit::code_of_error(&e) {
                        ShapingExitCode::UNEXPECTED => ShapingExitCode::SETUP_ERROR,
                        code => code,
                    })
                }
            }
        }
        Command::Report { names, out } => {
            let datasets = datasets(&ws, &names)?;
            let out = out.unwrap_or_else(|| ws.root().join("training").join("report"));
            for page in quality_cmds::report_cmd(&datasets, &out)? {
                println!("wrote {}", page.display());
            }
            Ok(ShapingExitCode::OK)
        }
        Command::Review => {
            let passed = quality_cmds::review_cmd(ws.root())?;
            Ok(if passed {
                ShapingExitCode::OK
            } else {
                ShapingExitCode::CHECKS_FAILED
            })
        }
        Command::Export(args) => export_cmd::export_cmd(&ws, args),
        Command::Test { args } => {
            workspace::ensure_build_prerequisites()?;
            ws.ensure_all_local_models()?;
            let status = shaping::repo::cargo_command()
                .args(["test", "--workspace"])
                .args(&args)
                .current_dir(ws.root())
                .status()
                .context("running cargo test")?;
            Ok(exit::code_of_child(status))
        }
    }
}

/// The datasets of the named pipelines (all when `names` is empty).
fn datasets(ws: &Workspace, names: &[String]) -> Result<Vec<quality_cmds::DatasetInfo>> {
    let pipelines = ws.describe_all()?;
    for name in names {
        if !pipelines.iter().any(|d| &d.name == name) {
            return Err(unknown_pipeline(name, &pipelines).into());
        }
    }
    pipelines
        .iter()
        .filter(|d| names.is_empty() || names.contains(&d.name))
        .map(|d| {
            let output = ws.root().join(&d.output);
            Ok(quality_cmds::DatasetInfo {
                name: d.name.clone(),
                manifest: shaping::manifest::Manifest::path_for(&output),
                output,
                quality: serde_json::from_value(d.quality.clone())
                    .with_context(|| format!("quality config of '{}'", d.name))?,
            })
        })
        .collect()
}

/// The error for a pipeline name that is not in the workspace.
pub(crate) fn unknown_pipeline(
    name: &str,
    pipelines: &[shaping::description::Description],
) -> exit::XtaskError {
    exit::XtaskError::UnknownPipeline {
        name: name.to_owned(),
        known: pipelines
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
