//! Per-sample detectors: deterministic, model-free rules that judge one prompt/reply pair and say
//! why it fails in words a person understands at a glance (`context.rs` judges a reply within
//! a conversation, a preference pair, and whole sample lines of either kind).
//!
//! [`Detectors`] is compiled once from a [`Voice`] and a [`QualityConfig`] and then judges any
//! number of [`Turn`]s (it is `Send + Sync`, so pipelines can share it across tasks). A
//! [`Verdict`] lists its [`Finding`]s (`"degeneration: sentence 'Go.' ×9"`) and the voice markers
//! the reply shows. The dataset checks ([`super::analyze`]) count these findings per [`Reason`].

mod context;
mod language;
mod persona;
mod repetition;
mod surface;
mod words;

use std::fmt;

pub(crate) use context::SampleFacts;
pub(crate) use persona::check_pattern;

use serde::{Deserialize, Serialize};

use super::config::{QualityConfig, Voice};
use super::text::{ERROR_TEXT_PATTERNS, Phrases, REFUSAL_PHRASES, normalize};
use super::{QualityError, Result};
use crate::format::{ChatLine, Message};

/// Characters of quoted reply text in a finding's detail.
const QUOTE_CHARS: usize = 60;

/// Why a sample fails. Serialized in snake_case; `Display` prints the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No assistant text.
    Empty,
    /// Provider error text leaked into the reply.
    ErrorText,
    /// The final step stopped at `max_tokens` and the reply ends mid-sentence.
    Truncated,
    /// A refusal or a generic-assistant phrase.
    Refusal,
    /// Shorter or longer than the configured bounds.
    Length,
    /// Repetition loops: repeated sentences, one phrase dominating, few distinct n-grams.
    Degeneration,
    /// A first-person claim the identity never makes (`identity/voice.toml` `contradictions`,
    /// and AI self-descriptions unless the identity is an AI).
    Contradiction,
    /// Chat-format leaks (`User:` turns), answering as the user, the identity narrating itself.
    RoleConfusion,
    /// The reply repeats the prompt or is mostly copied from it.
    Echo,
    /// The reply shares no content word with the prompt.
    Relevance,
    /// Shouting, stage directions, unbalanced quotes, mojibake, another language than the prompt's.
    SurfaceGarbage,
    /// The line breaks its kind's shape rules ([`crate::format::ShapeError`]: roles out of
    /// order, a conversation ending on a user turn, a pair without a question), or its kind is
    /// not the dataset's (a pair among conversations).
    Shape,
    /// A pair whose `rejected` is its `chosen` (whitespace and case aside): nothing to learn.
    SameAnswers,
    /// A pair whose `rejected` shows more of the identity's voice markers than its `chosen`:
    /// the preference points away from the voice.
    RejectedVoice,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 14] = [
        Reason::Empty,
        Reason::ErrorText,
        Reason::Truncated,
        Reason::Refusal,
        Reason::Length,
        Reason::Degeneration,
        Reason::Contradiction,
        Reason::RoleConfusion,
        Reason::Echo,
        Reason::Relevance,
        Reason::SurfaceGarbage,
        Reason::Shape,
        Reason::SameAnswers,
        Reason::RejectedVoice,
    ];

    /// The snake_case name (`role_confusion`).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::ErrorText => "error_text",
            Reason::Truncated => "truncated",
            Reason::Refusal => "refusal",
            Reason::Length => "length",
            Reason::Degeneration => "degeneration",
            Reason::Contradiction => "contradiction",
            Reason::RoleConfusion => "role_confusion",
            Reason::Echo => "echo",
            Reason::Relevance => "relevance",
            Reason::SurfaceGarbage => "surface_garbage",
            Reason::Shape => "shape",
            Reason::SameAnswers => "same_answers",
            Reason::RejectedVoice => "rejected_voice",
        }
    }

    /// The name of the dataset check that counts this reason.
    pub fn check_name(self) -> &'static str {
        match self {
            Reason::Empty => "empty_responses",
            Reason::ErrorText => "error_text",
            Reason::Truncated => "truncated",
            Reason::Refusal => "refusals",
            Reason::Length => "response_length",
            Reason::Degeneration => "degeneration",
            Reason::Contradiction => "contradiction",
            Reason::RoleConfusion => "role_confusion",
            Reason::Echo => "echo",
            Reason::Relevance => "relevance",
            Reason::SurfaceGarbage => "surface_garbage",
            Reason::Shape => "shape",
            Reason::SameAnswers => "same_answers",
            Reason::RejectedVoice => "rejected_voice",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem of one sample. `Display`: `"<reason>: <detail>"`, or `"<at>: <reason>: <detail>"`
/// when the finding is about one part of the sample (`turn 4: degeneration: …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which detector found it.
    pub reason: Reason,
    /// What exactly, e.g. `sentence 'I'm gonna grab the hot dog.' ×9`.
    pub detail: String,
    /// Which part of the sample: `turn 4` (the message's position from 1, system message
    /// included, as [`crate::format::ShapeError`] counts) in a conversation of several
    /// exchanges, `chosen` or `rejected` in a pair; `None` for a single exchange and for what
    /// concerns the sample as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

impl Finding {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            at: None,
        }
    }

    /// The same finding, said of one part of the sample (`turn 4`, `chosen`, `rejected`).
    fn within(mut self, at: impl Into<String>) -> Self {
        self.at = Some(at.into());
        self
    }

    /// The detail, prefixed with the part of the sample when there is one (`turn 4: …`).
    pub fn located_detail(&self) -> String {
        match &self.at {
            Some(at) => format!("{at}: {}", self.detail),
            None => self.detail.clone(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The judgement of one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every problem found (empty: the sample passes).
    pub findings: Vec<Finding>,
    /// The voice markers the reply shows (as declared, in declaration order).
    pub markers: Vec<String>,
}

impl Verdict {
    /// Whether no detector found a problem.
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }

    /// The findings as `"<reason>: <detail>"` lines.
    pub fn reasons(&self) -> Vec<String> {
        self.findings.iter().map(ToString::to_string).collect()
    }

    /// Whether some finding has this reason.
    pub fn has(&self, reason: Reason) -> bool {
        self.findings.iter().any(|f| f.reason == reason)
    }
}

/// One prompt and the reply to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn<'a> {
    /// The user message the reply answers.
    pub prompt: &'a str,
    /// The assistant's reply.
    pub reply: &'a str,
    /// How the step that produced the reply finished (`stop`, `length`), when known.
    pub finish_reason: Option<&'a str>,
}

