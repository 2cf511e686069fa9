//! `dsfs mount` and `dsfs umount`.
//!
//! `mount` checks the mount point, opens the store and mounts it. Without `-f` it starts
//! itself again as a daemon (in a new session) and returns once the daemon reports the mount
//! live, or with the daemon's error. SIGINT, SIGTERM and SIGHUP unmount cleanly: the session
//! ends, every staged write is committed and the store is closed. `umount` unmounts and waits
//! for the daemon to finish those commits, so a remount right after never finds the store
//! still locked.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};

use crate::datastore::{Error, ErrorKind};
use crate::fs::fuse::{FuseAdapter, KernelOptions};
use crate::fs::{DsFs, FsOptions};
use crate::spec::{self, OpenMode, StoreSpec};

/// The environment variable that marks the re-executed daemon.
const DAEMON_ENV: &str = "DSFS_MOUNT_DAEMON";
/// What the daemon prints on its standard output once the mount is live.
const READY: &str = "dsfs-mount-ready";
/// How long `umount` waits for the daemon to commit and exit.
const EXIT_WAIT: Duration = Duration::from_secs(300);

/// Parsed `-o` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Read-only mount.
    pub read_only: bool,
    /// Let every user in (`allow_other`).
    pub allow_other: bool,
    /// Let root in too (`allow_root`).
    pub allow_root: bool,
    /// Let the kernel check permissions from the reported modes (on unless turned off).
    pub default_permissions: bool,
    /// Report every file as owned by this user.
    pub uid: Option<u32>,
    /// Report every file as owned by this group.
    pub gid: Option<u32>,
    /// Clear these bits from every reported mode.
    pub umask: Option<u32>,
    /// FUSE worker threads.
    pub threads: usize,
    /// Kernel passthrough for file-backed values.
    pub passthrough: bool,
    /// Write the UnixFS blocks of every committed file under `/blocks`, so that Kubo serves
    /// each file by its CID.
    pub ipfs_blocks: bool,
    /// Kernel writeback cache (ignored when passthrough is in use).
    pub writeback_cache: bool,
    /// How often parts of the store that other programs may write (flatfs, rados) are revalidated;
    /// `None` keeps the default ([`crate::index::follow::DEFAULT_REVALIDATE`]), zero never.
    pub revalidate: Option<Duration>,
    /// Mount over a directory that has entries (hiding them while mounted).
    pub nonempty: bool,
    /// Serve extended attributes (`noxattr` turns them all off; see
    /// [`KernelOptions::xattr`]).
    pub xattr: bool,
    /// Create the store where the spec names a missing path or an empty directory (`create`,
    /// or `dsfs mount --create`).
    pub create: bool,
    /// Options handed to the kernel unchanged (nosuid, nodev, noexec, noatime, ...).
    pub kernel: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            read_only: false,
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            uid: None,
            gid: None,
            umask: None,
            // At least 4 even on 2 cores: a worker blocked in the staging file's write leaves
            // the kernel's queue to the others, and 4 buffered writers of one file (which the
            // kernel sends in parallel, see `fs::fuse`) ran at 9,000-11,000 IOPS with 2
            // workers against 16,400-17,600 with 4 (alternated runs, 2 cores, load 14).
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(4)
                .clamp(4, 8),
            passthrough: true,
            ipfs_blocks: false,
            writeback_cache: false,
            revalidate: None,
            nonempty: false,
            xattr: true,
            create: false,
            kernel: Vec::new(),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

fn on_off(name: &str, value: Option<&str>) -> Result<bool, Error> {
    match value {
        None | Some("1" | "on" | "yes" | "true") => Ok(true),
        Some("0" | "off" | "no" | "false") => Ok(false),
        Some(v) => Err(bad(format!("-o {name}= takes on or off, not {v:?}"))),
    }
}

fn number(name: &str, value: Option<&str>, radix: u32) -> Result<u32, Error> {
    let v = value.ok_or_else(|| bad(format!("-o {name} needs a value ({name}=...)")))?;
    u32::from_str_radix(v, radix).map_err(|_| bad(format!("-o {name}={v}: not a number")))
}

