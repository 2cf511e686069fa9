//! UnixFS import: files and directories as the DAG `ipfs add` builds, so that a file gets the
//! CID Kubo would give it.
//!
//! The format (the UnixFS and dag-pb specifications):
//! * A file's bytes are cut by a fixed-size chunker (262,144 bytes by default). Each chunk is
//!   a leaf: a dag-pb node whose UnixFS `Data` is `{Type: File, Data: chunk, filesize}`, or,
//!   with raw leaves, the chunk itself as a `raw` block (always CIDv1).
//! * Leaves are gathered by the balanced layout: parents of at most 174 children, level by
//!   level, every leaf at the same depth, filled from the left. A parent's `Data` is
//!   `{Type: File, filesize, blocksizes}` (the file bytes under each child); its links have an
//!   empty name and `Tsize`, the bytes of the whole sub-DAG under the link.
//! * A file of one chunk is that chunk's leaf; an empty file is one leaf with no data.
//! * A directory is a dag-pb node with `Data {Type: Directory}` and one named link per entry,
//!   sorted by name bytes. Like Kubo, a directory whose links would take more than 256 KiB
//!   becomes a HAMT shard instead (`crate::hamt`).
//!
//! dag-pb is written canonically: links (field 2) before data (field 1), fields in number
//! order inside each message, which is what go-merkledag and the JS importer write.

use std::collections::HashMap;

use cid::Cid;
use multihash::Multihash;

use crate::cid::{DAG_PB, RAW, sha256_multihash};

/// Kubo's default chunk size.
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// The balanced layout's children per node (Kubo's default).
pub const MAX_LINKS: usize = 174;
/// The link bytes above which Kubo shards a directory (name + CID bytes of every link).
pub const SHARD_THRESHOLD: usize = 262_144;

/// How to import, matching `ipfs add`'s options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportOptions {
    /// `--cid-version`: 0 (dag-pb nodes as CIDv0, Kubo's default) or 1.
    pub cid_version: u8,
    /// `--raw-leaves`: chunks as raw blocks instead of dag-pb leaves.
    pub raw_leaves: bool,
    /// `--chunker size-N`.
    pub chunk_size: usize,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            cid_version: 0,
            raw_leaves: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// A link to an imported node: what its parent records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The node's CID.
    pub cid: Cid,
    /// The bytes of the node's block and of every block below it (dag-pb `Tsize`).
    pub tsize: u64,
    /// The file bytes under the node (UnixFS `blocksizes` entry); 0 for directories.
    pub filesize: u64,
}

/// Where imported blocks go: a blockstore, or nowhere (`--only-hash`).
pub trait BlockSink {
    /// Stores one block under its multihash. The error is the caller's own.
    fn put_block(&mut self, cid: &Cid, bytes: &[u8]) -> crate::datastore::Result<()>;
}

/// A sink that keeps nothing (for computing CIDs only).
pub struct Discard;

impl BlockSink for Discard {
    fn put_block(&mut self, _cid: &Cid, _bytes: &[u8]) -> crate::datastore::Result<()> {
        Ok(())
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
pub(crate) fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint protobuf field.
pub(crate) fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

const TYPE_DIRECTORY: u64 = 1;
const TYPE_FILE: u64 = 2;
const TYPE_SYMLINK: u64 = 4;

/// UnixFS `Data` of a file node: Type, Data (leaves only), filesize, blocksizes.
fn file_data(chunk: Option<&[u8]>, filesize: u64, blocksizes: &[u64]) -> Vec<u8> {
    let mut d = Vec::with_capacity(chunk.map_or(0, <[u8]>::len) + 16 + blocksizes.len() * 4);
    varint_field(&mut d, 1, TYPE_FILE);
    if let Some(chunk) = chunk.filter(|c| !c.is_empty()) {
        bytes_field(&mut d, 2, chunk);
    }
    varint_field(&mut d, 3, filesize);
    for &b in blocksizes {
        varint_field(&mut d, 4, b);
    }
    d
}

/// A dag-pb node: links (each Hash, Name, Tsize), then Data.
pub(crate) fn pb_node(links: &[(&[u8], &str, u64)], data: &[u8]) -> Vec<u8> {
    let mut node = Vec::with_capacity(data.len() + links.len() * 48 + 8);
    let mut link = Vec::with_capacity(64);
    for (hash, name, tsize) in links {
        link.clear();
        bytes_field(&mut link, 1, hash);
        bytes_field(&mut link, 2, name.as_bytes());
        varint_field(&mut link, 3, *tsize);
        bytes_field(&mut node, 2, &link);
    }
    bytes_field(&mut node, 1, data);
    node
}

/// The CID of a dag-pb block in CID `version`.
pub(crate) fn dag_pb_cid(version: u8, hash: Multihash<64>) -> Cid {
    if version == 0 {
        // A sha2-256 multihash is always a valid CIDv0.
        Cid::new_v0(hash).unwrap_or_else(|_| Cid::new_v1(DAG_PB, hash))
    } else {
        Cid::new_v1(DAG_PB, hash)
    }
}

/// Builds one file's DAG as its chunks arrive.
pub struct FileImporter<'a, S: BlockSink + ?Sized> {
    options: ImportOptions,
    sink: &'a mut S,
    /// `levels[0]` holds leaves not yet under a parent, `levels[1]` their parents, and so on.
    levels: Vec<Vec<Link>>,
    chunks: u64,
}

impl<'a, S: BlockSink + ?Sized> FileImporter<'a, S> {
    /// Starts a file.
    pub fn new(options: ImportOptions, sink: &'a mut S) -> Self {
        FileImporter {
            options,
            sink,
            levels: vec![Vec::new()],
            chunks: 0,
        }
    }

