//! Provider batch APIs on the mock server: OpenAI files + batches (`/v1/files`, `/v1/batches`)
//! and Anthropic Message Batches (`/v1/messages/batches`), whose items are answered by the same
//! machinery as interactive requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::config::Api;
use crate::fault::{Fault, FaultEngine};
use crate::server::{
    Resp, Shared, answer, anthropic_error, bad_request, check_auth, context_length, finish,
    json_response, lock, openai_error, parse_view, prompt_tokens, raw_response, record_arrival,
    resp_json, status_fault, validate_view,
};

/// A provider batch as seen by tests ([`crate::MockServer::batches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSnapshot {
    /// `batch_<n>` (OpenAI) or `msgbatch_<n>` (Anthropic).
    pub id: String,
    /// The provider format of the batch.
    pub api: Api,
    /// The status as a GET would report it now: OpenAI `validating`, `in_progress`,
    /// `cancelling`, `completed`, `cancelled`; Anthropic `in_progress`, `canceling`, `ended`.
    pub status: String,
    /// The items' `custom_id`s, in input order.
    pub custom_ids: Vec<String>,
    /// When the batch was created.
    pub created: SystemTime,
    /// When it ended (its items were processed or cancelled); `None` while pending.
    pub ended: Option<SystemTime>,
}

/// One batch item: its id and its source bytes (an OpenAI JSONL line, sharing the stored file's
/// buffer, or the serialized Anthropic `params`).
struct Item {
    custom_id: Box<str>,
    source: Bytes,
}

struct StoredFile {
    id: String,
    filename: String,
    purpose: &'static str,
    created_at: u64,
    bytes: Bytes,
    /// The validated requests of a `batch` input file.
    items: Option<Arc<Vec<Item>>>,
}

struct Done {
    at: SystemTime,
    cancelled: bool,
    succeeded: u64,
    errored: u64,
    expired: u64,
    canceled: u64,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Anthropic results JSONL.
    results: Bytes,
}

pub(crate) struct Batch {
    id: String,
    num: u64,
    api: Api,
    created: Instant,
    created_at: SystemTime,
    input_file_id: String,
    metadata: Value,
    items: Arc<Vec<Item>>,
    cancel_at: Option<SystemTime>,
    done: Option<Done>,
}

#[derive(Default)]
struct Inner {
    next_file: u64,
    next_batch: u64,
    files: HashMap<String, Arc<StoredFile>>,
    batches: Vec<Arc<Mutex<Batch>>>,
    index: HashMap<String, usize>,
}

/// Stored files and batches of one server.
pub(crate) struct BatchStore {
    latency_nanos: AtomicU64,
    inner: Mutex<Inner>,
}