fn seconds(name: &str, value: Option<&str>) -> Result<Duration, Error> {
    let v = value.ok_or_else(|| bad(format!("-o {name} needs a value ({name}=SECONDS)")))?;
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| bad(format!("-o {name}={v}: not a number of seconds")))
}

impl MountOptions {
    /// Parses comma-separated `-o` lists, as `mount(8)` and fstab write them. Options that only
    /// matter to `mount(8)` or systemd (`noauto`, `user`, `_netdev`, `nofail`, `x-*`, ...) are
    /// accepted and ignored.
    pub fn parse<S: AsRef<str>>(lists: &[S]) -> Result<MountOptions, Error> {
        let mut o = MountOptions::default();
        for list in lists {
            for opt in list.as_ref().split(',').filter(|s| !s.is_empty()) {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (opt, None),
                };
                match name {
                    "ro" => o.read_only = true,
                    "rw" => o.read_only = false,
                    "allow_other" => o.allow_other = true,
                    "allow_root" => o.allow_root = true,
                    "default_permissions" => o.default_permissions = on_off(name, value)?,
                    "no_default_permissions" => o.default_permissions = false,
                    "uid" => o.uid = Some(number(name, value, 10)?),
                    "gid" => o.gid = Some(number(name, value, 10)?),
                    "umask" => o.umask = Some(number(name, value, 8)? & 0o7777),
                    "threads" => {
                        let n = number(name, value, 10)? as usize;
                        if !(1..=64).contains(&n) {
                            return Err(bad("-o threads= takes 1 to 64"));
                        }
                        o.threads = n;
                    }
                    "passthrough" => o.passthrough = on_off(name, value)?,
                    "ipfs_blocks" => o.ipfs_blocks = on_off(name, value)?,
                    "writeback_cache" => o.writeback_cache = on_off(name, value)?,
                    "revalidate" => o.revalidate = Some(seconds(name, value)?),
                    "nonempty" => o.nonempty = on_off(name, value)?,
                    "xattr" => o.xattr = on_off(name, value)?,
                    "noxattr" => o.xattr = false,
                    "create" => o.create = on_off(name, value)?,
                    "nosuid" | "nodev" | "noexec" | "noatime" | "suid" | "dev" | "exec"
                    | "atime" | "sync" | "async" | "dirsync" => o.kernel.push(name.to_owned()),
                    "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner"
                    | "group" | "_netdev" | "nofail" | "relatime" | "strictatime" | "lazytime" => {}
                    n if n.starts_with("x-") || n.starts_with("X-") || n.starts_with("comment") => {
                    }
                    other => {
                        return Err(bad(format!(
                            "unknown mount option {other:?} (see 'dsfs mount --help')"
                        )));
                    }
                }
            }
        }
        Ok(o)
    }

    fn fuser_config(&self, fsname: &str) -> Config {
        let mut opts = vec![
            MountOption::FSName(escape_fsname(fsname)),
            MountOption::Subtype("dsfs".to_owned()),
        ];
        if self.read_only {
            opts.push(MountOption::RO);
        }
        if self.default_permissions {
            opts.push(MountOption::DefaultPermissions);
        }
        for k in &self.kernel {
            opts.push(match k.as_str() {
                "nosuid" => MountOption::NoSuid,
                "suid" => MountOption::Suid,
                "nodev" => MountOption::NoDev,
                "dev" => MountOption::Dev,
                "noexec" => MountOption::NoExec,
                "exec" => MountOption::Exec,
                "noatime" => MountOption::NoAtime,
                "atime" => MountOption::Atime,
                "sync" => MountOption::Sync,
                "async" => MountOption::Async,
                "dirsync" => MountOption::DirSync,
                other => MountOption::CUSTOM(other.to_owned()),
            });
        }
        let mut config = Config::default();
        config.mount_options = opts;
        config.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(self.threads);
        config.clone_fd = true;
        config
    }
}

