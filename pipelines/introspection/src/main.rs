//! introspection: Dee writes about herself (a diary entry, a letter to her younger self, her drives), each reflective theme sampled twelve times with distinct seeds (six phrasings, each asked twice), duplicates removed.
//!
//! The training sample is the prompt and Dee's answer without the persona prompt that produced
//! it, so the model learns who she is rather than being told (Open Character Training's
//! introspection data). Each answer is the best of up to eight candidates that passes the
//! quality gate; the seeds differ because every (prompt, sample number) is its own record. The
//! themes come in several phrasings so the prompts stay diverse: the same wording asked twelve
//! times would teach one wording (and fails the gate's prompt-diversity check).

use std::collections::HashSet;

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

/// Answers asked for per prompt (each with its own seeds); with six phrasings of each theme in
/// the prompt file, a theme is sampled twelve times.
const SAMPLES_PER_PROMPT: usize = 2;

/// Candidates per answer, four at a time: a second round only when the first has none passing.
const CANDIDATES: u32 = 8;
const ROUND: u32 = 4;

/// Reply budget: a diary entry runs a little longer than a counter answer.
const MAX_TOKENS: u32 = 110;

struct Introspection {
    prompts: FileDep,
    persona: FileDep,
    examples: FileDep,
    identity: ModelDep,
}

#[derive(Debug, Serialize)]
struct Reflection {
    id: String,
    prompt: String,
    /// Which of the prompt's samples this is: part of the record, so of its seeds.
    sample: usize,
}

impl Pipeline for Introspection {
    const NAME: &'static str = "introspection";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            prompts: deps.file("prompts", "identity/prompts/introspection.txt"),
            persona: deps.file("persona", "identity/prompts/persona.txt"),
            examples: deps.file("examples", "identity/prompts/examples.jsonl"),
            identity: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let system = format!(
            "{}\nAnswer in three to six sentences, honestly and in your own voice.",
            self.persona.read()?.trim()
        );
        let examples = shaping::sources::example_turns(self.examples.path())?;
        let text = self.prompts.read()?;
        let prompts: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        // Sample-major order: with --limit N, the first N records cover every prompt.
        let records = (0..SAMPLES_PER_PROMPT).flat_map(|sample| {
            prompts
                .iter()
                .enumerate()
                .map(move |(p, prompt)| Reflection {
                    id: format!("introspection-{p:02}-{sample:02}"),
                    prompt: (*prompt).to_owned(),
                    sample,
                })
        });
        let samples = ctx
            .run_task(records, |t: Task, record: Reflection| {
                let mut messages = vec![Message::system(system.clone())];
                messages.extend(examples.iter().cloned());
                messages.push(Message::user(record.prompt.clone()));
                async move {
                    let request = model_request(messages, &self.identity).max_tokens(MAX_TOKENS);
                    let chosen = t
                        .best_of(request, CANDIDATES)
                        .in_rounds_of(ROUND)
                        .postprocess(|text| shaping::trim_to_last_sentence(text).to_owned())
                        .pick()
                        .await?;
                    Ok(TrainingSample::new(
                        record.id,
                        vec![
                            Message::user(record.prompt),
                            Message::assistant(chosen.text),
                        ],
                    ))
                }
            })
            .await?;
        // The same answer drawn twice teaches nothing twice: keep the first of each.
        let mut seen = HashSet::new();
        let before = samples.len();
        let samples: Vec<TrainingSample> = samples
            .into_iter()
            .filter(|s| seen.insert(shaping::sources::normalise(&s.messages[1].content)))
            .collect();
        ctx.report(
            "duplicates_removed",
            serde_json::json!({ "answers": before, "removed": before - samples.len() }),
        );
        Ok(samples)
    }
}

shaping::pipeline_main!(Introspection);
