//! `cargo xtask check --judge`: score every sample with a judge model (`shaping::judge`), show the cost first, record the scores in the manifest and gate on `min_judge_score`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use shaping::judge::{self, JudgeOptions, JudgePlan};
use shaping::models::ProviderKind;
use shaping::quality::QualityConfig;

use crate::quality_cmds::DatasetInfo;

/// Lowest-scoring samples printed per dataset (the manifest and the report keep more).
const LOWEST_PRINTED: usize = 5;

/// Judge each built dataset with model alias `alias`. Prints the requests and estimated cost
/// before sending, then the scores, each sample the judge could not score, and the gate.
/// Human output goes to stdout, or to stderr with `json` (stdout then carries only the checks'
/// JSON; the scores are in the manifests). Returns whether every dataset passed its
/// `min_judge_score` (a dataset without one passes).
pub(crate) fn judge_cmd(
    datasets: &[DatasetInfo],
    root: &Path,
    alias: &str,
    json: bool,
) -> Result<bool> {
    let mut out: Box<dyn Write> = if json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let options = JudgeOptions {
        alias: alias.to_owned(),
        ..JudgeOptions::default()
    };
    let mut all_passed = true;
    for dataset in datasets {
        if !dataset.output.is_file() {
            writeln!(out, "judge: skipping {} (not built)", dataset.name)?;
            continue;
        }
        let plan = JudgePlan::prepare(root, &dataset.output, &options)
            .with_context(|| format!("judging dataset {}", dataset.name))?;
        if plan.spec().provider == ProviderKind::LlamaCpp {
            bail!(
                "model alias '{alias}' is the offline local model ({}), which cannot judge: point '{alias}' \
                 (or another alias, with --judge-model) at a hosted model in models.local.toml; \
                 see \"Judging samples\" in README.md",
                plan.spec().model
            );
        }
        writeln!(out, "{}: {}", dataset.name, plan.estimate())?;
        out.flush()?;
        let outcome = plan
            .run()
            .with_context(|| format!("judging dataset {}", dataset.name))?;
        let summary = &outcome.summary;
        for judgement in &outcome.judgements {
            if let Err(error) = &judgement.result {
                writeln!(out, "  ✗ sample '{}': {error}", judgement.id)?;
            }
        }
        match (&summary.means, summary.overall_mean) {
            (Some(means), Some(overall)) => {
                let per_criterion: Vec<String> = judge::Criterion::ALL
                    .iter()
                    .map(|c| format!("{c} {:.2}", means.get(*c)))
                    .collect();
                writeln!(
                    out,
                    "  judge scores ({} of {} samples): {} · overall {overall:.2}",
                    summary.scored,
                    summary.samples,
                    per_criterion.join(" · ")
                )?;
            }
            _ => writeln!(
                out,
                "  judge scores: none of {} samples could be scored",
                summary.samples
            )?,
        }
        for low in summary.lowest.iter().take(LOWEST_PRINTED) {
            writeln!(out, "    low: {} ({:.2}): {}", low.id, low.mean, low.reason)?;
        }
        let cost = outcome
            .cost_usd
            .map(|c| format!(", cost ${c:.4}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {} requests sent, {} samples answered from the cache{cost}",
            outcome.requests_sent, outcome.cache_hits
        )?;
        judge::record_in_manifest(&dataset.manifest, summary)
            .with_context(|| format!("recording judge scores of {}", dataset.name))?;
        writeln!(out, "  scores recorded in {}", dataset.manifest.display())?;
        let config = QualityConfig::from_manifest(&dataset.manifest)?
            .unwrap_or_else(|| dataset.quality.clone());
        if let Some(min_score) = config.min_judge_score {
            let failures = summary.gate(min_score);
            if failures.is_empty() {
                writeln!(
                    out,
                    "✓ {}: every judge criterion mean is at least {min_score}",
                    dataset.name
                )?;
            } else {
                all_passed = false;
                writeln!(out, "✗ {}: judge gate failed", dataset.name)?;
                for failure in failures {
                    writeln!(out, "  ✗ {failure}")?;
                }
                writeln!(
                    out,
                    "      → read the lowest samples in `cargo xtask report {}`, fix the prompts or the pipeline, regenerate",
                    dataset.name
                )?;
            }
        }
    }
    Ok(all_passed)
}

/// A quality report page with the judge section added, when the dataset's manifest holds judge
/// scores.
pub(crate) fn add_judge_section(page: String, manifest: &Path) -> Result<String> {
    Ok(match judge::from_manifest(manifest)? {
        Some(summary) => judge::add_to_report(page, &summary),
        None => page,
    })
}
