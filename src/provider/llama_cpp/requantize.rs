//! Derived working copies of GGUF files, re-encoded once by llama.cpp's own quantizer (`requantize` in `models.toml`).
//!
//! The copy lives in `<model cache>/derived/`, named after the source's stem, the first 16 hex
//! digits of its (already verified) sha256 and the target format, so a different source file or
//! format never reuses it. It is written to a temporary file in the same directory, synced, then
//! renamed into place: an interrupted conversion leaves no half-written copy behind (a partial
//! file left by a killed process is removed by a later conversion), and two processes converting
//! at once both end with the same complete file.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::LocalModelError;
use super::model::backend;
use crate::provider::local::Requantize;

/// The working copy of `source` in `format`, converting it first if it does not exist yet.
/// `source_sha256` must be the verified hash of `source`.
pub(super) fn ensure_working_copy(
    source: &Path,
    source_sha256: &str,
    format: Requantize,
) -> Result<PathBuf, LocalModelError> {
    let ftype = match format {
        Requantize::None => return Ok(source.to_path_buf()),
        Requantize::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
    };
    let dir = crate::model_fetch::model_cache_dir().join("derived");
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    let short_hash = source_sha256.get(..16).unwrap_or(source_sha256);
    let target = dir.join(format!("{stem}.{short_hash}.{format}.gguf"));
    if target.is_file() {
        return Ok(target);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalModelError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    remove_abandoned_partials(&dir);
    let partial = dir.join(format!(
        ".{stem}.{short_hash}.{format}.{}.partial",
        std::process::id()
    ));
    eprintln!(
        "local model: writing a {format} working copy of {} to {} (once)",
        source.display(),
        target.display()
    );
    // The quantizer logs through llama.cpp's logger, which `backend()` silences.
    backend()?;
    let failed = |message: String| LocalModelError::Requantize {
        source_path: source.to_path_buf(),
        format,
        message,
    };
    let c_path = |path: &Path| {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| failed(format!("{} contains a NUL byte", path.display())))
    };
    let (input, output) = (c_path(source)?, c_path(&partial)?);
    // SAFETY: plain C calls. The parameter struct comes from llama.cpp's own defaults (null
    // pointers for the optional imatrix, overrides and pruning), and both paths are valid
    // NUL-terminated strings that outlive the call.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.allow_requantize = true;
        params.nthread = std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(1);
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(format!(
            "llama_model_quantize returned {status} (set SHAPING_LLAMA_LOG=1 to see llama.cpp's log)"
        )));
    }
    let synced = std::fs::File::open(&partial).and_then(|f| f.sync_all());
    if let Err(e) = synced.and_then(|()| std::fs::rename(&partial, &target)) {
        let _ = std::fs::remove_file(&partial);
        // Another process may have finished the same copy first.
        if !target.is_file() {
            return Err(io(&target)(e));
        }
    }
    Ok(target)
}

/// A conversion takes about a second; a partial file an hour old belongs to a process that was
/// killed mid-way. Removing it keeps a 100 MB+ leftover from piling up.
fn remove_abandoned_partials(dir: &Path) {
    const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if name.starts_with('.') && name.ends_with(".partial") && old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
