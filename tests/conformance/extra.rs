//! dsfs's own cases, beyond go-datastore's suite: awkward values and keys, ranged reads, staged
//! writes, persistence, the honesty of each claimed capability, and concurrency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use dsfs::datastore::{Entry, StageInit};
use dsfs::{Datastore, ErrorKind, Key, Query};
use rand::Rng;

use crate::harness::{
    Case, Ctx, OrFail, Req, TResult, check_bytes, expect_kind, expect_not_found, fail, fit, key,
    keys_of, random_bytes, run_query, within,
};

/// How long a case that could deadlock may take before it is reported as deadlocked.
const DEADLOCK_LIMIT: Duration = Duration::from_secs(60);

/// Every case of our own.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("empty_value", |ctx| empty_value(ctx.ds())),
        Case::new("binary_values", |ctx| binary_values(ctx.ds())),
        Case::new("large_value", |ctx| large_value(ctx.ds())).requires(Req::ValueSize(LARGE)),
        Case::new("awkward_keys", |ctx| awkward_keys(ctx.ds())),
        Case::new("parent_and_children", |ctx| parent_and_children(ctx.ds())),
        Case::new("read_at_boundaries", |ctx| read_at_boundaries(ctx.ds())),
        Case::new("stage_round_trip", stage_round_trip),
        Case::new("stage_init_and_discard", |ctx| {
            stage_init_and_discard(ctx.ds())
        }),
        Case::new("reopen_persistence", reopen_persistence).requires(Req::Persistent),
        Case::new("reopen_after_sync_without_close", reopen_after_sync).requires(Req::Persistent),
        Case::new("close_semantics", close_semantics),
        Case::new("capability::ordered_scan", |ctx| ordered_scan(ctx.ds()))
            .requires(Req::OrderedScan),
        Case::new("capability::file_backed", |ctx| file_backed(ctx.ds())),
        Case::new("capability::atomic_put_visibility", atomic_put_visibility)
            .requires(Req::AtomicPut)
            .requires(Req::ValueSize(256 * 1024)),
        Case::new(
            "capability::atomic_batch_visibility",
            atomic_batch_visibility,
        )
        .requires(Req::AtomicBatch),
        Case::new("capability::disk_usage", |ctx| disk_usage(ctx.ds()))
            .requires(Req::ValueSize(100_000)),
        Case::new("delete_missing_ok", |ctx| delete_missing(ctx.ds())),
        Case::new("overwrite_replaces", |ctx| overwrite_replaces(ctx.ds())),
        Case::new("keys_only_sizes", |ctx| keys_only_sizes(ctx.ds())),
        Case::new("opaque_key_orders", |ctx| opaque_key_orders(ctx.ds())),
        Case::new("concurrent_puts_gets", concurrent_puts_gets),
        Case::new("write_during_open_query", write_during_open_query),
    ]
}

/// The large value's size.
const LARGE: u64 = 8 << 20;

/// Checks everything the store says about `k`, which must hold exactly `value`.
fn check_value(ds: &dyn Datastore, k: &Key, value: &[u8]) -> TResult {
    ensure!(ds.has(k).or_fail(format!("has {k}"))?, "has {k} is false");
    ensure_eq!(
        ds.get_size(k).or_fail(format!("get_size {k}"))?,
        value.len() as u64,
        "get_size {k}"
    );
    check_bytes(
        &ds.get(k).or_fail(format!("get {k}"))?,
        value,
        format!("get {k}"),
    )
}

/// Checks that `k` holds nothing.
fn check_absent(ds: &dyn Datastore, k: &Key) -> TResult {
    ensure!(!ds.has(k).or_fail(format!("has {k}"))?, "has {k} is true");
    expect_not_found(ds.get(k), format!("get {k}"))?;
    expect_not_found(ds.get_size(k), format!("get_size {k}"))?;
    let mut buf = [0u8; 4];
    expect_not_found(ds.read_at(k, 0, &mut buf), format!("read_at {k}"))
}

/// Checks that a full query returns exactly `expected` (keys and values), in any order.
fn check_contents(ds: &dyn Datastore, expected: &BTreeMap<Key, Vec<u8>>) -> TResult {
    let mut got = run_query(ds, Query::default())?;
    got.sort_by(|a, b| a.key.cmp(&b.key));
    let want: Vec<&Key> = expected.keys().collect();
    let have: Vec<&Key> = got.iter().map(|e| &e.key).collect();
    ensure_eq!(have, want, "keys of a full query");
    for e in &got {
        let v = &expected[&e.key];
        check_bytes(e.value_bytes(), v, format!("query value of {}", e.key))?;
        ensure_eq!(e.size, Some(v.len() as u64), "query size of {}", e.key);
    }
    Ok(())
}

