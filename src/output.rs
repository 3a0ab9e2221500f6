//! Atomic, streaming JSONL output: lines go to a temp file beside the target, which replaces it only on `commit`.
//!
//! Invariant: a reader of `path` sees either the previous complete file or the new complete
//! file, never a mix; an interrupted run leaves the temp file behind at worst (removed on drop).
//!
//! Lines may arrive in any order ([`JsonlWriter::write_at`] names each line's place): they are
//! appended as they come, with a small index (place → offset in the temp file), and put in order
//! once, at commit, into a second temp file that is then renamed into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors while writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Creating, writing, reading back, syncing or renaming a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file being written (its final path).
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line's value could not be serialized to JSON.
    #[error("cannot serialize a line for {path}: {source}")]
    Serialize {
        /// The file the line was for.
        path: PathBuf,
        /// The serialization error.
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

/// Where a line of a [`JsonlWriter`] is in the temp file, and where it belongs in the output.
#[derive(Debug, Clone, Copy)]
struct LineSlot {
    place: u64,
    offset: u64,
    len: u32,
}

/// A JSONL file being written; invisible at `path` until [`JsonlWriter::commit`].
pub struct JsonlWriter {
    path: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    /// The hash of the bytes written so far, valid while every line arrived in order.
    hasher: Sha256,
    lines: u64,
    line_buf: Vec<u8>,
    /// Bytes written to the temp file so far.
    offset: u64,
    /// Every line's place and offset (the only per-line memory: 24 bytes a line).
    index: Vec<LineSlot>,
    /// The largest place written so far.
    last_place: Option<u64>,
    /// Whether some line arrived before a line that belongs ahead of it.
    out_of_order: bool,
}

impl JsonlWriter {
    /// Start writing to a temporary file beside `path` (creating its directory); `path` itself
    /// appears only at [`commit`](Self::commit).
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        let io = |source| OutputError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let temp = temp_path_for(path);
        // Readable too: lines that arrived out of order are read back at commit.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            temp,
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            lines: 0,
            line_buf: Vec::with_capacity(4096),
            offset: 0,
            index: Vec::new(),
            last_place: None,
            out_of_order: false,
        })
    }

    /// Append one JSON value as a line, after every line written so far.
    pub fn write<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        let place = self.last_place.map_or(0, |p| p.saturating_add(1));
        self.write_at(place, value)
    }

    /// The line whose place in the output is `place`: at commit, lines are ordered by place
    /// (lines with the same place keep the order they were written in).
    /// `writer.at(place).write(&value)`.
    pub fn at(&mut self, place: u64) -> PlacedLine<'_> {
        PlacedLine {
            writer: self,
            place,
        }
    }

    /// Write one JSON value as the line at `place` (see [`JsonlWriter::at`]).
    pub fn write_at<T: serde::Serialize + ?Sized>(
        &mut self,
        place: u64,
        value: &T,
    ) -> Result<(), OutputError> {
        self.line_buf.clear();
        serde_json::to_writer(&mut self.line_buf, value).map_err(|source| {
            OutputError::Serialize {
                path: self.path.clone(),
                source,
            }
        })?;
        self.line_buf.push(b'\n');
        let len = u32::try_from(self.line_buf.len()).map_err(|_| OutputError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("a line longer than 4 GiB"),
        })?;
        if self.last_place.is_some_and(|last| place < last) {
            self.out_of_order = true;
        }
        if !self.out_of_order {
            self.hasher.update(&self.line_buf);
        }
        self.last_place = Some(self.last_place.map_or(place, |last| last.max(place)));
        self.index.push(LineSlot {
            place,
            offset: self.offset,
            len,
        });
        self.offset += u64::from(len);
        self.lines += 1;
        let file = self.file.as_mut().expect("writer used after commit");
        file.write_all(&self.line_buf)
            .map_err(|source| OutputError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Put the lines in order (when they did not arrive in order), fsync and rename into place.
    /// Returns the sha256 of the file's bytes.
    pub fn commit(mut self) -> Result<String, OutputError> {
        let path = self.path.clone();
        let io = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let file = self.file.take().expect("commit once");
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        if !self.out_of_order {
            file.sync_all().map_err(io)?;
            drop(file);
            std::fs::rename(&self.temp, &self.path).map_err(io)?;
            return Ok(hex::encode(std::mem::take(&mut self.hasher).finalize()));
        }
        let mut ordered_name = self.temp.clone().into_os_string();
        ordered_name.push("-ordered");
        let ordered_temp = PathBuf::from(ordered_name);
        let result = self.write_ordered(&file, &ordered_temp);
        drop(file);
        let _ = std::fs::remove_file(&self.temp);
        match result {
            Ok(sha256) => match std::fs::rename(&ordered_temp, &self.path) {
                Ok(()) => Ok(sha256),
                Err(source) => {
                    let _ = std::fs::remove_file(&ordered_temp);
                    Err(io(source))
                }
            },
            Err(source) => {
                let _ = std::fs::remove_file(&ordered_temp);
                Err(io(source))
            }
        }
    }

    /// Copy the lines of `unordered` into a new file at `ordered_path` by place; returns its sha256.
    fn write_ordered(
        &mut self,
        unordered: &File,
        ordered_path: &Path,
    ) -> Result<String, std::io::Error> {
        // A stable sort: lines sharing a place stay in the order they were written.
        self.index.sort_by_key(|slot| slot.place);
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(ordered_path)?);
        let mut hasher = Sha256::new();
        let mut line = Vec::with_capacity(4096);
        for slot in &self.index {
            line.resize(slot.len as usize, 0);
            unordered.read_exact_at(&mut line, slot.offset)?;
            hasher.update(&line);
            out.write_all(&line)?;
        }
        let out = out.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        Ok(hex::encode(hasher.finalize()))
    }
}

