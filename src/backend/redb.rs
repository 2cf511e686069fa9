//! `RedbStore`: values in a single redb file. The embedded store that needs no server.
//!
//! A `put`/`delete` is visible at once and written with the store's next write transaction,
//! at the latest by its next durable commit, in which it becomes durable as before (see
//! `src/backend/redb_pending.rs`); the group committer makes a durable commit within
//! [`crate::group_commit::DEFAULT_INTERVAL`] of a change, `sync` and `close` at once. Batches,
//! renames and exchanges are their own transactions, committed without fsync. With
//! [`RedbOptions::durable_puts`] every write is its own durable transaction. redb's
//! copy-on-write commits make every put and every batch atomic: after a crash each key holds its
//! old or its new value, and a batch is applied wholly or not at all.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, Key, Query, Result, Results, copy_range,
};
use crate::group_commit::{self, GroupCommit, redb_error};

use super::redb_pending::{Lookup, Pending};

const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");

/// Runs code that calls redb, turning a redb panic on a damaged file into a
/// [`crate::ErrorKind::Corrupt`] error.
fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::redb_guard::catch(what, f, Error::corrupt_text)
}

/// Options for opening a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// fsync every write before it returns (slower; `sync` is then free).
    pub durable_puts: bool,
    /// The longest a write waits to become durable when `durable_puts` is off; `None` leaves
    /// durability to explicit `sync` calls (the owner of the store orders them).
    pub commit_interval: Option<Duration>,
    /// redb's page cache size in bytes.
    pub cache_size: usize,
    /// Verify every page's checksum when opening (reads the whole file), so that a damaged
    /// file fails to open as [`crate::ErrorKind::Corrupt`] rather than failing later.
    pub check_integrity: bool,
}

impl Default for RedbOptions {
    fn default() -> RedbOptions {
        RedbOptions {
            durable_puts: false,
            commit_interval: Some(group_commit::DEFAULT_INTERVAL),
            cache_size: 64 << 20,
            check_integrity: false,
        }
    }
}

/// A datastore whose values live in one redb database file.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    options: RedbOptions,
    commits: GroupCommit,
    closed: AtomicBool,
    /// Held shared by every change from its check that the store is open until the change is
    /// held or written, and exclusively by `close` while it marks the store closed. A change
    /// that passed the check is therefore pending or in redb before `close`'s final durable
    /// commit, and every later one fails as closed: none is acknowledged and then dropped.
    open_gate: parking_lot::RwLock<()>,
    /// Puts and deletes not yet written (see [`super::redb_pending`]); always empty with
    /// `durable_puts`.
    pending: Arc<Pending>,
    /// Whether puts may be held now (see [`crate::space::Headroom`]).
    pub(super) headroom: crate::space::Headroom,
    /// Write transactions committed by [`RedbStore::write`] since open.
    writes: AtomicU64,
    /// Called just before every durable commit (tests check what must be durable before it).
    #[cfg(test)]
    durable_hook: DurableHook,
    /// See [`RedbStore::fail_writes`].
    #[cfg(test)]
    fail_writes: Arc<AtomicBool>,
    /// Called by a held change between its open check and its entry (see
    /// [`RedbStore::on_enter`]).
    #[cfg(test)]
    enter_hook: DurableHook,
}

#[cfg(test)]
type DurableHook = Arc<parking_lot::Mutex<Option<Box<dyn Fn() + Send + Sync>>>>;

#[cfg(test)]
fn run_hook(hook: &DurableHook) {
    if let Some(f) = &*hook.lock() {
        f();
    }
}

/// Fails when a test asked writes to fail (see [`RedbStore::fail_writes`]).
#[cfg(test)]
fn injected_failure(fail: &AtomicBool) -> Result<()> {
    if fail.load(Ordering::SeqCst) {
        Err(Error::new(
            crate::ErrorKind::NoSpace,
            "redb store: injected write failure",
        ))
    } else {
        Ok(())
    }
}

