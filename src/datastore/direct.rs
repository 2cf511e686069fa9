//! Writes into a staging file that bypass its page cache (`O_DIRECT`), for writes a client made
//! with `O_DIRECT`, queued to a writer thread so that the next request's transfer overlaps the
//! device's write of this one.
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
//! # The queue
//!
//! A client's synchronous `O_DIRECT` write (fio's `psync`, `dd oflag=direct`) waits for the
//! copy of its bytes into the FUSE request, the round trip to the daemon, the daemon's write
//! and the reply; a native write waits for the device only. So an eligible write is not
//! written by the FUSE thread: its bytes are copied into an aligned buffer (they sit unaligned
//! in the FUSE read buffer after the request headers, so this copy was needed anyway) and
//! handed to the staging file's writer thread ([`Queue`]), and the request is answered at
//! once. At most [`DEPTH`] writes of one file are queued or in progress; the next one waits for
//! room. `O_DIRECT` promises no durability (only `fsync` and `close` do), so answering before
//! the device has the bytes keeps the promise, provided that:
//!
//! - everything else that touches the staging file first waits for the queue to drain
//!   ([`Queue::settle`]): reads, buffered writes, length, truncation, sync, commit; the
//!   staged value does this in its one accessor of the file;
//! - a queued write that fails is not lost: the writer stops, keeps the failed write and
//!   every later queued one (in order, so a retry cannot put older bytes over newer ones), and
//!   the next write, read, sync or commit of the file writes them again first and returns the
//!   error while that still fails (`ENOSPC` until space is freed), as the kernel reports a
//!   writeback error to `fsync` and `close`. A truncation forgets kept bytes it cuts off.
//!
//! A staged value that keeps a running content hash (the default repository records it with the
//! value) hands its hasher to the queue on the first in-order direct write: the queue's
//! hashing thread hashes each queued write's buffer, in order, while the writer thread writes
//! it, so neither the hash (BLAKE3: about 0.13 ms per MiB on the machines measured) nor the
//! device write is on the FUSE thread. The staged value takes the hasher back (after the
//! queued hashing) before any other write of the value, and to read the hash.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use super::digest::ContentHasher;

/// The alignment of offsets, lengths and memory for a direct write: the largest logical block
/// size of the devices in question (4 KiB), so that it suits any of them.
const ALIGN: usize = 4096;

/// Smaller writes are buffered: a direct write waits for the device, which only pays off when
/// it saves a large copy.
pub const MIN_DIRECT: usize = 64 * 1024;

/// The most writes of one file queued or in progress at a time: one being written while the
/// next is transferred is the overlap; a second waiting keeps the device busy across the gap
/// between two requests. More would only hold more memory (one buffer each).
pub const DEPTH: usize = 2;

/// Whether a write of `len` bytes at `offset` may go direct.
pub fn eligible(len: usize, offset: u64) -> bool {
    len >= MIN_DIRECT && len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64)
}

/// Where queued writes land: the staging file's `O_DIRECT` descriptor (a test puts a model
/// here).
pub trait Sink: Send + Sync + 'static {
    /// Writes all of `buf` (aligned) at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

/// The staging file through its `O_DIRECT` descriptor, and through its ordinary one where the
/// file system refuses a direct write.
struct FileSink {
    direct: File,
    buffered: File,
}

impl Sink for FileSink {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.direct.write_all_at(buf, offset) {
            // The file system or the device refused the direct write (or a short direct
            // write left an unaligned rest): a buffered write does it all.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("direct write of a staging file refused, writing buffered: {e}");
                self.buffered.write_all_at(buf, offset)
            }
            other => other,
        }
    }
}

