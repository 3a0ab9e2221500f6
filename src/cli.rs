//! The command line of a pipeline binary: `describe` (for xtask) and `run` (the default), parsed into the run's options; the run itself is `crate::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::dispatch::CacheMode;
use crate::exit_code::ShapingExitCode;
use crate::pipeline::Pipeline;
use crate::run::{RunOptions, describe_in, run_in};

/// Write `fn main` for a pipeline crate: `shaping::pipeline_main!(MyPipeline);`.
///
/// It records where the binary was built ([`crate::repo::BuildOrigin`]) so that the binary
/// refuses to act on a repository whose sources it was not built from.
#[macro_export]
macro_rules! pipeline_main {
    ($pipeline:ty) => {
        fn main() -> ::std::process::ExitCode {
            $crate::run_main::<$pipeline>($crate::repo::BuildOrigin {
                crate_dir: env!("CARGO_MANIFEST_DIR"),
                repo: option_env!("SHAPING_BUILD_REPO"),
            })
        }
    };
}

#[derive(Debug, Parser)]
#[command(about = "A shaping pipeline. Without a subcommand it runs (same flags as `run`).")]
struct Cli {
    /// The repository to act on (default: `$SHAPING_ROOT`, else the nearest directory above the
    /// current one holding models.toml).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the pipeline's declaration as JSON (used by `cargo xtask`).
    Describe,
    /// Run the pipeline and write its output and manifest.
    Run(RunArgs),
}

/// Flags of a run (shared with `cargo xtask run`).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Process only the first N records (the output is PARTIAL until a full run).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Global cap on requests in flight (at least 1).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub workers: Option<usize>,
    /// Write here instead of `training/data/<name>.jsonl` (manifest beside it).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write provenance (input, steps, timing) with every sample.
    #[arg(long, conflicts_with = "no_annotate")]
    pub annotate: bool,
    /// Write minimal samples (id, messages).
    #[arg(long)]
    pub no_annotate: bool,
    /// Neither replay nor store cached answers.
    #[arg(long, conflicts_with = "refresh")]
    pub no_cache: bool,
    /// Ignore cached answers (ask again) but store the new ones.
    #[arg(long)]
    pub refresh: bool,
    /// Refuse to replace the output when more than this share of records failed (0–1).
    #[arg(long, default_value_t = 0.5)]
    pub max_error_share: f64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Fail at once instead of waiting when another run of this pipeline holds its lock.
    #[arg(long)]
    pub no_wait: bool,
    /// Send requests through the providers' batch APIs (OpenAI Batch, Anthropic Message
    /// Batches) at batch prices: answers can take up to 24 hours; an interrupted run resumes
    /// its jobs.
    #[arg(long)]
    pub batch: bool,
}

/// Entry point of a pipeline binary (see [`crate::pipeline_main!`]): finds the repository from
/// the current directory (or `--root` / `SHAPING_ROOT`), refuses to act on a repository whose
/// sources the binary was not built from, then describes or runs.
pub fn run_main<P: Pipeline>(origin: crate::repo::BuildOrigin) -> ExitCode {
    exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = crate::repo::find_root_from(cli.root.as_deref())
        .and_then(|root| origin.check(&root).map(|crate_dir| (root, crate_dir)))
        .map_err(crate::run::RunError::from)
        .and_then(|(root, crate_dir)| match cli.command {
            Some(Command::Describe) => describe_in::<P>(&root, &crate_dir).map(|d| {
                println!(
                    "{}",
                    serde_json::to_string(&d).expect("description serializes")
                );
                ExitCode::SUCCESS
            }),
            Some(Command::Run(args)) => run_in::<P>(&root, &crate_dir, args.into()),
            None => run_in::<P>(&root, &crate_dir, cli.run.into()),
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ShapingExitCode::process(e.exit_code())
        }
    }
}

/// Make a closed stdout or stderr (`cargo xtask list | head -1`) end the process quietly with
/// status 141 (128 + SIGPIPE, what a shell reports for a Unix tool killed by SIGPIPE) instead of
/// a panic and a backtrace. Rust ignores SIGPIPE, so `println!` panics on a closed pipe; this
/// panic hook recognizes that panic. Everything a run writes is atomic (temp file + rename) and
/// every answer is durable in the cache before use, so ending here loses nothing.
pub fn exit_quietly_on_closed_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let closed_pipe = (message.starts_with("failed printing to stdout")
            || message.starts_with("failed printing to stderr"))
            // EPIPE as `io::Error` displays it: "Broken pipe (os error 32)".
            && (message.contains("Broken pipe") || message.contains("os error 32"));
        if closed_pipe {
            std::process::exit(ShapingExitCode::CLOSED_PIPE);
        }
        previous(info);
    }));
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> Self {
        Self {
            limit: args.limit,
            workers: args.workers,
            output: args.output,
            annotate: match (args.annotate, args.no_annotate) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            cache_mode: if args.no_cache {
                CacheMode::Off
            } else if args.refresh {
                CacheMode::Refresh
            } else {
                CacheMode::ReadWrite
            },
            max_error_share: args.max_error_share,
            quiet: args.quiet,
            wait: if args.no_wait {
                crate::lock::Wait::No
            } else {
                crate::lock::Wait::Yes
            },
            batch: args.batch,
        }
    }
}
