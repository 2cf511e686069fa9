//! `mount-helpers/`: `mount.dsfs` run for real (mount, write, read, unmount), its fake mode and
//! its errors, `install.sh`, util-linux mount(8) going through the helper as root and as a user
//! (in private mount namespaces, so nothing is written to the real /sbin or /etc/fstab),
//! `systemd-analyze verify` on the unit, and the shell scripts' syntax.
//!
//! Every mount is unmounted when its test ends, also when it fails (`common::Mount`'s drop
//! runs `dsfs umount`, then `fusermount3 -u -z`).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, have, is_mounted, wait_mounted};

const DSFS: &str = env!("CARGO_BIN_EXE_dsfs");

fn helpers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helpers")
}

/// `mount-helpers/mount.dsfs`, finding the dsfs under test through DSFS_BIN.
fn mount_dsfs() -> Command {
    let mut c = Command::new(helpers().join("mount.dsfs"));
    c.env("DSFS_BIN", DSFS)
        .env_remove("DSFS_STORE")
        .env_remove("RUST_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn succeeded(out: &Output) {
    assert!(out.status.success(), "{}", show(out));
}

/// A mount point in a fresh temporary directory, not mounted yet: whatever a test mounts there
/// is unmounted when the returned guard drops. The daemon's log goes to `Mount::log()`.
fn unmounted(spec: &str) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mnt = fs::canonicalize(mnt).unwrap();
    let spec = spec.replace("$DIR", &dir.path().to_string_lossy());
    Mount {
        dir,
        spec,
        mnt,
        options: Vec::new(),
        child: None,
        fresh: std::sync::atomic::AtomicBool::new(true),
    }
}

/// The source field of the mount at `path` in /proc/self/mountinfo.
fn mount_source(path: &Path) -> Option<String> {
    let want = path.to_string_lossy().replace(' ', "\\040");
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.get(4) != Some(&want.as_str()) {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        fields.get(sep + 2).map(|s| s.to_string())
    })
}

fn stderr_lines(out: &Output) -> Vec<String> {
    text(&out.stderr).lines().map(str::to_owned).collect()
}

