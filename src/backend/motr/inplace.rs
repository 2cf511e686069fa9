//! Commits of a few changed ranges of a large value into its object, in place, behind a redo
//! record.
//!
//! A write into an existing large value stages as an overlay over its object
//! ([`Staged::overlay_on`]): nothing is read up front, and the commit knows the dirty
//! ranges. When the blocks to write (the dirty ranges and everything from the old length on,
//! widened to whole blocks) are at most half of the value, the commit writes just those blocks
//! into the same object:
//!
//! 1. a *scratch object* gets a header (the block ranges) and the new bytes of those ranges;
//! 2. a redo record `\0dsfs-redo/<key>` (target object, scratch object, the value record's
//!    sequence number before and after, the new size) is `PUT` with `SYNC_WAIT`: the commit
//!    point, which also makes the scratch object's writes persistent;
//! 3. the blocks are written into the value's object;
//! 4. the value record gets the new size and sequence number;
//! 5. the redo record and the scratch object are removed.
//!
//! Opening the store replays every redo record left by a crash: when the value record still
//! names the target object with the old sequence number, the scratch object's blocks are
//! written into the target again (idempotent) and the record is updated; when it has the new
//! number, step 4 was done; anything else means the value was replaced since, and the redo
//! record is stale. A crash before step 2 is persistent leaves the old value (and an unnamed
//! scratch object), after it the new one. The redo records sort before `/`, outside every
//! datastore key, and are found at open by the same `NEXT` that checks the index exists.
//!
//! Readers on other hosts can see some blocks of a commit before others while step 3 runs (as
//! with flatfs's in-place commits); a reader of this process sees whole commits, since the
//! filesystem reads a file's staged value while it has one. A larger change writes a new
//! object as before.
//!
//! Why this scheme rather than copy-on-write blocks with an extent map in the record: reads
//! stay one object read with no map to consult, the record stays fixed-size, and nothing
//! needs compaction; the price is writing the changed blocks twice.

use std::sync::Arc;

use super::{Id128, Inner, Rec, corrupt, fnv1_128, fnv1_128_from, motr_error, ops};
use crate::datastore::stage::OverlaySource;
use crate::datastore::{Key, Result, Staged};

/// Index keys of redo records start with this (it sorts before `/`).
pub(super) const REDO_PREFIX: &[u8] = b"\0dsfs-redo/";

/// A commit in place happens when the blocks it writes are at most this fraction
/// (numerator, denominator) of the value, and it is cheaper than a whole rewrite by
/// [`in_place_pays`].
const IN_PLACE_MAX: (u64, u64) = (1, 2);

/// What one object write costs beyond its bytes, in bytes of sequential writing: on the
/// single-node Motr of the README (2+1 layout), a scattered 4 KiB write took 45-95 ms and
/// sequential writing ran at 2-6 MB/s.
const OP_COST: u64 = 256 << 10;

/// Whether writing `bytes` in `ops` object writes twice (scratch, then in place) beats
/// rewriting a value of `len` bytes whole (reading its clean bytes, writing all of it).
fn in_place_pays(bytes: u64, ops: u64, len: u64) -> bool {
    bytes * IN_PLACE_MAX.1 <= len * IN_PLACE_MAX.0
        && 2 * bytes + ops.saturating_mul(OP_COST) <= 2 * len
}

/// The object a large value's overlay reads its clean ranges from.
#[derive(Debug)]
pub(super) struct ObjectBase {
    inner: Arc<Inner>,
    key: Key,
    rec: Rec,
}

