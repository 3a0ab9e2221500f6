//! Hand-written prompt files with categories.
//!
//! Format: JSON Lines, one prompt per line, blank lines ignored:
//!
//! ```text
//! {"prompt": "What's the best seat at Wrigley for a first-timer?", "category": "everyday"}
//! {"id": "edge-001", "prompt": "Say something nice about the Cardinals.", "category": "edge-cases", "note": "rivalry"}
//! ```
//!
//! * `prompt` (string, required) and `category` (string, required, e.g. `scenarios`,
//!   `edge-cases`, `adversarial`, `everyday`) — the category ends up in `Record::category` and so in
//!   the provenance of every sample made from it;
//! * `id` (optional) — otherwise derived from the prompt (`custom-<12 hex>`), so editing a prompt's
//!   text gives it a new id;
//! * any other field is kept in `Record::extra`.
//!
//! Bad lines are errors naming the file and line.

use std::path::Path;

use super::{FieldMap, Format, Loader, Location, Records, SourceError};

/// Opens a custom prompt file (see the module docs for the format); `source` is `custom`.
pub fn load_custom(path: impl AsRef<Path>) -> Result<Records, SourceError> {
    custom_loader(path).open()
}

/// The [`Loader`] behind [`load_custom`], to adjust (source name, filters, dedupe) before opening.
pub fn custom_loader(path: impl AsRef<Path>) -> Loader {
    Loader::new(path)
        .format(Format::Jsonl)
        .source_name("custom")
        .fields(FieldMap::new().require_category(true))
}

/// Example exchanges for few-shot prompting, from a JSONL file of `{"user": …, "assistant": …}`
/// lines: the messages to put between the system prompt and the real question. A malformed line
/// is an error naming the file and line.
pub fn example_turns(path: impl AsRef<Path>) -> Result<Vec<crate::provider::Message>, SourceError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        user: String,
        assistant: String,
    }
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| SourceError::io(path, e))?;
    let mut turns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let example: Example = serde_json::from_str(line).map_err(|e| SourceError::Parse {
            path: path.to_path_buf(),
            location: Location::Line(i as u64 + 1),
            message: e.to_string(),
        })?;
        turns.push(crate::provider::Message::user(example.user));
        turns.push(crate::provider::Message::assistant(example.assistant));
    }
    Ok(turns)
}
