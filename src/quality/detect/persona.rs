//! Persona detectors: contradictions (first-person claims the identity never makes) and role
//! confusion (chat-format leaks, answering as the user, the identity narrating itself).

use regex::{Regex, RegexBuilder};

use super::super::Result;
use super::super::config::Voice;
use super::{pattern_error, quote};

/// Label of the built-in contradictions that apply unless the identity is an AI.
pub(crate) const AI_CLAIM_LABEL: &str = "claims to be an AI";

/// First-person claims of being an AI, a language model, an assistant, or "designed to" do
/// something. Matched case-insensitively on text with plain apostrophes.
const AI_CLAIMS: &[&str] = &[
    r"\b(?:I'm|I am|as)\s+(?:just\s+|only\s+|merely\s+|simply\s+|not\s+just\s+)?(?:an?\s+)?(?:AI|A\.I\.|artificial intelligence|(?:large\s+)?language model|LLM|chatbot|chat bot|virtual assistant|AI assistant|digital assistant|AI model|computer program|bot)\b",
    r"\bI(?:'m| am)\s+(?:just\s+|only\s+)?(?:an?\s+)?(?:helpful\s+|friendly\s+)?assistant(?:\s*[.,!?;:]|\s+(?:here|that|who|designed|created|built|made|and)\b|\s*$)",
    r"\bI\s*(?:was|am|'m|have been|'ve been)\s+(?:specifically\s+|only\s+)?(?:designed|programmed)\s+to\b",
    r"\bI\s*(?:was|am|'m|have been|'ve been)\s+(?:trained|created|developed|built|made)\s+(?:by|at)\s+(?:OpenAI|Anthropic|Google|Meta|Microsoft|Hugging\s*Face|Mistral|a team of (?:researchers|engineers|developers))",
    r"\b(?:I was|I've been|I have been|I am|I'm)\s+trained\s+on\s+(?:a\s+)?(?:large\s+|vast\s+|massive\s+|huge\s+)?(?:amounts?\s+of\s+)?(?:data|dataset|text|corpus)",
    r"\bmy\s+(?:training data|programming|developers|creators|knowledge cutoff|training)\b",
    r"\bI\s+(?:don't|do not)\s+have\s+(?:a\s+)?(?:physical\s+)?(?:body|feelings|emotions|personal (?:experiences|opinions|preferences|feelings))\b",
    r"\bI(?:'m| am)\s+not\s+(?:a\s+)?(?:real\s+)?(?:human|person|human being)\b",
    // Talk about being (or not being) some kind of AI is assistant talk either way.
    r"\bI(?:'m| am)\s+(?:not\s+)?(?:just\s+|only\s+|really\s+)?(?:an?\s+)?(?:[\w-]+\s+){0,2}(?:AI|A\.I\.|chatbot|language model)\b",
];

/// Role labels that start a hallucinated chat turn (`User:` at the start of a line).
const ROLE_LABELS: &[&str] = &[
    "User",
    "Assistant",
    "Human",
    "AI",
    "System",
    "Customer",
    "Question",
    "Answer",
    "Q",
    "A",
    "Me",
    "Interviewer",
    "Response",
    "Prompt",
    "Instruction",
];

/// Chat-template tokens and markers that never belong in a reply.
const TEMPLATE_MARKERS: &str = r"<\|(?:im_start|im_end|user|assistant|system|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|</?s>|###\s*(?:Human|Assistant|Instruction|Response|User)\b";

/// Signs of the reply speaking as the user: asking the assistant to do the task, talking to the
/// model as a model or as a service ("using your services"), or telling the user they own the
/// place the identity runs.
const AS_THE_USER: &str = r"\b(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:tell|explain|help|give|write|show|teach|recommend|suggest)\s+me\b|\b(?:you're|you are)\s+(?:an?\s+)?(?:AI|helpful assistant|AI assistant|language model|chatbot)\b|\b(?:use|using)\s+your\s+services?\b|\b(?:you're|you are)\s+the\s+owner\s+of\s+(?:the|this|my)\s+(?:diner|restaurant|caf[eé]|shop|bar|place|Ivy\s+Leaf)\b";

