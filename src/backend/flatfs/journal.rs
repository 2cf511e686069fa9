//! In-place commits of overlay staged values, behind a redo journal.
//!
//! A random write into a large value is staged as an overlay ([`Staged::overlay`]): the dirty
//! ranges sit in a sparse staging file in `.temp`, the rest is still the data file. Renaming a
//! whole new file into place would need the clean ranges copied first, which for a 4 KiB write
//! into a 1 GiB file is a 1 GiB copy on every commit (every `fsync` and `close`). Instead, when
//! the clean part is large ([`IN_PLACE_MIN`]), the commit writes the dirty ranges into the data
//! file itself, made atomic across crashes by a redo record:
//!
//! 1. the staging file is synced; a record naming the data file (and its inode), the staging
//!    file, the truncation, the new length and the dirty ranges, with a sha2-256 of all that,
//!    is written to `.temp/journal-*` and synced, and `.temp` is synced;
//! 2. the data file is truncated to the surviving length, set to the new length, the dirty
//!    ranges are copied in from the staging file (`copy_file_range`), and it is synced;
//! 3. the record is removed, then the staging file, and `.temp` is synced.
//!
//! A crash before the record is complete leaves the old value (a torn record fails its
//! checksum and is ignored); a crash after it leaves a record that [`replay`] applies again when
//! the store is next opened (before `.temp` is emptied): applying is idempotent, because it
//! only writes the dirty ranges and the region above the surviving length, and never reads the
//! data file. A record whose data file is gone or is another inode (replaced by a later put,
//! rename or whole-file commit) is dropped; one whose staging file is gone was applied in full
//! (the staging file is removed only after the record).
//!
//! The cost is three to four `fsync`s per commit whatever `durable` says, against a copy of
//! the whole value; below [`IN_PLACE_MIN`] clean bytes the copy is cheaper and the store fills
//! in the clean ranges and renames as before. Readers that have the data file open (the
//! kernel, through FUSE passthrough) see the dirty ranges appear while step 2 runs, as they
//! would see a local file's writes; a reader never sees a range half old, half new within one
//! `copy_file_range` of a page, but may see some ranges new and others still old.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::durability::fsync_dir;
use super::{FlatFsStore, RemoveOnDrop};
use crate::datastore::stage::{OverlayPlan, copy_range, file_id};
use crate::datastore::{Error, ErrorKind, Result, Staged};

/// An overlay with at least this many clean bytes is committed in place; below it, copying the
/// clean bytes and renaming costs less than the journal's `fsync`s.
pub const IN_PLACE_MIN: u64 = 8 << 20;

const MAGIC: &str = "dsfs-flatfs-journal 1";

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
            dirty.push((a.parse().ok()?, b.parse().ok()?));
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
    let current = target.metadata()?.len();
    if plan.keep < current {
        target.set_len(plan.keep)?;
    }
    if plan.len != plan.keep.min(current) {
        target.set_len(plan.len)?;
    }
    for &(a, b) in &plan.dirty {
        copy_range(stage, target, a, b - a)?;
    }
    target.sync_data()
}

fn open_target(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn now_seq() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Applies the records left in `temp` by a crash (see the module documentation), oldest first,
/// and returns how many it applied. Run by `open` before it empties `temp`.
pub fn replay(root: &Path, temp: &Path) -> Result<usize> {
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
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| Error::io(format!("flatfs: reading {}", path.display()), e))?;
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
        let stage = match File::open(temp.join(&r.stage)) {
            Ok(f) => f,
            // Removed only after the record: this commit was finished.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("flatfs: opening {}", r.stage), e)),
        };
        let target = match open_target(&target_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
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
    /// Commits an overlay's dirty ranges into `dest` in place (see the module documentation).
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
        // Step 1.
        staged.sync_data()?;
        let (mut jf, jpath) = self.temp_file("journal")?;
        let journal = RemoveOnDrop(Some(jpath));
        jf.write_all(&record.encode())
            .and_then(|()| jf.sync_all())
            .map_err(|e| Error::io(ctx("writing the journal record"), e))?;
        drop(jf);
        fsync_dir(&self.temp)?;
        // Step 2.
        let old = target
            .metadata()
            .map_err(|e| Error::io(ctx("stat"), e))?
            .len();
        if let Err(e) = apply(target, staged.file(), &record.plan) {
            // The record stays, with its staging file, for the next open to finish.
            journal.disarm();
            let _ = staged.into_parts();
            return Err(Error::io(ctx("writing the data file"), e));
        }
        let delta = i128::from(record.plan.len) - i128::from(old);
        self.usage
            .add(i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }));
        // Step 3.
        drop(journal);
        drop(staged);
        fsync_dir(&self.temp)
    }

    /// Opens the data file at `rel` for an in-place commit if it is still `base_id` (the file
    /// an overlay was staged over); `None` if it is gone or was replaced.
    pub(super) fn in_place_target(&self, rel: &str, base_id: (u64, u64)) -> Result<Option<File>> {
        let path: PathBuf = self.root.join(rel);
        match open_target(&path) {
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
        let _ = staged.into_parts();
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
}
