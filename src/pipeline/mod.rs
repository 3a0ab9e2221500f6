//! The pipeline API: the `Pipeline` trait, dependency handles, the run context and the per-record task handle.
//!
//! A pipeline declares file and model dependencies in [`Pipeline::declare`], then [`Pipeline::run`]
//! orchestrates stages with [`Ctx::query`] (one call, for setup) and [`Ctx::run_task`] /
//! [`Ctx::stream_task`] (an async task per record, run concurrently through the shared
//! dispatcher). Inside a task, [`Task::request`] and [`Task::all`] send requests; every request
//! and response is recorded as a [`Step`] without the author writing anything.

pub mod best_of;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use serde::Serialize;

use crate::cache::CacheKey;
use crate::dispatch::{Dispatcher, Lane};
use crate::format::ErrorLine;
use crate::models::{ModelFingerprint, ModelSpec};
use crate::provider::{ChatRequest, Message, Params};
use crate::sample::{PipelineError, PipelineErrorKind, Provenance, Response, Sample, Step};

/// A data-generating pipeline. Implement it in a crate under `pipelines/` and hand it to
/// [`crate::run_main`] (or the [`crate::pipeline_main!`] macro) from `main`.
pub trait Pipeline: Sized + Send + Sync + 'static {
    /// The pipeline's name: output goes to `training/data/<NAME>.jsonl`.
    const NAME: &'static str;
    /// Whether output carries provenance by default (`--annotate` / `--no-annotate` override).
    const ANNOTATED: bool = true;
    /// What the output holds: [`crate::TrainingSample`] (conversations, single- or multi-turn)
    /// or [`crate::PreferenceSample`] (preference pairs). Its [`Sample::KIND`] is recorded in
    /// the description and the manifest, and checks, review and export read the output as it.
    type Sample: Sample;

    /// Declare dependencies; keep the returned handles in `Self`.
    fn declare(deps: &mut Declare) -> Self;

    /// Quality thresholds for `cargo xtask check` (defaults: the seed's validation checklist).
    fn quality(&self) -> crate::quality::QualityConfig {
        crate::quality::QualityConfig::default()
    }

    /// Produce the samples. Samples written by [`Ctx::stream_task`] are already in the output;
    /// the returned ones are appended after them.
    fn run(&self, ctx: &Ctx) -> impl Future<Output = Result<Vec<Self::Sample>, PipelineError>>;
}

/// Errors of dependency handles.
#[derive(Debug, thiserror::Error)]
pub enum DepError {
    /// The file could not be read (missing, a directory, no permission).
    #[error("file dependency '{name}' ({path}): {source}")]
    Read {
        /// The dependency's name.
        name: String,
        /// Its path relative to the repository root.
        path: String,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("file dependency '{name}' ({path}) is not valid UTF-8 (byte {offset})")]
    NotUtf8 {
        /// The dependency's name.
        name: String,
        /// Its path relative to the repository root.
        path: String,
        /// Where the first invalid byte is.
        offset: usize,
    },
}

/// A file (or directory) the output depends on, relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDep {
    name: Arc<str>,
    rel: Arc<str>,
    abs: PathBuf,
}

impl FileDep {
    /// The name it was declared with (the key in the manifest's `files`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The path as declared (relative to the repository root).
    pub fn rel_path(&self) -> &str {
        &self.rel
    }
    /// The absolute path.
    pub fn path(&self) -> &Path {
        &self.abs
    }
    /// The file's text (UTF-8 is required).
    pub fn read(&self) -> Result<String, DepError> {
        let bytes = std::fs::read(&self.abs).map_err(|source| DepError::Read {
            name: self.name.to_string(),
            path: self.rel.to_string(),
            source,
        })?;
        String::from_utf8(bytes).map_err(|e| DepError::NotUtf8 {
            name: self.name.to_string(),
            path: self.rel.to_string(),
            offset: e.utf8_error().valid_up_to(),
        })
    }
}

/// A model alias from `models.toml` the output depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelDep {
    alias: Arc<str>,
}

impl ModelDep {
    /// The alias (a key of `models.toml`).
    pub fn alias(&self) -> &str {
        &self.alias
    }
}