/// The mount's source name (the store's spec) as an `fsname=` option. fuser joins every option
/// with commas into the `-o` argument of fusermount3, the path a user other than root mounts
/// through, so a comma in the spec would end the name there and make the rest an option of the
/// mount: a store at `/tmp/x,allow_other` would have asked for a public mount, `/tmp/x,ro` for a
/// read-only one. fusermount3 reads `\,` and `\\` inside `fsname=` as a comma and a backslash,
/// as libfuse writes them. A mount made by root directly (mount(2)) shows the escapes in the
/// mount table: a cosmetic cost, paid only by names with a comma or a backslash.
fn escape_fsname(spec: &str) -> String {
    let mut out = String::with_capacity(spec.len());
    for c in spec.chars() {
        if matches!(c, ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user a FUSE mount at `path` belongs to (its `user_id=` option), if it is one.
fn mount_owner(path: &Path) -> Option<u32> {
    let (_, options) = mount_at(path)?;
    options
        .split(',')
        .find_map(|o| o.strip_prefix("user_id="))
        .and_then(|u| u.parse().ok())
}

/// A FUSE mount at `mountpoint` that this user may not look into, by its canonical path: the
/// kernel refuses everyone but its owner (root too) a private mount's root, so resolving the
/// path fails with `EACCES`, yet root may unmount it.
fn closed_fuse_mount(mountpoint: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(mountpoint).ok()?;
    let mp = std::fs::canonicalize(abs.parent()?)
        .ok()?
        .join(abs.file_name()?);
    match std::fs::symlink_metadata(&mp) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        _ => return None,
    }
    mounted_fstype(&mp).filter(|t| t.starts_with("fuse"))?;
    Some(mp)
}

/// The filesystem type mounted at `path`, if anything is.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    mount_at(path).map(|(fstype, _)| fstype)
}

/// The filesystem type and superblock options of the mount at `path` (the last one, if
/// several are stacked there), from /proc/self/mountinfo.
fn mount_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > 4
            && unescape_mountinfo(fields[4]) == want
            && let Some(fstype) = fields.get(sep + 1)
        {
            let options = fields.get(sep + 3).copied().unwrap_or_default();
            found = Some((fstype.to_string(), options.to_owned()));
        }
    }
    found
}

/// Whether an error is a dead FUSE mount (its daemon gone: "transport endpoint is not
/// connected").
fn is_dead_mount(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTCONN)
}

/// The mount point as an absolute path, and whether it is a dead FUSE mount.
fn resolve_mountpoint(mountpoint: &Path) -> Result<(PathBuf, bool), Error> {
    let ctx = || format!("mount point {}", mountpoint.display());
    let mp = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if is_dead_mount(&e) => {
            std::path::absolute(mountpoint).map_err(|e| Error::io(ctx(), e))?
        }
        Err(e) => return Err(Error::io(ctx(), e)),
    };
    match std::fs::metadata(&mp) {
        Ok(m) if m.is_dir() => Ok((mp, false)),
        Ok(_) => Err(bad(format!(
            "mount point {} is not a directory",
            mp.display()
        ))),
        Err(e) if is_dead_mount(&e) => Ok((mp, true)),
        Err(e) => Err(Error::io(ctx(), e)),
    }
}

fn canonical_mountpoint(mountpoint: &Path) -> Result<PathBuf, Error> {
    match resolve_mountpoint(mountpoint)? {
        (mp, false) => Ok(mp),
        (mp, true) => Err(bad(format!(
            "{} is a dead FUSE mount (its daemon is gone); run 'dsfs umount {}' first",
            mp.display(),
            mp.display()
        ))),
    }
}

/// Where the daemon serving `mountpoint` records its process id.
fn pid_file(mountpoint: &Path) -> PathBuf {
    let uid = crate::sys::effective_ids().0;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            if uid == 0 {
                PathBuf::from("/run")
            } else {
                std::env::temp_dir()
            }
        });
    pid_file_in(&base, uid, mountpoint)
}

/// The pid file of a daemon of user `uid` serving `mountpoint`, under the runtime directory
/// `base` that daemon used.
fn pid_file_in(base: &Path, uid: u32, mountpoint: &Path) -> PathBuf {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(mountpoint.as_os_str().as_encoded_bytes());
    base.join(format!("dsfs-{uid}"))
        .join(format!("{:016x}.pid", h.finish()))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
}