/// A line of a [`JsonlWriter`] with its place in the output, about to be written.
pub struct PlacedLine<'a> {
    writer: &'a mut JsonlWriter,
    place: u64,
}

impl PlacedLine<'_> {
    /// Write `value` as this line.
    pub fn write<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), OutputError> {
        self.writer.write_at(self.place, value)
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_written_out_of_order_are_committed_in_place_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut writer = JsonlWriter::create(&path).unwrap();
        for place in [3u64, 0, 4, 1, 2] {
            writer.write_at(place, &format!("line {place}")).unwrap();
        }
        writer.write(&"after all").unwrap();
        assert!(!path.exists(), "nothing is visible before commit");
        let sha256 = writer.commit().unwrap();
        let lines = read_lines(&path);
        assert_eq!(
            lines,
            [
                "\"line 0\"",
                "\"line 1\"",
                "\"line 2\"",
                "\"line 3\"",
                "\"line 4\"",
                "\"after all\""
            ]
        );
        assert_eq!(
            sha256,
            crate::fingerprint::sha256_hex(std::fs::read(&path).unwrap())
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "out.jsonl")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn in_order_lines_hash_like_the_file_and_equal_places_keep_write_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut writer = JsonlWriter::create(&path).unwrap();
        writer.write_at(0, &"a").unwrap();
        writer.write_at(5, &"b").unwrap();
        writer.write_at(5, &"c").unwrap();
        let sha256 = writer.commit().unwrap();
        assert_eq!(read_lines(&path), ["\"a\"", "\"b\"", "\"c\""]);
        assert_eq!(
            sha256,
            crate::fingerprint::sha256_hex(std::fs::read(&path).unwrap())
        );

        let mut writer = JsonlWriter::create(&path).unwrap();
        writer.write_at(9, &"late").unwrap();
        writer.write_at(2, &"x").unwrap();
        writer.write_at(2, &"y").unwrap();
        writer.commit().unwrap();
        assert_eq!(read_lines(&path), ["\"x\"", "\"y\"", "\"late\""]);
    }

    #[test]
    fn a_dropped_writer_leaves_the_previous_file_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "previous\n").unwrap();
        let mut writer = JsonlWriter::create(&path).unwrap();
        writer.write_at(1, &"b").unwrap();
        writer.write_at(0, &"a").unwrap();
        drop(writer);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
