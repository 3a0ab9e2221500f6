//! `cargo xtask batches`: list the batch jobs of every pipeline with their live status, cancel one, remove downloaded ones.

use anyhow::Result;
use shaping::ShapingExitCode;
use shaping::provider::batch::admin;

/// List (asking the provider about submitted jobs unless `offline`), or cancel one job, or clean.
pub(crate) fn batches(
    root: &std::path::Path,
    cancel: Option<&str>,
    clean: bool,
    offline: bool,
) -> Result<i32> {
    if let Some(id) = cancel {
        let (pipeline, remote) = admin::cancel(root, id)?;
        println!("{pipeline}: batch job {id} is now {}", remote.status);
        return Ok(ShapingExitCode::OK);
    }
    if clean {
        let removed = admin::clean(root)?;
        println!("removed {removed} downloaded batch jobs");
        return Ok(ShapingExitCode::OK);
    }
    let jobs = admin::list(root, !offline)?;
    if jobs.is_empty() {
        println!(
            "no batch jobs ({})",
            root.join(".shaping/batches").display()
        );
        return Ok(ShapingExitCode::OK);
    }
    println!(
        "{:<20} {:<26} {:<10} {:<9} {:>8}  {:<28} status",
        "pipeline", "job", "alias", "api", "requests", "provider id"
    );
    for job in jobs {
        let s = &job.state;
        let status = match &job.live {
            Some(Ok(remote)) => format!(
                "{} ({} of {} done)",
                remote.status, remote.done, remote.total
            ),
            Some(Err(why)) => format!("{} ({why})", s.status.as_deref().unwrap_or("submitted")),
            None => match s.stage {
                shaping::provider::batch::Stage::Prepared => "prepared, not submitted".to_owned(),
                shaping::provider::batch::Stage::Submitted => {
                    s.status.clone().unwrap_or_else(|| "submitted".to_owned())
                }
                shaping::provider::batch::Stage::Downloaded => {
                    "downloaded (answers on disk until the cache has them)".to_owned()
                }
            },
        };
        println!(
            "{:<20} {:<26} {:<10} {:<9} {:>8}  {:<28} {status}",
            job.pipeline,
            s.local_id,
            s.alias,
            s.api.to_string(),
            s.requests,
            s.job_id.as_deref().unwrap_or("-"),
        );
    }
    Ok(ShapingExitCode::OK)
}
