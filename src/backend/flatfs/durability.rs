//! Making writes durable: fsync helpers and the set of things written since the last `sync`.
//!
//! Upstream's `Sync` does nothing. Ours remembers every data file written and every directory
//! changed (a shard directory that gained or lost an entry, the root when a shard directory was
//! created) since the last `sync`, and fsyncs them, files first. Past
//! [`MAX_TRACKED_FILES`] files it stops remembering names and uses one `syncfs` of the file
//! system holding the store instead, so memory stays bounded.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::datastore::{Error, Result};

/// How many written files are remembered by name before falling back to `syncfs`.
pub const MAX_TRACKED_FILES: usize = 4096;

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    crate::sys::sync_dir(dir)
        .map_err(|e| Error::io(format!("flatfs: syncing directory {}", dir.display()), e))
}

/// The directories [`fsync_dir`] (and every other caller of `sys::sync_dir`) synced on this
/// thread, for tests.
#[cfg(test)]
pub(crate) use crate::sys::SYNCED_DIRS;

/// fsyncs a file by path. A file that no longer exists needs nothing (whatever removed or
/// replaced it recorded its directory).
fn fsync_file(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(f) => f
            .sync_all()
            .map_err(|e| Error::io(format!("flatfs: syncing {}", path.display()), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("flatfs: syncing {}", path.display()), e)),
    }
}

/// Flushes every dirty page and inode of the file system that holds `root`.
fn syncfs(root: &Path) -> Result<()> {
    let dir = File::open(root)
        .map_err(|e| Error::io(format!("flatfs: opening {}", root.display()), e))?;
    crate::sys::syncfs(&dir)
        .map_err(|e| Error::io(format!("flatfs: syncfs of {}", root.display()), e))
}

#[derive(Default)]
struct Dirty {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    root: bool,
    /// Too many files to name: sync the whole file system.
    overflow: bool,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty() && !self.root && !self.overflow
    }

    fn merge(&mut self, other: Dirty) {
        self.overflow |= other.overflow;
        self.root |= other.root;
        if self.overflow {
            self.files.clear();
            self.dirs.clear();
        } else {
            self.files.extend(other.files);
            self.dirs.extend(other.dirs);
        }
    }
}

/// What has been written since the last successful [`DirtySet::flush`].
#[derive(Default)]
pub(crate) struct DirtySet {
    state: Mutex<Dirty>,
    /// Held for a whole flush, so a flush never returns while an earlier one is still syncing
    /// what it took.
    flushing: Mutex<()>,
}

impl DirtySet {
    /// Records a data file written (its contents and its entry in `dir`).
    pub(crate) fn file(&self, path: PathBuf, dir: &Path) {
        let mut st = self.state.lock();
        if st.overflow {
            return;
        }
        if st.files.len() >= MAX_TRACKED_FILES {
            st.overflow = true;
            st.files.clear();
            st.dirs.clear();
            return;
        }
        st.files.insert(path);
        if !st.dirs.contains(dir) {
            st.dirs.insert(dir.to_path_buf());
        }
    }

    /// Records a changed directory entry in `dir` (a delete).
    pub(crate) fn dir(&self, dir: &Path) {
        let mut st = self.state.lock();
        if !st.overflow && !st.dirs.contains(dir) {
            st.dirs.insert(dir.to_path_buf());
        }
    }

    /// Records a new entry in the root (a shard directory).
    pub(crate) fn root(&self) {
        self.state.lock().root = true;
    }

    /// Takes the pending entries of the root: whether a shard directory was created since the
    /// last flush. A caller that takes them syncs the root, or gives them back with
    /// [`DirtySet::root`] if it cannot.
    pub(crate) fn take_root(&self) -> bool {
        std::mem::take(&mut self.state.lock().root)
    }

    /// Whether `path` may have been written or renamed into place since the last flush (so
    /// its content or its name may not be durable yet).
    pub(crate) fn may_hold(&self, path: &Path) -> bool {
        let st = self.state.lock();
        st.overflow || st.files.contains(path)
    }

    /// Whether something written is not synced yet.
    #[cfg(test)]
    pub(crate) fn is_pending(&self) -> bool {
        !self.state.lock().is_empty()
    }

    /// Whether a shard directory's entry in the root is not synced yet.
    #[cfg(test)]
    pub(crate) fn is_root_pending(&self) -> bool {
        self.state.lock().root
    }

    /// Makes everything recorded so far durable. On failure everything not yet synced stays
    /// recorded, so a later flush retries.
    pub(crate) fn flush(&self, root: &Path) -> Result<()> {
        let _one_at_a_time = self.flushing.lock();
        let taken = std::mem::take(&mut *self.state.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let result = if taken.overflow {
            syncfs(root)
        } else {
            (|| {
                for f in &taken.files {
                    fsync_file(f)?;
                }
                for d in &taken.dirs {
                    match fsync_dir(d) {
                        Err(e) if e.is_not_found() => {}
                        other => other?,
                    }
                }
                if taken.root {
                    fsync_dir(root)?;
                }
                Ok(())
            })()
        };
        if result.is_err() {
            self.state.lock().merge(taken);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_syncs_and_forgets_and_overflow_falls_back_to_syncfs() {
        let dir = tempfile::tempdir().unwrap();
        let set = DirtySet::default();
        let f = dir.path().join("A.data");
        std::fs::write(&f, b"x").unwrap();
        set.file(f.clone(), dir.path());
        set.file(dir.path().join("gone.data"), dir.path());
        set.root();
        set.flush(dir.path()).unwrap();
        assert!(set.state.lock().is_empty());
        for i in 0..=MAX_TRACKED_FILES {
            set.file(dir.path().join(format!("{i}")), dir.path());
        }
        {
            let st = set.state.lock();
            assert!(st.overflow && st.files.is_empty());
        }
        set.flush(dir.path()).unwrap();
        assert!(set.state.lock().is_empty());
    }
}
