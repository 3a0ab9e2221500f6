//! Foundation tests: pipelines run against a real loopback OpenAI-compatible server; staleness, provenance, errors, atomicity, bad input.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use common::echo::{Down, Echo, Prompt, chat_sample, echo_and_down};
use common::{ServedRepo, TestRepo, openai_model, read_jsonl, run_args};
use serde_json::Value;
use shaping::description::Description;
use shaping::graph::{Evaluated, plan};
use shaping::manifest::State;
use shaping::run::{RunError, RunOptions, describe_in};
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, PreferenceSample, Task,
    TrainingSample, model_request,
};
use testkit::MockConfig;

/// A repository with alias `m` on a mock server started with `config`, and four prompts for
/// [`Echo`].
fn echo_repo(config: MockConfig) -> ServedRepo {
    let env = ServedRepo::new(config, "");
    env.write("inputs/prompts.txt", "alpha\nbravo\ncharlie\ndelta\n");
    // These tests always ran without voice markers: best-of judges the relevance of every reply
    // (a reply showing a marker would skip that check).
    std::fs::remove_file(env.path("identity/voice.toml")).expect("remove voice.toml");
    env
}

/// The status of `name` ([`Echo`] or [`Down`]).
fn status_of(repo: &TestRepo, name: &str) -> Evaluated {
    common::find(&echo_and_down(repo), name).clone()
}

fn reasons(e: &Evaluated) -> String {
    e.status.reasons.join("\n")
}

