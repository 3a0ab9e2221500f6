//! Records and the streaming loaders: JSONL, JSON arrays, CSV and text, bad rows named by file
//! and line (or skipped and counted), invalid UTF-8, directories of shards.

use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

use super::parquet_files::write_flat_parquet;
use super::{all, write};

#[test]
fn record_serde_flattens_extra_and_skips_missing_category() {
    let mut r = Record::new("demo", "Hello   World");
    r.extra.insert("lang".into(), json!("en"));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v,
        json!({"id": r.id, "prompt": "Hello   World", "source": "demo", "lang": "en"})
    );
    assert!(r.id.starts_with("demo-") && r.id.len() == "demo-".len() + 12);
    assert_eq!(
        r.id,
        derive_id("demo", "hello world"),
        "id is derived from normalised text"
    );
    let back: Record = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
    let c = Record::new("demo", "x").with_category("edge");
    assert_eq!(serde_json::to_value(&c).unwrap()["category"], "edge");
    assert_eq!(normalise("  Hello\t\nWORLD  "), "hello world");
}

#[test]
fn jsonl_bad_line_names_file_and_line_and_skip_counts() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "bad.jsonl",
        "{\"prompt\": \"ok 1\"}\n{\"prompt\": \n{\"text\": \"no prompt\", \"x\": 1}\n[1,2]\n{\"prompt\": 5}\n{\"prompt\": \"ok 2\"}\n",
    );
    let errs: Vec<String> = Loader::new(&p)
        .open()
        .unwrap()
        .filter_map(|r| r.err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].contains("bad.jsonl:line 2") && errs[0].contains("invalid JSON"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("bad.jsonl:line 3") && errs[1].contains("`prompt`"),
        "{}",
        errs[1]
    );
    assert!(errs[1].contains("available fields: text, x"), "{}", errs[1]);
    assert!(
        errs[2].contains("line 4") && errs[2].contains("expected a JSON object"),
        "{}",
        errs[2]
    );
    assert!(
        errs[3].contains("line 5") && errs[3].contains("field `prompt`"),
        "{}",
        errs[3]
    );

    let records = Loader::new(&p).skip_bad_rows(true).open().unwrap();
    let stats = records.stats();
    let recs = all(records);
    assert_eq!(
        recs.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ["ok 1", "ok 2"]
    );
    assert_eq!(
        stats.get(),
        SourceStats {
            read: 6,
            kept: 2,
            skipped_bad: 4,
            ..Default::default()
        }
    );
}

#[test]
fn non_utf8_is_an_error_not_lossy() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "x.jsonl",
        b"{\"prompt\": \"fine\"}\n{\"prompt\": \"caf\xe9\"}\n".as_slice(),
    );
    let errs: Vec<SourceError> = Loader::new(&p)
        .open()
        .unwrap()
        .filter_map(|r| r.err())
        .collect();
    assert_eq!(errs.len(), 1);
    assert!(matches!(errs[0], SourceError::NotUtf8 { .. }));
    assert!(
        errs[0]
            .to_string()
            .contains("x.jsonl:line 2: invalid UTF-8"),
        "{}",
        errs[0]
    );

    let t = write(dir.path(), "x.txt", b"one\n\xff\xfe two\n".as_slice());
    let err = Loader::new(&t)
        .open()
        .unwrap()
        .find_map(|r| r.err())
        .unwrap();
    assert!(
        err.to_string().contains("x.txt:line 2: invalid UTF-8"),
        "{err}"
    );

    let c = write(
        dir.path(),
        "x.csv",
        b"prompt,tag\nhello,a\nbye,\xc3\x28\n".as_slice(),
    );
    let err = Loader::new(&c)
        .open()
        .unwrap()
        .find_map(|r| r.err())
        .unwrap();
    assert!(
        err.to_string()
            .contains("x.csv:line 3: invalid UTF-8 in column `tag`"),
        "{err}"
    );

    let k = write(dir.path(), "k.md", b"# T\nok\n\xff\n".as_slice());
    let err = knowledge_records(&k).unwrap_err();
    assert!(
        err.to_string().contains("k.md:line 3: invalid UTF-8"),
        "{err}"
    );
}

