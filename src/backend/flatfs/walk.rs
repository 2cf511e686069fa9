//! The query walk (spec §5.9): a lazy iterator over the shard directories.
//!
//! It holds at most two open directory handles (the root and one shard) and no thread, so a
//! query dropped early releases everything at once. Top-level entries that are not directories
//! or start with `.` are skipped (`SHARDING`, `_README`, `diskUsage.cache`, `.temp`, the lock
//! file); inside a shard, names starting with `.` and names not ending in `.data` are skipped
//! (with a warning, except upstream's old `put-*` temporaries). Keys read back are not checked
//! against the alphabet or the shard function, as upstream.

use std::fs::ReadDir;
use std::io;
use std::path::{Path, PathBuf};

use crate::datastore::{Entry, Error, Result};

use super::encode::{EXTENSION, key_for};

/// Walks a flatfs tree, yielding one entry per data file.
pub(crate) struct Walker {
    root: PathBuf,
    top: Option<ReadDir>,
    shard: Option<(PathBuf, ReadDir)>,
    started: bool,
    done: bool,
    keys_only: bool,
    returns_sizes: bool,
    encode: bool,
}

impl Walker {
    pub(crate) fn new(root: PathBuf, keys_only: bool, returns_sizes: bool, encode: bool) -> Walker {
        Walker {
            root,
            top: None,
            shard: None,
            started: false,
            done: false,
            keys_only,
            returns_sizes,
            encode,
        }
    }

    fn fail(&mut self, path: &Path, e: io::Error) -> Option<Result<Entry>> {
        self.done = true;
        self.top = None;
        self.shard = None;
        Some(Err(Error::io(
            format!("flatfs: query walk failed at {}", path.display()),
            e,
        )))
    }

    /// The entry for data file `path`, or `None` if it vanished since it was listed.
    fn entry(&self, path: &Path, stem: &str) -> Option<Result<Entry>> {
        let key = key_for(stem, self.encode);
        if !self.keys_only {
            let read = crate::sys::open_regular_nofollow(path).and_then(|mut f| {
                let mut value = Vec::new();
                io::Read::read_to_end(&mut f, &mut value).map(|_| value)
            });
            return match read {
                Ok(value) => Some(Ok(Entry::with_value(key, value))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) if crate::sys::is_foreign_file(&e) => {
                    log::warn!(
                        "flatfs: skipping {}: a symlink or not a regular file",
                        path.display()
                    );
                    None
                }
                Err(e) => Some(Err(Error::io(
                    format!("flatfs: query reading {}", path.display()),
                    e,
                ))),
            };
        }
        if !self.returns_sizes {
            return Some(Ok(Entry::key_only(key, None)));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.is_file() => {
                log::warn!(
                    "flatfs: skipping {}: a symlink or not a regular file",
                    path.display()
                );
                None
            }
            Ok(m) => Some(Ok(Entry::key_only(key, Some(m.len())))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(Error::io(
                format!("flatfs: query reading {}", path.display()),
                e,
            ))),
        }
    }
}

impl Iterator for Walker {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            match std::fs::read_dir(&self.root) {
                Ok(rd) => self.top = Some(rd),
                Err(e) => {
                    let root = self.root.clone();
                    return self.fail(&root, e);
                }
            }
        }
        loop {
            if let Some((dir, rd)) = &mut self.shard {
                match rd.next() {
                    Some(Ok(ent)) => {
                        let file_name = ent.file_name();
                        let Some(name) = file_name.to_str() else {
                            log::warn!(
                                "flatfs: skipping non-UTF-8 file name {:?} in {}",
                                file_name,
                                dir.display()
                            );
                            continue;
                        };
                        if name.starts_with('.') {
                            continue;
                        }
                        let Some(stem) = name.strip_suffix(EXTENSION) else {
                            if !name.starts_with("put-") {
                                log::warn!(
                                    "flatfs: skipping {} (not a .data file)",
                                    dir.join(name).display()
                                );
                            }
                            continue;
                        };
                        let path = dir.join(name);
                        match self.entry(&path, stem) {
                            Some(result) => return Some(result),
                            None => continue,
                        }
                    }
                    Some(Err(e)) => {
                        let dir = dir.clone();
                        return self.fail(&dir, e);
                    }
                    None => self.shard = None,
                }
                continue;
            }
            let top = self.top.as_mut()?;
            match top.next() {
                None => {
                    self.done = true;
                    self.top = None;
                    return None;
                }
                Some(Err(e)) => {
                    let root = self.root.clone();
                    return self.fail(&root, e);
                }
                Some(Ok(ent)) => {
                    let file_name = ent.file_name();
                    let Some(name) = file_name.to_str() else {
                        continue;
                    };
                    if name.starts_with('.') {
                        continue;
                    }
                    match ent.file_type() {
                        Ok(t) if t.is_dir() => {}
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            let path = ent.path();
                            return self.fail(&path, e);
                        }
                    }
                    let path = ent.path();
                    match std::fs::read_dir(&path) {
                        Ok(rd) => self.shard = Some((path, rd)),
                        // A shard directory that vanished is ignored.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return self.fail(&path, e),
                    }
                }
            }
        }
    }
}
