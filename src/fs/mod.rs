//! `DsFs`: POSIX filesystem semantics over the key index and a datastore.
//!
//! This module knows no FUSE types; [`fuse`] adapts it to fuser. Inode numbers are index node
//! ids (stable across mounts). A file's bytes live in the datastore under the key its path
//! spells; directories, symlinks, modes, owners, times and xattrs live in the index.
//!
//! Writes are staged per inode: every handle of a file shares one [`Staged`] value, written at
//! any offset and read back by every handle before it is committed, and committed to the store
//! (for file-backed stores, by one rename) on `flush`/`close`, `fsync`, and unmount. See
//! `docs/SEMANTICS.md` for what each operation promises.
//!
//! # Locks
//!
//! The lock order of the filesystem, and the one place it is written down:
//!
//! 1. `DsFs::handles` and `DsFs::open` (the handle table and the open-file table) are held
//!    only to look up, insert or remove an entry and to count an inode's opens: never across
//!    store or index I/O and never while waiting for another lock. Callers clone the `Arc` out
//!    and drop the guard before locking the inode (`DsFs::open_inode_of`).
//! 2. An open inode's `InodeState` mutex may be held across store I/O and index transactions
//!    for that file (staging, commit, the move of its value in a rename), so that every read,
//!    write and commit sees the key and the value in step. Holding one blocks only that file.
//!    When several are held at once (a rename of a directory with open files in it), they are
//!    taken in ascending inode order.
//! 3. The index's write transaction and the stores' own locks are innermost: no inode state
//!    lock is ever taken inside an index transaction or a store call.
//!
//! `DsFs::shut` is taken by `shutdown` alone, before any of these.

pub mod error;
pub mod fuse;
pub mod names;

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

pub use error::{FsError, FsResult};
use names::{NameRef, VALUE_NAME, component_to_name, long_name_matches, name_to_component};

use crate::datastore::{Datastore, Key, StageInit, Staged};
use crate::index::node::Timestamp;
use crate::index::{
    Index, IndexError, IndexErrorKind, IndexedStore, Node, NodeId, NodeKind, ROOT, Tx,
};

/// Inode numbers with this bit set name the value of a directory that also holds one
/// (the `.dsfs.value` entry); the rest of the bits are the directory's node id.
const VALUE_INO: u64 = 1 << 63;
/// Readdir offsets: 1 is `.`, 2 is `..`, 3 is `.dsfs.value`, entries follow at cookie + 3.
const FIRST_ENTRY_OFFSET: u64 = 3;
/// The block size reported to tools, which size their I/O buffers from it.
const BLKSIZE: u32 = 1 << 20;
/// The largest extended attribute value accepted.
const XATTR_MAX: usize = 64 << 10;

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
}

impl Default for FsOptions {
    fn default() -> FsOptions {
        FsOptions {
            read_only: false,
            uid: None,
            gid: None,
            umask: None,
            passthrough: true,
        }
    }
}

/// The write state of one open inode, shared by all its handles.
struct InodeState {
    /// The key the value lives under (updated by renames).
    key: Key,
    /// Pending bytes, if the file has been written (or truncated) since the last commit.
    staged: Option<Staged>,
    /// The staged bytes differ from the committed value.
    dirty: bool,
    /// The name was removed while open: reads still work, nothing is committed.
    unlinked: bool,
    /// Modification time of uncommitted writes.
    mtime: Option<Timestamp>,
    /// The attributes the inode had when its last name was removed (for `fstat` of an open,
    /// unlinked file).
    orphan: Option<Node>,
}

/// One value that a rename moves from one key to another.
struct ValueMove {
    from: Key,
    to: Key,
    id: NodeId,
    size: u64,
}

struct OpenInode {
    state: Mutex<InodeState>,
    /// Open handles and other users (a truncate in progress). Changed only under the write
    /// lock of the open-file table, so that the last one out removes the entry.
    opens: AtomicU32,
}

struct Handle {
    ino: u64,
    inode: Arc<OpenInode>,
    writable: bool,
    append: bool,
}

/// The filesystem. Every method takes `&self` and may run on many threads at once: per-inode
/// state has its own lock, and the handle table is read-locked on the data path.
pub struct DsFs {
    store: Arc<IndexedStore>,
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
    options: FsOptions,
    file_backed: bool,
    open: RwLock<HashMap<u64, Arc<OpenInode>>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    shut: Mutex<bool>,
    /// The IPFS CIDs of files, each with the (mtime, size) it was computed for.
    cids: Mutex<HashMap<u64, (Timestamp, u64, String)>>,
}

fn ts(t: Timestamp) -> SystemTime {
    t.into()
}

fn now_ts() -> Timestamp {
    Timestamp::now()
}

fn time_of(t: TimeSet) -> Timestamp {
    match t {
        TimeSet::Now => now_ts(),
        TimeSet::At(t) => Timestamp::from(t),
    }
}

fn idx_err(kind: IndexErrorKind, msg: impl Into<String>) -> IndexError {
    IndexError::new(kind, msg)
}

impl DsFs {
    /// A filesystem over `store` (a backend plus its index).
    pub fn new(store: Arc<IndexedStore>, options: FsOptions) -> DsFs {
        let backend = store.backend().clone();
        let index = store.index().clone();
        let file_backed = backend.capabilities().file_backed;
        DsFs {
            store,
            backend,
            index,
            options,
            file_backed,
            open: RwLock::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            shut: Mutex::new(false),
            cids: Mutex::new(HashMap::new()),
        }
    }

    /// The store this filesystem serves.
    pub fn store(&self) -> &Arc<IndexedStore> {
        &self.store
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.options.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Refuses new data (ENOSPC) while the repository's space reserve is spent, so that the
    /// space left goes to commits of what was already written and to removals.
    fn check_room(&self) -> FsResult<()> {
        match self.index.reserve() {
            Some(r) if !r.room_for_new_data() => Err(FsError::NoSpace),
            _ => Ok(()),
        }
    }

    fn node(&self, id: NodeId) -> FsResult<Node> {
        Ok(self.index.node(id)?)
    }

    fn dir_node(&self, id: NodeId) -> FsResult<Node> {
        if id & VALUE_INO != 0 {
            return Err(FsError::NotDir);
        }
        let n = self.node(id)?;
        if n.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(n)
    }

    fn attr_of(&self, ino: u64, n: &Node) -> Attr {
        let (kind, mut size, perm) = if ino & VALUE_INO != 0 {
            (
                FileKind::File,
                n.value.unwrap_or(0),
                (n.mode & 0o7666) as u16,
            )
        } else {
            let k = match n.kind {
                NodeKind::Dir => FileKind::Dir,
                NodeKind::File => FileKind::File,
                NodeKind::Symlink => FileKind::Symlink,
                NodeKind::Fifo => FileKind::NamedPipe,
                NodeKind::CharDevice => FileKind::CharDevice,
                NodeKind::BlockDevice => FileKind::BlockDevice,
                NodeKind::Socket => FileKind::Socket,
            };
            (k, n.size(), n.mode as u16)
        };
        let mut mtime = n.mtime;
        let mut ctime = n.ctime;
        if kind == FileKind::File
            && let Some(inode) = self.open_inode_of(ino)
        {
            let st = inode.state.lock();
            if let Some(staged) = &st.staged
                && let Ok(len) = staged.len()
            {
                size = len;
            }
            if let Some(m) = st.mtime {
                mtime = m.max(mtime);
                ctime = m.max(ctime);
            }
        }
        let mut perm = perm;
        if let Some(mask) = self.options.umask {
            perm &= !(mask as u16 & 0o7777);
        }
        Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: ts(n.atime),
            mtime: ts(mtime),
            ctime: ts(ctime),
            kind,
            perm,
            nlink: if ino & VALUE_INO != 0 { 1 } else { n.nlink() },
            uid: self.options.uid.unwrap_or(n.uid),
            gid: self.options.gid.unwrap_or(n.gid),
            blksize: BLKSIZE,
            rdev: n.rdev,
        }
    }

