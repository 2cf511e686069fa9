//! Grouped durable commits for redb databases.
//!
//! Writers commit with [`redb::Durability::None`]: the change is visible to every reader at once
//! but not yet fsynced. A background thread then makes a durable (`Immediate`) commit no later
//! than `interval` after the first such write, and [`GroupCommit::flush`] does it at once (for
//! `sync`, `fsync` and close). Thousands of small updates thus cost one fsync per interval, and a
//! crash loses at most the last interval, always back to a consistent committed state.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use redb::{Database, Durability};

use crate::datastore::{Error, ErrorKind, Result};

/// The default bound on how long a non-durable commit waits for its durable one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);

/// The flusher's bookkeeping. Every non-durable commit bumps `marked`; a durable commit that
/// started after mark `n` was recorded covers every commit up to `n`, and sets `durable` to it
/// when it succeeds. A flush returns only once `durable` reaches the mark it saw on entry, so a
/// flush never returns early because another thread's durable commit is still running.
struct State {
    marked: u64,
    durable: u64,
    committing: bool,
    stop: bool,
}

impl State {
    fn dirty(&self) -> bool {
        self.durable < self.marked
    }
}

/// The durable commit a flush runs (a redb commit with `Durability::Immediate`; tests inject
/// their own).
pub type CommitFn = Box<dyn Fn() -> Result<()> + Send + Sync>;

struct Shared {
    commit: CommitFn,
    state: Mutex<State>,
    /// Wakes the background thread (a mark or a stop) and flushes waiting for a running commit.
    wake: Condvar,
    interval: Duration,
    name: String,
}

impl Shared {
    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let target = st.marked;
        loop {
            if st.durable >= target {
                return Ok(());
            }
            if st.committing {
                // Another flush is committing; it may have started before our mark, so wait
                // for it and then check again (and commit ourselves if it did not cover us).
                self.wake.wait(&mut st);
                continue;
            }
            st.committing = true;
            let covers = st.marked;
            drop(st);
            let result = (self.commit)();
            st = self.state.lock();
            st.committing = false;
            if result.is_ok() {
                st.durable = st.durable.max(covers);
            }
            self.wake.notify_all();
            result?;
        }
    }
}

