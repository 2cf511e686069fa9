//! Writes of a [`super::redb::RedbStore`] that are visible at once but written to the database
//! later: deletes, and puts of small values.
//!
//! A redb commit costs tens of microseconds even without fsync. On the default repository a
//! filesystem unlink of a small value used to pay one in the value store on top of the index's,
//! and so did the close of every new small file (the put of its value, empty for a file
//! created and closed unwritten). Such a write now only enters its key (and value) here: every
//! read of the store consults this map first (a deleted key reads as missing, a put key as its
//! value), and the writes reach the database with the next write transaction of the store (a
//! put of a large value, a batch, a rename) or with its next durable commit (the group
//! committer's, `sync` or `close`), whichever comes first. Durability is what it was: a
//! non-durable redb commit is lost by a crash until the next durable commit too, so a write
//! still becomes durable exactly at the next durable commit; and a commit that fails leaves the
//! writes here, visible, for the next one.
//!
//! Ordering: a write transaction locks the map while it applies the pending writes and runs its
//! own changes, so no write enters the map between the two (a rename or exchange reads the
//! values it moves inside its transaction, so they must be current); after the commit it
//! removes only the entries it applied that were not entered again meanwhile (each entry
//! carries a sequence number). A write entered after the transaction's own changes stays
//! pending and wins: it is the later one. A reader looks at the map before it opens its read
//! transaction, so a key that has left the map has reached the database for that reader too.
//!
//! Bounds: at most [`LIMIT`] keys and [`BYTES_LIMIT`] bytes of values wait; the write that
//! goes over either bound commits them all in a write transaction of its own.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::datastore::Result;
use crate::datastore::query::Entry;
use crate::group_commit::redb_error;

/// The most keys held before a write transaction applies them.
pub(super) const LIMIT: usize = 4096;
/// The largest value a put holds here; larger ones are written at once.
pub(super) const VALUE_MAX: usize = 16 << 10;
/// The most bytes of values held before a write transaction applies them.
pub(super) const BYTES_LIMIT: usize = 1 << 20;

/// Writes entered but not yet in the database, each with the sequence number of its entry.
#[derive(Default)]
pub(super) struct Pending {
    state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    writes: BTreeMap<String, Write>,
    seq: u64,
    /// Bytes of the values in `writes`.
    bytes: usize,
}

struct Write {
    seq: u64,
    /// `None`: a delete.
    value: Option<Arc<[u8]>>,
}

/// What the map says about one key.
pub(super) enum Seen {
    /// Nothing pending: the database has the answer.
    Nothing,
    /// Deleted: reads as missing.
    Deleted,
    /// Put with this value.
    Value(Arc<[u8]>),
}

/// The pending writes in a range of keys, in key order (`None` for a delete).
pub(super) type Overlay = Vec<(String, Option<Arc<[u8]>>)>;

/// The writes one write transaction applied (see [`Locked::apply`]).
pub(super) struct Applied(Vec<(String, u64)>);

/// The map locked by a write transaction between its application of the pending writes and
/// its own changes.
pub(super) struct Locked<'a>(MutexGuard<'a, State>);

impl Pending {
    /// Enters a write (`None`: a delete) of `key`; returns whether the map is now over one of
    /// its bounds (the caller then commits a write transaction, which applies them all).
    fn enter(&self, key: &str, value: Option<Arc<[u8]>>) -> bool {
        let mut st = self.state.lock();
        st.seq += 1;
        let seq = st.seq;
        let len = value.as_ref().map_or(0, |v| v.len());
        st.bytes += len;
        if let Some(old) = st.writes.insert(key.to_owned(), Write { seq, value }) {
            st.bytes -= old.value.map_or(0, |v| v.len());
        }
        st.writes.len() >= LIMIT || st.bytes >= BYTES_LIMIT
    }

    /// Enters a delete of `key`; see [`Pending::enter`].
    pub(super) fn delete(&self, key: &str) -> bool {
        self.enter(key, None)
    }

