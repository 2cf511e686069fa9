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
//! and leaves at worst unreferenced files, which [`Datastore::scrub`] removes. The checkpoint is
//! the only durable commit of the records (their store runs no group committer of its own), and
//! no write of a file and its record runs while it syncs the files for the last time and
//! commits the records (the `gate`): a durable commit never includes a record whose file is not
//! synced yet, which a power loss would leave pointing at a missing or empty file. The records
//! store holds puts and deletes in memory until its next write transaction or durable commit
//! (`src/backend/redb_pending.rs`); the checkpoint's durable commit applies them inside its own
//! transaction, with the gate held and after the file sync, so the order holds for them too.
//!
//! Record format: one tag byte, then
//! * `0`: the value itself;
//! * `1`: the file id in ASCII (records written before sizes and hashes were kept);
//! * `2`: the value's size (u64, little endian), its sha2-256 (32 bytes), the file id (records
//!   written before the hash was BLAKE3);
//! * `3`: the value's size, the file id (a staged value written out of order: no hash);
//! * `4`: the value's size, its BLAKE3 hash ([`crate::datastore::digest`], 32 bytes), the file
//!   id: what a value written now gets.
//!
//! The size lets [`Datastore::scrub`] find a truncated or missing file with one `stat`, and
//! the hash lets [`Datastore::verify`] find an altered one (by the record's own algorithm).
//! The hash is computed while the value is written (from the bytes of a `put`, or as a staged
//! file is written in order), never by reading a file back on the write path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use super::redb::{RedbOptions, RedbStore};
use crate::datastore::digest::{ContentHasher, content_digest};
use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, ErrorKind, Key, Query, Result, Results, StageInit,
    Staged, copy_range,
};

const INLINE: u8 = 0;
const FILE: u8 = 1;
const FILE_HASHED: u8 = 2;
const FILE_SIZED: u8 = 3;
const FILE_BLAKE3: u8 = 4;
/// The default size from which a value is stored as a file.
pub const DEFAULT_THRESHOLD: u64 = 64 << 10;
/// Key striping for per-key write serialisation.
const STRIPES: usize = 64;

/// Where a value lives.
#[derive(PartialEq, Eq)]
enum Loc {
    Inline(Vec<u8>),
    File(FileRef),
}

/// A record's pointer to the file holding a value.
#[derive(Clone, PartialEq, Eq)]
struct FileRef {
    id: Key,
    /// The value's size when it was written (absent in old records).
    size: Option<u64>,
    /// The value's hash when it was written (absent in old records and for values written
    /// out of order).
    hash: Option<Hash>,
}

/// A value's hash as a record holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hash {
    /// In records written before the hash was BLAKE3 (tag 2).
    Sha256([u8; 32]),
    /// [`crate::datastore::digest`] (tag 4).
    Blake3([u8; 32]),
}

fn decode(key: &Key, rec: Vec<u8>) -> Result<Loc> {
    let file = |rest: &[u8], size: Option<u64>, hash: Option<Hash>| -> Result<Loc> {
        let id = std::str::from_utf8(rest).map_err(|_| corrupt(key))?;
        Ok(Loc::File(FileRef {
            id: Key::from_raw(id.to_owned()).map_err(|_| corrupt(key))?,
            size,
            hash,
        }))
    };
    let u64_at = |b: &[u8]| -> Result<u64> {
        let a: [u8; 8] = b
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| corrupt(key))?;
        Ok(u64::from_le_bytes(a))
    };
    match rec.first() {
        Some(&INLINE) => {
            let mut v = rec;
            v.remove(0);
            Ok(Loc::Inline(v))
        }
        Some(&FILE) => file(&rec[1..], None, None),
        Some(&tag @ (FILE_HASHED | FILE_BLAKE3)) => {
            let size = u64_at(&rec[1..])?;
            let hash: [u8; 32] = rec
                .get(9..41)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt(key))?;
            let hash = if tag == FILE_HASHED {
                Hash::Sha256(hash)
            } else {
                Hash::Blake3(hash)
            };
            file(&rec[41..], Some(size), Some(hash))
        }
        Some(&FILE_SIZED) => {
            let size = u64_at(&rec[1..])?;
            file(rec.get(9..).ok_or_else(|| corrupt(key))?, Some(size), None)
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

/// The record of a file-backed value; `hash` is its [`crate::datastore::digest`].
fn file_record(id: &Key, size: u64, hash: Option<[u8; 32]>) -> Vec<u8> {
    let mut r = Vec::with_capacity(id.as_str().len() + 41);
    match hash {
        Some(h) => {
            r.push(FILE_BLAKE3);
            r.extend_from_slice(&size.to_le_bytes());
            r.extend_from_slice(&h);
        }
        None => {
            r.push(FILE_SIZED);
            r.extend_from_slice(&size.to_le_bytes());
        }
    }
    r.extend_from_slice(id.as_bytes());
    r
}

/// A record naming a file without its size or hash (the form old records have).
fn file_record_unsized(id: &Key) -> Vec<u8> {
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
            redb: RedbOptions {
                cache_size: records_cache_size(crate::sys::physical_memory()),
                ..RedbOptions::default()
            },
            sync_files: false,
        }
    }
}

