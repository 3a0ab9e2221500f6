//! The overhead scenario (`--scenario overhead`): a zero-latency mock, so the client's CPU per request is what is measured.

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Measured, Scenario, Verdict};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "overhead",
        requests: args.overhead_requests,
        mock: MockBehaviour::default(),
        client_rpm: None,
        max_concurrency: args.overhead_concurrency,
        workers: None,
        timeout_secs: 60.0,
        goal: Goal::CpuPerRequest { micros: 100.0 },
    }
}

/// `Goal::CpuPerRequest`: client CPU (user + sys) per request.
pub(super) fn judge(scenario: &Scenario, m: &Measured, micros: f64) -> Verdict {
    let cpu_us = m.cpu_us_per_request(scenario.requests);
    Verdict {
        bound: format!("≤ {micros} µs client CPU per request"),
        ratio: cpu_us / micros,
        miss: (cpu_us > micros).then(|| format!("{cpu_us:.1} µs CPU per request > {micros} µs")),
    }
}