/// A block-aligned copy of a write's bytes, reused from write to write.
struct Buf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn empty() -> Buf {
        Buf {
            vec: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// Holds a copy of `data` (growing, and so reallocating, only for a larger write).
    fn fill(&mut self, data: &[u8]) {
        if self.vec.len() < self.start + data.len() {
            self.vec = vec![0u8; data.len() + ALIGN];
            self.start = self.vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        }
        self.vec[self.start..self.start + data.len()].copy_from_slice(data);
        self.len = data.len();
    }

    fn bytes(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

/// A queued write: the first `len` bytes of `buf` at `offset`. The buffer is shared with the
/// hashing thread when the write is hashed too.
struct Job {
    offset: u64,
    buf: Arc<Buf>,
    len: usize,
}

impl Job {
    fn bytes(&self) -> &[u8] {
        &self.buf.bytes()[..self.len]
    }
}

#[derive(Default)]
struct State {
    /// Writes not yet taken by the writer thread, in order.
    queue: VecDeque<Job>,
    /// Whether the writer thread is writing one (taken off `queue`).
    busy: bool,
    /// A write that failed and every write queued after it, in order: written again (by
    /// whoever settles the queue next) before anything else touches the file.
    failed: VecDeque<Job>,
    /// Buffers of completed writes, for the next ones.
    spare: Vec<Buf>,
    /// Set when the queue is dropped: the threads end once idle.
    closed: bool,
    /// The running hash of the staged value while the queue holds it (see
    /// [`Queue::adopt_hasher`]); taken out by the hashing thread while it hashes.
    hasher: Option<ContentHasher>,
    /// Bytes of queued writes still to be hashed, in order.
    to_hash: VecDeque<Arc<Buf>>,
    /// Whether the hashing thread is hashing one (taken off `to_hash`).
    hashing: bool,
}

impl State {
    /// Keeps the buffer of a finished write for the next one, once neither the writer nor the
    /// hashing thread needs it.
    fn recycle(&mut self, buf: Arc<Buf>) {
        if let Ok(buf) = Arc::try_unwrap(buf)
            && self.spare.len() < 2 * DEPTH
        {
            self.spare.push(buf);
        }
    }

    /// Whether another write may be queued.
    fn has_room(&self) -> bool {
        self.queue.len() + usize::from(self.busy) < DEPTH
            && self.to_hash.len() + usize::from(self.hashing) < DEPTH
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a state that is still consistent
        // (every change below is a single push or pop).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}

/// The write queue of one staging file, with its writer thread. See the module documentation.
pub struct Queue {
    shared: Arc<Shared>,
    sink: Arc<dyn Sink>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The hashing thread, started by the first [`Queue::adopt_hasher`].
    hash_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

impl Queue {
    /// A queue writing to `sink`, with its thread started.
    pub fn new(sink: Arc<dyn Sink>) -> io::Result<Queue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let (shared, sink) = (shared.clone(), sink.clone());
            std::thread::Builder::new()
                .name("dsfs-dwrite".into())
                .spawn(move || writer(&shared, &*sink))?
        };
        Ok(Queue {
            shared,
            sink,
            thread: Some(thread),
            hash_thread: Mutex::new(None),
        })
    }

    /// Hands the staged value's running hash (of every byte before the next write) to the
    /// queue: writes submitted with `hash` are then hashed by the queue's hashing thread, in
    /// order, while the FUSE thread answers the request. Waits for earlier hashing to finish
    /// (a hasher held from before belongs to an abandoned hash and is replaced). Gives the
    /// hasher back if no hashing thread can be had.
    pub fn adopt_hasher(&self, hasher: ContentHasher) -> Result<(), ContentHasher> {
        let mut slot = self.hash_thread.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("dsfs-dhash".into())
                .spawn(move || hash_thread(&shared))
            {
                Ok(t) => *slot = Some(t),
                Err(e) => {
                    log::debug!("no hashing thread for direct writes: {e}");
                    return Err(hasher);
                }
            }
        }
        drop(slot);
        let mut st = self.hashed();
        st.hasher = Some(hasher);
        Ok(())
    }

    /// Takes back the running hash once every submitted write is hashed into it; `None` if
    /// the queue holds none.
    pub fn take_hasher(&self) -> Option<ContentHasher> {
        self.hashed().hasher.take()
    }

    /// The state once the hashing thread has nothing left to hash.
    fn hashed(&self) -> MutexGuard<'_, State> {
        let mut st = self.shared.lock();
        while st.hashing || !st.to_hash.is_empty() {
            st = self.shared.wait(st);
        }
        st
    }

    /// Queues a copy of `data` (eligible, see [`eligible`]) to be written at `offset`, and,
    /// with `hash`, to be hashed into the hasher the queue holds ([`Queue::adopt_hasher`]),
    /// after waiting for room; first writes again what failed before, and returns that error
    /// if it still fails (this write is then not queued).
    pub fn submit(&self, data: &[u8], offset: u64, hash: bool) -> io::Result<()> {
        let mut st = self.shared.lock();
        loop {
            self.retry(&mut st)?;
            if st.has_room() {
                break;
            }
            st = self.shared.wait(st);
        }
        let mut buf = st.spare.pop().unwrap_or_else(Buf::empty);
        // The copy is made with the lock held: the threads wait for it only when they have
        // nothing else to do.
        buf.fill(data);
        let buf = Arc::new(buf);
        if hash {
            st.to_hash.push_back(buf.clone());
        }
        st.queue.push_back(Job {
            offset,
            buf,
            len: data.len(),
        });
        drop(st);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Waits until every queued write is done, then writes again what failed; the error if
    /// that still fails.
    pub fn settle(&self) -> io::Result<()> {
        let mut st = self.idle();
        self.retry(&mut st)
    }

    /// [`Queue::settle`] for a truncation to `len`: kept bytes at or past `len` are forgotten
    /// first (they would be cut off anyway), so a full file system does not stop its own cure.
    pub fn settle_for_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.idle();
        st.failed.retain_mut(|job| {
            if job.offset >= len {
                return false;
            }
            let keep = usize::try_from(len - job.offset).unwrap_or(usize::MAX);
            job.len = job.len.min(keep);
            true
        });
        self.retry(&mut st)
    }

    /// The state once the writer thread has nothing queued or in progress.
    fn idle(&self) -> MutexGuard<'_, State> {
        let mut st = self.shared.lock();
        while st.busy || !st.queue.is_empty() {
            st = self.shared.wait(st);
        }
        st
    }

    /// Writes the failed writes again, in order, on this thread (the writer thread is idle
    /// while any are kept: see [`writer`]); stops at the first that fails again.
    fn retry(&self, st: &mut State) -> io::Result<()> {
        while let Some(job) = st.failed.front() {
            self.sink.write_at(job.bytes(), job.offset)?;
            if let Some(job) = st.failed.pop_front() {
                log::debug!("an earlier failed direct write at {} landed", job.offset);
                st.recycle(job.buf);
            }
        }
        Ok(())
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        let hash_thread = self
            .hash_thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for thread in self.thread.take().into_iter().chain(hash_thread) {
            if thread.join().is_err() {
                log::warn!("a direct-write thread of a staging file panicked");
            }
        }
    }
}

/// The writer thread: writes queued jobs in order; after a failure it keeps that job and every
/// queued one in `failed` and writes nothing more until they are settled.
fn writer(shared: &Shared, sink: &dyn Sink) {
    let mut st = shared.lock();
    loop {
        let job = loop {
            if st.failed.is_empty()
                && let Some(job) = st.queue.pop_front()
            {
                break Some(job);
            }
            if st.closed {
                break None;
            }
            st = shared.wait(st);
        };
        let Some(job) = job else {
            return;
        };
        st.busy = true;
        drop(st);
        let result = sink.write_at(job.bytes(), job.offset);
        st = shared.lock();
        st.busy = false;
        match result {
            Ok(()) => st.recycle(job.buf),
            Err(e) => {
                log::debug!("queued direct write at {} failed, kept: {e}", job.offset);
                st.failed.push_back(job);
                let rest = std::mem::take(&mut st.queue);
                st.failed.extend(rest);
            }
        }
        shared.changed.notify_all();
    }
}

/// The hashing thread: hashes queued writes' bytes in order into the hasher the queue holds.
fn hash_thread(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        let buf = loop {
            if let Some(buf) = st.to_hash.pop_front() {
                break Some(buf);
            }
            if st.closed {
                break None;
            }
            st = shared.wait(st);
        };
        let Some(buf) = buf else {
            return;
        };
        st.hashing = true;
        let mut hasher = st.hasher.take();
        drop(st);
        if let Some(h) = hasher.as_mut() {
            h.update(buf.bytes());
        }
        st = shared.lock();
        st.hasher = hasher;
        st.hashing = false;
        st.recycle(buf);
        shared.changed.notify_all();
    }
}

