//! `bench-baseline`: the bare client `cargo xtask bench` measures the pipeline against: tokio + reqwest, a semaphore and `join_all`.
//!
//! No ordering, no cache, no retries, no output file: the fastest a client can get N answers
//! through `in_flight` connections from the same server. It sends the same requests as
//! `bench-pipeline` (the prompts of records 0..N, `max_tokens` 32) to
//! `<base_url>/chat/completions` and prints one JSON line:
//! `{"requests", "answered", "failed", "wall_secs"}`.
//!
//! Usage: `bench-baseline BASE_URL REQUESTS IN_FLIGHT`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

/// The model id the bench's `models.toml` names.
const MODEL: &str = "bench-model";

struct Args {
    base_url: String,
    requests: u64,
    in_flight: usize,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: bench-baseline BASE_URL REQUESTS IN_FLIGHT";
    let mut args = std::env::args().skip(1);
    let (Some(base_url), Some(requests), Some(in_flight), None) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        return Err(usage.to_owned());
    };
    let requests = requests
        .parse()
        .map_err(|_| format!("REQUESTS must be a whole number, got {requests:?}; {usage}"))?;
    let in_flight = in_flight
        .parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| format!("IN_FLIGHT must be at least 1, got {in_flight:?}; {usage}"))?;
    Ok(Args {
        base_url: base_url.trim_end_matches('/').to_owned(),
        requests,
        in_flight,
    })
}

/// One request; whether a completion with text came back.
async fn ask(client: &reqwest::Client, url: &str, n: u64) -> bool {
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{
            "role": "user",
            "content": format!("Benchmark record {n}: say something short."),
        }],
        "max_tokens": 32,
    });
    let Ok(response) = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
    else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    let Ok(bytes) = response.bytes().await else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v["choices"][0]["message"]["content"].is_string())
}

async fn run(args: Args) -> serde_json::Value {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .build()
        .expect("a client with default TLS settings builds");
    let url = format!("{}/chat/completions", args.base_url);
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let answers = futures::future::join_all((0..args.requests).map(|n| {
        let (client, url, slots) = (&client, &url, Arc::clone(&slots));
        async move {
            let _slot = slots
                .acquire()
                .await
                .expect("the semaphore is never closed");
            ask(client, url, n).await
        }
    }))
    .await;
    let wall_secs = started.elapsed().as_secs_f64();
    let answered = answers.iter().filter(|&&ok| ok).count();
    serde_json::json!({
        "requests": args.requests,
        "answered": answered,
        "failed": answers.len() - answered,
        "wall_secs": wall_secs,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("bench-baseline: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-baseline: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", runtime.block_on(run(args)));
    ExitCode::SUCCESS
}