#[test]
fn mount_dsfs_mounts_a_repository_that_reads_and_writes() {
    let mut m = unmounted("$DIR/repo");
    let log = m.log();
    // A repository that does not exist yet is refused, and nothing is created.
    let out = mount_dsfs()
        .current_dir(m.dir.path())
        .args(["repo", "mnt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(32), "{}", show(&out));
    assert!(text(&out.stderr).contains("--create"), "{}", show(&out));
    assert!(!m.dir.path().join("repo").exists());
    // Relative source and mount point, fstab-only options, log=FILE, and -o create, which
    // the helper passes to dsfs.
    let out = mount_dsfs()
        .current_dir(m.dir.path())
        .args(["repo", "mnt", "-o"])
        .arg(format!("log={},noauto,_netdev,create", log.display()))
        .output()
        .unwrap();
    succeeded(&out);
    assert!(out.stderr.is_empty(), "{}", show(&out));
    wait_mounted(&m.mnt, true, Duration::from_secs(30));
    // The relative source reached dsfs as an absolute path.
    assert_eq!(mount_source(&m.mnt).as_deref(), Some(m.spec.as_str()));
    assert!(log.exists(), "log=FILE did not become --log FILE");

    fs::write(m.path("hello.txt"), b"through mount.dsfs").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    assert_eq!(
        fs::read(m.path("hello.txt")).unwrap(),
        b"through mount.dsfs"
    );
    assert_eq!(fs::read(m.path("d/x")).unwrap(), b"x");

    m.umount();
    assert!(!is_mounted(&m.mnt));
    let got = m.dsfs_store(&["get", "/hello.txt"]);
    succeeded(&got);
    assert_eq!(got.stdout, b"through mount.dsfs");

    // Again, read-only, with -o given twice, -v, and the -sn flags mount(8) may pass.
    let out = mount_dsfs()
        .arg(&m.spec)
        .arg(&m.mnt)
        .args(["-s", "-n", "-v", "-o", "ro", "-o"])
        .arg(format!("log={},nofail", log.display()))
        .output()
        .unwrap();
    succeeded(&out);
    wait_mounted(&m.mnt, true, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("mount.dsfs: running: ") && stdout.contains(" -o ro,nofail --log "),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("mounted on"), "{}", show(&out));
    assert_eq!(fs::read(m.path("d/x")).unwrap(), b"x");
    let err = fs::write(m.path("new"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    m.umount();
}

#[test]
fn mount_dsfs_fake_prints_and_mounts_nothing() {
    let m = unmounted("flatfs:$DIR/blocks");
    let log = m.log();
    let out = mount_dsfs()
        .arg(&m.spec)
        .arg(&m.mnt)
        .args(["-f", "-o"])
        .arg(format!(
            "allow_other,log={},x-systemd.automount",
            log.display()
        ))
        .output()
        .unwrap();
    succeeded(&out);
    assert!(out.stderr.is_empty(), "{}", show(&out));
    let stdout = text(&out.stdout);
    let expected = format!(
        "mount.dsfs: would run: {DSFS} mount -o allow_other --log {} -- {} {}\n",
        log.display(),
        m.spec,
        m.mnt.display()
    );
    assert_eq!(stdout, expected);
    assert!(!is_mounted(&m.mnt));
    assert!(
        !m.dir.path().join("blocks").exists(),
        "-f created the store"
    );
    assert!(!log.exists(), "-f created the log");
}

#[test]
fn mount_dsfs_errors_are_one_line_with_a_failing_status() {
    let m = unmounted("$DIR/repo");
    let spec = m.spec.clone();
    let mnt = m.mnt.to_string_lossy().into_owned();
    // (arguments, expected exit status, a piece of the one error line)
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        // dsfs's own error, passed through: 32, mount(8)'s "mount failure".
        (
            vec![spec.clone(), mnt.clone(), "-o".into(), "bogus".into()],
            32,
            "dsfs: unknown mount option \"bogus\"",
        ),
        (
            vec![
                spec.clone(),
                mnt.clone(),
                "-o".into(),
                "uid=x,log=/dev/null".into(),
            ],
            32,
            "uid=x",
        ),
        (vec!["redb:".into(), mnt.clone()], 32, "dsfs: "),
        // The helper's own: 1.
        (
            vec![spec.clone()],
            1,
            "mount.dsfs: needs a source and a mount point",
        ),
        (
            vec![spec.clone(), mnt.clone(), "-o".into()],
            1,
            "mount.dsfs: option -o needs a value",
        ),
        (
            vec![spec.clone(), mnt.clone(), "-x".into()],
            1,
            "mount.dsfs: unknown option -x",
        ),
        (
            vec![spec.clone(), mnt.clone(), "-o".into(), "remount,ro".into()],
            1,
            "mount.dsfs: remount is not supported",
        ),
        (
            vec![spec.clone(), mnt.clone(), "-o".into(), "log=".into()],
            1,
            "mount.dsfs: option log= needs a file name",
        ),
        (
            vec![spec.clone(), mnt.clone(), "-t".into(), "ext4".into()],
            1,
            "mount.dsfs: unexpected type ext4",
        ),
    ];
    for (args, status, piece) in cases {
        let out = mount_dsfs().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(status), "{args:?}: {}", show(&out));
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {}", show(&out));
        assert!(lines[0].contains(piece), "{args:?}: {}", show(&out));
        assert!(!is_mounted(&m.mnt), "{args:?} mounted something");
    }
    // No dsfs binary to be found.
    let out = mount_dsfs()
        .env("DSFS_BIN", m.dir.path().join("no-such-dsfs"))
        .arg(&spec)
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(stderr_lines(&out).len(), 1, "{}", show(&out));
    assert!(!m.dir.path().join("repo").exists());
}

/// Runs install.sh with `args`.
fn install(args: &[&str]) -> Output {
    Command::new(helpers().join("install.sh"))
        .args(args)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_sh_installs_under_a_prefix_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_s = root.to_str().unwrap();

    let out = install(&["--prefix", root_s, "--dry-run"]);
    succeeded(&out);
    assert!(!root.exists(), "--dry-run changed something");
    assert!(text(&out.stdout).contains("would run: install -m 755"));

    let out = install(&["--prefix", root_s, "--dsfs", DSFS]);
    succeeded(&out);
    let helper = root.join("sbin/mount.dsfs");
    assert_eq!(
        fs::read(&helper).unwrap(),
        fs::read(helpers().join("mount.dsfs")).unwrap()
    );
    assert_eq!(mode(&helper), 0o755);
    assert_eq!(
        fs::read_link(root.join("sbin/mount.fuse.dsfs")).unwrap(),
        Path::new("mount.dsfs")
    );
    let unit = root.join("etc/systemd/system/dsfs@.service");
    assert_eq!(
        fs::read(&unit).unwrap(),
        fs::read(helpers().join("dsfs@.service")).unwrap()
    );
    assert_eq!(mode(&unit), 0o644);
    let conf = root.join("etc/dsfs/example.conf");
    assert_eq!(
        fs::read(&conf).unwrap(),
        fs::read(helpers().join("dsfs-example.conf")).unwrap()
    );
    assert_eq!(mode(&root.join("usr/local/bin/dsfs")), 0o755);

    // Again: nothing changes, and an edited configuration is kept.
    fs::write(&conf, "SPEC=/mine\n").unwrap();
    let out = install(&["--prefix", root_s]);
    succeeded(&out);
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("installed"), "{}", show(&out));
    assert!(stdout.contains("unchanged"), "{}", show(&out));
    assert!(stdout.contains("kept"), "{}", show(&out));
    assert_eq!(fs::read_to_string(&conf).unwrap(), "SPEC=/mine\n");

    // A changed helper is replaced.
    fs::write(&helper, "#!/bin/sh\n").unwrap();
    let out = install(&["--prefix", root_s]);
    succeeded(&out);
    assert_eq!(
        fs::read(&helper).unwrap(),
        fs::read(helpers().join("mount.dsfs")).unwrap()
    );

    let out = install(&["--bogus"]);
    assert!(!out.status.success());
    assert_eq!(stderr_lines(&out).len(), 1, "{}", show(&out));
}

/// The script run in a private mount namespace: it mounts a directory holding the installed
/// helper over /sbin's directory, then mounts through util-linux mount(8) with `-t dsfs`,
/// `-t fuse.dsfs` and an fstab line, and always unmounts. Positional parameters: the real
/// /sbin directory, the installed sbin, the store, the mount point, the log, the fstab.
const NAMESPACE_SCRIPT: &str = r#"
set -eu
real_sbin=$1 sbin=$2 store=$3 mnt=$4 log=$5 fstab=$6
cleanup() {
    if findmnt -rn --mountpoint "$mnt" >/dev/null; then
        "$DSFS_BIN" umount "$mnt" || fusermount3 -u -z "$mnt"
    fi
}
trap cleanup EXIT
wait_live() {
    i=0
    until findmnt -rn --mountpoint "$mnt" >/dev/null; do
        i=$((i + 1))
        [ "$i" -lt 300 ] || { echo "not mounted after 30 s" >&2; exit 1; }
        sleep 0.1
    done
}
mount --bind "$sbin" "$real_sbin"

# mount -f: the helper prints, nothing is mounted.
mount -f -t dsfs "$store" "$mnt" -o "log=$log"
if findmnt -rn --mountpoint "$mnt" >/dev/null; then echo "mount -f mounted" >&2; exit 1; fi

mount -t dsfs "$store" "$mnt" -o "noauto,_netdev,create,log=$log"
wait_live
echo one > "$mnt/one"
echo "mounted -t dsfs: $(findmnt -rn -o SOURCE --mountpoint "$mnt")"
"$DSFS_BIN" umount "$mnt"

mount -t fuse.dsfs "dsfs#$store" "$mnt" -o "log=$log"
wait_live
echo two > "$mnt/two"
echo "mounted -t fuse.dsfs: $(cat "$mnt/one")"
"$DSFS_BIN" umount "$mnt"

mount -T "$fstab" "$mnt"
wait_live
echo "mounted from fstab: $(cat "$mnt/one") $(cat "$mnt/two")"
if echo no 2>/dev/null > "$mnt/three"; then echo "the fstab line's ro was lost" >&2; exit 1; fi
"$DSFS_BIN" umount "$mnt"

# A failing mount: mount(8) reports the helper's status 32.
status=0
mount -t dsfs "$store" "$mnt" -o bogus 2>&1 || status=$?
echo "bogus status $status"
echo done
"#;

#[test]
fn mount_8_goes_through_the_helper() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("unshare") || !have("findmnt") {
        eprintln!("not root, or no unshare/findmnt: skipping mount(8) through mount.dsfs");
        return;
    }
    let m = unmounted("$DIR/repo");
    let root = m.dir.path().join("root");
    succeeded(&install(&["--prefix", root.to_str().unwrap()]));
    let real_sbin = fs::canonicalize("/sbin").unwrap();
    let fstab = m.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test\n{} {} dsfs ro,noauto,user,_netdev,nofail,x-systemd.automount,log={} 0 0\n",
            m.spec,
            m.mnt.display(),
            m.log().display()
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            NAMESPACE_SCRIPT,
            "sh",
        ])
        .arg(&real_sbin)
        .arg(root.join("sbin"))
        .arg(&m.spec)
        .arg(&m.mnt)
        .arg(m.log())
        .arg(&fstab)
        .env("DSFS_BIN", DSFS)
        .env_remove("DSFS_STORE")
        .output()
        .unwrap();
    if !out.status.success() && text(&out.stderr).contains("unshare failed") {
        eprintln!("unshare is not permitted here: skipping ({})", show(&out));
        return;
    }
    succeeded(&out);
    let stdout = text(&out.stdout);
    for piece in [
        format!("mount.dsfs: would run: {DSFS} mount "),
        format!("mounted -t dsfs: {}\n", m.spec),
        "mounted -t fuse.dsfs: one\n".into(),
        "mounted from fstab: one two\n".into(),
        "dsfs: unknown mount option \"bogus\"".into(),
        "bogus status 32\n".into(),
        "done\n".into(),
    ] {
        assert!(stdout.contains(&piece), "no {piece:?} in\n{}", show(&out));
    }
    // The mounts lived in the namespace only.
    assert!(!is_mounted(&m.mnt));
    let got = m.dsfs_store(&["get", "/two"]);
    succeeded(&got);
    assert_eq!(got.stdout, b"two\n");
}

