//! Damaged files and crash debris: no panic, clear messages, and `fsck --repair` ends with every
//! readable value reachable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, wait_mounted};

const SMALL: usize = 300;
const BIG1: usize = 200_000;
const BIG2: usize = 300_000;

fn dsfs(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dsfs"));
    c.arg("--store").arg(store).env_remove("DSFS_STORE");
    c.env("RUST_BACKTRACE", "1");
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running dsfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{cmd:?} panicked: {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "{cmd:?} printed a panic: {stderr}"
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

/// A repository holding SMALL small values under /s and two file-backed values /big1, /big2.
fn make_repo(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("s")).unwrap();
    for i in 0..SMALL {
        std::fs::write(src.join("s").join(format!("k{i:03}")), format!("small {i}")).unwrap();
    }
    std::fs::write(src.join("big1"), pattern(1, BIG1)).unwrap();
    std::fs::write(src.join("big2"), pattern(2, BIG2)).unwrap();
    let repo = dir.join("repo");
    ok(dsfs(&repo).args(["import", "--create"]).arg(&src));
    repo
}

/// The files of the file tier, with their sizes.
fn blobs(repo: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let files = repo.join("data/files");
    for shard in std::fs::read_dir(&files).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() || shard.file_name().unwrap() == ".temp" {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "data") {
                let len = std::fs::metadata(&p).unwrap().len();
                out.push((p, len));
            }
        }
    }
    out
}

fn blob_of_size(repo: &Path, size: usize) -> PathBuf {
    blobs(repo)
        .into_iter()
        .find(|(_, len)| *len == size as u64)
        .map(|(p, _)| p)
        .expect("the file of a big value")
}

fn garble(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let junk: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all_at(&junk, offset).unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// Every key the repository lists can be read, and reads back what was written.
fn every_listed_value_reads(repo: &Path) -> usize {
    use dsfs::Datastore;
    let spec = dsfs::spec::StoreSpec::parse(repo.to_str().unwrap()).unwrap();
    let opened = dsfs::spec::open(&spec, dsfs::spec::OpenMode::default()).unwrap();
    let keys: Vec<dsfs::Key> = opened
        .store
        .query(dsfs::Query {
            keys_only: true,
            ..Default::default()
        })
        .unwrap()
        .map(|e| e.unwrap().key)
        .collect();
    for key in &keys {
        let got = opened
            .store
            .get(key)
            .unwrap_or_else(|e| panic!("{key} is listed but cannot be read: {e}"));
        let want = match key.as_str() {
            "/big1" => pattern(1, BIG1),
            "/big2" => pattern(2, BIG2),
            k => {
                let n: usize = k.trim_start_matches("/s/k").parse().unwrap();
                format!("small {n}").into_bytes()
            }
        };
        assert!(got == want, "{key} reads back other bytes");
    }
    opened.store.close().unwrap();
    keys.len()
}

/// Offsets to garble in a file of `len` bytes: the header, the first pages, and eight spread
/// over the rest.
fn offsets(len: u64) -> Vec<u64> {
    let mut v = vec![0, 4096, 8192];
    v.extend((1..=8).map(|i| (len * i / 9) & !511));
    v.retain(|o| *o + 512 <= len);
    v.sort();
    v.dedup();
    v
}

/// After any damage: commands do not panic, `fsck --repair` runs to the end, a second `fsck`
/// passes, and every listed value reads.
fn survives(repo: &Path) -> usize {
    run(dsfs(repo).args(["ls", "/"]));
    run(dsfs(repo).args(["get", "/s/k001"]));
    run(dsfs(repo).arg("fsck"));
    let repair = run(dsfs(repo).args(["fsck", "--repair"]));
    assert!(
        repair.status.success(),
        "fsck --repair left problems: {}{}",
        stdout(&repair),
        String::from_utf8_lossy(&repair.stderr)
    );
    let after = ok(dsfs(repo).arg("fsck"));
    assert!(after.contains(": consistent"), "{after}");
    every_listed_value_reads(repo)
}

fn aside_files(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .count()
}

#[test]
fn a_garbled_index_never_panics_and_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_repo(dir.path());
    let len = std::fs::metadata(base.join("index.redb")).unwrap().len();
    let mut moved = 0;
    for offset in offsets(len) {
        let repo = dir.path().join(format!("t{offset}"));
        ok(Command::new("cp").arg("-a").arg(&base).arg(&repo));
        garble(&repo.join("index.redb"), offset);
        // The store is intact, so every value must be listed again after the repair.
        assert_eq!(survives(&repo), SMALL + 2, "garbled at {offset}");
        moved += aside_files(&repo, "index.redb");
    }
    assert!(
        moved > 0,
        "no garbling was noticed: the test garbles nothing"
    );
}

