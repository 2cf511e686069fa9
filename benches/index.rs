//! Index benchmarks: lookup and directory listing against directory size, and the claim that
//! listing cost grows with the directory, not with the store.
//!
//! ```text
//! cargo bench --bench index                       # full run, 1k/100k/1M; 2-3 minutes
//! DSFS_BENCH_1M=0 cargo bench --bench index       # leave the 1M-key cases out
//! DSFS_BENCH_QUICK=1 cargo bench --bench index    # CI smoke test: every bench, tiny times
//! ```
//!
//! `DSFS_BENCH_QUICK=1` (see `benches/common/mod.rs`) runs every benchmark for a few
//! milliseconds: the figures are meaningless, but every setup and routine runs (about 20 s for
//! both bench targets on 2 cores, after the build). Quick mode leaves the 1M-key cases out
//! unless `DSFS_BENCH_1M=1` asks for them; so does criterion's test mode (`cargo test
//! --all-targets` runs every bench once).
//!
//! `DSFS_BENCH_1M` decides whether the 1M-key cases run: `1` always, `0` never; unset, in
//! every run but a quick or test one. On a 2-core VM building the index with one 1M-entry directory takes
//! about 30 s (1 GiB file) and the one with 1M keys in 1,000 other directories about 15 s
//! (0.5 GiB); one listing of the 1M-entry directory takes about 5 s.
//!
//! Groups (each index is built once, outside the timed loops, with `Index::record_batch` in
//! chunks of [`CHUNK`] keys, in a temporary directory, and shared by every group that uses it):
//! * `lookup`, `resolve`: one entry of a directory of 1k, 100k (1M) entries, by name in the
//!   directory (`Index::lookup`) and by full key (`Index::resolve`), cycling over 1,024 names.
//! * `list`: a full listing of that directory, in `Index::list` pages of [`PAGE`] entries, as
//!   `readdir` does it.
//! * `list_fixed_1k`, `lookup_fixed_1k`: the same 1,000-entry directory while the rest of the
//!   index holds 0, 100k (1M) other keys, in other directories of 1,000 entries each, written
//!   interleaved with the fixed directory's keys (so its nodes are spread through the tables as
//!   in a store that grew over time). The timings should be about equal across the sizes.
//! * `write`: the index's part of a file's create and removal through the filesystem: one
//!   `Index::create_file` (node, entry, key) and one `Index::unlink_file`, each its own
//!   (non-durable) write transaction, in a directory of 1,000 entries of an index file.
//!
//! Not benchmarked yet: the FUSE name escaping (the mapping between POSIX names and key
//! components) does not exist yet.

mod common;

use std::cell::OnceCell;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

use dsfs::Key;
use dsfs::index::{Index, IndexOptions, Node, NodeId, NodeKind};

use common::{Budget, count_label, env_flag, group, mix, small};

/// Keys per `record_batch` transaction while building an index.
const CHUNK: usize = 20_000;

/// Entries per `Index::list` call, as the filesystem's readdir asks for them.
const PAGE: usize = 4096;

/// Entries in the fixed directory of the store-size benchmarks.
const FIXED: usize = 1_000;

/// Names the lookup benchmarks cycle through.
const PROBES: usize = 1024;

/// The directory sizes (and numbers of other keys) benchmarked.
fn sizes() -> Vec<usize> {
    let mut v = vec![1_000, 100_000];
    if include_1m() {
        v.push(1_000_000);
    }
    v
}

/// Whether the 1M-key cases run: `DSFS_BENCH_1M` if set, else unless in quick or test mode.
fn include_1m() -> bool {
    match std::env::var_os("DSFS_BENCH_1M") {
        Some(_) => env_flag("DSFS_BENCH_1M"),
        None => !small(),
    }
}

/// A name like a flatfs block name: `CIQ` and 16 upper-case hex digits, unique per `i`.
fn name(i: u64) -> String {
    format!("CIQ{:016X}", mix(i))
}

