//! The `dsfs` command line, run as a user would run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dsfs::spec::{self, OpenMode, StoreSpec};
use dsfs::{Datastore, Key};

fn dsfs(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dsfs"));
    c.arg("--store").arg(store).env_remove("DSFS_STORE");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running dsfs")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn put(store: &Path, key: &str, value: &[u8]) {
    use std::io::Write;
    let mut child = dsfs(store)
        .args(["put", "--create", key])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn put_get_ls_rm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    put(&repo, "/pins/a", b"one");
    put(&repo, "/pins/b", b"two!");
    put(&repo, "/pins", b"the parent holds a value too");
    assert_eq!(ok(dsfs(&repo).args(["get", "/pins/a"])), "one");
    assert_eq!(ok(dsfs(&repo).args(["ls", "/pins"])), "/pins/a\n/pins/b\n");
    let long = ok(dsfs(&repo).args(["ls", "-l", "/"]));
    assert!(long.contains("28 /pins\n"), "{long}");
    assert!(long.contains("4 /pins/b\n"), "{long}");
    assert_eq!(
        ok(dsfs(&repo).args(["ls", "--order", "key-desc", "--limit", "1", "/pins"])),
        "/pins/b\n"
    );
    let stat = ok(dsfs(&repo).args(["stat", "/pins"]));
    assert!(stat.contains("directory with a value"), "{stat}");
    ok(dsfs(&repo).args(["rm", "-r", "/pins"]));
    assert_eq!(ok(dsfs(&repo).args(["ls"])), "");
}

/// `dsfs rm -r "$PREFIX"` with an unset variable, or `dsfs rm -r /`, would delete every key
/// of the store (the repository's blocks too): refused, as GNU rm refuses `/`, unless
/// `--no-preserve-root` says it is meant. Nothing is deleted when any KEY is refused.
#[test]
fn rm_r_of_the_root_is_refused_without_no_preserve_root() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    put(&repo, "/pins/a", b"one");
    put(&repo, "/b", b"two");
    for args in [
        &["rm", "-r", "/"][..],
        &["rm", "-r", ""],
        &["rm", "-r", "//"],
        &["rm", "-r", "/b", "/"],
    ] {
        let out = run(dsfs(&repo).args(args));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--no-preserve-root"), "{err}");
        assert_eq!(ok(dsfs(&repo).arg("ls")), "/b\n/pins/a\n", "{args:?}");
    }
    // Without -r, '/' names the root key alone, which holds no value: nothing to refuse.
    ok(dsfs(&repo).args(["rm", "/"]));
    ok(dsfs(&repo).args(["rm", "-r", "--no-preserve-root", "/"]));
    assert_eq!(ok(dsfs(&repo).arg("ls")), "");
}

#[test]
fn errors_are_one_line_with_a_failing_status() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(dsfs(&repo).arg("init"));
    let out = run(dsfs(&repo).args(["get", "/missing"]));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/missing: no such key"), "{err}");

    let out = run(dsfs(Path::new("bogus:x")).arg("ls"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown store type"));

    // Deleting what is not there is fine, as in go-datastore.
    ok(dsfs(&repo).args(["rm", "/never/was"]));
}

#[test]
fn blocks_are_stored_where_kubo_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let block = dir.path().join("block");
    std::fs::write(&block, [0x0a, 0x02, 0x08, 0x01]).unwrap();
    let cid = ok(dsfs(&repo).args(["put-block", "--create"]).arg(&block));
    assert!(cid.starts_with("bafkrei"), "{cid}");
    assert_eq!(
        ok(dsfs(&repo).args(["ls", "/blocks"])),
        "/blocks/CIQFTFEEHEDF6KLBT32BFAGLXEZL4UWFNWM4LFTLMXQBCERZ6CMLX3Y\n"
    );
    let out = run(dsfs(&repo).args([
        "get",
        "--cid",
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn",
    ]));
    assert!(out.status.success());
    assert_eq!(out.stdout, [0x0a, 0x02, 0x08, 0x01]);
}

#[test]
fn import_copies_a_tree_and_fsck_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
    std::fs::write(src.join("sub/deeper/c"), b"").unwrap();
    ok(dsfs(&repo)
        .args(["import", "--create"])
        .arg(&src)
        .args(["--prefix", "/imp"]));
    assert_eq!(
        ok(dsfs(&repo).args(["ls", "/imp"])),
        "/imp/a.txt\n/imp/sub/b.bin\n/imp/sub/deeper/c\n"
    );
    let out = run(dsfs(&repo).args(["get", "/imp/sub/b.bin"]));
    assert_eq!(out.stdout, [0u8, 1, 2, 255]);
    assert!(ok(dsfs(&repo).arg("fsck")).contains("consistent"));
    let reindexed = ok(dsfs(&repo).arg("reindex"));
    assert_eq!(reindexed, "indexed 3 keys\n");
}

