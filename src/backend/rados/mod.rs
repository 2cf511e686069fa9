//! `RadosStore`: values in a Ceph RADOS pool, with the key index kept in the cluster.
//!
//! Layout, inside one RADOS namespace of one pool (the spec's `prefix`, so several dsfs
//! namespaces share a pool without seeing each other):
//!
//! | object | holds |
//! |---|---|
//! | `meta` | the layout version and the number of index shards, fixed when the namespace is created |
//! | `index.N` | omap: one record per key whose hash picks shard `N` (sorted per shard, merged in order by queries) |
//! | `data.<id>.<n>` | chunk `n` (4 MiB each) of a large value; `id` is random per write |
//!
//! A record is the key's value itself when it is small (one omap operation per put or get), or
//! a pointer (size, chunk size, id) to data objects. The omap key is the datastore key with
//! bytes 0 and 1 escaped (0 -> 1 1, 1 -> 1 2), which keeps byte order and prefixes and lets
//! librados's C-string scan bounds carry any key.
//!
//! **Atomic replace of a value of any size.** A large put writes every chunk under a fresh id
//! (nothing points at them yet), then sets the record in one omap operation (the commit point),
//! then removes the old value's chunks. A crash before the record is set leaves unreferenced
//! chunks and the old value; a crash after it leaves the new value and the old chunks
//! unreferenced. Either way readers see a whole value, and [`RadosStore::scrub`] removes the
//! unreferenced chunks (orphans older than a grace period, so that another host's write in
//! progress is never taken for one). A reader that finds a chunk gone (replaced under it)
//! re-reads the record and retries.
//!
//! **Rename** moves the record (never the data): atomically within one shard, otherwise by
//! setting the new record and then removing the old one; a crash between leaves both keys
//! pointing at the same chunks, which scrub detects and un-shares by copying.
//!
//! **Durability**: every operation returns when the cluster has acknowledged it (committed on
//! the pool's acting set), so `put` is durable and `sync` has nothing to wait for.

mod follow;
mod space;
mod sys;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::datastore::query::{self, EntryIter};
use crate::datastore::{
    Capabilities, Datastore, Entry, Error, ErrorKind, Key, Query, Result, Results, Space, Staged,
};

use sys::{Cluster, Errno, OmapGuard, Pool};

/// The layout version written to `meta`.
const LAYOUT_VERSION: u32 = 1;
/// Index shards of a new namespace. Ceph warns above about 200,000 omap keys per object; 16
/// shards keep 3 million keys under that.
pub const DEFAULT_SHARDS: u32 = 16;
/// Values up to this size live in their record.
pub const DEFAULT_INLINE_MAX: usize = 8 * 1024;
/// The size of a data object (chunk) of a large value.
pub const DEFAULT_CHUNK: usize = 4 << 20;
/// Omap entries fetched per round trip in a scan.
const PAGE: u64 = 1000;
/// How many chunks a large write sends at once.
const WRITERS: usize = 4;

/// How to reach the cluster and lay out values.
#[derive(Clone, Debug)]
pub struct RadosOptions {
    /// The pool.
    pub pool: String,
    /// The `ceph.conf` to read (monitors, keyring location).
    pub conf: PathBuf,
    /// The cephx client name, as in `client.<id>`.
    pub id: String,
    /// The RADOS namespace inside the pool (the spec's `prefix`).
    pub namespace: String,
    /// The bound on connecting, monitor and OSD operations (`client_mount_timeout`,
    /// `rados_mon_op_timeout`, `rados_osd_op_timeout`).
    pub timeout: Duration,
    /// Values up to this size are stored in their record.
    pub inline_max: usize,
    /// The data object size of large values.
    pub chunk_size: usize,
    /// Unreferenced data objects younger than this are left alone by scrub (a write in
    /// progress on another host).
    pub orphan_grace: Duration,
    /// Where the filesystem stages writes before they are committed to the cluster.
    pub staging_dir: PathBuf,
    /// Index shards, when this open creates the namespace (an existing one keeps its own).
    pub shards: u32,
}

