//! Integration tests for `shaping::sources`: loaders, HF layouts and download, WildChat, mixing.
//!
//! Parquet fixtures are written at test time with the parquet crate's low-level column writer (no
//! arrow). `generate_wildchat_sample` (ignored) regenerates `training/inputs/wildchat-sample.parquet`:
//! `cargo test -p shaping --test sources -- --ignored generate_wildchat_sample`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::json;
use shaping::sources::*;
use tempfile::TempDir;

/// Loopback server routes: path (with query) -> (status, headers, body).
type Routes = HashMap<String, (u16, Vec<(String, String)>, Vec<u8>)>;
/// Requests seen by the loopback server: (path, Authorization header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
/// A sample row: language, prompt, toxic, redacted, follow-up prompts.
type SampleRow = (String, String, bool, bool, Vec<String>);

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

fn all(records: Records) -> Vec<Record> {
    records.collect::<Result<Vec<_>, _>>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Parquet fixture writers (low-level API).

/// A flat parquet file of optional string columns, `rows_per_group` rows per row group, snappy.
fn write_flat_parquet(
    path: &Path,
    columns: &[&str],
    rows: &[Vec<Option<&str>>],
    rows_per_group: usize,
) {
    write_flat_parquet_compressed(path, columns, rows, rows_per_group, Compression::SNAPPY);
}

/// [`write_flat_parquet`] with the given page compression.
fn write_flat_parquet_compressed(
    path: &Path,
    columns: &[&str],
    rows: &[Vec<Option<&str>>],
    rows_per_group: usize,
    compression: Compression,
) {
    let fields: String = columns
        .iter()
        .map(|c| format!("optional binary {c} (STRING);\n"))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{\n{fields}}}")).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in rows.chunks(rows_per_group) {
        let mut rg = writer.next_row_group().unwrap();
        let mut i = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            let mut values = Vec::new();
            let mut defs = Vec::new();
            for row in chunk {
                match row[i] {
                    Some(s) => {
                        values.push(ByteArray::from(s));
                        defs.push(1);
                    }
                    None => defs.push(0),
                }
            }
            col.typed::<ByteArrayType>()
                .write_batch(&values, Some(&defs), None)
                .unwrap();
            col.close().unwrap();
            i += 1;
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

#[derive(Clone, Debug)]
struct Turn {
    role: &'static str,
    content: String,
    language: String,
    toxic: bool,
    redacted: bool,
    turn_identifier: i64,
}

#[derive(Clone, Debug)]
struct Conv {
    hash: String,
    model: String,
    timestamp_us: i64,
    turns: Vec<Turn>,
    language: String,
    toxic: bool,
    redacted: bool,
    country: String,
}

const WILDCHAT_SCHEMA: &str = "
message schema {
  optional binary conversation_hash (STRING);
  optional binary model (STRING);
  optional int64 timestamp (TIMESTAMP(MICROS,true));
  optional group conversation (LIST) {
    repeated group list {
      optional group element {
        optional binary content (STRING);
        optional binary language (STRING);
        optional boolean redacted;
        optional binary role (STRING);
        optional int64 timestamp (TIMESTAMP(MICROS,true));
        optional boolean toxic;
        optional int64 turn_identifier;
      }
    }
  }
  optional int64 turn;
  optional binary language (STRING);
  optional boolean toxic;
  optional boolean redacted;
  optional binary state (STRING);
  optional binary country (STRING);
}";

/// Writes conversations in the WildChat-1M schema (the columns the loader uses plus a few more).
fn write_wildchat(path: &Path, convs: &[Conv], rows_per_group: usize) {
    let schema = Arc::new(parse_message_type(WILDCHAT_SCHEMA).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in convs.chunks(rows_per_group) {
        let mut rg = writer.next_row_group().unwrap();
        let mut col_index = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            // Top-level: def 1 = present. Nested leaves: max def 4 (conversation, list, element,
            // leaf), rep 1 for every turn after the first of a row; an empty list has def 1.
            let flat_str = |f: &dyn Fn(&Conv) -> &str| -> (Vec<ByteArray>, Vec<i16>) {
                (
                    chunk.iter().map(|c| ByteArray::from(f(c))).collect(),
                    vec![1; chunk.len()],
                )
            };
            let nested_levels = || {
                let mut defs = Vec::new();
                let mut reps = Vec::new();
                for c in chunk {
                    if c.turns.is_empty() {
                        defs.push(1);
                        reps.push(0);
                    }
                    for (i, _) in c.turns.iter().enumerate() {
                        defs.push(4);
                        reps.push(if i == 0 { 0 } else { 1 });
                    }
                }
                (defs, reps)
            };
            let turns = || chunk.iter().flat_map(|c| c.turns.iter());
            match col_index {
                0 | 1 | 14 | 15 => {
                    let (v, d) = match col_index {
                        0 => flat_str(&|c| &c.hash),
                        1 => flat_str(&|c| &c.model),
                        14 => flat_str(&|_| "Illinois"),
                        _ => flat_str(&|c| &c.country),
                    };
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), None)
                        .unwrap();
                }
                2 => {
                    let v: Vec<i64> = chunk.iter().map(|c| c.timestamp_us).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                3 | 4 | 6 => {
                    let (d, r) = nested_levels();
                    let v: Vec<ByteArray> = turns()
                        .map(|t| match col_index {
                            3 => ByteArray::from(t.content.as_str()),
                            4 => ByteArray::from(t.language.as_str()),
                            _ => ByteArray::from(t.role),
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                5 | 8 => {
                    let (d, r) = nested_levels();
                    let v: Vec<bool> = turns()
                        .map(|t| if col_index == 5 { t.redacted } else { t.toxic })
                        .collect();
                    col.typed::<BoolType>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                7 | 9 => {
                    let (d, r) = nested_levels();
                    let mut v = Vec::new();
                    for c in chunk {
                        for t in &c.turns {
                            v.push(if col_index == 7 {
                                c.timestamp_us + t.turn_identifier % 1000
                            } else {
                                t.turn_identifier
                            });
                        }
                    }
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&d), Some(&r))
                        .unwrap();
                }
                10 => {
                    let v: Vec<i64> = chunk
                        .iter()
                        .map(|c| c.turns.iter().filter(|t| t.role == "user").count() as i64)
                        .collect();
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                11 => {
                    let (v, d) = flat_str(&|c| &c.language);
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&d), None)
                        .unwrap();
                }
                12 | 13 => {
                    let v: Vec<bool> = chunk
                        .iter()
                        .map(|c| if col_index == 12 { c.toxic } else { c.redacted })
                        .collect();
                    col.typed::<BoolType>()
                        .write_batch(&v, Some(&vec![1; v.len()]), None)
                        .unwrap();
                }
                other => panic!("unexpected column {other}"),
            }
            col.close().unwrap();
            col_index += 1;
        }
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Column order check: the match above relies on the leaf order of WILDCHAT_SCHEMA.
#[test]
fn wildchat_schema_leaf_order() {
    let schema = parquet::schema::types::SchemaDescriptor::new(Arc::new(
        parse_message_type(WILDCHAT_SCHEMA).unwrap(),
    ));
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    assert_eq!(
        names,
        [
            "conversation_hash",
            "model",
            "timestamp",
            "conversation.list.element.content",
            "conversation.list.element.language",
            "conversation.list.element.redacted",
            "conversation.list.element.role",
            "conversation.list.element.timestamp",
            "conversation.list.element.toxic",
            "conversation.list.element.turn_identifier",
            "turn",
            "language",
            "toxic",
            "redacted",
            "state",
            "country",
        ]
    );
}

fn turn(role: &'static str, content: &str, language: &str, id: i64) -> Turn {
    Turn {
        role,
        content: content.into(),
        language: language.into(),
        toxic: false,
        redacted: false,
        turn_identifier: id,
    }
}

fn conv(hash: &str, language: &str, user_prompts: &[&str]) -> Conv {
    let mut turns = Vec::new();
    for (i, p) in user_prompts.iter().enumerate() {
        turns.push(turn("user", p, language, i as i64 * 2));
        turns.push(turn(
            "assistant",
            "Sure — here is an answer.",
            language,
            i as i64 * 2 + 1,
        ));
    }
    Conv {
        hash: hash.into(),
        model: "gpt-4-0314".into(),
        timestamp_us: 1_680_998_400_000_000,
        turns,
        language: language.into(),
        toxic: false,
        redacted: false,
        country: "United States".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Records and loaders.

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
fn parquet_row_groups_projection_and_missing_column() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("flat.parquet");
    let rows: Vec<Vec<Option<&str>>> = (0..10)
        .map(|i| {
            let prompt: &'static str = Box::leak(format!("prompt number {i}").into_boxed_str());
            vec![
                Some(prompt),
                if i % 2 == 0 { Some("even") } else { None },
                Some("big unused blob"),
            ]
        })
        .collect();
    write_flat_parquet(&p, &["text", "kind", "blob"], &rows, 3);
    let recs = all(Loader::new(&p)
        .fields(
            FieldMap::new()
                .prompt("text")
                .category("kind")
                .extra_only(Vec::<String>::new()),
        )
        .open()
        .unwrap());
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[9].prompt, "prompt number 9");
    assert_eq!(recs[4].category.as_deref(), Some("even"));
    assert_eq!(recs[5].category, None);
    assert!(recs[0].extra.is_empty());
    let with_extra = all(Loader::new(&p)
        .fields(FieldMap::new().prompt("text"))
        .open()
        .unwrap());
    assert_eq!(with_extra[0].extra["blob"], "big unused blob");

    let err = Loader::new(&p).open().err().unwrap().to_string();
    assert!(
        err.contains(
            "flat.parquet: column `prompt` not found; available columns: text, kind, blob"
        ),
        "{err}"
    );
}

/// The compressions datasets on the Hugging Face Hub use (zstd is the `datasets` default for
/// many uploads, gzip for older ones, lz4 now and then) all read.
#[test]
fn parquet_in_every_common_compression_reads() {
    use parquet::basic::{GzipLevel, ZstdLevel};
    let dir = TempDir::new().unwrap();
    let rows: Vec<Vec<Option<&str>>> = vec![
        vec![Some("How do you take your coffee?")],
        vec![Some("Who won the 2016 World Series?")],
        vec![Some("Pierogi on Fridays?")],
    ];
    for (name, compression) in [
        ("snappy", Compression::SNAPPY),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4_raw", Compression::LZ4_RAW),
        ("lz4", Compression::LZ4),
        ("none", Compression::UNCOMPRESSED),
    ] {
        let p = dir.path().join(format!("{name}.parquet"));
        write_flat_parquet_compressed(&p, &["prompt"], &rows, 2, compression);
        let recs = Loader::new(&p)
            .open()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let prompts: Vec<&str> = recs.iter().map(|r| r.prompt.as_str()).collect();
        assert_eq!(
            prompts,
            [
                "How do you take your coffee?",
                "Who won the 2016 World Series?",
                "Pierogi on Fridays?"
            ],
            "{name}"
        );
    }
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

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
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

// ---------------------------------------------------------------------------------------------
// Hugging Face.

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[test]
fn hf_cache_layout_with_revision_pin() {
    let dir = TempDir::new().unwrap();
    let cache = HfCache::new(dir.path());
    let repo = dir.path().join("datasets--org--prompts");
    write(&repo, "refs/main", format!("{COMMIT_B}\n"));
    write(
        &repo,
        &format!("snapshots/{COMMIT_A}/data/train-00000-of-00001.jsonl"),
        "{\"prompt\": \"old\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/train-00000-of-00002.jsonl"),
        "{\"prompt\": \"new 1\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/train-00001-of-00002.jsonl"),
        "{\"prompt\": \"new 2\"}\n",
    );
    write(
        &repo,
        &format!("snapshots/{COMMIT_B}/data/test-00000-of-00001.jsonl"),
        "{\"prompt\": \"test\"}\n",
    );
    write(&repo, &format!("snapshots/{COMMIT_B}/README.md"), "# card");

    let ds = HfDataset::new("org/prompts");
    let files = ds.cached(&cache).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("data/train-00000-of-00002.jsonl"));
    let recs = all(ds.loader(files).open().unwrap());
    assert_eq!(
        recs.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ["new 1", "new 2"]
    );
    assert_eq!(recs[0].source, "prompts");

    let pinned = ds.clone().revision(COMMIT_A).cached(&cache).unwrap();
    assert_eq!(
        all(Loader::from_files(pinned).open().unwrap())[0].prompt,
        "old"
    );
    let test = ds.clone().split("test").cached(&cache).unwrap();
    assert_eq!(test.len(), 1);

    let err = ds
        .clone()
        .revision("v2")
        .cached(&cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("revision `v2` is not in the cache")
            && err.contains(&format!("cached snapshots: {COMMIT_A}, {COMMIT_B}")),
        "{err}"
    );
    let err = ds
        .clone()
        .split("validation")
        .cached(&cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no .parquet/.jsonl/.csv shards for split `validation`")
            && err.contains("README.md"),
        "{err}"
    );
}

#[test]
fn hf_local_dir_with_config_layout() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "default/train/0000.parquet", "x");
    write(dir.path(), "default/train/0001.parquet", "x");
    write(dir.path(), "default/test/0000.parquet", "x");
    write(dir.path(), "other/train/0000.parquet", "x");
    let files = HfDataset::new("org/ds")
        .config("default")
        .shards_in(dir.path())
        .unwrap();
    let rels: Vec<_> = files
        .iter()
        .map(|f| {
            f.strip_prefix(dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        rels,
        ["default/train/0000.parquet", "default/train/0001.parquet"]
    );
    let err = HfDataset::new("org/ds")
        .config("nope")
        .shards_in(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no directory for config `nope`"), "{err}");
}

/// A tiny HTTP/1.1 server on 127.0.0.1: fixed routes, records every request's path and
/// Authorization header, answers `Connection: close`. `{base}` in header values becomes the
/// server's own `http://addr`.
async fn serve(routes: Routes) -> (String, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                let auth = lines
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    })
                    .map(|(_, v)| v.trim().to_owned());
                log.lock().unwrap().push((path.clone(), auth));
                let (status, headers, body) = routes.get(&path).cloned().unwrap_or((
                    404,
                    vec![],
                    b"{\"error\":\"not found\"}".to_vec(),
                ));
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    let v = v.replace("{base}", &format!("http://{addr}"));
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn hf_download_via_loopback_server() {
    let dir = TempDir::new().unwrap();
    let shard_src = dir.path().join("src.parquet");
    write_flat_parquet(
        &shard_src,
        &["prompt"],
        &[vec![Some("downloaded prompt")], vec![Some("another one")]],
        1,
    );
    let shard = std::fs::read(&shard_src).unwrap();
    let ok = |body: Vec<u8>| {
        (
            200u16,
            vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body,
        )
    };
    let mut routes = HashMap::new();
    routes.insert(
        "/api/datasets/org/wild/revision/main".to_owned(),
        ok(format!("{{\"sha\": \"{COMMIT_A}\", \"siblings\": []}}").into_bytes()),
    );
    let tree = format!("/api/datasets/org/wild/tree/{COMMIT_A}?recursive=true");
    let (status, mut headers, body) = ok(json!([
        {"type": "directory", "path": "data", "oid": "x", "size": 0},
        {"type": "file", "path": "README.md", "oid": "x", "size": 10},
        {"type": "file", "path": "data/train-00000-of-00002.parquet", "oid": "x", "size": shard.len()}
    ])
    .to_string()
    .into_bytes());
    headers.push((
        "Link".into(),
        format!("<{{base}}{tree}&cursor=2>; rel=\"next\""),
    ));
    routes.insert(tree.clone(), (status, headers, body));
    routes.insert(
        format!("{tree}&cursor=2"),
        ok(json!([{"type": "file", "path": "data/train-00001-of-00002.parquet", "size": shard.len()},
                  {"type": "file", "path": "data/test-00000-of-00001.parquet", "size": 1}])
        .to_string()
        .into_bytes()),
    );
    for i in 0..2 {
        routes.insert(
            format!("/datasets/org/wild/resolve/{COMMIT_A}/data/train-0000{i}-of-00002.parquet"),
            (200, vec![], shard.clone()),
        );
    }
    let (endpoint, seen) = serve(routes).await;

    let cache = HfCache::new(dir.path().join("hub"));
    let token = "hf_secretTOKEN123";
    let hub = HfHub::new(&endpoint).with_token(Some(token.into()));
    assert!(!format!("{hub:?}").contains(token));
    let ds = HfDataset::new("org/wild");
    assert!(ds.cached(&cache).is_err());
    let files = ds.fetch(&cache, Some(&hub)).await.unwrap();
    assert_eq!(files.len(), 2);
    let snap = dir
        .path()
        .join(format!("hub/datasets--org--wild/snapshots/{COMMIT_A}"));
    assert_eq!(files[0], snap.join("data/train-00000-of-00002.parquet"));
    assert_eq!(std::fs::read(&files[1]).unwrap(), shard);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hub/datasets--org--wild/refs/main")).unwrap(),
        COMMIT_A
    );
    let leftovers: Vec<_> = std::fs::read_dir(snap.join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(
            seen.iter()
                .all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {token}") as &str)),
            "{seen:?}"
        );
    }
    // Now cached: works offline, and loads.
    let cached = ds.cached(&cache).unwrap();
    assert_eq!(cached, files);
    let recs = all(ds.loader(cached).open().unwrap());
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].prompt, "downloaded prompt");
    // A second download fetches nothing again.
    ds.download(&hub, &cache).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        5 + 3,
        "only revision + 2 tree pages"
    );

    // Errors name the URL and status, never the token.
    let err = HfDataset::new("org/missing")
        .download(&hub, &cache)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/api/datasets/org/missing/revision/main") && err.contains("404"),
        "{err}"
    );
    assert!(!err.contains(token), "{err}");
    let no_token = HfHub::new(&endpoint);
    HfDataset::new("org/wild")
        .download(&no_token, &HfCache::new(dir.path().join("hub2")))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().last().unwrap().1,
        None,
        "no Authorization without a token"
    );
    let err = HfDataset::new("org/wild")
        .download(
            &HfHub::new("http://127.0.0.1:1").with_token(Some(token.into())),
            &cache,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains(token), "{err}");
}

