//! The repository root: where `models.toml`, `identity/` and `training/` live, and path rules inside it.

use std::path::{Component, Path, PathBuf};

/// Errors about locating the repository or paths inside it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "could not find the repository root (a directory with models.toml) above {start}; set SHAPING_ROOT"
    )]
    NotFound { start: PathBuf },
    #[error("SHAPING_ROOT={0} has no models.toml")]
    BadEnv(PathBuf),
    #[error("path '{path}' must be relative to the repository root")]
    Absolute { path: String },
    #[error("path '{path}' escapes the repository (via '..')")]
    DotDotEscape { path: String },
    #[error("path '{path}' resolves to {resolved}, outside the repository {root} (symlink escape)")]
    SymlinkEscape {
        path: String,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
}

/// Find the repository root: `$SHAPING_ROOT`, else the nearest ancestor of the current
/// directory holding `models.toml`.
pub fn find_root() -> Result<PathBuf, RepoError> {
    if let Some(root) = std::env::var_os("SHAPING_ROOT") {
        let root = PathBuf::from(root);
        if root.join("models.toml").is_file() {
            return Ok(root.canonicalize().unwrap_or(root));
        }
        return Err(RepoError::BadEnv(root));
    }
    let start = std::env::current_dir().map_err(RepoError::Cwd)?;
    start
        .ancestors()
        .find(|dir| dir.join("models.toml").is_file())
        .map(Path::to_path_buf)
        .ok_or(RepoError::NotFound { start })
}

/// Check that `rel` is a relative path that stays inside `root`, lexically and after symlinks.
/// Returns the absolute path. A path that does not exist yet is checked lexically only.
pub fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf, RepoError> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute() {
        return Err(RepoError::Absolute {
            path: rel.to_owned(),
        });
    }
    let mut depth: i64 = 0;
    for component in rel_path.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(RepoError::Absolute {
                    path: rel.to_owned(),
                });
            }
        }
        if depth < 0 {
            return Err(RepoError::DotDotEscape {
                path: rel.to_owned(),
            });
        }
    }
    let joined = root.join(rel_path);
    if let (Ok(resolved), Ok(canonical_root)) = (joined.canonicalize(), root.canonicalize())
        && !resolved.starts_with(&canonical_root)
    {
        return Err(RepoError::SymlinkEscape {
            path: rel.to_owned(),
            resolved,
            root: canonical_root,
        });
    }
    Ok(joined)
}

/// `path` relative to `root` with forward slashes, or the path unchanged if it is outside.
pub fn display_relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_else(|_| path.to_string_lossy().into_owned())
}
