//! `DsFs` over a [`FaultyStore`]: every write path, with the store failing at each step. After
//! each injected failure the caller got the error (as the errno a program would see), the file
//! holds its old or its new content, and a retry succeeds.

use std::sync::Arc;

use super::*;
use crate::backend::MemStore;
use crate::datastore::ErrorKind;
use crate::datastore::faulty::{FaultOp, FaultyStore};
use crate::index::{IndexOptions, ROOT};
use std::sync::atomic::Ordering;

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

struct Rig {
    fs: DsFs,
    faults: Arc<FaultyStore<MemStore>>,
}

fn rig() -> Rig {
    let faults = Arc::new(FaultyStore::new(MemStore::new()));
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(faults.clone(), index));
    Rig {
        fs: DsFs::new(store, FsOptions::default()),
        faults,
    }
}

impl Rig {
    fn write_file(&self, name: &str, data: &[u8]) -> u64 {
        let (attr, o) = self
            .fs
            .create(CTX, ROOT, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
            .unwrap();
        self.fs.write(o.fh, 0, data).unwrap();
        self.fs.release(o.fh).unwrap();
        attr.ino
    }

    fn content(&self, name: &str) -> Option<Vec<u8>> {
        let attr = match self.fs.lookup(ROOT, name.as_bytes()) {
            Ok(a) => a,
            Err(FsError::NotFound) => return None,
            Err(e) => panic!("lookup of {name}: {e}"),
        };
        let o = self.fs.open(attr.ino, libc::O_RDONLY).unwrap();
        let data = self.fs.read(o.fh, 0, 1 << 20).unwrap();
        self.fs.release(o.fh).unwrap();
        Some(data)
    }

    /// The value the store itself holds (what survives an unmount).
    fn stored(&self, name: &str) -> Option<Vec<u8>> {
        match self.faults.inner().get(&Key::new(format!("/{name}"))) {
            Ok(v) => Some(v),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("store get: {e}"),
        }
    }
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn a_failed_flush_keeps_the_bytes_and_the_next_fsync_commits_them() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    r.fs.write(o.fh, 0, b"new content").unwrap();
    r.faults
        .fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 1);
    assert_eq!(errno(r.fs.flush(o.fh)), libc::ENOSPC);
    // Still readable through the mount, still dirty: the fsync commits them.
    assert_eq!(r.content("f").unwrap(), b"new content");
    r.fs.fsync(o.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"new content");
    r.fs.release(o.fh).unwrap();
    assert_eq!(r.content("f").unwrap(), b"new content");
}

#[test]
fn every_failed_commit_is_reported_until_one_succeeds() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let a = r.fs.open(ino, libc::O_RDWR).unwrap();
    let b = r.fs.open(ino, libc::O_RDONLY).unwrap();
    r.fs.write(a.fh, 0, b"NEW").unwrap();
    r.faults.fail_next(FaultOp::CommitStaged, ErrorKind::Io, 2);
    assert_eq!(errno(r.fs.fsync(a.fh)), libc::EIO);
    // The other handle's close retries the same commit and sees it fail too.
    assert_eq!(errno(r.fs.flush(b.fh)), libc::EIO);
    assert_eq!(r.stored("f").unwrap(), b"old");
    r.fs.flush(a.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"NEW");
    // Committed: nothing left to report.
    r.fs.fsync(b.fh).unwrap();
    r.fs.release(a.fh).unwrap();
    r.fs.release(b.fh).unwrap();
}

#[test]
fn a_failed_sync_in_fsync_is_reported_and_retried() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY).unwrap();
    r.fs.write(o.fh, 0, b"new").unwrap();
    r.faults.fail_next(FaultOp::Sync, ErrorKind::NoSpace, 1);
    assert_eq!(errno(r.fs.fsync(o.fh)), libc::ENOSPC);
    let now = r.stored("f").unwrap();
    assert!(now == b"old" || now == b"new", "{now:?}");
    r.fs.fsync(o.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"new");
    r.fs.release(o.fh).unwrap();
}