/// Run in a private mount namespace as root: a world-usable /dev/fuse node (here it may be
/// root-only), the installed helper over /sbin's directory, the installed dsfs over
/// /usr/local/bin and a test fstab over /etc/fstab; then, as the user `nobody` with an empty
/// environment (no DSFS_BIN: the helper finds /usr/local/bin/dsfs through mount(8)'s own PATH),
/// `mount DIR` and `umount DIR`.
/// Positional parameters: the real /sbin directory, the prefix install.sh installed into, the
/// fuse device node, the fstab, the mount point.
const USER_MOUNT_SCRIPT: &str = r#"
set -eu
real_sbin=$1 root=$2 fuse=$3 fstab=$4 mnt=$5
cleanup() {
    if findmnt -rn --mountpoint "$mnt" >/dev/null; then fusermount3 -u -z "$mnt"; fi
}
trap cleanup EXIT
mount --bind "$fuse" /dev/fuse
mount --bind "$root/sbin" "$real_sbin"
mount --bind "$root/usr/local/bin" /usr/local/bin
mount --bind "$fstab" /etc/fstab
setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin sh -c '
    set -eu
    mnt=$1
    mounted() { findmnt -rn --mountpoint "$mnt" >/dev/null; }
    mount "$mnt"
    i=0
    until mounted; do
        i=$((i + 1)); [ "$i" -lt 300 ] || { echo "not mounted after 30 s" >&2; exit 1; }
        sleep 0.1
    done
    echo "type $(findmnt -rn -o FSTYPE --mountpoint "$mnt")"
    echo "options $(findmnt -rn -o OPTIONS --mountpoint "$mnt")"
    id -u > "$mnt/who"
    echo "owner $(stat -c %u "$mnt/who")"
    umount "$mnt"
    i=0
    while mounted; do
        i=$((i + 1)); [ "$i" -lt 300 ] || { echo "still mounted after 30 s" >&2; exit 1; }
        sleep 0.1
    done
    echo "user done"
