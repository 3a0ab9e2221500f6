//! The minimal training record of one sample in each JSONL export format (no provenance).
//!
//! * `trl` — TRL's conversational formats: `{"id", "messages"}` for a chat sample and
//!   `{"id", "prompt", "chosen", "rejected"}` for a preference pair. `id` is kept: TRL, axolotl
//!   and `datasets` ignore extra columns, and it ties a training row back to the dataset and its
//!   manifest.
//! * `openai` — OpenAI fine-tuning: `{"messages"}` (supervised) and
//!   `{"input": {"messages"}, "preferred_output", "non_preferred_output"}` (DPO). No `id`: the
//!   upload validator knows only the documented keys.
//! * `sharegpt` — ShareGPT as LLaMA-Factory reads it: `{"id", "conversations": [{"from", "value"}]}`
//!   with `from` one of `system` (first turn only), `human`, `gpt`; a preference pair adds
//!   `chosen` and `rejected`, each one `{"from": "gpt", "value"}` object (`ranking: true`).

use crate::format::{Message, PreferenceLine, SampleLine};
use serde::Serialize;

use super::ExportFormat;

#[derive(Serialize)]
pub(crate) struct TrlChat<'a> {
    id: &'a str,
    messages: &'a [Message],
}

#[derive(Serialize)]
pub(crate) struct TrlPreference<'a> {
    id: &'a str,
    prompt: &'a [Message],
    chosen: &'a [Message],
    rejected: &'a [Message],
}

#[derive(Serialize)]
pub(crate) struct OpenAiChat<'a> {
    messages: &'a [Message],
}

#[derive(Serialize)]
pub(crate) struct OpenAiInput<'a> {
    messages: &'a [Message],
}

#[derive(Serialize)]
pub(crate) struct OpenAiPreference<'a> {
    input: OpenAiInput<'a>,
    preferred_output: &'a [Message],
    non_preferred_output: &'a [Message],
}

#[derive(Serialize)]
pub(crate) struct ShareGptTurn<'a> {
    from: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
pub(crate) struct ShareGptChat<'a> {
    id: &'a str,
    conversations: Vec<ShareGptTurn<'a>>,
}

#[derive(Serialize)]
pub(crate) struct ShareGptPreference<'a> {
    id: &'a str,
    conversations: Vec<ShareGptTurn<'a>>,
    chosen: ShareGptTurn<'a>,
    rejected: ShareGptTurn<'a>,
}

/// ShareGPT's name for a role: `human` for the user, `gpt` for the assistant.
fn sharegpt_role(role: &str) -> &str {
    match role {
        "user" => "human",
        "assistant" => "gpt",
        other => other,
    }
}

fn sharegpt_turns(messages: &[Message]) -> Vec<ShareGptTurn<'_>> {
    messages
        .iter()
        .map(|m| ShareGptTurn {
            from: sharegpt_role(&m.role),
            value: &m.content,
        })
        .collect()
}

/// The one assistant message of a checked pair's `chosen` or `rejected`.
fn answer(messages: &[Message]) -> ShareGptTurn<'_> {
    let message = messages.first().expect("a checked pair has one answer");
    ShareGptTurn {
        from: sharegpt_role(&message.role),
        value: &message.content,
    }
}

/// The minimal record of one sample in one JSONL format, serialized with its keys in the
/// documented order.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Record<'a> {
    TrlChat(TrlChat<'a>),
    TrlPreference(TrlPreference<'a>),
    OpenAiChat(OpenAiChat<'a>),
    OpenAiPreference(OpenAiPreference<'a>),
    ShareGptChat(ShareGptChat<'a>),
    ShareGptPreference(ShareGptPreference<'a>),
}

/// The record of `line` in `format` (Parquet rows have TRL's columns).
pub(crate) fn record(format: ExportFormat, line: &SampleLine) -> Record<'_> {
    match (format, line) {
        (ExportFormat::Trl | ExportFormat::Parquet, SampleLine::Chat(chat)) => {
            Record::TrlChat(TrlChat {
                id: &chat.id,
                messages: &chat.messages,
            })
        }
        (ExportFormat::Trl | ExportFormat::Parquet, SampleLine::Preference(p)) => {
            Record::TrlPreference(trl_preference(p))
        }
        (ExportFormat::Openai, SampleLine::Chat(chat)) => Record::OpenAiChat(OpenAiChat {
            messages: &chat.messages,
        }),
        (ExportFormat::Openai, SampleLine::Preference(p)) => {
            Record::OpenAiPreference(OpenAiPreference {
                input: OpenAiInput {
                    messages: &p.prompt,
                },
                preferred_output: &p.chosen,
                non_preferred_output: &p.rejected,
            })
        }
        (ExportFormat::Sharegpt, SampleLine::Chat(chat)) => Record::ShareGptChat(ShareGptChat {
            id: &chat.id,
            conversations: sharegpt_turns(&chat.messages),
        }),
        (ExportFormat::Sharegpt, SampleLine::Preference(p)) => {
            Record::ShareGptPreference(ShareGptPreference {
                id: &p.id,
                conversations: sharegpt_turns(&p.prompt),
                chosen: answer(&p.chosen),
                rejected: answer(&p.rejected),
            })
        }
    }
}

fn trl_preference(p: &PreferenceLine) -> TrlPreference<'_> {
    TrlPreference {
        id: &p.id,
        prompt: &p.prompt,
        chosen: &p.chosen,
        rejected: &p.rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ChatLine;

    fn chat() -> SampleLine {
        SampleLine::Chat(ChatLine::minimal(
            "c-1",
            vec![
                Message::system("You are Dee."),
                Message::user("Pie?"),
                Message::assistant("Cherry, hon."),
            ],
        ))
    }

    fn pair() -> SampleLine {
        SampleLine::Preference(PreferenceLine::minimal(
            "p-1",
            vec![Message::user("Pie?")],
            Message::assistant("Cherry, hon."),
            Message::assistant("Pie is a baked dish."),
        ))
    }

    #[test]
    fn every_format_writes_the_documented_keys() {
        let text = |format, line: &SampleLine| {
            serde_json::to_string(&record(format, line)).expect("serializes")
        };
        assert_eq!(
            text(ExportFormat::Trl, &chat()),
            r#"{"id":"c-1","messages":[{"role":"system","content":"You are Dee."},{"role":"user","content":"Pie?"},{"role":"assistant","content":"Cherry, hon."}]}"#
        );
        assert_eq!(
            text(ExportFormat::Openai, &pair()),
            r#"{"input":{"messages":[{"role":"user","content":"Pie?"}]},"preferred_output":[{"role":"assistant","content":"Cherry, hon."}],"non_preferred_output":[{"role":"assistant","content":"Pie is a baked dish."}]}"#
        );
        assert_eq!(
            text(ExportFormat::Sharegpt, &chat()),
            r#"{"id":"c-1","conversations":[{"from":"system","value":"You are Dee."},{"from":"human","value":"Pie?"},{"from":"gpt","value":"Cherry, hon."}]}"#
        );
        assert_eq!(
            text(ExportFormat::Sharegpt, &pair()),
            r#"{"id":"p-1","conversations":[{"from":"human","value":"Pie?"}],"chosen":{"from":"gpt","value":"Cherry, hon."},"rejected":{"from":"gpt","value":"Pie is a baked dish."}}"#
        );
    }
}