/// Collects a pipeline's declarations (see [`Pipeline::declare`]).
#[derive(Debug)]
pub struct Declare {
    root: PathBuf,
    pub(crate) files: Vec<FileDep>,
    pub(crate) models: Vec<ModelDep>,
    pub(crate) errors: Vec<String>,
}

impl Declare {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            files: Vec::new(),
            models: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Declare a file or directory dependency (relative to the repository root; must stay inside it).
    pub fn file(&mut self, name: &str, path: &str) -> FileDep {
        let abs = match crate::repo::resolve_inside(&self.root, path) {
            Ok(abs) => abs,
            Err(e) => {
                self.errors.push(format!("file dependency '{name}': {e}"));
                self.root.join(path)
            }
        };
        if self.files.iter().any(|f| &*f.name == name) {
            self.errors
                .push(format!("file dependency name '{name}' is declared twice"));
        }
        let dep = FileDep {
            name: name.into(),
            rel: path.into(),
            abs,
        };
        self.files.push(dep.clone());
        dep
    }

    /// Declare a model dependency by its alias in `models.toml`.
    pub fn model(&mut self, alias: &str) -> ModelDep {
        let dep = ModelDep {
            alias: alias.into(),
        };
        if !self.models.contains(&dep) {
            self.models.push(dep.clone());
        }
        dep
    }
}

/// A request being built: `model_request(messages, &model).temperature(0.7)`.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    model: ModelDep,
    messages: Vec<Message>,
    params: Params,
}

/// Start a request to `model`.
pub fn model_request(messages: Vec<Message>, model: &ModelDep) -> ModelRequest {
    ModelRequest {
        model: model.clone(),
        messages,
        params: Params::default(),
    }
}

impl ModelRequest {
    /// Sampling temperature ([`Params::temperature`]).
    pub fn temperature(mut self, t: f32) -> Self {
        self.params.temperature = Some(t);
        self
    }
    /// Nucleus sampling cut-off ([`Params::top_p`]).
    pub fn top_p(mut self, p: f32) -> Self {
        self.params.top_p = Some(p);
        self
    }
    /// Most tokens the reply may have.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.params.max_tokens = Some(n);
        self
    }
    /// Strings that end the reply (replacing the alias's default list).
    pub fn stop(mut self, stop: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.params.stop = stop.into_iter().map(Into::into).collect();
        self
    }
    /// A fixed sampling seed ([`Params::seed`]; without one, local models use a seed derived from
    /// the record and step).
    pub fn seed(mut self, seed: u64) -> Self {
        self.params.seed = Some(seed);
        self
    }
    /// Constrain the reply to JSON matching `schema`.
    pub fn json_schema(mut self, schema: serde_json::Value) -> Self {
        self.params.json_schema = Some(schema);
        self
    }
    /// The conversation this request sends.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

/// A resolved model: spec, fingerprint and lane.
pub(crate) struct BoundModel {
    pub spec: ModelSpec,
    pub fingerprint: ModelFingerprint,
    pub lane: Arc<Lane>,
}

/// Where samples and errors go while a run is in progress. Records finish in any order; `place`
/// says where each line belongs in its file (see [`output_place`]), and the sink restores that
/// order when it commits.
pub(crate) trait SampleSink: Send {
    /// Whether lines are written annotated (with provenance).
    fn annotates(&self) -> bool;
    fn sample(&mut self, place: u64, line: crate::format::SampleLine) -> Result<(), PipelineError>;
    fn error(&mut self, place: u64, record: ErrorLine) -> Result<(), PipelineError>;
}

/// The place of sample or error lines written after every record of every task stage.
pub(crate) const AFTER_ALL_RECORDS: u64 = u64::MAX;

/// Bits of an output place that hold the record's input position within its stage.
const RECORD_BITS: u32 = 40;

/// Task stages (`run_task` / `stream_task` calls) started in this process. Places only have to
/// grow from one stage to the next within one output file, which a process-wide count gives.
static STAGES_STARTED: AtomicU64 = AtomicU64::new(0);

