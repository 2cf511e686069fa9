//! The real Motr client: `extern "C"` declarations of dsfs's C shim (`shim.c`, built by
//! `build.rs` against a Motr tree) and [`RealMotr`], their safe wrapper implementing
//! [`MotrOps`]. All of the Motr backend's `unsafe` is in this file.
//!
//! Threads: the shim adopts every calling thread into Motr (`m0_thread_adopt`) once, on its
//! first call, keeping the `struct m0_thread` in C thread-local storage; Rust callers need not
//! care which thread they are on. Connecting runs on a thread of its own with a deadline, so
//! an unreachable HA endpoint fails in bounded time instead of hanging the caller.

use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::RwLock;

use super::ops::{Id128, MotrOps, OpResult, Rc, Record};
use crate::datastore::{Error, ErrorKind, Result};

/// The shim's client handle (`struct dsfs_m0`), opaque here.
#[repr(C)]
pub struct DsfsM0 {
    _private: [u8; 0],
}

/// The shim's result of a `GET`/`NEXT` (`struct dsfs_recs`), opaque here.
#[repr(C)]
pub struct DsfsRecs {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn dsfs_m0_init(
        local: *const libc::c_char,
        ha: *const libc::c_char,
        profile: *const libc::c_char,
        process: *const libc::c_char,
        out: *mut *mut DsfsM0,
    ) -> libc::c_int;
    fn dsfs_m0_fini(m: *mut DsfsM0);
    fn dsfs_m0_idx_create(m: *mut DsfsM0, hi: u64, lo: u64) -> libc::c_int;
    fn dsfs_m0_idx_write(
        m: *mut DsfsM0,
        hi: u64,
        lo: u64,
        nr: u32,
        keys: *const *const c_void,
        klens: *const u64,
        vals: *const *const c_void,
        vlens: *const u64,
        flags: u32,
        rcs: *mut i32,
    ) -> libc::c_int;
    fn dsfs_m0_idx_read(
        m: *mut DsfsM0,
        hi: u64,
        lo: u64,
        nr: u32,
        keys: *const *const c_void,
        klens: *const u64,
        start: *const c_void,
        start_len: u64,
        flags: u32,
        out: *mut *mut DsfsRecs,
    ) -> libc::c_int;
    fn dsfs_m0_recs_get(
        r: *const DsfsRecs,
        i: u32,
        key: *mut *const c_void,
        klen: *mut u64,
        val: *mut *const c_void,
        vlen: *mut u64,
    ) -> i32;
    fn dsfs_m0_recs_free(r: *mut DsfsRecs);
    fn dsfs_m0_obj_create(m: *mut DsfsM0, hi: u64, lo: u64) -> libc::c_int;
    fn dsfs_m0_obj_delete(m: *mut DsfsM0, hi: u64, lo: u64) -> libc::c_int;
    fn dsfs_m0_obj_io(
        m: *mut DsfsM0,
        hi: u64,
        lo: u64,
        write: libc::c_int,
        off: u64,
        buf: *mut c_void,
        len: u64,
    ) -> libc::c_int;
    fn dsfs_m0_block_size() -> u32;
}

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientConf {
    /// The HA endpoint.
    pub ha: String,
    /// This client's endpoint.
    pub local: String,
    /// The profile fid.
    pub profile: String,
    /// This client's process fid.
    pub process: String,
    /// The bound on connecting.
    pub timeout: Duration,
}

/// A client handle that can be sent to the thread that finalises it.
#[derive(Clone, Copy)]
struct Handle(NonNull<DsfsM0>);

// SAFETY: the Motr client is used from many threads by design (the shim adopts each one);
// the handle is a pointer to heap memory the shim owns until `dsfs_m0_fini`.
unsafe impl Send for Handle {}
// SAFETY: as above; every call through a shared handle goes through the shim, which takes
// no Rust-visible state.
unsafe impl Sync for Handle {}

