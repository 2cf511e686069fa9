//! A flatfs directory that someone else wrote: files of the wrong type, symlinks, and
//! journal records that were never ours. Opening it must neither hang, nor panic, nor read or
//! write anything outside the store's root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use sha2::Digest;

use super::{FlatFsOptions, FlatFsStore, ShardFn, TEMP_DIR};
use crate::datastore::{Datastore, Key};

/// How long an open may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// A store at `dir` holding `/VALUE` = `value`, closed again; returns the data file's path
/// relative to `dir`.
fn store_with(dir: &Path, value: &[u8]) -> String {
    let store =
        FlatFsStore::create_or_open(dir, ShardFn::NextToLast(2), FlatFsOptions::default()).unwrap();
    let key = Key::new("/VALUE");
    store.put(&key, value).unwrap();
    let rel = store
        .data_path(&key)
        .unwrap()
        .strip_prefix(dir)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    store.close().unwrap();
    rel
}

/// The text of a journal record (the format of `journal.rs`), with a correct checksum.
fn record(
    target: &str,
    stage: &str,
    id: (u64, u64),
    keep: u64,
    len: u64,
    dirty: &[(u64, u64)],
) -> Vec<u8> {
    let mut s = format!(
        "dsfs-flatfs-journal 1\nseq 1\ntarget {target}\nstage {stage}\nid {} {}\nkeep {keep}\nlen {len}\n",
        id.0, id.1
    );
    for (a, b) in dirty {
        s.push_str(&format!("dirty {a} {b}\n"));
    }
    let sum: String = sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    s.push_str(&format!("sum {sum}\n"));
    s.into_bytes()
}

fn id_of(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// Opens the store at `dir` on another thread: `None` if that takes longer than [`HANG`].
fn open_within(dir: &Path) -> Option<crate::datastore::Result<FlatFsStore>> {
    let dir = dir.to_owned();
    within(move || FlatFsStore::open(&dir, FlatFsOptions::default()))
}

/// Runs `f` on another thread: `None` if it takes longer than [`HANG`].
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG).ok()
}

#[test]
fn a_fifo_named_like_a_journal_record_does_not_hang_the_open() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    crate::sys::mkfifo(&dir.path().join(TEMP_DIR).join("journal-fifo"));
    let store = open_within(dir.path())
        .expect("opening a store whose .temp holds a FIFO hung")
        .unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), b"value");
}

#[test]
fn a_journal_record_with_a_reversed_range_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let rel = store_with(dir.path(), &[7u8; 100]);
    let temp = dir.path().join(TEMP_DIR);
    std::fs::write(temp.join("stage-1"), [1u8; 200]).unwrap();
    let id = id_of(&dir.path().join(&rel));
    let r = record(&rel, "stage-1", id, 100, 100, &[(90, 10)]);
    std::fs::write(temp.join("journal-1"), r).unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), [7u8; 100]);
}

#[test]
fn a_journal_record_writes_nothing_through_a_symlinked_shard_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    let victim = outside.path().join("VICTIM.data");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ZZ")).unwrap();
    let temp = dir.path().join(TEMP_DIR);
    std::fs::write(temp.join("stage-1"), b"OVERWRITTEN").unwrap();
    let r = record(
        "ZZ/VICTIM.data",
        "stage-1",
        id_of(&victim),
        8,
        11,
        &[(0, 11)],
    );
    std::fs::write(temp.join("journal-1"), r).unwrap();
    let opened = open_within(dir.path()).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    drop(opened);
}

#[test]
fn a_journal_record_reads_no_staging_file_outside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let rel = store_with(dir.path(), b"value");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"SECRET").unwrap();
    let temp = dir.path().join(TEMP_DIR);
    std::os::unix::fs::symlink(&secret, temp.join("stage-1")).unwrap();
    let id = id_of(&dir.path().join(&rel));
    let r = record(&rel, "stage-1", id, 5, 6, &[(0, 6)]);
    std::fs::write(temp.join("journal-1"), r).unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), b"value");
}

