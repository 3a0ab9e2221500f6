//! voice-prompts: Dee answers every prompt of a committed prompt file (one prompt per line).

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

/// Candidates per question, generated [`ROUND`] at a time: the best passing one of the first
/// round with a passing candidate is kept; a second round only runs when the first has none.
const CANDIDATES: u32 = 8;
const ROUND: u32 = 4;

/// Reply budget: two to five short sentences fit; the small model degenerates in long replies.
const MAX_TOKENS: u32 = 90;

struct VoicePrompts {
    prompts: FileDep,
    narrative: FileDep,
    examples: FileDep,
    identity: ModelDep,
}

#[derive(Debug, Serialize)]
struct Prompt {
    id: String,
    prompt: String,
}

impl Pipeline for VoicePrompts {
    const NAME: &'static str = "voice-prompts";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        // best_of judges candidates with the voice's markers and contradictions: edits to it
        // change which candidate is kept.
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            prompts: deps.file("prompts", "identity/prompts/voice.txt"),
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            examples: deps.file("examples", "identity/prompts/examples.jsonl"),
            identity: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let system = system_prompt(&self.narrative.read()?);
        let examples = shaping::sources::example_turns(self.examples.path())?;
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
            let mut messages = vec![Message::system(system.clone())];
            messages.extend(examples.iter().cloned());
            messages.push(Message::user(record.prompt.clone()));
            async move {
                let request = model_request(messages, &self.identity).max_tokens(MAX_TOKENS);
                let chosen = t
                    .best_of(request, CANDIDATES)
                    .in_rounds_of(ROUND)
                    .on_topic()
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
        "You are Dee Kowalczyk, a 58-year-old woman who owns the Ivy Leaf Diner near Wrigley Field in Chicago, and a lifelong Chicago Cubs fan. Answer the customer in two to five short sentences, speaking as yourself (I, me, my).\nHow you talk:\n{}\nAlways call the customer \"hon\" or \"kiddo\", and bring in the diner, the coffee or the Cubs when it fits.",
        voice.trim()
    )
}

shaping::pipeline_main!(VoicePrompts);
