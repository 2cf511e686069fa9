//! Staged values: the write path for large values written piecewise.
//!
//! A [`Staged`] value is a file that the writer fills at random offsets (`pwrite`), can read back
//! (`pread`), truncate and extend, and finally hands to the store with
//! [`Datastore::commit_staged`](super::Datastore::commit_staged). A store whose values are files
//! (flatfs) stages in a named file next to its data and commits with one `rename`; other stores
//! stage in an unlinked temporary file and copy it in on commit. Dropping an uncommitted staged
//! value discards it and removes its file.
//!
//! A staged value can also be an *overlay* ([`Staged::overlay`]) over an open file holding the
//! value's current bytes: writes go to the (sparse) staging file and are recorded as dirty
//! ranges, reads take dirty ranges from the staging file and everything else from the base.
//! Staging a random write into a large committed file then costs nothing up front, and a store
//! can commit just the dirty ranges (flatfs does, in place behind a journal) or fill in the
//! clean ranges first ([`Staged::materialize`]) and commit the whole file.
//!
//! A new value can start *in memory* ([`Staged::memory`]): its bytes live in a `Vec` until it
//! grows past a bound ([`MEMORY_LIMIT`]) or a store asks for its file ([`Staged::file`],
//! [`Staged::into_parts`]); then it spills, once, to the staging file it would otherwise have
//! had from the start ([`SpillTo`]), and behaves as a file-staged value from then on. A small
//! file written and closed then costs no staging file at all: the stores read it through
//! [`Staged::read_at`]/[`Staged::read_all`]/[`Staged::write_to`] as they read any staged value,
//! and a store that renames files into place writes a temporary file for it at commit.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::digest::ContentHasher;
use super::error::{Error, Result};

/// How a staging area starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageInit {
    /// Empty (an `O_TRUNC` open, or a new file).
    Empty,
    /// A copy of the key's current value (empty if the key has none).
    CopyCurrent,
}

/// The largest value [`Staged::memory`] keeps in memory: 64 KiB, the default repository's
/// inline threshold. Below it the default repository stores a value inline in its record
/// database, so a staging file would only ever be read back into memory; at or above it the
/// value becomes a file of the file tier anyway, and a staging file in that tier's directory
/// commits by rename without a copy. It also bounds the memory held by many small open files.
pub const MEMORY_LIMIT: u64 = 64 << 10;

/// Where an in-memory staged value spills when it outgrows memory or a store needs its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpillTo {
    /// An unlinked temporary file in this directory (as [`Staged::anonymous`]).
    Anonymous(PathBuf),
    /// A named file in this directory (as [`Staged::named`]), which a store renames into place.
    Named(PathBuf),
}

/// The in-memory state of a [`Staged::memory`] value.
#[derive(Debug)]
struct Mem {
    /// The bytes; `None` once they spilled to the staging file.
    bytes: Option<Vec<u8>>,
    /// The largest length kept in memory.
    limit: u64,
    spill: SpillTo,
}

/// A value being written. See the module documentation.
#[derive(Debug)]
pub struct Staged {
    /// The staging file; unset while an in-memory value has not spilled.
    file: OnceLock<File>,
    /// The staging file's name while it still exists on disk; unset (or `TempPath(None)`) for
    /// unlinked files.
    path: OnceLock<TempPath>,
    /// For an in-memory value: its bytes until they spill.
    mem: Option<parking_lot::Mutex<Mem>>,
    /// The content hash ([`super::digest`]) of the bytes written so far, while they were
    /// written in order from offset 0 (a copy, a stream, `cp`): a store records it with the
    /// value at no extra read. Any other write pattern drops it.
    hash: parking_lot::Mutex<Option<Prefix>>,
    /// Whether the running hash is kept at all (see [`Staged::hashing`]): hashing costs the
    /// write path a hash pass over every byte, so only a store that records the hash asks.
    hashed: bool,
    /// For an overlay: the base and the dirty ranges (see the module documentation).
    overlay: Option<parking_lot::Mutex<Overlay>>,
    /// The queue of `O_DIRECT` writes to the staging file, made on the first one (see
    /// `direct.rs`): [`Staged::disk`] waits for it, so nothing else sees the file before
    /// the queued writes are in it.
    direct: super::direct::Direct,
}

/// The state of an overlay staged value.
#[derive(Debug)]
struct Overlay {
    /// The value's bytes as they were when staging began.
    base: Base,
    /// Bytes of `base` below this offset show through where nothing was written; above it
    /// (after a truncation) the value reads as zeros.
    base_len: u64,
    /// The staged value's length.
    len: u64,
    /// Dirty ranges, `start -> end`, disjoint and not touching; their bytes are in the staging
    /// file at the same offsets.
    dirty: BTreeMap<u64, u64>,
}

