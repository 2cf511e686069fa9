//! The disk-usage counter, its initial estimate and the `diskUsage.cache` checkpoints
//! (spec §5.10).
//!
//! The counter holds apparent sizes (`st_size`): whatever the initial scan found under the root
//! (the root directory itself, `SHARDING`, `_README`, `.temp`, shard directories and data files),
//! then plus the size of every data file written, minus the size of every data file replaced or
//! deleted, plus the size of every shard directory when it is created. Directories that grow
//! later are not re-measured, as upstream.
//!
//! `diskUsage.cache` is `{"diskUsage":<int64>,"accuracy":"<string>"}` and a newline, written
//! to a temporary file in `.temp` and renamed into place. A background thread writes it when the
//! counter has moved more than 1 % from the last written value (but not sooner than
//! [`CHECKPOINT_MIN_GAP`] after its last write), and otherwise no later than 2 s after the first
//! unwritten change. The initial scan's result and the value at close are written with fsync.
//!
//! The gap is ours, not upstream's: removing many small files moves a small store's counter
//! past 1 % every few dozen deletes, and each write costs a new inode in `.temp` (on ext4 after
//! many deletes, a scan of the inode bitmap), which made these writes 18 % of the daemon's CPU
//! in a loop of 4 KiB unlinks. With the gap the file lags the counter by at most the changes of
//! the last 100 ms beyond the threshold; it is still only a hint (a crash always left it behind
//! by up to 2 s of changes below the threshold), and the value at close is exact.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::datastore::stage::create_unique;
use crate::datastore::{Error, Result};

/// The name of the cache file in the datastore root.
pub const DISK_USAGE_FILE: &str = "diskUsage.cache";
/// Upstream's `DiskUsageFilesAverage`: the most entries per directory that the initial scan
/// measures; the rest are estimated from their average.
pub const DISK_USAGE_FILES_AVERAGE: usize = 2000;
/// Upstream's `DiskUsageCalcTimeout`: the longest the initial scan runs before estimating
/// everything left.
pub const DISK_USAGE_CALC_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Upstream's `diskUsageCheckpointTimeout`.
pub const CHECKPOINT_DELAY: Duration = Duration::from_secs(2);
/// The least time between two checkpoints written because the counter moved past the
/// threshold (not upstream's; see the module's documentation).
pub const CHECKPOINT_MIN_GAP: Duration = Duration::from_millis(100);

/// How the disk usage was first obtained, as stored in `diskUsage.cache`.
pub mod accuracy {
    /// The scan could not say.
    pub const UNKNOWN: &str = "unknown";
    /// Every entry was measured.
    pub const EXACT: &str = "initial-exact";
    /// Some directory held more entries than were sampled.
    pub const APPROXIMATE: &str = "initial-approximate";
    /// The scan ran out of time and estimated the rest.
    pub const TIMED_OUT: &str = "initial-timed-out";

    /// The worse of two accuracies, as upstream combines them across directories.
    pub fn combine<'a>(a: &'a str, b: &'a str) -> &'a str {
        if a == UNKNOWN || b == UNKNOWN {
            UNKNOWN
        } else if a == TIMED_OUT || b == TIMED_OUT {
            TIMED_OUT
        } else if a == APPROXIMATE || b == APPROXIMATE {
            APPROXIMATE
        } else if a == EXACT && b == EXACT {
            EXACT
        } else if a.is_empty() {
            b
        } else if b.is_empty() {
            a
        } else {
            UNKNOWN
        }
    }
}

/// The JSON written to `diskUsage.cache`, in upstream's field order.
#[derive(serde::Serialize)]
struct CacheRecord<'a> {
    #[serde(rename = "diskUsage")]
    disk_usage: i64,
    accuracy: &'a str,
}

/// Serialises a cache record: the JSON object followed by one newline.
pub(crate) fn cache_bytes(disk_usage: i64, accuracy: &str) -> Vec<u8> {
    let record = CacheRecord {
        disk_usage,
        accuracy,
    };
    // Serialising a struct of an integer and a string cannot fail; fall back to a hand-built
    // line rather than panic all the same.
    let mut out = serde_json::to_vec(&record)
        .unwrap_or_else(|_| format!("{{\"diskUsage\":{disk_usage},\"accuracy\":\"\"}}").into());
    out.push(b'\n');
    out
}

