//! [`DatasetStats`]: counts and distributions of a dataset, accumulated in one streaming pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::detect::SampleFacts;
use super::text::{input_text, model_name, source_of};
use crate::format::{ChatLine, ErrorDetail, Message, Provenance, SampleLine, first_user};

/// Counts and distributions of one dataset and its errors file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Lines in the dataset.
    pub samples: u64,
    /// Samples carrying `input_data` or `steps`.
    pub annotated: u64,
    /// Samples with a system message.
    pub with_system: u64,
    /// Samples with more than one user message (for pairs: in the prompt).
    pub multi_turn: u64,
    /// Exchanges (assistant turns) per conversation; present only when some conversation has
    /// more than one, so single-turn data says nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<TurnStats>,
    /// Margins between `chosen` and `rejected` of preference pairs; absent without pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PairStats>,
    /// Length of the prompt (first user message), in characters.
    pub prompt_chars: LengthStats,
    /// Length of the response (last assistant message; a pair's `chosen`), in characters.
    pub response_chars: LengthStats,
    /// Samples per `input_data.source` (`unknown` when absent).
    pub sources: BTreeMap<String, u64>,
    /// Samples per `input_data.category` (only samples that have one).
    pub categories: BTreeMap<String, u64>,
    /// Steps per finish reason (`none` when absent), over all steps.
    pub finish_reasons: BTreeMap<String, u64>,
    /// Steps per model alias.
    pub models: BTreeMap<String, u64>,
    /// Steps over all samples.
    pub steps: u64,
    /// Steps served from the cache.
    pub cached_steps: u64,
    /// Steps with `success: false`.
    pub failed_steps: u64,
    /// Token usage over all steps (annotated data only).
    pub tokens: Option<TokenTotals>,
    /// Lines in the errors file.
    pub errors: u64,
    /// Error lines per error type.
    pub error_types: BTreeMap<String, u64>,
}

/// Exchanges (assistant turns) per conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnStats {
    /// Conversations counted.
    pub conversations: u64,
    /// Fewest exchanges of a conversation.
    pub min: u64,
    /// Mean exchanges per conversation (2 decimals).
    pub mean: f64,
    /// Most exchanges of a conversation.
    pub max: u64,
}

/// How the two answers of preference pairs differ: means of `chosen` − `rejected`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// Pairs counted.
    pub pairs: u64,
    /// Mean of (voice markers `chosen` shows − those `rejected` shows), 2 decimals: the voice
    /// the preference teaches.
    pub marker_margin: f64,
    /// Mean of (words of `chosen` − words of `rejected`), 1 decimal: a large margin teaches
    /// length rather than voice.
    pub word_margin: f64,
    /// Share of pairs whose `chosen` shows more voice markers than `rejected` (4 decimals).
    pub chosen_more_markers: f64,
}

/// Summary of a length distribution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    /// The shortest length (0 when there are no lengths, like every field).
    pub min: u64,
    /// The 50th percentile (nearest rank).
    pub median: u64,
    /// The 90th percentile (nearest rank).
    pub p90: u64,
    /// The longest length.
    pub max: u64,
    /// The mean, rounded down.
    pub mean: u64,
    /// Equal-width buckets from 0; a last bucket without `to` collects the long tail.
    pub histogram: Vec<Bucket>,
}

/// One histogram bucket: lengths in `from..to` (`to` absent: `from` and above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The smallest length in the bucket.
    pub from: u64,
    /// The end of the bucket (exclusive); None for the last, open bucket.
    pub to: Option<u64>,
    /// How many lengths fall into it.
    pub count: u64,
}

/// Token totals over all steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTotals {
    /// Prompt tokens over all steps.
    pub input: u64,
    /// Reply tokens over all steps.
    pub output: u64,
    /// Tokens of steps served from the cache (input + output).
    pub cached: u64,
}

