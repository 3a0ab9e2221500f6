//! The manifest beside each output (what it was built from), and `status`: a pure function of manifest and current fingerprints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::models::ModelFingerprint;

/// The manifest format version written to [`Manifest::schema`].
pub const MANIFEST_SCHEMA: u32 = 1;

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest exists but could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The manifest is not JSON of this format.
    #[error("manifest {path} is not valid: {source}")]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Writing the manifest (temporary file, rename) failed.
    #[error(transparent)]
    Write(#[from] crate::output::OutputError),
}

/// The content hash of one declared file dependency when the output was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// The file's path relative to the repository root, as declared.
    pub path: String,
    /// sha256 of its content (of a directory: of every file below it), hex.
    pub sha256: String,
}

/// What a run did: requests, tokens, cost, time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Records the pipeline finished: samples, failed records and records filtered out.
    pub records: u64,
    /// Requests sent to providers, retries included (cache hits are not sent).
    pub requests_sent: u64,
    /// Requests answered from the response cache.
    pub cache_hits: u64,
    /// Retries after a retryable failure (rate limit, timeout, 5xx, cut connection, bad body).
    pub retries: u64,
    /// Requests that failed for good: not retryable, or out of retries.
    pub failed_requests: u64,
    /// Prompt tokens of the answers received in this run (cache hits cost none).
    pub input_tokens: u64,
    /// Generated tokens of the answers received in this run.
    pub output_tokens: u64,
    /// Cost of those tokens at the prices in `models.toml`; None when no model of the run has
    /// a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_usd: Option<f64>,
    /// Duration of the execute phase in seconds (rounded to milliseconds).
    pub wall_time_secs: f64,
}

/// `<name>.manifest.json`: the fingerprints an output was built from, plus counts and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`MANIFEST_SCHEMA`] when written by this build.
    pub schema: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// The output file, relative to the repository root when inside it.
    pub output: String,
    /// When the run committed the output (UTC, RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// The repository's git commit at the start of the run; `unknown` outside a git repository.
    pub pipeline_commit: String,
    /// Whether tracked files had uncommitted changes then.
    pub commit_dirty: bool,
    /// sha256 of the pipeline crate's code and the library's (see `fingerprint::code_hash`).
    pub code_hash: String,
    /// The declared input files by the name the pipeline gave them.
    pub files: BTreeMap<String, FileFingerprint>,
    /// The models used, by alias.
    pub models: BTreeMap<String, ModelFingerprint>,
    /// `--limit` of the run, if any (a partial output).
    pub limit: Option<u64>,
    /// Whether the samples carry provenance (steps, model, timings).
    pub annotated: bool,
    /// What the samples are: `chat` (conversations) or `preference` (pairs). Manifests of
    /// older versions have none, and held chat samples.
    #[serde(default)]
    pub kind: crate::format::SampleKind,
    /// Lines in the output: one sample each.
    pub samples: u64,
    /// Lines in the errors file beside the output (`__ERROR__` records).
    pub errors: u64,
    /// sha256 of the output file as written, hex.
    pub output_sha256: String,
    /// Requests, tokens, cost and time of the run.
    pub run: RunSummary,
    /// Free-form reports from the pipeline (source mix, skipped rows…) keyed by name.
    #[serde(default)]
    pub reports: BTreeMap<String, serde_json::Value>,
    /// The quality thresholds the pipeline declared and the check results of this output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<serde_json::Value>,
    /// The quality check report of the output as written (or `{"error": …}` when checking
    /// failed); None in manifests of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Value>,
    /// Rubric scores from a model judge (`cargo xtask check --judge`, see `shaping::judge`);
    /// added after the run, and not part of the output's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<serde_json::Value>,
}

impl Manifest {
    /// `training/data/x.jsonl` → `training/data/x.manifest.json`.
    pub fn path_for(output: &Path) -> PathBuf {
        crate::format::manifest_path_for(output)
    }

