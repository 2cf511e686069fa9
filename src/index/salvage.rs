//! Recovering from a damaged index file.
//!
//! The store holds the bytes; the index holds the key tree and everything the filesystem adds
//! (explicit directories, modes, owners, times, xattrs, symlinks and special files). When the
//! index file is damaged, it is moved aside (never deleted), a fresh index is built from the
//! store's keys, and then whatever still reads in the old file is carried over: table by table,
//! record by record, each read guarded so that a damaged page costs the records on it and no
//! more. Each table is scanned forwards until the first unreadable record and then backwards
//! from its end, so one bad page in the middle loses only the records it holds.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::layout::{self, Aliases, INDEX, Nodes, Record, Xattrs, old};
use super::node::{Node, NodeId, NodeKind, ROOT};
use super::{Index, IndexError, IndexResult, Tx};
use crate::datastore::Key;
use crate::redb_guard;
use redb::{ReadableDatabase, TableHandle};

/// What [`restore`] carried over from a damaged index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Node records read from the old file.
    pub nodes_read: u64,
    /// Directories, files and links whose attributes (or, for links and special files,
    /// whose whole record) were restored.
    pub nodes_restored: u64,
    /// Extended attributes restored.
    pub xattrs_restored: u64,
    /// Tables or records that could not be read (a damaged page stops a scan).
    pub unreadable: u64,
    /// Whether the old file could be opened at all.
    pub opened: bool,
}

impl Salvaged {
    /// One line for the log.
    pub fn summary(&self) -> String {
        if !self.opened {
            return "nothing could be read from the damaged file".to_owned();
        }
        format!(
            "carried over {} of {} node records and {} xattrs{}",
            self.nodes_restored,
            self.nodes_read,
            self.xattrs_restored,
            if self.unreadable > 0 {
                format!(" ({} unreadable parts skipped)", self.unreadable)
            } else {
                String::new()
            }
        )
    }
}

/// Renames a damaged database file to `<name>.corrupt-<unix seconds>` beside it (with a
/// counter if that name is taken) and returns the new path.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "index.redb".to_owned());
    for n in 0u32..1000 {
        let suffix = if n == 0 {
            format!("{name}.corrupt-{secs}")
        } else {
            format!("{name}.corrupt-{secs}.{n}")
        };
        let aside = path.with_file_name(suffix);
        if aside.exists() {
            continue;
        }
        std::fs::rename(path, &aside)?;
        return Ok(aside);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free name to move {} aside", path.display()),
    ))
}

