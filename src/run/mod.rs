//! One run of a pipeline, in four phases: prepare (lock, declaration, fingerprints), execute (dispatcher, records, Ctrl-C), commit (the error-share gate, atomic outputs, manifest) and summary.
//!
//! The command line (`cli.rs`) only parses flags into [`RunOptions`]; tests and tools call
//! [`run_in`] directly.

mod commit;
mod prepare;
mod sink;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{ResponseCache, cache_path};
use crate::description::{DeclaredFile, Description, default_output};
use crate::dispatch::{CacheMode, DispatchOptions, DispatchStats, Dispatcher};
use crate::exit_code::ShapingExitCode;
use crate::models::ModelFingerprint;
use crate::pipeline::{
    AFTER_ALL_RECORDS, BoundModel, Ctx, CtxInner, Declare, Pipeline, SampleSink,
};
use crate::sample::{PipelineError, PipelineErrorKind, Sample};

pub use prepare::git_commit;

/// How to run a pipeline (what the flags of `run` say).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Process only the first N records (the output is PARTIAL until a full run).
    pub limit: Option<usize>,
    /// Global cap on requests in flight.
    pub workers: Option<usize>,
    /// Write here instead of `training/data/<name>.jsonl` (a relative path is taken from the
    /// current directory).
    pub output: Option<PathBuf>,
    /// Provenance with every sample (`Some(true)`), minimal samples (`Some(false)`), or the
    /// pipeline's default (`None`).
    pub annotate: Option<bool>,
    /// How the response cache is used (`--refresh`, `--no-cache`).
    pub cache_mode: CacheMode,
    /// Refuse to replace the output when more than this share of records failed (0–1).
    pub max_error_share: f64,
    /// No progress output.
    pub quiet: bool,
    /// Wait for another run of the pipeline that holds its lock, or fail at once.
    pub wait: crate::lock::Wait,
    /// Every model through its provider's batch API (`--batch`); an alias whose provider has
    /// none is an error before anything is sent.
    pub batch: bool,
}

impl Default for RunOptions {
    /// The defaults of the command line: cache on, 0.5 error share, progress shown, waiting.
    fn default() -> Self {
        Self {
            limit: None,
            workers: None,
            output: None,
            annotate: None,
            cache_mode: CacheMode::ReadWrite,
            max_error_share: 0.5,
            quiet: false,
            wait: crate::lock::Wait::Yes,
            batch: false,
        }
    }
}

/// Errors of a run (printed with their chain; [`RunError::exit_code`] maps them to the exit-code
/// contract).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The repository root was not found, or the binary was built from another repository.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// `models.toml` could not be read, or a declared alias is unknown or invalid.
    #[error(transparent)]
    Models(#[from] crate::models::ModelsError),
    /// A model's provider could not be built (a missing API key, a missing local model).
    #[error(transparent)]
    Dispatch(#[from] crate::dispatch::DispatchError),
    /// The pipeline's response cache could not be opened or written.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// Writing the output or errors file failed.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Writing the manifest failed.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Hashing the pipeline's code failed.
    #[error(transparent)]
    Fingerprint(#[from] crate::fingerprint::FingerprintError),
    /// The pipeline's quality config is invalid, or `identity/voice.toml` is.
    #[error(transparent)]
    Quality(#[from] crate::quality::QualityError),
    /// The run lock could not be taken: another run holds it (`--no-wait`), or the lock file
    /// failed.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// A declared file dependency is outside the repository or cannot be hashed.
    #[error("pipeline '{pipeline}' declares invalid dependencies:\n  - {}", .errors.join("\n  - "))]
    Declaration {
        /// The pipeline.
        pipeline: String,
        /// One message per invalid dependency.
        errors: Vec<String>,
    },
    /// `Pipeline::run` returned an error, or a sample it returned could not be written.
    #[error("pipeline '{pipeline}' failed: {error}")]
    Pipeline {
        /// The pipeline.
        pipeline: String,
        /// The error it returned.
        error: PipelineError,
    },
    /// More than `--max-error-share` of the records failed: the output was not replaced.
    #[error(
        "{failed} of {total} records failed (more than --max-error-share {share}); the previous output was kept. Errors: {errors}"
    )]
    TooManyErrors {
        /// Records that failed.
        failed: u64,
        /// Records that succeeded or failed (filtered ones not counted).
        total: u64,
        /// The `--max-error-share` exceeded.
        share: f64,
        /// Where the failed run's error records were kept
        /// (`.shaping/failed-runs/<name>.errors.jsonl`).
        errors: String,
    },
    /// The tokio runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl RunError {
    /// The process exit code for this error ([`ShapingExitCode`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            // A provider that cannot be built (a missing key, a missing local model) is set-up.
            Self::Repo(_)
            | Self::Models(_)
            | Self::Declaration { .. }
            | Self::Quality(_)
            | Self::Dispatch(_) => ShapingExitCode::SETUP_ERROR,
            Self::Lock(crate::lock::LockError::Busy { .. }) => ShapingExitCode::BUSY,
            Self::Pipeline { .. } => ShapingExitCode::PIPELINE_FAILED,
            Self::TooManyErrors { .. } => ShapingExitCode::TOO_MANY_RECORD_ERRORS,
            Self::Lock(_)
            | Self::Cache(_)
            | Self::Output(_)
            | Self::Manifest(_)
            | Self::Fingerprint(_)
            | Self::Runtime(_) => ShapingExitCode::UNEXPECTED,
        }
    }
}

