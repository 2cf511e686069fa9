//! The key index: the directory tree of the keys, file metadata, xattrs and symlinks, in redb.
//!
//! The datastore holds bytes; the index holds everything else. Every key that holds a value
//! has a `keys` record (byte order, so a prefix query is one range scan) and is a node in a tree
//! of directories, one per key component. Directories come from keys (implied, removed with
//! their last child) or from `mkdir` (explicit, kept until removed). A key that holds a value and
//! has children is a directory whose node records the value's size.
//!
//! Kinds of record, all in the one redb table of `layout` (see there, and `docs/ARCHITECTURE.md`
//! for the record formats):
//!
//! | record | key | value |
//! |---|---|---|
//! | `meta` | name | u64 (next node id, next cookie, open flag) |
//! | `nodes` | node id | encoded [`Node`] |
//! | `dirents` | (parent id, name) | (child id, cookie) |
//! | `cookies` | (parent id, cookie) | (child id, name): the listing order, stable under removal |
//! | `keys` | datastore key | (node id, value size) |
//! | `xattrs` | (node id, attribute name) | value |
//! | `aliases` | (node id, parent id, name) | (): the extra names of a hard-linked node |
//!
//! The format version is kept apart, in a `meta` table of its own.
//!
//! Lookup is one B-tree probe per path component; listing a directory is one range scan of its
//! cookies, O(its entries), never a walk of its subtree. A write's commit is held in memory,
//! visible to every read, and reaches redb in batches (`held`); the batches commit without
//! fsync and are made durable by a [`GroupCommit`] within a bounded delay, or at once by
//! [`Index::sync`].

mod activity;
pub mod build;
pub mod changes;
pub mod error;
pub mod follow;
mod held;
mod keycache;
mod layout;
pub mod node;
mod nodecache;
pub mod ops;
pub mod reconcile;
pub mod salvage;
pub mod store;
pub mod unlink;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

pub use error::{IndexError, IndexErrorKind, IndexResult};
pub use node::{Node, NodeId, NodeKind, ROOT, Timestamp};
pub use store::IndexedStore;

/// What [`Index::write_mark`] returns: equal marks mean no write transaction ran in between.
pub type WriteMark = activity::ActivityState;

use crate::datastore::Key;
use crate::datastore::query::prefix_range;
use crate::group_commit::{self, GroupCommit};

use layout::{
    Aliases, Cookies, Dirents, FORMAT_VERSION, INDEX, Keys, Layers, LayersMut, Meta, Nodes,
    OLD_FORMAT_VERSION, Overlay, Sink, Source, VERSION, VERSION_KEY, View, ViewMut, Xattrs,
};

const META_NEXT_ID: &str = "next_node_id";
const META_NEXT_COOKIE: &str = "next_cookie";
const META_OPEN: &str = "open";

/// Options for opening an [`Index`].
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// The longest an index update waits to become durable.
    pub commit_interval: Duration,
    /// redb's page cache, in bytes.
    pub cache_size: usize,
    /// Owner of nodes created from datastore keys.
    pub uid: u32,
    /// Group of nodes created from datastore keys.
    pub gid: u32,
    /// Keep a [`crate::space::Reserve`] of this many bytes beside the index file, spent when
    /// the disk fills up so that commits and removals still work.
    pub reserve: Option<u64>,
    /// Verify every page's checksum when opening (reads the whole file): a damaged file then
    /// fails to open as [`IndexErrorKind::Corrupt`] instead of failing later. For `fsck`.
    pub check_integrity: bool,
}

impl Default for IndexOptions {
    fn default() -> IndexOptions {
        let (uid, gid) = crate::sys::effective_ids();
        IndexOptions {
            commit_interval: group_commit::DEFAULT_INTERVAL,
            cache_size: 64 << 20,
            uid,
            gid,
            reserve: None,
            check_integrity: false,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name: one key component.
    pub name: String,
    /// The child's id.
    pub id: NodeId,
    /// The entry's position in its directory's listing; listing resumes after it.
    pub cookie: u64,
    /// The child's attributes.
    pub node: Node,
}

/// One key of the `keys` table, as [`Index::keys`] yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The datastore key.
    pub key: Key,
    /// Its node.
    pub id: NodeId,
    /// The size of its value.
    pub size: u64,
}

/// The redb key index. Cheap to share (`Arc<Index>`); every method takes `&self`.
pub struct Index {
    db: Arc<Database>,
    /// Records written by committed writes but not yet in redb (see `held`).
    held: Arc<held::Held>,
    /// Whether writes may be held (see `held`); `None` for an index in memory.
    headroom: Option<crate::space::Headroom>,
    commits: GroupCommit,
    path: Option<PathBuf>,
    options: IndexOptions,
    was_unclean: bool,
    /// Whether closing may mark the index clean: false after an unclean stop until the index
    /// has been reconciled with its store (a plain `fsck` must leave the crash visible to the
    /// next open, which then scrubs the store's debris).
    reconciled: std::sync::atomic::AtomicBool,
    closed: std::sync::atomic::AtomicBool,
    reserve: Option<Arc<crate::space::Reserve>>,
    /// Write transactions committed since open (see [`Index::write_count`]).
    writes: std::sync::atomic::AtomicU64,
    /// Read transactions begun since open (see [`Index::read_count`]).
    reads: std::sync::atomic::AtomicU64,
    /// Write transactions holding the write lock (see [`Index::write_mark`]).
    writes_running: activity::Activity,
    /// Directory keys by node id.
    dir_keys: keycache::DirKeys,
    /// Directory records by node id.
    dir_nodes: nodecache::DirNodes,
    /// Taken by every [`Index::write`] (see there); it holds the id counters, which only a
    /// write transaction advances.
    write_serial: parking_lot::Mutex<Counters>,
    /// Told of changes made through `record_*` (see `changes`).
    changes: changes::Changes,
    /// Values moving in the store ahead of the index (see [`Index::begin_move`]).
    moves: activity::Activity,
    /// The number of keys holding values, once counted.
    key_count: KeyCount,
}

impl Index {
    /// Opens the index file at `path`, creating it if needed. Fails with
    /// [`IndexErrorKind::Locked`] when another process has it open.
    pub fn open(path: impl AsRef<Path>, options: IndexOptions) -> IndexResult<Index> {
        let path = path.as_ref().to_path_buf();
        // The reserve comes first: opening the index commits, and a full disk must not stop it.
        let reserve = match (options.reserve, path.parent()) {
            (Some(size), Some(dir)) => Some(crate::space::Reserve::establish(dir, size)?),
            _ => None,
        };
        let what = format!("opening index {}", path.display());
        let mut index = crate::redb_guard::catch(
            &what,
            || {
                let mut builder = Database::builder();
                builder
                    .set_cache_size(options.cache_size)
                    .set_check_integrity_on_open(options.check_integrity);
                let db = crate::space::open_redb(&builder, &path)
                    .map_err(|e| IndexError::redb(&what, e))?;
                Index::init(db, Some(path.clone()), options)
            },
            IndexError::corrupt,
        )?;
        index.reserve = reserve;
        Ok(index)
    }

