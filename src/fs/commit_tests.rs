//! Commits of a file running while its other handles write: writes do not wait for a commit,
//! reads see new writes over the bytes being committed, and nothing written is lost when a
//! commit fails.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::backend::MemStore;
use crate::backend::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use crate::datastore::ErrorKind;
use crate::datastore::faulty::{FaultOp, FaultyStore};
use crate::index::{IndexOptions, ROOT};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

/// How long a test waits for something that must not be blocked before calling it a hang.
const HANG: Duration = Duration::from_secs(20);

fn fs_over<D: Datastore + 'static>(faults: Arc<FaultyStore<D>>) -> Arc<DsFs> {
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let store = Arc::new(IndexedStore::new(faults, index));
    Arc::new(DsFs::new(store, FsOptions::default()))
}

fn flatfs(dir: &std::path::Path) -> Arc<FaultyStore<FlatFsStore>> {
    let store =
        FlatFsStore::create_or_open(dir, ShardFn::NextToLast(2), FlatFsOptions::default()).unwrap();
    Arc::new(FaultyStore::new(store))
}

/// Creates `name` holding `data` (committed) and returns its inode.
fn write_file(fs: &DsFs, name: &str, data: &[u8]) -> u64 {
    let (attr, o) = fs
        .create(CTX, ROOT, name.as_bytes(), 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    fs.write(o.fh, 0, data).unwrap();
    fs.release(o.fh).unwrap();
    attr.ino
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A write through one handle returns while another handle's fsync is inside the store's
/// commit; reads and the size see it over the bytes being committed; the next fsync commits it.
fn a_write_does_not_wait_for_a_commit_in_progress<D: Datastore + 'static>(
    faults: Arc<FaultyStore<D>>,
    size: usize,
) {
    let fs = fs_over(faults.clone());
    let old = pattern(size, 1);
    let ino = write_file(&fs, "VALUE", &old);
    let a = fs.open(ino, libc::O_RDWR).unwrap();
    let b = fs.open(ino, libc::O_RDWR).unwrap();
    fs.write(a.fh, 4096, b"first").unwrap();
    let (entered, release) = faults.hold_next(FaultOp::CommitStaged);
    let syncer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.fsync(a.fh))
    };
    entered
        .recv_timeout(HANG)
        .expect("the fsync never reached the store");
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            let r = fs.write(b.fh, size as u64, b"grown");
            let _ = done_tx.send(());
            r
        })
    };
    let unblocked = done_rx.recv_timeout(HANG);
    // Reads while the commit is still held, if the write got through.
    let seen = unblocked
        .is_ok()
        .then(|| (fs.read(b.fh, 4090, 20), fs.getattr(ino).map(|a| a.size)));
    release.send(()).unwrap();
    syncer.join().unwrap().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        unblocked.is_ok(),
        "a write waited for another handle's commit"
    );
    let mut want = old.clone();
    want[4096..4101].copy_from_slice(b"first");
    want.extend_from_slice(b"grown");
    let (read, len) = seen.unwrap();
    assert_eq!(read.unwrap(), &want[4090..4110]);
    assert_eq!(len.unwrap(), size as u64 + 5);
    fs.fsync(b.fh).unwrap();
    assert_eq!(fs.read(a.fh, 0, size as u32 + 100).unwrap(), want);
    fs.release(a.fh).unwrap();
    fs.release(b.fh).unwrap();
    let o = fs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(o.fh, 0, size as u32 + 100).unwrap(), want);
    fs.release(o.fh).unwrap();
}

#[test]
fn a_write_does_not_wait_for_a_commit_in_progress_on_memory() {
    a_write_does_not_wait_for_a_commit_in_progress(
        Arc::new(FaultyStore::new(MemStore::new())),
        64 << 10,
    );
}

/// On flatfs a big file's commit writes its dirty ranges in place (behind the journal), and
/// the writes made meanwhile are committed in place over it by the next one.
#[test]
fn a_write_does_not_wait_for_a_commit_in_progress_on_flatfs() {
    let dir = tempfile::tempdir().unwrap();
    a_write_does_not_wait_for_a_commit_in_progress(flatfs(dir.path()), 9 << 20);
}

