//! `FlatFsStore`: a datastore byte-compatible with go-ds-flatfs v0.6 (Kubo's `blocks/`).
//!
//! The on-disk format is upstream's (spec §5, `docs/FLATFS.md`): a key `/KEY` lives in
//! `<root>/<shard(KEY)>/KEY.data` holding the raw value, `SHARDING` names the shard function,
//! `.temp/` holds scratch files and is emptied on open, and `diskUsage.cache` caches the
//! disk-usage counter. A Kubo repo's `blocks/` opens as it is, and Kubo reads what we write.
//!
//! Where we differ from upstream, deliberately:
//! * [`Datastore::sync`] really makes earlier writes durable (upstream's is a no-op);
//! * `open` takes an advisory lock, [`LOCK_FILE`], so two dsfs processes never share a store;
//! * an optional reversible key encoding ([`FlatFsOptions::encode_keys`]) stores keys outside
//!   the flatfs alphabet without colliding with real flatfs keys;
//! * in a batch the last operation on a key wins (upstream keeps the first put);
//! * a query skips a file deleted between listing and reading instead of reporting an error.

mod batch;
mod disk_usage;
mod durability;
mod empty;
mod encode;
mod follow;
#[cfg(test)]
mod hostile_tests;
mod journal;
mod lock;
mod ops;
mod settle;
mod shard;
mod walk;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::datastore::query::{self, EntryIter};
use crate::datastore::stage::create_unique;
use crate::datastore::{
    Batch, BatchOps, Capabilities, Datastore, Error, ErrorKind, Key, MEMORY_LIMIT, Query, Result,
    Results, SpillTo, StageInit, Staged,
};

pub use self::batch::FlatFsBatch;
pub use self::disk_usage::{
    CHECKPOINT_DELAY, DISK_USAGE_CALC_TIMEOUT, DISK_USAGE_FILE, DISK_USAGE_FILES_AVERAGE, accuracy,
};
pub use self::durability::MAX_TRACKED_FILES;
pub use self::encode::{
    ENCODED_MARKER, EXTENSION, MAX_ENCODED_KEY_BYTES, MAX_FILE_NAME, MAX_NAME, base32_decode,
    base32_encode, is_valid_key,
};
pub use self::follow::ID_FILE;
pub use self::shard::{
    MAX_SHARD_PARAM, README_FILE, README_TEXT, SHARD_ID_PREFIX, SHARDING_FILE, ShardFn,
};

use self::batch::BatchOp;
use self::disk_usage::UsageTracker;
use self::durability::DirtySet;
#[cfg(test)]
pub(crate) use self::durability::SYNCED_DIRS;
pub(crate) use self::durability::fsync_dir;
use self::ops::{Begin, Mode, OpMap};

/// The scratch directory, emptied on every open.
pub const TEMP_DIR: &str = ".temp";
/// The advisory lock file in the datastore root, held (with `flock`) while a store is open.
/// Its dot name keeps it out of flatfs queries, ours and upstream's.
pub const LOCK_FILE: &str = ".dsfs.lock";

/// How many times an operation failing with EMFILE is tried, as upstream (`RetryAttempts`).
const RETRY_ATTEMPTS: u32 = 6;
/// The back-off unit between EMFILE retries (`RetryDelay`): attempt `i` sleeps `(i+1)` units.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Options for [`FlatFsStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatFsOptions {
    /// Upstream's `sync` flag: fsync every put's file and shard directory (and the root when a
    /// shard directory is created) before returning, and batch files and directories on commit.
    /// Kubo's default is `false`. Deletes are never fsynced by themselves (as upstream); use
    /// [`Datastore::sync`] for that.
    pub sync: bool,
    /// Store keys outside the flatfs alphabet under reversible encoded names (`~` + lower-case
    /// base32), so that any clean key of up to [`MAX_ENCODED_KEY_BYTES`] bytes can be stored.
    /// Valid flatfs keys are stored exactly as upstream either way.
    pub encode_keys: bool,
    /// The most entries per directory that the initial disk-usage scan measures (upstream's
    /// `DiskUsageFilesAverage`, 2000); `None` measures everything.
    pub disk_usage_samples: Option<usize>,
    /// How long the initial scan may run before estimating the rest (upstream: 5 minutes).
    pub disk_usage_timeout: Duration,
    /// The longest the cache file lags a change of less than 1 % (upstream: 2 s).
    pub checkpoint_delay: Duration,
}

impl Default for FlatFsOptions {
    fn default() -> FlatFsOptions {
        FlatFsOptions {
            sync: false,
            encode_keys: false,
            disk_usage_samples: Some(DISK_USAGE_FILES_AVERAGE),
            disk_usage_timeout: DISK_USAGE_CALC_TIMEOUT,
            checkpoint_delay: CHECKPOINT_DELAY,
        }
    }
}

/// A flatfs datastore. See the module documentation and `docs/FLATFS.md`.
pub struct FlatFsStore {
    root: PathBuf,
    /// The root directory, open: data files are opened beneath it without following symlinks.
    root_dir: File,
    temp: PathBuf,
    shard: ShardFn,
    options: FlatFsOptions,
    /// `true` once closed. Writes hold the read side for their whole duration, so `close`
    /// (which takes the write side) waits for them.
    closed: RwLock<bool>,
    usage: Arc<UsageTracker>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    ops: OpMap,
    /// Shard directories known to exist. A name enters only after its directory was created
    /// and measured, so no file lands in a directory before the directory is counted.
    known_dirs: RwLock<HashSet<String>>,
    mkdir_lock: Mutex<()>,
    dirty: DirtySet,
    /// In-place commits whose data files are not synced yet, and the thread that syncs them
    /// (see `journal.rs` and `settle.rs`).
    settler: settle::Settler,
    lock: Mutex<Option<lock::StoreLock>>,
}

