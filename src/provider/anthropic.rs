//! Anthropic Messages API: system prompt as a top-level field, required `max_tokens`, its rate-limit headers.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::openai::{
    NewProviderError, endpoint_url, header_str, http_client, retry_after, send_for_json,
};
use super::{
    BoxFuture, ChatRequest, ErrorKind, HttpConfig, Provider, ProviderError, ProviderReply,
    RateLimitHints, Usage,
};

pub(crate) const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; used when neither request nor models.toml sets it.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Client for one alias. `Debug` does not print the key.
pub struct AnthropicProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    model: String,
    api_key: Option<String>,
    key_env: Option<String>,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A provider for `spec` (default base URL `https://api.anthropic.com`, with or without
    /// `/v1`); fails when the HTTP client cannot be built or the base URL does not parse.
    pub fn new(spec: &HttpConfig) -> Result<Self, NewProviderError> {
        let base = spec
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com")
            .trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Ok(Self {
            client: http_client(spec)?,
            url: endpoint_url(base, "/v1/messages")?,
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
            .post(self.url.clone())
            .header("anthropic-version", API_VERSION)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&self.body(request)).expect("body serializes"));
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key);
        }
        // 529 "overloaded" is classified like a 5xx (retryable).
        let (value, status, hints) = send_for_json(
            builder,
            anthropic_hints,
            self.key_env.as_deref(),
            &self.model,
        )
        .await?;
        message_reply(&value, status, hints)
    }
}

/// The Messages API body of `request` for `model` (also a batch request's `params`). System
/// messages become the top-level `system` field; consecutive same-role turns are merged.
pub(crate) fn request_body(model: &str, request: &ChatRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let mut turns: Vec<Value> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != "system") {
        let role = if m.role == "assistant" {
            "assistant"
        } else {
            "user"
        };
        match turns.last_mut() {
            Some(last) if last["role"] == role => {
                let merged = format!(
                    "{}\n\n{}",
                    last["content"].as_str().unwrap_or(""),
                    m.content
                );
                last["content"] = json!(merged);
            }
            _ => turns.push(json!({ "role": role, "content": m.content })),
        }
    }
    let p = &request.params;
    let mut body = json!({
        "model": model,
        "messages": turns,
        "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if !p.stop.is_empty() {
        body["stop_sequences"] = json!(p.stop);
    }
    if let Some(schema) = &p.json_schema {
        // No native schema mode: ask for it explicitly (the caller validates).
        let instruction = format!("Reply with JSON only, matching this JSON schema: {schema}");
        let joined = match body.get("system").and_then(Value::as_str) {
            Some(s) => format!("{s}\n\n{instruction}"),
            None => instruction,
        };
        body["system"] = json!(joined);
    }
    body
}

/// The reply in a Messages API `message` object (an interactive answer, or a batch result's).
pub(crate) fn message_reply(
    value: &Value,
    status: u16,
    hints: RateLimitHints,
) -> Result<ProviderReply, ProviderError> {
    let Some(blocks) = value["content"].as_array() else {
        return Err(ProviderError {
            kind: ErrorKind::BadBody,
            status: Some(status),
            message: "response has no content".into(),
            hints,
        });
    };
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let finish_reason = value["stop_reason"].as_str().map(|r| match r {
        "max_tokens" => "length".to_owned(),
        "end_turn" | "stop_sequence" => "stop".to_owned(),
        other => other.to_owned(),
    });
    Ok(ProviderReply {
        text,
        finish_reason,
        usage: Usage {
            input_tokens: value["usage"]["input_tokens"].as_u64().unwrap_or(0),
            output_tokens: value["usage"]["output_tokens"].as_u64().unwrap_or(0),
        },
        hints,
    })
}

impl Provider for AnthropicProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(self.send_inner(request))
    }
}

/// `anthropic-ratelimit-{requests,tokens}-{remaining,reset}`; resets are RFC 3339 instants.
pub(crate) fn anthropic_hints(headers: &HeaderMap) -> RateLimitHints {
    let num = |name| header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok());
    let until = |name| {
        header_str(headers, name).and_then(|v| {
            let at = time::OffsetDateTime::parse(
                v.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            let secs = (at - time::OffsetDateTime::now_utc()).as_seconds_f64();
            Some(Duration::from_secs_f64(secs.max(0.0)))
        })
    };
    RateLimitHints {
        retry_after: retry_after(headers),
        remaining_requests: num("anthropic-ratelimit-requests-remaining"),
        remaining_tokens: num("anthropic-ratelimit-tokens-remaining")
            .or_else(|| num("anthropic-ratelimit-output-tokens-remaining")),
        reset_requests: until("anthropic-ratelimit-requests-reset"),
        reset_tokens: until("anthropic-ratelimit-tokens-reset"),
    }
}
