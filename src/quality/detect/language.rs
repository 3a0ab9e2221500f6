//! Language mismatch: the reply's writing system or (for Latin script) its most likely language,
//! from function-word counts, differs from the prompt's.

use std::sync::LazyLock;

use crate::quality::text::FastMap;

/// Fewest letters in each text before scripts are compared.
const MIN_SCRIPT_LETTERS: usize = 10;
/// Share of letters a script needs to be a text's script.
const DOMINANT_SCRIPT_SHARE: f64 = 0.6;
/// Function-word hits a reply needs for its language to count as known...
const MIN_REPLY_HITS: usize = 4;
/// ...and a prompt needs.
const MIN_PROMPT_HITS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Cjk,
    Hangul,
    Devanagari,
    Thai,
    Other,
}

impl Script {
    fn of(c: char) -> Self {
        match u32::from(c) {
            0x0041..=0x024F | 0x1E00..=0x1EFF => Script::Latin,
            0x0370..=0x03FF => Script::Greek,
            0x0400..=0x052F => Script::Cyrillic,
            0x0590..=0x05FF => Script::Hebrew,
            0x0600..=0x06FF | 0x0750..=0x077F => Script::Arabic,
            0x0900..=0x097F => Script::Devanagari,
            0x0E00..=0x0E7F => Script::Thai,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF => Script::Cjk,
            0xAC00..=0xD7AF | 0x1100..=0x11FF => Script::Hangul,
            _ => Script::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Script::Latin => "Latin",
            Script::Cyrillic => "Cyrillic",
            Script::Greek => "Greek",
            Script::Arabic => "Arabic",
            Script::Hebrew => "Hebrew",
            Script::Cjk => "Chinese/Japanese",
            Script::Hangul => "Korean",
            Script::Devanagari => "Devanagari",
            Script::Thai => "Thai",
            Script::Other => "other",
        }
    }
}

/// The script most of the text's letters are in, when one has a clear majority.
fn dominant_script(text: &str) -> Option<Script> {
    let mut counts: Vec<(Script, usize)> = Vec::new();
    let mut letters = 0;
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        let script = Script::of(c);
        match counts.iter_mut().find(|(s, _)| *s == script) {
            Some((_, n)) => *n += 1,
            None => counts.push((script, 1)),
        }
    }
    if letters < MIN_SCRIPT_LETTERS {
        return None;
    }
    counts
        .into_iter()
        .find(|(_, n)| *n as f64 >= DOMINANT_SCRIPT_SHARE * letters as f64)
        .map(|(s, _)| s)
}

/// Frequent function words of languages written in Latin script.
const FUNCTION_WORDS: &[(&str, &[&str])] = &[
    (
        "English",
        &[
            "the", "and", "is", "are", "you", "that", "with", "this", "what", "have", "it", "of",
            "to", "my", "for", "not", "but", "your", "i", "i'm", "it's", "was", "be", "on",
        ],
    ),
    (
        "Spanish",
        &[
            "el", "los", "las", "que", "y", "es", "con", "por", "una", "para", "del", "pero",
            "muy", "como", "está", "tu", "mi", "yo", "qué", "son", "lo", "se", "un", "al",
        ],
    ),
    (
        "French",
        &[
            "le", "les", "et", "est", "une", "des", "pour", "avec", "pas", "qui", "dans", "sur",
            "vous", "je", "mais", "très", "c'est", "du", "au", "il", "elle", "nous", "ce", "un",
        ],
    ),
    (
        "German",
        &[
            "der", "die", "das", "und", "ist", "nicht", "ich", "du", "mit", "sie", "ein", "eine",
            "zu", "auf", "für", "wie", "aber", "sehr", "auch", "es", "den", "dem", "wir", "sind",
        ],
    ),
    (
        "Italian",
        &[
            "il", "che", "è", "di", "gli", "per", "sono", "non", "ma", "molto", "anche", "questo",
            "della", "io", "perché", "come", "e", "la", "un", "una", "ho", "hai", "mi", "ti",
        ],
    ),
    (
        "Portuguese",
        &[
            "o", "os", "que", "é", "e", "um", "uma", "para", "com", "não", "você", "eu", "mas",
            "muito", "isso", "da", "do", "das", "dos", "está", "na", "no", "em", "se",
        ],
    ),
    (
        "Dutch",
        &[
            "de", "het", "een", "en", "is", "niet", "ik", "je", "van", "dat", "met", "voor", "op",
            "maar", "zijn", "wat", "ook", "heel", "er", "jij", "we", "hij", "naar", "bij",
        ],
    ),
];

/// Each function word with the languages (bits, by index in [`FUNCTION_WORDS`]) it belongs to:
/// one lookup per word instead of a scan of every list.
static LANGUAGES_OF_WORD: LazyLock<FastMap<&'static str, u32>> = LazyLock::new(|| {
    let mut map = FastMap::default();
    for (index, (_, list)) in FUNCTION_WORDS.iter().enumerate() {
        for word in *list {
            *map.entry(*word).or_insert(0) |= 1 << index;
        }
    }
    map
});

/// The language with the most function-word hits, when it has at least `min_hits` and twice the
/// runner-up's.
fn guess_language(text: &str, min_hits: usize) -> Option<&'static str> {
    let mut hits = [0usize; FUNCTION_WORDS.len()];
    for word in super::words::words(text) {
        if let Some(&languages) = LANGUAGES_OF_WORD.get(word.as_str()) {
            for (index, count) in hits.iter_mut().enumerate() {
                *count += (languages >> index & 1) as usize;
            }
        }
    }
    let mut scores: Vec<(&'static str, usize)> = FUNCTION_WORDS
        .iter()
        .zip(hits)
        .map(|((language, _), count)| (*language, count))
        .collect();
    scores.sort_by_key(|s| std::cmp::Reverse(s.1));
    let (best, hits) = scores[0];
    let runner_up = scores.get(1).map_or(0, |s| s.1);
    (hits >= min_hits && hits >= 2 * runner_up.max(1)).then_some(best)
}

/// A reply in another script or language than its prompt, or `None`.
pub(crate) fn mismatch(reply: &str, prompt: &str) -> Option<String> {
    let (reply_script, prompt_script) = (dominant_script(reply)?, dominant_script(prompt)?);
    if reply_script != prompt_script {
        return Some(format!(
            "the reply is in {} script, the prompt in {}",
            reply_script.name(),
            prompt_script.name()
        ));
    }
    if reply_script != Script::Latin {
        return None;
    }
    let reply_language = guess_language(reply, MIN_REPLY_HITS)?;
    let prompt_language = guess_language(prompt, MIN_PROMPT_HITS)?;
    (reply_language != prompt_language)
        .then(|| format!("the reply reads as {reply_language}, the prompt as {prompt_language}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages() {
        let english = "How will the Cubs do this year? I'm worried about the bullpen.";
        assert_eq!(guess_language(english, 2), Some("English"));
        assert!(
            mismatch(
                "Oh hon, the Cubs will be fine, it's a long season.",
                english
            )
            .is_none()
        );
        assert!(
            mismatch(
                "Los Cubs van a ganar este año, es una temporada muy larga y que bien.",
                english
            )
            .is_some()
        );
        assert!(mismatch("Кабс выиграют в этом году, дорогая, не волнуйся.", english).is_some());
    }
}
