//! The Motr store mounted: over the in-process Motr (every run), or over a real cluster when
//! `DSFS_TEST_MOTR` holds the client options (`ha=...&local=...&profile=...&process=...`) and
//! dsfs was built with `--features motr` against it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Mount, bytes, sh};
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
    if Command::new("fio").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "fio is missing in CI");
        eprintln!("fio not installed: skipping");
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
            let out = Command::new("fio")
                .arg(format!("--name={name}"))
                .arg(format!("--directory={}", m.mnt.display()))
                .args([
                    "--ioengine=psync",
                    "--size=4M",
                    "--verify=crc32c",
                    "--verify_state_save=0",
                    "--do_verify=1",
                    "--output-format=terse",
                    "--numjobs=2",
                ])
                .arg(format!("--rw={rw}"))
                .arg(format!("--bs={bs}"))
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "fio {name} {rw}: {text}");
            assert!(!text.contains("verify:"), "fio {name} {rw}: {text}");
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
    let block = bytes(42, 70_000);
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
