//! [`FaultyStore`]: a datastore wrapper that fails on purpose, for tests of the layers above.
//!
//! It forwards every call to the store it wraps, except that a call can be made to fail (with
//! any [`ErrorKind`], typically `NoSpace` or `Io`), to report a key as missing as if a concurrent
//! delete had won (`NotFound`), or to stall first. Faults are armed per operation, either for
//! the next `n` calls ([`FaultyStore::fail_next`]) or at random with a seeded generator
//! ([`FaultyStore::fail_randomly`]), and disarmed with [`FaultyStore::heal`]. A failed call does
//! nothing to the wrapped store, except a failed `commit_staged`, which drops the staged value
//! as a real store's failed commit does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    BasicBatch, Batch, BatchOps, Capabilities, Datastore, Error, ErrorKind, Key, Query, Result,
    Results, StageInit, Staged,
};

/// The operations a fault can be armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `get`, `has`, `get_size`, `read_at`.
    Read,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `rename`.
    Rename,
    /// `stage`.
    Stage,
    /// `commit_staged`.
    CommitStaged,
    /// `sync`.
    Sync,
    /// `apply_batch` (and batches committed through it).
    Batch,
    /// `query`.
    Query,
}

impl FaultOp {
    /// Every operation, for arming a fault on all of them.
    pub const ALL: [FaultOp; 9] = [
        FaultOp::Read,
        FaultOp::Put,
        FaultOp::Delete,
        FaultOp::Rename,
        FaultOp::Stage,
        FaultOp::CommitStaged,
        FaultOp::Sync,
        FaultOp::Batch,
        FaultOp::Query,
    ];
}

