//! `MotrStore`: values in a CORTX Motr DIX index (small) and Motr objects (large).
//!
//! Every Motr call goes through the narrow [`MotrOps`] trait: the real client through a C shim
//! (`sys.rs`, feature `motr`, compiled only when a Motr tree is found) or the in-process Motr of
//! [`fake`], which follows the client API's documented semantics so the store's logic is tested
//! in every test run.
//!
//! **Native layout.** One index record per datastore key; the record key is the datastore key's
//! bytes, so the index's bytewise order is key order and a prefix query is a `NEXT` scan from
//! `P/` that stops at the first key outside it. The record value is
//!
//! | first byte | rest |
//! |---|---|
//! | `0` | the value itself (values up to `inline_max` bytes) |
//! | `1` | size (u64 LE), generation (u64 LE), object id hi and lo (u64 LE each) |
//!
//! A large value lives in one object (extents of the block size, written in pieces of at most
//! [`ops::MAX_IO`]; Motr objects have no size, so the record keeps it). The object id is the
//! FNV-1/128 of the key for generation 0, and of the key followed by the 8-byte big-endian
//! generation for later ones: replacing a large value writes a new object (generation + 1),
//! then switches the record (one `PUT` with `OVERWRITE`, the commit point), then deletes the
//! old object. A crash leaves the old value or the new one, and at worst an unreferenced
//! object. Delete removes the record first, then the object.
//!
//! **go-ds-motr compatibility** (`compat=go-ds-motr`): records exactly as go-ds-motr writes
//! them: the record key is the key's bytes followed by the 16-byte FNV-1/128 digest of the
//! empty input (go-ds-motr calls Go's `hash.Sum(key)` on a fresh hasher, which appends that
//! digest to its argument instead of hashing it), the record value is the whole value. Such
//! records are listed by the same `NEXT` scan (suffix stripped); because of the suffix their
//! order is not key order, so queries sort.
//!
//! **Durability.** `PUT`s are acknowledged when the service applied them; `sync` issues a
//! `SYNC_WAIT` `PUT` of a marker record (`\0dsfs-sync`, outside every datastore key's range),
//! which returns when that transaction, and so every earlier one, is persistent. With the
//! `durable` option every record `PUT`/`DEL` carries `SYNC_WAIT` itself.

pub mod config;
pub mod fake;
mod follow;
mod inplace;
pub mod ops;
#[cfg(feature = "motr")]
pub mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::datastore::query::{self, EntryIter};
use crate::datastore::{
    Capabilities, Datastore, Entry, Error, ErrorKind, Key, Query, Result, Results, Staged,
};

pub use ops::{Id128, MotrOps, Rc};

/// The FNV-1/128 offset basis: also the digest of the empty input.
const FNV128_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
/// The FNV-1/128 prime (2^88 + 0x13b).
const FNV128_PRIME: u128 = 0x0000000001000000000000000000013B;

/// FNV-1 (multiply, then xor) over `data`, 128 bits, continuing from `state`.
fn fnv1_128_from(mut state: u128, data: &[u8]) -> u128 {
    for &b in data {
        state = state.wrapping_mul(FNV128_PRIME);
        state ^= u128::from(b);
    }
    state
}

/// The FNV-1/128 hash of `data` (big-endian as Go's `Sum` writes it: `to_be_bytes`).
pub fn fnv1_128(data: &[u8]) -> u128 {
    fnv1_128_from(FNV128_OFFSET, data)
}

/// The 16 bytes go-ds-motr appends to every key: the FNV-1/128 digest of the empty input.
pub const GO_DS_MOTR_SUFFIX: [u8; 16] = FNV128_OFFSET.to_be_bytes();

/// The index key of the marker record `sync` writes with `SYNC_WAIT`. It sorts before `/`, so
/// no datastore key and no prefix scan meets it.
const SYNC_MARKER: &[u8] = b"\0dsfs-sync";

/// Records fetched per `NEXT` operation.
const PAGE: usize = 256;

