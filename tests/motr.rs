//! The Motr store mounted: over the in-process Motr (every run), or over a real cluster when
//! `DSFS_TEST_MOTR` holds the client options (`ha=...&local=...&profile=...&process=...`) and
//! dsfs was built with `--features motr` against it.

mod common;

use std::path::Path;

use common::{Mount, bytes, fio_verify, have_fio, sh};
use dsfs::backend::motr::fake::FakeMotr;
use dsfs::backend::motr::{GO_DS_MOTR_SUFFIX, Id128, MotrOps, ops};

/// A fresh index fid per test and process, so reruns against a real cluster start empty.
fn index_fid(test: u64) -> Id128 {
    Id128 {
        hi: 0x7800_0000_0000_0000 | u64::from(std::process::id()),
        lo: 0x100 + test,
    }
}

/// The spec of index `fid`: on the real cluster `DSFS_TEST_MOTR` names, or in the in-process
/// Motr kept in `dir`.
fn spec(dir: &Path, fid: Id128, extra: &str) -> String {
    let target = match std::env::var("DSFS_TEST_MOTR") {
        Ok(options) => options,
        Err(_) => format!("fake={}", dir.join("motr.fake").display()),
    };
    format!(
        "motr:{:#x}:{:#x}?{target}&index={}{extra}",
        fid.hi,
        fid.lo,
        dir.join("index.redb").display()
    )
}

fn real() -> bool {
    std::env::var_os("DSFS_TEST_MOTR").is_some()
}

#[test]
fn cp_r_onto_a_motr_mount_round_trips_also_after_remount() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), index_fid(1), "");
    let mut m = Mount::with_spec(dir, spec, &[]);
    let src = tempfile::tempdir().unwrap();
    for d in 0..4u64 {
        let sub = src.path().join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..12u64 {
            // Inline records, objects of a few blocks, and one of several IO pieces.
            let len = match f {
                0 => (3 << 20) + 17,
                1 => 9000,
                _ => (100 * f + d) as usize,
            };
            std::fs::write(sub.join(format!("f{f}")), bytes(d * 100 + f, len)).unwrap();
        }
    }
    let dst = m.path("tree");
    sh(
        m.dir.path(),
        &format!(
            "cp -r {0} {1} && diff -r {0} {1}",
            src.path().display(),
            dst.display()
        ),
    );
    m.remount();
    sh(
        m.dir.path(),
        &format!("diff -r {} {}", src.path().display(), dst.display()),
    );
    // A positional write into the middle of a large file, then read back after a remount.
    sh(
        m.dir.path(),
        &format!(
            "printf 'HELLO' | dd of={}/d0/f0 bs=1 seek=1000000 conv=notrunc status=none",
            dst.display()
        ),
    );
    m.remount();
    let got = std::fs::read(m.path("tree/d0/f0")).unwrap();
    let mut want = bytes(0, (3 << 20) + 17);
    want[1_000_000..1_000_005].copy_from_slice(b"HELLO");
    assert!(got == want, "the patched file differs");
}

#[test]
fn fio_with_verify_on_a_motr_mount() {
    if !have_fio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), index_fid(2), "");
    let m = Mount::with_spec(dir, spec, &[]);
    for (name, write, read, bs) in [
        ("seq", "write", "read", "1M"),
        ("rand", "randwrite", "randread", "4k"),
    ] {
        for rw in [write, read] {
            let (rw, bs) = (format!("--rw={rw}"), format!("--bs={bs}"));
            fio_verify(
                &m,
                name,
                &["--size=4M", "--numjobs=2", "--do_verify=1", &rw, &bs],
            );
        }
    }
}

