//! FlatFsStore: the go-ds-flatfs tests of spec §5.12 that apply, the §6.3 worked example,
//! compatibility with a hand-built upstream layout, concurrency, crash safety, locking and the
//! optional key encoding.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsfs::backend::flatfs::{
    self, DISK_USAGE_FILE, FlatFsOptions, FlatFsStore, LOCK_FILE, README_FILE, SHARDING_FILE,
    ShardFn, TEMP_DIR, accuracy,
};
use dsfs::datastore::{Capabilities, Datastore, MEMORY_LIMIT, StageInit};
use dsfs::{ErrorKind, Key, Query};
use rand::{Rng, RngCore, SeedableRng};

const SHARD_FNS: [ShardFn; 3] = [
    ShardFn::Prefix(2),
    ShardFn::Suffix(2),
    ShardFn::NextToLast(2),
];

fn k(s: &str) -> Key {
    Key::new(s)
}

fn open_new(dir: &Path, f: ShardFn) -> FlatFsStore {
    FlatFsStore::create_or_open(dir, f, FlatFsOptions::default()).unwrap()
}

fn reopen(dir: &Path) -> FlatFsStore {
    FlatFsStore::open(dir, FlatFsOptions::default()).unwrap()
}

fn keys_of(store: &FlatFsStore, q: Query) -> BTreeSet<String> {
    store
        .query(q)
        .unwrap()
        .map(|r| r.unwrap().key.into_string())
        .collect()
}

fn all_keys(store: &FlatFsStore) -> BTreeSet<String> {
    keys_of(
        store,
        Query {
            keys_only: true,
            ..Query::default()
        },
    )
}

fn du(store: &FlatFsStore) -> u64 {
    store.disk_usage().unwrap().unwrap()
}

/// The process umask, from /proc (reading it with umask(2) would change it for every thread).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every entry under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Shard directories (top-level, non-dot directories) and the total size of their `.data`
/// files.
fn recount(root: &Path) -> (usize, u64) {
    let mut dirs = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') || !e.file_type().unwrap().is_dir() {
            continue;
        }
        dirs += 1;
        for f in std::fs::read_dir(e.path()).unwrap() {
            let f = f.unwrap();
            if f.file_name().to_string_lossy().ends_with(".data") {
                bytes += f.metadata().unwrap().len();
            }
        }
    }
    (dirs, bytes)
}

/// The size of a new, empty directory on the file system of `near`: what a shard directory
/// adds to the counter when it is created.
fn empty_dir_size(near: &Path) -> u64 {
    let probe = tempfile::tempdir_in(near.parent().unwrap()).unwrap();
    std::fs::metadata(probe.path()).unwrap().len()
}

/// The names in `.temp` of the store at `root`. The disk-usage checkpoint thread writes the
/// cache through a `temp-` file there whenever it decides to (at once after a change of over
/// 1 %, or seconds after a smaller one), and renames it over the cache a moment later; a look
/// that finds a `temp-` file looks again, for up to 60 s (one that stays is debris, and is
/// returned). A single look caught the thread in the middle of a checkpoint on a loaded
/// machine.
fn temp_entries(root: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names: Vec<String> = std::fs::read_dir(root.join(TEMP_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n.starts_with("temp-")) || Instant::now() >= deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_cache(root: &Path) -> serde_json::Value {
    let bytes = std::fs::read(root.join(DISK_USAGE_FILE)).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'), "the cache ends with a newline");
    serde_json::from_slice(&bytes).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Layout and SHARDING

/// TestStorage, plus file modes and the lock file.
#[test]
fn storage_layout_per_shard_function() {
    for (f, shard) in [
        (ShardFn::Prefix(2), "QU"),
        (ShardFn::Suffix(2), "UX"),
        (ShardFn::NextToLast(2), "UU"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open_new(root, f);
        store.put(&k("/QUUX"), b"foobar").unwrap();
        store.close().unwrap();
        let data = format!("{shard}/QUUX.data");
        let mut expected = vec![
            ".dsfs.lock".to_owned(),
            ".temp".to_owned(),
            SHARDING_FILE.to_owned(),
            DISK_USAGE_FILE.to_owned(),
            shard.to_owned(),
            data.clone(),
        ];
        if f == ShardFn::IPFS_DEFAULT {
            expected.push(README_FILE.to_owned());
        }
        expected.sort();
        assert_eq!(tree(root), expected, "{f}");
        assert_eq!(std::fs::read(root.join(&data)).unwrap(), b"foobar");
        assert_eq!(mode(&root.join(&data)), 0o600, "single puts are 0600");
        assert_eq!(mode(&root.join(shard)) & 0o700, 0o700);
        if let Some(mask) = umask() {
            assert_eq!(mode(&root.join(shard)), 0o755 & !mask);
            assert_eq!(mode(&root.join(SHARDING_FILE)), 0o666 & !mask);
        }
        if f == ShardFn::IPFS_DEFAULT {
            assert_eq!(mode(&root.join(README_FILE)), 0o444);
            assert!(!std::fs::read(root.join(README_FILE)).unwrap().is_empty());
        }
        assert_eq!(
            std::fs::read(root.join(SHARDING_FILE)).unwrap(),
            format!("{}\n", f.id()).as_bytes()
        );
    }
}

/// Spec §6.3: the empty UnixFS directory block under next-to-last/2.
#[test]
fn worked_example_block_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let key = k("/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y");
    store.put(&key, &[0x0a, 0x02, 0x08, 0x01]).unwrap();
    let path = dir
        .path()
        .join("X3/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y.data");
    assert_eq!(std::fs::read(&path).unwrap(), [0x0a, 0x02, 0x08, 0x01]);
    assert_eq!(store.backing_file(&key).unwrap(), Some(path.clone()));
    assert_eq!(store.data_path(&key).unwrap(), path);
    let second = k("/CIQBVUKWQH2ATUVJ7JCNZ6YGXC5SQP5QLUUAXJU7MIK7KRX7QWVDEEA");
    assert_eq!(
        store.data_path(&second).unwrap(),
        dir.path()
            .join("EE/CIQBVUKWQH2ATUVJ7JCNZ6YGXC5SQP5QLUUAXJU7MIK7KRX7QWVDEEA.data")
    );
}

/// TestSHARDINGFile.
#[test]
fn sharding_file_handling() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    FlatFsStore::create(&root, ShardFn::IPFS_DEFAULT).unwrap();
    assert_eq!(
        std::fs::read(root.join(SHARDING_FILE)).unwrap(),
        b"/repo/flatfs/shard/v1/next-to-last/2\n"
    );
    let store = reopen(&root);
    assert_eq!(store.shard_str(), "/repo/flatfs/shard/v1/next-to-last/2");
    assert_eq!(store.shard_fn(), ShardFn::IPFS_DEFAULT);
    store.close().unwrap();
    drop(store);

    let err = FlatFsStore::create(&root, ShardFn::IPFS_DEFAULT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let store = FlatFsStore::create_or_open(&root, ShardFn::IPFS_DEFAULT, FlatFsOptions::default())
        .unwrap();
    drop(store);
    let err = FlatFsStore::create_or_open(&root, ShardFn::Prefix(5), FlatFsOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("does not match"), "{err}");
    // The SHARDING file is never rewritten.
    assert_eq!(
        std::fs::read(root.join(SHARDING_FILE)).unwrap(),
        b"/repo/flatfs/shard/v1/next-to-last/2\n"
    );
}

/// SHARDING is read leniently: whitespace around it, no newline, a non-canonical integer.
#[test]
fn sharding_file_is_parsed_leniently() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(SHARDING_FILE),
        "  /repo/flatfs/shard/v1/suffix/02 \t",
    )
    .unwrap();
    let store = reopen(dir.path());
    assert_eq!(store.shard_fn(), ShardFn::Suffix(2));
    store.put(&k("/QUUX"), b"x").unwrap();
    assert!(dir.path().join("UX/QUUX.data").exists());
}

/// TestInvalidPrefix, and a malformed SHARDING on open.
#[test]
fn invalid_shard_identifiers() {
    let err = ShardFn::parse("/bad/prefix/v1/next-to-last/2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(SHARDING_FILE),
        "/bad/prefix/v1/next-to-last/2\n",
    )
    .unwrap();
    let err = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains(SHARDING_FILE), "{err}");
}

