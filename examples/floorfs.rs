//! floorfs: a null FUSE filesystem, the bench's measure of the FUSE floor.
//!
//! It keeps its whole tree in memory (a hash map of names per directory, file contents in a
//! `Vec`), does no I/O and answers every request at once, so that what a job costs on it is
//! the cost of the FUSE requests alone: the kernel's work, the `/dev/fuse` round trips and
//! fuser's dispatch. It mounts the way `dsfs mount` does: the same fuser version, worker
//! thread count (dsfs's default, or `--threads`), `default_permissions`, owner-only access,
//! one `/dev/fuse` clone per worker, the same init capabilities where they matter for
//! metadata and small-file jobs (readdirplus, parallel directory operations, kill-privileges
//! v2, 1 MiB writes), the same entry and attribute timeouts, and the same answers that save
//! round trips (`FOPEN_NOFLUSH` on read-only opens, `EOPNOTSUPP` for `system.*` and
//! `security.selinux` xattrs). Unlike dsfs it answers every open with `FOPEN_KEEP_CACHE`: it
//! is the only writer of its files, so the kernel's pages are always current.
//!
//! An example rather than a binary of the package, so that `cargo install` of dsfs does not
//! install it: `cargo build --release --example floorfs` builds
//! `target/release/examples/floorfs`. It stays in the foreground until the mount point is
//! unmounted (`fusermount3 -u MOUNTPOINT`); `RUST_LOG=fuser=debug` logs every request.
//! `benches/fio/run.sh --targets floor,...` mounts it as the `floor` target.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

/// A null FUSE filesystem (everything in memory, every request answered at once) mounted the
/// way `dsfs mount` mounts, to measure what the FUSE requests alone cost.
#[derive(Parser, Debug)]
#[command(name = "floorfs")]
struct Args {
    /// Where to mount (an empty directory). Unmount with `fusermount3 -u MOUNTPOINT`.
    mountpoint: PathBuf,
    /// FUSE worker threads (default: dsfs's default, max(cores, 4) up to 8).
    #[arg(long)]
    threads: Option<usize>,
    /// Entry and attribute timeout in seconds (default: dsfs's, for files only it writes).
    #[arg(long)]
    ttl: Option<f64>,
}

/// Offsets 1 and 2 are `.` and `..`; entries get cookies from here on.
const FIRST_COOKIE: u64 = 3;

enum Body {
    /// Name -> (inode, cookie), and cookie -> name in creation order, so that a listing
    /// resumed at an offset neither skips nor repeats entries when others are removed.
    Dir {
        names: HashMap<OsString, (u64, u64)>,
        order: BTreeMap<u64, OsString>,
        next_cookie: u64,
        parent: u64,
    },
    File(Vec<u8>),
}