impl RadosOptions {
    /// Options for `pool` with the defaults: `/etc/ceph/ceph.conf`, `client.admin`, the
    /// namespace `dsfs`, a 30-second timeout.
    pub fn new(pool: impl Into<String>) -> RadosOptions {
        RadosOptions {
            pool: pool.into(),
            conf: PathBuf::from("/etc/ceph/ceph.conf"),
            id: "admin".to_owned(),
            namespace: "dsfs".to_owned(),
            timeout: Duration::from_secs(30),
            inline_max: DEFAULT_INLINE_MAX,
            chunk_size: DEFAULT_CHUNK,
            orphan_grace: Duration::from_secs(600),
            staging_dir: std::env::temp_dir(),
            shards: DEFAULT_SHARDS,
        }
    }
}

/// A datastore in a RADOS pool. See the module documentation.
pub struct RadosStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    cluster: Arc<Cluster>,
    shards: u32,
    /// What [`Datastore::identity`] answers: the cluster, pool, namespace and layout id.
    identity: String,
    options: RadosOptions,
    closed: AtomicBool,
}

/// What an index record says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    /// The value itself.
    Inline(Vec<u8>),
    /// The value is in `ceil(size / chunk)` data objects named after `id`.
    Chunked { size: u64, chunk: u32, id: u128 },
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        match self {
            Record::Inline(v) => {
                let mut out = Vec::with_capacity(v.len() + 1);
                out.push(0);
                out.extend_from_slice(v);
                out
            }
            Record::Chunked { size, chunk, id } => {
                let mut out = Vec::with_capacity(29);
                out.push(1);
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&chunk.to_le_bytes());
                out.extend_from_slice(&id.to_le_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Record> {
        match bytes.split_first() {
            Some((0, v)) => Ok(Record::Inline(v.to_vec())),
            Some((1, rest)) if rest.len() == 28 => {
                let size = u64::from_le_bytes(rest[0..8].try_into().unwrap_or_default());
                let chunk = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
                let id = u128::from_le_bytes(rest[12..28].try_into().unwrap_or_default());
                if chunk == 0 {
                    return Err(corrupt("an index record with chunk size 0"));
                }
                Ok(Record::Chunked { size, chunk, id })
            }
            _ => Err(corrupt("an index record of unknown format")),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Record::Inline(v) => v.len() as u64,
            Record::Chunked { size, .. } => *size,
        }
    }

    /// The data objects this record points at.
    fn objects(&self) -> Vec<String> {
        match self {
            Record::Inline(_) => Vec::new(),
            Record::Chunked { size, chunk, id } => (0..chunk_count(*size, *chunk))
                .map(|n| data_object(*id, n))
                .collect(),
        }
    }
}

fn chunk_count(size: u64, chunk: u32) -> u64 {
    size.div_ceil(u64::from(chunk)).max(1)
}

fn data_object(id: u128, n: u64) -> String {
    format!("data.{id:032x}.{n}")
}

/// The id in a data object's name, if it is one.
fn parse_data_object(name: &str) -> Option<u128> {
    let rest = name.strip_prefix("data.")?;
    let (id, n) = rest.split_once('.')?;
    n.parse::<u64>().ok()?;
    u128::from_str_radix(id, 16).ok()
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

/// The omap spelling of a key: bytes 0 and 1 escaped, order and prefixes kept.
fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len());
    for &b in key {
        match b {
            0 => out.extend_from_slice(&[1, 1]),
            1 => out.extend_from_slice(&[1, 2]),
            b => out.push(b),
        }
    }
    out
}

fn unescape(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = bytes.iter();
    while let Some(&b) = it.next() {
        if b == 1 {
            match it.next() {
                Some(1) => out.push(0),
                Some(2) => out.push(1),
                _ => return Err(corrupt("a badly escaped key in the index")),
            }
        } else {
            out.push(b);
        }
    }
    Ok(out)
}

fn decode_key(omap_key: &[u8]) -> Result<Key> {
    let raw = unescape(omap_key)?;
    let text = String::from_utf8(raw).map_err(|_| corrupt("a non-UTF-8 key in the index"))?;
    Key::from_raw(text)
}

fn random_id() -> u128 {
    let mut bytes = [0u8; 16];
    crate::datastore::key::fill_random(&mut bytes);
    u128::from_le_bytes(bytes)
}

