//! The real SPDK blobstore behind [`BlobOps`] (feature `spdk`).
//!
//! One OS thread, the poller, owns SPDK: it initialises the environment (`no_huge`, `no_pci`,
//! `shm_id = -1`, `mem_size` from the spec), the thread library and one SPDK thread, brings the
//! subsystems up with a JSON configuration built in memory (loaded at the startup RPC state,
//! then `spdk_subsystem_init`, then again at the runtime state, where `bdev_aio_create` makes
//! the AIO bdev over the image), opens the bdev as a blobstore device and loads the blobstore
//! (or formats it, with blobstore type `BLOBFS`, when the image's first 4 KiB are all zero). It
//! then polls its SPDK thread (`spdk_thread_poll`), backing off when idle.
//!
//! Callers (FUSE workers) never touch SPDK objects: each operation is a closure handed to the
//! poller with `spdk_thread_send_msg`; it starts the asynchronous SPDK call, whose completion
//! callback sends the result back over a channel the caller waits on. Open blobs live in a
//! table on the poller thread, keyed by id; a close waits until the blob's I/O in flight is
//! done. I/O goes through one DMA buffer per request (`spdk_dma_zmalloc`), copied in and out.
//!
//! `flush` makes written data durable with `fdatasync` on the image (the AIO bdev writes the
//! same file, with `O_DIRECT`); the blobstore's metadata is written by `sync_md` through the
//! same bdev.
//!
//! DPDK's environment can be initialised once per process, so the poller thread and the SPDK
//! environment stay up once started; `unload` closes every blob, unloads the blobstore and
//! deletes the bdev, and a later open in the same process loads the blobstore again on a new
//! bdev. No signal handler is installed (SPDK's app framework is not used).
//!
//! Every C callback runs its Rust body under `catch_unwind`, so no panic unwinds into C.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::ops::{BSTYPE_BLOBFS, BlobId, BlobOps, BsError, BsErrorKind, BsResult};
use super::sys;
use crate::datastore::{Error, ErrorKind, Result};

/// What [`SpdkBlobstore::start`] needs.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The image file (or block device) of the AIO bdev.
    pub image: PathBuf,
    /// The bdev's block size: the blobstore's io unit.
    pub io_unit: u32,
    /// The cluster size of a new blobstore.
    pub cluster: u64,
    /// SPDK's memory in MiB (no hugepages).
    pub mem_mib: u32,
}

/// A raw SPDK pointer that only the poller thread dereferences.
struct Ptr<T>(*mut T);
impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}
impl<T> Ptr<T> {
    /// The pointer (a method, so that closures capture the whole `Ptr`, which is `Send`).
    fn get(self) -> *mut T {
        self.0
    }
}

/// The xattr names handed to `spdk_bs_create_blob_ext`, kept until its completion.
struct Names(Vec<*mut c_char>);
// SAFETY: the pointers point into the CStrings of an `XattrCtx` moved along with them; only
// the poller thread reads them.
unsafe impl Send for Names {}
// SAFETY: the pointer is only passed around, never dereferenced outside the poller thread,
// which is the only thread that calls SPDK with it.
unsafe impl<T> Send for Ptr<T> {}
// SAFETY: as above; `spdk_thread_send_msg` (the one use from other threads) is thread-safe.
unsafe impl<T> Sync for Ptr<T> {}

type Job = Box<dyn FnOnce() + Send>;

/// The process's SPDK poller: its thread and SPDK thread.
struct Poller {
    thread: Ptr<sys::spdk_thread>,
}

static POLLER: OnceLock<std::result::Result<Poller, String>> = OnceLock::new();
static BDEV_SEQ: AtomicU64 = AtomicU64::new(0);

/// The blobstore state on the poller thread.
struct Loaded {
    bs: *mut sys::spdk_blob_store,
    channel: *mut sys::spdk_io_channel,
    blobs: HashMap<BlobId, OpenBlob>,
}

struct OpenBlob {
    blob: *mut sys::spdk_blob,
    inflight: u32,
    /// Closes waiting for the I/O in flight.
    waiting: Vec<Job>,
}

thread_local! {
    /// Blobstores loaded on this (the poller) thread, by a per-store number.
    static LOADED: RefCell<HashMap<u64, Loaded>> = RefCell::new(HashMap::new());
}

fn unavailable(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, msg)
}

// ---- C trampolines: each takes back a boxed closure and runs it without unwinding. ----

unsafe extern "C" fn run_job(ctx: *mut c_void) {
    // SAFETY: ctx is the `Box<Job>` leaked by `send` for exactly this call.
    let job = unsafe { Box::from_raw(ctx.cast::<Job>()) };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
        log::error!("spdk: a poller job panicked");
    }
}

type RcDone = Box<dyn FnOnce(c_int) + Send>;
unsafe extern "C" fn done_init(rc: c_int, arg: *mut c_void) {
    // SAFETY: arg is the `Box<RcDone>` leaked for this one completion.
    unsafe { done_rc(arg, rc) }
}
unsafe extern "C" fn done_rc(arg: *mut c_void, rc: c_int) {
    // SAFETY: arg is the `Box<RcDone>` leaked for this one completion.
    let f = unsafe { Box::from_raw(arg.cast::<RcDone>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(rc)));
}
fn rc_arg(f: impl FnOnce(c_int) + Send + 'static) -> *mut c_void {
    Box::into_raw(Box::new(Box::new(f) as RcDone)).cast()
}

