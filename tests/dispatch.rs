//! Dispatcher integration tests against the testkit mock server: retry classes, Retry-After and lane pauses, RPM and concurrency caps, resume through the cache, SIGKILL safety, secrets.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::echo::Echo;
use common::{ServedRepo, TestRepo, openai_model, read_jsonl, run_args};
use serde_json::Value;
use shaping::run::RunOptions;
use testkit::{Fault, FaultPlan, MockConfig, MockServer, RecordedRequest};

/// The variable holding the (fake) key of in-process runs that need one.
const KEY_VAR: &str = "SHAPING_TEST_DISPATCH_KEY";

/// Set [`KEY_VAR`] once for the whole test binary (never changed afterwards).
fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any run of this binary reads it; the value never changes.
        unsafe { std::env::set_var(KEY_VAR, "sk-in-process-test-key") };
    });
}

/// A repository with alias `m` (plus `extra` model lines) on a mock server started with `config`,
/// and these prompts for [`Echo`].
fn repo_with(config: MockConfig, extra: &str, prompts: &[String]) -> ServedRepo {
    init_env();
    let repo = ServedRepo::new(config, extra);
    repo.write("inputs/prompts.txt", &lines(prompts));
    repo
}

/// One prompt a line.
fn lines(prompts: &[String]) -> String {
    let mut text = prompts.join("\n");
    text.push('\n');
    text
}

fn prompts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Output samples by their user prompt.
fn samples_by_prompt(path: &Path) -> BTreeMap<String, Value> {
    read_jsonl(path)
        .into_iter()
        .map(|s| {
            let prompt = s["messages"][0]["content"]
                .as_str()
                .expect("user message")
                .to_owned();
            (prompt, s)
        })
        .collect()
}

/// Requests for `prompt`, in arrival order.
fn requests_for(server: &MockServer, prompt: &str) -> Vec<RecordedRequest> {
    let mut reqs: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.last_user.as_deref() == Some(prompt))
        .collect();
    reqs.sort_by_key(|r| r.index);
    reqs
}

// ---------------------------------------------------------------------------------------------
// Retried classes: one failure, then success.

fn retried_then_succeeds(fault: Fault) {
    let repo = repo_with(
        MockConfig::new().faults(FaultPlan::none().marker_times("FLAKY", fault.clone(), 1)),
        "",
        &strings(&["ok-a", "FLAKY-1", "ok-b"]),
    );
    let server = &repo.server;
    repo.run::<Echo>(run_args())
        .unwrap_or_else(|e| panic!("{fault:?}: run failed: {e}"));

    assert_eq!(
        server.prompt_count("FLAKY-1"),
        2,
        "{fault:?}: the faulty request is retried exactly once"
    );
    assert_eq!(server.prompt_count("ok-a"), 1);
    assert_eq!(server.prompt_count("ok-b"), 1);
    let samples = samples_by_prompt(&repo.output("echo"));
    assert_eq!(samples.len(), 3, "{fault:?}: every record has its sample");
    assert_eq!(
        samples["FLAKY-1"]["messages"][1]["content"],
        "reply[mock-model]: FLAKY-1"
    );
    assert!(
        !repo.errors("echo").exists(),
        "{fault:?}: no errors file after a successful retry"
    );
    assert_eq!(repo.manifest_json("echo")["run"]["retries"], 1, "{fault:?}");
}

#[test]
fn retries_429_then_succeeds() {
    // Status(429) carries retry-after: 1 s.
    retried_then_succeeds(Fault::Status(429));
}

#[test]
fn retries_408_then_succeeds() {
    retried_then_succeeds(Fault::Status(408));
}

#[test]
fn retries_500_then_succeeds() {
    retried_then_succeeds(Fault::Status(500));
}

#[test]
fn retries_502_then_succeeds() {
    retried_then_succeeds(Fault::Status(502));
}

#[test]
fn retries_503_then_succeeds() {
    retried_then_succeeds(Fault::Status(503));
}

#[test]
fn retries_connection_reset_then_succeeds() {
    retried_then_succeeds(Fault::ResetConnection);
}

#[test]
fn retries_close_mid_body_then_succeeds() {
    retried_then_succeeds(Fault::CloseMidBody);
}

