//! The error of the shared lifecycle, mapped by each server to its own.

use std::fmt;

/// The category of an [`Error`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A blocking call was made from async code, a limit is out of range, or a TLS
    /// certificate or key file is unreadable, malformed or mismatched.
    Config,
    /// Binding the socket or starting the runtime failed, or the server task hit an I/O
    /// error.
    Io,
    /// Requests were still in flight when the time to finish them ran out.
    Timeout,
    /// The server task panicked or stopped by itself.
    Internal,
}

/// An error of the shared lifecycle: a kind, a final message, and for
/// [`ErrorKind::Io`] the underlying I/O error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<std::io::Error>,
}

/// `Result<T, loopai_http::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An [`ErrorKind::Io`] error: `"{what}: {err}"`, keeping `err` as the source.
    pub(crate) fn io(what: impl fmt::Display, err: std::io::Error) -> Error {
        Error {
            kind: ErrorKind::Io,
            message: format!("{what}: {err}"),
            source: Some(err),
        }
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind, the message and the I/O error (if any), for a server to build its own
    /// error from.
    pub fn into_parts(self) -> (ErrorKind, String, Option<std::io::Error>) {
        (self.kind, self.message, self.source)
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
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
