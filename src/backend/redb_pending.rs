//! Puts and deletes of a [`super::redb::RedbStore`] that are visible at once but written later.
//!
//! A redb commit of one row costs ~14 us even without fsync, and on the default repository
//! every new file's close, and every unlink, used to pay one in the records store on top of
//! the index's (a profile of 100,000 empty-file creates put the records put at 14% of the
//! daemon's samples). A put or a delete now only enters `key -> value | deleted` here and
//! returns: every read of the store consults this set first, and the entries are written, in
//! one transaction, by whichever comes first of
//! * the next write transaction the store runs anyway (a batch, a rename, an exchange, a
//!   salvage, a query: see below), which applies them before its own changes;
//! * the next durable commit (the group committer's, `sync` or `close` of a plain store; the
//!   tiered store's checkpoint), which applies them inside its own transaction;
//! * the bound: a put or delete that would take the set past [`MAX_ENTRIES`] entries or
//!   [`MAX_BYTES`] bytes of keys and values is not entered but written in a transaction that
//!   applies the whole set with it, before it returns; if that transaction fails, the put
//!   fails and changes nothing (the set stays as it was, still pending).
//!
//! The bound: 4,096 entries cuts the records commits of empty-file creates 4,096-fold, past
//! which they no longer show in a profile, and keeps an apply short. 256 KiB of bytes, because
//! the blocks for pending values are allocated only when they are applied (before, each
//! close's own commit allocated them, and on a full disk spent the reserve and so made the
//! filesystem refuse further new data): the set grows without the disk's free space showing
//! it. A repository's reserve is 8 MiB, or 1/32 of a small filesystem (1.7 MiB on the 64 MiB
//! filesystem of `tests/full_disk.rs`), and new data is accepted only while at least half of
//! it is free beside it, so an apply has at least 1.5 times the reserve; 256 KiB of values,
//! even at twice that in half-filled redb pages, fits in the half-reserve alone for any
//! reserve from 1 MiB (filesystems from 32 MiB). A first attempt at held puts (reverted in
//! 7400144) held up to 1 MiB and lost the full-disk test on CI (its later durable commit met
//! the full disk past the reserve, after which redb refuses every commit); a larger set would
//! save little more: 256 KiB is still 128 files of 2 KiB per commit, and the 4,096-entry bound
//! binds first for empty files with keys under 64 bytes.
//!
//! And puts are held only while the filesystem has room to spare ([`crate::space::Headroom`]:
//! 256 MiB beyond twice the reserves on it, measured at most every 10 ms); nearer a full disk
//! each put is committed before it returns, exactly as before held puts, so the reasoning above
//! about the reserve is a second line of defence, not the first. Deletes are always held.
//!
//! Queries apply the set first when it is not empty (one write transaction) and then scan the
//! database alone: a scan thus reads one redb snapshot, so a batch stays all-or-nothing to it,
//! which merging a copy of the set taken before the read transaction would not guarantee (a
//! batch committed between the two would show half: its puts from the database, and a key it
//! removed from the stale copy). Queries are rare on the filesystem's path (the index answers
//! listings; the store is scanned by `fsck`, reindexing and the CLI), so the transaction costs
//! nothing that matters. A query that cannot apply the set fails with that error.
//!
//! Durability is what it was: a change became durable at the store's next durable commit and
//! still does, because every durable commit applies the set inside its own transaction. With
//! `durable_puts` nothing is ever entered here: every put and delete is its own durable
//! transaction, as before.
//!
//! Crash: redb keeps the pages of non-durable commits in its own memory until the next durable
//! commit, so a `kill -9` or power loss already lost every change since the last durable
//! commit; holding those changes in this set instead loses exactly the same ones. A durable
//! commit, and with it the promises of `fsync`, `sync` and the unmount, still covers every
//! change acknowledged before it started.
//!
//! The tiered store's ordering (`tiered.rs`): its records become durable only at its
//! checkpoint, which syncs the files and then, with every writer of a file and its record held
//! at the `gate`, commits the records durably; the set is applied inside that commit, so a
//! pending record pointing at a file is made durable only after its file was synced (a record
//! enters the set while its writer holds the gate, after the file was written). The files that
//! records replaced are deleted only after that commit succeeded: a replaced file is queued
//! after its replacing record entered the set, and the checkpoint takes the queue before its
//! commit snapshots the set, so the commit includes the replacing record (or a later one). A
//! bound-triggered or other non-durable apply makes nothing durable.
//!
//! Full disk: a failed apply (of a durable commit or any write transaction) aborts its
//! transaction and leaves every entry pending: reads still see them, the next apply retries,
//! and `sync`/`fsync`/`close` report the error until one succeeds. An acknowledged put is
//! therefore lost only where a non-durable redb commit was lost before: when the store's last
//! durable commit (at the unmount) fails, which `dsfs umount` reports.
//!
//! Ordering: a writer takes its snapshot of the set inside its write transaction and, after the
//! commit, removes from the set only the entries it applied that were not entered again
//! meanwhile (each entry carries a sequence number). A reader checks the set before it opens its
//! read transaction, so an entry that has left the set is in the database for that reader too,
//! and a reader never sees a value older than a put or delete that returned before it began.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::datastore::Result;
use crate::group_commit::redb_error;

