//! Directories removed while the kernel still holds them.
//!
//! A process can keep a directory open (or be inside it) while it is removed by `rmdir` or
//! replaced by a rename. POSIX keeps such a directory alive, with a link count of 0, until the
//! last reference goes: `fstat` and `fchmod` on its descriptor still work, and the kernel
//! refuses new entries in it by itself (the VFS marks it dead). The index forgets the node at
//! once, so without this table a GETATTR of the open directory answered `ENOENT`.
//!
//! The table holds the node as the removal left it, keyed by inode number, until the kernel
//! evicts the inode (FORGET). Only directories removed through this filesystem are kept: the
//! kernel learns of other removals through invalidations and looks the name up again. It is
//! consulted only after the index answered `NotFound`, so the common attribute path takes no
//! lock for it. The table is bounded: a kernel that never sends FORGET (it does) cannot make it
//! grow without end.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::index::Node;

/// At most this many removed directories are remembered; past it, a removal is not recorded
/// and an `fstat` of that directory answers `ENOENT`, as it did before this table existed.
const MAX_REMOVED: usize = 65_536;

/// Removed directories the kernel may still ask about.
#[derive(Default)]
pub(super) struct RemovedDirs {
    nodes: Mutex<HashMap<u64, Node>>,
}

impl RemovedDirs {
    /// Remembers `node`, the directory `ino` just removed.
    pub(super) fn record(&self, ino: u64, node: Node) {
        let mut nodes = self.nodes.lock();
        if nodes.len() < MAX_REMOVED || nodes.contains_key(&ino) {
            nodes.insert(ino, node);
        } else {
            log::debug!("{MAX_REMOVED} removed directories kept already; not keeping {ino}");
        }
    }

    /// The node of removed directory `ino`, if it is remembered.
    pub(super) fn get(&self, ino: u64) -> Option<Node> {
        self.nodes.lock().get(&ino).cloned()
    }

    /// Applies `f` to the node of removed directory `ino` and returns the result, or `None`
    /// when `ino` is not a remembered removed directory.
    pub(super) fn update(&self, ino: u64, f: impl FnOnce(&mut Node)) -> Option<Node> {
        let mut nodes = self.nodes.lock();
        let n = nodes.get_mut(&ino)?;
        f(n);
        Some(n.clone())
    }

    /// The kernel evicted inode `ino`: nothing will ask about it again.
    pub(super) fn forget(&self, ino: u64) {
        self.nodes.lock().remove(&ino);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.nodes.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NodeKind;

    fn dir() -> Node {
        Node::new(NodeKind::Dir, 0, "d", 0o755, 1, 2)
    }

    #[test]
    fn a_recorded_directory_is_kept_until_forgotten() {
        let r = RemovedDirs::default();
        assert!(r.get(7).is_none());
        r.record(7, dir());
        assert_eq!(r.get(7).unwrap().mode, 0o755);
        assert_eq!(r.update(7, |n| n.mode = 0o700).unwrap().mode, 0o700);
        assert_eq!(r.get(7).unwrap().mode, 0o700);
        assert!(r.update(8, |n| n.mode = 0).is_none());
        r.forget(7);
        assert!(r.get(7).is_none());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_table_stops_growing_at_its_bound() {
        let r = RemovedDirs::default();
        for ino in 0..MAX_REMOVED as u64 + 10 {
            r.record(ino, dir());
        }
        assert_eq!(r.len(), MAX_REMOVED);
        // One already kept is still updated in place.
        r.record(3, dir());
        assert_eq!(r.len(), MAX_REMOVED);
    }
}