impl Overlay {
    /// Records `[start, end)` as dirty, merging it with the ranges it overlaps or touches.
    /// Runs on every write: no allocation, and nothing changes when a range already covers it.
    fn mark(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge the last range starting at or before `end` while it reaches `start`.
        while let Some((&s, &e)) = self.dirty.range(..=end).next_back() {
            if e < start {
                break;
            }
            if s <= start && e >= end {
                return;
            }
            self.dirty.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.dirty.insert(start, end);
    }

    /// Forgets everything at or above `len`.
    fn cut(&mut self, len: u64) {
        let above: Vec<u64> = self.dirty.range(len..).map(|(&s, _)| s).collect();
        for s in above {
            self.dirty.remove(&s);
        }
        if let Some((&s, e)) = self.dirty.range_mut(..len).next_back()
            && *e > len
        {
            *e = len;
            debug_assert!(s < len);
        }
    }

    /// The ranges of `[0, min(base_len, len))` that nothing was written over: the bytes an
    /// overlay still takes from its base.
    fn clean(&self) -> Vec<(u64, u64)> {
        let top = self.base_len.min(self.len);
        let mut out = Vec::new();
        let mut at = 0;
        for (&s, &e) in self.dirty.range(..top) {
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < top {
            out.push((at, top));
        }
        out
    }
}

/// The bytes of a value that a store keeps outside local files (a blob), read in place as an
/// overlay's base ([`Staged::overlay_on`]).
pub trait OverlaySource: Send + Sync + std::fmt::Debug {
    /// Reads into `buf` from `offset` of the value as it was when staging began; returns the
    /// count, short only at its end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// What identifies these bytes to their store (reported as [`OverlayPlan::base_id`]).
    fn id(&self) -> (u64, u64);
    /// The concrete type, for the store that made it ([`Staged::overlay_source`]).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The bytes of another staged value (one a commit is writing to its store), read as the base
/// of the overlay that takes the writes made meanwhile ([`Staged::layered_over`]).
#[derive(Debug)]
struct Layer(std::sync::Arc<Staged>);

impl OverlaySource for Layer {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.0.read_at(offset, buf)
    }

    /// No file has this identity (device `u64::MAX`), so no store takes a layered overlay for
    /// an overlay over its own value: it commits the whole value until [`Staged::rebase`].
    fn id(&self) -> (u64, u64) {
        (u64::MAX, std::sync::Arc::as_ptr(&self.0) as usize as u64)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// An overlay's base: a local file, or bytes a store reads for it.
#[derive(Debug)]
enum Base {
    File(File),
    Source(std::sync::Arc<dyn OverlaySource>),
}

impl Base {
    fn read_full(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            Base::File(f) => {
                read_full(f, offset, buf).map_err(|e| Error::io("reading a staged value's base", e))
            }
            Base::Source(s) => s.read_at(offset, buf),
        }
    }

    fn id(&self) -> Result<(u64, u64)> {
        match self {
            Base::File(f) => file_id(f),
            Base::Source(s) => Ok(s.id()),
        }
    }

    fn try_clone(&self) -> Result<Base> {
        match self {
            Base::File(f) => f
                .try_clone()
                .map(Base::File)
                .map_err(|e| Error::io("duplicating a staged value's base handle", e)),
            Base::Source(s) => Ok(Base::Source(s.clone())),
        }
    }

    /// Copies `[s, e)` of the base to the same offsets of `dst`.
    fn copy_to(&self, dst: &File, s: u64, e: u64) -> Result<()> {
        match self {
            Base::File(f) => copy_range(f, dst, s, e - s)
                .map_err(|err| Error::io("filling a staged value from its base", err)),
            Base::Source(src) => {
                let mut buf = vec![0u8; (e - s).min(1 << 20) as usize];
                let mut at = s;
                while at < e {
                    let n = (e - at).min(buf.len() as u64) as usize;
                    let got = src.read_at(at, &mut buf[..n])?;
                    buf[got..n].fill(0);
                    dst.write_all_at(&buf[..n], at)
                        .map_err(|err| Error::io("filling a staged value from its base", err))?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// What a store needs to commit an overlay's dirty ranges in place: the base file's identity,
/// the truncation and the dirty ranges (their bytes are in the staging file at the same
/// offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayPlan {
    /// `(st_dev, st_ino)` of the base file, or [`OverlaySource::id`].
    pub base_id: (u64, u64),
    /// The base's bytes from here on are gone: truncate to this length first.
    pub keep: u64,
    /// Then set the length to this.
    pub len: u64,
    /// Then copy these ranges (`start`, `end`) from the staging file.
    pub dirty: Vec<(u64, u64)>,
    /// How many bytes of the base show through (the bytes a whole-file commit would copy).
    pub clean_bytes: u64,
}

/// `(st_dev, st_ino)` of an open file.
pub fn file_id(file: &File) -> Result<(u64, u64)> {
    let m = file
        .metadata()
        .map_err(|e| Error::io("reading a file's identity", e))?;
    Ok((m.dev(), m.ino()))
}

/// Copies `len` bytes at `offset` from `src` to the same offset in `dst` inside the kernel
/// (`copy_file_range` where the kernel has it). Moves both files' cursors.
pub fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mut src = src;
    let mut dst = dst;
    src.seek(SeekFrom::Start(offset))?;
    dst.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut src.take(len), &mut dst)?;
    if copied < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("short copy: {copied} of {len} bytes at offset {offset}"),
        ));
    }
    Ok(())
}

/// The hash of the first `len` bytes of a staged value.
struct Prefix {
    len: u64,
    hasher: ContentHasher,
    /// Whether the hasher is with the direct-write queue, which hashes queued writes on its
    /// own thread ([`super::direct::Queue::adopt_hasher`]); `hasher` is stale until it is
    /// taken back ([`Staged::reclaim_hash`]).
    queued: bool,
}

impl Prefix {
    fn new() -> Prefix {
        Prefix {
            len: 0,
            hasher: ContentHasher::new(),
            queued: false,
        }
    }
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefix({} bytes hashed)", self.len)
    }
}

/// A path that is removed when dropped, unless [`TempPath::keep`] takes it.
#[derive(Debug)]
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove staging file {}: {e}", path.display());
        }
    }
}

impl Staged {
    /// A staging file in `dir` without a name (`O_TMPFILE`), so nothing is left behind by a
    /// crash. Where the file system cannot do that, a named file unlinked at once.
    pub fn anonymous(dir: &Path) -> Result<Staged> {
        Ok(Staged::from_file(anonymous_file(dir)?, None, true))
    }

    /// A staged value in `file` (named `path`, removed if dropped uncommitted).
    /// With `hashed` it keeps the running hash of in-order writes (see [`Staged::hashing`]).
    fn from_file(file: File, path: Option<PathBuf>, hashed: bool) -> Staged {
        Staged {
            file: OnceLock::from(file),
            path: OnceLock::from(TempPath(path)),
            mem: None,
            hash: parking_lot::Mutex::new(hashed.then(Prefix::new)),
            hashed,
            overlay: None,
            direct: Default::default(),
        }
    }

    /// An empty value staged in memory while it stays at most `limit` bytes long; past that,
    /// or when a store asks for its file, it moves to a staging file made as `spill` says. It
    /// keeps no running hash unless [`Staged::hashing`] asks for one.
    pub fn memory(limit: u64, spill: SpillTo) -> Staged {
        Staged {
            file: OnceLock::new(),
            path: OnceLock::new(),
            mem: Some(parking_lot::Mutex::new(Mem {
                bytes: Some(Vec::new()),
                limit,
                spill,
            })),
            hash: parking_lot::Mutex::new(None),
            hashed: false,
            overlay: None,
            direct: Default::default(),
        }
    }

