//! [`QualityConfig`] (a pipeline's thresholds) and [`Voice`] (identity markers from `identity/voice.toml`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{QualityError, Result};

/// Where the identity voice is declared, relative to the repository root.
pub const VOICE_FILE: &str = "identity/voice.toml";

/// Thresholds of the quality gate. A pipeline declares one; it is recorded in the pipeline's
/// `describe` JSON and in the dataset's manifest under `"quality"`.
///
/// Counts are absolute numbers of samples; shares are fractions in `0.0..=1.0`. Missing fields
/// deserialize to their defaults, so a manifest may list only what it changes.
///
/// ```
/// use shaping::quality::QualityConfig;
/// let config = QualityConfig::default().min_samples(200).voice_markers(["Cubs", "Wrigley"]);
/// assert_eq!(config.min_samples, 200);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityConfig {
    /// Fewest samples the dataset must have.
    pub min_samples: u64,
    /// Most samples with an empty (or whitespace-only) response.
    pub max_empty: u64,
    /// Most responses that contain provider error text (`error code: 429`, `Internal Server Error`, ...).
    pub max_error_text: u64,
    /// Most samples whose final response was cut off (`finish_reason: "length"`).
    pub max_truncated: u64,
    /// Most samples whose id repeats an earlier sample's id.
    pub max_duplicate_ids: u64,
    /// Largest share of samples whose response repeats an earlier response (whitespace and case ignored).
    pub max_duplicate_response_share: f64,
    /// Largest share of responses that read like a generic assistant (refusals, "as an AI", ...).
    pub max_refusal_share: f64,
    /// Smallest share of responses that show at least one identity voice marker.
    /// Checked only when some marker is declared (here or in `identity/voice.toml`).
    pub min_marker_share: f64,
    /// Voice markers of this pipeline, added to those of `identity/voice.toml`.
    /// Matched case-insensitively as whole words.
    pub voice_markers: Vec<String>,
    /// Generic-assistant phrases of this pipeline, added to the built-in ones and to `identity/voice.toml`'s.
    pub generic_phrases: Vec<String>,
    /// Shortest acceptable response, in characters.
    pub min_response_chars: u64,
    /// Longest acceptable response, in characters.
    pub max_response_chars: u64,
    /// Largest share of responses outside `min_response_chars..=max_response_chars`.
    pub max_length_outlier_share: f64,
    /// Largest share of samples from one source (`input_data.source`). Checked only when some
    /// sample declares a source.
    pub max_source_share: f64,
    /// Smallest distinct-2 of the prompts: distinct word bigrams divided by all word bigrams.
    pub min_prompt_distinct_2: f64,
    /// Smallest mean rubric score (1..=5) of each judge criterion, with every sample judged.
    /// Checked only by `cargo xtask check --judge` (see `shaping::judge`); `None` = not gated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_judge_score: Option<f64>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_samples: 500,
            max_empty: 0,
            max_error_text: 0,
            max_truncated: 0,
            max_duplicate_ids: 0,
            max_duplicate_response_share: 0.02,
            max_refusal_share: 0.05,
            min_marker_share: 0.3,
            voice_markers: Vec::new(),
            generic_phrases: Vec::new(),
            min_response_chars: 8,
            max_response_chars: 4000,
            max_length_outlier_share: 0.05,
            max_source_share: 0.8,
            min_prompt_distinct_2: 0.3,
            min_judge_score: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

impl QualityConfig {
    setters! {
        /// Set [`QualityConfig::min_samples`].
        min_samples: u64;
        /// Set [`QualityConfig::max_empty`].
        max_empty: u64;
        /// Set [`QualityConfig::max_error_text`].
        max_error_text: u64;
        /// Set [`QualityConfig::max_truncated`].
        max_truncated: u64;
        /// Set [`QualityConfig::max_duplicate_ids`].
        max_duplicate_ids: u64;
        /// Set [`QualityConfig::max_duplicate_response_share`].
        max_duplicate_response_share: f64;
        /// Set [`QualityConfig::max_refusal_share`].
        max_refusal_share: f64;
        /// Set [`QualityConfig::min_marker_share`].
        min_marker_share: f64;
        /// Set [`QualityConfig::min_response_chars`].
        min_response_chars: u64;
        /// Set [`QualityConfig::max_response_chars`].
        max_response_chars: u64;
        /// Set [`QualityConfig::max_length_outlier_share`].
        max_length_outlier_share: f64;
        /// Set [`QualityConfig::max_source_share`].
        max_source_share: f64;
        /// Set [`QualityConfig::min_prompt_distinct_2`].
        min_prompt_distinct_2: f64;
    }