    /// The reserve of space kept beside the index file, if it keeps one.
    pub fn reserve(&self) -> Option<&Arc<crate::space::Reserve>> {
        self.reserve.as_ref()
    }

    /// A volatile index held in memory (for volatile stores and tests).
    pub fn in_memory(options: IndexOptions) -> IndexResult<Index> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| IndexError::redb("creating an in-memory index", e))?;
        Index::init(db, None, options)
    }

    /// An index over any redb storage backend, with no page cache (tests inject storage
    /// failures this way).
    #[cfg(test)]
    pub(crate) fn with_backend(
        backend: impl redb::StorageBackend,
        options: IndexOptions,
    ) -> IndexResult<Index> {
        let db = Database::builder()
            .set_cache_size(0)
            .create_with_backend(backend)
            .map_err(|e| IndexError::redb("creating an index", e))?;
        Index::init(db, None, options)
    }

    fn init(db: Database, path: Option<PathBuf>, options: IndexOptions) -> IndexResult<Index> {
        let txn = db
            .begin_write()
            .map_err(|e| IndexError::redb("starting the index", e))?;
        let was_unclean;
        let counters;
        // The index's name in the migration's log lines, and when the migration began.
        let name = || {
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "in memory".to_owned())
        };
        let mut migrated = None;
        {
            let version = txn
                .open_table(VERSION)
                .map_err(|e| IndexError::redb("opening meta", e))?
                .get(VERSION_KEY)
                .map_err(|e| IndexError::redb("reading meta", e))?
                .map(|v| v.value());
            let fresh = match version {
                None => true,
                Some(OLD_FORMAT_VERSION) => {
                    // One transaction over every record: a large index takes a while, once.
                    log::info!(
                        "index {}: moving its records from the seven-table layout (version {OLD_FORMAT_VERSION}) into one table (version {FORMAT_VERSION}), once",
                        name()
                    );
                    let began = std::time::Instant::now();
                    migrated = Some((layout::migrate(&txn)?, began));
                    false
                }
                Some(FORMAT_VERSION) => false,
                Some(v) => {
                    return Err(IndexError::corrupt(format!(
                        "index format version {v}; this dsfs reads versions {OLD_FORMAT_VERSION} and {FORMAT_VERSION}"
                    )));
                }
            };
            let mut table = txn
                .open_table(INDEX)
                .map_err(|e| IndexError::redb("opening the index table", e))?;
            let mut meta = ViewMut::<_, Meta>::new(&mut table);
            if fresh {
                txn.open_table(VERSION)
                    .map_err(|e| IndexError::redb("opening meta", e))?
                    .insert(VERSION_KEY, FORMAT_VERSION)
                    .map_err(|e| IndexError::redb("writing meta", e))?;
                meta.insert(META_NEXT_ID, ROOT + 1)?;
                meta.insert(META_NEXT_COOKIE, 1)?;
                let mut root = Node::new(
                    NodeKind::Dir,
                    ROOT,
                    "",
                    node::DEFAULT_DIR_MODE,
                    options.uid,
                    options.gid,
                );
                root.explicit = true;
                ViewMut::<_, Nodes>::new(&mut table).insert(ROOT, root.encode().as_slice())?;
            }
            let meta = View::<_, Meta>::new(&mut table);
            counters = Counters {
                node: Counter::resume(&meta, META_NEXT_ID)?,
                cookie: Counter::resume(&meta, META_NEXT_COOKIE)?,
            };
            was_unclean = meta.get(META_OPEN)? == Some(1);
            ViewMut::<_, Meta>::new(&mut table).insert(META_OPEN, 1)?;
        }
        txn.commit()
            .map_err(|e| IndexError::redb("committing the index start", e))?;
        if let Some((moved, began)) = migrated {
            log::info!(
                "index {}: moved {} records into one table in {:.2} s",
                name(),
                moved.records,
                began.elapsed().as_secs_f64()
            );
        }
        let db = Arc::new(db);
        let held = Arc::new(held::Held::new(db.clone()));
        let commit = {
            let (db, held) = (db.clone(), held.clone());
            // The held records are written just before the durable commit, which then covers
            // them (see `held`).
            Box::new(move || {
                held.flush()?;
                group_commit::durable_commit(&db)
            })
        };
        let commits = GroupCommit::with_commit(commit, Some(options.commit_interval), "index");
        let headroom = path.as_deref().map(crate::space::Headroom::of_file);
        Ok(Index {
            db,
            held,
            headroom,
            commits,
            path,
            options,
            was_unclean,
            reconciled: std::sync::atomic::AtomicBool::new(!was_unclean),
            closed: std::sync::atomic::AtomicBool::new(false),
            reserve: None,
            writes: std::sync::atomic::AtomicU64::new(0),
            reads: std::sync::atomic::AtomicU64::new(0),
            writes_running: activity::Activity::default(),
            dir_keys: keycache::DirKeys::default(),
            dir_nodes: nodecache::DirNodes::default(),
            moves: activity::Activity::default(),
            write_serial: parking_lot::Mutex::new(counters),
            changes: changes::Changes::default(),
            key_count: KeyCount::default(),
        })
    }

    /// Whether the previous user of this index file stopped without closing it (a crash): the
    /// index may then have lost its last updates and should be reconciled with the store.
    pub fn was_unclean(&self) -> bool {
        self.was_unclean
    }

    /// Records that the index and its store have been reconciled (and the store scrubbed)
    /// since the unclean stop, so that closing may mark the index clean again.
    pub fn mark_reconciled(&self) {
        self.reconciled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The index file, if it is on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The options the index was opened with.
    pub fn options(&self) -> &IndexOptions {
        &self.options
    }

    /// Makes every update so far durable.
    pub fn sync(&self) -> IndexResult<()> {
        self.commits.flush().map_err(IndexError::from)
    }

    /// Marks the index cleanly closed and makes everything durable. Later writes fail with
    /// [`IndexErrorKind::Closed`]; reads keep working. Closing twice is `Ok`.
    pub fn close(&self) -> IndexResult<()> {
        guard("close", || {
            if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Ok(());
            }
            // No write runs while this is held, and none begins after it (the index is closed).
            let counters = self.write_serial.lock();
            let mut held = self.held.set.write();
            let mut txn = self
                .db
                .begin_write()
                .map_err(|e| IndexError::redb("closing the index", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| IndexError::redb("closing the index", e))?;
            {
                let mut table = txn
                    .open_table(INDEX)
                    .map_err(|e| IndexError::redb("opening the index table", e))?;
                self.held.apply_in(&held, &mut table)?;
                let mut meta = ViewMut::<_, Meta>::new(&mut table);
                // Until the store has been reconciled, the next open must still see the crash.
                let open = if self.reconciled.load(std::sync::atomic::Ordering::Acquire) {
                    0
                } else {
                    1
                };
                meta.insert(META_OPEN, open)?;
                // A clean stop hands the unused rest of each reserved block back.
                for (name, counter) in [
                    (META_NEXT_ID, counters.node),
                    (META_NEXT_COOKIE, counters.cookie),
                ] {
                    meta.insert(name, counter.next)?;
                }
            }
            txn.commit()
                .map_err(|e| IndexError::redb("closing the index", e))?;
            self.held.applied(&mut held);
            drop(held);
            drop(counters);
            self.commits.stop().map_err(IndexError::from)
        })
    }

    /// A read of the index: the held records' read lock, then a redb read transaction (see
    /// `held` for why in that order).
    fn read_txn(&self) -> IndexResult<Reading<'_>> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = self.held.set.read();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| IndexError::redb("starting an index read", e))?;
        let table = open_read(&txn)?;
        Ok(Reading { held, table })
    }

    /// Whether a write may be held now rather than committed at once (see `held`).
    fn may_hold(&self) -> bool {
        self.headroom
            .as_ref()
            .is_none_or(crate::space::Headroom::plenty)
    }

    /// Runs `f` in one write transaction, whose commit is held in memory and visible at once
    /// (written to redb with others, and made durable by the group committer or
    /// [`Index::sync`]: see `held`). If `f` fails nothing is written.
    pub fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> IndexResult<T>) -> IndexResult<T> {
        self.write_if(|tx| Ok((f(tx)?, true)))
    }

    /// Like [`Index::write`], but `f` also says whether to commit: with `false` the
    /// transaction is dropped (nothing written, nothing counted) and `f`'s answer returned.
    pub(crate) fn write_if<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> IndexResult<(T, bool)>,
    ) -> IndexResult<T> {
        guard("write", || {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(IndexError::new(
                    IndexErrorKind::Closed,
                    "the index is closed",
                ));
            }
            // Held until the cached directory records are updated after the commit, so that
            // two writes update them in the order they committed.
            let mut serial = self.write_serial.lock();
            let _running = self.writes_running.begin();
            let (result, dirs_moved, written, counters, keys_added, changes) = {
                let held = self.held.set.read();
                let txn = self
                    .db
                    .begin_read()
                    .map_err(|e| IndexError::redb("starting an index write", e))?;
                let base = open_read(&txn)?;
                let mut tx = Tx::open(&base, &held.map, &self.options, *serial);
                let (result, commit) = f(&mut tx)?;
                if !commit {
                    return Ok(result);
                }
                (
                    result,
                    tx.dirs_moved,
                    std::mem::take(&mut tx.written),
                    tx.counters,
                    tx.keys_added,
                    std::mem::take(&mut tx.local),
                )
            };
            // The commit: held, or written at once with the held records (see `held`).
            let committed = self.held.commit(changes, self.may_hold());
            if committed.is_ok() {
                // Ids handed out by a write that did not commit are handed out again.
                *serial = counters;
                self.key_count.add(keys_added);
            }
            self.dir_nodes.written(written, committed.is_ok());
            if dirs_moved {
                // Before the next write may begin: a write that found a moved directory's old
                // key in the cache would file a new value under it.
                self.dir_keys.invalidate();
            }
            drop(serial);
            committed?;
            self.commits.mark_dirty();
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(result)
        })
    }

    /// A mark of the index's write transactions: `None` while one runs, else a number that
    /// changes whenever one has run. An operation that reads the index and then publishes
    /// something that a concurrent write transaction checks from inside it (the open-file
    /// table, which an unlink consults before removing a file) compares a mark taken before
    /// its reads with one taken after publishing: if they differ, or the first is `None`, a
    /// write may have checked before the publishing and committed after the reads, and the
    /// operation calls [`Index::wait_for_writes`] and reads again.
    pub fn write_mark(&self) -> Option<WriteMark> {
        self.writes_running.quiet()
    }

    /// Waits until the write transaction running now, if any, has committed or failed: it
    /// takes the write lock and drops it at once.
    pub fn wait_for_writes(&self) {
        drop(self.write_serial.lock());
    }

    /// How many write transactions [`Index::write`] has committed since the index was opened:
    /// what one filesystem operation costs the index, for tests and profiling. Most are held
    /// in memory and reach redb in batches (see [`Index::redb_write_count`]).
    pub fn write_count(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many redb write transactions have written held records (or a write committed at
    /// once) since the index was opened.
    pub fn redb_write_count(&self) -> u64 {
        self.held.commits()
    }

    /// How many records are held in memory, not yet written to redb.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// How many read transactions the index's lookups have begun since it was opened (with
    /// [`Index::write_count`], what one filesystem operation costs the index).
    pub fn read_count(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node `id`, or `NotFound`. A directory's record is answered from memory while no
    /// write has changed it (see `nodecache`).
    pub fn node(&self, id: NodeId) -> IndexResult<Node> {
        if let Some(n) = self.dir_nodes.get(id) {
            return Ok(n);
        }
        guard("node", || {
            let generation = self.dir_nodes.generation();
            let reading = self.read_txn()?;
            let table = reading.view();
            let n = get_node(&table, id)?
                .ok_or_else(|| IndexError::not_found(format!("no node {id}")))?;
            self.dir_nodes.insert(generation, id, &n);
            Ok(n)
        })
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: NodeId, name: &str) -> IndexResult<Option<(NodeId, Node)>> {
        guard("lookup", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            let Some((id, _)) = View::<_, Dirents>::new(&table).get((parent, name))? else {
                return Ok(None);
            };
            let node = get_node(&table, id)?.ok_or_else(|| {
                IndexError::corrupt(format!("entry {name:?} names missing node {id}"))
            })?;
            Ok(Some((id, node)))
        })
    }

    /// The node at `key`'s path: a file, a symlink or a directory (implied or explicit).
    pub fn resolve(&self, key: &Key) -> IndexResult<Option<(NodeId, Node)>> {
        guard("resolve", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            let dirents = View::<_, Dirents>::new(&table);
            let mut id = ROOT;
            for comp in key.components() {
                match dirents.get((id, comp))? {
                    Some((child, _)) => id = child,
                    None => return Ok(None),
                }
            }
            let node = get_node(&table, id)?.ok_or_else(|| {
                IndexError::corrupt(format!("path {key} names missing node {id}"))
            })?;
            Ok(Some((id, node)))
        })
    }

    /// The datastore key of node `id`, built from its ancestors' names (the nearest
    /// directory's key comes from a cache, see `keycache`).
    pub fn key_of(&self, id: NodeId) -> IndexResult<Key> {
        if id == ROOT {
            return Ok(Key::root());
        }
        guard("key_of", || {
            let generation = self.dir_keys.generation();
            let reading = self.read_txn()?;
            let table = reading.view();
            self.dir_keys.key_of(generation, &table, id)
        })
    }

    /// The size of the value at `key`, from the `keys` records; `None` if the key holds no
    /// value.
    pub fn value_size(&self, key: &Key) -> IndexResult<Option<u64>> {
        guard("value_size", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            Ok(View::<_, Keys>::new(&table)
                .get(key.as_str())?
                .map(|(_, size)| size))
        })
    }

    /// Up to `limit` entries of directory `dir` whose cookie is greater than `after` (0 starts
    /// at the beginning), in cookie order. Cookies never change while an entry exists, so a
    /// listing resumed after removals skips nothing and repeats nothing.
    pub fn list(&self, dir: NodeId, after: u64, limit: usize) -> IndexResult<Vec<DirEntry>> {
        guard("list", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            let lo = (dir, after.saturating_add(1));
            let hi = (dir, u64::MAX);
            let mut out = Vec::new();
            let range =
                View::<_, Cookies>::new(&table).range(Bound::Included(lo), Bound::Included(hi))?;
            for item in range.take(limit) {
                let ((_, cookie), (id, name)) = item?;
                let node = get_node(&table, id)?
                    .ok_or_else(|| IndexError::corrupt(format!("entry {name:?} names no node")))?;
                out.push(DirEntry {
                    name,
                    id,
                    cookie,
                    node,
                });
            }
            Ok(out)
        })
    }

    /// The number of entries in directory `dir` (a range scan of its cookies).
    pub fn entry_count(&self, dir: NodeId) -> IndexResult<u64> {
        guard("entry_count", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            let mut n = 0;
            for item in View::<_, Cookies>::new(&table)
                .range(Bound::Included((dir, 0)), Bound::Included((dir, u64::MAX)))?
            {
                item?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// The number of keys that hold values. Counted by a scan of the `keys` records the first
    /// time it is asked for, then kept up to date by every write (see `KeyCount`).
    pub fn key_count(&self) -> IndexResult<u64> {
        if let Some(n) = self.key_count.get() {
            return Ok(n);
        }
        guard("key_count", || {
            // No write commits during the scan, so the count is exact when it is stored.
            let _serial = self.write_serial.lock();
            let reading = self.read_txn()?;
            let table = reading.view();
            let mut n = 0;
            for item in View::<_, Keys>::new(&table).range(Bound::Unbounded, Bound::Unbounded)? {
                item?;
                n += 1;
            }
            self.key_count.set(n);
            Ok(n)
        })
    }

    /// Whether any key holds a value (cheaper than [`Index::key_count`] the first time).
    pub fn has_keys(&self) -> IndexResult<bool> {
        guard("has_keys", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            View::<_, Keys>::new(&table).any_in(Bound::Unbounded, Bound::Unbounded)
        })
    }

    /// Every key holding a value that is a strict descendant of `prefix` (all keys for `None`
    /// or `/`), in ascending byte order, streamed from one read transaction.
    pub fn keys(
        &self,
        prefix: Option<&Key>,
    ) -> IndexResult<impl Iterator<Item = IndexResult<KeyEntry>> + Send + 'static> {
        guard("keys", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            let (lo, hi) = match prefix_range(prefix) {
                Some((lo, hi)) => layout::bounds::<Keys>(
                    Bound::Included(lo.as_str()),
                    Bound::Excluded(hi.as_str()),
                ),
                None => layout::bounds::<Keys>(Bound::Unbounded, Bound::Unbounded),
            };
            // The table's own range keeps the transaction alive, and the held records in the
            // range are copied, so the stream outlives both.
            let range = table
                .range_raw(layout::as_slice(&lo), layout::as_slice(&hi))
                .map_err(|e| IndexError::redb("scanning keys", e))?;
            let entries = range.map(|item| {
                let (k, v) = item.map_err(|e| IndexError::redb("scanning keys", e))?;
                let (key, (id, size)) = layout::decode::<Keys>(&k, &v)?;
                let key = Key::from_raw(key)
                    .map_err(|e| IndexError::corrupt(format!("unclean key: {e}")))?;
                Ok(KeyEntry { key, id, size })
            });
            Ok(crate::redb_guard::iter(
                "index: scanning keys",
                entries,
                IndexError::corrupt,
            ))
        })
    }

    /// The extended attribute `name` of node `id`.
    pub fn xattr(&self, id: NodeId, name: &str) -> IndexResult<Option<Vec<u8>>> {
        guard("xattr", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            View::<_, Xattrs>::new(&table).get((id, name))
        })
    }

    /// The extra names (directory, name) of a hard-linked node `id`.
    pub fn aliases(&self, id: NodeId) -> IndexResult<Vec<(NodeId, String)>> {
        guard("aliases", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            aliases_of(&table, id)
        })
    }

    /// The names of node `id`'s extended attributes.
    pub fn xattr_names(&self, id: NodeId) -> IndexResult<Vec<String>> {
        guard("xattr_names", || {
            let reading = self.read_txn()?;
            let table = reading.view();
            Ok(xattrs_of(&table, id)?
                .into_iter()
                .map(|(name, _)| name)
                .collect())
        })
    }

    /// Records that `key` now holds a value of `size` bytes: creates the file node and any
    /// missing (implied) directories, or updates the size. Returns the node.
    pub fn record_put(&self, key: &Key, size: u64) -> IndexResult<NodeId> {
        let (id, listings) = self.write(|tx| {
            tx.track_listings(&self.changes);
            let id = tx.put_key(key, size)?;
            Ok((id, tx.take_listings()))
        })?;
        self.changes.tell(std::slice::from_ref(key), listings);
        Ok(id)
    }

    /// Records that `key` no longer holds a value: removes its file node (and implied
    /// directories left empty), or clears the value of a directory. Returns whether the key
    /// was indexed.
    pub fn record_delete(&self, key: &Key) -> IndexResult<bool> {
        let (was, listings) = self.write(|tx| {
            tx.track_listings(&self.changes);
            let was = tx.delete_key(key)?;
            Ok((was, tx.take_listings()))
        })?;
        self.changes.tell(std::slice::from_ref(key), listings);
        Ok(was)
    }

    /// Applies many puts (`Some(size)`) and deletes (`None`) in one transaction.
    pub fn record_batch<'k>(
        &self,
        ops: impl IntoIterator<Item = (&'k Key, Option<u64>)>,
    ) -> IndexResult<()> {
        let mut keys = Vec::new();
        let listings = self.write(|tx| {
            keys.clear();
            tx.track_listings(&self.changes);
            for (key, op) in ops {
                keys.push(key.clone());
                match op {
                    Some(size) => {
                        tx.put_key(key, size)?;
                    }
                    None => {
                        tx.delete_key(key)?;
                    }
                }
            }
            Ok(tx.take_listings())
        })?;
        self.changes.tell(&keys, listings);
        Ok(())
    }

    /// Removes every node, entry, key and xattr, leaving an empty root (for `reindex`). Runs
    /// in one redb transaction of its own, with the held records applied first, rather than
    /// through [`Index::write`]: a write holds a removal per record in memory until it
    /// commits, which for a large index is memory in proportion to the whole index.
    pub fn clear(&self) -> IndexResult<()> {
        guard("clear", || {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(IndexError::new(
                    IndexErrorKind::Closed,
                    "the index is closed",
                ));
            }
            let serial = self.write_serial.lock();
            let _running = self.writes_running.begin();
            let mut held = self.held.set.write();
            let what = "clearing the index";
            let txn = held::begin_unsynced(&self.db, what)?;
            {
                let mut table = txn
                    .open_table(INDEX)
                    .map_err(|e| IndexError::redb(what, e))?;
                self.held.apply_in(&held, &mut table)?;
                let mut root = get_node(&&mut table, ROOT)?
                    .ok_or_else(|| IndexError::not_found("no root node".to_string()))?;
                clear_records(&mut table)?;
                root.value = None;
                root.subdirs = 0;
                ViewMut::<_, Nodes>::new(&mut table).insert(ROOT, root.encode().as_slice())?;
            }
            let committed = txn.commit();
            if committed.is_ok() {
                self.held.applied(&mut held);
                self.key_count.set(0);
            }
            drop(held);
            // Whatever the outcome, no cached record can be trusted.
            self.dir_nodes.written(nodecache::Written::All, false);
            self.dir_keys.invalidate();
            drop(serial);
            committed.map_err(|e| IndexError::redb(what, e))?;
            self.commits.mark_dirty();
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // A dropped index was not closed: leave the open flag set only if close never ran.
        if let Err(e) = self.commits.stop() {
            log::error!("final index commit failed: {e}");
        }
    }
}

