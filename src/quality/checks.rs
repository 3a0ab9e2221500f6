//! The checks of the quality gate: [`check`] and [`analyze`] produce a [`CheckReport`].
//!
//! Every sample is judged by the [`Detectors`] (a conversation turn by turn, a pair on `chosen`
//! and by the pair rules); the dataset checks are counts or shares of those per-sample findings
//! (one check per [`Reason`]) plus the set-level checks: volume, duplicate ids and responses,
//! voice-marker share, source mix and prompt diversity. [`training_set_check`] judges all
//! datasets together.
//!
//! Shares are over samples, whatever their kind, except the voice-marker share, which is over
//! replies: every assistant turn of a conversation, `chosen` of a pair (a conversation of
//! several exchanges counts each of its replies; a single exchange, as before, one). Duplicate
//! responses compare the assistant text (all assistant turns of a conversation, `chosen` of a
//! pair); prompt diversity the first user message. The `shape` check is listed for datasets of
//! several exchanges or of pairs, and for any dataset with a sample that breaks its shape;
//! `same_answers` and `rejected_voice` for datasets of pairs. Their limit is 0 and not part of
//! the quality config: a pipeline filters such samples, and a trainer cannot use them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Result;
use super::config::{Loosening, QualityConfig, Voice, show_value};
use super::detect::{Detectors, Finding, Reason, SampleFacts, Verdict};
use super::read::{JsonlReader, read_any_samples, read_errors, read_samples};
use super::stats::{DatasetStats, PairStats, StatsBuilder, TurnStats};
use super::text::{FastMap, FastSet};
use super::text::{Sample, errors_path_for, fnv1a, normalize, source_of, words};
use crate::format::{SampleKind, SampleLine, first_user};

/// Most example ids a check names.
const MAX_EXAMPLES: usize = 5;

/// Fewest samples of all datasets together: the seed's checklist ("at least 500 samples") is
/// about the training set. `cargo xtask check` without names and `--file` apply it.
pub const TRAINING_SET_MIN_SAMPLES: u64 = 500;

/// The outcome of all checks on one dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Whether every check passed.
    pub passed: bool,
    /// Every check's outcome, in the order they run.
    pub checks: Vec<CheckResult>,
    /// Samples judged.
    #[serde(default)]
    pub samples: u64,
    /// Samples with at least one finding.
    #[serde(default)]
    pub failing_samples: u64,
    /// Samples per finding reason (`degeneration`, `echo`, ...), only reasons that occurred.
    #[serde(default)]
    pub reason_counts: BTreeMap<String, u64>,
    /// Thresholds looser than their defaults, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loosened: Vec<Loosening>,
    /// Exchanges per conversation, when some conversation has more than one (the dataset
    /// stats' [`DatasetStats::turns`], kept here so that manifests record them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<TurnStats>,
    /// Margins between `chosen` and `rejected` of the pairs ([`DatasetStats::pairs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PairStats>,
}

impl CheckReport {
    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// The check with this name.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Which side of the threshold passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Passes when `value >= threshold`.
    AtLeast,
    /// Passes when `value <= threshold`.
    AtMost,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::AtLeast => "≥",
            Comparison::AtMost => "≤",
        })
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Stable name: `volume`, `empty_responses`, `error_text`, `truncated`, `duplicate_ids`,
    /// `duplicate_responses`, `refusals`, `degeneration`, `contradiction`, `role_confusion`,
    /// `echo`, `relevance`, `surface_garbage`, (where they apply) `shape`, `same_answers`,
    /// `rejected_voice`, then `voice_markers`, `response_length`, `source_share`,
    /// `prompt_diversity` (and `training_set` from [`training_set_check`]).
    pub name: String,
    /// Whether the value is on the passing side of the threshold (or the check was skipped).
    pub passed: bool,
    /// Whether the check did not apply (it then passes); `message` says why.
    #[serde(default)]
    pub skipped: bool,
    /// The measured value (a count, or a share rounded to 4 decimals).
    pub value: f64,
    /// Which side of the threshold passes.
    pub comparison: Comparison,
    /// The limit from the quality config (a count or a share, like `value`).
    pub threshold: f64,
    /// One line for people.
    pub message: String,
    /// Up to 5 ids of samples that show the problem (in file order).
    pub example_ids: Vec<String>,
    /// The thresholds of this check that the pipeline loosened, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loosened: Vec<Loosening>,
}