#[test]
fn status_goes_through_every_transition() {
    let env = echo_repo(MockConfig::new());
    let echo = status_of(&env, "echo");
    assert_eq!(echo.status.state, State::Missing, "{:?}", echo.status);

    env.run::<Echo>(run_args()).unwrap();
    let echo = status_of(&env, "echo");
    assert_eq!(echo.status.state, State::Current, "{}", reasons(&echo));
    assert_eq!(echo.status.samples, Some(4));
    assert_eq!(echo.status.to_string(), "CURRENT (4 samples)");

    // A file dependency changes.
    env.write("inputs/prompts.txt", "alpha\nbravo\ncharlie\ndelta\necho\n");
    let echo = status_of(&env, "echo");
    assert_eq!(echo.status.state, State::Stale);
    assert_eq!(reasons(&echo), "File 'prompts' content changed");
    // ... and the downstream of a stale input is stale too.
    env.run::<Echo>(run_args()).unwrap();
    env.run::<Down>(run_args()).unwrap();
    assert_eq!(status_of(&env, "down").status.state, State::Current);
    env.write("inputs/prompts.txt", "alpha\nbravo\n");
    let down = status_of(&env, "down");
    assert_eq!(down.status.state, State::Stale);
    assert_eq!(reasons(&down), "Input from pipeline 'echo' is stale");
    env.run::<Echo>(run_args()).unwrap();
    let down = status_of(&env, "down");
    assert_eq!(reasons(&down), "File 'echo_output' content changed");
    env.run::<Down>(run_args()).unwrap();

    // A model alias is pointed elsewhere in models.local.toml (field by field).
    env.write("models.local.toml", "[models.m]\nmodel = \"other-model\"\n");
    let echo = status_of(&env, "echo");
    assert_eq!(echo.status.state, State::Stale);
    let text = reasons(&echo);
    assert!(
        text.starts_with("Model 'm' changed: openai:mock-model @ http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("→ openai:other-model @ http://127.0.0.1:"),
        "{text}"
    );
    std::fs::remove_file(env.path("models.local.toml")).unwrap();
    assert_eq!(status_of(&env, "echo").status.state, State::Current);

    // Pipeline code changes.
    env.write("crates/echo/src/main.rs", "// echo v2\n");
    assert_eq!(reasons(&status_of(&env, "echo")), "Pipeline code changed");
    env.run::<Echo>(run_args()).unwrap();

    // A --limit run is partial.
    env.run::<Echo>(RunOptions {
        limit: Some(1),
        ..run_args()
    })
    .unwrap();
    let echo = status_of(&env, "echo");
    assert_eq!(echo.status.state, State::Partial);
    assert_eq!(
        echo.status.to_string(),
        "PARTIAL (1 samples)\n  - Partial run (--limit 1, 1 samples); run without --limit for full data"
    );
    env.run::<Echo>(run_args()).unwrap();
    assert_eq!(status_of(&env, "echo").status.state, State::Current);

    // Hand-edited output.
    let edited = env
        .read("training/data/echo.jsonl")
        .replace("alpha", "ALPHA");
    env.write("training/data/echo.jsonl", &edited);
    assert_eq!(
        reasons(&status_of(&env, "echo")),
        "Output was modified after it was generated"
    );

    // Deleted output.
    std::fs::remove_file(env.path("training/data/echo.jsonl")).unwrap();
    assert_eq!(status_of(&env, "echo").status.state, State::Missing);
}

#[test]
fn data_plan_regenerates_only_what_is_stale() {
    let env = echo_repo(MockConfig::new());
    env.run::<Echo>(run_args()).unwrap();
    env.run::<Down>(run_args()).unwrap();
    let statuses = echo_and_down(&env);
    assert!(
        plan(&statuses, &[], false).is_empty(),
        "everything is current: nothing to run"
    );

    // Only down's code changes: echo must not run and must send nothing.
    env.write("crates/down/src/main.rs", "// down v2\n");
    let statuses = echo_and_down(&env);
    let planned: Vec<&str> = plan(&statuses, &[], false)
        .iter()
        .map(|(e, _)| e.name.as_str())
        .collect();
    assert_eq!(planned, ["down"]);
    let before = env.server.stats().received;
    env.run::<Down>(RunOptions {
        cache_mode: shaping::dispatch::CacheMode::Off,
        ..run_args()
    })
    .unwrap();
    let sent = env.server.stats().received - before;
    assert_eq!(
        sent, 4,
        "down sends one request per echo sample and echo sends nothing"
    );
    assert_eq!(
        env.server.prompt_count("alpha"),
        1,
        "echo's prompt was sent only by the first run"
    );

    // An upstream change plans both, upstream first, in two levels.
    env.write("inputs/prompts.txt", "alpha\nbravo\n");
    let statuses = echo_and_down(&env);
    let planned: Vec<(&str, usize)> = plan(&statuses, &[], false)
        .iter()
        .map(|(e, l)| (e.name.as_str(), *l))
        .collect();
    assert_eq!(planned, [("echo", 0), ("down", 1)]);
    // Selecting the downstream pulls in its stale upstream.
    let planned: Vec<&str> = plan(&statuses, &["down".to_owned()], false)
        .iter()
        .map(|(e, _)| e.name.as_str())
        .collect();
    assert_eq!(planned, ["echo", "down"]);
}

#[test]
fn steps_are_recorded_in_order_for_sequential_and_parallel_requests() {
    let env = echo_repo(MockConfig::new().jitter(Duration::from_millis(30)));
    env.write("inputs/prompts.txt", "TWO steps\nPAR both\nplain\n");
    env.run::<Echo>(RunOptions {
        annotate: Some(true),
        ..run_args()
    })
    .unwrap();
    let samples = read_jsonl(&env.output("echo"));
    assert_eq!(samples.len(), 3);

    let two = &samples[0];
    let steps = two["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["messages"][0]["content"], "TWO steps");
    assert_eq!(steps[0]["text"], "reply[mock-model]: TWO steps");
    assert_eq!(
        steps[1]["messages"][0]["content"],
        "then reply[mock-model]: TWO steps"
    );
    assert_eq!(
        two["messages"][1]["content"],
        "reply[mock-model]: then reply[mock-model]: TWO steps"
    );

    let par = &samples[1];
    let steps = par["steps"].as_array().unwrap();
    assert_eq!(steps[0]["messages"][0]["content"], "A PAR both");
    assert_eq!(steps[1]["messages"][0]["content"], "B PAR both");
    assert_eq!(
        par["messages"][1]["content"],
        "reply[mock-model]: A PAR both | reply[mock-model]: B PAR both"
    );

    for sample in &samples {
        for key in [
            "id",
            "messages",
            "input_data",
            "steps",
            "started_at",
            "completed_at",
        ] {
            assert!(
                sample.get(key).is_some(),
                "annotated sample lacks {key}: {sample}"
            );
        }
        assert_eq!(sample["steps"][0]["success"], true);
        assert_eq!(sample["steps"][0]["model"], "m");
    }
    assert_eq!(
        samples[2]["input_data"],
        serde_json::json!({"id": "echo-2", "prompt": "plain"})
    );
    assert_eq!(samples[2]["steps"][0]["params"]["temperature"], 0.5);
}

#[test]
fn minimal_output_has_only_id_and_messages_and_follows_input_order() {
    let prompts: Vec<String> = (0..60).map(|i| format!("prompt number {i}")).collect();
    let env = echo_repo(MockConfig::new().jitter(Duration::from_millis(40)));
    env.write("inputs/prompts.txt", &prompts.join("\n"));
    env.run::<Echo>(RunOptions {
        annotate: Some(false),
        ..run_args()
    })
    .unwrap();
    let samples = read_jsonl(&env.output("echo"));
    assert_eq!(samples.len(), 60);
    for (i, sample) in samples.iter().enumerate() {
        let keys: Vec<&String> = sample.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "messages"]);
        assert_eq!(
            sample["id"],
            format!("echo-{i}"),
            "output is in input order"
        );
    }
    let manifest = env.manifest_json("echo");
    assert_eq!(manifest["annotated"], false);
    assert_eq!(manifest["samples"], 60);
    // Down's class-level default is minimal; --annotate overrides it.
    env.run::<Down>(RunOptions {
        annotate: Some(true),
        ..run_args()
    })
    .unwrap();
    assert!(read_jsonl(&env.output("down"))[0].get("steps").is_some());
}

