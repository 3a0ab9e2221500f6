//! The dispatcher: one per process, serving every request of every record through per-model lanes.
//!
//! A lane (one per endpoint+model) owns the provider, a concurrency cap, RPM/TPM pacing
//! (governor), an adaptive pause set by 429s and rate-limit headers, and retry with exponential
//! backoff and jitter. Before any of that the response cache is consulted, and every successful
//! answer is committed to it, while its slot is still held, before the caller sees it. Requests
//! that go to a provider run as their own tokio tasks.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::cache::{CacheKey, CachedReply, ResponseCache};
use crate::models::{ModelSpec, ModelsError};
use crate::provider::{ChatRequest, ErrorKind, Provider, ProviderError, ProviderReply, Usage};
use crate::sample::{Response, StepError};
pub use crate::stats::DispatchStats;

/// Errors setting up lanes.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The model's provider config could not be made (an API key missing from the environment).
    #[error(transparent)]
    Models(#[from] ModelsError),
    /// Building the provider failed (its HTTP client, or loading the local model).
    #[error("model '{alias}': {message}")]
    Provider {
        /// The model alias.
        alias: String,
        /// What went wrong, as the provider said it.
        message: String,
    },
}

/// How the response cache is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Replay cached answers, store new ones.
    #[default]
    ReadWrite,
    /// Ignore cached answers but store new ones (`--refresh`).
    Refresh,
    /// Neither read nor write (`--no-cache`).
    Off,
}

/// Options of the dispatcher for one process.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Global cap on requests in flight (`--workers`); `None` = only per-model caps.
    pub workers: Option<usize>,
    /// Whether cached answers are replayed and new ones stored.
    pub cache_mode: CacheMode,
    /// When `k` processes share the same models (parallel `data`), each takes 1/k of every limit.
    pub budget_share: u32,
    /// Base delay of exponential backoff (rate limits without a server-given pause; later
    /// retries of the failures below).
    pub backoff_base: Duration,
    /// Longest backoff before jitter: the doubling stops here.
    pub backoff_cap: Duration,
    /// The first retry of a 5xx, a cut connection, a malformed body or a timeout comes after
    /// about this long (with jitter): such failures are usually one bad request, not an
    /// overloaded server, and a record that waits holds its slot in the record window.
    pub first_retry: Duration,
    /// Where batch-mode aliases keep their jobs (`.shaping/batches/<pipeline>/`).
    pub batch_dir: Option<std::path::PathBuf>,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            workers: None,
            cache_mode: CacheMode::ReadWrite,
            budget_share: 1,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            first_retry: Duration::from_millis(40),
            batch_dir: None,
        }
    }
}

/// Even request pacing (burst 1): each caller reserves the next slot on a fixed schedule, one
/// `period` apart, then sleeps until it. Slots are reserved from the schedule, not from when the
/// previous caller actually woke, so timer lateness does not accumulate into lost throughput
/// (a rate limiter that restarts its period at each late wake-up loses several percent).
struct Pacer {
    period: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(period: Duration) -> Self {
        Self {
            period,
            next: Mutex::new(None),
        }
    }

    async fn until_ready(&self) {
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.period);
            slot
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// One endpoint+model: provider, caps, pacing, pause.
pub struct Lane {
    alias: String,
    /// Requests go through a batch API: they run inside their record's future, not as tasks.
    batch: bool,
    provider: Arc<dyn Provider>,
    concurrency: Semaphore,
    requests: Option<Pacer>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    paused_until: Mutex<Option<Instant>>,
    max_retries: u32,
    timeout: Duration,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

impl Lane {
    fn new(spec: &ModelSpec, provider: Arc<dyn Provider>, share: u32) -> Self {
        let share = share.max(1);
        let concurrency = spec.max_concurrency.div_ceil(share as usize).max(1);
        // Pace evenly (burst 1) slightly under the limit: providers count over short windows.
        let requests = spec.rpm.map(|rpm| {
            let per_minute = (rpm as f64 / share as f64 * 0.99).max(1e-3);
            Pacer::new(Duration::from_secs_f64(60.0 / per_minute))
        });
        let tokens = spec.tpm.map(|tpm| {
            let per_minute = (tpm as f64 / share as f64 * 0.99).max(1.0);
            let period = Duration::from_secs_f64(60.0 / per_minute);
            let burst = NonZeroU32::new(((per_minute / 60.0) as u32).max(1)).expect("burst >= 1");
            (
                RateLimiter::direct(
                    Quota::with_period(period)
                        .expect("non-zero period")
                        .allow_burst(burst),
                ),
                burst,
            )
        });
        Self {
            alias: spec.alias.clone(),
            batch: spec.batch,
            provider,
            concurrency: Semaphore::new(concurrency),
            requests,
            tokens,
            paused_until: Mutex::new(None),
            max_retries: spec.max_retries,
            timeout: spec.timeout,
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
        }
    }