/// TestNonDatastoreDir, and the other open/create errors.
#[test]
fn create_and_open_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("somefile"), b"x").unwrap();
    let err = FlatFsStore::create(dir.path(), ShardFn::IPFS_DEFAULT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("SHARDING"), "{err}");
    assert!(!dir.path().join(SHARDING_FILE).exists());

    // SHARDING missing on open: an error, and the directory is left exactly as it was.
    let err = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(tree(dir.path()), ["somefile"]);

    let missing = dir.path().join("missing");
    let err = FlatFsStore::open(&missing, FlatFsOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Create makes one level only, like mkdir.
    let err = FlatFsStore::create(missing.join("deeper"), ShardFn::IPFS_DEFAULT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Open removes and recreates `.temp`.
#[test]
fn open_wipes_the_temp_directory() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_new(dir.path(), ShardFn::IPFS_DEFAULT));
    let temp = dir.path().join(TEMP_DIR);
    std::fs::write(temp.join("temp-123"), b"debris").unwrap();
    std::fs::create_dir(temp.join("batch-1-2")).unwrap();
    std::fs::write(temp.join("batch-1-2/QUUX.data"), b"debris").unwrap();
    let store = reopen(dir.path());
    assert!(temp.is_dir());
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    assert!(!store.has(&k("/QUUX")).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Basic operations (TestPut, TestGet, TestPutOverwrite, TestGetNotFoundError, TestHas*,
// TestGetSize*, TestDelete*, TestQuerySimple)

#[test]
fn put_get_overwrite_has_size_delete() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let key = k("/QUUX");

        assert!(!store.has(&key).unwrap());
        assert!(store.get(&key).unwrap_err().is_not_found());
        assert!(store.get_size(&key).unwrap_err().is_not_found());
        store.delete(&key).unwrap();

        store.put(&key, b"foobar").unwrap();
        assert_eq!(
            store.put(&k("/foo"), b"nope").unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        assert_eq!(store.get(&key).unwrap(), b"foobar");
        assert!(store.has(&key).unwrap());
        assert_eq!(store.get_size(&key).unwrap(), 6);
        assert!(store.get(&k("/FOO/BAR")).unwrap_err().is_not_found());

        store.put(&key, b"xyzzy").unwrap();
        assert_eq!(store.get(&key).unwrap(), b"xyzzy");

        store.delete(&key).unwrap();
        assert!(store.get(&key).unwrap_err().is_not_found());
        assert!(!store.has(&key).unwrap());

        store.put(&k("/EMPTY"), b"").unwrap();
        assert_eq!(store.get(&k("/EMPTY")).unwrap(), b"");
        assert_eq!(store.get_size(&k("/EMPTY")).unwrap(), 0);
    }
}

#[test]
fn query_simple_and_entry_contents() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        store.put(&k("/QUUX"), b"foobar").unwrap();
        let q = Query {
            keys_only: true,
            ..Query::default()
        };
        let got: Vec<_> = store
            .query(q.clone())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, k("/QUUX"));
        assert_eq!(got[0].value, None);
        assert_eq!(
            got[0].size, None,
            "keys-only without sizes leaves the size unset"
        );

        let with_sizes = Query {
            keys_only: true,
            returns_sizes: true,
            ..Query::default()
        };
        let got = store.query(with_sizes).unwrap().rest().unwrap();
        assert_eq!(got[0].size, Some(6));
        assert_eq!(got[0].value, None);

        let got = store.query(Query::default()).unwrap().rest().unwrap();
        assert_eq!(got[0].value.as_deref(), Some(&b"foobar"[..]));
        assert_eq!(got[0].size, Some(6));

        // Results carry the query as passed in.
        assert_eq!(store.query(q.clone()).unwrap().query(), &q);
        // No flatfs key is a strict child of another prefix.
        assert!(keys_of(&store, Query::prefix("/QUUX")).is_empty());
        assert!(keys_of(&store, Query::prefix("/")).contains("/QUUX"));
    }
}

#[test]
fn queries_apply_filters_orders_offset_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    for i in 0..20 {
        store
            .put(&k(&format!("/K{i:02}")), format!("v{}", 19 - i).as_bytes())
            .unwrap();
    }
    let q = Query {
        orders: vec![dsfs::datastore::Order::Key],
        offset: 5,
        limit: 3,
        keys_only: true,
        ..Query::default()
    };
    let got: Vec<String> = store
        .query(q)
        .unwrap()
        .map(|r| r.unwrap().key.into_string())
        .collect();
    assert_eq!(got, ["/K05", "/K06", "/K07"]);
    let q = Query {
        filters: vec![dsfs::datastore::Filter::KeyPrefix("/K1".into())],
        orders: vec![dsfs::datastore::Order::Value],
        ..Query::default()
    };
    let got: Vec<String> = store
        .query(q)
        .unwrap()
        .map(|r| r.unwrap().key.into_string())
        .collect();
    assert_eq!(got.len(), 10);
    assert_eq!(got.first().map(String::as_str), Some("/K19"));
}

