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

/// A filesystem over an in-memory index and a [`GatedStore`].
fn gated_fs() -> (Arc<GatedStore>, Arc<DsFs>) {
    let store = Arc::new(GatedStore::default());
    let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
    let fs = DsFs::new(
        Arc::new(IndexedStore::new(store.clone(), index)),
        FsOptions::default(),
    );
    (store, Arc::new(fs))
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
    let (store, fs) = gated_fs();
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
    let (store, fs) = gated_fs();
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

/// `rm a/x` of the first name of a file also linked as `b/y` moves its value to `/b/y`; a `mv b
/// c` meanwhile must not leave that value under `/b/y` while the index files the node as `c/y`.
/// The unlink's store move is held; the rename of `b` must wait for it. Before, the unlink
/// guarded `a` only, the rename ran beside it, and `c/y` read as missing.
#[test]
fn the_value_of_a_hard_linked_file_follows_a_rename_of_its_other_names_directory() {
    heir_directory_renamed_during(|fs, a| fs.unlink(a, b"x"));
}

/// The same when `a/x` is replaced by a rename (`mv a/s a/x`) instead of removed.
#[test]
fn the_value_of_a_hard_linked_file_replaced_by_a_rename_follows_its_other_name() {
    heir_directory_renamed_during(|fs, a| fs.rename(a, b"s", a, b"x", RenameFlags::default()));
}

/// `a/x` and `b/y` name one file (the value under `/a/x`); `first` removes the name `a/x`
/// (moving the value to `/b/y`) and is held at that store move while `mv b c` is started.
fn heir_directory_renamed_during(first: fn(&DsFs, u64) -> FsResult<()>) {
    let held = first_name_going("b", b"linked value", first);
    let (fs, b, x) = (&held.fs, held.other, held.x);
    // The value is on its way to `/b/y`.
    let renamer = beside(fs, |fs| {
        fs.rename(ROOT, b"b", ROOT, b"c", RenameFlags::default())
    });
    held.release.send(()).unwrap();
    held.remover.join().unwrap().unwrap();
    renamer.join().unwrap().unwrap();

    let c = fs.lookup(ROOT, b"c").unwrap().ino;
    assert_eq!(c, b);
    assert_eq!(fs.lookup(c, b"y").unwrap().ino, x);
    match read_file(fs, x) {
        Ok(got) => assert_eq!(got, b"linked value"),
        Err(e) => panic!("c/y after a/x went and b moved to c: {e}"),
    }
    assert_eq!(others_than_a(store_keys(&held.store)), ["/c/y"]);
}

/// A file `a/x` holding `value` and also linked as `OTHER/y` (a new directory), beside `a/s`;
/// `first` (which removes the name `a/x`, moving the value to `/OTHER/y`) runs in a thread
/// and is held at that store move.
struct FirstNameGoing {
    store: Arc<GatedStore>,
    fs: Arc<DsFs>,
    other: u64,
    x: u64,
    /// Lets the held store move go on.
    release: std::sync::mpsc::Sender<()>,
    remover: std::thread::JoinHandle<FsResult<()>>,
}

fn first_name_going(
    other: &str,
    value: &[u8],
    first: fn(&DsFs, u64) -> FsResult<()>,
) -> FirstNameGoing {
    let (store, fs) = gated_fs();
    let a = mkdir(&fs, ROOT, "a");
    let o = mkdir(&fs, ROOT, other);
    let x = write_file(&fs, a, "x", value);
    fs.link(x, o, b"y").unwrap();
    write_file(&fs, a, "s", b"replacement");
    let (entered, release) = store.arm_rename();
    let remover = {
        let fs = fs.clone();
        std::thread::spawn(move || first(&fs, a))
    };
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the value never moved");
    FirstNameGoing {
        store,
        fs,
        other: o,
        x,
        release,
        remover,
    }
}

/// `keys` without `/a/s` and `/a/x` (which of them remains depends on how the name went).
fn others_than_a(keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .filter(|k| k != "/a/s" && k != "/a/x")
        .collect()
}

/// Runs `op` in a thread that may have to wait for a guard; gives it every chance to run
/// beside whatever holds the store (it must wait instead, or be harmless), for up to a second.
fn beside<T: Send + 'static>(
    fs: &Arc<DsFs>,
    op: impl FnOnce(&DsFs) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let fs = fs.clone();
    let t = std::thread::spawn(move || op(&fs));
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while !t.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    t
}

/// The keys in the store, sorted.
fn store_keys(store: &GatedStore) -> Vec<String> {
    let mut keys: Vec<String> = store
        .inner
        .query(Query::default())
        .unwrap()
        .map(|e| e.unwrap().key.to_string())
        .collect();
    keys.sort();
    keys
}

/// `rm a/x` of the first name of a file also linked as `c/y` moves its value to `/c/y`; an
/// open of the file meanwhile (through `c/y`) must not keep the key `/a/x`. The unlink is held
/// at its store move while the file is opened and written; the handle is closed after the
/// unlink. Before, the open ran beside the move, read the key `/a/x` and its close committed
/// the new bytes there (and listed `/a/x` in the index), while `c/y` kept the old value.
#[test]
fn a_file_opened_while_its_first_name_is_removed_commits_under_its_new_key() {
    opened_while_first_name_goes(|fs, a| fs.unlink(a, b"x"));
}

