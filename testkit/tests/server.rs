//! Integration tests for the testkit mock server, driven by a real HTTP client (reqwest).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Fault, FaultPlan, MockConfig, MockServer};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn oai_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": prompt}
    ]})
}

async fn post(
    c: &reqwest::Client,
    url: String,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut rb = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await
}

async fn oai(
    c: &reqwest::Client,
    s: &MockServer,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = post(c, format!("{}/chat/completions", s.base_url()), body, &[])
        .await
        .unwrap();
    let st = r.status().as_u16();
    let h = r.headers().clone();
    (st, h, r.text().await.unwrap())
}

#[tokio::test]
async fn openai_happy_path() {
    let s = MockServer::start(MockConfig::new().api_key("sk-test").models(["gpt-mock"])).await;
    assert!(s.base_url().starts_with("http://127.0.0.1:") && s.base_url().ends_with("/v1"));
    let c = client();
    let body = json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "hello there world"}],
        "temperature": 0.2, "seed": 7});
    let r = post(
        &c,
        format!("{}/chat/completions", s.base_url()),
        &body,
        &[("authorization", "Bearer sk-test")],
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-mock");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "reply[gpt-mock]: hello there world"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 5); // 17 chars / 4, rounded up
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 9);

    let st = s.stats();
    assert_eq!((st.received, st.accepted, st.successes), (1, 1, 1));
    assert_eq!(st.status(200), 1);
    assert_eq!(s.prompt_count("hello there world"), 1);
    let log = s.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].model.as_deref(), Some("gpt-mock"));
    assert_eq!(log[0].header("authorization"), Some("Bearer sk-test"));
    assert_eq!(log[0].messages[0]["content"], "hello there world");
    assert_eq!(log[0].body["seed"], 7);
    assert_eq!(log[0].status, Some(200));
}

#[tokio::test]
async fn max_tokens_truncates_and_stop_sequences() {
    let s = MockServer::start(MockConfig::new()).await;
    let c = client();
    let mut body = oai_body("m", "one two three four five");
    body["max_tokens"] = json!(3);
    let (st, _, text) = oai(&c, &s, &body).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "reply[m]: one two");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let mut body = oai_body("m", "alpha STOP beta");
    body["stop"] = json!(["STOP"]);
    let (_, _, text) = oai(&c, &s, &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "reply[m]: alpha ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn custom_responder_sees_view() {
    let s = MockServer::start(MockConfig::new().responder(|v| {
        format!(
            "{}|{}|{:?}|{:?}",
            v.messages.len(),
            v.last_user().unwrap_or(""),
            v.temperature,
            v.raw["response_format"]["type"].as_str()
        )
    }))
    .await;
    let c = client();
    let mut body = oai_body("m", "x");
    body["temperature"] = json!(0.5);
    body["response_format"] = json!({"type": "json_object"});
    let (_, _, text) = oai(&c, &s, &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "2|x|Some(0.5)|Some(\"json_object\")"
    );
}