    /// Whether the bytes are still in memory (not spilled to a staging file).
    pub fn is_in_memory(&self) -> bool {
        self.file.get().is_none()
    }

    /// The staging file, spilling an in-memory value to it first, once every queued direct
    /// write is in it (the error of one that failed, while writing it again still fails).
    fn disk(&self) -> Result<&File> {
        let file = self.disk_unsettled()?;
        self.direct
            .settle()
            .map_err(|e| Error::io("writing staging file (a queued O_DIRECT write)", e))?;
        Ok(file)
    }

    /// [`Staged::disk`] without waiting for queued direct writes: for queueing another.
    fn disk_unsettled(&self) -> Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        if let Some(mem) = &self.mem {
            self.spill(&mut mem.lock())?;
        }
        self.file
            .get()
            .ok_or_else(|| Error::new(super::ErrorKind::Io, "staged value has no file"))
    }

    /// Moves the in-memory bytes to a new staging file (with `mem` locked). A no-op once done.
    fn spill(&self, mem: &mut Mem) -> Result<()> {
        if self.file.get().is_some() {
            return Ok(());
        }
        let (file, path) = match &mem.spill {
            SpillTo::Anonymous(dir) => (anonymous_file(dir)?, None),
            SpillTo::Named(dir) => {
                let (file, path) = create_unique(dir, "stage")?;
                (file, Some(path))
            }
        };
        // Removes a named file again if the copy below fails.
        let path = TempPath(path);
        let bytes = mem.bytes.as_deref().unwrap_or(&[]);
        file.write_all_at(bytes, 0)
            .map_err(|e| Error::io("spilling a staged value to its file", e))?;
        log::trace!("staged value spilled to a file at {} bytes", bytes.len());
        // Only this function sets them, with `mem` locked.
        let _ = self.path.set(path);
        let _ = self.file.set(file);
        mem.bytes = None;
        Ok(())
    }

    /// Runs `f` on the in-memory bytes and their bound, if they are still in memory.
    fn in_memory<R>(&self, f: impl FnOnce(&mut Mem) -> R) -> Option<R> {
        let mem = self.mem.as_ref()?;
        let mut m = mem.lock();
        m.bytes.as_ref()?;
        Some(f(&mut m))
    }
}

/// Records `len` bytes written at `offset` in an overlay's dirty ranges and length.
fn mark_written(ov: &parking_lot::Mutex<Overlay>, offset: u64, len: usize) {
    let mut ov = ov.lock();
    let end = offset.saturating_add(len as u64);
    ov.mark(offset, end);
    ov.len = ov.len.max(end);
}

/// The length of an in-memory value (0 once spilled).
fn bytes_len(mem: &Mem) -> usize {
    mem.bytes.as_ref().map_or(0, Vec::len)
}

/// An unlinked staging file in `dir` (see [`Staged::anonymous`]).
fn anonymous_file(dir: &Path) -> Result<File> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(file) => file,
        // EOPNOTSUPP: the file system has no O_TMPFILE; EISDIR or EINVAL: the kernel has
        // none (it took the flag for O_DIRECTORY).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            let (file, path) = create_unique(dir, "stage")?;
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("unlinking staging file {}", path.display()), e))?;
            file
        }
        Err(e) => {
            return Err(Error::io(
                format!("creating a staging file in {}", dir.display()),
                e,
            ));
        }
    };
    Ok(file)
}

impl Staged {
    /// Wraps a named staging file that a file-backed store will rename into place. The file is
    /// removed if the staged value is dropped without being committed. It keeps no running
    /// hash unless [`Staged::hashing`] asks for one.
    pub fn named(file: File, path: PathBuf) -> Staged {
        Staged::from_file(file, Some(path), false)
    }

    /// Keeps the running hash of in-order writes ([`Staged::content_hash`]) from here on; for
    /// a staged value that is empty and no overlay (else there is nothing to start from).
    pub fn hashing(mut self) -> Result<Staged> {
        self.hashed = true;
        if self.overlay.is_none() && self.len()? == 0 {
            *self.hash.lock() = Some(Prefix::new());
        }
        Ok(self)
    }

    /// An overlay over `base` (the value's current bytes) in a named staging file, which a
    /// store commits by rename (after [`Staged::materialize`]) or whose dirty ranges it applies
    /// in place ([`Staged::overlay_plan`]). Nothing of the base is read until then.
    pub fn overlay(file: File, path: PathBuf, base: File) -> Result<Staged> {
        let staged = Staged::named(file, path);
        let len = base
            .metadata()
            .map_err(|e| Error::io("reading the length of a staged value's base", e))?
            .len();
        staged.set_file_len(len)?;
        *staged.hash.lock() = None;
        Ok(Staged {
            overlay: Some(parking_lot::Mutex::new(Overlay {
                base: Base::File(base),
                base_len: len,
                len,
                dirty: BTreeMap::new(),
            })),
            ..staged
        })
    }

    /// An overlay over `len` bytes that `base` reads (a store's value that is no local file),
    /// in an unlinked staging file in `dir`. Nothing of the base is read until a read of a
    /// clean range or [`Staged::materialize`].
    pub fn overlay_on(
        dir: &Path,
        base: std::sync::Arc<dyn OverlaySource>,
        len: u64,
    ) -> Result<Staged> {
        let staged = Staged::anonymous(dir)?;
        staged.set_file_len(len)?;
        *staged.hash.lock() = None;
        Ok(Staged {
            overlay: Some(parking_lot::Mutex::new(Overlay {
                base: Base::Source(base),
                base_len: len,
                len,
                dirty: BTreeMap::new(),
            })),
            ..staged
        })
    }

    /// Turns this empty staged value into an overlay over `below` (a staged value being
    /// committed): it reads as `below` until written, and takes the writes made while the
    /// commit runs. Nothing of `below` is copied.
    pub fn layered_over(self, below: std::sync::Arc<Staged>) -> Result<Staged> {
        let len = below.len()?;
        self.set_file_len(len)?;
        *self.hash.lock() = None;
        Ok(Staged {
            overlay: Some(parking_lot::Mutex::new(Overlay {
                base: Base::Source(std::sync::Arc::new(Layer(below))),
                base_len: len,
                len,
                dirty: BTreeMap::new(),
            })),
            ..self
        })
    }