#[test]
fn a_failed_create_leaves_no_name_and_a_retry_works() {
    let r = rig();
    r.faults.fail_next(FaultOp::Stage, ErrorKind::NoSpace, 1);
    let res =
        r.fs.create(CTX, ROOT, b"f", 0o644, 0o022, libc::O_WRONLY | libc::O_EXCL);
    assert_eq!(errno(res), libc::ENOSPC);
    assert_eq!(r.content("f"), None);
    r.write_file("f", b"x");
    assert_eq!(r.content("f").unwrap(), b"x");
}

#[test]
fn a_failed_write_leaves_the_old_content_and_a_retry_works() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY).unwrap();
    // The first write of an existing file copies its value into staging.
    r.faults.fail_next(FaultOp::Stage, ErrorKind::Io, 1);
    assert_eq!(errno(r.fs.write(o.fh, 0, b"N")), libc::EIO);
    r.fs.flush(o.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"old");
    r.fs.write(o.fh, 0, b"N").unwrap();
    r.fs.release(o.fh).unwrap();
    assert_eq!(r.content("f").unwrap(), b"Nld");
}

#[test]
fn a_failed_truncate_leaves_the_old_content_and_a_retry_works() {
    let r = rig();
    let ino = r.write_file("f", b"old content");
    let set = SetAttr {
        size: Some(3),
        ..SetAttr::default()
    };
    r.faults
        .fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 2);
    assert_eq!(errno(r.fs.setattr(CTX, ino, &set)), libc::ENOSPC);
    assert_eq!(r.content("f").unwrap(), b"old content");
    assert_eq!(r.fs.getattr(ino).unwrap().size, 11);
    r.fs.setattr(CTX, ino, &set).unwrap();
    assert_eq!(r.content("f").unwrap(), b"old");
}

#[test]
fn a_failed_rename_leaves_both_names_as_they_were_and_a_retry_works() {
    let r = rig();
    r.write_file("a", b"A");
    r.write_file("b", b"B");
    r.faults.fail_next(FaultOp::Rename, ErrorKind::NoSpace, 1);
    let res = r.fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default());
    assert_eq!(errno(res), libc::ENOSPC);
    assert_eq!(r.content("a").unwrap(), b"A");
    assert_eq!(r.content("b").unwrap(), b"B");
    r.fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default())
        .unwrap();
    assert_eq!(r.content("a"), None);
    assert_eq!(r.content("b").unwrap(), b"A");
}

#[test]
fn a_failed_unlink_keeps_name_and_value_together() {
    let r = rig();
    r.write_file("f", b"keep me");
    r.faults.fail_next(FaultOp::Delete, ErrorKind::Io, 1);
    assert_eq!(errno(r.fs.unlink(ROOT, b"f")), libc::EIO);
    assert_eq!(r.content("f").unwrap(), b"keep me");
    assert_eq!(r.stored("f").unwrap(), b"keep me");
    r.fs.unlink(ROOT, b"f").unwrap();
    assert_eq!(r.content("f"), None);
    assert_eq!(r.stored("f"), None);
}

/// The name goes before the value; when the store then refuses the delete, the name comes
/// back as it was: the same inode, its attributes and its xattrs.
#[test]
fn a_failed_unlink_puts_back_the_same_inode_with_its_xattrs() {
    let r = rig();
    let ino = r.write_file("f", b"keep me");
    r.fs.setxattr(ino, b"user.note", b"v", 0).unwrap();
    let before = r.fs.getattr(ino).unwrap();
    r.faults.fail_next(FaultOp::Delete, ErrorKind::NoSpace, 1);
    assert_eq!(errno(r.fs.unlink(ROOT, b"f")), libc::ENOSPC);
    let after = r.fs.lookup(ROOT, b"f").unwrap();
    assert_eq!(after.ino, ino);
    assert_eq!(
        (after.size, after.perm, after.mtime),
        (before.size, before.perm, before.mtime)
    );
    assert_eq!(r.fs.getxattr(ino, b"user.note").unwrap(), b"v");
    assert_eq!(r.content("f").unwrap(), b"keep me");
    r.fs.unlink(ROOT, b"f").unwrap();
    assert_eq!(r.stored("f"), None);
}

#[test]
fn a_failed_unlink_of_an_open_file_keeps_its_handle_writing_to_it() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY).unwrap();
    r.fs.write(o.fh, 0, b"new").unwrap();
    r.faults.fail_next(FaultOp::Delete, ErrorKind::NoSpace, 1);
    assert_eq!(errno(r.fs.unlink(ROOT, b"f")), libc::ENOSPC);
    r.fs.release(o.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"new");
}

