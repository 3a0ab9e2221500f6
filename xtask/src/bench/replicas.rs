//! `cargo xtask bench --scenario replicas`: one alias over four `mock-llm` replicas (`base_urls`), its throughput as a multiple of one server's, and a run in which one replica is killed.
//!
//! Each mock answers after 200 ms and serves at most 64 requests at once (`--max-in-flight`,
//! like vLLM's `--max-num-seqs`: more would queue), so one server delivers at most 320 req/s
//! and four 1,280. Three runs of `bench-pipeline` (built like `cargo xtask run` builds
//! pipelines), each in a fresh repository with the response cache on (`--cache off`: without):
//!
//! 1. one server through `base_url`, `max_concurrency = 64`, N/4 records;
//! 2. four servers through `base_urls`, `max_concurrency = 64` each, N records: the same ideal
//!    time as run 1 (N/4 ÷ 64 waves either way), so the ratio of the two rates is the
//!    speed-up, ideally 4×; target ≥ 3.8×. No server may see more than 64 requests at once;
//! 3. as run 2, killing one server (SIGKILL) at 40 % of run 2's wall time: every record must
//!    be answered exactly once, with run 2's reply, and no record may fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::driver::{MockBehaviour, Server, read_replies};
use super::{BenchArgs, CacheChoice, cargo_build};

/// Every replica: [`LATENCY_MS`] per answer, at most [`CAP`] served at once.
fn mock_behaviour() -> MockBehaviour {
    MockBehaviour {
        latency_ms: LATENCY_MS,
        max_in_flight: Some(CAP),
        ..MockBehaviour::default()
    }
}

/// Replicas of the set.
const SERVERS: usize = 4;
/// Latency of every answer (ms).
const LATENCY_MS: u64 = 200;
/// Requests each replica serves at once, and the alias's `max_concurrency` (per endpoint).
const CAP: usize = 64;
/// Records of the replica runs; the one-server run gets a quarter (a multiple of 4 × CAP, so
/// both runs are whole waves).
const RECORDS: u64 = 6400;
/// The set must reach this multiple of one server's throughput.
const SPEEDUP_TARGET: f64 = 3.8;
/// When the kill run kills a replica, as a share of the four-replica run's wall time.
const KILL_AT: f64 = 0.4;
/// The replica the kill run kills (0-based).
const KILLED: usize = 1;

/// What one run of `bench-pipeline` did.
struct Run {
    records: u64,
    /// Dispatcher start to the last sample written (the manifest's `run.wall_time_secs`).
    run_secs: f64,
    process: Duration,
    /// CPU time (user + system) of the pipeline process (and, in the kill run, of the killed
    /// server).
    cpu: Duration,
    samples: u64,
    errors: u64,
    requests_sent: u64,
    retries: u64,
    /// Sample id → (lines carrying it, assistant text).
    replies: BTreeMap<String, (u32, String)>,
    /// Final stats line of every server still running at the end (`None`: killed).
    servers: Vec<Option<Value>>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.run_secs.max(1e-9)
    }

    fn cpu_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records.max(1) as f64
    }
}

/// Entry point: build (unless `--no-build`), run the three runs, print, record missed targets.
pub(super) fn run_replicas_scenario(
    args: &BenchArgs,
    root: &Path,
    target: &Path,
    failures: &mut Vec<String>,
) -> Result<()> {
    if !args.no_build {
        cargo_build(root, &["-p", "shaping-bench", "--bin", "bench-pipeline"])?;
        cargo_build(root, &["--release", "-p", "testkit", "--bin", "mock-llm"])?;
    }
    let pipeline = target.join("debug").join("bench-pipeline");
    let server = target.join("release").join("mock-llm");
    for bin in [&pipeline, &server] {
        if !bin.is_file() {
            bail!("{} not found (build without --no-build)", bin.display());
        }
    }
    let bins = (pipeline.as_path(), server.as_path());

    eprintln!(
        "bench: running replicas with one server: {} records…",
        RECORDS / SERVERS as u64
    );
    let one = run(args, bins, 1, RECORDS / SERVERS as u64, None)?;
    eprintln!("bench: running replicas with {SERVERS} servers: {RECORDS} records…");
    let four = run(args, bins, SERVERS, RECORDS, None)?;
    let kill_after = four.process.mul_f64(KILL_AT);
    eprintln!(
        "bench: running replicas with {SERVERS} servers, killing one after {:.1} s…",
        kill_after.as_secs_f64()
    );
    let killed = run(args, bins, SERVERS, RECORDS, Some(kill_after))?;

    let misses = report(&one, &four, &killed, kill_after);
    failures.extend(misses.into_iter().map(|m| format!("replicas: {m}")));
    Ok(())
}