fn empty_value(ds: &dyn Datastore) -> TResult {
    let k = key("/empty");
    ds.put(&k, b"").or_fail("put an empty value")?;
    check_value(ds, &k, b"")?;
    let mut buf = [7u8; 8];
    ensure_eq!(
        ds.read_at(&k, 0, &mut buf).or_fail("read_at")?,
        0,
        "read_at of an empty value"
    );
    let entries = run_query(ds, Query::default())?;
    ensure_eq!(keys_of(&entries), vec!["/empty".to_string()], "query");
    ensure_eq!(entries[0].value.as_deref(), Some(&b""[..]), "query value");
    ensure_eq!(entries[0].size, Some(0), "query size");
    let keys_only = run_query(
        ds,
        Query {
            keys_only: true,
            returns_sizes: true,
            ..Query::default()
        },
    )?;
    ensure_eq!(keys_only.len(), 1, "keys-only query");
    ensure_eq!(
        keys_only[0].size,
        Some(0),
        "keys-only size of an empty value"
    );
    // An empty value is a value: it can be replaced and deleted like any other.
    ds.put(&k, b"x").or_fail("put over an empty value")?;
    check_value(ds, &k, b"x")?;
    ds.put(&k, b"").or_fail("put an empty value again")?;
    check_value(ds, &k, b"")?;
    ds.delete(&k).or_fail("delete")?;
    check_absent(ds, &k)
}

fn binary_values(ds: &dyn Datastore) -> TResult {
    let all: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    let mut expected = BTreeMap::new();
    expected.insert(key("/bin/all"), all.clone());
    expected.insert(key("/bin/reversed"), reversed);
    expected.insert(key("/bin/zeros"), vec![0u8; 1000]);
    expected.insert(key("/bin/ff"), vec![0xff; 1000]);
    expected.insert(key("/bin/crlf"), b"\r\n\r\n\n\r\0".to_vec());
    for b in 0..=255u8 {
        expected.insert(key(&format!("/byte/{b:03}")), vec![b]);
    }
    for (k, v) in &expected {
        ds.put(k, v).or_fail(format!("put {k}"))?;
    }
    for (k, v) in &expected {
        check_value(ds, k, v)?;
    }
    check_contents(ds, &expected)?;
    let mut buf = [0u8; 16];
    let n = ds
        .read_at(&key("/bin/all"), 250, &mut buf)
        .or_fail("read_at /bin/all")?;
    ensure_eq!(&buf[..n], &all[250..], "read_at the end of /bin/all");
    Ok(())
}

fn large_value(ds: &dyn Datastore) -> TResult {
    let k = key("/large");
    let value = random_bytes(LARGE as usize);
    ds.put(&k, &value).or_fail("put 8 MiB")?;
    check_value(ds, &k, &value)?;
    let mut buf = vec![0u8; 1 << 20];
    for offset in [
        0u64,
        4095,
        4096,
        (4 << 20) - 1,
        LARGE - (1 << 20),
        LARGE - 10,
    ] {
        let n = ds.read_at(&k, offset, &mut buf).or_fail("read_at")?;
        let start = offset as usize;
        let end = (start + buf.len()).min(value.len());
        ensure_eq!(n, end - start, "read_at({offset}) count");
        check_bytes(&buf[..n], &value[start..end], format!("read_at({offset})"))?;
    }
    ensure_eq!(
        ds.read_at(&k, LARGE, &mut buf).or_fail("read_at the end")?,
        0,
        "read_at the end"
    );
    let entries = run_query(
        ds,
        Query {
            keys_only: true,
            returns_sizes: true,
            ..Query::default()
        },
    )?;
    ensure_eq!(entries.len(), 1, "keys-only query");
    ensure_eq!(entries[0].size, Some(LARGE), "keys-only size");
    let entries = run_query(ds, Query::default())?;
    check_bytes(entries[0].value_bytes(), &value, "queried value")?;
    ds.put(&k, b"1").or_fail("put 1 byte over 8 MiB")?;
    check_value(ds, &k, b"1")?;
    ds.delete(&k).or_fail("delete")?;
    check_absent(ds, &k)
}

