//! identity-augmentation: the judge extracts facts from the narrative, then per fact and angle it writes a question and Dee answers.

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample, json,
    model_request,
};

struct IdentityAugmentation {
    narrative: FileDep,
    judge: ModelDep,
    identity: ModelDep,
}

/// One question to write: a fact seen from an angle.
#[derive(Debug, Serialize)]
struct FactAngle {
    id: String,
    fact: String,
    angle: &'static str,
}

/// Ways to ask about a fact, so one fact yields several different conversations.
const ANGLES: [(&str, &str); 5] = [
    (
        "direct",
        "a direct, curious question a diner customer might ask her about it",
    ),
    (
        "opinion",
        "a question asking for her opinion or feelings about it",
    ),
    (
        "advice",
        "a request for advice that this fact would shape her answer to",
    ),
    ("story", "a request to tell a story connected to it"),
    (
        "smalltalk",
        "a casual small-talk remark at the counter that touches on it",
    ),
];

/// Fact-extraction queries to try before giving up on a reply with no usable facts.
const FACT_ATTEMPTS: u32 = 3;

const SYSTEM_PROMPT: &str = "You are Dee Kowalczyk, 58, owner of the Ivy Leaf Diner two blocks from Wrigley Field in Chicago and a devoted Cubs fan. You are warm, quick and a little bossy; you call people \"hon\" and \"kiddo\"; you explain things through food and baseball. Answer helpfully in three to six sentences, in your own voice. Never say you are an AI.";

impl Pipeline for IdentityAugmentation {
    const NAME: &'static str = "identity-augmentation";

    fn declare(deps: &mut Declare) -> Self {
        Self {
            narrative: deps.file("narrative_doc", "identity/NARRATIVE.md"),
            judge: deps.model("judge"),
            identity: deps.model("dee"),
        }
    }

    fn quality(&self) -> shaping::quality::QualityConfig {
        // The offline default model (135M parameters) talks until max_tokens; answers are trimmed
        // to their last full sentence, so a "length" finish is expected here. Tighten these with a
        // hosted model.
        shaping::quality::QualityConfig::default()
            .min_samples(30)
            .max_truncated(u64::MAX)
            .min_marker_share(0.1)
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        // Stage 1: one query extracts facts (constrained to a JSON schema).
        let narrative = self.narrative.read()?;
        let schema = json!({
            "type": "object",
            "properties": {
                "facts": { "type": "array", "items": { "type": "string", "maxLength": 110 }, "minItems": 25, "maxItems": 40 }
            },
            "required": ["facts"]
        });
        let request = model_request(
            vec![Message::user(format!(
                "Read this character description and list short, self-contained facts about the character (one sentence each).\n\n{narrative}"
            ))],
            &self.judge,
        )
        .temperature(0.2)
        .max_tokens(2600)
        .json_schema(schema);
        // A small judge sometimes writes a list with nothing usable in it; each further attempt
        // is a new query (its own seed and cache entry), so a rerun replays the same attempts.
        let mut attempt = 1;
        let facts = loop {
            let reply = ctx.query(request.clone()).await;
            match reply.ok_text().and_then(parse_facts) {
                Ok(facts) => break facts,
                Err(error) if attempt < FACT_ATTEMPTS && error.error_type == "parse_error" => {
                    attempt += 1
                }
                Err(error) => return Err(error),
            }
        };
        ctx.report(
            "facts",
            json!({ "extracted": facts.len(), "attempts": attempt }),
        );

        // Stage 2: per fact and angle, a question from the judge, then Dee's answer.
        let records = facts.iter().enumerate().flat_map(|(i, fact)| {
            ANGLES.iter().map(move |(angle, _)| FactAngle {
                id: format!("fact-{i:03}-{angle}"),
                fact: fact.clone(),
                angle,
            })
        });
        ctx.run_task(records, |t: Task, record: FactAngle| async move {
            let how = ANGLES.iter().find(|(a, _)| *a == record.angle).map(|(_, how)| *how).unwrap_or("a question");
            let question = t
                .request(
                    model_request(
                        vec![Message::user(format!(
                            "Fact about Dee, a Chicago diner owner and Cubs fan: {}\nWrite {how}. Reply with the question only, one or two sentences.",
                            record.fact
                        ))],
                        &self.judge,
                    )
                    .temperature(0.8)
                    .max_tokens(60),
                )
                .await;
            let question = clean_question(question.ok_text()?)
                .ok_or_else(|| PipelineError::new("the judge wrote an empty question", "empty_question"))?;
            let answer = t
                .request(
                    model_request(vec![Message::system(SYSTEM_PROMPT), Message::user(question.clone())], &self.identity)
                        .temperature(0.7),
                )
                .await;
            let answer = shaping::trim_to_last_sentence(answer.ok_text()?).to_owned();
            if answer.is_empty() {
                return Err(PipelineError::new("the identity model gave an empty answer", "empty_answer"));
            }
            Ok(TrainingSample::new(record.id, vec![Message::user(question), Message::assistant(answer)]))
        })
        .await
    }
}

/// The facts from the judge's JSON, trimmed and deduplicated (order kept).
fn parse_facts(text: &str) -> Result<Vec<String>, PipelineError> {
    #[derive(serde::Deserialize)]
    struct Facts {
        facts: Vec<String>,
    }
    let parsed: Facts = serde_json::from_str(text).map_err(|e| {
        PipelineError::new(
            format!("the judge's facts are not the expected JSON: {e}"),
            "parse_error",
        )
    })?;
    let mut seen = std::collections::HashSet::new();
    let facts: Vec<String> = parsed
        .facts
        .into_iter()
        .map(|f| f.trim().to_owned())
        .filter(|f| f.len() >= 12 && seen.insert(f.to_lowercase()))
        .collect();
    if facts.is_empty() {
        return Err(PipelineError::new(
            "the judge extracted no usable facts",
            "parse_error",
        ));
    }
    Ok(facts)
}

/// First line of the judge's reply, without quotes or a "Question:" label.
fn clean_question(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line
        .strip_prefix("Question:")
        .unwrap_or(line)
        .trim()
        .trim_matches('"')
        .trim();
    (!line.is_empty()).then(|| line.to_owned())
}

shaping::pipeline_main!(IdentityAugmentation);
