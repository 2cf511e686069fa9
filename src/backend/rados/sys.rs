//! librados (Ceph 16.2's C API) declarations and the safe wrappers around them. This is the
//! only module of the RADOS store that uses `unsafe`.
//!
//! The wrappers own their handles ([`Cluster`] shuts the connection down and [`Pool`] destroys
//! its I/O context when dropped), copy every buffer librados returns before releasing it, and
//! report failures as negative errno values ([`Errno`]), which the store maps to its error
//! kinds. librados is thread-safe: one connection and one I/O context serve every thread.

#![allow(non_camel_case_types)]

use std::ffi::{CStr, CString, c_char, c_int, c_uchar, c_void};
use std::ptr;
use std::sync::Arc;

type rados_t = *mut c_void;
type rados_ioctx_t = *mut c_void;
type rados_write_op_t = *mut c_void;
type rados_read_op_t = *mut c_void;
type rados_omap_iter_t = *mut c_void;
type rados_list_ctx_t = *mut c_void;
type rados_completion_t = *mut c_void;
type rados_callback_t = Option<unsafe extern "C" fn(rados_completion_t, *mut c_void)>;

#[repr(C)]
#[derive(Default)]
struct rados_cluster_stat_t {
    kb: u64,
    kb_used: u64,
    kb_avail: u64,
    num_objects: u64,
}