    /// Adds the next chunk (exactly `chunk_size` bytes, except the last one).
    pub fn push_chunk(&mut self, chunk: &[u8]) -> crate::datastore::Result<()> {
        let link = if self.options.raw_leaves {
            let cid = Cid::new_v1(RAW, sha256_multihash(chunk));
            self.sink.put_block(&cid, chunk)?;
            Link {
                cid,
                tsize: chunk.len() as u64,
                filesize: chunk.len() as u64,
            }
        } else {
            let block = pb_node(&[], &file_data(Some(chunk), chunk.len() as u64, &[]));
            let cid = dag_pb_cid(self.options.cid_version, sha256_multihash(&block));
            self.sink.put_block(&cid, &block)?;
            Link {
                cid,
                tsize: block.len() as u64,
                filesize: chunk.len() as u64,
            }
        };
        self.chunks += 1;
        self.push(0, link)
    }

    fn push(&mut self, level: usize, link: Link) -> crate::datastore::Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(link);
        if self.levels[level].len() == MAX_LINKS {
            let children = std::mem::take(&mut self.levels[level]);
            let parent = self.parent(&children)?;
            self.push(level + 1, parent)?;
        }
        Ok(())
    }

    /// Writes the parent of `children`.
    fn parent(&mut self, children: &[Link]) -> crate::datastore::Result<Link> {
        let blocksizes: Vec<u64> = children.iter().map(|c| c.filesize).collect();
        let filesize = blocksizes.iter().sum();
        let hashes: Vec<Vec<u8>> = children.iter().map(|c| c.cid.to_bytes()).collect();
        let links: Vec<(&[u8], &str, u64)> = hashes
            .iter()
            .zip(children)
            .map(|(h, c)| (h.as_slice(), "", c.tsize))
            .collect();
        let block = pb_node(&links, &file_data(None, filesize, &blocksizes));
        let cid = dag_pb_cid(self.options.cid_version, sha256_multihash(&block));
        self.sink.put_block(&cid, &block)?;
        Ok(Link {
            cid,
            tsize: block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>(),
            filesize,
        })
    }

    /// Ends the file and returns its root.
    pub fn finish(mut self) -> crate::datastore::Result<Link> {
        if self.chunks == 0 {
            // An empty file is one empty leaf.
            self.push_chunk(&[])?;
        }
        if self.chunks == 1
            && let Some(leaf) = self.levels[0].pop()
        {
            // One chunk: the leaf is the file (no parent of one child).
            return Ok(leaf);
        }
        // Close the partial nodes bottom up; the root is the one node left on the top level.
        let mut level = 0;
        loop {
            let top = self.levels.len() - 1;
            let lower_empty = self.levels[..level].iter().all(Vec::is_empty);
            if level == top && lower_empty && self.levels[level].len() == 1 {
                return self.levels[level].pop().ok_or_else(|| {
                    crate::datastore::Error::new(crate::datastore::ErrorKind::Io, "empty DAG")
                });
            }
            if !self.levels[level].is_empty() {
                let children = std::mem::take(&mut self.levels[level]);
                let parent = self.parent(&children)?;
                if self.levels.len() <= level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(parent);
            }
            level += 1;
        }
    }
}

/// Imports `data` as one file.
pub fn import_bytes<S: BlockSink + ?Sized>(
    data: &[u8],
    options: ImportOptions,
    sink: &mut S,
) -> crate::datastore::Result<Link> {
    let mut file = FileImporter::new(options, sink);
    for chunk in data.chunks(options.chunk_size.max(1)) {
        file.push_chunk(chunk)?;
    }
    file.finish()
}