    /// Attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let n = match self.node(ino & !VALUE_INO) {
            Ok(n) => n,
            Err(FsError::NotFound) => {
                // An open file whose last name is gone still answers fstat (with nlink 0).
                let inode = self.open.read().get(&ino).cloned();
                let snapshot = inode.and_then(|i| i.state.lock().orphan.clone());
                let Some(n) = snapshot else {
                    return Err(FsError::NotFound);
                };
                let mut attr = self.attr_of(ino, &n);
                attr.nlink = 0;
                return Ok(attr);
            }
            Err(e) => return Err(e),
        };
        if ino & VALUE_INO != 0 && (n.kind != NodeKind::Dir || n.value.is_none()) {
            return Err(FsError::NotFound);
        }
        let n = self.revalidated(ino, n)?;
        Ok(self.attr_of(ino, &n))
    }

    /// For a store others may write: checks the store's segments once per interval, and asks
    /// the store for the value of node `ino` once per interval. A value deleted underneath is
    /// `NotFound`; one rewritten underneath has its new size. Files open here are left alone
    /// (their value is this filesystem's to commit).
    fn revalidated(&self, ino: u64, n: Node) -> FsResult<Node> {
        if !self.store.follows() {
            return Ok(n);
        }
        if let Err(e) = self.store.revalidate() {
            log::warn!("revalidating the index against the store failed: {e}");
        }
        let id = ino & !VALUE_INO;
        let Some(size) = n.value else {
            return Ok(n);
        };
        if self.open.read().contains_key(&ino) {
            return Ok(n);
        }
        let key = self.index.key_of(id)?;
        match self.store.revalidate_key(&key, size)? {
            Some(s) if s == size => Ok(n),
            Some(_) => Ok(self.node(id)?),
            None => match self.index.node(id) {
                // A directory that lost its value, or a node that went with it.
                Ok(fresh) if ino & VALUE_INO == 0 => Ok(fresh),
                Ok(_) => Err(FsError::NotFound),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let dir = self.dir_node(parent)?;
        match self.resolve_name(parent, name)? {
            NameRef::DirValue => {
                if dir.value.is_some() {
                    Ok(self.attr_of(parent | VALUE_INO, &dir))
                } else {
                    Err(FsError::NotFound)
                }
            }
            NameRef::Component(c) => match self.index.lookup(parent, &c)? {
                Some((id, n)) => {
                    let n = self.revalidated(id, n)?;
                    Ok(self.attr_of(id, &n))
                }
                None if self.store.follows() => {
                    // A name the index does not know may have been added underneath.
                    let key = self.key_of(parent)?.child_string(&c);
                    if self.store.discover(&key)?.is_none() {
                        return Err(FsError::NotFound);
                    }
                    match self.index.lookup(parent, &c)? {
                        Some((id, n)) => Ok(self.attr_of(id, &n)),
                        None => Err(FsError::NotFound),
                    }
                }
                None => Err(FsError::NotFound),
            },
            NameRef::Long(_) => Err(FsError::NotFound),
        }
    }

    /// What `name` in directory `parent` refers to, with a [`NameRef::Long`] name resolved to
    /// the component it stands for (`NotFound` when no entry has that name). Only long names
    /// cost a scan of the directory.
    fn resolve_name(&self, parent: u64, name: &[u8]) -> FsResult<NameRef> {
        let NameRef::Long(long) = name_to_component(name)? else {
            return name_to_component(name);
        };
        let mut after = 0;
        loop {
            let entries = self.index.list(parent, after, 1024)?;
            let Some(last) = entries.last() else {
                return Err(FsError::NotFound);
            };
            after = last.cookie;
            if let Some(e) = entries
                .into_iter()
                .find(|e| long_name_matches(&e.name, &long))
            {
                return Ok(NameRef::Component(e.name));
            }
        }
    }

    /// The key of inode `ino` (a directory value's inode has its directory's key).
    fn key_of(&self, ino: u64) -> FsResult<Key> {
        Ok(self.index.key_of(ino & !VALUE_INO)?)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let n = self.node(ino)?;
        if n.kind != NodeKind::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        Ok(n.target)
    }

    fn new_node(&self, ctx: Ctx, parent: &Node, kind: NodeKind, mode: u32, umask: u32) -> Node {
        let mut n = Node::new(kind, 0, "", mode & !umask & 0o7777, ctx.uid, ctx.gid);
        if parent.mode & libc::S_ISGID != 0 {
            n.gid = parent.gid;
            if kind == NodeKind::Dir {
                n.mode |= libc::S_ISGID;
            }
        }
        n
    }

    fn component(name: &[u8]) -> FsResult<String> {
        match name_to_component(name)? {
            NameRef::Component(c) => Ok(c),
            NameRef::DirValue => Err(FsError::Invalid(format!(
                "{VALUE_NAME} names a directory's value and cannot be created this way"
            ))),
            NameRef::Long(name) => Err(FsError::Invalid(format!(
                "{name:?} stands for an over-long key component and cannot be created"
            ))),
        }
    }

    /// Makes a directory.
    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        self.create_index_node(ctx, parent, name, NodeKind::Dir, mode, umask, |n| {
            n.explicit = true;
        })
    }

    /// Creates a node that lives in the index only (a directory, symlink or special file).
    #[allow(clippy::too_many_arguments)]
    fn create_index_node(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        kind: NodeKind,
        mode: u32,
        umask: u32,
        fill: impl FnOnce(&mut Node),
    ) -> FsResult<Attr> {
        self.check_writable()?;
        self.check_room()?;
        let comp = Self::component(name)?;
        let pnode = self.dir_node(parent)?;
        let mut n = self.new_node(ctx, &pnode, kind, mode, umask);
        fill(&mut n);
        let id = self.index.write(|tx| tx.create(parent, &comp, n.clone()))?;
        self.getattr(id)
    }

    /// Makes a symbolic link.
    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Attr> {
        self.create_index_node(ctx, parent, name, NodeKind::Symlink, 0o777, 0, |n| {
            n.target = target.to_vec();
        })
    }

    /// `mknod`: an empty regular file (a key with an empty value) for `S_IFREG`; named pipes,
    /// sockets and device nodes are kept in the index only, like symlinks.
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        self.check_room()?;
        let special = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(NodeKind::Fifo),
            libc::S_IFCHR => Some(NodeKind::CharDevice),
            libc::S_IFBLK => Some(NodeKind::BlockDevice),
            libc::S_IFSOCK => Some(NodeKind::Socket),
            other => return Err(FsError::Invalid(format!("mknod of file type {other:o}"))),
        };
        if let Some(kind) = special {
            return self.create_index_node(ctx, parent, name, kind, mode, umask, |n| {
                if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
                    n.rdev = rdev;
                }
            });
        }
        let comp = Self::component(name)?;
        let pnode = self.dir_node(parent)?;
        let key = self.key_of(parent)?.join_component(&comp)?;
        if self.index.lookup(parent, &comp)?.is_some() {
            return Err(FsError::Exists);
        }
        self.backend.put(&key, b"")?;
        let n = self.new_node(ctx, &pnode, NodeKind::File, mode, umask);
        let id = self.create_file_node(parent, &comp, &key, n)?;
        self.getattr(id)
    }

    fn create_file_node(
        &self,
        parent: u64,
        comp: &str,
        key: &Key,
        mut n: Node,
    ) -> FsResult<NodeId> {
        n.value = Some(0);
        Ok(self.index.write(|tx| {
            let id = tx.create(parent, comp, n.clone())?;
            tx.set_key(key, id, 0)?;
            Ok(id)
        })?)
    }

    /// Creates and opens a regular file. With `exclusive`, an existing file is EEXIST;
    /// otherwise it is opened (and truncated if `flags` has `O_TRUNC`).
    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Attr, Opened)> {
        self.check_writable()?;
        let comp = Self::component(name)?;
        let pnode = self.dir_node(parent)?;
        if let Some((id, existing)) = self.index.lookup(parent, &comp)? {
            if flags & libc::O_EXCL != 0 {
                return Err(FsError::Exists);
            }
            if existing.kind == NodeKind::Dir {
                return Err(FsError::IsDir);
            }
            let opened = self.open(id, flags)?;
            return Ok((self.getattr(id)?, opened));
        }
        self.check_room()?;
        let key = self.key_of(parent)?.join_component(&comp)?;
        let n = self.new_node(ctx, &pnode, NodeKind::File, mode, umask);
        let created = n.mtime;
        // The value is created empty in staging and reaches the store when the file is first
        // committed (close, flush or fsync): one store write per small file, not two.
        let staged = self.backend.stage(&key, StageInit::Empty)?;
        let id = self.create_file_node(parent, &comp, &key, n)?;
        let inode = self.open_inode(id, key)?;
        {
            let mut st = inode.state.lock();
            st.staged = Some(staged);
            st.dirty = true;
            // Committing the new file later must not move its times.
            st.mtime = Some(created);
        }
        let fh = self.add_handle(id, inode, flags);
        Ok((self.getattr(id)?, Opened { fh, backing: None }))
    }

    fn open_inode(&self, ino: u64, key: Key) -> FsResult<Arc<OpenInode>> {
        let mut open = self.open.write();
        let inode = open
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(OpenInode {
                    state: Mutex::new(InodeState {
                        key,
                        staged: None,
                        dirty: false,
                        unlinked: false,
                        mtime: None,
                        orphan: None,
                    }),
                    opens: AtomicU32::new(0),
                })
            })
            .clone();
        inode.opens.fetch_add(1, Ordering::Relaxed);
        Ok(inode)
    }

    /// The open inode `ino`, if it is open. The table's lock is released on return, so the
    /// caller may lock the inode (see the lock order in the module documentation).
    fn open_inode_of(&self, ino: u64) -> Option<Arc<OpenInode>> {
        self.open.read().get(&ino).cloned()
    }

    /// Drops one reference to an open inode; the last one removes it from the table.
    fn forget_open(&self, ino: u64, inode: &Arc<OpenInode>) {
        let mut open = self.open.write();
        let before = inode.opens.fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            inode.opens.store(0, Ordering::Relaxed);
            if open.get(&ino).is_some_and(|i| Arc::ptr_eq(i, inode)) {
                open.remove(&ino);
            }
        }
    }

    fn add_handle(&self, ino: u64, inode: Arc<OpenInode>, flags: i32) -> u64 {
        let acc = flags & libc::O_ACCMODE;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(
            fh,
            Arc::new(Handle {
                ino,
                inode,
                writable: acc == libc::O_WRONLY || acc == libc::O_RDWR,
                append: flags & libc::O_APPEND != 0,
            }),
        );
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Opens inode `ino` with open(2) `flags`.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let attr = self.getattr(ino)?;
        match attr.kind {
            FileKind::Dir => return Err(FsError::IsDir),
            FileKind::Symlink
            | FileKind::NamedPipe
            | FileKind::CharDevice
            | FileKind::BlockDevice
            | FileKind::Socket => {
                // The kernel opens these itself; FUSE never asks.
                return Err(FsError::Invalid("open of a non-regular file".into()));
            }
            FileKind::File => {}
        }
        let acc = flags & libc::O_ACCMODE;
        let writing = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if (writing || flags & libc::O_TRUNC != 0) && self.options.read_only {
            return Err(FsError::ReadOnly);
        }
        let key = self.key_of(ino)?;
        let inode = self.open_inode(ino, key.clone())?;
        let mut backing = None;
        {
            let mut st = inode.state.lock();
            if flags & libc::O_TRUNC != 0 && writing {
                match &st.staged {
                    Some(s) => s.set_len(0)?,
                    None => st.staged = Some(self.backend.stage(&key, StageInit::Empty)?),
                }
                st.dirty = true;
                st.mtime = Some(now_ts());
            } else if !writing
                && self.options.passthrough
                && self.file_backed
                && st.staged.is_none()
                && ino & VALUE_INO == 0
            {
                // Nobody is writing: the kernel may read the committed file directly.
                match self.backend.open_backing(&st.key) {
                    Ok(f) => backing = f,
                    Err(e) => log::debug!("no passthrough for {}: {e}", st.key),
                }
            }
        }
        let fh = self.add_handle(ino, inode, flags);
        Ok(Opened { fh, backing })
    }

    /// Reads up to `size` bytes at `offset` through handle `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut tries = 0;
        let n = loop {
            let key = {
                let st = h.inode.state.lock();
                match &st.staged {
                    Some(staged) => break staged.read_at(offset, &mut buf)?,
                    None => st.key.clone(),
                }
            };
            // The store is read without the inode's lock, so that a slow read does not stall
            // the file's other users.
            match self.backend.read_at(&key, offset, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.is_not_found() => {
                    // A rename moves the value with the inode locked and re-keys the inode
                    // before unlocking: once the lock is ours again, a changed key means the
                    // value moved under us, so read it again at its new key.
                    tries += 1;
                    if tries < 64 && self.key_moved(h.ino, &h.inode, &key)? {
                        continue;
                    }
                    // An empty file created but not yet committed elsewhere.
                    if self.index.value_size(&key)? == Some(0) {
                        break 0;
                    }
                    // Deleted underneath by another program: the file is gone.
                    if self.store.follows() {
                        let listed = self.index.value_size(&key)?.unwrap_or(0);
                        if self.store.recheck_key(&key, listed)?.is_none() {
                            return Err(FsError::NotFound);
                        }
                    }
                    return Err(FsError::store(e));
                }
                Err(e) => return Err(FsError::store(e)),
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    /// Whether a read of an open inode that found no value at `key` should be tried again:
    /// the value moved since (a rename, or staged writes now hold it), or it moved away and
    /// back (two renames) so the index names a value there again. Brings the inode's key up
    /// to date from the index.
    fn key_moved(&self, ino: u64, inode: &OpenInode, key: &Key) -> FsResult<bool> {
        let mut st = inode.state.lock();
        if st.staged.is_some() || st.key != *key {
            return Ok(true);
        }
        if st.unlinked {
            return Ok(false);
        }
        match self.index.key_of(ino & !VALUE_INO) {
            Ok(current) if current != *key => {
                st.key = current;
                Ok(true)
            }
            Ok(_) => Ok(self.index.value_size(key)?.is_some_and(|size| size > 0)),
            Err(e) if e.kind() == IndexErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ensures the inode has a staging area seeded with its current value.
    fn ensure_staged<'a>(&self, st: &'a mut InodeState) -> FsResult<&'a Staged> {
        if st.staged.is_none() {
            st.staged = Some(self.backend.stage(&st.key, StageInit::CopyCurrent)?);
        }
        st.staged
            .as_ref()
            .ok_or_else(|| FsError::Io("staging vanished".into()))
    }

    /// Writes `data` at `offset` (at the end for `O_APPEND` handles); returns the count.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        self.check_room()?;
        let mut st = h.inode.state.lock();
        let append = h.append;
        let staged = self.ensure_staged(&mut st)?;
        let at = if append { staged.len()? } else { offset };
        staged.write_all_at(at, data)?;
        st.dirty = true;
        st.mtime = Some(now_ts());
        Ok(data.len() as u32)
    }

    /// Commits the inode's staged bytes, if any changed, to the store and the index. A failed
    /// commit keeps the staged bytes and leaves the file dirty, so the next flush, fsync or close
    /// tries again and reports the failure until a commit succeeds.
    fn commit(&self, ino: u64, inode: &OpenInode, durable: bool) -> FsResult<()> {
        let mut st = inode.state.lock();
        if st.unlinked {
            return Ok(());
        }
        if !st.dirty {
            if durable {
                self.backend.sync(&st.key)?;
                self.index.sync()?;
            }
            return Ok(());
        }
        let Some(staged) = st.staged.take() else {
            st.dirty = false;
            return Ok(());
        };
        // The store consumes the staged value (a file-backed store renames its file); this
        // second handle on the same bytes stays with the inode if the commit fails.
        let keep = match staged.try_clone_detached() {
            Ok(k) => k,
            Err(e) => {
                st.staged = Some(staged);
                return Err(e.into());
            }
        };
        let key = st.key.clone();
        let pending_mtime = st.mtime;
        let result = (|| -> FsResult<()> {
            let size = staged.len()?;
            // The times of the last change, not of this commit: a commit on the kernel's
            // asynchronous RELEASE must not move a file's times after close() returned.
            let mtime = match pending_mtime {
                Some(t) => t,
                None => recorded_mtime(&self.index, ino)?,
            };
            self.backend.commit_staged(&key, staged, durable)?;
            self.index.write(|tx| {
                let id = ino & !VALUE_INO;
                let mut n = tx.node_required(id)?;
                n.value = Some(size);
                n.mtime = mtime;
                n.ctime = mtime;
                tx.put_node(id, &n)?;
                tx.set_key(&key, id, size)
            })?;
            Ok(())
        })();
        if let Err(e) = result {
            log::warn!("commit of inode {ino} failed, its writes stay staged: {e}");
            st.staged = Some(keep);
            return Err(e);
        }
        st.dirty = false;
        st.mtime = None;
        drop(keep);
        drop(st);
        if durable {
            self.index.sync()?;
        }
        Ok(())
    }

    /// `close` of one descriptor: commits pending writes.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.commit(h.ino, &h.inode, false)
    }

    /// `fsync`: commits pending writes durably.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.commit(h.ino, &h.inode, true)
    }

    /// The last reference to a handle is gone: commits if it was the inode's last handle.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.write().remove(&fh) else {
            return Err(FsError::BadHandle);
        };
        let result = self.commit(h.ino, &h.inode, false);
        self.forget_open(h.ino, &h.inode);
        result
    }

    /// Changes attributes; `fh` is the handle when the request came through one.
    pub fn setattr(&self, ctx: Ctx, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        let _ = ctx;
        self.check_writable()?;
        let id = ino & !VALUE_INO;
        if let Some(size) = set.size {
            self.truncate(ino, size)?;
        }
        let has_meta = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.ctime.is_some()
            || set.size.is_some();
        if has_meta {
            // An explicit mtime replaces the one pending from writes. The file's state lock is
            // taken and released before the index transaction: everywhere else (commit) takes
            // the state lock first and the index second, so taking it inside the transaction
            // could deadlock.
            if set.mtime.is_some()
                && let Some(inode) = self.open_inode_of(ino)
            {
                inode.state.lock().mtime = None;
            }
            self.index.write(|tx| {
                let mut n = tx.node_required(id)?;
                let now = now_ts();
                if let Some(mode) = set.mode {
                    n.mode = mode & 0o7777;
                }
                let chown =
                    set.uid.is_some_and(|u| u != n.uid) || set.gid.is_some_and(|g| g != n.gid);
                if let Some(uid) = set.uid {
                    n.uid = uid;
                }
                if let Some(gid) = set.gid {
                    n.gid = gid;
                }
                if chown && n.kind != NodeKind::Dir && set.mode.is_none() {
                    // As on Linux: a change of owner drops setuid, and setgid when the group
                    // can execute.
                    n.mode &= !libc::S_ISUID;
                    if n.mode & 0o010 != 0 {
                        n.mode &= !libc::S_ISGID;
                    }
                }
                if let Some(t) = set.atime {
                    n.atime = time_of(t);
                }
                if let Some(t) = set.mtime {
                    n.mtime = time_of(t);
                } else if set.size.is_some() {
                    n.mtime = now;
                }
                n.ctime = set.ctime.map(Timestamp::from).unwrap_or(now);
                tx.put_node(id, &n)
            })?;
        }
        self.getattr(ino)
    }

    fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        let attr = self.getattr(ino)?;
        if attr.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        if attr.kind != FileKind::File {
            return Err(FsError::Invalid("truncate of a non-file".into()));
        }
        if let Some(max) = self.backend.capabilities().max_value_size
            && size > max
        {
            return Err(FsError::FileTooBig);
        }
        let key = self.key_of(ino)?;
        let inode = self.open_inode(ino, key)?;
        let result = (|| {
            {
                let mut st = inode.state.lock();
                if size == 0 && st.staged.is_none() {
                    st.staged = Some(self.backend.stage(&st.key, StageInit::Empty)?);
                } else {
                    self.ensure_staged(&mut st)?;
                }
                if let Some(s) = &st.staged {
                    s.set_len(size)?;
                }
                st.dirty = true;
                st.mtime = Some(now_ts());
            }
            // A truncate is visible to every later reader, so commit it unless a handle is
            // still writing (its close commits).
            let writers = self
                .handles
                .read()
                .values()
                .any(|h| h.ino == ino && h.writable);
            if !writers {
                self.commit(ino, &inode, false)?;
            }
            Ok(())
        })();
        self.drop_open_ref(ino, &inode);
        result
    }

    /// Drops the reference `truncate` took; the last user commits (outside the table lock).
    fn drop_open_ref(&self, ino: u64, inode: &Arc<OpenInode>) {
        if inode.opens.load(Ordering::Relaxed) <= 1
            && let Err(e) = self.commit(ino, inode, false)
        {
            log::error!("commit of inode {ino} failed: {e}");
        }
        self.forget_open(ino, inode);
    }

    /// Removes a file or symlink (or, for `.dsfs.value`, a directory's value).
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let comp = match self.resolve_name(parent, name)? {
            NameRef::DirValue => {
                if dir.value.is_none() {
                    return Err(FsError::NotFound);
                }
                let key = self.key_of(parent)?;
                self.orphan_open(parent | VALUE_INO)?;
                // The value goes first: if that fails, the name still has its value.
                if let Err(e) = self.backend.delete(&key) {
                    self.unorphan(parent | VALUE_INO);
                    return Err(e.into());
                }
                self.index.write(|tx| {
                    let mut n = tx.node_required(parent)?;
                    n.value = None;
                    n.explicit = true;
                    n.ctime = now_ts();
                    tx.put_node(parent, &n)?;
                    tx.remove_key(&key)?;
                    Ok(())
                })?;
                return Ok(());
            }
            NameRef::Component(c) => c,
            NameRef::Long(_) => return Err(FsError::NotFound),
        };
        let Some((id, n)) = self.index.lookup(parent, &comp)? else {
            return Err(FsError::NotFound);
        };
        if n.kind == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        if n.links > 1 {
            return self.unlink_name(parent, &comp, id, &n);
        }
        let key = self.key_of(parent)?.join_component(&comp)?;
        self.orphan_open(id)?;
        // The value goes before the name: a failed delete leaves both, and a failed index
        // write after it leaves a name without a value that a retried unlink (or the reconcile
        // after a crash) removes; never a value that no name reaches.
        if n.kind == NodeKind::File
            && let Err(e) = self.backend.delete(&key)
        {
            self.unorphan(id);
            return Err(e.into());
        }
        self.index.write(|tx| {
            Self::keep_dir(tx, parent)?;
            tx.unlink(parent, &comp)?;
            tx.remove_node(id)?;
            if n.kind == NodeKind::File {
                tx.remove_key(&key)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Removes one name of a node that has several (hard links). If it is the name whose key
    /// holds the value, the value first moves (one rename) to the key of a remaining name, so
    /// the datastore never loses it.
    fn unlink_name(&self, parent: u64, comp: &str, id: NodeId, n: &Node) -> FsResult<()> {
        let primary = n.parent == parent && n.name == comp;
        if !primary {
            self.index.write(|tx| {
                Self::keep_dir(tx, parent)?;
                tx.unlink(parent, comp)?;
                tx.remove_alias(id, parent, comp)?;
                let mut node = tx.node_required(id)?;
                node.links = node.links.saturating_sub(1).max(1);
                node.ctime = now_ts();
                tx.put_node(id, &node)
            })?;
            return Ok(());
        }
        let Some((ap, an)) = self.index.aliases(id)?.into_iter().next() else {
            return Err(FsError::Io(format!(
                "node {id} counts {} names but lists none",
                n.links
            )));
        };
        let old = self.key_of(id)?;
        let new = self.key_of(ap)?.join_component(&an)?;
        let size = if n.kind == NodeKind::File {
            self.commit_if_open(id)?;
            Some(self.index.value_size(&old)?.unwrap_or(0))
        } else {
            None
        };
        let moves: Vec<ValueMove> = size
            .iter()
            .map(|&size| ValueMove {
                from: old.clone(),
                to: new.clone(),
                id,
                size,
            })
            .collect();
        self.move_values(&moves, || {
            Ok(self.index.write(|tx| {
                Self::keep_dir(tx, parent)?;
                tx.unlink(parent, comp)?;
                tx.remove_alias(id, ap, &an)?;
                let mut node = tx.node_required(id)?;
                node.parent = ap;
                node.name = an.clone();
                node.links = node.links.saturating_sub(1).max(1);
                node.ctime = now_ts();
                tx.put_node(id, &node)?;
                if let Some(size) = size {
                    tx.remove_key(&old)?;
                    tx.set_key(&new, id, size)?;
                }
                Ok(())
            })?)
        })?;
        self.rekey_open()
    }

    /// Marks a directory the user has seen as explicit, so that removing its last entry
    /// leaves it in place.
    fn keep_dir(tx: &mut Tx<'_>, dir: NodeId) -> Result<(), IndexError> {
        let mut n = tx.node_required(dir)?;
        if !n.explicit {
            n.explicit = true;
            tx.put_node(dir, &n)?;
        }
        Ok(())
    }

    /// Detaches an open inode from its key before the key goes away: its handles keep reading
    /// a private copy, and nothing of it is committed.
    fn orphan_open(&self, ino: u64) -> FsResult<()> {
        if let Some(inode) = self.open_inode_of(ino) {
            let snapshot = self.index.node(ino & !VALUE_INO).ok();
            let mut st = inode.state.lock();
            self.ensure_staged(&mut st)?;
            st.unlinked = true;
            st.dirty = false;
            st.orphan = snapshot;
        }
        Ok(())
    }

    /// Undoes [`DsFs::orphan_open`] after the removal failed: the name is still there, so its
    /// open handles write to it again (their bytes, copied when orphaned, stay staged).
    fn unorphan(&self, ino: u64) {
        if let Some(inode) = self.open.read().get(&ino).cloned() {
            let mut st = inode.state.lock();
            if st.unlinked {
                st.unlinked = false;
                st.orphan = None;
                // Orphaning dropped the dirty mark; committing the same bytes again is harmless,
                // losing a handle's pending writes is not.
                st.dirty = st.staged.is_some();
            }
        }
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        self.dir_node(parent)?;
        let comp = Self::component(name)?;
        let Some((id, n)) = self.index.lookup(parent, &comp)? else {
            return Err(FsError::NotFound);
        };
        if n.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        self.index.write(|tx| {
            let n = tx.node_required(id)?;
            if n.value.is_some() || tx.has_children(id)? {
                return Err(idx_err(IndexErrorKind::NotEmpty, "directory not empty"));
            }
            Self::keep_dir(tx, parent)?;
            tx.unlink(parent, &comp)?;
            tx.remove_node(id)
        })?;
        Ok(())
    }

    /// A hard link: another name for a file (or special file). The value stays under the key
    /// of the node's first name; the others are names in the index (see `docs/SEMANTICS.md`).
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        self.check_writable()?;
        if ino & VALUE_INO != 0 {
            return Err(FsError::NotPermitted(format!(
                "{VALUE_NAME} cannot be linked"
            )));
        }
        let n = self.node(ino)?;
        if n.kind == NodeKind::Dir {
            return Err(FsError::NotPermitted("hard links to directories".into()));
        }
        let comp = Self::component(newname)?;
        self.dir_node(newparent)?;
        self.check_room()?;
        self.index.write(|tx| {
            if tx.lookup(newparent, &comp)?.is_some() {
                return Err(idx_err(IndexErrorKind::AlreadyExists, "the name exists"));
            }
            tx.link(newparent, &comp, ino, false)?;
            tx.add_alias(ino, newparent, &comp)?;
            let mut node = tx.node_required(ino)?;
            node.links = node.links.saturating_add(1);
            node.ctime = now_ts();
            tx.put_node(ino, &node)
        })?;
        self.getattr(ino)
    }

    /// Renames `parent/name` to `newparent/newname`.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.check_writable()?;
        self.dir_node(parent)?;
        self.dir_node(newparent)?;
        let (NameRef::Component(from), NameRef::Component(to)) = (
            self.resolve_name(parent, name)?,
            self.resolve_name(newparent, newname)?,
        ) else {
            return Err(FsError::Invalid(format!(
                "{VALUE_NAME} cannot be renamed; copy it instead"
            )));
        };
        let Some((src, snode)) = self.index.lookup(parent, &from)? else {
            return Err(FsError::NotFound);
        };
        let dst = self.index.lookup(newparent, &to)?;
        if parent == newparent && from == to {
            return Ok(());
        }
        if flags.noreplace && dst.is_some() {
            return Err(FsError::Exists);
        }
        if let Some((dst_id, _)) = &dst
            && *dst_id == src
        {
            // Two names of one file: POSIX says rename does nothing.
            return Ok(());
        }
        if snode.kind == NodeKind::Dir {
            // A directory cannot move below itself.
            let mut cur = newparent;
            loop {
                if cur == src {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                if cur == ROOT {
                    break;
                }
                cur = self.node(cur)?.parent;
            }
        }
        let old_key = self.key_of(parent)?.join_component(&from)?;
        let new_key = self.key_of(newparent)?.join_component(&to)?;
        if flags.exchange {
            let Some((dst_id, dnode)) = dst else {
                return Err(FsError::NotFound);
            };
            return self.exchange(parent, &from, src, &snode, newparent, &to, dst_id, &dnode);
        }
        let mut dst = dst;
        if let Some((dst_id, dnode)) = &dst
            && dnode.kind != NodeKind::Dir
            && snode.kind != NodeKind::Dir
            && dnode.links > 1
        {
            // Replacing one name of a multiply-linked file removes just that name.
            self.unlink_name(newparent, &to, *dst_id, dnode)?;
            dst = None;
        }
        let src_is_alias = snode.links > 1 && !(snode.parent == parent && snode.name == from);
        if let Some((dst_id, dnode)) = &dst {
            match (snode.kind == NodeKind::Dir, dnode.kind == NodeKind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    if dnode.value.is_some() || self.index.entry_count(*dst_id)? > 0 {
                        return Err(FsError::NotEmpty);
                    }
                }
                (false, false) => {}
            }
            self.orphan_open(*dst_id)?;
        }
        if src_is_alias {
            // An extra name moves in the index only; the value stays under the first name.
            if let Some((_, dnode)) = &dst
                && dnode.kind == NodeKind::File
            {
                self.backend.delete(&new_key)?;
            }
            self.index.write(|tx| {
                Self::keep_dir(tx, parent)?;
                Self::drop_replaced(tx, newparent, &to, &dst, &new_key)?;
                tx.unlink(parent, &from)?;
                tx.link(newparent, &to, src, false)?;
                tx.remove_alias(src, parent, &from)?;
                tx.add_alias(src, newparent, &to)?;
                let mut n = tx.node_required(src)?;
                n.ctime = now_ts();
                tx.put_node(src, &n)
            })?;
            return Ok(());
        }
        // Move the values first (the store is the truth), then the namespace in one index
        // transaction. A crash between leaves values under their new keys with the index still
        // showing the old names; fsck --repair re-lists them.
        let moves = self.value_moves(src, &snode, &old_key, &new_key)?;
        if let Some((_, dnode)) = &dst
            && dnode.kind == NodeKind::File
            && snode.kind != NodeKind::File
        {
            // A symlink replacing a file: the file's value goes.
            self.backend.delete(&new_key)?;
        }
        self.move_values(&moves, || {
            Ok(self.index.write(|tx| {
                Self::keep_dir(tx, parent)?;
                Self::drop_replaced(tx, newparent, &to, &dst, &new_key)?;
                tx.unlink(parent, &from)?;
                let mut n = tx.node_required(src)?;
                n.parent = newparent;
                n.name = to.clone();
                n.ctime = now_ts();
                tx.put_node(src, &n)?;
                tx.link(newparent, &to, src, n.kind == NodeKind::Dir)?;
                for m in &moves {
                    tx.remove_key(&m.from)?;
                }
                for m in &moves {
                    tx.set_key(&m.to, m.id, m.size)?;
                }
                Ok(())
            })?)
        })?;
        self.rekey_open()?;
        Ok(())
    }

    /// Moves values in the store, then runs `record` (the index transaction that names them),
    /// with every open inode whose value moves locked throughout and re-keyed before it is
    /// unlocked: a read, write or commit through an open handle never uses a key whose value
    /// is gone. Inodes opened meanwhile learn their keys from [`DsFs::rekey_open`].
    fn move_values(
        &self,
        moves: &[ValueMove],
        record: impl FnOnce() -> FsResult<()>,
    ) -> FsResult<()> {
        let mut held: Vec<(u64, Arc<OpenInode>, &Key)> = Vec::new();
        for m in moves {
            for ino in [m.id, m.id | VALUE_INO] {
                if let Some(inode) = self.open_inode_of(ino) {
                    held.push((ino, inode, &m.to));
                }
            }
        }
        held.sort_by_key(|h| h.0);
        held.dedup_by_key(|h| h.0);
        let mut guards: Vec<_> = held.iter().map(|h| h.1.state.lock()).collect();
        for m in moves {
            self.backend.rename(&m.from, &m.to)?;
        }
        record()?;
        for (st, h) in guards.iter_mut().zip(&held) {
            if !st.unlinked {
                st.key = h.2.clone();
            }
        }
        Ok(())
    }

    /// Removes the entry a rename replaces (its node, and its key if it was a file).
    fn drop_replaced(
        tx: &mut Tx<'_>,
        dir: NodeId,
        name: &str,
        replaced: &Option<(NodeId, Node)>,
        key: &Key,
    ) -> Result<(), IndexError> {
        if let Some((id, node)) = replaced {
            tx.unlink(dir, name)?;
            tx.remove_node(*id)?;
            if node.kind == NodeKind::File {
                tx.remove_key(key)?;
            }
        }
        Ok(())
    }

    /// The values that move when `src` (whose key is `old`) becomes `new`: the file itself, or
    /// every value in the directory's subtree. Each item is (old key, new key, (node, size)).
    fn value_moves(
        &self,
        src: NodeId,
        snode: &Node,
        old: &Key,
        new: &Key,
    ) -> FsResult<Vec<ValueMove>> {
        let mut moves = Vec::new();
        match snode.kind {
            NodeKind::Symlink
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice
            | NodeKind::Socket => {}
            NodeKind::File => {
                self.commit_if_open(src)?;
                let size = self.index.value_size(old)?.unwrap_or(0);
                moves.push(ValueMove {
                    from: old.clone(),
                    to: new.clone(),
                    id: src,
                    size,
                });
            }
            NodeKind::Dir => {
                if let Some(size) = snode.value {
                    moves.push(ValueMove {
                        from: old.clone(),
                        to: new.clone(),
                        id: src,
                        size,
                    });
                }
                for ke in self.index.keys(Some(old))? {
                    let ke = ke?;
                    self.commit_if_open(ke.id)?;
                    let rest = ke
                        .key
                        .strip_prefix(old)
                        .ok_or_else(|| FsError::Io(format!("{} listed under {old}", ke.key)))?;
                    moves.push(ValueMove {
                        to: new.child(&rest),
                        from: ke.key,
                        id: ke.id,
                        size: ke.size,
                    });
                }
            }
        }
        Ok(moves)
    }

    fn commit_if_open(&self, id: NodeId) -> FsResult<()> {
        if let Some(inode) = self.open_inode_of(id) {
            self.commit(id, &inode, false)?;
        }
        Ok(())
    }

    /// After a rename, open inodes learn their new keys.
    fn rekey_open(&self) -> FsResult<()> {
        let open: Vec<(u64, Arc<OpenInode>)> = self
            .open
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, inode) in open {
            let mut st = inode.state.lock();
            if st.unlinked {
                continue;
            }
            match self.index.key_of(ino & !VALUE_INO) {
                Ok(key) => st.key = key,
                Err(e) if e.kind() == IndexErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        parent: u64,
        from: &str,
        src: NodeId,
        snode: &Node,
        newparent: u64,
        to: &str,
        dst: NodeId,
        dnode: &Node,
    ) -> FsResult<()> {
        if snode.kind == NodeKind::Dir || dnode.kind == NodeKind::Dir {
            return Err(FsError::NotSupported(
                "RENAME_EXCHANGE of directories is not supported".into(),
            ));
        }
        let a = self.key_of(parent)?.join_component(from)?;
        let b = self.key_of(newparent)?.join_component(to)?;
        self.commit_if_open(src)?;
        self.commit_if_open(dst)?;
        let a_size = self.index.value_size(&a)?;
        let b_size = self.index.value_size(&b)?;
        // One store operation swaps or moves the values (never a copy), then one index
        // transaction swaps the names, with both files' open inodes locked throughout. A crash
        // between the two leaves the values swapped and the index behind, which the repair
        // after an unclean stop brings in line; never one value under both names.
        let mut held: Vec<(u64, Arc<OpenInode>, &Key)> = [(src, &b), (dst, &a)]
            .into_iter()
            .filter_map(|(id, key)| self.open_inode_of(id).map(|i| (id, i, key)))
            .collect();
        held.sort_by_key(|h| h.0);
        let mut guards: Vec<_> = held.iter().map(|h| h.1.state.lock()).collect();
        match (a_size, b_size) {
            (Some(_), Some(_)) => self.backend.exchange(&a, &b).map_err(|e| {
                if e.kind() == crate::datastore::ErrorKind::Unsupported {
                    FsError::NotSupported(format!("RENAME_EXCHANGE: {e}"))
                } else {
                    FsError::store(e)
                }
            })?,
            (Some(_), None) => self.backend.rename(&a, &b)?,
            (None, Some(_)) => self.backend.rename(&b, &a)?,
            (None, None) => {}
        }
        self.index.write(|tx| {
            tx.unlink(parent, from)?;
            tx.unlink(newparent, to)?;
            let now = now_ts();
            let mut s = tx.node_required(src)?;
            s.parent = newparent;
            s.name = to.to_owned();
            s.ctime = now;
            tx.put_node(src, &s)?;
            let mut d = tx.node_required(dst)?;
            d.parent = parent;
            d.name = from.to_owned();
            d.ctime = now;
            tx.put_node(dst, &d)?;
            tx.link(newparent, to, src, false)?;
            tx.link(parent, from, dst, false)?;
            tx.remove_key(&a)?;
            tx.remove_key(&b)?;
            if let Some(size) = a_size {
                tx.set_key(&b, src, size)?;
            }
            if let Some(size) = b_size {
                tx.set_key(&a, dst, size)?;
            }
            Ok(())
        })?;
        for (st, h) in guards.iter_mut().zip(&held) {
            if !st.unlinked {
                st.key = h.2.clone();
            }
        }
        drop(guards);
        self.rekey_open()
    }

    /// Up to `limit` entries of directory `ino` after `offset` (0 starts at the beginning).
    pub fn readdir(&self, ino: u64, offset: u64, limit: usize) -> FsResult<Vec<DirItem>> {
        if offset == 0
            && self.store.follows()
            && let Err(e) = self.store.revalidate()
        {
            log::warn!("revalidating the index against the store failed: {e}");
        }
        let dir = self.dir_node(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirItem {
                ino,
                offset: 1,
                name: ".".into(),
                attr: self.attr_of(ino, &dir),
            });
        }
        if offset < 2 {
            let parent = if ino == ROOT { ROOT } else { dir.parent };
            let pnode = self.node(parent)?;
            out.push(DirItem {
                ino: parent,
                offset: 2,
                name: "..".into(),
                attr: self.attr_of(parent, &pnode),
            });
        }
        if offset < FIRST_ENTRY_OFFSET && dir.value.is_some() {
            out.push(DirItem {
                ino: ino | VALUE_INO,
                offset: FIRST_ENTRY_OFFSET,
                name: VALUE_NAME.into(),
                attr: self.attr_of(ino | VALUE_INO, &dir),
            });
        }
        let after = offset.saturating_sub(FIRST_ENTRY_OFFSET);
        let want = limit.saturating_sub(out.len()).max(1);
        for e in self.index.list(ino, after, want)? {
            let name = component_to_name(&e.name);
            out.push(DirItem {
                ino: e.id,
                offset: e.cookie + FIRST_ENTRY_OFFSET,
                name,
                attr: self.attr_of(e.id, &e.node),
            });
        }
        Ok(out)
    }

    /// Filesystem statistics: the space the store reports, or else the space of the filesystem
    /// holding the store's files.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let files = self.index.key_count()?;
        if let Some(space) = self.backend.space()? {
            const BLOCK: u64 = 4096;
            // A store without local files has no inode limit; report plenty, as network
            // filesystems do.
            let ffree = u64::from(u32::MAX);
            return Ok(StatFs {
                blocks: space.total / BLOCK,
                bfree: space.free / BLOCK,
                bavail: space.available / BLOCK,
                files: files + ffree,
                ffree,
                bsize: BLOCK as u32,
                namelen: names::NAME_MAX as u32,
                frsize: BLOCK as u32,
            });
        }
        let dir = self.backend.staging_dir();
        let Ok(vfs) = crate::sys::statvfs(&dir) else {
            return Ok(StatFs {
                files,
                bsize: 4096,
                frsize: 4096,
                namelen: names::NAME_MAX as u32,
                ..StatFs::default()
            });
        };
        Ok(StatFs {
            blocks: vfs.f_blocks,
            bfree: vfs.f_bfree,
            bavail: vfs.f_bavail,
            files: files + vfs.f_ffree,
            ffree: vfs.f_ffree,
            bsize: vfs.f_bsize as u32,
            namelen: names::NAME_MAX as u32,
            frsize: vfs.f_frsize as u32,
        })
    }

    /// Sets an extended attribute (`XATTR_CREATE`/`XATTR_REPLACE` honoured).
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.check_writable()?;
        refuse_computed_xattr(name)?;
        self.check_room()?;
        let name = xattr_name(name)?;
        if value.len() > XATTR_MAX {
            return Err(FsError::TooBig);
        }
        let id = ino & !VALUE_INO;
        self.index
            .write(|tx| {
                let exists = tx.xattr(id, &name)?.is_some();
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(idx_err(IndexErrorKind::AlreadyExists, "attribute exists"));
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(idx_err(IndexErrorKind::NotFound, "no such attribute"));
                }
                tx.set_xattr(id, &name, Some(value))?;
                let mut n = tx.node_required(id)?;
                n.ctime = now_ts();
                tx.put_node(id, &n)
            })
            .map_err(|e| match e.kind() {
                IndexErrorKind::NotFound => FsError::NoData,
                _ => e.into(),
            })
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name == CID_XATTR.as_bytes() {
            return self.ipfs_cid(ino).map(String::into_bytes);
        }
        let name = xattr_name(name)?;
        self.node(ino & !VALUE_INO)?;
        self.index
            .xattr(ino & !VALUE_INO, &name)?
            .ok_or(FsError::NoData)
    }

    /// The NUL-separated list of extended attribute names.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.node(ino & !VALUE_INO)?;
        let mut out = Vec::new();
        for n in self.index.xattr_names(ino & !VALUE_INO)? {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        refuse_computed_xattr(name)?;
        let name = xattr_name(name)?;
        let id = ino & !VALUE_INO;
        let removed = self.index.write(|tx| {
            let removed = tx.set_xattr(id, &name, None)?;
            if removed {
                let mut n = tx.node_required(id)?;
                n.ctime = now_ts();
                tx.put_node(id, &n)?;
            }
            Ok(removed)
        })?;
        if removed {
            Ok(())
        } else {
            Err(FsError::NoData)
        }
    }

    /// Checks `mask` (R_OK/W_OK/X_OK bits, or F_OK) for the caller.
    pub fn access(&self, ctx: Ctx, ino: u64, mask: i32) -> FsResult<()> {
        let attr = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && self.options.read_only {
            return Err(FsError::ReadOnly);
        }
        if ctx.uid == 0 {
            // root may do anything but execute a file nobody may execute
            if mask & libc::X_OK != 0 && attr.kind == FileKind::File && attr.perm & 0o111 == 0 {
                return Err(FsError::Access);
            }
            return Ok(());
        }
        let perm = attr.perm as i32;
        let bits = if ctx.uid == attr.uid {
            (perm >> 6) & 7
        } else if ctx.gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & bits == mask & 7 {
            Ok(())
        } else {
            Err(FsError::Access)
        }
    }

    /// `fallocate`: mode 0 reserves (and extends to) `offset + len`; other modes are
    /// EOPNOTSUPP.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.check_writable()?;
        if mode != 0 && mode != libc::FALLOC_FL_KEEP_SIZE {
            return Err(FsError::NotSupported(
                "only plain fallocate is supported".into(),
            ));
        }
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| FsError::Invalid("offset + length overflows".into()))?;
        self.check_room()?;
        let mut st = h.inode.state.lock();
        let staged = self.ensure_staged(&mut st)?;
        if mode == 0 && staged.len()? < end {
            staged.set_len(end)?;
            st.dirty = true;
            st.mtime = Some(now_ts());
        }
        Ok(())
    }

    /// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: holes are reported for staged (sparse) files;
    /// committed values are all data.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let h = self.handle(fh)?;
        let st = h.inode.state.lock();
        let size = match &st.staged {
            Some(s) => s.len()?,
            None => self.index.value_size(&st.key)?.unwrap_or(0),
        } as i64;
        if offset < 0 {
            return Err(FsError::Invalid("negative offset".into()));
        }
        match whence {
            libc::SEEK_DATA | libc::SEEK_HOLE => {
                if offset >= size {
                    return Err(FsError::NoSuchOffset);
                }
                if let Some(s) = &st.staged {
                    return s
                        .seek_data_hole(offset, whence)
                        .map_err(|_| FsError::NoSuchOffset);
                }
                Ok(if whence == libc::SEEK_DATA {
                    offset
                } else {
                    size
                })
            }
            libc::SEEK_SET => Ok(offset),
            libc::SEEK_END => Ok(size + offset),
            _ => Err(FsError::Invalid(format!("unsupported whence {whence}"))),
        }
    }

    /// Commits every staged write and makes the store and index durable (unmount).
    pub fn shutdown(&self) -> FsResult<()> {
        let mut shut = self.shut.lock();
        if *shut {
            return Ok(());
        }
        let open: Vec<(u64, Arc<OpenInode>)> = self
            .open
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        // What failed, named so that the unmount can say what is at risk.
        let mut failures = Vec::new();
        for (ino, inode) in open {
            if let Err(e) = self.commit(ino, &inode, false) {
                let key = inode.state.lock().key.clone();
                log::error!("committing {key} (inode {ino}) at unmount failed: {e}");
                failures.push(format!("the writes to {key} ({e})"));
            }
        }
        if let Err(e) = self.store.sync(&Key::root()) {
            log::error!("the final sync failed: {e}");
            failures.push(format!("every change since the last sync ({e})"));
        }
        if let Err(e) = self.store.close() {
            log::error!("closing the store failed: {e}");
            failures.push(format!("closing the store ({e})"));
        }
        *shut = true;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(FsError::Io(failures.join("; ")))
        }
    }

    /// The recommended attribute/entry cache time for `attr` (immutable blocks could be cached
    /// longer; everything is served by this daemon, so a second is safe).
    pub fn ttl(&self, _attr: &Attr) -> Duration {
        Duration::from_secs(1)
    }
}

