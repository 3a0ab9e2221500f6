//! Content fingerprints: sha256 of files and directories behind a (path, size, mtime) cache, and code hashes.
//!
//! The cache lives in `.shaping/hash-cache.json` (git-ignored). Like git's index it trusts a file
//! whose size and modification time are unchanged, and refuses to trust entries written in the
//! same second the file was modified ("racy" entries), so a quick edit is never missed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors while hashing.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    /// A file or directory being hashed could not be read (for a reason other than not
    /// existing).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// A file or directory to hash does not exist.
    #[error("{path} does not exist")]
    Missing {
        /// The path that was not found.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FingerprintError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FingerprintError::Missing {
                path: path.to_owned(),
            }
        } else {
            FingerprintError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StatEntry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// A file hasher that remembers hashes of files whose size and mtime did not change.
#[derive(Debug)]
pub struct FileHasher {
    cache_path: Option<PathBuf>,
    entries: Mutex<BTreeMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
}

impl FileHasher {
    /// A hasher with the stat cache of the repository at `root` (`.shaping/hash-cache.json`).
    pub fn for_repo(root: &Path) -> Self {
        let cache_path = root.join(".shaping").join("hash-cache.json");
        let entries = std::fs::read(&cache_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            cache_path: Some(cache_path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// A hasher without a persistent cache.
    pub fn uncached() -> Self {
        Self {
            cache_path: None,
            entries: Mutex::default(),
            dirty: Mutex::new(false),
        }
    }

    /// sha256 of a file, or of a directory (every file below it, by relative path, sorted).
    pub fn hash_path(&self, path: &Path) -> Result<String, FingerprintError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            self.hash_dir(path)
        } else {
            self.hash_file(path)
        }
    }

    /// sha256 of one file's bytes, served from the stat cache when size and mtime match.
    pub fn hash_file(&self, path: &Path) -> Result<String, FingerprintError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if let Some(mtime) = mtime {
            let entries = self.entries.lock().expect("hash cache lock");
            if let Some(entry) = entries.get(&key)
                && entry.size == meta.len()
                && entry.mtime_ns == mtime.as_nanos()
            {
                return Ok(entry.sha256.clone());
            }
        }
        let sha256 = sha256_file(path)?;
        if let Some(mtime) = mtime {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            // Racy: modified within the last 2 s, a later same-size edit could keep this mtime.
            if now.saturating_sub(mtime).as_secs() >= 2 {
                self.entries.lock().expect("hash cache lock").insert(
                    key,
                    StatEntry {
                        size: meta.len(),
                        mtime_ns: mtime.as_nanos(),
                        sha256: sha256.clone(),
                    },
                );
                *self.dirty.lock().expect("hash cache lock") = true;
            }
        }
        Ok(sha256)
    }

    fn hash_dir(&self, dir: &Path) -> Result<String, FingerprintError> {
        let mut hasher = Sha256::new();
        for (rel, abs) in files_below(dir)? {
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            hasher.update(self.hash_file(&abs)?.as_bytes());
            hasher.update([b'\n']);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Persist the stat cache (atomically). Failures are ignored: the cache is only an accelerator.
    pub fn save(&self) {
        let Some(path) = &self.cache_path else { return };
        if !*self.dirty.lock().expect("hash cache lock") {
            return;
        }
        let entries = self.entries.lock().expect("hash cache lock");
        if let Ok(bytes) = serde_json::to_vec(&*entries) {
            let _ = crate::output::write_atomic(path, &bytes);
        }
    }
}

impl Drop for FileHasher {
    fn drop(&mut self) {
        self.save();
    }
}

/// sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FingerprintError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of `bytes`.
pub fn sha256(bytes: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(bytes.as_ref()).into()
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(bytes.as_ref()))
}

/// Every regular file below `dir` as (relative path with '/', absolute path), sorted, skipping `target/` and dot-dirs.
fn files_below(dir: &Path) -> Result<Vec<(String, PathBuf)>, FingerprintError> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !(e.file_type().is_dir()
                    && (e.file_name() == "target"
                        || e.file_name().to_string_lossy().starts_with('.')))
        });
    for entry in walker {
        let entry = entry.map_err(|e| FingerprintError::Io {
            path: e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_owned()),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk error")),
        })?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap_or(entry.path())
                .to_string_lossy()
                .replace('\\', "/");
            files.push((rel, entry.path().to_owned()));
        }
    }
    Ok(files)
}

/// Hash of a pipeline's code in the repository at `root`: its crate (`Cargo.toml`, `build.rs`,
/// `src/`) plus the library's (the package at the repository root: `Cargo.toml`, `build.rs`,
/// `src/`; absent parts count as empty). Always computed from the repository being acted on,
/// never from where a binary was compiled. Paths are hashed relative to each crate, so the hash
/// is the same in every clone.
pub fn code_hash(
    root: &Path,
    pipeline_crate_dir: &Path,
    hasher: &FileHasher,
) -> Result<String, FingerprintError> {
    let mut total = Sha256::new();
    for (label, dir) in [("pipeline", pipeline_crate_dir), ("shaping", root)] {
        for name in ["Cargo.toml", "build.rs"] {
            let file = dir.join(name);
            if file.is_file() {
                total.update(format!("{label}/{name}\0{}\n", hasher.hash_file(&file)?));
            }
        }
        let src = dir.join("src");
        if src.is_dir() {
            for (rel, abs) in files_below(&src)? {
                total.update(format!("{label}/src/{rel}\0{}\n", hasher.hash_file(&abs)?));
            }
        }
    }
    Ok(hex::encode(total.finalize()))
}
