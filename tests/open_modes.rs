//! Readers and writers of one file at the same time, through a real mount with kernel
//! passthrough on (the default; the tests run as root, which passthrough needs): every mix
//! works as on ext4.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Mount, sh};

/// Big enough to be a file of its own in the default repository, so that reads of it go
/// through passthrough.
const BIG: usize = 256 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_big_file_open_for_reading_can_be_appended_to() {
    let m = Mount::repo();
    let f = m.path("f");
    let content = pattern(1, BIG);
    std::fs::write(&f, &content).unwrap();
    let mut reader = std::fs::File::open(&f).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .expect("opening for append while a reader is open");
    appender.write_all(b"x\n").unwrap();
    drop(appender);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(head, content[..4096]);
    let mut expected = content.clone();
    expected.extend_from_slice(b"x\n");
    assert_eq!(std::fs::read(&f).unwrap(), expected);
    // The shell's way of saying the same, as the issue reported it.
    sh(
        &m.mnt,
        "exec 3< f; echo y >> f; cat <&3 >/dev/null; exec 3<&-",
    );
    assert_eq!(std::fs::metadata(&f).unwrap().len(), BIG as u64 + 4);
}

#[test]
fn a_big_file_open_for_writing_can_be_opened_for_reading() {
    let m = Mount::repo();
    let f = m.path("f");
    let content = pattern(2, BIG);
    std::fs::write(&f, &content).unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    let data = std::fs::read(&f).expect("reading while a writer is open");
    assert_eq!(data, content);
    writer.write_all(b"HEAD").unwrap();
    let mut reader = std::fs::File::open(&f).expect("opening for reading after a write");
    let mut first = [0u8; 4];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HEAD");
    drop(writer);
    drop(reader);
    // A reader that stays open across commits, and new readers beside it.
    let old_reader = std::fs::File::open(&f).unwrap();
    std::fs::write(&f, pattern(3, BIG)).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), pattern(3, BIG));
    drop(old_reader);
}

/// A `cp` writer and a `cat` reader of one big file in a loop: no open and no read fails.
#[test]
fn a_copying_writer_and_a_reading_loop_never_fail() {
    let m = Mount::repo();
    let f = m.path("f");
    let versions: Vec<Vec<u8>> = (0..2).map(|v| pattern(10 + v as u8, BIG * 4)).collect();
    let sources: Vec<std::path::PathBuf> = (0..2)
        .map(|v| {
            let p = m.dir.path().join(format!("src{v}"));
            std::fs::write(&p, &versions[v]).unwrap();
            p
        })
        .collect();
    std::fs::copy(&sources[0], &f).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let f = f.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                // cp truncates and then writes, as on ext4, so a reader sees some prefix of
                // a version or a mix of two: only errors are wrong.
                if let Err(e) = std::fs::read(&f) {
                    failures.push(format!("read: {e}"));
                }
                reads += 1;
            }
            (reads, failures)
        })
    };
    let mut writer_failures = Vec::new();
    for i in 0..60 {
        if let Err(e) = std::fs::copy(&sources[i % 2], &f) {
            writer_failures.push(format!("copy {i}: {e}"));
        }
    }
    done.store(true, Ordering::Relaxed);
    let (reads, reader_failures) = reader.join().unwrap();
    assert!(
        writer_failures.is_empty() && reader_failures.is_empty(),
        "{} of 60 copies failed, first {:?}; {} of {reads} reads failed, first {:?}",
        writer_failures.len(),
        writer_failures.first(),
        reader_failures.len(),
        reader_failures.first()
    );
}