/// A path removed when dropped, unless disarmed: the temp file of a write that failed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("flatfs: could not remove {}: {e}", path.display());
        }
    }
}

/// Runs `f`, retrying EMFILE failures with upstream's linear back-off.
fn retry_emfile<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if disk_usage::is_too_many_files(&e) && attempt + 1 < RETRY_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(RETRY_DELAY * attempt);
            }
            other => return other,
        }
    }
}

fn is_emfile_error(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(disk_usage::is_too_many_files)
}

/// Symlinks and other non-regular files in a flatfs tree rooted at `root`, and data files in a
/// shard directory that `shard` does not give their name (listed, but never readable under
/// their key); one per line of the report.
pub(crate) fn scrub_foreign(root: &Path, shard: ShardFn) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let list = |dir: &Path| {
        std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("flatfs: listing {}", dir.display()), e))
    };
    for ent in list(root)? {
        let ent = ent.map_err(|e| Error::io(format!("flatfs: listing {}", root.display()), e))?;
        let path = ent.path();
        let Ok(t) = ent.file_type() else { continue };
        if t.is_symlink() {
            found.push(format!(
                "{} is a symlink; dsfs does not follow it",
                path.display()
            ));
            continue;
        }
        if !t.is_dir() || ent.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for sub in list(&path)? {
            let sub =
                sub.map_err(|e| Error::io(format!("flatfs: listing {}", path.display()), e))?;
            let Ok(t) = sub.file_type() else { continue };
            let sub_name = sub.file_name();
            let sub_name = sub_name.to_string_lossy();
            if t.is_file()
                && !sub_name.starts_with('.')
                && let Some(stem) = sub_name.strip_suffix(encode::EXTENSION)
            {
                let want = shard.dir_for(stem);
                if *ent.file_name() != *want {
                    found.push(format!(
                        "{} is in the shard directory of another name ({want}/ is its own); it \
                         is listed but cannot be read under its key, and is left for a person to \
                         move",
                        sub.path().display()
                    ));
                }
                continue;
            }
            if !t.is_file() {
                found.push(format!(
                    "{} is {}, not a data file; dsfs does not follow or read it",
                    sub.path().display(),
                    if t.is_symlink() {
                        "a symlink"
                    } else {
                        "not a regular file"
                    }
                ));
            }
        }
    }
    Ok(found)
}

/// The error for a path in the store that is a symlink or not a regular file.
fn foreign(path: &Path, e: io::Error) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "flatfs: {} is a symlink or not a regular file ({e}); dsfs does not follow it",
            path.display()
        ),
    )
}

fn dir_is_empty(path: &Path) -> Result<bool> {
    let mut rd = std::fs::read_dir(path)
        .map_err(|e| Error::io(format!("flatfs: listing {}", path.display()), e))?;
    match rd.next() {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(Error::io(format!("flatfs: listing {}", path.display()), e)),
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o755).create(path)
}

