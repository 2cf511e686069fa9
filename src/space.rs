//! Room to commit on a full disk.
//!
//! redb treats a failed write as fatal for the open database: after one ENOSPC every later
//! transaction fails ("Previous I/O error occurred"), so a full disk would take the index and
//! every redb-backed store down with it, and with them the commits of writes that `close`
//! already acknowledged. dsfs therefore keeps a [`Reserve`]: a file of preallocated zeros beside
//! a repository's index. The redb databases of the repository are opened through
//! [`open_redb`], whose storage backend answers an ENOSPC by releasing the reserve of its
//! filesystem and retrying the write once, so redb never sees the error.
//!
//! When the disk is nearly full (less than half the reserve free) or the reserve is released,
//! [`Reserve::room_for_new_data`] says no and the filesystem refuses new data (create, write,
//! mkdir, ...) with ENOSPC, while `rm`, `truncate`, renames and the commits of bytes already
//! written go on. Once enough space is free again (twice the reserve), the reserve is refilled
//! and new data is accepted.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

use crate::datastore::{Error, Result};

/// The reserve file's name, in the directory of the index it protects.
pub const RESERVE_NAME: &str = ".dsfs-reserve";

/// The largest reserve kept; smaller filesystems keep 1/32 of their size.
pub const DEFAULT_RESERVE: u64 = 8 << 20;

/// Every live reserve of this process, found by the device of the file that ran out of space.
static RESERVES: Mutex<Vec<Weak<Reserve>>> = Mutex::new(Vec::new());

/// How long one measurement of free space may answer [`Reserve::room_for_new_data`].
const ROOM_FRESH: Duration = Duration::from_millis(10);

/// The least room above the refusal threshold for which a measurement answers more than the
/// call that made it. Below it (a disk nearly full) every call measures, as it always did.
const ROOM_CACHED_ABOVE: u64 = 256 << 20;

/// Preallocated space beside a repository's index, spent when the disk fills up. See the
/// module documentation.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    size: u64,
    dev: u64,
    held: AtomicBool,
    fill: Mutex<()>,
    /// When `budget` was measured: nanoseconds after `epoch`, plus one (0: never).
    measured: AtomicU64,
    /// Bytes [`Reserve::room_for_new_data`] may still accept on the last measurement.
    budget: AtomicU64,
    epoch: Instant,
    /// statvfs calls made for `room_for_new_data` (for tests).
    checks: AtomicU64,
}

