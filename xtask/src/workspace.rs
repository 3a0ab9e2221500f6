//! The repository as xtask sees it: pipeline crates (via cargo_metadata), building them, describing and running their binaries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use anyhow::{Context, Result, bail};
use cargo_metadata::MetadataCommand;
use shaping::ShapingExitCode;
use shaping::description::Description;
use shaping::fingerprint::FileHasher;
use shaping::graph::Evaluated;
use shaping::manifest::State;
use shaping::models::{ModelsConfig, ProviderKind};
use shaping::schedule::Event;
use xshell::{Shell, cmd};

/// A pipeline crate found in the workspace.
#[derive(Debug, Clone)]
pub(crate) struct PipelineCrate {
    pub package: String,
    /// The crate's directory (where its Cargo.toml is).
    pub dir: PathBuf,
    pub binary: PathBuf,
}

pub(crate) struct Workspace {
    root: PathBuf,
    crates: Vec<PipelineCrate>,
}

impl Workspace {
    /// Find the repository the way cargo finds its workspace (`root` from `--root`, else
    /// `$SHAPING_ROOT`, else the nearest directory above the current one holding models.toml),
    /// never from where xtask was compiled, then its pipeline crates (packages under
    /// `pipelines/` with a binary) from cargo metadata run there.
    pub(crate) fn discover(root: Option<&Path>) -> Result<Self> {
        let root = shaping::repo::find_root_from(root)?;
        let metadata = MetadataCommand::new()
            .manifest_path(root.join("Cargo.toml"))
            .current_dir(&root)
            .no_deps()
            .exec()
            .map_err(|e| crate::exit::XtaskError::Metadata {
                root: root.display().to_string(),
                message: e.to_string(),
            })?;
        let pipelines_dir = root.join("pipelines");
        let target: PathBuf = metadata.target_directory.clone().into();
        let mut crates: Vec<PipelineCrate> = metadata
            .workspace_packages()
            .into_iter()
            .filter(|p| p.manifest_path.starts_with(&pipelines_dir))
            .filter_map(|p| {
                let bin = p.targets.iter().find(|t| t.is_bin())?;
                let dir: PathBuf = p.manifest_path.parent()?.to_owned().into();
                Some(PipelineCrate {
                    package: p.name.to_string(),
                    dir,
                    binary: target.join("debug").join(&bin.name),
                })
            })
            .collect();
        crates.sort_by(|a, b| a.package.cmp(&b.package));
        Ok(Self { root, crates })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Build every pipeline crate in one cargo invocation.
    pub(crate) fn build(&self, packages: &[&str]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        ensure_build_prerequisites()?;
        let args: Vec<String> = packages
            .iter()
            .flat_map(|p| ["-p".to_owned(), (*p).to_owned()])
            .collect();
        // The repository this build is for: compiled into the library and the pipelines, and
        // tracked by cargo, so a target directory shared with another clone is rebuilt for this
        // one (.cargo/config.toml sets the same for plain cargo commands). `cargo_command` leaves
        // out what `cargo run` set for xtask, so this reuses a shell's (or the tests') build.
        let status = shaping::repo::cargo_command()
            .args(["build", "--quiet"])
            .args(&args)
            .env("SHAPING_BUILD_REPO", &self.root)
            .current_dir(&self.root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            return Err(crate::exit::XtaskError::BuildFailed {
                packages: args.join(" "),
            }
            .into());
        }
        Ok(())
    }

    /// Build all pipelines and ask each binary for its declaration.
    pub(crate) fn describe_all(&self) -> Result<Vec<Description>> {
        let packages: Vec<&str> = self.crates.iter().map(|c| c.package.as_str()).collect();
        self.build(&packages)?;
        self.crates
            .iter()
            .map(|c| {
                let output = Command::new(&c.binary)
                    .arg("describe")
                    .env("SHAPING_ROOT", &self.root)
                    .output()
                    .with_context(|| format!("running {} describe", c.binary.display()))?;
                if !output.status.success() {
                    return Err(crate::exit::XtaskError::DescribeFailed {
                        package: c.package.clone(),
                        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    }
                    .into());
                }
                serde_json::from_slice(&output.stdout)
                    .with_context(|| format!("parsing the description of '{}'", c.package))
            })
            .collect()
    }

    pub(crate) fn evaluate(&self, pipelines: &[Description]) -> Result<Vec<Evaluated>> {
        let models = ModelsConfig::load(&self.root)?;
        let hasher = FileHasher::for_repo(&self.root);
        Ok(shaping::graph::evaluate(
            &self.root, pipelines, &models, &hasher,
        )?)
    }

    fn binary_of(&self, name: &str, pipelines: &[Description]) -> Result<PathBuf> {
        let d = pipelines
            .iter()
            .find(|d| d.name == name)
            .with_context(|| format!("no pipeline named '{name}'"))?;
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let crate_dir = canonical(&d.crate_dir);
        self.crates
            .iter()
            .find(|c| canonical(&c.dir) == crate_dir)
            .map(|c| c.binary.clone())
            .with_context(|| format!("no binary for pipeline '{name}'"))
    }

    fn spawn(&self, name: &str, args: &[String], share: usize, plain: bool) -> Result<Child> {
        let pipelines = self.describe_cached()?;
        let binary = self.binary_of(name, &pipelines)?;
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .args(args)
            .env("SHAPING_ROOT", &self.root)
            .env("SHAPING_BUDGET_SHARE", share.to_string());
        if plain {
            command.env("SHAPING_PLAIN_PROGRESS", "1");
        }
        command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))
    }

    /// Run a built pipeline binary with the given flags; returns its exit status.
    pub(crate) fn run_pipeline(
        &self,
        name: &str,
        args: &[String],
        share: usize,
        plain: bool,
    ) -> Result<ExitStatus> {
        Ok(self.spawn(name, args, share, plain)?.wait()?)
    }

    fn describe_cached(&self) -> Result<Vec<Description>> {
        // Binaries are already built by the caller; describing is cheap.
        self.crates
            .iter()
            .map(|c| {
                let output = Command::new(&c.binary)
                    .arg("describe")
                    .env("SHAPING_ROOT", &self.root)
                    .output()?;
                Ok(serde_json::from_slice(&output.stdout)?)
            })
            .collect()
    }

    /// Fetch missing local model files used by these pipelines (and check their hashes).
    pub(crate) fn ensure_models(&self, pipelines: &[Description]) -> Result<()> {
        let models = ModelsConfig::load(&self.root)?;
        let mut seen = BTreeSet::new();
        for d in pipelines {
            for alias in &d.models {
                let spec = models
                    .get(alias)
                    .with_context(|| format!("pipeline '{}'", d.name))?;
                if spec.provider == ProviderKind::LlamaCpp && seen.insert(spec.path.clone()) {
                    shaping::model_fetch::ensure_model_file(
                        &spec.alias,
                        spec.path.as_deref(),
                        spec.sha256.as_deref(),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Fetch/check the model file of every llama-cpp alias in models.toml (for the test suite).
    pub(crate) fn ensure_all_local_models(&self) -> Result<()> {
        let models = ModelsConfig::load(&self.root)?;
        let mut seen = BTreeSet::new();
        for alias in models.aliases() {
            let spec = models.get(alias)?;
            if spec.provider == ProviderKind::LlamaCpp && seen.insert(spec.path.clone()) {
                shaping::model_fetch::ensure_model_file(
                    &spec.alias,
                    spec.path.as_deref(),
                    spec.sha256.as_deref(),
                )?;
            }
        }
        Ok(())
    }

    /// `cargo xtask data`: regenerate what is not CURRENT, in dependency order. The exit code
    /// is OK, or the code of the first pipeline that failed.
    pub(crate) fn data(
        &self,
        selected: &[String],
        dry_run: bool,
        force: bool,
        jobs: usize,
        no_wait: bool,
    ) -> Result<i32> {
        let pipelines = self.describe_all()?;
        for name in selected {
            if !pipelines.iter().any(|d| &d.name == name) {
                return Err(crate::unknown_pipeline(name, &pipelines).into());
            }
        }
        let evaluated = self.evaluate(&pipelines)?;
        let plan = shaping::graph::plan(&evaluated, selected, force);
        let planned: BTreeSet<String> = plan.iter().map(|(e, _)| e.name.clone()).collect();
        if plan.is_empty() {
            println!("everything is CURRENT; nothing to do");
            return Ok(ShapingExitCode::OK);
        }
        for (e, level) in &plan {
            // Early cutoff: a pipeline planned only because an upstream runs waits for it and
            // runs only if that upstream's output changes.
            let own_reasons = e
                .status
                .reasons
                .iter()
                .any(|r| !r.starts_with("Input from pipeline "));
            let waits = *level > 0 && !own_reasons && !force;
            let why = if waits {
                format!(
                    "after {}, if its output changes",
                    e.upstream
                        .iter()
                        .filter(|u| planned.contains(*u))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if e.status.state == State::Current {
                "forced".to_owned()
            } else {
                e.status.to_string()
            };
            let verb = match (dry_run, waits) {
                (true, false) => "would regenerate",
                (true, true) => "would check",
                (false, false) => "regenerating",
                (false, true) => "will check",
            };
            println!("{verb} {}: {why}", e.name);
        }
        if dry_run {
            return Ok(ShapingExitCode::OK);
        }
        let running: Vec<Description> = plan
            .iter()
            .filter_map(|(e, _)| pipelines.iter().find(|d| d.name == e.name).cloned())
            .collect();
        self.ensure_models(&running)?;
        let models = ModelsConfig::load(&self.root)?;
        // A pipeline being generated by another run (another terminal) is waited for, or with
        // --no-wait fails at once; its binary holds the lock (shaping::lock).
        let mut runner = DataRunner {
            ws: self,
            pipelines: &pipelines,
            models,
            hasher: FileHasher::for_repo(&self.root),
            run_flags: if no_wait {
                vec!["--no-wait".to_owned()]
            } else {
                Vec::new()
            },
        };
        let outcome = shaping::schedule::regenerate(
            &mut runner,
            evaluated,
            selected,
            force,
            jobs,
            |event| match event {
                Event::Skipped(name) => eprintln!("skipping {name}: an input pipeline failed"),
                Event::Unchanged(name) => println!(
                    "{name}: output unchanged, byte for byte (only its manifest was rewritten)"
                ),
            },
        )?;
        if !outcome.failed.is_empty() {
            eprintln!(
                "failed: {} (their previous outputs were kept)",
                outcome.failed.join(", ")
            );
            return Ok(outcome.exit_code());
        }
        let (done, now) = (&outcome.done, &outcome.evaluated);
        for e in now.iter().filter(|e| planned.contains(&e.name)) {
            let cut_off = if done.contains(&e.name) {
                ""
            } else {
                " (not regenerated: its inputs came out unchanged)"
            };
            println!("{}: {}{cut_off}", e.name, e.status);
        }
        Ok(ShapingExitCode::OK)
    }

    /// Create `pipelines/<name>/` with a pipeline that builds and runs.
    pub(crate) fn scaffold(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || name.starts_with('-')
        {
            bail!("pipeline names use lowercase letters, digits and '-' (got '{name}')");
        }
        let dir = self.root.join("pipelines").join(name);
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        let models = ModelsConfig::load(&self.root)?;
        let alias = models
            .aliases()
            .next()
            .map(str::to_owned)
            .context("models.toml defines no model alias to start from")?;
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::write(
            dir.join("Cargo.toml"),
            SCAFFOLD_CARGO.replace("{name}", name),
        )?;
        let type_name: String = name
            .split('-')
            .map(|part| {
                let mut c = part.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        std::fs::write(
            dir.join("src").join("main.rs"),
            SCAFFOLD_MAIN
                .replace("{name}", name)
                .replace("{Type}", &type_name)
                .replace("{alias}", &alias),
        )?;
        Ok(dir)
    }
}

const SCAFFOLD_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[lints]
workspace = true

[dependencies]
shaping = { workspace = true, features = ["local-model"] }
serde.workspace = true
"#;

const SCAFFOLD_MAIN: &str = r#"//! {name}: describe what this pipeline generates.

use serde::Serialize;
use shaping::{Ctx, Declare, Message, ModelDep, Pipeline, PipelineError, Task, TrainingSample, model_request};

struct {Type} {
    model: ModelDep,
}

#[derive(Serialize)]
struct Record {
    id: String,
    prompt: String,
}

impl Pipeline for {Type} {
    const NAME: &'static str = "{name}";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        // Declare inputs with deps.file("name", "path/in/repo") so edits make the output STALE.
        Self { model: deps.model("{alias}") }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let records = ["Hello!", "What's your favorite thing about summer?", "Tell me about your day."]
            .iter()
            .enumerate()
            .map(|(i, p)| Record { id: format!("{name}-{i}"), prompt: (*p).to_owned() });
        ctx.run_task(records, |t: Task, record: Record| async move {
            let messages = vec![Message::user(record.prompt.clone())];
            let response = t.request(model_request(messages.clone(), &self.model).temperature(0.7)).await;
            let text = response.ok_text()?.to_owned();
            Ok(TrainingSample::new(record.id, vec![Message::user(record.prompt), Message::assistant(text)]))
        })
        .await
    }
}

shaping::pipeline_main!({Type});
"#;

/// cmake, clang and libclang are needed to build the in-process llama.cpp. Install them with
/// apt-get when missing and possible (root on Debian/Ubuntu), else say what to install.
pub(crate) fn ensure_build_prerequisites() -> Result<()> {
    let have = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let libclang = [
        "/usr/lib/llvm-14/lib",
        "/usr/lib/llvm-15/lib",
        "/usr/lib/llvm-16/lib",
        "/usr/lib/llvm-17/lib",
        "/usr/lib/llvm-18/lib",
        "/usr/lib/llvm-19/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ]
    .iter()
    .any(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libclang"))
        })
    });
    if have("cmake") && have("clang") && libclang {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(is_root && have("apt-get")) {
        bail!(
            "building the local model needs cmake, clang and libclang: install them (Debian/Ubuntu: `sudo apt-get install -y cmake clang libclang-dev`) and rerun"
        );
    }
    eprintln!("installing build prerequisites: apt-get install -y cmake clang libclang-dev");
    let sh = Shell::new()?;
    cmd!(sh, "apt-get update -qq")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    cmd!(sh, "apt-get install -y -qq cmake clang libclang-dev")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

/// `data`'s [`shaping::schedule::Runner`]: pipeline binaries started as processes.
struct DataRunner<'a> {
    ws: &'a Workspace,
    pipelines: &'a [Description],
    models: ModelsConfig,
    hasher: FileHasher,
    run_flags: Vec<String>,
}

impl shaping::schedule::Runner for DataRunner<'_> {
    type Error = anyhow::Error;

    fn evaluate(&mut self) -> Result<Vec<Evaluated>> {
        self.ws.evaluate(self.pipelines)
    }

    fn uses_local_model(&self, name: &str) -> bool {
        self.pipelines
            .iter()
            .filter(|d| d.name == name)
            .flat_map(|d| &d.models)
            .any(|alias| {
                self.models
                    .get(alias)
                    .is_ok_and(|spec| spec.provider == ProviderKind::LlamaCpp)
            })
    }

    fn output_hash(&self, name: &str) -> Option<String> {
        let output = &self.pipelines.iter().find(|d| d.name == name)?.output;
        self.hasher.hash_file(&self.ws.root.join(output)).ok()
    }

    fn run(&mut self, names: &[&str]) -> Vec<i32> {
        let share = names.len();
        let children: Vec<(&str, Result<Child>)> = names
            .iter()
            .map(|name| {
                (
                    *name,
                    self.ws.spawn(name, &self.run_flags, share, share > 1),
                )
            })
            .collect();
        children
            .into_iter()
            .map(|(name, child)| {
                child
                    .and_then(|mut c| Ok(c.wait()?))
                    .map(crate::exit::code_of_child)
                    .unwrap_or_else(|e| {
                        eprintln!("{name}: {e:#}");
                        ShapingExitCode::UNEXPECTED
                    })
            })
            .collect()
    }
}