#[test]
fn pipeline_errors_and_panics_become_error_records_with_their_steps() {
    let env = echo_repo(MockConfig::new());
    env.write(
        "inputs/prompts.txt",
        "one\nFAIL please\ntwo\nPANIC now\nthree\nfour\n",
    );
    env.run::<Echo>(run_args()).unwrap();
    let samples = read_jsonl(&env.output("echo"));
    let ids: Vec<&str> = samples.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["echo-0", "echo-2", "echo-4", "echo-5"],
        "one bad record never stops the run"
    );
    let errors = read_jsonl(&env.errors("echo"));
    assert_eq!(errors.len(), 2);
    let failed = &errors[0]["__ERROR__"];
    assert_eq!(failed["error"], "test_error");
    assert_eq!(failed["message"], "refused by the test");
    assert_eq!(failed["input_data"]["prompt"], "FAIL please");
    assert_eq!(failed["steps"][0]["text"], "reply[mock-model]: FAIL please");
    assert!(failed["failed_at"].is_string(), "{failed}");
    let panicked = &errors[1]["__ERROR__"];
    assert_eq!(panicked["error"], "unexpected_error");
    assert!(
        panicked["message"]
            .as_str()
            .unwrap()
            .contains("boom in task"),
        "{panicked}"
    );
    assert_eq!(
        panicked["steps"].as_array().unwrap().len(),
        1,
        "steps before the panic are kept"
    );
    let manifest = env.manifest_json("echo");
    assert_eq!(
        (manifest["samples"].as_u64(), manifest["errors"].as_u64()),
        (Some(4), Some(2))
    );
}

