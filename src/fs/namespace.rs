//! Names: lookup, creation, removal, links and directory listings.

use super::names::{NameRef, VALUE_NAME, component_to_name, long_name_matches, name_to_component};
use super::rename::ValueMove;
use super::types::{Attr, Ctx, DirItem, FIRST_ENTRY_OFFSET, Ino, Opened};
use super::{DsFs, FsError, FsResult, idx_err, now_ts};
use crate::datastore::{Key, StageInit};
use crate::index::{IndexError, IndexErrorKind, Node, NodeId, NodeKind, ROOT, Tx};

impl DsFs {
    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let dir = self.dir_node(parent)?;
        match self.resolve_name(parent, name)? {
            NameRef::DirValue => {
                if dir.value.is_some() {
                    Ok(self.attr_of(Ino::dir_value(parent).0, &dir))
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
    pub(super) fn resolve_name(&self, parent: u64, name: &[u8]) -> FsResult<NameRef> {
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
    pub(super) fn key_of(&self, ino: u64) -> FsResult<Key> {
        Ok(self.index.key_of(Ino(ino).node())?)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let n = self.node(ino)?;
        if n.kind != NodeKind::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        Ok(n.target)
    }

    pub(super) fn new_node(
        &self,
        ctx: Ctx,
        parent: &Node,
        kind: NodeKind,
        mode: u32,
        umask: u32,
    ) -> Node {
        let mut n = Node::new(kind, 0, "", mode & !umask & 0o7777, ctx.uid, ctx.gid);
        if parent.mode & libc::S_ISGID != 0 {
            n.gid = parent.gid;
            if kind == NodeKind::Dir {
                n.mode |= libc::S_ISGID;
            }
        }
        n
    }

    pub(super) fn component(name: &[u8]) -> FsResult<String> {
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
    pub(super) fn create_index_node(
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

    pub(super) fn create_file_node(
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
                self.orphan_open(Ino::dir_value(parent).0)?;
                // The value goes first: if that fails, the name still has its value.
                if let Err(e) = self.backend.delete(&key) {
                    self.unorphan(Ino::dir_value(parent).0);
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
    pub(super) fn unlink_name(
        &self,
        parent: u64,
        comp: &str,
        id: NodeId,
        n: &Node,
    ) -> FsResult<()> {
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
    pub(super) fn keep_dir(tx: &mut Tx<'_>, dir: NodeId) -> Result<(), IndexError> {
        let mut n = tx.node_required(dir)?;
        if !n.explicit {
            n.explicit = true;
            tx.put_node(dir, &n)?;
        }
        Ok(())
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
        if Ino(ino).is_dir_value() {
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
                ino: Ino::dir_value(ino).0,
                offset: FIRST_ENTRY_OFFSET,
                name: VALUE_NAME.into(),
                attr: self.attr_of(Ino::dir_value(ino).0, &dir),
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
}
