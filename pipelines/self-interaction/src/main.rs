//! self-interaction: two copies of Dee talk at the counter after closing, from hand-written seed openers; each copy sees its own lines as the assistant's and the other's as the user's, and the conversation becomes one multi-turn sample.
//!
//! Both copies get the full persona prompt; the sample written gets a one-line system prompt
//! with no trait list, so training teaches the traits instead of prompting them (Open Character
//! Training's self-interaction data). Every line after the opener is the best of several
//! candidates that passes the quality gate (copying one's own earlier line counts as an echo);
//! a conversation where some line finds no passing candidate is filtered as a whole, with that
//! line's reasons. The history each copy sees is cut to fit the model's context window.

use serde::Serialize;
use shaping::{
    Ctx, Declare, FileDep, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample,
    model_request,
};

/// Conversations started from each opener (each with its own seeds).
const CONVERSATIONS_PER_OPENER: usize = 3;

/// Replies of the first copy (the sample's assistant) per conversation; the second copy answers
/// in between, so a conversation has `2 * EXCHANGES` turns after the system prompt.
const EXCHANGES: usize = 2;

/// Candidates per line, asked one at a time until one passes: the cheapest search on two cores,
/// where every conversation waits on its lines in turn but many conversations run at once.
const CANDIDATES: u32 = 8;

/// Reply budget per line.
const MAX_TOKENS: u32 = 90;

/// Earlier lines a copy sees: the line it answers only. With more history the offline 135M
/// model hands the conversation back (measured: all of 4 conversations filtered, most
/// candidates of the second reply an echo of the context); with a hosted or vLLM model, raise it
/// (the character budget below still keeps the window).
const HISTORY_LINES: usize = 1;

/// Characters of earlier lines a copy sees at most. SmolLM2's window is 2,048 tokens: the persona
/// prompt and the example exchanges take about 550, a reply up to 90, and this history about
/// 1,000 (some 3.5 characters a token); the oldest lines go first when a long conversation
/// needs more.
const HISTORY_CHARS: usize = 3_500;

/// The system prompt written with each sample: who is speaking, and nothing about how.
const SAMPLE_SYSTEM: &str = "You are Dee Kowalczyk.";

struct SelfInteraction {
    openers: FileDep,
    persona: FileDep,
    examples: FileDep,
    identity: ModelDep,
}

#[derive(Debug, Serialize)]
struct Conversation {
    id: String,
    opener: String,
    /// Which of the opener's conversations this is: part of the record, so of its seeds.
    conversation: usize,
}

/// Who said a line: the copy whose lines are the sample's assistant turns, or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    Answering,
    Opening,
}

impl Speaker {
    /// A line of `said_by` as this copy sees it: its own lines are the assistant's.
    fn message(self, said_by: Speaker, text: &str) -> Message {
        if said_by == self {
            Message::assistant(text)
        } else {
            Message::user(text)
        }
    }
}

impl Pipeline for SelfInteraction {
    const NAME: &'static str = "self-interaction";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        deps.file("voice", shaping::quality::VOICE_FILE);
        Self {
            openers: deps.file("openers", "identity/prompts/openers.txt"),
            persona: deps.file("persona", "identity/prompts/persona.txt"),
            examples: deps.file("examples", "identity/prompts/examples.jsonl"),
            identity: deps.model("dee"),
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let system = format!(
            "{}\nIt is after closing, and you are talking at the counter with an old friend who knows the diner as well as you do. Reply in two to four short sentences, and ask something back now and then. Call your friend \"hon\" or \"kiddo\", and bring in the diner, the coffee or the Cubs when it fits.",
            self.persona.read()?.trim()
        );
        // Hand-written exchanges shown before the conversation: the small model keeps the voice
        // far better with them (they are not part of the sample).
        let examples = shaping::sources::example_turns(self.examples.path())?;
        let text = self.openers.read()?;
        let openers: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let records = (0..CONVERSATIONS_PER_OPENER).flat_map(|conversation| {
            openers
                .iter()
                .enumerate()
                .map(move |(o, opener)| Conversation {
                    id: format!("self-{o:02}-{conversation}"),
                    opener: (*opener).to_owned(),
                    conversation,
                })
        });
        let context = Context {
            system: &system,
            examples: &examples,
        };
        ctx.run_task(records, |t: Task, record: Conversation| async move {
            let mut lines = vec![(Speaker::Opening, record.opener)];
            for exchange in 0..EXCHANGES {
                let answer = self.speak(&t, context, Speaker::Answering, &lines).await?;
                lines.push((Speaker::Answering, answer));
                if exchange + 1 < EXCHANGES {
                    let reply = self.speak(&t, context, Speaker::Opening, &lines).await?;
                    lines.push((Speaker::Opening, reply));
                }
            }
            let mut messages = vec![Message::system(SAMPLE_SYSTEM)];
            messages.extend(lines.into_iter().map(|(copy, text)| match copy {
                Speaker::Opening => Message::user(text),
                Speaker::Answering => Message::assistant(text),
            }));
            Ok(TrainingSample::new(record.id, messages))
        })
        .await
    }
}