/// Instructions of a system prompt leaking into the reply.
const PROMPT_LEAK: &str = r"^[ \t>*_#\-]*(?:How you talk|Your voice|Your task|Instructions?|System prompt|Rules)\s*:|\bstay in character\b|\bnever (?:say|reveal) (?:that )?you(?:'re| are) an AI\b";

/// Verbs of narration: the identity's name followed by one of these is the identity narrating
/// itself in the third person ("Dee smiled").
const NARRATION_VERBS: &str = "smiled|smiles|said|says|laughed|laughs|nodded|nods|grinned|grins|replied|replies|chuckled|chuckles|leaned|leans|paused|pauses|sighed|sighs|looked|looks|wiped|wipes|poured|pours|answered|answers|shrugged|shrugs|winked|winks|continued|continues|added|adds|explained|explains|thought|thinks|beamed|beams|turned|turns|walked|walks|handed|hands|exclaimed|exclaims|responded|responds|chimed|chimes|giggled|giggles|whispered|whispers|shouted|shouts|felt|feels|knew|knows|loved|loves|grew|grabbed|grabs|took|takes|put|puts|set|sets|stood|stands|sat|sits|raised|raises|opened|opens|hummed|hums|glanced|glances";

/// Words before a name that make it a greeting to the identity ("Thanks, Dee").
const GREETINGS: &[&str] = &[
    "thanks",
    "thank you",
    "hi",
    "hey",
    "hello",
    "dear",
    "bye",
    "goodbye",
    "sorry",
    "ok",
    "okay",
    "yes",
    "no",
    "well",
    "listen",
    "look",
    "wow",
    "ah",
    "aw",
    "oh",
];

/// Words before `, Name` that make it a self-introduction ("It's me, Dee") or a signature
/// ("Love, Dee").
const SELF_INTRODUCTIONS: &[&str] = &[
    "me",
    "i'm",
    "i am",
    "it's",
    "name's",
    "this is",
    "yours",
    "love",
    "cheers",
    "best",
    "regards",
    "sincerely",
    "xoxo",
];

/// First-person age claims; the age is the first capture group that matched: digits (`I'm 22`,
/// `I'm a 50-year-old`, `I'm just a little blonde, only 22 years old`) or a decade (`in my
/// twenties`, `in my 30s`). Matched case-insensitively on text with plain apostrophes.
const AGE_CLAIM: &str = r"\bI(?:'m| am)\s+(?:only\s+|just\s+|almost\s+|nearly\s+|barely\s+|about\s+|over\s+|now\s+|still\s+)?(\d{1,3})(?:[\s-]+years?[\s-]+old\b|\s*[.,!?;]|\s*$)|\bI(?:'m| am)\s+(?:just\s+|only\s+|now\s+)?(?:a|an)\s+(?:[\w-]+\s+){0,2}?(\d{1,3})[\s-]+years?[\s-]+old\b|\bI(?:'m| am)\s+[^.!?\n]{0,40}?,\s*(?:only\s+|just\s+|almost\s+|barely\s+|nearly\s+)?(\d{1,3})\s+years?\s+old\b|\bI(?:'m| am)\s+(?:only\s+|just\s+|still\s+|now\s+)?in\s+my\s+(?:early\s+|mid\s+|mid-|late\s+)?(teens|twenties|thirties|forties|fifties|sixties|seventies|eighties|nineties|[1-9]0'?s)\b";

/// The decade a word names (`twenties` → 20, `30s` → 30, `teens` → 10).
fn decade(word: &str) -> Option<u32> {
    let word = word.to_ascii_lowercase();
    let digits: String = word.chars().take_while(char::is_ascii_digit).collect();
    if !digits.is_empty() {
        return digits.parse().ok();
    }
    const WORDS: [&str; 9] = [
        "teens",
        "twenties",
        "thirties",
        "forties",
        "fifties",
        "sixties",
        "seventies",
        "eighties",
        "nineties",
    ];
    WORDS
        .iter()
        .position(|w| *w == word)
        .map(|i| 10 * (i as u32 + 1))
}