#[test]
fn a_failed_run_leaves_the_previous_output_and_manifest_untouched() {
    let env = echo_repo(MockConfig::new());
    env.run::<Echo>(run_args()).unwrap();
    let output = env.read("training/data/echo.jsonl");
    let manifest = env.read("training/data/echo.manifest.json");

    // The pipeline fails after its task stage.
    env.write("inputs/prompts.txt", "alpha\nABORT-RUN\n");
    let err = env.run::<Echo>(run_args()).unwrap_err();
    assert!(
        err.to_string().contains("aborting after the task stage"),
        "{err}"
    );
    assert_eq!(env.read("training/data/echo.jsonl"), output);
    assert_eq!(env.read("training/data/echo.manifest.json"), manifest);

    // Most records fail (the provider is "down"): the output is not replaced by a husk.
    env.write("inputs/prompts.txt", "x\ny\nz\n");
    let dead = "[models.m]\nbase_url = \"http://127.0.0.1:9/v1\"\nconnect_timeout_secs = 0.5\n";
    env.write("models.local.toml", dead);
    let err = env.run::<Echo>(run_args()).unwrap_err();
    assert!(err.to_string().contains("3 of 3 records failed"), "{err}");
    assert_eq!(env.read("training/data/echo.jsonl"), output);
    assert_eq!(env.read("training/data/echo.manifest.json"), manifest);
    let leftovers: Vec<_> = std::fs::read_dir(env.path("training/data"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let env = echo_repo(MockConfig::new());

    // Missing file dependency.
    std::fs::remove_file(env.path("inputs/prompts.txt")).unwrap();
    let err = env.run::<Echo>(run_args()).unwrap_err().to_string();
    assert!(
        err.contains("file dependency 'prompts'")
            && err.contains("inputs/prompts.txt")
            && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(env.server.stats().received, 0);
    env.write("inputs/prompts.txt", "alpha\n");

    // Unknown alias lists the known ones.
    env.write(
        "models.toml",
        &format!(
            "[models.judge]\nprovider = \"openai\"\nmodel = \"x\"\nbase_url = \"{}\"\n",
            env.server.base_url()
        ),
    );
    let err = env.run::<Echo>(run_args()).unwrap_err().to_string();
    assert_eq!(err, "unknown model alias 'm'; known aliases: judge");

    // Malformed models.toml names the file and line.
    env.write(
        "models.toml",
        "[models.m]\nprovider = \"openai\"\nmodel = 3\n",
    );
    let err = env.run::<Echo>(run_args()).unwrap_err().to_string();
    assert!(
        err.contains("models.toml") && err.contains("line 3"),
        "{err}"
    );
    env.write(
        "models.toml",
        "[models.m]\nprovider = \"openai\"\nmodel = \"x\"\ntemprature = 0.3\n",
    );
    let err = env.run::<Echo>(run_args()).unwrap_err().to_string();
    assert!(
        err.contains("line 4") && err.contains("temprature"),
        "{err}"
    );

    // A missing API key variable fails before any request, naming the variable.
    env.write(
        "models.toml",
        &openai_model(
            "m",
            &env.server.base_url(),
            "api_key_env = \"SHAPING_TEST_UNSET_KEY\"",
        ),
    );
    let err = env.run::<Echo>(run_args()).unwrap_err().to_string();
    assert!(
        err.contains("SHAPING_TEST_UNSET_KEY") && err.contains("'m'"),
        "{err}"
    );
    assert_eq!(env.server.stats().received, 0);
}

struct Escaping;
impl Pipeline for Escaping {
    const NAME: &'static str = "escaping";

    type Sample = TrainingSample;
    fn declare(deps: &mut Declare) -> Self {
        deps.file("outside", "../secrets.txt");
        deps.file("linked", "inputs/link");
        Escaping
    }
    async fn run(&self, _: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        Ok(Vec::new())
    }
}

#[test]
fn file_dependencies_must_stay_inside_the_repository() {
    let env = echo_repo(MockConfig::new());
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("x.txt"), env.path("inputs/link")).unwrap();
    let err = describe_in::<Escaping>(env.root(), &env.crate_dir("escaping"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'outside'") && err.contains("escapes the repository"),
        "{err}"
    );
    assert!(
        err.contains("'linked'") && err.contains("symlink escape"),
        "{err}"
    );
}

#[test]
fn a_dependency_cycle_is_an_error_naming_it() {
    let desc = |name: &str, reads: &str| Description {
        name: name.into(),
        crate_dir: PathBuf::from("/nonexistent"),
        output: format!("training/data/{name}.jsonl"),
        annotated: true,
        kind: shaping::SampleKind::Chat,
        files: vec![shaping::description::DeclaredFile {
            name: "in".into(),
            path: format!("training/data/{reads}.jsonl"),
        }],
        models: vec![],
        quality: Value::Null,
    };
    let err = shaping::graph::topological_order(&[desc("a", "c"), desc("b", "a"), desc("c", "b")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dependency cycle between pipelines: a → c → b → a"
    );
}

/// Two runs of one pipeline at once (two terminals): the second waits for the first's lock,
/// both finish with an intact output, and every prompt is asked once (the second run replays
/// the answers the first cached).
#[test]
fn two_runs_of_one_pipeline_at_once_never_interleave() {
    let env = echo_repo(MockConfig::new().latency(Duration::from_millis(40)));
    let prompts: String = (0..30).map(|i| format!("word {i}\n")).collect();
    env.write("inputs/prompts.txt", &prompts);
    let results: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| env.run::<Echo>(run_args())))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for result in results {
        assert_eq!(result.unwrap(), ExitCode::SUCCESS);
    }
    assert_eq!(
        env.server.stats().received,
        30,
        "one run's requests: the second run waited, then answered from the cache"
    );
    let lines = read_jsonl(&env.output("echo"));
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("echo-{i}")).collect();
    assert_eq!(ids, expected, "one complete output in input order");
    let manifest = env.manifest_json("echo");
    assert_eq!(
        manifest["run"]["cache_hits"], 30,
        "the later run replayed everything"
    );
    assert_eq!(
        status_of(&env, "echo").status.to_string(),
        "CURRENT (30 samples)",
        "the manifest describes the output on disk"
    );
}

/// `--no-wait` fails at once (naming the process holding the lock) and touches nothing, while
/// another pipeline still runs in parallel.
#[test]
fn no_wait_fails_at_once_while_another_run_holds_the_lock() {
    use shaping::lock::{LockError, Wait, acquire};
    let env = echo_repo(MockConfig::new());
    let held = acquire(env.root(), "echo", Wait::No).unwrap();
    let err = env
        .run::<Echo>(RunOptions {
            wait: shaping::lock::Wait::No,
            ..run_args()
        })
        .unwrap_err();
    assert!(
        matches!(err, RunError::Lock(LockError::Busy { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("process {}", std::process::id())),
        "the error names the holder: {err}"
    );
    assert_eq!(env.server.stats().received, 0);
    assert!(!env.path("training/data/echo.jsonl").exists());
    assert!(
        !env.path(".shaping/cache").exists(),
        "the cache was not opened"
    );

    // The lock is per pipeline: holding `down`'s does not stop `echo`.
    drop(held);
    let _down = acquire(env.root(), "down", Wait::No).unwrap();
    assert_eq!(
        env.run::<Echo>(RunOptions {
            wait: shaping::lock::Wait::No,
            ..run_args()
        })
        .unwrap(),
        ExitCode::SUCCESS
    );
}

/// Best-of-n: `GOOD …` prompts always get a sound reply, `JUNK …` ones a loop, `MIXED …` ones
/// alternate (calls to the server are counted).
struct Picky {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Picky {
    const NAME: &'static str = "picky";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/picky.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = Prompt::lines(&self.prompts.read()?, Self::NAME);
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let request = model_request(vec![Message::user(r.prompt.clone())], &self.model);
            let chosen = t.best_of(request, 3).pick().await?;
            Ok(chat_sample(r.id, r.prompt, chosen.text))
        })
        .await
    }
}

fn sound_reply(topic: &str) -> String {
    format!(
        "Well, about {topic}: I have thought about {topic} for years at the diner. You take your time with {topic}, you get it right, and then you sit down with a cup of coffee and enjoy it."
    )
}

#[test]
fn best_of_keeps_a_passing_candidate_and_files_records_where_none_passes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&calls);
    let env = echo_repo(MockConfig::new().responder(move |chat| {
        let prompt = chat.last_user().unwrap_or_default().to_owned();
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let topic = prompt.split_whitespace().last().unwrap_or("it").to_owned();
        let junk = "I'm gonna grab the hot dog. ".repeat(9);
        if prompt.starts_with("GOOD") || (prompt.starts_with("MIXED") && n.is_multiple_of(2)) {
            sound_reply(&topic)
        } else {
            junk
        }
    }));
    // Two of three records are junk: filtered records are quality rejections, so the run still
    // replaces the output (the error-share gate counts faults only).
    env.write(
        "inputs/picky.txt",
        "GOOD pancakes\nJUNK hotdogs\nJUNK pretzels\n",
    );
    env.run::<Picky>(run_args())
        .expect("filtered records do not fail the run");

    let samples = read_jsonl(&env.output("picky"));
    assert_eq!(samples.len(), 1);
    assert_eq!(
        samples[0]["messages"][1]["content"],
        sound_reply("pancakes")
    );
    let errors = read_jsonl(&env.errors("picky"));
    assert_eq!(errors.len(), 2);
    for error in &errors {
        let e = &error["__ERROR__"];
        assert_eq!(e["error"], "filtered", "{e}");
        let reasons = e["reasons"].as_array().expect("reasons listed");
        assert_eq!(reasons.len(), 3, "one line per candidate: {reasons:?}");
        assert!(
            reasons
                .iter()
                .all(|r| r.as_str().unwrap().contains("degeneration"))
        );
        assert_eq!(
            e["steps"].as_array().unwrap().len(),
            3,
            "every candidate's step kept"
        );
    }
    let manifest = env.manifest_json("picky");
    let report = &manifest["reports"]["best_of"];
    assert_eq!(report["candidates"], 9);
    assert_eq!(report["records_accepted"], 1);
    assert_eq!(report["records_filtered"], 2);
    assert_eq!(report["acceptance_rate"], 0.3333);
    assert_eq!(report["filtered_by_reason"]["degeneration"], 2);

    // A rerun judges the cached candidates again: nothing is sent, nothing changes.
    let output = env.read("training/data/picky.jsonl");
    let sent = calls.load(Ordering::SeqCst);
    env.run::<Picky>(run_args()).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), sent, "candidates are cached");
    assert_eq!(env.read("training/data/picky.jsonl"), output);
}