#[test]
fn json_array_streams_elements_with_lines() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "arr.json",
        "[\n  {\"prompt\": \"a\"},\n  {\"prompt\": \"b\",\n   \"category\": \"c\"},\n  3,\n  {\"q\": \"d\"}\n]\n",
    );
    let results: Vec<_> = Loader::new(&p).open().unwrap().collect();
    assert_eq!(results.len(), 4);
    assert_eq!(results[1].as_ref().unwrap().category.as_deref(), Some("c"));
    let e = results[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("arr.json:line 5 (element 3)") && e.contains("found a number"),
        "{e}"
    );
    let e = results[3].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("line 6 (element 4)") && e.contains("available fields: q"),
        "{e}"
    );

    let bad = write(
        dir.path(),
        "broken.json",
        "[{\"prompt\": \"a\"},\n{\"prompt\": }]",
    );
    let records = Loader::new(&bad).skip_bad_rows(true).open().unwrap();
    let results: Vec<_> = records.collect();
    assert_eq!(
        results.len(),
        2,
        "syntax errors end the file even when skipping rows"
    );
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("broken.json:line 2") && e.contains("cannot continue"),
        "{e}"
    );
}

#[test]
fn csv_loader_field_map_missing_column_and_bad_row() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "faq.csv",
        "qid,question,topic\n1,\"How, exactly?\",menu\n2,\"Multi\nline\",\n3,short\n4,Fine?,hours\n",
    );
    let fields = FieldMap::new()
        .id("qid")
        .prompt("question")
        .category("topic");
    let results: Vec<_> = Loader::new(&p)
        .fields(fields.clone())
        .open()
        .unwrap()
        .collect();
    assert_eq!(results.len(), 4);
    let r0 = results[0].as_ref().unwrap();
    assert_eq!(
        (r0.id.as_str(), r0.prompt.as_str(), r0.category.as_deref()),
        ("1", "How, exactly?", Some("menu"))
    );
    assert_eq!(
        results[1].as_ref().unwrap().category,
        None,
        "empty cell is no category"
    );
    let e = results[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("faq.csv:line 5") && e.contains("expected 3 fields, found 2"),
        "{e}"
    );
    assert!(results[3].is_ok());

    let err = Loader::new(&p)
        .fields(FieldMap::new().prompt("query"))
        .open()
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: column `query` not found; available columns: qid, question, topic",
            p.display()
        )
    );
}

#[test]
fn text_loader_one_prompt_per_line() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "lines.txt",
        "\u{feff}First prompt\n\n   \n  Second prompt  \r\nthird\n",
    );
    let recs = all(Loader::new(&p).open().unwrap());
    assert_eq!(
        recs.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ["First prompt", "Second prompt", "third"]
    );
    assert!(
        recs.iter()
            .all(|r| r.source == "lines" && r.id.starts_with("lines-"))
    );
}

#[test]
fn directory_of_shards_in_sorted_order() {
    let dir = TempDir::new().unwrap();
    let shards = dir.path().join("shards");
    write(&shards, "b-00001.jsonl", "{\"prompt\": \"from b\"}\n");
    write(&shards, "a-00000.jsonl", "{\"prompt\": \"from a\"}\n");
    write(&shards, "README.md", "ignored");
    write(&shards, ".hidden/z.jsonl", "{\"prompt\": \"hidden\"}\n");
    write_flat_parquet(
        &shards.join("c-00002.parquet"),
        &["prompt"],
        &[vec![Some("from c")]],
        1,
    );
    let records = Loader::new(&shards).open().unwrap();
    let stats = records.stats();
    let recs = all(records);
    assert_eq!(
        recs.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ["from a", "from b", "from c"]
    );
    assert!(recs.iter().all(|r| r.source == "shards"));
    assert_eq!(stats.get().read, 3);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = Loader::new(&empty).open().err().unwrap().to_string();
    assert!(
        err.contains("no .parquet/.jsonl/.ndjson/.csv shards"),
        "{err}"
    );
}