/// The most entries held before a put or delete writes them all (see the module
/// documentation).
pub(super) const MAX_ENTRIES: usize = 4096;
/// The most bytes of keys and values held before a put or delete writes them all.
pub(super) const MAX_BYTES: usize = 256 << 10;

/// What the set says about a key.
pub(super) enum Lookup {
    /// Nothing pending: the database answers.
    NotPending,
    /// Deleted.
    Deleted,
    /// This value was put.
    Value(Arc<[u8]>),
}

/// Changes made but not yet written to the database, each with the sequence number of its
/// latest put or delete.
#[derive(Default)]
pub(super) struct Pending {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Slot>,
    /// Bytes of the keys and values in `entries`.
    bytes: usize,
    seq: u64,
}

#[derive(Clone)]
struct Slot {
    seq: u64,
    /// The value put, or `None` for a delete.
    value: Option<Arc<[u8]>>,
}

fn cost(key: &str, value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len)
}

/// The changes one write transaction applies (see [`Pending::snapshot`]).
pub(super) struct Applied(Vec<(String, Slot)>);

impl Pending {
    /// Enters a put (`Some(value)`) or delete (`None`) of `key`, unless that would take the set
    /// past its bound: then returns `false` and enters nothing (the caller writes the change
    /// in a transaction, which applies the set with it).
    pub(super) fn enter(&self, key: &str, value: Option<&[u8]>) -> bool {
        let mut st = self.state.lock();
        let old = st.entries.get(key).map(|s| cost(key, s.value.as_deref()));
        let entries = st.entries.len() + usize::from(old.is_none());
        let bytes = st.bytes - old.unwrap_or(0) + cost(key, value);
        if entries > MAX_ENTRIES || bytes > MAX_BYTES {
            return false;
        }
        st.seq += 1;
        let seq = st.seq;
        st.bytes = bytes;
        st.entries.insert(
            key.to_owned(),
            Slot {
                seq,
                value: value.map(Arc::from),
            },
        );
        true
    }

    /// How many entries are pending.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.state.lock().entries.is_empty()
    }

    /// What the set holds for `key`.
    pub(super) fn get(&self, key: &str) -> Lookup {
        match self.state.lock().entries.get(key) {
            None => Lookup::NotPending,
            Some(Slot { value: None, .. }) => Lookup::Deleted,
            Some(Slot { value: Some(v), .. }) => Lookup::Value(v.clone()),
        }
    }

    /// The pending changes, for a write transaction to apply. Call inside the transaction.
    pub(super) fn snapshot(&self) -> Applied {
        let st = self.state.lock();
        Applied(
            st.entries
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        )
    }

    /// The transaction that applied `applied` committed: those changes are in the database.
    /// A key written again since the snapshot stays pending with its later change.
    pub(super) fn committed(&self, applied: &Applied) {
        if applied.0.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for (k, applied) in &applied.0 {
            if st.entries.get(k).is_some_and(|s| s.seq == applied.seq)
                && let Some(s) = st.entries.remove(k)
            {
                st.bytes -= cost(k, s.value.as_deref());
            }
        }
    }
}