/// Imports the value of `key` (of `size` bytes) from a store, reading it once in chunks.
/// This is the CID the value would get from `ipfs add` of a file with the same bytes.
pub fn import_value<S: BlockSink + ?Sized>(
    store: &dyn crate::datastore::Datastore,
    key: &crate::datastore::Key,
    size: u64,
    options: ImportOptions,
    sink: &mut S,
) -> crate::datastore::Result<Link> {
    let chunk = options.chunk_size.max(1);
    let mut buf = vec![0u8; chunk];
    let mut file = FileImporter::new(options, sink);
    let mut offset = 0u64;
    while offset < size {
        let want = chunk.min((size - offset) as usize);
        let mut n = 0;
        while n < want {
            let k = store.read_at(key, offset + n as u64, &mut buf[n..want])?;
            if k == 0 {
                return Err(crate::datastore::Error::new(
                    crate::datastore::ErrorKind::Corrupt,
                    format!(
                        "{key}: the value ended at {} of {size} bytes",
                        offset + n as u64
                    ),
                ));
            }
            n += k;
        }
        file.push_chunk(&buf[..n])?;
        offset += n as u64;
    }
    file.finish()
}

/// Builds a directory node from its entries (any order; sorted here by name bytes).
pub fn directory<S: BlockSink + ?Sized>(
    entries: &mut [(String, Link)],
    options: ImportOptions,
    sink: &mut S,
) -> crate::datastore::Result<Link> {
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let hashes: Vec<Vec<u8>> = entries.iter().map(|(_, l)| l.cid.to_bytes()).collect();
    let link_bytes: usize = entries
        .iter()
        .zip(&hashes)
        .map(|((n, _), h)| n.len() + h.len())
        .sum();
    if link_bytes > SHARD_THRESHOLD {
        // Kubo (boxo) and the JS importer shard above the threshold, not at it.
        return crate::hamt::build(entries, options, sink);
    }
    let links: Vec<(&[u8], &str, u64)> = entries
        .iter()
        .zip(&hashes)
        .map(|((n, l), h)| (h.as_slice(), n.as_str(), l.tsize))
        .collect();
    let mut data = Vec::new();
    varint_field(&mut data, 1, TYPE_DIRECTORY);
    let block = pb_node(&links, &data);
    let cid = dag_pb_cid(options.cid_version, sha256_multihash(&block));
    sink.put_block(&cid, &block)?;
    Ok(Link {
        cid,
        tsize: block.len() as u64 + entries.iter().map(|(_, l)| l.tsize).sum::<u64>(),
        filesize: 0,
    })
}

/// What [`import_path`] found at each path it imported, in the order `ipfs add` prints.
pub type Added = Vec<(std::path::PathBuf, Link)>;

/// Imports a file, or a directory tree when `recursive`, from the local filesystem, streaming
/// each file in chunks. As `ipfs add -r`, names starting with `.` are left out unless `hidden`,
/// and symlinks become UnixFS symlink nodes (never followed). `progress` is told the file
/// bytes read so far.
pub fn import_path<S: BlockSink + ?Sized>(
    path: &std::path::Path,
    recursive: bool,
    hidden: bool,
    options: ImportOptions,
    sink: &mut S,
    progress: &mut dyn FnMut(u64),
) -> crate::datastore::Result<Added> {
    let mut added = Vec::new();
    let mut read = 0u64;
    let mut walk = Walk {
        recursive,
        hidden,
        options,
        sink,
        progress,
        read: &mut read,
        added: &mut added,
    };
    walk.node(path)?;
    Ok(added)
}

struct Walk<'a, S: BlockSink + ?Sized> {
    recursive: bool,
    hidden: bool,
    options: ImportOptions,
    sink: &'a mut S,
    progress: &'a mut dyn FnMut(u64),
    read: &'a mut u64,
    added: &'a mut Added,
}

