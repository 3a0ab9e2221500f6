//! [`QualityConfig`] (a pipeline's thresholds) and [`Voice`] (identity markers from `identity/voice.toml`).

use std::collections::BTreeMap;
use std::fmt;
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
/// The defaults are strict: no sample may fail the degeneration, contradiction, role confusion,
/// echo, surface garbage, empty, error text, truncation or refusal detectors. A pipeline may
/// tighten any threshold; loosening one past its default needs a reason
/// ([`QualityConfig::loosen`] or [`QualityConfig::reason`]), and [`QualityConfig::validate`]
/// rejects a loosened threshold without one.
///
/// ```
/// use shaping::quality::QualityConfig;
/// let config = QualityConfig::default()
///     .min_samples(200)
///     .voice_markers(["Cubs", "Wrigley"])
///     .loosen("min_marker_share", 0.3, "knowledge answers rarely mention the diner");
/// assert_eq!(config.min_samples, 200);
/// assert!(config.validate().is_ok());
/// assert!(QualityConfig::default().min_marker_share(0.3).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityConfig {
    /// Fewest samples the dataset must have. (All datasets together must reach
    /// [`TRAINING_SET_MIN_SAMPLES`](super::TRAINING_SET_MIN_SAMPLES).)
    pub min_samples: u64,
    /// Most samples with an empty (or whitespace-only) response.
    pub max_empty: u64,
    /// Most responses that contain provider error text (`error code: 429`, `Internal Server Error`, ...).
    pub max_error_text: u64,
    /// Most samples whose final response was cut off: the final step finished with `"length"` and
    /// the response does not end at a sentence end.
    pub max_truncated: u64,
    /// Most samples whose id repeats an earlier sample's id.
    pub max_duplicate_ids: u64,
    /// Largest share of samples whose response repeats an earlier response (whitespace and case ignored).
    pub max_duplicate_response_share: f64,
    /// Largest share of responses that read like a generic assistant (refusals, "as an AI", ...).
    pub max_refusal_share: f64,
    /// Most responses that degenerate (repeated sentences, one phrase dominating, few distinct trigrams).
    pub max_degeneration: u64,
    /// Most responses that contradict the identity (`identity/voice.toml` `contradictions`).
    pub max_contradiction: u64,
    /// Most responses with role confusion (`User:` turns, answering as the user, third-person self-narration).
    pub max_role_confusion: u64,
    /// Most responses that repeat or copy their prompt.
    pub max_echo: u64,
    /// Most responses with surface garbage (shouting, stage directions, unbalanced quotes, mojibake, wrong language).
    pub max_surface_garbage: u64,
    /// Largest share of responses that share no content word with their prompt.
    pub max_irrelevant_share: f64,
    /// Smallest share of responses that show at least one identity voice marker.
    /// Checked only when some marker is declared (here or in `identity/voice.toml`).
    pub min_marker_share: f64,
    /// Voice markers of this pipeline, added to those of `identity/voice.toml`.
    /// Matched case-insensitively as whole words.
    pub voice_markers: Vec<String>,
    /// Generic-assistant phrases of this pipeline, added to the built-in ones and to `identity/voice.toml`'s.
    pub generic_phrases: Vec<String>,
    /// Shortest acceptable response, in characters. The default (100) is about two short
    /// sentences: identity data teaches a voice, and a fragment teaches nothing.
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
    /// Why a threshold is looser than its default: threshold name → reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_samples: 100,
            max_empty: 0,
            max_error_text: 0,
            max_truncated: 0,
            max_duplicate_ids: 0,
            max_duplicate_response_share: 0.02,
            max_refusal_share: 0.0,
            max_degeneration: 0,
            max_contradiction: 0,
            max_role_confusion: 0,
            max_echo: 0,
            max_surface_garbage: 0,
            max_irrelevant_share: 0.05,
            min_marker_share: 0.6,
            voice_markers: Vec::new(),
            generic_phrases: Vec::new(),
            min_response_chars: 100,
            max_response_chars: 4000,
            max_length_outlier_share: 0.05,
            max_source_share: 0.8,
            min_prompt_distinct_2: 0.3,
            min_judge_score: None,
            reasons: BTreeMap::new(),
        }
    }
}

