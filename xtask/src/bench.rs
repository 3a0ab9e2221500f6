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

mod local;
mod replicas;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// Which scenario(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioChoice {
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
pub enum LocalWorkload {
    /// Generated tok/s, 8/16/32 concurrent vs one at a time.
    Batching,
    /// Voice-prompts-like (shared system prompt, best-of-n candidates): prefix sharing on vs off.
    Voice,
    /// Both, one after the other.
    Both,
}

/// Response cache setting of the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheChoice {
    /// With the durable response cache (what a real run does).
    On,
    /// `--no-cache`: the dispatcher alone.
    Off,
    /// Both, one after the other.
    Both,
}

/// Flags of `cargo xtask bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
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

/// What the mock server does with each request.
#[derive(Debug, Clone, Default)]
struct MockBehaviour {
    /// Mean latency of an answer (ms).
    latency_ms: u64,
    /// Each answer takes `latency_ms` ± this, uniformly (ms).
    jitter_ms: u64,
    /// Requests per minute the server enforces.
    rpm: Option<u32>,
    stragglers: Option<Stragglers>,
    faults: Option<FaultMix>,
}

/// A share of requests answered correctly but very late.
#[derive(Debug, Clone, Copy)]
struct Stragglers {
    share: f64,
    ms: u64,
}

/// Shares of requests that fail, each way.
#[derive(Debug, Clone, Copy)]
struct FaultMix {
    /// HTTP 500.
    server_errors: f64,
    /// Headers and half the body, then the connection closes.
    cut_mid_body: f64,
    /// A complete 200 whose body is not JSON.
    malformed: f64,
    /// Held `hang_ms`, past the client's timeout.
    hang: f64,
    hang_ms: u64,
}

impl FaultMix {
    /// The mix of `cargo xtask bench --scenario faults`.
    fn production(hang_ms: u64) -> Self {
        Self {
            server_errors: 0.05,
            cut_mid_body: 0.02,
            malformed: 0.01,
            hang: 0.01,
            hang_ms,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:.0}% HTTP 500, {:.0}% cut mid-body, {:.0}% malformed JSON, {:.0}% hanging {} ms",
            self.server_errors * 100.0,
            self.cut_mid_body * 100.0,
            self.malformed * 100.0,
            self.hang * 100.0,
            self.hang_ms
        )
    }
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
    /// Client CPU per request ≤ this many µs.
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

