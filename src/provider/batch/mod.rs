//! Batch mode: a provider that collects requests into OpenAI Batch / Anthropic Message Batches jobs, keeps their state on disk, polls them and hands each answer to the request waiting for it.
//!
//! To the dispatcher this is one more [`Provider`]: `send` waits until the request's answer has
//! come back in a job's results. Requests that arrive close together (all records' first step,
//! then all their second steps, …) go into one job, within the provider's limits. Each request
//! has a `custom_id` made from its body and its cache-derived seed, so the same request gets the
//! same id in every run: a rerun after a kill finds the jobs it already paid for (their state is
//! in `.shaping/batches/<pipeline>/`) and waits for them instead of sending again. Answers are
//! matched by `custom_id`, never by position. Expired and failed items come back as retryable
//! errors, and the dispatcher's retry puts only them into a later job.

pub mod admin;
pub mod api;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OnceCell, oneshot};

use self::api::{BatchClient, ItemOutcome, read_results};
pub use self::state::{BatchApi, JobFiles, JobState, Stage, all_jobs, load_jobs, pipeline_dir};
use super::{
    BoxFuture, ChatRequest, ErrorKind, HttpConfig, Provider, ProviderError, ProviderReply,
};
use crate::stats::DispatchStats;

/// Answers handed to their requests and not yet in the response cache, at most (see
/// `Shared::deliver`).
const DELIVER_AHEAD: usize = 4096;

/// OpenAI's limits of one batch input file.
pub const OPENAI_MAX_REQUESTS: usize = 50_000;
/// OpenAI's largest batch input file, in bytes.
pub const OPENAI_MAX_BYTES: u64 = 200 * 1024 * 1024;
/// Anthropic's limits of one message batch.
pub const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
/// Anthropic's largest message batch, in bytes.
pub const ANTHROPIC_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Errors of batch state on disk.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A state, request or result file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A job's state file is not valid.
    #[error("{path}: not a batch job state file: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How an alias uses its provider's batch API (`batch = true` in models.toml, or `--batch`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// How often a job's status is asked for.
    pub poll_interval: Duration,
    /// A job is sent once no new request has arrived for this long (or it is full).
    pub collect_quiet: Duration,
    /// Requests per job at most (the provider's limit unless lowered).
    pub max_requests: usize,
    /// Bytes of request lines per job at most.
    pub max_bytes: u64,
    /// Batch price as a share of the interactive price (0.5: half).
    pub price_factor: f64,
}

impl BatchSettings {
    /// The defaults for `api`: its limits, polling every 30 s, a 2 s quiet period, half price.
    pub fn for_api(api: BatchApi) -> Self {
        let (max_requests, max_bytes) = match api {
            BatchApi::OpenAi => (OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES),
            BatchApi::Anthropic => (ANTHROPIC_MAX_REQUESTS, ANTHROPIC_MAX_BYTES),
        };
        Self {
            poll_interval: Duration::from_secs(30),
            collect_quiet: Duration::from_secs(2),
            max_requests,
            max_bytes,
            price_factor: 0.5,
        }
    }
}

/// Everything a batch provider needs: the endpoint, the API, the settings, and where its jobs
/// are kept.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// The model alias (saved with each job, named in errors).
    pub alias: String,
    /// The batch API.
    pub api: BatchApi,
    /// The endpoint, model and key.
    pub http: HttpConfig,
    /// Limits, polling and prices.
    pub settings: BatchSettings,
    /// Where job state is kept (`.shaping/batches/<pipeline>/`); `None` until the dispatcher
    /// sets it, and building fails without one.
    pub state_dir: Option<PathBuf>,
    /// The run's counters (jobs sent and ended, requests waiting in jobs).
    pub stats: Option<Arc<DispatchStats>>,
}

/// A request's id: sha256 over its body and derived seed. Stable across runs, distinct for
/// distinct requests (the seed comes from the cache key). Its `custom_id` on the wire is its 64
/// hex digits (within Anthropic's `^[a-zA-Z0-9_-]{1,64}$`); kept as bytes in memory, where every
/// waiting request holds one.
type Id = [u8; 32];

fn request_id(client: &BatchClient, request: &ChatRequest) -> Id {
    let mut h = Sha256::new();
    h.update(client.request_line("", request));
    h.update(request.derived_seed.to_le_bytes());
    h.finalize().into()
}

