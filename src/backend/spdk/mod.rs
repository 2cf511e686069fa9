//! `SpdkStore`: values in an SPDK blobstore, one blob per value, in BlobFS's on-disk layout.
//!
//! **Layout.** The blobstore type is `BLOBFS`. A value is a blob whose data starts at the
//! blob's first byte, whose `name` xattr is the key as a BlobFS file name (see [`names`]:
//! the key itself, or a hashed name with the key in further xattrs) and whose `length` xattr
//! (a native-endian `u64`, as BlobFS writes it) is the value's length. So SPDK 25.05's BlobFS
//! lists and reads what dsfs writes, and dsfs reads what BlobFS wrote (files whose names are
//! clean keys). dsfs adds one xattr, `dsfs_seq` (a `u64`), that orders two blobs of the same
//! name; BlobFS ignores it.
//!
//! **Atomic replace.** A put creates a new blob named `/.dsfs-tmp/<seq>`, sizes it, writes
//! the value, then renames it (sets `name`, `length`) and syncs its metadata: that sync is the
//! commit point. Only then is the old blob deleted. A crash before the commit leaves a
//! temporary blob; a crash after it leaves two blobs of one name. [`SpdkStore::open`] removes
//! both kinds of leftover (the higher `dsfs_seq` wins), so a reader sees the old value or the
//! new one, never a mix. A failed write (no space, no memory) deletes its new blob and leaves
//! the old value.
//!
//! **The key map.** The blobstore has no index by name: at open the store reads every blob's
//! xattrs once and keeps `key -> (blob, length, seq)` in memory (a `BTreeMap`, so queries come
//! in key order and never touch the blobstore). dsfs's redb index above it answers the
//! filesystem's listings and lookups as for every store; the map here is rebuilt from the
//! blobstore's own metadata, which is the one record that survives a crash, so the two can
//! never disagree about which blob holds a key.
//!
//! **Writes.** Values are written in io units; the tail of the last io unit is zero-filled.
//! Clusters are allocated by `spdk_blob_resize` (thick), so `space()` is exact: free clusters
//! times the cluster size. A staged value (the filesystem's writes) over an existing value is
//! an overlay that reads the value's blob in place; a commit that changes a small part of a
//! big value writes only the changed io units, in place, behind a redo record kept in the
//! blobstore (`redo.rs`, which also says why not snapshots and clones). Any other staged
//! value is streamed into a new blob in 1 MiB pieces at commit (a copy, as a put does, never
//! a copy in memory).
//!
//! **Durability.** Every commit syncs the blob's metadata; `sync` (and a durable commit)
//! flushes the bdev, which makes the data and metadata written before it durable.
//!
//! The blobstore is reached through [`ops::BlobOps`]: the real SPDK (feature `spdk`,
//! `runtime`) or the in-process [`fake::FakeBlobstore`], which CI tests against.

pub mod fake;
pub mod names;
pub mod ops;
mod redo;
#[cfg(feature = "spdk")]
pub mod runtime;
pub mod spec;
#[cfg(feature = "spdk")]
mod sys;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::datastore::query::{self, EntryIter};
use crate::datastore::{
    Capabilities, Datastore, Entry, Error, ErrorKind, Key, Query, Result, Results, Segment, Space,
    StageInit, Staged,
};
use sha2::Digest;

use self::names::Named;
use self::ops::{BSTYPE_BLOBFS, BlobId, BlobOps, BsError, BsErrorKind};

/// The store's one segment (see [`SpdkStore::segments`]).
const SEGMENT: &str = "blobstore";
/// The xattr that orders two blobs of one name.
const SEQ_XATTR: &str = "dsfs_seq";
/// BlobFS's xattr of a file deleted while open (removed at its next load).
const DELETED_XATTR: &str = "is_deleted";
/// The largest piece of a value read or written in one blobstore call.
const IO_PIECE: usize = 1 << 20;
/// How often an operation that failed with `-ENOMEM` (no request objects) is tried again.
const NOMEM_RETRIES: u32 = 8;

/// Where a key's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    blob: BlobId,
    len: u64,
    seq: u64,
    /// Odd while an in-place commit writes the blob (see `redo.rs`).
    ver: u64,
}

struct Inner {
    bs: Arc<dyn BlobOps>,
    map: RwLock<BTreeMap<String, Slot>>,
    seq: AtomicU64,
    closed: AtomicBool,
    staging_dir: PathBuf,
    io_unit: u64,
    cluster: u64,
    pins: redo::Pins,
}

