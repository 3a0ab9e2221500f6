//! Surface garbage: all-caps shouting, stage directions, unbalanced quotes, mojibake, and a reply
//! in another language than its prompt.

use std::sync::LazyLock;

use regex::Regex;

use super::language;
use super::quote;

/// Fewest letters before the capital share is judged.
const MIN_LETTERS_FOR_CAPS: usize = 12;
/// Largest share of capital letters among all letters.
const MAX_CAPITAL_SHARE: f64 = 0.6;
/// Longest run of all-caps words (of two letters or more) allowed.
const MAX_CAPS_RUN: usize = 3;
/// Most words in a bracketed aside for it to read as a stage direction.
const MAX_DIRECTION_WORDS: usize = 12;

/// Verbs of stage directions, in their base form: `(chuckles)`, `*wipes the counter*`, `[smiling]`.
const DIRECTION_VERBS: &[&str] = &[
    "adjust", "beam", "blink", "blush", "chortle", "chuckle", "clap", "clear", "cough", "cross",
    "cry", "fold", "frown", "gasp", "gesture", "giggle", "glance", "grin", "grumble", "hum",
    "laugh", "lean", "mutter", "nod", "pat", "pause", "pour", "raise", "roll", "rub", "scoff",
    "scratch", "shake", "shrug", "sigh", "sip", "slide", "smile", "smirk", "snap", "sniff",
    "snort", "squint", "stir", "stretch", "tap", "tilt", "toss", "whisper", "whistle", "wink",
    "wipe", "yawn",
];

/// Subjects that may open a stage direction before its verb ("she laughs", "Dee winks").
const DIRECTION_SUBJECTS: &[&str] = &["she", "he", "dee", "i", "softly", "warmly", "gently"];

static BRACKETED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\(([^()\n]{1,120})\)|(?:^|[^*\w])\*([^*\n]{1,120})\*(?:[^*\w]|$)|\[([^\[\]\n]{1,120})\]",
    )
    .expect("static pattern")
});

static MOJIBAKE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        "Ã[\u{80}-\u{BF}]|â€|Â[\u{A0}-\u{BF}]|\u{FFFD}|[\u{80}-\u{9F}]|[\u{0}-\u{8}\u{B}\u{C}\u{E}-\u{1F}]",
    )
    .expect("static pattern")
});

/// Letter soup: five or more single letters joined by dots (`J.P.M.M.S.`), or a two-letter
/// syllable said over and over inside a word (`Hehehehehe`, `hahahaha`, `lolololo`).
static LETTER_SOUP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:[A-Za-z]\.){5,}|\b[A-Za-z]*(?i:he|ha|hi|ho|lo|la|ah|eh|oh|hm){4,}[A-Za-z]*\b")
        .expect("static pattern")
});

/// Most times one letter may follow itself inside a word (`soooo` is five).
const MAX_LETTER_RUN: usize = 4;

/// A word with one letter said more than [`MAX_LETTER_RUN`] times in a row (`Noooooo`).
fn stretched_word(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_alphabetic()).find(|word| {
        let mut run = 0;
        let mut previous = None;
        word.chars().any(|c| {
            let c = c.to_ascii_lowercase();
            run = if Some(c) == previous { run + 1 } else { 1 };
            previous = Some(c);
            run > MAX_LETTER_RUN
        })
    })
}

/// The first kind of surface garbage found, or `None`.
pub(crate) fn garbage(reply: &str, prompt: &str) -> Option<String> {
    if let Some(detail) = shouting(reply) {
        return Some(detail);
    }
    if let Some(m) = LETTER_SOUP.find(reply) {
        return Some(format!("letter soup '{}'", quote(m.as_str())));
    }
    if let Some(word) = stretched_word(reply) {
        return Some(format!("stretched word '{}'", quote(word)));
    }
    if let Some(direction) = stage_direction(reply) {
        return Some(format!("stage direction '{}'", quote(&direction)));
    }
    if let Some(run) = emoji_run(reply) {
        return Some(format!("emoji run '{run}'"));
    }
    if let Some(m) = MOJIBAKE.find(reply) {
        return Some(format!("mojibake {:?}", m.as_str()));
    }
    if let Some(detail) = unbalanced_quotes(reply) {
        return Some(detail);
    }
    language::mismatch(reply, prompt)
}

fn shouting(text: &str) -> Option<String> {
    let (mut letters, mut capitals) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if c.is_uppercase() {
            capitals += 1;
        }
    }
    if letters >= MIN_LETTERS_FOR_CAPS && capitals as f64 > MAX_CAPITAL_SHARE * letters as f64 {
        return Some(format!(
            "all caps ({:.0}% of the letters are capitals)",
            capitals as f64 * 100.0 / letters as f64
        ));
    }
    let mut run: Vec<&str> = Vec::new();
    for word in text.split_whitespace() {
        let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase()) {
            run.push(word);
            if run.len() > MAX_CAPS_RUN {
                return Some(format!("shouting '{}'", quote(&run.join(" "))));
            }
        } else {
            run.clear();
        }
    }
    None
}

