//! The optional rubric judge: a model scores every sample of a dataset from 1 to 5 on voice, persona consistency, relevance and coherence against the identity narrative.
//!
//! [`JudgePlan::prepare`] reads the dataset, the narrative (`identity/NARRATIVE.md`) and the
//! judge alias from `models.toml`, builds one request per sample (the rubric and narrative as the
//! system message, the sample as the user message, a JSON schema for the answer) and counts the
//! answers already in the judge's response cache (`.shaping/cache/judge.redb`), so
//! [`JudgePlan::estimate`] can show the number of requests and their estimated cost before
//! anything is sent. [`JudgePlan::run`] sends the missing requests through a [`Dispatcher`] (caps,
//! pacing, retries, every answer cached before it is used), parses each answer into [`Scores`]
//! and aggregates them into a [`JudgeSummary`]. A malformed answer, or a score outside 1..=5, is
//! asked once more under a distinct cache key and then reported for that sample; it never stops
//! the run.
//!
//! The cache key hashes the judge's model fingerprint, the rubric and narrative (system message),
//! the sample (user message) and the request parameters (schema included): a rerun sends
//! nothing, and changing any of them asks again.
//!
//! [`record_in_manifest`] stores the summary under `"judge"` in the dataset's manifest (atomically;
//! status ignores the field, so a CURRENT dataset stays CURRENT), [`JudgeSummary::gate`] applies a
//! minimum score, and [`render_html_section`] / [`add_to_report`] put it into the HTML report.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cache::{CacheError, CacheKey, ResponseCache};
use crate::dispatch::{DispatchError, DispatchOptions, DispatchStats, Dispatcher, Lane};
use crate::format::SampleLine;
use crate::manifest::{Manifest, ManifestError};
use crate::models::{ModelFingerprint, ModelSpec, ModelsConfig, ModelsError};
use crate::progress::Progress;
use crate::provider::{ChatRequest, Message, Params};
use crate::quality::{self, QualityError};
use crate::sample::Response;

/// The model alias that judges, unless told otherwise.
pub const DEFAULT_ALIAS: &str = "judge";
/// The identity narrative the samples are judged against, relative to the repository root.
pub const NARRATIVE_FILE: &str = "identity/NARRATIVE.md";
/// Name of the judge's response cache: `.shaping/cache/judge.redb`.
pub const CACHE_NAME: &str = "judge";
/// Most tokens of one judge answer (four scores and a one-sentence reason).
pub const MAX_ANSWER_TOKENS: u32 = 200;
/// How many of the lowest-scoring samples the summary keeps, with their scores and reasons.
pub const DEFAULT_LOWEST_KEPT: usize = 20;
/// Requests per sample at most: a malformed answer is asked once more (under a new cache key).
const ATTEMPTS: u32 = 2;
/// Samples being judged at once (the lane's `max_concurrency` caps the requests in flight).
const WINDOW: usize = 256;
/// The record key of every judge request's cache key: identical samples share one answer.
const RECORD_KEY: &str = "rubric-judge";
/// Longest reason kept from an answer, in characters.
const REASON_CHARS: usize = 300;

/// The instructions of the judge. The narrative is appended; the sample is the user message.
const RUBRIC: &str = "\
You review fine-tuning data for a persona. The persona is described in the narrative below. You \
will see one sample: a conversation whose final assistant message is meant to be spoken by the \
persona. Score that final assistant message from 1 to 5 on each criterion:

- voice: it sounds like the persona speaking in the first person, with the tone, habits and \
phrasing the narrative describes, not like a generic assistant. Speaker labels, scripts, stage \
directions or third-person narration of herself or himself score low.
- persona: it is consistent with every fact of the narrative (who the persona is, family, work, \
history, tastes). Any contradiction, or claiming to be an AI or an assistant, scores 1 or 2.
- relevance: it answers what the user actually asked, instead of changing the subject, missing \
the question or handing the prompt back.
- coherence: it is clear and well formed: sentences follow from each other, no loops or \
repetition, no gibberish, and it ends on a complete sentence.

