//! The fuser adapter: the only module that names fuser. Each request becomes one [`DsFs`] call
//! and its result one reply; errors become errno through [`FsError::errno`].
//!
//! Kernel passthrough: when [`DsFs::open`] offers a backing file, the adapter registers it with
//! the kernel and replies `opened_passthrough`; if the kernel refuses, it falls back to the
//! userspace read path for the rest of the mount.
//!
//! The kernel keeps one I/O mode per inode: while any handle of an inode uses a backing file,
//! every other open of that inode must name the same backing file (an ordinary open fails
//! with EIO), and while page-cached handles are open no open may name one. Passthrough with
//! `FOPEN_DIRECT_IO` is allowed and sends reads and writes to the daemon (direct I/O
//! overrides passthrough). The adapter therefore counts, per inode, the handles of each kind
//! and chooses every open's mode so that it never conflicts:
//!
//! * passthrough, when the daemon offers a backing file, no page-cached handle is open, and
//!   any other passthrough handle uses the same file;
//! * else, while passthrough handles are open: the same backing id with `FOPEN_DIRECT_IO`
//!   (writers, and readers of a newer version, served by the daemon);
//! * else, for an `O_DIRECT` open or a writable open of a large file
//!   ([`LARGE_WRITE_MIN`]) while no page-cached handle is open, or any open while such a
//!   handle is: `FOPEN_DIRECT_IO` with `FOPEN_PARALLEL_DIRECT_WRITES` and no backing id
//!   (the kernel sends several writers' requests at once; nothing is page-cached);
//! * else an ordinary page-cached open.
//!
//! Why large writable files are not page-cached: without the kernel's writeback cache (which
//! excludes passthrough), a buffered write through a page-cached handle is written through to
//! the daemon while the writer holds the inode's lock, so concurrent writers of one file
//! queue on that lock for the whole round trip (seen in `/proc/PID/stack` of 4 fio writers:
//! three waiting in `fuse_file_write_iter` for the lock, one in `request_wait_answer`). A
//! direct-I/O handle with parallel writes takes the lock shared for writes inside the file,
//! so they reach the daemon together, and the daemon's staging file has a page cache of its
//! own. What it costs: reads through such a handle are served by the daemon, not the page
//! cache. `FUSE_DIRECT_IO_ALLOW_MMAP` keeps shared mappings of these handles working.
//!
//! Its counts drop at `release`, after the kernel has dropped its own, so they never
//! undercount. A memory mapping of a direct-I/O handle beside passthrough readers maps the
//! backing file (the kernel's rule), so a shared writable mapping then writes to the
//! committed value in place; ordinary writes never do.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use super::keep_cache::CacheVersions;
use super::{Attr, Ctx, DsFs, FileKind, FsError, SetAttr, TimeSet};

/// How the adapter asks the kernel to behave.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Hand file-backed values to the kernel (Linux 6.9+, needs CAP_SYS_ADMIN).
    pub passthrough: bool,
    /// Let the kernel cache writes and send them in large pieces (not with passthrough).
    pub writeback_cache: bool,
    /// How long the kernel may cache the attributes and names of files that other programs
    /// may change underneath (keys in shared parts of a revalidated store).
    pub ttl: Duration,
    /// How long it may cache those of everything else: only this daemon changes them, and it
    /// tells the kernel when the command line does (see `inval`).
    pub private_ttl: Duration,
    /// Serve extended attributes. Off, the first xattr request of each kind is answered
    /// `ENOSYS`, after which the kernel answers every later one itself (`EOPNOTSUPP`, and "no
    /// ACL"), and `user.*` xattrs are unavailable. (On, `ls -l` costs no request per file
    /// either: the names it asks for are unsupported, see `fs::xattr`.)
    pub xattr: bool,
}

impl Default for KernelOptions {
    fn default() -> KernelOptions {
        KernelOptions {
            passthrough: true,
            writeback_cache: false,
            ttl: Duration::from_secs(1),
            private_ttl: PRIVATE_TTL,
            xattr: true,
        }
    }
}

/// The default [`KernelOptions::private_ttl`].
pub const PRIVATE_TTL: Duration = Duration::from_secs(30);

/// A [`DsFs`] as a fuser filesystem.
pub struct FuseAdapter {
    fs: Arc<DsFs>,
    options: KernelOptions,
    passthrough: AtomicBool,
    /// The I/O modes of the open handles of each inode, and the handles' own modes.
    io: Mutex<IoTable>,
    /// Tells the kernel about changes it did not make itself; set once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
    /// Which content the kernel's page cache of each inode holds (`FOPEN_KEEP_CACHE`).
    cache: CacheVersions,
}

