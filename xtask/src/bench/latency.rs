//! The latency-bound scenario (`--scenario latency`): 500 ms answers, 512 in flight; throughput must reach the in-flight ÷ latency bound. Also judges the jitter scenario, which has the same goal.

use std::io::Write;

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Measured, Scenario, Verdict};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "latency-bound",
        requests: args.latency_requests,
        mock: MockBehaviour {
            latency_ms: args.latency_ms,
            jitter_ms: args.latency_jitter_ms,
            ..MockBehaviour::default()
        },
        client_rpm: None,
        max_concurrency: args.latency_in_flight,
        workers: Some(args.latency_in_flight),
        timeout_secs: 60.0,
        goal: Goal::LatencyBound {
            share: 0.98,
            waves: args.latency_jitter_ms == 0,
        },
    }
}

/// `Goal::LatencyBound`: the achieved rate against in-flight ÷ the latency the server
/// delivered. With `waves` (no jitter) the ideal schedule is ceil(n / in-flight) latencies;
/// otherwise n / in-flight mean latencies.
pub(super) fn judge(
    out: &mut impl Write,
    scenario: &Scenario,
    m: &Measured,
    share: f64,
    waves: bool,
) -> Verdict {
    let n = scenario.requests as f64;
    let secs = m.wall.as_secs_f64();
    let configured = scenario.mock.latency_ms as f64 / 1000.0;
    // The latency the server's timer actually delivered (tokio sleeps wake on a 1 ms tick,
    // so a little over the configured value): the bound is measured in the same run, and
    // the client is not charged for the server's timer.
    let held = m.server["held_micros_total"].as_f64().unwrap_or(0.0);
    let held_count = m.server["held_count"].as_f64().unwrap_or(0.0);
    let latency = if held_count > 0.0 {
        held / held_count / 1e6
    } else {
        configured
    };
    let latency = if waves {
        latency.max(configured)
    } else {
        latency
    };
    let in_flight = scenario.max_concurrency as f64;
    let bound = in_flight / latency;
    // Without jitter requests go in waves of `in_flight`: the ideal schedule takes
    // ceil(n / in_flight) latencies. With jitter a slot is refilled as soon as it frees.
    let ideal = if waves {
        (n / in_flight).ceil() * latency
    } else {
        n / in_flight * latency
    };
    // Judged on the run itself (dispatcher start to the last sample written); process
    // start-up and the post-run quality pass are constant costs, shown separately.
    let ratio = ideal / m.run_wall_secs.max(1e-9);
    let _ = writeln!(
        out,
        "  process         {:.1}% of the bound counting start-up and the post-run quality pass",
        ideal / secs * 100.0
    );
    Verdict {
        bound: format!(
            "{bound:.1} req/s (in-flight {in_flight} ÷ mean latency {:.2} ms as the server \
             held requests, {configured} s configured); ideal wall {ideal:.3} s",
            latency * 1000.0
        ),
        ratio,
        miss: (ratio < share)
            .then(|| format!("{:.1}% of the bound < {:.0}%", ratio * 100.0, share * 100.0)),
    }
}
