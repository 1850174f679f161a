//! The crate's single public error type.

use std::fmt;

/// The category of an [`Error`].
///
/// New kinds may be added in minor releases, so matches need a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The server configuration is incomplete or invalid (builder options, API keys file).
    Config,
    /// Reading or writing the storage directory, or binding the listening socket, failed.
    Io,
    /// An operation did not finish within its timeout (for example a graceful shutdown).
    Timeout,
    /// A bug in loopai-cloud itself (for example a panicked server thread). Please report it.
    Internal,
}

/// An error from the collector. The message names the thing at fault (a file, a line of the
/// keys file, an option).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// `Result<T, loopai_cloud::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error about `what` (a path or an address).
    pub(crate) fn io(what: impl fmt::Display, err: std::io::Error) -> Error {
        Error {
            kind: ErrorKind::Io,
            message: format!("{what}: {err}"),
            source: Some(Box::new(err)),
        }
    }

    /// The same error from the server lifecycle shared with loopai-serve.
    pub(crate) fn from_http(err: loopai_http::Error) -> Error {
        let (kind, message, source) = err.into_parts();
        let kind = match kind {
            loopai_http::ErrorKind::Config => ErrorKind::Config,
            loopai_http::ErrorKind::Io => ErrorKind::Io,
            loopai_http::ErrorKind::Timeout => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        };
        Error {
            kind,
            message,
            source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
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