/// Maps a librados failure to an error kind, with `what` as context.
fn rados_error(what: impl std::fmt::Display, e: Errno) -> Error {
    let kind = match e.0 {
        libc::ENOENT => ErrorKind::NotFound,
        libc::ETIMEDOUT => ErrorKind::TimedOut,
        libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
        libc::EROFS => ErrorKind::ReadOnly,
        libc::EACCES
        | libc::EPERM
        | libc::ENOTCONN
        | libc::ESHUTDOWN
        | libc::ECONNREFUSED
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH => ErrorKind::Unavailable,
        libc::EINVAL => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    Error::with_source(
        kind,
        what.to_string(),
        std::io::Error::from_raw_os_error(e.0),
    )
}

/// Connecting failed: one line that says which of the usual causes it is.
fn connect_error(options: &RadosOptions, e: Errno) -> Error {
    let conf = options.conf.display();
    let (kind, msg) = match e.0 {
        libc::ENOENT => (
            ErrorKind::Unavailable,
            format!(
                "rados: cannot connect as client.{}: {conf} or the keyring it names is missing",
                options.id
            ),
        ),
        libc::EACCES | libc::EPERM | libc::EKEYREJECTED => (
            ErrorKind::Unavailable,
            format!(
                "rados: the monitors refused client.{} (check the keyring that {conf} names)",
                options.id
            ),
        ),
        libc::ETIMEDOUT | libc::EINTR => (
            ErrorKind::TimedOut,
            format!(
                "rados: no monitor answered within {} s (check `mon host` in {conf})",
                options.timeout.as_secs()
            ),
        ),
        libc::EINVAL => (
            ErrorKind::InvalidArgument,
            format!("rados: {conf} is not a usable ceph.conf"),
        ),
        _ => (
            ErrorKind::Unavailable,
            format!("rados: cannot connect to the cluster of {conf}"),
        ),
    };
    Error::with_source(kind, msg, std::io::Error::from_raw_os_error(e.0))
}

impl RadosStore {
    /// Connects to the cluster and opens (creating if needed) the namespace's layout. Fails
    /// within `options.timeout` with one clear line for a missing pool, a refused key or an
    /// unreachable monitor.
    pub fn open(options: RadosOptions) -> Result<RadosStore> {
        let conf = options
            .conf
            .to_str()
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "rados: conf path not UTF-8"))?
            .to_owned();
        let secs = options.timeout.as_secs().max(1).to_string();
        let settings = [
            ("client_mount_timeout", secs.clone()),
            ("rados_mon_op_timeout", secs.clone()),
            ("rados_osd_op_timeout", secs),
            // The client's own log would go to /var/log/ceph; errors come back as values.
            ("log_to_stderr", "false".to_owned()),
            ("err_to_stderr", "false".to_owned()),
            ("log_file", String::new()),
        ];
        let cluster = Arc::new(
            Cluster::connect(&conf, &options.id, &settings)
                .map_err(|e| connect_error(&options, e))?,
        );
        let pool = Pool::open(&cluster, &options.pool, &options.namespace).map_err(|e| {
            if e.0 == libc::ENOENT {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "rados: pool {:?} does not exist (create it: ceph osd pool create {})",
                        options.pool, options.pool
                    ),
                )
            } else {
                rados_error(format!("rados: opening pool {:?}", options.pool), e)
            }
        })?;
        let layout = open_layout(&pool, &options)?;
        let fsid = cluster
            .fsid()
            .map_err(|e| rados_error("rados: reading the cluster fsid", e))?;
        let identity = format!(
            "rados fsid={fsid} pool={} namespace={:?} layout={}",
            pool.id(),
            options.namespace,
            layout.id.as_deref().unwrap_or("-")
        );
        Ok(RadosStore {
            inner: Arc::new(Inner {
                pool,
                cluster,
                shards: layout.shards,
                identity,
                options,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// What `meta` says.
struct Layout {
    shards: u32,
    /// A random id written when the namespace was created (absent in namespaces made before
    /// dsfs wrote one).
    id: Option<String>,
}

/// Reads `meta`, or writes it (exclusively, so two first openers agree). Shard objects come
/// into being with their first record; a missing one reads as empty.
fn open_layout(pool: &Pool, options: &RadosOptions) -> Result<Layout> {
    let what = format!("rados: pool {:?}", options.pool);
    for _ in 0..3 {
        let mut buf = [0u8; 256];
        match pool.read("meta", 0, &mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                return parse_meta(&text).ok_or_else(|| {
                    corrupt(format!(
                        "{what}: namespace {:?} has an unknown layout ({text:?})",
                        options.namespace
                    ))
                });
            }
            Err(Errno(libc::ENOENT)) => {
                let shards = options.shards.max(1);
                let meta = format!(
                    "dsfs-rados {LAYOUT_VERSION} shards={shards} id={:032x}\n",
                    random_id()
                );
                match pool.create("meta", true, Some(meta.as_bytes())) {
                    Ok(()) | Err(Errno(libc::EEXIST)) => continue,
                    Err(e) => return Err(rados_error(format!("{what}: writing meta"), e)),
                }
            }
            Err(e) => return Err(rados_error(format!("{what}: reading meta"), e)),
        }
    }
    Err(corrupt(format!("{what}: meta keeps disappearing")))
}

/// `dsfs-rados VERSION shards=N [id=HEX]`; words after these are ignored (older readers
/// ignore the id the same way).
fn parse_meta(text: &str) -> Option<Layout> {
    let mut words = text.split_whitespace();
    if words.next()? != "dsfs-rados" || words.next()?.parse::<u32>().ok()? != LAYOUT_VERSION {
        return None;
    }
    let shards = words.next()?.strip_prefix("shards=")?.parse::<u32>().ok()?;
    let id = words
        .next()
        .and_then(|w| w.strip_prefix("id="))
        .map(str::to_owned);
    (shards > 0).then_some(Layout { shards, id })
}

fn shard_object(n: u32) -> String {
    format!("index.{n}")
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    /// The shard holding `key`'s record (FNV-1a of the key).
    fn shard_of(&self, key: &Key) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for &b in key.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        shard_object((h % u64::from(self.shards)) as u32)
    }

    fn record(&self, key: &Key) -> Result<Option<Record>> {
        match self.record_raw(key)? {
            Some(v) => Ok(Some(Record::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// `key`'s record as stored (not decoded).
    fn record_raw(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let ek = escape(key.as_bytes());
        let found = match self.pool.omap_get(&self.shard_of(key), &[&ek]) {
            Ok(found) => found,
            // A shard that has never held a record.
            Err(Errno(libc::ENOENT)) => Vec::new(),
            Err(e) => return Err(rados_error(format!("rados: looking up {key}"), e)),
        };
        Ok(found.into_iter().find(|(k, _)| *k == ek).map(|(_, v)| v))
    }

    /// Sets (`Some`) or removes (`None`) `key`'s record, and returns the record it replaced
    /// if that one pointed at data objects (the caller removes them).
    ///
    /// One round trip when the old record is absent or inline: the update is guarded by "the
    /// stored record sorts before a chunked one" (inline records start with byte 0, chunked
    /// ones with 1, a missing one is empty), which nothing needs to read first. When the guard
    /// fails, the old record is read and the update is guarded by "still exactly that record",
    /// so that two writers of one key never both take the same old value as theirs to clean
    /// up (the loser re-reads and removes the winner's chunks instead of leaking them).
    fn swap_record(&self, key: &Key, new: Option<&[u8]>) -> Result<Option<Record>> {
        let ek = escape(key.as_bytes());
        let shard = self.shard_of(key);
        let what = || format!("rados: recording {key}");
        let set: Vec<(&[u8], &[u8])> = new.iter().map(|v| (ek.as_slice(), *v)).collect();
        let remove: Vec<&[u8]> = if new.is_none() { vec![&ek] } else { Vec::new() };
        let chunked_tag = [1u8];
        match self
            .pool
            .omap_update_if(&shard, OmapGuard::Below(&ek, &chunked_tag), &set, &remove)
        {
            Ok(()) => return Ok(None),
            Err(Errno(libc::ECANCELED)) => {}
            Err(e) => return Err(rados_error(what(), e)),
        }
        // Concurrent writers of this key make the guard fail again; each failure means another
        // writer's update landed, so this loop ends unless the key is rewritten without pause.
        for _ in 0..20 {
            let Some(old) = self.record_raw(key)? else {
                match self.pool.omap_update_if(
                    &shard,
                    OmapGuard::Below(&ek, &chunked_tag),
                    &set,
                    &remove,
                ) {
                    Ok(()) => return Ok(None),
                    Err(Errno(libc::ECANCELED)) => continue,
                    Err(e) => return Err(rados_error(what(), e)),
                }
            };
            match self
                .pool
                .omap_update_if(&shard, OmapGuard::Equal(&ek, &old), &set, &remove)
            {
                // An undecodable old record points at nothing this store can name; scrub
                // reports what it left.
                Ok(()) => return Ok(Record::decode(&old).ok()),
                Err(Errno(libc::ECANCELED)) => continue,
                Err(e) => return Err(rados_error(what(), e)),
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("rados: {key} kept changing under 20 attempts to record it"),
        ))
    }

    /// Reads `buf.len()` bytes of a chunked value from `offset` (already clipped to its size).
    /// `Err(None)` means a data object is gone: the value was replaced meanwhile.
    fn read_chunks(
        &self,
        rec: &Record,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<usize, Option<Error>> {
        let Record::Chunked { size, chunk, id } = rec else {
            return Ok(0);
        };
        let chunk = u64::from(*chunk);
        let end = (*size).min(offset + buf.len() as u64);
        let mut pos = offset;
        while pos < end {
            let n = pos / chunk;
            let within = pos % chunk;
            let len = (chunk - within).min(end - pos) as usize;
            let at = (pos - offset) as usize;
            let dst = &mut buf[at..at + len];
            match self.pool.read(&data_object(*id, n), within, dst) {
                // A chunk shorter than its share of the value reads as zeros past its end.
                Ok(got) => dst[got..].fill(0),
                Err(Errno(libc::ENOENT)) => return Err(None),
                Err(e) => return Err(Some(rados_error("rados: reading a data object", e))),
            }
            pos += len as u64;
        }
        Ok((end.saturating_sub(offset)) as usize)
    }

    /// Reads from `key`'s current value, retrying when a concurrent replace removed the
    /// chunks of the record first read.
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        for _ in 0..5 {
            let rec = self.record(key)?.ok_or_else(Error::not_found)?;
            match &rec {
                Record::Inline(v) => return Ok(crate::datastore::copy_range(v, offset, buf)),
                Record::Chunked { size, .. } => {
                    if offset >= *size {
                        return Ok(0);
                    }
                    let want = ((*size - offset).min(buf.len() as u64)) as usize;
                    match self.read_chunks(&rec, offset, &mut buf[..want]) {
                        Ok(n) => return Ok(n),
                        Err(Some(e)) => return Err(e),
                        Err(None) => continue,
                    }
                }
            }
        }
        Err(corrupt(format!(
            "rados: the data objects of {key} are missing (run dsfs fsck --repair)"
        )))
    }

    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        for _ in 0..5 {
            let rec = self.record(key)?.ok_or_else(Error::not_found)?;
            match &rec {
                Record::Inline(v) => return Ok(v.clone()),
                Record::Chunked { size, .. } => {
                    let len = usize::try_from(*size).map_err(|_| {
                        Error::new(ErrorKind::InvalidArgument, "value too large for memory")
                    })?;
                    let mut buf = vec![0u8; len];
                    match self.read_chunks(&rec, 0, &mut buf) {
                        Ok(_) => return Ok(buf),
                        Err(Some(e)) => return Err(e),
                        Err(None) => continue,
                    }
                }
            }
        }
        Err(corrupt(format!(
            "rados: the data objects of {key} are missing (run dsfs fsck --repair)"
        )))
    }

    /// Writes a value of `size` bytes, produced by `fill(offset, buf)`, as data objects under a
    /// fresh id, several chunks at a time. Nothing refers to them until the record is set.
    fn write_chunks(
        &self,
        size: u64,
        fill: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
    ) -> Result<Record> {
        let chunk = self.options.chunk_size.clamp(4096, u32::MAX as usize);
        let id = random_id();
        let count = chunk_count(size, chunk as u32);
        let next = std::sync::atomic::AtomicU64::new(0);
        let worker = || -> Result<()> {
            let mut buf = vec![0u8; chunk];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let start = n * chunk as u64;
                let len = (size - start).min(chunk as u64) as usize;
                fill(start, &mut buf[..len])?;
                self.pool
                    .write_full(&data_object(id, n), &buf[..len])
                    .map_err(|e| rados_error("rados: writing a data object", e))?;
            }
        };
        let writers = (count as usize).min(WRITERS);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..writers).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "a writer panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        Ok(Record::Chunked {
            size,
            chunk: chunk as u32,
            id,
        })
    }

    /// Sets `key`'s record (the commit point) and then removes the replaced value's chunks.
    fn commit_record(&self, key: &Key, rec: Record) -> Result<()> {
        // On failure the new chunks stay: a timed-out update may still have landed, so only
        // scrub (which reads the records) may call them orphans.
        let old = self.swap_record(key, Some(&rec.encode()))?;
        if let Some(old) = old
            && old != rec
        {
            self.remove_objects(&old.objects());
        }
        Ok(())
    }

    /// Best effort: what is left behind is an orphan that scrub removes.
    fn remove_objects(&self, objects: &[String]) {
        for o in objects {
            match self.pool.remove(o) {
                Ok(()) | Err(Errno(libc::ENOENT)) => {}
                Err(e) => log::warn!("rados: could not remove {o} ({e:?}); scrub will"),
            }
        }
    }

    fn put_value(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.check_open()?;
        let rec = if value.len() <= self.options.inline_max {
            Record::Inline(value.to_vec())
        } else {
            self.write_chunks(value.len() as u64, &|off, buf| {
                let start = off as usize;
                buf.copy_from_slice(&value[start..start + buf.len()]);
                Ok(())
            })?
        };
        self.commit_record(key, rec)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check_open()?;
        if let Some(old) = self.swap_record(key, None)? {
            self.remove_objects(&old.objects());
        }
        Ok(())
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.check_open()?;
        let rec = self.record(from)?.ok_or_else(Error::not_found)?;
        if from == to {
            return Ok(());
        }
        let old_to = self.record(to)?;
        let (ef, et) = (escape(from.as_bytes()), escape(to.as_bytes()));
        let value = rec.encode();
        let (sf, st) = (self.shard_of(from), self.shard_of(to));
        let what = format!("rados: renaming {from} to {to}");
        if sf == st {
            self.pool
                .omap_update(&sf, &[(&et, &value)], &[&ef])
                .map_err(|e| rados_error(&what, e))?;
        } else {
            // Both keys point at the same chunks until the second step; see the module docs.
            self.pool
                .omap_update(&st, &[(&et, &value)], &[])
                .map_err(|e| rados_error(&what, e))?;
            self.pool
                .omap_update(&sf, &[], &[&ef])
                .map_err(|e| rados_error(&what, e))?;
        }
        if let Some(old) = old_to
            && old != rec
        {
            self.remove_objects(&old.objects());
        }
        Ok(())
    }

    /// Every (key, record) in one shard, in order.
    fn shard_records(&self, shard: &str) -> Result<sys::OmapEntries> {
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            let (page, more) = match self.pool.omap_list(shard, &after, b"", PAGE) {
                Ok(p) => p,
                Err(Errno(libc::ENOENT)) => (Vec::new(), false),
                Err(e) => return Err(rados_error(format!("rados: listing {shard}"), e)),
            };
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            out.extend(page);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        // Every chunked record, by id.
        let mut by_id: HashMap<u128, Vec<(Key, Record)>> = HashMap::new();
        for s in 0..self.shards {
            let shard = shard_object(s);
            for (ek, v) in self.shard_records(&shard)? {
                let key = match decode_key(&ek) {
                    Ok(k) => k,
                    Err(e) => {
                        problems.push(format!("{shard}: {e}"));
                        continue;
                    }
                };
                match Record::decode(&v) {
                    Ok(rec @ Record::Chunked { id, .. }) => {
                        by_id.entry(id).or_default().push((key, rec))
                    }
                    Ok(Record::Inline(_)) => {}
                    Err(e) => {
                        problems.push(format!("{key}: {e}"));
                        if repair {
                            self.pool
                                .omap_update(&shard, &[], &[&ek])
                                .map_err(|e| rados_error("rados: scrub", e))?;
                        }
                    }
                }
            }
        }
        // Every id a record points at, dangling or not (a dangling record's remaining chunks
        // are its own problem, not orphans).
        let referenced: HashSet<u128> = by_id.keys().copied().collect();
        // Dangling records: a data object missing or of the wrong size.
        let mut dangling = Vec::new();
        for (id, holders) in &by_id {
            let Some((_, rec)) = holders.first() else {
                continue;
            };
            let Record::Chunked { size, chunk, .. } = rec else {
                continue;
            };
            let count = chunk_count(*size, *chunk);
            for n in 0..count {
                let want = if n + 1 == count {
                    size - n * u64::from(*chunk)
                } else {
                    u64::from(*chunk)
                };
                match self.pool.stat(&data_object(*id, n)) {
                    Ok((got, _)) if got == want => {}
                    Ok(_) | Err(Errno(libc::ENOENT)) => {
                        dangling.push(*id);
                        break;
                    }
                    Err(e) => return Err(rados_error("rados: scrub", e)),
                }
            }
        }
        for id in &dangling {
            for (key, rec) in by_id.remove(id).unwrap_or_default() {
                problems.push(format!(
                    "{key}: its data objects are missing or short (record removed: {})",
                    if repair { "yes" } else { "no" }
                ));
                if repair {
                    // Only if the record still points there (a writer may have replaced it).
                    if self.record(&key)? == Some(rec.clone()) {
                        let ek = escape(key.as_bytes());
                        self.pool
                            .omap_update(&self.shard_of(&key), &[], &[&ek])
                            .map_err(|e| rados_error("rados: scrub", e))?;
                    }
                    self.remove_objects(&rec.objects());
                }
            }
        }
        // Shared chunks (a rename interrupted between its two steps): copy for all but one.
        for holders in by_id.values() {
            for (key, rec) in holders.iter().skip(1) {
                problems.push(format!("{key}: shares its data objects with another key"));
                if repair {
                    // A copy under a fresh id; the shared chunks stay with the other key.
                    let value = self.get(key)?;
                    let copy = self.write_chunks(value.len() as u64, &|off, buf| {
                        let start = off as usize;
                        buf.copy_from_slice(&value[start..start + buf.len()]);
                        Ok(())
                    })?;
                    let ek = escape(key.as_bytes());
                    if self.record(key)?.as_ref() == Some(rec) {
                        self.pool
                            .omap_update(&self.shard_of(key), &[(&ek, &copy.encode())], &[])
                            .map_err(|e| rados_error("rados: scrub", e))?;
                    } else {
                        self.remove_objects(&copy.objects());
                    }
                }
            }
        }
        // Orphans: data objects no record points at, older than the grace period.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let grace = self.options.orphan_grace.as_secs() as i64;
        let objects = self
            .pool
            .list_objects()
            .map_err(|e| rados_error("rados: listing objects", e))?;
        for name in objects {
            let Some(id) = parse_data_object(&name) else {
                continue;
            };
            if referenced.contains(&id) {
                continue;
            }
            let mtime = match self.pool.stat(&name) {
                Ok((_, m)) => m,
                Err(Errno(libc::ENOENT)) => continue,
                Err(e) => return Err(rados_error("rados: scrub", e)),
            };
            if now - mtime < grace {
                continue;
            }
            // A write that committed since the records were read is not an orphan.
            problems.push(format!("orphan data object {name}"));
            if repair {
                self.remove_objects(&[name]);
            }
        }
        Ok(problems)
    }
}

impl Datastore for RadosStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn has(&self, key: &Key) -> Result<bool> {
        Ok(self.inner.record(key)?.is_some())
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
        self.inner.put_value(key, value)
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key)
    }

    fn query(&self, q: Query) -> Result<Results> {
        let prefix = match query::prefix_range(q.prefix_key().as_ref()) {
            Some((lo, _)) => escape(lo.as_bytes()),
            None => Vec::new(),
        };
        let mut scan = Scan {
            inner: self.inner.clone(),
            cursors: (0..self.inner.shards)
                .map(|s| Cursor {
                    shard: shard_object(s),
                    buf: VecDeque::new(),
                    after: Vec::new(),
                    more: true,
                })
                .collect(),
            heap: BinaryHeap::new(),
            prefix,
            keys_only: q.keys_only,
            started: false,
            failed: false,
        };
        scan.start()?;
        let it = query::naive_apply(&q, Box::new(scan) as EntryIter, true);
        Ok(Results::new(q, it))
    }

    fn sync(&self, _prefix: &Key) -> Result<()> {
        // Every write returned only after the cluster acknowledged it.
        Ok(())
    }

    fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_scan: true,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: false,
            durable_put: true,
            persistent: true,
            general_keys: true,
            file_backed: false,
            atomic_rename: false,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: None,
        }
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        self.inner.rename(from, to)
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        self.inner.scrub(repair)
    }

    fn identity(&self) -> Result<Option<String>> {
        Ok(Some(self.inner.identity.clone()))
    }

    /// Other hosts may write any key of the namespace.
    fn shared(&self, _key: &Key) -> bool {
        true
    }

    /// The omap index shards, stamped with their object versions (see `follow.rs`).
    fn segments(&self) -> Result<Option<Vec<crate::datastore::Segment>>> {
        self.inner.check_open()?;
        self.inner.segments().map(Some)
    }

    fn segment_of(&self, key: &Key) -> Option<String> {
        Some(self.inner.shard_of(key))
    }

    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        self.inner.check_open()?;
        self.inner.segment_keys(segment)
    }

    /// What the pool can hold: see `space.rs` (also without a manager daemon).
    fn space(&self) -> Result<Option<Space>> {
        self.inner.check_open()?;
        self.inner.space()
    }

    fn commit_staged(&self, key: &Key, staged: Staged, _durable: bool) -> Result<()> {
        self.inner.check_open()?;
        let size = staged.len()?;
        if size <= self.inner.options.inline_max as u64 {
            return self.inner.put_value(key, &staged.read_all()?);
        }
        let rec = self.inner.write_chunks(size, &|off, buf| {
            let n = staged.read_at(off, buf)?;
            buf[n..].fill(0);
            Ok(())
        })?;
        // Acknowledged writes are durable: `durable` needs nothing more.
        self.inner.commit_record(key, rec)
    }

    fn staging_dir(&self) -> PathBuf {
        self.inner.options.staging_dir.clone()
    }
}