impl<'a> Turn<'a> {
    /// The turn of a dataset record: its last assistant message, the user message before it, and
    /// the finish reason of the step that produced it.
    pub fn of_record(record: &'a ChatLine) -> Self {
        let (prompt, reply) = last_exchange(&record.messages);
        Self {
            prompt,
            reply,
            finish_reason: record
                .final_step()
                .and_then(|step| step.finish_reason.as_deref()),
        }
    }
}

/// The last assistant message and the user message before it (`""` when absent).
fn last_exchange(messages: &[Message]) -> (&str, &str) {
    let Some(at) = messages.iter().rposition(|m| m.role == "assistant") else {
        let prompt = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        return (prompt, "");
    };
    let prompt = messages[..at]
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str());
    (prompt, messages[at].content.as_str())
}

/// The detectors of one identity and quality config, compiled once.
#[derive(Debug, Clone)]
pub struct Detectors {
    refusals: Phrases,
    errors: Phrases,
    /// The voice markers as declared, and the same in one automaton (by position).
    markers: Vec<String>,
    marker_phrases: Phrases,
    persona: persona::Persona,
    min_chars: u64,
    max_chars: u64,
}

impl Detectors {
    /// Compile the detectors: voice markers and generic phrases from `voice` and `config`, the
    /// identity's contradictions and names from `voice`, the length bounds from `config`.
    ///
    /// Fails when a contradiction pattern does not compile (the error names its label).
    pub fn new(voice: &Voice, config: &QualityConfig) -> Result<Self> {
        let refusals = REFUSAL_PHRASES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(voice.generic_phrases.iter().cloned())
            .chain(config.generic_phrases.iter().cloned());
        let mut markers: Vec<String> = Vec::new();
        for marker in voice.markers.iter().chain(config.voice_markers.iter()) {
            if !normalize(marker).is_empty()
                && !markers.iter().any(|m| normalize(m) == normalize(marker))
            {
                markers.push(marker.clone());
            }
        }
        Ok(Self {
            refusals: Phrases::words(refusals),
            errors: Phrases::substrings(ERROR_TEXT_PATTERNS),
            marker_phrases: Phrases::words_in_order(&markers),
            markers,
            persona: persona::Persona::new(voice)?,
            min_chars: config.min_response_chars,
            max_chars: config.max_response_chars,
        })
    }

