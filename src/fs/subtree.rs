//! Subtree guards: a rename never runs beside an operation below what it moves.
//!
//! A rename changes the datastore key of the node it moves and, for a directory, of every node
//! below it: it lists the values under the old key, moves them in the store, then records the
//! move in one index transaction. The kernel serialises a rename only with operations on the
//! two parent directories and the moved inode; a create, unlink, open or truncate deeper in a
//! moved directory reaches dsfs at the same time. Such an operation reads its key before the
//! rename commits and writes it after, so its value would land under the old key while the
//! index files the node under the new one (a file that then reads as missing), or it would add
//! a value under the old key after the rename listed them, which nothing moves.
//!
//! So every operation that reads a key and then writes under it holds a *shared* guard on the
//! nodes it works in (the parent directory of a name, or the file itself: an open, a truncate,
//! and a `create` of a name that exists, since a hard-linked file's key comes from a name that
//! may be in another directory; and an operation that reads a file's whole value by its key:
//! `getxattr user.ipfs.cid` and the `ipfs_blocks` writer, so a rename of the file or a
//! directory above it waits for that read), and a rename holds a *moving* guard on the node it
//! moves (and shared guards on both parents). Removing or replacing the first name of a hard-linked file
//! moves its value to another name's key: that unlink or rename also moves the file (an open
//! beside it would keep the old key) and covers the directory of the name the value moves to.
//! Guards are granted so:
//!
//! - a guard is not granted while a node it names, or an ancestor of one, is being moved;
//! - a moving guard is not granted while another moving guard's node is an ancestor or a
//!   descendant of its own, and once granted it waits until every shared guard granted before
//!   it below its node is dropped. Operations that arrive meanwhile wait for the rename, so a
//!   stream of creates cannot starve it.
//!
//! Guards are taken at the start of a public operation, before any other lock of the
//! filesystem (see the lock order in `open.rs`), and never while another guard is held, so
//! waiting for one can never close a cycle. The guards' own mutex is held only to check and
//! record them; while a rename is running it is also held across index reads of ancestors
//! (never across store I/O). With no rename running, a guard costs one uncontended lock and a
//! map insert and removal.

use std::collections::HashMap;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::index::{Index, IndexResult, NodeId, ROOT};

/// The guards currently granted.
#[derive(Default)]
pub(super) struct Subtrees {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Granted guards by token: the nodes each works in (shared).
    shared: HashMap<u64, Vec<NodeId>>,
    /// Granted moving guards by token: the nodes each moves.
    moving: HashMap<u64, Vec<NodeId>>,
    /// Threads waiting for a guard to go.
    waiting: usize,
}

/// A granted guard; dropping it lets waiting operations go.
pub(super) struct SubtreeGuard<'a> {
    owner: &'a Subtrees,
    token: u64,
}

impl Drop for SubtreeGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.owner.state.lock();
        st.shared.remove(&self.token);
        st.moving.remove(&self.token);
        if st.waiting > 0 {
            self.owner.changed.notify_all();
        }
    }
}

