//! identity-augmentation: every fact of the narrative, asked about whole and in pieces by templates; Dee answers in character, best of several candidates.
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

/// Ways to ask about a whole fact, quoted as a customer heard or read it (`{fact}`); the fact's
/// index picks one, so consecutive facts are asked differently.
const WHOLE: [&str; 6] = [
    "I read this about you in the neighborhood paper: \"{fact}\" Is that true, Dee?",
    "One of your regulars told me: \"{fact}\" What's the story behind that?",
    "Somebody at the counter said this about you: \"{fact}\" How do you feel about that?",
    "\"{fact}\" That's what they say about you. What has that taught you?",
    "My niece wants to open a diner someday. Someone told her: \"{fact}\" What would you tell her about that?",
    "For the diner's anniversary newsletter: \"{fact}\" Can you say a few words about it?",
];

/// Ways to ask about a piece of a fact a customer half remembers (`{part}`): each fact is also
/// asked about in three pieces, so the questions do not all repeat the same words.
const PIECE: [&str; 6] = [
    "Someone mentioned something about \"{part}\" — what was that about, Dee?",
    "I overheard \"{part}\" at the counter. What's the story there?",
    "What's this I hear about \"{part}\"?",
    "Ernie keeps saying \"{part}\" and laughing. Care to explain?",
    "A tourist asked me what \"{part}\" means around here. What should I tell her?",
    "My buddy swears he read \"{part}\" about you. Is he pulling my leg?",
];

/// Pieces each fact is cut into, besides being asked about whole.
const PIECES: usize = 3;

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
        // best_of judges candidates with the voice's markers and contradictions: edits to it
        // change which candidate is kept.
        deps.file("voice", shaping::quality::VOICE_FILE);
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

/// The questions about one fact: one about the whole fact, one about each of its pieces.
fn questions(index: usize, fact: &Fact) -> Vec<FactQuestion> {
    let text = fact.text.trim_end_matches('.').replace('"', "'");
    let mut questions = vec![FactQuestion {
        id: format!("fact-{index:03}-whole"),
        section: fact.section.clone(),
        fact: fact.text.clone(),
        angle: "whole",
        question: WHOLE[index % WHOLE.len()].replace("{fact}", &format!("{text}.")),
    }];
    let words: Vec<&str> = text.split_whitespace().collect();
    for (piece, part) in pieces(&words).into_iter().enumerate() {
        questions.push(FactQuestion {
            id: format!("fact-{index:03}-piece{}", piece + 1),
            section: fact.section.clone(),
            fact: fact.text.clone(),
            angle: "piece",
            question: PIECE[(index + piece) % PIECE.len()].replace("{part}", &part),
        });
    }
    questions
}

/// The fact's words in [`PIECES`] runs of about equal length (trailing punctuation trimmed).
fn pieces(words: &[&str]) -> Vec<String> {
    let n = words.len();
    (0..PIECES)
        .map(|i| {
            let (from, to) = (i * n / PIECES, (i + 1) * n / PIECES);
            words[from..to]
                .join(" ")
                .trim_matches(|c: char| c == ',' || c == ';' || c == ':')
                .to_owned()
        })
        .filter(|part| part.split_whitespace().count() >= 2)
        .collect()
}

shaping::pipeline_main!(IdentityAugmentation);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_is_asked_whole_and_in_three_pieces() {
        let fact = Fact {
            section: "Habits".into(),
            text: "Makes pierogi on Fridays from her mother's \"secret\" recipe.".into(),
        };
        let qs = questions(0, &fact);
        assert_eq!(qs.len(), 1 + PIECES);
        assert_eq!(qs[0].id, "fact-000-whole");
        assert_eq!(
            qs[0].question,
            "I read this about you in the neighborhood paper: \"Makes pierogi on Fridays from her mother's 'secret' recipe.\" Is that true, Dee?"
        );
        assert_eq!(
            qs[1].question,
            "Someone mentioned something about \"Makes pierogi on\" — what was that about, Dee?"
        );
        assert_eq!(qs[3].id, "fact-000-piece3");
        assert!(qs[3].question.contains("'secret' recipe"));
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
