//! dsfs mounted for real: std::fs, the shell tools, persistence, concurrency, crashes, fio.
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use common::{Mount, bytes, fio_verify, have_fio, sh};
use dsfs::Datastore;
use dsfs::spec::{self, OpenMode, StoreSpec};

fn errno_of(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

#[test]
fn std_fs_operations_behave_like_posix() {
    let m = Mount::repo();
    let f = m.path("hello.txt");
    fs::write(&f, b"hello world").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    assert_eq!(fs::metadata(&f).unwrap().len(), 11);

    // Append, and random-offset writes with a hole, through one handle.
    let mut h = OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b"!").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"hello world!");
    let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    h.write_all_at(b"HELLO", 0).unwrap();
    h.write_all_at(b"end", 100).unwrap();
    // Read-your-writes before the commit, from this handle and from a second one.
    let mut buf = [0u8; 5];
    h.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"HELLO");
    let other = fs::read(&f).unwrap();
    assert_eq!(other.len(), 103);
    assert_eq!(&other[..12], b"HELLO world!");
    assert!(other[12..100].iter().all(|b| *b == 0));
    drop(h);

    // Truncate down and up.
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(5).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"HELLO");
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(8).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"HELLO\0\0\0");
    // O_TRUNC.
    let mut h = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    h.write_all(b"new").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"new");

    // Seek and read back at offsets.
    let mut h = File::open(&f).unwrap();
    h.seek(SeekFrom::Start(1)).unwrap();
    let mut s = String::new();
    h.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ew");

    // Directories.
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno_of(fs::read(m.path("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::create_dir(m.path("d/x/y"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::metadata(m.path("missing"))), libc::ENOENT);
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(fs::read(m.path("e/x")).unwrap(), b"x");
    fs::remove_dir_all(m.path("e")).unwrap();
    assert!(!m.path("e").exists());
    // An emptied directory stays until it is removed.
    fs::create_dir_all(m.path("p/q")).unwrap();
    fs::write(m.path("p/q/f"), b"").unwrap();
    fs::remove_file(m.path("p/q/f")).unwrap();
    assert!(m.path("p/q").is_dir());

    // Exclusive create, long names, hard links.
    assert_eq!(
        errno_of(OpenOptions::new().write(true).create_new(true).open(&f)),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(fs::write(m.path(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    fs::write(m.path(&"n".repeat(255)), b"ok").unwrap();
    fs::hard_link(&f, m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.path("hard")).unwrap(), fs::read(&f).unwrap());
    fs::remove_file(m.path("hard")).unwrap();

    // Symlinks, modes, times.
    std::os::unix::fs::symlink("hello.txt", m.path("link")).unwrap();
    assert_eq!(
        fs::read_link(m.path("link")).unwrap(),
        Path::new("hello.txt")
    );
    assert_eq!(fs::read(m.path("link")).unwrap(), b"new");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), when);

    // Renames over existing files replace them atomically.
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert!(!m.path("a").exists());
}

#[test]
fn shell_tools_work_on_the_mount() {
    let m = Mount::repo();
    let root = &m.mnt;
    sh(
        root,
        "mkdir -p src/sub && printf 'one\\n' > src/a.txt && printf 'two\\n' > src/sub/b.txt",
    );
    sh(
        root,
        "touch src/empty && ln -s a.txt src/link && chmod 640 src/a.txt",
    );
    assert_eq!(sh(root, "ls src"), "a.txt\nempty\nlink\nsub\n");
    let long = sh(root, "ls -l src/a.txt");
    assert!(long.starts_with("-rw-r-----"), "{long}");
    sh(
        root,
        "cp -r src copy && mv copy/a.txt copy/moved.txt && rm copy/empty",
    );
    assert_eq!(sh(root, "cat copy/moved.txt copy/sub/b.txt"), "one\ntwo\n");
    assert_eq!(sh(root, "readlink src/link"), "a.txt\n");
    assert_eq!(
        sh(root, "find . -type f | sort"),
        "./copy/moved.txt\n./copy/sub/b.txt\n./src/a.txt\n./src/empty\n./src/sub/b.txt\n"
    );
    assert_eq!(sh(root, "stat -c '%s %F' src/a.txt"), "4 regular file\n");
    assert!(!sh(root, "du -sb src | cut -f1").trim().is_empty());
    assert_eq!(sh(root, "du --apparent-size -b src/a.txt | cut -f1"), "4\n");
    sh(root, "rm -r copy");
    assert_eq!(sh(root, "ls"), "src\n");
    // dd with random offsets and a sparse tail.
    sh(
        root,
        "dd if=/dev/zero of=sparse bs=4k seek=100 count=1 status=none",
    );
    assert_eq!(sh(root, "stat -c %s sparse"), "413696\n");
}

#[test]
fn files_persist_across_remount_and_equal_the_datastore_values() {
    let mut m = Mount::repo();
    fs::create_dir_all(m.path("docs/deep")).unwrap();
    let small = bytes(1, 100);
    let large = bytes(2, 300_000);
    fs::write(m.path("docs/small.bin"), &small).unwrap();
    fs::write(m.path("docs/deep/large.bin"), &large).unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("docs/small.bin")).unwrap(), small);
    assert_eq!(fs::read(m.path("docs/deep/large.bin")).unwrap(), large);
    assert!(m.path("docs/deep").is_dir());
    m.umount();
    let opened = spec::open(&StoreSpec::parse(&m.spec).unwrap(), OpenMode::default()).unwrap();
    assert_eq!(opened.store.get(&"/docs/small.bin".into()).unwrap(), small);
    assert_eq!(
        opened.store.get(&"/docs/deep/large.bin".into()).unwrap(),
        large
    );
    let keys: Vec<String> = opened
        .store
        .query(dsfs::Query {
            keys_only: true,
            ..Default::default()
        })
        .unwrap()
        .map(|e| e.unwrap().key.into_string())
        .collect();
    assert_eq!(keys, ["/docs/deep/large.bin", "/docs/small.bin"]);
}

#[test]
fn datastore_keys_appear_as_files_and_values_with_children_stay_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("repo").to_string_lossy().into_owned();
    {
        let create = OpenMode {
            create: true,
            ..OpenMode::default()
        };
        let opened = spec::open(&StoreSpec::parse(&spec).unwrap(), create).unwrap();
        opened.store.put(&"/pins".into(), b"parent value").unwrap();
        opened.store.put(&"/pins/a".into(), b"child").unwrap();
        opened
            .store
            .put(&"/odd/x\0y".into(), b"nul in a key")
            .unwrap();
        opened.store.close().unwrap();
    }
    let m = Mount::with_spec(dir, spec, &[]);
    assert_eq!(fs::read(m.path("pins/a")).unwrap(), b"child");
    assert_eq!(
        fs::read(m.path("pins/.dsfs.value")).unwrap(),
        b"parent value"
    );
    assert_eq!(sh(&m.mnt, "ls -A pins"), ".dsfs.value\na\n");
    assert_eq!(sh(&m.mnt, "ls -A odd"), ".dsfs.esc.x%00y\n");
    assert_eq!(
        fs::read(m.path("odd/.dsfs.esc.x%00y")).unwrap(),
        b"nul in a key"
    );
    fs::write(m.path("pins/.dsfs.value"), b"rewritten").unwrap();
    assert_eq!(fs::read(m.path("pins/.dsfs.value")).unwrap(), b"rewritten");
    fs::remove_file(m.path("pins/.dsfs.value")).unwrap();
    assert!(!m.path("pins/.dsfs.value").exists());
    assert_eq!(fs::read(m.path("pins/a")).unwrap(), b"child");
}

