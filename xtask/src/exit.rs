//! The one place that turns an outcome of `cargo xtask` into its process exit code ([`ShapingExitCode`]).

use std::process::{ExitCode, ExitStatus};

use shaping::ShapingExitCode;

/// Failures of xtask itself that decide an exit code (others come from the library's typed
/// errors, found in the error chain).
#[derive(Debug, thiserror::Error)]
pub(crate) enum XtaskError {
    #[error("building the pipeline crates failed (cargo build {packages})")]
    BuildFailed { packages: String },
    #[error("reading cargo metadata in {root} failed: {message}")]
    Metadata { root: String, message: String },
    #[error("pipeline crate '{package}' failed to describe itself:\n{stderr}")]
    DescribeFailed { package: String, stderr: String },
    #[error("no pipeline named '{name}'; known: {known}")]
    UnknownPipeline { name: String, known: String },
}

/// The exit code for an error that ended a command: the first error in its chain that has one
/// decides; anything else is [`ShapingExitCode::UNEXPECTED`].
pub(crate) fn code_of_error(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<XtaskError>() {
            return match e {
                XtaskError::BuildFailed { .. } | XtaskError::Metadata { .. } => {
                    ShapingExitCode::BUILD_FAILED
                }
                XtaskError::DescribeFailed { .. } => ShapingExitCode::SETUP_ERROR,
                XtaskError::UnknownPipeline { .. } => ShapingExitCode::USAGE,
            };
        }
        if let Some(e) = cause.downcast_ref::<shaping::lock::LockError>() {
            return match e {
                shaping::lock::LockError::Busy { .. } => ShapingExitCode::BUSY,
                shaping::lock::LockError::Io { .. } => ShapingExitCode::UNEXPECTED,
            };
        }
        if let Some(e) = cause.downcast_ref::<shaping::export::ExportError>() {
            use shaping::export::ExportError as E;
            return match e {
                E::NotCurrent { .. } => ShapingExitCode::STALE_DATA,
                E::InvalidRepo { .. } | E::NotADirectory { .. } => ShapingExitCode::USAGE,
                E::Missing { .. }
                | E::Manifest(_)
                | E::Identity(_)
                | E::BadLine { .. }
                | E::WrongKind { .. }
                | E::BadShape { .. }
                | E::NoToken
                | E::Hub {
                    status: Some(401 | 403),
                    ..
                } => ShapingExitCode::SETUP_ERROR,
                _ => ShapingExitCode::UNEXPECTED,
            };
        }
        if let Some(e) = cause.downcast_ref::<shaping::provider::batch::admin::AdminError>() {
            use shaping::provider::batch::admin::AdminError as E;
            return match e {
                E::UnknownJob(_) | E::NotRunning { .. } => ShapingExitCode::USAGE,
                E::State(_) | E::Provider { .. } => ShapingExitCode::SETUP_ERROR,
            };
        }
        let setup = cause.is::<shaping::repo::RepoError>()
            || cause.is::<shaping::models::ModelsError>()
            || cause.is::<shaping::quality::QualityError>()
            || cause.is::<shaping::graph::GraphError>()
            || cause.is::<shaping::model_fetch::FetchError>();
        if setup {
            return ShapingExitCode::SETUP_ERROR;
        }
    }
    ShapingExitCode::UNEXPECTED
}

/// The exit code of a child process (a pipeline binary, `cargo test`), passed through; a child
/// killed by a signal gives 128 + the signal, as a shell reports it.
pub(crate) fn code_of_child(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => ShapingExitCode::UNEXPECTED,
    }
}

/// The process exit code for `code`.
pub(crate) fn process(code: i32) -> ExitCode {
    ShapingExitCode::process(code)
}
