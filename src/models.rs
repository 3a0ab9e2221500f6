//! `models.toml` (+ the git-ignored `models.local.toml`): model aliases resolved to provider specs and fingerprints.
//!
//! The local file overrides the shared one field by field, so a developer can point an alias at
//! their own endpoint without touching what is committed. Fingerprints hold only what changes
//! outputs (provider, model id, endpoint, default parameters, model file hash) — never secrets,
//! never limits. A replica set (`base_urls`) has the endpoint [`REPLICA_SET_ENDPOINT`] in its
//! fingerprint, whatever its members: they serve the same weights, so which one answered, and
//! adding or removing one, changes no output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model_fetch::model_cache_dir;
use crate::provider::Params;
use crate::provider::batch::{BatchApi, BatchConfig, BatchSettings};
use crate::provider::local::LocalModelConfig;
pub use crate::provider::local::Requantize;
use crate::provider::replicas::{HealthPolicy, ReplicaSetConfig, Wire};
use crate::provider::{HttpConfig, ProviderConfig};

/// The shared model configuration at the repository root (committed).
pub const MODELS_FILE: &str = "models.toml";
/// Per-machine overrides of [`MODELS_FILE`], field by field (git-ignored).
pub const LOCAL_MODELS_FILE: &str = "models.local.toml";

/// The fingerprint's `endpoint` of every replica set (`base_urls`): not the URLs, so that the
/// replica that answered, and adding or removing replicas, leave outputs CURRENT and cached
/// answers valid.
pub const REPLICA_SET_ENDPOINT: &str = "replicas";

/// Errors reading or resolving model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// `models.toml` is missing, or a models file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The models file.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// A models file is not valid TOML of this format (unknown fields included).
    #[error("{path}: {message}")]
    Parse {
        /// The models file.
        path: PathBuf,
        /// The TOML error, with its location.
        message: String,
    },
    /// A pipeline or command names an alias no models file defines.
    #[error("unknown model alias '{alias}'; known aliases: {known}")]
    UnknownAlias {
        /// The alias asked for.
        alias: String,
        /// The defined aliases, comma-separated (or a note that there are none).
        known: String,
    },
    /// An alias's settings are incomplete or out of range (no provider, a local model without
    /// `path`, a zero limit, a key where a variable name belongs, …).
    #[error("model '{alias}' in {path}: {message}")]
    Invalid {
        /// The alias.
        alias: String,
        /// The file that last set it (`models.local.toml` when it overrides the alias).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The alias's API key variable is unset or empty.
    #[error(
        "model '{alias}' needs an API key: the environment variable {var} is not set (set it, or point the alias elsewhere in models.local.toml)"
    )]
    MissingKey {
        /// The alias.
        alias: String,
        /// The environment variable that should hold the key.
        var: String,
    },
    /// Batch mode was asked for an alias whose provider has no batch API.
    #[error(
        "model '{alias}' is {what}, which has no batch API: batch mode needs an openai or anthropic alias with one `base_url` (run without --batch, or use another alias)"
    )]
    NoBatchApi {
        /// The alias.
        alias: String,
        /// What serves it.
        what: String,
    },
}

/// Which wire protocol / backend serves an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, SGLang, llama.cpp server, Ollama…).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// In-process llama.cpp with a GGUF file.
    #[serde(rename = "llama-cpp")]
    LlamaCpp,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::LlamaCpp => "llama-cpp",
        })
    }
}

/// One `[models.<alias>]` table as written; every field optional so the local file can override any subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    provider: Option<ProviderKind>,
    model: Option<String>,
    base_url: Option<String>,
    base_urls: Option<Vec<String>>,
    endpoint_concurrency: Option<BTreeMap<String, usize>>,
    api_key_env: Option<String>,
    path: Option<String>,
    sha256: Option<String>,
    requantize: Option<Requantize>,
    context_size: Option<u32>,
    max_concurrency: Option<usize>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    timeout_secs: Option<f64>,
    connect_timeout_secs: Option<f64>,
    max_retries: Option<u32>,
    price_input_per_mtok: Option<f64>,
    price_output_per_mtok: Option<f64>,
    batch: Option<bool>,
    batch_poll_secs: Option<f64>,
    batch_collect_secs: Option<f64>,
    batch_max_requests: Option<usize>,
    batch_price_factor: Option<f64>,
    params: Option<Params>,
}