/// Keys that are clean but awkward: every character but `/` is allowed in a component.
fn awkward_key_strings() -> Vec<String> {
    let mut keys: Vec<String> = [
        "/with space",
        "/ leading",
        "/trailing ",
        "/a:b",
        "/a:b:c/d:e",
        "/ünïcödé",
        "/ключ/значение",
        "/日本語/キー",
        "/emoji/🦀",
        "/back\\slash",
        "/...",
        "/.../...",
        "/.hidden",
        "/..x",
        "/x..",
        "/tab\there",
        "/new\nline",
        "/nul\0byte",
        "/quote\"s'",
        "/%2F/%00",
        "/*?[]{}<>|",
        "/~tilde/-dash/_under/+plus/=eq",
        "/CAPS/lower/MiXeD",
        "/CIQA4T3TD3BP3C2M3GXCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push(format!("/{}", "x".repeat(200)));
    keys.push(format!("/long/{}/{}", "y".repeat(200), "z".repeat(199)));
    keys.push(format!(
        "/{}",
        (0..32)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/")
    ));
    keys
}

fn awkward_keys(ds: &dyn Datastore) -> TResult {
    let mut expected = BTreeMap::new();
    let max_key = ds.capabilities().max_key_len;
    for s in awkward_key_strings() {
        let k = key(&s);
        let mut v = s.as_bytes().to_vec();
        v.reverse();
        if max_key.is_some_and(|max| k.as_str().len() > max) {
            // Beyond the limit the store declares: refused cleanly, and nothing stored.
            expect_kind(
                ds.put(&k, &v),
                ErrorKind::InvalidKey,
                "put of a key over max_key_len",
            )?;
            check_absent(ds, &k)?;
            continue;
        }
        ds.put(&k, &v).or_fail(format!("put {k:?}"))?;
        expected.insert(k, v);
    }
    for (k, v) in &expected {
        check_value(ds, k, v)?;
    }
    check_contents(ds, &expected)?;
    // Each key is found under its parent, and its parent's query holds only its children.
    for k in expected.keys() {
        let parent = k.parent();
        if parent.is_root() {
            continue;
        }
        let got = run_query(ds, Query::prefix(parent.as_str()))?;
        ensure!(
            got.iter().any(|e| &e.key == k),
            "a query under {parent:?} misses {k:?}"
        );
        for e in &got {
            ensure!(
                parent.is_ancestor_of(&e.key),
                "a query under {parent:?} returns {:?}",
                e.key
            );
        }
    }
    for k in expected.keys() {
        ds.delete(k).or_fail(format!("delete {k:?}"))?;
        check_absent(ds, k)?;
    }
    Ok(())
}

/// A key that holds a value and has children, next to keys that share its string prefix.
fn parent_and_children(ds: &dyn Datastore) -> TResult {
    let names = [
        "/a", "/a/b", "/a/b/c", "/a-b", "/a0", "/ab", "/a.b", "/a/b0", "/b",
    ];
    let mut expected = BTreeMap::new();
    for n in names {
        ds.put(&key(n), n.as_bytes()).or_fail(format!("put {n}"))?;
        expected.insert(key(n), n.as_bytes().to_vec());
    }
    for (k, v) in &expected {
        check_value(ds, k, v)?;
    }
    let under = |p: &str| -> TResult<Vec<String>> {
        let mut got = keys_of(&run_query(ds, Query::prefix(p))?);
        got.sort();
        Ok(got)
    };
    ensure_eq!(under("/a")?, ["/a/b", "/a/b/c", "/a/b0"], "prefix /a");
    ensure_eq!(under("/a/")?, ["/a/b", "/a/b/c", "/a/b0"], "prefix /a/");
    ensure_eq!(under("a")?, ["/a/b", "/a/b/c", "/a/b0"], "prefix a");
    ensure_eq!(under("/a/b")?, ["/a/b/c"], "prefix /a/b");
    ensure_eq!(under("/a/b/c")?, Vec::<String>::new(), "prefix /a/b/c");
    ensure_eq!(under("/a-b")?, Vec::<String>::new(), "prefix /a-b");
    ensure_eq!(under("/a/../a/./b//")?, ["/a/b/c"], "prefix /a/../a/./b//");
    // Deleting a parent leaves its children; deleting a child leaves its parent.
    ds.delete(&key("/a")).or_fail("delete /a")?;
    check_absent(ds, &key("/a"))?;
    check_value(ds, &key("/a/b"), b"/a/b")?;
    check_value(ds, &key("/a/b/c"), b"/a/b/c")?;
    ds.delete(&key("/a/b/c")).or_fail("delete /a/b/c")?;
    check_value(ds, &key("/a/b"), b"/a/b")?;
    ensure_eq!(
        under("/a/b")?,
        Vec::<String>::new(),
        "prefix /a/b after deletes"
    );
    ds.put(&key("/a"), b"again").or_fail("put /a again")?;
    check_value(ds, &key("/a"), b"again")?;
    ensure_eq!(under("/a")?, ["/a/b", "/a/b0"], "prefix /a after deletes");
    Ok(())
}

fn read_at_boundaries(ds: &dyn Datastore) -> TResult {
    let k = key("/ranged");
    let value = random_bytes(1000);
    ds.put(&k, &value).or_fail("put")?;
    let cases: [(u64, usize, usize); 10] = [
        // (offset, buffer length, expected count)
        (0, 100, 100),
        (0, 1000, 1000),
        (0, 5000, 1000),
        (450, 100, 100),
        (999, 100, 1),
        (950, 100, 50),
        (1000, 100, 0),
        (1001, 100, 0),
        (u64::MAX, 100, 0),
        (500, 0, 0),
    ];
    for (offset, len, want) in cases {
        let mut buf = vec![0xAAu8; len];
        let n = ds
            .read_at(&k, offset, &mut buf)
            .or_fail(format!("read_at({offset}, {len})"))?;
        ensure_eq!(n, want, "read_at({offset}, {len}) count");
        if want > 0 {
            let start = offset as usize;
            check_bytes(
                &buf[..n],
                &value[start..start + n],
                format!("read_at({offset}, {len})"),
            )?;
        }
        ensure!(
            buf[n..].iter().all(|&b| b == 0xAA),
            "read_at({offset}, {len}) wrote past the count it returned"
        );
    }
    let mut buf = [0u8; 10];
    expect_not_found(
        ds.read_at(&key("/missing"), 0, &mut buf),
        "read_at a missing key",
    )?;
    expect_not_found(
        ds.read_at(&key("/ranged/child"), 0, &mut buf),
        "read_at a child",
    )?;
    Ok(())
}

/// Files in `dir`, if the store stages there (so leftovers can be seen).
fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn stage_round_trip(ctx: &mut Ctx) -> TResult {
    let ds = ctx.ds();
    let staging_inside = ds.staging_dir().starts_with(ctx.dir());
    let files_before = files_in(ctx.dir());
    let k = key("/stage/existing");
    let original = random_bytes(1000);
    ds.put(&k, &original).or_fail("put")?;

    let staged = ds
        .stage(&k, StageInit::CopyCurrent)
        .or_fail("stage CopyCurrent")?;
    ensure_eq!(staged.len().or_fail("len")?, 1000, "staged length");
    check_bytes(
        &staged.read_all().or_fail("read_all")?,
        &original,
        "staged copy",
    )?;

    let mut model = original.clone();
    let mut rng = rand::rng();
    for _ in 0..40 {
        let offset = rng.random_range(0..3000usize);
        let data = random_bytes(rng.random_range(1..500usize));
        staged
            .write_all_at(offset as u64, &data)
            .or_fail("write_all_at")?;
        if model.len() < offset + data.len() {
            model.resize(offset + data.len(), 0);
        }
        model[offset..offset + data.len()].copy_from_slice(&data);
        // Random reads of the staged bytes agree with the model.
        let at = rng.random_range(0..model.len() + 10);
        let mut buf = vec![0u8; rng.random_range(0..700usize)];
        let n = staged
            .read_at(at as u64, &mut buf)
            .or_fail("staged read_at")?;
        let want = model.len().saturating_sub(at).min(buf.len());
        ensure_eq!(n, want, "staged read_at({at}) count");
        check_bytes(
            &buf[..n],
            &model[at.min(model.len())..at.min(model.len()) + n],
            "staged read_at",
        )?;
    }
    ensure_eq!(
        staged.len().or_fail("len")?,
        model.len() as u64,
        "staged length"
    );
    staged.set_len(700).or_fail("set_len shrink")?;
    model.truncate(700);
    staged.set_len(2500).or_fail("set_len extend")?;
    model.resize(2500, 0);
    staged
        .write_all_at(2490, b"tail")
        .or_fail("write after extend")?;
    model[2490..2494].copy_from_slice(b"tail");
    check_bytes(
        &staged.read_all().or_fail("read_all")?,
        &model,
        "staged bytes",
    )?;

    // Nothing is visible before the commit.
    check_value(ds, &k, &original)?;
    ds.commit_staged(&k, staged, true)
        .or_fail("commit_staged durable")?;
    check_value(ds, &k, &model)?;

    // A staged value for a new key.
    let new = key("/stage/new");
    let staged = ds
        .stage(&new, StageInit::CopyCurrent)
        .or_fail("stage a new key")?;
    ensure_eq!(
        staged.len().or_fail("len")?,
        0,
        "CopyCurrent of a missing key is empty"
    );
    staged.write_all_at(5, b"hole before").or_fail("write")?;
    check_absent(ds, &new)?;
    ds.commit_staged(&new, staged, false)
        .or_fail("commit_staged")?;
    check_value(ds, &new, b"\0\0\0\0\0hole before")?;

    if staging_inside {
        // The store's own files may have appeared (a redb file is created at open); staging
        // files must not be among what is left. A store's background writers (flatfs rewrites
        // its disk-usage cache through a temporary file) may have one in flight for a moment:
        // a leftover is a temporary file that is still there after a minute (a loaded machine
        // can keep such a writer from its rename for seconds).
        let temporary = |p: &&std::path::PathBuf| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
            name.is_some_and(|n| n.contains("stage") || n.contains("tmp") || n.contains("temp"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let after = files_in(ctx.dir());
            let left: Vec<_> = after.iter().filter(|p| !files_before.contains(p)).collect();
            if !left.iter().any(temporary) {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "staging files left behind: {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    if ctx.caps().persistent {
        ctx.reopen()?;
        let ds = ctx.ds();
        check_value(ds, &k, &model)?;
        check_value(ds, &new, b"\0\0\0\0\0hole before")?;
    }
    Ok(())
}

fn stage_init_and_discard(ds: &dyn Datastore) -> TResult {
    let k = key("/stage/k");
    ds.put(&k, b"current value").or_fail("put")?;
    // Empty ignores the current value.
    let staged = ds.stage(&k, StageInit::Empty).or_fail("stage Empty")?;
    ensure_eq!(
        staged.len().or_fail("len")?,
        0,
        "Empty staging of an existing key"
    );
    staged.write_all_at(0, b"abc").or_fail("write")?;
    ds.commit_staged(&k, staged, false).or_fail("commit")?;
    check_value(ds, &k, b"abc")?;
    // A staged value that is dropped changes nothing.
    let staged = ds.stage(&k, StageInit::CopyCurrent).or_fail("stage")?;
    staged.set_len(0).or_fail("set_len 0")?;
    staged
        .write_all_at(0, b"never committed")
        .or_fail("write")?;
    drop(staged);
    check_value(ds, &k, b"abc")?;
    let missing = key("/stage/missing");
    let staged = ds.stage(&missing, StageInit::Empty).or_fail("stage")?;
    staged.write_all_at(0, b"x").or_fail("write")?;
    drop(staged);
    check_absent(ds, &missing)?;
    // Committing an empty staged value stores an empty value.
    let staged = ds.stage(&k, StageInit::Empty).or_fail("stage")?;
    ds.commit_staged(&k, staged, true).or_fail("commit empty")?;
    check_value(ds, &k, b"")?;
    // Two staged values of one key: the later commit wins.
    let first = ds.stage(&k, StageInit::Empty).or_fail("stage")?;
    let second = ds.stage(&k, StageInit::Empty).or_fail("stage")?;
    first.write_all_at(0, b"first").or_fail("write")?;
    second.write_all_at(0, b"second").or_fail("write")?;
    ds.commit_staged(&k, first, false).or_fail("commit first")?;
    check_value(ds, &k, b"first")?;
    ds.commit_staged(&k, second, false)
        .or_fail("commit second")?;
    check_value(ds, &k, b"second")
}

/// A mix of values written every way the contract offers, and what must survive.
fn write_persistence_fixture(ds: &dyn Datastore) -> TResult<BTreeMap<Key, Vec<u8>>> {
    let mut expected = BTreeMap::new();
    let mut put = |k: &str, v: Vec<u8>| -> TResult {
        ds.put(&key(k), &v).or_fail(format!("put {k}"))?;
        expected.insert(key(k), v);
        Ok(())
    };
    put("/p/a", random_bytes(100))?;
    put("/p/empty", Vec::new())?;
    put("/p/bin", (0..=255u8).collect())?;
    put("/p/nested/deep/key", random_bytes(5000))?;
    put("/p/nested", b"parent".to_vec())?;
    put("/p/over", b"first".to_vec())?;
    put("/p/over", b"second, longer".to_vec())?;
    put("/p/gone", b"deleted".to_vec())?;
    ds.delete(&key("/p/gone")).or_fail("delete /p/gone")?;
    expected.remove(&key("/p/gone"));
    let mut b = ds.batch().or_fail("batch")?;
    for i in 0..10 {
        let v = format!("batch {i}").into_bytes();
        b.put(key(&format!("/p/batch/{i}")), v.clone())
            .or_fail("batch put")?;
        expected.insert(key(&format!("/p/batch/{i}")), v);
    }
    b.delete(key("/p/a")).or_fail("batch delete")?;
    expected.remove(&key("/p/a"));
    b.commit().or_fail("commit")?;
    let staged = ds
        .stage(&key("/p/staged"), StageInit::Empty)
        .or_fail("stage")?;
    staged.write_all_at(0, b"staged value").or_fail("write")?;
    ds.commit_staged(&key("/p/staged"), staged, false)
        .or_fail("commit_staged")?;
    expected.insert(key("/p/staged"), b"staged value".to_vec());
    Ok(expected)
}

fn reopen_persistence(ctx: &mut Ctx) -> TResult {
    let expected = write_persistence_fixture(ctx.ds())?;
    check_contents(ctx.ds(), &expected)?;
    ctx.reopen()?;
    check_contents(ctx.ds(), &expected)?;
    for (k, v) in &expected {
        check_value(ctx.ds(), k, v)?;
    }
    check_absent(ctx.ds(), &key("/p/gone"))?;
    check_absent(ctx.ds(), &key("/p/a"))?;
    // Writes after a reopen work and survive the next one.
    let mut expected = expected;
    ctx.ds()
        .put(&key("/p/later"), b"later")
        .or_fail("put after reopen")?;
    expected.insert(key("/p/later"), b"later".to_vec());
    ctx.ds()
        .delete(&key("/p/empty"))
        .or_fail("delete after reopen")?;
    expected.remove(&key("/p/empty"));
    ctx.reopen()?;
    check_contents(ctx.ds(), &expected)
}

fn reopen_after_sync(ctx: &mut Ctx) -> TResult {
    let expected = write_persistence_fixture(ctx.ds())?;
    ctx.ds().sync(&Key::root()).or_fail("sync /")?;
    // Not closed: whatever `sync` made durable must be there after the handle is dropped.
    ctx.drop_and_open()?;
    check_contents(ctx.ds(), &expected)
}

fn close_semantics(ctx: &mut Ctx) -> TResult {
    let ds = ctx.ds();
    let k = key("/closing/kept");
    ds.put(&k, b"kept").or_fail("put")?;
    ds.close().or_fail("close")?;
    let late = key("/closing/late");
    expect_kind(ds.put(&late, b"late"), ErrorKind::Closed, "put after close")?;
    expect_kind(ds.delete(&k), ErrorKind::Closed, "delete after close")?;
    match ds.batch() {
        Err(e) => ensure_eq!(e.kind(), ErrorKind::Closed, "batch after close: {e}"),
        Ok(mut b) => {
            let recorded = b.put(late.clone(), b"late".to_vec());
            match recorded {
                Err(e) => ensure_eq!(e.kind(), ErrorKind::Closed, "batch put after close: {e}"),
                Ok(()) => expect_kind(b.commit(), ErrorKind::Closed, "batch commit after close")?,
            }
        }
    }
    match ds.stage(&late, StageInit::Empty) {
        Err(e) => ensure_eq!(e.kind(), ErrorKind::Closed, "stage after close: {e}"),
        Ok(staged) => {
            staged
                .write_all_at(0, b"late")
                .or_fail("write to a stage")?;
            expect_kind(
                ds.commit_staged(&late, staged, true),
                ErrorKind::Closed,
                "commit_staged after close",
            )?;
        }
    }
    ds.close().or_fail("closing a second time")?;
    let persistent = ctx.caps().persistent;
    ctx.reopen()?;
    if persistent {
        check_value(ctx.ds(), &k, b"kept")?;
    }
    // Nothing refused after the close may have landed.
    check_absent(ctx.ds(), &late)
}

fn ordered_scan(ds: &dyn Datastore) -> TResult {
    // Keys whose bytewise and component-wise orders differ, inserted in random order.
    let mut names: Vec<String> = Vec::new();
    for a in ["a", "a-b", "a.b", "a0", "ab", "A", "b", "~", "a b", "é"] {
        names.push(format!("/{a}"));
        for b in ["x", "x-y", "x0", "X", "xy"] {
            names.push(format!("/{a}/{b}"));
            names.push(format!("/{a}/{b}/z"));
        }
    }
    for i in 0..150 {
        names.push(format!("/n/{i}"));
    }
    let mut shuffled = names.clone();
    let mut rng = rand::rng();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.random_range(0..=i));
    }
    for n in &shuffled {
        ds.put(&key(n), n.as_bytes()).or_fail(format!("put {n}"))?;
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for (keys_only, q) in [
        (false, Query::default()),
        (
            true,
            Query {
                keys_only: true,
                ..Query::default()
            },
        ),
    ] {
        ensure_eq!(
            keys_of(&run_query(ds, q)?),
            sorted,
            "unordered query (keys_only {keys_only}) of a store that claims ordered_scan"
        );
    }
    for p in ["/a", "/n", "/a/x"] {
        let want: Vec<String> = sorted
            .iter()
            .filter(|k| k.starts_with(&format!("{p}/")))
            .cloned()
            .collect();
        ensure_eq!(
            keys_of(&run_query(ds, Query::prefix(p))?),
            want,
            "unordered query under {p} of a store that claims ordered_scan"
        );
    }
    Ok(())
}

fn file_backed(ds: &dyn Datastore) -> TResult {
    // Stores may keep only some values as files (a tiered store's large ones, one child of a
    // mount), so several keys and a large value are offered; a store that claims file_backed
    // must name a file for at least one, and every file named must hold the value.
    let value = random_bytes(1 << 20);
    let claims = ds.capabilities().file_backed;
    let mut named = 0;
    for k in ["/backing/file", "/capital/BACKINGFILE", "/BACKINGFILE"] {
        let k = key(k);
        if ds.put(&k, &value).is_err() {
            continue;
        }
        let path = ds.backing_file(&k).or_fail("backing_file")?;
        match (claims, path) {
            (true, Some(path)) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    fail(format!("reading the backing file {}: {e}", path.display()))
                })?;
                check_bytes(&bytes, &value, "the backing file's bytes")?;
                named += 1;
            }
            (false, Some(path)) => {
                return Err(fail(format!(
                    "the store does not claim file_backed but gives a backing file {}",
                    path.display()
                )));
            }
            (_, None) => {}
        }
        ds.delete(&k).or_fail("delete")?;
    }
    ensure!(
        !claims || named > 0,
        "the store claims file_backed but names no backing file for any key"
    );
    Ok(())
}

