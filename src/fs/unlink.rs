//! Removing a file's name and value (`unlink`) and an empty directory (`rmdir`).
//!
//! An unlink of a file that is not open and has one name is one index write transaction
//! ([`Index::unlink_file`](crate::index::Index::unlink_file): it reads the entry, checks it,
//! removes it and returns the key of the value) followed by the store's delete of that value;
//! no read transaction before it, and no work on the open-file table beyond asking whether
//! the file is open. The name goes first: a crash between the two leaves a value that no name
//! reaches (the reconcile after an unclean stop lists it again), and a failed delete puts the
//! name back ([`Index::restore_file`](crate::index::Index::restore_file)), so a failed unlink
//! leaves the file as it was.

use super::namespace::HeirGuard;
use super::types::Ino;
use super::{DsFs, FsResult, now_ts};
use crate::index::NodeId;
use crate::index::unlink::{RemovedFile, Unlinked};

impl DsFs {
    /// Removes the file, symlink or special file `comp` of `parent`, under a subtree guard on
    /// `guarded` moving `moving`; `Some(heir)`: nothing was done, that guard must be taken
    /// first (see [`DsFs::unlink_name`]).
    pub(super) fn unlink_component(
        &self,
        parent: u64,
        comp: &str,
        guarded: &[NodeId],
        moving: &[NodeId],
    ) -> FsResult<Option<HeirGuard>> {
        if Ino(parent).is_dir_value() {
            return Err(super::FsError::NotDir);
        }
        // An open file is kept: its handles must first get a private copy of its value.
        let removed = match self
            .index
            .unlink_file(parent, comp, None, |id| self.open.contains(id))?
        {
            Unlinked::Removed(removed) => removed,
            Unlinked::Kept(id, node) if node.links > 1 => {
                return self.unlink_name(parent, comp, id, &node, guarded, moving);
            }
            Unlinked::Kept(id, _) => return self.unlink_open(parent, comp, id, guarded, moving),
        };
        self.delete_removed_value(parent, comp, &removed)?;
        Ok(None)
    }

    /// Removes an open file `id`: its handles keep reading (and writing) a private copy of
    /// its value, and nothing of it is committed after its name is gone.
    fn unlink_open(
        &self,
        parent: u64,
        comp: &str,
        id: NodeId,
        guarded: &[NodeId],
        moving: &[NodeId],
    ) -> FsResult<Option<HeirGuard>> {
        self.orphan_open(id)?;
        let removed = match self.index.unlink_file(parent, comp, Some(id), |_| false) {
            Ok(Unlinked::Removed(removed)) => removed,
            Ok(Unlinked::Kept(id, node)) => {
                // It gained a name since: a hard link made meanwhile.
                self.unorphan(id);
                return self.unlink_name(parent, comp, id, &node, guarded, moving);
            }
            Err(e) => {
                self.unorphan(id);
                return Err(e.into());
            }
        };
        let result = self.delete_removed_value(parent, comp, &removed);
        if result.is_err() {
            self.unorphan(id);
        }
        result.map(|()| None)
    }

    /// Deletes the value of a file whose name [`Index::unlink_file`] removed; if the store
    /// refuses, the name is put back and the store's error returned.
    ///
    /// [`Index::unlink_file`]: crate::index::Index::unlink_file
    fn delete_removed_value(&self, parent: u64, comp: &str, removed: &RemovedFile) -> FsResult<()> {
        let Some(key) = removed.key() else {
            return Ok(());
        };
        let Err(e) = self.backend.delete(key) else {
            return Ok(());
        };
        match self.index.restore_file(parent, comp, removed) {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "unlink of {key}: the store refused the delete ({e}) and the name was taken \
                 meanwhile; the old value stays unlisted until the next reconcile"
            ),
            Err(re) => log::error!(
                "unlink of {key}: the store refused the delete ({e}) and putting the name \
                 back failed ({re}); the value stays unlisted until the next reconcile"
            ),
        }
        Err(e.into())
    }

    /// Removes an empty directory: one index write transaction.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.refuse_virtual(parent)?;
        self.check_writable()?;
        if Ino(parent).is_dir_value() {
            return Err(super::FsError::NotDir);
        }
        let comp = Self::component(name)?;
        let (id, mut node) = self.index.remove_dir(parent, &comp)?;
        node.ctime = now_ts();
        self.removed.record(id, node);
        Ok(())
    }
}