/// Writable opens of files at least this large (as the open finds them) bypass the page cache
/// (see the module documentation): the size above which reads are passthrough anyway.
pub const LARGE_WRITE_MIN: u64 = super::io::PASSTHROUGH_MIN_SIZE;

/// How the kernel serves one open handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoMode {
    /// Reads go to the backing file in the kernel.
    Passthrough,
    /// Ordinary FUSE I/O through the page cache.
    Cached,
    /// The inode's backing id with `FOPEN_DIRECT_IO`: reads and writes go to the daemon,
    /// beside passthrough handles of the same inode.
    Direct,
    /// `FOPEN_DIRECT_IO` without a backing id: an `O_DIRECT` open, or a writable open of a
    /// large file, while no page-cached handle is open, and every other non-passthrough open
    /// while such a handle is. Reads and writes
    /// go to the daemon, and with `FOPEN_PARALLEL_DIRECT_WRITES` the kernel sends several
    /// writers' requests at once instead of serialising them on the inode's lock (what it does
    /// for `O_DIRECT` on a page-cached handle). Every handle of the inode then bypasses the
    /// page cache, so none can read pages the others' writes made stale.
    Uncached,
}

/// The handles of one inode, by mode.
#[derive(Default)]
struct InodeIo {
    /// Handles holding the backing id (passthrough and direct).
    passthrough: u32,
    cached: u32,
    uncached: u32,
    /// The backing file (device, inode) and kernel id the passthrough handles share.
    backing: Option<((u64, u64), Arc<BackingId>)>,
}

#[derive(Default)]
struct IoTable {
    inodes: HashMap<u64, InodeIo>,
    /// Each handle's inode and mode, until release.
    handles: HashMap<u64, (u64, IoMode)>,
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            FileKind::Dir => FileType::Directory,
            FileKind::File => FileType::RegularFile,
            FileKind::Symlink => FileType::Symlink,
            FileKind::NamedPipe => FileType::NamedPipe,
            FileKind::CharDevice => FileType::CharDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::Socket => FileType::Socket,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

impl FuseAdapter {
    /// Wraps `fs`.
    pub fn new(fs: Arc<DsFs>, options: KernelOptions) -> FuseAdapter {
        let notifier = Arc::new(OnceLock::new());
        start_invalidator(&fs, &notifier);
        FuseAdapter {
            passthrough: AtomicBool::new(options.passthrough),
            fs,
            options,
            io: Mutex::new(IoTable::default()),
            notifier,
            cache: CacheVersions::default(),
        }
    }

    /// How long the kernel may cache inode `ino`'s name and attributes.
    fn ttl(&self, ino: u64) -> &Duration {
        self.ttl_for(self.fs.only_writer(ino))
    }

    /// The timeout for an inode that only dsfs changes (`private`), or for any other.
    fn ttl_for(&self, private: bool) -> &Duration {
        if private {
            &self.options.private_ttl
        } else {
            &self.options.ttl
        }
    }

    /// The open flags for a new handle of `ino` in `mode`, keeping the kernel's page cache
    /// when it holds the file's current content `attr` (see `keep_cache`).
    fn open_flags(&self, ino: u64, attr: &Attr, mode: IoMode) -> FopenFlags {
        match mode {
            IoMode::Cached if self.cache.open(ino, self.fs.content_version(ino, attr)) => {
                FopenFlags::FOPEN_KEEP_CACHE
            }
            IoMode::Cached => FopenFlags::empty(),
            IoMode::Direct | IoMode::Uncached => {
                self.cache.forget(ino);
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
            }
            IoMode::Passthrough => FopenFlags::empty(),
        }
    }

