//! Keeping the index in step with a store that changes without it: on open (the index is new, was
//! built for another store, or the store changed while dsfs was not running) and while serving
//! (another program writes a shared store, such as the flatfs directory of a running Kubo).
//!
//! The index records the store's identity ([`Datastore::identity`]) and, for stores with
//! segments ([`Datastore::segments`], a flatfs directory's shards), each segment's stamp as of
//! the last time the index was brought in step with that segment. A check lists the segments
//! (O(shards)) and re-reads only those whose stamp changed, so an unchanged store costs one
//! `stat` per shard directory, never one per key.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::activity::ActivityMark;
use super::reconcile::{self, Report};
use super::{Index, IndexError, IndexResult, ROOT};
use crate::datastore::{Datastore, Key, Segment};

/// `identity` -> the store identity the index was built for.
const STORE: TableDefinition<&str, &str> = TableDefinition::new("store");
/// segment name -> its stamp when the index last matched it (empty: not trusted).
const STAMPS: TableDefinition<&str, &str> = TableDefinition::new("segment_stamps");
const IDENTITY: &str = "identity";

/// How often, by default, a store that others may write is revalidated while mounted.
pub const DEFAULT_REVALIDATE: Duration = Duration::from_secs(2);
/// Index updates per transaction while following changes.
const FIX_CHUNK: usize = 10_000;

fn db_err<E: Into<redb::Error>>(context: &'static str) -> impl Fn(E) -> IndexError {
    move |e| IndexError::redb(context, e)
}

/// A move of values in progress (see [`Index::begin_move`]); dropping it ends the move.
pub type MoveMark<'a> = ActivityMark<'a>;