/// The base forms a word may come from: `chuckles` → `chuckle`, `nodding` → `nod`.
fn is_direction_verb(word: &str, base_form_too: bool) -> bool {
    let known = |w: &str| DIRECTION_VERBS.binary_search(&w).is_ok();
    if base_form_too && known(word) {
        return true;
    }
    let mut candidates: Vec<String> = Vec::new();
    for suffix in ["es", "s"] {
        if let Some(stem) = word.strip_suffix(suffix) {
            candidates.push(stem.to_owned());
        }
    }
    if let Some(stem) = word.strip_suffix("ing") {
        candidates.push(stem.to_owned());
        candidates.push(format!("{stem}e"));
        let mut undoubled = stem.to_owned();
        undoubled.pop();
        candidates.push(undoubled);
    }
    if let Some(stem) = word.strip_suffix("ies") {
        candidates.push(format!("{stem}y"));
    }
    candidates.iter().any(|c| known(c))
}

fn stage_direction(text: &str) -> Option<String> {
    for captures in BRACKETED.captures_iter(text) {
        let starred = captures.get(2).is_some();
        let Some(inner) = captures
            .get(1)
            .or_else(|| captures.get(2))
            .or_else(|| captures.get(3))
        else {
            continue;
        };
        let words = super::words::words(inner.as_str());
        if words.is_empty() || words.len() > MAX_DIRECTION_WORDS {
            continue;
        }
        let mut at = 0;
        while at + 1 < words.len()
            && (DIRECTION_SUBJECTS.contains(&words[at].as_str()) || words[at].ends_with("ly"))
        {
            at += 1;
        }
        // In asterisks any verb form reads as an action (`*smile*`); in brackets only the
        // third-person or -ing form does, so "(look it up)" stays an aside.
        if is_direction_verb(&words[at], starred)
            || (words[0] == "in"
                && words
                    .last()
                    .is_some_and(|w| matches!(w.as_str(), "voice" | "tone" | "accent" | "whisper")))
        {
            return Some(if starred {
                format!("*{}*", inner.as_str())
            } else {
                captures.get(0).map_or("", |m| m.as_str()).to_owned()
            });
        }
    }
    None
}

/// Most emoji in a row (spaces between them ignored).
const MAX_EMOJI_RUN: usize = 2;

/// A run of more than [`MAX_EMOJI_RUN`] emoji, if any.
fn emoji_run(text: &str) -> Option<String> {
    let mut run = String::new();
    let mut count = 0;
    for c in text.chars() {
        if super::is_emoji(c) || c == '\u{fe0f}' || c == '\u{200d}' {
            run.push(c);
            if super::is_emoji(c) {
                count += 1;
            }
        } else if c == ' ' && count > 0 {
            continue;
        } else {
            if count > MAX_EMOJI_RUN {
                return Some(run);
            }
            run.clear();
            count = 0;
        }
    }
    (count > MAX_EMOJI_RUN).then_some(run)
}

fn unbalanced_quotes(text: &str) -> Option<String> {
    let straight = text.matches('"').count();
    if straight % 2 == 1 {
        return Some(format!("unbalanced quotes ({straight} '\"')"));
    }
    let (open, close) = (
        text.matches('\u{201c}').count(),
        text.matches('\u{201d}').count(),
    );
    if open != close {
        return Some(format!(
            "unbalanced quotes ({open} '\u{201c}', {close} '\u{201d}')"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_sorted() {
        assert!(DIRECTION_VERBS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn stage_directions() {
        for (text, found) in [
            ("(chuckles) Well hon.", Some("(chuckles)")),
            ("Well *wipes the counter* hon.", Some("*wipes the counter*")),
            ("[smiling warmly] Hi hon.", Some("[smiling warmly]")),
            ("*smile* hon", Some("*smile*")),
            ("(she laughs) Oh hon.", Some("(she laughs)")),
            ("It's fine (knock on wood), hon.", None),
            ("Look it up (look it up twice).", None),
            ("That's **really** good.", None),
            ("It's *really* good.", None),
        ] {
            assert_eq!(stage_direction(text).as_deref(), found, "{text}");
        }
    }

    #[test]
    fn letter_soup_and_stretched_words() {
        for text in [
            "You know, I'm a J.P.M.M.S.J.A.A.I.N.K.A.I.R.I.E.L.O.N.",
            "I'm going to make it up tomorrow. Hehehehehe.",
            "Noooooo, hon, not the ivy.",
        ] {
            assert!(garbage(text, "How are you?").is_some(), "{text}");
        }
        for text in [
            "Ha! The U.S. Open is on, hon.",
            "Hahaha, kiddo, sure.",
            "We're in Honolulu? No, Chicago, hon. Mississippi mud pie is on the board.",
            "Sooo good, the coffee.",
        ] {
            assert!(garbage(text, "How are you?").is_none(), "{text}");
        }
    }

    #[test]
    fn caps() {
        assert!(shouting("GO CUBS GO! See you at the game, hon.").is_none());
        assert!(shouting("I SAID THE CUBS WILL WIN, hon.").is_some());
        assert!(shouting("The CTA bus was late.").is_none());
    }
}
