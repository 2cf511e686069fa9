//! Writable opens of large files on a real mount: they bypass the kernel's page cache
//! (`FOPEN_DIRECT_IO` with parallel writes, see `src/fs/fuse.rs`), so concurrent writers of one
//! file do not queue on its inode lock for each other's round trips, and shared mappings of
//! them still work (`FUSE_DIRECT_IO_ALLOW_MMAP`).
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::{Mount, count_requests, requests_since, traced_flatfs};

/// Larger than `LARGE_WRITE_MIN` (64 KiB).
const BIG: usize = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// A page written through a read-write handle of a large file and read back twice through it
/// is read from the daemon both times: the handle does not use the page cache. With a
/// page-cached handle the write left the page in the cache and neither read reached the
/// daemon (the old behaviour, under which concurrent buffered writers of one file were
/// serialised on its inode lock).
#[test]
fn a_large_file_opened_for_writing_bypasses_the_page_cache() {
    let m = traced_flatfs(&[]);
    let f = m.path("BIG");
    let mut content = pattern(1, BIG);
    std::fs::write(&f, &content).unwrap();
    let before = requests_since(&m, 0, 1).len();
    let h = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let page = pattern(7, 4096);
    h.write_all_at(&page, 8192).unwrap();
    content[8192..8192 + 4096].copy_from_slice(&page);
    for _ in 0..2 {
        let mut back = vec![0u8; 4096];
        h.read_exact_at(&mut back, 8192).unwrap();
        assert!(back == page, "read back differs");
    }
    drop(h);
    let seen = requests_since(&m, before, 1);
    assert_eq!(count_requests(&seen, "WRITE"), 1, "{seen:?}");
    assert_eq!(count_requests(&seen, "READ"), 2, "{seen:?}");
    assert!(std::fs::read(&f).unwrap() == content, "file differs");
}

/// A small file opened for writing stays page-cached (small files are read from the page
/// cache across opens, see `tests/small_reads.rs`): reading back what was just written
/// through it reaches the daemon no more.
#[test]
fn a_small_file_opened_for_writing_keeps_the_page_cache() {
    let m = traced_flatfs(&[]);
    let f = m.path("SMALL");
    std::fs::write(&f, pattern(2, 8192)).unwrap();
    let before = requests_since(&m, 0, 1).len();
    let h = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let page = pattern(8, 4096);
    h.write_all_at(&page, 4096).unwrap();
    let mut back = vec![0u8; 4096];
    h.read_exact_at(&mut back, 4096).unwrap();
    assert!(back == page);
    drop(h);
    let seen = requests_since(&m, before, 1);
    assert_eq!(count_requests(&seen, "READ"), 0, "{seen:?}");
}

/// A shared writable mapping of a large file opened for reading and writing works (a direct-
/// I/O handle refuses one with ENODEV unless the kernel was told it may map them), its stores
/// reach the file, and a write through the descriptor afterwards is read by later readers.
#[test]
fn a_shared_mapping_of_a_large_file_opened_for_writing_works() {
    let m = Mount::flatfs();
    let f = m.path("MAPPED");
    let mut content = pattern(3, BIG);
    std::fs::write(&f, &content).unwrap();
    let h = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    // SAFETY: a fresh shared mapping of BIG bytes of an open file, unmapped below; nothing
    // else maps or truncates the file meanwhile.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            BIG,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            h.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let map = std::slice::from_raw_parts_mut(p.cast::<u8>(), BIG);
        assert!(map[..4096] == content[..4096], "mapping reads the file");
        map[4096..4101].copy_from_slice(b"hello");
        assert_eq!(libc::msync(p, BIG, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, BIG), 0);
    }
    content[4096..4101].copy_from_slice(b"hello");
    h.write_all_at(b"WORLD", 65536).unwrap();
    content[65536..65541].copy_from_slice(b"WORLD");
    drop(h);
    assert!(std::fs::read(&f).unwrap() == content, "file differs");
}
