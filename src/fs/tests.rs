//! `DsFs` without FUSE: the POSIX semantics over an in-memory store and index.

use std::sync::Arc;

use super::*;
use crate::backend::MemStore;
use crate::index::{IndexOptions, ROOT};

fn fs() -> DsFs {
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(Arc::new(MemStore::new()), index));
    DsFs::new(store, FsOptions::default())
}

pub(super) const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

fn names(fs: &DsFs, dir: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = fs.readdir(dir, offset, 3).unwrap();
        let Some(last) = page.last() else { break };
        offset = last.offset;
        out.extend(page.into_iter().map(|i| i.name));
    }
    out
}

pub(super) fn write_file(fs: &DsFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, opened) = fs
        .create(CTX, parent, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.write(opened.fh, 0, data).unwrap();
    fs.release(opened.fh).unwrap();
    attr.ino
}

fn read_file(fs: &DsFs, ino: u64) -> Vec<u8> {
    let o = fs.open(ino, libc::O_RDONLY).unwrap();
    let data = fs.read(o.fh, 0, 1 << 20).unwrap();
    fs.release(o.fh).unwrap();
    data
}

#[test]
fn created_files_are_keys_with_their_bytes() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"docs", 0o755, 0o022).unwrap();
    let f = write_file(&fs, d.ino, "a.txt", b"hello");
    assert_eq!(read_file(&fs, f), b"hello");
    assert_eq!(fs.store().get(&Key::new("/docs/a.txt")).unwrap(), b"hello");
    let attr = fs.getattr(f).unwrap();
    assert_eq!((attr.size, attr.perm, attr.uid), (5, 0o644, 1000));
    assert_eq!(names(&fs, d.ino), [".", "..", "a.txt"]);
}

#[test]
fn readdir_pages_resume_and_show_escaped_names() {
    let fs = fs();
    fs.store().put(&Key::new("/odd/x\0y"), b"nul").unwrap();
    fs.store().put(&Key::new("/odd/plain"), b"p").unwrap();
    fs.store().put(&Key::new("/odd"), b"own value").unwrap();
    let odd = fs.lookup(ROOT, b"odd").unwrap();
    assert_eq!(odd.kind, FileKind::Dir);
    let mut got = names(&fs, odd.ino);
    got.sort();
    assert_eq!(got, [".", "..", ".dsfs.esc.x%00y", ".dsfs.value", "plain"]);
    let esc = fs.lookup(odd.ino, b".dsfs.esc.x%00y").unwrap();
    assert_eq!(read_file(&fs, esc.ino), b"nul");
    let own = fs.lookup(odd.ino, b".dsfs.value").unwrap();
    assert_eq!(read_file(&fs, own.ino), b"own value");
}

#[test]
fn unlinked_open_files_stay_readable_until_closed() {
    let fs = fs();
    let f = write_file(&fs, ROOT, "f", b"still here");
    let o = fs.open(f, libc::O_RDONLY).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    assert!(matches!(fs.lookup(ROOT, b"f"), Err(FsError::NotFound)));
    assert_eq!(fs.read(o.fh, 0, 100).unwrap(), b"still here");
    fs.release(o.fh).unwrap();
    assert!(!fs.store().has(&Key::new("/f")).unwrap());
}

#[test]
fn writes_are_shared_by_every_handle_and_committed_on_close() {
    let fs = fs();
    let f = write_file(&fs, ROOT, "f", b"0123456789");
    let a = fs.open(f, libc::O_RDWR).unwrap();
    let b = fs.open(f, libc::O_RDONLY).unwrap();
    fs.write(a.fh, 2, b"AB").unwrap();
    assert_eq!(fs.read(b.fh, 0, 100).unwrap(), b"01AB456789");
    assert_eq!(
        fs.store().get(&Key::new("/f")).unwrap(),
        b"0123456789",
        "not committed yet"
    );
    fs.flush(a.fh).unwrap();
    assert_eq!(fs.store().get(&Key::new("/f")).unwrap(), b"01AB456789");
    fs.release(a.fh).unwrap();
    fs.release(b.fh).unwrap();
}