/// The pid file and process id of the daemon serving `mp`, for `umount` to wait for. Its own
/// user's first; for a mount of another user (root unmounting someone's mount), that user's
/// pid file where a daemon of theirs would have put it (`/run/user/UID`, the temporary
/// directory, `/run` for root), and only a process of that user counts.
fn daemon_of(mp: &Path) -> (PathBuf, Option<i32>) {
    use std::os::unix::fs::MetadataExt;
    let own = pid_file(mp);
    if let Some(pid) = read_pid(&own) {
        return (own, Some(pid));
    }
    let Some(owner) = mount_owner(mp).filter(|&u| u != crate::sys::effective_ids().0) else {
        return (own, None);
    };
    let bases = [
        PathBuf::from(format!("/run/user/{owner}")),
        std::env::temp_dir(),
        PathBuf::from("/tmp"),
        PathBuf::from("/run"),
    ];
    for base in &bases {
        let path = pid_file_in(base, owner, mp);
        if let Some(pid) = read_pid(&path)
            && std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == owner)
        {
            return (path, Some(pid));
        }
    }
    (own, None)
}

/// `dsfs mount`.
pub fn mount(
    spec_text: &str,
    mountpoint: &Path,
    option_lists: &[String],
    foreground: bool,
    log: Option<&Path>,
    create: bool,
) -> Result<ExitCode, Error> {
    let mut options = MountOptions::parse(option_lists)?;
    options.create |= create;
    let fuse_conf = std::fs::read_to_string(FUSE_CONF).ok();
    if let Some(msg) = allow_other_refusal(
        fuse_conf.as_deref(),
        crate::sys::effective_ids().0,
        &options,
    ) {
        return Err(bad(msg));
    }
    let spec = StoreSpec::parse(spec_text)?;
    let mp = canonical_mountpoint(mountpoint)?;
    check_access(&mp)?;
    if let Some(fstype) = mounted_fstype(&mp) {
        return Err(bad(format!(
            "{} is already mounted ({fstype})",
            mp.display()
        )));
    }
    if !options.nonempty {
        refuse_non_empty(&mp)?;
    }
    if foreground || std::env::var_os(DAEMON_ENV).is_some() {
        return serve(
            &spec,
            spec_text,
            &mp,
            &options,
            std::env::var_os(DAEMON_ENV).is_some(),
        );
    }
    // Start the daemon: the same command with -f, reporting readiness on its stdout.
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the dsfs binary", e))?;
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening log {}", path.display()), e))?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(exe)
        .arg("mount")
        .arg(spec_text)
        .arg(&mp)
        .args(option_lists.iter().flat_map(|o| ["-o", o.as_str()]))
        .args(create.then_some("--create"))
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| Error::io("starting the mount daemon", e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Io, "no pipe to the mount daemon"))?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line == READY => Ok(ExitCode::SUCCESS),
        Some(Ok(line)) => Err(Error::new(ErrorKind::Io, line)),
        _ => {
            let how = describe_exit(child.wait().ok());
            let see = match log {
                Some(path) => format!("see {} or run with -f", path.display()),
                None => "run with -f to see why".to_owned(),
            };
            Err(Error::new(
                ErrorKind::Io,
                format!("the mount daemon exited {how} before the mount was live; {see}"),
            ))
        }
    }
}

/// Refuses a mount point that fusermount3 refuses to a user other than root, before anything
/// (a new store, with --create) is made: such a user needs write access to it, and must own it
/// if it has the sticky bit.
/// The file where fusermount3 looks for `user_allow_other`.
const FUSE_CONF: &str = "/etc/fuse.conf";

/// Why FUSE will refuse this mount's `allow_other` or `allow_root`, if it will: a user other
/// than root may ask for them only where `conf` (the text of [`FUSE_CONF`], `None` if it
/// cannot be read) has a `user_allow_other` line that is not commented out. Without this
/// check the refusal surfaces only as "Permission denied".
fn allow_other_refusal(conf: Option<&str>, euid: u32, options: &MountOptions) -> Option<String> {
    let asked = match (options.allow_other, options.allow_root) {
        (true, _) => "allow_other",
        (false, true) => "allow_root",
        (false, false) => return None,
    };
    let allowed = conf.is_some_and(|text| {
        text.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    });
    (euid != 0 && !allowed).then(|| {
        format!(
            "-o {asked} needs a line user_allow_other in {FUSE_CONF} for a user other than \
             root (add it as root, or mount without {asked})"
        )
    })
}

