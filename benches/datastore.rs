//! Datastore benchmarks: every store in [`STORES`] against the same workloads, next to a plain
//! `std::fs` "floor" that file-backed stores are measured against.
//!
//! ```text
//! cargo bench --bench datastore                     # full run, 5-6 minutes on 2 cores
//! cargo bench --bench datastore -- 'get/redb'       # a subset (criterion's regex filter)
//! DSFS_BENCH_QUICK=1 cargo bench --bench datastore  # CI smoke test: every bench, tiny times
//! ```
//!
//! `DSFS_BENCH_QUICK=1` (see `benches/common/mod.rs`) runs every benchmark for a few
//! milliseconds and shrinks the query stores to 1,000 and 10,000 keys and the `batch_put` store
//! to 1,000: the figures are meaningless, but every setup and routine runs, so it works as a CI
//! smoke test (about 20 s for both bench targets on 2 cores, after the build). Criterion's test
//! mode (`cargo test --all-targets`) uses the same small stores.
//!
//! Groups (benchmark ids are `group/store/parameter`):
//! * `put`, `get`, `read_at` (4 KiB from the middle of the value), `has`, `get_size`: values of
//!   1 KiB, 256 KiB and 1 MiB; `put` overwrites one of 16 keys in turn.
//! * `batch_put`: a batch of 1,000 new keys of 1 KiB each, committed, into a store of 10k keys
//!   (the previous batch's keys are deleted outside the timing).
//! * `query`: a query for every key of a store holding 10k or 100k keys of 1 KiB, keys only and
//!   with values. The keys are single-component (flatfs accepts nothing else), so the prefix is
//!   `/`; each store is filled once per size, outside the timed loop.
//! * `key_new` (cleaning messy inputs) and `key_accessors`.
//! * `rados` (with `--features rados`, when `DSFS_TEST_CEPH_CONF` names a cluster, as the tests
//!   read it: start one with `tests/ceph/cluster.sh start` and export what it prints; skipped
//!   with a message otherwise): `put`, `get` and `read_at` (4 KiB from the middle) of 4 KiB and
//!   1 MiB values, and a query of a namespace of 1,000 keys of 1 KiB, keys only and with
//!   values, each next to `redb` in the same run as the local baseline. Ids are
//!   `rados/OP/STORE/PARAMETER`.
//!
//! Stores: `mem` ([`MemStore`]), `redb` ([`RedbStore`]), `indexed-redb` ([`IndexedStore`] over a
//! `RedbStore`, index on disk). `std-fs` is the floor, not a store: `put` writes a temporary
//! file and renames it into place (no fsync, like every store here by default), `get` reads the
//! whole file, `read_at` opens and `pread`s, `has`/`get_size` stat, `query` lists the directory
//! (and reads every file). Every key used is a valid flatfs key (`/` then `0-9A-Z`), so a flatfs
//! store can be added with one entry in [`STORES`].

mod common;

use std::cell::{Cell, OnceCell, RefCell};
use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

use dsfs::backend::redb::RedbOptions;
use dsfs::backend::{MemStore, RedbStore};
use dsfs::index::{Index, IndexOptions, IndexedStore};
use dsfs::{Datastore, Key, Query};

use common::{Budget, count_label, group, mix, size_label, small, value};

/// A store under test: a name for the benchmark ids and how to open a fresh one in an empty
/// directory.
struct StoreKind {
    name: &'static str,
    open: fn(&Path) -> dsfs::Result<Arc<dyn Datastore>>,
}