/// The recorded modification time of `ino` (for a commit with no newer write).
fn recorded_mtime(index: &Index, ino: u64) -> FsResult<Timestamp> {
    Ok(index.node(ino & !VALUE_INO)?.mtime)
}

/// The extended attribute that holds a file's IPFS CID (read-only, not listed).
pub const CID_XATTR: &str = "user.ipfs.cid";

impl DsFs {
    /// The CID `ipfs add` (default settings) gives the committed content of file `ino`:
    /// computed by one streaming read on first ask, then kept while the file's mtime and size
    /// stay the same (every commit of a write changes the mtime).
    fn ipfs_cid(&self, ino: u64) -> FsResult<String> {
        let n = self.node(ino & !VALUE_INO)?;
        let is_value = ino & VALUE_INO != 0;
        if !(n.kind == NodeKind::File || is_value && n.kind == NodeKind::Dir) {
            return Err(FsError::NoData);
        }
        let Some(size) = n.value else {
            return Err(FsError::NoData);
        };
        if let Some((mtime, csize, cid)) = self.cids.lock().get(&ino)
            && *mtime == n.mtime
            && *csize == size
        {
            return Ok(cid.clone());
        }
        let key = self.key_of(ino)?;
        let cid = crate::unixfs::import_value(
            self.backend.as_ref(),
            &key,
            size,
            crate::unixfs::ImportOptions::default(),
            &mut crate::unixfs::Discard,
        )
        .map_err(FsError::store)?
        .cid
        .to_string();
        self.cids.lock().insert(ino, (n.mtime, size, cid.clone()));
        Ok(cid)
    }
}

/// [`CID_XATTR`] follows the content and cannot be set or removed.
fn refuse_computed_xattr(name: &[u8]) -> FsResult<()> {
    if name == CID_XATTR.as_bytes() {
        return Err(FsError::NotPermitted(format!(
            "{CID_XATTR} is computed from the file's content"
        )));
    }
    Ok(())
}

fn xattr_name(name: &[u8]) -> FsResult<String> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    String::from_utf8(name.to_vec()).map_err(|_| FsError::BadName)
}

impl Drop for DsFs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("unmount commit failed: {e}");
        }
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod race_tests;