/// Where record `index` (input position) of stage `stage` goes in the output: stage by stage,
/// input order within a stage.
fn output_place(stage: u64, index: usize) -> u64 {
    (stage << RECORD_BITS) | (index as u64 & ((1 << RECORD_BITS) - 1))
}

pub(crate) struct CtxInner {
    pub pipeline: String,
    pub root: PathBuf,
    pub dispatcher: Arc<Dispatcher>,
    pub models: BTreeMap<String, BoundModel>,
    pub limit: Option<usize>,
    pub window: usize,
    pub queries: AtomicU32,
    pub sink: Arc<Mutex<dyn SampleSink>>,
    pub reports: Mutex<BTreeMap<String, serde_json::Value>>,
    pub progress: Arc<crate::progress::Progress>,
    pub records_done: AtomicU64,
    /// Records that failed (filtered records not counted: they are quality rejections, not faults).
    pub records_failed: AtomicU64,
    /// Records whose every candidate the quality gate rejected (`__ERROR__` type `filtered`).
    pub records_filtered: AtomicU64,
    /// The quality gate's per-sample checks, for [`Task::best_of`].
    pub detectors: Arc<crate::quality::Detectors>,
    pub best_of: best_of::BestOfStats,
}

impl CtxInner {
    async fn execute(
        &self,
        request: &ModelRequest,
        record_key: RecordKey<'_>,
        step: u32,
    ) -> (Response, Step) {
        // The request is started by a plain function, so that while it waits this future holds
        // little more than the dispatcher's (every record of the window holds one).
        let (bound, pending) = self.start(request, record_key, step);
        let response = pending.await;
        let params = request.params.clone().or(&bound.spec.params);
        let step = response.step(request.model.alias(), request.messages.clone(), params);
        (response, step)
    }

    /// The request's cache key and seed, sent to the dispatcher.
    fn start<'a>(
        &'a self,
        request: &ModelRequest,
        record_key: RecordKey<'_>,
        step: u32,
    ) -> (&'a BoundModel, impl Future<Output = Response> + Send + 'a) {
        let bound = self
            .models
            .get(request.model.alias())
            .expect("model handles come from declare(); lanes are bound for all of them");
        let params = request.params.clone().or(&bound.spec.params);
        let content_hex;
        let record_key = match record_key {
            RecordKey::Content(digest) => {
                content_hex = hex::encode(digest);
                content_hex.as_str()
            }
            RecordKey::Named(name) => name,
        };
        let key = CacheKey::new(
            &bound.fingerprint,
            &request.messages,
            &params,
            record_key,
            step,
        );
        let derived_seed = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"));
        let chat = ChatRequest {
            messages: request.messages.clone(),
            params,
            derived_seed,
        };
        self.dispatcher
            .stats
            .deepest_step
            .fetch_max(u64::from(step) + 1, std::sync::atomic::Ordering::Relaxed);
        (bound, self.dispatcher.execute(&bound.lane, chat, key))
    }
}

/// The run context handed to [`Pipeline::run`].
pub struct Ctx {
    pub(crate) inner: Arc<CtxInner>,
}

impl Ctx {
    /// The running pipeline's name ([`Pipeline::NAME`]).
    pub fn pipeline_name(&self) -> &str {
        &self.inner.pipeline
    }
    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
    /// `--limit`, if given.
    pub fn limit(&self) -> Option<usize> {
        self.inner.limit
    }

    /// One request, for setup stages (e.g. extracting facts before the per-record stage).
    pub async fn query(&self, request: ModelRequest) -> Response {
        let n = self.inner.queries.fetch_add(1, Ordering::Relaxed);
        let (response, _) = self
            .inner
            .execute(
                &request,
                RecordKey::Named(&format!("query:{}", self.inner.pipeline)),
                n,
            )
            .await;
        response
    }