/// The bytes of new data one measurement of `free` bytes may accept before the next one, for a
/// reserve of `size` bytes that refuses new data below `size / 2` free: half the room above
/// that, and nothing when the room is under [`ROOM_CACHED_ABOVE`].
fn room_budget(free: u64, size: u64) -> u64 {
    let room = free.saturating_sub(size / 2);
    if room < ROOM_CACHED_ABOVE {
        0
    } else {
        room / 2
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl Reserve {
    /// Keeps a reserve of up to `size` bytes (at most 1/32 of the filesystem) in `dir`, filling
    /// the file now if there is room, and registers it for the filesystem's redb databases.
    pub fn establish(dir: &Path, size: u64) -> Result<Arc<Reserve>> {
        let dev = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .dev();
        let size = match crate::sys::statvfs(dir) {
            Ok(v) => size.min(v.f_blocks.saturating_mul(v.f_frsize) / 32),
            Err(_) => size,
        };
        let reserve = Arc::new(Reserve {
            path: dir.join(RESERVE_NAME),
            size,
            dev,
            held: AtomicBool::new(false),
            fill: Mutex::new(()),
            measured: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            epoch: Instant::now(),
            checks: AtomicU64::new(0),
        });
        if !reserve.refill() {
            log::warn!(
                "no room for the {} KiB reserve {}: a full disk may stop commits",
                size >> 10,
                reserve.path.display()
            );
        }
        let mut all = RESERVES.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&reserve));
        Ok(reserve)
    }

    /// The reserve file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the reserve is in place (not spent).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Fills the reserve file to its size; returns whether it is held now.
    fn refill(&self) -> bool {
        let _g = self.fill.lock();
        if self.is_held() {
            return true;
        }
        match self.write_zeros() {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                // A partial reserve would only take space that commits need now.
                let _ = std::fs::remove_file(&self.path);
                log::debug!("filling {}: {e}", self.path.display());
                false
            }
        }
    }

    fn write_zeros(&self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        // Blocks actually allocated, not the length: a sparse file reserves nothing.
        let mut at = (meta.blocks() * 512).min(meta.len()).min(self.size);
        let zeros = vec![0u8; 64 << 10];
        while at < self.size {
            let n = zeros.len().min((self.size - at) as usize);
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.set_len(self.size)?;
        file.sync_all()
    }

    /// Frees the reserve's space for commits; returns whether there was any to free.
    pub fn release(&self) -> bool {
        let _g = self.fill.lock();
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        // A measurement from before the disk filled must not answer after a refill.
        self.budget.store(0, Ordering::Release);
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::error!("releasing the reserve {}: {e}", self.path.display());
            return false;
        }
        // ext4 hands freed blocks out again only once its journal has committed the removal.
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
            && let Err(e) = crate::sys::syncfs(&d)
        {
            log::warn!("syncing {} after releasing its reserve: {e}", dir.display());
        }
        log::warn!(
            "the disk holding {} is full: released its {} KiB reserve so that commits finish; \
             new data gets ENOSPC until space is freed",
            self.path.display(),
            self.size >> 10
        );
        true
    }

    /// Whether `bytes` of new data may be written: the reserve is held and the disk still has
    /// room beside it, or the reserve could be refilled (twice its size free). Values small
    /// enough to live in redb wait in memory until the next durable commit, so new data is
    /// refused while the commit of what was accepted may still need the space.
    ///
    /// Free space is measured (statvfs) at most every `ROOM_FRESH` while the disk has far
    /// more room than the threshold: one measurement then accepts up to half the room above
    /// it (`room_budget`) before the next. A 4 KiB write otherwise paid a statvfs each,
    /// 5% of the daemon's time in fio's 4-job random writes. Near the threshold (less than
    /// `ROOM_CACHED_ABOVE` above it), and whenever the reserve is not held, every call
    /// measures.
    pub fn room_for_new_data(&self, bytes: u64) -> bool {
        let now = self.since_epoch();
        if self.is_held() {
            let measured = self.measured.load(Ordering::Acquire);
            if measured != 0
                && now.saturating_sub(measured - 1) < ROOM_FRESH.as_nanos() as u64
                && self
                    .budget
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                        b.checked_sub(bytes)
                    })
                    .is_ok()
            {
                return true;
            }
        }
        let free = self.free_bytes();
        if self.is_held() {
            let budget = room_budget(free, self.size);
            self.budget
                .store(budget.saturating_sub(bytes), Ordering::Release);
            self.measured.store(now + 1, Ordering::Release);
            return free >= self.size / 2;
        }
        free >= self.size.saturating_mul(2) && self.refill()
    }

    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// How many times [`Reserve::room_for_new_data`] measured the free space.
    pub fn room_checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Bytes this process may still write on the reserve's filesystem.
    fn free_bytes(&self) -> u64 {
        self.checks.fetch_add(1, Ordering::Relaxed);
        free_bytes_in(self.path.parent().unwrap_or(Path::new(".")))
    }
}

/// Bytes this process may still write on the filesystem of `dir` (0 if it cannot be measured).
fn free_bytes_in(dir: &Path) -> u64 {
    match crate::sys::statvfs(dir) {
        Ok(v) => {
            // root may also use the blocks the filesystem keeps back for it.
            let blocks = if crate::sys::effective_ids().0 == 0 {
                v.f_bfree
            } else {
                v.f_bavail
            };
            blocks.saturating_mul(v.f_frsize)
        }
        Err(_) => 0,
    }
}

/// The free space, beyond twice the reserves on the same filesystem, from which
/// [`Headroom::plenty`] lets a store hold acknowledged changes in memory.
pub const HOLD_ROOM: u64 = ROOM_CACHED_ABOVE;