    /// Whether this is an overlay over another staged value ([`Staged::layered_over`]).
    pub fn is_layered(&self) -> bool {
        self.overlay.as_ref().is_some_and(|ov| {
            matches!(&ov.lock().base, Base::Source(s) if s.as_any().is_some_and(|a| a.is::<Layer>()))
        })
    }

    /// After the value below a layered overlay was committed: takes the base of `fresh` (an
    /// overlay the store just staged over the value as committed, which holds the same bytes)
    /// in place of the staged value below, so that reads no longer go through it and the store
    /// can commit this overlay's dirty ranges in place. `false` (nothing changed) when `fresh`
    /// is no overlay or is shorter than this overlay's base.
    pub fn rebase(&self, fresh: &Staged) -> Result<bool> {
        let (Some(ov), Some(fo)) = (&self.overlay, &fresh.overlay) else {
            return Ok(false);
        };
        let fo = fo.lock();
        let mut ov = ov.lock();
        if fo.base_len.min(fo.len) < ov.base_len {
            return Ok(false);
        }
        ov.base = fo.base.try_clone()?;
        Ok(true)
    }

    /// The source of an overlay made by [`Staged::overlay_on`].
    pub fn overlay_source(&self) -> Option<std::sync::Arc<dyn OverlaySource>> {
        match &self.overlay.as_ref()?.lock().base {
            Base::Source(s) => Some(s.clone()),
            Base::File(_) => None,
        }
    }

    fn set_file_len(&self, len: u64) -> Result<()> {
        let resized = self.in_memory(|m| {
            if len <= m.limit {
                if let Some(b) = m.bytes.as_mut() {
                    b.resize(len as usize, 0);
                }
                return Ok(true);
            }
            self.spill(m).map(|()| false)
        });
        if let Some(done) = resized
            && done?
        {
            return Ok(());
        }
        self.direct
            .settle_for_len(len)
            .map_err(|e| Error::io("writing staging file (a queued O_DIRECT write)", e))?;
        self.disk()?
            .set_len(len)
            .map_err(|e| Error::io("resizing staging file", e))
    }

    /// Whether this is an overlay whose clean ranges still live in its base.
    pub fn is_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// For an overlay: what committing its dirty ranges in place takes. `None` otherwise.
    pub fn overlay_plan(&self) -> Result<Option<OverlayPlan>> {
        let Some(ov) = &self.overlay else {
            return Ok(None);
        };
        let ov = ov.lock();
        let clean = ov.clean();
        Ok(Some(OverlayPlan {
            base_id: ov.base.id()?,
            keep: ov.base_len.min(ov.len),
            len: ov.len,
            dirty: ov.dirty.iter().map(|(&s, &e)| (s, e)).collect(),
            clean_bytes: clean.iter().map(|(s, e)| e - s).sum(),
        }))
    }

    /// Turns an overlay into a plain staged value: copies the clean ranges from the base into
    /// the staging file (in the kernel), so the file holds the whole value. A no-op otherwise.
    pub fn materialize(&mut self) -> Result<()> {
        let Some(ov) = self.overlay.take() else {
            return Ok(());
        };
        let ov = ov.into_inner();
        let filled = (|| {
            for (s, e) in ov.clean() {
                ov.base.copy_to(self.disk()?, s, e)?;
            }
            Ok::<(), Error>(())
        })();
        match filled {
            Ok(()) => Ok(()),
            Err(e) => {
                self.overlay = Some(parking_lot::Mutex::new(ov));
                Err(e)
            }
        }
    }

    /// Writes the whole staged value to `out` from its start (the position of neither file is
    /// assumed).
    pub fn write_to(&self, out: &mut dyn Write) -> Result<u64> {
        let len = self.len()?;
        let mut buf = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
        let mut at = 0u64;
        while at < len {
            let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = self.read_at(at, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("copying a staged value", e))?;
            at += n as u64;
        }
        Ok(at)
    }

    /// `SEEK_DATA`/`SEEK_HOLE` from `offset` (below the length): the staging file's holes for
    /// a plain staged value; an overlay is all data.
    pub fn seek_data_hole(&self, offset: i64, whence: i32) -> std::io::Result<i64> {
        if self.overlay.is_some() {
            let len = i64::try_from(self.len().map_err(std::io::Error::other)?).unwrap_or(i64::MAX);
            return Ok(if whence == libc::SEEK_DATA {
                offset
            } else {
                len
            });
        }
        if let Some(len) = self.in_memory(|m| bytes_len(m) as i64) {
            // Memory has no holes: all data up to the end.
            return Ok(if whence == libc::SEEK_DATA {
                offset
            } else {
                len
            });
        }
        crate::sys::lseek(self.disk().map_err(std::io::Error::other)?, offset, whence)
    }

    /// A second handle on the same bytes that outlives this one's commit: it shares the open
    /// file (not its name), so whatever a store does with the name (rename it into place, remove
    /// it after a failure), the bytes stay readable through the copy until it is dropped. The
    /// filesystem keeps one across each commit, so a failed commit loses nothing.
    pub fn try_clone_detached(&self) -> Result<Staged> {
        if let Some(copy) = self.in_memory(|m| Staged {
            file: OnceLock::new(),
            path: OnceLock::new(),
            mem: Some(parking_lot::Mutex::new(Mem {
                bytes: m.bytes.clone(),
                limit: m.limit,
                spill: m.spill.clone(),
            })),
            hash: parking_lot::Mutex::new(None),
            hashed: self.hashed,
            overlay: None,
            direct: Default::default(),
        }) {
            return Ok(copy);
        }
        let file = self
            .disk()?
            .try_clone()
            .map_err(|e| Error::io("duplicating a staging file handle", e))?;
        let overlay = match &self.overlay {
            None => None,
            Some(ov) => {
                let ov = ov.lock();
                Some(parking_lot::Mutex::new(Overlay {
                    base: ov.base.try_clone()?,
                    base_len: ov.base_len,
                    len: ov.len,
                    dirty: ov.dirty.clone(),
                }))
            }
        };
        Ok(Staged {
            file: OnceLock::from(file),
            path: OnceLock::new(),
            mem: None,
            hash: parking_lot::Mutex::new(None),
            hashed: self.hashed,
            overlay,
            direct: Default::default(),
        })
    }

