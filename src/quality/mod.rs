//! The quality gate: statistics, checks, review samples and an HTML report for a built dataset.
//!
//! A dataset is `training/data/<name>.jsonl` (one sample per line) with failed records beside it in
//! `<name>.errors.jsonl`. Everything here reads those files in one streaming pass:
//!
//! - [`Detectors`] judge one reply ([`Turn`] → [`Verdict`]): degeneration, contradiction, role
//!   confusion, echo, relevance, surface garbage, and empty, error text, truncation, refusal,
//!   length. Pipelines use them for best-of-n filtering. A sample of either kind
//!   ([`crate::format::SampleLine`]) is judged by [`Detectors::judge_sample`]: a conversation
//!   turn by turn ([`Detectors::judge_in_conversation`], findings naming the turn), a preference
//!   pair on `chosen` plus the pair rules ([`Detectors::judge_pair`], [`Detectors::check_pair`]),
//!   both with their shape rules.
//! - [`analyze`] computes [`DatasetStats`] and runs the checks of a [`QualityConfig`] into a
//!   [`CheckReport`]: counts and shares of per-sample findings plus the set-level checks;
//!   [`analyze_each`] also hands out every [`SampleVerdict`], [`analyze_chat_file`] reads any chat
//!   JSONL, and [`check`] is the short form that returns only the report.
//! - [`training_set_check`] judges all datasets together ([`TRAINING_SET_MIN_SAMPLES`]).
//! - [`review_sample`] picks a deterministic sample (smallest `sha256(id)`), and [`ReviewSnapshot`]
//!   bundles stats, checks and that sample for an insta snapshot, so a changed dataset shows up in review.
//! - [`sample`] renders a seeded random sample for the terminal (`cargo xtask sample`).
//! - [`render_report`] renders one self-contained HTML page (`cargo xtask report`).
//!
//! Identity voice markers come from the pipeline's [`QualityConfig::voice_markers`] and from
//! `identity/voice.toml` ([`Voice`]), which also declares the identity's name, aliases and the
//! claims it never makes. Thresholds default to strict values; loosening one needs a reason
//! ([`QualityConfig::validate`]).

mod checks;
mod config;
mod detect;
mod read;
mod report;
mod review;
mod stats;
mod terminal;
mod text;

pub use checks::{
    CheckReport, CheckResult, Comparison, SampleVerdict, TRAINING_SET_MIN_SAMPLES, advice, analyze,
    analyze_chat_file, analyze_each, check, judged_samples, training_set_check,
};
pub use config::{Contradiction, Loosening, QualityConfig, VOICE_FILE, Voice};
pub use detect::{Detectors, Finding, Reason, Turn, Verdict};
pub use read::{
    JsonlReader, read_any_samples, read_chat_records, read_errors, read_records, read_samples,
};
pub use report::{REPORT_SAMPLE_CAP, render_report};
pub use review::{REVIEW_TEXT_CHARS, ReviewSample, ReviewSnapshot, review_sample};
pub use stats::{
    Bucket, DatasetStats, LengthStats, PairStats, StatsBuilder, TokenTotals, TurnStats,
};
pub use terminal::{sample, sample_records};
pub use text::{Answers, Sample, SampleStep, errors_path_for};

use std::path::PathBuf;

/// Errors of the quality gate. Every variant names the file, and the line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    /// A dataset, manifest or voice file could not be read (or hashed).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of a dataset is not JSON.
    #[error("{path}:{line}: malformed JSON line: {source}")]
    Json {
        /// The dataset file.
        path: PathBuf,
        /// The line number (1-based).
        line: u64,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A line of a dataset is JSON but not a sample: not an object, missing fields, or not
    /// UTF-8.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The dataset file.
        path: PathBuf,
        /// The line number (1-based).
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// A manifest is not JSON, or its `quality` field is not a quality config.
    #[error("cannot parse {path}: {message}")]
    Config {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A malformed `identity/voice.toml`: an unknown key, a wrong type, a pattern that does not compile.
    #[error("{path}:{line}: key `{key}`: {message}")]
    VoiceFile {
        /// The voice file.
        path: PathBuf,
        /// The line of the error (1-based).
        line: usize,
        /// The key at fault (`?` when it cannot be told).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A detector pattern that does not compile (a [`Voice`] built in code).
    #[error("pattern '{label}' does not compile: {message}")]
    Pattern {
        /// What the pattern is for: a contradiction's label, or the detector's (`speaker label`,
        /// `age claim`, …).
        label: String,
        /// The regex compiler's error.
        message: String,
    },
    /// A threshold looser than its default without a reason.
    #[error(
        "quality config: {field} = {value} is looser than its default {default} but gives no reason; \
         give one with `.loosen(\"{field}\", {value}, \"why\")` or `.reason(\"{field}\", \"why\")`"
    )]
    UnjustifiedLoosening {
        /// The threshold's name (a field of `QualityConfig`).
        field: String,
        /// Its configured value.
        value: String,
        /// Its default.
        default: String,
    },
    /// A threshold with an impossible value, or a reason for a threshold that does not exist.
    #[error("quality config: {field} = {value}: {message}")]
    InvalidThreshold {
        /// The threshold's name.
        field: String,
        /// Its value (for a reason given to an unknown threshold: the reason).
        value: String,
        /// What is wrong.
        message: String,
    },
}

/// Result alias for the quality gate.
pub type Result<T, E = QualityError> = std::result::Result<T, E>;

/// The dataset name of a dataset path: the file name without `.jsonl`.
pub fn dataset_name(path: &std::path::Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_suffix(".jsonl")
        .map(str::to_owned)
        .unwrap_or(file)
}
