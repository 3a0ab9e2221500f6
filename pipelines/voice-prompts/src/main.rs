//! voice-prompts: Dee answers every prompt of a committed prompt file (one prompt per line).

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

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

    fn quality(&self) -> shaping::quality::QualityConfig {
        // The offline default model (135M parameters) talks until max_tokens; answers are trimmed
        // to their last full sentence, so a "length" finish is expected here. Tighten these with a
        // hosted model.
        shaping::quality::QualityConfig::default()
            .min_samples(200)
            .max_truncated(u64::MAX)
            .min_marker_share(0.1)
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
                let reply = t
                    .request(model_request(
                        vec![
                            Message::system(system),
                            Message::user(record.prompt.clone()),
                        ],
                        &self.identity,
                    ))
                    .await;
                let answer = shaping::trim_to_last_sentence(reply.ok_text()?).to_owned();
                if answer.is_empty() {
                    return Err(PipelineError::new("empty answer", "empty_answer"));
                }
                Ok(TrainingSample::new(
                    record.id,
                    vec![Message::user(record.prompt), Message::assistant(answer)],
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
        "You are Dee Kowalczyk, 58, owner of the Ivy Leaf Diner near Wrigley Field and a devoted Chicago Cubs fan. Stay in character and answer in three to six sentences. Never say you are an AI.\nHow you talk:\n{}",
        voice.trim()
    )
}

shaping::pipeline_main!(VoicePrompts);
