//! The Parquet shard of an export, written with parquet's column writers (no Arrow): TRL's
//! columns with the types Hugging Face `datasets` gives them.
//!
//! Schema (as pyarrow writes `datasets` tables: every field nullable, lists in the standard
//! three-level `LIST` layout):
//!
//! ```text
//! chat:        id: string, messages: list<struct<role: string, content: string>>
//! preference:  id: string, prompt, chosen, rejected: list<struct<role: string, content: string>>
//! ```
//!
//! Rows are buffered a row group at a time ([`ROW_GROUP_ROWS`]), compressed with zstd.

use std::fs::File;
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::format::{Message, SampleKind, SampleLine};

/// Rows per row group: small enough for the dataset viewer and streaming readers, large enough
/// for good compression.
pub(crate) const ROW_GROUP_ROWS: usize = 10_000;

/// The message-list columns of a kind, in schema order.
pub(crate) fn list_columns(kind: SampleKind) -> &'static [&'static str] {
    match kind {
        SampleKind::Chat => &["messages"],
        SampleKind::Preference => &["prompt", "chosen", "rejected"],
    }
}

fn schema(kind: SampleKind) -> String {
    let mut text = String::from("message schema {\n  optional binary id (STRING);\n");
    for column in list_columns(kind) {
        text.push_str(&format!(
            "  optional group {column} (LIST) {{\n    repeated group list {{\n      optional group element {{\n        optional binary role (STRING);\n        optional binary content (STRING);\n      }}\n    }}\n  }}\n"
        ));
    }
    text.push('}');
    text
}

/// One message-list column's leaves, buffered: role and content values with their levels
/// (both leaves share levels).
#[derive(Default)]
struct ListBuffer {
    roles: Vec<ByteArray>,
    contents: Vec<ByteArray>,
    definition: Vec<i16>,
    repetition: Vec<i16>,
}

/// Definition level of a present message (list, repeated `list`, `element`, the leaf).
const MESSAGE_PRESENT: i16 = 4;
/// Definition level of an empty list.
const LIST_EMPTY: i16 = 1;

impl ListBuffer {
    fn push(&mut self, messages: &[Message]) {
        if messages.is_empty() {
            self.definition.push(LIST_EMPTY);
            self.repetition.push(0);
            return;
        }
        for (i, message) in messages.iter().enumerate() {
            self.roles.push(ByteArray::from(message.role.as_str()));
            self.contents
                .push(ByteArray::from(message.content.as_str()));
            self.definition.push(MESSAGE_PRESENT);
            self.repetition.push(i16::from(i > 0));
        }
    }
}

/// A Parquet file being written, a row group at a time.
pub(crate) struct ParquetShard {
    kind: SampleKind,
    writer: SerializedFileWriter<File>,
    ids: Vec<ByteArray>,
    lists: Vec<ListBuffer>,
    rows: u64,
    rows_per_group: usize,
}

impl ParquetShard {
    /// Start writing `kind` rows to `file`, [`ROW_GROUP_ROWS`] rows per row group.
    pub(crate) fn create(
        file: File,
        kind: SampleKind,
    ) -> Result<Self, parquet::errors::ParquetError> {
        Self::with_row_groups(file, kind, ROW_GROUP_ROWS)
    }

