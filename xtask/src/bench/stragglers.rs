//! The stragglers scenario (`--scenario stragglers`): 1 % of requests take 10 s, the rest 500±100 ms; the wall time must stay within 1.1× the bare `bench-baseline` client's against the same mock.

use std::io::Write;

use super::driver::{MockBehaviour, Stragglers};
use super::{BenchArgs, Goal, Measured, Reference, Scenario, Verdict};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "stragglers",
        requests: args.straggler_requests,
        mock: MockBehaviour {
            latency_ms: args.latency_ms,
            jitter_ms: args.straggler_jitter_ms,
            stragglers: Some(Stragglers {
                share: args.straggler_share,
                ms: args.straggler_ms,
            }),
            ..MockBehaviour::default()
        },
        client_rpm: None,
        max_concurrency: args.latency_in_flight,
        workers: Some(args.latency_in_flight),
        timeout_secs: 60.0,
        goal: Goal::Baseline { max_ratio: 1.1 },
    }
}

/// `Goal::Baseline`: process wall time against the baseline client's, run in the same bench.
pub(super) fn judge(
    out: &mut impl Write,
    m: &Measured,
    reference: &Reference<'_>,
    max_ratio: f64,
) -> Verdict {
    let secs = m.wall.as_secs_f64();
    let Reference::Baseline(baseline) = reference else {
        return Verdict {
            bound: "the bare baseline client".to_owned(),
            ratio: f64::NAN,
            miss: Some("no baseline run to compare with".to_owned()),
        };
    };
    let base = baseline.wall.as_secs_f64();
    let ratio = secs / base.max(1e-9);
    let _ = writeln!(
        out,
        "  baseline        {base:.3} s wall, {} answered, {} failed, {:.3} s CPU \
         (tokio + reqwest, a semaphore and join_all; same mock, same run)",
        baseline.answered,
        baseline.failed,
        baseline.cpu.as_secs_f64()
    );
    let miss = if baseline.failed > 0 {
        Some(format!(
            "the baseline client got {} failures: the comparison is void",
            baseline.failed
        ))
    } else {
        (ratio > max_ratio)
            .then(|| format!("wall {ratio:.2}× the bare baseline client's > {max_ratio}×"))
    };
    Verdict {
        bound: format!(
            "process wall ≤ {max_ratio}× the bare baseline client's (run wall {:.2}×)",
            m.run_wall_secs / base.max(1e-9)
        ),
        ratio,
        miss,
    }
}