// ---------------------------------------------------------------------------------------------
// WildChat.

fn wildchat_fixture(path: &Path) {
    let mut convs = vec![
        conv(
            "h1",
            "English",
            &["Plan a picnic for six people", "Add a vegetarian option"],
        ),
        conv("h2", "English", &["  plan a PICNIC   for six people "]),
        conv("h3", "Spanish", &["¿Cómo hago tortillas de maíz?"]),
        conv(
            "h4",
            "English",
            &["Write a limerick about my noisy neighbour"],
        ),
        conv(
            "h5",
            "English",
            &["Draft an email to my landlord about the heating"],
        ),
        conv("h6", "English", &["hi"]),
        conv(
            "h7",
            "English",
            &[
                "Explain photosynthesis simply",
                "Why are leaves green?",
                "And in autumn?",
            ],
        ),
        conv("h9", "English", &[]),
    ];
    convs[3].toxic = true;
    convs[4].redacted = true;
    convs[6].turns[2].toxic = true; // the second user turn
    write_wildchat(path, &convs, 3);
}

#[test]
fn wildchat_first_turn_defaults_and_dedupe() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("wc.parquet");
    wildchat_fixture(&p);
    let records = WildChat::new().open(&p).unwrap();
    let stats = records.stats();
    let recs = all(records);
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.prompt.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("h1", "Plan a picnic for six people"),
            ("h3", "¿Cómo hago tortillas de maíz?"),
            ("h6", "hi"),
            ("h7", "Explain photosynthesis simply"),
        ]
    );
    assert_eq!(
        stats.get(),
        SourceStats {
            read: 8,
            kept: 4,
            skipped_bad: 0,
            skipped_filtered: 2,
            duplicates: 1
        }
    );
    let r = &recs[3];
    assert_eq!(r.source, "wildchat");
    assert_eq!(r.category, None);
    assert_eq!(
        serde_json::Value::Object(r.extra.clone()),
        json!({"model": "gpt-4-0314", "language": "English", "turn": 3, "conversation_hash": "h7"})
    );
}