impl FlatFsStore {
    /// Upstream's `Create`: makes the directory (not its parents) if needed and, when it has no
    /// `SHARDING` file, writes `SHARDING` (and `_README` for `next-to-last/2`). Does not open the
    /// store.
    ///
    /// Errors: a non-empty directory without `SHARDING` is [`ErrorKind::InvalidArgument`]
    /// ("directory missing SHARDING file"); a store with another shard function is
    /// [`ErrorKind::InvalidArgument`] ("shard function mismatch"); a store with this shard
    /// function is [`ErrorKind::AlreadyExists`] (upstream's `ErrDatastoreExists`).
    pub fn create(path: impl AsRef<Path>, shard: ShardFn) -> Result<()> {
        let root = path.as_ref();
        check_param(shard)?;
        match make_dir(root) {
            // The new directory's own entry, so that the store outlives a power loss.
            Ok(()) => fsync_dir(crate::sys::parent_dir(root))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::io(format!("flatfs: creating {}", root.display()), e));
            }
        }
        let existing = match shard::read_sharding(root)? {
            Some(existing) => existing,
            None => {
                if !dir_is_empty(root)? {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "flatfs: directory missing {SHARDING_FILE} file: {} is not empty and \
                             is not a flatfs datastore",
                            root.display()
                        ),
                    ));
                }
                match shard::write_sharding(root, shard) {
                    Ok(()) => {
                        shard::write_readme(root, shard)?;
                        fsync_dir(root)?;
                        return Ok(());
                    }
                    // Someone else created it at the same moment: compare with theirs.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        shard::read_sharding(root)?.ok_or(e)?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if existing != shard {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "flatfs: specified shard function {shard} does not match the shard function \
                     {existing} of the datastore at {}",
                    root.display()
                ),
            ));
        }
        Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("flatfs: datastore already exists at {}", root.display()),
        ))
    }

    /// Upstream's `Open`: opens an existing store.
    ///
    /// Takes the lock ([`LOCK_FILE`]), empties `.temp`, and reads the disk usage from
    /// `diskUsage.cache` or, without a usable cache, scans the tree (which can take minutes on a
    /// large store). Errors: a missing directory is [`ErrorKind::NotFound`]
    /// (`ErrDatastoreDoesNotExist`); a missing or malformed `SHARDING` is
    /// [`ErrorKind::Corrupt`] (`ErrShardingFileMissing`); a store open elsewhere is
    /// [`ErrorKind::Locked`].
    pub fn open(path: impl AsRef<Path>, options: FlatFsOptions) -> Result<FlatFsStore> {
        let root = path.as_ref().to_path_buf();
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("flatfs: {} is not a directory", root.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "flatfs: datastore directory {} does not exist",
                        root.display()
                    ),
                ));
            }
            Err(e) => return Err(Error::io(format!("flatfs: opening {}", root.display()), e)),
        }
        // Read SHARDING before touching anything, so that opening a directory that is not a
        // flatfs store leaves it as it was.
        let shard = shard::read_sharding(&root)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "flatfs: {SHARDING_FILE} file not found in {}: not a flatfs datastore",
                    root.display()
                ),
            )
        })?;
        let lock = lock::StoreLock::acquire(&root)?;

        let temp = root.join(TEMP_DIR);
        // Interrupted in-place commits are finished before `.temp` goes.
        journal::replay(&root, &temp)?;
        match std::fs::remove_dir_all(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "flatfs: removing the temporary directory {}",
                        temp.display()
                    ),
                    e,
                ));
            }
        }
        make_dir(&temp).map_err(|e| {
            Error::io(
                format!(
                    "flatfs: creating the temporary directory {}",
                    temp.display()
                ),
                e,
            )
        })?;
        // The journal records of in-place commits live in `.temp`; syncing `.temp` makes them
        // durable only if `.temp`'s own (new) entry in the root is.
        fsync_dir(&root)?;

        let (initial, stored, accuracy, scanned) = match disk_usage::read_cache(&root) {
            Some((du, accuracy)) if du > 0 => (du, du, accuracy, false),
            _ => {
                log::info!(
                    "flatfs: measuring the size of {} (no usable {DISK_USAGE_FILE}); this \
                     happens once and takes at most {:?}",
                    root.display(),
                    options.disk_usage_timeout
                );
                let deadline = Instant::now() + options.disk_usage_timeout;
                let (du, accuracy) =
                    disk_usage::folder_size(&root, deadline, options.disk_usage_samples)
                        .map_err(|e| disk_usage::scan_error(&root, e))?;
                if accuracy == disk_usage::accuracy::TIMED_OUT {
                    log::warn!(
                        "flatfs: measuring {} timed out; its size ({du}) is an estimate. Write \
                         the real size in bytes to {} and reopen to fix it",
                        root.display(),
                        root.join(DISK_USAGE_FILE).display()
                    );
                }
                (du, 0, accuracy.to_owned(), true)
            }
        };
        let usage = Arc::new(UsageTracker::new(
            root.clone(),
            temp.clone(),
            initial,
            stored,
            accuracy,
            options.checkpoint_delay,
        ));
        if scanned && let Err(e) = usage.write_cache(initial, true) {
            usage.cache_failed("after measuring", &e);
        }
        let root_dir = crate::sys::open_dir(&root)
            .map_err(|e| Error::io(format!("flatfs: opening {}", root.display()), e))?;
        let checkpointer = usage.start()?;
        let settler = settle::Settler::start(temp.clone())?;
        Ok(FlatFsStore {
            root,
            root_dir,
            temp,
            shard,
            options,
            closed: RwLock::new(false),
            usage,
            checkpointer: Mutex::new(Some(checkpointer)),
            ops: OpMap::default(),
            known_dirs: RwLock::new(HashSet::new()),
            mkdir_lock: Mutex::new(()),
            dirty: DirtySet::default(),
            settler,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Upstream's `CreateOrOpen`: [`FlatFsStore::create`], accepting an existing store with the
    /// same shard function, then [`FlatFsStore::open`].
    pub fn create_or_open(
        path: impl AsRef<Path>,
        shard: ShardFn,
        options: FlatFsOptions,
    ) -> Result<FlatFsStore> {
        match FlatFsStore::create(path.as_ref(), shard) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        FlatFsStore::open(path, options)
    }

    /// Whether some write is not synced yet (not yet made durable by [`Datastore::sync`]).
    #[cfg(test)]
    pub(crate) fn has_unsynced(&self) -> bool {
        self.dirty.is_pending()
    }

    /// Whether a shard directory's entry in the root is not synced yet.
    #[cfg(test)]
    pub(crate) fn root_unsynced(&self) -> bool {
        self.dirty.is_root_pending()
    }

    /// The datastore root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The shard function read from `SHARDING`.
    pub fn shard_fn(&self) -> ShardFn {
        self.shard
    }

    /// The shard identifier (upstream's `ShardStr`), e.g. `/repo/flatfs/shard/v1/next-to-last/2`.
    pub fn shard_str(&self) -> String {
        self.shard.id()
    }

    /// How the disk usage was first obtained (upstream's `Accuracy`): one of the strings in
    /// [`accuracy`], or whatever a hand-edited cache file says.
    pub fn accuracy(&self) -> String {
        self.usage.accuracy()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &FlatFsOptions {
        &self.options
    }

    /// Whether [`Datastore::close`] has been called.
    pub fn is_closed(&self) -> bool {
        *self.closed.read()
    }

    /// The path of the data file for `key`, or [`ErrorKind::InvalidKey`] when the store
    /// cannot hold `key`. The file may not exist.
    pub fn data_path(&self, key: &Key) -> Result<PathBuf> {
        let name = self.name(key)?;
        let shard = self.shard.dir_for(&name);
        Ok(self.file_path(&shard, &name))
    }

    /// Opens the data file of `key` for reading, beneath the root and following no symlink: a
    /// symlink (file or shard directory) or another file type where a data file belongs is
    /// [`ErrorKind::Corrupt`], never the file it points to. A key the store cannot hold, like a
    /// missing file, is [`ErrorKind::NotFound`].
    fn open_data(&self, key: &Key) -> Result<File> {
        let Ok(name) = self.name(key) else {
            return Err(Error::not_found());
        };
        let rel = PathBuf::from(self.shard.dir_for(&name)).join(format!("{name}{EXTENSION}"));
        match retry_emfile(|| crate::sys::open_beneath(&self.root_dir, &rel)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::not_found()),
            Err(e) if crate::sys::is_foreign_file(&e) => Err(foreign(&self.root.join(&rel), e)),
            Err(e) => Err(Error::io(
                format!("flatfs: opening {}", self.root.join(&rel).display()),
                e,
            )),
        }
    }

    pub(crate) fn staging_dir_path(&self) -> &Path {
        &self.temp
    }

    fn name<'k>(&self, key: &'k Key) -> Result<Cow<'k, str>> {
        encode::name_for(key, self.options.encode_keys)
    }

    fn file_path(&self, shard: &str, name: &str) -> PathBuf {
        let mut p = self.root.join(shard);
        p.push(format!("{name}{EXTENSION}"));
        p
    }

    /// The read side of the close lock, or `Closed`.
    fn write_guard(&self) -> Result<RwLockReadGuard<'_, bool>> {
        let guard = self.closed.read();
        if *guard {
            Err(Error::closed())
        } else {
            Ok(guard)
        }
    }

    fn temp_file(&self, prefix: &str) -> Result<(File, PathBuf)> {
        let mut attempt = 0;
        loop {
            match create_unique(&self.temp, prefix) {
                Err(e) if is_emfile_error(&e) && attempt + 1 < RETRY_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(RETRY_DELAY * attempt);
                }
                other => return other,
            }
        }
    }

    /// Makes sure the shard directory exists. A directory created here has its size added to
    /// the counter; then the root is fsynced (`sync_root`) or recorded for the next `sync`.
    /// A shard directory created earlier without `sync_root` may still have its entry only
    /// in memory: with `sync_root`, the root is then synced too, or a power loss could take the
    /// shard directory, and the value committed durably into it, away.
    fn ensure_shard_dir(&self, shard: &str, sync_root: bool) -> Result<()> {
        if self.known_dirs.read().contains(shard) {
            return self.sync_pending_root(sync_root);
        }
        let _one_mkdir_at_a_time = self.mkdir_lock.lock();
        if self.known_dirs.read().contains(shard) {
            return self.sync_pending_root(sync_root);
        }
        let dir = self.root.join(shard);
        match make_dir(&dir) {
            Ok(()) => {
                let size = std::fs::metadata(&dir).map(|m| m.len()).unwrap_or(0);
                self.usage.add(i64::try_from(size).unwrap_or(i64::MAX));
                if sync_root {
                    fsync_dir(&self.root)?;
                } else {
                    self.dirty.root();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Values are never written through a symlink to somewhere else.
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(foreign(&dir, e)),
                    Err(e) => {
                        return Err(Error::io(format!("flatfs: stat {}", dir.display()), e));
                    }
                }
            }
            Err(e) => {
                return Err(Error::io(
                    format!("flatfs: creating shard directory {}", dir.display()),
                    e,
                ));
            }
        }
        self.known_dirs.write().insert(shard.to_owned());
        Ok(())
    }

    /// With `sync_root`, syncs the root if a shard directory created since the last `sync`
    /// may not be durable yet.
    fn sync_pending_root(&self, sync_root: bool) -> Result<()> {
        if sync_root
            && self.dirty.take_root()
            && let Err(e) = fsync_dir(&self.root)
        {
            self.dirty.root();
            return Err(e);
        }
        Ok(())
    }

    /// Renames `src` over `dest` (in `shard`), adjusting the counter by the new size minus the
    /// size of any file replaced. Runs under the name's operation slot, so nobody else touches
    /// `dest` meanwhile.
    fn rename_into_place(
        &self,
        src: &Path,
        shard: &str,
        dest: &Path,
        new_size: u64,
        sync_root: bool,
    ) -> Result<()> {
        self.settle_path(src)?;
        self.settle_path(dest)?;
        let old = match std::fs::metadata(dest) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(format!("flatfs: stat {}", dest.display()), e)),
        };
        let mut renamed = std::fs::rename(src, dest);
        if let Err(e) = &renamed
            && e.kind() == io::ErrorKind::NotFound
            && src.exists()
        {
            // The shard directory vanished under us (removed by hand): recreate it, retry once.
            self.known_dirs.write().remove(shard);
            self.ensure_shard_dir(shard, sync_root)?;
            renamed = std::fs::rename(src, dest);
        }
        renamed.map_err(|e| {
            Error::io(
                format!("flatfs: renaming {} to {}", src.display(), dest.display()),
                e,
            )
        })?;
        let delta = i128::from(new_size) - i128::from(old);
        self.usage
            .add(i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }));
        Ok(())
    }

    /// A put, under the name's operation slot.
    fn do_put(&self, name: &str, shard: &str, value: &[u8]) -> Result<()> {
        let sync = self.options.sync;
        if value.is_empty() && self.create_empty(name, shard, sync)? == empty::Created::Done {
            return Ok(());
        }
        self.ensure_shard_dir(shard, sync)?;
        let (mut file, tmp) = self.temp_file("temp")?;
        let cleanup = RemoveOnDrop(Some(tmp.clone()));
        let ctx = || format!("flatfs: writing {}", tmp.display());
        file.write_all(value).map_err(|e| Error::io(ctx(), e))?;
        if sync {
            file.sync_all().map_err(|e| Error::io(ctx(), e))?;
        }
        drop(file);
        let dest = self.file_path(shard, name);
        self.rename_into_place(&tmp, shard, &dest, value.len() as u64, sync)?;
        cleanup.disarm();
        let dir = self.root.join(shard);
        if sync {
            fsync_dir(&dir)?;
        } else {
            self.dirty.file(dest, &dir);
        }
        Ok(())
    }

    /// A delete, under the name's operation slot. Never fsyncs, never removes the shard
    /// directory.
    fn do_delete(&self, name: &str, shard: &str) -> Result<()> {
        let path = self.file_path(shard, name);
        self.settle_path(&path)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.usage.add(-i64::try_from(size).unwrap_or(i64::MAX));
                self.dirty.dir(&self.root.join(shard));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("flatfs: removing {}", path.display()), e)),
        }
    }

    /// Runs `f` under `name`'s operation slot with upstream's coalescing: if a concurrent
    /// operation on the name succeeds first, this one is done without running.
    fn coalesced(&self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        match self.ops.begin(name, Mode::Coalesce) {
            Begin::Done => Ok(()),
            Begin::Run(op) => {
                let result = f();
                op.finish(result.is_ok());
                result
            }
        }
    }

    /// Commits a batch's staged operations (see [`FlatFsBatch`]).
    pub(crate) fn commit_batch(
        &self,
        staging: &Path,
        ops: &BTreeMap<String, BatchOp>,
    ) -> Result<()> {
        let _open = self.write_guard()?;
        let sync = self.options.sync;
        let mut touched = BTreeSet::new();
        for (name, op) in ops {
            if *op == BatchOp::Put {
                let shard = self.shard.dir_for(name);
                self.ensure_shard_dir(&shard, false)?;
                touched.insert(shard);
            }
        }
        for (name, op) in ops {
            if *op != BatchOp::Put {
                continue;
            }
            let shard = self.shard.dir_for(name);
            let src = staging.join(format!("{name}{EXTENSION}"));
            let dest = self.file_path(&shard, name);
            self.coalesced(name, || {
                let size = std::fs::metadata(&src)
                    .map_err(|e| Error::io(format!("flatfs: stat {}", src.display()), e))?
                    .len();
                self.rename_into_place(&src, &shard, &dest, size, false)?;
                if !sync {
                    self.dirty.file(dest.clone(), &self.root.join(&shard));
                }
                Ok(())
            })?;
        }
        for (name, op) in ops {
            if *op == BatchOp::Delete {
                let shard = self.shard.dir_for(name);
                self.coalesced(name, || self.do_delete(name, &shard))?;
            }
        }
        if sync {
            for shard in &touched {
                fsync_dir(&self.root.join(shard))?;
            }
            fsync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Puts the file of a staged value into the store's temp directory, copying it when it was
    /// staged elsewhere (rename cannot cross directories reliably).
    fn adopt_staged(&self, staged: Staged) -> Result<(File, RemoveOnDrop)> {
        let ours = staged
            .path()
            .is_some_and(|p| p.parent() == Some(self.temp.as_path()));
        if ours {
            let (file, path) = staged.into_parts()?;
            if let Some(path) = path {
                return Ok((file, RemoveOnDrop(Some(path))));
            }
            return Err(Error::new(
                ErrorKind::Io,
                "flatfs: staged value lost its file name",
            ));
        }
        let (mut copy, tmp) = self.temp_file("stage")?;
        let cleanup = RemoveOnDrop(Some(tmp.clone()));
        staged.write_to(&mut copy)?;
        Ok((copy, cleanup))
    }
}

fn check_param(shard: ShardFn) -> Result<()> {
    let n = shard.param();
    if (1..=MAX_SHARD_PARAM).contains(&n) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("flatfs: shard parameter {n} must be between 1 and {MAX_SHARD_PARAM}"),
        ))
    }
}