    /// The staging file. Writing through it bypasses the running hash, so taking it gives
    /// up [`Staged::content_hash`]. For an overlay the file holds only the dirty ranges:
    /// [`Staged::materialize`] first, or use [`Staged::write_to`]. An in-memory value
    /// spills to its file first.
    pub fn file(&self) -> Result<&File> {
        *self.hash.lock() = None;
        self.disk()
    }

    /// The content hash ([`super::digest`]) of the staged value if it is `len` bytes long and
    /// every byte was written in order from offset 0; `None` otherwise (the store then records
    /// no hash).
    pub fn content_hash(&self, len: u64) -> Option<[u8; 32]> {
        let mut guard = self.hash.lock();
        guard.as_ref().filter(|p| p.len == len)?;
        self.reclaim_hash(&mut guard);
        let prefix = guard.as_ref()?;
        Some(prefix.hasher.digest())
    }

    /// The staging file's path, for stores that commit by rename.
    /// An in-memory value has none until it spills.
    pub fn path(&self) -> Option<&Path> {
        self.path.get().and_then(|p| p.0.as_deref())
    }

    /// Hands the file and its path to the store committing it; the staged value no longer
    /// removes the file when dropped. An in-memory value spills to its file first.
    pub fn into_parts(self) -> Result<(File, Option<PathBuf>)> {
        self.disk()?;
        let path = self.path.into_inner().and_then(TempPath::keep);
        let file = self
            .file
            .into_inner()
            .ok_or_else(|| Error::new(super::ErrorKind::Io, "staged value has no file"))?;
        Ok((file, path))
    }

