//! The open-file and handle tables.
//!
//! # Locks
//!
//! The lock order of the filesystem, and the one place it is written down:
//!
//! 1. `DsFs::handles` and the shards of `DsFs::open` (the handle table and the open-file
//!    table, [`OpenTable`]) are held only to look up, insert or remove an entry and to count an
//!    inode's opens: never across store or index I/O and never while waiting for another lock,
//!    and never two shards at once. Callers clone the `Arc` out and drop the guard before
//!    locking the inode (`DsFs::open_inode_of`).
//! 2. An open inode's `InodeState` mutex may be held across store I/O and index transactions
//!    for that file (staging, commit, the move of its value in a rename), so that every read,
//!    write and commit sees the key and the value in step. Holding one blocks only that file.
//!    When several are held at once (a rename of a directory with open files in it), they are
//!    taken in ascending inode order.
//! 3. The index's write transaction and the stores' own locks are innermost: no inode state
//!    lock is ever taken inside an index transaction or a store call.
//!
//! `DsFs::shut` is taken by `shutdown` alone, before any of these.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::types::Ino;
use super::{DsFs, FsError, FsResult};
use crate::datastore::{Key, Staged};
use crate::index::node::Timestamp;
use crate::index::{IndexErrorKind, Node, NodeId};

/// The write state of one open inode, shared by all its handles.
pub(super) struct InodeState {
    /// The key the value lives under (updated by renames).
    pub(super) key: Key,
    /// Pending bytes, if the file has been written (or truncated) since the last commit.
    pub(super) staged: Option<Staged>,
    /// The staged bytes differ from the committed value.
    pub(super) dirty: bool,
    /// The name was removed while open: reads still work, nothing is committed.
    pub(super) unlinked: bool,
    /// Modification time of uncommitted writes.
    pub(super) mtime: Option<Timestamp>,
    /// The value size and mtime the index already records for this inode's value, when the
    /// inode knows it (a file created by this open and not committed since): a commit of
    /// exactly that (an empty new file closed unwritten) writes the store and skips the index.
    pub(super) indexed: Option<(u64, Timestamp)>,
    /// The attributes the inode had when its last name was removed (for `fstat` of an open,
    /// unlinked file).
    pub(super) orphan: Option<Node>,
}

pub(super) struct OpenInode {
    pub(super) state: Mutex<InodeState>,
    /// Open handles and other users (a truncate in progress). Changed only under the write
    /// lock of the open-file table, so that the last one out removes the entry.
    pub(super) opens: AtomicU32,
}

/// The open inodes, sharded by inode number: the attribute path (`getattr`, every entry of a
/// `readdir`) asks whether a file is open, and that must not serialise on one lock with every
/// open, close and create of the filesystem.
pub(super) struct OpenTable {
    shards: Box<[RwLock<Shard>]>,
}

/// One shard of the [`OpenTable`].
type Shard = HashMap<u64, Arc<OpenInode>>;

impl OpenTable {
    const SHARDS: usize = 64;

    pub(super) fn new() -> OpenTable {
        OpenTable {
            shards: (0..Self::SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, ino: u64) -> &RwLock<Shard> {
        // Inode numbers are sequential, so the low bits spread them.
        &self.shards[(ino % Self::SHARDS as u64) as usize]
    }

    /// The open inode `ino`, if any.
    pub(super) fn get(&self, ino: u64) -> Option<Arc<OpenInode>> {
        self.shard(ino).read().get(&ino).cloned()
    }

    /// Whether inode `ino` is open.
    pub(super) fn contains(&self, ino: u64) -> bool {
        self.shard(ino).read().contains_key(&ino)
    }

    /// The shard holding `ino`, write-locked (to insert or remove it).
    fn lock_for(&self, ino: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shard(ino).write()
    }

    /// Every open inode, at one moment per shard.
    pub(super) fn snapshot(&self) -> Vec<(u64, Arc<OpenInode>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.read().iter().map(|(k, v)| (*k, v.clone())));
        }
        out
    }
}

pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) inode: Arc<OpenInode>,
    pub(super) writable: bool,
    pub(super) append: bool,
}

impl DsFs {
    pub(super) fn open_inode(&self, ino: u64, key: Key) -> FsResult<Arc<OpenInode>> {
        let mut open = self.open.lock_for(ino);
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
                        indexed: None,
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
    pub(super) fn open_inode_of(&self, ino: u64) -> Option<Arc<OpenInode>> {
        self.open.get(ino)
    }

    /// Drops one reference to an open inode; the last one removes it from the table.
    pub(super) fn forget_open(&self, ino: u64, inode: &Arc<OpenInode>) {
        self.forget_open_keeping(ino, inode, false);
    }

    /// Like `forget_open`; with `keep` (its last commit failed) the inode stays in the table
    /// with no opens, so that its staged bytes are still read, and committed by the next close
    /// of the file or at unmount, instead of being dropped.
    pub(super) fn forget_open_keeping(&self, ino: u64, inode: &Arc<OpenInode>, keep: bool) {
        let mut open = self.open.lock_for(ino);
        let before = inode.opens.fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            inode.opens.store(0, Ordering::Relaxed);
            if !keep && open.get(&ino).is_some_and(|i| Arc::ptr_eq(i, inode)) {
                open.remove(&ino);
            }
        }
    }

    pub(super) fn add_handle(&self, ino: u64, inode: Arc<OpenInode>, flags: i32) -> u64 {
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

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Drops the reference `truncate` took; the last user commits (outside the table lock).
    pub(super) fn drop_open_ref(&self, ino: u64, inode: &Arc<OpenInode>) {
        if inode.opens.load(Ordering::Relaxed) <= 1
            && let Err(e) = self.commit(ino, inode, false)
        {
            log::error!("commit of inode {ino} failed: {e}");
        }
        self.forget_open(ino, inode);
    }

    /// Detaches an open inode from its key before the key goes away: its handles keep reading
    /// a private copy, and nothing of it is committed.
    pub(super) fn orphan_open(&self, ino: u64) -> FsResult<()> {
        if let Some(inode) = self.open_inode_of(ino) {
            let snapshot = self.index.node(Ino(ino).node()).ok();
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
    pub(super) fn unorphan(&self, ino: u64) {
        if let Some(inode) = self.open.get(ino) {
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

    pub(super) fn commit_if_open(&self, id: NodeId) -> FsResult<()> {
        if let Some(inode) = self.open_inode_of(id) {
            self.commit(id, &inode, false)?;
        }
        Ok(())
    }

    /// After a rename, the open inodes whose keys were at or under one of `moved` (the keys
    /// that went away) learn their new keys from the index; no other inode is looked up.
    pub(super) fn rekey_open(&self, moved: &[&Key]) -> FsResult<()> {
        for (ino, inode) in self.open.snapshot() {
            let mut st = inode.state.lock();
            if st.unlinked
                || !moved
                    .iter()
                    .any(|m| st.key == **m || st.key.is_descendant_of(m))
            {
                continue;
            }
            match self.index.key_of(Ino(ino).node()) {
                Ok(key) => st.key = key,
                Err(e) if e.kind() == IndexErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
