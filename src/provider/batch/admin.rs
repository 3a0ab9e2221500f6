//! `cargo xtask batches`: the saved jobs of every pipeline with their live status, cancelling one, and removing downloaded ones.

use std::path::Path;

use super::api::RemoteJob;
use super::state::{JobFiles, JobState, Stage, all_jobs, pipeline_dir};
use super::{BatchError, client_for};

/// One saved job, with what the provider says about it now.
#[derive(Debug)]
pub struct JobView {
    /// The pipeline that sent it.
    pub pipeline: String,
    /// The saved state.
    pub state: JobState,
    /// The provider's answer for a submitted job (`Err`: why it could not be asked, e.g. the
    /// key's variable is not set); `None` for jobs that are not at the provider or are done.
    pub live: Option<Result<RemoteJob, String>>,
}

/// Errors of `cargo xtask batches --cancel`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Reading the saved jobs failed.
    #[error(transparent)]
    State(#[from] BatchError),
    /// No saved job has this id (ours or the provider's).
    #[error("no saved batch job '{0}' (see `cargo xtask batches`)")]
    UnknownJob(String),
    /// The job is not at the provider (not submitted yet, or already downloaded).
    #[error("batch job '{id}' is {stage}: nothing to cancel")]
    NotRunning {
        /// The job.
        id: String,
        /// Its stage.
        stage: String,
    },
    /// The provider refused or could not be reached.
    #[error("cancelling batch job '{id}': {message}")]
    Provider {
        /// The job.
        id: String,
        /// What went wrong (never the key).
        message: String,
    },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
}

fn key_of(state: &JobState) -> Result<Option<String>, String> {
    match &state.api_key_env {
        None => Ok(None),
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.is_empty() => Ok(Some(key)),
            _ => Err(format!("set {var} to see its live status")),
        },
    }
}

async fn live(state: &JobState) -> Result<RemoteJob, String> {
    let key = key_of(state)?;
    let client = client_for(state, key)?;
    let id = state.job_id.as_deref().ok_or("no provider id saved")?;
    client.status(id).await.map_err(|e| e.to_string())
}

/// Every saved job under `root`, oldest first; with `ask`, submitted jobs' live status.
pub fn list(root: &Path, ask: bool) -> Result<Vec<JobView>, BatchError> {
    let jobs = all_jobs(root)?;
    let rt = runtime();
    Ok(jobs
        .into_iter()
        .map(|(pipeline, state)| {
            let live = (ask && state.stage == Stage::Submitted).then(|| rt.block_on(live(&state)));
            JobView {
                pipeline,
                state,
                live,
            }
        })
        .collect())
}

/// Cancel the job with our id or the provider's: the provider stops it, answers already made
/// stay downloadable, and the run waiting for it sends the cancelled requests again on its next
/// run. Returns the provider's status after the request.
pub fn cancel(root: &Path, id: &str) -> Result<(String, RemoteJob), AdminError> {
    let (pipeline, state) = all_jobs(root)?
        .into_iter()
        .find(|(_, s)| s.local_id == id || s.job_id.as_deref() == Some(id))
        .ok_or_else(|| AdminError::UnknownJob(id.to_owned()))?;
    let Some(job_id) = state
        .job_id
        .clone()
        .filter(|_| state.stage == Stage::Submitted)
    else {
        return Err(AdminError::NotRunning {
            id: id.to_owned(),
            stage: format!("{:?}", state.stage).to_lowercase(),
        });
    };
    let provider = |message: String| AdminError::Provider {
        id: id.to_owned(),
        message,
    };
    let key = key_of(&state).map_err(provider)?;
    let client = client_for(&state, key).map_err(provider)?;
    let remote = runtime()
        .block_on(client.cancel(&job_id))
        .map_err(|e| provider(e.to_string()))?;
    Ok((pipeline, remote))
}

/// Remove the files of downloaded jobs (their answers are in the response cache once a run has
/// used them; a run that still needs one sends its request again). Returns how many.
pub fn clean(root: &Path) -> Result<usize, BatchError> {
    let mut removed = 0;
    for (pipeline, state) in all_jobs(root)? {
        if state.stage == Stage::Downloaded {
            JobFiles::new(&pipeline_dir(root, &pipeline), &state.local_id).remove()?;
            removed += 1;
        }
    }
    Ok(removed)
}
