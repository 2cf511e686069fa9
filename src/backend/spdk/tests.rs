//! The store's own logic against the in-process blobstore: BlobFS's layout, atomic replace
//! across a crash, leftovers, errors.

use std::sync::Arc;

use super::fake::{FakeBlobstore, FakeGeometry};
use super::ops::{BlobOps, BsErrorKind};
use super::*;

fn geometry(size: u64) -> FakeGeometry {
    FakeGeometry {
        size,
        cluster_size: 16 << 10,
        io_unit: 512,
    }
}

fn open(dir: &std::path::Path) -> (SpdkStore, Arc<FakeBlobstore>, Recovery) {
    let bs =
        Arc::new(FakeBlobstore::open_or_create(&dir.join("bs.img"), geometry(64 << 20)).unwrap());
    let (store, rec) = SpdkStore::open(bs.clone(), dir.to_owned()).unwrap();
    (store, bs, rec)
}

/// A crash: the store and its blobstore go away without closing or unloading.
fn crash(store: SpdkStore, bs: Arc<FakeBlobstore>) {
    std::mem::forget(store);
    drop(bs);
}

fn k(s: &str) -> Key {
    Key::new(s)
}

#[test]
fn values_are_blobfs_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let value: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    store.put(&k("/blocks/CIQA"), &value).unwrap();
    let long = k(&format!("/{}", "n".repeat(600)));
    store.put(&long, b"long name").unwrap();
    // Every blob carries a NUL-terminated name of at most 255 bytes and an 8-byte length,
    // and its data from byte 0: what BlobFS's load and read expect.
    let mut seen = Vec::new();
    for id in bs.blob_ids().unwrap() {
        let name = bs.get_xattr(id, "name").unwrap().unwrap();
        assert_eq!(name.last(), Some(&0));
        assert!(name.len() - 1 <= names::NAME_MAX);
        let len = u64_xattr(bs.get_xattr(id, "length").unwrap()).unwrap();
        let mut data = vec![0u8; (len as usize).div_ceil(512) * 512];
        bs.read(id, 0, &mut data).unwrap();
        data.truncate(len as usize);
        seen.push((
            String::from_utf8(name[..name.len() - 1].to_vec()).unwrap(),
            data,
        ));
    }
    seen.sort();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].0.starts_with(names::HASHED));
    assert_eq!(seen[0].1, b"long name");
    assert_eq!(seen[1], ("/blocks/CIQA".to_owned(), value.clone()));
    assert_eq!(bs.bstype(), ops::BSTYPE_BLOBFS);
    store.close().unwrap();
    drop(store);
    drop(bs);
    let (store, _bs, rec) = open(dir.path());
    assert_eq!(rec, Recovery::default());
    assert_eq!(store.get(&long).unwrap(), b"long name");
    assert_eq!(store.get(&k("/blocks/CIQA")).unwrap(), value);
}

#[test]
fn ranged_reads_cross_io_units_and_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _bs, _) = open(dir.path());
    let value: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
    store.put(&k("/v"), &value).unwrap();
    for (off, len) in [(0, 1), (511, 2), (16383, 3), (16384, 70_000), (99_990, 100)] {
        let mut buf = vec![0u8; len];
        let n = store.read_at(&k("/v"), off as u64, &mut buf).unwrap();
        let want = &value[off..(off + len).min(value.len())];
        assert_eq!(&buf[..n], want, "at {off}");
    }
}

#[test]
fn a_crash_before_the_commit_keeps_the_old_value_and_removes_the_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    store.put(&k("/a"), b"old").unwrap();
    // The commit's metadata sync fails: as a crash right before it, the new blob exists
    // under its temporary name with its data written.
    bs.inject("spdk_blob_sync_md", BsErrorKind::Other(libc::EIO), 1);
    bs.inject("spdk_bs_delete_blob", BsErrorKind::Other(libc::EIO), 1);
    assert!(store.put(&k("/a"), &vec![9u8; 50_000]).is_err());
    assert_eq!(store.get(&k("/a")).unwrap(), b"old");
    let before = bs.blob_ids().unwrap().len();
    assert_eq!(before, 2, "the temporary blob is still there");
    crash(store, bs);
    let (store, bs, rec) = open(dir.path());
    assert_eq!(rec.temporaries, 1);
    assert_eq!(store.get(&k("/a")).unwrap(), b"old");
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
}

