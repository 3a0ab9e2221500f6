//! Replays: a run that answers every request from the response cache writes its output byte for byte as before (only the manifest changes), and early cutoff keeps the downstream of such an output CURRENT.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestRepo, openai_model, run_args, start_server};
use serde_json::Value;
use shaping::description::Description;
use shaping::fingerprint::FileHasher;
use shaping::graph::{Evaluated, evaluate, ready};
use shaping::manifest::{Manifest, State};
use shaping::models::ModelsConfig;
use shaping::run::describe_in;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};
use testkit::MockConfig;

#[derive(serde::Serialize)]
struct Prompt {
    id: String,
    prompt: String,
}

/// Annotated samples with one, two sequential or two parallel requests per record, and a record
/// that fails after its answer arrived (an error record with steps).
struct Answers {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Answers {
    const NAME: &'static str = "answers";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/prompts.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records: Vec<Prompt> = self
            .prompts
            .read()?
            .lines()
            .enumerate()
            .map(|(i, p)| Prompt {
                id: format!("answers-{i}"),
                prompt: p.to_owned(),
            })
            .collect();
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let ask = |text: String| model_request(vec![Message::user(text)], &self.model);
            let answer = if r.prompt.starts_with("TWO") {
                let first = t.request(ask(r.prompt.clone())).await;
                let second = t.request(ask(format!("then {}", first.ok_text()?))).await;
                second.ok_text()?.to_owned()
            } else if r.prompt.starts_with("PAR") {
                let replies = t
                    .all([
                        ask(format!("A {}", r.prompt)),
                        ask(format!("B {}", r.prompt)),
                    ])
                    .await;
                format!("{} | {}", replies[0].ok_text()?, replies[1].ok_text()?)
            } else {
                let reply = t.request(ask(r.prompt.clone()).temperature(0.5)).await;
                if r.prompt.starts_with("REJECT") {
                    return Err(PipelineError::new("the reply is unusable", "parse_error"));
                }
                reply.ok_text()?.to_owned()
            };
            Ok(TrainingSample::new(
                r.id,
                vec![Message::user(r.prompt), Message::assistant(answer)],
            ))
        })
        .await
    }
}

/// Reads `answers`' output: the downstream of an edge in the graph.
struct Summaries {
    upstream: FileDep,
    model: ModelDep,
}

impl Pipeline for Summaries {
    const NAME: &'static str = "summaries";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            upstream: deps.file("answers_output", "training/data/answers.jsonl"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records: Vec<Prompt> = self
            .upstream
            .read()?
            .lines()
            .map(|line| {
                let sample: Value = serde_json::from_str(line).expect("upstream line is JSON");
                Prompt {
                    id: format!("summary-{}", sample["id"].as_str().unwrap_or_default()),
                    prompt: format!("summarize {}", sample["messages"][1]["content"]),
                }
            })
            .collect();
        ctx.run_task(records, |t: Task, r: Prompt| async move {
            let reply = t
                .request(model_request(
                    vec![Message::user(r.prompt.clone())],
                    &self.model,
                ))
                .await;
            Ok(TrainingSample::new(
                r.id,
                vec![
                    Message::user(r.prompt),
                    Message::assistant(reply.ok_text()?.to_owned()),
                ],
            ))
        })
        .await
    }
}

fn repo_with_server(base_url: &str) -> TestRepo {
    let repo = TestRepo::new(&openai_model("m", base_url, ""));
    repo.write(
        "inputs/prompts.txt",
        "plain one\nTWO steps\nPAR both\nREJECT this\nplain two\n",
    );
    repo
}

