//! The store's advisory lock ([`super::LOCK_FILE`], `flock`), and the one case where a lock
//! this process let go of can still be held for a moment.
//!
//! A `flock` belongs to the open file description. When any thread of this process starts a
//! child (`fork`/`posix_spawn`), the child gets a copy of every descriptor until its `exec`
//! closes the close-on-exec ones, and so holds the lock too for that moment. A store closed
//! and opened again by the same process (a test, a tool that reopens) could then find its own
//! lock still held and fail with `Locked`; on a loaded machine the window lasts milliseconds.
//! So the process remembers which locks it released and when, and an open that finds one of
//! them held within [`LINGER`] of its release waits for it; any other holder (another process,
//! or a handle still open here) is reported at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::datastore::{Error, ErrorKind, Result};

/// How long after its release a lock held by a starting child is waited for.
pub(super) const LINGER: Duration = Duration::from_secs(3);

/// Locks this process released less than [`LINGER`] ago, with when.
static RELEASED: Mutex<Vec<(PathBuf, Instant)>> = Mutex::new(Vec::new());

/// The held lock of an open store; released by [`StoreLock::release`] or on drop.
pub(super) struct StoreLock {
    file: Option<File>,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the lock of the store at `root` (see the module documentation).
    pub(super) fn acquire(root: &Path) -> Result<StoreLock> {
        let path = root.join(super::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io(format!("flatfs: opening lock file {}", path.display()), e))?;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(StoreLock {
                        file: Some(file),
                        path,
                    });
                }
                Err(TryLockError::WouldBlock) if released_recently(&path) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "flatfs: datastore {} is already open (lock {} is held by another \
                             process or handle); close it first",
                            root.display(),
                            path.display()
                        ),
                    ));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(format!("flatfs: locking {}", path.display()), e));
                }
            }
        }
    }

    /// Lets go of the lock (idempotent).
    pub(super) fn release(&mut self) {
        if let Some(file) = self.file.take() {
            let mut released = RELEASED.lock();
            let now = Instant::now();
            released.retain(|(p, at)| p != &self.path && now.duration_since(*at) < LINGER);
            released.push((self.path.clone(), now));
            drop(file);
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether this process released the lock at `path` less than [`LINGER`] ago.
fn released_recently(path: &Path) -> bool {
    RELEASED
        .lock()
        .iter()
        .any(|(p, at)| p == path && at.elapsed() < LINGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the lock's descriptor (what a child holds between its fork and its exec)
    /// outlives the store's own handle by 300 ms: the next open waits for it instead of
    /// failing with `Locked`, as it did (the CI failure of
    /// `tests/containment.rs::a_symlinked_flatfs_block_file_is_refused_and_reported`).
    #[test]
    fn a_lock_released_here_but_held_a_moment_longer_by_a_child_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = StoreLock::acquire(dir.path()).unwrap();
        let inherited = first.file.as_ref().unwrap().try_clone().unwrap();
        let child = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(inherited);
        });
        first.release();
        let again = StoreLock::acquire(dir.path());
        child.join().unwrap();
        assert!(again.is_ok(), "{:?}", again.err());
    }

    /// A lock held by an open handle (never released) is reported at once.
    #[test]
    fn a_lock_held_by_an_open_handle_is_reported_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StoreLock::acquire(dir.path()).unwrap();
        let began = Instant::now();
        let err = StoreLock::acquire(dir.path()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Locked);
        assert!(began.elapsed() < LINGER, "it waited");
    }
}
