//! The types of the filesystem's interface, and inode numbers.

use std::fs::File;
use std::time::SystemTime;

use crate::index::NodeId;

/// Readdir offsets: 1 is `.`, 2 is `..`, 3 is `.dsfs.value`, entries follow at cookie + 3.
pub(super) const FIRST_ENTRY_OFFSET: u64 = 3;
/// The block size reported to tools, which size their I/O buffers from it.
pub(super) const BLKSIZE: u32 = 1 << 20;
/// The largest extended attribute value accepted.
pub(super) const XATTR_MAX: usize = 64 << 10;

/// An inode number: an index node id, or, with the high bit set, the value of the directory
/// with that id that also holds one (its `.dsfs.value` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    /// The bit that marks a directory's value.
    const DIR_VALUE: u64 = 1 << 63;

    /// The inode of the value of directory `dir`.
    pub fn dir_value(dir: NodeId) -> Ino {
        Ino(dir | Self::DIR_VALUE)
    }

    /// The index node this inode belongs to (for a directory's value, the directory).
    pub fn node(self) -> NodeId {
        self.0 & !Self::DIR_VALUE
    }

    /// Whether this inode is a directory's value.
    pub fn is_dir_value(self) -> bool {
        self.0 & Self::DIR_VALUE != 0
    }
}

/// What kind of file an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    NamedPipe,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A Unix socket.
    Socket,
}

/// The attributes `stat` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// Kind.
    pub kind: FileKind,
    /// Permission bits (including setuid, setgid, sticky).
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Device number, for device nodes.
    pub rdev: u32,
}

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Caller's user id.
    pub uid: u32,
    /// Caller's group id.
    pub gid: u32,
}

/// A time in a `setattr` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (`UTIME_NOW`).
    Now,
    /// A given time.
    At(SystemTime),
}

/// What a `setattr` request changes; `None` fields are left alone (`UTIME_OMIT`).
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// New change time.
    pub ctime: Option<SystemTime>,
}

/// The answer to an open.
#[derive(Debug)]
pub struct Opened {
    /// The file handle.
    pub fh: u64,
    /// For file-backed stores: the file that holds the value, to hand to the kernel
    /// (passthrough). Only offered for read-only opens of files nobody is writing.
    pub backing: Option<File>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirItem {
    /// The entry's inode.
    pub ino: u64,
    /// The offset to resume after this entry.
    pub offset: u64,
    /// The entry's name.
    pub name: String,
    /// The entry's attributes.
    pub attr: Attr,
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatFs {
    /// Total blocks of `bsize`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Inodes in use plus free.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// Rename flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Swap source and target atomically in the namespace.
    pub exchange: bool,
}

/// Mount-level options of the filesystem.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Report every file as owned by this user.
    pub uid: Option<u32>,
    /// Report every file as owned by this group.
    pub gid: Option<u32>,
    /// Clear these permission bits in every reported mode.
    pub umask: Option<u32>,
    /// Offer kernel passthrough for file-backed values.
    pub passthrough: bool,
    /// Write the UnixFS blocks of every committed file under `/blocks` (`-o ipfs_blocks`).
    pub ipfs_blocks: bool,
}

impl Default for FsOptions {
    fn default() -> FsOptions {
        FsOptions {
            read_only: false,
            uid: None,
            gid: None,
            umask: None,
            passthrough: true,
            ipfs_blocks: false,
        }
    }
}