/// The direct-write queue of one staging file, made on its first eligible write. Default:
/// none yet.
#[derive(Debug, Default)]
pub struct Direct {
    queue: OnceLock<Option<Queue>>,
    /// How many `O_DIRECT` descriptors were opened for the file (one at most).
    opened: AtomicU32,
}

impl Direct {
    /// The queue of `file`, made on first use; `None` when the file has no `O_DIRECT`
    /// descriptor (no `/proc`, a file system without `O_DIRECT`) or no thread could be had,
    /// so the caller writes buffered.
    pub fn queue(&self, file: &File) -> Option<&Queue> {
        self.queue
            .get_or_init(|| match self.open(file) {
                Ok(q) => Some(q),
                Err(e) => {
                    log::debug!("no direct-write queue for a staging file: {e}");
                    None
                }
            })
            .as_ref()
    }

    fn open(&self, file: &File) -> io::Result<Queue> {
        // Reopening through /proc works for unnamed (O_TMPFILE) staging files too.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let buffered = file.try_clone()?;
        Queue::new(Arc::new(FileSink { direct, buffered }))
    }

    /// [`Queue::take_hasher`], if there is a queue.
    pub fn take_hasher(&self) -> Option<ContentHasher> {
        match self.queue.get() {
            Some(Some(q)) => q.take_hasher(),
            Some(None) | None => None,
        }
    }

