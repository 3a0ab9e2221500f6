//! Word-level helpers of the detectors: tokens, English stopwords, a small stemmer, and the
//! relevance rule (content-word overlap between prompt and reply).

use std::collections::BTreeSet;

use crate::quality::text::FastSet;

/// Content words of the prompt named in a relevance finding.
const NAMED_PROMPT_WORDS: usize = 5;
/// Fewest content words a prompt needs before relevance is judged ("Help." says too little).
const MIN_PROMPT_CONTENT_WORDS: usize = 2;
/// Fewest content words a reply needs before relevance is judged.
const MIN_REPLY_CONTENT_WORDS: usize = 4;
/// Shortest stem that may match another stem by prefix (`interview` ~ `interviewing`).
const MIN_PREFIX_STEM: usize = 4;

/// Typographic apostrophes and primes made `'`; everything else unchanged.
pub(crate) fn plain_apostrophes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{02bc}' | '\u{2032}' => '\'',
            c => c,
        })
        .collect()
}

/// Lowercase word tokens: runs of letters and digits, with inner apostrophes kept (`don't`).
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() {
            current.push(c.to_ascii_lowercase());
        } else if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if c == '\''
            && !current.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphabetic())
        {
            current.push('\'');
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Common English function words, contractions and chat filler: words that carry no topic.
const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "anything",
    "are",
    "aren't",
    "around",
    "as",
    "at",
    "away",
    "back",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "best",
    "better",
    "between",
    "big",
    "both",
    "but",
    "by",
    "can",
    "can't",
    "cannot",
    "come",
    "could",
    "couldn't",
    "day",
    "did",
    "didn't",
    "do",
    "does",
    "doesn't",
    "doing",
    "don't",
    "down",
    "during",
    "each",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "get",
    "gets",
    "getting",
    "give",
    "go",
    "going",
    "gonna",
    "good",
    "got",
    "great",
    "had",
    "hadn't",
    "has",
    "hasn't",
    "have",
    "haven't",
    "having",
    "he",
    "he'd",
    "he'll",
    "he's",
    "her",
    "here",
    "here's",
    "hers",
    "herself",
    "hey",
    "hi",
    "him",
    "himself",
    "his",
    "how",
    "how's",
    "i",
    "i'd",
    "i'll",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "isn't",
    "it",
    "it's",
    "its",
    "itself",
    "just",
    "keep",
    "know",
    "let",
    "let's",
    "like",
    "little",
    "lot",
    "lotta",
    "make",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "mustn't",
    "my",
    "myself",
    "need",
    "never",
    "new",
    "nice",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "oh",
    "ok",
    "okay",
    "old",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "please",
    "pretty",
    "put",
    "quite",
    "really",
    "right",
    "said",
    "same",
    "say",
    "says",
    "see",
    "shall",
    "shan't",
    "she",
    "she'd",
    "she'll",
    "she's",
    "should",
    "shouldn't",
    "so",
    "some",
    "something",
    "still",
    "such",
    "sure",
    "take",
    "tell",
    "than",
    "thank",
    "thanks",
    "that",
    "that's",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "there's",
    "these",
    "they",
    "they'd",
    "they'll",
    "they're",
    "they've",
    "thing",
    "things",
    "think",
    "this",
    "those",
    "though",
    "through",
    "time",
    "to",
    "too",
    "under",
    "until",
    "up",
    "us",
    "use",
    "very",
    "want",
    "was",
    "wasn't",
    "way",
    "we",
    "we'd",
    "we'll",
    "we're",
    "we've",
    "well",
    "were",
    "weren't",
    "what",
    "what's",
    "when",
    "when's",
    "where",
    "where's",
    "which",
    "while",
    "who",
    "who's",
    "whom",
    "why",
    "why's",
    "will",
    "with",
    "won't",
    "would",
    "wouldn't",
    "yeah",
    "yes",
    "yet",
    "you",
    "you'd",
    "you'll",
    "you're",
    "you've",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// [`STOPWORDS`] as a set: a lookup is asked for every word of every reply, and a hash lookup is
/// a fraction of a binary search's string comparisons.
static STOPWORD_SET: std::sync::LazyLock<FastSet<&'static str>> =
    std::sync::LazyLock::new(|| STOPWORDS.iter().copied().collect());

/// Whether `word` (lowercase) is an English stopword.
pub(crate) fn is_stopword(word: &str) -> bool {
    STOPWORD_SET.contains(word)
}

/// A light suffix-stripping stemmer: `cleans`, `cleaning`, `cleaned` → `clean`; `stories` → `stori`.
pub(crate) fn stem(word: &str) -> String {
    let mut w = word.trim_end_matches("'s").to_owned();
    for (suffix, min_len) in [
        ("ies", 5),
        ("ied", 5),
        ("ing", 6),
        ("ed", 5),
        ("es", 5),
        ("s", 4),
        ("ly", 5),
    ] {
        if w.len() >= min_len && w.ends_with(suffix) && !(suffix == "s" && w.ends_with("ss")) {
            w.truncate(w.len() - suffix.len());
            if suffix == "ies" || suffix == "ied" {
                w.push('i');
            }
            break;
        }
    }
    // running → runn → run; baked/bake → bak.
    let bytes = w.as_bytes();
    if bytes.len() >= 4 && bytes[bytes.len() - 1] == bytes[bytes.len() - 2] {
        let last = bytes[bytes.len() - 1];
        if !matches!(last, b'l' | b's' | b'z' | b'e' | b'o') {
            w.pop();
        }
    }
    if w.len() >= 4 && w.ends_with('e') {
        w.pop();
    }
    if w.ends_with('y') && w.len() >= 4 {
        w.pop();
        w.push('i');
    }
    w
}

/// The stems of the content words of `words`: not stopwords, at least three letters, not numbers.
pub(crate) fn content_stems(words: &[String]) -> BTreeSet<String> {
    words
        .iter()
        .filter(|w| w.chars().count() >= 3 && !is_stopword(w))
        .filter(|w| w.chars().any(char::is_alphabetic))
        .map(|w| stem(w))
        .collect()
}

fn stems_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= MIN_PREFIX_STEM && long.starts_with(short)
}

