//! What a new user meets first: spec mistakes, mount points, names the filesystem cannot
//! show as themselves, key listings, and a quiet log.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Mount, dsfs, have, is_mounted};

fn put(spec: &str, key: &str, value: &[u8]) {
    let mut child = dsfs()
        .args(["--store", spec, "put", "--create", key])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "put {key}");
}

/// Runs `dsfs ARGS` in `dir` with no input.
fn dsfs_in(dir: &Path, args: &[&str]) -> std::process::Output {
    dsfs()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts that `out` succeeded, showing its error output if not.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bare_word_is_a_path_but_a_store_type_without_its_colon_is_questioned() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A bare word is a path, created by --create (as in `dsfs mount --create repo MNT`).
    succeeded(&dsfs_in(dir, &["--store", "repo", "put", "--create", "/k"]));
    assert!(dir.join("repo/dsfs.json").exists());
    let out = dsfs_in(dir, &["--store", "repo", "ls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/k");
    for (word, hint) in [
        ("flatfs", "did you mean flatfs:PATH?"),
        ("mem", "did you mean mem:?"),
    ] {
        for args in [
            &["ls"][..],
            &["put", "--create", "/k"],
            &["get", "/k"],
            &["fsck"],
        ] {
            let out = dsfs_in(dir, &[&["--store", word][..], args].concat());
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(hint), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(!dir.join(word).exists(), "{word} was created");
        }
    }
    // Any other bare word is a path, refused while missing unless the command creates.
    let out = dsfs_in(dir, &["--store", "myrepo", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("did you mean"), "{err}");
    assert!(!dir.join("myrepo").exists());
    // A path is refused too while nothing is there: creating takes `init` or --create.
    let out = dsfs_in(dir, &["--store", "./myrepo", "ls"]);
    assert!(!out.status.success());
    assert!(!dir.join("myrepo").exists());
    succeeded(&dsfs_in(dir, &["--store", "./myrepo", "init"]));
    assert!(dir.join("myrepo/dsfs.json").exists());
}

/// Every entry under `dir`, sorted (to show that a refused command created nothing).
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A mistyped store path (or the default repository on a fresh machine) is refused by every
/// command, with the path and --create in one line, and nothing is created; reading commands
/// do not take --create at all. (Before, each of these created an empty repository or store.)
#[test]
fn a_mistyped_store_path_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("mnt")).unwrap();
    fs::create_dir(d.join("empty")).unwrap();
    fs::write(d.join("file.txt"), b"local").unwrap();
    let home = d.join("home");
    fs::create_dir(&home).unwrap();
    let before = entries(d);
    let specs = [
        ("./typo", "./typo does not exist"),
        ("dir:typo", "typo does not exist"),
        ("flatfs:./typo-flat", "./typo-flat does not exist"),
        ("redb:./typo.redb", "./typo.redb does not exist"),
        ("./empty", "./empty is an empty directory"),
        ("", "home/.local/share/dsfs does not exist"),
    ];
    let commands: &[&[&str]] = &[
        &["ls"],
        &["query", "/x"],
        &["get", "/k"],
        &["stat", "/k"],
        &["fsck"],
        &["fsck", "--repair"],
        &["reindex"],
        &["rm", "/k"],
        &[
            "cat",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        ],
        &["put", "/k", "file.txt"],
        &["put-block", "file.txt"],
        &["add", "file.txt"],
        &["import", "file.txt"],
    ];
    for (spec, what) in specs {
        for args in commands {
            let mut cmd = dsfs();
            cmd.current_dir(d)
                .env("HOME", &home)
                .env_remove("XDG_DATA_HOME");
            if !spec.is_empty() {
                cmd.args(["--store", spec]);
            }
            let out = cmd.args(*args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{spec} {args:?} succeeded");
            assert!(
                err.contains(what) && err.contains("--create"),
                "{spec} {args:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert_eq!(entries(d), before, "{spec} {args:?} created something");
        }
        // Reading commands do not take the flag, so it cannot make them create anything.
        for args in [
            &["ls", "--create"][..],
            &["get", "--create", "/k"],
            &["fsck", "--create"],
        ] {
            let out = dsfs()
                .current_dir(d)
                .args(["--store", if spec.is_empty() { "./typo" } else { spec }])
                .args(args)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{spec} {args:?} succeeded");
            assert_eq!(entries(d), before, "{spec} {args:?} created something");
        }
        // Neither does a mount.
        if !spec.is_empty() {
            let out = dsfs()
                .current_dir(d)
                .args(["mount", spec, "mnt"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "mount {spec} succeeded");
            assert!(!is_mounted(&d.join("mnt")));
            assert!(err.contains(what) && err.contains("--create"), "{err}");
            assert_eq!(entries(d), before, "mount {spec} created something");
        }
    }
    // `cid` of a local file and `add -n` need no store, so a missing one is no error there
    // (and is not created either).
    for args in [&["cid", "file.txt"][..], &["add", "-n", "-Q", "file.txt"]] {
        let out = dsfs()
            .current_dir(d)
            .args(["--store", "./typo"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("Qm"));
        assert_eq!(entries(d), before, "{args:?} created something");
    }
}

/// `dsfs mount --create` makes a missing repository (and -o create an empty directory one);
/// a second --create mount opens the same data, and so does a mount without it.
#[test]
fn mount_create_makes_the_repository_once_and_then_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let repo = d.join("new/repo");
    let mount = |args: &[&str], spec: &Path| {
        let out = dsfs()
            .arg("mount")
            .args(args)
            .arg(spec)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(&mnt));
    };
    let umount = || {
        let out = dsfs().arg("umount").arg(&mnt).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    mount(&["--create"], &repo);
    fs::write(mnt.join("kept.txt"), b"first mount").unwrap();
    umount();
    assert!(repo.join("dsfs.json").exists());
    for args in [&["--create"][..], &[], &["-o", "create"]] {
        mount(args, &repo);
        assert_eq!(fs::read(mnt.join("kept.txt")).unwrap(), b"first mount");
        umount();
    }
    // An empty directory made beforehand becomes a repository with -o create.
    let made = d.join("made");
    fs::create_dir(&made).unwrap();
    mount(&["-o", "create"], &made);
    umount();
    assert!(made.join("dsfs.json").exists());
}

#[test]
fn mounting_over_a_non_empty_directory_needs_nonempty() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("precious.txt"), b"mine").unwrap();
    let out = dsfs().arg("mount").arg(&repo).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("-o nonempty"),
        "{err}"
    );
    assert!(!is_mounted(&fs::canonicalize(&mnt).unwrap()));

    let m = Mount::with_spec(dir, repo.to_string_lossy().into_owned(), &["nonempty"]);
    assert!(is_mounted(&m.mnt));
    assert!(
        !m.path("precious.txt").exists(),
        "the mount hides the directory"
    );
}