#[test]
fn renaming_a_directory_with_many_children_moves_every_value() {
    let mut m = Mount::repo();
    fs::create_dir_all(m.path("big/sub")).unwrap();
    for i in 0..1000 {
        let rel = if i % 10 == 0 {
            format!("big/sub/f{i}")
        } else {
            format!("big/f{i}")
        };
        fs::write(m.path(&rel), format!("value {i}")).unwrap();
    }
    fs::write(m.path("big/large"), bytes(9, 200_000)).unwrap();
    fs::rename(m.path("big"), m.path("moved")).unwrap();
    assert!(!m.path("big").exists());
    assert_eq!(fs::read_dir(m.path("moved")).unwrap().count(), 902);
    assert_eq!(
        fs::read_to_string(m.path("moved/sub/f10")).unwrap(),
        "value 10"
    );
    m.umount();
    let opened = spec::open(&StoreSpec::parse(&m.spec).unwrap(), OpenMode::default()).unwrap();
    assert_eq!(
        opened.store.get(&"/moved/f999".into()).unwrap(),
        b"value 999"
    );
    assert_eq!(
        opened.store.get(&"/moved/large".into()).unwrap(),
        bytes(9, 200_000)
    );
    assert!(!opened.store.has(&"/big/f1".into()).unwrap());
    let under_old = opened
        .store
        .query(dsfs::Query::prefix("/big"))
        .unwrap()
        .count();
    assert_eq!(under_old, 0);
}

