//! Streaming readers for dataset lines (`<name>.jsonl`) and error lines (`<name>.errors.jsonl`).
//!
//! Parsing is lenient where the format allows variation (a `content` that is not a string is kept
//! as its JSON text, an id may be a number) and strict where it matters: every line must be a JSON
//! object with an `id` and a `messages` array, and any failure names the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{QualityError, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub role: String,
    /// The text (a non-string content is kept as its JSON text).
    #[serde(default, deserialize_with = "lenient_string")]
    pub content: String,
}

/// Token usage of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// The error of a failed step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepError {
    pub kind: String,
    pub message: String,
}

impl<'de> Deserialize<'de> for StepError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Object(map) => StepError {
                kind: map.get("kind").map(value_text).unwrap_or_default(),
                message: map.get("message").map(value_text).unwrap_or_default(),
            },
            other => StepError {
                kind: "error".to_owned(),
                message: value_text(&other),
            },
        })
    }
}

/// One model call of an annotated sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    /// The model alias.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub model: Option<String>,
    /// The messages sent.
    #[serde(deserialize_with = "null_default")]
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters, as recorded.
    pub params: Option<Value>,
    /// The text returned.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub text: Option<String>,
    pub success: Option<bool>,
    /// `stop`, `length`, or absent.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub finish_reason: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub usage: Usage,
    pub error: Option<StepError>,
    pub cached: Option<bool>,
}

/// One dataset line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub messages: Vec<ChatMessage>,
    /// The record the pipeline processed (annotated datasets).
    #[serde(default)]
    pub input_data: Option<Value>,
    /// The model calls that made this sample (annotated datasets).
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    #[serde(default)]
    pub pipeline_commit: Option<Value>,
    #[serde(default)]
    pub started_at: Option<Value>,
    #[serde(default)]
    pub completed_at: Option<Value>,
}

/// The first user message's content, or `""`: a sample's prompt.
pub fn first_user(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// The last assistant message's content, or `""`: a sample's response.
pub fn last_assistant(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "assistant")
        .map_or("", |m| m.content.as_str())
}

impl Record {
    /// The first user message's content, or `""`.
    pub fn prompt(&self) -> &str {
        first_user(&self.messages)
    }

    /// The last assistant message's content, or `""`.
    pub fn response(&self) -> &str {
        last_assistant(&self.messages)
    }

    /// The system message's content, if any.
    pub fn system(&self) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.role == "system")
            .map(|m| m.content.as_str())
    }

    /// `input_data.source` as text, or `"unknown"`.
    pub fn source(&self) -> String {
        self.input_field("source")
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// `input_data.category` as text, if present.
    pub fn category(&self) -> Option<String> {
        self.input_field("category")
    }

    /// Whether the line carries annotations (`input_data` or `steps`).
    pub fn is_annotated(&self) -> bool {
        self.input_data.is_some() || self.steps.is_some()
    }

    /// The steps (empty for a minimal record).
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or(&[])
    }

    /// The step that produced the final response: the last step whose text is the response
    /// (ignoring surrounding whitespace), else the last step.
    pub fn final_step(&self) -> Option<&Step> {
        let response = self.response().trim();
        let steps = self.steps();
        steps
            .iter()
            .rev()
            .find(|s| s.text.as_deref().is_some_and(|t| t.trim() == response))
            .or_else(|| steps.last())
    }

    fn input_field(&self, key: &str) -> Option<String> {
        match self.input_data.as_ref()?.get(key)? {
            Value::Null => None,
            value => Some(value_text(value)),
        }
    }
}

/// The payload of one line of `<name>.errors.jsonl` (`{"__ERROR__": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The error type.
    #[serde(default, deserialize_with = "lenient_string")]
    pub error: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub message: String,
    #[serde(default)]
    pub input_data: Option<Value>,
    #[serde(default)]
    pub steps: Option<Value>,
    #[serde(default)]
    pub pipeline_commit: Option<Value>,
    #[serde(default)]
    pub failed_at: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorLine {
    #[serde(rename = "__ERROR__")]
    error: ErrorRecord,
}

/// Read dataset lines one at a time: `(line number, record)`. Blank lines are skipped.
pub fn read_records(path: &Path) -> Result<JsonlReader<Record>> {
    JsonlReader::open(path, |value, _| serde_json::from_value(value))
}

/// Read any chat JSONL one line at a time: like [`read_records`], but a line without an `id` gets
/// `line-<n>` (chat data from elsewhere often has none). Every line must still be an object with
/// a `messages` array; anything else is an error naming the line.
pub fn read_chat_records(path: &Path) -> Result<JsonlReader<Record>> {
    JsonlReader::open(path, |mut value, line| {
        if let Value::Object(map) = &mut value
            && !map.contains_key("id")
        {
            map.insert("id".to_owned(), Value::String(format!("line-{line}")));
        }
        serde_json::from_value(value)
    })
}

/// Read error lines one at a time: `(line number, error)`. Blank lines are skipped.
pub fn read_errors(path: &Path) -> Result<JsonlReader<ErrorRecord>> {
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

/// The text of a JSON value: a string as is, `null` as `""`, anything else as JSON.
pub(crate) fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<String, D::Error> {
    Ok(value_text(&Value::deserialize(deserializer)?))
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => None,
        other => Some(value_text(&other)),
    })
}

fn null_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn id_string<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "\"id\" must be a string, got {other}"
        ))),
    }
}