    /// [`Queue::settle`], if there is a queue.
    pub fn settle(&self) -> io::Result<()> {
        match self.queue.get() {
            Some(Some(q)) => q.settle(),
            Some(None) | None => Ok(()),
        }
    }

    /// [`Queue::settle_for_len`], if there is a queue.
    pub fn settle_for_len(&self, len: u64) -> io::Result<()> {
        match self.queue.get() {
            Some(Some(q)) => q.settle_for_len(len),
            Some(None) | None => Ok(()),
        }
    }

    /// How many `O_DIRECT` descriptors were opened (for tests: one per staging file).
    #[cfg(test)]
    pub fn descriptors_opened(&self) -> u32 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

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

    #[test]
    fn a_buffer_is_aligned_and_reused() {
        let mut b = Buf::empty();
        b.fill(&pattern(MIN_DIRECT, 1));
        assert_eq!(b.bytes().as_ptr().align_offset(ALIGN), 0);
        let at = b.vec.as_ptr();
        b.fill(&pattern(MIN_DIRECT / 2, 2));
        assert_eq!(b.vec.as_ptr(), at);
        assert!(b.bytes() == pattern(MIN_DIRECT / 2, 2));
    }

    /// A model file that fails writes with ENOSPC while `full` is set, and whose writes wait
    /// while the test holds `gate`.
    #[derive(Default)]
    struct Model {
        bytes: Mutex<Vec<u8>>,
        full: AtomicBool,
        gate: Mutex<()>,
        writes: AtomicU32,
    }

    impl Sink for Model {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            drop(self.gate.lock().unwrap());
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.full.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let mut b = self.bytes.lock().unwrap();
            let end = offset as usize + buf.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            b[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
    }