Scale: 5 exemplary, 4 good with minor flaws, 3 acceptable but weak, 2 poor, 1 unacceptable.
Judge only the final assistant message; earlier messages are context.
Answer with JSON only, in this shape: \
{\"voice\": 1-5, \"persona\": 1-5, \"relevance\": 1-5, \"coherence\": 1-5, \
\"reason\": \"the main flaw, in at most 20 words\"}";

/// Errors of the judge that stop it (per-sample problems are [`AnswerError`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// Unknown alias, unreadable models.toml, missing API key (names the variable, never the key).
    #[error(transparent)]
    Models(#[from] ModelsError),
    /// The identity narrative could not be read.
    #[error(
        "the judge needs the identity narrative {path}: {source} (samples are judged against it)"
    )]
    Narrative {
        /// The narrative file.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The identity narrative holds only whitespace.
    #[error(
        "the identity narrative {path} is empty: the judge has nothing to judge the samples against"
    )]
    EmptyNarrative {
        /// The narrative file.
        path: PathBuf,
    },
    /// The dataset could not be read, or a line of it is not a sample.
    #[error("dataset {path}: {source}")]
    Dataset {
        /// The dataset file.
        path: PathBuf,
        /// What is wrong, with the line.
        source: QualityError,
    },
    /// The dataset holds no sample.
    #[error("dataset {path} has no samples to judge")]
    EmptyDataset {
        /// The dataset file.
        path: PathBuf,
    },
    /// Hashing the dataset for the summary failed.
    #[error("cannot hash {path}: {message}")]
    Hash {
        /// The dataset file.
        path: PathBuf,
        /// The hashing error, as text.
        message: String,
    },
    /// The judge's response cache could not be opened (or is in use).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The judge model's provider could not be built (or its API key is missing).
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The dataset's manifest could not be read, parsed or written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The dataset has no manifest to record the scores in (it was not built by a run).
    #[error("{path} does not exist: build the dataset with `cargo xtask data` before judging it")]
    NoManifest {
        /// The manifest path that was expected.
        path: PathBuf,
    },
    /// The manifest's `judge` field holds something other than a [`JudgeSummary`].
    #[error("manifest {path}: field \"judge\" is not a judge summary: {source}")]
    ManifestField {
        /// The manifest file.
        path: PathBuf,
        /// Why the field does not decode.
        source: serde_json::Error,
    },
    /// The tokio runtime of [`JudgePlan::run`] could not be started.
    #[error("cannot start the judge's async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why one sample got no scores. The run goes on; the sample is listed in
/// [`JudgeSummary::failures`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    /// The request failed for good (after the dispatcher's retries), or the provider could not
    /// be built.
    #[error("the judge request failed: {message}")]
    Request {
        /// The error kind and message, as `kind: message`.
        message: String,
    },
    /// No JSON object could be found in the answer, or it does not parse.
    #[error("the judge's answer is not a JSON object ({message}): {excerpt:?}")]
    NotJson {
        /// What is wrong with it.
        message: String,
        /// The answer's first 120 characters.
        excerpt: String,
    },
    /// The answer's object has no score (or `null`) for a criterion.
    #[error("the judge's answer has no score for '{criterion}'")]
    MissingScore {
        /// The criterion's key ([`Criterion::key`]).
        criterion: &'static str,
    },
    /// A score is not an integer from 1 to 5.
    #[error("the judge's score for '{criterion}' is {value}, outside 1..=5")]
    OutOfRange {
        /// The criterion's key ([`Criterion::key`]).
        criterion: &'static str,
        /// The value as the answer gave it (JSON).
        value: String,
    },
}

/// One rubric criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Criterion {
    /// Sounds like the persona speaking.
    Voice,
    /// Consistent with the narrative's facts.
    Persona,
    /// Answers what was asked.
    Relevance,
    /// Clear and well formed.
    Coherence,
}

impl Criterion {
    /// Every criterion, in the order of the rubric, the summary and the report.
    pub const ALL: [Criterion; 4] = [
        Criterion::Voice,
        Criterion::Persona,
        Criterion::Relevance,
        Criterion::Coherence,
    ];

    /// The field name in the judge's answer, the manifest and the report.
    pub fn key(self) -> &'static str {
        match self {
            Criterion::Voice => "voice",
            Criterion::Persona => "persona",
            Criterion::Relevance => "relevance",
            Criterion::Coherence => "coherence",
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The four scores of one sample, each in 1..=5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scores {
    /// [`Criterion::Voice`].
    pub voice: u8,
    /// [`Criterion::Persona`].
    pub persona: u8,
    /// [`Criterion::Relevance`].
    pub relevance: u8,
    /// [`Criterion::Coherence`].
    pub coherence: u8,
}

impl Scores {
    /// The score for `criterion`.
    pub fn get(&self, criterion: Criterion) -> u8 {
        match criterion {
            Criterion::Voice => self.voice,
            Criterion::Persona => self.persona,
            Criterion::Relevance => self.relevance,
            Criterion::Coherence => self.coherence,
        }
    }

    /// The mean of the four scores.
    pub fn mean(&self) -> f64 {
        Criterion::ALL
            .iter()
            .map(|c| f64::from(self.get(*c)))
            .sum::<f64>()
            / Criterion::ALL.len() as f64
    }
}

/// Mean score per criterion over the scored samples (rounded to 3 decimals).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Means {
    /// [`Criterion::Voice`].
    pub voice: f64,
    /// [`Criterion::Persona`].
    pub persona: f64,
    /// [`Criterion::Relevance`].
    pub relevance: f64,
    /// [`Criterion::Coherence`].
    pub coherence: f64,
}

impl Means {
    /// The mean for `criterion`.
    pub fn get(&self, criterion: Criterion) -> f64 {
        match criterion {
            Criterion::Voice => self.voice,
            Criterion::Persona => self.persona,
            Criterion::Relevance => self.relevance,
            Criterion::Coherence => self.coherence,
        }
    }
}

/// A scored sample kept in the summary (the lowest ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScore {
    /// The sample's id in the dataset.
    pub id: String,
    /// Its four scores.
    pub scores: Scores,
    /// Their mean, rounded to 3 decimals.
    pub mean: f64,
    /// The judge's one-sentence reason.
    pub reason: String,
}