    /// Tokens used through this lane so far (input, output).
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.load(Ordering::Relaxed),
            output_tokens: self.output_tokens.load(Ordering::Relaxed),
        }
    }

    fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    fn is_paused(&self) -> bool {
        self.paused_until
            .lock()
            .expect("pause lock")
            .is_some_and(|t| t > Instant::now())
    }

    async fn wait_while_paused(&self) {
        loop {
            let until = *self.paused_until.lock().expect("pause lock");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    async fn take_tokens(&self, n: u64) {
        if let Some((limiter, burst)) = &self.tokens {
            let mut left = n;
            while left > 0 {
                let chunk = left.min(burst.get() as u64) as u32;
                let _ = limiter
                    .until_n_ready(NonZeroU32::new(chunk).expect("chunk > 0"))
                    .await;
                left -= chunk as u64;
            }
        }
    }
}

/// The process-wide dispatcher.
pub struct Dispatcher {
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    global: Semaphore,
    cache: Option<Arc<ResponseCache>>,
    options: DispatchOptions,
    /// The counters of every request this dispatcher handled (progress and the summary read
    /// them).
    pub stats: Arc<DispatchStats>,
    cancel: watch::Sender<bool>,
}

/// Build the provider of a spec for one of `share` processes using it (reads API keys from the
/// environment now, so a missing key fails before any request).
pub fn make_provider(spec: &ModelSpec, share: u32) -> Result<Arc<dyn Provider>, DispatchError> {
    make_provider_with(spec, share, None, Arc::default())
}

/// [`make_provider`], with the batch state directory and the counters a batch provider reports
/// to.
fn make_provider_with(
    spec: &ModelSpec,
    share: u32,
    batch_dir: Option<std::path::PathBuf>,
    stats: Arc<DispatchStats>,
) -> Result<Arc<dyn Provider>, DispatchError> {
    let config = spec
        .provider_config()?
        .with_budget_share(share)
        .with_batch_state(batch_dir, stats);
    crate::provider::build(config).map_err(|e| DispatchError::Provider {
        alias: spec.alias.clone(),
        message: e.to_string(),
    })
}

impl Dispatcher {
    /// A dispatcher with no lanes yet; `cache` is ignored with [`CacheMode::Off`].
    pub fn new(options: DispatchOptions, cache: Option<Arc<ResponseCache>>) -> Self {
        let global = Semaphore::new(
            options
                .workers
                .unwrap_or(Semaphore::MAX_PERMITS)
                .clamp(1, Semaphore::MAX_PERMITS),
        );
        let cache = if options.cache_mode == CacheMode::Off {
            None
        } else {
            cache
        };
        Self {
            lanes: Mutex::default(),
            global,
            cache,
            options,
            stats: Arc::default(),
            cancel: watch::channel(false).0,
        }
    }

    /// The lane for a spec, creating it (and its provider) on first use.
    pub fn lane(&self, spec: &ModelSpec) -> Result<Arc<Lane>, DispatchError> {
        let key = spec.lane_key();
        if let Some(lane) = self.lanes.lock().expect("lanes lock").get(&key) {
            return Ok(Arc::clone(lane));
        }
        let provider = make_provider_with(
            spec,
            self.options.budget_share,
            self.options.batch_dir.clone(),
            Arc::clone(&self.stats),
        )?;
        let lane = Arc::new(Lane::new(spec, provider, self.options.budget_share));
        Ok(Arc::clone(
            self.lanes
                .lock()
                .expect("lanes lock")
                .entry(key)
                .or_insert(lane),
        ))
    }

    /// Register a lane with a ready-made provider (tests, benchmarks, custom backends).
    pub fn insert_lane(&self, spec: &ModelSpec, provider: Arc<dyn Provider>) -> Arc<Lane> {
        let lane = Arc::new(Lane::new(spec, provider, self.options.budget_share));
        self.lanes
            .lock()
            .expect("lanes lock")
            .insert(spec.lane_key(), Arc::clone(&lane));
        lane
    }

    /// Stop sending: queued and in-flight requests end as `cancelled`.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Execute one request: cache, caps, pacing, retries. Never fails: failures come back as an
    /// unsuccessful [`Response`].
    ///
    /// A cache hit is answered inline. Anything that goes to the provider runs as its own tokio
    /// task, so waiting for a slot, sending, decoding and caching happen on every worker thread
    /// and a freed slot goes straight to the next waiting request, without passing through the
    /// (single) task that drives a pipeline's records. Dropping the returned future aborts the
    /// request.
    pub fn execute<'a>(
        self: &'a Arc<Self>,
        lane: &'a Arc<Lane>,
        request: ChatRequest,
        key: CacheKey,
    ) -> impl Future<Output = Response> + Send + 'a {
        // A plain function returning a small future: every record of the window holds it
        // while its request waits, so it keeps only what the wait needs.
        let requested_at = OffsetDateTime::now_utc();
        let pending = self.start_request(lane, request, key, requested_at);
        async move {
            let mut response = match pending {
                Pending::Done(response) => return *response,
                Pending::Inline(future) => future.await,
                Pending::Spawned(task) => task.join().await,
            };
            if response.error.is_some() {
                response.requested_at = requested_at;
            }
            response
        }
    }