/// Whether a store may acknowledge a change that a later commit writes, so that the blocks the
/// change needs are allocated only then (a redb store's held puts, `backend::redb_pending`).
///
/// A change committed at once meets a full disk itself: its writer gets ENOSPC, and nothing
/// that was acknowledged waits for blocks. A held change is acknowledged first, so its blocks
/// must not be in doubt: it may be held only while the filesystem has [`HOLD_ROOM`] (256 MiB)
/// free beyond twice every reserve on it (a reserve refused new data at half its size, and it
/// is refilled only at twice its size). The sets held are bounded far below that (256 KiB per
/// store), so a later commit finds their blocks even if other programs write hundreds of
/// megabytes in between; near a full disk every change is committed at once, as before.
/// One measurement (statvfs) answers for 10 ms.
#[derive(Debug)]
pub struct Headroom {
    dir: PathBuf,
    dev: u64,
    epoch: Instant,
    /// When `plenty` was measured: nanoseconds after `epoch`, plus one (0: never).
    measured: AtomicU64,
    plenty: AtomicBool,
    /// Tests: the free space required instead of the computed one.
    #[cfg(test)]
    need: AtomicU64,
}

impl Headroom {
    /// The headroom of the filesystem that holds `file`.
    pub fn of_file(file: &Path) -> Headroom {
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dev = std::fs::metadata(&dir).map(|m| m.dev()).unwrap_or(0);
        Headroom {
            dir,
            dev,
            epoch: Instant::now(),
            measured: AtomicU64::new(0),
            plenty: AtomicBool::new(false),
            #[cfg(test)]
            need: AtomicU64::new(0),
        }
    }

    /// Whether a change may be held in memory now (see [`Headroom`]).
    pub fn plenty(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let measured = self.measured.load(Ordering::Acquire);
        if measured != 0 && now.saturating_sub(measured - 1) < ROOM_FRESH.as_nanos() as u64 {
            return self.plenty.load(Ordering::Acquire);
        }
        let reserved: u64 = live_reserves(self.dev)
            .iter()
            .map(|r| r.size.saturating_mul(2))
            .sum();
        #[allow(unused_mut)]
        let mut need = HOLD_ROOM.saturating_add(reserved);
        #[cfg(test)]
        {
            let forced = self.need.load(Ordering::Relaxed);
            if forced != 0 {
                need = forced;
            }
        }
        let plenty = free_bytes_in(&self.dir) >= need;
        self.plenty.store(plenty, Ordering::Release);
        self.measured.store(now + 1, Ordering::Release);
        plenty
    }

    /// Tests: require `bytes` free instead of the computed amount (0: the computed amount),
    /// measured again at the next call.
    #[cfg(test)]
    pub fn require(&self, bytes: u64) {
        self.need.store(bytes, Ordering::Relaxed);
        self.measured.store(0, Ordering::Release);
    }
}

fn live_reserves(dev: u64) -> Vec<Arc<Reserve>> {
    RESERVES
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|r| r.dev == dev)
        .collect()
}

/// Releases a reserve on device `dev`; returns whether space was freed.
fn release_on(dev: u64) -> bool {
    live_reserves(dev).iter().any(|r| r.release())
}

/// Whether device `dev` has a reserve that was spent (by this call or a concurrent one).
fn spent_on(dev: u64) -> bool {
    live_reserves(dev).iter().any(|r| !r.is_held())
}

/// How often a write that ran out of space is retried after the reserve was released.
const RETRIES: u32 = 5;

/// Opens (creating if needed) the redb database at `path` through a [`ReserveBackend`].
pub fn open_redb(
    builder: &redb::Builder,
    path: &Path,
) -> std::result::Result<Database, DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let backend = ReserveBackend::new(file, path)?;
    builder.create_with_backend(backend)
}

