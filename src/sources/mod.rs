//! Prompt sources: streaming loaders that turn files and datasets into [`Record`]s for pipelines.
//!
//! Everything a pipeline reads prompts from goes through here:
//!
//! * [`Loader`] — JSONL, JSON array, CSV, Parquet and plain text files (or a directory of shards),
//!   with a [`FieldMap`] saying which field is the id, the prompt and the category. Loaders stream:
//!   a file is never read whole (Parquet row groups are decoded one at a time, JSON arrays element by
//!   element). Bad rows are errors naming the file and line/row unless `.skip_bad_rows(true)`, in
//!   which case they are counted in [`SourceStats`].
//! * [`hf`] — Hugging Face datasets from a local checkout, the HF cache (pinned to a revision) or,
//!   when allowed, downloaded from the Hub into the cache.
//! * [`wildchat`] — the WildChat-1M schema: user turns, language/toxic/redacted/turn/length filters
//!   and dedupe.
//! * [`custom`] — hand-written prompt files with categories.
//! * [`knowledge`] — prompts seeded from a markdown identity document or a list of facts.
//! * [`mix`] — deterministic, seeded, memory-bounded mixing of several sources with a [`MixReport`].
//!
//! Text is always UTF-8: invalid bytes are an error, never replaced.

pub mod custom;
mod fields;
pub mod hf;
pub mod knowledge;
mod loader;
pub mod mix;
mod readers;
pub mod wildchat;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use custom::{custom_loader, example_turns, load_custom};
pub use fields::FieldMap;
pub use hf::{HfCache, HfDataset, HfHub, hf_endpoint, hf_token};
pub use knowledge::{
    Fact, Section, facts_to_records, knowledge_records, markdown_sections, section_facts,
    sections_to_records,
};
pub use loader::{Format, Loader, Records};
pub use mix::{Mix, MixReport, MixSourceReport, Weight};
pub use wildchat::{Turns, WildChat};

/// One prompt as a pipeline sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id: from the source when it has one, otherwise [`derive_id`] of the prompt.
    pub id: String,
    /// The prompt text.
    pub prompt: String,
    /// Name of the source (file stem, dataset, or mix component name).
    pub source: String,
    /// Optional category (custom prompt files, knowledge sections, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Every other field kept from the source row.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// A record with an id derived from `source` and the prompt's normalised text.
    pub fn new(source: impl Into<String>, prompt: impl Into<String>) -> Self {
        let source = source.into();
        let prompt = prompt.into();
        Record {
            id: derive_id(&source, &prompt),
            prompt,
            source,
            category: None,
            extra: Map::new(),
        }
    }

    /// Sets the category.
    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// The dedupe key of this record's prompt (see [`normalise`]).
    pub fn key(&self) -> String {
        normalise(&self.prompt)
    }
}

/// Normalised text used for ids and dedupe: lowercase, whitespace runs collapsed to one space, trimmed.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `<source>-<first 12 hex digits of sha256(normalise(prompt))>`.
pub fn derive_id(source: &str, prompt: &str) -> String {
    let digest = Sha256::digest(normalise(prompt).as_bytes());
    format!("{source}-{}", &hex::encode(digest)[..12])
}

/// 64-bit fingerprint of the normalised prompt (first 8 bytes of its sha256), for dedupe sets.
pub fn prompt_fingerprint(prompt: &str) -> u64 {
    let digest = Sha256::digest(normalise(prompt).as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where in a file a row came from; 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A line of a text/JSONL/CSV file.
    Line(u64),
    /// The n-th element of a JSON array, starting on a line.
    Element {
        /// The element's position in the array (1-based).
        index: u64,
        /// The line it starts on.
        line: u64,
    },
    /// The n-th row of a Parquet file (counted across row groups).
    Row(u64),
    /// The whole file.
    File,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Element { index, line } => write!(f, "line {line} (element {index})"),
            Location::Row(n) => write!(f, "row {n}"),
            Location::File => write!(f, "file"),
        }
    }
}