const LIBRADOS_CREATE_IDEMPOTENT: c_int = 0;
const LIBRADOS_CREATE_EXCLUSIVE: c_int = 1;
const LIBRADOS_OPERATION_NOFLAG: c_int = 0;
/// `LIBRADOS_CMPXATTR_OP_LT`: the stored value sorts before the given one.
const LIBRADOS_CMPXATTR_OP_LT: u8 = 5;
/// `LIBRADOS_CMPXATTR_OP_EQ`.
const LIBRADOS_CMPXATTR_OP_EQ: u8 = 1;

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create2(
        pcluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: rados_t) -> c_int;
    fn rados_shutdown(cluster: rados_t);
    fn rados_cluster_stat(cluster: rados_t, result: *mut rados_cluster_stat_t) -> c_int;
    fn rados_cluster_fsid(cluster: rados_t, buf: *mut c_char, len: usize) -> c_int;
    fn rados_mon_command(
        cluster: rados_t,
        cmd: *const *const c_char,
        cmdlen: usize,
        inbuf: *const c_char,
        inbuflen: usize,
        outbuf: *mut *mut c_char,
        outbuflen: *mut usize,
        outs: *mut *mut c_char,
        outslen: *mut usize,
    ) -> c_int;
    fn rados_osd_command(
        cluster: rados_t,
        osdid: c_int,
        cmd: *const *const c_char,
        cmdlen: usize,
        inbuf: *const c_char,
        inbuflen: usize,
        outbuf: *mut *mut c_char,
        outbuflen: *mut usize,
        outs: *mut *mut c_char,
        outslen: *mut usize,
    ) -> c_int;
    fn rados_buffer_free(buf: *mut c_char);
    fn rados_ioctx_get_id(io: rados_ioctx_t) -> i64;
    fn rados_aio_create_completion2(
        cb_arg: *mut c_void,
        cb_complete: rados_callback_t,
        pc: *mut rados_completion_t,
    ) -> c_int;
    fn rados_aio_wait_for_complete(c: rados_completion_t) -> c_int;
    fn rados_aio_get_return_value(c: rados_completion_t) -> c_int;
    fn rados_aio_get_version(c: rados_completion_t) -> u64;
    fn rados_aio_release(c: rados_completion_t);
    fn rados_aio_stat(
        io: rados_ioctx_t,
        oid: *const c_char,
        completion: rados_completion_t,
        psize: *mut u64,
        pmtime: *mut i64,
    ) -> c_int;
    fn rados_ioctx_create(cluster: rados_t, pool: *const c_char, io: *mut rados_ioctx_t) -> c_int;
    fn rados_ioctx_destroy(io: rados_ioctx_t);
    fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    fn rados_write_full(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *const c_char,
        len: usize,
    ) -> c_int;
    fn rados_read(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *mut c_char,
        len: usize,
        off: u64,
    ) -> c_int;
    fn rados_stat(
        io: rados_ioctx_t,
        oid: *const c_char,
        psize: *mut u64,
        pmtime: *mut i64,
    ) -> c_int;
    fn rados_remove(io: rados_ioctx_t, oid: *const c_char) -> c_int;

    fn rados_create_write_op() -> rados_write_op_t;
    fn rados_release_write_op(op: rados_write_op_t);
    fn rados_write_op_create(op: rados_write_op_t, exclusive: c_int, category: *const c_char);
    fn rados_write_op_write_full(op: rados_write_op_t, buffer: *const c_char, len: usize);
    fn rados_write_op_omap_set2(
        op: rados_write_op_t,
        keys: *const *const c_char,
        vals: *const *const c_char,
        key_lens: *const usize,
        val_lens: *const usize,
        num: usize,
    );
    fn rados_write_op_omap_cmp2(
        op: rados_write_op_t,
        key: *const c_char,
        comparison_operator: u8,
        val: *const c_char,
        key_len: usize,
        val_len: usize,
        prval: *mut c_int,
    );
    fn rados_write_op_omap_rm_keys2(
        op: rados_write_op_t,
        keys: *const *const c_char,
        key_lens: *const usize,
        num: usize,
    );
    fn rados_write_op_operate(
        op: rados_write_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        mtime: *mut i64,
        flags: c_int,
    ) -> c_int;

    fn rados_create_read_op() -> rados_read_op_t;
    fn rados_release_read_op(op: rados_read_op_t);
    fn rados_read_op_omap_get_vals2(
        op: rados_read_op_t,
        start_after: *const c_char,
        filter_prefix: *const c_char,
        max_return: u64,
        iter: *mut rados_omap_iter_t,
        pmore: *mut c_uchar,
        prval: *mut c_int,
    );
    fn rados_read_op_omap_get_vals_by_keys2(
        op: rados_read_op_t,
        keys: *const *const c_char,
        num_keys: usize,
        key_lens: *const usize,
        iter: *mut rados_omap_iter_t,
        prval: *mut c_int,
    );
    fn rados_read_op_operate(
        op: rados_read_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        flags: c_int,
    ) -> c_int;
    fn rados_omap_get_next2(
        iter: rados_omap_iter_t,
        key: *mut *mut c_char,
        val: *mut *mut c_char,
        key_len: *mut usize,
        val_len: *mut usize,
    ) -> c_int;
    fn rados_omap_get_end(iter: rados_omap_iter_t);

    fn rados_nobjects_list_open(io: rados_ioctx_t, ctx: *mut rados_list_ctx_t) -> c_int;
    fn rados_nobjects_list_next(
        ctx: rados_list_ctx_t,
        entry: *mut *const c_char,
        key: *mut *const c_char,
        nspace: *mut *const c_char,
    ) -> c_int;
    fn rados_nobjects_list_close(ctx: rados_list_ctx_t);
}

/// Omap entries as (key, value) pairs, in key order.
pub type OmapEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// A librados failure: the negative errno it returned, as a positive number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

/// librados's result convention: negative values are `-errno`.
fn check(ret: c_int) -> Result<c_int, Errno> {
    if ret < 0 { Err(Errno(-ret)) } else { Ok(ret) }
}

/// A string for librados; names and options with a NUL byte are refused as `EINVAL`.
fn cstring(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno(libc::EINVAL))
}

/// A connection to a cluster.
pub struct Cluster {
    handle: rados_t,
}