/// Relevance: a reply that shares no content word (by stem) with its prompt, or `None`. Prompts
/// with fewer than two content words and very short replies are not judged.
pub(crate) fn irrelevance(reply: &[String], prompt: &[String]) -> Option<String> {
    let prompt_stems = content_stems(prompt);
    let reply_stems = content_stems(reply);
    if prompt_stems.len() < MIN_PROMPT_CONTENT_WORDS || reply_stems.len() < MIN_REPLY_CONTENT_WORDS
    {
        return None;
    }
    let shared = reply_stems
        .iter()
        .any(|r| prompt_stems.iter().any(|p| stems_match(r, p)));
    if shared {
        return None;
    }
    // Name the prompt's words as written, in order.
    let mut named: Vec<&str> = Vec::new();
    for word in prompt {
        if word.chars().count() >= 3
            && !is_stopword(word)
            && word.chars().any(char::is_alphabetic)
            && !named.contains(&word.as_str())
        {
            named.push(word);
        }
        if named.len() == NAMED_PROMPT_WORDS {
            break;
        }
    }
    Some(format!(
        "no content word in common with the prompt ({})",
        named.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted() {
        assert!(
            STOPWORDS.windows(2).all(|w| w[0] < w[1]),
            "keep STOPWORDS sorted"
        );
    }

    #[test]
    fn tokens_keep_contractions() {
        assert_eq!(
            words("Don't worry, hon -- it's 5 o'clock!"),
            ["don't", "worry", "hon", "it's", "5", "o'clock"]
        );
    }

    #[test]
    fn stems() {
        for (a, b) in [
            ("cleans", "cleaning"),
            ("cleaned", "clean"),
            ("stories", "story"),
            ("running", "run"),
            ("baking", "bake"),
            ("interviews", "interview"),
        ] {
            assert_eq!(stem(a), stem(b), "{a} ~ {b}");
        }
        assert_ne!(stem("glass"), stem("glad"));
    }
}