    /// The current length in bytes.
    pub fn len(&self) -> Result<u64> {
        if let Some(ov) = &self.overlay {
            return Ok(ov.lock().len);
        }
        if let Some(len) = self.in_memory(|m| bytes_len(m) as u64) {
            return Ok(len);
        }
        self.disk()?
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("reading staging file length", e))
    }

    /// Whether the staged value is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Writes `data` at `offset` into memory if the value is in memory and stays within its
    /// bound; spills it if it would not. `None`: the staging file takes the write.
    fn write_memory(&self, offset: u64, data: &[u8]) -> Option<Result<()>> {
        let end = offset.saturating_add(data.len() as u64);
        let in_memory = self.in_memory(|m| {
            if end > m.limit {
                return self.spill(m).map(|()| false);
            }
            if let Some(b) = m.bytes.as_mut() {
                let (at, end) = (offset as usize, end as usize);
                if b.len() < end {
                    b.resize(end, 0);
                }
                b[at..end].copy_from_slice(data);
            }
            Ok(true)
        });
        match in_memory {
            Some(Ok(true)) => Some(Ok(())),
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(false)) | None => None,
        }
    }

    /// Writes all of `data` at `offset`, extending the file (with a hole) if needed.
    ///
    /// Writers of an overlay, or of a value already written out of order, do not wait for each
    /// other: only the dirty map is locked, after the bytes are written.
    pub fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at_with(offset, data, false)
    }

    /// [`Staged::write_all_at`] for a client's `O_DIRECT` write: block-aligned ranges bypass
    /// the staging file's page cache, and are queued to a writer thread (see `direct.rs`):
    /// they are in the file before anything else touches it, and an error of one reaches the
    /// next write, read, sync or commit.
    pub fn write_all_at_direct(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at_with(offset, data, true)
    }

    /// How many `O_DIRECT` descriptors of the staging file were opened (one at most).
    #[cfg(test)]
    pub(crate) fn direct_descriptors_opened(&self) -> u32 {
        self.direct.descriptors_opened()
    }

    /// Takes the running hash back from the direct-write queue if the queue holds it (once
    /// it has hashed every queued write); drops it if the queue has none to give.
    fn reclaim_hash(&self, hash: &mut Option<Prefix>) {
        if let Some(p) = hash.as_mut()
            && p.queued
        {
            p.queued = false;
            match self.direct.take_hasher() {
                Some(h) => p.hasher = h,
                None => *hash = None,
            }
        }
    }

    /// An in-order direct write of a hashed value, queued with its hashing (see `direct.rs`):
    /// `None` if it cannot be queued that way (the caller writes and hashes it itself).
    fn queue_hashed(&self, p: &mut Prefix, offset: u64, data: &[u8]) -> Option<Result<()>> {
        if p.len != offset || !super::direct::eligible(data.len(), offset) || self.is_in_memory() {
            return None;
        }
        let file = match self.disk_unsettled() {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        let queue = self.direct.queue(file)?;
        if !p.queued {
            match queue.adopt_hasher(std::mem::take(&mut p.hasher)) {
                Ok(()) => p.queued = true,
                Err(h) => {
                    p.hasher = h;
                    return None;
                }
            }
        }
        Some(
            queue
                .submit(data, offset, true)
                .map_err(|e| Error::io("writing staging file", e)),
        )
    }

    fn write_at_with(&self, offset: u64, data: &[u8], direct: bool) -> Result<()> {
        let mut hash = self.hash.lock();
        if direct
            && let Some(p) = hash.as_mut()
            && let Some(written) = self.queue_hashed(p, offset, data)
        {
            match &written {
                Ok(()) => p.len += data.len() as u64,
                // The running hash no longer describes the file.
                Err(_) => *hash = None,
            }
            if let (Some(ov), Ok(())) = (&self.overlay, &written) {
                mark_written(ov, offset, data.len());
            }
            return written;
        }
        let plain = |data: &[u8]| {
            if let Some(done) = self.write_memory(offset, data) {
                return done;
            }
            if direct && super::direct::eligible(data.len(), offset) {
                let file = self.disk_unsettled()?;
                if let Some(queue) = self.direct.queue(file) {
                    return queue
                        .submit(data, offset, false)
                        .map_err(|e| Error::io("writing staging file", e));
                }
            }
            self.disk()?
                .write_all_at(data, offset)
                .map_err(|e| Error::io("writing staging file", e))
        };
        if hash.is_none() {
            drop(hash);
            let written = plain(data);
            match (&self.overlay, &written) {
                (Some(ov), Ok(())) => mark_written(ov, offset, data.len()),
                // A truncation to zero may have restarted the hash meanwhile (`set_len`):
                // this write is not in it.
                (None, _) => *self.hash.lock() = None,
                (Some(_), Err(_)) => {}
            }
            return written;
        }
        let written = plain(data);
        if let (Some(ov), Ok(())) = (&self.overlay, &written) {
            mark_written(ov, offset, data.len());
        }
        self.reclaim_hash(&mut hash);
        match hash.as_mut() {
            Some(p) if written.is_ok() && offset == p.len => {
                p.hasher.update(data);
                p.len += data.len() as u64;
            }
            // Out of order, or a failed write: the running hash no longer describes the file.
            Some(_) => *hash = None,
            None => {}
        }
        written
    }

    /// Reads into `buf` from `offset`; returns the count, short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if let Some(ov) = &self.overlay {
            return self.read_overlay(&ov.lock(), offset, buf);
        }
        if let Some(n) = self.in_memory(|m| {
            let b = m.bytes.as_deref().unwrap_or(&[]);
            let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
            let n = (b.len() - from).min(buf.len());
            buf[..n].copy_from_slice(&b[from..from + n]);
            n
        }) {
            return Ok(n);
        }
        read_full(self.disk()?, offset, buf).map_err(|e| Error::io("reading staging file", e))
    }

    /// `read_at` of an overlay: dirty ranges from the staging file, clean ones from the base,
    /// zeros above the base's surviving length.
    fn read_overlay(&self, ov: &Overlay, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= ov.len {
            return Ok(0);
        }
        let n = usize::try_from((ov.len - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        if n == 0 {
            // An empty read (the range lookups below need `offset < end`).
            return Ok(0);
        }
        let buf = &mut buf[..n];
        let end = offset + n as u64;
        let mut at = offset;
        // The dirty range that starts at or before `offset` may cover it.
        let first = ov.dirty.range(..=offset).next_back().map(|(&s, &e)| (s, e));
        let ranges = first
            .into_iter()
            .chain(ov.dirty.range(offset + 1..end).map(|(&s, &e)| (s, e)));
        let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
        for (s, e) in ranges {
            let (s, e) = (s.max(offset), e.min(end));
            if s >= e {
                continue;
            }
            if s > at {
                pieces.push((at, s, false));
            }
            pieces.push((s, e, true));
            at = e;
        }
        if at < end {
            pieces.push((at, end, false));
        }
        // A store's source is read once for the whole span (one remote read, not one per
        // clean piece between dirty ranges).
        let top = ov.base_len.min(end);
        let span = match &ov.base {
            Base::Source(_) if top > offset && pieces.iter().filter(|p| !p.2).count() > 1 => {
                let mut span = vec![0u8; (top - offset) as usize];
                let got = ov.base.read_full(offset, &mut span)?;
                span[got..].fill(0);
                Some(span)
            }
            Base::Source(_) | Base::File(_) => None,
        };
        for (s, e, dirty) in pieces {
            let slice = &mut buf[(s - offset) as usize..(e - offset) as usize];
            if let (Some(span), false) = (&span, dirty) {
                let n = (e.min(top).saturating_sub(s)) as usize;
                if n > 0 {
                    let from = (s - offset) as usize;
                    slice[..n].copy_from_slice(&span[from..from + n]);
                }
                slice[n..].fill(0);
                continue;
            }
            if dirty {
                let got = read_full(self.disk()?, s, slice)
                    .map_err(|e| Error::io("reading staging file", e))?;
                slice[got..].fill(0);
                continue;
            }
            let from_base = usize::try_from(ov.base_len.saturating_sub(s))
                .unwrap_or(usize::MAX)
                .min(slice.len());
            let got = ov.base.read_full(s, &mut slice[..from_base])?;
            slice[got..].fill(0);
        }
        Ok(n)
    }

    /// Truncates or extends (with a hole) to `len` bytes.
    pub fn set_len(&self, len: u64) -> Result<()> {
        let mut hash = self.hash.lock();
        let resized = self.set_file_len(len);
        if let (Some(ov), Ok(())) = (&self.overlay, &resized) {
            let mut ov = ov.lock();
            if len < ov.len {
                ov.base_len = ov.base_len.min(len);
                ov.cut(len);
            }
            ov.len = len;
        }
        match hash.as_ref() {
            // Emptied (an O_TRUNC open): the hash starts again.
            _ if len == 0 && resized.is_ok() && self.overlay.is_none() && self.hashed => {
                *hash = Some(Prefix::new())
            }
            Some(p) if resized.is_ok() && p.len == len => {}
            Some(_) => *hash = None,
            None => {}
        }
        resized
    }

    /// The whole staged value.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len()?).map_err(|_| {
            Error::new(
                super::ErrorKind::InvalidArgument,
                "staged value too large for memory",
            )
        })?;
        let mut buf = vec![0u8; len];
        let n = self.read_at(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Flushes the staging file's data to stable storage. An in-memory value has no file to
    /// flush: a store that needs its bytes on disk takes its file ([`Staged::into_parts`]).
    pub fn sync_data(&self) -> Result<()> {
        if self.is_in_memory() {
            return Ok(());
        }
        self.disk()?
            .sync_data()
            .map_err(|e| Error::io("syncing staging file", e))
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the count.
pub fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Creates a new file `dir/<prefix>-<random>` with mode 0600 and `O_EXCL`, retrying on a name
/// clash. Returns the open file and its path.
pub fn create_unique(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        super::key::fill_random(&mut bytes);
        let n = u64::from_le_bytes(bytes);
        let path = dir.join(format!("{prefix}-{n}"));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("creating a temporary file in {}", dir.display()),
                    e,
                ));
            }
        }
    }
    Err(Error::new(
        super::ErrorKind::Io,
        format!("could not find a free temporary name in {}", dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash (kill -9 of a mount over `spdk:aio=`) between creating a named staging file and
    /// unlinking it left an empty `stage-<n>` file beside the image that nothing removed: an
    /// anonymous staging file must never have a name in its directory.
    #[test]
    fn an_anonymous_staging_file_never_appears_in_its_directory() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let seen = std::thread::scope(|scope| {
            let lister = scope.spawn(|| {
                let mut seen = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    seen += std::fs::read_dir(dir.path()).unwrap().count();
                }
                seen
            });
            for _ in 0..5000 {
                let s = Staged::anonymous(dir.path()).unwrap();
                s.write_all_at(0, b"x").unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            lister.join().unwrap()
        });
        assert_eq!(seen, 0, "directory entries seen while staging");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// An in-memory staged value against a `Vec` model: random writes, truncations and
    /// extensions across the memory bound read back the same before and after it spills, and
    /// it spills exactly when its length would pass the bound.
    #[test]
    fn an_in_memory_value_reads_like_its_model_across_the_spill() {
        use rand::{Rng, RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let limit = 4096u64;
        for seed in 0..40u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let named = seed % 2 == 0;
            let spill = if named {
                SpillTo::Named(dir.path().to_owned())
            } else {
                SpillTo::Anonymous(dir.path().to_owned())
            };
            let s = Staged::memory(limit, spill);
            let mut model: Vec<u8> = Vec::new();
            let mut peak = 0u64;
            for _ in 0..30 {
                match rng.random_range(0..10) {
                    0..=5 => {
                        let at = rng.random_range(0..limit + 512);
                        let mut data = vec![0u8; rng.random_range(1..700)];
                        rng.fill_bytes(&mut data);
                        s.write_all_at(at, &data).unwrap();
                        let end = at as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[at as usize..end].copy_from_slice(&data);
                    }
                    6 | 7 => {
                        let len = rng.random_range(0..limit + 256);
                        s.set_len(len).unwrap();
                        model.resize(len as usize, 0);
                    }
                    _ => {
                        let at = rng.random_range(0..limit + 600);
                        let mut buf = vec![0xAAu8; rng.random_range(1..900)];
                        let n = s.read_at(at, &mut buf).unwrap();
                        let from = (at as usize).min(model.len());
                        let want = &model[from..(from + buf.len()).min(model.len())];
                        assert_eq!(&buf[..n], want, "seed {seed}: read at {at}");
                    }
                }
                peak = peak.max(model.len() as u64);
                assert_eq!(s.len().unwrap(), model.len() as u64, "seed {seed}");
                assert_eq!(
                    s.is_in_memory(),
                    peak <= limit,
                    "seed {seed}: spilled at {peak}"
                );
                assert_eq!(s.path().is_some(), named && peak > limit, "seed {seed}");
            }
            assert_eq!(s.read_all().unwrap(), model, "seed {seed}");
            let mut out = Vec::new();
            assert_eq!(s.write_to(&mut out).unwrap(), model.len() as u64);
            assert_eq!(out, model, "seed {seed}");
            // The copy a commit keeps has the same bytes, and outlives the value.
            let keep = s.try_clone_detached().unwrap();
            drop(s);
            assert_eq!(keep.read_all().unwrap(), model, "seed {seed}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A store that needs the file of an in-memory value gets one with the bytes (a named one
    /// where the value spills to named files), and the hash of in-order writes survives.
    #[test]
    fn taking_the_file_of_an_in_memory_value_spills_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staged::memory(MEMORY_LIMIT, SpillTo::Named(dir.path().to_owned()))
            .hashing()
            .unwrap();
        s.write_all_at(0, b"hello ").unwrap();
        s.write_all_at(6, b"world").unwrap();
        assert!(s.is_in_memory() && s.path().is_none());
        let want = super::super::digest::content_digest(b"hello world");
        assert_eq!(s.content_hash(11), Some(want));
        let keep = s.try_clone_detached().unwrap();
        let (file, path) = s.into_parts().unwrap();
        let path = path.expect("a named spill file");
        assert_eq!(path.parent(), Some(dir.path()));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(file.metadata().unwrap().len(), 11);
        assert!(keep.is_in_memory());
        assert_eq!(keep.read_all().unwrap(), b"hello world");
        std::fs::remove_file(path).unwrap();
        // An anonymous spill leaves nothing in its directory.
        let s = Staged::memory(8, SpillTo::Anonymous(dir.path().to_owned()));
        s.write_all_at(0, b"0123456789").unwrap();
        assert!(!s.is_in_memory() && s.path().is_none());
        assert_eq!(s.read_all().unwrap(), b"0123456789");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// An empty read inside an overlay's length panicked (an empty `BTreeMap` range with its
    /// start above its end); the conformance suite's `stage_round_trip` hit it now and then.
    #[test]
    fn an_empty_read_of_an_overlay_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = tempfile::tempfile().unwrap();
        base.write_all(b"0123456789").unwrap();
        let (file, path) = create_unique(dir.path(), "stage").unwrap();
        let s = Staged::overlay(file, path, base).unwrap();
        s.write_all_at(2, b"ab").unwrap();
        assert_eq!(s.read_at(3, &mut []).unwrap(), 0);
        assert_eq!(s.read_at(0, &mut []).unwrap(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(s.read_at(1, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"1ab4");
    }

    #[test]
    fn random_writes_read_back_with_holes_as_zeros() {
        let dir = std::env::temp_dir();
        let s = Staged::anonymous(&dir).unwrap();
        s.write_all_at(10, b"abc").unwrap();
        assert_eq!(s.len().unwrap(), 13);
        let all = s.read_all().unwrap();
        assert_eq!(&all[..10], &[0u8; 10]);
        assert_eq!(&all[10..], b"abc");
        s.set_len(11).unwrap();
        assert_eq!(s.read_all().unwrap().len(), 11);
    }

    /// An overlay behaves as a plain copy of its base would, under random writes, truncations
    /// and extensions, before and after it is materialized.
    #[test]
    fn an_overlay_reads_like_a_copy_of_its_base() {
        use rand::{Rng, RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for round in 0..20 {
            let mut model = vec![0u8; rng.random_range(0..100_000)];
            rng.fill_bytes(&mut model);
            let base_path = dir.path().join(format!("base{round}"));
            std::fs::write(&base_path, &model).unwrap();
            let (f, p) = create_unique(dir.path(), "stage").unwrap();
            let mut s = Staged::overlay(f, p, File::open(&base_path).unwrap()).unwrap();
            for _ in 0..50 {
                match rng.random_range(0..10) {
                    0 => {
                        let len = rng.random_range(0..120_000);
                        s.set_len(len as u64).unwrap();
                        model.resize(len, 0);
                    }
                    _ => {
                        let at = rng.random_range(0..110_000);
                        let mut data = vec![0u8; rng.random_range(1..5000)];
                        rng.fill_bytes(&mut data);
                        s.write_all_at(at as u64, &data).unwrap();
                        if model.len() < at + data.len() {
                            model.resize(at + data.len(), 0);
                        }
                        model[at..at + data.len()].copy_from_slice(&data);
                    }
                }
                assert_eq!(s.len().unwrap(), model.len() as u64);
                let at = rng.random_range(0..model.len() + 10);
                let mut buf = vec![0u8; rng.random_range(0..20_000)];
                let n = s.read_at(at as u64, &mut buf).unwrap();
                let want = &model[at.min(model.len())..(at + buf.len()).min(model.len())];
                assert_eq!(&buf[..n], want, "round {round}, read at {at}");
            }
            assert_eq!(s.read_all().unwrap(), model);
            let clone = s.try_clone_detached().unwrap();
            s.materialize().unwrap();
            assert!(!s.is_overlay());
            assert_eq!(s.read_all().unwrap(), model);
            assert_eq!(clone.read_all().unwrap(), model);
        }
    }

    /// An overlay layered over a staged value being committed reads as that value with its
    /// own writes on top, is not taken for an overlay over the stored file, and once the value
    /// below is in the file, rebases onto it: same bytes, and the file's identity in its plan.
    #[test]
    fn a_layered_overlay_reads_through_the_value_below_and_rebases_onto_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("base");
        let mut model: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&base_path, &model).unwrap();
        let (f, p) = create_unique(dir.path(), "stage").unwrap();
        let below = Staged::overlay(f, p, File::open(&base_path).unwrap()).unwrap();
        below.write_all_at(1000, b"below").unwrap();
        model[1000..1005].copy_from_slice(b"below");
        let below = std::sync::Arc::new(below.try_clone_detached().unwrap());
        let (f, p) = create_unique(dir.path(), "stage").unwrap();
        let top = Staged::named(f, p).layered_over(below.clone()).unwrap();
        assert!(top.is_layered());
        assert_eq!(top.read_all().unwrap(), model);
        top.write_all_at(1003, b"top").unwrap();
        top.write_all_at(50_000, b"grown").unwrap();
        model[1003..1006].copy_from_slice(b"top");
        model.extend_from_slice(b"grown");
        assert_eq!(top.read_all().unwrap(), model);
        let file_id_of_base = file_id(&File::open(&base_path).unwrap()).unwrap();
        assert_ne!(
            top.overlay_plan().unwrap().unwrap().base_id,
            file_id_of_base
        );
        // The value below reaches the file in place (what a commit does), and the store stages
        // a fresh overlay over it.
        let target = OpenOptions::new().write(true).open(&base_path).unwrap();
        target.write_all_at(b"below", 1000).unwrap();
        let (f, p) = create_unique(dir.path(), "stage").unwrap();
        let fresh = Staged::overlay(f, p, File::open(&base_path).unwrap()).unwrap();
        assert!(top.rebase(&fresh).unwrap());
        drop(fresh);
        drop(below);
        assert!(!top.is_layered());
        let plan = top.overlay_plan().unwrap().unwrap();
        assert_eq!(plan.base_id, file_id_of_base);
        assert_eq!(plan.dirty, vec![(1003, 1006), (50_000, 50_005)]);
        assert_eq!(top.read_all().unwrap(), model);
    }

    /// The dirty ranges are exactly the maximal runs of written bytes (disjoint, not touching).
    #[test]
    fn dirty_ranges_are_the_runs_of_written_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let base = tempfile::tempfile().unwrap();
            let mut ov = Overlay {
                base: Base::File(base),
                base_len: 0,
                len: 0,
                dirty: BTreeMap::new(),
            };
            let mut model = [false; 300];
            for _ in 0..rng.random_range(1..30) {
                let s = rng.random_range(0..300);
                let e = rng.random_range(s..=300);
                ov.mark(s as u64, e as u64);
                model[s..e].iter_mut().for_each(|b| *b = true);
            }
            let mut want = Vec::new();
            let mut i = 0;
            while i < model.len() {
                if model[i] {
                    let s = i;
                    while i < model.len() && model[i] {
                        i += 1;
                    }
                    want.push((s as u64, i as u64));
                }
                i += 1;
            }
            let got: Vec<(u64, u64)> = ov.dirty.iter().map(|(&s, &e)| (s, e)).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn dropping_a_named_stage_removes_its_file() {
        let dir = std::env::temp_dir();
        let (f, p) = create_unique(&dir, "dsfs-test").unwrap();
        let s = Staged::named(f, p.clone());
        assert!(p.exists());
        drop(s);
        assert!(!p.exists());
    }

    /// A named staging value (flatfs) keeps no running hash, which would cost a hash pass
    /// over every written byte, unless its store asks with `hashing` (the default
    /// repository, which records it); with it, in-order writes, also direct ones, and an
    /// emptying truncation keep the hash exact.
    #[test]
    fn only_a_hashing_named_stage_keeps_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(256 * 1024u32)).map(|i| (i % 251) as u8).collect();
        let hash = super::super::digest::content_digest;
        let (f, p) = create_unique(dir.path(), "plain").unwrap();
        let plain = Staged::named(f, p);
        plain.write_all_at(0, &data).unwrap();
        assert_eq!(plain.content_hash(data.len() as u64), None);
        plain.set_len(0).unwrap();
        plain.write_all_at(0, &data).unwrap();
        assert_eq!(plain.content_hash(data.len() as u64), None);

        let (f, p) = create_unique(dir.path(), "hashed").unwrap();
        let hashed = Staged::named(f, p).hashing().unwrap();
        hashed.write_all_at(0, b"junk").unwrap();
        hashed.set_len(0).unwrap();
        hashed.write_all_at_direct(0, &data[..128 * 1024]).unwrap();
        hashed
            .write_all_at(128 * 1024, &data[128 * 1024..])
            .unwrap();
        assert_eq!(
            hashed.content_hash(data.len() as u64),
            Some(hash(&data)),
            "hash of in-order writes"
        );
        assert_eq!(hashed.read_all().unwrap(), data);
    }

    #[test]
    fn into_parts_keeps_the_file() {
        let dir = std::env::temp_dir();
        let (f, p) = create_unique(&dir, "dsfs-test").unwrap();
        let s = Staged::named(f, p.clone());
        let (_f, path) = s.into_parts().unwrap();
        assert_eq!(path.as_deref(), Some(p.as_path()));
        assert!(p.exists());
        std::fs::remove_file(p).unwrap();
    }
}