/// The pipeline's declaration, refused when any dependency is invalid.
pub(crate) fn declare<P: Pipeline>(root: &Path) -> Result<(P, Declare), RunError> {
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

/// The pipeline's declaration in the repository at `root` (what `describe` prints).
pub fn describe_in<P: Pipeline>(root: &Path, crate_dir: &Path) -> Result<Description, RunError> {
    let (pipeline, declare) = declare::<P>(root)?;
    pipeline.quality().validate()?;
    Ok(Description {
        name: P::NAME.to_owned(),
        crate_dir: crate_dir.to_owned(),
        output: default_output(P::NAME),
        annotated: P::ANNOTATED,
        kind: <P::Sample as Sample>::KIND,
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
        quality: serde_json::to_value(pipeline.quality()).expect("quality config serializes"),
    })
}

/// What the execute phase hands to the commit: the records' outcome and what the run cost.
pub(crate) struct Executed {
    writers: sink::Writers,
    records_done: u64,
    records_failed: u64,
    records_filtered: u64,
    models: BTreeMap<String, ModelFingerprint>,
    estimated_cost_usd: Option<f64>,
    reports: BTreeMap<String, serde_json::Value>,
    stats: Arc<DispatchStats>,
    elapsed: Duration,
}

/// Run a pipeline in the repository at `root`: outputs are replaced only after a complete,
/// successful run. Must not be called from inside an async runtime (it starts its own).
pub fn run_in<P: Pipeline>(
    root: &Path,
    crate_dir: &Path,
    options: RunOptions,
) -> Result<ExitCode, RunError> {
    let prepared = prepare::prepare::<P>(root, crate_dir, &options)?;
    bound_transient_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let Some(executed) = runtime.block_on(execute(&prepared, &options))? else {
        return Ok(ShapingExitCode::process(ShapingExitCode::INTERRUPTED));
    };
    let manifest = commit::commit(&prepared, &options, executed)?;
    summary::print_summary(P::NAME, &manifest, &prepared.output);
    // Everything is written and every answer is committed to the cache: do not wait for idle
    // connections and timers to wind down.
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

/// Keep large short-lived buffers (a batch job's upload, downloads, growing hash tables) from
/// inflating the run's resident memory: glibc serves allocations of 128 KiB or more with their
/// own mappings and returns them to the system when freed. By default it raises that threshold
/// after the first such free, and later big buffers then come from the heap, where a run with
/// 100,000 requests waiting leaves them stranded between small allocations.
fn bound_transient_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the runtime's threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn budget_share() -> u32 {
    std::env::var("SHAPING_BUDGET_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(1)
}

/// Run the pipeline's records through one dispatcher; `None` when interrupted (Ctrl-C), with
/// nothing written.
async fn execute<P: Pipeline>(
    prepared: &prepare::Prepared<P>,
    options: &RunOptions,
) -> Result<Option<Executed>, RunError> {
    let cache = if options.cache_mode == CacheMode::Off {
        None
    } else {
        Some(Arc::new(ResponseCache::open(&cache_path(
            &prepared.root,
            P::NAME,
        ))?))
    };
    let dispatch_options = DispatchOptions {
        workers: options.workers,
        cache_mode: options.cache_mode,
        budget_share: budget_share(),
        batch_dir: Some(crate::provider::batch::pipeline_dir(
            &prepared.root,
            P::NAME,
        )),
        ..Default::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(dispatch_options, cache));
    let mut bound = BTreeMap::new();
    for spec in &prepared.specs {
        let lane = dispatcher.lane(spec)?;
        bound.insert(
            spec.alias.clone(),
            BoundModel {
                fingerprint: spec.fingerprint(),
                spec: spec.clone(),
                lane,
            },
        );
    }
    // Before any record starts: batch APIs exist and take the key, saved jobs are picked up.
    dispatcher.preflight().await?;
    let lane_capacity: usize = bound.values().map(|b| b.spec.max_concurrency).sum();
    let window = options
        .workers
        .unwrap_or(lane_capacity.max(16))
        .saturating_mul(2)
        .max(16);
    let progress =
        crate::progress::Progress::new(P::NAME, Arc::clone(&dispatcher.stats), options.quiet);
    let sink = Arc::new(Mutex::new(sink::FileSink::create(
        &prepared.output,
        &prepared.errors,
        prepared.annotate,
    )?));
    let inner = Arc::new(CtxInner {
        pipeline: P::NAME.to_owned(),
        root: prepared.root.clone(),
        dispatcher: Arc::clone(&dispatcher),
        models: bound,
        limit: options.limit,
        window,
        queries: AtomicU32::new(0),
        sink: Arc::clone(&sink) as Arc<Mutex<dyn SampleSink>>,
        reports: Mutex::default(),
        progress: Arc::clone(&progress),
        records_done: AtomicU64::new(0),
        records_failed: AtomicU64::new(0),
        records_filtered: AtomicU64::new(0),
        detectors: Arc::clone(&prepared.detectors),
        best_of: Default::default(),
    });
    let ctx = Ctx {
        inner: Arc::clone(&inner),
    };

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
        result = prepared.pipeline.run(&ctx) => Some(result),
        () = interrupted => None,
    };
    progress.finish();
    let Some(result) = result.filter(|_| !dispatcher.is_cancelled()) else {
        eprintln!(
            "interrupted: the previous output was left untouched; {} answers are cached. Rerun `cargo xtask run {}` to resume (cached answers are free).",
            DispatchStats::get(&dispatcher.stats.responses_ok),
            P::NAME
        );
        return Ok(None);
    };
    let mut samples: Vec<P::Sample> = result.map_err(|error| RunError::Pipeline {
        pipeline: P::NAME.to_owned(),
        error,
    })?;
    if let Some(limit) = options.limit {
        samples.truncate(limit);
    }
    drop(ctx);
    let writers = {
        let mut sink = sink.lock().expect("sink lock");
        // Samples returned at the end of `run` go after every record written during it; one
        // that breaks its kind's shape rules becomes an error line, as in a task.
        for sample in samples {
            let written = match sample.check() {
                Ok(()) => {
                    let line = sample.into_line(sink.annotates());
                    sink.sample(AFTER_ALL_RECORDS, line)
                }
                Err(shape) => {
                    inner.records_failed.fetch_add(1, Ordering::Relaxed);
                    let error = PipelineError::new(
                        format!(
                            "sample '{}' is not a valid {} sample: {shape}",
                            sample.id(),
                            P::Sample::KIND
                        ),
                        PipelineErrorKind::InvalidSample,
                    );
                    let steps = sample.steps().to_vec();
                    sink.error(
                        AFTER_ALL_RECORDS,
                        error.into_line(serde_json::Value::Null, steps),
                    )
                }
            };
            written.map_err(|error| RunError::Pipeline {
                pipeline: P::NAME.to_owned(),
                error,
            })?;
        }
        sink.take().expect("the sink is taken once, here")
    };
    let mut cost = None::<f64>;
    let mut batch_models = serde_json::Map::new();
    for (alias, bound) in &inner.models {
        let usage = bound.lane.usage();
        if let Some(c) = bound.spec.cost(usage.input_tokens, usage.output_tokens) {
            *cost.get_or_insert(0.0) += c;
        }
        if let Some(factor) = bound.spec.batch_price_factor() {
            batch_models.insert(
                alias.clone(),
                serde_json::json!({
                    "price_factor": factor,
                    "cost_usd": bound.spec.cost(usage.input_tokens, usage.output_tokens),
                }),
            );
        }
    }
    let mut reports = std::mem::take(&mut *inner.reports.lock().expect("reports lock"));
    if !batch_models.is_empty() {
        let stats = &dispatcher.stats;
        reports.insert(
            "batch".to_owned(),
            serde_json::json!({
                "jobs": DispatchStats::get(&stats.batches_submitted),
                "jobs_ended": DispatchStats::get(&stats.batches_ended),
                "requests_in_jobs": DispatchStats::get(&stats.batch_requests),
                "models": batch_models,
            }),
        );
    }
    if let Some(best_of) = inner.best_of.report() {
        reports.insert(
            "best_of".to_owned(),
            serde_json::to_value(best_of).expect("best-of report serializes"),
        );
    }
    Ok(Some(Executed {
        writers,
        records_done: inner.records_done.load(Ordering::Relaxed),
        records_failed: inner.records_failed.load(Ordering::Relaxed),
        records_filtered: inner.records_filtered.load(Ordering::Relaxed),
        models: inner
            .models
            .iter()
            .map(|(alias, b)| (alias.clone(), b.fingerprint.clone()))
            .collect(),
        estimated_cost_usd: cost,
        reports,
        stats: Arc::clone(&dispatcher.stats),
        elapsed: progress.elapsed(),
    }))
}
