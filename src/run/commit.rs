//! The last phase of a run: the error-share gate, then the output and errors files renamed into place, then the manifest.

use time::OffsetDateTime;

use super::prepare::Prepared;
use super::{Executed, RunError, RunOptions};
use crate::dispatch::DispatchStats;
use crate::manifest::{Manifest, RunSummary};
use crate::pipeline::Pipeline;

/// Commit a finished run: refuse it when too many records failed (keeping their errors for
/// inspection under `.shaping/failed-runs/`), else rename the output and errors files into
/// place and write the manifest (output first: a crash between the two shows as STALE).
pub(crate) fn commit<P: Pipeline>(
    prepared: &Prepared<P>,
    options: &RunOptions,
    executed: Executed,
) -> Result<Manifest, RunError> {
    let Executed {
        writers,
        records_done,
        records_failed,
        records_filtered,
        models,
        estimated_cost_usd,
        reports,
        stats,
        elapsed,
    } = executed;
    // Filtered records are quality rejections, reported as the acceptance rate; the error-share
    // gate guards against faults (an outage must not empty a dataset).
    let total = records_failed + records_done;
    if total > 0 && records_failed as f64 > options.max_error_share * total as f64 {
        let kept = prepared
            .root
            .join(".shaping")
            .join("failed-runs")
            .join(format!("{}.errors.jsonl", P::NAME));
        std::fs::create_dir_all(kept.parent().expect("has parent")).ok();
        drop(writers.output);
        // Keep the failed run's error records for inspection, away from the training data.
        let _ = writers.errors.commit().and_then(|_| {
            std::fs::rename(&prepared.errors, &kept).map_err(|source| {
                crate::output::OutputError::Io {
                    path: kept.clone(),
                    source,
                }
            })
        });
        return Err(RunError::TooManyErrors {
            failed: records_failed,
            total,
            share: options.max_error_share,
            errors: kept.display().to_string(),
        });
    }
    let samples_written = writers.output.lines();
    let errors_written = writers.errors.lines();
    let output_sha256 = writers.output.commit()?;
    writers.errors.commit()?;
    if errors_written == 0 {
        let _ = std::fs::remove_file(&prepared.errors);
    }

    let summary = RunSummary {
        records: total + records_filtered,
        requests_sent: DispatchStats::get(&stats.requests_sent),
        cache_hits: DispatchStats::get(&stats.cache_hits),
        retries: DispatchStats::get(&stats.retries),
        failed_requests: DispatchStats::get(&stats.failed),
        input_tokens: DispatchStats::get(&stats.input_tokens),
        output_tokens: DispatchStats::get(&stats.output_tokens),
        estimated_cost_usd,
        wall_time_secs: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
    };
    // The quality checks of what was just written (reported, not enforced: `cargo xtask check`
    // gates).
    let checks = crate::quality::check(&prepared.output, &prepared.quality, &prepared.voice)
        .map(|report| serde_json::to_value(report).expect("check report serializes"))
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    let manifest = Manifest {
        schema: crate::manifest::MANIFEST_SCHEMA,
        pipeline: P::NAME.to_owned(),
        output: crate::repo::display_relative(&prepared.root, &prepared.output),
        generated_at: OffsetDateTime::now_utc(),
        pipeline_commit: prepared.commit.clone(),
        commit_dirty: prepared.commit_dirty,
        code_hash: prepared.code_hash.clone(),
        files: prepared.files.clone(),
        models,
        limit: options.limit.map(|l| l as u64),
        annotated: prepared.annotate,
        kind: <P::Sample as crate::sample::Sample>::KIND,
        samples: samples_written,
        errors: errors_written,
        output_sha256,
        run: summary,
        reports,
        quality: Some(serde_json::to_value(&prepared.quality).expect("quality config serializes")),
        checks: Some(checks),
        judge: None,
    };
    manifest.write(&Manifest::path_for(&prepared.output))?;
    Ok(manifest)
}