' user "$mnt"
"#;

#[test]
fn fstab_user_mount_runs_the_helper_as_the_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || !have("unshare")
        || !have("setpriv")
        || !have("findmnt")
        || !Path::new("/usr/local/bin").is_dir()
    {
        eprintln!("not root, or no unshare/setpriv/findmnt: skipping the user mount");
        return;
    }
    let m = unmounted("$DIR/store/repo");
    let nobody = 65534;
    let store = m.dir.path().join("store");
    fs::create_dir(&store).unwrap();
    for p in [&store, &m.mnt] {
        std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
    }
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = m.dir.path().join("root");
    succeeded(&install(&[
        "--prefix",
        root.to_str().unwrap(),
        "--dsfs",
        DSFS,
    ]));
    let fuse = m.dir.path().join("fuse");
    let made = Command::new("mknod")
        .arg(&fuse)
        .args(["c", "10", "229"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        eprintln!("cannot make a fuse device node here: skipping the user mount");
        return;
    }
    fs::set_permissions(&fuse, fs::Permissions::from_mode(0o666)).unwrap();
    let fstab = m.dir.path().join("fstab");
    let log = store.join("log");
    fs::write(
        &fstab,
        format!(
            "{} {} dsfs noauto,user,nofail,create,log={} 0 0\n",
            m.spec,
            m.mnt.display(),
            log.display()
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            USER_MOUNT_SCRIPT,
            "sh",
        ])
        .arg(fs::canonicalize("/sbin").unwrap())
        .arg(&root)
        .arg(&fuse)
        .arg(&fstab)
        .arg(&m.mnt)
        .env_remove("DSFS_STORE")
        .output()
        .unwrap();
    if !out.status.success() && text(&out.stderr).contains("unshare failed") {
        eprintln!("unshare is not permitted here: skipping ({})", show(&out));
        return;
    }
    succeeded(&out);
    let stdout = text(&out.stdout);
    for piece in ["type fuse.dsfs\n", "noexec", "owner 65534\n", "user done\n"] {
        assert!(stdout.contains(piece), "no {piece:?} in\n{}", show(&out));
    }
    assert!(log.exists(), "no daemon log at {}", log.display());
    // umount(8) returns before the daemon has committed and let go of the store: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = m.dsfs_store(&["get", "/who"]);
        if got.status.success() {
            assert_eq!(got.stdout, b"65534\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store stayed unreadable: {}",
            show(&got)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze not installed: skipping the unit check");
        return;
    }
    // systemd looks `dsfs` up in /usr/local/bin, /usr/bin, ...: point the Exec lines at the
    // binary under test instead.
    let unit = fs::read_to_string(helpers().join("dsfs@.service")).unwrap();
    let mut execs = 0;
    let unit: String = unit
        .lines()
        .map(|l| {
            let patched = match l.split_once('=') {
                Some((key, cmd)) if key.starts_with("Exec") => match cmd.strip_prefix("dsfs ") {
                    Some(rest) => {
                        execs += 1;
                        format!("{key}={DSFS} {rest}")
                    }
                    None => l.to_owned(),
                },
                _ => l.to_owned(),
            };
            patched + "\n"
        })
        .collect();
    assert_eq!(execs, 2, "ExecStart and ExecStop run dsfs:\n{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsfs@.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    succeeded(&out);
    assert!(out.stderr.is_empty(), "{}", show(&out));
}

#[test]
fn shell_scripts_parse_and_pass_shellcheck() {
    let scripts = [helpers().join("mount.dsfs"), helpers().join("install.sh")];
    for shell in ["sh", "dash", "bash"] {
        if !have(shell) {
            continue;
        }
        for s in &scripts {
            let out = Command::new(shell).arg("-n").arg(s).output().unwrap();
            assert!(
                out.status.success(),
                "{shell} -n {}: {}",
                s.display(),
                show(&out)
            );
        }
    }
    if have("shellcheck") {
        let out = Command::new("shellcheck").args(&scripts).output().unwrap();
        assert!(out.status.success(), "shellcheck: {}", show(&out));
    } else {
        eprintln!("shellcheck not installed: skipping it");
    }
}
