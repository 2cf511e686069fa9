//! Reading small files on a real flatfs mount: what the kernel sends for each (open, read,
//! close) of a small unchanged file (counted from the daemon's request log), and that pages
//! the kernel keeps across opens never outlive a change made through another handle or by
//! another program writing the flatfs directory.
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Mount, count_requests, requests, requests_since, sh, traced_flatfs};

/// Small files read and re-read per test.
const N: usize = 20;

fn name(i: usize) -> String {
    format!("SF{i:07}")
}

/// Writes `N` files of 4 KiB through the mount and reads each once, and waits for the
/// RELEASE requests of these `2 * N` handles, so that none is counted as a later one's.
/// The first thing done in a fresh mount.
fn small_files(m: &Mount) {
    for i in 0..N {
        std::fs::write(m.path(&name(i)), vec![i as u8; 4096]).unwrap();
        assert!(std::fs::read(m.path(&name(i))).unwrap() == vec![i as u8; 4096]);
    }
    let setup = requests_since(m, 0, 2 * N);
    assert_eq!(count_requests(&setup, "RELEASE"), 2 * N, "{setup:?}");
}

/// The data file of `name` in the flatfs directory under `m`.
fn data_file(m: &Mount, name: &str) -> PathBuf {
    let blocks = m.dir.path().join("blocks");
    let file = format!("{name}.data");
    for shard in std::fs::read_dir(&blocks).unwrap() {
        let p = shard.unwrap().path().join(&file);
        if p.exists() {
            return p;
        }
    }
    panic!("no {file} under {}", blocks.display());
}

/// Rewrites `path` the way another program writing flatfs does: a new file renamed over it.
fn replace_by_hand(path: &Path, value: &[u8]) {
    let tmp = path.with_extension("tmp-by-hand");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reading_small_unchanged_files_again_costs_an_open_and_a_release_each() {
    let m = traced_flatfs(&[]);
    small_files(&m);
    let before = requests(&m).len();
    for i in 0..N {
        let mut f = std::fs::File::open(m.path(&name(i))).unwrap();
        // One byte more than the file, as programs reading to the end do.
        let mut buf = vec![0u8; 4097];
        assert_eq!(f.read(&mut buf).unwrap(), 4096);
        assert!(buf[..4096] == vec![i as u8; 4096], "{}", name(i));
    }
    let again = &requests_since(&m, before, N);
    assert_eq!(count_requests(again, "OPEN"), N, "{again:?}");
    assert_eq!(count_requests(again, "RELEASE"), N, "{again:?}");
    assert_eq!(count_requests(again, "READ"), 0, "{again:?}");
    // Read-only opens ask for no FLUSH.
    assert_eq!(count_requests(again, "FLUSH"), 0, "{again:?}");
    // At most one name refresh and one attribute refresh per file: the kernel looks a name
    // up again once its 1 s timeout expired (the lookup refreshes the attributes too), and asks
    // for the attributes again (for the size a write invalidated, or at a read more than 1 s
    // after the lookup, as on a loaded machine); nothing else.
    let lookups = count_requests(again, "LOOKUP");
    let getattrs = count_requests(again, "GETATTR");
    assert!(lookups <= N, "{lookups} LOOKUP requests: {again:?}");
    assert!(getattrs <= N, "{getattrs} GETATTR requests: {again:?}");
    assert_eq!(again.len(), 2 * N + lookups + getattrs, "{again:?}");
}

#[test]
fn a_small_file_open_for_reading_elsewhere_is_read_from_the_page_cache_by_a_writer() {
    let m = traced_flatfs(&[]);
    small_files(&m);
    // A reader holds every file open; with passthrough, every other open of the file went
    // to the daemon with direct I/O, one READ per read.
    let readers: Vec<_> = (0..N)
        .map(|i| std::fs::File::open(m.path(&name(i))).unwrap())
        .collect();
    let before = requests(&m).len();
    for i in 0..N {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path(&name(i)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf == vec![i as u8; 4096], "{}", name(i));
    }
    let again = &requests_since(&m, before, N);
    assert_eq!(count_requests(again, "OPEN"), N, "{again:?}");
    assert_eq!(count_requests(again, "READ"), 0, "{again:?}");
    drop(readers);
}

#[test]
fn a_small_file_written_through_another_handle_is_read_fresh() {
    let m = traced_flatfs(&[]);
    small_files(&m);
    let path = m.path(&name(0));
    let reader = std::fs::File::open(&path).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    w.write_all(&[0xAB; 4096]).unwrap();
    drop(w);
    let mut buf = vec![0u8; 4096];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == vec![0xAB; 4096], "the open reader read stale bytes");
    assert!(
        std::fs::read(&path).unwrap() == vec![0xAB; 4096],
        "a new open read stale bytes"
    );
}

#[test]
fn a_small_file_rewritten_beside_the_mount_with_the_same_size_is_read_fresh_at_the_next_open() {
    // Revalidation off for this key's size (it compares sizes only, and the size stays):
    // only the stamp of the value's file tells the next open that the pages are stale.
    let m = traced_flatfs(&[]);
    small_files(&m);
    // By rename, as Kubo and go-ds-flatfs write.
    replace_by_hand(&data_file(&m, &name(0)), &[0xCD; 4096]);
    assert!(
        std::fs::read(m.path(&name(0))).unwrap() == vec![0xCD; 4096],
        "stale pages after a rewrite by rename"
    );
    // In place, the same file.
    let data = data_file(&m, &name(1));
    std::thread::sleep(Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(&[0xEF; 4096], 0).unwrap();
    drop(f);
    assert!(
        std::fs::read(m.path(&name(1))).unwrap() == vec![0xEF; 4096],
        "stale pages after a rewrite in place"
    );
    // And a file nobody changed is still read from the page cache.
    let before = requests(&m).len();
    assert_eq!(sh(&m.mnt, &format!("wc -c < {}", name(2))).trim(), "4096");
    let after = requests(&m);
    assert_eq!(
        count_requests(&after[before..], "READ"),
        0,
        "{:?}",
        &after[before..]
    );
}