/// The same when `a/x` is replaced by a rename (`mv a/s a/x`) instead of removed.
#[test]
fn a_file_opened_while_its_first_name_is_replaced_commits_under_its_new_key() {
    opened_while_first_name_goes(|fs, a| fs.rename(a, b"s", a, b"x", RenameFlags::default()));
}

/// `a/x` and `c/y` name one file (the value under `/a/x`); `first` removes the name `a/x`
/// (moving the value to `/c/y`) and is held at that store move while the file is opened.
fn opened_while_first_name_goes(first: fn(&DsFs, u64) -> FsResult<()>) {
    let held = first_name_going("c", b"old value", first);
    let (fs, c, x) = (&held.fs, held.other, held.x);
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let writer = beside(fs, move |fs| -> FsResult<()> {
        let o = fs.open(x, libc::O_WRONLY | libc::O_TRUNC)?;
        fs.write(o.fh, 0, b"new value")?;
        let _ = opened_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(60));
        fs.release(o.fh)
    });
    held.release.send(()).unwrap();
    held.remover.join().unwrap().unwrap();
    opened
        .recv_timeout(Duration::from_secs(60))
        .expect("the open never finished");
    go.send(()).unwrap();
    writer.join().unwrap().unwrap();

    let y = fs.lookup(c, b"y").unwrap();
    assert_eq!(y.ino, x);
    match read_file(fs, x) {
        Ok(got) => assert_eq!(got, b"new value"),
        Err(e) => panic!("c/y after the write: {e}"),
    }
    assert_eq!(others_than_a(store_keys(&held.store)), ["/c/y"]);
    let listed: Vec<(String, u64)> = fs
        .index
        .keys(None)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.id == x)
        .map(|e| (e.key.to_string(), e.size))
        .collect();
    assert_eq!(listed, [("/c/y".to_string(), 9)]);
}

/// `mv a/x a/z` of a file also linked as `c/y`, while a `create` of `c/y` (no `O_EXCL`: an
/// open of the existing file) writes it. Before, the create guarded `c` only, so it ran beside
/// the rename, opened the file with the key `/a/x` and its close committed there, while
/// `a/z` kept the old value.
#[test]
fn a_file_opened_by_create_through_another_name_while_renamed_commits_under_its_new_key() {
    let (store, fs) = gated_fs();
    let a = mkdir(&fs, ROOT, "a");
    let c = mkdir(&fs, ROOT, "c");
    let x = write_file(&fs, a, "x", b"old value");
    fs.link(x, c, b"y").unwrap();

    let (entered, release) = store.arm_rename();
    let renamer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.rename(a, b"x", a, b"z", RenameFlags::default()))
    };
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the rename never moved the value");
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let writer = beside(&fs, move |fs| -> FsResult<()> {
        let (attr, o) = fs.create(CTX, c, b"y", 0o644, 0o022, libc::O_WRONLY | libc::O_TRUNC)?;
        assert_eq!(attr.ino, x);
        fs.write(o.fh, 0, b"new value")?;
        let _ = opened_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(60));
        fs.release(o.fh)
    });
    release.send(()).unwrap();
    renamer.join().unwrap().unwrap();
    opened
        .recv_timeout(Duration::from_secs(60))
        .expect("the create never finished");
    go.send(()).unwrap();
    writer.join().unwrap().unwrap();

    assert_eq!(fs.lookup(a, b"z").unwrap().ino, x);
    match read_file(&fs, x) {
        Ok(got) => assert_eq!(got, b"new value"),
        Err(e) => panic!("a/z after the write: {e}"),
    }
    assert_eq!(store_keys(&store), ["/a/z"]);
}

/// `mv a b` of a directory with a value of its own, which must first wait for a rename deeper
/// in it (`mv a/s/t a/s/u`, held at its store move); meanwhile `rm a/.dsfs.value` removes the
/// value (the kernel holds neither `a/s` nor the root for it). Before, the rename had read
/// `a`'s node before it waited, so it moved a value that was gone and failed (ENOENT).
#[test]
fn a_directory_rename_that_waited_sees_its_own_value_removed_meanwhile() {
    let (store, fs) = gated_fs();
    fs.store().put(&Key::new("/a"), b"own value").unwrap();
    fs.store().put(&Key::new("/a/s/t/f"), b"deep").unwrap();
    let a = fs.lookup(ROOT, b"a").unwrap().ino;
    let s = fs.lookup(a, b"s").unwrap().ino;

    let (entered, release) = store.arm_rename();
    let inner = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.rename(s, b"t", s, b"u", RenameFlags::default()))
    };
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the inner rename never moved a value");
    let outer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.rename(ROOT, b"a", ROOT, b"b", RenameFlags::default()))
    };
    // The outer rename waits for the inner one.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fs.subtrees.waiters() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outer rename never waited"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.unlink(a, b".dsfs.value").unwrap();
    release.send(()).unwrap();
    inner.join().unwrap().unwrap();
    match outer.join().unwrap() {
        Ok(()) => {}
        Err(e) => panic!("mv a b after a's value went: {e}"),
    }
    let b = fs.lookup(ROOT, b"b").unwrap().ino;
    assert_eq!(b, a);
    assert!(fs.lookup(b, b".dsfs.value").is_err());
    assert_eq!(store_keys(&store), ["/b/s/u/f"]);
}
