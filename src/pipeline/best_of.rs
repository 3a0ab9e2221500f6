//! Best-of-n generation: several candidates of one request, each judged by the quality gate's per-sample detectors, the best passing one kept.
//!
//! ```ignore
//! let chosen = t
//!     .best_of(model_request(messages, &self.identity), 4)
//!     .postprocess(|text| shaping::trim_to_last_sentence(text).to_owned())
//!     .pick()
//!     .await?;
//! ```
//!
//! Every candidate is an ordinary step of the task (its own cache entry and seed), so a rerun
//! replays them for free and the provenance shows all of them. When no candidate passes, the
//! record ends as an `__ERROR__` record of type `filtered` carrying every candidate's reasons:
//! nothing is dropped silently. The run's manifest gets a `best_of` report (acceptance rate,
//! filtered records by reason).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{ModelRequest, Task};
use crate::quality::{Reason, Turn};
use crate::sample::PipelineError;

/// A post-processing step applied to every candidate before it is judged.
type Postprocess<'t> = Box<dyn Fn(&str) -> String + Send + Sync + 't>;
/// A pipeline's own acceptance test: `Err(why)` rejects a candidate.
type Accept<'t> = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync + 't>;

/// Voice markers beyond this many do not make a candidate better (no reward for stuffing).
const MARKER_SCORE_CAP: usize = 2;

/// A best-of-n request being configured; [`BestOf::pick`] runs it. Made by [`Task::best_of`].
pub struct BestOf<'t> {
    task: &'t Task,
    request: ModelRequest,
    candidates: u32,
    round: u32,
    on_topic: bool,
    prompt: Option<String>,
    postprocess: Option<Postprocess<'t>>,
    accept: Option<Accept<'t>>,
}

/// The candidate [`BestOf::pick`] kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// The candidate's text after post-processing.
    pub text: String,
    /// Its position among the candidates (0-based).
    pub index: u32,
    /// How many candidates were generated.
    pub generated: u32,
    /// The identity's voice markers it shows.
    pub markers: Vec<String>,
}

impl Task {
    /// Ask for up to `candidates` answers to `request` and keep the best one that passes the
    /// quality gate's per-sample checks (the pipeline's [`crate::quality::QualityConfig`] and
    /// `identity/voice.toml`). Configure with the builder, then `.pick().await`.
    pub fn best_of(&self, request: ModelRequest, candidates: u32) -> BestOf<'_> {
        BestOf {
            task: self,
            request,
            candidates: candidates.max(1),
            round: 0,
            on_topic: false,
            prompt: None,
            postprocess: None,
            accept: None,
        }
    }
}

impl<'t> BestOf<'t> {
    /// Generate candidates `k` at a time and stop after the first round with a passing one
    /// (default: all at once, then the best of all). Saves generation when most candidates pass.
    /// A round in which the provider answered no candidate at all ends the search.
    #[must_use]
    pub fn in_rounds_of(mut self, k: u32) -> Self {
        self.round = k;
        self
    }

    /// Judge relevance strictly: a candidate that shares no content word with the prompt is
    /// rejected even when it shows a voice marker (see `Detectors::off_topic`).
    #[must_use]
    pub fn on_topic(mut self) -> Self {
        self.on_topic = true;
        self
    }

    /// The text the reply answers, for the echo and relevance checks (default: the request's
    /// last user message).
    #[must_use]
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = Some(prompt.into());
        self
    }

    /// Transform every candidate before it is judged (e.g. trim to the last full sentence).
    #[must_use]
    pub fn postprocess(mut self, f: impl Fn(&str) -> String + Send + Sync + 't) -> Self {
        self.postprocess = Some(Box::new(f));
        self
    }

    /// The pipeline's own test, applied after the gate's checks: `Err(why)` rejects a candidate.
    #[must_use]
    pub fn accept(mut self, f: impl Fn(&str) -> Result<(), String> + Send + Sync + 't) -> Self {
        self.accept = Some(Box::new(f));
        self
    }

    /// Generate, judge and choose. Among passing candidates the one showing the most distinct
    /// voice markers (up to two) wins, the earliest on a tie. `Err` of type `filtered` when none
    /// passes, with every candidate's reasons.
    pub async fn pick(self) -> Result<Chosen, PipelineError> {
        let ctx = self.task.ctx();
        // Example replies shown before the question (few-shot turns): copying them is an echo.
        let examples: Vec<&str> = self
            .request
            .messages()
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| m.content.as_str())
            .collect();
        let prompt = self.prompt.clone().unwrap_or_else(|| {
            self.request
                .messages()
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default()
        });
        let round = match self.round {
            0 => self.candidates,
            k => k.min(self.candidates),
        };
        let mut best: Option<(usize, Chosen)> = None;
        let mut rejections: Vec<String> = Vec::new();
        let mut reason_names: BTreeSet<String> = BTreeSet::new();
        let mut generated = 0;
        while generated < self.candidates && best.is_none() {
            let k = round.min(self.candidates - generated);
            let replies = self.task.all((0..k).map(|_| self.request.clone())).await;
            // Another round is worth it when the gate rejected candidates, not when the provider
            // failed every one (a bad key or an outage would fail the next round the same way).
            let mut answered = false;
            for (offset, reply) in replies.into_iter().enumerate() {
                let index = generated + offset as u32;
                let text = match reply.ok_text() {
                    Ok(text) => {
                        answered = true;
                        text
                    }
                    Err(error) => {
                        reason_names.insert(error.kind.to_string());
                        rejections.push(format!("candidate {}: {error}", index + 1));
                        ctx.best_of.candidate(false);
                        continue;
                    }
                };
                let text = match &self.postprocess {
                    Some(f) => f(text),
                    None => text.trim().to_owned(),
                };
                let turn = Turn {
                    prompt: &prompt,
                    reply: &text,
                    finish_reason: reply.finish_reason(),
                };
                let verdict = ctx.detectors.judge_after_examples(&turn, &examples);
                let mut reasons = verdict.reasons();
                if self.on_topic
                    && !verdict.has(Reason::Relevance)
                    && let Some(finding) = ctx.detectors.off_topic(&turn)
                {
                    reasons.push(finding.to_string());
                }
                if let Some(accept) = &self.accept
                    && let Err(why) = accept(&text)
                {
                    reasons.push(format!("pipeline: {why}"));
                }
                ctx.best_of.candidate(reasons.is_empty());
                if reasons.is_empty() {
                    let score = verdict.markers.len().min(MARKER_SCORE_CAP);
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        best = Some((
                            score,
                            Chosen {
                                text,
                                index,
                                generated: 0,
                                markers: verdict.markers.clone(),
                            },
                        ));
                    }
                } else {
                    reason_names.extend(reasons.iter().map(|r| reason_name(r).to_owned()));
                    rejections.push(format!("candidate {}: {}", index + 1, reasons.join("; ")));
                }
            }
            generated += k;
            if !answered {
                break;
            }
        }
        match best {
            Some((_, mut chosen)) => {
                chosen.generated = generated;
                ctx.best_of.accepted();
                Ok(chosen)
            }
            None => {
                ctx.best_of.filtered(&reason_names);
                Err(PipelineError::filtered(
                    format!("none of {generated} candidates passed the quality gate"),
                    rejections,
                ))
            }
        }
    }
}

