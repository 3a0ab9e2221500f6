//! Text helpers of the quality gate: the [`Sample`] view of a record, phrase matching, truncation.

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};

use serde_json::Value;

use crate::format::{
    ChatLine, Message, PreferenceLine, Provenance, SampleLine, Step, first_user, last_assistant,
};

/// A dataset sample prepared for display: the conversation (for a pair: its prompt, with the two
/// answers in [`Sample::pair`]), its source and, for annotated data, its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Line number in the dataset file (1-based).
    pub line: u64,
    /// The sample's id.
    pub id: String,
    /// `input_data.source`, or `"unknown"`.
    pub source: String,
    /// `input_data.category`, if any.
    pub category: Option<String>,
    /// The conversation: the training messages (for a pair: the prompt).
    pub messages: Vec<Message>,
    /// The model calls (empty for minimal data).
    pub steps: Vec<SampleStep>,
    /// The two answers of a preference pair; `None` for a conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<Answers>,
}

/// The answers of a preference pair, as displayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    /// The preferred answer's text.
    pub chosen: String,
    /// The other answer's text.
    pub rejected: String,
}

/// One model call of a [`Sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleStep {
    /// The step's model alias (`?` when the record does not say).
    pub model: String,
    /// The last user message sent to the model.
    pub prompt: String,
    /// The text the model returned (or the error message of a failed step).
    pub response: String,
    /// Why generation stopped, as recorded; None when not recorded.
    pub finish_reason: Option<String>,
    /// Whether the step got an answer; None when not recorded.
    pub success: Option<bool>,
    /// Answered from the response cache (said only by lines of older versions).
    pub cached: bool,
    /// `kind: message` of a failed step.
    pub error: Option<String>,
}

impl Sample {
    /// The display view of a record read at `line`.
    pub fn from_record(line: u64, record: ChatLine) -> Self {
        Self {
            line,
            source: source_of(&record.provenance),
            category: input_text(&record.provenance, "category"),
            steps: steps_of(record.steps()),
            id: record.id,
            messages: record.messages,
            pair: None,
        }
    }

    /// The display view of a sample line of either kind read at `line`.
    pub fn from_line(line: u64, sample: SampleLine) -> Self {
        match sample {
            SampleLine::Chat(record) => Self::from_record(line, record),
            SampleLine::Preference(pair) => Self::from_pair(line, pair),
        }
    }

    fn from_pair(line: u64, pair: PreferenceLine) -> Self {
        let answers = Answers {
            chosen: pair.chosen_text().to_owned(),
            rejected: pair.rejected_text().to_owned(),
        };
        Self {
            line,
            source: source_of(&pair.provenance),
            category: input_text(&pair.provenance, "category"),
            steps: steps_of(pair.steps()),
            id: pair.id,
            messages: pair.prompt,
            pair: Some(answers),
        }
    }

    /// Assistant turns of the conversation (1 for a pair).
    pub fn exchanges(&self) -> usize {
        if self.pair.is_some() {
            return 1;
        }
        self.messages
            .iter()
            .filter(|m| m.role == "assistant")
            .count()
    }

    /// The first user message's content, or `""`.
    pub fn prompt(&self) -> &str {
        first_user(&self.messages)
    }

    /// The last assistant message's content, or `""`; for a pair, `chosen`.
    pub fn response(&self) -> &str {
        match &self.pair {
            Some(answers) => &answers.chosen,
            None => last_assistant(&self.messages),
        }
    }
}

/// The display view of steps.
fn steps_of(steps: &[Step]) -> Vec<SampleStep> {
    steps
        .iter()
        .map(|step| SampleStep {
            model: model_name(&step.model),
            prompt: step
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            response: step.text.clone(),
            finish_reason: step.finish_reason.clone(),
            success: step.success,
            cached: step.cached,
            error: step
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind, e.message)),
        })
        .collect()
}

