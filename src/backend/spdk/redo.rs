//! Random writes into big values, committed in place behind a redo record.
//!
//! **Why not snapshots and clones.** The blobstore's copy-on-write (`spdk_bs_create_snapshot`,
//! `spdk_bs_create_clone`) would stage a random write cheaply, but BlobFS 25.05 cannot load a
//! blobstore that holds such blobs: `spdk_fs_load` fails the whole load (its `iter_cb`
//! returns the error) on any blob without a `name` or a `length` xattr, which a snapshot made
//! by `spdk_bs_create_snapshot` does not get unless given, and a named snapshot shows up in
//! BlobFS as a second file of the same name. Clones are thin and read through their parent,
//! which BlobFS never expects either. A redo record needs no blobstore call beyond the ones
//! every value already uses, keeps every blob an ordinary BlobFS file, and writes only the
//! changed io units (twice: record and place).
//!
//! **The staged side.** `stage(key, CopyCurrent)` of an existing value is an overlay
//! ([`Staged::overlay_on`]) whose base is the value's blob, read in place ([`BlobBase`]):
//! nothing is copied up front. The base pins its blob: a put, delete or rename that would
//! delete it while it is pinned renames it to a temporary name instead (so a crash still
//! removes it) and deletes it when the last overlay over it goes.
//!
//! **The commit** (when the io units to write are less than half the value and the value is
//! at least [`IN_PLACE_MIN`]):
//! 1. a record blob named `/.dsfs-redo/<seq>` is created (BlobFS sees an empty file), sized
//!    and written: a header (magic, target blob and its `dsfs_seq`, new length, the io-unit
//!    ranges, a sha2-256 of the header and the data) and then the ranges' new bytes;
//! 2. the bdev is flushed, then the record's `dsfs_redo` xattr (the header's length) is set
//!    and its metadata synced: **the commit point**;
//! 3. the target is resized if it grows, the ranges are written into it in place, its
//!    `length` set, it shrinks if it does, and its metadata is synced; the bdev is flushed;
//! 4. the record is deleted.
//!
//! A crash before 2 leaves a record without `dsfs_redo`: removed at open, the old value
//! stands. A crash after 2 leaves a committed record: [`SpdkStore::open`] replays it (step 3
//! is idempotent) if its target still exists with the same `dsfs_seq`, and deletes it. While
//! step 3 runs the key's slot carries a version that is odd, and reads wait for it and check
//! it did not change under them, so a reader never sees a commit half-applied, with one
//! exception: if step 3 itself fails (an I/O error after the commit point), the commit
//! reports the error and reads of that value in this session may see part of the new bytes
//! until the next open replays the record.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};
use sha2::Digest;

use crate::datastore::stage::OverlayPlan;
use crate::datastore::{Error, Key, OverlaySource, Result, Staged};

use super::names;
use super::ops::BlobId;
use super::{Inner, SEQ_XATTR, Slot, corrupt};

/// The xattr that marks a redo record committed (its value: the header's length, a `u64`).
pub(super) const REDO_XATTR: &str = "dsfs_redo";
/// Values smaller than this are always rewritten whole.
pub const IN_PLACE_MIN: u64 = 256 << 10;
const MAGIC: &[u8; 8] = b"DSFSREDO";
const FIXED: usize = 8 + 4 + 4 + 8 + 8 + 8;
const DIGEST: usize = 32;

/// Blobs that overlays read from, and blobs busy with an in-place commit or a rename.
#[derive(Default)]
pub(super) struct Pins {
    state: Mutex<PinState>,
    cv: Condvar,
}

#[derive(Default)]
struct PinState {
    /// Blob -> number of overlays reading it.
    readers: HashMap<BlobId, usize>,
    /// Pinned blobs nothing refers to any more: deleted when the last reader goes.
    orphans: HashSet<BlobId>,
    /// Blobs an in-place commit, rename or delete is working on.
    busy: HashSet<BlobId>,
}

/// Holds a blob busy until dropped.
pub(super) struct Busy<'a> {
    pins: &'a Pins,
    blob: BlobId,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.pins.state.lock().busy.remove(&self.blob);
        self.pins.cv.notify_all();
    }
}

impl Pins {
    /// Waits until no one else works on `blob`, then holds it.
    pub(super) fn busy(&self, blob: BlobId) -> Busy<'_> {
        let mut st = self.state.lock();
        while st.busy.contains(&blob) {
            self.cv.wait(&mut st);
        }
        st.busy.insert(blob);
        Busy { pins: self, blob }
    }

    /// Whether an overlay reads `blob`; if so it becomes an orphan, deleted with its last
    /// reader.
    pub(super) fn orphan_if_pinned(&self, blob: BlobId) -> bool {
        let mut st = self.state.lock();
        if st.readers.contains_key(&blob) {
            st.orphans.insert(blob);
            true
        } else {
            false
        }
    }

    fn pin(&self, blob: BlobId) {
        *self.state.lock().readers.entry(blob).or_insert(0) += 1;
    }

    /// Drops one reader; `true` if it was the last one of an orphan.
    fn unpin(&self, blob: BlobId) -> bool {
        let mut st = self.state.lock();
        let last = match st.readers.get_mut(&blob) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                st.readers.remove(&blob);
                true
            }
            None => false,
        };
        last && st.orphans.remove(&blob)
    }
}

