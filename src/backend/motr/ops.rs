//! The narrow set of Motr client operations [`MotrStore`](super::MotrStore) needs, as a trait.
//!
//! Two implementations: the real client through a C shim (`sys.rs`, feature `motr`) and an
//! in-process Motr ([`super::fake::FakeMotr`]) that follows the client API's documented
//! semantics, so the store's logic runs in every test run without a Motr cluster.
//!
//! The semantics every implementation keeps (from `motr/client.h`):
//! * an index is ordered bytewise; `GET`/`PUT`/`DEL` carry many records and return a code per
//!   record: `-ENOENT` for an absent key (`GET`, `DEL`), `-EEXIST` for a present key on a `PUT`
//!   without [`OVERWRITE`];
//! * `NEXT` returns up to `count` records from the first key `>=` the start key (`>` with
//!   [`EXCLUDE_START_KEY`]); fewer at the end of the index, and none when the records do not
//!   fit one reply ([`MAX_REPLY`]; callers use [`next_records`]);
//! * [`SYNC_WAIT`] (on `PUT`/`DEL`) returns only when the operation's transaction, and so every
//!   one before it on the same service, is persistent;
//! * an operation on an index that does not exist fails as a whole with `-ENOENT`;
//! * objects have no size; reads and writes use extents whose offsets and lengths are
//!   multiples of the block size (`-EINVAL` otherwise); never-written blocks read as zeros;
//!   an object must be created before it is written (`-ENOENT`), and creating one that exists
//!   is `-EEXIST`; one IO larger than [`MAX_IO`] is refused by the real service (`-E2BIG`,
//!   seen on a single node), so callers split IO;
//! * a record value larger than [`MAX_RECORD_VALUE`] is never put: the real service may abort
//!   on it (see there); the in-process Motr fails such a `PUT` as a whole with `-E2BIG`.

/// A Motr 128-bit identifier: an index fid (`container` = hi, `key` = lo) or an object id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id128 {
    /// The high 64 bits (`u_hi`, `f_container`).
    pub hi: u64,
    /// The low 64 bits (`u_lo`, `f_key`).
    pub lo: u64,
}

impl Id128 {
    /// From a `u128` (high half first).
    pub fn from_u128(v: u128) -> Id128 {
        Id128 {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }

    /// As a `u128` (high half first).
    pub fn as_u128(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}

impl std::fmt::Display for Id128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{:#x}:{:#x}>", self.hi, self.lo)
    }
}

/// The fid type byte of a DIX (distributed) index: the top byte of the container, `'x'`.
pub const DIX_FID_TYPE: u8 = b'x';

/// Object ids up to this one are reserved by Motr (`M0_ID_APP`).
pub const ID_APP: Id128 = Id128 {
    hi: 0,
    lo: 0x100000,
};

/// `M0_OIF_OVERWRITE`: a `PUT` replaces existing records instead of failing them with `-EEXIST`.
pub const OVERWRITE: u32 = 1 << 0;
/// `M0_OIF_EXCLUDE_START_KEY`: a `NEXT` starts after the start key, not at it.
pub const EXCLUDE_START_KEY: u32 = 1 << 1;
/// `M0_OIF_SYNC_WAIT`: the reply waits until the transaction is persistent (`PUT`, `DEL`).
pub const SYNC_WAIT: u32 = 1 << 2;

/// The largest single object IO the store issues (bytes). The single-node setup refused an
/// 8 MiB write with `-E2BIG`; 1 MiB writes work.
pub const MAX_IO: usize = 1 << 20;

/// The largest reply one RPC message carries (`M0_RPC_DEF_MAX_RPC_MSG_SIZE`, 128 KiB). The CAS
/// service fails a `NEXT` whose records do not fit (`-E2BIG`), and the client (Motr 2.0's
/// `dix_next_reply_copy`) reports that as an operation that succeeded with every record
/// `-ENOENT`: the same as the end of the index (seen on a single node: a `NEXT` of 256
/// records over values up to 8 KiB returned none). [`next_records`] tells the two apart.
pub const MAX_REPLY: usize = 128 << 10;

/// `NEXT` of up to `count` records (at least one) from `start`, fewer only at the end of the
/// index. A short reply may also be a reply that did not fit one RPC message ([`MAX_REPLY`]),
/// which the client reports the same way, so it is checked with a `NEXT` of one record (which
/// always fits: values are at most [`MAX_RECORD_VALUE`]); if that finds one, the rest is read
/// in requests of half the size, from after the last record returned.
pub fn next_records(
    motr: &dyn MotrOps,
    idx: Id128,
    start: &[u8],
    count: usize,
    flags: u32,
) -> OpResult<Vec<Record>> {
    let count = count.max(1);
    let mut out: Vec<Record> = Vec::new();
    let mut ask = count;
    let mut from = start.to_vec();
    let mut flags = flags;
    while out.len() < count {
        let want = ask.min(count - out.len());
        let page = motr.idx_next(idx, &from, want, flags)?;
        let short = page.len() < want;
        take(page, &mut out, &mut from, &mut flags);
        if !short {
            continue;
        }
        if want == 1 {
            break;
        }
        let probe = motr.idx_next(idx, &from, 1, flags)?;
        if probe.is_empty() {
            break;
        }
        log::debug!("motr: a NEXT of {want} records did not fit one reply; asking for fewer");
        take(probe, &mut out, &mut from, &mut flags);
        ask = (want / 2).max(1);
    }
    Ok(out)
}

/// Appends `page` to `out`; the next `NEXT` starts after its last record.
fn take(page: Vec<Record>, out: &mut Vec<Record>, from: &mut Vec<u8>, flags: &mut u32) {
    if let Some((k, _)) = page.last() {
        from.clone_from(k);
        *flags |= EXCLUDE_START_KEY;
    }
    out.extend(page);
}

/// The largest value the store puts into one index record (bytes). Motr 2.0's CAS keeps
/// records in B-tree nodes of 64 KiB and asserts (the IO service aborts in
/// `btree_put_split_and_find`) when a split leaves a node without a record, which a record of
/// more than a third of a node can cause; a single node's service died that way on a 64 KiB
/// value, refused 256 KiB and 1 MiB values with `-EFAULT`, and took 16 KiB values.
pub const MAX_RECORD_VALUE: usize = 16 << 10;

/// A negative errno from Motr (an operation's or a record's return code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rc(pub i32);

impl Rc {
    /// `-ENOENT`.
    pub const NOT_FOUND: Rc = Rc(-libc::ENOENT);
    /// `-EEXIST`.
    pub const EXISTS: Rc = Rc(-libc::EEXIST);

