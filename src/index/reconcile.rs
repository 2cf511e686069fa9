//! Comparing the index with a backend, repairing drift, and rebuilding the index.
//!
//! Both sides are walked once in ascending key order and merged, so a check costs one scan of
//! each and memory for one repair chunk. Drift has three shapes: a value the index does not list
//! (a crash between the backend write and the index update), a listed key with no value (a crash
//! between the index update and the backend delete, or a lost index commit), and a size that
//! differs (a lost index update of an overwrite). Repair makes the index follow the backend,
//! which holds the bytes and is the source of truth.

use std::cmp::Ordering;
use std::fmt;

use super::{Index, IndexResult, KeyEntry};
use crate::datastore::{Datastore, Key, Order, Query};

/// How many repairs are applied per index transaction.
const REPAIR_CHUNK: usize = 10_000;
/// How many damaged values a check or reindex skips before it gives up on the store.
const MAX_FAILURES: u64 = 100_000;
/// How many examples of each kind of drift a report keeps.
const EXAMPLES: usize = 20;

/// What a check found (and, with repair, fixed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys the backend holds.
    pub store_keys: u64,
    /// Keys the index listed before repair.
    pub index_keys: u64,
    /// Values the index did not list.
    pub unlisted: u64,
    /// Listed keys the backend does not hold.
    pub dangling: u64,
    /// Keys whose recorded size was wrong.
    pub wrong_size: u64,
    /// Store entries that could not be read (a damaged value or record).
    pub unreadable: u64,
    /// Up to 20 keys of each kind, for the report.
    pub examples: Vec<(Drift, Key)>,
    /// Up to 20 read errors, for the report.
    pub errors: Vec<String>,
    /// Whether the drift was repaired.
    pub repaired: bool,
}

/// One kind of disagreement between index and backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The backend holds a value the index does not list.
    Unlisted,
    /// The index lists a key the backend does not hold.
    Dangling,
    /// The recorded size differs from the value's.
    WrongSize,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Drift::Unlisted => "not in index",
            Drift::Dangling => "no value in store",
            Drift::WrongSize => "wrong size in index",
        })
    }
}

impl Report {
    /// Whether index and backend agree.
    pub fn is_consistent(&self) -> bool {
        self.unlisted == 0 && self.dangling == 0 && self.wrong_size == 0 && self.unreadable == 0
    }

    /// How many problems the check found.
    pub fn problems(&self) -> u64 {
        self.unlisted + self.dangling + self.wrong_size + self.unreadable
    }

    /// One line describing the result.
    pub fn summary(&self) -> String {
        let state = if self.is_consistent() {
            "consistent".to_owned()
        } else {
            let unreadable = if self.unreadable > 0 {
                format!(", {} unreadable", self.unreadable)
            } else {
                String::new()
            };
            format!(
                "{} unlisted, {} dangling, {} wrong sizes{unreadable}{}",
                self.unlisted,
                self.dangling,
                self.wrong_size,
                if self.repaired { " (repaired)" } else { "" }
            )
        };
        format!(
            "{} keys in store, {} in index: {state}",
            self.store_keys, self.index_keys
        )
    }

    fn note(&mut self, drift: Drift, key: &Key) {
        match drift {
            Drift::Unlisted => self.unlisted += 1,
            Drift::Dangling => self.dangling += 1,
            Drift::WrongSize => self.wrong_size += 1,
        }
        if self.examples.iter().filter(|(d, _)| *d == drift).count() < EXAMPLES {
            self.examples.push((drift, key.clone()));
        }
    }
}

/// A pending fix: `Some(size)` records a value, `None` removes the key.
type Fix = (Key, Option<u64>);

fn flush(index: &Index, fixes: &mut Vec<Fix>) -> IndexResult<()> {
    if !fixes.is_empty() {
        index.record_batch(fixes.iter().map(|(k, s)| (k, *s)))?;
        fixes.clear();
    }
    Ok(())
}

/// All keys of `backend` with their sizes, in ascending byte order.
fn store_keys(
    backend: &dyn Datastore,
) -> IndexResult<impl Iterator<Item = crate::datastore::Result<(Key, u64)>>> {
    let q = Query {
        keys_only: true,
        returns_sizes: true,
        orders: vec![Order::Key],
        ..Query::default()
    };
    let results = backend.query(q)?;
    Ok(results.map(move |r| {
        let e = r?;
        let size = match e.size {
            Some(s) => s,
            None => backend_size_missing(&e.key)?,
        };
        Ok((e.key, size))
    }))
}