// SAFETY: librados cluster handles may be used from any thread concurrently (librados is
// thread-safe); the handle is only released in `Drop`, when no other reference exists.
unsafe impl Send for Cluster {}
// SAFETY: as above: every librados call on the handle is thread-safe.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Creates a client named `client.<id>`, reads `conf`, applies `options` (name, value),
    /// and connects (bounded by `client_mount_timeout`).
    pub fn connect(conf: &str, id: &str, options: &[(&str, String)]) -> Result<Cluster, Errno> {
        let cluster_name = cstring("ceph")?;
        let user = cstring(&format!("client.{id}"))?;
        let conf = cstring(conf)?;
        let mut handle: rados_t = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; the names are NUL-terminated strings that
        // outlive the call.
        check(unsafe { rados_create2(&mut handle, cluster_name.as_ptr(), user.as_ptr(), 0) })?;
        // From here `Drop` shuts the handle down, also on the error paths below.
        let cluster = Cluster { handle };
        // SAFETY: the handle was created above; `conf` is a NUL-terminated path.
        check(unsafe { rados_conf_read_file(cluster.handle, conf.as_ptr()) })?;
        for (name, value) in options {
            let n = cstring(name)?;
            let v = cstring(value)?;
            // SAFETY: the handle is valid and not yet connected; both strings are valid.
            check(unsafe { rados_conf_set(cluster.handle, n.as_ptr(), v.as_ptr()) })?;
        }
        // SAFETY: the handle is configured and not yet connected.
        check(unsafe { rados_connect(cluster.handle) })?;
        Ok(cluster)
    }

    /// The cluster's raw capacity in bytes: (total, used, available).
    pub fn stat(&self) -> Result<(u64, u64, u64), Errno> {
        let mut st = rados_cluster_stat_t::default();
        // SAFETY: the handle is connected; `st` is a valid out-pointer of the C layout.
        check(unsafe { rados_cluster_stat(self.handle, &mut st) })?;
        Ok((st.kb * 1024, st.kb_used * 1024, st.kb_avail * 1024))
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> Result<String, Errno> {
        let mut buf = [0 as c_char; 64];
        // SAFETY: `buf` is valid for its length; librados writes a NUL-terminated string
        // (or fails with ERANGE when it does not fit).
        check(unsafe { rados_cluster_fsid(self.handle, buf.as_mut_ptr(), buf.len()) })?;
        // SAFETY: the call succeeded, so `buf` holds a NUL-terminated string.
        let fsid = unsafe { CStr::from_ptr(buf.as_ptr()) };
        Ok(fsid.to_string_lossy().into_owned())
    }

    /// Runs a monitor command (`cmd` in the JSON form the `ceph` tool sends) and returns its
    /// output.
    pub fn mon_command(&self, cmd: &str) -> Result<Vec<u8>, Errno> {
        self.command(None, cmd)
    }

    /// Runs a command on OSD `osd` (`ceph tell osd.N ...`) and returns its output.
    pub fn osd_command(&self, osd: i32, cmd: &str) -> Result<Vec<u8>, Errno> {
        self.command(Some(osd), cmd)
    }

    fn command(&self, osd: Option<i32>, cmd: &str) -> Result<Vec<u8>, Errno> {
        let cmd = cstring(cmd)?;
        let cmds = [cmd.as_ptr()];
        let mut out: *mut c_char = ptr::null_mut();
        let mut out_len = 0usize;
        let mut status: *mut c_char = ptr::null_mut();
        let mut status_len = 0usize;
        // SAFETY: one valid command string; no input buffer; valid out-pointers. librados
        // allocates the output buffers (released below with `rados_buffer_free`).
        let ret = unsafe {
            match osd {
                None => rados_mon_command(
                    self.handle,
                    cmds.as_ptr(),
                    1,
                    ptr::null(),
                    0,
                    &mut out,
                    &mut out_len,
                    &mut status,
                    &mut status_len,
                ),
                Some(id) => rados_osd_command(
                    self.handle,
                    id,
                    cmds.as_ptr(),
                    1,
                    ptr::null(),
                    0,
                    &mut out,
                    &mut out_len,
                    &mut status,
                    &mut status_len,
                ),
            }
        };
        let data = if out.is_null() || out_len == 0 {
            Vec::new()
        } else {
            // SAFETY: librados returned a buffer of `out_len` bytes; it is copied at once.
            unsafe { std::slice::from_raw_parts(out.cast::<u8>(), out_len) }.to_vec()
        };
        for buf in [out, status] {
            if !buf.is_null() {
                // SAFETY: allocated by librados for this call and released once.
                unsafe { rados_buffer_free(buf) };
            }
        }
        check(ret)?;
        Ok(data)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rados_create2` and every `Pool` holds an `Arc` of this
        // cluster, so no I/O context outlives it.
        unsafe { rados_shutdown(self.handle) }
    }
}

/// An I/O context: one pool and one RADOS namespace in it.
pub struct Pool {
    io: rados_ioctx_t,
    _cluster: Arc<Cluster>,
}

// SAFETY: librados I/O contexts are thread-safe for object operations; the namespace is set
// once before the context is shared and never changed.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    /// Opens `pool`, with every object in the RADOS namespace `namespace`.
    pub fn open(cluster: &Arc<Cluster>, pool: &str, namespace: &str) -> Result<Pool, Errno> {
        let name = cstring(pool)?;
        let ns = cstring(namespace)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out-pointer.
        check(unsafe { rados_ioctx_create(cluster.handle, name.as_ptr(), &mut io) })?;
        // SAFETY: `io` was just created; librados copies the namespace string.
        unsafe { rados_ioctx_set_namespace(io, ns.as_ptr()) };
        Ok(Pool {
            io,
            _cluster: cluster.clone(),
        })
    }

    /// The pool's id (a pool deleted and created again under the same name has a new one).
    pub fn id(&self) -> i64 {
        // SAFETY: a valid context.
        unsafe { rados_ioctx_get_id(self.io) }
    }

    /// The version and modification time (seconds) of each of `oids`, `None` for one that does
    /// not exist, asked all at once (one round trip's wait, not one per object). An object's
    /// version changes with every write to it, its omap included.
    pub fn versions(&self, oids: &[String]) -> Result<Vec<Option<(u64, i64)>>, Errno> {
        struct Pending {
            completion: rados_completion_t,
            size: u64,
            mtime: i64,
        }
        impl Drop for Pending {
            fn drop(&mut self) {
                if !self.completion.is_null() {
                    // SAFETY: waited for before it is released (below), so librados no
                    // longer writes to `size` or `mtime`; released once.
                    unsafe {
                        rados_aio_wait_for_complete(self.completion);
                        rados_aio_release(self.completion);
                    }
                }
            }
        }
        let names: Vec<CString> = oids.iter().map(|o| cstring(o)).collect::<Result<_, _>>()?;
        // Boxed so that the addresses handed to librados stay put while the vector grows.
        let mut pending: Vec<Box<Pending>> = Vec::with_capacity(names.len());
        for name in &names {
            let mut p = Box::new(Pending {
                completion: ptr::null_mut(),
                size: 0,
                mtime: 0,
            });
            // SAFETY: no callback and no argument; `completion` is a valid out-pointer.
            check(unsafe {
                rados_aio_create_completion2(ptr::null_mut(), None, &mut p.completion)
            })?;
            let started = {
                let p = &mut *p;
                // SAFETY: the name and the out-pointers (inside the box) stay valid until the
                // completion has been waited for, which `Pending`'s drop guarantees.
                check(unsafe {
                    rados_aio_stat(
                        self.io,
                        name.as_ptr(),
                        p.completion,
                        &mut p.size,
                        &mut p.mtime,
                    )
                })
            };
            if let Err(e) = started {
                // Never started: nothing to wait for.
                // SAFETY: created above, released once.
                unsafe { rados_aio_release(p.completion) };
                p.completion = ptr::null_mut();
                return Err(e);
            }
            pending.push(p);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in &pending {
            // SAFETY: a started operation's completion.
            let ret = unsafe {
                rados_aio_wait_for_complete(p.completion);
                rados_aio_get_return_value(p.completion)
            };
            match check(ret) {
                // SAFETY: the operation completed.
                Ok(_) => out.push(Some((
                    unsafe { rados_aio_get_version(p.completion) },
                    p.mtime,
                ))),
                Err(Errno(libc::ENOENT)) => out.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Replaces the whole object `oid` with `data` (creating it).
    pub fn write_full(&self, oid: &str, data: &[u8]) -> Result<(), Errno> {
        let oid = cstring(oid)?;
        // SAFETY: `data` is valid for `data.len()` bytes during the call.
        check(unsafe {
            rados_write_full(self.io, oid.as_ptr(), data.as_ptr().cast(), data.len())
        })?;
        Ok(())
    }

    /// Reads up to `buf.len()` bytes of `oid` from `offset`; returns the count.
    pub fn read(&self, oid: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let oid = cstring(oid)?;
        let mut done = 0usize;
        // librados reads at most INT_MAX bytes at a time (the count is returned as an int).
        while done < buf.len() {
            let want = (buf.len() - done).min(1 << 30);
            // SAFETY: `buf[done..done + want]` is valid writable memory.
            let n = check(unsafe {
                rados_read(
                    self.io,
                    oid.as_ptr(),
                    buf[done..].as_mut_ptr().cast(),
                    want,
                    offset + done as u64,
                )
            })? as usize;
            done += n;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    /// The size and modification time (seconds since the epoch) of `oid`.
    pub fn stat(&self, oid: &str) -> Result<(u64, i64), Errno> {
        let oid = cstring(oid)?;
        let mut size = 0u64;
        let mut mtime = 0i64;
        // SAFETY: both out-pointers are valid; `time_t` is 64 bits on every target Ceph has.
        check(unsafe { rados_stat(self.io, oid.as_ptr(), &mut size, &mut mtime) })?;
        Ok((size, mtime))
    }

    /// Removes `oid`.
    pub fn remove(&self, oid: &str) -> Result<(), Errno> {
        let oid = cstring(oid)?;
        // SAFETY: a valid context and name.
        check(unsafe { rados_remove(self.io, oid.as_ptr()) })?;
        Ok(())
    }

    /// Creates `oid` empty if it does not exist (`exclusive`: fail with `EEXIST` if it does),
    /// optionally writing `content` in the same atomic operation.
    pub fn create(&self, oid: &str, exclusive: bool, content: Option<&[u8]>) -> Result<(), Errno> {
        let op = WriteOp::new();
        if op.0.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        let flag = if exclusive {
            LIBRADOS_CREATE_EXCLUSIVE
        } else {
            LIBRADOS_CREATE_IDEMPOTENT
        };
        // SAFETY: `op` is a live write op; a null category is allowed.
        unsafe { rados_write_op_create(op.0, flag, ptr::null()) };
        if let Some(data) = content {
            // SAFETY: librados copies the buffer when the op is built.
            unsafe { rados_write_op_write_full(op.0, data.as_ptr().cast(), data.len()) };
        }
        op.operate(self, oid)
    }

    /// Sets the omap entries `set` and removes the omap keys `remove` of `oid`, in one atomic
    /// operation.
    pub fn omap_update(
        &self,
        oid: &str,
        set: &[(&[u8], &[u8])],
        remove: &[&[u8]],
    ) -> Result<(), Errno> {
        let op = WriteOp::new();
        op.add_omap_update(set, remove);
        op.operate(self, oid)
    }

    /// Like [`Pool::omap_update`], but only if `guard` holds for `oid`'s omap when the
    /// operation runs (atomically with the update); `ECANCELED` when it does not. The object
    /// is created if missing, so a guard on a missing object sees an empty omap.
    pub fn omap_update_if(
        &self,
        oid: &str,
        guard: OmapGuard<'_>,
        set: &[(&[u8], &[u8])],
        remove: &[&[u8]],
    ) -> Result<(), Errno> {
        let op = WriteOp::new();
        if op.0.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        let (key, cmp, value) = match guard {
            OmapGuard::Below(k, v) => (k, LIBRADOS_CMPXATTR_OP_LT, v),
            OmapGuard::Equal(k, v) => (k, LIBRADOS_CMPXATTR_OP_EQ, v),
        };
        let mut rval: c_int = 0;
        // SAFETY: `op` is live; a null category is allowed. The key and value are copied into
        // the op; `rval` lives until the op has run (in this function).
        unsafe {
            rados_write_op_create(op.0, LIBRADOS_CREATE_IDEMPOTENT, ptr::null());
            rados_write_op_omap_cmp2(
                op.0,
                key.as_ptr().cast(),
                cmp,
                value.as_ptr().cast(),
                key.len(),
                value.len(),
                &mut rval,
            );
        }
        op.add_omap_update(set, remove);
        op.operate(self, oid)
    }

    /// The omap values of `keys` in `oid` that exist, as (key, value) pairs.
    pub fn omap_get(&self, oid: &str, keys: &[&[u8]]) -> Result<OmapEntries, Errno> {
        let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr().cast()).collect();
        let lens: Vec<usize> = keys.iter().map(|k| k.len()).collect();
        let op = ReadOp::new();
        let mut iter: rados_omap_iter_t = ptr::null_mut();
        let mut rval: c_int = 0;
        // SAFETY: the key arrays live until the op has run (below, in this function); the
        // out-pointers are valid until then too.
        unsafe {
            rados_read_op_omap_get_vals_by_keys2(
                op.0,
                ptrs.as_ptr(),
                keys.len(),
                lens.as_ptr(),
                &mut iter,
                &mut rval,
            )
        };
        // Wrapped before the op runs, so the iterator is ended on every path.
        let iter = OmapIter(iter);
        op.operate(self, oid)?;
        check(rval)?;
        iter.drain()
    }

    /// Up to `max` omap entries of `oid` after `start_after` whose keys start with `prefix`, in
    /// key order, and whether more follow.
    pub fn omap_list(
        &self,
        oid: &str,
        start_after: &[u8],
        prefix: &[u8],
        max: u64,
    ) -> Result<(OmapEntries, bool), Errno> {
        let start = CString::new(start_after).map_err(|_| Errno(libc::EINVAL))?;
        let prefix = CString::new(prefix).map_err(|_| Errno(libc::EINVAL))?;
        let op = ReadOp::new();
        let mut iter: rados_omap_iter_t = ptr::null_mut();
        let mut more: c_uchar = 0;
        let mut rval: c_int = 0;
        // SAFETY: the strings and out-pointers stay valid until the op has run below.
        unsafe {
            rados_read_op_omap_get_vals2(
                op.0,
                start.as_ptr(),
                prefix.as_ptr(),
                max,
                &mut iter,
                &mut more,
                &mut rval,
            )
        };
        // Wrapped before the op runs, so the iterator is ended on every path.
        let iter = OmapIter(iter);
        op.operate(self, oid)?;
        check(rval)?;
        Ok((iter.drain()?, more != 0))
    }

    /// The names of every object in this context's namespace (in hash order).
    pub fn list_objects(&self) -> Result<Vec<String>, Errno> {
        let mut ctx: rados_list_ctx_t = ptr::null_mut();
        // SAFETY: `ctx` is a valid out-pointer.
        check(unsafe { rados_nobjects_list_open(self.io, &mut ctx) })?;
        let mut names = Vec::new();
        let result = loop {
            let mut entry: *const c_char = ptr::null();
            // SAFETY: `ctx` is open; null key and namespace out-pointers are allowed.
            let ret = unsafe {
                rados_nobjects_list_next(ctx, &mut entry, ptr::null_mut(), ptr::null_mut())
            };
            if ret == -libc::ENOENT {
                break Ok(());
            }
            if let Err(e) = check(ret) {
                break Err(e);
            }
            if !entry.is_null() {
                // SAFETY: librados returns a NUL-terminated name valid until the next call;
                // it is copied at once.
                let name = unsafe { CStr::from_ptr(entry) };
                names.push(name.to_string_lossy().into_owned());
            }
        };
        // SAFETY: `ctx` was opened above and is closed exactly once.
        unsafe { rados_nobjects_list_close(ctx) };
        result.map(|()| names)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the context came from `rados_ioctx_create` and is destroyed once; the
        // cluster outlives it (this struct holds an `Arc` of it).
        unsafe { rados_ioctx_destroy(self.io) }
    }
}

/// A condition on one omap entry that a guarded update checks atomically.
#[derive(Clone, Copy, Debug)]
pub enum OmapGuard<'a> {
    /// The value of `.0` sorts before `.1` (bytewise); a missing entry is the empty value.
    Below(&'a [u8], &'a [u8]),
    /// The value of `.0` is exactly `.1`.
    Equal(&'a [u8], &'a [u8]),
}

/// A compound write operation, released when dropped.
struct WriteOp(rados_write_op_t);

impl WriteOp {
    fn new() -> WriteOp {
        // SAFETY: no arguments; the op is released in `Drop`.
        WriteOp(unsafe { rados_create_write_op() })
    }

    /// Adds setting the omap entries `set` and removing the omap keys `remove`.
    fn add_omap_update(&self, set: &[(&[u8], &[u8])], remove: &[&[u8]]) {
        if self.0.is_null() {
            return;
        }
        if !set.is_empty() {
            let keys: Vec<*const c_char> = set.iter().map(|(k, _)| k.as_ptr().cast()).collect();
            let vals: Vec<*const c_char> = set.iter().map(|(_, v)| v.as_ptr().cast()).collect();
            let key_lens: Vec<usize> = set.iter().map(|(k, _)| k.len()).collect();
            let val_lens: Vec<usize> = set.iter().map(|(_, v)| v.len()).collect();
            // SAFETY: four arrays of `set.len()` elements, each pointer valid for its length;
            // librados copies the keys and values into the op.
            unsafe {
                rados_write_op_omap_set2(
                    self.0,
                    keys.as_ptr(),
                    vals.as_ptr(),
                    key_lens.as_ptr(),
                    val_lens.as_ptr(),
                    set.len(),
                )
            };
        }
        if !remove.is_empty() {
            let keys: Vec<*const c_char> = remove.iter().map(|k| k.as_ptr().cast()).collect();
            let key_lens: Vec<usize> = remove.iter().map(|k| k.len()).collect();
            // SAFETY: two arrays of `remove.len()` elements; librados copies the keys.
            unsafe {
                rados_write_op_omap_rm_keys2(self.0, keys.as_ptr(), key_lens.as_ptr(), remove.len())
            };
        }
    }

    fn operate(self, pool: &Pool, oid: &str) -> Result<(), Errno> {
        if self.0.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        let oid = cstring(oid)?;
        // SAFETY: a live op, a valid context and name; a null mtime means "now".
        check(unsafe {
            rados_write_op_operate(
                self.0,
                pool.io,
                oid.as_ptr(),
                ptr::null_mut(),
                LIBRADOS_OPERATION_NOFLAG,
            )
        })?;
        Ok(())
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `rados_create_write_op`, released once.
            unsafe { rados_release_write_op(self.0) }
        }
    }
}

/// A compound read operation, released when dropped.
struct ReadOp(rados_read_op_t);

impl ReadOp {
    fn new() -> ReadOp {
        // SAFETY: no arguments; the op is released in `Drop`.
        ReadOp(unsafe { rados_create_read_op() })
    }

    fn operate(&self, pool: &Pool, oid: &str) -> Result<(), Errno> {
        if self.0.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        let oid = cstring(oid)?;
        // SAFETY: a live op, a valid context and name.
        check(unsafe {
            rados_read_op_operate(self.0, pool.io, oid.as_ptr(), LIBRADOS_OPERATION_NOFLAG)
        })?;
        Ok(())
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `rados_create_read_op`, released once.
            unsafe { rados_release_read_op(self.0) }
        }
    }
}

/// An omap iterator filled by a read op, ended when dropped.
struct OmapIter(rados_omap_iter_t);

impl OmapIter {
    /// Copies every (key, value) pair out.
    fn drain(&self) -> Result<OmapEntries, Errno> {
        let mut out = Vec::new();
        if self.0.is_null() {
            return Ok(out);
        }
        loop {
            let mut key: *mut c_char = ptr::null_mut();
            let mut val: *mut c_char = ptr::null_mut();
            let mut key_len = 0usize;
            let mut val_len = 0usize;
            // SAFETY: a live iterator and valid out-pointers.
            check(unsafe {
                rados_omap_get_next2(self.0, &mut key, &mut val, &mut key_len, &mut val_len)
            })?;
            if key.is_null() {
                return Ok(out);
            }
            // SAFETY: librados returns buffers of the given lengths, valid until the next
            // call on the iterator; they are copied at once.
            let k = unsafe { std::slice::from_raw_parts(key.cast::<u8>(), key_len) }.to_vec();
            let v = if val.is_null() || val_len == 0 {
                Vec::new()
            } else {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(val.cast::<u8>(), val_len) }.to_vec()
            };
            out.push((k, v));
        }
    }
}

impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the iterator came from an executed read op and is ended once.
            unsafe { rados_omap_get_end(self.0) }
        }
    }
}