/// redb's file backend, except that the file's blocks are allocated when redb grows it, and a
/// write, resize or sync that fails for lack of space releases the filesystem's [`Reserve`] and
/// is retried.
///
/// redb grows its file with `ftruncate`, which on ext4 and most filesystems makes a hole: the
/// blocks are only allocated when pages are written there. Pages of non-durable commits wait in
/// redb's write buffer (up to half its cache) and are written at the next durable commit, so
/// that commit could need megabytes of blocks the filesystem no longer has, after the
/// filesystem layer had accepted the data, and redb fails every later call after one failed
/// write. Here growth allocates the blocks at once (`fallocate`), while the transaction that
/// needs them runs, and a little beyond the file's end ([`HEADROOM_MAX`]) while there is
/// room, so that later growth on a full disk does not need new blocks either. Writes then only
/// fill blocks that exist. (Copy-on-write filesystems such as btrfs may still need new blocks
/// for overwrites; there the reserve is the only protection.)
#[derive(Debug)]
pub struct ReserveBackend {
    inner: FileBackend,
    /// The same file, for `fallocate` and for `syncfs` while freed space settles.
    file: File,
    path: PathBuf,
    dev: u64,
    /// Serializes growth (redb serializes it too; this keeps the length check and the
    /// allocation together regardless).
    grow: Mutex<()>,
}

/// The most space allocated beyond the end of a redb file for its next growth.
pub const HEADROOM_MAX: u64 = 4 << 20;

impl ReserveBackend {
    /// Wraps `file`, the redb database at `path` (named in logs); allocates blocks for any
    /// holes the file has (best effort).
    pub fn new(file: File, path: &Path) -> std::result::Result<ReserveBackend, DatabaseError> {
        let meta = file.metadata()?;
        let dup = file.try_clone()?;
        let backend = ReserveBackend {
            inner: FileBackend::new(file)?,
            file: dup,
            path: path.to_path_buf(),
            dev: meta.dev(),
            grow: Mutex::new(()),
        };
        if meta.len() > 0
            && meta.blocks() * 512 < meta.len()
            && let Err(e) = crate::sys::fallocate(&backend.file, 0, meta.len(), true)
        {
            log::debug!("allocating the holes of {}: {e}", path.display());
        }
        Ok(backend)
    }

    /// Runs `op`; if it runs out of space and the filesystem has a reserve, releases it and
    /// retries (a few times: a concurrent release may still be settling).
    fn spend<T>(&self, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        let mut result = op();
        for attempt in 0..RETRIES {
            match &result {
                Err(e) if is_no_space(e) => {}
                _ => return result,
            }
            if !release_on(self.dev) {
                if !spent_on(self.dev) {
                    return result;
                }
                let _ = crate::sys::syncfs(&self.file);
                std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
            }
            result = op();
        }
        result
    }

    /// Logs an error about to reach redb, which will refuse every later call until the
    /// database is reopened.
    fn report<T>(&self, what: std::fmt::Arguments<'_>, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            log::error!("redb file {}: {what} failed: {e}", self.path.display());
        }
        result
    }

    /// Grows the file to `len` with its blocks allocated, then allocates headroom beyond it.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let _g = self.grow.lock();
        let old = self.inner.len()?;
        if len <= old {
            return self.inner.set_len(len);
        }
        match self.spend(|| crate::sys::fallocate(&self.file, old, len - old, false)) {
            Ok(()) => {}
            Err(e) if is_no_space(&e) => {
                // Still sparse growth rather than a failed transaction: space may be freed
                // before the pages are written.
                log::warn!(
                    "redb file {}: no space to allocate {} KiB of growth; growing it sparse",
                    self.path.display(),
                    (len - old) >> 10
                );
            }
            Err(e) => log::debug!("fallocate on {}: {e}", self.path.display()),
        }
        self.inner.set_len(len)?;
        let headroom = (len / 4).clamp(64 << 10, HEADROOM_MAX);
        if let Err(e) = crate::sys::fallocate(&self.file, len, headroom, true) {
            log::debug!("headroom for {}: {e}", self.path.display());
        }
        Ok(())
    }
}

