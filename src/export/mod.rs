//! `cargo xtask export`: a dataset in the form a trainer reads (TRL, OpenAI, ShareGPT JSONL, or
//! Parquet with a dataset card), refused unless the data is CURRENT, and pushed to the Hugging
//! Face Hub.
//!
//! An export holds the training content only: ids (where the format has room), messages, the
//! pair's answers. Provenance (steps, inputs, timings) stays in the source dataset; the card
//! records the manifest's fingerprints instead. Error records (`<name>.errors.jsonl`) are never
//! exported. Every sample is checked against its kind's shape rules on the way out
//! ([`crate::format::SampleLine::check`]) and against the manifest's kind, so an export never
//! carries a sample a trainer would choke on.
//!
//! Layout (default `-o`, under [`EXPORT_DIR`]):
//!
//! * `trl`, `openai`, `sharegpt`: one JSONL file, `training/export/<name>.<format>.jsonl`,
//!   written atomically (temporary file, rename), and its card beside it,
//!   `<name>.<format>.card.md`.
//! * `parquet`: a directory laid out as a Hugging Face dataset repository,
//!   `training/export/<name>/` holding [`PARQUET_SHARD`] and the card [`CARD_FILE`] (YAML front
//!   matter with the `configs`/`data_files` and `dataset_info.features` that `datasets` reads).
//!   Each file is replaced atomically; other files in the directory are left alone.
//!
//! [`hub`] uploads a Parquet export through the Hub's HTTP API.

mod card;
pub mod hub;
mod parquet;
mod records;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::format::{SampleKind, SampleLine, ShapeError};
use crate::manifest::{Manifest, ManifestError, State, Status};
use crate::output::{JsonlWriter, OutputError};

pub use hub::{HubClient, Pushed};

/// Where exports go by default, relative to the repository root.
pub const EXPORT_DIR: &str = "training/export";
/// The Parquet shard inside a Parquet export (the Hub's `data/<split>-NNNNN-of-NNNNN` naming).
pub const PARQUET_SHARD: &str = "data/train-00000-of-00001.parquet";
/// The dataset card inside a Parquet export.
pub const CARD_FILE: &str = "README.md";

/// A training-ready format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// TRL's conversational formats: `{"id", "messages"}`, `{"id", "prompt", "chosen", "rejected"}`.
    Trl,
    /// OpenAI fine-tuning: `{"messages"}`; DPO `{"input", "preferred_output", "non_preferred_output"}`.
    Openai,
    /// ShareGPT as LLaMA-Factory reads it: `{"id", "conversations"}` (+ `chosen`, `rejected`).
    Sharegpt,
    /// A Hugging Face dataset directory: zstd Parquet with TRL's columns and a dataset card.
    Parquet,
}

