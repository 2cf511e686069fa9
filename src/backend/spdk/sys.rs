//! Hand-written declarations of the SPDK C API that `runtime` uses (SPDK v25.05:
//! `include/spdk/{env,thread,init,rpc,bdev,blob_bdev,blob}.h`). Nothing else in dsfs declares
//! SPDK functions. The `#[repr(C)]` structs carry compile-time size and offset assertions
//! matching SPDK's own `SPDK_STATIC_ASSERT`s (checked against the headers by a C program that
//! printed `sizeof`/`offsetof`). Linking is done by `build.rs` (pkg-config).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};
use std::mem::{offset_of, size_of};

/// Opaque `struct spdk_thread`.
#[repr(C)]
pub struct spdk_thread {
    _private: [u8; 0],
}
/// Opaque `struct spdk_cpuset`.
#[repr(C)]
pub struct spdk_cpuset {
    _private: [u8; 0],
}
/// Opaque `struct spdk_blob_store`.
#[repr(C)]
pub struct spdk_blob_store {
    _private: [u8; 0],
}
/// Opaque `struct spdk_blob`.
#[repr(C)]
pub struct spdk_blob {
    _private: [u8; 0],
}
/// Opaque `struct spdk_bs_dev`.
#[repr(C)]
pub struct spdk_bs_dev {
    _private: [u8; 0],
}
/// Opaque `struct spdk_bdev`.
#[repr(C)]
pub struct spdk_bdev {
    _private: [u8; 0],
}
/// Opaque `struct spdk_io_channel`.
#[repr(C)]
pub struct spdk_io_channel {
    _private: [u8; 0],
}
/// Opaque `struct spdk_pci_addr`.
#[repr(C)]
pub struct spdk_pci_addr {
    _private: [u8; 0],
}

/// `struct spdk_env_opts` (128 bytes).
#[repr(C)]
pub struct spdk_env_opts {
    pub name: *const c_char,
    pub core_mask: *const c_char,
    pub lcore_map: *const c_char,
    pub shm_id: c_int,
    pub mem_channel: c_int,
    pub main_core: c_int,
    pub mem_size: c_int,
    pub no_pci: bool,
    pub hugepage_single_segments: bool,
    pub unlink_hugepage: bool,
    pub no_huge: bool,
    pub reserved: u32,
    pub num_pci_addr: usize,
    pub hugedir: *const c_char,
    pub pci_blocked: *mut spdk_pci_addr,
    pub pci_allowed: *mut spdk_pci_addr,
    pub iova_mode: *const c_char,
    pub base_virtaddr: u64,
    pub env_context: *mut c_void,
    pub vf_token: *const c_char,
    pub opts_size: usize,
    pub enforce_numa: bool,
    pub reserved2: [u8; 7],
}
const _: () = assert!(size_of::<spdk_env_opts>() == 128);
const _: () = assert!(offset_of!(spdk_env_opts, mem_size) == 36);
const _: () = assert!(offset_of!(spdk_env_opts, no_huge) == 43);
const _: () = assert!(offset_of!(spdk_env_opts, opts_size) == 112);

/// `struct spdk_bs_type`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct spdk_bs_type {
    pub bstype: [c_char; 16],
}
const _: () = assert!(size_of::<spdk_bs_type>() == 16);

/// `spdk_blob_op_complete`.
pub type spdk_blob_op_complete = unsafe extern "C" fn(cb_arg: *mut c_void, bserrno: c_int);
/// `spdk_blob_op_with_id_complete`.
pub type spdk_blob_op_with_id_complete =
    unsafe extern "C" fn(cb_arg: *mut c_void, blobid: u64, bserrno: c_int);
/// `spdk_blob_op_with_handle_complete`.
pub type spdk_blob_op_with_handle_complete =
    unsafe extern "C" fn(cb_arg: *mut c_void, blb: *mut spdk_blob, bserrno: c_int);
/// `spdk_bs_op_complete`.
pub type spdk_bs_op_complete = unsafe extern "C" fn(cb_arg: *mut c_void, bserrno: c_int);
/// `spdk_bs_op_with_handle_complete`.
pub type spdk_bs_op_with_handle_complete =
    unsafe extern "C" fn(cb_arg: *mut c_void, bs: *mut spdk_blob_store, bserrno: c_int);