/// The id of a `custom_id` read back from a file; `None` for one this client never made.
fn id_of(custom_id: &str) -> Option<Id> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(custom_id, &mut id).ok()?;
    Some(id)
}

/// The batch provider of one alias.
pub struct BatchProvider {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProvider")
            .field("alias", &self.shared.config.alias)
            .field("api", &self.shared.config.api)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: BatchConfig,
    client: BatchClient,
    dir: PathBuf,
    stats: Arc<DispatchStats>,
    started: OnceCell<Result<(), ProviderError>>,
    inner: Mutex<Inner>,
    queued: Notify,
    next_job: AtomicU64,
    /// One upload at a time: each holds its job's whole request file in memory.
    uploading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    /// The request waiting for each answer, by id (a second request with the same id, which
    /// the cache would answer alike, waits in `also_waiting`).
    waiters: HashMap<Id, oneshot::Sender<ItemOutcome>>,
    also_waiting: HashMap<Id, Vec<oneshot::Sender<ItemOutcome>>>,
    /// custom_ids in jobs not yet ended (this run's or a resumed one's), with the job's id.
    in_jobs: HashMap<Id, Arc<str>>,
    /// Answers of ended jobs nobody has asked for yet, by custom_id, with the job's id.
    unclaimed: HashMap<Id, (Arc<str>, ProviderReply)>,
    /// Per job with answers on disk: how many are not yet durable in the response cache.
    undelivered: HashMap<Arc<str>, usize>,
    /// Delivered answers of jobs still on disk, by custom_id, until the cache has them.
    delivered: HashMap<Id, Arc<str>>,
    /// The next job's request lines, written to disk as they come.
    spool: Option<Spool>,
    /// Full spools waiting for the collector.
    sealed: Vec<Spool>,
}

/// A job being formed: its request lines go straight to `<id>.requests.jsonl.spool` (a job's
/// lines are never all in memory), renamed to the request file when the job is sent.
struct Spool {
    local_id: String,
    file: std::io::BufWriter<std::fs::File>,
    ids: Vec<Id>,
    bytes: u64,
}

impl Spool {
    fn path(dir: &std::path::Path, local_id: &str) -> PathBuf {
        dir.join(format!("{local_id}.requests.jsonl.spool"))
    }
}

impl Inner {
    /// Every request waiting for `id`'s answer, removed.
    fn take_waiters(&mut self, id: &Id) -> Option<Vec<oneshot::Sender<ItemOutcome>>> {
        let first = self.waiters.remove(id)?;
        let mut all = vec![first];
        all.extend(self.also_waiting.remove(id).into_iter().flatten());
        Some(all)
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl BatchProvider {
    /// A batch provider for `config`; fails when no state directory is set or the HTTP client
    /// cannot be built. Nothing is read or sent until the first request (or [`Provider::preflight`]).
    pub fn new(config: BatchConfig) -> Result<Self, String> {
        let Some(dir) = config.state_dir.clone() else {
            return Err(format!(
                "model '{}': batch mode needs a directory for its job state",
                config.alias
            ));
        };
        let client = BatchClient::new(config.api, &config.http).map_err(|e| e.to_string())?;
        let stats = config.stats.clone().unwrap_or_default();
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                dir,
                stats,
                started: OnceCell::new(),
                inner: Mutex::default(),
                queued: Notify::new(),
                next_job: AtomicU64::new(0),
                uploading: tokio::sync::Mutex::new(()),
                config,
            }),
        })
    }
}

impl Provider for BatchProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(Arc::clone(&self.shared).send(request))
    }

    fn preflight(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(Arc::clone(&self.shared).start())
    }

    fn answer_stored(&self, request: &ChatRequest) {
        self.shared.answer_stored(request);
    }
}

impl Shared {
    /// Probe the endpoint, pick up this alias's saved jobs and start the collector (once).
    async fn start(self: Arc<Self>) -> Result<(), ProviderError> {
        let this = Arc::clone(&self);
        self.started
            .get_or_init(|| async move { this.resume().await })
            .await
            .clone()
    }