#[test]
fn wildchat_filters() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("wc.parquet");
    wildchat_fixture(&p);
    let records = WildChat::new()
        .languages(["english"])
        .min_chars(5)
        .max_turns(2)
        .open(&p)
        .unwrap();
    let stats = records.stats();
    let recs = all(records);
    assert_eq!(
        recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(stats.get().skipped_filtered, 5);
    assert_eq!(stats.get().duplicates, 1);

    let ids = |w: WildChat| {
        all(w.open(&p).unwrap())
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(WildChat::new().include_toxic(true).include_redacted(true)),
        ["h1", "h3", "h4", "h5", "h6", "h7"]
    );
    assert_eq!(ids(WildChat::new().min_turns(2)), ["h1", "h7"]);
    assert_eq!(ids(WildChat::new().max_chars(10)), ["h6"]);
    assert_eq!(
        ids(WildChat::new()
            .dedupe(false)
            .languages(["English"])
            .max_turns(1)),
        ["h2", "h6"]
    );

    let recs = all(WildChat::new().turns(Turns::All).open(&p).unwrap());
    let got: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.prompt.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("h1-0", "Plan a picnic for six people"),
            ("h1-1", "Add a vegetarian option"),
            ("h3-0", "¿Cómo hago tortillas de maíz?"),
            ("h6-0", "hi"),
            ("h7-0", "Explain photosynthesis simply"),
            ("h7-2", "And in autumn?"),
        ]
    );
    assert_eq!(recs[5].extra["turn_index"], 2);
}