impl Datastore for FlatFsStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        let mut file = self.open_data(key)?;
        let mut value = Vec::new();
        io::Read::read_to_end(&mut file, &mut value)
            .map_err(|e| Error::io(format!("flatfs: reading the value of {key}"), e))?;
        Ok(value)
    }

    fn has(&self, key: &Key) -> Result<bool> {
        let Ok(path) = self.data_path(key) else {
            return Ok(false);
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(true),
            Ok(_) => Err(foreign(&path, io::Error::from_raw_os_error(libc::ELOOP))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("flatfs: stat {}", path.display()), e)),
        }
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        let Ok(path) = self.data_path(key) else {
            return Err(Error::not_found());
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(foreign(&path, io::Error::from_raw_os_error(libc::ELOOP))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::not_found()),
            Err(e) => Err(Error::io(format!("flatfs: stat {}", path.display()), e)),
        }
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // A key flatfs cannot name holds nothing: `open_data` says NotFound for it.
        let file = self.open_data(key)?;
        let mut done = 0;
        while done < buf.len() {
            // pread refuses offsets past i64::MAX; nothing can be stored there anyway.
            let Some(at) = offset
                .checked_add(done as u64)
                .filter(|at| i64::try_from(*at).is_ok())
            else {
                break;
            };
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(format!("flatfs: reading the value of {key}"), e));
                }
            }
        }
        Ok(done)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        let name = self.name(key)?;
        let shard = self.shard.dir_for(&name);
        let _open = self.write_guard()?;
        self.coalesced(&name, || self.do_put(&name, &shard, value))
    }

    fn delete(&self, key: &Key) -> Result<()> {
        // A key flatfs cannot hold is never there: deleting it is a no-op, as upstream.
        let Ok(name) = self.name(key) else {
            return Ok(());
        };
        let shard = self.shard.dir_for(&name);
        let _open = self.write_guard()?;
        self.coalesced(&name, || self.do_delete(&name, &shard))
    }

    fn query(&self, q: Query) -> Result<Results> {
        if !self.options.encode_keys && q.prefix_key().is_some() {
            // Without encoding every key has one component, so no key is a strict child of a
            // non-root prefix: the empty answer is the right one.
            log::warn!(
                "flatfs was queried with prefix {:?}, but flatfs keys all live at the root",
                q.prefix
            );
            return Ok(Results::from_entries(q, Vec::new()));
        }
        let walker = walk::Walker::new(
            self.root.clone(),
            q.keys_only,
            q.returns_sizes,
            self.options.encode_keys,
        );
        let input: EntryIter = Box::new(walker);
        let it = query::naive_apply(&q, input, false);
        Ok(Results::new(q, it))
    }

    /// Makes every earlier write durable: fsyncs the data files written and the directories
    /// changed since the last `sync` (or the whole file system with `syncfs` when more than
    /// [`MAX_TRACKED_FILES`] files were written). Upstream's `Sync` does nothing. The prefix is
    /// ignored (everything is synced).
    fn sync(&self, _prefix: &Key) -> Result<()> {
        let _open = self.write_guard()?;
        self.dirty.flush(&self.root)
    }

    /// Waits for writes in flight, stops the checkpoint thread, makes every write durable,
    /// writes `diskUsage.cache` with fsync and releases the lock. Reads keep working. As in
    /// go-ds-flatfs, a cache file that cannot be written is reported but does not fail the
    /// close: it is an estimate, which the next open measures again.
    fn close(&self) -> Result<()> {
        {
            let mut closed = self.closed.write();
            if *closed {
                return Ok(());
            }
            *closed = true;
        }
        self.usage.stop();
        if let Some(handle) = self.checkpointer.lock().take()
            && handle.join().is_err()
        {
            log::error!("flatfs: the disk-usage checkpoint thread panicked");
        }
        let synced = self
            .settle_all()
            .and_then(|()| self.dirty.flush(&self.root));
        if let Err(e) = self.usage.write_cache(self.usage.get(), true) {
            self.usage.cache_failed("at close", &e);
        }
        if let Some(mut lock) = self.lock.lock().take() {
            lock.release();
        }
        synced
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: false,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: false,
            durable_put: self.options.sync,
            persistent: true,
            general_keys: self.options.encode_keys,
            file_backed: true,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            // A name plus `.data` must fit in 255 bytes; encoded keys grow by 8/5.
            max_key_len: Some(if self.options.encode_keys {
                encode::MAX_ENCODED_KEY_BYTES
            } else {
                250
            }),
        }
    }

    fn batch(&self) -> Result<Box<dyn Batch + '_>> {
        let _open = self.write_guard()?;
        Ok(Box::new(FlatFsBatch::new(self)?))
    }

    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        drop(self.write_guard()?);
        let mut batch = FlatFsBatch::new(self)?;
        for (key, op) in ops {
            match op {
                Some(value) => batch.put(key, value)?,
                None => batch.delete(key)?,
            }
        }
        Box::new(batch).commit()
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        Ok(Some(u64::try_from(self.usage.get()).unwrap_or(0)))
    }

    /// Stages in memory, spilling to a named file in `.temp` (mode 0600). For `CopyCurrent` of an existing value
    /// the staged value is an overlay over the data file: nothing is copied until the commit,
    /// and a commit that leaves most of the value as it was writes only the changed ranges
    /// (see `journal.rs`).
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        // A key flatfs cannot name cannot be committed either: refuse it now.
        self.name(key)?;
        let _open = self.write_guard()?;
        if init == StageInit::CopyCurrent {
            match self.open_data(key) {
                Ok(base) => {
                    let (file, path) = self.temp_file("stage")?;
                    return Staged::overlay(file, path, base);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        // A new value starts in memory and spills to a named file in `.temp` if it grows (so
        // a big one still commits by rename); a small one gets its file only at commit.
        Ok(Staged::memory(
            MEMORY_LIMIT,
            SpillTo::Named(self.temp.clone()),
        ))
    }

    /// Renames the staged file into place (no copy through memory), with disk-usage accounting.
    /// Unlike puts, a commit never coalesces with a concurrent write of the same key: it waits
    /// for it and then runs, because the staged bytes exist nowhere else. With `durable` (or the
    /// `sync` option) the file, its shard directory and a newly created shard directory's entry
    /// in the root are fsynced before this returns.
    fn commit_staged(&self, key: &Key, mut staged: Staged, durable: bool) -> Result<()> {
        let name = self.name(key)?;
        let shard = self.shard.dir_for(&name);
        let _open = self.write_guard()?;
        let durable = durable || self.options.sync;
        if let Some(plan) = staged.overlay_plan()? {
            let ours = staged
                .path()
                .is_some_and(|p| p.parent() == Some(self.temp.as_path()));
            if ours && plan.clean_bytes >= journal::IN_PLACE_MIN {
                let rel = format!("{shard}/{name}{EXTENSION}");
                let op = self.ops.acquire(&name);
                match self.in_place_target(&rel, plan.base_id) {
                    Ok(Some(target)) => {
                        let mut result = self.commit_in_place(staged, plan, &target, &rel);
                        // The journal makes the changed ranges durable, not the file below
                        // them: if that was written or renamed into place since the last
                        // sync, its bytes and its name are synced now (with everything else
                        // pending), or the file could vanish in a power loss.
                        if durable && result.is_ok() && self.dirty.may_hold(&self.root.join(&rel)) {
                            result = self.dirty.flush(&self.root);
                        }
                        op.finish(result.is_ok());
                        return result;
                    }
                    // Replaced since it was staged: commit the whole value instead.
                    Ok(None) => op.finish(false),
                    Err(e) => {
                        op.finish(false);
                        return Err(e);
                    }
                }
            }
            staged.materialize()?;
        }
        if staged.path().is_none() && staged.len()? == 0 {
            // A new empty value held in memory: its data file can be created in place.
            let op = self.ops.acquire(&name);
            match self.create_empty(&name, &shard, durable) {
                Ok(empty::Created::Done) => {
                    op.finish(true);
                    return Ok(());
                }
                Ok(empty::Created::Fallback) => op.finish(false),
                Err(e) => {
                    op.finish(false);
                    return Err(e);
                }
            }
        }
        let (file, src) = self.adopt_staged(staged)?;
        let Some(src_path) = src.0.clone() else {
            return Err(Error::new(
                ErrorKind::Io,
                "flatfs: staged value has no file",
            ));
        };
        let ctx = || format!("flatfs: committing {}", src_path.display());
        let size = file.metadata().map_err(|e| Error::io(ctx(), e))?.len();
        if durable {
            file.sync_all().map_err(|e| Error::io(ctx(), e))?;
        }
        drop(file);
        let op = self.ops.acquire(&name);
        let result = (|| {
            self.ensure_shard_dir(&shard, durable)?;
            let dest = self.file_path(&shard, &name);
            self.rename_into_place(&src_path, &shard, &dest, size, durable)?;
            let dir = self.root.join(&shard);
            if durable {
                fsync_dir(&dir)?;
            } else {
                self.dirty.file(dest, &dir);
            }
            Ok(())
        })();
        op.finish(result.is_ok());
        if result.is_ok() {
            src.disarm();
        }
        result
    }

    /// Moves a value with one `rename(2)` of its data file (atomic, no copy), under both
    /// names' operation slots (taken in name order, so two crossing renames cannot deadlock).
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        let Ok(from_name) = self.name(from) else {
            return Err(Error::not_found());
        };
        let to_name = self.name(to)?;
        let from_shard = self.shard.dir_for(&from_name);
        let to_shard = self.shard.dir_for(&to_name);
        let src = self.file_path(&from_shard, &from_name);
        if from_name == to_name {
            return if src.exists() {
                Ok(())
            } else {
                Err(Error::not_found())
            };
        }
        let _open = self.write_guard()?;
        let (a, b) = if from_name < to_name {
            (&from_name, &to_name)
        } else {
            (&to_name, &from_name)
        };
        let op_a = self.ops.acquire(a);
        let op_b = self.ops.acquire(b);
        let result = (|| {
            let size = match std::fs::metadata(&src) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::not_found()),
                Err(e) => return Err(Error::io(format!("flatfs: stat {}", src.display()), e)),
            };
            let sync = self.options.sync;
            self.ensure_shard_dir(&to_shard, sync)?;
            let dest = self.file_path(&to_shard, &to_name);
            self.rename_into_place(&src, &to_shard, &dest, size, sync)?;
            // The moved bytes were already counted under their old name.
            self.usage.add(-i64::try_from(size).unwrap_or(i64::MAX));
            let to_dir = self.root.join(&to_shard);
            let from_dir = self.root.join(&from_shard);
            if sync {
                fsync_dir(&to_dir)?;
                fsync_dir(&from_dir)?;
            } else {
                self.dirty.file(dest, &to_dir);
                self.dirty.dir(&from_dir);
            }
            Ok(())
        })();
        op_b.finish(result.is_ok());
        op_a.finish(result.is_ok());
        result
    }

    fn staging_dir(&self) -> PathBuf {
        self.temp.clone()
    }

    /// The data file of `key` (which may not exist); [`ErrorKind::NotFound`] for a key the
    /// store cannot hold.
    fn backing_file(&self, key: &Key) -> Result<Option<PathBuf>> {
        match self.data_path(key) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(Error::not_found()),
        }
    }

    /// `flatfs SHARD-FUNCTION id=ID`, the id read from [`ID_FILE`] (written on first use).
    fn identity(&self) -> Result<Option<String>> {
        let id = follow::store_id(&self.root)?;
        Ok(Some(format!(
            "flatfs {} encode={} id={id}",
            self.shard.id(),
            self.options.encode_keys
        )))
    }

    /// A flatfs directory is a plain directory of files: Kubo, or anyone, may write it.
    fn shared(&self, _key: &Key) -> bool {
        true
    }

    fn segments(&self) -> Result<Option<Vec<crate::datastore::Segment>>> {
        follow::segments(&self.root).map(Some)
    }

    fn segment_of(&self, key: &Key) -> Option<String> {
        let name = self.name(key).ok()?;
        Some(self.shard.dir_for(&name))
    }

    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        if segment.is_empty() || segment.starts_with('.') || segment.contains('/') {
            return Ok(Vec::new());
        }
        follow::shard_keys(&self.root.join(segment), self.options.encode_keys)
    }

    fn open_backing(&self, key: &Key) -> Result<Option<File>> {
        self.open_data(key).map(Some)
    }

    /// Reports what does not belong where data files are: symlinks and other non-regular
    /// files, at the top (where shard directories belong) or inside shard directories. They
    /// are never followed or read; `repair` leaves them for a person to look at.
    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        let _ = repair;
        scrub_foreign(&self.root, self.shard)
    }
}