/// The stores benchmarked. A new backend is one more entry, e.g. once `FlatFsStore` lands:
///
/// ```ignore
/// StoreKind {
///     name: "flatfs",
///     open: |dir| {
///         use dsfs::backend::flatfs::{FlatFsOptions, ShardFn};
///         let s = FlatFsStore::create_or_open(dir.join("flatfs"), ShardFn::IPFS_DEFAULT,
///             FlatFsOptions::default())?;
///         Ok(Arc::new(s))
///     },
/// },
/// ```
const STORES: &[StoreKind] = &[
    StoreKind {
        name: "mem",
        open: |_| Ok(Arc::new(MemStore::new())),
    },
    StoreKind {
        name: "redb",
        open: |dir| {
            let s = RedbStore::open(dir.join("values.redb"), RedbOptions::default())?;
            Ok(Arc::new(s))
        },
    },
    StoreKind {
        name: "indexed-redb",
        open: |dir| {
            let backend = RedbStore::open(dir.join("values.redb"), RedbOptions::default())?;
            let index = Index::open(dir.join("index.redb"), IndexOptions::default())?;
            Ok(Arc::new(IndexedStore::new(
                Arc::new(backend),
                Arc::new(index),
            )))
        },
    },
];

/// The id of the `std::fs` floor in every group.
const FLOOR: &str = "std-fs";

/// Value sizes of the single-key operations.
const SIZES: &[usize] = &[1 << 10, 256 << 10, 1 << 20];

/// The bytes `read_at` asks for.
const READ_LEN: usize = 4096;

/// Keys per `batch_put` batch, and their value size.
const BATCH_KEYS: usize = 1_000;
const BATCH_VALUE: usize = 1 << 10;
/// Keys the `batch_put` stores hold besides the batch.
const BATCH_BASE: usize = 10_000;

/// Value size of the query stores.
const QUERY_VALUE: usize = 1 << 10;

/// A valid flatfs key: `/CIQ`, a tag, then 16 upper-case hex digits.
fn key(tag: &str, i: u64) -> Key {
    Key::new(format!("/CIQ{tag}{:016X}", mix(i)))
}

/// An open store in its own temporary directory, closed and removed on drop.
struct Fixture {
    store: Arc<dyn Datastore>,
    _dir: TempDir,
}

impl Fixture {
    fn new(kind: &StoreKind) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = (kind.open)(dir.path()).expect("opening the store");
        Fixture { store, _dir: dir }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = self.store.close() {
            eprintln!("closing a benchmark store: {e}");
        }
    }
}

/// The `std::fs` floor: one file per key in a flat temporary directory.
struct Floor {
    dir: TempDir,
    tmp: PathBuf,
}

impl Floor {
    fn new() -> Floor {
        let dir = tempfile::tempdir().expect("temp dir");
        let tmp = dir.path().join(".temp");
        fs::create_dir(&tmp).expect("temp subdir");
        Floor { dir, tmp }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.path().join(&key.as_str()[1..])
    }

    /// Writes a temporary file and renames it over the key's file.
    fn put(&self, key: &Key, value: &[u8]) {
        let tmp = self.tmp.join(&key.as_str()[1..]);
        let mut f = File::create(&tmp).expect("create");
        f.write_all(value).expect("write");
        drop(f);
        fs::rename(&tmp, self.path(key)).expect("rename");
    }

    fn get(&self, key: &Key) -> Vec<u8> {
        fs::read(self.path(key)).expect("read")
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> usize {
        let f = File::open(self.path(key)).expect("open");
        f.read_at(buf, offset).expect("pread")
    }

    fn has(&self, key: &Key) -> bool {
        fs::metadata(self.path(key)).is_ok()
    }

    fn get_size(&self, key: &Key) -> u64 {
        fs::metadata(self.path(key)).expect("stat").len()
    }

    /// The keys in the directory (the floor of a keys-only query).
    fn list(&self) -> usize {
        let mut n = 0;
        for e in fs::read_dir(self.dir.path()).expect("read_dir") {
            let e = e.expect("dir entry");
            if e.file_name().as_encoded_bytes().first() != Some(&b'.') {
                black_box(e.file_name());
                n += 1;
            }
        }
        n
    }

    /// Every file's bytes (the floor of a query with values).
    fn list_values(&self) -> usize {
        let mut n = 0;
        for e in fs::read_dir(self.dir.path()).expect("read_dir") {
            let e = e.expect("dir entry");
            if e.file_name().as_encoded_bytes().first() != Some(&b'.') {
                black_box(fs::read(e.path()).expect("read"));
                n += 1;
            }
        }
        n
    }
}

fn put(c: &mut Criterion) {
    let mut g = group(c, "put", Budget::MEDIUM);
    let keys: Vec<Key> = (0..16).map(|i| key("PUT", i)).collect();
    for &size in SIZES {
        let val = value(size, size as u64);
        let label = size_label(size);
        g.throughput(Throughput::Bytes(size as u64));
        for kind in STORES {
            let fx = OnceCell::new();
            g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
                let fx = fx.get_or_init(|| Fixture::new(kind));
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    fx.store.put(&keys[i], &val).expect("put");
                });
            });
        }
        let floor = OnceCell::new();
        g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
            let floor = floor.get_or_init(Floor::new);
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                floor.put(&keys[i], &val);
            });
        });
    }
    g.finish();
}

