//! A repository on a small, full ext4 filesystem: the mount keeps working, ENOSPC reaches the
//! writer as ENOSPC, `rm` frees space, `dsfs umount` is truthful and a remount finds every file
//! whose close or fsync succeeded.
//!
//! Needs root and loop devices (CI has both); elsewhere it says why it skips.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Mount, dsfs};

/// A 64 MiB ext4 image mounted on a loop device in a temporary directory; unmounted when
/// dropped (lazily if something still holds it).
struct LoopFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl LoopFs {
    fn new() -> Result<LoopFs, String> {
        if !crate_is_root() {
            return Err("not root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no loop devices".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("disk");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            .map_err(|e| format!("mkfs.ext4: {e}"))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))
        .map_err(|e| format!("mount -o loop: {e}"))?;
        Ok(LoopFs { dir, mnt })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.mnt)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        let _ = self.dir.path();
    }
}

fn crate_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Writes `data` to a new file and closes it, returning the error of open, write or close.
fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd`, so this test owns it and closes it exactly once.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn expect_enospc(what: &str, e: &std::io::Error) {
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "{what} failed with {e}, not ENOSPC"
    );
}

// This failed (EIO for a small create, acknowledged files lost) when redb grew its files
// sparse: the pages of non-durable commits, held in redb's memory, then needed new blocks at the
// durable commit after the disk was full. Growth now allocates its blocks (src/space.rs).
#[test]
fn a_full_disk_keeps_every_acknowledged_file_and_the_mount_usable() {
    let disk = match LoopFs::new() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping the full-disk test: {why}");
            return;
        }
    };
    let holder = tempfile::tempdir().unwrap();
    let spec = disk.mnt.join("repo").to_string_lossy().into_owned();
    let mut m = Mount::with_spec(holder, spec, &[]);

    // Fill the disk through the mount.
    let big = m.path("big");
    let dd = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", big.display()))
        .args(["bs=1M", "count=200"])
        .output()
        .unwrap();
    assert!(!dd.status.success(), "dd did not run out of space");
    let dd_err = String::from_utf8_lossy(&dd.stderr);
    assert!(
        dd_err.contains("No space left"),
        "dd failed with something else than ENOSPC: {dd_err}"
    );

    // Small files on the full disk: each one is acknowledged or refused with ENOSPC.
    // Enough of them that their records no longer fit in the index's and the records'
    // existing pages.
    let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
    let mut refused = 0;
    for i in 0..1500 {
        let name = format!("small{i}");
        let mut data = format!("small file {i}\n").into_bytes();
        data.resize(2048, b'.');
        match write_and_close(&m.path(&name), &data) {
            Ok(()) => acknowledged.push((name, data)),
            Err(e) => {
                expect_enospc(&name, &e);
                refused += 1;
            }
        }
    }
    eprintln!(
        "on the full disk: {} small files acknowledged, {refused} refused",
        acknowledged.len()
    );
    // Give the background commit time to meet the full disk.
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // Removing the big file works and frees the space.
    fs::remove_file(&big).expect("rm of the big file on a full disk");
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // The mount is usable again: files, a rename and a directory.
    for i in 0..20 {
        let name = format!("after{i}");
        let data = format!("written after the rm {i}\n").into_bytes();
        write_and_close(&m.path(&name), &data).expect("a write after space was freed");
        acknowledged.push((name, data));
    }
    fs::rename(m.path("after0"), m.path("moved")).unwrap();
    let moved = acknowledged
        .iter()
        .position(|(n, _)| n == "after0")
        .unwrap();
    acknowledged[moved].0 = "moved".into();
    fs::create_dir(m.path("newdir")).unwrap();

    // umount exits 0 only if everything was committed.
    let out = dsfs().arg("umount").arg(&m.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "dsfs umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the daemon did about the full disk (shown with --nocapture).
    if let Ok(log) = fs::read_to_string(m.log()) {
        for line in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            eprintln!("daemon: {line}");
        }
    }
    m.mount();
    for (name, data) in &acknowledged {
        let got = fs::read(m.path(name)).unwrap_or_else(|e| panic!("{name} is gone: {e}"));
        assert_eq!(&got, data, "{name}");
    }
    assert!(!m.path("after0").exists());
    assert!(m.path("newdir").is_dir());
    assert!(!big.exists());
    m.umount();

    // The CLI opens the repository (and checks it) on the same disk.
    let out = m.dsfs_store(&["fsck"]);
    assert!(
        out.status.success(),
        "dsfs fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    drop(disk);
}

/// A buffer of `len` bytes of `seed`'s pattern at a 4 KiB-aligned address (O_DIRECT).
fn aligned_pattern(len: usize, seed: u8) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; len + 4096];
    let at = v.as_ptr().align_offset(4096);
    for (i, b) in v[at..at + len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(seed);
    }
    (v, at)
}

// O_DIRECT writes are answered once queued to the daemon's writer thread (src/datastore/
// direct.rs). When the disk fills, a queued write fails after its WRITE was answered: the
// error must reach a later write, fsync or close, and the bytes of every answered write must
// survive until space is freed (they are kept and written again), so that the fsync that
// finally succeeds, and the remount, find every one of them.
#[test]
fn o_direct_writes_on_a_full_disk_report_enospc_and_lose_no_answered_write() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let disk = match LoopFs::new() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping the full-disk test: {why}");
            return;
        }
    };
    let holder = tempfile::tempdir().unwrap();
    let spec = format!("flatfs:{}", disk.mnt.join("blocks").display());
    let mut m = Mount::with_spec(holder, spec, &[]);

    // Fill the disk beside the store, then free 12 MiB.
    let filler = disk.mnt.join("filler");
    let dd = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", "count=200", "conv=fsync"])
        .output()
        .unwrap();
    assert!(!dd.status.success(), "dd did not run out of space");
    let filled = fs::metadata(&filler).unwrap().len();
    File::options()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled.saturating_sub(12 << 20))
        .unwrap();

    const MIB: usize = 1 << 20;
    let f = File::options()
        .write(true)
        .read(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("DIRECT"))
        .unwrap();
    // 1 MiB writes until one of them fails: with no fsync between them, a queued write that
    // meets the full disk can only be reported by a later write (or the fsync after the loop).
    let mut answered = 0usize;
    let mut failure = None;
    for i in 0..40usize {
        let (buf, at) = aligned_pattern(MIB, i as u8);
        if let Err(e) = f.write_all_at(&buf[at..at + MIB], (i * MIB) as u64) {
            failure = Some(("write", e));
            break;
        }
        answered = i + 1;
    }
    let (what, e) = match failure {
        Some(f) => f,
        None => ("fsync", f.sync_all().unwrap_err()),
    };
    expect_enospc(what, &e);
    eprintln!("{answered} writes answered, then the {what} failed with ENOSPC");
    // Still full: fsync keeps failing (the kept bytes cannot be written).
    expect_enospc("fsync on the full disk", &f.sync_all().unwrap_err());

    // Free the space: the next fsync writes the kept bytes and commits them all.
    fs::remove_file(&filler).unwrap();
    f.sync_all().expect("fsync after space was freed");
    drop(f);
    m.remount();
    let got = fs::read(m.path("DIRECT")).unwrap();
    assert_eq!(got.len(), answered * MIB, "length after the remount");
    for i in 0..answered {
        let (buf, at) = aligned_pattern(MIB, i as u8);
        assert!(
            got[i * MIB..(i + 1) * MIB] == buf[at..at + MIB],
            "answered write {i} lost"
        );
    }
    m.umount();
    drop(m);
    drop(disk);
}
