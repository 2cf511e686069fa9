//! Removing names: `unlink` of a file and `rmdir`, each one write transaction that checks what
//! it removes and returns it, with no read transaction before it.
//!
//! The filesystem removes a file's name before its value (index first, then store): the
//! transaction here tells it the key of the value to delete afterwards. If that delete fails,
//! [`Index::restore_file`] puts back what was removed, so that a failed unlink leaves the file
//! as it was; a crash between the two leaves a value no name reaches, which the reconcile after
//! an unclean stop lists again (the store is the truth for values).

use super::{
    Index, IndexError, IndexErrorKind, IndexResult, Node, NodeId, NodeKind, Timestamp, Tx,
};
use crate::datastore::Key;

/// What [`Index::unlink_file`] did.
#[derive(Debug)]
pub enum Unlinked {
    /// The entry, its node, its xattrs and its key record are gone (committed).
    Removed(RemovedFile),
    /// Nothing was written: the node has other names (hard links), or the caller's `keep`
    /// asked to keep it (an open file, which must be detached first). The caller removes it
    /// another way, passing the id back as `expect`.
    Kept(NodeId, Node),
}

/// A node [`Index::unlink_file`] removed, with everything needed to put it back.
#[derive(Debug, Clone)]
pub struct RemovedFile {
    /// The node's id.
    pub id: NodeId,
    /// Its record as it was.
    pub node: Node,
    /// The key of its value and the size the `keys` table recorded (files only).
    pub value: Option<(Key, u64)>,
    /// Its extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl RemovedFile {
    /// The key of the removed value, if the node had one.
    pub fn key(&self) -> Option<&Key> {
        self.value.as_ref().map(|(k, _)| k)
    }
}

fn not_found(what: String) -> IndexError {
    IndexError::new(IndexErrorKind::NotFound, what)
}

/// The directory `parent`, which must exist and be a directory.
fn dir_of(tx: &Tx<'_>, parent: NodeId) -> IndexResult<Node> {
    let dir = tx
        .node(parent)?
        .ok_or_else(|| not_found(format!("no node {parent}")))?;
    if dir.kind != NodeKind::Dir {
        return Err(IndexError::new(
            IndexErrorKind::NotADirectory,
            format!("node {parent} is not a directory"),
        ));
    }
    Ok(dir)
}

impl Tx<'_> {
    /// Removes the entry `name` of directory `parent` (whose record is `dir`), marking the
    /// directory explicit (one the user has seen stays when its last entry goes) and touching
    /// its times: one write of the directory's record.
    fn remove_entry_of(
        &mut self,
        parent: NodeId,
        mut dir: Node,
        name: &str,
        child_is_dir: bool,
    ) -> IndexResult<()> {
        let Some((_, cookie)) = self.t_dirents_mut().remove((parent, name))? else {
            return Err(not_found(format!("no entry {name:?} in {parent}")));
        };
        self.t_cookies_mut().remove((parent, cookie))?;
        let now = Timestamp::now();
        dir.explicit = true;
        dir.mtime = now;
        dir.ctime = now;
        if child_is_dir {
            dir.subdirs = dir.subdirs.saturating_sub(1);
        }
        self.write_node(parent, &dir)
    }

    /// Deletes node `id` and returns its xattrs. Its alias records are not looked at: a node
    /// has them only while it has more than one name, and only such nodes' are read.
    fn remove_node_returning_xattrs(&mut self, id: NodeId) -> IndexResult<Vec<(String, Vec<u8>)>> {
        self.t_nodes_mut(Some(id), None).remove(id)?;
        let xattrs = super::xattrs_of(&self.table(), id)?;
        for (name, _) in &xattrs {
            self.t_xattrs_mut().remove((id, name.as_str()))?;
        }
        Ok(xattrs)
    }
}