impl ModelEntry {
    fn override_with(&mut self, local: ModelEntry) {
        macro_rules! take {
            ($($field:ident),*) => { $( if local.$field.is_some() { self.$field = local.$field; } )* };
        }
        // The endpoint is replaced as a whole, whichever form each file uses; per-endpoint caps
        // belong to the list they name.
        if local.base_url.is_some() || local.base_urls.is_some() {
            self.base_url = None;
            self.base_urls = None;
            self.endpoint_concurrency = None;
        }
        take!(
            provider,
            model,
            base_url,
            base_urls,
            endpoint_concurrency,
            api_key_env,
            path,
            sha256,
            requantize,
            context_size,
            max_concurrency,
            rpm,
            tpm,
            timeout_secs,
            connect_timeout_secs,
            max_retries,
            price_input_per_mtok,
            price_output_per_mtok,
            batch,
            batch_poll_secs,
            batch_collect_secs,
            batch_max_requests,
            batch_price_factor
        );
        if let Some(local_params) = local.params {
            let base = self.params.take().unwrap_or_default();
            self.params = Some(local_params.or(&base));
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

/// Everything the dispatcher and providers need about one alias.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The alias (`[models.<alias>]`).
    pub alias: String,
    /// The backend that serves it.
    pub provider: ProviderKind,
    /// Model id sent to the provider (or a label for local models).
    pub model: String,
    /// The one endpoint of an HTTP provider (`base_url`, or the provider's public API); `None`
    /// for local models and for a replica set.
    pub base_url: Option<String>,
    /// A replica set's endpoints (`base_urls`), each with its own cap, in the order written;
    /// empty otherwise.
    pub replicas: Vec<Replica>,
    /// Name of the environment variable holding the key (the key itself is never stored).
    pub api_key_env: Option<String>,
    /// Local model file (absolute) and its expected sha256.
    pub path: Option<PathBuf>,
    /// The local model file's expected sha256 (lowercase hex); None when not checked.
    pub sha256: Option<String>,
    /// Local models: the working copy's weight format (the fingerprint includes it).
    pub requantize: Requantize,
    /// Local models: the context window of each sequence, in tokens (default 2048).
    pub context_size: u32,
    /// Requests in flight at most through the alias's lane: `max_concurrency`, or for a replica
    /// set the sum of its endpoints' caps.
    pub max_concurrency: usize,
    /// Requests per minute the provider allows; None for no limit.
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute the provider allows; None for no limit.
    pub tpm: Option<u64>,
    /// Longest wait for a complete answer to one request (default 600 s).
    pub timeout: Duration,
    /// Longest wait for a connection to the provider (default 10 s).
    pub connect_timeout: Duration,
    /// Retries of a retryable failure before a request fails (default 6).
    pub max_retries: u32,
    /// Dollars per million input tokens; None when unknown.
    pub price_input_per_mtok: Option<f64>,
    /// Dollars per million output tokens; None when unknown.
    pub price_output_per_mtok: Option<f64>,
    /// Default sampling parameters of the alias (a request's own parameters take precedence).
    pub params: Params,
    /// Whether requests go through the provider's batch API (`batch = true`, or `--batch`).
    /// In batch mode the lane holds up to a job's worth of requests and ignores `rpm`/`tpm`.
    pub batch: bool,
    /// How the alias uses its batch API; `None` when it has none (local models, replica sets).
    pub batch_settings: Option<BatchSettings>,
}

/// One endpoint of a replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its base URL, as written in `base_urls`.
    pub url: String,
    /// Requests in flight at most at this endpoint: `endpoint_concurrency` for it, or the
    /// alias's `max_concurrency`.
    pub max_concurrency: usize,
}

impl ModelSpec {
    /// The key used to share one lane between aliases that reach the same endpoint and model.
    /// A replica set's key names its endpoints in sorted order, so it does not depend on the
    /// order they are written in (nor, like the fingerprint, on which one answers).
    pub fn lane_key(&self) -> String {
        match self.provider {
            ProviderKind::LlamaCpp => format!(
                "llama-cpp:{}",
                self.path.as_deref().unwrap_or(Path::new("")).display()
            ),
            _ if !self.replicas.is_empty() => {
                let mut urls: Vec<&str> = self.replicas.iter().map(|r| r.url.as_str()).collect();
                urls.sort_unstable();
                format!(
                    "{}:{REPLICA_SET_ENDPOINT}[{}]:{}",
                    self.provider,
                    urls.join(","),
                    self.model
                )
            }
            _ => format!(
                "{}:{}:{}{}",
                self.provider,
                self.base_url.as_deref().unwrap_or(""),
                self.model,
                if self.batch { ":batch" } else { "" }
            ),
        }
    }