#[test]
fn rename_rules() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0).unwrap();
    let e = fs.mkdir(CTX, ROOT, b"e", 0o755, 0).unwrap();
    write_file(&fs, d.ino, "f", b"F");
    write_file(&fs, ROOT, "g", b"G");
    let none = RenameFlags::default();
    // A directory over a non-empty directory, a file over a directory, a dir into itself.
    fs.rename(ROOT, b"e", ROOT, b"d", none).unwrap_err();
    assert!(matches!(fs.rename(ROOT, b"d", ROOT, b"e", none), Ok(())));
    assert!(matches!(
        fs.rename(ROOT, b"g", ROOT, b"e", none),
        Err(FsError::IsDir)
    ));
    let e2 = fs.lookup(ROOT, b"e").unwrap();
    assert!(matches!(
        fs.rename(ROOT, b"e", e2.ino, b"inside", none),
        Err(FsError::Invalid(_))
    ));
    assert_eq!(fs.store().get(&Key::new("/e/f")).unwrap(), b"F");
    let _ = e;
    // NOREPLACE and EXCHANGE.
    write_file(&fs, ROOT, "h", b"H");
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    assert!(matches!(
        fs.rename(ROOT, b"g", ROOT, b"h", noreplace),
        Err(FsError::Exists)
    ));
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    fs.rename(ROOT, b"g", ROOT, b"h", exchange).unwrap();
    assert_eq!(fs.store().get(&Key::new("/g")).unwrap(), b"H");
    assert_eq!(fs.store().get(&Key::new("/h")).unwrap(), b"G");
    let g = fs.lookup(ROOT, b"g").unwrap();
    assert_eq!(read_file(&fs, g.ino), b"H");
}

#[test]
fn read_only_mounts_refuse_changes() {
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(Arc::new(MemStore::new()), index));
    store.put(&Key::new("/f"), b"x").unwrap();
    let fs = DsFs::new(
        store,
        FsOptions {
            read_only: true,
            ..FsOptions::default()
        },
    );
    assert!(matches!(
        fs.mkdir(CTX, ROOT, b"d", 0o755, 0),
        Err(FsError::ReadOnly)
    ));
    let f = fs.lookup(ROOT, b"f").unwrap();
    assert!(matches!(
        fs.open(f.ino, libc::O_WRONLY),
        Err(FsError::ReadOnly)
    ));
    assert_eq!(read_file(&fs, f.ino), b"x");
}

#[test]
fn xattrs_follow_the_flags_and_the_size_protocol_errors() {
    let fs = fs();
    let f = write_file(&fs, ROOT, "f", b"");
    fs.setxattr(f, b"user.a", b"1", 0).unwrap();
    assert!(matches!(
        fs.setxattr(f, b"user.a", b"2", libc::XATTR_CREATE),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.setxattr(f, b"user.b", b"2", libc::XATTR_REPLACE),
        Err(FsError::NoData)
    ));
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"1");
    assert_eq!(fs.listxattr(f).unwrap(), b"user.a\0");
    fs.removexattr(f, b"user.a").unwrap();
    assert!(matches!(fs.getxattr(f, b"user.a"), Err(FsError::NoData)));
}

#[test]
fn every_error_has_its_own_errno_and_unknowns_are_eio() {
    assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
    assert_eq!(
        FsError::store(crate::datastore::Error::not_found()).errno(),
        libc::EIO
    );
    assert_eq!(
        FsError::store(crate::datastore::Error::new(
            crate::ErrorKind::NoSpace,
            "full"
        ))
        .errno(),
        libc::ENOSPC
    );
    assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
}