/// The single-key reads (`get`, `read_at`, `has`, `get_size`) share one filled store per kind.
fn reads(c: &mut Criterion) {
    let keys: Vec<Key> = SIZES.iter().map(|&s| key("GET", s as u64)).collect();
    let fill = |store: &dyn Datastore| {
        for (k, &size) in keys.iter().zip(SIZES) {
            store.put(k, &value(size, size as u64)).expect("put");
        }
        store.sync(&Key::root()).expect("sync");
    };
    let fixtures: Vec<OnceCell<Fixture>> = STORES.iter().map(|_| OnceCell::new()).collect();
    let fixture = |n: usize| {
        fixtures[n].get_or_init(|| {
            let fx = Fixture::new(&STORES[n]);
            fill(fx.store.as_ref());
            fx
        })
    };
    let floor = OnceCell::new();
    let floor = || {
        floor.get_or_init(|| {
            let f = Floor::new();
            for (k, &size) in keys.iter().zip(SIZES) {
                f.put(k, &value(size, size as u64));
            }
            f
        })
    };

    let mut g = group(c, "get", Budget::MEDIUM);
    for (k, &size) in keys.iter().zip(SIZES) {
        let label = size_label(size);
        g.throughput(Throughput::Bytes(size as u64));
        for (n, kind) in STORES.iter().enumerate() {
            g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
                let store = &fixture(n).store;
                b.iter(|| black_box(store.get(k).expect("get")));
            });
        }
        g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
            let floor = floor();
            b.iter(|| black_box(floor.get(k)));
        });
    }
    g.finish();

    let mut g = group(c, "read_at", Budget::FAST);
    for (k, &size) in keys.iter().zip(SIZES) {
        let label = size_label(size);
        let offset = (size.saturating_sub(READ_LEN) / 2) as u64;
        let want = READ_LEN.min(size);
        g.throughput(Throughput::Bytes(want as u64));
        for (n, kind) in STORES.iter().enumerate() {
            g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
                let store = &fixture(n).store;
                let mut buf = vec![0u8; READ_LEN];
                b.iter(|| {
                    let got = store.read_at(k, offset, &mut buf).expect("read_at");
                    assert_eq!(got, want);
                });
            });
        }
        g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
            let floor = floor();
            let mut buf = vec![0u8; READ_LEN];
            b.iter(|| assert_eq!(floor.read_at(k, offset, &mut buf), want));
        });
    }
    g.finish();

    let mut g = group(c, "has", Budget::FAST);
    for (k, &size) in keys.iter().zip(SIZES) {
        let label = size_label(size);
        for (n, kind) in STORES.iter().enumerate() {
            g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
                let store = &fixture(n).store;
                b.iter(|| assert!(store.has(k).expect("has")));
            });
        }
        g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
            let floor = floor();
            b.iter(|| assert!(floor.has(k)));
        });
    }
    g.finish();

    let mut g = group(c, "get_size", Budget::FAST);
    for (k, &size) in keys.iter().zip(SIZES) {
        let label = size_label(size);
        for (n, kind) in STORES.iter().enumerate() {
            g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
                let store = &fixture(n).store;
                b.iter(|| assert_eq!(store.get_size(k).expect("get_size"), size as u64));
            });
        }
        g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
            let floor = floor();
            b.iter(|| assert_eq!(floor.get_size(k), size as u64));
        });
    }
    g.finish();
}