/// Everything that can go wrong reading prompt sources. Messages name the file, the line or row
/// (1-based) and the field; secrets (HF tokens) never appear in them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A file or directory could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line (or a CSV header) is not UTF-8. A row error.
    #[error("{path}:{location}: invalid UTF-8 {detail}")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// Where in the line, e.g. `at byte 17 of the line`.
        detail: String,
    },
    /// A row does not parse: invalid JSON, not an object, a CSV row with the wrong number of
    /// fields. A row error.
    #[error("{path}:{location}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// What is wrong.
        message: String,
    },
    /// A row lacks a field the field map (or the WildChat filter) needs. A row error.
    #[error("{path}:{location}: field `{field}` is missing; available fields: {}", available.join(", "))]
    MissingField {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// The field that is missing.
        field: String,
        /// The fields the row has.
        available: Vec<String>,
    },
    /// A CSV or Parquet file has no column the field map needs (checked before the first row).
    #[error("{path}: column `{column}` not found; available columns: {}", available.join(", "))]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column that is missing.
        column: String,
        /// The file's columns.
        available: Vec<String>,
    },
    /// A field has the wrong type or an unusable value (an empty prompt, a number where text
    /// belongs). A row error.
    #[error("{path}:{location}: field `{field}`: {message}")]
    BadField {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file breaks where rows cannot be told apart any more (a JSON array's syntax, an
    /// unreadable Parquet row): reading it stops.
    #[error("{path}:{location}: {message} (cannot continue reading this file)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where reading stopped.
        location: Location,
        /// What is wrong.
        message: String,
    },
    /// A Parquet file's metadata or schema could not be read.
    #[error("{path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet reader's error.
        message: String,
    },
    /// The file's extension names no known format and `Loader::format` was not set.
    #[error(
        "{path}: unsupported format (expected .jsonl, .json, .csv, .parquet or .txt); set Loader::format"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A directory (or an explicit file list) holds no file of the format asked for.
    #[error("{path}: no {what} shards found in directory")]
    NoShards {
        /// The directory.
        path: PathBuf,
        /// The extensions looked for (`.jsonl/.ndjson`, …), or `input` for an empty file list.
        what: String,
    },
    /// A Hugging Face dataset cannot be read as asked: no directory for the config, no shards
    /// for the split, a revision missing from the cache, a dataset directory that is not one.
    #[error("hugging face dataset `{repo_id}`: {message}")]
    Hf {
        /// The dataset (`owner/name`).
        repo_id: String,
        /// What is wrong.
        message: String,
    },
    /// A request to the Hugging Face Hub failed (the token is removed from the text).
    #[error("hugging face hub: {url}: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A source mix is invalid: a share outside 0..=1, shares adding up to more than 1, or
    /// shares without `Mix::total`.
    #[error("mix: {0}")]
    Mix(String),
}

impl SourceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SourceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the error is about one row (and may be skipped with `skip_bad_rows`), false when
    /// the whole source is unusable (I/O, missing column, bad format).
    pub fn is_row_error(&self) -> bool {
        matches!(
            self,
            SourceError::NotUtf8 { .. }
                | SourceError::Parse { .. }
                | SourceError::MissingField { .. }
                | SourceError::BadField { .. }
        )
    }
}

/// Counters for one source, filled while iterating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStats {
    /// Rows (lines, elements, parquet rows) read, including bad ones.
    pub read: u64,
    /// Records handed to the caller.
    pub kept: u64,
    /// Rows skipped because they were bad (only with `skip_bad_rows(true)`).
    pub skipped_bad: u64,
    /// Candidate records dropped by a filter.
    pub skipped_filtered: u64,
    /// Records dropped as duplicates of an earlier record (normalised prompt).
    pub duplicates: u64,
}

/// Shared handle to a source's [`SourceStats`]; clone it before iterating, read it after.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Mutex<SourceStats>>);

impl StatsHandle {
    /// A snapshot of the counters.
    pub fn get(&self) -> SourceStats {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SourceStats)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
