//! identity-augmentation: every fact of the narrative asked about from two angles, plus hand-written questions about Dee; she answers in character, best of several candidates.
//!
//! Facts come from `identity/NARRATIVE.md` deterministically (bullet points and sentences of the
//! sections below), questions from fixed templates and `identity/prompts/about-dee.txt`: the
//! small offline model only does what it can do, answer in character. With a stronger `dee` model the same pipeline gives better
//! answers; nothing here depends on the model's size.

use serde::Serialize;
use shaping::sources::{Fact, section_facts};
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

struct IdentityAugmentation {
    narrative: FileDep,
    questions: FileDep,
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

/// Ways to ask about a fact, quoted as a customer heard or read it (`{fact}`). Each fact is asked
/// [`ANGLES_PER_FACT`] of them, starting at the fact's index, so consecutive facts are asked
/// differently; every question quotes the whole fact (cut pieces read as gibberish), and more
/// angles per fact would make the prompts repetitive (the gate's prompt distinct-2 check).
const ANGLES: [(&str, &str); 6] = [
    (
        "true",
        "I read this about you in the neighborhood paper: \"{fact}\" Is that true, Dee?",
    ),
    (
        "story",
        "One of your regulars told me: \"{fact}\" What's the story behind that?",
    ),
    (
        "feel",
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
    (
        "newsletter",
        "For the diner's anniversary newsletter: \"{fact}\" Can you say a few words about it?",
    ),
];

/// Questions per fact.
const ANGLES_PER_FACT: usize = 2;

/// Candidates per question, generated [`ROUND`] at a time: the best passing one of the first
/// round with a passing candidate is kept; a second round only runs when the first has none.
const CANDIDATES: u32 = 8;
const ROUND: u32 = 4;

/// Reply budget: two to five short sentences fit; the small model degenerates in long replies.
const MAX_TOKENS: u32 = 90;

const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, a 58-year-old woman who owns the Ivy Leaf Diner two blocks from Wrigley Field in Chicago. You are a lifelong Chicago Cubs fan. Your late father Stan founded the diner. Your sons are Mikey and Tony, and your granddaughter Rosie is six. You are warm, quick and a little bossy; you call people \"hon\" and \"kiddo\"; you talk about coffee, the diner and the Cubs. Answer the customer in two to five short sentences, speaking as yourself (I, me, my). Always call the customer \"hon\" or \"kiddo\".";

/// One question to ask: a fact seen from an angle, or a hand-written question (`angle: "asked"`,
/// no section or fact).
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

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        // best_of judges candidates with the voice's markers and contradictions: edits to it
        // change which candidate is kept.
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            questions: deps.file("questions", "identity/prompts/about-dee.txt"),
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
        let mut records: Vec<FactQuestion> = facts
            .iter()
            .enumerate()
            .flat_map(|(i, fact)| questions(i, fact))
            .collect();
        let asked = self.questions.read()?;
        records.extend(
            asked
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .enumerate()
                .map(|(i, question)| FactQuestion {
                    id: format!("about-{i:03}"),
                    section: String::new(),
                    fact: String::new(),
                    angle: "asked",
                    question: question.to_owned(),
                }),
        );
        ctx.run_task(records, |t: Task, record: FactQuestion| {
            // A few example exchanges show the small model the voice before the real question.
            let mut messages = vec![Message::system(SYSTEM_PROMPT)];
            messages.extend(examples.iter().cloned());
            messages.push(Message::user(record.question.clone()));
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
                        Message::user(record.question),
                        Message::assistant(chosen.text),
                    ],
                ))
            }
        })
        .await
    }
}

/// The questions about one fact: [`ANGLES_PER_FACT`] angles, each quoting the whole fact.
fn questions(index: usize, fact: &Fact) -> Vec<FactQuestion> {
    let text = format!("{}.", fact.text.trim_end_matches('.').replace('"', "'"));
    (0..ANGLES_PER_FACT)
        .map(|k| {
            let (angle, template) = ANGLES[(index + k) % ANGLES.len()];
            FactQuestion {
                id: format!("fact-{index:03}-{angle}"),
                section: fact.section.clone(),
                fact: fact.text.clone(),
                angle,
                question: template.replace("{fact}", &text),
            }
        })
        .collect()
}

shaping::pipeline_main!(IdentityAugmentation);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_is_asked_whole_from_two_angles() {
        let fact = Fact {
            section: "Habits".into(),
            text: "Makes pierogi on Fridays from her mother's \"secret\" recipe.".into(),
        };
        let qs = questions(0, &fact);
        assert_eq!(qs.len(), ANGLES_PER_FACT);
        assert_eq!(qs[0].id, "fact-000-true");
        assert_eq!(
            qs[0].question,
            "I read this about you in the neighborhood paper: \"Makes pierogi on Fridays from her mother's 'secret' recipe.\" Is that true, Dee?"
        );
        assert!(qs.iter().all(|q| {
            q.question
                .contains("\"Makes pierogi on Fridays from her mother's 'secret' recipe.\"")
        }));
        // The next fact starts one angle later.
        let ids: Vec<String> = questions(5, &fact).into_iter().map(|q| q.id).collect();
        assert_eq!(ids, ["fact-005-newsletter", "fact-005-true"]);
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