fn check_access(mp: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = crate::sys::effective_ids();
    if uid == 0 {
        return Ok(());
    }
    let ctx = || format!("mount point {}", mp.display());
    let meta = std::fs::metadata(mp).map_err(|e| Error::io(ctx(), e))?;
    if meta.mode() & libc::S_ISVTX != 0 && meta.uid() != uid {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "mount point {} has the sticky bit and is not yours: FUSE mounts only on a \
                 directory you own there",
                mp.display()
            ),
        ));
    }
    if !crate::sys::may_write(mp).map_err(|e| Error::io(ctx(), e))? {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "mount point {}: you have no write access to it, which FUSE needs to mount \
                 there (use a directory of your own)",
                mp.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a mount point with entries: mounting would hide them until the unmount, which
/// looks like data loss to whoever finds the directory empty.
fn refuse_non_empty(mp: &Path) -> Result<(), Error> {
    let mut entries = std::fs::read_dir(mp)
        .map_err(|e| Error::io(format!("reading mount point {}", mp.display()), e))?;
    match entries.next() {
        None => Ok(()),
        Some(entry) => {
            let example = entry
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(bad(format!(
                "mount point {} is not empty (it holds {example:?}, among others); mounting \
                 would hide its files until the unmount: use an empty directory, or -o nonempty \
                 to mount over it anyway",
                mp.display()
            )))
        }
    }
}

/// How a daemon that exited early ended, as words.
fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "for an unknown reason".to_owned(),
        },
        None => "and could not be waited for".to_owned(),
    }
}