#[test]
fn wildchat_jsonl_and_bad_rows() {
    let dir = TempDir::new().unwrap();
    let p = write(
        dir.path(),
        "wc.jsonl",
        "{\"conversation_hash\": \"j1\", \"conversation\": [{\"role\": \"user\", \"content\": \"Hello there\"}], \"language\": \"English\"}\n\
         {\"conversation\": []}\n\
         {\"conversation_hash\": \"j3\", \"conversation\": \"oops\"}\n",
    );
    let results: Vec<_> = WildChat::new().open(&p).unwrap().collect();
    assert_eq!(results[0].as_ref().unwrap().extra["turn"], 1);
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(
        e.contains(
            "wc.jsonl:line 2: field `conversation_hash` is missing; available fields: conversation"
        ),
        "{e}"
    );
    let e = results[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("line 3: field `conversation`: expected a list of turns"),
        "{e}"
    );
    let records = WildChat::new().skip_bad_rows(true).open(&p).unwrap();
    let stats = records.stats();
    assert_eq!(all(records).len(), 1);
    assert_eq!(stats.get().skipped_bad, 2);

    let flat = dir.path().join("flat.parquet");
    write_flat_parquet(&flat, &["prompt"], &[vec![Some("x")]], 1);
    let err = WildChat::new().open(&flat).err().unwrap().to_string();
    assert!(
        err.contains("column `conversation_hash` not found; available columns: prompt"),
        "{err}"
    );
}