#[test]
fn concurrent_writers_and_readers_are_correct() {
    let m = Arc::new(Mount::repo());
    let shared = m.path("shared.bin");
    let shared_bytes = bytes(77, 1 << 20);
    fs::write(&shared, &shared_bytes).unwrap();
    let mut threads = Vec::new();
    for t in 0..8u64 {
        let m = m.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..20u64 {
                let p = m.path(&format!("w{t}-{i}"));
                let data = bytes(t * 1000 + i, 1000 + (i as usize) * 3000);
                fs::write(&p, &data).unwrap();
                assert_eq!(fs::read(&p).unwrap(), data);
            }
        }));
    }
    for _ in 0..4 {
        let shared = shared.clone();
        let expect = shared_bytes.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..10 {
                assert_eq!(fs::read(&shared).unwrap(), expect);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8u64 {
        for i in 0..20u64 {
            let data = bytes(t * 1000 + i, 1000 + (i as usize) * 3000);
            assert_eq!(fs::read(m.path(&format!("w{t}-{i}"))).unwrap(), data);
        }
    }
}

#[test]
fn a_flatfs_mount_shows_block_names_unchanged() {
    // An upstream-layout directory built by hand, not by dsfs.
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    fs::create_dir_all(blocks.join("X3")).unwrap();
    fs::write(
        blocks.join("SHARDING"),
        "/repo/flatfs/shard/v1/next-to-last/2\n",
    )
    .unwrap();
    let name = "CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y";
    fs::write(
        blocks.join(format!("X3/{name}.data")),
        [0x0a, 0x02, 0x08, 0x01],
    )
    .unwrap();
    // The index is built from the directory on first use.
    let spec = format!("flatfs:{}", blocks.display());
    let out = common::dsfs()
        .args(["--store", &spec, "reindex"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let m = Mount::with_spec(dir, spec, &[]);
    assert_eq!(sh(&m.mnt, "ls"), format!("{name}\n"));
    assert_eq!(fs::read(m.path(name)).unwrap(), [0x0a, 0x02, 0x08, 0x01]);
    // A new block written through the mount lands where Kubo looks for it.
    fs::write(
        m.path("CIQBVUKWQH2ATUVJ7JCNZ6YGXC5SQP5QLUUAXJU7MIK7KRX7QWVDEEA"),
        b"blk",
    )
    .unwrap();
    assert_eq!(
        fs::read(blocks_path(
            &m,
            "EE/CIQBVUKWQH2ATUVJ7JCNZ6YGXC5SQP5QLUUAXJU7MIK7KRX7QWVDEEA.data"
        ))
        .unwrap(),
        b"blk"
    );
    // Names flatfs cannot hold are refused clearly.
    assert_eq!(errno_of(fs::write(m.path("lowercase"), b"")), libc::EINVAL);
}

fn blocks_path(m: &Mount, rel: &str) -> std::path::PathBuf {
    m.dir.path().join("blocks").join(rel)
}

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let d = root.join(format!("d{}/e{}", i % 20, i % 7));
        fs::create_dir_all(&d).unwrap();
        if i % 3 == 0 {
            fs::write(
                d.join(format!("text{i}.txt")),
                format!("line {i}\n").repeat(i % 50 + 1),
            )
            .unwrap();
        } else {
            fs::write(
                d.join(format!("bin{i}")),
                bytes(i as u64, (i * 37) % 70_000),
            )
            .unwrap();
        }
    }
}

#[test]
fn cp_r_of_2000_files_round_trips_also_after_remount() {
    let mut m = Mount::repo();
    let src = m.dir.path().join("src");
    tree(&src, 2000);
    sh(m.dir.path(), &format!("cp -r src {}/tree", m.mnt.display()));
    sh(
        m.dir.path(),
        &format!("diff -r src {}/tree", m.mnt.display()),
    );
    m.remount();
    sh(
        m.dir.path(),
        &format!("diff -r src {}/tree", m.mnt.display()),
    );
    sh(
        m.dir.path(),
        &format!("cp -r {}/tree back && diff -r src back", m.mnt.display()),
    );
}

/// `kill -9` of the daemon while files are being written: after remount every fsynced file is
/// complete, every other file holds its old or its new content, and fsck is consistent.
#[test]
fn kill_9_of_the_daemon_loses_nothing_that_was_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("repo").to_string_lossy().into_owned();
    let mut m = Mount::with_spec(dir, spec, &[]);
    // Old contents, committed and unmounted cleanly.
    for i in 0..40u64 {
        fs::write(
            m.path(&format!("f{i}")),
            bytes(i, 20_000 + i as usize * 5000),
        )
        .unwrap();
    }
    m.umount();
    m.mount_foreground();
    // New contents: even files fsynced, odd files only closed; then a last file left open.
    for i in 0..40u64 {
        let mut f = File::create(m.path(&format!("f{i}"))).unwrap();
        f.write_all(&bytes(1000 + i, 30_000 + i as usize * 7000))
            .unwrap();
        if i % 2 == 0 {
            f.sync_all().unwrap();
        }
    }
    let mut open = File::create(m.path("f0")).unwrap();
    open.write_all(b"partial, never closed").unwrap();
    m.kill9();
    drop(open);
    m.mount();
    for i in 0..40u64 {
        let got = fs::read(m.path(&format!("f{i}"))).unwrap();
        let old = bytes(i, 20_000 + i as usize * 5000);
        let new = bytes(1000 + i, 30_000 + i as usize * 7000);
        if i % 2 == 0 && i != 0 {
            assert_eq!(got, new, "fsynced file f{i} lost its new content");
        } else {
            assert!(
                got == old || got == new,
                "f{i} is torn ({} bytes)",
                got.len()
            );
        }
    }
    m.umount();
    let out = m.dsfs_store(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck after the crash: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The smoke jobs: each pattern is written with verify headers (and read back), then read
/// again by a read job of the same name, which checks every block's header and checksum.
fn fio_smoke(m: &Mount, file_args: &[&str]) {
    if !have_fio() {
        return;
    }
    for (name, write, read, bs) in [
        ("seq", "write", "read", "1M"),
        ("rand", "randwrite", "randread", "4k"),
    ] {
        let bs = format!("--bs={bs}");
        let mut w = vec!["--rw", write, bs.as_str(), "--do_verify=1"];
        w.extend_from_slice(file_args);
        fio_verify(m, name, &w);
        let mut r = vec!["--rw", read, bs.as_str()];
        r.extend_from_slice(file_args);
        fio_verify(m, name, &r);
    }
}

#[test]
fn fio_smoke_with_verify_on_the_default_store() {
    let m = Mount::repo();
    fio_smoke(&m, &["--numjobs=2"]);
}

#[test]
fn fio_smoke_with_verify_on_flatfs() {
    // fio's own file names (`job.0.0`) are not flatfs keys, so the file is named with one in
    // flatfs's alphabet.
    let m = Mount::flatfs();
    fio_smoke(&m, &["--filename=FIOJOB", "--numjobs=1"]);
}

/// A directory removed while a process holds it open still answers `fstat` and `fchmod` on
/// its descriptor (with no links) and lists as empty, as on ext4; its name is gone, and
/// nothing can be made in it. Both ways a directory goes: rmdir, and a rename over it.
#[test]
fn an_open_directory_removed_under_its_descriptor_still_answers_fstat() {
    let m = Mount::repo();
    for how in ["rmdir", "rename"] {
        let d = m.path(how);
        fs::create_dir(&d).unwrap();
        let h = File::open(&d).unwrap();
        if how == "rmdir" {
            fs::remove_dir(&d).unwrap();
        } else {
            fs::create_dir(m.path("other")).unwrap();
            fs::rename(m.path("other"), &d).unwrap();
        }
        let st = h
            .metadata()
            .unwrap_or_else(|e| panic!("fstat after {how}: {e}"));
        assert!(st.is_dir(), "{how}");
        assert_eq!(st.nlink(), 0, "{how}");
        h.set_permissions(fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("fchmod after {how}: {e}"));
        assert_eq!(h.metadata().unwrap().mode() & 0o7777, 0o700, "{how}");
        // Linux itself refuses new entries in a dead directory, and lists it as empty.
        let fd_dir = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&h));
        assert_eq!(fs::read_dir(&fd_dir).unwrap().count(), 0, "{how}");
        assert_eq!(
            errno_of(fs::write(Path::new(&fd_dir).join("x"), b"")),
            libc::ENOENT,
            "{how}"
        );
    }
    assert!(fs::read_dir(m.path("rename")).unwrap().next().is_none());
    assert_eq!(errno_of(fs::metadata(m.path("rmdir"))), libc::ENOENT);
}

