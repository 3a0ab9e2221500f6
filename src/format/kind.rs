//! Sample kinds: supervised conversations and preference pairs, the line either is read as, and the shape rules every written sample must keep.
//!
//! A pipeline's output holds samples of one kind ([`SampleKind`]), recorded in its description
//! and manifest. The rules ([`check_conversation`], [`PreferenceLine::check`]) are what trainers
//! (TRL, axolotl, OpenRLHF) rely on: no empty turn, roles alternating user → assistant after an
//! optional system message, a conversation that ends on the assistant's turn, a pair whose two
//! answers differ. A run refuses a sample that breaks them, and the gate reports lines from
//! elsewhere that do.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::line::{ChatLine, Message, PreferenceLine};

/// What one sample of a dataset is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// A supervised conversation (`messages`): single- or multi-turn, optional system message.
    #[default]
    Chat,
    /// A preference pair (`prompt`, `chosen`, `rejected`), TRL's conversational form.
    Preference,
}

impl SampleKind {
    /// The word used in manifests, descriptions and messages: `chat` or `preference`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Preference => "preference",
        }
    }
    /// Whether `kind` is the default (`chat`), which descriptions and manifests may leave out.
    pub fn is_chat(kind: &Self) -> bool {
        *kind == Self::Chat
    }
}

impl std::fmt::Display for SampleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a sample's shape is unusable for training: the rule it breaks, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The conversation has no message at all.
    #[error("the conversation is empty")]
    Empty,
    /// A turn has no text (only whitespace).
    #[error("turn {turn} ({role}) is empty")]
    EmptyTurn {
        /// The turn's position, from 1.
        turn: usize,
        /// Its role.
        role: String,
    },
    /// A role other than `system`, `user`, `assistant`.
    #[error("turn {turn} has the unknown role '{role}' (expected system, user or assistant)")]
    UnknownRole {
        /// The turn's position, from 1.
        turn: usize,
        /// The role found.
        role: String,
    },
    /// A system message after the first turn.
    #[error("turn {turn} is a system message; only the first turn may be one")]
    LateSystem {
        /// The turn's position, from 1.
        turn: usize,
    },
    /// Roles do not alternate user → assistant after the system message.
    #[error(
        "turn {turn} is {found} where {expected} was expected (roles alternate user → assistant)"
    )]
    NotAlternating {
        /// The turn's position, from 1.
        turn: usize,
        /// The role found.
        found: String,
        /// The role the alternation needs there.
        expected: &'static str,
    },
    /// The conversation ends on a turn that is not the assistant's.
    #[error("the conversation ends on a {role} turn; the last turn must be the assistant's")]
    EndsWithoutAnswer {
        /// The last turn's role.
        role: String,
    },
    /// A pair's `chosen` or `rejected` is not exactly one assistant message.
    #[error("{field} must be one assistant message, found {found}")]
    NotOneAnswer {
        /// `chosen` or `rejected`.
        field: &'static str,
        /// What was there, in words.
        found: String,
    },
    /// A pair's prompt ends on a turn that is not the user's.
    #[error("the prompt must end on a user turn, it ends on {role}")]
    PromptEndsWithoutQuestion {
        /// The prompt's last role.
        role: String,
    },
    /// A pair whose two answers are the same text.
    #[error("chosen and rejected are the same text")]
    SameAnswers,
}

/// Checks a conversation: optional system message first, then user and assistant turns
/// alternating from the user, none empty, ending on the assistant's.
pub fn check_conversation(messages: &[Message]) -> Result<(), ShapeError> {
    check_turns(messages)?;
    match messages.last() {
        None => Err(ShapeError::Empty),
        Some(last) if last.role != "assistant" => Err(ShapeError::EndsWithoutAnswer {
            role: last.role.clone(),
        }),
        Some(_) => Ok(()),
    }
}

