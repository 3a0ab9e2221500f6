//! Format readers: each turns one file into a stream of raw JSON-object rows with their location.
//!
//! Every reader streams: JSONL/text line by line, CSV record by record, JSON arrays element by
//! element (the array is never parsed whole) and Parquet row group by row group.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use super::{Location, SourceError};

/// One row as read from a file, before field mapping.
pub(crate) struct RawRow {
    pub path: Arc<Path>,
    pub location: Location,
    pub value: Map<String, Value>,
}

pub(crate) type RawIter = Box<dyn Iterator<Item = Result<RawRow, SourceError>> + Send>;

/// An opened file: its rows, and its column names when the format has a schema (CSV, Parquet).
pub(crate) struct Opened {
    pub rows: RawIter,
    pub columns: Option<Vec<String>>,
}

fn not_utf8(path: &Path, location: Location, detail: String) -> SourceError {
    SourceError::NotUtf8 {
        path: path.to_path_buf(),
        location,
        detail,
    }
}

fn open_file(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(|e| SourceError::io(path, e))
}

/// Reads lines as bytes, checks UTF-8, strips the line ending, skips blank lines.
struct Lines {
    path: Arc<Path>,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    fn new(path: &Path) -> Result<Self, SourceError> {
        Ok(Lines {
            reader: BufReader::with_capacity(1 << 16, open_file(path)?),
            path: path.into(),
            line: 0,
            buf: Vec::new(),
            done: false,
        })
    }

    /// Next non-blank line: `(line number, text)`.
    fn next_line(&mut self) -> Option<Result<(u64, String), SourceError>> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(SourceError::io(&self.path, e)));
                }
            }
            self.line += 1;
            let mut bytes = &self.buf[..];
            if let Some(b) = bytes.strip_suffix(b"\n") {
                bytes = b;
            }
            if let Some(b) = bytes.strip_suffix(b"\r") {
                bytes = b;
            }
            if self.line == 1
                && let Some(b) = bytes.strip_prefix(b"\xEF\xBB\xBF")
            {
                bytes = b;
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    let detail = format!("at byte {} of the line", e.valid_up_to() + 1);
                    return Some(Err(not_utf8(&self.path, Location::Line(self.line), detail)));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok((self.line, text.to_owned())));
        }
    }
}

/// JSON Lines: one object per line; blank lines skipped.
pub(crate) fn jsonl(path: &Path) -> Result<Opened, SourceError> {
    let mut lines = Lines::new(path)?;
    let rows = std::iter::from_fn(move || {
        let (line, text) = match lines.next_line()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let location = Location::Line(line);
        let parsed = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v,
            Err(e) => {
                return Some(Err(SourceError::Parse {
                    path: lines.path.to_path_buf(),
                    location,
                    message: format!("invalid JSON: {e}"),
                }));
            }
        };
        Some(object_row(&lines.path, location, parsed))
    });
    Ok(Opened {
        rows: Box::new(rows),
        columns: None,
    })
}

fn object_row(path: &Arc<Path>, location: Location, value: Value) -> Result<RawRow, SourceError> {
    match value {
        Value::Object(value) => Ok(RawRow {
            path: path.clone(),
            location,
            value,
        }),
        other => Err(SourceError::Parse {
            path: path.to_path_buf(),
            location,
            message: format!("expected a JSON object, found {}", kind(&other)),
        }),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Plain text: one prompt per non-blank line (trimmed), stored under `key`.
pub(crate) fn text(path: &Path, key: &str) -> Result<Opened, SourceError> {
    let mut lines = Lines::new(path)?;
    let key = key.to_owned();
    let rows = std::iter::from_fn(move || {
        let (line, text) = match lines.next_line()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let mut value = Map::new();
        value.insert(key.clone(), Value::String(text.trim().to_owned()));
        Some(Ok(RawRow {
            path: lines.path.clone(),
            location: Location::Line(line),
            value,
        }))
    });
    Ok(Opened {
        rows: Box::new(rows),
        columns: None,
    })
}

/// CSV with a header row; every cell becomes a JSON string.
pub(crate) fn csv(path: &Path) -> Result<Opened, SourceError> {
    let file = open_file(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let path: Arc<Path> = path.into();
    let headers = reader
        .byte_headers()
        .map_err(|e| csv_error(&path, e, Location::Line(1)))?;
    let mut columns = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let h = if i == 0 {
            h.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(h)
        } else {
            h
        };
        match std::str::from_utf8(h) {
            Ok(s) => columns.push(s.to_owned()),
            Err(e) => {
                let detail = format!("in header column {} at byte {}", i + 1, e.valid_up_to() + 1);
                return Err(not_utf8(&path, Location::Line(1), detail));
            }
        }
    }
    let names = columns.clone();
    let mut record = csv::ByteRecord::new();
    let mut done = false;
    let rows = std::iter::from_fn(move || {
        if done {
            return None;
        }
        match reader.read_byte_record(&mut record) {
            Ok(false) => {
                done = true;
                None
            }
            Err(e) => {
                let fatal = !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. });
                done = fatal;
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                Some(Err(csv_error(&path, e, Location::Line(line))))
            }
            Ok(true) => {
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                let location = Location::Line(line);
                let mut value = Map::new();
                for (i, cell) in record.iter().enumerate() {
                    match std::str::from_utf8(cell) {
                        Ok(s) => {
                            value.insert(names[i].clone(), Value::String(s.to_owned()));
                        }
                        Err(e) => {
                            let detail =
                                format!("in column `{}` at byte {}", names[i], e.valid_up_to() + 1);
                            return Some(Err(not_utf8(&path, location, detail)));
                        }
                    }
                }
                Some(Ok(RawRow {
                    path: path.clone(),
                    location,
                    value,
                }))
            }
        }
    });
    Ok(Opened {
        rows: Box::new(rows),
        columns: Some(columns),
    })
}