/// Writes `keys`, each with `val`, in batches of 1,000, then syncs.
/// Runs a query of every key (with or without values) to the end; the number of entries.
fn query_all(store: &dyn Datastore, keys_only: bool) -> usize {
    let q = Query {
        prefix: "/".to_owned(),
        keys_only,
        ..Query::default()
    };
    let mut count = 0;
    for entry in store.query(q).expect("query") {
        black_box(entry.expect("query entry"));
        count += 1;
    }
    count
}

fn fill(store: &dyn Datastore, keys: impl IntoIterator<Item = Key>, val: &[u8]) {
    let keys: Vec<Key> = keys.into_iter().collect();
    for chunk in keys.chunks(1_000) {
        let mut batch = store.batch().expect("batch");
        for k in chunk {
            batch.put(k.clone(), val.to_vec()).expect("batch put");
        }
        batch.commit().expect("commit");
    }
    store.sync(&Key::root()).expect("sync");
}

fn batch_put(c: &mut Criterion) {
    let mut g = group(c, "batch_put", Budget::SLOW);
    g.throughput(Throughput::Elements(BATCH_KEYS as u64));
    let label = format!("{BATCH_KEYS}x{}", size_label(BATCH_VALUE));
    let val = value(BATCH_VALUE, 7);
    let base = if small() { 1_000 } else { BATCH_BASE };
    // Every batch writes keys the store does not hold, as an import does; the previous batch's
    // keys are removed outside the timing, so the store stays at `base` keys.
    let next = Cell::new(0u64);
    let ops = || {
        let start = next.get();
        next.set(start + BATCH_KEYS as u64);
        (start..start + BATCH_KEYS as u64)
            .map(|i| (key("BATCH", i), val.clone()))
            .collect::<Vec<_>>()
    };
    let base_keys = || (0..base as u64).map(|i| key("BASE", i));
    for kind in STORES {
        let fx = OnceCell::new();
        let previous: RefCell<Vec<Key>> = RefCell::default();
        g.bench_function(BenchmarkId::new(kind.name, &label), |b| {
            let store = &fx
                .get_or_init(|| {
                    let fx = Fixture::new(kind);
                    fill(fx.store.as_ref(), base_keys(), &val);
                    fx
                })
                .store;
            b.iter_batched(
                || {
                    let old = previous.take();
                    if !old.is_empty() {
                        let mut batch = store.batch().expect("batch");
                        for k in old {
                            batch.delete(k).expect("batch delete");
                        }
                        batch.commit().expect("commit");
                    }
                    let ops = ops();
                    *previous.borrow_mut() = ops.iter().map(|(k, _)| k.clone()).collect();
                    ops
                },
                |ops| {
                    let mut batch = store.batch().expect("batch");
                    for (k, v) in ops {
                        batch.put(k, v).expect("batch put");
                    }
                    batch.commit().expect("commit");
                },
                BatchSize::PerIteration,
            );
        });
    }
    let floor = OnceCell::new();
    let previous: RefCell<Vec<Key>> = RefCell::default();
    g.bench_function(BenchmarkId::new(FLOOR, &label), |b| {
        let floor = floor.get_or_init(|| {
            let f = Floor::new();
            for k in base_keys() {
                f.put(&k, &val);
            }
            f
        });
        b.iter_batched(
            || {
                for k in previous.take() {
                    fs::remove_file(floor.path(&k)).expect("unlink");
                }
                let ops = ops();
                *previous.borrow_mut() = ops.iter().map(|(k, _)| k.clone()).collect();
                ops
            },
            |ops| {
                for (k, v) in ops {
                    floor.put(&k, &v);
                }
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn query(c: &mut Criterion) {
    let sizes: &[usize] = if small() {
        &[1_000, 10_000]
    } else {
        &[10_000, 100_000]
    };
    let val = value(QUERY_VALUE, 11);
    let mut g = group(c, "query", Budget::SLOW);
    for &n in sizes {
        let label = count_label(n);
        g.throughput(Throughput::Elements(n as u64));
        for kind in STORES {
            // Filled once per size and shared by the keys-only and the with-values query.
            let fx = OnceCell::new();
            let fixture = || {
                fx.get_or_init(|| {
                    let fx = Fixture::new(kind);
                    fill(fx.store.as_ref(), (0..n as u64).map(|i| key("Q", i)), &val);
                    fx
                })
            };
            for (mode, keys_only) in [("keys-only", true), ("values", false)] {
                let id = BenchmarkId::new(format!("{}/{mode}", kind.name), &label);
                g.bench_function(id, |b| {
                    let store = &fixture().store;
                    b.iter(|| assert_eq!(query_all(store.as_ref(), keys_only), n));
                });
            }
        }
        let floor = OnceCell::new();
        let floor = || {
            floor.get_or_init(|| {
                let f = Floor::new();
                for i in 0..n as u64 {
                    f.put(&key("Q", i), &val);
                }
                f
            })
        };
        g.bench_function(
            BenchmarkId::new(format!("{FLOOR}/keys-only"), &label),
            |b| {
                let floor = floor();
                b.iter(|| assert_eq!(floor.list(), n));
            },
        );
        g.bench_function(BenchmarkId::new(format!("{FLOOR}/values"), &label), |b| {
            let floor = floor();
            b.iter(|| assert_eq!(floor.list_values(), n));
        });
    }
    g.finish();
}

fn keys(c: &mut Criterion) {
    let long_messy = {
        let mut s = String::new();
        for i in 0..32 {
            s.push_str(match i % 4 {
                0 => "//",
                1 => "/./",
                2 => "/x/../",
                _ => "/",
            });
            s.push_str(&format!("c{i}"));
        }
        s.push('/');
        s
    };
    let inputs: Vec<(&str, String)> = vec![
        (
            "clean",
            "/blocks/CIQA4T3TD3BP3C2M3GXCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ".to_owned(),
        ),
        (
            "no-leading-slash",
            "blocks/CIQA4T3TD3BP3C2M3GXCGRC".to_owned(),
        ),
        (
            "trailing-slash",
            "/blocks/CIQA4T3TD3BP3C2M3GXCGRC/".to_owned(),
        ),
        ("dot-segments", "/a/./b/../c/./d".to_owned()),
        ("dotdot-above-root", "/../../../a/b".to_owned()),
        ("double-slashes", "//a//b///c////d".to_owned()),
        ("long-messy", long_messy),
    ];
    let mut g = group(c, "key_new", Budget::FAST);
    for (name, input) in &inputs {
        g.bench_function(*name, |b| b.iter(|| Key::new(black_box(input.as_str()))));
    }
    g.finish();

    let k = Key::new("/Comedy/MontyPython/Actor:JohnCleese");
    let ancestor = Key::new("/Comedy/MontyPython");
    let deep = Key::new((0..16).map(|i| format!("/n{i}")).collect::<String>());
    let mut g = group(c, "key_accessors", Budget::FAST);
    g.bench_function("parent", |b| b.iter(|| black_box(&k).parent()));
    g.bench_function("base_namespace", |b| {
        b.iter(|| black_box(black_box(&k).base_namespace()).len())
    });
    g.bench_function("type_and_name", |b| {
        b.iter(|| {
            let k = black_box(&k);
            black_box(k.type_()).len() + black_box(k.name()).len()
        })
    });
    g.bench_function("list", |b| b.iter(|| black_box(&k).list().len()));
    g.bench_function("components_16", |b| {
        b.iter(|| black_box(&deep).components().count())
    });
    g.bench_function("child_string", |b| {
        b.iter(|| black_box(&ancestor).child_string(black_box("Actor:EricIdle")))
    });
    g.bench_function("is_ancestor_of", |b| {
        b.iter(|| black_box(&ancestor).is_ancestor_of(black_box(&k)))
    });
    g.bench_function("reverse", |b| b.iter(|| black_box(&k).reverse()));
    g.finish();
}

/// The RADOS store against a live cluster, next to redb (see the module documentation).
#[cfg(feature = "rados")]
fn rados(c: &mut Criterion) {
    use dsfs::backend::rados::{RadosOptions, RadosStore};
    let Some(conf) = std::env::var_os("DSFS_TEST_CEPH_CONF") else {
        eprintln!(
            "rados benchmarks skipped: no cluster (DSFS_TEST_CEPH_CONF unset; start one with \
             tests/ceph/cluster.sh start and export what it prints)"
        );
        return;
    };
    let pool = std::env::var("DSFS_TEST_CEPH_POOL").unwrap_or_else(|_| "dsfs".into());
    let id = std::env::var("DSFS_TEST_CEPH_ID").unwrap_or_else(|_| "dsfs".into());
    // A namespace per run and per store, so that runs do not see each other's keys.
    let run = format!(
        "bench-{}-{}",
        std::process::id(),
        mix(std::process::id().into())
    );
    let open_rados = |what: &str| -> Arc<dyn Datastore> {
        let options = RadosOptions {
            conf: PathBuf::from(&conf),
            id: id.clone(),
            namespace: format!("{run}-{what}"),
            ..RadosOptions::new(pool.clone())
        };
        Arc::new(RadosStore::open(options).expect("opening the rados store"))
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let open_redb = |what: &str| -> Arc<dyn Datastore> {
        let path = dir.path().join(format!("{what}.redb"));
        Arc::new(RedbStore::open(path, RedbOptions::default()).expect("opening redb"))
    };
    let sizes = [4 << 10, 1 << 20];
    let stores = [("rados", open_rados("ops")), ("redb", open_redb("ops"))];
    let keys: Vec<Key> = (0..16).map(|i| key("RPUT", i)).collect();

    let mut g = group(c, "rados", Budget::MEDIUM);
    for &size in &sizes {
        let val = value(size, size as u64);
        let label = size_label(size);
        let read_key = key("RGET", size as u64);
        for (_, store) in &stores {
            store.put(&read_key, &val).expect("put");
        }
        g.throughput(Throughput::Bytes(size as u64));
        for (name, store) in &stores {
            g.bench_function(BenchmarkId::new(format!("put/{name}"), &label), |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    store.put(&keys[i], &val).expect("put");
                });
            });
            g.bench_function(BenchmarkId::new(format!("get/{name}"), &label), |b| {
                b.iter(|| black_box(store.get(&read_key).expect("get")));
            });
        }
        g.throughput(Throughput::Bytes(READ_LEN as u64));
        let offset = ((size - READ_LEN) / 2) as u64;
        for (name, store) in &stores {
            g.bench_function(BenchmarkId::new(format!("read_at/{name}"), &label), |b| {
                let mut buf = vec![0u8; READ_LEN];
                b.iter(|| {
                    assert_eq!(
                        store.read_at(&read_key, offset, &mut buf).expect("read_at"),
                        READ_LEN
                    )
                });
            });
        }
    }
    g.finish();

    let n = 1_000;
    let val = value(QUERY_VALUE, 11);
    let mut g = group(c, "rados", Budget::SLOW);
    g.throughput(Throughput::Elements(n as u64));
    for (name, store) in [("rados", open_rados("query")), ("redb", open_redb("query"))] {
        fill(store.as_ref(), (0..n as u64).map(|i| key("Q", i)), &val);
        for (mode, keys_only) in [("keys-only", true), ("values", false)] {
            let id = BenchmarkId::new(format!("query/{name}/{mode}"), count_label(n));
            g.bench_function(id, |b| {
                b.iter(|| assert_eq!(query_all(store.as_ref(), keys_only), n));
            });
        }
    }
    g.finish();
}

/// Without the `rados` feature there is nothing to measure.
#[cfg(not(feature = "rados"))]
fn rados(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = put, reads, batch_put, query, keys, rados
}
criterion_main!(benches);
