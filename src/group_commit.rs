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

struct State {
    dirty: bool,
    stop: bool,
}

struct Shared {
    db: Arc<Database>,
    state: Mutex<State>,
    wake: Condvar,
    interval: Duration,
    name: String,
}

impl Shared {
    fn flush(&self) -> Result<()> {
        {
            let mut st = self.state.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
        }
        let result = durable_commit(&self.db);
        if result.is_err() {
            self.state.lock().dirty = true;
        }
        result
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
        let shared = Arc::new(Shared {
            db,
            state: Mutex::new(State {
                dirty: false,
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
        if !st.dirty {
            st.dirty = true;
            self.shared.wake.notify_one();
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
            self.shared.wake.notify_one();
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
            while !st.dirty && !st.stop {
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