/// Reads `diskUsage.cache` the way Go's `json.Unmarshal` would for upstream's struct: field
/// names match case-insensitively and unknown fields are ignored. Returns the value and the
/// accuracy (empty when absent), or `None` if the file is missing or unreadable.
pub(crate) fn read_cache(root: &Path) -> Option<(i64, String)> {
    // The cache is one short JSON line; a FIFO, a symlink or a huge file is not usable.
    let bytes = crate::sys::read_small_file(&root.join(DISK_USAGE_FILE), 4096).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let obj = value.as_object()?;
    let field = |name: &str| {
        obj.get(name).or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };
    let disk_usage = match field("diskUsage") {
        Some(v) => v.as_i64()?,
        None => 0,
    };
    let accuracy = match field("accuracy") {
        Some(v) => v.as_str()?.to_owned(),
        None => String::new(),
    };
    Some((disk_usage, accuracy))
}

/// Estimates the apparent size of everything under `path` (upstream's `folderSize`): in each
/// directory at most `limit` entries (all when `None`) are measured, in random order, and the
/// rest are counted at the average of those measured; subdirectories are measured recursively
/// and count as one entry. Past `deadline` everything left is estimated.
pub(crate) fn folder_size(
    path: &Path,
    deadline: Instant,
    limit: Option<usize>,
) -> std::io::Result<(i64, &'static str)> {
    let own = std::fs::metadata(path)?;
    let mut names: Vec<OsString> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    let max = limit.unwrap_or(names.len());
    if names.len() > max {
        shuffle(&mut names);
    }
    let mut accuracy = accuracy::EXACT;
    let mut du: i64 = 0;
    let mut measured: usize = 0;
    let mut vanished: usize = 0;
    for name in &names {
        if Instant::now() > deadline {
            accuracy = accuracy::TIMED_OUT;
            break;
        }
        if measured >= max {
            accuracy = accuracy::combine(accuracy, accuracy::APPROXIMATE);
            break;
        }
        let sub = path.join(name);
        // As upstream (the entry's own lstat): a symlink counts as itself and is not
        // followed, into a loop or out of the store.
        let meta = match std::fs::symlink_metadata(&sub) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vanished += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            let (size, acc) = folder_size(&sub, deadline, limit)?;
            accuracy = accuracy::combine(accuracy, acc);
            du = du.saturating_add(size);
        } else {
            du = du.saturating_add(i64::try_from(meta.len()).unwrap_or(i64::MAX));
        }
        measured += 1;
    }
    let unmeasured = names.len().saturating_sub(measured + vanished);
    if measured > 0 && unmeasured > 0 {
        let average = du as f64 / measured as f64;
        du = du.saturating_add((average * unmeasured as f64) as i64);
    }
    du = du.saturating_add(i64::try_from(own.len()).unwrap_or(i64::MAX));
    Ok((du, accuracy))
}