fn read_bytes(repo: &TestRepo, rel: &str) -> Vec<u8> {
    std::fs::read(repo.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn manifest(repo: &TestRepo, name: &str) -> Manifest {
    Manifest::read(&repo.manifest(name))
        .expect("manifest reads")
        .expect("manifest exists")
}

fn statuses(repo: &TestRepo) -> Vec<Evaluated> {
    let descriptions: Vec<Description> = vec![
        describe_in::<Answers>(repo.root(), &repo.crate_dir(Answers::NAME)).unwrap(),
        describe_in::<Summaries>(repo.root(), &repo.crate_dir(Summaries::NAME)).unwrap(),
    ];
    evaluate(
        repo.root(),
        &descriptions,
        &ModelsConfig::load(repo.root()).unwrap(),
        &FileHasher::for_repo(repo.root()),
    )
    .unwrap()
}

fn state_of(evaluated: &[Evaluated], name: &str) -> State {
    evaluated
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.status.state)
        .unwrap_or_else(|| panic!("no pipeline {name}"))
}

fn names(evaluated: Vec<&Evaluated>) -> Vec<String> {
    evaluated.into_iter().map(|e| e.name.clone()).collect()
}

#[test]
fn a_run_replayed_from_the_cache_rewrites_no_byte_of_its_output() {
    // Jitter: answers arrive at scattered times, which the timestamps must reproduce.
    let (_runtime, server) = start_server(MockConfig::new().jitter(Duration::from_millis(20)));
    let repo = repo_with_server(&server.base_url());
    repo.run::<Answers>(run_args()).unwrap();
    let output = read_bytes(&repo, "training/data/answers.jsonl");
    let errors = read_bytes(&repo, "training/data/answers.errors.jsonl");
    let first = manifest(&repo, Answers::NAME);
    let sent = server.stats().received;
    assert_eq!(sent, 7, "one request per plain record, two for TWO and PAR");
    assert_eq!(first.run.requests_sent, 7);
    let lines: Vec<Value> = common::read_jsonl(&repo.output(Answers::NAME));
    assert_eq!(lines.len(), 4);
    for line in &lines {
        assert!(line.get("pipeline_commit").is_none(), "{line}");
        assert!(line["started_at"].is_string() && line["completed_at"].is_string());
        for step in line["steps"].as_array().unwrap() {
            assert!(step.get("cached").is_none(), "{step}");
            assert!(step["requested_at"].is_string() && step["answered_at"].is_string());
        }
    }

    // Change what the code hash covers (a comment in the pipeline's crate): STALE.
    repo.write(
        "crates/answers/src/main.rs",
        "// answers v1, with a comment\n",
    );
    let status = statuses(&repo);
    assert_eq!(state_of(&status, Answers::NAME), State::Stale);
    std::thread::sleep(Duration::from_millis(20));

    repo.run::<Answers>(run_args()).unwrap();
    assert_eq!(server.stats().received, sent, "a replay sends nothing");
    let second = manifest(&repo, Answers::NAME);
    assert_eq!(second.run.requests_sent, 0);
    assert_eq!(second.run.cache_hits, 7);
    assert!(
        read_bytes(&repo, "training/data/answers.jsonl") == output,
        "the replayed output differs:\n{}\n---\n{}",
        String::from_utf8_lossy(&output),
        repo.read("training/data/answers.jsonl")
    );
    assert_eq!(
        read_bytes(&repo, "training/data/answers.errors.jsonl"),
        errors,
        "the errors file is replayed byte for byte too"
    );
    // Only the manifest changed: the new code hash and this run's facts.
    assert_eq!(second.output_sha256, first.output_sha256);
    assert_ne!(second.code_hash, first.code_hash);
    assert_ne!(second.generated_at, first.generated_at);
    assert_eq!(
        state_of(&statuses(&repo), Answers::NAME),
        State::Current,
        "the manifest records the new fingerprints"
    );
}

#[test]
fn early_cutoff_keeps_the_downstream_of_an_unchanged_output_current() {
    let (_runtime, server) = start_server(MockConfig::new());
    let repo = repo_with_server(&server.base_url());
    repo.run::<Answers>(run_args()).unwrap();
    repo.run::<Summaries>(run_args()).unwrap();
    let summaries = read_bytes(&repo, "training/data/summaries.jsonl");
    let summaries_manifest = repo.read("training/data/summaries.manifest.json");
    let none = BTreeSet::new();
    assert!(ready(&statuses(&repo), &[], false, &none).is_empty());

    // The upstream's code changes: its downstream waits for it instead of being run with it.
    repo.write(
        "crates/answers/src/main.rs",
        "// answers v1, reworded comment\n",
    );
    let before = statuses(&repo);
    assert_eq!(state_of(&before, Summaries::NAME), State::Stale);
    assert_eq!(names(ready(&before, &[], false, &none)), ["answers"]);
    repo.run::<Answers>(run_args()).unwrap();
    let done = BTreeSet::from(["answers".to_owned()]);
    let after = statuses(&repo);
    assert_eq!(state_of(&after, Answers::NAME), State::Current);
    assert_eq!(
        state_of(&after, Summaries::NAME),
        State::Current,
        "its input came out byte-identical"
    );
    assert!(ready(&after, &[], false, &done).is_empty());
    assert_eq!(
        read_bytes(&repo, "training/data/summaries.jsonl"),
        summaries
    );
    assert_eq!(
        repo.read("training/data/summaries.manifest.json"),
        summaries_manifest
    );

    // The upstream's input changes: its output changes, and then the downstream runs.
    repo.write("inputs/prompts.txt", "plain one\nplain three\n");
    let before = statuses(&repo);
    assert_eq!(names(ready(&before, &[], false, &none)), ["answers"]);
    repo.run::<Answers>(run_args()).unwrap();
    let after = statuses(&repo);
    let summaries_status = after.iter().find(|e| e.name == "summaries").unwrap();
    assert_eq!(
        summaries_status.status.reasons,
        ["File 'answers_output' content changed"]
    );
    assert_eq!(names(ready(&after, &[], false, &done)), ["summaries"]);
}
