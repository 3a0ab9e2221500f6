//! Shared driver of the dispatcher scenarios: the `mock-llm` server child and its behaviour, one run of `bench-pipeline` (or of the bare baseline client) in a temporary repository, and the child's CPU time and peak RSS from `wait4`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BenchArgs, Goal, Measured, Scenario, cargo_build};

/// What the mock server does with each request.
#[derive(Debug, Clone, Default)]
pub(super) struct MockBehaviour {
    /// Mean latency of an answer (ms).
    pub(super) latency_ms: u64,
    /// Each answer takes `latency_ms` ± this, uniformly (ms).
    pub(super) jitter_ms: u64,
    /// Requests per minute the server enforces.
    pub(super) rpm: Option<u32>,
    pub(super) stragglers: Option<Stragglers>,
    pub(super) faults: Option<FaultMix>,
    /// Requests the server serves at once (more queue, like vLLM's `--max-num-seqs`).
    pub(super) max_in_flight: Option<usize>,
    /// Batch mode: the client sends through the Batch API, and each job ends this long after
    /// it is created (ms).
    pub(super) batch_latency_ms: Option<u64>,
}

/// A share of requests answered correctly but very late.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stragglers {
    pub(super) share: f64,
    pub(super) ms: u64,
}

/// Shares of requests that fail, each way.
#[derive(Debug, Clone, Copy)]
pub(super) struct FaultMix {
    /// HTTP 500.
    pub(super) server_errors: f64,
    /// Headers and half the body, then the connection closes.
    pub(super) cut_mid_body: f64,
    /// A complete 200 whose body is not JSON.
    pub(super) malformed: f64,
    /// Held `hang_ms`, past the client's timeout.
    pub(super) hang: f64,
    pub(super) hang_ms: u64,
}

impl FaultMix {
    pub(super) fn describe(&self) -> String {
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

/// One run of the bare baseline client.
#[derive(Debug, Clone)]
pub(super) struct BaselineRun {
    pub(super) wall: Duration,
    pub(super) answered: u64,
    pub(super) failed: u64,
    pub(super) cpu: Duration,
}

/// The binaries a dispatcher scenario runs.
pub(super) struct Binaries {
    pipeline: PathBuf,
    baseline: PathBuf,
    server: PathBuf,
}

/// Build the binaries: the pipeline and the baseline client in the dev profile, as `cargo
/// xtask run` builds pipelines (Cargo.toml's `[profile.dev]` settings apply); the mock server
/// in release, so that it never is what limits the client.
pub(super) fn build_binaries(args: &BenchArgs, root: &Path, target: &Path) -> Result<Binaries> {
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

/// The mock server child: its stdin (closing it makes the server print stats and exit) and stdout.
pub(super) struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub(super) base_url: String,
}

impl Server {
    pub(super) fn start(bin: &Path, mock: &MockBehaviour, threads: usize) -> Result<Self> {
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
        if let Some(n) = mock.max_in_flight {
            cmd.arg("--max-in-flight").arg(n.to_string());
        }
        if let Some(ms) = mock.batch_latency_ms {
            cmd.arg("--batch-latency-ms").arg(ms.to_string());
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
    pub(super) fn finish(mut self) -> Result<Value> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading mock-llm stats")?;
        let _ = self.child.wait();
        serde_json::from_str(line.trim()).with_context(|| format!("mock-llm stats line {line:?}"))
    }

    /// SIGKILL: no stats, connections cut, the port closed.
    pub(super) fn kill(mut self) -> Result<()> {
        drop(self.stdin.take());
        self.child.kill().context("killing mock-llm")?;
        let _ = self.child.wait();
        Ok(())
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
    if scenario.mock.batch_latency_ms.is_some() {
        text.push_str("batch = true\nbatch_poll_secs = 0.5\nbatch_collect_secs = 0.5\n");
    }
    text
}

/// The bare baseline client against a fresh mock server with the scenario's behaviour.
pub(super) fn run_baseline(
    scenario: &Scenario,
    args: &BenchArgs,
    binaries: &Binaries,
) -> Result<BaselineRun> {
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

pub(super) fn run_scenario(
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

/// Every sample of an output: id → (lines carrying it, assistant text).
pub(super) fn read_replies(path: &Path) -> Result<BTreeMap<String, (u32, String)>> {
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