#[test]
fn links_and_setattr_survive_store_faults_around_them() {
    let r = rig();
    let ino = r.write_file("f", b"data");
    // Neither touches the store: armed faults on every store call change nothing.
    for op in FaultOp::ALL {
        r.faults.fail_next(op, ErrorKind::Io, 1);
    }
    r.fs.link(ino, ROOT, b"g").unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(r.fs.setattr(CTX, ino, &set).unwrap().perm, 0o600);
    r.faults.heal();
    assert_eq!(r.content("g").unwrap(), b"data");
}

#[test]
fn random_store_faults_never_lose_a_committed_file() {
    // Many files written under random faults: whatever reported success reads back whole,
    // whatever failed reads back as before (absent or its previous content).
    let r = rig();
    r.faults.fail_randomly(ErrorKind::NoSpace, 250, 42);
    let mut expect: HashMap<String, Vec<u8>> = HashMap::new();
    for round in 0..200u32 {
        let name = format!("f{}", round % 17);
        let data = format!("round {round}").into_bytes();
        let created = r.fs.create(
            CTX,
            ROOT,
            name.as_bytes(),
            0o644,
            0o022,
            libc::O_WRONLY | libc::O_TRUNC,
        );
        let Ok((_, o)) = created else { continue };
        let wrote = r.fs.write(o.fh, 0, &data).is_ok();
        // Close: a failure is retried once by an fsync, as a careful program would.
        let ok = wrote && (r.fs.flush(o.fh).is_ok() || r.fs.fsync(o.fh).is_ok());
        let released = r.fs.release(o.fh);
        if ok {
            expect.insert(name, data);
        } else if released.is_ok() {
            // The last close committed after all.
            if let Ok(now) = r.faults.inner().get(&Key::new(format!("/{name}"))) {
                expect.insert(name, now);
            }
        }
    }
    r.faults.heal();
    assert!(r.faults.injected() > 10);
    for (name, data) in &expect {
        assert_eq!(r.content(name).as_ref(), Some(data), "{name}");
    }
}

/// redb storage in memory whose reads can be made to fail.
#[derive(Debug)]
struct FlakyStorage {
    inner: redb::backends::InMemoryBackend,
    fail_reads: Arc<std::sync::atomic::AtomicBool>,
}

impl redb::StorageBackend for FlakyStorage {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
}

#[test]
fn statfs_reports_an_index_failure_instead_of_zero_files() {
    let fail_reads = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storage = FlakyStorage {
        inner: redb::backends::InMemoryBackend::new(),
        fail_reads: fail_reads.clone(),
    };
    let index = Arc::new(Index::with_backend(storage, IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(Arc::new(MemStore::new()), index));
    let fs = DsFs::new(store, FsOptions::default());
    let (_, o) = fs
        .create(CTX, ROOT, b"f", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.release(o.fh).unwrap();
    // The index counts its keys once, at the first statfs, and then keeps the count (see
    // `Index::key_count`): that count is what must not fail quietly. (redb refuses reads after
    // an I/O error, so the count is not asked for again here.)
    fail_reads.store(true, Ordering::SeqCst);
    assert_eq!(errno(fs.statfs()), libc::EIO);
    fail_reads.store(false, Ordering::SeqCst);
}

#[test]
fn store_errors_passed_through_the_index_keep_their_errno() {
    use crate::datastore::Error;
    let through_index = |kind| FsError::from(IndexError::from(Error::new(kind, "x"))).errno();
    assert_eq!(through_index(ErrorKind::InvalidKey), libc::EINVAL);
    assert_eq!(through_index(ErrorKind::InvalidArgument), libc::EINVAL);
    assert_eq!(through_index(ErrorKind::Unsupported), libc::EOPNOTSUPP);
    assert_eq!(through_index(ErrorKind::NoSpace), libc::ENOSPC);
    assert_eq!(through_index(ErrorKind::AlreadyExists), libc::EEXIST);
    assert_eq!(through_index(ErrorKind::NoMount), libc::EIO);
    assert_eq!(through_index(ErrorKind::Io), libc::EIO);
}

#[test]
fn a_failed_commit_at_the_last_close_keeps_the_bytes_for_the_next_close() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY).unwrap();
    r.fs.write(o.fh, 0, b"new").unwrap();
    r.faults
        .fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 2);
    assert_eq!(errno(r.fs.flush(o.fh)), libc::ENOSPC);
    assert_eq!(errno(r.fs.release(o.fh)), libc::ENOSPC);
    assert_eq!(r.stored("f").unwrap(), b"old");
    assert_eq!(r.fs.getattr(ino).unwrap().size, 3);
    // Still staged: a reader sees them, and its close commits them.
    assert_eq!(r.content("f").unwrap(), b"new");
    assert_eq!(r.stored("f").unwrap(), b"new");
}