    /// The manifest at `path`; None when there is no such file.
    pub fn read(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| ManifestError::Parse {
                        path: path.to_owned(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Write it to `path` as pretty JSON, atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        crate::output::write_atomic(path, &bytes)?;
        Ok(())
    }
}

pub use crate::format::{errors_path_for, sibling_with_suffix};

/// The fingerprints of a pipeline's dependencies as they are now.
#[derive(Debug, Clone, Default)]
pub struct CurrentFingerprints {
    /// name → (path, sha256 or None when the file is missing).
    pub files: BTreeMap<String, (String, Option<String>)>,
    /// The declared models' fingerprints now, by alias.
    pub models: BTreeMap<String, ModelFingerprint>,
    /// The code hash of the pipeline crate and the library now.
    pub code_hash: String,
    /// sha256 of the output file, None when it does not exist.
    pub output_sha256: Option<String>,
    /// Upstream pipelines (producers of file dependencies) that are not CURRENT.
    pub stale_upstream: Vec<String>,
}

/// The four states of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Built from exactly the current inputs, models and code, and not modified since.
    Current,
    /// Built, but something it was built from changed (or the output itself did).
    Stale,
    /// Up to date but built with `--limit`: only part of the data.
    Partial,
    /// No output, or no manifest beside it.
    Missing,
}

/// A state with its sample count and reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The output's state.
    pub state: State,
    /// Samples in the output per its manifest; None when MISSING.
    pub samples: Option<u64>,
    /// Why it is not CURRENT, one sentence each (empty when CURRENT).
    pub reasons: Vec<String>,
}

impl Status {
    /// Whether the state is [`State::Current`].
    pub fn is_current(&self) -> bool {
        self.state == State::Current
    }
}

impl fmt::Display for Status {
    /// The seed's shape: `STATE (N samples)` then `  - reason` lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.state {
            State::Current => "CURRENT",
            State::Stale => "STALE",
            State::Partial => "PARTIAL",
            State::Missing => "MISSING",
        };
        f.write_str(label)?;
        if matches!(self.state, State::Current | State::Partial)
            && let Some(n) = self.samples
        {
            write!(f, " ({n} samples)")?;
        }
        for reason in &self.reasons {
            write!(f, "\n  - {reason}")?;
        }
        Ok(())
    }
}

/// Decide an output's state. Pure: no I/O, no network.
pub fn status(manifest: Option<&Manifest>, current: &CurrentFingerprints) -> Status {
    let Some(current_output) = &current.output_sha256 else {
        return Status {
            state: State::Missing,
            samples: None,
            reasons: vec!["Output file does not exist".into()],
        };
    };
    let Some(manifest) = manifest else {
        return Status {
            state: State::Missing,
            samples: None,
            reasons: vec!["No manifest beside the output".into()],
        };
    };
    let mut reasons = Vec::new();
    for (name, (path, sha)) in &current.files {
        match (manifest.files.get(name), sha) {
            (_, None) => reasons.push(format!("File '{name}' is missing ({path})")),
            (None, Some(_)) => reasons.push(format!("File '{name}' is a new dependency")),
            (Some(old), Some(sha)) if old.path != *path => {
                reasons.push(format!("File '{name}' moved: {} → {path}", old.path));
                if old.sha256 != *sha {
                    reasons.push(format!("File '{name}' content changed"));
                }
            }
            (Some(old), Some(sha)) if old.sha256 != *sha => {
                reasons.push(format!("File '{name}' content changed"))
            }
            _ => {}
        }
    }
    for name in manifest.files.keys() {
        if !current.files.contains_key(name) {
            reasons.push(format!("File '{name}' is no longer a dependency"));
        }
    }
    for (name, fingerprint) in &current.models {
        match manifest.models.get(name) {
            None => reasons.push(format!("Model '{name}' is a new dependency")),
            Some(old) if old != fingerprint => {
                reasons.push(format!("Model '{name}' changed: {old} → {fingerprint}"))
            }
            _ => {}
        }
    }
    for name in manifest.models.keys() {
        if !current.models.contains_key(name) {
            reasons.push(format!("Model '{name}' is no longer a dependency"));
        }
    }
    if manifest.code_hash != current.code_hash {
        reasons.push("Pipeline code changed".into());
    }
    if manifest.output_sha256 != *current_output {
        reasons.push("Output was modified after it was generated".into());
    }
    for upstream in &current.stale_upstream {
        reasons.push(format!("Input from pipeline '{upstream}' is stale"));
    }
    let partial_reason = manifest.limit.map(|limit| {
        format!(
            "Partial run (--limit {limit}, {} samples); run without --limit for full data",
            manifest.samples
        )
    });
    if !reasons.is_empty() {
        reasons.extend(partial_reason);
        return Status {
            state: State::Stale,
            samples: Some(manifest.samples),
            reasons,
        };
    }
    if let Some(reason) = partial_reason {
        return Status {
            state: State::Partial,
            samples: Some(manifest.samples),
            reasons: vec![reason],
        };
    }
    Status {
        state: State::Current,
        samples: Some(manifest.samples),
        reasons,
    }
}