    /// Whether any voice marker is declared.
    pub fn has_markers(&self) -> bool {
        !self.markers.is_empty()
    }

    /// The voice markers `text` shows (as declared, in declaration order): what
    /// [`Verdict::markers`] holds for a reply, and what the pair rules compare
    /// ([`Detectors::check_pair`]).
    pub fn markers(&self, text: &str) -> Vec<String> {
        self.markers_of_normalized(&normalize(text))
    }

    fn markers_of_normalized(&self, normalized: &str) -> Vec<String> {
        let found = self.marker_phrases.found(normalized);
        self.markers
            .iter()
            .zip(found)
            .filter(|(_, found)| *found)
            .map(|(marker, _)| marker.clone())
            .collect()
    }

    /// Judge one turn.
    pub fn judge(&self, turn: &Turn<'_>) -> Verdict {
        let mut findings = Vec::new();
        let reply = turn.reply;
        let normalized = normalize(reply);
        let markers = self.markers_of_normalized(&normalized);
        if normalized.is_empty() {
            findings.push(Finding::new(Reason::Empty, "the reply has no text"));
            return Verdict { findings, markers };
        }
        if let Some(pattern) = self.errors.find(&normalized) {
            findings.push(Finding::new(
                Reason::ErrorText,
                format!("provider error text '{pattern}'"),
            ));
        }
        if let Some(marker) = empty_last_list_item(reply) {
            findings.push(Finding::new(
                Reason::Truncated,
                format!("ends on an empty list item '{marker}'"),
            ));
        } else if turn.finish_reason == Some("length") && !ends_at_sentence_end(reply) {
            findings.push(Finding::new(
                Reason::Truncated,
                format!(
                    "stopped at max_tokens and ends mid-sentence: '…{}'",
                    tail(reply, 30)
                ),
            ));
        }
        if let Some(phrase) = self.refusals.find(&normalized) {
            findings.push(Finding::new(
                Reason::Refusal,
                format!("generic-assistant phrase '{phrase}'"),
            ));
        }
        let chars = reply.chars().count() as u64;
        if chars < self.min_chars || chars > self.max_chars {
            findings.push(Finding::new(
                Reason::Length,
                format!(
                    "{chars} characters (allowed {}..={})",
                    self.min_chars,
                    show_bound(self.max_chars)
                ),
            ));
        }

        let clean = words::plain_apostrophes(reply);
        let reply_words = words::words(&clean);
        let prompt_clean = words::plain_apostrophes(turn.prompt);
        let prompt_words = words::words(&prompt_clean);

        if let Some(detail) = repetition::degeneration(&clean, &reply_words) {
            findings.push(Finding::new(Reason::Degeneration, detail));
        }
        for detail in self.persona.contradictions(&clean) {
            findings.push(Finding::new(Reason::Contradiction, detail));
        }
        if let Some(detail) = self.persona.role_confusion(&clean) {
            findings.push(Finding::new(Reason::RoleConfusion, detail));
        }
        let echo = repetition::echo(&reply_words, &prompt_words);
        let echoed = echo.is_some();
        if let Some(detail) = echo {
            findings.push(Finding::new(Reason::Echo, detail));
        }
        // A copied reply shares words with the prompt by construction: relevance says nothing new.
        // Word overlap is a weak signal: an in-character answer often paraphrases (a pancake
        // recipe talks of flour and the griddle), so a reply that shows a voice marker is not
        // judged by it.
        if !echoed
            && markers.is_empty()
            && let Some(detail) = words::irrelevance(&reply_words, &prompt_words)
        {
            findings.push(Finding::new(Reason::Relevance, detail));
        }
        if let Some(detail) = surface::garbage(&clean, &prompt_clean) {
            findings.push(Finding::new(Reason::SurfaceGarbage, detail));
        }
        Verdict { findings, markers }
    }

