//! An in-process blobstore with SPDK's documented semantics (see [`super::ops`]), kept in two
//! files so that a reopen sees exactly what a reload of a real blobstore would:
//!
//! * `IMAGE`: the device, `clusters * cluster_size` bytes (sparse). Blob data is written at
//!   `cluster * cluster_size + offset` of the clusters the blob owns, as the real blobstore
//!   does on its bdev. Clusters are not zeroed when allocated (stale bytes of a deleted blob
//!   show through, as on a real device with the default clear method).
//! * `IMAGE.md`: the metadata, an append-only log of records (the device geometry first, then
//!   one per `create_blob`, `sync_md` and `delete_blob`), each a little-endian `u32` length and
//!   a JSON body. The log is the persistence point: `resize` and xattr changes live in memory
//!   until `sync_md` appends the blob's metadata, so a crash (dropping the blobstore without
//!   `unload`) loses them, and a reload frees the clusters that only an unsynced resize held.
//!   A torn last record (a crash while appending) is ignored and cut off at the next open.
//!
//! `flush` fsyncs both files; nothing else does (a process crash loses nothing written, a power
//! loss loses what was not flushed, like a bdev with a volatile write cache).
//!
//! Faults can be injected per operation ([`FakeBlobstore::inject`]): the next calls of an
//! operation fail with the errno given, as SPDK reports `-ENOMEM` (no request objects) and
//! `-ENOSPC` (no free clusters).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::ops::{
    BSTYPE_BLOBFS, BlobId, BlobOps, BsError, BsErrorKind, BsResult, MAX_XATTR_DESC,
    XATTR_DESC_HEADER,
};

/// The geometry of a new fake blobstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeGeometry {
    /// The device size in bytes (rounded down to whole clusters).
    pub size: u64,
    /// The cluster size in bytes (a multiple of the io unit).
    pub cluster_size: u64,
    /// The io unit in bytes (512 or 4096).
    pub io_unit: u32,
}