impl BatchStore {
    pub(crate) fn new(latency: Duration) -> Self {
        Self {
            latency_nanos: AtomicU64::new(latency.as_nanos().min(u64::MAX as u128) as u64),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_nanos.store(
            latency.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn all(&self) -> Vec<Arc<Mutex<Batch>>> {
        lock(&self.inner).batches.clone()
    }

    fn get(&self, id: &str, api: Api) -> Option<Arc<Mutex<Batch>>> {
        let inner = lock(&self.inner);
        let b = inner.batches.get(*inner.index.get(id)?)?.clone();
        drop(inner);
        let ok = lock(&b).api == api;
        ok.then_some(b)
    }

    fn file(&self, id: &str) -> Option<Arc<StoredFile>> {
        lock(&self.inner).files.get(id).cloned()
    }

    fn add_file(
        &self,
        filename: String,
        purpose: &'static str,
        bytes: Bytes,
        items: Option<Arc<Vec<Item>>>,
    ) -> Arc<StoredFile> {
        let mut inner = lock(&self.inner);
        inner.next_file += 1;
        let f = Arc::new(StoredFile {
            id: format!("file-{}", inner.next_file),
            filename,
            purpose,
            created_at: unix(SystemTime::now()),
            bytes,
            items,
        });
        inner.files.insert(f.id.clone(), f.clone());
        f
    }

    fn add_batch(
        &self,
        api: Api,
        input_file_id: String,
        metadata: Value,
        items: Arc<Vec<Item>>,
    ) -> Arc<Mutex<Batch>> {
        let mut inner = lock(&self.inner);
        inner.next_batch += 1;
        let num = inner.next_batch;
        let id = match api {
            Api::OpenAi => format!("batch_{num}"),
            Api::Anthropic => format!("msgbatch_{num}"),
        };
        let b = Arc::new(Mutex::new(Batch {
            id: id.clone(),
            num,
            api,
            created: Instant::now(),
            created_at: SystemTime::now(),
            input_file_id,
            metadata,
            items,
            cancel_at: None,
            done: None,
        }));
        let pos = inner.batches.len();
        inner.batches.push(b.clone());
        inner.index.insert(id, pos);
        b
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Routing

/// Serve a batch-API request; `None` when the path is not a batch-API path.
pub(crate) fn route(shared: &Shared, parts: &Parts, body: Bytes) -> Option<Resp> {
    let path = parts.uri.path();
    let p = path.strip_prefix("/v1").unwrap_or(path);
    let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
    let api = match segs.as_slice() {
        ["messages", "batches", ..] => Api::Anthropic,
        ["files", ..] | ["batches", ..] => Api::OpenAi,
        _ => return None,
    };
    let idx = record_arrival(shared, parts, api, None);
    let resp = match check_auth(shared, api, parts) {
        Some(r) => r,
        None if api == Api::Anthropic && !parts.headers.contains_key("anthropic-version") => {
            bad_request(api, "anthropic-version: header is required".into())
        }
        None => dispatch(shared, parts, api, &segs, body),
    };
    finish(shared, idx, Some(resp.status().as_u16()));
    Some(resp)
}

fn dispatch(shared: &Shared, parts: &Parts, api: Api, segs: &[&str], body: Bytes) -> Resp {
    let m = &parts.method;
    match (api, segs) {
        (Api::OpenAi, ["files"]) if m == Method::POST => upload_file(shared, parts, body),
        (Api::OpenAi, ["files", id]) if m == Method::GET => match shared.batches.file(id) {
            Some(f) => json_response(200, &file_object(&f)),
            None => no_such_file(id),
        },
        (Api::OpenAi, ["files", id, "content"]) if m == Method::GET => file_content(shared, id),
        (Api::OpenAi, ["batches"]) if m == Method::POST => create_openai(shared, &body),
        (Api::OpenAi, ["batches"]) if m == Method::GET => list(shared, parts, api),
        (Api::OpenAi, ["batches", id]) if m == Method::GET => get_batch(shared, api, id),
        (Api::OpenAi, ["batches", id, "cancel"]) if m == Method::POST => cancel(shared, api, id),
        (Api::Anthropic, ["messages", "batches"]) if m == Method::POST => {
            create_anthropic(shared, &body)
        }
        (Api::Anthropic, ["messages", "batches"]) if m == Method::GET => list(shared, parts, api),
        (Api::Anthropic, ["messages", "batches", id]) if m == Method::GET => {
            get_batch(shared, api, id)
        }
        (Api::Anthropic, ["messages", "batches", id, "cancel"]) if m == Method::POST => {
            cancel(shared, api, id)
        }
        (Api::Anthropic, ["messages", "batches", id, "results"]) if m == Method::GET => {
            anthropic_results(shared, id)
        }
        (Api::OpenAi, _) => openai_error(
            404,
            format!("Invalid URL ({} {})", parts.method, parts.uri.path()),
            "invalid_request_error",
            None,
            None,
        ),
        (Api::Anthropic, _) => anthropic_error(
            404,
            "not_found_error",
            format!("Not found: {} {}", parts.method, parts.uri.path()),
        ),
    }
}

fn query_param<'a>(parts: &'a Parts, key: &str) -> Option<&'a str> {
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn not_found(api: Api, id: &str) -> Resp {
    match api {
        Api::OpenAi => openai_error(
            404,
            format!("No batch found with id '{id}'."),
            "invalid_request_error",
            None,
            None,
        ),
        Api::Anthropic => anthropic_error(404, "not_found_error", format!("Batch {id} not found.")),
    }
}

fn no_such_file(id: &str) -> Resp {
    openai_error(
        404,
        format!("No such File object: {id}"),
        "invalid_request_error",
        None,
        Some("id"),
    )
}

// ---------------------------------------------------------------------------------------------
// OpenAI files

struct Part {
    name: String,
    filename: Option<String>,
    data: Bytes,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let j = i + off;
        if &hay[j..j + needle.len()] == needle {
            return Some(j);
        }
        i = j + 1;
    }
    None
}

fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
}

fn parse_multipart(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or("multipart body has no boundary")?;
    let mut parts = Vec::new();
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        let head_end = find(body, b"\r\n\r\n", after).ok_or("multipart part without headers")?;
        let head = String::from_utf8_lossy(&body[after..head_end]);
        let start = head_end + 4;
        let end = find(body, next_delim.as_bytes(), start)
            .ok_or("multipart body has no closing boundary")?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in v.split(';') {
                if let Some((pk, pv)) = param.split_once('=') {
                    let pv = pv.trim().trim_matches('"').to_owned();
                    match pk.trim() {
                        "name" => name = Some(pv),
                        "filename" => filename = Some(pv),
                        _ => {}
                    }
                }
            }
        }
        parts.push(Part {
            name: name.unwrap_or_default(),
            filename,
            data: body.slice(start..end),
        });
        pos = end + 2;
    }
}