/// Runs index code that calls redb, turning a redb panic on a damaged file into a
/// [`IndexErrorKind::Corrupt`] error.
fn guard<T>(what: &str, f: impl FnOnce() -> IndexResult<T>) -> IndexResult<T> {
    crate::redb_guard::catch(&format!("index: {what}"), f, IndexError::corrupt)
}

/// The index's one table in a read transaction.
fn open_read(txn: &ReadTransaction) -> IndexResult<ReadOnlyTable<&'static [u8], &'static [u8]>> {
    txn.open_table(INDEX)
        .map_err(|e| IndexError::redb("opening the index table", e))
}

/// A read of the index (see [`Index::read_txn`]).
struct Reading<'a> {
    held: held::ReadGuard<'a, held::Set>,
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Reading<'_> {
    /// The committed table with the held records over it.
    fn view(&self) -> Layers<'_> {
        Layers {
            base: &self.table,
            held: Some(&self.held.map),
            local: None,
        }
    }
}

/// The index's records, as a read or a write transaction sees them.
trait IndexTable: Source {}

impl<T: Source> IndexTable for T {}

fn get_node(table: &impl IndexTable, id: NodeId) -> IndexResult<Option<Node>> {
    View::<_, Nodes>::new(table).get(id)
}

fn key_of(table: &impl IndexTable, id: NodeId) -> IndexResult<Key> {
    let mut parts = Vec::new();
    let mut cur = id;
    while cur != ROOT {
        let node =
            get_node(table, cur)?.ok_or_else(|| IndexError::not_found(format!("no node {cur}")))?;
        parts.push(node.name);
        if parts.len() > 100_000 {
            return Err(IndexError::corrupt("cycle in the parent chain"));
        }
        cur = node.parent;
    }
    parts.reverse();
    let mut s = String::new();
    for p in &parts {
        s.push('/');
        s.push_str(p);
    }
    Key::from_raw(s).map_err(|_| IndexError::corrupt(format!("node {id} has an unclean path")))
}

