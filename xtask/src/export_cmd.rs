//! `cargo xtask export`: flags in, `shaping::export` does the work (status gate, formats, card, Hub upload).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use shaping::ShapingExitCode;
use shaping::export::{self, ExportFormat, ExportRequest, HubClient, hub::PushOptions};

use crate::workspace::Workspace;

/// The flags of `cargo xtask export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The pipeline whose dataset to export.
    name: String,
    /// trl, openai, sharegpt (JSONL) or parquet (a Hugging Face dataset directory with a card).
    /// Default with --push: parquet.
    #[arg(long, value_enum, required_unless_present = "push")]
    format: Option<ExportFormat>,
    /// Where to write (default training/export/<name>.<format>.jsonl, or the directory
    /// training/export/<name>/ for parquet).
    #[arg(short = 'o', long = "out", value_name = "PATH")]
    out: Option<PathBuf>,
    /// Export data that is STALE or PARTIAL (with a warning, noted in the card).
    #[arg(long)]
    allow_stale: bool,
    /// Upload the Parquet export to this Hub dataset repository (owner/name) with HF_TOKEN.
    #[arg(long, value_name = "REPO")]
    push: Option<String>,
    /// Create the Hub repository public (default: private). An existing one keeps its visibility.
    #[arg(long, requires = "push")]
    public: bool,
}

/// Run `cargo xtask export`; the exit code.
pub(crate) fn export_cmd(ws: &Workspace, args: ExportArgs) -> Result<i32> {
    let format = match (args.format, &args.push) {
        (Some(format), Some(_)) if format != ExportFormat::Parquet => {
            eprintln!(
                "error: --push uploads the Parquet export; use --format parquet (or leave --format out)"
            );
            return Ok(ShapingExitCode::USAGE);
        }
        (Some(format), _) => format,
        (None, _) => ExportFormat::Parquet,
    };
    // A push that cannot happen fails before anything is built or written.
    let hub = match &args.push {
        Some(repo) => {
            export::hub::parse_repo(repo)?;
            Some(HubClient::from_env()?)
        }
        None => None,
    };
    let pipelines = ws.describe_all()?;
    let Some(description) = pipelines.iter().find(|d| d.name == args.name) else {
        return Err(crate::unknown_pipeline(&args.name, &pipelines).into());
    };
    let evaluated = ws.evaluate(&pipelines)?;
    let status = &evaluated
        .iter()
        .find(|e| e.name == args.name)
        .expect("every described pipeline is evaluated")
        .status;
    let mut command = format!("cargo xtask export {} --format {format}", args.name);
    if let Some(out) = &args.out {
        command.push_str(&format!(" -o {}", out.display()));
    }
    if args.allow_stale {
        command.push_str(" --allow-stale");
    }
    let output = ws.root().join(&description.output);
    let exported = export::export(&ExportRequest {
        root: ws.root(),
        name: &args.name,
        output: &output,
        status,
        format,
        out: args.out.clone(),
        allow_stale: args.allow_stale,
        command,
        hub_repo: args.push.as_deref(),
    })?;
    if let Some(warning) = &exported.warning {
        eprintln!("warning: exporting data that is not CURRENT (--allow-stale): {warning}");
    }
    println!(
        "exported {} {} samples of '{}' as {format} to {} (card: {})",
        exported.samples,
        exported.kind,
        args.name,
        exported.path.display(),
        exported.card.display()
    );
    if let (Some(repo), Some(client)) = (&args.push, &hub) {
        let pushed = client.push(
            repo,
            &exported.path,
            &exported.files,
            &PushOptions {
                summary: format!(
                    "Export {} ({} {} samples)",
                    args.name, exported.samples, exported.kind
                ),
                description: "Written by `cargo xtask export --push`; see README.md for the manifest's fingerprints.".into(),
                private: !args.public,
            },
        )?;
        println!(
            "pushed {} to {}{}",
            exported.files.join(", "),
            pushed.url,
            if pushed.created {
                " (created, private unless --public)"
            } else {
                ""
            }
        );
        if let Some(commit) = &pushed.commit_url {
            println!("commit: {commit}");
        }
    }
    Ok(ShapingExitCode::OK)
}
