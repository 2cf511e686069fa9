//! Nothing outside a store is reachable through it: symlinks (and other file types) planted
//! where a store keeps its files are reported and refused, never followed, through the
//! datastore API, the CLI and a mount.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{Mount, dsfs};
use dsfs::backend::flatfs::{FlatFsOptions, FlatFsStore, ShardFn};
use dsfs::datastore::{Datastore, Key};

const SECRET: &[u8] = b"root:secret-hash:19000:0:99999:7:::\n";

/// A file outside every store, standing in for `/etc/shadow`.
fn secret(dir: &Path) -> PathBuf {
    let p = dir.join("shadow");
    std::fs::write(&p, SECRET).unwrap();
    p
}

fn flatfs(root: &Path) -> FlatFsStore {
    FlatFsStore::create_or_open(
        root,
        ShardFn::parse("/repo/flatfs/shard/v1/next-to-last/2").unwrap(),
        FlatFsOptions::default(),
    )
    .unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_symlinked_flatfs_block_file_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let target = secret(dir.path());
    let root = dir.path().join("blocks");
    {
        let store = flatfs(&root);
        store.put(&Key::new("/REAL"), b"real").unwrap();
    }
    std::fs::create_dir_all(root.join("AD")).unwrap();
    symlink(&target, root.join("AD/SHADX.data")).unwrap();
    let store = flatfs(&root);
    let key = Key::new("/SHADX");
    let err = store.get(&key).unwrap_err();
    assert!(!err.is_not_found() || !err.to_string().contains("root:"));
    let mut buf = vec![0u8; 64];
    assert!(store.read_at(&key, 0, &mut buf).is_err());
    assert!(store.open_backing(&key).is_err());
    assert!(store.get_size(&key).is_err());
    let problems = store.scrub(false).unwrap();
    assert!(
        problems.iter().any(|p| p.contains("SHADX.data")),
        "{problems:?}"
    );
    assert_eq!(store.get(&Key::new("/REAL")).unwrap(), b"real");
    drop(store);
    let out = dsfs()
        .arg("--store")
        .arg(format!("flatfs:{}", root.display()))
        .args(["get", "/SHADX"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "dsfs get served a symlink");
    assert!(!stdout_of(&out).contains("root:"));
}

#[test]
fn a_symlinked_flatfs_shard_directory_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("KEYZZX.data"), SECRET).unwrap();
    let root = dir.path().join("blocks");
    drop(flatfs(&root));
    symlink(&outside, root.join("ZZ")).unwrap();
    let store = flatfs(&root);
    let key = Key::new("/KEYZZX");
    assert!(store.get(&key).is_err());
    let mut buf = vec![0u8; 64];
    assert!(store.read_at(&key, 0, &mut buf).is_err());
    assert!(store.open_backing(&key).is_err());
    let problems = store.scrub(false).unwrap();
    assert!(problems.iter().any(|p| p.contains("ZZ")), "{problems:?}");
    // Nor is anything written through it.
    assert!(store.put(&Key::new("/OTHERZZY"), b"x").is_err());
    assert!(!outside.join("OTHERZZY.data").exists());
}

/// The large-value files of the default repository (`data/files/`).
fn tiered_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![repo.join("data/files")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if t.is_dir() && !name.starts_with('.') {
                dirs.push(e.path());
            } else if t.is_file() && name.ends_with(".data") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_symlinked_tiered_file_is_refused_through_the_cli_and_named_by_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let target = secret(dir.path());
    let repo = dir.path().join("repo");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![7u8; 200 << 10]).unwrap();
    let out = dsfs()
        .arg("--store")
        .arg(&repo)
        .args(["put", "--create", "/big"])
        .arg(&big)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let files = tiered_files(&repo);
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::remove_file(&files[0]).unwrap();
    symlink(&target, &files[0]).unwrap();
    let out = dsfs()
        .arg("--store")
        .arg(&repo)
        .args(["get", "/big"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "dsfs get served a symlink");
    assert!(!stdout_of(&out).contains("root:"));
    let out = dsfs()
        .arg("--store")
        .arg(&repo)
        .arg("fsck")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        stdout_of(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "fsck passed: {said}");
    assert!(said.contains("symlink"), "{said}");
}

#[test]
fn a_symlink_planted_in_a_mounted_store_is_never_served() {
    let mut m = Mount::flatfs();
    let target = secret(m.dir.path());
    std::fs::write(m.path("SHADX"), b"an ordinary block").unwrap();
    let mut repo = Mount::repo();
    std::fs::write(repo.path("big"), vec![1u8; 200 << 10]).unwrap();
    m.umount();
    repo.umount();
    let block = m.dir.path().join("blocks/AD/SHADX.data");
    std::fs::remove_file(&block).unwrap();
    symlink(&target, &block).unwrap();
    let files = tiered_files(&repo.dir.path().join("repo"));
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::remove_file(&files[0]).unwrap();
    symlink(&target, &files[0]).unwrap();
    m.mount();
    repo.mount();
    for path in [m.path("SHADX"), repo.path("big")] {
        match std::fs::read(&path) {
            Ok(data) => assert!(
                !data.starts_with(b"root:"),
                "{} served the symlink's target",
                path.display()
            ),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENOENT)),
                "{}: {e}",
                path.display()
            ),
        }
    }
}