impl Drop for FlatFsStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::error!("flatfs: closing {}: {e}", self.root.display());
        }
    }
}

impl std::fmt::Debug for FlatFsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatFsStore")
            .field("root", &self.root)
            .field("shard", &self.shard.id())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod durable_tests {
    use super::*;

    /// A new store in `dir`, next-to-last/2 sharded, default options.
    fn new_store(dir: &Path) -> FlatFsStore {
        FlatFsStore::create_or_open(dir, ShardFn::NextToLast(2), FlatFsOptions::default()).unwrap()
    }

    fn synced_dirs() -> Vec<PathBuf> {
        SYNCED_DIRS.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }

    /// An fsync after a small write into a big file that was committed (renamed into place)
    /// by an earlier close and not synced since: the in-place commit's journal made the changed
    /// bytes durable but not the rest of the file, nor its name in the shard directory, so a
    /// power loss could lose the whole file that the fsync had acknowledged.
    #[test]
    fn a_durable_in_place_commit_syncs_an_unsynced_file_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path());
        let key = Key::new("/BIGAAB");
        let len = journal::IN_PLACE_MIN + (1 << 20);
        let staged = store.stage(&key, StageInit::Empty).unwrap();
        staged.write_all_at(0, &vec![1u8; len as usize]).unwrap();
        store.commit_staged(&key, staged, false).unwrap();
        assert!(store.has_unsynced());
        let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
        assert!(staged.is_overlay(), "the test needs an in-place commit");
        staged.write_all_at(4096, b"changed").unwrap();
        store.commit_staged(&key, staged, true).unwrap();
        assert!(
            !store.has_unsynced(),
            "the file below a durable in-place commit is not synced"
        );
        let mut buf = [0u8; 7];
        store.read_at(&key, 4096, &mut buf).unwrap();
        assert_eq!(&buf, b"changed");
    }

    /// A new store's directory entry in its parent, and the `.temp` directory that every open
    /// makes anew (where in-place commits keep their journal records), used to be left to
    /// writeback: a power loss could drop the store's directory, or `.temp` with an
    /// acknowledged commit's record, even after its files and `.temp` were synced.
    #[test]
    fn creating_and_opening_sync_the_new_directory_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        synced_dirs();
        let store = new_store(&root);
        let synced = synced_dirs();
        assert!(synced.contains(&dir.path().to_path_buf()), "{synced:?}");
        store.close().unwrap();
        drop(store);
        synced_dirs();
        let store = FlatFsStore::open(&root, FlatFsOptions::default()).unwrap();
        let synced = synced_dirs();
        assert!(synced.contains(&root), "{synced:?}");
        drop(store);
    }

    /// A durable commit into a shard directory that an earlier, non-durable put created used
    /// to sync the file and the shard directory but not the root, whose entry for the shard
    /// directory stayed unsynced until the next `sync`: a power loss could lose the directory
    /// and with it the value the commit had acknowledged as durable.
    #[test]
    fn a_durable_commit_syncs_the_root_entry_of_a_shard_made_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path());
        let (a, b) = (Key::new("/XAAB"), Key::new("/YAAB"));
        assert_eq!(store.shard.dir_for("XAAB"), store.shard.dir_for("YAAB"));
        store.put(&a, b"not durable").unwrap();
        assert!(
            store.root_unsynced(),
            "the put was meant to create the shard"
        );
        let staged = store.stage(&b, StageInit::Empty).unwrap();
        staged.write_all_at(0, &[7u8; 100_000]).unwrap();
        store.commit_staged(&b, staged, true).unwrap();
        assert!(
            !store.root_unsynced(),
            "the shard directory of a durable commit is not durable"
        );
    }
}
