//! What the requests the kernel sends around a create and an unlink cost the index: read
//! transactions counted, on a store dsfs owns and on flatfs (a store others may write).

use std::sync::Arc;

use super::*;
use crate::backend::MemStore;
use crate::backend::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use crate::index::{IndexOptions, ROOT};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

fn fs_over(backend: Arc<dyn Datastore>) -> DsFs {
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(backend, index));
    DsFs::new(store, FsOptions::default())
}

fn create_close(fs: &DsFs, parent: u64, name: &[u8]) -> u64 {
    let (attr, o) = fs
        .create(
            CTX,
            parent,
            name,
            0o644,
            0o022,
            libc::O_WRONLY | libc::O_EXCL,
        )
        .unwrap();
    fs.flush(o.fh).unwrap();
    fs.release(o.fh).unwrap();
    attr.ino
}

/// The kernel asks for a directory's attributes after every create and unlink in it: they
/// come from the record the create or unlink wrote, with no read transaction, and say what
/// a read of the index says.
#[test]
fn getattr_of_a_directory_after_a_create_or_unlink_in_it_reads_nothing() {
    let fs = fs_over(Arc::new(MemStore::new()));
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap().ino;
    for (parent, name) in [(ROOT, &b"F"[..]), (d, &b"g"[..])] {
        create_close(&fs, parent, name);
        let before = fs.index.read_count();
        let attr = fs.getattr(parent).unwrap();
        assert_eq!(fs.index.read_count() - before, 0, "getattr after create");
        let stored = fs.index.dir_lookup(parent, None, false).unwrap().dir;
        let want = fs.attr_of(parent, &stored);
        assert_eq!(
            (attr.mtime, attr.ctime, attr.perm),
            (want.mtime, want.ctime, want.perm)
        );
        fs.unlink(parent, name).unwrap();
        let before = fs.index.read_count();
        let attr = fs.getattr(parent).unwrap();
        assert_eq!(fs.index.read_count() - before, 0, "getattr after unlink");
        let stored = fs.index.dir_lookup(parent, None, false).unwrap().dir;
        let want = fs.attr_of(parent, &stored);
        assert_eq!(
            (attr.mtime, attr.ctime, attr.perm),
            (want.mtime, want.ctime, want.perm)
        );
    }
}

/// On the default repository's store (tiered), the close of a new small or empty file puts
/// its record into the records store's pending set, not through a redb write transaction of
/// its own (one per close before: the counts were 1 each here); a sync writes the records and
/// a reopened store has them.
#[test]
fn the_close_of_a_new_small_file_costs_the_records_store_no_write_transaction() {
    use crate::backend::tiered::{TieredOptions, TieredStore};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        TieredStore::open(
            &dir.path().join("records.redb"),
            &dir.path().join("files"),
            TieredOptions::default(),
        )
        .unwrap()
    };
    let store = Arc::new(open());
    let fs = fs_over(store.clone());
    let bodies: [&[u8]; 3] = [b"", b"small", &[9u8; 3000]];
    for (i, body) in bodies.into_iter().enumerate() {
        let name = format!("f{i}");
        let before = store.records_write_count();
        let (_, o) = fs
            .create(CTX, ROOT, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
            .unwrap();
        if !body.is_empty() {
            fs.write(o.fh, 0, body).unwrap();
        }
        fs.flush(o.fh).unwrap();
        fs.release(o.fh).unwrap();
        assert_eq!(
            store.records_write_count() - before,
            0,
            "create+close of a {}-byte file",
            body.len()
        );
        assert_eq!(store.get(&Key::new(format!("/{name}"))).unwrap(), body);
    }
    fs.store.sync(&Key::root()).unwrap();
    drop(fs);
    drop(store);
    let store = open();
    for (i, body) in bodies.into_iter().enumerate() {
        assert_eq!(store.get(&Key::new(format!("/f{i}"))).unwrap(), body);
    }
}

/// On flatfs, a lookup of a name is one read transaction, whether the name is missing (the
/// store is then asked whether another program added it) or there.
#[test]
fn a_lookup_on_flatfs_is_one_read_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        FlatFsStore::create_or_open(dir.path(), ShardFn::NextToLast(2), FlatFsOptions::default())
            .unwrap();
    let fs = fs_over(Arc::new(store));
    assert!(fs.store.follows());
    let reads = || fs.index.read_count();
    let before = reads();
    assert!(matches!(fs.lookup(ROOT, b"NEW"), Err(FsError::NotFound)));
    assert_eq!(reads() - before, 1, "lookup of a missing name");
    let ino = create_close(&fs, ROOT, b"NEW");
    let before = reads();
    assert_eq!(fs.lookup(ROOT, b"NEW").unwrap().ino, ino);
    assert_eq!(reads() - before, 1, "lookup of an existing name");
}