fn upload_error(msg: String, param: &str) -> Resp {
    openai_error(400, msg, "invalid_request_error", None, Some(param))
}

/// Validate an OpenAI batch input file; the items share `data`'s buffer.
fn index_openai_lines(data: &Bytes) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut seen: HashSet<Box<str>> = HashSet::new();
    let mut start = 0;
    let mut lineno = 0;
    while start < data.len() {
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| start + i);
        let mut line_end = end;
        if line_end > start && data[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        lineno += 1;
        let line = &data[start..line_end];
        let next = end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            start = next;
            continue;
        }
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| format!("Line {lineno} is not valid JSON: {e}"))?;
        let Some(id) = v.get("custom_id").and_then(Value::as_str) else {
            return Err(format!("Line {lineno}: 'custom_id' must be a string."));
        };
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(format!("Line {lineno}: 'method' must be 'POST'."));
        }
        if v.get("url").and_then(Value::as_str) != Some("/v1/chat/completions") {
            return Err(format!(
                "Line {lineno}: 'url' must be '/v1/chat/completions' (the batch endpoint)."
            ));
        }
        if !v.get("body").is_some_and(Value::is_object) {
            return Err(format!("Line {lineno}: 'body' must be an object."));
        }
        let id: Box<str> = id.into();
        if !seen.insert(id.clone()) {
            return Err(format!(
                "Duplicate custom_id '{id}' on line {lineno}: custom_id values must be unique within a batch."
            ));
        }
        items.push(Item {
            custom_id: id,
            source: data.slice(start..line_end),
        });
        start = next;
    }
    if items.is_empty() {
        return Err("The batch input file contains no requests.".into());
    }
    Ok(items)
}

