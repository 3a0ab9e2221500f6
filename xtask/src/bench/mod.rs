//! `cargo xtask bench`: run the `bench-pipeline` binary, built the way `cargo xtask run` builds pipelines, against a separate `mock-llm` process and measure the client alone.
//!
//! Per scenario: a temporary repository whose `models.toml` points alias `bench` at the mock
//! server, one child run of `bench-pipeline` (wall time, user+sys CPU and peak RSS from
//! `wait4`), then the server's final stats line. Scenarios run with the response cache on and
//! off (`--no-cache`, which measures the dispatcher alone). The mock can add latency jitter,
//! stragglers and a faults mix, as real servers do; targets are ratios to bounds measured in
//! the same run: the in-flight ÷ latency bound as the server delivered it, the bare
//! `bench-baseline` client (tokio + reqwest, a semaphore, `join_all`) against the same mock, or
//! the same run without faults.
//!
//! One file per scenario (its configuration and how its goal is judged): `latency.rs`,
//! `jitter.rs`, `stragglers.rs`, `faults.rs`, `rate.rs`, `overhead.rs`, `scale.rs`, `batch.rs` and `local.rs`
//! (the embedded model, run through `bench-local`); `driver.rs` runs the mock server and the
//! children.

mod batch;
mod driver;
mod faults;
mod jitter;
mod latency;
mod local;
mod overhead;
mod rate;
mod replicas;
mod scale;
mod stragglers;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

use driver::{BaselineRun, MockBehaviour, build_binaries, run_baseline, run_scenario};

/// Which scenario(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScenarioChoice {
    /// 500 ms latency, 512 in flight: throughput must reach the in-flight ÷ latency bound.
    Latency,
    /// 20,000 requests at 500±450 ms: throughput must reach 95 % of in-flight ÷ mean latency.
    Jitter,
    /// 1 % of requests take 10 s (the rest 500±100 ms): wall within 1.1× the bare baseline client.
    Stragglers,
    /// 5 % 500s, 2 % cut mid-body, 1 % malformed JSON, 1 % hanging past the timeout: every
    /// record answered once, with the fault-free reply, within 1.5× the fault-free wall time.
    Faults,
    /// Server-enforced RPM: pacing must reach the limit without provoking 429s.
    Rate,
    /// Zero latency: client CPU per request.
    Overhead,
    /// Many records: peak memory must stay bounded.
    Scale,
    /// 100,000 records through the OpenAI Batch API (two jobs): peak memory < 256 MiB.
    Batch,
    /// The embedded model: generated tok/s with 8, 16 and 32 concurrent requests vs one at a
    /// time, and with prompt KV sharing on vs off on a voice-prompts-like workload.
    Local,
    /// One alias over 4 replicas (`base_urls`, 64 each): ≥ 3.8× one server's throughput, and
    /// every record answered exactly once when a replica is killed mid-run.
    Replicas,
    All,
}

/// Workloads of the local-model scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LocalWorkload {
    /// Generated tok/s, 8/16/32 concurrent vs one at a time.
    Batching,
    /// Voice-prompts-like (shared system prompt, best-of-n candidates): prefix sharing on vs off.
    Voice,
    /// Both, one after the other.
    Both,
}

/// Response cache setting of the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CacheChoice {
    /// With the durable response cache (what a real run does).
    On,
    /// `--no-cache`: the dispatcher alone.
    Off,
    /// Both, one after the other.
    Both,
}