/// Best-of-n in rounds: up to six candidates, three at a time.
struct Rounds {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Rounds {
    const NAME: &'static str = "rounds";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/rounds.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = Prompt::lines(&self.prompts.read()?, Self::NAME);
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let request = model_request(vec![Message::user(r.prompt.clone())], &self.model);
            let chosen = t.best_of(request, 6).in_rounds_of(3).pick().await?;
            Ok(chat_sample(r.id, r.prompt, chosen.text))
        })
        .await
    }
}

#[test]
fn best_of_rounds_stop_at_a_passing_round_and_when_the_provider_fails_them_all() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let late_calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&late_calls);
    let env = echo_repo(
        MockConfig::new()
            .responder(move |chat| {
                let prompt = chat.last_user().unwrap_or_default().to_owned();
                let topic = prompt.split_whitespace().last().unwrap_or("it").to_owned();
                // LATE: the first round's three candidates loop, the second round's are sound.
                let late = prompt.starts_with("LATE") && counter.fetch_add(1, Ordering::SeqCst) < 3;
                if prompt.starts_with("GOOD") || (prompt.starts_with("LATE") && !late) {
                    sound_reply(&topic)
                } else {
                    "I'm gonna grab the hot dog. ".repeat(9)
                }
            })
            .faults(testkit::FaultPlan::none().marker("DENIED", testkit::Fault::Status(401))),
    );
    env.write(
        "inputs/rounds.txt",
        "GOOD pancakes\nLATE waffles\nJUNK pretzels\nDENIED toast\n",
    );
    env.run::<Rounds>(RunOptions {
        max_error_share: 0.5,
        ..run_args()
    })
    .unwrap();
    // A passing first round ends the search; a rejected one earns a second round; six rejected
    // candidates file the record; a provider that answers no candidate gets no second round.
    assert_eq!(env.server.prompt_count("GOOD pancakes"), 3);
    assert_eq!(env.server.prompt_count("LATE waffles"), 6);
    assert_eq!(env.server.prompt_count("JUNK pretzels"), 6);
    assert_eq!(env.server.prompt_count("DENIED toast"), 3);
    let samples = read_jsonl(&env.output("rounds"));
    let kept: Vec<&str> = samples
        .iter()
        .map(|s| s["messages"][1]["content"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [sound_reply("pancakes"), sound_reply("waffles")]);
    let errors = read_jsonl(&env.errors("rounds"));
    assert_eq!(errors.len(), 2);
}

