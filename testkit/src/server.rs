//! The hyper-based mock server: connection handling, request pipeline and observation API.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::batch::{self, BatchSnapshot, BatchStore};
use crate::config::{Api, ChatMessage, ChatView, MockConfig};
use crate::fault::{Fault, FaultEngine, FaultPlan};
use crate::limiter::{Admit, Limiter};
use crate::stats::{RecordedRequest, Recorder, Stats, max_in_any_window, per_second_histogram};

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The listening socket could not be bound (the port is taken, or not allowed).
    #[error("cannot bind 127.0.0.1:{port}: {source}")]
    Bind {
        /// The port asked for (0: any free port).
        port: u16,
        /// The error binding it.
        #[source]
        source: std::io::Error,
    },
}

/// A running mock LLM server on 127.0.0.1. Stops when dropped or on [`MockServer::shutdown`].
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    pub(crate) cfg: MockConfig,
    /// The bound address (for URLs the server hands out, like a batch's `results_url`).
    pub(crate) addr: SocketAddr,
    start: Instant,
    pub(crate) rec: Mutex<Recorder>,
    pub(crate) faults: Mutex<FaultEngine>,
    /// Stored files and provider batches.
    pub(crate) batches: BatchStore,
    limiter: Mutex<Limiter>,
    rng: Mutex<StdRng>,
    /// `MockConfig::max_in_flight` slots (requests beyond them queue).
    slots: Option<Semaphore>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    open_conns: AtomicUsize,
    max_conns: AtomicUsize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MockServer {
    /// Start the server; panics if 127.0.0.1 cannot be bound (use [`MockServer::try_start`]).
    pub async fn start(config: MockConfig) -> MockServer {
        match Self::try_start(config).await {
            Ok(s) => s,
            Err(e) => panic!("testkit::MockServer::start: {e}"),
        }
    }

    /// Start the server, returning bind errors.
    pub async fn try_start(mut config: MockConfig) -> Result<MockServer, MockError> {
        let port = config.port;
        let bind_err = |source| MockError::Bind { port, source };
        let socket = TcpSocket::new_v4().map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(bind_err)?;
        let listener = socket.listen(4096).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;

        let start = Instant::now();
        let plan = std::mem::take(&mut config.faults);
        let shared = Arc::new(Shared {
            addr,
            batches: BatchStore::new(config.batch_latency),
            start,
            rec: Mutex::new(Recorder::new(start)),
            faults: Mutex::new(FaultEngine::new(plan)),
            limiter: Mutex::new(Limiter::new(config.rpm, config.tpm, config.rate_window)),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            slots: config.max_in_flight.map(|n| Semaphore::new(n.max(1))),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            open_conns: AtomicUsize::new(0),
            max_conns: AtomicUsize::new(0),
            cfg: config,
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(MockServer {
            addr,
            shared,
            shutdown: tx,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The address the server listens on (127.0.0.1 and the bound port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port (the one chosen when 0 was asked for).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stop accepting and close all connections.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Counter snapshot.
    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.shared.rec).stats.clone();
        s.in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        s.max_in_flight = self.shared.max_in_flight.load(Ordering::Relaxed);
        s.max_connections = self.shared.max_conns.load(Ordering::Relaxed);
        s.elapsed_secs = self.shared.start.elapsed().as_secs_f64();
        s
    }

    /// Log of received requests (empty if `record_requests` is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.rec).log.clone()
    }

    /// How many received requests had exactly this last user message.
    pub fn prompt_count(&self, prompt: &str) -> u64 {
        lock(&self.shared.rec).stats.prompt_count(prompt)
    }

    /// Requests currently being handled.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Highest concurrency observed.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    /// Arrival times (relative to server start) of all received requests.
    pub fn received_times(&self) -> Vec<Duration> {
        lock(&self.shared.rec).received_times.clone()
    }

    /// Admission times (relative to server start) of accepted requests.
    pub fn accepted_times(&self) -> Vec<Duration> {
        lock(&self.shared.rec).accepted_times.clone()
    }

    /// Max number of *received* requests within any window `[t, t + window)`.
    pub fn max_requests_in_any_window(&self, window: Duration) -> usize {
        max_in_any_window(&lock(&self.shared.rec).received_times, window)
    }

    /// Max number of *accepted* requests within any window `[t, t + window)`.
    pub fn max_accepted_in_any_window(&self, window: Duration) -> usize {
        max_in_any_window(&lock(&self.shared.rec).accepted_times, window)
    }

    /// Received requests per whole second since start.
    pub fn received_per_second(&self) -> Vec<u64> {
        per_second_histogram(&lock(&self.shared.rec).received_times)
    }

    /// Accepted requests per whole second since start.
    pub fn accepted_per_second(&self) -> Vec<u64> {
        per_second_histogram(&lock(&self.shared.rec).accepted_times)
    }

    /// Replace the fault plan; `nth` indices count from now.
    pub fn set_fault_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.faults) = FaultEngine::new(plan);
    }

    /// Change the time from a batch's creation until it ends; applies to existing batches too
    /// (still measured from their creation), so a pending batch can be made due at once.
    pub fn set_batch_latency(&self, latency: Duration) {
        self.shared.batches.set_latency(latency);
    }

    /// All provider batches (both formats), oldest first, with their status as a GET would
    /// report it now (computing it finishes batches that are due, like a GET does).
    pub fn batches(&self) -> Vec<BatchSnapshot> {
        batch::snapshots(&self.shared)
    }

    /// Clear counters, timestamps and the log (limiter state is kept).
    pub fn reset_stats(&self) {
        lock(&self.shared.rec).reset();
        self.shared.max_in_flight.store(
            self.shared.in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Wait until at least `n` requests were received; false on timeout.
    pub async fn wait_for_received(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.shared.rec).stats.received >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. EMFILE: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream, shared.clone(), shutdown.clone()));
    }
}

