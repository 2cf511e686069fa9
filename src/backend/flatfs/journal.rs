//! In-place commits of overlay staged values, behind a redo journal.
//!
//! A random write into a large value is staged as an overlay ([`Staged::overlay`]): the dirty
//! ranges sit in a sparse staging file in `.temp`, the rest is still the data file. Renaming a
//! whole new file into place would need the clean ranges copied first, which for a 4 KiB write
//! into a 1 GiB file is a 1 GiB copy on every commit (every `fsync` and `close`). Instead, when
//! the clean part is large ([`IN_PLACE_MIN`]), the commit writes the dirty ranges into the data
//! file itself, made atomic across crashes by a redo record whose data is the staging file:
//!
//! 1. the staging file is synced (`fdatasync`); a small record naming the data file (and its
//!    inode), the staging file, the truncation, the new length and the dirty ranges, with a
//!    sha2-256 of all that, is written to `.temp/journal-*` and synced, and `.temp` is synced.
//!    From here on the commit survives a crash: it is acknowledged once step 2 ran;
//! 2. the data file is truncated to the surviving length, set to the new length, and the dirty
//!    ranges are copied in from the staging file (`copy_file_range`, into the page cache);
//! 3. later, off the commit's path ("settling", by the store's settle thread in `settle.rs`):
//!    the data file is synced, the record is removed, then the staging file, and `.temp` is
//!    synced.
//!
//! So the changed bytes are synced once on the commit's path (in the staging file, as the redo
//! data) plus one small record, and the data file's copy reaches the disk by writeback or when
//! the settle thread syncs it. A commit is settled before anything else renames, replaces or
//! removes its data file (the hooks in `rename_into_place` and `do_delete`, which wait for the
//! thread if it is settling that file and settle the rest themselves), and when the store
//! closes; a commit waits for the thread only when more than
//! [`MAX_UNSETTLED`](super::settle::MAX_UNSETTLED) commits wait. While a commit waits, its data
//! file stays open, so its inode cannot be reused by another file that a stale record could
//! then be applied to. What happens when a settle fails is in `settle.rs`: nothing is lost.
//!
//! A crash before the record is complete leaves the old value (a torn record fails its
//! checksum and is ignored); a crash after it leaves a record that [`replay`] applies again when
//! the store is next opened (before `.temp` is emptied), oldest first: applying is idempotent,
//! because it only writes the dirty ranges and the region above the surviving length, and never
//! reads the data file, and several unsettled records of one data file apply in the order they
//! were committed. A record whose data file is gone or is another inode (replaced by a later put,
//! rename or whole-file commit) is dropped; one whose staging file is gone was settled (the
//! staging file is removed only after the record).
//!
//! Below [`IN_PLACE_MIN`] clean bytes the copy is cheaper than the journal's `fsync`s, and the
//! store fills in the clean ranges and renames as before. Readers that have the data file open
//! (the kernel, through FUSE passthrough) see the dirty ranges appear while step 2 runs, as they
//! would see a local file's writes; a reader never sees a range half old, half new within one
//! `copy_file_range` of a page, but may see some ranges new and others still old.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

use super::durability::fsync_dir;
use super::settle::Unsettled;
use super::{FlatFsStore, RemoveOnDrop};
use crate::datastore::stage::{OverlayPlan, copy_range, file_id};
use crate::datastore::{Error, ErrorKind, Result, Staged};

/// An overlay with at least this many clean bytes is committed in place; below it, copying the
/// clean bytes and renaming costs less than the journal's `fsync`s.
pub const IN_PLACE_MIN: u64 = 8 << 20;

const MAGIC: &str = "dsfs-flatfs-journal 1";

/// The largest journal record replay reads (a record of 10 million dirty ranges); a larger
/// `journal-*` file is an error, not ignored, so that no commit is dropped unseen.
const MAX_RECORD: u64 = 256 << 20;