/// The extra names (directory, name) of node `id`.
fn aliases_of(table: &impl IndexTable, id: NodeId) -> IndexResult<Vec<(NodeId, String)>> {
    let mut out = Vec::new();
    for item in View::<_, Aliases>::new(table).range(
        Bound::Included((id, 0, "")),
        Bound::Excluded((id.saturating_add(1), 0, "")),
    )? {
        let ((_, parent, name), ()) = item?;
        out.push((parent, name));
    }
    Ok(out)
}

/// The extended attributes (name, value) of node `id`.
fn xattrs_of(table: &impl IndexTable, id: NodeId) -> IndexResult<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in View::<_, Xattrs>::new(table).range(
        Bound::Included((id, "")),
        Bound::Excluded((id.saturating_add(1), "")),
    )? {
        let ((_, name), value) = item?;
        out.push((name, value));
    }
    Ok(out)
}

/// The number of keys holding values, once counted (see [`Index::key_count`]): a count of the
/// `keys` records would be a scan of them all, so it is taken once and then kept by the
/// writes, each of which adds what it changed as it commits.
#[derive(Default)]
struct KeyCount(parking_lot::Mutex<Option<u64>>);

impl KeyCount {
    fn get(&self) -> Option<u64> {
        *self.0.lock()
    }

