//! The port of go-datastore's shared suite (`test/suite.go`, `test/basic_tests.go`; spec §4):
//! every basic subtest, the 1151 combination cases, and the batch tests. Subtest names follow
//! upstream's.

use std::cmp::Ordering;

use dsfs::datastore::query::{Entry, Filter, Op, Order, naive_apply};
use dsfs::{Datastore, Key, Query};

use crate::harness::{
    Case, OrFail, TResult, check_bytes, describe, expect_not_found, fail, fit, key, keys_of,
    random_bytes, run_query,
};

/// go-datastore's `ElemCount` (without the race detector).
pub const ELEM_COUNT: usize = 100;

/// Every case of the upstream suite, in upstream's order.
pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case::new("basic_put_get", |ctx| basic_put_get(ctx.ds())),
        Case::new("not_founds", |ctx| not_founds(ctx.ds())),
    ];
    cases.extend(prefix_cases());
    cases.extend(order_cases());
    cases.extend(limit_cases());
    cases.extend(filter_cases());
    cases.push(Case::new("many_keys_and_query", |ctx| {
        let q = Query {
            keys_only: true,
            ..Query::default()
        };
        subtest_query(ctx.ds(), q, ELEM_COUNT, Expect::Count(4 * ELEM_COUNT))
    }));
    cases.push(Case::new("return_sizes", |ctx| {
        let q = Query {
            returns_sizes: true,
            ..Query::default()
        };
        subtest_query(ctx.ds(), q, 100, Expect::Count(400))
    }));
    cases.push(Case::new("basic_sync", |ctx| basic_sync(ctx.ds())));
    cases.extend(combination_cases());
    cases.push(Case::new("batch", |ctx| batch(ctx.ds())));
    cases.push(Case::new("batch_delete", |ctx| batch_delete(ctx.ds())));
    cases.push(Case::new("batch_put_and_delete", |ctx| {
        batch_put_and_delete(ctx.ds())
    }));
    cases
}

// ---------------------------------------------------------------------------------------------
// The workhorse.

/// What a `subtest_query` run must return besides agreeing with `naive_apply`.
pub enum Expect {
    /// Nothing more.
    Nothing,
    /// Exactly this many results (the counts the spec lists).
    Count(usize),
    /// Exactly these keys, computed by an oracle independent of the library's naive engine.
    Keys(Vec<String>),
}

/// The input of `subtest_query`: 4 × `count` entries of 64 random bytes, in upstream's order.
pub fn query_input(count: usize) -> Vec<Entry> {
    let mut input = Vec::with_capacity(4 * count);
    for pattern in [
        |i| format!("/{i}key{i}"),
        |i| format!("/prefix/{i}key{i}"),
        |i| format!("/prefix/sub/{i}key{i}"),
        |i| format!("/capital/{i}KEY{i}"),
    ] as [fn(usize) -> String; 4]
    {
        for i in 0..count {
            input.push(Entry::with_value(key(&pattern(i)), random_bytes(64)));
        }
    }
    input
}

/// go-datastore's `subtestQuery` (spec §4.2): put the input, read it back, run `q`, compare with
/// the naive engine over the input (twice: drained, then iterated), check that a result stream
/// can be abandoned after one entry, and delete the input.
pub fn subtest_query(ds: &dyn Datastore, q: Query, count: usize, expect: Expect) -> TResult {
    subtest_query_on(ds, q, query_input(count), expect)
}

