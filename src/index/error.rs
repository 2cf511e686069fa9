//! The index layer's error type. The filesystem maps its kinds to errno in one place.

use std::fmt;

use crate::datastore::{self, ErrorKind};

/// What went wrong in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexErrorKind {
    /// No such node or entry.
    NotFound,
    /// The entry already exists.
    AlreadyExists,
    /// A path component is not a directory.
    NotADirectory,
    /// The operation needs a non-directory.
    IsADirectory,
    /// The directory has entries.
    NotEmpty,
    /// The name cannot be a key component, or the operation is not valid for these nodes.
    InvalidArgument,
    /// The index file holds something this version cannot read.
    Corrupt,
    /// Another process has the index open.
    Locked,
    /// The disk is full.
    NoSpace,
    /// The index is on a read-only filesystem.
    ReadOnly,
    /// The index was closed and refuses changes.
    Closed,
    /// The backing store does not support the operation.
    Unsupported,
    /// No store of a mount covers the key.
    NoMount,
    /// The backing store (the datastore) failed; see the source.
    Store,
    /// redb or the OS failed.
    Io,
}

/// An index error: a kind, context and optionally a cause.
pub struct IndexError {
    kind: IndexErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The index layer's result type.
pub type IndexResult<T> = Result<T, IndexError>;

impl IndexError {
    /// An error of `kind` with context.
    pub fn new(kind: IndexErrorKind, message: impl Into<String>) -> IndexError {
        IndexError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A corrupt-record error.
    pub fn corrupt(message: impl Into<String>) -> IndexError {
        IndexError::new(IndexErrorKind::Corrupt, message)
    }

    /// A not-found error.
    pub fn not_found(message: impl Into<String>) -> IndexError {
        IndexError::new(IndexErrorKind::NotFound, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> IndexErrorKind {
        self.kind
    }

    /// The datastore error behind a [`IndexErrorKind::Store`] failure.
    pub fn store_error(&self) -> Option<&datastore::Error> {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<datastore::Error>())
    }

    /// Converts a redb failure, keeping full-disk, read-only and lock conditions as kinds.
    pub fn redb(context: &str, err: impl Into<redb::Error>) -> IndexError {
        let err: redb::Error = err.into();
        let kind = match &err {
            e if crate::redb_guard::is_corruption(e) => IndexErrorKind::Corrupt,
            redb::Error::DatabaseAlreadyOpen => IndexErrorKind::Locked,
            redb::Error::Io(io) => match io.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => IndexErrorKind::NoSpace,
                Some(libc::EROFS) => IndexErrorKind::ReadOnly,
                _ => IndexErrorKind::Io,
            },
            _ => IndexErrorKind::Io,
        };
        IndexError {
            kind,
            message: context.to_owned(),
            source: Some(Box::new(err)),
        }
    }
}

impl From<datastore::Error> for IndexError {
    fn from(e: datastore::Error) -> IndexError {
        let kind = match e.kind() {
            ErrorKind::NotFound => IndexErrorKind::NotFound,
            ErrorKind::Corrupt => IndexErrorKind::Corrupt,
            ErrorKind::Locked => IndexErrorKind::Locked,
            ErrorKind::NoSpace => IndexErrorKind::NoSpace,
            ErrorKind::ReadOnly => IndexErrorKind::ReadOnly,
            ErrorKind::Closed => IndexErrorKind::Closed,
            ErrorKind::AlreadyExists => IndexErrorKind::AlreadyExists,
            // A key the store refuses is a name the filesystem cannot hold (EINVAL), not a
            // broken store.
            ErrorKind::InvalidKey | ErrorKind::InvalidArgument => IndexErrorKind::InvalidArgument,
            ErrorKind::Unsupported => IndexErrorKind::Unsupported,
            ErrorKind::NoMount => IndexErrorKind::NoMount,
            // Store failures keep their kind inside (a timeout stays a timeout at the FUSE
            // boundary).
            ErrorKind::TimedOut | ErrorKind::Unavailable | ErrorKind::Io => IndexErrorKind::Store,
        };
        IndexError {
            kind,
            message: "datastore".to_owned(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<IndexError> for datastore::Error {
    fn from(e: IndexError) -> datastore::Error {
        let kind = match e.kind {
            IndexErrorKind::NotFound => ErrorKind::NotFound,
            IndexErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            IndexErrorKind::NotADirectory
            | IndexErrorKind::IsADirectory
            | IndexErrorKind::NotEmpty
            | IndexErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
            IndexErrorKind::Corrupt => ErrorKind::Corrupt,
            IndexErrorKind::Locked => ErrorKind::Locked,
            IndexErrorKind::NoSpace => ErrorKind::NoSpace,
            IndexErrorKind::ReadOnly => ErrorKind::ReadOnly,
            IndexErrorKind::Closed => ErrorKind::Closed,
            IndexErrorKind::Unsupported => ErrorKind::Unsupported,
            IndexErrorKind::NoMount => ErrorKind::NoMount,
            IndexErrorKind::Store => e.store_error().map_or(ErrorKind::Io, |s| s.kind()),
            IndexErrorKind::Io => ErrorKind::Io,
        };
        datastore::Error::with_source(kind, "index", e)
    }
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexError({:?}: {self})", self.kind)
    }
}

impl std::error::Error for IndexError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}