#[test]
fn committed_wildchat_sample_loads() {
    let path = repo_file("training/inputs/wildchat-sample.parquet");
    let records = WildChat::new().languages(["English"]).open(&path).unwrap();
    let stats = records.stats();
    let recs = all(records);
    let s = stats.get();
    assert!(s.read >= 180, "{s:?}");
    assert!(recs.len() >= 100, "{s:?}");
    assert!(s.skipped_filtered >= 20 && s.duplicates >= 5, "{s:?}");
    let everything = all(WildChat::new()
        .include_toxic(true)
        .include_redacted(true)
        .dedupe(false)
        .turns(Turns::All)
        .open(&path)
        .unwrap());
    assert!(everything.len() as u64 > s.read);
}

/// Regenerates `training/inputs/wildchat-sample.parquet` (WildChat-1M schema, original prompts):
/// `cargo test -p shaping --test sources -- --ignored generate_wildchat_sample`.
#[test]
#[ignore]
fn generate_wildchat_sample() {
    use sha2::{Digest, Sha256};
    let templates = [
        "Can you explain {} like I'm twelve?",
        "Give me three practical tips about {}.",
        "Write a short, upbeat paragraph about {}.",
        "What are common mistakes people make with {}?",
        "I have ten minutes. What's the quickest way to get started with {}?",
        "Summarize the history of {} in five sentences.",
        "Make a checklist for {}.",
        "Compare two popular approaches to {} and say when each one fits.",
        "What questions should I ask before spending money on {}?",
        "Write a haiku about {}.",
        "My friend says {} is overrated. Give me a fair counterpoint.",
        "Plan a one-week schedule for learning about {}.",
    ];
    let topics = [
        "baking sourdough bread",
        "composting in a small apartment",
        "budgeting for a first car",
        "training a stubborn puppy",
        "keeping houseplants alive",
        "learning to juggle",
        "writing a cover letter",
        "fixing a leaky faucet",
        "planning a road trip along the coast",
        "brewing good coffee at home",
        "starting a vegetable garden",
        "running a neighborhood book club",
        "photographing the night sky",
        "organizing a cluttered garage",
        "teaching kids to ride a bike",
        "choosing running shoes",
    ];
    let follow_ups = [
        "Can you make it shorter?",
        "Now add an example.",
        "What would you do differently in winter?",
    ];
    let foreign = [
        (
            "Spanish",
            "¿Cuál es la mejor manera de aprender a tocar la guitarra?",
        ),
        ("Spanish", "Dame una receta sencilla de gazpacho."),
        ("Spanish", "¿Qué puedo hacer un domingo lluvioso en casa?"),
        (
            "French",
            "Peux-tu m'expliquer comment fonctionne un arc-en-ciel ?",
        ),
        (
            "French",
            "Donne-moi trois idées de pique-nique pour dimanche.",
        ),
        ("French", "Comment planter des tulipes sur un balcon ?"),
        ("German", "Wie backe ich einen einfachen Apfelkuchen?"),
        ("German", "Erkläre mir bitte kurz, wie Gezeiten entstehen."),
        ("German", "Welche Zimmerpflanzen brauchen wenig Licht?"),
        ("Portuguese", "Como posso organizar melhor a minha semana?"),
        (
            "Portuguese",
            "Quais são boas brincadeiras para crianças num dia de chuva?",
        ),
        ("Chinese", "请帮我写一首关于春天的短诗。"),
        ("Chinese", "怎样才能在家里种好番茄？"),
        ("Chinese", "给我推荐三本适合初学者的科普书。"),
        ("Italian", "Come si prepara un buon risotto ai funghi?"),
        (
            "Italian",
            "Suggeriscimi un itinerario di tre giorni a Torino.",
        ),
        ("Russian", "Как быстро выучить таблицу умножения?"),
        ("Japanese", "簡単なお弁当のアイデアを教えてください。"),
    ];
    let grumpy = [
        "My roommate keeps eating my leftovers and I'm furious. Write a stern but silly note.",
        "Roast my terrible cooking in a playful way.",
        "Write an angry rant about slow elevators (keep it clean).",
        "This printer is the dumbest machine ever made. Help me vent about it.",
        "Insult my fantasy football team in pirate speak.",
        "Tell my brother his jokes are awful, but make it rhyme.",
        "Write a grumpy review of a parking lot that ate my afternoon.",
        "Give me a comeback for someone who says pineapple on pizza is a crime.",
        "Write a furious letter to the pigeons on my balcony.",
        "Complain dramatically about Monday mornings.",
    ];
    let redacted_prompts = [
        "Write a birthday message for my coworker [NAME] who loves hiking.",
        "Help me reply to [NAME] at [EMAIL] about rescheduling our meeting.",
        "My address is [ADDRESS]; how long would it take to walk to the library?",
        "Draft a thank-you note to Dr. [NAME] for the excellent care.",
        "Remind me what to pack for the trip to [LOCATION] next week.",
        "Text for my neighbour [NAME] asking to borrow a ladder.",
        "Write a reference letter for [NAME], who worked at [ORGANIZATION] for three years.",
        "Call [PHONE] and ... actually, just write me a script for ordering a pizza.",
    ];
    let models = [
        "gpt-3.5-turbo-0613",
        "gpt-4-0314",
        "gpt-3.5-turbo-0301",
        "gpt-4-1106-preview",
    ];
    let countries = [
        "United States",
        "United Kingdom",
        "Canada",
        "Australia",
        "Germany",
        "India",
    ];
    let mut rows: Vec<SampleRow> = Vec::new();
    let mut n = 0usize;
    for (ti, topic) in topics.iter().enumerate() {
        for k in 0..9 {
            let t = templates[(ti * 5 + k * 7) % templates.len()];
            let prompt = t.replace("{}", topic);
            let follow: Vec<String> = if n.is_multiple_of(5) {
                vec![follow_ups[n % 3].to_owned()]
            } else if n.is_multiple_of(13) {
                follow_ups.iter().map(|s| s.to_string()).collect()
            } else {
                vec![]
            };
            rows.push(("English".into(), prompt, false, false, follow));
            n += 1;
        }
    }
    rows.truncate(150);
    // Duplicates: same prompt with different case/whitespace.
    for i in (0..150).step_by(12) {
        let p = rows[i].1.clone();
        let variant = if i % 24 == 0 {
            p.to_uppercase()
        } else {
            format!("  {}  ", p.replace(' ', "   "))
        };
        rows.push(("English".into(), variant, false, false, vec![]));
    }
    for (lang, p) in foreign {
        rows.push((lang.into(), p.into(), false, false, vec![]));
    }
    for p in grumpy {
        rows.push(("English".into(), p.into(), true, false, vec![]));
    }
    for p in redacted_prompts {
        rows.push(("English".into(), p.into(), false, true, vec![]));
    }
    // Deterministic interleaving.
    let mut keyed: Vec<(String, SampleRow)> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            (
                hex::encode(Sha256::digest(format!("wildchat-sample-{i}").as_bytes())),
                r,
            )
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let convs: Vec<Conv> = keyed
        .into_iter()
        .enumerate()
        .map(|(i, (hash, (lang, prompt, toxic, redacted, follow)))| {
            let mut turns = Vec::new();
            let assistant = "Here's a friendly answer to that.";
            for (j, p) in std::iter::once(&prompt).chain(follow.iter()).enumerate() {
                let mut u = turn("user", p, &lang, 4_000_000 + (i * 10 + j * 2) as i64);
                u.toxic = toxic && j == 0;
                u.redacted = redacted && j == 0;
                turns.push(u);
                turns.push(turn(
                    "assistant",
                    assistant,
                    &lang,
                    4_000_001 + (i * 10 + j * 2) as i64,
                ));
            }
            Conv {
                hash: hash[..32].to_owned(),
                model: models[i % models.len()].into(),
                timestamp_us: 1_680_307_200_000_000 + i as i64 * 157_680_000_000,
                turns,
                language: lang,
                toxic,
                redacted,
                country: countries[i % countries.len()].into(),
            }
        })
        .collect();
    let out = repo_file("training/inputs/wildchat-sample.parquet");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    write_wildchat(&out, &convs, 64);
    eprintln!("wrote {} conversations to {}", convs.len(), out.display());
}

