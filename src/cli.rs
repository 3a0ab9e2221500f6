//! The command line of a pipeline binary: `describe` (for xtask) and `run` (the default), with atomic outputs and a manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cache::{ResponseCache, cache_path};
use crate::dispatch::{CacheMode, DispatchOptions, DispatchStats, Dispatcher};
use crate::fingerprint::FileHasher;
use crate::manifest::{FileFingerprint, Manifest, RunSummary, errors_path_for};
use crate::models::ModelsConfig;
use crate::output::JsonlWriter;
use crate::pipeline::{AFTER_ALL_RECORDS, BoundModel, Ctx, CtxInner, Declare};
use crate::pipeline::{Pipeline, SampleSink};
use crate::sample::{AnnotatedSample, ErrorRecord, PipelineError, TrainingSample};

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
#[derive(Debug, Clone, Args, Default)]
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
}

/// What `describe` prints: everything xtask needs to fingerprint a pipeline without running it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    pub name: String,
    pub crate_dir: PathBuf,
    /// Default output, relative to the repository root.
    pub output: String,
    pub annotated: bool,
    pub files: Vec<DeclaredFile>,
    pub models: Vec<String>,
    pub quality: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclaredFile {
    pub name: String,
    pub path: String,
}

/// Errors of a pipeline binary (printed with their chain).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    #[error(transparent)]
    Models(#[from] crate::models::ModelsError),
    #[error(transparent)]
    Dispatch(#[from] crate::dispatch::DispatchError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    Fingerprint(#[from] crate::fingerprint::FingerprintError),
    #[error(transparent)]
    Quality(#[from] crate::quality::QualityError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("pipeline '{pipeline}' declares invalid dependencies:\n  - {}", .errors.join("\n  - "))]
    Declaration {
        pipeline: String,
        errors: Vec<String>,
    },
    #[error("pipeline '{pipeline}' failed: {error}")]
    Pipeline {
        pipeline: String,
        error: PipelineError,
    },
    #[error(
        "{failed} of {total} records failed (more than --max-error-share {share}); the previous output was kept. Errors: {errors}"
    )]
    TooManyErrors {
        failed: u64,
        total: u64,
        share: f64,
        errors: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Default output path of a pipeline, relative to the root.
pub fn default_output(name: &str) -> String {
    format!("training/data/{name}.jsonl")
}

/// Entry point of a pipeline binary (see [`crate::pipeline_main!`]): finds the repository from
/// the current directory (or `--root` / `SHAPING_ROOT`), refuses to act on a repository whose
/// sources the binary was not built from, then describes or runs.
pub fn run_main<P: Pipeline>(origin: crate::repo::BuildOrigin) -> ExitCode {
    exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = crate::repo::find_root_from(cli.root.as_deref())
        .and_then(|root| origin.check(&root).map(|crate_dir| (root, crate_dir)))
        .map_err(RunError::from)
        .and_then(|(root, crate_dir)| match cli.command {
            Some(Command::Describe) => describe_in::<P>(&root, &crate_dir).map(|d| {
                println!(
                    "{}",
                    serde_json::to_string(&d).expect("description serializes")
                );
                ExitCode::SUCCESS
            }),
            Some(Command::Run(args)) => run_in::<P>(&root, &crate_dir, args),
            None => run_in::<P>(&root, &crate_dir, cli.run),
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
            std::process::exit(141);
        }
        previous(info);
    }));
}

fn declare<P: Pipeline>(root: &Path) -> Result<(P, Declare), RunError> {
    let mut declare = Declare::new(root);
    let pipeline = P::declare(&mut declare);
    if !declare.errors.is_empty() {
        return Err(RunError::Declaration {
            pipeline: P::NAME.to_owned(),
            errors: declare.errors,
        });
    }
    Ok((pipeline, declare))
}

/// The pipeline's declaration in the repository at `root`.
pub fn describe_in<P: Pipeline>(root: &Path, crate_dir: &Path) -> Result<Description, RunError> {
    let (pipeline, declare) = declare::<P>(root)?;
    pipeline.quality().validate()?;
    Ok(Description {
        name: P::NAME.to_owned(),
        crate_dir: crate_dir.to_owned(),
        output: default_output(P::NAME),
        annotated: P::ANNOTATED,
        files: declare
            .files
            .iter()
            .map(|f| DeclaredFile {
                name: f.name().to_owned(),
                path: f.rel_path().to_owned(),
            })
            .collect(),
        models: declare
            .models
            .iter()
            .map(|m| m.alias().to_owned())
            .collect(),
        quality: pipeline_quality(&pipeline),
    })
}