impl ExportFormat {
    /// The name used on the command line and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trl => "trl",
            Self::Openai => "openai",
            Self::Sharegpt => "sharegpt",
            Self::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an export (or a push) failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The dataset is not CURRENT and `--allow-stale` was not given.
    #[error("refusing to export '{name}': it is {state}\n{reasons}\n{hint}")]
    NotCurrent {
        /// The pipeline.
        name: String,
        /// `STALE`, `PARTIAL` or `MISSING`.
        state: &'static str,
        /// Why, one `  - reason` line each.
        reasons: String,
        /// What to do about it.
        hint: String,
    },
    /// The dataset or its manifest does not exist.
    #[error("cannot export '{name}': {what} {path} does not exist (run `cargo xtask data {name}`)")]
    Missing {
        /// The pipeline.
        name: String,
        /// `output` or `manifest`.
        what: &'static str,
        /// The missing file.
        path: PathBuf,
    },
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `identity/voice.toml` could not be read (the card names the identity).
    #[error(transparent)]
    Identity(#[from] crate::quality::QualityError),
    /// Reading the dataset failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The dataset.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a sample.
    #[error("{path}:{line}: not a sample line: {message}")]
    BadLine {
        /// The dataset.
        path: PathBuf,
        /// The line number, from 1.
        line: u64,
        /// The parse error.
        message: String,
    },
    /// A sample of another kind than the manifest's.
    #[error(
        "{path}:{line}: sample '{id}' is a {found} sample, but the manifest says the dataset holds {expected} samples"
    )]
    WrongKind {
        /// The dataset.
        path: PathBuf,
        /// The line number, from 1.
        line: u64,
        /// The sample's id.
        id: String,
        /// Its kind.
        found: SampleKind,
        /// The manifest's kind.
        expected: SampleKind,
    },
    /// A sample whose shape a trainer cannot use.
    #[error("{path}:{line}: sample '{id}' cannot be trained on: {reason}")]
    BadShape {
        /// The dataset.
        path: PathBuf,
        /// The line number, from 1.
        line: u64,
        /// The sample's id.
        id: String,
        /// The rule it breaks.
        reason: ShapeError,
    },
    /// Writing an export file failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Writing the Parquet shard failed.
    #[error("cannot write {path}: {message}")]
    Parquet {
        /// The shard.
        path: PathBuf,
        /// The Parquet or I/O error.
        message: String,
    },
    /// `-o` names a file where the Parquet export needs a directory.
    #[error("{path} is a file; a Parquet export is a directory (a dataset repository layout)")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// `--push` names no `owner/name` repository.
    #[error(
        "'{repo}' is not a Hub repository id: expected owner/name (letters, digits, '-', '_', '.')"
    )]
    InvalidRepo {
        /// What was given.
        repo: String,
    },
    /// No Hugging Face token for a push.
    #[error(
        "pushing needs a Hugging Face write token: set HF_TOKEN (or log in with `huggingface-cli login`)"
    )]
    NoToken,
    /// The Hub refused or failed a request of the push (the token is never in the message).
    #[error("Hub {step} failed ({url}): {message}")]
    Hub {
        /// Which request: `create repository`, `preupload`, `LFS batch`, `LFS upload`,
        /// `LFS verify`, `commit`.
        step: &'static str,
        /// The URL (without credentials).
        url: String,
        /// The HTTP status, when the Hub answered.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest<'a> {
    /// The repository root.
    pub root: &'a Path,
    /// The pipeline whose output is exported.
    pub name: &'a str,
    /// Its output (`training/data/<name>.jsonl`), absolute or relative to the current directory.
    pub output: &'a Path,
    /// Its status as `cargo xtask status` computes it.
    pub status: &'a Status,
    /// The format.
    pub format: ExportFormat,
    /// Where to write (default [`default_out`]).
    pub out: Option<PathBuf>,
    /// Export even when the data is not CURRENT (with a warning, and a note in the card).
    pub allow_stale: bool,
    /// The command that makes this export, recorded in the card.
    pub command: String,
    /// The Hub repository (`owner/name`) the export is pushed to, if any: the card's loading
    /// example names it.
    pub hub_repo: Option<&'a str>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The format.
    pub format: ExportFormat,
    /// The dataset's kind.
    pub kind: SampleKind,
    /// The JSONL file, or the Parquet export's directory.
    pub path: PathBuf,
    /// The files written, relative to `path` for a directory (`data/…parquet`, `README.md`),
    /// else the file name.
    pub files: Vec<String>,
    /// The dataset card: `README.md` in a Parquet export, `<name>.<format>.card.md` beside a
    /// JSONL one.
    pub card: PathBuf,
    /// Samples written.
    pub samples: u64,
    /// Set when the data was not CURRENT and `--allow-stale` let it through: what is wrong.
    pub warning: Option<String>,
}

/// The default destination: `training/export/<name>.<format>.jsonl`, or the directory
/// `training/export/<name>/` for Parquet.
pub fn default_out(root: &Path, name: &str, format: ExportFormat) -> PathBuf {
    let dir = root.join(EXPORT_DIR);
    match format {
        ExportFormat::Parquet => dir.join(name),
        _ => dir.join(format!("{name}.{}.jsonl", format.as_str())),
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Current => "CURRENT",
        State::Stale => "STALE",
        State::Partial => "PARTIAL",
        State::Missing => "MISSING",
    }
}

/// Whether `status` lets `name` be exported: `Ok(None)` when CURRENT; when not, an error, or
/// with `allow_stale` the warning to show (state and reasons).
pub fn gate(name: &str, status: &Status, allow_stale: bool) -> Result<Option<String>, ExportError> {
    if status.is_current() {
        return Ok(None);
    }
    let reasons = status
        .reasons
        .iter()
        .map(|r| format!("  - {r}"))
        .collect::<Vec<_>>()
        .join("\n");
    // Nothing to export when MISSING, whatever the flag says.
    if status.state == State::Missing || !allow_stale {
        let hint = if status.state == State::Missing {
            format!("Generate it with `cargo xtask data {name}`.")
        } else {
            format!(
                "Regenerate it with `cargo xtask data {name}`, or pass --allow-stale to export it as it is."
            )
        };
        return Err(ExportError::NotCurrent {
            name: name.to_owned(),
            state: state_name(status.state),
            reasons,
            hint,
        });
    }
    Ok(Some(format!(
        "'{name}' is {}:\n{reasons}",
        state_name(status.state)
    )))
}

