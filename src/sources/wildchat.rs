//! WildChat-1M: user prompts from the `allenai/WildChat-1M` schema (Parquet shards or JSONL).
//!
//! Each row is a conversation: `conversation_hash`, `model`, `timestamp`, `turn` (number of user
//! turns), `language`, `toxic`, `redacted`, and `conversation` — a list of turns with `role`
//! (`user`/`assistant`), `content`, `language`, `toxic`, `redacted`, `turn_identifier`, ….
//!
//! [`WildChat`] takes the first user turn (default) or every user turn, and filters by language
//! (case-insensitive, e.g. `"English"`; the turn's own language when present, else the
//! conversation's), toxic and redacted flags (conversation or turn; excluded by default), turn count
//! and prompt length in characters. Prompts are deduplicated by normalised text (on by default).
//! Records: `id` = `conversation_hash` (or `<hash>-<n>` with the 0-based user-turn index when
//! taking all turns), `source` = `wildchat`, extras `model`, `language`, `turn`,
//! `conversation_hash` (+ `turn_index` for all turns). Only the columns used are decoded.

use std::path::Path;

use serde_json::{Map, Value};

use super::loader::RowMapper;
use super::readers::{RawRow, kind};
use super::{Loader, Record, Records, SourceError};

/// Which user turns of a conversation become prompts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Turns {
    /// The first user turn only.
    #[default]
    First,
    /// Every user turn.
    All,
}

/// Options for reading WildChat; see the module docs.
#[derive(Clone, Debug)]
pub struct WildChat {
    turns: Turns,
    languages: Option<Vec<String>>,
    include_toxic: bool,
    include_redacted: bool,
    min_turns: Option<u64>,
    max_turns: Option<u64>,
    min_chars: Option<usize>,
    max_chars: Option<usize>,
    dedupe: bool,
    skip_bad_rows: bool,
    source: String,
}

impl Default for WildChat {
    fn default() -> Self {
        WildChat {
            turns: Turns::First,
            languages: None,
            include_toxic: false,
            include_redacted: false,
            min_turns: None,
            max_turns: None,
            min_chars: None,
            max_chars: None,
            dedupe: true,
            skip_bad_rows: false,
            source: "wildchat".into(),
        }
    }
}

const COLUMNS: &[&str] = &[
    "conversation_hash",
    "model",
    "conversation",
    "turn",
    "language",
    "toxic",
    "redacted",
];

impl WildChat {
    /// First user turn, any language, toxic and redacted conversations excluded, deduped.
    pub fn new() -> Self {
        Self::default()
    }
    /// Which user turns become prompts (default [`Turns::First`]).
    pub fn turns(mut self, turns: Turns) -> Self {
        self.turns = turns;
        self
    }
    /// Keep only these languages (WildChat's names, e.g. "English"; case-insensitive).
    pub fn languages<S: Into<String>>(mut self, languages: impl IntoIterator<Item = S>) -> Self {
        self.languages = Some(
            languages
                .into_iter()
                .map(|s| s.into().to_lowercase())
                .collect(),
        );
        self
    }
    /// Keep conversations and turns flagged `toxic` (excluded by default).
    pub fn include_toxic(mut self, yes: bool) -> Self {
        self.include_toxic = yes;
        self
    }
    /// Keep conversations and turns flagged `redacted` (excluded by default).
    pub fn include_redacted(mut self, yes: bool) -> Self {
        self.include_redacted = yes;
        self
    }
    /// Minimum number of user turns in the conversation (`turn` column).
    pub fn min_turns(mut self, n: u64) -> Self {
        self.min_turns = Some(n);
        self
    }
    /// Maximum number of user turns in the conversation (`turn` column).
    pub fn max_turns(mut self, n: u64) -> Self {
        self.max_turns = Some(n);
        self
    }
    /// Minimum prompt length in characters (after trimming).
    pub fn min_chars(mut self, n: usize) -> Self {
        self.min_chars = Some(n);
        self
    }
    /// Maximum prompt length in characters (after trimming).
    pub fn max_chars(mut self, n: usize) -> Self {
        self.max_chars = Some(n);
        self
    }
    /// Drop prompts whose normalised text was already taken (on by default; see
    /// [`Loader::dedupe`]).
    pub fn dedupe(mut self, yes: bool) -> Self {
        self.dedupe = yes;
        self
    }
    /// Skip (and count) rows that do not fit the schema instead of yielding errors for them (see
    /// [`Loader::skip_bad_rows`]).
    pub fn skip_bad_rows(mut self, yes: bool) -> Self {
        self.skip_bad_rows = yes;
        self
    }
    /// Name in `Record::source` (default `wildchat`).
    pub fn source_name(mut self, name: impl Into<String>) -> Self {
        self.source = name.into();
        self
    }

    /// Opens a file or directory of shards (`.parquet`, `.jsonl`).
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Records, SourceError> {
        self.configure(Loader::new(path))
            .open_with(Box::new(self.clone()))
    }

