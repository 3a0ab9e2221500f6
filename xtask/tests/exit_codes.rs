//! The exit-code contract (`ShapingExitCode`), seen from the outside: `cargo xtask` in a repository without pipelines.

mod common;

use std::path::Path;
use std::process::Command;

use shaping::ShapingExitCode;

use common::empty_repo;

/// Run `cargo xtask ARGS` in `cwd`; its exit code and stderr.
fn xtask(cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SHAPING_ROOT")
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().expect("exited"), stderr)
}

#[test]
fn each_failure_class_has_its_own_code() {
    let repo = empty_repo();
    let root = repo.path();

    // Everything CURRENT (there is nothing): OK.
    let (code, stderr) = xtask(root, &["status", "--check"]);
    assert_eq!(code, ShapingExitCode::OK, "{stderr}");

    // An unknown flag, an unknown pipeline: USAGE.
    let (code, _) = xtask(root, &["status", "--no-such-flag"]);
    assert_eq!(code, ShapingExitCode::USAGE);
    let (code, stderr) = xtask(root, &["run", "nosuch"]);
    assert_eq!(code, ShapingExitCode::USAGE, "{stderr}");
    assert!(stderr.contains("no pipeline named 'nosuch'"), "{stderr}");

    // export: an unknown --format names the flag and its values; an unknown pipeline; --push
    // with a JSONL format: USAGE.
    let (code, stderr) = xtask(root, &["export", "x", "--format", "csv"]);
    assert_eq!(code, ShapingExitCode::USAGE, "{stderr}");
    assert!(
        stderr.contains("invalid value 'csv' for '--format <FORMAT>'")
            && stderr.contains("trl, openai, sharegpt, parquet"),
        "{stderr}"
    );
    let (code, stderr) = xtask(root, &["export", "nosuch", "--format", "trl"]);
    assert_eq!(code, ShapingExitCode::USAGE, "{stderr}");
    assert!(stderr.contains("no pipeline named 'nosuch'"), "{stderr}");
    let (code, stderr) = xtask(root, &["export", "x", "--format", "trl", "--push", "me/x"]);
    assert_eq!(code, ShapingExitCode::USAGE, "{stderr}");
    assert!(
        stderr.contains("--push uploads the Parquet export"),
        "{stderr}"
    );

    // Chat JSONL that checks but fails: CHECKS_FAILED.
    let failing = root.join("failing.jsonl");
    let line = r#"{"id":"a","messages":[{"role":"user","content":"Hi?"},{"role":"assistant","content":"I am an AI language model."}]}"#;
    std::fs::write(&failing, format!("{line}\n")).unwrap();
    let (code, stderr) = xtask(root, &["check", "--file", failing.to_str().unwrap()]);
    assert_eq!(code, ShapingExitCode::CHECKS_FAILED, "{stderr}");

    // A file that is not chat JSONL: SETUP_ERROR, naming the file and line.
    let malformed = root.join("malformed.jsonl");
    std::fs::write(&malformed, "{\"id\": 1}\nnot json\n").unwrap();
    let (code, stderr) = xtask(root, &["check", "--file", malformed.to_str().unwrap()]);
    assert_eq!(code, ShapingExitCode::SETUP_ERROR, "{stderr}");
    assert!(stderr.contains("malformed.jsonl:1"), "{stderr}");

    // No repository (no models.toml above the current directory): SETUP_ERROR.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, stderr) = xtask(elsewhere.path(), &["status"]);
    assert_eq!(code, ShapingExitCode::SETUP_ERROR, "{stderr}");
    assert!(stderr.contains("models.toml"), "{stderr}");

    // A models.toml that does not parse: SETUP_ERROR naming the file.
    std::fs::write(root.join("models.toml"), "[models.x]\nprovider = 3\n").unwrap();
    let (code, stderr) = xtask(root, &["status"]);
    assert_eq!(code, ShapingExitCode::SETUP_ERROR, "{stderr}");
    assert!(stderr.contains("models.toml"), "{stderr}");
}