fn disk_usage(ds: &dyn Datastore) -> TResult {
    ds.disk_usage().or_fail("disk_usage of an empty store")?;
    ds.put(&key("/du"), &random_bytes(100_000)).or_fail("put")?;
    ds.sync(&Key::root()).or_fail("sync")?;
    let du = ds.disk_usage().or_fail("disk_usage")?;
    if let Some(bytes) = du {
        ensure!(
            bytes > 0,
            "disk_usage is 0 with a 100 kB value stored and synced"
        );
    }
    Ok(())
}

fn delete_missing(ds: &dyn Datastore) -> TResult {
    ds.delete(&key("/never")).or_fail("delete a missing key")?;
    ds.delete(&key("/never/child/of/missing"))
        .or_fail("delete under a missing key")?;
    let k = key("/once");
    ds.put(&k, b"v").or_fail("put")?;
    ds.delete(&k).or_fail("delete")?;
    ds.delete(&k).or_fail("delete again")?;
    check_absent(ds, &k)?;
    // Deleting a missing child does not touch its parent.
    ds.put(&k, b"v").or_fail("put")?;
    ds.delete(&key("/once/child"))
        .or_fail("delete a missing child")?;
    check_value(ds, &k, b"v")?;
    let mut b = ds.batch().or_fail("batch")?;
    b.delete(key("/never/in/batch")).or_fail("batch delete")?;
    b.commit().or_fail("commit a batch deleting a missing key")
}