    /// The cache lookup, then the request started: inline (boxed) for a batch lane, as its own
    /// task otherwise.
    fn start_request<'a>(
        self: &'a Arc<Self>,
        lane: &'a Arc<Lane>,
        request: ChatRequest,
        key: CacheKey,
        requested_at: OffsetDateTime,
    ) -> Pending<'a> {
        if self.options.cache_mode == CacheMode::ReadWrite
            && let Some(cache) = &self.cache
        {
            match cache.get(&key) {
                Ok(Some(hit)) => {
                    DispatchStats::add(&self.stats.cache_hits, 1);
                    lane.provider.answer_stored(&request);
                    // The original request's times, so the replayed step is the same.
                    return Pending::Done(Box::new(Response::from_cached(hit, true)));
                }
                Ok(None) => {}
                Err(e) => return Pending::Done(Box::new(failure(ErrorKind::Local, e.to_string()))),
            }
        }
        if lane.batch {
            // A batch provider only queues the request and waits for its job: nothing to gain
            // from a task of its own, and a job's worth of requests wait at once, so each
            // costs only this boxed future (interrupting drops it with its record).
            Pending::Inline(Box::pin(self.send_batched(
                lane,
                Box::new(Queued {
                    request,
                    key,
                    requested_at,
                }),
            )))
        } else {
            Pending::Spawned(self.spawn_request(lane, request, key, requested_at))
        }
    }

    /// Start the request's own task. A plain function, so the waiting `execute` future holds
    /// only the handle and not a copy of the task's future (every record's future holds it).
    fn spawn_request(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        request: ChatRequest,
        key: CacheKey,
        requested_at: OffsetDateTime,
    ) -> AbortOnDrop {
        let dispatcher = Arc::clone(self);
        let lane = Arc::clone(lane);
        let mut cancelled = self.cancel.subscribe();
        AbortOnDrop(tokio::spawn(async move {
            tokio::select! {
                response = dispatcher.send_with_retries(&lane, &request, key, requested_at) => response,
                _ = cancelled.wait_for(|c| *c) => failure(
                    ErrorKind::Cancelled,
                    "interrupted before an answer arrived".into(),
                ),
            }
        }))
    }

    async fn send_with_retries(
        &self,
        lane: &Lane,
        request: &ChatRequest,
        key: CacheKey,
        requested_at: OffsetDateTime,
    ) -> Response {
        let estimate = lane.provider.estimate_prompt_tokens(&request.messages)
            + request.params.max_tokens.unwrap_or(256) as u64;
        let mut attempt = 0u32;
        loop {
            let outcome = {
                let Ok(_global) = self.global.acquire().await else {
                    return failure(ErrorKind::Cancelled, "dispatcher closed".into());
                };
                let Ok(_lane_permit) = lane.concurrency.acquire().await else {
                    return failure(ErrorKind::Cancelled, "dispatcher closed".into());
                };
                // Waits that only some lanes need are boxed: every request in flight holds this
                // future (in batch mode, a whole job's worth of them), so its size counts.
                if lane.is_paused() {
                    Box::pin(lane.wait_while_paused()).await;
                }
                if let Some(pacer) = &lane.requests {
                    Box::pin(pacer.until_ready()).await;
                }
                if lane.tokens.is_some() {
                    Box::pin(lane.take_tokens(estimate)).await;
                }
                DispatchStats::add(&self.stats.requests_sent, 1);
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let result =
                    match tokio::time::timeout(lane.timeout, lane.provider.send(request)).await {
                        Ok(result) => result,
                        Err(_) => Err(ProviderError::new(
                            ErrorKind::Timeout,
                            format!("no complete answer within {:?}", lane.timeout),
                        )),
                    };
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                // Pause the lane while this request still holds its slots: a peer woken by
                // their release must already see the pause.
                if let Err(error) = &result {
                    match error.hints.pause() {
                        Some(pause) => lane.pause_for(pause),
                        None if error.kind == ErrorKind::RateLimited => {
                            lane.pause_for(self.backoff(attempt));
                        }
                        None => {}
                    }
                }
                match result {
                    // Commit the answer while still holding the slots: "in flight" then covers
                    // everything received but not yet durable, so a kill re-pays at most the
                    // lane's concurrency.
                    Ok(reply) => {
                        let accepted = Box::pin(self.accept(lane, reply, key, requested_at)).await;
                        if accepted.0.error.is_none() {
                            lane.provider.answer_stored(request);
                        }
                        Ok(accepted)
                    }
                    Err(error) => Err(error),
                }
            };
            match outcome {
                Ok((response, used)) => {
                    if used > estimate && lane.tokens.is_some() {
                        Box::pin(lane.take_tokens(used - estimate)).await;
                    }
                    return response;
                }
                Err(error) => {
                    let delay = match self.after_failure(lane, &error, attempt) {
                        Ok(delay) => delay,
                        Err(response) => return *response,
                    };
                    attempt += 1;
                    Box::pin(tokio::time::sleep(delay)).await;
                }
            }
        }
    }

    /// A request of a batch lane: queued by the batch provider until its job's answer is
    /// back. No slots, pacing or timeout (the job has its own 24-hour window); failed items
    /// (expired, a server error) are retried as interactive ones are, into a later job. Its
    /// future is small: a job's worth of them wait at once.
    async fn send_batched(&self, lane: &Lane, queued: Box<Queued>) -> Response {
        let mut attempt = 0u32;
        loop {
            DispatchStats::add(&self.stats.requests_sent, 1);
            // One statement: only the provider's boxed future is held while the job runs.
            let next = self.after_batched(
                lane,
                &queued,
                lane.provider.send(&queued.request).await,
                attempt,
            );
            match next {
                Batched::Accept(accepting) => return accepting.await,
                Batched::Retry(delay) => {
                    attempt += 1;
                    Box::pin(tokio::time::sleep(delay)).await;
                }
                Batched::Failed(response) => return *response,
            }
        }
    }

    /// What a batch lane's request does with its job's answer.
    fn after_batched<'a>(
        &'a self,
        lane: &'a Lane,
        queued: &'a Queued,
        result: Result<ProviderReply, ProviderError>,
        attempt: u32,
    ) -> Batched<'a> {
        match result {
            Ok(reply) => Batched::Accept(Box::pin(async move {
                let (response, _) = self
                    .accept(lane, reply, queued.key, queued.requested_at)
                    .await;
                if response.error.is_none() {
                    lane.provider.answer_stored(&queued.request);
                }
                response
            })),
            Err(error) => match self.after_failure(lane, &error, attempt) {
                Ok(delay) => Batched::Retry(delay),
                Err(response) => Batched::Failed(response),
            },
        }
    }

    /// Count a failed attempt: how long to wait before retrying it, or (not retryable, or out
    /// of retries) the failed response.
    fn after_failure(
        &self,
        lane: &Lane,
        error: &ProviderError,
        attempt: u32,
    ) -> Result<Duration, Box<Response>> {
        if error.kind == ErrorKind::RateLimited {
            DispatchStats::add(&self.stats.rate_limited, 1);
        }
        if !error.kind.is_retryable() || attempt >= lane.max_retries {
            DispatchStats::add(&self.stats.failed, 1);
            let message = if error.kind.is_retryable() {
                format!("{error} (gave up after {} attempts)", attempt + 1)
            } else {
                error.to_string()
            };
            return Err(Box::new(failure(error.kind, message)));
        }
        // The lane is already paused (by the caller) when the server said how long or
        // rate-limited us; this request waits at least as long itself.
        let delay = error
            .hints
            .pause()
            .unwrap_or_else(|| self.retry_delay(error.kind, attempt));
        DispatchStats::add(&self.stats.retries, 1);
        Ok(delay)
    }

    /// The wait before retry number `attempt + 1` of a failure of `kind` the server gave no
    /// pause for. A 5xx, a cut connection, a malformed body or a timeout is retried first after
    /// tens of milliseconds, then on the usual exponential schedule (`backoff_base`, doubling);
    /// rate limits always use that schedule. (A timed-out request has already waited the whole
    /// timeout, so another half second adds nothing but tail: the stuck request, not the
    /// server's load, is what usually hangs, and overload shows up as 429s and 503s with
    /// `Retry-After`, which keep their pauses.)
    fn retry_delay(&self, kind: ErrorKind, attempt: u32) -> Duration {
        let quick_first = matches!(
            kind,
            ErrorKind::Server | ErrorKind::Connection | ErrorKind::BadBody | ErrorKind::Timeout
        );
        match (quick_first, attempt) {
            (true, 0) => with_equal_jitter(self.options.first_retry),
            (true, later) => self.backoff(later - 1),
            (false, _) => self.backoff(attempt),
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.options.backoff_cap);
        with_equal_jitter(exp)
    }

    /// Count, pace and cache a successful answer. The response is made from the cache entry,
    /// exactly as a later replay of it will be.
    async fn accept(
        &self,
        lane: &Lane,
        reply: ProviderReply,
        key: CacheKey,
        requested_at: OffsetDateTime,
    ) -> (Response, u64) {
        let received_at = OffsetDateTime::now_utc();
        let usage = reply.usage;
        let used = usage.input_tokens + usage.output_tokens;
        lane.input_tokens
            .fetch_add(usage.input_tokens, Ordering::Relaxed);
        lane.output_tokens
            .fetch_add(usage.output_tokens, Ordering::Relaxed);
        DispatchStats::add(&self.stats.input_tokens, usage.input_tokens);
        DispatchStats::add(&self.stats.output_tokens, usage.output_tokens);
        DispatchStats::add(&self.stats.responses_ok, 1);
        if let Some(pause) = reply.hints.pause() {
            lane.pause_for(pause);
        }
        let entry = CachedReply::new(
            reply.text,
            reply.finish_reason,
            usage,
            requested_at,
            received_at,
        );
        if let Some(cache) = &self.cache
            && let Err(e) = cache.put(key, &entry).await
        {
            return (
                failure(
                    ErrorKind::Local,
                    format!("answer received but not cached: {e}"),
                ),
                used,
            );
        }
        (Response::from_cached(entry, false), used)
    }

    /// Ask every lane's provider to check it can serve the run ([`Provider::preflight`]),
    /// before anything is sent; the first failure names its alias.
    pub async fn preflight(&self) -> Result<(), DispatchError> {
        for (_, lane) in self.lanes() {
            lane.provider
                .preflight()
                .await
                .map_err(|e| DispatchError::Provider {
                    alias: lane.alias.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Lanes by key, for summaries.
    pub fn lanes(&self) -> Vec<(String, Arc<Lane>)> {
        let lanes = self.lanes.lock().expect("lanes lock");
        let mut v: Vec<_> = lanes
            .iter()
            .map(|(k, l)| (k.clone(), Arc::clone(l)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Half of `delay` fixed, half random: retries of requests that failed together spread out.
fn with_equal_jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * rand::rng().random::<f64>())
}

/// A request as [`Dispatcher::execute`] started it.
enum Pending<'a> {
    /// Answered already (from the cache, or failed before sending).
    Done(Box<Response>),
    /// Waiting in its record's future (batch lanes).
    Inline(std::pin::Pin<Box<dyn Future<Output = Response> + Send + 'a>>),
    /// Running as its own task.
    Spawned(AbortOnDrop),
}

/// A batch lane's request while it waits for its job, on the heap: the future that waits holds
/// only a pointer to it.
struct Queued {
    request: ChatRequest,
    key: CacheKey,
    requested_at: OffsetDateTime,
}

/// The next move of a batch lane's request after its job answered.
enum Batched<'a> {
    /// Commit the answer to the cache, then return it.
    Accept(std::pin::Pin<Box<dyn Future<Output = Response> + Send + 'a>>),
    /// Retry after this long (the item failed or expired).
    Retry(Duration),
    /// Give up with this response.
    Failed(Box<Response>),
}

/// A spawned request that is aborted when its caller stops waiting for it.
struct AbortOnDrop(tokio::task::JoinHandle<Response>);

impl AbortOnDrop {
    async fn join(mut self) -> Response {
        match (&mut self.0).await {
            Ok(response) => response,
            Err(e) if e.is_panic() => failure(
                ErrorKind::Local,
                format!(
                    "the request task panicked: {}",
                    panic_message(&*e.into_panic())
                ),
            ),
            Err(_) => failure(ErrorKind::Cancelled, "the request was cancelled".into()),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed request, failing now (`execute` sets when it was requested).
fn failure(kind: ErrorKind, message: String) -> Response {
    let now = OffsetDateTime::now_utc();
    Response::failed(StepError::new(kind.as_str(), message), now, now)
}

/// The text of a panic payload (`&str` or `String`), for error messages.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_retry_of_a_server_cut_malformed_or_timed_out_failure_is_quick() {
        let dispatcher = Dispatcher::new(DispatchOptions::default(), None);
        for _ in 0..50 {
            for kind in [
                ErrorKind::Server,
                ErrorKind::Connection,
                ErrorKind::BadBody,
                ErrorKind::Timeout,
            ] {
                let first = dispatcher.retry_delay(kind, 0);
                assert!(
                    (Duration::from_millis(20)..=Duration::from_millis(40)).contains(&first),
                    "{kind:?} first retry after {first:?}"
                );
                let second = dispatcher.retry_delay(kind, 1);
                assert!(
                    (Duration::from_millis(250)..=Duration::from_millis(500)).contains(&second),
                    "{kind:?} second retry after {second:?}"
                );
                let third = dispatcher.retry_delay(kind, 2);
                assert!(
                    third >= Duration::from_millis(500),
                    "{kind:?} third {third:?}"
                );
            }
            let first = dispatcher.retry_delay(ErrorKind::RateLimited, 0);
            assert!(
                (Duration::from_millis(250)..=Duration::from_millis(500)).contains(&first),
                "a rate limit's first retry after {first:?}"
            );
        }
    }
}
