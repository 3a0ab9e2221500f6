//! The dataset card (`README.md`) of an export: YAML front matter that tells Hugging Face
//! `datasets` and the Hub how to load the data, then what the data is and exactly what built it.
//!
//! The card is a function of the manifest, the identity's name and the export's options, so
//! exporting the same data twice writes the same bytes.

use std::fmt::Write;

use serde_json::Value;

use crate::format::SampleKind;
use crate::manifest::Manifest;

use super::{ExportFormat, parquet};

/// What a card says besides the manifest.
pub(crate) struct CardInput<'a> {
    /// The identity's name (`identity/voice.toml` `name`), if it has one.
    pub(crate) identity: Option<&'a str>,
    /// The manifest of the exported dataset.
    pub(crate) manifest: &'a Manifest,
    /// The export's format.
    pub(crate) format: ExportFormat,
    /// The data files, relative to the card.
    pub(crate) data_files: &'a [String],
    /// The command that writes this export.
    pub(crate) command: &'a str,
    /// Why the data was exported although it is not CURRENT (`--allow-stale`), if it is not.
    pub(crate) not_current: Option<&'a str>,
    /// The Hub repository the export is pushed to, if any.
    pub(crate) hub_repo: Option<&'a str>,
}

/// A YAML string scalar (double-quoted, escaped as JSON, which YAML accepts).
fn yaml(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Table cell text: no newlines, no bare pipes.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The card's Markdown.
pub(crate) fn render(input: &CardInput<'_>) -> String {
    let m = input.manifest;
    let identity = input.identity.unwrap_or("the identity");
    let title = match input.identity {
        Some(name) => format!("{name}: {}", m.pipeline),
        None => m.pipeline.clone(),
    };
    let mut out = String::new();
    // Front matter: the loading configuration and the schema.
    out.push_str("---\n");
    let _ = writeln!(out, "pretty_name: {}", yaml(&title));
    out.push_str("task_categories:\n- text-generation\n");
    let _ = writeln!(out, "size_categories:\n- {}", size_category(m.samples));
    out.push_str("tags:\n- shaping\n- synthetic\n");
    let _ = writeln!(
        out,
        "- {}",
        match m.kind {
            SampleKind::Chat => "sft",
            SampleKind::Preference => "dpo",
        }
    );
    if input.format == ExportFormat::Parquet {
        out.push_str("configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n");
        out.push_str("dataset_info:\n");
        // No `splits`: `datasets` wants their Arrow size in bytes, which only Arrow knows; the
        // sample count is in the card's text.
        out.push_str(&parquet::card_features(m.kind));
    }
    out.push_str("---\n\n");

    let _ = writeln!(out, "# {title}\n");
    let what = match m.kind {
        SampleKind::Chat => format!(
            "{} supervised conversations in the voice of {identity} (for supervised fine-tuning, e.g. TRL's `SFTTrainer`)",
            m.samples
        ),
        SampleKind::Preference => format!(
            "{} preference pairs for {identity}: a prompt, the answer to prefer and the one not to (for DPO-style training, e.g. TRL's `DPOTrainer`)",
            m.samples
        ),
    };
    let _ = writeln!(
        out,
        "{what}, built by the shaping pipeline `{}` and exported as `{}`.\n",
        m.pipeline,
        input.format.as_str()
    );
    if let Some(reason) = input.not_current {
        let _ = writeln!(
            out,
            "> **Warning:** exported with `--allow-stale`: the data is not CURRENT ({}).\n",
            reason.replace('\n', "; ")
        );
    }
    if m.limit.is_some() {
        let _ = writeln!(
            out,
            "> **Note:** a partial run (`--limit {}`): only part of the data.\n",
            m.limit.unwrap_or_default()
        );
    }

    out.push_str("## Loading\n\n");
    match input.format {
        ExportFormat::Parquet => {
            let source = input.hub_repo.map_or_else(
                || yaml(&format!("{}/{}", super::EXPORT_DIR, m.pipeline)),
                yaml,
            );
            let _ = writeln!(
                out,
                "```python\nfrom datasets import load_dataset\n\nds = load_dataset({source}, split=\"train\")\n```\n"
            );
        }
        _ => {
            let file = input
                .data_files
                .first()
                .map_or("data.jsonl", String::as_str);
            let _ = writeln!(
                out,
                "```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"json\", data_files={}, split=\"train\")\n```\n",
                yaml(file)
            );
        }
    }
    out.push_str("## Columns\n\n| column | type | what |\n|---|---|---|\n");
    out.push_str(&columns(input.format, m.kind));
    out.push('\n');

    out.push_str("## Provenance\n\n| | |\n|---|---|\n");
    let mut row = |key: &str, value: String| {
        let _ = writeln!(out, "| {key} | {} |", cell(&value));
    };
    row(
        "identity",
        input
            .identity
            .unwrap_or("(no name in identity/voice.toml)")
            .to_owned(),
    );
    row("pipeline", format!("`{}`", m.pipeline));
    row("kind", m.kind.to_string());
    row("samples", m.samples.to_string());
    row("failed records (not exported)", m.errors.to_string());
    row(
        "generated at",
        m.generated_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| m.generated_at.to_string()),
    );
    row(
        "pipeline commit",
        if m.commit_dirty {
            format!("`{}` (with uncommitted changes)", m.pipeline_commit)
        } else {
            format!("`{}`", m.pipeline_commit)
        },
    );
    row("code hash", format!("`{}`", m.code_hash));
    row("source output", format!("`{}`", m.output));
    row("source output sha256", format!("`{}`", m.output_sha256));
    row("annotated source", m.annotated.to_string());
    if let Some(limit) = m.limit {
        row("limit", limit.to_string());
    }
    let checkout = if m.pipeline_commit == "unknown" {
        String::new()
    } else {
        format!("git checkout {} && ", m.pipeline_commit)
    };
    row(
        "reproduce",
        format!(
            "`{checkout}cargo xtask data {} && {}` (answers come from the response cache when it holds them)",
            m.pipeline, input.command
        ),
    );
    out.push('\n');

    out.push_str("### Models\n\n");
    if m.models.is_empty() {
        out.push_str("None.\n\n");
    } else {
        out.push_str(
            "| alias | provider | model | endpoint | parameters |\n|---|---|---|---|---|\n",
        );
        for (alias, model) in &m.models {
            let params = serde_json::to_string(&model.params).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | `{}` | `{}` |",
                cell(alias),
                cell(&model.provider),
                cell(&model.model),
                cell(&model.endpoint),
                cell(&params)
            );
        }
        out.push('\n');
    }

    out.push_str("### Input files\n\n");
    if m.files.is_empty() {
        out.push_str("None.\n\n");
    } else {
        out.push_str("| name | path | sha256 |\n|---|---|---|\n");
        for (name, file) in &m.files {
            let _ = writeln!(
                out,
                "| {} | `{}` | `{}` |",
                cell(name),
                cell(&file.path),
                file.sha256
            );
        }
        out.push('\n');
    }

    out.push_str("## Checks\n\n");
    out.push_str(&checks(m.checks.as_ref()));
    out
}