/// Makes every earlier non-durable commit of `db` durable.
pub fn durable_commit(db: &Database) -> Result<()> {
    let mut txn = db
        .begin_write()
        .map_err(|e| redb_error("starting a durable commit", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| redb_error("setting durability", e))?;
    txn.commit().map_err(|e| redb_error("durable commit", e))
}

/// The background flusher of one database. Dropping it stops the thread after a final flush.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts a flusher for `db` that makes writes durable within `interval`; with `None`,
    /// no thread runs and only [`GroupCommit::flush`] makes writes durable (for an owner that
    /// must order other work before each durable commit).
    pub fn start(db: Arc<Database>, interval: Option<Duration>, name: &str) -> GroupCommit {
        GroupCommit::with_commit(Box::new(move || durable_commit(&db)), interval, name)
    }

    /// Like [`GroupCommit::start`], with `commit` as the durable commit.
    pub fn with_commit(commit: CommitFn, interval: Option<Duration>, name: &str) -> GroupCommit {
        let shared = Arc::new(Shared {
            commit,
            state: Mutex::new(State {
                marked: 0,
                durable: 0,
                committing: false,
                stop: false,
            }),
            wake: Condvar::new(),
            interval: interval.unwrap_or_default(),
            name: name.to_owned(),
        });
        let worker = shared.clone();
        let thread = match interval {
            None => None,
            Some(_) => std::thread::Builder::new()
                .name(format!("dsfs-commit-{name}"))
                .spawn(move || run(worker))
                .map_err(|e| log::error!("could not start the commit thread for {name}: {e}"))
                .ok(),
        };
        GroupCommit {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Records that a non-durable commit happened; the flusher will make it durable.
    pub fn mark_dirty(&self) {
        let mut st = self.shared.state.lock();
        let was_dirty = st.dirty();
        st.marked += 1;
        if !was_dirty {
            self.shared.wake.notify_all();
        }
    }

    /// Makes every commit so far durable, now.
    pub fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    /// Flushes and stops the background thread. Idempotent.
    pub fn stop(&self) -> Result<()> {
        {
            let mut st = self.shared.state.lock();
            st.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(handle) = self.thread.lock().take()
            && handle.join().is_err()
        {
            log::error!("the commit thread of {} panicked", self.shared.name);
        }
        self.shared.flush()
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("final durable commit of {} failed: {e}", self.shared.name);
        }
    }
}

fn run(shared: Arc<Shared>) {
    loop {
        {
            let mut st = shared.state.lock();
            while !st.dirty() && !st.stop {
                shared.wake.wait(&mut st);
            }
            if st.stop {
                return;
            }
            // Dirty: wait out the interval (or a stop) so that writes group together.
            let deadline = std::time::Instant::now() + shared.interval;
            while !st.stop && !shared.wake.wait_until(&mut st, deadline).timed_out() {}
            if st.stop {
                return;
            }
        }
        if let Err(e) = shared.flush() {
            // Still dirty: the next round retries after the interval.
            log::error!("background durable commit of {} failed: {e}", shared.name);
        }
    }
}

/// Converts any redb error into a datastore error with context. Full disks keep their kind;
/// a database open in another process is `Locked`; corruption is `Corrupt`.
pub fn redb_error(context: &str, err: impl Into<redb::Error>) -> Error {
    let err: redb::Error = err.into();
    let kind = match &err {
        e if crate::redb_guard::is_corruption(e) => ErrorKind::Corrupt,
        redb::Error::DatabaseAlreadyOpen => ErrorKind::Locked,
        redb::Error::ValueTooLarge(_) => ErrorKind::InvalidArgument,
        redb::Error::Io(io) => match io.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::EROFS) => ErrorKind::ReadOnly,
            _ => ErrorKind::Io,
        },
        _ => ErrorKind::Io,
    };
    Error::with_source(kind, context.to_owned(), err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A durable commit that announces its start and takes a while.
    struct SlowCommit {
        started: AtomicBool,
        finished: AtomicU32,
    }

    fn slow_committer() -> (Arc<SlowCommit>, GroupCommit) {
        let probe = Arc::new(SlowCommit {
            started: AtomicBool::new(false),
            finished: AtomicU32::new(0),
        });
        let p = probe.clone();
        let commit: CommitFn = Box::new(move || {
            p.started.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            p.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (probe, GroupCommit::with_commit(commit, None, "test"))
    }

    #[test]
    fn flush_waits_for_a_durable_commit_already_running() {
        let (probe, gc) = slow_committer();
        let gc = Arc::new(gc);
        // Two writers commit before either flushes.
        gc.mark_dirty();
        gc.mark_dirty();
        let first = {
            let gc = gc.clone();
            std::thread::spawn(move || gc.flush())
        };
        while !probe.started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // The second writer's flush starts while the first one's durable commit runs: it may
        // only return once that commit (which covers its write) has finished.
        gc.flush().unwrap();
        assert!(probe.finished.load(Ordering::SeqCst) >= 1);
        first.join().unwrap().unwrap();
    }

    #[test]
    fn a_failed_durable_commit_stays_dirty_and_a_later_flush_retries() {
        let fail = Arc::new(AtomicBool::new(true));
        let runs = Arc::new(AtomicU32::new(0));
        let (f, r) = (fail.clone(), runs.clone());
        let commit: CommitFn = Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) {
                Err(Error::new(ErrorKind::NoSpace, "injected"))
            } else {
                Ok(())
            }
        });
        let gc = GroupCommit::with_commit(commit, None, "test");
        gc.mark_dirty();
        assert_eq!(gc.flush().unwrap_err().kind(), ErrorKind::NoSpace);
        fail.store(false, Ordering::SeqCst);
        gc.flush().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Nothing new: no further commit.
        gc.flush().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