    /// A queued write that fails is reported by the next settle (what fsync and close call)
    /// and the next write, again while it still fails, and its bytes land once it succeeds;
    /// a write queued behind it lands after it, so the newer bytes win.
    #[test]
    fn a_failed_queued_write_is_reported_and_not_lost() {
        let model = Arc::new(Model::default());
        let q = Queue::new(model.clone()).unwrap();
        let (a, b) = (pattern(MIN_DIRECT, 1), pattern(MIN_DIRECT, 2));
        let gate = model.gate.lock().unwrap();
        // `a` is taken by the writer (and waits at the gate), `b` queued behind it.
        q.submit(&a, 0, false).unwrap();
        q.submit(&b, 4096, false).unwrap();
        model.full.store(true, Ordering::SeqCst);
        drop(gate);
        let e = q.settle().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Still full: reported again, by a write too (which is not queued).
        assert_eq!(
            q.submit(&pattern(MIN_DIRECT, 3), 1 << 20, false)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOSPC)
        );
        assert_eq!(q.settle().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        // Space again: both land, in order.
        model.full.store(false, Ordering::SeqCst);
        q.settle().unwrap();
        let mut expect = vec![0u8; 4096 + MIN_DIRECT];
        expect[..MIN_DIRECT].copy_from_slice(&a);
        expect[4096..].copy_from_slice(&b);
        assert!(*model.bytes.lock().unwrap() == expect);
        q.settle().unwrap();
    }

    /// A truncation forgets kept bytes past the new length (so it can free space), and keeps
    /// the rest.
    #[test]
    fn a_truncation_forgets_failed_bytes_it_cuts_off() {
        let model = Arc::new(Model::default());
        let q = Queue::new(model.clone()).unwrap();
        model.full.store(true, Ordering::SeqCst);
        q.submit(&pattern(MIN_DIRECT, 1), 1 << 20, false).unwrap();
        assert!(q.settle().is_err());
        q.settle_for_len(1 << 20).unwrap();
        q.settle().unwrap();
        assert!(model.bytes.lock().unwrap().is_empty());
        model.full.store(false, Ordering::SeqCst);
        q.submit(&pattern(MIN_DIRECT, 2), 0, false).unwrap();
        q.settle().unwrap();
        assert!(*model.bytes.lock().unwrap() == pattern(MIN_DIRECT, 2));
    }