type IdDone = Box<dyn FnOnce(u64, c_int) + Send>;
unsafe extern "C" fn done_id(arg: *mut c_void, id: u64, rc: c_int) {
    // SAFETY: arg is the `Box<IdDone>` leaked for this one completion.
    let f = unsafe { Box::from_raw(arg.cast::<IdDone>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(id, rc)));
}

type BlobDone = Box<dyn FnOnce(Ptr<sys::spdk_blob>, c_int) + Send>;
unsafe extern "C" fn done_blob(arg: *mut c_void, blob: *mut sys::spdk_blob, rc: c_int) {
    // SAFETY: arg is the `Box<BlobDone>` leaked for this one completion.
    let f = unsafe { Box::from_raw(arg.cast::<BlobDone>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(Ptr(blob), rc)));
}
fn blob_arg(f: impl FnOnce(Ptr<sys::spdk_blob>, c_int) + Send + 'static) -> *mut c_void {
    Box::into_raw(Box::new(Box::new(f) as BlobDone)).cast()
}

type BsDone = Box<dyn FnOnce(Ptr<sys::spdk_blob_store>, c_int) + Send>;
unsafe extern "C" fn done_bs(arg: *mut c_void, bs: *mut sys::spdk_blob_store, rc: c_int) {
    // SAFETY: arg is the `Box<BsDone>` leaked for this one completion.
    let f = unsafe { Box::from_raw(arg.cast::<BsDone>()) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(Ptr(bs), rc)));
}

unsafe extern "C" fn bdev_event(_type: c_int, _bdev: *mut sys::spdk_bdev, _ctx: *mut c_void) {
    // Resize and hot-remove events: the AIO bdev over a file sees neither in normal use.
    log::warn!("spdk: bdev event {_type} ignored");
}

/// The xattrs of a blob being created, for `spdk_blob_xattr_opts::get_value`.
struct XattrCtx {
    names: Vec<CString>,
    values: Vec<Vec<u8>>,
}

unsafe extern "C" fn xattr_value(
    ctx: *mut c_void,
    name: *const c_char,
    value: *mut *const c_void,
    len: *mut usize,
) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: ctx is the `XattrCtx` that outlives the create call; name is one of its
        // NUL-terminated names; value and len are valid out-pointers (blob.h).
        unsafe {
            let ctx = &*ctx.cast::<XattrCtx>();
            let name = CStr::from_ptr(name);
            match ctx.names.iter().position(|n| n.as_c_str() == name) {
                Some(i) => {
                    *value = ctx.values[i].as_ptr().cast();
                    *len = ctx.values[i].len();
                }
                None => {
                    *value = std::ptr::null();
                    *len = 0;
                }
            }
        }
    });
    if r.is_err() {
        log::error!("spdk: xattr callback panicked");
    }
}

/// Hands `job` to the poller thread.
fn send(thread: Ptr<sys::spdk_thread>, job: Job) -> BsResult<()> {
    let ctx = Box::into_raw(Box::new(job));
    // SAFETY: spdk_thread_send_msg is thread-safe; ctx is a leaked Box<Job> that run_job takes
    // back exactly once.
    let rc = unsafe { sys::spdk_thread_send_msg(thread.0, run_job, ctx.cast()) };
    if rc != 0 {
        // SAFETY: the message was not queued, so run_job will not take ctx back.
        drop(unsafe { Box::from_raw(ctx) });
        return Err(BsError::from_errno("spdk_thread_send_msg", rc));
    }
    Ok(())
}