fn overwrite_replaces(ds: &dyn Datastore) -> TResult {
    let k = key("/over");
    for len in [100usize, 10, 1000, 0, 1, 70_000, 3] {
        let len = fit(ds, len);
        let v = random_bytes(len);
        ds.put(&k, &v).or_fail(format!("put {len} bytes"))?;
        check_value(ds, &k, &v)?;
        let mut buf = vec![0u8; 50];
        let n = ds.read_at(&k, 2, &mut buf).or_fail("read_at")?;
        let want = len.saturating_sub(2).min(50);
        ensure_eq!(n, want, "read_at(2) after overwrite with {len} bytes");
        check_bytes(&buf[..n], &v[2.min(len)..2.min(len) + n], "read_at(2)")?;
        let entries = run_query(ds, Query::default())?;
        ensure_eq!(keys_of(&entries), vec!["/over".to_string()], "query");
        check_bytes(
            entries[0].value_bytes(),
            &v,
            "queried value after overwrite",
        )?;
    }
    Ok(())
}

fn keys_only_sizes(ds: &dyn Datastore) -> TResult {
    let mut expected = BTreeMap::new();
    for (i, len) in [1usize, 0, 64, 4096, 100_000].into_iter().enumerate() {
        let len = fit(ds, len);
        let k = key(&format!("/sizes/{i}"));
        let v = random_bytes(len);
        ds.put(&k, &v).or_fail("put")?;
        expected.insert(k, len as u64);
    }
    let q = Query {
        keys_only: true,
        returns_sizes: true,
        ..Query::default()
    };
    let entries = run_query(ds, q)?;
    ensure_eq!(entries.len(), expected.len(), "keys-only query count");
    for e in &entries {
        ensure!(
            e.value.is_none(),
            "keys-only query returned a value for {}",
            e.key
        );
        ensure_eq!(e.size, Some(expected[&e.key]), "size of {}", e.key);
    }
    // Without returns_sizes, a size that is given must still be right.
    let entries = run_query(
        ds,
        Query {
            keys_only: true,
            ..Query::default()
        },
    )?;
    for e in &entries {
        if let Some(s) = e.size {
            ensure_eq!(s, expected[&e.key], "unrequested size of {}", e.key);
        }
    }
    Ok(())
}

