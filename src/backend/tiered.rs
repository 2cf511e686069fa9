//! `TieredStore`: small values in redb, large values as plain files.
//!
//! Every key has one record in a redb store. A small value lives inline in that record; a value
//! of at least `threshold` bytes lives in a flatfs directory as a plain file, under a random
//! file id, and the record points to it. The record is the commit point: writing a large value
//! first writes (or renames) its file, then flips the record in one redb transaction. So every
//! put, overwrite, rename and batch is atomic, and a rename never moves file data. Large values
//! are plain files that the filesystem can hand to the kernel (passthrough), and that a staged
//! write commits with one `rename(2)`.
//!
//! Durability is ordered by a checkpoint (every second while there are changes, and on `sync`
//! and `close`): first the files are synced, then the records are committed durably, and only
//! then are the files that the committed records no longer reference deleted. A crash at any
//! moment therefore finds each record pointing at a complete file (its old or its new value),
//! and leaves at worst unreferenced files, which [`Datastore::scrub`] removes.
//!
//! Record format: one tag byte, then either the value (`0`) or the file id in ASCII (`1`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use super::redb::{RedbOptions, RedbStore};
use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, ErrorKind, Key, Query, Result, Results, StageInit,
    Staged, copy_range,
};

const INLINE: u8 = 0;
const FILE: u8 = 1;
/// The default size from which a value is stored as a file.
pub const DEFAULT_THRESHOLD: u64 = 64 << 10;
/// Key striping for per-key write serialisation.
const STRIPES: usize = 64;

/// Where a value lives.
enum Loc {
    Inline(Vec<u8>),
    File(Key),
}

fn decode(key: &Key, rec: Vec<u8>) -> Result<Loc> {
    match rec.first() {
        Some(&INLINE) => {
            let mut v = rec;
            v.remove(0);
            Ok(Loc::Inline(v))
        }
        Some(&FILE) => {
            let id = std::str::from_utf8(&rec[1..]).map_err(|_| corrupt(key))?;
            Ok(Loc::File(
                Key::from_raw(id.to_owned()).map_err(|_| corrupt(key))?,
            ))
        }
        _ => Err(corrupt(key)),
    }
}

fn corrupt(key: &Key) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("tiered: the record of {key} is malformed"),
    )
}

fn inline_record(value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(value.len() + 1);
    r.push(INLINE);
    r.extend_from_slice(value);
    r
}

fn file_record(id: &Key) -> Vec<u8> {
    let mut r = Vec::with_capacity(id.as_str().len() + 1);
    r.push(FILE);
    r.extend_from_slice(id.as_bytes());
    r
}

/// A fresh file id: 16 random bytes in base32, a valid flatfs key.
fn new_file_id() -> Key {
    let mut b = [0u8; 16];
    crate::datastore::key::fill_random(&mut b);
    Key::new(format!("/{}", crate::cid::base32_encode(&b)))
}

/// Options for [`TieredStore::open`].
#[derive(Clone, Debug)]
pub struct TieredOptions {
    /// Values at least this long are stored as files.
    pub threshold: u64,
    /// Options of the redb record store.
    pub redb: RedbOptions,
    /// fsync every file write (flatfs's `sync`).
    pub sync_files: bool,
}

impl Default for TieredOptions {
    fn default() -> TieredOptions {
        TieredOptions {
            threshold: DEFAULT_THRESHOLD,
            redb: RedbOptions::default(),
            sync_files: false,
        }
    }
}

/// See the module documentation.
pub struct TieredStore {
    inner: Arc<Inner>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    records: RedbStore,
    files: FlatFsStore,
    threshold: u64,
    stripes: Vec<Mutex<()>>,
    /// Files replaced by records that are not yet durable: deleted at the next checkpoint.
    retired: Mutex<Vec<Key>>,
    /// Serialises checkpoints.
    checkpointing: Mutex<()>,
    state: Mutex<CheckpointState>,
    wake: Condvar,
    closed: std::sync::atomic::AtomicBool,
}

struct CheckpointState {
    dirty: bool,
    stop: bool,
}

/// How often changes are made durable in the background.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Retired files that force a checkpoint before more are queued.
const MAX_RETIRED: usize = 1024;