/// Default largest value kept inline in its record.
pub const DEFAULT_INLINE_MAX: usize = 8 * 1024;

/// Write locks per store, picked by key hash: puts of one key in one process are serialized
/// (they compute the next object generation from the current record).
const STRIPES: usize = 64;

/// How records are laid out in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// dsfs's own records (inline values or object pointers).
    Native,
    /// go-ds-motr's records: key ++ the empty FNV-1/128 digest, the whole value.
    GoDsMotr,
}

/// How to lay out values in one Motr index.
#[derive(Clone, Debug)]
pub struct MotrOptions {
    /// The index fid (type `x`).
    pub index: Id128,
    /// The record layout.
    pub layout: Layout,
    /// Values up to this size stay in their record (native layout).
    pub inline_max: usize,
    /// Every record `PUT`/`DEL` waits for persistence (`SYNC_WAIT`).
    pub durable: bool,
    /// Where the filesystem stages writes before a commit.
    pub staging_dir: PathBuf,
}

impl MotrOptions {
    /// Native layout in `index`, the defaults otherwise.
    pub fn new(index: Id128) -> MotrOptions {
        MotrOptions {
            index,
            layout: Layout::Native,
            inline_max: DEFAULT_INLINE_MAX,
            durable: false,
            staging_dir: std::env::temp_dir(),
        }
    }
}

/// Parses an index fid: `<0x7800000000000001:0x1>`, `0x7800000000000001:1` (hex halves, the
/// `0x` and the brackets optional). The top byte must be `x` (a DIX index), and container 0 is
/// Motr's own (distributed meta-indices).
pub fn parse_index_fid(text: &str) -> Result<Id128> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("motr: bad index fid {text:?}: {why} (e.g. 0x7800000000000001:0x1)"),
        )
    };
    let t = text.trim();
    let t = t.strip_prefix('<').unwrap_or(t);
    let t = t.strip_suffix('>').unwrap_or(t);
    let (hi, lo) = t.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let hex = |s: &str| {
        let s = s.trim();
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        u64::from_str_radix(s, 16).map_err(|_| bad("not two hexadecimal numbers"))
    };
    let id = Id128 {
        hi: hex(hi)?,
        lo: hex(lo)?,
    };
    if (id.hi >> 56) as u8 != ops::DIX_FID_TYPE {
        return Err(bad("the top byte of the container must be 0x78 ('x')"));
    }
    if id.hi & 0x00ff_ffff_ffff_ffff == 0 {
        return Err(bad("container 0 is reserved for Motr's meta-indices"));
    }
    Ok(id)
}

/// What a native record says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    Inline(Vec<u8>),
    Object {
        size: u64,
        generation: u64,
        id: Id128,
        /// Bumped by every commit in place ([`inplace`]); 0 in records written before.
        seq: u64,
    },
}