#[derive(Default)]
struct Plan {
    /// Per operation: fail the next `n` calls with this kind.
    next: HashMap<FaultOp, (ErrorKind, u32)>,
    /// Fail any armed-at-random operation with this probability (per mille) and kind.
    random: Option<(ErrorKind, u32, u64)>,
    /// Stall every call this long before running it.
    delay: Option<Duration>,
    /// How many faults were injected so far.
    injected: u64,
    /// Per operation: hold the next call (report on the sender, wait for the receiver).
    hold: HashMap<FaultOp, (mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

/// A [`Datastore`] that forwards to `D` and fails where told to. See the module documentation.
pub struct FaultyStore<D> {
    inner: D,
    plan: Mutex<Plan>,
}

impl<D: Datastore> FaultyStore<D> {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: D) -> FaultyStore<D> {
        FaultyStore {
            inner,
            plan: Mutex::new(Plan::default()),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Makes the next `n` calls of `op` fail with `kind` (replacing any earlier arming of `op`).
    pub fn fail_next(&self, op: FaultOp, kind: ErrorKind, n: u32) {
        self.plan.lock().next.insert(op, (kind, n));
    }

    /// Makes every call fail with `kind` with probability `per_mille`/1000, drawn from a
    /// generator seeded with `seed` (the same seed and calls give the same faults).
    pub fn fail_randomly(&self, kind: ErrorKind, per_mille: u32, seed: u64) {
        self.plan.lock().random = Some((kind, per_mille.min(1000), seed | 1));
    }

    /// Makes every call stall for `delay` first (a slow or hanging disk).
    pub fn slow_down(&self, delay: Duration) {
        self.plan.lock().delay = Some(delay);
    }

    /// Holds the next call of `op` before it runs (and before any fault armed for it): the
    /// call reports on the first channel returned and waits until the second is sent to or
    /// dropped. A store call that hangs, at a moment the test chooses.
    pub fn hold_next(&self, op: FaultOp) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        self.plan.lock().hold.insert(op, (entered_tx, release_rx));
        (entered_rx, release_tx)
    }

    /// Disarms every fault and delay.
    pub fn heal(&self) {
        let mut plan = self.plan.lock();
        let injected = plan.injected;
        *plan = Plan::default();
        plan.injected = injected;
    }

    /// How many calls failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.plan.lock().injected
    }

    /// Runs the plan for one call of `op`: stalls if told to, then fails or lets it through.
    fn check(&self, op: FaultOp) -> Result<()> {
        let held = self.plan.lock().hold.remove(&op);
        if let Some((entered, release)) = held {
            // The test may have gone (a failed assertion): then nobody waits on either end.
            let _ = entered.send(());
            let _ = release.recv();
        }
        let (delay, fault) = {
            let mut plan = self.plan.lock();
            let mut fault = None;
            if let Some((kind, n)) = plan.next.get_mut(&op)
                && *n > 0
            {
                *n -= 1;
                fault = Some(*kind);
            }
            if fault.is_none()
                && let Some((kind, per_mille, state)) = plan.random.as_mut()
            {
                // xorshift64: deterministic per seed, good enough to spread faults.
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                if (*state % 1000) < u64::from(*per_mille) {
                    fault = Some(*kind);
                }
            }
            if fault.is_some() {
                plan.injected += 1;
            }
            (plan.delay, fault)
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match fault {
            None => Ok(()),
            Some(ErrorKind::NotFound) => Err(Error::not_found()),
            Some(kind) => Err(Error::new(kind, format!("injected fault in {op:?}"))),
        }
    }
}

impl<D: Datastore> Datastore for FaultyStore<D> {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.check(FaultOp::Read)?;
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> Result<bool> {
        self.check(FaultOp::Read)?;
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> Result<u64> {
        self.check(FaultOp::Read)?;
        self.inner.get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.check(FaultOp::Read)?;
        self.inner.read_at(key, offset, buf)
    }
    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.check(FaultOp::Put)?;
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> Result<()> {
        self.check(FaultOp::Delete)?;
        self.inner.delete(key)
    }
    fn query(&self, query: Query) -> Result<Results> {
        self.check(FaultOp::Query)?;
        self.inner.query(query)
    }
    fn sync(&self, prefix: &Key) -> Result<()> {
        self.check(FaultOp::Sync)?;
        self.inner.sync(prefix)
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn batch(&self) -> Result<Box<dyn Batch + '_>> {
        Ok(Box::new(BasicBatch::new(self)))
    }
    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        self.check(FaultOp::Batch)?;
        self.inner.apply_batch(ops)
    }
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.check(FaultOp::Rename)?;
        self.inner.rename(from, to)
    }
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.inner.scrub(repair)
    }
    fn disk_usage(&self) -> Result<Option<u64>> {
        self.inner.disk_usage()
    }
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        self.check(FaultOp::Stage)?;
        self.inner.stage(key, init)
    }
    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        // A failing store has consumed (and dropped) the staged value by the time it reports.
        self.check(FaultOp::CommitStaged)?;
        if !durable {
            return self.inner.commit_staged(key, staged, false);
        }
        // The durable part through `sync`, so that a `Sync` fault fails a durable commit after
        // its value is in place, as a failed fsync does.
        self.inner.commit_staged(key, staged, false)?;
        self.sync(key)
    }
    fn staging_dir(&self) -> PathBuf {
        self.inner.staging_dir()
    }
    fn backing_file(&self, key: &Key) -> Result<Option<PathBuf>> {
        self.inner.backing_file(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;

    #[test]
    fn an_armed_fault_fails_exactly_the_next_calls_and_changes_nothing() {
        let s = FaultyStore::new(MemStore::new());
        let k = Key::new("/a");
        s.fail_next(FaultOp::Put, ErrorKind::NoSpace, 2);
        assert_eq!(s.put(&k, b"1").unwrap_err().kind(), ErrorKind::NoSpace);
        assert_eq!(s.put(&k, b"1").unwrap_err().kind(), ErrorKind::NoSpace);
        assert!(!s.has(&k).unwrap());
        s.put(&k, b"1").unwrap();
        assert_eq!(s.get(&k).unwrap(), b"1");
        assert_eq!(s.injected(), 2);
    }

    #[test]
    fn random_faults_repeat_for_a_seed() {
        let run = |seed| {
            let s = FaultyStore::new(MemStore::new());
            s.fail_randomly(ErrorKind::Io, 300, seed);
            (0..100)
                .map(|i| s.put(&Key::new(format!("/k{i}")), b"v").is_ok())
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().any(|ok| !ok) && a.iter().any(|ok| *ok));
    }
}