/// Orders the store cannot recognise but that sort by key: a store that optimises KEY orders
/// must fall back to sorting for them.
fn opaque_key_orders(ds: &dyn Datastore) -> TResult {
    use dsfs::datastore::Order;
    let mut names: Vec<String> = (0..50).map(|i| format!("/o/{i}")).collect();
    names.extend(["/o", "/o-", "/o0", "/p"].map(String::from));
    for n in &names {
        ds.put(&key(n), n.as_bytes()).or_fail("put")?;
    }
    names.sort();
    let asc = Order::function(|a: &Entry, b: &Entry| a.key.cmp(&b.key));
    let desc = Order::function(|a: &Entry, b: &Entry| b.key.cmp(&a.key));
    let got = keys_of(&run_query(
        ds,
        Query {
            orders: vec![asc.clone()],
            ..Query::default()
        },
    )?);
    ensure_eq!(got, names, "FN(key ascending)");
    let mut reversed = names.clone();
    reversed.reverse();
    let got = keys_of(&run_query(
        ds,
        Query {
            orders: vec![desc.clone()],
            ..Query::default()
        },
    )?);
    ensure_eq!(got, reversed, "FN(key descending)");
    let got = keys_of(&run_query(
        ds,
        Query {
            orders: vec![desc],
            offset: 3,
            limit: 5,
            prefix: "/o".into(),
            ..Query::default()
        },
    )?);
    let under: Vec<String> = reversed
        .iter()
        .filter(|k| k.starts_with("/o/"))
        .skip(3)
        .take(5)
        .cloned()
        .collect();
    ensure_eq!(got, under, "FN(key descending) under /o, offset 3, limit 5");
    Ok(())
}