/// `mv a b` and back, over and over, while another thread creates, rewrites and removes files
/// in `a/sub` through a descriptor of `sub` (which follows the directory wherever it is): every
/// file written reads back, by name and after a remount, and `fsck` finds the index and the
/// store consistent. Before the subtree guards, files made during a rename were filed under
/// the key the directory had before it, and read as missing (EIO) under the new one.
#[test]
fn files_written_below_a_directory_renamed_back_and_forth_all_read_back() {
    let mut m = Mount::repo();
    fs::create_dir_all(m.path("a/sub")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let (a, b, stop) = (m.path("a"), m.path("b"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while n < 2 || (!stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000) {
                let (from, to) = if n.is_multiple_of(2) {
                    (&a, &b)
                } else {
                    (&b, &a)
                };
                fs::rename(from, to).unwrap();
                n += 1;
            }
            n
        })
    };
    let sub = File::open(m.path("a/sub")).unwrap();
    let at = |name: &str| {
        format!(
            "/proc/self/fd/{}/{name}",
            std::os::fd::AsRawFd::as_raw_fd(&sub)
        )
    };
    let mut kept = std::collections::BTreeMap::new();
    for i in 0..300u64 {
        let name = format!("f{i}");
        let data = bytes(i, 1 + (i as usize * 37) % 9000);
        fs::write(at(&name), &data).unwrap();
        if i % 3 == 2 {
            // Rewrite an earlier file in place and remove another.
            let old = format!("f{}", i - 1);
            let again = bytes(i + 1000, 500);
            fs::write(at(&old), &again).unwrap();
            kept.insert(old, again);
            fs::remove_file(at(&format!("f{}", i - 2))).unwrap();
            kept.remove(&format!("f{}", i - 2));
        }
        kept.insert(name, data);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let renames = renamer.join().unwrap();
    drop(sub);
    assert!(renames > 0);
    let dir = if renames.is_multiple_of(2) {
        "a/sub"
    } else {
        "b/sub"
    };
    let check = |m: &Mount, when: &str| {
        let mut names: Vec<String> = fs::read_dir(m.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = kept.keys().cloned().collect();
        want.sort();
        assert_eq!(
            names, want,
            "{when}: the listing of {dir} ({renames} renames)"
        );
        for (name, data) in &kept {
            match fs::read(m.path(&format!("{dir}/{name}"))) {
                Ok(got) => assert!(got == *data, "{when}: {name} differs ({renames} renames)"),
                Err(e) => panic!("{when}: {name}: {e} ({renames} renames)"),
            }
        }
    };
    check(&m, "mounted");
    m.remount();
    check(&m, "after a remount");
    m.umount();
    let fsck = m.dsfs_store(&["fsck"]);
    let out =
        String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
    assert!(
        fsck.status.success() && out.contains("consistent"),
        "fsck after {renames} renames: {out}"
    );
}