    /// At most DEPTH writes are queued or in progress: a third waits for the first.
    #[test]
    fn the_queue_holds_at_most_depth_writes() {
        let model = Arc::new(Model::default());
        let q = Arc::new(Queue::new(model.clone()).unwrap());
        let gate = model.gate.lock().unwrap();
        for i in 0..DEPTH {
            q.submit(
                &pattern(MIN_DIRECT, i as u8),
                (i * MIN_DIRECT) as u64,
                false,
            )
            .unwrap();
        }
        let done = Arc::new(AtomicBool::new(false));
        let third = {
            let (q, done) = (q.clone(), done.clone());
            std::thread::spawn(move || {
                q.submit(&pattern(MIN_DIRECT, 9), (DEPTH * MIN_DIRECT) as u64, false)
                    .unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        // No timing: the writer is held at the gate, so the third cannot have been queued
        // however long it ran; it is once the gate opens.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst));
        assert_eq!(model.writes.load(Ordering::SeqCst), 0);
        drop(gate);
        third.join().unwrap();
        q.settle().unwrap();
        assert_eq!(model.writes.load(Ordering::SeqCst), DEPTH as u32 + 1);
    }
}

/// Direct writes through a staged value on a real file.
#[cfg(test)]
mod staged_tests {
    use super::super::stage::Staged;
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect()
    }

    fn direct_ok(dir: &std::path::Path) -> bool {
        let path = dir.join("probe");
        let _ = File::create(&path);
        let ok = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_ok();
        let _ = std::fs::remove_file(&path);
        if !ok {
            eprintln!("no O_DIRECT on the temporary directory's file system: skipped");
        }
        ok
    }

    /// Direct, buffered and unaligned writes mixed in one staged value read back byte-exact,
    /// with the right length, right after the writes (queued ones included), including where a
    /// direct write covers bytes written buffered and the other way round.
    #[test]
    fn mixed_writes_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staged::anonymous(dir.path()).unwrap();
        let mut expect = vec![0u8; 4 << 20];
        let mut put = |at: usize, data: &[u8], direct: bool| {
            if direct {
                s.write_all_at_direct(at as u64, data).unwrap();
            } else {
                s.write_all_at(at as u64, data).unwrap();
            }
            expect[at..at + data.len()].copy_from_slice(data);
            let mut got = vec![0u8; data.len()];
            assert_eq!(s.read_at(at as u64, &mut got).unwrap(), data.len());
            assert!(got == data, "read right after the write at {at}");
        };
        put(4096, &pattern(100, 1), false);
        put(0, &pattern(1 << 20, 2), true);
        put(1 << 20, &pattern(1 << 20, 3), true);
        put((1 << 20) + 8192, &pattern(300, 4), false);
        put((2 << 20) + 7, &pattern(MIN_DIRECT + 13, 5), true);
        put(2 << 20, &pattern(MIN_DIRECT, 6), true);
        put(3 << 20, &pattern(1 << 20, 7), true);
        assert_eq!(s.len().unwrap(), 4 << 20);
        put((3 << 20) + 4096, &pattern(MIN_DIRECT, 8), false);
        assert!(s.read_all().unwrap() == expect, "contents differ");
        s.set_len((3 << 20) + 4096).unwrap();
        assert!(s.read_all().unwrap() == expect[..(3 << 20) + 4096]);
    }

    /// Many direct writes to one staging file open one `O_DIRECT` descriptor, not one each.
    #[test]
    fn one_direct_descriptor_per_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        if !direct_ok(dir.path()) {
            return;
        }
        let s = Staged::anonymous(dir.path()).unwrap();
        let data = pattern(1 << 20, 9);
        for i in 0..16u64 {
            s.write_all_at_direct(i << 20, &data).unwrap();
        }
        s.sync_data().unwrap();
        assert_eq!(s.direct_descriptors_opened(), 1);
        assert_eq!(s.len().unwrap(), 16 << 20);
    }

    /// The running hash of in-order direct writes is the hash of the bytes.
    #[test]
    fn in_order_direct_writes_keep_the_running_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (f, p) = super::super::stage::create_unique(dir.path(), "t").unwrap();
        let s = Staged::named(f, p).hashing().unwrap();
        let data = pattern((3 << 20) + 100, 11);
        let hash_of = crate::datastore::digest::content_digest;
        // Queued and hashed on the queue's thread.
        for (i, piece) in data[..2 << 20].chunks(1 << 20).enumerate() {
            s.write_all_at_direct((i as u64) << 20, piece).unwrap();
        }
        assert_eq!(s.content_hash(2 << 20), Some(hash_of(&data[..2 << 20])));
        // After the hash was taken back: queued again, then a small buffered write in order
        // (hashed here, after the queue's hashing).
        s.write_all_at_direct(2 << 20, &data[2 << 20..3 << 20])
            .unwrap();
        s.write_all_at(3 << 20, &data[3 << 20..]).unwrap();
        assert_eq!(s.content_hash(data.len() as u64), Some(hash_of(&data)));
        assert!(s.read_all().unwrap() == data);
        // Emptied and written again: a fresh hash.
        s.set_len(0).unwrap();
        s.write_all_at_direct(0, &data[..1 << 20]).unwrap();
        assert_eq!(s.content_hash(1 << 20), Some(hash_of(&data[..1 << 20])));
    }
}
