//! OpenAI-compatible chat completions over reqwest (OpenAI, vLLM, SGLang, llama.cpp server, Ollama…).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{
    BoxFuture, ChatRequest, ErrorKind, HttpConfig, Message, Provider, ProviderError, ProviderReply,
    RateLimitHints, Usage,
};

/// Client for one alias. Holds the key privately; `Debug` does not print it.
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// Parsed once: parsing (with IDNA) per request showed in the overhead profile.
    url: reqwest::Url,
    model: String,
    api_key: Option<String>,
    key_env: Option<String>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url.as_str())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Why an HTTP provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NewProviderError {
    /// reqwest refused the client's settings.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// `base_url` (with the API's path) is not a URL.
    #[error("base_url {url:?} is not a URL: {reason}")]
    BaseUrl {
        /// The URL as joined from `base_url` and the API's path.
        url: String,
        /// What the URL parser said.
        reason: String,
    },
}

/// `base` (no trailing slash) joined with the API's `path`, parsed once for every request.
pub(crate) fn endpoint_url(base: &str, path: &str) -> Result<reqwest::Url, NewProviderError> {
    let url = format!("{base}{path}");
    reqwest::Url::parse(&url).map_err(|e| NewProviderError::BaseUrl {
        reason: e.to_string(),
        url,
    })
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
    /// A provider for `spec` (default base URL `https://api.openai.com/v1`); fails when the HTTP
    /// client cannot be built or the base URL does not parse.
    pub fn new(spec: &HttpConfig) -> Result<Self, NewProviderError> {
        let base = spec
            .base_url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1")
            .trim_end_matches('/');
        Ok(Self {
            client: http_client(spec)?,
            url: endpoint_url(base, "/chat/completions")?,
            model: spec.model.clone(),
            api_key: spec.api_key.clone(),
            key_env: spec.api_key_env.clone(),
        })
    }

    async fn send_inner(&self, request: &ChatRequest) -> Result<ProviderReply, ProviderError> {
        let body =
            serde_json::to_vec(&request_body(&self.model, request)).expect("body serializes");
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let (bytes, status, hints) =
            send_for_bytes(builder, openai_hints, self.key_env.as_deref(), &self.model).await?;
        if let Ok(completion) = serde_json::from_slice::<WireCompletion<'_>>(&bytes)
            && let Some(reply) = completion.reply(&hints)
        {
            return Ok(reply);
        }
        let value = decode_json(&bytes, status, &hints)?;
        completion_reply(&value, status, hints)
    }
}

/// The chat completions body of `request` for `model` (also a batch file line's `body`),
/// serialised straight from the request: no `serde_json::Value` tree of copied messages is built
/// per request. Keys are written in alphabetical order, as a `Value` map writes them.
#[derive(serde::Serialize)]
pub(crate) struct RequestBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    messages: &'a [Message],
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
}

/// `response_format` of a request with a JSON schema.
#[derive(serde::Serialize)]
struct ResponseFormat<'a> {
    json_schema: SchemaFormat<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// `response_format.json_schema`.
#[derive(serde::Serialize)]
struct SchemaFormat<'a> {
    name: &'static str,
    schema: &'a Value,
    strict: bool,
}

/// The body of `request` for `model`.
pub(crate) fn request_body<'a>(model: &'a str, request: &'a ChatRequest) -> RequestBody<'a> {
    let p = &request.params;
    RequestBody {
        max_tokens: p.max_tokens,
        messages: &request.messages,
        model,
        response_format: p.json_schema.as_ref().map(|schema| ResponseFormat {
            json_schema: SchemaFormat {
                name: "response",
                schema,
                strict: true,
            },
            kind: "json_schema",
        }),
        seed: p.seed,
        stop: &p.stop,
        temperature: p.temperature,
        top_p: p.top_p,
    }
}

/// The fields of a `chat.completion` object a reply needs, read without building a
/// `serde_json::Value` tree. Anything unusual (a field of another type, no text) falls back to
/// [`completion_reply`], which decides what it is.
#[derive(serde::Deserialize)]
struct WireCompletion<'a> {
    #[serde(borrow)]
    choices: Vec<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(serde::Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow)]
    message: WireMessage<'a>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl WireCompletion<'_> {
    /// The reply, when the first choice has text.
    fn reply(self, hints: &RateLimitHints) -> Option<ProviderReply> {
        let choice = self.choices.into_iter().next()?;
        let text = choice.message.content?.into_owned();
        let usage = self.usage.map_or_else(Usage::default, |u| Usage {
            input_tokens: u.prompt_tokens.unwrap_or(0),
            output_tokens: u.completion_tokens.unwrap_or(0),
        });
        Some(ProviderReply {
            text,
            finish_reason: choice.finish_reason.map(std::borrow::Cow::into_owned),
            usage,
            hints: hints.clone(),
        })
    }
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
    let (bytes, status, hints) = send_for_bytes(builder, hints_of, key_env, model).await?;
    let value = decode_json(&bytes, status, &hints)?;
    Ok((value, status, hints))
}