    /// What outputs depend on, for manifests and cache keys. Never contains secrets.
    pub fn fingerprint(&self) -> ModelFingerprint {
        let endpoint = match self.provider {
            ProviderKind::LlamaCpp => {
                let file = format!("sha256:{}", self.sha256.as_deref().unwrap_or("unknown"));
                match self.requantize {
                    Requantize::None => file,
                    format => format!("{file} requantized to {format}"),
                }
            }
            _ if !self.replicas.is_empty() => REPLICA_SET_ENDPOINT.to_owned(),
            _ => self.base_url.clone().unwrap_or_default(),
        };
        ModelFingerprint {
            alias: self.alias.clone(),
            provider: self.provider.to_string(),
            model: self.model.clone(),
            endpoint,
            params: self.params.clone(),
        }
    }

    /// Estimated cost in dollars of the given usage, if prices are configured; at batch prices
    /// (`batch_price_factor` of the interactive ones) in batch mode.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Option<f64> {
        if self.price_input_per_mtok.is_none() && self.price_output_per_mtok.is_none() {
            return None;
        }
        let interactive = input_tokens as f64 / 1e6 * self.price_input_per_mtok.unwrap_or(0.0)
            + output_tokens as f64 / 1e6 * self.price_output_per_mtok.unwrap_or(0.0);
        Some(interactive * self.batch_price_factor().unwrap_or(1.0))
    }

    /// In batch mode, the batch price as a share of the interactive one.
    pub fn batch_price_factor(&self) -> Option<f64> {
        self.batch_settings
            .as_ref()
            .filter(|_| self.batch)
            .map(|s| s.price_factor)
    }

    /// This alias in batch mode (`--batch`): an error naming the alias when its provider has no
    /// batch API. The lane then holds up to a job's worth of requests (the record window grows
    /// with it), does not pace by `rpm`/`tpm` (batch APIs have their own queues), and waits up
    /// to 25 hours for an answer (jobs have a 24-hour completion window).
    pub fn in_batch_mode(mut self) -> Result<Self, ModelsError> {
        let Some(settings) = &self.batch_settings else {
            return Err(ModelsError::NoBatchApi {
                alias: self.alias.clone(),
                what: if self.provider == ProviderKind::LlamaCpp {
                    "a local llama-cpp model".to_owned()
                } else {
                    "a replica set (`base_urls`)".to_owned()
                },
            });
        };
        self.max_concurrency = settings.max_requests;
        self.rpm = None;
        self.tpm = None;
        self.timeout = self.timeout.max(Duration::from_secs(25 * 3600));
        self.batch = true;
        Ok(self)
    }