// ---------------------------------------------------------------------------------------------
// Mixing.

fn numbered(prefix: &str, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record::new(prefix, format!("{prefix} prompt {i}")))
        .collect()
}

#[test]
fn mix_is_deterministic_and_reports() {
    let a = numbered("a", 100);
    let mut b = numbered("b", 50);
    b.extend((0..10).map(|i| Record::new("b", format!("A   PROMPT {i}"))));
    let run = |seed: u64, a: Vec<Record>, b: Vec<Record>| {
        Mix::new(seed)
            .add_records("alpha", a, Weight::Count(30))
            .add_records("beta", b, Weight::All)
            .run()
            .unwrap()
    };
    let (r1, rep1) = run(7, a.clone(), b.clone());
    let (r2, rep2) = run(7, a.clone(), b.clone());
    assert_eq!(r1, r2);
    assert_eq!(rep1, rep2);
    let mut reversed = a.clone();
    reversed.reverse();
    let (r3, _) = run(7, reversed, b.clone());
    assert_eq!(r1, r3, "selection and order do not depend on input order");
    let (r4, _) = run(8, a.clone(), b.clone());
    let alpha = |rs: &[Record]| {
        rs.iter()
            .filter(|r| r.source == "alpha")
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_ne!(alpha(&r1), alpha(&r4), "another seed picks differently");

    assert_eq!(rep1.seed, 7);
    let (ra, rb) = (&rep1.sources[0], &rep1.sources[1]);
    assert_eq!(
        (
            ra.name.as_str(),
            ra.available,
            ra.taken,
            ra.requested,
            ra.shortfall
        ),
        ("alpha", 100, 30, Some(30), 0)
    );
    assert_eq!(rb.available, 60);
    assert_eq!(rb.taken as u64 + rb.duplicates_dropped, 60);
    let picked_dupes = alpha(&r1)
        .iter()
        .filter(|id| a[..10].iter().any(|r| &r.id == *id))
        .count() as u64;
    assert_eq!(
        rb.duplicates_dropped, picked_dupes,
        "beta loses exactly the prompts alpha already took"
    );
    assert_eq!(rep1.taken, r1.len());
    assert_eq!(r1.len(), 30 + rb.taken);
    let keys: BTreeSet<String> = r1.iter().map(Record::key).collect();
    assert_eq!(keys.len(), r1.len(), "no duplicates across sources");
    assert!(r1.iter().all(|r| r.source == "alpha" || r.source == "beta"));
    // Output is shuffled, not grouped.
    assert!(
        r1.iter().take(20).any(|r| r.source == "beta")
            && r1.iter().take(20).any(|r| r.source == "alpha")
    );

    let v = serde_json::to_value(&rep1).unwrap();
    assert_eq!(v["sources"][0]["weight"], json!({"count": 30}));
    assert_eq!(v["sources"][1]["weight"], json!("all"));
}

#[test]
fn mix_shares_shortfall_dupes_and_errors() {
    let (recs, rep) = Mix::new(1)
        .total(50)
        .add_records("x", numbered("x", 100), Weight::Share(0.5))
        .add_records("y", numbered("y", 100), Weight::Share(0.3))
        .add_records("z", numbered("z", 100), Weight::Share(0.2))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 50);
    assert_eq!(
        rep.sources.iter().map(|s| s.taken).collect::<Vec<_>>(),
        [25, 15, 10]
    );

    let (_, rep) = Mix::new(1)
        .total(10)
        .add_records("x", numbered("x", 3), Weight::Share(1.0 / 3.0))
        .add_records("y", numbered("y", 100), Weight::Share(2.0 / 3.0))
        .run()
        .unwrap();
    assert_eq!(rep.sources[0].requested, Some(3));
    assert_eq!(rep.sources[1].requested, Some(7));

    let mut dup = numbered("d", 5);
    dup.push(Record::new("d", "D prompt 0"));
    let (recs, rep) = Mix::new(3)
        .add_records("d", dup.clone(), Weight::Count(100))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(
        (rep.sources[0].duplicates_dropped, rep.sources[0].shortfall),
        (1, 95)
    );
    let (recs, _) = Mix::new(3)
        .add_records("d", dup, Weight::Count(0))
        .run()
        .unwrap();
    assert!(recs.is_empty());

    let err = Mix::new(1)
        .add_records("x", numbered("x", 3), Weight::Share(0.5))
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("Weight::Share needs Mix::total"));
    let err = Mix::new(1)
        .total(5)
        .add_records("x", vec![], Weight::Share(0.7))
        .add_records("y", vec![], Weight::Share(0.7))
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("more than 1"), "{err}");

    // Errors from a component propagate.
    let dir = TempDir::new().unwrap();
    let p = write(dir.path(), "bad.jsonl", "{\"prompt\": \"ok\"}\nnot json\n");
    let err = Mix::new(1)
        .add("bad", Loader::new(&p).open().unwrap(), Weight::All)
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("bad.jsonl:line 2"), "{err}");
}