impl Rec {
    fn encode(&self) -> Vec<u8> {
        match self {
            Rec::Inline(v) => {
                let mut out = Vec::with_capacity(v.len() + 1);
                out.push(0);
                out.extend_from_slice(v);
                out
            }
            Rec::Object {
                size,
                generation,
                id,
                seq,
            } => {
                let mut out = Vec::with_capacity(41);
                out.push(1);
                for n in [*size, *generation, id.hi, id.lo, *seq] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Rec> {
        match bytes.split_first() {
            Some((0, v)) => Ok(Rec::Inline(v.to_vec())),
            Some((1, rest)) if rest.len() == 32 || rest.len() == 40 => {
                let n = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(b)
                };
                Ok(Rec::Object {
                    size: n(0),
                    generation: n(1),
                    id: Id128 { hi: n(2), lo: n(3) },
                    seq: if rest.len() == 40 { n(4) } else { 0 },
                })
            }
            _ => Err(corrupt("motr: an index record of unknown format")),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Rec::Inline(v) => v.len() as u64,
            Rec::Object { size, .. } => *size,
        }
    }
}

/// The object id of `key`'s value at generation `generation` (see the module documentation). Ids
/// Motr reserves (up to `M0_ID_APP`) get their top bit set.
pub fn object_id(key: &[u8], generation: u64) -> Id128 {
    let mut h = fnv1_128(key);
    if generation > 0 {
        h = fnv1_128_from(h, &generation.to_be_bytes());
    }
    let id = Id128::from_u128(h);
    if id <= ops::ID_APP {
        Id128::from_u128(h | (1 << 127))
    } else {
        id
    }
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

/// Maps a Motr return code to an error kind, with `what` as context.
pub fn motr_error(what: impl std::fmt::Display, rc: Rc) -> Error {
    let kind = match rc.errno() {
        libc::ENOENT => ErrorKind::NotFound,
        libc::ETIMEDOUT => ErrorKind::TimedOut,
        libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
        libc::EROFS => ErrorKind::ReadOnly,
        libc::ESHUTDOWN => ErrorKind::Closed,
        libc::ENOTCONN
        | libc::ECONNREFUSED
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::ECANCELED => ErrorKind::Unavailable,
        libc::EINVAL | libc::E2BIG => ErrorKind::InvalidArgument,
        libc::EEXIST => ErrorKind::AlreadyExists,
        _ => ErrorKind::Io,
    };
    Error::with_source(
        kind,
        what.to_string(),
        std::io::Error::from_raw_os_error(rc.errno()),
    )
}

/// A datastore in one Motr index. See the module documentation.
pub struct MotrStore {
    inner: Arc<Inner>,
}

/// The write side of one stripe's reader lock.
type StripeWrite<'a> = parking_lot::RwLockWriteGuard<'a, ()>;

struct Inner {
    motr: Arc<dyn MotrOps>,
    options: MotrOptions,
    /// Per-key-hash locks, two per stripe. Writers of a key (put, delete, a staged commit, an
    /// in-place apply) take `writers` for their whole run, so they follow each other. Readers
    /// of its value take the read side of `stripes`, and a writer takes its write side only
    /// while it switches or removes the record, removes an object or patches one in place:
    /// a reader in this process never reads an object that a writer here is replacing,
    /// removing or patching, yet a put writing a new object (seconds for a large value on a
    /// real cluster) does not hold readers of the old value up. Order: `writers` first.
    writers: Vec<parking_lot::Mutex<()>>,
    stripes: Vec<parking_lot::RwLock<()>>,
    closed: AtomicBool,
}

impl MotrStore {
    /// Opens the store in `options.index`, creating the index if it does not exist.
    pub fn open(motr: Arc<dyn MotrOps>, options: MotrOptions) -> Result<MotrStore> {
        if options.inline_max > ops::MAX_RECORD_VALUE {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "motr: inline={} is larger than the largest record value ({} bytes)",
                    options.inline_max,
                    ops::MAX_RECORD_VALUE
                ),
            ));
        }
        // A look first: creating an index that exists fails (`-EEXIST`) and makes a real
        // Motr log an error on the console.
        // The same look finds the redo records of interrupted commits (see `inplace`).
        let (exists, redo) =
            match ops::next_records(&*motr, options.index, inplace::REDO_PREFIX, PAGE, 0) {
                Ok(page) => (true, page),
                Err(Rc::NOT_FOUND) => (false, Vec::new()),
                Err(rc) => {
                    return Err(motr_error(
                        format!("motr: opening index {}", options.index),
                        rc,
                    ));
                }
            };
        let created = if exists {
            Ok(())
        } else {
            motr.idx_create(options.index)
        };
        match created {
            Ok(()) | Err(Rc::EXISTS) => {}
            Err(rc) => {
                return Err(motr_error(
                    format!("motr: creating index {}", options.index),
                    rc,
                ));
            }
        }
        let inner = Arc::new(Inner {
            motr,
            options,
            writers: (0..STRIPES).map(|_| parking_lot::Mutex::new(())).collect(),
            stripes: (0..STRIPES).map(|_| parking_lot::RwLock::new(())).collect(),
            closed: AtomicBool::new(false),
        });
        inner.replay(redo)?;
        inner.add_members_if_missing()?;
        Ok(MotrStore { inner })
    }

