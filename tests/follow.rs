//! The index follows its store: a flatfs directory dsfs did not write (a Kubo repository's
//! `blocks/`), changed by hand before and during a mount, lists and reads without a reindex.
//!
//! Every mount lives in its own temporary directory and is unmounted when the test ends, also
//! when it fails (see `common::Mount`).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Mount, dsfs, eventually, listing, sh};

/// How long a change made beside the mount may take to show (revalidation interval plus the
/// kernel's attribute cache, with room for a loaded machine).
const WAIT: Duration = Duration::from_secs(20);

const SHARDING: &str = "/repo/flatfs/shard/v1/next-to-last/2\n";

/// Kubo's shard of a block file name: the two characters before the last one.
fn shard_of(name: &str) -> &str {
    &name[name.len() - 3..name.len() - 1]
}

/// A flatfs directory laid out by hand the way Kubo lays out `blocks/`.
fn kubo_blocks(root: &Path, blocks: &[(&str, &[u8])]) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("SHARDING"), SHARDING).unwrap();
    fs::write(
        root.join("_README"),
        "a flatfs datastore, written by hand\n",
    )
    .unwrap();
    for (name, value) in blocks {
        put_by_hand(root, name, value);
    }
}

fn put_by_hand(root: &Path, name: &str, value: &[u8]) -> PathBuf {
    let dir = root.join(shard_of(name));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.data"));
    fs::write(&path, value).unwrap();
    path
}

/// A block name in Kubo's alphabet, different for every `i`.
fn block_name(i: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut tail = String::new();
    let mut x = i;
    for _ in 0..4 {
        tail.push(ALPHABET[x % 32] as char);
        x /= 32;
    }
    // The lowest digits last, where the shard is taken from.
    let tail: String = tail.chars().rev().collect();
    format!("CIQA{tail}Q")
}

fn run(args: &[&str]) -> std::process::Output {
    dsfs().args(args).output().unwrap()
}

fn stdout_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dsfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_hand_made_kubo_flatfs_lists_and_reads_with_the_cli_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    kubo_blocks(&blocks, &[("XABC", b"abc value"), ("XDEF", b"")]);
    let spec = format!("flatfs:{}", blocks.display());
    assert_eq!(stdout_ok(&["--store", &spec, "get", "/XABC"]), "abc value");
    assert_eq!(stdout_ok(&["--store", &spec, "ls"]), "/XABC\n/XDEF\n");
    let fsck = stdout_ok(&["--store", &spec, "fsck"]);
    assert!(fsck.contains("consistent"), "{fsck}");
}

#[test]
fn fsck_as_the_first_command_on_a_kubo_flatfs_finds_it_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    kubo_blocks(&blocks, &[("XABC", b"abc value"), ("XDEF", b"")]);
    let spec = format!("flatfs:{}", blocks.display());
    let fsck = stdout_ok(&["--store", &spec, "fsck"]);
    assert!(
        fsck.contains("2 keys in store, 2 in index: consistent"),
        "{fsck}"
    );
}

#[test]
fn a_kubo_flatfs_of_many_shards_lists_and_reads_through_its_first_mount() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let names: Vec<String> = (0..600).map(|i| block_name(i * 7)).collect();
    let values: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("block {i}").into_bytes())
        .collect();
    let list: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    kubo_blocks(&blocks, &list);
    let shards = fs::read_dir(&blocks)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert!(shards > 100, "only {shards} shards");
    let spec = format!("flatfs:{}", blocks.display());
    let m = Mount::with_spec(dir, spec, &[]);
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listing(&m.mnt), expected);
    for (name, value) in names.iter().zip(&values).step_by(37) {
        assert_eq!(&fs::read(m.path(name)).unwrap(), value);
    }
}

