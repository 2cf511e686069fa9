//! Index nodes: what the index knows about one file, directory or symlink, and their on-disk
//! encoding (a small versioned little-endian record; see `docs/ARCHITECTURE.md`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{IndexError, IndexResult};

/// A node id. Stable for the life of the node; never reused within one index.
pub type NodeId = u64;

/// The root directory's id.
pub const ROOT: NodeId = 1;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: a key prefix. It may also hold a value of its own (see [`Node::value`]).
    Dir,
    /// A file: a key that holds a value.
    File,
    /// A symbolic link, kept only in the index.
    Symlink,
    /// A named pipe (kept only in the index; the kernel serves it).
    Fifo,
    /// A character device node (index only).
    CharDevice,
    /// A block device node (index only).
    BlockDevice,
    /// A Unix socket node (index only).
    Socket,
}

impl NodeKind {
    /// Whether nodes of this kind hold a datastore value of their own (files do; directories
    /// may; links and special files live only in the index).
    pub fn is_index_only(self) -> bool {
        !matches!(self, NodeKind::File | NodeKind::Dir)
    }

    fn to_byte(self) -> u8 {
        match self {
            NodeKind::Dir => 1,
            NodeKind::File => 2,
            NodeKind::Symlink => 3,
            NodeKind::Fifo => 4,
            NodeKind::CharDevice => 5,
            NodeKind::BlockDevice => 6,
            NodeKind::Socket => 7,
        }
    }

    fn from_byte(b: u8) -> IndexResult<NodeKind> {
        match b {
            1 => Ok(NodeKind::Dir),
            2 => Ok(NodeKind::File),
            3 => Ok(NodeKind::Symlink),
            4 => Ok(NodeKind::Fifo),
            5 => Ok(NodeKind::CharDevice),
            6 => Ok(NodeKind::BlockDevice),
            7 => Ok(NodeKind::Socket),
            _ => Err(IndexError::corrupt(format!("unknown node kind {b}"))),
        }
    }
}

/// A point in time with nanosecond precision, as the filesystem reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// Everything the index records about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// The directory this node's entry lives in (the root is its own parent).
    pub parent: NodeId,
    /// The entry's name in its parent: one key component. Empty for the root.
    pub name: String,
    /// The size of the value this node's key holds, if it holds one. Always `Some` for files;
    /// for directories, `Some` when the key both holds a value and has children.
    pub value: Option<u64>,
    /// A directory made explicitly (mkdir) rather than implied by a key below it. Implied
    /// directories vanish with their last child; explicit ones stay until removed.
    pub explicit: bool,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last metadata change.
    pub ctime: Timestamp,
    /// Number of subdirectories (for a directory's link count).
    pub subdirs: u32,
    /// The link target, for symlinks.
    pub target: Vec<u8>,
    /// The device number, for device nodes.
    pub rdev: u32,
    /// Names this node has (hard links); 1 unless linked. Directories count subdirectories
    /// instead (see [`Node::nlink`]).
    pub links: u32,
}

/// Default permission bits for new files and directories made from datastore keys.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Default permission bits for directories.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

const FORMAT_VERSION: u8 = 1;