#[test]
fn hard_links_share_one_value_that_survives_any_single_unlink() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0).unwrap();
    let f = write_file(&fs, ROOT, "orig", b"shared");
    let a = fs.link(f, d.ino, b"alias").unwrap();
    assert_eq!((a.ino, a.nlink), (f, 2));
    assert_eq!(fs.getattr(f).unwrap().nlink, 2);
    assert_eq!(
        read_file(&fs, fs.lookup(d.ino, b"alias").unwrap().ino),
        b"shared"
    );
    // Removing the name whose key holds the value moves the value to the other name's key.
    fs.unlink(ROOT, b"orig").unwrap();
    assert!(!fs.store().has(&Key::new("/orig")).unwrap());
    assert_eq!(fs.store().get(&Key::new("/d/alias")).unwrap(), b"shared");
    assert_eq!(fs.getattr(f).unwrap().nlink, 1);
    // Renaming an extra name, and renaming onto another name of the same file.
    fs.link(f, ROOT, b"second").unwrap();
    fs.rename(ROOT, b"second", ROOT, b"third", RenameFlags::default())
        .unwrap();
    assert_eq!(
        read_file(&fs, fs.lookup(ROOT, b"third").unwrap().ino),
        b"shared"
    );
    fs.rename(ROOT, b"third", d.ino, b"alias", RenameFlags::default())
        .unwrap();
    assert!(
        fs.lookup(ROOT, b"third").is_ok(),
        "rename between names of one file is a no-op"
    );
    // A datastore delete of the key removes every name.
    fs.store().delete(&Key::new("/d/alias")).unwrap();
    assert!(fs.lookup(ROOT, b"third").is_err());
    assert!(fs.lookup(d.ino, b"alias").is_err());
    assert!(matches!(
        fs.link(d.ino, ROOT, b"dirlink"),
        Err(FsError::NotPermitted(_))
    ));
}

#[test]
fn an_unlinked_open_file_still_answers_fstat_with_nlink_zero() {
    let fs = fs();
    let (attr, o) = fs.create(CTX, ROOT, b"f", 0o644, 0, libc::O_RDWR).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    let a = fs.getattr(attr.ino).unwrap();
    assert_eq!(a.nlink, 0);
    fs.write(o.fh, 0, b"Hello").unwrap();
    assert_eq!(fs.read(o.fh, 0, 5).unwrap(), b"Hello");
    fs.release(o.fh).unwrap();
    assert!(matches!(fs.getattr(attr.ino), Err(FsError::NotFound)));
}

/// Writers committing while another thread sets times must not deadlock (the two paths once
/// took the file's lock and the index transaction in opposite orders).
#[test]
fn setattr_racing_commits_does_not_deadlock() {
    let fs = Arc::new(fs());
    let f = write_file(&fs, ROOT, "raced", b"x");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let writer = {
        let fs = fs.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            while std::time::Instant::now() < deadline {
                let o = fs.open(f, libc::O_RDWR).unwrap();
                fs.write(o.fh, 0, b"y").unwrap();
                fs.release(o.fh).unwrap();
            }
            done.send(()).unwrap();
        })
    };
    let toucher = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            while std::time::Instant::now() < deadline {
                let set = SetAttr {
                    mtime: Some(TimeSet::Now),
                    atime: Some(TimeSet::Now),
                    ..SetAttr::default()
                };
                fs.setattr(CTX, f, &set).unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    for _ in 0..2 {
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a writer and a setattr deadlocked");
    }
    writer.join().unwrap();
    toucher.join().unwrap();
}

/// A store that is not local files: it reports its own space, and can be made to fail reads
/// with a given kind (a remote cluster timing out or going away).
struct RemoteLike {
    inner: MemStore,
    fail_reads: parking_lot::Mutex<Option<crate::datastore::ErrorKind>>,
    syncs: std::sync::atomic::AtomicUsize,
}

impl RemoteLike {
    fn check(&self) -> crate::Result<()> {
        match *self.fail_reads.lock() {
            Some(kind) => Err(crate::Error::new(kind, "injected")),
            None => Ok(()),
        }
    }
}