/// What a run is judged against, measured in the same `cargo xtask bench`.
enum Reference<'a> {
    None,
    Baseline(&'a BaselineRun),
    FaultFree(&'a Measured),
}

/// One run of the bare baseline client.
#[derive(Debug, Clone)]
struct BaselineRun {
    wall: Duration,
    answered: u64,
    failed: u64,
    cpu: Duration,
}

/// The binaries a dispatcher scenario runs.
struct Binaries {
    pipeline: PathBuf,
    baseline: PathBuf,
    server: PathBuf,
}

/// Entry point of `cargo xtask bench`.
pub fn bench_cmd(args: BenchArgs, root: &Path) -> Result<()> {
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

/// Build the binaries: the pipeline and the baseline client in the dev profile, as `cargo
/// xtask run` builds pipelines (Cargo.toml's `[profile.dev]` settings apply); the mock server
/// in release, so that it never is what limits the client.
fn build_binaries(args: &BenchArgs, root: &Path, target: &Path) -> Result<Binaries> {
    if !args.no_build {
        cargo_build(root, &["-p", "shaping-bench", "--bins"])?;
        cargo_build(root, &["--release", "-p", "testkit", "--bin", "mock-llm"])?;
    }
    let binaries = Binaries {
        pipeline: target.join("debug").join("bench-pipeline"),
        baseline: target.join("debug").join("bench-baseline"),
        server: target.join("release").join("mock-llm"),
    };
    for bin in [&binaries.pipeline, &binaries.baseline, &binaries.server] {
        if !bin.is_file() {
            bail!("{} not found (build without --no-build)", bin.display());
        }
    }
    Ok(binaries)
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
            Goal::Baseline { .. } => {
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

fn scenarios(args: &BenchArgs) -> Vec<Scenario> {
    let all = args.scenario == ScenarioChoice::All;
    let wants = |choice| all || args.scenario == choice;
    let in_flight = args.latency_in_flight;
    let mut list = Vec::new();
    if wants(ScenarioChoice::Latency) {
        list.push(Scenario {
            name: "latency-bound",
            requests: args.latency_requests,
            mock: MockBehaviour {
                latency_ms: args.latency_ms,
                jitter_ms: args.latency_jitter_ms,
                ..MockBehaviour::default()
            },
            client_rpm: None,
            max_concurrency: in_flight,
            workers: Some(in_flight),
            timeout_secs: 60.0,
            goal: Goal::LatencyBound {
                share: 0.98,
                waves: args.latency_jitter_ms == 0,
            },
        });
    }
    if wants(ScenarioChoice::Jitter) {
        list.push(Scenario {
            name: "jitter",
            requests: args.jitter_requests,
            mock: MockBehaviour {
                latency_ms: args.latency_ms,
                jitter_ms: args.jitter_ms,
                ..MockBehaviour::default()
            },
            client_rpm: None,
            max_concurrency: in_flight,
            workers: Some(in_flight),
            timeout_secs: 60.0,
            goal: Goal::LatencyBound {
                share: 0.95,
                waves: false,
            },
        });
    }
    if wants(ScenarioChoice::Stragglers) {
        list.push(Scenario {
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
            max_concurrency: in_flight,
            workers: Some(in_flight),
            timeout_secs: 60.0,
            goal: Goal::Baseline { max_ratio: 1.1 },
        });
    }
    if wants(ScenarioChoice::Faults) {
        let hang_ms = (args.faults_timeout_secs * 2000.0).round() as u64;
        list.push(Scenario {
            name: "faults",
            requests: args.faults_records,
            mock: MockBehaviour {
                latency_ms: args.latency_ms,
                jitter_ms: args.straggler_jitter_ms,
                faults: Some(FaultMix::production(hang_ms)),
                ..MockBehaviour::default()
            },
            client_rpm: None,
            max_concurrency: args.faults_in_flight,
            workers: None,
            timeout_secs: args.faults_timeout_secs,
            goal: Goal::FaultFree { max_ratio: 1.5 },
        });
    }
    if wants(ScenarioChoice::Rate) {
        list.push(Scenario {
            name: "rate-limited",
            requests: args.rate_requests,
            mock: MockBehaviour {
                latency_ms: args.rate_latency_ms,
                rpm: Some(args.rate_rpm),
                ..MockBehaviour::default()
            },
            client_rpm: Some(args.rate_rpm),
            max_concurrency: 256,
            workers: None,
            timeout_secs: 60.0,
            goal: Goal::RateBound {
                share: 0.97,
                max_429_share: 0.01,
            },
        });
    }
    if wants(ScenarioChoice::Overhead) {
        list.push(Scenario {
            name: "overhead",
            requests: args.overhead_requests,
            mock: MockBehaviour::default(),
            client_rpm: None,
            max_concurrency: args.overhead_concurrency,
            workers: None,
            timeout_secs: 60.0,
            goal: Goal::CpuPerRequest { micros: 100.0 },
        });
    }
    if wants(ScenarioChoice::Scale) {
        list.push(Scenario {
            name: "scale",
            requests: args.scale_records,
            mock: MockBehaviour::default(),
            client_rpm: None,
            max_concurrency: args.overhead_concurrency,
            workers: None,
            timeout_secs: 60.0,
            goal: Goal::PeakRss { mib: 256.0 },
        });
    }
    list
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

/// The mock server child: its stdin (closing it makes the server print stats and exit) and stdout.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    base_url: String,
}

impl Server {
    fn start(bin: &Path, mock: &MockBehaviour, threads: usize) -> Result<Self> {
        let mut cmd = Command::new(bin);
        let jitter = mock.jitter_ms.min(mock.latency_ms);
        cmd.arg("--latency-ms")
            .arg((mock.latency_ms - jitter).to_string())
            .arg("--jitter-ms")
            .arg((2 * jitter).to_string())
            .arg("--threads")
            .arg(threads.max(1).to_string())
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(rpm) = mock.rpm {
            cmd.arg("--rpm").arg(rpm.to_string());
        }
        if let Some(stragglers) = mock.stragglers {
            cmd.arg("--straggler-rate")
                .arg(stragglers.share.to_string())
                .arg("--straggler-ms")
                .arg(stragglers.ms.to_string());
        }
        if let Some(faults) = mock.faults {
            cmd.arg("--fault-rate-500")
                .arg(faults.server_errors.to_string())
                .arg("--fault-rate-close-mid-body")
                .arg(faults.cut_mid_body.to_string())
                .arg("--fault-rate-invalid-json")
                .arg(faults.malformed.to_string())
                .arg("--fault-rate-hang")
                .arg(faults.hang.to_string())
                .arg("--hang-ms")
                .arg(faults.hang_ms.to_string());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("mock-llm stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).context("reading mock-llm")?;
        let Some(base_url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("unexpected first line from mock-llm: {line:?}");
        };
        Ok(Self {
            base_url: base_url.to_owned(),
            child,
            stdin,
            stdout,
        })
    }

    /// Stop the server and return its final stats line.
    fn finish(mut self) -> Result<Value> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading mock-llm stats")?;
        let _ = self.child.wait();
        serde_json::from_str(line.trim()).with_context(|| format!("mock-llm stats line {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn models_toml(scenario: &Scenario, base_url: &str) -> String {
    let mut text = format!(
        "[models.bench]\nprovider = \"openai\"\nmodel = \"bench-model\"\nbase_url = \"{base_url}\"\nmax_concurrency = {}\ntimeout_secs = {}\nmax_retries = 8\n",
        scenario.max_concurrency, scenario.timeout_secs
    );
    if let Some(rpm) = scenario.client_rpm {
        text.push_str(&format!("rpm = {rpm}\n"));
    }
    text
}

/// The bare baseline client against a fresh mock server with the scenario's behaviour.
fn run_baseline(scenario: &Scenario, args: &BenchArgs, binaries: &Binaries) -> Result<BaselineRun> {
    let server = Server::start(&binaries.server, &scenario.mock, args.server_threads)?;
    let in_flight = scenario.workers.unwrap_or(scenario.max_concurrency);
    let started = Instant::now();
    let child = Command::new(&binaries.baseline)
        .arg(&server.base_url)
        .arg(scenario.requests.to_string())
        .arg(in_flight.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binaries.baseline.display()))?;
    let (status, usage, printed) = wait_with_rusage_and_stdout(child)?;
    let wall = started.elapsed();
    server.finish()?;
    if !status.success() {
        bail!("bench-baseline failed ({status})");
    }
    let line: Value = serde_json::from_str(printed.trim())
        .with_context(|| format!("bench-baseline printed {printed:?}"))?;
    Ok(BaselineRun {
        wall,
        answered: line["answered"].as_u64().unwrap_or(0),
        failed: line["failed"].as_u64().unwrap_or(0),
        cpu: usage.cpu,
    })
}

fn run_scenario(
    scenario: &Scenario,
    cache: bool,
    args: &BenchArgs,
    binaries: &Binaries,
) -> Result<Measured> {
    let repo = tempfile_dir()?;
    let server = Server::start(&binaries.server, &scenario.mock, args.server_threads)?;
    std::fs::write(
        repo.join("models.toml"),
        models_toml(scenario, &server.base_url),
    )
    .context("writing models.toml")?;
    let log_path = repo.join("bench-pipeline.log");
    let log = std::fs::File::create(&log_path).context("creating the run log")?;

    let mut cmd = Command::new(&binaries.pipeline);
    cmd.arg("--quiet")
        .env("SHAPING_ROOT", &repo)
        .env("SHAPING_BENCH_RECORDS", scenario.requests.to_string())
        .env_remove("SHAPING_BUDGET_SHARE")
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(workers) = scenario.workers {
        cmd.arg("--workers").arg(workers.to_string());
    }
    if !cache {
        cmd.arg("--no-cache");
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binaries.pipeline.display()))?;
    let (status, usage) = wait_with_rusage(child)?;
    let wall = started.elapsed();
    let server_stats = server.finish()?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("bench-pipeline failed ({status}):\n{log}");
    }

    let manifest_path = repo.join("training/data/bench.manifest.json");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .context("parsing the manifest")?;
    let run = &manifest["run"];
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    let replies = match scenario.goal {
        Goal::FaultFree { .. } => Some(read_replies(&repo.join("training/data/bench.jsonl"))?),
        _ => None,
    };
    let measured = Measured {
        wall,
        run_wall_secs: run["wall_time_secs"].as_f64().unwrap_or(0.0),
        cpu: usage.cpu,
        max_rss_kib: usage.max_rss_kib,
        requests_sent: number(&run["requests_sent"]),
        retries: number(&run["retries"]),
        cache_hits: number(&run["cache_hits"]),
        samples: number(&manifest["samples"]),
        errors: number(&manifest["errors"]),
        server: server_stats,
        replies,
    };
    if measured.samples != scenario.requests {
        bail!(
            "expected {} samples, the run wrote {} (log: {})",
            scenario.requests,
            measured.samples,
            log_path.display()
        );
    }
    if args.keep {
        eprintln!("bench: kept {}", repo.display());
    } else {
        let _ = std::fs::remove_dir_all(&repo);
    }
    Ok(measured)
}

/// Every sample of an output: id → (lines carrying it, assistant text).
fn read_replies(path: &Path) -> Result<BTreeMap<String, (u32, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut replies: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let sample: Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
        let id = sample["id"].as_str().unwrap_or_default().to_owned();
        let text = sample["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let entry = replies.entry(id).or_default();
        entry.0 += 1;
        entry.1 = text;
    }
    Ok(replies)
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

/// A fresh temporary directory (not removed automatically; see `--keep`).
fn tempfile_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("shaping-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Resource usage of one finished child.
struct ChildUsage {
    cpu: Duration,
    max_rss_kib: u64,
}

/// Wait for `child` (its stdout piped) reading all of its stdout; returns the exit status,
/// its resource usage and what it printed.
fn wait_with_rusage_and_stdout(
    mut child: Child,
) -> Result<(std::process::ExitStatus, ChildUsage, String)> {
    let mut printed = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut printed).context("reading stdout")?;
    }
    let (status, usage) = wait_with_rusage(child)?;
    Ok((status, usage, printed))
}

/// Wait for `child` with `wait4`, returning its exit status and its own resource usage.
fn wait_with_rusage(child: Child) -> Result<(std::process::ExitStatus, ChildUsage)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(child.id()).context("child pid")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; `pid` is our child, not yet reaped.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    drop(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok((
        std::process::ExitStatus::from_raw(status),
        ChildUsage {
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            // Linux reports kilobytes.
            max_rss_kib: usage.ru_maxrss as u64,
        },
    ))
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
    let cpu_us = m.cpu.as_secs_f64() * 1e6 / n;
    let rss_mib = m.max_rss_kib as f64 / 1024.0;
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
    let (bound_text, ratio, miss) = match scenario.goal {
        Goal::LatencyBound { share, waves } => {
            let configured = mock.latency_ms as f64 / 1000.0;
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
            (
                format!(
                    "{bound:.1} req/s (in-flight {in_flight} ÷ mean latency {:.2} ms as the server \
                     held requests, {configured} s configured); ideal wall {ideal:.3} s",
                    latency * 1000.0
                ),
                ratio,
                (ratio < share)
                    .then(|| format!("{:.1}% of the bound < {:.0}%", ratio * 100.0, share * 100.0)),
            )
        }
        Goal::RateBound {
            share,
            max_429_share,
        } => {
            let bound = mock.rpm.unwrap_or(1) as f64 / 60.0;
            let ratio = rate / bound;
            let share_429 = server_429 as f64 / received.max(1) as f64;
            let miss = if ratio < share {
                Some(format!(
                    "{:.1}% of the limit < {:.0}%",
                    ratio * 100.0,
                    share * 100.0
                ))
            } else if share_429 >= max_429_share {
                Some(format!(
                    "{:.2}% of requests answered 429",
                    share_429 * 100.0
                ))
            } else {
                None
            };
            (
                format!("{bound:.1} req/s (RPM {})", mock.rpm.unwrap_or(0)),
                ratio,
                miss,
            )
        }
        Goal::CpuPerRequest { micros } => (
            format!("≤ {micros} µs client CPU per request"),
            cpu_us / micros,
            (cpu_us > micros).then(|| format!("{cpu_us:.1} µs CPU per request > {micros} µs")),
        ),
        Goal::PeakRss { mib } => (
            format!("peak RSS < {mib} MiB"),
            rss_mib / mib,
            (rss_mib >= mib).then(|| format!("peak RSS {rss_mib:.1} MiB ≥ {mib} MiB")),
        ),
        Goal::Baseline { max_ratio } => match reference {
            Reference::Baseline(baseline) => {
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
                    (ratio > max_ratio).then(|| {
                        format!("wall {ratio:.2}× the bare baseline client's > {max_ratio}×")
                    })
                };
                (
                    format!(
                        "process wall ≤ {max_ratio}× the bare baseline client's (run wall {:.2}×)",
                        m.run_wall_secs / base.max(1e-9)
                    ),
                    ratio,
                    miss,
                )
            }
            _ => (
                "the bare baseline client".to_owned(),
                f64::NAN,
                Some("no baseline run to compare with".to_owned()),
            ),
        },
        Goal::FaultFree { max_ratio } => match reference {
            Reference::FaultFree(fault_free) => {
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
                    (Some(expected), Some(got)) => {
                        compare_replies(scenario.requests, expected, got)
                    }
                    _ => Some("the outputs were not read".to_owned()),
                };
                let _ = writeln!(
                    out,
                    "  output          {} samples, {} error records: {}",
                    m.samples,
                    m.errors,
                    match &output_problem {
                        None => "every record answered exactly once, each with the fault-free run's reply".to_owned(),
                        Some(problem) => problem.clone(),
                    }
                );
                let miss = if let Some(problem) = output_problem {
                    Some(problem)
                } else if m.errors > 0 {
                    Some(format!("{} records failed", m.errors))
                } else {
                    (ratio > max_ratio)
                        .then(|| format!("wall {ratio:.2}× the fault-free run's > {max_ratio}×"))
                };
                (
                    format!(
                        "process wall ≤ {max_ratio}× the same run without faults (run wall {:.2}×)",
                        m.run_wall_secs / fault_free.run_wall_secs.max(1e-9)
                    ),
                    ratio,
                    miss,
                )
            }
            _ => (
                "the same run without faults".to_owned(),
                f64::NAN,
                Some("no fault-free run to compare with".to_owned()),
            ),
        },
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