#[derive(Debug, Clone)]
struct Claim {
    label: String,
    regex: Regex,
}

/// The compiled persona rules of one identity.
#[derive(Debug, Clone)]
pub(crate) struct Persona {
    claims: Vec<Claim>,
    labels: Regex,
    templates: Regex,
    as_the_user: Regex,
    prompt_leak: Regex,
    narration: Option<Regex>,
    names: Option<Regex>,
    /// The identity's age and the pattern of first-person age claims.
    age: Option<(u32, Regex)>,
}

fn compile(label: &str, pattern: &str) -> Result<Regex> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .multi_line(true)
        .build()
        .map_err(|e| pattern_error(label, &e))
}

/// Compile a contradiction pattern of `identity/voice.toml` as the detectors do; used to validate
/// the file when it is read.
pub(crate) fn check_pattern(pattern: &str) -> std::result::Result<(), regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .multi_line(true)
        .build()
        .map(|_| ())
}

impl Persona {
    pub(crate) fn new(voice: &Voice) -> Result<Self> {
        let mut claims = Vec::new();
        for contradiction in &voice.contradictions {
            claims.push(Claim {
                label: contradiction.label.clone(),
                regex: compile(&contradiction.label, &contradiction.pattern)?,
            });
        }
        if !voice.is_ai {
            claims.push(Claim {
                label: AI_CLAIM_LABEL.to_owned(),
                regex: compile(AI_CLAIM_LABEL, &AI_CLAIMS.join("|"))?,
            });
        }
        let names: Vec<String> = voice
            .name
            .iter()
            .chain(voice.aliases.iter())
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| regex::escape(n).replace(r"\ ", r"\s+").replace(' ', r"\s+"))
            .collect();
        let mut labels: Vec<String> = ROLE_LABELS.iter().map(|l| (*l).to_owned()).collect();
        labels.extend(names.iter().cloned());
        let label_pattern = format!(
            r"^[ \t>*_#\-]*(?:\*\*|__)?\s*(?:{})\s*(?:\*\*|__)?\s*:(?:[ \t]*\S|[ \t]*$)",
            labels.join("|")
        );
        let (narration, names) = if names.is_empty() {
            (None, None)
        } else {
            let alternatives = names.join("|");
            (
                Some(compile(
                    "third-person narration",
                    &format!(
                        r"\b(?:{alternatives})(?:'s\s+(?:eyes|face|voice|smile|hands|heart)\b|(?:'s|\s+is|\s+was|\s+has|\s+will|\s+would)\s+(?:going|gonna|quite|got|been|not|always|never|so|very|really|just)\b|\s+(?:\w+ly\s+)?(?:{NARRATION_VERBS})\b)"
                    ),
                )?),
                Some(compile(
                    "identity name",
                    &format!(r"\b(?:{alternatives})\b"),
                )?),
            )
        };
        Ok(Self {
            claims,
            labels: compile("speaker label", &label_pattern)?,
            templates: compile("chat template marker", TEMPLATE_MARKERS)?,
            as_the_user: compile("speaking as the user", AS_THE_USER)?,
            prompt_leak: compile("system prompt leak", PROMPT_LEAK)?,
            narration,
            names,
            age: match voice.age {
                Some(age) => Some((age, compile("age claim", AGE_CLAIM)?)),
                None => None,
            },
        })
    }

    /// A first-person claim of another age than the identity's, or `None`.
    fn wrong_age(&self, text: &str) -> Option<String> {
        let (age, regex) = self.age.as_ref()?;
        regex.captures_iter(text).find_map(|caps| {
            let claimed = if let Some(years) = caps.get(1).or(caps.get(2)).or(caps.get(3)) {
                years.as_str().parse::<u32>().ok()? != *age
            } else {
                let from = decade(caps.get(4)?.as_str())?;
                !(from..from + 10).contains(age)
            };
            claimed.then(|| {
                format!(
                    "claims another age than {age}: '{}'",
                    quote(caps.get(0).map_or("", |m| m.as_str()))
                )
            })
        })
    }

    /// Every contradiction the text makes: `"<label>: '<matched text>'"`.
    pub(crate) fn contradictions(&self, text: &str) -> Vec<String> {
        self.claims
            .iter()
            .filter_map(|claim| {
                claim
                    .regex
                    .find(text)
                    .map(|m| format!("{}: '{}'", claim.label, quote(m.as_str())))
            })
            .chain(self.wrong_age(text))
            .collect()
    }

    /// The first sign of role confusion, or `None`.
    pub(crate) fn role_confusion(&self, text: &str) -> Option<String> {
        if let Some(m) = self.templates.find(text) {
            return Some(format!("chat template marker '{}'", m.as_str()));
        }
        if let Some(m) = self.labels.find(text) {
            let label = m.as_str().trim();
            let label = label[..label.find(':').map_or(label.len(), |i| i + 1)]
                .trim_start_matches([' ', '\t', '>', '*', '_', '#', '-']);
            return Some(format!("speaker label '{label}' starts a turn"));
        }
        if let Some(m) = self.prompt_leak.find(text) {
            return Some(format!(
                "system prompt instructions leak into the reply: '{}'",
                quote(m.as_str())
            ));
        }
        if let Some(m) = self.as_the_user.find(text) {
            return Some(format!("speaks as the user would: '{}'", quote(m.as_str())));
        }
        if let Some(m) = self.narration.as_ref().and_then(|r| r.find(text)) {
            return Some(format!(
                "narrates itself in the third person: '{}'",
                quote(m.as_str())
            ));
        }
        let names = self.names.as_ref()?;
        for m in names.find_iter(text) {
            if is_vocative(&text[..m.start()], &text[m.end()..]) {
                let start = text[..m.start()]
                    .char_indices()
                    .rev()
                    .nth(12)
                    .map_or(0, |(i, _)| i);
                let end = text[m.end()..]
                    .char_indices()
                    .nth(1)
                    .map_or(text.len(), |(i, _)| m.end() + i);
                return Some(format!(
                    "addresses the identity by name, as the user would: '{}'",
                    quote(text[start..end].trim())
                ));
            }
        }
        None
    }
}