/// [`send_for_json`] without the decoding: the 2xx body's bytes.
pub(crate) async fn send_for_bytes(
    builder: reqwest::RequestBuilder,
    hints_of: fn(&HeaderMap) -> RateLimitHints,
    key_env: Option<&str>,
    model: &str,
) -> Result<(bytes::Bytes, u16, RateLimitHints), ProviderError> {
    let response = builder.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status().as_u16();
    let hints = hints_of(response.headers());
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !(200..300).contains(&status) {
        return Err(http_error(status, &bytes, hints, key_env, model));
    }
    Ok((bytes, status, hints))
}

/// A 2xx body as JSON; `BadBody` when it is not.
fn decode_json(bytes: &[u8], status: u16, hints: &RateLimitHints) -> Result<Value, ProviderError> {
    serde_json::from_slice(bytes).map_err(|e| ProviderError {
        kind: ErrorKind::BadBody,
        status: Some(status),
        message: format!("undecodable JSON body ({e}); {} bytes", bytes.len()),
        hints: hints.clone(),
    })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::format::Params;

    fn request(params: Params) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "You are Dee.".into(),
                },
                Message {
                    role: "user".into(),
                    content: "Coffee \"black\"?".into(),
                },
            ],
            params,
            derived_seed: 7,
        }
    }

    #[test]
    fn request_body_carries_every_set_parameter_and_nothing_else() {
        let bare = serde_json::to_value(request_body("m", &request(Params::default()))).unwrap();
        assert_eq!(
            bare,
            json!({"model": "m", "messages": [
                {"role": "system", "content": "You are Dee."},
                {"role": "user", "content": "Coffee \"black\"?"}]})
        );
        let schema = json!({"type": "object"});
        let full = request(Params {
            temperature: Some(0.5),
            top_p: Some(0.25),
            max_tokens: Some(32),
            stop: vec!["\n\n".into()],
            seed: Some(9),
            json_schema: Some(schema.clone()),
        });
        let bytes = serde_json::to_vec(&request_body("m", &full)).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"model": "m", "messages": bare["messages"], "temperature": 0.5, "top_p": 0.25,
                "max_tokens": 32, "stop": ["\n\n"], "seed": 9,
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "response", "schema": schema, "strict": true}}})
        );
        // Keys in alphabetical order, as a `Value` map would write them.
        let text = String::from_utf8(bytes).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        let keys = [
            "max_tokens",
            "messages",
            "model",
            "response_format",
            "seed",
            "stop",
            "temperature",
            "top_p",
        ];
        assert!(
            keys.windows(2).all(|pair| at(pair[0]) < at(pair[1])),
            "{text}"
        );
    }

    /// The typed fast path reads every completion it accepts exactly as the `Value` path does, and
    /// leaves every unusual one to it.
    #[test]
    fn typed_reply_agrees_with_the_value_path() {
        let bodies = [
            r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi, hon."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
            r#"{"choices":[{"message":{"content":"no usage \u00e9\n"},"finish_reason":null}]}"#,
            r#"{"choices":[{"message":{"content":"odd usage"}}],"usage":{"prompt_tokens":"12","completion_tokens":1.5}}"#,
            r#"{"choices":[{"message":{"content":null},"finish_reason":"length"}]}"#,
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"}]}}]}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":[{"message":{"content":"num reason"},"finish_reason":3}]}"#,
        ];
        let hints = RateLimitHints::default();
        let mut fast = 0;
        for body in bodies {
            let value: Value = serde_json::from_str(body).unwrap();
            let slow = completion_reply(&value, 200, hints.clone());
            // A completion the fast path leaves alone goes to the `Value` path (`send_inner`).
            if let Some(reply) = serde_json::from_str::<WireCompletion<'_>>(body)
                .ok()
                .and_then(|c| c.reply(&hints))
            {
                fast += 1;
                assert_eq!(Ok(reply), slow.map_err(|e| e.message), "{body}");
            }
        }
        assert_eq!(fast, 2, "the ordinary completions take the fast path");
    }

    #[test]
    fn a_base_url_that_does_not_parse_is_an_error_naming_it() {
        let spec = HttpConfig {
            base_url: Some("http://exa mple:80".into()),
            model: "m".into(),
            api_key: None,
            api_key_env: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_concurrency: 1,
        };
        let error = OpenAiProvider::new(&spec).unwrap_err().to_string();
        assert!(
            error.contains("http://exa mple:80/chat/completions") && error.contains("not a URL"),
            "{error}"
        );
    }
}
