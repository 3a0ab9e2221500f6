//! Sliding-window request / token limiter backing `rpm` and `tpm`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) struct Limiter {
    window: Duration,
    req_limit: Option<usize>,
    tok_limit: Option<u64>,
    reqs: VecDeque<Instant>,
    toks: VecDeque<(Instant, u64)>,
    tok_sum: u64,
}

pub(crate) enum Admit {
    Accepted {
        remaining_requests: Option<usize>,
        remaining_tokens: Option<u64>,
        /// Time until the window is fully replenished.
        reset: Duration,
    },
    Rejected {
        retry_after: Duration,
        remaining_tokens: Option<u64>,
    },
}

/// Per-window limit derived from a per-minute figure.
fn per_window(per_minute: u32, window: Duration) -> u64 {
    let v = (per_minute as f64 * window.as_secs_f64() / 60.0).floor() as u64;
    v.max(1)
}

impl Limiter {
    pub(crate) fn new(rpm: Option<u32>, tpm: Option<u32>, window: Duration) -> Self {
        let window = if window.is_zero() {
            Duration::from_secs(1)
        } else {
            window
        };
        Self {
            window,
            req_limit: rpm.map(|r| per_window(r, window) as usize),
            tok_limit: tpm.map(|t| per_window(t, window)),
            reqs: VecDeque::new(),
            toks: VecDeque::new(),
            tok_sum: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.req_limit.is_some() || self.tok_limit.is_some()
    }

    pub(crate) fn request_limit(&self) -> Option<usize> {
        self.req_limit
    }

    pub(crate) fn token_limit(&self) -> Option<u64> {
        self.tok_limit
    }

    fn evict(&mut self, now: Instant) {
        while let Some(&t) = self.reqs.front() {
            if t + self.window <= now {
                self.reqs.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(t, c)) = self.toks.front() {
            if t + self.window <= now {
                self.toks.pop_front();
                self.tok_sum -= c;
            } else {
                break;
            }
        }
    }

    /// Try to accept a request costing `cost` tokens at `now`.
    pub(crate) fn try_admit(&mut self, now: Instant, cost: u64) -> Admit {
        self.evict(now);
        let mut retry: Option<Duration> = None;
        if let Some(limit) = self.req_limit
            && self.reqs.len() >= limit
        {
            // The request at position len-limit must expire before we have room.
            let idx = self.reqs.len() - limit;
            retry = Some((self.reqs[idx] + self.window).saturating_duration_since(now));
        }
        if let Some(limit) = self.tok_limit
            && !self.toks.is_empty()
            && self.tok_sum + cost > limit
        {
            let mut sum = self.tok_sum;
            let mut wait = self.window;
            for &(t, c) in &self.toks {
                sum -= c;
                if sum + cost <= limit {
                    wait = (t + self.window).saturating_duration_since(now);
                    break;
                }
            }
            retry = Some(retry.map_or(wait, |r| r.max(wait)));
        }
        let rem_tok = |s: &Self| s.tok_limit.map(|l| l.saturating_sub(s.tok_sum));
        if let Some(retry_after) = retry {
            return Admit::Rejected {
                retry_after: retry_after.max(Duration::from_millis(1)),
                remaining_tokens: rem_tok(self),
            };
        }
        if self.req_limit.is_some() {
            self.reqs.push_back(now);
        }
        if self.tok_limit.is_some() {
            self.toks.push_back((now, cost));
            self.tok_sum += cost;
        }
        let oldest = match (self.reqs.front(), self.toks.front()) {
            (Some(&a), Some(&(b, _))) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&(b, _))) => b,
            (None, None) => now,
        };
        Admit::Accepted {
            remaining_requests: self.req_limit.map(|l| l.saturating_sub(self.reqs.len())),
            remaining_tokens: rem_tok(self),
            reset: (oldest + self.window).saturating_duration_since(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_requests() {
        let mut l = Limiter::new(Some(120), None, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(matches!(l.try_admit(t0, 1), Admit::Accepted { .. }));
        assert!(matches!(
            l.try_admit(t0 + Duration::from_millis(500), 1),
            Admit::Accepted { .. }
        ));
        match l.try_admit(t0 + Duration::from_millis(600), 1) {
            Admit::Rejected { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(400))
            }
            _ => panic!("should reject"),
        }
        assert!(matches!(
            l.try_admit(t0 + Duration::from_millis(1000), 1),
            Admit::Accepted { .. }
        ));
    }

    #[test]
    fn sliding_tokens() {
        let mut l = Limiter::new(None, Some(600), Duration::from_secs(1)); // 10 tokens / s
        let t0 = Instant::now();
        assert!(matches!(l.try_admit(t0, 6), Admit::Accepted { .. }));
        assert!(matches!(l.try_admit(t0, 4), Admit::Accepted { .. }));
        assert!(matches!(l.try_admit(t0, 1), Admit::Rejected { .. }));
        // a single oversized request is accepted on an empty window
        assert!(matches!(
            l.try_admit(t0 + Duration::from_secs(1), 50),
            Admit::Accepted { .. }
        ));
    }
}
