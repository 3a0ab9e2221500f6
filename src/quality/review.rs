//! Deterministic review samples ([`review_sample`]) and the [`ReviewSnapshot`] that insta keeps for review.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checks::{CheckReport, analyze};
use super::config::{QualityConfig, Voice};
use super::read::read_samples;
use super::stats::DatasetStats;
use super::text::{Sample, truncate_chars};
use super::{QualityError, Result, dataset_name};

/// Characters of prompt and response kept in a [`ReviewSample`].
pub const REVIEW_TEXT_CHARS: usize = 600;

/// The `n` samples whose `sha256(id)` is smallest, in that order.
///
/// The choice depends only on the ids present: unchanged data give the same sample, and adding
/// one record changes at most one member. Memory holds `n` samples.
pub fn review_sample(path: &Path, n: usize) -> Result<Vec<Sample>> {
    struct Entry {
        key: ([u8; 32], u64),
        sample: Box<Sample>,
    }
    impl Ord for Entry {
        fn cmp(&self, other: &Self) -> Ordering {
            self.key.cmp(&other.key)
        }
    }
    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            self.key == other.key
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    if n == 0 {
        return Ok(Vec::new());
    }
    // A max-heap of the n smallest keys seen so far.
    let mut heap: BinaryHeap<Entry> = BinaryHeap::with_capacity(n + 1);
    for item in read_samples(path)? {
        let (line, record) = item?;
        let key = (id_hash(record.id()), line);
        if heap.len() == n && heap.peek().is_some_and(|top| top.key <= key) {
            continue;
        }
        heap.push(Entry {
            key,
            sample: Box::new(Sample::from_line(line, record)),
        });
        if heap.len() > n {
            heap.pop();
        }
    }
    Ok(heap
        .into_sorted_vec()
        .into_iter()
        .map(|e| *e.sample)
        .collect())
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// What insta keeps for one dataset: statistics, check results and a deterministic sample with
/// truncated text. Contains no paths and no timestamps, so it changes only when the data change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewSnapshot {
    /// The dataset's name (the file name without `.jsonl`).
    pub dataset: String,
    /// sha256 of the dataset file: any edit, even one outside the sample, changes the snapshot.
    pub sha256: String,
    /// Counts and length distributions of the dataset.
    pub stats: DatasetStats,
    /// The quality checks' outcome under the pipeline's config.
    pub checks: CheckReport,
    /// The deterministic review sample ([`review_sample`]).
    pub samples: Vec<ReviewSample>,
}

/// One sample in a [`ReviewSnapshot`]: a single exchange as `prompt` and `response`; a
/// conversation of several exchanges turn by turn (`turns`: `[user] …`, `[assistant] …`); a
/// pair as its prompt (`prompt`, or `turns` when the prompt has several turns), then `chosen`
/// and `rejected`. Each text is truncated to [`REVIEW_TEXT_CHARS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewSample {
    /// The sample's id.
    pub id: String,
    /// `input_data.source`, or `unknown`.
    pub source: String,
    /// `input_data.category`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Model aliases of the steps, in order (empty for minimal data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The system message, truncated to a third of [`REVIEW_TEXT_CHARS`]; None without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user message of a single exchange (or of a pair's one-turn prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The conversation turn by turn, each `[role] text`, system message aside: a
    /// conversation of several exchanges, or a pair's prompt of several turns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<String>,
    /// The assistant message of a single exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// A pair's preferred answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// A pair's other answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl ReviewSample {
    fn new(sample: &Sample) -> Self {
        let text = |t: &str| truncate_chars(t, REVIEW_TEXT_CHARS);
        let dialogue: Vec<_> = sample
            .messages
            .iter()
            .filter(|m| m.role != "system")
            .collect();
        // One user turn (and, for a conversation, its answer): the plain form.
        let single = match &sample.pair {
            Some(_) => dialogue.len() == 1,
            None => sample.exchanges() <= 1 && dialogue.len() <= 2,
        };
        let (prompt, turns, response) = if single {
            let response = sample.pair.is_none().then(|| text(sample.response()));
            (Some(text(sample.prompt())), Vec::new(), response)
        } else {
            let turns = dialogue
                .iter()
                .map(|m| format!("[{}] {}", m.role, text(&m.content)))
                .collect();
            (None, turns, None)
        };
        Self {
            id: sample.id.clone(),
            source: sample.source.clone(),
            category: sample.category.clone(),
            models: sample.steps.iter().map(|s| s.model.clone()).collect(),
            system: sample
                .messages
                .iter()
                .find(|m| m.role == "system")
                .map(|m| truncate_chars(&m.content, REVIEW_TEXT_CHARS / 3)),
            prompt,
            turns,
            response,
            chosen: sample.pair.as_ref().map(|p| text(&p.chosen)),
            rejected: sample.pair.as_ref().map(|p| text(&p.rejected)),
        }
    }
}

impl ReviewSnapshot {
    /// Build the snapshot of the dataset at `path` with `n` review samples.
    pub fn build(path: &Path, config: &QualityConfig, voice: &Voice, n: usize) -> Result<Self> {
        let (stats, checks) = analyze(path, config, voice)?;
        let samples = review_sample(path, n)?
            .iter()
            .map(ReviewSample::new)
            .collect();
        let sha256 = crate::fingerprint::sha256_file(path).map_err(|e| QualityError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self {
            dataset: dataset_name(path),
            sha256,
            stats,
            checks,
            samples,
        })
    }
}