#[test]
fn a_crash_after_the_commit_keeps_the_new_value_and_removes_the_old_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    store.put(&k("/a"), b"old").unwrap();
    store.put(&k("/b"), b"bee").unwrap();
    // Deleting the replaced blob fails: as a crash right after the commit point.
    bs.inject("spdk_bs_delete_blob", BsErrorKind::Other(libc::EIO), 1);
    store.put(&k("/a"), b"new").unwrap();
    assert_eq!(bs.blob_ids().unwrap().len(), 3);
    crash(store, bs);
    let (store, bs, rec) = open(dir.path());
    assert_eq!(rec.superseded, 1);
    assert_eq!(store.get(&k("/a")).unwrap(), b"new");
    assert_eq!(store.get(&k("/b")).unwrap(), b"bee");
    assert_eq!(bs.blob_ids().unwrap().len(), 2);
}

#[test]
fn unsynced_metadata_is_lost_in_a_crash_and_its_clusters_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let bs = FakeBlobstore::create(&dir.path().join("bs.img"), geometry(1 << 20)).unwrap();
    let free = bs.free_clusters();
    let id = bs.create_blob(&[("name", b"/x\0")]).unwrap();
    bs.open_blob(id).unwrap();
    bs.resize(id, 10).unwrap();
    bs.set_xattr(id, "length", &5u64.to_ne_bytes()).unwrap();
    assert_eq!(bs.free_clusters(), free - 10);
    drop(bs);
    let bs = FakeBlobstore::load(&dir.path().join("bs.img")).unwrap();
    assert_eq!(bs.free_clusters(), free);
    bs.open_blob(id).unwrap();
    assert_eq!(bs.num_clusters(id).unwrap(), 0);
    assert_eq!(bs.get_xattr(id, "length").unwrap(), None);
    assert_eq!(bs.get_xattr(id, "name").unwrap().unwrap(), b"/x\0");
}

#[test]
fn no_space_leaves_the_old_value_and_frees_the_new_blob() {
    let dir = tempfile::tempdir().unwrap();
    let bs =
        Arc::new(FakeBlobstore::create(&dir.path().join("bs.img"), geometry(256 << 10)).unwrap());
    let (store, _) = SpdkStore::open(bs.clone(), dir.path().to_owned()).unwrap();
    store.put(&k("/a"), &[1u8; 100_000]).unwrap();
    let free = store.space().unwrap().unwrap().free;
    let err = store.put(&k("/b"), &[2u8; 300_000]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert_eq!(store.space().unwrap().unwrap().free, free);
    assert_eq!(store.get(&k("/a")).unwrap(), vec![1u8; 100_000]);
    assert!(!store.has(&k("/b")).unwrap());
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
    // A replacement that does not fit fails the same way and keeps the old value.
    assert_eq!(
        store.put(&k("/a"), &[3u8; 200_000]).unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    assert_eq!(store.get(&k("/a")).unwrap(), vec![1u8; 100_000]);
}

#[test]
fn no_memory_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    bs.inject("spdk_blob_io_write", BsErrorKind::NoMemory, 3);
    store.put(&k("/a"), b"after three ENOMEM").unwrap();
    assert_eq!(store.get(&k("/a")).unwrap(), b"after three ENOMEM");
    bs.inject("spdk_blob_io_write", BsErrorKind::NoMemory, 1000);
    let err = store.put(&k("/a"), b"never").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(store.get(&k("/a")).unwrap(), b"after three ENOMEM");
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
}

#[test]
fn rename_moves_the_blob_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let long = k(&format!("/{}", "r".repeat(300)));
    store.put(&k("/from"), b"value").unwrap();
    store.put(&long, b"replaced").unwrap();
    store.rename(&k("/from"), &long).unwrap();
    assert!(!store.has(&k("/from")).unwrap());
    assert_eq!(store.get(&long).unwrap(), b"value");
    store.rename(&long, &k("/short")).unwrap();
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
    crash(store, bs);
    let (store, _bs, rec) = open(dir.path());
    assert_eq!(rec, Recovery::default());
    assert_eq!(store.get(&k("/short")).unwrap(), b"value");
    assert!(!store.has(&long).unwrap());
}