    /// Enters a put of `value` at `key`; see [`Pending::enter`].
    pub(super) fn put(&self, key: &str, value: &[u8]) -> bool {
        self.enter(key, Some(Arc::from(value)))
    }

    /// How many writes are pending.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.lock().writes.len()
    }

    /// The pending write of `key`, if any.
    pub(super) fn get(&self, key: &str) -> Seen {
        match self.state.lock().writes.get(key) {
            None => Seen::Nothing,
            Some(Write { value: None, .. }) => Seen::Deleted,
            Some(Write { value: Some(v), .. }) => Seen::Value(v.clone()),
        }
    }

    /// The pending writes of keys in `lo..hi` (unbounded where `None`), or `None` when there are
    /// none at all (a query then reads the database alone).
    pub(super) fn range(&self, lo: Option<&str>, hi: Option<&str>) -> Option<Overlay> {
        let st = self.state.lock();
        if st.writes.is_empty() {
            return None;
        }
        let lo = lo.map_or(Bound::Unbounded, Bound::Included);
        let hi = hi.map_or(Bound::Unbounded, Bound::Excluded);
        Some(
            st.writes
                .range::<str, _>((lo, hi))
                .map(|(k, w)| (k.clone(), w.value.clone()))
                .collect(),
        )
    }

    /// Locks the map for a write transaction. Call inside the transaction, and keep the lock
    /// until the transaction's own changes are made (not across its commit).
    pub(super) fn lock(&self) -> Locked<'_> {
        Locked(self.state.lock())
    }

    /// The transaction that applied `applied` committed: those writes are in the database.
    /// A key written again since stays pending (its later write may follow a change that the
    /// transaction made).
    pub(super) fn committed(&self, applied: &Applied) {
        if applied.0.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for (k, seq) in &applied.0 {
            if st.writes.get(k).is_some_and(|w| w.seq == *seq)
                && let Some(w) = st.writes.remove(k)
            {
                st.bytes -= w.value.map_or(0, |v| v.len());
            }
        }
    }
}

impl Locked<'_> {
    /// Writes the pending writes into `table` (in the caller's write transaction).
    pub(super) fn apply(&self, table: &mut redb::Table<&str, &[u8]>) -> Result<Applied> {
        let mut applied = Vec::with_capacity(self.0.writes.len());
        for (k, w) in &self.0.writes {
            match &w.value {
                None => {
                    table
                        .remove(k.as_str())
                        .map_err(|e| redb_error("deleting", e))?;
                }
                Some(v) => {
                    table
                        .insert(k.as_str(), &v[..])
                        .map_err(|e| redb_error("writing", e))?;
                }
            }
            applied.push((k.clone(), w.seq));
        }
        Ok(Applied(applied))
    }

    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.0.writes.is_empty()
    }
}

/// Merges `overlay` (pending writes, in key order) into `db`, a scan of the database in key
/// order: a pending put replaces or adds its key, a pending delete hides it.
pub(super) fn merge<I>(
    db: I,
    overlay: Vec<(String, Option<Entry>)>,
) -> impl Iterator<Item = Result<Entry>>
where
    I: Iterator<Item = Result<Entry>>,
{
    Merge {
        db: db.peekable(),
        overlay: overlay.into_iter().peekable(),
    }
}

struct Merge<I: Iterator, O: Iterator> {
    db: std::iter::Peekable<I>,
    overlay: std::iter::Peekable<O>,
}

