//! Writes into a staging file that bypass its page cache (`O_DIRECT`), for writes a client made
//! with `O_DIRECT`.
//!
//! A FUSE client's `O_DIRECT` write reaches the daemon as a WRITE request whose bytes would
//! otherwise be copied into fresh page cache of the staging file and written back later. On the
//! machines measured (2-core VMs) that copy dominated the daemon's time for a 1 MiB sequential
//! `O_DIRECT` write: most daemon samples in `copy_folio_from_iter_atomic`, the kernel's copy
//! into newly allocated page-cache folios. Writing the request's bytes to the staging file with
//! `O_DIRECT` instead skips the page cache, as the client asked, and the later commit's fsync
//! finds nothing left to write back.
//!
//! Only block-aligned ranges of at least [`MIN_DIRECT`] bytes go this way; anything else, and
//! any file system that refuses `O_DIRECT` (`EINVAL`), takes the ordinary buffered write. The
//! kernel keeps buffered and direct I/O of one file coherent (a direct write flushes and
//! invalidates the cached pages it covers), so mixing the two in one staging file is safe.
//!
//! The request's bytes sit in the FUSE read buffer after the request headers, so they are not
//! memory-aligned: they are copied into a per-thread aligned buffer first (a copy into memory
//! that stays hot, unlike the page cache's fresh folios).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// The alignment of offsets, lengths and memory for a direct write: the largest logical block
/// size of the devices in question (4 KiB), so that it suits any of them.
const ALIGN: usize = 4096;

/// Smaller writes are buffered: a direct write waits for the device, which only pays off when
/// it saves a large copy.
pub const MIN_DIRECT: usize = 64 * 1024;

thread_local! {
    /// The aligned bounce buffer of this thread (grown to the largest direct write seen).
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes all of `data` at `offset` of `file`, with `O_DIRECT` when the range allows it (see
/// the module documentation), else buffered; feeds `data` to `hasher` (if any) whatever
/// happens. For a direct write the hash runs on a helper thread while this one waits for the
/// device, so the write costs about the longer of the two instead of their sum.
pub fn write_all_at(
    file: &File,
    data: &[u8],
    offset: u64,
    hasher: Option<&mut sha2::Sha256>,
) -> io::Result<()> {
    let Some(hasher) = hasher else {
        return write(file, data, offset);
    };
    if !eligible(data.len(), offset) {
        sha2::Digest::update(hasher, data);
        return write(file, data, offset);
    }
    // The helper hashes into a copy of the hasher (a few hundred bytes), handed back on join.
    let mut copy = hasher.clone();
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("dsfs-hash".into())
            .spawn_scoped(scope, move || {
                sha2::Digest::update(&mut copy, data);
                copy
            });
        let written = write(file, data, offset);
        match helper {
            Ok(h) => match h.join() {
                Ok(done) => *hasher = done,
                Err(_) => return Err(io::Error::other("hashing staged bytes failed")),
            },
            // No thread to be had: hash here.
            Err(e) => {
                log::debug!("no helper thread for hashing: {e}");
                sha2::Digest::update(hasher, data);
            }
        }
        written
    })
}

/// [`write_all_at`] without a hash.
fn write(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    if eligible(data.len(), offset) {
        match write_direct(file, data, offset) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // The file system or the device refused the direct write (or a short direct
            // write left an unaligned rest): the buffered write below does it all.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("direct write of a staging file refused, writing buffered: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(data, offset)
}

/// Whether a write of `len` bytes at `offset` may go direct.
fn eligible(len: usize, offset: u64) -> bool {
    len >= MIN_DIRECT && len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64)
}

/// Writes `data` at `offset` through a second, `O_DIRECT` descriptor of `file`. `Ok(false)`
/// when no such descriptor can be had (no `/proc`, or a file system without `O_DIRECT`), so
/// the caller writes buffered.
fn write_direct(file: &File, data: &[u8], offset: u64) -> io::Result<bool> {
    // Reopening through /proc works for unnamed (O_TMPFILE) staging files too.
    let direct = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    {
        Ok(f) => f,
        Err(e) => {
            log::debug!("no direct descriptor for a staging file: {e}");
            return Ok(false);
        }
    };
    if data.as_ptr().align_offset(ALIGN) == 0 {
        direct.write_all_at(data, offset)?;
        return Ok(true);
    }
    BOUNCE.with(|bounce| {
        let mut bounce = bounce.borrow_mut();
        if bounce.len() < data.len() + ALIGN {
            bounce.resize(data.len() + ALIGN, 0);
        }
        let start = bounce.as_ptr().align_offset(ALIGN);
        let Some(buf) = bounce.get_mut(start..start + data.len()) else {
            return Ok(false);
        };
        buf.copy_from_slice(data);
        direct.write_all_at(buf, offset)?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn only_aligned_large_ranges_are_eligible() {
        assert!(eligible(1 << 20, 0));
        assert!(eligible(MIN_DIRECT, 8192));
        assert!(!eligible(MIN_DIRECT - ALIGN, 0));
        assert!(!eligible((1 << 20) + 1, 0));
        assert!(!eligible(1 << 20, 512));
    }

    /// On a file system that takes `O_DIRECT`, an eligible write does go direct (through
    /// unaligned memory too), and the page cache holds none of it afterwards.
    #[test]
    fn an_eligible_write_goes_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        if OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_err()
        {
            eprintln!("no O_DIRECT on the temporary directory's file system: skipped");
            return;
        }
        let data = pattern(MIN_DIRECT + 1, 9);
        assert!(write_direct(&file, &data[1..], 0).unwrap());
        let mut back = vec![0u8; MIN_DIRECT];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data[1..]);
    }

    /// Direct, buffered and unaligned writes mixed in one file read back byte-exact through a
    /// buffered descriptor, including where a direct write covers bytes written buffered.
    #[test]
    fn mixed_writes_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let mut expect = vec![0u8; 3 << 20];
        let put = |expect: &mut Vec<u8>, at: usize, data: &[u8]| {
            write_all_at(&file, data, at as u64, None).unwrap();
            expect[at..at + data.len()].copy_from_slice(data);
        };
        // Buffered (small) bytes first, then a direct write over them: the direct write must
        // win, and the cached pages must not shadow it.
        put(&mut expect, 4096, &pattern(100, 1));
        let _ = file.read_at(&mut [0u8; 16], 4096).unwrap();
        put(&mut expect, 0, &pattern(1 << 20, 2));
        // Unaligned memory: a slice one byte into a vector.
        let odd = pattern((1 << 20) + 1, 3);
        put(&mut expect, 1 << 20, &odd[1..]);
        // Unaligned offset and length: buffered.
        put(&mut expect, (2 << 20) + 7, &pattern(MIN_DIRECT + 13, 4));
        // Direct over the head of the buffered range.
        put(&mut expect, 2 << 20, &pattern(MIN_DIRECT, 5));
        let len = (2 << 20) + 7 + MIN_DIRECT + 13;
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), len as u64);
        assert!(got == expect[..len], "contents differ");
    }
}
