//! `/.ipfs`: every UnixFS file or directory whose blocks are in the store, read-only, by CID.
//!
//! `/.ipfs/<CID>` is looked up on demand: the name is parsed as a CID (v0 or v1, any multibase
//! the `cid` crate reads), the root block is fetched from the store's `/blocks` (Kubo's flatfs
//! layout), checked against its hash and decoded. `/.ipfs` itself is not listed in `/` and lists
//! nothing (like a `.snapshot` directory): names are reached by asking for them. A real entry
//! named `.ipfs` in the root wins over the virtual one.
//!
//! Virtual inodes carry `VIRTUAL` and index a table that lives as long as the mount (one small
//! entry per CID looked up). Reads walk the DAG to the leaves that hold the asked range only; a
//! block whose bytes do not match its CID is EIO (with a log line), never returned. Everything
//! under `/.ipfs` refuses changes with EROFS.

use std::collections::HashMap;
use std::sync::Arc;

use cid::Cid;
use parking_lot::Mutex;

use super::names::component_to_name;
use super::types::{Attr, DirItem, FileKind, Opened};
use super::{DsFs, FsError, FsResult};
use crate::datastore::{Error, ErrorKind};
use crate::hamt;
use crate::index::ROOT;
use crate::unixfs::{self, NodeCache};

/// The name of the virtual directory in the root of every mount.
pub const IPFS_DIR: &str = ".ipfs";

/// The bit that marks a virtual inode or file handle (index node ids and handles never reach it).
pub(super) const VIRTUAL: u64 = 1 << 62;

/// The inode of `/.ipfs`.
const IPFS_ROOT: u64 = VIRTUAL;

/// UnixFS node types, as the UnixFS protobuf numbers them.
const RAW: u64 = 0;
const DIRECTORY: u64 = 1;
const FILE: u64 = 2;
const METADATA: u64 = 3;
const SYMLINK: u64 = 4;
const HAMT_SHARD: u64 = 5;

/// What a virtual inode is.
#[derive(Clone, Debug)]
enum Shape {
    /// A file of this many bytes.
    File(u64),
    /// A directory: its entries' names and CIDs, in link order.
    Dir(Arc<Vec<(String, Cid)>>),
    /// A HAMT-sharded directory: looked up by walking the buckets of one name; its full
    /// listing (shard order) is kept once a `readdir` has needed it.
    Shard(ShardList),
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// The entries of a sharded directory, once listed.
type ShardList = Arc<Mutex<Option<Arc<Vec<(String, Cid)>>>>>;

#[derive(Clone, Debug)]
struct VNode {
    cid: Cid,
    shape: Shape,
}

/// An open virtual file: its inode and the decoded nodes its reads reuse.
struct VHandle {
    ino: u64,
    cache: Mutex<NodeCache>,
}

/// The table of virtual inodes and handles.
#[derive(Default)]
pub(super) struct Virtual {
    by_cid: HashMap<Cid, u64>,
    nodes: HashMap<u64, VNode>,
    next_ino: u64,
    handles: HashMap<u64, Arc<VHandle>>,
    next_fh: u64,
}

/// Whether `ino` (or a file handle) is virtual.
pub(super) fn is_virtual(ino: u64) -> bool {
    ino & VIRTUAL != 0
}

fn store_err(e: Error) -> FsError {
    if e.kind() == ErrorKind::Corrupt {
        log::error!("/.ipfs: {e}");
    }
    FsError::store(e)
}

impl DsFs {
    /// Whether `name` in `parent` names `/.ipfs`.
    pub(super) fn names_ipfs_dir(parent: u64, name: &[u8]) -> bool {
        parent == ROOT && name == IPFS_DIR.as_bytes()
    }

    /// The attributes of `/.ipfs`.
    pub(super) fn ipfs_dir_attr(&self) -> FsResult<Attr> {
        self.virtual_attr(IPFS_ROOT, &Shape::Dir(Arc::new(Vec::new())))
    }

