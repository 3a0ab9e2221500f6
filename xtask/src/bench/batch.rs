//! The batch scenario (`--scenario batch`): 100,000 records through the OpenAI Batch API of the mock (two jobs of 50,000); the client's peak memory must stay bounded.

use super::driver::MockBehaviour;
use super::{BenchArgs, Goal, Scenario};

/// The scenario as `args` configure it.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    Scenario {
        name: "batch",
        requests: args.batch_records,
        mock: MockBehaviour {
            batch_latency_ms: Some(args.batch_latency_ms),
            ..MockBehaviour::default()
        },
        client_rpm: None,
        max_concurrency: 64,
        workers: None,
        timeout_secs: 60.0,
        goal: Goal::PeakRss { mib: 256.0 },
    }
}
