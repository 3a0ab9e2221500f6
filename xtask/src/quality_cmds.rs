//! `cargo xtask sample|check|report|review`: the quality gate's commands, as plain functions that
//! take already-parsed arguments (the clap CLI lives in `main.rs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use shaping::quality::{self, QualityConfig, Voice};

/// A dataset as found by pipeline discovery.
#[derive(Debug, Clone)]
pub(crate) struct DatasetInfo {
    /// The pipeline's name (`training/data/<name>.jsonl`).
    pub name: String,
    /// The dataset file.
    pub output: PathBuf,
    /// The manifest file beside it.
    pub manifest: PathBuf,
    /// The pipeline's declared quality config.
    pub quality: QualityConfig,
}

/// Default number of samples of `cargo xtask sample`.
pub(crate) const DEFAULT_SAMPLE_N: usize = 10;

/// `cargo xtask sample <name> [-n N] [--full] [--seed S]`: print `n` random samples; without a seed,
/// one is taken from the clock and printed so the same sample can be shown again.
pub(crate) fn sample_cmd(
    dataset: &DatasetInfo,
    n: usize,
    full: bool,
    seed: Option<u64>,
) -> Result<()> {
    ensure_built(dataset)?;
    let seed = seed.unwrap_or_else(seed_from_clock);
    let text = quality::sample(&dataset.output, n, seed, full)?;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = stdout.write_all(text.as_bytes());
    Ok(())
}

/// What `cargo xtask check` prints besides the failing checks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CheckOutput {
    /// Machine-readable output.
    pub json: bool,
    /// List every failing sample with its reasons.
    pub samples: bool,
}

/// `cargo xtask check [names...] [--json] [--samples]`: run the quality checks of each dataset.
/// Prints every failing check with its example ids, what to do and any loosened threshold with
/// its reason; with `samples`, every failing sample with its reasons (or, with `json`, one JSON
/// object keyed by dataset name). With `training_set`, also checks all datasets together against
/// [`quality::TRAINING_SET_MIN_SAMPLES`]. Returns whether everything passed; a dataset that is not
/// built fails.
pub(crate) fn check_cmd(
    datasets: &[DatasetInfo],
    output: CheckOutput,
    repo_root: &Path,
    training_set: bool,
) -> Result<bool> {
    let voice = Voice::load(repo_root)?;
    let mut all_passed = true;
    let mut json_out = serde_json::Map::new();
    let mut total_samples = 0u64;
    let mut built = 0usize;
    for dataset in datasets {
        if !dataset.output.is_file() {
            all_passed = false;
            if output.json {
                json_out.insert(
                    dataset.name.clone(),
                    serde_json::json!({ "passed": false, "error": "not built" }),
                );
            } else {
                println!(
                    "✗ {}: not built ({} is missing)",
                    dataset.name,
                    dataset.output.display()
                );
                println!("  → run `cargo xtask data {}` first", dataset.name);
            }
            continue;
        }
        built += 1;
        let declared = effective_config(dataset)?;
        let (config, config_error) = enforced_config(&declared);
        if config_error.is_some() {
            all_passed = false;
        }
        let mut failing = Vec::new();
        let (stats, report) = quality::analyze_each(&dataset.output, &config, &voice, |s| {
            if output.samples && !s.verdict.passed() {
                failing.push((s.id.clone(), s.verdict.reasons()));
            }
        })
        .with_context(|| format!("checking dataset {}", dataset.name))?;
        total_samples += stats.samples;
        all_passed &= report.passed;
        if output.json {
            let mut value = serde_json::to_value(&report)?;
            if let Some(error) = &config_error {
                value["config_error"] = serde_json::Value::String(error.clone());
            }
            if output.samples {
                value["failing"] = failing
                    .iter()
                    .map(|(id, reasons)| serde_json::json!({ "id": id, "reasons": reasons }))
                    .collect();
            }
            json_out.insert(dataset.name.clone(), value);
            continue;
        }
        print_report(&dataset.name, &stats, &report, config_error.as_deref());
        if output.samples {
            print_failing(&failing);
        }
        if !report.passed {
            println!(
                "  look at samples with `cargo xtask check {0} --samples` or `cargo xtask sample {0}`, or open the report from `cargo xtask report {0}`",
                dataset.name
            );
        }
    }
    // The deterministic checks cannot tell sense from nonsense: say so whenever no judge has
    // scored a dataset, so a pass is never read as "fit for training".
    let unjudged: Vec<&str> = datasets
        .iter()
        .filter(|d| d.output.is_file())
        .filter(|d| !matches!(shaping::judge::from_manifest(&d.manifest), Ok(Some(_))))
        .map(|d| d.name.as_str())
        .collect();
    if !output.json && !unjudged.is_empty() {
        println!(
            "  coherence not judged ({}): these checks catch loops, contradictions, echoes and garbage, not nonsense; read samples (`cargo xtask sample NAME`) or score them with `cargo xtask check --judge` and a hosted judge",
            unjudged.join(", ")
        );
    }
    if training_set {
        let check = quality::training_set_check(total_samples, built);
        all_passed &= check.passed;
        if output.json {
            json_out.insert("training_set".to_owned(), serde_json::to_value(&check)?);
        } else {
            print_check_line(&check, "training set");
        }
    }
    if output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(json_out))?
        );
    }
    Ok(all_passed)
}