impl TieredStore {
    /// Opens (creating if needed) a tiered store with records in `records_path` and files in
    /// the flatfs directory `files_dir`.
    pub fn open(
        records_path: &Path,
        files_dir: &Path,
        options: TieredOptions,
    ) -> Result<TieredStore> {
        let records = RedbStore::open(records_path, options.redb.clone())?;
        let files = FlatFsStore::create_or_open(
            files_dir,
            ShardFn::NextToLast(2),
            FlatFsOptions {
                sync: options.sync_files,
                ..FlatFsOptions::default()
            },
        )?;
        let inner = Arc::new(Inner {
            records,
            files,
            threshold: options.threshold.max(1),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            retired: Mutex::new(Vec::new()),
            checkpointing: Mutex::new(()),
            state: Mutex::new(CheckpointState {
                dirty: false,
                stop: false,
            }),
            wake: Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let worker = inner.clone();
        let checkpointer = std::thread::Builder::new()
            .name("dsfs-tiered-checkpoint".into())
            .spawn(move || worker.run_checkpoints())
            .map_err(|e| Error::io("starting the checkpoint thread", e))?;
        Ok(TieredStore {
            inner,
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }
}

impl Inner {
    fn run_checkpoints(&self) {
        loop {
            {
                let mut st = self.state.lock();
                while !st.dirty && !st.stop {
                    self.wake.wait(&mut st);
                }
                if st.stop {
                    return;
                }
                let deadline = std::time::Instant::now() + CHECKPOINT_INTERVAL;
                while !st.stop && !self.wake.wait_until(&mut st, deadline).timed_out() {}
                if st.stop {
                    return;
                }
                st.dirty = false;
            }
            if let Err(e) = self.checkpoint() {
                log::error!("tiered: background checkpoint failed: {e}");
                self.state.lock().dirty = true;
            }
        }
    }

    fn mark_dirty(&self) {
        let mut st = self.state.lock();
        if !st.dirty {
            st.dirty = true;
            self.wake.notify_one();
        }
    }

    /// Files, then durable records, then the deletion of files no durable record references.
    fn checkpoint(&self) -> Result<()> {
        let _one = self.checkpointing.lock();
        let retired = std::mem::take(&mut *self.retired.lock());
        let synced = self
            .files
            .sync(&Key::root())
            .and_then(|()| self.records.sync(&Key::root()));
        if let Err(e) = synced {
            self.retired.lock().extend(retired);
            return Err(e);
        }
        for id in retired {
            if let Err(e) = self.files.delete(&id) {
                log::warn!("tiered: could not remove replaced file {id}: {e} (scrub removes it)");
            }
        }
        Ok(())
    }

    fn stripe(&self, key: &Key) -> usize {
        use std::hash::Hasher;
        let mut h = fnv::FnvHasher::default();
        h.write(key.as_bytes());
        (h.finish() as usize) % STRIPES
    }

    fn lock(&self, key: &Key) -> MutexGuard<'_, ()> {
        self.stripes[self.stripe(key)].lock()
    }

    /// Locks the stripes of several keys in index order (no deadlock between callers).
    fn lock_many<'a>(&'a self, keys: impl IntoIterator<Item = &'a Key>) -> Vec<MutexGuard<'a, ()>> {
        let set: BTreeSet<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        set.into_iter().map(|i| self.stripes[i].lock()).collect()
    }

    fn loc(&self, key: &Key) -> Result<Option<Loc>> {
        match self.records.get(key) {
            Ok(rec) => Ok(Some(decode(key, rec)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn file_missing(key: &Key, e: Error) -> Error {
        if e.is_not_found() {
            Error::new(
                ErrorKind::Corrupt,
                format!("tiered: the file holding {key} is missing"),
            )
        } else {
            e
        }
    }

    /// Queues the file a record no longer points to for deletion once that record is durable.
    fn drop_file(&self, old: Option<Loc>) {
        self.mark_dirty();
        if let Some(Loc::File(id)) = old {
            let full = {
                let mut r = self.retired.lock();
                r.push(id);
                r.len() >= MAX_RETIRED
            };
            if full && let Err(e) = self.checkpoint() {
                log::error!("tiered: checkpoint failed: {e}");
            }
        }
    }

    /// A staging file in the file tier seeded with `bytes`.
    fn stage_bytes(&self, bytes: &[u8]) -> Result<Staged> {
        let staged = self.files.stage(&new_file_id(), StageInit::Empty)?;
        staged.write_all_at(0, bytes)?;
        Ok(staged)
    }
}

impl Datastore for Inner {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        match self.loc(key)? {
            Some(Loc::Inline(v)) => Ok(v),
            Some(Loc::File(id)) => self.files.get(&id).map_err(|e| Inner::file_missing(key, e)),
            None => Err(Error::not_found()),
        }
    }

    fn has(&self, key: &Key) -> Result<bool> {
        self.records.has(key)
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        match self.loc(key)? {
            Some(Loc::Inline(v)) => Ok(v.len() as u64),
            Some(Loc::File(id)) => self
                .files
                .get_size(&id)
                .map_err(|e| Inner::file_missing(key, e)),
            None => Err(Error::not_found()),
        }
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self.loc(key)? {
            Some(Loc::Inline(v)) => Ok(copy_range(&v, offset, buf)),
            Some(Loc::File(id)) => self
                .files
                .read_at(&id, offset, buf)
                .map_err(|e| Inner::file_missing(key, e)),
            None => Err(Error::not_found()),
        }
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        let _g = self.lock(key);
        let old = self.loc(key)?;
        if value.len() as u64 >= self.threshold {
            let id = new_file_id();
            self.files.put(&id, value)?;
            if let Err(e) = self.records.put(key, &file_record(&id)) {
                let _ = self.files.delete(&id);
                return Err(e);
            }
        } else {
            self.records.put(key, &inline_record(value))?;
        }
        self.drop_file(old);
        Ok(())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let _g = self.lock(key);
        let old = self.loc(key)?;
        self.records.delete(key)?;
        self.drop_file(old);
        Ok(())
    }

    fn query(&self, q: Query) -> Result<Results> {
        // The records hold tags, so the caller's filters and orders run here, on real entries.
        let inner = Query {
            prefix: q.prefix.clone(),
            ..Query::default()
        };
        let records = self.records.query(inner)?;
        let keys_only = q.keys_only;
        let files = self.files_handle();
        let entries: EntryIter = Box::new(records.map(move |r| {
            let e = r?;
            let rec = e.value.unwrap_or_default();
            Ok(match decode(&e.key, rec)? {
                Loc::Inline(v) => {
                    if keys_only {
                        Entry::key_only(e.key, Some(v.len() as u64))
                    } else {
                        Entry::with_value(e.key, v)
                    }
                }
                Loc::File(id) => {
                    let key = e.key;
                    if keys_only {
                        let size = files
                            .get_size(&id)
                            .map_err(|err| Inner::file_missing(&key, err))?;
                        Entry::key_only(key, Some(size))
                    } else {
                        let v = files
                            .get(&id)
                            .map_err(|err| Inner::file_missing(&key, err))?;
                        Entry::with_value(key, v)
                    }
                }
            })
        }));
        let it = query::naive_apply(&q, entries, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        self.checkpoint()
    }

    fn close(&self) -> Result<()> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        let c = self.checkpoint();
        let a = self.records.close();
        let b = self.files.close();
        c.and(a).and(b)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: true,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: true,
            durable_put: false,
            persistent: true,
            general_keys: true,
            file_backed: true,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: None,
        }
    }

    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        let _g = self.lock_many(ops.keys());
        let mut records: BatchOps = BTreeMap::new();
        let mut old = Vec::new();
        let mut written = Vec::new();
        let result = (|| {
            for (key, op) in &ops {
                old.push(self.loc(key)?);
                match op {
                    Some(v) if v.len() as u64 >= self.threshold => {
                        let id = new_file_id();
                        self.files.put(&id, v)?;
                        written.push(id.clone());
                        records.insert(key.clone(), Some(file_record(&id)));
                    }
                    Some(v) => {
                        records.insert(key.clone(), Some(inline_record(v)));
                    }
                    None => {
                        records.insert(key.clone(), None);
                    }
                }
            }
            self.records.apply_batch(records)
        })();
        if result.is_err() {
            for id in written {
                let _ = self.files.delete(&id);
            }
            return result;
        }
        for o in old {
            self.drop_file(o);
        }
        Ok(())
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        if from == to {
            return if self.has(from)? {
                Ok(())
            } else {
                Err(Error::not_found())
            };
        }
        let _g = self.lock_many([from, to]);
        let old_to = self.loc(to)?;
        self.records.rename(from, to)?;
        self.drop_file(old_to);
        Ok(())
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        let a = self.records.disk_usage()?.unwrap_or(0);
        let b = self.files.disk_usage()?.unwrap_or(0);
        Ok(Some(a + b))
    }

    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        match (init, self.loc(key)?) {
            (StageInit::CopyCurrent, Some(Loc::File(id))) => {
                self.files.stage(&id, StageInit::CopyCurrent)
            }
            (StageInit::CopyCurrent, Some(Loc::Inline(v))) => self.stage_bytes(&v),
            _ => self.files.stage(&new_file_id(), StageInit::Empty),
        }
    }

    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        let size = staged.len()?;
        let _g = self.lock(key);
        let old = self.loc(key)?;
        if size >= self.threshold {
            let id = new_file_id();
            self.files.commit_staged(&id, staged, durable)?;
            if let Err(e) = self.records.put(key, &file_record(&id)) {
                let _ = self.files.delete(&id);
                return Err(e);
            }
        } else {
            let value = staged.read_all()?;
            drop(staged);
            self.records.put(key, &inline_record(&value))?;
        }
        self.drop_file(old);
        if durable {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn staging_dir(&self) -> PathBuf {
        self.files.staging_dir()
    }

    fn backing_file(&self, key: &Key) -> Result<Option<PathBuf>> {
        match self.loc(key)? {
            Some(Loc::File(id)) => self.files.backing_file(&id),
            _ => Ok(None),
        }
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        // Files that no record points to: debris of a crash between a file write and its
        // record flip. With every writer held off and everything durable, "unreferenced now"
        // is also "unreferenced after any crash".
        let _all: Vec<MutexGuard<'_, ()>> = self.stripes.iter().map(|m| m.lock()).collect();
        self.checkpoint()?;
        let mut referenced = BTreeSet::new();
        for r in self.records.query(Query::default())? {
            let e = r?;
            if let Loc::File(id) = decode(&e.key, e.value.unwrap_or_default())? {
                referenced.insert(id);
            }
        }
        let mut problems = Vec::new();
        let q = Query {
            keys_only: true,
            ..Query::default()
        };
        let ids: Vec<Key> = self
            .files
            .query(q)?
            .map(|r| r.map(|e| e.key))
            .collect::<Result<_>>()?;
        for id in ids {
            if !referenced.contains(&id) {
                problems.push(format!("unreferenced file {id}"));
                if repair {
                    self.files.delete(&id)?;
                }
            }
        }
        Ok(problems)
    }
}

impl Inner {
    /// A cheap second handle on the file tier for query iterators (which must be `'static`).
    fn files_handle(&self) -> FilesHandle {
        FilesHandle {
            path: self.files.path().to_path_buf(),
            shard: self.files.shard_fn(),
        }
    }
}

impl Drop for TieredStore {
    fn drop(&mut self) {
        {
            let mut st = self.inner.state.lock();
            st.stop = true;
            self.inner.wake.notify_one();
        }
        if let Some(t) = self.checkpointer.lock().take() {
            let _ = t.join();
        }
        if let Err(e) = self.inner.close() {
            log::error!("tiered: closing failed: {e}");
        }
    }
}

impl Datastore for TieredStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> Result<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> Result<u64> {
        self.inner.get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_at(key, offset, buf)
    }
    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key)
    }
    fn query(&self, q: Query) -> Result<Results> {
        self.inner.query(q)
    }
    fn sync(&self, prefix: &Key) -> Result<()> {
        self.inner.sync(prefix)
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        self.inner.apply_batch(ops)
    }
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.inner.rename(from, to)
    }
    fn disk_usage(&self) -> Result<Option<u64>> {
        self.inner.disk_usage()
    }
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        self.inner.stage(key, init)
    }
    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        self.inner.commit_staged(key, staged, durable)
    }
    fn staging_dir(&self) -> PathBuf {
        self.inner.staging_dir()
    }
    fn backing_file(&self, key: &Key) -> Result<Option<PathBuf>> {
        self.inner.backing_file(key)
    }
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.inner.scrub(repair)
    }
}

/// Reads of the file tier by path, for query iterators that outlive `&self`.
struct FilesHandle {
    path: PathBuf,
    shard: ShardFn,
}

impl FilesHandle {
    fn file(&self, id: &Key) -> PathBuf {
        let name = &id.as_str()[1..];
        self.path
            .join(self.shard.dir_for(name))
            .join(format!("{name}.data"))
    }

    fn get(&self, id: &Key) -> Result<Vec<u8>> {
        let p = self.file(id);
        std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
    }

    fn get_size(&self, id: &Key) -> Result<u64> {
        let p = self.file(id);
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", p.display()), e))
    }
}
