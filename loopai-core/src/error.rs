//! The crate's single public error type.
//!
//! Every fallible public function returns [`Error`]. Its [`ErrorKind`] is the stable
//! classification that the C ABI turns into status codes and the Python package into
//! exception classes; the message names the thing that is wrong (a JSON path, a config
//! key, a file) so that it can be acted on without reading source code.

use std::fmt;

/// The category of an [`Error`].
///
/// New kinds may be added in minor releases, so matches need a wildcard arm. Each kind has
/// a stable negative [`code`](ErrorKind::code) used by the C ABI.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The execution input is malformed, too large or does not match the task's input schema.
    InvalidInput,
    /// A program is malformed, fails validation or exceeds a limit.
    Program,
    /// A task's input or output schema is malformed or uses an unsupported keyword.
    Schema,
    /// The program's output does not match the task's output schema.
    InvalidOutput,
    /// An artifact is missing, corrupt, or does not match its recorded sha256.
    Artifact,
    /// The deployment configuration is malformed or has an invalid value.
    Config,
    /// Reading or writing local storage failed.
    Io,
    /// An operation did not finish within its timeout.
    Timeout,
    /// The runtime (or one of its components) has been shut down.
    Closed,
    /// A bug in loopai itself (for example a caught panic). Please report it.
    Internal,
    /// The oracle (the reference model) failed: unreachable, timed out, refused the
    /// request, or answered something that is not an allowed output.
    Oracle,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidInput,
        ErrorKind::Program,
        ErrorKind::Schema,
        ErrorKind::InvalidOutput,
        ErrorKind::Artifact,
        ErrorKind::Config,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::Internal,
        ErrorKind::Oracle,
    ];

    /// The stable status code of this kind (always negative; `0` means success in the C ABI).
    pub const fn code(self) -> i32 {
        match self {
            ErrorKind::InvalidInput => -1,
            ErrorKind::Program => -2,
            ErrorKind::Schema => -3,
            ErrorKind::InvalidOutput => -4,
            ErrorKind::Artifact => -5,
            ErrorKind::Config => -6,
            ErrorKind::Io => -7,
            ErrorKind::Timeout => -8,
            ErrorKind::Closed => -9,
            ErrorKind::Internal => -10,
            ErrorKind::Oracle => -11,
        }
    }

    /// The kind for a status code, if any.
    pub fn from_code(code: i32) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// A short, stable, snake_case name (`"invalid_input"`, `"program"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Program => "program",
            ErrorKind::Schema => "schema",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::Artifact => "artifact",
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal",
            ErrorKind::Oracle => "oracle",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error type of every fallible operation in this crate.
///
/// ```
/// use loopai_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Program, "features[2].pattern: unclosed group");
/// assert_eq!(err.kind(), ErrorKind::Program);
/// assert_eq!(err.to_string(), "features[2].pattern: unclosed group");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result<T, loopai_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message that names what is wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause (kept for [`std::error::Error::source`]).
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.source = Some(source.into());
        self
    }

    /// An [`ErrorKind::Io`] error: `"{context}: {err}"`, keeping `err` as the source.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{context}: {err}")).with_source(err)
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context: `.
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_negative_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert!(kind.code() < 0);
            assert!(seen.insert(kind.code()));
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn io_error_keeps_source_and_context() {
        let err = Error::io("datasets/x.jsonl", std::io::Error::other("disk full"));
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.to_string(), "datasets/x.jsonl: disk full");
        assert!(std::error::Error::source(&err).is_some());
    }
}
