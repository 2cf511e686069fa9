//! The open-file and handle tables.
//!
//! # Locks
//!
//! The lock order of the filesystem, and the one place it is written down:
//!
//! 0. A subtree guard (`DsFs::subtrees`, see `subtree.rs`) is taken first of all, at the start
//!    of a public operation that reads a key and writes under it (create, mknod, unlink, open,
//!    truncate) or reads a value by its key (`getxattr user.ipfs.cid`; the `ipfs_blocks`
//!    writer thread takes one per job, holding nothing else) or moves one (rename, exchange,
//!    the unlink of a hard-linked file's first name), and held to its end. An operation holds at most one guard at a time (an unlink, or a
//!    create of a name that exists, drops it and takes another) and takes it before any lock
//!    below, so a wait for a guard never holds one of them. The guards' mutex is held only to
//!    grant and release them (and, while a rename runs, across index reads of ancestors), never
//!    across store I/O.
//!
//!    Then a rename or exchange takes a move mark (`Index::begin_move`, `index/follow.rs`),
//!    before any lock below, and holds it across its store moves and index transaction. The
//!    marks' mutex is held only to count them, except by whatever makes the index follow the
//!    store (a follow pass, a recheck of one key), which holds it across its own index write
//!    and waits for nothing else meanwhile (never store I/O, never an inode lock), so that no
//!    move starts in the middle of that write.
//! 1. `DsFs::handles` and the shards of `DsFs::open` (the handle table and the open-file
//!    table, [`OpenTable`]) are held only to look up, insert or remove an entry and to count an
//!    inode's opens: never across store or index I/O and never while waiting for another lock,
//!    and never two shards at once. Callers clone the `Arc` out and drop the guard before
//!    locking the inode (`DsFs::open_inode_of`).
//! 2. An open inode's commit turn (`OpenInode::commit`) is held by a commit for its whole
//!    length (store I/O, index transaction, sync) and by whatever moves or detaches the file's
//!    value (a rename, an unlink), so that commits of one file run one at a time, in order, and
//!    never against a key that is going away. Nothing else waits for it: reads and writes do
//!    not take it. When several are held at once (a rename of a directory with open files in
//!    it), they are taken in ascending inode order, all before any state lock.
//! 3. An open inode's `InodeState` lock (a read-write lock) comes after its commit turn. Reads
//!    and writes into an existing staged value take it shared (the staged value orders its own
//!    writers), so writers of one file do not wait for each other; staging, truncation,
//!    appends and the start and end of a commit take it exclusively, and may do store I/O for
//!    that file under it (staging a value, the move of its value in a rename). A commit does
//!    not hold it while it writes the store: it takes the staged value out (readers see it as
//!    `InodeState::committing`), new writes go to an overlay over it, and the commit re-takes
//!    the lock to finish. When several are held at once, ascending inode order.
//! 4. The index's write transaction and the stores' own locks are innermost: no inode lock is
//!    ever taken inside an index transaction or a store call. The one lock taken inside an
//!    index write transaction is a shard of the open-file table, read-locked for one lookup
//!    (`unlink` asks whether the file is open), which waits for nothing else (rule 1). An
//!    `open` that an index write overlapped waits for that write's end
//!    (`Index::wait_for_writes`) holding only its subtree guard, after it has entered the
//!    open-file table and released the shard.
//!
//!    Inside the index (`src/index/held.rs`): `Index::write_serial` (one write at a time), then
//!    the held records' lock (a write reads under its read lock and takes its write lock to
//!    merge or flush), then redb's own write lock. A reader takes only the held records' read
//!    lock (recursively: never behind a queued writer), then a redb read transaction; a flush
//!    (the group committer's, `sync`) takes only the held records' write lock, then redb's.
//!    Nothing takes `write_serial` while holding the held records' lock.
//!
//! `DsFs::shut` is taken by `shutdown` alone, before any of these.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::types::Ino;
use super::{DsFs, FsError, FsResult, now_ts};
use crate::datastore::{Key, Staged};
use crate::index::node::Timestamp;
use crate::index::{IndexErrorKind, Node, NodeId};

/// The write state of one open inode, shared by all its handles.
pub(super) struct InodeState {
    /// The key the value lives under (updated by renames).
    pub(super) key: Key,
    /// Pending bytes, if the file has been written (or truncated) since the last commit.
    pub(super) staged: Option<Staged>,
    /// The bytes a commit in progress is writing to the store (it took them out of `staged`):
    /// what the file reads as where `staged` is `None`, and what a write made meanwhile is
    /// layered over ([`Staged::layered_over`]).
    pub(super) committing: Option<Arc<Staged>>,
    /// Whether the staged bytes differ from the committed value, and the modification time of
    /// uncommitted writes: set by writers holding the state lock shared.
    pending: Mutex<Pending>,
    /// The name was removed while open: reads still work, nothing is committed.
    pub(super) unlinked: bool,
    /// The value size and mtime the index already records for this inode's value, when the
    /// inode knows it (a file created by this open and not committed since): a commit of
    /// exactly that (an empty new file closed unwritten) writes the store and skips the index.
    pub(super) indexed: Option<(u64, Timestamp)>,
    /// The attributes the inode had when its last name was removed (for `fstat` of an open,
    /// unlinked file).
    pub(super) orphan: Option<Node>,
}