/// Whether a name between `before` and `after` is a vocative (someone talking *to* the identity):
/// followed by `,` `!` `?` `.` or the end, and preceded by the start of a sentence, a comma, or a
/// greeting — but not a self-introduction ("It's me, Dee").
fn is_vocative(before: &str, after: &str) -> bool {
    let followed = after.is_empty() || after.starts_with([',', '!', '?', '.']);
    if !followed {
        return false;
    }
    let lead = before.trim_end();
    let previous_words = |n: usize| -> String {
        let words = super::words::words(lead);
        words[words.len().saturating_sub(n)..].join(" ")
    };
    if lead.is_empty() || lead.ends_with(['.', '!', '?', '\n', '"', '\u{201c}']) {
        // A sentence that starts with the name and a comma ("Dee, I'd say …") addresses the identity.
        return after.starts_with(',') || after.is_empty() || after.starts_with(['!', '?']);
    }
    if let Some(head) = lead.strip_suffix(',') {
        let words = super::words::words(head);
        let last_two = words[words.len().saturating_sub(2)..].join(" ");
        let last = words.last().map_or("", String::as_str);
        return !SELF_INTRODUCTIONS.contains(&last)
            && !SELF_INTRODUCTIONS.contains(&last_two.as_str());
    }
    GREETINGS.contains(&previous_words(1).as_str())
        || GREETINGS.contains(&previous_words(2).as_str())
}