/// Flags of `cargo xtask bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: ScenarioChoice,
    #[arg(long, value_enum, default_value = "both")]
    pub cache: CacheChoice,
    /// Requests of the latency-bound scenario.
    #[arg(long, default_value_t = 5000)]
    pub latency_requests: u64,
    /// Mean server latency of the latency-bound, jitter, stragglers and faults scenarios (ms).
    #[arg(long, default_value_t = 500)]
    pub latency_ms: u64,
    /// Latency jitter of the latency-bound scenario: each answer takes latency ± this (uniform).
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Requests in flight (max_concurrency and --workers) of the latency-bound, jitter and
    /// stragglers scenarios.
    #[arg(long, default_value_t = 512)]
    pub latency_in_flight: usize,
    /// Requests of the jitter scenario.
    #[arg(long, default_value_t = 20_000)]
    pub jitter_requests: u64,
    /// Latency jitter of the jitter scenario (± ms around `--latency-ms`).
    #[arg(long, default_value_t = 450)]
    pub jitter_ms: u64,
    /// Requests of the stragglers scenario.
    #[arg(long, default_value_t = 5000)]
    pub straggler_requests: u64,
    /// Share of requests that are stragglers.
    #[arg(long, default_value_t = 0.01)]
    pub straggler_share: f64,
    /// How long a straggler takes (ms).
    #[arg(long, default_value_t = 10_000)]
    pub straggler_ms: u64,
    /// Latency jitter of the other requests of the stragglers and faults scenarios (± ms).
    #[arg(long, default_value_t = 100)]
    pub straggler_jitter_ms: u64,
    /// Records of the faults scenario.
    #[arg(long, default_value_t = 1000)]
    pub faults_records: u64,
    /// Requests in flight of the faults scenario.
    #[arg(long, default_value_t = 64)]
    pub faults_in_flight: usize,
    /// Client timeout of the faults scenario (s); hanging requests are held twice as long.
    #[arg(long, default_value_t = 2.0)]
    pub faults_timeout_secs: f64,
    /// Requests of the rate-limited scenario.
    #[arg(long, default_value_t = 1500)]
    pub rate_requests: u64,
    /// RPM enforced by the server (1 s windows) and configured on the client.
    #[arg(long, default_value_t = 3000)]
    pub rate_rpm: u32,
    /// Server latency of the rate-limited scenario (ms).
    #[arg(long, default_value_t = 300)]
    pub rate_latency_ms: u64,
    /// Requests of the overhead scenario.
    #[arg(long, default_value_t = 20_000)]
    pub overhead_requests: u64,
    /// Concurrency of the overhead and scale scenarios.
    #[arg(long, default_value_t = 64)]
    pub overhead_concurrency: usize,
    /// Records of the scale scenario.
    #[arg(long, default_value_t = 100_000)]
    pub scale_records: u64,
    /// Records of the batch scenario (two jobs of 50,000 at OpenAI's limit).
    #[arg(long, default_value_t = 100_000)]
    pub batch_records: u64,
    /// How long each job of the batch scenario takes at the mock (ms).
    #[arg(long, default_value_t = 2000)]
    pub batch_latency_ms: u64,
    /// Tokio worker threads of the mock server (2: a one-thread server falls behind the client
    /// when 512 responses come due in the same millisecond, and the bench measures the client).
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Generation rounds per sequence slot of the local-model scenario (more rounds: a smaller
    /// share of the run where the last requests finish one by one).
    #[arg(long, default_value_t = 4)]
    pub local_rounds: usize,
    /// `max_tokens` of each local-model request.
    #[arg(long, default_value_t = 128)]
    pub local_max_tokens: u32,
    /// `top_p` of the local-model requests (default: none, temperature 0.8 only).
    #[arg(long)]
    pub local_top_p: Option<f32>,
    /// Weights of the local-model scenario: `q8_0` (the re-encoded working copy the example
    /// aliases use) or `none` (the Q4_1 GGUF as it is).
    #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "none"])]
    pub local_requantize: String,
    /// Which workloads the local-model scenario runs.
    #[arg(long, value_enum, default_value = "both")]
    pub local_workload: LocalWorkload,
    /// Distinct questions per run of the local voice workload (each run asks its own).
    #[arg(long, default_value_t = 8)]
    pub local_voice_prompts: usize,
    /// Candidates per question of the local voice workload (best-of-n: same messages, other
    /// seeds); a comma-separated list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "4,1")]
    pub local_voice_candidates: Vec<usize>,
    /// Use the built binaries as they are (no `cargo build`).
    #[arg(long)]
    pub no_build: bool,
    /// Keep the temporary repositories (printed) for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// One benchmark configuration.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    requests: u64,
    mock: MockBehaviour,
    client_rpm: Option<u32>,
    max_concurrency: usize,
    workers: Option<usize>,
    timeout_secs: f64,
    goal: Goal,
}

/// What a scenario must achieve.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Achieved rate ≥ `share` of in-flight ÷ latency. With `waves` (no jitter) the ideal
    /// schedule is ceil(n / in-flight) latencies; otherwise n / in-flight mean latencies.
    LatencyBound { share: f64, waves: bool },
    /// Achieved rate ≥ `share` of the RPM and < `max_429_share` of requests answered 429.
    RateBound { share: f64, max_429_share: f64 },
    /// Client CPU per request ≤ this many µs (the bare baseline client's CPU per request, in the
    /// same run, is printed beside it: the host's speed moves both).
    CpuPerRequest { micros: f64 },
    /// Peak RSS below this many MiB.
    PeakRss { mib: f64 },
    /// Process wall time ≤ `max_ratio` × the bare baseline client's against the same mock.
    Baseline { max_ratio: f64 },
    /// Wall time ≤ `max_ratio` × the same run without faults, and every record answered once
    /// with the reply the fault-free run got.
    FaultFree { max_ratio: f64 },
}