impl<S: BlockSink + ?Sized> Walk<'_, S> {
    fn node(&mut self, path: &std::path::Path) -> crate::datastore::Result<Link> {
        use crate::datastore::{Error, ErrorKind};
        let io = |e| Error::io(format!("reading {}", path.display()), e);
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let link = if meta.is_file() {
            self.file(path)?
        } else if meta.is_dir() {
            if !self.recursive {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{} is a directory; add it with -r", path.display()),
                ));
            }
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name().into_string().map_err(|n| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        format!("{n:?} in {}: names must be UTF-8", path.display()),
                    )
                })?;
                if !self.hidden && name.starts_with('.') {
                    continue;
                }
                entries.push(name);
            }
            // Children in name order, as `ipfs add` lists them.
            entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut links = Vec::with_capacity(entries.len());
            for name in entries {
                let child = self.node(&path.join(&name))?;
                links.push((name, child));
            }
            directory(&mut links, self.options, self.sink)?
        } else if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            let target = std::fs::read_link(path).map_err(io)?;
            let mut data = Vec::new();
            varint_field(&mut data, 1, TYPE_SYMLINK);
            bytes_field(&mut data, 2, target.as_os_str().as_bytes());
            let block = pb_node(&[], &data);
            let cid = dag_pb_cid(self.options.cid_version, sha256_multihash(&block));
            self.sink.put_block(&cid, &block)?;
            Link {
                cid,
                tsize: block.len() as u64,
                filesize: 0,
            }
        } else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{}: not a regular file, directory or symlink",
                    path.display()
                ),
            ));
        };
        self.added.push((path.to_path_buf(), link.clone()));
        Ok(link)
    }

    fn file(&mut self, path: &std::path::Path) -> crate::datastore::Result<Link> {
        use std::io::Read;
        let io = |e| crate::datastore::Error::io(format!("reading {}", path.display()), e);
        let mut f = std::fs::File::open(path).map_err(io)?;
        let size = self.options.chunk_size.max(1);
        let mut buf = vec![0u8; size];
        let mut importer = FileImporter::new(self.options, &mut *self.sink);
        loop {
            // Fill a whole chunk: only the last one may be short.
            let mut n = 0;
            while n < size {
                match f.read(&mut buf[n..]).map_err(io)? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                break;
            }
            importer.push_chunk(&buf[..n])?;
            *self.read += n as u64;
            (self.progress)(*self.read);
            if n < size {
                break;
            }
        }
        importer.finish()
    }
}

/// A decoded UnixFS node.
#[derive(Debug)]
pub struct Node {
    /// The UnixFS type (`Raw`, `Directory`, `File`, `Symlink`, ...) as its number.
    pub kind: u64,
    /// The node's own bytes (a leaf's chunk, a symlink's target).
    pub data: Vec<u8>,
    /// Children: (CID, name).
    pub links: Vec<(Cid, String)>,
    /// The file bytes under each child.
    pub blocksizes: Vec<u64>,
    /// A HAMT shard's hash function (UnixFS `hashType`).
    pub hash_type: Option<u64>,
    /// A HAMT shard's width (UnixFS `fanout`).
    pub fanout: Option<u64>,
}

/// Reads a protobuf varint at `*pos`.
fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field's value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message, with their numbers.
fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos)?;
        match key & 7 {
            0 => out.push((key >> 3, Field::Varint(read_varint(b, &mut pos)?))),
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= b.len())?;
                out.push((key >> 3, Field::Bytes(&b[pos..end])));
                pos = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn corrupt(cid: &Cid, what: &str) -> crate::datastore::Error {
    crate::datastore::Error::new(
        crate::datastore::ErrorKind::Corrupt,
        format!("block {cid}: {what}"),
    )
}

/// Decodes a block of `cid` (dag-pb with UnixFS data, or raw).
pub fn decode(cid: &Cid, block: &[u8]) -> crate::datastore::Result<Node> {
    if cid.codec() == RAW {
        return Ok(Node {
            kind: 0,
            data: block.to_vec(),
            links: Vec::new(),
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
        });
    }
    if cid.codec() != DAG_PB {
        return Err(corrupt(cid, "neither dag-pb nor raw"));
    }
    let bad = || corrupt(cid, "not a valid dag-pb node");
    let mut links = Vec::new();
    let mut unixfs: &[u8] = &[];
    for (field, value) in fields(block).ok_or_else(bad)? {
        match (field, value) {
            (1, Field::Bytes(data)) => unixfs = data,
            (2, Field::Bytes(link)) => {
                let mut hash = None;
                let mut name = String::new();
                for (f, v) in fields(link).ok_or_else(bad)? {
                    match (f, v) {
                        (1, Field::Bytes(h)) => hash = Some(Cid::try_from(h).map_err(|_| bad())?),
                        (2, Field::Bytes(n)) => name = String::from_utf8_lossy(n).into_owned(),
                        _ => {}
                    }
                }
                links.push((hash.ok_or_else(bad)?, name));
            }
            _ => return Err(bad()),
        }
    }
    let mut node = Node {
        kind: u64::MAX,
        data: Vec::new(),
        links,
        blocksizes: Vec::new(),
        hash_type: None,
        fanout: None,
    };
    for (field, value) in fields(unixfs).ok_or_else(bad)? {
        match (field, value) {
            (1, Field::Varint(kind)) => node.kind = kind,
            (2, Field::Bytes(data)) => node.data = data.to_vec(),
            (4, Field::Varint(size)) => node.blocksizes.push(size),
            (5, Field::Varint(h)) => node.hash_type = Some(h),
            (6, Field::Varint(f)) => node.fanout = Some(f),
            (4, Field::Bytes(packed)) => {
                let mut pos = 0;
                while pos < packed.len() {
                    node.blocksizes
                        .push(read_varint(packed, &mut pos).ok_or_else(bad)?);
                }
            }
            _ => {}
        }
    }
    if node.kind == u64::MAX {
        return Err(corrupt(cid, "no UnixFS type"));
    }
    Ok(node)
}