/// `cargo xtask check --file PATH [--json] [--samples]`: check any JSONL of conversations
/// (lines with `messages`) or preference pairs (`prompt`, `chosen`, `rejected`), `id` optional,
/// with the default thresholds and `identity/voice.toml`, treating the
/// file as a whole training set. With `json`, prints one JSON object per sample
/// (`{"id", "verdict", "reasons", "markers"}`) and then one line with the dataset-level results.
/// Returns whether everything passed.
pub(crate) fn check_file_cmd(path: &Path, output: CheckOutput, repo_root: &Path) -> Result<bool> {
    let voice = Voice::load(repo_root)?;
    let config = QualityConfig::default();
    let mut failing = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let (stats, report) = quality::analyze_chat_file(path, &config, &voice, |s| {
        if output.json {
            let line = serde_json::json!({
                "id": s.id,
                "verdict": if s.verdict.passed() { "pass" } else { "fail" },
                "reasons": s.verdict.reasons(),
                "markers": s.verdict.markers,
            });
            if let Err(e) = writeln!(stdout, "{line}") {
                write_error.get_or_insert(e);
            }
        } else if output.samples && !s.verdict.passed() {
            failing.push((s.id.clone(), s.verdict.reasons()));
        }
    })
    .with_context(|| format!("checking {}", path.display()))?;
    // A closed pipe (`| head`) is not an error worth reporting.
    drop(write_error);
    let training_set = quality::training_set_check(stats.samples, 1);
    let passed = report.passed && training_set.passed;
    let name = quality::dataset_name(path);
    if output.json {
        let mut value = serde_json::to_value(&report)?;
        value["dataset"] = serde_json::Value::String(name);
        value["passed"] = serde_json::Value::Bool(passed);
        value["training_set"] = serde_json::to_value(&training_set)?;
        let _ = writeln!(stdout, "{value}");
        return Ok(passed);
    }
    drop(stdout);
    print_report(&name, &stats, &report, None);
    if output.samples {
        print_failing(&failing);
    }
    print_check_line(&training_set, "training set (the whole file)");
    Ok(passed)
}

/// The config to enforce: `declared` when it validates; otherwise `declared` with every
/// loosening that lacks a reason put back to its default, and the validation error.
fn enforced_config(declared: &QualityConfig) -> (QualityConfig, Option<String>) {
    match declared.validate() {
        Ok(()) => (declared.clone(), None),
        Err(e) => (
            declared.with_unjustified_loosenings_reset(),
            Some(e.to_string()),
        ),
    }
}

