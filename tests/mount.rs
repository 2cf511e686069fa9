//! `MountStore` end to end: query merging against `naive_apply` over the union of the children,
//! a randomized comparison with a single `MemStore`, early drop, disk usage, and a self-contained
//! port of go-datastore's suite checks (spec §4) over mount topologies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dsfs::backend::redb::RedbOptions;
use dsfs::backend::{MemStore, MountStore, RedbStore};
use dsfs::datastore::query::{self, EntryIter};
use dsfs::datastore::{
    Capabilities, Datastore, Entry, ErrorKind, Filter, Key, Op, Order, Query, Result, Results,
    StageInit,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn k(s: &str) -> Key {
    Key::new(s)
}

fn mount(children: &[(&str, Arc<dyn Datastore>)]) -> MountStore {
    MountStore::new(
        children
            .iter()
            .map(|(p, ds)| (Key::new(p), ds.clone()))
            .collect(),
    )
    .expect("distinct mount points")
}

fn mem() -> Arc<dyn Datastore> {
    Arc::new(MemStore::new())
}

/// `naive_apply` over a finished list of entries.
fn naive(q: &Query, entries: &[Entry]) -> Vec<Entry> {
    let owned: Vec<Entry> = entries.to_vec();
    let input: EntryIter = Box::new(owned.into_iter().map(Ok));
    query::naive_apply(q, input, false)
        .collect::<Result<Vec<_>>>()
        .expect("no errors in a list")
}

fn run(ds: &dyn Datastore, q: &Query) -> Vec<Entry> {
    let results = ds.query(q.clone()).expect("query starts");
    assert!(results.query() == q, "results carry the query as passed in");
    results.rest().expect("query runs")
}

fn key_strings(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Query merging across children

/// Three children, keys interleaving across them, mount points holding values in their parents,
/// and repeated values so that value orders need the key tie-break.
fn three_children() -> (MountStore, Vec<Entry>) {
    let m = mount(&[("/", mem()), ("/x", mem()), ("/y/z", mem())]);
    let mut rng = StdRng::seed_from_u64(7);
    let mut union = Vec::new();
    let mut keys = Vec::new();
    for i in 0..40 {
        keys.push(format!("/k{i}"));
        keys.push(format!("/x/k{i}"));
        keys.push(format!("/y/z/k{i}"));
        keys.push(format!("/y/k{i}"));
    }
    keys.extend(["/x", "/y", "/y/z", "/x-1", "/y/z-1", "/x/y/z", "/y/z/x/1"].map(String::from));
    for key in keys {
        let value: Vec<u8> = (0..rng.random_range(0..3))
            .map(|_| rng.random_range(b'a'..b'd'))
            .collect();
        m.put(&k(&key), &value).unwrap();
        union.push(Entry::with_value(k(&key), value));
    }
    (m, union)
}

#[test]
fn merged_queries_equal_naive_apply_over_the_union() {
    let (m, union) = three_children();
    let orders = [
        vec![Order::Key],
        vec![Order::KeyDescending],
        vec![Order::Value],
        vec![Order::ValueDescending],
        vec![Order::Value, Order::KeyDescending],
        vec![Order::function(|a: &Entry, b: &Entry| {
            a.value_bytes().cmp(b.value_bytes())
        })],
    ];
    let filters = [
        vec![],
        vec![Filter::KeyCompare {
            op: Op::GreaterThan,
            key: "/x/k2".into(),
        }],
        vec![Filter::ValueCompare {
            op: Op::LessThan,
            value: b"b".to_vec(),
        }],
        vec![Filter::KeyPrefix("/y/z".into())],
        vec![
            Filter::KeyPrefix("/".into()),
            Filter::custom(|e: &Entry| e.key.as_str().len().is_multiple_of(2)),
        ],
    ];
    let mut checked = 0;
    for prefix in ["", "/x", "/y", "/y/z", "/y/z/x", "/k1", "/nothing"] {
        for orders in &orders {
            for filters in &filters {
                for (offset, limit) in [(0, 0), (0, 1), (3, 0), (5, 7), (30, 10), (500, 1)] {
                    for keys_only in [false, true] {
                        let q = Query {
                            prefix: prefix.into(),
                            filters: filters.clone(),
                            orders: orders.clone(),
                            offset,
                            limit,
                            keys_only,
                            returns_sizes: keys_only,
                        };
                        let got = run(&m, &q);
                        let input: Vec<Entry> = if keys_only {
                            union
                                .iter()
                                .map(|e| Entry::key_only(e.key.clone(), e.size))
                                .collect()
                        } else {
                            union.clone()
                        };
                        assert_eq!(got, naive(&q, &input), "{q}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 7 * 6 * 5 * 6 * 2);
}

#[test]
fn unordered_queries_over_ordered_children_still_come_in_key_order() {
    let (m, union) = three_children();
    let got = run(&m, &Query::default());
    let mut want = union.clone();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got, want);
    // Mount points are returned by their parents' children.
    let got_keys = key_strings(&got);
    for key in ["/x", "/y", "/y/z"] {
        assert!(got_keys.contains(&key), "{key}");
    }
    assert_eq!(
        key_strings(&run(&m, &Query::prefix("/y")))
            .iter()
            .filter(|k| k.starts_with("/y/z/") || **k == "/y/z")
            .count(),
        42
    );
}

// ---------------------------------------------------------------------------------------------
// Randomized: a mount against a single MemStore holding the same keys

#[test]
fn random_operations_match_a_single_memstore() {
    const COMPONENTS: [&str; 7] = ["a", "b", "c", "a-b", "0", "x", "b0"];
    const VALUES: [&[u8]; 5] = [b"", b"a", b"b", b"ab", b"zz"];
    let prefixes = [
        "", "/", "/a", "/a/", "/a/b", "/a/b/c", "/c", "/c/a", "/b", "/a-b", "/0", "/zzz",
    ];
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let m = mount(&[("/", mem()), ("/a", mem()), ("/a/b", mem()), ("/c", mem())]);
        let reference = MemStore::new();
        let random_key = |rng: &mut StdRng| {
            let depth = rng.random_range(1..=4);
            let parts: Vec<&str> = (0..depth)
                .map(|_| COMPONENTS[rng.random_range(0..COMPONENTS.len())])
                .collect();
            Key::with_namespaces(parts)
        };
        let mut touched = Vec::new();
        for _ in 0..rng.random_range(0..120) {
            let key = random_key(&mut rng);
            match rng.random_range(0..10) {
                0 => {
                    m.delete(&key).unwrap();
                    reference.delete(&key).unwrap();
                }
                1 => {
                    // A small batch through both.
                    let mut mb = m.batch().unwrap();
                    let mut rb = reference.batch().unwrap();
                    for _ in 0..rng.random_range(1..6) {
                        let key = random_key(&mut rng);
                        if rng.random_bool(0.3) {
                            mb.delete(key.clone()).unwrap();
                            rb.delete(key.clone()).unwrap();
                        } else {
                            let v = VALUES[rng.random_range(0..VALUES.len())].to_vec();
                            mb.put(key.clone(), v.clone()).unwrap();
                            rb.put(key.clone(), v).unwrap();
                        }
                        touched.push(key);
                    }
                    mb.commit().unwrap();
                    rb.commit().unwrap();
                }
                _ => {
                    let v = VALUES[rng.random_range(0..VALUES.len())];
                    m.put(&key, v).unwrap();
                    reference.put(&key, v).unwrap();
                }
            }
            touched.push(key);
        }
        for key in &touched {
            assert_eq!(m.has(key).unwrap(), reference.has(key).unwrap(), "{key}");
            match reference.get(key) {
                Ok(v) => {
                    assert_eq!(m.get(key).unwrap(), v);
                    assert_eq!(m.get_size(key).unwrap(), v.len() as u64);
                }
                Err(e) => {
                    assert!(e.is_not_found());
                    assert_eq!(m.get(key).unwrap_err().kind(), ErrorKind::NotFound);
                    assert_eq!(m.get_size(key).unwrap_err().kind(), ErrorKind::NotFound);
                }
            }
        }
        let n = reference.len();
        for _ in 0..40 {
            let orders = match rng.random_range(0..7) {
                0 => vec![],
                1 => vec![Order::Key],
                2 => vec![Order::KeyDescending],
                3 => vec![Order::Value],
                4 => vec![Order::ValueDescending, Order::KeyDescending],
                5 => vec![Order::Value, Order::Key],
                _ => vec![Order::function(|a: &Entry, b: &Entry| {
                    // Whole-key dependent: deeper keys first.
                    b.key.depth().cmp(&a.key.depth())
                })],
            };
            let filters = match rng.random_range(0..5) {
                0 => vec![Filter::KeyCompare {
                    op: Op::LessThanOrEqual,
                    key: "/a/b".into(),
                }],
                1 => vec![Filter::ValueCompare {
                    op: Op::NotEqual,
                    value: b"a".to_vec(),
                }],
                2 => vec![Filter::KeyPrefix("/a/b".into())],
                _ => vec![],
            };
            let q = Query {
                prefix: prefixes[rng.random_range(0..prefixes.len())].into(),
                filters,
                orders,
                limit: if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..=n + 2)
                },
                offset: if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..=n + 2)
                },
                keys_only: rng.random_bool(0.3),
                returns_sizes: rng.random_bool(0.5),
            };
            // MemStore is ordered, so even unordered queries must agree exactly.
            assert_eq!(run(&m, &q), run(&reference, &q), "seed {seed}: {q}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Early drop and laziness

/// A MemStore whose query streams count how many are alive and how many entries were read.
struct Tracked {
    inner: MemStore,
    live: Arc<AtomicUsize>,
    pulled: Arc<AtomicUsize>,
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tracked {
    fn new(live: &Arc<AtomicUsize>, pulled: &Arc<AtomicUsize>) -> Tracked {
        Tracked {
            inner: MemStore::new(),
            live: live.clone(),
            pulled: pulled.clone(),
        }
    }
}

impl Datastore for Tracked {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn has(&self, key: &Key) -> Result<bool> {
        self.inner.has(key)
    }
    fn get_size(&self, key: &Key) -> Result<u64> {
        self.inner.get_size(key)
    }
    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key)
    }
    fn query(&self, q: Query) -> Result<Results> {
        let results = self.inner.query(q.clone())?;
        self.live.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(self.live.clone());
        let pulled = self.pulled.clone();
        Ok(Results::new(
            q,
            results.inspect(move |_| {
                let _alive = &guard;
                pulled.fetch_add(1, Ordering::SeqCst);
            }),
        ))
    }
    fn sync(&self, prefix: &Key) -> Result<()> {
        self.inner.sync(prefix)
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

fn tracked_mount() -> (MountStore, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let live = Arc::new(AtomicUsize::new(0));
    let pulled = Arc::new(AtomicUsize::new(0));
    let m = mount(&[
        ("/", Arc::new(Tracked::new(&live, &pulled)) as _),
        ("/p", Arc::new(Tracked::new(&live, &pulled)) as _),
        ("/q", Arc::new(Tracked::new(&live, &pulled)) as _),
    ]);
    for i in 0..100 {
        m.put(&k(&format!("/r{i:03}")), b"r").unwrap();
        m.put(&k(&format!("/p/{i:03}")), b"p").unwrap();
        m.put(&k(&format!("/q/{i:03}")), b"q").unwrap();
    }
    (m, live, pulled)
}

#[test]
fn dropping_results_early_releases_every_child_stream() {
    let (m, live, pulled) = tracked_mount();
    let q = Query {
        orders: vec![Order::Key],
        ..Query::default()
    };
    let mut results = m.query(q.clone()).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 3);
    let first = results.next().unwrap().unwrap();
    assert_eq!(first.key.as_str(), "/p/000");
    // Lazy: one head per child, nothing read ahead.
    assert_eq!(pulled.load(Ordering::SeqCst), 3);
    let second = results.next().unwrap().unwrap();
    assert_eq!(second.key.as_str(), "/p/001");
    assert_eq!(pulled.load(Ordering::SeqCst), 4);
    drop(results);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // Results::close does the same.
    let mut results = m.query(q.clone()).unwrap();
    results.next();
    results.close();
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A limit stops reading: 3 heads plus one refill per result handed out.
    pulled.store(0, Ordering::SeqCst);
    let got = m
        .query(Query {
            limit: 5,
            ..q.clone()
        })
        .unwrap()
        .rest()
        .unwrap();
    assert_eq!(got.len(), 5);
    assert!(pulled.load(Ordering::SeqCst) <= 3 + 5);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A stream that has ended is released before the merged results are dropped.
    let mut results = m.query(Query::prefix("/p")).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1);
    assert_eq!(results.by_ref().count(), 100);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    drop(results);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn results_can_move_to_another_thread() {
    let (m, live, _) = tracked_mount();
    let results = m.query(Query::default()).unwrap();
    let n = std::thread::spawn(move || results.count()).join().unwrap();
    assert_eq!(n, 300);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Batches, disk usage, persistent children

#[test]
fn batch_across_three_mounts_last_operation_wins() {
    let root = Arc::new(MemStore::new());
    let a = Arc::new(MemStore::new());
    let ab = Arc::new(MemStore::new());
    let m = mount(&[
        ("/", root.clone() as _),
        ("/a", a.clone() as _),
        ("/a/b", ab.clone() as _),
    ]);
    m.put(&k("/a/b/gone"), b"x").unwrap();
    let mut b = m.batch().unwrap();
    for key in ["/k", "/a/k", "/a/b/k"] {
        b.put(k(key), vec![1]).unwrap();
        b.delete(k(key)).unwrap();
        b.put(k(key), vec![3]).unwrap();
    }
    for key in ["/d", "/a/d", "/a/b/d"] {
        b.put(k(key), vec![1]).unwrap();
        b.delete(k(key)).unwrap();
    }
    b.put(k("/a/b"), vec![9]).unwrap();
    b.delete(k("/a/b/gone")).unwrap();
    b.put(k("/a/b/gone"), vec![5]).unwrap();
    b.delete(k("/a/b/gone")).unwrap();
    assert!(!m.has(&k("/k")).unwrap());
    b.commit().unwrap();
    for key in ["/k", "/a/k", "/a/b/k"] {
        assert_eq!(m.get(&k(key)).unwrap(), [3], "{key}");
    }
    for key in ["/d", "/a/d", "/a/b/d", "/a/b/gone"] {
        assert!(!m.has(&k(key)).unwrap(), "{key}");
    }
    assert_eq!(a.get(&k("/b")).unwrap(), [9], "/a/b lives in the /a child");
    assert_eq!((root.len(), a.len(), ab.len()), (1, 2, 1));
}

#[test]
fn disk_usage_is_the_sum_over_the_children_that_report_one() {
    let dir = tempfile::tempdir().unwrap();
    let r1 =
        Arc::new(RedbStore::open(dir.path().join("one.redb"), RedbOptions::default()).unwrap());
    let r2 =
        Arc::new(RedbStore::open(dir.path().join("two.redb"), RedbOptions::default()).unwrap());
    let m = mount(&[
        ("/", r1.clone() as _),
        ("/blocks", r2.clone() as _),
        ("/mem", mem()),
    ]);
    m.put(&k("/blocks/CIQA"), &vec![7u8; 100_000]).unwrap();
    m.put(&k("/pins/x"), b"p").unwrap();
    m.put(&k("/mem/x"), b"m").unwrap();
    m.sync(&Key::root()).unwrap();
    let want = r1.disk_usage().unwrap().unwrap() + r2.disk_usage().unwrap().unwrap();
    assert_eq!(m.disk_usage().unwrap(), Some(want));
    assert!(want >= 100_000);
    assert!(!m.capabilities().persistent, "a MemStore child is volatile");

    let volatile = mount(&[("/", mem()), ("/x", mem())]);
    assert_eq!(volatile.disk_usage().unwrap(), None);
    m.close().unwrap();
    m.close().unwrap();
    assert_eq!(m.put(&k("/a"), b"").unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn staged_writes_and_ranged_reads_through_a_redb_child() {
    let dir = tempfile::tempdir().unwrap();
    let blocks =
        Arc::new(RedbStore::open(dir.path().join("blocks.redb"), RedbOptions::default()).unwrap());
    let m = mount(&[("/", mem()), ("/blocks", blocks.clone() as _)]);
    // Kubo's worked example: the flatfs child sees the bare multihash key.
    let key = k("/blocks/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y");
    let (mp, _, child_key) = m.route(&key).unwrap();
    assert_eq!(mp.as_str(), "/blocks");
    assert_eq!(
        child_key.as_str(),
        "/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y"
    );
    let staged = m.stage(&key, StageInit::Empty).unwrap();
    staged.write_all_at(4, b"\x08\x01").unwrap();
    staged.write_all_at(0, b"\x0a\x02").unwrap();
    staged.set_len(4).unwrap();
    m.commit_staged(&key, staged, true).unwrap();
    assert_eq!(blocks.get(&child_key).unwrap(), [0x0a, 0x02, 0x00, 0x00]);
    let mut buf = [0xffu8; 8];
    assert_eq!(m.read_at(&key, 1, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], [0x02, 0, 0]);
    assert_eq!(m.backing_file(&key).unwrap(), None);
    let all = run(&m, &Query::prefix("/blocks"));
    assert_eq!(key_strings(&all), [key.as_str()]);
}

// ---------------------------------------------------------------------------------------------
// go-datastore's suite checks (spec §4), self-contained

const ELEM_COUNT: usize = 100;

/// The topologies the suite runs over: upstream flatfs's (a general store at `/`, another at
/// `/capital`) and upstream mount's own.
fn topologies() -> Vec<(&'static str, MountStore)> {
    vec![
        ("/ + /capital", mount(&[("/", mem()), ("/capital", mem())])),
        (
            "/ + /prefix + /prefix/sub + /0",
            mount(&[
                ("/prefix", mem()),
                ("/prefix/sub", mem()),
                ("/0", mem()),
                ("/", mem()),
            ]),
        ),
    ]
}

/// `clearDs`: a keys-only query with no prefix must return every key, and deleting them must
/// empty the store.
fn clear(ds: &dyn Datastore) {
    let q = Query {
        keys_only: true,
        ..Query::default()
    };
    for e in run(ds, &q) {
        ds.delete(&e.key).unwrap();
    }
    assert!(run(ds, &q).is_empty(), "store is empty after clearDs");
}

/// `subtestQuery`'s input: 4 × count keys with 64 random bytes each.
fn suite_input(rng: &mut StdRng, count: usize) -> Vec<Entry> {
    let mut input = Vec::with_capacity(4 * count);
    for i in 0..count {
        for key in [
            format!("/{i}key{i}"),
            format!("/prefix/{i}key{i}"),
            format!("/prefix/sub/{i}key{i}"),
            format!("/capital/{i}KEY{i}"),
        ] {
            let mut value = vec![0u8; 64];
            rng.fill(&mut value[..]);
            input.push(Entry::with_value(Key::from_raw(key).unwrap(), value));
        }
    }
    input
}

/// go-datastore's `subtestQuery`; returns the number of results.
fn subtest_query(ds: &dyn Datastore, q: &Query, count: usize, rng: &mut StdRng) -> usize {
    let input = suite_input(rng, count);
    for e in &input {
        ds.put(&e.key, e.value_bytes()).unwrap();
    }
    for e in &input {
        assert_eq!(ds.get(&e.key).unwrap(), e.value_bytes(), "{}", e.key);
    }
    let mut got = run(ds, q);
    let mut want = naive(q, &input);
    assert_eq!(got.len(), want.len(), "{q}");
    if q.orders.is_empty() {
        got.sort_by(|a, b| a.key.cmp(&b.key));
        want.sort_by(|a, b| a.key.cmp(&b.key));
    }
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.key, w.key, "{q}");
        if !q.keys_only {
            assert_eq!(g.value, w.value, "{q}");
        }
        if q.returns_sizes {
            assert!(g.size.is_some_and(|s| s > 0), "{q}");
        }
    }
    // Cancellation: stop after the first entry.
    if got.len() > 1 {
        let mut results = ds.query(q.clone()).unwrap();
        assert!(results.next().unwrap().is_ok());
        drop(results);
    }
    for e in &input {
        ds.delete(&e.key).unwrap();
    }
    got.len()
}

#[test]
fn suite_basic_put_get_and_not_founds() {
    for (name, ds) in topologies() {
        let key = k("/foo");
        let value = b"Hello Datastore!";
        ds.put(&key, value).unwrap();
        assert!(ds.has(&key).unwrap(), "{name}");
        assert_eq!(ds.get_size(&key).unwrap(), 16);
        assert_eq!(ds.get(&key).unwrap(), value);
        assert!(ds.has(&key).unwrap());
        assert_eq!(ds.get_size(&key).unwrap(), 16);
        ds.delete(&key).unwrap();
        assert!(!ds.has(&key).unwrap());
        assert_eq!(ds.get_size(&key).unwrap_err().kind(), ErrorKind::NotFound);

        let notreal = k("/notreal");
        assert_eq!(ds.get(&notreal).unwrap_err().kind(), ErrorKind::NotFound);
        assert!(!ds.has(&notreal).unwrap());
        assert_eq!(
            ds.get_size(&notreal).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        ds.delete(&notreal).unwrap();
        clear(&ds);
    }
}

#[test]
fn suite_prefix() {
    let mut rng = StdRng::seed_from_u64(1);
    for (name, ds) in topologies() {
        for (prefix, want) in [
            ("", 400),
            ("/", 400),
            ("/./", 400),
            ("/.././/", 400),
            ("/prefix/../", 400),
            ("/prefix", 200),
            ("/prefix/", 200),
            ("/prefix/sub/", 100),
            ("/0/", 0),
            ("/bad/", 0),
        ] {
            let n = subtest_query(&ds, &Query::prefix(prefix), ELEM_COUNT, &mut rng);
            assert_eq!(n, want, "{name}: prefix {prefix:?}");
        }
        clear(&ds);
    }
}

#[test]
fn capital_keys_reach_the_capital_child_as_single_components() {
    let capital = Arc::new(MemStore::new());
    let ds = mount(&[("/", mem()), ("/capital", capital.clone() as _)]);
    let mut rng = StdRng::seed_from_u64(2);
    for e in suite_input(&mut rng, ELEM_COUNT) {
        ds.put(&e.key, e.value_bytes()).unwrap();
    }
    let child_keys = run(
        capital.as_ref(),
        &Query {
            keys_only: true,
            ..Query::default()
        },
    );
    assert_eq!(child_keys.len(), ELEM_COUNT);
    for e in &child_keys {
        let s = e.key.as_str();
        assert_eq!(e.key.depth(), 1, "{s}");
        assert!(
            s[1..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{s}"
        );
    }
}

#[test]
fn suite_order() {
    let by_value = || Order::function(|a: &Entry, b: &Entry| a.value_bytes().cmp(b.value_bytes()));
    let mut rng = StdRng::seed_from_u64(3);
    for (_, ds) in topologies() {
        for orders in [
            vec![Order::Key],
            vec![Order::KeyDescending],
            vec![Order::Value],
            vec![Order::Value, Order::Key],
            vec![by_value()],
        ] {
            let q = Query {
                orders,
                ..Query::default()
            };
            assert_eq!(subtest_query(&ds, &q, ELEM_COUNT, &mut rng), 400);
        }
        clear(&ds);
    }
}

#[test]
fn suite_limit() {
    let mut rng = StdRng::seed_from_u64(4);
    for (_, ds) in topologies() {
        for (offset, limit, want) in [
            (0, 10, 10),
            (0, 0, 400),
            (10, 0, 390),
            (10, 10, 10),
            (10, 20, 20),
            (50, 20, 20),
            (99, 20, 20),
            (200, 20, 20),
            (200, 0, 200),
            (99, 0, 301),
            (95, 0, 305),
        ] {
            let q = Query {
                orders: vec![Order::Key],
                offset,
                limit,
                keys_only: true,
                ..Query::default()
            };
            assert_eq!(subtest_query(&ds, &q, ELEM_COUNT, &mut rng), want, "{q}");
        }
        clear(&ds);
    }
}

#[test]
fn suite_filter() {
    let mut rng = StdRng::seed_from_u64(5);
    for (_, ds) in topologies() {
        let mut random_value = vec![0u8; 64];
        rng.fill(&mut random_value[..]);
        let cases: Vec<(Filter, Option<usize>)> = vec![
            (
                Filter::KeyCompare {
                    op: Op::Equal,
                    key: "/0key0".into(),
                },
                Some(1),
            ),
            (
                Filter::KeyCompare {
                    op: Op::LessThan,
                    key: "/2".into(),
                },
                Some(12),
            ),
            (Filter::KeyPrefix("/0key0".into()), Some(1)),
            (
                Filter::ValueCompare {
                    op: Op::LessThan,
                    value: random_value,
                },
                None,
            ),
            (
                Filter::custom(|e: &Entry| e.key.as_str().len().is_multiple_of(2)),
                Some(200),
            ),
        ];
        for (filter, want) in cases {
            let q = Query {
                filters: vec![filter],
                ..Query::default()
            };
            let n = subtest_query(&ds, &q, 100, &mut rng);
            if let Some(want) = want {
                assert_eq!(n, want, "{q}");
            }
        }
        clear(&ds);
    }
}

#[test]
fn suite_many_keys_and_return_sizes() {
    let mut rng = StdRng::seed_from_u64(6);
    for (_, ds) in topologies() {
        let keys_only = Query {
            keys_only: true,
            ..Query::default()
        };
        assert_eq!(subtest_query(&ds, &keys_only, ELEM_COUNT, &mut rng), 400);
        let sizes = Query {
            returns_sizes: true,
            ..Query::default()
        };
        assert_eq!(subtest_query(&ds, &sizes, 100, &mut rng), 400);
        clear(&ds);
    }
}

#[test]
fn suite_basic_sync() {
    for (name, ds) in topologies() {
        ds.sync(&k("/prefix")).unwrap();
        ds.put(&k("/prefix"), b"foo").unwrap();
        ds.sync(&k("/prefix")).unwrap();
        ds.put(&k("/prefix/sub"), b"bar").unwrap();
        ds.sync(&k("/prefix")).unwrap();
        ds.sync(&k("/prefix/sub")).unwrap();
        ds.sync(&Key::new("")).unwrap();
        assert_eq!(ds.get(&k("/prefix")).unwrap(), b"foo", "{name}");
        assert_eq!(ds.get(&k("/prefix/sub")).unwrap(), b"bar", "{name}");
        clear(&ds);
    }
}

#[test]
fn suite_combinations() {
    let by_value = Order::function(|a: &Entry, b: &Entry| a.value_bytes().cmp(b.value_bytes()));
    let offsets = [0, 10, 95, 100];
    let limits = [0, 1, 10, 100];
    let filters = [
        Filter::KeyCompare {
            op: Op::Equal,
            key: "/0key0".into(),
        },
        Filter::KeyCompare {
            op: Op::LessThan,
            key: "/2".into(),
        },
    ];
    let orders = [
        vec![Order::Key],
        vec![Order::KeyDescending],
        vec![Order::Value, Order::Key],
        vec![by_value],
    ];
    let prefixes = ["", "/prefix", "/0"];
    let counts = [0, 1, 100];
    let mut rng = StdRng::seed_from_u64(8);
    for (_, ds) in topologies() {
        let mut ran = 0;
        for (i, count) in counts.iter().enumerate() {
            for (j, prefix) in prefixes.iter().enumerate() {
                for (l, order) in orders.iter().enumerate() {
                    for (f, filter) in filters.iter().enumerate() {
                        for (n, limit) in limits.iter().enumerate() {
                            for (o, offset) in offsets.iter().enumerate() {
                                // Upstream's odometer never visits the all-zero point.
                                if i + j + l + f + n + o == 0 {
                                    continue;
                                }
                                let q = Query {
                                    prefix: (*prefix).into(),
                                    filters: vec![filter.clone()],
                                    orders: order.clone(),
                                    limit: *limit,
                                    offset: *offset,
                                    ..Query::default()
                                };
                                subtest_query(&ds, &q, *count, &mut rng);
                                ran += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(ran, 1151);
        clear(&ds);
    }
}

/// `NewKey(base32-std-with-padding(first 8 bytes))`, as `RunBatchTest` names its keys.
fn batch_key(bytes: &[u8]) -> Key {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut s = String::from("/");
    for &b in bytes.iter().take(8) {
        bits = (bits << 8) | u64::from(b);
        n += 8;
        while n >= 5 {
            n -= 5;
            s.push(char::from(ALPHABET[((bits >> n) & 31) as usize]));
        }
    }
    if n > 0 {
        s.push(char::from(ALPHABET[((bits << (5 - n)) & 31) as usize]));
    }
    s.push_str("===");
    Key::new(s)
}

#[test]
fn suite_batches() {
    let mut rng = StdRng::seed_from_u64(9);
    assert_eq!(batch_key(&[0; 8]).as_str(), "/AAAAAAAAAAAAA===");
    for (name, ds) in topologies() {
        // RunBatchTest: 20 values of 256 KiB, invisible before commit.
        let mut b = ds.batch().unwrap();
        let mut blocks = BTreeMap::new();
        for _ in 0..20 {
            let mut value = vec![0u8; 256 * 1024];
            rng.fill(&mut value[..]);
            let key = batch_key(&value);
            b.put(key.clone(), value.clone()).unwrap();
            blocks.insert(key, value);
        }
        for key in blocks.keys() {
            assert!(ds.get(key).is_err(), "{name}: {key} visible before commit");
        }
        b.commit().unwrap();
        for (key, value) in &blocks {
            assert_eq!(&ds.get(key).unwrap(), value);
        }
        clear(&ds);

        // RunBatchDeleteTest.
        let mut keys = Vec::new();
        for _ in 0..20 {
            let mut value = vec![0u8; 16];
            rng.fill(&mut value[..]);
            let key = batch_key(&value);
            ds.put(&key, &value).unwrap();
            keys.push(key);
        }
        let mut b = ds.batch().unwrap();
        for key in &keys {
            b.delete(key.clone()).unwrap();
        }
        b.commit().unwrap();
        for key in &keys {
            assert!(ds.get(key).is_err());
        }

        // RunBatchPutAndDeleteTest: the last operation on each key wins.
        let mut b = ds.batch().unwrap();
        b.put(k("/a"), vec![1]).unwrap();
        b.put(k("/b"), vec![2]).unwrap();
        b.delete(k("/a")).unwrap();
        b.delete(k("/b")).unwrap();
        b.put(k("/b"), vec![3]).unwrap();
        b.commit().unwrap();
        assert_eq!(ds.get(&k("/a")).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(ds.get(&k("/b")).unwrap(), [3]);
        clear(&ds);
    }
}