/// Mounts and serves until unmounted or signalled.
fn serve(
    spec: &StoreSpec,
    spec_text: &str,
    mp: &Path,
    options: &MountOptions,
    daemon: bool,
) -> Result<ExitCode, Error> {
    let report = |msg: &str| {
        if daemon {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{msg}");
            let _ = out.flush();
        }
    };
    let signals =
        crate::sys::SignalSet::block_termination().map_err(|e| Error::io("blocking signals", e))?;
    if daemon {
        crate::sys::new_session();
    }
    let result: Result<(Arc<DsFs>, Session<FuseAdapter>, spec::Opened), Error> = (|| {
        // What --create is about to make: a mount that fails after it takes it back.
        let creation = match options.create {
            true => Some(spec::Creation::before(spec)?).filter(|c| !c.is_empty()),
            false => None,
        };
        let opened = spec::open(
            spec,
            OpenMode {
                progress: true,
                create: options.create,
                ..OpenMode::default()
            },
        )
        .map_err(|e| {
            match (
                e.kind(),
                spec.home().and_then(|h| super::control::holder(&h)),
            ) {
                (ErrorKind::Locked, Some(holder)) => {
                    bad(format!("{spec_text} is already {holder}"))
                }
                _ => e,
            }
        })?;
        if let Some(r) = &opened.reconciled
            && !r.is_consistent()
        {
            log::warn!("repaired the index after an unclean stop: {}", r.summary());
        }
        if let Some(interval) = options.revalidate {
            opened.store.set_revalidate(interval);
        }
        let fs = Arc::new(DsFs::new(
            opened.store.clone(),
            FsOptions {
                read_only: options.read_only,
                uid: options.uid,
                gid: options.gid,
                umask: options.umask,
                passthrough: options.passthrough,
                ipfs_blocks: options.ipfs_blocks,
            },
        ));
        let adapter = FuseAdapter::new(
            fs.clone(),
            KernelOptions {
                passthrough: options.passthrough,
                writeback_cache: options.writeback_cache,
                xattr: options.xattr,
                ..KernelOptions::default()
            },
        );
        let notifier = adapter.notifier_slot();
        let inventory = creation.as_ref().map(spec::Creation::inventory);
        let session = match Session::new(adapter, mp, &options.fuser_config(spec_text)) {
            Ok(session) => session,
            Err(e) => {
                let e = mount_error(mp, e, || crate::sys::may_read_write(Path::new(FUSE_DEVICE)));
                return Err(match (&creation, inventory) {
                    (Some(creation), Some(inventory)) => {
                        undo_creation(&fs, &opened, creation, &inventory, e)
                    }
                    _ => e,
                });
            }
        };
        let _ = notifier.set(session.notifier());
        Ok((fs, session, opened))
    })();
    let (fs, mut session, opened) = match result {
        Ok(v) => v,
        Err(e) => {
            report(&e.to_string());
            return Err(e);
        }
    };
    let pid_path = pid_file(mp);
    if let Some(dir) = pid_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", std::process::id())) {
        log::warn!("could not write {}: {e}", pid_path.display());
    }
    // The command line reaches the mounted store through the daemon (see `control`).
    let control = spec.home().and_then(|home| {
        super::control::Server::start(&home, opened.store.clone(), opened.description.clone(), mp)
            .map_err(|e| log::warn!("no control socket ({e}): dsfs commands cannot reach this store while it is mounted"))
            .ok()
    });
    drop(opened);
    log::info!("mounted {spec_text} at {}", mp.display());
    report(READY);
    let mut unmounter = session.unmount_callable();
    let watched = mp.to_path_buf();
    std::thread::Builder::new()
        .name("dsfs-signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                log::info!("signal {sig}: unmounting {}", watched.display());
                match unmounter.unmount() {
                    Ok(()) => return,
                    Err(e) => {
                        // Busy (a process works inside the mount): detach it lazily, so the
                        // session still ends and every staged write is committed.
                        log::warn!(
                            "unmount of {} failed ({e}); detaching it",
                            watched.display()
                        );
                        if lazy_unmount(&watched) {
                            return;
                        }
                        log::error!(
                            "could not detach {}; send the signal again",
                            watched.display()
                        );
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the signal thread", e))?;
    let ran = session.run();
    drop(control);
    let shut = fs.shutdown();
    let failed_path = failure_file(&pid_path);
    match &shut {
        // `umount` waits for this process and reports the failure from this file.
        Err(e) => {
            if let Err(w) = std::fs::write(&failed_path, format!("{e}\n")) {
                log::error!("could not write {}: {w}", failed_path.display());
            }
        }
        Ok(()) => {
            let _ = std::fs::remove_file(&failed_path);
        }
    }
    let _ = std::fs::remove_file(&pid_path);
    if let Err(e) = ran {
        log::error!("FUSE session ended with an error: {e}");
    }
    match shut {
        Ok(()) => {
            log::info!("unmounted {} cleanly", mp.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(Error::new(
            ErrorKind::Io,
            format!("committing at unmount: {e}"),
        )),
    }
}

/// The kernel's FUSE device, which every mount opens.
const FUSE_DEVICE: &str = "/dev/fuse";

/// The error of a kernel mount of `mp` that failed with `e`. A permission error says so when
/// this user cannot open the FUSE device (`device_open` is false): where `/dev/fuse` is root's
/// alone, a mount by anyone else fails opening it, with nothing else in the message to say
/// which of the files involved refused.
fn mount_error(mp: &Path, e: std::io::Error, device_open: impl FnOnce() -> bool) -> Error {
    let mut what = format!("mounting {}", mp.display());
    if e.kind() == std::io::ErrorKind::PermissionDenied && !device_open() {
        what.push_str(&format!(
            " (this user may not open {FUSE_DEVICE}: a mount needs read and write access to \
             it, which most systems give everyone with mode 0666; or mount as root)"
        ));
    }
    Error::io(what, e)
}

/// After a mount that failed: removes the store `--create` just made for it, if it is still
/// exactly that (no key or directory in its index, nothing new on disk since `inventory`), and
/// says in the error what became of it.
fn undo_creation(
    fs: &DsFs,
    opened: &spec::Opened,
    creation: &spec::Creation,
    inventory: &[(PathBuf, bool)],
    failed: Error,
) -> Error {
    let index = opened.store.index();
    let untouched = matches!(
        (index.key_count(), index.entry_count(crate::index::ROOT)),
        (Ok(0), Ok(0))
    );
    let closed = fs.shutdown();
    let outcome = match (untouched, closed) {
        (false, _) => Err("it holds data now; leaving it in place".to_owned()),
        (true, Err(e)) => Err(format!("closing it failed ({e}); leaving it in place")),
        (true, Ok(())) => creation.undo(inventory),
    };
    let said = match outcome {
        Ok(done) => done,
        Err(why) => format!("the store --create made was not removed: {why}"),
    };
    Error::new(failed.kind(), format!("{failed}; {said}"))
}

/// Where a daemon whose final commit failed says what is at risk, for `umount` to report.
fn failure_file(pid_path: &Path) -> PathBuf {
    pid_path.with_extension("failed")
}

/// Detaches `mp` even if busy (`fusermount3 -u -z`, or `umount -l` as root).
fn lazy_unmount(mp: &Path) -> bool {
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    ok(Command::new("fusermount3").args(["-u", "-z"]).arg(mp))
        || ok(Command::new("umount").arg("-l").arg(mp))
}

/// `dsfs umount`: unmounts and waits for the daemon to commit and exit.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<ExitCode, Error> {
    let (mp, dead) = match resolve_mountpoint(mountpoint) {
        Ok(found) => found,
        Err(e) => (closed_fuse_mount(mountpoint).ok_or(e)?, false),
    };
    if dead {
        // The daemon is gone and nothing is left to commit: detach the dead mount.
        if lazy_unmount(&mp) {
            let _ = std::fs::remove_file(pid_file(&mp));
            return Ok(ExitCode::SUCCESS);
        }
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{} is a dead FUSE mount and could not be detached",
                mp.display()
            ),
        ));
    }
    match mounted_fstype(&mp) {
        Some(t) if t.starts_with("fuse") => {}
        Some(t) => return Err(bad(format!("{} is a {t} mount, not dsfs", mp.display()))),
        None => return Err(bad(format!("{} is not mounted", mp.display()))),
    }
    let (pid_path, pid) = daemon_of(&mp);
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(&mp).output();
    let ok = match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            // As root, umount(8) works where fusermount3 is missing or refuses.
            let fallback = Command::new("umount")
                .args(if lazy { vec!["-l"] } else { vec![] })
                .arg(&mp)
                .output();
            match fallback {
                Ok(f) if f.status.success() => true,
                _ => {
                    let hint = if !lazy && msg.contains("busy") {
                        format!(
                            " (a process has a file or its working directory there: see \
                             'fuser -vm {0}'; or 'dsfs umount -l {0}' detaches it now and the \
                             daemon commits and exits once the last of them is gone)",
                            mp.display()
                        )
                    } else {
                        String::new()
                    };
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("unmounting {}: {msg}{hint}", mp.display()),
                    ));
                }
            }
        }
        Err(e) => {
            let fallback = Command::new("umount").arg(&mp).output();
            match fallback {
                Ok(f) if f.status.success() => true,
                _ => return Err(Error::io("running fusermount3", e)),
            }
        }
    };
    if ok && let Some(pid) = pid {
        let deadline = Instant::now() + EXIT_WAIT;
        while crate::sys::process_alive(pid) {
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("unmounted, but the dsfs daemon (pid {pid}) is still committing"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let failed_path = failure_file(&pid_path);
    if let Ok(what) = std::fs::read_to_string(&failed_path) {
        let _ = std::fs::remove_file(&failed_path);
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "unmounted {}, but the final commit failed; writes not yet committed may be \
                 lost: {}",
                mp.display(),
                what.trim()
            ),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {

    /// A mount refused with EACCES names /dev/fuse when this user cannot open it, and only
    /// then (it said only "Permission denied").
    #[test]
    fn a_refused_mount_names_the_fuse_device_when_it_is_not_open_to_the_user() {
        let mp = Path::new("/m");
        let denied = || std::io::Error::from_raw_os_error(libc::EACCES);
        let closed = mount_error(mp, denied(), || false).to_string();
        assert!(closed.contains("mounting /m"), "{closed}");
        assert!(closed.contains("may not open /dev/fuse"), "{closed}");
        assert!(closed.contains("Permission denied"), "{closed}");
        let open = mount_error(mp, denied(), || true).to_string();
        assert!(!open.contains("/dev/fuse"), "{open}");
        let other = mount_error(mp, std::io::Error::from_raw_os_error(libc::ENOENT), || {
            panic!("asked about the device for an error that is not about permission")
        })
        .to_string();
        assert!(!other.contains("/dev/fuse"), "{other}");
    }
    use super::*;

    #[test]
    fn an_early_daemon_exit_is_described_in_words() {
        use std::os::unix::process::ExitStatusExt;
        let code = describe_exit(Some(std::process::ExitStatus::from_raw(101 << 8)));
        assert_eq!(code, "with status 101");
        let sig = describe_exit(Some(std::process::ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(sig, "killed by signal 9");
    }

    #[test]
    fn a_non_empty_mount_point_is_refused_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        refuse_non_empty(dir.path()).unwrap();
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        let err = refuse_non_empty(dir.path()).unwrap_err();
        assert!(err.to_string().contains("-o nonempty"), "{err}");
        assert!(err.to_string().contains("precious"), "{err}");
        assert!(MountOptions::parse(&["nonempty"]).unwrap().nonempty);
        assert!(!MountOptions::parse(&["ro"]).unwrap().nonempty);
    }

    #[test]
    fn options_parse_like_mount_writes_them() {
        let o = MountOptions::parse(&[
            "ro,allow_other,uid=1000,gid=100,umask=022",
            "threads=4,passthrough=off,noauto,_netdev,x-systemd.automount,nosuid",
        ])
        .unwrap();
        assert!(o.read_only && o.allow_other);
        assert_eq!(
            (o.uid, o.gid, o.umask, o.threads),
            (Some(1000), Some(100), Some(0o022), 4)
        );
        assert!(!o.passthrough);
        assert_eq!(o.kernel, ["nosuid"]);
        assert!(o.default_permissions);
        // `create` is dsfs's, not the kernel's: it never reaches the kernel's options.
        assert!(!o.create);
        let c = MountOptions::parse(&["noauto,create"]).unwrap();
        assert!(c.create && c.kernel.is_empty());
        assert!(!MountOptions::parse(&["create=off"]).unwrap().create);
        for bad in [
            "create=maybe",
            "bogus",
            "uid=x",
            "threads=0",
            "passthrough=maybe",
            "umask=9",
        ] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_other_without_user_allow_other_is_refused_before_mounting() {
        let other = MountOptions::parse(&["allow_other"]).unwrap();
        let root = MountOptions::parse(&["allow_root"]).unwrap();
        let plain = MountOptions::parse(&["ro"]).unwrap();
        let debian = "# user_allow_other - lets users ...\n#user_allow_other\nmount_max = 1000\n";
        for conf in [None, Some(""), Some(debian), Some("user_allow_others\n")] {
            let msg = allow_other_refusal(conf, 1000, &other).expect("refused");
            assert!(msg.contains("user_allow_other in /etc/fuse.conf"), "{msg}");
            assert!(msg.contains("-o allow_other"), "{msg}");
            let msg = allow_other_refusal(conf, 1000, &root).expect("refused");
            assert!(msg.contains("-o allow_root"), "{msg}");
            assert_eq!(msg.lines().count(), 1);
            // Root may; nobody needs it without the options.
            assert_eq!(allow_other_refusal(conf, 0, &other), None);
            assert_eq!(allow_other_refusal(conf, 1000, &plain), None);
        }
        for conf in ["user_allow_other\n", "#x\n  user_allow_other  # yes\n"] {
            assert_eq!(
                allow_other_refusal(Some(conf), 1000, &other),
                None,
                "{conf}"
            );
        }
    }

    /// A comma in the store's spec stays inside the fsname option fusermount3 is given: on the
    /// old code `/tmp/x,ro` became `fsname=/tmp/x` and `ro`, and the mount was read-only (seen
    /// by hand as a non-root user, through fusermount3 3.14).
    #[test]
    fn a_comma_in_the_spec_does_not_become_a_mount_option() {
        let config = MountOptions::parse(&["rw"])
            .unwrap()
            .fuser_config("/tmp/x,ro\\y");
        let names: Vec<&MountOption> = config
            .mount_options
            .iter()
            .filter(|o| matches!(o, MountOption::FSName(_)))
            .collect();
        assert_eq!(names, [&MountOption::FSName("/tmp/x\\,ro\\\\y".to_owned())]);
        assert_eq!(escape_fsname("/plain/repo"), "/plain/repo");
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