impl Datastore for RemoteLike {
    fn get(&self, key: &Key) -> crate::Result<Vec<u8>> {
        self.check()?;
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> crate::Result<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> crate::Result<u64> {
        self.inner.get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> crate::Result<usize> {
        self.check()?;
        self.inner.read_at(key, offset, buf)
    }
    fn put(&self, key: &Key, value: &[u8]) -> crate::Result<()> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> crate::Result<()> {
        self.inner.delete(key)
    }
    fn query(&self, q: crate::Query) -> crate::Result<crate::datastore::Results> {
        self.inner.query(q)
    }
    fn sync(&self, prefix: &Key) -> crate::Result<()> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.sync(prefix)
    }
    fn close(&self) -> crate::Result<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> crate::datastore::Capabilities {
        self.inner.capabilities()
    }
    fn space(&self) -> crate::Result<Option<crate::datastore::Space>> {
        Ok(Some(crate::datastore::Space {
            total: 1 << 40,
            free: 1 << 39,
            available: 1 << 38,
        }))
    }
}

fn remote_like_fs() -> (DsFs, Arc<RemoteLike>) {
    let backend = Arc::new(RemoteLike {
        inner: MemStore::new(),
        fail_reads: parking_lot::Mutex::new(None),
        syncs: std::sync::atomic::AtomicUsize::new(0),
    });
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(backend.clone(), index));
    (DsFs::new(store, FsOptions::default()), backend)
}

/// `fsync` of the directory is how a program makes a rename durable. It used to sync only the
/// index: the store's rename of the value stayed in memory (a non-durable redb transaction,
/// or an unsynced directory entry in flatfs), and after a power loss the repair from the store
/// took the file back to its old name.
#[test]
fn fsync_of_a_directory_makes_the_store_durable_too() {
    use std::sync::atomic::Ordering;
    let (fs, backend) = remote_like_fs();
    let f = write_file(&fs, ROOT, "f", b"data");
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap().ino;
    fs.rename(ROOT, b"f", d, b"f", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 4);
    let before = backend.syncs.load(Ordering::SeqCst);
    fs.fsyncdir().unwrap();
    assert!(
        backend.syncs.load(Ordering::SeqCst) > before,
        "fsyncdir did not sync the store"
    );
}

#[test]
fn statfs_reports_the_space_of_a_store_that_is_not_local_files() {
    let (fs, _) = remote_like_fs();
    let s = fs.statfs().unwrap();
    assert_eq!(u64::from(s.bsize), 4096);
    assert_eq!(s.blocks * 4096, 1 << 40);
    assert_eq!(s.bfree * 4096, 1 << 39);
    assert_eq!(s.bavail * 4096, 1 << 38);
}

#[test]
fn a_store_timeout_is_etimedout_and_an_unavailable_store_is_eio() {
    let (fs, backend) = remote_like_fs();
    let f = write_file(&fs, ROOT, "f", b"data");
    let o = fs.open(f, libc::O_RDONLY).unwrap();
    *backend.fail_reads.lock() = Some(crate::datastore::ErrorKind::TimedOut);
    assert_eq!(fs.read(o.fh, 0, 4).unwrap_err().errno(), libc::ETIMEDOUT);
    *backend.fail_reads.lock() = Some(crate::datastore::ErrorKind::Unavailable);
    assert_eq!(fs.read(o.fh, 0, 4).unwrap_err().errno(), libc::EIO);
    *backend.fail_reads.lock() = None;
    assert_eq!(fs.read(o.fh, 0, 4).unwrap(), b"data");
    fs.release(o.fh).unwrap();
}

#[test]
fn a_store_timeout_met_inside_the_index_is_still_etimedout() {
    let store = crate::Error::new(crate::datastore::ErrorKind::TimedOut, "injected");
    let through_index = crate::index::IndexError::from(store);
    assert_eq!(FsError::from(through_index).errno(), libc::ETIMEDOUT);
    let store = crate::Error::new(crate::datastore::ErrorKind::TimedOut, "injected");
    let back = crate::Error::from(crate::index::IndexError::from(store));
    assert_eq!(back.kind(), crate::datastore::ErrorKind::TimedOut);
}