impl CheckResult {
    /// What to do when this check fails.
    pub fn advice(&self) -> &'static str {
        advice(&self.name)
    }
}

/// One judged sample of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleVerdict {
    /// Line number in the file (1-based).
    pub line: u64,
    /// The sample's id.
    pub id: String,
    /// The detectors' findings on it (and the voice markers shown).
    pub verdict: Verdict,
}

/// What to do when the named check fails.
pub fn advice(name: &str) -> &'static str {
    match name {
        "volume" => {
            "generate more samples (more input records or variations), or lower min_samples in the pipeline's quality config (with a reason)"
        }
        "training_set" => {
            "all datasets together are too small to train on: add pipelines or generate more samples per pipeline"
        }
        "empty_responses" => {
            "look at the listed samples' steps; fix the prompt or parsing that yields empty text, or filter empty responses in the pipeline"
        }
        "error_text" => {
            "provider errors leaked into responses: make the pipeline fail those records (they belong in the errors file), then rebuild"
        }
        "truncated" => {
            "raise max_tokens for the final step, ask for shorter answers, or trim replies to their last full sentence, then rebuild"
        }
        "duplicate_ids" => {
            "derive sample ids from something unique per record (e.g. input id + variation index)"
        }
        "duplicate_responses" => {
            "raise temperature, vary the prompts, or drop repeated responses in the pipeline"
        }
        "refusals" => {
            "the model answered as a generic assistant: strengthen the identity system prompt, rephrase the inputs, or filter such responses"
        }
        "degeneration" => {
            "the model loops: lower temperature or max_tokens, add a repetition penalty, use a stronger model, or keep the best of n candidates (Detectors::judge)"
        }
        "contradiction" => {
            "replies claim things the identity never would: put the facts in the system prompt, use a stronger model, or filter with Detectors::judge"
        }
        "role_confusion" => {
            "replies leak chat turns or speak about the identity in the third person: check the chat template and stop sequences, and filter such replies"
        }
        "echo" => {
            "replies repeat the prompt: check that the prompt ends the user turn (chat template), and filter copied replies"
        }
        "relevance" => {
            "replies do not answer their prompts: check the prompt/response pairing, the system prompt, and the model's strength"
        }
        "surface_garbage" => {
            "replies shout, act out stage directions, break quotes or switch language: tell the model to answer in plain prose, and filter such replies"
        }
        "shape" => {
            "samples trainers cannot read as their kind (roles out of order, no final answer, a pair without a question, kinds mixed in one file): fix the pipeline's sample construction, or drop those lines"
        }
        "same_answers" => {
            "pairs whose rejected answer is the chosen one teach nothing: generate the rejected answer differently (another prompt or model), and filter such pairs (Detectors::check_pair)"
        }
        "rejected_voice" => {
            "pairs whose rejected answer sounds more like the identity than the chosen one teach the opposite of the voice: swap or drop them (Detectors::check_pair)"
        }
        "voice_markers" => {
            "responses do not sound like the identity: strengthen the voice in the system prompt, or review identity/voice.toml markers"
        }
        "response_length" => {
            "adjust the length instruction or max_tokens, or the response length bounds in the quality config"
        }
        "source_share" => "add inputs from other sources or sample the dominant source down",
        "prompt_diversity" => {
            "prompts are repetitive: vary templates, add sources, or deduplicate inputs"
        }
        _ => "look at the listed samples with `cargo xtask sample`",
    }
}

/// Run all checks of `config` on the dataset at `path` (with markers and generic phrases of `voice`).
pub fn check(path: &Path, config: &QualityConfig, voice: &Voice) -> Result<CheckReport> {
    analyze(path, config, voice).map(|(_, report)| report)
}

/// Compute the statistics and run the checks in one pass over the dataset (and one over its errors file).
///
/// Fails on an unreadable file or a malformed line (the error names file and line).
pub fn analyze(
    path: &Path,
    config: &QualityConfig,
    voice: &Voice,
) -> Result<(DatasetStats, CheckReport)> {
    analyze_each(path, config, voice, |_| {})
}