struct Node {
    attr: FileAttr,
    /// The kernel's references (entries it was given minus those it forgot).
    lookups: u64,
    body: Body,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

struct Floor {
    tree: Mutex<Tree>,
    ttl: Duration,
}

fn err(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn new_attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Tree {
    fn new(uid: u32, gid: u32) -> Tree {
        let root = Node {
            attr: new_attr(1, FileType::Directory, 0o755, uid, gid),
            lookups: 1,
            body: Body::Dir {
                names: HashMap::new(),
                order: BTreeMap::new(),
                next_cookie: FIRST_COOKIE,
                parent: 1,
            },
        };
        Tree {
            nodes: HashMap::from([(1, root)]),
            next_ino: 2,
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        match &self.nodes.get(&parent).ok_or(Errno::ENOENT)?.body {
            Body::Dir { names, .. } => names.get(name).map(|e| e.0).ok_or(Errno::ENOENT),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Gives the kernel a reference to `ino` and returns its attributes.
    fn entry(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.lookups += 1;
        Ok(node.attr)
    }

    fn insert(&mut self, parent: u64, name: &OsStr, mut node: Node) -> Result<FileAttr, Errno> {
        let ino = self.next_ino;
        let now = SystemTime::now();
        let is_dir = matches!(node.body, Body::Dir { .. });
        let dir = self.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        let Body::Dir {
            names,
            order,
            next_cookie,
            ..
        } = &mut dir.body
        else {
            return Err(Errno::ENOTDIR);
        };
        if names.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        names.insert(name.to_owned(), (ino, *next_cookie));
        order.insert(*next_cookie, name.to_owned());
        *next_cookie += 1;
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        if is_dir {
            dir.attr.nlink += 1;
        }
        self.next_ino += 1;
        node.attr.ino = INodeNo(ino);
        node.lookups = 1;
        let attr = node.attr;
        self.nodes.insert(ino, node);
        Ok(attr)
    }

    /// Takes `name` out of `parent` (its node stays until the kernel forgets it).
    fn detach(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let now = SystemTime::now();
        let dir = self.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        let Body::Dir { names, order, .. } = &mut dir.body else {
            return Err(Errno::ENOTDIR);
        };
        let (ino, cookie) = names.remove(name).ok_or(Errno::ENOENT)?;
        order.remove(&cookie);
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        Ok(ino)
    }

    /// Unlinks or removes the directory `name` of `parent`.
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (&node.body, dir) {
            (Body::Dir { names, .. }, true) if !names.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.detach(parent, name)?;
        if dir && let Some(p) = self.nodes.get_mut(&parent) {
            p.attr.nlink -= 1;
        }
        self.drop_link(ino);
        Ok(())
    }

    fn drop_link(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.attr.nlink = 0;
            node.attr.ctime = SystemTime::now();
            if node.lookups == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && node.attr.nlink == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        let moving_dir = matches!(self.nodes[&ino].body, Body::Dir { .. });
        // A directory may not move into itself or below itself.
        let mut up = newparent;
        while moving_dir && up != 1 {
            if up == ino {
                return Err(Errno::EINVAL);
            }
            up = match &self.nodes.get(&up).ok_or(Errno::ENOENT)?.body {
                Body::Dir { parent, .. } => *parent,
                Body::File(_) => return Err(Errno::ENOTDIR),
            };
        }
        match self.child(newparent, newname) {
            Ok(old) if old == ino => return Ok(()),
            Ok(_) if noreplace => return Err(Errno::EEXIST),
            Ok(old) => {
                let target_dir = matches!(self.nodes[&old].body, Body::Dir { .. });
                match (moving_dir, target_dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => self.remove(newparent, newname, target_dir)?,
                }
            }
            Err(e) if e == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        self.detach(parent, name)?;
        let node = self.nodes.remove(&ino).ok_or(Errno::ENOENT)?;
        let lookups = node.lookups;
        let attr = self.insert(newparent, newname, node)?;
        // `insert` numbered it anew: give it its old number back.
        let mut node = self.nodes.remove(&attr.ino.0).ok_or(Errno::ENOENT)?;
        node.attr.ino = INodeNo(ino);
        node.lookups = lookups;
        node.attr.ctime = SystemTime::now();
        if let Body::Dir { parent, .. } = &mut node.body {
            *parent = newparent;
        }
        self.nodes.insert(ino, node);
        let dir = self.nodes.get_mut(&newparent).ok_or(Errno::ENOENT)?;
        if let Body::Dir { names, .. } = &mut dir.body
            && let Some(e) = names.get_mut(newname)
        {
            e.0 = ino;
        }
        if moving_dir && parent != newparent {
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.attr.nlink -= 1;
            }
        } else if moving_dir && let Some(p) = self.nodes.get_mut(&newparent) {
            // `insert` counted the moved directory's `..` in its (unchanged) parent again.
            p.attr.nlink -= 1;
        }
        Ok(())
    }
}

impl Floor {
    fn new(uid: u32, gid: u32, ttl: Duration) -> Floor {
        Floor {
            tree: Mutex::new(Tree::new(uid, gid)),
            ttl,
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        body: Body,
    ) -> Result<FileAttr, Errno> {
        let kind = match body {
            Body::Dir { .. } => FileType::Directory,
            Body::File(_) => FileType::RegularFile,
        };
        let perm = (mode & !umask & 0o7777) as u16;
        let node = Node {
            attr: new_attr(0, kind, perm, req.uid(), req.gid()),
            lookups: 0,
            body,
        };
        self.tree.lock().insert(parent.0, name, node)
    }
}

fn empty_dir(parent: u64) -> Body {
    Body::Dir {
        names: HashMap::new(),
        order: BTreeMap::new(),
        next_cookie: FIRST_COOKIE,
        parent,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

fn blocks(size: u64) -> u64 {
    size.div_ceil(512)
}

impl Filesystem for Floor {
    /// What every dsfs session asks of the kernel (dsfs's own function): passthrough, the
    /// writeback cache and mmap of direct-I/O handles, which dsfs adds, do not apply to a
    /// filesystem without backing files or direct I/O.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        dsfs::fs::fuse::ask_session_capabilities(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut tree = self.tree.lock();
        match tree.child(parent.0, name).and_then(|ino| tree.entry(ino)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.lock().nodes.get(&ino.0) {
            Some(node) => reply.attr(&self.ttl, &node.attr),
            None => reply.error(Errno::ENOENT),
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
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree.lock();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let now = SystemTime::now();
        if let Some(size) = size {
            let Body::File(data) = &mut node.body else {
                return reply.error(Errno::EISDIR);
            };
            data.resize(usize::try_from(size).unwrap_or(usize::MAX), 0);
            node.attr.size = size;
            node.attr.blocks = blocks(size);
            node.attr.mtime = now;
        }
        if let Some(mode) = mode {
            node.attr.perm = (mode & 0o7777) as u16;
        }
        // Kill-privileges v2: a chown by anyone, or a truncate by others than root, drops
        // setuid and setgid (setgid only with group execute), as dsfs does.
        let killpriv = uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0);
        if killpriv && mode.is_none() {
            node.attr.perm &= !0o4000;
            if node.attr.perm & 0o010 != 0 {
                node.attr.perm &= !0o2000;
            }
        }
        if let Some(uid) = uid {
            node.attr.uid = uid;
        }
        if let Some(gid) = gid {
            node.attr.gid = gid;
        }
        if let Some(t) = atime {
            node.attr.atime = time(t);
        }
        if let Some(t) = mtime {
            node.attr.mtime = time(t);
        }
        node.attr.ctime = now;
        reply.attr(&self.ttl, &node.attr);
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
        match self.make(req, parent, name, mode, umask, empty_dir(parent.0)) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree.lock().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree.lock().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .tree
            .lock()
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.lock().nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::File(_)) => {}
            Some(Body::Dir { .. }) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        }
        let mut fopen = FopenFlags::FOPEN_KEEP_CACHE;
        if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        reply.opened(FileHandle(0), fopen);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.lock().nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::File(data)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Body::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut tree = self.tree.lock();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Body::File(content) = &mut node.body else {
            return reply.error(Errno::EISDIR);
        };
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
            .filter(|&e| e <= isize::MAX as usize)
        else {
            return reply.error(Errno::EFBIG);
        };
        let start = end - data.len();
        if content.len() < end {
            content.resize(end, 0);
        }
        content[start..end].copy_from_slice(data);
        node.attr.size = content.len() as u64;
        node.attr.blocks = blocks(node.attr.size);
        let now = SystemTime::now();
        node.attr.mtime = now;
        node.attr.ctime = now;
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            node.attr.perm &= !0o6000;
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.lock().nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::Dir { .. }) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(Body::File(_)) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
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
        let tree = self.tree.lock();
        let Some(Body::Dir {
            names,
            order,
            parent,
            ..
        }) = tree.nodes.get(&ino.0).map(|n| &n.body)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(1, ino.0, "."), (2, *parent, "..")];
        for (cookie, i, name) in dots.into_iter().filter(|d| d.0 > offset) {
            if reply.add(INodeNo(i), cookie, FileType::Directory, name) {
                return reply.ok();
            }
        }
        for (&cookie, name) in order.range(offset.max(FIRST_COOKIE - 1) + 1..) {
            let child = names[name].0;
            let kind = tree
                .nodes
                .get(&child)
                .map_or(FileType::RegularFile, |n| n.attr.kind);
            if reply.add(INodeNo(child), cookie, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut tree = self.tree.lock();
        let tree = &mut *tree;
        let Some(Body::Dir {
            names,
            order,
            parent,
            ..
        }) = tree.nodes.get(&ino.0).map(|n| &n.body)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut given = Vec::new();
        let mut full = false;
        // `.` and `..` take no reference (the kernel does not keep them).
        for (cookie, i, name) in [(1, ino.0, "."), (2, *parent, "..")] {
            if cookie > offset && !full {
                let attr = tree.nodes.get(&i).map(|n| n.attr);
                if let Some(attr) = attr {
                    full = reply.add(INodeNo(i), cookie, name, &self.ttl, &attr, Generation(0));
                }
            }
        }
        if !full {
            for (&cookie, name) in order.range(offset.max(FIRST_COOKIE - 1) + 1..) {
                let child = names[name].0;
                let Some(attr) = tree.nodes.get(&child).map(|n| n.attr) else {
                    continue;
                };
                if reply.add(
                    INodeNo(child),
                    cookie,
                    name,
                    &self.ttl,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                given.push(child);
            }
        }
        for child in given {
            if let Some(n) = tree.nodes.get_mut(&child) {
                n.lookups += 1;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.lock().nodes.len() as u64;
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            files + (1 << 20),
            1 << 20,
            4096,
            255,
            4096,
        );
    }

    /// As dsfs answers: `system.*` (ACLs) and `security.selinux` are unsupported, which `ls`
    /// remembers; every other name is simply absent (floorfs stores no xattrs).
    fn getxattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        let name = name.as_encoded_bytes();
        if name.starts_with(b"system.") || name == b"security.selinux" {
            reply.error(err(libc::EOPNOTSUPP));
        } else {
            reply.error(Errno::ENODATA);
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent, name, mode, umask, Body::File(Vec::new())) {
            Ok(attr) => reply.created(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// The session options `dsfs mount` uses by default (see `src/cli/mount.rs`).
fn config(threads: usize) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("floorfs".to_owned()),
        MountOption::Subtype("floorfs".to_owned()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::Owner;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

fn mount(
    mountpoint: &std::path::Path,
    threads: usize,
    ttl: Duration,
) -> std::io::Result<Session<Floor>> {
    let meta = std::fs::metadata(mountpoint)?;
    let floor = Floor::new(meta.uid(), meta.gid(), ttl);
    Session::new(floor, mountpoint, &config(threads))
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| dsfs::cli::mount::MountOptions::default().threads)
        .clamp(1, 64);
    let ttl = match args.ttl.map(Duration::try_from_secs_f64) {
        None => dsfs::fs::fuse::PRIVATE_TTL,
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("floorfs: --ttl: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let session = match mount(&args.mountpoint, threads, ttl) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floorfs: mounting {}: {e}", args.mountpoint.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    log::info!(
        "mounted at {} ({threads} threads, ttl {ttl:?})",
        args.mountpoint.display()
    );
    match session.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floorfs: session ended: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::PermissionsExt;

    fn mounted(mnt: &std::path::Path) -> bool {
        let want = mnt.to_str().unwrap().replace(' ', "\\040");
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    }

    /// A floorfs mount that is unmounted (lazily if it is busy) when dropped, also when an
    /// assertion fails while it is mounted.
    struct Mounted {
        mnt: PathBuf,
        session: Option<fuser::BackgroundSession>,
    }

    impl Mounted {
        fn unmount(mut self) {
            let session = self.session.take().unwrap();
            session.umount_and_join().unwrap();
            assert!(!mounted(&self.mnt), "still mounted");
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            if self.session.is_some() && mounted(&self.mnt) {
                let _ = std::process::Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mnt)
                    .status();
            }
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Mounts floorfs in a temporary directory and runs the operations the bench's jobs use
    /// (and a rename), so that the `floor` bench target cannot rot. Dropping the session
    /// (also when an assertion fails) unmounts.
    #[test]
    fn create_write_read_readdir_rename_unlink_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let session = mount(&mnt, 2, Duration::from_secs(1))
            .unwrap()
            .spawn()
            .unwrap();
        let session = Mounted {
            mnt: mnt.clone(),
            session: Some(session),
        };
        assert!(mounted(&mnt), "not mounted");

        // create, write, read back (also at an offset past a hole), size and mode
        let a = mnt.join("a");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&a)
            .unwrap();
        f.write_all(b"hello floor").unwrap();
        f.seek(SeekFrom::Start(8192)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let data = std::fs::read(&a).unwrap();
        assert_eq!(data.len(), 8196);
        assert_eq!(&data[..11], b"hello floor");
        assert!(data[11..8192].iter().all(|&b| b == 0));
        assert_eq!(&data[8192..], b"tail");
        let mut part = [0u8; 5];
        let mut f = std::fs::File::open(&a).unwrap();
        f.seek(SeekFrom::Start(6)).unwrap();
        f.read_exact(&mut part).unwrap();
        assert_eq!(&part, b"floor");
        drop(f);
        assert!(
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&a)
                .is_err(),
            "O_EXCL create of an existing name succeeded"
        );
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o7777, 0o600);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&a)
            .unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 0);

        // directories and listings (more entries than one READDIRPLUS reply holds)
        std::fs::create_dir(mnt.join("d")).unwrap();
        for i in 0..300 {
            std::fs::write(mnt.join("d").join(format!("f{i:03}")), i.to_string()).unwrap();
        }
        let listed = names(&mnt.join("d"));
        assert_eq!(listed.len(), 300);
        assert_eq!(listed[299], "f299");
        assert_eq!(std::fs::read_to_string(mnt.join("d/f123")).unwrap(), "123");
        assert_eq!(names(&mnt), ["a", "d"]);
        assert_eq!(std::fs::metadata(&mnt).unwrap().nlink(), 3);

        // rename: within a directory, across directories, over an existing file, and back
        std::fs::rename(&a, mnt.join("b")).unwrap();
        assert!(!a.exists());
        std::fs::write(mnt.join("b"), b"moved").unwrap();
        std::fs::rename(mnt.join("b"), mnt.join("d/f000")).unwrap();
        assert_eq!(std::fs::read(mnt.join("d/f000")).unwrap(), b"moved");
        assert_eq!(names(&mnt.join("d")).len(), 300);
        std::fs::rename(mnt.join("d"), mnt.join("e")).unwrap();
        assert_eq!(std::fs::read(mnt.join("e/f000")).unwrap(), b"moved");
        std::fs::rename(mnt.join("e/f000"), mnt.join("a")).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"moved");
        std::fs::create_dir(mnt.join("e/sub")).unwrap();
        let into_itself = std::fs::rename(mnt.join("e"), mnt.join("e/sub/x")).unwrap_err();
        assert_eq!(into_itself.raw_os_error(), Some(libc::EINVAL));
        std::fs::remove_dir(mnt.join("e/sub")).unwrap();

        // unlink while open: the open file stays readable, the name is gone
        let held = std::fs::File::open(&a).unwrap();
        std::fs::remove_file(&a).unwrap();
        assert!(!a.exists());
        let mut back = Vec::new();
        (&held).read_to_end(&mut back).unwrap();
        assert_eq!(back, b"moved");
        drop(held);

        // removing entries while listing them (as rm -r does): each is listed exactly once
        assert!(
            std::fs::remove_dir(mnt.join("e")).is_err(),
            "rmdir of a non-empty directory"
        );
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(mnt.join("e")).unwrap() {
            let entry = entry.unwrap();
            std::fs::remove_file(entry.path()).unwrap();
            removed.push(entry.file_name().to_string_lossy().into_owned());
        }
        assert_eq!(removed.len(), 299);
        std::fs::remove_dir(mnt.join("e")).unwrap();
        assert!(names(&mnt).is_empty());
        assert_eq!(std::fs::metadata(&mnt).unwrap().nlink(), 2);

        session.unmount();
    }
}