/// Carries what still reads in the damaged index file `old` over to `index`, which has just
/// been rebuilt from the store. Never fails: what cannot be read is counted and skipped.
pub fn restore(index: &Index, old: &Path) -> Salvaged {
    let mut report = Salvaged::default();
    let opened = redb_guard::catch(
        "opening the damaged index",
        || {
            redb::Database::builder()
                .open_read_only(old)
                .map_err(|e| e.to_string())
        },
        |m| m,
    );
    let db = match opened {
        Ok(db) => db,
        Err(e) => {
            log::warn!("salvage: cannot open {}: {e}", old.display());
            return report;
        }
    };
    report.opened = true;
    // The file may be in the one-table layout or in the older one of seven tables (damaged
    // before it could be migrated); whichever tables it has are read. If even the list of
    // tables cannot be read, both layouts are tried.
    let tables = redb_guard::catch(
        "listing the damaged index's tables",
        || {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let names: Vec<String> = txn
                .list_tables()
                .map_err(|e| e.to_string())?
                .map(|t| t.name().to_owned())
                .collect();
            Ok(names)
        },
        |m| m,
    );
    let has = |name: &str| match &tables {
        Ok(names) => names.iter().any(|n| n == name),
        Err(_) => true,
    };
    if tables.is_err() {
        report.unreadable += 1;
    }
    let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
    let mut xattrs: BTreeMap<(NodeId, String), Vec<u8>> = BTreeMap::new();
    let mut aliases = 0;
    if has(INDEX.name()) {
        let (read, bad) = salvage_kind::<Nodes>(&db);
        report.unreadable += bad;
        nodes.extend(read);
        let (read, bad) = salvage_kind::<Xattrs>(&db);
        report.unreadable += bad;
        xattrs.extend(read);
        aliases += salvage_kind::<Aliases>(&db).0.len();
    }
    if has(old::NODES.name()) {
        let all = (Bound::<u64>::Unbounded, Bound::<u64>::Unbounded);
        let (read, bad) = redb_guard::salvage_table(&db, old::NODES, all, |id, bytes| {
            Node::decode(bytes).ok().map(|n| (id, n))
        });
        report.unreadable += bad;
        nodes.extend(read);
    }
    if has(old::XATTRS.name()) {
        let all = (
            Bound::<(u64, &str)>::Unbounded,
            Bound::<(u64, &str)>::Unbounded,
        );
        let (read, bad) = redb_guard::salvage_table(&db, old::XATTRS, all, |(id, name), value| {
            Some(((id, name.to_owned()), value.to_vec()))
        });
        report.unreadable += bad;
        xattrs.extend(read);
    }
    if has(old::ALIASES.name()) {
        let all = (
            Bound::<(u64, u64, &str)>::Unbounded,
            Bound::<(u64, u64, &str)>::Unbounded,
        );
        let (read, _) =
            redb_guard::salvage_table(&db, old::ALIASES, all, |(id, parent, name), ()| {
                Some(((id, parent, name.to_owned()), ()))
            });
        aliases += read.len();
    }
    report.nodes_read = nodes.len() as u64;
    // Hard links are not carried over (each name stays a file of its own key); reading their
    // records only tells whether there were any.
    if aliases > 0 {
        log::warn!("salvage: {aliases} hard-link names were not carried over");
    }
    drop(db);

    // Parents before children: sort the nodes that have a path by its depth.
    let mut placed: Vec<(usize, Key, NodeId)> = Vec::new();
    for &id in nodes.keys() {
        if let Some(key) = path_of(&nodes, id) {
            placed.push((key.components().count(), key, id));
        }
    }
    placed.sort();
    let mut new_ids: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let applied = index.write(|tx| {
        for (_, key, old_id) in &placed {
            let Some(old_node) = nodes.get(old_id) else {
                continue;
            };
            if let Some(new_id) = restore_node(tx, key, old_node)? {
                new_ids.insert(*old_id, new_id);
                report.nodes_restored += 1;
            }
        }
        for ((old_id, name), value) in &xattrs {
            if let Some(new_id) = new_ids.get(old_id) {
                tx.set_xattr(*new_id, name, Some(value))?;
                report.xattrs_restored += 1;
            }
        }
        Ok(())
    });
    if let Err(e) = applied {
        log::warn!("salvage: could not apply what was read: {e}");
        report.nodes_restored = 0;
        report.xattrs_restored = 0;
        report.unreadable += 1;
    }
    if let Err(e) = index.sync() {
        log::warn!("salvage: {e}");
    }
    report
}

/// Every record of kind `R`, as a byte range of the one table.
/// Every record of kind `R` that still reads from the one table of `db`, and how many did not.
fn salvage_kind<R: Record>(db: &redb::ReadOnlyDatabase) -> (BTreeMap<R::KeyOut, R::ValOut>, u64)
where
    R::KeyOut: Ord + Clone,
{
    let range = layout::bounds::<R>(Bound::Unbounded, Bound::Unbounded);
    redb_guard::salvage_table::<_, _, _, _, &[u8]>(
        db,
        INDEX,
        (layout::as_slice(&range.0), layout::as_slice(&range.1)),
        |k, v| layout::decode::<R>(k, v).ok(),
    )
}

/// The key of old node `id`, from the salvaged records (`None` if its chain is broken).
fn path_of(nodes: &BTreeMap<NodeId, Node>, id: NodeId) -> Option<Key> {
    let mut parts = Vec::new();
    let mut cur = id;
    while cur != ROOT {
        let node = nodes.get(&cur)?;
        parts.push(node.name.as_str());
        if parts.len() > nodes.len() {
            return None;
        }
        cur = node.parent;
    }
    parts.reverse();
    let mut s = String::new();
    for p in parts {
        s.push('/');
        s.push_str(p);
    }
    if s.is_empty() {
        return Some(Key::root());
    }
    Key::from_raw(s).ok()
}

