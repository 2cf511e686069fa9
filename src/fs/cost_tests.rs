//! What the requests the kernel sends around a create and an unlink cost the index and the
//! store: transactions counted, on a store dsfs owns and on flatfs (a store others may write).

use std::sync::Arc;

use super::*;
use crate::backend::MemStore;
use crate::backend::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use crate::backend::tiered::{TieredOptions, TieredStore};
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

/// On the default repository's store (tiered: small values in redb), the close of a new file,
/// empty or small, puts its value with no redb write transaction: the put waits in the store's
/// memory for its next write transaction or durable commit (it was a write transaction of the
/// record store at every close). So the create and close of an empty file cost one redb write
/// transaction in all, the index's create.
#[test]
fn create_and_close_of_a_new_small_file_costs_the_store_no_write_transaction() {
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
    // The first create of a directory's file may record the directory: count from the second.
    create_close(&fs, ROOT, b"first");
    for (i, body) in [&b""[..], b"x", &[7u8; 4096][..]].into_iter().enumerate() {
        let name = format!("f{i}");
        let (index, values) = (fs.index.write_count(), store.write_count());
        let (attr, o) = fs
            .create(CTX, ROOT, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
            .unwrap();
        if !body.is_empty() {
            fs.write(o.fh, 0, body).unwrap();
        }
        fs.flush(o.fh).unwrap();
        fs.release(o.fh).unwrap();
        let what = format!("create+close of a {}-byte file", body.len());
        assert_eq!(store.write_count() - values, 0, "{what}: store");
        if body.is_empty() {
            assert_eq!(fs.index.write_count() - index, 1, "{what}: index");
        }
        let o = fs.open(attr.ino, libc::O_RDONLY).unwrap();
        assert_eq!(fs.read(o.fh, 0, 8192).unwrap(), body);
        fs.release(o.fh).unwrap();
        assert_eq!(fs.getattr(attr.ino).unwrap().size, body.len() as u64);
    }
    // They are durable once synced: the reopened store has them.
    fs.store.sync(&Key::root()).unwrap();
    drop(fs);
    drop(store);
    let store = open();
    assert_eq!(store.get(&Key::new("/f0")).unwrap(), b"");
    assert_eq!(store.get(&Key::new("/f1")).unwrap(), b"x");
    assert_eq!(store.get(&Key::new("/f2")).unwrap(), vec![7u8; 4096]);
}