/// [`analyze`], calling `on_sample` with each sample's verdict (in file order) as it is judged.
///
/// Lines of either kind are read ([`SampleLine`]); the dataset's kind is its first sample's,
/// and a sample of the other kind fails with a `shape` finding.
pub fn analyze_each(
    path: &Path,
    config: &QualityConfig,
    voice: &Voice,
    on_sample: impl FnMut(&SampleVerdict),
) -> Result<(DatasetStats, CheckReport)> {
    analyze_lines(read_samples(path)?, path, config, voice, on_sample)
}

/// [`analyze_each`] for any JSONL of conversations (`messages`) or preference pairs (`prompt`,
/// `chosen`, `rejected`): a missing `id` becomes `line-<n>`; a line that is neither is an error
/// naming the file and line.
pub fn analyze_chat_file(
    path: &Path,
    config: &QualityConfig,
    voice: &Voice,
    on_sample: impl FnMut(&SampleVerdict),
) -> Result<(DatasetStats, CheckReport)> {
    analyze_lines(read_any_samples(path)?, path, config, voice, on_sample)
}

fn analyze_lines(
    lines: JsonlReader<SampleLine>,
    path: &Path,
    config: &QualityConfig,
    voice: &Voice,
    mut on_sample: impl FnMut(&SampleVerdict),
) -> Result<(DatasetStats, CheckReport)> {
    let detectors = Detectors::new(voice, config)?;
    let mut stats = StatsBuilder::new();
    let mut checks = Checker::new(config, &detectors);
    let mut dataset_kind = None;
    for item in lines {
        let (line, record) = item?;
        let mut judged = detectors.judge_line(&record);
        if let Some(finding) = kind_mismatch(*dataset_kind.get_or_insert(record.kind()), &record) {
            judged.verdict.findings.insert(0, finding);
        }
        stats.add_sample(&record, &judged.facts);
        checks.add(&record, &judged.verdict, &judged.facts);
        on_sample(&SampleVerdict {
            line,
            id: record.id().to_owned(),
            verdict: judged.verdict,
        });
    }
    let errors = errors_path_for(path);
    if errors.is_file() {
        for item in read_errors(&errors)? {
            let (_, error) = item?;
            stats.add_error(&error);
        }
    }
    let stats = stats.finish();
    let report = checks.finish(&stats);
    Ok((stats, report))
}

/// A `shape` finding for a sample whose kind is not the dataset's (its first sample's).
fn kind_mismatch(dataset: SampleKind, sample: &SampleLine) -> Option<Finding> {
    let kind = sample.kind();
    (kind != dataset).then(|| {
        let what = match kind {
            SampleKind::Chat => "a conversation",
            SampleKind::Preference => "a preference pair",
        };
        Finding {
            reason: Reason::Shape,
            detail: format!(
                "{what} in a {dataset} dataset (the first sample is {dataset}; one kind per file)"
            ),
            at: None,
        }
    })
}

/// The training-set check: all datasets together (`samples` over `datasets` files) must have at
/// least [`TRAINING_SET_MIN_SAMPLES`] samples.
pub fn training_set_check(samples: u64, datasets: usize) -> CheckResult {
    at_least(
        "training_set",
        samples as f64,
        TRAINING_SET_MIN_SAMPLES as f64,
        format!(
            "{samples} samples in {datasets} dataset{}",
            if datasets == 1 { "" } else { "s" }
        ),
        Vec::new(),
    )
}

/// Ids of samples that show one problem: a count and the first few ids.
#[derive(Debug, Default)]
struct Hits {
    count: u64,
    ids: Vec<String>,
}

impl Hits {
    fn hit(&mut self, id: &str) {
        self.count += 1;
        if self.ids.len() < MAX_EXAMPLES {
            self.ids.push(id.to_owned());
        }
    }
}

/// Per-record state of the checks.
struct Checker<'a> {
    config: &'a QualityConfig,
    has_markers: bool,
    samples: u64,
    failing: u64,
    by_reason: FastMap<Reason, Hits>,
    duplicate_ids: Hits,
    duplicate_responses: Hits,
    replies: u64,
    with_marker: u64,
    without_marker: Hits,
    pairs: u64,
    several_exchanges: bool,
    seen_ids: FastSet<String>,
    seen_responses: FastSet<[u8; 16]>,
    seen_prompts: FastSet<u64>,
    repeated_prompts: Hits,
    bigrams: FastSet<u64>,
    bigram_total: u64,
    source_examples: FastMap<String, Vec<String>>,
}