    fn with_row_groups(
        file: File,
        kind: SampleKind,
        rows_per_group: usize,
    ) -> Result<Self, parquet::errors::ParquetError> {
        let schema = Arc::new(parse_message_type(&schema(kind))?);
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_created_by(format!("shaping {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(file, schema, Arc::new(properties))?;
        Ok(Self {
            kind,
            writer,
            ids: Vec::new(),
            lists: list_columns(kind)
                .iter()
                .map(|_| ListBuffer::default())
                .collect(),
            rows: 0,
            rows_per_group: rows_per_group.max(1),
        })
    }

    /// Add one sample (of the shard's kind; the caller checked).
    pub(crate) fn push(&mut self, line: &SampleLine) -> Result<(), parquet::errors::ParquetError> {
        self.ids.push(ByteArray::from(line.id()));
        match line {
            SampleLine::Chat(chat) => self.lists[0].push(&chat.messages),
            SampleLine::Preference(pair) => {
                self.lists[0].push(&pair.prompt);
                self.lists[1].push(&pair.chosen);
                self.lists[2].push(&pair.rejected);
            }
        }
        self.rows += 1;
        if self.ids.len() >= self.rows_per_group {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), parquet::errors::ParquetError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.ids);
        let lists: Vec<ListBuffer> = self.lists.iter_mut().map(std::mem::take).collect();
        let mut group = self.writer.next_row_group()?;
        let mut column = 0;
        while let Some(mut writer) = group.next_column()? {
            let typed = writer.typed::<ByteArrayType>();
            if column == 0 {
                let definition = vec![1; ids.len()];
                typed.write_batch(&ids, Some(&definition), None)?;
            } else {
                let list = &lists[(column - 1) / 2];
                let values = if (column - 1) % 2 == 0 {
                    &list.roles
                } else {
                    &list.contents
                };
                typed.write_batch(values, Some(&list.definition), Some(&list.repetition))?;
            }
            writer.close()?;
            column += 1;
        }
        debug_assert_eq!(column, 1 + 2 * list_columns(self.kind).len());
        group.close()?;
        Ok(())
    }

    /// Write the last row group and the footer; syncs the file. Returns the rows written.
    pub(crate) fn finish(mut self) -> Result<u64, parquet::errors::ParquetError> {
        self.flush()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(self.rows)
    }
}

/// The `list` feature of a message-list column in a dataset card's `dataset_info.features`.
pub(crate) fn card_features(kind: SampleKind) -> String {
    let mut text = String::from("  features:\n  - name: id\n    dtype: string\n");
    for column in list_columns(kind) {
        text.push_str(&format!(
            "  - name: {column}\n    list:\n    - name: role\n      dtype: string\n    - name: content\n      dtype: string\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PreferenceLine;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn rows_read_back_through_the_row_api_with_nested_lists() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.parquet");
        let mut shard =
            ParquetShard::create(File::create(&path).expect("create"), SampleKind::Preference)
                .expect("shard");
        let pair = PreferenceLine::minimal(
            "p-1",
            vec![Message::system("s"), Message::user("q")],
            Message::assistant("yes, hon"),
            Message::assistant("yes"),
        );
        shard.push(&SampleLine::Preference(pair)).expect("push");
        assert_eq!(shard.finish().expect("finish"), 1);
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
        let reader = SerializedFileReader::new(File::open(&path).expect("open")).expect("reader");
        let row = reader
            .get_row_iter(None)
            .expect("rows")
            .next()
            .expect("a row")
            .expect("row");
        assert_eq!(
            row.to_string(),
            r#"{id: "p-1", prompt: [{role: "system", content: "s"}, {role: "user", content: "q"}], chosen: [{role: "assistant", content: "yes, hon"}], rejected: [{role: "assistant", content: "yes"}]}"#
        );
    }

    #[test]
    fn rows_keep_their_order_across_row_groups() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.parquet");
        let file = File::create(&path).expect("create");
        let mut shard = ParquetShard::with_row_groups(file, SampleKind::Chat, 10).expect("shard");
        for i in 0..25 {
            let mut messages = vec![Message::user(format!("q{i}"))];
            for turn in 0..i % 3 {
                messages.push(Message::assistant(format!("a{i}.{turn}")));
                messages.push(Message::user(format!("q{i}.{turn}")));
            }
            messages.push(Message::assistant(format!("a{i}")));
            shard
                .push(&SampleLine::Chat(crate::format::ChatLine::minimal(
                    format!("c{i}"),
                    messages,
                )))
                .expect("push");
        }
        assert_eq!(shard.finish().expect("finish"), 25);
        let reader = SerializedFileReader::new(File::open(&path).expect("open")).expect("reader");
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let rows: Vec<String> = reader
            .get_row_iter(None)
            .expect("rows")
            .map(|row| row.expect("row").to_string())
            .collect();
        assert_eq!(rows.len(), 25);
        assert_eq!(
            rows[14],
            r#"{id: "c14", messages: [{role: "user", content: "q14"}, {role: "assistant", content: "a14.0"}, {role: "user", content: "q14.0"}, {role: "assistant", content: "a14.1"}, {role: "user", content: "q14.1"}, {role: "assistant", content: "a14"}]}"#
        );
        assert_eq!(
            rows[24],
            r#"{id: "c24", messages: [{role: "user", content: "q24"}, {role: "assistant", content: "a24"}]}"#
        );
    }
}
