//! An in-process Motr: the client operations of [`MotrOps`] with the semantics `motr/client.h`
//! documents, kept in memory and persisted to one file at every `SYNC_WAIT` and at shutdown.
//!
//! What it models: ordered indices (bytewise), per-record return codes, the `OVERWRITE`,
//! `EXCLUDE_START_KEY` and `SYNC_WAIT` flags, operations on a missing index failing as a whole,
//! objects without a size made of blocks (block-multiple extents, unwritten blocks read as
//! zeros), object create/delete with `-EEXIST`/`-ENOENT`, the service refusing one IO larger
//! than [`MAX_SERVICE_IO`] with `-E2BIG`, and durability: what the file holds is what a
//! `SYNC_WAIT` (or a clean shutdown) made persistent, so dropping a `FakeMotr` without
//! [`MotrOps::shutdown`] is a crash that loses the rest. Failures can be injected per kind of
//! operation ([`FakeMotr::inject`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::ops::{
    EXCLUDE_START_KEY, Id128, MAX_RECORD_VALUE, MotrOps, OVERWRITE, OpResult, Rc, Record, SYNC_WAIT,
};

/// The block size of the in-process objects.
pub const BLOCK: usize = 4096;
/// The largest single IO the in-process service accepts (the real single node refused 8 MiB).
pub const MAX_SERVICE_IO: usize = 4 << 20;

/// What a record costs in a `NEXT` reply besides its key and value bytes (two buffer
/// descriptors and a return code, rounded up): with [`super::ops::MAX_REPLY`], when the
/// in-process Motr refuses a `NEXT` as the real service does.
const REPLY_RECORD_OVERHEAD: usize = 32;

const MAGIC: &[u8] = b"dsfs-fake-motr 1\n";

/// The kinds of operation a failure can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `m0_entity_create` of an index.
    IdxCreate,
    /// `M0_IC_PUT`.
    Put,
    /// `M0_IC_GET`.
    Get,
    /// `M0_IC_DEL`.
    Del,
    /// `M0_IC_NEXT`.
    Next,
    /// Object create.
    ObjCreate,
    /// Object delete.
    ObjDelete,
    /// `M0_OC_WRITE`.
    Write,
    /// `M0_OC_READ`.
    Read,
}

#[derive(Default, Clone)]
struct State {
    indices: BTreeMap<Id128, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Object id -> its written blocks (block number -> bytes).
    objects: BTreeMap<Id128, BTreeMap<u64, Vec<u8>>>,
}

struct Inner {
    state: State,
    /// Failures to inject: kind -> (return code, how many more times).
    faults: HashMap<OpKind, (i32, u32)>,
    /// A crash to come: after this many more operations, and whether everything done until
    /// then is persistent at that moment (see [`FakeMotr::crash_after`]).
    crash: Option<(u32, bool)>,
    /// Bytes written into objects so far.
    written: u64,
    shut: bool,
}

/// The in-process Motr. See the module documentation.
pub struct FakeMotr {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
}

impl FakeMotr {
    /// A volatile in-process Motr (nothing persists).
    pub fn in_memory() -> FakeMotr {
        FakeMotr {
            inner: Mutex::new(Inner {
                state: State::default(),
                faults: HashMap::new(),
                crash: None,
                written: 0,
                shut: false,
            }),
            path: None,
        }
    }

    /// The in-process Motr persisted in `path` (created on the first persist).
    pub fn open(path: &Path) -> std::io::Result<FakeMotr> {
        let state = match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not an in-process Motr file", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        Ok(FakeMotr {
            inner: Mutex::new(Inner {
                state,
                faults: HashMap::new(),
                crash: None,
                written: 0,
                shut: false,
            }),
            path: Some(path.to_owned()),
        })
    }

    /// Makes the next `times` operations of `kind` fail as a whole with `rc` (negative errno).
    pub fn inject(&self, kind: OpKind, rc: i32, times: u32) {
        self.inner.lock().faults.insert(kind, (rc, times));
    }

    /// Crashes the service once `ops` more operations have run: every later operation fails
    /// with `-ESHUTDOWN` and nothing more persists. With `all_persistent`, everything those
    /// operations did is persistent at the crash (the worst case for writes in place: each one
    /// completed reached the disk), otherwise only what a `SYNC_WAIT` made persistent.
    pub fn crash_after(&self, ops: u32, all_persistent: bool) {
        self.inner.lock().crash = Some((ops, all_persistent));
    }

    /// Whether a crash set by [`FakeMotr::crash_after`] happened.
    pub fn crashed(&self) -> bool {
        let g = self.inner.lock();
        g.shut && g.crash.is_some()
    }

    /// How many bytes were written into objects so far (by this handle).
    pub fn bytes_written(&self) -> u64 {
        self.inner.lock().written
    }

    /// How many objects exist (for tests that check objects are removed).
    pub fn object_count(&self) -> usize {
        self.inner.lock().state.objects.len()
    }

    /// The raw records of index `idx`, in order (for record-format tests).
    pub fn records(&self, idx: Id128) -> Vec<Record> {
        self.inner
            .lock()
            .state
            .indices
            .get(&idx)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn begin(&self, kind: OpKind) -> OpResult<parking_lot::MutexGuard<'_, Inner>> {
        let mut g = self.inner.lock();
        if g.shut {
            return Err(Rc(-libc::ESHUTDOWN));
        }
        if let Some((left, all)) = g.crash.as_mut() {
            if *left == 0 {
                let persist_now = *all;
                g.shut = true;
                if persist_now {
                    let state = g.state.clone();
                    drop(g);
                    self.persist(&state)?;
                }
                return Err(Rc(-libc::ESHUTDOWN));
            }
            *left -= 1;
        }
        if let Some((rc, times)) = g.faults.get_mut(&kind)
            && *times > 0
        {
            *times -= 1;
            return Err(Rc(*rc));
        }
        Ok(g)
    }

    fn persist(&self, state: &State) -> OpResult<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(state))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            log::warn!("in-process Motr: persisting {}: {e}", path.display());
            Rc(-e.raw_os_error().unwrap_or(libc::EIO))
        })
    }
}

