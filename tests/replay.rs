//! Replays: a run that answers every request from the response cache writes its output byte for byte as before (only the manifest changes), and early cutoff keeps the downstream of such an output CURRENT.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::echo::{Down, Echo, echo_and_down};
use common::{ServedRepo, TestRepo, find, read_jsonl, run_args};
use serde_json::Value;
use shaping::Pipeline;
use shaping::graph::{Evaluated, ready};
use shaping::manifest::{Manifest, State};
use testkit::MockConfig;

/// A repository for [`Echo`] (and its downstream [`common::Down`]) on a mock server: annotated
/// samples with one, two sequential or two parallel requests per record, and a record that fails
/// after its answer arrived (an error record with steps).
fn echo_repo(config: MockConfig) -> ServedRepo {
    let repo = ServedRepo::new(config, "");
    repo.write(
        "inputs/prompts.txt",
        "plain one\nTWO steps\nPAR both\nFAIL this\nplain two\n",
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

fn state_of(evaluated: &[Evaluated], name: &str) -> State {
    find(evaluated, name).status.state
}

fn names(evaluated: Vec<&Evaluated>) -> Vec<String> {
    evaluated.into_iter().map(|e| e.name.clone()).collect()
}

#[test]
fn a_run_replayed_from_the_cache_rewrites_no_byte_of_its_output() {
    // Jitter: answers arrive at scattered times, which the timestamps must reproduce.
    let repo = echo_repo(MockConfig::new().jitter(Duration::from_millis(20)));
    let server = &repo.server;
    repo.run::<Echo>(run_args()).unwrap();
    let output = read_bytes(&repo, "training/data/echo.jsonl");
    let errors = read_bytes(&repo, "training/data/echo.errors.jsonl");
    let first = manifest(&repo, Echo::NAME);
    let sent = server.stats().received;
    assert_eq!(sent, 7, "one request per plain record, two for TWO and PAR");
    assert_eq!(first.run.requests_sent, 7);
    let lines: Vec<Value> = read_jsonl(&repo.output(Echo::NAME));
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
    repo.write("crates/echo/src/main.rs", "// echo v1, with a comment\n");
    let status = echo_and_down(&repo);
    assert_eq!(state_of(&status, Echo::NAME), State::Stale);
    std::thread::sleep(Duration::from_millis(20));

    repo.run::<Echo>(run_args()).unwrap();
    assert_eq!(server.stats().received, sent, "a replay sends nothing");
    let second = manifest(&repo, Echo::NAME);
    assert_eq!(second.run.requests_sent, 0);
    assert_eq!(second.run.cache_hits, 7);
    assert!(
        read_bytes(&repo, "training/data/echo.jsonl") == output,
        "the replayed output differs:\n{}\n---\n{}",
        String::from_utf8_lossy(&output),
        repo.read("training/data/echo.jsonl")
    );
    assert_eq!(
        read_bytes(&repo, "training/data/echo.errors.jsonl"),
        errors,
        "the errors file is replayed byte for byte too"
    );
    // Only the manifest changed: the new code hash and this run's facts.
    assert_eq!(second.output_sha256, first.output_sha256);
    assert_ne!(second.code_hash, first.code_hash);
    assert_ne!(second.generated_at, first.generated_at);
    assert_eq!(
        state_of(&echo_and_down(&repo), Echo::NAME),
        State::Current,
        "the manifest records the new fingerprints"
    );
}

#[test]
fn early_cutoff_keeps_the_downstream_of_an_unchanged_output_current() {
    let repo = echo_repo(MockConfig::new());
    repo.run::<Echo>(run_args()).unwrap();
    repo.run::<Down>(run_args()).unwrap();
    let down = read_bytes(&repo, "training/data/down.jsonl");
    let down_manifest = repo.read("training/data/down.manifest.json");
    let none = BTreeSet::new();
    assert!(ready(&echo_and_down(&repo), &[], false, &none).is_empty());

    // The upstream's code changes: its downstream waits for it instead of being run with it.
    repo.write("crates/echo/src/main.rs", "// echo v1, reworded comment\n");
    let before = echo_and_down(&repo);
    assert_eq!(state_of(&before, Down::NAME), State::Stale);
    assert_eq!(names(ready(&before, &[], false, &none)), ["echo"]);
    repo.run::<Echo>(run_args()).unwrap();
    let done = BTreeSet::from(["echo".to_owned()]);
    let after = echo_and_down(&repo);
    assert_eq!(state_of(&after, Echo::NAME), State::Current);
    assert_eq!(
        state_of(&after, Down::NAME),
        State::Current,
        "its input came out byte-identical"
    );
    assert!(ready(&after, &[], false, &done).is_empty());
    assert_eq!(read_bytes(&repo, "training/data/down.jsonl"), down);
    assert_eq!(repo.read("training/data/down.manifest.json"), down_manifest);

    // The upstream's input changes: its output changes, and then the downstream runs.
    repo.write("inputs/prompts.txt", "plain one\nplain three\n");
    let before = echo_and_down(&repo);
    assert_eq!(names(ready(&before, &[], false, &none)), ["echo"]);
    repo.run::<Echo>(run_args()).unwrap();
    let after = echo_and_down(&repo);
    assert_eq!(
        find(&after, Down::NAME).status.reasons,
        ["File 'echo_output' content changed"]
    );
    assert_eq!(names(ready(&after, &[], false, &done)), ["down"]);
}
