//! Reads and writes shaped after the filesystem's namespace operations, each in one
//! transaction: what `lookup` and `create` need to know before they touch the store
//! comes from one read transaction, and what they change is one write transaction.

use super::layout::{Dirents, View};
use super::{Index, IndexError, IndexResult, Node, NodeId, get_node, guard};
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
            let reading = self.read_txn()?;
            let table = reading.view();
            let dir = get_node(&table, parent)?
                .ok_or_else(|| IndexError::not_found(format!("no node {parent}")))?;
            let entry = match name {
                Some(name) => {
                    let id = View::<_, Dirents>::new(&table)
                        .get((parent, name))?
                        .map(|(child, _)| child);
                    match id {
                        Some(id) => {
                            let node = get_node(&table, id)?.ok_or_else(|| {
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
                Some(self.dir_keys.key_of(generation, &table, parent)?)
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
}

#[cfg(test)]
mod tests {
    use super::super::{IndexErrorKind, IndexOptions, NodeKind, ROOT};
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
}