impl Index {
    /// Marks values about to move between keys in the store, from before the first store move
    /// until the index has recorded them (or they have moved back): while a mark is held, and
    /// for a pass whose scan overlapped one, following the store changes nothing. Taken before
    /// any index write, and held across store I/O (it blocks nothing but follow passes).
    ///
    /// Values moving from key to key in the store before the index records the move (a
    /// rename: the store first, then one index transaction) make the store and the index
    /// disagree on purpose, and a follow pass that looked then would take the move for another
    /// program's change: it would drop the old keys' nodes and list the new keys as new files,
    /// and the rename's own index transaction would then fail. So a pass that overlaps a move,
    /// even one that began and ended during its scan, changes nothing and leaves its segments
    /// to be re-read by the next pass.
    pub fn begin_move(&self) -> MoveMark<'_> {
        self.moves.begin()
    }

    /// The store identity this index was built for, if it recorded one.
    pub fn store_identity(&self) -> IndexResult<Option<String>> {
        let txn = self
            .db
            .begin_read()
            .map_err(db_err("reading the store identity"))?;
        let table = match txn.open_table(STORE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(IndexError::redb("reading the store identity", e)),
        };
        Ok(table
            .get(IDENTITY)
            .map_err(db_err("reading the store identity"))?
            .map(|v| v.value().to_owned()))
    }

    /// The recorded segment stamps.
    pub fn segment_stamps(&self) -> IndexResult<HashMap<String, String>> {
        let txn = self
            .db
            .begin_read()
            .map_err(db_err("reading segment stamps"))?;
        let table = match txn.open_table(STAMPS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(IndexError::redb("reading segment stamps", e)),
        };
        let mut out = HashMap::new();
        for item in table.iter().map_err(db_err("reading segment stamps"))? {
            let (k, v) = item.map_err(db_err("reading segment stamps"))?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    /// Records the store identity (`None` keeps the old one) and updates segment stamps: each
    /// `Some(stamp)` is set, each `None` removed; with `replace`, every other stamp is dropped.
    pub fn record_follow_state(
        &self,
        identity: Option<&str>,
        stamps: &[(String, Option<String>)],
        replace: bool,
    ) -> IndexResult<()> {
        // This commit is durable, and the stamps must not outlive the records they describe:
        // the held records are written first (see `held`).
        self.held.flush()?;
        let txn = self
            .db
            .begin_write()
            .map_err(db_err("recording segment stamps"))?;
        {
            if let Some(id) = identity {
                let mut store = txn
                    .open_table(STORE)
                    .map_err(db_err("recording the store"))?;
                store
                    .insert(IDENTITY, id)
                    .map_err(db_err("recording the store"))?;
            }
            let mut table = txn.open_table(STAMPS).map_err(db_err("recording stamps"))?;
            if replace {
                table
                    .retain(|_, _| false)
                    .map_err(db_err("recording stamps"))?;
            }
            for (name, stamp) in stamps {
                match stamp {
                    Some(s) => {
                        table
                            .insert(name.as_str(), s.as_str())
                            .map_err(db_err("recording stamps"))?;
                    }
                    None => {
                        table
                            .remove(name.as_str())
                            .map_err(db_err("recording stamps"))?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err("recording segment stamps"))?;
        self.commits.mark_dirty();
        Ok(())
    }
}

/// The stamp to record for a segment just scanned: an unsettled stamp is recorded empty, which
/// never matches, so the segment is scanned again next time.
fn recorded_stamp(s: &Segment) -> String {
    if s.settled {
        s.stamp.clone()
    } else {
        String::new()
    }
}

fn all_stamps(segments: &[Segment]) -> Vec<(String, Option<String>)> {
    segments
        .iter()
        .map(|s| (s.name.clone(), Some(recorded_stamp(s))))
        .collect()
}

/// What [`prepare`] did to bring the index in step with the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The index was already in step (or the store cannot tell).
    Unchanged,
    /// The index was built from the store: it was new, or built for another store.
    Built {
        /// Keys indexed.
        keys: u64,
        /// Why: "new" or "built for another store".
        reason: &'static str,
    },
    /// The whole index was compared with the store (after an unclean stop, or an index that
    /// recorded no store identity).
    Reconciled(Report),
    /// Segments changed while dsfs was not running were compared and repaired.
    Followed(FollowReport),
}

impl Prepared {
    /// The repair made after an unclean stop (`unclean`), if preparing was that repair.
    pub fn unclean_repair(self, unclean: bool) -> Option<Report> {
        match self {
            Prepared::Reconciled(report) if unclean => Some(report),
            Prepared::Unchanged
            | Prepared::Built { .. }
            | Prepared::Reconciled(_)
            | Prepared::Followed(_) => None,
        }
    }
}

/// What a segment check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Segments listed.
    pub segments: u64,
    /// Segments whose stamp changed (or was not trusted), scanned again.
    pub scanned: u64,
    /// Keys added to the index.
    pub added: u64,
    /// Keys removed from the index.
    pub removed: u64,
    /// Keys whose size changed.
    pub resized: u64,
    /// A rename overlapped the pass: what it found (the counts above) was not applied, and its
    /// segments are re-read next time (see [`Index::begin_move`]).
    pub deferred: bool,
}

impl FollowReport {
    /// Whether the check changed the index.
    pub fn changed(&self) -> bool {
        !self.deferred && self.added + self.removed + self.resized > 0
    }
}

/// Brings a freshly opened `index` in step with `backend` before it serves:
/// * no store identity recorded and no keys (a new index), or another store's identity:
///   [`super::build::build`];
/// * not closed cleanly: the store's `scrub`, then a full [`reconcile::check`] with repair;
/// * an identity recorded by nothing (an index of an older dsfs) with keys: a full check;
/// * otherwise, for stores with segments: a segment check ([`follow_segments`]).
///
/// Segment stamps are taken before any scan, so a change made during the scan is seen next time.
pub fn prepare(
    index: &Index,
    backend: &dyn Datastore,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<Prepared> {
    prepare_as(index, backend, false, progress)
}

/// Only the first step of [`prepare`]: builds an index that is new or was built for another
/// store, and leaves any other index as it is (for `fsck`, which reports drift instead of
/// repairing it).
pub fn build_if_needed(
    index: &Index,
    backend: &dyn Datastore,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<Prepared> {
    prepare_as(index, backend, true, progress)
}

fn prepare_as(
    index: &Index,
    backend: &dyn Datastore,
    build_only: bool,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<Prepared> {
    let identity = backend.identity()?;
    let recorded = index.store_identity()?;
    let segments = backend.segments()?;
    let stamps = segments.as_deref().map(all_stamps).unwrap_or_default();
    let other_store = matches!((&recorded, &identity), (Some(r), Some(i)) if r != i);
    // New: nothing recorded at all, not even a directory or symlink made through a mount.
    let new = recorded.is_none() && !index.has_keys()? && index.entry_count(ROOT)? == 0;
    if !other_store && !new && build_only {
        return Ok(Prepared::Unchanged);
    }
    if other_store || new {
        let reason = if other_store {
            "built for another store"
        } else {
            "new"
        };
        if other_store {
            log::warn!(
                "the index was built for another store ({}); rebuilding it from {}",
                recorded.as_deref().unwrap_or("?"),
                identity.as_deref().unwrap_or("?")
            );
        }
        let keys = super::build::build(index, backend, progress)?;
        index.record_follow_state(identity.as_deref(), &stamps, true)?;
        index.sync()?;
        if !index.was_unclean() {
            index.mark_reconciled();
        }
        return Ok(Prepared::Built { keys, reason });
    }
    if index.was_unclean() || (recorded.is_none() && identity.is_some()) {
        if index.was_unclean() {
            log::warn!("the index was not closed cleanly; reconciling it with the store");
            for problem in backend.scrub(true)? {
                log::warn!("repaired after an unclean stop: {problem}");
            }
        }
        let report = reconcile::check(index, backend, true, progress)?;
        index.record_follow_state(identity.as_deref(), &stamps, true)?;
        index.mark_reconciled();
        return Ok(Prepared::Reconciled(report));
    }
    match segments {
        Some(segments) => {
            let mut known = index.segment_stamps()?;
            let report = follow_segments(index, backend, &segments, &mut known)?;
            Ok(if report.changed() {
                Prepared::Followed(report)
            } else {
                Prepared::Unchanged
            })
        }
        None => Ok(Prepared::Unchanged),
    }
}

/// Compares `segments` (just listed) with the stamps in `known`, re-reads the segments that
/// changed, appeared or disappeared, and makes the index match them; records the new stamps in
/// `known` and in the index. The store side costs one listing per changed segment; the index
/// side one scan of its key table, only when some segment changed.
pub fn follow_segments(
    index: &Index,
    backend: &dyn Datastore,
    segments: &[Segment],
    known: &mut HashMap<String, String>,
) -> IndexResult<FollowReport> {
    let mut report = FollowReport {
        segments: segments.len() as u64,
        ..FollowReport::default()
    };
    let present: HashSet<&str> = segments.iter().map(|s| s.name.as_str()).collect();
    let changed: Vec<&Segment> = segments
        .iter()
        .filter(|s| !s.settled || known.get(&s.name) != Some(&s.stamp))
        .collect();
    let gone: Vec<String> = known
        .keys()
        .filter(|n| !present.contains(n.as_str()))
        .cloned()
        .collect();
    if changed.is_empty() && gone.is_empty() {
        return Ok(report);
    }
    let Some(since) = index.moves.quiet() else {
        // A rename is moving values: look again next time.
        report.deferred = true;
        return Ok(report);
    };
    report.scanned = changed.len() as u64;
    let mut in_store: HashMap<Key, u64> = HashMap::new();
    for s in &changed {
        in_store.extend(backend.segment_keys(&s.name)?);
    }
    let watched: HashSet<&str> = changed
        .iter()
        .map(|s| s.name.as_str())
        .chain(gone.iter().map(String::as_str))
        .collect();
    let mut fixes: Vec<(Key, Option<u64>)> = Vec::new();
    for item in index.keys(None)? {
        let ke = item?;
        let Some(seg) = backend.segment_of(&ke.key) else {
            continue;
        };
        if !watched.contains(seg.as_str()) {
            continue;
        }
        match in_store.remove(&ke.key) {
            // Not listed: gone, unless written since the listing (by this process, while
            // serving), which one probe tells.
            None => match backend.get_size(&ke.key) {
                Ok(size) if size == ke.size => {}
                Ok(size) => {
                    report.resized += 1;
                    fixes.push((ke.key, Some(size)));
                }
                // An empty file just created through the mount is in the index before its
                // (empty) value reaches the store: keep it (losing it failed creates).
                Err(e) if e.is_not_found() && ke.size == 0 => {}
                Err(e) if e.is_not_found() => {
                    report.removed += 1;
                    fixes.push((ke.key, None));
                }
                // A symlink or another foreign file where the value was: never followed, so
                // the key holds nothing readable (scrub and fsck name the file).
                Err(e) if e.kind() == crate::datastore::ErrorKind::Corrupt => {
                    log::warn!("{}: {e}; it leaves the index", ke.key);
                    report.removed += 1;
                    fixes.push((ke.key, None));
                }
                Err(e) => return Err(e.into()),
            },
            Some(size) if size != ke.size => {
                report.resized += 1;
                fixes.push((ke.key, Some(size)));
            }
            Some(_) => {}
        }
        if fixes.len() >= FIX_CHUNK {
            let Some(_quiet) = index.moves.still_quiet(since) else {
                report.deferred = true;
                return Ok(report);
            };
            apply(index, &mut fixes)?;
        }
    }
    report.added = in_store.len() as u64;
    fixes.extend(in_store.into_iter().map(|(k, s)| (k, Some(s))));
    fixes.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let Some(_quiet) = index.moves.still_quiet(since) else {
        // What was listed may be a rename's moves half done: none of it is applied, and the
        // segments' stamps stay as they were, so the next pass re-reads them.
        report.deferred = true;
        return Ok(report);
    };
    for part in fixes.chunks(FIX_CHUNK) {
        index.record_batch(part.iter().map(|(k, s)| (k, *s)))?;
    }
    let mut updates: Vec<(String, Option<String>)> = Vec::new();
    for s in &changed {
        let stamp = recorded_stamp(s);
        known.insert(s.name.clone(), stamp.clone());
        updates.push((s.name.clone(), Some(stamp)));
    }
    for name in gone {
        known.remove(&name);
        updates.push((name, None));
    }
    index.record_follow_state(None, &updates, false)?;
    if report.changed() {
        log::info!(
            "the store changed underneath: {} of {} segments re-read, {} keys added, {} removed, \
             {} resized",
            report.scanned,
            report.segments,
            report.added,
            report.removed,
            report.resized
        );
    }
    Ok(report)
}

fn apply(index: &Index, fixes: &mut Vec<(Key, Option<u64>)>) -> IndexResult<()> {
    if !fixes.is_empty() {
        index.record_batch(fixes.iter().map(|(k, s)| (k, *s)))?;
        fixes.clear();
    }
    Ok(())
}

/// Revalidation of a store that others write, while it is served: at most once per interval,
/// the segments are checked (and changed ones re-read), and each key's size is asked of the
/// store at most once per interval.
pub struct Follower {
    interval: Mutex<Duration>,
    /// When the segments were last checked.
    last: Mutex<Option<Instant>>,
    /// Held while checking segments; others do not wait for it.
    busy: Mutex<()>,
    known: Mutex<Option<HashMap<String, String>>>,
    /// Keys whose size was asked of the store in the current interval.
    checked: Mutex<HashSet<Key>>,
}

impl Follower {
    /// A follower revalidating every `interval` (zero: never).
    pub fn new(interval: Duration) -> Follower {
        Follower {
            interval: Mutex::new(interval),
            last: Mutex::new(Some(Instant::now())),
            busy: Mutex::new(()),
            known: Mutex::new(None),
            checked: Mutex::new(HashSet::new()),
        }
    }

    /// The revalidation interval (zero: never).
    pub fn interval(&self) -> Duration {
        *self.interval.lock()
    }

    /// Sets the revalidation interval (zero: never).
    pub fn set_interval(&self, interval: Duration) {
        *self.interval.lock() = interval;
    }

    /// Checks the segments if the interval has passed since the last check. A check already
    /// running on another thread is not waited for.
    pub fn segments_if_due(&self, index: &Index, backend: &dyn Datastore) -> IndexResult<()> {
        let interval = self.interval();
        if interval.is_zero() {
            return Ok(());
        }
        {
            let last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < interval) {
                return Ok(());
            }
        }
        let Some(_busy) = self.busy.try_lock() else {
            return Ok(());
        };
        *self.last.lock() = Some(Instant::now());
        self.checked.lock().clear();
        let Some(segments) = backend.segments()? else {
            return Ok(());
        };
        let mut known = match self.known.lock().take() {
            Some(k) => k,
            None => index.segment_stamps()?,
        };
        let result = follow_segments(index, backend, &segments, &mut known);
        *self.known.lock() = Some(known);
        result.map(|_| ())
    }

    /// Whether `key`'s size should be asked of the store now (once per interval per key);
    /// marks it asked.
    pub fn key_due(&self, key: &Key) -> bool {
        !self.interval().is_zero() && self.checked.lock().insert(key.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::backend::FlatFsStore;
    use crate::backend::flatfs::{FlatFsOptions, ShardFn};
    use crate::index::IndexOptions;

    /// Makes every shard directory's time an hour old, so its stamp is settled.
    fn settle(root: &std::path::Path) {
        let past = SystemTime::now() - Duration::from_secs(3600);
        for ent in std::fs::read_dir(root).unwrap() {
            let ent = ent.unwrap();
            let name = ent.file_name().to_string_lossy().into_owned();
            if ent.file_type().unwrap().is_dir() && !name.starts_with('.') {
                std::fs::File::open(ent.path())
                    .unwrap()
                    .set_modified(past)
                    .unwrap();
            }
        }
    }

    fn store(root: &std::path::Path) -> Arc<FlatFsStore> {
        Arc::new(
            FlatFsStore::create_or_open(root, ShardFn::IPFS_DEFAULT, FlatFsOptions::default())
                .unwrap(),
        )
    }

    #[test]
    fn the_open_check_rereads_only_the_shards_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blocks");
        let store = store(&root);
        for i in 0..200u32 {
            let key = Key::new(format!("/K{i:04}X"));
            store.put(&key, &i.to_le_bytes()).unwrap();
        }
        settle(&root);
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        let built = prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        assert_eq!(
            built,
            Prepared::Built {
                keys: 200,
                reason: "new"
            }
        );
        let shards = store.segments().unwrap().unwrap();
        assert!(shards.len() > 10);
        // Nothing changed: no shard is read again.
        let mut known = index.segment_stamps().unwrap();
        let same = follow_segments(&index, store.as_ref(), &shards, &mut known).unwrap();
        assert_eq!(same.scanned, 0);
        assert_eq!(
            prepare(&index, store.as_ref(), &mut |_| {}).unwrap(),
            Prepared::Unchanged
        );
        // Another program adds a block to one shard.
        let shard = store.segment_of(&Key::new("/K0007X")).unwrap();
        std::fs::write(root.join(&shard).join("NEW07X.data"), b"by hand").unwrap();
        let found = prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        let Prepared::Followed(report) = found else {
            panic!("expected a segment check, got {found:?}");
        };
        assert_eq!(report.scanned, 1);
        assert_eq!(report.segments, shards.len() as u64);
        assert_eq!((report.added, report.removed, report.resized), (1, 0, 0));
        assert_eq!(index.value_size(&Key::new("/NEW07X")).unwrap(), Some(7));
        assert_eq!(index.key_count().unwrap(), 201);
    }

    /// A rename through the mount moves the value in the store, then records it in the index.
    /// A follow pass in between must not take the half-done move for another program's: before,
    /// it dropped the old key's node and listed the new key as a new file, and the rename's own
    /// index transaction then failed.
    #[test]
    fn a_pass_during_a_rename_changes_nothing_and_the_next_one_sees_it_done() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blocks");
        let store = store(&root);
        for i in 0..50u32 {
            store
                .put(&Key::new(format!("/K{i:04}X")), b"value")
                .unwrap();
        }
        settle(&root);
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        let (old, new) = (Key::new("/K0003X"), Key::new("/MOVED3X"));
        let mark = index.begin_move();
        store.rename(&old, &new).unwrap();
        let shards = store.segments().unwrap().unwrap();
        let mut known = index.segment_stamps().unwrap();
        let during = follow_segments(&index, store.as_ref(), &shards, &mut known).unwrap();
        assert!(during.deferred, "{during:?}");
        assert_eq!(
            index.value_size(&old).unwrap(),
            Some(5),
            "the old name was dropped"
        );
        assert_eq!(
            index.value_size(&new).unwrap(),
            None,
            "the new key was listed"
        );
        // The rename records its move and ends.
        index.record_batch([(&old, None), (&new, Some(5))]).unwrap();
        drop(mark);
        let after = follow_segments(&index, store.as_ref(), &shards, &mut known).unwrap();
        assert!(!after.deferred);
        assert!(after.scanned > 0, "the deferred segments were not re-read");
        assert_eq!((after.added, after.removed, after.resized), (0, 0, 0));
        assert_eq!(index.key_count().unwrap(), 50);
    }

    /// A move that begins and ends while a pass scans still keeps the pass from writing.
    #[test]
    fn a_move_begun_and_ended_during_a_pass_is_seen() {
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        let since = index.moves.quiet().unwrap();
        assert!(index.moves.still_quiet(since).is_some());
        drop(index.begin_move());
        assert!(index.moves.still_quiet(since).is_none());
        let held = index.begin_move();
        assert!(index.moves.quiet().is_none());
        drop(held);
        assert!(index.moves.quiet().is_some());
    }

    #[test]
    fn a_shard_removed_underneath_takes_its_keys_out_of_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blocks");
        let store = store(&root);
        for i in 0..50u32 {
            store.put(&Key::new(format!("/K{i:04}X")), b"v").unwrap();
        }
        settle(&root);
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        let key = Key::new("/K0003X");
        let shard = store.segment_of(&key).unwrap();
        let lost = store.segment_keys(&shard).unwrap().len() as u64;
        std::fs::remove_dir_all(root.join(&shard)).unwrap();
        let Prepared::Followed(report) = prepare(&index, store.as_ref(), &mut |_| {}).unwrap()
        else {
            panic!("expected a segment check");
        };
        assert_eq!(report.removed, lost);
        assert_eq!(index.value_size(&key).unwrap(), None);
        assert_eq!(index.key_count().unwrap(), 50 - lost);
    }

    #[test]
    fn a_just_created_empty_file_missing_from_its_changed_shard_stays_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blocks");
        let store = store(&root);
        for i in 0..50u32 {
            store.put(&Key::new(format!("/K{i:04}X")), b"v").unwrap();
        }
        settle(&root);
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        // A create through the mount: the name and its empty value are in the index, the
        // (empty) value is not in the store yet.
        let key = Key::new("/EMPTY07X");
        index
            .write(|tx| {
                let node = crate::index::Node::new(
                    crate::index::NodeKind::File,
                    ROOT,
                    "EMPTY07X",
                    0o644,
                    0,
                    0,
                );
                let id = tx.create(ROOT, "EMPTY07X", node)?;
                tx.set_key(&key, id, 0)
            })
            .unwrap();
        // Meanwhile its shard changed (another create landed there), so revalidation reads it.
        let shard = store.segment_of(&key).unwrap();
        assert_eq!(store.segment_of(&Key::new("/NEW07X")).unwrap(), shard);
        std::fs::create_dir_all(root.join(&shard)).unwrap();
        std::fs::write(root.join(&shard).join("NEW07X.data"), b"x").unwrap();
        let found = prepare(&index, store.as_ref(), &mut |_| {}).unwrap();
        let Prepared::Followed(report) = found else {
            panic!("expected a segment check, got {found:?}");
        };
        assert_eq!((report.added, report.removed), (1, 0), "{report:?}");
        assert_eq!(index.value_size(&key).unwrap(), Some(0));
        assert!(index.lookup(ROOT, "EMPTY07X").unwrap().is_some());
    }

    #[test]
    fn an_index_holding_only_directories_is_not_rebuilt_on_open() {
        let backend = crate::backend::MemStore::new();
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        prepare(&index, &backend, &mut |_| {}).unwrap();
        index
            .write(|tx| {
                let node =
                    crate::index::Node::new(crate::index::NodeKind::Dir, ROOT, "made", 0o755, 0, 0);
                tx.create(ROOT, "made", node)
            })
            .unwrap();
        assert_eq!(
            prepare(&index, &backend, &mut |_| {}).unwrap(),
            Prepared::Unchanged
        );
        assert!(index.lookup(ROOT, "made").unwrap().is_some());
    }

    #[test]
    fn an_index_built_for_another_store_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(&dir.path().join("a"));
        let b = store(&dir.path().join("b"));
        a.put(&Key::new("/INA"), b"a").unwrap();
        b.put(&Key::new("/INB"), b"b").unwrap();
        let index = Index::in_memory(IndexOptions::default()).unwrap();
        prepare(&index, a.as_ref(), &mut |_| {}).unwrap();
        let again = prepare(&index, b.as_ref(), &mut |_| {}).unwrap();
        assert_eq!(
            again,
            Prepared::Built {
                keys: 1,
                reason: "built for another store"
            }
        );
        assert_eq!(index.value_size(&Key::new("/INA")).unwrap(), None);
        assert_eq!(index.value_size(&Key::new("/INB")).unwrap(), Some(1));
    }
}
