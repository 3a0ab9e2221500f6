//! Loading a local model: the llama.cpp backend, the GGUF (checked against its sha256, or its `requantize` working copy) shared per file and format, and the llama context an engine decodes in.

use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use sha2::{Digest, Sha256};

use super::engine::EngineSettings;
use super::requantize;
use super::{LocalModelError, Requantize};

/// `LLAMA_FLASH_ATTN_TYPE_ENABLED`.
const FLASH_ATTN_ENABLED: i32 = 1;
/// The KV cache holds Q8_0, not llama.cpp's default F16. For F16 (and F32) caches, llama.cpp's
/// CPU flash attention picks its kernel from the batch's shape: a lone sequence decoding with
/// 512 or more cached positions gets a split-KV kernel, a prompt chunk gets a tiled one, a
/// sequence decoding beside others gets the row kernel, and the three round differently — so a
/// long request's reply would depend on whether it happened to be decoded alone. For quantized
/// caches every shape uses the row kernel. Measured on the voice pipeline (48 records, 2 cores):
/// the same wall time as F16 within 1 %, and half the KV memory.
const KV_CACHE_TYPE: KvCacheType = KvCacheType::Q8_0;

pub(super) fn backend() -> Result<&'static LlamaBackend, LocalModelError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("SHAPING_LLAMA_LOG").is_none() {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| LocalModelError::Backend(e.clone()))
}

/// One loaded GGUF, shared by every provider and engine that uses the same file and format.
pub(super) struct LoadedModel {
    pub(super) model: LlamaModel,
    pub(super) template: LlamaChatTemplate,
    /// sha256 of the source file (the one `models.toml` names).
    sha256: String,
    /// The file actually loaded: the source, or its re-encoded working copy.
    pub(super) file: PathBuf,
}

type ModelKey = (PathBuf, Requantize);

fn model_cache() -> &'static Mutex<HashMap<ModelKey, Weak<LoadedModel>>> {
    static MODELS: OnceLock<Mutex<HashMap<ModelKey, Weak<LoadedModel>>>> = OnceLock::new();
    MODELS.get_or_init(Default::default)
}

/// sha256 of a file, hex encoded.
fn sha256_file(path: &Path) -> Result<String, LocalModelError> {
    let io = |source| LocalModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Load `path` (checking its sha256 when `expected_sha256` is given; with `requantize`, its
/// working copy, made on first use), or return the copy already loaded.
pub(super) fn load_model(
    path: &Path,
    expected_sha256: Option<&str>,
    requantize: Requantize,
) -> Result<Arc<LoadedModel>, LocalModelError> {
    let expected = expected_sha256.map(|h| h.trim().to_ascii_lowercase());
    if !path.is_file() {
        return Err(LocalModelError::Missing {
            path: path.to_path_buf(),
            expected,
        });
    }
    let key = path.canonicalize().map_err(|source| LocalModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Holding the lock while loading keeps two concurrent loads of one file from doing it twice.
    let mut cache = model_cache().lock().unwrap_or_else(|p| p.into_inner());
    let key: ModelKey = (key, requantize);
    if let Some(model) = cache.get(&key).and_then(Weak::upgrade) {
        if let Some(expected) = &expected
            && &model.sha256 != expected
        {
            return Err(LocalModelError::HashMismatch {
                path: path.to_path_buf(),
                expected: expected.clone(),
                actual: model.sha256.clone(),
            });
        }
        return Ok(model);
    }
    let actual = sha256_file(path)?;
    if let Some(expected) = &expected
        && &actual != expected
    {
        return Err(LocalModelError::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.clone(),
            actual,
        });
    }
    let backend = backend()?;
    let file = requantize::ensure_working_copy(&key.0, &actual, requantize)?;
    let model =
        LlamaModel::load_from_file(backend, &file, &LlamaModelParams::default()).map_err(|e| {
            // A broken source names its expected hash; a broken working copy says how to redo it.
            let (at, expected, hint) = match requantize {
                Requantize::None => (path, expected.clone(), "not a valid GGUF model?".to_owned()),
                format => (
                    file.as_path(),
                    None,
                    format!(
                        "the {format} working copy of {}; delete it to re-create it",
                        path.display()
                    ),
                ),
            };
            LocalModelError::Load {
                path: at.to_path_buf(),
                expected,
                message: format!("{e} ({hint})"),
            }
        })?;
    let template = match model.chat_template(None) {
        Ok(t) => t,
        // No template in the GGUF: ChatML is the most common convention for small instruct models.
        Err(_) => LlamaChatTemplate::new("chatml").expect("static template name"),
    };
    let loaded = Arc::new(LoadedModel {
        model,
        template,
        sha256: actual,
        file,
    });
    cache.retain(|_, w| w.strong_count() > 0);
    cache.insert(key, Arc::downgrade(&loaded));
    Ok(loaded)
}

/// The llama context an engine of `model` decodes in: `settings.max_sequences` sequences of
/// `settings.context_per_sequence` tokens, batches of up to `n_batch` tokens, `threads` threads.
pub(super) fn new_context(
    model: &LoadedModel,
    settings: EngineSettings,
    n_batch: u32,
    threads: i32,
) -> Result<LlamaContext<'_>, String> {
    let EngineSettings {
        max_sequences,
        context_per_sequence,
        ..
    } = settings;
    let backend = backend().map_err(|e| e.to_string())?;
    let n_ctx = (max_sequences as u32).saturating_mul(context_per_sequence);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(max_sequences as u32)
        // One KV stream per sequence (the unified cache changes float summation order with the
        // batch's composition). Flash attention is on (faster, single and batched); with each
        // prompt prefilled in calls of its own (the engine) it keeps a request's output
        // independent of what is batched with it — the determinism test checks exactly that.
        // Copying a sequence to another stream copies the stream's buffer: the copy is exact.
        .with_kv_unified(false)
        .with_flash_attention_policy(FLASH_ATTN_ENABLED)
        .with_type_k(KV_CACHE_TYPE)
        .with_type_v(KV_CACHE_TYPE)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.model.new_context(backend, params).map_err(|e| {
        format!(
            "creating a llama context of {n_ctx} tokens ({max_sequences} sequences × {context_per_sequence}): {e}"
        )
    })
}
