//! A mock Hugging Face Hub on 127.0.0.1 speaking the upload endpoints `huggingface_hub` uses:
//! repository creation, preupload, the Git LFS batch API (with upload and verify URLs on the same
//! server) and NDJSON commits. It checks the bearer token and keeps every committed file.
//!
//! ```no_run
//! # async fn demo() {
//! let hub = testkit::MockHub::start("hf_test").await;
//! let endpoint = hub.endpoint(); // http://127.0.0.1:PORT, for HF_ENDPOINT
//! # let _ = endpoint;
//! assert!(hub.files("me/data").is_empty());
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request the mock Hub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRequest {
    /// `GET`, `POST`, `PUT`.
    pub method: String,
    /// The path.
    pub path: String,
    /// The `Authorization` header as sent, if any.
    pub authorization: Option<String>,
}

/// One commit the mock Hub accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCommit {
    /// The repository (`owner/name`).
    pub repo: String,
    /// The header's summary.
    pub summary: String,
    /// Paths committed as regular (inline base64) files.
    pub regular: Vec<String>,
    /// Paths committed as LFS pointers.
    pub lfs: Vec<String>,
}

#[derive(Default)]
struct State {
    requests: Vec<HubRequest>,
    /// Dataset repositories that exist, with whether they are private.
    repos: BTreeMap<String, bool>,
    /// LFS objects by sha256.
    objects: BTreeMap<String, Vec<u8>>,
    /// Verified LFS objects.
    verified: BTreeSet<String>,
    /// Files of each repository's `main`.
    files: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    commits: Vec<HubCommit>,
}

struct Shared {
    token: String,
    addr: SocketAddr,
    state: Mutex<State>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock Hub; stops when dropped.
pub struct MockHub {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl MockHub {
    /// Start on a free port of 127.0.0.1, accepting `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            addr,
            state: Mutex::new(State::default()),
        });
        let (tx, mut rx) = watch::channel(false);
        let accept = shared.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = rx.changed() => return,
                };
                let shared = accept.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MockHub {
            shared,
            shutdown: tx,
        }
    }

    /// `http://127.0.0.1:PORT` (what `HF_ENDPOINT` is set to).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<HubRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The files on `main` of dataset repository `repo`.
    pub fn files(&self, repo: &str) -> BTreeMap<String, Vec<u8>> {
        lock(&self.shared)
            .files
            .get(repo)
            .cloned()
            .unwrap_or_default()
    }

    /// The dataset repositories that exist, with whether each is private.
    pub fn repos(&self) -> BTreeMap<String, bool> {
        lock(&self.shared).repos.clone()
    }

    /// The commits accepted, in order.
    pub fn commits(&self) -> Vec<HubCommit> {
        lock(&self.shared).commits.clone()
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, json!({"error": message}))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&shared).requests.push(HubRequest {
        method: method.to_string(),
        path: path.clone(),
        authorization: authorization.clone(),
    });
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    // LFS uploads go to pre-signed URLs: no token there.
    if method == Method::PUT
        && let Some(oid) = path.strip_prefix("/lfs-upload/")
    {
        let oid = oid.to_owned();
        if sha256_hex(&body) != oid {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "content does not match the oid",
            ));
        }
        lock(&shared).objects.insert(oid, body.to_vec());
        return Ok(reply(StatusCode::OK, json!({})));
    }
    if authorization.as_deref() != Some(&format!("Bearer {}", shared.token)) {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "Invalid credentials in Authorization header",
        ));
    }
    let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let response = match (&method, path.as_str()) {
        (&Method::POST, "/api/repos/create") => create(&shared, &json_body()),
        (&Method::POST, "/lfs-verify") => {
            let oid = json_body()["oid"].as_str().unwrap_or_default().to_owned();
            let mut state = lock(&shared);
            if state.objects.contains_key(&oid) {
                state.verified.insert(oid);
                reply(StatusCode::OK, json!({}))
            } else {
                error(StatusCode::NOT_FOUND, "no such object")
            }
        }
        (&Method::POST, p) if p.starts_with("/api/datasets/") && p.ends_with("/preupload/main") => {
            let repo = &p["/api/datasets/".len()..p.len() - "/preupload/main".len()];
            preupload(&shared, repo, &json_body())
        }
        (&Method::POST, p) if p.starts_with("/api/datasets/") && p.ends_with("/commit/main") => {
            let repo = &p["/api/datasets/".len()..p.len() - "/commit/main".len()];
            commit(&shared, repo, &body)
        }
        (&Method::POST, p)
            if p.starts_with("/datasets/") && p.ends_with(".git/info/lfs/objects/batch") =>
        {
            let repo = &p["/datasets/".len()..p.len() - ".git/info/lfs/objects/batch".len()];
            batch(&shared, repo, &json_body())
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    Ok(response)
}

fn create(shared: &Shared, body: &Value) -> Reply {
    if body["type"] != "dataset" {
        return error(StatusCode::BAD_REQUEST, "only dataset repositories here");
    }
    let (Some(owner), Some(name)) = (body["organization"].as_str(), body["name"].as_str()) else {
        return error(StatusCode::BAD_REQUEST, "organization and name required");
    };
    let repo = format!("{owner}/{name}");
    let mut state = lock(shared);
    if state.repos.contains_key(&repo) {
        return error(
            StatusCode::CONFLICT,
            "You already created this dataset repo",
        );
    }
    state
        .repos
        .insert(repo.clone(), body["private"].as_bool().unwrap_or(false));
    reply(
        StatusCode::OK,
        json!({"url": format!("http://{}/datasets/{repo}", shared.addr)}),
    )
}

/// Like the Hub: binary content (a NUL byte in the sample), `.parquet` files and anything over
/// 10 MB go through LFS.
fn preupload(shared: &Shared, repo: &str, body: &Value) -> Reply {
    if !lock(shared).repos.contains_key(repo) {
        return error(StatusCode::NOT_FOUND, "Repository not found");
    }
    let Some(files) = body["files"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "files required");
    };
    let mut out = Vec::new();
    for file in files {
        let path = file["path"].as_str().unwrap_or_default();
        let sample = decode_base64(file["sample"].as_str().unwrap_or_default()).unwrap_or_default();
        let size = file["size"].as_u64().unwrap_or_default();
        let lfs = path.ends_with(".parquet") || sample.contains(&0) || size > 10 * 1024 * 1024;
        out.push(json!({
            "path": path,
            "uploadMode": if lfs { "lfs" } else { "regular" },
            "shouldIgnore": false,
        }));
    }
    reply(StatusCode::OK, json!({"files": out}))
}