/// Starts the poller thread (once per process) and waits until it runs.
fn poller(mem_mib: u32) -> Result<Ptr<sys::spdk_thread>> {
    let p = POLLER.get_or_init(|| {
        let (tx, rx) = sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("dsfs-spdk".into())
            .spawn(move || poll_forever(mem_mib, tx));
        if let Err(e) = spawned {
            return Err(format!("starting the SPDK thread: {e}"));
        }
        match rx.recv() {
            Ok(Ok(thread)) => Ok(Poller { thread }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the SPDK thread stopped while starting".into()),
        }
    });
    match p {
        Ok(p) => Ok(p.thread),
        Err(e) => Err(unavailable(format!("spdk: {e}"))),
    }
}

fn poll_forever(
    mem_mib: u32,
    ready: SyncSender<std::result::Result<Ptr<sys::spdk_thread>, String>>,
) {
    let name = c"dsfs";
    // SAFETY: a zeroed spdk_env_opts is valid input for spdk_env_opts_init, which fills every
    // field; opts_size is set first as env.h asks.
    let mut opts: sys::spdk_env_opts = unsafe { std::mem::zeroed() };
    opts.opts_size = std::mem::size_of::<sys::spdk_env_opts>();
    // SAFETY: opts is a valid, writable spdk_env_opts.
    unsafe { sys::spdk_env_opts_init(&mut opts) };
    opts.name = name.as_ptr();
    opts.shm_id = -1;
    opts.no_pci = true;
    opts.no_huge = true;
    opts.mem_size = i32::try_from(mem_mib).unwrap_or(i32::MAX);
    // SAFETY: opts is initialised; name outlives the call (a static C string).
    let rc = unsafe { sys::spdk_env_init(&opts) };
    if rc != 0 {
        let _ = ready.send(Err(format!("spdk_env_init failed ({rc})")));
        return;
    }
    // SAFETY: no new-thread callback; called once, on this thread.
    let rc = unsafe { sys::spdk_thread_lib_init(None, 0) };
    if rc != 0 {
        let _ = ready.send(Err(format!("spdk_thread_lib_init failed ({rc})")));
        return;
    }
    // SAFETY: the thread library is initialised; a NULL cpumask means any core.
    let thread = unsafe { sys::spdk_thread_create(name.as_ptr(), std::ptr::null()) };
    if thread.is_null() {
        let _ = ready.send(Err("spdk_thread_create failed".into()));
        return;
    }
    // SAFETY: thread is the SPDK thread this OS thread polls.
    unsafe { sys::spdk_set_thread(thread) };
    let thread = Ptr(thread);
    // Subsystems: an empty configuration at the startup state, then init.
    // SPDK's default pools (65535 bdev_io, 8192 + 1024 iobuf buffers) want more memory than a
    // small no-hugepage heap has: sized down at the startup state, where only they can be set.
    let empty = startup_config(mem_mib);
    let rc = wait_here(thread, |done| {
        let mut json = empty.clone();
        let arg = rc_arg(done);
        // SAFETY: json is valid for the call (SPDK copies it); arg is a leaked RcDone taken
        // back by done_rc.
        unsafe {
            sys::spdk_subsystem_load_config(
                json.as_mut_ptr().cast(),
                json.len() as isize,
                done_init,
                arg,
                true,
            )
        }
    });
    if rc != 0 {
        let _ = ready.send(Err(format!(
            "loading the startup configuration failed ({rc})"
        )));
        return;
    }
    let rc = wait_here(thread, |done| {
        // SAFETY: the arg is a leaked RcDone taken back by done_rc.
        unsafe { sys::spdk_subsystem_init(done_init, rc_arg(done)) }
    });
    if rc != 0 {
        let _ = ready.send(Err(format!("spdk_subsystem_init failed ({rc})")));
        return;
    }
    // SAFETY: the subsystems are up; from here on RPCs of the runtime state are allowed.
    unsafe { sys::spdk_rpc_set_state(sys::SPDK_RPC_RUNTIME) };
    // SAFETY: at_exit is a plain function that never unwinds.
    if unsafe { libc::atexit(at_exit) } != 0 {
        log::warn!("spdk: could not register the exit handler; SPDK is not shut down at exit");
    }
    let _ = ready.send(Ok(thread));
    let mut idle = Duration::from_micros(10);
    while !STOP.0.load(Ordering::Acquire) {
        // SAFETY: thread is this OS thread's SPDK thread.
        let worked = unsafe { sys::spdk_thread_poll(thread.0, 0, 0) };
        if worked > 0 {
            idle = Duration::from_micros(10);
        } else {
            std::thread::sleep(idle);
            idle = (idle * 2).min(Duration::from_millis(1));
        }
    }
    shut_down(thread);
    if let Ok(mut done) = STOP.1.lock() {
        *done = true;
        STOP.2.notify_all();
    }
}

/// Asks the poller to shut SPDK down, and whether it is done.
static STOP: (AtomicBool, Mutex<bool>, std::sync::Condvar) = (
    AtomicBool::new(false),
    Mutex::new(false),
    std::sync::Condvar::new(),
);

/// At process exit (after `main`): the poller shuts SPDK down in order before the C
/// libraries' destructors run under it. Blobstores still loaded (a store never closed) are
/// left as a crash would leave them; their metadata syncs are what counts.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        STOP.0.store(true, Ordering::Release);
        let Ok(mut done) = STOP.1.lock() else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !*done {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match STOP.2.wait_timeout(done, left) {
                Ok((d, _)) => done = d,
                Err(_) => return,
            }
        }
    });
}

unsafe extern "C" fn done_subsystem_fini(arg: *mut c_void) {
    // SAFETY: arg is the `Box<RcDone>` leaked for the fini completion.
    unsafe { done_rc(arg, 0) }
}

/// On the poller thread: the subsystems down, the SPDK thread exited and destroyed, the
/// thread library and the environment released, and DPDK's runtime directory removed.
fn shut_down(thread: Ptr<sys::spdk_thread>) {
    wait_here(thread, |done| {
        // SAFETY: arg is a leaked RcDone taken back by done_subsystem_fini.
        unsafe { sys::spdk_subsystem_fini(done_subsystem_fini, rc_arg(done)) }
    });
    // SAFETY: thread is this OS thread's SPDK thread; after it has exited it is destroyed
    // and never used again; then the thread library and the environment are released, once.
    unsafe {
        sys::spdk_thread_exit(thread.0);
        while !sys::spdk_thread_is_exited(thread.0) {
            sys::spdk_thread_poll(thread.0, 0, 0);
        }
        sys::spdk_thread_destroy(thread.0);
        sys::spdk_thread_lib_fini();
        sys::spdk_env_fini();
    }
    let run = std::path::Path::new("/var/run/dpdk").join(format!("spdk_pid{}", std::process::id()));
    if let Err(e) = std::fs::remove_dir_all(&run)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::debug!("spdk: removing {}: {e}", run.display());
    }
}

/// The startup-state configuration: pools sized to the memory given (`mem_mib`).
fn startup_config(mem_mib: u32) -> Vec<u8> {
    // About a quarter of the heap for large (132 KiB) buffers, small (8 KiB) ones beside them.
    let large = (u64::from(mem_mib) / 4 * 1024 / 132).clamp(64, 1024);
    serde_json::json!({
        "subsystems": [
            {
                "subsystem": "iobuf",
                "config": [{
                    "method": "iobuf_set_options",
                    "params": { "small_pool_count": large * 8, "large_pool_count": large }
                }]
            },
            {
                "subsystem": "bdev",
                "config": [{
                    "method": "bdev_set_options",
                    "params": { "bdev_io_pool_size": 4095, "bdev_io_cache_size": 64 }
                }]
            }
        ]
    })
    .to_string()
    .into_bytes()
}

