//! Run visibility: an indicatif bar per running pipeline on a terminal, plain periodic lines otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::DispatchStats;

/// Progress of one pipeline run.
pub struct Progress {
    name: String,
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    stats: Arc<DispatchStats>,
    started: Instant,
    finished: AtomicBool,
}

impl Progress {
    /// A bar on a terminal, plain lines when stderr is not one; nothing at all when `quiet`.
    pub fn new(name: &str, stats: Arc<DispatchStats>, quiet: bool) -> Arc<Self> {
        let plain_requested = std::env::var_os("SHAPING_PLAIN_PROGRESS").is_some();
        let bar = (!quiet && !plain_requested && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} {bar:30.cyan/blue} {pos}/{len} records {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.set_prefix(name.to_owned());
            bar
        });
        let progress = Arc::new(Self {
            name: name.to_owned(),
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stats,
            started: Instant::now(),
            finished: AtomicBool::new(false),
        });
        if !quiet {
            let ticker = Arc::clone(&progress);
            let plain = ticker.bar.is_none();
            tokio::spawn(async move {
                let period = if plain {
                    Duration::from_secs(10)
                } else {
                    Duration::from_millis(250)
                };
                let mut interval = tokio::time::interval(period);
                interval.tick().await;
                while !ticker.finished.load(Ordering::Relaxed) {
                    interval.tick().await;
                    ticker.refresh(plain);
                }
            });
        }
        progress
    }

    /// `n` more records to expect (the bar's length).
    pub fn add_total(&self, n: u64) {
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// One record finished; `failed` counts it among the failed records.
    pub fn record_done(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// One line of counters: requests/s, tokens, retries, errors, cache hits.
    pub fn counters(&self) -> String {
        let s = &self.stats;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let sent = DispatchStats::get(&s.requests_sent);
        let jobs = DispatchStats::get(&s.batches_submitted);
        let batch = if jobs > 0 {
            format!(
                "batch jobs {} of {jobs} ended, {} requests waiting in jobs, task step {}; ",
                DispatchStats::get(&s.batches_ended),
                DispatchStats::get(&s.batch_waiting),
                DispatchStats::get(&s.deepest_step),
            )
        } else {
            String::new()
        };
        format!(
            "{batch}{:.1} req/s, tokens {} in / {} out, {} retries, {} failed records, {} cache hits",
            sent as f64 / secs,
            DispatchStats::get(&s.input_tokens),
            DispatchStats::get(&s.output_tokens),
            DispatchStats::get(&s.retries),
            self.failed.load(Ordering::Relaxed),
            DispatchStats::get(&s.cache_hits),
        )
    }

    fn refresh(&self, plain: bool) {
        let counters = self.counters();
        match &self.bar {
            Some(bar) => bar.set_message(counters),
            None if plain => {
                let done = self.done.load(Ordering::Relaxed);
                let records = match self.total.load(Ordering::Relaxed) {
                    0 => format!("{done}"),
                    total => format!("{done}/{total}"),
                };
                eprintln!(
                    "[{}] {records} records, {counters}, {:.0}s elapsed",
                    self.name,
                    self.started.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }

    /// Stop the ticker and clear the bar.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Time since this progress display was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
