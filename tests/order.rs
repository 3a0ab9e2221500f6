//! Records run unordered, outputs keep input order: a slow record never holds the window, and samples and errors still come out in input order.

mod common;

use std::time::Duration;

use clap::Parser;
use common::echo::chat_sample;
use common::{ServedRepo, read_jsonl, run_args};
use shaping::run::RunOptions;
use shaping::{
    Ctx, Declare, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample, model_request,
};
use testkit::{Fault, FaultPlan, MockConfig};

/// Records in each run; more than the record window (16 with `--workers 4`).
const RECORDS: usize = 48;

/// How long the slow record's request is held: far longer than all other records need, and
/// within the client's timeout (2 s).
const SLOW: Duration = Duration::from_millis(1500);

#[derive(serde::Serialize)]
struct Record {
    n: usize,
    prompt: String,
}

/// Record 0 is slow and fails; records 5 and 30 fail at once; the rest succeed.
fn records() -> impl Iterator<Item = Record> {
    (0..RECORDS).map(|n| Record {
        n,
        prompt: match n {
            0 => "SLOW FAIL record 0".to_owned(),
            5 | 30 => format!("FAIL record {n}"),
            _ => format!("record {n}"),
        },
    })
}

async fn answer(model: &ModelDep, t: Task, r: Record) -> Result<TrainingSample, PipelineError> {
    let reply = t
        .request(model_request(vec![Message::user(r.prompt.clone())], model))
        .await;
    let text = reply.ok_text()?.to_owned();
    if r.prompt.contains("FAIL") {
        return Err(PipelineError::new(
            format!("record {} fails", r.n),
            "test_error",
        ));
    }
    Ok(chat_sample(format!("rec-{:03}", r.n), r.prompt, text))
}

/// Collects its samples with `run_task`.
struct Collected {
    model: ModelDep,
}

impl Pipeline for Collected {
    const NAME: &'static str = "collected";

    type Sample = TrainingSample;
    fn declare(deps: &mut Declare) -> Self {
        Self {
            model: deps.model("m"),
        }
    }
    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        ctx.run_task(records(), |t, r| answer(&self.model, t, r))
            .await
    }
}

/// Streams its samples with `stream_task`, in two stages, and returns one more sample.
struct Streamed {
    model: ModelDep,
}

impl Pipeline for Streamed {
    const NAME: &'static str = "streamed";

    type Sample = TrainingSample;
    fn declare(deps: &mut Declare) -> Self {
        Self {
            model: deps.model("m"),
        }
    }
    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        ctx.stream_task(records(), |t, r| answer(&self.model, t, r))
            .await?;
        let second_stage = (0..3).map(|n| Record {
            n: RECORDS + n,
            prompt: format!("second stage {n}"),
        });
        ctx.stream_task(second_stage, |t, r| answer(&self.model, t, r))
            .await?;
        Ok(vec![TrainingSample::new(
            "returned",
            vec![Message::user("q"), Message::assistant("a")],
        )])
    }
}

/// A repository with alias `m` on a mock server that holds `SLOW` prompts for [`SLOW`].
fn slow_repo() -> ServedRepo {
    ServedRepo::new(
        MockConfig::new()
            .latency(Duration::from_millis(5))
            .jitter(Duration::from_millis(10))
            .faults(FaultPlan::none().marker("SLOW", Fault::Delay(SLOW))),
        "",
    )
}

/// Every request of the first stage reached the server while the slow one was still held:
/// the record window never waited for the record at its head.
fn assert_no_record_waited_for_the_slow_one(server: &testkit::MockServer) {
    let requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| {
            r.last_user
                .as_deref()
                .is_some_and(|p| !p.starts_with("second stage"))
        })
        .collect();
    assert_eq!(requests.len(), RECORDS);
    let slow_at = requests
        .iter()
        .find(|r| r.last_user.as_deref().is_some_and(|p| p.contains("SLOW")))
        .expect("the slow record was sent")
        .at;
    let last_at = requests.iter().map(|r| r.at).max().expect("requests");
    assert!(
        last_at < slow_at + SLOW,
        "the last request arrived {:?} after the slow one, which was held {SLOW:?}",
        last_at - slow_at
    );
}

fn ids(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect()
}

fn expected_ids(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .filter(|n| ![0, 5, 30].contains(n))
        .map(|n| format!("rec-{n:03}"))
        .collect()
}

fn failed_records(path: &std::path::Path) -> Vec<u64> {
    read_jsonl(path)
        .iter()
        .map(|e| e["__ERROR__"]["input_data"]["n"].as_u64().expect("n"))
        .collect()
}

#[test]
fn run_task_does_not_wait_for_a_slow_record_and_keeps_input_order() {
    let repo = slow_repo();
    repo.run::<Collected>(RunOptions {
        workers: Some(4),
        ..run_args()
    })
    .unwrap();
    assert_no_record_waited_for_the_slow_one(&repo.server);
    let samples = read_jsonl(&repo.output("collected"));
    assert_eq!(ids(&samples), expected_ids(0..RECORDS));
    assert_eq!(failed_records(&repo.errors("collected")), [0, 5, 30]);
}

#[test]
fn stream_task_writes_in_completion_order_and_commits_in_input_order() {
    let repo = slow_repo();
    repo.run::<Streamed>(RunOptions {
        workers: Some(4),
        ..run_args()
    })
    .unwrap();
    assert_no_record_waited_for_the_slow_one(&repo.server);
    let samples = read_jsonl(&repo.output("streamed"));
    let mut expected = expected_ids(0..RECORDS + 3);
    expected.push("returned".to_owned());
    assert_eq!(ids(&samples), expected, "stage by stage, input order");
    assert_eq!(failed_records(&repo.errors("streamed")), [0, 5, 30]);
    let manifest = repo.manifest_json("streamed");
    assert_eq!(
        manifest["output_sha256"],
        shaping::fingerprint::sha256_hex(std::fs::read(repo.output("streamed")).unwrap()),
        "the manifest hashes the ordered file"
    );
    let leftovers: Vec<_> = std::fs::read_dir(repo.path("training/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn stream_task_with_limit_writes_the_first_records_in_order() {
    let repo = slow_repo();
    repo.run::<Streamed>(RunOptions {
        workers: Some(4),
        limit: Some(20),
        ..run_args()
    })
    .unwrap();
    let samples = read_jsonl(&repo.output("streamed"));
    let mut expected = expected_ids(0..20);
    expected.extend(expected_ids(RECORDS..RECORDS + 3));
    // `--limit` applies to each stage and to the returned samples.
    expected.push("returned".to_owned());
    assert_eq!(ids(&samples), expected);
}

/// `--workers` as a pipeline binary parses it.
#[derive(Debug, Parser)]
struct WorkersFlag {
    #[command(flatten)]
    run: shaping::cli::RunArgs,
}

#[test]
fn zero_workers_is_a_clear_error() {
    let err = WorkersFlag::try_parse_from(["pipeline", "--workers", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--workers") && err.contains('0'), "{err}");
    let ok = WorkersFlag::try_parse_from(["pipeline", "--workers", "1"]).unwrap();
    assert_eq!(ok.run.workers, Some(1));
}