/// The Motr client through the shim. See the module documentation.
pub struct RealMotr {
    /// `None` after shutdown. Operations hold the read lock so that `shutdown` (the write
    /// lock) never finalises the client under an operation in flight.
    handle: RwLock<Option<Handle>>,
    /// The thread that initialised the client; it finalises it too (Motr's per-thread state
    /// of the initialising thread must still be there at `m0_client_fini`), when told to by
    /// the sender (or when the sender is dropped).
    owner: parking_lot::Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    block: usize,
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("motr: {what} contains a NUL byte"),
        )
    })
}

impl RealMotr {
    /// Connects (`m0_client_init` and the uber realm's container). Fails with
    /// [`ErrorKind::TimedOut`] when the cluster does not answer within `conf.timeout` (a late
    /// success is then finalised by the connecting thread).
    pub fn connect(conf: ClientConf) -> Result<Arc<RealMotr>> {
        let strings = [
            cstring("local", &conf.local)?,
            cstring("ha", &conf.ha)?,
            cstring("profile", &conf.profile)?,
            cstring("process", &conf.process)?,
        ];
        let (tx, rx) = mpsc::channel::<std::result::Result<Handle, i32>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("motr-client".into())
            .spawn(move || {
                let mut out: *mut DsfsM0 = std::ptr::null_mut();
                // SAFETY: four valid NUL-terminated strings that outlive the call (the shim
                // copies them), and a valid out pointer.
                let rc = unsafe {
                    dsfs_m0_init(
                        strings[0].as_ptr(),
                        strings[1].as_ptr(),
                        strings[2].as_ptr(),
                        strings[3].as_ptr(),
                        &mut out,
                    )
                };
                let handle = match NonNull::new(out) {
                    Some(p) if rc == 0 => Handle(p),
                    _ => {
                        let _ = tx.send(Err(if rc == 0 { -libc::EIO } else { rc }));
                        return;
                    }
                };
                if tx.send(Ok(handle)).is_ok() {
                    // Until shutdown (a message, or the sender dropped).
                    let _ = done_rx.recv();
                }
                // SAFETY: shutdown took the handle out of `RealMotr` under its write lock
                // (no operation in flight, none later), or the caller never got it.
                unsafe { dsfs_m0_fini(handle.0.as_ptr()) };
            })
            .map_err(|e| Error::io("motr: starting the client thread", e))?;
        let what = format!("motr: connecting to HA {} as {}", conf.ha, conf.local);
        match rx.recv_timeout(conf.timeout) {
            Ok(Ok(handle)) => Ok(Arc::new(RealMotr {
                handle: RwLock::new(Some(handle)),
                owner: parking_lot::Mutex::new(Some((done_tx, owner))),
                // SAFETY: a constant query without arguments.
                block: unsafe { dsfs_m0_block_size() } as usize,
            })),
            Ok(Err(rc)) => {
                let e = super::motr_error(&what, Rc(rc));
                Err(match e.kind() {
                    ErrorKind::NotFound | ErrorKind::Io => Error::with_source(
                        ErrorKind::Unavailable,
                        format!("{what}: check the endpoints and fids"),
                        std::io::Error::from_raw_os_error(Rc(rc).errno()),
                    ),
                    _ => e,
                })
            }
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "{what}: no answer within {} s (is the HA service running?)",
                    conf.timeout.as_secs()
                ),
            )),
        }
    }

    fn with<T>(&self, f: impl FnOnce(*mut DsfsM0) -> OpResult<T>) -> OpResult<T> {
        let g = self.handle.read();
        match g.as_ref() {
            Some(h) => f(h.0.as_ptr()),
            None => Err(Rc(-libc::ESHUTDOWN)),
        }
    }
}

fn rc(code: libc::c_int) -> OpResult<()> {
    if code == 0 { Ok(()) } else { Err(Rc(code)) }
}

/// One record of a `GET`/`NEXT` result: its code, key and value.
type CodedRecord = (i32, Vec<u8>, Vec<u8>);