impl<'a> Checker<'a> {
    fn new(config: &'a QualityConfig, detectors: &Detectors) -> Self {
        Self {
            config,
            has_markers: detectors.has_markers(),
            samples: 0,
            failing: 0,
            by_reason: FastMap::default(),
            duplicate_ids: Hits::default(),
            duplicate_responses: Hits::default(),
            replies: 0,
            with_marker: 0,
            without_marker: Hits::default(),
            pairs: 0,
            several_exchanges: false,
            seen_ids: FastSet::default(),
            seen_responses: FastSet::default(),
            seen_prompts: FastSet::default(),
            repeated_prompts: Hits::default(),
            bigrams: FastSet::default(),
            bigram_total: 0,
            source_examples: FastMap::default(),
        }
    }

    fn add(&mut self, record: &SampleLine, verdict: &Verdict, facts: &SampleFacts) {
        let id = record.id();
        self.samples += 1;
        if facts.pair.is_some() {
            self.pairs += 1;
        }
        self.several_exchanges |= facts.exchanges.is_some_and(|n| n > 1);
        if !self.seen_ids.insert(id.to_owned()) {
            self.duplicate_ids.hit(id);
        }
        if !verdict.passed() {
            self.failing += 1;
        }
        let mut counted = Vec::new();
        for finding in &verdict.findings {
            if !counted.contains(&finding.reason) {
                counted.push(finding.reason);
                self.by_reason.entry(finding.reason).or_default().hit(id);
            }
        }

        let normalized = normalize(&facts.assistant_text);
        if !normalized.is_empty() {
            let digest = Sha256::digest(normalized.as_bytes());
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            if !self.seen_responses.insert(key) {
                self.duplicate_responses.hit(id);
            }
        }
        if self.has_markers {
            self.replies += facts.replies;
            self.with_marker += facts.replies_with_marker;
            if facts.replies_with_marker < facts.replies {
                self.without_marker.hit(id);
            }
        }

        let (messages, provenance) = match record {
            SampleLine::Chat(line) => (&line.messages, &line.provenance),
            SampleLine::Preference(pair) => (&pair.prompt, &pair.provenance),
        };
        let prompt_words: Vec<String> = words(first_user(messages)).collect();
        if !self.seen_prompts.insert(fnv1a(
            &prompt_words.iter().map(String::as_str).collect::<Vec<_>>(),
        )) {
            self.repeated_prompts.hit(id);
        }
        for pair in prompt_words.windows(2) {
            self.bigram_total += 1;
            self.bigrams.insert(fnv1a(&[&pair[0], &pair[1]]));
        }

        let examples = self
            .source_examples
            .entry(source_of(provenance))
            .or_default();
        if examples.len() < MAX_EXAMPLES {
            examples.push(id.to_owned());
        }
    }

    fn hits(&self, reason: Reason) -> &Hits {
        static NONE: Hits = Hits {
            count: 0,
            ids: Vec::new(),
        };
        self.by_reason.get(&reason).unwrap_or(&NONE)
    }