#[test]
fn best_of_picks_a_passing_candidate_among_junk() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&calls);
    let env = echo_repo(MockConfig::new().responder(move |chat| {
        let prompt = chat.last_user().unwrap_or_default().to_owned();
        let topic = prompt.split_whitespace().last().unwrap_or("it").to_owned();
        // Exactly one of every three calls is sound, whichever candidate it lands on.
        if counter.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
            sound_reply(&topic)
        } else {
            "Yes, I'm an AI language model designed to offer guidance on waffles and more."
                .to_owned()
        }
    }));
    env.write("inputs/picky.txt", "MIXED waffles\n");
    env.run::<Picky>(run_args()).unwrap();
    let samples = read_jsonl(&env.output("picky"));
    assert_eq!(samples.len(), 1, "one of the three candidates passes");
    assert_eq!(samples[0]["messages"][1]["content"], sound_reply("waffles"));
    assert_eq!(samples[0]["steps"].as_array().unwrap().len(), 3);
    assert!(!env.path("training/data/picky.errors.jsonl").exists());
}

/// Preference pairs from the model's reply: `same` records pair a reply with itself (invalid).
struct Pairs {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Pairs {
    const NAME: &'static str = "pairs";

    type Sample = PreferenceSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/pairs.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<PreferenceSample>, PipelineError> {
        let records = Prompt::lines(&self.prompts.read()?, Self::NAME);
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let prompt = vec![Message::user(r.prompt.clone())];
            let chosen = t
                .request(model_request(prompt.clone(), &self.model))
                .await
                .ok_text()?
                .to_owned();
            let rejected = if r.prompt.starts_with("same") {
                chosen.clone()
            } else {
                format!("plain answer to {}", r.prompt)
            };
            Ok(PreferenceSample::new(r.id, prompt, chosen, rejected).score("margin", 1.0))
        })
        .await
    }
}

