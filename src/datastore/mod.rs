//! The datastore contract: go-datastore's model in synchronous Rust.
//!
//! This module names no backend. A [`Datastore`] is `Send + Sync`, takes `&self` everywhere and is
//! object safe, so the layers above hold an `Arc<dyn Datastore>` and never know which store
//! answers. The semantics are go-datastore's (see `docs/SEMANTICS.md` and the conformance suite
//! in `tests/conformance/`):
//!
//! * `get`/`get_size`/`read_at` of a missing key fail with exactly [`ErrorKind::NotFound`];
//! * `has` of a missing key is `Ok(false)`; `delete` of a missing key is `Ok(())`;
//! * `query` follows [`query::naive_apply`] (strict-children prefix, filters, orders with the key
//!   tie-break, then offset and limit);
//! * a batch applies the last operation recorded per key, and nothing before `commit`;
//! * `sync(prefix)` makes every write under `prefix` that returned before it durable.

pub mod digest;
mod direct;
pub mod error;
pub mod faulty;
pub mod key;
pub mod query;
pub mod stage;

use std::collections::BTreeMap;

pub use error::{Error, ErrorKind, Result};
pub use key::Key;
pub use query::{Entry, Filter, Op, Order, Query, Results};
pub use stage::{MEMORY_LIMIT, OverlaySource, SpillTo, StageInit, Staged};

/// What a store guarantees and how it behaves, as data. The conformance suite checks every
/// guarantee that a store claims here, and skips (reporting them as ignored) the cases a store
/// rules out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Query results come in ascending bytewise key order without sorting.
    pub ordered_scan: bool,
    /// `read_at` costs in proportion to the bytes read, not to the whole value.
    pub ranged_read: bool,
    /// A crash during `put` leaves the old value or the new one, never a mix.
    pub atomic_put: bool,
    /// A crash during a batch commit leaves all of the batch applied or none of it.
    pub atomic_batch: bool,
    /// A `put` is durable when it returns, without `sync`.
    pub durable_put: bool,
    /// Values survive closing and reopening the store.
    pub persistent: bool,
    /// Any clean key is accepted (many components, any characters). flatfs accepts only one
    /// component in its own alphabet.
    pub general_keys: bool,
    /// Some values are plain files that can be handed to the kernel: for those keys
    /// [`Datastore::backing_file`] names the file (which keys depends on the store: all of
    /// flatfs's, the large values of a tiered store, one child's in a mount).
    pub file_backed: bool,
    /// [`Datastore::rename`] of a value is atomic: after a crash the value is under the old key
    /// or the new one, never under both. Without it a crash can leave it under both (never
    /// under neither).
    pub atomic_rename: bool,
    /// [`Datastore::rename`] costs the same for any value size (no value bytes are copied).
    pub cheap_rename: bool,
    /// The largest value the store accepts, if it has a limit.
    pub max_value_size: Option<u64>,
    /// The longest key (in bytes) the store accepts, if it has a limit; longer keys are
    /// refused with [`ErrorKind::InvalidKey`].
    pub max_key_len: Option<usize>,
}

impl Capabilities {
    /// The guarantees of a volatile, general, ordered in-memory store.
    pub const fn memory() -> Capabilities {
        Capabilities {
            ordered_scan: true,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: true,
            durable_put: false,
            persistent: false,
            general_keys: true,
            file_backed: false,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: None,
        }
    }
}

/// The space a store has, in bytes, as `statfs` reports it and as the store enforces it (a
/// write beyond `available` fails with [`ErrorKind::NoSpace`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// The store's whole capacity.
    pub total: u64,
    /// Bytes not in use.
    pub free: u64,
    /// Bytes this store's writes may still use (at most `free`: replication, quotas and
    /// reserves take their share).
    pub available: u64,
}

