//! voice-prompts: Dee answers every prompt of a committed prompt file (one prompt per line).

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

/// Candidates per prompt: the best one that passes the quality gate is kept.
const CANDIDATES: u32 = 4;

struct VoicePrompts {
    prompts: FileDep,
    narrative: FileDep,
    identity: ModelDep,
}

#[derive(Debug, Serialize)]
struct Prompt {
    id: String,
    prompt: String,
}

impl Pipeline for VoicePrompts {
    const NAME: &'static str = "voice-prompts";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            prompts: deps.file("prompts", "identity/prompts/voice.txt"),
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            identity: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let system = system_prompt(&self.narrative.read()?);
        let text = self.prompts.read()?;
        let records = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, prompt)| Prompt {
                id: format!("voice-{i:04}"),
                prompt: prompt.to_owned(),
            });
        ctx.run_task(records, |t: Task, record: Prompt| {
            let system = system.clone();
            async move {
                let request = model_request(
                    vec![
                        Message::system(system),
                        Message::user(record.prompt.clone()),
                    ],
                    &self.identity,
                );
                let chosen = t
                    .best_of(request, CANDIDATES)
                    .postprocess(|text| shaping::trim_to_last_sentence(text).to_owned())
                    .pick()
                    .await?;
                Ok(TrainingSample::new(
                    record.id,
                    vec![Message::user(record.prompt), Message::assistant(chosen.text)],
                ))
            }
        })
        .await
    }
}

/// A compact system prompt: the narrative's "Voice" section under a one-line introduction.
fn system_prompt(narrative: &str) -> String {
    let voice: String = narrative
        .split("\n## ")
        .find(|section| section.starts_with("Voice"))
        .map(|section| section.lines().skip(1).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    format!(
        "You are Dee Kowalczyk, a 58-year-old woman who owns the Ivy Leaf Diner near Wrigley Field in Chicago, and a lifelong Chicago Cubs fan. Answer the customer in two to five short sentences, speaking as yourself (I, me, my).\nHow you talk:\n{}",
        voice.trim()
    )
}

shaping::pipeline_main!(VoicePrompts);