/// Spec §5.4's table: how each operation treats a key outside the flatfs alphabet.
#[test]
fn invalid_keys_behave_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    for key in ["/foo", "/FOO/BAR", "/=Vim-IS-KING=", "/", "/a.b"] {
        let key = k(key);
        assert_eq!(
            store.put(&key, b"x").unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        assert!(store.get(&key).unwrap_err().is_not_found());
        assert!(!store.has(&key).unwrap());
        assert!(store.get_size(&key).unwrap_err().is_not_found());
        let mut buf = [0u8; 4];
        assert!(store.read_at(&key, 0, &mut buf).unwrap_err().is_not_found());
        store.delete(&key).unwrap();
        assert_eq!(
            store.stage(&key, StageInit::Empty).unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        assert!(store.backing_file(&key).unwrap_err().is_not_found());
        let mut batch = store.batch().unwrap();
        assert_eq!(
            batch.put(key.clone(), b"x".to_vec()).unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        batch.delete(key.clone()).unwrap();
        batch.commit().unwrap();
    }
    // Longer than a file name allows: a clear InvalidKey instead of an OS error.
    let long = k(&format!("/{}", "A".repeat(251)));
    let err = store.put(&long, b"x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    assert!(err.to_string().contains("too long"), "{err}");
    assert!(store.get(&long).unwrap_err().is_not_found());
    let max = k(&format!("/{}", "A".repeat(250)));
    store.put(&max, b"x").unwrap();
    assert_eq!(store.get(&max).unwrap(), b"x");
    assert!(!store.capabilities().general_keys);
}

#[test]
fn ranged_reads_and_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let value: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put(&k("/BIG"), &value).unwrap();
    let mut buf = vec![0u8; 100];
    assert_eq!(store.read_at(&k("/BIG"), 0, &mut buf).unwrap(), 100);
    assert_eq!(buf, value[..100]);
    assert_eq!(store.read_at(&k("/BIG"), 9_950, &mut buf).unwrap(), 50);
    assert_eq!(buf[..50], value[9_950..]);
    assert_eq!(store.read_at(&k("/BIG"), 10_000, &mut buf).unwrap(), 0);
    assert_eq!(store.read_at(&k("/BIG"), u64::MAX, &mut buf).unwrap(), 0);
    assert!(
        store
            .read_at(&k("/NOPE"), 0, &mut buf)
            .unwrap_err()
            .is_not_found()
    );
    let caps = store.capabilities();
    assert_eq!(
        caps,
        Capabilities {
            ordered_scan: false,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: false,
            durable_put: false,
            persistent: true,
            general_keys: false,
            file_backed: true,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: Some(250),
        }
    );
    drop(store);
    let opts = FlatFsOptions {
        sync: true,
        encode_keys: true,
        ..FlatFsOptions::default()
    };
    let store = FlatFsStore::open(dir.path(), opts).unwrap();
    assert!(store.capabilities().durable_put);
    assert!(store.capabilities().general_keys);
}

/// TestClose: writes fail after close, reads keep working, close is idempotent.
#[test]
fn close_refuses_writes_and_keeps_reads() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        store.put(&k("/QUUX"), b"foobar").unwrap();
        let batch_before = {
            let mut b = store.batch().unwrap();
            b.put(k("/LATER"), b"x".to_vec()).unwrap();
            b
        };
        let staged = store.stage(&k("/STAGED"), StageInit::Empty).unwrap();
        store.close().unwrap();
        assert!(store.is_closed());
        let closed = |r: dsfs::Result<()>| assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
        closed(store.put(&k("/QUUX"), b"x"));
        closed(store.delete(&k("/QUUX")));
        closed(store.sync(&Key::root()));
        closed(batch_before.commit());
        closed(store.commit_staged(&k("/STAGED"), staged, false));
        assert_eq!(
            store
                .stage(&k("/STAGED"), StageInit::Empty)
                .unwrap_err()
                .kind(),
            ErrorKind::Closed
        );
        assert_eq!(
            store.batch().err().map(|e| e.kind()),
            Some(ErrorKind::Closed)
        );
        assert_eq!(store.get(&k("/QUUX")).unwrap(), b"foobar");
        assert!(store.has(&k("/QUUX")).unwrap());
        assert_eq!(store.get_size(&k("/QUUX")).unwrap(), 6);
        assert_eq!(all_keys(&store).len(), 1);
        store.close().unwrap();
        let cache = read_cache(dir.path());
        assert_eq!(cache["diskUsage"].as_u64(), Some(du(&store)));
        assert!(
            !store.data_path(&k("/LATER")).unwrap().exists(),
            "the uncommitted batch left nothing"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Disk usage

/// TestDiskUsage.
#[test]
fn disk_usage_exact_deltas_cache_and_reopen() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let du_new = du(&store);
        assert!(du_new > 0, "a new store has some size");
        assert_eq!(store.accuracy(), accuracy::EXACT);
        for i in 0..200 {
            store.put(&k(&format!("/TEST-{i}")), b"10bytes---").unwrap();
        }
        let du_elems = du(&store);
        assert!(du_elems > du_new);
        for i in 0..200 {
            store.delete(&k(&format!("/TEST-{i}"))).unwrap();
        }
        let du_delete = du(&store);
        assert_eq!(du_elems - du_delete, 2000, "{f}");
        store.close().unwrap();

        let cache = read_cache(dir.path());
        assert_eq!(cache["diskUsage"].as_u64(), Some(du_delete));
        assert_eq!(cache["accuracy"].as_str(), Some(accuracy::EXACT));
        let text = std::fs::read_to_string(dir.path().join(DISK_USAGE_FILE)).unwrap();
        assert_eq!(
            text,
            format!("{{\"diskUsage\":{du_delete},\"accuracy\":\"initial-exact\"}}\n")
        );
        drop(store);

        std::fs::remove_file(dir.path().join(DISK_USAGE_FILE)).unwrap();
        let store = reopen(dir.path());
        assert!(du(&store) >= du_new);
        assert!(
            dir.path().join(DISK_USAGE_FILE).exists(),
            "the scan is checkpointed"
        );
    }
}

/// A cache file (for example hand-edited from `du -sb`) is used as it is.
#[test]
fn disk_usage_cache_is_trusted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_new(dir.path(), ShardFn::IPFS_DEFAULT));
    std::fs::write(
        dir.path().join(DISK_USAGE_FILE),
        "{\"diskUsage\":123456,\"accuracy\":\"initial-timed-out\"}\n",
    )
    .unwrap();
    let store = reopen(dir.path());
    assert_eq!(du(&store), 123456);
    assert_eq!(store.accuracy(), accuracy::TIMED_OUT);
    store.put(&k("/AAAA"), b"12345").unwrap();
    store.close().unwrap();
    let cache = read_cache(dir.path());
    assert_eq!(cache["accuracy"].as_str(), Some(accuracy::TIMED_OUT));
    assert!(cache["diskUsage"].as_u64().unwrap() > 123456);
}

/// The background checkpoint writes the cache without a close.
#[test]
fn disk_usage_checkpoints_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FlatFsOptions {
        checkpoint_delay: Duration::from_millis(50),
        ..FlatFsOptions::default()
    };
    FlatFsStore::create(dir.path(), ShardFn::IPFS_DEFAULT).unwrap();
    let store = FlatFsStore::open(dir.path(), opts).unwrap();
    // A big change (over 1 %) is written at once; a small one after the delay.
    for value in [vec![1u8; 3], vec![2u8; 1 << 20], vec![3u8; (1 << 20) + 1]] {
        store.put(&k("/CHECKPOINT"), &value).unwrap();
        let want = du(&store);
        let give_up = Instant::now() + Duration::from_secs(60);
        while read_cache(dir.path())["diskUsage"].as_u64() != Some(want) {
            assert!(Instant::now() < give_up, "the checkpoint never came");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// TestDiskUsageDoubleCount.
#[test]
fn disk_usage_double_count() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let key = k("/TEST");
        store.put(&key, b"10bytes---").unwrap();
        let after_put = du(&store);
        store.delete(&key).unwrap();
        let after_delete = du(&store);
        assert_eq!(after_put - 10, after_delete);

        std::thread::scope(|s| {
            for i in 0..4 {
                let store = &store;
                let key = &key;
                s.spawn(move || {
                    for _ in 0..200 {
                        if i % 2 == 0 {
                            store.put(key, b"10bytes---").unwrap();
                        } else {
                            store.delete(key).unwrap();
                        }
                    }
                });
            }
        });
        let end = du(&store);
        if store.has(&key).unwrap() {
            assert_eq!(end, after_put, "{f}");
        } else {
            assert_eq!(end, after_delete, "{f}");
        }
    }
}

