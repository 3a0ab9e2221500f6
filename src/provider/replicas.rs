//! Many replicas behind one alias (`base_urls`): one HTTP provider per endpoint, least-loaded routing under per-endpoint caps, ejection of failing endpoints with probes.
//!
//! Routing: a request goes to the healthy endpoint with the fewest requests in flight relative
//! to its cap (ties rotate), and never to an endpoint at its cap: it waits for a slot instead.
//! The lane above caps the total at the sum of the caps, so a request waits here only while
//! some endpoint is ejected.
//!
//! Health: a streak of [`HealthPolicy::failures_to_eject`] failures of an endpoint (connection
//! refused or reset, 5xx, timeouts, undecodable bodies; any other answer ends the streak)
//! ejects it for a backoff period that doubles with each failed probe, up to a cap. When the
//! period is over, the next request is its probe (one at a time): an answer restores it, a
//! failure ejects it again. A request that failed on an endpoint that way is sent once more, at
//! once, to another healthy endpoint (never back to one it tried), so a dead replica or a
//! failed probe costs the request a round trip, not a retry of the dispatcher.
//!
//! When no endpoint is healthy and no probe is due, a request fails at once with the last
//! error seen (a retryable kind): the dispatcher's retries with backoff, and then
//! `--max-error-share`, handle the outage exactly as they handle one endpoint that is down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    BoxFuture, ChatRequest, ErrorKind, HttpConfig, Message, Provider, ProviderError, ProviderReply,
    RateLimitHints,
};

/// Which wire format every endpoint of a replica set speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI-compatible chat completions (vLLM, SGLang, llama.cpp's server, OpenAI).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// When an endpoint is taken out of rotation, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures (connection, 5xx, timeout, bad body) that eject an endpoint.
    pub failures_to_eject: u32,
    /// The first ejection lasts this long; each failed probe doubles it…
    pub eject_base: Duration,
    /// …up to this.
    pub eject_cap: Duration,
}

impl Default for HealthPolicy {
    /// Five failures in a row: a dead endpoint reaches that at once, while a healthy one that
    /// fails a few per cent of requests at random (each failed over to another) almost never
    /// does (0.05⁵ ≈ 3·10⁻⁷ per request).
    fn default() -> Self {
        Self {
            failures_to_eject: 5,
            eject_base: Duration::from_secs(1),
            eject_cap: Duration::from_secs(30),
        }
    }
}

impl HealthPolicy {
    /// How long ejection number `n` (1-based, counted since the endpoint last answered) lasts.
    fn ejection(&self, n: u32) -> Duration {
        self.eject_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.eject_cap.max(self.eject_base))
    }
}

/// A replica set of one alias (made by `models.rs` from `base_urls`).
#[derive(Debug, Clone)]
pub struct ReplicaSetConfig {
    /// The alias, for error messages.
    pub alias: String,
    /// The wire format every endpoint speaks.
    pub wire: Wire,
    /// One per endpoint, in the order of `base_urls`; each `max_concurrency` is that endpoint's
    /// cap. All share the model id, key and timeouts.
    pub endpoints: Vec<HttpConfig>,
    /// When an endpoint is ejected and for how long.
    pub health: HealthPolicy,
}

impl ReplicaSetConfig {
    /// Each endpoint's cap divided by `share` (rounded up): `k` processes sharing the set
    /// (parallel `data`) together stay within every endpoint's cap.
    pub fn with_budget_share(mut self, share: u32) -> Self {
        let share = share.max(1) as usize;
        for endpoint in &mut self.endpoints {
            endpoint.max_concurrency = endpoint.max_concurrency.div_ceil(share).max(1);
        }
        self
    }
}

/// One endpoint as the router sees it.
struct Endpoint {
    url: String,
    cap: usize,
    provider: Arc<dyn Provider>,
}

/// Whether an endpoint takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    /// Out of rotation until `until`; then the next request is its probe (`probing` while it runs).
    Ejected {
        until: Instant,
        probing: bool,
    },
}