    /// The provider configuration of this alias, with its API key read from the environment
    /// now (so a missing key fails before any request).
    pub fn provider_config(&self) -> Result<ProviderConfig, ModelsError> {
        let http = || -> Result<HttpConfig, ModelsError> {
            Ok(HttpConfig {
                base_url: self.base_url.clone(),
                model: self.model.clone(),
                api_key: self.api_key()?,
                api_key_env: self.api_key_env.clone(),
                connect_timeout: self.connect_timeout,
                timeout: self.timeout,
                max_concurrency: self.max_concurrency,
            })
        };
        let wire = match self.provider {
            ProviderKind::OpenAi => Some(Wire::OpenAi),
            ProviderKind::Anthropic => Some(Wire::Anthropic),
            ProviderKind::LlamaCpp => None,
        };
        if self.batch
            && let Some(settings) = &self.batch_settings
        {
            return Ok(ProviderConfig::Batch(BatchConfig {
                alias: self.alias.clone(),
                api: match self.provider {
                    ProviderKind::Anthropic => BatchApi::Anthropic,
                    _ => BatchApi::OpenAi,
                },
                http: http()?,
                settings: settings.clone(),
                state_dir: None,
                stats: None,
            }));
        }
        if let Some(wire) = wire
            && !self.replicas.is_empty()
        {
            let template = http()?;
            return Ok(ProviderConfig::Replicas(ReplicaSetConfig {
                alias: self.alias.clone(),
                wire,
                endpoints: self
                    .replicas
                    .iter()
                    .map(|replica| HttpConfig {
                        base_url: Some(replica.url.clone()),
                        max_concurrency: replica.max_concurrency,
                        ..template.clone()
                    })
                    .collect(),
                health: HealthPolicy::default(),
            }));
        }
        Ok(match self.provider {
            ProviderKind::OpenAi => ProviderConfig::OpenAi(http()?),
            ProviderKind::Anthropic => ProviderConfig::Anthropic(http()?),
            ProviderKind::LlamaCpp => ProviderConfig::LlamaCpp(LocalModelConfig {
                alias: self.alias.clone(),
                path: self.path.clone(),
                sha256: self.sha256.clone(),
                requantize: self.requantize,
                max_concurrency: self.max_concurrency,
                context_size: self.context_size,
            }),
        })
    }

    /// The API key from the environment, or an error naming the variable; None when the alias
    /// needs no key (local models, OpenAI-compatible servers with no `api_key_env`).
    fn api_key(&self) -> Result<Option<String>, ModelsError> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            _ => Err(ModelsError::MissingKey {
                alias: self.alias.clone(),
                var: var.clone(),
            }),
        }
    }
}

/// The resolved configuration of a model alias that outputs depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// The alias.
    pub alias: String,
    /// The provider kind as written in models.toml (`openai`, `anthropic`, `llama-cpp`).
    pub provider: String,
    /// The model id (a label for local models).
    pub model: String,
    /// Where answers come from: the base URL; for a local model `sha256:<file hash>`, plus
    /// `requantized to <format>` when a working copy is used.
    pub endpoint: String,
    /// The alias's default sampling parameters.
    #[serde(default)]
    pub params: Params,
}

impl fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} @ {}", self.provider, self.model, self.endpoint)?;
        let params = serde_json::to_string(&self.params).unwrap_or_default();
        if params != "{}" {
            write!(f, " {params}")?;
        }
        Ok(())
    }
}

/// All aliases of a repository, resolved.
#[derive(Debug, Clone, Default)]
pub struct ModelsConfig {
    specs: BTreeMap<String, ModelSpec>,
}

fn read_models_file(path: &Path) -> Result<Option<ModelsFile>, ModelsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ModelsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ModelsError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

impl ModelsConfig {
    /// Read `models.toml` and `models.local.toml` from the repository root.
    pub fn load(root: &Path) -> Result<Self, ModelsError> {
        let shared_path = root.join(MODELS_FILE);
        let local_path = root.join(LOCAL_MODELS_FILE);
        let shared = read_models_file(&shared_path)?.ok_or_else(|| ModelsError::Read {
            path: shared_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        })?;
        let local = read_models_file(&local_path)?.unwrap_or_default();
        let mut entries: BTreeMap<String, (ModelEntry, PathBuf)> = shared
            .models
            .into_iter()
            .map(|(alias, e)| (alias, (e, shared_path.clone())))
            .collect();
        for (alias, local_entry) in local.models {
            match entries.get_mut(&alias) {
                Some((entry, path)) => {
                    entry.override_with(local_entry);
                    *path = local_path.clone();
                }
                None => {
                    entries.insert(alias, (local_entry, local_path.clone()));
                }
            }
        }
        let mut specs = BTreeMap::new();
        for (alias, (entry, path)) in entries {
            let spec = resolve_entry(&alias, entry, &path)?;
            specs.insert(alias, spec);
        }
        Ok(Self { specs })
    }

