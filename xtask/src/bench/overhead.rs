//! The overhead scenario (`--scenario overhead`): a zero-latency mock, so the client's CPU per request is what is measured.
//!
//! The target is absolute (≤ 100 µs), but a shared host's speed moves the figure by a third from
//! one hour to the next, so the bare `bench-baseline` client (tokio + reqwest, no cache, no
//! ordering, no output) runs against the same mock in the same bench and its CPU per request is
//! printed beside ours: the ratio, and what the pipeline spends above bare HTTP, hold still.

use std::io::Write;

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Measured, Reference, Scenario, Verdict};

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

/// `Goal::CpuPerRequest`: client CPU (user + sys) per request, with the baseline client's beside it.
pub(super) fn judge(
    out: &mut impl Write,
    scenario: &Scenario,
    m: &Measured,
    reference: &Reference<'_>,
    micros: f64,
) -> Verdict {
    let cpu_us = m.cpu_us_per_request(scenario.requests);
    if let Reference::Baseline(baseline) = reference {
        let base_us = baseline.cpu.as_secs_f64() * 1e6 / scenario.requests.max(1) as f64;
        let _ = writeln!(
            out,
            "  baseline        {base_us:.1} µs CPU per request ({} answered, {} failed; tokio + \
             reqwest, no cache, no ordering, no output; same mock, same run)",
            baseline.answered, baseline.failed
        );
        let _ = writeln!(
            out,
            "  vs baseline     {:.2}× its CPU; {:+.1} µs per request above bare HTTP",
            cpu_us / base_us.max(1e-9),
            cpu_us - base_us
        );
    }
    Verdict {
        bound: format!("≤ {micros} µs client CPU per request"),
        ratio: cpu_us / micros,
        miss: (cpu_us > micros).then(|| format!("{cpu_us:.1} µs CPU per request > {micros} µs")),
    }
}
