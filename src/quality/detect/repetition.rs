//! Repetition detectors: degeneration (a reply that loops on itself) and echo (a reply copied
//! from its prompt).

use super::quote;
use super::words::is_stopword;
use crate::quality::text::{FastMap, FastSet};

/// A sentence of at least this many words may occur twice, not more.
const LONG_SENTENCE_WORDS: usize = 5;
/// A shorter sentence (at least [`SHORT_SENTENCE_WORDS`] words) may occur this often, not more.
const SHORT_SENTENCE_MAX: usize = 2;
const SHORT_SENTENCE_WORDS: usize = 2;
/// A phrase of `n` words may occur fewer times than its limit here: a reply saying "I'll make
/// sure" four times, or "I'll have a cake" three times, loops.
/// A run of six words said twice is a loop too ("in front of the TV all day").
const REPEATED_PHRASE: [(usize, usize); 3] = [(3, 4), (4, 3), (6, 2)];
/// Replies with fewer word trigrams are not judged by their trigram variety.
const MIN_TRIGRAMS: usize = 12;
/// Smallest share of distinct word trigrams in a reply.
const MIN_DISTINCT_TRIGRAM_SHARE: f64 = 0.75;
/// One phrase (1–3 words, not all stopwords) repeated at least this often...
const DOMINANT_PHRASE_MIN_COUNT: usize = 5;
/// ...and covering at least this share of the reply's words makes the reply "mostly one phrase".
const DOMINANT_PHRASE_SHARE: f64 = 0.2;

/// Shortest prompt (in words) whose verbatim repetition counts as an echo.
const MIN_ECHO_PROMPT_WORDS: usize = 4;
/// Share of a short reply's words taken from the prompt that makes it the prompt handed back.
const MIN_REWORDED_SHARE: f64 = 0.7;
/// Largest share of the reply's word trigrams that may come from the prompt.
const MAX_COPIED_TRIGRAM_SHARE: f64 = 0.5;
/// Fewest reply trigrams for the copied share to be judged.
const MIN_COPIED_TRIGRAMS: usize = 4;
/// Longest run of words the reply may copy from the prompt.
const MAX_COPIED_RUN: usize = 10;
/// Words of the prompt/reply considered for the copied run (bounds the quadratic scan).
const RUN_SCAN_WORDS: usize = 1500;

/// The sentences of `text`: split after `.`, `!`, `?`, `…` followed by whitespace, and at line breaks.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        let boundary = match c {
            '\n' => true,
            '.' => {
                chars.peek().is_none_or(|(_, n)| n.is_whitespace())
                    && !ends_with_abbreviation(&text[start..i])
            }
            '!' | '?' | '…' => chars.peek().is_none_or(|(_, n)| n.is_whitespace()),
            _ => false,
        };
        if boundary {
            let piece = text[start..end].trim();
            if !piece.is_empty() {
                out.push(piece);
            }
            start = end;
        }
    }
    let piece = text[start..].trim();
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

/// Titles and short forms after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "Dr", "Jr", "Mr", "Mrs", "Ms", "Mt", "No", "Sr", "St", "Ste", "etc", "vs",
];

