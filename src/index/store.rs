//! `IndexedStore`: a datastore whose key listing, `has`, `get_size` and prefix queries come from
//! the index, and whose bytes come from the backend.
//!
//! Write order, for crash safety: a put writes the value to the backend first and then records
//! it in the index; a delete removes the key from the index first and then from the backend.
//! Index updates are grouped (made durable within a bounded delay or by `sync`), so after a crash
//! the index may lag the backend in either direction; [`super::reconcile`] finds and repairs
//! that, and the index's open flag tells whether a crash happened.

use std::sync::Arc;
use std::time::Duration;

use super::follow::{DEFAULT_REVALIDATE, Follower, Prepared};
use super::{Index, IndexResult};
use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, Key, Query, Result, Results, StageInit, Staged,
};

/// A backend plus the index that lists its keys.
pub struct IndexedStore {
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
    follower: Follower,
    /// Whether the backend has segments that others may write (asked once).
    follows: std::sync::OnceLock<bool>,
}

impl IndexedStore {
    /// Pairs `backend` with `index`. The caller decides whether to reconcile them first (see
    /// [`Index::was_unclean`] and [`super::reconcile::check`]).
    pub fn new(backend: Arc<dyn Datastore>, index: Arc<Index>) -> IndexedStore {
        IndexedStore {
            backend,
            index,
            follower: Follower::new(DEFAULT_REVALIDATE),
            follows: std::sync::OnceLock::new(),
        }
    }

    /// Whether this store is revalidated at all: the interval is not zero and the backend has
    /// parts that other programs may write (segments).
    pub fn follows(&self) -> bool {
        !self.follower.interval().is_zero()
            && *self.follows.get_or_init(|| match self.backend.segments() {
                Ok(segments) => segments.is_some(),
                Err(e) => {
                    log::warn!("cannot list the store's segments: {e}");
                    false
                }
            })
    }

    /// How often keys that other programs may write ([`Datastore::shared`]) are revalidated
    /// against the store; zero never revalidates. Keys only dsfs writes are never revalidated.
    pub fn set_revalidate(&self, interval: Duration) {
        self.follower.set_interval(interval);
    }

    /// The revalidation interval.
    pub fn revalidate_interval(&self) -> Duration {
        self.follower.interval()
    }

    /// Checks the store's segments for changes made by other programs, if the revalidation
    /// interval has passed since the last check (O(segments), plus a re-read of the changed
    /// ones).
    pub fn revalidate(&self) -> IndexResult<()> {
        self.follower
            .segments_if_due(&self.index, self.backend.as_ref())
    }