    /// Opens explicit shard files (e.g. from [`super::HfDataset::cached`]).
    pub fn open_files(&self, files: Vec<std::path::PathBuf>) -> Result<Records, SourceError> {
        self.configure(Loader::from_files(files))
            .open_with(Box::new(self.clone()))
    }

    fn configure(&self, loader: Loader) -> Loader {
        loader
            .source_name(self.source.clone())
            .skip_bad_rows(self.skip_bad_rows)
            .dedupe(self.dedupe)
    }

    fn keep_language(&self, lang: Option<&str>) -> bool {
        match &self.languages {
            None => true,
            Some(langs) => lang.is_some_and(|l| langs.iter().any(|x| *x == l.to_lowercase())),
        }
    }
}

fn flag(m: &Map<String, Value>, key: &str) -> bool {
    matches!(m.get(key), Some(Value::Bool(true)))
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

impl RowMapper for WildChat {
    fn required_columns(&self) -> Vec<String> {
        vec!["conversation_hash".into(), "conversation".into()]
    }

    fn projection(&self) -> Option<Vec<String>> {
        Some(COLUMNS.iter().map(|s| s.to_string()).collect())
    }

    fn map(
        &mut self,
        row: RawRow,
        out: &mut Vec<Record>,
        filtered: &mut u64,
    ) -> Result<(), SourceError> {
        let RawRow {
            path,
            location,
            value,
        } = row;
        let bad = |field: &str, message: String| SourceError::BadField {
            path: path.to_path_buf(),
            location,
            field: field.to_owned(),
            message,
        };
        let missing = |field: &str| SourceError::MissingField {
            path: path.to_path_buf(),
            location,
            field: field.to_owned(),
            available: value.keys().cloned().collect(),
        };
        let hash = match value.get("conversation_hash") {
            None | Some(Value::Null) => return Err(missing("conversation_hash")),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(bad(
                    "conversation_hash",
                    format!("expected a string, found {}", kind(other)),
                ));
            }
        };
        let turns = match value.get("conversation") {
            None | Some(Value::Null) => return Err(missing("conversation")),
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(bad(
                    "conversation",
                    format!("expected a list of turns, found {}", kind(other)),
                ));
            }
        };
        let mut user_turns = Vec::new();
        for (i, t) in turns.iter().enumerate() {
            let Value::Object(t) = t else {
                return Err(bad(
                    &format!("conversation.{i}"),
                    format!("expected a turn object, found {}", kind(t)),
                ));
            };
            if str_of(t, "role") == Some("user") {
                user_turns.push((i, t));
            }
        }
        let turn_count = match value.get("turn") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            _ => user_turns.len() as u64,
        };
        let conv_language = str_of(&value, "language");
        let rejected = (!self.include_toxic && flag(&value, "toxic"))
            || (!self.include_redacted && flag(&value, "redacted"))
            || self.min_turns.is_some_and(|n| turn_count < n)
            || self.max_turns.is_some_and(|n| turn_count > n);
        let wanted = match self.turns {
            Turns::First => 1,
            Turns::All => user_turns.len(),
        };
        if rejected {
            *filtered += wanted.min(user_turns.len()) as u64;
            return Ok(());
        }
        for (n, (i, t)) in user_turns.into_iter().take(wanted).enumerate() {
            let content = match t.get("content") {
                Some(Value::String(s)) => s.trim(),
                None | Some(Value::Null) => "",
                Some(other) => {
                    return Err(bad(
                        &format!("conversation.{i}.content"),
                        format!("expected a string, found {}", kind(other)),
                    ));
                }
            };
            let chars = content.chars().count();
            let language = str_of(t, "language").or(conv_language);
            if content.is_empty()
                || (!self.include_toxic && flag(t, "toxic"))
                || (!self.include_redacted && flag(t, "redacted"))
                || !self.keep_language(language)
                || self.min_chars.is_some_and(|m| chars < m)
                || self.max_chars.is_some_and(|m| chars > m)
            {
                *filtered += 1;
                continue;
            }
            let id = match self.turns {
                Turns::First => hash.clone(),
                Turns::All => format!("{hash}-{n}"),
            };
            let mut extra = Map::new();
            extra.insert(
                "model".into(),
                value.get("model").cloned().unwrap_or(Value::Null),
            );
            extra.insert(
                "language".into(),
                language.map(Value::from).unwrap_or(Value::Null),
            );
            extra.insert("turn".into(), Value::from(turn_count));
            extra.insert("conversation_hash".into(), Value::String(hash.clone()));
            if self.turns == Turns::All {
                extra.insert("turn_index".into(), Value::from(n));
            }
            out.push(Record {
                id,
                prompt: content.to_owned(),
                source: self.source.clone(),
                category: None,
                extra,
            });
        }
        Ok(())
    }
}
