//! The configuration of the in-process llama.cpp provider, available in every build (the provider itself needs the `local-model` feature).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the local provider needs to serve one alias (made by `models.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalModelConfig {
    /// The alias, for error messages.
    pub alias: String,
    /// The GGUF file (absolute); `None` when models.toml gave none.
    pub path: Option<PathBuf>,
    /// Its expected sha256.
    pub sha256: Option<String>,
    /// Whether to serve a re-encoded working copy instead of the file as it is.
    pub requantize: Requantize,
    /// Sequences served at once.
    pub max_concurrency: usize,
    /// Tokens of context per sequence.
    pub context_size: u32,
}

/// How a local model's weights are used: as stored in the GGUF, or re-encoded once into a derived
/// working copy (kept in the model cache) whose format llama.cpp can batch efficiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Requantize {
    /// Use the GGUF as it is.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Re-encode every quantized matrix as Q8_0 (8-bit, one scale per 32 weights). From a 4-bit
    /// file this is nearly lossless (the 4-bit levels fit the 8-bit grid to within a few percent of
    /// one 4-bit step), and llama.cpp has batched matrix kernels for Q8_0 on x86 but none for Q4_1.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl fmt::Display for Requantize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
        })
    }
}