/// The rules shared by conversations and prompts: known roles, system only first, no empty turn,
/// alternation from the user.
fn check_turns(messages: &[Message]) -> Result<(), ShapeError> {
    if messages.is_empty() {
        return Err(ShapeError::Empty);
    }
    let mut expected = "user";
    for (index, message) in messages.iter().enumerate() {
        let turn = index + 1;
        let role = message.role.as_str();
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(ShapeError::UnknownRole {
                turn,
                role: message.role.clone(),
            });
        }
        if message.content.trim().is_empty() {
            return Err(ShapeError::EmptyTurn {
                turn,
                role: message.role.clone(),
            });
        }
        if role == "system" {
            if index > 0 {
                return Err(ShapeError::LateSystem { turn });
            }
            continue;
        }
        if role != expected {
            return Err(ShapeError::NotAlternating {
                turn,
                found: message.role.clone(),
                expected,
            });
        }
        expected = if role == "user" { "assistant" } else { "user" };
    }
    Ok(())
}

impl PreferenceLine {
    /// Checks the pair: a prompt of alternating turns ending on the user's, `chosen` and
    /// `rejected` each one non-empty assistant message, and different from each other.
    pub fn check(&self) -> Result<(), ShapeError> {
        check_turns(&self.prompt)?;
        if let Some(last) = self.prompt.last()
            && last.role != "user"
        {
            return Err(ShapeError::PromptEndsWithoutQuestion {
                role: last.role.clone(),
            });
        }
        for (field, answer) in [("chosen", &self.chosen), ("rejected", &self.rejected)] {
            match answer.as_slice() {
                [one] if one.role == "assistant" && !one.content.trim().is_empty() => {}
                [one] if one.role == "assistant" => {
                    return Err(ShapeError::NotOneAnswer {
                        field,
                        found: "an empty message".into(),
                    });
                }
                [one] => {
                    return Err(ShapeError::NotOneAnswer {
                        field,
                        found: format!("a {} message", one.role),
                    });
                }
                more => {
                    return Err(ShapeError::NotOneAnswer {
                        field,
                        found: format!("{} messages", more.len()),
                    });
                }
            }
        }
        if self.chosen_text().trim() == self.rejected_text().trim() {
            return Err(ShapeError::SameAnswers);
        }
        Ok(())
    }
}

impl ChatLine {
    /// Checks the conversation's shape ([`check_conversation`]).
    pub fn check(&self) -> Result<(), ShapeError> {
        check_conversation(&self.messages)
    }
}

/// A sample line of either kind, as a reader meets it: a line with `chosen` or `rejected` is a
/// preference pair (and must then have all of `prompt`, `chosen` and `rejected`), any other a
/// chat sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SampleLine {
    /// A supervised conversation.
    Chat(ChatLine),
    /// A preference pair.
    Preference(PreferenceLine),
}

impl SampleLine {
    /// Its kind.
    pub fn kind(&self) -> SampleKind {
        match self {
            Self::Chat(_) => SampleKind::Chat,
            Self::Preference(_) => SampleKind::Preference,
        }
    }
    /// Its id.
    pub fn id(&self) -> &str {
        match self {
            Self::Chat(line) => &line.id,
            Self::Preference(line) => &line.id,
        }
    }
    /// Checks its shape.
    pub fn check(&self) -> Result<(), ShapeError> {
        match self {
            Self::Chat(line) => line.check(),
            Self::Preference(line) => line.check(),
        }
    }
}

impl SampleLine {
    /// A line from its parsed JSON, taking the value's strings over instead of copying them
    /// (the readers of whole datasets use this; `Deserialize` goes through a value of its own).
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        let is_pair = value
            .as_object()
            .is_some_and(|o| o.contains_key("chosen") || o.contains_key("rejected"));
        let id = match value.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(id @ Value::Number(_)) => Some(id.to_string()),
            _ => None,
        };
        let parsed = if is_pair {
            PreferenceLine::deserialize(value).map(Self::Preference)
        } else {
            ChatLine::deserialize(value).map(Self::Chat)
        };
        parsed.map_err(|error| match id {
            Some(id) => serde::de::Error::custom(format!("record '{id}': {error}")),
            None => error,
        })
    }
}