fn resolve(tx: &Tx<'_>, key: &Key) -> IndexResult<Option<NodeId>> {
    let mut id = ROOT;
    for comp in key.components() {
        match tx.lookup(id, comp)? {
            Some(child) => id = child,
            None => return Ok(None),
        }
    }
    Ok(Some(id))
}

fn copy_attrs(to: &mut Node, from: &Node) {
    to.mode = (to.mode & !0o7777) | (from.mode & 0o7777);
    to.uid = from.uid;
    to.gid = from.gid;
    to.atime = from.atime;
    to.mtime = from.mtime;
    to.ctime = from.ctime;
}

/// Applies one salvaged node at `key`; returns its id in the new index if it was applied.
fn restore_node(tx: &mut Tx<'_>, key: &Key, old: &Node) -> IndexResult<Option<NodeId>> {
    let existing = resolve(tx, key)?;
    match (old.kind, existing) {
        (NodeKind::Dir, Some(id)) | (NodeKind::File, Some(id)) => {
            let mut node = tx.node_required(id)?;
            if old.kind == NodeKind::Dir && node.kind == NodeKind::Dir {
                node.explicit = node.explicit || old.explicit || id == ROOT;
            }
            copy_attrs(&mut node, old);
            tx.put_node(id, &node)?;
            Ok(Some(id))
        }
        (NodeKind::Dir, None) if old.explicit => {
            let id = tx.ensure_dirs(key)?;
            let mut node = tx.node_required(id)?;
            node.explicit = true;
            copy_attrs(&mut node, old);
            tx.put_node(id, &node)?;
            Ok(Some(id))
        }
        // An implied directory or a file the store no longer holds: the store decides.
        (NodeKind::Dir, None) | (NodeKind::File, None) => Ok(None),
        (
            NodeKind::Symlink
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice
            | NodeKind::Socket,
            Some(_),
        ) => Ok(None),
        (
            NodeKind::Symlink
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice
            | NodeKind::Socket,
            None,
        ) => {
            let parent = tx.ensure_dirs(&key.parent())?;
            let mut node = old.clone();
            node.value = None;
            node.subdirs = 0;
            node.links = 1;
            node.explicit = false;
            let id = tx.create(parent, key.base_namespace(), node)?;
            Ok(Some(id))
        }
    }
}

/// A damaged index file that was moved aside by [`open_or_set_aside`].
#[derive(Debug)]
pub struct SetAside {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// What was wrong with it.
    pub why: String,
}

/// Opens the index at `path`. If the file is damaged (it fails to open as corrupt, or redb
/// panics on it), it is moved aside and a fresh, empty index is opened in its place: the
/// caller rebuilds it from the store with [`rebuild`].
pub fn open_or_set_aside(
    path: &Path,
    options: super::IndexOptions,
) -> IndexResult<(Index, Option<SetAside>)> {
    match Index::open(path, options.clone()) {
        Ok(index) => Ok((index, None)),
        Err(e) if e.kind() == super::IndexErrorKind::Corrupt => {
            let moved_to = move_aside(path).map_err(|io| {
                IndexError::new(
                    super::IndexErrorKind::Io,
                    format!(
                        "the index {} is damaged ({e}) and could not be moved aside: {io}",
                        path.display()
                    ),
                )
            })?;
            let index = Index::open(path, options)?;
            Ok((
                index,
                Some(SetAside {
                    moved_to,
                    why: e.to_string(),
                }),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Rebuilds a fresh `index` (opened in place of a damaged one) from `backend`'s keys, then
/// carries over what still reads in the damaged file. Says what it did in one log line.
pub fn rebuild(
    index: &Index,
    backend: &dyn crate::datastore::Datastore,
    aside: &SetAside,
) -> IndexResult<(u64, Salvaged)> {
    let keys = super::reconcile::reindex(index, backend, &mut |_| {})?;
    let salvaged = restore(index, &aside.moved_to);
    let shown = index
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    log::warn!(
        "the index {shown} was damaged ({}); moved it to {} and rebuilt it from the store: {keys} keys; {}",
        aside.why,
        aside.moved_to.display(),
        salvaged.summary()
    );
    Ok((keys, salvaged))
}