    /// The spec of `alias`.
    pub fn get(&self, alias: &str) -> Result<&ModelSpec, ModelsError> {
        self.specs
            .get(alias)
            .ok_or_else(|| ModelsError::UnknownAlias {
                alias: alias.to_owned(),
                known: if self.specs.is_empty() {
                    "(none: models.toml defines no [models.*] table)".to_owned()
                } else {
                    self.specs.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// The defined aliases, in alphabetical order.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.specs.keys().map(String::as_str)
    }
}

fn resolve_entry(alias: &str, entry: ModelEntry, path: &Path) -> Result<ModelSpec, ModelsError> {
    let invalid = |message: &str| ModelsError::Invalid {
        alias: alias.to_owned(),
        path: path.to_owned(),
        message: message.to_owned(),
    };
    let provider = entry
        .provider
        .ok_or_else(|| invalid("missing field `provider` (openai, anthropic or llama-cpp)"))?;
    let model_path = match provider {
        ProviderKind::LlamaCpp => {
            let file = entry
                .path
                .as_deref()
                .ok_or_else(|| invalid("a llama-cpp model needs `path` (a GGUF file)"))?;
            let file = PathBuf::from(file);
            Some(if file.is_absolute() {
                file
            } else {
                model_cache_dir().join(file)
            })
        }
        _ => None,
    };
    let model = match (&entry.model, &model_path) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        (None, None) => return Err(invalid("missing field `model` (the provider's model id)")),
    };
    let replica_urls = match provider {
        // Like `path` for hosted models: a hosted alias switched to a local file in
        // models.local.toml keeps the shared file's endpoints harmlessly.
        ProviderKind::LlamaCpp => Vec::new(),
        _ => replica_urls(&entry, &invalid)?,
    };
    let base_url = match provider {
        _ if !replica_urls.is_empty() => None,
        ProviderKind::OpenAi => Some(
            entry
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned()),
        ),
        ProviderKind::Anthropic => Some(
            entry
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.anthropic.com".to_owned()),
        ),
        ProviderKind::LlamaCpp => None,
    };
    let api_key_env = match provider {
        ProviderKind::LlamaCpp => None,
        ProviderKind::Anthropic => entry
            .api_key_env
            .clone()
            .or_else(|| Some("ANTHROPIC_API_KEY".to_owned())),
        // An OpenAI-compatible local server often needs no key: only require one when named or on api.openai.com.
        ProviderKind::OpenAi => entry.api_key_env.clone().or_else(|| {
            base_url
                .iter()
                .chain(&replica_urls)
                .any(|u| u.contains("api.openai.com"))
                .then(|| "OPENAI_API_KEY".to_owned())
        }),
    };
    if let Some(var) = &api_key_env
        && (var.is_empty() || var.contains(char::is_whitespace))
    {
        return Err(invalid(
            "`api_key_env` must be the NAME of an environment variable, not the key itself",
        ));
    }
    let secs = |v: Option<f64>, default: f64, field: &str| -> Result<Duration, ModelsError> {
        let v = v.unwrap_or(default);
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(invalid(&format!(
                "`{field}` must be a positive number of seconds"
            )))
        }
    };
    let max_concurrency = entry.max_concurrency.unwrap_or(match provider {
        ProviderKind::LlamaCpp => 8,
        _ => 32,
    });
    if max_concurrency == 0 {
        return Err(invalid("`max_concurrency` must be at least 1"));
    }
    let replicas = replicas(
        replica_urls,
        entry.endpoint_concurrency.as_ref(),
        max_concurrency,
        &invalid,
    )?;
    let max_concurrency = if replicas.is_empty() {
        max_concurrency
    } else {
        replicas.iter().map(|r| r.max_concurrency).sum()
    };
    if entry.context_size == Some(0) {
        return Err(invalid(
            "`context_size` (the context window, in tokens) must be at least 1",
        ));
    }
    if entry.rpm == Some(0) || entry.tpm == Some(0) {
        return Err(invalid(
            "`rpm` and `tpm` must be positive (leave them out for no limit)",
        ));
    }
    let batch_settings = batch_settings(provider, &replicas, &entry, &invalid)?;
    let spec = ModelSpec {
        alias: alias.to_owned(),
        provider,
        model,
        base_url,
        replicas,
        api_key_env,
        path: model_path,
        sha256: entry.sha256.map(|s| s.to_ascii_lowercase()),
        // Like `path` and `sha256`, only meaningful for a local file: an alias switched to a
        // hosted model in models.local.toml keeps the shared file's setting harmlessly.
        requantize: match provider {
            ProviderKind::LlamaCpp => entry.requantize.unwrap_or_default(),
            _ => Requantize::None,
        },
        context_size: entry.context_size.unwrap_or(2048),
        max_concurrency,
        rpm: entry.rpm,
        tpm: entry.tpm,
        timeout: secs(entry.timeout_secs, 600.0, "timeout_secs")?,
        connect_timeout: secs(entry.connect_timeout_secs, 10.0, "connect_timeout_secs")?,
        max_retries: entry.max_retries.unwrap_or(6),
        price_input_per_mtok: entry.price_input_per_mtok,
        price_output_per_mtok: entry.price_output_per_mtok,
        params: entry.params.unwrap_or_default(),
        batch: false,
        batch_settings,
    };
    if entry.batch == Some(true) {
        if spec.batch_settings.is_none() {
            return Err(invalid(&format!(
                "`batch = true` needs a provider with a batch API (openai or anthropic with one `base_url`); this alias is {}",
                if provider == ProviderKind::LlamaCpp {
                    "a local llama-cpp model"
                } else {
                    "a replica set (`base_urls`)"
                }
            )));
        }
        return spec.in_batch_mode();
    }
    Ok(spec)
}

