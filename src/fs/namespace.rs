//! Names: lookup, creation, removal, links and directory listings.

use super::ipfs;
use super::names::{NameRef, VALUE_NAME, component_to_name, long_name_matches, name_to_component};
use super::rename::ValueMove;
use super::types::{Attr, Ctx, DirItem, FIRST_ENTRY_OFFSET, Ino, Opened};
use super::{DsFs, FsError, FsResult, idx_err, now_ts};
use crate::datastore::{Key, StageInit};
use crate::index::{IndexError, IndexErrorKind, Node, NodeId, NodeKind, ROOT, Tx};

/// A directory's node, its entry of one name (if any) and the key that name has.
type EntryKey = (Node, Option<(NodeId, Node)>, Key);

/// The guard the removal of the first name of a hard-linked file needs before it moves the
/// value (see [`DsFs::unlink_name`]): on `dir`, the directory of the name the value moves to,
/// and moving `file`, whose key changes.
pub(super) struct HeirGuard {
    pub(super) dir: NodeId,
    pub(super) file: NodeId,
}

impl DsFs {
    /// The entry `name` in directory `parent` (`/.ipfs` when the root has no real `.ipfs`).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if ipfs::is_virtual(parent) {
            return self.virtual_lookup(parent, name);
        }
        match self.lookup_entry(parent, name) {
            Err(FsError::NotFound) if Self::names_ipfs_dir(parent, name) => self.ipfs_dir_attr(),
            r => r,
        }
    }

    fn lookup_entry(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if Ino(parent).is_dir_value() {
            return Err(FsError::NotDir);
        }
        let name = self.resolve_name(parent, name)?;
        // The directory, the entry and (for a store others may write, which is asked about
        // a name the index does not know) the directory's key, in one read transaction.
        let follows = self.store.follows();
        let found = self.index.dir_lookup(
            parent,
            match &name {
                NameRef::Component(c) => Some(c.as_str()),
                NameRef::DirValue | NameRef::Long(_) => None,
            },
            follows,
        )?;
        let dir = found.dir;
        if dir.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        match name {
            NameRef::DirValue => {
                if dir.value.is_some() {
                    Ok(self.attr_of(Ino::dir_value(parent).0, &dir))
                } else {
                    Err(FsError::NotFound)
                }
            }
            NameRef::Component(c) => match found.entry {
                Some((id, n)) => {
                    // A file under its first name has the key its directory's key gives.
                    let key = match &found.dir_key {
                        Some(k) if n.parent == parent && n.name == c => Some(k.join_component(&c)?),
                        _ => None,
                    };
                    let n = self.revalidated_at(id, n, key)?;
                    Ok(self.attr_of(id, &n))
                }
                None if follows => {
                    // A name the index does not know may have been added underneath.
                    let key = match &found.dir_key {
                        Some(k) => k.child_string(&c),
                        None => self.key_of(parent)?.child_string(&c),
                    };
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
        if ipfs::is_virtual(ino) {
            return self.virtual_readlink(ino);
        }
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
        self.refuse_virtual(parent)?;
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
        self.refuse_virtual(parent)?;
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
        self.refuse_virtual(parent)?;
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
        let _below = self.subtrees.shared(&self.index, &[Ino(parent).node()])?;
        let (pnode, existing, key) = self.dir_entry_key(parent, &comp)?;
        if existing.is_some() {
            return Err(FsError::Exists);
        }
        self.backend.put(&key, b"")?;
        let n = self.new_node(ctx, &pnode, NodeKind::File, mode, umask);
        let (id, n) = self.index.create_file(parent, &comp, n, &key, 0)?;
        Ok(self.attr_of(id, &n))
    }

    /// Directory `parent` (`NotDir` if it is not one), its entry `comp` and the key that entry
    /// has, from one index read.
    fn dir_entry_key(&self, parent: u64, comp: &str) -> FsResult<EntryKey> {
        if Ino(parent).is_dir_value() {
            return Err(FsError::NotDir);
        }
        let found = self.index.dir_lookup(parent, Some(comp), true)?;
        if found.dir.kind != NodeKind::Dir {
            return Err(FsError::NotDir);
        }
        let Some(dir_key) = found.dir_key else {
            return Err(FsError::Io(format!("no key read for directory {parent}")));
        };
        Ok((found.dir, found.entry, dir_key.join_component(comp)?))
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
        self.refuse_virtual(parent)?;
        self.check_writable()?;
        let below = self.subtrees.shared(&self.index, &[Ino(parent).node()])?;
        let comp = Self::component(name)?;
        let (pnode, existing, key) = self.dir_entry_key(parent, &comp)?;
        if let Some((id, existing)) = existing {
            drop(below);
            return self.create_existing(id, &existing, flags);
        }
        self.check_room()?;
        let n = self.new_node(ctx, &pnode, NodeKind::File, mode, umask);
        let created = n.mtime;
        // The value is created empty in staging and reaches the store when the file is first
        // committed (close, flush or fsync): one store write per small file, not two. Staging
        // is also what refuses a name the store cannot hold, before the index records it.
        let staged = self.backend.stage(&key, StageInit::Empty)?;
        let (id, n) = match self.index.create_file(parent, &comp, n, &key, 0) {
            Ok(created) => created,
            Err(e) if e.kind() == IndexErrorKind::AlreadyExists => {
                // Created by someone else since the read above.
                drop(staged);
                let found = self.index.lookup(parent, &comp)?;
                drop(below);
                return match found {
                    Some((id, existing)) => self.create_existing(id, &existing, flags),
                    None => Err(FsError::Exists),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let inode = self.open_inode(id, key)?;
        {
            let mut st = inode.state.write();
            st.staged = Some(staged);
            st.set_dirty(true);
            // Committing the new file later must not move its times.
            st.set_mtime(Some(created));
            st.indexed = Some((0, created));
        }
        let fh = self.add_handle(id, inode, flags);
        Ok((self.attr_of(id, &n), Opened { fh, backing: None }))
    }

    /// `create` of a name that exists: EEXIST with `O_EXCL`, else an open of it.
    ///
    /// The caller holds no subtree guard: the open takes the file's own, as `open` does. The
    /// guard `create` took on the name's directory does not cover a file whose first name (the
    /// one its key comes from) is in another directory, so a rename of that name or of an
    /// ancestor of it could run beside the open, which would keep the old key and commit there.
    fn create_existing(&self, id: NodeId, existing: &Node, flags: i32) -> FsResult<(Attr, Opened)> {
        if flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists);
        }
        if existing.kind == NodeKind::Dir {
            return Err(FsError::IsDir);
        }
        let (opened, _) = self.open_with_attr(id, flags)?;
        Ok((self.getattr(id)?, opened))
    }

    /// Removes a file or symlink (or, for `.dsfs.value`, a directory's value).
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.refuse_virtual(parent)?;
        self.check_writable()?;
        let mut guarded = vec![Ino(parent).node()];
        let mut moved = Vec::new();
        let mut below = Some(self.subtrees.shared(&self.index, &guarded)?);
        let comp = match self.resolve_name(parent, name)? {
            NameRef::Component(c) => c,
            NameRef::DirValue => return self.unlink_dir_value(parent),
            NameRef::Long(_) => return Err(FsError::NotFound),
        };
        // Removing the first name of a hard-linked file moves its value into another name's
        // directory and changes the file's key: then the guard is taken again, moving the
        // file and covering that directory too, and the unlink starts over (the kernel holds
        // the file's inode, so its names stay put meanwhile).
        for _ in 0..8 {
            let _below = match below.take() {
                Some(g) => g,
                None => self.subtrees.moving(&self.index, &guarded, &moved)?,
            };
            match self.unlink_component(parent, &comp, &guarded, &moved)? {
                None => return Ok(()),
                Some(heir) => {
                    if !guarded.contains(&heir.dir) {
                        guarded.push(heir.dir);
                    }
                    moved = vec![heir.file];
                }
            }
        }
        Err(FsError::Io(format!(
            "unlink of {comp:?}: the names of the file kept changing"
        )))
    }

    /// Removes the value of directory `parent`'s own key (its `.dsfs.value`).
    fn unlink_dir_value(&self, parent: u64) -> FsResult<()> {
        if self.dir_node(parent)?.value.is_none() {
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
        Ok(())
    }

    /// Removes one name of a node that has several (hard links). If it is the name whose key
    /// holds the value, the value first moves (one rename) to the key of a remaining name, so
    /// the datastore never loses it.
    ///
    /// The caller's subtree guard covers `guarded` and moves `moving`. The value moves into the
    /// directory of the remaining name, so that directory must be among `guarded` (a rename of
    /// it beside the move would leave the value under its old key), and the file's key changes,
    /// so the file must be among `moving` (an open of it beside the move would read the old
    /// key, and its close commit there): if not, nothing is done and the guard it needs is
    /// returned, for the caller to take it and call again.
    pub(super) fn unlink_name(
        &self,
        parent: u64,
        comp: &str,
        id: NodeId,
        n: &Node,
        guarded: &[NodeId],
        moving: &[NodeId],
    ) -> FsResult<Option<HeirGuard>> {
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
            return Ok(None);
        }
        let Some((ap, an)) = self.index.aliases(id)?.into_iter().next() else {
            return Err(FsError::Io(format!(
                "node {id} counts {} names but lists none",
                n.links
            )));
        };
        if !guarded.contains(&ap) || !moving.contains(&id) {
            return Ok(Some(HeirGuard { dir: ap, file: id }));
        }
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
        // The open inode of the file, if any, was re-keyed by the move.
        Ok(None)
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

    /// A hard link: another name for a file (or special file). The value stays under the key
    /// of the node's first name; the others are names in the index (see `docs/SEMANTICS.md`).
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        self.refuse_virtual(ino)?;
        self.refuse_virtual(newparent)?;
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
        if ipfs::is_virtual(ino) {
            return self.virtual_readdir(ino, offset, limit);
        }
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