fn print_report(
    name: &str,
    stats: &quality::DatasetStats,
    report: &quality::CheckReport,
    config_error: Option<&str>,
) {
    if let Some(error) = config_error {
        println!("✗ {name}: invalid {error}");
        println!(
            "  → thresholds loosened without a reason are checked at their defaults; add the reason in the pipeline's quality config"
        );
    }
    let failed: Vec<_> = report.failures().collect();
    if failed.is_empty() {
        println!(
            "✓ {name}: all {} checks passed ({} samples, {} errors)",
            report.checks.len(),
            stats.samples,
            stats.errors
        );
    } else {
        println!(
            "✗ {name}: {} of {} checks failed ({} samples, {} failing a detector)",
            failed.len(),
            report.checks.len(),
            stats.samples,
            report.failing_samples
        );
    }
    if let Some(turns) = &stats.turns {
        println!(
            "  exchanges per conversation: min {}, mean {}, max {} ({} conversations)",
            turns.min, turns.mean, turns.max, turns.conversations
        );
    }
    if let Some(pairs) = &stats.pairs {
        println!(
            "  pairs: chosen − rejected {:+} voice markers, {:+} words on average; chosen ahead in markers in {:.1}% of {} pairs",
            pairs.marker_margin,
            pairs.word_margin,
            pairs.chosen_more_markers * 100.0,
            pairs.pairs
        );
    }
    for check in &report.checks {
        if !check.passed {
            println!("  ✗ {}: {}", check.name, check.message);
            if !check.example_ids.is_empty() {
                println!("      e.g. {}", check.example_ids.join(", "));
            }
            println!("      → {}", check.advice());
        }
        for loosening in &check.loosened {
            println!(
                "  {} {}: {loosening}",
                if check.passed { "~" } else { " " },
                check.name
            );
        }
    }
}

fn print_failing(failing: &[(String, Vec<String>)]) {
    if failing.is_empty() {
        println!("  no sample fails a detector");
        return;
    }
    println!("  failing samples ({}):", failing.len());
    for (id, reasons) in failing {
        println!("    {id}");
        for reason in reasons {
            println!("      - {reason}");
        }
    }
}

fn print_check_line(check: &quality::CheckResult, label: &str) {
    println!(
        "{} {label}: {}",
        if check.passed { "✓" } else { "✗" },
        check.message
    );
    if !check.passed {
        println!("  → {}", check.advice());
    }
}

/// `cargo xtask report [names...] [--out DIR]`: write `<out_dir>/<name>.html` for each built
/// dataset (default `out_dir`: `training/report`). Returns the files written.
pub(crate) fn report_cmd(datasets: &[DatasetInfo], out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut written = Vec::new();
    for dataset in datasets {
        if !dataset.output.is_file() {
            eprintln!(
                "skipping {}: not built ({} is missing)",
                dataset.name,
                dataset.output.display()
            );
            continue;
        }
        let (config, config_error) = enforced_config(&effective_config(dataset)?);
        if let Some(error) = config_error {
            eprintln!(
                "{}: invalid {error}; checking loosened thresholds at their defaults",
                dataset.name
            );
        }
        let voice = match dataset_repo_root(dataset) {
            Some(root) => Voice::load(&root)?,
            None => Voice::default(),
        };
        let (stats, report) = quality::analyze(&dataset.output, &config, &voice)
            .with_context(|| format!("analyzing dataset {}", dataset.name))?;
        let detectors = quality::Detectors::new(&voice, &config)?;
        // The stats pass already validated every line, so a read error here means the file changed.
        let mut read_error = None;
        let samples = quality::judged_samples(&dataset.output, &detectors)?
            .map_while(|item| item.map_err(|e| read_error = Some(e)).ok());
        let html = quality::render_report(&dataset.name, &stats, &report, samples);
        let html = crate::judge_cmd::add_judge_section(html, &dataset.manifest)?;
        if let Some(e) = read_error {
            return Err(e).with_context(|| format!("reading dataset {}", dataset.name));
        }
        let path = out_dir.join(format!("{}.html", dataset.name));
        std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{} {}",
            if report.passed { "✓" } else { "✗" },
            path.display()
        );
        written.push(path);
    }
    if written.is_empty() && !datasets.is_empty() {
        bail!("no dataset is built; run `cargo xtask data` first");
    }
    Ok(written)
}

