//! Commands act on the repository they are started in: two small repositories sharing one target directory (one with older files, one a copy with kept modification times).
//!
//! Each repository is a tiny workspace with one pipeline crate (`probe`) that depends on this
//! repository's `shaping` library by path without default features (no llama.cpp), built into
//! the same target directory as the test itself so only the library and `probe` compile. The
//! `probe` pipeline writes one sample per input line, tagged with a marker of its own code, so
//! an output shows which code ran on which inputs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

/// This repository (the workspace root above `xtask/`).
fn this_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

/// The target directory of this test run, shared by every build of the test.
fn shared_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                this_repo().join(t)
            }
        })
        .unwrap_or_else(|| this_repo().join("target"))
}

const PROBE_MAIN: &str = r#"//! probe: one sample per line of inputs/words.txt, tagged with this code's marker.

use shaping::{Ctx, Declare, FileDep, Message, Pipeline, PipelineError, TrainingSample};

const CODE: &str = "{marker}";

struct Probe {
    words: FileDep,
}

impl Pipeline for Probe {
    const NAME: &'static str = "probe";

    type Sample = TrainingSample;

    fn declare(deps: &mut Declare) -> Self {
        Self { words: deps.file("words", "inputs/words.txt") }
    }

    async fn run(&self, _ctx: &Ctx) -> Result<Vec<TrainingSample>, PipelineError> {
        let text = self.words.read()?;
        Ok(text
            .lines()
            .enumerate()
            .map(|(i, word)| {
                TrainingSample::new(
                    format!("probe-{i}"),
                    vec![Message::user(word.to_owned()), Message::assistant(format!("{CODE}: {word}"))],
                )
            })
            .collect())
    }
}

shaping::pipeline_main!(Probe);
"#;

/// The `[profile.*]` tables of this repository's Cargo.toml, copied rather than restated: a
/// profile that differs by one setting makes cargo rebuild every dependency for the test
/// repositories (it once cost this test five minutes in CI).
fn profiles_of_this_repo() -> String {
    let text = std::fs::read_to_string(this_repo().join("Cargo.toml")).unwrap();
    let mut profiles = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[profile.");
        }
        if inside && !line.starts_with('#') {
            profiles.push_str(line);
            profiles.push('\n');
        }
    }
    assert!(
        profiles.contains("[profile.dev"),
        "no dev profile in Cargo.toml"
    );
    profiles
}

/// Write a tiny repository at `dir`: workspace, lock file and cargo config of this repository,
/// a model alias (never called), the `probe` crate with `marker` in its code, and `words`.
fn write_repo(dir: &Path, marker: &str, words: &str) {
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    // The same profiles as this workspace, so the library's dependencies are shared, not rebuilt.
    write(
        "Cargo.toml",
        &format!(
            "[workspace]\nmembers = [\"pipelines/*\"]\nresolver = \"3\"\n\n{}",
            profiles_of_this_repo()
        ),
    );
    write(
        "Cargo.lock",
        &std::fs::read_to_string(this_repo().join("Cargo.lock")).unwrap(),
    );
    write(
        ".cargo/config.toml",
        &std::fs::read_to_string(this_repo().join(".cargo/config.toml")).unwrap(),
    );
    write(
        "models.toml",
        "[models.m]\nprovider = \"openai\"\nmodel = \"never-called\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    );
    write("inputs/words.txt", words);
    write(
        "pipelines/probe/Cargo.toml",
        &format!(
            "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nshaping = {{ path = {:?}, default-features = false }}\n",
            this_repo().display().to_string()
        ),
    );
    write(
        "pipelines/probe/src/main.rs",
        &PROBE_MAIN.replace("{marker}", marker),
    );
}

/// Every file below `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    files
}

/// Set the modification time of every file below `dir` to `time`.
fn age_files(dir: &Path, time: SystemTime) {
    for rel in snapshot(dir).keys() {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(rel))
            .unwrap();
        file.set_modified(time).unwrap();
    }
}

/// `cp -a`: copy `from` to `to` keeping modification times.
fn copy_keeping_times(from: &Path, to: &Path) {
    for rel in snapshot(from).keys() {
        let (src, dst) = (from.join(rel), to.join(rel));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
        let modified = std::fs::metadata(&src).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&dst)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
}

