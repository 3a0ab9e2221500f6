//! identity-augmentation: every fact of the narrative, asked about from several angles by templates; Dee answers in character, best of several candidates.
//!
//! Facts come from `identity/NARRATIVE.md` deterministically (bullet points and sentences of the
//! sections below), questions from fixed templates: the small offline model only does what it
//! can do, answer in character. With a stronger `dee` model the same pipeline gives better
//! answers; nothing here depends on the model's size.

use serde::Serialize;
use shaping::sources::{Fact, section_facts};
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

struct IdentityAugmentation {
    narrative: FileDep,
    examples: FileDep,
    identity: ModelDep,
}

/// The narrative's sections that state facts about Dee (not the instructions under "Calibration").
const FACT_SECTIONS: [&str; 5] = [
    "Who she is",
    "Voice",
    "Worldview",
    "Habits",
    "People and places",
];

/// Ways to ask about one fact, so each fact yields several different conversations. `{fact}` is
/// replaced by the fact, quoted as a customer heard or read it.
const ANGLES: [(&str, &str); 5] = [
    (
        "true",
        "I read this about you in the neighborhood paper: \"{fact}\" Is that true, Dee?",
    ),
    (
        "story",
        "One of your regulars told me: \"{fact}\" What's the story behind that?",
    ),
    (
        "feelings",
        "Somebody at the counter said this about you: \"{fact}\" How do you feel about that?",
    ),
    (
        "lesson",
        "\"{fact}\" That's what they say about you. What has that taught you?",
    ),
    (
        "advice",
        "My niece wants to open a diner someday. Someone told her: \"{fact}\" What would you tell her about that?",
    ),
];

/// Candidates per question: the best one that passes the quality gate is kept.
const CANDIDATES: u32 = 4;

/// Reply budget: two to five short sentences fit; the small model degenerates in long replies.
const MAX_TOKENS: u32 = 90;

const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, a 58-year-old woman who owns the Ivy Leaf Diner two blocks from Wrigley Field in Chicago. You are a lifelong Chicago Cubs fan. Your late father Stan founded the diner. Your sons are Mikey and Tony, and your granddaughter Rosie is six. You are warm, quick and a little bossy; you call people \"hon\" and \"kiddo\"; you talk about coffee, the diner and the Cubs. Answer the customer in two to five short sentences, speaking as yourself (I, me, my). Always call the customer \"hon\" or \"kiddo\".";

/// One question to ask: a fact seen from an angle.
#[derive(Debug, Serialize)]
struct FactQuestion {
    id: String,
    section: String,
    fact: String,
    angle: &'static str,
    question: String,
}

impl Pipeline for IdentityAugmentation {
    const NAME: &'static str = "identity-augmentation";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            examples: deps.file("examples", "identity/prompts/examples.jsonl"),
            identity: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let narrative = self.narrative.read()?;
        let facts = section_facts(&narrative, &FACT_SECTIONS);
        if facts.is_empty() {
            return Err(PipelineError::new(
                format!("identity/NARRATIVE.md has no facts under the sections {FACT_SECTIONS:?}"),
                "no_facts",
            ));
        }
        ctx.report("facts", shaping::json!({ "extracted": facts.len() }));
        let examples = shaping::sources::example_turns(self.examples.path())?;
        let records: Vec<FactQuestion> = facts
            .iter()
            .enumerate()
            .flat_map(|(i, fact)| questions(i, fact))
            .collect();
        ctx.run_task(records, |t: Task, record: FactQuestion| {
            // A few example exchanges show the small model the voice before the real question.
            let mut messages = vec![Message::system(SYSTEM_PROMPT)];
            messages.extend(examples.iter().cloned());
            messages.push(Message::user(record.question.clone()));
            async move {
                let request = model_request(messages, &self.identity).max_tokens(MAX_TOKENS);
                let chosen = t
                    .best_of(request, CANDIDATES)
                    .postprocess(|text| shaping::trim_to_last_sentence(text).to_owned())
                    .pick()
                    .await?;
                Ok(TrainingSample::new(
                    record.id,
                    vec![
                        Message::user(record.question),
                        Message::assistant(chosen.text),
                    ],
                ))
            }
        })
        .await
    }
}

/// The questions about one fact, one per angle.
fn questions(index: usize, fact: &Fact) -> impl Iterator<Item = FactQuestion> + '_ {
    let quoted = fact.text.trim_end_matches('.').replace('"', "'");
    ANGLES.iter().map(move |(angle, template)| FactQuestion {
        id: format!("fact-{index:03}-{angle}"),
        section: fact.section.clone(),
        fact: fact.text.clone(),
        angle,
        question: template.replace("{fact}", &format!("{quoted}.")),
    })
}

shaping::pipeline_main!(IdentityAugmentation);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_gets_one_question_per_angle_with_the_fact_quoted() {
        let fact = Fact {
            section: "Habits".into(),
            text: "Makes pierogi on Fridays from her mother's \"secret\" recipe.".into(),
        };
        let qs: Vec<FactQuestion> = questions(7, &fact).collect();
        assert_eq!(qs.len(), ANGLES.len());
        assert_eq!(qs[0].id, "fact-007-true");
        assert_eq!(
            qs[0].question,
            "I read this about you in the neighborhood paper: \"Makes pierogi on Fridays from her mother's 'secret' recipe.\" Is that true, Dee?"
        );
        assert!(qs.iter().all(|q| !q.question.contains("{fact}")));
    }

    #[test]
    fn the_narrative_gives_enough_facts() {
        let narrative = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../identity/NARRATIVE.md"
        ))
        .expect("the narrative is committed");
        let facts = section_facts(&narrative, &FACT_SECTIONS);
        assert!(facts.len() >= 25, "{} facts", facts.len());
        assert!(
            facts
                .iter()
                .all(|f| FACT_SECTIONS.contains(&f.section.as_str()))
        );
    }
}
