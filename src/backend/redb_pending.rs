//! Deletes of a [`super::redb::RedbStore`] that are visible at once but written later.
//!
//! A redb commit costs tens of microseconds even without fsync, and a filesystem unlink of a
//! small value on the default repository used to pay one of them in the value store on top of
//! the index's. A delete now only enters its key here: every read of the store consults this
//! set first (a key in it reads as missing), and the keys are removed from the database by the
//! next write transaction of the store (a put, a batch, a rename) or by its next durable commit
//! (the group committer's, `sync` or `close`), whichever comes first. Durability is what it was:
//! a delete became durable at the next durable commit before, and it still does.
//!
//! Ordering: a writer takes its snapshot of the set inside its write transaction and, after the
//! commit, removes from the set only the entries it applied that were not entered again
//! meanwhile (each entry carries a sequence number). A reader checks the set before it opens its
//! read transaction, so a key that has left the set has left the database for that reader too.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;

use crate::datastore::Result;
use crate::group_commit::redb_error;

/// The most deletes held before a write transaction applies them.
pub(super) const LIMIT: usize = 4096;

/// Keys deleted but not yet removed from the database, each with the sequence number of its
/// latest delete.
#[derive(Default)]
pub(super) struct PendingDeletes {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, u64>,
    seq: u64,
}

/// The deletes one write transaction applies (see [`PendingDeletes::snapshot`]).
pub(super) struct Applied(Vec<(String, u64)>);

impl PendingDeletes {
    /// Enters a delete of `key`; returns how many deletes are pending now.
    pub(super) fn add(&self, key: &str) -> usize {
        let mut st = self.state.lock();
        st.seq += 1;
        let seq = st.seq;
        st.keys.insert(key.to_owned(), seq);
        st.keys.len()
    }

    /// How many deletes are pending.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.lock().keys.len()
    }

    /// Whether `key` has a pending delete (it reads as missing).
    pub(super) fn contains(&self, key: &str) -> bool {
        self.state.lock().keys.contains_key(key)
    }

    /// The keys with pending deletes, or `None` when there are none (a query filters them out).
    pub(super) fn keys(&self) -> Option<BTreeSet<String>> {
        let st = self.state.lock();
        if st.keys.is_empty() {
            None
        } else {
            Some(st.keys.keys().cloned().collect())
        }
    }

    /// The pending deletes, for a write transaction to apply. Call inside the transaction.
    pub(super) fn snapshot(&self) -> Applied {
        let st = self.state.lock();
        Applied(st.keys.iter().map(|(k, &s)| (k.clone(), s)).collect())
    }

    /// The transaction that applied `applied` committed: those deletes are in the database.
    /// A key deleted again since the snapshot stays pending (its later delete may follow a put
    /// that the transaction did not see).
    pub(super) fn committed(&self, applied: &Applied) {
        if applied.0.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for (k, seq) in &applied.0 {
            if st.keys.get(k) == Some(seq) {
                st.keys.remove(k);
            }
        }
    }
}

impl Applied {
    /// Removes the deleted keys from `table` (in the caller's write transaction).
    pub(super) fn apply(&self, table: &mut redb::Table<&str, &[u8]>) -> Result<()> {
        for (k, _) in &self.0 {
            table
                .remove(k.as_str())
                .map_err(|e| redb_error("deleting", e))?;
        }
        Ok(())
    }

    /// Whether there is nothing to apply.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::redb::{RedbOptions, RedbStore};
    use super::*;
    use crate::datastore::{Datastore, ErrorKind, Key, Query};

    #[test]
    fn a_delete_entered_again_after_the_snapshot_stays_pending() {
        let p = PendingDeletes::default();
        p.add("/a");
        p.add("/b");
        let snap = p.snapshot();
        p.add("/a");
        p.committed(&snap);
        assert!(p.contains("/a"));
        assert!(!p.contains("/b"));
        assert_eq!(p.keys().unwrap().len(), 1);
        let snap = p.snapshot();
        p.committed(&snap);
        assert!(p.keys().is_none());
    }

    fn keys(store: &RedbStore) -> Vec<String> {
        let q = Query {
            keys_only: true,
            ..Query::default()
        };
        store
            .query(q)
            .unwrap()
            .map(|e| e.unwrap().key.as_str().to_owned())
            .collect()
    }

    #[test]
    fn a_delete_costs_no_commit_of_its_own_and_reads_as_missing_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        for k in ["/a", "/b", "/c"] {
            store.put(&Key::new(k), k.as_bytes()).unwrap();
        }
        let before = store.write_count();
        store.delete(&Key::new("/a")).unwrap();
        store.delete(&Key::new("/b")).unwrap();
        store.delete(&Key::new("/missing")).unwrap();
        assert_eq!(store.write_count(), before);
        let a = Key::new("/a");
        assert_eq!(store.get(&a).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(store.get_size(&a).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            store.read_at(&a, 0, &mut [0; 4]).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(!store.has(&Key::new("/b")).unwrap());
        assert_eq!(keys(&store), ["/c"]);
        // A put after a delete wins, and writes the other pending delete with it.
        store.put(&a, b"new").unwrap();
        assert_eq!(store.write_count(), before + 1);
        assert_eq!(store.get(&a).unwrap(), b"new");
        assert_eq!(keys(&store), ["/a", "/c"]);
        // A delete after a put wins too, also across the durable commit of close.
        store.delete(&Key::new("/c")).unwrap();
        store.close().unwrap();
        drop(store);
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        assert_eq!(keys(&store), ["/a"]);
        assert_eq!(store.get(&a).unwrap(), b"new");
    }

    #[test]
    fn the_group_committer_writes_pending_deletes_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let options = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&path, options.clone()).unwrap();
        store.put(&Key::new("/a"), b"a").unwrap();
        store.delete(&Key::new("/a")).unwrap();
        assert_eq!(store.pending_deletes(), 1);
        let before = store.write_count();
        store.sync(&Key::root()).unwrap();
        // The durable commit wrote the delete: nothing is pending, and no other write ran.
        assert_eq!(store.pending_deletes(), 0);
        assert_eq!(store.write_count(), before);
        assert_eq!(keys(&store), Vec::<String>::new());
        assert!(!store.has(&Key::new("/a")).unwrap());
    }
}