fn upload_file(shared: &Shared, parts: &Parts, body: Bytes) -> Resp {
    let ct = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(b) = boundary(ct) else {
        return upload_error(
            "Expected a multipart/form-data body with a boundary.".into(),
            "file",
        );
    };
    let form = match parse_multipart(&body, &b) {
        Ok(f) => f,
        Err(e) => return upload_error(e, "file"),
    };
    let purpose = form
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(&p.data).trim().to_owned());
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return upload_error(
                format!("Invalid purpose '{other}': this mock server accepts only 'batch'."),
                "purpose",
            );
        }
        None => return upload_error("Missing required parameter: 'purpose'.".into(), "purpose"),
    }
    let Some(file) = form.into_iter().find(|p| p.name == "file") else {
        return upload_error("Missing required parameter: 'file'.".into(), "file");
    };
    let items = match index_openai_lines(&file.data) {
        Ok(i) => i,
        Err(e) => return upload_error(e, "file"),
    };
    let f = shared.batches.add_file(
        file.filename.unwrap_or_else(|| "upload.jsonl".into()),
        "batch",
        file.data,
        Some(Arc::new(items)),
    );
    lock(&shared.rec).stats.files_uploaded += 1;
    json_response(200, &file_object(&f))
}

fn file_object(f: &StoredFile) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes.len(),
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
    })
}

fn file_content(shared: &Shared, id: &str) -> Resp {
    let Some(f) = shared.batches.file(id) else {
        return no_such_file(id);
    };
    if f.purpose == "batch_output" {
        lock(&shared.rec).stats.result_downloads += 1;
    }
    let mut r = raw_response(200, f.bytes.clone());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Creating, reading, listing and cancelling batches

fn create_openai(shared: &Shared, body: &[u8]) -> Resp {
    let err = |msg: String, param: &str| {
        openai_error(400, msg, "invalid_request_error", None, Some(param))
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad_request(
            Api::OpenAi,
            "We could not parse the JSON body of your request.".into(),
        );
    };
    let Some(file_id) = v.get("input_file_id").and_then(Value::as_str) else {
        return err(
            "Missing required parameter: 'input_file_id'.".into(),
            "input_file_id",
        );
    };
    match v.get("endpoint").and_then(Value::as_str) {
        Some("/v1/chat/completions") => {}
        other => {
            return err(
                format!(
                    "Invalid endpoint {}: this mock server supports only '/v1/chat/completions'.",
                    other.map_or("(missing)".to_owned(), |s| format!("'{s}'"))
                ),
                "endpoint",
            );
        }
    }
    if v.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return err(
            "Invalid completion_window: only '24h' is supported.".into(),
            "completion_window",
        );
    }
    let metadata = match v.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Value::Object(m.clone()),
        Some(_) => {
            return err(
                "Invalid metadata: expected an object of string values.".into(),
                "metadata",
            );
        }
    };
    let Some(file) = shared.batches.file(file_id) else {
        return openai_error(
            404,
            format!("No file found with id '{file_id}'."),
            "invalid_request_error",
            None,
            Some("input_file_id"),
        );
    };
    let Some(items) = file.items.clone() else {
        return err(
            format!("File '{file_id}' is not a batch input file (purpose 'batch')."),
            "input_file_id",
        );
    };
    let b = shared
        .batches
        .add_batch(Api::OpenAi, file_id.to_owned(), metadata, items);
    lock(&shared.rec).stats.batches_created += 1;
    let lat = shared.batches.latency();
    let obj = openai_object(shared, &lock(&b), lat);
    json_response(200, &obj)
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn create_anthropic(shared: &Shared, body: &[u8]) -> Resp {
    let api = Api::Anthropic;
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad_request(api, "Request body is not valid JSON.".into());
    };
    let Some(reqs) = v.get("requests").and_then(Value::as_array) else {
        return bad_request(api, "requests: Field required".into());
    };
    if reqs.is_empty() {
        return bad_request(api, "requests: List should have at least 1 item".into());
    }
    let mut items = Vec::with_capacity(reqs.len());
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, r) in reqs.iter().enumerate() {
        let Some(id) = r.get("custom_id").and_then(Value::as_str) else {
            return bad_request(api, format!("requests.{i}.custom_id: Field required"));
        };
        if !valid_custom_id(id) {
            return bad_request(
                api,
                format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' (got '{id}')"
                ),
            );
        }
        if !seen.insert(id) {
            return bad_request(
                api,
                format!(
                    "requests.{i}: Duplicate custom_id '{id}'; custom_id must be unique within a batch."
                ),
            );
        }
        let Some(params) = r.get("params").filter(|p| p.is_object()) else {
            return bad_request(api, format!("requests.{i}.params: Field required"));
        };
        items.push(Item {
            custom_id: id.into(),
            source: Bytes::from(serde_json::to_vec(params).unwrap_or_default()),
        });
    }
    let b = shared
        .batches
        .add_batch(api, String::new(), Value::Null, Arc::new(items));
    lock(&shared.rec).stats.batches_created += 1;
    let lat = shared.batches.latency();
    let obj = anthropic_object(shared, &lock(&b), lat);
    json_response(200, &obj)
}