/// A built index in its own temporary directory, closed on drop.
struct Fixture {
    index: Index,
    /// The directory under test, as a key.
    dir_key: Key,
    /// Its node.
    dir: NodeId,
    /// Its size.
    entries: usize,
    /// Names in it to look up.
    probes: Vec<String>,
    _tmp: TempDir,
}

impl Fixture {
    /// Builds an index from `keys` (in that order) and names `dir_key` the directory under test.
    fn build(what: &str, dir_key: Key, entries: usize, keys: Vec<Key>) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let index = Index::open(tmp.path().join("index.redb"), IndexOptions::default())
            .expect("opening the index");
        let start = Instant::now();
        for chunk in keys.chunks(CHUNK) {
            index
                .record_batch(chunk.iter().map(|k| (k, Some(1024))))
                .expect("record_batch");
        }
        index.sync().expect("sync");
        let size = std::fs::metadata(tmp.path().join("index.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        eprintln!(
            "built {what}: {} keys in {:.1} s ({:.0} keys/s), {:.0} MiB",
            keys.len(),
            start.elapsed().as_secs_f64(),
            keys.len() as f64 / start.elapsed().as_secs_f64(),
            size as f64 / f64::from(1 << 20),
        );
        let (dir, _) = index
            .resolve(&dir_key)
            .expect("resolve")
            .expect("the directory under test exists");
        let step = (entries / PROBES).max(1);
        let probes: Vec<String> = keys
            .iter()
            .filter(|k| dir_key.is_ancestor_of(k))
            .step_by(step)
            .take(PROBES)
            .map(|k| k.base_namespace().to_owned())
            .collect();
        let fx = Fixture {
            index,
            dir_key,
            dir,
            entries,
            probes,
            _tmp: tmp,
        };
        assert_eq!(fx.list_all(), entries, "{what}: listing is complete");
        fx
    }

    /// An index holding one directory, `/big`, of `n` entries.
    fn one_dir(n: usize) -> Fixture {
        let dir = Key::new("/big");
        let keys = (0..n as u64).map(|i| dir.child_string(&name(i))).collect();
        Fixture::build(&format!("/big of {}", count_label(n)), dir, n, keys)
    }

    /// An index holding `/fixed` with [`FIXED`] entries and `others` keys in directories
    /// `/other/DNNNN` of 1,000 each, the fixed directory's keys spread evenly through the
    /// others.
    fn fixed_among(others: usize) -> Fixture {
        let fixed = Key::new("/fixed");
        let mut keys = Vec::with_capacity(others + FIXED);
        let stride = (others / FIXED).max(1);
        let mut f = 0u64;
        for j in 0..others {
            if j % stride == 0 && (f as usize) < FIXED {
                keys.push(fixed.child_string(&name(f)));
                f += 1;
            }
            let k = format!("/other/D{:04}/{}", j / 1_000, name((1 << 40) + j as u64));
            keys.push(Key::new(k));
        }
        while (f as usize) < FIXED {
            keys.push(fixed.child_string(&name(f)));
            f += 1;
        }
        let what = format!("/fixed among {} others", count_label(others));
        Fixture::build(&what, fixed, FIXED, keys)
    }

    /// Lists the whole directory in pages, as readdir does; returns the entry count.
    fn list_all(&self) -> usize {
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self.index.list(self.dir, after, PAGE).expect("list");
            n += page.len();
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.cookie,
                _ => return n,
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = self.index.close() {
            eprintln!("closing a benchmark index: {e}");
        }
    }
}

/// Benchmarks `lookup` of a probe name in the fixture's directory.
fn bench_lookup(b: &mut criterion::Bencher<'_>, fx: &Fixture) {
    let mut i = 0;
    b.iter(|| {
        i = (i + 1) % fx.probes.len();
        let found = fx.index.lookup(fx.dir, &fx.probes[i]).expect("lookup");
        assert!(found.is_some());
    });
}