/// Reads the block of `cid` from the store's `/blocks` and checks it against its hash.
pub fn load_block(
    store: &dyn crate::datastore::Datastore,
    cid: &Cid,
) -> crate::datastore::Result<Vec<u8>> {
    let hash = cid.hash();
    if hash.code() != crate::cid::SHA2_256 {
        return Err(crate::datastore::Error::new(
            crate::datastore::ErrorKind::Unsupported,
            format!("{cid}: only sha2-256 blocks are supported"),
        ));
    }
    let block = store.get(&crate::cid::block_key(hash))?;
    if sha256_multihash(&block) != *hash {
        log::error!("block {cid} does not match its hash: not returned");
        return Err(corrupt(cid, "the stored bytes do not match the CID"));
    }
    Ok(block)
}

/// Writes the whole UnixFS file `cid` to `out`, leaf by leaf, checking every block.
pub fn cat(
    store: &dyn crate::datastore::Datastore,
    cid: &Cid,
    out: &mut dyn std::io::Write,
) -> crate::datastore::Result<u64> {
    let node = decode(cid, &load_block(store, cid)?)?;
    match node.kind {
        0 | TYPE_FILE => {}
        TYPE_DIRECTORY | 5 => {
            return Err(crate::datastore::Error::new(
                crate::datastore::ErrorKind::InvalidArgument,
                format!("{cid} is a directory"),
            ));
        }
        _ => {
            return Err(crate::datastore::Error::new(
                crate::datastore::ErrorKind::Unsupported,
                format!("{cid} is not a file (UnixFS type {})", node.kind),
            ));
        }
    }
    out.write_all(&node.data)
        .map_err(|e| crate::datastore::Error::io("writing output", e))?;
    let mut written = node.data.len() as u64;
    for (child, _) in &node.links {
        written += cat(store, child, out)?;
    }
    Ok(written)
}

/// The CID that `path` (names separated by `/`) leads to from the UnixFS directory `root`,
/// through plain and HAMT-sharded directories; an empty path is `root` itself.
pub fn resolve(
    store: &dyn crate::datastore::Datastore,
    root: &Cid,
    path: &str,
) -> crate::datastore::Result<Cid> {
    let mut cid = *root;
    let mut cache = NodeCache::default();
    for name in path.split('/').filter(|n| !n.is_empty()) {
        let node = cache.node(store, &cid)?;
        let next = match node.kind {
            TYPE_DIRECTORY => node.links.iter().find(|(_, n)| n == name).map(|(c, _)| *c),
            crate::hamt::TYPE_HAMT_SHARD => crate::hamt::find(store, &mut cache, &cid, name)?,
            _ => {
                return Err(crate::datastore::Error::new(
                    crate::datastore::ErrorKind::InvalidArgument,
                    format!("{cid} is not a directory, so it has no {name:?}"),
                ));
            }
        };
        cid = next.ok_or_else(|| {
            crate::datastore::Error::new(
                crate::datastore::ErrorKind::NotFound,
                format!("directory {cid} has no entry {name:?}"),
            )
        })?;
    }
    Ok(cid)
}

/// How deep a file's DAG may go before it is taken for corrupt (Kubo's balanced layout of a
/// 1 TiB file is 3 levels deep).
const MAX_DEPTH: usize = 32;

/// Decoded nodes kept by a reader of a UnixFS file, so that consecutive reads of one file do not
/// fetch and hash its root and inner blocks again. Bounded by the bytes it holds.
#[derive(Default)]
pub struct NodeCache {
    nodes: HashMap<Cid, std::sync::Arc<Node>>,
    bytes: usize,
}

impl NodeCache {
    /// What the cache may hold before it starts again.
    const LIMIT: usize = 8 << 20;