/// The Hub's size bucket for `n` rows.
fn size_category(n: u64) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        1_000_000..10_000_000 => "1M<n<10M",
        _ => "10M<n<100M",
    }
}

fn columns(format: ExportFormat, kind: SampleKind) -> String {
    let messages = "list of `{role, content}`";
    let rows: &[(&str, &str, &str)] = match (format, kind) {
        (ExportFormat::Trl | ExportFormat::Parquet, SampleKind::Chat) => &[
            ("id", "string", "the sample's id in the source dataset"),
            (
                "messages",
                messages,
                "optional system message, then user and assistant turns alternating, ending on the assistant's",
            ),
        ],
        (ExportFormat::Trl | ExportFormat::Parquet, SampleKind::Preference) => &[
            ("id", "string", "the pair's id in the source dataset"),
            (
                "prompt",
                messages,
                "optional system message, then turns ending on the user's",
            ),
            (
                "chosen",
                messages,
                "one assistant message: the answer to prefer",
            ),
            (
                "rejected",
                messages,
                "one assistant message: the answer not to prefer",
            ),
        ],
        (ExportFormat::Openai, SampleKind::Chat) => {
            &[("messages", messages, "OpenAI supervised fine-tuning")]
        }
        (ExportFormat::Openai, SampleKind::Preference) => &[
            ("input", "`{messages}`", "the prompt"),
            ("preferred_output", messages, "one assistant message"),
            ("non_preferred_output", messages, "one assistant message"),
        ],
        (ExportFormat::Sharegpt, SampleKind::Chat) => &[
            ("id", "string", "the sample's id in the source dataset"),
            (
                "conversations",
                "list of `{from, value}`",
                "`from`: `system` (first only), `human`, `gpt`",
            ),
        ],
        (ExportFormat::Sharegpt, SampleKind::Preference) => &[
            ("id", "string", "the pair's id in the source dataset"),
            ("conversations", "list of `{from, value}`", "the prompt"),
            ("chosen", "`{from, value}`", "the answer to prefer (`gpt`)"),
            (
                "rejected",
                "`{from, value}`",
                "the answer not to prefer (`gpt`)",
            ),
        ],
    };
    rows.iter()
        .map(|(name, ty, what)| format!("| `{name}` | {ty} | {what} |\n"))
        .collect()
}

/// The manifest's check report as a table; what cannot be read as one, as JSON.
fn checks(report: Option<&Value>) -> String {
    let Some(report) = report else {
        return "The manifest holds no check report (built by an older version).\n".into();
    };
    if let Some(error) = report.get("error") {
        return format!(
            "Checking the data failed when it was built: {}\n",
            error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned)
        );
    }
    let Some(list) = report.get("checks").and_then(Value::as_array) else {
        return format!(
            "```json\n{}\n```\n",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    };
    let mut out = String::new();
    match report.get("passed").and_then(Value::as_bool) {
        Some(true) => out.push_str("Every check passed when the data was built.\n\n"),
        Some(false) => out.push_str("**Some checks failed** when the data was built.\n\n"),
        None => {}
    }
    out.push_str("| check | result | detail |\n|---|---|---|\n");
    for check in list {
        let name = check.get("name").and_then(Value::as_str).unwrap_or("?");
        let result = if check.get("skipped").and_then(Value::as_bool) == Some(true) {
            "skipped"
        } else if check.get("passed").and_then(Value::as_bool) == Some(true) {
            "passed"
        } else {
            "**failed**"
        };
        let message = check.get("message").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(out, "| `{}` | {result} | {} |", cell(name), cell(message));
    }
    out
}
