//! `bench-pipeline`: a real pipeline of N generated records (one request each, outputs streamed) for `cargo xtask bench`.
//!
//! The record count comes from `SHAPING_BENCH_RECORDS` (default 1000); the model is the alias
//! `bench` of the repository's `models.toml` (`SHAPING_ROOT`). Records are generated lazily and
//! samples are streamed with [`shaping::Ctx::stream_task`], so memory does not grow with N.

use serde::Serialize;
use shaping::{
    Ctx, Declare, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample, model_request,
};

/// Records when `SHAPING_BENCH_RECORDS` is unset.
const DEFAULT_RECORDS: u64 = 1000;

struct Bench {
    model: ModelDep,
}

#[derive(Debug, Serialize)]
struct Record {
    n: u64,
}

fn record_count() -> Result<u64, PipelineError> {
    match std::env::var("SHAPING_BENCH_RECORDS") {
        Err(_) => Ok(DEFAULT_RECORDS),
        Ok(text) => text.trim().parse().map_err(|_| {
            PipelineError::new(
                format!("SHAPING_BENCH_RECORDS must be a whole number, got {text:?}"),
                "bad_input",
            )
        }),
    }
}

impl Pipeline for Bench {
    const NAME: &'static str = "bench";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self {
            model: deps.model("bench"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = (0..record_count()?).map(|n| Record { n });
        let written = ctx
            .stream_task(records, |t: Task, record: Record| async move {
                let prompt = format!("Benchmark record {}: say something short.", record.n);
                let reply = t
                    .request(
                        model_request(vec![Message::user(prompt.clone())], &self.model)
                            .max_tokens(32),
                    )
                    .await;
                let text = reply.ok_text()?.to_owned();
                Ok(TrainingSample::new(
                    format!("bench-{:07}", record.n),
                    vec![Message::user(prompt), Message::assistant(text)],
                ))
            })
            .await?;
        ctx.report("streamed", written);
        Ok(Vec::new())
    }
}

shaping::pipeline_main!(Bench);