#[test]
fn create_and_close_commit_the_index_once_for_an_empty_file_and_twice_for_a_written_one() {
    let fs = fs();
    let writes = || fs.index.write_count();
    let before = writes();
    let (attr, opened) = fs
        .create(CTX, ROOT, b"empty", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.flush(opened.fh).unwrap();
    fs.release(opened.fh).unwrap();
    assert_eq!(writes() - before, 1);
    assert_eq!(fs.store().get(&Key::new("/empty")).unwrap(), b"");
    let after = fs.getattr(attr.ino).unwrap();
    assert_eq!((after.size, after.mtime), (0, attr.mtime));

    let before = writes();
    write_file(&fs, ROOT, "small", b"four");
    assert_eq!(writes() - before, 2);
    assert_eq!(fs.store().get(&Key::new("/small")).unwrap(), b"four");

    let before = writes();
    fs.unlink(ROOT, b"empty").unwrap();
    assert_eq!(writes() - before, 1);
    assert!(matches!(fs.lookup(ROOT, b"empty"), Err(FsError::NotFound)));
}

/// An open file whose value moves (a rename of it or of its directory, its first name removed
/// while another stays) commits its later writes under the new key, and an open file elsewhere
/// is left alone.
#[test]
fn open_files_commit_under_their_new_keys_after_their_value_moves() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0).unwrap();
    let other = write_file(&fs, ROOT, "other", b"o");
    let o = fs.open(other, libc::O_RDWR).unwrap();
    // A rename of the file itself.
    let f = write_file(&fs, ROOT, "f", b"one");
    let h = fs.open(f, libc::O_RDWR).unwrap();
    fs.rename(ROOT, b"f", d.ino, b"g", RenameFlags::default())
        .unwrap();
    fs.write(h.fh, 3, b"-two").unwrap();
    fs.release(h.fh).unwrap();
    assert_eq!(fs.store().get(&Key::new("/d/g")).unwrap(), b"one-two");
    assert!(!fs.store().has(&Key::new("/f")).unwrap());
    // A rename of its directory, with a new file not yet committed in it.
    let h = fs.open(f, libc::O_RDWR).unwrap();
    let (_, n) = fs
        .create(CTX, d.ino, b"new", 0o644, 0, libc::O_WRONLY)
        .unwrap();
    fs.write(n.fh, 0, b"fresh").unwrap();
    fs.rename(ROOT, b"d", ROOT, b"e", RenameFlags::default())
        .unwrap();
    fs.write(h.fh, 7, b"-three").unwrap();
    fs.release(h.fh).unwrap();
    fs.release(n.fh).unwrap();
    assert_eq!(fs.store().get(&Key::new("/e/g")).unwrap(), b"one-two-three");
    assert_eq!(fs.store().get(&Key::new("/e/new")).unwrap(), b"fresh");
    assert!(!fs.store().has(&Key::new("/d/new")).unwrap());
    // Its first name removed while a second one stays: the value moves to the second name.
    let e = fs.lookup(ROOT, b"e").unwrap().ino;
    fs.link(f, ROOT, b"second").unwrap();
    let h = fs.open(f, libc::O_RDWR).unwrap();
    fs.unlink(e, b"g").unwrap();
    fs.write(h.fh, 13, b"-four").unwrap();
    fs.release(h.fh).unwrap();
    assert_eq!(
        fs.store().get(&Key::new("/second")).unwrap(),
        b"one-two-three-four"
    );
    assert!(!fs.store().has(&Key::new("/e/g")).unwrap());
    // The file open all along is where it was.
    fs.write(o.fh, 1, b"k").unwrap();
    fs.release(o.fh).unwrap();
    assert_eq!(fs.store().get(&Key::new("/other")).unwrap(), b"ok");
}

