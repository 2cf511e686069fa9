//! `MemStore`: the reference model. A sorted map behind a reader-writer lock; volatile.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::datastore::query::{self, Entry, EntryIter};
use crate::datastore::{
    BatchOps, Capabilities, Datastore, Error, Key, Query, Result, Results, copy_range,
};

/// An in-memory store with go-datastore's `MapDatastore` semantics, safe to share between
/// threads. Queries see a snapshot taken when they start.
#[derive(Default)]
pub struct MemStore {
    map: RwLock<BTreeMap<String, Arc<[u8]>>>,
    closed: AtomicBool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }
}

impl Datastore for MemStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.map
            .read()
            .get(key.as_str())
            .map(|v| v.to_vec())
            .ok_or_else(Error::not_found)
    }

    fn has(&self, key: &Key) -> Result<bool> {
        Ok(self.map.read().contains_key(key.as_str()))
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        self.map
            .read()
            .get(key.as_str())
            .map(|v| v.len() as u64)
            .ok_or_else(Error::not_found)
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let value = self
            .map
            .read()
            .get(key.as_str())
            .cloned()
            .ok_or_else(Error::not_found)?;
        Ok(copy_range(&value, offset, buf))
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.check_open()?;
        self.map
            .write()
            .insert(key.as_str().to_owned(), Arc::from(value));
        Ok(())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check_open()?;
        self.map.write().remove(key.as_str());
        Ok(())
    }

    fn query(&self, q: Query) -> Result<Results> {
        let prefix = q.prefix_key();
        let bounds = query::prefix_range(prefix.as_ref());
        let snapshot: Vec<(String, Arc<[u8]>)> = {
            let map = self.map.read();
            match &bounds {
                Some((lo, hi)) => map
                    .range::<str, _>((Bound::Included(lo.as_str()), Bound::Excluded(hi.as_str())))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }
        };
        let keys_only = q.keys_only;
        let entries: EntryIter = Box::new(snapshot.into_iter().map(move |(k, v)| {
            let key = Key::from_raw(k)?;
            Ok(if keys_only {
                Entry::key_only(key, Some(v.len() as u64))
            } else {
                Entry::with_value(key, v.to_vec())
            })
        }));
        let it = query::naive_apply(&q, entries, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        self.check_open()
    }

    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::memory()
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.check_open()?;
        let mut map = self.map.write();
        let value = map.remove(from.as_str()).ok_or_else(Error::not_found)?;
        map.insert(to.as_str().to_owned(), value);
        Ok(())
    }

    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        self.check_open()?;
        let mut map = self.map.write();
        let va = map.get(a.as_str()).cloned().ok_or_else(Error::not_found)?;
        let vb = map.get(b.as_str()).cloned().ok_or_else(Error::not_found)?;
        map.insert(a.as_str().to_owned(), vb);
        map.insert(b.as_str().to_owned(), va);
        Ok(())
    }

    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        self.check_open()?;
        let mut map = self.map.write();
        for (key, op) in ops {
            match op {
                Some(value) => {
                    map.insert(key.into_string(), Arc::from(value));
                }
                None => {
                    map.remove(key.as_str());
                }
            }
        }
        Ok(())
    }
}