#[tokio::test]
async fn anthropic_happy_path_with_system() {
    let s = MockServer::start(MockConfig::new().api_key("ak-test").responder(|v| {
        format!(
            "sys={} user={}",
            v.system.clone().unwrap_or_default(),
            v.last_user().unwrap_or("")
        )
    }))
    .await;
    let c = client();
    let body = json!({"model": "claude-mock", "system": "You are terse.", "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi claude"}]}]});
    let hdrs = [
        ("x-api-key", "ak-test"),
        ("anthropic-version", "2023-06-01"),
    ];
    let r = post(&c, format!("{}/messages", s.base_url()), &body, &hdrs)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-mock");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], "sys=You are terse. user=hi claude");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() >= 1);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    let log = s.requests();
    assert_eq!(log[0].system.as_deref(), Some("You are terse."));
    assert_eq!(log[0].header("x-api-key"), Some("ak-test"));
    assert_eq!(log[0].last_user.as_deref(), Some("hi claude"));

    // max_tokens is required
    let bad = json!({"model": "claude-mock", "messages": [{"role": "user", "content": "x"}]});
    let r = post(&c, format!("{}/messages", s.base_url()), &bad, &hdrs)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // max_tokens truncation -> stop_reason max_tokens
    let short = json!({"model": "claude-mock", "max_tokens": 2, "messages": [{"role": "user", "content": "a b c d"}]});
    let r = post(&c, format!("{}/messages", s.base_url()), &short, &hdrs)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn auth_failures() {
    let s = MockServer::start(MockConfig::new().api_key("sk-right")).await;
    let c = client();
    let body = oai_body("m", "p");
    let url = format!("{}/chat/completions", s.base_url());
    let r = post(&c, url.clone(), &body, &[]).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post(
        &c,
        url.clone(),
        &body,
        &[("authorization", "Bearer sk-wrong")],
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let ab = json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let r = post(
        &c,
        format!("{}/messages", s.base_url()),
        &ab,
        &[("x-api-key", "nope"), ("anthropic-version", "2023-06-01")],
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let st = s.stats();
    assert_eq!(st.status(401), 3);
    assert_eq!(st.successes, 0);
}

#[tokio::test]
async fn unknown_model_404() {
    let s = MockServer::start(MockConfig::new().models(["known"])).await;
    let c = client();
    let (st, _, text) = oai(&c, &s, &oai_body("x", "p")).await;
    assert_eq!(st, 404);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["message"], "The model `x` does not exist");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, _, _) = oai(&c, &s, &oai_body("known", "p")).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_enforced_over_sliding_window() {
    // 600 rpm -> 10 accepted per sliding second.
    let s = MockServer::start(MockConfig::new().rpm(600)).await;
    let c = client();
    let t0 = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    // Hammer for ~1.5 s with 4 concurrent workers.
    let mut handles = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        let url = format!("{}/chat/completions", s.base_url());
        handles.push(tokio::spawn(async move {
            let mut res = Vec::new();
            let mut i = 0;
            while t0.elapsed() < Duration::from_millis(1500) {
                let r = post(&c, url.clone(), &oai_body("m", &format!("w{w}-{i}")), &[])
                    .await
                    .unwrap();
                let st = r.status().as_u16();
                let h = r.headers().clone();
                res.push((st, h));
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            res
        }));
    }
    for h in handles {
        for (st, hdr) in h.await.unwrap() {
            match st {
                200 => {
                    ok += 1;
                    assert!(hdr.contains_key("x-ratelimit-remaining-requests"));
                }
                429 => {
                    limited += 1;
                    assert_eq!(hdr["x-ratelimit-remaining-requests"], "0");
                    let ms: u64 = hdr["retry-after-ms"].to_str().unwrap().parse().unwrap();
                    assert!((1..=1000).contains(&ms), "retry-after-ms {ms}");
                    assert!(hdr.contains_key("retry-after"));
                    assert!(hdr.contains_key("x-ratelimit-reset-requests"));
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert!(limited > 0, "expected some 429s");
    assert!((10..=20).contains(&ok), "ok={ok}");
    assert_eq!(s.max_accepted_in_any_window(Duration::from_secs(1)), 10);
    assert!(s.max_requests_in_any_window(Duration::from_secs(1)) > 10);
    let st = s.stats();
    assert_eq!(st.accepted, ok);
    assert_eq!(st.rate_limited, limited);
    assert_eq!(st.limiter_rejections, limited);
    assert_eq!(s.accepted_per_second().iter().sum::<u64>(), ok);
}

#[tokio::test]
async fn anthropic_rate_limit_headers() {
    let s = MockServer::start(MockConfig::new().rpm(60)).await; // 1 per second
    let c = client();
    let body =
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let hdrs = [("anthropic-version", "2023-06-01")];
    let url = format!("{}/messages", s.base_url());
    let r = post(&c, url.clone(), &body, &hdrs).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["anthropic-ratelimit-requests-remaining"], "0");
    let r = post(&c, url, &body, &hdrs).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let reset = r.headers()["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(reset.contains('T') && reset.ends_with('Z'), "{reset}");
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn tpm_enforced() {
    // 600 tpm -> 10 tokens per second; each request costs ~2 prompt + 2 completion tokens.
    let s = MockServer::start(MockConfig::new().tpm(600).responder(|_| "a b".into())).await;
    let c = client();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}]});
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (st, h, _) = oai(&c, &s, &body).await;
        if st == 200 {
            assert!(h.contains_key("x-ratelimit-remaining-tokens"));
        }
        codes.push(st);
    }
    assert_eq!(codes, vec![200, 200, 429, 429]);
}

#[tokio::test]
async fn status_faults_have_realistic_bodies() {
    let plan = FaultPlan::sequence([
        Some(Fault::Status(429)),
        Some(Fault::Status(500)),
        Some(Fault::Status(503)),
        Some(Fault::ContextLength),
        Some(Fault::Status(408)),
        Some(Fault::Status(502)),
        Some(Fault::Status(403)),
        None,
        Some(Fault::RateLimited {
            retry_after: Duration::from_millis(2500),
        }),
    ]);
    let s = MockServer::start(MockConfig::new().faults(plan)).await;
    let c = client();
    let mut out = Vec::new();
    for i in 0..9 {
        out.push(oai(&c, &s, &oai_body("m", &format!("p{i}"))).await);
    }
    let codes: Vec<u16> = out.iter().map(|o| o.0).collect();
    assert_eq!(codes, vec![429, 500, 503, 400, 408, 502, 403, 200, 429]);
    assert_eq!(out[0].1["retry-after"], "1");
    assert_eq!(out[0].1["retry-after-ms"], "1000");
    let v: Value = serde_json::from_str(&out[0].2).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let v: Value = serde_json::from_str(&out[1].2).unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    let v: Value = serde_json::from_str(&out[3].2).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(out[8].1["retry-after"], "3");
    assert_eq!(out[8].1["retry-after-ms"], "2500");
    let st = s.stats();
    assert_eq!(st.faults_injected, 8);
    assert_eq!(st.rate_limited, 2);
    assert_eq!(st.limiter_rejections, 0);
    assert_eq!(st.successes, 1);
    assert_eq!(s.requests()[0].fault, Some(Fault::Status(429)));
}

#[tokio::test]
async fn anthropic_fault_bodies() {
    let plan = FaultPlan::sequence([Some(Fault::Status(529)), Some(Fault::ContextLength)]);
    let s = MockServer::start(MockConfig::new().faults(plan)).await;
    let c = client();
    let body =
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let url = format!("{}/messages", s.base_url());
    let r = post(
        &c,
        url.clone(),
        &body,
        &[("anthropic-version", "2023-06-01")],
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 529);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    let r = post(&c, url, &body, &[("anthropic-version", "2023-06-01")])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );
}

