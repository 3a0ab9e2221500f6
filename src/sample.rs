//! What pipelines produce: training samples, their provenance (steps), responses, and per-record errors.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::provider::{ErrorKind, Message, Params, Usage};

/// One training example: an id and a conversation. Provenance is attached by `run_task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSample {
    pub id: String,
    pub messages: Vec<Message>,
    #[serde(skip)]
    pub(crate) provenance: Option<Provenance>,
}

impl TrainingSample {
    pub fn new(id: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            id: id.into(),
            messages,
            provenance: None,
        }
    }

    /// The provenance `run_task` recorded for this sample (input record and steps), if any.
    pub fn steps(&self) -> &[Step] {
        self.provenance
            .as_ref()
            .map(|p| p.steps.as_slice())
            .unwrap_or(&[])
    }
}

/// Where a sample came from: the input record, every inference step, and timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub input_data: serde_json::Value,
    pub steps: Vec<Step>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
}

/// One inference call made by a task, recorded automatically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The model alias.
    pub model: String,
    pub messages: Vec<Message>,
    pub params: Params,
    pub text: String,
    pub success: bool,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub error: Option<StepError>,
    /// Answered from the response cache (no request sent).
    pub cached: bool,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

/// What a task receives for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// Set when the request finally failed (after retries).
    pub error: Option<StepError>,
    pub cached: bool,
}

impl Response {
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
    /// The reply text ("" when the request failed).
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }
    pub fn usage(&self) -> Usage {
        self.usage
    }
    /// `Ok(text)` if the request succeeded, else a `PipelineError` of type `api_error` saying why.
    pub fn ok_text(&self) -> Result<&str, PipelineError> {
        match &self.error {
            None => Ok(&self.text),
            Some(e) => Err(PipelineError::new(
                format!("request failed ({}): {}", e.kind.as_str(), e.message),
                "api_error",
            )),
        }
    }
}

/// `text` cut after its last complete sentence (`.`, `!` or `?`), for replies stopped by
/// `max_tokens` mid-sentence; the whole text when it has no sentence end.
pub fn trim_to_last_sentence(text: &str) -> &str {
    let text = text.trim();
    match text.rfind(['.', '!', '?']) {
        Some(end) if end + 1 < text.len() => text[..=end].trim_end(),
        _ => text,
    }
}

/// Ends one record with an `__ERROR__` record; the run goes on.
///
/// Any `std::error::Error` converts into it (as `unexpected_error`), so `?` works inside tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineError {
    pub message: String,
    pub error_type: String,
    /// Quality-gate reasons, for a record whose candidates were all rejected
    /// (`error_type` [`PipelineError::FILTERED`]); empty otherwise.
    pub reasons: Vec<String>,
}

impl PipelineError {
    /// The error type of a record none of whose candidates passed the quality gate.
    pub const FILTERED: &'static str = "filtered";

    pub fn new(message: impl Into<String>, error_type: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            error_type: error_type.into(),
            reasons: Vec::new(),
        }
    }
    /// A record filtered out by the quality gate: no candidate passed, for these reasons.
    pub fn filtered(message: impl Into<String>, reasons: Vec<String>) -> Self {
        Self {
            message: message.into(),
            error_type: Self::FILTERED.to_owned(),
            reasons,
        }
    }
    /// An error of type `unexpected_error`.
    pub fn unexpected(message: impl Into<String>) -> Self {
        Self::new(message, "unexpected_error")
    }
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for PipelineError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::unexpected(message)
    }
}

/// The line written to `<name>.errors.jsonl` for a record that failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRecord {
    #[serde(rename = "__ERROR__")]
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The error type (`api_error`, `parse_error`, `unexpected_error`, …).
    pub error: String,
    pub message: String,
    /// For `filtered` records: the quality-gate reasons of every rejected candidate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub input_data: serde_json::Value,
    pub steps: Vec<Step>,
    pub pipeline_commit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

/// A sample as written with provenance (`--annotate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotatedSample {
    pub id: String,
    pub messages: Vec<Message>,
    pub input_data: serde_json::Value,
    pub steps: Vec<Step>,
    pub pipeline_commit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
}