/// An overlay's base: a value's blob as it was staged, read in place.
pub(super) struct BlobBase {
    inner: Weak<Inner>,
    slot: Slot,
}

impl std::fmt::Debug for BlobBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobBase({:#x}, seq {})", self.slot.blob, self.slot.seq)
    }
}

impl OverlaySource for BlobBase {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inner = self.inner.upgrade().ok_or_else(Error::closed)?;
        if offset >= self.slot.len {
            return Ok(0);
        }
        let n = buf.len().min((self.slot.len - offset) as usize);
        inner.read_blob(self.slot.blob, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn id(&self) -> (u64, u64) {
        (self.slot.blob, self.slot.seq)
    }
}

impl Drop for BlobBase {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade()
            && inner.pins.unpin(self.slot.blob)
        {
            inner.delete_blob_now(self.slot.blob);
        }
    }
}

/// A decoded redo header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    target: BlobId,
    target_seq: u64,
    len: u64,
    /// `(byte offset, byte length)` in the target, io-unit aligned; the data follows the
    /// header in this order.
    ranges: Vec<(u64, u64)>,
}

impl Header {
    fn size(n: usize) -> usize {
        FIXED + 16 * n + DIGEST
    }

    /// The header's bytes without the digest.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Header::size(self.ranges.len()));
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.target.to_le_bytes());
        v.extend_from_slice(&self.target_seq.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        for (s, l) in &self.ranges {
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Header> {
        let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
        if b.get(..8)? != MAGIC || u32_at(8)? != 1 {
            return None;
        }
        let n = u32_at(12)? as usize;
        let mut ranges = Vec::with_capacity(n.min(1 << 16));
        for i in 0..n {
            ranges.push((u64_at(FIXED + 16 * i)?, u64_at(FIXED + 16 * i + 8)?));
        }
        Some(Header {
            target: u64_at(16)?,
            target_seq: u64_at(24)?,
            len: u64_at(32)?,
            ranges,
        })
    }
}

/// The io-unit aligned ranges an in-place commit of `plan` writes: every dirty range and
/// everything from the kept length to the new length (zeros or new bytes), clipped to the
/// new length rounded up to the io unit, merged.
fn aligned_ranges(plan: &OverlayPlan, unit: u64) -> Vec<(u64, u64)> {
    let top = plan.len.div_ceil(unit) * unit;
    let mut raw: Vec<(u64, u64)> = plan.dirty.clone();
    if plan.keep < plan.len {
        raw.push((plan.keep, plan.len));
    }
    raw.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in raw {
        let s = s / unit * unit;
        let e = (e.div_ceil(unit) * unit).min(top);
        if s >= e {
            continue;
        }
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

impl Inner {
    /// The staged value for `CopyCurrent` of an existing value: an overlay over its blob.
    pub(super) fn stage_overlay(self: &Arc<Self>, key: &Key) -> Result<Option<Staged>> {
        // Pin under the map's lock, so the blob cannot be discarded between lookup and pin.
        let slot = {
            let map = self.map.read();
            let Some(slot) = map.get(key.as_str()).copied() else {
                return Ok(None);
            };
            self.pins.pin(slot.blob);
            slot
        };
        let base = Arc::new(BlobBase {
            inner: Arc::downgrade(self),
            slot: Slot { ver: 0, ..slot },
        });
        Staged::overlay_on(&self.staging_dir, base, slot.len).map(Some)
    }

    /// Commits an overlay in place if that is cheaper and its base is still the key's value;
    /// `Ok(false)` if the caller must write the value whole.
    pub(super) fn commit_in_place(
        &self,
        key: &Key,
        staged: &Staged,
        plan: &OverlayPlan,
        durable: bool,
    ) -> Result<bool> {
        let (blob, seq) = plan.base_id;
        let unit = self.io_unit;
        let ranges = aligned_ranges(plan, unit);
        let bytes: u64 = ranges.iter().map(|r| r.1).sum();
        if plan.len.max(plan.keep) < IN_PLACE_MIN || bytes * 2 > plan.len {
            return Ok(false);
        }
        let _busy = self.pins.busy(blob);
        let still_ours = |map: &std::collections::BTreeMap<String, Slot>| {
            map.get(key.as_str())
                .is_some_and(|s| s.blob == blob && s.seq == seq)
        };
        if !still_ours(&self.map.read()) {
            return Ok(false);
        }
        // Grow the target first: running out of space fails here, before the commit point.
        // (Clusters added in memory are freed by a reload if nothing syncs them.)
        let need = plan.len.div_ceil(self.cluster);
        if need > self.retry(|| self.bs.num_clusters(blob))? {
            self.retry(|| self.bs.resize(blob, need))?;
        }
        let header = Header {
            target: blob,
            target_seq: seq,
            len: plan.len,
            ranges,
        };
        let (rec, head_bytes) = self.write_record(staged, &header)?;
        // Committed: from here on a failure leaves the record for the next open to replay.
        // Mark the value changing (readers wait for an even version) while it is applied.
        let old_len = {
            let mut map = self.map.write();
            match map.get_mut(key.as_str()) {
                Some(s) if s.blob == blob && s.seq == seq => {
                    s.ver += 1;
                    Some(s.len)
                }
                _ => None,
            }
        };
        let Some(old_len) = old_len else {
            // Replaced while the record was written (a put took the key): the put wins.
            self.uncommit(rec);
            return Ok(true);
        };
        let result = self.apply(rec, &header, head_bytes, old_len);
        {
            let mut map = self.map.write();
            if let Some(s) = map.get_mut(key.as_str())
                && s.blob == blob
            {
                s.ver += 1;
                if result.is_ok() {
                    s.len = plan.len;
                }
            }
        }
        result?;
        if durable {
            self.retry(|| self.bs.flush())?;
        }
        self.delete_blob_now(rec);
        Ok(true)
    }

    /// Takes a committed record back (its target was replaced before it was applied).
    fn uncommit(&self, rec: BlobId) {
        let r = self
            .retry(|| self.bs.remove_xattr(rec, REDO_XATTR))
            .and_then(|()| self.retry(|| self.bs.sync_md(rec)));
        if let Err(e) = r {
            log::warn!("spdk: redo record {rec:#x}: {e}; the next open drops it");
        }
        self.delete_blob_now(rec);
    }

    /// Steps 1 and 2: the record, written and committed. Returns it (open) and its header's
    /// size in bytes.
    fn write_record(&self, staged: &Staged, header: &Header) -> Result<(BlobId, u64)> {
        let unit = self.io_unit as usize;
        let mut head = header.encode();
        let head_bytes = Header::size(header.ranges.len()).div_ceil(unit) * unit;
        let data_bytes: u64 = header.ranges.iter().map(|r| r.1).sum();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let name = names::name_xattr(&format!("{}{seq}", names::REDO));
        let zero = 0u64.to_ne_bytes();
        let seq_bytes = seq.to_ne_bytes();
        let rec = self.retry(|| {
            self.bs
                .create_blob(&[("name", &name), ("length", &zero), (SEQ_XATTR, &seq_bytes)])
        })?;
        let written = (|| -> Result<()> {
            self.retry(|| self.bs.open_blob(rec))?;
            let total = head_bytes as u64 + data_bytes;
            self.retry(|| self.bs.resize(rec, total.div_ceil(self.cluster)))?;
            // The data first (hashing it), then the header with the digest.
            let mut hash = sha2::Sha256::new();
            hash.update(&head);
            let mut buf = Vec::new();
            for (to, at, n) in pieces(&header.ranges, head_bytes as u64) {
                buf.clear();
                buf.resize(n, 0);
                let got = staged.read_at(to, &mut buf)?;
                buf[got..].fill(0);
                hash.update(&buf);
                self.retry(|| self.bs.write(rec, at / unit as u64, &buf))?;
            }
            head.extend_from_slice(&hash.finalize());
            head.resize(head_bytes, 0);
            self.retry(|| self.bs.write(rec, 0, &head))?;
            self.retry(|| self.bs.flush())?;
            let mark = (head_bytes as u64).to_ne_bytes();
            self.retry(|| self.bs.set_xattr(rec, REDO_XATTR, &mark))?;
            // The commit point.
            self.retry(|| self.bs.sync_md(rec))
        })();
        if let Err(e) = written {
            if let Err(e) = self.retry(|| self.bs.remove_xattr(rec, REDO_XATTR)) {
                log::warn!("spdk: redo record {rec:#x}: {e}");
            }
            self.delete_blob_now(rec);
            return Err(e);
        }
        Ok((rec, head_bytes as u64))
    }

    /// Step 3: copies the record's ranges into the target (open), sets its length and syncs
    /// it, then flushes the bdev.
    fn apply(&self, rec: BlobId, h: &Header, head_bytes: u64, old_len: u64) -> Result<()> {
        let unit = self.io_unit;
        let need = h.len.div_ceil(self.cluster);
        if need > self.retry(|| self.bs.num_clusters(h.target))? {
            self.retry(|| self.bs.resize(h.target, need))?;
        }
        let mut buf = Vec::new();
        for (to, at, n) in pieces(&h.ranges, head_bytes) {
            buf.clear();
            buf.resize(n, 0);
            self.retry(|| self.bs.read(rec, at / unit, &mut buf))?;
            self.retry(|| self.bs.write(h.target, to / unit, &buf))?;
        }
        let len_bytes = h.len.to_ne_bytes();
        self.retry(|| self.bs.set_xattr(h.target, "length", &len_bytes))?;
        if need < self.retry(|| self.bs.num_clusters(h.target))? {
            self.retry(|| self.bs.resize(h.target, need))?;
        }
        self.retry(|| self.bs.sync_md(h.target))?;
        self.retry(|| self.bs.flush())?;
        log::debug!(
            "spdk: blob {:#x}: {} ranges written in place ({old_len} -> {} bytes)",
            h.target,
            h.ranges.len(),
            h.len
        );
        Ok(())
    }

    /// At open: the committed record `rec` (open, `head_bytes` of header): replays it onto its
    /// target if `found` says the target still holds the value it was made for. `Ok(true)` if
    /// it was replayed. The caller deletes the record.
    pub(super) fn replay(
        &self,
        rec: BlobId,
        head_bytes: u64,
        found: &mut std::collections::BTreeMap<String, Slot>,
    ) -> Result<bool> {
        let unit = self.io_unit;
        if head_bytes == 0 || !head_bytes.is_multiple_of(unit) || head_bytes > 1 << 30 {
            return Err(corrupt(format!(
                "spdk: redo record {rec:#x} has a bad header size {head_bytes}"
            )));
        }
        let mut head = vec![0u8; head_bytes as usize];
        self.retry(|| self.bs.read(rec, 0, &mut head))?;
        let h = Header::decode(&head)
            .ok_or_else(|| corrupt(format!("spdk: redo record {rec:#x}: bad header")))?;
        let body = Header::size(h.ranges.len()) - DIGEST;
        let mut hash = sha2::Sha256::new();
        hash.update(&head[..body]);
        let mut buf = Vec::new();
        for (_, at, n) in pieces(&h.ranges, head_bytes) {
            buf.clear();
            buf.resize(n, 0);
            self.retry(|| self.bs.read(rec, at / unit, &mut buf))?;
            hash.update(&buf);
        }
        if hash.finalize().as_slice() != &head[body..body + DIGEST] {
            return Err(corrupt(format!(
                "spdk: redo record {rec:#x}: its bytes do not match its digest"
            )));
        }
        let Some(slot) = found
            .values_mut()
            .find(|s| s.blob == h.target && s.seq == h.target_seq)
        else {
            log::info!(
                "spdk: redo record {rec:#x}: blob {:#x} was replaced since; dropped",
                h.target
            );
            return Ok(false);
        };
        self.apply(rec, &h, head_bytes, slot.len)?;
        slot.len = h.len;
        Ok(true)
    }
}

/// The I/O pieces of a record's ranges, in record order: `(offset in the value, offset in the
/// record, length)`, at most [`super::IO_PIECE`] bytes each, the record's data starting at
/// `head_bytes`.
fn pieces(ranges: &[(u64, u64)], head_bytes: u64) -> impl Iterator<Item = (u64, u64, usize)> + '_ {
    let piece = super::IO_PIECE as u64;
    let mut at = head_bytes;
    ranges.iter().flat_map(move |&(s, l)| {
        let start = at;
        at += l;
        (0..l.div_ceil(piece)).map(move |i| {
            let done = i * piece;
            (s + done, start + done, (l - done).min(piece) as usize)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header {
            target: 7,
            target_seq: 9,
            len: 12345,
            ranges: vec![(0, 512), (4096, 1024)],
        };
        let b = h.encode();
        assert_eq!(b.len() + DIGEST, Header::size(2));
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(Header::decode(&b[..20]), None);
        assert_eq!(Header::decode(b"DSFSREDX"), None);
    }

    #[test]
    fn ranges_are_aligned_merged_and_cover_growth() {
        let plan = OverlayPlan {
            base_id: (1, 1),
            keep: 10_000,
            len: 12_000,
            dirty: vec![(100, 200), (600, 700), (1100, 1200), (5000, 5001)],
            clean_bytes: 0,
        };
        assert_eq!(
            aligned_ranges(&plan, 512),
            vec![(0, 1536), (4608, 512), (9728, 12288 - 9728)]
        );
        // Nothing written, nothing truncated: nothing to do.
        let same = OverlayPlan {
            keep: 8192,
            len: 8192,
            dirty: vec![],
            ..plan
        };
        assert!(aligned_ranges(&same, 4096).is_empty());
    }
}