#[test]
fn a_failed_commit_at_the_last_close_is_retried_at_unmount() {
    let r = rig();
    let ino = r.write_file("f", b"old");
    let o = r.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    r.fs.write(o.fh, 0, b"longer new content").unwrap();
    r.faults.fail_next(FaultOp::CommitStaged, ErrorKind::Io, 2);
    assert_eq!(errno(r.fs.flush(o.fh)), libc::EIO);
    assert_eq!(errno(r.fs.release(o.fh)), libc::EIO);
    assert_eq!(r.stored("f").unwrap(), b"old");
    r.fs.shutdown().unwrap();
    assert_eq!(r.stored("f").unwrap(), b"longer new content");
}

/// The CID of a file is kept in the index: a new filesystem over the same index (a remount)
/// answers `user.ipfs.cid` without reading the file, even when every read fails; a write makes
/// it compute the new CID.
#[test]
fn a_files_cid_is_kept_in_the_index_across_a_remount() {
    let r = rig();
    let ino = r.write_file("hello", b"hello\n");
    let cid = r.fs.getxattr(ino, CID_XATTR.as_bytes()).unwrap();
    assert_eq!(cid, b"QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN");
    let listed = r.fs.listxattr(ino).unwrap();
    assert!(listed.is_empty(), "{:?}", String::from_utf8_lossy(&listed));

    let again = DsFs::new(r.fs.store().clone(), FsOptions::default());
    r.faults.fail_next(FaultOp::Read, ErrorKind::Io, 1000);
    assert_eq!(again.getxattr(ino, CID_XATTR.as_bytes()).unwrap(), cid);
    r.faults.heal();

    let o = again.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    again.write(o.fh, 0, b"").unwrap();
    again.release(o.fh).unwrap();
    assert_eq!(
        again.getxattr(ino, CID_XATTR.as_bytes()).unwrap(),
        b"QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "the empty file's CID after the truncation"
    );
}

/// A new small file's bytes are staged in memory (no staging file): a commit that fails with
/// ENOSPC keeps them, readable through the mount and committed by the next fsync; what that
/// fsync acknowledged is in the store. The store staged it in memory, so nothing spilled.
#[test]
fn a_new_small_file_staged_in_memory_survives_a_failed_commit() {
    let r = rig();
    let staged = r
        .faults
        .stage(&Key::new("/probe"), crate::datastore::StageInit::Empty)
        .unwrap();
    assert!(
        staged.is_in_memory(),
        "the store stages new values in memory"
    );
    drop(staged);
    let (_, o) =
        r.fs.create(CTX, ROOT, b"f", 0o644, 0o022, libc::O_WRONLY)
            .unwrap();
    r.fs.write(o.fh, 0, b"small and new").unwrap();
    r.faults
        .fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 2);
    assert_eq!(errno(r.fs.flush(o.fh)), libc::ENOSPC);
    assert_eq!(errno(r.fs.fsync(o.fh)), libc::ENOSPC);
    assert_eq!(r.stored("f"), None);
    // Readable through the mount (the reader's close commits it, as any close does).
    assert_eq!(r.content("f").unwrap(), b"small and new");
    assert_eq!(r.stored("f").unwrap(), b"small and new");
    r.fs.write(o.fh, 13, b", grown").unwrap();
    r.fs.fsync(o.fh).unwrap();
    assert_eq!(r.stored("f").unwrap(), b"small and new, grown");
    r.fs.release(o.fh).unwrap();
    assert_eq!(r.content("f").unwrap(), b"small and new, grown");
}