/// The page cache of the record store, whose records hold every value below the threshold
/// inline: a sixty-fourth of the machine's memory, from 64 MiB to 512 MiB (384 MiB on a
/// 24 GiB machine). redb takes it only as pages are read. A record that misses it is read
/// from the file again, and a delete reads the record it removes (to retire its file, if it
/// names one), so with the 64 MiB every other store has, removing 10,000 files of 4 KiB
/// (134 MB of records) read 4.4 KB from the file for each.
pub fn records_cache_size(memory: Option<u64>) -> usize {
    const MIN: u64 = 64 << 20;
    const MAX: u64 = 512 << 20;
    let size = memory.map_or(MIN, |m| (m / 64).clamp(MIN, MAX));
    usize::try_from(size).unwrap_or(MIN as usize)
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
    /// Held shared by every write of a file together with its record, from the file's write to
    /// the record's, and exclusively by a checkpoint while it makes the files and then the
    /// records durable (see the module documentation). Taken after a key's stripe lock.
    gate: RwLock<()>,
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
        // Records become durable only at a checkpoint, after the files they point to: a group
        // committer of their own would commit them before their files are synced. With
        // `durable_puts` every record is durable at once, so every file must be as well.
        let redb = RedbOptions {
            commit_interval: None,
            ..options.redb.clone()
        };
        let sync_files = options.sync_files || redb.durable_puts;
        let (records, _salvaged) = RedbStore::open_salvaging(records_path, redb)?;
        let files = FlatFsStore::create_or_open(
            files_dir,
            ShardFn::NextToLast(2),
            FlatFsOptions {
                sync: sync_files,
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
            gate: RwLock::new(()),
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

impl TieredStore {
    /// How many write transactions the records store has committed since it was opened (its
    /// puts and deletes wait for the next one or the checkpoint): for tests and profiling.
    pub fn records_write_count(&self) -> u64 {
        self.inner.records.write_count()
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
                if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                    // `close` made its own checkpoint before closing the stores this one
                    // found closed: nothing was left for this one to do.
                    log::debug!("tiered: background checkpoint after close: {e}");
                    return;
                }
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
    /// Most files are synced before writers are held back; then, with writers held at the
    /// `gate`, the files written meanwhile and the records. Must not be called with the gate
    /// held.
    fn checkpoint(&self) -> Result<()> {
        let _one = self.checkpointing.lock();
        self.files.sync(&Key::root())?;
        let (retired, synced) = {
            let _writers_wait = self.gate.write();
            let retired = std::mem::take(&mut *self.retired.lock());
            let synced = self
                .files
                .sync(&Key::root())
                .and_then(|()| self.records.sync(&Key::root()));
            (retired, synced)
        };
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

    fn wrong_size(key: &Key, recorded: u64, found: u64) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!("tiered: the file holding {key} has {found} bytes but {recorded} were written"),
        )
    }

    /// Queues the file a record no longer points to for deletion once that record is durable.
    fn drop_file(&self, old: Option<Loc>) {
        self.mark_dirty();
        if let Some(Loc::File(FileRef { id, .. })) = old {
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

    /// Whether `staged` is an overlay over the file `id` (staged from it, and not replaced
    /// since), which the file tier can commit in place.
    fn overlays(&self, staged: &Staged, id: &Key) -> Result<bool> {
        let Some(plan) = staged.overlay_plan()? else {
            return Ok(false);
        };
        match self.files.open_backing(id)? {
            Some(file) => Ok(crate::datastore::stage::file_id(&file)? == plan.base_id),
            None => Ok(false),
        }
    }

    /// Commits an overlay of `key`'s file `f` back into the same file (flatfs writes just the
    /// dirty ranges, in place, behind its journal), keeping the record. A size or hash in the
    /// record that the new bytes would contradict is first replaced, durably, by a record
    /// without them, so a crash at any point leaves a record that matches the file.
    fn commit_over(
        &self,
        key: &Key,
        f: &FileRef,
        staged: Staged,
        size: u64,
        durable: bool,
    ) -> Result<()> {
        let stale = f.size.is_some_and(|s| s != size) || f.hash.is_some();
        if stale {
            self.records.put(key, &file_record_unsized(&f.id))?;
            // Files first: a durable commit of the records alone would also make records of
            // other keys durable whose files are not synced yet.
            self.checkpoint()?;
        }
        {
            let _writing = self.gate.read();
            self.files.commit_staged(&f.id, staged, durable)?;
            if stale {
                self.records.put(key, &file_record(&f.id, size, None))?;
            }
        }
        self.mark_dirty();
        if durable {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// A staging file in the file tier seeded with `bytes`.
    fn stage_bytes(&self, bytes: &[u8]) -> Result<Staged> {
        let staged = self
            .files
            .stage(&new_file_id(), StageInit::Empty)?
            .hashing()?;
        staged.write_all_at(0, bytes)?;
        Ok(staged)
    }
}

impl Inner {
    /// Reads `key`'s value with `inline` or, in the file tier, with `file`. A reader that
    /// resolved a file just before an overwrite and a checkpoint deleted it finds the file
    /// gone: it looks the record up again and reads where the value lives now. Only a record
    /// that still names a missing file is corrupt.
    fn read_value<T>(
        &self,
        key: &Key,
        inline: impl Fn(&[u8]) -> T,
        file: impl Fn(&FileRef) -> Result<T>,
    ) -> Result<T> {
        let mut loc = self.loc(key)?;
        loop {
            let f = match loc {
                None => return Err(Error::not_found()),
                Some(Loc::Inline(v)) => return Ok(inline(&v)),
                Some(Loc::File(f)) => f,
            };
            match file(&f) {
                Err(e) if e.is_not_found() => {
                    let now = self.loc(key)?;
                    if now.as_ref() == Some(&Loc::File(f)) {
                        return Err(Inner::file_missing(key, e));
                    }
                    loc = now;
                }
                other => return other,
            }
        }
    }
}

impl Datastore for Inner {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.read_value(
            key,
            |v| v.to_vec(),
            |f| {
                let v = self.files.get(&f.id)?;
                match f.size {
                    Some(size) if size != v.len() as u64 => {
                        Err(Inner::wrong_size(key, size, v.len() as u64))
                    }
                    _ => Ok(v),
                }
            },
        )
    }

    fn has(&self, key: &Key) -> Result<bool> {
        self.records.has(key)
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        self.read_value(
            key,
            |v| v.len() as u64,
            |f| match f.size {
                Some(size) => Ok(size),
                None => self.files.get_size(&f.id),
            },
        )
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = buf.len();
        // The buffer is filled by whichever attempt succeeds; a failed one wrote nothing.
        let buf = std::cell::RefCell::new(buf);
        self.read_value(
            key,
            |v| copy_range(v, offset, &mut buf.borrow_mut()),
            |f| {
                let n = self.files.read_at(&f.id, offset, &mut buf.borrow_mut())?;
                // A short read before the recorded end: the file was truncated behind our back.
                if let Some(size) = f.size
                    && n < len
                    && offset.saturating_add(n as u64) < size
                {
                    let found = self.files.get_size(&f.id).unwrap_or(0);
                    return Err(Inner::wrong_size(key, size, found));
                }
                Ok(n)
            },
        )
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        let _g = self.lock(key);
        let old = self.loc(key)?;
        if value.len() as u64 >= self.threshold {
            let id = new_file_id();
            let _writing = self.gate.read();
            self.files.put(&id, value)?;
            let record = file_record(&id, value.len() as u64, Some(content_digest(value)));
            if let Err(e) = self.records.put(key, &record) {
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
        let entries: EntryIter = Box::new(records.filter_map(move |r| {
            let entry = (|| -> Result<Entry> {
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
                    Loc::File(f) => {
                        let key = e.key;
                        if keys_only {
                            let size = match f.size {
                                Some(size) => size,
                                None => files
                                    .get_size(&f.id)
                                    .map_err(|err| Inner::file_missing(&key, err))?,
                            };
                            Entry::key_only(key, Some(size))
                        } else {
                            let v = files
                                .get(&f.id)
                                .map_err(|err| Inner::file_missing(&key, err))?;
                            if let Some(size) = f.size
                                && size != v.len() as u64
                            {
                                return Err(Inner::wrong_size(&key, size, v.len() as u64));
                            }
                            Entry::with_value(key, v)
                        }
                    }
                })
            })();
            match entry {
                // A symlink or other foreign file where a value's file belongs: listed as
                // absent (scrub names it), never read.
                Err(e) if e.kind() == ErrorKind::Corrupt && e.to_string().contains(FOREIGN) => {
                    log::warn!("tiered: skipping a value: {e}");
                    None
                }
                other => Some(other),
            }
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
        // Files closed (and synced) first, with writers held off: the records' final durable
        // commit must not include a record whose file is not synced.
        let _writers_wait = self.gate.write();
        let b = self.files.close();
        let a = self.records.close();
        c.and(b).and(a)
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
        let writing = self.gate.read();
        let result = (|| {
            for (key, op) in &ops {
                old.push(self.loc(key)?);
                match op {
                    Some(v) if v.len() as u64 >= self.threshold => {
                        let id = new_file_id();
                        self.files.put(&id, v)?;
                        written.push(id.clone());
                        let record = file_record(&id, v.len() as u64, Some(content_digest(v)));
                        records.insert(key.clone(), Some(record));
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
        drop(writing);
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

    /// Swaps the two records in one redb transaction: the values (inline bytes or file ids)
    /// change places, no file is copied or renamed.
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        if a == b {
            return if self.has(a)? {
                Ok(())
            } else {
                Err(Error::not_found())
            };
        }
        let _g = self.lock_many([a, b]);
        self.records.exchange(a, b)?;
        self.mark_dirty();
        Ok(())
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        let a = self.records.disk_usage()?.unwrap_or(0);
        let b = self.files.disk_usage()?.unwrap_or(0);
        Ok(Some(a + b))
    }

    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        // A new value does not depend on the current one: no record read for it.
        let current = match init {
            StageInit::CopyCurrent => self.loc(key)?,
            StageInit::Empty => None,
        };
        match (init, current) {
            (StageInit::CopyCurrent, Some(Loc::File(f))) => {
                self.files.stage(&f.id, StageInit::CopyCurrent)
            }
            (StageInit::CopyCurrent, Some(Loc::Inline(v))) => self.stage_bytes(&v),
            // The record keeps the hash of a value written in order (for `verify`).
            _ => self
                .files
                .stage(&new_file_id(), StageInit::Empty)?
                .hashing(),
        }
    }

    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        let size = staged.len()?;
        let _g = self.lock(key);
        let old = self.loc(key)?;
        if size >= self.threshold
            && let Some(Loc::File(f)) = &old
            && self.overlays(&staged, &f.id)?
        {
            return self.commit_over(key, f, staged, size, durable);
        }
        if size >= self.threshold {
            let id = new_file_id();
            let hash = staged.content_hash(size);
            let _writing = self.gate.read();
            self.files.commit_staged(&id, staged, durable)?;
            if let Err(e) = self.records.put(key, &file_record(&id, size, hash)) {
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
            Some(Loc::File(f)) => self.files.backing_file(&f.id),
            _ => Ok(None),
        }
    }

    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        match self.loc(key)? {
            Some(Loc::File(f)) => self.files.open_backing(&f.id),
            _ => Ok(None),
        }
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.check(repair, false)
    }

    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        self.check(repair, true)
    }
}

impl Inner {
    /// The store's own check: every file a record points to exists and has the recorded size
    /// (with `verify`, also the recorded hash); no file is left that no record points to.
    /// With `repair`, a record whose file is missing or damaged is removed (its key becomes
    /// missing; a damaged file is kept in `lost+found/` beside the files) and unreferenced files
    /// (debris of a crash between a file write and its record flip) are deleted.
    fn check(&self, repair: bool, verify: bool) -> Result<Vec<String>> {
        // With every writer held off and everything durable, "unreferenced now" is also
        // "unreferenced after any crash".
        let _all: Vec<MutexGuard<'_, ()>> = self.stripes.iter().map(|m| m.lock()).collect();
        self.checkpoint()?;
        let mut problems = Vec::new();
        let mut referenced = BTreeSet::new();
        let mut lost: Vec<(Key, Option<Key>)> = Vec::new();
        let files = self.files_handle();
        for r in self.records.query(Query::default())? {
            let e = match r {
                Ok(e) => e,
                Err(err) => {
                    problems.push(format!("a record cannot be read: {err}"));
                    continue;
                }
            };
            let f = match decode(&e.key, e.value.unwrap_or_default()) {
                Ok(Loc::File(f)) => f,
                Ok(Loc::Inline(_)) => continue,
                Err(err) => {
                    problems.push(format!("lost value {}: {err}", e.key));
                    lost.push((e.key, None));
                    continue;
                }
            };
            referenced.insert(f.id.clone());
            let damage = match files.get_size(&f.id) {
                Err(err) if err.is_not_found() => Some("the file holding it is missing".to_owned()),
                Err(err) => Some(format!("its file cannot be read: {err}")),
                Ok(found) => match f.size {
                    Some(size) if size != found => Some(format!(
                        "its file has {found} bytes but {size} were written"
                    )),
                    _ if verify => match (f.hash, files.hash(&f.id, f.hash)) {
                        (Some(want), Ok(got)) if want != got => Some(
                            "its file does not match the hash recorded when it was written"
                                .to_owned(),
                        ),
                        (_, Err(err)) => Some(format!("its file cannot be read: {err}")),
                        _ => None,
                    },
                    _ => None,
                },
            };
            if let Some(d) = damage {
                let note = if repair { " (the key is removed)" } else { "" };
                problems.push(format!("lost value {}: {d}{note}", e.key));
                lost.push((e.key, Some(f.id)));
            }
        }
        if repair {
            for (key, id) in &lost {
                self.records.delete(key)?;
                if let Some(id) = id {
                    referenced.remove(id);
                    files.keep_aside(id);
                }
            }
            self.checkpoint()?;
        }
        // Symlinks and other file types among the files: never followed, reported.
        problems.extend(self.files.scrub(false)?);
        let q = Query {
            keys_only: true,
            ..Query::default()
        };
        let ids: Vec<Key> = self
            .files
            .query(q)?
            .filter_map(|r| match r {
                Ok(e) => Some(e.key),
                Err(err) => {
                    problems.push(format!("the file directory cannot be listed: {err}"));
                    None
                }
            })
            .collect();
        // After records were salvaged from a damaged file, an unreferenced file may be the
        // only copy of a lost value: it is kept in lost+found rather than deleted.
        let salvaged = self.records_were_salvaged();
        for id in ids {
            if !referenced.contains(&id) {
                if salvaged {
                    let note = if repair { " (kept in lost+found)" } else { "" };
                    problems.push(format!(
                        "unreferenced file {id}, perhaps of a record lost with the damaged records file{note}"
                    ));
                    if repair {
                        files.keep_aside(&id);
                    }
                } else {
                    problems.push(format!("unreferenced file {id}"));
                    if repair {
                        self.files.delete(&id)?;
                    }
                }
            }
        }
        Ok(problems)
    }

    /// Whether a damaged records file was ever moved aside here (`records.redb.corrupt-*`).
    fn records_were_salvaged(&self) -> bool {
        let path = self.records.path();
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let prefix = format!("{}.corrupt-", name.to_string_lossy());
        std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        })
        .unwrap_or(false)
    }

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
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        self.inner.exchange(a, b)
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
    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        self.inner.open_backing(key)
    }
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.inner.scrub(repair)
    }
    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        self.inner.verify(repair)
    }
}

/// How a symlink or other file type where a value's file belongs is described.
const FOREIGN: &str = "is a symlink or not a regular file; dsfs does not follow it";

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

    fn open(&self, id: &Key) -> Result<std::fs::File> {
        let p = self.file(id);
        crate::sys::open_regular_nofollow(&p).map_err(|e| {
            if crate::sys::is_foreign_file(&e) {
                Error::new(ErrorKind::Corrupt, format!("{} {FOREIGN}", p.display()))
            } else {
                Error::io(format!("opening {}", p.display()), e)
            }
        })
    }

    fn get(&self, id: &Key) -> Result<Vec<u8>> {
        let mut value = Vec::new();
        std::io::Read::read_to_end(&mut self.open(id)?, &mut value)
            .map_err(|e| Error::io(format!("reading {}", self.file(id).display()), e))?;
        Ok(value)
    }

    fn get_size(&self, id: &Key) -> Result<u64> {
        self.open(id)?
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", self.file(id).display()), e))
    }

    /// The hash of a file, read in 1 MiB pieces, by the algorithm of `like` (BLAKE3 when
    /// there is none to compare with: the file is read all the same).
    fn hash(&self, id: &Key, like: Option<Hash>) -> Result<Hash> {
        use std::io::Read;
        let p = self.file(id);
        let err = |e| Error::io(format!("reading {}", p.display()), e);
        let mut f = std::fs::File::open(&p).map_err(err)?;
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let mut blake3 = ContentHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            match like {
                Some(Hash::Sha256(_)) => sha2::Digest::update(&mut sha, &buf[..n]),
                Some(Hash::Blake3(_)) | None => blake3.update(&buf[..n]),
            }
        }
        Ok(match like {
            Some(Hash::Sha256(_)) => Hash::Sha256(sha2::Digest::finalize(sha).into()),
            Some(Hash::Blake3(_)) | None => Hash::Blake3(blake3.digest()),
        })
    }

    /// Moves a damaged file out of the file tier into `lost+found/` beside it (a value that
    /// no longer matches what was written is not deleted, in case someone wants its bytes).
    fn keep_aside(&self, id: &Key) {
        let p = self.file(id);
        if !p.exists() {
            return;
        }
        let dir = self
            .path
            .parent()
            .map(|d| d.join("lost+found"))
            .unwrap_or_else(|| self.path.join("lost+found"));
        let moved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::rename(&p, dir.join(&id.as_str()[1..])));
        match moved {
            Ok(()) => log::warn!("tiered: kept the damaged file of {id} in {}", dir.display()),
            Err(e) => log::warn!("tiered: could not move {} aside: {e}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A store with a 1 KiB threshold whose records' durable commits fail the test (through
    /// `violated`) when a file of the file tier is not synced at that moment.
    fn watched(dir: &Path, redb: RedbOptions) -> (TieredStore, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let store = TieredStore::open(
            &dir.join("records.redb"),
            &dir.join("files"),
            TieredOptions {
                threshold: 1024,
                redb,
                sync_files: false,
            },
        )
        .unwrap();
        let violated = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        let inner: Weak<Inner> = Arc::downgrade(&store.inner);
        let (v, c) = (violated.clone(), commits.clone());
        store.inner.records.on_durable_commit(move || {
            if let Some(inner) = inner.upgrade()
                && inner.files.has_unsynced()
            {
                v.store(true, Ordering::SeqCst);
            }
            c.fetch_add(1, Ordering::SeqCst);
        });
        (store, violated, commits)
    }

    /// A store under `dir` with a 1 KiB threshold and default options otherwise.
    fn small_threshold(dir: &Path) -> TieredStore {
        TieredStore::open(
            &dir.join("records.redb"),
            &dir.join("files"),
            TieredOptions {
                threshold: 1024,
                ..TieredOptions::default()
            },
        )
        .unwrap()
    }

    fn big(n: u8) -> Vec<u8> {
        vec![n; 4096]
    }

    /// A value written now is recorded with its BLAKE3 hash (tag 4); records written before
    /// (tag 2) hold sha2-256, and `verify` checks each record by its own algorithm: both
    /// pass while their files are intact, and both files are found once altered.
    #[test]
    fn verify_checks_each_record_by_its_own_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_threshold(dir.path());
        let (a, b) = (Key::new("/a"), Key::new("/b"));
        store.put(&a, &big(1)).unwrap();
        store.put(&b, &big(2)).unwrap();
        let file_of = |k: &Key| match store.inner.loc(k).unwrap() {
            Some(Loc::File(f)) => f,
            _ => panic!("{k} is not file-backed"),
        };
        let fa = file_of(&a);
        assert_eq!(fa.hash, Some(Hash::Blake3(content_digest(&big(1)))));
        // `/a` as a record from before BLAKE3.
        let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(big(1)).into();
        let mut old = vec![FILE_HASHED];
        old.extend_from_slice(&4096u64.to_le_bytes());
        old.extend_from_slice(&sha);
        old.extend_from_slice(fa.id.as_bytes());
        store.inner.records.put(&a, &old).unwrap();
        assert_eq!(file_of(&a).hash, Some(Hash::Sha256(sha)));
        assert_eq!(store.verify(false).unwrap(), Vec::<String>::new());
        for k in [&a, &b] {
            let path = store
                .inner
                .files
                .backing_file(&file_of(k).id)
                .unwrap()
                .unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[100] ^= 1;
            std::fs::write(&path, bytes).unwrap();
        }
        let problems = store.verify(false).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        for (p, k) in problems.iter().zip(["/a", "/b"]) {
            assert!(
                p.contains(k) && p.contains("does not match the hash"),
                "{p}"
            );
        }
    }

    /// The record store's cache grows with the machine, between 64 MiB and 512 MiB.
    #[test]
    fn the_records_cache_follows_the_machines_memory() {
        const MIB: u64 = 1 << 20;
        let size = |gib: u64| records_cache_size(Some(gib << 30)) as u64 / MIB;
        assert_eq!(records_cache_size(None) as u64 / MIB, 64);
        assert_eq!(size(1), 64);
        assert_eq!(size(8), 128);
        assert_eq!(size(24), 384);
        assert_eq!(size(256), 512);
        assert!(TieredOptions::default().redb.cache_size >= (64 << 20));
    }

    /// The records' own group committer (1 s by default; 1 ms here) used to commit a record
    /// durably before the checkpoint had synced its file: after a power loss in between, the
    /// record would point at a missing or empty file.
    #[test]
    fn records_are_never_durable_before_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbOptions {
            commit_interval: Some(Duration::from_millis(1)),
            ..RedbOptions::default()
        };
        let (store, violated, commits) = watched(dir.path(), redb);
        let before = commits.load(Ordering::SeqCst);
        store.put(&Key::new("/a"), &big(1)).unwrap();
        // Wait for the first durable commit after the put (the checkpoint's, within a second).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while commits.load(Ordering::SeqCst) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            commits.load(Ordering::SeqCst) > before,
            "no durable commit came"
        );
        assert!(
            !violated.load(Ordering::SeqCst),
            "a record was made durable before its file was synced"
        );
        drop(store);
        assert!(!violated.load(Ordering::SeqCst));
    }

    /// With `durable_puts` every record is durable at once, so its file must be synced first.
    #[test]
    fn durable_records_come_after_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbOptions {
            durable_puts: true,
            ..RedbOptions::default()
        };
        let (store, violated, _) = watched(dir.path(), redb);
        store.put(&Key::new("/a"), &big(1)).unwrap();
        store.put(&Key::new("/b"), &big(2)).unwrap();
        assert!(
            !violated.load(Ordering::SeqCst),
            "a durable record was written before its file was synced"
        );
    }

    /// A commit into a file whose record holds a size or hash first makes a record without
    /// them durable. That durable commit used to come before the files were synced, also the
    /// unsynced file of another key's record it made durable with it.
    #[test]
    fn an_in_place_commit_syncs_files_before_its_durable_record() {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let (store, violated, _) = watched(dir.path(), redb);
        store.put(&Key::new("/a"), &big(1)).unwrap();
        store.sync(&Key::root()).unwrap();
        // Another key's file, not synced yet.
        store.put(&Key::new("/b"), &big(2)).unwrap();
        let staged = store
            .stage(&Key::new("/a"), StageInit::CopyCurrent)
            .unwrap();
        assert!(staged.is_overlay(), "the test needs an overlay commit");
        staged.write_all_at(10, b"changed").unwrap();
        store.commit_staged(&Key::new("/a"), staged, false).unwrap();
        assert!(
            !violated.load(Ordering::SeqCst),
            "the records were made durable before the files"
        );
    }

    /// Records wait in the records store's pending set (no redb transaction per put): the
    /// checkpoint's durable commit writes them after the files were synced, deletes a replaced
    /// file only after that commit, and a reopen finds them.
    #[test]
    fn pending_records_become_durable_after_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let (store, violated, commits) = watched(dir.path(), redb);
        store.put(&Key::new("/big"), &big(1)).unwrap();
        store.put(&Key::new("/small"), b"small").unwrap();
        store.put(&Key::new("/big"), &big(2)).unwrap();
        store.put(&Key::new("/gone"), &big(3)).unwrap();
        store.delete(&Key::new("/gone")).unwrap();
        let records = &store.inner.records;
        assert_eq!((records.write_count(), records.pending()), (0, 3));
        assert_eq!(store.get(&Key::new("/big")).unwrap(), big(2));
        let before = commits.load(Ordering::SeqCst);
        store.sync(&Key::root()).unwrap();
        assert!(commits.load(Ordering::SeqCst) > before);
        assert!(
            !violated.load(Ordering::SeqCst),
            "a pending record was made durable before its file was synced"
        );
        assert_eq!(store.inner.records.pending(), 0);
        // The two replaced or deleted files went after the commit; one file is left.
        let files = store.inner.files.query(Query::default()).unwrap().count();
        assert_eq!(files, 1);
        drop(store);
        let store = small_threshold(dir.path());
        assert_eq!(store.get(&Key::new("/big")).unwrap(), big(2));
        assert_eq!(store.get(&Key::new("/small")).unwrap(), b"small");
        assert!(!store.has(&Key::new("/gone")).unwrap());
        assert!(store.scrub(false).unwrap().is_empty());
    }

    /// Writers racing checkpoints: no durable commit of the records may include a record
    /// written after the checkpoint synced the files.
    #[test]
    fn writes_racing_checkpoints_never_make_a_record_durable_before_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbOptions {
            commit_interval: None,
            ..RedbOptions::default()
        };
        let (store, violated, _) = watched(dir.path(), redb);
        let store = Arc::new(store);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        let key = Key::new(format!("/w{w}/{}", i % 64));
                        store.put(&key, &big(w)).unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        for _ in 0..100 {
            store.sync(&Key::root()).unwrap();
            if violated.load(Ordering::SeqCst) {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            !violated.load(Ordering::SeqCst),
            "a record written during a checkpoint was made durable before its file"
        );
    }
}