#[test]
fn a_truncated_index_is_moved_aside_with_a_message_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let len = std::fs::metadata(repo.join("index.redb")).unwrap().len();
    truncate(&repo.join("index.redb"), len / 2);
    let out = run(dsfs(&repo).args(["ls", "/"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("moved it to"), "{stderr}");
    assert_eq!(stdout(&out).lines().count(), SMALL + 2);
    assert_eq!(aside_files(&repo, "index.redb"), 1);
    assert_eq!(survives(&repo), SMALL + 2);
}

#[test]
fn a_garbled_records_file_is_salvaged_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_repo(dir.path());
    let records = Path::new("data/records.redb");
    let len = std::fs::metadata(base.join(records)).unwrap().len();
    let mut salvaged = 0;
    for offset in offsets(len) {
        let repo = dir.path().join(format!("t{offset}"));
        ok(Command::new("cp").arg("-a").arg(&base).arg(&repo));
        garble(&repo.join(records), offset);
        survives(&repo);
        salvaged += aside_files(&repo.join("data"), "records.redb");
    }
    assert!(
        salvaged > 0,
        "no garbling was noticed: the test garbles nothing"
    );
}

#[test]
fn a_truncated_records_file_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let records = repo.join("data/records.redb");
    let len = std::fs::metadata(&records).unwrap().len();
    truncate(&records, len / 2);
    survives(&repo);
    assert_eq!(aside_files(&repo.join("data"), "records.redb"), 1);
}

#[test]
fn a_missing_file_becomes_a_missing_key_and_fsck_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    std::fs::remove_file(blob_of_size(&repo, BIG1)).unwrap();
    let check = run(dsfs(&repo).arg("fsck"));
    let text = stdout(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.lines().next().unwrap().contains("problem"), "{text}");
    assert!(text.contains("lost value /big1"), "{text}");
    assert_eq!(text.matches("/big1").count(), 1, "reported once: {text}");
    assert_eq!(survives(&repo), SMALL + 1);
    let missing = run(dsfs(&repo).args(["get", "/big1"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such key"));
}

#[test]
fn a_truncated_file_is_found_and_kept_in_lost_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    truncate(&blob_of_size(&repo, BIG2), 1000);
    let check = run(dsfs(&repo).arg("fsck"));
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains("lost value /big2"),
        "{}",
        stdout(&check)
    );
    let get = run(dsfs(&repo).args(["get", "/big2"]));
    assert!(
        !get.status.success(),
        "a truncated value must not read as complete"
    );
    assert_eq!(survives(&repo), SMALL + 1);
    let kept = std::fs::read_dir(repo.join("data/lost+found"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);
}

#[test]
fn an_altered_file_is_found_by_fsck_verify() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    garble(&blob_of_size(&repo, BIG1), 5000);
    // Same size: only the hash can tell.
    let verify = run(dsfs(&repo).args(["fsck", "--verify"]));
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    assert!(
        stdout(&verify).contains("lost value /big1"),
        "{}",
        stdout(&verify)
    );
    ok(dsfs(&repo).args(["fsck", "--verify", "--repair"]));
    let after = ok(dsfs(&repo).args(["fsck", "--verify"]));
    assert!(after.contains(": consistent"), "{after}");
    assert_eq!(every_listed_value_reads(&repo), SMALL + 1);
}

#[test]
fn a_missing_shard_directory_loses_only_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let blob = blob_of_size(&repo, BIG2);
    std::fs::remove_dir_all(blob.parent().unwrap()).unwrap();
    let n = survives(&repo);
    assert!(n >= SMALL, "{n}");
    assert!(!ok(dsfs(&repo).arg("ls")).contains("/big2"));
}

#[test]
fn reindex_with_a_missing_file_keeps_every_other_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    std::fs::remove_file(blob_of_size(&repo, BIG1)).unwrap();
    run(dsfs(&repo).arg("reindex"));
    assert_eq!(ok(dsfs(&repo).args(["get", "/s/k001"])), "small 1");
    assert!(ok(dsfs(&repo).arg("ls")).lines().count() > SMALL);
}

