//! shaping: LLM training data as a build artifact — pipelines, one shared dispatcher, fingerprints and manifests.
//!
//! A pipeline crate declares its dependencies (files, model aliases, its own code) and describes
//! per-record inference as async Rust; [`run_main`] turns it into a command-line program that
//! writes `training/data/<name>.jsonl` plus a manifest, and that `cargo xtask` drives like `make`.
//! See ARCHITECTURE.md for the map and the invariants.

pub mod cache;
pub mod cli;
pub mod description;
pub mod dispatch;
pub mod exit_code;
pub mod export;
pub mod fingerprint;
pub mod format;
pub mod graph;
pub mod judge;
pub mod lock;
pub mod manifest;
pub mod model_fetch;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod provider;
pub mod quality;
pub mod repo;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod sources;
pub mod stats;

#[cfg(test)]
mod tidy;

pub use cli::run_main;
pub use exit_code::ShapingExitCode;
pub use pipeline::best_of::{self, BestOf, Chosen};
pub use pipeline::{Ctx, Declare, FileDep, ModelDep, Pipeline, Task, model_request};
pub use provider::{Message, Params};
pub use sample::{
    PipelineError, PipelineErrorKind, PreferenceSample, Response, Sample, SampleKind,
    TrainingSample, trim_to_last_sentence,
};

/// Re-exported so pipeline crates need no direct dependency for the common pieces.
pub use serde_json::json;