fn object(shared: &Shared, b: &Batch, lat: Duration) -> Value {
    match b.api {
        Api::OpenAi => openai_object(shared, b, lat),
        Api::Anthropic => anthropic_object(shared, b, lat),
    }
}

fn get_batch(shared: &Shared, api: Api, id: &str) -> Resp {
    let Some(b) = shared.batches.get(id, api) else {
        return not_found(api, id);
    };
    lock(&shared.rec).stats.batch_polls += 1;
    let mut b = lock(&b);
    advance(shared, &mut b);
    json_response(200, &object(shared, &b, shared.batches.latency()))
}

fn cancel(shared: &Shared, api: Api, id: &str) -> Resp {
    let Some(b) = shared.batches.get(id, api) else {
        return not_found(api, id);
    };
    let mut b = lock(&b);
    advance(shared, &mut b);
    if b.done.is_some() {
        let st = status(&b, shared.batches.latency());
        return match api {
            Api::OpenAi => openai_error(
                400,
                format!("Cannot cancel a batch with status '{st}'."),
                "invalid_request_error",
                None,
                None,
            ),
            Api::Anthropic => bad_request(
                api,
                format!("Batch {id} has already ended and cannot be canceled."),
            ),
        };
    }
    if b.cancel_at.is_none() {
        b.cancel_at = Some(SystemTime::now());
        lock(&shared.rec).stats.batches_cancelled += 1;
    }
    json_response(200, &object(shared, &b, shared.batches.latency()))
}

