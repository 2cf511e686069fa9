//! Dropping a file's privileges when it is changed: the daemon's half of the kernel's
//! `FUSE_HANDLE_KILLPRIV_V2` protocol.
//!
//! Without that protocol the kernel decides itself, before every write, whether the file
//! carries privileges to drop: it asks for the `security.capability` xattr (one GETXATTR round
//! trip per `write(2)`, since the kernel caches no xattr answers for FUSE) and sends a SETATTR
//! with the new mode when setuid or setgid must go. With the protocol the kernel marks the
//! superblock "no security checks needed once an inode was found clean" (`SB_NOSEC`), so it
//! asks once per inode and attribute refresh instead of once per write, and leaves the
//! dropping to the daemon: a WRITE from a caller without `CAP_FSETID` carries
//! `FUSE_WRITE_KILL_SUIDGID`, and a change of owner asks for it unconditionally.
//!
//! What is dropped is what Linux drops on a local filesystem: setuid always, setgid when the
//! group may execute (without group execute, setgid means mandatory locking and stays), and a
//! `security.capability` attribute.

use super::types::Ino;
use super::{DsFs, FsResult, now_ts};
use crate::index::NodeKind;

/// The xattr holding file capabilities, dropped with setuid.
const CAPABILITY_XATTR: &str = "security.capability";

/// The mode `mode` becomes when a file loses its privileges.
pub(super) fn without_setid(mode: u32) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if m & libc::S_IXGRP != 0 {
        m &= !libc::S_ISGID;
    }
    m
}

impl DsFs {
    /// Drops the privileges of regular file `ino` (setuid, setgid with group execute, file
    /// capabilities), as a write by an unprivileged caller must. Costs two index reads (the node
    /// and the capability xattr) when there is nothing to drop, which is the common case. Returns whether anything was dropped
    /// (the kernel's cached attributes are then stale).
    pub fn drop_privileges(&self, ino: u64) -> FsResult<bool> {
        self.refuse_virtual(ino)?;
        let id = Ino(ino).node();
        let n = self.node(id)?;
        if n.kind != NodeKind::File {
            return Ok(false);
        }
        let mode_changes = without_setid(n.mode) != n.mode;
        let has_caps = self.index.xattr(id, CAPABILITY_XATTR)?.is_some();
        if !mode_changes && !has_caps {
            return Ok(false);
        }
        self.check_writable()?;
        self.index.write(|tx| {
            let mut n = tx.node_required(id)?;
            n.mode = without_setid(n.mode);
            tx.set_xattr(id, CAPABILITY_XATTR, None)?;
            n.ctime = now_ts();
            tx.put_node(id, &n)
        })?;
        log::debug!("inode {ino}: privileges dropped on change");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::without_setid;

    #[test]
    fn setgid_without_group_execute_stays() {
        assert_eq!(without_setid(0o4755), 0o755);
        assert_eq!(without_setid(0o2755), 0o755);
        assert_eq!(without_setid(0o6755), 0o755);
        assert_eq!(without_setid(0o2745), 0o2745);
        assert_eq!(without_setid(0o6745), 0o2745);
        assert_eq!(without_setid(0o1777), 0o1777);
    }
}