/// Conversations of two exchanges; `open` records end on the user's turn (invalid).
struct Turns {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Turns {
    const NAME: &'static str = "turns";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/turns.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = Prompt::lines(&self.prompts.read()?, Self::NAME);
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let mut messages = vec![
                Message::system("Be brief."),
                Message::user(r.prompt.clone()),
            ];
            let first = t
                .request(model_request(messages.clone(), &self.model))
                .await;
            messages.push(Message::assistant(first.ok_text()?));
            messages.push(Message::user(format!("and then? ({})", r.prompt)));
            if !r.prompt.starts_with("open") {
                let second = t
                    .request(model_request(messages.clone(), &self.model))
                    .await;
                messages.push(Message::assistant(second.ok_text()?));
            }
            Ok(TrainingSample::new(r.id, messages))
        })
        .await
    }
}

#[test]
fn samples_of_either_kind_are_written_in_their_format_and_invalid_ones_become_errors() {
    let env = echo_repo(MockConfig::new());
    env.write("inputs/pairs.txt", "pie\nsame pie\ncoffee\n");
    env.write("inputs/turns.txt", "pie\nopen pie\ncoffee\n");

    let description = describe_in::<Pairs>(env.root(), &env.crate_dir("pairs")).unwrap();
    assert_eq!(description.kind, shaping::SampleKind::Preference);
    env.run::<Pairs>(run_args())
        .expect("one invalid pair of three");
    let pairs = read_jsonl(&env.output("pairs"));
    assert_eq!(pairs.len(), 2);
    let first = &pairs[0];
    assert_eq!(
        first["prompt"],
        serde_json::json!([{"role": "user", "content": "pie"}])
    );
    assert_eq!(first["chosen"][0]["role"], "assistant");
    assert_eq!(first["rejected"][0]["content"], "plain answer to pie");
    assert_eq!(first["scores"]["margin"], 1.0);
    assert_eq!(
        first["steps"].as_array().unwrap().len(),
        1,
        "provenance kept"
    );
    let errors = read_jsonl(&env.errors("pairs"));
    assert_eq!(errors.len(), 1);
    let error = &errors[0]["__ERROR__"];
    assert_eq!(error["error"], "invalid_sample");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("'pairs-1'")
            && message.contains("preference")
            && message.contains("chosen and rejected are the same text"),
        "{message}"
    );
    assert_eq!(env.manifest_json("pairs")["kind"], "preference");

    env.run::<Turns>(run_args())
        .expect("one invalid conversation of three");
    let conversations = read_jsonl(&env.output("turns"));
    assert_eq!(conversations.len(), 2);
    let roles: Vec<&str> = conversations[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    let errors = read_jsonl(&env.errors("turns"));
    let message = errors[0]["__ERROR__"]["message"].as_str().unwrap();
    assert!(message.contains("ends on a user turn"), "{message}");
    assert_eq!(env.manifest_json("turns")["kind"], "chat");
}
