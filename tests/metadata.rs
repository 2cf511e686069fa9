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

/// Creates 200 empty files in `d` and runs `ls -l d`: the requests it sent.
fn ls_l_of_200_files(m: &common::Mount) -> Vec<String> {
    sh(
        &m.mnt,
        "mkdir d && cd d && for i in $(seq 200); do : > f$i; done",
    );
    let before = requests(m).len();
    let listing = sh(&m.mnt, "ls -l d");
    assert_eq!(listing.lines().filter(|l| l.contains(" f")).count(), 200);
    requests(m).split_off(before)
}

#[test]
fn ls_l_with_noxattr_sends_no_request_per_file() {
    let m = traced(&["noxattr"]);
    let ls = ls_l_of_200_files(&m);
    let ls = &ls[..];
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

/// With xattrs on (the default), `ls -l` asks the first file for `security.selinux` and
/// `system.posix_acl_access`, is told the filesystem does not support them (`EOPNOTSUPP`, as
/// ext4 mounted `noacl` on a kernel without SELinux answers) and stops asking: before, each
/// file cost two GETXATTR round trips answered "no such attribute". `user.*` attributes keep
/// working, and `cp -a` into the mount copies them without complaint.
#[test]
fn ls_l_with_xattrs_on_sends_no_getxattr_per_file() {
    let m = traced(&[]);
    let ls = ls_l_of_200_files(&m);
    let ls = &ls[..];
    assert!(
        count_requests(ls, "GETXATTR") <= 4,
        "{} GETXATTR requests for ls -l of 200 files",
        count_requests(ls, "GETXATTR")
    );
    let f = m.path("d/f1");
    for (name, f) in [
        ("system.posix_acl_access", f.clone()),
        // Only a directory has a default ACL.
        ("system.posix_acl_default", m.path("d")),
        ("security.selinux", f.clone()),
    ] {
        assert_eq!(
            py_xattr(&f, &format!("os.getxattr(sys.argv[1], '{name}')")),
            libc::EOPNOTSUPP,
            "getxattr {name}"
        );
        // A valid access ACL with a named user (user::rw-, user:1000:r--, group::r--,
        // mask::rw-, other::r--), so that the kernel's own checks pass and the request
        // reaches the daemon.
        let value = if name.starts_with("system.") {
            "struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, p, i) for t, p, i in \
             [(1, 6, 0xffffffff), (2, 4, 1000), (4, 4, 0xffffffff), (0x10, 6, 0xffffffff), \
             (0x20, 4, 0xffffffff)])"
        } else {
            "b'system_u:object_r:user_home_t:s0'"
        };
        assert_eq!(
            py_xattr(
                &f,
                &format!("import struct; os.setxattr(sys.argv[1], '{name}', {value})")
            ),
            libc::EOPNOTSUPP,
            "setxattr {name}"
        );
    }
    assert_eq!(py_xattr(&f, "os.setxattr(sys.argv[1], 'user.x', b'1')"), 0);
    assert_eq!(
        py_xattr(
            &f,
            "assert os.listxattr(sys.argv[1]) == ['user.x'], os.listxattr(sys.argv[1])"
        ),
        0
    );
    // cp -a from a local file with a user xattr: copied, nothing printed on stderr.
    let src = tempfile::tempdir().unwrap();
    let local = src.path().join("local");
    std::fs::write(&local, b"hello").unwrap();
    assert_eq!(
        py_xattr(&local, "os.setxattr(sys.argv[1], 'user.y', b'2')"),
        0
    );
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&local)
        .arg(m.path("copied"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(
        py_xattr(
            &m.path("copied"),
            "assert os.getxattr(sys.argv[1], 'user.y') == b'2', 'not copied'"
        ),
        0
    );
}
