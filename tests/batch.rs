//! Batch mode against the loopback server's batch endpoints (OpenAI Batch API and Anthropic Message Batches): jobs per step, answers matched by `custom_id` in shuffled result files, failed and expired items sent again (only those), a run killed with SIGKILL between upload and completion resuming the same job, cancelling, and the errors for aliases without a batch API.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::echo::Echo;
use common::{ServedRepo, read_jsonl, run_args};
use shaping::run::{RunError, RunOptions};
use testkit::{Fault, FaultPlan, MockConfig};

/// Polls and collects quickly, so tests take seconds.
const FAST: &str = "batch = true\nbatch_poll_secs = 0.05\nbatch_collect_secs = 0.1\n";

fn anthropic_model(base_url: &str, extra: &str) -> String {
    format!(
        "[models.m]\nprovider = \"anthropic\"\nmodel = \"mock-claude\"\nbase_url = \"{base_url}\"\napi_key_env = \"SHAPING_TEST_BATCH_KEY\"\nmax_retries = 3\ntimeout_secs = 2\n{extra}\n"
    )
}

fn prompts(n: usize, prefix: &str) -> String {
    (0..n).map(|i| format!("{prefix} {i}\n")).collect()
}

/// Every sample's answer names its own prompt (the mock replies `reply[<model>]: <prompt>`), so
/// an answer matched to the wrong request shows.
fn answers_by_prompt(repo: &ServedRepo) -> BTreeMap<String, String> {
    read_jsonl(&repo.output("echo"))
        .iter()
        .map(|s| {
            (
                s["messages"][0]["content"].as_str().unwrap().to_owned(),
                s["messages"][1]["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn batch_dir_files(repo: &ServedRepo) -> Vec<String> {
    let dir = repo.path(".shaping/batches/echo");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn openai_batch_answers_every_record_one_job_per_step_at_half_price() {
    let repo = ServedRepo::new(
        MockConfig::new().batch_latency(Duration::from_millis(300)),
        &format!("{FAST}price_input_per_mtok = 2.0\nprice_output_per_mtok = 8.0\n"),
    );
    // 20 one-step records and 5 two-step ones: step 1 of all 25 goes into one job, the 5 second
    // steps into the next.
    let mut text = prompts(20, "question");
    text.push_str(&prompts(5, "TWO step"));
    repo.write("inputs/prompts.txt", &text);
    repo.run::<Echo>(run_args()).expect("batch run");

    let answers = answers_by_prompt(&repo);
    assert_eq!(answers.len(), 25);
    for (prompt, answer) in &answers {
        if prompt.starts_with("TWO") {
            assert_eq!(
                answer,
                &format!("reply[mock-model]: then reply[mock-model]: {prompt}")
            );
        } else {
            assert_eq!(answer, &format!("reply[mock-model]: {prompt}"));
        }
    }
    let stats = repo.server.stats();
    assert_eq!(stats.batches_created, 2, "one job per step: {stats:?}");
    assert_eq!(stats.files_uploaded, 2);
    assert_eq!(stats.accepted, 0, "no interactive request");
    let jobs = repo.server.batches();
    assert_eq!(jobs[0].custom_ids.len(), 25);
    assert_eq!(jobs[1].custom_ids.len(), 5);
    let ids: HashSet<&String> = jobs.iter().flat_map(|j| &j.custom_ids).collect();
    assert_eq!(ids.len(), 30, "a custom_id per request");

    let manifest = repo.manifest_json("echo");
    let batch = &manifest["reports"]["batch"];
    assert_eq!(batch["jobs"], 2, "{batch}");
    assert_eq!(batch["requests_in_jobs"], 30);
    assert_eq!(batch["models"]["m"]["price_factor"], 0.5);
    let run = &manifest["run"];
    let interactive = run["input_tokens"].as_f64().unwrap() / 1e6 * 2.0
        + run["output_tokens"].as_f64().unwrap() / 1e6 * 8.0;
    let cost = run["estimated_cost_usd"].as_f64().unwrap();
    assert!(
        (cost - interactive / 2.0).abs() < 1e-12,
        "batch cost {cost} is half of {interactive}"
    );
    // Every answer is in the response cache, so the job files are gone.
    assert!(
        batch_dir_files(&repo).is_empty(),
        "{:?}",
        batch_dir_files(&repo)
    );

    // A rerun is answered from the cache: no new job.
    repo.run::<Echo>(RunOptions { ..run_args() })
        .expect("rerun");
    assert_eq!(repo.server.stats().batches_created, 2);
}

#[test]
fn anthropic_failed_and_expired_items_are_sent_again_and_only_those() {
    // SAFETY: tests of this binary that read the variable set the same value.
    unsafe { std::env::set_var("SHAPING_TEST_BATCH_KEY", "sk-batch-test") };
    let repo = ServedRepo::with_models(
        MockConfig::new()
            .api_key("sk-batch-test")
            .batch_latency(Duration::from_millis(200))
            .faults(
                FaultPlan::none()
                    .marker_times("FLAKY", Fault::Status(500), 1)
                    .marker_times("EXPIRE", Fault::Expire, 1),
            ),
        |base| anthropic_model(&base.replace("/v1", ""), FAST),
    );
    let mut text = prompts(12, "ask");
    text.push_str("FLAKY one\nEXPIRE two\n");
    repo.write("inputs/prompts.txt", &text);
    repo.run::<Echo>(run_args()).expect("batch run");

    let answers = answers_by_prompt(&repo);
    assert_eq!(answers.len(), 14);
    for (prompt, answer) in &answers {
        assert_eq!(answer, &format!("reply[mock-claude]: {prompt}"));
    }
    // The failed item is retried after tens of milliseconds, the expired one after the
    // timeout backoff, so they may come back in one later job or in two.
    let jobs = repo.server.batches();
    assert!((2..=3).contains(&jobs.len()), "{} jobs", jobs.len());
    assert_eq!(jobs[0].custom_ids.len(), 14);
    let again: Vec<&String> = jobs[1..].iter().flat_map(|j| &j.custom_ids).collect();
    assert_eq!(
        again.len(),
        2,
        "only the failed and the expired item: {again:?}"
    );
    for id in again {
        assert!(
            jobs[0].custom_ids.contains(id),
            "sent again under the same custom_id"
        );
    }
    let stats = repo.server.stats();
    assert_eq!(stats.batch_items_failed, 2, "{stats:?}");
    assert_eq!(stats.batch_items_succeeded, 14);
}

/// The child half of [`sigkill_between_upload_and_completion_resumes_the_same_job`]: runs Echo
/// in the repository named by the environment (a no-op otherwise).
#[test]
fn child_batch_run() {
    let Ok(root) = std::env::var("SHAPING_BATCH_CHILD_ROOT") else {
        return;
    };
    let root = std::path::PathBuf::from(root);
    let code = shaping::run::run_in::<Echo>(&root, &root.join("crates/echo"), run_args());
    assert!(code.is_ok(), "{:?}", code.err());
}

/// Start a child run of Echo in `repo`, SIGKILL it once its job is submitted and saved, and
/// return the saved state file's path.
fn kill_after_submission(repo: &ServedRepo) -> std::path::PathBuf {
    repo.crate_dir("echo");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_batch_run",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHAPING_BATCH_CHILD_ROOT", repo.root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child run");
    let state_file = || {
        batch_dir_files(repo)
            .into_iter()
            .find(|f| f.ends_with(".json"))
            .map(|f| repo.path(&format!(".shaping/batches/echo/{f}")))
    };
    // Wait until the child has saved the job's id, then kill it while the job is in progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let state = loop {
        if let Some(path) = state_file()
            && std::fs::read_to_string(&path)
                .unwrap_or_default()
                .contains("\"submitted\"")
        {
            break path;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never submitted and saved"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(
        !repo.output("echo").exists(),
        "a killed run writes no output"
    );
    assert_eq!(repo.server.stats().batches_created, 1);
    state
}

#[test]
fn sigkill_between_upload_and_completion_resumes_the_same_job() {
    let repo = ServedRepo::new(
        MockConfig::new().batch_latency(Duration::from_secs(600)),
        FAST,
    );
    repo.write("inputs/prompts.txt", &prompts(30, "killed"));
    kill_after_submission(&repo);

    // The job finishes while nobody waits; the rerun picks it up instead of sending again.
    repo.server.set_batch_latency(Duration::from_millis(100));
    repo.run::<Echo>(run_args()).expect("rerun");
    let answers = answers_by_prompt(&repo);
    assert_eq!(answers.len(), 30);
    for (prompt, answer) in &answers {
        assert_eq!(answer, &format!("reply[mock-model]: {prompt}"));
    }
    let stats = repo.server.stats();
    assert_eq!(stats.batches_created, 1, "nothing sent twice: {stats:?}");
    assert_eq!(stats.files_uploaded, 1);
    assert_eq!(stats.accepted, 0);
    assert!(
        batch_dir_files(&repo).is_empty(),
        "{:?}",
        batch_dir_files(&repo)
    );
}

#[test]
fn a_cancelled_job_fails_its_records_and_the_next_run_sends_them_again() {
    let repo = ServedRepo::new(
        MockConfig::new().batch_latency(Duration::from_secs(600)),
        FAST,
    );
    repo.write("inputs/prompts.txt", &prompts(10, "cancel me"));
    let root = repo.root().to_owned();
    let crate_dir = repo.crate_dir("echo");
    let run =
        std::thread::spawn(move || shaping::run::run_in::<Echo>(&root, &crate_dir, run_args()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let job_id = loop {
        let saved = shaping::provider::batch::admin::list(repo.root(), false).unwrap();
        if let Some(id) = saved.iter().find_map(|j| j.state.job_id.clone()) {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "no job was submitted");
        std::thread::sleep(Duration::from_millis(20));
    };
    let listed = shaping::provider::batch::admin::list(repo.root(), true).unwrap();
    let live = listed[0].live.as_ref().unwrap().as_ref().unwrap();
    assert!(!live.ended, "{live:?}");
    let (pipeline, _) = shaping::provider::batch::admin::cancel(repo.root(), &job_id).unwrap();
    assert_eq!(pipeline, "echo");
    let result = run.join().unwrap();
    assert!(
        matches!(result, Err(RunError::TooManyErrors { .. })),
        "every record was cancelled: {result:?}"
    );
    assert!(!repo.output("echo").exists());

    repo.server.set_batch_latency(Duration::from_millis(100));
    repo.run::<Echo>(run_args()).expect("rerun");
    assert_eq!(answers_by_prompt(&repo).len(), 10);
    assert_eq!(repo.server.stats().batches_created, 2);
}

#[test]
fn batch_mode_without_a_batch_api_is_an_error_before_anything_is_sent() {
    // An OpenAI-compatible server without /v1/batches (every route under this prefix is 404).
    let repo = ServedRepo::with_models(MockConfig::new(), |base| {
        common::openai_model("m", &format!("{base}/plain"), "")
    });
    repo.write("inputs/prompts.txt", &prompts(3, "never sent"));
    let err = repo
        .run::<Echo>(RunOptions {
            batch: true,
            ..run_args()
        })
        .expect_err("no batch API");
    let message = format!("{err:#}");
    assert!(message.contains("model 'm'"), "{message}");
    assert!(message.contains("no openai batch API"), "{message}");
    assert_eq!(repo.server.stats().accepted, 0);
    assert_eq!(repo.server.stats().files_uploaded, 0);

    // A local model has no batch API at all.
    let local = common::TestRepo::new(
        "[models.m]\nprovider = \"llama-cpp\"\npath = \"/nonexistent/model.gguf\"\n",
    );
    local.write("inputs/prompts.txt", "x\n");
    let err = local
        .run::<Echo>(RunOptions {
            batch: true,
            ..run_args()
        })
        .expect_err("llama-cpp has no batch API");
    let message = format!("{err:#}");
    assert!(
        message.contains("model 'm' is a local llama-cpp model"),
        "{message}"
    );
}

#[test]
fn batch_settings_out_of_range_name_the_alias() {
    let cases = [
        (
            "batch = true\nbatch_max_requests = 60000\n",
            "between 1 and 50000",
        ),
        ("batch_price_factor = 0\n", "batch_price_factor"),
        ("batch_poll_secs = -1\n", "batch_poll_secs"),
    ];
    for (extra, expected) in cases {
        let repo =
            common::TestRepo::new(&common::openai_model("m", "http://127.0.0.1:9/v1", extra));
        let err = shaping::models::ModelsConfig::load(repo.root()).expect_err(extra);
        let message = format!("{err:#}");
        assert!(message.contains("model 'm'"), "{extra}: {message}");
        assert!(message.contains(expected), "{extra}: {message}");
    }
    let repo = common::TestRepo::new(
        "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\nbase_urls = [\"http://127.0.0.1:9/v1\", \"http://127.0.0.1:10/v1\"]\nbatch = true\n",
    );
    let err = shaping::models::ModelsConfig::load(repo.root()).expect_err("replicas");
    let message = format!("{err:#}");
    assert!(message.contains("model 'm'"), "{message}");
    assert!(message.contains("replica set"), "{message}");
}

/// A run killed after the provider created its job but before the job's id was saved: the
/// rerun finds the job at the provider (OpenAI: by `metadata.shaping_job`; Anthropic: by size
/// and creation time) instead of paying for it again.
#[test]
fn a_job_created_but_not_saved_is_found_at_the_provider() {
    // SAFETY: tests of this binary that read the variable set the same value.
    unsafe { std::env::set_var("SHAPING_TEST_BATCH_KEY", "sk-batch-test") };
    for anthropic in [false, true] {
        let config = MockConfig::new()
            .api_key("sk-batch-test")
            .batch_latency(Duration::from_secs(600));
        let repo = if anthropic {
            ServedRepo::with_models(config, |base| {
                anthropic_model(&base.replace("/v1", ""), FAST)
            })
        } else {
            ServedRepo::new(
                config,
                &format!("{FAST}api_key_env = \"SHAPING_TEST_BATCH_KEY\"\n"),
            )
        };
        repo.write("inputs/prompts.txt", &prompts(8, "lost id"));
        let state_path = kill_after_submission(&repo);
        // Back to the moment before the create call answered.
        let mut state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
        state["stage"] = "prepared".into();
        state.as_object_mut().unwrap().remove("job_id");
        state.as_object_mut().unwrap().remove("status");
        std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

        repo.server.set_batch_latency(Duration::from_millis(100));
        repo.run::<Echo>(run_args()).expect("rerun");
        assert_eq!(answers_by_prompt(&repo).len(), 8, "anthropic: {anthropic}");
        assert_eq!(
            repo.server.stats().batches_created,
            1,
            "anthropic: {anthropic}: the job was adopted, not created again"
        );
    }
}
