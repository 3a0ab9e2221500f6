//! The faults scenario (`--scenario faults`): 5 % HTTP 500s, 2 % cut mid-body, 1 % malformed JSON, 1 % hanging past the timeout; every record must be answered once, with the reply the same run without faults got, within 1.5× its wall time.

use std::collections::BTreeMap;
use std::io::Write;

use super::driver::{FaultMix, MockBehaviour};
use super::{BenchArgs, Goal, Measured, Reference, Scenario, Verdict};

/// The mix of `cargo xtask bench --scenario faults`, hanging requests held `hang_ms`.
fn production_mix(hang_ms: u64) -> FaultMix {
    FaultMix {
        server_errors: 0.05,
        cut_mid_body: 0.02,
        malformed: 0.01,
        hang: 0.01,
        hang_ms,
    }
}

/// The scenario as `args` configure it: hanging requests are held twice the client timeout.
pub(super) fn scenario(args: &BenchArgs) -> Scenario {
    let hang_ms = (args.faults_timeout_secs * 2000.0).round() as u64;
    Scenario {
        name: "faults",
        requests: args.faults_records,
        mock: MockBehaviour {
            latency_ms: args.latency_ms,
            jitter_ms: args.straggler_jitter_ms,
            faults: Some(production_mix(hang_ms)),
            ..MockBehaviour::default()
        },
        client_rpm: None,
        max_concurrency: args.faults_in_flight,
        workers: None,
        timeout_secs: args.faults_timeout_secs,
        goal: Goal::FaultFree { max_ratio: 1.5 },
    }
}

/// Why the faults run's output is not exactly the fault-free run's, if it is not: every record
/// exactly once, each with the same non-empty reply.
fn compare_replies(
    expected_records: u64,
    fault_free: &BTreeMap<String, (u32, String)>,
    faulty: &BTreeMap<String, (u32, String)>,
) -> Option<String> {
    let mut problems = Vec::new();
    if faulty.len() as u64 != expected_records {
        problems.push(format!(
            "{} distinct records in the output, expected {expected_records}",
            faulty.len()
        ));
    }
    let repeated = faulty.values().filter(|(count, _)| *count > 1).count();
    if repeated > 0 {
        problems.push(format!("{repeated} records answered more than once"));
    }
    let empty = faulty.values().filter(|(_, text)| text.is_empty()).count();
    if empty > 0 {
        problems.push(format!("{empty} empty replies"));
    }
    let differing = fault_free
        .iter()
        .filter(|(id, (_, text))| faulty.get(*id).is_none_or(|(_, got)| got != text))
        .count();
    if differing > 0 {
        problems.push(format!(
            "{differing} replies differ from the fault-free run's"
        ));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

/// `Goal::FaultFree`: the output must be the fault-free run's, record for record, and the wall
/// time within `max_ratio` of that run's.
pub(super) fn judge(
    out: &mut impl Write,
    scenario: &Scenario,
    m: &Measured,
    reference: &Reference<'_>,
    max_ratio: f64,
) -> Verdict {
    let Reference::FaultFree(fault_free) = reference else {
        return Verdict {
            bound: "the same run without faults".to_owned(),
            ratio: f64::NAN,
            miss: Some("no fault-free run to compare with".to_owned()),
        };
    };
    let secs = m.wall.as_secs_f64();
    let base = fault_free.wall.as_secs_f64();
    let ratio = secs / base.max(1e-9);
    let faults = m.server["faults_injected"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "  without faults  {base:.3} s wall ({:.3} s run), {} requests sent",
        fault_free.run_wall_secs, fault_free.requests_sent
    );
    let _ = writeln!(
        out,
        "  faults          {faults} injected, server statuses {}, {} cut mid-body",
        m.server["by_status"], m.server["mid_body_closes"]
    );
    let output_problem = match (&fault_free.replies, &m.replies) {
        (Some(expected), Some(got)) => compare_replies(scenario.requests, expected, got),
        _ => Some("the outputs were not read".to_owned()),
    };
    let _ = writeln!(
        out,
        "  output          {} samples, {} error records: {}",
        m.samples,
        m.errors,
        match &output_problem {
            None => "every record answered exactly once, each with the fault-free run's reply"
                .to_owned(),
            Some(problem) => problem.clone(),
        }
    );
    let miss = if let Some(problem) = output_problem {
        Some(problem)
    } else if m.errors > 0 {
        Some(format!("{} records failed", m.errors))
    } else {
        (ratio > max_ratio).then(|| format!("wall {ratio:.2}× the fault-free run's > {max_ratio}×"))
    };
    Verdict {
        bound: format!(
            "process wall ≤ {max_ratio}× the same run without faults (run wall {:.2}×)",
            m.run_wall_secs / fault_free.run_wall_secs.max(1e-9)
        ),
        ratio,
        miss,
    }
}