    /// The positive errno.
    pub fn errno(self) -> i32 {
        self.0.saturating_neg()
    }
}

impl std::fmt::Display for Rc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.0,
            std::io::Error::from_raw_os_error(self.errno())
        )
    }
}

/// The result of one operation as a whole (the op's `m0_rc`).
pub type OpResult<T> = std::result::Result<T, Rc>;

/// One record of a `NEXT` page.
pub type Record = (Vec<u8>, Vec<u8>);

/// The Motr client operations the store uses. Every method is one Motr operation launched and
/// waited for (`M0_OS_STABLE | M0_OS_FAILED`); implementations are safe to call from any
/// thread.
pub trait MotrOps: Send + Sync {
    /// `m0_entity_create` of the index `idx` (`-EEXIST` when it exists).
    fn idx_create(&self, idx: Id128) -> OpResult<()>;

    /// `M0_IC_PUT` of `records`; one return code per record.
    fn idx_put(&self, idx: Id128, records: &[(&[u8], &[u8])], flags: u32) -> OpResult<Vec<i32>>;

    /// `M0_IC_GET` of `keys`; per key, its value or its return code.
    fn idx_get(&self, idx: Id128, keys: &[&[u8]]) -> OpResult<Vec<Result<Vec<u8>, i32>>>;

    /// `M0_IC_DEL` of `keys`; one return code per key.
    fn idx_del(&self, idx: Id128, keys: &[&[u8]], flags: u32) -> OpResult<Vec<i32>>;

    /// `M0_IC_NEXT`: up to `count` records from `start` (the smallest key when empty).
    fn idx_next(&self, idx: Id128, start: &[u8], count: usize, flags: u32)
    -> OpResult<Vec<Record>>;

    /// `m0_entity_create` of the object `id` (`-EEXIST` when it exists).
    fn obj_create(&self, id: Id128) -> OpResult<()>;

    /// `m0_entity_delete` of the object `id` (`-ENOENT` when it does not exist).
    fn obj_delete(&self, id: Id128) -> OpResult<()>;

    /// `M0_OC_WRITE` of `data` at `offset` (both block multiples).
    fn obj_write(&self, id: Id128, offset: u64, data: &[u8]) -> OpResult<()>;

    /// `M0_OC_READ` of `buf.len()` bytes at `offset` (both block multiples).
    fn obj_read(&self, id: Id128, offset: u64, buf: &mut [u8]) -> OpResult<()>;

    /// The object block size: extents are multiples of it.
    fn block_size(&self) -> usize;

    /// Releases the client (`m0_client_fini`); later calls fail with `-ESHUTDOWN`.
    fn shutdown(&self) {}
}
