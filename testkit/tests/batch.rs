//! Integration tests of the mock server's batch APIs (OpenAI files + batches, Anthropic message
//! batches), driven by a real HTTP client (reqwest).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Api, Fault, FaultPlan, MockConfig, MockServer};

const KEY: &str = "sk-test";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn oai_body(prompt: &str) -> Value {
    json!({"model": "gpt-mock", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": prompt}
    ], "max_tokens": 50})
}

fn ant_body(prompt: &str) -> Value {
    json!({"model": "claude-mock", "max_tokens": 50, "system": "be brief",
        "messages": [{"role": "user", "content": prompt}]})
}

fn jsonl(items: &[(String, Value)]) -> String {
    items
        .iter()
        .map(|(id, body)| {
            json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
                .to_string()
                + "\n"
        })
        .collect()
}

/// A multipart/form-data body with `purpose` and a `file` part.
fn multipart(purpose: &str, content: &str) -> (String, Vec<u8>) {
    let b = "----testkitBoundary7MA4YWxk";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"input.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{b}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={b}"),
        body.into_bytes(),
    )
}

async fn send(
    c: &reqwest::Client,
    s: &MockServer,
    method: reqwest::Method,
    path: &str,
    api: Api,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = c.request(method, s.url(path));
    rb = match api {
        Api::OpenAi => rb.header("authorization", format!("Bearer {KEY}")),
        Api::Anthropic => rb
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01"),
    };
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get_text(c: &reqwest::Client, url: &str, api: Api) -> (u16, String) {
    let rb = match api {
        Api::OpenAi => c.get(url).header("authorization", format!("Bearer {KEY}")),
        Api::Anthropic => c
            .get(url)
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01"),
    };
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn upload(c: &reqwest::Client, s: &MockServer, purpose: &str, content: &str) -> (u16, Value) {
    let (ct, body) = multipart(purpose, content);
    let r = c
        .post(s.url("/v1/files"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, serde_json::from_str(&r.text().await.unwrap()).unwrap())
}

async fn create_oai(c: &reqwest::Client, s: &MockServer, items: &[(String, Value)]) -> Value {
    let (st, f) = upload(c, s, "batch", &jsonl(items)).await;
    assert_eq!(st, 200, "{f}");
    let (st, b) = send(
        c,
        s,
        reqwest::Method::POST,
        "/v1/batches",
        Api::OpenAi,
        Some(
            json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"run": "t"}}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    b
}

async fn poll_until(
    c: &reqwest::Client,
    s: &MockServer,
    path: &str,
    api: Api,
    field: &str,
    want: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = send(c, s, reqwest::Method::GET, path, api, None).await;
        assert_eq!(st, 200, "{b}");
        if b[field] == want {
            return b;
        }
        assert!(Instant::now() < deadline, "still {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The body without the fields that differ between requests (ids, timestamps).
fn strip(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    v
}

#[tokio::test]
async fn openai_round_trip() {
    let s = MockServer::start(
        MockConfig::new()
            .api_key(KEY)
            .batch_latency(Duration::from_millis(400))
            .faults(
                FaultPlan::none()
                    .marker("BOOM", Fault::Status(500))
                    .marker_times("EXPIRE", Fault::Expire, 1),
            ),
    )
    .await;
    let c = client();
    let mut items: Vec<(String, Value)> = (0..20)
        .map(|i| (format!("req-{i}"), oai_body(&format!("prompt number {i}"))))
        .collect();
    items.push(("boom".into(), oai_body("please BOOM now")));
    items.push(("exp".into(), oai_body("EXPIRE me")));
    let b = create_oai(&c, &s, &items).await;
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("batch_"));
    assert_eq!(b["object"], "batch");
    assert_eq!(b["status"], "validating");
    assert_eq!(b["output_file_id"], Value::Null);
    assert_eq!(b["request_counts"]["total"], 22);
    assert_eq!(b["metadata"]["run"], "t");
    assert_eq!(b["endpoint"], "/v1/chat/completions");
    assert_eq!(b["completion_window"], "24h");
    assert_eq!(
        b["expires_at"].as_u64().unwrap(),
        b["created_at"].as_u64().unwrap() + 86_400
    );
    let path = format!("/v1/batches/{id}");
    let ip = poll_until(&c, &s, &path, Api::OpenAi, "status", "in_progress").await;
    assert!(ip["in_progress_at"].is_u64());
    assert_eq!(ip["completed_at"], Value::Null);
    let done = poll_until(&c, &s, &path, Api::OpenAi, "status", "completed").await;
    assert_eq!(done["request_counts"]["completed"], 20);
    assert_eq!(done["request_counts"]["failed"], 2);
    assert!(done["completed_at"].is_u64());

    let out_id = done["output_file_id"].as_str().unwrap();
    let (st, out) = get_text(
        &c,
        &s.url(&format!("/v1/files/{out_id}/content")),
        Api::OpenAi,
    )
    .await;
    assert_eq!(st, 200);
    let out = lines(&out);
    assert_eq!(out.len(), 20);
    let got: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let input: Vec<String> = (0..20).map(|i| format!("req-{i}")).collect();
    assert_ne!(got, input, "results must not come in input order");
    assert_eq!(
        got.iter().copied().collect::<HashSet<_>>(),
        input.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    let bodies: HashMap<&str, &Value> = items.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for l in &out {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(l["error"], Value::Null);
        assert_eq!(l["response"]["status_code"], 200);
        assert!(l["response"]["request_id"].is_string());
        let body = bodies[l["custom_id"].as_str().unwrap()];
        let (st, direct) = send(
            &c,
            &s,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Api::OpenAi,
            Some(body.clone()),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(strip(l["response"]["body"].clone()), strip(direct));
    }

    let err_id = done["error_file_id"].as_str().unwrap();
    let (st, errs) = get_text(
        &c,
        &s.url(&format!("/v1/files/{err_id}/content")),
        Api::OpenAi,
    )
    .await;
    assert_eq!(st, 200);
    let errs: HashMap<String, Value> = lines(&errs)
        .into_iter()
        .map(|l| (l["custom_id"].as_str().unwrap().to_owned(), l))
        .collect();
    assert_eq!(errs.len(), 2);
    let boom = &errs["boom"];
    assert_eq!(boom["response"]["status_code"], 500);
    assert_eq!(boom["response"]["body"]["error"]["type"], "server_error");
    assert_eq!(boom["response"]["body"]["error"]["param"], Value::Null);
    assert_eq!(boom["error"], Value::Null);
    let exp = &errs["exp"];
    assert_eq!(exp["response"], Value::Null);
    assert_eq!(exp["error"]["code"], "batch_expired");
    assert_eq!(
        exp["error"]["message"],
        "This request could not be executed before the completion window of 24h expired."
    );

    // The input file can be read back too.
    let in_id = done["input_file_id"].as_str().unwrap();
    let (st, input_text) = get_text(
        &c,
        &s.url(&format!("/v1/files/{in_id}/content")),
        Api::OpenAi,
    )
    .await;
    assert_eq!((st, input_text), (200, jsonl(&items)));

    // Resubmitting the expired item succeeds (the marker rule fired once).
    s.set_batch_latency(Duration::ZERO);
    let b2 = create_oai(&c, &s, &[("exp".into(), oai_body("EXPIRE me"))]).await;
    let done2 = poll_until(
        &c,
        &s,
        &format!("/v1/batches/{}", b2["id"].as_str().unwrap()),
        Api::OpenAi,
        "status",
        "completed",
    )
    .await;
    assert_eq!(done2["request_counts"]["completed"], 1);
    assert_eq!(done2["error_file_id"], Value::Null);

    let st = s.stats();
    assert_eq!(st.files_uploaded, 2);
    assert_eq!(st.batches_created, 2);
    assert!(st.batch_polls >= 3);
    assert_eq!(st.batch_items_succeeded, 21);
    assert_eq!(st.batch_items_failed, 2);
    assert_eq!(st.result_downloads, 2);
    assert_eq!(
        st.accepted, 20,
        "only the interactive requests are accepted"
    );
    assert_eq!(st.successes, 20);
}

#[tokio::test]
async fn anthropic_round_trip() {
    let s = MockServer::start(
        MockConfig::new()
            .api_key(KEY)
            .batch_latency(Duration::from_millis(150))
            .faults(
                FaultPlan::none()
                    .marker("OVERLOAD", Fault::Status(529))
                    .marker("EXPIRE", Fault::Expire),
            ),
    )
    .await;
    let c = client();
    let mut reqs: Vec<(String, Value)> = (0..10)
        .map(|i| (format!("item_{i}"), ant_body(&format!("tell me {i}"))))
        .collect();
    reqs.push(("over".into(), ant_body("OVERLOAD now")));
    reqs.push(("exp".into(), ant_body("EXPIRE now")));
    let requests: Vec<Value> = reqs
        .iter()
        .map(|(id, p)| json!({"custom_id": id, "params": p}))
        .collect();
    let (st, b) = send(
        &c,
        &s,
        reqwest::Method::POST,
        "/v1/messages/batches",
        Api::Anthropic,
        Some(json!({"requests": requests})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));
    assert_eq!(b["type"], "message_batch");
    assert_eq!(b["processing_status"], "in_progress");
    assert_eq!(b["request_counts"]["processing"], 12);
    assert_eq!(b["results_url"], Value::Null);
    assert_eq!(b["ended_at"], Value::Null);
    assert_eq!(b["archived_at"], Value::Null);
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));

    let results_path = format!("/v1/messages/batches/{id}/results");
    let (st, _) = get_text(&c, &s.url(&results_path), Api::Anthropic).await;
    assert_eq!(st, 404, "no results before the batch ended");

    let done = poll_until(
        &c,
        &s,
        &format!("/v1/messages/batches/{id}"),
        Api::Anthropic,
        "processing_status",
        "ended",
    )
    .await;
    assert_eq!(
        done["request_counts"],
        json!({"processing": 0, "succeeded": 10, "errored": 1, "canceled": 0, "expired": 1})
    );
    assert!(done["ended_at"].is_string());
    assert_eq!(done["results_url"], s.url(&results_path));

    let (st, text) = get_text(&c, done["results_url"].as_str().unwrap(), Api::Anthropic).await;
    assert_eq!(st, 200);
    let res = lines(&text);
    assert_eq!(res.len(), 12);
    let order: Vec<&str> = res
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let input: Vec<&str> = reqs.iter().map(|(k, _)| k.as_str()).collect();
    assert_ne!(order, input);
    let params: HashMap<&str, &Value> = reqs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for l in &res {
        let cid = l["custom_id"].as_str().unwrap();
        match cid {
            "over" => {
                assert_eq!(l["result"]["type"], "errored");
                assert_eq!(l["result"]["error"]["type"], "error");
                assert_eq!(l["result"]["error"]["error"]["type"], "overloaded_error");
                assert!(l["result"]["error"]["error"]["message"].is_string());
            }
            "exp" => assert_eq!(l["result"], json!({"type": "expired"})),
            _ => {
                assert_eq!(l["result"]["type"], "succeeded");
                let (st, direct) = send(
                    &c,
                    &s,
                    reqwest::Method::POST,
                    "/v1/messages",
                    Api::Anthropic,
                    Some(params[cid].clone()),
                )
                .await;
                assert_eq!(st, 200);
                assert_eq!(strip(l["result"]["message"].clone()), strip(direct));
            }
        }
    }
    let st = s.stats();
    assert_eq!(st.batch_items_succeeded, 10);
    assert_eq!(st.batch_items_failed, 2);
    assert_eq!(st.result_downloads, 1);

    let snaps = s.batches();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, id);
    assert_eq!(snaps[0].api, Api::Anthropic);
    assert_eq!(snaps[0].status, "ended");
    assert_eq!(snaps[0].custom_ids, input);
    assert!(snaps[0].ended.is_some());
}

#[tokio::test]
async fn cancel_both_formats() {
    let s = MockServer::start(
        MockConfig::new()
            .api_key(KEY)
            .batch_latency(Duration::from_secs(60)),
    )
    .await;
    let c = client();
    let items: Vec<(String, Value)> = (0..5)
        .map(|i| (format!("c{i}"), oai_body(&format!("x{i}"))))
        .collect();
    let b = create_oai(&c, &s, &items).await;
    let id = b["id"].as_str().unwrap();
    let (st, cb) = send(
        &c,
        &s,
        reqwest::Method::POST,
        &format!("/v1/batches/{id}/cancel"),
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(cb["status"], "cancelling");
    assert!(cb["cancelling_at"].is_u64());
    let (_, g) = send(
        &c,
        &s,
        reqwest::Method::GET,
        &format!("/v1/batches/{id}"),
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(g["status"], "cancelled");
    assert!(g["cancelled_at"].is_u64());
    assert_eq!(g["output_file_id"], Value::Null);
    assert_eq!(g["request_counts"]["completed"], 0);
    let (_, errs) = get_text(
        &c,
        &s.url(&format!(
            "/v1/files/{}/content",
            g["error_file_id"].as_str().unwrap()
        )),
        Api::OpenAi,
    )
    .await;
    let errs = lines(&errs);
    assert_eq!(errs.len(), 5);
    assert!(errs.iter().all(|l| l["error"]["code"] == "batch_cancelled"));
    let (st, again) = send(
        &c,
        &s,
        reqwest::Method::POST,
        &format!("/v1/batches/{id}/cancel"),
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(st, 400, "{again}");

    let (st, ab) = send(
        &c,
        &s,
        reqwest::Method::POST,
        "/v1/messages/batches",
        Api::Anthropic,
        Some(json!({"requests": [
            {"custom_id": "a", "params": ant_body("one")},
            {"custom_id": "b", "params": ant_body("two")},
        ]})),
    )
    .await;
    assert_eq!(st, 200);
    let aid = ab["id"].as_str().unwrap();
    let (st, cb) = send(
        &c,
        &s,
        reqwest::Method::POST,
        &format!("/v1/messages/batches/{aid}/cancel"),
        Api::Anthropic,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(cb["processing_status"], "canceling");
    assert!(cb["cancel_initiated_at"].is_string());
    let (_, g) = send(
        &c,
        &s,
        reqwest::Method::GET,
        &format!("/v1/messages/batches/{aid}"),
        Api::Anthropic,
        None,
    )
    .await;
    assert_eq!(g["processing_status"], "ended");
    assert_eq!(g["request_counts"]["canceled"], 2);
    let (_, text) = get_text(&c, g["results_url"].as_str().unwrap(), Api::Anthropic).await;
    let res = lines(&text);
    assert_eq!(res.len(), 2);
    assert!(
        res.iter()
            .all(|l| l["result"] == json!({"type": "canceled"}))
    );
    let st = s.stats();
    assert_eq!(st.batches_cancelled, 2);
    assert_eq!(st.batch_items_failed, 7);
    assert_eq!(st.batch_items_succeeded, 0);
}

#[tokio::test]
async fn invalid_input_rejected() {
    let s = MockServer::start(MockConfig::new().api_key(KEY)).await;
    let c = client();
    let dup = jsonl(&[
        ("same-id".into(), oai_body("a")),
        ("other".into(), oai_body("b")),
        ("same-id".into(), oai_body("c")),
    ]);
    let (st, e) = upload(&c, &s, "batch", &dup).await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("same-id"),
        "{e}"
    );
    let (st, _) = upload(&c, &s, "fine-tune", &jsonl(&[("a".into(), oai_body("a"))])).await;
    assert_eq!(st, 400);
    let bad_url = json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}});
    let (st, _) = upload(&c, &s, "batch", &format!("{bad_url}\n")).await;
    assert_eq!(st, 400);
    let (st, _) = upload(&c, &s, "batch", "not json\n").await;
    assert_eq!(st, 400);

    let (st, f) = upload(&c, &s, "batch", &jsonl(&[("a".into(), oai_body("a"))])).await;
    assert_eq!(st, 200);
    assert_eq!(f["object"], "file");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["filename"], "input.jsonl");
    assert!(f["id"].as_str().unwrap().starts_with("file-"));
    assert_eq!(
        f["bytes"].as_u64().unwrap() as usize,
        jsonl(&[("a".into(), oai_body("a"))]).len()
    );
    for (body, want) in [
        (
            json!({"input_file_id": "file-999", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            404,
        ),
        (
            json!({"input_file_id": f["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            400,
        ),
        (
            json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
            400,
        ),
    ] {
        let (st, e) = send(
            &c,
            &s,
            reqwest::Method::POST,
            "/v1/batches",
            Api::OpenAi,
            Some(body),
        )
        .await;
        assert_eq!(st, want, "{e}");
    }
    let (st, _) = send(
        &c,
        &s,
        reqwest::Method::GET,
        "/v1/batches/batch_404",
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(st, 404);

    for (reqs, needle) in [
        (
            json!([{"custom_id": "ok", "params": ant_body("a")}, {"custom_id": "ok", "params": ant_body("b")}]),
            "ok",
        ),
        (
            json!([{"custom_id": "has space", "params": ant_body("a")}]),
            "has space",
        ),
        (
            json!([{"custom_id": "x".repeat(65), "params": ant_body("a")}]),
            "custom_id",
        ),
    ] {
        let (st, e) = send(
            &c,
            &s,
            reqwest::Method::POST,
            "/v1/messages/batches",
            Api::Anthropic,
            Some(json!({"requests": reqs})),
        )
        .await;
        assert_eq!(st, 400, "{e}");
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    assert_eq!(s.stats().batches_created, 0);
}

#[tokio::test]
async fn auth_enforced() {
    let s = MockServer::start(MockConfig::new().api_key(KEY)).await;
    let c = client();
    let (ct, body) = multipart("batch", &jsonl(&[("a".into(), oai_body("a"))]));
    let r = c
        .post(s.url("/v1/files"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let r = c
        .get(s.url("/v1/batches"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(s.url("/v1/messages/batches"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = c
        .post(s.url("/v1/messages/batches"))
        .header("x-api-key", "nope")
        .header("anthropic-version", "2023-06-01")
        .body(json!({"requests": [{"custom_id": "a", "params": ant_body("a")}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(s.stats().batches_created, 0);
    assert_eq!(s.stats().files_uploaded, 0);
}

#[tokio::test]
async fn set_batch_latency_finishes_pending_batch_and_lists() {
    let s = MockServer::start(
        MockConfig::new()
            .api_key(KEY)
            .batch_latency(Duration::from_secs(3600)),
    )
    .await;
    let c = client();
    let mut ids = Vec::new();
    for i in 0..3 {
        let b = create_oai(&c, &s, &[(format!("k{i}"), oai_body("hello"))]).await;
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    let (st, a) = send(
        &c,
        &s,
        reqwest::Method::POST,
        "/v1/messages/batches",
        Api::Anthropic,
        Some(json!({"requests": [{"custom_id": "z", "params": ant_body("hi")}]})),
    )
    .await;
    assert_eq!(st, 200);
    let aid = a["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/batches/{}", ids[0]);
    let (_, g) = send(&c, &s, reqwest::Method::GET, &path, Api::OpenAi, None).await;
    assert_eq!(g["status"], "validating");
    assert!(s.batches().iter().all(|b| b.ended.is_none()));

    // Listing: newest first, paginated with `after`.
    let (st, l) = send(
        &c,
        &s,
        reqwest::Method::GET,
        "/v1/batches?limit=2",
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(l["object"], "list");
    assert_eq!(l["has_more"], true);
    assert_eq!(l["first_id"], ids[2].as_str());
    assert_eq!(l["last_id"], ids[1].as_str());
    assert_eq!(l["data"].as_array().unwrap().len(), 2);
    let (_, l2) = send(
        &c,
        &s,
        reqwest::Method::GET,
        &format!("/v1/batches?limit=2&after={}", ids[1]),
        Api::OpenAi,
        None,
    )
    .await;
    assert_eq!(l2["has_more"], false);
    assert_eq!(l2["data"][0]["id"], ids[0].as_str());
    let (_, al) = send(
        &c,
        &s,
        reqwest::Method::GET,
        "/v1/messages/batches?limit=5",
        Api::Anthropic,
        None,
    )
    .await;
    assert_eq!(al["data"].as_array().unwrap().len(), 1);
    assert_eq!(al["first_id"], aid.as_str());
    assert_eq!(al["has_more"], false);

    s.set_batch_latency(Duration::ZERO);
    let (_, g) = send(&c, &s, reqwest::Method::GET, &path, Api::OpenAi, None).await;
    assert_eq!(g["status"], "completed");
    assert!(g["output_file_id"].is_string());
    let snaps = s.batches();
    assert_eq!(snaps.len(), 4);
    assert!(snaps.iter().all(|b| b.ended.is_some()));
    assert_eq!(snaps[3].status, "ended");
    assert_eq!(snaps[0].status, "completed");
    assert_eq!(snaps[0].custom_ids, vec!["k0".to_owned()]);
}

#[tokio::test]
async fn status_progression_and_large_batch() {
    let s = MockServer::start(
        MockConfig::new()
            .api_key(KEY)
            .record_requests(false)
            .batch_latency(Duration::from_millis(800)),
    )
    .await;
    let c = client();
    let items: Vec<(String, Value)> = (0..5000)
        .map(|i| {
            (
                format!("id-{i}"),
                oai_body(&format!("prompt {i} {}", "x".repeat(200))),
            )
        })
        .collect();
    let b = create_oai(&c, &s, &items).await;
    let id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(b["status"], "validating");
    let path = format!("/v1/batches/{id}");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, g) = send(&c, &s, reqwest::Method::GET, &path, Api::OpenAi, None).await;
        let st = g["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == "completed" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, ["validating", "in_progress", "completed"]);
    let snaps = s.batches();
    let (_, g) = send(&c, &s, reqwest::Method::GET, &path, Api::OpenAi, None).await;
    let (st, out) = get_text(
        &c,
        &s.url(&format!(
            "/v1/files/{}/content",
            g["output_file_id"].as_str().unwrap()
        )),
        Api::OpenAi,
    )
    .await;
    assert_eq!(st, 200);
    let ids: HashSet<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 5000);
    assert_eq!(snaps[0].custom_ids.len(), 5000);
    assert_eq!(snaps[0].custom_ids[17], "id-17");
}