    fn set(&self, n: u64) {
        *self.0.lock() = Some(n);
    }

    /// A write committed that added `delta` keys (with `None`, an unknown number).
    fn add(&self, delta: Option<i64>) {
        let mut count = self.0.lock();
        *count = match (*count, delta) {
            (Some(n), Some(d)) => Some(n.saturating_add_signed(d)),
            _ => None,
        };
    }
}

/// How many node ids (or cookies) one write of the meta table reserves.
const COUNTER_BLOCK: u64 = 4096;

/// One id counter of the index (node ids, directory cookies). The meta table holds `bound`: no
/// id handed out so far reaches it. A write that needs an id at or past it raises it by
/// [`COUNTER_BLOCK`] in that same transaction, so every committed node or entry has an id below
/// the committed bound, and after a reopen (clean or after a crash) counting resumes at the bound
/// without handing any id out twice. The rest of a block a crash leaves unused is a gap, which
/// nothing depends on; a clean close writes `next` back instead.
#[derive(Clone, Copy, Debug)]
struct Counter {
    next: u64,
    bound: u64,
}

impl Counter {
    /// The counter that `name` of the meta table resumes at.
    fn resume<T: IndexTable>(meta: &View<T, Meta>, name: &str) -> IndexResult<Counter> {
        let at = meta
            .get(name)?
            .ok_or_else(|| IndexError::corrupt(format!("meta {name} missing")))?;
        Ok(Counter {
            next: at,
            bound: at,
        })
    }
}