    /// Where the mount puts the session's notifier (`Session::notifier`) once the session
    /// exists; until then the kernel learns of changes only when its timeouts expire.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Drops the privileges of `ino` (see `killpriv`) and, when that changed its mode, tells
    /// the kernel to forget its cached attributes (only those: no page-cache work, so this is
    /// safe while the kernel holds the inode for the request being served).
    fn drop_privileges(&self, ino: u64) -> Result<(), FsError> {
        if self.fs.drop_privileges(ino)?
            && let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
        {
            log::debug!("inode {ino}: invalidating cached attributes failed: {e}");
        }
        Ok(())
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, FsError>) {
        match r {
            Ok(a) => reply.entry(self.ttl(a.ino), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Chooses the mode of a new handle of `ino` (see the module documentation), registering
    /// `backing` with the kernel when passthrough is chosen, and records it. The table stays
    /// locked from the choice to the record, so concurrent opens see each other.
    fn choose_mode(
        &self,
        fh: u64,
        ino: u64,
        backing: Option<&std::fs::File>,
        uncached: bool,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> (IoMode, Option<Arc<BackingId>>) {
        let mut io = self.io.lock();
        let state = io.inodes.entry(ino).or_default();
        let mut chosen = None;
        if let Some(file) = backing
            && self.passthrough.load(Ordering::Relaxed)
        {
            let meta = file.metadata().ok();
            let file_id = meta.map(|m| (m.dev(), m.ino()));
            if state.cached > 0 {
                log::debug!(
                    "inode {ino}: no passthrough while {} cached handles are open",
                    state.cached
                );
            } else if let Some((id_of, id)) = &state.backing {
                if Some(*id_of) == file_id {
                    chosen = Some(id.clone());
                } else {
                    log::debug!(
                        "inode {ino}: no passthrough while open handles read an older version"
                    );
                }
            } else if let Some(file_id) = file_id {
                match register(file) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        state.backing = Some((file_id, id.clone()));
                        chosen = Some(id);
                    }
                    Err(e) => {
                        log::warn!("kernel passthrough refused ({e}); serving reads in userspace");
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        let mode = if chosen.is_some() {
            state.passthrough += 1;
            IoMode::Passthrough
        } else if let Some((_, id)) = &state.backing {
            log::debug!(
                "inode {ino}: direct I/O beside {} passthrough handles",
                state.passthrough
            );
            chosen = Some(id.clone());
            state.passthrough += 1;
            IoMode::Direct
        } else if state.cached == 0 && (uncached || state.uncached > 0) {
            state.uncached += 1;
            IoMode::Uncached
        } else {
            state.cached += 1;
            IoMode::Cached
        };
        log::debug!(
            "inode {ino}: handle {fh} opened {mode:?} (uncached asked {uncached}, backing offered {}; \
             now {} passthrough, {} cached, {} uncached)",
            backing.is_some(),
            state.passthrough,
            state.cached,
            state.uncached
        );
        io.handles.insert(fh, (ino, mode));
        (mode, chosen)
    }

    /// Forgets a released handle's mode. Returns the inode when the handle was page-cached
    /// and no direct-I/O or passthrough handle of it remains open (the kernel's pages then
    /// hold what was written through them).
    fn forget_mode(&self, fh: u64) -> Option<u64> {
        let mut io = self.io.lock();
        let (ino, mode) = io.handles.remove(&fh)?;
        let state = io.inodes.get_mut(&ino)?;
        match mode {
            IoMode::Passthrough | IoMode::Direct => {
                state.passthrough = state.passthrough.saturating_sub(1);
                if state.passthrough == 0 {
                    state.backing = None;
                }
            }
            IoMode::Cached => state.cached = state.cached.saturating_sub(1),
            IoMode::Uncached => state.uncached = state.uncached.saturating_sub(1),
        }
        let coherent = mode == IoMode::Cached && state.passthrough == 0 && state.uncached == 0;
        if state.passthrough == 0 && state.cached == 0 && state.uncached == 0 {
            io.inodes.remove(&ino);
        }
        coherent.then_some(ino)
    }
}

/// What every dsfs session asks of the kernel, whatever the store and options (the adapter's
/// `init` adds passthrough, the writeback cache and mmap of direct-I/O handles): parallel
/// directory operations, readdirplus, explicit data invalidation, cached symlinks,
/// kill-privileges v2 and 1 MiB writes. Public so that the FUSE floor (`examples/floorfs.rs`)
/// gets the same requests dsfs gets.
pub fn ask_session_capabilities(config: &mut KernelConfig) {
    let wanted = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_EXPLICIT_INVAL_DATA
        | InitFlags::FUSE_CACHE_SYMLINKS;
    if let Err(missing) = config.add_capabilities(wanted) {
        log::info!("kernel lacks {missing:?}");
    }
    // The daemon drops setuid/setgid on write, truncate and chown (see `killpriv`), so the
    // kernel need not ask for `security.capability` before every WRITE.
    if config
        .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
        .is_err()
    {
        log::info!("kernel lacks FUSE_HANDLE_KILLPRIV_V2");
    }
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_background(64);
}

impl Filesystem for FuseAdapter {
    /// No `FUSE_ATOMIC_O_TRUNC`: with it the kernel truncates an `O_TRUNC` open's page cache
    /// and size as soon as the OPEN succeeds, before it checks whether the file may be
    /// written, so `open(O_RDONLY | O_TRUNC)` of a running program failed with ETXTBSY
    /// after zeroing the program's pages (it died of SIGBUS; a program still starting died
    /// while loading, which is what made pjdfstest's `open::etxtbsy` flaky with
    /// `FOPEN_KEEP_CACHE`). Without it the kernel truncates by a SETATTR after that check.
    ///
    /// `FUSE_EXPLICIT_INVAL_DATA`, not `FUSE_AUTO_INVAL_DATA`: the automatic variant drops an
    /// inode's pages whenever a refreshed modification time differs from the cached one, which
    /// after every write of the file's own (the kernel does not update the time itself) threw
    /// away the pages it had just written. Content changed beside the mount is dropped by
    /// `start_invalidator`'s notifications instead, and at the next open by `keep_cache`.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        ask_session_capabilities(config);
        if self.options.passthrough {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                log::info!("kernel passthrough unavailable; serving reads in userspace");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        if self.options.writeback_cache
            && !self.passthrough.load(Ordering::Relaxed)
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_err()
        {
            log::info!("kernel writeback cache unavailable");
        }
        // Shared mappings of direct-I/O handles (see the module documentation); the kernel
        // then also drops cached pages a direct write covers.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            log::info!("kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP");
        }
        log::debug!("kernel capabilities: {:?}", config.capabilities());
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.shutdown() {
            log::error!("committing at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.lookup(parent.0, name.as_bytes()));
    }

    /// The kernel evicted the inode, and its pages with it (fuser's `batch_forget` calls this
    /// for each inode).
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.cache.forget(ino.0);
        self.fs.forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(self.ttl(a.ino), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime,
        };
        match self.fs.setattr(ctx(req), ino.0, &set) {
            Ok(a) => reply.attr(self.ttl(a.ino), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .mknod(ctx(req), parent.0, name.as_bytes(), mode, umask, rdev);
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            self.fs
                .mkdir(ctx(req), parent.0, name.as_bytes(), mode, umask),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs.unlink(parent.0, name.as_bytes()))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs.rmdir(parent.0, name.as_bytes()))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            self.fs.symlink(
                ctx(req),
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let f = super::RenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        empty(
            reply,
            self.fs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                f,
            ),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(reply, self.fs.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (opened, attr) = match self.fs.open_with_attr(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(e)),
        };
        // No O_TRUNC arrives here (no FUSE_ATOMIC_O_TRUNC, see `init`): the kernel truncates
        // by a SETATTR, which drops privileges for callers other than root (`setattr`).
        let o_direct = flags.0 & libc::O_DIRECT != 0;
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let uncached = o_direct || (writing && attr.size >= LARGE_WRITE_MIN);
        let (mode, id) =
            self.choose_mode(opened.fh, ino.0, opened.backing.as_ref(), uncached, |f| {
                reply.open_backing(f)
            });
        let mut fopen = self.open_flags(ino.0, &attr, mode);
        if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            // A reader's close has nothing to commit: no FLUSH round trip (writers' closes
            // and the last release still commit).
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        match id {
            Some(id) => reply.opened_passthrough(FileHandle(opened.fh), fopen, &id),
            None => reply.opened(FileHandle(opened.fh), fopen),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.drop_privileges(ino.0)
        {
            return reply.error(errno(e));
        }
        let direct = flags.0 & libc::O_DIRECT != 0;
        match self.fs.write_as(fh.0, offset, data, direct) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.flush(fh.0))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.release(fh.0);
        let coherent = self.forget_mode(fh.0);
        // A reader changed no pages: what its open recorded (see `open_flags`) still holds, or
        // was forgotten since by a direct-I/O open, which the next open must see. Only a
        // writer's release records the version its writes made (no index read per reader).
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY
            && let Some(ino) = coherent
        {
            match self.fs.written_version(ino) {
                Ok(v) => self.cache.matches(ino, v),
                Err(_) => self.cache.forget(ino),
            }
        }
        empty(reply, result)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync(fh.0))
    }

    /// Answered for every directory open, with no `FOPEN_CACHE_DIR`, on purpose. With
    /// `FUSE_NO_OPENDIR_SUPPORT` (tried twice) the kernel keeps every listing (as if each open
    /// answered `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`): that saved `find` its OPENDIR and
    /// RELEASEDIR requests (2,000 over 1,000 directories) and a second `ls -f` its READDIRs, but a
    /// listing served from the kernel's cache carries no attributes. `ls -l` of a directory whose
    /// entries' timeouts had expired then sent one LOOKUP per entry instead of a READDIRPLUS per
    /// ~240 entries: 4,746 LOOKUPs and 1.40 s for 5,000 entries against 21 READDIRPLUS and
    /// 0.08 s, and the bench's `ls -l` of 100,000 entries went from 0.7x to 5-6x native's time.
    /// The invalidation of listings changed beside the mount (see `inval`) stays: it is what a
    /// cached listing would need.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(a) if a.kind == FileKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset, 512) {
            Ok(items) => {
                for item in items {
                    let kind = file_attr(&item.attr).kind;
                    if reply.add(INodeNo(item.ino), item.offset, kind, &item.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdir(ino.0, offset, 256) {
            Ok(items) => {
                let private = self
                    .fs
                    .only_writer_of_children(ino.0, items.iter().map(|i| (i.ino, i.name.as_str())));
                for (item, private) in items.into_iter().zip(private) {
                    let attr = file_attr(&item.attr);
                    let ttl = self.ttl_for(private);
                    if reply.add(
                        INodeNo(item.ino),
                        item.offset,
                        &item.name,
                        ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsyncdir())
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.options.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        empty(
            reply,
            self.fs.setxattr(ino.0, name.as_bytes(), value, flags),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.options.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.options.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.options.xattr {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        empty(reply, self.fs.removexattr(ino.0, name.as_bytes()))
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.fs.access(ctx(req), ino.0, mask.bits()))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(ctx(req), parent.0, name.as_bytes(), mode, umask, flags)
        {
            Ok((attr, opened)) => {
                let (mode, id) = self.choose_mode(
                    opened.fh,
                    attr.ino,
                    None,
                    flags & libc::O_DIRECT != 0,
                    |_| Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
                );
                let flags = self.open_flags(attr.ino, &attr, mode);
                let ttl = self.ttl(attr.ino);
                let (attr, fh) = (file_attr(&attr), FileHandle(opened.fh));
                match id {
                    Some(id) => {
                        reply.created_passthrough(ttl, &attr, Generation(0), fh, flags, &id)
                    }
                    None => reply.created(ttl, &attr, Generation(0), fh, flags),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// No file here is a terminal or takes device controls. ENOTTY is what `isatty()` and
    /// `ioctl()` expect for such a file; fuser's default answer (ENOSYS, with a warning per
    /// call) filled logs with three lines for every `isatty()` a client made.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
}

/// Registers with `fs`'s index a listener for keys changed outside the filesystem (the
/// command line through the control socket, revalidation of a shared store) and starts the
/// thread that tells the kernel to forget their names, attributes and pages (see `inval`).
/// Notifications are sent from that thread, never inside a request: `inval_entry` waits for
/// the directory's lock, which a request in progress may hold. The thread ends when the index
/// (and with it the listener) is dropped.
fn start_invalidator(fs: &Arc<DsFs>, notifier: &Arc<OnceLock<Notifier>>) {
    use crate::index::changes::{Changed, Listings};
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Changed)>();
    let tx = parking_lot::Mutex::new(tx);
    let listening = fs
        .store()
        .index()
        .listen_for_changes(Box::new(move |seq, changed| {
            let changed = Changed {
                keys: changed.keys.clone(),
                listings: Listings {
                    entries: changed.listings.entries.clone(),
                },
            };
            // The receiver is gone only when the thread ended: nothing left to tell.
            let _ = tx.lock().send((seq, changed));
        }));
    if !listening {
        return;
    }
    let weak = Arc::downgrade(fs);
    let notifier = notifier.clone();
    let spawned = std::thread::Builder::new()
        .name("dsfs-inval".into())
        .spawn(move || {
            while let Ok((seq, changed)) = rx.recv() {
                let Some(fs) = weak.upgrade() else { return };
                let Some(n) = notifier.get() else {
                    fs.store().index().changes_handled(seq);
                    continue;
                };
                let stale = fs.stale_of_change(&changed);
                log::debug!(
                    "{:?} changed outside the filesystem: invalidating {stale:?}",
                    changed.keys
                );
                for (dir, name) in &stale.entries {
                    if let Err(e) = n.inval_entry(INodeNo(*dir), OsStr::from_bytes(name)) {
                        log::debug!("invalidating entry {name:?} of {dir}: {e}");
                    }
                }
                // An inode's pages: a file's content, or a directory's cached listing.
                for ino in stale.inodes {
                    if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                        log::debug!("invalidating inode {ino}: {e}");
                    }
                }
                fs.store().index().changes_handled(seq);
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "no invalidation thread ({e}): changes made beside the mount show after the timeouts"
        );
    }
}

/// Replies to a request that returns nothing but success or an errno.
fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// The getxattr/listxattr size protocol: size 0 asks for the length; a short buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