fn backend_size_missing(key: &Key) -> crate::datastore::Result<u64> {
    Err(crate::datastore::Error::new(
        crate::datastore::ErrorKind::Unsupported,
        format!("the store returned no size for {key} in a sized query"),
    ))
}

/// Compares `index` with `backend`; with `repair`, makes the index match. `progress` is called
/// with the number of keys compared so far, every 1,000 keys.
pub fn check(
    index: &Index,
    backend: &dyn Datastore,
    repair: bool,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<Report> {
    let mut report = Report {
        repaired: repair,
        ..Report::default()
    };
    let mut fixes: Vec<Fix> = Vec::new();
    let mut store = store_keys(backend)?;
    let mut listed = index.keys(None)?;
    let mut pending = listed.next().transpose()?;
    let mut seen = 0u64;
    loop {
        let s = match store.next() {
            None => None,
            Some(Ok(entry)) => Some(entry),
            // A value that cannot be read is reported and the check goes on; the store's
            // scrub (run by fsck before this check) repairs what it can.
            Some(Err(e)) => {
                report.unreadable += 1;
                if report.errors.len() < EXAMPLES {
                    report.errors.push(e.to_string());
                }
                if report.unreadable > MAX_FAILURES {
                    return Err(e.into());
                }
                continue;
            }
        };
        // Advance the index side up to the store key, reporting dangling keys on the way.
        let mut matched: Option<KeyEntry> = None;
        while let Some(ke) = pending.take() {
            let ord = match &s {
                Some((sk, _)) => ke.key.as_bytes().cmp(sk.as_bytes()),
                None => Ordering::Less,
            };
            match ord {
                Ordering::Less => {
                    report.index_keys += 1;
                    report.note(Drift::Dangling, &ke.key);
                    fixes.push((ke.key, None));
                    pending = listed.next().transpose()?;
                }
                Ordering::Equal => {
                    report.index_keys += 1;
                    matched = Some(ke);
                    pending = listed.next().transpose()?;
                    break;
                }
                Ordering::Greater => {
                    pending = Some(ke);
                    break;
                }
            }
        }
        let Some((key, size)) = s else {
            break;
        };
        report.store_keys += 1;
        match matched {
            None => {
                report.note(Drift::Unlisted, &key);
                fixes.push((key, Some(size)));
            }
            Some(ke) if ke.size != size => {
                report.note(Drift::WrongSize, &key);
                fixes.push((key, Some(size)));
            }
            Some(_) => {}
        }
        seen += 1;
        if seen.is_multiple_of(1000) {
            progress(seen);
        }
        if repair && fixes.len() >= REPAIR_CHUNK {
            flush(index, &mut fixes)?;
        }
    }
    progress(seen);
    if repair {
        flush(index, &mut fixes)?;
        index.sync()?;
    }
    Ok(report)
}

/// Rebuilds the index from scratch from `backend`'s keys, in one index transaction: if the
/// store cannot be read to the end, the index is left as it was. Explicit directories,
/// symlinks, modes, owners and xattrs are not kept (see [`super::salvage`] for carrying them
/// over from an old index). A key whose size cannot be read (its value is damaged) is left out
/// and logged. Returns the number of keys indexed.
pub fn reindex(
    index: &Index,
    backend: &dyn Datastore,
    progress: &mut dyn FnMut(u64),
) -> IndexResult<u64> {
    let n = index.write(|tx| {
        tx.clear()?;
        let mut n = 0u64;
        let mut failures = 0u64;
        for item in store_keys(backend)? {
            match item {
                Ok((key, size)) => {
                    tx.put_key(&key, size)?;
                    n += 1;
                    if n.is_multiple_of(1000) {
                        progress(n);
                    }
                }
                Err(e) if e.kind() == crate::datastore::ErrorKind::Corrupt => {
                    log::warn!("reindex: left out a damaged value: {e}");
                    failures += 1;
                    if failures > MAX_FAILURES {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    })?;
    progress(n);
    index.sync()?;
    index.mark_reconciled();
    Ok(n)
}