/// `subtest_query` on a given input.
pub fn subtest_query_on(
    ds: &dyn Datastore,
    q: Query,
    input: Vec<Entry>,
    expect: Expect,
) -> TResult {
    for e in &input {
        ds.put(&e.key, e.value_bytes())
            .or_fail(format!("put {}", e.key))?;
    }
    for e in &input {
        let got = ds.get(&e.key).or_fail(format!("get {}", e.key))?;
        check_bytes(&got, e.value_bytes(), format!("get {} after put", e.key))?;
    }

    let expected = naive(&q, &input)?;
    match &expect {
        Expect::Nothing => {}
        Expect::Count(n) => ensure_eq!(
            expected.len(),
            *n,
            "the naive engine disagrees with the spec's expected count for {q}"
        ),
        Expect::Keys(keys) => ensure_eq!(
            &keys_of(&expected),
            keys,
            "the naive engine disagrees with the independent oracle for {q}"
        ),
    }

    // Drained in one go (upstream's `Rest()`).
    let actual = run_query(ds, q.clone())?;
    compare_results(&q, &input, actual, &expected, "drained")?;

    // Iterated one result at a time (upstream's `QueryIter`).
    let results = ds.query(q.clone()).or_fail(format!("query {q}"))?;
    ensure!(
        results.query() == &q,
        "results carry {}, not the query passed in ({})",
        describe(results.query()),
        describe(&q)
    );
    let mut iterated = Vec::new();
    for r in results {
        iterated.push(r.or_fail(format!("iterating query {q}"))?);
    }
    let n = iterated.len();
    compare_results(&q, &input, iterated, &expected, "iterated")?;

    // Cancellation: take one entry, then stop. The store must stay usable (checked by the
    // deletes below, which must not wait for the abandoned stream).
    if n > 1 {
        let mut results = ds.query(q.clone()).or_fail(format!("query {q}"))?;
        let mut consumed = 0;
        if let Some(first) = results.next() {
            first.or_fail("first result of an abandoned query")?;
            consumed += 1;
        }
        results.close();
        ensure_eq!(consumed, 1, "entries consumed before closing the results");
    }

    for e in &input {
        ds.delete(&e.key).or_fail(format!("delete {}", e.key))?;
    }
    Ok(())
}

/// upstream's comparison of actual and expected results, plus the dsfs `Entry` contract: a
/// keys-only entry has no value, an entry with a value has its size, a size is the value's
/// length.
fn compare_results(
    q: &Query,
    input: &[Entry],
    mut actual: Vec<Entry>,
    expected: &[Entry],
    how: &str,
) -> TResult {
    ensure_eq!(
        actual.len(),
        expected.len(),
        "{how} result count for {q}; got keys {:?}",
        truncated(&keys_of(&actual))
    );
    for e in &actual {
        let original = input.iter().find(|i| i.key == e.key);
        let Some(original) = original else {
            return Err(fail(format!(
                "{how}: {q} returned {}, which was never put",
                e.key
            )));
        };
        let len = original.value_bytes().len() as u64;
        if q.keys_only {
            ensure!(
                e.value.is_none(),
                "{how}: keys-only query {q} returned a value for {}",
                e.key
            );
        } else {
            ensure!(
                e.value.is_some(),
                "{how}: query {q} returned no value for {}",
                e.key
            );
            ensure_eq!(
                e.size,
                Some(len),
                "{how}: size of {} (value present)",
                e.key
            );
        }
        if let Some(size) = e.size {
            ensure_eq!(size, len, "{how}: size of {}", e.key);
        }
        if q.returns_sizes {
            ensure!(
                e.size.is_some_and(|s| s > 0),
                "{how}: {q} asked for sizes but {} has size {:?}",
                e.key,
                e.size
            );
        }
    }
    let mut expected = expected.to_vec();
    if q.orders.is_empty() {
        if q.limit > 0 || q.offset > 0 {
            // Which entries an unordered query skips or cuts off is up to the store: the right
            // number of distinct matching entries is all that can be required.
            let everything = Query {
                limit: 0,
                offset: 0,
                ..q.clone()
            };
            let all = naive(&everything, input)?;
            actual.sort_by(|a, b| a.key.cmp(&b.key));
            for w in actual.windows(2) {
                ensure!(w[0].key != w[1].key, "{how}: {} returned twice", w[0].key);
            }
            for e in &actual {
                let Some(m) = all.iter().find(|x| x.key == e.key) else {
                    return Err(fail(format!(
                        "{how}: {q} returned {}, which does not match",
                        e.key
                    )));
                };
                if !q.keys_only {
                    check_bytes(
                        e.value_bytes(),
                        m.value_bytes(),
                        format!("{how}: value of {}", e.key),
                    )?;
                }
            }
            return Ok(());
        }
        actual.sort_by(|a, b| a.key.cmp(&b.key));
        expected.sort_by(|a, b| a.key.cmp(&b.key));
    }
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        ensure!(
            a.key == e.key,
            "{how}: {q}: result {i} is {}, expected {}; got {:?}",
            a.key,
            e.key,
            truncated(&keys_of(&actual))
        );
        if !q.keys_only {
            check_bytes(
                a.value_bytes(),
                e.value_bytes(),
                format!("{how}: value of {}", a.key),
            )?;
        }
    }
    Ok(())
}

