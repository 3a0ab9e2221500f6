//! The serde types of every JSONL line the project writes or reads: chat samples (minimal and annotated), their steps, and `__ERROR__` records.
//!
//! One definition for the writer (`sample` and the run's sink serialise through these types)
//! and for every reader (`quality`, the judge, deserialising through the same types).
//!
//! **Writing is exact.** Field order, the fields left out when empty and number formatting are
//! those of the committed datasets; a test re-serialises every line of `training/data/` and
//! compares bytes, so a lost, renamed or reordered field fails it.
//!
//! **Reading is lenient where lines from elsewhere differ** (chat JSONL of other tools, lines of
//! older versions): unknown fields are ignored, a field this library always writes may be absent
//! or `null` when read (hence the `Option`s below, which the writer always fills), a text that is
//! not a string is kept as its JSON text, an id may be a number, a time that is not RFC 3339
//! reads as unknown. It stays strict where a line would mean nothing: a sample needs an `id`
//! and a `messages` array, an error line its `__ERROR__` object.
//!
//! A sample line of today is a [`ChatLine`] (supervised chat: `messages`), annotated or not by
//! its [`Provenance`]; other sample kinds (preference pairs) get a line type of their own beside
//! it, sharing [`Provenance`], [`Step`] and [`Message`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;

use super::lenient::{self, value_text};

/// One chat message, as it appears in training samples and provider requests.
///
/// Read leniently: a missing or `null` role or content is `""`, a content that is not a string
/// (a list of parts, say) is kept as its JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub role: String,
    /// The message's text.
    #[serde(default, deserialize_with = "lenient::string")]
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    /// A `system` message (the model's instructions).
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` message (a prompt).
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` message (a reply).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The first user message's content, or `""`: a sample's prompt.
pub fn first_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// The last assistant message's content, or `""`: a sample's response.
pub fn last_assistant(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "assistant")
        .map_or("", |m| m.content.as_str())
}

/// Sampling parameters of one request. `None` means "the model's default from models.toml".
///
/// Unknown keys are refused (in `models.toml` one is a typo); a step's `params` are read through
/// a lenient reader that ignores them instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Sampling temperature; 0 or below samples greedily on the local model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling: draw only from the most likely tokens whose probabilities add up to
    /// this (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most tokens the reply may have; a reply cut there finishes with `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Strings that end the reply where they are generated (left out of the text); empty for
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// The sampling seed (sent to OpenAI-compatible APIs; Anthropic's API takes none). When
    /// `None`, the local model uses a seed derived from the record and step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// A JSON schema the reply must satisfy (OpenAI `response_format`, a grammar locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
}

impl Params {
    /// The keys of the serialised form (a test checks them against the struct).
    pub const FIELDS: &'static [&'static str] = &[
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "seed",
        "json_schema",
    ];

    /// Fill every unset field from `defaults`.
    pub fn or(mut self, defaults: &Params) -> Params {
        self.temperature = self.temperature.or(defaults.temperature);
        self.top_p = self.top_p.or(defaults.top_p);
        self.max_tokens = self.max_tokens.or(defaults.max_tokens);
        if self.stop.is_empty() {
            self.stop = defaults.stop.clone();
        }
        self.seed = self.seed.or(defaults.seed);
        if self.json_schema.is_none() {
            self.json_schema = defaults.json_schema.clone();
        }
        self
    }
}

/// Token counts reported (or, for local models, counted) for one request. A count that is
/// absent or `null` when read is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub input_tokens: u64,
    /// Tokens of the generated reply.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub output_tokens: u64,
}

/// Why a step failed: the `error` of a step line.
///
/// `kind` is the provider's failure class as written (`rate_limited`, `server_error`, …; see
/// `provider::ErrorKind::as_str`), kept as text so a reader accepts the kinds of any version. A
/// step error written as a bare value (`"error": "boom"`) reads as kind `error` with that text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepError {
    /// The failure class, e.g. `rate_limited` or `server_error` (`error` for a bare value).
    pub kind: String,
    /// What went wrong, in words (e.g. `HTTP 503`).
    pub message: String,
}