    /// The relevance finding of a turn judged strictly: unlike [`Detectors::judge`], a reply that
    /// shows a voice marker is judged too ("hon" is not an answer). For choosing among
    /// candidates (best-of-n `on_topic`), where preferring a reply that takes up the question's
    /// words costs nothing but another candidate.
    pub fn off_topic(&self, turn: &Turn<'_>) -> Option<Finding> {
        let reply = words::words(&words::plain_apostrophes(turn.reply));
        let prompt = words::words(&words::plain_apostrophes(turn.prompt));
        if repetition::echo(&reply, &prompt).is_some() {
            return None;
        }
        words::irrelevance(&reply, &prompt).map(|detail| Finding::new(Reason::Relevance, detail))
    }

    /// Judge a turn whose prompt showed example replies first (few-shot turns): besides
    /// [`Detectors::judge`], a reply that copies a phrase from one of `examples` is an echo.
    pub fn judge_after_examples(&self, turn: &Turn<'_>, examples: &[&str]) -> Verdict {
        let mut verdict = self.judge(turn);
        if examples.is_empty() || verdict.has(Reason::Echo) {
            return verdict;
        }
        let reply_words = words::words(&words::plain_apostrophes(turn.reply));
        let example_words: Vec<Vec<String>> = examples
            .iter()
            .map(|e| words::words(&words::plain_apostrophes(e)))
            .collect();
        if let Some(detail) = repetition::copied_from_examples(&reply_words, &example_words) {
            verdict.findings.push(Finding::new(Reason::Echo, detail));
        }
        verdict
    }
}

/// Whether `text` ends at the end of a sentence: its last character, after closing quotes,
/// brackets and emphasis marks, is `.`, `!`, `?` or `…` (or an emoji, which ends chat lines).
pub(crate) fn ends_at_sentence_end(text: &str) -> bool {
    let trimmed = text
        .trim_end()
        .trim_end_matches(['"', '\'', '\u{201d}', '\u{2019}', ')', ']', '*', '_', '~']);
    trimmed
        .chars()
        .next_back()
        .is_some_and(|c| matches!(c, '.' | '!' | '?' | '…') || is_emoji(c))
}

/// The marker of an empty last list item (`6.`, `-`), if the reply ends on one.
fn empty_last_list_item(text: &str) -> Option<&str> {
    let last = text.trim_end().lines().next_back()?.trim();
    let is_number = last
        .strip_suffix(['.', ')'])
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.chars().all(|c| c.is_ascii_digit()));
    let is_bullet = matches!(last, "-" | "*" | "•");
    (is_number || is_bullet).then_some(last)
}

pub(crate) fn is_emoji(c: char) -> bool {
    matches!(u32::from(c), 0x1F300..=0x1FAFF | 0x2600..=0x27BF)
}

/// The last `max` characters of `text` (whitespace runs collapsed).
fn tail(text: &str, max: usize) -> String {
    let flat: Vec<char> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect();
    flat[flat.len().saturating_sub(max)..].iter().collect()
}

