//! Judging replies in their context: one assistant turn of a multi-turn conversation, a
//! preference pair (`chosen` judged, then the pair rules), and a whole sample line of either
//! kind with its shape rules.
//!
//! A conversation fails when any of its assistant turns fails; each finding names its turn
//! (`turn 4: degeneration: …`, the message's position from 1 as [`ShapeError`] counts) when the
//! conversation has more than one exchange, so single-turn samples read as before. A pair is
//! judged on `chosen` against its prompt (findings `chosen: …`), and fails the pair rules when
//! `rejected` is empty (`rejected: empty: …`), is `chosen` again, or shows more voice markers
//! than `chosen`. `rejected` is not judged otherwise: it is meant to be off-voice.

use super::super::text::normalize;
use super::{Detectors, Finding, Reason, Turn, Verdict, repetition, words};
use crate::format::{ChatLine, Message, PreferenceLine, SampleLine, ShapeError, Step};

/// What the dataset checks and stats need of a judged line besides its [`Verdict`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SampleFacts {
    /// Assistant turns of a conversation (1 for a pair: `chosen`).
    pub(crate) replies: u64,
    /// Of those, the ones showing a voice marker.
    pub(crate) replies_with_marker: u64,
    /// Exchanges of a conversation (its assistant turns); `None` for a pair.
    pub(crate) exchanges: Option<u64>,
    /// The assistant text the duplicate check compares: every assistant turn of a
    /// conversation, `chosen` of a pair.
    pub(crate) assistant_text: String,
    /// Marker counts and lengths of a pair's two answers.
    pub(crate) pair: Option<PairFacts>,
}

/// Marker counts and lengths of a pair's answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PairFacts {
    /// Voice markers `chosen` shows.
    pub(crate) chosen_markers: u64,
    /// Voice markers `rejected` shows.
    pub(crate) rejected_markers: u64,
    /// `chosen`'s length in words.
    pub(crate) chosen_words: u64,
    /// `rejected`'s length in words.
    pub(crate) rejected_words: u64,
}

/// A judged line: the verdict and the facts the dataset checks count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Judged {
    pub(crate) verdict: Verdict,
    pub(crate) facts: SampleFacts,
}

impl Detectors {
    /// Judge one assistant reply in the context of a conversation: `context` is everything
    /// before the reply (an optional system message, then user and assistant turns, normally
    /// ending on the user turn the reply answers).
    ///
    /// The reply is judged like [`Detectors::judge`] against the last user turn of `context`
    /// (its prompt), with `finish_reason` from the step that produced it; besides, copying a
    /// run of more than ten words from the system message is role confusion (a leaked system
    /// prompt), and repeating an earlier assistant turn of `context` (the same words, over half
    /// its word trigrams, or more than ten words in a row) is an echo naming that turn. With a
    /// context of one user message this is exactly [`Detectors::judge`].
    ///
    /// Findings carry no place ([`Finding::at`] is `None`): the caller knows which turn it judged.
    pub fn judge_in_conversation(
        &self,
        context: &[Message],
        reply: &str,
        finish_reason: Option<&str>,
    ) -> Verdict {
        let prompt = context
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let mut verdict = self.judge(&Turn {
            prompt,
            reply,
            finish_reason,
        });
        if verdict.has(Reason::Empty) {
            return verdict;
        }
        let reply_words = words::words(&words::plain_apostrophes(reply));
        if !verdict.has(Reason::RoleConfusion)
            && let Some(system) = context.first().filter(|m| m.role == "system")
        {
            let system_words = words::words(&words::plain_apostrophes(&system.content));
            if let Some((len, run)) = repetition::copied_run(&reply_words, &system_words) {
                verdict.findings.push(Finding::new(
                    Reason::RoleConfusion,
                    format!("copies {len} words in a row from the system message: '{run}'"),
                ));
            }
        }
        if !verdict.has(Reason::Echo) {
            let earlier = context
                .iter()
                .enumerate()
                .filter(|(_, m)| m.role == "assistant");
            for (index, message) in earlier {
                let earlier_words = words::words(&words::plain_apostrophes(&message.content));
                let what = format!("the reply of turn {}", index + 1);
                if let Some(detail) = repetition::repeats(&reply_words, &earlier_words, &what) {
                    verdict.findings.push(Finding::new(Reason::Echo, detail));
                    break;
                }
            }
        }
        verdict
    }