impl Index {
    /// Removes the non-directory entry `name` of directory `parent` and its node, in one write
    /// transaction that reads what it removes: the directory (`NotADirectory` if it is not
    /// one), the entry (`NotFound` if missing, or if `expect` is given and the entry no longer
    /// names that node), the node (`IsADirectory` for a directory) and, for a file, the key of
    /// its value (returned, for the caller to delete from the store afterwards).
    ///
    /// A node with other names, or one for which `keep(id)` is true (asked only without
    /// `expect`), is [`Unlinked::Kept`]: nothing is written. `keep` runs inside the write
    /// transaction, so it must not wait for anything that waits for the index.
    pub fn unlink_file(
        &self,
        parent: NodeId,
        name: &str,
        expect: Option<NodeId>,
        keep: impl FnOnce(NodeId) -> bool,
    ) -> IndexResult<Unlinked> {
        let generation = self.dir_keys.generation();
        self.write_if(|tx| {
            let dir = dir_of(tx, parent)?;
            let Some(id) = tx.lookup(parent, name)? else {
                return Err(not_found(format!("no entry {name:?} in {parent}")));
            };
            if expect.is_some_and(|e| e != id) {
                return Err(not_found(format!(
                    "{name:?} no longer names the node it did"
                )));
            }
            let node = tx.node(id)?.ok_or_else(|| {
                IndexError::corrupt(format!("entry {name:?} names missing node {id}"))
            })?;
            if node.kind == NodeKind::Dir {
                return Err(IndexError::new(
                    IndexErrorKind::IsADirectory,
                    format!("{name:?} is a directory"),
                ));
            }
            if node.links > 1 || (expect.is_none() && keep(id)) {
                return Ok((Unlinked::Kept(id, node), false));
            }
            let key = if node.kind == NodeKind::File {
                Some(
                    self.dir_keys
                        .key_of(generation, &tx.table(), parent)?
                        .join_component(name)
                        .map_err(|e| {
                            IndexError::corrupt(format!("entry {name:?} of {parent}: {e}"))
                        })?,
                )
            } else {
                None
            };
            tx.remove_entry_of(parent, dir, name, false)?;
            let xattrs = tx.remove_node_returning_xattrs(id)?;
            let value = match key {
                Some(key) => {
                    let size = tx.take_key(&key)?.map(|(_, size)| size).unwrap_or(0);
                    Some((key, size))
                }
                None => None,
            };
            let removed = RemovedFile {
                id,
                node,
                value,
                xattrs,
            };
            Ok((Unlinked::Removed(removed), true))
        })
    }

    /// Puts back what [`Index::unlink_file`] removed as `name` in `parent` (after the store
    /// refused to delete its value): the node under its old id, the entry, the key record and
    /// the xattrs. Returns `false`, writing nothing, if the name was taken (or the directory
    /// removed) meanwhile; the value then stays in the store with no name until a reconcile.
    pub fn restore_file(
        &self,
        parent: NodeId,
        name: &str,
        removed: &RemovedFile,
    ) -> IndexResult<bool> {
        self.write_if(|tx| {
            let free = matches!(tx.node(parent)?, Some(d) if d.kind == NodeKind::Dir)
                && tx.lookup(parent, name)?.is_none()
                && tx.node(removed.id)?.is_none();
            if !free {
                return Ok((false, false));
            }
            tx.write_node(removed.id, &removed.node)?;
            tx.link(parent, name, removed.id, false)?;
            if let Some((key, size)) = &removed.value {
                tx.set_key(key, removed.id, *size)?;
            }
            for (xname, value) in &removed.xattrs {
                tx.set_xattr(removed.id, xname, Some(value))?;
            }
            Ok((true, true))
        })
    }

