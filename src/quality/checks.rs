//! The checks of the quality gate: [`check`] and [`analyze`] produce a [`CheckReport`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Result;
use super::config::{QualityConfig, Voice};
use super::read::{Record, read_errors, read_records};
use super::stats::{DatasetStats, StatsBuilder};
use super::text::{
    ERROR_TEXT_PATTERNS, Phrases, REFUSAL_PHRASES, errors_path_for, fnv1a, normalize, words,
};

/// Most example ids a check names.
const MAX_EXAMPLES: usize = 5;

/// The outcome of all checks on one dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Whether every check passed.
    pub passed: bool,
    pub checks: Vec<CheckResult>,
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
    /// `duplicate_responses`, `refusals`, `voice_markers`, `response_length`, `source_share`,
    /// `prompt_diversity`.
    pub name: String,
    pub passed: bool,
    /// Whether the check did not apply (it then passes); `message` says why.
    #[serde(default)]
    pub skipped: bool,
    /// The measured value (a count, or a share rounded to 4 decimals).
    pub value: f64,
    pub comparison: Comparison,
    pub threshold: f64,
    /// One line for people.
    pub message: String,
    /// Up to 5 ids of samples that show the problem (in file order).
    pub example_ids: Vec<String>,
}

impl CheckResult {
    /// What to do when this check fails.
    pub fn advice(&self) -> &'static str {
        advice(&self.name)
    }
}

/// What to do when the named check fails.
pub fn advice(name: &str) -> &'static str {
    match name {
        "volume" => {
            "generate more samples (more input records or variations), or lower min_samples in the pipeline's quality config"
        }
        "empty_responses" => {
            "look at the listed samples' steps; fix the prompt or parsing that yields empty text, or filter empty responses in the pipeline"
        }
        "error_text" => {
            "provider errors leaked into responses: make the pipeline fail those records (they belong in the errors file), then rebuild"
        }
        "truncated" => {
            "raise max_tokens for the final step or ask for shorter answers, then rebuild"
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
    let mut stats = StatsBuilder::new();
    let mut checks = Checker::new(config, voice);
    for item in read_records(path)? {
        let (_, record) = item?;
        stats.add(&record);
        checks.add(&record);
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
    refusal_phrases: Phrases,
    markers: Phrases,
    error_patterns: Phrases,
    samples: u64,
    empty: Hits,
    error_text: Hits,
    truncated: Hits,
    duplicate_ids: Hits,
    duplicate_responses: Hits,
    refusals: Hits,
    with_marker: u64,
    without_marker: Hits,
    length_outliers: Hits,
    seen_ids: HashSet<String>,
    seen_responses: HashSet<[u8; 16]>,
    seen_prompts: HashSet<u64>,
    repeated_prompts: Hits,
    bigrams: HashSet<u64>,
    bigram_total: u64,
    source_examples: HashMap<String, Vec<String>>,
}

impl<'a> Checker<'a> {
    fn new(config: &'a QualityConfig, voice: &Voice) -> Self {
        let refusals = REFUSAL_PHRASES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(voice.generic_phrases.iter().cloned())
            .chain(config.generic_phrases.iter().cloned());
        let markers = voice.markers.iter().chain(config.voice_markers.iter());
        Self {
            config,
            refusal_phrases: Phrases::words(refusals),
            markers: Phrases::words(markers),
            error_patterns: Phrases::substrings(ERROR_TEXT_PATTERNS),
            samples: 0,
            empty: Hits::default(),
            error_text: Hits::default(),
            truncated: Hits::default(),
            duplicate_ids: Hits::default(),
            duplicate_responses: Hits::default(),
            refusals: Hits::default(),
            with_marker: 0,
            without_marker: Hits::default(),
            length_outliers: Hits::default(),
            seen_ids: HashSet::new(),
            seen_responses: HashSet::new(),
            seen_prompts: HashSet::new(),
            repeated_prompts: Hits::default(),
            bigrams: HashSet::new(),
            bigram_total: 0,
            source_examples: HashMap::new(),
        }
    }

    fn add(&mut self, record: &Record) {
        let id = record.id.as_str();
        self.samples += 1;
        if !self.seen_ids.insert(record.id.clone()) {
            self.duplicate_ids.hit(id);
        }

        let response = record.response();
        let normalized = normalize(response);
        if normalized.is_empty() {
            self.empty.hit(id);
        } else {
            let digest = Sha256::digest(normalized.as_bytes());
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            if !self.seen_responses.insert(key) {
                self.duplicate_responses.hit(id);
            }
        }
        if self.error_patterns.find(&normalized).is_some() {
            self.error_text.hit(id);
        }
        if record
            .final_step()
            .is_some_and(|s| s.finish_reason.as_deref() == Some("length"))
        {
            self.truncated.hit(id);
        }
        if self.refusal_phrases.find(&normalized).is_some() {
            self.refusals.hit(id);
        }
        if !self.markers.is_empty() {
            if self.markers.find(&normalized).is_some() {
                self.with_marker += 1;
            } else {
                self.without_marker.hit(id);
            }
        }
        let length = response.chars().count() as u64;
        if length < self.config.min_response_chars || length > self.config.max_response_chars {
            self.length_outliers.hit(id);
        }

        let prompt_words: Vec<String> = words(record.prompt()).collect();
        if !self.seen_prompts.insert(fnv1a(
            &prompt_words.iter().map(String::as_str).collect::<Vec<_>>(),
        )) {
            self.repeated_prompts.hit(id);
        }
        for pair in prompt_words.windows(2) {
            self.bigram_total += 1;
            self.bigrams.insert(fnv1a(&[&pair[0], &pair[1]]));
        }

        let examples = self.source_examples.entry(record.source()).or_default();
        if examples.len() < MAX_EXAMPLES {
            examples.push(id.to_owned());
        }
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
                &self.empty,
                c.max_empty,
                "empty or whitespace-only responses",
            ),
            count_check(
                "error_text",
                &self.error_text,
                c.max_error_text,
                "responses containing provider error text",
            ),
            count_check(
                "truncated",
                &self.truncated,
                c.max_truncated,
                "responses cut off (finish_reason \"length\")",
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
                &self.refusals,
                n,
                c.max_refusal_share,
                "responses read like a generic assistant",
            ),
        ];

        checks.push(if self.markers.is_empty() {
            skipped(
                "voice_markers",
                Comparison::AtLeast,
                c.min_marker_share,
                "no voice markers declared (pipeline quality config or identity/voice.toml)",
            )
        } else {
            let share = ratio(self.with_marker, n);
            at_least(
                "voice_markers",
                share,
                c.min_marker_share,
                format!(
                    "{} of {n} responses ({}) show an identity marker",
                    self.with_marker,
                    percent(share)
                ),
                self.without_marker.ids.clone(),
            )
        });

        checks.push(share_check(
            "response_length",
            &self.length_outliers,
            n,
            c.max_length_outlier_share,
            &format!(
                "responses outside {}..={} chars",
                c.min_response_chars, c.max_response_chars
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

        let passed = checks.iter().all(|check| check.passed);
        CheckReport { passed, checks }
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
    }
}

fn show_threshold(threshold: f64, name: &str) -> String {
    let is_count = matches!(
        name,
        "volume" | "empty_responses" | "error_text" | "truncated" | "duplicate_ids"
    );
    if is_count {
        if threshold >= u64::MAX as f64 {
            "any".to_owned()
        } else {
            format!("{threshold}")
        }
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
    }
}