fn check_extent(offset: u64, len: usize) -> OpResult<()> {
    if !offset.is_multiple_of(BLOCK as u64) || !len.is_multiple_of(BLOCK) || len == 0 {
        return Err(Rc(-libc::EINVAL));
    }
    if len > MAX_SERVICE_IO {
        return Err(Rc(-libc::E2BIG));
    }
    Ok(())
}

impl MotrOps for FakeMotr {
    fn idx_create(&self, idx: Id128) -> OpResult<()> {
        let mut g = self.begin(OpKind::IdxCreate)?;
        if (idx.hi >> 56) as u8 != super::ops::DIX_FID_TYPE || idx.hi & 0x00ff_ffff_ffff_ffff == 0 {
            return Err(Rc(-libc::EINVAL));
        }
        if g.state.indices.contains_key(&idx) {
            return Err(Rc::EXISTS);
        }
        g.state.indices.insert(idx, BTreeMap::new());
        // Index creation is a persistent operation of its own.
        let state = g.state.clone();
        drop(g);
        self.persist(&state)
    }

    fn idx_put(&self, idx: Id128, records: &[(&[u8], &[u8])], flags: u32) -> OpResult<Vec<i32>> {
        let mut g = self.begin(OpKind::Put)?;
        let index = g.state.indices.get_mut(&idx).ok_or(Rc::NOT_FOUND)?;
        if records.iter().any(|(_, v)| v.len() > MAX_RECORD_VALUE) {
            return Err(Rc(-libc::E2BIG));
        }
        let rcs = records
            .iter()
            .map(|(k, v)| {
                if flags & OVERWRITE == 0 && index.contains_key(*k) {
                    Rc::EXISTS.0
                } else {
                    index.insert(k.to_vec(), v.to_vec());
                    0
                }
            })
            .collect();
        if flags & SYNC_WAIT != 0 {
            let state = g.state.clone();
            drop(g);
            self.persist(&state)?;
        }
        Ok(rcs)
    }

    fn idx_get(&self, idx: Id128, keys: &[&[u8]]) -> OpResult<Vec<Result<Vec<u8>, i32>>> {
        let g = self.begin(OpKind::Get)?;
        let index = g.state.indices.get(&idx).ok_or(Rc::NOT_FOUND)?;
        if keys.is_empty() {
            return Err(Rc(-libc::EINVAL));
        }
        Ok(keys
            .iter()
            .map(|k| index.get(*k).cloned().ok_or(Rc::NOT_FOUND.0))
            .collect())
    }

    fn idx_del(&self, idx: Id128, keys: &[&[u8]], flags: u32) -> OpResult<Vec<i32>> {
        let mut g = self.begin(OpKind::Del)?;
        let index = g.state.indices.get_mut(&idx).ok_or(Rc::NOT_FOUND)?;
        let rcs = keys
            .iter()
            .map(|k| match index.remove(*k) {
                Some(_) => 0,
                None => Rc::NOT_FOUND.0,
            })
            .collect();
        if flags & SYNC_WAIT != 0 {
            let state = g.state.clone();
            drop(g);
            self.persist(&state)?;
        }
        Ok(rcs)
    }

