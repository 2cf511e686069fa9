//! The operating-system calls dsfs makes through libc, each wrapped safely. This is the only
//! module outside a backend's own `sys.rs` that contains `unsafe`.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The effective user and group of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// The machine's physical memory in bytes, when the system says.
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf takes a name constant, reads system configuration and retains nothing.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let pages = u64::try_from(pages).ok()?;
    let page = u64::try_from(page).ok()?;
    pages.checked_mul(page)
}

/// `statvfs(2)` of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and outlives the call; `out` is a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut out) };
    if rc == 0 {
        Ok(out)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process may write in `path` (`access(2)` with `W_OK`, by the real user, as
/// fusermount3 checks a mount point).
pub fn may_write(path: &Path) -> io::Result<bool> {
    access(path, libc::W_OK)
}

/// Whether this process may open `path` for reading and writing (`access(2)` with `R_OK` and
/// `W_OK`, by the real user). `false` also when the check itself fails.
pub fn may_read_write(path: &Path) -> bool {
    access(path, libc::R_OK | libc::W_OK).unwrap_or(false)
}

/// `access(2)` of `path` for `mode` by the real user: `Ok(false)` when it is refused
/// (`EACCES`, `EROFS`, `EPERM`), an error when the check itself fails.
fn access(path: &Path, mode: libc::c_int) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call; access retains nothing.
    let rc = unsafe { libc::access(c.as_ptr(), mode) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

/// `lseek(2)` on an open file (for `SEEK_DATA`/`SEEK_HOLE`); does not move std's view of
/// the file in any way that matters, since dsfs uses positional I/O only.
pub fn lseek(file: &impl AsRawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: the descriptor is open for the lifetime of the borrow; lseek retains nothing.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fallocate(2)`: allocates blocks for `len` bytes at `offset` of `file` (only where there
/// are none yet), extending the file unless `keep_size`. Filesystems without it answer
/// `EOPNOTSUPP`; off Linux it is always unsupported.
pub fn fallocate(file: &impl AsRawFd, offset: u64, len: u64, keep_size: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        let mode = if keep_size {
            libc::FALLOC_FL_KEEP_SIZE
        } else {
            0
        };
        loop {
            // SAFETY: the descriptor is open for the lifetime of the borrow; fallocate touches
            // no memory of ours.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len, keep_size);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// `syncfs(2)`: flushes the whole filesystem that holds `file` (`sync(2)` off Linux).
pub fn syncfs(file: &impl AsRawFd) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the descriptor is open for the lifetime of the borrow; syncfs touches no
        // memory of ours.
        let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// fsyncs the directory `dir`, so that entries created, renamed or removed in it outlive a
/// power loss. Callers add what they were doing and which store to the error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_SYNC_OF.with(|f| f.borrow().as_deref() == Some(dir)) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(test)]
    SYNCED_DIRS.with(|d| d.borrow_mut().push(dir.to_path_buf()));
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// The directories [`sync_dir`] synced on this thread, for tests.
    pub(crate) static SYNCED_DIRS: std::cell::RefCell<Vec<std::path::PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// A directory whose [`sync_dir`] on this thread fails with EIO, for tests of callers'
    /// errors (a directory fsync does not fail on demand otherwise).
    pub(crate) static FAIL_SYNC_OF: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// A set of signals that have been blocked in this thread (and in every thread it starts
/// afterwards), to be received synchronously with [`SignalSet::wait`].
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread. Call it before starting other
    /// threads so that they inherit the mask and the signals are left for [`SignalSet::wait`].
    pub fn block_termination() -> io::Result<SignalSet> {
        // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is valid, writable storage; these calls only manipulate it and the
        // calling thread's mask.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalSet { set })
    }

    /// Waits for one of the blocked signals and returns its number.
    pub fn wait(&self) -> io::Result<i32> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` was initialised by `block_termination`; `sig` is writable.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

// SAFETY: a sigset_t is plain data; waiting on it from another thread is what sigwait is for.
unsafe impl Send for SignalSet {}

/// Whether process `pid` still runs (signal 0 probes without sending anything). A process
/// that has exited but is not yet reaped by its parent (a zombie, such as a foreground mount
/// daemon whose parent waits for `dsfs umount` before reaping it) does not run.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Whether `/proc` shows process `pid` as exited and unreaped: every thread it still lists is
/// in state `Z`. The main thread alone is not enough: it shows `Z` as soon as it has exited,
/// while other threads may still run (or still be finishing I/O on the way out) and hold the
/// process's files, such as a mount daemon's index lock.
fn is_zombie(pid: i32) -> bool {
    let state = |path: std::path::PathBuf| {
        let stat = std::fs::read_to_string(path).ok()?;
        // `pid (comm) state ...`: the command may hold spaces and parentheses, the state
        // follows the last `)`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => {
            let mut any = false;
            for task in tasks.flatten() {
                any = true;
                if state(task.path().join("stat")).as_deref() != Some("Z") {
                    return false;
                }
            }
            any
        }
        Err(_) => state(format!("/proc/{pid}/stat").into()).as_deref() == Some("Z"),
    }
}

/// Detaches this process from its controlling terminal's session (for the mount daemon).
pub fn new_session() {
    // SAFETY: setsid has no memory-safety preconditions; failure (already a session leader)
    // is harmless here.
    unsafe {
        libc::setsid();
    }
}

/// Whether an error from [`open_beneath`] or [`open_regular_nofollow`] means the path is not a
/// plain file inside its store (a symlink on the way, or another file type there).
pub fn is_foreign_file(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
        || e.kind() == io::ErrorKind::InvalidData
}

/// Checks that an opened file is a regular file.
fn regular(file: std::fs::File, what: &Path) -> io::Result<std::fs::File> {
    if file.metadata()?.file_type().is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", what.display()),
        ))
    }
}

