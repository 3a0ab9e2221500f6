//! The declaration a pipeline binary prints for `describe`: the machine-readable format xtask reads to fingerprint a pipeline without running it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `describe` prints: everything xtask needs to fingerprint a pipeline without running it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    /// The pipeline's name (`Pipeline::NAME`).
    pub name: String,
    /// The pipeline crate's directory in the repository described (what its code hash covers).
    pub crate_dir: PathBuf,
    /// Default output, relative to the repository root.
    pub output: String,
    /// Whether the output carries provenance by default
    /// (`Pipeline::ANNOTATED`).
    pub annotated: bool,
    /// What its samples are (`Pipeline::Sample`'s kind): `chat` or `preference`. Absent in
    /// descriptions of older builds, which only made chat samples.
    #[serde(default)]
    pub kind: crate::format::SampleKind,
    /// The input files it declared, in declaration order.
    pub files: Vec<DeclaredFile>,
    /// The model aliases it declared (keys of `models.toml`), in declaration order.
    pub models: Vec<String>,
    /// Its quality config (`QualityConfig`) as JSON.
    pub quality: serde_json::Value,
}

/// An input file a pipeline declared with `deps.file(name, path)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclaredFile {
    /// The name the pipeline gave it.
    pub name: String,
    /// Its path relative to the repository root.
    pub path: String,
}

/// Default output path of a pipeline, relative to the root.
pub fn default_output(name: &str) -> String {
    format!("training/data/{name}.jsonl")
}
