//! The durable response cache: every paid answer is committed to an embedded store (redb) before a task sees it.
//!
//! One database per pipeline in `.shaping/cache/<pipeline>.redb` (git-ignored). Writes are
//! group-committed by a writer thread: answers arriving together (within a gap of 200 µs, at most
//! 2 ms) share one transaction and one fsync, and each caller is released only after its answer
//! is on disk. Keys are [`CacheKey`]s: a hash of the model
//! fingerprint, messages, parameters, and the step's place in its record's task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::ModelFingerprint;
use crate::provider::{Message, Params, Usage};

const RESPONSES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("responses");

/// Errors of the response cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("response cache {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error(
        "response cache {path} is in use by another run of this pipeline; wait for it to finish (or stop it) and retry"
    )]
    Busy { path: PathBuf },
    #[error("response cache writer stopped")]
    WriterGone,
}

/// A 32-byte cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Hash of (model fingerprint, messages, resolved params, record key, step index).
    pub fn new(
        model: &ModelFingerprint,
        messages: &[Message],
        params: &Params,
        record_key: &str,
        step: u32,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"shaping-cache-v1\0");
        h.update(serde_json::to_vec(model).expect("fingerprint serializes"));
        h.update([0]);
        h.update(serde_json::to_vec(messages).expect("messages serialize"));
        h.update([0]);
        h.update(serde_json::to_vec(params).expect("params serialize"));
        h.update([0]);
        h.update(record_key.as_bytes());
        h.update([0]);
        h.update(step.to_le_bytes());
        Self(h.finalize().into())
    }
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReply {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// Unix seconds when stored (for pruning).
    pub stored_at: u64,
}

type WriteJob = (
    CacheKey,
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// An open response cache.
pub struct ResponseCache {
    path: PathBuf,
    db: Arc<Database>,
    writer: Option<mpsc::Sender<WriteJob>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ResponseCache {
    /// Close the writer and wait for it, so the database file is released when this returns.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> CacheError {
    CacheError::Store {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn open_db(path: &Path) -> Result<Database, CacheError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| store_err(path, e))?;
    }
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => CacheError::Busy {
            path: path.to_owned(),
        },
        other => store_err(path, other),
    })
}

/// The cache file of a pipeline.
pub fn cache_path(root: &Path, pipeline: &str) -> PathBuf {
    root.join(".shaping")
        .join("cache")
        .join(format!("{pipeline}.redb"))
}

impl ResponseCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let db = Arc::new(open_db(path)?);
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        let writer_db = Arc::clone(&db);
        let writer_thread = std::thread::Builder::new()
            .name("response-cache-writer".into())
            .spawn(move || group_commit_loop(&writer_db, jobs))
            .map_err(|e| store_err(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &CacheKey) -> Result<Option<CachedReply>, CacheError> {
        let read = self.db.begin_read().map_err(|e| store_err(&self.path, e))?;
        let table = match read.open_table(RESPONSES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store_err(&self.path, e)),
        };
        let Some(value) = table
            .get(key.0.as_slice())
            .map_err(|e| store_err(&self.path, e))?
        else {
            return Ok(None);
        };
        // An undecodable entry (older format) is treated as absent and will be overwritten.
        Ok(serde_json::from_slice(value.value()).ok())
    }

    /// Store an answer durably; returns once it is committed to disk.
    pub async fn put(&self, key: CacheKey, reply: &CachedReply) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(reply).expect("reply serializes");
        let (done, wait) = tokio::sync::oneshot::channel();
        let writer = self.writer.as_ref().ok_or(CacheError::WriterGone)?;
        writer
            .send((key, bytes, done))
            .map_err(|_| CacheError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(CacheError::Store {
                path: self.path.clone(),
                message,
            }),
            Err(_) => Err(CacheError::WriterGone),
        }
    }
}

/// A commit waits this long for one more answer to join it…
const GATHER_GAP: Duration = Duration::from_micros(200);
/// …but never longer than this in total: a commit costs far more CPU than an insert, and
/// answers arriving together (a burst of concurrent requests) then share one.
const GATHER_MAX: Duration = Duration::from_millis(2);
const MAX_BATCH: usize = 4096;

fn group_commit_loop(db: &Arc<Database>, jobs: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let deadline = Instant::now() + GATHER_MAX;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let wait = GATHER_GAP.min(deadline.saturating_duration_since(Instant::now()));
            match jobs.recv_timeout(wait) {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(RESPONSES).map_err(|e| e.to_string())?;
                for (key, value, _) in &batch {
                    table
                        .insert(key.0.as_slice(), value.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        for (_, _, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

/// Size and entry count of one cache file, for `cargo xtask cache`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    pub pipeline: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub entries: u64,
}

/// Describe every pipeline cache below `.shaping/cache`.
pub fn list_caches(root: &Path) -> Result<Vec<CacheInfo>, CacheError> {
    let dir = root.join(".shaping").join("cache");
    let mut infos = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(infos);
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "redb"))
        .collect();
    paths.sort();
    for path in paths {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let db = open_db(&path)?;
        let read = db.begin_read().map_err(|e| store_err(&path, e))?;
        let entries = match read.open_table(RESPONSES) {
            Ok(t) => t.len().map_err(|e| store_err(&path, e))?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(store_err(&path, e)),
        };
        let pipeline = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        infos.push(CacheInfo {
            pipeline,
            path,
            bytes,
            entries,
        });
    }
    Ok(infos)
}

/// Remove entries stored more than `older_than_secs` ago; returns how many were removed.
pub fn prune(path: &Path, older_than_secs: u64) -> Result<u64, CacheError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let cutoff = now.saturating_sub(older_than_secs);
    let mut db = open_db(path)?;
    let txn = db.begin_write().map_err(|e| store_err(path, e))?;
    let mut removed = 0;
    {
        let mut table = txn.open_table(RESPONSES).map_err(|e| store_err(path, e))?;
        let doomed: Vec<Vec<u8>> = table
            .iter()
            .map_err(|e| store_err(path, e))?
            .filter_map(|entry| {
                let (k, v) = entry.ok()?;
                let reply: Option<CachedReply> = serde_json::from_slice(v.value()).ok();
                match reply {
                    Some(r) if r.stored_at >= cutoff => None,
                    _ => Some(k.value().to_vec()),
                }
            })
            .collect();
        for key in doomed {
            table
                .remove(key.as_slice())
                .map_err(|e| store_err(path, e))?;
            removed += 1;
        }
    }
    txn.commit().map_err(|e| store_err(path, e))?;
    let _ = db.compact();
    Ok(removed)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