impl StepError {
    /// An error of class `kind` saying `message`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl<'de> Deserialize<'de> for StepError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
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

/// One inference call made by a task, recorded automatically: an element of a line's `steps`.
///
/// The library writes every field; the `Option`s are for reading lines that lack one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The model alias.
    #[serde(default, deserialize_with = "lenient::string")]
    pub model: String,
    /// The messages sent.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub messages: Vec<Message>,
    /// The resolved sampling parameters.
    #[serde(default, deserialize_with = "lenient::params")]
    pub params: Params,
    /// The text returned (`""` for a failed request).
    #[serde(default, deserialize_with = "lenient::string")]
    pub text: String,
    /// Whether the request got an answer (`false` when `error` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// `stop`, `length`, or `null`.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub finish_reason: Option<String>,
    /// The request's token counts (all 0 for a failed request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why the request failed (`null` when it succeeded).
    #[serde(default)]
    pub error: Option<StepError>,
    /// When the request was made (for a replayed answer: the original request's time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "lenient::rfc3339"
    )]
    pub requested_at: Option<OffsetDateTime>,
    /// When the answer (or the final failure) arrived (replayed: the original answer's time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "lenient::rfc3339"
    )]
    pub answered_at: Option<OffsetDateTime>,
    /// Answered from the response cache in this run. Not written: it is a fact of the run, not
    /// of the sample (the manifest's run summary counts cache hits), and writing it would make a
    /// replay differ from the run that paid for the answer. Lines of older versions carry it,
    /// and it is read from them.
    #[serde(default, skip_serializing, deserialize_with = "lenient::null_default")]
    pub cached: bool,
}

/// The earliest request and the latest answer among `steps` (both `None` without timed steps).
pub fn answer_span(steps: &[Step]) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    (
        steps.iter().filter_map(|s| s.requested_at).min(),
        steps.iter().filter_map(|s| s.answered_at).max(),
    )
}

/// Where a sample came from, the annotation of an annotated line (`--annotate`): the input
/// record, every inference step, and the span of its answers. All absent in a minimal line.
///
/// Written inline in the sample's object (after its own fields), in this order; `started_at`
/// and `completed_at` are left out for a record without steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The record the pipeline processed (`null` for a sample made outside a task).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::present"
    )]
    pub input_data: Option<Value>,
    /// The model calls that made this sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// When the record's first request was made.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "lenient::rfc3339"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// When the record's last answer arrived.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "lenient::rfc3339"
    )]
    pub completed_at: Option<OffsetDateTime>,
}

impl Provenance {
    /// The provenance of a record: its input and steps, timed by its steps.
    pub fn new(input_data: Value, steps: Vec<Step>) -> Self {
        let (started_at, completed_at) = answer_span(&steps);
        Self {
            input_data: Some(input_data),
            steps: Some(steps),
            started_at,
            completed_at,
        }
    }

    /// Whether there is any annotation (`input_data` or `steps`).
    pub fn is_annotated(&self) -> bool {
        self.input_data.is_some() || self.steps.is_some()
    }

    /// The steps (empty for a minimal line).
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or(&[])
    }
}

/// One line of a chat dataset (`<name>.jsonl`): a supervised sample, `{"id", "messages"}`,
/// followed in the annotated form by its [`Provenance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLine {
    /// The record's id (a number is read as its digits).
    #[serde(deserialize_with = "lenient::id")]
    pub id: String,
    /// The conversation: the training example itself.
    pub messages: Vec<Message>,
    /// The annotation, written after `messages` (all fields absent in a minimal line).
    #[serde(flatten)]
    pub provenance: Provenance,
}