    /// The record layout in use.
    pub fn layout(&self) -> Layout {
        self.inner.options.layout
    }
}

impl Inner {
    fn idx(&self) -> Id128 {
        self.options.index
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    fn write_flags(&self) -> u32 {
        if self.options.durable {
            ops::SYNC_WAIT
        } else {
            0
        }
    }

    /// The index key of `key`.
    fn record_key(&self, key: &Key) -> Vec<u8> {
        match self.options.layout {
            Layout::Native => key.as_bytes().to_vec(),
            Layout::GoDsMotr => {
                let mut k = key.as_bytes().to_vec();
                k.extend_from_slice(&GO_DS_MOTR_SUFFIX);
                k
            }
        }
    }

    /// The datastore key of an index key, `None` for records that are not values (the sync
    /// marker, another layout's records).
    fn key_of(&self, rk: &[u8]) -> Option<Vec<u8>> {
        match self.options.layout {
            Layout::Native => Some(rk.to_vec()),
            Layout::GoDsMotr => rk.strip_suffix(&GO_DS_MOTR_SUFFIX).map(<[u8]>::to_vec),
        }
    }

    /// The stripe of `key`.
    fn stripe_of(key: &Key) -> usize {
        (fnv1_128(key.as_bytes()) % STRIPES as u128) as usize
    }

    /// Makes the other writers of `key`'s stripe in this process wait (readers go on).
    fn writer(&self, key: &Key) -> parking_lot::MutexGuard<'_, ()> {
        self.writers[Self::stripe_of(key)].lock()
    }

    /// Both sides of `key`'s stripe: no other writer and no reader of it in this process.
    /// For a writer that already holds [`writer`](Self::writer), only the second part.
    fn stripe(&self, key: &Key) -> (parking_lot::MutexGuard<'_, ()>, StripeWrite<'_>) {
        let w = self.writer(key);
        (w, self.readers_out(key))
    }

