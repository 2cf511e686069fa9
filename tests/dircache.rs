//! Directory listings and changes made beside the mount. Every change the command line or
//! revalidation makes drops the kernel's cached names and listings it changed, so a listing is
//! never stale, whatever changed it. And listings are not kept by the kernel across opens
//! (no `FUSE_NO_OPENDIR_SUPPORT`, no `FOPEN_CACHE_DIR`): `ls -l` must get attributes with
//! its listing (READDIRPLUS), not look up every entry (see `opendir` in `src/fs/fuse.rs`).
//!
//! Every test mounts in its own temporary directory and unmounts when it ends, also when it
//! fails (see `common::Mount`).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{
    count_requests, dsfs_beside, eventually, listing, requests, sh, traced, traced_flatfs,
};

/// How long a change made beside the mount may take to show (revalidation interval plus the
/// kernel's attribute cache, with room for a loaded machine).
const WAIT: Duration = Duration::from_secs(20);

/// How many of `reqs` list a directory.
fn readdirs(reqs: &[String]) -> usize {
    count_requests(reqs, "READDIR") + count_requests(reqs, "READDIRPLUS")
}

/// `ls -l` of a directory whose entries' timeouts have expired gets their attributes with the
/// listing (READDIRPLUS), also when the directory was listed just before. With
/// `FUSE_NO_OPENDIR_SUPPORT` the kernel served the second listing from its cache, without
/// attributes, and `ls -l` sent a LOOKUP per entry (about 1,900 here).
#[test]
fn ls_l_after_the_entry_timeouts_expire_sends_no_lookup_per_entry() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "mkdir d && cd d && for i in $(seq 2000); do : > f$i; done",
    );
    std::thread::sleep(dsfs::fs::fuse::PRIVATE_TTL + Duration::from_secs(2));
    sh(&m.mnt, "ls -f d > /dev/null");
    let before = requests(&m).len();
    let long = sh(&m.mnt, "ls -l d");
    assert_eq!(long.lines().count(), 2001, "{long}");
    let after = requests(&m);
    let ls = &after[before..];
    assert!(
        count_requests(ls, "LOOKUP") < 100,
        "{} LOOKUP requests for ls -l of 2,000 entries",
        count_requests(ls, "LOOKUP")
    );
    assert!(readdirs(ls) > 0, "the listing came from the kernel's cache");
}

/// A listing the kernel holds shows what the command line puts beside the mount, and drops what
/// it removes, as soon as the command returns: the key's own directory, implied directories
/// made or pruned by the change, and the other names (hard links) of a removed value.
#[test]
fn a_cached_listing_follows_the_command_line() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "mkdir d b && printf x > d/old && printf y > d/f && ln d/f b/g",
    );
    let src = m.dir.path().join("src");
    fs::write(&src, "hello").unwrap();
    let src = src.to_str().unwrap();
    // Listed (and so cached) before each change.
    assert_eq!(listing(&m.mnt), ["b", "d"]);
    assert_eq!(listing(&m.path("d")), ["f", "old"]);
    assert_eq!(listing(&m.path("b")), ["g"]);
    assert_eq!(listing(&m.mnt), ["b", "d"]);
    assert_eq!(listing(&m.path("d")), ["f", "old"]);

    dsfs_beside(&m, &["put", "/d/new", src]);
    assert_eq!(listing(&m.path("d")), ["f", "new", "old"]);
    dsfs_beside(&m, &["rm", "/d/old"]);
    assert_eq!(listing(&m.path("d")), ["f", "new"]);
    // A key two levels down implies two directories, one in the root.
    dsfs_beside(&m, &["put", "/x/y/z", src]);
    assert_eq!(listing(&m.mnt), ["b", "d", "x"]);
    assert_eq!(listing(&m.path("x")), ["y"]);
    assert_eq!(listing(&m.path("x/y")), ["z"]);
    // Its removal prunes them again.
    dsfs_beside(&m, &["rm", "/x/y/z"]);
    assert_eq!(listing(&m.mnt), ["b", "d"]);
    // A value removed beside the mount takes all its names: b's listing changes too.
    dsfs_beside(&m, &["rm", "/d/f"]);
    assert_eq!(listing(&m.path("d")), ["new"]);
    assert_eq!(listing(&m.path("b")), Vec::<String>::new());
}

/// A listing the kernel holds shows renames into the directory and hard links made in it, and
/// drops names renamed or unlinked out of it (changes through the mount).
#[test]
fn a_cached_listing_follows_renames_and_links_through_the_mount() {
    let m = traced(&[]);
    sh(
        &m.mnt,
        "mkdir d e && printf a > a && printf b > b && : > d/x",
    );
    assert_eq!(listing(&m.path("d")), ["x"]);
    assert_eq!(listing(&m.path("e")), Vec::<String>::new());
    sh(&m.mnt, "mv a d/a2 && ln b d/b2");
    assert_eq!(listing(&m.path("d")), ["a2", "b2", "x"]);
    assert_eq!(listing(&m.mnt), ["b", "d", "e"]);
    sh(&m.mnt, "mv d/x e/x && rm d/b2");
    assert_eq!(listing(&m.path("d")), ["a2"]);
    assert_eq!(listing(&m.path("e")), ["x"]);
    // A directory renamed into another keeps its listing.
    sh(&m.mnt, "mv e d/e");
    assert_eq!(listing(&m.path("d")), ["a2", "e"]);
    assert_eq!(listing(&m.path("d/e")), ["x"]);
}

/// The value of a block file named `name` in a flatfs directory `root` (next-to-last/2),
/// written the way another program would.
fn put_by_hand(root: &Path, name: &str, value: &[u8]) -> std::path::PathBuf {
    let shard = &name[name.len() - 3..name.len() - 1];
    let dir = root.join(shard);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.data"));
    fs::write(&path, value).unwrap();
    path
}

/// A listing the kernel holds of a followed store shows a value another program adds and drops
/// one it removes, once revalidation finds them.
#[test]
fn a_cached_listing_follows_revalidation() {
    let m = traced_flatfs(&["revalidate=1"]);
    let blocks = m.dir.path().join("blocks");
    sh(&m.mnt, "printf a > KEEPX");
    assert_eq!(listing(&m.mnt), ["KEEPX"]);
    assert_eq!(listing(&m.mnt), ["KEEPX"]);
    let added = put_by_hand(&blocks, "ADDEDX", b"by hand");
    eventually(WAIT, "the added value is listed", || {
        listing(&m.mnt) == ["ADDEDX", "KEEPX"]
    });
    fs::remove_file(&added).unwrap();
    eventually(WAIT, "the removed value leaves the listing", || {
        listing(&m.mnt) == ["KEEPX"]
    });
    // A value looked up by name before revalidation found it is indexed by the lookup, and
    // the listing the kernel holds shows it.
    assert_eq!(listing(&m.mnt), ["KEEPX"]);
    put_by_hand(&blocks, "LOOKEDX", b"by hand");
    assert_eq!(fs::read(m.path("LOOKEDX")).unwrap(), b"by hand");
    eventually(WAIT, "the looked-up value is listed", || {
        listing(&m.mnt) == ["KEEPX", "LOOKEDX"]
    });
}