/// The alias `bench`: one `base_url` for one server, `base_urls` for more.
fn models_toml(urls: &[String]) -> String {
    let endpoint = match urls {
        [one] => format!("base_url = {one:?}"),
        many => format!(
            "base_urls = [{}]",
            many.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "[models.bench]\nprovider = \"openai\"\nmodel = \"bench-model\"\n{endpoint}\nmax_concurrency = {CAP}\ntimeout_secs = 60\nmax_retries = 8\n"
    )
}

/// One run of `bench-pipeline` against `servers` fresh mocks, killing replica [`KILLED`] after
/// `kill_after` when given.
fn run(
    args: &BenchArgs,
    (pipeline, server): (&Path, &Path),
    servers: usize,
    records: u64,
    kill_after: Option<Duration>,
) -> Result<Run> {
    let repo = temp_repo()?;
    let mut mocks = (0..servers)
        .map(|_| Server::start(server, &mock_behaviour(), 1).map(Some))
        .collect::<Result<Vec<_>>>()?;
    let urls: Vec<String> = mocks.iter().flatten().map(|m| m.base_url.clone()).collect();
    std::fs::write(repo.join("models.toml"), models_toml(&urls)).context("writing models.toml")?;
    let log_path = repo.join("bench-pipeline.log");
    let log = std::fs::File::create(&log_path).context("creating the run log")?;
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut command = Command::new(pipeline);
    if args.cache == CacheChoice::Off {
        command.arg("--no-cache");
    }
    let mut child = command
        .arg("--quiet")
        .env("SHAPING_ROOT", &repo)
        .env("SHAPING_BENCH_RECORDS", records.to_string())
        .env_remove("SHAPING_BUDGET_SHARE")
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", pipeline.display()))?;
    let status = match kill_after {
        Some(after) => {
            let deadline = started + after;
            let status = wait_until(&mut child, deadline)?;
            if status.is_none()
                && let Some(mock) = mocks[KILLED].take()
            {
                mock.kill()?;
            }
            match status {
                Some(status) => status,
                None => child.wait().context("waiting for bench-pipeline")?,
            }
        }
        None => child.wait().context("waiting for bench-pipeline")?,
    };
    let process = started.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    let servers: Vec<Option<Value>> = mocks
        .into_iter()
        .map(|m| m.map(Server::finish).transpose())
        .collect::<Result<_>>()?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("bench-pipeline failed ({status}):\n{log}");
    }
    if kill_after.is_some() && servers[KILLED].is_some() {
        bail!("the run ended before the replica was killed: nothing was measured");
    }
    let manifest_path = repo.join("training/data/bench.manifest.json");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .context("parsing the manifest")?;
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    let run = Run {
        records,
        run_secs: manifest["run"]["wall_time_secs"].as_f64().unwrap_or(0.0),
        process,
        cpu,
        samples: number(&manifest["samples"]),
        errors: number(&manifest["errors"]),
        requests_sent: number(&manifest["run"]["requests_sent"]),
        retries: number(&manifest["run"]["retries"]),
        replies: read_replies(&repo.join("training/data/bench.jsonl"))?,
        servers,
    };
    if args.keep {
        eprintln!("bench: kept {}", repo.display());
    } else {
        let _ = std::fs::remove_dir_all(&repo);
    }
    Ok(run)
}

/// CPU time of this process's reaped children so far.
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage only fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wait for `child` until `deadline`: its status if it ended by then.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for bench-pipeline")? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
}