impl OverlaySource for ObjectBase {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let Rec::Object { size, id, .. } = &self.rec else {
            return Err(corrupt("motr: an object base without an object"));
        };
        if offset >= *size {
            return Ok(0);
        }
        let n = ((*size - offset).min(buf.len() as u64)) as usize;
        self.inner.read_object(*id, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn id(&self) -> (u64, u64) {
        match &self.rec {
            Rec::Object { id, .. } => (id.hi, id.lo),
            Rec::Inline(_) => (0, 0),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MotrStore({})", self.options.index)
    }
}

/// A redo record's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Redo {
    target: Id128,
    generation: u64,
    scratch: Id128,
    old_seq: u64,
    new_seq: u64,
    new_size: u64,
}

impl Redo {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        for n in [
            self.target.hi,
            self.target.lo,
            self.generation,
            self.scratch.hi,
            self.scratch.lo,
            self.old_seq,
            self.new_seq,
            self.new_size,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Redo> {
        let Some((1, rest)) = bytes.split_first() else {
            return Err(corrupt("motr: a redo record of unknown format"));
        };
        if rest.len() != 64 {
            return Err(corrupt("motr: a redo record of the wrong length"));
        }
        let n = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Redo {
            target: Id128 { hi: n(0), lo: n(1) },
            generation: n(2),
            scratch: Id128 { hi: n(3), lo: n(4) },
            old_seq: n(5),
            new_seq: n(6),
            new_size: n(7),
        })
    }
}

/// The scratch object of `key`'s commit number `seq` (apart from the value objects' ids).
fn scratch_id(key: &[u8], seq: u64) -> Id128 {
    let h = fnv1_128_from(fnv1_128(key), b"\0dsfs-redo");
    let id = Id128::from_u128(fnv1_128_from(h, &seq.to_be_bytes()));
    if id <= ops::ID_APP {
        Id128::from_u128(id.as_u128() | (1 << 127))
    } else {
        id
    }
}

fn redo_key(key: &[u8]) -> Vec<u8> {
    let mut k = REDO_PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

/// The scratch header: the number of ranges, then each range's start and end (u64 LE), padded
/// to whole blocks.
fn header(ranges: &[(u64, u64)], bs: usize) -> Vec<u8> {
    let mut h = (ranges.len() as u64).to_le_bytes().to_vec();
    for (s, e) in ranges {
        h.extend_from_slice(&s.to_le_bytes());
        h.extend_from_slice(&e.to_le_bytes());
    }
    h.resize(h.len().div_ceil(bs) * bs, 0);
    h
}

/// The block ranges a commit of `staged` writes: its dirty ranges and `[keep, len)` (bytes
/// past the old value's end must read as zeros, and the object may still hold older bytes
/// there), widened to whole blocks below the new length's last block, merged.
fn block_ranges(dirty: &[(u64, u64)], keep: u64, len: u64, bs: u64) -> Vec<(u64, u64)> {
    let top = len.div_ceil(bs) * bs;
    let mut all: Vec<(u64, u64)> = dirty
        .iter()
        .copied()
        .chain((keep < len).then_some((keep, len)))
        .map(|(s, e)| (s / bs * bs, (e.div_ceil(bs) * bs).min(top)))
        .filter(|(s, e)| s < e)
        .collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl Inner {
    /// For `CopyCurrent`: an overlay over `key`'s object when its value is one.
    pub(super) fn stage_overlay(self: &Arc<Self>, key: &Key) -> Result<Option<Staged>> {
        if self.options.layout != super::Layout::Native {
            return Ok(None);
        }
        let Some(rec @ Rec::Object { size, .. }) = self.record(key)? else {
            return Ok(None);
        };
        let base = ObjectBase {
            inner: self.clone(),
            key: key.clone(),
            rec,
        };
        Staged::overlay_on(&self.options.staging_dir, Arc::new(base), size).map(Some)
    }

    /// Commits `staged` into `key`'s object in place when it is an overlay over that object as
    /// it still is and the change is small enough. `Ok(false)`: not done, commit it whole.
    pub(super) fn commit_in_place(&self, key: &Key, staged: &Staged) -> Result<bool> {
        let (Some(base), Some(plan)) = (staged.overlay_source(), staged.overlay_plan()?) else {
            return Ok(false);
        };
        let Some(base) = base.as_any().and_then(|a| a.downcast_ref::<ObjectBase>()) else {
            return Ok(false);
        };
        if base.key != *key
            || !std::ptr::eq(Arc::as_ptr(&base.inner), self)
            || plan.len <= self.options.inline_max as u64
        {
            return Ok(false);
        }
        let bs = self.motr.block_size().max(1) as u64;
        let ranges = block_ranges(&plan.dirty, plan.keep, plan.len, bs);
        let bytes: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        let piece = (ops::MAX_IO as u64 / bs).max(1) * bs;
        let writes: u64 = ranges.iter().map(|(s, e)| (e - s).div_ceil(piece)).sum();
        if !in_place_pays(bytes, writes, plan.len) {
            return Ok(false);
        }
        let _w = self.stripe(key);
        let now = self.record(key)?;
        let (generation, id, seq) = match (&now, &base.rec) {
            (Some(now), base_rec) if now == base_rec => match now {
                Rec::Object {
                    generation,
                    id,
                    seq,
                    ..
                } => (*generation, *id, *seq),
                Rec::Inline(_) => return Ok(false),
            },
            // Replaced or changed since the overlay began: its clean ranges are gone.
            _ => return Ok(false),
        };
        let redo = Redo {
            target: id,
            generation,
            scratch: scratch_id(key.as_bytes(), seq.wrapping_add(1)),
            old_seq: seq,
            new_seq: seq.wrapping_add(1),
            new_size: plan.len,
        };
        // 1. The scratch object: header, then the ranges' new bytes back to back.
        match self.motr.obj_create(redo.scratch) {
            Ok(()) | Err(ops::Rc::EXISTS) => {}
            Err(rc) => {
                return Err(motr_error(
                    format!("motr: creating a redo object for {key}"),
                    rc,
                ));
            }
        }
        let staged_bytes = |s: u64, buf: &mut [u8]| -> Result<()> {
            let n = staged.read_at(s, buf)?;
            buf[n..].fill(0);
            Ok(())
        };
        let written = self
            .write_scratch(&redo, &ranges, &staged_bytes)
            .and_then(|()| {
                // 2. The commit point.
                self.put_raw(&redo_key(key.as_bytes()), &redo.encode(), ops::SYNC_WAIT)
            });
        if let Err(e) = written {
            self.remove_object(redo.scratch);
            return Err(e);
        }
        // 3.-5. From here on a failure leaves the redo record for the next open.
        self.apply(key, &redo, &ranges, &staged_bytes)?;
        Ok(true)
    }

    /// Writes the scratch object of `redo`: the header of `ranges`, then their bytes.
    fn write_scratch(
        &self,
        redo: &Redo,
        ranges: &[(u64, u64)],
        bytes: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let bs = self.motr.block_size().max(1);
        let piece = (ops::MAX_IO / bs).max(1) * bs;
        let head = header(ranges, bs);
        let write = |off: u64, data: &[u8]| {
            self.motr
                .obj_write(redo.scratch, off, data)
                .map_err(|rc| motr_error(format!("motr: writing redo object {}", redo.scratch), rc))
        };
        for (i, chunk) in head.chunks(piece).enumerate() {
            write((i * piece) as u64, chunk)?;
        }
        // The ranges' bytes, packed into pieces of up to `piece` bytes.
        let mut out = head.len() as u64;
        let mut buf = Vec::with_capacity(piece);
        for &(s, e) in ranges {
            let mut at = s;
            while at < e {
                let n = ((e - at) as usize).min(piece - buf.len());
                let from = buf.len();
                buf.resize(from + n, 0);
                bytes(at, &mut buf[from..])?;
                at += n as u64;
                if buf.len() == piece {
                    write(out, &buf)?;
                    out += buf.len() as u64;
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            write(out, &buf)?;
        }
        Ok(())
    }

    /// Steps 3 to 5: the blocks into the target, the value record, the clean-up.
    fn apply(
        &self,
        key: &Key,
        redo: &Redo,
        ranges: &[(u64, u64)],
        bytes: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let bs = self.motr.block_size().max(1);
        let piece = ((ops::MAX_IO / bs).max(1) * bs) as u64;
        let mut buf = Vec::new();
        for &(s, e) in ranges {
            let mut at = s;
            while at < e {
                let n = (e - at).min(piece);
                buf.resize(n as usize, 0);
                bytes(at, &mut buf)?;
                self.motr.obj_write(redo.target, at, &buf).map_err(|rc| {
                    motr_error(format!("motr: writing object {}", redo.target), rc)
                })?;
                at += n;
            }
        }
        let rec = Rec::Object {
            size: redo.new_size,
            generation: redo.generation,
            id: redo.target,
            seq: redo.new_seq,
        };
        self.set_record(key, &rec.encode())?;
        self.finish(key.as_bytes(), redo);
        Ok(())
    }

    /// Step 5, best effort: a left-over redo record is stale at the next open, a left-over
    /// scratch object is harmless.
    fn finish(&self, key: &[u8], redo: &Redo) {
        let rk = redo_key(key);
        match self.motr.idx_del(self.idx(), &[&rk], self.write_flags()) {
            Ok(_) => self.remove_object(redo.scratch),
            Err(rc) => log::warn!("motr: could not remove the redo record of a commit: {rc}"),
        }
    }

    fn put_raw(&self, rk: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let rcs = self
            .motr
            .idx_put(self.idx(), &[(rk, value)], ops::OVERWRITE | flags)
            .map_err(|rc| motr_error("motr: writing a redo record", rc))?;
        match rcs.first() {
            Some(0) => Ok(()),
            Some(&rc) => Err(motr_error("motr: writing a redo record", ops::Rc(rc))),
            None => Err(corrupt("motr: PUT returned no record code")),
        }
    }

    /// Replays the redo records crashed commits left (see the module documentation). `first`
    /// is the first `NEXT` page from [`REDO_PREFIX`].
    pub(super) fn replay(&self, first: Vec<ops::Record>) -> Result<()> {
        let mut page = first;
        loop {
            let full = page.len() >= super::PAGE;
            let mut last = None;
            for (rk, v) in page {
                let Some(key) = rk.strip_prefix(REDO_PREFIX) else {
                    return Ok(());
                };
                self.replay_one(key, &v)?;
                last = Some(rk);
            }
            match last {
                Some(rk) if full => {
                    page = ops::next_records(
                        &*self.motr,
                        self.idx(),
                        &rk,
                        super::PAGE,
                        ops::EXCLUDE_START_KEY,
                    )
                    .map_err(|rc| motr_error("motr: scanning redo records", rc))?;
                }
                _ => return Ok(()),
            }
        }
    }

    fn replay_one(&self, raw_key: &[u8], value: &[u8]) -> Result<()> {
        let text = String::from_utf8(raw_key.to_vec())
            .map_err(|_| corrupt("motr: a redo record of a non-UTF-8 key"))?;
        let key = Key::from_raw(text)?;
        let redo = Redo::decode(value)?;
        let current = match self.record(&key)? {
            Some(Rec::Object { id, seq, .. }) if id == redo.target => Some(seq),
            _ => None,
        };
        if current != Some(redo.old_seq) {
            // Done (the record has the new number) or stale (the value was replaced since).
            self.finish(key.as_bytes(), &redo);
            return Ok(());
        }
        log::info!("motr: completing an interrupted commit of {key}");
        match self.redo_again(&key, &redo) {
            Ok(()) => Ok(()),
            // Another host opening the same index may have completed it meanwhile (and
            // removed the scratch object).
            Err(e) => match self.record(&key)? {
                Some(Rec::Object { id, seq, .. }) if id == redo.target && seq == redo.old_seq => {
                    Err(e)
                }
                _ => Ok(()),
            },
        }
    }

    /// Writes a redo record's scratch blocks into its target again, then steps 4 and 5.
    fn redo_again(&self, key: &Key, redo: &Redo) -> Result<()> {
        let bs = self.motr.block_size().max(1);
        let mut first = vec![0u8; bs];
        self.read_object(redo.scratch, 0, &mut first)?;
        let mut n = [0u8; 8];
        n.copy_from_slice(&first[..8]);
        let count = u64::from_le_bytes(n);
        // Disjoint block ranges below the new size: at most one per block.
        if count > redo.new_size.div_ceil(bs as u64) {
            return Err(corrupt("motr: a redo object with a bad header"));
        }
        let head_len = (8 + 16 * count as usize).div_ceil(bs) * bs;
        let mut head = vec![0u8; head_len];
        self.read_object(redo.scratch, 0, &mut head)?;
        let u = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let ranges: Vec<(u64, u64)> = (0..count as usize)
            .map(|i| (u(8 + 16 * i), u(16 + 16 * i)))
            .collect();
        if ranges.iter().any(|&(s, e)| s >= e || s % bs as u64 != 0) {
            return Err(corrupt("motr: a redo object with a bad range"));
        }
        // Where each range's bytes start in the scratch object.
        let mut starts = Vec::with_capacity(ranges.len());
        let mut at = head_len as u64;
        for &(s, e) in &ranges {
            starts.push((s, e, at));
            at += e - s;
        }
        let bytes = |off: u64, buf: &mut [u8]| -> Result<()> {
            let i = starts.partition_point(|&(s, _, _)| s <= off);
            let Some(&(s, e, from)) = i.checked_sub(1).and_then(|i| starts.get(i)) else {
                return Err(corrupt("motr: a redo range out of place"));
            };
            if off + buf.len() as u64 > e {
                return Err(corrupt("motr: a redo range out of place"));
            }
            self.read_object(redo.scratch, from + (off - s), buf)
        };
        self.apply(key, redo, &ranges, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeMotr;
    use super::super::{MotrOptions, MotrStore};
    use super::*;
    use crate::datastore::{Datastore, StageInit};

    const IDX: Id128 = Id128 {
        hi: 0x7800_0000_0000_0001,
        lo: 0x20,
    };

    fn options() -> MotrOptions {
        MotrOptions {
            inline_max: 100,
            ..MotrOptions::new(IDX)
        }
    }

    fn value(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    fn object_of(s: &MotrStore, key: &Key) -> Rec {
        s.inner.record(key).unwrap().unwrap()
    }

    /// A few changed ranges, a truncation and a growth of a 1 MiB value: the value is right
    /// after each commit, stays in the same object, and far less than the value is written.
    #[test]
    fn small_changes_to_a_large_value_are_written_in_place() {
        let fake = Arc::new(FakeMotr::in_memory());
        let s = MotrStore::open(fake.clone(), options()).unwrap();
        let key = Key::new("/big");
        let mut model = value(1 << 20, 0);
        s.put(&key, &model).unwrap();
        let Rec::Object { id, .. } = object_of(&s, &key) else {
            panic!("not an object");
        };
        let before = fake.bytes_written();

        let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
        assert!(staged.is_overlay());
        for (off, len) in [(10u64, 5usize), (70_000, 9000), (1_048_000, 576)] {
            let data = value(len, 0x5a);
            staged.write_all_at(off, &data).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        s.commit_staged(&key, staged, true).unwrap();
        assert_eq!(s.get(&key).unwrap(), model);
        let written = fake.bytes_written() - before;
        assert!(
            written < 100_000,
            "{written} bytes written for ~15 KB changed"
        );
        assert!(matches!(object_of(&s, &key), Rec::Object { id: i, seq: 1, .. } if i == id));
        assert_eq!(fake.object_count(), 1, "the scratch object is removed");

        // Truncate, then grow past the old end: the bytes in between read as zeros although
        // the object still holds the old ones.
        let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
        staged.set_len(600_000).unwrap();
        staged.set_len(700_000).unwrap();
        staged.write_all_at(650_001, b"tail").unwrap();
        model.truncate(600_000);
        model.resize(700_000, 0);
        model[650_001..650_005].copy_from_slice(b"tail");
        s.commit_staged(&key, staged, false).unwrap();
        assert_eq!(s.get(&key).unwrap(), model);
        assert!(matches!(object_of(&s, &key), Rec::Object { id: i, seq: 2, .. } if i == id));

        // A large change writes a new object.
        let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
        let data = value(500_000, 7);
        staged.write_all_at(0, &data).unwrap();
        model[..500_000].copy_from_slice(&data);
        s.commit_staged(&key, staged, false).unwrap();
        assert_eq!(s.get(&key).unwrap(), model);
        assert!(matches!(object_of(&s, &key), Rec::Object { id: i, .. } if i != id));
        assert_eq!(fake.object_count(), 1);
    }

    /// An overlay whose value was replaced meanwhile is committed whole, from what it read
    /// before, never into the new object.
    #[test]
    fn an_overlay_over_a_replaced_value_is_not_committed_in_place() {
        let fake = Arc::new(FakeMotr::in_memory());
        let s = MotrStore::open(fake.clone(), options()).unwrap();
        let key = Key::new("/v");
        s.put(&key, &value(2_000_000, 1)).unwrap();
        let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
        let mut model = staged.read_all().unwrap();
        staged.write_all_at(5, b"x").unwrap();
        model[5] = b'x';
        let other = s.stage(&key, StageInit::CopyCurrent).unwrap();
        other.write_all_at(0, b"other").unwrap();
        s.commit_staged(&key, other, false).unwrap();
        // `staged`'s base changed under it (its sequence number moved on).
        s.commit_staged(&key, staged, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = s.get(&key).unwrap();
        assert_eq!(got.len(), model.len());
        assert_eq!(
            &got[..5],
            b"other",
            "the clean ranges come from the live object"
        );
        assert_eq!(got[5], b'x');
    }

    /// A crash after every number of operations of an in-place commit, with everything done
    /// until the crash persistent or only what `SYNC_WAIT` made so: after the next open (which
    /// replays the redo record) the value is the old one or the new one, the new one once the
    /// redo record was persistent, and no redo record is left.
    #[test]
    fn a_crash_in_each_window_of_an_in_place_commit_leaves_old_or_new() {
        let key = Key::new("/file");
        let old = value(2_000_000, 3);
        let mut new = old.clone();
        new[4000..4100].fill(0xee);
        new[200_000..200_001].fill(0xdd);
        new.truncate(1_900_000);
        new.resize(1_950_000, 0);
        for all_persistent in [false, true] {
            let mut saw = (false, false);
            for n in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("motr.fake");
                {
                    let fake = Arc::new(FakeMotr::open(&path).unwrap());
                    let s = MotrStore::open(fake.clone(), options()).unwrap();
                    s.put(&key, &old).unwrap();
                    s.sync(&Key::root()).unwrap();
                    let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
                    staged.write_all_at(4000, &new[4000..4100]).unwrap();
                    staged
                        .write_all_at(200_000, &new[200_000..200_001])
                        .unwrap();
                    staged.set_len(1_900_000).unwrap();
                    staged.set_len(1_950_000).unwrap();
                    fake.crash_after(n, all_persistent);
                    let done = s.commit_staged(&key, staged, false);
                    if !fake.crashed() {
                        fake.crash_after(u32::MAX, false);
                        done.unwrap();
                        assert_eq!(s.get(&key).unwrap(), new);
                        assert!(n > 5, "the commit took only {n} operations");
                        break;
                    }
                    assert!(done.is_err() || n > 0);
                }
                let fake = Arc::new(FakeMotr::open(&path).unwrap());
                let s = MotrStore::open(fake.clone(), options()).unwrap();
                let got = s.get(&key).unwrap();
                let redo_left = fake
                    .records(IDX)
                    .iter()
                    .any(|(k, _)| k.starts_with(REDO_PREFIX));
                assert!(!redo_left, "n={n}: a redo record is left after the open");
                if got == old {
                    saw.0 = true;
                } else if got == new {
                    saw.1 = true;
                } else {
                    panic!("n={n} all_persistent={all_persistent}: neither old nor new");
                }
                // Every object but the value's is garbage a crash before the commit point
                // left: at most the scratch object.
                assert!(fake.object_count() <= 2);
            }
            assert!(saw.0 && saw.1, "all_persistent={all_persistent}: {saw:?}");
        }
    }

    #[test]
    fn block_ranges_widen_merge_and_cover_the_new_tail() {
        assert_eq!(block_ranges(&[(5, 10)], 100, 100, 4), vec![(4, 12)]);
        assert_eq!(
            block_ranges(&[(0, 3), (6, 9), (20, 21)], 30, 30, 4),
            vec![(0, 12), (20, 24)]
        );
        // Grown from 10 to 30: [10, 30) is written (zeros where nothing was).
        assert_eq!(block_ranges(&[], 10, 30, 4), vec![(8, 32)]);
        // Never past the new length's last block.
        assert_eq!(block_ranges(&[(9, 10)], 10, 10, 8), vec![(8, 16)]);
    }

    /// Many scattered blocks cost more in place (one object write each) than a rewrite.
    #[test]
    fn many_scattered_blocks_are_not_written_in_place() {
        assert!(in_place_pays(3 * 4096, 3, 1 << 20));
        assert!(!in_place_pays(1000 * 4096, 1000, 64 << 20));
        assert!(!in_place_pays(600 << 10, 1, 1 << 20));
        let fake = Arc::new(FakeMotr::in_memory());
        let s = MotrStore::open(fake.clone(), options()).unwrap();
        let key = Key::new("/big");
        let mut model = value(4 << 20, 0);
        s.put(&key, &model).unwrap();
        let Rec::Object { id, .. } = object_of(&s, &key) else {
            panic!("not an object");
        };
        let staged = s.stage(&key, StageInit::CopyCurrent).unwrap();
        for i in 0..200u64 {
            let off = (i * 5 * 4096) as usize;
            staged.write_all_at(off as u64, b"scattered").unwrap();
            model[off..off + 9].copy_from_slice(b"scattered");
        }
        s.commit_staged(&key, staged, false).unwrap();
        assert_eq!(s.get(&key).unwrap(), model);
        assert!(matches!(object_of(&s, &key), Rec::Object { id: i, .. } if i != id));
    }

    #[test]
    fn redo_records_round_trip() {
        let r = Redo {
            target: Id128 { hi: 1, lo: 2 },
            generation: 3,
            scratch: Id128 { hi: 4, lo: 5 },
            old_seq: 6,
            new_seq: 7,
            new_size: 8,
        };
        assert_eq!(Redo::decode(&r.encode()).unwrap(), r);
        assert!(Redo::decode(&[2, 0]).is_err());
    }
}
