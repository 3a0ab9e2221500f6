//! The test pipelines: `Echo` (one sample per prompt line, behaviours chosen by the prompt) and
//! `Down` (reads Echo's output: an edge in the build graph), both through model alias `m`.

use serde_json::Value;
use shaping::graph::Evaluated;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

use super::TestRepo;

/// A record of the test pipelines (its fields are an error record's `input_data`).
#[derive(serde::Serialize)]
pub(crate) struct Prompt {
    pub id: String,
    pub prompt: String,
}

impl Prompt {
    /// One record per line of `text`, with ids `<prefix>-0`, `<prefix>-1`, …
    pub(crate) fn lines(text: &str, prefix: &str) -> Vec<Prompt> {
        text.lines()
            .enumerate()
            .map(|(i, line)| Prompt {
                id: format!("{prefix}-{i}"),
                prompt: line.to_owned(),
            })
            .collect()
    }
}

/// A sample of one exchange: `prompt` from the user, `answer` from the assistant.
pub(crate) fn chat_sample(id: String, prompt: String, answer: String) -> TrainingSample {
    TrainingSample::new(id, vec![Message::user(prompt), Message::assistant(answer)])
}

/// One sample per line of `inputs/prompts.txt` (ids `echo-0`, `echo-1`, …), annotated by
/// default. A line is asked once (temperature 0.5) and the reply is the answer, unless it starts
/// with
/// - `TWO`: two sequential requests, the second asking "then <first reply>";
/// - `PAR`: two parallel requests, "A <line>" and "B <line>", answered "<A reply> | <B reply>";
/// - `FAIL`: asked, then the record fails with kind `test_error` (an error record with a step);
/// - `PANIC`: asked, then the task panics;
///
/// and a line that is exactly `ABORT-RUN` makes the whole run fail after its task stage.
pub(crate) struct Echo {
    prompts: FileDep,
    model: ModelDep,
}

impl Pipeline for Echo {
    const NAME: &'static str = "echo";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "inputs/prompts.txt"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = Prompt::lines(&self.prompts.read()?, Self::NAME);
        let abort = records.iter().any(|r| r.prompt == "ABORT-RUN");
        let samples = ctx
            .run_task(records, |t: Task, r: Prompt| async move {
                let ask = |text: String| model_request(vec![Message::user(text)], &self.model);
                if r.prompt.starts_with("PANIC") {
                    let _ = t.request(ask(r.prompt.clone())).await;
                    panic!("boom in task");
                }
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
                    if r.prompt.starts_with("FAIL") {
                        return Err(PipelineError::new("refused by the test", "test_error"));
                    }
                    reply.ok_text()?.to_owned()
                };
                Ok(chat_sample(r.id, r.prompt, answer))
            })
            .await?;
        if abort {
            return Err(PipelineError::new(
                "aborting after the task stage",
                "test_abort",
            ));
        }
        Ok(samples)
    }
}

/// Reads [`Echo`]'s output (file dependency `echo_output`): one sample per Echo sample (ids
/// `down-<echo id>`) asking to "summarize" its answer. Minimal output by default.
pub(crate) struct Down {
    upstream: FileDep,
    model: ModelDep,
}

impl Pipeline for Down {
    const NAME: &'static str = "down";

    type Sample = TrainingSample;
    const ANNOTATED: bool = false;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            upstream: deps.file("echo_output", "training/data/echo.jsonl"),
            model: deps.model("m"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records: Vec<Prompt> = self
            .upstream
            .read()?
            .lines()
            .map(|line| {
                let sample: Value = serde_json::from_str(line).expect("an Echo sample");
                Prompt {
                    id: format!("down-{}", sample["id"].as_str().expect("an id")),
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
            let answer = reply.ok_text()?.to_owned();
            Ok(chat_sample(r.id, r.prompt, answer))
        })
        .await
    }
}

/// The status of [`Echo`] and [`Down`] in `repo`, upstream first.
pub(crate) fn echo_and_down(repo: &TestRepo) -> Vec<Evaluated> {
    repo.evaluate(&[repo.describe::<Echo>(), repo.describe::<Down>()])
}