impl Default for FakeGeometry {
    fn default() -> FakeGeometry {
        FakeGeometry {
            size: 1 << 30,
            cluster_size: 64 << 10,
            io_unit: 4096,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct BlobMd {
    clusters: Vec<u64>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Geometry {
        clusters: u64,
        cluster_size: u64,
        io_unit: u32,
        bstype: [u8; 16],
    },
    Md {
        id: BlobId,
        md: BlobMd,
    },
    Deleted {
        id: BlobId,
    },
}

struct State {
    /// Every blob's current metadata (what an open blob sees).
    blobs: BTreeMap<BlobId, BlobMd>,
    /// Every blob's metadata as the log holds it.
    synced: BTreeMap<BlobId, BlobMd>,
    open: BTreeSet<BlobId>,
    /// Clusters in use by a current or a synced blob's metadata.
    used: BTreeSet<u64>,
    next_id: BlobId,
    log: File,
    data: File,
    unloaded: bool,
    /// Op -> (errno kind, calls to fail, successful calls to let through first).
    faults: HashMap<&'static str, (BsErrorKind, u32, u32)>,
}

/// The in-process blobstore. See the module documentation.
pub struct FakeBlobstore {
    path: PathBuf,
    clusters: u64,
    cluster_size: u64,
    io_unit: u32,
    bstype: [u8; 16],
    state: Mutex<State>,
}

fn md_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".md");
    PathBuf::from(s)
}

fn io_err(op: &'static str, e: &std::io::Error) -> BsError {
    log::warn!("fake blobstore: {op}: {e}");
    BsError::from_errno(op, e.raw_os_error().unwrap_or(libc::EIO))
}

fn append(log: &mut File, rec: &Record) -> BsResult<()> {
    let body = serde_json::to_vec(rec).map_err(|_| BsError::new("md log", BsErrorKind::Invalid))?;
    let len =
        u32::try_from(body.len()).map_err(|_| BsError::new("md log", BsErrorKind::NoMemory))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    log.write_all(&buf).map_err(|e| io_err("md log", &e))
}

impl FakeBlobstore {
    /// Creates a new blobstore in `image` (and `image.md`) with BlobFS's blobstore type.
    /// Fails with `EEXIST` if the image exists.
    pub fn create(image: &Path, geometry: FakeGeometry) -> BsResult<FakeBlobstore> {
        let io_unit = geometry.io_unit;
        if !(io_unit == 512 || io_unit == 4096)
            || geometry.cluster_size == 0
            || !geometry.cluster_size.is_multiple_of(u64::from(io_unit))
        {
            return Err(BsError::new("spdk_bs_init", BsErrorKind::Invalid));
        }
        let clusters = geometry.size / geometry.cluster_size;
        if clusters == 0 {
            return Err(BsError::new("spdk_bs_init", BsErrorKind::NoSpace));
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(image)
            .map_err(|e| io_err("spdk_bs_init", &e))?;
        data.set_len(clusters * geometry.cluster_size)
            .map_err(|e| io_err("spdk_bs_init", &e))?;
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(md_path(image))
            .map_err(|e| io_err("spdk_bs_init", &e))?;
        log.set_len(0).map_err(|e| io_err("spdk_bs_init", &e))?;
        append(
            &mut log,
            &Record::Geometry {
                clusters,
                cluster_size: geometry.cluster_size,
                io_unit,
                bstype: BSTYPE_BLOBFS,
            },
        )?;
        log.sync_all().map_err(|e| io_err("spdk_bs_init", &e))?;
        data.sync_all().map_err(|e| io_err("spdk_bs_init", &e))?;
        Ok(FakeBlobstore {
            path: image.to_owned(),
            clusters,
            cluster_size: geometry.cluster_size,
            io_unit,
            bstype: BSTYPE_BLOBFS,
            state: Mutex::new(State {
                blobs: BTreeMap::new(),
                synced: BTreeMap::new(),
                open: BTreeSet::new(),
                used: BTreeSet::new(),
                next_id: 1,
                log,
                data,
                unloaded: false,
                faults: HashMap::new(),
            }),
        })
    }

    /// Loads the blobstore in `image`: the synced metadata of every blob, nothing else.
    pub fn load(image: &Path) -> BsResult<FakeBlobstore> {
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(|e| io_err("spdk_bs_load", &e))?;
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .open(md_path(image))
            .map_err(|e| io_err("spdk_bs_load", &e))?;
        let mut bytes = Vec::new();
        log.seek(SeekFrom::Start(0))
            .and_then(|_| log.read_to_end(&mut bytes))
            .map_err(|e| io_err("spdk_bs_load", &e))?;
        let mut geometry = None;
        let mut synced: BTreeMap<BlobId, BlobMd> = BTreeMap::new();
        let mut max_id = 0;
        let mut pos = 0usize;
        while let Some(len_bytes) = bytes.get(pos..pos + 4) {
            let mut l = [0u8; 4];
            l.copy_from_slice(len_bytes);
            let len = u32::from_le_bytes(l) as usize;
            let Some(body) = bytes.get(pos + 4..pos + 4 + len) else {
                break;
            };
            let Ok(rec) = serde_json::from_slice::<Record>(body) else {
                break;
            };
            match rec {
                Record::Geometry {
                    clusters,
                    cluster_size,
                    io_unit,
                    bstype,
                } => geometry = Some((clusters, cluster_size, io_unit, bstype)),
                Record::Md { id, md } => {
                    max_id = max_id.max(id);
                    synced.insert(id, md);
                }
                Record::Deleted { id } => {
                    max_id = max_id.max(id);
                    synced.remove(&id);
                }
            }
            pos += 4 + len;
        }
        let Some((clusters, cluster_size, io_unit, bstype)) = geometry else {
            log::warn!("fake blobstore {}: no super block", image.display());
            return Err(BsError::new("spdk_bs_load", BsErrorKind::Invalid));
        };
        if pos < bytes.len() {
            log::info!(
                "fake blobstore {}: cutting a torn metadata record ({} bytes)",
                image.display(),
                bytes.len() - pos
            );
            log.set_len(pos as u64)
                .map_err(|e| io_err("spdk_bs_load", &e))?;
        }
        let mut used = BTreeSet::new();
        for md in synced.values() {
            for &c in &md.clusters {
                if c >= clusters || !used.insert(c) {
                    log::warn!(
                        "fake blobstore {}: cluster {c} claimed twice",
                        image.display()
                    );
                    return Err(BsError::new(
                        "spdk_bs_load",
                        BsErrorKind::Other(libc::EUCLEAN),
                    ));
                }
            }
        }
        Ok(FakeBlobstore {
            path: image.to_owned(),
            clusters,
            cluster_size,
            io_unit,
            bstype,
            state: Mutex::new(State {
                blobs: synced.clone(),
                synced,
                open: BTreeSet::new(),
                used,
                next_id: max_id + 1,
                log,
                data,
                unloaded: false,
                faults: HashMap::new(),
            }),
        })
    }

    /// Loads `image` if it exists, else creates it with `geometry`.
    pub fn open_or_create(image: &Path, geometry: FakeGeometry) -> BsResult<FakeBlobstore> {
        if image.exists() {
            FakeBlobstore::load(image)
        } else {
            FakeBlobstore::create(image, geometry)
        }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the next `times` calls of `op` (an SPDK function name such as
    /// `"spdk_blob_resize"`, `"spdk_blob_io_write"`, `"spdk_bs_create_blob"`,
    /// `"spdk_blob_sync_md"`) fail with `kind`.
    pub fn inject(&self, op: &'static str, kind: BsErrorKind, times: u32) {
        self.inject_after(op, 0, kind, times);
    }

    /// Like [`FakeBlobstore::inject`], after `skip` calls of `op` that succeed.
    pub fn inject_after(&self, op: &'static str, skip: u32, kind: BsErrorKind, times: u32) {
        self.state.lock().faults.insert(op, (kind, times, skip));
    }

    /// Whether blob `id` is open (for tests).
    pub fn is_open(&self, id: BlobId) -> bool {
        self.state.lock().open.contains(&id)
    }
}

impl State {
    fn check(&mut self, op: &'static str) -> BsResult<()> {
        if self.unloaded {
            return Err(BsError::new(op, BsErrorKind::Other(libc::ENODEV)));
        }
        if let Some((kind, times, skip)) = self.faults.get_mut(op) {
            if *skip > 0 {
                *skip -= 1;
                return Ok(());
            }
            let kind = *kind;
            *times -= 1;
            if *times == 0 {
                self.faults.remove(op);
            }
            return Err(BsError::new(op, kind));
        }
        Ok(())
    }

    fn open_md(&mut self, op: &'static str, id: BlobId) -> BsResult<&mut BlobMd> {
        if !self.open.contains(&id) {
            return Err(BsError::new(op, BsErrorKind::NotFound));
        }
        self.blobs
            .get_mut(&id)
            .ok_or(BsError::new(op, BsErrorKind::NotFound))
    }

    fn recompute_used(&mut self) {
        self.used = self
            .blobs
            .values()
            .chain(self.synced.values())
            .flat_map(|m| m.clusters.iter().copied())
            .collect();
    }
}

fn check_xattr(op: &'static str, name: &str, value: &[u8]) -> BsResult<()> {
    if XATTR_DESC_HEADER + name.len() + value.len() > MAX_XATTR_DESC {
        return Err(BsError::new(op, BsErrorKind::NoMemory));
    }
    Ok(())
}

impl FakeBlobstore {
    /// The byte range of io units `offset..offset+len/io_unit` of a blob's clusters, split at
    /// cluster boundaries: `(device offset, length)` pieces.
    fn extents(
        &self,
        op: &'static str,
        md: &BlobMd,
        offset: u64,
        len: usize,
    ) -> BsResult<Vec<(u64, usize)>> {
        let unit = u64::from(self.io_unit);
        if !(len as u64).is_multiple_of(unit) {
            return Err(BsError::new(op, BsErrorKind::Invalid));
        }
        let start = offset
            .checked_mul(unit)
            .ok_or(BsError::new(op, BsErrorKind::Invalid))?;
        let end = start + len as u64;
        if end > md.clusters.len() as u64 * self.cluster_size {
            return Err(BsError::new(op, BsErrorKind::Invalid));
        }
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let c = (at / self.cluster_size) as usize;
            let within = at % self.cluster_size;
            let n = (self.cluster_size - within).min(end - at);
            out.push((md.clusters[c] * self.cluster_size + within, n as usize));
            at += n;
        }
        Ok(out)
    }
}

impl BlobOps for FakeBlobstore {
    fn io_unit_size(&self) -> u32 {
        self.io_unit
    }

    fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn total_clusters(&self) -> u64 {
        self.clusters
    }

    fn free_clusters(&self) -> u64 {
        self.clusters - self.state.lock().used.len() as u64
    }

    fn bstype(&self) -> [u8; 16] {
        self.bstype
    }

    fn create_blob(&self, xattrs: &[(&str, &[u8])]) -> BsResult<BlobId> {
        const OP: &str = "spdk_bs_create_blob";
        let mut st = self.state.lock();
        st.check(OP)?;
        let mut md = BlobMd::default();
        for (name, value) in xattrs {
            check_xattr(OP, name, value)?;
            md.xattrs.insert((*name).to_owned(), value.to_vec());
        }
        let id = st.next_id;
        st.next_id += 1;
        let rec = Record::Md { id, md: md.clone() };
        append(&mut st.log, &rec)?;
        st.blobs.insert(id, md.clone());
        st.synced.insert(id, md);
        Ok(id)
    }

    fn open_blob(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_bs_open_blob";
        let mut st = self.state.lock();
        st.check(OP)?;
        if !st.blobs.contains_key(&id) {
            return Err(BsError::new(OP, BsErrorKind::NotFound));
        }
        st.open.insert(id);
        Ok(())
    }

    fn close_blob(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_blob_close";
        let mut st = self.state.lock();
        st.check(OP)?;
        if !st.open.contains(&id) {
            return Err(BsError::new(OP, BsErrorKind::NotFound));
        }
        // Closing syncs the metadata, as spdk_blob_close does for a dirty blob.
        let md = st.open_md(OP, id)?.clone();
        if st.synced.get(&id) != Some(&md) {
            append(&mut st.log, &Record::Md { id, md: md.clone() })?;
            st.synced.insert(id, md);
            st.recompute_used();
        }
        st.open.remove(&id);
        Ok(())
    }

    fn delete_blob(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_bs_delete_blob";
        let mut st = self.state.lock();
        st.check(OP)?;
        if st.open.contains(&id) {
            return Err(BsError::new(OP, BsErrorKind::Busy));
        }
        if !st.blobs.contains_key(&id) {
            return Err(BsError::new(OP, BsErrorKind::NotFound));
        }
        append(&mut st.log, &Record::Deleted { id })?;
        st.blobs.remove(&id);
        st.synced.remove(&id);
        st.recompute_used();
        Ok(())
    }

    fn blob_ids(&self) -> BsResult<Vec<BlobId>> {
        let mut st = self.state.lock();
        st.check("spdk_bs_iter_first")?;
        Ok(st.blobs.keys().copied().collect())
    }

    fn resize(&self, id: BlobId, clusters: u64) -> BsResult<()> {
        const OP: &str = "spdk_blob_resize";
        let mut st = self.state.lock();
        st.check(OP)?;
        let have = st.open_md(OP, id)?.clusters.len() as u64;
        if clusters > have {
            let need = clusters - have;
            let free: Vec<u64> = (0..self.clusters)
                .filter(|c| !st.used.contains(c))
                .take(need as usize)
                .collect();
            if (free.len() as u64) < need {
                return Err(BsError::new(OP, BsErrorKind::NoSpace));
            }
            st.used.extend(free.iter().copied());
            st.open_md(OP, id)?.clusters.extend(free);
        } else {
            st.open_md(OP, id)?.clusters.truncate(clusters as usize);
            st.recompute_used();
        }
        Ok(())
    }

    fn num_clusters(&self, id: BlobId) -> BsResult<u64> {
        let mut st = self.state.lock();
        Ok(st.open_md("spdk_blob_get_num_clusters", id)?.clusters.len() as u64)
    }

    fn write(&self, id: BlobId, offset: u64, data: &[u8]) -> BsResult<()> {
        const OP: &str = "spdk_blob_io_write";
        let mut st = self.state.lock();
        st.check(OP)?;
        let md = st.open_md(OP, id)?.clone();
        let mut done = 0;
        for (at, n) in self.extents(OP, &md, offset, data.len())? {
            st.data
                .write_all_at(&data[done..done + n], at)
                .map_err(|e| io_err(OP, &e))?;
            done += n;
        }
        Ok(())
    }

    fn read(&self, id: BlobId, offset: u64, buf: &mut [u8]) -> BsResult<()> {
        const OP: &str = "spdk_blob_io_read";
        let mut st = self.state.lock();
        st.check(OP)?;
        let md = st.open_md(OP, id)?.clone();
        let mut done = 0;
        for (at, n) in self.extents(OP, &md, offset, buf.len())? {
            st.data
                .read_exact_at(&mut buf[done..done + n], at)
                .map_err(|e| io_err(OP, &e))?;
            done += n;
        }
        Ok(())
    }

    fn set_xattr(&self, id: BlobId, name: &str, value: &[u8]) -> BsResult<()> {
        const OP: &str = "spdk_blob_set_xattr";
        let mut st = self.state.lock();
        st.check(OP)?;
        check_xattr(OP, name, value)?;
        st.open_md(OP, id)?
            .xattrs
            .insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn get_xattr(&self, id: BlobId, name: &str) -> BsResult<Option<Vec<u8>>> {
        let mut st = self.state.lock();
        Ok(st
            .open_md("spdk_blob_get_xattr_value", id)?
            .xattrs
            .get(name)
            .cloned())
    }

    fn remove_xattr(&self, id: BlobId, name: &str) -> BsResult<()> {
        const OP: &str = "spdk_blob_remove_xattr";
        let mut st = self.state.lock();
        st.check(OP)?;
        st.open_md(OP, id)?.xattrs.remove(name);
        Ok(())
    }

    fn sync_md(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_blob_sync_md";
        let mut st = self.state.lock();
        st.check(OP)?;
        let md = st.open_md(OP, id)?.clone();
        append(&mut st.log, &Record::Md { id, md: md.clone() })?;
        st.synced.insert(id, md);
        st.recompute_used();
        Ok(())
    }

    fn flush(&self) -> BsResult<()> {
        const OP: &str = "spdk_bdev_flush";
        let mut st = self.state.lock();
        st.check(OP)?;
        st.data.sync_data().map_err(|e| io_err(OP, &e))?;
        st.log.sync_data().map_err(|e| io_err(OP, &e))
    }

    fn unload(&self) -> BsResult<()> {
        let st = self.state.lock();
        if st.unloaded {
            return Ok(());
        }
        let open: Vec<BlobId> = st.open.iter().copied().collect();
        drop(st);
        for id in open {
            self.close_blob(id)?;
        }
        self.flush()?;
        self.state.lock().unloaded = true;
        Ok(())
    }
}