/// The mutable state of one endpoint.
struct EndpointState {
    health: Health,
    in_flight: usize,
    /// Consecutive failures counted toward ejection.
    streak: u32,
    /// Ejections since the endpoint last answered a probe (the backoff's exponent).
    ejections_in_a_row: u32,
    /// Changes at every ejection and restoration: outcomes of requests sent in an earlier epoch
    /// do not move the health state.
    epoch: u64,
    /// The endpoint's latest failure (of the kinds above) and when it came.
    last_error: Option<(Instant, ProviderError)>,
    counters: Counters,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    sent: u64,
    succeeded: u64,
    failed: u64,
    probes: u64,
    ejections: u64,
    max_in_flight: usize,
}

/// What an endpoint has seen so far (tests, benchmarks, summaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint's base URL, as in `base_urls`.
    pub url: String,
    /// Requests in flight at most (after the budget share).
    pub max_concurrency: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Highest number of requests in flight at once.
    pub max_in_flight: usize,
    /// Requests sent (probes included).
    pub sent: u64,
    /// Requests the endpoint answered.
    pub succeeded: u64,
    /// Requests that came back with an error (only connection errors, 5xx, timeouts and
    /// undecodable bodies count towards ejection).
    pub failed: u64,
    /// Requests sent as probes of an ejected endpoint.
    pub probes: u64,
    /// Times the endpoint was ejected (the first one and after each failed probe).
    pub ejections: u64,
    /// In rotation now (not ejected).
    pub healthy: bool,
}

/// Where the router sends a request.
struct Slot {
    index: usize,
    epoch: u64,
    probe: bool,
}

/// What the router decided for one request.
enum Route {
    Send(Slot),
    /// Every usable endpoint is at its cap: wait for a slot (or until `wake`, when a probe is due).
    Wait {
        wake: Option<Instant>,
    },
    /// Nothing to send to.
    Fail(ProviderError),
}

/// The provider of a replica set.
pub struct ReplicaProvider {
    alias: String,
    endpoints: Vec<Endpoint>,
    state: Mutex<Vec<EndpointState>>,
    /// Signalled whenever a slot frees or an endpoint's health changes.
    changed: Notify,
    policy: HealthPolicy,
    /// A request's whole time here (waiting for a slot, sending, failing over) ends this much
    /// before the lane's timeout: the endpoint that hung is then known and blamed.
    deadline: Duration,
    /// Rotates the start of the search so that equal loads take turns.
    cursor: AtomicUsize,
}

impl std::fmt::Debug for ReplicaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaProvider")
            .field("alias", &self.alias)
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| &e.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<Vec<EndpointState>>) -> MutexGuard<'_, Vec<EndpointState>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Failures that count against an endpoint's health (and are failed over to another one).
fn is_endpoint_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Connection | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::BadBody
    )
}

impl ReplicaProvider {
    /// One OpenAI-compatible or Anthropic provider per endpoint of `config`.
    pub fn new(config: &ReplicaSetConfig) -> Result<Self, super::openai::NewProviderError> {
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for http in &config.endpoints {
            let provider: Arc<dyn Provider> = match config.wire {
                Wire::OpenAi => Arc::new(super::openai::OpenAiProvider::new(http)?),
                Wire::Anthropic => Arc::new(super::anthropic::AnthropicProvider::new(http)?),
            };
            endpoints.push((
                http.base_url.clone().unwrap_or_default(),
                http.max_concurrency,
                provider,
            ));
        }
        let timeout = config
            .endpoints
            .iter()
            .map(|e| e.timeout)
            .max()
            .unwrap_or(Duration::from_secs(600));
        Ok(Self::with_providers(
            &config.alias,
            endpoints,
            config.health,
            timeout,
        ))
    }

