//! Review snapshots: one insta snapshot per dataset in `training/data/`, holding its statistics,
//! check results and a deterministic sample, so that a changed dataset shows up as a changed
//! snapshot to review (`cargo xtask review`) and, under CI, a missing or stale snapshot fails.

use std::path::Path;

use shaping::quality::{QualityConfig, ReviewSnapshot, Voice};

/// Samples kept in each snapshot.
const REVIEW_SAMPLES: usize = 12;

#[test]
fn dataset() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let voice = Voice::load(root).unwrap_or_else(|e| panic!("{e}"));
    let mut settings = insta::Settings::clone_current();
    // No datasets yet (or no data directory) is not a failure.
    settings.set_allow_empty_glob(true);
    settings.set_omit_expression(true);
    settings.set_description(
        "Unreviewed data: this dataset changed. Review it with `cargo xtask review` (or `cargo insta review`), accept, and commit tests/snapshots/.",
    );
    settings.bind(|| {
        insta::glob!("../training/data", "*.jsonl", |path| {
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            if file.ends_with(".errors.jsonl") {
                return;
            }
            let name = file.trim_end_matches(".jsonl");
            let manifest = path.with_file_name(format!("{name}.manifest.json"));
            let config = QualityConfig::from_manifest(&manifest)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_default();
            let snapshot = ReviewSnapshot::build(path, &config, &voice, REVIEW_SAMPLES)
                .unwrap_or_else(|e| panic!("{e}"));
            insta::assert_json_snapshot!(snapshot);
        });
    });
}

/// A snapshot whose dataset is gone is stale: delete it with the dataset.
#[test]
fn no_stale_snapshots() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(entries) = std::fs::read_dir(root.join("tests/snapshots")) else {
        return;
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(dataset) = file
            .strip_prefix("review__dataset@")
            .and_then(|f| f.strip_suffix(".snap"))
        else {
            continue;
        };
        if !root.join("training/data").join(dataset).is_file() {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "review snapshots without a dataset (delete them): {stale:?}"
    );
}
