//! Durable batch job state: one JSON file per job plus its request lines and downloaded results, written atomically under `.shaping/batches/<pipeline>/`.
//!
//! A job's request file (`<id>.requests.jsonl`, the exact lines uploaded: `custom_id` and the
//! request body) and its state (`<id>.json`) are on disk before anything is uploaded, and the
//! provider's ids are saved the moment they are known, so a killed run finds its jobs again. The
//! downloaded results (`<id>.results.jsonl`, the provider's lines as received) stay until every
//! answer in them is in the response cache.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BatchError;

/// Which batch API a job was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchApi {
    /// OpenAI's Batch API (`/v1/files` + `/v1/batches`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Message Batches (`/v1/messages/batches`).
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl std::fmt::Display for BatchApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        })
    }
}

/// How far a job has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Request lines written; not yet known to the provider (or created but its id not saved).
    Prepared,
    /// The provider accepted the job (`job_id` is set); answers are not downloaded yet.
    Submitted,
    /// The job ended and its results are on disk.
    Downloaded,
}

/// One batch job as saved in `<id>.json`. Holds no secret: the key's variable name at most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Our id of the job (also the file stem, and OpenAI's `metadata.shaping_job`).
    pub local_id: String,
    /// The model alias whose requests the job holds.
    pub alias: String,
    /// The batch API.
    pub api: BatchApi,
    /// The endpoint's base URL.
    pub base_url: String,
    /// The model id.
    pub model: String,
    /// The environment variable of the key (for `cargo xtask batches`), never the key.
    pub api_key_env: Option<String>,
    /// When the request lines were written (Unix seconds).
    pub created_at: i64,
    /// Number of requests in the job.
    pub requests: usize,
    /// Progress of the job.
    pub stage: Stage,
    /// OpenAI: the uploaded request file's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file_id: Option<String>,
    /// The provider's id of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The provider's last reported status (`in_progress`, `completed`, `ended`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Where one job's files live.
#[derive(Debug, Clone)]
pub struct JobFiles {
    dir: PathBuf,
    local_id: String,
}

impl JobFiles {
    /// The files of job `local_id` in `dir`.
    pub fn new(dir: &Path, local_id: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            local_id: local_id.to_owned(),
        }
    }
    /// `<id>.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.local_id))
    }
    /// `<id>.requests.jsonl`.
    pub fn requests(&self) -> PathBuf {
        self.dir.join(format!("{}.requests.jsonl", self.local_id))
    }
    /// `<id>.results.jsonl`.
    pub fn results(&self) -> PathBuf {
        self.dir.join(format!("{}.results.jsonl", self.local_id))
    }

    /// Save the state (temp file, fsync, rename).
    pub fn save(&self, state: &JobState) -> Result<(), BatchError> {
        let json = serde_json::to_vec_pretty(state).expect("job state serializes");
        write_atomically(&self.state(), &json)
    }

    /// Remove every file of the job (missing ones are fine).
    pub fn remove(&self) -> Result<(), BatchError> {
        for path in [self.results(), self.requests(), self.state()] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(BatchError::Io { path, source }),
            }
        }
        Ok(())
    }
}

/// Write `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BatchError> {
    write_lines_atomically(path, std::iter::once(bytes), false)
}

/// Write `lines` (each followed by a newline when `newlines`) to `path` through a synced
/// temporary file and a rename, without gathering them in memory.
pub(crate) fn write_lines_atomically<'a>(
    path: &Path,
    lines: impl Iterator<Item = &'a [u8]>,
    newlines: bool,
) -> Result<(), BatchError> {
    let io = |source| BatchError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut file = std::io::BufWriter::new(fs::File::create(&tmp).map_err(io)?);
        for line in lines {
            file.write_all(line).map_err(io)?;
            if newlines {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Every job saved in `dir` (oldest first); a directory that does not exist has none. A state
/// file that does not parse is an error naming it.
pub fn load_jobs(dir: &Path) -> Result<Vec<JobState>, BatchError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BatchError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut jobs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_state = path.extension().is_some_and(|e| e == "json")
            && !path.to_string_lossy().ends_with(".tmp");
        if !is_state {
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| BatchError::Io {
            path: path.clone(),
            source,
        })?;
        let state: JobState = serde_json::from_slice(&bytes).map_err(|e| BatchError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if state.stage == Stage::Submitted && state.job_id.is_none() {
            return Err(BatchError::State {
                path,
                message: "stage `submitted` without a `job_id`".to_owned(),
            });
        }
        jobs.push(state);
    }
    jobs.sort_by(|a, b| (a.created_at, &a.local_id).cmp(&(b.created_at, &b.local_id)));
    Ok(jobs)
}

/// The batch jobs of every pipeline under `.shaping/batches/` of `root`, with the pipeline's
/// name (for `cargo xtask batches`).
pub fn all_jobs(root: &Path) -> Result<Vec<(String, JobState)>, BatchError> {
    let base = root.join(".shaping").join("batches");
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&base) else {
        return Ok(out);
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let pipeline = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for job in load_jobs(&dir)? {
            out.push((pipeline.clone(), job));
        }
    }
    Ok(out)
}

/// The state directory of a pipeline's batch jobs.
pub fn pipeline_dir(root: &Path, pipeline: &str) -> PathBuf {
    root.join(".shaping").join("batches").join(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_that_cannot_be_followed_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = JobState {
            local_id: "b1".to_owned(),
            alias: "dee".to_owned(),
            api: BatchApi::OpenAi,
            base_url: "http://127.0.0.1:1/v1".to_owned(),
            model: "m".to_owned(),
            api_key_env: None,
            created_at: 0,
            requests: 1,
            stage: Stage::Submitted,
            input_file_id: Some("file-1".to_owned()),
            job_id: Some("batch_1".to_owned()),
            status: None,
        };
        let path = dir.path().join("b1.json");
        fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(load_jobs(dir.path()).unwrap().len(), 1);

        let no_id = JobState {
            job_id: None,
            ..good
        };
        fs::write(&path, serde_json::to_vec(&no_id).unwrap()).unwrap();
        let message = load_jobs(dir.path()).unwrap_err().to_string();
        assert!(message.contains("b1.json"), "{message}");
        assert!(message.contains("without a `job_id`"), "{message}");

        fs::write(&path, b"{\"local_id\": 3}").unwrap();
        let message = load_jobs(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("b1.json: not a batch job state file"),
            "{message}"
        );
    }
}