/// `spdk_msg_fn`.
pub type spdk_msg_fn = unsafe extern "C" fn(ctx: *mut c_void);
/// `spdk_subsystem_init_fn`.
pub type spdk_subsystem_init_fn = unsafe extern "C" fn(rc: c_int, ctx: *mut c_void);
/// `spdk_subsystem_fini_fn`.
pub type spdk_subsystem_fini_fn = unsafe extern "C" fn(ctx: *mut c_void);
/// `spdk_bdev_event_cb_t` (the event type is an enum: a C `int`).
pub type spdk_bdev_event_cb_t =
    unsafe extern "C" fn(event_type: c_int, bdev: *mut spdk_bdev, event_ctx: *mut c_void);
/// `spdk_new_thread_fn` (unused: passed as NULL).
pub type spdk_new_thread_fn = unsafe extern "C" fn(thread: *mut spdk_thread) -> c_int;
/// The `get_value` callback of `struct spdk_blob_xattr_opts`.
pub type xattr_get_value = unsafe extern "C" fn(
    xattr_ctx: *mut c_void,
    name: *const c_char,
    value: *mut *const c_void,
    value_len: *mut usize,
);

/// `struct spdk_bs_opts` (packed, 88 bytes).
#[repr(C, packed)]
pub struct spdk_bs_opts {
    pub cluster_sz: u32,
    pub num_md_pages: u32,
    pub max_md_ops: u32,
    pub max_channel_ops: u32,
    pub clear_method: c_int,
    pub bstype: spdk_bs_type,
    pub md_page_size: u32,
    pub iter_cb_fn: Option<spdk_blob_op_with_handle_complete>,
    pub iter_cb_arg: *mut c_void,
    pub opts_size: usize,
    pub force_recover: u64,
    pub esnap_bs_dev_create: *mut c_void,
    pub esnap_ctx: *mut c_void,
}
const _: () = assert!(size_of::<spdk_bs_opts>() == 88);
const _: () = assert!(offset_of!(spdk_bs_opts, bstype) == 20);
const _: () = assert!(offset_of!(spdk_bs_opts, opts_size) == 56);

/// `struct spdk_blob_xattr_opts` (32 bytes).
#[repr(C)]
pub struct spdk_blob_xattr_opts {
    pub count: usize,
    pub names: *mut *mut c_char,
    pub ctx: *mut c_void,
    pub get_value: Option<xattr_get_value>,
}
const _: () = assert!(size_of::<spdk_blob_xattr_opts>() == 32);

/// `struct spdk_blob_opts` (80 bytes).
#[repr(C)]
pub struct spdk_blob_opts {
    pub num_clusters: u64,
    pub thin_provision: bool,
    pub clear_method: c_int,
    pub xattrs: spdk_blob_xattr_opts,
    pub use_extent_table: bool,
    pub opts_size: usize,
    pub esnap_id: *const c_void,
    pub esnap_id_len: u64,
}
const _: () = assert!(size_of::<spdk_blob_opts>() == 80);
const _: () = assert!(offset_of!(spdk_blob_opts, xattrs) == 16);
const _: () = assert!(offset_of!(spdk_blob_opts, opts_size) == 56);

/// `SPDK_RPC_RUNTIME`.
pub const SPDK_RPC_RUNTIME: u32 = 0x2;