/// TestDiskUsageBatch.
#[test]
fn disk_usage_batch() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let keys: Vec<Key> = (0..200).map(|i| k(&format!("/TEST{i}"))).collect();
        let put_all = || {
            let mut b = store.batch().unwrap();
            for key in &keys {
                b.put(key.clone(), b"10bytes---".to_vec()).unwrap();
            }
            b
        };
        put_all().commit().unwrap();
        let before = du(&store);
        for key in &keys {
            store.delete(key).unwrap();
        }
        let after_delete = du(&store);
        assert_eq!(before - 2000, after_delete);

        let batch = put_all();
        std::thread::scope(|s| {
            s.spawn(move || batch.commit().unwrap());
            s.spawn(|| {
                for key in &keys {
                    store.delete(key).unwrap();
                }
            });
        });
        let remaining = all_keys(&store).len() as u64;
        assert_eq!(du(&store), after_delete + 10 * remaining, "{f}");
    }
}

/// TestDiskUsageEstimation, scaled down: 5,000 files and 100 samples per directory.
#[test]
fn disk_usage_estimation() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let value = vec![0u8; 1000];
        let mut batch = store.batch().unwrap();
        for i in 0..5000 {
            batch
                .put(k(&format!("/{i}-TEST-{i}")), value.clone())
                .unwrap();
        }
        batch.commit().unwrap();
        store.close().unwrap();
        drop(store);

        let full = FlatFsOptions {
            disk_usage_samples: None,
            ..FlatFsOptions::default()
        };
        std::fs::remove_file(dir.path().join(DISK_USAGE_FILE)).unwrap();
        let store = FlatFsStore::open(dir.path(), full).unwrap();
        let real = du(&store);
        assert_eq!(store.accuracy(), accuracy::EXACT);
        drop(store);

        std::fs::remove_file(dir.path().join(DISK_USAGE_FILE)).unwrap();
        let sampled = FlatFsOptions {
            disk_usage_samples: Some(100),
            ..FlatFsOptions::default()
        };
        let store = FlatFsStore::open(dir.path(), sampled).unwrap();
        let estimate = du(&store);
        assert_eq!(store.accuracy(), accuracy::APPROXIMATE, "{f}");
        let diff = real.abs_diff(estimate);
        assert!(
            diff <= real / 20,
            "{f}: estimate {estimate} vs real {real} is off by more than 5 %"
        );
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.accuracy(),
            accuracy::APPROXIMATE,
            "kept across reopen"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Batches

/// TestBatch: 9 batches sharing a key, committed concurrently.
#[test]
fn concurrent_batches() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let batches: Vec<_> = (0..9)
            .map(|i| {
                let mut b = store.batch().unwrap();
                b.put(k("/QUUX"), b"foo".to_vec()).unwrap();
                b.put(k(&format!("/Q{i}X")), format!("bar{i}").into_bytes())
                    .unwrap();
                b
            })
            .collect();
        std::thread::scope(|s| {
            for b in batches {
                s.spawn(move || b.commit().unwrap());
            }
        });
        assert_eq!(store.get(&k("/QUUX")).unwrap(), b"foo");
        for i in 0..9 {
            assert_eq!(
                store.get(&k(&format!("/Q{i}X"))).unwrap(),
                format!("bar{i}").as_bytes()
            );
        }
    }
}

fn random_b32_keys(n: usize, seed: u64) -> Vec<(Key, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v = vec![0u8; 256];
            rng.fill_bytes(&mut v);
            // Upper-case base32 with '=' padding: valid flatfs keys, as go-datastore's test
            // helper makes them.
            let mut name = flatfs::base32_encode(&v[..16]).to_uppercase();
            while !name.len().is_multiple_of(8) {
                name.push('=');
            }
            (k(&format!("/{name}")), v)
        })
        .collect()
}

/// TestBatchPut (dstest.RunBatchTest) and TestBatchDelete (RunBatchDeleteTest).
#[test]
fn batch_put_and_batch_delete() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = open_new(dir.path(), f);
        let blocks = random_b32_keys(400, 7);
        let mut b = store.batch().unwrap();
        for (key, value) in &blocks {
            b.put(key.clone(), value.clone()).unwrap();
        }
        b.commit().unwrap();
        for (key, value) in &blocks {
            assert_eq!(&store.get(key).unwrap(), value);
        }
        let mut b = store.batch().unwrap();
        for (key, _) in &blocks {
            b.delete(key.clone()).unwrap();
        }
        b.commit().unwrap();
        for (key, _) in &blocks {
            assert!(!store.has(key).unwrap());
        }
        assert!(all_keys(&store).is_empty());
    }
}

/// TestBatchWritesToTempUntilCommit.
#[test]
fn batch_writes_to_temp_until_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let keys = [k("/BATCHA"), k("/BATCHB"), k("/BATCHC")];
    let mut b = store.batch().unwrap();
    for key in &keys {
        b.put(key.clone(), b"value".to_vec()).unwrap();
    }
    for key in &keys {
        assert!(!store.has(key).unwrap());
    }
    let data_outside_temp = |root: &Path| {
        tree(root)
            .into_iter()
            .filter(|p| p.ends_with(".data") && !p.starts_with(".temp"))
            .count()
    };
    assert_eq!(data_outside_temp(dir.path()), 0);
    let staged: Vec<String> = tree(dir.path())
        .into_iter()
        .filter(|p| p.starts_with(".temp/batch-") && p.ends_with(".data"))
        .collect();
    assert_eq!(staged.len(), 3, "{staged:?}");
    assert!(all_keys(&store).is_empty());
    b.commit().unwrap();
    for key in &keys {
        assert_eq!(store.get(key).unwrap(), b"value");
    }
    assert_eq!(data_outside_temp(dir.path()), 3);
    // Batch files get the plain-create mode, 0666 minus the umask.
    if let Some(mask) = umask() {
        let path = store.data_path(&keys[0]).unwrap();
        assert_eq!(mode(&path), 0o666 & !mask);
    }
    // The committed batch's directory is gone.
    assert_eq!(temp_entries(dir.path()), Vec::<String>::new());
}

/// TestBatchDiscard: dropping an uncommitted batch discards it.
#[test]
fn batch_discard_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let mut b = store.batch().unwrap();
    b.put(k("/DISCARDED"), b"value".to_vec()).unwrap();
    b.delete(k("/OTHER")).unwrap();
    drop(b);
    assert!(!store.has(&k("/DISCARDED")).unwrap());
    assert_eq!(temp_entries(dir.path()), Vec::<String>::new());
}