impl Applied {
    /// Writes the changes into `table` (in the caller's write transaction), in key order; each
    /// key holds only its latest change.
    pub(super) fn apply(&self, table: &mut redb::Table<&str, &[u8]>) -> Result<()> {
        for (k, slot) in &self.0 {
            match &slot.value {
                Some(v) => {
                    table
                        .insert(k.as_str(), &**v)
                        .map_err(|e| redb_error("writing", e))?;
                }
                None => {
                    table
                        .remove(k.as_str())
                        .map_err(|e| redb_error("deleting", e))?;
                }
            }
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
    fn a_change_entered_again_after_the_snapshot_stays_pending() {
        let p = Pending::default();
        assert!(p.enter("/a", Some(b"1")));
        assert!(p.enter("/b", None));
        let snap = p.snapshot();
        assert!(p.enter("/a", Some(b"2")));
        p.committed(&snap);
        assert!(matches!(p.get("/a"), Lookup::Value(v) if &*v == b"2"));
        assert!(matches!(p.get("/b"), Lookup::NotPending));
        assert_eq!(p.len(), 1);
        let snap = p.snapshot();
        p.committed(&snap);
        assert!(p.is_empty());
        assert_eq!(p.state.lock().bytes, 0);
    }

    #[test]
    fn the_bound_counts_entries_and_bytes() {
        let p = Pending::default();
        for i in 0..MAX_ENTRIES {
            assert!(p.enter(&format!("/{i}"), None), "entry {i}");
        }
        assert!(!p.enter("/one-more", None));
        // A key already pending replaces its entry: no growth.
        assert!(p.enter("/0", Some(b"x")));
        let p = Pending::default();
        let half = vec![0u8; MAX_BYTES / 2];
        assert!(p.enter("/a", Some(&half)));
        assert!(!p.enter("/b", Some(&half)), "past the byte bound");
        // Replacing /a's value frees its bytes first.
        assert!(p.enter("/a", Some(&half)));
        assert!(p.enter("/a", None));
        assert!(p.enter("/b", Some(&half)));
        assert_eq!(p.len(), 2);
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

    fn open(path: &std::path::Path) -> RedbStore {
        let options = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        RedbStore::open(path, options).unwrap()
    }

    /// Near a full disk a put is committed at once, so that a lack of space meets its writer
    /// rather than a later commit of something already acknowledged (the first version of held
    /// puts, reverted in 7400144, held them whatever the room, and CI's full-disk test lost
    /// acknowledged files); deletes are still held. With the room back, puts are held again.
    #[test]
    fn near_a_full_disk_puts_are_committed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("values.redb"));
        store.headroom.require(u64::MAX);
        let (a, b) = (Key::new("/a"), Key::new("/b"));
        store.put(&a, b"a").unwrap();
        assert_eq!((store.write_count(), store.pending()), (1, 0));
        store.put(&b, b"b").unwrap();
        assert_eq!((store.write_count(), store.pending()), (2, 0));
        store.delete(&a).unwrap();
        assert_eq!((store.write_count(), store.pending()), (2, 1));
        assert!(!store.has(&a).unwrap());
        // A failed commit of a put fails the put: nothing acknowledged waits for space.
        store.fail_writes(true);
        assert_eq!(
            store.put(&a, b"again").unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        store.fail_writes(false);
        assert!(!store.has(&a).unwrap());
        store.headroom.require(0);
        store.put(&a, b"a2").unwrap();
        assert_eq!(store.write_count(), 2, "the room is back: the put is held");
        assert_eq!(store.get(&a).unwrap(), b"a2");
    }

    /// Every put used to be a write transaction of its own (the count was 6 here, not 0).
    #[test]
    fn puts_and_deletes_cost_no_commit_and_read_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("values.redb"));
        let (a, b, c) = (Key::new("/a"), Key::new("/b"), Key::new("/c"));
        store.put(&a, b"a1").unwrap();
        store.put(&a, b"a2").unwrap(); // put over put
        store.put(&b, b"b").unwrap();
        store.delete(&b).unwrap(); // put then delete
        store.delete(&c).unwrap();
        store.put(&c, b"c").unwrap(); // delete then put
        assert_eq!(store.write_count(), 0);
        assert_eq!(store.pending(), 3);
        assert_eq!(store.get(&a).unwrap(), b"a2");
        assert!(store.has(&a).unwrap());
        assert_eq!(store.get_size(&a).unwrap(), 2);
        let mut buf = [0u8; 4];
        assert_eq!(store.read_at(&a, 1, &mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"2");
        assert_eq!(store.get(&b).unwrap_err().kind(), ErrorKind::NotFound);
        assert!(!store.has(&b).unwrap());
        assert_eq!(store.get_size(&b).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            store.read_at(&b, 0, &mut buf).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(store.get(&c).unwrap(), b"c");
        // A query writes the set first (one transaction) and then scans the database.
        assert_eq!(keys(&store), ["/a", "/c"]);
        assert_eq!(store.write_count(), 1);
        assert_eq!(store.pending(), 0);
        assert_eq!(store.get(&a).unwrap(), b"a2");
        // A query with nothing pending writes nothing.
        assert_eq!(keys(&store), ["/a", "/c"]);
        assert_eq!(store.write_count(), 1);
        // A rename sees a pending put of its source.
        store.put(&b, b"b2").unwrap();
        store.rename(&b, &Key::new("/d")).unwrap();
        assert_eq!(store.pending(), 0);
        assert_eq!(store.get(&Key::new("/d")).unwrap(), b"b2");
        assert!(!store.has(&b).unwrap());
    }

    /// The put that would take the set past its bound writes the whole set and itself in one
    /// transaction.
    #[test]
    fn the_bound_writes_the_set_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let store = open(&path);
        for i in 0..MAX_ENTRIES {
            store.put(&Key::new(format!("/k{i}")), b"v").unwrap();
        }
        assert_eq!(store.write_count(), 0);
        assert_eq!(store.pending(), MAX_ENTRIES);
        store.put(&Key::new("/last"), b"v").unwrap();
        assert_eq!(store.write_count(), 1);
        assert_eq!(store.pending(), 0);
        // And by bytes: 16 KiB values, sixteen of which pass 256 KiB with their keys.
        let big = vec![7u8; 16 << 10];
        for i in 0..15 {
            store.put(&Key::new(format!("/big{i}")), &big).unwrap();
        }
        assert_eq!((store.write_count(), store.pending()), (1, 15));
        store.put(&Key::new("/big15"), &big).unwrap();
        assert_eq!((store.write_count(), store.pending()), (2, 0));
        store.close().unwrap();
        drop(store);
        let store = open(&path);
        assert_eq!(keys(&store).len(), MAX_ENTRIES + 1 + 16);
        assert_eq!(store.get(&Key::new("/big15")).unwrap(), big);
    }

    /// `sync`'s durable commit writes the set in its own transaction; `close` too.
    #[test]
    fn sync_and_close_write_pending_changes_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let store = open(&path);
        store.put(&Key::new("/a"), b"a").unwrap();
        store.put(&Key::new("/b"), b"b").unwrap();
        store.sync(&Key::root()).unwrap();
        // The durable commit wrote them: nothing is pending, and no other write ran.
        assert_eq!((store.pending(), store.write_count()), (0, 0));
        store.delete(&Key::new("/a")).unwrap();
        store.put(&Key::new("/c"), b"c").unwrap();
        store.close().unwrap();
        assert_eq!((store.pending(), store.write_count()), (0, 0));
        drop(store);
        let store = open(&path);
        assert_eq!(keys(&store), ["/b", "/c"]);
        assert_eq!(store.get(&Key::new("/c")).unwrap(), b"c");
    }