    fn idx_next(
        &self,
        idx: Id128,
        start: &[u8],
        count: usize,
        flags: u32,
    ) -> OpResult<Vec<Record>> {
        let g = self.begin(OpKind::Next)?;
        let index = g.state.indices.get(&idx).ok_or(Rc::NOT_FOUND)?;
        let lower = if flags & EXCLUDE_START_KEY != 0 {
            Bound::Excluded(start)
        } else {
            Bound::Included(start)
        };
        let records: Vec<Record> = index
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(count)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // A reply larger than one RPC message fails on the real service, and its client
        // reports every record as absent, as at the end of the index (see `MAX_REPLY`).
        let reply: usize = records
            .iter()
            .map(|(k, v)| k.len() + v.len() + REPLY_RECORD_OVERHEAD)
            .sum();
        if reply > super::ops::MAX_REPLY {
            return Ok(Vec::new());
        }
        Ok(records)
    }

    fn obj_create(&self, id: Id128) -> OpResult<()> {
        let mut g = self.begin(OpKind::ObjCreate)?;
        if id <= super::ops::ID_APP {
            return Err(Rc(-libc::EINVAL));
        }
        if g.state.objects.contains_key(&id) {
            return Err(Rc::EXISTS);
        }
        g.state.objects.insert(id, BTreeMap::new());
        Ok(())
    }

    fn obj_delete(&self, id: Id128) -> OpResult<()> {
        let mut g = self.begin(OpKind::ObjDelete)?;
        match g.state.objects.remove(&id) {
            Some(_) => Ok(()),
            None => Err(Rc::NOT_FOUND),
        }
    }