impl ChatLine {
    /// A minimal line: id and messages only.
    pub fn minimal(id: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            id: id.into(),
            messages,
            provenance: Provenance::default(),
        }
    }

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

    /// Whether the line carries annotations (`input_data` or `steps`).
    pub fn is_annotated(&self) -> bool {
        self.provenance.is_annotated()
    }

    /// The steps (empty for a minimal line).
    pub fn steps(&self) -> &[Step] {
        self.provenance.steps()
    }

    /// The step that produced the final response: the last step whose text is the response
    /// (ignoring surrounding whitespace), else the last step.
    pub fn final_step(&self) -> Option<&Step> {
        let response = self.response().trim();
        let steps = self.steps();
        steps
            .iter()
            .rev()
            .find(|s| s.text.trim() == response)
            .or_else(|| steps.last())
    }

    /// `input_data.<key>` as text (a non-string as its JSON text); `None` when absent or `null`.
    pub fn input_text(&self, key: &str) -> Option<String> {
        match self.provenance.input_data.as_ref()?.get(key)? {
            Value::Null => None,
            value => Some(value_text(value)),
        }
    }
}

/// One line of a preference dataset: a prompt (the conversation so far, ending on the user's
/// turn) answered twice, `chosen` the answer to prefer and `rejected` the other, each a list of
/// one assistant message (TRL's conversational preference format, read by TRL, axolotl and
/// OpenRLHF); optional `scores`; then in the annotated form its [`Provenance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceLine {
    /// The record's id (a number is read as its digits).
    #[serde(deserialize_with = "lenient::id")]
    pub id: String,
    /// The conversation both answers reply to (optional system message, ends on a user turn).
    pub prompt: Vec<Message>,
    /// The preferred answer: one assistant message.
    pub chosen: Vec<Message>,
    /// The answer not to prefer: one assistant message.
    pub rejected: Vec<Message>,
    /// Scores the pipeline gave (e.g. `chosen_voice`, `rejected_voice`); left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<std::collections::BTreeMap<String, f64>>,
    /// The annotation, written after the pair (all fields absent in a minimal line).
    #[serde(flatten)]
    pub provenance: Provenance,
}

impl PreferenceLine {
    /// A minimal line: `prompt` answered by `chosen` and `rejected`, without scores.
    pub fn minimal(
        id: impl Into<String>,
        prompt: Vec<Message>,
        chosen: Message,
        rejected: Message,
    ) -> Self {
        Self {
            id: id.into(),
            prompt,
            chosen: vec![chosen],
            rejected: vec![rejected],
            scores: None,
            provenance: Provenance::default(),
        }
    }
    /// The last user message of the prompt, or `""`.
    pub fn question(&self) -> &str {
        self.prompt
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }
    /// The prompt's system message, if any.
    pub fn system(&self) -> Option<&str> {
        self.prompt
            .iter()
            .find(|m| m.role == "system")
            .map(|m| m.content.as_str())
    }
    /// The chosen answer's text (its last assistant message), or `""`.
    pub fn chosen_text(&self) -> &str {
        last_assistant(&self.chosen)
    }
    /// The rejected answer's text (its last assistant message), or `""`.
    pub fn rejected_text(&self) -> &str {
        last_assistant(&self.rejected)
    }
    /// The steps (empty for a minimal line).
    pub fn steps(&self) -> &[Step] {
        self.provenance.steps()
    }
}

/// What kind of failure ended a record: the `error` field of its `__ERROR__` line.
///
/// Each kind is written as the string shown on it; a pipeline may name kinds of its own
/// ([`PipelineErrorKind::Custom`]), written as given. Read from any value (a non-string as its
/// JSON text), so a reader accepts every version's kinds.
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
    /// `invalid_sample`: the sample the task made breaks the shape rules of its kind (an empty
    /// turn, roles out of turn, no final answer, chosen equal to rejected).
    InvalidSample,
    /// `unexpected_error`: any other error, e.g. one converted by `?`.
    Unexpected,
    /// A kind named by the pipeline itself.
    Custom(String),
}