/// A sample the judge could not score, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleFailure {
    /// The sample's id in the dataset.
    pub id: String,
    /// Why it got no scores ([`AnswerError`] as text).
    pub error: String,
}

/// What the judge found in one dataset: the `"judge"` field of its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeSummary {
    /// The alias that judged.
    pub alias: String,
    /// What that alias resolved to (no secrets).
    pub model: ModelFingerprint,
    /// sha256 of the rubric instructions and the answer schema.
    pub rubric_sha256: String,
    /// sha256 of the narrative the samples were judged against.
    pub narrative_sha256: String,
    /// sha256 of the dataset file that was judged.
    pub dataset_sha256: String,
    /// Samples in the dataset.
    pub samples: u64,
    /// Samples with four valid scores.
    pub scored: u64,
    /// Mean per criterion over the scored samples; absent when none was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub means: Option<Means>,
    /// Mean of the four criterion means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_mean: Option<f64>,
    /// Per criterion, how many samples got 1, 2, 3, 4 and 5.
    pub distribution: BTreeMap<String, [u64; 5]>,
    /// The lowest-scoring samples (lowest mean first, then id).
    pub lowest: Vec<SampleScore>,
    /// Every sample that got no scores, in dataset order.
    pub failures: Vec<SampleFailure>,
}

impl JudgeSummary {
    /// Apply a minimum score: every criterion mean must reach `min_score`, and every sample must
    /// have been scored. Returns what fails (empty = passed).
    pub fn gate(&self, min_score: f64) -> Vec<String> {
        let mut failures = Vec::new();
        match &self.means {
            None => failures.push(format!(
                "no sample was scored (0 of {}), so the minimum judge score {min_score} cannot be shown",
                self.samples
            )),
            Some(means) => {
                for criterion in Criterion::ALL {
                    let mean = means.get(criterion);
                    if mean < min_score {
                        failures.push(format!(
                            "judge score '{criterion}': mean {mean:.2} is below the minimum {min_score}"
                        ));
                    }
                }
            }
        }
        if !self.failures.is_empty() {
            failures.push(format!(
                "{} of {} samples could not be judged (e.g. '{}'), so they are not vouched for",
                self.failures.len(),
                self.samples,
                self.failures[0].id
            ));
        }
        failures
    }
}

/// The judge's verdict on one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The sample's id in the dataset.
    pub id: String,
    /// The scores and the judge's reason, or why there are none.
    pub result: Result<(Scores, String), AnswerError>,
    /// Whether every answer used for this sample came from the cache.
    pub cached: bool,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct JudgeOutcome {
    /// What goes into the manifest.
    pub summary: JudgeSummary,
    /// One per sample, in dataset order.
    pub judgements: Vec<Judgement>,
    /// Requests sent to the provider (retries included); 0 when every answer was cached.
    pub requests_sent: u64,
    /// Answers taken from the cache.
    pub cache_hits: u64,
    /// Prompt tokens of the answers received (cached answers cost none).
    pub input_tokens: u64,
    /// Generated tokens of the answers received.
    pub output_tokens: u64,
    /// Cost of what was sent, when the alias has prices.
    pub cost_usd: Option<f64>,
}

/// The requests a run will send and what they are estimated to cost, known before sending.
#[derive(Debug, Clone, PartialEq)]
pub struct CostEstimate {
    /// The judge's model alias.
    pub alias: String,
    /// `provider:model`.
    pub model: String,
    /// Samples in the dataset (one request each unless cached).
    pub samples: usize,
    /// Samples whose answer is already cached.
    pub cached: usize,
    /// Requests to send (one per uncached sample; a malformed answer adds one more).
    pub requests: usize,
    /// About 4 characters a token, over the messages of the requests to send.
    pub input_tokens: u64,
    /// At most `max_tokens` per request.
    pub output_tokens: u64,
    /// Dollars, when the alias has `price_input_per_mtok` / `price_output_per_mtok`.
    pub cost_usd: Option<f64>,
}