/// go-ds-motr's records (key ++ the empty FNV-1/128 digest -> the whole block) read through a
/// mount in compatibility mode, and a file written there lands as such a record.
#[test]
fn a_go_ds_motr_index_mounts_in_compat_mode_both_ways() {
    if real() {
        // Against a real cluster this is checked with m0kv by hand (see the README).
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fid = index_fid(3);
    let block = bytes(42, 12_000);
    let go_key = |k: &str| {
        let mut v = k.as_bytes().to_vec();
        v.extend_from_slice(&GO_DS_MOTR_SUFFIX);
        v
    };
    {
        let fake = FakeMotr::open(&dir.path().join("motr.fake")).unwrap();
        fake.idx_create(fid).unwrap();
        let k = go_key("/blocks/CIQA4XCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ");
        fake.idx_put(fid, &[(&k, &block)], ops::OVERWRITE).unwrap();
        fake.shutdown();
    }
    let spec = spec(dir.path(), fid, "&compat=go-ds-motr");
    let mut m = Mount::with_spec(dir, spec, &[]);
    assert_eq!(
        std::fs::read(m.path("blocks/CIQA4XCGRCRTCCHV7XSGAZPZJOAOHLPOI6IQR3H6YQ")).unwrap(),
        block
    );
    std::fs::write(m.path("blocks/CIQNEW"), b"written by dsfs").unwrap();
    m.umount();
    let fake = FakeMotr::open(&m.dir.path().join("motr.fake")).unwrap();
    let recs = fake.records(fid);
    assert!(
        recs.contains(&(go_key("/blocks/CIQNEW"), b"written by dsfs".to_vec())),
        "records: {:?}",
        recs.iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(fake.object_count(), 0);
}

/// Put/get latency and throughput of 1 KiB and 256 KiB values on the real cluster
/// `DSFS_TEST_MOTR` names (run by hand: `--ignored --nocapture`); every value read back is
/// checked.
#[test]
#[ignore = "measures a real Motr cluster; run by hand with DSFS_TEST_MOTR set"]
fn put_get_figures_on_a_real_motr() {
    use dsfs::backend::motr::config::MotrSpec;
    use dsfs::{Datastore, Key};
    use std::time::Instant;
    let Ok(options) = std::env::var("DSFS_TEST_MOTR") else {
        return;
    };
    let fid = index_fid(9);
    let mut spec = MotrSpec::parse_arg(&format!("{:#x}:{:#x}", fid.hi, fid.lo)).unwrap();
    for opt in options.split('&') {
        let (k, v) = opt.split_once('=').unwrap();
        spec.set(k, v).unwrap();
    }
    let store = spec.open(false).unwrap();
    for (size, count) in [(1024usize, 200usize), (256 << 10, 40)] {
        let values: Vec<Vec<u8>> = (0..count).map(|i| bytes(i as u64, size)).collect();
        let t = Instant::now();
        for (i, v) in values.iter().enumerate() {
            store
                .put(&Key::new(format!("/bench/{size}/{i}")), v)
                .unwrap();
        }
        let put = t.elapsed();
        let t = Instant::now();
        for (i, v) in values.iter().enumerate() {
            let got = store.get(&Key::new(format!("/bench/{size}/{i}"))).unwrap();
            assert!(got == *v, "value {i} of {size} bytes differs");
        }
        let get = t.elapsed();
        let mib = (size * count) as f64 / (1 << 20) as f64;
        println!(
            "motr {size} B x {count}: put {:.2} ms/op {:.2} MiB/s, get {:.2} ms/op {:.2} MiB/s",
            put.as_secs_f64() * 1e3 / count as f64,
            mib / put.as_secs_f64(),
            get.as_secs_f64() * 1e3 / count as f64,
            mib / get.as_secs_f64()
        );
    }
    store.close().unwrap();
}

/// The in-process Motr, counting index operations.
struct Counting {
    motr: std::sync::Arc<FakeMotr>,
    ops: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn tick(&self) {
        self.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.ops.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl MotrOps for Counting {
    fn idx_create(&self, idx: Id128) -> ops::OpResult<()> {
        self.tick();
        self.motr.idx_create(idx)
    }
    fn idx_put(&self, idx: Id128, r: &[(&[u8], &[u8])], f: u32) -> ops::OpResult<Vec<i32>> {
        self.tick();
        self.motr.idx_put(idx, r, f)
    }
    fn idx_get(&self, idx: Id128, k: &[&[u8]]) -> ops::OpResult<Vec<Result<Vec<u8>, i32>>> {
        self.tick();
        self.motr.idx_get(idx, k)
    }
    fn idx_del(&self, idx: Id128, k: &[&[u8]], f: u32) -> ops::OpResult<Vec<i32>> {
        self.tick();
        self.motr.idx_del(idx, k, f)
    }
    fn idx_next(&self, idx: Id128, s: &[u8], n: usize, f: u32) -> ops::OpResult<Vec<ops::Record>> {
        self.tick();
        self.motr.idx_next(idx, s, n, f)
    }
    fn obj_create(&self, id: Id128) -> ops::OpResult<()> {
        self.motr.obj_create(id)
    }
    fn obj_delete(&self, id: Id128) -> ops::OpResult<()> {
        self.motr.obj_delete(id)
    }
    fn obj_write(&self, id: Id128, off: u64, data: &[u8]) -> ops::OpResult<()> {
        self.motr.obj_write(id, off, data)
    }
    fn obj_read(&self, id: Id128, off: u64, buf: &mut [u8]) -> ops::OpResult<()> {
        self.motr.obj_read(id, off, buf)
    }
    fn block_size(&self) -> usize {
        self.motr.block_size()
    }
}

/// Two hosts on one Motr index, each with its own redb index: a put, a change of size and a
/// delete by one reach the other's index at its next revalidation, which costs one `NEXT`
/// when nothing changed; a host that was away catches up at its next open by re-reading only
/// the changed segments.
#[test]
fn two_stores_on_one_index_follow_each_other_through_segment_stamps() {
    use dsfs::backend::motr::{MotrOptions, MotrStore};
    use dsfs::datastore::{Datastore, Key};
    use dsfs::index::store::open_following;
    use dsfs::index::{Index, IndexedStore};
    use std::sync::Arc;
    use std::time::Duration;

    let fake = Arc::new(FakeMotr::in_memory());
    let fid = index_fid(20);
    let host = |ops: Arc<Counting>| -> IndexedStore {
        let store = MotrStore::open(ops, MotrOptions::new(fid)).unwrap();
        let index = Arc::new(Index::in_memory(Default::default()).unwrap());
        let (s, _) = open_following(Arc::new(store), index, &mut |_| {}).unwrap();
        s.set_revalidate(Duration::from_millis(1));
        s
    };
    let counting = || {
        Arc::new(Counting {
            motr: fake.clone(),
            ops: Default::default(),
        })
    };
    let (a_ops, b_ops) = (counting(), counting());
    let a = host(a_ops.clone());
    let b = host(b_ops.clone());
    let k = |s: &str| Key::new(s);
    for i in 0..300 {
        a.put(&k(&format!("/d/f{i:03}")), b"x").unwrap();
    }
    a.put(&k("/big"), &bytes(3, 100_000)).unwrap();
    let revalidate = |s: &IndexedStore| {
        std::thread::sleep(Duration::from_millis(5));
        s.revalidate().unwrap();
    };
    revalidate(&b);
    assert_eq!(b.index().value_size(&k("/d/f123")).unwrap(), Some(1));
    assert_eq!(b.index().value_size(&k("/big")).unwrap(), Some(100_000));

    // Nothing changed: one NEXT.
    let before = b_ops.count();
    revalidate(&b);
    assert_eq!(b_ops.count() - before, 1, "an unchanged revalidation");

    a.put(&k("/big"), b"small now").unwrap();
    a.delete(&k("/d/f007")).unwrap();
    let before = b_ops.count();
    revalidate(&b);
    assert_eq!(b.index().value_size(&k("/big")).unwrap(), Some(9));
    assert_eq!(b.index().value_size(&k("/d/f007")).unwrap(), None);
    assert_eq!(b.index().value_size(&k("/d/f008")).unwrap(), Some(1));
    // The stamps, then a few operations per changed segment (two changed), not per key.
    assert!(
        b_ops.count() - before <= 7,
        "{} operations",
        b_ops.count() - before
    );

    // B away, A writes, B opens again with the index it kept.
    let b_index = b.index().clone();
    drop(b);
    a.put(&k("/while-away"), b"hi").unwrap();
    let ops = counting();
    let store = MotrStore::open(ops.clone(), MotrOptions::new(fid)).unwrap();
    let opened = ops.count();
    let (b, _) = open_following(Arc::new(store), b_index, &mut |_| {}).unwrap();
    assert_eq!(b.index().value_size(&k("/while-away")).unwrap(), Some(2));
    assert!(
        ops.count() - opened <= 3,
        "{} operations to follow one change at open",
        ops.count() - opened
    );
}
