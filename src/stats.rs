//! The run's counters: written by the dispatcher, read by the progress display and the run summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the whole process (progress bars and summaries read them).
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Requests sent to providers, retries included.
    pub requests_sent: AtomicU64,
    /// Answers received from providers (cache hits not counted).
    pub responses_ok: AtomicU64,
    /// Requests answered from the response cache.
    pub cache_hits: AtomicU64,
    /// Retries after a retryable failure.
    pub retries: AtomicU64,
    /// Attempts that failed with a rate limit (429), retried or not.
    pub rate_limited: AtomicU64,
    /// Requests that failed for good: not retryable, or out of retries.
    pub failed: AtomicU64,
    /// Prompt tokens of the answers received (cache hits not counted).
    pub input_tokens: AtomicU64,
    /// Reply tokens of the answers received.
    pub output_tokens: AtomicU64,
    /// Requests being sent right now (a gauge, not a total).
    pub in_flight: AtomicU64,
    /// Batch mode: jobs sent to the provider (or resumed from an earlier run).
    pub batches_submitted: AtomicU64,
    /// Batch mode: jobs that ended and whose results were downloaded.
    pub batches_ended: AtomicU64,
    /// Batch mode: requests put into jobs by this run (resubmissions included).
    pub batch_requests: AtomicU64,
    /// Batch mode: requests waiting for their job's answer right now (a gauge).
    pub batch_waiting: AtomicU64,
    /// The furthest step (1-based) any record's task has asked for so far.
    pub deepest_step: AtomicU64,
}

impl DispatchStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value of one of the counters.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