/// See [`InodeState::pending`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Pending {
    pub(super) dirty: bool,
    pub(super) mtime: Option<Timestamp>,
}

impl InodeState {
    pub(super) fn new(key: Key) -> InodeState {
        InodeState {
            key,
            staged: None,
            committing: None,
            pending: Mutex::new(Pending::default()),
            unlinked: false,
            indexed: None,
            orphan: None,
        }
    }

    /// Whether the file has uncommitted changes, and their modification time.
    pub(super) fn pending(&self) -> Pending {
        *self.pending.lock()
    }

    /// Records a write (made with the state lock held shared or exclusively).
    pub(super) fn touch(&self) {
        let mut p = self.pending.lock();
        p.dirty = true;
        p.mtime = Some(now_ts());
    }

    pub(super) fn set_dirty(&mut self, dirty: bool) {
        self.pending.get_mut().dirty = dirty;
    }

    pub(super) fn set_mtime(&mut self, mtime: Option<Timestamp>) {
        self.pending.get_mut().mtime = mtime;
    }

    /// What the file reads as while it has uncommitted bytes: the staged value, or the one a
    /// commit is writing; `None` when the store's value is current.
    pub(super) fn bytes(&self) -> Option<&Staged> {
        self.staged.as_ref().or(self.committing.as_deref())
    }
}

pub(super) struct OpenInode {
    /// The commit turn (see the lock order above).
    pub(super) commit: Mutex<()>,
    pub(super) state: RwLock<InodeState>,
    /// Open handles and other users (a truncate in progress). Changed only under the write
    /// lock of the open-file table, so that the last one out removes the entry.
    pub(super) opens: AtomicU32,
    /// Open handles that may write (counted from the handle's insertion to its release): while
    /// any is open, no new reader is offered the committed file for passthrough, since their
    /// later writes would not reach it.
    pub(super) writers: AtomicU32,
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
                    commit: Mutex::new(()),
                    state: RwLock::new(InodeState::new(key)),
                    opens: AtomicU32::new(0),
                    writers: AtomicU32::new(0),
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
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable {
            inode.writers.fetch_add(1, Ordering::Relaxed);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(
            fh,
            Arc::new(Handle {
                ino,
                inode,
                writable,
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
            // No commit may write the value after the name is gone.
            let _turn = inode.commit.lock();
            let mut st = inode.state.write();
            self.ensure_staged(&mut st)?;
            st.unlinked = true;
            st.set_dirty(false);
            st.orphan = snapshot;
        }
        Ok(())
    }

    /// Undoes [`DsFs::orphan_open`] after the removal failed: the name is still there, so its
    /// open handles write to it again (their bytes, copied when orphaned, stay staged).
    pub(super) fn unorphan(&self, ino: u64) {
        if let Some(inode) = self.open.get(ino) {
            let mut st = inode.state.write();
            if st.unlinked {
                st.unlinked = false;
                st.orphan = None;
                // Orphaning dropped the dirty mark; committing the same bytes again is harmless,
                // losing a handle's pending writes is not.
                let dirty = st.staged.is_some();
                st.set_dirty(dirty);
            }
        }
    }

    pub(super) fn commit_if_open(&self, id: NodeId) -> FsResult<()> {
        if let Some(inode) = self.open_inode_of(id) {
            self.commit(id, &inode, false)?;
        }
        Ok(())
    }

    /// After a rename of a directory (or an exchange), the open inodes whose keys were at or
    /// under one of `moved` (the keys that went away) learn their new keys from the index.
    /// Those whose keys the index lists (every file, also one created and not yet committed)
    /// were re-keyed by the move itself (`DsFs::move_values`); this is the net for any other,
    /// so every open inode is checked, under its state lock shared, and only those that moved
    /// are looked up. A rename of a file, whose open inode the move re-keyed, skips it.
    pub(super) fn rekey_open(&self, moved: &[&Key]) -> FsResult<()> {
        let under = |st: &InodeState| {
            !st.unlinked
                && moved
                    .iter()
                    .any(|m| st.key == **m || st.key.is_descendant_of(m))
        };
        for (ino, inode) in self.open.snapshot() {
            // Checked shared first, so that the files not moved (most) do not wait for their
            // writers.
            if !under(&inode.state.read()) {
                continue;
            }
            let mut st = inode.state.write();
            if !under(&st) {
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