    /// The pair rules of a preference pair, without judging `chosen` itself (see
    /// [`Detectors::judge_pair`]): `rejected` must have text (`rejected: empty: …`), must not be
    /// `chosen` again, whitespace and case aside ([`Reason::SameAnswers`]), and must not show
    /// more of the identity's voice markers ([`Detectors::markers`]) than `chosen`
    /// ([`Reason::RejectedVoice`]). An empty result: the pair passes the rules.
    pub fn check_pair(&self, chosen: &str, rejected: &str) -> Vec<Finding> {
        let rejected_normalized = normalize(rejected);
        if rejected_normalized.is_empty() {
            return vec![Finding::new(Reason::Empty, "the reply has no text").within("rejected")];
        }
        let chosen_normalized = normalize(chosen);
        if chosen_normalized == rejected_normalized {
            return vec![Finding::new(
                Reason::SameAnswers,
                "rejected is the chosen answer again (whitespace and case aside)",
            )];
        }
        let chosen_markers = self.markers_of_normalized(&chosen_normalized);
        let rejected_markers = self.markers_of_normalized(&rejected_normalized);
        if rejected_markers.len() > chosen_markers.len() {
            return vec![Finding::new(
                Reason::RejectedVoice,
                format!(
                    "rejected shows {} voice marker{} ({}), chosen {}{}",
                    rejected_markers.len(),
                    if rejected_markers.len() == 1 { "" } else { "s" },
                    rejected_markers.join(", "),
                    chosen_markers.len(),
                    if chosen_markers.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", chosen_markers.join(", "))
                    }
                ),
            )];
        }
        Vec::new()
    }

    /// Judge a preference pair: `chosen` in the context of `prompt` (the conversation before
    /// it, ending on the user's turn; see [`Detectors::judge_in_conversation`]), its findings
    /// marked `chosen`, then the pair rules ([`Detectors::check_pair`]). The verdict's markers
    /// are `chosen`'s. `rejected` is not judged for voice or persona: it is meant to be
    /// off-voice. `finish_reason` is that of the step that produced `chosen`.
    pub fn judge_pair(
        &self,
        prompt: &[Message],
        chosen: &str,
        rejected: &str,
        finish_reason: Option<&str>,
    ) -> Verdict {
        let mut verdict = self.judge_in_conversation(prompt, chosen, finish_reason);
        for finding in &mut verdict.findings {
            finding.at = Some("chosen".to_owned());
        }
        verdict.findings.extend(self.check_pair(chosen, rejected));
        verdict
    }

    /// Judge a dataset record: every assistant turn in the context before it
    /// ([`Detectors::judge_in_conversation`]), and the conversation's shape
    /// ([`crate::format::check_conversation`]; a shape failure is a [`Reason::Shape`] finding,
    /// except an empty assistant turn, which the `empty` detector reports). The sample fails if
    /// any turn fails; in a conversation of several exchanges each finding names its turn. A
    /// single exchange is judged exactly as [`Detectors::judge`] judges [`Turn::of_record`].
    pub fn judge_record(&self, record: &ChatLine) -> Verdict {
        self.judge_conversation(record).verdict
    }

    /// Judge a sample line of either kind: a conversation as [`Detectors::judge_record`], a
    /// pair as [`Detectors::judge_pair`] plus its shape ([`PreferenceLine::check`]).
    pub fn judge_sample(&self, line: &SampleLine) -> Verdict {
        self.judge_line(line).verdict
    }

    /// [`Detectors::judge_sample`] with the facts the dataset checks count.
    pub(crate) fn judge_line(&self, line: &SampleLine) -> Judged {
        match line {
            SampleLine::Chat(record) => self.judge_conversation(record),
            SampleLine::Preference(pair) => self.judge_preference(pair),
        }
    }

    fn judge_conversation(&self, record: &ChatLine) -> Judged {
        let messages = &record.messages;
        let mut findings = Vec::new();
        if let Err(error) = record.check() {
            let empty_reply =
                matches!(&error, ShapeError::EmptyTurn { role, .. } if role == "assistant");
            if !empty_reply {
                findings.push(Finding::new(Reason::Shape, error.to_string()));
            }
        }
        let turns: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
            .map(|(i, _)| i)
            .collect();
        let several = turns.len() > 1;
        let last = turns.last().copied();
        let mut markers: Vec<String> = Vec::new();
        let mut facts = SampleFacts {
            exchanges: Some(turns.len() as u64),
            ..SampleFacts::default()
        };
        if turns.is_empty() {
            // No answer at all: an empty reply to the last user turn, as before kinds.
            findings.extend(self.judge_in_conversation(messages, "", None).findings);
            facts.replies = 1;
        }
        let steps = record.steps();
        for &at in &turns {
            let reply = messages[at].content.as_str();
            let finish_reason = if Some(at) == last {
                record.final_step()
            } else {
                step_of(steps, reply)
            }
            .and_then(|step| step.finish_reason.as_deref());
            let verdict = self.judge_in_conversation(&messages[..at], reply, finish_reason);
            facts.replies += 1;
            if !verdict.markers.is_empty() {
                facts.replies_with_marker += 1;
            }
            for marker in verdict.markers {
                if !markers.contains(&marker) {
                    markers.push(marker);
                }
            }
            for finding in verdict.findings {
                findings.push(if several {
                    finding.within(format!("turn {}", at + 1))
                } else {
                    finding
                });
            }
            if !facts.assistant_text.is_empty() {
                facts.assistant_text.push('\n');
            }
            facts.assistant_text.push_str(reply);
        }
        Judged {
            verdict: Verdict { findings, markers },
            facts,
        }
    }

    fn judge_preference(&self, pair: &PreferenceLine) -> Judged {
        let (chosen, rejected) = (pair.chosen_text(), pair.rejected_text());
        let mut findings = Vec::new();
        if let Err(error) = pair.check() {
            // These the pair rules and the `empty` detector report in their own words.
            let reported = match &error {
                ShapeError::SameAnswers => true,
                ShapeError::NotOneAnswer { found, .. } => found == "an empty message",
                _ => false,
            };
            if !reported {
                findings.push(Finding::new(Reason::Shape, error.to_string()));
            }
        }
        let finish_reason = step_of(pair.steps(), chosen).and_then(|s| s.finish_reason.as_deref());
        let verdict = self.judge_pair(&pair.prompt, chosen, rejected, finish_reason);
        findings.extend(verdict.findings);
        let words = |text: &str| words::words(text).len() as u64;
        let facts = SampleFacts {
            replies: 1,
            replies_with_marker: u64::from(!verdict.markers.is_empty()),
            exchanges: None,
            assistant_text: chosen.to_owned(),
            pair: Some(PairFacts {
                chosen_markers: verdict.markers.len() as u64,
                rejected_markers: self.markers(rejected).len() as u64,
                chosen_words: words(chosen),
                rejected_words: words(rejected),
            }),
        };
        Judged {
            verdict: Verdict {
                findings,
                markers: verdict.markers,
            },
            facts,
        }
    }
}