fn csv_error(path: &Path, e: csv::Error, location: Location) -> SourceError {
    match e.kind() {
        csv::ErrorKind::Io(_) => match e.into_kind() {
            csv::ErrorKind::Io(io) => SourceError::io(path, io),
            _ => unreachable!(),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => SourceError::Parse {
            path: path.to_path_buf(),
            location,
            message: format!("expected {expected_len} fields, found {len}"),
        },
        _ => SourceError::Parse {
            path: path.to_path_buf(),
            location,
            message: e.to_string(),
        },
    }
}

/// Counts newlines passing through, so JSON array elements can be located by line.
struct CountLines<'a, R> {
    inner: &'a mut R,
    lines: &'a mut u64,
}

impl<R: Read> Read for CountLines<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(n)
    }
}

/// A JSON array of objects, parsed one element at a time.
///
/// Elements that are not objects or have bad fields are row errors (skippable); a syntax error
/// ends the file, since there is no safe way to resynchronise.
pub(crate) fn json_array(path: &Path) -> Result<Opened, SourceError> {
    let mut reader = BufReader::with_capacity(1 << 16, open_file(path)?);
    let path: Arc<Path> = path.into();
    let mut line: u64 = 1;
    // Skips whitespace (and a BOM at the start); returns the next byte without consuming it.
    fn peek(reader: &mut BufReader<File>, line: &mut u64) -> std::io::Result<Option<u8>> {
        loop {
            let buf = reader.fill_buf()?;
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            match b {
                b'\n' => *line += 1,
                b' ' | b'\t' | b'\r' | 0xEF | 0xBB | 0xBF => {}
                _ => return Ok(Some(b)),
            }
            reader.consume(1);
        }
    }
    let syntax = |path: &Arc<Path>, line: u64, message: String| SourceError::Corrupt {
        path: path.to_path_buf(),
        location: Location::Line(line),
        message,
    };
    match peek(&mut reader, &mut line).map_err(|e| SourceError::io(&path, e))? {
        Some(b'[') => reader.consume(1),
        Some(_) | None => {
            return Err(syntax(&path, line, "expected a JSON array `[...]`".into()));
        }
    }
    let mut index: u64 = 0;
    let mut done = false;
    let rows = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let fail = |done: &mut bool, e: SourceError| {
            *done = true;
            Some(Err(e))
        };
        let mut b = match peek(&mut reader, &mut line) {
            Ok(b) => b,
            Err(e) => return fail(&mut done, SourceError::io(&path, e)),
        };
        match b {
            Some(b']') => {
                done = true;
                return None;
            }
            Some(b',') if index > 0 => {
                reader.consume(1);
                match peek(&mut reader, &mut line) {
                    Ok(Some(b']')) | Ok(None) => {
                        return fail(&mut done, syntax(&path, line, "trailing comma".into()));
                    }
                    Ok(next) => b = next,
                    Err(e) => return fail(&mut done, SourceError::io(&path, e)),
                }
            }
            None => return fail(&mut done, syntax(&path, line, "unterminated array".into())),
            Some(_) if index > 0 => {
                return fail(&mut done, syntax(&path, line, "expected `,` or `]`".into()));
            }
            Some(_) => {}
        }
        index += 1;
        let start = line;
        let location = Location::Element { index, line: start };
        // serde_json reads one byte past a number, which would swallow the `,`: consume numbers
        // here (they are a row error anyway: elements must be objects).
        if let Some(b'-' | b'0'..=b'9') = b {
            loop {
                match reader.fill_buf() {
                    Ok(buf)
                        if buf
                            .first()
                            .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c)) =>
                    {
                        reader.consume(1)
                    }
                    Ok(_) => break,
                    Err(e) => return fail(&mut done, SourceError::io(&path, e)),
                }
            }
            return Some(object_row(&path, location, Value::from(0)));
        }
        let value = {
            let counter = CountLines {
                inner: &mut reader,
                lines: &mut line,
            };
            let mut de = serde_json::Deserializer::from_reader(counter);
            serde::Deserialize::deserialize(&mut de)
        };
        let value: Value = match value {
            Ok(v) => v,
            Err(e) => {
                let at = start + e.line().max(1) as u64 - 1;
                return fail(
                    &mut done,
                    syntax(&path, at, format!("invalid JSON in element {index}: {e}")),
                );
            }
        };
        Some(object_row(&path, location, value))
    });
    Ok(Opened {
        rows: Box::new(rows),
        columns: None,
    })
}

