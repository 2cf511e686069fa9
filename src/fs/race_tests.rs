//! `DsFs` under concurrency: reads racing renames, and no table lock held across store I/O.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::backend::MemStore;
use crate::datastore::{Batch, BatchOps, Capabilities, Query, Result as DsResult, Results};
use crate::index::{IndexOptions, ROOT};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

/// How long a test waits for something that must not be blocked before calling it a hang.
const HANG: Duration = Duration::from_secs(20);

fn fs_over(backend: Arc<dyn Datastore>) -> DsFs {
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(backend, index));
    DsFs::new(store, FsOptions::default())
}

fn write_file(fs: &DsFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, opened) = fs
        .create(CTX, parent, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.write(opened.fh, 0, data).unwrap();
    fs.release(opened.fh).unwrap();
    attr.ino
}

/// A memory store whose whole-value reads (`get`, which staging copies use), ranged reads
/// (`read_at`) or value moves (`rename`) stop, once armed, until the test lets them go: a store
/// call that hangs. It can also fail a chosen rename.
#[derive(Default)]
pub(super) struct GatedStore {
    pub(super) inner: MemStore,
    armed: std::sync::atomic::AtomicBool,
    /// Which call the gate stops (one of [`Gated`], as a number).
    gated: std::sync::atomic::AtomicU8,
    entered: parking_lot::Mutex<Option<mpsc::Sender<()>>>,
    release: parking_lot::Mutex<Option<mpsc::Receiver<()>>>,
    /// Renames until the next one fails with EIO (0: none fails).
    pub(super) fail_rename_in: std::sync::atomic::AtomicUsize,
}

/// The store call a [`GatedStore`] stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gated {
    Get = 0,
    Rename = 1,
    ReadAt = 2,
}

impl GatedStore {
    /// Arms the gate: the next `get` reports on the returned receiver and waits for the
    /// returned sender.
    pub(super) fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        self.arm_on(Gated::Get)
    }

    /// Arms the gate on the next `rename` instead.
    pub(super) fn arm_rename(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        self.arm_on(Gated::Rename)
    }

    /// Arms the gate on the next `read_at` instead.
    pub(super) fn arm_read_at(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        self.arm_on(Gated::ReadAt)
    }

    fn arm_on(&self, call: Gated) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock() = Some(entered_tx);
        *self.release.lock() = Some(release_rx);
        self.gated
            .store(call as u8, std::sync::atomic::Ordering::SeqCst);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        (entered_rx, release_tx)
    }

    fn wait_if_armed(&self, call: Gated) {
        if self.gated.load(std::sync::atomic::Ordering::SeqCst) == call as u8
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            if let Some(tx) = self.entered.lock().take() {
                let _ = tx.send(());
            }
            if let Some(rx) = self.release.lock().take() {
                let _ = rx.recv_timeout(HANG * 2);
            }
        }
    }
}

impl Datastore for GatedStore {
    fn get(&self, key: &Key) -> DsResult<Vec<u8>> {
        self.wait_if_armed(Gated::Get);
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> DsResult<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> DsResult<u64> {
        self.inner.get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> DsResult<usize> {
        self.wait_if_armed(Gated::ReadAt);
        self.inner.read_at(key, offset, buf)
    }
    fn put(&self, key: &Key, value: &[u8]) -> DsResult<()> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> DsResult<()> {
        self.inner.delete(key)
    }
    fn query(&self, query: Query) -> DsResult<Results> {
        self.inner.query(query)
    }
    fn sync(&self, prefix: &Key) -> DsResult<()> {
        self.inner.sync(prefix)
    }
    fn close(&self) -> DsResult<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn batch(&self) -> DsResult<Box<dyn Batch + '_>> {
        self.inner.batch()
    }
    fn apply_batch(&self, ops: BatchOps) -> DsResult<()> {
        self.inner.apply_batch(ops)
    }
    fn rename(&self, from: &Key, to: &Key) -> DsResult<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fail_rename_in.load(SeqCst) > 0 && self.fail_rename_in.fetch_sub(1, SeqCst) == 1 {
            return Err(crate::datastore::Error::new(
                crate::datastore::ErrorKind::Io,
                "injected rename failure",
            ));
        }
        self.wait_if_armed(Gated::Rename);
        self.inner.rename(from, to)
    }
}

