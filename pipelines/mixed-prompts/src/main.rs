//! mixed-prompts: Dee answers a seeded mix of WildChat-style prompts, custom scenario prompts and knowledge-derived questions.

use shaping::sources::{
    Mix, Record, Weight, WildChat, custom_loader, facts_to_records, section_facts,
};
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

struct MixedPrompts {
    wildchat: FileDep,
    custom: FileDep,
    narrative: FileDep,
    examples: FileDep,
    identity: ModelDep,
}

const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, a 58-year-old woman who owns the Ivy Leaf Diner two blocks from Wrigley Field in Chicago. You are a lifelong Chicago Cubs fan. You are warm, quick and a little bossy; you call people \"hon\" and \"kiddo\"; you explain things through coffee, food and baseball. Answer the customer helpfully in two to five short sentences, speaking as yourself (I, me, my). Always call the customer \"hon\" or \"kiddo\".";

/// Candidates per question, generated [`ROUND`] at a time: the best passing one of the first
/// round with a passing candidate is kept; a second round only runs when the first has none.
const CANDIDATES: u32 = 8;
const ROUND: u32 = 4;

/// Reply budget: two to five short sentences fit; the small model degenerates in long replies.
const MAX_TOKENS: u32 = 90;

/// The narrative's sections that state facts about Dee.
const FACT_SECTIONS: [&str; 4] = ["Who she is", "Worldview", "Habits", "People and places"];

/// How many records each kind contributes (the seed's advice: never train on one kind alone).
const WILDCHAT: usize = 60;
const CUSTOM: usize = 60;
const MIX_SEED: u64 = 2016;

impl Pipeline for MixedPrompts {
    const NAME: &'static str = "mixed-prompts";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        // best_of judges candidates with the voice's markers and contradictions: edits to it
        // change which candidate is kept.
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            wildchat: deps.file("wildchat", "training/inputs/wildchat-sample.parquet"),
            custom: deps.file("custom_prompts", "identity/prompts/custom.jsonl"),
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            examples: deps.file("examples", "identity/prompts/examples.jsonl"),
            identity: deps.model("dee"),
        }
    }

    fn quality(&self) -> shaping::quality::QualityConfig {
        // Tighter than the default: no source may dominate a mix.
        shaping::quality::QualityConfig::default().max_source_share(0.5)
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let wildchat = WildChat::new()
            .languages(["English"])
            .min_chars(12)
            .max_chars(600)
            .open(self.wildchat.path())?;
        let custom = custom_loader(self.custom.path()).open()?;
        // Knowledge-derived: every bullet or sentence of the narrative's fact sections becomes a
        // question, by template (the small model does not write questions).
        let narrative = self.narrative.read()?;
        let snippets: Vec<String> = section_facts(&narrative, &FACT_SECTIONS)
            .into_iter()
            .map(|fact| fact.text)
            .collect();
        let (records, report) = Mix::new(MIX_SEED)
            .add("wildchat", wildchat, Weight::Count(WILDCHAT))
            .add("custom", custom, Weight::Count(CUSTOM))
            .add_records("knowledge", facts_to_records(&snippets), Weight::All)
            .run()?;
        ctx.report("mix", &report);
        let examples = shaping::sources::example_turns(self.examples.path())?;

        let examples = &examples;
        ctx.run_task(records, |t: Task, record: Record| async move {
            let question = if record.source == "knowledge" {
                knowledge_question(&record)
            } else {
                record.prompt.clone()
            };
            // A few example exchanges show the small model the voice before the real question.
            let mut messages = vec![Message::system(SYSTEM_PROMPT)];
            messages.extend(examples.iter().cloned());
            messages.push(Message::user(question.clone()));
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
                vec![Message::user(question), Message::assistant(chosen.text)],
            ))
        })
        .await
    }
}

/// A customer's question about a fact of the narrative (a knowledge record's prompt).
fn knowledge_question(record: &Record) -> String {
    let fact = record.prompt.trim().trim_end_matches('.').replace('"', "'");
    format!("People around Wrigley say this about you: \"{fact}.\" Tell me about that, Dee.")
}

shaping::pipeline_main!(MixedPrompts);
