//! The kernel side of the FUSE protocol on a real mount: which requests the kernel still sends
//! (counted from the daemon's request log) and that what it leaves to the daemon is done, for
//! now the dropping of setuid/setgid that `FUSE_HANDLE_KILLPRIV_V2` hands over.
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::time::Duration;

use common::{Mount, count_requests, dsfs, dsfs_beside, requests, sh, traced};

fn mode_of(m: &Mount, name: &str) -> String {
    sh(&m.mnt, &format!("stat -c %a {name}")).trim().to_owned()
}

/// Runs `script` in the mount as root without CAP_FSETID (the capability that keeps setuid
/// across writes).
fn sh_without_fsetid(m: &Mount, script: &str) {
    sh(
        &m.mnt,
        &format!("setpriv --inh-caps=-fsetid --bounding-set=-fsetid sh -c '{script}'"),
    );
}

/// Runs `script` in the mount as user and group 65534.
fn sh_as_nobody(m: &Mount, script: &str) {
    sh(
        &m.mnt,
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{script}'"),
    );
}

#[test]
fn writes_send_no_getxattr_per_write() {
    let m = traced(&[]);
    sh(&m.mnt, ": > f");
    let before = requests(&m).len();
    sh(
        &m.mnt,
        "dd if=/dev/zero of=f bs=4k count=200 conv=notrunc status=none",
    );
    let after = requests(&m);
    let dd = &after[before..];
    assert!(count_requests(dd, "WRITE") >= 200, "{dd:?}");
    // Without FUSE_HANDLE_KILLPRIV_V2 the kernel asks for security.capability before every
    // write; with it, at most once per inode and attribute refresh.
    assert!(
        count_requests(dd, "GETXATTR") <= 3,
        "{} GETXATTR requests for 200 writes",
        count_requests(dd, "GETXATTR")
    );
}

#[test]
fn write_without_cap_fsetid_drops_setuid_and_setgid_with_group_execute() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "for f in u g nx root; do : > $f; done; chmod 4755 u; chmod 2755 g; chmod 2745 nx; chmod 6755 root",
    );
    sh_without_fsetid(&m, "echo x >> u; echo x >> g; echo x >> nx");
    sh(&m.mnt, "echo x >> root");
    assert_eq!(mode_of(&m, "u"), "755");
    assert_eq!(mode_of(&m, "g"), "755");
    // setgid without group execute is mandatory locking, not a privilege: Linux keeps it.
    assert_eq!(mode_of(&m, "nx"), "2745");
    // root keeps them (CAP_FSETID).
    assert_eq!(mode_of(&m, "root"), "6755");
    // The daemon's view, after the kernel's attribute cache expired.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(mode_of(&m, "u"), "755");
}

#[test]
fn chown_drops_setuid_also_to_the_same_owner() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        ": > f; chmod 6755 f; chown 0:0 f; mkdir d; chmod 2755 d; chown 0:0 d",
    );
    assert_eq!(mode_of(&m, "f"), "755");
    // Directories keep setgid (it decides the group of new entries).
    assert_eq!(mode_of(&m, "d"), "2755");
}

#[test]
fn truncate_and_o_trunc_by_another_user_drop_setuid() {
    let m = traced(&["allow_other"]);
    sh(
        &m.mnt,
        "echo data > t; echo data > o; echo data > keep; chmod 4777 t o keep",
    );
    sh_as_nobody(&m, "truncate -s 1 t; : > o; echo more >> keep");
    assert_eq!(mode_of(&m, "t"), "777");
    assert_eq!(mode_of(&m, "o"), "777");
    assert_eq!(mode_of(&m, "keep"), "777");
    assert_eq!(sh(&m.mnt, "stat -c %s t o").trim(), "1\n0");
    // root truncating keeps setuid, as on Linux.
    sh(&m.mnt, "chmod 4777 t; truncate -s 0 t");
    assert_eq!(mode_of(&m, "t"), "4777");
}

#[test]
fn reading_an_unchanged_file_again_is_served_from_the_page_cache() {
    let m = traced(&[]);
    // Small values live inline in the index: no backing file, so opens are page-cached.
    sh(&m.mnt, "printf hello > f; cat f > /dev/null");
    let before = requests(&m).len();
    assert_eq!(sh(&m.mnt, "cat f"), "hello");
    let after = requests(&m);
    let again = &after[before..];
    assert_eq!(count_requests(again, "OPEN"), 1, "{again:?}");
    assert_eq!(count_requests(again, "READ"), 0, "{again:?}");
}

#[test]
fn a_change_made_underneath_is_read_at_the_next_open() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "printf hello > f; cat f > /dev/null; cat f > /dev/null",
    );
    // The same size, so only the content tells: a kept page cache would still say "hello".
    let src = m.dir.path().join("src");
    std::fs::write(&src, "world").unwrap();
    let out = dsfs()
        .args(["--store", &m.spec, "put", "/f"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sh(&m.mnt, "cat f"), "world");
}