    fn obj_write(&self, id: Id128, offset: u64, data: &[u8]) -> OpResult<()> {
        check_extent(offset, data.len())?;
        let mut g = self.begin(OpKind::Write)?;
        let obj = g.state.objects.get_mut(&id).ok_or(Rc::NOT_FOUND)?;
        let first = offset / BLOCK as u64;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            obj.insert(first + i as u64, block.to_vec());
        }
        g.written += data.len() as u64;
        Ok(())
    }

    fn obj_read(&self, id: Id128, offset: u64, buf: &mut [u8]) -> OpResult<()> {
        check_extent(offset, buf.len())?;
        let g = self.begin(OpKind::Read)?;
        let obj = g.state.objects.get(&id).ok_or(Rc::NOT_FOUND)?;
        let first = offset / BLOCK as u64;
        for (i, block) in buf.chunks_mut(BLOCK).enumerate() {
            match obj.get(&(first + i as u64)) {
                Some(b) => block.copy_from_slice(b),
                None => block.fill(0),
            }
        }
        Ok(())
    }

    fn block_size(&self) -> usize {
        BLOCK
    }

    fn shutdown(&self) {
        let mut g = self.inner.lock();
        if g.shut {
            return;
        }
        g.shut = true;
        let state = g.state.clone();
        drop(g);
        if let Err(rc) = self.persist(&state) {
            log::warn!("in-process Motr: state not saved at shutdown: {rc}");
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_id(out: &mut Vec<u8>, id: Id128) {
    out.extend_from_slice(&id.hi.to_le_bytes());
    out.extend_from_slice(&id.lo.to_le_bytes());
}

fn encode(s: &State) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(s.indices.len() as u64).to_le_bytes());
    for (id, recs) in &s.indices {
        put_id(&mut out, *id);
        out.extend_from_slice(&(recs.len() as u64).to_le_bytes());
        for (k, v) in recs {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
    }
    out.extend_from_slice(&(s.objects.len() as u64).to_le_bytes());
    for (id, blocks) in &s.objects {
        put_id(&mut out, *id);
        out.extend_from_slice(&(blocks.len() as u64).to_le_bytes());
        for (n, b) in blocks {
            out.extend_from_slice(&n.to_le_bytes());
            put_bytes(&mut out, b);
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }
    fn id(&mut self) -> Option<Id128> {
        Some(Id128 {
            hi: self.u64()?,
            lo: self.u64()?,
        })
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head.to_vec())
    }
}

fn decode(bytes: &[u8]) -> Option<State> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    let mut s = State::default();
    for _ in 0..r.u64()? {
        let id = r.id()?;
        let mut recs = BTreeMap::new();
        for _ in 0..r.u64()? {
            let k = r.bytes()?;
            recs.insert(k, r.bytes()?);
        }
        s.indices.insert(id, recs);
    }
    for _ in 0..r.u64()? {
        let id = r.id()?;
        let mut blocks = BTreeMap::new();
        for _ in 0..r.u64()? {
            let n = r.u64()?;
            let b = r.bytes()?;
            if b.len() != BLOCK {
                return None;
            }
            blocks.insert(n, b);
        }
        s.objects.insert(id, blocks);
    }
    r.0.is_empty().then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDX: Id128 = Id128 {
        hi: 0x7800_0000_0000_0001,
        lo: 1,
    };

    #[test]
    fn index_semantics_follow_the_client_api() {
        let m = FakeMotr::in_memory();
        assert_eq!(m.idx_put(IDX, &[(b"a", b"1")], 0), Err(Rc::NOT_FOUND));
        m.idx_create(IDX).unwrap();
        assert_eq!(m.idx_create(IDX), Err(Rc::EXISTS));
        assert_eq!(
            m.idx_put(IDX, &[(b"b", b"2"), (b"a", b"1")], 0).unwrap(),
            vec![0, 0]
        );
        // Without OVERWRITE an existing key fails its record only.
        assert_eq!(
            m.idx_put(IDX, &[(b"a", b"x"), (b"c", b"3")], 0).unwrap(),
            vec![-libc::EEXIST, 0]
        );
        assert_eq!(m.idx_get(IDX, &[b"a"]).unwrap(), vec![Ok(b"1".to_vec())]);
        m.idx_put(IDX, &[(b"a", b"x")], OVERWRITE).unwrap();
        assert_eq!(
            m.idx_get(IDX, &[b"a", b"zz"]).unwrap(),
            vec![Ok(b"x".to_vec()), Err(-libc::ENOENT)]
        );
        let keys = |v: Vec<Record>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(m.idx_next(IDX, b"b", 10, 0).unwrap()),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(m.idx_next(IDX, b"b", 10, EXCLUDE_START_KEY).unwrap()),
            vec![b"c".to_vec()]
        );
        assert_eq!(
            keys(m.idx_next(IDX, b"", 1, 0).unwrap()),
            vec![b"a".to_vec()]
        );
        assert_eq!(
            m.idx_del(IDX, &[b"a", b"a"], 0).unwrap(),
            vec![0, -libc::ENOENT]
        );
    }

    #[test]
    fn objects_take_block_multiples_and_have_no_size() {
        let m = FakeMotr::in_memory();
        let id = Id128 { hi: 1, lo: 2 };
        assert_eq!(m.obj_write(id, 0, &[1; BLOCK]), Err(Rc::NOT_FOUND));
        m.obj_create(id).unwrap();
        assert_eq!(m.obj_create(id), Err(Rc::EXISTS));
        assert_eq!(m.obj_write(id, 0, &[1; 100]), Err(Rc(-libc::EINVAL)));
        assert_eq!(m.obj_write(id, 1, &[1; BLOCK]), Err(Rc(-libc::EINVAL)));
        assert_eq!(
            m.obj_write(id, 0, &vec![1; 2 * MAX_SERVICE_IO]),
            Err(Rc(-libc::E2BIG))
        );
        m.obj_write(id, BLOCK as u64, &[7; BLOCK]).unwrap();
        let mut buf = vec![9u8; 3 * BLOCK];
        m.obj_read(id, 0, &mut buf).unwrap();
        assert!(buf[..BLOCK].iter().all(|&b| b == 0));
        assert!(buf[BLOCK..2 * BLOCK].iter().all(|&b| b == 7));
        assert!(buf[2 * BLOCK..].iter().all(|&b| b == 0));
        m.obj_delete(id).unwrap();
        assert_eq!(m.obj_delete(id), Err(Rc::NOT_FOUND));
        assert_eq!(
            m.obj_create(super::super::ops::ID_APP),
            Err(Rc(-libc::EINVAL))
        );
    }

    #[test]
    fn only_sync_wait_and_shutdown_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motr.fake");
        let m = FakeMotr::open(&path).unwrap();
        m.idx_create(IDX).unwrap();
        m.idx_put(IDX, &[(b"a", b"1")], 0).unwrap();
        m.idx_put(IDX, &[(b"b", b"2")], SYNC_WAIT).unwrap();
        m.idx_put(IDX, &[(b"c", b"3")], 0).unwrap();
        drop(m); // a crash: "c" was never persisted
        let m = FakeMotr::open(&path).unwrap();
        let keys: Vec<_> = m.records(IDX).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        m.idx_put(IDX, &[(b"d", b"4")], 0).unwrap();
        m.shutdown();
        assert_eq!(m.idx_get(IDX, &[b"d"]), Err(Rc(-libc::ESHUTDOWN)));
        let m = FakeMotr::open(&path).unwrap();
        assert_eq!(m.records(IDX).len(), 3);
    }

    #[test]
    fn injected_failures_fail_whole_operations() {
        let m = FakeMotr::in_memory();
        m.idx_create(IDX).unwrap();
        m.inject(OpKind::Get, -libc::ETIMEDOUT, 1);
        assert_eq!(m.idx_get(IDX, &[b"a"]), Err(Rc(-libc::ETIMEDOUT)));
        assert_eq!(m.idx_get(IDX, &[b"a"]).unwrap(), vec![Err(-libc::ENOENT)]);
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motr.fake");
        std::fs::write(&path, b"dsfs-fake-motr 1\n\x05").unwrap();
        assert!(FakeMotr::open(&path).is_err());
    }
}
