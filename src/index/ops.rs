//! Reads and writes shaped after the filesystem's namespace operations, each in one
//! transaction: what `lookup`, `create` and `unlink` need to know before they touch the store
//! comes from one read transaction, and what they change is one write transaction.

use redb::ReadableDatabase;

use super::{
    DIRENTS, Index, IndexError, IndexErrorKind, IndexResult, NODES, Node, NodeId, get_node, guard,
    open_read,
};
use crate::datastore::Key;

/// A directory, one of its entries and (on request) the directory's key, read together.
#[derive(Debug)]
pub struct DirLookup {
    /// The directory's node (any kind: the caller checks that it is a directory).
    pub dir: Node,
    /// The entry asked for, if it exists.
    pub entry: Option<(NodeId, Node)>,
    /// The directory's datastore key, if it was asked for.
    pub dir_key: Option<Key>,
}

impl Index {
    /// Node `parent`, its entry `name` (when given) and its key (with `want_key`), in one read
    /// transaction. `NotFound` if `parent` does not exist.
    pub fn dir_lookup(
        &self,
        parent: NodeId,
        name: Option<&str>,
        want_key: bool,
    ) -> IndexResult<DirLookup> {
        guard("dir_lookup", || {
            let generation = self.dir_keys.generation();
            let txn = self
                .db
                .begin_read()
                .map_err(|e| IndexError::redb("starting an index read", e))?;
            let nodes = open_read(&txn, NODES)?;
            let dir = get_node(&nodes, parent)?
                .ok_or_else(|| IndexError::not_found(format!("no node {parent}")))?;
            let entry = match name {
                Some(name) => {
                    let dirents = open_read(&txn, DIRENTS)?;
                    let id = dirents
                        .get((parent, name))
                        .map_err(|e| IndexError::redb("looking up", e))?
                        .map(|v| v.value().0);
                    match id {
                        Some(id) => {
                            let node = get_node(&nodes, id)?.ok_or_else(|| {
                                IndexError::corrupt(format!(
                                    "entry {name:?} names missing node {id}"
                                ))
                            })?;
                            Some((id, node))
                        }
                        None => None,
                    }
                }
                None => None,
            };
            let dir_key = if want_key {
                Some(self.dir_keys.key_of(generation, &nodes, parent)?)
            } else {
                None
            };
            Ok(DirLookup {
                dir,
                entry,
                dir_key,
            })
        })
    }

    /// Enters a new regular file `name` in `parent` whose value (of `size` bytes, possibly
    /// still staged) lives at `key`: the node, the entry and the key record in one write
    /// transaction. `AlreadyExists` if the name is taken. Returns the new node's id and the
    /// node as stored.
    pub fn create_file(
        &self,
        parent: NodeId,
        name: &str,
        mut node: Node,
        key: &Key,
        size: u64,
    ) -> IndexResult<(NodeId, Node)> {
        node.value = Some(size);
        self.write(|tx| {
            let id = tx.create(parent, name, node.clone())?;
            tx.set_key(key, id, size)?;
            Ok(id)
        })
        .map(|id| {
            node.parent = parent;
            node.name = name.to_owned();
            (id, node)
        })
    }

    /// Removes the entry `name` of `parent` and the node `id` it names (with the key record of
    /// its value at `key`, if it had one), in one write transaction. With `keep_dir` the
    /// directory is first marked explicit, so that removing its last entry leaves it in place.
    /// `NotFound` if the entry no longer names `id` (a concurrent change won): nothing is
    /// written then. Returns the removed node.
    pub fn remove_entry(
        &self,
        parent: NodeId,
        name: &str,
        id: NodeId,
        key: Option<&Key>,
        keep_dir: bool,
    ) -> IndexResult<Node> {
        self.write(|tx| {
            if tx.lookup(parent, name)? != Some(id) {
                return Err(IndexError::new(
                    IndexErrorKind::NotFound,
                    format!("{name:?} no longer names node {id}"),
                ));
            }
            let old = tx.node_required(id)?;
            if keep_dir {
                let mut dir = tx.node_required(parent)?;
                if !dir.explicit {
                    dir.explicit = true;
                    tx.put_node(parent, &dir)?;
                }
            }
            tx.unlink(parent, name)?;
            tx.remove_node(id)?;
            if let Some(key) = key {
                tx.remove_key(key)?;
            }
            Ok(old)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IndexOptions, NodeKind, ROOT};
    use super::*;

    fn file() -> Node {
        Node::new(NodeKind::File, 0, "", 0o644, 1, 2)
    }

    #[test]
    fn dir_lookup_reads_the_directory_the_entry_and_the_key_together() {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        ix.record_put(&Key::new("/a/b/c"), 7).unwrap();
        let (a, _) = ix.resolve(&Key::new("/a")).unwrap().unwrap();
        let (b, _) = ix.resolve(&Key::new("/a/b")).unwrap().unwrap();
        let got = ix.dir_lookup(b, Some("c"), true).unwrap();
        assert_eq!(got.dir.kind, NodeKind::Dir);
        assert_eq!(got.dir.parent, a);
        assert_eq!(got.dir_key, Some(Key::new("/a/b")));
        let (c, cn) = got.entry.unwrap();
        assert_eq!(ix.key_of(c).unwrap(), Key::new("/a/b/c"));
        assert_eq!(cn.size(), 7);
        let none = ix.dir_lookup(b, Some("d"), false).unwrap();
        assert!(none.entry.is_none());
        assert!(none.dir_key.is_none());
        let err = ix.dir_lookup(9_999, Some("c"), true).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotFound);
    }

    #[test]
    fn create_file_records_node_entry_and_key_and_refuses_a_taken_name() {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        let key = Key::new("/f");
        let (id, n) = ix.create_file(ROOT, "f", file(), &key, 0).unwrap();
        assert_eq!((n.parent, n.name.as_str(), n.value), (ROOT, "f", Some(0)));
        assert_eq!(ix.node(id).unwrap().encode(), n.encode());
        assert_eq!(ix.value_size(&key).unwrap(), Some(0));
        assert_eq!(ix.lookup(ROOT, "f").unwrap().unwrap().0, id);
        let err = ix.create_file(ROOT, "f", file(), &key, 3).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::AlreadyExists);
        assert_eq!(ix.value_size(&key).unwrap(), Some(0));
    }

    #[test]
    fn remove_entry_returns_the_old_node_and_refuses_an_entry_that_changed() {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        let (f, _) = ix
            .create_file(ROOT, "f", file(), &Key::new("/f"), 0)
            .unwrap();
        let (g, _) = ix
            .create_file(ROOT, "g", file(), &Key::new("/g"), 0)
            .unwrap();
        // "f" does not name g: nothing is removed.
        let err = ix
            .remove_entry(ROOT, "f", g, Some(&Key::new("/f")), true)
            .unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NotFound);
        assert!(ix.lookup(ROOT, "f").unwrap().is_some());
        assert_eq!(ix.value_size(&Key::new("/f")).unwrap(), Some(0));
        let old = ix
            .remove_entry(ROOT, "f", f, Some(&Key::new("/f")), true)
            .unwrap();
        assert_eq!(old.name, "f");
        assert!(ix.lookup(ROOT, "f").unwrap().is_none());
        assert_eq!(ix.node(f).unwrap_err().kind(), IndexErrorKind::NotFound);
        assert_eq!(ix.value_size(&Key::new("/f")).unwrap(), None);
        assert!(ix.node(ROOT).unwrap().explicit);
    }
}
