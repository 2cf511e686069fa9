//! Extended attributes.

use super::ipfs;
use super::types::{Ino, XATTR_MAX};
use super::{DsFs, FsError, FsResult, idx_err, now_ts};
use crate::index::node::Timestamp;
use crate::index::{IndexErrorKind, NodeKind};

impl DsFs {
    /// Sets an extended attribute (`XATTR_CREATE`/`XATTR_REPLACE` honoured).
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.refuse_virtual(ino)?;
        refuse_unsupported_xattr(name)?;
        self.check_writable()?;
        refuse_computed_xattr(name)?;
        self.check_room_for((name.len() + value.len()) as u64)?;
        let name = xattr_name(name)?;
        if value.len() > XATTR_MAX {
            return Err(FsError::TooBig);
        }
        let id = Ino(ino).node();
        self.index
            .write(|tx| {
                let exists = tx.xattr(id, &name)?.is_some();
                if flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(idx_err(IndexErrorKind::AlreadyExists, "attribute exists"));
                }
                if flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(idx_err(IndexErrorKind::NotFound, "no such attribute"));
                }
                tx.set_xattr(id, &name, Some(value))?;
                let mut n = tx.node_required(id)?;
                n.ctime = now_ts();
                tx.put_node(id, &n)
            })
            .map_err(|e| match e.kind() {
                IndexErrorKind::NotFound => FsError::NoData,
                _ => e.into(),
            })
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        refuse_unsupported_xattr(name)?;
        if ipfs::is_virtual(ino) {
            return self.virtual_getxattr(ino, name);
        }
        if name == CID_XATTR.as_bytes() {
            return self.ipfs_cid(ino).map(String::into_bytes);
        }
        let name = xattr_name(name)?;
        self.node(Ino(ino).node())?;
        self.index
            .xattr(Ino(ino).node(), &name)?
            .ok_or(FsError::NoData)
    }

    /// The NUL-separated list of extended attribute names.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if ipfs::is_virtual(ino) {
            return self.virtual_listxattr(ino);
        }
        self.node(Ino(ino).node())?;
        let mut out = Vec::new();
        for n in self.index.xattr_names(Ino(ino).node())? {
            if n == CID_CACHE || is_unsupported_xattr(n.as_bytes()) {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.refuse_virtual(ino)?;
        refuse_unsupported_xattr(name)?;
        self.check_writable()?;
        refuse_computed_xattr(name)?;
        let name = xattr_name(name)?;
        let id = Ino(ino).node();
        let removed = self.index.write(|tx| {
            let removed = tx.set_xattr(id, &name, None)?;
            if removed {
                let mut n = tx.node_required(id)?;
                n.ctime = now_ts();
                tx.put_node(id, &n)?;
            }
            Ok(removed)
        })?;
        if removed {
            Ok(())
        } else {
            Err(FsError::NoData)
        }
    }
}

/// The extended attribute that holds a file's IPFS CID (read-only, not listed).
pub const CID_XATTR: &str = "user.ipfs.cid";

impl DsFs {
    /// The CID `ipfs add` (default settings) gives the committed content of file `ino`:
    /// computed by one streaming read on first ask, then kept while the file's mtime and size
    /// stay the same (every commit of a write changes the mtime). The value is read by key
    /// under a shared subtree guard on the file, so a rename of it or of a directory above it
    /// waits for the read instead of moving the value away in the middle (see `subtree.rs`).
    fn ipfs_cid(&self, ino: u64) -> FsResult<String> {
        let _below = self.subtrees.shared(&self.index, &[Ino(ino).node()])?;
        let n = self.node(Ino(ino).node())?;
        let is_value = Ino(ino).is_dir_value();
        if !(n.kind == NodeKind::File || is_value && n.kind == NodeKind::Dir) {
            return Err(FsError::NoData);
        }
        let Some(size) = n.value else {
            return Err(FsError::NoData);
        };
        if let Some((mtime, csize, cid)) = self.cids.lock().get(&ino)
            && *mtime == n.mtime
            && *csize == size
        {
            return Ok(cid.clone());
        }
        let id = Ino(ino).node();
        let stamp = format!("{} {} {size} ", n.mtime.secs, n.mtime.nanos);
        if let Some(cached) = self.index.xattr(id, CID_CACHE)?
            && let Some(cid) = String::from_utf8(cached)
                .ok()
                .and_then(|c| c.strip_prefix(&stamp).map(str::to_string))
        {
            self.cids.lock().insert(ino, (n.mtime, size, cid.clone()));
            return Ok(cid);
        }
        let key = self.key_of(ino)?;
        let cid = if self.options.ipfs_blocks && !self.options.read_only {
            // Asked before the block writer got to the file: write the blocks now, so that
            // the CID just read is readable under `/.ipfs` at once.
            super::blocks::import_with_blocks(
                self.store.as_ref(),
                self.backend.as_ref(),
                &key,
                size,
            )
            .map_err(FsError::store)?
        } else {
            crate::unixfs::import_value(
                self.backend.as_ref(),
                &key,
                size,
                crate::unixfs::ImportOptions::default(),
                &mut crate::unixfs::Discard,
            )
            .map_err(FsError::store)?
            .cid
            .to_string()
        };
        self.cids.lock().insert(ino, (n.mtime, size, cid.clone()));
        if !self.options.read_only {
            record_cid(&self.index, id, n.mtime, size, &cid);
        }
        Ok(cid)
    }
}