impl<I, O> Iterator for Merge<I, O>
where
    I: Iterator<Item = Result<Entry>>,
    O: Iterator<Item = (String, Option<Entry>)>,
{
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            let take_overlay = match (self.db.peek(), self.overlay.peek()) {
                (None, None) => return None,
                // An error is passed on where it occurs.
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.db.next(),
                (None, Some(_)) => true,
                (Some(Ok(d)), Some((k, _))) => {
                    let order = k.as_str().cmp(d.key.as_str());
                    if order == std::cmp::Ordering::Equal {
                        // The pending write supersedes the database's value.
                        self.db.next();
                    }
                    order != std::cmp::Ordering::Greater
                }
            };
            if !take_overlay {
                return self.db.next();
            }
            match self.overlay.next() {
                Some((_, Some(e))) => return Some(Ok(e)),
                // A pending delete: the key is gone.
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::redb::{RedbOptions, RedbStore};
    use super::*;
    use crate::datastore::{Datastore, ErrorKind, Key, Query};

    #[test]
    fn a_write_entered_again_after_a_transaction_applied_it_stays_pending() {
        let p = Pending::default();
        p.delete("/a");
        p.put("/b", b"b");
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let applied = {
            let mut table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("t"))
                .unwrap();
            p.lock().apply(&mut table).unwrap()
        };
        txn.commit().unwrap();
        p.put("/a", b"new");
        p.committed(&applied);
        assert!(matches!(p.get("/a"), Seen::Value(v) if &v[..] == b"new"));
        assert!(matches!(p.get("/b"), Seen::Nothing));
        assert_eq!(p.len(), 1);
        assert_eq!(p.state.lock().bytes, 3);
        let applied = Applied(vec![("/a".into(), p.state.lock().seq)]);
        p.committed(&applied);
        assert!(p.range(None, None).is_none());
        assert_eq!(p.state.lock().bytes, 0);
    }

    #[test]
    fn the_merge_puts_pending_writes_in_key_order_over_the_database() {
        let e = |k: &str, v: &str| Entry::with_value(Key::new(k), v.as_bytes().to_vec());
        let db = ["/b", "/d", "/f"].map(|k| Ok(e(k, "db")));
        let overlay = vec![
            ("/a".to_string(), Some(e("/a", "p"))),
            ("/d".to_string(), None),
            ("/e".to_string(), Some(e("/e", "p"))),
            ("/f".to_string(), Some(e("/f", "p"))),
            ("/g".to_string(), None),
        ];
        let got: Vec<(String, Vec<u8>)> = merge(db.into_iter(), overlay)
            .map(|r| {
                let e = r.unwrap();
                (e.key.as_str().to_owned(), e.value.unwrap())
            })
            .collect();
        let want: Vec<(String, Vec<u8>)> = [("/a", "p"), ("/b", "db"), ("/e", "p"), ("/f", "p")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
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
        store.sync(&Key::root()).unwrap();
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
        // A put after a delete wins, and a large one writes the other pending delete with it.
        let big = vec![7u8; VALUE_MAX + 1];
        store.put(&a, &big).unwrap();
        assert_eq!(store.write_count(), before + 1);
        assert_eq!(store.pending_writes(), 0);
        assert_eq!(store.get(&a).unwrap(), big);
        assert_eq!(keys(&store), ["/a", "/c"]);
        // A delete after a put wins too, also across the durable commit of close.
        store.delete(&Key::new("/c")).unwrap();
        store.close().unwrap();
        drop(store);
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        assert_eq!(keys(&store), ["/a"]);
        assert_eq!(store.get(&a).unwrap(), big);
    }

    /// The close of a new small file puts its value: that put waits here, read back at once,
    /// with no write transaction of its own (it was one before).
    #[test]
    fn a_put_of_a_small_value_costs_no_commit_of_its_own_and_reads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let options = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&path, options.clone()).unwrap();
        store.put(&Key::new("/old"), b"old").unwrap();
        store.put(&Key::new("/gone"), b"gone").unwrap();
        store.sync(&Key::root()).unwrap();
        let before = store.write_count();
        let (empty, small, old) = (Key::new("/empty"), Key::new("/small"), Key::new("/old"));
        store.put(&empty, b"").unwrap();
        store.put(&small, b"small").unwrap();
        store.put(&old, b"new").unwrap();
        store.delete(&Key::new("/gone")).unwrap();
        assert_eq!(store.write_count(), before, "write transactions");
        assert_eq!(store.get(&empty).unwrap(), b"");
        assert_eq!(store.get(&small).unwrap(), b"small");
        assert_eq!(store.get(&old).unwrap(), b"new");
        assert_eq!(store.get_size(&small).unwrap(), 5);
        let mut buf = [0u8; 8];
        assert_eq!(store.read_at(&small, 2, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"all");
        assert!(store.has(&empty).unwrap());
        assert_eq!(keys(&store), ["/empty", "/old", "/small"]);
        let q = Query {
            prefix: "/s".into(),
            ..Query::default()
        };
        let found: Vec<_> = store.query(q).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(found.len(), 0, "/s is no strict ancestor of /small");
        let values: Vec<(String, Vec<u8>)> = store
            .query(Query::default())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key.as_str().to_owned(), e.value.unwrap())
            })
            .collect();
        assert_eq!(
            values,
            [
                ("/empty".to_owned(), b"".to_vec()),
                ("/old".to_owned(), b"new".to_vec()),
                ("/small".to_owned(), b"small".to_vec())
            ]
        );
        // The durable commit writes them, with no other write transaction.
        store.sync(&Key::root()).unwrap();
        assert_eq!(store.pending_writes(), 0);
        assert_eq!(store.write_count(), before);
        store.close().unwrap();
        drop(store);
        let store = RedbStore::open(&path, options).unwrap();
        assert_eq!(keys(&store), ["/empty", "/old", "/small"]);
        assert_eq!(store.get(&old).unwrap(), b"new");
    }

    /// Rename and exchange read the values they move inside their transaction: a pending put
    /// of either key is what moves.
    #[test]
    fn a_rename_or_exchange_moves_the_pending_value() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(dir.path().join("v.redb"), options).unwrap();
        let (a, b, c) = (Key::new("/a"), Key::new("/b"), Key::new("/c"));
        store.put(&a, b"a0").unwrap();
        store.put(&b, b"b0").unwrap();
        store.sync(&Key::root()).unwrap();
        store.put(&a, b"a1").unwrap();
        store.rename(&a, &c).unwrap();
        assert_eq!(store.get(&c).unwrap(), b"a1");
        assert_eq!(store.get(&a).unwrap_err().kind(), ErrorKind::NotFound);
        store.put(&b, b"b1").unwrap();
        store.exchange(&b, &c).unwrap();
        assert_eq!(store.get(&b).unwrap(), b"a1");
        assert_eq!(store.get(&c).unwrap(), b"b1");
        assert_eq!(store.pending_writes(), 0);
    }

    /// The bounds: the put that reaches [`LIMIT`] keys or [`BYTES_LIMIT`] bytes commits them all.
    #[test]
    fn pending_puts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(dir.path().join("v.redb"), options).unwrap();
        let before = store.write_count();
        let value = vec![1u8; VALUE_MAX];
        let n = BYTES_LIMIT.div_ceil(VALUE_MAX);
        for i in 0..n - 1 {
            store.put(&Key::new(format!("/{i}")), &value).unwrap();
        }
        assert_eq!(store.write_count(), before);
        assert_eq!(store.pending_writes(), n - 1);
        store.put(&Key::new("/last"), &value).unwrap();
        assert_eq!(store.write_count(), before + 1);
        assert_eq!(store.pending_writes(), 0);
        for i in 0..LIMIT - 1 {
            store.put(&Key::new(format!("/e{i}")), b"").unwrap();
        }
        assert_eq!(store.write_count(), before + 1);
        store.delete(&Key::new("/last")).unwrap();
        assert_eq!(store.write_count(), before + 2);
        assert_eq!(store.pending_writes(), 0);
        assert_eq!(keys(&store).len(), n - 1 + LIMIT - 1);
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
        assert_eq!(store.pending_writes(), 1);
        let before = store.write_count();
        store.sync(&Key::root()).unwrap();
        // The durable commit wrote the delete: nothing is pending, and no other write ran.
        assert_eq!(store.pending_writes(), 0);
        assert_eq!(store.write_count(), before);
        assert_eq!(keys(&store), Vec::<String>::new());
        assert!(!store.has(&Key::new("/a")).unwrap());
    }
}
