//! Rename and exchange, and the moves of values in the store they make.

use std::sync::Arc;

use super::names::{NameRef, VALUE_NAME};
use super::open::OpenInode;
use super::types::{Ino, RenameFlags};
use super::{DsFs, FsError, FsResult, now_ts};
use crate::datastore::Key;
use crate::index::{IndexError, Node, NodeId, NodeKind, ROOT, Tx};

/// One value that a rename moves from one key to another.
pub(super) struct ValueMove {
    pub(super) from: Key,
    pub(super) to: Key,
    pub(super) id: NodeId,
    pub(super) size: u64,
}

impl DsFs {
    /// Renames `parent/name` to `newparent/newname`.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        let mut replaced_dir = None;
        self.rename_replacing(parent, name, newparent, newname, flags, &mut replaced_dir)?;
        if let Some((id, mut node)) = replaced_dir {
            // The empty directory the rename replaced may still be open.
            node.ctime = now_ts();
            self.removed.record(id, node);
        }
        Ok(())
    }

    /// [`rename`](Self::rename); sets `replaced_dir` to the empty directory it replaces.
    fn rename_replacing(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: RenameFlags,
        replaced_dir: &mut Option<(NodeId, Node)>,
    ) -> FsResult<()> {
        self.refuse_virtual(parent)?;
        self.refuse_virtual(newparent)?;
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
        // Nothing below what moves runs beside the move (`subtree.rs`). The kernel holds both
        // parents and the renamed inodes locked, so the names looked up above stay put.
        let mut moved = vec![src];
        if flags.exchange
            && let Some((dst_id, _)) = &dst
        {
            moved.push(*dst_id);
        }
        let mut nodes = vec![Ino(parent).node(), Ino(newparent).node()];
        if let Some((dst_id, dnode)) = &dst
            && !flags.exchange
            && dnode.links > 1
            && dnode.parent == newparent
            && dnode.name == to
            && let Some((heir, _)) = self.index.aliases(*dst_id)?.into_iter().next()
        {
            // Replacing the first name of a hard-linked file moves its value into the
            // directory of another name (`unlink_name`), so that directory is guarded too,
            // and changes the replaced file's key, so it moves too.
            nodes.push(heir);
            moved.push(*dst_id);
        }
        let _moving = self.subtrees.moving(&self.index, &nodes, &moved)?;
        // The kernel holds a renamed file, but not a directory renamed within its parent: its
        // own value (`.dsfs.value`) may have been removed while this rename waited for its
        // guard, so its node is read again.
        let snode = if snode.kind == NodeKind::Dir {
            self.node(src)?
        } else {
            snode
        };
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
            if let Some(heir) = self.unlink_name(newparent, &to, *dst_id, dnode, &nodes, &moved)? {
                // The kernel holds the replaced file, so its names cannot change: only a
                // writer outside the mount could do this.
                return Err(FsError::Io(format!(
                    "rename over {to:?}: its names changed during the rename (directory {})",
                    heir.dir
                )));
            }
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
                    *replaced_dir = Some((*dst_id, dnode.clone()));
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
                // Each value keeps the size the index has for it now: a file closed since the
                // values were listed committed a new size under its old key.
                let mut sizes = Vec::with_capacity(moves.len());
                for m in &moves {
                    sizes.push(tx.take_key(&m.from)?.map_or(m.size, |(_, size)| size));
                }
                for (m, size) in moves.iter().zip(sizes) {
                    tx.set_key(&m.to, m.id, size)?;
                }
                Ok(())
            })?)
        })?;
        if snode.kind == NodeKind::Dir {
            // The open files the index lists under the directory were re-keyed by the move;
            // this finds any other open inode under it.
            self.rekey_open(&[&old_key])?;
        }
        Ok(())
    }

    /// Moves values in the store, then runs `record` (the index transaction that names them),
    /// with every open inode whose value moves locked throughout and re-keyed before it is
    /// unlocked: a read, write or commit through an open handle never uses a key whose value
    /// is gone. Inodes opened meanwhile learn their keys from [`DsFs::rekey_open`].
    pub(super) fn move_values(
        &self,
        moves: &[ValueMove],
        record: impl FnOnce() -> FsResult<()>,
    ) -> FsResult<()> {
        let mut held: Vec<(u64, Arc<OpenInode>, &Key)> = Vec::new();
        for m in moves {
            for ino in [m.id, Ino::dir_value(m.id).0] {
                if let Some(inode) = self.open_inode_of(ino) {
                    held.push((ino, inode, &m.to));
                }
            }
        }
        held.sort_by_key(|h| h.0);
        held.dedup_by_key(|h| h.0);
        // Until the index records the moves (or they are undone), the store and the index
        // disagree on purpose: following the store must not take that for another program's
        // change (`index::follow`).
        let _moving = self.index.begin_move();
        // Commits in progress finish first (their keys are about to move), then no commit
        // starts until the inodes are re-keyed.
        let _turns: Vec<_> = held.iter().map(|h| h.1.commit.lock()).collect();
        let mut guards: Vec<_> = held.iter().map(|h| h.1.state.write()).collect();
        let mut done = 0;
        let moved = moves
            .iter()
            .try_for_each(|m| {
                self.backend.rename(&m.from, &m.to)?;
                done += 1;
                Ok(())
            })
            .and_then(|()| record());
        if let Err(e) = moved {
            // A failed rename leaves every file where it was: what moved goes back, newest
            // first. (A value the move replaced at its new key stays replaced.)
            for m in moves[..done].iter().rev() {
                if let Err(back) = self.backend.rename(&m.to, &m.from) {
                    log::error!(
                        "a rename failed ({e}) and {} could not be moved back from {}: {back}; \
                         `dsfs fsck --repair` lists it under its new name",
                        m.from,
                        m.to
                    );
                }
            }
            return Err(e);
        }
        for (st, h) in guards.iter_mut().zip(&held) {
            if !st.unlinked {
                st.key = h.2.clone();
            }
        }
        Ok(())
    }

    /// Removes the entry a rename replaces (its node, and its key if it was a file).
    pub(super) fn drop_replaced(
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
    pub(super) fn value_moves(
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn exchange(
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
        // A hard-linked file's extra name holds no value (it stays under the first name): it
        // moves in the index only, and the file's key does not change.
        let s_alias = snode.links > 1 && !(snode.parent == parent && snode.name == from);
        let d_alias = dnode.links > 1 && !(dnode.parent == newparent && dnode.name == to);
        self.commit_if_open(src)?;
        self.commit_if_open(dst)?;
        let a_size = if s_alias {
            None
        } else {
            self.index.value_size(&a)?
        };
        let b_size = if d_alias {
            None
        } else {
            self.index.value_size(&b)?
        };
        // One store operation swaps or moves the values (never a copy), then one index
        // transaction swaps the names, with both files' open inodes locked throughout. A crash
        // between the two leaves the values swapped and the index behind, which the repair
        // after an unclean stop brings in line; never one value under both names.
        let mut held: Vec<(u64, Arc<OpenInode>, &Key)> = [(src, &b, s_alias), (dst, &a, d_alias)]
            .into_iter()
            .filter(|(_, _, alias)| !alias)
            .filter_map(|(id, key, _)| self.open_inode_of(id).map(|i| (id, i, key)))
            .collect();
        held.sort_by_key(|h| h.0);
        // Following the store must not take the swap for another program's change.
        let _moving = self.index.begin_move();
        // Commits in progress finish first (their keys are about to move), then no commit
        // starts until the inodes are re-keyed.
        let _turns: Vec<_> = held.iter().map(|h| h.1.commit.lock()).collect();
        let mut guards: Vec<_> = held.iter().map(|h| h.1.state.write()).collect();
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
            // Each file takes the other's name: as its first name, or as an extra one.
            for (id, alias, (old_dir, old_name), (new_dir, new_name)) in [
                (src, s_alias, (parent, from), (newparent, to)),
                (dst, d_alias, (newparent, to), (parent, from)),
            ] {
                let mut n = tx.node_required(id)?;
                if alias {
                    tx.remove_alias(id, old_dir, old_name)?;
                    tx.add_alias(id, new_dir, new_name)?;
                } else {
                    n.parent = new_dir;
                    n.name = new_name.to_owned();
                }
                n.ctime = now;
                tx.put_node(id, &n)?;
            }
            tx.link(newparent, to, src, false)?;
            tx.link(parent, from, dst, false)?;
            // The sizes the index has now (a close since they were read above committed).
            let a_now = tx.take_key(&a)?;
            let b_now = tx.take_key(&b)?;
            if let Some(size) = a_size {
                tx.set_key(&b, src, a_now.map_or(size, |(_, s)| s))?;
            }
            if let Some(size) = b_size {
                tx.set_key(&a, dst, b_now.map_or(size, |(_, s)| s))?;
            }
            Ok(())
        })?;
        for (st, h) in guards.iter_mut().zip(&held) {
            if !st.unlinked {
                st.key = h.2.clone();
            }
        }
        drop(guards);
        self.rekey_open(&[&a, &b])
    }
}