    /// For a key the index does not list, in a part of the store others may write: asks the
    /// store, and records the key if it holds a value. Returns the value's size.
    pub fn discover(&self, key: &Key) -> IndexResult<Option<u64>> {
        if self.follower.interval().is_zero() || !self.backend.shared(key) {
            return Ok(None);
        }
        let Some(since) = self.index.moves.quiet() else {
            return Ok(None);
        };
        match self.backend.get_size(key) {
            Ok(size) => {
                // A rename's value on its way to its new key is not a new file.
                let Some(_quiet) = self.index.moves.still_quiet(since) else {
                    return Ok(None);
                };
                log::debug!("{key} appeared in the store; indexing it");
                self.index.record_put(key, size)?;
                Ok(Some(size))
            }
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// For a key the index lists with a value of `listed` bytes, in a part of the store others
    /// may write: at most once per interval, asks the store for the value's size and updates the
    /// index (a value rewritten in place) or removes the key (a value deleted underneath).
    /// Returns the current size, or `None` if the value is gone.
    pub fn revalidate_key(&self, key: &Key, listed: u64) -> IndexResult<Option<u64>> {
        if !self.backend.shared(key) || !self.follower.key_due(key) {
            return Ok(Some(listed));
        }
        self.recheck_key(key, listed)
    }

    /// Like [`IndexedStore::revalidate_key`], but now, whatever the interval: for a value the
    /// store just failed to find.
    ///
    /// While a rename is moving values (see [`Index::begin_move`]), a value missing or changed
    /// may be its doing: the index is left as it is and `listed` returned.
    pub fn recheck_key(&self, key: &Key, listed: u64) -> IndexResult<Option<u64>> {
        let Some(since) = self.index.moves.quiet() else {
            return Ok(Some(listed));
        };
        let now = match self.backend.get_size(key) {
            Ok(size) if size == listed => return Ok(Some(size)),
            Ok(size) => Some(size),
            Err(e) if absent(&e) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(_quiet) = self.index.moves.still_quiet(since) else {
            return Ok(Some(listed));
        };
        match now {
            Some(size) => {
                log::debug!("{key} was rewritten underneath ({listed} -> {size} bytes)");
                self.index.record_put(key, size)?;
            }
            None => {
                log::debug!("{key} was deleted underneath; forgetting it");
                self.index.record_delete(key)?;
            }
        }
        Ok(now)
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Datastore> {
        &self.backend
    }
}

impl Datastore for IndexedStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.backend.get(key)
    }

    fn has(&self, key: &Key) -> Result<bool> {
        Ok(self.index.value_size(key)?.is_some())
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        self.index.value_size(key)?.ok_or_else(Error::not_found)
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.backend.read_at(key, offset, buf)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.backend.put(key, value)?;
        self.index.record_put(key, value.len() as u64)?;
        Ok(())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.index.record_delete(key)?;
        self.backend.delete(key)
    }

    fn query(&self, q: Query) -> Result<Results> {
        let prefix = q.prefix_key();
        let keys = self.index.keys(prefix.as_ref())?;
        let keys_only = q.keys_only;
        let backend = self.backend.clone();
        let entries: EntryIter = Box::new(keys.filter_map(move |item| {
            let ke = match item {
                Ok(ke) => ke,
                Err(e) => return Some(Err(Error::from(e))),
            };
            if keys_only {
                return Some(Ok(Entry::key_only(ke.key, Some(ke.size))));
            }
            match backend.get(&ke.key) {
                Ok(v) => Some(Ok(Entry::with_value(ke.key, v))),
                // Listed but gone: the index lags a delete (or a crash); fsck repairs it.
                Err(e) if e.is_not_found() => {
                    log::warn!("index lists {} but the store has no value for it", ke.key);
                    None
                }
                Err(e) => Some(Err(e)),
            }
        }));
        let it = query::naive_apply(&q, entries, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, prefix: &Key) -> Result<()> {
        self.backend.sync(prefix)?;
        self.index.sync()?;
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let index = self.index.close().map_err(Error::from);
        let backend = self.backend.close();
        index.and(backend)
    }

    /// The backend's guarantees, except that queries come in key order (from the index), and
    /// that a batch is not atomic to concurrent readers: a query lists keys from the index and
    /// reads values from the backend, which a batch updates one after the other. (After a
    /// crash a batch is still all-or-nothing in the backend, and fsck re-lists it.)
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: true,
            atomic_batch: false,
            ..self.backend.capabilities()
        }
    }

    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        let deletes: Vec<&Key> = ops
            .iter()
            .filter(|(_, op)| op.is_none())
            .map(|(k, _)| k)
            .collect();
        if !deletes.is_empty() {
            self.index
                .record_batch(deletes.iter().map(|k| (*k, None)))?;
        }
        let sizes: Vec<(Key, Option<u64>)> = ops
            .iter()
            .filter_map(|(k, op)| op.as_ref().map(|v| (k.clone(), Some(v.len() as u64))))
            .collect();
        let mut batch = self.backend.batch()?;
        for (key, op) in ops {
            match op {
                Some(value) => batch.put(key, value)?,
                None => batch.delete(key)?,
            }
        }
        batch.commit()?;
        if !sizes.is_empty() {
            self.index
                .record_batch(sizes.iter().map(|(k, s)| (k, *s)))?;
        }
        Ok(())
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        let size = self.index.value_size(from)?.ok_or_else(Error::not_found)?;
        self.backend.rename(from, to)?;
        self.index.record_batch([(from, None), (to, Some(size))])?;
        Ok(())
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.backend.scrub(repair)
    }

    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        self.backend.verify(repair)
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        self.backend.disk_usage()
    }

    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        self.backend.stage(key, init)
    }

    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        let size = staged.len()?;
        self.backend.commit_staged(key, staged, durable)?;
        self.index.record_put(key, size)?;
        if durable {
            self.index.sync()?;
        }
        Ok(())
    }

    fn space(&self) -> Result<Option<crate::datastore::Space>> {
        self.backend.space()
    }

    fn staging_dir(&self) -> std::path::PathBuf {
        self.backend.staging_dir()
    }

    fn backing_file(&self, key: &Key) -> Result<Option<std::path::PathBuf>> {
        self.backend.backing_file(key)
    }

    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        self.backend.exchange(a, b)
    }

    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        self.backend.open_backing(key)
    }
}

/// Whether a store error means that the key holds no value there.
fn absent(e: &Error) -> bool {
    match e.kind() {
        crate::datastore::ErrorKind::NotFound
        | crate::datastore::ErrorKind::InvalidKey
        | crate::datastore::ErrorKind::NoMount => true,
        crate::datastore::ErrorKind::InvalidArgument
        | crate::datastore::ErrorKind::Closed
        | crate::datastore::ErrorKind::Unsupported
        | crate::datastore::ErrorKind::ReadOnly
        | crate::datastore::ErrorKind::NoSpace
        | crate::datastore::ErrorKind::AlreadyExists
        | crate::datastore::ErrorKind::Locked
        | crate::datastore::ErrorKind::Corrupt
        | crate::datastore::ErrorKind::TimedOut
        | crate::datastore::ErrorKind::Unavailable
        | crate::datastore::ErrorKind::Io => false,
    }
}

/// Opens `backend` with `index`, first bringing the index in step with the store
/// ([`super::follow::prepare`]: built when new or built for another store, reconciled after an
/// unclean stop, changed segments re-read). `progress` is called with the keys done so far.
pub fn open_following(
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<(IndexedStore, Prepared)> {
    let started = std::time::Instant::now();
    let prepared = super::follow::prepare(&index, backend.as_ref(), progress)?;
    match &prepared {
        Prepared::Unchanged => {}
        Prepared::Built { keys, reason } => {
            let secs = started.elapsed().as_secs_f64();
            log::info!(
                "indexed {keys} keys of the store in {secs:.2} s ({:.0} keys/s; the index was \
                 {reason})",
                *keys as f64 / secs.max(1e-9)
            );
        }
        Prepared::Reconciled(report) => {
            if !report.is_consistent() {
                log::warn!("repaired the index: {}", report.summary());
            }
        }
        Prepared::Followed(_) => {}
    }
    Ok((IndexedStore::new(backend, index), prepared))
}

/// [`open_following`] without progress, returning only what a repair after an unclean stop
/// changed (the index is still built or followed as [`super::follow::prepare`] says).
pub fn open_reconciled(
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
) -> IndexResult<(IndexedStore, Option<super::reconcile::Report>)> {
    let unclean = index.was_unclean();
    let (store, prepared) = open_following(backend, index, &mut |_| {})?;
    Ok((store, prepared.unclean_repair(unclean)))
}
