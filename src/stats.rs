//! The run's counters: written by the dispatcher, read by the progress display and the run summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the whole process (progress bars and summaries read them).
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub requests_sent: AtomicU64,
    pub responses_ok: AtomicU64,
    pub cache_hits: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub failed: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub in_flight: AtomicU64,
}

impl DispatchStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