unsafe extern "C" {
    // env.h
    pub fn spdk_env_opts_init(opts: *mut spdk_env_opts);
    pub fn spdk_env_init(opts: *const spdk_env_opts) -> c_int;
    pub fn spdk_dma_zmalloc(size: usize, align: usize, unused: *mut u64) -> *mut c_void;
    pub fn spdk_dma_free(buf: *mut c_void);
    pub fn spdk_env_fini();

    // thread.h
    pub fn spdk_thread_lib_fini();
    pub fn spdk_thread_exit(thread: *mut spdk_thread) -> c_int;
    pub fn spdk_thread_is_exited(thread: *mut spdk_thread) -> bool;
    pub fn spdk_thread_destroy(thread: *mut spdk_thread);
    pub fn spdk_thread_lib_init(new_thread_fn: Option<spdk_new_thread_fn>, ctx_sz: usize) -> c_int;
    pub fn spdk_thread_create(name: *const c_char, cpumask: *const spdk_cpuset)
    -> *mut spdk_thread;
    pub fn spdk_set_thread(thread: *mut spdk_thread);
    pub fn spdk_thread_poll(thread: *mut spdk_thread, max_msgs: u32, now: u64) -> c_int;
    pub fn spdk_thread_send_msg(
        thread: *const spdk_thread,
        f: spdk_msg_fn,
        ctx: *mut c_void,
    ) -> c_int;

    // init.h, rpc.h
    pub fn spdk_subsystem_init(cb_fn: spdk_subsystem_init_fn, cb_arg: *mut c_void);
    pub fn spdk_subsystem_load_config(
        json: *mut c_void,
        json_size: isize,
        cb_fn: spdk_subsystem_init_fn,
        cb_arg: *mut c_void,
        stop_on_error: bool,
    );
    pub fn spdk_subsystem_fini(cb_fn: spdk_subsystem_fini_fn, cb_arg: *mut c_void);
    pub fn spdk_rpc_set_state(state_mask: u32);

    // blob_bdev.h
    pub fn spdk_bdev_create_bs_dev_ext(
        bdev_name: *const c_char,
        event_cb: spdk_bdev_event_cb_t,
        event_ctx: *mut c_void,
        bs_dev: *mut *mut spdk_bs_dev,
    ) -> c_int;

    // blob.h: the blobstore
    pub fn spdk_bs_opts_init(opts: *mut spdk_bs_opts, opts_size: usize);
    pub fn spdk_bs_load(
        dev: *mut spdk_bs_dev,
        opts: *mut spdk_bs_opts,
        cb_fn: spdk_bs_op_with_handle_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_init(
        dev: *mut spdk_bs_dev,
        opts: *mut spdk_bs_opts,
        cb_fn: spdk_bs_op_with_handle_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_unload(
        bs: *mut spdk_blob_store,
        cb_fn: spdk_bs_op_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_get_cluster_size(bs: *mut spdk_blob_store) -> u64;
    pub fn spdk_bs_get_io_unit_size(bs: *mut spdk_blob_store) -> u64;
    pub fn spdk_bs_free_cluster_count(bs: *mut spdk_blob_store) -> u64;
    pub fn spdk_bs_total_data_cluster_count(bs: *mut spdk_blob_store) -> u64;
    pub fn spdk_bs_get_bstype(bs: *mut spdk_blob_store) -> spdk_bs_type;
    pub fn spdk_bs_alloc_io_channel(bs: *mut spdk_blob_store) -> *mut spdk_io_channel;
    pub fn spdk_bs_free_io_channel(channel: *mut spdk_io_channel);
    pub fn spdk_blob_opts_init(opts: *mut spdk_blob_opts, opts_size: usize);
    pub fn spdk_bs_create_blob_ext(
        bs: *mut spdk_blob_store,
        opts: *const spdk_blob_opts,
        cb_fn: spdk_blob_op_with_id_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_open_blob(
        bs: *mut spdk_blob_store,
        blobid: u64,
        cb_fn: spdk_blob_op_with_handle_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_blob_close(blob: *mut spdk_blob, cb_fn: spdk_blob_op_complete, cb_arg: *mut c_void);
    pub fn spdk_bs_delete_blob(
        bs: *mut spdk_blob_store,
        blobid: u64,
        cb_fn: spdk_blob_op_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_iter_first(
        bs: *mut spdk_blob_store,
        cb_fn: spdk_blob_op_with_handle_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_bs_iter_next(
        bs: *mut spdk_blob_store,
        blob: *mut spdk_blob,
        cb_fn: spdk_blob_op_with_handle_complete,
        cb_arg: *mut c_void,
    );

    // blob.h: blobs
    pub fn spdk_blob_get_id(blob: *mut spdk_blob) -> u64;
    pub fn spdk_blob_resize(
        blob: *mut spdk_blob,
        sz: u64,
        cb_fn: spdk_blob_op_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_blob_get_num_clusters(blob: *mut spdk_blob) -> u64;
    pub fn spdk_blob_io_write(
        blob: *mut spdk_blob,
        channel: *mut spdk_io_channel,
        payload: *mut c_void,
        offset: u64,
        length: u64,
        cb_fn: spdk_blob_op_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_blob_io_read(
        blob: *mut spdk_blob,
        channel: *mut spdk_io_channel,
        payload: *mut c_void,
        offset: u64,
        length: u64,
        cb_fn: spdk_blob_op_complete,
        cb_arg: *mut c_void,
    );
    pub fn spdk_blob_set_xattr(
        blob: *mut spdk_blob,
        name: *const c_char,
        value: *const c_void,
        value_len: u16,
    ) -> c_int;
    pub fn spdk_blob_get_xattr_value(
        blob: *mut spdk_blob,
        name: *const c_char,
        value: *mut *const c_void,
        value_len: *mut usize,
    ) -> c_int;
    pub fn spdk_blob_remove_xattr(blob: *mut spdk_blob, name: *const c_char) -> c_int;
    pub fn spdk_blob_sync_md(
        blob: *mut spdk_blob,
        cb_fn: spdk_blob_op_complete,
        cb_arg: *mut c_void,
    );
}
