//! What pipelines produce: training samples, their provenance (steps), responses, and per-record errors.
//!
//! A sample line records only what its answers determine: every timestamp comes from the
//! answers (kept in the response cache), never from the clock of the run that writes the line,
//! and per-run facts (cache hits, the commit, run time) live in the manifest. So a run that
//! replays every answer from the cache writes the same bytes as the run that paid for them.
//!
//! The lines themselves (samples, steps, error records) are the types of [`crate::format`]; this
//! module makes them from what a run produces.

use time::OffsetDateTime;

use std::collections::BTreeMap;

use crate::cache::CachedReply;
use crate::format::{ChatLine, ErrorLine, Message, Params, PreferenceLine, SampleLine, Usage};

/// The line types a run's samples and errors are written as, defined with the line formats.
pub use crate::format::{
    PipelineErrorKind, Provenance, SampleKind, ShapeError, Step, StepError, answer_span,
};

/// What a pipeline's output holds: [`TrainingSample`] (conversations) or [`PreferenceSample`]
/// (pairs). A pipeline names its kind with `type Sample` ([`crate::Pipeline::Sample`]); the run
/// records [`Sample::KIND`] in the description and the manifest, and checks every sample's
/// shape ([`Sample::check`]) before writing it.
pub trait Sample: Send + 'static + sealed::Sealed {
    /// The kind written to the description and manifest.
    const KIND: SampleKind;
    /// The sample's id.
    fn id(&self) -> &str;
    /// Whether the sample keeps the shape trainers need (see [`crate::format::check_conversation`]).
    fn check(&self) -> Result<(), ShapeError>;
    /// The steps `run_task` recorded for it (empty for one made outside a task).
    fn steps(&self) -> &[Step];
    /// Attaches the record's input and steps (done by `run_task`).
    #[doc(hidden)]
    fn attach(&mut self, provenance: Provenance);
    /// The line written for it: annotated with its provenance, or minimal.
    fn into_line(self, annotate: bool) -> SampleLine;
}

mod sealed {
    /// Only the library's sample kinds are samples: readers, checks and exports know each one.
    pub trait Sealed {}
    impl Sealed for super::TrainingSample {}
    impl Sealed for super::PreferenceSample {}
}

/// The provenance written for a sample: its own when annotated (an empty one for a sample made
/// outside a task), none when minimal.
fn provenance_for(provenance: Option<Provenance>, annotate: bool) -> Provenance {
    if annotate {
        provenance.unwrap_or_else(|| Provenance::new(serde_json::Value::Null, Vec::new()))
    } else {
        Provenance::default()
    }
}

/// One training example: an id and a conversation. Provenance is attached by `run_task`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSample {
    /// The sample's id, written as the line's `id` (usually the input record's id).
    pub id: String,
    /// The conversation to train on.
    pub messages: Vec<Message>,
    pub(crate) provenance: Option<Provenance>,
}

impl TrainingSample {
    /// A sample `id` of `messages`, without provenance.
    pub fn new(id: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            id: id.into(),
            messages,
            provenance: None,
        }
    }

    /// The steps `run_task` recorded for this sample (empty for one made outside it).
    pub fn steps(&self) -> &[Step] {
        self.provenance.as_ref().map_or(&[], Provenance::steps)
    }

    /// The line written for this sample: annotated (`--annotate`) with its provenance (a sample
    /// made outside `run_task` has no input or steps), else minimal.
    pub fn into_line(self, annotate: bool) -> ChatLine {
        ChatLine {
            id: self.id,
            messages: self.messages,
            provenance: provenance_for(self.provenance, annotate),
        }
    }
}

impl Sample for TrainingSample {
    const KIND: SampleKind = SampleKind::Chat;
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self) -> Result<(), ShapeError> {
        crate::format::check_conversation(&self.messages)
    }
    fn steps(&self) -> &[Step] {
        TrainingSample::steps(self)
    }
    fn attach(&mut self, provenance: Provenance) {
        self.provenance = Some(provenance);
    }
    fn into_line(self, annotate: bool) -> SampleLine {
        SampleLine::Chat(TrainingSample::into_line(self, annotate))
    }
}

/// One preference pair: the same `prompt` answered twice, `chosen` preferred over `rejected`
/// (written in TRL's conversational preference format, see [`PreferenceLine`]). Provenance is
/// attached by `run_task`: every step of both answers.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceSample {
    /// The sample's id, written as the line's `id`.
    pub id: String,
    /// The conversation both answers reply to: optional system message, ending on a user turn.
    pub prompt: Vec<Message>,
    /// The answer to prefer (an assistant message).
    pub chosen: Message,
    /// The answer not to prefer (an assistant message).
    pub rejected: Message,
    /// Optional scores (e.g. voice markers of each answer), written as `scores`.
    pub scores: BTreeMap<String, f64>,
    pub(crate) provenance: Option<Provenance>,
}

