//! Replica sets (`base_urls`) against real loopback servers: spreading under per-endpoint caps, ejection and probes of a dead or failing replica, a whole-set outage, fingerprints that ignore the replicas, and configuration errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shaping::cache::CacheKey;
use shaping::dispatch::{DispatchOptions, DispatchStats, Dispatcher};
use shaping::models::{ModelSpec, ModelsConfig, ModelsError};
use shaping::provider::replicas::{EndpointStatus, HealthPolicy, ReplicaProvider};
use shaping::provider::{ChatRequest, ErrorKind, Message, Params, ProviderConfig};
use shaping::sample::Response;
use testkit::{Fault, FaultPlan, MockConfig, MockServer};

fn load(models_toml: &str) -> Result<ModelsConfig, ModelsError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("models.toml"), models_toml).unwrap();
    ModelsConfig::load(dir.path())
}

/// Alias `m` (OpenAI-compatible) served by `urls`, with `extra` lines appended.
fn replicas_toml(urls: &[String], extra: &str) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[models.m]\nprovider = \"openai\"\nmodel = \"mock-model\"\nbase_urls = [{}]\ntimeout_secs = 5\n{extra}\n",
        list.join(", ")
    )
}

fn spec(models_toml: &str) -> ModelSpec {
    load(models_toml).unwrap().get("m").unwrap().clone()
}

/// A port on 127.0.0.1 nothing listens on (bound once, then closed).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// The replica provider of `spec` with a quick health policy, and a dispatcher lane using it.
fn replica_lane(
    spec: &ModelSpec,
    options: DispatchOptions,
    health: HealthPolicy,
) -> (
    Arc<Dispatcher>,
    Arc<shaping::dispatch::Lane>,
    Arc<ReplicaProvider>,
) {
    let ProviderConfig::Replicas(mut config) = spec.provider_config().unwrap() else {
        panic!("base_urls make a replica set");
    };
    config.health = health;
    let provider = Arc::new(ReplicaProvider::new(&config).unwrap());
    let dispatcher = Arc::new(Dispatcher::new(options, None));
    let lane = dispatcher.insert_lane(spec, Arc::clone(&provider) as _);
    (dispatcher, lane, provider)
}

fn quick_health() -> HealthPolicy {
    HealthPolicy {
        failures_to_eject: 3,
        eject_base: Duration::from_millis(150),
        eject_cap: Duration::from_millis(600),
    }
}

fn prompt(i: usize) -> String {
    format!("replica request {i}")
}

/// Send `n` requests at once through `lane`; the responses in request order.
async fn send_all(
    dispatcher: &Arc<Dispatcher>,
    lane: &Arc<shaping::dispatch::Lane>,
    n: usize,
) -> Vec<Response> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (dispatcher, lane) = (Arc::clone(dispatcher), Arc::clone(lane));
            tokio::spawn(async move {
                let request = ChatRequest {
                    messages: vec![Message::user(prompt(i))],
                    params: Params::default(),
                    derived_seed: i as u64,
                };
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_le_bytes());
                dispatcher.execute(&lane, request, CacheKey(key)).await
            })
        })
        .collect();
    let mut responses = Vec::with_capacity(n);
    for task in tasks {
        responses.push(task.await.unwrap());
    }
    responses
}

fn assert_all_answered(responses: &[Response]) {
    for (i, r) in responses.iter().enumerate() {
        assert!(r.error.is_none(), "request {i}: {:?}", r.error);
        assert!(r.text.contains(&prompt(i)), "request {i}: {}", r.text);
    }
}

/// Every request answered by exactly one of `servers` (each prompt counted once in all).
fn assert_each_answered_once(servers: &[&MockServer], n: usize) {
    let successes: u64 = servers.iter().map(|s| s.stats().successes).sum();
    assert_eq!(
        successes, n as u64,
        "one success per request over all servers"
    );
    for i in 0..n {
        let seen: u64 = servers.iter().map(|s| s.prompt_count(&prompt(i))).sum();
        assert_eq!(
            seen, 1,
            "request {i} reached the healthy servers {seen} times"
        );
    }
}