/// Opens `path` read-only with `O_TRUNC`, as pjdfstest's `open::etxtbsy` does.
fn open_rdonly_trunc(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(path)
}

#[test]
fn a_refused_truncating_open_leaves_a_running_program_alone() {
    let m = traced(&[]);
    let prog = m.mnt.join("prog");
    std::fs::copy("/usr/bin/yes", &prog).unwrap();
    sh(&m.mnt, "chmod 755 prog");
    let mut child = std::process::Command::new(&prog)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it run: its code pages are mapped from the file.
    std::thread::sleep(Duration::from_millis(300));
    let err = open_rdonly_trunc(&prog).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY));
    std::thread::sleep(Duration::from_millis(300));
    // `yes` never exits by itself: it must still be running, not killed by SIGBUS.
    let status = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, None, "the running program died");
    let len = std::fs::metadata("/usr/bin/yes").unwrap().len();
    assert_eq!(std::fs::metadata(&prog).unwrap().len(), len);
}

#[test]
fn a_read_only_open_with_o_trunc_truncates_as_on_linux() {
    let m = traced(&[]);
    sh(&m.mnt, "printf hello > f");
    drop(open_rdonly_trunc(&m.mnt.join("f")).unwrap());
    assert_eq!(sh(&m.mnt, "stat -c %s f").trim(), "0");
    // Not only in the kernel's cached attributes: in the store too, after they expire.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sh(&m.mnt, "stat -c %s f; cat f").trim(), "0");
}

#[test]
fn names_and_attributes_only_dsfs_changes_stay_cached_past_a_second() {
    let m = traced(&[]);
    sh(&m.mnt, "printf hello > f; stat f > /dev/null");
    std::thread::sleep(Duration::from_millis(1500));
    let before = requests(&m).len();
    assert_eq!(sh(&m.mnt, "stat -c %s f").trim(), "5");
    let after = requests(&m);
    let again = &after[before..];
    assert_eq!(count_requests(again, "LOOKUP"), 0, "{again:?}");
    assert_eq!(count_requests(again, "GETATTR"), 0, "{again:?}");
}

#[test]
fn a_change_by_the_command_line_is_seen_in_the_mount_when_it_returns() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "printf hello > f; printf old > g; mkdir d; cat f g > /dev/null; ls -l . d > /dev/null",
    );
    let src = m.dir.path().join("src");
    std::fs::write(&src, "hello, world").unwrap();
    let src = src.to_str().unwrap();
    dsfs_beside(&m, &["put", "/f", src]);
    dsfs_beside(&m, &["put", "/d/new", src]);
    dsfs_beside(&m, &["rm", "/g"]);
    // A longer value: stale cached attributes would cut it at 5 bytes.
    assert_eq!(sh(&m.mnt, "cat f"), "hello, world");
    assert_eq!(sh(&m.mnt, "stat -c %s f").trim(), "12");
    assert_eq!(sh(&m.mnt, "cat d/new"), "hello, world");
    assert_eq!(sh(&m.mnt, "ls"), "d\nf\n");
    assert_eq!(
        sh(&m.mnt, "test -e g && echo there || echo gone").trim(),
        "gone"
    );
}

#[test]
fn a_file_written_and_read_back_is_read_from_the_page_cache() {
    let m = traced(&[]);
    sh(&m.mnt, "head -c 4096 /dev/urandom > f");
    let before = requests(&m).len();
    sh(&m.mnt, "cat f > /dev/null");
    let after = requests(&m);
    let again = &after[before..];
    // The write changed the file's modification time; with FUSE_AUTO_INVAL_DATA the kernel
    // dropped the pages it had just written when it saw the new time, and read them again.
    assert_eq!(count_requests(again, "READ"), 0, "{again:?}");
}

#[test]
fn a_reader_holding_the_file_open_sees_a_change_made_beside_the_mount() {
    let m = traced(&[]);
    sh(&m.mnt, "printf hello > f");
    let src = m.dir.path().join("src");
    std::fs::write(&src, "world").unwrap();
    // Same size: only the pages tell. The reader keeps its descriptor across the put.
    let script = format!(
        "import os, subprocess\n\
         fd = os.open('f', os.O_RDONLY)\n\
         assert os.pread(fd, 5, 0) == b'hello'\n\
         subprocess.run([{bin:?}, '--store', {spec:?}, 'put', '/f', {src:?}], check=True)\n\
         print(os.pread(fd, 5, 0).decode(), end='')\n",
        bin = env!("CARGO_BIN_EXE_dsfs"),
        spec = m.spec,
        src = src.to_str().unwrap(),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .current_dir(&m.mnt)
        .env_remove("DSFS_STORE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "world");
}
