//! Attributes: getattr, setattr, access.

use super::ipfs;
use super::killpriv::without_setid;
use super::types::{Attr, BLKSIZE, Ctx, FileKind, Ino, SetAttr};
use super::{DsFs, FsError, FsResult, now_ts, time_of, ts};
use crate::datastore::Key;
use crate::index::node::Timestamp;
use crate::index::{Node, NodeKind};

impl DsFs {
    pub(super) fn attr_of(&self, ino: u64, n: &Node) -> Attr {
        let (kind, mut size, perm) = if Ino(ino).is_dir_value() {
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
            let st = inode.state.read();
            if let Some(staged) = st.bytes()
                && let Ok(len) = staged.len()
            {
                size = len;
            }
            if let Some(m) = st.pending().mtime {
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
            nlink: if Ino(ino).is_dir_value() {
                1
            } else {
                n.nlink()
            },
            uid: self.options.uid.unwrap_or(n.uid),
            gid: self.options.gid.unwrap_or(n.gid),
            blksize: BLKSIZE,
            rdev: n.rdev,
        }
    }

    /// Whether `ino` is a directory's value (`.dsfs.value`) whose directory, read as `n`, no
    /// longer has one.
    pub(super) fn dir_value_gone(ino: u64, n: &Node) -> bool {
        Ino(ino).is_dir_value() && (n.kind != NodeKind::Dir || n.value.is_none())
    }

    /// Attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if ipfs::is_virtual(ino) {
            return self.virtual_getattr(ino);
        }
        let n = match self.node(Ino(ino).node()) {
            Ok(n) => n,
            Err(FsError::NotFound) => {
                // An open file whose last name is gone still answers fstat (with nlink 0).
                let inode = self.open.get(ino);
                let snapshot = inode.and_then(|i| i.state.read().orphan.clone());
                let Some(n) = snapshot else {
                    // A directory removed while the kernel holds it (open, or a cwd).
                    return match self.removed.get(ino) {
                        Some(n) => Ok(self.removed_attr(ino, &n)),
                        None => Err(FsError::NotFound),
                    };
                };
                let mut attr = self.attr_of(ino, &n);
                attr.nlink = 0;
                return Ok(attr);
            }
            Err(e) => return Err(e),
        };
        if Self::dir_value_gone(ino, &n) {
            return Err(FsError::NotFound);
        }
        let n = self.revalidated(ino, n)?;
        Ok(self.attr_of(ino, &n))
    }

    /// For a store others may write: checks the store's segments once per interval, and asks
    /// the store for the value of node `ino` once per interval. A value deleted underneath is
    /// `NotFound`; one rewritten underneath has its new size. Files open here are left alone
    /// (their value is this filesystem's to commit).
    pub(super) fn revalidated(&self, ino: u64, n: Node) -> FsResult<Node> {
        self.revalidated_at(ino, n, None)
    }

    /// [`DsFs::revalidated`], with the node's key when the caller read it already.
    pub(super) fn revalidated_at(&self, ino: u64, n: Node, key: Option<Key>) -> FsResult<Node> {
        if !self.store.follows() {
            return Ok(n);
        }
        if let Err(e) = self.store.revalidate() {
            log::warn!("revalidating the index against the store failed: {e}");
        }
        let id = Ino(ino).node();
        let Some(size) = n.value else {
            return Ok(n);
        };
        if self.open.contains(ino) {
            return Ok(n);
        }
        let key = match key {
            Some(k) => k,
            None => self.index.key_of(id)?,
        };
        match self.store.revalidate_key(&key, size)? {
            Some(s) if s == size => Ok(n),
            Some(_) => Ok(self.node(id)?),
            None => match self.index.node(id) {
                // A directory that lost its value, or a node that went with it.
                Ok(fresh) if !Ino(ino).is_dir_value() => Ok(fresh),
                Ok(_) => Err(FsError::NotFound),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Changes attributes; `fh` is the handle when the request came through one.
    pub fn setattr(&self, ctx: Ctx, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        self.refuse_virtual(ino)?;
        self.check_writable()?;
        let id = Ino(ino).node();
        if let Some(size) = set.size {
            let _below = self.subtrees.shared(&self.index, &[id])?;
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
                inode.state.write().set_mtime(None);
            }
            let written = self.index.write(|tx| {
                let mut n = tx.node_required(id)?;
                apply_setattr(&mut n, ctx, set);
                tx.put_node(id, &n)
            });
            if let Err(e) = written {
                // A directory removed while open (`fchmod` of its descriptor) still has
                // attributes of its own.
                let e = FsError::from(e);
                return match e {
                    FsError::NotFound => self
                        .removed
                        .update(ino, |n| apply_setattr(n, ctx, set))
                        .map(|n| self.removed_attr(ino, &n))
                        .ok_or(e),
                    other => Err(other),
                };
            }
        }
        self.getattr(ino)
    }

    /// The attributes of a removed directory the kernel still holds: its last node, no links.
    fn removed_attr(&self, ino: u64, n: &Node) -> Attr {
        let mut attr = self.attr_of(ino, n);
        attr.nlink = 0;
        attr
    }

    /// The kernel evicted inode `ino`.
    pub fn forget(&self, ino: u64) {
        self.removed.forget(ino);
    }

    /// Checks `mask` (R_OK/W_OK/X_OK bits, or F_OK) for the caller.
    pub fn access(&self, ctx: Ctx, ino: u64, mask: i32) -> FsResult<()> {
        if ipfs::is_virtual(ino) {
            self.virtual_getattr(ino)?;
            return if mask & libc::W_OK != 0 {
                Err(FsError::ReadOnly)
            } else {
                Ok(())
            };
        }
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
}

/// Applies the metadata changes of `set` (mode, owner, times; not the size, which `truncate`
/// made) to `n`, as Linux does.
fn apply_setattr(n: &mut Node, ctx: Ctx, set: &SetAttr) {
    let now = now_ts();
    if let Some(mode) = set.mode {
        n.mode = mode & 0o7777;
    }
    // As on Linux: a change of owner (even to the same owner) drops setuid, and setgid when
    // the group can execute; so does a truncate by a caller without CAP_FSETID, which FUSE
    // does not tell us: a caller other than root stands for one (see `killpriv`).
    let chown = set.uid.is_some() || set.gid.is_some();
    let unprivileged_truncate = set.size.is_some() && ctx.uid != 0;
    if let Some(uid) = set.uid {
        n.uid = uid;
    }
    if let Some(gid) = set.gid {
        n.gid = gid;
    }
    if (chown || unprivileged_truncate) && n.kind != NodeKind::Dir && set.mode.is_none() {
        n.mode = without_setid(n.mode);
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
}
