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
use std::time::SystemTime;

use parking_lot::Mutex;

/// A file's content version: modification time and size.
pub type Version = (SystemTime, u64);

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
        let v1 = (SystemTime::UNIX_EPOCH + Duration::from_secs(1), 5);
        let v2 = (SystemTime::UNIX_EPOCH + Duration::from_secs(2), 5);
        assert!(!c.open(1, v1), "nothing known: drop");
        assert!(c.open(1, v1), "unchanged: keep");
        assert!(!c.open(1, v2), "changed underneath: drop");
        c.matches(1, v1);
        assert!(c.open(1, v1));
        c.forget(1);
        assert!(!c.open(1, v1), "forgotten: drop");
    }
}
