//! `cargo xtask bench --scenario local`: the embedded model's batched generation speed-up over one sequence, and the voice-prompts-like workload with prompt KV sharing off vs on.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{BenchArgs, LocalWorkload, cargo_build};

/// Batched generation must reach this multiple of single-sequence tok/s.
const LOCAL_SPEEDUP_TARGET: f64 = 1.8;

/// With prompt KV sharing, the voice workload with best-of-n candidates must generate this
/// multiple of the tok/s of the same engine without sharing.
const LOCAL_SHARING_TARGET: f64 = 1.5;

/// `bench-local` (dev profile, where llama.cpp is built with optimisations and the example
/// pipelines already built it): the batching and voice workloads.
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
    if args.local_workload != LocalWorkload::Voice {
        run_local_batching(args, &bin, failures)?;
    }
    if args.local_workload != LocalWorkload::Batching {
        for &candidates in &args.local_voice_candidates {
            run_local_voice(args, &bin, candidates.max(1), failures)?;
        }
    }
    Ok(())
}

/// Single-sequence tok/s before and after, 8, 16 and 32 concurrent.
fn run_local_batching(args: &BenchArgs, bin: &Path, failures: &mut Vec<String>) -> Result<()> {
    eprintln!(
        "bench: running local-model batching ({} rounds of {} tokens per slot)…",
        args.local_rounds, args.local_max_tokens
    );
    let mut command = Command::new(bin);
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

/// The voice-prompts-like workload (one long system prompt, short questions, `candidates` of
/// each, 16 concurrent, 100 tokens) on two engines of one process: prefix sharing off (the
/// bound), on, on, off.
fn run_local_voice(
    args: &BenchArgs,
    bin: &Path,
    candidates: usize,
    failures: &mut Vec<String>,
) -> Result<()> {
    eprintln!(
        "bench: running local-model voice workload ({} questions × {candidates} candidates per run, prefix sharing off/on/on/off)…",
        args.local_voice_prompts
    );
    let output = Command::new(bin)
        .env("SHAPING_BENCH_WORKLOAD", "voice")
        .env("SHAPING_BENCH_REQUANTIZE", &args.local_requantize)
        .env(
            "SHAPING_BENCH_PROMPTS",
            args.local_voice_prompts.to_string(),
        )
        .env("SHAPING_BENCH_CANDIDATES", candidates.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", bin.display(), output.status);
    }
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|row: &Value| row["phase"] == "voice")
        .collect();
    let side = |sharing: bool| {
        let runs: Vec<&Value> = rows.iter().filter(|r| r["sharing"] == sharing).collect();
        let rates: Vec<f64> = runs
            .iter()
            .map(|r| r["tok_per_s"].as_f64().unwrap_or(0.0))
            .collect();
        let sum = |key: &str| {
            runs.iter()
                .map(|r| r[key].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        (
            rates,
            sum("prompt_tokens"),
            sum("computed_tokens"),
            sum("shared_tokens"),
        )
    };
    let (off_rates, off_prompt, off_computed, _) = side(false);
    let (on_rates, on_prompt, on_computed, on_shared) = side(true);
    if off_rates.is_empty() || on_rates.is_empty() {
        bail!("bench-local printed no voice figures for both settings");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let share = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
    let (off, on) = (mean(&off_rates), mean(&on_rates));
    let ratio = on / off;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n== local-model prompt sharing (voice-like: long system prompt, {} questions × {candidates} candidates per run, requantize = {})",
        args.local_voice_prompts, args.local_requantize
    );
    let _ = writeln!(
        out,
        "  sharing off     {off:.1} tok/s (mean of {}: {}); prefilled {off_computed} of {off_prompt} prompt tokens ({:.0} %)",
        off_rates.len(),
        list(&off_rates),
        share(off_computed, off_prompt)
    );
    let _ = writeln!(
        out,
        "  sharing on      {on:.1} tok/s (mean of {}: {}) = {ratio:.2}× off; prefilled {on_computed} of {on_prompt} ({:.0} %), copied {on_shared}",
        on_rates.len(),
        list(&on_rates),
        share(on_computed, on_prompt)
    );
    // Candidates share whole prompts: that is where the target applies. One answer per
    // question only shares the system prompt, and is reported without a target.
    if candidates > 1 {
        let miss = (ratio < LOCAL_SHARING_TARGET)
            .then(|| format!("prompt sharing speed-up {ratio:.2}× < {LOCAL_SHARING_TARGET}×"));
        let _ = writeln!(
            out,
            "  target          {}",
            match &miss {
                None =>
                    format!("met (≥ {LOCAL_SHARING_TARGET}× the same workload without sharing)"),
                Some(why) => format!("MISSED: {why}"),
            }
        );
        if let Some(miss) = miss {
            failures.push(format!(
                "local-model prompt sharing ({candidates} candidates): {miss}"
            ));
        }
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
