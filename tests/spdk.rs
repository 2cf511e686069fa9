//! dsfs mounted over the SPDK store on the in-process blobstore (`spdk:fake=`): the shell tools,
//! random writes into a large file, space, persistence across a remount, and the blobstore
//! left in BlobFS's layout. The same tests run against a real SPDK when `DSFS_TEST_SPDK_AIO`
//! names an image file and dsfs was built with `--features spdk` against an installed SPDK.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use common::{Mount, fio_verify, have_fio, sh};

/// A mount of a fresh blobstore: the fake one, or a real one when `DSFS_TEST_SPDK_AIO` names
/// an image (zeroed here, so it is formatted at the mount).
fn spdk_mount() -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let spec = match std::env::var_os("DSFS_TEST_SPDK_AIO") {
        Some(img) => {
            let f = fs::File::create(&img).unwrap();
            f.set_len(1 << 30).unwrap();
            format!(
                "spdk:aio={}?cluster=16384&index={}",
                img.to_string_lossy(),
                dir.path().join("index.redb").display()
            )
        }
        None => format!(
            "spdk:fake={}?cluster=16384&size=268435456",
            dir.path().join("bs.img").display()
        ),
    };
    Mount::with_spec(dir, spec, &[])
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn cp_r_and_diff_r_round_trip_and_survive_a_remount() {
    let mut m = spdk_mount();
    let src = m.dir.path().join("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("a/small"), b"hello blobstore").unwrap();
    fs::write(src.join("a/b/unaligned"), pattern(1, 16384 * 3 + 7)).unwrap();
    fs::write(src.join("a/b/c/big"), pattern(2, 3 << 20)).unwrap();
    let long = "l".repeat(250);
    fs::write(
        src.join(&long),
        b"a name longer than BlobFS allows once prefixed",
    )
    .unwrap();
    let out = sh(
        m.dir.path(),
        &format!(
            "cp -r src/. {0}/ && diff -r src {0} && echo same",
            m.mnt.display()
        ),
    );
    assert_eq!(out, "same\n");
    m.remount();
    let out = sh(
        m.dir.path(),
        &format!("diff -r src {} && echo same", m.mnt.display()),
    );
    assert_eq!(out, "same\n");
    // A rename and a removal persist too.
    fs::rename(m.path("a/small"), m.path("a/b/moved")).unwrap();
    fs::remove_file(m.path("a/b/c/big")).unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("a/b/moved")).unwrap(), b"hello blobstore");
    assert!(!m.path("a/small").exists());
    assert!(!m.path("a/b/c/big").exists());
}

#[test]
fn random_writes_into_a_large_file_read_back_after_a_remount() {
    let mut m = spdk_mount();
    let path = m.path("large");
    let mut want = pattern(3, 4 << 20);
    fs::write(&path, &want).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    for (i, off) in [0usize, 4095, 1 << 20, (3 << 20) + 17, (4 << 20) - 100]
        .into_iter()
        .enumerate()
    {
        let data = pattern(100 + i as u32, 4096);
        f.write_all_at(&data, off as u64).unwrap();
        let end = off + data.len();
        if end > want.len() {
            want.resize(end, 0);
        }
        want[off..end].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), want);
    m.remount();
    assert_eq!(fs::read(&path).unwrap(), want);
}

#[test]
fn statfs_reports_the_blobstore_and_a_full_blobstore_is_enospc() {
    let m = spdk_mount();
    if std::env::var_os("DSFS_TEST_SPDK_AIO").is_some() {
        return; // sized for the fake's 256 MiB image
    }
    let df = |m: &Mount| -> (u64, u64) {
        let out = sh(&m.mnt, "stat -f -c '%b %f %S' .");
        let v: Vec<u64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        (v[0] * v[2], v[1] * v[2])
    };
    let (total, free) = df(&m);
    assert_eq!(total, 256 << 20);
    fs::write(m.path("ten"), vec![7u8; 10 << 20]).unwrap();
    let (_, after) = df(&m);
    assert!(free - after >= 10 << 20, "{free} -> {after}");
    // The value is committed at fsync (fs::write would drop the close's error).
    let mut f = fs::File::create(m.path("too-big")).unwrap();
    std::io::Write::write_all(&mut f, &vec![1u8; 300 << 20]).unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(fs::read(m.path("ten")).unwrap(), vec![7u8; 10 << 20]);
}

/// fio writes a file sequentially, then rewrites it at random 4 KiB offsets (staged over
/// the committed value and committed in place), verifying both; after a remount, read jobs
/// verify the rewritten blocks and every block of the file (each 4 KiB block carries its
/// own checksummed header, from either writer).
#[test]
fn fio_random_rewrites_verify_across_a_remount() {
    let mut m = spdk_mount();
    if !have_fio() {
        return;
    }
    fio_verify(&m, "f", &["--rw=write", "--bs=4k", "--do_verify=1"]);
    fio_verify(
        &m,
        "f",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--number_ios=300",
            "--do_verify=1",
            "--fsync_on_close=1",
        ],
    );
    m.remount();
    fio_verify(&m, "f", &["--rw=randread", "--bs=4k", "--number_ios=300"]);
    fio_verify(&m, "f", &["--rw=read", "--bs=4k"]);
}

/// A file another program (BlobFS) wrote into the blobstore while dsfs was away shows up at
/// the next mount and through the CLI, and one it deleted goes away (the blobstore's segment
/// stamp changed). Fake blobstore only: the real one is checked by hand with BlobFS itself.
#[test]
fn files_blobfs_wrote_while_dsfs_was_away_are_found_at_the_next_mount() {
    use dsfs::backend::spdk::fake::FakeBlobstore;
    use dsfs::backend::spdk::ops::BlobOps;
    if std::env::var_os("DSFS_TEST_SPDK_AIO").is_some() {
        return;
    }
    let mut m = spdk_mount();
    fs::write(m.path("mine"), b"dsfs wrote this").unwrap();
    fs::write(m.path("doomed"), b"BlobFS deletes this").unwrap();
    m.umount();
    {
        // What BlobFS's create, write, sync and delete leave: a blob with `name` and `length`.
        let bs = FakeBlobstore::load(&m.dir.path().join("bs.img")).unwrap();
        let value = pattern(9, 70_000);
        let id = bs
            .create_blob(&[("name", b"/theirs\0"), ("length", &0u64.to_ne_bytes())])
            .unwrap();
        bs.open_blob(id).unwrap();
        bs.resize(id, 5).unwrap();
        let mut padded = value.clone();
        padded.resize(70_000usize.div_ceil(4096) * 4096, 0);
        bs.write(id, 0, &padded).unwrap();
        bs.set_xattr(id, "length", &70_000u64.to_ne_bytes())
            .unwrap();
        bs.sync_md(id).unwrap();
        bs.close_blob(id).unwrap();
        for id in bs.blob_ids().unwrap() {
            bs.open_blob(id).unwrap();
            let name = bs.get_xattr(id, "name").unwrap();
            bs.close_blob(id).unwrap();
            if name.as_deref() == Some(b"/doomed\0") {
                bs.delete_blob(id).unwrap();
            }
        }
        bs.unload().unwrap();
    }
    let out = m.dsfs_store(&["get", "/theirs"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, pattern(9, 70_000));
    m.mount();
    assert_eq!(fs::read(m.path("theirs")).unwrap(), pattern(9, 70_000));
    assert_eq!(fs::read(m.path("mine")).unwrap(), b"dsfs wrote this");
    assert!(!m.path("doomed").exists());
}
