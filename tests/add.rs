//! `dsfs add`: files and trees imported as `ipfs add` imports them, blocks where Kubo keeps
//! them. The CIDs are those the reference UnixFS importer printed for the same bytes.

mod common;

use std::path::Path;

use common::dsfs;

/// The bytes of the reference cases: `(i * 31 + i / 7) % 251`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 7) % 251) as u8).collect()
}

fn run_raw(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = dsfs().arg("--store").arg(repo).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run(repo: &Path, args: &[&str]) -> String {
    String::from_utf8(run_raw(repo, args)).unwrap()
}

#[test]
fn add_prints_kubos_cids_and_stores_the_blocks_in_kubos_layout() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    run(&repo, &["init"]);
    let file = dir.path().join("one-chunk-and-a-byte");
    std::fs::write(&file, pattern(262_145)).unwrap();
    let out = run(&repo, &["add", file.to_str().unwrap()]);
    assert_eq!(
        out,
        "added Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k one-chunk-and-a-byte\n"
    );
    // Two leaves and their parent, each a flatfs file in Kubo's next-to-last/2 layout.
    let keys = run(&repo, &["ls", "/blocks"]);
    assert_eq!(keys.lines().count(), 3, "{keys}");
    for key in keys.lines() {
        let name = key.trim_start_matches("/blocks/");
        let shard = &name[name.len() - 3..name.len() - 1];
        assert!(
            repo.join("blocks")
                .join(shard)
                .join(format!("{name}.data"))
                .is_file(),
            "{key} is not at blocks/{shard}/{name}.data"
        );
    }
    // The root block reads back by its CID: a dag-pb node, links first.
    let root = run_raw(
        &repo,
        &[
            "get",
            "--cid",
            "Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k",
        ],
    );
    assert_eq!(root.first(), Some(&0x12), "{root:?}");

    // Read back by CID, whole and identical.
    let back = run_raw(
        &repo,
        &["cat", "Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k"],
    );
    assert!(back == pattern(262_145), "cat returned other bytes");

    // CIDv1 implies raw leaves, as in Kubo.
    let out = run(
        &repo,
        &["add", "-Q", "--cid-version", "1", file.to_str().unwrap()],
    );
    assert_eq!(
        out,
        "bafybeidn25kwxb3gpgk4pzssema7rdojcgpkfuodw77eprnrzcomjgywxi\n"
    );
}

#[test]
fn add_r_gives_a_tree_kubos_root_cid_and_only_hash_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    run(&repo, &["init"]);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (name, len) in [
        ("b.txt", 10),
        ("a.bin", 300_000),
        ("sub/c", 0),
        ("sub/d", 1),
        ("Z", 5),
    ] {
        std::fs::write(tree.join(name), pattern(len)).unwrap();
    }
    let out = run(&repo, &["add", "-n", "-r", tree.to_str().unwrap()]);
    assert!(
        out.ends_with("added QmeeGNVuY35wR9vTMcCrz6kk9sytT1vb6QDTZ39EF7d34N tree\n"),
        "{out}"
    );
    assert!(out.contains("added QmP3wS34gr1pvp2jQ2Dp7HcTXnGzXuxt423qpAWdNguCP7 tree/sub\n"));
    assert_eq!(
        run(&repo, &["ls", "/blocks"]),
        "",
        "--only-hash stored blocks"
    );
    let out = run(&repo, &["add", "-q", "-r", tree.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 7, "{out}");
    assert!(!run(&repo, &["ls", "/blocks"]).is_empty());

    // A directory without -r is refused with a hint.
    let out = dsfs()
        .arg("--store")
        .arg(&repo)
        .args(["add", tree.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-r"));
}

/// `user.ipfs.cid` of a file, read as any program would (Python's os.getxattr).
fn xattr_cid(path: &Path) -> Result<String, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.getxattr(sys.argv[1], 'user.ipfs.cid').decode())",
        ])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn files_in_a_mount_carry_their_cid_and_it_follows_writes() {
    let m = common::Mount::repo();
    let f = m.path("data.bin");
    std::fs::write(&f, pattern(262_145)).unwrap();
    assert_eq!(
        xattr_cid(&f).unwrap(),
        "Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k"
    );
    // Asked again: the same, from the cache.
    assert_eq!(
        xattr_cid(&f).unwrap(),
        "Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k"
    );
    // A write changes it.
    std::fs::write(&f, pattern(1)).unwrap();
    assert_eq!(
        xattr_cid(&f).unwrap(),
        "QmS9JArPwa55ePgDnyg6TzX24mYTS1b1vLqWNebyVotKxQ"
    );
    std::fs::write(m.path("empty"), b"").unwrap();
    assert_eq!(
        xattr_cid(&m.path("empty")).unwrap(),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
    // Directories have none; the attribute cannot be set.
    std::fs::create_dir(m.path("dir")).unwrap();
    assert!(xattr_cid(&m.path("dir")).is_err());
    let set = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; os.setxattr(sys.argv[1], 'user.ipfs.cid', b'Qmfake')",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!set.status.success());
    // `dsfs cid` says the same through the daemon, for the key and for a local copy.
    let out = dsfs()
        .args(["--store", &m.spec, "cid", "/data.bin"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "QmS9JArPwa55ePgDnyg6TzX24mYTS1b1vLqWNebyVotKxQ\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `-o ipfs_blocks=on`: a file copied into the mount gets its blocks under `/blocks`, so its
/// `user.ipfs.cid` reads back through `/.ipfs/<CID>` and, after unmounting, from a copy of
/// the repository's `blocks/` alone (as a Kubo repository with nothing else).
#[test]
fn ipfs_blocks_makes_every_committed_file_readable_by_its_cid() {
    let mut m = common::Mount::repo_unmounted();
    m.options.push("ipfs_blocks=on".into());
    m.mount();
    let data = pattern(2 * 262_144 + 99);
    std::fs::write(m.path("f"), &data).unwrap();
    std::fs::write(m.path("small"), b"hello\n").unwrap();
    let cid = xattr_cid(&m.path("f")).unwrap();
    assert_eq!(
        xattr_cid(&m.path("small")).unwrap(),
        "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    );
    let back = std::fs::read(m.path(&format!(".ipfs/{cid}"))).unwrap();
    assert!(back == data, "/.ipfs/{cid} gave other bytes");
    // A file never asked for its CID gets its blocks too (by the background writer).
    std::fs::write(m.path("later"), pattern(1000)).unwrap();
    m.umount();

    let repo = Path::new(&m.spec);
    let kubo = m.dir.path().join("kubo");
    std::fs::create_dir_all(&kubo).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo.join("blocks"))
        .arg(&kubo)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(
        kubo.join("datastore_spec"),
        r#"{"mounts":[{"mountpoint":"/blocks","path":"blocks","shardFunc":"/repo/flatfs/shard/v1/next-to-last/2","type":"flatfs"}],"type":"mount"}"#,
    )
    .unwrap();
    let store = format!("kubo:{}", kubo.display());
    let later = m.dir.path().join("later");
    std::fs::write(&later, pattern(1000)).unwrap();
    let later_cid = run(
        Path::new(&store),
        &["add", "-Q", "--only-hash", later.to_str().unwrap()],
    );
    for (cid, want) in [
        (cid.as_str(), data.clone()),
        (
            "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN",
            b"hello\n".to_vec(),
        ),
        (later_cid.trim(), pattern(1000)),
    ] {
        let out = dsfs()
            .args(["--store", &store, "cat", cid])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == want, "{cid}: other bytes from blocks/ alone");
    }
}
