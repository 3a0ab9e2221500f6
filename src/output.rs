//! Atomic, streaming JSONL output: lines go to a temp file beside the target, which replaces it only on `commit`.
//!
//! Invariant: a reader of `path` sees either the previous complete file or the new complete
//! file, never a mix; an interrupted run leaves the temp file behind at worst (removed on drop).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors while writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialize a line for {path}: {source}")]
    Serialize {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let io = |source| OutputError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let temp = temp_path_for(path);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// A JSONL file being written; invisible at `path` until [`JsonlWriter::commit`].
pub struct JsonlWriter {
    path: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    lines: u64,
    line_buf: Vec<u8>,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        let io = |source| OutputError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let temp = temp_path_for(path);
        let file = File::create(&temp).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            temp,
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            lines: 0,
            line_buf: Vec::with_capacity(4096),
        })
    }

    /// Append one JSON value as a line.
    pub fn write<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        self.line_buf.clear();
        serde_json::to_writer(&mut self.line_buf, value).map_err(|source| {
            OutputError::Serialize {
                path: self.path.clone(),
                source,
            }
        })?;
        self.line_buf.push(b'\n');
        self.hasher.update(&self.line_buf);
        self.lines += 1;
        let file = self.file.as_mut().expect("writer used after commit");
        file.write_all(&self.line_buf)
            .map_err(|source| OutputError::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Flush, fsync and rename into place. Returns the sha256 of the file's bytes.
    pub fn commit(mut self) -> Result<String, OutputError> {
        let io = |source| OutputError::Io {
            path: self.path.clone(),
            source,
        };
        let file = self.file.take().expect("commit once");
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.temp, &self.path).map_err(io)?;
        Ok(hex::encode(std::mem::take(&mut self.hasher).finalize()))
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