/// Measurements of one run.
#[derive(Debug, Clone)]
struct Measured {
    wall: Duration,
    run_wall_secs: f64,
    cpu: Duration,
    max_rss_kib: u64,
    requests_sent: u64,
    retries: u64,
    cache_hits: u64,
    samples: u64,
    errors: u64,
    server: Value,
    /// Sample id → how many lines carried it, and the assistant text of the last one (only
    /// collected when the scenario checks its output).
    replies: Option<BTreeMap<String, (u32, String)>>,
}

impl Measured {
    /// Client CPU (user + sys) per request, in µs.
    fn cpu_us_per_request(&self, requests: u64) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / requests as f64
    }

    /// The client's peak resident memory, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// What a run is judged against, measured in the same `cargo xtask bench`.
enum Reference<'a> {
    None,
    Baseline(&'a BaselineRun),
    FaultFree(&'a Measured),
}

/// How a run fared against its scenario's goal.
struct Verdict {
    /// The bound, as printed.
    bound: String,
    /// The achieved share of the bound (or the measured ÷ allowed figure).
    ratio: f64,
    /// Why the target was missed, if it was.
    miss: Option<String>,
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn bench_cmd(args: BenchArgs, root: &Path) -> Result<()> {
    let root = root.to_owned();
    let target = target_dir(&root)?;
    let mut failures = Vec::new();
    let dispatcher_scenarios = scenarios(&args);
    if !dispatcher_scenarios.is_empty() {
        run_dispatcher_scenarios(&args, &root, &target, &dispatcher_scenarios, &mut failures)?;
    }
    if matches!(args.scenario, ScenarioChoice::Local | ScenarioChoice::All) {
        local::run_local_scenario(&args, &root, &target, &mut failures)?;
    }
    if matches!(
        args.scenario,
        ScenarioChoice::Replicas | ScenarioChoice::All
    ) {
        replicas::run_replicas_scenario(&args, &root, &target, &mut failures)?;
    }
    if failures.is_empty() {
        println!("\nall targets met");
        Ok(())
    } else {
        println!("\ntargets missed:");
        for f in &failures {
            println!("  - {f}");
        }
        bail!("{} target(s) missed", failures.len())
    }
}

fn run_dispatcher_scenarios(
    args: &BenchArgs,
    root: &Path,
    target: &Path,
    scenarios: &[Scenario],
    failures: &mut Vec<String>,
) -> Result<()> {
    let binaries = build_binaries(args, root, target)?;
    let caches: &[bool] = match args.cache {
        CacheChoice::On => &[true],
        CacheChoice::Off => &[false],
        CacheChoice::Both => &[false, true],
    };
    for scenario in scenarios {
        let baseline = match scenario.goal {
            Goal::Baseline { .. } | Goal::CpuPerRequest { .. } => {
                eprintln!(
                    "bench: running {} with the bare baseline client: {} requests…",
                    scenario.name, scenario.requests
                );
                let run = run_baseline(scenario, args, &binaries)
                    .with_context(|| format!("scenario {} (baseline client)", scenario.name))?;
                Some(run)
            }
            _ => None,
        };
        for &cache in caches {
            let label = format!(
                "{} ({})",
                scenario.name,
                if cache { "cache on" } else { "--no-cache" }
            );
            let fault_free = match scenario.goal {
                Goal::FaultFree { .. } => {
                    let mut reference = scenario.clone();
                    reference.mock.faults = None;
                    eprintln!(
                        "bench: running {label} without faults: {} requests…",
                        scenario.requests
                    );
                    Some(
                        run_scenario(&reference, cache, args, &binaries)
                            .with_context(|| format!("scenario {label} without faults"))?,
                    )
                }
                _ => None,
            };
            eprintln!("bench: running {label}: {} requests…", scenario.requests);
            let measured = run_scenario(scenario, cache, args, &binaries)
                .with_context(|| format!("scenario {label}"))?;
            let reference = match (&baseline, &fault_free) {
                (Some(run), _) => Reference::Baseline(run),
                (_, Some(run)) => Reference::FaultFree(run),
                _ => Reference::None,
            };
            if let Some(miss) = report(&label, scenario, &measured, &reference) {
                failures.push(format!("{label}: {miss}"));
            }
        }
    }
    Ok(())
}

/// The dispatcher scenarios `--scenario` selects, in a fixed order.
fn scenarios(args: &BenchArgs) -> Vec<Scenario> {
    type Make = fn(&BenchArgs) -> Scenario;
    let all: [(ScenarioChoice, Make); 8] = [
        (ScenarioChoice::Latency, latency::scenario),
        (ScenarioChoice::Jitter, jitter::scenario),
        (ScenarioChoice::Stragglers, stragglers::scenario),
        (ScenarioChoice::Faults, faults::scenario),
        (ScenarioChoice::Rate, rate::scenario),
        (ScenarioChoice::Overhead, overhead::scenario),
        (ScenarioChoice::Scale, scale::scenario),
        (ScenarioChoice::Batch, batch::scenario),
    ];
    all.into_iter()
        .filter(|(choice, _)| args.scenario == ScenarioChoice::All || args.scenario == *choice)
        .map(|(_, scenario)| scenario(args))
        .collect()
}

/// `cargo build --quiet ARGS` in the workspace.
fn cargo_build(root: &Path, args: &[&str]) -> Result<()> {
    let status = shaping::repo::cargo_command()
        .current_dir(root)
        .args(["build", "--quiet"])
        .args(args)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build {} failed", args.join(" "));
    }
    Ok(())
}

fn target_dir(root: &Path) -> Result<PathBuf> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("reading cargo metadata")?;
    Ok(metadata.target_directory.into())
}