/// `id` and its ancestors up to the root, as the index has them now. A node the index no
/// longer has ends the chain (it was removed: nothing can move below it).
fn chain(index: &Index, id: NodeId) -> IndexResult<Vec<NodeId>> {
    let mut out = vec![id];
    let mut cur = id;
    while cur != ROOT {
        let node = match index.node(cur) {
            Ok(n) => n,
            Err(e) if e.kind() == crate::index::IndexErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        if out.len() > 100_000 {
            break;
        }
        cur = node.parent;
        out.push(cur);
    }
    Ok(out)
}

impl Subtrees {
    /// A guard for an operation that works in `nodes` (the directories whose entries it
    /// changes, or the file whose value it reads and writes by key).
    pub(super) fn shared<'a>(
        &'a self,
        index: &Index,
        nodes: &[NodeId],
    ) -> IndexResult<SubtreeGuard<'a>> {
        self.grant(index, nodes, &[])
    }

    /// A guard for a rename that moves `moved` (and works in the directories `nodes`).
    pub(super) fn moving<'a>(
        &'a self,
        index: &Index,
        nodes: &[NodeId],
        moved: &[NodeId],
    ) -> IndexResult<SubtreeGuard<'a>> {
        self.grant(index, nodes, moved)
    }

    /// How many threads wait for a guard now (for tests that must know one is waiting).
    #[cfg(test)]
    pub(super) fn waiters(&self) -> usize {
        self.state.lock().waiting
    }

    fn wait(&self, st: &mut MutexGuard<'_, State>) {
        st.waiting += 1;
        self.changed.wait(st);
        st.waiting -= 1;
    }

    fn grant<'a>(
        &'a self,
        index: &Index,
        nodes: &[NodeId],
        moved: &[NodeId],
    ) -> IndexResult<SubtreeGuard<'a>> {
        let mut st = self.state.lock();
        while Self::blocked(&st, index, nodes, moved)? {
            self.wait(&mut st);
        }
        let token = st.next;
        st.next += 1;
        st.shared.insert(token, nodes.to_vec());
        if moved.is_empty() {
            return Ok(SubtreeGuard { owner: self, token });
        }
        st.moving.insert(token, moved.to_vec());
        // Operations below the moved nodes that were granted before this guard finish first.
        let guard = SubtreeGuard { owner: self, token };
        while Self::busy_below(&st, index, token, moved)? {
            self.wait(&mut st);
        }
        Ok(guard)
    }

    /// Whether a guard for `nodes` and `moved` must wait for a moving guard already granted.
    fn blocked(st: &State, index: &Index, nodes: &[NodeId], moved: &[NodeId]) -> IndexResult<bool> {
        if st.moving.is_empty() {
            return Ok(false);
        }
        let movers: Vec<NodeId> = st.moving.values().flatten().copied().collect();
        for &n in nodes.iter().chain(moved) {
            if chain(index, n)?.iter().any(|a| movers.contains(a)) {
                return Ok(true);
            }
        }
        for &m in &movers {
            if chain(index, m)?.iter().any(|a| moved.contains(a)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a guard other than `token` works at or below one of `moved`.
    fn busy_below(st: &State, index: &Index, token: u64, moved: &[NodeId]) -> IndexResult<bool> {
        for (&t, nodes) in &st.shared {
            if t == token {
                continue;
            }
            for &n in nodes {
                if chain(index, n)?.iter().any(|a| moved.contains(a)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::datastore::Key;
    use crate::index::IndexOptions;

    fn tree() -> (Index, NodeId, NodeId, NodeId) {
        let ix = Index::in_memory(IndexOptions::default()).unwrap();
        ix.record_put(&Key::new("/a/b/c"), 1).unwrap();
        ix.record_put(&Key::new("/x/y"), 1).unwrap();
        let a = ix.resolve(&Key::new("/a")).unwrap().unwrap().0;
        let b = ix.resolve(&Key::new("/a/b")).unwrap().unwrap().0;
        let x = ix.resolve(&Key::new("/x")).unwrap().unwrap().0;
        (ix, a, b, x)
    }

    #[test]
    fn a_guard_below_a_moved_node_waits_for_the_move_and_one_beside_it_does_not() {
        let (ix, a, b, x) = tree();
        let ix = Arc::new(ix);
        let s = Arc::new(Subtrees::default());
        let mover = s.moving(&ix, &[ROOT], &[a]).unwrap();
        // Beside the moved directory, and its parent: granted at once.
        drop(s.shared(&ix, &[x]).unwrap());
        drop(s.shared(&ix, &[ROOT]).unwrap());
        let granted = Arc::new(AtomicBool::new(false));
        let t = {
            let (s, ix, granted) = (s.clone(), ix.clone(), granted.clone());
            std::thread::spawn(move || {
                let _g = s.shared(&ix, &[b]).unwrap();
                granted.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !granted.load(Ordering::SeqCst),
            "a guard below a directory being moved was granted"
        );
        drop(mover);
        t.join().unwrap();
        assert!(granted.load(Ordering::SeqCst));
    }

    #[test]
    fn a_move_waits_for_the_operations_below_it_granted_before() {
        let (ix, a, b, _) = tree();
        let ix = Arc::new(ix);
        let s = Arc::new(Subtrees::default());
        let below = s.shared(&ix, &[b]).unwrap();
        let granted = Arc::new(AtomicBool::new(false));
        let t = {
            let (s, ix, granted) = (s.clone(), ix.clone(), granted.clone());
            std::thread::spawn(move || {
                let _g = s.moving(&ix, &[ROOT], &[a]).unwrap();
                granted.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !granted.load(Ordering::SeqCst),
            "the move ran beside a create below it"
        );
        drop(below);
        t.join().unwrap();
        assert!(granted.load(Ordering::SeqCst));
    }

    #[test]
    fn nested_moves_exclude_each_other_and_unrelated_ones_do_not() {
        let (ix, a, b, x) = tree();
        let s = Subtrees::default();
        let outer = s.moving(&ix, &[ROOT], &[a]).unwrap();
        // An unrelated move is granted beside it.
        drop(s.moving(&ix, &[ROOT], &[x]).unwrap());
        let st = s.state.lock();
        assert!(Subtrees::blocked(&st, &ix, &[a], &[b]).unwrap());
        drop(st);
        drop(outer);
        let inner = s.moving(&ix, &[a], &[b]).unwrap();
        let st = s.state.lock();
        // The parent of a moving node is not below it, but the moving node's own ancestor
        // may not move meanwhile.
        assert!(Subtrees::blocked(&st, &ix, &[ROOT], &[a]).unwrap());
        assert!(!Subtrees::blocked(&st, &ix, &[a], &[]).unwrap());
        drop(st);
        drop(inner);
    }
}
