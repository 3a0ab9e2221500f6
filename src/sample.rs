//! What pipelines produce: training samples, their provenance (steps), responses, and per-record errors.
//!
//! A sample line records only what its answers determine: every timestamp comes from the
//! answers (kept in the response cache), never from the clock of the run that writes the line,
//! and per-run facts (cache hits, the commit, run time) live in the manifest. So a run that
//! replays every answer from the cache writes the same bytes as the run that paid for them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cache::CachedReply;
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
    /// When the record's first request was made (`None` for a record without steps).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the record's last answer arrived (`None` for a record without steps).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

impl Provenance {
    /// The provenance of a record: its input and steps, timed by its steps.
    pub fn new(input_data: serde_json::Value, steps: Vec<Step>) -> Self {
        let (started_at, completed_at) = answer_span(&steps);
        Self {
            input_data,
            steps,
            started_at,
            completed_at,
        }
    }
}

/// The earliest request and the latest answer among `steps` (both `None` without steps).
pub fn answer_span(steps: &[Step]) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    (
        steps.iter().map(|s| s.requested_at).min(),
        steps.iter().map(|s| s.answered_at).max(),
    )
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
    /// When the request was made (for a replayed answer: the original request's time).
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// When the answer (or the final failure) arrived (replayed: the original answer's time).
    #[serde(with = "time::serde::rfc3339")]
    pub answered_at: OffsetDateTime,
    /// Answered from the response cache in this run. Not written: it is a fact of the run,
    /// not of the sample (the manifest's run summary counts cache hits), and writing it would
    /// make a replay differ from the run that paid for the answer.
    #[serde(skip)]
    pub cached: bool,
}

impl Step {
    /// The step for a request to model `alias` and its response.
    pub fn record(
        alias: &str,
        messages: Vec<Message>,
        params: Params,
        response: &Response,
    ) -> Self {
        Self {
            model: alias.to_owned(),
            messages,
            params,
            text: response.text.clone(),
            success: response.is_success(),
            finish_reason: response.finish_reason.clone(),
            usage: response.usage,
            error: response.error.clone(),
            requested_at: response.requested_at,
            answered_at: response.answered_at,
            cached: response.cached,
        }
    }
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
    /// Answered from the response cache (no request sent in this run).
    pub cached: bool,
    /// When the request was made; for a cached answer, when the original request was made.
    pub requested_at: OffsetDateTime,
    /// When the answer arrived; for a cached answer, when it originally arrived.
    pub answered_at: OffsetDateTime,
}

impl Response {
    /// A successful answer as stored in the response cache: `cached` says whether it was
    /// replayed from there (true) or just received (false); either way the times are the
    /// entry's, so both give the same step.
    pub fn from_cached(reply: CachedReply, cached: bool) -> Self {
        let (requested_at, answered_at) = reply.times();
        Self {
            text: reply.text,
            finish_reason: reply.finish_reason,
            usage: reply.usage,
            error: None,
            cached,
            requested_at,
            answered_at,
        }
    }

    /// A request that finally failed, requested and failed at the given times.
    pub fn failed(
        error: StepError,
        requested_at: OffsetDateTime,
        answered_at: OffsetDateTime,
    ) -> Self {
        Self {
            text: String::new(),
            finish_reason: None,
            usage: Usage::default(),
            error: Some(error),
            cached: false,
            requested_at,
            answered_at,
        }
    }

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
                PipelineErrorKind::Api,
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
/// Any `std::error::Error` converts into it (as [`PipelineErrorKind::Unexpected`]), so `?` works
/// inside tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineError {
    pub message: String,
    pub kind: PipelineErrorKind,
    /// Quality-gate reasons, for a record whose candidates were all rejected
    /// ([`PipelineErrorKind::Filtered`]); empty otherwise.
    pub reasons: Vec<String>,
}

