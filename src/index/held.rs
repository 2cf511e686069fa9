//! Index records written by committed [`super::Index::write`] calls but not yet in redb.
//!
//! A redb write commit costs ~14 us for one row even without fsync, ~7.6 us per row at 16 rows
//! and ~5.5 us at 64, and every namespace operation used to pay one (20% of the daemon's CPU
//! for empty-file creates). So a write transaction now runs against the committed table with
//! this set and its own changes over it, and its commit is a merge of its changes into the set:
//! it cannot fail. The set is written to redb, in key order, in one write transaction (a
//! *flush*) by whichever comes first of
//! * the next durable commit: the group committer's (its timer, `sync`, `fsync`), which flushes
//!   just before its own `Immediate` commit, `close`, which applies the set inside its own
//!   transaction, and the follow state's commit, which flushes first; durability is thus
//!   exactly what it was (a change is durable after the first durable commit that began after
//!   it);
//! * the bound: a write that would take the set past [`MAX_ENTRIES`] entries or [`MAX_BYTES`]
//!   bytes of keys and values writes the set and its own changes in one transaction instead;
//!   if that fails the write fails and changes nothing (the set stays pending)
//!   (`cargo bench --bench index -- create_unlink`: 12.0 us per create and unlink at 256
//!   entries, 11.0-12.7 at 1,024, 10.1 at 4,096, against 78 us before held writes; 1,024 is
//!   kept, since a flush holds the readers' lock while it commits, and 256 KiB as in
//!   `backend::redb_pending`, for the same full-disk reasons);
//! * a write made while the disk is short of room ([`crate::space::Headroom`]): it is committed
//!   at once with the set, exactly as the bound does, so that a full disk meets its writer.
//!
//! Readers take the set's read lock, then begin their redb read transaction, and hold the lock
//! while they read; a flush holds the write lock from before its redb commit until it has
//! cleared the set, so no reader sees records that left the set but are not yet in its
//! snapshot. A failed flush aborts its transaction and leaves the set as it was: still read,
//! retried by the next flush, and reported by `sync`/`fsync`/`close` until one succeeds.
//!
//! Crash: redb keeps the pages of `Durability::None` commits only until the next durable
//! commit, so a `kill -9` already lost every index change since the last durable commit;
//! holding them here loses exactly the same ones.
//!
//! Lock order: the index's `write_serial`, then this set's lock, then redb's write lock. A write
//! holds `write_serial`, reads under the set's read lock and takes the write lock to merge; a
//! flush takes only the set's write lock and then begins its redb write transaction; nothing
//! takes `write_serial` while holding the set's lock. Readers never wait behind a queued writer (a recursive lock), so a reader
//! called from inside a write's closure (which holds the read lock) never waits for a flush
//! queued behind that write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RawRwLockRecursive;
use parking_lot::lock_api;

/// A read-write lock whose readers never wait behind a queued writer, so a reader inside a
/// write's closure may read again (see the lock order above).
pub(super) type RwLock<T> = lock_api::RwLock<RawRwLockRecursive, T>;
/// Its read guard.
pub(super) type ReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawRwLockRecursive, T>;
type WriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawRwLockRecursive, T>;
use redb::{Database, Durability};

use super::layout::{self, INDEX, Overlay};
use super::{IndexError, IndexResult};

/// The most entries held; a write that would pass it flushes (see the module documentation).
pub(super) const MAX_ENTRIES: usize = 1024;
/// The most bytes of keys and values held.
pub(super) const MAX_BYTES: usize = 256 << 10;

/// The held records and their size.
#[derive(Default)]
pub(super) struct Set {
    pub(super) map: Overlay,
    bytes: usize,
}

fn cost(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len)
}

impl Set {
    /// Whether merging `changes` keeps the set within its bound.
    fn fits(&self, changes: &Overlay) -> bool {
        let mut entries = self.map.len();
        let mut bytes = self.bytes;
        for (k, v) in changes {
            match self.map.get(k) {
                Some(old) => bytes = bytes - cost(k, old) + cost(k, v),
                None => {
                    entries += 1;
                    bytes += cost(k, v);
                }
            }
        }
        entries <= MAX_ENTRIES && bytes <= MAX_BYTES
    }