/// One in-place commit, as written to `.temp/journal-*`.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    /// Orders records of one data file when several were left behind.
    seq: u128,
    /// The data file, relative to the store's root (`<shard>/<name>.data`).
    target: String,
    /// The staging file's name in `.temp`.
    stage: String,
    plan: OverlayPlan,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "{MAGIC}\nseq {}\ntarget {}\nstage {}\nid {} {}\nkeep {}\nlen {}\n",
            self.seq,
            self.target,
            self.stage,
            self.plan.base_id.0,
            self.plan.base_id.1,
            self.plan.keep,
            self.plan.len
        );
        for (a, b) in &self.plan.dirty {
            s.push_str(&format!("dirty {a} {b}\n"));
        }
        let sum = hex(&sha2::Sha256::digest(s.as_bytes()));
        s.push_str(&format!("sum {sum}\n"));
        s.into_bytes()
    }

    /// The record in `bytes`, or `None` if it is torn, damaged or not a record.
    fn decode(bytes: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(bytes).ok()?;
        let body_end = text.rfind("sum ")?;
        let (body, tail) = text.split_at(body_end);
        if tail.trim_end() != format!("sum {}", hex(&sha2::Sha256::digest(body.as_bytes()))) {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| -> Option<String> {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let seq = field("seq")?.parse().ok()?;
        let target = field("target")?;
        let stage = field("stage")?;
        let id = field("id")?;
        let (dev, ino) = id.split_once(' ')?;
        let base_id = (dev.parse().ok()?, ino.parse().ok()?);
        let keep = field("keep")?.parse().ok()?;
        let len = field("len")?.parse().ok()?;
        let mut dirty = Vec::new();
        for line in lines {
            let (a, b) = line.strip_prefix("dirty ")?.split_once(' ')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            // A range ends where it starts or later.
            if a > b {
                return None;
            }
            dirty.push((a, b));
        }
        let safe =
            |p: &str| !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|c| c == "..");
        if !safe(&target) || !safe(&stage) || stage.contains('/') {
            return None;
        }
        Some(Record {
            seq,
            target,
            stage,
            plan: OverlayPlan {
                base_id,
                keep,
                len,
                dirty,
                clean_bytes: 0,
            },
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Step 2: writes the record's changes into `target` from `stage` and syncs it.
fn apply(target: &File, stage: &File, plan: &OverlayPlan) -> io::Result<()> {
    write_changes(target, stage, plan)?;
    target.sync_data()
}

/// Step 2 without the sync: the record's changes into `target`'s page cache.
pub(super) fn write_changes(target: &File, stage: &File, plan: &OverlayPlan) -> io::Result<()> {
    let current = target.metadata()?.len();
    if plan.keep < current {
        target.set_len(plan.keep)?;
    }
    if plan.len != plan.keep.min(current) {
        target.set_len(plan.len)?;
    }
    for &(a, b) in &plan.dirty {
        let Some(n) = b.checked_sub(a) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a dirty range ends ({b}) before it starts ({a})"),
            ));
        };
        copy_range(stage, target, a, n)?;
    }
    Ok(())
}

/// A sequence number for a new record: the time in nanoseconds, but always above the last one
/// this process handed out (so that a clock step back cannot reorder one file's records).
fn now_seq() -> u128 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    let seq = if now > prev {
        now
    } else {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    };
    u128::from(seq)
}