/// Print one scenario's figures; returns why its target was missed, if it was.
fn report(
    label: &str,
    scenario: &Scenario,
    m: &Measured,
    reference: &Reference<'_>,
) -> Option<String> {
    let n = scenario.requests as f64;
    let secs = m.wall.as_secs_f64();
    let rate = n / secs;
    let server_429 = m.server["rate_limited"].as_u64().unwrap_or(0);
    let received = m.server["received"].as_u64().unwrap_or(0);
    let cpu_us = m.cpu_us_per_request(scenario.requests);
    let rss_mib = m.peak_rss_mib();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n== {label}");
    let mock = &scenario.mock;
    let mut behaviour = format!("{} ± {} ms", mock.latency_ms, mock.jitter_ms);
    if let Some(s) = mock.stragglers {
        behaviour.push_str(&format!(
            ", {:.1}% stragglers at {} ms",
            s.share * 100.0,
            s.ms
        ));
    }
    if let Some(f) = mock.faults {
        behaviour.push_str(&format!(", {}", f.describe()));
    }
    let _ = writeln!(
        out,
        "  mock            {behaviour}; {} in flight, client timeout {} s",
        scenario.workers.unwrap_or(scenario.max_concurrency),
        scenario.timeout_secs
    );
    let _ = writeln!(
        out,
        "  requests        {} (server received {received}, client sent {}, cache hits {})",
        scenario.requests, m.requests_sent, m.cache_hits
    );
    let _ = writeln!(
        out,
        "  wall time       {secs:.3} s (process), {:.3} s (run, from the manifest)",
        m.run_wall_secs
    );
    let _ = writeln!(
        out,
        "  achieved        {:.1} req/s during the run, {rate:.1} req/s over the whole process",
        n / m.run_wall_secs.max(1e-9)
    );
    let Verdict {
        bound: bound_text,
        ratio,
        miss,
    } = match scenario.goal {
        Goal::LatencyBound { share, waves } => latency::judge(&mut out, scenario, m, share, waves),
        Goal::RateBound {
            share,
            max_429_share,
        } => rate::judge(scenario, m, share, max_429_share),
        Goal::CpuPerRequest { micros } => overhead::judge(&mut out, scenario, m, reference, micros),
        Goal::PeakRss { mib } => scale::judge(m, mib),
        Goal::Baseline { max_ratio } => stragglers::judge(&mut out, m, reference, max_ratio),
        Goal::FaultFree { max_ratio } => faults::judge(&mut out, scenario, m, reference, max_ratio),
    };
    let _ = writeln!(out, "  bound           {bound_text}");
    let _ = writeln!(out, "  ratio           {:.1}%", ratio * 100.0);
    let _ = writeln!(
        out,
        "  429s provoked   {server_429} (server max {} received / 1 s window)",
        m.server["max_received_per_1s"]
    );
    let _ = writeln!(out, "  retries         {}", m.retries);
    let _ = writeln!(
        out,
        "  client CPU      {:.3} s = {cpu_us:.1} µs per request",
        m.cpu.as_secs_f64()
    );
    let _ = writeln!(out, "  peak RSS        {rss_mib:.1} MiB");
    let _ = writeln!(
        out,
        "  target          {}",
        match &miss {
            None => "met".to_owned(),
            Some(why) => format!("MISSED: {why}"),
        }
    );
    miss
}