#[tokio::test]
async fn connection_faults_observable() {
    let plan = FaultPlan::none()
        .marker("RESET", Fault::ResetConnection)
        .marker("MIDBODY", Fault::CloseMidBody)
        .marker("TRUNC", Fault::TruncatedJson)
        .marker("NOTJSON", Fault::InvalidJson)
        .marker("SLOW", Fault::Delay(Duration::from_secs(5)));
    let s = MockServer::start(MockConfig::new().faults(plan)).await;
    let c = client();
    let url = format!("{}/chat/completions", s.base_url());

    // Reset: no response at all.
    let e = post(&c, url.clone(), &oai_body("m", "please RESET"), &[])
        .await
        .unwrap_err();
    assert!(!e.is_status() && !e.is_timeout(), "{e:?}");

    // Mid-body close: headers arrive, body read fails.
    let r = post(&c, url.clone(), &oai_body("m", "MIDBODY now"), &[])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.content_length().unwrap() > 10);
    assert!(r.text().await.is_err());

    // Truncated JSON: complete HTTP response, unparsable JSON.
    let r = post(&c, url.clone(), &oai_body("m", "TRUNC"), &[])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let t = r.text().await.unwrap();
    assert!(t.starts_with('{'));
    assert!(serde_json::from_str::<Value>(&t).is_err());

    // Invalid JSON.
    let r = post(&c, url.clone(), &oai_body("m", "NOTJSON"), &[])
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "not json");

    // Delay beyond the client timeout.
    let short = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = post(&short, url.clone(), &oai_body("m", "SLOW"), &[])
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");

    // Server still healthy afterwards.
    let (st, _, _) = oai(&c, &s, &oai_body("m", "fine")).await;
    assert_eq!(st, 200);
    let st = s.stats();
    assert_eq!(st.resets, 1);
    assert_eq!(st.mid_body_closes, 1);
    assert_eq!(st.faults_injected, 5);
    assert_eq!(st.successes, 1);
}

#[tokio::test]
async fn marker_times_then_recovers_and_prompt_counts() {
    let plan = FaultPlan::none()
        .marker_times("FLAKY", Fault::Status(500), 2)
        .nth(0, Fault::Status(502));
    let s = MockServer::start(MockConfig::new().faults(plan)).await;
    let c = client();
    let (a, _, _) = oai(&c, &s, &oai_body("m", "other")).await; // nth(0) wins
    let mut codes = vec![a];
    for _ in 0..3 {
        codes.push(oai(&c, &s, &oai_body("m", "FLAKY job")).await.0);
    }
    assert_eq!(codes, vec![502, 500, 500, 200]);
    assert_eq!(s.prompt_count("FLAKY job"), 3);
    assert_eq!(s.prompt_count("other"), 1);
    assert_eq!(s.prompt_count("never"), 0);

    s.set_fault_plan(FaultPlan::none().nth(1, Fault::Status(400)));
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(oai(&c, &s, &oai_body("m", "z")).await.0);
        }
        v
    };
    assert_eq!(codes, vec![200, 400, 200]);
}

