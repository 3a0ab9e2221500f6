//! Provider wire formats against the loopback server: Anthropic Messages and OpenAI-compatible requests, replies, errors and headers.

use std::sync::Arc;
use std::time::Duration;

use shaping::models::ModelsConfig;
use shaping::provider::anthropic::AnthropicProvider;
use shaping::provider::openai::OpenAiProvider;
use shaping::provider::{ChatRequest, ErrorKind, HttpConfig, Message, Params, Provider};
use testkit::{Fault, FaultPlan, MockConfig, MockServer};

fn spec(provider: &str, base_url: &str, extra: &str) -> shaping::models::ModelSpec {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.toml"),
        format!("[models.x]\nprovider = \"{provider}\"\nmodel = \"mock-model\"\nbase_url = \"{base_url}\"\n{extra}\n"),
    )
    .unwrap();
    ModelsConfig::load(dir.path())
        .unwrap()
        .get("x")
        .unwrap()
        .clone()
}

/// The endpoint configuration of `spec`, with `api_key` as the key read from the environment.
fn http(spec: &shaping::models::ModelSpec, api_key: Option<&str>) -> HttpConfig {
    HttpConfig {
        base_url: spec.base_url.clone(),
        model: spec.model.clone(),
        api_key: api_key.map(str::to_owned),
        api_key_env: spec.api_key_env.clone(),
        connect_timeout: spec.connect_timeout,
        timeout: spec.timeout,
        max_concurrency: spec.max_concurrency,
    }
}

fn request(messages: Vec<Message>, params: Params) -> ChatRequest {
    ChatRequest {
        messages,
        params,
        derived_seed: 7,
    }
}

#[tokio::test]
async fn anthropic_moves_the_system_prompt_and_always_sends_max_tokens() {
    let server = MockServer::start(MockConfig::new().api_key("sk-ant-test")).await;
    let base = server.base_url();
    let provider = AnthropicProvider::new(&http(
        &spec("anthropic", base.trim_end_matches("/v1"), ""),
        Some("sk-ant-test"),
    ))
    .unwrap();
    let messages = vec![
        Message::system("You are Dee."),
        Message::user("Morning!"),
        Message::user("Coffee?"),
    ];
    let reply = provider
        .send(&request(
            messages,
            Params {
                temperature: Some(0.5),
                ..Params::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert!(reply.text.contains("Coffee?"), "{}", reply.text);
    assert!(reply.usage.output_tokens > 0);
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.system.as_deref(), Some("You are Dee."));
    assert_eq!(
        sent.body["max_tokens"], 1024,
        "max_tokens is required by the Messages API"
    );
    assert_eq!(
        sent.body["messages"].as_array().unwrap().len(),
        1,
        "consecutive user turns are merged"
    );
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn anthropic_errors_are_classified_and_name_the_key_variable() {
    let server = MockServer::start(MockConfig::new().api_key("right-key")).await;
    let base = server.base_url();
    let spec = spec("anthropic", &base, "api_key_env = \"MY_ANTHROPIC_KEY\"");
    let provider = AnthropicProvider::new(&http(&spec, Some("wrong-key"))).unwrap();
    let err = provider
        .send(&request(vec![Message::user("hi")], Params::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(
        err.message.contains("check the variable MY_ANTHROPIC_KEY"),
        "{}",
        err.message
    );
    assert!(!err.to_string().contains("wrong-key"));

    let server = MockServer::start(MockConfig::new().faults(FaultPlan::none().nth(
        0,
        Fault::RateLimited {
            retry_after: Duration::from_secs(2),
        },
    )))
    .await;
    let provider = AnthropicProvider::new(&http(&spec_for(&server, "anthropic"), None)).unwrap();
    let err = provider
        .send(&request(vec![Message::user("hi")], Params::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.hints.pause(), Some(Duration::from_secs(2)));
}

fn spec_for(server: &MockServer, provider: &str) -> shaping::models::ModelSpec {
    spec(provider, &server.base_url(), "")
}

#[tokio::test]
async fn openai_sends_parameters_and_schema_and_classifies_failures() {
    let server = MockServer::start(MockConfig::new()).await;
    let provider: Arc<dyn Provider> =
        Arc::new(OpenAiProvider::new(&http(&spec_for(&server, "openai"), None)).unwrap());
    let params = Params {
        temperature: Some(0.2),
        max_tokens: Some(3),
        stop: vec!["END".into()],
        seed: Some(42),
        json_schema: Some(serde_json::json!({"type": "object"})),
        ..Params::default()
    };
    let reply = provider
        .send(&request(
            vec![Message::user("one two three four five six")],
            params,
        ))
        .await
        .unwrap();
    assert_eq!(
        reply.finish_reason.as_deref(),
        Some("length"),
        "max_tokens truncates the mock's reply"
    );
    let body = &server.requests()[0].body;
    assert_eq!(body["max_tokens"], 3);
    assert_eq!(body["stop"][0], "END");
    assert_eq!(body["seed"], 42);
    assert_eq!(body["response_format"]["type"], "json_schema");

    for (fault, kind) in [
        (Fault::Status(404), ErrorKind::NotFound),
        (Fault::ContextLength, ErrorKind::ContextLength),
        (Fault::Status(400), ErrorKind::BadRequest),
        (Fault::Status(503), ErrorKind::Server),
        (Fault::TruncatedJson, ErrorKind::BadBody),
        (Fault::ResetConnection, ErrorKind::Connection),
    ] {
        server.set_fault_plan(FaultPlan::none().nth(0, fault.clone()));
        let err = provider
            .send(&request(vec![Message::user("x")], Params::default()))
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "{fault:?} → {err}");
    }
}