#[test]
fn retries_truncated_json_then_succeeds() {
    retried_then_succeeds(Fault::TruncatedJson);
}

#[test]
fn retries_invalid_json_then_succeeds() {
    retried_then_succeeds(Fault::InvalidJson);
}

#[test]
fn retries_client_timeout_then_succeeds() {
    // timeout_secs = 2 in the model table: a 3 s delay is a client-side timeout.
    retried_then_succeeds(Fault::Delay(Duration::from_secs(3)));
}

// ---------------------------------------------------------------------------------------------
// Non-retried classes: exactly one request, an `__ERROR__` record naming the kind.

fn not_retried(fault: Fault, kind: &str, message_contains: &str) {
    let repo = repo_with(
        MockConfig::new().faults(FaultPlan::none().marker("BAD", fault.clone())),
        &format!("api_key_env = \"{KEY_VAR}\""),
        &strings(&["ok-a", "BAD-1", "ok-b", "ok-c"]),
    );
    let server = &repo.server;
    repo.run::<Echo>(run_args())
        .unwrap_or_else(|e| panic!("{fault:?}: run failed: {e}"));

    assert_eq!(
        server.prompt_count("BAD-1"),
        1,
        "{fault:?} must not be retried"
    );
    let samples = samples_by_prompt(&repo.output("echo"));
    assert_eq!(samples.len(), 3, "{fault:?}: the other records succeed");
    assert!(!samples.contains_key("BAD-1"));

    let errors = read_jsonl(&repo.errors("echo"));
    assert_eq!(errors.len(), 1, "{fault:?}: one error record");
    let record = &errors[0]["__ERROR__"];
    assert_eq!(record["input_data"]["prompt"], "BAD-1");
    let steps = record["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{fault:?}: the failed step is recorded");
    assert_eq!(steps[0]["success"], false);
    assert_eq!(steps[0]["error"]["kind"], kind, "{fault:?}");
    let message = steps[0]["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(message_contains),
        "{fault:?}: step message {message:?} should contain {message_contains:?}"
    );
    assert!(
        record["message"].as_str().expect("message").contains(kind),
        "{fault:?}: the record message names the kind: {}",
        record["message"]
    );
    let m = repo.manifest_json("echo");
    assert_eq!(m["errors"], 1);
    assert_eq!(m["run"]["retries"], 0, "{fault:?}");
}

#[test]
fn does_not_retry_400() {
    not_retried(Fault::Status(400), "bad_request", "request rejected");
}

#[test]
fn does_not_retry_401_and_names_the_key_variable() {
    not_retried(
        Fault::Status(401),
        "auth",
        &format!("check the variable {KEY_VAR}"),
    );
}

#[test]
fn does_not_retry_403() {
    not_retried(
        Fault::Status(403),
        "auth",
        &format!("check the variable {KEY_VAR}"),
    );
}

#[test]
fn does_not_retry_404_and_names_the_model() {
    not_retried(Fault::Status(404), "not_found", "'mock-model'");
}

#[test]
fn does_not_retry_context_length() {
    not_retried(
        Fault::ContextLength,
        "context_length",
        "prompt too long for the model",
    );
}

#[test]
fn gives_up_after_max_retries() {
    let repo = repo_with(
        MockConfig::new().faults(FaultPlan::none().marker("DOWN", Fault::Status(500))),
        "",
        &strings(&["ok-a", "DOWN-1", "ok-b"]),
    );
    let server = &repo.server;
    repo.write(
        "models.toml",
        &openai_model("m", &server.base_url(), "").replace("max_retries = 3", "max_retries = 2"),
    );
    repo.run::<Echo>(run_args()).expect("run");
    assert_eq!(server.prompt_count("DOWN-1"), 3, "1 attempt + 2 retries");
    let errors = read_jsonl(&repo.errors("echo"));
    assert_eq!(errors.len(), 1);
    let step = &errors[0]["__ERROR__"]["steps"][0];
    assert_eq!(step["error"]["kind"], "server_error");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{step}"
    );
}

// ---------------------------------------------------------------------------------------------
// Retry-After and lane pauses.