/// The batch settings of an alias whose provider has a batch API (`None` otherwise), checked
/// against the provider's limits.
fn batch_settings(
    provider: ProviderKind,
    replicas: &[Replica],
    entry: &ModelEntry,
    invalid: &dyn Fn(&str) -> ModelsError,
) -> Result<Option<BatchSettings>, ModelsError> {
    let api = match provider {
        _ if !replicas.is_empty() => None,
        ProviderKind::OpenAi => Some(BatchApi::OpenAi),
        ProviderKind::Anthropic => Some(BatchApi::Anthropic),
        ProviderKind::LlamaCpp => None,
    };
    let Some(api) = api else {
        return Ok(None);
    };
    let mut settings = BatchSettings::for_api(api);
    let positive = |v: f64, field: &str| -> Result<Duration, ModelsError> {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(invalid(&format!(
                "`{field}` must be a positive number of seconds"
            )))
        }
    };
    if let Some(v) = entry.batch_poll_secs {
        settings.poll_interval = positive(v, "batch_poll_secs")?;
    }
    if let Some(v) = entry.batch_collect_secs {
        settings.collect_quiet = positive(v, "batch_collect_secs")?;
    }
    if let Some(n) = entry.batch_max_requests {
        if n == 0 || n > settings.max_requests {
            return Err(invalid(&format!(
                "`batch_max_requests` must be between 1 and {} ({api}'s limit per job)",
                settings.max_requests
            )));
        }
        settings.max_requests = n;
    }
    if let Some(f) = entry.batch_price_factor {
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(invalid(
                "`batch_price_factor` is the batch price as a share of the interactive one: more than 0, at most 1",
            ));
        }
        settings.price_factor = f;
    }
    Ok(Some(settings))
}

/// The endpoints of `base_urls`, checked: `Ok(empty)` when the alias has `base_url` (or
/// neither).
fn replica_urls(
    entry: &ModelEntry,
    invalid: &dyn Fn(&str) -> ModelsError,
) -> Result<Vec<String>, ModelsError> {
    let Some(urls) = &entry.base_urls else {
        if entry.endpoint_concurrency.is_some() {
            return Err(invalid(
                "`endpoint_concurrency` sets caps of `base_urls` endpoints; with one endpoint, set `max_concurrency`",
            ));
        }
        return Ok(Vec::new());
    };
    if entry.base_url.is_some() {
        return Err(invalid(
            "set either `base_url` (one endpoint) or `base_urls` (replicas), not both",
        ));
    }
    if urls.is_empty() {
        return Err(invalid(
            "`base_urls` is empty: list the endpoints (for one, `base_url` will do)",
        ));
    }
    let mut seen = Vec::with_capacity(urls.len());
    for url in urls {
        if !is_http_url(url) {
            return Err(invalid(&format!(
                "`base_urls` entry {url:?} is not an http(s) URL (like \"http://gpu-1:8000/v1\")"
            )));
        }
        let key = url.trim_end_matches('/');
        if seen.contains(&key) {
            return Err(invalid(&format!("`base_urls` lists {url:?} twice")));
        }
        seen.push(key);
    }
    Ok(urls.clone())
}

