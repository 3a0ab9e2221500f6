//! The durable response cache: every paid answer is committed to an embedded store (redb) before a task sees it.
//!
//! One database per pipeline in `.shaping/cache/<pipeline>.redb` (git-ignored). Answers are
//! stored as a log (sequence number → key and reply), so a commit appends to the end of the tree
//! and writes a few pages however many answers the cache holds; an in-memory index (key →
//! sequence number, rebuilt by scanning the log when the cache opens) answers lookups, and a
//! miss touches no disk at all. Writes are group-committed by a writer thread: answers that
//! arrive while a commit is running share the next transaction and fsync, and each caller is
//! released only after its answer is on disk. Keys are [`CacheKey`]s: a hash of the
//! model fingerprint, messages, parameters, and the step's place in its record's task.
//!
//! An entry also keeps when its request was made and when its answer arrived: a replay hands
//! those times back, so samples rebuilt from the cache carry the original timestamps and come
//! out byte for byte as before. Entries written before these times were kept decode with both
//! times taken from `stored_at` (whole seconds), a fallback that is the same at every replay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::ModelFingerprint;
use crate::provider::{Message, Params, Usage};

/// The first layout (key → reply JSON), moved into [`LOG`] when a cache is opened.
const LEGACY_RESPONSES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("responses");
/// Answers in the order they were stored: sequence number → the 32-byte key followed by the
/// reply's JSON. A later entry for the same key (`--refresh`) supersedes earlier ones.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("responses-log");
const KEY_LEN: usize = 32;

/// Key → sequence number of its newest log entry.
type Index = HashMap<[u8; KEY_LEN], u64>;

/// Errors of the response cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed: creating the directory or the file, a transaction, a read or the
    /// writer's commit.
    #[error("response cache {path}: {message}")]
    Store {
        /// The cache file.
        path: PathBuf,
        /// The underlying error (redb's or the file system's), as text.
        message: String,
    },
    #[error(
        "response cache {path} is in use by another run of this pipeline; wait for it to finish (or stop it) and retry"
    )]
    /// The database is already open elsewhere (another run of the same pipeline).
    Busy {
        /// The cache file.
        path: PathBuf,
    },
    /// The writer thread is gone (it panicked or the cache is closing), so nothing can be stored.
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
    /// The answer's text.
    pub text: String,
    /// Why generation stopped (`stop`, `length`, …); None when the provider did not say.
    pub finish_reason: Option<String>,
    /// Tokens the original request used (a replay costs none).
    pub usage: Usage,
    /// Unix seconds when stored (for pruning).
    pub stored_at: u64,
    /// When the request was handed to the dispatcher (absent in entries of older versions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub requested_at: Option<OffsetDateTime>,
    /// When the answer arrived (absent in entries of older versions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub received_at: Option<OffsetDateTime>,
}

impl CachedReply {
    /// An answer received at `received_at` for a request made at `requested_at`.
    pub fn new(
        text: String,
        finish_reason: Option<String>,
        usage: Usage,
        requested_at: OffsetDateTime,
        received_at: OffsetDateTime,
    ) -> Self {
        Self {
            text,
            finish_reason,
            usage,
            stored_at: u64::try_from(received_at.unix_timestamp()).unwrap_or(0),
            requested_at: Some(requested_at),
            received_at: Some(received_at),
        }
    }

    /// (requested at, received at). An entry of an older version, which kept only
    /// `stored_at`, gives that second for both: deterministic, so replays still agree.
    pub fn times(&self) -> (OffsetDateTime, OffsetDateTime) {
        let stored = || {
            OffsetDateTime::from_unix_timestamp(i64::try_from(self.stored_at).unwrap_or(0))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let received = self.received_at.unwrap_or_else(stored);
        (self.requested_at.unwrap_or(received), received)
    }
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
    index: Arc<RwLock<Index>>,
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
    /// Open (or create) the cache at `path`, moving entries of the first layout into the log and
    /// rebuilding the key index; fails with [`CacheError::Busy`] while another process has it
    /// open.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let db = Arc::new(open_db(path)?);
        migrate_legacy(&db, path)?;
        let (index, next_seq) = load_index(&db, path)?;
        let index = Arc::new(RwLock::new(index));
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        let writer_db = Arc::clone(&db);
        let writer_index = Arc::clone(&index);
        let writer_thread = std::thread::Builder::new()
            .name("response-cache-writer".into())
            .spawn(move || group_commit_loop(&writer_db, &writer_index, next_seq, jobs))
            .map_err(|e| store_err(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            index,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
        })
    }

