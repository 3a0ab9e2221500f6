//! Field maps: renamed and nested fields, extras kept or projected, filters and dedupe.

use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

use super::{all, write};

#[test]
fn jsonl_maps_fields_and_keeps_extras() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "qs.jsonl",
        "{\"id\": \"a1\", \"prompt\": \"First?\", \"category\": \"everyday\", \"lang\": \"en\"}\n\n\
         {\"prompt\": \"Second?\", \"n\": 3}\r\n{\"id\": 7, \"prompt\": \"Third?\"}\n",
    );
    let loader = Loader::new(&p);
    let stats = loader.stats();
    let recs = all(loader.open().unwrap());
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].id, "a1");
    assert_eq!(recs[0].source, "qs");
    assert_eq!(recs[0].category.as_deref(), Some("everyday"));
    assert_eq!(
        recs[0].extra,
        json!({"lang": "en"}).as_object().unwrap().clone()
    );
    assert_eq!(recs[1].id, derive_id("qs", "Second?"));
    assert_eq!(recs[1].extra["n"], 3);
    assert_eq!(recs[2].id, "7");
    assert_eq!(
        stats.get(),
        SourceStats {
            read: 3,
            kept: 3,
            ..Default::default()
        }
    );

    let only = all(Loader::new(&p)
        .fields(FieldMap::new().extra_only(["lang"]))
        .source_name("x")
        .open()
        .unwrap());
    assert_eq!(only[1].extra.len(), 0);
    assert_eq!(only[0].source, "x");
}

#[test]
fn nested_paths_filter_and_dedupe() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "conv.jsonl",
        "{\"conversation\": [{\"content\": \"Hi there\"}], \"meta\": {\"lang\": \"en\"}}\n\
         {\"conversation\": [{\"content\": \"hi   THERE\"}], \"meta\": {\"lang\": \"en\"}}\n\
         {\"conversation\": [{\"content\": \"Bonjour\"}], \"meta\": {\"lang\": \"fr\"}}\n\
         {\"conversation\": [], \"meta\": {}}\n",
    );
    let loader = Loader::new(&p)
        .fields(
            FieldMap::new()
                .prompt("conversation.0.content")
                .extra_only(["meta.lang"]),
        )
        .dedupe(true)
        .skip_bad_rows(true)
        .filter(|r| r.extra.get("meta.lang") == Some(&json!("en")));
    let stats = loader.stats();
    let recs = all(loader.open().unwrap());
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].prompt, "Hi there");
    assert_eq!(recs[0].extra["meta.lang"], "en");
    assert_eq!(
        stats.get(),
        SourceStats {
            read: 4,
            kept: 1,
            skipped_bad: 1,
            skipped_filtered: 1,
            duplicates: 1
        }
    );

    let err = Loader::new(&p)
        .fields(FieldMap::new().prompt("conversation.0.content"))
        .open()
        .unwrap()
        .nth(3)
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("conv.jsonl:line 4: field `conversation.0.content` is missing; available fields: indices 0..0"), "{err}");
}