/// A group of writes applied together by [`Batch::commit`]. A batch is not a transaction unless
/// the store's capabilities say `atomic_batch`; nothing is visible before `commit`, and the last
/// operation recorded for a key is the one applied. A batch must not be used after `commit`,
/// which the type system enforces by consuming it.
pub trait Batch: Send {
    /// Records a put of `value` at `key`, replacing any earlier operation on `key`.
    fn put(&mut self, key: Key, value: Vec<u8>) -> Result<()>;
    /// Records a delete of `key`, replacing any earlier operation on `key`.
    fn delete(&mut self, key: Key) -> Result<()>;
    /// Applies the recorded operations.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// The operations of a batch, last operation per key: `Some(value)` puts, `None` deletes.
pub type BatchOps = BTreeMap<Key, Option<Vec<u8>>>;

/// A batch that records operations in memory and hands them to
/// [`Datastore::apply_batch`] on commit. Stores with their own batch format (flatfs stages
/// files) implement [`Batch`] themselves.
pub struct BasicBatch<'a, D: Datastore + ?Sized> {
    store: &'a D,
    ops: BatchOps,
}

impl<'a, D: Datastore + ?Sized> BasicBatch<'a, D> {
    /// An empty batch over `store`.
    pub fn new(store: &'a D) -> Self {
        BasicBatch {
            store,
            ops: BTreeMap::new(),
        }
    }
}

impl<D: Datastore + ?Sized> Batch for BasicBatch<'_, D> {
    fn put(&mut self, key: Key, value: Vec<u8>) -> Result<()> {
        self.ops.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: Key) -> Result<()> {
        self.ops.insert(key, None);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.store.apply_batch(self.ops)
    }
}

/// A key-value store with go-datastore semantics. See the module documentation for the
/// contract every implementation keeps; the conformance suite checks it.
pub trait Datastore: Send + Sync {
    /// The whole value at `key`, or [`ErrorKind::NotFound`].
    fn get(&self, key: &Key) -> Result<Vec<u8>>;

    /// Whether `key` holds a value. A missing key is `Ok(false)`, not an error.
    fn has(&self, key: &Key) -> Result<bool>;

    /// The length of the value at `key`, or [`ErrorKind::NotFound`].
    fn get_size(&self, key: &Key) -> Result<u64>;

