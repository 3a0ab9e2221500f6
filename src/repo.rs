//! The repository root: where `models.toml`, `identity/` and `training/` live, and path rules inside it.

use std::path::{Component, Path, PathBuf};

/// Errors about locating the repository or paths inside it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No directory from the current one upwards holds `models.toml` (and neither `--root` nor
    /// `SHAPING_ROOT` was given).
    #[error(
        "could not find the repository root (a directory with models.toml) above {start}; set SHAPING_ROOT"
    )]
    NotFound {
        /// The directory the search started from (the current directory).
        start: PathBuf,
    },
    /// `SHAPING_ROOT` names a directory without `models.toml`.
    #[error("SHAPING_ROOT={0} has no models.toml")]
    BadEnv(PathBuf),
    /// `--root` names a directory without `models.toml`.
    #[error("--root {0} has no models.toml")]
    BadRoot(PathBuf),
    /// A pipeline binary was asked to act on a repository holding its crate, but was built from
    /// other sources (another clone, or a library built elsewhere).
    #[error(
        "this binary was built from the sources in {built_from}, not from the repository it was asked to act on ({root}); rebuild it there: any `cargo xtask` command run in {root} rebuilds it (e.g. `cargo xtask list`)"
    )]
    ForeignBuild {
        /// The repository of the build (its crate directory when the build recorded none).
        built_from: PathBuf,
        /// The repository it was asked to act on.
        root: PathBuf,
    },
    /// A declared path is absolute.
    #[error("path '{path}' must be relative to the repository root")]
    Absolute {
        /// The path as declared.
        path: String,
    },
    /// A declared path climbs above the repository root with `..`.
    #[error("path '{path}' escapes the repository (via '..')")]
    DotDotEscape {
        /// The path as declared.
        path: String,
    },
    /// A declared path leads outside the repository through a symbolic link.
    #[error("path '{path}' resolves to {resolved}, outside the repository {root} (symlink escape)")]
    SymlinkEscape {
        /// The path as declared.
        path: String,
        /// Where it leads, symlinks followed.
        resolved: PathBuf,
        /// The repository root, symlinks followed.
        root: PathBuf,
    },
    /// The current directory could not be read while looking for the root.
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
}

/// The repository the library was compiled in, as `SHAPING_BUILD_REPO` said at compile time
/// (`.cargo/config.toml` sets it to the repository of the cargo invocation, and `cargo xtask`
/// sets it for its builds). Cargo records the value and rebuilds whatever reads it when it
/// changes, so a target directory shared by two clones never serves one clone's build to the other.
pub const LIBRARY_BUILD_REPO: Option<&str> = option_env!("SHAPING_BUILD_REPO");

/// Find the repository root, the way cargo finds its workspace: `$SHAPING_ROOT`, else the nearest
/// ancestor of the current directory holding `models.toml`.
pub fn find_root() -> Result<PathBuf, RepoError> {
    find_root_from(None)
}

/// Find the repository root: `explicit` (a `--root` flag) if given, else [`find_root`]'s rules.
pub fn find_root_from(explicit: Option<&Path>) -> Result<PathBuf, RepoError> {
    if let Some(root) = explicit {
        if root.join("models.toml").is_file() {
            return Ok(root.canonicalize().unwrap_or_else(|_| root.to_owned()));
        }
        return Err(RepoError::BadRoot(root.to_owned()));
    }
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

/// Where a pipeline binary was compiled, recorded by [`crate::pipeline_main!`]: its crate
/// directory (`CARGO_MANIFEST_DIR`) and the repository of the build (`SHAPING_BUILD_REPO`, see
/// [`LIBRARY_BUILD_REPO`]; cargo rebuilds the crate when that value changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOrigin {
    /// The pipeline crate's directory at compile time (absolute).
    pub crate_dir: &'static str,
    /// The repository of the build; None when the build did not record it.
    pub repo: Option<&'static str>,
}

impl BuildOrigin {
    /// The crate's directory relative to the repository it was built in (`pipelines/<directory
    /// name>` when the build did not record its repository).
    pub fn crate_rel(&self) -> PathBuf {
        let crate_dir = Path::new(self.crate_dir);
        self.repo
            .and_then(|repo| crate_dir.strip_prefix(repo).ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| {
                Path::new("pipelines").join(crate_dir.file_name().unwrap_or_default())
            })
    }

    /// Check that this build may act on the repository at `root` and return the pipeline's crate
    /// directory there (what code hashes cover).
    ///
    /// A repository holding this pipeline's crate must be the one the binary was built from
    /// (with the library of the same build); otherwise the binary's code may not be the code
    /// in that repository. A repository without the crate (data only, as in tests) is served by
    /// any build; its code hash covers what it holds.
    pub fn check(&self, root: &Path) -> Result<PathBuf, RepoError> {
        let crate_dir = root.join(self.crate_rel());
        if !crate_dir.join("Cargo.toml").is_file() {
            return Ok(crate_dir);
        }
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let same_repo = self
            .repo
            .is_none_or(|repo| canonical(Path::new(repo)) == canonical(root));
        let same_crate = canonical(Path::new(self.crate_dir)) == canonical(&crate_dir);
        if same_repo && same_crate && self.repo == LIBRARY_BUILD_REPO {
            Ok(crate_dir)
        } else {
            Err(RepoError::ForeignBuild {
                built_from: self
                    .repo
                    .map_or_else(|| PathBuf::from(self.crate_dir), PathBuf::from),
                root: root.to_owned(),
            })
        }
    }
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

/// Variables cargo sets for a process it runs (`cargo run`, `cargo test`), which a cargo started
/// from inside that process would inherit. Some build scripts track them (ring tracks
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`), so a nested `cargo build` with them set rebuilds
/// those crates and everything above them (the TLS stack, reqwest, the library, every pipeline),
/// and the next build from a shell rebuilds them back.
fn is_crate_env(name: &str) -> bool {
    const EXACT: [&str; 6] = [
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CFG_",
        "CARGO_BIN_EXE_",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A `cargo` command (`$CARGO`, else `cargo`) whose environment is the current one without the
/// variables cargo set for this process: it builds exactly what the same command typed in a
/// shell builds, reusing the same artifacts. Every cargo that xtask or a test starts uses it.
pub fn cargo_command() -> std::process::Command {
    let mut command =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_crate_env) {
            command.env_remove(name);
        }
    }
    command
}

#[cfg(test)]
mod tests {
    #[test]
    fn nested_cargo_drops_the_variables_cargo_set_for_this_process() {
        // `cargo test` runs this binary with CARGO_MANIFEST_DIR and CARGO_PKG_NAME set.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = super::cargo_command();
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
        ] {
            assert!(
                removed.iter().any(|r| r == name),
                "{name} kept: {removed:?}"
            );
        }
        assert!(
            !removed
                .iter()
                .any(|r| r == "CARGO_HOME" || r == "CARGO_TARGET_DIR" || r == "CARGO")
        );
    }
}