#[test]
fn blobfs_files_with_foreign_names_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bs =
        Arc::new(FakeBlobstore::create(&dir.path().join("bs.img"), geometry(1 << 20)).unwrap());
    // As BlobFS writes them: a plain name, one that is no clean key, one deleted while open.
    let len = 3u64.to_ne_bytes();
    for (name, extra) in [
        (&b"/dir/file\0"[..], None),
        (b"noslash\0", None),
        (b"/gone\0", Some(("is_deleted", &[1u8][..]))),
    ] {
        let mut x: Vec<(&str, &[u8])> = vec![("name", name), ("length", &len)];
        x.extend(extra);
        let id = bs.create_blob(&x).unwrap();
        bs.open_blob(id).unwrap();
        bs.resize(id, 1).unwrap();
        let mut data = vec![0u8; 512];
        data[..3].copy_from_slice(b"abc");
        bs.write(id, 0, &data).unwrap();
        bs.sync_md(id).unwrap();
        bs.close_blob(id).unwrap();
    }
    let (store, rec) = SpdkStore::open(bs.clone(), dir.path().to_owned()).unwrap();
    assert_eq!((rec.foreign, rec.deleted), (1, 1));
    assert_eq!(store.get(&k("/dir/file")).unwrap(), b"abc");
    let keys: Vec<String> = store
        .query(Query::default())
        .unwrap()
        .map(|e| e.unwrap().key.into_string())
        .collect();
    assert_eq!(keys, vec!["/dir/file".to_owned()]);
    assert_eq!(bs.blob_ids().unwrap().len(), 2);
}

#[test]
fn another_blobstore_type_is_refused() {
    // The fake always formats as BLOBFS; a store over a blobstore reporting another type is
    // refused before anything is read, as BlobFS refuses it.
    struct Other(FakeBlobstore);
    impl BlobOps for Other {
        fn io_unit_size(&self) -> u32 {
            self.0.io_unit_size()
        }
        fn cluster_size(&self) -> u64 {
            self.0.cluster_size()
        }
        fn total_clusters(&self) -> u64 {
            self.0.total_clusters()
        }
        fn free_clusters(&self) -> u64 {
            self.0.free_clusters()
        }
        fn bstype(&self) -> [u8; 16] {
            *b"LVOLSTORE\0\0\0\0\0\0\0"
        }
        fn create_blob(&self, x: &[(&str, &[u8])]) -> ops::BsResult<BlobId> {
            self.0.create_blob(x)
        }
        fn open_blob(&self, id: BlobId) -> ops::BsResult<()> {
            self.0.open_blob(id)
        }
        fn close_blob(&self, id: BlobId) -> ops::BsResult<()> {
            self.0.close_blob(id)
        }
        fn delete_blob(&self, id: BlobId) -> ops::BsResult<()> {
            self.0.delete_blob(id)
        }
        fn blob_ids(&self) -> ops::BsResult<Vec<BlobId>> {
            self.0.blob_ids()
        }
        fn resize(&self, id: BlobId, c: u64) -> ops::BsResult<()> {
            self.0.resize(id, c)
        }
        fn num_clusters(&self, id: BlobId) -> ops::BsResult<u64> {
            self.0.num_clusters(id)
        }
        fn write(&self, id: BlobId, o: u64, d: &[u8]) -> ops::BsResult<()> {
            self.0.write(id, o, d)
        }
        fn read(&self, id: BlobId, o: u64, b: &mut [u8]) -> ops::BsResult<()> {
            self.0.read(id, o, b)
        }
        fn set_xattr(&self, id: BlobId, n: &str, v: &[u8]) -> ops::BsResult<()> {
            self.0.set_xattr(id, n, v)
        }
        fn get_xattr(&self, id: BlobId, n: &str) -> ops::BsResult<Option<Vec<u8>>> {
            self.0.get_xattr(id, n)
        }
        fn remove_xattr(&self, id: BlobId, n: &str) -> ops::BsResult<()> {
            self.0.remove_xattr(id, n)
        }
        fn sync_md(&self, id: BlobId) -> ops::BsResult<()> {
            self.0.sync_md(id)
        }
        fn flush(&self) -> ops::BsResult<()> {
            self.0.flush()
        }
        fn unload(&self) -> ops::BsResult<()> {
            self.0.unload()
        }
    }
    let dir2 = tempfile::tempdir().unwrap();
    let other =
        Other(FakeBlobstore::create(&dir2.path().join("bs.img"), geometry(1 << 20)).unwrap());
    let err = SpdkStore::open(Arc::new(other), dir2.path().to_owned())
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn a_torn_metadata_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    store.put(&k("/a"), b"kept").unwrap();
    crash(store, bs);
    let md = dir.path().join("bs.img.md");
    let mut bytes = std::fs::read(&md).unwrap();
    bytes.extend_from_slice(&200u32.to_le_bytes());
    bytes.extend_from_slice(b"{\"Md\":{\"id\":9");
    std::fs::write(&md, &bytes).unwrap();
    let (store, _bs, _) = open(dir.path());
    assert_eq!(store.get(&k("/a")).unwrap(), b"kept");
    store.put(&k("/b"), b"after").unwrap();
    store.close().unwrap();
    drop(store);
    let (store, _bs, _) = open(dir.path());
    assert_eq!(store.get(&k("/b")).unwrap(), b"after");
}

