//! The settler: step 3 of an in-place commit (see `journal.rs`), off the commit's path.
//!
//! An in-place commit is acknowledged once its record and staging file are synced and its dirty
//! ranges are in the data file's page cache. Settling it (syncing the data file, then removing
//! the record, then the staging file, then syncing `.temp`) costs an `fdatasync` of every page
//! the commits copied in plus the unlink of a sparse staging file: seconds for a big file. A
//! commit must not pay that for its predecessors, so one thread per store does it:
//!
//! * a commit queues its [`Unsettled`] entry and wakes the thread. It waits only when more than
//!   [`MAX_UNSETTLED`] entries are queued and the thread can still make progress (backpressure:
//!   the thread is far behind); it never settles anything itself on the normal path;
//! * the thread takes the oldest entry's data file and every other queued entry of that file,
//!   syncs the file once (outside every lock, without the name's operation slot: the dirty
//!   ranges it must cover were written before the entries were queued, and a concurrent commit
//!   of the same file only adds pages), then removes the records and staging files and syncs
//!   `.temp`. While it works on a file, that file is "in flight";
//! * before a data file is renamed, replaced or removed, the operation (which holds the name's
//!   operation slot, so no commit of that file runs meanwhile) waits for an in-flight settle of
//!   *that file only*, then settles the file's remaining entries itself
//!   ([`FlatFsStore::settle_path`]);
//! * closing the store stops the thread and settles whatever is left, in the closing thread.
//!
//! The crash rules of `journal.rs` are unchanged: a record is removed only after its data file
//! was synced, and the records left by a crash are redone in commit order at the next open.
//!
//! **A failed settle** (the data file's sync fails: EIO, ENOSPC) loses nothing: the records and
//! staging files stay on disk, so a crash or a restart redoes the commits. The entries go back
//! on the queue marked failed, and the thread leaves their file alone from then on, because
//! after a failed `fdatasync` the kernel may have dropped the pages it could not write, and a
//! second sync would then succeed without the data. Whoever next holds the file's operation slot
//! settles them, by first writing every failed commit of the file again from its staging file,
//! oldest first, and then syncing: the next in-place commit of that file (before its own step
//! 1), a rename, replace or delete of it, or the store's close. If that fails too, the entries
//! stay failed, and the rename, replace, delete or close fails with the error (a commit only
//! logs it and goes ahead: its own record is ordered after theirs, and refusing it would lose
//! its bytes without saving any). Between the failure and that
//! repair, a read of the data file may return the old bytes of the failed commits' ranges.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::durability::fsync_dir;
use crate::datastore::stage::OverlayPlan;
use crate::datastore::{Error, Result};

/// How many settled-to-be commits may wait before a commit waits for the settler (while the
/// settler can make progress). Each keeps a descriptor of its data file open and its sparse
/// staging file on disk.
pub const MAX_UNSETTLED: usize = 64;

/// An in-place commit done up to step 2 (see `journal.rs`), waiting to be settled.
#[derive(Debug)]
pub(super) struct Unsettled {
    /// The record's sequence number: the order in which one file's commits are redone.
    pub(super) seq: u128,
    /// The data file, open (which also keeps its inode from being reused).
    pub(super) target: File,
    /// Its path.
    pub(super) path: PathBuf,
    /// The journal record and the staging file, removed in this order once `target` is synced.
    pub(super) record: PathBuf,
    pub(super) stage: PathBuf,
    /// What the commit wrote, to write it again after a failed sync.
    pub(super) plan: OverlayPlan,
    /// A sync that should have covered this commit failed.
    pub(super) failed: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Waiting entries, oldest first.
    queue: VecDeque<Unsettled>,
    /// The data file the thread is settling.
    in_flight: Option<PathBuf>,
    stop: bool,
    /// Tests hold the thread before it takes anything.
    paused: bool,
}

impl State {
    /// The data file the thread should settle next: the oldest one with no failed entry.
    fn next_file(&self) -> Option<PathBuf> {
        if self.paused {
            return None;
        }
        self.queue
            .iter()
            .find(|u| !u.failed && !self.queue.iter().any(|v| v.failed && v.path == u.path))
            .map(|u| u.path.clone())
    }

