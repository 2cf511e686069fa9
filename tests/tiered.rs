//! The tiered store: small values inline in redb, large ones as plain files.

use std::path::Path;

use dsfs::backend::TieredStore;
use dsfs::backend::tiered::TieredOptions;
use dsfs::datastore::{Datastore, Key, Query, StageInit};

fn open(dir: &Path) -> TieredStore {
    TieredStore::open(
        &dir.join("records.redb"),
        &dir.join("files"),
        TieredOptions {
            threshold: 1024,
            ..TieredOptions::default()
        },
    )
    .unwrap()
}

/// The `.data` files in the file tier.
fn files(dir: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(dir.join("files")).unwrap() {
        let shard = shard.unwrap();
        if shard.file_name().to_string_lossy().starts_with('.') || !shard.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap() {
            if f.unwrap().file_name().to_string_lossy().ends_with(".data") {
                n += 1;
            }
        }
    }
    n
}

fn k(s: &str) -> Key {
    Key::new(s)
}

/// Files replaced or deleted are removed at the next checkpoint, after the records that
/// stopped pointing at them are durable; `sync` runs one.
fn settled(s: &TieredStore, dir: &Path) -> usize {
    s.sync(&Key::root()).unwrap();
    files(dir)
}

#[test]
fn small_values_stay_inline_and_large_ones_become_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.put(&k("/small"), b"tiny").unwrap();
    assert_eq!(files(dir.path()), 0);
    assert!(s.backing_file(&k("/small")).unwrap().is_none());
    let big = vec![7u8; 5000];
    s.put(&k("/big"), &big).unwrap();
    assert_eq!(files(dir.path()), 1);
    let path = s.backing_file(&k("/big")).unwrap().unwrap();
    assert_eq!(
        std::fs::read(path).unwrap(),
        big,
        "the file holds the raw value"
    );
    assert_eq!(s.get(&k("/big")).unwrap(), big);
    assert_eq!(s.get_size(&k("/big")).unwrap(), 5000);
    let mut buf = [0u8; 10];
    assert_eq!(s.read_at(&k("/big"), 4995, &mut buf).unwrap(), 5);
    // Shrinking moves the value inline and removes the file; growing does the reverse.
    s.put(&k("/big"), b"now small").unwrap();
    assert_eq!(
        files(dir.path()),
        1,
        "the old file stays until the flip is durable"
    );
    assert_eq!(settled(&s, dir.path()), 0);
    assert_eq!(s.get(&k("/big")).unwrap(), b"now small");
    s.put(&k("/small"), &big).unwrap();
    assert_eq!(files(dir.path()), 1);
    s.delete(&k("/small")).unwrap();
    assert_eq!(settled(&s, dir.path()), 0);
}

#[test]
fn rename_moves_the_record_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let big = vec![1u8; 4096];
    s.put(&k("/a/x"), &big).unwrap();
    let before = s.backing_file(&k("/a/x")).unwrap().unwrap();
    s.put(&k("/b/y"), &vec![2u8; 4096]).unwrap();
    s.rename(&k("/a/x"), &k("/b/y")).unwrap();
    assert_eq!(s.backing_file(&k("/b/y")).unwrap().unwrap(), before);
    assert_eq!(s.get(&k("/b/y")).unwrap(), big);
    assert!(!s.has(&k("/a/x")).unwrap());
    assert_eq!(settled(&s, dir.path()), 1, "the replaced file is gone");
    assert!(s.rename(&k("/none"), &k("/z")).unwrap_err().is_not_found());
}

#[test]
fn staged_commits_pick_the_tier_by_final_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let st = s.stage(&k("/f"), StageInit::Empty).unwrap();
    st.write_all_at(0, &vec![3u8; 3000]).unwrap();
    s.commit_staged(&k("/f"), st, true).unwrap();
    assert!(s.backing_file(&k("/f")).unwrap().is_some());
    // Seeded from the file, shrunk below the threshold: back inline.
    let st = s.stage(&k("/f"), StageInit::CopyCurrent).unwrap();
    assert_eq!(st.len().unwrap(), 3000);
    st.set_len(10).unwrap();
    s.commit_staged(&k("/f"), st, false).unwrap();
    assert!(s.backing_file(&k("/f")).unwrap().is_none());
    assert_eq!(s.get(&k("/f")).unwrap(), vec![3u8; 10]);
    assert_eq!(settled(&s, dir.path()), 0);
    // Seeded from an inline value.
    let st = s.stage(&k("/f"), StageInit::CopyCurrent).unwrap();
    assert_eq!(st.read_all().unwrap(), vec![3u8; 10]);
}

#[test]
fn queries_return_real_values_and_sizes_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.put(&k("/q/b"), &vec![9u8; 2000]).unwrap();
    s.put(&k("/q/a"), b"aa").unwrap();
    s.put(&k("/other"), b"x").unwrap();
    let all: Vec<_> = s
        .query(Query::prefix("/q"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].key.as_str(), "/q/a");
    assert_eq!(all[0].value.as_deref(), Some(&b"aa"[..]));
    assert_eq!(all[1].value.as_ref().unwrap().len(), 2000);
    let keys: Vec<_> = s
        .query(Query {
            keys_only: true,
            returns_sizes: true,
            ..Query::default()
        })
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.key.into_string(), e.size)
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("/other".to_string(), Some(1)),
            ("/q/a".to_string(), Some(2)),
            ("/q/b".to_string(), Some(2000))
        ]
    );
}

