//! Operations below a directory that is being renamed (`subtree.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A memory store whose `rename` (the move of one value), once armed, stops until the test
/// lets it go: a rename caught between moving its values and recording the move.
#[derive(Default)]
struct RenameGate {
    inner: MemStore,
    armed: AtomicBool,
    entered: parking_lot::Mutex<Option<mpsc::Sender<()>>>,
    release: parking_lot::Mutex<Option<mpsc::Receiver<()>>>,
    /// Renames until the next one fails with EIO (0: none fails).
    fail_in: std::sync::atomic::AtomicUsize,
}

impl RenameGate {
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock() = Some(entered_tx);
        *self.release.lock() = Some(release_rx);
        self.armed.store(true, Ordering::SeqCst);
        (entered_rx, release_tx)
    }
}

impl Datastore for RenameGate {
    fn get(&self, key: &Key) -> DsResult<Vec<u8>> {
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> DsResult<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> DsResult<u64> {
        self.inner.get_size(key)
    }
    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> DsResult<usize> {
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
        if self.fail_in.load(Ordering::SeqCst) > 0
            && self.fail_in.fetch_sub(1, Ordering::SeqCst) == 1
        {
            return Err(crate::datastore::Error::new(
                crate::datastore::ErrorKind::Io,
                "injected rename failure",
            ));
        }
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().take() {
                let _ = tx.send(());
            }
            if let Some(rx) = self.release.lock().take() {
                let _ = rx.recv_timeout(Duration::from_secs(60));
            }
        }
        self.inner.rename(from, to)
    }
}

fn mkdir(fs: &DsFs, parent: u64, name: &str) -> u64 {
    fs.mkdir(CTX, parent, name.as_bytes(), 0o755, 0o022)
        .unwrap()
        .ino
}

fn write_file(fs: &DsFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, opened) = fs
        .create(CTX, parent, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.write(opened.fh, 0, data).unwrap();
    fs.release(opened.fh).unwrap();
    attr.ino
}

fn read_file(fs: &DsFs, ino: u64) -> FsResult<Vec<u8>> {
    let o = fs.open(ino, libc::O_RDONLY)?;
    let data = fs.read(o.fh, 0, 1 << 20);
    fs.release(o.fh)?;
    data
}

/// `mv a b` while another process creates, rewrites and removes files in `a/sub`: every file
/// ends up under `b`, with its value under its new key, and the removed one gone from the
/// store. Before the guards, the create filed its value under `a/sub/new` after the rename
/// had listed `a`'s values, so the file under `b/sub` read as missing.
#[test]
fn files_made_below_a_directory_being_renamed_follow_it() {
    let store = Arc::new(RenameGate::default());
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let fs = Arc::new(DsFs::new(
        Arc::new(IndexedStore::new(store.clone(), index)),
        FsOptions::default(),
    ));
    let a = mkdir(&fs, ROOT, "a");
    let sub = mkdir(&fs, a, "sub");
    write_file(&fs, sub, "old", b"old value");
    let doomed = write_file(&fs, sub, "doomed", b"doomed value");
    let rewritten = write_file(&fs, sub, "rewritten", b"first");

    let (entered, release) = store.arm();
    let renamer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default()))
    };
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the rename never moved a value");
    // The rename is between its store moves and its index transaction.
    let worker = {
        let fs = fs.clone();
        std::thread::spawn(move || -> FsResult<u64> {
            let new = write_file(&fs, sub, "new", b"new value");
            let o = fs.open(rewritten, libc::O_WRONLY | libc::O_TRUNC)?;
            fs.write(o.fh, 0, b"second")?;
            fs.release(o.fh)?;
            fs.unlink(sub, b"doomed")?;
            Ok(new)
        })
    };
    // Give the worker every chance to run beside the rename (it must wait for it instead).
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while !worker.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    release.send(()).unwrap();
    renamer.join().unwrap().unwrap();
    let new = worker.join().unwrap().unwrap();

    let b = fs.lookup(ROOT, b"b").unwrap().ino;
    assert_eq!(fs.lookup(b, b"sub").unwrap().ino, sub);
    for (ino, name, want) in [
        (new, "new", &b"new value"[..]),
        (rewritten, "rewritten", b"second"),
    ] {
        match read_file(&fs, ino) {
            Ok(got) => assert_eq!(got, want, "{name} through its inode"),
            Err(e) => panic!("{name} through its inode: {e}"),
        }
        let key = Key::new(format!("/b/sub/{name}"));
        assert_eq!(
            store.inner.get(&key).as_deref().ok(),
            Some(want),
            "{name}'s value under its new key"
        );
    }
    assert!(fs.lookup(sub, b"doomed").is_err());
    let _ = doomed;
    let mut left: Vec<String> = store
        .inner
        .query(Query::default())
        .unwrap()
        .map(|e| e.unwrap().key.to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["/b/sub/new", "/b/sub/old", "/b/sub/rewritten"]);
}

/// A directory rename whose third value move fails reports the error and leaves every file
/// under its old name with its value: the two values already moved go back. Before, they
/// stayed under the new keys while the index kept the old names, so they read as missing.
#[test]
fn a_directory_rename_that_fails_midway_leaves_every_file_where_it_was() {
    let store = Arc::new(RenameGate::default());
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let fs = DsFs::new(
        Arc::new(IndexedStore::new(store.clone(), index)),
        FsOptions::default(),
    );
    let d = mkdir(&fs, ROOT, "d");
    let files: Vec<(u64, Vec<u8>)> = (0..4u8)
        .map(|i| {
            let data = vec![i; 100 + i as usize];
            (write_file(&fs, d, &format!("f{i}"), &data), data)
        })
        .collect();
    store.fail_in.store(3, Ordering::SeqCst);
    let err = fs
        .rename(ROOT, b"d", ROOT, b"e", RenameFlags::default())
        .unwrap_err();
    assert!(matches!(err, FsError::Io(_)), "{err:?}");
    assert_eq!(fs.lookup(ROOT, b"d").unwrap().ino, d);
    assert!(fs.lookup(ROOT, b"e").is_err());
    for (i, (ino, data)) in files.iter().enumerate() {
        match read_file(&fs, *ino) {
            Ok(got) => assert_eq!(&got, data, "f{i}"),
            Err(e) => panic!("f{i} after the failed rename: {e}"),
        }
        let key = Key::new(format!("/d/f{i}"));
        assert_eq!(store.inner.get(&key).ok().as_ref(), Some(data), "{key}");
    }
    // And the rename works once the store does.
    fs.rename(ROOT, b"d", ROOT, b"e", RenameFlags::default())
        .unwrap();
    for (ino, data) in &files {
        assert_eq!(&read_file(&fs, *ino).unwrap(), data);
    }
}
