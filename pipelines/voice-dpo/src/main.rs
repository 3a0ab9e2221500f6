//! voice-dpo: preference pairs that teach Dee's voice: chosen is voice-prompts' in-character answer (persona prompt, best of up to eight), rejected is the same model answering the bare question with no persona.
//!
//! The prompt of each pair is the customer's question alone, with no system prompt: trained on
//! these pairs, the model should prefer Dee's answer without being told to be Dee (the recipe of
//! Open Character Training's DPO stage). Chosen answers are read from the committed
//! `voice-prompts` output, so this pipeline is downstream of it in the build graph and only pays
//! for the rejected answers.

use std::path::Path;

use serde::Serialize;
use shaping::format::ChatLine;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, PreferenceSample, Task,
    model_request,
};

/// Reply budget of the rejected answer: the same as voice-prompts' chosen ones.
const MAX_TOKENS: u32 = 90;

/// Rejected candidates per question, asked one at a time until one makes a valid pair (differs
/// from chosen and shows fewer voice markers).
const REJECTED_CANDIDATES: u32 = 3;

struct VoiceDpo {
    chosen: FileDep,
    base: ModelDep,
}

/// One question with its chosen answer. The cache key of the rejected answer hashes this
/// record, so a changed chosen answer asks for a new rejected one.
#[derive(Debug, Serialize)]
struct Question {
    id: String,
    prompt: String,
    chosen: String,
}

impl Pipeline for VoiceDpo {
    const NAME: &'static str = "voice-dpo";

    type Sample = PreferenceSample;

    fn declare(deps: &mut Declare) -> Self {
        // The pair rules count the voice's markers: edits to it change which pairs are kept.
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            chosen: deps.file("chosen", "training/data/voice-prompts.jsonl"),
            // The base behaviour: the identity's model with no persona prompt.
            base: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<PreferenceSample>, PipelineError> {
        let questions = read_questions(self.chosen.path())?;
        ctx.run_task(questions, |t: Task, question: Question| async move {
            let prompt = vec![Message::user(question.prompt.clone())];
            let detectors = t.detectors();
            let chosen_markers = detectors.markers(&question.chosen).len();
            let mut reasons = Vec::new();
            for candidate in 1..=REJECTED_CANDIDATES {
                let request = model_request(prompt.clone(), &self.base).max_tokens(MAX_TOKENS);
                let response = t.request(request).await;
                let rejected = shaping::trim_to_last_sentence(response.ok_text()?).to_owned();
                // The gate's pair rules: not empty, not chosen again, not more in voice.
                let problems = detectors.check_pair(&question.chosen, &rejected);
                if problems.is_empty() {
                    let rejected_markers = detectors.markers(&rejected).len();
                    return Ok(PreferenceSample::new(
                        question.id,
                        prompt,
                        question.chosen,
                        rejected,
                    )
                    .score("chosen_voice_markers", chosen_markers as f64)
                    .score("rejected_voice_markers", rejected_markers as f64));
                }
                reasons.extend(
                    problems
                        .iter()
                        .map(|problem| format!("rejected candidate {candidate}: {problem}")),
                );
            }
            Err(PipelineError::filtered(
                format!("no rejected answer of {REJECTED_CANDIDATES} made a valid pair"),
                reasons,
            ))
        })
        .await
    }
}

/// The questions and chosen answers of voice-prompts' output, one per line, in its order.
fn read_questions(path: &Path) -> Result<Vec<Question>, PipelineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::unexpected(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let sample: ChatLine = serde_json::from_str(line).map_err(|e| {
                PipelineError::unexpected(format!("{}:{}: {e}", path.display(), n + 1))
            })?;
            Ok(Question {
                id: format!("dpo-{}", sample.id),
                prompt: sample.prompt().to_owned(),
                chosen: sample.response().to_owned(),
            })
        })
        .collect()
}

shaping::pipeline_main!(VoiceDpo);