/// Copies the shim's records out and frees them.
fn take_records(r: *mut DsfsRecs, nr: u32) -> Vec<CodedRecord> {
    let mut out = Vec::with_capacity(nr as usize);
    for i in 0..nr {
        let (mut k, mut kl, mut v, mut vl) = (std::ptr::null(), 0u64, std::ptr::null(), 0u64);
        // SAFETY: `r` is a live result of `nr` records; the out pointers are valid.
        let code = unsafe { dsfs_m0_recs_get(r, i, &mut k, &mut kl, &mut v, &mut vl) };
        let copy = |p: *const c_void, n: u64| {
            if p.is_null() || n == 0 {
                Vec::new()
            } else {
                // SAFETY: Motr filled the record with a buffer of `n` bytes at `p`, alive
                // until `dsfs_m0_recs_free`.
                unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n as usize) }.to_vec()
            }
        };
        out.push((code, copy(k, kl), copy(v, vl)));
    }
    // SAFETY: `r` came from `dsfs_m0_idx_read` and is freed once, here.
    unsafe { dsfs_m0_recs_free(r) };
    out
}

impl RealMotr {
    fn write_records(
        &self,
        idx: Id128,
        keys: &[&[u8]],
        vals: Option<&[&[u8]]>,
        flags: u32,
    ) -> OpResult<Vec<i32>> {
        let nr = u32::try_from(keys.len()).map_err(|_| Rc(-libc::E2BIG))?;
        let kp: Vec<*const c_void> = keys.iter().map(|k| k.as_ptr().cast()).collect();
        let kl: Vec<u64> = keys.iter().map(|k| k.len() as u64).collect();
        let (vp, vl): (Vec<*const c_void>, Vec<u64>) = match vals {
            Some(v) => (
                v.iter().map(|x| x.as_ptr().cast()).collect(),
                v.iter().map(|x| x.len() as u64).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mut rcs = vec![0i32; keys.len()];
        self.with(|m| {
            // SAFETY: `nr` keys (and values, when given) as pointer/length arrays of `nr`
            // entries into live slices; `rcs` has room for `nr` codes. The shim does not keep
            // the pointers past the call.
            rc(unsafe {
                dsfs_m0_idx_write(
                    m,
                    idx.hi,
                    idx.lo,
                    nr,
                    kp.as_ptr(),
                    kl.as_ptr(),
                    if vals.is_some() {
                        vp.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    vl.as_ptr(),
                    flags,
                    rcs.as_mut_ptr(),
                )
            })
        })?;
        Ok(rcs)
    }

    fn read_records(
        &self,
        idx: Id128,
        keys: Option<&[&[u8]]>,
        start: &[u8],
        nr: usize,
        flags: u32,
    ) -> OpResult<Vec<CodedRecord>> {
        let nr = u32::try_from(nr).map_err(|_| Rc(-libc::E2BIG))?;
        let kp: Vec<*const c_void> = keys
            .unwrap_or_default()
            .iter()
            .map(|k| k.as_ptr().cast())
            .collect();
        let kl: Vec<u64> = keys
            .unwrap_or_default()
            .iter()
            .map(|k| k.len() as u64)
            .collect();
        self.with(|m| {
            let mut out: *mut DsfsRecs = std::ptr::null_mut();
            // SAFETY: for a GET, `nr` keys as pointer/length arrays into live slices; for a
            // NEXT (null keys), the start key's bytes. The shim copies both; `out` is valid.
            rc(unsafe {
                dsfs_m0_idx_read(
                    m,
                    idx.hi,
                    idx.lo,
                    nr,
                    if keys.is_some() {
                        kp.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    kl.as_ptr(),
                    start.as_ptr().cast(),
                    start.len() as u64,
                    flags,
                    &mut out,
                )
            })?;
            if out.is_null() {
                return Err(Rc(-libc::EIO));
            }
            Ok(take_records(out, nr))
        })
    }
}

impl MotrOps for RealMotr {
    fn idx_create(&self, idx: Id128) -> OpResult<()> {
        // SAFETY: a live client handle and two integers.
        self.with(|m| rc(unsafe { dsfs_m0_idx_create(m, idx.hi, idx.lo) }))
    }

    fn idx_put(&self, idx: Id128, records: &[(&[u8], &[u8])], flags: u32) -> OpResult<Vec<i32>> {
        let keys: Vec<&[u8]> = records.iter().map(|r| r.0).collect();
        let vals: Vec<&[u8]> = records.iter().map(|r| r.1).collect();
        self.write_records(idx, &keys, Some(&vals), flags)
    }

    fn idx_get(&self, idx: Id128, keys: &[&[u8]]) -> OpResult<Vec<Result<Vec<u8>, i32>>> {
        let recs = self.read_records(idx, Some(keys), &[], keys.len(), 0)?;
        Ok(recs
            .into_iter()
            .map(|(code, _, v)| if code == 0 { Ok(v) } else { Err(code) })
            .collect())
    }

    fn idx_del(&self, idx: Id128, keys: &[&[u8]], flags: u32) -> OpResult<Vec<i32>> {
        self.write_records(idx, keys, None, flags)
    }

    fn idx_next(
        &self,
        idx: Id128,
        start: &[u8],
        count: usize,
        flags: u32,
    ) -> OpResult<Vec<Record>> {
        let recs = self.read_records(idx, None, start, count.max(1), flags)?;
        // Records after the last one carry -ENOENT (so do all of a reply too large for one
        // RPC message: see `ops::MAX_REPLY`). Any other code fails the NEXT rather than
        // reading as the end of the index.
        let mut out = Vec::with_capacity(recs.len());
        for (code, k, v) in recs {
            match code {
                0 => out.push((k, v)),
                c if c == -libc::ENOENT => break,
                c => {
                    log::debug!(
                        "motr: NEXT of {count} records failed at record {}: {c}",
                        out.len()
                    );
                    return Err(Rc(c));
                }
            }
        }
        Ok(out)
    }

    fn obj_create(&self, id: Id128) -> OpResult<()> {
        // SAFETY: a live client handle and two integers.
        self.with(|m| rc(unsafe { dsfs_m0_obj_create(m, id.hi, id.lo) }))
    }

    fn obj_delete(&self, id: Id128) -> OpResult<()> {
        // SAFETY: a live client handle and two integers.
        self.with(|m| rc(unsafe { dsfs_m0_obj_delete(m, id.hi, id.lo) }))
    }

    fn obj_write(&self, id: Id128, offset: u64, data: &[u8]) -> OpResult<()> {
        self.with(|m| {
            // SAFETY: `data` is live for the call and only read (the shim's buffer pointer is
            // not const because the same call reads into buffers).
            rc(unsafe {
                dsfs_m0_obj_io(
                    m,
                    id.hi,
                    id.lo,
                    1,
                    offset,
                    data.as_ptr().cast_mut().cast(),
                    data.len() as u64,
                )
            })
        })
    }

    fn obj_read(&self, id: Id128, offset: u64, buf: &mut [u8]) -> OpResult<()> {
        self.with(|m| {
            // SAFETY: `buf` is live and exclusively borrowed for the call.
            rc(unsafe {
                dsfs_m0_obj_io(
                    m,
                    id.hi,
                    id.lo,
                    0,
                    offset,
                    buf.as_mut_ptr().cast(),
                    buf.len() as u64,
                )
            })
        })
    }

    fn block_size(&self) -> usize {
        self.block
    }

    fn shutdown(&self) {
        // No operation is in flight once the write lock is held, and none starts after.
        let _ = self.handle.write().take();
        if let Some((done, owner)) = self.owner.lock().take() {
            let _ = done.send(());
            if owner.join().is_err() {
                log::warn!("motr: the client thread panicked while finalising");
            }
        }
    }
}

impl Drop for RealMotr {
    fn drop(&mut self) {
        self.shutdown();
    }
}
