//! Building the index from a store: the fast path for an index that is missing, new, or was
//! built for another store.
//!
//! Keys are read from the store's segments in parallel when it has them (a flatfs directory's
//! shards: one `readdir` and one `stat` per file, several directories at a time, which also keeps
//! the disk busy on a cold cache), otherwise from one streaming keys-only query. They are
//! written in large index transactions with no fsync; the caller makes the result durable once
//! at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::{Index, IndexResult};
use crate::datastore::{Datastore, Key, Query};

/// Keys per index transaction while building.
const BUILD_CHUNK: usize = 100_000;
/// Threads listing segments at once.
const WALKERS: usize = 4;

/// Rebuilds the index from `backend`'s keys: empties it, then records every key with its size.
/// Explicit directories, symlinks, modes, owners and xattrs are lost. `progress` is called with
/// the number of keys recorded so far. Returns the number of keys.
pub fn build(
    index: &Index,
    backend: &dyn Datastore,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<u64> {
    index.clear()?;
    let n = match backend.segments()? {
        Some(segments) => {
            let names: Vec<String> = segments.into_iter().map(|s| s.name).collect();
            let n = build_from_segments(index, backend, &names, progress)?;
            if backend.partly_segmented()? {
                // The keys no segment lists (a repository's tiered store beside its blocks/).
                n + build_from_query(
                    index,
                    backend,
                    n,
                    &|key| backend.segment_of(key).is_none(),
                    progress,
                )?
            } else {
                n
            }
        }
        None => build_from_query(index, backend, 0, &|_| true, progress)?,
    };
    index.sync()?;
    Ok(n)
}

fn write_chunk(index: &Index, chunk: &mut Vec<(Key, u64)>) -> IndexResult<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    // Sorted, the inserts of one transaction walk the B-trees in order.
    chunk.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    index.record_batch(chunk.iter().map(|(k, s)| (k, Some(*s))))?;
    chunk.clear();
    Ok(())
}

fn build_from_segments(
    index: &Index,
    backend: &dyn Datastore,
    names: &[String],
    progress: &mut dyn FnMut(u64),
) -> IndexResult<u64> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::sync_channel::<crate::datastore::Result<Vec<(Key, u64)>>>(WALKERS * 4);
    std::thread::scope(|scope| -> IndexResult<u64> {
        for _ in 0..WALKERS.min(names.len()) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else {
                        return;
                    };
                    let keys = backend.segment_keys(name);
                    let failed = keys.is_err();
                    if tx.send(keys).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut chunk = Vec::with_capacity(BUILD_CHUNK);
        let mut n = 0u64;
        let mut result = Ok(());
        for keys in rx.iter() {
            if result.is_err() {
                // Drain so that the walkers finish; the first error is reported.
                next.store(names.len(), Ordering::Relaxed);
                continue;
            }
            match keys {
                Ok(keys) => {
                    n += keys.len() as u64;
                    chunk.extend(keys);
                    if chunk.len() >= BUILD_CHUNK {
                        result = write_chunk(index, &mut chunk);
                        progress(n);
                    }
                }
                Err(e) => {
                    next.store(names.len(), Ordering::Relaxed);
                    result = Err(e.into());
                }
            }
        }
        result?;
        write_chunk(index, &mut chunk)?;
        progress(n);
        Ok(n)
    })
}

/// Indexes the keys of a listing of the whole store that `wanted` accepts; `done` keys were
/// indexed before (for the progress count). Returns how many it indexed.
fn build_from_query(
    index: &Index,
    backend: &dyn Datastore,
    done: u64,
    wanted: &dyn Fn(&Key) -> bool,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<u64> {
    let q = Query {
        keys_only: true,
        returns_sizes: true,
        ..Query::default()
    };
    let mut chunk = Vec::with_capacity(BUILD_CHUNK);
    let mut n = 0u64;
    for item in backend.query(q)? {
        let e = item?;
        if !wanted(&e.key) {
            continue;
        }
        let size = match e.size {
            Some(s) => s,
            None => backend.get_size(&e.key)?,
        };
        chunk.push((e.key, size));
        n += 1;
        if chunk.len() >= BUILD_CHUNK {
            write_chunk(index, &mut chunk)?;
            progress(done + n);
        }
    }
    write_chunk(index, &mut chunk)?;
    progress(done + n);
    Ok(n)
}
