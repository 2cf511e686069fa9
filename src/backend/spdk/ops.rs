//! The narrow set of blobstore operations [`super::SpdkStore`] needs, as a synchronous Rust
//! trait. Two implementations: the real SPDK blobstore driven by a poller thread (feature
//! `spdk`, `runtime.rs`) and the in-process [`super::fake::FakeBlobstore`] that keeps
//! the blobstore's documented semantics in a file image, so that every line of the store's own
//! logic runs in CI without SPDK.
//!
//! The semantics both keep (those of `include/spdk/blob.h`):
//! * a blob is created with its initial xattrs, and exists durably once `create_blob` returns;
//!   `delete_blob` is durable when it returns;
//! * `resize` (in clusters) and `set_xattr`/`remove_xattr` change the in-memory metadata only:
//!   they persist at the next `sync_md` of the blob (a crash before it loses them, and clusters
//!   allocated by an unsynced resize are free again after a reload);
//! * I/O is in io units: `read`/`write` take an offset in io units and a buffer whose length is
//!   a multiple of the io unit, within the blob's clusters;
//! * a blob must be open for I/O and metadata changes; deleting an open blob fails with `EBUSY`.

use std::fmt;

/// A blob's id (`spdk_blob_id`).
pub type BlobId = u64;

/// The largest xattr descriptor (9-byte header + name + value) the blobstore accepts: one
/// metadata page's descriptor area (`SPDK_BS_MAX_DESC_SIZE`).
pub const MAX_XATTR_DESC: usize = 4072;

/// The byte size of an xattr descriptor's fixed header (type, length, name and value lengths).
pub const XATTR_DESC_HEADER: usize = 9;

/// What a blobstore operation failed with, from SPDK's negative errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BsErrorKind {
    /// `-ENOSPC`: no free clusters (or metadata pages).
    NoSpace,
    /// `-ENOMEM`: no request objects or buffers, or an xattr that does not fit a page.
    NoMemory,
    /// `-ENOENT`: no such blob or xattr.
    NotFound,
    /// `-EBUSY`: the blob is open (delete) or busy.
    Busy,
    /// `-EINVAL`: a bad argument (unaligned I/O, I/O beyond the blob, a read-only blob).
    Invalid,
    /// Any other errno (`-EIO` and the rest), kept as its positive value.
    Other(i32),
}

/// A failed blobstore operation: which operation and what errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BsError {
    /// The kind, from the errno.
    pub kind: BsErrorKind,
    /// The operation that failed (`"spdk_blob_resize"`, ...).
    pub op: &'static str,
}

impl BsError {
    /// The error of `op` that returned `rc` (negative or positive errno).
    pub fn from_errno(op: &'static str, rc: i32) -> BsError {
        let errno = rc.checked_abs().unwrap_or(libc::EIO);
        let kind = match errno {
            libc::ENOSPC => BsErrorKind::NoSpace,
            libc::ENOMEM => BsErrorKind::NoMemory,
            libc::ENOENT => BsErrorKind::NotFound,
            libc::EBUSY => BsErrorKind::Busy,
            libc::EINVAL => BsErrorKind::Invalid,
            other => BsErrorKind::Other(other),
        };
        BsError { kind, op }
    }

    /// The error of `op` of `kind`.
    pub fn new(op: &'static str, kind: BsErrorKind) -> BsError {
        BsError { kind, op }
    }

    /// The positive errno.
    pub fn errno(&self) -> i32 {
        match self.kind {
            BsErrorKind::NoSpace => libc::ENOSPC,
            BsErrorKind::NoMemory => libc::ENOMEM,
            BsErrorKind::NotFound => libc::ENOENT,
            BsErrorKind::Busy => libc::EBUSY,
            BsErrorKind::Invalid => libc::EINVAL,
            BsErrorKind::Other(e) => e,
        }
    }
}

impl fmt::Display for BsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {}",
            self.op,
            std::io::Error::from_raw_os_error(self.errno())
        )
    }
}

impl std::error::Error for BsError {}

/// A blobstore operation's result.
pub type BsResult<T> = std::result::Result<T, BsError>;

/// The blobstore type of BlobFS (`SPDK_BLOBFS_SIGNATURE`, NUL-padded to 16 bytes).
pub const BSTYPE_BLOBFS: [u8; 16] = *b"BLOBFS\0\0\0\0\0\0\0\0\0\0";

/// The blobstore operations [`super::SpdkStore`] uses. Every call blocks until the blobstore
/// completed it. Implementations are `Send + Sync`: FUSE workers call them concurrently.
pub trait BlobOps: Send + Sync {
    /// The io unit in bytes (512 or 4096): the granularity of `read` and `write`.
    fn io_unit_size(&self) -> u32;
    /// The cluster size in bytes: the granularity of `resize`.
    fn cluster_size(&self) -> u64;
    /// The number of clusters the blobstore has for blobs.
    fn total_clusters(&self) -> u64;
    /// The number of free clusters.
    fn free_clusters(&self) -> u64;
    /// The blobstore type recorded in its super block.
    fn bstype(&self) -> [u8; 16];

    /// Creates a blob with no clusters and these xattrs (durable when this returns).
    fn create_blob(&self, xattrs: &[(&str, &[u8])]) -> BsResult<BlobId>;
    /// Opens a blob for I/O and metadata changes. Opening an open blob is `Ok` (SPDK counts
    /// the references; this trait keeps one per blob).
    fn open_blob(&self, id: BlobId) -> BsResult<()>;
    /// Closes an open blob (SPDK syncs its metadata on close).
    fn close_blob(&self, id: BlobId) -> BsResult<()>;
    /// Deletes a closed blob and frees its clusters (durable when this returns).
    fn delete_blob(&self, id: BlobId) -> BsResult<()>;
    /// Every blob's id (`spdk_bs_iter_first`/`_next`), in id order. Blobs are opened and closed
    /// by the iteration; call it before opening any.
    fn blob_ids(&self) -> BsResult<Vec<BlobId>>;

    /// Resizes an open blob to `clusters` clusters (in memory until `sync_md`).
    fn resize(&self, id: BlobId, clusters: u64) -> BsResult<()>;
    /// The number of clusters of an open blob.
    fn num_clusters(&self, id: BlobId) -> BsResult<u64>;
    /// Writes `data` (a multiple of the io unit) at io unit `offset` of an open blob.
    fn write(&self, id: BlobId, offset: u64, data: &[u8]) -> BsResult<()>;
    /// Reads `buf.len()` bytes (a multiple of the io unit) at io unit `offset` of an open blob.
    fn read(&self, id: BlobId, offset: u64, buf: &mut [u8]) -> BsResult<()>;
    /// Sets an xattr of an open blob (in memory until `sync_md`).
    fn set_xattr(&self, id: BlobId, name: &str, value: &[u8]) -> BsResult<()>;
    /// An xattr of an open blob, `None` if it has none of that name.
    fn get_xattr(&self, id: BlobId, name: &str) -> BsResult<Option<Vec<u8>>>;
    /// Removes an xattr of an open blob (in memory until `sync_md`); a missing one is `Ok`.
    fn remove_xattr(&self, id: BlobId, name: &str) -> BsResult<()>;
    /// Persists an open blob's metadata (clusters and xattrs), after the data written to it.
    fn sync_md(&self, id: BlobId) -> BsResult<()>;
    /// Makes every completed write durable on the device (a bdev flush).
    fn flush(&self) -> BsResult<()>;
    /// Closes every blob and unloads the blobstore cleanly. Further calls fail.
    fn unload(&self) -> BsResult<()>;
}