/// Benchmarks a full listing of the fixture's directory.
fn bench_list(b: &mut criterion::Bencher<'_>, fx: &Fixture) {
    b.iter(|| assert_eq!(fx.list_all(), fx.entries));
}

fn directory_size(c: &mut Criterion) {
    let sizes = sizes();
    let fixtures: Vec<OnceCell<Fixture>> = sizes.iter().map(|_| OnceCell::new()).collect();
    let fixture = |n: usize| fixtures[n].get_or_init(|| Fixture::one_dir(sizes[n]));

    let mut g = group(c, "lookup", Budget::FAST);
    for (n, &size) in sizes.iter().enumerate() {
        let id = BenchmarkId::new("dir", count_label(size));
        g.bench_function(id, |b| bench_lookup(b, fixture(n)));
    }
    g.finish();

    let mut g = group(c, "resolve", Budget::FAST);
    for (n, &size) in sizes.iter().enumerate() {
        let id = BenchmarkId::new("dir", count_label(size));
        g.bench_function(id, |b| {
            let fx = fixture(n);
            let keys: Vec<Key> = fx
                .probes
                .iter()
                .map(|p| fx.dir_key.child_string(p))
                .collect();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                assert!(fx.index.resolve(&keys[i]).expect("resolve").is_some());
            });
        });
    }
    g.finish();

    let mut g = group(c, "list", Budget::SLOW);
    for (n, &size) in sizes.iter().enumerate() {
        g.throughput(Throughput::Elements(size as u64));
        let id = BenchmarkId::new("dir", count_label(size));
        g.bench_function(id, |b| bench_list(b, fixture(n)));
    }
    g.finish();
}

fn store_size(c: &mut Criterion) {
    let mut others = vec![0, 100_000];
    if include_1m() {
        others.push(1_000_000);
    }
    let fixtures: Vec<OnceCell<Fixture>> = others.iter().map(|_| OnceCell::new()).collect();
    let fixture = |n: usize| fixtures[n].get_or_init(|| Fixture::fixed_among(others[n]));

    let mut g = group(c, "list_fixed_1k", Budget::MEDIUM);
    g.throughput(Throughput::Elements(FIXED as u64));
    for (n, &o) in others.iter().enumerate() {
        let id = BenchmarkId::new("others", count_label(o));
        g.bench_function(id, |b| bench_list(b, fixture(n)));
    }
    g.finish();

    let mut g = group(c, "lookup_fixed_1k", Budget::FAST);
    for (n, &o) in others.iter().enumerate() {
        let id = BenchmarkId::new("others", count_label(o));
        g.bench_function(id, |b| bench_lookup(b, fixture(n)));
    }
    g.finish();
}

/// One `create_file` and one `unlink_file` per iteration, in a directory of [`FIXED`] others.
fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let index = Index::open(dir.path().join("index.redb"), IndexOptions::default())
        .expect("opening the index");
    let keys: Vec<Key> = (0..FIXED as u64)
        .map(|i| Key::new(format!("/d/{}", name(i))))
        .collect();
    index
        .record_batch(keys.iter().map(|k| (k, Some(1))))
        .expect("building the directory");
    let (d, _) = index
        .resolve(&Key::new("/d"))
        .expect("resolving /d")
        .expect("/d exists");
    let mut g = group(c, "write", Budget::MEDIUM);
    g.throughput(Throughput::Elements(1));
    g.bench_function("create_unlink", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let n = format!("new{i}");
            let key = Key::new(format!("/d/{n}"));
            let node = Node::new(NodeKind::File, 0, "", 0o644, 0, 0);
            let (id, _) = index
                .create_file(d, &n, node, &key, 0)
                .expect("create_file");
            index
                .unlink_file(d, &n, Some(id), |_| false)
                .expect("unlink_file");
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = directory_size, store_size, writes
}
criterion_main!(benches);