    fn merge(&mut self, changes: Overlay) {
        for (k, v) in changes {
            let add = cost(&k, &v);
            if let Some(old) = self.map.insert(k.clone(), v) {
                self.bytes -= cost(&k, &old);
            }
            self.bytes += add;
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// A redb write transaction committed without fsync (made durable by the next durable commit);
/// `what` names the work in its errors.
pub(super) fn begin_unsynced(db: &Database, what: &str) -> IndexResult<redb::WriteTransaction> {
    let mut txn = db.begin_write().map_err(|e| IndexError::redb(what, e))?;
    txn.set_durability(Durability::None)
        .map_err(|e| IndexError::redb(what, e))?;
    Ok(txn)
}

/// The held set of one index, and its flush.
pub(super) struct Held {
    db: Arc<Database>,
    pub(super) set: RwLock<Set>,
    /// redb write transactions committed by flushes and unheld writes.
    commits: AtomicU64,
    /// Tests: every flush fails before its commit, as on a full disk.
    #[cfg(test)]
    pub(super) fail: std::sync::atomic::AtomicBool,
}

impl Held {
    pub(super) fn new(db: Arc<Database>) -> Held {
        Held {
            db,
            set: RwLock::new(Set::default()),
            commits: AtomicU64::new(0),
            #[cfg(test)]
            fail: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How many entries are held.
    pub(super) fn len(&self) -> usize {
        self.set.read().map.len()
    }

    /// How many redb write transactions flushes and unheld writes have committed.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The commit of a write transaction's `changes`: merged into the set if `hold` and the set
    /// stays within its bound, else written with the whole set in one redb transaction (which,
    /// if it fails, changes nothing).
    pub(super) fn commit(&self, changes: Overlay, hold: bool) -> IndexResult<()> {
        let mut set = self.set.write();
        if changes.is_empty() {
            return Ok(());
        }
        if hold && set.fits(&changes) {
            set.merge(changes);
            return Ok(());
        }
        self.write_out(&mut set, Some(&changes))
    }

    /// Writes the set to redb (a non-durable commit) and empties it.
    pub(super) fn flush(&self) -> IndexResult<()> {
        let mut set = self.set.write();
        if set.map.is_empty() {
            return Ok(());
        }
        self.write_out(&mut set, None)
    }

    /// One redb write transaction applying the set, then `extra`; the set is emptied if it
    /// commits and left as it was if not.
    fn write_out(&self, set: &mut WriteGuard<'_, Set>, extra: Option<&Overlay>) -> IndexResult<()> {
        let what = "writing held index records";
        let txn = begin_unsynced(&self.db, what)?;
        {
            let mut table = txn
                .open_table(INDEX)
                .map_err(|e| IndexError::redb(what, e))?;
            layout::apply(&mut table, &set.map).map_err(|e| IndexError::redb(what, e))?;
            if let Some(extra) = extra {
                layout::apply(&mut table, extra).map_err(|e| IndexError::redb(what, e))?;
            }
        }
        self.injected_failure()?;
        txn.commit().map_err(|e| IndexError::redb(what, e))?;
        set.clear();
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies the set inside the caller's write transaction (the close's); the caller calls
    /// [`Set::clear`] through [`Held::applied`] once it committed.
    pub(super) fn apply_in(
        &self,
        set: &Set,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    ) -> IndexResult<()> {
        layout::apply(table, &set.map)
            .map_err(|e| IndexError::redb("writing held index records", e))?;
        self.injected_failure()
    }

    /// The caller's transaction that applied `set` committed.
    pub(super) fn applied(&self, set: &mut Set) {
        if !set.map.is_empty() {
            set.clear();
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn injected_failure(&self) -> IndexResult<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(IndexError::new(
                super::IndexErrorKind::NoSpace,
                "index: injected write failure",
            ));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn injected_failure(&self) -> IndexResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Index, IndexErrorKind, IndexOptions, Key, ROOT};
    use super::MAX_ENTRIES;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn k(s: &str) -> Key {
        Key::new(s)
    }

    /// An index on disk whose group committer's timer does not fire during a test.
    fn on_disk(path: &std::path::Path) -> Index {
        let options = IndexOptions {
            commit_interval: Duration::from_secs(3600),
            ..IndexOptions::default()
        };
        let ix = Index::open(path, options).unwrap();
        // Hold whatever the room on the test machine's disk (tests below ask for the opposite).
        ix.headroom.as_ref().unwrap().require(1);
        ix
    }

    fn names(ix: &Index, dir: u64, after: u64, limit: usize) -> Vec<(String, u64)> {
        ix.list(dir, after, limit)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.cookie))
            .collect()
    }

    /// Every reader sees held records and does not see held removals. Fails if readers read
    /// the table alone (`Reading::view` without `held`), or if a held removal does not hide
    /// the table's record (`MergeOver` yielding it).
    #[test]
    fn readers_see_held_records_and_not_held_removals() {
        let dir = tempfile::tempdir().unwrap();
        let ix = on_disk(&dir.path().join("index.redb"));
        for name in ["/d/a", "/d/b", "/d/c", "/e"] {
            ix.record_put(&k(name), 1).unwrap();
        }
        ix.sync().unwrap();
        assert_eq!(ix.held_count(), 0);
        let flushed = ix.redb_write_count();
        // Held from here: two new keys, one removed, one resized, an alias and an xattr.
        ix.record_put(&k("/d/d"), 4).unwrap();
        ix.record_put(&k("/f/g"), 5).unwrap();
        ix.record_delete(&k("/d/b")).unwrap();
        ix.record_put(&k("/d/c"), 9).unwrap();
        let (a, _) = ix.resolve(&k("/d/a")).unwrap().unwrap();
        let (d, _) = ix.resolve(&k("/d")).unwrap().unwrap();
        ix.write(|tx| tx.add_alias(a, ROOT, "alias")).unwrap();
        ix.write(|tx| tx.set_xattr(a, "user.x", Some(b"v")))
            .unwrap();
        assert_eq!(
            ix.redb_write_count(),
            flushed,
            "nothing was written to redb"
        );
        assert!(ix.held_count() > 0);

        assert!(ix.lookup(d, "b").unwrap().is_none());
        assert!(ix.resolve(&k("/d/b")).unwrap().is_none());
        assert_eq!(ix.lookup(d, "d").unwrap().unwrap().1.size(), 4);
        assert_eq!(ix.resolve(&k("/f/g")).unwrap().unwrap().1.size(), 5);
        assert_eq!(ix.value_size(&k("/d/c")).unwrap(), Some(9));
        assert_eq!(ix.value_size(&k("/d/b")).unwrap(), None);
        assert_eq!(ix.xattr(a, "user.x").unwrap(), Some(b"v".to_vec()));
        assert_eq!(ix.xattr_names(a).unwrap(), ["user.x"]);
        assert_eq!(ix.aliases(a).unwrap(), [(ROOT, "alias".to_owned())]);
        assert_eq!(ix.entry_count(d).unwrap(), 3);
        // A listing in pages, resumed after each page's last cookie.
        let first = names(&ix, d, 0, 2);
        let rest = names(&ix, d, first[1].1, 10);
        let all: Vec<String> = first.iter().chain(&rest).map(|(n, _)| n.clone()).collect();
        assert_eq!(all, ["a", "c", "d"]);
        let keys = |prefix: Option<&Key>| -> Vec<String> {
            ix.keys(prefix)
                .unwrap()
                .map(|e| e.unwrap().key.as_str().to_owned())
                .collect()
        };
        assert_eq!(keys(Some(&k("/d"))), ["/d/a", "/d/c", "/d/d"]);
        assert_eq!(keys(None), ["/d/a", "/d/c", "/d/d", "/e", "/f/g"]);
        assert_eq!(ix.key_count().unwrap(), 5);
        // A write sees them too: the removed name can be created again, the held one not.
        ix.record_put(&k("/d/b"), 2).unwrap();
        assert_eq!(ix.value_size(&k("/d/b")).unwrap(), Some(2));
        assert_eq!(ix.key_count().unwrap(), 6);
        assert_eq!(ix.redb_write_count(), flushed);
        // And after the flush, the same answers from redb.
        ix.sync().unwrap();
        assert_eq!(ix.held_count(), 0);
        assert_eq!(keys(None), ["/d/a", "/d/b", "/d/c", "/d/d", "/e", "/f/g"]);
        assert_eq!(ix.aliases(a).unwrap(), [(ROOT, "alias".to_owned())]);
    }

    /// The write that would take the set past its bound writes the set and itself in one
    /// transaction. Fails if writes are not held (a transaction per write) or if the bound
    /// writes in more than one.
    #[test]
    fn a_flush_at_the_bound_writes_one_transaction() {
        let ix = Index::in_memory(IndexOptions {
            commit_interval: Duration::from_secs(3600),
            ..IndexOptions::default()
        })
        .unwrap();
        let before = ix.redb_write_count();
        let mut n = 0;
        while ix.redb_write_count() == before {
            ix.record_put(&k(&format!("/d/f{n}")), 1).unwrap();
            n += 1;
            assert!(n <= MAX_ENTRIES, "never written");
        }
        assert_eq!(ix.redb_write_count(), before + 1);
        assert_eq!(ix.held_count(), 0);
        // A file is four records (node, entry, cookie, key) and its directory's node.
        assert!(n >= MAX_ENTRIES / 5, "written after {n} writes");
        assert_eq!(ix.key_count().unwrap(), n as u64);
        assert_eq!(
            ix.entry_count(ix.resolve(&k("/d")).unwrap().unwrap().0)
                .unwrap(),
            n as u64
        );
    }

    /// `sync` and `close` leave nothing held, and a reopened index has every record. Fails if
    /// the group committer's commit does not flush first (`sync` leaves records held).
    /// `clear` (for `reindex`) goes straight to redb with the held records, in one
    /// transaction: through `Index::write` it held a removal per record in memory, and for an
    /// index under the bound left them all held. Fails if `clear` runs as a write (records
    /// held after it).
    #[test]
    fn clear_writes_straight_to_redb_and_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let ix = on_disk(&path);
        for name in ["/d/a", "/d/b", "/e"] {
            ix.record_put(&k(name), 1).unwrap();
        }
        ix.sync().unwrap();
        ix.record_put(&k("/held"), 2).unwrap();
        assert!(ix.held_count() > 0);
        let before = ix.redb_write_count();
        ix.clear().unwrap();
        assert_eq!(ix.held_count(), 0, "clear left records held");
        assert_eq!(ix.redb_write_count(), before + 1);
        assert_eq!(ix.key_count().unwrap(), 0);
        assert!(ix.list(ROOT, 0, 100).unwrap().is_empty());
        assert!(ix.resolve(&k("/held")).unwrap().is_none());
        ix.record_put(&k("/after"), 3).unwrap();
        ix.close().unwrap();
        drop(ix);
        let ix = on_disk(&path);
        let names: Vec<String> = ix
            .list(ROOT, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["after"]);
        assert_eq!(ix.key_count().unwrap(), 1);
    }

    #[test]
    fn sync_and_close_leave_nothing_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let ix = on_disk(&path);
        ix.record_put(&k("/a"), 1).unwrap();
        ix.record_put(&k("/b/c"), 2).unwrap();
        assert!(ix.held_count() > 0);
        ix.sync().unwrap();
        assert_eq!(ix.held_count(), 0);
        ix.record_delete(&k("/a")).unwrap();
        ix.record_put(&k("/b/d"), 3).unwrap();
        assert!(ix.held_count() > 0);
        ix.close().unwrap();
        assert_eq!(ix.held_count(), 0);
        drop(ix);
        let ix = on_disk(&path);
        assert!(!ix.was_unclean());
        let keys: Vec<(String, u64)> = ix
            .keys(None)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key.as_str().to_owned(), e.size)
            })
            .collect();
        assert_eq!(keys, [("/b/c".to_owned(), 2), ("/b/d".to_owned(), 3)]);
        assert!(ix.resolve(&k("/a")).unwrap().is_none());
    }

    /// A failed flush (a full disk) keeps every held record readable, and `sync` fails until a
    /// flush succeeds. Fails if a failed flush empties the set (as clearing it before the
    /// commit would).
    #[test]
    fn a_failed_flush_keeps_records_readable_and_sync_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let ix = on_disk(&path);
        ix.record_put(&k("/a"), 1).unwrap();
        ix.record_put(&k("/b"), 2).unwrap();
        ix.record_delete(&k("/a")).unwrap();
        let held = ix.held_count();
        ix.held.fail.store(true, Ordering::SeqCst);
        assert_eq!(ix.sync().unwrap_err().kind(), IndexErrorKind::NoSpace);
        assert_eq!(ix.held_count(), held);
        assert_eq!(ix.value_size(&k("/b")).unwrap(), Some(2));
        assert!(ix.resolve(&k("/a")).unwrap().is_none());
        // A write that cannot be held (near a full disk) fails and changes nothing.
        ix.headroom.as_ref().unwrap().require(u64::MAX);
        let err = ix.record_put(&k("/c"), 3).unwrap_err();
        assert_eq!(err.kind(), IndexErrorKind::NoSpace);
        assert!(ix.resolve(&k("/c")).unwrap().is_none());
        assert_eq!(ix.held_count(), held);
        assert!(ix.sync().is_err(), "still failing");
        ix.held.fail.store(false, Ordering::SeqCst);
        ix.sync().unwrap();
        assert_eq!(ix.held_count(), 0);
        ix.close().unwrap();
        drop(ix);
        let ix = on_disk(&path);
        assert_eq!(ix.value_size(&k("/b")).unwrap(), Some(2));
        assert!(ix.resolve(&k("/a")).unwrap().is_none());
        assert!(ix.resolve(&k("/c")).unwrap().is_none());
    }

    /// Near a full disk every write is committed at once, with whatever was held, so that a
    /// lack of space meets its writer. Fails if writes are held whatever the room.
    #[test]
    fn near_a_full_disk_writes_commit_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ix = on_disk(&dir.path().join("index.redb"));
        ix.record_put(&k("/a"), 1).unwrap();
        assert!(ix.held_count() > 0);
        let before = ix.redb_write_count();
        ix.headroom.as_ref().unwrap().require(u64::MAX);
        ix.record_put(&k("/b"), 2).unwrap();
        assert_eq!((ix.redb_write_count(), ix.held_count()), (before + 1, 0));
        ix.record_delete(&k("/a")).unwrap();
        assert_eq!((ix.redb_write_count(), ix.held_count()), (before + 2, 0));
        ix.headroom.as_ref().unwrap().require(1);
        ix.record_put(&k("/c"), 3).unwrap();
        assert_eq!(
            ix.redb_write_count(),
            before + 2,
            "the room is back: held again"
        );
        assert!(ix.held_count() > 0);
    }
}
