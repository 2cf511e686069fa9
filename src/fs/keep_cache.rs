//! When the kernel may keep a file's page cache across an open (`FOPEN_KEEP_CACHE`).
//!
//! Without the flag the kernel drops an inode's cached pages at every page-cached open, so a
//! file written and then read back, or read twice, is read from the daemon each time. Keeping
//! them is safe when the pages hold the file's current content: the adapter records, per
//! inode, the content version (modification time and size) the kernel's pages were last known
//! to match, and an open keeps the cache only when the file's version is still that one.
//!
//! The pages match a version after a page-cached open that dropped them (the kernel then
//! reads what the daemon serves), and after the release of a page-cached handle while no
//! direct-I/O or passthrough handle of the inode is open: page-cached writes go through the
//! kernel's cache, so it holds what they wrote. A direct-I/O handle writes past the cache, so
//! its open forgets the record. A change made underneath (the command line through the
//! control socket, another writer of a followed store) changes the version, so the next open
//! drops the pages. The kernel evicting an inode (FORGET) drops the record.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::types::Ino;
use super::{Attr, DsFs, FsError, FsResult};

/// A file's content version: modification time and size, and for a value others may write
/// (a flatfs directory a running Kubo writes) the identity of the file holding it.
pub type Version = (SystemTime, u64, Option<FileStamp>);

/// A value's file as `stat` sees it: device, inode, modification time in nanoseconds, size.
/// Another program rewriting the value (by rename, or in place) changes it, also when the
/// size stays the same and before revalidation notices (which compares sizes only).
pub type FileStamp = (u64, u64, i128, u64);

impl DsFs {
    /// The content version of inode `ino` whose attributes are `attr`. For values only dsfs
    /// writes, the index's modification time and size; for values others may write, also the
    /// stamp of their file (one `stat`), so that pages kept across opens never outlive a
    /// rewrite made beside the mount.
    pub fn content_version(&self, ino: u64, attr: &Attr) -> Version {
        let stamp = if self.file_backed && !self.only_writer(ino) {
            self.file_stamp(ino)
        } else {
            None
        };
        (attr.mtime, attr.size, stamp)
    }

    /// The content version a writer's release leaves: the index's record as its writes left
    /// it, without asking the store whether another program changed it since (as `getattr`
    /// does). Such a change is the next open's to find, by its revalidation or, for a value
    /// others may write, by the file stamp taken here. `NotFound` for a file whose last name
    /// is gone.
    pub fn written_version(&self, ino: u64) -> FsResult<Version> {
        let n = self.node(Ino(ino).node())?;
        if Self::dir_value_gone(ino, &n) {
            return Err(FsError::NotFound);
        }
        let attr = self.attr_of(ino, &n);
        Ok(self.content_version(ino, &attr))
    }

    fn file_stamp(&self, ino: u64) -> Option<FileStamp> {
        let key = self.key_of(ino).ok()?;
        let path = self.backend.backing_file(&key).ok()??;
        let m = std::fs::symlink_metadata(path).ok()?;
        let nanos = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        Some((m.dev(), m.ino(), nanos, m.size()))
    }
}

/// The content version each inode's kernel page cache matches.
#[derive(Default)]
pub struct CacheVersions {
    known: Mutex<HashMap<u64, Version>>,
}

impl CacheVersions {
    /// A page-cached open of `ino`, whose content is now at `now`: whether the kernel may keep
    /// its pages. Either way they match `now` afterwards (kept, or dropped and re-read).
    pub fn open(&self, ino: u64, now: Version) -> bool {
        let mut known = self.known.lock();
        let keep = known.get(&ino) == Some(&now);
        known.insert(ino, now);
        keep
    }

    /// The kernel's pages of `ino` match `now` (a page-cached handle was released with no
    /// direct-I/O handle open).
    pub fn matches(&self, ino: u64, now: Version) {
        self.known.lock().insert(ino, now);
    }

    /// Nothing is known about the pages of `ino` any more.
    pub fn forget(&self, ino: u64) {
        self.known.lock().remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::CacheVersions;
    use std::time::{Duration, SystemTime};

    #[test]
    fn keeps_only_an_unchanged_version() {
        let c = CacheVersions::default();
        let v1 = (SystemTime::UNIX_EPOCH + Duration::from_secs(1), 5, None);
        let v2 = (SystemTime::UNIX_EPOCH + Duration::from_secs(2), 5, None);
        let v3 = (v1.0, 5, Some((1, 2, 3, 5)));
        assert!(!c.open(1, v1), "nothing known: drop");
        assert!(c.open(1, v1), "unchanged: keep");
        assert!(!c.open(1, v2), "changed underneath: drop");
        assert!(c.open(1, v2));
        assert!(!c.open(1, v3), "its file changed: drop");
        c.matches(1, v1);
        assert!(c.open(1, v1));
        c.forget(1);
        assert!(!c.open(1, v1), "forgotten: drop");
    }
}
