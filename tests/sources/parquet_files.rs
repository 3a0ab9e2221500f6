//! Parquet: the fixture writer the other areas use (the parquet crate's low-level column writer,
//! no arrow), row groups, projection, a missing column, and every common page compression.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use shaping::sources::*;
use tempfile::TempDir;

use super::all;

/// A flat parquet file of optional string columns, `rows_per_group` rows per row group, snappy.
pub(crate) fn write_flat_parquet(
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