impl fmt::Display for CostEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "judge '{}' ({}): {} samples, {} answers cached, {} requests to send",
            self.alias, self.model, self.samples, self.cached, self.requests
        )?;
        if self.requests == 0 {
            return f.write_str("; nothing to pay for");
        }
        match self.cost_usd {
            Some(cost) => write!(
                f,
                "; estimated cost ${cost:.4} (about {} input tokens, at most {} output tokens)",
                self.input_tokens, self.output_tokens
            ),
            None => write!(
                f,
                "; cost unknown: '{}' has no price_input_per_mtok / price_output_per_mtok in models.toml",
                self.alias
            ),
        }
    }
}

/// What to judge with.
#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// The model alias (default [`DEFAULT_ALIAS`]).
    pub alias: String,
    /// The narrative, relative to the repository root (default [`NARRATIVE_FILE`]).
    pub narrative: PathBuf,
    /// The response cache file (default `.shaping/cache/judge.redb` under the root).
    pub cache: Option<PathBuf>,
    /// How many lowest-scoring samples the summary keeps.
    pub lowest_kept: usize,
    /// No progress bar or progress lines on stderr.
    pub quiet: bool,
}

impl Default for JudgeOptions {
    fn default() -> Self {
        Self {
            alias: DEFAULT_ALIAS.to_owned(),
            narrative: PathBuf::from(NARRATIVE_FILE),
            cache: None,
            lowest_kept: DEFAULT_LOWEST_KEPT,
            quiet: false,
        }
    }
}

/// One sample, ready to be judged.
struct Item {
    id: String,
    messages: Vec<Message>,
}

/// A prepared judging run of one dataset: requests built, cache opened, cost known.
pub struct JudgePlan {
    spec: ModelSpec,
    fingerprint: ModelFingerprint,
    params: Params,
    rubric_sha256: String,
    narrative_sha256: String,
    dataset_sha256: String,
    lowest_kept: usize,
    quiet: bool,
    /// The dataset's name, for progress.
    name: String,
    items: Vec<Item>,
    cache: Arc<ResponseCache>,
    cached: usize,
}

impl JudgePlan {
    /// Resolve the alias, read the narrative and the dataset, open the cache and see which
    /// answers it already holds. Sends nothing.
    pub fn prepare(
        root: &Path,
        dataset: &Path,
        options: &JudgeOptions,
    ) -> Result<Self, JudgeError> {
        let models = ModelsConfig::load(root)?;
        let spec = models.get(&options.alias)?.clone();
        let narrative_path = root.join(&options.narrative);
        let narrative =
            std::fs::read_to_string(&narrative_path).map_err(|source| JudgeError::Narrative {
                path: narrative_path.clone(),
                source,
            })?;
        if narrative.trim().is_empty() {
            return Err(JudgeError::EmptyNarrative {
                path: narrative_path,
            });
        }
        let dataset_err = |source| JudgeError::Dataset {
            path: dataset.to_owned(),
            source,
        };
        let mut items = Vec::new();
        for entry in quality::read_samples(dataset).map_err(dataset_err)? {
            // A pair is judged on its chosen answer (the one meant to be in character), after
            // its prompt; a conversation on its last answer, after the turns before it.
            let (id, conversation) = match entry.map_err(dataset_err)?.1 {
                SampleLine::Chat(record) => (record.id, record.messages),
                SampleLine::Preference(pair) => {
                    let mut messages = pair.prompt;
                    messages.extend(pair.chosen);
                    (pair.id, messages)
                }
            };
            items.push(Item {
                messages: judge_messages(&narrative, &conversation),
                id,
            });
        }
        if items.is_empty() {
            return Err(JudgeError::EmptyDataset {
                path: dataset.to_owned(),
            });
        }
        let dataset_sha256 =
            crate::fingerprint::sha256_file(dataset).map_err(|e| JudgeError::Hash {
                path: dataset.to_owned(),
                message: e.to_string(),
            })?;
        let cache_path = options
            .cache
            .clone()
            .unwrap_or_else(|| crate::cache::cache_path(root, CACHE_NAME));
        let cache = Arc::new(ResponseCache::open(&cache_path)?);
        let params = judge_params().or(&spec.params);
        let fingerprint = spec.fingerprint();
        let mut plan = Self {
            spec,
            fingerprint,
            params,
            rubric_sha256: crate::fingerprint::sha256_hex(format!("{RUBRIC}\0{}", answer_schema())),
            narrative_sha256: crate::fingerprint::sha256_hex(narrative.as_bytes()),
            dataset_sha256,
            lowest_kept: options.lowest_kept,
            quiet: options.quiet,
            name: quality::dataset_name(dataset),
            items,
            cache,
            cached: 0,
        };
        plan.cached = plan
            .items
            .iter()
            .filter(|item| matches!(plan.cache.get(&plan.key(item, 0)), Ok(Some(_))))
            .count();
        Ok(plan)
    }