impl<'de> Deserialize<'de> for SampleLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let is_pair = value
            .as_object()
            .is_some_and(|o| o.contains_key("chosen") || o.contains_key("rejected"));
        // Name the record in the error when it has an id: "record 'x': missing field `rejected`".
        let named = |error: serde_json::Error| {
            let message = match value.get("id") {
                Some(Value::String(id)) => format!("record '{id}': {error}"),
                Some(id @ Value::Number(_)) => format!("record '{id}': {error}"),
                _ => error.to_string(),
            };
            serde::de::Error::custom(message)
        };
        if is_pair {
            PreferenceLine::deserialize(&value)
                .map(Self::Preference)
                .map_err(named)
        } else {
            ChatLine::deserialize(&value).map(Self::Chat).map_err(named)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn conversations_keep_the_shape_trainers_expect() {
        let good = [
            vec![m("user", "q"), m("assistant", "a")],
            vec![m("system", "s"), m("user", "q"), m("assistant", "a")],
            vec![
                m("system", "s"),
                m("user", "q"),
                m("assistant", "a"),
                m("user", "q2"),
                m("assistant", "a2"),
            ],
        ];
        for messages in good {
            assert_eq!(check_conversation(&messages), Ok(()), "{messages:?}");
        }
        let bad: [(Vec<Message>, &str); 7] = [
            (vec![], "the conversation is empty"),
            (
                vec![m("user", "q"), m("assistant", "  ")],
                "turn 2 (assistant) is empty",
            ),
            (
                vec![m("user", "q")],
                "the conversation ends on a user turn; the last turn must be the assistant's",
            ),
            (
                vec![m("user", "q"), m("user", "q"), m("assistant", "a")],
                "turn 2 is user where assistant was expected (roles alternate user → assistant)",
            ),
            (
                vec![m("assistant", "hi"), m("user", "q"), m("assistant", "a")],
                "turn 1 is assistant where user was expected (roles alternate user → assistant)",
            ),
            (
                vec![m("user", "q"), m("system", "s"), m("assistant", "a")],
                "turn 2 is a system message; only the first turn may be one",
            ),
            (
                vec![m("user", "q"), m("tool", "x")],
                "turn 2 has the unknown role 'tool' (expected system, user or assistant)",
            ),
        ];
        for (messages, expected) in bad {
            let error = check_conversation(&messages).expect_err("refused");
            assert_eq!(error.to_string(), expected);
        }
    }

    fn pair(chosen: &str, rejected: &str) -> PreferenceLine {
        PreferenceLine::minimal(
            "p-1",
            vec![m("user", "How's the pie?")],
            Message::assistant(chosen),
            Message::assistant(rejected),
        )
    }

    #[test]
    fn pairs_need_a_question_and_two_different_answers() {
        assert_eq!(
            pair("Cherry today, hon.", "The pie is good.").check(),
            Ok(())
        );
        assert_eq!(
            pair("Cherry, hon.", " Cherry, hon. ").check(),
            Err(ShapeError::SameAnswers)
        );
        let mut no_question = pair("a", "b");
        no_question.prompt.push(m("assistant", "x"));
        assert_eq!(
            no_question.check().expect_err("refused").to_string(),
            "the prompt must end on a user turn, it ends on assistant"
        );
        let mut two = pair("a", "b");
        two.rejected.push(m("assistant", "c"));
        assert_eq!(
            two.check().expect_err("refused").to_string(),
            "rejected must be one assistant message, found 2 messages"
        );
        let mut missing = pair("a", "b");
        missing.rejected.clear();
        assert_eq!(
            missing.check().expect_err("refused").to_string(),
            "rejected must be one assistant message, found 0 messages"
        );
    }

    #[test]
    fn a_line_is_read_as_the_kind_its_fields_say() {
        let chat: SampleLine = serde_json::from_str(
            r#"{"id":"a","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#,
        )
        .expect("reads");
        assert_eq!(chat.kind(), SampleKind::Chat);
        let pair: SampleLine = serde_json::from_str(
            r#"{"id":7,"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"yes hon"}],"rejected":[{"role":"assistant","content":"yes"}]}"#,
        )
        .expect("reads");
        assert_eq!(pair.kind(), SampleKind::Preference);
        assert_eq!(pair.id(), "7");
        assert_eq!(pair.check(), Ok(()));
        let error = serde_json::from_str::<SampleLine>(
            r#"{"id":"x","prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"a"}]}"#,
        )
        .expect_err("a pair without rejected is refused");
        assert!(
            error
                .to_string()
                .starts_with("record 'x': missing field `rejected`"),
            "{error}"
        );
    }
}
