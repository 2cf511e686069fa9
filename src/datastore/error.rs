//! The datastore layer's one error type.
//!
//! Every failure carries an [`ErrorKind`] so that callers (the index, the filesystem, the CLI)
//! decide by kind, never by message. `NotFound` is its own kind and is never wrapped: a missing
//! key is reported exactly as `ErrorKind::NotFound`, which the conformance suite checks.

use std::fmt;
use std::io;

/// What went wrong, as a closed set the layers above match on exhaustively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key holds no value (go-datastore's `ErrNotFound`).
    NotFound,
    /// The key is not accepted by this store (flatfs's `ErrInvalidKey`, or not clean).
    InvalidKey,
    /// A malformed argument other than a key: a bad spec, a bad range, a bad option.
    InvalidArgument,
    /// The store was closed and refuses writes (flatfs's `ErrClosed`).
    Closed,
    /// No mounted store covers the key (mount's `ErrNoMount`).
    NoMount,
    /// The operation is not supported by this store.
    Unsupported,
    /// The store is read-only.
    ReadOnly,
    /// The device or store is full.
    NoSpace,
    /// Something that must not exist already exists (a store being created, a lock held).
    AlreadyExists,
    /// Another process holds the store's lock.
    Locked,
    /// On-disk data is not what the format says it must be.
    Corrupt,
    /// A remote store did not answer within its configured timeout. The operation may or may
    /// not have taken effect.
    TimedOut,
    /// A remote store cannot be reached or refuses this client (no monitor, bad credentials,
    /// a missing pool). Nothing was done.
    Unavailable,
    /// A lower layer's I/O failed.
    Io,
}

impl ErrorKind {
    /// A short lower-case name, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Closed => "datastore closed",
            ErrorKind::NoMount => "no datastore mounted for this key",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Locked => "locked by another process",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Unavailable => "store unavailable",
            ErrorKind::Io => "I/O error",
        }
    }
}

/// A datastore error: a kind, a human-readable context, and optionally the underlying cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The datastore layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message describing the context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The canonical "key not found" error.
    pub fn not_found() -> Error {
        Error::new(ErrorKind::NotFound, "datastore: key not found")
    }

    /// A closed-store error.
    pub fn closed() -> Error {
        Error::new(ErrorKind::Closed, "datastore closed")
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// An I/O error with context; `ENOSPC`, `EROFS` and `NotFound` keep their meaning as kinds.
    pub fn io(context: impl Into<String>, err: io::Error) -> Error {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            io::ErrorKind::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => match err.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
                Some(libc::EROFS) => ErrorKind::ReadOnly,
                _ => ErrorKind::Io,
            },
        };
        Error::with_source(kind, context, err)
    }

    /// A [`ErrorKind::Corrupt`] error: stored data is not what was written.
    pub fn corrupt_text(message: String) -> Error {
        Error::new(ErrorKind::Corrupt, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether this is the not-found error.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// The context message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prepends context to the message, keeping kind and cause.
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::io("I/O error", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_meaning() {
        let e = Error::io("x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        let e = Error::io("x", io::Error::from(io::ErrorKind::NotFound));
        assert!(e.is_not_found());
        let e = Error::io("x", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.kind(), ErrorKind::Io);
    }

    #[test]
    fn display_includes_context_and_cause() {
        let e = Error::io("reading /x", io::Error::from_raw_os_error(libc::EIO)).context("get");
        let s = e.to_string();
        assert!(s.starts_with("get: reading /x: "), "{s}");
    }
}