    /// Refuses a change to anything under `/.ipfs`.
    pub(super) fn refuse_virtual(&self, ino: u64) -> FsResult<()> {
        if is_virtual(ino) {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn virtual_attr(&self, ino: u64, shape: &Shape) -> FsResult<Attr> {
        let root = self.getattr(ROOT)?;
        let (kind, size, perm, nlink) = match shape {
            Shape::File(size) => (FileKind::File, *size, 0o444, 1),
            Shape::Dir(entries) => (FileKind::Dir, entries.len() as u64, 0o555, 2),
            Shape::Shard(list) => {
                let n = list.lock().as_ref().map_or(0, |l| l.len() as u64);
                (FileKind::Dir, n, 0o555, 2)
            }
            Shape::Symlink(target) => (FileKind::Symlink, target.len() as u64, 0o777, 1),
        };
        Ok(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            kind,
            perm,
            nlink,
            rdev: 0,
            ..root
        })
    }

    fn vnode(&self, ino: u64) -> FsResult<VNode> {
        self.virt
            .lock()
            .nodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// Fetches and decodes the root block of `cid` and gives it a virtual inode.
    fn virtual_inode(&self, cid: Cid) -> FsResult<(u64, VNode)> {
        let known = self.virt.lock().by_cid.get(&cid).copied();
        if let Some(ino) = known {
            return Ok((ino, self.vnode(ino)?));
        }
        // A CID whose root block is not here is a name that does not exist.
        let block = match unixfs::load_block(self.backend.as_ref(), &cid) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(FsError::NotFound),
            Err(e) => return Err(store_err(e)),
        };
        let node = unixfs::decode(&cid, &block).map_err(store_err)?;
        let shape = match node.kind {
            RAW | FILE => Shape::File(unixfs::file_size(&cid, &node).map_err(store_err)?),
            DIRECTORY => {
                let mut entries = Vec::with_capacity(node.links.len());
                for (child, name) in &node.links {
                    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                        return Err(store_err(Error::new(
                            ErrorKind::Corrupt,
                            format!("directory {cid} has an entry named {name:?}"),
                        )));
                    }
                    entries.push((name.clone(), *child));
                }
                Shape::Dir(Arc::new(entries))
            }
            SYMLINK => Shape::Symlink(node.data.clone()),
            HAMT_SHARD => Shape::Shard(Arc::default()),
            METADATA => {
                return Err(FsError::NotSupported(format!(
                    "{cid} is a UnixFS metadata node"
                )));
            }
            other => {
                return Err(store_err(Error::new(
                    ErrorKind::Corrupt,
                    format!("block {cid}: unknown UnixFS type {other}"),
                )));
            }
        };
        let mut virt = self.virt.lock();
        if let Some(ino) = virt.by_cid.get(&cid) {
            let ino = *ino;
            let vn = virt.nodes.get(&ino).cloned().ok_or(FsError::NotFound)?;
            return Ok((ino, vn));
        }
        virt.next_ino += 1;
        let ino = IPFS_ROOT | virt.next_ino;
        let vn = VNode { cid, shape };
        virt.by_cid.insert(cid, ino);
        virt.nodes.insert(ino, vn.clone());
        Ok((ino, vn))
    }

    /// The entries of the sharded directory `ino`, listed (every shard node fetched) the first
    /// time they are needed. The list's lock is not held while the shard is read.
    fn shard_entries(&self, ino: u64, list: &ShardList) -> FsResult<Arc<Vec<(String, Cid)>>> {
        if let Some(done) = list.lock().clone() {
            return Ok(done);
        }
        let cid = self.vnode(ino)?.cid;
        let entries = hamt::list(self.backend.as_ref(), &cid).map_err(store_err)?;
        for (name, _) in &entries {
            if name.contains('/') || name == "." || name == ".." {
                return Err(store_err(Error::new(
                    ErrorKind::Corrupt,
                    format!("directory {cid} has an entry named {name:?}"),
                )));
            }
        }
        let entries = Arc::new(entries);
        *list.lock() = Some(entries.clone());
        Ok(entries)
    }

    /// `lookup` in a virtual directory.
    pub(super) fn virtual_lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let cid = if parent == IPFS_ROOT {
            Cid::try_from(name).map_err(|_| FsError::NotFound)?
        } else {
            match self.vnode(parent)?.shape {
                Shape::Dir(entries) => match entries.iter().find(|(n, _)| n == name) {
                    Some((_, cid)) => *cid,
                    None => return Err(FsError::NotFound),
                },
                Shape::Shard(_) => {
                    let vn = self.vnode(parent)?;
                    let mut cache = NodeCache::default();
                    match hamt::find(self.backend.as_ref(), &mut cache, &vn.cid, name)
                        .map_err(store_err)?
                    {
                        Some(cid) => cid,
                        None => return Err(FsError::NotFound),
                    }
                }
                Shape::File(_) | Shape::Symlink(_) => return Err(FsError::NotDir),
            }
        };
        let (ino, vn) = self.virtual_inode(cid)?;
        self.virtual_attr(ino, &vn.shape)
    }

    /// `getattr` of a virtual inode.
    pub(super) fn virtual_getattr(&self, ino: u64) -> FsResult<Attr> {
        if ino == IPFS_ROOT {
            return self.ipfs_dir_attr();
        }
        let vn = self.vnode(ino)?;
        self.virtual_attr(ino, &vn.shape)
    }