fn list(shared: &Shared, parts: &Parts, api: Api) -> Resp {
    let limit = query_param(parts, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let after = match api {
        Api::OpenAi => query_param(parts, "after"),
        Api::Anthropic => query_param(parts, "after_id"),
    };
    let lat = shared.batches.latency();
    let all = shared.batches.all();
    let mut newest_first: Vec<_> = all.iter().rev().filter(|b| lock(b).api == api).collect();
    if let Some(after) = after {
        match newest_first.iter().position(|b| lock(b).id == after) {
            Some(i) => {
                newest_first.drain(..=i);
            }
            None => newest_first.clear(),
        }
    }
    let has_more = newest_first.len() > limit;
    let data: Vec<Value> = newest_first
        .into_iter()
        .take(limit)
        .map(|b| {
            let mut b = lock(b);
            advance(shared, &mut b);
            object(shared, &b, lat)
        })
        .collect();
    let first_id = data.first().map_or(Value::Null, |v| v["id"].clone());
    let last_id = data.last().map_or(Value::Null, |v| v["id"].clone());
    let body = match api {
        Api::OpenAi => json!({
            "object": "list", "data": data, "first_id": first_id, "last_id": last_id,
            "has_more": has_more,
        }),
        Api::Anthropic => json!({
            "data": data, "has_more": has_more, "first_id": first_id, "last_id": last_id,
        }),
    };
    json_response(200, &body)
}

fn anthropic_results(shared: &Shared, id: &str) -> Resp {
    let Some(b) = shared.batches.get(id, Api::Anthropic) else {
        return not_found(Api::Anthropic, id);
    };
    let mut b = lock(&b);
    advance(shared, &mut b);
    let Some(done) = &b.done else {
        return anthropic_error(
            404,
            "not_found_error",
            format!("Batch {id} has not ended yet; results are not available."),
        );
    };
    let bytes = done.results.clone();
    drop(b);
    lock(&shared.rec).stats.result_downloads += 1;
    let mut r = raw_response(200, bytes);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    r
}

/// Snapshots of all batches, oldest first (finishing those that are due).
pub(crate) fn snapshots(shared: &Shared) -> Vec<BatchSnapshot> {
    let lat = shared.batches.latency();
    shared
        .batches
        .all()
        .iter()
        .map(|b| {
            let mut b = lock(b);
            advance(shared, &mut b);
            BatchSnapshot {
                id: b.id.clone(),
                api: b.api,
                status: status(&b, lat).to_owned(),
                custom_ids: b.items.iter().map(|i| i.custom_id.to_string()).collect(),
                created: b.created_at,
                ended: b.done.as_ref().map(|d| d.at),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Status and batch objects

fn status(b: &Batch, lat: Duration) -> &'static str {
    match (b.api, &b.done, b.cancel_at) {
        (Api::OpenAi, Some(d), _) if d.cancelled => "cancelled",
        (Api::OpenAi, Some(_), _) => "completed",
        (Api::OpenAi, None, Some(_)) => "cancelling",
        (Api::OpenAi, None, None) if b.created.elapsed() < lat / 4 => "validating",
        (Api::OpenAi, None, None) => "in_progress",
        (Api::Anthropic, Some(_), _) => "ended",
        (Api::Anthropic, None, Some(_)) => "canceling",
        (Api::Anthropic, None, None) => "in_progress",
    }
}

/// Finish the batch if it is due: cancelled when a cancel was requested, processed when its
/// latency has elapsed.
fn advance(shared: &Shared, b: &mut Batch) {
    if b.done.is_some() {
        return;
    }
    if b.cancel_at.is_some() {
        process(shared, b, true);
    } else if b.created.elapsed() >= shared.batches.latency() {
        process(shared, b, false);
    }
}

fn openai_object(_shared: &Shared, b: &Batch, lat: Duration) -> Value {
    let st = status(b, lat);
    let created = unix(b.created_at);
    let reference = b
        .cancel_at
        .or(b.done.as_ref().map(|d| d.at))
        .unwrap_or_else(SystemTime::now);
    let started = b.created_at + lat / 4;
    let in_progress_at = (st != "validating" && reference >= started).then(|| unix(started));
    let total = b.items.len() as u64;
    let (completed, failed) = b.done.as_ref().map_or((0, 0), |d| {
        (d.succeeded, d.errored + d.expired + d.canceled)
    });
    let done = b.done.as_ref();
    let finished_ok = done.filter(|d| !d.cancelled).map(|d| unix(d.at));
    let cancelled_at = done.filter(|d| d.cancelled).map(|d| unix(d.at));
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": null,
        "input_file_id": b.input_file_id,
        "completion_window": "24h",
        "status": st,
        "output_file_id": done.and_then(|d| d.output_file_id.clone()),
        "error_file_id": done.and_then(|d| d.error_file_id.clone()),
        "created_at": created,
        "in_progress_at": in_progress_at,
        "expires_at": created + 86_400,
        "finalizing_at": finished_ok,
        "completed_at": finished_ok,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": b.cancel_at.map(unix),
        "cancelled_at": cancelled_at,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": b.metadata,
    })
}

fn anthropic_object(shared: &Shared, b: &Batch, lat: Duration) -> Value {
    let st = status(b, lat);
    let counts = match &b.done {
        Some(d) => json!({
            "processing": 0, "succeeded": d.succeeded, "errored": d.errored,
            "canceled": d.canceled, "expired": d.expired,
        }),
        None => json!({
            "processing": b.items.len(), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0,
        }),
    };
    let results_url = b.done.as_ref().map(|_| {
        format!(
            "http://{}/v1/messages/batches/{}/results",
            shared.addr, b.id
        )
    });
    json!({
        "id": b.id,
        "type": "message_batch",
        "processing_status": st,
        "request_counts": counts,
        "ended_at": b.done.as_ref().map(|d| rfc3339(d.at)),
        "created_at": rfc3339(b.created_at),
        "expires_at": rfc3339(b.created_at + Duration::from_secs(86_400)),
        "cancel_initiated_at": b.cancel_at.map(rfc3339),
        "archived_at": null,
        "results_url": results_url,
    })
}

// ---------------------------------------------------------------------------------------------
// Processing

enum Outcome {
    Succeeded(Value),
    Errored(u16, Value),
    Expired,
    Canceled,
}

/// Answer one item like an interactive request of its format would be answered.
fn answer_item(shared: &Shared, faults: &mut FaultEngine, b: &Batch, i: usize) -> Outcome {
    let api = b.api;
    let item = &b.items[i];
    let raw = match serde_json::from_slice::<Value>(&item.source) {
        Ok(Value::Object(mut o)) => match api {
            Api::OpenAi => o.remove("body").unwrap_or(Value::Null),
            Api::Anthropic => Value::Object(o),
        },
        _ => Value::Null,
    };
    if !raw.is_object() {
        let (code, body) = resp_json(bad_request(
            api,
            "We could not parse the JSON body of your request.".into(),
        ));
        return Outcome::Errored(code, body);
    }
    let view = parse_view(api, raw);
    let fault = faults.decide(view.last_user());
    let err = |r: Resp| {
        let (code, body) = resp_json(r);
        Outcome::Errored(code, body)
    };
    match fault {
        Some(Fault::Expire) => return Outcome::Expired,
        Some(Fault::Status(code)) => {
            return err(status_fault(
                shared,
                api,
                code,
                Duration::from_secs(1),
                Some(&view),
            ));
        }
        Some(Fault::RateLimited { retry_after }) => {
            return err(status_fault(shared, api, 429, retry_after, Some(&view)));
        }
        Some(Fault::ContextLength) => return err(context_length(api, prompt_tokens(&view))),
        Some(
            Fault::ResetConnection
            | Fault::CloseMidBody
            | Fault::TruncatedJson
            | Fault::InvalidJson,
        ) => {
            return err(status_fault(
                shared,
                api,
                500,
                Duration::from_secs(1),
                Some(&view),
            ));
        }
        Some(Fault::Delay(_)) | None => {}
    }
    if let Some(r) = validate_view(shared, api, &view) {
        return err(r);
    }
    let id = match api {
        Api::OpenAi => format!("chatcmpl-batch{}-{i}", b.num),
        Api::Anthropic => format!("msg_batch{}_{i:08}", b.num),
    };
    Outcome::Succeeded(answer(shared, api, &view, &id))
}

fn result_line(b: &Batch, i: usize, outcome: Outcome) -> Value {
    let custom_id = &*b.items[i].custom_id;
    match b.api {
        Api::OpenAi => {
            let id = format!("batch_req_mock{}_{i}", b.num);
            let request_id = format!("req_mock{}x{i}", b.num);
            let failed = |code: &str, message: &str| {
                json!({"id": id, "custom_id": custom_id, "response": null,
                    "error": {"code": code, "message": message}})
            };
            match outcome {
                Outcome::Succeeded(body) => json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": 200, "request_id": request_id, "body": body},
                    "error": null}),
                Outcome::Errored(code, body) => json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": code, "request_id": request_id, "body": body},
                    "error": null}),
                Outcome::Expired => failed(
                    "batch_expired",
                    "This request could not be executed before the completion window of 24h expired.",
                ),
                Outcome::Canceled => failed(
                    "batch_cancelled",
                    "This request was not executed because the batch was cancelled.",
                ),
            }
        }
        Api::Anthropic => {
            let result = match outcome {
                Outcome::Succeeded(message) => json!({"type": "succeeded", "message": message}),
                Outcome::Errored(_, error) => json!({"type": "errored", "error": error}),
                Outcome::Expired => json!({"type": "expired"}),
                Outcome::Canceled => json!({"type": "canceled"}),
            };
            json!({"custom_id": custom_id, "result": result})
        }
    }
}

