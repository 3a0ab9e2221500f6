//! Integration tests for `shaping::sources`, one binary in modules by area: loaders, field maps,
//! parquet, Hugging Face layouts and download, WildChat, identity prompts and knowledge, mixing.
//!
//! Parquet fixtures are written at test time with the parquet crate's low-level column writer (no
//! arrow). `generate_wildchat_sample` (ignored) regenerates `training/inputs/wildchat-sample.parquet`:
//! `cargo test -p shaping --test sources -- --ignored generate_wildchat_sample`.

mod field_maps;
mod hugging_face;
mod knowledge;
mod loaders;
mod mix;
mod parquet_files;
mod wildchat;

use std::path::{Path, PathBuf};

use shaping::sources::{Record, Records};

/// Write `content` to `dir/name` (creating directories); the path written.
fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

/// Every record of a stream (panics on the first error).
fn all(records: Records) -> Vec<Record> {
    records.collect::<Result<Vec<_>, _>>().unwrap()
}

/// A committed file of this repository.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