#[test]
fn blocks_changed_by_hand_while_unmounted_show_on_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    kubo_blocks(
        &blocks,
        &[("XKEEP", b"kept"), ("XREWR", b"old"), ("XGONE", b"gone")],
    );
    let spec = format!("flatfs:{}", blocks.display());
    let mut m = Mount::with_spec(dir, spec, &[]);
    assert_eq!(listing(&m.mnt), ["XGONE", "XKEEP", "XREWR"]);
    m.umount();
    // Another program works on the directory while dsfs is not running.
    put_by_hand(&blocks, "XADDED", b"added by hand");
    put_by_hand(&blocks, "XREWR", b"rewritten in place, longer");
    fs::remove_file(blocks.join(shard_of("XGONE")).join("XGONE.data")).unwrap();
    m.mount();
    assert_eq!(listing(&m.mnt), ["XADDED", "XKEEP", "XREWR"]);
    assert_eq!(fs::read(m.path("XADDED")).unwrap(), b"added by hand");
    assert_eq!(fs::metadata(m.path("XREWR")).unwrap().size(), 26);
    assert_eq!(
        fs::read(m.path("XREWR")).unwrap(),
        b"rewritten in place, longer"
    );
    assert_eq!(
        fs::metadata(m.path("XGONE")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn blocks_changed_by_hand_during_a_mount_show_within_the_revalidation_interval() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    kubo_blocks(
        &blocks,
        &[("XKEEP", b"kept"), ("XREWR", b"old"), ("XGONE", b"gone")],
    );
    let spec = format!("flatfs:{}", blocks.display());
    let m = Mount::with_spec(dir, spec, &["revalidate=1"]);
    assert_eq!(listing(&m.mnt), ["XGONE", "XKEEP", "XREWR"]);
    assert_eq!(fs::read(m.path("XGONE")).unwrap(), b"gone");
    // A running Kubo adds, rewrites and removes blocks.
    put_by_hand(&blocks, "XNEWA", b"new in a new shard");
    put_by_hand(&blocks, "XNEEP", b"new beside XKEEP");
    // A name the index does not know is asked of the store at once.
    assert_eq!(fs::read(m.path("XNEWA")).unwrap(), b"new in a new shard");
    put_by_hand(&blocks, "XREWR", b"rewritten, longer");
    fs::remove_file(blocks.join(shard_of("XGONE")).join("XGONE.data")).unwrap();
    eventually(WAIT, "the listing follows the directory", || {
        listing(&m.mnt) == ["XKEEP", "XNEEP", "XNEWA", "XREWR"]
    });
    eventually(WAIT, "the rewritten block shows its new size", || {
        fs::metadata(m.path("XREWR")).map(|md| md.size()).ok() == Some(17)
    });
    assert_eq!(fs::read(m.path("XREWR")).unwrap(), b"rewritten, longer");
    // The deleted block is gone, not an I/O error.
    assert_eq!(
        fs::read(m.path("XGONE")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(sh(&m.mnt, "cat XNEEP"), "new beside XKEEP");
}

#[test]
fn a_block_deleted_underneath_an_open_file_reads_as_gone_not_as_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    kubo_blocks(&blocks, &[("XGONE", b"gone soon")]);
    let spec = format!("flatfs:{}", blocks.display());
    let m = Mount::with_spec(dir, spec, &["revalidate=1", "passthrough=off"]);
    let f = fs::File::open(m.path("XGONE")).unwrap();
    fs::remove_file(blocks.join(shard_of("XGONE")).join("XGONE.data")).unwrap();
    let mut buf = [0u8; 16];
    let err = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    drop(f);
    eventually(WAIT, "the deleted block leaves the listing", || {
        listing(&m.mnt).is_empty()
    });
}

#[test]
fn an_index_pointed_at_another_store_is_rebuilt_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    kubo_blocks(&a, &[("XAAA", b"in a")]);
    kubo_blocks(&b, &[("XBBB", b"in b"), ("XBBC", b"also in b")]);
    let index = dir.path().join("index.redb");
    let spec_a = format!("flatfs:{}?index={}", a.display(), index.display());
    let spec_b = format!("flatfs:{}?index={}", b.display(), index.display());
    // An index= file that does not exist yet is built by reindex (a plain command refuses it).
    stdout_ok(&["--store", &spec_a, "reindex"]);
    assert_eq!(stdout_ok(&["--store", &spec_a, "ls"]), "/XAAA\n");
    assert_eq!(stdout_ok(&["--store", &spec_b, "ls"]), "/XBBB\n/XBBC\n");
    assert_eq!(
        stdout_ok(&["--store", &spec_b, "get", "/XBBC"]),
        "also in b"
    );
    assert_eq!(stdout_ok(&["--store", &spec_a, "ls"]), "/XAAA\n");
}

#[test]
fn blocks_added_to_a_repository_by_hand_show_in_its_mount() {
    // The default repository keeps blocks in Kubo's layout under blocks/; a block copied in by
    // hand is found under /blocks.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    stdout_ok(&[
        "--store",
        repo.to_str().unwrap(),
        "put",
        "--create",
        "/notes",
    ]);
    let blocks = repo.join("blocks");
    let name = "CIQBVUKWQH2ATUVJ7JCNZ6YGXC5SQP5QLUUAXJU7MIK7KRX7QWVDEEA";
    put_by_hand(&blocks, name, b"a block from elsewhere");
    let spec = repo.to_string_lossy().into_owned();
    let m = Mount::with_spec(dir, spec, &["revalidate=1"]);
    assert_eq!(
        fs::read(m.path(&format!("blocks/{name}"))).unwrap(),
        b"a block from elsewhere"
    );
    let other = "CIQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB";
    put_by_hand(&blocks, other, b"another");
    eventually(WAIT, "the new block is listed", || {
        listing(&m.path("blocks")).contains(&other.to_owned())
    });
}