/// The reason's name: the text before its first `:` (`degeneration: …` → `degeneration`).
fn reason_name(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason).trim()
}

/// Counters of a run's best-of-n picks, reported in the manifest as `best_of`.
#[derive(Debug, Default)]
pub(crate) struct BestOfStats {
    candidates: AtomicU64,
    candidates_passed: AtomicU64,
    records_accepted: AtomicU64,
    records_filtered: AtomicU64,
    filtered_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// The `best_of` report of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BestOfReport {
    pub candidates: u64,
    pub candidates_passed: u64,
    pub records_accepted: u64,
    pub records_filtered: u64,
    /// Accepted records ÷ records that asked for candidates.
    pub acceptance_rate: f64,
    /// Filtered records per reason shown by any of their candidates.
    pub filtered_by_reason: BTreeMap<String, u64>,
}

impl BestOfStats {
    fn candidate(&self, passed: bool) {
        self.candidates.fetch_add(1, Ordering::Relaxed);
        if passed {
            self.candidates_passed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn accepted(&self) {
        self.records_accepted.fetch_add(1, Ordering::Relaxed);
    }

    fn filtered(&self, reasons: &BTreeSet<String>) {
        self.records_filtered.fetch_add(1, Ordering::Relaxed);
        let mut by_reason = self.filtered_by_reason.lock().expect("best-of lock");
        for reason in reasons {
            *by_reason.entry(reason.clone()).or_default() += 1;
        }
    }

    /// The report, or `None` when the run asked for no candidates.
    pub(crate) fn report(&self) -> Option<BestOfReport> {
        let candidates = self.candidates.load(Ordering::Relaxed);
        if candidates == 0 {
            return None;
        }
        let records_accepted = self.records_accepted.load(Ordering::Relaxed);
        let records_filtered = self.records_filtered.load(Ordering::Relaxed);
        let records = records_accepted + records_filtered;
        Some(BestOfReport {
            candidates,
            candidates_passed: self.candidates_passed.load(Ordering::Relaxed),
            records_accepted,
            records_filtered,
            acceptance_rate: if records == 0 {
                0.0
            } else {
                (records_accepted as f64 / records as f64 * 10_000.0).round() / 10_000.0
            },
            filtered_by_reason: self
                .filtered_by_reason
                .lock()
                .expect("best-of lock")
                .clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_are_the_text_before_the_colon() {
        assert_eq!(reason_name("degeneration: 'x' ×9"), "degeneration");
        assert_eq!(reason_name("pipeline: too short"), "pipeline");
        assert_eq!(reason_name("echo"), "echo");
    }

    #[test]
    fn report_counts_acceptance_and_reasons() {
        let stats = BestOfStats::default();
        assert_eq!(stats.report(), None);
        stats.candidate(false);
        stats.candidate(true);
        stats.accepted();
        stats.candidate(false);
        stats.filtered(&BTreeSet::from(["echo".to_owned(), "relevance".to_owned()]));
        stats.candidate(false);
        stats.filtered(&BTreeSet::from(["echo".to_owned()]));
        let report = stats.report().expect("candidates were asked for");
        assert_eq!(report.candidates, 4);
        assert_eq!(report.candidates_passed, 1);
        assert_eq!(report.records_accepted, 1);
        assert_eq!(report.records_filtered, 2);
        assert_eq!(report.acceptance_rate, 0.3333);
        assert_eq!(report.filtered_by_reason["echo"], 2);
        assert_eq!(report.filtered_by_reason["relevance"], 1);
    }
}
