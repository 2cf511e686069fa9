//! What an index needs to follow a flatfs directory that other programs write: the store's
//! identity, its shard directories as segments with change stamps, and one shard's keys.
//!
//! A shard directory's stamp is its inode number and modification time (ns). The directory's
//! mtime changes whenever an entry is created, removed or renamed in it (Kubo writes every block
//! to a temporary file and renames it into place), so an unchanged stamp means an unchanged set
//! of names. A value rewritten in place does not change it; the filesystem finds that by
//! checking the file's size when it revalidates the key (see `docs/SEMANTICS.md`).

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::datastore::{Error, Key, Result, Segment};

use super::encode::{EXTENSION, key_for};

/// The file in a flatfs root holding the store's id (a dot name: flatfs readers skip it).
pub const ID_FILE: &str = ".dsfs.id";

/// How old a shard directory's mtime must be before its stamp is trusted: a change made within
/// the same timestamp tick as the last one could leave the mtime as it was.
const SETTLE: Duration = Duration::from_secs(1);

/// The store id in `root/.dsfs.id`, written the first time (the directory must be writable).
pub(crate) fn store_id(root: &Path) -> Result<String> {
    let path = root.join(ID_FILE);
    // An id is one short line; a FIFO, a symlink or a huge file is not one and is replaced.
    match crate::sys::read_small_file(&path, 4096) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            if !text.trim().is_empty() {
                return Ok(text.trim().to_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if crate::sys::is_foreign_file(&e) || e.kind() == io::ErrorKind::FileTooLarge => {
            log::warn!(
                "flatfs: replacing {}, which is not a store id: {e}",
                path.display()
            );
        }
        Err(e) => return Err(Error::io(format!("flatfs: reading {}", path.display()), e)),
    }
    let id = new_id();
    let tmp = root.join(format!("{ID_FILE}.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(root)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("flatfs: writing {}", path.display()), e)
    })?;
    Ok(id)
}

/// A random id: the kernel's UUID generator, or the clock and pid when it is unavailable.
fn new_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
        _ => {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{nanos:x}-{:x}", std::process::id())
        }
    }
}

/// Every shard directory of `root` (names not starting with `.`) with its stamp.
pub(crate) fn segments(root: &Path) -> Result<Vec<Segment>> {
    let ctx = |e| Error::io(format!("flatfs: listing {}", root.display()), e);
    let now = SystemTime::now();
    let mut out = Vec::new();
    for ent in std::fs::read_dir(root).map_err(ctx)? {
        let ent = ent.map_err(ctx)?;
        let file_name = ent.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = match ent.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx(e)),
        };
        if !meta.is_dir() {
            continue;
        }
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= SETTLE);
        out.push(Segment {
            name: name.to_owned(),
            stamp: format!("{}.{mtime_ns}", meta.ino()),
            settled,
        });
    }
    Ok(out)
}

/// Every key in shard directory `dir`, with its value's size. A missing directory holds none.
pub(crate) fn shard_keys(dir: &Path, encode: bool) -> Result<Vec<(Key, u64)>> {
    let ctx = |e| Error::io(format!("flatfs: listing {}", dir.display()), e);
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ctx(e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(ctx)?;
        let file_name = ent.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Some(stem) = name.strip_suffix(EXTENSION) else {
            continue;
        };
        match ent.metadata() {
            Ok(m) if m.is_file() => out.push((key_for(stem, encode), m.len())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx(e)),
        }
    }
    Ok(out)
}
