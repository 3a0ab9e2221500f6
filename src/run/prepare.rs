//! The first phase of a run: the lock, the declaration, the quality gate, and the fingerprints of every input, before anything is sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{RunError, RunOptions, declare};
use crate::description::default_output;
use crate::fingerprint::FileHasher;
use crate::lock::RunLock;
use crate::manifest::{FileFingerprint, errors_path_for};
use crate::models::{ModelSpec, ModelsConfig};
use crate::pipeline::{Declare, Pipeline};
use crate::quality::{Detectors, QualityConfig, Voice};

/// Everything a run needs before its first request, and what its manifest records of the inputs.
pub(crate) struct Prepared<P> {
    /// Held until the run ends: one run per pipeline at a time.
    _lock: RunLock,
    pub root: PathBuf,
    pub pipeline: P,
    pub quality: QualityConfig,
    pub voice: Voice,
    pub detectors: Arc<Detectors>,
    /// The models the pipeline declared, resolved from models.toml.
    pub specs: Vec<ModelSpec>,
    /// File dependencies by name, hashed before the run.
    pub files: BTreeMap<String, FileFingerprint>,
    pub code_hash: String,
    pub commit: String,
    pub commit_dirty: bool,
    /// The output and its errors file.
    pub output: PathBuf,
    pub errors: PathBuf,
    pub annotate: bool,
}

/// Take the lock, declare, validate the quality config, resolve models and hash every input.
pub(crate) fn prepare<P: Pipeline>(
    root: &Path,
    crate_dir: &Path,
    options: &RunOptions,
) -> Result<Prepared<P>, RunError> {
    let root = root.to_owned();
    // One run per pipeline at a time, taken before anything is read, cached or written.
    let lock = crate::lock::acquire(&root, P::NAME, options.wait)?;
    // `git status` takes longer than everything else before the first request: overlap it.
    let git_status = {
        let root = root.clone();
        std::thread::spawn(move || git_commit(&root))
    };
    let (pipeline, declared): (P, Declare) = declare::<P>(&root)?;
    let quality = pipeline.quality();
    quality.validate()?;
    let voice = Voice::load(&root)?;
    let detectors = Arc::new(Detectors::new(&voice, &quality)?);
    let models = ModelsConfig::load(&root)?;
    let hasher = FileHasher::for_repo(&root);

    // Fingerprint inputs before running: the manifest records what was read.
    let mut files = BTreeMap::new();
    for dep in &declared.files {
        let sha256 = hasher
            .hash_path(dep.path())
            .map_err(|e| RunError::Declaration {
                pipeline: P::NAME.to_owned(),
                errors: vec![format!("file dependency '{}': {e}", dep.name())],
            })?;
        files.insert(
            dep.name().to_owned(),
            FileFingerprint {
                path: dep.rel_path().to_owned(),
                sha256,
            },
        );
    }
    let code_hash = crate::fingerprint::code_hash(&root, crate_dir, &hasher)?;
    let specs = declared
        .models
        .iter()
        .map(|m| {
            let spec = models.get(m.alias()).cloned()?;
            if options.batch {
                spec.in_batch_mode()
            } else {
                Ok(spec)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (commit, commit_dirty) = git_status
        .join()
        .unwrap_or_else(|_| ("unknown".to_owned(), false));

    let output = match &options.output {
        Some(path) if path.is_absolute() => path.clone(),
        Some(path) => std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.clone()),
        None => root.join(default_output(P::NAME)),
    };
    Ok(Prepared {
        _lock: lock,
        errors: errors_path_for(&output),
        output,
        root,
        pipeline,
        quality,
        voice,
        detectors,
        specs,
        files,
        code_hash,
        commit,
        commit_dirty,
        annotate: options.annotate.unwrap_or(P::ANNOTATED),
    })
}

/// The current git commit and whether the work tree has uncommitted changes (one `git status`
/// call; `("unknown", false)` outside a repository or without git).
pub fn git_commit(root: &Path) -> (String, bool) {
    let Some(status) = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=no",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
    else {
        return ("unknown".to_owned(), false);
    };
    let text = String::from_utf8_lossy(&status.stdout);
    let commit = text
        .lines()
        .find_map(|line| line.strip_prefix("# branch.oid "))
        .filter(|oid| oid.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or("unknown")
        .to_owned();
    let dirty = text
        .lines()
        .any(|line| !line.is_empty() && !line.starts_with('#'));
    (commit, dirty)
}