/// What kind of failure ended a record: the `error` field of its `__ERROR__` line.
///
/// Each kind is written as the string shown on it; a pipeline may name kinds of its own
/// ([`PipelineErrorKind::Custom`]), written as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PipelineErrorKind {
    /// `api_error`: a request failed after its retries.
    Api,
    /// `parse_error`: a reply could not be used.
    Parse,
    /// `filtered`: no candidate passed the quality gate (a quality rejection, not a fault).
    Filtered,
    /// `interrupted`: the run was stopped before the record finished.
    Interrupted,
    /// `output_error`: the record could not be written.
    Output,
    /// `unexpected_error`: any other error, e.g. one converted by `?`.
    Unexpected,
    /// A kind named by the pipeline itself.
    Custom(String),
}

impl PipelineErrorKind {
    /// The kinds the library writes, with their strings.
    const NAMED: [(PipelineErrorKind, &'static str); 6] = [
        (Self::Api, "api_error"),
        (Self::Parse, "parse_error"),
        (Self::Filtered, "filtered"),
        (Self::Interrupted, "interrupted"),
        (Self::Output, "output_error"),
        (Self::Unexpected, "unexpected_error"),
    ];

    /// The string written to the errors file.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Custom(name) => name,
            named => Self::NAMED
                .iter()
                .find(|(kind, _)| kind == named)
                .map(|(_, name)| *name)
                .expect("every named kind has a string"),
        }
    }
}

impl From<&str> for PipelineErrorKind {
    /// The kind a string names: one of the library's, else [`PipelineErrorKind::Custom`].
    fn from(name: &str) -> Self {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(kind, _)| kind.clone())
            .unwrap_or_else(|| Self::Custom(name.to_owned()))
    }
}

impl From<String> for PipelineErrorKind {
    fn from(name: String) -> Self {
        Self::from(name.as_str())
    }
}

impl std::fmt::Display for PipelineErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PipelineErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PipelineErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(deserializer)?))
    }
}