    fn finish(self, stats: &DatasetStats) -> CheckReport {
        let c = self.config;
        let n = self.samples;
        let mut checks = vec![
            at_least(
                "volume",
                n as f64,
                c.min_samples as f64,
                format!("{n} samples"),
                Vec::new(),
            ),
            count_check(
                "empty_responses",
                self.hits(Reason::Empty),
                c.max_empty,
                "empty or whitespace-only responses",
            ),
            count_check(
                "error_text",
                self.hits(Reason::ErrorText),
                c.max_error_text,
                "responses containing provider error text",
            ),
            count_check(
                "truncated",
                self.hits(Reason::Truncated),
                c.max_truncated,
                "responses cut off (finish_reason \"length\" and no sentence end)",
            ),
            count_check(
                "duplicate_ids",
                &self.duplicate_ids,
                c.max_duplicate_ids,
                "samples repeating an earlier id",
            ),
            share_check(
                "duplicate_responses",
                &self.duplicate_responses,
                n,
                c.max_duplicate_response_share,
                "responses repeat an earlier response",
            ),
            share_check(
                "refusals",
                self.hits(Reason::Refusal),
                n,
                c.max_refusal_share,
                "responses read like a generic assistant",
            ),
            count_check(
                "degeneration",
                self.hits(Reason::Degeneration),
                c.max_degeneration,
                "responses degenerate (repeated sentences or phrases)",
            ),
            count_check(
                "contradiction",
                self.hits(Reason::Contradiction),
                c.max_contradiction,
                "responses contradict the identity",
            ),
            count_check(
                "role_confusion",
                self.hits(Reason::RoleConfusion),
                c.max_role_confusion,
                "responses confuse roles (chat turns, answering as the user, third-person self-narration)",
            ),
            count_check(
                "echo",
                self.hits(Reason::Echo),
                c.max_echo,
                "responses repeat or copy their prompt",
            ),
            share_check(
                "relevance",
                self.hits(Reason::Relevance),
                n,
                c.max_irrelevant_share,
                "responses share no content word with their prompt",
            ),
            count_check(
                "surface_garbage",
                self.hits(Reason::SurfaceGarbage),
                c.max_surface_garbage,
                "responses with surface garbage (shouting, stage directions, broken quotes, mojibake, wrong language)",
            ),
        ];
        if self.pairs > 0 || self.several_exchanges || self.hits(Reason::Shape).count > 0 {
            checks.push(count_check(
                "shape",
                self.hits(Reason::Shape),
                0,
                "samples that break their kind's shape (roles, final answer, one kind per file)",
            ));
        }
        if self.pairs > 0 {
            checks.push(count_check(
                "same_answers",
                self.hits(Reason::SameAnswers),
                0,
                "pairs whose rejected answer is the chosen one",
            ));
            checks.push(count_check(
                "rejected_voice",
                self.hits(Reason::RejectedVoice),
                0,
                "pairs whose rejected answer shows more voice markers than the chosen one",
            ));
        }

        checks.push(if !self.has_markers {
            skipped(
                "voice_markers",
                Comparison::AtLeast,
                c.min_marker_share,
                "no voice markers declared (pipeline quality config or identity/voice.toml)",
            )
        } else {
            let share = ratio(self.with_marker, self.replies);
            at_least(
                "voice_markers",
                share,
                c.min_marker_share,
                format!(
                    "{} of {} responses ({}) show an identity marker",
                    self.with_marker,
                    self.replies,
                    percent(share)
                ),
                self.without_marker.ids.clone(),
            )
        });

        checks.push(share_check(
            "response_length",
            self.hits(Reason::Length),
            n,
            c.max_length_outlier_share,
            &format!(
                "responses outside {}..={} chars",
                c.min_response_chars,
                show_value(c.max_response_chars as f64)
            ),
        ));

        checks.push(self.source_check(stats));

        checks.push(if self.bigram_total == 0 {
            skipped(
                "prompt_diversity",
                Comparison::AtLeast,
                c.min_prompt_distinct_2,
                "no prompt has two words",
            )
        } else {
            let distinct = ratio(self.bigrams.len() as u64, self.bigram_total);
            let mut ids = self.repeated_prompts.ids.clone();
            let repeated = self.repeated_prompts.count;
            let mut message = format!(
                "distinct-2 of prompts is {distinct:.4} ({} distinct of {} bigrams)",
                self.bigrams.len(),
                self.bigram_total
            );
            if repeated > 0 {
                message.push_str(&format!("; {repeated} prompts repeat an earlier prompt"));
            }
            if distinct >= c.min_prompt_distinct_2 {
                ids.clear();
            }
            at_least(
                "prompt_diversity",
                distinct,
                c.min_prompt_distinct_2,
                message,
                ids,
            )
        });

        for check in &mut checks {
            check.loosened = c.loosenings_of(&check.name);
        }
        let passed = checks.iter().all(|check| check.passed);
        let reason_counts = Reason::ALL
            .iter()
            .filter_map(|r| {
                let count = self.by_reason.get(r)?.count;
                Some((r.name().to_owned(), count))
            })
            .collect();
        CheckReport {
            passed,
            checks,
            samples: n,
            failing_samples: self.failing,
            reason_counts,
            loosened: c.loosenings(),
            turns: stats.turns.clone(),
            pairs: stats.pairs.clone(),
        }
    }