/// Fisher–Yates with a splitmix64 generator seeded from the OS.
fn shuffle<T>(items: &mut [T]) {
    let mut seed = [0u8; 8];
    crate::datastore::key::fill_random(&mut seed);
    let mut x = u64::from_le_bytes(seed);
    let mut next = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The last value written to the cache file.
struct Stored {
    disk_usage: i64,
    accuracy: String,
}

struct Signal {
    changed: bool,
    stop: bool,
}

/// The counter and its checkpointing, shared with the background thread.
pub(crate) struct UsageTracker {
    counter: AtomicI64,
    root: PathBuf,
    temp: PathBuf,
    /// Serialises cache writes and remembers the last one.
    stored: Mutex<Stored>,
    signal: Mutex<Signal>,
    wake: Condvar,
    delay: Duration,
    /// The least time between two checkpoints past the threshold.
    min_gap: Duration,
    /// The value last written (a copy of `stored.disk_usage` that [`UsageTracker::add`] reads
    /// without a lock).
    last_written: AtomicI64,
    /// Whether the thread has been told of a change not yet written (it then writes it after
    /// the delay, or at once past the threshold).
    unwritten: AtomicBool,
    /// Whether `add` has woken the thread for a change past the threshold that has not been
    /// written yet (the thread writes it once the gap since its last write has passed).
    urgent: AtomicBool,
    /// How often `add` woke the checkpoint thread.
    wakes: AtomicU64,
    /// How many checkpoints the thread wrote.
    checkpoints: AtomicU64,
    /// Whether a failure to write the cache file has been reported (see
    /// [`UsageTracker::cache_failed`]).
    cache_warned: AtomicBool,
}

impl UsageTracker {
    /// A tracker starting at `initial`, whose last written value is `stored`.
    pub(crate) fn new(
        root: PathBuf,
        temp: PathBuf,
        initial: i64,
        stored: i64,
        accuracy: String,
        delay: Duration,
    ) -> UsageTracker {
        UsageTracker {
            counter: AtomicI64::new(initial),
            root,
            temp,
            stored: Mutex::new(Stored {
                disk_usage: stored,
                accuracy,
            }),
            signal: Mutex::new(Signal {
                changed: false,
                stop: false,
            }),
            wake: Condvar::new(),
            delay,
            min_gap: CHECKPOINT_MIN_GAP,
            last_written: AtomicI64::new(stored),
            unwritten: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            wakes: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            cache_warned: AtomicBool::new(false),
        }
    }

    /// Reports that writing the cache file failed (`when`: what the write was for). The
    /// first failure is a warning; later ones, which are almost always the same cause (a
    /// directory or an unwritable file in its place, a full disk), are logged at debug level
    /// only. The cache is an estimate: without it the next open measures the tree again, so
    /// nothing is lost and no operation fails for it.
    pub(crate) fn cache_failed(&self, when: &str, e: &crate::datastore::Error) {
        if self.cache_warned.swap(true, Ordering::AcqRel) {
            log::debug!("flatfs: could not write {DISK_USAGE_FILE} ({when}): {e}");
        } else {
            log::warn!(
                "flatfs: could not write {DISK_USAGE_FILE} ({when}): {e}; the next open \
                 measures the store's size again (further failures are logged at debug level)"
            );
        }
    }

    /// The same tracker with another least time between checkpoints past the threshold.
    #[cfg(test)]
    fn with_min_gap(mut self, min_gap: Duration) -> UsageTracker {
        self.min_gap = min_gap;
        self
    }

    /// The current value.
    pub(crate) fn get(&self) -> i64 {
        self.counter.load(Ordering::Acquire)
    }

    /// The accuracy string kept in the cache file.
    pub(crate) fn accuracy(&self) -> String {
        self.stored.lock().accuracy.clone()
    }

    /// Adds `delta` (negative to subtract) and asks for a checkpoint: the thread is woken by
    /// the first change since the last value written (it writes it after the delay) and by
    /// one that moves the value past the checkpoint threshold (upstream's 1 %, written at
    /// once), not by every write and delete in between, which it would have nothing to do for.
    pub(crate) fn add(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        // SeqCst here and in `checkpoint`: either this swap sees the flag a checkpoint
        // cleared, or that checkpoint's re-read of the counter sees this change.
        let now = self
            .counter
            .fetch_add(delta, Ordering::SeqCst)
            .wrapping_add(delta);
        let first = !self.unwritten.swap(true, Ordering::SeqCst);
        // Past the threshold, the thread is woken once until it writes (it may have to wait
        // for the gap since its last write; it then writes the value of that moment).
        let urgent = exceeds_threshold(now, self.last_written.load(Ordering::SeqCst))
            && !self.urgent.swap(true, Ordering::SeqCst);
        if !first && !urgent {
            return;
        }
        self.wakes.fetch_add(1, Ordering::Relaxed);
        let mut signal = self.signal.lock();
        signal.changed = true;
        self.wake.notify_one();
    }

    /// Writes the cache file with `disk_usage` (and the kept accuracy) through a temporary
    /// file in `.temp`; with `fsync` the file and the root directory are synced.
    pub(crate) fn write_cache(&self, disk_usage: i64, fsync: bool) -> Result<()> {
        let mut stored = self.stored.lock();
        let (mut file, tmp) = create_unique(&self.temp, "temp")?;
        let dest = self.root.join(DISK_USAGE_FILE);
        let result = (|| {
            let ctx = || format!("flatfs: writing {}", tmp.display());
            file.write_all(&cache_bytes(disk_usage, &stored.accuracy))
                .map_err(|e| Error::io(ctx(), e))?;
            if fsync {
                file.sync_all().map_err(|e| Error::io(ctx(), e))?;
            }
            std::fs::rename(&tmp, &dest)
                .map_err(|e| Error::io(format!("flatfs: replacing {}", dest.display()), e))?;
            if fsync {
                super::durability::fsync_dir(&self.root)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                stored.disk_usage = disk_usage;
                self.last_written.store(disk_usage, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Starts the checkpoint thread.
    pub(crate) fn start(self: &Arc<Self>) -> Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("flatfs-du".to_owned())
            .spawn(move || me.run())
            .map_err(|e| Error::io("flatfs: starting the disk-usage checkpoint thread", e))
    }

    /// Stops the checkpoint thread (the caller joins it and writes the final value).
    pub(crate) fn stop(&self) {
        let mut signal = self.signal.lock();
        signal.stop = true;
        self.wake.notify_all();
    }

    fn run(&self) {
        let mut dirty = false;
        let mut deadline: Option<Instant> = None;
        // When the thread last wrote a checkpoint.
        let mut last_write: Option<Instant> = None;
        loop {
            let changed = {
                let mut signal = self.signal.lock();
                loop {
                    if signal.stop {
                        return;
                    }
                    if signal.changed {
                        break;
                    }
                    match deadline {
                        Some(d) if Instant::now() >= d => break,
                        Some(d) => {
                            self.wake.wait_until(&mut signal, d);
                        }
                        None => self.wake.wait(&mut signal),
                    }
                }
                std::mem::take(&mut signal.changed)
            };
            let du = self.get();
            if changed {
                dirty = true;
                let last = self.stored.lock().disk_usage;
                // Upstream: write when the change exceeds 1 % of the last written value; here
                // not sooner than the gap after the last write (then at that moment).
                if exceeds_threshold(du, last) {
                    match last_write.map(|t| t + self.min_gap) {
                        Some(due) if Instant::now() < due => {
                            deadline = Some(deadline.map_or(due, |d| d.min(due)));
                        }
                        _ => dirty = !self.checkpoint(du, &mut last_write),
                    }
                }
                if dirty && deadline.is_none() {
                    deadline = Some(Instant::now() + self.delay);
                }
                if !dirty {
                    deadline = None;
                }
            } else {
                deadline = None;
                if dirty {
                    dirty = !self.checkpoint(du, &mut last_write);
                    if dirty {
                        deadline = Some(Instant::now() + self.delay);
                    }
                }
            }
        }
    }

    /// Writes `du` (not synced); on success records the moment in `last_write`.
    fn checkpoint(&self, du: i64, last_write: &mut Option<Instant>) -> bool {
        match self.write_cache(du, false) {
            Ok(()) => {
                *last_write = Some(Instant::now());
                // Changes made while writing may not have woken the thread: it looks again.
                self.urgent.store(false, Ordering::SeqCst);
                self.unwritten.store(false, Ordering::SeqCst);
                if self.counter.load(Ordering::SeqCst) != du {
                    self.unwritten.store(true, Ordering::SeqCst);
                    self.signal.lock().changed = true;
                }
                self.checkpoints.fetch_add(1, Ordering::SeqCst);
                true
            }
            Err(e) => {
                self.cache_failed("a checkpoint", &e);
                false
            }
        }
    }
}

/// Upstream's rule for a checkpoint: the value moved by more than 1 % of the last one written.
fn exceeds_threshold(now: i64, last: i64) -> bool {
    let diff = (i128::from(now) - i128::from(last)).abs();
    diff * 100 > i128::from(last).abs()
}

/// Whether `err` is EMFILE (too many open files), which upstream retries.
pub(crate) fn is_too_many_files(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::EMFILE)
}

/// Maps a scan failure to a datastore error.
pub(crate) fn scan_error(root: &Path, e: std::io::Error) -> Error {
    Error::io(
        format!(
            "flatfs: computing the disk usage of {} (no usable {DISK_USAGE_FILE})",
            root.display()
        ),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lines_match_upstream_json() {
        assert_eq!(
            cache_bytes(6357, accuracy::EXACT),
            b"{\"diskUsage\":6357,\"accuracy\":\"initial-exact\"}\n"
        );
        assert_eq!(
            cache_bytes(-3, ""),
            b"{\"diskUsage\":-3,\"accuracy\":\"\"}\n"
        );
    }

    #[test]
    fn reading_the_cache_is_as_lenient_as_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DISK_USAGE_FILE);
        std::fs::write(&p, "{\"diskUsage\":42,\"accuracy\":\"initial-exact\"}\n").unwrap();
        assert_eq!(read_cache(dir.path()), Some((42, "initial-exact".into())));
        std::fs::write(&p, "{\"DISKUSAGE\": 7, \"other\": true}").unwrap();
        assert_eq!(read_cache(dir.path()), Some((7, String::new())));
        std::fs::write(&p, "12345\n").unwrap();
        assert_eq!(read_cache(dir.path()), None);
        std::fs::write(&p, "{\"diskUsage\":\"12\"}").unwrap();
        assert_eq!(read_cache(dir.path()), None);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(read_cache(dir.path()), None);
    }

    #[test]
    fn accuracy_combines_to_the_worst() {
        use accuracy::*;
        assert_eq!(combine(EXACT, EXACT), EXACT);
        assert_eq!(combine(EXACT, APPROXIMATE), APPROXIMATE);
        assert_eq!(combine(TIMED_OUT, APPROXIMATE), TIMED_OUT);
        assert_eq!(combine(UNKNOWN, TIMED_OUT), UNKNOWN);
        assert_eq!(combine("", EXACT), EXACT);
        assert_eq!(combine("weird", EXACT), UNKNOWN);
    }

    #[test]
    fn folder_size_is_exact_below_the_limit_and_close_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("S");
        std::fs::create_dir(&sub).unwrap();
        for i in 0..300 {
            std::fs::write(sub.join(format!("{i}.data")), vec![0u8; 100]).unwrap();
        }
        let far = Instant::now() + Duration::from_secs(600);
        let (exact, acc) = folder_size(dir.path(), far, None).unwrap();
        assert_eq!(acc, accuracy::EXACT);
        let dir_sizes =
            std::fs::metadata(dir.path()).unwrap().len() + std::fs::metadata(&sub).unwrap().len();
        assert_eq!(exact as u64, 300 * 100 + dir_sizes);
        let (est, acc) = folder_size(dir.path(), far, Some(50)).unwrap();
        assert_eq!(acc, accuracy::APPROXIMATE);
        assert_eq!(est, exact, "equal-sized files estimate exactly");
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let (_, acc) = folder_size(dir.path(), past, None).unwrap();
        assert_eq!(acc, accuracy::TIMED_OUT);
    }

    /// The first change wakes the checkpoint thread (to write it after the delay); the next
    /// ones below the checkpoint threshold do not; one past it does, and is written at once.
    #[test]
    fn only_changes_past_the_threshold_wake_the_checkpoint_thread() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(".temp");
        std::fs::create_dir(&temp).unwrap();
        let t = Arc::new(UsageTracker::new(
            dir.path().to_path_buf(),
            temp,
            1_000_000,
            1_000_000,
            accuracy::EXACT.into(),
            Duration::from_secs(600),
        ));
        let thread = t.start().unwrap();
        for _ in 0..100 {
            t.add(4096);
            t.add(-4096);
            t.add(50);
        }
        assert_eq!(t.get(), 1_005_000);
        assert_eq!(t.wakes.load(Ordering::Relaxed), 1);
        t.add(6_000);
        assert_eq!(t.wakes.load(Ordering::Relaxed), 2);
        let deadline = Instant::now() + Duration::from_secs(20);
        while read_cache(dir.path()).map(|c| c.0) != Some(1_011_000) {
            assert!(
                Instant::now() < deadline,
                "the checkpoint was never written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.stop();
        thread.join().unwrap();
    }

    fn tracker(dir: &Path, value: i64, min_gap: Duration) -> Arc<UsageTracker> {
        let temp = dir.join(".temp");
        std::fs::create_dir_all(&temp).unwrap();
        Arc::new(
            UsageTracker::new(
                dir.to_path_buf(),
                temp,
                value,
                value,
                accuracy::EXACT.into(),
                Duration::from_secs(600),
            )
            .with_min_gap(min_gap),
        )
    }

    fn wait_for_cache(dir: &Path, value: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while read_cache(dir).map(|c| c.0) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "the checkpoint of {value} was never written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_checkpoints(t: &UsageTracker, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.checkpoints.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "no checkpoint {n} was written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Changes past the threshold, one after another (each moves the counter by 2 %), write one
    /// checkpoint at once and the rest not before the gap since it: one write for all of them
    /// within the gap (upstream wrote one per change), and the thread is woken once for them.
    #[test]
    fn changes_past_the_threshold_within_the_gap_write_one_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), 1_000_000, Duration::from_secs(600));
        let thread = t.start().unwrap();
        t.add(20_000);
        wait_for_checkpoints(&t, 1);
        assert_eq!(read_cache(dir.path()).map(|c| c.0), Some(1_020_000));
        let wakes = t.wakes.load(Ordering::Relaxed);
        let mut value = 1_020_000;
        for _ in 0..50 {
            let step = value / 50;
            t.add(step);
            value += step;
        }
        assert_eq!(t.get(), value);
        // The first change after the write wakes the thread (it is the first unwritten one);
        // no other does.
        assert_eq!(t.wakes.load(Ordering::Relaxed), wakes + 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(t.checkpoints.load(Ordering::Relaxed), 1);
        assert_eq!(read_cache(dir.path()).map(|c| c.0), Some(1_020_000));
        t.stop();
        thread.join().unwrap();
    }

    /// What the gap held back is written once the gap has passed, with no further change to
    /// wake the thread.
    #[test]
    fn a_change_held_back_by_the_gap_is_written_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), 1_000_000, Duration::from_millis(50));
        let thread = t.start().unwrap();
        t.add(20_000);
        t.add(20_000);
        t.add(20_000);
        wait_for_cache(dir.path(), 1_060_000);
        t.stop();
        thread.join().unwrap();
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