/// The index's two counters, held under [`Index`]'s write lock.
#[derive(Clone, Copy, Debug)]
struct Counters {
    node: Counter,
    cookie: Counter,
}

/// One index write transaction: it reads the committed table with the held records and its own
/// changes over it, and writes only its own changes (see `held`). Obtained through
/// [`Index::write`].
pub struct Tx<'t> {
    /// The committed table, in a read transaction begun under the held records' read lock.
    base: &'t ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The held records (see `held`).
    held: &'t Overlay,
    /// This write's own changes, merged into the held records if it commits.
    local: Overlay,
    uid: u32,
    gid: u32,
    /// A directory got a new parent or name: cached directory keys are stale after commit.
    dirs_moved: bool,
    /// The nodes written: cached directory records are stale after commit.
    written: nodecache::Written,
    /// The listings this write changed, noted only for writes whose changes the listener is
    /// told of (see `changes`).
    listings: Option<changes::Listings>,
    /// The id counters as this write advanced them (kept only if it commits).
    counters: Counters,
    /// Keys this write added, less those it removed (`None` after a clear: see `KeyCount`).
    keys_added: Option<i64>,
}

impl<'t> Tx<'t> {
    fn open(
        base: &'t ReadOnlyTable<&'static [u8], &'static [u8]>,
        held: &'t Overlay,
        options: &IndexOptions,
        counters: Counters,
    ) -> Tx<'t> {
        Tx {
            base,
            held,
            local: Overlay::new(),
            uid: options.uid,
            gid: options.gid,
            dirs_moved: false,
            written: nodecache::Written::None,
            listings: None,
            counters,
            keys_added: Some(0),
        }
    }

    // Typed views of the one table (see `layout`).

    /// The records as this write sees them: the table, the held records, its own changes.
    fn table(&self) -> Layers<'_> {
        Layers {
            base: self.base,
            held: Some(self.held),
            local: Some(&self.local),
        }
    }

    fn sink(&mut self) -> LayersMut<'_> {
        LayersMut {
            base: self.base,
            held: Some(self.held),
            local: &mut self.local,
        }
    }

    fn t_meta_mut(&mut self) -> ViewMut<LayersMut<'_>, Meta> {
        ViewMut::new(self.sink())
    }

    /// The node records, to write node `id` (with `None`, any node).
    fn t_nodes_mut(
        &mut self,
        id: Option<NodeId>,
        node: Option<&Node>,
    ) -> ViewMut<LayersMut<'_>, Nodes> {
        self.written.note(id, node);
        ViewMut::new(self.sink())
    }

    fn t_dirents(&self) -> View<Layers<'_>, Dirents> {
        View::new(self.table())
    }

    fn t_dirents_mut(&mut self) -> ViewMut<LayersMut<'_>, Dirents> {
        ViewMut::new(self.sink())
    }

    fn t_cookies(&self) -> View<Layers<'_>, Cookies> {
        View::new(self.table())
    }

    fn t_cookies_mut(&mut self) -> ViewMut<LayersMut<'_>, Cookies> {
        ViewMut::new(self.sink())
    }

    fn t_xattrs(&self) -> View<Layers<'_>, Xattrs> {
        View::new(self.table())
    }

    fn t_xattrs_mut(&mut self) -> ViewMut<LayersMut<'_>, Xattrs> {
        ViewMut::new(self.sink())
    }

    fn t_aliases_mut(&mut self) -> ViewMut<LayersMut<'_>, Aliases> {
        ViewMut::new(self.sink())
    }

    /// The next node id. Ids are handed out from memory; only the write that reaches the end
    /// of a reserved block writes the meta table (see [`Counter`]).
    fn next_node_id(&mut self) -> IndexResult<u64> {
        let mut counter = self.counters.node;
        let id = self.advance(&mut counter, META_NEXT_ID)?;
        self.counters.node = counter;
        Ok(id)
    }

    /// The next directory cookie, handed out as [`Tx::next_node_id`] hands out ids.
    fn next_cookie(&mut self) -> IndexResult<u64> {
        let mut counter = self.counters.cookie;
        let id = self.advance(&mut counter, META_NEXT_COOKIE)?;
        self.counters.cookie = counter;
        Ok(id)
    }

    /// Takes the next number of `counter`, which the meta table keeps as `name`.
    fn advance(&mut self, counter: &mut Counter, name: &str) -> IndexResult<u64> {
        let id = counter.next;
        counter.next = id
            .checked_add(1)
            .ok_or_else(|| IndexError::corrupt(format!("meta {name} is exhausted")))?;
        if counter.next > counter.bound {
            counter.bound = id.saturating_add(COUNTER_BLOCK);
            self.t_meta_mut().set(name, counter.bound)?;
        }
        Ok(id)
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> IndexResult<Option<Node>> {
        get_node(&self.table(), id)
    }

    /// The node `id`, or a `NotFound` error.
    pub fn node_required(&self, id: NodeId) -> IndexResult<Node> {
        self.node(id)?
            .ok_or_else(|| IndexError::not_found(format!("no node {id}")))
    }

    /// Writes node `id`.
    pub fn put_node(&mut self, id: NodeId, node: &Node) -> IndexResult<()> {
        if !self.dirs_moved
            && node.is_dir()
            && self
                .node(id)?
                .is_some_and(|old| old.parent != node.parent || old.name != node.name)
        {
            self.dirs_moved = true;
        }
        self.write_node(id, node)
    }

    /// Writes node `id`, whose parent and name are unchanged.
    fn write_node(&mut self, id: NodeId, node: &Node) -> IndexResult<()> {
        self.t_nodes_mut(Some(id), Some(node))
            .set(id, node.encode().as_slice())
    }

    /// The child `name` of `parent`.
    pub fn lookup(&self, parent: NodeId, name: &str) -> IndexResult<Option<NodeId>> {
        Ok(self
            .t_dirents()
            .get((parent, name))?
            .map(|(child, _)| child))
    }

    /// The key of node `id`.
    pub fn key_of(&self, id: NodeId) -> IndexResult<Key> {
        key_of(&self.table(), id)
    }

    /// Whether directory `dir` has any entry.
    pub fn has_children(&self, dir: NodeId) -> IndexResult<bool> {
        self.t_cookies()
            .any_in(Bound::Included((dir, 0)), Bound::Included((dir, u64::MAX)))
    }

    /// Creates a node and enters it as `name` in `parent` (whose mtime/ctime it updates).
    pub fn create(&mut self, parent: NodeId, name: &str, mut node: Node) -> IndexResult<NodeId> {
        if self.lookup(parent, name)?.is_some() {
            return Err(IndexError::new(
                IndexErrorKind::AlreadyExists,
                format!("{name:?} exists"),
            ));
        }
        let id = self.next_node_id()?;
        node.parent = parent;
        node.name = name.to_owned();
        self.put_node(id, &node)?;
        self.link(parent, name, id, node.is_dir())?;
        Ok(id)
    }

    /// Enters existing node `child` as `name` in `parent` with a fresh cookie.
    pub fn link(
        &mut self,
        parent: NodeId,
        name: &str,
        child: NodeId,
        is_dir: bool,
    ) -> IndexResult<()> {
        let cookie = self.next_cookie()?;
        self.t_dirents_mut().set((parent, name), (child, cookie))?;
        self.t_cookies_mut().set((parent, cookie), (child, name))?;
        self.note_listing(parent, name);
        self.touch_dir(parent, if is_dir { 1 } else { 0 })
    }

    /// Removes the entry `name` from `parent` (not the node); returns the child it named.
    pub fn unlink(&mut self, parent: NodeId, name: &str) -> IndexResult<Option<NodeId>> {
        let Some((child, cookie)) = self.t_dirents_mut().remove((parent, name))? else {
            return Ok(None);
        };
        self.t_cookies_mut().remove((parent, cookie))?;
        let is_dir = self.node(child)?.map(|n| n.is_dir()).unwrap_or(false);
        self.note_listing(parent, name);
        self.touch_dir(parent, if is_dir { -1 } else { 0 })?;
        Ok(Some(child))
    }

    fn touch_dir(&mut self, dir: NodeId, subdir_delta: i32) -> IndexResult<()> {
        let mut node = self.node_required(dir)?;
        let now = Timestamp::now();
        node.mtime = now;
        node.ctime = now;
        node.subdirs = node.subdirs.saturating_add_signed(subdir_delta);
        self.write_node(dir, &node)
    }

    /// Deletes node `id`, its xattrs and its alias records (its entries must already be
    /// unlinked).
    pub fn remove_node(&mut self, id: NodeId) -> IndexResult<()> {
        self.t_nodes_mut(Some(id), None).remove(id)?;
        for (parent, name) in self.aliases(id)? {
            self.remove_alias(id, parent, &name)?;
        }
        for (name, _) in xattrs_of(&self.table(), id)? {
            self.t_xattrs_mut().remove((id, name.as_str()))?;
        }
        Ok(())
    }

    /// Records an extra name (hard link) of node `id`.
    pub fn add_alias(&mut self, id: NodeId, parent: NodeId, name: &str) -> IndexResult<()> {
        self.t_aliases_mut().set((id, parent, name), ())
    }

    /// Forgets an extra name of node `id`; returns whether it was recorded.
    pub fn remove_alias(&mut self, id: NodeId, parent: NodeId, name: &str) -> IndexResult<bool> {
        Ok(self.t_aliases_mut().remove((id, parent, name))?.is_some())
    }

    /// The extra names (directory, name) of node `id`.
    pub fn aliases(&self, id: NodeId) -> IndexResult<Vec<(NodeId, String)>> {
        aliases_of(&self.table(), id)
    }

    /// Records `key` in the `keys` table.
    pub fn set_key(&mut self, key: &Key, id: NodeId, size: u64) -> IndexResult<()> {
        let existed = ViewMut::<_, Keys>::new(self.sink()).insert(key.as_str(), (id, size))?;
        if !existed {
            self.keys_added = self.keys_added.map(|n| n + 1);
        }
        Ok(())
    }

    /// Removes `key` from the `keys` table; returns its node if it was there.
    pub fn remove_key(&mut self, key: &Key) -> IndexResult<Option<NodeId>> {
        Ok(self.take_key(key)?.map(|(id, _)| id))
    }

    /// Removes `key` from the `keys` table; returns its node and value size if it was there.
    pub fn take_key(&mut self, key: &Key) -> IndexResult<Option<(NodeId, u64)>> {
        let removed = ViewMut::<_, Keys>::new(self.sink()).remove(key.as_str())?;
        if removed.is_some() {
            self.keys_added = self.keys_added.map(|n| n - 1);
        }
        Ok(removed)
    }

    /// The extended attribute `name` of node `id`.
    pub fn xattr(&self, id: NodeId, name: &str) -> IndexResult<Option<Vec<u8>>> {
        self.t_xattrs().get((id, name))
    }

    /// Sets or removes (`None`) an extended attribute.
    pub fn set_xattr(&mut self, id: NodeId, name: &str, value: Option<&[u8]>) -> IndexResult<bool> {
        Ok(match value {
            Some(v) => self.t_xattrs_mut().insert((id, name), v)?,
            None => self.t_xattrs_mut().remove((id, name))?.is_some(),
        })
    }

    fn implied_dir(&self, parent: NodeId, name: &str) -> Node {
        Node::new(
            NodeKind::Dir,
            parent,
            name,
            node::DEFAULT_DIR_MODE,
            self.uid,
            self.gid,
        )
    }

    /// Ensures a directory exists for every component of `dir_key`, creating implied ones and
    /// turning a file on the way into a directory that keeps its value. Returns the directory.
    pub fn ensure_dirs(&mut self, dir_key: &Key) -> IndexResult<NodeId> {
        let mut id = ROOT;
        for comp in dir_key.components() {
            id = match self.lookup(id, comp)? {
                None => {
                    let node = self.implied_dir(id, comp);
                    self.create(id, comp, node)?
                }
                Some(child) => {
                    let mut node = self.node_required(child)?;
                    match node.kind {
                        NodeKind::Dir => {}
                        _ => {
                            if node.kind.is_index_only() {
                                log::warn!(
                                    "a key below {comp:?} replaces that {:?} with a directory",
                                    node.kind
                                );
                                node.target.clear();
                                node.rdev = 0;
                                node.value = None;
                            }
                            node.kind = NodeKind::Dir;
                            node.explicit = false;
                            node.mode = node::DEFAULT_DIR_MODE | (node.mode & 0o7000);
                            node.ctime = Timestamp::now();
                            self.put_node(child, &node)?;
                            self.note_listing(id, comp);
                            self.touch_dir(id, 1)?;
                        }
                    }
                    child
                }
            };
        }
        Ok(id)
    }

    /// Records that `key` holds a value of `size` bytes. See [`Index::record_put`].
    pub fn put_key(&mut self, key: &Key, size: u64) -> IndexResult<NodeId> {
        let now = Timestamp::now();
        let id = if key.is_root() {
            let mut root = self.node_required(ROOT)?;
            root.value = Some(size);
            root.mtime = now;
            root.ctime = now;
            self.put_node(ROOT, &root)?;
            ROOT
        } else {
            let parent = self.ensure_dirs(&key.parent())?;
            let name = key.base_namespace();
            match self.lookup(parent, name)? {
                None => {
                    let mut node = Node::new(
                        NodeKind::File,
                        parent,
                        name,
                        node::DEFAULT_FILE_MODE,
                        self.uid,
                        self.gid,
                    );
                    node.value = Some(size);
                    self.create(parent, name, node)?
                }
                Some(id) => {
                    let mut node = self.node_required(id)?;
                    if node.kind.is_index_only() {
                        log::warn!("a value stored at {key} replaces a {:?}", node.kind);
                        node.kind = NodeKind::File;
                        node.target.clear();
                        node.rdev = 0;
                    }
                    node.value = Some(size);
                    node.mtime = now;
                    node.ctime = now;
                    self.put_node(id, &node)?;
                    id
                }
            }
        };
        self.set_key(key, id, size)?;
        Ok(id)
    }

    /// Records that `key` holds no value. See [`Index::record_delete`].
    pub fn delete_key(&mut self, key: &Key) -> IndexResult<bool> {
        let Some(id) = self.remove_key(key)? else {
            return Ok(false);
        };
        let Some(mut node) = self.node(id)? else {
            return Ok(true);
        };
        match node.kind {
            NodeKind::File
            | NodeKind::Symlink
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice
            | NodeKind::Socket => {
                // Every name of the node goes with its value, hard links included.
                for (parent, name) in self.aliases(id)? {
                    self.unlink(parent, &name)?;
                    self.prune(parent)?;
                }
                self.unlink(node.parent, &node.name)?;
                self.remove_node(id)?;
                self.prune(node.parent)?;
            }
            NodeKind::Dir => {
                node.value = None;
                node.ctime = Timestamp::now();
                self.put_node(id, &node)?;
                self.prune(id)?;
            }
        }
        Ok(true)
    }

    /// Walks up from `dir`: an implied directory with no entries goes away (or, if its key
    /// still holds a value, becomes a file again); explicit directories and the root stay.
    pub fn prune(&mut self, mut dir: NodeId) -> IndexResult<()> {
        while dir != ROOT {
            let Some(mut node) = self.node(dir)? else {
                return Ok(());
            };
            if node.kind != NodeKind::Dir || node.explicit || self.has_children(dir)? {
                return Ok(());
            }
            let parent = node.parent;
            if node.value.is_some() {
                node.kind = NodeKind::File;
                node.mode = node::DEFAULT_FILE_MODE | (node.mode & 0o7000);
                node.ctime = Timestamp::now();
                node.subdirs = 0;
                self.put_node(dir, &node)?;
                self.note_listing(parent, &node.name);
                self.touch_dir(parent, -1)?;
                return Ok(());
            }
            self.unlink(parent, &node.name)?;
            self.remove_node(dir)?;
            dir = parent;
        }
        Ok(())
    }

    /// Removes every record but the meta records and resets the root.
    pub fn clear(&mut self) -> IndexResult<()> {
        let root = self.node_required(ROOT)?;
        self.keys_added = None;
        self.written.note(None, None);
        clear_records(self.sink())?;
        let mut fresh = root;
        fresh.value = None;
        fresh.subdirs = 0;
        self.put_node(ROOT, &fresh)
    }
}

/// Removes every node, entry, key, xattr and alias record through `sink`, leaving the meta
/// records: the clear that [`Tx::clear`] (reindex) and [`Index::clear`] (a build) share. The
/// caller writes the root back.
fn clear_records<S: Sink>(sink: S) -> IndexResult<()> {
    let mut v = ViewMut::<S, Dirents>::new(sink);
    v.clear()?;
    let mut v = ViewMut::<S, Cookies>::new(v.into_sink());
    v.clear()?;
    let mut v = ViewMut::<S, Keys>::new(v.into_sink());
    v.clear()?;
    let mut v = ViewMut::<S, Xattrs>::new(v.into_sink());
    v.clear()?;
    let mut v = ViewMut::<S, Aliases>::new(v.into_sink());
    v.clear()?;
    ViewMut::<S, Nodes>::new(v.into_sink()).clear()
}

#[cfg(test)]
mod tests;
