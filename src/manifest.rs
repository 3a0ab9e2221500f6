//! The manifest beside each output (what it was built from), and `status`: a pure function of manifest and current fingerprints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::models::ModelFingerprint;

pub const MANIFEST_SCHEMA: u32 = 1;

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::output::OutputError),
}

/// The content hash of one declared file dependency when the output was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    pub path: String,
    pub sha256: String,
}

/// What a run did: requests, tokens, cost, time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub records: u64,
    pub requests_sent: u64,
    pub cache_hits: u64,
    pub retries: u64,
    pub failed_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_usd: Option<f64>,
    pub wall_time_secs: f64,
}

/// `<name>.manifest.json`: the fingerprints an output was built from, plus counts and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub pipeline: String,
    /// The output file, relative to the repository root when inside it.
    pub output: String,
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    pub pipeline_commit: String,
    pub commit_dirty: bool,
    pub code_hash: String,
    pub files: BTreeMap<String, FileFingerprint>,
    pub models: BTreeMap<String, ModelFingerprint>,
    /// `--limit` of the run, if any (a partial output).
    pub limit: Option<u64>,
    pub annotated: bool,
    pub samples: u64,
    pub errors: u64,
    pub output_sha256: String,
    pub run: RunSummary,
    /// Free-form reports from the pipeline (source mix, skipped rows…) keyed by name.
    #[serde(default)]
    pub reports: BTreeMap<String, serde_json::Value>,
    /// The quality thresholds the pipeline declared and the check results of this output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<serde_json::Value>,
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
    pub models: BTreeMap<String, ModelFingerprint>,
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
    Current,
    Stale,
    Partial,
    Missing,
}

/// A state with its sample count and reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub samples: Option<u64>,
    pub reasons: Vec<String>,
}

impl Status {
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
