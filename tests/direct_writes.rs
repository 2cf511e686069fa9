//! `O_DIRECT` writes through a real mount: the daemon writes block-aligned ranges of them to
//! the staging file with `O_DIRECT` too (see `src/datastore/direct.rs`) and everything else
//! buffered. Whatever the mix, the file reads back byte-exact, before and after a remount, and
//! the default repository's recorded hash still matches (`fsck --verify`).

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::{Mount, bytes};

/// Writes that cross the direct path's boundaries: aligned 1 MiB blocks, one 3 MiB write
/// (several FUSE requests of at most `max_write` bytes), unaligned offsets and lengths,
/// buffered writes through a second descriptor that direct writes then cover, and a tail that
/// ends off a block boundary. Returns the expected contents.
fn write_mix(m: &Mount, name: &str) -> Vec<u8> {
    let path = m.path(name);
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("opening with O_DIRECT");
    let buffered = OpenOptions::new().write(true).open(&path).unwrap();
    let mut expect = Vec::new();
    let mut put = |fd: &std::fs::File, at: usize, data: Vec<u8>| {
        fd.write_all_at(&data, at as u64).unwrap();
        if expect.len() < at + data.len() {
            expect.resize(at + data.len(), 0);
        }
        expect[at..at + data.len()].copy_from_slice(&data);
    };
    for i in 0..2 {
        put(&direct, i << 20, bytes(10 + i as u64, 1 << 20));
    }
    put(&direct, 2 << 20, bytes(20, 3 << 20));
    // Buffered bytes, then a direct write over them.
    put(&buffered, (5 << 20) + 100, bytes(21, 5000));
    put(&direct, 5 << 20, bytes(22, 256 << 10));
    // A direct write at an unaligned offset, one of an unaligned length, and a small one.
    put(&direct, (6 << 20) + 3, bytes(23, 200_000));
    put(&direct, 7 << 20, bytes(24, (128 << 10) + 17));
    put(&direct, 8 << 20, bytes(25, 4096));
    // A hole, then a tail off a block boundary.
    put(&direct, 9 << 20, bytes(26, (1 << 20) + 1234));
    direct.sync_all().unwrap();
    drop(buffered);
    drop(direct);
    expect
}

fn check(m: &Mount, name: &str, expect: &[u8]) {
    let got = std::fs::read(m.path(name)).unwrap();
    assert_eq!(got.len(), expect.len(), "{name}: length");
    assert!(got == expect, "{name}: contents differ");
}

#[test]
fn direct_writes_land_byte_exact_on_flatfs() {
    let mut m = Mount::flatfs();
    let expect = write_mix(&m, "DIRECT");
    check(&m, "DIRECT", &expect);
    m.remount();
    check(&m, "DIRECT", &expect);
}