/// The library's naive engine over `input`: the reference every store is compared with.
fn naive(q: &Query, input: &[Entry]) -> TResult<Vec<Entry>> {
    let owned: Vec<Entry> = input.to_vec();
    naive_apply(q, Box::new(owned.into_iter().map(Ok)), false)
        .collect::<dsfs::Result<_>>()
        .or_fail(format!("naive_apply of {q} over the input"))
}

fn truncated(keys: &[String]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().take(12).cloned().collect();
    if keys.len() > 12 {
        v.push(format!("… ({} in all)", keys.len()));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Basic subtests.

fn basic_put_get(ds: &dyn Datastore) -> TResult {
    let k = key("/foo");
    let val = b"Hello Datastore!";
    ds.put(&k, val).or_fail("put /foo")?;
    ensure!(
        ds.has(&k).or_fail("has /foo")?,
        "has /foo is false after put"
    );
    ensure_eq!(
        ds.get_size(&k).or_fail("get_size /foo")?,
        16,
        "get_size /foo"
    );
    let got = ds.get(&k).or_fail("get /foo")?;
    check_bytes(&got, val, "get /foo")?;
    ensure!(
        ds.has(&k).or_fail("has /foo")?,
        "has /foo is false after get"
    );
    ensure_eq!(
        ds.get_size(&k).or_fail("get_size /foo")?,
        16,
        "get_size /foo after get"
    );
    ds.delete(&k).or_fail("delete /foo")?;
    ensure!(
        !ds.has(&k).or_fail("has /foo")?,
        "has /foo is true after delete"
    );
    expect_not_found(ds.get_size(&k), "get_size /foo after delete")?;
    Ok(())
}

fn not_founds(ds: &dyn Datastore) -> TResult {
    let k = key("/notreal");
    expect_not_found(ds.get(&k), "get /notreal")?;
    ensure!(!ds.has(&k).or_fail("has /notreal")?, "has /notreal is true");
    expect_not_found(ds.get_size(&k), "get_size /notreal")?;
    ds.delete(&k).or_fail("delete /notreal")?;
    Ok(())
}

fn prefix_cases() -> Vec<Case> {
    [
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
    ]
    .into_iter()
    .map(|(prefix, n)| {
        // Go names an empty subtest `#00`.
        let name = if prefix.is_empty() { "#00" } else { prefix };
        Case::new(format!("prefix::{name}"), move |ctx| {
            subtest_query(
                ctx.ds(),
                Query::prefix(prefix),
                ELEM_COUNT,
                Expect::Count(n),
            )
        })
    })
    .collect()
}

fn values_bytewise() -> Order {
    Order::function(|a: &Entry, b: &Entry| a.value_bytes().cmp(b.value_bytes()))
}

fn order_cases() -> Vec<Case> {
    type OrderCase = (&'static str, fn() -> Vec<Order>);
    let cases: Vec<OrderCase> = vec![
        ("query.OrderByKey", || vec![Order::Key]),
        // Upstream's pointer variant; Rust has one form of each order, so this is KEY again.
        ("*query.OrderByKey", || vec![Order::Key]),
        ("query.OrderByKeyDescending", || vec![Order::KeyDescending]),
        ("*query.OrderByKeyDescending", || vec![Order::KeyDescending]),
        ("query.OrderByValue", || vec![Order::Value]),
        ("query.OrderByValue>query.OrderByKey", || {
            vec![Order::Value, Order::Key]
        }),
        ("query.OrderByFunction", || vec![values_bytewise()]),
    ];
    cases
        .into_iter()
        .map(|(name, orders)| {
            Case::new(format!("order::{name}"), move |ctx| {
                let q = Query {
                    orders: orders(),
                    ..Query::default()
                };
                subtest_query(ctx.ds(), q, ELEM_COUNT, Expect::Count(4 * ELEM_COUNT))
            })
        })
        .collect()
}

fn limit_cases() -> Vec<Case> {
    let e = ELEM_COUNT;
    [
        (0, e / 10, 10),
        (0, 0, 400),
        (e / 10, 0, 390),
        (e / 10, e / 10, 10),
        (e / 10, e / 5, 20),
        (e / 2, e / 5, 20),
        (e - 1, e / 5, 20),
        (e * 2, e / 5, 20),
        (e * 2, 0, 200),
        (e - 1, 0, 301),
        (e - 5, 0, 305),
    ]
    .into_iter()
    .map(|(offset, limit, n)| {
        Case::new(format!("limit::Slice/{offset}/{limit}"), move |ctx| {
            let q = Query {
                orders: vec![Order::Key],
                offset,
                limit,
                keys_only: true,
                ..Query::default()
            };
            subtest_query(ctx.ds(), q, ELEM_COUNT, Expect::Count(n))
        })
    })
    .collect()
}

fn filter_cases() -> Vec<Case> {
    let key_eq = || Filter::KeyCompare {
        op: Op::Equal,
        key: "/0key0".into(),
    };
    type FilterCase = (&'static str, fn() -> Filter, Option<usize>);
    let cases: Vec<FilterCase> = vec![
        ("query.FilterKeyCompare", key_eq, Some(1)),
        (
            "query.FilterKeyCompare#01",
            || Filter::KeyCompare {
                op: Op::LessThan,
                key: "/2".into(),
            },
            Some(12),
        ),
        // Upstream's pointer variants; in Rust the same filter again.
        ("*query.FilterKeyCompare", key_eq, Some(1)),
        (
            "query.FilterKeyPrefix",
            || Filter::KeyPrefix("/0key0".into()),
            Some(1),
        ),
        (
            "*query.FilterKeyPrefix",
            || Filter::KeyPrefix("/0key0".into()),
            Some(1),
        ),
        (
            "query.FilterValueCompare",
            || Filter::ValueCompare {
                op: Op::LessThan,
                value: random_bytes(64),
            },
            None,
        ),
        (
            "*dstest.testFilter",
            || Filter::custom(|e: &Entry| e.key.as_str().len().is_multiple_of(2)),
            Some(200),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, filter, n)| {
            Case::new(format!("filter::{name}"), move |ctx| {
                let q = Query {
                    filters: vec![filter()],
                    ..Query::default()
                };
                let expect = n.map_or(Expect::Nothing, Expect::Count);
                subtest_query(ctx.ds(), q, 100, expect)
            })
        })
        .collect()
}

fn basic_sync(ds: &dyn Datastore) -> TResult {
    let prefix = key("/prefix");
    ds.sync(&prefix).or_fail("sync /prefix on an empty store")?;
    ds.put(&prefix, b"foo").or_fail("put /prefix")?;
    ds.sync(&prefix).or_fail("sync /prefix")?;
    let sub = key("/prefix/sub");
    ds.put(&sub, b"bar").or_fail("put /prefix/sub")?;
    ds.sync(&prefix).or_fail("sync /prefix with a child")?;
    ds.sync(&sub).or_fail("sync /prefix/sub")?;
    ds.sync(&Key::new("")).or_fail("sync /")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Combinations.

const OFFSETS: [usize; 4] = [0, ELEM_COUNT / 10, ELEM_COUNT - 5, ELEM_COUNT];
const LIMITS: [usize; 4] = [0, 1, ELEM_COUNT / 10, ELEM_COUNT];
const PREFIXES: [&str; 3] = ["", "/prefix", "/0"];
const LENGTHS: [usize; 3] = [0, 1, ELEM_COUNT];
const N_FILTERS: usize = 2;
const N_ORDERS: usize = 4;

/// Upstream's `perms`: an odometer over `radices` (the first digit turning fastest) that calls
/// `f` after every increment, so the all-zero point is never visited.
pub fn odometer(radices: &[usize], mut f: impl FnMut(&[usize])) {
    let mut current = vec![0; radices.len()];
    'outer: loop {
        for i in 0..current.len() {
            if current[i] < radices[i] - 1 {
                current[i] += 1;
                f(&current);
                continue 'outer;
            }
            current[i] = 0;
        }
        return;
    }
}

/// One grid point of the combinations: indices into the axes.
#[derive(Clone, Copy)]
struct Point {
    offset: usize,
    limit: usize,
    filter: usize,
    order: usize,
    prefix: usize,
    length: usize,
}

impl Point {
    fn query(self) -> Query {
        let filters = vec![match self.filter {
            0 => Filter::KeyCompare {
                op: Op::Equal,
                key: "/0key0".into(),
            },
            _ => Filter::KeyCompare {
                op: Op::LessThan,
                key: "/2".into(),
            },
        }];
        let orders = match self.order {
            0 => vec![Order::Key],
            1 => vec![Order::KeyDescending],
            2 => vec![Order::Value, Order::Key],
            _ => vec![values_bytewise()],
        };
        Query {
            prefix: PREFIXES[self.prefix].into(),
            filters,
            orders,
            offset: OFFSETS[self.offset],
            limit: LIMITS[self.limit],
            ..Query::default()
        }
    }

    /// The expected keys, computed from the axes by hand rather than by the library's engine.
    fn oracle(self, input: &[Entry]) -> Vec<String> {
        let mut kept: Vec<&Entry> = input
            .iter()
            .filter(|e| {
                let k = e.key.as_str();
                let in_prefix = match PREFIXES[self.prefix] {
                    "" => true,
                    p => k.starts_with(&format!("{p}/")),
                };
                let passes = match self.filter {
                    0 => k == "/0key0",
                    _ => k.as_bytes() < b"/2".as_slice(),
                };
                in_prefix && passes
            })
            .collect();
        let by_key = |a: &&Entry, b: &&Entry| a.key.as_bytes().cmp(b.key.as_bytes());
        match self.order {
            0 => kept.sort_by(by_key),
            1 => kept.sort_by(|a, b| by_key(b, a)),
            // VALUE then KEY, and FN(values) with the implicit key tie-break, sort alike.
            _ => kept.sort_by(|a, b| match a.value_bytes().cmp(b.value_bytes()) {
                Ordering::Equal => by_key(a, b),
                o => o,
            }),
        }
        let offset = OFFSETS[self.offset];
        let limit = LIMITS[self.limit];
        kept.into_iter()
            .skip(offset)
            .take(if limit == 0 { usize::MAX } else { limit })
            .map(|e| e.key.as_str().to_owned())
            .collect()
    }
}

/// The 1151 combination cases, named `combinations::<count>/{<query>}` with spaces shown as `·`.
fn combination_cases() -> Vec<Case> {
    let mut points = Vec::new();
    odometer(
        &[
            OFFSETS.len(),
            LIMITS.len(),
            N_FILTERS,
            N_ORDERS,
            PREFIXES.len(),
            LENGTHS.len(),
        ],
        |p| {
            points.push(Point {
                offset: p[0],
                limit: p[1],
                filter: p[2],
                order: p[3],
                prefix: p[4],
                length: p[5],
            })
        },
    );
    points
        .into_iter()
        .map(|point| {
            let count = LENGTHS[point.length];
            let name = format!("{count}/{{{}}}", point.query()).replace(' ', "·");
            Case::new(format!("combinations::{name}"), move |ctx| {
                subtest_query_with_oracle(ctx.ds(), point, count)
            })
        })
        .collect()
}

fn subtest_query_with_oracle(ds: &dyn Datastore, point: Point, count: usize) -> TResult {
    let input = query_input(count);
    let expected = point.oracle(&input);
    subtest_query_on(ds, point.query(), input, Expect::Keys(expected))
}

// ---------------------------------------------------------------------------------------------
// Batches.

/// RFC 4648 base32, standard alphabet, with padding (Go's `base32.StdEncoding`).
pub fn base32_std(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in data.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                out.push(ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Upstream's batch keys: `NewKey(base32(first 8 bytes of the value))`.
fn batch_key(value: &[u8]) -> Key {
    Key::new(base32_std(&value[..8]))
}

fn batch(ds: &dyn Datastore) -> TResult {
    let mut b = ds.batch().or_fail("batch")?;
    let mut blocks = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..20 {
        let value = random_bytes(fit(ds, 256 * 1024));
        let k = batch_key(&value);
        b.put(k.clone(), value.clone())
            .or_fail(format!("batch put {k}"))?;
        blocks.push(value);
        keys.push(k);
    }
    for k in &keys {
        expect_not_found(ds.get(k), format!("get {k} before the batch is committed"))?;
        ensure!(!ds.has(k).or_fail("has")?, "{k} is visible before commit");
    }
    let before = run_query(ds, Query::default())?;
    ensure!(
        before.is_empty(),
        "a query sees {:?} before the batch is committed",
        keys_of(&before)
    );
    b.commit().or_fail("commit")?;
    for (k, value) in keys.iter().zip(&blocks) {
        let got = ds.get(k).or_fail(format!("get {k} after commit"))?;
        check_bytes(&got, value, format!("get {k} after commit"))?;
    }
    Ok(())
}

fn batch_delete(ds: &dyn Datastore) -> TResult {
    let mut keys = Vec::new();
    for _ in 0..20 {
        let value = random_bytes(16);
        let k = batch_key(&value);
        ds.put(&k, &value).or_fail(format!("put {k}"))?;
        keys.push(k);
    }
    let mut b = ds.batch().or_fail("batch")?;
    for k in &keys {
        b.delete(k.clone()).or_fail(format!("batch delete {k}"))?;
    }
    b.commit().or_fail("commit")?;
    for k in &keys {
        expect_not_found(ds.get(k), format!("get {k} after a committed delete"))?;
    }
    Ok(())
}

fn batch_put_and_delete(ds: &dyn Datastore) -> TResult {
    let (a, b) = (key("/a"), key("/b"));
    let mut batch = ds.batch().or_fail("batch")?;
    batch.put(a.clone(), vec![1]).or_fail("batch put /a")?;
    batch.put(b.clone(), vec![2]).or_fail("batch put /b")?;
    batch.delete(a.clone()).or_fail("batch delete /a")?;
    batch.delete(b.clone()).or_fail("batch delete /b")?;
    batch.put(b.clone(), vec![3]).or_fail("batch put /b")?;
    batch.commit().or_fail("commit")?;
    expect_not_found(ds.get(&a), "get /a (put then deleted in the batch)")?;
    let got = ds.get(&b).or_fail("get /b")?;
    ensure_eq!(got, vec![3u8], "/b must hold the batch's last put");
    Ok(())
}