    /// The resolved judge alias.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Requests to send and their estimated cost (input ≈ 4 characters a token, output at most
    /// `max_tokens`), counting only samples whose answer is not cached.
    pub fn estimate(&self) -> CostEstimate {
        let mut requests = 0;
        let mut input_tokens = 0;
        for item in &self.items {
            if matches!(self.cache.get(&self.key(item, 0)), Ok(Some(_))) {
                continue;
            }
            requests += 1;
            input_tokens += item
                .messages
                .iter()
                .map(|m| m.content.len() as u64 / 4 + 4)
                .sum::<u64>();
        }
        let output_tokens =
            requests as u64 * u64::from(self.params.max_tokens.unwrap_or(MAX_ANSWER_TOKENS));
        CostEstimate {
            alias: self.spec.alias.clone(),
            model: format!("{}:{}", self.spec.provider, self.spec.model),
            samples: self.items.len(),
            cached: self.items.len() - requests,
            requests,
            input_tokens,
            output_tokens,
            cost_usd: self.spec.cost(input_tokens, output_tokens),
        }
    }

    /// Judge every sample (blocking: runs its own async runtime).
    pub fn run(self) -> Result<JudgeOutcome, JudgeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(JudgeError::Runtime)?;
        runtime.block_on(self.execute())
    }

    /// Judge every sample on the current tokio runtime.
    pub async fn execute(self) -> Result<JudgeOutcome, JudgeError> {
        let dispatcher = Arc::new(Dispatcher::new(
            DispatchOptions::default(),
            Some(Arc::clone(&self.cache)),
        ));
        // Built only when something must be sent: a fully cached rerun needs no API key.
        let lane = if self.cached < self.items.len() {
            Some(dispatcher.lane(&self.spec)?)
        } else {
            None
        };
        let progress = Progress::new(
            &format!("judge {}", self.name),
            Arc::clone(&dispatcher.stats),
            self.quiet,
        );
        progress.add_total(self.items.len() as u64);
        let judgements: Vec<Judgement> = futures::stream::iter(&self.items)
            .map(|item| self.judge(&dispatcher, lane.as_ref(), item))
            .buffered(WINDOW)
            .inspect(|judgement| progress.record_done(judgement.result.is_err()))
            .collect()
            .await;
        progress.finish();
        let stats = &dispatcher.stats;
        let input_tokens = DispatchStats::get(&stats.input_tokens);
        let output_tokens = DispatchStats::get(&stats.output_tokens);
        Ok(JudgeOutcome {
            summary: self.summarize(&judgements),
            requests_sent: DispatchStats::get(&stats.requests_sent),
            cache_hits: judgements.iter().filter(|j| j.cached).count() as u64,
            input_tokens,
            output_tokens,
            cost_usd: self.spec.cost(input_tokens, output_tokens),
            judgements,
        })
    }

    fn key(&self, item: &Item, attempt: u32) -> CacheKey {
        CacheKey::new(
            &self.fingerprint,
            &item.messages,
            &self.params,
            RECORD_KEY,
            attempt,
        )
    }

    /// Ask for one sample's scores: the cached answer if there is one, else a request. An answer
    /// that does not parse is asked once more under the next attempt's key.
    async fn judge(
        &self,
        dispatcher: &Arc<Dispatcher>,
        lane: Option<&Arc<Lane>>,
        item: &Item,
    ) -> Judgement {
        let mut cached = true;
        let mut last_error = None;
        for attempt in 0..ATTEMPTS {
            let key = self.key(item, attempt);
            let response = self.answer(dispatcher, lane, item, key).await;
            cached &= response.cached;
            if let Some(error) = &response.error {
                return Judgement {
                    id: item.id.clone(),
                    result: Err(AnswerError::Request {
                        message: format!("{}: {}", error.kind, error.message),
                    }),
                    cached,
                };
            }
            match parse_answer(&response.text) {
                Ok(verdict) => {
                    return Judgement {
                        id: item.id.clone(),
                        result: Ok(verdict),
                        cached,
                    };
                }
                Err(error) => last_error = Some(error),
            }
        }
        Judgement {
            id: item.id.clone(),
            result: Err(last_error.expect("at least one attempt")),
            cached,
        }
    }

    async fn answer(
        &self,
        dispatcher: &Arc<Dispatcher>,
        lane: Option<&Arc<Lane>>,
        item: &Item,
        key: CacheKey,
    ) -> Response {
        if let Ok(Some(hit)) = self.cache.get(&key) {
            return Response::from_cached(hit, true);
        }
        let lane = match lane {
            Some(lane) => Arc::clone(lane),
            None => match dispatcher.lane(&self.spec) {
                Ok(lane) => lane,
                Err(e) => {
                    let now = time::OffsetDateTime::now_utc();
                    return Response::failed(
                        crate::sample::StepError::new(
                            crate::provider::ErrorKind::Local.as_str(),
                            e.to_string(),
                        ),
                        now,
                        now,
                    );
                }
            },
        };
        let request = ChatRequest {
            messages: item.messages.clone(),
            params: self.params.clone(),
            derived_seed: u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes")),
        };
        dispatcher.execute(&lane, request, key).await
    }

    fn summarize(&self, judgements: &[Judgement]) -> JudgeSummary {
        let mut distribution: BTreeMap<String, [u64; 5]> = Criterion::ALL
            .iter()
            .map(|c| (c.key().to_owned(), [0; 5]))
            .collect();
        let mut sums = [0u64; 4];
        let mut scored = Vec::new();
        let mut failures = Vec::new();
        for judgement in judgements {
            match &judgement.result {
                Ok((scores, reason)) => {
                    for (i, criterion) in Criterion::ALL.iter().enumerate() {
                        let score = scores.get(*criterion);
                        sums[i] += u64::from(score);
                        if let Some(count) = distribution
                            .get_mut(criterion.key())
                            .and_then(|counts| counts.get_mut(usize::from(score) - 1))
                        {
                            *count += 1;
                        }
                    }
                    scored.push(SampleScore {
                        id: judgement.id.clone(),
                        scores: *scores,
                        mean: round3(scores.mean()),
                        reason: reason.clone(),
                    });
                }
                Err(error) => failures.push(SampleFailure {
                    id: judgement.id.clone(),
                    error: error.to_string(),
                }),
            }
        }
        let n = scored.len() as f64;
        let means = (!scored.is_empty()).then(|| Means {
            voice: round3(sums[0] as f64 / n),
            persona: round3(sums[1] as f64 / n),
            relevance: round3(sums[2] as f64 / n),
            coherence: round3(sums[3] as f64 / n),
        });
        let overall_mean = (!scored.is_empty())
            .then(|| round3(sums.iter().sum::<u64>() as f64 / (n * sums.len() as f64)));
        let scored_count = scored.len() as u64;
        scored.sort_by(|a, b| a.mean.total_cmp(&b.mean).then_with(|| a.id.cmp(&b.id)));
        scored.truncate(self.lowest_kept);
        JudgeSummary {
            alias: self.spec.alias.clone(),
            model: self.fingerprint.clone(),
            rubric_sha256: self.rubric_sha256.clone(),
            narrative_sha256: self.narrative_sha256.clone(),
            dataset_sha256: self.dataset_sha256.clone(),
            samples: judgements.len() as u64,
            scored: scored_count,
            means,
            overall_mean,
            distribution,
            lowest: scored,
            failures,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The parameters of every judge request: deterministic, short, schema-constrained.
fn judge_params() -> Params {
    Params {
        temperature: Some(0.0),
        max_tokens: Some(MAX_ANSWER_TOKENS),
        json_schema: Some(answer_schema()),
        ..Params::default()
    }
}

/// The JSON schema of an answer (strict-mode compatible: every field required, nothing else).
pub fn answer_schema() -> Value {
    let score = json!({ "type": "integer", "enum": [1, 2, 3, 4, 5] });
    let mut properties = serde_json::Map::new();
    for criterion in Criterion::ALL {
        properties.insert(criterion.key().to_owned(), score.clone());
    }
    properties.insert("reason".to_owned(), json!({ "type": "string" }));
    let mut required: Vec<&str> = Criterion::ALL.iter().map(|c| c.key()).collect();
    required.push("reason");
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The messages of one judge request: the rubric and narrative, then the sample's conversation.
fn judge_messages(narrative: &str, sample: &[Message]) -> Vec<Message> {
    let mut conversation = String::from("<sample>\n");
    for message in sample {
        let _ = write!(
            conversation,
            "[{}]\n{}\n\n",
            message.role,
            message.content.trim()
        );
    }
    conversation.push_str("</sample>");
    vec![
        Message::system(format!(
            "{RUBRIC}\n\n<narrative>\n{}\n</narrative>",
            narrative.trim()
        )),
        Message::user(conversation),
    ]
}

/// Parse a judge answer: a JSON object (possibly inside a code fence or surrounded by prose)
/// with an integer score in 1..=5 for every criterion and an optional `reason`.
pub fn parse_answer(text: &str) -> Result<(Scores, String), AnswerError> {
    let not_json = |message: String| AnswerError::NotJson {
        message,
        excerpt: text.chars().take(120).collect(),
    };
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        return Err(not_json("no JSON object in it".to_owned()));
    };
    if end < start {
        return Err(not_json("no JSON object in it".to_owned()));
    }
    let value: Value =
        serde_json::from_str(&text[start..=end]).map_err(|e| not_json(e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(not_json("not an object".to_owned()));
    };
    let mut scores = [0u8; 4];
    for (slot, criterion) in scores.iter_mut().zip(Criterion::ALL) {
        let value = object.get(criterion.key()).filter(|v| !v.is_null()).ok_or(
            AnswerError::MissingScore {
                criterion: criterion.key(),
            },
        )?;
        let out_of_range = || AnswerError::OutOfRange {
            criterion: criterion.key(),
            value: value.to_string(),
        };
        let number = value.as_f64().ok_or_else(out_of_range)?;
        if number.fract() != 0.0 || !(1.0..=5.0).contains(&number) {
            return Err(out_of_range());
        }
        *slot = number as u8;
    }
    let reason = object
        .get("reason")
        .and_then(Value::as_str)
        .map(|r| r.trim().chars().take(REASON_CHARS).collect())
        .unwrap_or_default();
    Ok((
        Scores {
            voice: scores[0],
            persona: scores[1],
            relevance: scores[2],
            coherence: scores[3],
        },
        reason,
    ))
}

/// Store `summary` as the `"judge"` field of the manifest at `manifest_path` (temp file +
/// rename). The other fields are kept as they are, so the dataset's status does not change.
pub fn record_in_manifest(manifest_path: &Path, summary: &JudgeSummary) -> Result<(), JudgeError> {
    let mut manifest = Manifest::read(manifest_path)?.ok_or_else(|| JudgeError::NoManifest {
        path: manifest_path.to_owned(),
    })?;
    manifest.judge = Some(serde_json::to_value(summary).expect("judge summary serializes"));
    manifest.write(manifest_path)?;
    Ok(())
}

/// The judge summary stored in a manifest, if any (a missing manifest gives `None`).
pub fn from_manifest(manifest_path: &Path) -> Result<Option<JudgeSummary>, JudgeError> {
    let Some(manifest) = Manifest::read(manifest_path)? else {
        return Ok(None);
    };
    match manifest.judge {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            serde_json::from_value(value)
                .map(Some)
                .map_err(|source| JudgeError::ManifestField {
                    path: manifest_path.to_owned(),
                    source,
                })
        }
    }
}

/// One HTML section (a card, in the quality report's style) showing a judge summary.
pub fn render_html_section(summary: &JudgeSummary) -> String {
    let mut html = String::with_capacity(4096);
    let _ = write!(
        html,
        "<section class=\"card\" id=\"judge\"><h2>Judge</h2>\n<p class=\"sub\">{scored} of {samples} samples scored by \
         '{alias}' ({model}) against the narrative, 1 (unacceptable) to 5 (exemplary){overall}.</p>\n\
         <div class=\"table-scroll\"><table class=\"checks\"><thead><tr><th>Criterion</th><th class=\"num\">Mean</th>\
         <th class=\"num\">1</th><th class=\"num\">2</th><th class=\"num\">3</th><th class=\"num\">4</th><th class=\"num\">5</th></tr></thead><tbody>\n",
        scored = summary.scored,
        samples = summary.samples,
        alias = escape_html(&summary.alias),
        model = escape_html(&format!(
            "{}:{}",
            summary.model.provider, summary.model.model
        )),
        overall = summary
            .overall_mean
            .map(|m| format!("; overall mean {m:.2}"))
            .unwrap_or_default(),
    );
    for criterion in Criterion::ALL {
        let mean = summary
            .means
            .map(|m| format!("{:.2}", m.get(criterion)))
            .unwrap_or_else(|| "—".to_owned());
        let _ = write!(
            html,
            "<tr><td class=\"name\">{criterion}</td><td class=\"num\">{mean}</td>"
        );
        let counts = summary
            .distribution
            .get(criterion.key())
            .copied()
            .unwrap_or_default();
        for count in counts {
            let _ = write!(html, "<td class=\"num\">{count}</td>");
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table></div>\n");
    if !summary.lowest.is_empty() {
        html.push_str(
            "<h3>Lowest scores</h3>\n<div class=\"table-scroll\"><table class=\"checks\"><thead><tr><th>Sample</th>\
             <th class=\"num\">Mean</th><th class=\"num\">Voice</th><th class=\"num\">Persona</th><th class=\"num\">Relevance</th>\
             <th class=\"num\">Coherence</th><th>Reason</th></tr></thead><tbody>\n",
        );
        for sample in &summary.lowest {
            let _ = writeln!(
                html,
                "<tr><td class=\"examples\"><a class=\"idlink\" href=\"#{anchor}\">{id}</a></td><td class=\"num\">{mean:.2}</td>\
                 <td class=\"num\">{v}</td><td class=\"num\">{p}</td><td class=\"num\">{r}</td><td class=\"num\">{c}</td><td>{reason}</td></tr>",
                anchor = sample_anchor(&sample.id),
                id = escape_html(&sample.id),
                mean = sample.mean,
                v = sample.scores.voice,
                p = sample.scores.persona,
                r = sample.scores.relevance,
                c = sample.scores.coherence,
                reason = escape_html(&sample.reason),
            );
        }
        html.push_str("</tbody></table></div>\n");
    }
    if !summary.failures.is_empty() {
        let _ = writeln!(
            html,
            "<h3>Not judged ({})</h3>\n<ul>",
            summary.failures.len()
        );
        for failure in &summary.failures {
            let _ = writeln!(
                html,
                "<li><a class=\"idlink\" href=\"#{}\">{}</a>: {}</li>",
                sample_anchor(&failure.id),
                escape_html(&failure.id),
                escape_html(&failure.error)
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</section>\n");
    html
}

/// Insert the judge section into a quality report page, at the end of its main content.
pub fn add_to_report(page: String, summary: &JudgeSummary) -> String {
    let section = render_html_section(summary);
    match page.rfind("</main>") {
        Some(at) => {
            let mut page = page;
            page.insert_str(at, &section);
            page
        }
        None => page + &section,
    }
}

/// The anchor of a sample in the quality report (`s-` + the first 6 bytes of sha256(id), hex).
fn sample_anchor(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("s-{}", hex::encode(&digest[..6]))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_fences_and_prose_around_them() {
        let (scores, reason) = parse_answer(
            "Here you go:\n```json\n{\"voice\": 4, \"persona\": 5, \"relevance\": 3, \"coherence\": 2.0, \"reason\": \" loops \"}\n```",
        )
        .unwrap();
        assert_eq!(
            scores,
            Scores {
                voice: 4,
                persona: 5,
                relevance: 3,
                coherence: 2
            }
        );
        assert_eq!(reason, "loops");
        assert_eq!(scores.mean(), 3.5);
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        assert!(matches!(
            parse_answer("I would rate it highly."),
            Err(AnswerError::NotJson { .. })
        ));
        assert!(matches!(
            parse_answer("{\"voice\": 4, \"persona\": 5"),
            Err(AnswerError::NotJson { .. })
        ));
        assert_eq!(
            parse_answer("{\"voice\": 4, \"persona\": 5, \"relevance\": 3}"),
            Err(AnswerError::MissingScore {
                criterion: "coherence"
            })
        );
        let error =
            parse_answer("{\"voice\": 7, \"persona\": 5, \"relevance\": 3, \"coherence\": 3}")
                .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the judge's score for 'voice' is 7, outside 1..=5"
        );
        for bad in ["0", "3.5", "\"4\"", "-1"] {
            let text =
                format!("{{\"voice\": 4, \"persona\": {bad}, \"relevance\": 3, \"coherence\": 3}}");
            assert!(
                matches!(
                    parse_answer(&text),
                    Err(AnswerError::OutOfRange {
                        criterion: "persona",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_schema_requires_every_criterion_and_nothing_else() {
        let schema = answer_schema();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            required,
            ["voice", "persona", "relevance", "coherence", "reason"]
        );
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(
            schema["properties"]["voice"]["enum"],
            json!([1, 2, 3, 4, 5])
        );
    }

    #[test]
    fn the_report_section_escapes_and_goes_inside_main() {
        let mut distribution = BTreeMap::new();
        distribution.insert("voice".to_owned(), [0, 1, 0, 0, 1]);
        let summary = JudgeSummary {
            alias: "judge".into(),
            model: ModelFingerprint {
                alias: "judge".into(),
                provider: "openai".into(),
                model: "gpt".into(),
                endpoint: "http://x".into(),
                params: Params::default(),
            },
            rubric_sha256: "r".into(),
            narrative_sha256: "n".into(),
            dataset_sha256: "d".into(),
            samples: 3,
            scored: 2,
            means: Some(Means {
                voice: 3.5,
                persona: 4.0,
                relevance: 4.0,
                coherence: 4.0,
            }),
            overall_mean: Some(3.875),
            distribution,
            lowest: vec![SampleScore {
                id: "a<b>".into(),
                scores: Scores {
                    voice: 2,
                    persona: 4,
                    relevance: 4,
                    coherence: 4,
                },
                mean: 3.5,
                reason: "says <script>".into(),
            }],
            failures: vec![SampleFailure {
                id: "c".into(),
                error: "not JSON".into(),
            }],
        };
        let page = add_to_report("<main>x</main><footer>".into(), &summary);
        assert!(page.starts_with("<main>x<section class=\"card\" id=\"judge\">"));
        assert!(page.ends_with("</section>\n</main><footer>"));
        assert!(page.contains("a&lt;b&gt;") && page.contains("says &lt;script&gt;"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("<td class=\"num\">3.50</td>"));
        assert!(page.contains("Not judged (1)"));
        assert_eq!(
            summary.gate(3.0),
            vec!["1 of 3 samples could not be judged (e.g. 'c'), so they are not vouched for"]
        );
        assert_eq!(summary.gate(3.6).len(), 2);
    }
}
