//! `cargo xtask bench --scenario local`: the embedded model's batched generation speed-up over one sequence.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BenchArgs, cargo_build};

/// Batched generation must reach this multiple of single-sequence tok/s.
const LOCAL_SPEEDUP_TARGET: f64 = 1.8;

/// `bench-local` (dev profile, where llama.cpp is built with optimisations and the example
/// pipelines already built it): single-sequence tok/s before and after, 8, 16 and 32 concurrent.
pub(super) fn run_local_scenario(
    args: &BenchArgs,
    root: &Path,
    target: &Path,
    failures: &mut Vec<String>,
) -> Result<()> {
    if !args.no_build {
        cargo_build(
            root,
            &[
                "-p",
                "shaping-bench",
                "--features",
                "local-model",
                "--bin",
                "bench-local",
            ],
        )?;
    }
    let bin = target.join("debug").join("bench-local");
    if !bin.is_file() {
        bail!("{} not found (build without --no-build)", bin.display());
    }
    eprintln!(
        "bench: running local-model batching ({} rounds of {} tokens per slot)…",
        args.local_rounds, args.local_max_tokens
    );
    let mut command = Command::new(&bin);
    if let Some(top_p) = args.local_top_p {
        command.env("SHAPING_BENCH_TOP_P", top_p.to_string());
    }
    let output = command
        .env("SHAPING_BENCH_REQUANTIZE", &args.local_requantize)
        .env("SHAPING_BENCH_LEVELS", "8,16,32")
        .env("SHAPING_BENCH_ROUNDS", args.local_rounds.to_string())
        .env(
            "SHAPING_BENCH_MAX_TOKENS",
            args.local_max_tokens.to_string(),
        )
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", bin.display(), output.status);
    }
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let rate = |row: &Value| row["tok_per_s"].as_f64().unwrap_or(0.0);
    let singles: Vec<f64> = rows
        .iter()
        .filter(|r| r["concurrency"] == 1)
        .map(rate)
        .collect();
    if singles.is_empty() {
        bail!("bench-local printed no single-sequence figure");
    }
    let single = singles.iter().sum::<f64>() / singles.len() as f64;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n== local-model batching (llama.cpp, {} threads, requantize = {})",
        num_cpus(),
        args.local_requantize
    );
    let _ = writeln!(
        out,
        "  single sequence {single:.1} tok/s (mean of {}: {})",
        singles.len(),
        singles
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Every level of 8 or more concurrent requests must reach the target, 8 included.
    let mut worst = f64::INFINITY;
    for row in rows.iter().filter(|r| r["concurrency"] != 1) {
        let ratio = rate(row) / single;
        worst = worst.min(ratio);
        let _ = writeln!(
            out,
            "  {:>2} concurrent   {:.1} tok/s = {ratio:.2}× single ({} tokens in {} s)",
            row["concurrency"].as_u64().unwrap_or(0),
            rate(row),
            row["tokens"],
            row["seconds"]
        );
    }
    let miss = (worst < LOCAL_SPEEDUP_TARGET)
        .then(|| format!("smallest batched speed-up {worst:.2}× < {LOCAL_SPEEDUP_TARGET}×"));
    let _ = writeln!(
        out,
        "  target          {}",
        match &miss {
            None =>
                format!("met (≥ {LOCAL_SPEEDUP_TARGET}× at every level of 8 or more concurrent)"),
            Some(why) => format!("MISSED: {why}"),
        }
    );
    if let Some(miss) = miss {
        failures.push(format!("local-model batching: {miss}"));
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