/// Accumulates [`DatasetStats`] record by record. Keeps one `u32` per sample for each length
/// distribution; everything else is counters.
#[derive(Debug, Default)]
pub struct StatsBuilder {
    stats: DatasetStats,
    prompt_lengths: Vec<u32>,
    response_lengths: Vec<u32>,
    /// Conversations, their exchanges (sum, min, max), and whether one had several.
    conversations: u64,
    exchanges: (u64, u64, u64),
    several_exchanges: bool,
    /// Pairs, and the sums of their marker and word margins, and pairs with chosen ahead.
    pairs: u64,
    marker_margin: i64,
    word_margin: i64,
    chosen_ahead: u64,
}

impl StatsBuilder {
    /// A builder with nothing counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one dataset record.
    pub fn add(&mut self, record: &ChatLine) {
        self.add_line(
            &record.messages,
            record.response(),
            &record.provenance,
            record.is_annotated(),
        );
    }

    /// Count one sample line of either kind, with what judging it found (exchanges, pair margins).
    pub(crate) fn add_sample(&mut self, sample: &SampleLine, facts: &SampleFacts) {
        match sample {
            SampleLine::Chat(record) => self.add(record),
            SampleLine::Preference(pair) => self.add_line(
                &pair.prompt,
                pair.chosen_text(),
                &pair.provenance,
                pair.provenance.is_annotated(),
            ),
        }
        if let Some(exchanges) = facts.exchanges {
            let (sum, min, max) = &mut self.exchanges;
            *min = if self.conversations == 0 {
                exchanges
            } else {
                (*min).min(exchanges)
            };
            *max = (*max).max(exchanges);
            *sum += exchanges;
            self.conversations += 1;
            self.several_exchanges |= exchanges > 1;
        }
        if let Some(pair) = facts.pair {
            self.pairs += 1;
            let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.marker_margin += signed(pair.chosen_markers) - signed(pair.rejected_markers);
            self.word_margin += signed(pair.chosen_words) - signed(pair.rejected_words);
            if pair.chosen_markers > pair.rejected_markers {
                self.chosen_ahead += 1;
            }
        }
    }

    /// Count one line: `messages` the conversation (a pair's prompt), `response` its answer.
    fn add_line(
        &mut self,
        messages: &[Message],
        response: &str,
        provenance: &Provenance,
        annotated: bool,
    ) {
        let stats = &mut self.stats;
        stats.samples += 1;
        if annotated {
            stats.annotated += 1;
        }
        if messages.iter().any(|m| m.role == "system") {
            stats.with_system += 1;
        }
        if messages.iter().filter(|m| m.role == "user").count() > 1 {
            stats.multi_turn += 1;
        }
        self.prompt_lengths.push(char_len(first_user(messages)));
        self.response_lengths.push(char_len(response));
        *stats.sources.entry(source_of(provenance)).or_default() += 1;
        if let Some(category) = input_text(provenance, "category") {
            *stats.categories.entry(category).or_default() += 1;
        }
        for step in provenance.steps() {
            stats.steps += 1;
            let reason = step
                .finish_reason
                .clone()
                .unwrap_or_else(|| "none".to_owned());
            *stats.finish_reasons.entry(reason).or_default() += 1;
            *stats.models.entry(model_name(&step.model)).or_default() += 1;
            let cached = step.cached;
            if cached {
                stats.cached_steps += 1;
            }
            if step.success == Some(false) {
                stats.failed_steps += 1;
            }
            if let Some(usage) = step.usage {
                let tokens = stats.tokens.get_or_insert_with(TokenTotals::default);
                let (input, output) = (usage.input_tokens, usage.output_tokens);
                tokens.input += input;
                tokens.output += output;
                if cached {
                    tokens.cached += input + output;
                }
            }
        }
    }

    /// Count one line of the errors file.
    pub fn add_error(&mut self, error: &ErrorDetail) {
        self.stats.errors += 1;
        let kind = match error.error.as_str() {
            "" => "unknown".to_owned(),
            kind => kind.to_owned(),
        };
        *self.stats.error_types.entry(kind).or_default() += 1;
    }