/// The order results are listed in: shuffled (seeded by the config seed and batch number),
/// never the input order, unless shuffling is off.
fn result_order(shared: &Shared, num: u64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shared.cfg.batch_shuffle && n > 1 {
        let mut rng = StdRng::seed_from_u64(shared.cfg.seed.wrapping_add(num));
        v.shuffle(&mut rng);
        if v.iter().enumerate().all(|(i, &x)| i == x) {
            v.rotate_left(1);
        }
    }
    v
}

/// Answer (or cancel) every item and store the results.
fn process(shared: &Shared, b: &mut Batch, cancelled: bool) {
    let n = b.items.len();
    // Lines in input order in one buffer (the fault plan is consulted in input order), then
    // copied out in result order.
    let mut buf: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(n);
    let (mut succeeded, mut errored, mut expired, mut canceled) = (0u64, 0u64, 0u64, 0u64);
    {
        let mut faults = (!cancelled).then(|| lock(&shared.faults));
        for i in 0..n {
            let outcome = match faults.as_deref_mut() {
                Some(f) => answer_item(shared, f, b, i),
                None => Outcome::Canceled,
            };
            let ok = match &outcome {
                Outcome::Succeeded(_) => {
                    succeeded += 1;
                    true
                }
                Outcome::Errored(..) => {
                    errored += 1;
                    false
                }
                Outcome::Expired => {
                    expired += 1;
                    false
                }
                Outcome::Canceled => {
                    canceled += 1;
                    false
                }
            };
            let start = buf.len();
            let _ = serde_json::to_writer(&mut buf, &result_line(b, i, outcome));
            buf.push(b'\n');
            spans.push((start, buf.len(), ok));
        }
    }
    let order = result_order(shared, b.num, n);
    let mut done = Done {
        at: SystemTime::now(),
        cancelled,
        succeeded,
        errored,
        expired,
        canceled,
        output_file_id: None,
        error_file_id: None,
        results: Bytes::new(),
    };
    match b.api {
        Api::OpenAi => {
            let mut out = Vec::new();
            let mut err = Vec::new();
            for &i in &order {
                let (s, e, ok) = spans[i];
                if ok { &mut out } else { &mut err }.extend_from_slice(&buf[s..e]);
            }
            drop(buf);
            if succeeded > 0 {
                let f = shared.batches.add_file(
                    format!("{}_output.jsonl", b.id),
                    "batch_output",
                    Bytes::from(out),
                    None,
                );
                done.output_file_id = Some(f.id.clone());
            }
            if succeeded < n as u64 {
                let f = shared.batches.add_file(
                    format!("{}_error.jsonl", b.id),
                    "batch_output",
                    Bytes::from(err),
                    None,
                );
                done.error_file_id = Some(f.id.clone());
            }
        }
        Api::Anthropic => {
            let mut out = Vec::with_capacity(buf.len());
            for &i in &order {
                let (s, e, _) = spans[i];
                out.extend_from_slice(&buf[s..e]);
            }
            done.results = Bytes::from(out);
        }
    }
    b.done = Some(done);
    let mut rec = lock(&shared.rec);
    rec.stats.batch_items_succeeded += succeeded;
    rec.stats.batch_items_failed += errored + expired + canceled;
}