    async fn resume(self: &Arc<Self>) -> Result<(), ProviderError> {
        self.client.probe().await.map_err(|e| self.named(e))?;
        let local = |e: BatchError| ProviderError::new(ErrorKind::Local, e.to_string());
        // Lines spooled by a run that was killed before it sent them: asked for again, they
        // are spooled again (one run per pipeline at a time, so none of these is in use).
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "spool") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let jobs = load_jobs(&self.dir).map_err(local)?;
        let known: Vec<String> = jobs.iter().filter_map(|j| j.job_id.clone()).collect();
        for mut job in jobs {
            if job.alias != self.config.alias
                || job.model != self.config.http.model
                || job.api != self.config.api
            {
                continue;
            }
            let files = JobFiles::new(&self.dir, &job.local_id);
            if job.stage == Stage::Prepared {
                // Killed before the provider's id was saved: adopt the job if it was created,
                // otherwise forget it (its requests are sent again when asked for).
                match self.client.find_created(&job, &known).await {
                    Ok(Some(id)) => {
                        job.job_id = Some(id);
                        job.stage = Stage::Submitted;
                        files.save(&job).map_err(local)?;
                    }
                    Ok(None) => {
                        files.remove().map_err(local)?;
                        continue;
                    }
                    Err(e) => return Err(self.named(e)),
                }
            }
            let ids = read_custom_ids(&files).map_err(local)?;
            let job_ref: Arc<str> = Arc::from(job.local_id.as_str());
            match job.stage {
                Stage::Prepared => unreachable!("adopted or removed above"),
                Stage::Submitted => {
                    {
                        let mut inner = lock(&self.inner);
                        for id in ids {
                            inner.in_jobs.insert(id, Arc::clone(&job_ref));
                        }
                    }
                    DispatchStats::add(&self.stats.batches_submitted, 1);
                    let this = Arc::clone(self);
                    tokio::spawn(async move { this.follow(files, job).await });
                }
                Stage::Downloaded => {
                    let items = read_results(job.api, &files.results()).map_err(|source| {
                        local(BatchError::Io {
                            path: files.results(),
                            source,
                        })
                    })?;
                    let mut inner = lock(&self.inner);
                    let mut kept = 0;
                    for (id, outcome) in items {
                        if let (Some(id), Ok(reply)) = (id_of(&id), outcome) {
                            inner.unclaimed.insert(id, (Arc::clone(&job_ref), reply));
                            kept += 1;
                        }
                    }
                    if kept == 0 {
                        drop(inner);
                        files.remove().map_err(local)?;
                    } else {
                        inner.undelivered.insert(job_ref, kept);
                    }
                }
            }
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.collect().await });
        Ok(())
    }

    fn named(&self, e: ProviderError) -> ProviderError {
        ProviderError {
            message: format!("model '{}' (batch): {}", self.config.alias, e.message),
            ..e
        }
    }

    async fn send(self: Arc<Self>, request: &ChatRequest) -> Result<ProviderReply, ProviderError> {
        // Every waiting request holds this future: the start-up (probe, resume) is boxed, so its
        // state is not part of it.
        match self.started.get() {
            Some(result) => result.clone()?,
            None => {
                let start: BoxFuture<'_, _> = Box::pin(Arc::clone(&self).start());
                start.await?;
            }
        }
        let id = request_id(&self.client, request);
        let receiver = {
            let mut inner = lock(&self.inner);
            if let Some((job, reply)) = inner.unclaimed.remove(&id) {
                inner.delivered.insert(id, job);
                return Ok(reply);
            }
            let (sender, receiver) = oneshot::channel();
            let first = match inner.waiters.entry(id) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(sender);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    inner.also_waiting.entry(id).or_default().push(sender);
                    false
                }
            };
            if first && !inner.in_jobs.contains_key(&id) {
                let line = self.client.request_line(&hex::encode(id), request);
                if let Err(e) = self.spool_line(&mut inner, id, &line) {
                    inner.take_waiters(&id);
                    return Err(ProviderError::new(ErrorKind::Local, e.to_string()));
                }
                self.queued.notify_one();
            }
            receiver
        };
        let _waiting = Waiting::new(&self.stats);
        receiver.await.unwrap_or_else(|_| {
            Err(ProviderError::new(
                ErrorKind::Cancelled,
                "the batch collector stopped",
            ))
        })
    }

    /// The answer to `request` is in the response cache: its job's files can go once all of its
    /// answers are.
    fn answer_stored(&self, request: &ChatRequest) {
        let id = request_id(&self.client, request);
        let mut inner = lock(&self.inner);
        let job = match inner.delivered.remove(&id) {
            Some(job) => job,
            // Answered from the cache while a saved job also holds it.
            None => match inner.unclaimed.remove(&id) {
                Some((job, _)) => job,
                None => return,
            },
        };
        let left = inner.undelivered.get_mut(&job).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            inner.undelivered.remove(&job);
            drop(inner);
            let _ = JobFiles::new(&self.dir, &job).remove();
        }
    }

    /// Append a request line to the job being formed, starting a new one when it is full.
    fn spool_line(&self, inner: &mut Inner, id: Id, line: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let settings = &self.config.settings;
        let size = line.len() as u64 + 1;
        let full = inner.spool.as_ref().is_some_and(|spool| {
            spool.ids.len() >= settings.max_requests || spool.bytes + size > settings.max_bytes
        });
        if full {
            let spool = inner.spool.take().expect("a full spool exists");
            inner.sealed.push(spool);
        }
        if inner.spool.is_none() {
            let n = self.next_job.fetch_add(1, Ordering::Relaxed);
            let local_id = format!(
                "{}-{}-{n}",
                time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                std::process::id()
            );
            std::fs::create_dir_all(&self.dir)?;
            let file = std::fs::File::create(Spool::path(&self.dir, &local_id))?;
            inner.spool = Some(Spool {
                local_id,
                file: std::io::BufWriter::with_capacity(256 * 1024, file),
                ids: Vec::new(),
                bytes: 0,
            });
        }
        let spool = inner.spool.as_mut().expect("a spool exists");
        spool.file.write_all(line)?;
        spool.file.write_all(b"\n")?;
        spool.ids.push(id);
        spool.bytes += size;
        Ok(())
    }

    /// Form jobs: wait for requests, then until none has arrived for `collect_quiet` (or the
    /// job is full), and send what is spooled.
    async fn collect(self: Arc<Self>) {
        let settings = &self.config.settings;
        let queued = |inner: &Inner| {
            inner.sealed.len() * settings.max_requests
                + inner.spool.as_ref().map_or(0, |s| s.ids.len())
        };
        loop {
            self.queued.notified().await;
            loop {
                let before = queued(&lock(&self.inner));
                tokio::time::sleep(settings.collect_quiet).await;
                let inner = lock(&self.inner);
                if !inner.sealed.is_empty() || queued(&inner) == before {
                    break;
                }
            }
            let spools = {
                let mut inner = lock(&self.inner);
                let mut spools = std::mem::take(&mut inner.sealed);
                spools.extend(inner.spool.take());
                spools
            };
            for spool in spools {
                let this = Arc::clone(&self);
                tokio::spawn(async move { this.run_job(spool).await });
            }
        }
    }

    /// Write a job's request lines and state, submit it, follow it to the end and deliver.
    async fn run_job(self: Arc<Self>, spool: Spool) {
        let now = time::OffsetDateTime::now_utc();
        let Spool {
            local_id,
            file,
            ids,
            bytes: _,
        } = spool;
        let files = JobFiles::new(&self.dir, &local_id);
        let mut job = JobState {
            local_id: local_id.clone(),
            alias: self.config.alias.clone(),
            api: self.config.api,
            base_url: self.config.http.base_url.clone().unwrap_or_default(),
            model: self.config.http.model.clone(),
            api_key_env: self.config.http.api_key_env.clone(),
            created_at: now.unix_timestamp(),
            requests: ids.len(),
            stage: Stage::Prepared,
            input_file_id: None,
            job_id: None,
            status: None,
        };
        let spooled = Spool::path(&self.dir, &local_id);
        let written = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&spooled, files.requests()))
            .map_err(|source| BatchError::Io {
                path: spooled,
                source,
            })
            .and_then(|()| files.save(&job));
        if let Err(e) = written {
            self.fail(&ids, ProviderError::new(ErrorKind::Local, e.to_string()));
            return;
        }
        let job_ref: Arc<str> = Arc::from(local_id.as_str());
        {
            let mut inner = lock(&self.inner);
            for id in &ids {
                inner.in_jobs.insert(*id, Arc::clone(&job_ref));
            }
        }
        DispatchStats::add(&self.stats.batches_submitted, 1);
        DispatchStats::add(&self.stats.batch_requests, ids.len() as u64);
        let save = |state: &JobState| {
            files
                .save(state)
                .map_err(|e| ProviderError::new(ErrorKind::Local, e.to_string()))
        };
        let mut attempt = 0u32;
        loop {
            let submitted = {
                let _one_at_a_time = self.uploading.lock().await;
                self.client.submit(&files, &mut job, &save).await
            };
            match submitted {
                Ok(()) => break,
                Err(e) if e.kind.is_retryable() && attempt < 6 => {
                    // The job may exist although its answer was lost: look before creating again.
                    if let Ok(Some(id)) = self.client.find_created(&job, &[]).await {
                        job.job_id = Some(id);
                        break;
                    }
                    tokio::time::sleep(retry_wait(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let _ = files.remove();
                    self.forget(&ids);
                    self.fail(&ids, self.named(e));
                    return;
                }
            }
        }
        job.stage = Stage::Submitted;
        if let Err(e) = save(&job) {
            // The job exists; without its saved id a rerun would find it by listing.
            eprintln!("warning: {e}");
        }
        self.follow(files, job).await;
    }

    /// Poll a submitted job until it ends, download its results and hand them out. Polling
    /// failures are retried for as long as the run waits: the job is paid for, so giving up
    /// would send its requests again.
    async fn follow(self: Arc<Self>, files: JobFiles, mut job: JobState) {
        let job_id = job.job_id.clone().expect("a submitted job has an id");
        let mut failures = 0u32;
        let remote = loop {
            match self.client.status(&job_id).await {
                Ok(remote) => {
                    failures = 0;
                    if job.status.as_deref() != Some(remote.status.as_str()) {
                        job.status = Some(remote.status.clone());
                        let _ = files.save(&job);
                    }
                    if remote.ended {
                        break remote;
                    }
                    tokio::time::sleep(self.config.settings.poll_interval).await;
                }
                Err(e) => {
                    if !e.kind.is_retryable() && e.kind != ErrorKind::NotFound {
                        eprintln!(
                            "warning: {}",
                            self.named(ProviderError {
                                message: format!("polling job {job_id}: {}", e.message),
                                ..e
                            })
                        );
                    }
                    tokio::time::sleep(
                        retry_wait(failures).max(self.config.settings.poll_interval),
                    )
                    .await;
                    failures += 1;
                }
            }
        };
        // Streamed to disk and read back line by line: a job's results are never all in memory.
        let items = loop {
            let downloaded = self
                .client
                .download_results(&remote, &files.results())
                .await
                .and_then(|()| {
                    read_results(job.api, &files.results()).map_err(|e| {
                        ProviderError::new(ErrorKind::Local, format!("reading results: {e}"))
                    })
                });
            match downloaded {
                Ok(items) => break items,
                Err(_) => {
                    tokio::time::sleep(retry_wait(failures)).await;
                    failures += 1;
                }
            }
        };
        let ids = read_custom_ids(&files).unwrap_or_default();
        job.stage = Stage::Downloaded;
        let _ = files.save(&job);
        DispatchStats::add(&self.stats.batches_ended, 1);
        self.deliver(&files, &job, ids, items, remote.failure).await;
    }

    /// Hand a job's answers to their waiters; keep the ones nobody waits for; fail the requests
    /// the results do not mention (they go into a later job). At most [`DELIVER_AHEAD`]
    /// answers are handed out and not yet in the response cache at a time, so a job of 50,000
    /// does not wake 50,000 records at once.
    async fn deliver(
        &self,
        files: &JobFiles,
        job: &JobState,
        ids: Vec<Id>,
        items: impl Iterator<Item = (String, ItemOutcome)>,
        failure: Option<String>,
    ) {
        let job_ref: Arc<str> = Arc::from(job.local_id.as_str());
        // One count for the delivery itself, so answers stored meanwhile never bring the job's
        // count to zero (and its files to deletion) before it is over.
        lock(&self.inner)
            .undelivered
            .insert(Arc::clone(&job_ref), 1);
        let mut answered = std::collections::HashSet::with_capacity(ids.len());
        for (custom_id, outcome) in items {
            let Some(id) = id_of(&custom_id) else {
                continue;
            };
            let ahead = {
                let mut inner = lock(&self.inner);
                if inner.in_jobs.get(&id) == Some(&job_ref) {
                    inner.in_jobs.remove(&id);
                }
                answered.insert(id);
                let waiters = inner.take_waiters(&id);
                let kept = outcome.is_ok();
                match (outcome, waiters) {
                    (Ok(reply), Some(waiters)) => {
                        inner.delivered.insert(id, Arc::clone(&job_ref));
                        for w in waiters {
                            let _ = w.send(Ok(reply.clone()));
                        }
                    }
                    (Ok(reply), None) => {
                        inner.unclaimed.insert(id, (Arc::clone(&job_ref), reply));
                    }
                    (Err(e), Some(waiters)) => {
                        for w in waiters {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                    (Err(_), None) => {}
                }
                if kept && let Some(n) = inner.undelivered.get_mut(&job_ref) {
                    *n += 1;
                }
                inner.delivered.len()
            };
            if ahead >= DELIVER_AHEAD {
                self.wait_for_stores().await;
            }
        }
        let why = failure
            .filter(|f| !f.is_empty())
            .map(|f| format!(": {f}"))
            .unwrap_or_default();
        let mut inner = lock(&self.inner);
        for id in ids.into_iter().filter(|id| !answered.contains(id)) {
            if inner.in_jobs.get(&id) == Some(&job_ref) {
                inner.in_jobs.remove(&id);
            }
            if let Some(waiters) = inner.take_waiters(&id) {
                let e = ProviderError::new(
                    ErrorKind::Server,
                    format!(
                        "missing from the results of batch job {}{why}; sent again",
                        job.local_id
                    ),
                );
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
        let left = inner.undelivered.get_mut(&job_ref).map(|n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            inner.undelivered.remove(&job_ref);
            drop(inner);
            let _ = files.remove();
        }
    }

    /// Wait until the answers handed out are mostly in the cache (or stop moving: one whose
    /// record gave up is never stored).
    async fn wait_for_stores(&self) {
        let mut last = usize::MAX;
        let mut still = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = lock(&self.inner).delivered.len();
            if now < DELIVER_AHEAD / 2 {
                return;
            }
            still = if now == last { still + 1 } else { 0 };
            if still >= 500 {
                return;
            }
            last = now;
        }
    }

    fn fail(&self, ids: &[Id], error: ProviderError) {
        let mut inner = lock(&self.inner);
        for id in ids {
            if let Some(waiters) = inner.take_waiters(id) {
                for w in waiters {
                    let _ = w.send(Err(error.clone()));
                }
            }
        }
    }

    fn forget(&self, ids: &[Id]) {
        let mut inner = lock(&self.inner);
        for id in ids {
            inner.in_jobs.remove(id);
        }
    }
}

/// Counts a request in the `batch_waiting` gauge while it waits (also when it is dropped).
struct Waiting<'a>(&'a DispatchStats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a DispatchStats) -> Self {
        DispatchStats::add(&stats.batch_waiting, 1);
        Self(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.batch_waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// 1 s, 2 s, 4 s … up to a minute.
fn retry_wait(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

/// The ids of a job's request file, in order.
fn read_custom_ids(files: &JobFiles) -> Result<Vec<Id>, BatchError> {
    use std::io::BufRead;
    let path = files.requests();
    let io = |source| BatchError::Io {
        path: path.clone(),
        source,
    };
    let reader = std::io::BufReader::new(std::fs::File::open(&path).map_err(io)?);
    let mut ids = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        if line.is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Line {
            custom_id: String,
        }
        let line: Line = serde_json::from_slice(&line).map_err(|e| BatchError::State {
            path: path.clone(),
            message: format!("line {}: {e}", n + 1),
        })?;
        ids.extend(id_of(&line.custom_id));
    }
    Ok(ids)
}

/// Whether `config` can use a batch API (and which): OpenAI and Anthropic aliases with one
/// endpoint.
pub fn api_of(config: &super::ProviderConfig) -> Option<BatchApi> {
    match config {
        super::ProviderConfig::OpenAi(_) => Some(BatchApi::OpenAi),
        super::ProviderConfig::Anthropic(_) => Some(BatchApi::Anthropic),
        _ => None,
    }
}

/// A client for `cargo xtask batches`: the job's endpoint with the key read from `api_key`.
pub fn client_for(job: &JobState, api_key: Option<String>) -> Result<BatchClient, String> {
    let http = HttpConfig {
        base_url: Some(job.base_url.clone()).filter(|u| !u.is_empty()),
        model: job.model.clone(),
        api_key,
        api_key_env: job.api_key_env.clone(),
        connect_timeout: Duration::from_secs(10),
        timeout: Duration::from_secs(60),
        max_concurrency: 1,
    };
    BatchClient::new(job.api, &http).map_err(|e| e.to_string())
}