/// Kill -9 during a big copy through the mount, then a plain `fsck` (which must not hide the
/// crash), then a remount: the debris of the crash is gone.
#[test]
fn crash_debris_is_removed_on_the_next_open_even_after_a_plain_fsck() {
    let mut m = Mount::repo_unmounted();
    let src = m.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i:03}")), pattern(i, 100_000 + i)).unwrap();
    }
    m.mount_foreground();
    let mut cp = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(m.path("copy"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the copy has committed some files but not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(m.path("copy"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 60
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    m.kill9();
    let _ = cp.wait();
    let repo = PathBuf::from(&m.spec);
    let first = run(dsfs(&repo).arg("fsck"));
    let first_text = stdout(&first);
    let consistent = first_text
        .lines()
        .next()
        .unwrap_or("")
        .contains("consistent");
    assert_eq!(
        first.status.success(),
        consistent,
        "the exit status matches the summary line: {first_text}"
    );
    m.mount();
    m.umount();
    let second = run(dsfs(&repo).arg("fsck"));
    let text = stdout(&second);
    assert!(second.status.success(), "{text}");
    assert!(!text.contains("unreferenced"), "{text}");
    wait_mounted(&m.mnt, false, Duration::from_secs(5));
}

/// Twenty kill -9s of the daemon during a mixed workload through the mount (`cp -r` of a tree,
/// fsynced writes of small and file-backed values, creates and renames, and fio with verify
/// when it is installed). After each crash a remount recovers; every file whose fsync returned
/// reads back complete, and `dsfs fsck` then exits 0 with no debris.
#[test]
fn kill_9_loop_during_a_mixed_workload_loses_nothing_fsynced_and_leaves_no_debris() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const ROUNDS: usize = 20;
    let mut m = Mount::repo_unmounted();
    let src = m.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..40 {
        let dir = if i % 2 == 0 {
            src.clone()
        } else {
            src.join("sub")
        };
        std::fs::write(dir.join(format!("c{i:02}")), pattern(i, 20_000 + i * 3_000)).unwrap();
    }
    let repo = PathBuf::from(&m.spec);
    let fio = Command::new("fio").arg("--version").output().is_ok();
    // (relative path, contents) of every file whose fsync returned.
    type Fsynced = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let durable: Fsynced = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        m.mount_foreground();
        // Everything fsynced in earlier rounds survived the crashes since.
        for (rel, want) in durable.lock().unwrap().iter() {
            let got = std::fs::read(m.path(rel)).unwrap_or_default();
            assert!(
                got == *want,
                "round {round}: {rel} lost or torn after fsync"
            );
        }
        let dir = format!("r{round:02}");
        std::fs::create_dir(m.path(&dir)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mnt, dir, durable, stop) =
                (m.mnt.clone(), dir.clone(), durable.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let rel = format!("{dir}/s{i:03}");
                    let size = if i % 3 == 0 { 150_000 } else { 3_000 + i };
                    let data = pattern(round * 1000 + i, size);
                    let done = std::fs::File::create(mnt.join(&rel))
                        .and_then(|mut f| f.write_all(&data).and_then(|()| f.sync_all()));
                    if done.is_err() {
                        break;
                    }
                    durable.lock().unwrap().push((rel, data));
                }
            })
        };
        let renamer = {
            let (mnt, dir, stop) = (m.mnt.clone(), dir.clone(), stop.clone());
            std::thread::spawn(move || {
                for j in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let a = mnt.join(format!("{dir}/m{j:03}"));
                    let b = mnt.join(format!("{dir}/n{j:03}"));
                    if std::fs::write(&a, pattern(j, 70_000)).is_err()
                        || std::fs::rename(&a, &b).is_err()
                    {
                        break;
                    }
                }
            })
        };
        let mut cp = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(m.path(&format!("{dir}/tree")))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut fio_job = fio.then(|| {
            Command::new("fio")
                // One process (jobs as threads), so that killing it leaves no job behind.
                .args([
                    "--name=k",
                    "--thread",
                    "--rw=randwrite",
                    "--bs=16k",
                    "--size=2M",
                ])
                .args(["--verify=crc32c", "--verify_state_save=0", "--fsync=8"])
                .arg(format!("--directory={}", m.path(&dir).display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(150 + (round as u64 * 37) % 400));
        // Kill the daemon, and stop the workload while the dead mount still answers ENOTCONN:
        // after the detach a late writer would write into the bare mount point instead.
        let mut daemon = m.child.take().expect("a foreground daemon");
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        renamer.join().unwrap();
        let _ = cp.kill();
        let _ = cp.wait();
        if let Some(f) = fio_job.as_mut() {
            let _ = f.kill();
            let _ = f.wait();
        }
        Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&m.mnt)
            .output()
            .unwrap();
        wait_mounted(&m.mnt, false, Duration::from_secs(10));
        // A mount recovers from the crash (reconcile and scrub); after a clean unmount fsck
        // finds nothing.
        m.mount();
        m.umount();
        let out = run(dsfs(&repo).arg("fsck"));
        let text = stdout(&out);
        assert!(out.status.success(), "round {round}: {text}");
        assert!(text.contains(": consistent"), "round {round}: {text}");
        assert!(!text.contains("unreferenced"), "round {round}: {text}");
    }
    m.mount();
    for (rel, want) in durable.lock().unwrap().iter() {
        assert!(
            std::fs::read(m.path(rel)).unwrap() == *want,
            "{rel} lost after fsync"
        );
    }
    eprintln!(
        "{ROUNDS} kills; {} fsynced files checked",
        durable.lock().unwrap().len()
    );
}

