//! What a finished run tells the user on stderr: counts, requests, tokens, cost, reports and the quality checks.

use std::path::Path;

use crate::manifest::Manifest;

/// Print the summary of a run whose manifest was just written.
pub(crate) fn print_summary(name: &str, manifest: &Manifest, output: &Path) {
    let r = &manifest.run;
    // The batch report names the aliases whose cost is at batch prices.
    let at_batch_prices = manifest
        .reports
        .get("batch")
        .and_then(|batch| batch["models"].as_object())
        .filter(|models| !models.is_empty())
        .map(|models| {
            let aliases: Vec<&str> = models.keys().map(String::as_str).collect();
            format!(" ({} at batch prices)", aliases.join(", "))
        })
        .unwrap_or_default();
    let cost = r
        .estimated_cost_usd
        .map(|c| format!(", estimated cost ${c:.4}{at_batch_prices}"))
        .unwrap_or_default();
    eprintln!(
        "{name}: {} samples, {} errors → {}\n  {} requests sent, {} cache hits, {} retries, {} failed requests; tokens {} in / {} out{cost}; {:.1}s",
        manifest.samples,
        manifest.errors,
        output.display(),
        r.requests_sent,
        r.cache_hits,
        r.retries,
        r.failed_requests,
        r.input_tokens,
        r.output_tokens,
        r.wall_time_secs,
    );
    for (key, value) in &manifest.reports {
        eprintln!("  {key}: {value}");
    }
    if let Some(checks) = &manifest.checks {
        let failed: Vec<&str> = checks["checks"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["passed"] == false)
                    .filter_map(|c| c["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if failed.is_empty() {
            eprintln!("  quality checks: all passed");
        } else {
            eprintln!(
                "  quality checks failing: {} (details: cargo xtask check {name})",
                failed.join(", ")
            );
        }
    }
}