#[test]
fn scrub_removes_files_no_record_points_to() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.put(&k("/keep"), &vec![1u8; 2048]).unwrap();
        s.close().unwrap();
    }
    // Debris of a crash between a file write and its record flip: a file nobody references.
    let shard = dir.path().join("files/AA");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join("ORPHANAAAAAAAAAAAAAAAAAAAAA.data"), b"lost").unwrap();
    let s = open(dir.path());
    let found = s.scrub(false).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(files(dir.path()), 2);
    s.scrub(true).unwrap();
    assert_eq!(files(dir.path()), 1);
    assert_eq!(s.get(&k("/keep")).unwrap(), vec![1u8; 2048]);
    assert!(s.scrub(false).unwrap().is_empty());
}

#[test]
fn batches_place_each_value_and_apply_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.put(&k("/gone"), &vec![5u8; 3000]).unwrap();
    let mut b = s.batch().unwrap();
    b.put(k("/big"), vec![4u8; 3000]).unwrap();
    b.put(k("/small"), b"s".to_vec()).unwrap();
    b.delete(k("/gone")).unwrap();
    b.put(k("/big"), vec![6u8; 4000]).unwrap();
    b.commit().unwrap();
    assert_eq!(s.get(&k("/big")).unwrap(), vec![6u8; 4000]);
    assert_eq!(s.get(&k("/small")).unwrap(), b"s");
    assert!(!s.has(&k("/gone")).unwrap());
    assert_eq!(settled(&s, dir.path()), 1);
}

#[test]
fn readers_racing_overwrites_and_checkpoints_never_see_a_missing_file() {
    // A reader that resolved a value's file just before an overwrite and a checkpoint deleted
    // it must read the value that is there now, not fail with "file missing".
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    let key = k("/hot");
    store.put(&key, &vec![0u8; 4096]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = store.read_at(&key, 0, &mut buf).unwrap();
                    assert_eq!(n, 4096);
                    // Every value is one repeated byte: a read never mixes two of them.
                    assert!(buf.iter().all(|b| *b == buf[0]));
                    store.get_size(&key).unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..300u32 {
        store.put(&key, &vec![round as u8; 4096]).unwrap();
        store.sync(&Key::root()).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

/// An exchange swaps two records in one transaction: the big values' files change names,
/// not places, and survive a reopen swapped.
#[test]
fn exchange_swaps_records_without_copying_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let big_a = vec![b'a'; 100 << 10];
    let big_b = vec![b'b'; 90 << 10];
    s.put(&k("/a"), &big_a).unwrap();
    s.put(&k("/b"), &big_b).unwrap();
    s.put(&k("/small"), b"s").unwrap();
    let file_a = s.backing_file(&k("/a")).unwrap().unwrap();
    let file_b = s.backing_file(&k("/b")).unwrap().unwrap();
    s.exchange(&k("/a"), &k("/b")).unwrap();
    assert_eq!(s.backing_file(&k("/a")).unwrap().unwrap(), file_b);
    assert_eq!(s.backing_file(&k("/b")).unwrap().unwrap(), file_a);
    s.exchange(&k("/a"), &k("/small")).unwrap();
    assert!(
        s.exchange(&k("/a"), &k("/missing"))
            .unwrap_err()
            .is_not_found()
    );
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.get(&k("/a")).unwrap(), b"s");
    assert_eq!(s.get(&k("/small")).unwrap(), big_b);
    assert_eq!(s.get(&k("/b")).unwrap(), big_a);
}

/// A random write into a large file-tier value is committed into the same file (no new file,
/// no copy), and the record keeps matching the file: the size after a growth, and no stale
/// hash (the value was first written in order, so its record had one), checked by `scrub`
/// and after reopening.
#[test]
fn a_random_write_into_a_large_value_is_committed_into_the_same_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let key = k("/big");
    let mut model: Vec<u8> = (0..20u32 << 20).map(|i| (i % 253) as u8).collect();
    store.put(&key, &model).unwrap();
    let path = store.backing_file(&key).unwrap().unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();

    let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
    staged.write_all_at(12345, b"changed").unwrap();
    model[12345..12352].copy_from_slice(b"changed");
    s_commit(&store, &key, staged);
    assert_eq!(store.backing_file(&key).unwrap().unwrap(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    assert!(store.get(&key).unwrap() == model);

    let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
    staged.write_all_at(model.len() as u64, b"grown").unwrap();
    model.extend_from_slice(b"grown");
    s_commit(&store, &key, staged);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(store.get_size(&key).unwrap(), model.len() as u64);
    assert!(store.get(&key).unwrap() == model);
    assert_eq!(files(dir.path()), 1);
    assert_eq!(store.scrub(false).unwrap(), Vec::<String>::new());
    drop(store);
    let store = open(dir.path());
    assert!(store.get(&key).unwrap() == model);
    assert_eq!(store.scrub(false).unwrap(), Vec::<String>::new());
}

fn s_commit(store: &TieredStore, key: &Key, staged: dsfs::datastore::Staged) {
    store.commit_staged(key, staged, false).unwrap();
}