#[tokio::test]
async fn random_faults_are_seeded() {
    async fn run() -> Vec<u16> {
        let plan = FaultPlan::random(42, [(Fault::Status(429), 0.2), (Fault::Status(500), 0.2)]);
        let s = MockServer::start(MockConfig::new().faults(plan)).await;
        let c = client();
        let mut v = Vec::new();
        for i in 0..50 {
            v.push(oai(&c, &s, &oai_body("m", &i.to_string())).await.0);
        }
        v
    }
    let a = run().await;
    let b = run().await;
    assert_eq!(a, b);
    let n429 = a.iter().filter(|&&c| c == 429).count();
    let n500 = a.iter().filter(|&&c| c == 500).count();
    assert!(n429 > 2 && n500 > 2 && n429 + n500 < 40, "{n429} {n500}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_counter_and_latency() {
    let n = 600;
    let s = MockServer::start(
        MockConfig::new()
            .latency(Duration::from_millis(500))
            .record_requests(false),
    )
    .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let url = format!("{}/chat/completions", s.base_url());
        hs.push(tokio::spawn(async move {
            post(&c, url, &oai_body("m", &format!("c{i}")), &[])
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap(), 200);
    }
    let el = t0.elapsed();
    let st = s.stats();
    assert_eq!(st.successes, n as u64);
    assert!(
        st.max_in_flight >= 512,
        "max_in_flight={}",
        st.max_in_flight
    );
    assert!(
        st.max_connections >= 512,
        "max_connections={}",
        st.max_connections
    );
    assert_eq!(st.in_flight, 0);
    assert!(
        el >= Duration::from_millis(500) && el < Duration::from_secs(5),
        "{el:?}"
    );
    assert!(s.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_queues_the_rest() {
    let s = MockServer::start(
        MockConfig::new()
            .latency(Duration::from_millis(100))
            .max_in_flight(4),
    )
    .await;
    let c = client();
    let t0 = Instant::now();
    let hs: Vec<_> = (0..12)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/chat/completions", s.base_url()));
            tokio::spawn(async move {
                post(&c, url, &oai_body("m", &format!("q{i}")), &[])
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.await.unwrap(), 200);
    }
    let el = t0.elapsed();
    // Three rounds of four; the queued requests still count as in flight.
    assert!(el >= Duration::from_millis(300), "{el:?}");
    assert!(s.max_in_flight() > 4, "{}", s.max_in_flight());
    assert_eq!(s.stats().successes, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_second_and_jitter_add_time() {
    let s = MockServer::start(
        MockConfig::new()
            .tokens_per_second(20.0)
            .jitter(Duration::from_millis(50))
            .responder(|_| "w ".repeat(10)),
    )
    .await;
    let c = client();
    let t0 = Instant::now();
    let (st, _, _) = oai(&c, &s, &oai_body("m", "x")).await;
    assert_eq!(st, 200);
    let el = t0.elapsed();
    assert!(
        el >= Duration::from_millis(500) && el < Duration::from_millis(900),
        "{el:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let s = MockServer::start(MockConfig::new()).await;
    let c = client();
    assert_eq!(oai(&c, &s, &oai_body("m", "x")).await.0, 200);
    let url = format!("{}/chat/completions", s.base_url());
    s.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh = client();
    assert!(post(&fresh, url, &oai_body("m", "x"), &[]).await.is_err());
}

#[test]
fn mock_llm_binary() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-llm"))
        .args([
            "--exit-on-stdin-eof",
            "--api-key",
            "k",
            "--rpm",
            "6000",
            "--latency-ms",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{line}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        for i in 0..5 {
            let r = post(
                &c,
                format!("{base}/chat/completions"),
                &oai_body("m", &i.to_string()),
                &[("authorization", "Bearer k")],
            )
            .await
            .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        let r = post(
            &c,
            format!("{base}/chat/completions"),
            &oai_body("m", "x"),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let mut stats = String::new();
    out.read_line(&mut stats).unwrap();
    let v: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["received"], 6);
    assert_eq!(v["successes"], 5);
    assert_eq!(v["by_status"]["401"], 1);
    assert!(v["max_received_per_1s"].as_u64().unwrap() >= 1);
    assert!(child.wait().unwrap().success());
}
