//! Per-key coordination of writes (upstream's `opMap`, spec §5.6 step 3 and §5.11).
//!
//! At most one write operation per stored name runs at a time, which is what keeps the
//! disk-usage counter exact: the size of the file being replaced is read and the new size added
//! with nobody else touching that file.
//!
//! An operation that arrives while another one on the same name is in flight waits for it.
//! Then, as upstream:
//! * a **coalescing** operation (`put`, `delete`, a batch rename) whose predecessor succeeded
//!   does nothing and reports success: it is treated as having happened just before the one that
//!   ran. If the predecessor failed, it tries to run itself.
//! * a **serialised** operation (committing a staged value, which carries data that exists
//!   nowhere else) always runs after its predecessor.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// How an operation behaves when another operation on its name is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Adopt a concurrent operation's success (upstream semantics).
    Coalesce,
    /// Wait for the concurrent operation, then run anyway.
    Serialize,
}

struct Slot {
    /// `None` while running, then whether it succeeded.
    outcome: Mutex<Option<bool>>,
    done: Condvar,
}

/// The map of in-flight operations, by stored name.
#[derive(Default)]
pub(crate) struct OpMap {
    inflight: Mutex<HashMap<String, Arc<Slot>>>,
}

/// The outcome of [`OpMap::begin`].
pub(crate) enum Begin<'a> {
    /// The caller owns the name and must run its operation, then call [`OpGuard::finish`].
    Run(OpGuard<'a>),
    /// A concurrent operation succeeded and this one is considered done.
    Done,
}

/// Ownership of one name's operation slot. Dropping it without `finish` reports failure.
pub(crate) struct OpGuard<'a> {
    map: &'a OpMap,
    name: String,
    slot: Arc<Slot>,
    finished: bool,
}

impl OpMap {
    /// Registers an operation on `name`, waiting for any operation already in flight.
    pub(crate) fn begin(&self, name: &str, mode: Mode) -> Begin<'_> {
        loop {
            let existing = {
                let mut inflight = self.inflight.lock();
                match inflight.get(name) {
                    Some(slot) => slot.clone(),
                    None => {
                        let slot = Arc::new(Slot {
                            outcome: Mutex::new(None),
                            done: Condvar::new(),
                        });
                        inflight.insert(name.to_owned(), slot.clone());
                        return Begin::Run(OpGuard {
                            map: self,
                            name: name.to_owned(),
                            slot,
                            finished: false,
                        });
                    }
                }
            };
            let mut outcome = existing.outcome.lock();
            while outcome.is_none() {
                existing.done.wait(&mut outcome);
            }
            if *outcome == Some(true) && mode == Mode::Coalesce {
                return Begin::Done;
            }
        }
    }

    /// Registers a [`Mode::Serialize`] operation on `name`, waiting for any in flight.
    pub(crate) fn acquire(&self, name: &str) -> OpGuard<'_> {
        loop {
            if let Begin::Run(guard) = self.begin(name, Mode::Serialize) {
                return guard;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight.lock().len()
    }
}

impl OpGuard<'_> {
    /// Ends the operation, waking the waiters with its result.
    pub(crate) fn finish(mut self, ok: bool) {
        self.complete(ok);
    }

    fn complete(&mut self, ok: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.map.inflight.lock().remove(&self.name);
        *self.slot.outcome.lock() = Some(ok);
        self.slot.done.notify_all();
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.complete(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Waits until another thread waits on `guard`'s operation: it holds the slot (one
    /// reference in the map, one in the guard, one per waiter). A fixed sleep instead let the
    /// guard finish first on a loaded machine, and the late "waiter" then ran on its own.
    fn wait_for_a_waiter(guard: &OpGuard<'_>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&guard.slot) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never reached the operation"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_waiter_adopts_success_or_retries_after_failure() {
        let map = OpMap::default();
        let ran = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let Begin::Run(first) = map.begin("K", Mode::Coalesce) else {
                panic!("the first operation must run");
            };
            let waiter = s.spawn(|| match map.begin("K", Mode::Coalesce) {
                Begin::Run(g) => {
                    ran.fetch_add(1, Ordering::SeqCst);
                    g.finish(true);
                    true
                }
                Begin::Done => false,
            });
            wait_for_a_waiter(&first);
            first.finish(true);
            assert!(!waiter.join().unwrap(), "success is adopted");
        });
        assert_eq!(ran.load(Ordering::SeqCst), 0);

        std::thread::scope(|s| {
            let Begin::Run(first) = map.begin("K", Mode::Coalesce) else {
                panic!("the first operation must run");
            };
            let waiter = s.spawn(|| matches!(map.begin("K", Mode::Coalesce), Begin::Run(_)));
            wait_for_a_waiter(&first);
            drop(first); // failure
            assert!(waiter.join().unwrap(), "failure makes the waiter run");
        });
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn serialised_operations_always_run() {
        let map = OpMap::default();
        std::thread::scope(|s| {
            let Begin::Run(first) = map.begin("K", Mode::Coalesce) else {
                panic!("the first operation must run");
            };
            let waiter = s.spawn(|| matches!(map.begin("K", Mode::Serialize), Begin::Run(_)));
            wait_for_a_waiter(&first);
            first.finish(true);
            assert!(waiter.join().unwrap());
        });
        // Different names never wait for each other.
        let a = map.begin("A", Mode::Coalesce);
        let b = map.begin("B", Mode::Coalesce);
        assert!(matches!(a, Begin::Run(_)) && matches!(b, Begin::Run(_)));
    }
}