/// The last step whose text is `reply` (surrounding whitespace aside).
fn step_of<'a>(steps: &'a [Step], reply: &str) -> Option<&'a Step> {
    let reply = reply.trim();
    steps.iter().rev().find(|s| s.text.trim() == reply)
}

#[cfg(test)]
mod tests {
    use super::super::super::config::{QualityConfig, Voice};
    use super::*;

    fn dee() -> Detectors {
        let voice = Voice::parse(
            include_str!("../../../identity/voice.toml"),
            std::path::Path::new("identity/voice.toml"),
        )
        .unwrap();
        Detectors::new(&voice, &QualityConfig::default()).unwrap()
    }

    const GOOD: &str = "Oh hon, you'll do fine. Get a good night's sleep, eat a real breakfast, and \
                        show up ten minutes early for the interview. Then go get 'em, kiddo.";
    const GOOD_2: &str = "Pancakes, hon, always pancakes. My dad made them on the flat-top every \
                          Sunday morning at the diner, and I still use his recipe for the batter.";

    fn chat(messages: Vec<Message>) -> ChatLine {
        ChatLine::minimal("c-1", messages)
    }

    #[test]
    fn a_single_exchange_is_judged_as_before() {
        let detectors = dee();
        let record = chat(vec![
            Message::user("Any tips for a job interview tomorrow?"),
            Message::assistant("Yes."),
        ]);
        assert_eq!(
            detectors.judge_record(&record),
            detectors.judge(&Turn::of_record(&record))
        );
        assert!(
            detectors
                .judge_record(&record)
                .reasons()
                .iter()
                .all(|r| !r.starts_with("turn")),
            "no turn named for a single exchange"
        );
    }

    #[test]
    fn every_assistant_turn_is_judged_and_named() {
        let detectors = dee();
        let record = chat(vec![
            Message::system("You are Dee."),
            Message::user("Any tips for a job interview tomorrow?"),
            Message::assistant("I'm gonna grab the hot dog. ".repeat(9)),
            Message::user("What do you like for breakfast?"),
            Message::assistant(GOOD_2),
        ]);
        let verdict = detectors.judge_record(&record);
        assert!(!verdict.passed());
        assert!(
            verdict.reasons().contains(
                &"turn 3: degeneration: sentence 'I'm gonna grab the hot dog.' ×9".into()
            ),
            "{:?}",
            verdict.reasons()
        );
        assert!(
            verdict
                .findings
                .iter()
                .all(|f| f.at.as_deref() == Some("turn 3"))
        );
    }

