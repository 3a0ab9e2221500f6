//! Providers: the one small trait every model backend implements, and the wire-neutral request/reply types.
//!
//! The dispatcher owns scheduling, limits, retries and caching; a provider only turns one
//! [`ChatRequest`] into one [`ProviderReply`] (or a classified [`ProviderError`]). API keys are read
//! by the provider from the environment at construction and never leave it.

pub mod anthropic;
pub mod batch;
pub mod gbnf;
#[cfg(feature = "local-model")]
pub mod llama_cpp;
pub mod local;
pub mod openai;
pub mod replicas;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The plain data of a request and its answer, defined with the line formats that record them.
pub use crate::format::{Message, Params, Usage};

/// How to reach one HTTP model endpoint (OpenAI-compatible or Anthropic), made by `models.rs`
/// from an alias. The key was read from the environment by then; it stays inside the provider.
#[derive(Clone)]
pub struct HttpConfig {
    /// The endpoint's base URL (`None`: the provider's public API).
    pub base_url: Option<String>,
    /// The model id sent with every request.
    pub model: String,
    /// The API key, sent with every request; None when the endpoint needs none.
    pub api_key: Option<String>,
    /// The variable the key came from, named in authentication errors.
    pub api_key_env: Option<String>,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for a complete reply.
    pub timeout: Duration,
    /// Requests in flight at most (sizes the connection pool).
    pub max_concurrency: usize,
}

impl std::fmt::Debug for HttpConfig {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .finish_non_exhaustive()
    }
}

/// Which provider serves an alias, with its configuration.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    /// An OpenAI-compatible chat completions endpoint.
    OpenAi(HttpConfig),
    /// The Anthropic Messages API.
    Anthropic(HttpConfig),
    /// A GGUF file run in process (needs the `local-model` feature).
    LlamaCpp(local::LocalModelConfig),
    /// Several endpoints serving the same model (`base_urls`).
    Replicas(replicas::ReplicaSetConfig),
    /// An OpenAI or Anthropic endpoint used through its batch API.
    Batch(batch::BatchConfig),
}

impl ProviderConfig {
    /// The configuration one of `share` processes using the same model gets: a replica set's
    /// per-endpoint caps are divided (the lane divides its own cap and rates).
    pub fn with_budget_share(self, share: u32) -> Self {
        match self {
            Self::Replicas(set) => Self::Replicas(set.with_budget_share(share)),
            other => other,
        }
    }

    /// Where a batch provider keeps its jobs, and the counters it reports to; other configs
    /// are returned unchanged.
    pub fn with_batch_state(
        self,
        dir: Option<std::path::PathBuf>,
        stats: Arc<crate::stats::DispatchStats>,
    ) -> Self {
        match self {
            Self::Batch(mut config) => {
                config.state_dir = dir;
                config.stats = Some(stats);
                Self::Batch(config)
            }
            other => other,
        }
    }
}

/// Why a provider could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

/// Build the provider for `config`.
pub fn build(config: ProviderConfig) -> Result<Arc<dyn Provider>, BuildError> {
    let error = |e: &dyn std::fmt::Display| BuildError(e.to_string());
    Ok(match config {
        ProviderConfig::OpenAi(http) => {
            Arc::new(openai::OpenAiProvider::new(&http).map_err(|e| error(&e))?)
        }
        ProviderConfig::Anthropic(http) => {
            Arc::new(anthropic::AnthropicProvider::new(&http).map_err(|e| error(&e))?)
        }
        ProviderConfig::LlamaCpp(local) => build_local(&local)?,
        ProviderConfig::Replicas(set) => {
            Arc::new(replicas::ReplicaProvider::new(&set).map_err(|e| error(&e))?)
        }
        ProviderConfig::Batch(config) => {
            Arc::new(batch::BatchProvider::new(config).map_err(BuildError)?)
        }
    })
}

#[cfg(feature = "local-model")]
fn build_local(config: &local::LocalModelConfig) -> Result<Arc<dyn Provider>, BuildError> {
    llama_cpp::provider_for_config(config).map_err(|e| BuildError(e.to_string()))
}

#[cfg(not(feature = "local-model"))]
fn build_local(_: &local::LocalModelConfig) -> Result<Arc<dyn Provider>, BuildError> {
    Err(BuildError(
        "this build has no local model support (enable the `local-model` feature of shaping)"
            .into(),
    ))
}

/// What a provider is asked to do: messages plus fully resolved parameters.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation to continue.
    pub messages: Vec<Message>,
    /// The request's parameters with the alias's defaults filled in.
    pub params: Params,
    /// A seed derived from (record, step); providers that sample locally use it when
    /// `params.seed` is `None`, so identical inputs give identical outputs.
    pub derived_seed: u64,
}

/// Rate-limit information a provider read from response headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitHints {
    /// `Retry-After` / `retry-after-ms`.
    pub retry_after: Option<Duration>,
    /// Requests left in the current allowance (`x-ratelimit-remaining-requests`,
    /// `anthropic-ratelimit-requests-remaining`).
    pub remaining_requests: Option<u64>,
    /// Tokens left in the current allowance.
    pub remaining_tokens: Option<u64>,
    /// Time until the request allowance resets.
    pub reset_requests: Option<Duration>,
    /// Time until the token allowance resets.
    pub reset_tokens: Option<Duration>,
}

