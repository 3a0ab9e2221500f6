//! Streaming readers for dataset lines (`<name>.jsonl`) and error lines (`<name>.errors.jsonl`).
//!
//! Lines are read through the writer's own types, [`crate::format::SampleLine`] (a
//! conversation, [`crate::format::ChatLine`], or a preference pair,
//! [`crate::format::PreferenceLine`]) and [`crate::format::ErrorLine`], which say what is lenient
//! (a `content` that is not a string is kept as its JSON text, an id may be a number, unknown
//! fields are ignored) and what is strict: every line must be a JSON object with an `id` and a
//! `messages` array, or `prompt`, `chosen` and `rejected`. Any failure names the file and line
//! (and the record, when it has an id: `x.jsonl:3: record 'p-7': missing field `rejected``).
//! Shape rules (roles in order, a final answer) are not the readers' business: the detectors
//! report them per sample.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{QualityError, Result};
use crate::format::{ChatLine, ErrorDetail, ErrorLine, SampleLine};

/// Read dataset lines one at a time: `(line number, record)`. Blank lines are skipped.
pub fn read_records(path: &Path) -> Result<JsonlReader<ChatLine>> {
    JsonlReader::open(path, |value, _| serde_json::from_value(value))
}

/// Read dataset lines of either kind one at a time: `(line number, sample)`. Blank lines are
/// skipped.
pub fn read_samples(path: &Path) -> Result<JsonlReader<SampleLine>> {
    JsonlReader::open(path, |value, _| SampleLine::from_value(value))
}

/// Read any JSONL of samples (conversations or preference pairs) one line at a time: like
/// [`read_samples`], but a line without an `id` gets `line-<n>` (data from elsewhere often has
/// none).
pub fn read_any_samples(path: &Path) -> Result<JsonlReader<SampleLine>> {
    JsonlReader::open(path, |mut value, line| {
        with_line_id(&mut value, line);
        SampleLine::from_value(value)
    })
}

/// Gives a line without an `id` the id `line-<n>`.
fn with_line_id(value: &mut Value, line: u64) {
    if let Value::Object(map) = value
        && !map.contains_key("id")
    {
        map.insert("id".to_owned(), Value::String(format!("line-{line}")));
    }
}

/// Read any chat JSONL one line at a time: like [`read_records`], but a line without an `id` gets
/// `line-<n>` (chat data from elsewhere often has none). Every line must still be an object with
/// a `messages` array; anything else is an error naming the line.
pub fn read_chat_records(path: &Path) -> Result<JsonlReader<ChatLine>> {
    JsonlReader::open(path, |mut value, line| {
        with_line_id(&mut value, line);
        serde_json::from_value(value)
    })
}

/// Read error lines one at a time: `(line number, error)`. Blank lines are skipped.
pub fn read_errors(path: &Path) -> Result<JsonlReader<ErrorDetail>> {
    JsonlReader::open(path, |value, _| {
        serde_json::from_value::<ErrorLine>(value).map(|line| line.error)
    })
}

/// Turns a line's JSON value (and its line number) into an item.
type Convert<T> = fn(Value, u64) -> serde_json::Result<T>;

/// An iterator over the JSON lines of a file; see [`read_records`].
pub struct JsonlReader<T> {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: String,
    done: bool,
    convert: Convert<T>,
    _marker: PhantomData<T>,
}

impl<T: DeserializeOwned> JsonlReader<T> {
    fn open(path: &Path, convert: Convert<T>) -> Result<Self> {
        let file = File::open(path).map_err(|source| QualityError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(file),
            line: 0,
            buf: String::new(),
            done: false,
            convert,
            _marker: PhantomData,
        })
    }

    fn fail(&mut self, error: QualityError) -> Option<Result<(u64, T)>> {
        self.done = true;
        Some(Err(error))
    }
}

impl<T: DeserializeOwned> Iterator for JsonlReader<T> {
    type Item = Result<(u64, T)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            self.line += 1;
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) if self.buf.trim().is_empty() => continue,
                Ok(_) => {
                    let line = self.line;
                    let value: Value = match serde_json::from_str(&self.buf) {
                        Ok(value) => value,
                        Err(source) => {
                            return self.fail(QualityError::Json {
                                path: self.path.clone(),
                                line,
                                source,
                            });
                        }
                    };
                    if !value.is_object() {
                        return self.fail(QualityError::Invalid {
                            path: self.path.clone(),
                            line,
                            message: "expected a JSON object".to_owned(),
                        });
                    }
                    return match (self.convert)(value, line) {
                        Ok(record) => Some(Ok((line, record))),
                        Err(e) => self.fail(QualityError::Invalid {
                            path: self.path.clone(),
                            line,
                            message: e.to_string(),
                        }),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let line = self.line;
                    return self.fail(QualityError::Invalid {
                        path: self.path.clone(),
                        line,
                        message: "not valid UTF-8".to_owned(),
                    });
                }
                Err(source) => {
                    return self.fail(QualityError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        None
    }
}
