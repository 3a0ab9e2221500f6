//! The rate-limited scenario (`--scenario rate`): the server enforces an RPM the client is configured with; pacing must reach the limit without provoking 429s.

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Measured, Scenario, Verdict};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "rate-limited",
        requests: args.rate_requests,
        mock: MockBehaviour {
            latency_ms: args.rate_latency_ms,
            rpm: Some(args.rate_rpm),
            ..MockBehaviour::default()
        },
        client_rpm: Some(args.rate_rpm),
        max_concurrency: 256,
        workers: None,
        timeout_secs: 60.0,
        goal: Goal::RateBound {
            share: 0.97,
            max_429_share: 0.01,
        },
    }
}

/// `Goal::RateBound`: the achieved rate against the RPM, and the share of requests answered 429.
pub(super) fn judge(scenario: &Scenario, m: &Measured, share: f64, max_429_share: f64) -> Verdict {
    let rate = scenario.requests as f64 / m.wall.as_secs_f64();
    let server_429 = m.server["rate_limited"].as_u64().unwrap_or(0);
    let received = m.server["received"].as_u64().unwrap_or(0);
    let rpm = scenario.mock.rpm;
    let bound = rpm.unwrap_or(1) as f64 / 60.0;
    let ratio = rate / bound;
    let share_429 = server_429 as f64 / received.max(1) as f64;
    let miss = if ratio < share {
        Some(format!(
            "{:.1}% of the limit < {:.0}%",
            ratio * 100.0,
            share * 100.0
        ))
    } else if share_429 >= max_429_share {
        Some(format!(
            "{:.2}% of requests answered 429",
            share_429 * 100.0
        ))
    } else {
        None
    };
    Verdict {
        bound: format!("{bound:.1} req/s (RPM {})", rpm.unwrap_or(0)),
        ratio,
        miss,
    }
}