impl RateLimitHints {
    /// How long the lane should pause before the next request, if the headers ask for one.
    pub fn pause(&self) -> Option<Duration> {
        if let Some(d) = self.retry_after {
            return Some(d);
        }
        let mut pause = None;
        if self.remaining_requests == Some(0) {
            pause = self.reset_requests.or(Some(Duration::from_secs(1)));
        }
        if self.remaining_tokens == Some(0) {
            let t = self.reset_tokens.unwrap_or(Duration::from_secs(1));
            pause = Some(pause.map_or(t, |p: Duration| p.max(t)));
        }
        pause
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderReply {
    /// The generated text.
    pub text: String,
    /// Why generation stopped, in OpenAI's terms (`stop`, `length`, …; Anthropic's reasons are
    /// mapped to them); None when the provider does not say.
    pub finish_reason: Option<String>,
    /// Tokens of the prompt and the reply.
    pub usage: Usage,
    /// Rate-limit headers of the response (the dispatcher pauses the lane when they ask to).
    pub hints: RateLimitHints,
}

/// Why a request failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 429.
    RateLimited,
    /// 408 or a client-side timeout.
    Timeout,
    /// Connection refused, reset, or closed mid-body.
    Connection,
    /// 5xx.
    #[serde(rename = "server_error")]
    Server,
    /// The body was not the JSON we expected (undecodable, truncated).
    BadBody,
    /// 400 that is not a context-length error.
    BadRequest,
    /// 401 / 403.
    Auth,
    /// 404: unknown model id or endpoint.
    NotFound,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// The local model failed (load, decode).
    #[serde(rename = "local_model")]
    Local,
    /// The run was interrupted (Ctrl-C) before an answer arrived.
    Cancelled,
}

impl ErrorKind {
    /// Whether the dispatcher retries this kind of failure.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Timeout | Self::Connection | Self::Server | Self::BadBody
        )
    }

    /// The name in error records and messages (`rate_limited`, `server_error`, …), as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Server => "server_error",
            Self::BadBody => "bad_body",
            Self::BadRequest => "bad_request",
            Self::Auth => "auth",
            Self::NotFound => "not_found",
            Self::ContextLength => "context_length",
            Self::Local => "local_model",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A failed request. The message never contains an API key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind_str}{status}: {message}", kind_str = kind.as_str(), status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct ProviderError {
    /// The failure's class: decides whether the dispatcher retries.
    pub kind: ErrorKind,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// What went wrong (the provider's error message when it gave one).
    pub message: String,
    /// Rate-limit headers of the response, if any (a 429 usually says how long to wait).
    pub hints: RateLimitHints,
}

impl ProviderError {
    /// An error of `kind` with no HTTP status and no hints.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            hints: RateLimitHints::default(),
        }
    }
}

/// The future [`Provider::send`] returns: boxed so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A model backend. Implementations must be cheap to call concurrently.
pub trait Provider: Send + Sync {
    /// Send one request and wait for its complete reply.
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>>;

    /// Check, before any request is sent, that the provider can serve the run (a batch API
    /// exists and takes the key) and pick up its saved state. The default does nothing.
    fn preflight(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// The answer to `request` is now durable in the response cache (or was found there):
    /// a provider holding its own copy (a batch job's downloaded results) may let it go.
    fn answer_stored(&self, _request: &ChatRequest) {}

    /// Rough token count of a request's prompt, used to pace tokens-per-minute limits before
    /// the provider reports real usage. The default is ~4 characters a token.
    fn estimate_prompt_tokens(&self, messages: &[Message]) -> u64 {
        messages
            .iter()
            .map(|m| m.content.len() as u64 / 4 + 4)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed step's `error.kind` is written as [`ErrorKind::as_str`]; the serde name must be
    /// the same string, so the kind reads the same wherever it is written.
    #[test]
    fn error_kinds_serialise_as_their_strings() {
        let kinds = [
            ErrorKind::RateLimited,
            ErrorKind::Timeout,
            ErrorKind::Connection,
            ErrorKind::Server,
            ErrorKind::BadBody,
            ErrorKind::BadRequest,
            ErrorKind::Auth,
            ErrorKind::NotFound,
            ErrorKind::ContextLength,
            ErrorKind::Local,
            ErrorKind::Cancelled,
        ];
        for kind in kinds {
            // Exhaustive: a new kind fails to compile here until it is listed above.
            match kind {
                ErrorKind::RateLimited
                | ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::Server
                | ErrorKind::BadBody
                | ErrorKind::BadRequest
                | ErrorKind::Auth
                | ErrorKind::NotFound
                | ErrorKind::ContextLength
                | ErrorKind::Local
                | ErrorKind::Cancelled => {}
            }
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                serde_json::Value::from(kind.as_str())
            );
        }
    }
}