#[test]
fn retry_after_is_honoured() {
    let repo = repo_with(
        MockConfig::new().faults(FaultPlan::none().marker_times(
            "WAIT",
            Fault::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            1,
        )),
        "",
        &strings(&["WAIT-1", "ok-a"]),
    );
    let server = &repo.server;
    repo.run::<Echo>(run_args()).expect("run");
    let reqs = requests_for(server, "WAIT-1");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].status, Some(429));
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt only {gap:?} after the 429 with retry-after 1 s"
    );
    assert_eq!(samples_by_prompt(&repo.output("echo")).len(), 2);
}

#[test]
fn retry_after_pauses_the_whole_lane() {
    // The first request to arrive gets a 429 with retry-after 1 s; the other one sent with it is
    // in flight (300 ms). Every later request — the retry and the other records' requests,
    // which could go as soon as a slot frees — must wait for the pause.
    let repo = repo_with(
        MockConfig::new()
            .latency(Duration::from_millis(300))
            .faults(FaultPlan::none().nth(
                0,
                Fault::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
            )),
        "max_concurrency = 2",
        &prompts("p", 6),
    );
    let server = &repo.server;
    repo.run::<Echo>(run_args()).expect("run");
    let mut reqs = server.requests();
    reqs.sort_by_key(|r| r.index);
    assert_eq!(reqs.len(), 7, "6 records + 1 retry");
    assert_eq!(reqs[0].status, Some(429));
    let t0 = reqs[0].at;
    for r in &reqs[2..] {
        assert!(
            r.at >= t0 + Duration::from_millis(950),
            "request #{} ({:?}) arrived {:?} after the 429: the lane was not paused",
            r.index,
            r.last_user,
            r.at - t0
        );
    }
    assert_eq!(samples_by_prompt(&repo.output("echo")).len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Pacing and concurrency.

#[test]
fn rpm_is_never_exceeded() {
    // The server enforces the same limit (10 per sliding second): pacing must provoke no 429.
    let repo = repo_with(
        MockConfig::new().rpm(600),
        "rpm = 600\nmax_concurrency = 16",
        &prompts("r", 40),
    );
    let server = &repo.server;
    let started = Instant::now();
    repo.run::<Echo>(run_args()).expect("run");
    let stats = server.stats();
    assert_eq!(stats.received, 40);
    assert_eq!(stats.rate_limited, 0, "pacing provoked 429s");
    let max = server.max_requests_in_any_window(Duration::from_secs(1));
    assert!(max <= 10, "{max} requests within one second (rpm 600)");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "40 requests at 10/s cannot finish in {:?}",
        started.elapsed()
    );
    assert_eq!(samples_by_prompt(&repo.output("echo")).len(), 40);
}

#[test]
fn max_concurrency_caps_requests_in_flight() {
    let repo = repo_with(
        MockConfig::new().latency(Duration::from_millis(200)),
        "max_concurrency = 3",
        &prompts("c", 12),
    );
    let server = &repo.server;
    repo.run::<Echo>(run_args()).expect("run");
    assert_eq!(server.stats().received, 12);
    assert_eq!(
        server.max_in_flight(),
        3,
        "max_concurrency = 3 must be reached and never exceeded"
    );
}

#[test]
fn workers_flag_caps_requests_in_flight() {
    let repo = repo_with(
        MockConfig::new().latency(Duration::from_millis(200)),
        "max_concurrency = 16",
        &prompts("w", 8),
    );
    let server = &repo.server;
    repo.run::<Echo>(RunOptions {
        workers: Some(2),
        ..run_args()
    })
    .expect("run");
    assert_eq!(server.stats().received, 8);
    assert_eq!(
        server.max_in_flight(),
        2,
        "--workers 2 must be reached and never exceeded"
    );
}

// ---------------------------------------------------------------------------------------------
// Resume through the response cache.

#[test]
fn interrupted_then_resumed_pays_each_request_once() {
    let n = 12;
    let repo = repo_with(MockConfig::new(), "", &prompts("q", n));
    let server = &repo.server;

    repo.run::<Echo>(RunOptions {
        limit: Some(5),
        ..run_args()
    })
    .expect("partial run");
    assert_eq!(server.stats().received, 5);
    assert_eq!(read_jsonl(&repo.output("echo")).len(), 5);

    repo.run::<Echo>(run_args()).expect("full run");
    assert_eq!(
        server.stats().received,
        n as u64,
        "the full run replays the first 5 answers from the cache"
    );
    assert_eq!(read_jsonl(&repo.output("echo")).len(), n);
    let m = repo.manifest_json("echo");
    assert_eq!(m["run"]["cache_hits"], 5);
    assert_eq!(m["run"]["requests_sent"], n as u64 - 5);

    repo.run::<Echo>(RunOptions {
        cache_mode: shaping::dispatch::CacheMode::Off,
        ..run_args()
    })
    .expect("--no-cache run");
    assert_eq!(
        server.stats().received,
        2 * n as u64,
        "--no-cache resends all"
    );

    repo.run::<Echo>(RunOptions {
        cache_mode: shaping::dispatch::CacheMode::Refresh,
        ..run_args()
    })
    .expect("--refresh run");
    assert_eq!(
        server.stats().received,
        3 * n as u64,
        "--refresh resends all"
    );

    // --refresh stored the new answers: a normal run is free.
    repo.run::<Echo>(run_args()).expect("cached run");
    assert_eq!(server.stats().received, 3 * n as u64);
}

// ---------------------------------------------------------------------------------------------
// Secrets.

#[test]
fn missing_key_variable_fails_before_any_request() {
    let var = "SHAPING_TEST_UNSET_KEY_VARIABLE_9D2";
    assert!(std::env::var_os(var).is_none());
    let repo = repo_with(
        MockConfig::new(),
        &format!("api_key_env = \"{var}\""),
        &prompts("k", 3),
    );
    let server = &repo.server;
    let err = repo
        .run::<Echo>(run_args())
        .expect_err("a missing key must fail the run");
    assert!(
        err.to_string().contains(var),
        "the error names the variable: {err}"
    );
    assert_eq!(server.stats().received, 0, "no request was sent");
    assert!(!repo.output("echo").exists());
}

/// The `voice-prompts` example binary, built (or brought up to date) with
/// `cargo build -p voice-prompts` (honours `CARGO_TARGET_DIR`). `SHAPING_TEST_VOICE_PROMPTS_BIN`
/// names a ready-made binary instead.
fn voice_prompts_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    if let Some(binary) = std::env::var_os("SHAPING_TEST_VOICE_PROMPTS_BIN") {
        return PathBuf::from(binary);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                manifest_dir.join(t)
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let binary = target.join("debug").join("voice-prompts");
    BUILD.call_once(|| {
        // Without the variables `cargo test` set for this process, so the build reuses what
        // `cargo test --workspace` built (see `shaping::repo::cargo_command`).
        let status = shaping::repo::cargo_command()
            .args(["build", "--quiet", "-p", "voice-prompts"])
            .current_dir(manifest_dir)
            .status()
            .expect("run cargo build -p voice-prompts");
        assert!(status.success(), "cargo build -p voice-prompts failed");
    });
    assert!(binary.is_file(), "{} not found", binary.display());
    binary
}

/// A repository for `voice-prompts`: alias `dee` (plus `extra` model lines) on a mock server
/// started with `config`, these prompts.
fn voice_repo(config: MockConfig, extra: &str, prompts: &[String]) -> ServedRepo {
    let repo = ServedRepo::with_models(config, |base_url| openai_model("dee", base_url, extra));
    repo.write("identity/prompts/voice.txt", &lines(prompts));
    repo.write(
        "identity/prompts/examples.jsonl",
        "{\"user\": \"What's good today?\", \"assistant\": \"The hash, hon.\"}\n",
    );
    repo
}

/// A reply that passes the quality gate (voice-prompts keeps the best of several candidates):
/// long enough, on the prompt's subject, in voice.
fn sound_reply(chat: &testkit::ChatView) -> String {
    let prompt = chat.last_user().unwrap_or_default();
    format!(
        "Well, hon, about {prompt}: I have thought about that for years at the diner. You take your time, you get it right, and then you sit down with a cup of coffee."
    )
}

/// Candidates voice-prompts asks for per prompt.
const VOICE_CANDIDATES: u64 = 4;

fn voice_command(repo: &TestRepo, binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--quiet")
        .env("SHAPING_ROOT", repo.root())
        .env_remove("SHAPING_BUDGET_SHARE")
        .current_dir(repo.root())
        .stdin(Stdio::null());
    cmd
}

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn api_key_never_leaks() {
    const KEY: &str = "sk-SECRET-7f3a9c1e-do-not-leak-4b2d";
    let binary = voice_prompts_binary();
    let config = MockConfig::new()
        .api_key(KEY)
        .responder(sound_reply)
        .faults(
            FaultPlan::none()
                .marker("AUTHFAIL", Fault::Status(401))
                .marker_times("FLAKY", Fault::Status(500), 2),
        );
    let mut list = prompts("hello", 8);
    list.push("AUTHFAIL-1".into());
    list.push("FLAKY-1".into());
    list.push("FLAKY-2".into());
    let repo = voice_repo(config, "api_key_env = \"SHAPING_TEST_KEY\"", &list);
    let server = &repo.server;

    let out = voice_command(&repo, &binary)
        .env("SHAPING_TEST_KEY", KEY)
        .output()
        .expect("run voice-prompts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "voice-prompts failed: {stderr}");
    assert_eq!(server.prompt_count("AUTHFAIL-1"), VOICE_CANDIDATES);
    assert!(server.prompt_count("FLAKY-1") >= 2);
    assert_eq!(
        server.stats().status(401),
        VOICE_CANDIDATES,
        "the key was accepted (only the injected 401s, one per candidate)"
    );
    let auth = server.requests()[0]
        .header("authorization")
        .map(str::to_owned);
    assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));

    // The errors file names the variable, never the value.
    let errors = read_jsonl(&repo.errors("voice-prompts"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]["__ERROR__"]["steps"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("check the variable SHAPING_TEST_KEY")
    );

    assert!(
        !contains_bytes(&out.stdout, KEY.as_bytes()),
        "key in stdout"
    );
    assert!(
        !contains_bytes(&out.stderr, KEY.as_bytes()),
        "key in stderr"
    );
    let files = files_below(repo.root());
    let mut checked = HashSet::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        assert!(
            !contains_bytes(&bytes, KEY.as_bytes()),
            "the key leaked into {}",
            file.display()
        );
        checked.insert(file.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in [
        "voice-prompts.jsonl",
        "voice-prompts.manifest.json",
        "voice-prompts.errors.jsonl",
        "voice-prompts.redb",
    ] {
        assert!(
            checked.contains(expected),
            "{expected} was not written: {checked:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL midway, then rerun.

#[test]
fn sigkill_midway_then_rerun_pays_only_in_flight_twice() {
    let binary = voice_prompts_binary();
    let n = 40;
    let list = prompts("Tell me about day", n);
    let repo = voice_repo(
        MockConfig::new()
            .latency(Duration::from_millis(150))
            .responder(sound_reply),
        "max_concurrency = 4",
        &list,
    );
    let server = &repo.server;
    let output = repo.output("voice-prompts");

    let mut child = voice_command(&repo, &binary)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn voice-prompts");
    let reached = repo
        .runtime
        .block_on(server.wait_for_received(12, Duration::from_secs(60)));
    assert!(reached, "the first run never reached 12 requests");
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    let first = server.stats().received;
    assert!(
        first < n as u64 * VOICE_CANDIDATES,
        "killed too late ({first} requests)"
    );

    assert!(
        !output.exists(),
        "a killed run must not leave an output behind"
    );
    for file in files_below(&repo.path("training")) {
        // Leftover temp files may exist, but no committed file with torn lines.
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") && !name.starts_with('.') {
            read_jsonl(&file);
        }
    }

    let out = voice_command(&repo, &binary)
        .output()
        .expect("rerun voice-prompts");
    assert!(
        out.status.success(),
        "rerun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = read_jsonl(&output);
    assert_eq!(samples.len(), n);
    let ids: HashSet<&str> = samples.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), n, "ids are unique");
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &samples {
        *seen
            .entry(s["messages"][0]["content"].as_str().unwrap())
            .or_default() += 1;
    }
    for p in &list {
        assert_eq!(seen.get(p.as_str()), Some(&1), "prompt {p:?} exactly once");
    }
    let total = server.stats().received;
    assert!(
        total <= n as u64 * VOICE_CANDIDATES + 4,
        "{total} requests over both runs: more than the 4 in flight were paid twice (first run: {first})"
    );
}
