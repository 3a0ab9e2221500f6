//! Server configuration: timing, limits, auth, known models, responder and fault plan.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::fault::FaultPlan;

/// Which wire format a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions`
    OpenAi,
    /// `POST /v1/messages`
    Anthropic,
}

/// One chat message with its content flattened to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// The role as sent (`system`, `user`, `assistant`; empty when missing).
    pub role: String,
    /// The content; a list of content blocks is joined into one text.
    pub content: String,
}

/// The parsed request as seen by a [`Responder`].
#[derive(Debug, Clone)]
pub struct ChatView {
    /// The wire format of the request.
    pub api: Api,
    /// The `model` field of the request.
    pub model: String,
    /// Anthropic top-level `system` (flattened to text). OpenAI system messages stay in `messages`.
    pub system: Option<String>,
    /// The `messages` array, each content flattened to text.
    pub messages: Vec<ChatMessage>,
    /// `temperature`, if sent.
    pub temperature: Option<f64>,
    /// `top_p`, if sent.
    pub top_p: Option<f64>,
    /// `max_tokens` (or OpenAI's `max_completion_tokens`), if sent.
    pub max_tokens: Option<u64>,
    /// `stop` (OpenAI, a string or a list) or `stop_sequences` (Anthropic); empty when absent.
    pub stop: Vec<String>,
    /// `seed`, if sent.
    pub seed: Option<i64>,
    /// The whole request body.
    pub raw: Value,
}

impl ChatView {
    /// Content of the last message whose role is `user`.
    pub fn last_user(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
    }
}

/// Produces the assistant reply text for a request.
pub type Responder = Arc<dyn Fn(&ChatView) -> String + Send + Sync>;

/// The default reply: `reply[<model>]: <last user message>`.
pub fn default_reply(view: &ChatView) -> String {
    format!("reply[{}]: {}", view.model, view.last_user().unwrap_or(""))
}

/// Configuration of a [`crate::MockServer`]. `MockConfig::default()` is an instant, unlimited,
/// fault-free server accepting any key and model.
#[derive(Clone)]
pub struct MockConfig {
    /// Port to bind on 127.0.0.1 (0 = ephemeral).
    pub port: u16,
    /// Required API key (`Authorization: Bearer` / `x-api-key`). `None` = no auth.
    pub api_key: Option<String>,
    /// Known models; unknown ones get 404 `model_not_found`. `None` = accept any.
    pub models: Option<Vec<String>>,
    /// Base latency added to every successful response.
    pub latency: Duration,
    /// Extra uniform random latency in `[0, jitter]` on every successful response.
    pub jitter: Duration,
    /// Simulated generation speed: adds `completion_tokens / tps` seconds. `None` = infinite.
    pub tokens_per_second: Option<f64>,
    /// Requests per minute, enforced as `max(1, rpm * window / 60s)` accepted requests per sliding
    /// `rate_window`.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute, enforced like `rpm`.
    pub tpm: Option<u32>,
    /// Sliding window used for `rpm`/`tpm` enforcement (default 1 s).
    pub rate_window: Duration,
    /// Requests served at once, like an inference server's batch size (vLLM's
    /// `--max-num-seqs`): more wait in a queue, in arrival order, before their latency starts.
    /// They count as in flight (`Stats::max_in_flight` is what the client sent at once).
    /// `None` = no limit.
    pub max_in_flight: Option<usize>,
    /// Reply generator (default [`default_reply`]).
    pub responder: Responder,
    /// Fault injection plan (can be replaced at runtime with `MockServer::set_fault_plan`).
    pub faults: FaultPlan,
    /// Keep a log of every request (headers, messages). Disable for long benchmarks.
    pub record_requests: bool,
    /// Seed for the jitter RNG (and, plus the batch number, for the order of batch results).
    pub seed: u64,
    /// Time from a batch's creation until it ends (OpenAI: `validating` for the first quarter,
    /// then `in_progress`; Anthropic: `in_progress`). Default 200 ms; can be changed at runtime
    /// with `MockServer::set_batch_latency`.
    pub batch_latency: Duration,
    /// List batch results (OpenAI output/error files, Anthropic results) in a shuffled order,
    /// never the input order (default on), so clients must match them by `custom_id`.
    pub batch_shuffle: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            port: 0,
            api_key: None,
            models: None,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            tokens_per_second: None,
            rpm: None,
            tpm: None,
            rate_window: Duration::from_secs(1),
            max_in_flight: None,
            responder: Arc::new(default_reply),
            faults: FaultPlan::default(),
            record_requests: true,
            seed: 0,
            batch_latency: Duration::from_millis(200),
            batch_shuffle: true,
        }
    }
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("port", &self.port)
            .field("api_key", &self.api_key)
            .field("models", &self.models)
            .field("latency", &self.latency)
            .field("jitter", &self.jitter)
            .field("tokens_per_second", &self.tokens_per_second)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("rate_window", &self.rate_window)
            .field("max_in_flight", &self.max_in_flight)
            .field("faults", &self.faults)
            .field("record_requests", &self.record_requests)
            .field("seed", &self.seed)
            .field("batch_latency", &self.batch_latency)
            .field("batch_shuffle", &self.batch_shuffle)
            .finish_non_exhaustive()
    }
}

impl MockConfig {
    /// The default: an instant, unlimited, fault-free server accepting any key and model.
    pub fn new() -> Self {
        Self::default()
    }
    /// Require this API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Accept only these models (others get 404 `model_not_found`).
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }
    /// Add this latency to every successful response.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }
    /// Add up to this much random latency to every successful response.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    /// Simulate generation at this many tokens per second.
    pub fn tokens_per_second(mut self, tps: f64) -> Self {
        self.tokens_per_second = Some(tps);
        self
    }
    /// Enforce this many requests per minute, over the sliding `rate_window`.
    pub fn rpm(mut self, rpm: u32) -> Self {
        self.rpm = Some(rpm);
        self
    }
    /// Enforce this many tokens (prompt + completion) per minute, over the sliding `rate_window`.
    pub fn tpm(mut self, tpm: u32) -> Self {
        self.tpm = Some(tpm);
        self
    }
    /// The sliding window of the `rpm`/`tpm` limits.
    pub fn rate_window(mut self, d: Duration) -> Self {
        self.rate_window = d;
        self
    }
    /// Serve at most `n` requests at once; later ones wait (like vLLM's `--max-num-seqs`).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n.max(1));
        self
    }

    /// Generate replies with `f`.
    pub fn responder(mut self, f: impl Fn(&ChatView) -> String + Send + Sync + 'static) -> Self {
        self.responder = Arc::new(f);
        self
    }
    /// Inject the faults of `plan`.
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.faults = plan;
        self
    }
    /// Keep (or not) a log of every request.
    pub fn record_requests(mut self, on: bool) -> Self {
        self.record_requests = on;
        self
    }
    /// Seed the jitter RNG and the order of batch results.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Time from a batch's creation until it ends.
    pub fn batch_latency(mut self, d: Duration) -> Self {
        self.batch_latency = d;
        self
    }
    /// Shuffle batch results (default) or list them in input order.
    pub fn batch_shuffle(mut self, on: bool) -> Self {
        self.batch_shuffle = on;
        self
    }
}