    /// Reads up to `buf.len()` bytes of the value at `key`, starting at `offset`, and returns how
    /// many were read: fewer at the end of the value, 0 at or past it. A missing key is
    /// [`ErrorKind::NotFound`]. The default reads the whole value; stores with
    /// `ranged_read` override it.
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let value = self.get(key)?;
        Ok(copy_range(&value, offset, buf))
    }

    /// Stores `value` at `key`, replacing any value there.
    fn put(&self, key: &Key, value: &[u8]) -> Result<()>;

    /// Removes `key`. Removing a missing key is `Ok(())`.
    fn delete(&self, key: &Key) -> Result<()>;

    /// Runs `query`. The results carry the query exactly as passed in.
    fn query(&self, query: Query) -> Result<Results>;

    /// Makes every write under `prefix` that returned before this call durable. Syncing more than
    /// the prefix is allowed; `/` syncs everything.
    fn sync(&self, prefix: &Key) -> Result<()>;

    /// Flushes and releases the store. Further writes fail with [`ErrorKind::Closed`]; reads may
    /// keep working (as flatfs's do). Closing twice is `Ok(())`.
    fn close(&self) -> Result<()>;

    /// What this store guarantees.
    fn capabilities(&self) -> Capabilities;

    /// A new batch. The default records operations and commits through
    /// [`Datastore::apply_batch`].
    fn batch(&self) -> Result<Box<dyn Batch + '_>> {
        Ok(Box::new(BasicBatch::new(self)))
    }

    /// Applies batch operations. The default applies them one by one in key order and stops at
    /// the first error (no rollback, like go-datastore's basic batch); stores with
    /// `atomic_batch` apply them in one transaction.
    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        for (key, op) in ops {
            match op {
                Some(value) => self.put(&key, &value)?,
                None => self.delete(&key)?,
            }
        }
        Ok(())
    }

    /// Moves the value at `from` to `to`, replacing any value at `to`. A missing `from` is
    /// [`ErrorKind::NotFound`]. The default copies through a staging file and then deletes
    /// `from`, so a crash in between leaves the value under both keys but never under neither;
    /// stores that can move atomically (a file rename, one transaction) override it.
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        if from == to {
            return if self.has(from)? {
                Ok(())
            } else {
                Err(Error::not_found())
            };
        }
        if !self.has(from)? {
            return Err(Error::not_found());
        }
        let staged = self.stage(from, StageInit::CopyCurrent)?;
        self.commit_staged(to, staged, false)?;
        self.delete(from)
    }

    /// Swaps the values of `a` and `b` (both must hold one; a missing one is
    /// [`ErrorKind::NotFound`]) atomically, also across a crash, without copying either value.
    /// Stores that cannot do that refuse with [`ErrorKind::Unsupported`], the default.
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        let _ = (a, b);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this store cannot swap two values atomically",
        ))
    }

    /// Checks the store's own invariants (go-datastore's `Scrubbed`/`Checked` features) and,
    /// with `repair`, fixes what it can. Returns a description of each problem found. The
    /// default has nothing to check.
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        let _ = repair;
        Ok(Vec::new())
    }

    /// [`Datastore::scrub`], and also reads every value the store can check against a recorded
    /// hash (a truncated or altered file is reported, and with `repair` its key is removed).
    /// The default is `scrub`.
    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        self.scrub(repair)
    }

    /// Space used on disk, if the store can tell (go-datastore's `PersistentDatastore`).
    fn disk_usage(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The space the store has, for `statfs`. `Ok(None)` (the default) means the store keeps
    /// its values in local files, and the filesystem that holds [`Datastore::staging_dir`]
    /// tells.
    fn space(&self) -> Result<Option<Space>> {
        Ok(None)
    }

    /// Opens a staging area for a new value of `key`, seeded as `init` says. The filesystem
    /// writes into it at random offsets and commits it with [`Datastore::commit_staged`], so a
    /// large value is never rewritten per write. The default stages in memory up to
    /// [`MEMORY_LIMIT`] bytes and beyond that in an unlinked temporary file in
    /// [`Datastore::staging_dir`].
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        let staged =
            Staged::memory(MEMORY_LIMIT, SpillTo::Anonymous(self.staging_dir())).hashing()?;
        if init == StageInit::CopyCurrent {
            match self.get(key) {
                Ok(value) => staged.write_all_at(0, &value)?,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(staged)
    }

    /// Replaces the value of `key` with the staged bytes, atomically as `put` is; with `durable`
    /// the new value is durable when this returns. The default reads the staged bytes and calls
    /// `put` (and `sync`); file-backed stores rename the staging file into place instead.
    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        let value = staged.read_all()?;
        self.put(key, &value)?;
        if durable {
            self.sync(key)?;
        }
        Ok(())
    }

    /// Where [`Datastore::stage`]'s default puts its temporary files.
    fn staging_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
    }

    /// For file-backed stores: the path of the file that holds `key`'s value, which the
    /// filesystem may open and hand to the kernel. `Ok(None)` when values are not plain files.
    fn backing_file(&self, key: &Key) -> Result<Option<std::path::PathBuf>> {
        let _ = key;
        Ok(None)
    }

    /// The file [`Datastore::backing_file`] names, opened for reading, if it is a regular file
    /// in the store: a symlink or another file type there is [`ErrorKind::Corrupt`], never
    /// the file it points to. The default opens the path with `O_NOFOLLOW`; stores with a
    /// root directory open beneath it without following any symlink.
    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        let Some(path) = self.backing_file(key)? else {
            return Ok(None);
        };
        match crate::sys::open_regular_nofollow(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found()),
            Err(e) if crate::sys::is_foreign_file(&e) => Err(Error::new(
                ErrorKind::Corrupt,
                format!("{} is a symlink or not a regular file: {e}", path.display()),
            )),
            Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
        }
    }

    /// Which store this is, as a string an index records to tell whether it was built for this
    /// store: the store's type and layout and an id kept in the store (flatfs writes one the
    /// first time it is asked). `None`: the store has no identity of its own (an index always
    /// opened beside it, or a volatile store).
    fn identity(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Whether programs other than this process may add, change or remove values under `key`
    /// while the store is open (a flatfs directory a running Kubo writes). Indexes revalidate
    /// such keys against the store; stores that only their owner can write return `false`.
    fn shared(&self, key: &Key) -> bool {
        let _ = key;
        false
    }

    /// The store's segments (a flatfs shard directory each) with a stamp that changes whenever
    /// an entry is added, removed or renamed in it, so an index can find what changed by looking
    /// at every segment's stamp instead of every key. `Ok(None)` for stores without segments.
    fn segments(&self) -> Result<Option<Vec<Segment>>> {
        Ok(None)
    }

    /// The segment that holds `key`, if the store has segments and could hold `key`.
    fn segment_of(&self, key: &Key) -> Option<String> {
        let _ = key;
        None
    }

    /// Whether the store has [`Datastore::segments`] and also keys in no segment (a mount of a
    /// flatfs directory beside a store without segments, as a repository is): an index built
    /// from the segments must list those keys as well.
    fn partly_segmented(&self) -> Result<bool> {
        Ok(false)
    }

    /// Every key in `segment` with the size of its value (any order). A segment that does not
    /// exist holds no keys.
    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("this store has no segments (asked for {segment:?})"),
        ))
    }
}

