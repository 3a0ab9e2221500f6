//! Shared helpers of the integration tests: temporary repositories, a mock server kept serving on its own runtime, JSONL reading, and the test pipelines `Echo` and `Down` (`echo.rs`).
//!
//! Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) mod echo;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use shaping::Pipeline;
use shaping::description::Description;
use shaping::fingerprint::FileHasher;
use shaping::graph::{Evaluated, evaluate};
use shaping::models::ModelsConfig;
use shaping::run::{RunError, RunOptions, describe_in, run_in};
use testkit::{MockConfig, MockServer};

/// A small identity narrative with a "Voice" section (what `voice-prompts` reads).
pub(crate) const NARRATIVE: &str = "# Dee\n\nDee runs a diner.\n\n## Voice\n\nWarm, short sentences; says \"hon\".\n\n## History\n\nOpened the diner in 1990.\n";

/// A voice file with a few markers (what the quality checks read).
pub(crate) const VOICE_TOML: &str = "markers = [\"hon\", \"diner\", \"Cubs\"]\n";

/// Start a mock server on a runtime of its own. Keep the runtime alive for as long as the
/// server must answer; the test thread stays free to call the synchronous `run_in`.
pub(crate) fn start_server(config: MockConfig) -> (tokio::runtime::Runtime, MockServer) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let server = runtime.block_on(MockServer::start(config));
    (runtime, server)
}

/// A `[models.<alias>]` table of an OpenAI-compatible model served at `base_url`, with extra
/// lines (`max_concurrency = 3`, `rpm = 600`, …) appended.
pub(crate) fn openai_model(alias: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[models.{alias}]\nprovider = \"openai\"\nmodel = \"mock-model\"\nbase_url = \"{base_url}\"\nmax_retries = 3\ntimeout_secs = 2\n{extra}\n"
    )
}

/// A temporary repository: `models.toml`, identity files, and pipeline crate directories
/// (for code hashes).
pub(crate) struct TestRepo {
    pub dir: tempfile::TempDir,
}

impl TestRepo {
    /// A repository whose `models.toml` is `models_toml`, with small identity files.
    pub(crate) fn new(models_toml: &str) -> Self {
        let repo = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        repo.write("models.toml", models_toml);
        repo.write("identity/NARRATIVE.md", NARRATIVE);
        repo.write("identity/voice.toml", VOICE_TOML);
        repo
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
        std::fs::write(&path, text).expect("write file");
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read file")
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// The fake crate directory of pipeline `name` (created with a `src/main.rs` on first use).
    pub(crate) fn crate_dir(&self, name: &str) -> PathBuf {
        let dir = self.path(&format!("crates/{name}"));
        if !dir.join("src/main.rs").exists() {
            self.write(
                &format!("crates/{name}/src/main.rs"),
                &format!("// {name} v1\n"),
            );
        }
        dir
    }

    /// Default output of pipeline `name`.
    pub(crate) fn output(&self, name: &str) -> PathBuf {
        self.path(&format!("training/data/{name}.jsonl"))
    }

    /// Errors file beside the default output of pipeline `name`.
    pub(crate) fn errors(&self, name: &str) -> PathBuf {
        self.path(&format!("training/data/{name}.errors.jsonl"))
    }

    /// Manifest beside the default output of pipeline `name`.
    pub(crate) fn manifest(&self, name: &str) -> PathBuf {
        self.path(&format!("training/data/{name}.manifest.json"))
    }

    /// The manifest of pipeline `name`'s default output, parsed.
    pub(crate) fn manifest_json(&self, name: &str) -> Value {
        let path = self.manifest(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: invalid JSON ({e})", path.display()))
    }

    /// Run pipeline `P` in this repository (synchronously; never call from async code).
    pub(crate) fn run<P: Pipeline>(&self, args: RunOptions) -> Result<ExitCode, RunError> {
        run_in::<P>(self.root(), &self.crate_dir(P::NAME), args)
    }

    /// What `<binary> describe` prints for pipeline `P` in this repository.
    pub(crate) fn describe<P: Pipeline>(&self) -> Description {
        describe_in::<P>(self.root(), &self.crate_dir(P::NAME))
            .unwrap_or_else(|e| panic!("describe {}: {e}", P::NAME))
    }

    /// The status of these pipelines, in dependency order (what `cargo xtask status` shows).
    pub(crate) fn evaluate(&self, descriptions: &[Description]) -> Vec<Evaluated> {
        let models = ModelsConfig::load(self.root()).expect("models.toml loads");
        evaluate(
            self.root(),
            descriptions,
            &models,
            &FileHasher::for_repo(self.root()),
        )
        .expect("evaluate")
    }
}

/// The evaluation of pipeline `name` among `evaluated`.
pub(crate) fn find<'a>(evaluated: &'a [Evaluated], name: &str) -> &'a Evaluated {
    evaluated
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no pipeline {name}"))
}

/// A [`TestRepo`] whose models are served by a mock server of its own, which answers for as long
/// as this lives. Derefs to the repository.
pub(crate) struct ServedRepo {
    /// Dropped first: the server shuts down while its runtime still runs.
    pub server: MockServer,
    pub repo: TestRepo,
    /// The server's runtime, for `block_on` (the test thread itself stays synchronous).
    pub runtime: tokio::runtime::Runtime,
}

impl ServedRepo {
    /// Alias `m`: an OpenAI-compatible model on the server ([`openai_model`] with `extra` lines).
    pub(crate) fn new(config: MockConfig, extra: &str) -> Self {
        Self::with_models(config, |base_url| openai_model("m", base_url, extra))
    }

    /// `models.toml` made by `models` from the server's base URL.
    pub(crate) fn with_models(config: MockConfig, models: impl FnOnce(&str) -> String) -> Self {
        let (runtime, server) = start_server(config);
        let repo = TestRepo::new(&models(&server.base_url()));
        Self {
            server,
            repo,
            runtime,
        }
    }
}

impl Deref for ServedRepo {
    type Target = TestRepo;

    fn deref(&self) -> &TestRepo {
        &self.repo
    }
}

/// Quiet run arguments that tolerate up to half the records failing.
pub(crate) fn run_args() -> RunOptions {
    RunOptions {
        quiet: true,
        max_error_share: 0.5,
        ..RunOptions::default()
    }
}

/// Every line of a JSONL file, parsed (panics on a torn or invalid line, naming it).
pub(crate) fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: invalid JSON ({e}): {line}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}