/// Why `got` is not every record exactly once with `expected`'s reply, if it is not.
fn exactly_once(
    records: u64,
    expected: &BTreeMap<String, (u32, String)>,
    got: &Run,
) -> Option<String> {
    let mut problems = Vec::new();
    if got.errors > 0 {
        problems.push(format!("{} records failed", got.errors));
    }
    if got.replies.len() as u64 != records || got.samples != records {
        problems.push(format!(
            "{} distinct records in the output ({} samples), expected {records}",
            got.replies.len(),
            got.samples
        ));
    }
    let repeated = got.replies.values().filter(|(n, _)| *n > 1).count();
    if repeated > 0 {
        problems.push(format!("{repeated} records written more than once"));
    }
    let differing = expected
        .iter()
        .filter(|(id, (_, text))| got.replies.get(*id).is_none_or(|(_, t)| t != text))
        .count();
    if differing > 0 {
        problems.push(format!(
            "{differing} replies differ from the run without the kill"
        ));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

fn stat(server: &Value, field: &str) -> u64 {
    server[field].as_u64().unwrap_or(0)
}

/// Per server: answered / at most in flight at once (the killed one shows as killed).
fn per_server(run: &Run) -> String {
    run.servers
        .iter()
        .map(|s| match s {
            Some(s) => format!(
                "{} ({} at once)",
                stat(s, "successes"),
                stat(s, "max_in_flight")
            ),
            None => "killed".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Print the figures; returns the missed targets.
fn report(one: &Run, four: &Run, killed: &Run, kill_after: Duration) -> Vec<String> {
    let mut misses = Vec::new();
    let speedup = four.rate() / one.rate().max(1e-9);
    let ideal = (CAP as f64) / (LATENCY_MS as f64 / 1000.0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n== replicas ({SERVERS} × mock-llm: {LATENCY_MS} ms, {CAP} served at once; max_concurrency = {CAP} per endpoint)"
    );
    let _ = writeln!(
        out,
        "  one server      {} records in {:.3} s (run) = {:.1} req/s ({:.1}% of {ideal:.0} req/s); base_url; client CPU {:.0} µs/request",
        one.records,
        one.run_secs,
        one.rate(),
        one.rate() / ideal * 100.0,
        one.cpu_per_request()
    );
    let _ = writeln!(
        out,
        "  {SERVERS} replicas      {} records in {:.3} s (run) = {:.1} req/s; base_urls; client CPU {:.0} µs/request; answered per server: {}",
        four.records,
        four.run_secs,
        four.rate(),
        four.cpu_per_request(),
        per_server(four)
    );
    let _ = writeln!(
        out,
        "  speed-up        {speedup:.2}× one server's (target ≥ {SPEEDUP_TARGET}×, ideal {SERVERS}×)"
    );
    if speedup < SPEEDUP_TARGET {
        misses.push(format!(
            "{speedup:.2}× one server's throughput < {SPEEDUP_TARGET}×"
        ));
    }
    for (label, run) in [
        ("one-server", one),
        ("four-replica", four),
        ("kill", killed),
    ] {
        for (i, server) in run.servers.iter().enumerate() {
            if let Some(server) = server
                && stat(server, "max_in_flight") > CAP as u64
            {
                misses.push(format!(
                    "{label} run: server {i} had {} requests in flight > its cap {CAP}",
                    stat(server, "max_in_flight")
                ));
            }
        }
    }
    for (label, run) in [("one-server", one), ("four-replica", four)] {
        if run.errors > 0 || run.samples != run.records {
            misses.push(format!(
                "{label} run: {} samples, {} errors for {} records",
                run.samples, run.errors, run.records
            ));
        }
    }
    let outcome = exactly_once(RECORDS, &four.replies, killed);
    let _ = writeln!(
        out,
        "  kill run        server {KILLED} killed after {:.1} s; {} records in {:.3} s (run) = {:.1} req/s; answered per server: {}",
        kill_after.as_secs_f64(),
        killed.records,
        killed.run_secs,
        killed.rate(),
        per_server(killed)
    );
    let _ = writeln!(
        out,
        "                  {} samples, {} error records, {} requests sent by the dispatcher, {} retries: {}",
        killed.samples,
        killed.errors,
        killed.requests_sent,
        killed.retries,
        outcome.as_deref().unwrap_or(
            "every record answered exactly once, each with the reply of the run without the kill"
        )
    );
    if let Some(problem) = outcome {
        misses.push(format!("kill run: {problem}"));
    }
    let _ = writeln!(
        out,
        "  target          {}",
        if misses.is_empty() {
            "met".to_owned()
        } else {
            format!("MISSED: {}", misses.join("; "))
        }
    );
    misses
}

/// A fresh temporary directory (removed unless `--keep`).
fn temp_repo() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "shaping-bench-replicas-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