/// On the poller thread, before its loop: starts an operation and polls until it completes.
fn wait_here(
    thread: Ptr<sys::spdk_thread>,
    start: impl FnOnce(Box<dyn FnOnce(c_int) + Send>),
) -> c_int {
    let slot: Arc<Mutex<Option<c_int>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    start(Box::new(move |rc| {
        if let Ok(mut g) = s.lock() {
            *g = Some(rc);
        }
    }));
    loop {
        if let Some(rc) = slot.lock().ok().and_then(|g| *g) {
            return rc;
        }
        // SAFETY: called on the thread that owns `thread`.
        unsafe { sys::spdk_thread_poll(thread.0, 0, 0) };
    }
}

/// Runs `start` on the poller thread and waits for the result it sends.
fn call<T: Send + 'static>(
    thread: Ptr<sys::spdk_thread>,
    start: impl FnOnce(SyncSender<BsResult<T>>) + Send + 'static,
) -> BsResult<T> {
    let (tx, rx) = sync_channel(1);
    send(thread, Box::new(move || start(tx)))?;
    rx.recv().unwrap_or(Err(BsError::new(
        "spdk poller",
        BsErrorKind::Other(libc::EPIPE),
    )))
}

fn rc_result(op: &'static str, rc: c_int) -> BsResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(BsError::from_errno(op, rc))
    }
}

/// Runs `f` with the loaded blobstore `store` (on the poller thread).
fn with_loaded<T>(
    store: u64,
    op: &'static str,
    f: impl FnOnce(&mut Loaded) -> BsResult<T>,
) -> BsResult<T> {
    LOADED.with(|l| match l.borrow_mut().get_mut(&store) {
        Some(loaded) => f(loaded),
        None => Err(BsError::new(op, BsErrorKind::Other(libc::ENODEV))),
    })
}

/// The open blob `id`'s pointer (on the poller thread).
fn blob_ptr(store: u64, op: &'static str, id: BlobId) -> BsResult<Ptr<sys::spdk_blob>> {
    with_loaded(store, op, |l| {
        l.blobs
            .get(&id)
            .map(|b| Ptr(b.blob))
            .ok_or(BsError::new(op, BsErrorKind::NotFound))
    })
}

/// The blobstore on SPDK. See the module documentation.
pub struct SpdkBlobstore {
    thread: Ptr<sys::spdk_thread>,
    store: u64,
    bdev: String,
    image: File,
    io_unit: u32,
    cluster: u64,
    total: u64,
    bstype: [u8; 16],
    unloaded: AtomicBool,
}

fn config(method: &str, params: serde_json::Value) -> Vec<u8> {
    serde_json::json!({
        "subsystems": [{
            "subsystem": "bdev",
            "config": [{ "method": method, "params": params }]
        }]
    })
    .to_string()
    .into_bytes()
}

fn load_config(thread: Ptr<sys::spdk_thread>, json: Vec<u8>) -> BsResult<()> {
    call(thread, move |tx| {
        let mut json = json;
        let arg = rc_arg(move |rc| {
            let _ = tx.send(rc_result("spdk_subsystem_load_config", rc));
        });
        // SAFETY: json is valid for the call (SPDK copies it); arg is taken back by done_rc.
        unsafe {
            sys::spdk_subsystem_load_config(
                json.as_mut_ptr().cast(),
                json.len() as isize,
                done_init,
                arg,
                true,
            )
        }
    })
}

impl SpdkBlobstore {
    /// Starts SPDK (once per process), creates an AIO bdev over the image and loads the
    /// blobstore on it, formatting an all-zero image first.
    pub fn start(options: &RuntimeOptions) -> Result<SpdkBlobstore> {
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&options.image)
            .map_err(|e| Error::io(format!("opening {}", options.image.display()), e))?;
        let mut head = vec![0u8; 4096];
        let n = image
            .read_at(&mut head, 0)
            .map_err(|e| Error::io(format!("reading {}", options.image.display()), e))?;
        let blank = head[..n].iter().all(|&b| b == 0);
        let thread = poller(options.mem_mib)?;
        let seq = BDEV_SEQ.fetch_add(1, Ordering::AcqRel);
        let bdev = format!("dsfs{}_{seq}", std::process::id());
        let path = options.image.to_str().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "spdk: the image path is not UTF-8",
            )
        })?;
        load_config(
            thread,
            config(
                "bdev_aio_create",
                serde_json::json!({"name": bdev, "filename": path, "block_size": options.io_unit}),
            ),
        )
        .map_err(|e| unavailable(format!("spdk: creating the AIO bdev on {path}: {e}")))?;
        let cluster = u32::try_from(options.cluster)
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "spdk: cluster too large"))?;
        let name = CString::new(bdev.clone())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "spdk: bdev name"))?;
        let loaded = call(thread, move |tx| {
            load_or_init(name, blank, cluster, seq, tx);
        });
        let (total, io_unit, cluster, bstype) = match loaded {
            Ok(v) => v,
            Err(e) => {
                delete_bdev(thread, &bdev);
                return Err(super::bs_error(e).context("spdk: loading the blobstore"));
            }
        };
        Ok(SpdkBlobstore {
            thread,
            store: seq,
            bdev,
            image,
            io_unit,
            cluster,
            total,
            bstype,
            unloaded: AtomicBool::new(false),
        })
    }
}