/// TestBatchPutDeleteSameKey, with our rule: the last operation on a key wins (upstream keeps
/// the first put for "Put X1, Delete, Put X2").
#[test]
fn batch_last_operation_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::Prefix(2));
    let key = k("/SAMEKEY");
    type Step = (bool, &'static [u8]);
    let cases: &[(&[Step], Option<&[u8]>)] = &[
        (&[(false, b""), (true, b"new")], Some(b"new")),
        (&[(true, b"v"), (false, b"")], None),
        (&[(true, b"X1"), (false, b""), (true, b"X2")], Some(b"X2")),
        (
            &[(true, b"a"), (false, b""), (true, b"b"), (false, b"")],
            None,
        ),
        (&[(true, b"X1"), (true, b"X2")], Some(b"X2")),
        (&[(true, b"longer-first"), (true, b"s")], Some(b"s")),
    ];
    for (steps, want) in cases {
        store.put(&key, b"existing").unwrap();
        let before = du(&store);
        let mut b = store.batch().unwrap();
        for (is_put, value) in steps.iter() {
            if *is_put {
                b.put(key.clone(), value.to_vec()).unwrap();
            } else {
                b.delete(key.clone()).unwrap();
            }
        }
        assert_eq!(
            store.get(&key).unwrap(),
            b"existing",
            "nothing before commit"
        );
        b.commit().unwrap();
        match want {
            Some(v) => {
                assert_eq!(store.get(&key).unwrap(), *v, "{steps:?}");
                assert_eq!(du(&store), before - 8 + v.len() as u64);
            }
            None => {
                assert!(!store.has(&key).unwrap(), "{steps:?}");
                assert_eq!(du(&store), before - 8);
            }
        }
    }
}

/// TestConcurrentDuplicateBatchWrites, scaled: 4 batches put the same 100 keys, then commit
/// concurrently.
#[test]
fn concurrent_duplicate_batch_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::Suffix(2));
    let value = |i: usize| -> Vec<u8> { (0..2048).map(|j| ((i * 7 + j) % 251) as u8).collect() };
    let batches: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = &store;
                s.spawn(move || {
                    let mut b = store.batch().unwrap();
                    for i in 0..100 {
                        b.put(k(&format!("/Q{i:03}")), value(i)).unwrap();
                    }
                    b
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let staged = tree(dir.path())
        .into_iter()
        .filter(|p| p.starts_with(".temp/batch-") && p.ends_with(".data"))
        .count();
    assert_eq!(staged, 400);
    let before = du(&store);
    std::thread::scope(|s| {
        for b in batches {
            s.spawn(move || b.commit().unwrap());
        }
    });
    for i in 0..100 {
        assert_eq!(store.get(&k(&format!("/Q{i:03}"))).unwrap(), value(i));
    }
    let (dirs, bytes) = recount(dir.path());
    assert_eq!(bytes, 100 * 2048);
    assert_eq!(
        du(&store),
        before + bytes + dirs as u64 * empty_dir_size(dir.path())
    );
}

/// TestNoCluster: next-to-last/1 spreads CIQ… keys evenly over 32 shards.
#[test]
fn no_cluster_with_next_to_last_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::NextToLast(1));
    // The ±25 tolerance on 100 expected files is only about 2.5 standard deviations per
    // shard, so some seeds fail by chance (the worst shard of seed 0 is off by 26). The seed is
    // fixed, as upstream's is; this one keeps every shard within ±15.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..32 {
        let mut b = store.batch().unwrap();
        for _ in 0..100 {
            let mut blk = vec![0u8; 1000];
            rng.fill_bytes(&mut blk);
            let key = format!("/CIQ{}", flatfs::base32_encode(&blk[..10]).to_uppercase());
            b.put(k(&key), blk).unwrap();
        }
        b.commit().unwrap();
    }
    store.close().unwrap();
    let mut shards = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') || !e.file_type().unwrap().is_dir() {
            continue;
        }
        shards += 1;
        let n = std::fs::read_dir(e.path()).unwrap().count() as f64;
        assert!((n - 100.0).abs() <= 25.0, "shard {name} has {n} files");
    }
    assert_eq!(shards, 32);
}

// ---------------------------------------------------------------------------------------------
// Queries

/// TestQueryLeak: queries dropped early release everything (no threads, no open directories).
#[test]
fn queries_dropped_early_do_not_leak() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let mut b = store.batch().unwrap();
    for i in 0..1000 {
        b.put(k(&format!("/LEAK{i}")), b"x".to_vec()).unwrap();
    }
    b.commit().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    let open_dirs = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|rd| {
                rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    // The store keeps its root directory open (to open files beneath it) and its lock
                    // file; a query holds shard directories.
                    .filter(|t| {
                        t.starts_with(&canonical) && *t != canonical && !t.ends_with(LOCK_FILE)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let mut live = Vec::new();
    for _ in 0..200 {
        let mut results = store
            .query(Query {
                keys_only: true,
                ..Query::default()
            })
            .unwrap();
        assert!(results.next().unwrap().is_ok());
        live.push(results);
    }
    if std::path::Path::new("/proc/self/fd").exists() {
        assert!(open_dirs() > 0, "the live queries hold their directories");
    }
    drop(live);
    assert_eq!(open_dirs(), 0);
}

/// A directory laid out by hand exactly as go-ds-flatfs does it reads back completely.
#[test]
fn hand_built_upstream_layout_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join(SHARDING_FILE),
        "/repo/flatfs/shard/v1/next-to-last/2\n",
    )
    .unwrap();
    std::fs::write(root.join(README_FILE), "upstream's own text\n").unwrap();
    std::fs::write(
        root.join(DISK_USAGE_FILE),
        "{\"diskUsage\":0,\"accuracy\":\"initial-exact\"}\n",
    )
    .unwrap();
    std::fs::create_dir(root.join(".temp")).unwrap();
    std::fs::write(root.join(".temp/temp-99"), b"old debris").unwrap();
    let mut expected = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for i in 0..300 {
        let mut mh = vec![0x12, 0x20];
        mh.extend((0..32).map(|_| rng.random::<u8>()));
        let name = flatfs::base32_encode(&mh).to_uppercase();
        let shard = ShardFn::NextToLast(2).dir_for(&name);
        std::fs::create_dir_all(root.join(&shard)).unwrap();
        let value: Vec<u8> = (0..(i * 13 % 500)).map(|j| (i + j) as u8).collect();
        std::fs::write(root.join(&shard).join(format!("{name}.data")), &value).unwrap();
        expected.insert(format!("/{name}"), value);
    }
    // Debris upstream tolerates: an old put- temp, a stray file, a dot file, a top-level file.
    let some_shard = root.join(ShardFn::NextToLast(2).dir_for(expected.keys().next().unwrap()));
    std::fs::write(some_shard.join("put-12345"), b"x").unwrap();
    std::fs::write(some_shard.join("notes.txt"), b"x").unwrap();
    std::fs::write(some_shard.join(".hidden.data"), b"x").unwrap();
    std::fs::write(root.join("STRAY.data"), b"x").unwrap();

    let store = reopen(root);
    assert_eq!(store.shard_fn(), ShardFn::IPFS_DEFAULT);
    for (key, value) in &expected {
        assert_eq!(&store.get(&k(key)).unwrap(), value, "{key}");
        assert_eq!(store.get_size(&k(key)).unwrap(), value.len() as u64);
    }
    let found = store.query(Query::default()).unwrap().rest().unwrap();
    let found: BTreeMap<String, Vec<u8>> = found
        .into_iter()
        .map(|e| (e.key.into_string(), e.value.unwrap()))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(temp_entries(root), Vec::<String>::new());
    // diskUsage 0 in the cache means "unknown": the tree was measured.
    let data: u64 = expected.values().map(|v| v.len() as u64).sum();
    assert!(du(&store) > data);
    // Our writes land where upstream expects them, next to upstream's files.
    store.put(&k("/CIQNEW"), b"new").unwrap();
    assert_eq!(std::fs::read(root.join("NE/CIQNEW.data")).unwrap(), b"new");
    // Upstream's _README is left alone.
    assert_eq!(
        std::fs::read(root.join(README_FILE)).unwrap(),
        b"upstream's own text\n"
    );
}