#[test]
fn direct_writes_land_byte_exact_in_the_default_repository() {
    let mut m = Mount::repo();
    let expect = write_mix(&m, "direct");
    // Written in order from offset 0 with O_DIRECT: the recorded hash covers them.
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("inorder"))
        .unwrap();
    let inorder = bytes(30, (4 << 20) + 4096);
    for (i, chunk) in inorder.chunks(1 << 20).enumerate() {
        f.write_all_at(chunk, (i << 20) as u64).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    check(&m, "direct", &expect);
    check(&m, "inorder", &inorder);
    m.umount();
    let out = m.dsfs_store(&["fsck", "--verify"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fsck --verify: {text}");
    m.mount();
    check(&m, "direct", &expect);
    check(&m, "inorder", &inorder);
}

/// Several `O_DIRECT` writers of one committed file at once (the kernel sends their WRITEs in
/// parallel: `FOPEN_PARALLEL_DIRECT_WRITES`), a reader opened without `O_DIRECT` while they
/// write (it must read their bytes, not stale pages), and a reader after they close: every
/// byte is the last one written, before and after a remount.
fn parallel_direct_writers(m: &mut Mount, name: &str) {
    const BLOCK: usize = 4096;
    const BLOCKS: usize = 2048;
    let path = m.path(name);
    let mut expect = bytes(40, BLOCK * BLOCKS);
    std::fs::write(&path, &expect).unwrap();
    let writers: Vec<std::fs::File> = (0..4)
        .map(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .unwrap()
        })
        .collect();
    // Writer `w` owns the blocks `b` with `b % 4 == w` and rewrites each of them twice.
    std::thread::scope(|s| {
        for (w, f) in writers.iter().enumerate() {
            s.spawn(move || {
                for round in 0..2u64 {
                    for b in (w..BLOCKS).step_by(4) {
                        let data = bytes(1000 + round * 10_000 + b as u64, BLOCK);
                        f.write_all_at(&data, (b * BLOCK) as u64).unwrap();
                    }
                }
            });
        }
    });
    for b in 0..BLOCKS {
        expect[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&bytes(11_000 + b as u64, BLOCK));
    }
    // Read while the writers are still open, through an ordinary descriptor.
    let mut got = vec![0u8; expect.len()];
    let reader = OpenOptions::new().read(true).open(&path).unwrap();
    reader.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == expect,
        "{name}: a reader beside O_DIRECT writers read stale bytes"
    );
    // One more direct write after the reader has the file open: it must see that too.
    let last = bytes(50, BLOCK);
    writers[0].write_all_at(&last, 0).unwrap();
    expect[..BLOCK].copy_from_slice(&last);
    reader.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == expect,
        "{name}: an open reader missed a later O_DIRECT write"
    );
    writers[1].sync_all().unwrap();
    drop(reader);
    drop(writers);
    check(m, name, &expect);
    m.remount();
    check(m, name, &expect);
}

#[test]
fn parallel_direct_writers_and_readers_agree_on_flatfs() {
    let mut m = Mount::flatfs();
    parallel_direct_writers(&mut m, "PARALLEL");
}

#[test]
fn parallel_direct_writers_and_readers_agree_in_the_default_repository() {
    let mut m = Mount::repo();
    parallel_direct_writers(&mut m, "parallel");
}

/// A reader opened while a writer of the file is open, after another handle's close committed
/// that writer's writes so far, reads the writer's later writes too. It used to be given the
/// committed file for passthrough (nothing was staged at that moment), and the writer's next
/// writes, staged by the daemon, never reached it. (The close here is what an asynchronous
/// RELEASE of an earlier handle did at random in `parallel_direct_writers`.)
fn reader_after_a_commit_beside_an_open_writer(m: &Mount, name: &str) {
    const SIZE: usize = 1 << 20;
    let path = m.path(name);
    let mut expect = bytes(60, SIZE);
    std::fs::write(&path, &expect).unwrap();
    for direct in [false, true] {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let writer = opts.open(&path).unwrap();
        let one = bytes(61 + direct as u64, 4096);
        writer.write_all_at(&one, 8192).unwrap();
        expect[8192..8192 + 4096].copy_from_slice(&one);
        // Another handle's close (its FLUSH) commits the file with the writer's bytes in it.
        let other = OpenOptions::new().write(true).open(&path).unwrap();
        drop(other);
        let reader = OpenOptions::new().read(true).open(&path).unwrap();
        let mut got = vec![0u8; SIZE];
        reader.read_exact_at(&mut got, 0).unwrap();
        assert!(
            got == expect,
            "{name}: the reader missed the committed write"
        );
        let two = bytes(71 + direct as u64, 4096);
        writer.write_all_at(&two, 0).unwrap();
        expect[..4096].copy_from_slice(&two);
        reader.read_exact_at(&mut got, 0).unwrap();
        assert!(
            got == expect,
            "{name}: a reader opened beside an open writer (O_DIRECT {direct}) missed its later write"
        );
        drop(reader);
        drop(writer);
    }
    check(m, name, &expect);
}

#[test]
fn a_reader_opened_beside_an_open_writer_reads_its_later_writes_on_flatfs() {
    let m = Mount::flatfs();
    reader_after_a_commit_beside_an_open_writer(&m, "BESIDE");
}

#[test]
fn a_reader_opened_beside_an_open_writer_reads_its_later_writes_in_the_default_repository() {
    let m = Mount::repo();
    reader_after_a_commit_beside_an_open_writer(&m, "beside");
}
