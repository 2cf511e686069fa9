//! `DsFs`: POSIX filesystem semantics over the key index and a datastore.
//!
//! This module knows no FUSE types; [`fuse`] adapts it to fuser. Inode numbers are index node
//! ids (stable across mounts). A file's bytes live in the datastore under the key its path
//! spells; directories, symlinks, modes, owners, times and xattrs live in the index.
//!
//! Writes are staged per inode: every handle of a file shares one
//! [`Staged`](crate::datastore::Staged) value, written at any offset and read back by every
//! handle before it is committed, and committed to the store (for file-backed stores, by one
//! rename) on `flush`/`close`, `fsync`, and unmount. See `docs/SEMANTICS.md` for what each
//! operation promises.
//!
//! The code is split along its seams, one `impl DsFs` block per file:
//!
//! - [`types`]: the types of the interface (`Attr`, `SetAttr`, `Ctx`, `Opened`, ...) and
//!   [`Ino`], the inode number;
//! - `open`: the open-file and handle tables, and the lock order of the filesystem;
//! - `io`: open, read, write, flush, fsync, release, truncate, fallocate, lseek and the commit
//!   of staged writes;
//! - `namespace`: lookup, create, mknod, mkdir, symlink, unlink, link, readdir;
//! - `unlink`: the removal of a file's name and value, and rmdir;
//! - `rename`: rename and exchange, and the moves of values they make;
//! - `subtree`: the guards that keep operations below a moved directory out of its rename;
//! - `attr`: getattr, setattr, access;
//! - `xattr`: extended attributes, including the computed IPFS CID;
//! - `killpriv`: dropping setuid, setgid and file capabilities when a file changes.
//!
//! The lock order is written once, in `open.rs`.

mod attr;
mod blocks;
pub mod error;
pub mod fuse;
mod inval;
mod io;
pub mod ipfs;
mod keep_cache;
mod killpriv;
pub mod names;
mod namespace;
mod open;
mod removed;
mod rename;
mod subtree;
pub mod types;
mod unlink;
mod xattr;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

pub use error::{FsError, FsResult};
pub use types::{
    Attr, Ctx, DirItem, FileKind, FsOptions, Ino, Opened, RenameFlags, SetAttr, StatFs, TimeSet,
};
pub use xattr::CID_XATTR;

use open::{Handle, OpenTable};

use crate::datastore::{Datastore, Key};
use crate::index::node::Timestamp;
use crate::index::{Index, IndexError, IndexErrorKind, IndexedStore, Node, NodeId, NodeKind};

/// What a new name, directory or link counts as in the space check (`DsFs::check_room`).
const METADATA_BYTES: u64 = 4096;

/// The filesystem. Every method takes `&self` and may run on many threads at once: per-inode
/// state has its own lock, and the handle table is read-locked on the data path.
pub struct DsFs {
    store: Arc<IndexedStore>,
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
    options: FsOptions,
    file_backed: bool,
    open: OpenTable,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    shut: Mutex<bool>,
    /// The IPFS CIDs of files, each with the (mtime, size) it was computed for.
    cids: Mutex<HashMap<u64, (Timestamp, u64, String)>>,
    /// The inodes and handles under `/.ipfs`.
    virt: Mutex<ipfs::Virtual>,
    /// With `ipfs_blocks`: the writer of committed files' UnixFS blocks.
    blocks: Option<blocks::BlockWriter>,
    /// Directories removed here that the kernel may still hold open.
    removed: removed::RemovedDirs,
    /// Renames in progress and the operations below what they move (see `subtree.rs`); the
    /// block writer takes its guards here too.
    subtrees: Arc<subtree::Subtrees>,
    /// Tests: the next `open` reports on the sender after its index reads and waits for the
    /// receiver before it enters the open-file table.
    #[cfg(test)]
    open_gate: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
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
        let subtrees = Arc::new(subtree::Subtrees::default());
        let blocks = if options.ipfs_blocks && !options.read_only {
            match blocks::BlockWriter::start(store.clone(), subtrees.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    log::error!("ipfs_blocks: cannot start the block writer: {e}");
                    None
                }
            }
        } else {
            None
        };
        DsFs {
            store,
            backend,
            index,
            options,
            file_backed,
            open: OpenTable::new(),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            shut: Mutex::new(false),
            cids: Mutex::new(HashMap::new()),
            virt: Mutex::new(ipfs::Virtual::default()),
            blocks,
            removed: removed::RemovedDirs::default(),
            subtrees,
            #[cfg(test)]
            open_gate: Mutex::new(None),
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
    /// space left goes to commits of what was already written and to removals. For a new
    /// name, directory or link: counted as [`METADATA_BYTES`] of new data.
    fn check_room(&self) -> FsResult<()> {
        self.check_room_for(METADATA_BYTES)
    }

    /// [`DsFs::check_room`] for `bytes` of new data (a write's length).
    fn check_room_for(&self, bytes: u64) -> FsResult<()> {
        match self.index.reserve() {
            Some(r) if !r.room_for_new_data(bytes) => Err(FsError::NoSpace),
            _ => Ok(()),
        }
    }

    fn node(&self, id: NodeId) -> FsResult<Node> {
        Ok(self.index.node(id)?)
    }

    fn dir_node(&self, id: NodeId) -> FsResult<Node> {
        if Ino(id).is_dir_value() {
            return Err(FsError::NotDir);
        }
        let n = self.node(id)?;
        if n.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(n)
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

    /// Commits every staged write and makes the store and index durable (unmount).
    pub fn shutdown(&self) -> FsResult<()> {
        let mut shut = self.shut.lock();
        if *shut {
            return Ok(());
        }
        let open = self.open.snapshot();
        // What failed, named so that the unmount can say what is at risk.
        let mut failures = Vec::new();
        for (ino, inode) in open {
            if let Err(e) = self.commit(ino, &inode, false) {
                let key = inode.state.read().key.clone();
                log::error!("committing {key} (inode {ino}) at unmount failed: {e}");
                failures.push(format!("the writes to {key} ({e})"));
            }
        }
        if let Some(blocks) = &self.blocks {
            blocks.stop();
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
mod commit_tests;
#[cfg(test)]
mod cost_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod subtree_tests;