/// The SPDK blobstore store. See the module documentation.
pub struct SpdkStore {
    inner: Arc<Inner>,
    /// The blobstore's segment stamp, computed once from the map read at open (see
    /// [`Datastore::segments`]).
    stamp: String,
}

/// What [`SpdkStore::open`] found and put right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Values being written when the store last stopped (removed).
    pub temporaries: usize,
    /// Older blobs of a name that a newer blob replaced (removed).
    pub superseded: usize,
    /// Files BlobFS marked deleted (removed, as BlobFS does).
    pub deleted: usize,
    /// Blobs without a name or length, or whose name no key maps to (left alone), and redo
    /// records that fail their checks (left alone).
    pub foreign: usize,
    /// Committed in-place writes applied again (their redo records, then removed).
    pub replayed: usize,
}

pub(crate) fn bs_error(e: BsError) -> Error {
    let kind = match e.kind {
        BsErrorKind::NoSpace => ErrorKind::NoSpace,
        BsErrorKind::NoMemory => ErrorKind::Io,
        BsErrorKind::NotFound => ErrorKind::Io,
        BsErrorKind::Busy => ErrorKind::Io,
        BsErrorKind::Invalid => ErrorKind::Io,
        BsErrorKind::Other(_) => ErrorKind::Io,
    };
    Error::with_source(kind, format!("spdk: {e}"), e)
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

fn u64_xattr(v: Option<Vec<u8>>) -> Option<u64> {
    let v = v?;
    let bytes: [u8; 8] = v.as_slice().try_into().ok()?;
    Some(u64::from_ne_bytes(bytes))
}

impl SpdkStore {
    /// Opens the store on a loaded blobstore: checks its type (a blobstore of another type is
    /// refused, as BlobFS refuses it; an untyped one is refused too, since this trait cannot
    /// set the type), reads every blob's metadata and removes the leftovers of interrupted
    /// writes. `staging_dir` holds the staging files of the filesystem's writes.
    pub fn open(bs: Arc<dyn BlobOps>, staging_dir: PathBuf) -> Result<(SpdkStore, Recovery)> {
        let bstype = bs.bstype();
        if bstype != BSTYPE_BLOBFS {
            return Err(corrupt(format!(
                "spdk: the blobstore's type is {:?}, not BLOBFS",
                String::from_utf8_lossy(&bstype).trim_end_matches('\0')
            )));
        }
        let io_unit = u64::from(bs.io_unit_size());
        let cluster = bs.cluster_size();
        if io_unit == 0 || cluster == 0 || !cluster.is_multiple_of(io_unit) {
            return Err(corrupt(format!(
                "spdk: io unit {io_unit} and cluster size {cluster} do not fit"
            )));
        }
        let inner = Inner {
            bs,
            map: RwLock::new(BTreeMap::new()),
            seq: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            staging_dir,
            io_unit,
            cluster,
            pins: redo::Pins::default(),
        };
        let recovery = inner.load()?;
        let stamp = inner.stamp();
        Ok((
            SpdkStore {
                inner: Arc::new(inner),
                stamp,
            },
            recovery,
        ))
    }

    /// The blobstore below.
    pub fn blobstore(&self) -> &Arc<dyn BlobOps> {
        &self.inner.bs
    }
}

impl Inner {
    /// The digest of every value's key, length and `dsfs_seq` (see [`Datastore::segments`]).
    fn stamp(&self) -> String {
        let mut hash = sha2::Sha256::new();
        for (k, s) in self.map.read().iter() {
            hash.update((k.len() as u64).to_le_bytes());
            hash.update(k.as_bytes());
            hash.update(s.len.to_le_bytes());
            hash.update(s.seq.to_le_bytes());
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Retries `f` while it fails with `-ENOMEM` (SPDK's "no request object now"), with a
    /// growing pause, then gives up with the error.
    fn retry<T>(&self, mut f: impl FnMut() -> std::result::Result<T, BsError>) -> Result<T> {
        let mut pause = std::time::Duration::from_millis(1);
        for _ in 0..NOMEM_RETRIES {
            match f() {
                Err(e) if e.kind == BsErrorKind::NoMemory => {
                    log::debug!("spdk: {e}; trying again in {pause:?}");
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                other => return other.map_err(bs_error),
            }
        }
        f().map_err(bs_error)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    fn load(&self) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let ids = self.retry(|| self.bs.blob_ids())?;
        let mut found: BTreeMap<String, Slot> = BTreeMap::new();
        let mut doomed: Vec<BlobId> = Vec::new();
        let mut max_seq = 0u64;
        let mut records: Vec<(BlobId, u64)> = Vec::new();
        for id in ids {
            self.retry(|| self.bs.open_blob(id))?;
            let xattr = |name: &str| self.retry(|| self.bs.get_xattr(id, name));
            let name = xattr("name")?;
            let len = u64_xattr(xattr("length")?);
            let seq = u64_xattr(xattr(SEQ_XATTR)?).unwrap_or(0);
            max_seq = max_seq.max(seq);
            let (Some(name), Some(len)) = (name, len) else {
                log::warn!("spdk: blob {id:#x} has no name or length; left alone");
                rec.foreign += 1;
                self.retry(|| self.bs.close_blob(id))?;
                continue;
            };
            if xattr(DELETED_XATTR)?.is_some() {
                rec.deleted += 1;
                doomed.push(id);
                continue;
            }
            let key = match names::parse_name(&name) {
                Named::Key(k) => k,
                Named::Temp => {
                    rec.temporaries += 1;
                    doomed.push(id);
                    continue;
                }
                Named::Redo => {
                    match u64_xattr(xattr(redo::REDO_XATTR)?) {
                        Some(head) => records.push((id, head)),
                        None => {
                            rec.temporaries += 1;
                            doomed.push(id);
                        }
                    }
                    continue;
                }
                Named::Hashed(n) => {
                    let mut pieces = Vec::new();
                    while let Some(p) = xattr(&names::key_piece_xattr(pieces.len()))? {
                        pieces.push(p);
                    }
                    match names::key_of_hashed(&n, &pieces) {
                        Some(k) => k,
                        None => {
                            log::warn!("spdk: blob {id:#x} ({n}) has no matching key; left alone");
                            rec.foreign += 1;
                            self.retry(|| self.bs.close_blob(id))?;
                            continue;
                        }
                    }
                }
                Named::Foreign => {
                    log::warn!(
                        "spdk: blob {id:#x} is named {:?}, which is no dsfs key; left alone",
                        String::from_utf8_lossy(&name)
                    );
                    rec.foreign += 1;
                    self.retry(|| self.bs.close_blob(id))?;
                    continue;
                }
            };
            let clusters = self.retry(|| self.bs.num_clusters(id))?;
            if len > clusters * self.cluster {
                return Err(corrupt(format!(
                    "spdk: blob {id:#x} ({key}) says {len} bytes but has {clusters} clusters"
                )));
            }
            let slot = Slot {
                blob: id,
                len,
                seq,
                ver: 0,
            };
            match found.get(key.as_str()) {
                Some(old) if old.seq >= seq => {
                    rec.superseded += 1;
                    doomed.push(id);
                }
                Some(old) => {
                    rec.superseded += 1;
                    doomed.push(old.blob);
                    found.insert(key.into_string(), slot);
                }
                None => {
                    found.insert(key.into_string(), slot);
                }
            }
        }
        for (id, head) in records {
            match self.replay(id, head, &mut found) {
                Ok(replayed) => {
                    rec.replayed += usize::from(replayed);
                    rec.temporaries += usize::from(!replayed);
                    doomed.push(id);
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    log::error!("{e}; the record is left alone");
                    rec.foreign += 1;
                    self.retry(|| self.bs.close_blob(id))?;
                }
                Err(e) => return Err(e),
            }
        }
        for id in doomed {
            self.retry(|| self.bs.close_blob(id))?;
            self.retry(|| self.bs.delete_blob(id))?;
        }
        if rec != Recovery::default() {
            log::info!("spdk: recovered at open: {rec:?}");
        }
        self.seq.store(max_seq + 1, Ordering::Release);
        *self.map.write() = found;
        Ok(rec)
    }

    fn slot(&self, key: &Key) -> Option<Slot> {
        self.map.read().get(key.as_str()).copied()
    }

    /// Reads `buf.len()` bytes at byte `offset` of a blob (within its clusters).
    fn read_blob(&self, blob: BlobId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let unit = self.io_unit;
        let mut done = 0usize;
        let mut scratch = Vec::new();
        while done < buf.len() {
            let at = offset + done as u64;
            let first = at / unit;
            let skip = (at - first * unit) as usize;
            let want = (buf.len() - done).min(IO_PIECE);
            let units = (skip + want).div_ceil(unit as usize);
            scratch.resize(units * unit as usize, 0);
            self.retry(|| self.bs.read(blob, first, &mut scratch))?;
            buf[done..done + want].copy_from_slice(&scratch[skip..skip + want]);
            done += want;
        }
        Ok(())
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // The blob may be replaced (and its id reused) under the read: read, then check the
        // key still names the same blob, else read again.
        let mut changes = 0;
        while changes < 16 {
            let slot = self.slot(key).ok_or_else(Error::not_found)?;
            if slot.ver % 2 == 1 {
                // An in-place commit is writing the blob: wait for it.
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
            changes += 1;
            if offset >= slot.len {
                return Ok(0);
            }
            let n = buf.len().min((slot.len - offset) as usize);
            match self.read_blob(slot.blob, offset, &mut buf[..n]) {
                Ok(()) if self.slot(key) == Some(slot) => return Ok(n),
                Ok(()) => continue,
                Err(e) if self.slot(key) != Some(slot) => {
                    log::debug!("spdk: {key} changed under a read ({e}); reading again");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("spdk: {key} kept changing under a read"),
        ))
    }

    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        loop {
            let slot = self.slot(key).ok_or_else(Error::not_found)?;
            let len = usize::try_from(slot.len)
                .map_err(|_| Error::new(ErrorKind::InvalidArgument, "value too large"))?;
            let mut buf = vec![0u8; len];
            let n = self.read_at(key, 0, &mut buf)?;
            if n == len && self.slot(key).map(|s| s.len) == Some(slot.len) {
                return Ok(buf);
            }
        }
    }

    /// Deletes a blob this store no longer refers to. A failure leaves a superseded or
    /// temporary blob, which the next open removes. A blob an overlay still reads is renamed
    /// temporary instead (so the next open removes it after a crash) and deleted with its
    /// last reader.
    fn discard(&self, blob: BlobId) {
        if self.pins.orphan_if_pinned(blob) {
            let seq = self.seq.fetch_add(1, Ordering::AcqRel);
            let temp = names::name_xattr(&format!("{}{seq}", names::TEMP));
            let r = self
                .retry(|| self.bs.set_xattr(blob, "name", &temp))
                .and_then(|()| self.retry(|| self.bs.sync_md(blob)));
            if let Err(e) = r {
                log::warn!("spdk: could not rename blob {blob:#x} temporary ({e})");
            }
            return;
        }
        self.delete_blob_now(blob);
    }

    /// Closes and deletes a blob (see [`Inner::discard`]).
    fn delete_blob_now(&self, blob: BlobId) {
        let r = self
            .retry(|| self.bs.close_blob(blob))
            .and_then(|()| self.retry(|| self.bs.delete_blob(blob)));
        if let Err(e) = r {
            log::warn!("spdk: could not delete blob {blob:#x} ({e}); the next open removes it");
        }
    }

    /// Writes a new value of `len` bytes (its bytes from `fill(offset, buf)`) into a new blob
    /// and makes it `key`'s value (see "Atomic replace" in the module documentation).
    fn write_value(
        &self,
        key: &Key,
        len: u64,
        durable: bool,
        fill: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.check_open()?;
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let temp = names::name_xattr(&format!("{}{seq}", names::TEMP));
        let seq_bytes = seq.to_ne_bytes();
        let zero = 0u64.to_ne_bytes();
        let blob = self.retry(|| {
            self.bs
                .create_blob(&[("name", &temp), ("length", &zero), (SEQ_XATTR, &seq_bytes)])
        })?;
        let written = (|| -> Result<()> {
            self.retry(|| self.bs.open_blob(blob))?;
            self.retry(|| self.bs.resize(blob, len.div_ceil(self.cluster)))?;
            let mut buf = Vec::new();
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(IO_PIECE as u64) as usize;
                buf.clear();
                buf.resize(n.div_ceil(self.io_unit as usize) * self.io_unit as usize, 0);
                fill(at, &mut buf[..n])?;
                self.retry(|| self.bs.write(blob, at / self.io_unit, &buf))?;
                at += n as u64;
            }
            if durable {
                self.retry(|| self.bs.flush())?;
            }
            let (name, pieces) = names::name_of(key);
            let name = names::name_xattr(&name);
            for (n, piece) in pieces.iter().enumerate() {
                self.retry(|| self.bs.set_xattr(blob, &names::key_piece_xattr(n), piece))?;
            }
            let len_bytes = len.to_ne_bytes();
            self.retry(|| self.bs.set_xattr(blob, "length", &len_bytes))?;
            self.retry(|| self.bs.set_xattr(blob, "name", &name))?;
            // The commit point.
            self.retry(|| self.bs.sync_md(blob))?;
            if durable {
                self.retry(|| self.bs.flush())?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            // Closing a blob syncs its metadata: put the temporary name back first, so that
            // if the delete fails too, the next open finds a temporary, not a new value that
            // this call reported as failed.
            if let Err(e) = self.retry(|| self.bs.set_xattr(blob, "name", &temp)) {
                log::warn!("spdk: blob {blob:#x}: {e}");
            }
            self.discard(blob);
            return Err(e);
        }
        let new = Slot {
            blob,
            len,
            seq,
            ver: 0,
        };
        let old = {
            let mut map = self.map.write();
            match map.get(key.as_str()).copied() {
                // A put that started later committed first: this value is already replaced.
                Some(cur) if cur.seq > seq => Some(new),
                cur => {
                    map.insert(key.as_str().to_owned(), new);
                    cur
                }
            }
        };
        if let Some(old) = old {
            self.discard(old.blob);
        }
        Ok(())
    }

    /// Names blob `blob` `key` with sequence number `seq` (it was named `was`) and syncs its
    /// metadata.
    fn label(&self, blob: BlobId, key: &Key, was: &Key, seq: u64) -> Result<()> {
        let (name, pieces) = names::name_of(key);
        let name = names::name_xattr(&name);
        for n in pieces.len()..names::name_of(was).1.len() {
            self.retry(|| self.bs.remove_xattr(blob, &names::key_piece_xattr(n)))?;
        }
        for (n, piece) in pieces.iter().enumerate() {
            self.retry(|| self.bs.set_xattr(blob, &names::key_piece_xattr(n), piece))?;
        }
        let seq_bytes = seq.to_ne_bytes();
        self.retry(|| self.bs.set_xattr(blob, SEQ_XATTR, &seq_bytes))?;
        self.retry(|| self.bs.set_xattr(blob, "name", &name))?;
        self.retry(|| self.bs.sync_md(blob))
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check_open()?;
        loop {
            let Some(slot) = self.slot(key) else {
                return Ok(());
            };
            // Not while an in-place commit or a rename works on the blob.
            let _busy = self.pins.busy(slot.blob);
            let old = {
                let mut map = self.map.write();
                match map.get(key.as_str()) {
                    Some(s) if s.blob == slot.blob => map.remove(key.as_str()),
                    _ => continue,
                }
            };
            if let Some(old) = old {
                if self.pins.orphan_if_pinned(old.blob) {
                    self.discard(old.blob);
                } else {
                    self.retry(|| self.bs.close_blob(old.blob))?;
                    self.retry(|| self.bs.delete_blob(old.blob))?;
                }
            }
            return Ok(());
        }
    }

    /// Renames the blob: a new name (and sequence number, so it wins over the blob it
    /// replaces) in one metadata sync, then the replaced blob is deleted. No value bytes move.
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.check_open()?;
        let mut slot = self.slot(from).ok_or_else(Error::not_found)?;
        if from == to {
            return Ok(());
        }
        // Not while an in-place commit works on the blob (it keeps the key's slot).
        let _busy = self.pins.busy(slot.blob);
        match self.slot(from) {
            Some(now) if now.blob == slot.blob => slot = now,
            _ => return Err(Error::not_found()),
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.label(slot.blob, to, from, seq) {
            // The blob's metadata is synced again when it is closed: give it back its name.
            if let Err(e2) = self.label(slot.blob, from, to, slot.seq) {
                log::warn!("spdk: blob {:#x}: restoring its name: {e2}", slot.blob);
            }
            return Err(e);
        }
        let replaced = {
            let mut map = self.map.write();
            if map.get(from.as_str()) == Some(&slot) {
                map.remove(from.as_str());
            }
            map.insert(to.as_str().to_owned(), Slot { seq, ..slot })
        };
        if let Some(old) = replaced
            && old.blob != slot.blob
        {
            self.discard(old.blob);
        }
        Ok(())
    }
}

impl Datastore for SpdkStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn has(&self, key: &Key) -> Result<bool> {
        Ok(self.inner.slot(key).is_some())
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        self.inner
            .slot(key)
            .map(|s| s.len)
            .ok_or_else(Error::not_found)
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_at(key, offset, buf)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.inner
            .write_value(key, value.len() as u64, false, &|at, buf| {
                let at = at as usize;
                buf.copy_from_slice(&value[at..at + buf.len()]);
                Ok(())
            })
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key)
    }

    fn query(&self, q: Query) -> Result<Results> {
        let bounds = query::prefix_range(q.prefix_key().as_ref());
        let snapshot: Vec<(String, u64)> = {
            let map = self.inner.map.read();
            match &bounds {
                Some((lo, hi)) => map
                    .range::<str, _>((Bound::Included(lo.as_str()), Bound::Excluded(hi.as_str())))
                    .map(|(k, s)| (k.clone(), s.len))
                    .collect(),
                None => map.iter().map(|(k, s)| (k.clone(), s.len)).collect(),
            }
        };
        let keys_only = q.keys_only;
        let inner = self.inner.clone();
        let entries: EntryIter = Box::new(snapshot.into_iter().filter_map(move |(k, len)| {
            let key = match Key::from_raw(k) {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            if keys_only {
                return Some(Ok(Entry::key_only(key, Some(len))));
            }
            match inner.get(&key) {
                Ok(v) => Some(Ok(Entry::with_value(key, v))),
                // Deleted since the snapshot: no longer part of the results.
                Err(e) if e.is_not_found() => None,
                Err(e) => Some(Err(e)),
            }
        }));
        let it = query::naive_apply(&q, entries, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        self.inner.check_open()?;
        self.inner.retry(|| self.inner.bs.flush())
    }

    fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.retry(|| self.inner.bs.unload())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: true,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: false,
            durable_put: false,
            persistent: true,
            general_keys: true,
            file_backed: false,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: None,
        }
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.inner.rename(from, to)
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        let bs = &self.inner.bs;
        Ok(Some(
            (bs.total_clusters() - bs.free_clusters()) * bs.cluster_size(),
        ))
    }

    fn space(&self) -> Result<Option<Space>> {
        let bs = &self.inner.bs;
        let free = bs.free_clusters() * bs.cluster_size();
        Ok(Some(Space {
            total: bs.total_clusters() * bs.cluster_size(),
            free,
            available: free,
        }))
    }

    /// For `CopyCurrent` of an existing value: an overlay over its blob, read in place (see
    /// `redo.rs`); otherwise an unlinked staging file.
    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        self.inner.check_open()?;
        if init == StageInit::CopyCurrent
            && let Some(staged) = self.inner.stage_overlay(key)?
        {
            return Ok(staged);
        }
        Staged::anonymous(&self.inner.staging_dir)
    }

    /// An overlay over this store's blob that changed a small part of a big value is
    /// committed in place behind a redo record (see `redo.rs`); anything else is written
    /// whole into a new blob.
    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        self.inner.check_open()?;
        if let Some(plan) = staged.overlay_plan()?
            && staged.path().is_none()
            && self.inner.commit_in_place(key, &staged, &plan, durable)?
        {
            return Ok(());
        }
        let len = staged.len()?;
        self.inner.write_value(key, len, durable, &|at, buf| {
            let n = staged.read_at(at, buf)?;
            // A staged file shorter than its length a moment ago (truncated under us) reads
            // as zeros, like a hole.
            buf[n..].fill(0);
            Ok(())
        })
    }

    fn staging_dir(&self) -> PathBuf {
        self.inner.staging_dir.clone()
    }
    /// One segment, the whole blobstore, whose stamp digests every value's key, length and
    /// `dsfs_seq` as read at open: files BlobFS (or another program) created, changed or
    /// deleted while dsfs was away change it, so the index finds them at the next open. Nothing
    /// else can change the blobstore while this process has it loaded, so the stamp is
    /// computed once at open, and a revalidation while mounted costs one comparison instead of
    /// a digest of every value and a reconcile after each of dsfs's own writes.
    fn segments(&self) -> Result<Option<Vec<Segment>>> {
        Ok(Some(vec![Segment {
            name: SEGMENT.to_owned(),
            stamp: self.stamp.clone(),
            settled: true,
        }]))
    }

    fn segment_of(&self, _key: &Key) -> Option<String> {
        Some(SEGMENT.to_owned())
    }

    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        if segment != SEGMENT {
            return Ok(Vec::new());
        }
        let map = self.inner.map.read();
        map.iter()
            .map(|(k, s)| Ok((Key::from_raw(k.clone())?, s.len)))
            .collect()
    }
}

impl Drop for SpdkStore {
    fn drop(&mut self) {
        if !self.inner.closed.load(Ordering::Acquire)
            && let Err(e) = self.close()
        {
            log::warn!("spdk: closing the blobstore: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