    /// Removes and returns `path`'s entries, oldest first.
    fn take(&mut self, path: &Path) -> Vec<Unsettled> {
        let (mut mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|u| u.path == path);
        self.queue = rest.into();
        mine.sort_by_key(|u| u.seq);
        mine
    }

    /// Puts entries that could not be settled back at the front, marked failed.
    fn put_back(&mut self, mut list: Vec<Unsettled>) {
        for u in list.iter_mut().rev() {
            u.failed = true;
        }
        for u in list.into_iter().rev() {
            self.queue.push_front(u);
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when an entry is queued, a settle ends or the thread is told to stop.
    changed: Condvar,
    #[cfg(test)]
    hooks: hooks::Hooks,
}

/// The queue of unsettled in-place commits and the thread that settles them.
#[derive(Debug)]
pub(super) struct Settler {
    shared: Arc<Shared>,
    temp: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Settler {
    /// Starts the thread for a store whose temporary directory is `temp`.
    pub(super) fn start(temp: PathBuf) -> Result<Settler> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            let temp = temp.clone();
            std::thread::Builder::new()
                .name("flatfs-settle".into())
                .spawn(move || run(&shared, &temp))
                .map_err(|e| Error::io("flatfs: starting the settle thread", e))?
        };
        Ok(Settler {
            shared,
            temp,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a commit for the thread, then waits while the queue is over [`MAX_UNSETTLED`]
    /// and the thread can still shorten it.
    pub(super) fn push(&self, entry: Unsettled) {
        let mut st = self.shared.state.lock();
        st.queue.push_back(entry);
        self.shared.changed.notify_all();
        while st.queue.len() > MAX_UNSETTLED
            && !st.stop
            && (st.in_flight.is_some() || st.next_file().is_some())
        {
            self.shared.changed.wait(&mut st);
        }
    }

    /// Settles `path`'s commits now, after waiting for the thread if it is settling that file.
    /// With `only_failed` (a commit of the file, before its step 1), does nothing unless one of
    /// the waiting ones failed before, and does not wait for the thread: if the thread's settle
    /// fails, the thread leaves the file to the next operation. The caller holds the file's
    /// operation slot (or `path` is not a data file).
    pub(super) fn settle_path(&self, path: &Path, only_failed: bool) -> Result<()> {
        let mine = {
            let mut st = self.shared.state.lock();
            while !only_failed && st.in_flight.as_deref() == Some(path) {
                self.shared.changed.wait(&mut st);
            }
            if !st
                .queue
                .iter()
                .any(|u| u.path == path && (u.failed || !only_failed))
            {
                return Ok(());
            }
            st.take(path)
        };
        self.settle_now(mine)
    }

    /// Stops the thread (after the file it is settling), then settles everything left, file
    /// by file. A file whose settle fails keeps its records (the next open redoes them); the
    /// first error is returned.
    pub(super) fn close(&self) -> Result<()> {
        self.stop();
        let mut all: Vec<Unsettled> = std::mem::take(&mut self.shared.state.lock().queue).into();
        let mut first_error = None;
        while let Some(path) = all.first().map(|u| u.path.clone()) {
            let (mut mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|u| u.path == path);
            all = rest;
            mine.sort_by_key(|u| u.seq);
            if let Err(e) = self.settle_now(mine) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(handle) = self.thread.lock().take()
            && handle.join().is_err()
        {
            log::error!("flatfs: the settle thread panicked");
        }
    }

    /// Settles one file's entries (oldest first) in the calling thread: writes failed ones
    /// again, syncs the file, removes records and staging files, syncs `.temp`. On failure
    /// the entries go back on the queue, failed.
    fn settle_now(&self, list: Vec<Unsettled>) -> Result<()> {
        let Some(first) = list.first() else {
            return Ok(());
        };
        let repaired = if list.iter().any(|u| u.failed) {
            rewrite(&list)
        } else {
            Ok(())
        };
        let synced = repaired.and_then(|()| {
            sync_target(&self.shared, &first.target)
                .map_err(|e| Error::io(format!("flatfs: syncing {}", first.path.display()), e))
        });
        if let Err(e) = synced {
            self.shared.state.lock().put_back(list);
            return Err(e);
        }
        finish(&list, &self.temp)
    }

    /// Test access to the queue's state.
    #[cfg(test)]
    pub(super) fn hooks(&self) -> &hooks::Hooks {
        &self.shared.hooks
    }

    /// Tests: stops taking work (`true`) or resumes (`false`).
    #[cfg(test)]
    pub(super) fn pause(&self, paused: bool) {
        self.shared.state.lock().paused = paused;
        self.shared.changed.notify_all();
    }

    /// Tests: how many entries wait, and how many of them failed.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        let st = self.shared.state.lock();
        (st.queue.len(), st.queue.iter().filter(|u| u.failed).count())
    }

    /// Tests: a crash. Stops the thread and forgets every waiting entry without settling it.
    #[cfg(test)]
    pub(super) fn forget(&self) {
        self.stop();
        self.shared.state.lock().queue.clear();
    }
}

/// The thread: settles the oldest settleable file's entries until told to stop.
fn run(shared: &Shared, temp: &Path) {
    loop {
        let (path, list) = {
            let mut st = shared.state.lock();
            loop {
                if st.stop {
                    return;
                }
                if let Some(path) = st.next_file() {
                    let list = st.take(&path);
                    st.in_flight = Some(path.clone());
                    break (path, list);
                }
                shared.changed.wait(&mut st);
            }
        };
        let synced = match list.first() {
            Some(u) => sync_target(shared, &u.target),
            None => Ok(()),
        };
        let mut st = match synced {
            Ok(()) => {
                if let Err(e) = finish(&list, temp) {
                    log::warn!("flatfs: settling {}: {e}", path.display());
                }
                shared.state.lock()
            }
            Err(e) => {
                log::error!(
                    "flatfs: syncing {} failed ({e}); its {} in-place commit(s) stay in the \
                     journal and are written again by the next operation on it",
                    path.display(),
                    list.len()
                );
                let mut st = shared.state.lock();
                st.put_back(list);
                st
            }
        };
        st.in_flight = None;
        shared.changed.notify_all();
    }
}

/// Syncs a data file (the place tests make a settle block or fail).
fn sync_target(shared: &Shared, target: &File) -> io::Result<()> {
    #[cfg(test)]
    shared.hooks.before_sync()?;
    #[cfg(not(test))]
    let _ = shared;
    target.sync_data()
}

/// Writes failed commits again, oldest first, from their staging files.
fn rewrite(list: &[Unsettled]) -> Result<()> {
    for u in list {
        let stage = File::open(&u.stage)
            .map_err(|e| Error::io(format!("flatfs: opening {}", u.stage.display()), e))?;
        super::journal::write_changes(&u.target, &stage, &u.plan).map_err(|e| {
            Error::io(
                format!("flatfs: writing a commit of {} again", u.path.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// After the data file's sync: removes the records, then the staging files, then syncs `.temp`.
fn finish(list: &[Unsettled], temp: &Path) -> Result<()> {
    let mut removed = false;
    for u in list {
        for p in [&u.record, &u.stage] {
            match std::fs::remove_file(p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("flatfs: could not remove {}: {e}", p.display()),
            }
        }
    }
    if removed {
        fsync_dir(temp)?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod hooks {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Test controls of the data-file sync of a settle.
    #[derive(Debug, Default)]
    pub(in crate::backend::flatfs) struct Hooks {
        /// Held by a test: a settle blocks before its sync until released.
        pub(in crate::backend::flatfs) gate: parking_lot::Mutex<()>,
        /// This many next syncs fail with EIO.
        pub(in crate::backend::flatfs) fail: AtomicUsize,
        /// Syncs started.
        pub(in crate::backend::flatfs) started: AtomicUsize,
    }

    impl Hooks {
        pub(super) fn before_sync(&self) -> io::Result<()> {
            self.started.fetch_add(1, Ordering::SeqCst);
            drop(self.gate.lock());
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }
}
