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

/// Whether process `pid` still exists (signal 0 probes without sending anything).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Detaches this process from its controlling terminal's session (for the mount daemon).
pub fn new_session() {
    // SAFETY: setsid has no memory-safety preconditions; failure (already a session leader)
    // is harmless here.
    unsafe {
        libc::setsid();
    }
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