/// Which way of a threshold is looser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looser {
    /// A larger value lets more through (`max_*`).
    Above,
    /// A smaller value lets more through (`min_*`).
    Below,
}

/// Whether a threshold counts samples (or characters) or is a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Share,
}

/// Every threshold: name, unit, which way is looser, and the dataset checks it belongs to.
const THRESHOLDS: &[(&str, Unit, Looser, &str)] = &[
    ("min_samples", Unit::Count, Looser::Below, "volume"),
    ("max_empty", Unit::Count, Looser::Above, "empty_responses"),
    ("max_error_text", Unit::Count, Looser::Above, "error_text"),
    ("max_truncated", Unit::Count, Looser::Above, "truncated"),
    (
        "max_duplicate_ids",
        Unit::Count,
        Looser::Above,
        "duplicate_ids",
    ),
    (
        "max_duplicate_response_share",
        Unit::Share,
        Looser::Above,
        "duplicate_responses",
    ),
    ("max_refusal_share", Unit::Share, Looser::Above, "refusals"),
    (
        "max_degeneration",
        Unit::Count,
        Looser::Above,
        "degeneration",
    ),
    (
        "max_contradiction",
        Unit::Count,
        Looser::Above,
        "contradiction",
    ),
    (
        "max_role_confusion",
        Unit::Count,
        Looser::Above,
        "role_confusion",
    ),
    ("max_echo", Unit::Count, Looser::Above, "echo"),
    (
        "max_surface_garbage",
        Unit::Count,
        Looser::Above,
        "surface_garbage",
    ),
    (
        "max_irrelevant_share",
        Unit::Share,
        Looser::Above,
        "relevance",
    ),
    (
        "min_marker_share",
        Unit::Share,
        Looser::Below,
        "voice_markers",
    ),
    (
        "min_response_chars",
        Unit::Count,
        Looser::Below,
        "response_length",
    ),
    (
        "max_response_chars",
        Unit::Count,
        Looser::Above,
        "response_length",
    ),
    (
        "max_length_outlier_share",
        Unit::Share,
        Looser::Above,
        "response_length",
    ),
    (
        "max_source_share",
        Unit::Share,
        Looser::Above,
        "source_share",
    ),
    (
        "min_prompt_distinct_2",
        Unit::Share,
        Looser::Below,
        "prompt_diversity",
    ),
];

/// A threshold set looser than its default, and why (see [`QualityConfig::loosenings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loosening {
    /// The threshold's field name (`min_marker_share`).
    pub field: String,
    /// The dataset check it belongs to (`voice_markers`).
    pub check: String,
    /// The value in force.
    pub value: f64,
    /// The default value.
    pub default: f64,
    /// The pipeline's reason; `None` makes the config invalid.
    pub reason: Option<String>,
}

impl fmt::Display for Loosening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} loosened to {} (default {})",
            self.field,
            show_value(self.value),
            show_value(self.default)
        )?;
        match &self.reason {
            Some(reason) => write!(f, ": {reason}"),
            None => f.write_str(" without a reason"),
        }
    }
}