    fn source_check(&self, stats: &DatasetStats) -> CheckResult {
        let c = self.config;
        let declared = stats
            .sources
            .iter()
            .filter(|(source, _)| source.as_str() != "unknown")
            .count();
        if declared == 0 {
            return skipped(
                "source_share",
                Comparison::AtMost,
                c.max_source_share,
                "no sample declares input_data.source",
            );
        }
        let top = top_entry(&stats.sources);
        let (source, count) = top.map(|(s, n)| (s.clone(), n)).unwrap_or_default();
        let share = ratio(count, stats.samples);
        let ids = self
            .source_examples
            .get(&source)
            .cloned()
            .unwrap_or_default();
        at_most(
            "source_share",
            share,
            c.max_source_share,
            format!(
                "largest source \"{source}\" has {count} of {} samples ({}); {} sources",
                stats.samples,
                percent(share),
                stats.sources.len()
            ),
            ids,
        )
    }
}

/// The entry with the highest count (the first such in key order).
fn top_entry(map: &BTreeMap<String, u64>) -> Option<(&String, u64)> {
    map.iter()
        .fold(None, |best: Option<(&String, u64)>, (k, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((k, v)),
        })
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round4(part as f64 / whole as f64)
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn at_least(
    name: &str,
    value: f64,
    threshold: f64,
    message: String,
    example_ids: Vec<String>,
) -> CheckResult {
    let passed = value >= threshold;
    let message = format!(
        "{message} (need at least {})",
        show_threshold(threshold, name)
    );
    CheckResult {
        name: name.to_owned(),
        passed,
        skipped: false,
        value,
        comparison: Comparison::AtLeast,
        threshold,
        message,
        example_ids: if passed { Vec::new() } else { example_ids },
        loosened: Vec::new(),
    }
}

fn at_most(
    name: &str,
    value: f64,
    threshold: f64,
    message: String,
    example_ids: Vec<String>,
) -> CheckResult {
    let passed = value <= threshold;
    let message = format!(
        "{message} (allowed at most {})",
        show_threshold(threshold, name)
    );
    CheckResult {
        name: name.to_owned(),
        passed,
        skipped: false,
        value,
        comparison: Comparison::AtMost,
        threshold,
        message,
        example_ids: if passed { Vec::new() } else { example_ids },
        loosened: Vec::new(),
    }
}

fn show_threshold(threshold: f64, name: &str) -> String {
    let is_count = matches!(
        name,
        "volume"
            | "training_set"
            | "empty_responses"
            | "error_text"
            | "truncated"
            | "duplicate_ids"
            | "degeneration"
            | "contradiction"
            | "role_confusion"
            | "echo"
            | "surface_garbage"
            | "shape"
            | "same_answers"
            | "rejected_voice"
    );
    if is_count {
        show_value(threshold)
    } else if name == "prompt_diversity" {
        format!("{threshold}")
    } else {
        percent(threshold)
    }
}

fn count_check(name: &str, hits: &Hits, max: u64, what: &str) -> CheckResult {
    at_most(
        name,
        hits.count as f64,
        max as f64,
        format!("{} {what}", hits.count),
        hits.ids.clone(),
    )
}

fn share_check(name: &str, hits: &Hits, total: u64, max: f64, what: &str) -> CheckResult {
    let share = ratio(hits.count, total);
    at_most(
        name,
        share,
        max,
        format!("{} of {total} {what} ({})", hits.count, percent(share)),
        hits.ids.clone(),
    )
}

fn skipped(name: &str, comparison: Comparison, threshold: f64, why: &str) -> CheckResult {
    CheckResult {
        name: name.to_owned(),
        passed: true,
        skipped: true,
        value: 0.0,
        comparison,
        threshold,
        message: format!("skipped: {why}"),
        example_ids: Vec::new(),
        loosened: Vec::new(),
    }
}

/// Each sample of the dataset at `path` (either kind) prepared for display, with its verdict:
/// the input of [`render_report`](super::render_report). Lines are read lazily; a malformed one
/// is an error naming the line. A sample of another kind than the first is flagged as in
/// [`analyze_each`].
pub fn judged_samples<'a>(
    path: &Path,
    detectors: &'a Detectors,
) -> Result<impl Iterator<Item = Result<(Sample, Verdict)>> + 'a> {
    let mut dataset_kind = None;
    Ok(read_samples(path)?.map(move |item| {
        item.map(|(line, record)| {
            let mut verdict = detectors.judge_sample(&record);
            if let Some(finding) =
                kind_mismatch(*dataset_kind.get_or_insert(record.kind()), &record)
            {
                verdict.findings.insert(0, finding);
            }
            (Sample::from_line(line, record), verdict)
        })
    }))
}