/// Keys read back are not validated or checked against their shard, as upstream.
#[test]
fn query_reports_misplaced_and_foreign_names_raw() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    std::fs::create_dir(dir.path().join("ZZ")).unwrap();
    std::fs::write(dir.path().join("ZZ/MISPLACED.data"), b"x").unwrap();
    std::fs::write(dir.path().join("ZZ/lower.data"), b"y").unwrap();
    let keys = all_keys(&store);
    assert_eq!(
        keys,
        ["/MISPLACED", "/lower"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert!(
        !store.has(&k("/MISPLACED")).unwrap(),
        "it is not where its shard says"
    );
}

// ---------------------------------------------------------------------------------------------
// Staged writes

#[test]
fn staged_writes_commit_by_rename() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let key = k("/STAGEDKEY");
    store.put(&key, b"hello world").unwrap();
    let before = du(&store);

    let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
    let staged_path = staged.path().unwrap().to_path_buf();
    assert_eq!(staged_path.parent().unwrap(), dir.path().join(TEMP_DIR));
    assert_eq!(staged.read_all().unwrap(), b"hello world");
    staged.write_all_at(6, b"WORLD, again").unwrap();
    assert_eq!(
        store.get(&key).unwrap(),
        b"hello world",
        "invisible until commit"
    );
    store.commit_staged(&key, staged, false).unwrap();
    assert_eq!(store.get(&key).unwrap(), b"hello WORLD, again");
    assert_eq!(du(&store), before + 7);
    assert!(!staged_path.exists());
    assert_eq!(mode(&store.data_path(&key).unwrap()), 0o600);

    let staged = store.stage(&k("/FRESH"), StageInit::CopyCurrent).unwrap();
    assert!(staged.is_empty().unwrap());
    staged.write_all_at(3, b"x").unwrap();
    store.commit_staged(&k("/FRESH"), staged, true).unwrap();
    assert_eq!(store.get(&k("/FRESH")).unwrap(), b"\0\0\0x");

    // A new value starts in memory: no file until it spills; a dropped spilled stage removes
    // its file.
    let staged = store.stage(&key, StageInit::Empty).unwrap();
    assert!(staged.is_in_memory() && staged.path().is_none());
    staged
        .write_all_at(0, &vec![7u8; MEMORY_LIMIT as usize + 1])
        .unwrap();
    let path = staged.path().unwrap().to_path_buf();
    assert_eq!(path.parent().unwrap(), dir.path().join(TEMP_DIR));
    drop(staged);
    assert!(!path.exists(), "a dropped stage removes its file");

    // A value staged elsewhere (the trait's anonymous staging) is copied in.
    let anon = dsfs::datastore::Staged::anonymous(dir.path()).unwrap();
    anon.write_all_at(0, b"from elsewhere").unwrap();
    store.commit_staged(&key, anon, false).unwrap();
    assert_eq!(store.get(&key).unwrap(), b"from elsewhere");
    assert_eq!(temp_entries(dir.path()), Vec::<String>::new());

    let (dirs, bytes) = recount(dir.path());
    let initial = before - 11 - empty_dir_size(dir.path());
    assert_eq!(
        du(&store),
        initial + bytes + dirs as u64 * empty_dir_size(dir.path())
    );
}

// ---------------------------------------------------------------------------------------------
// Sync, locking

#[test]
fn sync_makes_writes_durable_and_handles_many_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    store.sync(&Key::root()).unwrap();
    store.put(&k("/A1"), b"x").unwrap();
    store.delete(&k("/A1")).unwrap();
    store.put(&k("/A2"), b"y").unwrap();
    store.sync(&k("/A2")).unwrap();
    // More files than are tracked by name: sync falls back to syncfs.
    let mut b = store.batch().unwrap();
    for i in 0..(flatfs::MAX_TRACKED_FILES + 10) {
        b.put(k(&format!("/MANY{i}")), vec![1]).unwrap();
    }
    b.commit().unwrap();
    store.sync(&Key::root()).unwrap();
    assert_eq!(all_keys(&store).len(), flatfs::MAX_TRACKED_FILES + 11);
}

#[test]
fn sync_option_still_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    FlatFsStore::create(dir.path(), ShardFn::IPFS_DEFAULT).unwrap();
    let opts = FlatFsOptions {
        sync: true,
        ..FlatFsOptions::default()
    };
    let store = FlatFsStore::open(dir.path(), opts).unwrap();
    store.put(&k("/SYNCED"), b"v").unwrap();
    let mut b = store.batch().unwrap();
    b.put(k("/BSYNCED"), b"w".to_vec()).unwrap();
    b.commit().unwrap();
    store.delete(&k("/SYNCED")).unwrap();
    store.sync(&Key::root()).unwrap();
    assert_eq!(store.get(&k("/BSYNCED")).unwrap(), b"w");
}

#[test]
fn two_opens_of_one_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    let err = FlatFsStore::open(dir.path(), FlatFsOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked);
    assert!(
        err.to_string()
            .contains(&dir.path().join(LOCK_FILE).display().to_string()),
        "{err}"
    );
    let err =
        FlatFsStore::create_or_open(dir.path(), ShardFn::IPFS_DEFAULT, FlatFsOptions::default())
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked);
    first.put(&k("/STILLMINE"), b"x").unwrap();
    // Closing releases the lock (reads on the closed handle keep working).
    first.close().unwrap();
    let second = reopen(dir.path());
    assert_eq!(second.get(&k("/STILLMINE")).unwrap(), b"x");
    assert_eq!(first.get(&k("/STILLMINE")).unwrap(), b"x");
}

// ---------------------------------------------------------------------------------------------
// Concurrency and crashes

