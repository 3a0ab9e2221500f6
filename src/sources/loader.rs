//! [`Loader`] (the builder) and [`Records`] (the streaming iterator it opens).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

use super::fields::FieldMap;
use super::readers::{self, Opened, RawIter, RawRow};
use super::{Record, SourceError, SourceStats, StatsHandle, prompt_fingerprint};

/// File format of a source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// From the extension: `.jsonl`/`.ndjson`, `.json` (array), `.csv`, `.parquet`, `.txt`.
    /// For a directory: every `.parquet`, `.jsonl`, `.ndjson` and `.csv` file in it.
    #[default]
    Auto,
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of objects.
    JsonArray,
    /// CSV with a header row.
    Csv,
    /// Apache Parquet (snappy or uncompressed).
    Parquet,
    /// One prompt per line; blank lines skipped.
    Text,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let ext = name.rsplit('.').next()?;
        Some(match ext {
            "jsonl" | "ndjson" => Format::Jsonl,
            "json" => Format::JsonArray,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            "txt" | "text" => Format::Text,
            _ => return None,
        })
    }

    fn shard_exts(self) -> &'static [&'static str] {
        match self {
            Format::Auto => &["parquet", "jsonl", "ndjson", "csv"],
            Format::Jsonl => &["jsonl", "ndjson"],
            Format::JsonArray => &["json"],
            Format::Csv => &["csv"],
            Format::Parquet => &["parquet"],
            Format::Text => &["txt", "text"],
        }
    }
}

type Filter = Box<dyn FnMut(&Record) -> bool + Send>;

/// Turns one raw row into zero or more records (the field map, or a dataset-specific mapping).
pub(crate) trait RowMapper: Send {
    /// Pushes records for `row` into `out`; bumps `filtered` for candidates it drops.
    fn map(
        &mut self,
        row: RawRow,
        out: &mut Vec<Record>,
        filtered: &mut u64,
    ) -> Result<(), SourceError>;
    /// Top-level columns that must exist (checked against CSV/Parquet schemas).
    fn required_columns(&self) -> Vec<String>;
    /// Top-level columns to decode (Parquet projection); `None` for all.
    fn projection(&self) -> Option<Vec<String>>;
}

struct FieldMapper {
    map: FieldMap,
    source: String,
}

impl RowMapper for FieldMapper {
    fn map(&mut self, row: RawRow, out: &mut Vec<Record>, _: &mut u64) -> Result<(), SourceError> {
        out.push(self.map.to_record(row, &self.source)?);
        Ok(())
    }
    fn required_columns(&self) -> Vec<String> {
        self.map
            .required_columns()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
    fn projection(&self) -> Option<Vec<String>> {
        self.map.projection()
    }
}

/// Builder for a streaming prompt source over a file or a directory of shards.
///
/// ```no_run
/// use shaping::sources::{FieldMap, Loader};
/// let records = Loader::new("training/inputs/questions.csv")
///     .fields(FieldMap::new().prompt("question").category("topic"))
///     .skip_bad_rows(true)
///     .open()?;
/// let stats = records.stats();
/// for record in records {
///     let record = record?;
///     println!("{}: {}", record.id, record.prompt);
/// }
/// println!("{:?}", stats.get());
/// # Ok::<(), shaping::sources::SourceError>(())
/// ```
pub struct Loader {
    path: PathBuf,
    files: Option<Vec<PathBuf>>,
    format: Format,
    fields: FieldMap,
    source: Option<String>,
    skip_bad_rows: bool,
    dedupe: bool,
    filter: Option<Filter>,
    stats: StatsHandle,
}

impl Loader {
    /// A loader for `path` (a file, or a directory of shards read in sorted order).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Loader {
            path: path.as_ref().to_path_buf(),
            files: None,
            format: Format::Auto,
            fields: FieldMap::default(),
            source: None,
            skip_bad_rows: false,
            dedupe: false,
            filter: None,
            stats: StatsHandle::default(),
        }
    }

    /// A loader over an explicit list of files, read in the given order (e.g. from
    /// [`super::HfDataset::cached`]). The default source name is the first file's stem.
    pub fn from_files(files: Vec<PathBuf>) -> Self {
        let mut loader = Loader::new(files.first().cloned().unwrap_or_default());
        loader.files = Some(files);
        loader
    }

    /// Sets the format instead of guessing it from the extension.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets the field mapping.
    pub fn fields(mut self, fields: FieldMap) -> Self {
        self.fields = fields;
        self
    }

    /// Name stored in `Record::source` and used in derived ids (default: the file or directory
    /// stem).
    pub fn source_name(mut self, name: impl Into<String>) -> Self {
        self.source = Some(name.into());
        self
    }

    /// Skip (and count) bad rows instead of yielding errors for them. Whole-file problems (I/O,
    /// missing columns, a JSON array syntax error, a corrupt Parquet page) are still errors.
    pub fn skip_bad_rows(mut self, yes: bool) -> Self {
        self.skip_bad_rows = yes;
        self
    }

    /// Drop records whose normalised prompt was already seen in this source (keeps a set of 64-bit
    /// fingerprints: 8 bytes per distinct prompt).
    pub fn dedupe(mut self, yes: bool) -> Self {
        self.dedupe = yes;
        self
    }

    /// Keep only records for which `keep` returns true (counted as `skipped_filtered`).
    pub fn filter(mut self, keep: impl FnMut(&Record) -> bool + Send + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Handle to the counters; valid before, during and after iteration.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Resolves the files and opens the first one (so missing files and columns fail here).
    pub fn open(self) -> Result<Records, SourceError> {
        let source = match &self.source {
            Some(s) => s.clone(),
            None => default_source_name(&self.path),
        };
        let mapper = FieldMapper {
            map: self.fields.clone(),
            source,
        };
        self.open_with(Box::new(mapper))
    }

    pub(crate) fn open_with(self, mapper: Box<dyn RowMapper>) -> Result<Records, SourceError> {
        let fmt_of = |f: &Path| match self.format {
            Format::Auto => Format::of(f).ok_or_else(|| SourceError::UnknownFormat {
                path: f.to_path_buf(),
            }),
            f => Ok(f),
        };
        let files: VecDeque<(PathBuf, Format)> = if let Some(files) = &self.files {
            if files.is_empty() {
                return Err(SourceError::NoShards {
                    path: self.path.clone(),
                    what: "input".into(),
                });
            }
            files
                .iter()
                .map(|f| Ok((f.clone(), fmt_of(f)?)))
                .collect::<Result<_, SourceError>>()?
        } else if std::fs::metadata(&self.path)
            .map_err(|e| SourceError::io(&self.path, e))?
            .is_dir()
        {
            let files = readers::shards(&self.path, self.format.shard_exts())?;
            if files.is_empty() {
                let what = self
                    .format
                    .shard_exts()
                    .iter()
                    .map(|e| format!(".{e}"))
                    .collect::<Vec<_>>();
                return Err(SourceError::NoShards {
                    path: self.path.clone(),
                    what: what.join("/"),
                });
            }
            files
                .into_iter()
                .map(|f| {
                    let fmt = if self.format == Format::Auto {
                        Format::of(&f).unwrap_or(Format::Jsonl)
                    } else {
                        self.format
                    };
                    (f, fmt)
                })
                .collect()
        } else {
            VecDeque::from([(self.path.clone(), fmt_of(&self.path)?)])
        };
        let prompt_key = self.fields.prompt.clone();
        let mut records = Records {
            files,
            current: None,
            prompt_key,
            mapper,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            filter: self.filter,
            seen: self.dedupe.then(HashSet::new),
            skip_bad_rows: self.skip_bad_rows,
            stats: self.stats,
            fused: false,
        };
        records.open_next()?;
        Ok(records)
    }
}

