//! `IndexedStore`: a datastore whose key listing, `has`, `get_size` and prefix queries come from
//! the index, and whose bytes come from the backend.
//!
//! Write order, for crash safety: a put writes the value to the backend first and then records
//! it in the index; a delete removes the key from the index first and then from the backend.
//! Index updates are grouped (made durable within a bounded delay or by `sync`), so after a crash
//! the index may lag the backend in either direction; [`super::reconcile`] finds and repairs
//! that, and the index's open flag tells whether a crash happened.

use std::sync::Arc;

use super::{Index, IndexResult};
use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, Key, Query, Result, Results, StageInit, Staged,
};

/// A backend plus the index that lists its keys.
pub struct IndexedStore {
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
}

impl IndexedStore {
    /// Pairs `backend` with `index`. The caller decides whether to reconcile them first (see
    /// [`Index::was_unclean`] and [`super::reconcile::check`]).
    pub fn new(backend: Arc<dyn Datastore>, index: Arc<Index>) -> IndexedStore {
        IndexedStore { backend, index }
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
}

/// Opens `backend` with `index`, reconciling them first when the index was not closed cleanly
/// and the backend can enumerate its keys. Returns the store and what the repair changed.
pub fn open_reconciled(
    backend: Arc<dyn Datastore>,
    index: Arc<Index>,
) -> IndexResult<(IndexedStore, Option<super::reconcile::Report>)> {
    let report = if index.was_unclean() {
        log::warn!("the index was not closed cleanly; reconciling it with the store");
        for problem in backend.scrub(true)? {
            log::warn!("repaired after an unclean stop: {problem}");
        }
        let report = super::reconcile::check(&index, backend.as_ref(), true, &mut |_| {})?;
        if !report.is_consistent() {
            log::warn!(
                "repaired the index after an unclean stop: {}",
                report.summary()
            );
        }
        Some(report)
    } else {
        None
    };
    Ok((IndexedStore::new(backend, index), report))
}