    /// Removes the empty directory `name` of `parent` in one write transaction: `NotFound`,
    /// `NotADirectory` (for the entry or for `parent`) and `NotEmpty` (entries, or a value of
    /// its own) leave everything as it was. Returns the directory's id and its node as it was.
    pub fn remove_dir(&self, parent: NodeId, name: &str) -> IndexResult<(NodeId, Node)> {
        self.write(|tx| {
            let dir = dir_of(tx, parent)?;
            let Some(id) = tx.lookup(parent, name)? else {
                return Err(not_found(format!("no entry {name:?} in {parent}")));
            };
            let node = tx.node(id)?.ok_or_else(|| {
                IndexError::corrupt(format!("entry {name:?} names missing node {id}"))
            })?;
            if node.kind != NodeKind::Dir {
                return Err(IndexError::new(
                    IndexErrorKind::NotADirectory,
                    format!("{name:?} is not a directory"),
                ));
            }
            if node.value.is_some() || tx.has_children(id)? {
                return Err(IndexError::new(
                    IndexErrorKind::NotEmpty,
                    "directory not empty",
                ));
            }
            tx.remove_entry_of(parent, dir, name, true)?;
            tx.remove_node(id)?;
            Ok((id, node))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IndexOptions, ROOT};
    use super::*;

    fn file() -> Node {
        Node::new(NodeKind::File, 0, "", 0o644, 1, 2)
    }

    fn ix() -> Index {
        Index::in_memory(IndexOptions::default()).unwrap()
    }

    #[test]
    fn unlink_file_removes_entry_node_key_and_xattrs_in_one_write_and_no_read() {
        let ix = ix();
        let d = ix
            .write(|tx| tx.create(ROOT, "d", Node::new(NodeKind::Dir, 0, "", 0o755, 1, 2)))
            .unwrap();
        let key = Key::new("/d/f");
        let (f, _) = ix.create_file(d, "f", file(), &key, 5).unwrap();
        ix.write(|tx| tx.set_xattr(f, "user.a", Some(b"1")))
            .unwrap();
        // The directory's key is not cached yet: the transaction reads it all the same.
        let (reads, writes) = (ix.read_count(), ix.write_count());
        let Unlinked::Removed(r) = ix.unlink_file(d, "f", None, |_| false).unwrap() else {
            panic!("kept");
        };
        assert_eq!((ix.read_count() - reads, ix.write_count() - writes), (0, 1));
        assert_eq!(r.id, f);
        assert_eq!(r.value, Some((key.clone(), 5)));
        assert_eq!(r.xattrs, vec![("user.a".to_owned(), b"1".to_vec())]);
        assert!(ix.lookup(d, "f").unwrap().is_none());
        assert_eq!(ix.node(f).unwrap_err().kind(), IndexErrorKind::NotFound);
        assert_eq!(ix.value_size(&key).unwrap(), None);
        assert_eq!(ix.xattr(f, "user.a").unwrap(), None);
        assert!(ix.node(d).unwrap().explicit);
        // Put back as it was.
        assert!(ix.restore_file(d, "f", &r).unwrap());
        assert_eq!(ix.lookup(d, "f").unwrap().unwrap().0, f);
        assert_eq!(ix.value_size(&key).unwrap(), Some(5));
        assert_eq!(ix.xattr(f, "user.a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(ix.key_of(f).unwrap(), key);
        // Not twice: the name is taken now.
        assert!(!ix.restore_file(d, "f", &r).unwrap());
    }

    #[test]
    fn unlink_file_keeps_what_it_must_not_remove_and_writes_nothing() {
        let ix = ix();
        let (f, _) = ix
            .create_file(ROOT, "f", file(), &Key::new("/f"), 0)
            .unwrap();
        let (g, _) = ix
            .create_file(ROOT, "g", file(), &Key::new("/g"), 0)
            .unwrap();
        let writes = ix.write_count();
        // Kept at the caller's request (an open file).
        match ix.unlink_file(ROOT, "f", None, |id| id == f).unwrap() {
            Unlinked::Kept(id, n) => assert_eq!((id, n.name.as_str()), (f, "f")),
            other => panic!("{other:?}"),
        }
        // A changed entry.
        let err = ix.unlink_file(ROOT, "f", Some(g), |_| true).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotFound);
        // A missing one, a directory, a file as the directory.
        let err = ix.unlink_file(ROOT, "x", None, |_| false).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotFound);
        let d = ix
            .write(|tx| tx.create(ROOT, "d", Node::new(NodeKind::Dir, 0, "", 0o755, 1, 2)))
            .unwrap();
        let writes_d = ix.write_count();
        let err = ix.unlink_file(ROOT, "d", None, |_| false).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::IsADirectory);
        let err = ix.unlink_file(f, "x", None, |_| false).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotADirectory);
        assert_eq!(ix.write_count(), writes_d);
        assert_eq!(writes_d, writes + 1);
        assert!(ix.lookup(ROOT, "f").unwrap().is_some());
        assert!(ix.lookup(ROOT, "d").unwrap().is_some());
        // With the id it was kept under, it goes.
        assert!(matches!(
            ix.unlink_file(ROOT, "f", Some(f), |_| true).unwrap(),
            Unlinked::Removed(_)
        ));
        assert!(ix.lookup(ROOT, "f").unwrap().is_none());
        let _ = d;
    }

    #[test]
    fn remove_dir_removes_only_an_empty_directory() {
        let ix = ix();
        ix.record_put(&Key::new("/a/b"), 1).unwrap();
        let (a, _) = ix.resolve(&Key::new("/a")).unwrap().unwrap();
        let err = ix.remove_dir(ROOT, "a").unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotEmpty);
        let err = ix.remove_dir(a, "b").unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotADirectory);
        let err = ix.remove_dir(ROOT, "z").unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotFound);
        let subdirs = ix.node(ROOT).unwrap().subdirs;
        ix.record_delete(&Key::new("/a/b")).unwrap();
        // The implied directory went with its last key; an explicit one stays until removed.
        let e = ix
            .write(|tx| tx.create(ROOT, "e", Node::new(NodeKind::Dir, 0, "", 0o755, 1, 2)))
            .unwrap();
        assert_eq!(ix.node(ROOT).unwrap().subdirs, subdirs);
        assert_eq!(ix.remove_dir(ROOT, "e").unwrap().0, e);
        assert!(ix.lookup(ROOT, "e").unwrap().is_none());
        assert_eq!(ix.node(ROOT).unwrap().subdirs, subdirs - 1);
    }
}