impl Node {
    /// A node of `kind` named `name` in `parent`, owned by `uid:gid`, stamped now.
    pub fn new(kind: NodeKind, parent: NodeId, name: &str, mode: u32, uid: u32, gid: u32) -> Node {
        let now = Timestamp::now();
        Node {
            kind,
            parent,
            name: name.to_owned(),
            value: None,
            explicit: false,
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            subdirs: 0,
            target: Vec::new(),
            rdev: 0,
            links: 1,
        }
    }

    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }

    /// The size the filesystem reports: the value's length for files, the target's for
    /// symlinks, 0 for directories.
    pub fn size(&self) -> u64 {
        match self.kind {
            NodeKind::File => self.value.unwrap_or(0),
            NodeKind::Symlink => self.target.len() as u64,
            NodeKind::Dir
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice
            | NodeKind::Socket => 0,
        }
    }

    /// The link count: 2 plus subdirectories for a directory, the number of names otherwise.
    pub fn nlink(&self) -> u32 {
        match self.kind {
            NodeKind::Dir => 2 + self.subdirs,
            _ => self.links,
        }
    }

    /// Encodes the node for the `nodes` table.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80 + self.name.len() + self.target.len());
        out.push(FORMAT_VERSION);
        out.push(self.kind.to_byte());
        let mut flags = 0u8;
        if self.explicit {
            flags |= 1;
        }
        if self.value.is_some() {
            flags |= 2;
        }
        out.push(flags);
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.extend_from_slice(&self.value.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&t.secs.to_le_bytes());
            out.extend_from_slice(&t.nanos.to_le_bytes());
        }
        out.extend_from_slice(&self.subdirs.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        out.extend_from_slice(&self.links.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.target.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.target);
        out
    }

    /// Decodes a record written by [`Node::encode`]; anything malformed is `Corrupt`.
    pub fn decode(bytes: &[u8]) -> IndexResult<Node> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(IndexError::corrupt(format!(
                "node record version {version} (this dsfs reads {FORMAT_VERSION})"
            )));
        }
        let kind = NodeKind::from_byte(r.u8()?)?;
        let flags = r.u8()?;
        let parent = r.u64()?;
        let value = r.u64()?;
        let mode = r.u32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let mut times = [Timestamp::default(); 3];
        for t in &mut times {
            let secs = r.u64()? as i64;
            let nanos = r.u32()?;
            *t = Timestamp { secs, nanos };
        }
        let subdirs = r.u32()?;
        let rdev = r.u32()?;
        let links = r.u32()?;
        let name_len = r.u32()? as usize;
        let name = String::from_utf8(r.take(name_len)?.to_vec())
            .map_err(|_| IndexError::corrupt("node name is not UTF-8"))?;
        let target_len = r.u32()? as usize;
        let target = r.take(target_len)?.to_vec();
        if r.pos != bytes.len() {
            return Err(IndexError::corrupt("trailing bytes in node record"));
        }
        Ok(Node {
            kind,
            parent,
            name,
            value: (flags & 2 != 0).then_some(value),
            explicit: flags & 1 != 0,
            mode,
            uid,
            gid,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            subdirs,
            target,
            rdev,
            links,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> IndexResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| IndexError::corrupt("truncated node record"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> IndexResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> IndexResult<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> IndexResult<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_through_their_encoding() {
        let mut n = Node::new(NodeKind::Symlink, 7, "näme", 0o7777, 1000, 100);
        n.target = b"/some/where".to_vec();
        n.value = Some(42);
        n.explicit = true;
        n.subdirs = 3;
        n.rdev = 0x0801;
        n.links = 3;
        n.atime = Timestamp { secs: -5, nanos: 7 };
        assert_eq!(Node::decode(&n.encode()).unwrap(), n);
        let d = Node::new(NodeKind::Dir, ROOT, "d", 0o755, 0, 0);
        assert_eq!(Node::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn malformed_records_are_corrupt_not_panics() {
        let n = Node::new(NodeKind::File, ROOT, "f", 0o644, 0, 0).encode();
        for cut in 0..n.len() {
            assert!(Node::decode(&n[..cut]).is_err());
        }
        let mut bad = n.clone();
        bad[1] = 9;
        assert!(Node::decode(&bad).is_err());
        let mut long = n.clone();
        long.push(0);
        assert!(Node::decode(&long).is_err());
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let t = SystemTime::now();
        assert_eq!(SystemTime::from(Timestamp::from(t)), t);
        let before = UNIX_EPOCH - std::time::Duration::new(3, 250);
        assert_eq!(SystemTime::from(Timestamp::from(before)), before);
    }
}