/// `cargo xtask review`: run the review snapshots (`tests/review.rs`) writing new or changed
/// snapshots as `.snap.new`, then open `cargo insta review` when cargo-insta is installed (else
/// say how to install it or accept everything). Returns whether the snapshots were already up to date.
pub(crate) fn review_cmd(repo_root: &Path) -> Result<bool> {
    let status = shaping::repo::cargo_command()
        .current_dir(repo_root)
        .args(["test", "--quiet", "--test", "review"])
        .env("INSTA_UPDATE", "new")
        .env("INSTA_FORCE_PASS", "1")
        .env_remove("CI")
        .status()
        .context("running cargo test --test review")?;
    if !status.success() {
        bail!("`cargo test --test review` failed (see above)");
    }
    let snapshots = repo_root.join("tests/snapshots");
    for stale in stale_snapshots(repo_root, &snapshots) {
        println!(
            "stale review snapshot (its dataset is gone), deleting: {}",
            stale.display()
        );
        std::fs::remove_file(&stale).with_context(|| format!("deleting {}", stale.display()))?;
    }
    let pending = pending_snapshots(&snapshots);
    if pending.is_empty() {
        println!("review snapshots are up to date: nothing to review");
        return Ok(true);
    }
    println!("{} review snapshot(s) new or changed:", pending.len());
    for path in &pending {
        println!(
            "  {}",
            path.strip_prefix(repo_root).unwrap_or(path).display()
        );
    }
    let has_insta = shaping::repo::cargo_command()
        .args(["insta", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_insta {
        let status = shaping::repo::cargo_command()
            .current_dir(repo_root)
            .args(["insta", "review"])
            .status()
            .context("running cargo insta review")?;
        if !status.success() {
            bail!("`cargo insta review` failed");
        }
    } else {
        println!("cargo-insta is not installed; read the .snap.new files above, then either:");
        println!(
            "  accept all:  INSTA_UPDATE=always cargo test --test review && rm -f tests/snapshots/*.snap.new"
        );
        println!("  reject all:  rm -f tests/snapshots/*.snap.new");
        println!(
            "or install it to review one by one: cargo install cargo-insta --locked && cargo xtask review"
        );
    }
    Ok(false)
}

/// The dataset's quality config: the manifest's `quality` field when it has one (what the data
/// were built with), else the pipeline's declared config.
fn effective_config(dataset: &DatasetInfo) -> Result<QualityConfig> {
    Ok(QualityConfig::from_manifest(&dataset.manifest)?.unwrap_or_else(|| dataset.quality.clone()))
}

fn ensure_built(dataset: &DatasetInfo) -> Result<()> {
    if !dataset.output.is_file() {
        bail!(
            "dataset {} is not built ({} is missing); run `cargo xtask data {}`",
            dataset.name,
            dataset.output.display(),
            dataset.name
        );
    }
    Ok(())
}

fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Short seeds are easier to retype.
    (nanos % 1_000_000_007) as u64
}

/// The repository root of a dataset at `<root>/training/data/<name>.jsonl`.
fn dataset_repo_root(dataset: &DatasetInfo) -> Option<PathBuf> {
    let data = dataset.output.parent()?;
    let training = data.parent()?;
    let root = training.parent()?;
    (data.file_name()? == "data" && training.file_name()? == "training").then(|| root.to_path_buf())
}

/// Review snapshots (`review__dataset@<file>.snap`) whose dataset file no longer exists.
fn stale_snapshots(repo_root: &Path, snapshots: &Path) -> Vec<PathBuf> {
    let data = repo_root.join("training/data");
    let Ok(entries) = std::fs::read_dir(snapshots) else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            file.strip_prefix("review__dataset@")
                .and_then(|f| f.strip_suffix(".snap"))
                .is_some_and(|dataset| !data.join(dataset).is_file())
        })
        .collect();
    stale.sort();
    stale
}

fn pending_snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut pending: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "new"))
                .collect()
        })
        .unwrap_or_default();
    pending.sort();
    pending
}
