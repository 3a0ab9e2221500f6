//! Knowledge-derived prompts: seeds for question generation from an identity document.
//!
//! [`markdown_sections`] splits markdown by ATX headings (`#` … `######`, ignoring headings inside
//! fenced code blocks) into [`Section`]s; [`knowledge_records`] turns each non-empty section into a
//! record with `source: "knowledge"`, `category` = the section title and `prompt` = the section
//! text (a seed that a pipeline asks a model to write questions about). Extras: `heading_path`
//! (titles from the top, joined with ` > `) and `line` (1-based line of the heading).
//! [`facts_to_records`] does the same for a plain list of facts (category `fact`).

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{Location, Record, SourceError};

/// One section of a markdown document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Heading text (empty for text before the first heading).
    pub title: String,
    /// Heading level, 1–6 (0 for text before the first heading).
    pub level: u8,
    /// Titles of the enclosing headings, outermost first, ending with this one.
    pub path: Vec<String>,
    /// The text under the heading up to the next heading of any level, trimmed.
    pub body: String,
    /// 1-based line of the heading (1 for the preamble).
    pub line: usize,
}

fn heading(line: &str) -> Option<(u8, String)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.bytes().take_while(|&b| b == b'#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &trimmed[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let title = rest.trim().trim_end_matches('#').trim_end().to_owned();
    Some((level as u8, title))
}

/// Splits markdown into sections by headings; the preamble (if any text) is a section titled "".
pub fn markdown_sections(markdown: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut stack: Vec<(u8, String)> = Vec::new();
    let mut current = Section {
        title: String::new(),
        level: 0,
        path: Vec::new(),
        body: String::new(),
        line: 1,
    };
    let mut fence: Option<&str> = None;
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
        } else if t.starts_with("```") || t.starts_with("~~~") {
            fence = Some(&t[..3]);
        } else if let Some((level, title)) = heading(line) {
            let done = std::mem::replace(
                &mut current,
                Section {
                    title: title.clone(),
                    level,
                    path: Vec::new(),
                    body: String::new(),
                    line: i + 1,
                },
            );
            push(&mut sections, done);
            stack.retain(|(l, _)| *l < level);
            stack.push((level, title));
            current.path = stack.iter().map(|(_, t)| t.clone()).collect();
            continue;
        }
        current.body.push_str(line);
        current.body.push('\n');
    }
    push(&mut sections, current);
    sections
}

fn push(sections: &mut Vec<Section>, mut s: Section) {
    s.body = s.body.trim().to_owned();
    if s.level > 0 || !s.body.is_empty() {
        sections.push(s);
    }
}

/// Reads a markdown file (UTF-8) and makes one record per section with text.
pub fn knowledge_records(path: impl AsRef<Path>) -> Result<Vec<Record>, SourceError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| SourceError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        SourceError::NotUtf8 {
            path: path.to_path_buf(),
            location: Location::Line(line),
            detail: format!("at byte {} of the file", offset + 1),
        }
    })?;
    Ok(sections_to_records(&markdown_sections(&text)))
}

/// One record per section with a non-empty body.
pub fn sections_to_records(sections: &[Section]) -> Vec<Record> {
    sections
        .iter()
        .filter(|s| !s.body.is_empty())
        .map(|s| {
            let prompt = if s.title.is_empty() {
                s.body.clone()
            } else {
                format!("{}\n\n{}", s.title, s.body)
            };
            let mut r = Record::new("knowledge", prompt);
            r.category = Some(if s.title.is_empty() {
                "preamble".to_owned()
            } else {
                s.title.clone()
            });
            r.extra
                .insert("heading_path".into(), Value::String(s.path.join(" > ")));
            r.extra.insert("line".into(), Value::from(s.line));
            r
        })
        .collect()
}

/// One record per non-blank fact: `source: "knowledge"`, `category: "fact"`, extra `fact_index`
/// (0-based position in `facts`).
pub fn facts_to_records(facts: &[String]) -> Vec<Record> {
    facts
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.trim().is_empty())
        .map(|(i, f)| {
            let mut r = Record::new("knowledge", f.trim()).with_category("fact");
            r.extra.insert("fact_index".into(), Value::from(i));
            r
        })
        .collect()
}