#[test]
fn help_explains_specs() {
    let out = ok(Command::new(env!("CARGO_BIN_EXE_dsfs")).arg("--help"));
    assert!(out.contains("STORE SPECS"), "{out}");
    assert!(out.contains("redb:PATH"), "{out}");
    // A subcommand's help has no STORE SPECS section of its own, so it must not point "below".
    for sub in ["put", "get", "ls", "fsck", "mount"] {
        let out = ok(Command::new(env!("CARGO_BIN_EXE_dsfs")).args([sub, "--help"]));
        assert!(out.contains("--store"), "{out}");
        assert!(!out.contains("STORE SPECS below"), "{out}");
        assert!(out.contains("STORE SPECS in 'dsfs --help'"), "{out}");
    }
}

/// A deterministic pseudo-random source tree: `count` files whose sizes and bytes derive from
/// their number, so the test can tell a complete value from a torn one.
fn make_tree(root: &Path, count: usize) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for i in 0..count {
        let dir = root.join(format!("d{:02}", i % 37));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{i:05}"));
        let len = 1024 + (i * 7919) % (96 * 1024);
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&path, data).unwrap();
        files.push((path, format!("/imp/d{:02}/f{i:05}", i % 37)));
    }
    files
}

/// Kill -9 in the middle of a batched import, several times at different points: after
/// reopening, every key is either absent or complete, and fsck (after its repair) reports the
/// store and index consistent.
#[test]
fn killing_an_import_leaves_every_key_absent_or_complete() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src, 2500);
    // Durable rounds fsync every batch, so the kill lands between committed and uncommitted
    // batches; the grouped round (the default) loses at most the last commit interval.
    let rounds = [(true, 12u64 << 20), (true, 32 << 20), (false, 60 << 20)];
    for (round, (durable, kill_at)) in rounds.into_iter().enumerate() {
        let repo = dir.path().join(format!("repo{round}"));
        let values = repo.join("values.redb");
        let spec_text = if durable {
            format!("dir:{}?durable=true", repo.display())
        } else {
            repo.display().to_string()
        };
        let mut child = dsfs(Path::new(&spec_text))
            .args(["import", "--create"])
            .arg(&src)
            .args(["--prefix", "/imp", "--batch", "40"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait (with a timeout, never a fixed sleep) until the store has grown past the kill
        // point, then kill without warning.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut finished = false;
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                finished = true;
                break;
            }
            let size = std::fs::metadata(&values).map(|m| m.len()).unwrap_or(0);
            if size >= kill_at {
                break;
            }
            assert!(Instant::now() < deadline, "import made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        if !finished {
            child.kill().unwrap();
        }
        child.wait().unwrap();

        // fsck may find the index behind or ahead of the store; --repair fixes it and a second
        // fsck must then pass.
        let first = run(dsfs(&repo).arg("fsck"));
        let first_out = String::from_utf8_lossy(&first.stdout).into_owned();
        ok(dsfs(&repo).args(["fsck", "--repair"]));
        let second = ok(dsfs(&repo).arg("fsck"));
        assert!(
            second.contains(": consistent"),
            "round {round}: {first_out} / {second}"
        );

        let opened = spec::open(
            &StoreSpec::parse(repo.to_str().unwrap()).unwrap(),
            OpenMode::default(),
        )
        .unwrap();
        let mut present = 0;
        for (path, key) in &files {
            let key = Key::new(key);
            match opened.store.get(&key) {
                Ok(v) => {
                    assert_eq!(v, std::fs::read(path).unwrap(), "torn value at {key}");
                    present += 1;
                }
                Err(e) => assert!(e.is_not_found(), "{key}: {e}"),
            }
        }
        let listed = opened
            .store
            .query(dsfs::Query {
                keys_only: true,
                ..Default::default()
            })
            .unwrap()
            .count();
        assert_eq!(
            listed, present,
            "round {round}: the listing matches the values"
        );
        opened.store.close().unwrap();
        eprintln!(
            "round {round} (durable {durable}): killed at {kill_at} bytes (finished: {finished}), {present}/{} keys present",
            files.len()
        );
    }
}