/// Applies the records left in `temp` by a crash (see the module documentation), oldest first,
/// and returns how many it applied. Run by `open` before it empties `temp`.
pub fn replay(root: &Path, temp: &Path) -> Result<usize> {
    // Records are read only from a real `.temp` directory: one that is a symlink (or not a
    // directory) holds no records of ours, and is removed or refused by the caller.
    match std::fs::symlink_metadata(temp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("flatfs: reading {}", temp.display()), e)),
    }
    let root_dir = crate::sys::open_dir(root)
        .map_err(|e| Error::io(format!("flatfs: opening {}", root.display()), e))?;
    let temp_dir = crate::sys::open_dir(temp)
        .map_err(|e| Error::io(format!("flatfs: opening {}", temp.display()), e))?;
    let entries = match std::fs::read_dir(temp) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("flatfs: listing {}", temp.display()), e)),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::io(format!("flatfs: listing {}", temp.display()), e))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("journal-") {
            continue;
        }
        let path = entry.path();
        // A record is a regular file: a FIFO or a symlink here is not one of ours.
        let bytes = match crate::sys::read_small_file(&path, MAX_RECORD) {
            Ok(b) => b,
            Err(e) if crate::sys::is_foreign_file(&e) => {
                log::warn!(
                    "flatfs: ignoring {}, which is not a journal record ({e})",
                    path.display()
                );
                continue;
            }
            Err(e) => return Err(Error::io(format!("flatfs: reading {}", path.display()), e)),
        };
        match Record::decode(&bytes) {
            Some(r) => records.push(r),
            None => log::info!(
                "flatfs: ignoring the incomplete journal record {} (its commit never happened)",
                path.display()
            ),
        }
    }
    records.sort_by_key(|r| r.seq);
    let mut applied = 0;
    for r in records {
        let target_path = root.join(&r.target);
        // Both files are opened beneath their directories, following no symlink: a record
        // never reads or writes anything outside the store.
        let stage = match crate::sys::open_beneath(&temp_dir, Path::new(&r.stage)) {
            Ok(f) => f,
            // Removed only after the record: this commit was finished.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if crate::sys::is_foreign_file(&e) => {
                log::warn!(
                    "flatfs: ignoring a journal record whose staging file {} is not a regular file in {}",
                    r.stage,
                    temp.display()
                );
                continue;
            }
            Err(e) => return Err(Error::io(format!("flatfs: opening {}", r.stage), e)),
        };
        let target = match crate::sys::open_beneath_rw(&root_dir, Path::new(&r.target)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if crate::sys::is_foreign_file(&e) => {
                log::warn!(
                    "flatfs: ignoring a journal record for {}, which is not a regular file of the store",
                    target_path.display()
                );
                continue;
            }
            Err(e) => {
                return Err(Error::io(
                    format!("flatfs: opening {}", target_path.display()),
                    e,
                ));
            }
        };
        if file_id(&target)? != r.plan.base_id {
            // Replaced since: this record describes a file that is gone.
            continue;
        }
        apply(&target, &stage, &r.plan).map_err(|e| {
            Error::io(
                format!(
                    "flatfs: finishing an interrupted commit of {}",
                    target_path.display()
                ),
                e,
            )
        })?;
        log::warn!(
            "flatfs: finished an interrupted in-place commit of {}",
            target_path.display()
        );
        applied += 1;
    }
    Ok(applied)
}