    #[test]
    fn repeating_an_earlier_turn_or_the_system_message_fails() {
        let detectors = dee();
        let again = detectors.judge_in_conversation(
            &[
                Message::user("Any tips for a job interview tomorrow?"),
                Message::assistant(GOOD),
                Message::user("And what about the night before the interview?"),
            ],
            GOOD,
            Some("stop"),
        );
        assert!(
            again
                .reasons()
                .contains(&"echo: says again the reply of turn 2, word for word".into()),
            "{:?}",
            again.reasons()
        );
        let system = "Never forget: you run the diner on Clark Street with your dad's old recipes and you love the Cubs.";
        let leak = detectors.judge_in_conversation(
            &[Message::system(system), Message::user("Who are you, hon?")],
            "Well hon, I run the diner on Clark Street with your dad's old recipes and you love the Cubs, that's me.",
            Some("stop"),
        );
        assert!(
            leak.reasons().iter().any(|r| r
                .starts_with("role_confusion: copies 16 words in a row from the system message")),
            "{:?}",
            leak.reasons()
        );
    }

    #[test]
    fn pair_rules() {
        let detectors = dee();
        assert_eq!(
            detectors.check_pair(GOOD, "Get some sleep and arrive early."),
            vec![]
        );
        let same = detectors.check_pair(GOOD, &format!("  {}", GOOD.to_uppercase()));
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].reason, Reason::SameAnswers);
        let empty = detectors.check_pair(GOOD, " ");
        assert_eq!(
            empty[0].to_string(),
            "rejected: empty: the reply has no text"
        );
        let voiced = detectors.check_pair(
            "Get some sleep, hon, and arrive early to the interview.",
            GOOD,
        );
        assert_eq!(
            voiced[0].to_string(),
            "rejected_voice: rejected shows 2 voice markers (hon, kiddo), chosen 1 (hon)"
        );
    }

    #[test]
    fn a_pair_is_judged_on_chosen_and_by_its_rules() {
        let detectors = dee();
        let pair = PreferenceLine::minimal(
            "p-1",
            vec![Message::user("Any tips for a job interview tomorrow?")],
            Message::assistant("As an AI language model, I suggest you sleep well and prepare."),
            Message::assistant("Sleep well and prepare, friend, it will go great for you."),
        );
        let verdict = detectors.judge_sample(&SampleLine::Preference(pair));
        assert!(
            verdict
                .reasons()
                .iter()
                .any(|r| r.starts_with("chosen: refusal:")),
            "{:?}",
            verdict.reasons()
        );
        // The rejected answer is off-voice on purpose: not judged for it.
        let pair = PreferenceLine::minimal(
            "p-2",
            vec![Message::user("Any tips for a job interview tomorrow?")],
            Message::assistant(GOOD),
            Message::assistant("As an AI language model, I suggest you sleep well and prepare."),
        );
        let judged = detectors.judge_line(&SampleLine::Preference(pair));
        assert!(judged.verdict.passed(), "{:?}", judged.verdict.reasons());
        assert_eq!(
            judged
                .facts
                .pair
                .map(|p| (p.chosen_markers, p.rejected_markers)),
            Some((2, 0))
        );
    }

    #[test]
    fn shape_failures_are_findings() {
        let detectors = dee();
        let record = chat(vec![
            Message::user("Any tips for a job interview tomorrow?"),
            Message::assistant(GOOD),
            Message::user("Thanks!"),
        ]);
        let verdict = detectors.judge_record(&record);
        assert_eq!(
            verdict.reasons(),
            ["shape: the conversation ends on a user turn; the last turn must be the assistant's"]
        );
        let empty = chat(vec![
            Message::user("Hi there, hon?"),
            Message::assistant(" "),
        ]);
        assert_eq!(
            detectors.judge_record(&empty).reasons(),
            ["empty: the reply has no text"]
        );
        let unanswered = chat(vec![Message::user("Hi there, hon?")]);
        assert_eq!(
            detectors.judge_record(&unanswered).reasons(),
            [
                "shape: the conversation ends on a user turn; the last turn must be the assistant's",
                "empty: the reply has no text"
            ]
        );
    }
}