/// `tail -f` of a log that is being rotated: every read through an open handle succeeds and
/// sees the file's bytes, whatever name the file has at that moment.
#[test]
fn reads_never_fail_while_the_file_is_renamed() {
    let fs = Arc::new(fs_over(Arc::new(MemStore::new())));
    let content: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let f = write_file(&fs, ROOT, "log", &content);
    let o = fs.open(f, libc::O_RDONLY).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let fs = fs.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let names: [&[u8]; 2] = [b"log", b"log.1"];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 5_000 {
                fs.rename(
                    ROOT,
                    names[i % 2],
                    ROOT,
                    names[(i + 1) % 2],
                    RenameFlags::default(),
                )
                .unwrap();
                i += 1;
            }
            i
        })
    };
    let mut failures = 0;
    let mut reads = 0;
    while !renamer.is_finished() {
        match fs.read(o.fh, 0, 4096) {
            Ok(data) => assert_eq!(data, content),
            Err(_) => failures += 1,
        }
        reads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let renames = renamer.join().unwrap();
    fs.release(o.fh).unwrap();
    assert_eq!(
        failures, 0,
        "{failures} of {reads} reads failed during {renames} renames"
    );
}

/// A store call that hangs while an open file is unlinked (its value copied aside for the
/// handles still open) must not stop other files from being opened or stat'ed.
#[test]
fn a_hanging_store_read_during_unlink_blocks_no_other_file() {
    let store = Arc::new(GatedStore::default());
    let fs = Arc::new(fs_over(store.clone()));
    let victim = write_file(&fs, ROOT, "victim", b"bytes kept for the open handle");
    let other = write_file(&fs, ROOT, "other", b"unrelated");
    let held = fs.open(victim, libc::O_RDONLY).unwrap();
    let (entered, release) = store.arm();
    let unlinker = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.unlink(ROOT, b"victim"))
    };
    entered
        .recv_timeout(HANG)
        .expect("the unlink never reached the store");
    let (done_tx, done_rx) = mpsc::channel();
    let opener = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            let o = fs.open(other, libc::O_RDONLY);
            let attr = fs.getattr(other);
            let _ = done_tx.send(());
            if let Ok(o) = o {
                let _ = fs.release(o.fh);
            }
            attr.map(|a| a.size)
        })
    };
    let unblocked = done_rx.recv_timeout(HANG);
    release.send(()).unwrap();
    unlinker.join().unwrap().unwrap();
    assert!(
        unblocked.is_ok(),
        "opening another file waited for the unlinked file's store read"
    );
    assert_eq!(opener.join().unwrap().unwrap(), 9);
    assert_eq!(
        fs.read(held.fh, 0, 100).unwrap(),
        b"bytes kept for the open handle"
    );
    fs.release(held.fh).unwrap();
}

/// A memory store whose writes (`put`, `commit_staged`, `delete`) fail after the first
/// `allowed` of them, as a full disk or a crash would stop them.
struct FailingWrites {
    inner: MemStore,
    allowed: std::sync::atomic::AtomicI64,
}

impl FailingWrites {
    fn write_allowed(&self) -> DsResult<()> {
        if self
            .allowed
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            Ok(())
        } else {
            Err(crate::datastore::Error::new(
                crate::datastore::ErrorKind::NoSpace,
                "injected failure",
            ))
        }
    }
}

