//! `bench-local`: generation throughput of the in-process llama.cpp provider, one sequence vs many batched together (`cargo xtask bench --scenario local`).
//!
//! Loads the default model (fetching it if needed) or `SHAPING_BENCH_GGUF`, through its Q8_0
//! working copy like the example aliases (`SHAPING_BENCH_REQUANTIZE=none` uses the file as it
//! is), then for each concurrency level sends sampled requests through the provider and prints
//! generated tokens per second; the single-sequence run of the same process is the bound the
//! others are compared to.
//! Prints one JSON line per level on stdout.

use std::process::ExitCode;

use shaping::models::Requantize;
use shaping::provider::llama_cpp::{LlamaCppProvider, measure_throughput};

fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {text:?}")),
    }
}

fn run() -> Result<(), String> {
    let levels: Vec<usize> = match std::env::var("SHAPING_BENCH_LEVELS") {
        Ok(text) => text
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("SHAPING_BENCH_LEVELS: {s:?} is not a number"))
            })
            .collect::<Result<_, _>>()?,
        Err(_) => vec![8, 16],
    };
    let max_tokens = env_usize("SHAPING_BENCH_MAX_TOKENS", 128)? as u32;
    let rounds = env_usize("SHAPING_BENCH_ROUNDS", 3)?.max(1);
    let top_p = match std::env::var("SHAPING_BENCH_TOP_P") {
        Err(_) => None,
        Ok(text) => Some(
            text.trim()
                .parse::<f32>()
                .map_err(|_| format!("SHAPING_BENCH_TOP_P must be a number, got {text:?}"))?,
        ),
    };
    let path = match std::env::var_os("SHAPING_BENCH_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => shaping::model_fetch::ensure_default_model(&shaping::models::model_cache_dir())
            .map_err(|e| format!("{e:#}"))?,
    };
    // The example aliases' setting unless told otherwise.
    let requantize = match std::env::var("SHAPING_BENCH_REQUANTIZE").as_deref() {
        Err(_) | Ok("q8_0") => Requantize::Q8_0,
        Ok("none") => Requantize::None,
        Ok(other) => {
            return Err(format!(
                "SHAPING_BENCH_REQUANTIZE must be none or q8_0, got {other:?}"
            ));
        }
    };
    eprintln!(
        "bench-local: {} (requantize = {requantize})",
        path.display()
    );
    let max_sequences = levels.iter().copied().max().unwrap_or(1);
    let provider = LlamaCppProvider::load(&path, None, requantize, max_sequences, 512)
        .map_err(|e| format!("loading {}: {e}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // Warm-up: page the weights in and let the CPU settle.
        let _ = measure_throughput(&provider, 1, 1, 16, top_p).await;
        let single = |label: &'static str| {
            let provider = &provider;
            async move {
                // Single-sequence runs are short per request: give them as many tokens as a
                // batched level gets per slot, times four.
                let requests = 4 * rounds;
                let report = measure_throughput(provider, 1, requests, max_tokens, top_p).await;
                println!(
                    "{{\"phase\":\"{label}\",\"concurrency\":1,\"requests\":{requests},\"tokens\":{},\"seconds\":{:.3},\"tok_per_s\":{:.1}}}",
                    report.tokens, report.seconds, report.tok_per_s
                );
            }
        };
        // The single-sequence bound is measured before and after the batched levels, so slow
        // drift of a shared machine affects both sides of the ratio alike.
        single("single-before").await;
        for &level in levels.iter().filter(|&&l| l > 1) {
            // Every level generates the same number of requests per sequence slot.
            let requests = level * rounds;
            let report = measure_throughput(&provider, level, requests, max_tokens, top_p).await;
            println!(
                "{{\"phase\":\"batched\",\"concurrency\":{level},\"requests\":{requests},\"tokens\":{},\"seconds\":{:.3},\"tok_per_s\":{:.1}}}",
                report.tokens, report.seconds, report.tok_per_s
            );
        }
        single("single-after").await;
    });
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-local: {e}");
            ExitCode::FAILURE
        }
    }
}