    /// Number of distinct answers stored.
    pub fn len(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest answer stored under `key`; None when there is none (or its entry no longer
    /// decodes).
    pub fn get(&self, key: &CacheKey) -> Result<Option<CachedReply>, CacheError> {
        let seq = match self.index.read() {
            Ok(index) => index.get(&key.0).copied(),
            Err(_) => return Err(CacheError::WriterGone),
        };
        let Some(seq) = seq else {
            return Ok(None);
        };
        let read = self.db.begin_read().map_err(|e| store_err(&self.path, e))?;
        let table = read.open_table(LOG).map_err(|e| store_err(&self.path, e))?;
        let Some(entry) = table.get(seq).map_err(|e| store_err(&self.path, e))? else {
            return Ok(None);
        };
        // An undecodable entry (older format) is treated as absent and will be superseded.
        Ok(entry
            .value()
            .get(KEY_LEN..)
            .and_then(|json| serde_json::from_slice(json).ok()))
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

/// Most answers in one transaction.
const MAX_BATCH: usize = 4096;

/// The writer thread: takes every answer waiting, appends them in one transaction, commits
/// (fsync), updates the index, then releases their callers. Answers arriving during a commit
/// wait for the next one, so batches grow with the load by themselves.
fn group_commit_loop(
    db: &Database,
    index: &RwLock<Index>,
    mut next_seq: u64,
    jobs: mpsc::Receiver<WriteJob>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let first_seq = next_seq;
        next_seq += batch.len() as u64;
        let result = (|| -> Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                let mut entry = Vec::new();
                for (seq, (key, value, _)) in (first_seq..).zip(&batch) {
                    entry.clear();
                    entry.extend_from_slice(&key.0);
                    entry.extend_from_slice(value);
                    table
                        .insert(seq, entry.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        if result.is_ok()
            && let Ok(mut index) = index.write()
        {
            for (seq, (key, _, _)) in (first_seq..).zip(&batch) {
                index.insert(key.0, seq);
            }
        }
        for (_, _, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

/// Move the entries of the first layout (key → reply) into the log, in one transaction.
fn migrate_legacy(db: &Database, path: &Path) -> Result<(), CacheError> {
    let read = db.begin_read().map_err(|e| store_err(path, e))?;
    match read.open_table(LEGACY_RESPONSES) {
        Ok(_) => {}
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(store_err(path, e)),
    }
    drop(read);
    let txn = db.begin_write().map_err(|e| store_err(path, e))?;
    {
        let legacy = txn
            .open_table(LEGACY_RESPONSES)
            .map_err(|e| store_err(path, e))?;
        let mut log = txn.open_table(LOG).map_err(|e| store_err(path, e))?;
        let mut seq = log
            .last()
            .map_err(|e| store_err(path, e))?
            .map_or(0, |(k, _)| k.value() + 1);
        for entry in legacy.iter().map_err(|e| store_err(path, e))? {
            let (key, value) = entry.map_err(|e| store_err(path, e))?;
            if key.value().len() != KEY_LEN {
                continue;
            }
            let mut record = key.value().to_vec();
            record.extend_from_slice(value.value());
            log.insert(seq, record.as_slice())
                .map_err(|e| store_err(path, e))?;
            seq += 1;
        }
    }
    txn.delete_table(LEGACY_RESPONSES)
        .map_err(|e| store_err(path, e))?;
    txn.commit().map_err(|e| store_err(path, e))
}

/// Scan the log: the newest sequence number of every key, and the next free one.
fn load_index(db: &Database, path: &Path) -> Result<(Index, u64), CacheError> {
    let read = db.begin_read().map_err(|e| store_err(path, e))?;
    let table = match read.open_table(LOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Index::new(), 0)),
        Err(e) => return Err(store_err(path, e)),
    };
    let mut index = Index::with_capacity(table.len().unwrap_or(0) as usize);
    let mut next_seq = 0;
    for entry in table.iter().map_err(|e| store_err(path, e))? {
        let (seq, record) = entry.map_err(|e| store_err(path, e))?;
        let seq = seq.value();
        next_seq = seq + 1;
        if let Some(key) = record
            .value()
            .get(..KEY_LEN)
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
        {
            index.insert(key, seq);
        }
    }
    Ok((index, next_seq))
}

/// Size and entry count of one cache file, for `cargo xtask cache`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    /// The pipeline, from the file name (`<pipeline>.redb`).
    pub pipeline: String,
    /// The cache file.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Distinct answers stored (entries superseded by `--refresh` not counted).
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
        migrate_legacy(&db, &path)?;
        let entries = load_index(&db, &path)?.0.len() as u64;
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

/// Remove entries stored more than `older_than_secs` ago (and entries superseded by a newer
/// answer for the same key); returns how many were removed.
pub fn prune(path: &Path, older_than_secs: u64) -> Result<u64, CacheError> {
    let cutoff = unix_now().saturating_sub(older_than_secs);
    let mut db = open_db(path)?;
    migrate_legacy(&db, path)?;
    let (index, _) = load_index(&db, path)?;
    let txn = db.begin_write().map_err(|e| store_err(path, e))?;
    let mut removed = 0;
    {
        let mut table = txn.open_table(LOG).map_err(|e| store_err(path, e))?;
        let doomed: Vec<u64> = table
            .iter()
            .map_err(|e| store_err(path, e))?
            .filter_map(|entry| {
                let (seq, record) = entry.ok()?;
                let seq = seq.value();
                let record = record.value();
                let newest = record
                    .get(..KEY_LEN)
                    .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
                    .and_then(|k| index.get(&k))
                    == Some(&seq);
                let reply: Option<CachedReply> = record
                    .get(KEY_LEN..)
                    .and_then(|json| serde_json::from_slice(json).ok());
                match reply {
                    Some(r) if newest && r.stored_at >= cutoff => None,
                    _ => Some(seq),
                }
            })
            .collect();
        for seq in doomed {
            table.remove(seq).map_err(|e| store_err(path, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str, stored_at: u64) -> CachedReply {
        CachedReply {
            text: text.to_owned(),
            finish_reason: Some("stop".to_owned()),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2,
            },
            stored_at,
            requested_at: None,
            received_at: None,
        }
    }

    fn put(cache: &ResponseCache, key: CacheKey, value: &CachedReply) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(cache.put(key, value))
            .expect("put");
    }

    #[test]
    fn answers_survive_reopening_and_the_newest_answer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        {
            let cache = ResponseCache::open(&path).unwrap();
            assert_eq!(cache.get(&a).unwrap(), None);
            put(&cache, a, &reply("first", unix_now()));
            put(&cache, b, &reply("other", unix_now()));
            put(&cache, a, &reply("refreshed", unix_now()));
            assert_eq!(cache.get(&a).unwrap().unwrap().text, "refreshed");
            assert_eq!(cache.len(), 2);
        }
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(cache.get(&a).unwrap().unwrap().text, "refreshed");
        assert_eq!(cache.get(&b).unwrap().unwrap().text, "other");
        assert_eq!(cache.get(&CacheKey([3; 32])).unwrap(), None);
        // Appends continue after the existing entries instead of overwriting them.
        put(&cache, CacheKey([3; 32]), &reply("third", unix_now()));
        drop(cache);
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&b).unwrap().unwrap().text, "other");
    }

    #[test]
    fn prune_drops_old_and_superseded_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        let (old, fresh) = (CacheKey([1; 32]), CacheKey([2; 32]));
        {
            let cache = ResponseCache::open(&path).unwrap();
            put(&cache, old, &reply("old", unix_now() - 10 * 86_400));
            put(&cache, fresh, &reply("superseded", unix_now()));
            put(&cache, fresh, &reply("fresh", unix_now()));
        }
        assert_eq!(prune(&path, 86_400).unwrap(), 2);
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(cache.get(&old).unwrap(), None);
        assert_eq!(cache.get(&fresh).unwrap().unwrap().text, "fresh");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn caches_of_the_first_layout_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LEGACY_RESPONSES).unwrap();
                let json = serde_json::to_vec(&reply("legacy", unix_now())).unwrap();
                table.insert([7u8; 32].as_slice(), json.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(
            cache.get(&CacheKey([7; 32])).unwrap().unwrap().text,
            "legacy"
        );
        drop(cache);
        let db = Database::create(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert!(
            read.open_table(LEGACY_RESPONSES).is_err(),
            "legacy table removed"
        );
    }

    #[test]
    fn answer_times_survive_reopening_to_the_nanosecond() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        let requested =
            OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_789).unwrap();
        let received = requested + time::Duration::nanoseconds(987_654_321);
        let answer = CachedReply::new(
            "timed".to_owned(),
            Some("stop".to_owned()),
            Usage::default(),
            requested,
            received,
        );
        assert_eq!(answer.stored_at, 1_764_000_001);
        {
            let cache = ResponseCache::open(&path).unwrap();
            put(&cache, CacheKey([4; 32]), &answer);
        }
        let cache = ResponseCache::open(&path).unwrap();
        let replayed = cache.get(&CacheKey([4; 32])).unwrap().unwrap();
        assert_eq!(replayed, answer);
        assert_eq!(replayed.times(), (requested, received));
    }

    #[test]
    fn entries_without_times_fall_back_to_their_stored_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        // An entry as versions before the answer times wrote it, straight into the log.
        let old_json = br#"{"text":"old","finish_reason":"stop","usage":{"input_tokens":1,"output_tokens":2},"stored_at":1700000000}"#;
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                let mut entry = vec![9u8; KEY_LEN];
                entry.extend_from_slice(old_json);
                log.insert(0, entry.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let cache = ResponseCache::open(&path).unwrap();
        let old = cache
            .get(&CacheKey([9; 32]))
            .unwrap()
            .expect("old entry still readable");
        assert_eq!(old.text, "old");
        let second = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(old.times(), (second, second));
        // Rewriting it leaves the JSON as it was: the fallback adds nothing to the entry.
        assert_eq!(serde_json::to_vec(&old).unwrap(), old_json.to_vec());
    }
}