impl Datastore for FailingWrites {
    fn get(&self, key: &Key) -> DsResult<Vec<u8>> {
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> DsResult<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> DsResult<u64> {
        self.inner.get_size(key)
    }
    fn put(&self, key: &Key, value: &[u8]) -> DsResult<()> {
        self.write_allowed()?;
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> DsResult<()> {
        self.write_allowed()?;
        self.inner.delete(key)
    }
    fn query(&self, query: Query) -> DsResult<Results> {
        self.inner.query(query)
    }
    fn sync(&self, prefix: &Key) -> DsResult<()> {
        self.inner.sync(prefix)
    }
    fn close(&self) -> DsResult<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn rename(&self, from: &Key, to: &Key) -> DsResult<()> {
        self.write_allowed()?;
        self.inner.rename(from, to)
    }
    fn exchange(&self, a: &Key, b: &Key) -> DsResult<()> {
        self.write_allowed()?;
        self.inner.exchange(a, b)
    }
}

fn contents(fs: &DsFs, name: &str) -> Vec<u8> {
    let ino = fs.lookup(ROOT, name.as_bytes()).unwrap().ino;
    let o = fs.open(ino, libc::O_RDONLY).unwrap();
    let data = fs.read(o.fh, 0, 1 << 16).unwrap();
    fs.release(o.fh).unwrap();
    data
}

/// `RENAME_EXCHANGE` is one store operation: when the store fails (or the machine stops)
/// after its first write, the two names hold their old values or each other's, never one
/// value under both.
#[test]
fn an_exchange_interrupted_after_one_store_write_never_duplicates_a_value() {
    let store = Arc::new(FailingWrites {
        inner: MemStore::new(),
        allowed: std::sync::atomic::AtomicI64::new(i64::MAX),
    });
    let fs = fs_over(store.clone());
    write_file(&fs, ROOT, "a", b"AAAA");
    write_file(&fs, ROOT, "b", b"BB");
    store.allowed.store(1, std::sync::atomic::Ordering::SeqCst);
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    let result = fs.rename(ROOT, b"a", ROOT, b"b", exchange);
    let pair = (
        store.inner.get(&Key::new("/a")).unwrap(),
        store.inner.get(&Key::new("/b")).unwrap(),
    );
    assert!(
        pair == (b"AAAA".to_vec(), b"BB".to_vec()) || pair == (b"BB".to_vec(), b"AAAA".to_vec()),
        "after {result:?} the store holds {pair:?}"
    );
    result.unwrap();
    assert_eq!(contents(&fs, "a"), b"BB");
    assert_eq!(contents(&fs, "b"), b"AAAA");
    assert_eq!(
        fs.getattr(fs.lookup(ROOT, b"a").unwrap().ino).unwrap().size,
        2
    );
}

/// A store that cannot swap two values atomically refuses the exchange (EOPNOTSUPP) and
/// changes nothing.
#[test]
fn an_exchange_the_store_cannot_make_atomic_is_refused_and_changes_nothing() {
    let fs = fs_over(Arc::new(GatedStore::default()));
    write_file(&fs, ROOT, "a", b"AAAA");
    write_file(&fs, ROOT, "b", b"BB");
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    let err = fs.rename(ROOT, b"a", ROOT, b"b", exchange).unwrap_err();
    assert_eq!(err.errno(), libc::EOPNOTSUPP);
    assert_eq!(contents(&fs, "a"), b"AAAA");
    assert_eq!(contents(&fs, "b"), b"BB");
}

/// An open handle keeps reading its own file across an exchange.
#[test]
fn an_open_file_follows_its_value_through_an_exchange() {
    let fs = fs_over(Arc::new(MemStore::new()));
    let a = write_file(&fs, ROOT, "a", b"AAAA");
    write_file(&fs, ROOT, "b", b"BB");
    let o = fs.open(a, libc::O_RDONLY).unwrap();
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    fs.rename(ROOT, b"a", ROOT, b"b", exchange).unwrap();
    assert_eq!(fs.read(o.fh, 0, 100).unwrap(), b"AAAA");
    fs.release(o.fh).unwrap();
}

/// An unlink that runs after an open has read the file's node and key but before the open
/// entered the open-file table finds the file not open and removes it: the open must then
/// fail (ENOENT), not hand out a handle whose writes the close would put back under no name.
#[test]
fn an_unlink_between_an_opens_reads_and_its_table_entry_fails_the_open() {
    let store = Arc::new(MemStore::new());
    let fs = Arc::new(fs_over(store.clone()));
    let ino = write_file(&fs, ROOT, "f", b"old");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *fs.open_gate.lock() = Some((entered_tx, release_rx));
    let opener = {
        let fs = fs.clone();
        std::thread::spawn(move || -> FsResult<Vec<u8>> {
            let o = fs.open(ino, libc::O_RDWR)?;
            let written = fs.write(o.fh, 0, b"written after the rm");
            let read = fs.read(o.fh, 0, 64);
            let released = fs.release(o.fh);
            written?;
            released?;
            read
        })
    };
    entered
        .recv_timeout(HANG)
        .expect("the open did not reach its gate");
    fs.unlink(ROOT, b"f").unwrap();
    release.send(()).unwrap();
    let result = opener.join().unwrap();
    assert!(fs.lookup(ROOT, b"f").is_err());
    assert!(
        !store.has(&Key::new("/f")).unwrap(),
        "the removed file's value is back in the store (open: {result:?})"
    );
    assert!(matches!(result, Err(FsError::NotFound)), "{result:?}");
}

/// The CID `ipfs add` gives `data` (default settings).
fn cid_of(data: &[u8]) -> String {
    let mem = MemStore::new();
    let key = Key::new("/v");
    mem.put(&key, data).unwrap();
    crate::unixfs::import_value(
        &mem,
        &key,
        data.len() as u64,
        crate::unixfs::ImportOptions::default(),
        &mut crate::unixfs::Discard,
    )
    .unwrap()
    .cid
    .to_string()
}

/// Waits until `thread` has finished or waits for a subtree guard of `fs`.
fn finished_or_waiting<T>(fs: &DsFs, thread: &std::thread::JoinHandle<T>) {
    let deadline = std::time::Instant::now() + HANG;
    while !thread.is_finished() && fs.subtrees.waiters() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "neither finished nor waiting"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `getxattr user.ipfs.cid` reads the file's value by its key: a `mv` of the file's directory
/// between the key lookup and the read moved the value away, and the getxattr failed (the
/// store's not-found) for a file that never went away.
#[test]
fn the_cid_of_a_file_is_read_whole_while_its_directory_is_renamed() {
    let store = Arc::new(GatedStore::default());
    let fs = Arc::new(fs_over(store.clone()));
    let d = fs.mkdir(CTX, ROOT, b"d", 0o755, 0o022).unwrap().ino;
    let content = b"the file whose CID is asked".to_vec();
    let f = write_file(&fs, d, "f", &content);
    let (entered, release) = store.arm_read_at();
    let asker = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.getxattr(f, CID_XATTR.as_bytes()))
    };
    entered
        .recv_timeout(HANG)
        .expect("the getxattr never read the value");
    let mover = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.rename(ROOT, b"d", ROOT, b"e", RenameFlags::default()))
    };
    finished_or_waiting(&fs, &mover);
    release.send(()).unwrap();
    let cid = asker.join().unwrap();
    mover.join().unwrap().unwrap();
    match cid {
        Ok(cid) => assert_eq!(String::from_utf8(cid).unwrap(), cid_of(&content)),
        Err(e) => panic!("getxattr while the directory moved: {e}"),
    }
}