/// One segment of a store (see [`Datastore::segments`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The segment's name, as [`Datastore::segment_of`] and [`Datastore::segment_keys`] use it.
    pub name: String,
    /// Changes whenever an entry of the segment is added, removed or renamed.
    pub stamp: String,
    /// The stamp is old enough that a change made in the same clock tick as the last one would
    /// have changed it too. An unsettled stamp is not trusted: the segment is scanned again.
    pub settled: bool,
}

/// Copies `value[offset..]` into `buf` and returns the count; 0 at or past the end.
pub fn copy_range(value: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let Ok(start) = usize::try_from(offset) else {
        return 0;
    };
    if start >= value.len() {
        return 0;
    }
    let n = buf.len().min(value.len() - start);
    buf[..n].copy_from_slice(&value[start..start + n]);
    n
}

/// go-datastore's `GetBackedHas`: `has` through `get`.
pub fn get_backed_has(ds: &dyn Datastore, key: &Key) -> Result<bool> {
    match ds.get(key) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

impl<T: Datastore + ?Sized> Datastore for std::sync::Arc<T> {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        (**self).get(key)
    }
    fn has(&self, key: &Key) -> Result<bool> {
        (**self).has(key)
    }
    fn get_size(&self, key: &Key) -> Result<u64> {
        (**self).get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        (**self).read_at(key, offset, buf)
    }
    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        (**self).put(key, value)
    }
    fn delete(&self, key: &Key) -> Result<()> {
        (**self).delete(key)
    }
    fn query(&self, query: Query) -> Result<Results> {
        (**self).query(query)
    }
    fn sync(&self, prefix: &Key) -> Result<()> {
        (**self).sync(prefix)
    }
    fn close(&self) -> Result<()> {
        (**self).close()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn batch(&self) -> Result<Box<dyn Batch + '_>> {
        (**self).batch()
    }
    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        (**self).apply_batch(ops)
    }
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        (**self).rename(from, to)
    }
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        (**self).exchange(a, b)
    }
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        (**self).scrub(repair)
    }
    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        (**self).verify(repair)
    }
    fn disk_usage(&self) -> Result<Option<u64>> {
        (**self).disk_usage()
    }
    fn space(&self) -> Result<Option<Space>> {
        (**self).space()
    }
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        (**self).stage(key, init)
    }
    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        (**self).commit_staged(key, staged, durable)
    }
    fn staging_dir(&self) -> std::path::PathBuf {
        (**self).staging_dir()
    }
    fn backing_file(&self, key: &Key) -> Result<Option<std::path::PathBuf>> {
        (**self).backing_file(key)
    }
    fn identity(&self) -> Result<Option<String>> {
        (**self).identity()
    }
    fn shared(&self, key: &Key) -> bool {
        (**self).shared(key)
    }
    fn segments(&self) -> Result<Option<Vec<Segment>>> {
        (**self).segments()
    }
    fn segment_of(&self, key: &Key) -> Option<String> {
        (**self).segment_of(key)
    }
    fn partly_segmented(&self) -> Result<bool> {
        (**self).partly_segmented()
    }
    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        (**self).segment_keys(segment)
    }
    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        (**self).open_backing(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_range_handles_boundaries() {
        let v = b"hello";
        let mut buf = [0u8; 3];
        assert_eq!(copy_range(v, 0, &mut buf), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(copy_range(v, 3, &mut buf), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(copy_range(v, 5, &mut buf), 0);
        assert_eq!(copy_range(v, u64::MAX, &mut buf), 0);
    }

    fn assert_object_safe(_: &dyn Datastore) {}

    #[test]
    fn the_trait_is_object_safe() {
        let _ = assert_object_safe;
    }
}