fn batch(shared: &Shared, repo: &str, body: &Value) -> Reply {
    let state = lock(shared);
    if !state.repos.contains_key(repo) {
        return error(StatusCode::NOT_FOUND, "Repository not found");
    }
    let objects: Vec<Value> = body["objects"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let oid = o["oid"].as_str().unwrap_or_default();
            if state.objects.contains_key(oid) {
                json!({"oid": oid, "size": o["size"]})
            } else {
                json!({
                    "oid": oid,
                    "size": o["size"],
                    "actions": {
                        "upload": {"href": format!("http://{}/lfs-upload/{oid}", shared.addr), "header": {}},
                        "verify": {"href": format!("http://{}/lfs-verify", shared.addr), "header": {}},
                    },
                })
            }
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({"transfer": "basic", "objects": objects}),
    )
}

fn commit(shared: &Shared, repo: &str, body: &[u8]) -> Reply {
    let mut state = lock(shared);
    if !state.repos.contains_key(repo) {
        return error(StatusCode::NOT_FOUND, "Repository not found");
    }
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    if header["key"] != "header" {
        return error(StatusCode::BAD_REQUEST, "the first line must be the header");
    }
    let mut commit = HubCommit {
        repo: repo.to_owned(),
        summary: header["value"]["summary"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        regular: Vec::new(),
        lfs: Vec::new(),
    };
    let mut files = BTreeMap::new();
    for line in lines {
        let Ok(op) = serde_json::from_str::<Value>(line) else {
            return error(StatusCode::BAD_REQUEST, "a line is not JSON");
        };
        let path = op["value"]["path"].as_str().unwrap_or_default().to_owned();
        match op["key"].as_str() {
            Some("file") => {
                if op["value"]["encoding"] != "base64" {
                    return error(StatusCode::BAD_REQUEST, "encoding must be base64");
                }
                let Some(bytes) =
                    decode_base64(op["value"]["content"].as_str().unwrap_or_default())
                else {
                    return error(StatusCode::BAD_REQUEST, "content is not base64");
                };
                commit.regular.push(path.clone());
                files.insert(path, bytes);
            }
            Some("lfsFile") => {
                let oid = op["value"]["oid"].as_str().unwrap_or_default();
                let (Some(bytes), true) = (state.objects.get(oid), state.verified.contains(oid))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "LFS object not uploaded and verified",
                    );
                };
                if op["value"]["size"].as_u64() != Some(bytes.len() as u64) {
                    return error(StatusCode::BAD_REQUEST, "LFS size mismatch");
                }
                commit.lfs.push(path.clone());
                files.insert(path, bytes.clone());
            }
            _ => return error(StatusCode::BAD_REQUEST, "unknown operation"),
        }
    }
    state
        .files
        .entry(repo.to_owned())
        .or_default()
        .extend(files);
    let n = state.commits.len();
    state.commits.push(commit);
    reply(
        StatusCode::OK,
        json!({
            "commitUrl": format!("http://{}/datasets/{repo}/commit/{n:040x}", shared.addr),
            "commitOid": format!("{n:040x}"),
        }),
    )
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(decode_base64("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(decode_base64("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(decode_base64("//4A").as_deref(), Some(&[0xff, 0xfe, 0][..]));
        assert_eq!(decode_base64("Z!=="), None);
    }
}