/// Opens the regular file `rel` below the directory `root` for reading, following no symlink
/// on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a symlink anywhere in
/// `rel` is `ELOOP`, a path leaving `root` is `EXDEV`, another file type is `InvalidData`
/// (FIFOs are opened non-blocking, so they cannot hang the caller). See
/// [`is_foreign_file`].
pub fn open_beneath(root: &std::fs::File, rel: &Path) -> io::Result<std::fs::File> {
    openat2_beneath(root, rel, libc::O_RDONLY)
}

/// [`open_beneath`], opened for reading and writing.
pub fn open_beneath_rw(root: &std::fs::File, rel: &Path) -> io::Result<std::fs::File> {
    openat2_beneath(root, rel, libc::O_RDWR)
}

fn openat2_beneath(root: &std::fs::File, rel: &Path, access: i32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: an all-zero open_how is a valid value of this plain C struct (no flags).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (access | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let fd = loop {
        // SAFETY: `root` is an open descriptor for the duration of the call, `c` is
        // NUL-terminated and `how` is a valid open_how of the size passed; openat2 retains
        // neither pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            break r as i32;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    regular(file, rel)
}

/// Reads the small regular file at `path` (a settings or marker file of a store): without
/// following a symlink in its last component, without blocking on a FIFO (either is an error
/// that [`is_foreign_file`] recognises), and refusing (`FileTooLarge`) a file of more than
/// `limit` bytes rather than reading a huge one into memory.
pub fn read_small_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_bounded(open_regular_nofollow(path)?, path, limit)
}

/// [`read_small_file`] for a file the user named (a spec or configuration file), which may be
/// a symlink: a FIFO or another file type is still refused without blocking.
pub fn read_config_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    read_bounded(regular(file, path)?, path, limit)
}

fn read_bounded(file: std::fs::File, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// Opens the regular file at `path` for reading without following a symlink in its last
/// component (`O_NOFOLLOW`); errors as for [`open_beneath`].
pub fn open_regular_nofollow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    regular(file, path)
}

/// The directory holding `path` (`.` for a bare name, whose `parent()` is empty).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Opens the directory `path` for use as the root of [`open_beneath`] (following symlinks:
/// a store's root may be one).
pub fn open_dir(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(path)
}

/// The process id and effective user of the peer of a connected Unix socket
/// (`SO_PEERCRED`: fixed when the peer connected or listened).
pub fn peer_credentials(socket: &impl AsRawFd) -> io::Result<(i32, u32)> {
    // SAFETY: an all-zero ucred is a valid value of this plain C struct.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the borrow; `cred` and `len` are writable and `len`
    // holds the size of `cred`, as getsockopt requires.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok((cred.pid, cred.uid))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a FIFO at `path`, for tests of what a store does with one where a file belongs.
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

#[cfg(test)]
mod process_tests {
    use super::process_alive;

    #[test]
    fn an_exited_unreaped_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Not reaped yet: it stays in the process table as a zombie.
        while process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the exited child {pid} still counts as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(process_alive(std::process::id() as i32));
    }

    /// A process whose main thread has exited while another thread still runs is alive (its
    /// files, such as a daemon's index lock, are still held). The old check read the main
    /// thread's state alone and called it dead.
    #[test]
    fn a_process_whose_main_thread_exited_is_alive_while_another_thread_runs() {
        let script = "import threading, time, ctypes\n\
                      threading.Thread(target=time.sleep, args=(600,)).start()\n\
                      ctypes.CDLL(None).pthread_exit(None)";
        /// Kills the child when the test ends, also when it fails.
        struct Killed(std::process::Child);
        impl Drop for Killed {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        // The sleeper outlives the test (which kills it): with a short sleep, a loaded
        // machine that let the test look only after the sleeper had ended saw the whole
        // process gone and failed.
        let Ok(child) = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
        else {
            assert!(std::env::var_os("CI").is_none(), "python3 is missing in CI");
            return;
        };
        let child = Killed(child);
        let pid = child.0.id() as i32;
        // Wait until the main thread has exited (it shows `Z` while the sleeper runs).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                == Some(true)
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "main thread never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            process_alive(pid),
            "a process with a running thread counts as dead"
        );
        drop(child);
    }
}
