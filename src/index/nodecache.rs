//! The records of directories by node id, so that the kernel's `GETATTR` of a directory (one
//! after every create and unlink in it: the kernel drops a directory's attributes whenever it
//! changes an entry) costs no read transaction.
//!
//! Every write of the `nodes` table goes through [`super::Tx`], which notes the ids it wrote
//! and the new records of the directories among them (or that it cleared the table); after
//! the commit the index puts those records in here (drops the others) and bumps the
//! generation, so the `GETATTR` that follows a create finds its directory's new record. A reader takes the generation before it opens its read transaction and may
//! only insert while the generation is unchanged, so a record read from a snapshot older than
//! a write never enters the cache after that write dropped it. Only directories are kept:
//! they are few, and files' attributes are the kernel's to cache.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{Node, NodeId};

/// At most this many directories are remembered; a full cache is emptied and refilled.
const CAPACITY: usize = 1 << 14;

/// The nodes a write transaction wrote, for [`DirNodes::written`].
#[derive(Debug, Default)]
pub(super) enum Written {
    /// No node was written.
    #[default]
    None,
    /// These nodes were written (with their new record when it is a directory's) or removed.
    Some(Vec<(NodeId, Option<Node>)>),
    /// The whole table may have changed.
    All,
}

impl Written {
    /// Notes that node `id` now has the record `node` (`None`: removed, or not a directory),
    /// or with no `id`, that any node may have changed.
    pub(super) fn note(&mut self, id: Option<NodeId>, node: Option<&Node>) {
        let node = node.filter(|n| n.is_dir()).cloned();
        match (id, &mut *self) {
            (_, Written::All) => {}
            (None, _) => *self = Written::All,
            (Some(id), Written::None) => *self = Written::Some(vec![(id, node)]),
            (Some(id), Written::Some(ids)) => match ids.iter_mut().find(|(i, _)| *i == id) {
                Some(slot) => slot.1 = node,
                None => ids.push((id, node)),
            },
        }
    }
}

#[derive(Default)]
pub(super) struct DirNodes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    nodes: HashMap<NodeId, Node>,
}

impl DirNodes {
    /// The generation to pass to [`DirNodes::insert`]: take it before opening the read
    /// transaction the node will be read from.
    pub(super) fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// The cached record of directory `id`.
    pub(super) fn get(&self, id: NodeId) -> Option<Node> {
        self.inner.lock().nodes.get(&id).cloned()
    }

    /// Remembers `node` (if it is a directory) as read by a transaction opened after
    /// `generation` was taken.
    pub(super) fn insert(&self, generation: u64, id: NodeId, node: &Node) {
        if !node.is_dir() {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        if inner.nodes.len() >= CAPACITY {
            inner.nodes.clear();
        }
        inner.nodes.insert(id, node.clone());
    }

    /// Puts in what a committed write transaction wrote (its directories' new records; the
    /// other nodes it wrote are dropped), or with `committed` false (a failed commit, whose
    /// outcome is unknown), drops every node it wrote. The caller holds the index's write
    /// lock, so that the records of two writes go in in the order they were committed.
    pub(super) fn written(&self, written: Written, committed: bool) {
        let mut inner = self.inner.lock();
        match written {
            Written::None => return,
            Written::Some(ids) => {
                for (id, node) in ids {
                    match node.filter(|_| committed) {
                        Some(n) if inner.nodes.len() < CAPACITY => {
                            inner.nodes.insert(id, n);
                        }
                        _ => {
                            inner.nodes.remove(&id);
                        }
                    }
                }
            }
            Written::All => inner.nodes.clear(),
        }
        inner.generation = inner.generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Index, IndexOptions, NodeKind, ROOT};
    use crate::datastore::Key;

    /// A directory's record is read from the index once, then from the cache, which every
    /// write of it updates; a file's record is always read from the index.
    #[test]
    fn directory_records_are_read_once_and_follow_every_write() {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        let f = ix.record_put(&Key::new("/d/f"), 3).unwrap();
        let (d, _) = ix.resolve(&Key::new("/d")).unwrap().unwrap();
        let reads = || ix.read_count();
        // What a read transaction sees (dir_lookup never uses the cache).
        let stored = |id| ix.dir_lookup(id, None, false).unwrap().dir.encode();
        let first = ix.node(d).unwrap();
        let before = reads();
        let second = ix.node(d).unwrap();
        assert_eq!(reads() - before, 0, "the second read comes from the cache");
        assert_eq!(first.encode(), second.encode());
        assert_eq!(first.encode(), stored(d));
        let before = reads();
        ix.node(f).unwrap();
        ix.node(f).unwrap();
        assert_eq!(reads() - before, 2, "files are not cached");
        // A new entry touches the directory's times: the write puts its new record in.
        let g = ix.record_put(&Key::new("/d/g"), 1).unwrap();
        let before = reads();
        let after = ix.node(d).unwrap();
        assert_eq!(reads() - before, 0, "the write put the new record in");
        assert_ne!(after.encode(), first.encode());
        assert_eq!(after.encode(), stored(d));
        // A mode change, a rename and a removal are seen too.
        ix.write(|tx| {
            let mut n = tx.node_required(d)?;
            n.mode = 0o700;
            tx.put_node(d, &n)
        })
        .unwrap();
        assert_eq!(ix.node(d).unwrap().mode, 0o700);
        assert_eq!(ix.node(d).unwrap().encode(), stored(d));
        ix.write(|tx| {
            tx.unlink(ROOT, "d")?;
            tx.link(ROOT, "e", d, true)?;
            let mut n = tx.node_required(d)?;
            n.name = "e".into();
            tx.put_node(d, &n)
        })
        .unwrap();
        assert_eq!(ix.node(d).unwrap().name, "e");
        assert_eq!(ix.node(ROOT).unwrap().encode(), stored(ROOT));
        // A write that is not committed changes nothing.
        let failed: Result<(), _> = ix.write(|tx| {
            let mut n = tx.node_required(d)?;
            n.mode = 0o555;
            tx.put_node(d, &n)?;
            Err(crate::index::IndexError::not_found("abandoned"))
        });
        assert!(failed.is_err());
        assert_eq!(ix.node(d).unwrap().mode, 0o700);
        ix.write(|tx| {
            for (id, name) in [(f, "f"), (g, "g")] {
                tx.unlink(d, name)?;
                tx.remove_node(id)?;
            }
            tx.unlink(ROOT, "e")?;
            tx.remove_node(d)
        })
        .unwrap();
        assert!(ix.node(d).is_err());
        assert_eq!(ix.node(ROOT).unwrap().kind, NodeKind::Dir);
        assert_eq!(ix.node(ROOT).unwrap().encode(), stored(ROOT));
    }
}
