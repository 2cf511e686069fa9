//! The keys of directories by node id, so that finding a node's datastore key costs a read of
//! the node itself, not a walk over every ancestor.
//!
//! A directory's key changes only when it or one of its ancestors is renamed (a `put_node` of
//! a directory with a new parent or name, which [`super::Tx`] notices): the index then empties
//! the cache after the commit. Node ids are never reused, so a removed directory's entry is
//! merely dead. A reader takes the generation before it opens its read transaction and may
//! only insert while the generation is unchanged, so a key read from a snapshot older than a
//! rename never enters the cache after that rename emptied it.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{IndexError, IndexResult, IndexTable, Node, NodeId, ROOT, get_node};
use crate::datastore::Key;

/// At most this many directories are remembered; a full cache is emptied and refilled.
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
pub(super) struct DirKeys {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    keys: HashMap<NodeId, Key>,
}

impl DirKeys {
    /// The generation to pass to [`DirKeys::key_of`]: take it before opening the read
    /// transaction the key will be read from.
    pub(super) fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Forgets every key (after a commit that moved a directory).
    pub(super) fn invalidate(&self) {
        let mut inner = self.inner.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.keys.clear();
    }

    fn get(&self, id: NodeId) -> Option<Key> {
        self.inner.lock().keys.get(&id).cloned()
    }

    fn insert(&self, generation: u64, id: NodeId, key: &Key) {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        if inner.keys.len() >= CAPACITY {
            inner.keys.clear();
        }
        inner.keys.insert(id, key.clone());
    }

    /// The key of node `id` as of the read transaction `nodes` belongs to, which was opened
    /// after `generation` was taken. Uses and fills the cache for directories.
    pub(super) fn key_of(
        &self,
        generation: u64,
        nodes: &impl IndexTable,
        id: NodeId,
    ) -> IndexResult<Key> {
        if id == ROOT {
            return Ok(Key::root());
        }
        let node = read_node(nodes, id)?;
        if node.is_dir()
            && let Some(key) = self.get(id)
        {
            return Ok(key);
        }
        // Names from `id` up to the first ancestor whose key is known (or the root).
        let mut parts = vec![node.name.clone()];
        let mut cur = node.parent;
        let base = loop {
            if cur == ROOT {
                break String::new();
            }
            if let Some(key) = self.get(cur) {
                break key.into_string();
            }
            let n = read_node(nodes, cur)?;
            parts.push(n.name);
            if parts.len() > 100_000 {
                return Err(IndexError::corrupt("cycle in the parent chain"));
            }
            cur = n.parent;
        };
        let mut s = base;
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(p);
        }
        let key = Key::from_raw(s)
            .map_err(|_| IndexError::corrupt(format!("node {id} has an unclean path")))?;
        if node.is_dir() {
            self.insert(generation, id, &key);
        } else if node.parent != ROOT {
            self.insert(generation, node.parent, &key.parent());
        }
        Ok(key)
    }
}

fn read_node(nodes: &impl IndexTable, id: NodeId) -> IndexResult<Node> {
    get_node(nodes, id)?.ok_or_else(|| IndexError::not_found(format!("no node {id}")))
}

#[cfg(test)]
mod tests {
    use super::super::{Index, IndexOptions};
    use crate::datastore::Key;

    #[test]
    fn a_renamed_directory_gives_its_descendants_their_new_keys() {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        let c = ix.record_put(&Key::new("/a/b/c"), 1).unwrap();
        let (a, _) = ix.resolve(&Key::new("/a")).unwrap().unwrap();
        let (b, _) = ix.resolve(&Key::new("/a/b")).unwrap().unwrap();
        // Twice: the second answer comes from the cache the first one filled.
        assert_eq!(ix.key_of(c).unwrap(), Key::new("/a/b/c"));
        assert_eq!(ix.key_of(c).unwrap(), Key::new("/a/b/c"));
        assert_eq!(ix.key_of(b).unwrap(), Key::new("/a/b"));
        ix.write(|tx| {
            tx.unlink(a, "b")?;
            tx.link(a, "B", b, true)?;
            let mut n = tx.node_required(b)?;
            n.name = "B".into();
            tx.put_node(b, &n)
        })
        .unwrap();
        assert_eq!(ix.key_of(c).unwrap(), Key::new("/a/B/c"));
        assert_eq!(ix.key_of(b).unwrap(), Key::new("/a/B"));
        let found = ix.dir_lookup(b, Some("c"), true).unwrap();
        assert_eq!(found.dir_key, Some(Key::new("/a/B")));
        // A move under another parent, found through the parent's cached key too.
        let d = ix.record_put(&Key::new("/d/x"), 1).unwrap();
        let (dd, _) = ix.resolve(&Key::new("/d")).unwrap().unwrap();
        assert_eq!(ix.key_of(d).unwrap(), Key::new("/d/x"));
        ix.write(|tx| {
            tx.unlink(ROOT_ID, "d")?;
            tx.link(b, "d", dd, true)?;
            let mut n = tx.node_required(dd)?;
            n.parent = b;
            tx.put_node(dd, &n)
        })
        .unwrap();
        assert_eq!(ix.key_of(d).unwrap(), Key::new("/a/B/d/x"));
    }

    const ROOT_ID: u64 = super::ROOT;
}
