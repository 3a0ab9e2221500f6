//! `bench-local`: generation throughput of the in-process llama.cpp provider, one sequence vs many batched together, and prompt KV sharing on a voice-prompts-like workload (`cargo xtask bench --scenario local`).
//!
//! Loads the default model (fetching it if needed) or `SHAPING_BENCH_GGUF`, through its Q8_0
//! working copy like the example aliases (`SHAPING_BENCH_REQUANTIZE=none` uses the file as it
//! is), then runs `SHAPING_BENCH_WORKLOAD`:
//!
//! - `batching` (default): for each concurrency level, sampled requests through the provider;
//!   the single-sequence run of the same process is the bound the others are compared to.
//! - `voice`: one ~250-token system prompt, distinct short questions, `SHAPING_BENCH_CANDIDATES`
//!   candidates of each (same messages, other seeds), sent like a pipeline with
//!   `max_concurrency` 16, on two engines of the same process: prefix sharing off (the bound)
//!   and on, in the order off, on, on, off so drift of a shared machine affects both alike.
//!   Every run asks other questions, so no run reuses another's whole prompts.
//!
//! Prints one JSON line per level or run on stdout.

use std::process::ExitCode;

use std::time::Instant;

use futures::StreamExt as _;
use shaping::models::Requantize;
use shaping::provider::llama_cpp::{EngineSettings, LlamaCppProvider, PrefillStats};
use shaping::provider::{ChatRequest, Message, Params, Provider};

fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {text:?}")),
    }
}

/// Generated tokens per second of a run of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ThroughputReport {
    tokens: u64,
    seconds: f64,
    tok_per_s: f64,
}

/// Send `requests` sampled requests (temperature 0.8, optional `top_p`) with at most
/// `concurrency` in flight, each asking for up to `max_tokens`, and report the generated-token
/// throughput. Failed requests count no tokens.
async fn measure_throughput(
    provider: &LlamaCppProvider,
    concurrency: usize,
    requests: usize,
    max_tokens: u32,
    top_p: Option<f32>,
) -> ThroughputReport {
    let topics = [
        "the sea",
        "a lighthouse",
        "mountains",
        "a robot",
        "bread",
        "the moon",
        "trains",
        "a garden",
    ];
    let reqs: Vec<ChatRequest> = (0..requests)
        .map(|i| ChatRequest {
            messages: vec![Message::user(format!(
                "Write a short story about {}.",
                topics[i % topics.len()]
            ))],
            params: Params {
                temperature: Some(0.8),
                top_p,
                max_tokens: Some(max_tokens),
                ..Params::default()
            },
            derived_seed: i as u64,
        })
        .collect();
    let start = Instant::now();
    let tokens: u64 = futures::stream::iter(reqs.iter().map(|r| provider.send(r)))
        .buffer_unordered(concurrency.max(1))
        .map(|r| r.map(|reply| reply.usage.output_tokens).unwrap_or(0))
        .fold(0u64, |acc, n| async move { acc + n })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    ThroughputReport {
        tokens,
        seconds,
        tok_per_s: if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        },
    }
}

/// A voice-prompts-like persona: one-line introduction plus a "how you talk" list, about 250
/// tokens once templated.
const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, 58, owner of the Ivy Leaf Diner near Wrigley \
Field and a devoted Chicago Cubs fan. Stay in character and answer in three to six sentences. \
Never say you are an AI.
How you talk:
- Warm, quick and a little bossy, like someone who has poured ten thousand cups of coffee.
- Calls people \"hon\" and \"kiddo\". Says \"Lord love a duck\" when surprised.
- Talks in short sentences, then tells a story that runs long.
- Explains things through food and baseball: a plan is \"a batting order\", a mess is
  \"a rain delay\", patience is \"waiting on a slow-rise dough\".
- Never fakes expertise. If she doesn't know, she says \"that's above my pay grade, hon\" and
  points to who would know.
- Mentions the Cubs, Wrigley, the ivy, the bleachers or the diner often, but doesn't force it
  into serious answers.
- Opens the diner at 5:30 every morning and keeps score of every home game in pencil.
- Makes pierogi on Fridays from her mother's recipe, potato and cheddar, extra onions.";

/// Short user prompts like identity/prompts/voice.txt.
const QUESTIONS: &[&str] = &[
    "Good morning! What's on the specials board today?",
    "I'm nervous about a job interview tomorrow. Any tips?",
    "Can you give me your pancake recipe?",
    "How do you stay cheerful at 5:30 in the morning?",
    "My team lost again. How do you cope?",
    "What's the secret to a good diner?",
    "I just moved to Chicago. Where should I start?",
    "How do I make pierogi from scratch?",
    "Is it worth going to a game in April when it's freezing?",
    "My dad and I don't talk much anymore. What would you do?",
    "What should I order if I've never been here before?",
    "Why do you still keep score with a pencil?",
    "How do I tell my boss I need a raise?",
    "Who's the greatest Cub of all time?",
    "What's your opinion on the designated hitter?",
    "My kid wants to quit Little League. Should I let her?",
    "How do you deal with a rude customer?",
    "What's a cheap dinner I can make for four people?",
    "I'm thinking of opening a food truck. Thoughts?",
    "How do you make a grilled cheese that isn't soggy?",
    "I burned my toast. Is the day ruined?",
    "How do I get my sourdough to rise?",
    "What's the best seat at Wrigley?",
    "Should I buy a house or keep renting?",
    "Explain the squeeze bunt to me.",
    "What makes a good neighbor?",
    "How early should I get to the ballpark?",
    "Is it silly to be superstitious about sports?",
    "What's your go-to comfort food?",
    "My roommate never cleans. Help.",
    "How do you keep your regulars coming back?",
    "What's the hardest part of running a restaurant?",
];