struct ConnCtx {
    kill: Notify,
}

struct ConnGuard<'a>(&'a Shared);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.open_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let open = shared.open_conns.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_conns.fetch_max(open, Ordering::Relaxed);
    lock(&shared.rec).stats.connections += 1;
    let _guard = ConnGuard(&shared);

    let fd: RawFd = stream.as_raw_fd();
    let ctx = Arc::new(ConnCtx {
        kill: Notify::new(),
    });
    let svc = {
        let shared = shared.clone();
        let ctx = ctx.clone();
        service_fn(move |req| handle(shared.clone(), ctx.clone(), req))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        _ = ctx.kill.notified() => {
            // SAFETY: `conn` owns the stream and is alive until the end of this function,
            // so `fd` is still open here.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&bfd).set_linger(Some(Duration::ZERO));
        }
        _ = shutdown.changed() => {}
        _ = conn.as_mut() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Response body

/// Response body: a full buffer, or a buffer cut short followed by a connection abort.
pub struct MockBody {
    data: Option<Bytes>,
    declared: u64,
    cut: Option<Pin<Box<Sleep>>>,
}

impl MockBody {
    fn full(b: impl Into<Bytes>) -> Self {
        let data: Bytes = b.into();
        Self {
            declared: data.len() as u64,
            data: Some(data),
            cut: None,
        }
    }

    fn cut(full: Bytes) -> Self {
        let declared = full.len() as u64;
        let half = full.slice(..full.len() / 2);
        Self {
            data: Some(half),
            declared,
            cut: Some(Box::pin(tokio::time::sleep(Duration::from_millis(20)))),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        match self.cut.as_mut() {
            None => Poll::Ready(None),
            Some(s) => match s.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "mock: closing mid-body",
                )))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.cut.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

// ---------------------------------------------------------------------------------------------
// Request pipeline

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(s: &'a Shared) -> Self {
        let n = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        s.max_in_flight.fetch_max(n, Ordering::Relaxed);
        Self(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) type Resp = Response<MockBody>;

/// (request limit, remaining requests, token limit, remaining tokens, reset).
type LimitHeaders = (
    Option<usize>,
    Option<usize>,
    Option<u64>,
    Option<u64>,
    Duration,
);

pub(crate) fn json_response(status: u16, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    raw_response(status, Bytes::from(bytes))
}

pub(crate) fn raw_response(status: u16, body: Bytes) -> Resp {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn set_header(r: &mut Resp, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                let t = p.get("text").and_then(Value::as_str).or_else(|| p.as_str());
                if let Some(t) = t {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(t);
                }
            }
            out
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn parse_view(api: Api, raw: Value) -> ChatView {
    let model = raw
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let messages = raw
        .get("messages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| ChatMessage {
                    role: m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    content: m.get("content").map(content_text).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let system = match api {
        Api::Anthropic => raw.get("system").map(content_text),
        Api::OpenAi => None,
    };
    let max_tokens = raw
        .get("max_tokens")
        .or_else(|| raw.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    let stop_v = match api {
        Api::OpenAi => raw.get("stop"),
        Api::Anthropic => raw.get("stop_sequences"),
    };
    let stop = match stop_v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    ChatView {
        api,
        model,
        system,
        messages,
        temperature: raw.get("temperature").and_then(Value::as_f64),
        top_p: raw.get("top_p").and_then(Value::as_f64),
        max_tokens,
        stop,
        seed: raw.get("seed").and_then(Value::as_i64),
        raw,
    }
}

pub(crate) fn prompt_tokens(view: &ChatView) -> u64 {
    let mut chars = view.system.as_deref().map_or(0, |s| s.chars().count());
    for m in &view.messages {
        chars += m.content.chars().count();
    }
    (chars as u64).div_ceil(4).max(1)
}

pub(crate) enum Finish {
    Stop,
    Length,
    StopSequence(String),
}

fn shape_reply(full: String, view: &ChatView) -> (String, Finish, u64) {
    let mut text = full;
    let mut finish = Finish::Stop;
    let earliest = view
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
        .min_by_key(|(i, _)| *i);
    if let Some((i, s)) = earliest {
        let s = s.clone();
        text.truncate(i);
        finish = Finish::StopSequence(s);
    }
    let mut words = text.split_whitespace().count() as u64;
    if let Some(max) = view.max_tokens
        && words > max
    {
        text = text
            .split_whitespace()
            .take(max as usize)
            .collect::<Vec<_>>()
            .join(" ");
        words = max;
        finish = Finish::Length;
    }
    (text, finish, words)
}

fn header_map_pairs(h: &hyper::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let _inflight = InFlight::new(&shared);
    let (parts, body) = req.into_parts();
    let api = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => Some(Api::OpenAi),
        (&Method::POST, "/v1/messages" | "/messages") => Some(Api::Anthropic),
        _ => None,
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let Some(api) = api else {
        if let Some(resp) = batch::route(&shared, &parts, body) {
            return Ok(resp);
        }
        let resp = other_route(&shared, &parts);
        let status = resp.status().as_u16();
        let idx = record_arrival(&shared, &parts, Api::OpenAi, None);
        finish(&shared, idx, Some(status));
        return Ok(resp);
    };

    let raw: Option<Value> = serde_json::from_slice(&body).ok();
    let view = raw.map(|r| parse_view(api, r));
    let idx = record_arrival(&shared, &parts, api, view.as_ref());
    // Queue for a slot when the server serves a limited number at once.
    let _slot = match &shared.slots {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    let fault = lock(&shared.faults).decide(view.as_ref().and_then(|v| v.last_user()));
    if let Some(f) = &fault {
        {
            let mut rec = lock(&shared.rec);
            rec.stats.faults_injected += 1;
            if let Some(e) = rec.log.get_mut(idx as usize) {
                e.fault = Some(f.clone());
            }
        }
        match f {
            Fault::Delay(d) => tokio::time::sleep(*d).await,
            Fault::ResetConnection => {
                lock(&shared.rec).stats.resets += 1;
                ctx.kill.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::Status(code) => {
                let resp = status_fault(&shared, api, *code, Duration::from_secs(1), view.as_ref());
                finish(&shared, idx, Some(*code));
                return Ok(resp);
            }
            Fault::RateLimited { retry_after } => {
                let resp = status_fault(&shared, api, 429, *retry_after, view.as_ref());
                finish(&shared, idx, Some(429));
                return Ok(resp);
            }
            Fault::ContextLength => {
                let tokens = view.as_ref().map_or(0, prompt_tokens);
                let resp = context_length(api, tokens);
                finish(&shared, idx, Some(400));
                return Ok(resp);
            }
            Fault::Expire => {
                let resp = status_fault(&shared, api, 504, Duration::from_secs(1), view.as_ref());
                finish(&shared, idx, Some(504));
                return Ok(resp);
            }
            Fault::InvalidJson => {
                finish(&shared, idx, Some(200));
                return Ok(raw_response(200, Bytes::from_static(b"not json")));
            }
            Fault::TruncatedJson | Fault::CloseMidBody => {}
        }
    }

    let resp = serve(&shared, api, &parts, view, idx, fault.as_ref()).await;
    Ok(resp)
}

fn other_route(shared: &Shared, parts: &hyper::http::request::Parts) -> Resp {
    if parts.method == Method::GET && matches!(parts.uri.path(), "/v1/models" | "/models") {
        let models = shared
            .cfg
            .models
            .clone()
            .unwrap_or_else(|| vec!["mock-model".into()]);
        let data: Vec<Value> = models
            .iter()
            .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "testkit"}))
            .collect();
        return json_response(200, &json!({"object": "list", "data": data}));
    }
    if parts.method == Method::GET && parts.uri.path() == "/health" {
        return json_response(200, &json!({"status": "ok"}));
    }
    json_response(
        404,
        &json!({"error": {
            "message": format!("Invalid URL ({} {})", parts.method, parts.uri.path()),
            "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

pub(crate) fn record_arrival(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    api: Api,
    view: Option<&ChatView>,
) -> u64 {
    let mut rec = lock(&shared.rec);
    let at = rec.start.elapsed();
    let index = rec.stats.received;
    rec.stats.received += 1;
    rec.received_times.push(at);
    let last_user = view.and_then(|v| v.last_user());
    if let Some(p) = last_user {
        if let Some(c) = rec.stats.by_prompt.get_mut(p) {
            *c += 1;
        } else {
            rec.stats.by_prompt.insert(p.to_owned(), 1);
        }
    }
    if shared.cfg.record_requests {
        let entry = RecordedRequest {
            index,
            at,
            api,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: header_map_pairs(&parts.headers),
            model: view.map(|v| v.model.clone()).filter(|m| !m.is_empty()),
            system: view.and_then(|v| v.system.clone()),
            messages: view
                .and_then(|v| v.raw.get("messages").cloned())
                .unwrap_or(Value::Null),
            last_user: last_user.map(str::to_owned),
            body: view.map(|v| v.raw.clone()).unwrap_or(Value::Null),
            fault: None,
            status: None,
        };
        rec.log.push(entry);
    }
    index
}

pub(crate) fn finish(shared: &Shared, idx: u64, status: Option<u16>) {
    let mut rec = lock(&shared.rec);
    if let Some(code) = status {
        *rec.stats.by_status.entry(code).or_insert(0) += 1;
        if code == 429 {
            rec.stats.rate_limited += 1;
        }
    }
    if let Some(e) = rec.log.get_mut(idx as usize)
        && e.index == idx
    {
        e.status = status;
    }
}

pub(crate) fn openai_error(
    status: u16,
    message: String,
    etype: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Resp {
    json_response(
        status,
        &json!({"error": {"message": message, "type": etype, "param": param, "code": code}}),
    )
}

pub(crate) fn anthropic_error(status: u16, etype: &str, message: String) -> Resp {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": etype, "message": message}}),
    )
}

fn rfc3339_in(d: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + d;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn openai_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// Add retry/ratelimit headers to a 429.
fn add_429_headers(shared: &Shared, api: Api, r: &mut Resp, retry_after: Duration) {
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    set_header(r, "retry-after", secs);
    set_header(r, "retry-after-ms", retry_after.as_millis().max(1));
    let lim = lock(&shared.limiter);
    match api {
        Api::OpenAi => {
            set_header(r, "x-ratelimit-remaining-requests", 0);
            set_header(r, "x-ratelimit-reset-requests", openai_reset(retry_after));
            if let Some(l) = lim.request_limit() {
                set_header(r, "x-ratelimit-limit-requests", l);
            }
        }
        Api::Anthropic => {
            set_header(r, "anthropic-ratelimit-requests-remaining", 0);
            set_header(
                r,
                "anthropic-ratelimit-requests-reset",
                rfc3339_in(retry_after),
            );
            if let Some(l) = lim.request_limit() {
                set_header(r, "anthropic-ratelimit-requests-limit", l);
            }
        }
    }
}

pub(crate) fn status_fault(
    shared: &Shared,
    api: Api,
    code: u16,
    retry_after: Duration,
    view: Option<&ChatView>,
) -> Resp {
    let model = view.map_or("mock-model", |v| v.model.as_str());
    let mut r = match api {
        Api::OpenAi => match code {
            400 => openai_error(400, "Invalid request (injected fault).".into(), "invalid_request_error", None, None),
            401 => openai_error(401, "Incorrect API key provided: sk-mock****. You can find your API key at https://platform.openai.com/account/api-keys.".into(), "invalid_request_error", Some("invalid_api_key"), None),
            403 => openai_error(403, "You are not allowed to sample from this model".into(), "permission_error", None, None),
            404 => openai_error(404, format!("The model `{model}` does not exist"), "invalid_request_error", Some("model_not_found"), Some("model")),
            408 => openai_error(408, "Request timed out.".into(), "timeout", None, None),
            429 => openai_error(429, format!("Rate limit reached for requests on {model} in organization org-mock. Please try again in {}ms.", retry_after.as_millis()), "requests", Some("rate_limit_exceeded"), None),
            500 => openai_error(500, "The server had an error while processing your request. Sorry about that!".into(), "server_error", None, None),
            502 => openai_error(502, "Bad gateway.".into(), "server_error", None, None),
            504 => openai_error(504, "Gateway timeout.".into(), "server_error", None, None),
            503 => openai_error(503, "The engine is currently overloaded, please try again later.".into(), "server_error", None, None),
            c => openai_error(c, format!("Injected error {c}."), if c >= 500 { "server_error" } else { "invalid_request_error" }, None, None),
        },
        Api::Anthropic => match code {
            400 => anthropic_error(400, "invalid_request_error", "Invalid request (injected fault).".into()),
            401 => anthropic_error(401, "authentication_error", "invalid x-api-key".into()),
            403 => anthropic_error(403, "permission_error", "Your API key does not have permission to use the specified resource.".into()),
            404 => anthropic_error(404, "not_found_error", format!("model: {model}")),
            408 => anthropic_error(408, "timeout_error", "Request timed out.".into()),
            413 => anthropic_error(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.".into()),
            429 => anthropic_error(429, "rate_limit_error", "This request would exceed the rate limit for your organization. Please try again later.".into()),
            500 => anthropic_error(500, "api_error", "Internal server error".into()),
            504 => anthropic_error(504, "timeout_error", "Request timed out.".into()),
            529 => anthropic_error(529, "overloaded_error", "Overloaded".into()),
            c => anthropic_error(c, if c >= 500 { "api_error" } else { "invalid_request_error" }, format!("Injected error {c}.")),
        },
    };
    if code == 429 {
        add_429_headers(shared, api, &mut r, retry_after);
    } else if code == 503 || code == 529 {
        set_header(&mut r, "retry-after", 1);
    }
    r
}

pub(crate) fn context_length(api: Api, tokens: u64) -> Resp {
    match api {
        Api::OpenAi => openai_error(
            400,
            format!(
                "This model's maximum context length is 8192 tokens. However, your messages resulted in {} tokens. Please reduce the length of the messages.",
                tokens.max(8193)
            ),
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some("messages"),
        ),
        Api::Anthropic => anthropic_error(
            400,
            "invalid_request_error",
            format!(
                "prompt is too long: {} tokens > 200000 maximum",
                tokens.max(200_001)
            ),
        ),
    }
}

pub(crate) fn check_auth(
    shared: &Shared,
    api: Api,
    parts: &hyper::http::request::Parts,
) -> Option<Resp> {
    let key = shared.cfg.api_key.as_deref()?;
    let h = &parts.headers;
    match api {
        Api::OpenAi => {
            let given = h
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(g) if g == key => None,
                Some(g) => {
                    let tail: String = g.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
                    Some(openai_error(401, format!("Incorrect API key provided: sk-****{tail}. You can find your API key at https://platform.openai.com/account/api-keys."), "invalid_request_error", Some("invalid_api_key"), None))
                }
                None => Some(openai_error(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(), "invalid_request_error", None, None)),
            }
        }
        Api::Anthropic => match h.get("x-api-key").and_then(|v| v.to_str().ok()) {
            Some(g) if g == key => None,
            Some(_) => Some(anthropic_error(
                401,
                "authentication_error",
                "invalid x-api-key".into(),
            )),
            None => Some(anthropic_error(
                401,
                "authentication_error",
                "x-api-key header is required".into(),
            )),
        },
    }
}

pub(crate) fn bad_request(api: Api, msg: String) -> Resp {
    match api {
        Api::OpenAi => openai_error(400, msg, "invalid_request_error", None, None),
        Api::Anthropic => anthropic_error(400, "invalid_request_error", msg),
    }
}

/// Validate; returns the error response if invalid.
fn validate(
    shared: &Shared,
    api: Api,
    parts: &hyper::http::request::Parts,
    view: Option<&ChatView>,
) -> Option<Resp> {
    if let Some(r) = check_auth(shared, api, parts) {
        return Some(r);
    }
    if api == Api::Anthropic && !parts.headers.contains_key("anthropic-version") {
        return Some(bad_request(
            api,
            "anthropic-version: header is required".into(),
        ));
    }
    let Some(view) = view else {
        return Some(bad_request(api, "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)".into()));
    };
    validate_view(shared, api, view)
}

/// The body checks of [`validate`] (model, messages, max_tokens, known model), without the
/// header checks; used for batch items too.
pub(crate) fn validate_view(shared: &Shared, api: Api, view: &ChatView) -> Option<Resp> {
    if view.model.is_empty() {
        return Some(bad_request(
            api,
            match api {
                Api::OpenAi => "you must provide a model parameter".into(),
                Api::Anthropic => "model: Field required".into(),
            },
        ));
    }
    match view.raw.get("messages").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => {}
        _ => {
            return Some(bad_request(
                api,
                match api {
                    Api::OpenAi => {
                        "'messages' is a required property and must be a non-empty array".into()
                    }
                    Api::Anthropic => "messages: Field required".into(),
                },
            ));
        }
    }
    if api == Api::Anthropic && view.raw.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Some(bad_request(api, "max_tokens: Field required".into()));
    }
    if let Some(models) = &shared.cfg.models
        && !models.contains(&view.model)
    {
        return Some(match api {
            Api::OpenAi => openai_error(
                404,
                format!("The model `{}` does not exist", view.model),
                "invalid_request_error",
                Some("model_not_found"),
                None,
            ),
            Api::Anthropic => {
                anthropic_error(404, "not_found_error", format!("model: {}", view.model))
            }
        });
    }
    None
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn serve(
    shared: &Shared,
    api: Api,
    parts: &hyper::http::request::Parts,
    view: Option<ChatView>,
    idx: u64,
    fault: Option<&Fault>,
) -> Resp {
    if let Some(r) = validate(shared, api, parts, view.as_ref()) {
        finish(shared, idx, Some(r.status().as_u16()));
        return r;
    }
    let Some(view) = view else {
        // unreachable: validate rejects a missing body
        let r = bad_request(api, "invalid body".into());
        finish(shared, idx, Some(400));
        return r;
    };
    let prompt = prompt_tokens(&view);
    let (text, fin, completion) = shape_reply((shared.cfg.responder)(&view), &view);

    // Rate limiting.
    let now = Instant::now();
    let admit = {
        let mut lim = lock(&shared.limiter);
        if lim.enabled() {
            Some((
                lim.try_admit(now, prompt + completion),
                lim.request_limit(),
                lim.token_limit(),
            ))
        } else {
            None
        }
    };
    let mut limit_headers: Option<LimitHeaders> = None;
    match admit {
        Some((
            Admit::Rejected {
                retry_after,
                remaining_tokens,
            },
            req_limit,
            tok_limit,
        )) => {
            let mut r = match api {
                Api::OpenAi => openai_error(
                    429,
                    format!("Rate limit reached for {} in organization org-mock on requests per min (RPM): Limit {}, Used {}, Requested 1. Please try again in {}ms.",
                        view.model, shared.cfg.rpm.unwrap_or(0), shared.cfg.rpm.unwrap_or(0), retry_after.as_millis()),
                    "requests",
                    Some("rate_limit_exceeded"),
                    None,
                ),
                Api::Anthropic => anthropic_error(429, "rate_limit_error", "This request would exceed the rate limit for your organization. Please try again later.".into()),
            };
            add_429_headers(shared, api, &mut r, retry_after);
            match api {
                Api::OpenAi => {
                    if let Some(t) = remaining_tokens {
                        set_header(&mut r, "x-ratelimit-remaining-tokens", t);
                    }
                    if let Some(t) = tok_limit {
                        set_header(&mut r, "x-ratelimit-limit-tokens", t);
                    }
                }
                Api::Anthropic => {
                    if let Some(t) = remaining_tokens {
                        set_header(&mut r, "anthropic-ratelimit-tokens-remaining", t);
                    }
                }
            }
            let _ = req_limit;
            lock(&shared.rec).stats.limiter_rejections += 1;
            finish(shared, idx, Some(429));
            return r;
        }
        Some((
            Admit::Accepted {
                remaining_requests,
                remaining_tokens,
                reset,
            },
            req_limit,
            tok_limit,
        )) => {
            limit_headers = Some((
                req_limit,
                remaining_requests,
                tok_limit,
                remaining_tokens,
                reset,
            ));
        }
        None => {}
    }
    {
        let mut rec = lock(&shared.rec);
        let at = now.saturating_duration_since(rec.start);
        rec.accepted_times.push(at);
        rec.stats.accepted += 1;
    }

    // Timing.
    let mut wait = shared.cfg.latency;
    if !shared.cfg.jitter.is_zero() {
        let j: f64 = lock(&shared.rng).random();
        wait += shared.cfg.jitter.mul_f64(j);
    }
    if let Some(tps) = shared.cfg.tokens_per_second
        && tps > 0.0
    {
        wait += Duration::from_secs_f64(completion as f64 / tps);
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
        let mut rec = lock(&shared.rec);
        rec.stats.held_micros_total += now.elapsed().as_micros() as u64;
        rec.stats.held_count += 1;
    }

    let id = match api {
        Api::OpenAi => format!("chatcmpl-mock{idx}"),
        Api::Anthropic => format!("msg_mock{idx:012}"),
    };
    let body = completion_json(api, &view, &id, text, fin, prompt, completion);
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let (mut r, status) = match fault {
        Some(Fault::TruncatedJson) => {
            let cut = bytes.slice(..bytes.len() / 2);
            (raw_response(200, cut), Some(200))
        }
        Some(Fault::CloseMidBody) => {
            let mut r = raw_response(200, Bytes::new());
            *r.body_mut() = MockBody::cut(bytes);
            lock(&shared.rec).stats.mid_body_closes += 1;
            (r, None)
        }
        _ => (raw_response(200, bytes), Some(200)),
    };
    set_header(&mut r, "x-request-id", format!("req_mock{idx}"));
    if let Some((req_limit, rem_req, tok_limit, rem_tok, reset)) = limit_headers {
        match api {
            Api::OpenAi => {
                if let (Some(l), Some(rem)) = (req_limit, rem_req) {
                    set_header(&mut r, "x-ratelimit-limit-requests", l);
                    set_header(&mut r, "x-ratelimit-remaining-requests", rem);
                    set_header(&mut r, "x-ratelimit-reset-requests", openai_reset(reset));
                }
                if let (Some(l), Some(rem)) = (tok_limit, rem_tok) {
                    set_header(&mut r, "x-ratelimit-limit-tokens", l);
                    set_header(&mut r, "x-ratelimit-remaining-tokens", rem);
                    set_header(&mut r, "x-ratelimit-reset-tokens", openai_reset(reset));
                }
            }
            Api::Anthropic => {
                let at = rfc3339_in(reset);
                if let (Some(l), Some(rem)) = (req_limit, rem_req) {
                    set_header(&mut r, "anthropic-ratelimit-requests-limit", l);
                    set_header(&mut r, "anthropic-ratelimit-requests-remaining", rem);
                    set_header(&mut r, "anthropic-ratelimit-requests-reset", &at);
                }
                if let (Some(l), Some(rem)) = (tok_limit, rem_tok) {
                    set_header(&mut r, "anthropic-ratelimit-tokens-limit", l);
                    set_header(&mut r, "anthropic-ratelimit-tokens-remaining", rem);
                    set_header(&mut r, "anthropic-ratelimit-tokens-reset", &at);
                }
            }
        }
    }
    if status == Some(200) && matches!(fault, None | Some(Fault::Delay(_))) {
        lock(&shared.rec).stats.successes += 1;
    }
    finish(shared, idx, status);
    r
}

/// The interactive answer to `view`: reply text from the responder, shaped by stop sequences and
/// `max_tokens`, as the body of a successful response with this `id`.
pub(crate) fn answer(shared: &Shared, api: Api, view: &ChatView, id: &str) -> Value {
    let prompt = prompt_tokens(view);
    let (text, fin, completion) = shape_reply((shared.cfg.responder)(view), view);
    completion_json(api, view, id, text, fin, prompt, completion)
}

fn completion_json(
    api: Api,
    view: &ChatView,
    id: &str,
    text: String,
    fin: Finish,
    prompt: u64,
    completion: u64,
) -> Value {
    match api {
        Api::OpenAi => {
            let finish_reason = match fin {
                Finish::Length => "length",
                _ => "stop",
            };
            json!({
                "id": id,
                "object": "chat.completion",
                "created": unix_now(),
                "model": view.model,
                "system_fingerprint": "fp_mock",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            })
        }
        Api::Anthropic => {
            let (stop_reason, stop_sequence) = match fin {
                Finish::Stop => ("end_turn", Value::Null),
                Finish::Length => ("max_tokens", Value::Null),
                Finish::StopSequence(s) => ("stop_sequence", Value::String(s)),
            };
            json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "model": view.model,
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": {"input_tokens": prompt, "output_tokens": completion},
            })
        }
    }
}

/// Status and JSON body of a fully built response (the error responses built here).
pub(crate) fn resp_json(r: Resp) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r
        .into_body()
        .data
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}