fn delete_bdev(thread: Ptr<sys::spdk_thread>, bdev: &str) {
    if let Err(e) = load_config(
        thread,
        config("bdev_aio_delete", serde_json::json!({"name": bdev})),
    ) {
        log::warn!("spdk: deleting bdev {bdev}: {e}");
    }
}

type Geometry = (u64, u32, u64, [u8; 16]);

/// On the poller thread: opens the bdev as a blobstore device and loads (or formats) it.
fn load_or_init(
    name: CString,
    blank: bool,
    cluster: u32,
    store: u64,
    tx: SyncSender<BsResult<Geometry>>,
) {
    let mut dev: *mut sys::spdk_bs_dev = std::ptr::null_mut();
    // SAFETY: name is a valid C string; dev is a valid out-pointer; bdev_event never unwinds.
    let rc = unsafe {
        sys::spdk_bdev_create_bs_dev_ext(name.as_ptr(), bdev_event, std::ptr::null_mut(), &mut dev)
    };
    if rc != 0 {
        let _ = tx.send(Err(BsError::from_errno("spdk_bdev_create_bs_dev_ext", rc)));
        return;
    }
    // SAFETY: a zeroed spdk_bs_opts is valid input for spdk_bs_opts_init, which fills it.
    let mut opts: sys::spdk_bs_opts = unsafe { std::mem::zeroed() };
    // SAFETY: opts is writable and of the size passed.
    unsafe { sys::spdk_bs_opts_init(&mut opts, std::mem::size_of::<sys::spdk_bs_opts>()) };
    let op: &'static str = if blank {
        "spdk_bs_init"
    } else {
        "spdk_bs_load"
    };
    if blank {
        opts.cluster_sz = cluster;
        let mut t = [0 as c_char; 16];
        for (d, s) in t.iter_mut().zip(BSTYPE_BLOBFS) {
            *d = s as c_char;
        }
        opts.bstype = sys::spdk_bs_type { bstype: t };
    }
    let arg: *mut c_void = Box::into_raw(Box::new(Box::new(
        move |bs: Ptr<sys::spdk_blob_store>, rc: c_int| {
            if rc != 0 {
                let _ = tx.send(Err(BsError::from_errno(op, rc)));
                return;
            }
            // SAFETY: bs is the loaded blobstore; these run on its thread.
            let (channel, geometry) = unsafe {
                let t = sys::spdk_bs_get_bstype(bs.0);
                let mut bstype = [0u8; 16];
                for (d, s) in bstype.iter_mut().zip(t.bstype) {
                    *d = s as u8;
                }
                (
                    sys::spdk_bs_alloc_io_channel(bs.0),
                    (
                        sys::spdk_bs_total_data_cluster_count(bs.0),
                        sys::spdk_bs_get_io_unit_size(bs.0) as u32,
                        sys::spdk_bs_get_cluster_size(bs.0),
                        bstype,
                    ),
                )
            };
            if channel.is_null() {
                let _ = tx.send(Err(BsError::new(
                    "spdk_bs_alloc_io_channel",
                    BsErrorKind::NoMemory,
                )));
                return;
            }
            LOADED.with(|l| {
                l.borrow_mut().insert(
                    store,
                    Loaded {
                        bs: bs.0,
                        channel,
                        blobs: HashMap::new(),
                    },
                )
            });
            let _ = tx.send(Ok(geometry));
        },
    ) as BsDone))
    .cast();
    // SAFETY: dev is a fresh bs_dev (the blobstore owns it from here, and destroys it on
    // failure); opts is initialised; arg is taken back by done_bs.
    unsafe {
        if blank {
            sys::spdk_bs_init(dev, &mut opts, done_bs, arg)
        } else {
            sys::spdk_bs_load(dev, &mut opts, done_bs, arg)
        }
    }
}

/// On the poller thread: one I/O is done on blob `id`; runs the closes that waited for it.
fn io_done(store: u64, id: BlobId) {
    let ready: Vec<Job> = LOADED.with(|l| {
        let mut l = l.borrow_mut();
        let Some(b) = l.get_mut(&store).and_then(|s| s.blobs.get_mut(&id)) else {
            return Vec::new();
        };
        b.inflight -= 1;
        if b.inflight == 0 {
            std::mem::take(&mut b.waiting)
        } else {
            Vec::new()
        }
    });
    for job in ready {
        job();
    }
}

/// On the poller thread: closes blob `id` once no I/O is in flight on it.
fn close_on_poller(store: u64, id: BlobId, tx: SyncSender<BsResult<()>>) {
    const OP: &str = "spdk_blob_close";
    let taken = LOADED.with(|l| {
        let mut l = l.borrow_mut();
        let Some(s) = l.get_mut(&store) else {
            return Err(Some(tx));
        };
        match s.blobs.get_mut(&id) {
            None => Err(Some(tx)),
            Some(b) if b.inflight > 0 => {
                b.waiting
                    .push(Box::new(move || close_on_poller(store, id, tx)));
                Err(None)
            }
            Some(_) => Ok((s.blobs.remove(&id).map(|b| Ptr(b.blob)), tx)),
        }
    });
    match taken {
        Ok((Some(blob), tx)) => {
            let arg = rc_arg(move |rc| {
                let _ = tx.send(rc_result(OP, rc));
            });
            // SAFETY: blob is open and has no I/O in flight; arg is taken back by done_rc.
            unsafe { sys::spdk_blob_close(blob.0, done_rc, arg) }
        }
        Ok((None, tx)) | Err(Some(tx)) => {
            let _ = tx.send(Err(BsError::new(OP, BsErrorKind::NotFound)));
        }
        Err(None) => {}
    }
}