    /// A put that found the store open and then lost the race with `close` was acknowledged
    /// but entered the pending set after close's final durable commit, where nothing would
    /// write it. `close` now waits for a change under way, so the put is written by it (or,
    /// had close come first, fails as closed). The put stops between its open check and its
    /// entry until `close` has run or has been waited for; on the old code `close` finished
    /// meanwhile and the put stayed pending after it.
    #[test]
    fn a_put_racing_close_is_written_by_it_or_refused() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir.path().join("values.redb")));
        let (in_window, put_waits) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = parking_lot::Mutex::new(released);
        let in_window = parking_lot::Mutex::new(in_window);
        store.on_enter(move || {
            let _ = in_window.lock().send(());
            let _ = released.lock().recv();
        });
        let putter = {
            let store = store.clone();
            std::thread::spawn(move || store.put(&Key::new("/late"), b"v"))
        };
        put_waits.recv().unwrap();
        let (closed_tx, closed_rx) = mpsc::channel();
        let closer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let r = store.close();
                let _ = closed_tx.send(());
                r
            })
        };
        // The old code's close needs nothing from the put and finishes; the new one waits for
        // it. Either way the put goes on after this.
        let _ = closed_rx.recv_timeout(std::time::Duration::from_millis(300));
        release.send(()).unwrap();
        let put = putter.join().unwrap();
        closer.join().unwrap().unwrap();
        match put {
            Ok(()) => assert_eq!(
                store.pending(),
                0,
                "an acknowledged put is still pending after close"
            ),
            Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Closed, "{e}"),
        }
    }

    /// The group committer's durable commit writes them too.
    #[test]
    fn the_group_committer_writes_pending_changes() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            commit_interval: Some(std::time::Duration::from_millis(1)),
            ..RedbOptions::default()
        };
        let store = RedbStore::open(dir.path().join("values.redb"), options).unwrap();
        store.put(&Key::new("/a"), b"a").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.pending() > 0 {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::yield_now();
        }
        assert_eq!(store.write_count(), 0);
        assert_eq!(store.get(&Key::new("/a")).unwrap(), b"a");
    }

    /// A failed apply (a full disk) must keep every acknowledged change: readable, and written
    /// by the next apply that succeeds. Fails if a failed transaction drops its snapshot from
    /// the set (checked by calling `committed` before the commit).
    #[test]
    fn a_failed_apply_keeps_the_changes_readable_and_a_later_sync_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.redb");
        let store = open(&path);
        store.put(&Key::new("/a"), b"a").unwrap();
        store.delete(&Key::new("/a")).unwrap();
        store.put(&Key::new("/b"), b"b").unwrap();
        store.fail_writes(true);
        let err = store.sync(&Key::root()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        assert!(store.query(Query::default()).is_err());
        assert_eq!(
            store
                .apply_batch([(Key::new("/x"), Some(b"x".to_vec()))].into())
                .unwrap_err()
                .kind(),
            ErrorKind::NoSpace
        );
        assert_eq!(store.pending(), 2);
        assert_eq!(store.get(&Key::new("/b")).unwrap(), b"b");
        assert!(!store.has(&Key::new("/a")).unwrap());
        assert!(!store.has(&Key::new("/x")).unwrap());
        // A put that finds the set full and cannot write it fails and changes nothing.
        let big = vec![1u8; MAX_BYTES];
        assert!(store.put(&Key::new("/big"), &big).is_err());
        assert!(!store.has(&Key::new("/big")).unwrap());
        assert_eq!(store.pending(), 2);
        // Still failing at the next sync; then the disk has room again.
        assert!(store.sync(&Key::root()).is_err());
        store.fail_writes(false);
        store.sync(&Key::root()).unwrap();
        assert_eq!(store.pending(), 0);
        store.close().unwrap();
        drop(store);
        let store = open(&path);
        assert_eq!(keys(&store), ["/b"]);
    }

    /// With `durable_puts` every put and delete is still its own durable transaction.
    #[test]
    fn durable_puts_commit_every_change_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            durable_puts: true,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(dir.path().join("values.redb"), options).unwrap();
        let durable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let d = durable.clone();
        store.on_durable_commit(move || {
            d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        store.put(&Key::new("/a"), b"a").unwrap();
        store.delete(&Key::new("/b")).unwrap();
        assert_eq!(store.pending(), 0);
        assert_eq!(store.write_count(), 2);
        assert_eq!(durable.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