    /// The decoded node of `cid`, from the cache or loaded (and hash-checked) from `store`.
    pub fn node(
        &mut self,
        store: &dyn crate::datastore::Datastore,
        cid: &Cid,
    ) -> crate::datastore::Result<std::sync::Arc<Node>> {
        if let Some(n) = self.nodes.get(cid) {
            return Ok(n.clone());
        }
        let node = std::sync::Arc::new(decode(cid, &load_block(store, cid)?)?);
        let cost = node.data.len() + node.links.len() * 64 + 64;
        if self.bytes + cost > Self::LIMIT {
            self.nodes.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        self.nodes.insert(*cid, node.clone());
        Ok(node)
    }
}

/// The number of file bytes under a decoded file node: its own data and its children's.
pub fn file_size(cid: &Cid, node: &Node) -> crate::datastore::Result<u64> {
    if node.blocksizes.len() != node.links.len() {
        return Err(corrupt(cid, "the block sizes do not match the links"));
    }
    let mut size = node.data.len() as u64;
    for b in &node.blocksizes {
        size = size
            .checked_add(*b)
            .ok_or_else(|| corrupt(cid, "the block sizes overflow"))?;
    }
    Ok(size)
}

/// Reads the bytes of UnixFS file `cid` from `offset` into `buf`, fetching only the blocks that
/// hold them; returns how many bytes were read (fewer than `buf.len()` only at the end of the
/// file). Every block is checked against its hash.
pub fn read_at(
    store: &dyn crate::datastore::Datastore,
    cache: &mut NodeCache,
    cid: &Cid,
    offset: u64,
    buf: &mut [u8],
) -> crate::datastore::Result<usize> {
    read_subtree(store, cache, cid, offset, buf, 0)
}

fn read_subtree(
    store: &dyn crate::datastore::Datastore,
    cache: &mut NodeCache,
    cid: &Cid,
    offset: u64,
    buf: &mut [u8],
    depth: usize,
) -> crate::datastore::Result<usize> {
    if depth > MAX_DEPTH {
        return Err(corrupt(
            cid,
            "the file's DAG is deeper than any importer makes",
        ));
    }
    let node = cache.node(store, cid)?;
    if !matches!(node.kind, 0 | TYPE_FILE) {
        return Err(corrupt(cid, "a file links to a node that is not file data"));
    }
    file_size(cid, &node)?;
    let mut done = 0usize;
    let own = node.data.len() as u64;
    if offset < own {
        let start = offset as usize;
        let n = (node.data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&node.data[start..start + n]);
        done = n;
    }
    let mut pos = own;
    for ((child, _), size) in node.links.iter().zip(&node.blocksizes) {
        if done == buf.len() {
            break;
        }
        let at = offset + done as u64;
        let end = pos + size;
        if at < end {
            let inner = at - pos;
            let want = ((end - at) as usize).min(buf.len() - done);
            let got = read_subtree(
                store,
                cache,
                child,
                inner,
                &mut buf[done..done + want],
                depth + 1,
            )?;
            if got != want {
                return Err(corrupt(
                    cid,
                    "a child holds fewer bytes than its block size says",
                ));
            }
            done += got;
        }
        pos = end;
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes that the JS reference importer can make too: `(i * 31 + i / 7) % 251`.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + i / 7) % 251) as u8).collect()
    }

    fn cid_of(len: usize, options: ImportOptions) -> String {
        import_bytes(&pattern(len), options, &mut Discard)
            .unwrap()
            .cid
            .to_string()
    }

    #[test]
    fn well_known_kubo_cids_come_out() {
        let d = ImportOptions::default();
        assert_eq!(
            import_bytes(b"", d, &mut Discard).unwrap().cid.to_string(),
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        );
        assert_eq!(
            import_bytes(b"hello\n", d, &mut Discard)
                .unwrap()
                .cid
                .to_string(),
            "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
        );
    }

    /// CIDs printed by the reference importer (ipfs-unixfs-importer 17.1.1, profile
    /// unixfs-v0-2015, which is `ipfs add`'s default) for `pattern(len)`.
    #[test]
    fn file_cids_match_the_reference_importer() {
        let d = ImportOptions::default();
        for (len, options, want) in REFERENCE.iter().map(|(len, cv, raw, chunk, want)| {
            (
                *len,
                ImportOptions {
                    cid_version: *cv,
                    raw_leaves: *raw,
                    chunk_size: chunk.unwrap_or(d.chunk_size),
                },
                *want,
            )
        }) {
            assert_eq!(cid_of(len, options), want, "{len} bytes, {options:?}");
        }
    }

    #[test]
    fn directory_cids_match_the_reference_importer() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        for (name, len) in [
            ("b.txt", 10),
            ("a.bin", 300_000),
            ("sub/c", 0),
            ("sub/d", 1),
            ("Z", 5),
        ] {
            std::fs::write(tree.join(name), pattern(len)).unwrap();
        }
        // Hidden files are left out, as `ipfs add -r` does without --hidden.
        std::fs::write(tree.join(".hidden"), b"x").unwrap();
        let cases = [
            (
                ImportOptions::default(),
                "QmeeGNVuY35wR9vTMcCrz6kk9sytT1vb6QDTZ39EF7d34N",
                "QmP3wS34gr1pvp2jQ2Dp7HcTXnGzXuxt423qpAWdNguCP7",
            ),
            (
                ImportOptions {
                    cid_version: 1,
                    raw_leaves: true,
                    ..ImportOptions::default()
                },
                "bafybeiglzk3ioykjlutinihfpcbjs4m2jzpatvcuuimbb4gnxyfmg3xat4",
                "bafybeib6kh7r4vzpi7hkmmb7k3px2oehs24tioqi2jczroojb4pwbk6n5e",
            ),
        ];
        for (options, root, sub) in cases {
            let added =
                import_path(&tree, true, false, options, &mut Discard, &mut |_| {}).unwrap();
            let (last, link) = added.last().unwrap();
            assert_eq!(last, &tree);
            assert_eq!(link.cid.to_string(), root, "{options:?}");
            let sub_link = &added.iter().find(|(p, _)| p.ends_with("sub")).unwrap().1;
            assert_eq!(sub_link.cid.to_string(), sub, "{options:?}");
            assert_eq!(added.len(), 7, "5 files, 2 directories, no hidden file");
        }
        let err = import_path(
            &tree,
            false,
            false,
            ImportOptions::default(),
            &mut Discard,
            &mut |_| {},
        );
        assert!(err.unwrap_err().to_string().contains("-r"));
    }

    /// A store that counts the blocks read from it.
    pub(crate) struct Counting {
        pub(crate) inner: crate::backend::MemStore,
        pub(crate) gets: std::sync::atomic::AtomicUsize,
    }

    impl crate::datastore::Datastore for Counting {
        fn get(&self, key: &crate::datastore::Key) -> crate::datastore::Result<Vec<u8>> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get(key)
        }
        fn has(&self, key: &crate::datastore::Key) -> crate::datastore::Result<bool> {
            self.inner.has(key)
        }
        fn get_size(&self, key: &crate::datastore::Key) -> crate::datastore::Result<u64> {
            self.inner.get_size(key)
        }
        fn put(&self, key: &crate::datastore::Key, value: &[u8]) -> crate::datastore::Result<()> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &crate::datastore::Key) -> crate::datastore::Result<()> {
            self.inner.delete(key)
        }
        fn query(
            &self,
            query: crate::datastore::Query,
        ) -> crate::datastore::Result<crate::datastore::Results> {
            self.inner.query(query)
        }
        fn sync(&self, prefix: &crate::datastore::Key) -> crate::datastore::Result<()> {
            self.inner.sync(prefix)
        }
        fn close(&self) -> crate::datastore::Result<()> {
            self.inner.close()
        }
        fn capabilities(&self) -> crate::datastore::Capabilities {
            self.inner.capabilities()
        }
    }

    impl BlockSink for &Counting {
        fn put_block(&mut self, cid: &Cid, bytes: &[u8]) -> crate::datastore::Result<()> {
            use crate::datastore::Datastore;
            self.inner.put(&crate::cid::block_key(cid.hash()), bytes)
        }
    }

    #[test]
    fn ranged_reads_fetch_only_the_blocks_they_need() {
        use std::sync::atomic::Ordering;
        let store = Counting {
            inner: crate::backend::MemStore::new(),
            gets: Default::default(),
        };
        // Three levels: 174 * 174 + 1 leaves of 16 bytes.
        let len = 174 * 174 * 16 + 1;
        let data = pattern(len);
        let options = ImportOptions {
            chunk_size: 16,
            ..ImportOptions::default()
        };
        let root = import_bytes(&data, options, &mut &store).unwrap();
        for (offset, n) in [
            (0usize, 1usize),
            (0, 100),
            (15, 2),
            (16 * 174 - 3, 10),
            (len / 2, 4096),
            (len - 5, 100),
            (len - 1, 1),
            (len, 10),
            (len + 7, 10),
        ] {
            let mut cache = NodeCache::default();
            let mut buf = vec![0u8; n];
            store.gets.store(0, Ordering::Relaxed);
            let got = read_at(&store, &mut cache, &root.cid, offset as u64, &mut buf).unwrap();
            let want = &data[offset.min(len)..(offset + n).min(len)];
            assert_eq!(got, want.len(), "read at {offset} of {n}");
            assert!(&buf[..got] == want, "read at {offset} of {n}: other bytes");
            // At most the path of four blocks (root, two inner levels, leaf) to each leaf
            // holding the range, out of the 30,000 blocks of the file.
            let leaves = want.len().div_ceil(16) + 1;
            let gets = store.gets.load(Ordering::Relaxed);
            assert!(
                gets <= 4 * leaves,
                "read at {offset} of {n} fetched {gets} blocks"
            );
        }
        // A second read through the same cache fetches only the leaf it needs.
        let mut cache = NodeCache::default();
        let mut buf = [0u8; 16];
        read_at(&store, &mut cache, &root.cid, 16 * 1000, &mut buf).unwrap();
        store.gets.store(0, Ordering::Relaxed);
        read_at(&store, &mut cache, &root.cid, 16 * 1001, &mut buf).unwrap();
        assert!(buf[..] == data[16 * 1001..16 * 1002]);
        assert_eq!(store.gets.load(Ordering::Relaxed), 1, "only the new leaf");
    }

    #[test]
    fn added_files_read_back_by_cid_and_a_bad_block_is_refused() {
        let store = crate::backend::MemStore::new();
        struct Into<'a>(&'a crate::backend::MemStore);
        impl BlockSink for Into<'_> {
            fn put_block(&mut self, cid: &Cid, bytes: &[u8]) -> crate::datastore::Result<()> {
                use crate::datastore::Datastore;
                self.0.put(&crate::cid::block_key(cid.hash()), bytes)
            }
        }
        for (len, options) in [
            (0, ImportOptions::default()),
            (1, ImportOptions::default()),
            (
                174 * 174 * 16 + 1,
                ImportOptions {
                    chunk_size: 16,
                    ..ImportOptions::default()
                },
            ),
            (
                300_000,
                ImportOptions {
                    cid_version: 1,
                    raw_leaves: true,
                    ..ImportOptions::default()
                },
            ),
        ] {
            let data = pattern(len);
            let root = import_bytes(&data, options, &mut Into(&store)).unwrap();
            let mut out = Vec::new();
            assert_eq!(cat(&store, &root.cid, &mut out).unwrap(), len as u64);
            assert!(out == data, "{len} bytes came back different");
        }
        // Flip one byte of a leaf: reading the file fails instead of returning it.
        use crate::datastore::Datastore;
        let data = pattern(300_000);
        let root = import_bytes(&data, ImportOptions::default(), &mut Into(&store)).unwrap();
        let node = decode(&root.cid, &load_block(&store, &root.cid).unwrap()).unwrap();
        let leaf = crate::cid::block_key(node.links[1].0.hash());
        let mut bytes = store.get(&leaf).unwrap();
        bytes[20] ^= 1;
        store.put(&leaf, &bytes).unwrap();
        let err = cat(&store, &root.cid, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), crate::datastore::ErrorKind::Corrupt);
        // Garbage is an error, never a panic.
        for junk in [&b"\xff\xff\xff"[..], b"\x12\x05\x0a", b""] {
            assert!(decode(&root.cid, junk).is_err());
        }
    }

    /// (length, cid version, raw leaves, chunk size, CID)
    const REFERENCE: &[(usize, u8, bool, Option<usize>, &str)] = &[
        (
            0,
            0,
            false,
            None,
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        ),
        (
            1,
            0,
            false,
            None,
            "QmS9JArPwa55ePgDnyg6TzX24mYTS1b1vLqWNebyVotKxQ",
        ),
        (
            262144,
            0,
            false,
            None,
            "QmQoTNZs3CXDNPuRj9FLseQSAB5G2MKusPjgXLHRqeFTUn",
        ),
        (
            262145,
            0,
            false,
            None,
            "Qmb8bAgrFbL4bjpWHtTrHG2uXSnCm9qKaEEwJyzRuBmc1k",
        ),
        (
            1000000,
            0,
            false,
            None,
            "QmbQTEgt96cLBiBFLEZc8wQiidvckAZpoYTPs8XSjY5vDk",
        ),
        (
            1,
            1,
            false,
            None,
            "bafybeibyqyrkx66boqbutl5oktknecxgnl43cipcls3knonfmi727rdtnu",
        ),
        (
            262145,
            1,
            false,
            None,
            "bafybeidej5qhwd7qmsn442l57guit3kzk5uc2b6gh6szoenz74tdwcxgse",
        ),
        (
            1,
            0,
            true,
            None,
            "bafkreidogqfzz75tpkmjzjke425xqcrmpcib2p5tg44hnbirumdbpl5adu",
        ),
        (
            262145,
            0,
            true,
            None,
            "QmVjRbDesvALDAeEb4depibUJxgSwsKBvjZjZfxaBLSxbs",
        ),
        (
            262145,
            1,
            true,
            None,
            "bafybeidn25kwxb3gpgk4pzssema7rdojcgpkfuodw77eprnrzcomjgywxi",
        ),
        (
            0,
            1,
            true,
            None,
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
        (
            2784,
            0,
            false,
            Some(16),
            "QmVKmgzKmgTGWDGKgACG2JuMFZ5DkkArGdZSiUeGwJztB2",
        ),
        (
            2785,
            0,
            false,
            Some(16),
            "Qmev6qzyHyHhhKu936sCSqx4W2ZwqbpxicQYAJJhwu6eib",
        ),
        (
            484416,
            0,
            false,
            Some(16),
            "QmWgge2JR7JPn2aen8mM3NE5DcwKTfJpMK7SSNcnbgoc2d",
        ),
        (
            484417,
            0,
            false,
            Some(16),
            "QmTaLdxxnppha12w3rS4RQXrzsYLEVQbNtVAbwtbAqY1SW",
        ),
        (
            484417,
            1,
            true,
            Some(16),
            "bafybeicg2griln5mhlj5j7xexxsz7pdw6r5gmvbtrxmmprpeuqjeurdw64",
        ),
    ];
}