fn ends_with_abbreviation(before_period: &str) -> bool {
    let word = before_period
        .rsplit(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    ABBREVIATIONS.contains(&word)
}

/// Degeneration: repeated sentences, one phrase dominating, or few distinct word trigrams.
pub(crate) fn degeneration(text: &str, words: &[String]) -> Option<String> {
    // Repeated sentences.
    let mut counts: FastMap<Vec<String>, (usize, &str)> = FastMap::default();
    for sentence in sentences(text) {
        let key = super::words::words(sentence);
        if key.len() < SHORT_SENTENCE_WORDS {
            continue;
        }
        counts.entry(key).or_insert((0, sentence)).0 += 1;
    }
    let worst = counts
        .iter()
        .filter(|(key, (count, _))| {
            if key.len() >= LONG_SENTENCE_WORDS {
                *count >= 2
            } else {
                *count > SHORT_SENTENCE_MAX
            }
        })
        .max_by_key(|(key, (count, first))| (*count, key.len(), std::cmp::Reverse(*first)));
    if let Some((_, (count, first))) = worst {
        return Some(format!("sentence '{}' ×{count}", quote(first)));
    }

    // A phrase said again and again.
    for (n, limit) in &REPEATED_PHRASE {
        let mut grams: FastMap<&[String], (usize, usize)> = FastMap::default();
        for (at, gram) in words.windows(*n).enumerate() {
            grams.entry(gram).or_insert((0, at)).0 += 1;
        }
        let worst = grams
            .into_iter()
            .filter(|(_, (count, _))| count >= limit)
            .max_by_key(|(_, (count, first))| (*count, std::cmp::Reverse(*first)));
        if let Some((gram, (count, _))) = worst {
            return Some(format!("phrase '{}' ×{count}", gram.join(" ")));
        }
    }

    // One phrase dominating the reply.
    let total = words.len();
    if total > 0 {
        // (count, n, first position, gram) of the best dominating phrase so far.
        let mut best: Option<(usize, usize, usize, &[String])> = None;
        // Words that make no phrase on their own: stopwords and single characters.
        let filler: Vec<bool> = words
            .iter()
            .map(|w| is_stopword(w) || w.chars().count() < 2)
            .collect();
        for n in 1..=3usize {
            // Per phrase: how often it occurs and where first (for a deterministic choice).
            let mut grams: FastMap<&[String], (usize, usize)> = FastMap::default();
            for (at, gram) in words.windows(n).enumerate() {
                if filler[at..at + n].iter().all(|&f| f) {
                    continue;
                }
                grams.entry(gram).or_insert((0, at)).0 += 1;
            }
            for (gram, (count, first)) in grams {
                let covered = count * n;
                // The most frequent phrase; of equally frequent ones the longest, then the first.
                let key = (count, n, std::cmp::Reverse(first));
                let better = best.is_none_or(|(c, bn, bf, _)| key > (c, bn, std::cmp::Reverse(bf)));
                if count >= DOMINANT_PHRASE_MIN_COUNT
                    && covered as f64 >= DOMINANT_PHRASE_SHARE * total as f64
                    && better
                {
                    best = Some((count, n, first, gram));
                }
            }
        }
        if let Some((count, n, _, gram)) = best {
            return Some(format!(
                "phrase '{}' ×{count} ({:.0}% of the words)",
                gram.join(" "),
                (count * n) as f64 * 100.0 / total as f64
            ));
        }
    }

    // Few distinct trigrams.
    if words.len() >= MIN_TRIGRAMS + 2 {
        let trigrams: Vec<&[String]> = words.windows(3).collect();
        let distinct: FastSet<&[String]> = trigrams.iter().copied().collect();
        let share = distinct.len() as f64 / trigrams.len() as f64;
        if share < MIN_DISTINCT_TRIGRAM_SHARE {
            return Some(format!(
                "only {:.0}% of its word trigrams are distinct ({} of {})",
                share * 100.0,
                distinct.len(),
                trigrams.len()
            ));
        }
    }
    None
}

/// Echo: the reply is the prompt, starts with it, copies most of its trigrams from it, or copies
/// a long run of words from it.
pub(crate) fn echo(reply: &[String], prompt: &[String]) -> Option<String> {
    if reply.is_empty() || prompt.is_empty() {
        return None;
    }
    if reply == prompt {
        return Some("the reply is the prompt".to_owned());
    }
    if prompt.len() >= MIN_ECHO_PROMPT_WORDS && reply.starts_with(prompt) {
        return Some("the reply starts by repeating the prompt".to_owned());
    }
    // A short reply made almost only of the prompt's words hands the prompt back, reworded.
    if reply.len() >= MIN_ECHO_PROMPT_WORDS && reply.len() <= prompt.len() + MIN_ECHO_PROMPT_WORDS {
        let prompt_words: FastSet<&String> = prompt.iter().collect();
        let shared = reply.iter().filter(|w| prompt_words.contains(w)).count();
        let share = shared as f64 / reply.len() as f64;
        if share >= MIN_REWORDED_SHARE {
            return Some(format!(
                "{:.0}% of its words are the prompt's: the prompt handed back",
                share * 100.0
            ));
        }
    }
    let prompt_trigrams: FastSet<&[String]> = prompt.windows(3).collect();
    let reply_trigrams: Vec<&[String]> = reply.windows(3).collect();
    if reply_trigrams.len() >= MIN_COPIED_TRIGRAMS {
        let copied = reply_trigrams
            .iter()
            .filter(|t| prompt_trigrams.contains(*t))
            .count();
        let share = copied as f64 / reply_trigrams.len() as f64;
        if share > MAX_COPIED_TRIGRAM_SHARE {
            return Some(format!(
                "{:.0}% of its word trigrams are copied from the prompt",
                share * 100.0
            ));
        }
    }
    let (len, at) = longest_common_run(
        &reply[..reply.len().min(RUN_SCAN_WORDS)],
        &prompt[..prompt.len().min(RUN_SCAN_WORDS)],
    );
    if len > MAX_COPIED_RUN {
        return Some(format!(
            "copies {len} words in a row from the prompt: '{}'",
            quote(&reply[at..at + len].join(" "))
        ));
    }
    None
}

/// A reply that repeats another text of its conversation (an earlier reply, or the system
/// message): the same words, over half its word trigrams taken from it, or a run of more than
/// [`MAX_COPIED_RUN`] words copied from it. `what` names the other text in the detail.
pub(crate) fn repeats(reply: &[String], other: &[String], what: &str) -> Option<String> {
    if reply.is_empty() || other.is_empty() {
        return None;
    }
    if reply == other {
        return Some(format!("says again {what}, word for word"));
    }
    let other_trigrams: FastSet<&[String]> = other.windows(3).collect();
    let reply_trigrams: Vec<&[String]> = reply.windows(3).collect();
    if reply_trigrams.len() >= MIN_COPIED_TRIGRAMS {
        let copied = reply_trigrams
            .iter()
            .filter(|t| other_trigrams.contains(*t))
            .count();
        let share = copied as f64 / reply_trigrams.len() as f64;
        if share > MAX_COPIED_TRIGRAM_SHARE {
            return Some(format!(
                "{:.0}% of its word trigrams are copied from {what}",
                share * 100.0
            ));
        }
    }
    copied_run(reply, other)
        .map(|(len, run)| format!("copies {len} words in a row from {what}: '{run}'"))
}

/// The longest run of words `reply` copies from `source` when it is longer than
/// [`MAX_COPIED_RUN`]: its length and the run, quoted.
pub(crate) fn copied_run(reply: &[String], source: &[String]) -> Option<(usize, String)> {
    let (len, at) = longest_common_run(
        &reply[..reply.len().min(RUN_SCAN_WORDS)],
        &source[..source.len().min(RUN_SCAN_WORDS)],
    );
    (len > MAX_COPIED_RUN).then(|| (len, quote(&reply[at..at + len].join(" "))))
}

/// The longest run of words that `a` and `b` share: (length, start in `a`).
/// Words in a row a reply may share with an example reply of its prompt (few-shot turns) before
/// it counts as copied, when at least [`MIN_COPIED_CONTENT_WORDS`] of them are content words.
const MAX_SHARED_EXAMPLE_RUN: usize = 3;
const MIN_COPIED_CONTENT_WORDS: usize = 2;

/// A reply that copies a phrase from one of the example replies shown before its prompt (the
/// few-shot turns of the request), or `None`: the run of words, quoted.
pub(crate) fn copied_from_examples(reply: &[String], examples: &[Vec<String>]) -> Option<String> {
    let n = MAX_SHARED_EXAMPLE_RUN + 1;
    let example_ngrams: FastSet<&[String]> = examples.iter().flat_map(|e| e.windows(n)).collect();
    if example_ngrams.is_empty() {
        return None;
    }
    reply
        .windows(n)
        .find(|w| {
            example_ngrams.contains(w)
                && w.iter().filter(|word| !is_stopword(word)).count() >= MIN_COPIED_CONTENT_WORDS
        })
        .map(|w| {
            format!(
                "copies '{}' from an example reply of the prompt",
                w.join(" ")
            )
        })
}

fn longest_common_run(a: &[String], b: &[String]) -> (usize, usize) {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    let (mut best, mut best_end) = (0, 0);
    for (i, word) in a.iter().enumerate() {
        for (j, other) in b.iter().enumerate() {
            current[j + 1] = if word == other { previous[j] + 1 } else { 0 };
            if current[j + 1] > best {
                best = current[j + 1];
                best_end = i + 1;
            }
        }
        std::mem::swap(&mut previous, &mut current);
    }
    (best, best_end - best)
}

#[cfg(test)]
mod tests {
    use super::super::words::words;
    use super::*;

    #[test]
    fn sentence_split() {
        assert_eq!(
            sentences("Hi hon. Go Cubs!\nSee you at 5.30 p.m. today… Bye"),
            [
                "Hi hon.",
                "Go Cubs!",
                "See you at 5.30 p.m.",
                "today…",
                "Bye"
            ]
        );
    }

    #[test]
    fn ordinary_text_is_not_degenerate() {
        let text = "Oh hon, the Cubs had a rough week. They dropped two to the Brewers, and the \
                    bullpen looked tired. But every spring we're tied for first, and I've seen \
                    worse. Come by the diner Friday and we'll talk it over with pierogi.";
        assert_eq!(degeneration(text, &words(text)), None);
    }

    #[test]
    fn phrases_said_again_and_again() {
        for (text, found) in [
            (
                "You're home, hon. You're home. You're home. You're home. Have a coffee.",
                "sentence 'You're home.' ×3",
            ),
            (
                "It's a new one, but it's the best. I'll have a cake, and I'll have a cake, and I'll have a cake.",
                "phrase 'i'll have a cake' ×3",
            ),
            (
                "Hon, I'll make sure to have a game. I'll make sure my dad is happy and I'll make sure my \
                 son is happy. I'll make sure they're happy, kiddo.",
                "phrase 'i'll make sure' ×4",
            ),
        ] {
            assert_eq!(
                degeneration(text, &words(text)).as_deref(),
                Some(found),
                "{text}"
            );
        }
        let text = "I'll just sit in front of the TV all day, and I'll just sit there in front of the TV all day.";
        assert_eq!(
            degeneration(text, &words(text)).as_deref(),
            Some("phrase 'in front of the tv all' ×2")
        );
        // A phrase said twice, or a three-word one three times, is speech, not a loop.
        let text = "I'll tell you what, hon: the Cubs will be fine. I'll tell you what else, the \
                    coffee's on me. The Cubs will be fine, the Cubs always are.";
        assert_eq!(degeneration(text, &words(text)), None);
    }

    #[test]
    fn low_trigram_variety() {
        let text = "I'm just a crumb, you know, I'm just a crumb, you know, I'm just a big happy \
                    wimple, I'm just a crumb, you know, a big happy wimple";
        let detail = degeneration(text, &words(text)).unwrap();
        assert!(
            detail.contains("trigrams") || detail.contains("phrase"),
            "{detail}"
        );
    }

    #[test]
    fn copied_runs() {
        let prompt = words(
            "Tell me about the time the Cubs won the World Series in Cleveland in 2016 and you kept the grill open",
        );
        let reply = words(
            "Well hon, the time the Cubs won the World Series in Cleveland in 2016 and you kept the grill open was a night.",
        );
        assert!(echo(&reply, &prompt).is_some());
        let fine = words(
            "Lord love a duck, that night! I kept the grill open until four and fed everybody for free.",
        );
        assert_eq!(echo(&fine, &prompt), None);
    }
}