/// A threshold value for people: `any` for the largest count, else the shortest exact form.
pub(crate) fn show_value(value: f64) -> String {
    if value >= u64::MAX as f64 {
        "any".to_owned()
    } else {
        format!("{value}")
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
        /// Set [`QualityConfig::max_degeneration`].
        max_degeneration: u64;
        /// Set [`QualityConfig::max_contradiction`].
        max_contradiction: u64;
        /// Set [`QualityConfig::max_role_confusion`].
        max_role_confusion: u64;
        /// Set [`QualityConfig::max_echo`].
        max_echo: u64;
        /// Set [`QualityConfig::max_surface_garbage`].
        max_surface_garbage: u64;
        /// Set [`QualityConfig::max_irrelevant_share`].
        max_irrelevant_share: f64;
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

    /// Set the threshold named `field` to `value` and record why. Counts take whole numbers
    /// (`f64::INFINITY` or anything past `u64::MAX` means "any"). An unknown field name is
    /// reported by [`QualityConfig::validate`].
    ///
    /// ```
    /// # use shaping::quality::QualityConfig;
    /// let config = QualityConfig::default()
    ///     .loosen("max_truncated", f64::INFINITY, "the 135M model talks until max_tokens");
    /// assert_eq!(config.max_truncated, u64::MAX);
    /// ```
    #[must_use]
    pub fn loosen(mut self, field: &str, value: f64, reason: impl Into<String>) -> Self {
        self.set(field, value);
        self.reasons.insert(field.to_owned(), reason.into());
        self
    }

    /// Record why the threshold `field` (set with its own setter) is looser than its default.
    #[must_use]
    pub fn reason(mut self, field: &str, reason: impl Into<String>) -> Self {
        self.reasons.insert(field.to_owned(), reason.into());
        self
    }

    fn set(&mut self, field: &str, value: f64) {
        // `as` saturates: INFINITY and huge values become u64::MAX, negatives 0.
        let count = value as u64;
        match field {
            "min_samples" => self.min_samples = count,
            "max_empty" => self.max_empty = count,
            "max_error_text" => self.max_error_text = count,
            "max_truncated" => self.max_truncated = count,
            "max_duplicate_ids" => self.max_duplicate_ids = count,
            "max_duplicate_response_share" => self.max_duplicate_response_share = value,
            "max_refusal_share" => self.max_refusal_share = value,
            "max_degeneration" => self.max_degeneration = count,
            "max_contradiction" => self.max_contradiction = count,
            "max_role_confusion" => self.max_role_confusion = count,
            "max_echo" => self.max_echo = count,
            "max_surface_garbage" => self.max_surface_garbage = count,
            "max_irrelevant_share" => self.max_irrelevant_share = value,
            "min_marker_share" => self.min_marker_share = value,
            "min_response_chars" => self.min_response_chars = count,
            "max_response_chars" => self.max_response_chars = count,
            "max_length_outlier_share" => self.max_length_outlier_share = value,
            "max_source_share" => self.max_source_share = value,
            "min_prompt_distinct_2" => self.min_prompt_distinct_2 = value,
            _ => {}
        }
    }

    /// The value of the threshold named `field`, as a number.
    fn get(&self, field: &str) -> Option<f64> {
        Some(match field {
            "min_samples" => self.min_samples as f64,
            "max_empty" => self.max_empty as f64,
            "max_error_text" => self.max_error_text as f64,
            "max_truncated" => self.max_truncated as f64,
            "max_duplicate_ids" => self.max_duplicate_ids as f64,
            "max_duplicate_response_share" => self.max_duplicate_response_share,
            "max_refusal_share" => self.max_refusal_share,
            "max_degeneration" => self.max_degeneration as f64,
            "max_contradiction" => self.max_contradiction as f64,
            "max_role_confusion" => self.max_role_confusion as f64,
            "max_echo" => self.max_echo as f64,
            "max_surface_garbage" => self.max_surface_garbage as f64,
            "max_irrelevant_share" => self.max_irrelevant_share,
            "min_marker_share" => self.min_marker_share,
            "min_response_chars" => self.min_response_chars as f64,
            "max_response_chars" => self.max_response_chars as f64,
            "max_length_outlier_share" => self.max_length_outlier_share,
            "max_source_share" => self.max_source_share,
            "min_prompt_distinct_2" => self.min_prompt_distinct_2,
            _ => return None,
        })
    }

    /// Every threshold that is looser than its default, with its reason (if any), in field order.
    /// `cargo xtask check`, `status` and the HTML report show these next to the results.
    pub fn loosenings(&self) -> Vec<Loosening> {
        let defaults = Self::default();
        THRESHOLDS
            .iter()
            .filter_map(|&(field, _, looser, check)| {
                let (value, default) = (self.get(field)?, defaults.get(field)?);
                let loosened = match looser {
                    Looser::Above => value > default,
                    Looser::Below => value < default,
                };
                loosened.then(|| Loosening {
                    field: field.to_owned(),
                    check: check.to_owned(),
                    value,
                    default,
                    reason: self
                        .reasons
                        .get(field)
                        .map(|r| r.trim().to_owned())
                        .filter(|r| !r.is_empty()),
                })
            })
            .collect()
    }

    /// Check the config: every share within `0.0..=1.0`, every reason naming a known threshold,
    /// and no threshold looser than its default without a reason. The error names the field, its
    /// value and its default.
    pub fn validate(&self) -> Result<()> {
        for field in self.reasons.keys() {
            if self.get(field).is_none() {
                return Err(QualityError::InvalidThreshold {
                    field: field.clone(),
                    value: self.reasons[field].clone(),
                    message: format!(
                        "a reason for an unknown threshold; known thresholds: {}",
                        THRESHOLDS
                            .iter()
                            .map(|t| t.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        for &(field, unit, _, _) in THRESHOLDS {
            let value = self.get(field).unwrap_or_default();
            if unit == Unit::Share && !(0.0..=1.0).contains(&value) {
                return Err(QualityError::InvalidThreshold {
                    field: field.to_owned(),
                    value: show_value(value),
                    message: "a share must be within 0.0..=1.0".to_owned(),
                });
            }
        }
        if let Some(loosening) = self.loosenings().into_iter().find(|l| l.reason.is_none()) {
            return Err(QualityError::UnjustifiedLoosening {
                field: loosening.field,
                value: show_value(loosening.value),
                default: show_value(loosening.default),
            });
        }
        Ok(())
    }

    /// This config with every threshold that is loosened without a reason put back to its
    /// default: what `cargo xtask check` enforces for a config that does not validate.
    #[must_use]
    pub fn with_unjustified_loosenings_reset(&self) -> Self {
        let defaults = Self::default();
        let mut config = self.clone();
        for loosening in self.loosenings() {
            if loosening.reason.is_none()
                && let Some(default) = defaults.get(&loosening.field)
            {
                config.set(&loosening.field, default);
            }
        }
        config
    }

    /// A config whose every check passes on any non-empty well-formed dataset: for smoke tests
    /// and tiny examples. Every loosening carries that reason, so it validates.
    pub fn lenient() -> Self {
        let mut config = Self {
            min_samples: 1,
            max_empty: u64::MAX,
            max_error_text: u64::MAX,
            max_truncated: u64::MAX,
            max_duplicate_ids: u64::MAX,
            max_duplicate_response_share: 1.0,
            max_refusal_share: 1.0,
            max_degeneration: u64::MAX,
            max_contradiction: u64::MAX,
            max_role_confusion: u64::MAX,
            max_echo: u64::MAX,
            max_surface_garbage: u64::MAX,
            max_irrelevant_share: 1.0,
            min_marker_share: 0.0,
            voice_markers: Vec::new(),
            generic_phrases: Vec::new(),
            min_response_chars: 0,
            max_response_chars: u64::MAX,
            max_length_outlier_share: 1.0,
            max_source_share: 1.0,
            min_prompt_distinct_2: 0.0,
            min_judge_score: None,
            reasons: BTreeMap::new(),
        };
        for loosening in config.loosenings() {
            config.reasons.insert(
                loosening.field,
                "lenient config: smoke tests and tiny examples".to_owned(),
            );
        }
        config
    }

    /// The loosenings that concern the named dataset check.
    pub(crate) fn loosenings_of(&self, check: &str) -> Vec<Loosening> {
        self.loosenings()
            .into_iter()
            .filter(|l| l.check == check)
            .collect()
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
/// # The identity's name and other names it goes by: used to spot it narrating itself
/// # ("Dee smiled") or being addressed as if the reply came from the user ("Thanks, Dee!").
/// name = "Dee"
/// aliases = ["Dolores"]
/// # Claims of being an AI, a language model or an assistant contradict the identity unless this is true.
/// is_ai = false
/// # Words and phrases that show the identity speaking (case-insensitive, whole words).
/// markers = ["Cubs", "Wrigley", "hon"]
/// # Phrases of a generic assistant that the identity should never say (case-insensitive).
/// generic_phrases = ["I'm just a program"]
/// # First-person claims the identity never makes: regular expressions (case-insensitive,
/// # matched with typographic apostrophes made plain) with a label for people.
/// [[contradictions]]
/// label = "supports the Cardinals"
/// pattern = '''\bI(?:'m| am) a (?:huge |big )?Cardinals fan\b'''
/// ```
///
/// Unknown keys and patterns that do not compile are errors naming the file, line and key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Voice {
    /// The identity's name.
    pub name: Option<String>,
    /// Other names the identity goes by.
    pub aliases: Vec<String>,
    /// Whether the identity is an AI (then AI self-descriptions are not contradictions).
    pub is_ai: bool,
    /// The identity's age in years: a first-person claim of another age ("I'm 22", "I'm a
    /// 50-year-old", "I'm in my twenties") is a contradiction.
    pub age: Option<u32>,
    /// Identity markers: a response showing one of them is "in voice".
    pub markers: Vec<String>,
    /// Generic-assistant phrases, counted with the built-in refusal phrases.
    pub generic_phrases: Vec<String>,
    /// First-person claims the identity never makes.
    pub contradictions: Vec<Contradiction>,
}

/// A claim the identity never makes: a regular expression and a label for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contradiction {
    /// What the claim says, for people ("supports the Cardinals").
    pub label: String,
    /// A regular expression (`regex` crate syntax), matched case-insensitively.
    pub pattern: String,
}

/// `identity/voice.toml` as written, with the spans of the patterns for error messages.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawVoice {
    name: Option<String>,
    aliases: Vec<String>,
    is_ai: bool,
    age: Option<u32>,
    markers: Vec<String>,
    generic_phrases: Vec<String>,
    contradictions: Vec<RawContradiction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContradiction {
    label: String,
    pattern: toml::Spanned<String>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The key assigned on the line holding byte offset `at` (`pattern = ...` → `pattern`), if any.
fn key_on_line(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    is_bare_key(key).then(|| key.to_owned())
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-'))
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

    /// Parse voice TOML; `path` is only used in errors, which name the line and the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: RawVoice = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let key = e
                .span()
                .and_then(|s| text.get(s))
                .map(|k| k.trim().trim_matches('"').to_owned())
                .filter(|k| is_bare_key(k))
                .or_else(|| key_on_line(text, at))
                .unwrap_or_else(|| "?".to_owned());
            QualityError::VoiceFile {
                path: PathBuf::from(path),
                line: line_of(text, at),
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        let mut contradictions = Vec::with_capacity(raw.contradictions.len());
        for (i, c) in raw.contradictions.into_iter().enumerate() {
            let span = c.pattern.span();
            let pattern = c.pattern.into_inner();
            if let Err(e) = super::detect::check_pattern(&pattern) {
                return Err(QualityError::VoiceFile {
                    path: PathBuf::from(path),
                    line: line_of(text, span.start),
                    key: format!("contradictions[{i}].pattern"),
                    message: format!("the pattern of '{}' does not compile: {e}", c.label),
                });
            }
            contradictions.push(Contradiction {
                label: c.label,
                pattern,
            });
        }
        Ok(Self {
            name: raw.name,
            aliases: raw.aliases,
            is_ai: raw.is_ai,
            age: raw.age,
            markers: raw.markers,
            generic_phrases: raw.generic_phrases,
            contradictions,
        })
    }

    /// A voice with these markers and nothing else.
    pub fn with_markers<I, S>(markers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            markers: markers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}