impl SpdkBlobstore {
    fn bs(&self, op: &'static str) -> BsResult<()> {
        if self.unloaded.load(Ordering::Acquire) {
            Err(BsError::new(op, BsErrorKind::Other(libc::ENODEV)))
        } else {
            Ok(())
        }
    }

    fn io(
        &self,
        op: &'static str,
        id: BlobId,
        offset: u64,
        data: Option<Vec<u8>>,
        len: usize,
    ) -> BsResult<Vec<u8>> {
        self.bs(op)?;
        if !len.is_multiple_of(self.io_unit as usize) {
            return Err(BsError::new(op, BsErrorKind::Invalid));
        }
        let store = self.store;
        let units = (len / self.io_unit as usize) as u64;
        call(self.thread, move |tx| {
            let started = with_loaded(store, op, |l| {
                let b = l
                    .blobs
                    .get_mut(&id)
                    .ok_or(BsError::new(op, BsErrorKind::NotFound))?;
                b.inflight += 1;
                Ok((Ptr(b.blob), Ptr(l.channel)))
            });
            let (blob, channel) = match started {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // SAFETY: plain allocation from SPDK's DMA-safe heap.
            let buf = Ptr(
                unsafe { sys::spdk_dma_zmalloc(len.max(1), 4096, std::ptr::null_mut()) }
                    .cast::<u8>(),
            );
            if buf.0.is_null() {
                io_done(store, id);
                let _ = tx.send(Err(BsError::new(op, BsErrorKind::NoMemory)));
                return;
            }
            let write = data.is_some();
            if let Some(d) = &data {
                // SAFETY: buf holds len bytes and d is len bytes long.
                unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, len) };
            }
            let arg = rc_arg(move |rc| {
                let out = rc_result(op, rc).map(|()| {
                    let mut v = Vec::new();
                    if !write {
                        v.resize(len, 0);
                        // SAFETY: buf holds len bytes the read filled.
                        unsafe { std::ptr::copy_nonoverlapping(buf.get(), v.as_mut_ptr(), len) };
                    }
                    v
                });
                // SAFETY: buf came from spdk_dma_zmalloc and the I/O is complete.
                unsafe { sys::spdk_dma_free(buf.get().cast()) };
                io_done(store, id);
                let _ = tx.send(out);
            });
            // SAFETY: blob is open (its close waits for this I/O), channel is the store's
            // channel on this thread, buf is a DMA buffer of `units` io units; arg is taken
            // back by done_rc.
            unsafe {
                if write {
                    sys::spdk_blob_io_write(
                        blob.0,
                        channel.0,
                        buf.0.cast(),
                        offset,
                        units,
                        done_rc,
                        arg,
                    )
                } else {
                    sys::spdk_blob_io_read(
                        blob.0,
                        channel.0,
                        buf.0.cast(),
                        offset,
                        units,
                        done_rc,
                        arg,
                    )
                }
            }
        })
    }

    /// Runs a metadata operation that completes with an errno on open blob `id`.
    fn blob_rc(
        &self,
        op: &'static str,
        id: BlobId,
        start: impl FnOnce(Ptr<sys::spdk_blob>, *mut c_void) + Send + 'static,
    ) -> BsResult<()> {
        self.bs(op)?;
        let store = self.store;
        call(self.thread, move |tx| match blob_ptr(store, op, id) {
            Ok(blob) => start(
                blob,
                rc_arg(move |rc| {
                    let _ = tx.send(rc_result(op, rc));
                }),
            ),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
    }

    /// Runs a synchronous call on open blob `id` on the poller thread.
    fn blob_sync<T: Send + 'static>(
        &self,
        op: &'static str,
        id: BlobId,
        f: impl FnOnce(Ptr<sys::spdk_blob>) -> BsResult<T> + Send + 'static,
    ) -> BsResult<T> {
        self.bs(op)?;
        let store = self.store;
        call(self.thread, move |tx| {
            let _ = tx.send(blob_ptr(store, op, id).and_then(f));
        })
    }
}

fn c_name(op: &'static str, name: &str) -> BsResult<CString> {
    CString::new(name).map_err(|_| BsError::new(op, BsErrorKind::Invalid))
}

impl BlobOps for SpdkBlobstore {
    fn io_unit_size(&self) -> u32 {
        self.io_unit
    }

    fn cluster_size(&self) -> u64 {
        self.cluster
    }

    fn total_clusters(&self) -> u64 {
        self.total
    }

    fn free_clusters(&self) -> u64 {
        let store = self.store;
        let r = call(self.thread, move |tx| {
            let _ = tx.send(with_loaded(store, "spdk_bs_free_cluster_count", |l| {
                // SAFETY: l.bs is the loaded blobstore, on its thread.
                Ok(unsafe { sys::spdk_bs_free_cluster_count(l.bs) })
            }));
        });
        r.unwrap_or(0)
    }

    fn bstype(&self) -> [u8; 16] {
        self.bstype
    }