/// One shard's position in a merged scan.
struct Cursor {
    shard: String,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    after: Vec<u8>,
    more: bool,
}

/// A scan of every shard, merged in key order, one page per shard at a time.
struct Scan {
    inner: Arc<Inner>,
    cursors: Vec<Cursor>,
    heap: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    prefix: Vec<u8>,
    keys_only: bool,
    started: bool,
    failed: bool,
}

impl Scan {
    fn start(&mut self) -> Result<()> {
        for i in 0..self.cursors.len() {
            self.refill(i)?;
        }
        self.started = true;
        Ok(())
    }

    /// Fetches the next page of shard `i` if its buffer is empty, and queues its head.
    fn refill(&mut self, i: usize) -> Result<()> {
        let c = &mut self.cursors[i];
        if c.buf.is_empty() && c.more {
            let (page, more) =
                match self
                    .inner
                    .pool
                    .omap_list(&c.shard, &c.after, &self.prefix, PAGE)
                {
                    Ok(p) => p,
                    Err(Errno(libc::ENOENT)) => (Vec::new(), false),
                    Err(e) => return Err(rados_error(format!("rados: listing {}", c.shard), e)),
                };
            if let Some(last) = page.last() {
                c.after = last.0.clone();
            }
            c.more = more && !page.is_empty();
            c.buf.extend(page);
        }
        if let Some((k, _)) = c.buf.front() {
            self.heap.push(Reverse((k.clone(), i)));
        }
        Ok(())
    }

    fn entry(&self, ek: &[u8], v: &[u8]) -> Result<Option<Entry>> {
        let key = decode_key(ek)?;
        let rec = Record::decode(v)?;
        if self.keys_only {
            return Ok(Some(Entry::key_only(key, Some(rec.size()))));
        }
        let value = match rec {
            Record::Inline(v) => v,
            Record::Chunked { .. } => match self.inner.get(&key) {
                Ok(v) => v,
                // Deleted since the page was read.
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        Ok(Some(Entry::with_value(key, value)))
    }
}

impl Iterator for Scan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed || !self.started {
            return None;
        }
        loop {
            let Reverse((_, i)) = self.heap.pop()?;
            let (ek, v) = self.cursors[i].buf.pop_front()?;
            if let Err(e) = self.refill(i) {
                self.failed = true;
                return Some(Err(e));
            }
            match self.entry(&ek, &v) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