#[test]
fn isatty_and_clean_unmounts_leave_the_log_quiet() {
    let mut m = Mount::repo();
    fs::write(m.path("f"), b"data").unwrap();
    // `[ -t 0 ]` is isatty(0): an ioctl on a file in the mount.
    let out = Command::new("sh")
        .arg("-c")
        .arg("i=0; while [ $i -lt 50 ]; do [ -t 0 ] && exit 1; i=$((i+1)); done; exit 0")
        .stdin(fs::File::open(m.path("f")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a file in the mount claimed to be a terminal"
    );
    m.umount();
    let log = fs::read_to_string(m.log()).unwrap_or_default();
    assert!(!log.contains("Not Implemented"), "{log}");
    assert!(!log.contains("umount"), "{log}");
    assert!(
        log.trim().is_empty(),
        "the default log level should print nothing: {log}"
    );
}

#[test]
fn keys_with_over_long_components_are_reachable_through_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_string_lossy().into_owned();
    let long = "k".repeat(300);
    put(&repo, &format!("/docs/{long}"), b"long value");
    put(&repo, "/docs/short", b"short value");
    let m = Mount::with_spec(dir, repo.clone(), &[]);
    let names: Vec<String> = fs::read_dir(m.path("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let shown = names
        .iter()
        .find(|n| n.starts_with(".dsfs.long."))
        .expect("the long key is listed");
    assert!(shown.len() <= 255);
    let path = m.path("docs").join(shown);
    assert_eq!(fs::read(&path).unwrap(), b"long value");
    fs::write(&path, b"rewritten").unwrap();
    fs::rename(&path, m.path("docs/renamed")).unwrap();
    assert_eq!(fs::read(m.path("docs/renamed")).unwrap(), b"rewritten");
    // A long-looking name that matches nothing is not found, and cannot be created.
    let fake = m.path(&format!("docs/.dsfs.long.{}.x", "0".repeat(32)));
    assert!(!fake.exists());
    assert!(fs::write(&fake, b"x").is_err());
}

#[test]
fn ls_escapes_control_characters_and_null_prints_raw_keys() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_string_lossy().into_owned();
    put(&repo, "/a\nb", b"1");
    put(&repo, "/plain", b"2");
    let out = dsfs().args(["--store", &repo, "ls"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "/a\\nb\n/plain\n");
    let out = dsfs()
        .args(["--store", &repo, "ls", "--null"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"/a\nb\0/plain\0");
}

#[test]
fn a_plain_flatfs_mount_says_why_a_name_is_refused_and_encode_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let spec = format!("flatfs:{}", blocks.display());
    let m = Mount::with_spec(dir, spec, &[]);
    let err = fs::write(m.path("notes.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let log = fs::read_to_string(m.log()).unwrap_or_default();
    assert!(log.contains("encode=true"), "the log should say how: {log}");
    drop(m);

    let dir = tempfile::tempdir().unwrap();
    let spec = format!("flatfs:{}?encode=true", dir.path().join("blocks").display());
    let m = Mount::with_spec(dir, spec, &[]);
    fs::write(m.path("notes.txt"), b"hello").unwrap();
    assert_eq!(fs::read(m.path("notes.txt")).unwrap(), b"hello");
    assert!(!Path::new(&m.path("notes.txt")).is_dir());
}

#[test]
fn the_command_line_works_on_a_mounted_store_through_its_daemon() {
    let m = Mount::repo();
    let spec = m.spec.clone();
    // Put through the command line (standard input and a relative file), read in the mount.
    put(&spec, "/notes/a", b"from the cli");
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("b.txt"), b"from a file").unwrap();
    let out = dsfs()
        .current_dir(work.path())
        .args(["--store", &spec, "put", "/notes/b", "b.txt"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(m.path("notes/a")).unwrap(), b"from the cli");
    assert_eq!(fs::read(m.path("notes/b")).unwrap(), b"from a file");

    // Write in the mount, read through the command line.
    fs::write(m.path("notes/c"), b"from the mount").unwrap();
    let cli = |args: &[&str]| {
        let out = dsfs()
            .arg("--store")
            .arg(&spec)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["get", "/notes/c"]), "from the mount");
    assert_eq!(cli(&["ls", "/notes"]), "/notes/a\n/notes/b\n/notes/c\n");
    assert!(cli(&["stat", "/notes/c"]).contains("size:   14"));
    cli(&["rm", "/notes/a"]);
    let gone = std::time::Instant::now();
    while m.path("notes/a").exists() {
        assert!(
            gone.elapsed().as_secs() < 10,
            "removed key still in the mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(cli(&["fsck"]).contains("consistent"));

    // What cannot run beside a mount says where the store is mounted and by whom.
    let out = dsfs().args(["--store", &spec, "reindex"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("mounted at {}", m.mnt.display())) && err.contains("pid"),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    let out = dsfs()
        .arg("mount")
        .arg(&spec)
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("mounted at {}", m.mnt.display())),
        "{err}"
    );
}

/// `dsfs umount` of a mount a process is using says what to do about it, and leaves it mounted.
#[test]
fn a_busy_unmount_says_how_to_find_the_user_and_how_to_detach() {
    let mut m = Mount::repo();
    let mut user = Command::new("sleep")
        .arg("120")
        .current_dir(&m.mnt)
        .spawn()
        .unwrap();
    let out = dsfs().arg("umount").arg(&m.mnt).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    user.kill().unwrap();
    user.wait().unwrap();
    assert!(!out.status.success(), "a busy mount unmounted");
    assert!(is_mounted(&m.mnt));
    assert!(err.contains("busy"), "{err}");
    assert!(err.contains("fuser -vm"), "{err}");
    assert!(err.contains("dsfs umount -l"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    m.umount();
}

/// `dsfs get --cid` of a block the store lacks names the CID, and `-o FILE` leaves no file.
#[test]
fn a_missing_block_is_named_by_its_cid_and_leaves_no_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_string_lossy().into_owned();
    put(&repo, "/other", b"x");
    let cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let target = dir.path().join("out");
    for with_file in [false, true] {
        let mut cmd = dsfs();
        cmd.args(["--store", &repo, "get", "--cid", cid]);
        if with_file {
            cmd.arg("-o").arg(&target);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("no block with CID {cid}")), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    assert!(!target.exists(), "get -o of a missing block left a file");
}

/// Runs dsfs with `args` in `dir`; returns (success, stdout, stderr).
fn run_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = dsfs().current_dir(dir).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mistyped `index=PATH` was a new, empty-of-metadata index built silently at the wrong
/// path (the repository's own index, with its directories and modes, untouched beside it).
/// Now it is refused and nothing is created; `reindex` or --create builds it, with a warning
/// when the store already existed. A flatfs directory without its default index (a Kubo
/// blocks/) still opens as before.
#[test]
fn a_mistyped_index_path_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("file.txt"), b"local").unwrap();
    assert!(run_in(d, &["--store", "./r", "put", "--create", "/a", "file.txt"]).0);
    let before = entries(d);
    let typo = "dir:./r?index=./typo.redb";
    for args in [
        &["ls"][..],
        &["fsck"],
        &["put", "/b", "file.txt"],
        &["get", "/a"],
    ] {
        let (ok, _, err) = run_in(d, &[&["--store", typo][..], args].concat());
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains("no index there: ./typo.redb does not exist")
                && err.contains("reindex")
                && err.contains("--create"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(entries(d), before, "{args:?} created something");
    }
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let before = entries(d);
    let (ok, _, err) = run_in(d, &["mount", typo, "mnt"]);
    assert!(!ok && err.contains("no index there"), "{err}");
    assert!(!is_mounted(&mnt));
    assert_eq!(entries(d), before, "mount created something");
    // --create builds it, and says what a new index of an existing store lacks.
    let (ok, _, err) = run_in(d, &["--store", typo, "put", "--create", "/b", "file.txt"]);
    assert!(ok, "{err}");
    assert!(err.contains("typo.redb") && err.contains("modes"), "{err}");
    // reindex builds one where asked.
    let (ok, _, err) = run_in(d, &["--store", "dir:./r?index=./other.redb", "reindex"]);
    assert!(ok, "{err}");
    assert!(d.join("other.redb").exists());
    // A Kubo blocks/ directory has no index yet: flatfs: opens it and builds one.
    let blocks = d.join("kubo-blocks");
    fs::create_dir(&blocks).unwrap();
    fs::write(
        blocks.join("SHARDING"),
        "/repo/flatfs/shard/v1/next-to-last/2\n",
    )
    .unwrap();
    fs::create_dir(blocks.join("XY")).unwrap();
    fs::write(blocks.join("XY/CIQXYZ.data"), b"block").unwrap();
    let (ok, out, err) = run_in(d, &["--store", "flatfs:./kubo-blocks", "ls"]);
    assert!(ok, "{err}");
    assert_eq!(out, "/CIQXYZ\n");
    assert!(err.is_empty(), "{err}");
}

/// A repository whose blocks/ is gone (deleted, or on a disk that is not mounted) was refused
/// with "no store there ... pass --create", and --create then made an empty blocks/ and the
/// index dropped its keys. Now every command names the missing part and the two ways
/// forward, --create included; `fsck --repair --drop-missing` makes the empty store, keeps
/// the rest of the index and says how many keys it drops.
#[test]
fn a_repository_missing_its_blocks_is_explained_and_only_fsck_drop_missing_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("file.txt"), b"local").unwrap();
    let store = ["--store", "./r"];
    assert!(
        run_in(
            d,
            &[&store[..], &["put", "--create", "/a", "file.txt"]].concat()
        )
        .0
    );
    for _ in 0..2 {
        assert!(run_in(d, &[&store[..], &["put-block", "file.txt"]].concat()).0);
        fs::write(d.join("file.txt"), b"another block").unwrap();
    }
    fs::remove_dir_all(d.join("r/blocks")).unwrap();
    fs::create_dir(d.join("mnt")).unwrap();
    let before = entries(d);
    let commands: &[&[&str]] = &[
        &["ls"],
        &["fsck"],
        &["fsck", "--repair"],
        &["reindex"],
        &["put", "--create", "/b", "file.txt"],
        &["put-block", "--create", "file.txt"],
    ];
    for args in commands {
        let (ok, _, err) = run_in(d, &[&store[..], args].concat());
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains("./r/blocks (the store of the keys under /blocks) does not exist")
                && err.contains("restore it")
                && err.contains("fsck --repair --drop-missing"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(entries(d), before, "{args:?} created something");
    }
    let (ok, _, err) = run_in(d, &["mount", "--create", "./r", "mnt"]);
    assert!(!ok && err.contains("--drop-missing"), "{err}");
    assert!(!is_mounted(&d.join("mnt")));
    assert_eq!(entries(d), before, "mount --create created something");
    // An empty directory in its place (a mount point of a disk that is not mounted).
    fs::create_dir(d.join("r/blocks")).unwrap();
    let (ok, _, err) = run_in(
        d,
        &[&store[..], &["put", "--create", "/b", "file.txt"]].concat(),
    );
    assert!(!ok && err.contains("is an empty directory"), "{err}");
    assert!(fs::read_dir(d.join("r/blocks")).unwrap().next().is_none());
    // --drop-missing needs --repair.
    assert!(!run_in(d, &[&store[..], &["fsck", "--drop-missing"]].concat()).0);
    let (ok, out, err) = run_in(
        d,
        &[&store[..], &["fsck", "--repair", "--drop-missing"]].concat(),
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("the 2 indexed keys it held are dropped"),
        "{out}"
    );
    let (ok, out, err) = run_in(d, &[&store[..], &["fsck"]].concat());
    assert!(ok && out.contains("consistent"), "{out}{err}");
    // The rest of the index was kept, not rebuilt.
    let (ok, out, _) = run_in(d, &[&store[..], &["ls"]].concat());
    assert!(ok);
    assert_eq!(out, "/a\n");
}

/// `mount --create` whose mount then fails leaves nothing behind: the new store goes with the
/// directories made above it, a directory that was empty is emptied again, and the error is
/// one line naming the failure and what was removed. The mount fails because fuser is pointed
/// at a fusermount3 that does not exist (`FUSERMOUNT_PATH`), as on a machine without fuse3's
/// tools: a user other than root mounts only through it (as root, dsfs runs as nobody here).
/// Where /dev/fuse is root's alone, nobody's mount fails earlier, opening it; both are
/// failures of the mount itself, after the store was made. (This test used to fail the mount
/// with -o allow_other, which is now refused before anything is made.) A mount point the user
/// cannot write to is refused before anything is created.
#[test]
fn a_mount_that_fails_after_create_leaves_no_new_store() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !have("setpriv") {
        eprintln!("root without setpriv: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["mnt", "empty", "roots"] {
        fs::create_dir(d.join(name)).unwrap();
    }
    let as_user = |args: &[&str]| {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_dsfs"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_dsfs"))
        };
        let out = cmd
            .args(args)
            .current_dir(d)
            .env_remove("DSFS_STORE")
            .env("FUSERMOUNT_PATH", d.join("no-fusermount3"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    if root {
        let nobody = 65534;
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
        for name in ["mnt", "empty"] {
            std::os::unix::fs::chown(d.join(name), Some(nobody), Some(nobody)).unwrap();
        }
        // Not writable by nobody: refused before the store is made.
        let before = entries(d);
        let (ok, err) = as_user(&["mount", "--create", "./new/repo", "roots"]);
        assert!(!ok);
        assert!(err.contains("no write access"), "{err}");
        assert_eq!(entries(d), before, "a refused mount created something");
    }
    let before = entries(d);
    for (spec, removed) in [
        (
            "./new/repo",
            "./new/repo and the directory made for it: ./new",
        ),
        ("./empty", "./empty (emptied again)"),
        (
            "flatfs:./f/g/blocks",
            "./f/g/blocks and the directories made for it: ./f/g, ./f",
        ),
        ("redb:./h/v.redb", "the directory made for it: ./h"),
    ] {
        let (ok, err) = as_user(&["mount", "--create", spec, "mnt"]);
        assert!(!ok, "{spec} mounted");
        assert!(!is_mounted(&d.join("mnt")));
        assert!(err.contains("mounting"), "{err}");
        assert!(err.contains("removed the new store"), "{err}");
        assert!(err.contains(removed), "{spec}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert_eq!(entries(d), before, "{spec}: {err}");
    }
}

/// `-o allow_other` for a user other than root, where /etc/fuse.conf does not let users ask
/// for it, is refused before mounting with one line naming the fix (before, FUSE's refusal
/// came through as "Permission denied"). Runs only as root with setpriv, to become nobody.
#[test]
fn allow_other_without_user_allow_other_is_refused_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let permitted = conf
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if permitted || !is_root || !have("setpriv") || !have("fusermount3") {
        eprintln!("skipped: needs root, setpriv, fusermount3 and no user_allow_other");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("dsfs");
    fs::copy(env!("CARGO_BIN_EXE_dsfs"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("mount")
        .arg("--create")
        .arg(dir.path().join("repo"))
        .arg(&mnt)
        .args(["-o", "allow_other"])
        .env("HOME", dir.path())
        .env_remove("DSFS_STORE")
        .output()
        .unwrap();
    if is_mounted(&mnt) {
        let _ = Command::new("fusermount3").arg("-u").arg(&mnt).output();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("needs a line user_allow_other in /etc/fuse.conf"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!dir.path().join("repo").exists());
}

/// Root unmounts another user's private mount with `dsfs umount`, which finds that user's
/// daemon and waits for it. The kernel refuses root the root directory of a mount without
/// `allow_root`/`allow_other`, and on the old code `dsfs umount` stopped there: "mount point
/// ...: Permission denied". Runs as root with setpriv, where nobody may open /dev/fuse.
#[test]
fn root_unmounts_another_users_private_mount() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("setpriv") {
        eprintln!("not root or no setpriv: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(d.join("mnt")).unwrap();
    let nobody = 65534;
    std::os::unix::fs::chown(d.join("mnt"), Some(nobody), Some(nobody)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(args)
            .current_dir(d)
            .env_remove("DSFS_STORE")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let bin = env!("CARGO_BIN_EXE_dsfs");
    let mounted = as_nobody(&[bin, "mount", "--create", "./repo", "mnt"]);
    if !mounted.status.success() {
        eprintln!(
            "nobody cannot mount here ({}): skipping",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    // Detaches the mount if an assertion below fails first.
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                let _ = Command::new("fusermount3").arg("-uz").arg(self.0).status();
            }
        }
    }
    let _detach = Detach(&d.join("mnt"));
    let wrote = as_nobody(&["sh", "-c", "echo kept > mnt/f"]);
    assert!(wrote.status.success(), "{wrote:?}");
    let err = fs::metadata(d.join("mnt/f")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let out = dsfs_in(d, &["umount", "mnt"]);
    succeeded(&out);
    assert!(!is_mounted(&d.join("mnt")));
    let got = dsfs_in(d, &["--store", "./repo", "get", "/f"]);
    succeeded(&got);
    assert_eq!(got.stdout, b"kept\n");
}