    fn create_blob(&self, xattrs: &[(&str, &[u8])]) -> BsResult<BlobId> {
        const OP: &str = "spdk_bs_create_blob_ext";
        self.bs(OP)?;
        let mut ctx = XattrCtx {
            names: Vec::new(),
            values: Vec::new(),
        };
        for (n, v) in xattrs {
            ctx.names.push(c_name(OP, n)?);
            ctx.values.push(v.to_vec());
        }
        let store = self.store;
        call(self.thread, move |tx| {
            let bs = match with_loaded(store, OP, |l| Ok(Ptr(l.bs))) {
                Ok(bs) => bs,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let ctx = Box::new(ctx);
            let mut names = Names(ctx.names.iter().map(|n| n.as_ptr().cast_mut()).collect());
            // SAFETY: a zeroed spdk_blob_opts is valid input for spdk_blob_opts_init.
            let mut opts: sys::spdk_blob_opts = unsafe { std::mem::zeroed() };
            // SAFETY: opts is writable and of the size passed.
            unsafe {
                sys::spdk_blob_opts_init(&mut opts, std::mem::size_of::<sys::spdk_blob_opts>())
            };
            opts.xattrs = sys::spdk_blob_xattr_opts {
                count: names.0.len(),
                names: names.0.as_mut_ptr(),
                ctx: (&*ctx as *const XattrCtx).cast_mut().cast(),
                get_value: Some(xattr_value),
            };
            let arg: *mut c_void = Box::into_raw(Box::new(Box::new(move |id: u64, rc: c_int| {
                // The names and values lived until the blob was created.
                drop(ctx);
                drop(names);
                let _ = tx.send(rc_result(OP, rc).map(|()| id));
            }) as IdDone))
            .cast();
            // SAFETY: bs is loaded; opts and the xattr context stay alive until the completion
            // (they are owned by it); arg is taken back by done_id.
            unsafe { sys::spdk_bs_create_blob_ext(bs.0, &opts, done_id, arg) }
        })
    }

    fn open_blob(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_bs_open_blob";
        self.bs(OP)?;
        let store = self.store;
        call(self.thread, move |tx| {
            let bs = match with_loaded(store, OP, |l| Ok((l.blobs.contains_key(&id), Ptr(l.bs)))) {
                Ok((true, _)) => {
                    let _ = tx.send(Ok(()));
                    return;
                }
                Ok((false, bs)) => bs,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let arg = blob_arg(move |blob, rc| {
                if rc != 0 {
                    let _ = tx.send(Err(BsError::from_errno(OP, rc)));
                    return;
                }
                let dup = with_loaded(store, OP, |l| match l.blobs.entry(id) {
                    std::collections::hash_map::Entry::Occupied(_) => Ok(true),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(OpenBlob {
                            blob: blob.get(),
                            inflight: 0,
                            waiting: Vec::new(),
                        });
                        Ok(false)
                    }
                });
                if dup == Ok(true) {
                    // Opened twice concurrently: give back the second reference.
                    let noop = rc_arg(|_| {});
                    // SAFETY: blob holds one extra reference from this open.
                    unsafe { sys::spdk_blob_close(blob.0, done_rc, noop) };
                }
                let _ = tx.send(dup.map(|_| ()));
            });
            // SAFETY: bs is loaded; arg is taken back by done_blob.
            unsafe { sys::spdk_bs_open_blob(bs.0, id, done_blob, arg) }
        })
    }

    fn close_blob(&self, id: BlobId) -> BsResult<()> {
        self.bs("spdk_blob_close")?;
        let store = self.store;
        call(self.thread, move |tx| close_on_poller(store, id, tx))
    }

    fn delete_blob(&self, id: BlobId) -> BsResult<()> {
        const OP: &str = "spdk_bs_delete_blob";
        self.bs(OP)?;
        let store = self.store;
        call(self.thread, move |tx| {
            match with_loaded(store, OP, |l| Ok(Ptr(l.bs))) {
                Ok(bs) => {
                    let arg = rc_arg(move |rc| {
                        let _ = tx.send(rc_result(OP, rc));
                    });
                    // SAFETY: bs is loaded; arg is taken back by done_rc.
                    unsafe { sys::spdk_bs_delete_blob(bs.0, id, done_rc, arg) }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
    }

    fn blob_ids(&self) -> BsResult<Vec<BlobId>> {
        const OP: &str = "spdk_bs_iter_first";
        self.bs(OP)?;
        let store = self.store;
        call(self.thread, move |tx| {
            match with_loaded(store, OP, |l| Ok(Ptr(l.bs))) {
                Ok(bs) => iter_step(bs, Vec::new(), tx, None),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
    }

    fn resize(&self, id: BlobId, clusters: u64) -> BsResult<()> {
        self.blob_rc("spdk_blob_resize", id, move |blob, arg| {
            // SAFETY: blob is open; arg is taken back by done_rc.
            unsafe { sys::spdk_blob_resize(blob.0, clusters, done_rc, arg) }
        })
    }

    fn num_clusters(&self, id: BlobId) -> BsResult<u64> {
        self.blob_sync("spdk_blob_get_num_clusters", id, |blob| {
            // SAFETY: blob is open, on its thread.
            Ok(unsafe { sys::spdk_blob_get_num_clusters(blob.0) })
        })
    }

    fn write(&self, id: BlobId, offset: u64, data: &[u8]) -> BsResult<()> {
        self.io(
            "spdk_blob_io_write",
            id,
            offset,
            Some(data.to_vec()),
            data.len(),
        )
        .map(|_| ())
    }

    fn read(&self, id: BlobId, offset: u64, buf: &mut [u8]) -> BsResult<()> {
        let v = self.io("spdk_blob_io_read", id, offset, None, buf.len())?;
        buf.copy_from_slice(&v);
        Ok(())
    }

    fn set_xattr(&self, id: BlobId, name: &str, value: &[u8]) -> BsResult<()> {
        const OP: &str = "spdk_blob_set_xattr";
        let name = c_name(OP, name)?;
        let value = value.to_vec();
        let len =
            u16::try_from(value.len()).map_err(|_| BsError::new(OP, BsErrorKind::NoMemory))?;
        self.blob_sync(OP, id, move |blob| {
            // SAFETY: blob is open; name and value are valid for the call (SPDK copies them).
            let rc = unsafe {
                sys::spdk_blob_set_xattr(blob.0, name.as_ptr(), value.as_ptr().cast(), len)
            };
            rc_result(OP, rc)
        })
    }

    fn get_xattr(&self, id: BlobId, name: &str) -> BsResult<Option<Vec<u8>>> {
        const OP: &str = "spdk_blob_get_xattr_value";
        let name = c_name(OP, name)?;
        self.blob_sync(OP, id, move |blob| {
            let mut value: *const c_void = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: blob is open; value and len are valid out-pointers.
            let rc = unsafe {
                sys::spdk_blob_get_xattr_value(blob.0, name.as_ptr(), &mut value, &mut len)
            };
            if rc == -libc::ENOENT {
                return Ok(None);
            }
            rc_result(OP, rc)?;
            if value.is_null() {
                return Ok(Some(Vec::new()));
            }
            // SAFETY: SPDK returned a pointer to len bytes owned by the open blob, valid until
            // its metadata changes, which cannot happen during this call on its thread.
            Ok(Some(
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len) }.to_vec(),
            ))
        })
    }

    fn remove_xattr(&self, id: BlobId, name: &str) -> BsResult<()> {
        const OP: &str = "spdk_blob_remove_xattr";
        let name = c_name(OP, name)?;
        self.blob_sync(OP, id, move |blob| {
            // SAFETY: blob is open; name is a valid C string.
            let rc = unsafe { sys::spdk_blob_remove_xattr(blob.0, name.as_ptr()) };
            if rc == -libc::ENOENT {
                Ok(())
            } else {
                rc_result(OP, rc)
            }
        })
    }

    fn sync_md(&self, id: BlobId) -> BsResult<()> {
        self.blob_rc("spdk_blob_sync_md", id, |blob, arg| {
            // SAFETY: blob is open; arg is taken back by done_rc.
            unsafe { sys::spdk_blob_sync_md(blob.0, done_rc, arg) }
        })
    }

    fn flush(&self) -> BsResult<()> {
        self.bs("fdatasync")?;
        self.image
            .sync_data()
            .map_err(|e| BsError::from_errno("fdatasync", e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn unload(&self) -> BsResult<()> {
        const OP: &str = "spdk_bs_unload";
        if self.unloaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let store = self.store;
        let open: Vec<BlobId> = call(self.thread, move |tx| {
            let _ = tx.send(with_loaded(store, OP, |l| {
                Ok(l.blobs.keys().copied().collect())
            }));
        })?;
        for id in open {
            self.close_blob(id)?;
        }
        call(self.thread, move |tx| {
            let taken = LOADED.with(|l| l.borrow_mut().remove(&store));
            let Some(l) = taken else {
                let _ = tx.send(Err(BsError::new(OP, BsErrorKind::Other(libc::ENODEV))));
                return;
            };
            let arg = rc_arg(move |rc| {
                let _ = tx.send(rc_result(OP, rc));
            });
            // SAFETY: every blob is closed; the channel and blobstore are this thread's and
            // are released here, never used again (the store's entry is gone).
            unsafe {
                sys::spdk_bs_free_io_channel(l.channel);
                sys::spdk_bs_unload(l.bs, done_rc, arg);
            }
        })?;
        self.unloaded.store(true, Ordering::Release);
        delete_bdev(self.thread, &self.bdev);
        Ok(())
    }
}

/// On the poller thread: one step of `spdk_bs_iter_first`/`_next`, collecting blob ids.
fn iter_step(
    bs: Ptr<sys::spdk_blob_store>,
    ids: Vec<BlobId>,
    tx: SyncSender<BsResult<Vec<BlobId>>>,
    prev: Option<Ptr<sys::spdk_blob>>,
) {
    let arg = blob_arg(move |blob, rc| {
        if rc == -libc::ENOENT {
            let _ = tx.send(Ok(ids));
            return;
        }
        if rc != 0 {
            let _ = tx.send(Err(BsError::from_errno("spdk_bs_iter_next", rc)));
            return;
        }
        let mut ids = ids;
        // SAFETY: the iterator opened blob for us.
        ids.push(unsafe { sys::spdk_blob_get_id(blob.0) });
        iter_step(bs, ids, tx, Some(blob));
    });
    // SAFETY: bs is loaded; prev is the blob the previous step opened (iter_next closes it);
    // arg is taken back by done_blob.
    unsafe {
        match prev {
            None => sys::spdk_bs_iter_first(bs.0, done_blob, arg),
            Some(b) => sys::spdk_bs_iter_next(bs.0, b.0, done_blob, arg),
        }
    }
}
