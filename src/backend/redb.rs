//! `RedbStore`: values in a single redb file. The embedded store that needs no server.
//!
//! Every `put`/`delete` is its own redb transaction, committed without fsync and made durable
//! by the group committer within [`crate::group_commit::DEFAULT_INTERVAL`], or at once by `sync`
//! and `close` (or by every write, when opened with [`RedbOptions::durable_puts`]). redb's
//! copy-on-write commits make every put and every batch atomic: after a crash each key holds its
//! old or its new value, and a batch is applied wholly or not at all.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, Key, Query, Result, Results, copy_range,
};
use crate::group_commit::{self, GroupCommit, redb_error};

const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");

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
}

impl Default for RedbOptions {
    fn default() -> RedbOptions {
        RedbOptions {
            durable_puts: false,
            commit_interval: Some(group_commit::DEFAULT_INTERVAL),
            cache_size: 64 << 20,
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
}

impl RedbStore {
    /// Opens the database at `path`, creating it if it does not exist. Fails with
    /// [`crate::ErrorKind::Locked`] if another process has it open.
    pub fn open(path: impl AsRef<Path>, options: RedbOptions) -> Result<RedbStore> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_cache_size(options.cache_size)
            .create(&path)
            .map_err(|e| redb_error(&format!("opening redb store {}", path.display()), e))?;
        let txn = db
            .begin_write()
            .map_err(|e| redb_error("starting a transaction", e))?;
        txn.open_table(VALUES)
            .map_err(|e| redb_error("creating the values table", e))?;
        txn.commit().map_err(|e| redb_error("committing", e))?;
        let db = Arc::new(db);
        let commits = GroupCommit::start(db.clone(), options.commit_interval, "values");
        Ok(RedbStore {
            db,
            path,
            options,
            commits,
            closed: AtomicBool::new(false),
        })
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

    fn write(&self, f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<()>) -> Result<()> {
        self.check_open()?;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| redb_error("starting a write", e))?;
        if !self.options.durable_puts {
            txn.set_durability(Durability::None)
                .map_err(|e| redb_error("setting durability", e))?;
        }
        {
            let mut table = txn
                .open_table(VALUES)
                .map_err(|e| redb_error("opening the values table", e))?;
            f(&mut table)?;
        }
        txn.commit()
            .map_err(|e| redb_error("committing a write", e))?;
        if !self.options.durable_puts {
            self.commits.mark_dirty();
        }
        Ok(())
    }

    fn read_table(&self) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| redb_error("starting a read", e))?;
        txn.open_table(VALUES)
            .map_err(|e| redb_error("opening the values table", e))
    }
}

impl Datastore for RedbStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        let table = self.read_table()?;
        match table
            .get(key.as_str())
            .map_err(|e| redb_error("reading", e))?
        {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(Error::not_found()),
        }
    }

    fn has(&self, key: &Key) -> Result<bool> {
        let table = self.read_table()?;
        Ok(table
            .get(key.as_str())
            .map_err(|e| redb_error("reading", e))?
            .is_some())
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        let table = self.read_table()?;
        match table
            .get(key.as_str())
            .map_err(|e| redb_error("reading", e))?
        {
            Some(v) => Ok(v.value().len() as u64),
            None => Err(Error::not_found()),
        }
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let table = self.read_table()?;
        match table
            .get(key.as_str())
            .map_err(|e| redb_error("reading", e))?
        {
            Some(v) => Ok(copy_range(v.value(), offset, buf)),
            None => Err(Error::not_found()),
        }
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.write(|t| {
            t.insert(key.as_str(), value)
                .map_err(|e| redb_error("writing", e))?;
            Ok(())
        })
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.write(|t| {
            t.remove(key.as_str())
                .map_err(|e| redb_error("deleting", e))?;
            Ok(())
        })
    }

    fn query(&self, q: Query) -> Result<Results> {
        let table = self.read_table()?;
        let prefix = q.prefix_key();
        let range = match query::prefix_range(prefix.as_ref()) {
            Some((lo, hi)) => {
                table.range::<&str>((Bound::Included(lo.as_str()), Bound::Excluded(hi.as_str())))
            }
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
        let it = query::naive_apply(&q, entries, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        self.check_open()?;
        self.commits.flush()
    }

    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.commits.stop()
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
