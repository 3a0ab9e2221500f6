//! Counters, arrival timestamps and the request log kept by the mock server.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::config::Api;
use crate::fault::Fault;

/// One received request, as logged when `MockConfig::record_requests` is on.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// 0-based index in arrival order (over all received requests).
    pub index: u64,
    /// Arrival time relative to server start.
    pub at: Duration,
    /// The wire format, from the path.
    pub api: Api,
    /// The HTTP method (`POST`).
    pub method: String,
    /// The request path (`/v1/chat/completions`, `/v1/messages`).
    pub path: String,
    /// All request headers, lower-cased names, including `authorization` / `x-api-key`.
    pub headers: Vec<(String, String)>,
    /// The `model` field; None when absent, empty or the body did not parse.
    pub model: Option<String>,
    /// Anthropic top-level `system` (flattened to text).
    pub system: Option<String>,
    /// The `messages` array exactly as sent (`Value::Null` if absent or body unparsable).
    pub messages: Value,
    /// Last user message, flattened to text.
    pub last_user: Option<String>,
    /// The raw body parsed as JSON (`Value::Null` if unparsable).
    pub body: Value,
    /// Injected fault, if any.
    pub fault: Option<Fault>,
    /// Status sent (None while in flight, or when the connection was reset / cut).
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Snapshot of the server counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Requests whose head was received on a known or unknown path.
    pub received: u64,
    /// Requests that passed auth/validation/faults/rate limiting and were served a completion.
    pub accepted: u64,
    /// 200 responses carrying a real completion (i.e. accepted and completed).
    pub successes: u64,
    /// 429 responses, rate-limiter and injected.
    pub rate_limited: u64,
    /// 429 responses produced by the rpm/tpm limiter only.
    pub limiter_rejections: u64,
    /// Requests that got an injected fault.
    pub faults_injected: u64,
    /// Connections reset by `Fault::ResetConnection`.
    pub resets: u64,
    /// Responses cut by `Fault::CloseMidBody`.
    pub mid_body_closes: u64,
    /// Count of responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests currently being handled.
    pub in_flight: usize,
    /// Highest number of concurrently handled requests observed.
    pub max_in_flight: usize,
    /// TCP connections accepted.
    pub connections: u64,
    /// Highest number of concurrently open TCP connections.
    pub max_connections: usize,
    /// Seconds since the server started.
    pub elapsed_secs: f64,
    /// Total time accepted requests were held before their response was built (the configured
    /// latency as the server's timer actually delivered it), in microseconds.
    pub held_micros_total: u64,
    /// Requests counted in `held_micros_total`.
    pub held_count: u64,
    /// Files uploaded with `POST /v1/files`.
    pub files_uploaded: u64,
    /// Batches created (OpenAI `POST /v1/batches` and Anthropic `POST /v1/messages/batches`).
    pub batches_created: u64,
    /// GETs of one batch (`GET /v1/batches/{id}`, `GET /v1/messages/batches/{id}`).
    pub batch_polls: u64,
    /// Batch cancellations accepted.
    pub batches_cancelled: u64,
    /// Batch items answered successfully.
    pub batch_items_succeeded: u64,
    /// Batch items that did not succeed: errored, expired or cancelled.
    pub batch_items_failed: u64,
    /// Downloads of batch results: OpenAI output/error file contents, Anthropic results.
    pub result_downloads: u64,
    /// Requests by last user message (not serialized; can be large).
    #[serde(skip)]
    pub by_prompt: HashMap<String, u64>,
}

impl Stats {
    /// Responses sent with HTTP status `code`.
    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code).copied().unwrap_or(0)
    }
    /// Requests whose last user message was exactly `prompt`.
    pub fn prompt_count(&self, prompt: &str) -> u64 {
        self.by_prompt.get(prompt).copied().unwrap_or(0)
    }
}

pub(crate) struct Recorder {
    pub start: Instant,
    pub stats: Stats,
    pub received_times: Vec<Duration>,
    pub accepted_times: Vec<Duration>,
    pub log: Vec<RecordedRequest>,
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            stats: Stats::default(),
            received_times: Vec::new(),
            accepted_times: Vec::new(),
            log: Vec::new(),
        }
    }

    pub(crate) fn reset(&mut self) {
        let keep_conn = (self.stats.in_flight, self.stats.connections);
        self.stats = Stats::default();
        self.stats.in_flight = keep_conn.0;
        self.stats.connections = keep_conn.1;
        self.received_times.clear();
        self.accepted_times.clear();
        self.log.clear();
    }
}

/// Largest number of timestamps inside any half-open window `[t, t + window)`.
pub fn max_in_any_window(times: &[Duration], window: Duration) -> usize {
    let mut v = times.to_vec();
    v.sort_unstable();
    let mut best = 0;
    let mut j = 0;
    for i in 0..v.len() {
        if j < i {
            j = i;
        }
        let end = v[i] + window;
        while j < v.len() && v[j] < end {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// Counts per whole second since server start.
pub fn per_second_histogram(times: &[Duration]) -> Vec<u64> {
    let mut h: Vec<u64> = Vec::new();
    for t in times {
        let b = t.as_secs() as usize;
        if h.len() <= b {
            h.resize(b + 1, 0);
        }
        h[b] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_max() {
        let ms = |x| Duration::from_millis(x);
        let t = [ms(0), ms(100), ms(999), ms(1000), ms(1500), ms(1600)];
        assert_eq!(max_in_any_window(&t, ms(1000)), 4);
        assert_eq!(max_in_any_window(&t, ms(600)), 3);
        assert_eq!(max_in_any_window(&t, ms(500)), 2);
        assert_eq!(max_in_any_window(&[], ms(1000)), 0);
        assert_eq!(per_second_histogram(&t), vec![3, 3]);
    }
}
