//! The jitter scenario (`--scenario jitter`): 20,000 requests at 500±450 ms; throughput must reach 95 % of in-flight ÷ mean latency (judged like the latency-bound scenario).

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Scenario};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "jitter",
        requests: args.jitter_requests,
        mock: MockBehaviour {
            latency_ms: args.latency_ms,
            jitter_ms: args.jitter_ms,
            ..MockBehaviour::default()
        },
        client_rpm: None,
        max_concurrency: args.latency_in_flight,
        workers: Some(args.latency_in_flight),
        timeout_secs: 60.0,
        goal: Goal::LatencyBound {
            share: 0.95,
            waves: false,
        },
    }
}