/// A commit that fails while another handle writes keeps both its own bytes and the new ones
/// staged: the next fsync commits them all.
#[test]
fn a_failed_commit_keeps_the_writes_made_during_it() {
    let faults = Arc::new(FaultyStore::new(MemStore::new()));
    let fs = fs_over(faults.clone());
    let old = pattern(32 << 10, 2);
    let ino = write_file(&fs, "VALUE", &old);
    let a = fs.open(ino, libc::O_RDWR).unwrap();
    let b = fs.open(ino, libc::O_RDWR).unwrap();
    fs.write(a.fh, 100, b"AAAA").unwrap();
    let (entered, release) = faults.hold_next(FaultOp::CommitStaged);
    faults.fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 1);
    let syncer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.fsync(a.fh))
    };
    entered.recv_timeout(HANG).unwrap();
    let writer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.write(b.fh, 200, b"BBBB"))
    };
    // On code where the write waits for the commit, it finishes only after the release.
    std::thread::sleep(Duration::from_millis(100));
    release.send(()).unwrap();
    assert_eq!(syncer.join().unwrap().unwrap_err().errno(), libc::ENOSPC);
    writer.join().unwrap().unwrap();
    let mut want = old.clone();
    want[100..104].copy_from_slice(b"AAAA");
    want[200..204].copy_from_slice(b"BBBB");
    assert_eq!(fs.read(b.fh, 0, 1 << 20).unwrap(), want);
    assert_eq!(faults.inner().get(&Key::new("/VALUE")).unwrap(), old);
    fs.fsync(b.fh).unwrap();
    assert_eq!(faults.inner().get(&Key::new("/VALUE")).unwrap(), want);
    fs.release(a.fh).unwrap();
    fs.release(b.fh).unwrap();
}

/// Several handles write random blocks of one file (each its own blocks, so the result is
/// defined) while another fsyncs it over and over, with some commits failing: every read
/// through the mount matches a model of the writes at every moment, and after a last fsync the
/// store holds exactly the model.
fn concurrent_writers_and_failing_commits_match_a_model<D: Datastore + 'static>(
    faults: Arc<FaultyStore<D>>,
    size: usize,
    stored: impl Fn(&FaultyStore<D>) -> Vec<u8>,
) {
    const WRITERS: usize = 4;
    const BLOCK: usize = 4096;
    let fs = fs_over(faults.clone());
    let ino = write_file(&fs, "VALUE", &pattern(size, 3));
    let blocks = size / BLOCK;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let fs = fs.clone();
        writers.push(std::thread::spawn(move || {
            let o = fs.open(ino, libc::O_RDWR).unwrap();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
            let mut mine: Vec<(usize, Vec<u8>)> = Vec::new();
            for i in 0..300u32 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Writer w owns the blocks b with b % WRITERS == w.
                let block = (rng as usize % (blocks / WRITERS)) * WRITERS + w;
                let data = pattern(BLOCK, (i as u8) ^ (w as u8 * 64));
                fs.write(o.fh, (block * BLOCK) as u64, &data).unwrap();
                let back = fs.read(o.fh, (block * BLOCK) as u64, BLOCK as u32).unwrap();
                assert_eq!(back, data, "writer {w} lost its write {i} to block {block}");
                mine.push((block, data));
            }
            fs.release(o.fh).unwrap_or(());
            mine
        }));
    }
    let syncer = {
        let fs = fs.clone();
        let faults = faults.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let o = fs.open(ino, libc::O_RDWR).unwrap();
            let (mut ok, mut failed) = (0, 0);
            let mut i = 0u32;
            // At least one fsync even if the writers finished before this thread got to run
            // (seen under load: 'no fsync ran').
            while i == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if i % 3 == 1 {
                    faults.fail_next(FaultOp::CommitStaged, ErrorKind::NoSpace, 1);
                }
                match fs.fsync(o.fh) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            faults.heal();
            (o, ok, failed)
        })
    };
    let mut model = pattern(size, 3);
    let mut histories = Vec::new();
    for w in writers {
        histories.push(w.join().unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (o, ok, failed) = syncer.join().unwrap();
    for history in histories {
        for (block, data) in history {
            model[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&data);
        }
    }
    assert!(ok + failed > 0, "no fsync ran");
    assert_eq!(fs.read(o.fh, 0, size as u32).unwrap(), model);
    fs.fsync(o.fh).unwrap();
    fs.release(o.fh).unwrap();
    assert_eq!(
        stored(&faults),
        model,
        "after {ok} fsyncs and {failed} failed"
    );
}

#[test]
fn concurrent_writers_and_failing_commits_match_a_model_on_memory() {
    concurrent_writers_and_failing_commits_match_a_model(
        Arc::new(FaultyStore::new(MemStore::new())),
        256 << 10,
        |f| f.inner().get(&Key::new("/VALUE")).unwrap(),
    );
}

#[test]
fn concurrent_writers_and_failing_commits_match_a_model_on_flatfs() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_writers_and_failing_commits_match_a_model(flatfs(dir.path()), 10 << 20, |f| {
        f.inner().get(&Key::new("/VALUE")).unwrap()
    });
}
