//! Operations below a directory that is being renamed (`subtree.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::race_tests::GatedStore;
use super::tests::{CTX, write_file};
use super::*;
use crate::datastore::Query;
use crate::index::{IndexOptions, ROOT};

fn mkdir(fs: &DsFs, parent: u64, name: &str) -> u64 {
    fs.mkdir(CTX, parent, name.as_bytes(), 0o755, 0o022)
        .unwrap()
        .ino
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
    let store = Arc::new(GatedStore::default());
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let fs = Arc::new(DsFs::new(
        Arc::new(IndexedStore::new(store.clone(), index)),
        FsOptions::default(),
    ));
    let a = mkdir(&fs, ROOT, "a");
    let sub = mkdir(&fs, a, "sub");
    write_file(&fs, sub, "old", b"old value");
    write_file(&fs, sub, "doomed", b"doomed value");
    let rewritten = write_file(&fs, sub, "rewritten", b"first");

    let (entered, release) = store.arm_rename();
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
    let store = Arc::new(GatedStore::default());
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
    store.fail_rename_in.store(3, Ordering::SeqCst);
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