impl SelfInteraction {
    /// The next line of `speaker`: the conversation so far from its side (its own lines as the
    /// assistant's), cut to fit the window, after the persona prompt and the example exchanges,
    /// answered by the best passing candidate.
    async fn speak(
        &self,
        t: &Task,
        context: Context<'_>,
        speaker: Speaker,
        lines: &[(Speaker, String)],
    ) -> Result<String, PipelineError> {
        let mut messages = vec![Message::system(context.system)];
        messages.extend(context.examples.iter().cloned());
        messages.extend(
            recent(lines)
                .iter()
                .map(|(copy, text)| speaker.message(*copy, text)),
        );
        // Judged as the gate will judge the written sample: against the whole conversation
        // from this copy's side, so repeating one of its earlier lines (which it no longer
        // sees) is an echo.
        let whole: Vec<Message> = std::iter::once(Message::system(SAMPLE_SYSTEM))
            .chain(
                lines
                    .iter()
                    .map(|(copy, text)| speaker.message(*copy, text)),
            )
            .collect();
        let detectors = t.detectors();
        // The sample's assistant must sound like Dee in every turn (the gate wants voice markers
        // in most replies, and first-passing candidates are not chosen for them).
        let needs_marker = speaker == Speaker::Answering;
        let request = model_request(messages, &self.identity).max_tokens(MAX_TOKENS);
        let chosen = t
            .best_of(request, CANDIDATES)
            .in_rounds_of(1)
            .postprocess(|text| shaping::trim_to_last_sentence(text).to_owned())
            .accept(move |text| {
                let verdict = detectors.judge_in_conversation(&whole, text, None);
                if !verdict.passed() {
                    Err(verdict.reasons().join("; "))
                } else if needs_marker && verdict.markers.is_empty() {
                    Err("voice: no voice marker in the reply".to_owned())
                } else {
                    Ok(())
                }
            })
            .pick()
            .await?;
        Ok(chosen.text)
    }
}

/// What every request starts with: the persona prompt and the example exchanges.
#[derive(Clone, Copy)]
struct Context<'a> {
    system: &'a str,
    examples: &'a [Message],
}

/// The most recent [`HISTORY_LINES`] lines whose text fits [`HISTORY_CHARS`] (always the last
/// one).
fn recent(lines: &[(Speaker, String)]) -> &[(Speaker, String)] {
    let mut total = 0;
    let mut start = lines.len();
    while start > 0 && lines.len() - start < HISTORY_LINES {
        total += lines[start - 1].1.len();
        if total > HISTORY_CHARS && start < lines.len() {
            break;
        }
        start -= 1;
    }
    &lines[start..]
}

shaping::pipeline_main!(SelfInteraction);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_lines_that_fit() {
        let line = |speaker, n: usize| (speaker, "x".repeat(n));
        let lines = vec![
            line(Speaker::Opening, 2_000),
            line(Speaker::Answering, 1_000),
            line(Speaker::Opening, 1_000),
        ];
        assert_eq!(recent(&lines).len(), 2.min(HISTORY_LINES));
        assert_eq!(recent(&lines[2..]).len(), 1);
        let huge = vec![line(Speaker::Opening, 10_000)];
        assert_eq!(recent(&huge).len(), 1, "the last line is always kept");
    }
}