    /// Gate on the judge: see [`QualityConfig::min_judge_score`].
    #[must_use]
    pub fn min_judge_score(mut self, score: f64) -> Self {
        self.min_judge_score = Some(score);
        self
    }

    /// Set the response length bounds in characters (inclusive).
    #[must_use]
    pub fn response_chars(mut self, min: u64, max: u64) -> Self {
        self.min_response_chars = min;
        self.max_response_chars = max;
        self
    }

    /// Set this pipeline's voice markers (replacing earlier ones).
    #[must_use]
    pub fn voice_markers<I, S>(mut self, markers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.voice_markers = markers.into_iter().map(Into::into).collect();
        self
    }

    /// Set this pipeline's generic-assistant phrases (replacing earlier ones).
    #[must_use]
    pub fn generic_phrases<I, S>(mut self, phrases: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.generic_phrases = phrases.into_iter().map(Into::into).collect();
        self
    }

    /// A config whose every check passes on any non-empty well-formed dataset: for smoke tests
    /// and tiny examples.
    pub fn lenient() -> Self {
        Self {
            min_samples: 1,
            max_empty: u64::MAX,
            max_error_text: u64::MAX,
            max_truncated: u64::MAX,
            max_duplicate_ids: u64::MAX,
            max_duplicate_response_share: 1.0,
            max_refusal_share: 1.0,
            min_marker_share: 0.0,
            voice_markers: Vec::new(),
            generic_phrases: Vec::new(),
            min_response_chars: 0,
            max_response_chars: u64::MAX,
            max_length_outlier_share: 1.0,
            max_source_share: 1.0,
            min_prompt_distinct_2: 0.0,
            min_judge_score: None,
        }
    }

    /// Read the `"quality"` field of a dataset manifest (`<name>.manifest.json`). A missing
    /// manifest or a manifest without the field gives `None`.
    pub fn from_manifest(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(QualityError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| QualityError::Config {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        match value.get("quality") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(quality) => serde_json::from_value(quality.clone())
                .map(Some)
                .map_err(|e| QualityError::Config {
                    path: path.to_owned(),
                    message: format!("field \"quality\": {e}"),
                }),
        }
    }
}

/// The identity's voice, declared in `identity/voice.toml`:
///
/// ```toml
/// # Words and phrases that show the identity speaking (case-insensitive, whole words).
/// markers = ["Cubs", "Wrigley", "hon"]
/// # Phrases of a generic assistant that the identity should never say (case-insensitive).
/// generic_phrases = ["I'm just a program"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Voice {
    /// Identity markers: a response showing one of them is "in voice".
    pub markers: Vec<String>,
    /// Generic-assistant phrases, counted with the built-in refusal phrases.
    pub generic_phrases: Vec<String>,
}

impl Voice {
    /// Read `identity/voice.toml` under `repo_root`; a missing file gives an empty voice.
    pub fn load(repo_root: &Path) -> Result<Self> {
        Self::from_file(&repo_root.join(VOICE_FILE))
    }

    /// Read a voice file; a missing file gives an empty voice.
    pub fn from_file(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(QualityError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parse voice TOML; `path` is only used in the error.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| QualityError::Config {
            path: PathBuf::from(path),
            message: e.to_string(),
        })
    }

    /// A voice with these markers and no generic phrases.
    pub fn with_markers<I, S>(markers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            markers: markers.into_iter().map(Into::into).collect(),
            generic_phrases: Vec::new(),
        }
    }
}
