//! The dataset formats, one definition for the writer and every reader: the serde types of every JSONL line (`line.rs`) and where a dataset's files live beside it (`x.errors.jsonl`, `x.manifest.json`).
//!
//! This module sits low in the layer order (ARCHITECTURE.md, "Layers"): it uses no other module
//! of the library, and the plain data types a line holds (messages, parameters, usage) are
//! defined here and re-exported where they are used (`provider`, `sample`).

mod kind;
mod lenient;
mod line;

pub use kind::{SampleKind, SampleLine, ShapeError, check_conversation};
pub use line::{
    ChatLine, ErrorDetail, ErrorLine, Message, Params, PipelineErrorKind, PreferenceLine,
    Provenance, Step, StepError, Usage, answer_span, first_user, last_assistant,
};

use std::path::{Path, PathBuf};

/// The key of an error line: `{"__ERROR__": {...}}`.
pub const ERROR_KEY: &str = "__ERROR__";

/// `dir/x.<ext>` → `dir/x.<suffix>` (the last extension replaced).
pub fn sibling_with_suffix(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!("{stem}.{suffix}"))
}

/// `training/data/x.jsonl` → `training/data/x.errors.jsonl`: where a run writes the records that
/// failed, and where the checks and the report read them.
pub fn errors_path_for(output: &Path) -> PathBuf {
    sibling_with_suffix(output, "errors.jsonl")
}

/// `training/data/x.jsonl` → `training/data/x.manifest.json`.
pub fn manifest_path_for(output: &Path) -> PathBuf {
    sibling_with_suffix(output, "manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_replace_the_last_extension() {
        assert_eq!(
            errors_path_for(Path::new("training/data/voice.jsonl")),
            Path::new("training/data/voice.errors.jsonl")
        );
        assert_eq!(
            errors_path_for(Path::new("out.txt")),
            Path::new("out.errors.jsonl")
        );
        assert_eq!(
            manifest_path_for(Path::new("data.v2.jsonl")),
            Path::new("data.v2.manifest.json")
        );
    }
}