/// 8 threads put and delete shared and private keys; afterwards every key reads back its file
/// and the counter equals a recount.
#[test]
fn concurrent_puts_and_deletes_keep_the_counter_exact() {
    for f in SHARD_FNS {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open_new(dir.path(), f));
        let start = du(&store);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let store = store.clone();
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                    for i in 0..300 {
                        let key = if rng.random_bool(0.5) {
                            k(&format!("/SHARED{}", rng.random_range(0..4)))
                        } else {
                            k(&format!("/T{t}K{}", rng.random_range(0..20)))
                        };
                        if rng.random_bool(0.6) {
                            let len = rng.random_range(0..400);
                            store.put(&key, &vec![(i % 251) as u8; len]).unwrap();
                        } else {
                            store.delete(&key).unwrap();
                        }
                        if i % 50 == 0 {
                            let mut b = store.batch().unwrap();
                            b.put(k(&format!("/SHARED{}", i % 4)), vec![7; 33]).unwrap();
                            b.delete(k(&format!("/T{t}K{}", i % 20))).unwrap();
                            b.commit().unwrap();
                        }
                    }
                });
            }
        });
        let keys = all_keys(&store);
        for key in &keys {
            let key = k(key);
            let v = store.get(&key).unwrap();
            assert_eq!(v.len() as u64, store.get_size(&key).unwrap());
            assert!(v.iter().all(|b| *b == v[0]), "no torn values");
        }
        let (dirs, bytes) = recount(dir.path());
        assert_eq!(
            du(&store),
            start + bytes + dirs as u64 * empty_dir_size(dir.path()),
            "{f}"
        );
        assert_eq!(temp_entries(dir.path()), Vec::<String>::new());
    }
}

const CRASH_ENV: &str = "DSFS_FLATFS_CRASH_CHILD_DIR";
const CRASH_KEYS: usize = 24;

/// A value that says which key and version it is, so a torn file is detected.
fn crash_value(key: usize, version: u64) -> Vec<u8> {
    let len = 1000 + (key * 7919 + version as usize * 104_729) % 200_000;
    let mut v = format!("K{key};V{version};L{len};").into_bytes();
    let seed = (key as u64).wrapping_mul(31).wrapping_add(version);
    while v.len() < len {
        v.push((seed.wrapping_add(v.len() as u64) % 251) as u8);
    }
    v
}

fn check_crash_value(key: usize, bytes: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
    let mut parts = text.split(';');
    assert_eq!(parts.next(), Some(format!("K{key}").as_str()), "{text}");
    let version: u64 = parts.next().unwrap()[1..].parse().unwrap();
    assert_eq!(bytes, crash_value(key, version), "key {key} is torn");
    version
}

/// Run by `crash_leaves_every_key_old_or_new` in a child process; does nothing otherwise.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = reopen(&dir.join("store"));
    for version in 1u64.. {
        if version % 2 == 0 {
            let mut b = store.batch().unwrap();
            for key in 0..CRASH_KEYS {
                b.put(k(&format!("/CRASH{key}")), crash_value(key, version))
                    .unwrap();
            }
            b.commit().unwrap();
        } else {
            for key in 0..CRASH_KEYS {
                store
                    .put(&k(&format!("/CRASH{key}")), &crash_value(key, version))
                    .unwrap();
            }
        }
        std::fs::write(dir.join("progress"), version.to_string()).unwrap();
    }
}

/// A child doing puts and batch commits is SIGKILLed; reopening leaves every key old or new.
#[test]
fn crash_leaves_every_key_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = open_new(&root, ShardFn::IPFS_DEFAULT);
    for key in 0..CRASH_KEYS {
        store
            .put(&k(&format!("/CRASH{key}")), &crash_value(key, 0))
            .unwrap();
    }
    store.close().unwrap();
    drop(store);

    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for round in 0..3 {
        let _ = std::fs::remove_file(dir.path().join("progress"));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the child to get going (a hang guard, not a speed requirement).
        let give_up = Instant::now() + Duration::from_secs(120);
        while !dir.path().join("progress").exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child exited early (round {round})"
            );
            assert!(Instant::now() < give_up, "the child made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = reopen(&root);
        let temp = root.join(TEMP_DIR);
        assert_eq!(
            std::fs::read_dir(&temp).unwrap().count(),
            0,
            "debris removed"
        );
        let mut versions = HashMap::new();
        for key in 0..CRASH_KEYS {
            let v = store.get(&k(&format!("/CRASH{key}"))).unwrap();
            versions.insert(key, check_crash_value(key, &v));
        }
        let keys = all_keys(&store);
        assert_eq!(keys.len(), CRASH_KEYS, "{keys:?}");
        drop(store);
    }
}

// ---------------------------------------------------------------------------------------------
// Key encoding

fn encoded_store(dir: &Path) -> FlatFsStore {
    let opts = FlatFsOptions {
        encode_keys: true,
        ..FlatFsOptions::default()
    };
    FlatFsStore::create_or_open(dir, ShardFn::IPFS_DEFAULT, opts).unwrap()
}

#[test]
fn encoding_stores_general_keys_without_collisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = encoded_store(dir.path());
    let keys = [
        "/pins/pin/abc",
        "/pins/index/cidRindex/x-y_z",
        "/local/filesroot",
        "/a",
        "/a/b",
        "/a/b/c",
        "/ab",
        "/ünïcödé",
        "/with space/and:colon",
        "/",
        "/FOO/BAR",
        "/QUUX",
    ];
    for (i, key) in keys.iter().enumerate() {
        store.put(&k(key), format!("value {i}").as_bytes()).unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.get(&k(key)).unwrap(),
            format!("value {i}").as_bytes(),
            "{key}"
        );
        let path = store.data_path(&k(key)).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= 255);
        if flatfs::is_valid_key(&k(key)) {
            assert_eq!(
                name,
                format!("{}.data", &key[1..]),
                "valid keys stay verbatim"
            );
        } else {
            assert!(name.starts_with('~'), "{name}");
        }
    }
    let got = all_keys(&store);
    let want: BTreeSet<String> = keys.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);

    // Prefixes select strict children, decoded.
    assert_eq!(
        keys_of(&store, Query::prefix("/a")),
        ["/a/b", "/a/b/c"].map(String::from).into_iter().collect()
    );
    assert_eq!(keys_of(&store, Query::prefix("/pins")).len(), 2);
    assert_eq!(keys_of(&store, Query::prefix("/pins/index")).len(), 1);

    // Deletes, batches and sizes work on encoded keys.
    store.delete(&k("/a/b")).unwrap();
    assert!(!store.has(&k("/a/b")).unwrap());
    let mut b = store.batch().unwrap();
    b.put(k("/batch/key"), b"b".to_vec()).unwrap();
    b.delete(k("/a/b/c")).unwrap();
    b.commit().unwrap();
    assert_eq!(store.get(&k("/batch/key")).unwrap(), b"b");
    assert!(!store.has(&k("/a/b/c")).unwrap());

    let too_long = k(&format!(
        "/{}",
        "x".repeat(flatfs::MAX_ENCODED_KEY_BYTES + 1)
    ));
    let err = store.put(&too_long, b"x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    assert!(err.to_string().contains("too long"), "{err}");
    let longest = k(&format!("/{}", "x".repeat(flatfs::MAX_ENCODED_KEY_BYTES)));
    store.put(&longest, b"x").unwrap();
    assert_eq!(store.get(&longest).unwrap(), b"x");
    drop(store);

    // Without encoding the encoded files are foreign names: never valid keys.
    let plain = reopen(dir.path());
    assert!(plain.get(&k("/pins/pin/abc")).unwrap_err().is_not_found());
    let raw = all_keys(&plain);
    assert!(raw.contains("/QUUX"));
    assert!(raw.iter().filter(|k| k.starts_with("/~")).count() >= 8);
    assert!(
        raw.iter()
            .filter(|key| key.starts_with("/~"))
            .all(|key| !flatfs::is_valid_key(&k(key)))
    );
}

