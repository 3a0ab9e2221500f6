//! The run's sink: the temporary output and errors files that records are written to while the run is in progress.

use std::path::Path;

use crate::format::ErrorLine;
use crate::format::SampleLine;
use crate::output::{JsonlWriter, OutputError};
use crate::pipeline::SampleSink;
use crate::sample::{PipelineError, PipelineErrorKind};

/// The two temporary files of a run, committed (or dropped) together at the end.
pub(crate) struct Writers {
    pub output: JsonlWriter,
    pub errors: JsonlWriter,
}

/// The run's sink: writes lines to [`Writers`] until the run takes them back to commit them.
pub(crate) struct FileSink {
    annotate: bool,
    writers: Option<Writers>,
}

impl FileSink {
    /// Temporary files beside `output` and `errors`.
    pub(super) fn create(
        output: &Path,
        errors: &Path,
        annotate: bool,
    ) -> Result<Self, OutputError> {
        Ok(Self {
            annotate,
            writers: Some(Writers {
                output: JsonlWriter::create(output)?,
                errors: JsonlWriter::create(errors)?,
            }),
        })
    }

    /// The writers, for the commit; the sink refuses later lines.
    pub(super) fn take(&mut self) -> Option<Writers> {
        self.writers.take()
    }

    fn writers(&mut self) -> Result<&mut Writers, PipelineError> {
        self.writers.as_mut().ok_or_else(|| {
            PipelineError::new(
                "a line arrived after the output was committed",
                PipelineErrorKind::Output,
            )
        })
    }
}

impl SampleSink for FileSink {
    fn annotates(&self) -> bool {
        self.annotate
    }

    fn sample(&mut self, place: u64, line: SampleLine) -> Result<(), PipelineError> {
        self.writers()?
            .output
            .at(place)
            .write(&line)
            .map_err(|e| PipelineError::new(e.to_string(), PipelineErrorKind::Output))
    }

    fn error(&mut self, place: u64, record: ErrorLine) -> Result<(), PipelineError> {
        self.writers()?
            .errors
            .at(place)
            .write(&record)
            .map_err(|e| PipelineError::new(e.to_string(), PipelineErrorKind::Output))
    }
}