/// The group committer's durable commit: applies the pending puts and deletes in it.
/// `before_commit` runs just before the commit (tests inject failures there).
fn durable_commit(
    db: &Database,
    pending: &Pending,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<()> {
    guard("redb store: durable commit", || {
        let mut txn = db
            .begin_write()
            .map_err(|e| redb_error("starting a durable commit", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb_error("setting durability", e))?;
        let applied = pending.snapshot();
        if !applied.is_empty() {
            let mut table = txn
                .open_table(VALUES)
                .map_err(|e| redb_error("opening the values table", e))?;
            applied.apply(&mut table)?;
        }
        before_commit()?;
        txn.commit().map_err(|e| redb_error("durable commit", e))?;
        pending.committed(&applied);
        Ok(())
    })
}

impl RedbStore {
    /// Opens the database at `path`, creating it if it does not exist. Fails with
    /// [`crate::ErrorKind::Locked`] if another process has it open.
    pub fn open(path: impl AsRef<Path>, options: RedbOptions) -> Result<RedbStore> {
        guard("redb store: open", || {
            let path = path.as_ref().to_path_buf();
            let mut builder = Database::builder();
            builder
                .set_cache_size(options.cache_size)
                .set_check_integrity_on_open(options.check_integrity);
            let db = crate::space::open_redb(&builder, &path)
                .map_err(|e| redb_error(&format!("opening redb store {}", path.display()), e))?;
            let txn = db
                .begin_write()
                .map_err(|e| redb_error("starting a transaction", e))?;
            txn.open_table(VALUES)
                .map_err(|e| redb_error("creating the values table", e))?;
            txn.commit().map_err(|e| redb_error("committing", e))?;
            let db = Arc::new(db);
            let pending = Arc::new(Pending::default());
            #[cfg(test)]
            let durable_hook = DurableHook::default();
            #[cfg(test)]
            let fail_writes = Arc::new(AtomicBool::new(false));
            let commits = {
                let (db, pending) = (db.clone(), pending.clone());
                #[cfg(test)]
                let (hook, fail) = (durable_hook.clone(), fail_writes.clone());
                GroupCommit::with_commit(
                    Box::new(move || {
                        #[cfg(test)]
                        run_hook(&hook);
                        durable_commit(&db, &pending, || {
                            #[cfg(test)]
                            injected_failure(&fail)?;
                            Ok(())
                        })
                    }),
                    options.commit_interval,
                    "values",
                )
            };
            Ok(RedbStore {
                db,
                headroom: crate::space::Headroom::of_file(&path),
                path,
                options,
                commits,
                closed: AtomicBool::new(false),
                open_gate: parking_lot::RwLock::new(()),
                pending,
                writes: AtomicU64::new(0),
                #[cfg(test)]
                durable_hook,
                #[cfg(test)]
                fail_writes,
                #[cfg(test)]
                enter_hook: DurableHook::default(),
            })
        })
    }

    /// Opens the database at `path` like [`RedbStore::open`]; if the file is damaged, moves it
    /// aside (`<name>.corrupt-<unix seconds>`), creates a fresh one and copies into it every
    /// record that still reads. Returns the store and, after a salvage, one line saying what
    /// happened (also logged).
    pub fn open_salvaging(
        path: impl AsRef<Path>,
        options: RedbOptions,
    ) -> Result<(RedbStore, Option<String>)> {
        let path = path.as_ref();
        let why = match RedbStore::open(path, options.clone()) {
            Ok(store) => return Ok((store, None)),
            Err(e) if e.kind() == crate::ErrorKind::Corrupt => e,
            Err(e) => return Err(e),
        };
        let aside = crate::index::salvage::move_aside(path).map_err(|e| {
            Error::io(
                format!(
                    "{} is damaged ({why}) and could not be moved aside",
                    path.display()
                ),
                e,
            )
        })?;
        let store = RedbStore::open(path, options)?;
        let opened = guard("opening a damaged store", || {
            Database::builder()
                .open_read_only(&aside)
                .map_err(|e| redb_error("opening a damaged store", e))
        });
        let (records, unreadable) = match opened {
            Ok(old) => {
                let all = (Bound::<&str>::Unbounded, Bound::<&str>::Unbounded);
                let (records, bad) = crate::redb_guard::salvage_table::<_, _, _, _, &str>(
                    &old,
                    VALUES,
                    all,
                    |k, v| Some((k.to_owned(), v.to_vec())),
                );
                (records, bad)
            }
            Err(e) => {
                log::warn!("salvage: {e}");
                (Default::default(), 1)
            }
        };
        let copied = records.len();
        for chunk in records.into_iter().collect::<Vec<_>>().chunks(1024) {
            store.write(|t| {
                for (k, v) in chunk {
                    t.insert(k.as_str(), v.as_slice())
                        .map_err(|e| redb_error("salvaging", e))?;
                }
                Ok(())
            })?;
        }
        store.sync(&Key::root())?;
        let line = format!(
            "{} was damaged ({why}); moved it to {} and salvaged {copied} readable records into a new file{}",
            path.display(),
            aside.display(),
            if unreadable > 0 {
                " (some parts could not be read: their keys are missing now; 'dsfs fsck' lists them)"
            } else {
                ""
            }
        );
        log::warn!("{line}");
        Ok((store, Some(line)))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    /// How many write transactions this store has committed since it was opened (puts and
    /// deletes wait for the next one; durable commits are not counted): for tests and profiling.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sets the function called just before every durable commit.
    #[cfg(test)]
    pub(crate) fn on_durable_commit(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.durable_hook.lock() = Some(Box::new(f));
    }

    /// Sets the function a held put or delete calls after it found the store open and before
    /// it enters the pending set.
    #[cfg(test)]
    pub(super) fn on_enter(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.enter_hook.lock() = Some(Box::new(f));
    }

    /// How many puts and deletes wait for the next write transaction or durable commit.
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Makes every write transaction fail (after applying what is pending, before committing)
    /// while set: a failed apply, as a full disk would cause.
    #[cfg(test)]
    pub(super) fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Writes a put (`Some`) or delete (`None`) of `key`: into the pending set, or, with
    /// `durable_puts` or when the set is full, in a transaction of its own (with the set).
    fn change(&self, key: &Key, value: Option<&[u8]>) -> Result<()> {
        // A put is held only while the disk has room to spare (see `space::Headroom`): near a
        // full disk it is committed at once, so that ENOSPC meets its writer. A delete frees
        // space and is always held.
        if !self.options.durable_puts && (value.is_none() || self.headroom.plenty()) {
            let _open = self.open_gate.read();
            self.check_open()?;
            #[cfg(test)]
            run_hook(&self.enter_hook);
            if self.pending.enter(key.as_str(), value) {
                self.commits.mark_dirty();
                return Ok(());
            }
        }
        self.write(|t| {
            match value {
                Some(v) => {
                    t.insert(key.as_str(), v)
                        .map_err(|e| redb_error("writing", e))?;
                }
                None => {
                    t.remove(key.as_str())
                        .map_err(|e| redb_error("deleting", e))?;
                }
            }
            Ok(())
        })
    }

    /// Runs `f` in one write transaction, after the pending puts and deletes.
    fn write(&self, f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<()>) -> Result<()> {
        guard("redb store: write", || {
            let _open = self.open_gate.read();
            self.check_open()?;
            let mut txn = self
                .db
                .begin_write()
                .map_err(|e| redb_error("starting a write", e))?;
            if !self.options.durable_puts {
                txn.set_durability(Durability::None)
                    .map_err(|e| redb_error("setting durability", e))?;
            }
            #[cfg(test)]
            if self.options.durable_puts {
                run_hook(&self.durable_hook);
            }
            let applied = self.pending.snapshot();
            {
                let mut table = txn
                    .open_table(VALUES)
                    .map_err(|e| redb_error("opening the values table", e))?;
                applied.apply(&mut table)?;
                f(&mut table)?;
            }
            #[cfg(test)]
            injected_failure(&self.fail_writes)?;
            txn.commit()
                .map_err(|e| redb_error("committing a write", e))?;
            self.pending.committed(&applied);
            self.writes.fetch_add(1, Ordering::Relaxed);
            if !self.options.durable_puts {
                self.commits.mark_dirty();
            }
            Ok(())
        })
    }

    fn read_table(&self) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>> {
        guard("redb store: read_table", || {
            let txn = self
                .db
                .begin_read()
                .map_err(|e| redb_error("starting a read", e))?;
            txn.open_table(VALUES)
                .map_err(|e| redb_error("opening the values table", e))
        })
    }
}

impl Datastore for RedbStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        guard("redb store: get", || {
            match self.pending.get(key.as_str()) {
                Lookup::NotPending => {}
                Lookup::Deleted => return Err(Error::not_found()),
                Lookup::Value(v) => return Ok(v.to_vec()),
            }
            let table = self.read_table()?;
            match table
                .get(key.as_str())
                .map_err(|e| redb_error("reading", e))?
            {
                Some(v) => Ok(v.value().to_vec()),
                None => Err(Error::not_found()),
            }
        })
    }

    fn has(&self, key: &Key) -> Result<bool> {
        guard("redb store: has", || {
            match self.pending.get(key.as_str()) {
                Lookup::NotPending => {}
                Lookup::Deleted => return Ok(false),
                Lookup::Value(_) => return Ok(true),
            }
            let table = self.read_table()?;
            Ok(table
                .get(key.as_str())
                .map_err(|e| redb_error("reading", e))?
                .is_some())
        })
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        guard("redb store: get_size", || {
            match self.pending.get(key.as_str()) {
                Lookup::NotPending => {}
                Lookup::Deleted => return Err(Error::not_found()),
                Lookup::Value(v) => return Ok(v.len() as u64),
            }
            let table = self.read_table()?;
            match table
                .get(key.as_str())
                .map_err(|e| redb_error("reading", e))?
            {
                Some(v) => Ok(v.value().len() as u64),
                None => Err(Error::not_found()),
            }
        })
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        guard("redb store: read_at", || {
            match self.pending.get(key.as_str()) {
                Lookup::NotPending => {}
                Lookup::Deleted => return Err(Error::not_found()),
                Lookup::Value(v) => return Ok(copy_range(&v, offset, buf)),
            }
            let table = self.read_table()?;
            match table
                .get(key.as_str())
                .map_err(|e| redb_error("reading", e))?
            {
                Some(v) => Ok(copy_range(v.value(), offset, buf)),
                None => Err(Error::not_found()),
            }
        })
    }

    /// Without `durable_puts`, visible at once and written with the next write transaction
    /// or durable commit (see `src/backend/redb_pending.rs`): no commit of its own until the
    /// pending set is full.
    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.change(key, Some(value))
    }

    /// Like [`RedbStore::put`]: no commit of its own without `durable_puts`.
    fn delete(&self, key: &Key) -> Result<()> {
        self.change(key, None)
    }

    fn query(&self, q: Query) -> Result<Results> {
        guard("redb store: query", || {
            // The scan reads the database alone, in one snapshot (see redb_pending.rs): what
            // was pending when the query began is written first.
            if !self.pending.is_empty() {
                self.write(|_| Ok(()))?;
            }
            let table = self.read_table()?;
            let prefix = q.prefix_key();
            let range = match query::prefix_range(prefix.as_ref()) {
                Some((lo, hi)) => table
                    .range::<&str>((Bound::Included(lo.as_str()), Bound::Excluded(hi.as_str()))),
                None => table.range::<&str>(..),
            }
            .map_err(|e| redb_error("starting a scan", e))?;
            let keys_only = q.keys_only;
            let entries: EntryIter = Box::new(range.map(move |item| {
                let (k, v) = item.map_err(|e| redb_error("scanning", e))?;
                let key = Key::from_raw(k.value().to_owned())?;
                let value = v.value();
                Ok(if keys_only {
                    Entry::key_only(key, Some(value.len() as u64))
                } else {
                    Entry::with_value(key, value.to_vec())
                })
            }));
            let entries: EntryIter = Box::new(crate::redb_guard::iter(
                "redb store: scanning",
                entries,
                Error::corrupt_text,
            ));
            let it = query::naive_apply(&q, entries, true);
            Ok(Results::new(q, it))
        })
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        guard("redb store: sync", || {
            self.check_open()?;
            self.commits.flush()
        })
    }

    fn close(&self) -> Result<()> {
        guard("redb store: close", || {
            {
                // Waits for the changes under way (see `open_gate`).
                let _closing = self.open_gate.write();
                if self.closed.swap(true, Ordering::AcqRel) {
                    return Ok(());
                }
            }
            self.commits.stop()
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: true,
            ranged_read: false,
            atomic_put: true,
            atomic_batch: true,
            durable_put: self.options.durable_puts,
            persistent: true,
            general_keys: true,
            file_backed: false,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: Some(u32::MAX as u64),
            max_key_len: None,
        }
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.write(|t| {
            let value = t
                .remove(from.as_str())
                .map_err(|e| redb_error("moving", e))?
                .map(|v| v.value().to_vec())
                .ok_or_else(Error::not_found)?;
            t.insert(to.as_str(), value.as_slice())
                .map_err(|e| redb_error("moving", e))?;
            Ok(())
        })
    }

    /// One transaction: both values or neither change, also across a crash.
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        self.write(|t| {
            let get = |t: &redb::Table<&str, &[u8]>, k: &Key| -> Result<Vec<u8>> {
                use redb::ReadableTable;
                t.get(k.as_str())
                    .map_err(|e| redb_error("swapping", e))?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(Error::not_found)
            };
            let va = get(t, a)?;
            let vb = get(t, b)?;
            t.insert(a.as_str(), vb.as_slice())
                .map_err(|e| redb_error("swapping", e))?;
            t.insert(b.as_str(), va.as_slice())
                .map_err(|e| redb_error("swapping", e))?;
            Ok(())
        })
    }

    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        self.write(|t| {
            for (key, op) in &ops {
                match op {
                    Some(value) => {
                        t.insert(key.as_str(), value.as_slice())
                            .map_err(|e| redb_error("writing", e))?;
                    }
                    None => {
                        t.remove(key.as_str())
                            .map_err(|e| redb_error("deleting", e))?;
                    }
                }
            }
            Ok(())
        })
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))?;
        Ok(Some(meta.len()))
    }

    fn staging_dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}