#[test]
fn encoding_works_with_staging_and_disk_usage() {
    let dir = tempfile::tempdir().unwrap();
    let store = encoded_store(dir.path());
    let start = du(&store);
    let key = k("/dir/file.txt");
    let staged = store.stage(&key, StageInit::Empty).unwrap();
    staged.write_all_at(0, b"contents").unwrap();
    store.commit_staged(&key, staged, false).unwrap();
    assert_eq!(store.get(&key).unwrap(), b"contents");
    let staged = store.stage(&key, StageInit::CopyCurrent).unwrap();
    assert_eq!(staged.read_all().unwrap(), b"contents");
    drop(staged);
    let (dirs, bytes) = recount(dir.path());
    assert_eq!(
        du(&store),
        start + bytes + dirs as u64 * empty_dir_size(dir.path())
    );
    let entries = store.query(Query::prefix("/dir")).unwrap().rest().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key, key);
    assert_eq!(entries[0].value.as_deref(), Some(&b"contents"[..]));
}

#[test]
fn rename_moves_the_data_file_and_keeps_usage_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::NextToLast(2));
    store.put(&k("/SRCKEY"), b"0123456789").unwrap();
    store.put(&k("/OTHER"), b"xy").unwrap();
    let before = du(&store);
    store.rename(&k("/SRCKEY"), &k("/DESTKEY")).unwrap();
    assert_eq!(store.get(&k("/DESTKEY")).unwrap(), b"0123456789");
    assert!(!store.has(&k("/SRCKEY")).unwrap());
    assert_eq!(du(&store), before, "a move neither adds nor frees space");
    // Over an existing key: the replaced value's bytes are freed.
    store.rename(&k("/DESTKEY"), &k("/OTHER")).unwrap();
    assert_eq!(store.get(&k("/OTHER")).unwrap(), b"0123456789");
    assert_eq!(du(&store), before - 2);
    assert!(
        store
            .rename(&k("/MISSING"), &k("/X"))
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .rename(&k("/lower"), &k("/X"))
            .unwrap_err()
            .is_not_found()
    );
}

/// A new small value is staged in memory: nothing reaches `.temp` until the commit, which
/// writes it like any value (temporary file, rename, fsynced when durable), so a reopened store
/// reads it and `.temp` is empty. One that outgrows memory spills to `.temp` and the commit
/// renames that very file into place.
#[test]
fn new_values_stage_in_memory_and_spill_to_temp_when_they_grow() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let temp_count = || temp_entries(dir.path()).len();
    {
        let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
        let small = store.stage(&k("/SMALL"), StageInit::Empty).unwrap();
        small.write_all_at(0, b"small value").unwrap();
        assert!(small.is_in_memory());
        assert_eq!(temp_count(), 0);
        store.commit_staged(&k("/SMALL"), small, true).unwrap();
        assert_eq!(temp_count(), 0);

        let big = store.stage(&k("/BIG"), StageInit::Empty).unwrap();
        let data: Vec<u8> = (0..MEMORY_LIMIT as usize * 2).map(|i| i as u8).collect();
        big.write_all_at(0, &data[..1000]).unwrap();
        assert!(big.is_in_memory());
        big.write_all_at(1000, &data[1000..]).unwrap();
        assert!(!big.is_in_memory());
        let spilled = std::fs::metadata(big.path().unwrap()).unwrap().ino();
        store.commit_staged(&k("/BIG"), big, true).unwrap();
        let path = store.data_path(&k("/BIG")).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            spilled,
            "renamed, not copied"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(store.get(&k("/BIG")).unwrap(), data);
        assert_eq!(temp_count(), 0);
    }
    let store = reopen(dir.path());
    assert_eq!(store.get(&k("/SMALL")).unwrap(), b"small value");
    assert_eq!(
        store.get(&k("/BIG")).unwrap().len(),
        MEMORY_LIMIT as usize * 2
    );
}

/// `.temp` replaced by a regular file: no temporary file can be made there.
fn break_temp(dir: &Path) {
    let temp = dir.join(TEMP_DIR);
    std::fs::remove_dir_all(&temp).unwrap();
    std::fs::write(&temp, b"not a directory").unwrap();
}

/// A new empty value (a `put` of nothing, or the commit of an empty file staged in memory) is
/// its data file created in place: no temporary file and no rename, so it is stored even where
/// no temporary file can be made. A non-empty value still needs one (the test can fail), and
/// the empty values survive a reopen and are listed with size 0.
#[test]
fn new_empty_values_are_created_in_place_without_a_temporary_file() {
    for durable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
            break_temp(dir.path());
            store.put(&k("/PUTEMPTY"), b"").unwrap();
            let staged = store.stage(&k("/STAGEDEMPTY"), StageInit::Empty).unwrap();
            assert!(staged.is_in_memory());
            store
                .commit_staged(&k("/STAGEDEMPTY"), staged, durable)
                .unwrap();
            assert!(
                store.put(&k("/FULL"), b"x").is_err(),
                "a non-empty value needs .temp"
            );
            for key in ["/PUTEMPTY", "/STAGEDEMPTY"] {
                assert_eq!(store.get(&k(key)).unwrap(), b"");
                assert_eq!(mode(&store.data_path(&k(key)).unwrap()), 0o600);
            }
            assert_eq!(
                store.get_size(&k("/FULL")).unwrap_err().kind(),
                ErrorKind::NotFound
            );
        }
        std::fs::remove_file(dir.path().join(TEMP_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(TEMP_DIR)).unwrap();
        let store = reopen(dir.path());
        assert_eq!(
            keys_of(&store, Query::default()),
            BTreeSet::from(["/PUTEMPTY".to_owned(), "/STAGEDEMPTY".to_owned()])
        );
        assert_eq!(store.get_size(&k("/STAGEDEMPTY")).unwrap(), 0);
    }
}

/// An empty value over an existing one replaces it by rename, as any put: the old bytes are
/// gone, the disk-usage counter drops by their size, and a value can grow again afterwards.
#[test]
fn an_empty_value_over_an_existing_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_new(dir.path(), ShardFn::IPFS_DEFAULT);
    store.put(&k("/A"), b"hello").unwrap();
    let before = store.disk_usage().unwrap().unwrap();
    store.put(&k("/A"), b"").unwrap();
    assert_eq!(store.get(&k("/A")).unwrap(), b"");
    assert_eq!(store.disk_usage().unwrap().unwrap(), before - 5);
    let staged = store.stage(&k("/A"), StageInit::Empty).unwrap();
    store.commit_staged(&k("/A"), staged, false).unwrap();
    assert_eq!(store.get(&k("/A")).unwrap(), b"");
    store.put(&k("/A"), b"again").unwrap();
    assert_eq!(store.get(&k("/A")).unwrap(), b"again");
    assert_eq!(store.disk_usage().unwrap().unwrap(), before);
}
