//! The scale scenario (`--scenario scale`): many records through a zero-latency mock; the client's peak memory must stay bounded.

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Measured, Scenario, Verdict};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "scale",
        requests: args.scale_records,
        mock: MockBehaviour::default(),
        client_rpm: None,
        max_concurrency: args.overhead_concurrency,
        workers: None,
        timeout_secs: 60.0,
        goal: Goal::PeakRss { mib: 256.0 },
    }
}

/// `Goal::PeakRss`: the client's peak resident memory.
pub(super) fn judge(m: &Measured, mib: f64) -> Verdict {
    let rss_mib = m.peak_rss_mib();
    Verdict {
        bound: format!("peak RSS < {mib} MiB"),
        ratio: rss_mib / mib,
        miss: (rss_mib >= mib).then(|| format!("peak RSS {rss_mib:.1} MiB ≥ {mib} MiB")),
    }
}