    /// `readlink` of a virtual inode.
    pub(super) fn virtual_readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.vnode(ino)?.shape {
            Shape::Symlink(target) => Ok(target),
            Shape::File(_) | Shape::Dir(_) | Shape::Shard(_) => {
                Err(FsError::Invalid("not a symlink".into()))
            }
        }
    }

    /// `readdir` of a virtual directory: `/.ipfs` lists only `.` and `..`.
    pub(super) fn virtual_readdir(
        &self,
        ino: u64,
        offset: u64,
        limit: usize,
    ) -> FsResult<Vec<DirItem>> {
        let entries = if ino == IPFS_ROOT {
            Arc::new(Vec::new())
        } else {
            match self.vnode(ino)?.shape {
                Shape::Dir(entries) => entries,
                Shape::Shard(list) => self.shard_entries(ino, &list)?,
                Shape::File(_) | Shape::Symlink(_) => return Err(FsError::NotDir),
            }
        };
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirItem {
                ino,
                offset: 1,
                name: ".".into(),
                attr: self.virtual_getattr(ino)?,
            });
        }
        if offset < 2 {
            // The parent of a CID's directory is not known (many may link to it): `..` is
            // `/.ipfs`, whose parent is the root.
            let parent = if ino == IPFS_ROOT { ROOT } else { IPFS_ROOT };
            out.push(DirItem {
                ino: parent,
                offset: 2,
                name: "..".into(),
                attr: if parent == ROOT {
                    self.getattr(ROOT)?
                } else {
                    self.ipfs_dir_attr()?
                },
            });
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, (name, cid)) in entries.iter().enumerate().skip(skip) {
            if out.len() >= limit.max(1) {
                break;
            }
            let (child, vn) = self.virtual_inode(*cid)?;
            out.push(DirItem {
                ino: child,
                offset: i as u64 + 3,
                name: component_to_name(name),
                attr: self.virtual_attr(child, &vn.shape)?,
            });
        }
        Ok(out)
    }

    /// `open` of a virtual inode: read-only files only.
    pub(super) fn virtual_open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        match self.vnode(ino)?.shape {
            Shape::File(_) => {}
            Shape::Dir(_) | Shape::Shard(_) => return Err(FsError::IsDir),
            Shape::Symlink(_) => return Err(FsError::Invalid("open of a symlink".into())),
        }
        let mut virt = self.virt.lock();
        virt.next_fh += 1;
        let fh = VIRTUAL | virt.next_fh;
        virt.handles.insert(
            fh,
            Arc::new(VHandle {
                ino,
                cache: Mutex::new(NodeCache::default()),
            }),
        );
        Ok(Opened { fh, backing: None })
    }

    /// The handle `fh`, its file and the file's length.
    fn open_file(&self, fh: u64) -> FsResult<(Arc<VHandle>, VNode, u64)> {
        let handle = self
            .virt
            .lock()
            .handles
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let vn = self.vnode(handle.ino)?;
        match vn.shape {
            Shape::File(len) => Ok((handle, vn, len)),
            Shape::Dir(_) | Shape::Shard(_) | Shape::Symlink(_) => Err(FsError::BadHandle),
        }
    }

    /// `read` through a virtual file handle.
    pub(super) fn virtual_read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (handle, vn, len) = self.open_file(fh)?;
        if offset >= len {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (size as u64).min(len - offset) as usize];
        let mut cache = handle.cache.lock();
        let n = unixfs::read_at(self.backend.as_ref(), &mut cache, &vn.cid, offset, &mut buf)
            .map_err(store_err)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `lseek` through a virtual file handle: a UnixFS file has no holes.
    pub(super) fn virtual_lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let (_, _, len) = self.open_file(fh)?;
        let size = i64::try_from(len).map_err(|_| FsError::FileTooBig)?;
        if offset < 0 {
            return Err(FsError::Invalid("negative offset".into()));
        }
        match whence {
            libc::SEEK_DATA | libc::SEEK_HOLE if offset >= size => Err(FsError::NoSuchOffset),
            libc::SEEK_DATA | libc::SEEK_SET => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            libc::SEEK_END => Ok(size + offset),
            _ => Err(FsError::Invalid(format!("unsupported whence {whence}"))),
        }
    }

    /// `release` of a virtual file handle.
    pub(super) fn virtual_release(&self, fh: u64) -> FsResult<()> {
        match self.virt.lock().handles.remove(&fh) {
            Some(_) => Ok(()),
            None => Err(FsError::BadHandle),
        }
    }

    /// `getxattr` of a virtual inode: `user.ipfs.cid` is the CID it was reached by.
    pub(super) fn virtual_getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if ino != IPFS_ROOT && name == super::CID_XATTR.as_bytes() {
            return Ok(self.vnode(ino)?.cid.to_string().into_bytes());
        }
        Err(FsError::NoData)
    }

    /// `listxattr` of a virtual inode.
    pub(super) fn virtual_listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if ino == IPFS_ROOT {
            return Ok(Vec::new());
        }
        self.vnode(ino)?;
        let mut out = super::CID_XATTR.as_bytes().to_vec();
        out.push(0);
        Ok(out)
    }
}