impl PipelineErrorKind {
    /// The kinds the library writes, with their strings.
    const NAMED: [(PipelineErrorKind, &'static str); 7] = [
        (Self::Api, "api_error"),
        (Self::Parse, "parse_error"),
        (Self::Filtered, "filtered"),
        (Self::Interrupted, "interrupted"),
        (Self::Output, "output_error"),
        (Self::InvalidSample, "invalid_sample"),
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

    /// The kind of an error line that names none: the empty string.
    fn unnamed() -> Self {
        Self::Custom(String::new())
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
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PipelineErrorKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient::string(deserializer).map(Self::from)
    }
}

/// One line of `<name>.errors.jsonl`: `{"__ERROR__": {...}}` (the key is [`super::ERROR_KEY`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorLine {
    /// The failed record, under `__ERROR__`.
    #[serde(rename = "__ERROR__")]
    pub error: ErrorDetail,
}

impl ErrorLine {
    /// The line of a record that ended with an error of `kind` after `steps`; it failed when
    /// its last answer arrived.
    pub fn new(
        kind: PipelineErrorKind,
        message: String,
        reasons: Vec<String>,
        input_data: Value,
        steps: Vec<Step>,
    ) -> Self {
        let failed_at = answer_span(&steps).1;
        Self {
            error: ErrorDetail {
                error: kind,
                message,
                reasons,
                input_data,
                steps,
                failed_at,
            },
        }
    }
}

/// The record that failed: the object under `__ERROR__`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The kind of failure (`api_error`, `parse_error`, `filtered`, …); `""` when a line names
    /// none.
    #[serde(default = "PipelineErrorKind::unnamed")]
    pub error: PipelineErrorKind,
    /// What went wrong, in words (e.g. `none of 2 candidates passed the quality gate`).
    #[serde(default, deserialize_with = "lenient::string")]
    pub message: String,
    /// For `filtered` records: the quality-gate reasons of every rejected candidate.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient::null_default"
    )]
    pub reasons: Vec<String>,
    /// The record the pipeline processed.
    #[serde(default)]
    pub input_data: Value,
    /// The model calls made before the failure.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub steps: Vec<Step>,
    /// When the record's last answer (or failed request) arrived: the failure follows from
    /// it. Absent when the record failed before any request.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "lenient::rfc3339"
    )]
    pub failed_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// `line` serialised, read back as `T` and serialised again: the same value and the same bytes.
    fn round_trip<T>(line: &T) -> String
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let written = serde_json::to_string(line).expect("serializes");
        let read: T = serde_json::from_str(&written).expect("reads back");
        assert_eq!(&read, line, "read back differs: {written}");
        assert_eq!(serde_json::to_string(&read).expect("serializes"), written);
        written
    }

    fn answered_step() -> Step {
        Step {
            model: "dee".into(),
            messages: vec![Message::system("You are Dee."), Message::user("q")],
            params: Params {
                temperature: Some(0.7),
                top_p: Some(0.9),
                max_tokens: Some(90),
                stop: vec!["\n\n".into()],
                seed: Some(7),
                json_schema: None,
            },
            text: "an answer".into(),
            success: Some(true),
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                input_tokens: 479,
                output_tokens: 34,
            }),
            error: None,
            requested_at: Some(datetime!(2026-12-02 11:27:20.485481929 UTC)),
            answered_at: Some(datetime!(2026-12-02 11:27:28.256449494 UTC)),
            cached: false,
        }
    }

    fn failed_step() -> Step {
        Step {
            model: "dee".into(),
            messages: vec![Message::user("q")],
            params: Params::default(),
            text: String::new(),
            success: Some(false),
            finish_reason: None,
            usage: Some(Usage::default()),
            error: Some(StepError::new("server_error", "HTTP 503")),
            requested_at: Some(datetime!(2026-12-02 11:27:29 UTC)),
            answered_at: Some(datetime!(2026-12-02 11:27:30.5 UTC)),
            cached: false,
        }
    }

    const ANSWERED_STEP: &str = r#"{"model":"dee","messages":[{"role":"system","content":"You are Dee."},{"role":"user","content":"q"}],"params":{"temperature":0.7,"top_p":0.9,"max_tokens":90,"stop":["\n\n"],"seed":7},"text":"an answer","success":true,"finish_reason":"stop","usage":{"input_tokens":479,"output_tokens":34},"error":null,"requested_at":"2026-12-02T11:27:20.485481929Z","answered_at":"2026-12-02T11:27:28.256449494Z"}"#;
    const FAILED_STEP: &str = r#"{"model":"dee","messages":[{"role":"user","content":"q"}],"params":{},"text":"","success":false,"finish_reason":null,"usage":{"input_tokens":0,"output_tokens":0},"error":{"kind":"server_error","message":"HTTP 503"},"requested_at":"2026-12-02T11:27:29Z","answered_at":"2026-12-02T11:27:30.5Z"}"#;

    #[test]
    fn a_minimal_sample_line_round_trips() {
        let line = ChatLine::minimal("r-1", vec![Message::user("q"), Message::assistant("a")]);
        assert_eq!(
            round_trip(&line),
            r#"{"id":"r-1","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#
        );
        assert!(!line.is_annotated());
    }

    #[test]
    fn an_annotated_sample_line_round_trips() {
        let steps = vec![failed_step(), answered_step()];
        let line = ChatLine {
            id: "voice-0000".into(),
            messages: vec![Message::user("q"), Message::assistant("an answer")],
            provenance: Provenance::new(json!({"id": "voice-0000", "prompt": "q"}), steps),
        };
        assert_eq!(
            line.provenance.started_at,
            Some(datetime!(2026-12-02 11:27:20.485481929 UTC))
        );
        assert_eq!(
            line.provenance.completed_at,
            Some(datetime!(2026-12-02 11:27:30.5 UTC))
        );
        let expected = format!(
            r#"{{"id":"voice-0000","messages":[{{"role":"user","content":"q"}},{{"role":"assistant","content":"an answer"}}],"input_data":{{"id":"voice-0000","prompt":"q"}},"steps":[{FAILED_STEP},{ANSWERED_STEP}],"started_at":"2026-12-02T11:27:20.485481929Z","completed_at":"2026-12-02T11:27:30.5Z"}}"#
        );
        assert_eq!(round_trip(&line), expected);
        assert_eq!(line.final_step(), Some(&answered_step()));

        // A sample made outside a task: annotated with a null input and no steps, untimed.
        let bare = ChatLine {
            provenance: Provenance::new(Value::Null, Vec::new()),
            ..ChatLine::minimal("x", Vec::new())
        };
        assert_eq!(
            round_trip(&bare),
            r#"{"id":"x","messages":[],"input_data":null,"steps":[]}"#
        );
        assert!(bare.is_annotated());
    }

    #[test]
    fn a_preference_line_round_trips() {
        let mut pair = PreferenceLine::minimal(
            "p-1",
            vec![Message::system("You are Dee."), Message::user("Pie?")],
            Message::assistant("Cherry, hon."),
            Message::assistant("Pie is a baked dish."),
        );
        assert_eq!(
            round_trip(&pair),
            r#"{"id":"p-1","prompt":[{"role":"system","content":"You are Dee."},{"role":"user","content":"Pie?"}],"chosen":[{"role":"assistant","content":"Cherry, hon."}],"rejected":[{"role":"assistant","content":"Pie is a baked dish."}]}"#
        );
        pair.scores = Some([("chosen_voice".to_owned(), 2.0)].into());
        pair.provenance = Provenance::new(serde_json::json!({"id": "p-1"}), vec![answered_step()]);
        let line = round_trip(&pair);
        assert!(
            line.contains(r#""rejected":[{"role":"assistant","content":"Pie is a baked dish."}],"scores":{"chosen_voice":2.0},"input_data":{"id":"p-1"},"steps":[{"#),
            "{line}"
        );
        assert_eq!(pair.question(), "Pie?");
        assert_eq!(pair.system(), Some("You are Dee."));
    }

    #[test]
    fn an_error_line_round_trips() {
        let line = ErrorLine::new(
            PipelineErrorKind::Filtered,
            "none of 2 candidates passed the quality gate".into(),
            vec!["candidate 1: echo".into(), "candidate 2: relevance".into()],
            json!({"id": "voice-0003", "prompt": "q"}),
            vec![answered_step(), failed_step()],
        );
        assert_eq!(
            line.error.failed_at,
            Some(datetime!(2026-12-02 11:27:30.5 UTC))
        );
        let expected = format!(
            r#"{{"__ERROR__":{{"error":"filtered","message":"none of 2 candidates passed the quality gate","reasons":["candidate 1: echo","candidate 2: relevance"],"input_data":{{"id":"voice-0003","prompt":"q"}},"steps":[{ANSWERED_STEP},{FAILED_STEP}],"failed_at":"2026-12-02T11:27:30.5Z"}}}}"#
        );
        assert_eq!(round_trip(&line), expected);

        // Failed before any request, with a kind of the pipeline's own: no reasons, no time.
        let early = ErrorLine::new(
            PipelineErrorKind::from("refused_by_pipeline"),
            "no".into(),
            Vec::new(),
            json!({"id": 1}),
            Vec::new(),
        );
        assert_eq!(
            round_trip(&early),
            r#"{"__ERROR__":{"error":"refused_by_pipeline","message":"no","input_data":{"id":1},"steps":[]}}"#
        );
        assert!(round_trip(&early).starts_with(&format!("{{\"{}\":", super::super::ERROR_KEY)));
    }

    #[test]
    fn a_step_round_trips_and_its_cache_hit_is_not_written() {
        assert_eq!(round_trip(&answered_step()), ANSWERED_STEP);
        assert_eq!(round_trip(&failed_step()), FAILED_STEP);
        let replayed = Step {
            cached: true,
            ..answered_step()
        };
        assert_eq!(serde_json::to_string(&replayed).unwrap(), ANSWERED_STEP);
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
    fn params_fields_are_the_serialised_keys() {
        let all = Params {
            temperature: Some(0.5),
            top_p: Some(0.5),
            max_tokens: Some(1),
            stop: vec!["x".into()],
            seed: Some(1),
            json_schema: Some(json!({})),
        };
        let value = serde_json::to_value(&all).expect("serializes");
        let keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = Params::FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(keys, fields);
        // Strict where it is configuration: an unknown key is a typo.
        assert!(serde_json::from_value::<Params>(json!({"temprature": 0.5})).is_err());
    }

    #[test]
    fn lines_from_elsewhere_are_read_leniently() {
        let line: ChatLine = serde_json::from_value(json!({
            "id": 17,
            "messages": [{"role": "user", "content": ["part"]}, {"role": "assistant", "content": null}, {"content": "x"}],
            "pipeline_commit": "abc123",
            "started_at": 1_700_000_000,
            "completed_at": "yesterday",
            "steps": [
                {"model": "m", "error": "boom", "usage": null, "finish_reason": null, "cached": true,
                 "params": {"temperature": 0.7, "presence_penalty": 0.1}, "latency_ms": 12},
                {"text": 5, "usage": {"input_tokens": 3}, "params": null, "error": {"kind": "timeout"},
                 "success": false, "requested_at": "2025-01-01T00:00:00Z"},
            ],
        }))
        .expect("reads");
        assert_eq!(line.id, "17");
        assert_eq!(line.prompt(), r#"["part"]"#);
        assert_eq!(line.response(), "");
        assert_eq!(line.messages[2], Message::new("", "x"));
        assert!(line.is_annotated() && line.provenance.input_data.is_none());
        assert_eq!(
            (line.provenance.started_at, line.provenance.completed_at),
            (None, None)
        );
        let [first, second] = line.steps() else {
            panic!("two steps: {:?}", line.steps())
        };
        assert_eq!(first.error, Some(StepError::new("error", "boom")));
        assert_eq!(
            (first.usage, first.success, first.cached),
            (None, None, true)
        );
        assert_eq!(first.params.temperature, Some(0.7));
        assert_eq!(first.requested_at, None);
        assert_eq!(second.model, "");
        assert_eq!(second.text, "5");
        assert_eq!(
            second.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 0
            })
        );
        assert_eq!(second.error, Some(StepError::new("timeout", "")));
        assert_eq!(second.success, Some(false));
        assert_eq!(second.requested_at, Some(datetime!(2025-01-01 0:00 UTC)));

        let error: ErrorLine = serde_json::from_value(json!({"__ERROR__": {
            "error": 3, "pipeline_commit": "x", "failed_at": "2025-01-01T00:00:00Z"
        }}))
        .expect("reads");
        assert_eq!(error.error.error, PipelineErrorKind::Custom("3".into()));
        assert_eq!(error.error.message, "");
        assert_eq!(error.error.input_data, Value::Null);
        assert!(error.error.steps.is_empty() && error.error.reasons.is_empty());
        assert_eq!(error.error.failed_at, Some(datetime!(2025-01-01 0:00 UTC)));
        let unnamed: ErrorLine = serde_json::from_value(json!({"__ERROR__": {}})).expect("reads");
        assert_eq!(unnamed.error.error.as_str(), "");
    }

    #[test]
    fn lines_without_what_they_mean_are_refused() {
        let refused = |value: Value| {
            serde_json::from_value::<ChatLine>(value)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(json!({"messages": []})).contains("id"));
        assert!(refused(json!({"id": "x"})).contains("messages"));
        assert!(
            refused(json!({"id": {"a": 1}, "messages": []})).contains("\"id\" must be a string")
        );
        assert!(refused(json!({"id": "x", "messages": "hi"})).contains("invalid type"));
        let error = serde_json::from_value::<ErrorLine>(json!({"nope": 1})).unwrap_err();
        assert!(error.to_string().contains("__ERROR__"), "{error}");
        let params =
            json!({"id": "x", "messages": [], "steps": [{"params": {"temperature": "hot"}}]});
        assert!(serde_json::from_value::<ChatLine>(params).is_err());
    }

    /// Every line of the committed datasets, read through these types and written again, is
    /// the same bytes: a field lost, renamed or reordered, or a number written differently,
    /// fails here before it reaches a dataset.
    #[test]
    fn committed_datasets_reserialise_byte_for_byte() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("training/data");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("training/data is committed")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        let (mut samples, mut errors) = (0, 0);
        for path in &files {
            let text = std::fs::read_to_string(path).expect("reads");
            let is_errors = path.to_string_lossy().ends_with(".errors.jsonl");
            for (n, line) in text.lines().enumerate() {
                let written = if is_errors {
                    errors += 1;
                    let read: ErrorLine = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), n + 1));
                    serde_json::to_string(&read)
                } else {
                    samples += 1;
                    let read: super::super::SampleLine = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), n + 1));
                    serde_json::to_string(&read)
                }
                .expect("serializes");
                if written != line {
                    let at = written
                        .bytes()
                        .zip(line.bytes())
                        .position(|(a, b)| a != b)
                        .unwrap_or(written.len().min(line.len()));
                    let around = |s: &str| {
                        let mut start = at.saturating_sub(80).min(s.len());
                        while !s.is_char_boundary(start) {
                            start -= 1;
                        }
                        let mut end = (at + 80).min(s.len());
                        while !s.is_char_boundary(end) {
                            end += 1;
                        }
                        s[start..end].to_owned()
                    };
                    panic!(
                        "{}:{}: written again differs at byte {at}\n committed: …{}…\n rewritten: …{}…",
                        path.display(),
                        n + 1,
                        around(line),
                        around(&written)
                    );
                }
            }
        }
        assert!(
            samples > 0 && errors > 0,
            "no committed lines found in {} ({samples} sample lines, {errors} error lines)",
            dir.display()
        );
    }
}