/// Run a program with `cwd` as current directory, the shared target directory, offline, and
/// without any root from the environment.
fn run_in(cwd: &Path, program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", shared_target())
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("SHAPING_ROOT")
        .env_remove("SHAPING_BUILD_REPO")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

/// `cargo xtask ARGS` started in `cwd` (the xtask binary of this test run).
fn xtask(cwd: &Path, args: &[&str]) -> String {
    let out = run_in(cwd, Path::new(env!("CARGO_BIN_EXE_xtask")), args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xtask {args:?} in {} failed: {stderr}",
        cwd.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn probe_binary() -> PathBuf {
    shared_target().join("debug").join("probe")
}

/// The assistant texts of a repository's probe output.
fn answers(repo: &Path) -> Vec<String> {
    std::fs::read_to_string(repo.join("training/data/probe.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["messages"][1]["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn manifest_code_hash(repo: &Path) -> String {
    let text = std::fs::read_to_string(repo.join("training/data/probe.manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["code_hash"].as_str().unwrap().to_owned()
}

fn code_hash_of(repo: &Path) -> String {
    shaping::fingerprint::code_hash(
        repo,
        &repo.join("pipelines/probe"),
        &shaping::fingerprint::FileHasher::uncached(),
    )
    .unwrap()
}

/// The probe binary as it is in the shared target directory, started in `cwd`, must refuse to
/// describe or run there because it was built from `built_from`, and change nothing.
fn assert_refuses_foreign_build(cwd: &Path, built_from: &Path) {
    let before = snapshot(cwd);
    for args in [&["describe"][..], &["run", "--quiet"][..]] {
        let out = run_in(cwd, &probe_binary(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "probe {args:?} built from {} ran in {}",
            built_from.display(),
            cwd.display()
        );
        assert!(
            stderr.contains(&built_from.display().to_string()) && stderr.contains("cargo xtask"),
            "the error names the repository it was built from and how to rebuild: {stderr}"
        );
    }
    assert_eq!(before, snapshot(cwd), "a refused run changes nothing");
}

#[test]
fn every_command_acts_on_the_repository_it_was_started_in() {
    let temp = tempfile::tempdir().unwrap();
    let base = temp.path().canonicalize().unwrap();
    let (a, b, c) = (base.join("a"), base.join("b"), base.join("c"));

    // B: built first.
    write_repo(&b, "code-B", "bravo\nbeta\n");
    xtask(&b, &["data"]);
    assert_eq!(answers(&b), ["code-B: bravo", "code-B: beta"]);
    assert_eq!(manifest_code_hash(&b), code_hash_of(&b));
    let b_files = snapshot(&b);

    // A: other code and inputs, every file older than B's build (cargo alone would reuse B's binary).
    write_repo(&a, "code-A", "alpha\nalef\naleph\n");
    age_files(&a, SystemTime::now() - Duration::from_secs(3600));
    assert_refuses_foreign_build(&a, &b);
    let listed = xtask(&a, &["list"]);
    assert!(
        listed.contains("probe") && listed.contains("inputs/words.txt"),
        "{listed}"
    );
    assert!(xtask(&a, &["status"]).contains("MISSING"));
    xtask(&a, &["data"]);
    assert_eq!(
        answers(&a),
        ["code-A: alpha", "code-A: alef", "code-A: aleph"],
        "A's code ran on A's inputs"
    );
    assert_eq!(manifest_code_hash(&a), code_hash_of(&a));
    assert_ne!(code_hash_of(&a), code_hash_of(&b));
    assert!(xtask(&a, &["status"]).contains("CURRENT"));
    xtask(&a, &["run", "probe", "--quiet", "--limit", "1"]);
    assert_eq!(answers(&a), ["code-A: alpha"]);
    assert!(a.join(".shaping/cache/probe.redb").is_file());
    assert!(xtask(&a, &["cache", "--clear", "probe"]).contains("cleared probe"));
    assert!(!a.join(".shaping/cache/probe.redb").exists());
    assert!(b.join(".shaping/cache/probe.redb").is_file());
    assert_eq!(b_files, snapshot(&b), "commands in A left B byte-identical");

    // C: a copy of B keeping modification times; the binary in the target is now A's.
    copy_keeping_times(&b, &c);
    assert_refuses_foreign_build(&c, &a);
    std::fs::write(c.join("inputs/words.txt"), "charlie\n").unwrap();
    assert!(xtask(&c, &["status"]).contains("STALE"));
    xtask(&c, &["data"]);
    assert_eq!(
        answers(&c),
        ["code-B: charlie"],
        "C's code ran on C's inputs"
    );
    assert_eq!(manifest_code_hash(&c), code_hash_of(&c));
    let a_files = snapshot(&a);
    assert_eq!(b_files, snapshot(&b), "commands in C left B byte-identical");

    // Started in a subdirectory, or pointed elsewhere with --root, like cargo.
    let from_subdir = xtask(&c.join("pipelines/probe/src"), &["status"]);
    assert!(from_subdir.contains("probe: CURRENT"), "{from_subdir}");
    xtask(&c, &["--root", a.to_str().unwrap(), "new", "extra"]);
    assert!(a.join("pipelines/extra/src/main.rs").is_file());
    assert!(!b.join("pipelines/extra").exists() && !c.join("pipelines/extra").exists());
    std::fs::remove_dir_all(a.join("pipelines/extra")).unwrap();
    assert_eq!(
        a_files,
        snapshot(&a),
        "only `new` wrote to A, and only its crate"
    );
    xtask(&b, &["new", "extra"]);
    assert!(b.join("pipelines/extra/src/main.rs").is_file());
    assert!(!a.join("pipelines/extra").exists() && !c.join("pipelines/extra").exists());

    // A closed stdout ends a pipeline binary quietly (the binary is C's build, run in C).
    assert_quiet_on_closed_stdout(&c, &probe_binary(), &["describe"]);
}

/// Start `program ARGS` in `cwd` with its stdout a pipe whose reading end is already closed: it
/// must exit with status 141 (as after SIGPIPE) and print no panic or backtrace. (Closing the
/// reading end after the start would race: a fast child fills the pipe's buffer first and
/// exits 0.)
fn assert_quiet_on_closed_stdout(cwd: &Path, program: &Path, args: &[&str]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", shared_target())
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("SHAPING_ROOT")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(141),
        "{program:?} {args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn xtask_exits_quietly_on_a_closed_stdout() {
    // A repository whose cargo workspace has no pipelines: `cache` prints without building.
    let repo = common::empty_repo();
    let root = repo.path();
    assert_quiet_on_closed_stdout(root, Path::new(env!("CARGO_BIN_EXE_xtask")), &["cache"]);
}