/// `RENAME_EXCHANGE` with an extra name of a hard-linked file: that name holds no value (the
/// value stays under the file's first name), so only the index moves for it. It used to make
/// the extra name the file's first name without moving the value, so the file read `ENOENT`
/// (found by the model test, `tests/model_fs.rs`, about once in 20 runs).
#[test]
fn exchanging_an_extra_name_of_a_hard_linked_file_keeps_both_files() {
    let fs = fs();
    let flags = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    let read = |p: u64, n: &str| read_file(&fs, fs.lookup(p, n.as_bytes()).unwrap().ino);
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0).unwrap();
    let b = write_file(&fs, ROOT, "b", b"bee");
    let c = write_file(&fs, ROOT, "c", b"sea");
    fs.link(c, d.ino, b"c").unwrap();
    // The extra name d/c of c against b's only name: b's value moves, c's stays at /c.
    fs.rename(d.ino, b"c", ROOT, b"b", flags).unwrap();
    assert_eq!(fs.lookup(ROOT, b"b").unwrap().ino, c);
    assert_eq!(fs.lookup(d.ino, b"c").unwrap().ino, b);
    assert_eq!(read(ROOT, "b"), b"sea");
    assert_eq!(read(ROOT, "c"), b"sea");
    assert_eq!(read(d.ino, "c"), b"bee");
    assert_eq!(fs.store().get(&Key::new("/d/c")).unwrap(), b"bee");
    // Writes through an open handle of c land in its value, wherever its names went.
    let h = fs.open(c, libc::O_RDWR).unwrap();
    fs.rename(ROOT, b"b", d.ino, b"c", flags).unwrap();
    fs.write(h.fh, 3, b"!").unwrap();
    fs.release(h.fh).unwrap();
    assert_eq!(read(ROOT, "c"), b"sea!");
    assert_eq!(read(d.ino, "c"), b"sea!");
    assert_eq!(read(ROOT, "b"), b"bee");
    // Two extra names of two files: nothing moves in the store.
    let e = write_file(&fs, ROOT, "e", b"eye");
    fs.link(e, d.ino, b"e").unwrap();
    fs.link(b, d.ino, b"b").unwrap();
    fs.rename(d.ino, b"e", d.ino, b"b", flags).unwrap();
    assert_eq!(read(d.ino, "e"), b"bee");
    assert_eq!(read(d.ino, "b"), b"eye");
    assert_eq!(read(ROOT, "e"), b"eye");
    assert_eq!(read(ROOT, "b"), b"bee");
    // Removing the first names now leaves each file under its other name.
    fs.unlink(ROOT, b"e").unwrap();
    fs.unlink(ROOT, b"b").unwrap();
    assert_eq!(read(d.ino, "b"), b"eye");
    assert_eq!(read(d.ino, "e"), b"bee");
    assert_eq!(fs.getattr(e).unwrap().nlink, 1);
}

/// An unlink of a closed file is one index transaction (the write that removes it), with no
/// read transaction before it; so is an rmdir.
#[test]
fn unlink_and_rmdir_cost_one_index_transaction_each() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap();
    write_file(&fs, d.ino, "f", b"four");
    fs.symlink(CTX, d.ino, b"l", b"f").unwrap();
    let txns = || fs.index.read_count() + fs.index.write_count();
    for name in ["f", "l"] {
        let before = txns();
        fs.unlink(d.ino, name.as_bytes()).unwrap();
        assert_eq!(txns() - before, 1, "unlink of {name}");
    }
    assert!(!fs.store().has(&Key::new("/d/f")).unwrap());
    assert!(matches!(fs.lookup(d.ino, b"f"), Err(FsError::NotFound)));
    let before = txns();
    fs.rmdir(ROOT, b"d").unwrap();
    assert_eq!(txns() - before, 1, "rmdir");
    assert!(matches!(fs.lookup(ROOT, b"d"), Err(FsError::NotFound)));
}

/// What unlink and rmdir refuse, they refuse with the errno POSIX names, and change nothing.
#[test]
fn unlink_and_rmdir_refuse_the_wrong_kind_of_node() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap();
    let f = write_file(&fs, d.ino, "f", b"x");
    assert_eq!(fs.unlink(ROOT, b"d").unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.unlink(ROOT, b"nope").unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.unlink(f, b"x").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.rmdir(d.ino, b"f").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.rmdir(f, b"x").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.rmdir(ROOT, b"d").unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(fs.rmdir(ROOT, b"nope").unwrap_err().errno(), libc::ENOENT);
    assert_eq!(read_file(&fs, f), b"x");
    assert_eq!(names(&fs, d.ino), [".", "..", "f"]);
}

