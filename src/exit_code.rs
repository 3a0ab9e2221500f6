//! The exit-code contract of `cargo xtask` and of every pipeline binary: one named constant per outcome.
//!
//! Scripts and CI branch on these numbers, so they are stable: a value is never reused for
//! another meaning. `cargo xtask` passes a pipeline binary's code through unchanged (`run`, and
//! `data` when a pipeline fails). The README lists them.

use std::process::ExitCode;

/// The process exit codes of the project's commands, in the style of nextest's
/// `NextestExitCode`.
pub struct ShapingExitCode;

impl ShapingExitCode {
    /// Everything asked for was done (every check passed, everything is CURRENT).
    pub const OK: i32 = 0;
    /// An unexpected failure that no other code describes: an I/O error, a broken cache, a bug.
    pub const UNEXPECTED: i32 = 1;
    /// The command line itself is wrong: an unknown flag or a bad flag value (clap's code).
    pub const USAGE: i32 = 2;
    /// A quality check failed, or a review snapshot is new or changed (`check`, `review`).
    pub const CHECKS_FAILED: i32 = 3;
    /// An output is not CURRENT (`status --check`; `export` without `--allow-stale`).
    pub const STALE_DATA: i32 = 4;
    /// More than `--max-error-share` of the records failed; the previous output was kept.
    pub const TOO_MANY_RECORD_ERRORS: i32 = 5;
    /// The pipeline's own code returned an error for the whole run (not for one record).
    pub const PIPELINE_FAILED: i32 = 6;
    /// Set-up or configuration error: no repository, a bad `models.toml`, `voice.toml` or quality
    /// config, an invalid dependency declaration, an input file that cannot be read or checked,
    /// a missing local model.
    pub const SETUP_ERROR: i32 = 7;
    /// `cargo build` of the pipeline crates (or `cargo metadata`) failed.
    pub const BUILD_FAILED: i32 = 8;
    /// Another run of the same pipeline holds its lock and `--no-wait` was given.
    pub const BUSY: i32 = 9;
    /// Interrupted (Ctrl-C); the previous output is untouched and received answers are cached.
    pub const INTERRUPTED: i32 = 130;
    /// Standard output or error was closed by the reader (`… | head`): 128 + SIGPIPE.
    pub const CLOSED_PIPE: i32 = 141;

    /// Every code with its name, for documentation and tests.
    pub const ALL: [(&'static str, i32); 12] = [
        ("OK", Self::OK),
        ("UNEXPECTED", Self::UNEXPECTED),
        ("USAGE", Self::USAGE),
        ("CHECKS_FAILED", Self::CHECKS_FAILED),
        ("STALE_DATA", Self::STALE_DATA),
        ("TOO_MANY_RECORD_ERRORS", Self::TOO_MANY_RECORD_ERRORS),
        ("PIPELINE_FAILED", Self::PIPELINE_FAILED),
        ("SETUP_ERROR", Self::SETUP_ERROR),
        ("BUILD_FAILED", Self::BUILD_FAILED),
        ("BUSY", Self::BUSY),
        ("INTERRUPTED", Self::INTERRUPTED),
        ("CLOSED_PIPE", Self::CLOSED_PIPE),
    ];

    /// The name of `code`, if it is one of ours.
    pub fn name(code: i32) -> Option<&'static str> {
        Self::ALL
            .iter()
            .find(|(_, value)| *value == code)
            .map(|(name, _)| *name)
    }

    /// `code` as a process exit code.
    pub fn process(code: i32) -> ExitCode {
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_fit_a_process_status() {
        let mut seen = std::collections::HashSet::new();
        for (name, code) in ShapingExitCode::ALL {
            assert!((0..=255).contains(&code), "{name} = {code}");
            assert!(seen.insert(code), "{name} reuses {code}");
            assert_eq!(ShapingExitCode::name(code), Some(name));
        }
    }
}