/// `input_data.<key>` of a line as text (a non-string as its JSON text); `None` when absent or
/// `null` (as [`ChatLine::input_text`], for lines of either kind).
pub(crate) fn input_text(provenance: &Provenance, key: &str) -> Option<String> {
    match provenance.input_data.as_ref()?.get(key)? {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        value => Some(value.to_string()),
    }
}

/// `input_data.source` of a line as text, or `"unknown"`.
pub(crate) fn source_of(provenance: &Provenance) -> String {
    input_text(provenance, "source").unwrap_or_else(|| "unknown".to_owned())
}

/// A step's model alias for display: `?` when the line names none.
pub(crate) fn model_name(model: &str) -> String {
    if model.is_empty() { "?" } else { model }.to_owned()
}

/// `training/data/<name>.errors.jsonl` for `training/data/<name>.jsonl` (one definition for the
/// writer and the readers).
pub use crate::format::errors_path_for;

/// At most `max` characters of `text`, with `…` appended when cut.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
    }
}

/// Lowercase, typographic apostrophes made plain, whitespace runs collapsed to one space.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            match c {
                '\u{2018}' | '\u{2019}' | '\u{02bc}' => out.push('\''),
                c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
                c => out.extend(c.to_lowercase()),
            }
        }
    }
    out
}

/// A set of phrases matched case-insensitively against normalized text, all at once (one
/// Aho-Corasick automaton: a reply is scanned once, however many phrases there are).
#[derive(Debug, Clone)]
pub(crate) struct Phrases {
    /// Normalized, in the order `find` prefers them.
    phrases: Vec<String>,
    whole_words: bool,
    /// `None` when there are no phrases.
    automaton: Option<AhoCorasick>,
}

impl Phrases {
    /// Phrases that match only as whole words (a phrase edge that is a letter or digit must not
    /// touch another letter or digit).
    pub(super) fn words<I: IntoIterator<Item = S>, S: AsRef<str>>(phrases: I) -> Self {
        Self::build(phrases, true, true)
    }

    /// Phrases that match anywhere.
    pub(super) fn substrings<I: IntoIterator<Item = S>, S: AsRef<str>>(phrases: I) -> Self {
        Self::build(phrases, false, true)
    }

    /// Whole-word phrases kept in the order given (duplicates included), so that
    /// [`Phrases::found`] answers by position.
    pub(super) fn words_in_order<I: IntoIterator<Item = S>, S: AsRef<str>>(phrases: I) -> Self {
        Self::build(phrases, true, false)
    }

    fn build<I: IntoIterator<Item = S>, S: AsRef<str>>(
        phrases: I,
        whole_words: bool,
        sorted: bool,
    ) -> Self {
        let mut phrases: Vec<String> = phrases.into_iter().map(|p| normalize(p.as_ref())).collect();
        if sorted {
            phrases.retain(|p| !p.is_empty());
            phrases.sort();
            phrases.dedup();
        }
        // Empty phrases (kept only to hold a place) never match.
        let patterns = phrases.iter().map(|p| if p.is_empty() { "\0" } else { p });
        let automaton = (!phrases.is_empty()).then(|| {
            AhoCorasick::new(patterns).expect("phrases are short enough for an automaton")
        });
        Self {
            phrases,
            whole_words,
            automaton,
        }
    }

    /// Every match of a phrase in `normalized` that counts (at word edges for whole-word sets),
    /// as the phrase's index.
    fn matches<'a>(&'a self, normalized: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.automaton
            .iter()
            .flat_map(move |automaton| automaton.find_overlapping_iter(normalized))
            .filter(move |m| {
                let phrase = &self.phrases[m.pattern().as_usize()];
                !phrase.is_empty()
                    && (!self.whole_words || at_word_edges(normalized, phrase, m.start(), m.end()))
            })
            .map(|m| m.pattern().as_usize())
    }

    /// The first phrase (in sorted order) found in `normalized` (text already passed through
    /// [`normalize`]).
    pub(super) fn find(&self, normalized: &str) -> Option<&str> {
        self.matches(normalized)
            .min()
            .map(|i| self.phrases[i].as_str())
    }

    /// For each phrase, in the order given, whether it is found in `normalized`.
    pub(super) fn found(&self, normalized: &str) -> Vec<bool> {
        let mut found = vec![false; self.phrases.len()];
        for i in self.matches(normalized) {
            found[i] = true;
        }
        found
    }
}