fn concurrent_puts_gets(ctx: &mut Ctx) -> TResult {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 100;
    let value = |t: usize, i: usize| {
        format!("thread {t} value {i}")
            .repeat(1 + i % 7)
            .into_bytes()
    };
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let ds = ctx.shared();
        handles.push(thread::spawn(move || -> TResult {
            for i in 0..PER_THREAD {
                let k = key(&format!("/threads/{t}/{i}"));
                ds.put(&k, &value(t, i)).or_fail(format!("put {k}"))?;
                check_bytes(
                    &ds.get(&k).or_fail(format!("get {k}"))?,
                    &value(t, i),
                    format!("get {k}"),
                )?;
                if i % 10 == 0 {
                    ensure!(
                        ds.has(&key(&format!("/threads/{t}/0"))).or_fail("has")?,
                        "a thread's first key vanished"
                    );
                    run_query(&*ds, Query::prefix(format!("/threads/{t}")))?;
                }
            }
            for i in 0..PER_THREAD {
                let k = key(&format!("/threads/{t}/{i}"));
                check_value(&*ds, &k, &value(t, i))?;
            }
            Ok(())
        }));
    }
    let mut first_error = None;
    for h in handles {
        let r = h.join().map_err(|_| fail("a writer thread panicked"))?;
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut expected = BTreeMap::new();
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            expected.insert(key(&format!("/threads/{t}/{i}")), value(t, i));
        }
    }
    check_contents(ctx.ds(), &expected)
}