/// Parquet via the row API; `projection` limits decoding to those top-level columns (the ones
/// that exist). Decoding errors end the file.
pub(crate) fn parquet(path: &Path, projection: Option<&[String]>) -> Result<Opened, SourceError> {
    let file = open_file(path)?;
    let perr = |e: parquet::errors::ParquetError| SourceError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader = SerializedFileReader::new(file).map_err(perr)?;
    let schema = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .clone();
    let columns: Vec<String> = schema
        .get_fields()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let proj = match projection {
        None => None,
        Some(wanted) => {
            let fields: Vec<_> = schema
                .get_fields()
                .iter()
                .filter(|f| wanted.iter().any(|w| w == f.name()))
                .cloned()
                .collect();
            let t = Type::group_type_builder(schema.name())
                .with_fields(fields)
                .build()
                .map_err(perr)?;
            Some(t)
        }
    };
    let iter = parquet::record::reader::RowIter::from_file_into(Box::new(reader))
        .project(proj)
        .map_err(perr)?;
    let path: Arc<Path> = path.into();
    let mut row_no: u64 = 0;
    let mut done = false;
    let mut iter = iter;
    let rows = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let row = match iter.next()? {
            Ok(r) => r,
            Err(e) => {
                done = true;
                let message = e.to_string();
                let location = Location::Row(row_no + 1);
                // Keep the message short: parquet's UTF-8 error dumps the raw bytes.
                let message = match message.split_once(". Bytes:") {
                    Some((head, _)) => format!("{head} (invalid UTF-8)"),
                    None => message,
                };
                return Some(Err(SourceError::Corrupt {
                    path: path.to_path_buf(),
                    location,
                    message,
                }));
            }
        };
        row_no += 1;
        let location = Location::Row(row_no);
        Some(row_to_map(&row, &path, location).map(|value| RawRow {
            path: path.clone(),
            location,
            value,
        }))
    });
    Ok(Opened {
        rows: Box::new(rows),
        columns: Some(columns),
    })
}

fn row_to_map(
    row: &Row,
    path: &Path,
    location: Location,
) -> Result<Map<String, Value>, SourceError> {
    let mut out = Map::new();
    for (name, field) in row.get_column_iter() {
        out.insert(name.clone(), field_to_value(field, path, location, name)?);
    }
    Ok(out)
}

fn field_to_value(
    field: &Field,
    path: &Path,
    location: Location,
    name: &str,
) -> Result<Value, SourceError> {
    let num = |n: f64| {
        serde_json::Number::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float(n) => num(f64::from(*n)),
        Field::Double(n) => num(*n),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_owned()),
            Err(e) => {
                let detail = format!("in column `{name}` at byte {}", e.valid_up_to() + 1);
                return Err(not_utf8(path, location, detail));
            }
        },
        Field::Group(row) => Value::Object(row_to_map(row, path, location)?),
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|f| field_to_value(f, path, location, name))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut out = Map::new();
            for (k, v) in map.entries() {
                let key = match field_to_value(k, path, location, name)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, field_to_value(v, path, location, name)?);
            }
            Value::Object(out)
        }
        // Dates, times, timestamps, decimals, float16: their display form.
        other => Value::String(other.to_string()),
    })
}

/// Files of a directory (recursively, hidden entries skipped) whose names end with one of `exts`
/// (every file if `exts` is empty), sorted by path.
pub(crate) fn shards(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, SourceError> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
        });
    for entry in walker {
        let entry = entry.map_err(|e| {
            let p = e.path().unwrap_or(dir).to_path_buf();
            SourceError::Io {
                path: p,
                source: e.into(),
            }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if exts.is_empty() || exts.iter().any(|ext| name.ends_with(&format!(".{ext}"))) {
            out.push(entry.into_path());
        }
    }
    out.sort();
    Ok(out)
}