fn default_source_name(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("source");
    name.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name)
        .to_owned()
}

/// Streaming iterator of records from a [`Loader`]. Yields `Err` for bad rows (unless skipped);
/// after a whole-source error it ends.
pub struct Records {
    files: VecDeque<(PathBuf, Format)>,
    current: Option<RawIter>,
    prompt_key: String,
    mapper: Box<dyn RowMapper>,
    pending: VecDeque<Record>,
    scratch: Vec<Record>,
    filter: Option<Filter>,
    seen: Option<HashSet<u64>>,
    skip_bad_rows: bool,
    stats: StatsHandle,
    fused: bool,
}

impl Records {
    /// Handle to the counters (shared with the [`Loader`] it came from).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Consumes the iterator, returning the records and the final counters.
    pub fn collect_with_stats(self) -> Result<(Vec<Record>, SourceStats), SourceError> {
        let stats = self.stats();
        let records = self.collect::<Result<Vec<_>, _>>()?;
        Ok((records, stats.get()))
    }

    /// Opens the next file; `Ok(false)` when there are none left.
    fn open_next(&mut self) -> Result<bool, SourceError> {
        let Some((path, format)) = self.files.pop_front() else {
            return Ok(false);
        };
        let projection = self.mapper.projection();
        let Opened { rows, columns } = match format {
            Format::Jsonl => readers::jsonl(&path)?,
            Format::JsonArray => readers::json_array(&path)?,
            Format::Csv => readers::csv(&path)?,
            Format::Parquet | Format::Auto => readers::parquet(&path, projection.as_deref())?,
            Format::Text => readers::text(&path, &self.prompt_key)?,
        };
        if let Some(columns) = columns {
            for required in self.mapper.required_columns() {
                if !columns.contains(&required) {
                    return Err(SourceError::MissingColumn {
                        path,
                        column: required,
                        available: columns,
                    });
                }
            }
        }
        self.current = Some(rows);
        Ok(true)
    }

    fn fail(&mut self, e: SourceError) -> Option<Result<Record, SourceError>> {
        self.fused = true;
        self.current = None;
        Some(Err(e))
    }
}

impl Iterator for Records {
    type Item = Result<Record, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.fused {
                return None;
            }
            if let Some(record) = self.pending.pop_front() {
                self.stats.update(|s| s.kept += 1);
                return Some(Ok(record));
            }
            let Some(current) = self.current.as_mut() else {
                match self.open_next() {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.fused = true;
                        return None;
                    }
                    Err(e) => return self.fail(e),
                }
            };
            let row = match current.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(row) => row,
            };
            self.stats.update(|s| s.read += 1);
            let mut filtered = 0;
            self.scratch.clear();
            let mapped = row.and_then(|row| self.mapper.map(row, &mut self.scratch, &mut filtered));
            if let Err(e) = mapped {
                if !e.is_row_error() {
                    return self.fail(e);
                }
                if self.skip_bad_rows {
                    self.stats.update(|s| s.skipped_bad += 1);
                    continue;
                }
                return Some(Err(e));
            }
            let mut duplicates = 0;
            for record in self.scratch.drain(..) {
                if let Some(keep) = self.filter.as_mut()
                    && !keep(&record)
                {
                    filtered += 1;
                    continue;
                }
                if let Some(seen) = self.seen.as_mut()
                    && !seen.insert(prompt_fingerprint(&record.prompt))
                {
                    duplicates += 1;
                    continue;
                }
                self.pending.push_back(record);
            }
            if filtered + duplicates > 0 {
                self.stats.update(|s| {
                    s.skipped_filtered += filtered;
                    s.duplicates += duplicates;
                });
            }
        }
    }
}