/// With `atomic_put`, a reader sees an old value or a new one, never a mix.
fn atomic_put_visibility(ctx: &mut Ctx) -> TResult {
    let k = key("/atomic/put");
    let a = vec![0xA5u8; 256 * 1024];
    let b = vec![0x5Au8; 100 * 1024 + 7];
    ctx.ds().put(&k, &a).or_fail("put")?;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let ds = ctx.shared();
        let done = done.clone();
        let (a, b, k) = (a.clone(), b.clone(), k.clone());
        readers.push(thread::spawn(move || -> TResult<usize> {
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                let v = ds.get(&k).or_fail("get during overwrites")?;
                ensure!(
                    v == a || v == b,
                    "a reader saw a torn value of {} bytes",
                    v.len()
                );
                reads += 1;
            }
            Ok(reads)
        }));
    }
    let ds = ctx.shared();
    let writer = within(DEADLOCK_LIMIT, "overwrites", {
        let (a, b, k) = (a.clone(), b.clone(), k.clone());
        move || -> TResult {
            for i in 0..200 {
                ds.put(&k, if i % 2 == 0 { &b } else { &a })
                    .or_fail("put")?;
            }
            Ok(())
        }
    });
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().map_err(|_| fail("a reader panicked"))??;
    }
    writer
}

/// With `atomic_batch`, a query sees all of a batch or none of it.
fn atomic_batch_visibility(ctx: &mut Ctx) -> TResult {
    const KEYS: usize = 16;
    let k = |i: usize| key(&format!("/atomic/batch/{i:02}"));
    for i in 0..KEYS {
        ctx.ds().put(&k(i), &0u64.to_be_bytes()).or_fail("put")?;
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let ds = ctx.shared();
        let done = done.clone();
        readers.push(thread::spawn(move || -> TResult<usize> {
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                let entries = run_query(&*ds, Query::prefix("/atomic/batch"))?;
                ensure!(
                    entries.is_empty() || entries.len() == KEYS,
                    "a query saw {} of the {KEYS} keys a batch writes together",
                    entries.len()
                );
                ensure!(
                    entries.windows(2).all(|w| w[0].value == w[1].value),
                    "a query saw values of different batches: {:?}",
                    entries
                        .iter()
                        .map(|e| e.value_bytes().to_vec())
                        .collect::<Vec<_>>()
                );
                reads += 1;
            }
            Ok(reads)
        }));
    }
    let ds = ctx.shared();
    let writer = within(DEADLOCK_LIMIT, "batches", move || -> TResult {
        for generation in 1..=150u64 {
            let mut b = ds.batch().or_fail("batch")?;
            for i in 0..KEYS {
                if generation % 3 == 0 {
                    b.delete(k(i)).or_fail("batch delete")?;
                } else {
                    b.put(k(i), generation.to_be_bytes().to_vec())
                        .or_fail("batch put")?;
                }
            }
            b.commit().or_fail("commit")?;
        }
        Ok(())
    });
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().map_err(|_| fail("a reader panicked"))??;
    }
    writer
}

/// A result stream that is still open must not block writes (a FUSE `readdir` holds one while
/// the same process writes).
fn write_during_open_query(ctx: &mut Ctx) -> TResult {
    let ds = ctx.shared();
    let before: Vec<String> = (0..50).map(|i| format!("/open/{i:02}")).collect();
    for n in &before {
        ds.put(&key(n), n.as_bytes()).or_fail("put")?;
    }
    let seen = within(DEADLOCK_LIMIT, "writes during an open query", move || {
        let mut results = ds.query(Query::prefix("/open")).or_fail("query")?;
        let first = results
            .next()
            .ok_or_else(|| fail("the query returned nothing"))?
            .or_fail("first result")?;
        // Same thread, stream still open: a store holding a lock across the stream would hang.
        ds.put(&key("/open/new"), b"new")
            .or_fail("put while a query is open")?;
        ds.delete(&key("/open/25"))
            .or_fail("delete while a query is open")?;
        ds.put(&key("/open/00"), b"changed")
            .or_fail("overwrite while a query is open")?;
        let mut b = ds.batch().or_fail("batch")?;
        b.put(key("/open/batch"), b"b".to_vec())
            .or_fail("batch put")?;
        b.commit().or_fail("batch commit while a query is open")?;
        let mut seen = vec![first];
        for r in results {
            seen.push(r.or_fail("a result after the writes")?);
        }
        Ok(seen)
    })?;
    let ds = ctx.ds();
    for e in &seen {
        let k = e.key.as_str();
        ensure!(
            before.iter().any(|b| b == k) || k == "/open/new" || k == "/open/batch",
            "the open query returned {k}, which never existed"
        );
        let v = e.value_bytes();
        ensure!(
            v == k.as_bytes()
                || (k == "/open/00" && v == b"changed")
                || (k == "/open/new" && v == b"new")
                || (k == "/open/batch" && v == b"b"),
            "the open query returned a value for {k} that it never had"
        );
    }
    let mut distinct: Vec<&str> = seen.iter().map(|e| e.key.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    ensure_eq!(distinct.len(), seen.len(), "keys returned once each");
    let after = keys_of(&run_query(ds, Query::prefix("/open"))?);
    ensure!(
        after.contains(&"/open/new".to_string()) && after.contains(&"/open/batch".to_string()),
        "the writes made during the open query are missing afterwards"
    );
    ensure!(
        !after.contains(&"/open/25".to_string()),
        "the delete made during the open query is undone afterwards"
    );
    check_value(ds, &key("/open/00"), b"changed")
}