impl PreferenceSample {
    /// A pair `id`: `prompt` answered by `chosen` (preferred) and `rejected`, the answers'
    /// texts made assistant messages.
    pub fn new(
        id: impl Into<String>,
        prompt: Vec<Message>,
        chosen: impl Into<String>,
        rejected: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            prompt,
            chosen: Message::assistant(chosen),
            rejected: Message::assistant(rejected),
            scores: BTreeMap::new(),
            provenance: None,
        }
    }
    /// Adds a score (kept in key order).
    pub fn score(mut self, name: impl Into<String>, value: f64) -> Self {
        self.scores.insert(name.into(), value);
        self
    }
    /// The line written for this pair: annotated with its provenance, else minimal.
    pub fn into_line(self, annotate: bool) -> PreferenceLine {
        PreferenceLine {
            id: self.id,
            prompt: self.prompt,
            chosen: vec![self.chosen],
            rejected: vec![self.rejected],
            scores: (!self.scores.is_empty()).then_some(self.scores),
            provenance: provenance_for(self.provenance, annotate),
        }
    }
}

impl Sample for PreferenceSample {
    const KIND: SampleKind = SampleKind::Preference;
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self) -> Result<(), ShapeError> {
        PreferenceSample::into_line(self.clone(), false).check()
    }
    fn steps(&self) -> &[Step] {
        self.provenance.as_ref().map_or(&[], Provenance::steps)
    }
    fn attach(&mut self, provenance: Provenance) {
        self.provenance = Some(provenance);
    }
    fn into_line(self, annotate: bool) -> SampleLine {
        SampleLine::Preference(PreferenceSample::into_line(self, annotate))
    }
}

/// What a task receives for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The reply text (`""` when the request failed).
    pub text: String,
    /// Why generation stopped (`stop`, `length`, …); `None` when the request failed or the
    /// provider did not say.
    pub finish_reason: Option<String>,
    /// The request's token counts (0 when it failed).
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

    /// Whether the request got an answer (no `error`).
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
    /// The step that records this response to a request to model `alias`.
    pub fn step(&self, alias: &str, messages: Vec<Message>, params: Params) -> Step {
        Step {
            model: alias.to_owned(),
            messages,
            params,
            text: self.text.clone(),
            success: Some(self.is_success()),
            finish_reason: self.finish_reason.clone(),
            usage: Some(self.usage),
            error: self.error.clone(),
            requested_at: Some(self.requested_at),
            answered_at: Some(self.answered_at),
            cached: self.cached,
        }
    }
    /// The reply text ("" when the request failed).
    pub fn text(&self) -> &str {
        &self.text
    }
    /// Why generation stopped (`stop`, `length`, …), if known.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }
    /// The request's token counts.
    pub fn usage(&self) -> Usage {
        self.usage
    }
    /// `Ok(text)` if the request succeeded, else a `PipelineError` of type `api_error` saying why.
    pub fn ok_text(&self) -> Result<&str, PipelineError> {
        match &self.error {
            None => Ok(&self.text),
            Some(e) => Err(PipelineError::new(
                format!("request failed ({}): {}", e.kind, e.message),
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
    /// What went wrong, in words (the line's `message`).
    pub message: String,
    /// The kind of failure (the line's `error`).
    pub kind: PipelineErrorKind,
    /// Quality-gate reasons, for a record whose candidates were all rejected
    /// ([`PipelineErrorKind::Filtered`]); empty otherwise.
    pub reasons: Vec<String>,
}

impl PipelineError {
    /// An error of `kind` (a [`PipelineErrorKind`] or its string) saying `message`, without
    /// reasons.
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
    /// The `__ERROR__` line of a record that ended with this error after `steps`.
    pub fn into_line(self, input_data: serde_json::Value, steps: Vec<Step>) -> ErrorLine {
        ErrorLine::new(self.kind, self.message, self.reasons, input_data, steps)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated_line(response: &Response) -> String {
        let params = Params {
            temperature: Some(0.5),
            ..Params::default()
        };
        let step = response.step("m", vec![Message::user("q")], params);
        let mut sample = TrainingSample::new(
            "r-1",
            vec![Message::user("q"), Message::assistant(response.text())],
        );
        sample.provenance = Some(Provenance::new(
            serde_json::json!({"id": "r-1", "prompt": "q"}),
            vec![step],
        ));
        serde_json::to_string(&sample.into_line(true)).expect("sample serializes")
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
            .map(|r| r.step("m", Vec::new(), Params::default()))
            .collect();
        assert_eq!(answer_span(&steps), (Some(t(2)), Some(t(9))));

        let failure = || PipelineError::new("bad reply", PipelineErrorKind::Parse);
        let failed = failure().into_line(serde_json::Value::Null, steps);
        assert_eq!(failed.error.failed_at, Some(t(9)));
        let early = failure().into_line(serde_json::Value::Null, Vec::new());
        let line = serde_json::to_string(&early).expect("serializes");
        assert!(!line.contains("failed_at"), "{line}");

        let bare = TrainingSample::new("x", Vec::new());
        let line = serde_json::to_string(&bare.clone().into_line(true)).expect("serializes");
        assert_eq!(
            line,
            r#"{"id":"x","messages":[],"input_data":null,"steps":[]}"#
        );
        let line = serde_json::to_string(&bare.into_line(false)).expect("serializes");
        assert_eq!(line, r#"{"id":"x","messages":[]}"#);
    }
}