#[test]
fn a_failed_rename_leaves_the_value_under_its_old_key_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    store.put(&k("/from"), b"value").unwrap();
    bs.inject("spdk_blob_sync_md", BsErrorKind::Other(libc::EIO), 1);
    assert!(store.rename(&k("/from"), &k("/to")).is_err());
    assert_eq!(store.get(&k("/from")).unwrap(), b"value");
    // Closing syncs the blob's metadata: the name it carries then is the old one.
    store.close().unwrap();
    drop(store);
    drop(bs);
    let (store, _bs, _) = open(dir.path());
    assert_eq!(store.get(&k("/from")).unwrap(), b"value");
    assert!(!store.has(&k("/to")).unwrap());
}

/// A 2 MiB value with a pattern.
fn big(seed: u32) -> Vec<u8> {
    (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Stages `writes` over `key`'s current value; returns the staged value and the model.
fn stage_writes(store: &SpdkStore, key: &Key, writes: &[(u64, &[u8])]) -> (Staged, Vec<u8>) {
    let mut model = store.get(key).unwrap();
    let staged = store.stage(key, StageInit::CopyCurrent).unwrap();
    for (at, data) in writes {
        staged.write_all_at(*at, data).unwrap();
        let end = *at as usize + data.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[*at as usize..end].copy_from_slice(data);
    }
    (staged, model)
}

fn blob_of(store: &SpdkStore, key: &Key) -> BlobId {
    store.inner.slot(key).unwrap().blob
}

#[test]
fn random_writes_into_a_big_value_are_committed_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let key = k("/big");
    store.put(&key, &big(1)).unwrap();
    let blob = blob_of(&store, &key);
    let (staged, model) = stage_writes(
        &store,
        &key,
        &[
            (4096, &[7u8; 4096]),
            (1_000_001, b"abc"),
            (2_097_000, &[9u8; 100]),
        ],
    );
    // The overlay reads the blob in place: the clean bytes are those of the value.
    let mut buf = vec![0u8; 10];
    staged.read_at(100_000, &mut buf).unwrap();
    assert_eq!(buf, model[100_000..100_010]);
    store.commit_staged(&key, staged, true).unwrap();
    // The same blob, changed in place; no record left; the value is the model's.
    assert_eq!(blob_of(&store, &key), blob);
    assert_eq!(bs.blob_ids().unwrap(), vec![blob]);
    assert_eq!(store.get(&key).unwrap(), model);
    assert_eq!(store.get_size(&key).unwrap(), model.len() as u64);
    store.close().unwrap();
    drop(store);
    drop(bs);
    let (store, _bs, rec) = open(dir.path());
    assert_eq!(rec, Recovery::default());
    assert_eq!(store.get(&key).unwrap(), model);
}

#[test]
fn overlays_commit_like_copies_under_random_writes_truncations_and_growth() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _bs, _) = open(dir.path());
    let key = k("/model");
    let mut model = big(2);
    store.put(&key, &model).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..30 {
        let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
        for _ in 0..1 + next(6) {
            match next(10) {
                0 => {
                    let len = model.len() as u64 - next(model.len() as u64 / 8 + 1);
                    staged.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                1 => {
                    let len = model.len() as u64 + next(70_000);
                    staged.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                _ => {
                    let at = next(model.len() as u64 + 5000) as usize;
                    let data: Vec<u8> = (0..1 + next(9000)).map(|i| (i + round) as u8).collect();
                    staged.write_all_at(at as u64, &data).unwrap();
                    if model.len() < at + data.len() {
                        model.resize(at + data.len(), 0);
                    }
                    model[at..at + data.len()].copy_from_slice(&data);
                }
            }
        }
        store.commit_staged(&key, staged, false).unwrap();
        assert_eq!(store.get(&key).unwrap(), model, "round {round}");
    }
    store.close().unwrap();
    drop(store);
    let (store, _bs, _) = open(dir.path());
    assert_eq!(store.get(&key).unwrap(), model);
}

#[test]
fn a_crash_after_the_redo_commit_point_is_replayed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let key = k("/big");
    let old = big(3);
    store.put(&key, &old).unwrap();
    let (staged, model) = stage_writes(&store, &key, &[(0, &[1u8; 512]), (600_000, &[2u8; 3000])]);
    // The record takes three writes (two ranges and its header); the first write into the
    // value fails: committed, not applied.
    bs.inject_after("spdk_blob_io_write", 3, BsErrorKind::Other(libc::EIO), 10);
    assert!(store.commit_staged(&key, staged, false).is_err());
    crash(store, bs);
    let (store, bs, rec) = open(dir.path());
    assert_eq!(rec.replayed, 1, "{rec:?}");
    assert_eq!(store.get(&key).unwrap(), model);
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
    // Half applied (one range written) is replayed the same way.
    let (staged, model) = stage_writes(
        &store,
        &key,
        &[(512, &[3u8; 512]), (1_500_000, &[4u8; 700])],
    );
    bs.inject_after("spdk_blob_io_write", 4, BsErrorKind::Other(libc::EIO), 10);
    assert!(store.commit_staged(&key, staged, false).is_err());
    crash(store, bs);
    let (store, _bs, rec) = open(dir.path());
    assert_eq!(rec.replayed, 1, "{rec:?}");
    assert_eq!(store.get(&key).unwrap(), model);
}

