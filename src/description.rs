//! The declaration a pipeline binary prints for `describe`: the machine-readable format xtask reads to fingerprint a pipeline without running it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `describe` prints: everything xtask needs to fingerprint a pipeline without running it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    pub name: String,
    pub crate_dir: PathBuf,
    /// Default output, relative to the repository root.
    pub output: String,
    pub annotated: bool,
    pub files: Vec<DeclaredFile>,
    pub models: Vec<String>,
    pub quality: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclaredFile {
    pub name: String,
    pub path: String,
}

/// Default output path of a pipeline, relative to the root.
pub fn default_output(name: &str) -> String {
    format!("training/data/{name}.jsonl")
}