/// Run `run` of the voice workload: `prompts` questions (the run's own), `candidates` each,
/// prompt after prompt like a pipeline's records, at most `concurrency` in flight.
async fn voice_run(
    provider: &LlamaCppProvider,
    run: usize,
    prompts: usize,
    candidates: usize,
    concurrency: usize,
    max_tokens: u32,
) -> (u64, f64, PrefillStats) {
    let requests: Vec<ChatRequest> = (0..prompts)
        .flat_map(|i| {
            let n = run * prompts + i;
            let question = match n / QUESTIONS.len() {
                0 => QUESTIONS[n].to_owned(),
                lap => format!("{} (take {})", QUESTIONS[n % QUESTIONS.len()], lap + 1),
            };
            (0..candidates).map(move |k| ChatRequest {
                messages: vec![
                    Message::system(SYSTEM_PROMPT),
                    Message::user(question.clone()),
                ],
                // The dee alias's parameters.
                params: Params {
                    temperature: Some(0.7),
                    top_p: Some(0.9),
                    max_tokens: Some(max_tokens),
                    ..Params::default()
                },
                derived_seed: (n * 1000 + k) as u64,
            })
        })
        .collect();
    let before = provider.prefill_stats();
    let start = Instant::now();
    let tokens: u64 = futures::stream::iter(requests.iter().map(|r| provider.send(r)))
        .buffer_unordered(concurrency.max(1))
        .map(|r| r.map(|reply| reply.usage.output_tokens).unwrap_or(0))
        .fold(0u64, |acc, n| async move { acc + n })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let after = provider.prefill_stats();
    let delta = PrefillStats {
        prompt_tokens: after.prompt_tokens - before.prompt_tokens,
        computed_tokens: after.computed_tokens - before.computed_tokens,
        shared_tokens: after.shared_tokens - before.shared_tokens,
    };
    (tokens, seconds, delta)
}

/// The voice workload on engines with prefix sharing off and on.
fn run_voice(
    path: &std::path::Path,
    requantize: Requantize,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let prompts = env_usize("SHAPING_BENCH_PROMPTS", 8)?.max(1);
    let candidates = env_usize("SHAPING_BENCH_CANDIDATES", 4)?.max(1);
    let concurrency = env_usize("SHAPING_BENCH_CONCURRENCY", 16)?.max(1);
    let context = env_usize("SHAPING_BENCH_CONTEXT", 2048)? as u32;
    let max_tokens = env_usize("SHAPING_BENCH_MAX_TOKENS", 100)? as u32;
    let load = |prefix_sharing| {
        LlamaCppProvider::load_with(
            path,
            None,
            requantize,
            EngineSettings {
                prefix_sharing,
                ..EngineSettings::new(concurrency, context)
            },
        )
        .map_err(|e| format!("loading {}: {e}", path.display()))
    };
    let off = load(false)?;
    let on = load(true)?;
    runtime.block_on(async {
        // Warm-up: page the weights in (outside the measured questions).
        let _ = measure_throughput(&off, 1, 1, 16, None).await;
        let _ = measure_throughput(&on, 1, 1, 16, None).await;
        for (run, provider) in [&off, &on, &on, &off].into_iter().enumerate() {
            let sharing = std::ptr::eq(provider, &on);
            let (tokens, seconds, stats) =
                voice_run(provider, run, prompts, candidates, concurrency, max_tokens).await;
            println!(
                "{{\"phase\":\"voice\",\"sharing\":{sharing},\"candidates\":{candidates},\"requests\":{},\"tokens\":{tokens},\"seconds\":{seconds:.3},\"tok_per_s\":{:.1},\"prompt_tokens\":{},\"computed_tokens\":{},\"shared_tokens\":{}}}",
                prompts * candidates,
                tokens as f64 / seconds.max(1e-9),
                stats.prompt_tokens,
                stats.computed_tokens,
                stats.shared_tokens
            );
        }
    });
    Ok(())
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
    let workload = std::env::var("SHAPING_BENCH_WORKLOAD").unwrap_or_else(|_| "batching".into());
    eprintln!(
        "bench-local: {} (requantize = {requantize}, workload = {workload})",
        path.display()
    );
    match workload.as_str() {
        "batching" => {}
        "voice" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            return run_voice(&path, requantize, &runtime);
        }
        other => {
            return Err(format!(
                "SHAPING_BENCH_WORKLOAD must be batching or voice, got {other:?}"
            ));
        }
    }
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