/// What only the index knows (an explicit empty directory, a symlink, a mode, an xattr) is
/// carried over from an index file that was moved aside into the index rebuilt from the store.
#[test]
fn a_rebuilt_index_keeps_what_still_reads_in_the_old_file() {
    use dsfs::Datastore;
    use dsfs::index::{Node, NodeKind, ROOT, reconcile, salvage};
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let spec = dsfs::spec::StoreSpec::parse(repo.to_str().unwrap()).unwrap();
    {
        let opened = dsfs::spec::open(&spec, dsfs::spec::OpenMode::default()).unwrap();
        let index = opened.store.index();
        let (file, _) = index.resolve(&dsfs::Key::new("/big1")).unwrap().unwrap();
        index
            .write(|tx| {
                let mut d = Node::new(NodeKind::Dir, ROOT, "empty", 0o700, 1, 2);
                d.explicit = true;
                tx.create(ROOT, "empty", d)?;
                let mut l = Node::new(NodeKind::Symlink, ROOT, "link", 0o777, 0, 0);
                l.target = b"/big1".to_vec();
                tx.create(ROOT, "link", l)?;
                let mut f = tx.node_required(file)?;
                f.mode = 0o600;
                tx.put_node(file, &f)?;
                tx.set_xattr(file, "user.note", Some(b"kept"))?;
                Ok(())
            })
            .unwrap();
        opened.store.close().unwrap();
    }
    let old = salvage::move_aside(&repo.join("index.redb")).unwrap();
    let opened = dsfs::spec::open(&spec, dsfs::spec::OpenMode::default()).unwrap();
    let index = opened.store.index();
    assert!(index.resolve(&dsfs::Key::new("/empty")).unwrap().is_none());
    reconcile::reindex(index, opened.store.backend().as_ref(), &mut |_| {}).unwrap();
    let report = salvage::restore(index, &old);
    assert!(report.opened && report.nodes_restored >= 3, "{report:?}");
    let (_, empty) = index.resolve(&dsfs::Key::new("/empty")).unwrap().unwrap();
    assert!(empty.explicit && empty.kind == NodeKind::Dir);
    assert_eq!((empty.mode & 0o7777, empty.uid, empty.gid), (0o700, 1, 2));
    let (_, link) = index.resolve(&dsfs::Key::new("/link")).unwrap().unwrap();
    assert_eq!(
        (link.kind, link.target.as_slice()),
        (NodeKind::Symlink, &b"/big1"[..])
    );
    let (file, f) = index.resolve(&dsfs::Key::new("/big1")).unwrap().unwrap();
    assert_eq!(f.mode & 0o7777, 0o600);
    assert_eq!(
        index.xattr(file, "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(index.key_count().unwrap(), (SMALL + 2) as u64);
    opened.store.close().unwrap();
}

#[test]
fn fsck_repair_does_not_call_a_file_it_leaves_in_place_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    // A FIFO where a data file of the file tier belongs: dsfs never opens it, and its repair
    // leaves it for a person to remove.
    let (blob, _) = blobs(&repo).remove(0);
    let fifo = blob.with_file_name("EXTRA.data");
    ok(Command::new("mkfifo").arg(&fifo));
    let out = run(dsfs(&repo).args(["fsck", "--repair"]));
    let report = stdout(&out);
    assert!(
        !out.status.success(),
        "fsck --repair exited 0 with the FIFO still there: {report}"
    );
    assert!(report.contains("not repaired"), "{report}");
    assert!(std::fs::symlink_metadata(&fifo).is_ok());
    // The plain check that follows agrees with what the repair said it left.
    let again = run(dsfs(&repo).arg("fsck"));
    assert!(!again.status.success(), "{}", stdout(&again));
    // Every value still reads.
    assert_eq!(every_listed_value_reads(&repo), SMALL + 2);
}
