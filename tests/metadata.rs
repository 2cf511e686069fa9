//! The metadata path on a real mount: which FUSE requests reach the daemon for `ls -l`, stat
//! and xattrs. The daemon logs every request it gets (fuser's debug log); each test counts
//! them by opcode.
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::path::Path;

use common::{count_requests, requests, sh, traced};

/// The errno of a Python xattr call on `path` (0 when it succeeds).
fn py_xattr(path: &Path, call: &str) -> i32 {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os, sys\ntry:\n    {call}\n    print(0)\nexcept OSError as e:\n    print(e.errno)"
        ))
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn ls_l_with_noxattr_sends_no_request_per_file() {
    let m = traced(&["noxattr"]);
    sh(
        &m.mnt,
        "mkdir d && cd d && for i in $(seq 200); do : > f$i; done",
    );
    let before = requests(&m).len();
    let listing = sh(&m.mnt, "ls -l d");
    assert_eq!(listing.lines().filter(|l| l.contains(" f")).count(), 200);
    let after = requests(&m);
    let ls = &after[before..];
    // The first xattr request of a kind is answered ENOSYS and the kernel answers every later
    // one itself.
    assert!(
        count_requests(ls, "GETXATTR") <= 1,
        "{} GETXATTR requests for ls -l of 200 files",
        count_requests(ls, "GETXATTR")
    );
    assert!(ls.len() < 50, "{} requests for ls -l: {ls:?}", ls.len());
    // user.* attributes are off too, and say so.
    let f = m.path("d/f1");
    assert_eq!(
        py_xattr(&f, "os.setxattr(sys.argv[1], 'user.x', b'1')"),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        py_xattr(&f, "os.getxattr(sys.argv[1], 'user.x')"),
        libc::EOPNOTSUPP
    );
}

#[test]
fn user_xattrs_work_by_default() {
    let m = traced(&[]);
    sh(&m.mnt, ": > f");
    let f = m.path("f");
    assert_eq!(py_xattr(&f, "os.setxattr(sys.argv[1], 'user.x', b'1')"), 0);
    assert_eq!(
        py_xattr(
            &f,
            "assert os.getxattr(sys.argv[1], 'user.x') == b'1', 'wrong value'"
        ),
        0
    );
    assert_eq!(
        py_xattr(&f, "os.getxattr(sys.argv[1], 'user.missing')"),
        libc::ENODATA
    );
}