    /// The write side of `key`'s stripe (readers wait); taken after [`writer`](Self::writer).
    fn readers_out(&self, key: &Key) -> StripeWrite<'_> {
        self.stripes[Self::stripe_of(key)].write()
    }

    /// The read side of `key`'s stripe. Never taken while holding a stripe.
    fn stripe_read(&self, key: &Key) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.stripes[Self::stripe_of(key)].read()
    }

    /// The raw record value of `key`, if any.
    fn raw(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let rk = self.record_key(key);
        let got = self
            .motr
            .idx_get(self.idx(), &[&rk])
            .map_err(|rc| motr_error(format!("motr: looking up {key}"), rc))?;
        match got.into_iter().next() {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(rc)) if rc == Rc::NOT_FOUND.0 => Ok(None),
            Some(Err(rc)) => Err(motr_error(format!("motr: looking up {key}"), Rc(rc))),
            None => Err(corrupt("motr: GET returned no record")),
        }
    }

    fn record(&self, key: &Key) -> Result<Option<Rec>> {
        match self.raw(key)? {
            None => Ok(None),
            Some(v) => match self.options.layout {
                Layout::Native => Ok(Some(Rec::decode(&v)?)),
                Layout::GoDsMotr => Ok(Some(Rec::Inline(v))),
            },
        }
    }

    fn set_record(&self, key: &Key, value: &[u8]) -> Result<()> {
        let rk = self.record_key(key);
        if self.stamped() {
            // The value, its segment member and a new segment stamp in one operation.
            let member = follow::member_key(&rk);
            let (sk, stamp) = follow::new_stamp(&rk);
            return self
                .put_all(
                    &[(&rk, value), (&member, b""), (&sk, &stamp)],
                    self.write_flags(),
                )
                .map_err(|e| e.context(format!("motr: recording {key}")));
        }
        let rcs = self
            .motr
            .idx_put(
                self.idx(),
                &[(&rk, value)],
                ops::OVERWRITE | self.write_flags(),
            )
            .map_err(|rc| motr_error(format!("motr: recording {key}"), rc))?;
        match rcs.first() {
            Some(0) => Ok(()),
            Some(&rc) => Err(motr_error(format!("motr: recording {key}"), Rc(rc))),
            None => Err(corrupt("motr: PUT returned no record code")),
        }
    }

    fn del_record(&self, key: &Key) -> Result<()> {
        let rk = self.record_key(key);
        let member = follow::member_key(&rk);
        let keys: &[&[u8]] = if self.stamped() {
            &[&rk, &member]
        } else {
            &[&rk]
        };
        let rcs = self
            .motr
            .idx_del(self.idx(), keys, self.write_flags())
            .map_err(|rc| motr_error(format!("motr: deleting {key}"), rc))?;
        if rcs.len() != keys.len() {
            return Err(corrupt("motr: DEL returned the wrong number of codes"));
        }
        if let Some(&rc) = rcs.iter().find(|&&rc| rc != 0 && rc != Rc::NOT_FOUND.0) {
            return Err(motr_error(format!("motr: deleting {key}"), Rc(rc)));
        }
        if self.stamped() {
            // After the delete, so a follower that sees the stamp sees the delete.
            let (sk, stamp) = follow::new_stamp(&rk);
            self.put_all(&[(&sk, &stamp)], self.write_flags())?;
        }
        Ok(())
    }

    /// Best effort: a left-over object is unreferenced and harmless.
    fn remove_object(&self, id: Id128) {
        match self.motr.obj_delete(id) {
            Ok(()) | Err(Rc::NOT_FOUND) => {}
            Err(rc) => log::warn!("motr: could not delete object {id}: {rc}"),
        }
    }

    /// Creates a fresh object for `key` after generation `after` (the first free generation:
    /// an object left by a crashed write is skipped, never reused).
    fn new_object(&self, key: &Key, after: Option<u64>) -> Result<(u64, Id128)> {
        let mut generation = after.map_or(0, |g| g.wrapping_add(1));
        for _ in 0..16 {
            let id = object_id(key.as_bytes(), generation);
            match self.motr.obj_create(id) {
                Ok(()) => return Ok((generation, id)),
                Err(Rc::EXISTS) => generation = generation.wrapping_add(1),
                Err(rc) => {
                    return Err(motr_error(
                        format!("motr: creating object {id} for {key}"),
                        rc,
                    ));
                }
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("motr: 16 object generations of {key} are taken"),
        ))
    }

    /// Writes `size` bytes produced by `fill(offset, buf)` into object `id`, in block-multiple
    /// pieces of at most `MAX_IO` (the last one padded with zeros).
    fn write_object(
        &self,
        id: Id128,
        size: u64,
        fill: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let bs = self.motr.block_size().max(1);
        let piece = (ops::MAX_IO / bs).max(1) * bs;
        let mut buf = vec![0u8; piece];
        let mut off = 0u64;
        while off < size {
            let len = ((size - off).min(piece as u64)) as usize;
            fill(off, &mut buf[..len])?;
            let padded = len.div_ceil(bs) * bs;
            buf[len..padded].fill(0);
            self.motr
                .obj_write(id, off, &buf[..padded])
                .map_err(|rc| motr_error(format!("motr: writing object {id}"), rc))?;
            off += len as u64;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` of object `id` (within its recorded size).
    fn read_object(&self, id: Id128, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.motr.block_size().max(1) as u64;
        let end = offset + buf.len() as u64;
        let mut pos = offset / bs * bs;
        let mut tmp = Vec::new();
        while pos < end {
            let len = (end.div_ceil(bs) * bs - pos).min(ops::MAX_IO as u64 / bs * bs);
            tmp.resize(len as usize, 0);
            self.motr.obj_read(id, pos, &mut tmp).map_err(|rc| {
                if rc == Rc::NOT_FOUND {
                    corrupt(format!("motr: object {id} of a record is missing"))
                } else {
                    motr_error(format!("motr: reading object {id}"), rc)
                }
            })?;
            let from = offset.max(pos);
            let to = end.min(pos + len);
            let dst = (from - offset) as usize..(to - offset) as usize;
            let src = (from - pos) as usize..(to - pos) as usize;
            buf[dst].copy_from_slice(&tmp[src]);
            pos += len;
        }
        Ok(())
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.retrying(key, |rec| match rec {
            Rec::Inline(v) => Ok(crate::datastore::copy_range(v, offset, buf)),
            Rec::Object { size, id, .. } => {
                if offset >= *size {
                    return Ok(0);
                }
                let n = ((*size - offset).min(buf.len() as u64)) as usize;
                self.read_object(*id, offset, &mut buf[..n])?;
                Ok(n)
            }
        })
    }

    /// Runs `read` on `key`'s record under the read side of its stripe, so no writer in this
    /// process replaces, removes or patches the object meanwhile; and again on a fresh record
    /// when the read failed and the record changed meanwhile (another host's replace or delete
    /// removed the object it named: the in-process Motr says `-ENOENT`, a real one may say
    /// `-EIO`, as every device of the object fails), so readers see whole values.
    fn retrying<T>(&self, key: &Key, mut read: impl FnMut(&Rec) -> Result<T>) -> Result<T> {
        let _r = self.stripe_read(key);
        let mut rec = self.record(key)?.ok_or_else(Error::not_found)?;
        let mut tries = 0;
        loop {
            let e = match read(&rec) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            tries += 1;
            let now = self.record(key)?.ok_or_else(Error::not_found)?;
            if now == rec || tries >= 5 {
                return Err(e);
            }
            rec = now;
        }
    }

    fn value_of(&self, rec: Rec) -> Result<Vec<u8>> {
        match rec {
            Rec::Inline(v) => Ok(v),
            Rec::Object { size, id, .. } => {
                let len = usize::try_from(size).map_err(|_| {
                    Error::new(ErrorKind::InvalidArgument, "value too large for memory")
                })?;
                let mut buf = vec![0u8; len];
                self.read_object(id, 0, &mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Stores a value of `size` bytes produced by `fill`.
    fn store(
        &self,
        key: &Key,
        size: u64,
        fill: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.check_open()?;
        if self.options.layout == Layout::GoDsMotr && size > ops::MAX_RECORD_VALUE as u64 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "motr: {key}: a {size}-byte value does not fit the go-ds-motr layout, which \
                     keeps each value in one index record (at most {} bytes)",
                    ops::MAX_RECORD_VALUE
                ),
            ));
        }
        let inline =
            self.options.layout == Layout::GoDsMotr || size <= self.options.inline_max as u64;
        // Only other writers wait while the new value is written: readers go on reading the old
        // one until the record switches.
        let _writer = self.writer(key);
        let old = self.record(key)?;
        let new = if inline {
            let mut v = vec![0u8; size as usize];
            fill(0, &mut v)?;
            match self.options.layout {
                Layout::GoDsMotr => {
                    let _w = self.readers_out(key);
                    return self.set_record(key, &v);
                }
                Layout::Native => Rec::Inline(v),
            }
        } else {
            let after = match &old {
                Some(Rec::Object { generation, .. }) => Some(*generation),
                _ => None,
            };
            let (generation, id) = self.new_object(key, after)?;
            if let Err(e) = self.write_object(id, size, fill) {
                self.remove_object(id);
                return Err(e);
            }
            Rec::Object {
                size,
                generation,
                id,
                seq: 0,
            }
        };
        let _w = self.readers_out(key);
        if let Err(e) = self.set_record(key, &new.encode()) {
            if let Rec::Object { id, .. } = new {
                self.remove_object(id);
            }
            return Err(e);
        }
        if let Some(Rec::Object { id, .. }) = old {
            self.remove_object(id);
        }
        Ok(())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check_open()?;
        let _w = self.stripe(key);
        let Some(old) = self.record(key)? else {
            return Ok(());
        };
        self.del_record(key)?;
        if let Rec::Object { id, .. } = old {
            self.remove_object(id);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.check_open()?;
        let rcs = self
            .motr
            .idx_put(
                self.idx(),
                &[(SYNC_MARKER, b"")],
                ops::OVERWRITE | ops::SYNC_WAIT,
            )
            .map_err(|rc| motr_error("motr: sync", rc))?;
        match rcs.first() {
            Some(0) => Ok(()),
            Some(&rc) => Err(motr_error("motr: sync", Rc(rc))),
            None => Err(corrupt("motr: PUT returned no record code")),
        }
    }
}

impl Datastore for MotrStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.inner
            .retrying(key, |rec| self.inner.value_of(rec.clone()))
    }

    fn has(&self, key: &Key) -> Result<bool> {
        Ok(self.inner.raw(key)?.is_some())
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        self.inner
            .record(key)?
            .map(|r| r.size())
            .ok_or_else(Error::not_found)
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read_at(key, offset, buf)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.inner.store(key, value.len() as u64, &|off, buf| {
            let start = off as usize;
            buf.copy_from_slice(&value[start..start + buf.len()]);
            Ok(())
        })
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key)
    }

    fn query(&self, q: Query) -> Result<Results> {
        let start = match query::prefix_range(q.prefix_key().as_ref()) {
            Some((lo, _)) => lo.into_bytes(),
            None => b"/".to_vec(),
        };
        let mut scan = Scan {
            inner: self.inner.clone(),
            prefix: start.clone(),
            next_start: start,
            exclude: false,
            buf: std::collections::VecDeque::new(),
            done: false,
            keys_only: q.keys_only,
        };
        // The first page now, so that an unreachable service fails the query itself.
        scan.fill()?;
        let sorted = self.inner.options.layout == Layout::Native;
        let it = query::naive_apply(&q, Box::new(scan) as EntryIter, sorted);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        self.inner.sync()
    }

    fn close(&self) -> Result<()> {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.motr.shutdown();
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        let native = self.inner.options.layout == Layout::Native;
        Capabilities {
            ordered_scan: native,
            ranged_read: native,
            atomic_put: true,
            atomic_batch: false,
            durable_put: self.inner.options.durable,
            persistent: true,
            general_keys: true,
            file_backed: false,
            atomic_rename: false,
            cheap_rename: false,
            // go-ds-motr's layout keeps every value in its record.
            max_value_size: (!native).then_some(ops::MAX_RECORD_VALUE as u64),
            max_key_len: None,
        }
    }

    /// A copy, then a delete (the trait's default, through a staged copy): an object is
    /// only ever named by its own key's record. Moving the record instead would let a later
    /// write of `from` reuse the object id `to` still points at, since Motr does not promise
    /// `-EEXIST` for object creation in the oostore mode dsfs uses.
    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        if from == to {
            return if self.has(from)? {
                Ok(())
            } else {
                Err(Error::not_found())
            };
        }
        if !self.has(from)? {
            return Err(Error::not_found());
        }
        let staged = self.stage(from, crate::datastore::StageInit::CopyCurrent)?;
        self.commit_staged(to, staged, false)?;
        self.delete(from)
    }

    /// A large value stages as an overlay over its object, committed in place when little
    /// changed (see `inplace.rs`).
    fn stage(&self, key: &Key, init: crate::datastore::StageInit) -> Result<Staged> {
        self.inner.check_open()?;
        if init == crate::datastore::StageInit::CopyCurrent
            && let Some(staged) = self.inner.stage_overlay(key)?
        {
            return Ok(staged);
        }
        let staged = Staged::anonymous(&self.inner.options.staging_dir)?;
        if init == crate::datastore::StageInit::CopyCurrent {
            match self.get(key) {
                Ok(value) => staged.write_all_at(0, &value)?,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(staged)
    }

    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        self.inner.check_open()?;
        if !self.inner.commit_in_place(key, &staged)? {
            let size = staged.len()?;
            self.inner.store(key, size, &|off, buf| {
                let n = staged.read_at(off, buf)?;
                buf[n..].fill(0);
                Ok(())
            })?;
        }
        if durable && !self.inner.options.durable {
            self.inner.sync()?;
        }
        Ok(())
    }

    fn staging_dir(&self) -> PathBuf {
        self.inner.options.staging_dir.clone()
    }

    fn identity(&self) -> Result<Option<String>> {
        let layout = match self.inner.options.layout {
            Layout::Native => "native",
            Layout::GoDsMotr => "go-ds-motr",
        };
        Ok(Some(format!("motr {layout} {}", self.inner.options.index)))
    }

    /// Other hosts (and go-ds-motr) may write the same index.
    fn shared(&self, _key: &Key) -> bool {
        true
    }

    /// Hash segments with stamps in reserved records (native layout; see `follow.rs`).
    fn segments(&self) -> Result<Option<Vec<crate::datastore::Segment>>> {
        if !self.inner.stamped() {
            return Ok(None);
        }
        self.inner.check_open()?;
        self.inner.segments().map(Some)
    }

    fn segment_of(&self, key: &Key) -> Option<String> {
        self.inner
            .stamped()
            .then(|| follow::segment_of(key.as_bytes()))
    }

    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        self.inner.check_open()?;
        self.inner.segment_keys(segment)
    }
}

/// A prefix scan by `NEXT` pages.
struct Scan {
    inner: Arc<Inner>,
    prefix: Vec<u8>,
    next_start: Vec<u8>,
    exclude: bool,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
    keys_only: bool,
}

impl Scan {
    fn fill(&mut self) -> Result<()> {
        if self.done || !self.buf.is_empty() {
            return Ok(());
        }
        let flags = if self.exclude {
            ops::EXCLUDE_START_KEY
        } else {
            0
        };
        let page = ops::next_records(
            &*self.inner.motr,
            self.inner.idx(),
            &self.next_start,
            PAGE,
            flags,
        )
        .map_err(|rc| motr_error("motr: scanning the index", rc))?;
        if page.len() < PAGE {
            self.done = true;
        }
        if let Some((last, _)) = page.last() {
            self.next_start = last.clone();
            self.exclude = true;
        }
        for (k, v) in page {
            if !k.starts_with(&self.prefix) {
                self.done = true;
                break;
            }
            self.buf.push_back((k, v));
        }
        Ok(())
    }

    fn entry(&self, rk: &[u8], v: Vec<u8>) -> Result<Option<Entry>> {
        let Some(raw) = self.inner.key_of(rk) else {
            return Ok(None);
        };
        let text = String::from_utf8(raw).map_err(|_| corrupt("motr: a non-UTF-8 key"))?;
        let key = Key::from_raw(text)?;
        let rec = match self.inner.options.layout {
            Layout::Native => Rec::decode(&v)?,
            Layout::GoDsMotr => Rec::Inline(v),
        };
        if self.keys_only {
            return Ok(Some(Entry::key_only(key, Some(rec.size()))));
        }
        match self.inner.value_of(rec) {
            Ok(value) => Ok(Some(Entry::with_value(key, value))),
            // Replaced or deleted since the page was read: read the key's current value.
            Err(_) => match self
                .inner
                .retrying(&key, |rec| self.inner.value_of(rec.clone()))
            {
                Ok(value) => Ok(Some(Entry::with_value(key, value))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Err(e) = self.fill() {
                self.done = true;
                self.buf.clear();
                return Some(Err(e));
            }
            let (k, v) = self.buf.pop_front()?;
            match self.entry(&k, v) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