#[test]
fn a_failure_before_the_redo_commit_point_keeps_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let key = k("/big");
    let old = big(4);
    store.put(&key, &old).unwrap();
    let (staged, _) = stage_writes(&store, &key, &[(8192, &[5u8; 4096])]);
    // The flush before the record's mark fails, and so does the record's delete.
    bs.inject("spdk_bdev_flush", BsErrorKind::Other(libc::EIO), 1);
    bs.inject("spdk_bs_delete_blob", BsErrorKind::Other(libc::EIO), 1);
    assert!(store.commit_staged(&key, staged, false).is_err());
    assert_eq!(store.get(&key).unwrap(), old);
    crash(store, bs);
    let (store, bs, rec) = open(dir.path());
    assert_eq!(rec.replayed, 0, "{rec:?}");
    assert_eq!(rec.temporaries, 1, "{rec:?}");
    assert_eq!(store.get(&key).unwrap(), old);
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
}

#[test]
fn a_record_whose_value_was_replaced_is_dropped_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let key = k("/big");
    store.put(&key, &big(5)).unwrap();
    let (staged, _) = stage_writes(&store, &key, &[(0, &[1u8; 512])]);
    bs.inject_after("spdk_blob_io_write", 2, BsErrorKind::Other(libc::EIO), 10);
    assert!(store.commit_staged(&key, staged, false).is_err());
    // A put replaces the value (its writes fail until the injection runs out).
    let newer = big(6);
    while store.put(&key, &newer).is_err() {}
    crash(store, bs);
    let (store, _bs, rec) = open(dir.path());
    assert_eq!(rec.replayed, 0, "{rec:?}");
    assert_eq!(store.get(&key).unwrap(), newer);
}

#[test]
fn a_value_deleted_while_staged_stays_readable_through_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bs, _) = open(dir.path());
    let key = k("/big");
    let old = big(7);
    store.put(&key, &old).unwrap();
    let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
    store.delete(&key).unwrap();
    assert!(!store.has(&key).unwrap());
    let mut buf = vec![0u8; 5000];
    staged.read_at(70_000, &mut buf).unwrap();
    assert_eq!(buf, old[70_000..75_000]);
    // A crash now: the pinned blob was renamed temporary, so the key stays deleted.
    let image = dir.path().join("bs.img");
    let copy = dir.path().join("copy.img");
    std::fs::copy(&image, &copy).unwrap();
    std::fs::copy(dir.path().join("bs.img.md"), dir.path().join("copy.img.md")).unwrap();
    {
        let bs2 = Arc::new(FakeBlobstore::load(&copy).unwrap());
        let (s2, rec) = SpdkStore::open(bs2, dir.path().to_owned()).unwrap();
        assert!(!s2.has(&key).unwrap());
        assert_eq!(rec.temporaries, 1, "{rec:?}");
    }
    // Committing the overlay writes the value whole (its base is no longer the key's).
    staged.write_all_at(0, b"new").unwrap();
    store.commit_staged(&key, staged, false).unwrap();
    let mut want = old.clone();
    want[..3].copy_from_slice(b"new");
    assert_eq!(store.get(&key).unwrap(), want);
    // The old blob went with its last reader.
    assert_eq!(bs.blob_ids().unwrap().len(), 1);
}
