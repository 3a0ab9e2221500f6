//! `mock-llm`: run the testkit mock OpenAI/Anthropic server as a standalone process.
//!
//! Prints `listening on http://127.0.0.1:PORT/v1` as the first stdout line, then serves until
//! SIGTERM / ctrl-c (or stdin EOF with `--exit-on-stdin-eof`), then prints one JSON stats line.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use testkit::{Fault, FaultPlan, MockConfig, MockServer};

#[derive(Debug, Parser)]
#[command(
    name = "mock-llm",
    about = "Mock OpenAI / Anthropic LLM server on 127.0.0.1"
)]
struct Args {
    /// Port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Base latency per successful response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra uniform random latency in [0, jitter] milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Simulated generation speed (completion tokens per second).
    #[arg(long)]
    tokens_per_second: Option<f64>,
    /// Requests per minute (enforced over a sliding 1 s window as rpm/60).
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute (enforced over a sliding 1 s window as tpm/60).
    #[arg(long)]
    tpm: Option<u32>,
    /// Requests served at once (an inference server's batch size): more wait in a queue before
    /// their latency starts.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Probability of an injected 429 per request.
    #[arg(long, default_value_t = 0.0)]
    fault_rate_429: f64,
    /// Probability of an injected 500 per request.
    #[arg(long, default_value_t = 0.0)]
    fault_rate_500: f64,
    /// Probability of a connection reset per request.
    #[arg(long, default_value_t = 0.0)]
    fault_rate_reset: f64,
    /// Probability per request of headers and half the body, then a closed connection.
    #[arg(long, default_value_t = 0.0)]
    fault_rate_close_mid_body: f64,
    /// Probability per request of a complete 200 response whose body is not JSON.
    #[arg(long, default_value_t = 0.0)]
    fault_rate_invalid_json: f64,
    /// Probability per request of holding it `--hang-ms` before answering (past a client's
    /// timeout, the client sees a hang).
    #[arg(long, default_value_t = 0.0)]
    fault_rate_hang: f64,
    /// How long a hanging request is held (on top of the latency).
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
    /// Share of requests that are stragglers: answered normally, but after about
    /// `--straggler-ms` in all instead of the latency.
    #[arg(long, default_value_t = 0.0)]
    straggler_rate: f64,
    /// Total time a straggler takes (ms): it is held `straggler_ms - latency_ms`, then gets
    /// the usual latency and jitter.
    #[arg(long, default_value_t = 10_000)]
    straggler_ms: u64,
    /// Seed for fault and jitter randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time from a batch's creation until it ends (OpenAI / Anthropic batch APIs), in ms.
    #[arg(long, default_value_t = 200)]
    batch_latency_ms: u64,
    /// Require this API key (Bearer / x-api-key).
    #[arg(long)]
    api_key: Option<String>,
    /// Comma-separated list of known models (others get 404).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Exit (printing stats) when stdin reaches EOF.
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Keep a full request log in memory (off by default for benchmarks).
    #[arg(long)]
    record_requests: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// On exit, write the admission time of every accepted request (ms since start, one per
    /// line) to this file.
    #[arg(long)]
    accepted_times: Option<std::path::PathBuf>,
}

fn rate(name: &str, p: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("--{name} must be within [0, 1], got {p}"))
    }
}

fn build_config(a: &Args) -> Result<MockConfig, String> {
    let mut rates = Vec::new();
    let straggler_hold = Duration::from_millis(a.straggler_ms.saturating_sub(a.latency_ms));
    for (name, p, f) in [
        ("fault-rate-429", a.fault_rate_429, Fault::Status(429)),
        ("fault-rate-500", a.fault_rate_500, Fault::Status(500)),
        (
            "fault-rate-reset",
            a.fault_rate_reset,
            Fault::ResetConnection,
        ),
        (
            "fault-rate-close-mid-body",
            a.fault_rate_close_mid_body,
            Fault::CloseMidBody,
        ),
        (
            "fault-rate-invalid-json",
            a.fault_rate_invalid_json,
            Fault::InvalidJson,
        ),
        (
            "fault-rate-hang",
            a.fault_rate_hang,
            Fault::Delay(Duration::from_millis(a.hang_ms)),
        ),
        (
            "straggler-rate",
            a.straggler_rate,
            Fault::Delay(straggler_hold),
        ),
    ] {
        if rate(name, p)? > 0.0 {
            rates.push((f, p));
        }
    }
    if rates.iter().map(|(_, p)| p).sum::<f64>() > 1.0 {
        return Err("fault and straggler rates sum to more than 1".into());
    }
    if let Some(t) = a.tokens_per_second
        && !(t.is_finite() && t > 0.0)
    {
        return Err(format!("--tokens-per-second must be > 0, got {t}"));
    }
    let mut cfg = MockConfig::new()
        .latency(Duration::from_millis(a.latency_ms))
        .jitter(Duration::from_millis(a.jitter_ms))
        .seed(a.seed)
        .batch_latency(Duration::from_millis(a.batch_latency_ms))
        .record_requests(a.record_requests)
        .faults(if rates.is_empty() {
            FaultPlan::none()
        } else {
            FaultPlan::random(a.seed, rates)
        });
    cfg.port = a.port;
    cfg.tokens_per_second = a.tokens_per_second;
    cfg.rpm = a.rpm;
    cfg.tpm = a.tpm;
    cfg.max_in_flight = a.max_in_flight.map(|n| n.max(1));
    cfg.api_key = a.api_key.clone();
    cfg.models = a.models.clone();
    Ok(cfg)
}

async fn wait_for_exit(stdin_eof: bool) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if stdin_eof {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send(());
        });
    } else {
        std::mem::forget(tx);
    }
    let stdin_closed = async {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = stdin_closed => {}
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = build_config(&args)?;
    let server = MockServer::try_start(cfg)
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.base_url()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    wait_for_exit(args.exit_on_stdin_eof).await;
    server.shutdown();
    let stats = server.stats();
    if let Some(path) = &args.accepted_times {
        let lines: String = server
            .accepted_times()
            .iter()
            .map(|t| format!("{:.3}\n", t.as_secs_f64() * 1000.0))
            .collect();
        std::fs::write(path, lines).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut v = serde_json::to_value(&stats).map_err(|e| e.to_string())?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "max_received_per_1s".into(),
            server
                .max_requests_in_any_window(Duration::from_secs(1))
                .into(),
        );
        o.insert(
            "max_accepted_per_1s".into(),
            server
                .max_accepted_in_any_window(Duration::from_secs(1))
                .into(),
        );
        o.insert("distinct_prompts".into(), stats.by_prompt.len().into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-llm: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => {
            rt.shutdown_timeout(Duration::from_millis(100));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mock-llm: {e}");
            ExitCode::FAILURE
        }
    }
}
