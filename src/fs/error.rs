//! The filesystem layer's error type and its one mapping to errno.

use std::fmt;

use crate::datastore::{self, ErrorKind};
use crate::index::{IndexError, IndexErrorKind};

/// A POSIX-level failure. Every variant maps to exactly one errno in [`FsError::errno`]; a
/// failure nobody anticipated is `Io` (EIO), never "not found".
#[derive(Debug)]
pub enum FsError {
    /// ENOENT: no such entry.
    NotFound,
    /// EEXIST: the entry exists.
    Exists,
    /// ENOTDIR: a directory was needed.
    NotDir,
    /// EISDIR: a non-directory was needed.
    IsDir,
    /// ENOTEMPTY: the directory has entries (or holds a value).
    NotEmpty,
    /// ENAMETOOLONG: a name over 255 bytes.
    NameTooLong,
    /// EILSEQ: a name that is not UTF-8 cannot become a key component.
    BadName,
    /// EINVAL: an argument the operation does not accept.
    Invalid(String),
    /// EPERM: the operation is not permitted (hard links, device nodes).
    NotPermitted(String),
    /// EACCES: permission denied.
    Access,
    /// EROFS: the mount is read-only.
    ReadOnly,
    /// ENOSPC: the store is full.
    NoSpace,
    /// EOPNOTSUPP: the operation is not supported.
    NotSupported(String),
    /// ERANGE: a buffer too small for an xattr value or list.
    Range,
    /// ENODATA: no such extended attribute.
    NoData,
    /// EBADF: an unknown file handle, or a handle not open for this.
    BadHandle,
    /// E2BIG: an extended attribute value too large.
    TooBig,
    /// EFBIG: a file size beyond what the store accepts.
    FileTooBig,
    /// ENXIO: `SEEK_DATA`/`SEEK_HOLE` at or past the end of the file.
    NoSuchOffset,
    /// ETIMEDOUT: a remote store did not answer within its timeout.
    TimedOut(String),
    /// EIO: the store or the index failed, or a remote store is unavailable; the message says
    /// how.
    Io(String),
}

/// The filesystem layer's result type.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The errno this error is reported as.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::BadName => libc::EILSEQ,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Access => libc::EACCES,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::Range => libc::ERANGE,
            FsError::NoData => libc::ENODATA,
            FsError::BadHandle => libc::EBADF,
            FsError::TooBig => libc::E2BIG,
            FsError::FileTooBig => libc::EFBIG,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::TimedOut(_) => libc::ETIMEDOUT,
            FsError::Io(_) => libc::EIO,
        }
    }

    /// Converts a datastore failure on a value the index says exists. A "not found" from the
    /// store there is an inconsistency (EIO), not a missing file.
    pub fn store(e: datastore::Error) -> FsError {
        FsError::store_kind(e.kind(), e.to_string())
    }

    /// The one mapping of a datastore error kind (with its message) to a filesystem error.
    fn store_kind(kind: ErrorKind, e: String) -> FsError {
        match kind {
            ErrorKind::NoSpace => FsError::NoSpace,
            ErrorKind::ReadOnly => FsError::ReadOnly,
            ErrorKind::InvalidKey => {
                // The application sees only EINVAL; the log says which key and what to do.
                log::warn!("refused: {e}");
                FsError::Invalid(e)
            }
            ErrorKind::Unsupported => FsError::NotSupported(e),
            ErrorKind::TimedOut => {
                log::error!("store timeout: {e}");
                FsError::TimedOut(e)
            }
            ErrorKind::NotFound
            | ErrorKind::Unavailable
            | ErrorKind::InvalidArgument
            | ErrorKind::Closed
            | ErrorKind::NoMount
            | ErrorKind::AlreadyExists
            | ErrorKind::Locked
            | ErrorKind::Corrupt
            | ErrorKind::Io => {
                log::error!("store failure: {e}");
                FsError::Io(e)
            }
        }
    }
}

impl From<IndexError> for FsError {
    fn from(e: IndexError) -> FsError {
        match e.kind() {
            IndexErrorKind::NotFound => FsError::NotFound,
            IndexErrorKind::AlreadyExists => FsError::Exists,
            IndexErrorKind::NotADirectory => FsError::NotDir,
            IndexErrorKind::IsADirectory => FsError::IsDir,
            IndexErrorKind::NotEmpty => FsError::NotEmpty,
            IndexErrorKind::InvalidArgument => FsError::Invalid(e.to_string()),
            IndexErrorKind::NoSpace => FsError::NoSpace,
            IndexErrorKind::ReadOnly => FsError::ReadOnly,
            IndexErrorKind::Unsupported => FsError::NotSupported(e.to_string()),
            // A store failure seen through the index keeps the store's meaning (a timeout
            // is ETIMEDOUT whichever layer met it).
            IndexErrorKind::Store => match e.store_error() {
                Some(store) => FsError::store_kind(store.kind(), e.to_string()),
                None => {
                    log::error!("index failure: {e}");
                    FsError::Io(e.to_string())
                }
            },
            IndexErrorKind::Corrupt
            | IndexErrorKind::NoMount
            | IndexErrorKind::Closed
            | IndexErrorKind::Locked
            | IndexErrorKind::Io => {
                log::error!("index failure: {e}");
                FsError::Io(e.to_string())
            }
        }
    }
}

impl From<datastore::Error> for FsError {
    fn from(e: datastore::Error) -> FsError {
        FsError::store(e)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Invalid(m)
            | FsError::NotPermitted(m)
            | FsError::NotSupported(m)
            | FsError::TimedOut(m)
            | FsError::Io(m) => write!(f, "{m}"),
            other => write!(f, "{}", std::io::Error::from_raw_os_error(other.errno())),
        }
    }
}

impl std::error::Error for FsError {}
