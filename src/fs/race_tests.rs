//! `DsFs` under concurrency: reads racing renames, and no table lock held across store I/O.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::backend::MemStore;
use crate::datastore::{Batch, BatchOps, Capabilities, Query, Result as DsResult, Results};
use crate::index::IndexOptions;

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

/// A memory store whose whole-value reads (`get`, which staging copies use) stop, once armed,
/// until the test lets them go: a store call that hangs.
#[derive(Default)]
struct GatedStore {
    inner: MemStore,
    armed: std::sync::atomic::AtomicBool,
    entered: parking_lot::Mutex<Option<mpsc::Sender<()>>>,
    release: parking_lot::Mutex<Option<mpsc::Receiver<()>>>,
}

impl GatedStore {
    /// Arms the gate: the next `get` reports on the returned receiver and waits for the
    /// returned sender.
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock() = Some(entered_tx);
        *self.release.lock() = Some(release_rx);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        (entered_rx, release_tx)
    }

    fn wait_if_armed(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
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
        self.wait_if_armed();
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