impl StorageBackend for ReserveBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.report(format_args!("resizing to {len}"), self.grow_to(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.report(format_args!("sync"), self.spend(|| self.inner.sync_data()))
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.report(
            format_args!("writing {} bytes at {offset}", data.len()),
            self.spend(|| self.inner.write(offset, data)),
        )
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> std::result::Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_allocated_released_once_and_refilled_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::establish(dir.path(), 1 << 20).unwrap();
        assert!(r.is_held());
        let meta = std::fs::metadata(r.path()).unwrap();
        assert!(meta.blocks() * 512 >= meta.len().min(1 << 20));
        assert!(r.release());
        assert!(!r.path().exists());
        assert!(!r.release());
        // A temporary directory has far more than twice the reserve free.
        assert!(r.room_for_new_data(4096));
        assert!(r.is_held() && r.path().exists());
    }

    #[test]
    fn room_is_measured_once_for_many_small_writes_when_the_disk_has_plenty() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::establish(dir.path(), 1 << 20).unwrap();
        if room_budget(r.free_bytes(), r.size) == 0 {
            eprintln!("skipping: the temporary directory's filesystem is nearly full");
            return;
        }
        let before = r.room_checks();
        for _ in 0..1000 {
            assert!(r.room_for_new_data(4096));
        }
        // One measurement per ROOM_FRESH at most: 1,000 calls take well under a second even
        // on a loaded machine. Measuring on every call made this 1,000.
        let checks = r.room_checks() - before;
        assert!(checks < 100, "{checks} measurements for 1,000 writes");
        // A write larger than the budget measures again.
        let before = r.room_checks();
        let _ = r.room_for_new_data(u64::MAX);
        assert_eq!(r.room_checks() - before, 1);
        // A released reserve measures on every call (and refills).
        assert!(r.release());
        let before = r.room_checks();
        assert!(r.room_for_new_data(4096));
        assert!(r.is_held());
        assert_eq!(r.room_checks() - before, 1);
    }

    #[test]
    fn headroom_is_plenty_only_with_the_room_it_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let h = Headroom::of_file(&dir.path().join("values.redb"));
        if free_bytes_in(dir.path()) >= HOLD_ROOM + (1 << 30) {
            // Far more than 256 MiB beyond any reserves the tests running beside this one hold.
            assert!(h.plenty());
        }
        h.require(u64::MAX);
        assert!(!h.plenty());
        h.require(1);
        assert!(h.plenty());
    }

    #[test]
    fn near_the_threshold_every_write_measures() {
        let size = 8 << 20;
        // Refused below size / 2 free; nothing is cached up to ROOM_CACHED_ABOVE above that.
        assert_eq!(room_budget(0, size), 0);
        assert_eq!(room_budget(size / 2, size), 0);
        assert_eq!(room_budget(size / 2 + ROOM_CACHED_ABOVE - 1, size), 0);
        assert_eq!(
            room_budget(size / 2 + ROOM_CACHED_ABOVE, size),
            ROOM_CACHED_ABOVE / 2
        );
        assert_eq!(room_budget(size / 2 + (10 << 30), size), 5 << 30);
    }

    /// Blocks allocated to `path` and its length.
    fn allocation(path: &Path) -> (u64, u64) {
        let meta = std::fs::metadata(path).unwrap();
        (meta.blocks() * 512, meta.len())
    }

    #[test]
    fn a_redb_file_grows_with_its_blocks_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let probe = File::create(dir.path().join("probe")).unwrap();
        if let Err(e) = crate::sys::fallocate(&probe, 0, 4096, false) {
            eprintln!("skipping: the temporary directory's filesystem has no fallocate ({e})");
            return;
        }
        let path = dir.path().join("db.redb");
        let db = open_redb(&Database::builder(), &path).unwrap();
        const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let value = vec![7u8; 3000];
        let mut grown = 0;
        let mut last_len = allocation(&path).1;
        for round in 0..40u64 {
            // Non-durable commits: their pages wait in redb's write buffer, in memory.
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(redb::Durability::None).unwrap();
            {
                let mut t = txn.open_table(T).unwrap();
                for i in 0..50 {
                    t.insert(round * 50 + i, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            let (blocks, len) = allocation(&path);
            if len > last_len {
                grown += 1;
                last_len = len;
            }
            // Every page redb may still write lies in blocks the file already has: writing
            // them out can not run out of space.
            assert!(
                blocks >= len,
                "round {round}: {blocks} bytes allocated of {len}"
            );
        }
        assert!(grown > 0, "the database never grew");
    }
}