/// One self-contained fact of an identity document, found by [`section_facts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fact {
    /// The title of the section it comes from.
    pub section: String,
    /// The fact: one bullet point (continuation lines joined) or one sentence of a paragraph.
    pub text: String,
}

/// The facts of a markdown document, deterministically: every bullet point (with its
/// continuation lines) and every sentence of every paragraph, of the sections whose titles are
/// in `sections` (all sections when it is empty). No model is involved, so the same document
/// always gives the same facts, in document order.
pub fn section_facts(markdown: &str, sections: &[&str]) -> Vec<Fact> {
    let mut facts = Vec::new();
    for section in markdown_sections(markdown) {
        if section.body.is_empty()
            || (!sections.is_empty() && !sections.contains(&section.title.as_str()))
        {
            continue;
        }
        let mut push = |text: &str| {
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.split(' ').count() >= 3 {
                facts.push(Fact {
                    section: section.title.clone(),
                    text,
                });
            }
        };
        let mut bullet: Option<String> = None;
        let mut paragraph = String::new();
        for line in section.body.lines() {
            let trimmed = line.trim();
            if let Some(item) = trimmed.strip_prefix("- ").or(trimmed.strip_prefix("* ")) {
                bullet.take().inspect(|b| push(b));
                sentences(&std::mem::take(&mut paragraph))
                    .iter()
                    .for_each(|s| push(s));
                bullet = Some(item.to_owned());
            } else if trimmed.is_empty() {
                bullet.take().inspect(|b| push(b));
                sentences(&std::mem::take(&mut paragraph))
                    .iter()
                    .for_each(|s| push(s));
            } else if let Some(b) = bullet.as_mut() {
                b.push(' ');
                b.push_str(trimmed);
            } else {
                paragraph.push(' ');
                paragraph.push_str(trimmed);
            }
        }
        bullet.take().inspect(|b| push(b));
        sentences(&paragraph).iter().for_each(|s| push(s));
    }
    facts
}

/// The sentences of a paragraph: split after `.`, `!` or `?` followed by a space and an
/// uppercase letter (or a quote), so "4 a.m." or "No. 23" inside a sentence stays whole.
fn sentences(paragraph: &str) -> Vec<String> {
    let text = paragraph.trim();
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..chars.len() {
        let ends = matches!(chars[i], '.' | '!' | '?')
            && chars.get(i + 1) == Some(&' ')
            && chars
                .get(i + 2)
                .is_some_and(|c| c.is_uppercase() || *c == '"' || *c == '“');
        if ends {
            out.push(
                chars[start..=i]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_owned(),
            );
            start = i + 2;
        }
    }
    if start < chars.len() {
        out.push(chars[start..].iter().collect::<String>().trim().to_owned());
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod fact_tests {
    use super::*;

    #[test]
    fn bullets_and_sentences_become_facts_in_order() {
        let doc = "# Dee\n\n## Who she is\nDee is 58. She runs the diner\non Clark Street.\n\n## Habits\n- Opens at 5:30 every\n  morning.\n- Makes pierogi on Fridays.\n\n## Other\n- Not asked about here.\n";
        let facts = section_facts(doc, &["Who she is", "Habits"]);
        let texts: Vec<&str> = facts.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Dee is 58.",
                "She runs the diner on Clark Street.",
                "Opens at 5:30 every morning.",
                "Makes pierogi on Fridays."
            ]
        );
        assert_eq!(facts[2].section, "Habits");
        assert_eq!(section_facts(doc, &[]).len(), 5);
    }

    #[test]
    fn sentence_split_keeps_abbreviations_and_numbers() {
        assert_eq!(
            sentences("Open until 4 a.m. on game nights. She won."),
            ["Open until 4 a.m. on game nights.", "She won."]
        );
    }
}