    /// A replica set over ready-made providers: `(label, cap, provider)` per endpoint. `timeout`
    /// is the lane's: requests end here slightly before it.
    pub fn with_providers(
        alias: &str,
        endpoints: Vec<(String, usize, Arc<dyn Provider>)>,
        policy: HealthPolicy,
        timeout: Duration,
    ) -> Self {
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .map(|(url, cap, provider)| Endpoint {
                url,
                cap: cap.max(1),
                provider,
            })
            .collect();
        let state = endpoints
            .iter()
            .map(|_| EndpointState {
                health: Health::Healthy,
                in_flight: 0,
                streak: 0,
                ejections_in_a_row: 0,
                epoch: 0,
                last_error: None,
                counters: Counters::default(),
            })
            .collect();
        let margin = (timeout / 10).min(Duration::from_secs(1));
        Self {
            alias: alias.to_owned(),
            endpoints,
            state: Mutex::new(state),
            changed: Notify::new(),
            policy: HealthPolicy {
                failures_to_eject: policy.failures_to_eject.max(1),
                ..policy
            },
            deadline: timeout.saturating_sub(margin),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Every endpoint's counters and health, in configuration order.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let state = lock(&self.state);
        self.endpoints
            .iter()
            .zip(state.iter())
            .map(|(endpoint, s)| EndpointStatus {
                url: endpoint.url.clone(),
                max_concurrency: endpoint.cap,
                in_flight: s.in_flight,
                max_in_flight: s.counters.max_in_flight,
                sent: s.counters.sent,
                succeeded: s.counters.succeeded,
                failed: s.counters.failed,
                probes: s.counters.probes,
                ejections: s.counters.ejections,
                healthy: s.health == Health::Healthy,
            })
            .collect()
    }

    /// The sum of the endpoints' caps.
    pub fn total_concurrency(&self) -> usize {
        self.endpoints.iter().map(|e| e.cap).sum()
    }

    /// Decide where a request goes. A fresh request (`tried` empty) takes a due probe first,
    /// then the least-loaded healthy endpoint; a failover only goes to healthy endpoints it
    /// has not tried.
    fn route(&self, state: &mut [EndpointState], tried: &[usize], now: Instant) -> Route {
        let n = self.endpoints.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        let fresh = tried.is_empty();
        let mut best: Option<usize> = None;
        let mut any_healthy = false;
        let mut next_due: Option<Instant> = None;
        for i in order {
            let (s, cap) = (&state[i], self.endpoints[i].cap);
            match s.health {
                Health::Ejected { until, probing } => {
                    if !fresh || probing {
                        continue;
                    }
                    if until > now {
                        next_due = Some(next_due.map_or(until, |d| d.min(until)));
                    } else if s.in_flight < cap {
                        return Route::Send(self.take(state, i, true));
                    }
                }
                Health::Healthy => {
                    any_healthy = true;
                    if s.in_flight >= cap {
                        continue;
                    }
                    // Fewest in flight relative to the cap: a/ca < b/cb ⇔ a·cb < b·ca.
                    let better = best.is_none_or(|b| {
                        s.in_flight * self.endpoints[b].cap < state[b].in_flight * cap
                    });
                    if better {
                        best = Some(i);
                    }
                }
            }
        }
        if let Some(i) = best {
            return Route::Send(self.take(state, i, false));
        }
        if any_healthy {
            return Route::Wait { wake: next_due };
        }
        Route::Fail(self.all_down(state, now))
    }

    /// Count a request into endpoint `i`.
    fn take(&self, state: &mut [EndpointState], i: usize, probe: bool) -> Slot {
        let s = &mut state[i];
        s.in_flight += 1;
        s.counters.sent += 1;
        s.counters.max_in_flight = s.counters.max_in_flight.max(s.in_flight);
        if probe {
            s.counters.probes += 1;
            if let Health::Ejected { probing, .. } = &mut s.health {
                *probing = true;
            }
        }
        Slot {
            index: i,
            epoch: s.epoch,
            probe,
        }
    }

    /// The error of a request that found no endpoint to send to: the latest failure seen, as a
    /// retryable kind, so the dispatcher backs off and retries.
    fn all_down(&self, state: &[EndpointState], now: Instant) -> ProviderError {
        let next_probe = state
            .iter()
            .filter_map(|s| match s.health {
                Health::Ejected { until, .. } => Some(until.saturating_duration_since(now)),
                Health::Healthy => None,
            })
            .min()
            .unwrap_or_default();
        let last = state
            .iter()
            .zip(&self.endpoints)
            .filter_map(|(s, e)| s.last_error.as_ref().map(|(at, err)| (at, err, &e.url)))
            .max_by_key(|(at, _, _)| **at)
            .map(|(_, err, url)| (err, url));
        let kind = last
            .map(|(e, _)| e.kind)
            .filter(|k| k.is_retryable())
            .unwrap_or(ErrorKind::Connection);
        let detail = last.map_or_else(String::new, |(e, url)| {
            format!("; last error from {url}: {}", e.message)
        });
        ProviderError {
            kind,
            status: last.and_then(|(e, _)| e.status),
            message: format!(
                "all {} endpoints of model '{}' are out of rotation (next probe in {:.1} s){detail}",
                self.endpoints.len(),
                self.alias,
                next_probe.as_secs_f64()
            ),
            hints: RateLimitHints::default(),
        }
    }

    /// Wait for a route, until `deadline`.
    async fn acquire(&self, tried: &[usize], deadline: Instant) -> Result<Slot, ProviderError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let route = {
                let mut state = lock(&self.state);
                self.route(&mut state, tried, Instant::now())
            };
            let wake = match route {
                Route::Send(slot) => return Ok(slot),
                Route::Fail(error) => return Err(error),
                Route::Wait { wake } => wake.map_or(deadline, |w| w.min(deadline)),
            };
            if Instant::now() >= deadline {
                return Err(ProviderError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no endpoint of model '{}' had a free slot in time",
                        self.alias
                    ),
                ));
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Record the outcome of a request sent to `slot` and free its place.
    fn finish(&self, slot: &Slot, outcome: Option<&Result<ProviderReply, ProviderError>>) {
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            let s = &mut state[slot.index];
            s.in_flight -= 1;
            match outcome {
                Some(Ok(_)) => s.counters.succeeded += 1,
                Some(Err(e)) => {
                    s.counters.failed += 1;
                    if is_endpoint_failure(e.kind) {
                        s.last_error = Some((now, e.clone()));
                    }
                }
                None => {}
            }
            let failed = match outcome {
                // Cancelled (the caller stopped waiting): no verdict; a probe is due again.
                None => {
                    if slot.probe
                        && let Health::Ejected { probing, .. } = &mut s.health
                    {
                        *probing = false;
                    }
                    None
                }
                Some(result) => Some(matches!(result, Err(e) if is_endpoint_failure(e.kind))),
            };
            if let Some(failed) = failed
                && slot.epoch == s.epoch
            {
                if slot.probe {
                    if failed {
                        self.eject(s, now);
                    } else {
                        s.health = Health::Healthy;
                        s.streak = 0;
                        s.ejections_in_a_row = 0;
                        s.epoch += 1;
                    }
                } else if s.health == Health::Healthy {
                    if failed {
                        s.streak += 1;
                        if s.streak >= self.policy.failures_to_eject {
                            self.eject(s, now);
                        }
                    } else {
                        s.streak = 0;
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    fn eject(&self, s: &mut EndpointState, now: Instant) {
        s.ejections_in_a_row += 1;
        s.counters.ejections += 1;
        s.streak = 0;
        s.epoch += 1;
        s.health = Health::Ejected {
            until: now + self.policy.ejection(s.ejections_in_a_row),
            probing: false,
        };
    }

    async fn send_inner(&self, request: &ChatRequest) -> Result<ProviderReply, ProviderError> {
        let deadline = Instant::now() + self.deadline;
        let mut tried: Vec<usize> = Vec::new();
        let mut first_error: Option<ProviderError> = None;
        loop {
            let slot = match self.acquire(&tried, deadline).await {
                Ok(slot) => slot,
                // A failover with nowhere to go: the failure that started it.
                Err(error) => return Err(first_error.unwrap_or(error)),
            };
            let endpoint = &self.endpoints[slot.index];
            let mut guard = Finish {
                provider: self,
                slot: &slot,
                done: false,
            };
            let result =
                match tokio::time::timeout_at(deadline, endpoint.provider.send(request)).await {
                    Ok(result) => result,
                    Err(_) => Err(ProviderError::new(
                        ErrorKind::Timeout,
                        "no complete answer in time".to_owned(),
                    )),
                };
            guard.done = true;
            self.finish(&slot, Some(&result));
            match result {
                Ok(reply) => return Ok(reply),
                Err(mut error) => {
                    error.message = format!("{}: {}", endpoint.url, error.message);
                    let fail_over = is_endpoint_failure(error.kind)
                        && error.kind != ErrorKind::Timeout
                        && tried.len() + 1 < self.endpoints.len();
                    if !fail_over {
                        return Err(first_error.unwrap_or(error));
                    }
                    tried.push(slot.index);
                    first_error.get_or_insert(error);
                }
            }
        }
    }
}

/// Frees a request's slot if its future is dropped before an outcome (cancellation).
struct Finish<'a> {
    provider: &'a ReplicaProvider,
    slot: &'a Slot,
    done: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.provider.finish(self.slot, None);
        }
    }
}

impl Provider for ReplicaProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(self.send_inner(request))
    }

    fn estimate_prompt_tokens(&self, messages: &[Message]) -> u64 {
        self.endpoints
            .first()
            .map_or(0, |e| e.provider.estimate_prompt_tokens(messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Params, Usage};
    use std::sync::atomic::AtomicBool;

    /// A provider that answers after `delay`, fails with `kind` while `failing`, or never
    /// answers (`hang`).
    struct Fake {
        delay: Duration,
        kind: ErrorKind,
        failing: AtomicBool,
        hang: bool,
    }

    impl Fake {
        fn answering(delay_ms: u64) -> Arc<Self> {
            Arc::new(Self {
                delay: Duration::from_millis(delay_ms),
                kind: ErrorKind::Server,
                failing: AtomicBool::new(false),
                hang: false,
            })
        }
        fn failing(kind: ErrorKind) -> Arc<Self> {
            Arc::new(Self {
                delay: Duration::ZERO,
                kind,
                failing: AtomicBool::new(true),
                hang: false,
            })
        }
        fn hanging() -> Arc<Self> {
            Arc::new(Self {
                delay: Duration::ZERO,
                kind: ErrorKind::Server,
                failing: AtomicBool::new(false),
                hang: true,
            })
        }
    }

    impl Provider for Fake {
        fn send<'a>(
            &'a self,
            _: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
            Box::pin(async move {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.delay).await;
                if self.failing.load(Ordering::Relaxed) {
                    return Err(ProviderError::new(self.kind, "fake failure"));
                }
                Ok(ProviderReply {
                    text: "ok".into(),
                    finish_reason: None,
                    usage: Usage::default(),
                    hints: RateLimitHints::default(),
                })
            })
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user("hi")],
            params: Params::default(),
            derived_seed: 1,
        }
    }

    fn replica_set(fakes: &[(&Arc<Fake>, usize)], timeout: Duration) -> Arc<ReplicaProvider> {
        let endpoints = fakes
            .iter()
            .enumerate()
            .map(|(i, (fake, cap))| {
                let provider: Arc<dyn Provider> = Arc::clone(fake) as Arc<dyn Provider>;
                (format!("fake-{i}"), *cap, provider)
            })
            .collect();
        let policy = HealthPolicy {
            failures_to_eject: 3,
            eject_base: Duration::from_millis(100),
            eject_cap: Duration::from_millis(400),
        };
        Arc::new(ReplicaProvider::with_providers(
            "m", endpoints, policy, timeout,
        ))
    }

    fn make_probe_due(replicas: &ReplicaProvider, index: usize) {
        lock(&replicas.state)[index].health = Health::Ejected {
            until: Instant::now(),
            probing: false,
        };
    }

    #[test]
    fn ejections_double_up_to_the_cap() {
        let p = HealthPolicy::default();
        let secs: Vec<u64> = (1..=7).map(|n| p.ejection(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[tokio::test]
    async fn load_follows_the_caps_and_never_exceeds_them() {
        let (a, b) = (Fake::answering(30), Fake::answering(30));
        let replicas = replica_set(&[(&a, 1), (&b, 3)], Duration::from_secs(10));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let r = Arc::clone(&replicas);
                tokio::spawn(async move { r.send(&request()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let status = replicas.status();
        assert_eq!(status[0].max_in_flight, 1, "{status:?}");
        assert_eq!(status[1].max_in_flight, 3, "{status:?}");
        assert_eq!(status[0].sent + status[1].sent, 40);
        assert!(status[1].sent >= 2 * status[0].sent, "{status:?}");
    }

    #[tokio::test]
    async fn a_failing_endpoint_is_ejected_then_only_probed_and_its_requests_fail_over() {
        let bad = Fake::failing(ErrorKind::Connection);
        let good = Fake::answering(5);
        let replicas = replica_set(&[(&bad, 4), (&good, 4)], Duration::from_secs(10));
        let started = std::time::Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_millis(600) {
            replicas.send(&request()).await.expect("failed over");
            answered += 1;
        }
        let status = replicas.status();
        assert!(!status[0].healthy);
        assert!(status[0].probes >= 1, "{status:?}");
        // Three failures eject it; after that it gets only probes, each failing once more.
        assert_eq!(status[0].sent, 3 + status[0].probes, "{status:?}");
        assert_eq!(status[0].ejections, 1 + status[0].probes, "{status:?}");
        assert_eq!(status[1].succeeded, answered);
    }

    #[tokio::test]
    async fn a_successful_probe_restores_the_endpoint() {
        let flaky = Fake::failing(ErrorKind::Server);
        let good = Fake::answering(0);
        let replicas = replica_set(&[(&flaky, 2), (&good, 2)], Duration::from_secs(10));
        for _ in 0..6 {
            replicas.send(&request()).await.unwrap();
        }
        assert!(!replicas.status()[0].healthy);
        flaky.failing.store(false, Ordering::Relaxed);
        make_probe_due(&replicas, 0);
        replicas.send(&request()).await.unwrap();
        let status = replicas.status();
        assert!(status[0].healthy, "{status:?}");
        assert_eq!(
            (status[0].probes, status[0].succeeded),
            (1, 1),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn hanging_endpoints_are_ejected_after_timeouts_and_then_fail_fast() {
        let hung = Fake::hanging();
        let replicas = replica_set(&[(&hung, 4)], Duration::from_millis(200));
        for _ in 0..3 {
            let err = replicas.send(&request()).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
        }
        assert!(!replicas.status()[0].healthy);
        let started = std::time::Instant::now();
        let err = replicas.send(&request()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "fails at once"
        );
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(
            err.message.contains("all 1 endpoints of model 'm'"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_cancelled_probe_leaves_the_probe_due() {
        let (hung, good) = (Fake::hanging(), Fake::answering(0));
        let replicas = replica_set(&[(&hung, 2), (&good, 2)], Duration::from_secs(10));
        make_probe_due(&replicas, 0);
        let probe =
            tokio::time::timeout(Duration::from_millis(20), replicas.send(&request())).await;
        assert!(probe.is_err(), "the probe hangs and is dropped");
        let status = replicas.status();
        assert_eq!(
            (status[0].probes, status[0].in_flight),
            (1, 0),
            "{status:?}"
        );
        assert!(matches!(
            lock(&replicas.state)[0].health,
            Health::Ejected { probing: false, .. }
        ));
    }
}