/// The block writer of `ipfs_blocks` reads a committed file by the key it had at its commit:
/// when the file was renamed before the writer read it, and another file of the same size
/// took its old name, the writer turned the other file's content into blocks and recorded
/// that CID as the first file's `user.ipfs.cid`.
#[test]
fn the_block_writer_reads_the_file_it_was_given_when_a_rename_overtakes_it() {
    let store = Arc::new(GatedStore::default());
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let indexed = Arc::new(IndexedStore::new(store.clone(), index));
    let fs = Arc::new(DsFs::new(
        indexed,
        FsOptions {
            ipfs_blocks: true,
            ..FsOptions::default()
        },
    ));
    let first = b"AAAA the first file's content".to_vec();
    let second = b"BBBB other content, same size".to_vec();
    assert_eq!(first.len(), second.len());
    // The writer's first read of the first file stops at the gate.
    let (entered, release) = store.arm_read_at();
    let a = write_file(&fs, ROOT, "a", &first);
    entered
        .recv_timeout(HANG)
        .expect("the block writer never read the file");
    let mover = {
        let fs = fs.clone();
        let second = second.clone();
        std::thread::spawn(move || {
            fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default())
                .unwrap();
            write_file(&fs, ROOT, "a", &second)
        })
    };
    finished_or_waiting(&fs, &mover);
    release.send(()).unwrap();
    let new_a = mover.join().unwrap();
    fs.shutdown().unwrap();
    let cid = |ino| String::from_utf8(fs.getxattr(ino, CID_XATTR.as_bytes()).unwrap()).unwrap();
    assert_eq!(cid(a), cid_of(&first), "the CID of the renamed file");
    assert_eq!(cid(new_a), cid_of(&second));
}