    /// Store a report (source mix, skipped rows…) in the manifest and the run summary.
    pub fn report(&self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value)
            .unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }));
        self.inner
            .reports
            .lock()
            .expect("reports lock")
            .insert(key.to_owned(), value);
    }

    /// Run `task` for every record concurrently; returns the successful samples in input order.
    /// Records run unordered (a slow record never holds back the next ones); the samples are
    /// sorted back into input order at the end. Failed records go to the errors file (in input
    /// order). With `--limit N` only the first N records run.
    pub async fn run_task<R, S, F, Fut>(
        &self,
        records: impl IntoIterator<Item = R>,
        task: F,
    ) -> Result<Vec<S>, PipelineError>
    where
        R: Serialize,
        S: Sample,
        F: Fn(Task, R) -> Fut,
        Fut: Future<Output = Result<S, PipelineError>>,
    {
        let mut samples = Vec::new();
        self.drive(records, task, |place, sample| {
            samples.push((place, sample));
            Ok(())
        })
        .await?;
        samples.sort_unstable_by_key(|(place, _)| *place);
        Ok(samples.into_iter().map(|(_, sample)| sample).collect())
    }

    /// Like [`Ctx::run_task`], but writes each sample straight to the output as its record
    /// finishes instead of collecting them; the output file is put in input order when it is
    /// committed. Memory stays bounded for any number of records (the writer keeps a small
    /// index, not the samples). Returns the number of samples written.
    pub async fn stream_task<R, S, F, Fut>(
        &self,
        records: impl IntoIterator<Item = R>,
        task: F,
    ) -> Result<u64, PipelineError>
    where
        R: Serialize,
        S: Sample,
        F: Fn(Task, R) -> Fut,
        Fut: Future<Output = Result<S, PipelineError>>,
    {
        let inner = Arc::clone(&self.inner);
        let mut written = 0;
        self.drive(records, task, |place, sample| {
            written += 1;
            let mut sink = inner.sink.lock().expect("sink lock");
            let line = sample.into_line(sink.annotates());
            sink.sample(place, line)
        })
        .await?;
        Ok(written)
    }

    async fn drive<R, S, F, Fut>(
        &self,
        records: impl IntoIterator<Item = R>,
        task: F,
        mut on_sample: impl FnMut(u64, S) -> Result<(), PipelineError>,
    ) -> Result<(), PipelineError>
    where
        R: Serialize,
        S: Sample,
        F: Fn(Task, R) -> Fut,
        Fut: Future<Output = Result<S, PipelineError>>,
    {
        let inner = &self.inner;
        let records = records.into_iter().take(inner.limit.unwrap_or(usize::MAX));
        if let (lower, Some(upper)) = records.size_hint()
            && lower == upper
        {
            inner.progress.add_total(upper as u64);
        }
        let stage = STAGES_STARTED.fetch_add(1, Ordering::Relaxed);
        // Unordered: a record starts as soon as any slot of the window frees, whatever the
        // first record still running is doing; places restore input order in the output.
        let mut outcomes = futures::stream::iter(records.enumerate())
            .map(|(index, record)| {
                // The input is kept as its JSON text while the record runs (a `Value` map
                // costs several times more, and every record of a window holds one).
                let input = serde_json::to_value(&record)
                    .and_then(|value| serde_json::to_vec(&value))
                    .unwrap_or_else(|_| b"null".to_vec())
                    .into_boxed_slice();
                let record_digest = crate::fingerprint::sha256(&input);
                let handle = Task {
                    state: Arc::new(TaskState {
                        ctx: Arc::clone(inner),
                        record_digest,
                        steps: Mutex::default(),
                        next_step: AtomicU32::new(0),
                    }),
                };
                // A combinator, not an `async move` block: such a block would hold the task's
                // future twice (captured, and moved into `catch_unwind`), and every record of
                // the window holds one.
                AssertUnwindSafe(task(handle.clone(), record))
                    .catch_unwind()
                    .map(move |outcome| (output_place(stage, index), input, handle, outcome))
            })
            .buffer_unordered(inner.window.max(1));
        while let Some((place, input, handle, outcome)) = outcomes.next().await {
            if inner.dispatcher.is_cancelled() {
                return Err(PipelineError::new(
                    "the run was interrupted",
                    PipelineErrorKind::Interrupted,
                ));
            }
            let steps = handle.take_steps();
            let input: serde_json::Value =
                serde_json::from_slice(&input).unwrap_or(serde_json::Value::Null);
            // A sample that breaks its kind's shape rules is the record's error, not a line.
            let outcome = outcome.map(|result| {
                result.and_then(|sample| match sample.check() {
                    Ok(()) => Ok(sample),
                    Err(shape) => Err(PipelineError::new(
                        format!(
                            "sample '{}' is not a valid {} sample: {shape}",
                            sample.id(),
                            S::KIND
                        ),
                        PipelineErrorKind::InvalidSample,
                    )),
                })
            });
            let failure = match outcome {
                Ok(Ok(mut sample)) => {
                    // Timed by its answers (cached ones keep their times): replays are identical.
                    sample.attach(Provenance::new(input, steps));
                    inner.records_done.fetch_add(1, Ordering::Relaxed);
                    inner.progress.record_done(false);
                    on_sample(place, sample)?;
                    continue;
                }
                Ok(Err(error)) => error,
                Err(panic) => PipelineError::unexpected(format!(
                    "task panicked: {}",
                    crate::dispatch::panic_message(&*panic)
                )),
            };
            if failure.kind == PipelineErrorKind::Filtered {
                inner.records_filtered.fetch_add(1, Ordering::Relaxed);
            } else {
                inner.records_failed.fetch_add(1, Ordering::Relaxed);
            }
            inner.progress.record_done(true);
            let record = failure.into_line(input, steps);
            inner.sink.lock().expect("sink lock").error(place, record)?;
        }
        if inner.dispatcher.is_cancelled() {
            return Err(PipelineError::new(
                "the run was interrupted",
                PipelineErrorKind::Interrupted,
            ));
        }
        Ok(())
    }
}