/// At most [`QUOTE_CHARS`] characters of `text`, whitespace runs collapsed, `…` when cut.
pub(crate) fn quote(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    super::text::truncate_chars(&flat, QUOTE_CHARS)
}

fn show_bound(max: u64) -> String {
    if max == u64::MAX {
        "∞".to_owned()
    } else {
        max.to_string()
    }
}

/// A compiled pattern error, named by what the pattern is for.
pub(crate) fn pattern_error(label: &str, error: &regex::Error) -> QualityError {
    QualityError::Pattern {
        label: label.to_owned(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dee() -> Voice {
        Voice::parse(
            include_str!("../../identity/voice.toml"),
            std::path::Path::new("identity/voice.toml"),
        )
        .unwrap()
    }

    fn judge(prompt: &str, reply: &str) -> Verdict {
        let detectors = Detectors::new(&dee(), &QualityConfig::default()).unwrap();
        detectors.judge(&Turn {
            prompt,
            reply,
            finish_reason: Some("stop"),
        })
    }

    fn reasons(prompt: &str, reply: &str) -> Vec<Reason> {
        judge(prompt, reply)
            .findings
            .iter()
            .map(|f| f.reason)
            .collect()
    }

    #[test]
    fn a_good_reply_passes_and_shows_markers() {
        let verdict = judge(
            "Any tips for a job interview tomorrow?",
            "Oh hon, you'll do fine. Get a good night's sleep, eat a real breakfast, and show up \
             ten minutes early for the interview. Tell them one story about a time you fixed a \
             mess, like a rain delay you turned into a doubleheader. Then go get 'em, kiddo.",
        );
        assert!(verdict.passed(), "{:?}", verdict.reasons());
        assert!(verdict.markers.contains(&"hon".to_owned()));
        assert!(verdict.markers.contains(&"kiddo".to_owned()));
    }

    #[test]
    fn detectors_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Detectors>();
    }

    #[test]
    fn reasons_display_as_snake_case() {
        let finding = Finding::new(Reason::RoleConfusion, "speaker label 'User:'");
        assert_eq!(finding.to_string(), "role_confusion: speaker label 'User:'");
        assert_eq!(
            serde_json::to_string(&Reason::SurfaceGarbage).unwrap(),
            "\"surface_garbage\""
        );
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::String(reason.to_string())
            );
        }
    }

    #[test]
    fn truncation_needs_length_and_a_cut_sentence() {
        let detectors = Detectors::new(&Voice::default(), &QualityConfig::default()).unwrap();
        let turn = |reply, finish| Turn {
            prompt: "How are the Cubs doing?",
            reply,
            finish_reason: finish,
        };
        let cut = detectors.judge(&turn("The Cubs are doing fine and the", Some("length")));
        assert!(cut.has(Reason::Truncated), "{:?}", cut.reasons());
        let trimmed = detectors.judge(&turn("The Cubs are doing fine, hon.", Some("length")));
        assert!(!trimmed.has(Reason::Truncated));
        let quoted = detectors.judge(&turn("She said \"the Cubs are fine.\"", Some("length")));
        assert!(!quoted.has(Reason::Truncated));
        let stopped = detectors.judge(&turn("The Cubs are doing fine and the", Some("stop")));
        assert!(!stopped.has(Reason::Truncated));
    }

    #[test]
    fn degeneration() {
        let loop_reply = "I'm gonna grab the hot dog. ".repeat(9);
        let verdict = judge("What do you eat at the ballpark?", &loop_reply);
        let finding = verdict
            .findings
            .iter()
            .find(|f| f.reason == Reason::Degeneration)
            .expect("degeneration");
        assert_eq!(
            finding.to_string(),
            "degeneration: sentence 'I'm gonna grab the hot dog.' ×9"
        );
        let one_phrase = format!(
            "Oh hon, let me tell you about {}.",
            ["St. Louis"; 15].join(" and ")
        );
        assert!(reasons("Where should I travel?", &one_phrase).contains(&Reason::Degeneration));
        let numbers =
            "Daughter of the sun. 36, 5, 1. 3, 4, 5, 6. 3, 4, 5, 6. 3, 4, 5, 6. 3, 4, 5, 6.";
        assert!(reasons("What is loyalty?", numbers).contains(&Reason::Degeneration));
    }

    #[test]
    fn contradictions_are_first_person_and_precise() {
        let r = reasons(
            "Who do you root for?",
            "I've always rooted for the Cardinals, hon, ever since I was a girl.",
        );
        assert!(r.contains(&Reason::Contradiction), "{r:?}");
        let r = reasons(
            "What about the Cardinals?",
            "The Cardinals? Bless their hearts, hon, I'd never root for the Cardinals. Cubs forever.",
        );
        assert!(!r.contains(&Reason::Contradiction), "{r:?}");
        let r = reasons(
            "Tell me about yourself.",
            "I'm just an AI, but I love the Cubs and the diner on Clark Street.",
        );
        assert!(r.contains(&Reason::Contradiction), "{r:?}");
        let r = reasons(
            "Tell me about your family.",
            "My wife and I run the diner near Wrigley, and our boys help out.",
        );
        assert!(r.contains(&Reason::Contradiction), "{r:?}");
    }

    #[test]
    fn another_age_is_a_contradiction() {
        for reply in [
            "I'm just a little blonde, only 22 years old, and I love the Cubs, hon.",
            "Hon, I'm a 50-year-old who loves to do things around the diner.",
            "I'm 35. The diner keeps me young, hon.",
            "I'm still in my twenties, kiddo, but I know my coffee.",
        ] {
            let verdict = judge("How old are you?", reply);
            assert!(
                verdict
                    .reasons()
                    .iter()
                    .any(|r| r.starts_with("contradiction: claims another age than 58")),
                "{reply}: {:?}",
                verdict.reasons()
            );
        }
        for reply in [
            "I'm 58 years old, hon, and I've run this diner for twenty-six years.",
            "I'm in my fifties, kiddo, and I still pour the coffee myself.",
            "When I was 22 I was already pouring coffee at the diner, hon.",
            "I'm 100 percent sure the Cubs will make it, hon.",
            "My son Tony is 30 years old, hon, and he still eats here.",
        ] {
            let r = reasons("How old are you?", reply);
            assert!(!r.contains(&Reason::Contradiction), "{reply}: {r:?}");
        }
    }

    #[test]
    fn role_confusion() {
        let r = reasons(
            "How do I make pierogi?",
            "Boil the potatoes, hon, and mash them with cheddar.\nUser: Thanks! How long do I boil them?",
        );
        assert!(r.contains(&Reason::RoleConfusion), "{r:?}");
        let r = reasons(
            "How do I make pierogi?",
            "Dee smiled and wiped the counter. Pierogi start with a good dough and cheddar potatoes.",
        );
        assert!(r.contains(&Reason::RoleConfusion), "{r:?}");
        let r = reasons(
            "How do I make pierogi?",
            "Dee, I'd say pierogi start with a good dough and cheddar potatoes, hon.",
        );
        assert!(r.contains(&Reason::RoleConfusion), "{r:?}");
        for reply in [
            "It's me, Dee! I run the diner on Clark Street, and the pierogi are on Fridays.",
            "Come by the diner on Clark Street for pierogi on Friday, hon.\n\nLove,\nDee",
        ] {
            let r = reasons("Who are you?", reply);
            assert!(!r.contains(&Reason::RoleConfusion), "{reply}: {r:?}");
        }
    }

    #[test]
    fn echo_and_relevance() {
        let prompt = "I'm nervous about a job interview tomorrow. Any tips?";
        let r = reasons(
            prompt,
            "I'm nervous about a job interview tomorrow. Any tips?",
        );
        assert!(r.contains(&Reason::Echo), "{r:?}");
        let r = reasons(
            prompt,
            "My cousin bought a red truck last spring and drove it all the way to Milwaukee for a wedding.",
        );
        assert!(r.contains(&Reason::Relevance), "{r:?}");
        let r = reasons(
            prompt,
            "Hon, everybody gets nervous before interviewing. Practice your answers tonight and sleep well.",
        );
        assert!(
            !r.contains(&Reason::Relevance) && !r.contains(&Reason::Echo),
            "{r:?}"
        );
    }

    #[test]
    fn off_topic_judges_replies_in_voice_too() {
        let detectors = Detectors::new(&dee(), &QualityConfig::default()).unwrap();
        let turn = Turn {
            prompt: "How do I fix a wobbly table?",
            reply: "You keep your feet up, hon. I'll take your shoes off and pour you a cup of coffee. \
                    We'll be in the Hall of Mirrors by the top of the ninth.",
            finish_reason: Some("stop"),
        };
        assert!(
            !detectors.judge(&turn).has(Reason::Relevance),
            "a marker exempts it"
        );
        let finding = detectors.off_topic(&turn).expect("off topic");
        assert_eq!(
            finding.to_string(),
            "relevance: no content word in common with the prompt (fix, wobbly, table)"
        );
        let on_topic = Turn {
            reply: "Fold a napkin under the short leg, hon, and the table stops wobbling. My dad did \
                    that for forty years at the diner.",
            ..turn
        };
        assert_eq!(detectors.off_topic(&on_topic), None);
    }

    #[test]
    fn copying_an_example_reply_is_an_echo() {
        let detectors = Detectors::new(&dee(), &QualityConfig::default()).unwrap();
        let turn = Turn {
            prompt: "Can you fix my bike?",
            reply: "Hon, bikes are not my thing. I'll stick to pancakes, sweetie, and the Cubs. Ask my son Mikey.",
            finish_reason: Some("stop"),
        };
        let examples =
            ["Hon, that's above my pay grade. I'll stick to pancakes and the batting order."];
        let verdict = detectors.judge_after_examples(&turn, &examples);
        assert!(
            verdict.reasons().contains(
                &"echo: copies 'i'll stick to pancakes' from an example reply of the prompt"
                    .to_owned()
            ),
            "{:?}",
            verdict.reasons()
        );
        // Sharing a few common words is not copying.
        let turn = Turn {
            reply: "Hon, sit down and have a coffee first, then we'll talk about that bike of yours. Mikey fixes anything.",
            ..turn
        };
        let examples = ["Grab a stool by the window and I'll pour you a coffee."];
        let verdict = detectors.judge_after_examples(&turn, &examples);
        assert!(verdict.passed(), "{:?}", verdict.reasons());
    }

    #[test]
    fn surface_garbage() {
        for reply in [
            "OH HON, THE CUBS ARE GOING TO WIN IT ALL THIS YEAR, I CAN FEEL IT IN MY BONES!",
            "(chuckles) Oh hon, the Cubs will be just fine this year, trust me.",
            "*wipes down the counter* Oh hon, the Cubs will be just fine this year.",
            "She told me \"the Cubs will be fine this year, hon. Trust me on that.",
            "The Cubs will be fine this year, hon. Itâ€™s a long season.",
            "Los Cubs van a ganar este año, cariño. Es una temporada muy larga y tenemos que ser pacientes.",
        ] {
            let r = reasons("How will the Cubs do this year?", reply);
            assert!(r.contains(&Reason::SurfaceGarbage), "{reply}: {r:?}");
        }
        let r = reasons(
            "How will the Cubs do this year?",
            "The Cubs? I think they'll be fine (knock on wood), hon. Every spring, we're tied for first.",
        );
        assert!(!r.contains(&Reason::SurfaceGarbage), "{r:?}");
    }
}