/// Export one dataset: check its status ([`gate`]), read its manifest and samples, write the
/// format. Samples are streamed: memory holds one Parquet row group at most.
pub fn export(request: &ExportRequest<'_>) -> Result<Exported, ExportError> {
    let warning = gate(request.name, request.status, request.allow_stale)?;
    let manifest_path = Manifest::path_for(request.output);
    if !request.output.exists() {
        return Err(ExportError::Missing {
            name: request.name.to_owned(),
            what: "output",
            path: request.output.to_owned(),
        });
    }
    let manifest = Manifest::read(&manifest_path)?.ok_or_else(|| ExportError::Missing {
        name: request.name.to_owned(),
        what: "manifest",
        path: manifest_path.clone(),
    })?;
    let out = request
        .out
        .clone()
        .unwrap_or_else(|| default_out(request.root, request.name, request.format));
    let samples = SampleReader::open(request.output, manifest.kind)?;
    let voice = crate::quality::Voice::load(request.root)?;
    match request.format {
        ExportFormat::Parquet => {
            let (samples, files) =
                write_parquet_dir(&out, samples, manifest.kind, |data_files, samples| {
                    let mut manifest = manifest.clone();
                    manifest.samples = samples;
                    card::render(&card::CardInput {
                        identity: voice.name.as_deref(),
                        manifest: &manifest,
                        format: request.format,
                        data_files,
                        command: &request.command,
                        not_current: warning.as_deref(),
                        hub_repo: request.hub_repo,
                    })
                })?;
            Ok(Exported {
                format: request.format,
                kind: manifest.kind,
                card: out.join(CARD_FILE),
                path: out,
                files,
                samples,
                warning,
            })
        }
        format => {
            let mut writer = JsonlWriter::create(&out)?;
            for sample in samples {
                writer.write(&records::record(format, &sample?))?;
            }
            let samples = writer.lines();
            writer.commit()?;
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let card_path = crate::format::sibling_with_suffix(&out, "card.md");
            let mut card_manifest = manifest.clone();
            card_manifest.samples = samples;
            let card = card::render(&card::CardInput {
                identity: voice.name.as_deref(),
                manifest: &card_manifest,
                format,
                data_files: std::slice::from_ref(&name),
                command: &request.command,
                not_current: warning.as_deref(),
                hub_repo: None,
            });
            crate::output::write_atomic(&card_path, card.as_bytes())?;
            Ok(Exported {
                format,
                kind: manifest.kind,
                path: out,
                files: vec![name],
                card: card_path,
                samples,
                warning,
            })
        }
    }
}

/// Write the shard and then the card (rendered from the data files and the rows written).
fn write_parquet_dir(
    out: &Path,
    samples: SampleReader,
    kind: SampleKind,
    card: impl FnOnce(&[String], u64) -> String,
) -> Result<(u64, Vec<String>), ExportError> {
    if out.is_file() {
        return Err(ExportError::NotADirectory {
            path: out.to_owned(),
        });
    }
    let shard = out.join(PARQUET_SHARD);
    let dir = shard.parent().expect("the shard is in data/");
    let parquet_error = |message: String| ExportError::Parquet {
        path: shard.clone(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| parquet_error(e.to_string()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        shard
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        let file = File::create(&temp).map_err(|e| parquet_error(e.to_string()))?;
        let mut writer =
            parquet::ParquetShard::create(file, kind).map_err(|e| parquet_error(e.to_string()))?;
        for sample in samples {
            writer
                .push(&sample?)
                .map_err(|e| parquet_error(e.to_string()))?;
        }
        let rows = writer.finish().map_err(|e| parquet_error(e.to_string()))?;
        std::fs::rename(&temp, &shard).map_err(|e| parquet_error(e.to_string()))?;
        Ok(rows)
    })();
    let rows = match written {
        Ok(rows) => rows,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    let data_files = vec![PARQUET_SHARD.to_owned()];
    crate::output::write_atomic(&out.join(CARD_FILE), card(&data_files, rows).as_bytes())?;
    Ok((rows, vec![CARD_FILE.to_owned(), PARQUET_SHARD.to_owned()]))
}

/// The samples of a dataset, streamed, each checked against the manifest's kind and its kind's
/// shape rules.
struct SampleReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: u64,
    kind: SampleKind,
}

impl SampleReader {
    fn open(path: &Path, kind: SampleKind) -> Result<Self, ExportError> {
        let file = File::open(path).map_err(|source| ExportError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            lines: BufReader::with_capacity(256 * 1024, file).lines(),
            line: 0,
            kind,
        })
    }

    fn parse(&self, text: &str) -> Result<SampleLine, ExportError> {
        let sample: SampleLine = serde_json::from_str(text).map_err(|e| ExportError::BadLine {
            path: self.path.clone(),
            line: self.line,
            message: e.to_string(),
        })?;
        if sample.kind() != self.kind {
            return Err(ExportError::WrongKind {
                path: self.path.clone(),
                line: self.line,
                id: sample.id().to_owned(),
                found: sample.kind(),
                expected: self.kind,
            });
        }
        sample.check().map_err(|reason| ExportError::BadShape {
            path: self.path.clone(),
            line: self.line,
            id: sample.id().to_owned(),
            reason,
        })?;
        Ok(sample)
    }
}

impl Iterator for SampleReader {
    type Item = Result<SampleLine, ExportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(source) => {
                    return Some(Err(ExportError::Read {
                        path: self.path.clone(),
                        source,
                    }));
                }
            };
            self.line += 1;
            if !text.trim().is_empty() {
                return Some(self.parse(&text));
            }
        }
    }
}