/// A directory removed (by rmdir, or replaced by a rename) while the kernel still holds it
/// keeps answering GETATTR and SETATTR, with no links, until the kernel forgets it; as on a
/// local filesystem, `fstat` and `fchmod` of an open removed directory work.
#[test]
fn a_removed_directory_answers_getattr_and_setattr_until_forgotten() {
    let fs = fs();
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap();
    fs.rmdir(ROOT, b"d").unwrap();
    let a = fs.getattr(d.ino).unwrap();
    assert_eq!((a.kind, a.nlink, a.perm), (FileKind::Dir, 0, 0o755));
    assert!(a.ctime >= d.ctime);
    let set = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(CTX, d.ino, &set).unwrap().perm, 0o700);
    assert_eq!(fs.getattr(d.ino).unwrap().perm, 0o700);
    // Nothing can be made in it, and the name is gone.
    assert_eq!(
        fs.mkdir(CTX, d.ino, b"x", 0o755, 0o022)
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert!(matches!(fs.lookup(ROOT, b"d"), Err(FsError::NotFound)));
    fs.forget(d.ino);
    assert!(matches!(fs.getattr(d.ino), Err(FsError::NotFound)));
    assert!(matches!(
        fs.setattr(CTX, d.ino, &set),
        Err(FsError::NotFound)
    ));

    // A rename over an empty directory removes that directory the same way.
    let a = fs.mkdir(CTX, ROOT, b"a", 0o755, 0o022).unwrap();
    let b = fs.mkdir(CTX, ROOT, b"b", 0o711, 0o022).unwrap();
    fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default())
        .unwrap();
    let gone = fs.getattr(b.ino).unwrap();
    assert_eq!((gone.nlink, gone.perm), (0, 0o711));
    assert_eq!(fs.lookup(ROOT, b"b").unwrap().ino, a.ino);
}

/// `cp -a` writes a file, sets its times to the source's (`futimens`) and closes it. The
/// commit at close must not move the change time back to that modification time: ctime is
/// the time of the last change, which no caller can set into the past.
#[test]
fn a_commit_after_an_explicit_mtime_keeps_the_change_time() {
    let fs = fs();
    let (attr, opened) = fs
        .create(CTX, ROOT, b"copied", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.write(opened.fh, 0, b"bytes").unwrap();
    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(981_173_106);
    let set = SetAttr {
        mtime: Some(TimeSet::At(past)),
        atime: Some(TimeSet::At(past)),
        ..SetAttr::default()
    };
    let set_attr = fs.setattr(CTX, attr.ino, &set).unwrap();
    assert_eq!(set_attr.mtime, past);
    assert!(set_attr.ctime > past);
    fs.flush(opened.fh).unwrap();
    fs.release(opened.fh).unwrap();
    let after = fs.getattr(attr.ino).unwrap();
    assert_eq!(after.mtime, past);
    assert_eq!(after.ctime, set_attr.ctime);

    // The same for an empty file (no write before the times are set).
    let (attr, opened) = fs
        .create(CTX, ROOT, b"empty", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    let set_attr = fs.setattr(CTX, attr.ino, &set).unwrap();
    fs.flush(opened.fh).unwrap();
    fs.release(opened.fh).unwrap();
    let after = fs.getattr(attr.ino).unwrap();
    assert_eq!((after.mtime, after.ctime), (past, set_attr.ctime));
}

/// Linux filesystems know four xattr namespaces (`user.`, `trusted.`, `security.`,
/// `system.`) and refuse every other name with `EOPNOTSUPP`; a name dsfs stored outside them
/// would make `cp -a` or `rsync -X` from the mount fail on any local filesystem.
#[test]
fn xattr_names_outside_the_known_namespaces_are_not_supported() {
    let fs = fs();
    let f = write_file(&fs, ROOT, "f", b"");
    // `dsfs.cid` is where the computed CID is kept: a user who could set it could make
    // `user.ipfs.cid` report any CID.
    for name in [
        &b"bogus.x"[..],
        b"x",
        b"user",
        b"USER.x",
        b"trustedx",
        b"dsfs.cid",
    ] {
        assert!(
            matches!(fs.setxattr(f, name, b"1", 0), Err(FsError::NotSupported(_))),
            "{}",
            String::from_utf8_lossy(name)
        );
        assert!(matches!(
            fs.getxattr(f, name),
            Err(FsError::NotSupported(_))
        ));
        assert!(matches!(
            fs.removexattr(f, name),
            Err(FsError::NotSupported(_))
        ));
    }
    for name in [&b"user.x"[..], b"trusted.x", b"security.x"] {
        fs.setxattr(f, name, b"1", 0).unwrap();
    }
    assert_eq!(fs.listxattr(f).unwrap(), b"security.x\0trusted.x\0user.x\0");
}