/// A store at `dir` holding `/VALUE`, closed, without its disk-usage cache (so the next open
/// measures the directory).
fn store_without_cache(dir: &Path) -> String {
    let rel = store_with(dir, b"value");
    std::fs::remove_file(dir.join(super::DISK_USAGE_FILE)).unwrap();
    rel
}

#[test]
fn measuring_the_disk_usage_survives_a_symlink_loop() {
    let dir = tempfile::tempdir().unwrap();
    let rel = store_without_cache(dir.path());
    let shard = dir.path().join(&rel).parent().unwrap().to_owned();
    std::os::unix::fs::symlink("LOOP.data", shard.join("LOOP.data")).unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), b"value");
}

#[test]
fn measuring_the_disk_usage_follows_no_symlink_out_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("big"), vec![0u8; 4 << 20]).unwrap();
    store_without_cache(dir.path());
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ZZ")).unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    let du = store.disk_usage().unwrap().unwrap();
    assert!(
        du < 1 << 20,
        "the 4 MiB outside the store were counted: {du}"
    );
}

#[test]
fn a_fifo_as_the_sharding_file_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    let path = dir.path().join(super::SHARDING_FILE);
    std::fs::remove_file(&path).unwrap();
    crate::sys::mkfifo(&path);
    let Err(e) = open_within(dir.path()).expect("opening a store whose SHARDING is a FIFO hung")
    else {
        panic!("a FIFO is no shard identifier");
    };
    assert_eq!(e.kind(), crate::datastore::ErrorKind::Corrupt, "{e}");
}

#[test]
fn a_fifo_as_the_disk_usage_cache_is_measured_over_not_read() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    let path = dir.path().join(super::DISK_USAGE_FILE);
    std::fs::remove_file(&path).unwrap();
    crate::sys::mkfifo(&path);
    let store = open_within(dir.path())
        .expect("opening a store whose diskUsage.cache is a FIFO hung")
        .unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), b"value");
}

#[test]
fn a_directory_as_the_disk_usage_cache_fails_no_write_and_no_close() {
    let dir = tempfile::tempdir().unwrap();
    store_without_cache(dir.path());
    std::fs::create_dir(dir.path().join(super::DISK_USAGE_FILE)).unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    store.put(&Key::new("/MORE"), b"more").unwrap();
    assert_eq!(store.get(&Key::new("/VALUE")).unwrap(), b"value");
    // The cache is an estimate: not being able to write it is no failure of the store.
    store.close().unwrap();
    let again = open_within(dir.path()).unwrap().unwrap();
    assert_eq!(again.get(&Key::new("/MORE")).unwrap(), b"more");
    again.close().unwrap();
}

#[test]
fn a_fifo_as_the_store_id_is_replaced_not_read() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    let path = dir.path().join(super::ID_FILE);
    let _ = std::fs::remove_file(&path);
    crate::sys::mkfifo(&path);
    let root = dir.path().to_owned();
    let id = within(move || super::follow::store_id(&root))
        .expect("reading a store id that is a FIFO hung")
        .unwrap();
    assert!(!id.is_empty());
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
}

#[test]
fn a_data_file_in_another_names_shard_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), b"value");
    // CIQMISPLACED's own shard directory (next-to-last/2) is "ED", not "ZZ".
    std::fs::create_dir(dir.path().join("ZZ")).unwrap();
    std::fs::write(dir.path().join("ZZ/CIQMISPLACED.data"), b"lost").unwrap();
    let store = open_within(dir.path()).unwrap().unwrap();
    // Listed (as upstream lists it), but not readable under its key...
    let listed: Vec<Key> = store
        .query(crate::datastore::Query {
            keys_only: true,
            ..Default::default()
        })
        .unwrap()
        .map(|e| e.unwrap().key)
        .collect();
    assert!(listed.contains(&Key::new("/CIQMISPLACED")), "{listed:?}");
    assert!(store.get(&Key::new("/CIQMISPLACED")).is_err());
    // ...so the check names it.
    let problems = store.scrub(false).unwrap();
    assert!(
        problems.iter().any(|p| p.contains("CIQMISPLACED")),
        "{problems:?}"
    );
}