/// Whether `phrase`, found at `start..end` of `haystack`, stands as whole words there: an edge
/// of the phrase that is a letter or digit does not touch another letter or digit.
fn at_word_edges(haystack: &str, phrase: &str, start: usize, end: usize) -> bool {
    let edge_start = phrase.chars().next().is_some_and(char::is_alphanumeric);
    let edge_end = phrase
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric);
    let before_ok = !edge_start
        || !haystack[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
    let after_ok = !edge_end
        || !haystack[end..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric);
    before_ok && after_ok
}

/// Built-in phrases of a generic assistant: refusals and AI self-references.
pub(crate) const REFUSAL_PHRASES: &[&str] = &[
    "I'm sorry, but I can't",
    "I'm sorry, but I cannot",
    "I am sorry, but I cannot",
    "I'm sorry, I can't",
    "I cannot assist",
    "I can't assist",
    "I cannot help with that",
    "I can't help with that",
    "I'm unable to help",
    "I am unable to help",
    "I'm not able to help",
    "As an AI language model",
    "as an AI",
    "as a language model",
    "as a large language model",
    "I'm just an AI",
    "I am just an AI",
    "I'm an AI assistant",
    "I am an AI assistant",
    "I don't have personal opinions",
    "I do not have personal opinions",
    "I don't have personal experiences",
    "I do not have personal experiences",
    "I don't have feelings",
    "I do not have feelings",
    "I don't have personal preferences",
    "my knowledge cutoff",
    "my training data",
    "I'm here to help",
    "I am here to help",
    "assist you",
    "how can I assist",
    "how may I assist",
    "my primary function",
];

/// Built-in signs of provider error text leaking into a response.
pub(crate) const ERROR_TEXT_PATTERNS: &[&str] = &[
    "error code: 4",
    "error code: 5",
    "internal server error",
    "{\"error\":",
    "{\"error\" :",
    "rate limit",
    "rate_limit",
    "ratelimit",
    "too many requests",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "overloaded_error",
    "context_length_exceeded",
    "<!doctype html",
    "traceback (most recent call last)",
];

/// 64-bit FNV-1a: a small, stable hash for in-memory sets.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash ^= 0x1f;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        for byte in part.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The words of a prompt for distinct-n: lowercase, split on whitespace, edge punctuation removed.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_chars() {
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("héllo wörld", 5), "héllo…");
    }

    #[test]
    fn whole_word_phrases() {
        let p = Phrases::words(["hon", "as an AI"]);
        assert!(p.find(&normalize("Thanks, hon!")).is_some());
        assert!(p.find(&normalize("Be honest")).is_none());
        assert!(p.find(&normalize("speaking As an   AI, I")).is_some());
        assert!(p.find(&normalize("as an aide")).is_none());
        assert!(
            Phrases::words(["I\u{2019}m sorry"])
                .find(&normalize("I'm sorry"))
                .is_some()
        );
    }

    #[test]
    fn substrings_match_anywhere() {
        let p = Phrases::substrings(ERROR_TEXT_PATTERNS);
        assert_eq!(
            p.find(&normalize("Error code: 429 - rate limited")),
            Some("error code: 4")
        );
        assert!(p.find(&normalize("The Cubs won 4-2.")).is_none());
    }
}

/// Hash maps and sets of the detectors and checks: many small keys (words, n-grams, hashes) per
/// reply, hashed with [`FxHasher`] instead of SipHash (the data is the user's own, so there is
/// no flooding to defend against).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildFxHasher>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, BuildFxHasher>;
/// Builds [`FxHasher`]s.
pub(crate) type BuildFxHasher = std::hash::BuildHasherDefault<FxHasher>;

/// The multiply-rotate hash of rustc and Firefox: a word at a time, no finalization.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