    /// The statistics so far.
    pub fn finish(mut self) -> DatasetStats {
        self.stats.prompt_chars = LengthStats::from_lengths(&mut self.prompt_lengths);
        self.stats.response_chars = LengthStats::from_lengths(&mut self.response_lengths);
        if self.several_exchanges {
            let (sum, min, max) = self.exchanges;
            self.stats.turns = Some(TurnStats {
                conversations: self.conversations,
                min,
                mean: round(sum as f64 / self.conversations as f64, 100.0),
                max,
            });
        }
        if self.pairs > 0 {
            let n = self.pairs as f64;
            self.stats.pairs = Some(PairStats {
                pairs: self.pairs,
                marker_margin: round(self.marker_margin as f64 / n, 100.0),
                word_margin: round(self.word_margin as f64 / n, 10.0),
                chosen_more_markers: round(self.chosen_ahead as f64 / n, 10_000.0),
            });
        }
        self.stats
    }
}

/// `x` rounded to `1 / scale` (`scale` 100: two decimals).
fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

fn char_len(text: &str) -> u32 {
    u32::try_from(text.chars().count()).unwrap_or(u32::MAX)
}

/// Histogram bucket count aimed for (the actual count is between 5 and 2× this).
const TARGET_BUCKETS: u64 = 12;

impl LengthStats {
    /// Summarize lengths (sorts them in place).
    pub fn from_lengths(lengths: &mut [u32]) -> Self {
        if lengths.is_empty() {
            return Self::default();
        }
        lengths.sort_unstable();
        let n = lengths.len();
        let at = |q: f64| u64::from(lengths[((q * n as f64).ceil() as usize).clamp(1, n) - 1]);
        let sum: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        let (min, max) = (u64::from(lengths[0]), u64::from(lengths[n - 1]));
        let p99 = at(0.99);
        // A long tail beyond 1.5× the 99th percentile goes into one open bucket.
        let top = if max > p99 + p99 / 2 && p99 > 0 {
            p99
        } else {
            max
        };
        let width = nice_width(top.div_ceil(TARGET_BUCKETS).max(1));
        let closed = top / width + 1;
        let mut histogram: Vec<Bucket> = (0..closed)
            .map(|i| Bucket {
                from: i * width,
                to: Some((i + 1) * width),
                count: 0,
            })
            .collect();
        if top < max {
            histogram.push(Bucket {
                from: closed * width,
                to: None,
                count: 0,
            });
        }
        for &len in lengths.iter() {
            let index = usize::try_from((u64::from(len) / width).min(histogram.len() as u64 - 1))
                .unwrap_or(0);
            histogram[index].count += 1;
        }
        Self {
            min,
            median: at(0.5),
            p90: at(0.9),
            max,
            mean: sum / n as u64,
            histogram,
        }
    }
}

/// The smallest 1, 2 or 5 × 10^k that is at least `raw`.
fn nice_width(raw: u64) -> u64 {
    let mut scale = 1u64;
    loop {
        for step in [1, 2, 5] {
            if step * scale >= raw {
                return step * scale;
            }
        }
        scale = scale.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let mut lengths: Vec<u32> = (1..=100).collect();
        let s = LengthStats::from_lengths(&mut lengths);
        assert_eq!(
            (s.min, s.median, s.p90, s.max, s.mean),
            (1, 50, 90, 100, 50)
        );
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 100);
        assert_eq!(
            s.histogram[0],
            Bucket {
                from: 0,
                to: Some(10),
                count: 9
            }
        );
        assert!(s.histogram.iter().all(|b| b.to.is_some()));
    }

    #[test]
    fn long_tail_goes_to_open_bucket() {
        let mut lengths: Vec<u32> = (0..200).map(|i| 100 + i % 50).collect();
        lengths.push(100_000);
        let s = LengthStats::from_lengths(&mut lengths);
        let last = s.histogram.last().unwrap();
        assert_eq!((last.to, last.count), (None, 1));
        assert!(s.histogram.len() < 30);
    }

    #[test]
    fn nice_widths() {
        assert_eq!(nice_width(1), 1);
        assert_eq!(nice_width(3), 5);
        assert_eq!(nice_width(11), 20);
        assert_eq!(nice_width(501), 1000);
    }
}