/// `http://host…` or `https://host…` with a host and no whitespace.
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !host.starts_with(':') && !url.contains(char::is_whitespace)
}

/// Each endpoint with its cap: its `endpoint_concurrency` entry, or `default`. Every entry
/// must name an endpoint of the list (trailing slashes aside).
fn replicas(
    urls: Vec<String>,
    overrides: Option<&BTreeMap<String, usize>>,
    default: usize,
    invalid: &dyn Fn(&str) -> ModelsError,
) -> Result<Vec<Replica>, ModelsError> {
    let overrides = overrides.cloned().unwrap_or_default();
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    for (url, cap) in &overrides {
        if !urls.iter().any(|u| same(u, url)) {
            return Err(invalid(&format!(
                "`endpoint_concurrency` names {url:?}, which is not in `base_urls`"
            )));
        }
        if *cap == 0 {
            return Err(invalid(&format!(
                "`endpoint_concurrency` for {url:?} must be at least 1"
            )));
        }
    }
    Ok(urls
        .into_iter()
        .map(|url| Replica {
            max_concurrency: overrides
                .iter()
                .find(|(u, _)| same(u, &url))
                .map_or(default, |(_, cap)| *cap),
            url,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL_DEE: &str = r#"
[models.dee]
provider = "llama-cpp"
path = "/models/dee.gguf"
sha256 = "ABC123"
requantize = "q8_0"
"#;

    fn load(shared: &str, local: Option<&str>) -> Result<ModelsConfig, ModelsError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MODELS_FILE), shared).unwrap();
        if let Some(local) = local {
            std::fs::write(dir.path().join(LOCAL_MODELS_FILE), local).unwrap();
        }
        ModelsConfig::load(dir.path())
    }

    #[test]
    fn the_working_copy_format_is_part_of_a_local_model_fingerprint() {
        let config = load(LOCAL_DEE, None).unwrap();
        let spec = config.get("dee").unwrap();
        assert_eq!(spec.requantize, Requantize::Q8_0);
        assert_eq!(
            spec.fingerprint().endpoint,
            "sha256:abc123 requantized to q8_0"
        );
        let as_is = load(LOCAL_DEE, Some("[models.dee]\nrequantize = \"none\"\n")).unwrap();
        assert_eq!(
            as_is.get("dee").unwrap().fingerprint().endpoint,
            "sha256:abc123"
        );
    }

    #[test]
    fn switching_an_alias_to_a_hosted_model_drops_the_local_only_settings() {
        let local = r#"
[models.dee]
provider = "openai"
model = "gpt-4o-mini"
base_url = "http://127.0.0.1:8000/v1"
"#;
        let config = load(LOCAL_DEE, Some(local)).unwrap();
        let spec = config.get("dee").unwrap();
        assert_eq!(spec.requantize, Requantize::None);
        assert_eq!(spec.path, None);
        assert_eq!(spec.fingerprint().endpoint, "http://127.0.0.1:8000/v1");
    }

    #[test]
    fn zero_limits_are_errors_naming_the_field() {
        let hosted = "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        for (line, field) in [
            ("max_concurrency = 0", "`max_concurrency`"),
            ("context_size = 0", "`context_size`"),
            ("rpm = 0", "`rpm`"),
            ("tpm = 0", "`tpm`"),
        ] {
            let err = load(&format!("{hosted}{line}\n"), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field) && err.contains("'m'"), "{line}: {err}");
        }
        let err = load(LOCAL_DEE, Some("[models.dee]\ncontext_size = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`context_size`"), "{err}");
    }

    #[test]
    fn an_unknown_requantize_format_names_the_file_and_the_choices() {
        let err = load(&LOCAL_DEE.replace("q8_0", "q4_0"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(MODELS_FILE), "{err}");
        assert!(
            err.contains("q4_0") && err.contains("none") && err.contains("q8_0"),
            "{err}"
        );
    }
}
