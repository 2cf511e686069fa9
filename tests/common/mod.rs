//! Mounting dsfs for real in a temporary directory, and always unmounting it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Deterministic bytes that differ per seed (xorshift).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The dsfs binary under test.
pub fn dsfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dsfs"));
    c.env_remove("DSFS_STORE");
    c
}

/// Whether something is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Waits until `path` is (or is not) a mount point, failing after `timeout`.
pub fn wait_mounted(path: &Path, mounted: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while is_mounted(path) != mounted {
        assert!(
            Instant::now() < deadline,
            "{} did not become {}mounted within {timeout:?}",
            path.display(),
            if mounted { "" } else { "un" }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command line in `dir`; returns stdout, failing the test on a non-zero exit.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running sh");
    check(out, script)
}

/// A dsfs mount in a temporary directory. Dropping it unmounts (lazily as a last resort), so
/// a failing test never leaves a mount behind.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub spec: String,
    pub mnt: PathBuf,
    pub options: Vec<String>,
    /// A foreground daemon this test owns (for kill tests); `None` for daemonised mounts.
    pub child: Option<Child>,
    /// The store may not exist yet: the next mount passes `--create` (dsfs refuses a missing
    /// store without it). Cleared by the first mount that succeeds, so a remount opens the
    /// store it made and never quietly makes a new one.
    pub fresh: AtomicBool,
}

impl Mount {
    /// A fresh default repository, mounted.
    pub fn repo() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("repo").to_string_lossy().into_owned();
        Mount::with_spec(dir, spec, &[])
    }

    /// A fresh default repository, not mounted yet (for [`Mount::mount_foreground`]).
    pub fn repo_unmounted() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("repo").to_string_lossy().into_owned();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mnt = std::fs::canonicalize(mnt).unwrap();
        Mount {
            dir,
            spec,
            mnt,
            options: Vec::new(),
            child: None,
            fresh: AtomicBool::new(true),
        }
    }

    /// A fresh flatfs directory (next-to-last/2), mounted.
    pub fn flatfs() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let spec = format!("flatfs:{}", dir.path().join("blocks").display());
        Mount::with_spec(dir, spec, &[])
    }

    /// Mounts `spec` at `<dir>/mnt` with `-o options`.
    pub fn with_spec(dir: tempfile::TempDir, spec: String, options: &[&str]) -> Mount {
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mnt = std::fs::canonicalize(mnt).unwrap();
        let m = Mount {
            dir,
            spec,
            mnt,
            options: options.iter().map(|s| s.to_string()).collect(),
            child: None,
            fresh: AtomicBool::new(true),
        };
        m.mount();
        m
    }

    /// The daemon's log (shown when a test fails).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("dsfs.log")
    }

    fn mount_args(&self) -> Vec<String> {
        let mut args = vec![
            "mount".to_string(),
            self.spec.clone(),
            self.mnt.to_string_lossy().into_owned(),
            "--log".to_string(),
            self.log().to_string_lossy().into_owned(),
        ];
        for o in &self.options {
            args.push("-o".into());
            args.push(o.clone());
        }
        if self.fresh.load(Ordering::Relaxed) {
            args.push("--create".into());
        }
        args
    }

    /// Mounts (the daemon returns once the mount is live: no waiting needed).
    pub fn mount(&self) {
        let out = dsfs().args(self.mount_args()).output().unwrap();
        check(out, "dsfs mount");
        assert!(
            is_mounted(&self.mnt),
            "dsfs mount returned before the mount was live"
        );
        self.fresh.store(false, Ordering::Relaxed);
    }

    /// Mounts with a foreground daemon owned by the test, waiting (with a timeout) for the
    /// mount to appear.
    pub fn mount_foreground(&mut self) {
        let child = dsfs()
            .args(self.mount_args())
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_mounted(&self.mnt, true, Duration::from_secs(30));
        self.fresh.store(false, Ordering::Relaxed);
    }

    /// Unmounts and waits for the daemon's final commits.
    pub fn umount(&mut self) {
        if !is_mounted(&self.mnt) {
            return;
        }
        let out = dsfs().arg("umount").arg(&self.mnt).output().unwrap();
        check(out, "dsfs umount");
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
        assert!(!is_mounted(&self.mnt));
    }

    pub fn remount(&mut self) {
        self.umount();
        self.mount();
    }

    /// Kills the foreground daemon without warning and detaches the dead mount.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("kill9 needs mount_foreground");
        c.kill().unwrap();
        c.wait().unwrap();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .output();
        wait_mounted(&self.mnt, false, Duration::from_secs(10));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Runs `dsfs --store SPEC args...` (the mount must be down: the store is locked while
    /// mounted).
    pub fn dsfs_store(&self, args: &[&str]) -> Output {
        dsfs()
            .arg("--store")
            .arg(&self.spec)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.log())
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the dsfs daemon log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if is_mounted(&self.mnt) {
            let ok = dsfs()
                .arg("umount")
                .arg(&self.mnt)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mnt)
                    .output();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh default repository mounted in the foreground with `-o options`, logging every FUSE
/// request to the mount's log (fuser's debug log), for tests that count what the kernel sends.
/// Its temporary directory is opened to other users (for tests that switch users).
pub fn traced(options: &[&str]) -> Mount {
    start_traced(Mount::repo_unmounted(), options)
}

/// Like [`traced`], for a flatfs directory (`blocks/` in the mount's temporary directory).
pub fn traced_flatfs(options: &[&str]) -> Mount {
    let mut m = Mount::repo_unmounted();
    m.spec = format!("flatfs:{}", m.dir.path().join("blocks").display());
    start_traced(m, options)
}

/// Mounts `m` in the foreground with `-o options`, logging every FUSE request.
fn start_traced(mut m: Mount, options: &[&str]) -> Mount {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // In the foreground the daemon logs to stderr.
    let log = std::fs::File::create(m.log()).unwrap();
    let mut cmd = dsfs();
    cmd.arg("mount")
        .arg(&m.spec)
        .arg(&m.mnt)
        .arg("-f")
        .env("RUST_LOG", "fuser=debug")
        .stdout(Stdio::null())
        .stderr(log);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    if m.fresh.load(Ordering::Relaxed) {
        cmd.arg("--create");
    }
    m.options = options.iter().map(|s| s.to_string()).collect();
    m.child = Some(cmd.spawn().unwrap());
    wait_mounted(&m.mnt, true, Duration::from_secs(30));
    m.fresh.store(false, Ordering::Relaxed);
    m
}

/// The requests a [`traced`] mount logged so far, each as its opcode followed by its arguments
/// (fuser writes one line per request, ending in `thread=NAME`).
pub fn requests(m: &Mount) -> Vec<String> {
    let log = std::fs::read_to_string(m.log()).unwrap();
    let reqs: Vec<String> = log
        .lines()
        .filter(|l| l.contains(" thread="))
        .filter_map(|l| {
            let after = l.split(") ino 0x").nth(1)?;
            let mut words = after.split_whitespace().skip(1);
            Some(words.next()?.to_owned() + " " + &words.collect::<Vec<_>>().join(" "))
        })
        .collect();
    assert!(
        !reqs.is_empty(),
        "no requests logged in {}",
        m.log().display()
    );
    reqs
}

/// How many of `reqs` (from [`requests`]) have the opcode `op`.
pub fn count_requests(reqs: &[String], op: &str) -> usize {
    reqs.iter()
        .filter(|r| r.split(' ').next() == Some(op))
        .count()
}

/// The requests logged since the first `before`, once `n` RELEASE requests are among them
/// (the kernel sends a handle's RELEASE after its close returns, in the background, which a
/// loaded machine may delay by seconds); after 60 s, whatever is there.
pub fn requests_since(m: &Mount, before: usize, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = requests(m);
        if count_requests(&all[before..], "RELEASE") >= n || Instant::now() >= deadline {
            return all[before..].to_vec();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `dsfs --store SPEC args...` against the mounted store (through its control socket),
/// and checks that it succeeded.
pub fn dsfs_beside(m: &Mount, args: &[&str]) {
    let out = dsfs()
        .arg("--store")
        .arg(&m.spec)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls `f` every 100 ms until it returns true; fails after `within` (what revalidation
/// promises is its interval plus the kernel's one-second attribute cache: give it room).
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether fio is installed; in CI its absence is a failure, elsewhere the caller skips.
pub fn have_fio() -> bool {
    let ok = Command::new("fio").arg("--version").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "fio is missing in CI");
        eprintln!("fio not installed: skipping the fio run");
    }
    ok
}

/// Runs one fio job named `name` in the mount with crc32c verify headers (psync, 16 MiB unless
/// `args` give another `--size`: fio takes the last value of an option); fails on any error,
/// verify failure or EIO.
pub fn fio_verify(m: &Mount, name: &str, args: &[&str]) {
    let out = Command::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--directory={}", m.mnt.display()))
        .args([
            "--ioengine=psync",
            "--size=16M",
            "--verify=crc32c",
            // fio would leave a verify-state file in the working directory after each job.
            "--verify_state_save=0",
            "--group_reporting",
            "--output-format=terse",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fio {name} {args:?} failed: {text}");
    assert!(
        !text.contains("verify:"),
        "fio {name} {args:?}: verify error: {text}"
    );
    assert!(
        !text.contains("Input/output error"),
        "fio {name} {args:?}: EIO: {text}"
    );
}
