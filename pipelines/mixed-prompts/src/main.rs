//! mixed-prompts: Dee answers a seeded mix of WildChat-style prompts, custom scenario prompts and knowledge-derived questions.

use shaping::sources::{
    Mix, Record, Weight, WildChat, custom_loader, facts_to_records, markdown_sections,
};
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

struct MixedPrompts {
    wildchat: FileDep,
    custom: FileDep,
    narrative: FileDep,
    identity: ModelDep,
    judge: ModelDep,
}

const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, 58, owner of the Ivy Leaf Diner two blocks from Wrigley Field in Chicago and a devoted Cubs fan. You are warm, quick and a little bossy; you call people \"hon\" and \"kiddo\"; you explain things through food and baseball. Answer helpfully in three to six sentences, in your own voice. Never say you are an AI.";

/// How many records each kind contributes (the seed's advice: never train on one kind alone).
const WILDCHAT: usize = 110;
const CUSTOM: usize = 80;
const MIX_SEED: u64 = 2016;

impl Pipeline for MixedPrompts {
    const NAME: &'static str = "mixed-prompts";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            wildchat: deps.file("wildchat", "training/inputs/wildchat-sample.parquet"),
            custom: deps.file("custom_prompts", "identity/prompts/custom.jsonl"),
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            identity: deps.model("dee"),
            judge: deps.model("judge"),
        }
    }

    fn quality(&self) -> shaping::quality::QualityConfig {
        // See voice-prompts: the offline default model's replies end at max_tokens.
        shaping::quality::QualityConfig::default()
            .min_samples(150)
            .max_source_share(0.5)
            .max_truncated(u64::MAX)
            .min_marker_share(0.1)
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let wildchat = WildChat::new()
            .languages(["English"])
            .min_chars(12)
            .max_chars(600)
            .open(self.wildchat.path())?;
        let custom = custom_loader(self.custom.path()).open()?;
        // Knowledge-derived: every bullet or sentence of the narrative becomes a question seed.
        let narrative = self.narrative.read()?;
        let snippets: Vec<String> = markdown_sections(&narrative)
            .iter()
            .flat_map(|section| {
                section
                    .body
                    .split('\n')
                    .map(|line| line.trim().trim_start_matches("- ").trim().to_owned())
                    .filter(|line| line.len() > 20)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (records, report) = Mix::new(MIX_SEED)
            .add("wildchat", wildchat, Weight::Count(WILDCHAT))
            .add("custom", custom, Weight::Count(CUSTOM))
            .add_records("knowledge", facts_to_records(&snippets), Weight::All)
            .run()?;
        ctx.report("mix", &report);

        ctx.run_task(records, |t: Task, record: Record| async move {
            let question = if record.source == "knowledge" {
                let reply = t
                    .request(
                        model_request(
                            vec![Message::user(format!(
                                "Here is something true about Dee, who runs a diner near Wrigley Field: {}\nWrite one natural question a regular customer might ask her that this would help answer. Reply with the question only.",
                                record.prompt
                            ))],
                            &self.judge,
                        )
                        .temperature(0.8)
                        .max_tokens(60),
                    )
                    .await;
                let text = reply.ok_text()?;
                text.lines().map(str::trim).find(|l| !l.is_empty()).map(|l| l.trim_matches('"').to_owned()).unwrap_or_default()
            } else {
                record.prompt.clone()
            };
            if question.is_empty() {
                return Err(PipelineError::new("empty question", "empty_question"));
            }
            let reply = t
                .request(model_request(vec![Message::system(SYSTEM_PROMPT), Message::user(question.clone())], &self.identity))
                .await;
            let answer = shaping::trim_to_last_sentence(reply.ok_text()?).to_owned();
            if answer.is_empty() {
                return Err(PipelineError::new("empty answer", "empty_answer"));
            }
            Ok(TrainingSample::new(record.id, vec![Message::user(question), Message::assistant(answer)]))
        })
        .await
    }
}

shaping::pipeline_main!(MixedPrompts);