impl FlatFsStore {
    /// Commits an overlay's dirty ranges into `dest` in place (see the module documentation):
    /// steps 1 and 2, then step 3 for the oldest waiting commits if there are too many.
    /// `target` is `dest` opened for writing and is the overlay's base (checked by the caller).
    /// Runs under the name's operation slot.
    pub(super) fn commit_in_place(
        &self,
        staged: Staged,
        plan: OverlayPlan,
        target: &File,
        rel: &str,
    ) -> Result<()> {
        let Some(stage_name) = staged
            .path()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return Err(Error::new(
                ErrorKind::Io,
                "flatfs: an in-place commit needs a named staging file",
            ));
        };
        let dest = self.root.join(rel);
        let ctx = |what: &str| format!("flatfs: committing {} in place: {what}", dest.display());
        let record = Record {
            seq: now_seq(),
            target: rel.to_owned(),
            stage: stage_name,
            plan,
        };
        // A failed settle of this file's earlier commits is repaired first (we hold its slot).
        // If that fails again they stay in the journal (and in order before this commit's
        // record), so this commit goes ahead: refusing it would lose its bytes, not save any.
        if let Err(e) = self.settler.settle_path(&dest, true) {
            log::error!("flatfs: {e}; the earlier in-place commits of it stay in the journal");
        }
        // Step 1.
        staged.sync_data()?;
        let (mut jf, jpath) = self.temp_file("journal")?;
        let journal = RemoveOnDrop(Some(jpath.clone()));
        jf.write_all(&record.encode())
            .and_then(|()| jf.sync_data())
            .map_err(|e| Error::io(ctx("writing the journal record"), e))?;
        drop(jf);
        fsync_dir(&self.temp)?;
        // Step 2.
        let old = target
            .metadata()
            .map_err(|e| Error::io(ctx("stat"), e))?
            .len();
        let kept = target
            .try_clone()
            .map_err(|e| Error::io(ctx("duplicating the data file's handle"), e));
        // From here on the staging file stays, with the record, until the commit is settled
        // (or, after a failure, until the next open finishes it).
        journal.disarm();
        // An overlay always has its file: taking it cannot spill, so cannot fail here.
        let (stage_file, stage_path) = staged.into_parts()?;
        let written = write_changes(target, &stage_file, &record.plan);
        drop(stage_file);
        let delta = i128::from(record.plan.len) - i128::from(old);
        if let Err(e) = written {
            return Err(Error::io(ctx("writing the data file"), e));
        }
        self.usage
            .add(i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }));
        let (Ok(kept), Some(stage)) = (kept, stage_path) else {
            // Cannot wait: settle now.
            target
                .sync_data()
                .map_err(|e| Error::io(ctx("syncing the data file"), e))?;
            return Ok(());
        };
        self.settler.push(Unsettled {
            seq: record.seq,
            target: kept,
            path: dest,
            record: jpath,
            stage,
            plan: record.plan,
            failed: false,
        });
        Ok(())
    }

    /// Settles every in-place commit of the data file at `path` (absolute), waiting for the
    /// settle thread if it is settling that file: called before the file is renamed, replaced
    /// or removed, under its operation slot.
    pub(super) fn settle_path(&self, path: &Path) -> Result<()> {
        self.settler.settle_path(path, false)
    }

    /// Stops the settle thread and settles every waiting in-place commit (at close).
    pub(super) fn settle_all(&self) -> Result<()> {
        self.settler.close()
    }

    /// Opens the data file at `rel` for an in-place commit if it is still `base_id` (the file
    /// an overlay was staged over); `None` if it is gone or was replaced.
    pub(super) fn in_place_target(&self, rel: &str, base_id: (u64, u64)) -> Result<Option<File>> {
        let path: PathBuf = self.root.join(rel);
        match crate::sys::open_beneath_rw(&self.root_dir, Path::new(rel)) {
            Ok(f) if file_id(&f)? == base_id => Ok(Some(f)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if crate::sys::is_foreign_file(&e) => Ok(None),
            Err(e) => Err(Error::io(format!("flatfs: opening {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            seq: 7,
            target: "AB/CIQAB.data".into(),
            stage: "stage-12".into(),
            plan: OverlayPlan {
                base_id: (3, 4),
                keep: 100,
                len: 200,
                dirty: vec![(0, 10), (150, 200)],
                clean_bytes: 0,
            },
        }
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_rejected() {
        let r = record();
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Some(record()));
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 2] {
            assert_eq!(Record::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(Record::decode(&flipped), None);
    }

    /// Stages a change of a 16 MiB value and writes its journal record (step 1) but stops
    /// there, as a crash would; `cut` tears the record. Returns the old and the new value.
    fn interrupted(dir: &Path, cut: Option<usize>) -> (Vec<u8>, Vec<u8>) {
        use crate::backend::flatfs::{FlatFsOptions, ShardFn};
        use crate::datastore::{Datastore, Key, StageInit};
        let store =
            FlatFsStore::create_or_open(dir, ShardFn::NextToLast(2), FlatFsOptions::default())
                .unwrap();
        let key = Key::new("/VALUE");
        let old: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        store.put(&key, &old).unwrap();
        let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
        staged.write_all_at(4096, b"new bytes").unwrap();
        staged.set_len(10 << 20).unwrap();
        staged.write_all_at(12 << 20, b"grown").unwrap();
        let new = staged.read_all().unwrap();
        let plan = staged.overlay_plan().unwrap().unwrap();
        let rel = store
            .backing_file(&key)
            .unwrap()
            .unwrap()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let record = Record {
            seq: now_seq(),
            target: rel,
            stage: staged
                .path()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            plan,
        };
        staged.sync_data().unwrap();
        let mut bytes = record.encode();
        if let Some(n) = cut {
            bytes.truncate(n);
        }
        let (_, _path) = store
            .temp_file("journal")
            .map(|(mut f, p)| {
                f.write_all(&bytes).unwrap();
                (f, p)
            })
            .unwrap();
        // The crash: the staging file stays, the data file was never touched.
        let _ = staged.into_parts().unwrap();
        drop(store);
        (old, new)
    }

    #[test]
    fn an_interrupted_in_place_commit_is_finished_when_the_store_opens() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = interrupted(dir.path(), None);
        assert_ne!(old, new);
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&Key::new("/VALUE")).unwrap() == new);
    }

    #[test]
    fn a_torn_journal_record_leaves_the_old_value() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = interrupted(dir.path(), Some(60));
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&Key::new("/VALUE")).unwrap() == old);
    }

    #[test]
    fn records_cannot_name_files_outside_the_store() {
        let mut r = record();
        r.target = "../etc/passwd".into();
        assert_eq!(Record::decode(&r.encode()), None);
        let mut r = record();
        r.stage = "x/../../y".into();
        assert_eq!(Record::decode(&r.encode()), None);
    }

    /// A 16 MiB value and an open store over `dir`.
    fn store_with_value(dir: &Path) -> (FlatFsStore, Vec<u8>) {
        use crate::backend::flatfs::{FlatFsOptions, ShardFn};
        use crate::datastore::{Datastore, Key};
        let store =
            FlatFsStore::create_or_open(dir, ShardFn::NextToLast(2), FlatFsOptions::default())
                .unwrap();
        let old: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        store.put(&Key::new("/VALUE"), &old).unwrap();
        (store, old)
    }

    /// Commits `writes` to `/VALUE` in place, one commit each; returns the value after each.
    fn commit_writes(store: &FlatFsStore, writes: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        use crate::datastore::{Datastore, Key, StageInit};
        let key = Key::new("/VALUE");
        let mut values = Vec::new();
        for &(at, data) in writes {
            let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
            assert!(staged.is_overlay());
            staged.write_all_at(at, data).unwrap();
            store.commit_staged(&key, staged, true).unwrap();
            values.push(store.get(&key).unwrap());
        }
        values
    }

    fn journal_records(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(crate::backend::flatfs::TEMP_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("journal-")
            })
            .count()
    }

    /// Waits (up to a minute) for `cond`.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The window this module opens: a commit acknowledged after its record and staging file
    /// were synced, whose data file never got the new bytes to disk before a crash (here: the
    /// data file is put back to its old bytes and the store is dropped without settling). The
    /// next open applies the unsettled records in commit order.
    #[test]
    fn unsettled_commits_are_redone_in_order_after_a_crash() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_value(dir.path());
        store.settler.pause(true);
        // Two commits overlapping at 8192..8200, so their order matters.
        let values = commit_writes(&store, &[(4096, &[1u8; 8192]), (8192, &[2u8; 8])]);
        let new = values.last().unwrap().clone();
        assert_eq!(&new[4096..8192], &[1u8; 4096][..]);
        assert_eq!(&new[8192..8200], &[2u8; 8][..]);
        assert_eq!(journal_records(dir.path()), 2);
        // The crash: nothing is settled, and the data file lost what was not written back.
        let target = store.backing_file(&Key::new("/VALUE")).unwrap().unwrap();
        store.settler.forget();
        drop(store);
        std::fs::write(&target, &old).unwrap();
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&Key::new("/VALUE")).unwrap() == new);
        assert_eq!(journal_records(dir.path()), 0);
    }

    /// A closed store has settled every commit: nothing is left to redo.
    #[test]
    fn closing_settles_every_commit() {
        use crate::datastore::Datastore;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_value(dir.path());
        store.settler.pause(true);
        commit_writes(&store, &[(0, b"a"), (100, b"b")]);
        assert_eq!(journal_records(dir.path()), 2);
        store.close().unwrap();
        assert_eq!(journal_records(dir.path()), 0);
    }

    /// The settle thread settles commits by itself, without a close.
    #[test]
    fn the_settle_thread_settles_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_value(dir.path());
        commit_writes(&store, &[(0, b"a"), (100, b"b"), (1 << 20, b"c")]);
        wait_until("the settle thread", || {
            journal_records(dir.path()) == 0 && store.settler.counts().0 == 0
        });
    }

    /// A commit waiting to be settled is settled before its data file is removed or replaced,
    /// so its record can never be applied to the file that replaces it.
    #[test]
    fn replacing_or_removing_a_value_settles_its_commits_first() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_value(dir.path());
        store.settler.pause(true);
        let key = Key::new("/VALUE");
        let many: Vec<(u64, &[u8])> = (0..7).map(|i| (i * 4096, &b"x"[..])).collect();
        commit_writes(&store, &many);
        assert_eq!(journal_records(dir.path()), 7);
        store.put(&key, b"replaced").unwrap();
        assert_eq!(journal_records(dir.path()), 0);
        store.delete(&key).unwrap();
        let fresh = vec![7u8; 16 << 20];
        store.put(&key, &fresh).unwrap();
        commit_writes(&store, &[(0, b"z")]);
        store.delete(&key).unwrap();
        assert_eq!(journal_records(dir.path()), 0);
        store.put(&key, &fresh).unwrap();
        store.settler.forget();
        drop(store);
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&key).unwrap() == fresh);
    }

    /// A commit returns while the settle of earlier commits (of its own file and of another
    /// file) is stuck in the data file's sync. Before the settle thread, the fifth waiting
    /// commit synced the oldest one's data file itself and so waited here.
    #[test]
    fn a_commit_does_not_wait_for_the_settling_of_earlier_commits() {
        use crate::datastore::{Datastore, Key, StageInit};
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_value(dir.path());
        let other = Key::new("/OTHER");
        store.put(&other, &vec![3u8; 16 << 20]).unwrap();
        let store = std::sync::Arc::new(store);
        let gate = store.settler.hooks().gate.lock();
        commit_writes(&store, &[(0, b"first")]);
        // The settle thread took the first commit and is stuck before its sync.
        wait_until("the settle to start", || {
            store.settler.hooks().started.load(Ordering::SeqCst) >= 1
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let store = store.clone();
            let other = other.clone();
            std::thread::spawn(move || {
                let writes: Vec<(u64, &[u8])> = (1..8).map(|i| (i * 4096, &b"y"[..])).collect();
                commit_writes(&store, &writes);
                for i in 0..8u64 {
                    let staged = store.stage(&other, StageInit::CopyCurrent).unwrap();
                    staged.write_all_at(i * 8192, b"o").unwrap();
                    store.commit_staged(&other, staged, true).unwrap();
                }
                tx.send(()).unwrap();
            })
        };
        let returned = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(gate);
        writer.join().unwrap();
        assert!(
            returned.is_ok(),
            "a commit waited for an earlier commit's settle"
        );
        store.close().unwrap();
        assert_eq!(journal_records(dir.path()), 0);
        let value = store.get(&Key::new("/VALUE")).unwrap();
        assert_eq!(&value[..5], b"first");
        assert_eq!(value[7 * 4096], b'y');
        assert_eq!(store.get(&other).unwrap()[7 * 8192], b'o');
    }

    /// Backpressure: with the settle thread stuck, commits go on until more than
    /// `MAX_UNSETTLED` wait, and the next one waits until the thread moves again.
    #[test]
    fn commits_wait_when_the_settle_thread_is_far_behind() {
        use crate::backend::flatfs::settle::MAX_UNSETTLED;
        use crate::datastore::Datastore;
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_value(dir.path());
        let store = std::sync::Arc::new(store);
        let gate = store.settler.hooks().gate.lock();
        commit_writes(&store, &[(0, b"first")]);
        wait_until("the settle to start", || {
            store.settler.hooks().started.load(Ordering::SeqCst) >= 1
        });
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let writes: Vec<(u64, &[u8])> = (1..=MAX_UNSETTLED as u64 + 2)
                    .map(|i| (i * 4096, &b"y"[..]))
                    .collect();
                commit_writes(&store, &writes);
            })
        };
        wait_until("the queue to fill", || {
            store.settler.counts().0 == MAX_UNSETTLED + 1
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(store.settler.counts().0, MAX_UNSETTLED + 1);
        assert!(
            !writer.is_finished(),
            "the commit over the bound did not wait"
        );
        drop(gate);
        writer.join().unwrap();
        store.close().unwrap();
        assert_eq!(journal_records(dir.path()), 0);
    }

    /// A settle whose sync fails keeps the records; the thread leaves the file alone, and the
    /// next commit of the file writes the failed commit again before syncing, so the bytes the
    /// kernel may have dropped with the failed writeback come back.
    #[test]
    fn a_failed_settle_is_repaired_by_the_next_commit_of_its_file() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_value(dir.path());
        let key = Key::new("/VALUE");
        store.settler.hooks().fail.store(1, Ordering::SeqCst);
        commit_writes(&store, &[(4096, &[1u8; 8192])]);
        wait_until("the settle to fail", || store.settler.counts() == (1, 1));
        assert_eq!(journal_records(dir.path()), 1);
        // The kernel dropped the pages it could not write.
        let target = store.backing_file(&key).unwrap().unwrap();
        File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .write_all_at(&old[4096..12288], 4096)
            .unwrap();
        let values = commit_writes(&store, &[(8192, &[2u8; 8])]);
        let mut want = old.clone();
        want[4096..12288].fill(1);
        want[8192..8200].fill(2);
        assert!(values[0] == want);
        store.close().unwrap();
        assert_eq!(journal_records(dir.path()), 0);
        drop(store);
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&key).unwrap() == want);
    }

    /// When the settle at close fails too, close reports it and the records stay: the next open
    /// redoes the commits, whatever the data file lost.
    #[test]
    fn a_settle_failing_at_close_leaves_the_commits_to_the_next_open() {
        use crate::backend::flatfs::FlatFsOptions;
        use crate::datastore::{Datastore, Key};
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_value(dir.path());
        let key = Key::new("/VALUE");
        store.settler.pause(true);
        let values = commit_writes(&store, &[(4096, &[1u8; 8192]), (8192, &[2u8; 8])]);
        store.settler.hooks().fail.store(1, Ordering::SeqCst);
        assert!(store.close().is_err());
        assert_eq!(journal_records(dir.path()), 2);
        let target = store.backing_file(&key).unwrap().unwrap();
        drop(store);
        std::fs::write(&target, &old).unwrap();
        let store = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap();
        assert!(store.get(&key).unwrap() == values[1]);
        assert_eq!(journal_records(dir.path()), 0);
    }
}
