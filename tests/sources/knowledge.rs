//! Prompts from the identity: custom prompt files (a category on every line) and knowledge records
//! from markdown sections and facts.

use std::collections::BTreeSet;

use shaping::sources::*;
use tempfile::TempDir;

use super::{all, repo_file, write};

#[test]
fn custom_prompt_file_requires_category() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "custom.jsonl",
        "{\"prompt\": \"A?\", \"category\": \"edge-cases\"}\n{\"prompt\": \"B?\"}\n",
    );
    let results: Vec<_> = load_custom(&p).unwrap().collect();
    let r = results[0].as_ref().unwrap();
    assert_eq!(
        (r.source.as_str(), r.category.as_deref()),
        ("custom", Some("edge-cases"))
    );
    assert!(r.id.starts_with("custom-"));
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("custom.jsonl:line 2: field `category`"), "{e}");
}

#[test]
fn committed_custom_prompts_are_valid() {
    let records = load_custom(repo_file("identity/prompts/custom.jsonl")).unwrap();
    let recs = all(records);
    assert!(recs.len() >= 100, "{} prompts", recs.len());
    let cats: BTreeSet<&str> = recs.iter().filter_map(|r| r.category.as_deref()).collect();
    assert_eq!(
        cats,
        BTreeSet::from(["adversarial", "edge-cases", "everyday", "scenarios"])
    );
    let keys: BTreeSet<String> = recs.iter().map(Record::key).collect();
    assert_eq!(keys.len(), recs.len(), "duplicate prompts in custom.jsonl");
}

#[test]
fn knowledge_sections_and_facts() {
    let md = "Intro text.\n\n# Dee\n\nRuns a diner.\n\n## Family\n\nTwo kids.\n\n```\n# not a heading\n```\n\n## Empty\n\n### Cubs #\nBleeds blue.\n";
    let sections = markdown_sections(md);
    let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(titles, ["", "Dee", "Family", "Empty", "Cubs"]);
    assert_eq!(sections[2].body, "Two kids.\n\n```\n# not a heading\n```");
    assert_eq!(sections[4].path, ["Dee", "Empty", "Cubs"]);
    assert_eq!(sections[4].line, 17);
    let recs = sections_to_records(&sections);
    assert_eq!(recs.len(), 4, "empty sections make no records");
    assert!(recs.iter().all(|r| r.source == "knowledge"));
    assert_eq!(recs[3].category.as_deref(), Some("Cubs"));
    assert_eq!(recs[3].prompt, "Cubs\n\nBleeds blue.");
    assert_eq!(recs[3].extra["heading_path"], "Dee > Empty > Cubs");

    let facts = facts_to_records(&[
        "Dee is 58.".into(),
        " ".into(),
        "Her diner opens at 6.".into(),
    ]);
    assert_eq!(facts.len(), 2);
    assert_eq!(facts[1].extra["fact_index"], 2);
    assert_eq!(facts[0].category.as_deref(), Some("fact"));
}
