//! `/.ipfs/<CID>` in a mount: files and trees added with `dsfs add` read back by CID, whole and
//! in ranges; the directory is hidden, read-only, and refuses what is not a CID; a block that
//! does not match its CID is EIO, never returned.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Mount, dsfs};

/// `(i * 31 + i / 7) % 251`, as in `tests/add.rs`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 7) % 251) as u8).collect()
}

/// `dsfs --store repo add --create -Q args...` (the repository may not exist yet): the root CID.
fn add(repo: &str, args: &[&str]) -> String {
    let out = dsfs()
        .arg("--store")
        .arg(repo)
        .args(["add", "--create", "-Q"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "add {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn files_and_trees_read_back_by_cid() {
    let mut m = Mount::repo_unmounted();
    let src = m.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big = pattern(3 * 262_144 + 5);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("sub/hello"), b"hello\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let tree = add(&m.spec, &["-r", src.to_str().unwrap()]);
    let big_v0 = add(&m.spec, &[src.join("big").to_str().unwrap()]);
    let big_v1 = add(
        &m.spec,
        &["--cid-version", "1", src.join("big").to_str().unwrap()],
    );
    m.mount();

    // Hidden from listings, but there.
    let root: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.iter().any(|n| n == ".ipfs"), "{root:?}");
    assert!(m.path(".ipfs").is_dir());
    assert_eq!(std::fs::read_dir(m.path(".ipfs")).unwrap().count(), 0);

    // Whole files, CIDv0 and CIDv1 (raw leaves), identical bytes.
    for cid in [&big_v0, &big_v1] {
        let back = std::fs::read(m.path(&format!(".ipfs/{cid}"))).unwrap();
        assert!(back == big, "{cid}: other bytes");
        let meta = std::fs::metadata(m.path(&format!(".ipfs/{cid}"))).unwrap();
        assert_eq!(meta.len(), big.len() as u64);
    }

    // Ranged reads across leaf boundaries.
    let mut f = std::fs::File::open(m.path(&format!(".ipfs/{big_v0}"))).unwrap();
    for (offset, n) in [(262_140usize, 10usize), (524_288, 4096), (big.len() - 3, 3)] {
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == big[offset..offset + n], "range at {offset}");
    }
    f.seek(SeekFrom::Start(big.len() as u64 - 2)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, big[big.len() - 2..]);
    drop(f);

    // A tree: entries by name, the CID as an xattr.
    let dir = m.path(&format!(".ipfs/{tree}"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "empty", "sub"]);
    assert_eq!(std::fs::read(dir.join("sub/hello")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(dir.join("empty")).unwrap(), b"");
    assert!(std::fs::read(dir.join("big")).unwrap() == big);
    let out = common::sh(
        &m.mnt,
        &format!(
            "python3 -c \"import os; print(os.getxattr('.ipfs/{tree}/sub/hello', 'user.ipfs.cid').decode())\""
        ),
    );
    assert_eq!(out.trim(), "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN");

    // Not a CID, or a CID whose blocks are not here: ENOENT.
    let absent = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for name in ["not-a-cid", absent, "Qm"] {
        assert_eq!(
            errno_of(std::fs::metadata(m.path(&format!(".ipfs/{name}")))),
            Some(libc::ENOENT),
            "{name}"
        );
    }

    // Read-only.
    assert_eq!(
        errno_of(std::fs::write(dir.join("new"), b"x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("sub/hello"))
        ),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::remove_file(dir.join("empty"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.path(".ipfs/x"))),
        Some(libc::EROFS)
    );
    m.umount();
}

#[test]
fn a_block_that_does_not_match_its_cid_is_eio() {
    let mut m = Mount::repo_unmounted();
    let file = m.dir.path().join("f");
    let data = pattern(2 * 262_144);
    std::fs::write(&file, &data).unwrap();
    let cid = add(&m.spec, &["--cid-version", "1", file.to_str().unwrap()]);
    // Flip a byte of the second leaf's block (raw leaves: the block is the chunk itself).
    let second = pattern(2 * 262_144)[262_144..].to_vec();
    let blocks = Path::new(&m.spec).join("blocks");
    let mut hit = None;
    for shard in std::fs::read_dir(&blocks).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if std::fs::read(&f).unwrap() == second {
                hit = Some(f);
            }
        }
    }
    let leaf = hit.expect("the second leaf's block file");
    let mut bad = second.clone();
    bad[100] ^= 1;
    std::fs::write(&leaf, &bad).unwrap();
    m.mount();

    let path = m.path(&format!(".ipfs/{cid}"));
    // The first leaf is intact and reads; the range in the second gives EIO.
    let f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data[..4096]);
    assert_eq!(
        errno_of(f.read_exact_at(&mut buf, 262_144)),
        Some(libc::EIO)
    );
    drop(f);
    assert_eq!(errno_of(std::fs::read(&path)), Some(libc::EIO));
    m.umount();
    let log = std::fs::read_to_string(m.log()).unwrap();
    assert!(log.contains("does not match"), "{log}");
}

/// A directory of 4,097 files with names of 30 bytes (links of 262,208 bytes) is a HAMT shard in Kubo's layout: `dsfs add -r` gives the root
/// CID the reference importer gives, and `/.ipfs/<CID>` lists and opens its entries, as
/// `dsfs cat CID/name` does.
#[test]
fn a_sharded_directory_reads_back_by_cid() {
    let m = Mount::repo_unmounted();
    let src = m.dir.path().join("d");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4097 {
        let name = format!("{i:030}");
        std::fs::write(src.join(&name), name.as_bytes()).unwrap();
    }
    let root = add(&m.spec, &["-r", src.to_str().unwrap()]);
    // ipfs-unixfs-importer 17.1.1 (profile unixfs-v0-2015) for the same names and bytes.
    assert_eq!(root, "QmNcAeqeiYoYHfGWnAvHtG12PgqCz8WRrJT4vJ8sCMbgPC");
    let cat = dsfs()
        .arg("--store")
        .arg(&m.spec)
        .args(["cat", &format!("{root}/{:030}", 4021)])
        .output()
        .unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(cat.stdout, format!("{:030}", 4021).as_bytes());
    m.mount();

    let dir = m.path(&format!(".ipfs/{root}"));
    assert!(dir.is_dir());
    for name in [0, 4096, 2000].map(|i| format!("{i:030}")) {
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), name.as_bytes());
    }
    assert_eq!(
        errno_of(std::fs::metadata(dir.join(format!("{:030}", 4097)))),
        Some(libc::ENOENT)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..4097).map(|i| format!("{i:030}")).collect();
    want.sort();
    assert!(names == want, "{} names listed", names.len());
    assert_eq!(
        errno_of(std::fs::write(dir.join("new"), b"x")),
        Some(libc::EROFS)
    );
}
