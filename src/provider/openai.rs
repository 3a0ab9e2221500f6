//! OpenAI-compatible chat completions over reqwest (OpenAI, vLLM, SGLang, llama.cpp server, Ollama…).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::{
    BoxFuture, ChatRequest, ErrorKind, HttpConfig, Provider, ProviderError, ProviderReply,
    RateLimitHints, Usage,
};

/// Client for one alias. Holds the key privately; `Debug` does not print it.
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    key_env: Option<String>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// A reqwest client with the endpoint's timeouts and a connection pool sized for its concurrency.
pub(crate) fn http_client(spec: &HttpConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(spec.connect_timeout)
        .timeout(spec.timeout)
        .pool_max_idle_per_host(spec.max_concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
}

impl OpenAiProvider {
    /// A provider for `spec` (default base URL `https://api.openai.com/v1`); fails only when the
    /// HTTP client cannot be built.
    pub fn new(spec: &HttpConfig) -> Result<Self, reqwest::Error> {
        let base = spec
            .base_url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1")
            .trim_end_matches('/');
        Ok(Self {
            client: http_client(spec)?,
            url: format!("{base}/chat/completions"),
            model: spec.model.clone(),
            api_key: spec.api_key.clone(),
            key_env: spec.api_key_env.clone(),
        })
    }

    fn body(&self, request: &ChatRequest) -> Value {
        request_body(&self.model, request)
    }

    async fn send_inner(&self, request: &ChatRequest) -> Result<ProviderReply, ProviderError> {
        let mut builder = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&self.body(request)).expect("body serializes"));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let (value, status, hints) =
            send_for_json(builder, openai_hints, self.key_env.as_deref(), &self.model).await?;
        completion_reply(&value, status, hints)
    }
}

/// The chat completions body of `request` for `model` (also a batch file line's `body`).
pub(crate) fn request_body(model: &str, request: &ChatRequest) -> Value {
    let mut body = json!({ "model": model, "messages": request.messages });
    let p = &request.params;
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if let Some(m) = p.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if let Some(s) = p.seed {
        body["seed"] = json!(s);
    }
    if let Some(schema) = &p.json_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": "response", "schema": schema, "strict": true }
        });
    }
    body
}

/// The reply in a `chat.completion` object (an interactive answer, or a batch result's body).
pub(crate) fn completion_reply(
    value: &Value,
    status: u16,
    hints: RateLimitHints,
) -> Result<ProviderReply, ProviderError> {
    let choice = &value["choices"][0];
    let Some(text) = choice["message"]["content"].as_str() else {
        return Err(ProviderError {
            kind: ErrorKind::BadBody,
            status: Some(status),
            message: "response has no choices[0].message.content".into(),
            hints,
        });
    };
    let usage = Usage {
        input_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    };
    Ok(ProviderReply {
        text: text.to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        usage,
        hints,
    })
}

impl Provider for OpenAiProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(self.send_inner(request))
    }
}

/// Send a request and decode its JSON body. Non-2xx answers are classified with [`http_error`]
/// and undecodable bodies become `BadBody`; returns the body, the HTTP status and the rate-limit
/// hints read by `hints_of`.
pub(crate) async fn send_for_json(
    builder: reqwest::RequestBuilder,
    hints_of: fn(&HeaderMap) -> RateLimitHints,
    key_env: Option<&str>,
    model: &str,
) -> Result<(Value, u16, RateLimitHints), ProviderError> {
    let response = builder.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status().as_u16();
    let hints = hints_of(response.headers());
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !(200..300).contains(&status) {
        return Err(http_error(status, &bytes, hints, key_env, model));
    }
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok((value, status, hints)),
        Err(e) => Err(ProviderError {
            kind: ErrorKind::BadBody,
            status: Some(status),
            message: format!("undecodable JSON body ({e}); {} bytes", bytes.len()),
            hints,
        }),
    }
}

/// Classify a reqwest transport failure. The message never includes headers (so never a key).
pub(crate) fn transport_error(e: &reqwest::Error) -> ProviderError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_decode() {
        ErrorKind::BadBody
    } else {
        ErrorKind::Connection
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ProviderError {
        kind,
        status: None,
        message,
        hints: RateLimitHints::default(),
    }
}

/// Parse OpenAI durations like "1s", "6m0s", "20ms", "0.5s".
pub(crate) fn parse_reset_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        any = true;
    }
    (any && number.is_empty()).then(|| Duration::from_secs_f64(total))
}

pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `retry-after-ms` (OpenAI/Azure) or `Retry-After` in seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    header_str(headers, "retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

pub(crate) fn openai_hints(headers: &HeaderMap) -> RateLimitHints {
    let num = |name| header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok());
    let dur = |name| header_str(headers, name).and_then(parse_reset_duration);
    RateLimitHints {
        retry_after: retry_after(headers),
        remaining_requests: num("x-ratelimit-remaining-requests"),
        remaining_tokens: num("x-ratelimit-remaining-tokens"),
        reset_requests: dur("x-ratelimit-reset-requests"),
        reset_tokens: dur("x-ratelimit-reset-tokens"),
    }
}

/// Classify a non-2xx answer. `key_env` names the variable to check on 401/403 (never its value).
pub(crate) fn http_error(
    status: u16,
    body: &[u8],
    hints: RateLimitHints,
    key_env: Option<&str>,
    model: &str,
) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let detail = parsed
        .as_ref()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let code = parsed.as_ref().and_then(|v| {
        v["error"]["code"]
            .as_str()
            .or_else(|| v["error"]["type"].as_str())
            .map(str::to_owned)
    });
    let looks_like_context = code.as_deref() == Some("context_length_exceeded")
        || detail.contains("context length")
        || detail.contains("context_length")
        || detail.contains("prompt is too long")
        || detail.contains("maximum context");
    let (kind, message) = match status {
        429 => (ErrorKind::RateLimited, format!("rate limited: {detail}")),
        408 => (ErrorKind::Timeout, format!("request timeout: {detail}")),
        401 | 403 => (
            ErrorKind::Auth,
            match key_env {
                Some(var) => format!("authentication failed ({detail}); check the variable {var}"),
                None => format!(
                    "authentication failed ({detail}); the model has no api_key_env configured"
                ),
            },
        ),
        404 => (
            ErrorKind::NotFound,
            format!("not found ({detail}); check the model id '{model}' and base_url"),
        ),
        400 | 413 | 422 if looks_like_context => (
            ErrorKind::ContextLength,
            format!("prompt too long for the model: {detail}"),
        ),
        400..=499 => (ErrorKind::BadRequest, format!("request rejected: {detail}")),
        _ => (ErrorKind::Server, format!("server error: {detail}")),
    };
    ProviderError {
        kind,
        status: Some(status),
        message,
        hints,
    }
}