#[test]
fn mix_memory_is_bounded_by_taken() {
    // A long stream: only the bottom-k heap is kept.
    let stream = (0..50_000u32).map(|i| Ok(Record::new("s", format!("streamed prompt {i}"))));
    let (recs, rep) = Mix::new(9)
        .add("s", stream, Weight::Count(5))
        .run()
        .unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(rep.sources[0].available, 50_000);
}

/// The Hugging Face token: `HF_TOKEN`, else the `HF_TOKEN_PATH` file, else `huggingface-cli
/// login`'s file `$HF_HOME/token` (default `~/.cache/huggingface/token`), trimmed.
#[test]
fn hf_token_is_found_where_the_hugging_face_tools_put_it() {
    use shaping::sources::hf_token;
    use std::collections::HashMap;
    use std::ffi::OsString;
    let dir = TempDir::new().unwrap();
    let home = dir.path().join("home");
    let login_file = home.join(".cache/huggingface/token");
    std::fs::create_dir_all(login_file.parent().unwrap()).unwrap();
    std::fs::write(&login_file, "hf_from_login\n").unwrap();
    let hf_home = dir.path().join("hf-home");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "  hf_from_hf_home \n").unwrap();
    let token_path = dir.path().join("token-file");
    std::fs::write(&token_path, "hf_from_token_path\n").unwrap();

    let lookup = |vars: &[(&str, &Path)]| {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_os_str().to_owned()))
            .collect();
        hf_token(move |name| vars.get(name).cloned())
    };
    let home_only = [("HOME", home.as_path())];
    assert_eq!(lookup(&home_only).as_deref(), Some("hf_from_login"));
    let with_hf_home = [("HOME", home.as_path()), ("HF_HOME", hf_home.as_path())];
    assert_eq!(lookup(&with_hf_home).as_deref(), Some("hf_from_hf_home"));
    let with_path = [
        ("HOME", home.as_path()),
        ("HF_HOME", hf_home.as_path()),
        ("HF_TOKEN_PATH", token_path.as_path()),
    ];
    assert_eq!(lookup(&with_path).as_deref(), Some("hf_from_token_path"));
    let with_env = [
        ("HOME", home.as_path()),
        ("HF_TOKEN_PATH", token_path.as_path()),
        ("HF_TOKEN", Path::new("hf_from_env")),
    ];
    assert_eq!(lookup(&with_env).as_deref(), Some("hf_from_env"));
    let empty_env = [("HOME", home.as_path()), ("HF_TOKEN", Path::new(""))];
    assert_eq!(lookup(&empty_env).as_deref(), Some("hf_from_login"));
    let nowhere = [("HOME", dir.path())];
    assert_eq!(lookup(&nowhere), None);
}