fn pipeline_quality<P: Pipeline>(pipeline: &P) -> serde_json::Value {
    serde_json::to_value(pipeline.quality()).expect("quality config serializes")
}

/// The current git commit and whether the work tree has uncommitted changes (one `git status`
/// call; `("unknown", false)` outside a repository or without git).
pub fn git_commit(root: &Path) -> (String, bool) {
    let Some(status) = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=no",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
    else {
        return ("unknown".to_owned(), false);
    };
    let text = String::from_utf8_lossy(&status.stdout);
    let commit = text
        .lines()
        .find_map(|line| line.strip_prefix("# branch.oid "))
        .filter(|oid| oid.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or("unknown")
        .to_owned();
    let dirty = text
        .lines()
        .any(|line| !line.is_empty() && !line.starts_with('#'));
    (commit, dirty)
}

struct FileSink {
    annotate: bool,
    output: JsonlWriter,
    errors: JsonlWriter,
}

impl SampleSink for FileSink {
    fn sample(&mut self, place: u64, sample: TrainingSample) -> Result<(), PipelineError> {
        let written = if self.annotate {
            self.output.at(place).write(&AnnotatedSample::from(sample))
        } else {
            self.output
                .at(place)
                .write(&TrainingSample::new(sample.id, sample.messages))
        };
        written.map_err(|e| PipelineError::new(e.to_string(), "output_error"))
    }

    fn error(&mut self, place: u64, record: ErrorRecord) -> Result<(), PipelineError> {
        self.errors
            .at(place)
            .write(&record)
            .map_err(|e| PipelineError::new(e.to_string(), "output_error"))
    }
}

fn budget_share() -> u32 {
    std::env::var("SHAPING_BUDGET_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(1)
}

/// Run a pipeline in the repository at `root`: outputs are replaced only after a complete,
/// successful run. Must not be called from inside an async runtime (it starts its own).
pub fn run_in<P: Pipeline>(
    root: &Path,
    crate_dir: &Path,
    args: RunArgs,
) -> Result<ExitCode, RunError> {
    let root = root.to_owned();
    // One run per pipeline at a time, taken before anything is read, cached or written.
    let wait = if args.no_wait {
        crate::lock::Wait::No
    } else {
        crate::lock::Wait::Yes
    };
    let _run_lock = crate::lock::acquire(&root, P::NAME, wait)?;
    // `git status` takes longer than everything else before the first request: overlap it.
    let git_status = {
        let root = root.clone();
        std::thread::spawn(move || git_commit(&root))
    };
    let (pipeline, declared) = declare::<P>(&root)?;
    let quality = pipeline.quality();
    quality.validate()?;
    let voice = crate::quality::Voice::load(&root)?;
    let detectors = Arc::new(crate::quality::Detectors::new(&voice, &quality)?);
    let models = ModelsConfig::load(&root)?;
    let hasher = FileHasher::for_repo(&root);

    // Fingerprint inputs before running: the manifest records what was read.
    let mut files = BTreeMap::new();
    for dep in &declared.files {
        let sha256 = hasher
            .hash_path(dep.path())
            .map_err(|e| RunError::Declaration {
                pipeline: P::NAME.to_owned(),
                errors: vec![format!("file dependency '{}': {e}", dep.name())],
            })?;
        files.insert(
            dep.name().to_owned(),
            FileFingerprint {
                path: dep.rel_path().to_owned(),
                sha256,
            },
        );
    }
    let code_hash = crate::fingerprint::code_hash(&root, crate_dir, &hasher)?;
    let specs = declared
        .models
        .iter()
        .map(|m| models.get(m.alias()).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    let (commit, dirty) = git_status
        .join()
        .unwrap_or_else(|_| ("unknown".to_owned(), false));

    let output = match &args.output {
        Some(path) if path.is_absolute() => path.clone(),
        Some(path) => std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.clone()),
        None => root.join(default_output(P::NAME)),
    };
    let annotate = if args.annotate {
        true
    } else if args.no_annotate {
        false
    } else {
        P::ANNOTATED
    };
    let cache_mode = if args.no_cache {
        CacheMode::Off
    } else if args.refresh {
        CacheMode::Refresh
    } else {
        CacheMode::ReadWrite
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let outcome = runtime.block_on(async move {
        let cache = if cache_mode == CacheMode::Off {
            None
        } else {
            Some(Arc::new(ResponseCache::open(&cache_path(&root, P::NAME))?))
        };
        let options = DispatchOptions { workers: args.workers, cache_mode, budget_share: budget_share(), ..Default::default() };
        let dispatcher = Arc::new(Dispatcher::new(options, cache));
        let mut bound = BTreeMap::new();
        for spec in specs {
            let lane = dispatcher.lane(&spec)?;
            bound.insert(spec.alias.clone(), BoundModel { fingerprint: spec.fingerprint(), spec, lane });
        }
        let lane_capacity: usize = bound.values().map(|b| b.spec.max_concurrency).sum();
        let window = args.workers.unwrap_or(lane_capacity.max(16)).saturating_mul(2).max(16);
        let progress = crate::progress::Progress::new(P::NAME, Arc::clone(&dispatcher.stats), args.quiet);
        let sink = FileSink {
            annotate,
            output: JsonlWriter::create(&output)?,
            errors: JsonlWriter::create(&errors_path_for(&output))?,
        };
        let inner = Arc::new(CtxInner {
            pipeline: P::NAME.to_owned(),
            root: root.clone(),
            dispatcher: Arc::clone(&dispatcher),
            models: bound,
            limit: args.limit,
            window,
            queries: AtomicU32::new(0),
            sink: Mutex::new(Box::new(sink)),
            reports: Mutex::default(),
            progress: Arc::clone(&progress),
            records_done: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            records_filtered: AtomicU64::new(0),
            detectors: Arc::clone(&detectors),
            best_of: Default::default(),
        });
        let ctx = Ctx { inner: Arc::clone(&inner) };

        let interrupted = {
            let dispatcher = Arc::clone(&dispatcher);
            async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    dispatcher.cancel();
                    eprintln!("\ninterrupted: stopping (answers received so far are cached)…");
                    // Give in-flight work a moment to settle, then give up on the pipeline future.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                } else {
                    std::future::pending::<()>().await;
                }
            }
        };
        let result = tokio::select! {
            result = pipeline.run(&ctx) => Some(result),
            () = interrupted => None,
        };
        progress.finish();
        let resume = format!("cargo xtask run {}", P::NAME);
        if dispatcher.is_cancelled() || result.is_none() {
            eprintln!(
                "interrupted: the previous output was left untouched; {} answers are cached. Rerun `{resume}` to resume (cached answers are free).",
                DispatchStats::get(&dispatcher.stats.responses_ok)
            );
            return Ok(ExitCode::from(130));
        }
        let mut samples = result.expect("checked above").map_err(|error| RunError::Pipeline { pipeline: P::NAME.to_owned(), error })?;
        if let Some(limit) = args.limit {
            samples.truncate(limit);
        }
        let ctx_inner = Arc::clone(&inner);
        drop(ctx);
        let sink_box = std::mem::replace(
            &mut *ctx_inner.sink.lock().expect("sink lock"),
            Box::new(NullSink) as Box<dyn SampleSink>,
        );
        // The only sink ever installed above is a FileSink.
        let sink_any: Box<dyn std::any::Any + Send> = sink_box;
        let mut sink = *sink_any.downcast::<FileSink>().map_err(|_| RunError::Runtime(std::io::Error::other("unexpected sink")))?;
        for sample in samples {
            sink.sample(AFTER_ALL_RECORDS, sample).map_err(|error| RunError::Pipeline { pipeline: P::NAME.to_owned(), error })?;
        }
        let failed = ctx_inner.records_failed.load(Ordering::Relaxed);
        let done = ctx_inner.records_done.load(Ordering::Relaxed);
        let filtered = ctx_inner.records_filtered.load(Ordering::Relaxed);
        // Filtered records are quality rejections, reported as the acceptance rate; the
        // error-share gate guards against faults (an outage must not empty a dataset).
        let total = failed + done;
        let errors_path = errors_path_for(&output);
        if total > 0 && failed as f64 > args.max_error_share * total as f64 {
            let kept = root.join(".shaping").join("failed-runs").join(format!("{}.errors.jsonl", P::NAME));
            std::fs::create_dir_all(kept.parent().expect("has parent")).ok();
            let sink_errors = sink.errors;
            drop(sink.output);
            // Keep the failed run's error records for inspection, away from the training data.
            let _ = sink_errors.commit().and_then(|_| {
                std::fs::rename(&errors_path, &kept).map_err(|source| crate::output::OutputError::Io { path: kept.clone(), source })
            });
            return Err(RunError::TooManyErrors { failed, total, share: args.max_error_share, errors: kept.display().to_string() });
        }
        let samples_written = sink.output.lines();
        let errors_written = sink.errors.lines();
        let output_sha256 = sink.output.commit()?;
        sink.errors.commit()?;
        if errors_written == 0 {
            let _ = std::fs::remove_file(&errors_path);
        }

        let stats = &dispatcher.stats;
        let mut cost = None::<f64>;
        for bound in ctx_inner.models.values() {
            let usage = bound.lane.usage();
            if let Some(c) = bound.spec.cost(usage.input_tokens, usage.output_tokens) {
                *cost.get_or_insert(0.0) += c;
            }
        }
        let summary = RunSummary {
            records: total + filtered,
            requests_sent: DispatchStats::get(&stats.requests_sent),
            cache_hits: DispatchStats::get(&stats.cache_hits),
            retries: DispatchStats::get(&stats.retries),
            failed_requests: DispatchStats::get(&stats.failed),
            input_tokens: DispatchStats::get(&stats.input_tokens),
            output_tokens: DispatchStats::get(&stats.output_tokens),
            estimated_cost_usd: cost,
            wall_time_secs: (progress.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        };
        let mut reports = std::mem::take(&mut *ctx_inner.reports.lock().expect("reports lock"));
        if let Some(best_of) = ctx_inner.best_of.report() {
            reports.insert("best_of".to_owned(), serde_json::to_value(best_of).expect("best-of report serializes"));
        }
        // The quality checks of what was just written (reported, not enforced: `cargo xtask check` gates).
        let checks = crate::quality::check(&output, &quality, &voice)
            .map(|report| serde_json::to_value(report).expect("check report serializes"))
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        let manifest = Manifest {
            schema: crate::manifest::MANIFEST_SCHEMA,
            pipeline: P::NAME.to_owned(),
            output: crate::repo::display_relative(&root, &output),
            generated_at: OffsetDateTime::now_utc(),
            pipeline_commit: commit,
            commit_dirty: dirty,
            code_hash,
            files,
            models: ctx_inner.models.iter().map(|(alias, b)| (alias.clone(), b.fingerprint.clone())).collect(),
            limit: args.limit.map(|l| l as u64),
            annotated: annotate,
            samples: samples_written,
            errors: errors_written,
            output_sha256,
            run: summary.clone(),
            reports,
            quality: Some(serde_json::to_value(&quality).expect("quality config serializes")),
            checks: Some(checks),
            judge: None,
        };
        manifest.write(&Manifest::path_for(&output))?;
        print_summary(P::NAME, &manifest, &output);
        Ok(ExitCode::SUCCESS)
    });
    if matches!(outcome, Ok(ExitCode::SUCCESS)) {
        // Everything is written and every answer is committed to the cache: do not wait for
        // idle connections and timers to wind down.
        runtime.shutdown_background();
    }
    outcome
}

struct NullSink;
impl SampleSink for NullSink {
    fn sample(&mut self, _: u64, _: TrainingSample) -> Result<(), PipelineError> {
        Ok(())
    }
    fn error(&mut self, _: u64, _: ErrorRecord) -> Result<(), PipelineError> {
        Ok(())
    }
}

fn print_summary(name: &str, manifest: &Manifest, output: &Path) {
    let r = &manifest.run;
    let cost = r
        .estimated_cost_usd
        .map(|c| format!(", estimated cost ${c:.4}"))
        .unwrap_or_default();
    eprintln!(
        "{name}: {} samples, {} errors → {}\n  {} requests sent, {} cache hits, {} retries, {} failed requests; tokens {} in / {} out{cost}; {:.1}s",
        manifest.samples,
        manifest.errors,
        output.display(),
        r.requests_sent,
        r.cache_hits,
        r.retries,
        r.failed_requests,
        r.input_tokens,
        r.output_tokens,
        r.wall_time_secs,
    );
    for (key, value) in &manifest.reports {
        eprintln!("  {key}: {value}");
    }
    if let Some(checks) = &manifest.checks {
        let failed: Vec<&str> = checks["checks"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["passed"] == false)
                    .filter_map(|c| c["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if failed.is_empty() {
            eprintln!("  quality checks: all passed");
        } else {
            eprintln!(
                "  quality checks failing: {} (details: cargo xtask check {name})",
                failed.join(", ")
            );
        }
    }
}