/// Keeps `cid` in the index as the CID of node `id` with this (mtime, size), so that a remount
/// does not read the file again. Losing it costs only a recomputation, so a failure is a log
/// line.
pub(super) fn record_cid(
    index: &crate::index::Index,
    id: crate::index::NodeId,
    mtime: Timestamp,
    size: u64,
    cid: &str,
) {
    let record = format!("{} {} {size} {cid}", mtime.secs, mtime.nanos).into_bytes();
    if let Err(e) = index.write(|tx| {
        tx.set_xattr(id, CID_CACHE, Some(&record))?;
        Ok(())
    }) {
        log::debug!("keeping the CID of node {id:?} in the index failed: {e}");
    }
}

/// The index's record of a file's CID (`"<mtime secs> <mtime nanos> <size> <CID>"`), kept among
/// its xattrs under a name without a namespace prefix. The kernel passes every name to a FUSE
/// filesystem, so such names are refused (`is_unsupported_xattr`): no program can set or read
/// it, and `listxattr` leaves it out.
const CID_CACHE: &str = "dsfs.cid";

/// [`CID_XATTR`] follows the content and cannot be set or removed.
fn refuse_computed_xattr(name: &[u8]) -> FsResult<()> {
    if name == CID_XATTR.as_bytes() {
        return Err(FsError::NotPermitted(format!(
            "{CID_XATTR} is computed from the file's content"
        )));
    }
    Ok(())
}

/// Attribute names dsfs does not support, as a Linux filesystem without them answers
/// (`EOPNOTSUPP`, like ext4 mounted `noacl` or a kernel without SELinux): every `system.*`
/// name (POSIX ACLs, which the kernel would not enforce on a FUSE mount that does not take
/// them over, so storing one would promise protection that does not exist) and
/// `security.selinux` (labels of FUSE mounts come from the policy, not from the file).
///
/// The answer matters for speed: `ls -l` asks every file for `security.selinux` and
/// `system.posix_acl_access`, and the kernel caches no xattr answer of a FUSE file, so
/// "no such attribute" (`ENODATA`) costs two round trips per file. `EOPNOTSUPP` tells `ls`
/// (coreutils remembers it per device) to stop asking.
///
/// Names outside the `user.`, `trusted.` and `security.` namespaces are refused the same way,
/// as every Linux filesystem refuses them: stored, they could not be copied off the mount
/// (`cp -a`, `rsync -X`), and one of them is where dsfs keeps computed CIDs (`CID_CACHE`).
fn is_unsupported_xattr(name: &[u8]) -> bool {
    let known = [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| name.starts_with(p));
    !known || name == b"security.selinux"
}

fn refuse_unsupported_xattr(name: &[u8]) -> FsResult<()> {
    if is_unsupported_xattr(name) {
        return Err(FsError::NotSupported(format!(
            "dsfs does not support the extended attribute {}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

fn xattr_name(name: &[u8]) -> FsResult<String> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    String::from_utf8(name.to_vec()).map_err(|_| FsError::BadName)
}