impl PipelineError {
    pub fn new(message: impl Into<String>, kind: impl Into<PipelineErrorKind>) -> Self {
        Self {
            message: message.into(),
            kind: kind.into(),
            reasons: Vec::new(),
        }
    }
    /// A record filtered out by the quality gate: no candidate passed, for these reasons.
    pub fn filtered(message: impl Into<String>, reasons: Vec<String>) -> Self {
        Self {
            message: message.into(),
            kind: PipelineErrorKind::Filtered,
            reasons,
        }
    }
    /// An error of kind [`PipelineErrorKind::Unexpected`].
    pub fn unexpected(message: impl Into<String>) -> Self {
        Self::new(message, PipelineErrorKind::Unexpected)
    }
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
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

impl ErrorRecord {
    /// The error record of a record that ended with `failure` after `steps`.
    pub fn new(failure: PipelineError, input_data: serde_json::Value, steps: Vec<Step>) -> Self {
        let failed_at = answer_span(&steps).1;
        Self {
            error: ErrorDetail {
                error: failure.kind,
                message: failure.message,
                reasons: failure.reasons,
                input_data,
                steps,
                failed_at,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The kind of failure (`api_error`, `parse_error`, `unexpected_error`, …).
    pub error: PipelineErrorKind,
    pub message: String,
    /// For `filtered` records: the quality-gate reasons of every rejected candidate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub input_data: serde_json::Value,
    pub steps: Vec<Step>,
    /// When the record's last answer (or failed request) arrived: the failure follows from
    /// it. Absent when the record failed before any request.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub failed_at: Option<OffsetDateTime>,
}

/// A sample as written with provenance (`--annotate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotatedSample {
    pub id: String,
    pub messages: Vec<Message>,
    pub input_data: serde_json::Value,
    pub steps: Vec<Step>,
    /// When the first request of the record was made; absent for a record without steps.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// When the last answer of the record arrived; absent for a record without steps.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub completed_at: Option<OffsetDateTime>,
}

impl From<TrainingSample> for AnnotatedSample {
    /// The annotated form of a sample; one made outside `run_task` has no input or steps.
    fn from(sample: TrainingSample) -> Self {
        let provenance = sample
            .provenance
            .unwrap_or_else(|| Provenance::new(serde_json::Value::Null, Vec::new()));
        Self {
            id: sample.id,
            messages: sample.messages,
            input_data: provenance.input_data,
            steps: provenance.steps,
            started_at: provenance.started_at,
            completed_at: provenance.completed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated_line(response: &Response) -> String {
        let params = Params {
            temperature: Some(0.5),
            ..Params::default()
        };
        let step = Step::record("m", vec![Message::user("q")], params, response);
        let mut sample = TrainingSample::new(
            "r-1",
            vec![Message::user("q"), Message::assistant(response.text())],
        );
        sample.provenance = Some(Provenance::new(
            serde_json::json!({"id": "r-1", "prompt": "q"}),
            vec![step],
        ));
        serde_json::to_string(&AnnotatedSample::from(sample)).expect("sample serializes")
    }

    #[test]
    fn a_replayed_answer_gives_the_same_annotated_line_as_the_paid_one() {
        let requested = OffsetDateTime::now_utc();
        let received = requested + time::Duration::milliseconds(1_234);
        let usage = Usage {
            input_tokens: 5,
            output_tokens: 7,
        };
        let entry = CachedReply::new(
            "the answer".to_owned(),
            Some("stop".to_owned()),
            usage,
            requested,
            received,
        );
        let paid = Response::from_cached(entry.clone(), false);
        // The entry as the cache hands it back: through its stored JSON.
        let stored: CachedReply =
            serde_json::from_slice(&serde_json::to_vec(&entry).expect("serializes"))
                .expect("decodes");
        let replayed = Response::from_cached(stored, true);
        assert!(!paid.cached && replayed.cached);

        let (paid_line, replayed_line) = (annotated_line(&paid), annotated_line(&replayed));
        assert_eq!(paid_line, replayed_line);
        assert!(!paid_line.contains("cached"), "{paid_line}");
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .expect("formats")
        };
        assert!(
            paid_line.contains(&format!(
                r#""started_at":"{}","completed_at":"{}""#,
                rfc3339(requested),
                rfc3339(received)
            )),
            "{paid_line}"
        );
    }

    #[test]
    fn error_kinds_are_written_as_their_strings_and_read_back() {
        for name in [
            "api_error",
            "parse_error",
            "filtered",
            "interrupted",
            "output_error",
            "unexpected_error",
            "refused_by_pipeline",
        ] {
            let kind = PipelineErrorKind::from(name);
            assert_eq!(kind.as_str(), name);
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{name}\""));
            let back: PipelineErrorKind = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, kind);
        }
        assert_eq!(
            PipelineErrorKind::from("filtered"),
            PipelineErrorKind::Filtered
        );
        assert_eq!(
            PipelineErrorKind::from("refused_by_pipeline"),
            PipelineErrorKind::Custom("refused_by_pipeline".into())
        );
    }

    #[test]
    fn records_are_timed_by_their_steps_and_untimed_without_any() {
        let t = |s: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).expect("time");
        let answer = |requested: i64, answered: i64| {
            Response::from_cached(
                CachedReply::new(
                    "a".into(),
                    None,
                    Usage::default(),
                    t(requested),
                    t(answered),
                ),
                true,
            )
        };
        let steps: Vec<Step> = [answer(5, 9), answer(2, 4), answer(6, 7)]
            .iter()
            .map(|r| Step::record("m", Vec::new(), Params::default(), r))
            .collect();
        assert_eq!(answer_span(&steps), (Some(t(2)), Some(t(9))));

        let failure = || PipelineError::new("bad reply", PipelineErrorKind::Parse);
        let failed = ErrorRecord::new(failure(), serde_json::Value::Null, steps);
        assert_eq!(failed.error.failed_at, Some(t(9)));
        let early = ErrorRecord::new(failure(), serde_json::Value::Null, Vec::new());
        let line = serde_json::to_string(&early).expect("serializes");
        assert!(!line.contains("failed_at"), "{line}");

        let bare = AnnotatedSample::from(TrainingSample::new("x", Vec::new()));
        let line = serde_json::to_string(&bare).expect("serializes");
        assert_eq!(
            line,
            r#"{"id":"x","messages":[],"input_data":null,"steps":[]}"#
        );
    }
}