/// The record part of a request's cache key.
#[derive(Clone, Copy)]
enum RecordKey<'a> {
    /// A record's content hash (hashed into the key as hex, as in every earlier version).
    Content(&'a [u8; 32]),
    /// A fixed name (`query`'s requests).
    Named(&'a str),
}

struct TaskState {
    ctx: Arc<CtxInner>,
    /// sha256 of the record's input JSON (its hex is the record part of cache keys); kept as
    /// bytes, not hex text, since every record of the window holds one.
    record_digest: [u8; 32],
    steps: Mutex<Vec<Option<Box<Step>>>>,
    next_step: AtomicU32,
}

/// The handle a task uses to send requests for its record.
#[derive(Clone)]
pub struct Task {
    state: Arc<TaskState>,
}

impl Task {
    /// Send one request; resolves to its response (check [`Response::is_success`]). The step's
    /// position is fixed when this is called, so caching and seeds are deterministic.
    pub fn request(
        &self,
        request: ModelRequest,
    ) -> impl Future<Output = Response> + Send + 'static {
        let step = self.state.next_step.fetch_add(1, Ordering::Relaxed);
        {
            // One slot at a time (a Vec's first push reserves four), each a pointer until the
            // step is done: every record of the window holds these.
            let mut steps = self.state.steps.lock().expect("steps lock");
            steps.reserve_exact(1);
            steps.push(None);
        }
        let state = Arc::clone(&self.state);
        async move {
            let (response, recorded) = state
                .ctx
                .execute(&request, RecordKey::Content(&state.record_digest), step)
                .await;
            state.steps.lock().expect("steps lock")[step as usize] = Some(Box::new(recorded));
            response
        }
    }

    /// Send several requests concurrently; responses come back in request order.
    pub async fn all(&self, requests: impl IntoIterator<Item = ModelRequest>) -> Vec<Response> {
        let pending: Vec<_> = requests.into_iter().map(|r| self.request(r)).collect();
        futures::future::join_all(pending).await
    }

    /// The quality gate's per-sample detectors of this run (the pipeline's quality config and
    /// `identity/voice.toml`): the checks `cargo xtask check` applies, for a pipeline's own
    /// judgements (e.g. comparing the two answers of a preference pair).
    pub fn detectors(&self) -> &crate::quality::Detectors {
        &self.state.ctx.detectors
    }

    /// The run this task belongs to.
    pub(crate) fn ctx(&self) -> &CtxInner {
        &self.state.ctx
    }

    fn take_steps(&self) -> Vec<Step> {
        std::mem::take(&mut *self.state.steps.lock().expect("steps lock"))
            .into_iter()
            .flatten()
            .map(|step| *step)
            .collect()
    }
}