/// After its ejection, the bad endpoint got only probes: at most the requests in flight when
/// it was ejected came before, and every probe failed and ejected it again.
fn assert_only_probes_after_ejection(bad: &EndpointStatus, health: HealthPolicy) {
    eprintln!("bad endpoint: {bad:?}");
    assert!(!bad.healthy, "{bad:?}");
    assert!(
        bad.probes >= 2,
        "the test lasts long enough for probes: {bad:?}"
    );
    assert_eq!(bad.ejections, bad.probes + 1, "{bad:?}");
    let before = bad.sent - bad.probes;
    assert!(
        before >= u64::from(health.failures_to_eject)
            && before < u64::from(health.failures_to_eject) + bad.max_concurrency as u64,
        "requests before the ejection: {before} ({bad:?})"
    );
    assert_eq!(bad.succeeded, 0, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_three_servers_and_none_exceeds_its_cap() {
    let latency = MockConfig::new().latency(Duration::from_millis(40));
    let servers = [
        MockServer::start(latency.clone()).await,
        MockServer::start(latency.clone()).await,
        MockServer::start(latency).await,
    ];
    let urls: Vec<String> = servers.iter().map(MockServer::base_url).collect();
    let spec = spec(&replicas_toml(
        &urls,
        &format!(
            "max_concurrency = 3\nendpoint_concurrency = {{ {:?} = 6 }}",
            urls[2]
        ),
    ));
    assert_eq!(spec.max_concurrency, 12, "the lane's cap is the sum");
    let dispatcher = Arc::new(Dispatcher::new(DispatchOptions::default(), None));
    let lane = dispatcher.lane(&spec).unwrap();
    let n = 240;
    let responses = send_all(&dispatcher, &lane, n).await;
    assert_all_answered(&responses);
    assert_each_answered_once(&servers.iter().collect::<Vec<_>>(), n);
    let caps = [3, 3, 6];
    for (server, cap) in servers.iter().zip(caps) {
        let stats = server.stats();
        assert_eq!(
            stats.max_in_flight,
            cap,
            "{}: the cap is reached and never exceeded",
            server.base_url()
        );
    }
    // Load follows the caps: the server with twice the cap answers about twice as many.
    let received: Vec<u64> = servers.iter().map(|s| s.stats().received).collect();
    assert!(
        received[2] as f64 > 1.5 * received[0].max(received[1]) as f64,
        "{received:?}"
    );
    assert!(
        received[0] > n as u64 / 8 && received[1] > n as u64 / 8,
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_processes_split_every_endpoint_cap() {
    let servers = [
        MockServer::start(MockConfig::new().latency(Duration::from_millis(30))).await,
        MockServer::start(MockConfig::new().latency(Duration::from_millis(30))).await,
    ];
    let urls: Vec<String> = servers.iter().map(MockServer::base_url).collect();
    let spec = spec(&replicas_toml(&urls, "max_concurrency = 4"));
    let options = DispatchOptions {
        budget_share: 2,
        ..DispatchOptions::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(options, None));
    let lane = dispatcher.lane(&spec).unwrap();
    let responses = send_all(&dispatcher, &lane, 60).await;
    assert_all_answered(&responses);
    for server in &servers {
        assert_eq!(server.max_in_flight(), 2, "half of each endpoint's cap");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_not_listening_gets_only_probes_and_every_request_succeeds_once() {
    let latency = MockConfig::new().latency(Duration::from_millis(50));
    let good = [
        MockServer::start(latency.clone()).await,
        MockServer::start(latency).await,
    ];
    let urls = vec![good[0].base_url(), closed_port_url(), good[1].base_url()];
    let spec = spec(&replicas_toml(
        &urls,
        "max_concurrency = 4\nmax_retries = 3",
    ));
    let health = quick_health();
    let (dispatcher, lane, provider) = replica_lane(&spec, DispatchOptions::default(), health);
    let n = 200;
    let started = Instant::now();
    let responses = send_all(&dispatcher, &lane, n).await;
    let elapsed = started.elapsed();
    assert_all_answered(&responses);
    assert_each_answered_once(&good.iter().collect::<Vec<_>>(), n);
    assert_eq!(DispatchStats::get(&dispatcher.stats.failed), 0);
    let status = provider.status();
    assert_only_probes_after_ejection(&status[1], health);
    // Two replicas of 4 at 50 ms: 200 requests take about 1.25 s.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answering_500_gets_only_probes_spaced_by_its_backoff() {
    let latency = MockConfig::new().latency(Duration::from_millis(50));
    let good = [
        MockServer::start(latency.clone()).await,
        MockServer::start(latency).await,
    ];
    let bad = MockServer::start(
        MockConfig::new().faults(FaultPlan::none().with_rate(Fault::Status(500), 1.0)),
    )
    .await;
    let urls = vec![good[0].base_url(), bad.base_url(), good[1].base_url()];
    let spec = spec(&replicas_toml(
        &urls,
        "max_concurrency = 4\nmax_retries = 3",
    ));
    let health = quick_health();
    let (dispatcher, lane, provider) = replica_lane(&spec, DispatchOptions::default(), health);
    let n = 200;
    let responses = send_all(&dispatcher, &lane, n).await;
    assert_all_answered(&responses);
    assert_each_answered_once(&good.iter().collect::<Vec<_>>(), n);
    assert_eq!(DispatchStats::get(&dispatcher.stats.failed), 0);
    let status = provider.status();
    let bad_status = &status[1];
    assert_only_probes_after_ejection(bad_status, health);
    let stats = bad.stats();
    assert_eq!(
        stats.received, bad_status.sent,
        "the server saw what was sent"
    );
    assert_eq!(stats.status(500), stats.received);
    // The probes arrive one per ejection period, each later than the period before it.
    let mut times = bad.received_times();
    times.sort();
    let probes = bad_status.probes as usize;
    let tail = &times[times.len() - probes - 1..];
    for pair in tail.windows(2) {
        assert!(
            pair[1] - pair[0] >= health.eject_base.mul_f64(0.9),
            "probes at {tail:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_is_down_requests_fail_after_the_retries_promptly() {
    let urls = vec![closed_port_url(), closed_port_url(), closed_port_url()];
    let spec = spec(&replicas_toml(
        &urls,
        "max_concurrency = 4\nmax_retries = 3",
    ));
    let (dispatcher, lane, provider) =
        replica_lane(&spec, DispatchOptions::default(), HealthPolicy::default());
    let n = 20;
    let started = Instant::now();
    let responses = send_all(&dispatcher, &lane, n).await;
    let elapsed = started.elapsed();
    eprintln!("all down: {elapsed:?}, {:?}", provider.status());
    for r in &responses {
        let error = r.error.as_ref().expect("every request fails");
        assert_eq!(
            error.kind,
            ErrorKind::Connection.as_str(),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("gave up after 4 attempts"),
            "{}",
            error.message
        );
    }
    assert_eq!(DispatchStats::get(&dispatcher.stats.failed), n as u64);
    assert_eq!(DispatchStats::get(&dispatcher.stats.retries), 3 * n as u64);
    // The dispatcher's backoff (about 40 ms, 0.5 s, 1 s with jitter), no hang.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // No busy loop: once ejected, a replica gets at most a probe per ejection period, so the
    // sends are bounded by the dispatcher's attempts, each trying each replica at most once.
    let sent: u64 = provider.status().iter().map(|s| s.sent).sum();
    assert!(sent <= 4 * n as u64, "{sent} connection attempts");
    assert!(provider.status().iter().all(|s| !s.healthy));
    let last = &responses[n - 1].error.as_ref().unwrap().message;
    assert!(
        last.contains("endpoints of model 'm'") || last.contains("127.0.0.1"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_replicas_answer_too() {
    let servers = [
        MockServer::start(MockConfig::new().latency(Duration::from_millis(20))).await,
        MockServer::start(MockConfig::new().latency(Duration::from_millis(20))).await,
    ];
    let urls: Vec<String> = servers.iter().map(MockServer::base_url).collect();
    // SAFETY: set before any provider reads it, never changed; no other test reads it.
    unsafe { std::env::set_var("SHAPING_TEST_REPLICAS_KEY", "sk-replicas-test") };
    let toml = replicas_toml(
        &urls,
        "max_concurrency = 2\napi_key_env = \"SHAPING_TEST_REPLICAS_KEY\"",
    )
    .replace("\"openai\"", "\"anthropic\"");
    let spec = spec(&toml);
    let dispatcher = Arc::new(Dispatcher::new(DispatchOptions::default(), None));
    let lane = dispatcher.lane(&spec).unwrap();
    let responses = send_all(&dispatcher, &lane, 20).await;
    assert_all_answered(&responses);
    for server in &servers {
        assert!(server.stats().received > 0);
        let first = &server.requests()[0];
        assert_eq!(first.path, "/v1/messages");
        assert_eq!(first.header("x-api-key"), Some("sk-replicas-test"));
    }
}

#[test]
fn the_fingerprint_and_cache_key_ignore_which_replicas_there_are() {
    let urls: Vec<String> = (1..=3).map(|i| format!("http://gpu-{i}:8000/v1")).collect();
    let two = spec(&replicas_toml(&urls[..2], ""));
    let three = spec(&replicas_toml(&urls, "max_concurrency = 8"));
    let other_two = spec(&replicas_toml(&urls[1..], ""));
    assert_eq!(two.fingerprint(), three.fingerprint());
    assert_eq!(two.fingerprint(), other_two.fingerprint());
    assert_eq!(
        two.fingerprint().endpoint,
        shaping::models::REPLICA_SET_ENDPOINT
    );
    assert_eq!(
        two.fingerprint().to_string(),
        "openai:mock-model @ replicas"
    );
    let key = |spec: &ModelSpec| {
        CacheKey::new(
            &spec.fingerprint(),
            &[Message::user("hi")],
            &Params::default(),
            "record-1",
            0,
        )
    };
    assert_eq!(key(&two), key(&three));
    // What outputs depend on still counts: another model is another fingerprint.
    let other_model = spec(&replicas_toml(&urls, "").replace("mock-model", "other-model"));
    assert_ne!(two.fingerprint(), other_model.fingerprint());

    // The lane key is stable for an alias: the same whatever the order of `base_urls`.
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    assert_eq!(
        three.lane_key(),
        spec(&replicas_toml(&reversed, "")).lane_key()
    );
    assert_ne!(two.lane_key(), three.lane_key());
}

#[test]
fn caps_are_per_endpoint_with_overrides() {
    let urls = vec![
        "http://gpu-1:8000/v1".to_owned(),
        "http://gpu-2:8000/v1/".to_owned(),
    ];
    let spec = spec(&replicas_toml(
        &urls,
        "max_concurrency = 64\nendpoint_concurrency = { \"http://gpu-2:8000/v1\" = 32 }",
    ));
    let caps: Vec<usize> = spec.replicas.iter().map(|r| r.max_concurrency).collect();
    assert_eq!(caps, [64, 32]);
    assert_eq!(spec.max_concurrency, 96);
    assert_eq!(spec.base_url, None);
}

#[test]
fn models_local_toml_replaces_the_endpoint_whichever_form_each_file_uses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.toml"),
        "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nbase_url = \"http://gpu-1:8000/v1\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("models.local.toml"),
        "[models.m]\nbase_urls = [\"http://a:1/v1\", \"http://b:1/v1\"]\n",
    )
    .unwrap();
    let config = ModelsConfig::load(dir.path()).unwrap();
    let spec = config.get("m").unwrap();
    assert_eq!(spec.replicas.len(), 2);
    assert_eq!(spec.base_url, None);

    std::fs::write(
        dir.path().join("models.local.toml"),
        "[models.m]\nbase_url = \"http://a:1/v1\"\nbase_urls = [\"http://b:1/v1\"]\n",
    )
    .unwrap();
    let err = ModelsConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("'m'") && err.contains("models.local.toml") && err.contains("not both"),
        "{err}"
    );
}

#[test]
fn bad_replica_settings_are_errors_naming_the_alias() {
    let ok = [
        "http://gpu-1:8000/v1".to_owned(),
        "http://gpu-2:8000/v1".to_owned(),
    ];
    let cases = [
        (
            replicas_toml(&["gpu-1:8000/v1".to_owned()], ""),
            "not an http(s) URL",
        ),
        (
            replicas_toml(&["ftp://gpu-1/v1".to_owned()], ""),
            "not an http(s) URL",
        ),
        (replicas_toml(&["http:///v1".to_owned()], ""), "not an http(s) URL"),
        (replicas_toml(&[], ""), "`base_urls` is empty"),
        (
            replicas_toml(&ok, "base_url = \"http://gpu-3:8000/v1\""),
            "not both",
        ),
        (
            replicas_toml(&ok, "endpoint_concurrency = { \"http://gpu-3:8000/v1\" = 8 }"),
            "\"http://gpu-3:8000/v1\", which is not in `base_urls`",
        ),
        (
            replicas_toml(&ok, "endpoint_concurrency = { \"http://gpu-1:8000/v1\" = 0 }"),
            "at least 1",
        ),
        (
            replicas_toml(&[ok[0].clone(), format!("{}/", ok[0])], ""),
            "twice",
        ),
        (
            "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nbase_url = \"http://gpu-1:8000/v1\"\nendpoint_concurrency = { \"http://gpu-1:8000/v1\" = 8 }\n".to_owned(),
            "`endpoint_concurrency`",
        ),
    ];
    for (toml, expected) in cases {
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("model 'm'") && err.contains(expected),
            "{toml}\n→ {err}"
        );
    }
}
