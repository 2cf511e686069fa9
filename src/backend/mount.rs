//! `MountStore`: stores mounted at key prefixes, routed the way go-datastore's `mount` package
//! and Kubo's `{"type":"mount"}` datastore spec do.
//!
//! # Routing
//!
//! Mounts are kept sorted by prefix string, descending, and a key goes to the **first mount whose
//! prefix is a strict ancestor of the key** ([`Key::is_ancestor_of`]). Because ancestors of a key
//! are its proper prefixes, and a proper prefix sorts before the longer string, this is the
//! deepest mount above the key. The child sees the key with the mount prefix removed
//! ([`Key::strip_prefix`]): with mounts at `/` and `/blocks`, `/blocks/CIQ…` is `/CIQ…` in the
//! `/blocks` child, while `/blocks` itself is **not** below the `/blocks` mount point and lives in
//! the `/` child as `/blocks`. The key `/` is below no mount at all.
//!
//! When no mount covers a key, reads behave as for a missing key (`get`, `get_size`, `read_at`:
//! [`ErrorKind::NotFound`]; `has`: `false`; `backing_file`: `None`), `delete` is `Ok(())`, and
//! `put`, `stage` and `commit_staged` fail with [`ErrorKind::NoMount`]. Queries simply get
//! nothing from such keys.
//!
//! **No namespace quirk.** go-datastore v0.9's "already prefixed" rule (§2.9 of the spec) belongs
//! to `namespace.Wrap`, not to `mount`, so the router does not reproduce it: `/blocks/blocks/X` is
//! stored in the `/blocks` child as `/blocks/X`. A namespace layer above the mount, if one is ever
//! written, is where that quirk goes.
//!
//! # Queries
//!
//! Each relevant child (every mount at or below the query prefix, and the mount covering the
//! prefix when no mount sits exactly at it) gets a rewritten query: the prefix relative to the
//! child, the orders, `keys_only` and `returns_sizes`, but no filters, offset or limit. The
//! children's streams are merged lazily with a heap ordered by the query's orders (by key when
//! there are none), the mount prefix is put back on every key, and only then are the filters,
//! offset and limit applied, so they count merged results exactly as [`query::naive_apply`]
//! would over the union of the children. A key equal to a mount point is returned by the
//! parent's child, as routing says. Dropping the results drops every child stream; a child whose
//! stream has ended is released at once.
//!
//! Three choices differ from (or sharpen) upstream, deliberately:
//!
//! * **Masking.** A parent child may hold keys below a deeper mount point (written before the
//!   mount existed, or directly into the child). `get` can never reach them, so queries do not
//!   return them either. Upstream documents this masking but its merge does not filter.
//! * **`Order::Function` below a non-root mount.** A user ordering may look at whole keys, and a
//!   child would sort by its own, stripped keys. Such a child is asked for no orders and its
//!   stream is sorted here on the restored keys (a sort drains its input, as the child's own
//!   sort would have). Every other order is invariant under a common prefix, so children sort.
//! * **Errors.** A child's `query` failing fails the whole query (as upstream). An error inside a
//!   child's stream is passed on as the next result, in place, and the merge goes on after it.
//!
//! # Other operations
//!
//! * `sync(p)`: every mount at or below `p` syncs `/`; the mount that holds the key `p` itself
//!   (its deepest strict ancestor) syncs the remainder of `p`. This is a superset of upstream,
//!   which skips that parent when a mount sits exactly at `p` and so never syncs the key `p`.
//!   Errors from every child are joined into one.
//! * `close`: closes every child and joins the errors.
//! * `batch`: one child batch per mount, created lazily on first use. Within a child, the child's
//!   batch semantics hold (last operation per key wins for every general store; see the flatfs
//!   backend for its own rule). **A commit across children is not atomic**: each child batch is
//!   committed in turn (deepest mount first), all are attempted, and the errors are joined.
//!   A batched put with no mount fails at once with `NoMount`; a batched delete with no mount is
//!   a no-op, like `delete`.
//! * `disk_usage`: the sum over the children that report one; `None` when none does.
//! * `read_at`, `stage`, `commit_staged` and `backing_file` go to the covering child with the
//!   stripped key, so a file-backed child keeps its fast paths. `staging_dir` (which takes no
//!   key) is the `/` child's, or the system temporary directory without one.
//!
//! # Capabilities
//!
//! The conservative combination: a guarantee holds only if every child gives it (`ordered_scan`,
//! `ranged_read`, `atomic_put`, `durable_put`, `persistent`); `atomic_batch` additionally needs a
//! single mount, since a batch may span children; `max_value_size` is the smallest limit;
//! `file_backed` holds if any child is file-backed (some keys may then have backing files).
//! `general_keys` follows the `/` child (false without one): keys below a mount point are still
//! subject to that child's rules, as in upstream's suite topology where flatfs at `/capital` only
//! ever sees single-component keys. `ordered_scan` needs every child ordered: the merge keeps
//! each child's order but does not sort a child that returns keys unordered.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::datastore::query::{self, Entry, EntryIter, Order};
use crate::datastore::{
    Batch, BatchOps, Capabilities, Datastore, Error, ErrorKind, Key, Query, Result, Results,
    StageInit, Staged,
};

/// One mounted store.
struct Mount {
    prefix: Key,
    store: Arc<dyn Datastore>,
}

/// A store that routes every key to the store mounted at its deepest strict ancestor. See the
/// module documentation for the exact rules.
pub struct MountStore {
    /// Sorted by prefix string, descending; prefixes are unique.
    mounts: Vec<Mount>,
}

impl MountStore {
    /// A router over `mounts`, given in any order. Fails with [`ErrorKind::InvalidArgument`] if
    /// two stores are mounted at the same prefix.
    pub fn new(mounts: Vec<(Key, Arc<dyn Datastore>)>) -> Result<MountStore> {
        let mut mounts: Vec<Mount> = mounts
            .into_iter()
            .map(|(prefix, store)| Mount { prefix, store })
            .collect();
        mounts.sort_by(|a, b| b.prefix.cmp(&a.prefix));
        for pair in mounts.windows(2) {
            if let [a, b] = pair
                && a.prefix == b.prefix
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("two datastores mounted at {}", a.prefix),
                ));
            }
        }
        Ok(MountStore { mounts })
    }

    /// The mounts in routing order (prefix string descending).
    pub fn mounts(&self) -> impl ExactSizeIterator<Item = (&Key, &Arc<dyn Datastore>)> + '_ {
        self.mounts.iter().map(|m| (&m.prefix, &m.store))
    }

    /// Where `key` lives: the mount prefix, the child store, and the key as the child sees it.
    /// `None` when no mount covers `key`.
    pub fn route(&self, key: &Key) -> Option<(&Key, &Arc<dyn Datastore>, Key)> {
        self.lookup(key)
            .map(|(_, m, child_key)| (&m.prefix, &m.store, child_key))
    }

    /// The index and mount of the first mount whose prefix is a strict ancestor of `key`, and
    /// the child key.
    fn lookup(&self, key: &Key) -> Option<(usize, &Mount, Key)> {
        self.mounts.iter().enumerate().find_map(|(i, m)| {
            if m.prefix.is_ancestor_of(key) {
                key.strip_prefix(&m.prefix).map(|k| (i, m, k))
            } else {
                None
            }
        })
    }

    /// mount's `ErrNoMount` for `key`, saying where the stores are mounted and that a mount
    /// holds only the keys strictly below its prefix (so the root key `/` is in none).
    fn no_mount(&self, key: &Key) -> Error {
        let mut prefixes: Vec<&str> = self.mounts.iter().map(|m| m.prefix.as_str()).collect();
        prefixes.sort_unstable();
        let message = if key.is_root() {
            format!(
                "the root key / cannot hold a value here: each store is mounted at a prefix \
                 ({}) and holds only the keys strictly below it",
                prefixes.join(", ")
            )
        } else {
            format!(
                "no datastore mounted for key {key}: stores are mounted at {} and each holds \
                 only the keys strictly below its prefix",
                prefixes.join(", ")
            )
        };
        Error::new(ErrorKind::NoMount, message)
    }

    /// Mounts at `p` or below it: every key they hold is a strict descendant of `p`.
    fn at_or_below<'s>(&'s self, p: &'s Key) -> impl Iterator<Item = &'s Mount> + 's {
        self.mounts
            .iter()
            .filter(move |m| m.prefix == *p || p.is_ancestor_of(&m.prefix))
    }

    /// The prefixes of the mounts strictly below `m`: the keys of `m`'s child under them are
    /// masked.
    fn holes(&self, m: &Mount) -> Vec<Key> {
        self.mounts
            .iter()
            .filter(|n| m.prefix.is_ancestor_of(&n.prefix))
            .map(|n| n.prefix.clone())
            .collect()
    }

    /// The stream of one child for the merge: keys restored, masked keys dropped, errors given
    /// context.
    fn child_stream(&self, m: &Mount, rest: Key, master: &Query) -> Result<EntryIter> {
        let sort_here = !m.prefix.is_root()
            && master
                .orders
                .iter()
                .any(|o| matches!(o, Order::Function(_)));
        let child_query = Query {
            prefix: rest.into_string(),
            filters: Vec::new(),
            orders: if sort_here {
                Vec::new()
            } else {
                master.orders.clone()
            },
            limit: 0,
            offset: 0,
            keys_only: master.keys_only,
            returns_sizes: master.returns_sizes,
        };
        let results = m
            .store
            .query(child_query)
            .map_err(|e| e.context(format_args!("querying datastore at {}", m.prefix)))?;
        let prefix = m.prefix.clone();
        let holes = self.holes(m);
        let stream: EntryIter = Box::new(results.filter_map(move |r| match r {
            Ok(e) => {
                let key = prefix.child(&e.key);
                if holes.iter().any(|h| h.is_ancestor_of(&key)) {
                    None
                } else {
                    Some(Ok(Entry { key, ..e }))
                }
            }
            Err(e) => Some(Err(
                e.context(format_args!("querying datastore at {prefix}")),
            )),
        }));
        if sort_here {
            let sort_only = Query {
                orders: master.orders.clone(),
                ..Query::default()
            };
            Ok(query::naive_apply(&sort_only, stream, false))
        } else {
            Ok(stream)
        }
    }
}

impl fmt::Debug for MountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountStore")
            .field(
                "mounts",
                &self.mounts.iter().map(|m| &m.prefix).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Joins the errors of several children into one: `Ok` when there are none, the error itself
/// when there is one, otherwise an error of the first one's kind whose message lists them all.
fn join_errors(errors: Vec<Error>) -> Result<()> {
    let mut errors = errors.into_iter();
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let rest: Vec<Error> = errors.collect();
    if rest.is_empty() {
        return Err(first);
    }
    let mut message = first.to_string();
    for e in &rest {
        message.push_str("; ");
        message.push_str(&e.to_string());
    }
    Err(Error::new(first.kind(), message))
}

/// The head of one child's stream in the merge heap.
struct Head {
    entry: Entry,
    child: usize,
    orders: Arc<[Order]>,
}

impl Ord for Head {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the entry that comes first. Equal
    /// entries (the same key from two children, which masking rules out) go by child index.
    fn cmp(&self, other: &Head) -> Ordering {
        query::compare_entries(&self.orders, &other.entry, &self.entry)
            .then_with(|| other.child.cmp(&self.child))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// A lazy k-way merge of ordered child streams. A child is read only when its previous head has
/// been handed out and the caller asks for more; an exhausted child is dropped at once.
struct Merge {
    children: Vec<Option<EntryIter>>,
    /// Children whose next head must be read before the heap may be popped.
    pending: Vec<usize>,
    heap: BinaryHeap<Head>,
    orders: Arc<[Order]>,
}

impl Merge {
    fn new(children: Vec<EntryIter>, orders: Arc<[Order]>) -> Merge {
        let n = children.len();
        Merge {
            children: children.into_iter().map(Some).collect(),
            pending: (0..n).rev().collect(),
            heap: BinaryHeap::with_capacity(n),
            orders,
        }
    }
}

impl Iterator for Merge {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        while let Some(&child) = self.pending.last() {
            let next = match self.children.get_mut(child) {
                Some(Some(stream)) => stream.next(),
                _ => None,
            };
            match next {
                Some(Ok(entry)) => {
                    self.pending.pop();
                    self.heap.push(Head {
                        entry,
                        child,
                        orders: self.orders.clone(),
                    });
                }
                // The child stays pending: its next item is read on the next call.
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.pending.pop();
                    if let Some(slot) = self.children.get_mut(child) {
                        *slot = None;
                    }
                }
            }
        }
        let head = self.heap.pop()?;
        self.pending.push(head.child);
        Some(Ok(head.entry))
    }
}

impl Datastore for MountStore {
    fn get(&self, key: &Key) -> Result<Vec<u8>> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.get(&k),
            None => Err(Error::not_found()),
        }
    }

    fn has(&self, key: &Key) -> Result<bool> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.has(&k),
            None => Ok(false),
        }
    }

    fn get_size(&self, key: &Key) -> Result<u64> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.get_size(&k),
            None => Err(Error::not_found()),
        }
    }

    fn read_at(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.read_at(&k, offset, buf),
            None => Err(Error::not_found()),
        }
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.put(&k, value),
            None => Err(self.no_mount(key)),
        }
    }

    fn delete(&self, key: &Key) -> Result<()> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.delete(&k),
            None => Ok(()),
        }
    }

    fn query(&self, q: Query) -> Result<Results> {
        let prefix = q.prefix_key().unwrap_or_else(Key::root);
        let mut streams = Vec::new();
        let mut mounted_at_prefix = false;
        for m in self.at_or_below(&prefix) {
            mounted_at_prefix |= m.prefix == prefix;
            streams.push(self.child_stream(m, Key::root(), &q)?);
        }
        if !mounted_at_prefix && let Some((_, m, rest)) = self.lookup(&prefix) {
            streams.push(self.child_stream(m, rest, &q)?);
        }
        let merged = Merge::new(streams, q.orders.clone().into());
        // The merge is already in the query's order: apply the rest without sorting again.
        let rest = Query {
            prefix: q.prefix.clone(),
            filters: q.filters.clone(),
            orders: Vec::new(),
            limit: q.limit,
            offset: q.offset,
            keys_only: q.keys_only,
            returns_sizes: q.returns_sizes,
        };
        let it = query::naive_apply(&rest, Box::new(merged), false);
        Ok(Results::new(q, it))
    }

    fn sync(&self, prefix: &Key) -> Result<()> {
        let mut errors = Vec::new();
        for m in self.at_or_below(prefix) {
            if let Err(e) = m.store.sync(&Key::root()) {
                errors.push(e.context(format_args!("syncing datastore at {}", m.prefix)));
            }
        }
        if let Some((_, m, rest)) = self.lookup(prefix)
            && let Err(e) = m.store.sync(&rest)
        {
            errors.push(e.context(format_args!("syncing datastore at {}", m.prefix)));
        }
        join_errors(errors)
    }

    fn close(&self) -> Result<()> {
        let errors = self
            .mounts
            .iter()
            .filter_map(|m| {
                m.store
                    .close()
                    .err()
                    .map(|e| e.context(format_args!("closing datastore at {}", m.prefix)))
            })
            .collect();
        join_errors(errors)
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities {
            ordered_scan: true,
            ranged_read: true,
            atomic_put: true,
            atomic_batch: self.mounts.len() <= 1,
            durable_put: true,
            persistent: true,
            general_keys: false,
            file_backed: false,
            atomic_rename: true,
            cheap_rename: true,
            max_value_size: None,
            max_key_len: None,
        };
        for m in &self.mounts {
            let k = m.store.capabilities();
            c.ordered_scan &= k.ordered_scan;
            c.ranged_read &= k.ranged_read;
            c.atomic_put &= k.atomic_put;
            c.atomic_batch &= k.atomic_batch;
            c.durable_put &= k.durable_put;
            c.atomic_rename &= k.atomic_rename;
            c.cheap_rename &= k.cheap_rename;
            c.persistent &= k.persistent;
            c.file_backed |= k.file_backed;
            c.max_value_size = match (c.max_value_size, k.max_value_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if m.prefix.is_root() {
                c.general_keys = k.general_keys;
                c.max_key_len = k.max_key_len;
            }
        }
        if self.mounts.len() > 1 {
            // A rename across children copies the value and then deletes it.
            c.atomic_rename = false;
            c.cheap_rename = false;
        }
        c
    }

    fn batch(&self) -> Result<Box<dyn Batch + '_>> {
        Ok(Box::new(MountBatch {
            store: self,
            batches: self.mounts.iter().map(|_| None).collect(),
        }))
    }

    /// Splits the operations by mount and hands each child its share in one `apply_batch`, so a
    /// child with `atomic_batch` applies its share atomically. Fails with `NoMount` before
    /// applying anything if a put has no mount; deletes without a mount are dropped.
    fn apply_batch(&self, ops: BatchOps) -> Result<()> {
        let mut per_mount: BTreeMap<usize, BatchOps> = BTreeMap::new();
        for (key, op) in ops {
            match self.lookup(&key) {
                Some((i, _, child_key)) => {
                    per_mount.entry(i).or_default().insert(child_key, op);
                }
                None if op.is_some() => return Err(self.no_mount(&key)),
                None => {}
            }
        }
        let mut errors = Vec::new();
        for (i, ops) in per_mount {
            if let Some(m) = self.mounts.get(i)
                && let Err(e) = m.store.apply_batch(ops)
            {
                errors.push(e.context(format_args!(
                    "committing batch to datastore at {}",
                    m.prefix
                )));
            }
        }
        join_errors(errors)
    }

    fn disk_usage(&self) -> Result<Option<u64>> {
        let mut total: Option<u64> = None;
        let mut errors = Vec::new();
        for m in &self.mounts {
            match m.store.disk_usage() {
                Ok(Some(n)) => total = Some(total.unwrap_or(0).saturating_add(n)),
                Ok(None) => {}
                Err(e) => errors.push(e.context(format_args!(
                    "getting disk usage of datastore at {}",
                    m.prefix
                ))),
            }
        }
        join_errors(errors)?;
        Ok(total)
    }

    fn stage(&self, key: &Key, init: StageInit) -> Result<Staged> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.stage(&k, init),
            None => Err(self.no_mount(key)),
        }
    }

    fn commit_staged(&self, key: &Key, staged: Staged, durable: bool) -> Result<()> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.commit_staged(&k, staged, durable),
            None => Err(self.no_mount(key)),
        }
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<()> {
        let src = self.lookup(from).ok_or_else(Error::not_found)?;
        let dst = self.lookup(to).ok_or_else(|| self.no_mount(to))?;
        if std::ptr::eq(src.1, dst.1) {
            // One child holds both keys: let it move the value (atomically, if it can).
            return src.1.store.rename(&src.2, &dst.2);
        }
        // Across children: copy through the source child's staging, then delete.
        if !src.1.store.has(&src.2)? {
            return Err(Error::not_found());
        }
        let from_stage = src.1.store.stage(&src.2, StageInit::CopyCurrent)?;
        let to_stage = dst.1.store.stage(&dst.2, StageInit::Empty)?;
        from_stage.write_to(&mut to_stage.file()?)?;
        dst.1.store.commit_staged(&dst.2, to_stage, false)?;
        src.1.store.delete(&src.2)
    }

    /// Delegated when one child holds both keys; across children nothing can swap two values
    /// atomically, so it is [`ErrorKind::Unsupported`].
    fn exchange(&self, a: &Key, b: &Key) -> Result<()> {
        let ma = self.lookup(a).ok_or_else(Error::not_found)?;
        let mb = self.lookup(b).ok_or_else(Error::not_found)?;
        if std::ptr::eq(ma.1, mb.1) {
            return ma.1.store.exchange(&ma.2, &mb.2);
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{a} and {b} are in different stores; they cannot be swapped atomically"),
        ))
    }

    fn scrub(&self, repair: bool) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for m in &self.mounts {
            for p in m.store.scrub(repair)? {
                all.push(format!("{}: {p}", m.prefix));
            }
        }
        Ok(all)
    }

    fn verify(&self, repair: bool) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for m in &self.mounts {
            for p in m.store.verify(repair)? {
                all.push(format!("{}: {p}", m.prefix));
            }
        }
        Ok(all)
    }

    /// The space of the child mounted at `/`, where keys outside every other mount go.
    fn space(&self) -> Result<Option<crate::datastore::Space>> {
        match self.mounts.iter().find(|m| m.prefix.is_root()) {
            Some(m) => m.store.space(),
            None => Ok(None),
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.mounts
            .iter()
            .find(|m| m.prefix.is_root())
            .map(|m| m.store.staging_dir())
            .unwrap_or_else(std::env::temp_dir)
    }

    fn backing_file(&self, key: &Key) -> Result<Option<PathBuf>> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.backing_file(&k),
            None => Ok(None),
        }
    }

    fn open_backing(&self, key: &Key) -> Result<Option<std::fs::File>> {
        match self.lookup(key) {
            Some((_, m, k)) => m.store.open_backing(&k),
            None => Ok(None),
        }
    }

    /// `mount(PREFIX=IDENTITY;...)`, `-` for a child without an identity; `None` when no child
    /// has one.
    fn identity(&self) -> Result<Option<String>> {
        let mut parts = Vec::new();
        let mut any = false;
        for m in self.mounts.iter().rev() {
            let id = m.store.identity()?;
            any |= id.is_some();
            parts.push(format!("{}={}", m.prefix, id.as_deref().unwrap_or("-")));
        }
        Ok(any.then(|| format!("mount({})", parts.join(";"))))
    }

    /// Values under `key` are shared if the child holding `key` shares them, or if a child
    /// mounted at `key` itself shares its own: the directory `/blocks` of a default repository
    /// lists the values others add to its flatfs child.
    fn shared(&self, key: &Key) -> bool {
        let routed = match self.lookup(key) {
            Some((_, m, k)) => m.store.shared(&k),
            None => false,
        };
        routed
            || self
                .mounts
                .iter()
                .any(|m| m.prefix == *key && m.store.shared(&Key::root()))
    }

    /// The children's segments, each named by the mount prefix's length, `:`, the prefix and
    /// the child's segment name.
    fn segments(&self) -> Result<Option<Vec<crate::datastore::Segment>>> {
        let mut out = Vec::new();
        let mut any = false;
        for m in &self.mounts {
            if let Some(segs) = m.store.segments()? {
                any = true;
                out.extend(segs.into_iter().map(|s| crate::datastore::Segment {
                    name: segment_name(&m.prefix, &s.name),
                    ..s
                }));
            }
        }
        Ok(any.then_some(out))
    }

    fn partly_segmented(&self) -> Result<bool> {
        let mut with = false;
        let mut without = false;
        for m in &self.mounts {
            if m.store.segments()?.is_some() && !m.store.partly_segmented()? {
                with = true;
            } else {
                without = true;
            }
        }
        Ok(with && without)
    }

    fn segment_of(&self, key: &Key) -> Option<String> {
        let (_, m, k) = self.lookup(key)?;
        let seg = m.store.segment_of(&k)?;
        Some(segment_name(&m.prefix, &seg))
    }

    fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        let Some((prefix, seg)) = split_segment_name(segment) else {
            return Ok(Vec::new());
        };
        let Some(m) = self.mounts.iter().find(|m| m.prefix.as_str() == prefix) else {
            return Ok(Vec::new());
        };
        let holes = self.holes(m);
        let keys = m.store.segment_keys(seg)?;
        Ok(keys
            .into_iter()
            .map(|(k, size)| (m.prefix.child(&k), size))
            .filter(|(k, _)| !holes.iter().any(|h| h.is_ancestor_of(k)))
            .collect())
    }
}

/// The name of the segment `seg` of the store mounted at `prefix`: the prefix's length, `:`,
/// the prefix, then the child's name, so that any prefix and name split back apart.
fn segment_name(prefix: &Key, seg: &str) -> String {
    format!("{}:{}{seg}", prefix.as_str().len(), prefix.as_str())
}

fn split_segment_name(name: &str) -> Option<(&str, &str)> {
    let (len, rest) = name.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

/// A batch over a [`MountStore`]: one child batch per mount, created on first use.
struct MountBatch<'a> {
    store: &'a MountStore,
    /// Indexed like `store.mounts`.
    batches: Vec<Option<Box<dyn Batch + 'a>>>,
}

impl<'a> MountBatch<'a> {
    /// The child batch for `key` (created if needed) and the child key; `None` without a mount.
    fn child(&mut self, key: &Key) -> Result<Option<(&mut Box<dyn Batch + 'a>, Key)>> {
        let store: &'a MountStore = self.store;
        let Some((i, m, child_key)) = store.lookup(key) else {
            return Ok(None);
        };
        let Some(slot) = self.batches.get_mut(i) else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "mount batch out of step with its store",
            ));
        };
        let batch = match slot.take() {
            Some(b) => b,
            None => m.store.batch().map_err(|e| {
                e.context(format_args!(
                    "starting a batch on datastore at {}",
                    m.prefix
                ))
            })?,
        };
        Ok(Some((slot.insert(batch), child_key)))
    }
}

impl Batch for MountBatch<'_> {
    fn put(&mut self, key: Key, value: Vec<u8>) -> Result<()> {
        match self.child(&key)? {
            Some((batch, child_key)) => batch.put(child_key, value),
            None => Err(self.store.no_mount(&key)),
        }
    }

    fn delete(&mut self, key: Key) -> Result<()> {
        match self.child(&key)? {
            Some((batch, child_key)) => batch.delete(child_key),
            None => Ok(()),
        }
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let store = self.store;
        let mut errors = Vec::new();
        for (m, batch) in store.mounts.iter().zip(self.batches) {
            if let Some(batch) = batch
                && let Err(e) = batch.commit()
            {
                errors.push(e.context(format_args!(
                    "committing batch to datastore at {}",
                    m.prefix
                )));
            }
        }
        join_errors(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;
    use crate::datastore::{Filter, Op};
    use parking_lot::Mutex;

    /// A MemStore that records the prefixes it is synced with and can be told to fail.
    struct Probe {
        inner: MemStore,
        syncs: Mutex<Vec<Key>>,
        fail: Option<ErrorKind>,
        caps: Capabilities,
        usage: Option<u64>,
    }

    impl Probe {
        fn new() -> Probe {
            Probe {
                inner: MemStore::new(),
                syncs: Mutex::new(Vec::new()),
                fail: None,
                caps: Capabilities::memory(),
                usage: None,
            }
        }

        fn failing(kind: ErrorKind) -> Probe {
            Probe {
                fail: Some(kind),
                ..Probe::new()
            }
        }

        fn check(&self) -> Result<()> {
            match self.fail {
                Some(kind) => Err(Error::new(kind, "probe failure")),
                None => Ok(()),
            }
        }

        fn synced(&self) -> Vec<Key> {
            self.syncs.lock().clone()
        }
    }

    impl Datastore for Probe {
        fn get(&self, key: &Key) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn has(&self, key: &Key) -> Result<bool> {
            self.inner.has(key)
        }
        fn get_size(&self, key: &Key) -> Result<u64> {
            self.inner.get_size(key)
        }
        fn put(&self, key: &Key, value: &[u8]) -> Result<()> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &Key) -> Result<()> {
            self.inner.delete(key)
        }
        fn query(&self, q: Query) -> Result<Results> {
            self.check()?;
            self.inner.query(q)
        }
        fn sync(&self, prefix: &Key) -> Result<()> {
            self.syncs.lock().push(prefix.clone());
            self.check()
        }
        fn close(&self) -> Result<()> {
            self.inner.close()?;
            self.check()
        }
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn apply_batch(&self, ops: BatchOps) -> Result<()> {
            self.check()?;
            self.inner.apply_batch(ops)
        }
        fn disk_usage(&self) -> Result<Option<u64>> {
            self.check()?;
            Ok(self.usage)
        }
    }

    fn k(s: &str) -> Key {
        Key::new(s)
    }

    fn mem() -> Arc<MemStore> {
        Arc::new(MemStore::new())
    }

    fn keys(ds: &dyn Datastore, q: Query) -> Vec<String> {
        ds.query(q)
            .unwrap()
            .map(|r| r.unwrap().key.into_string())
            .collect()
    }

    #[test]
    fn duplicate_prefixes_are_rejected_even_when_spelled_differently() {
        let err = MountStore::new(vec![(k("/a/"), mem() as _), (k("/a"), mem() as _)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(MountStore::new(vec![(k("/a"), mem() as _), (k("/b"), mem() as _)]).is_ok());
        assert!(MountStore::new(Vec::new()).is_ok());
    }

    #[test]
    fn mounts_are_kept_in_descending_prefix_order() {
        let m = MountStore::new(vec![
            (k("/"), mem() as _),
            (k("/a"), mem() as _),
            (k("/a/b"), mem() as _),
            (k("/b"), mem() as _),
        ])
        .unwrap();
        let order: Vec<&str> = m.mounts().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["/b", "/a/b", "/a", "/"]);
        assert_eq!(
            format!("{m:?}"),
            r#"MountStore { mounts: [Key("/b"), Key("/a/b"), Key("/a"), Key("/")] }"#
        );
    }

    #[test]
    fn a_key_equal_to_a_mount_point_lives_in_the_parent() {
        let root = mem();
        let blocks = mem();
        let m = MountStore::new(vec![
            (k("/blocks"), blocks.clone() as _),
            (k("/"), root.clone() as _),
        ])
        .unwrap();
        m.put(&k("/blocks"), b"parent").unwrap();
        m.put(&k("/blocks/CIQX"), b"block").unwrap();
        m.put(&k("/blocksX"), b"sibling").unwrap();
        assert_eq!(root.get(&k("/blocks")).unwrap(), b"parent");
        assert_eq!(root.get(&k("/blocksX")).unwrap(), b"sibling");
        assert_eq!(blocks.get(&k("/CIQX")).unwrap(), b"block");
        assert_eq!(root.len(), 2);
        assert_eq!(blocks.len(), 1);
        assert_eq!(m.get(&k("/blocks")).unwrap(), b"parent");
        assert_eq!(m.get(&k("/blocks/CIQX")).unwrap(), b"block");

        let (p, _, child) = m.route(&k("/blocks")).unwrap();
        assert_eq!((p.as_str(), child.as_str()), ("/", "/blocks"));
        let (p, _, child) = m.route(&k("/blocks/CIQX/deeper")).unwrap();
        assert_eq!((p.as_str(), child.as_str()), ("/blocks", "/CIQX/deeper"));
        // The root key is below no mount, not even `/`.
        assert!(m.route(&Key::root()).is_none());
        assert_eq!(
            m.put(&Key::root(), b"x").unwrap_err().kind(),
            ErrorKind::NoMount
        );
    }

    #[test]
    fn nested_mounts_route_to_the_deepest_strict_ancestor() {
        let a = mem();
        let ab = mem();
        let m = MountStore::new(vec![
            (k("/a"), a.clone() as _),
            (k("/a/b"), ab.clone() as _),
        ])
        .unwrap();
        for (key, mount, child) in [
            ("/a/b", "/a", "/b"),
            ("/a/bc", "/a", "/bc"),
            ("/a/b-c/d", "/a", "/b-c/d"),
            ("/a/b/c", "/a/b", "/c"),
            ("/a/b/c/d", "/a/b", "/c/d"),
        ] {
            let (p, _, c) = m.route(&k(key)).unwrap();
            assert_eq!((p.as_str(), c.as_str()), (mount, child), "{key}");
            m.put(&k(key), key.as_bytes()).unwrap();
        }
        assert_eq!(a.len(), 3);
        assert_eq!(ab.len(), 2);
        assert!(ab.has(&k("/c/d")).unwrap());
        assert!(m.route(&k("/a")).is_none());
        assert!(m.route(&k("/ab")).is_none());
        assert!(m.route(&k("/b/c")).is_none());
        for key in ["/a/b", "/a/bc", "/a/b-c/d", "/a/b/c", "/a/b/c/d"] {
            assert_eq!(m.get(&k(key)).unwrap(), key.as_bytes());
        }
    }

    #[test]
    fn every_operation_without_a_mount() {
        let child = mem();
        let m = MountStore::new(vec![(k("/a"), child.clone() as _)]).unwrap();
        for key in ["/b", "/a", "/", "/ab/c"] {
            let key = k(key);
            assert_eq!(m.get(&key).unwrap_err().kind(), ErrorKind::NotFound);
            assert!(!m.has(&key).unwrap());
            assert_eq!(m.get_size(&key).unwrap_err().kind(), ErrorKind::NotFound);
            let mut buf = [0u8; 4];
            assert_eq!(
                m.read_at(&key, 0, &mut buf).unwrap_err().kind(),
                ErrorKind::NotFound
            );
            assert!(m.delete(&key).is_ok());
            assert_eq!(m.put(&key, b"v").unwrap_err().kind(), ErrorKind::NoMount);
            assert_eq!(
                m.stage(&key, StageInit::Empty).unwrap_err().kind(),
                ErrorKind::NoMount
            );
            let staged = Staged::anonymous(&std::env::temp_dir()).unwrap();
            assert_eq!(
                m.commit_staged(&key, staged, false).unwrap_err().kind(),
                ErrorKind::NoMount
            );
            assert_eq!(m.backing_file(&key).unwrap(), None);
            let mut b = m.batch().unwrap();
            assert_eq!(
                b.put(key.clone(), b"v".to_vec()).unwrap_err().kind(),
                ErrorKind::NoMount
            );
            b.delete(key.clone()).unwrap();
            b.commit().unwrap();
        }
        assert!(child.is_empty());
        // The refusal says where the stores are, and what the root key's problem is.
        let two = MountStore::new(vec![
            (k("/a"), child.clone() as _),
            (k("/blocks"), Arc::new(MemStore::new()) as _),
        ])
        .unwrap();
        let root = two.put(&k("/"), b"v").unwrap_err().to_string();
        assert!(
            root.contains("root key / cannot hold a value") && root.contains("(/a, /blocks)"),
            "{root}"
        );
        let other = two.put(&k("/b"), b"v").unwrap_err().to_string();
        assert!(
            other.contains("key /b: stores are mounted at /a, /blocks"),
            "{other}"
        );
        // Queries simply see nothing outside the mounts.
        assert!(keys(&m, Query::prefix("/b")).is_empty());
        m.put(&k("/a/x"), b"1").unwrap();
        assert_eq!(keys(&m, Query::default()), ["/a/x"]);
        assert!(keys(&m, Query::prefix("/ab")).is_empty());
        // apply_batch refuses the whole batch before applying any of it.
        let mut ops = BatchOps::new();
        ops.insert(k("/a/y"), Some(b"2".to_vec()));
        ops.insert(k("/b"), Some(b"3".to_vec()));
        assert_eq!(m.apply_batch(ops).unwrap_err().kind(), ErrorKind::NoMount);
        assert!(!m.has(&k("/a/y")).unwrap());
        let mut ops = BatchOps::new();
        ops.insert(k("/a/y"), Some(b"2".to_vec()));
        ops.insert(k("/b"), None);
        m.apply_batch(ops).unwrap();
        assert!(m.has(&k("/a/y")).unwrap());
        // A store with no mounts at all.
        let empty = MountStore::new(Vec::new()).unwrap();
        assert_eq!(
            empty.put(&k("/x"), b"").unwrap_err().kind(),
            ErrorKind::NoMount
        );
        assert!(keys(&empty, Query::default()).is_empty());
        empty.sync(&Key::root()).unwrap();
        empty.close().unwrap();
        assert_eq!(empty.disk_usage().unwrap(), None);
    }

    #[test]
    fn reads_and_staging_go_to_the_covering_child() {
        let root = mem();
        let data = mem();
        let m = MountStore::new(vec![
            (k("/"), root.clone() as _),
            (k("/data"), data.clone() as _),
        ])
        .unwrap();
        m.put(&k("/data/file"), b"hello world").unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(m.read_at(&k("/data/file"), 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"world");
        assert_eq!(m.get_size(&k("/data/file")).unwrap(), 11);
        let staged = m.stage(&k("/data/file"), StageInit::CopyCurrent).unwrap();
        staged.write_all_at(0, b"HELLO").unwrap();
        m.commit_staged(&k("/data/file"), staged, true).unwrap();
        assert_eq!(data.get(&k("/file")).unwrap(), b"HELLO world");
        let staged = m.stage(&k("/data/new"), StageInit::CopyCurrent).unwrap();
        assert!(staged.is_empty().unwrap());
        staged.write_all_at(0, b"n").unwrap();
        m.commit_staged(&k("/data/new"), staged, false).unwrap();
        assert_eq!(data.get(&k("/new")).unwrap(), b"n");
        assert!(root.is_empty());
        assert_eq!(m.backing_file(&k("/data/file")).unwrap(), None);
        assert_eq!(m.staging_dir(), root.staging_dir());
    }

    #[test]
    fn sync_reaches_every_mount_below_and_the_one_holding_the_prefix() {
        let root = Arc::new(Probe::new());
        let foo = Arc::new(Probe::new());
        let foobar = Arc::new(Probe::new());
        let other = Arc::new(Probe::new());
        let m = MountStore::new(vec![
            (k("/"), root.clone() as _),
            (k("/foo"), foo.clone() as _),
            (k("/foo/bar"), foobar.clone() as _),
            (k("/other"), other.clone() as _),
        ])
        .unwrap();
        let clear = || {
            for p in [&root, &foo, &foobar, &other] {
                p.syncs.lock().clear();
            }
        };
        let strs =
            |p: &Probe| -> Vec<String> { p.synced().into_iter().map(Key::into_string).collect() };

        m.sync(&k("/foo")).unwrap();
        assert_eq!(strs(&foo), ["/"]);
        assert_eq!(strs(&foobar), ["/"]);
        assert_eq!(strs(&root), ["/foo"], "the key /foo itself lives in /");
        assert!(strs(&other).is_empty());
        clear();

        m.sync(&k("/foo/x/y")).unwrap();
        assert_eq!(strs(&foo), ["/x/y"]);
        assert!(strs(&foobar).is_empty() && strs(&root).is_empty() && strs(&other).is_empty());
        clear();

        m.sync(&k("/foo/bar/z")).unwrap();
        assert_eq!(strs(&foobar), ["/z"]);
        assert!(strs(&foo).is_empty() && strs(&root).is_empty());
        clear();

        m.sync(&k("/fwop")).unwrap();
        assert_eq!(strs(&root), ["/fwop"]);
        assert!(strs(&foo).is_empty() && strs(&foobar).is_empty() && strs(&other).is_empty());
        clear();

        m.sync(&Key::root()).unwrap();
        for p in [&root, &foo, &foobar, &other] {
            assert_eq!(strs(p), ["/"]);
        }
    }

    #[test]
    fn sync_close_and_disk_usage_join_the_errors_of_every_child() {
        let ok = Arc::new(Probe {
            usage: Some(5),
            ..Probe::new()
        });
        let bad1 = Arc::new(Probe::failing(ErrorKind::Io));
        let bad2 = Arc::new(Probe::failing(ErrorKind::NoSpace));
        let m = MountStore::new(vec![
            (k("/"), ok.clone() as _),
            (k("/x"), bad1.clone() as _),
            (k("/y"), bad2.clone() as _),
        ])
        .unwrap();
        let err = m.sync(&Key::root()).unwrap_err();
        // Every child was tried, including the ones after a failure.
        assert_eq!(ok.synced().len(), 1);
        assert_eq!(bad1.synced().len(), 1);
        assert_eq!(bad2.synced().len(), 1);
        // Mounts are visited deepest-string-first: /y, /x, /.
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        let msg = err.to_string();
        assert!(
            msg.contains("syncing datastore at /y") && msg.contains("syncing datastore at /x"),
            "{msg}"
        );
        // One failing child: its error comes back as it is, with context.
        let err = m.sync(&k("/x/q")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().starts_with("syncing datastore at /x: "),
            "{err}"
        );
        m.sync(&k("/z")).unwrap();

        let err = m.close().unwrap_err();
        assert!(err.to_string().contains("closing datastore at /x"), "{err}");
        assert_eq!(ok.put(&k("/a"), b"").unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(m.disk_usage().unwrap_err().kind(), ErrorKind::NoSpace);

        assert!(join_errors(Vec::new()).is_ok());
    }

    #[test]
    fn a_failing_child_query_fails_the_query() {
        let m = MountStore::new(vec![
            (k("/"), mem() as _),
            (k("/foo"), Arc::new(Probe::failing(ErrorKind::Io)) as _),
        ])
        .unwrap();
        m.put(&k("/baz"), b"1").unwrap();
        let err = m.query(Query::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().contains("querying datastore at /foo"),
            "{err}"
        );
        // A query that does not reach the failing child works.
        assert_eq!(keys(&m, Query::prefix("/baz")), Vec::<String>::new());
        assert_eq!(
            keys(
                &m,
                Query {
                    filters: vec![],
                    ..Query::prefix("/b")
                }
            ),
            Vec::<String>::new()
        );
    }

    /// A store whose query yields a fixed list of results, errors included.
    struct Scripted(Vec<std::result::Result<&'static str, ErrorKind>>);

    impl Datastore for Scripted {
        fn get(&self, _: &Key) -> Result<Vec<u8>> {
            Err(Error::not_found())
        }
        fn has(&self, _: &Key) -> Result<bool> {
            Ok(false)
        }
        fn get_size(&self, _: &Key) -> Result<u64> {
            Err(Error::not_found())
        }
        fn put(&self, _: &Key, _: &[u8]) -> Result<()> {
            Err(Error::new(ErrorKind::ReadOnly, "scripted"))
        }
        fn delete(&self, _: &Key) -> Result<()> {
            Ok(())
        }
        fn query(&self, q: Query) -> Result<Results> {
            let items: Vec<Result<Entry>> = self
                .0
                .iter()
                .map(|r| match r {
                    Ok(key) => Ok(Entry::key_only(Key::new(key), Some(1))),
                    Err(kind) => Err(Error::new(*kind, "scripted error")),
                })
                .collect();
            Ok(Results::new(q, items.into_iter()))
        }
        fn sync(&self, _: &Key) -> Result<()> {
            Ok(())
        }
        fn close(&self) -> Result<()> {
            Ok(())
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::memory()
        }
    }

    #[test]
    fn stream_errors_are_passed_on_in_place_and_the_merge_goes_on() {
        let m = MountStore::new(vec![
            (
                k("/"),
                Arc::new(Scripted(vec![Ok("/a"), Ok("/c"), Ok("/e")])) as _,
            ),
            (
                k("/s"),
                Arc::new(Scripted(vec![Ok("/1"), Err(ErrorKind::Io), Ok("/2")])) as _,
            ),
        ])
        .unwrap();
        let out: Vec<std::result::Result<String, ErrorKind>> = m
            .query(Query {
                orders: vec![Order::Key],
                ..Query::default()
            })
            .unwrap()
            .map(|r| r.map(|e| e.key.into_string()).map_err(|e| e.kind()))
            .collect();
        assert_eq!(
            out,
            [
                Ok("/a".to_string()),
                Ok("/c".to_string()),
                Ok("/e".to_string()),
                Ok("/s/1".to_string()),
                Err(ErrorKind::Io),
                Ok("/s/2".to_string()),
            ]
        );
        // `rest` stops at the error.
        let err = m.query(Query::default()).unwrap().rest().unwrap_err();
        assert!(
            err.to_string().contains("querying datastore at /s"),
            "{err}"
        );
    }

    #[test]
    fn keys_hidden_under_a_deeper_mount_are_masked() {
        let root = mem();
        let a = mem();
        let m =
            MountStore::new(vec![(k("/"), root.clone() as _), (k("/a"), a.clone() as _)]).unwrap();
        // Written straight into the root child: unreachable through the mount.
        root.put(&k("/a/hidden"), b"h").unwrap();
        root.put(&k("/a"), b"visible: the mount point itself")
            .unwrap();
        m.put(&k("/a/seen"), b"s").unwrap();
        m.put(&k("/b"), b"b").unwrap();
        assert!(!m.has(&k("/a/hidden")).unwrap());
        assert_eq!(keys(&m, Query::default()), ["/a", "/a/seen", "/b"]);
        assert_eq!(keys(&m, Query::prefix("/a")), ["/a/seen"]);
        let desc = Query {
            orders: vec![Order::KeyDescending],
            ..Query::default()
        };
        assert_eq!(keys(&m, desc), ["/b", "/a/seen", "/a"]);
    }

    #[test]
    fn function_orders_see_whole_keys_below_non_root_mounts() {
        let m = MountStore::new(vec![
            (k("/"), mem() as _),
            (k("/m"), mem() as _),
            (k("/n/o"), mem() as _),
        ])
        .unwrap();
        let all = [
            "/z",
            "/m/zz",
            "/m/a",
            "/n/o/b",
            "/n/o/yyyy",
            "/n/p",
            "/aaaaaa",
            "/m",
        ];
        for key in all {
            m.put(&k(key), key.as_bytes()).unwrap();
        }
        // Keys starting with `/m/z` first, then (tie-break) by key. A child seeing `/zz` for
        // `/m/zz` would find no such key and sort by key alone.
        let m_z_first = Order::function(|a: &Entry, b: &Entry| {
            let first = |e: &Entry| e.key.as_str().starts_with("/m/z");
            first(b).cmp(&first(a))
        });
        let q = Query {
            orders: vec![m_z_first],
            filters: vec![Filter::KeyCompare {
                op: Op::NotEqual,
                key: "/n/p".into(),
            }],
            ..Query::default()
        };
        let got = keys(&m, q.clone());
        let union: Vec<Result<Entry>> = all
            .iter()
            .map(|s| Ok(Entry::with_value(k(s), s.as_bytes().to_vec())))
            .collect();
        let want: Vec<String> = query::naive_apply(&q, Box::new(union.into_iter()), false)
            .map(|r| r.unwrap().key.into_string())
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            got,
            [
                "/m/zz",
                "/aaaaaa",
                "/m",
                "/m/a",
                "/n/o/b",
                "/n/o/yyyy",
                "/z"
            ]
        );
    }

    #[test]
    fn capabilities_are_the_conservative_combination() {
        let probe = |f: &dyn Fn(&mut Capabilities)| {
            let mut p = Probe::new();
            f(&mut p.caps);
            Arc::new(p) as Arc<dyn Datastore>
        };
        let single = MountStore::new(vec![(k("/"), mem() as _)]).unwrap();
        assert_eq!(single.capabilities(), Capabilities::memory());

        let two = MountStore::new(vec![(k("/"), mem() as _), (k("/x"), mem() as _)]).unwrap();
        let c = two.capabilities();
        assert!(!c.atomic_batch, "a batch may span two children");
        assert!(c.ordered_scan && c.general_keys && c.atomic_put);

        let flat = probe(&|c| {
            c.ordered_scan = false;
            c.general_keys = false;
            c.file_backed = true;
            c.persistent = true;
            c.durable_put = true;
            c.max_value_size = Some(10);
        });
        let m = MountStore::new(vec![(k("/"), mem() as _), (k("/blocks"), flat.clone())]).unwrap();
        let c = m.capabilities();
        assert!(!c.ordered_scan);
        assert!(c.general_keys, "the / child is general");
        assert!(c.file_backed);
        assert!(!c.persistent && !c.durable_put);
        assert_eq!(c.max_value_size, Some(10));

        let no_root = MountStore::new(vec![(k("/a"), mem() as _)]).unwrap();
        assert!(!no_root.capabilities().general_keys);
        let flat_root = MountStore::new(vec![
            (k("/"), flat),
            (k("/x"), probe(&|c| c.max_value_size = Some(3))),
        ])
        .unwrap();
        let c = flat_root.capabilities();
        assert!(!c.general_keys);
        assert_eq!(c.max_value_size, Some(3));
    }

    #[test]
    fn batches_commit_one_child_batch_per_mount() {
        let root = mem();
        let x = mem();
        let m =
            MountStore::new(vec![(k("/"), root.clone() as _), (k("/x"), x.clone() as _)]).unwrap();
        m.put(&k("/x/old"), b"old").unwrap();
        let mut b = m.batch().unwrap();
        b.put(k("/a"), vec![1]).unwrap();
        b.put(k("/x/a"), vec![2]).unwrap();
        b.delete(k("/x/old")).unwrap();
        b.delete(k("/a")).unwrap();
        b.put(k("/x/a"), vec![3]).unwrap();
        b.put(k("/x"), vec![4]).unwrap();
        // Nothing is visible before commit.
        assert!(!m.has(&k("/x/a")).unwrap() && !m.has(&k("/x")).unwrap());
        assert!(m.has(&k("/x/old")).unwrap());
        b.commit().unwrap();
        assert!(!m.has(&k("/a")).unwrap());
        assert!(!m.has(&k("/x/old")).unwrap());
        assert_eq!(m.get(&k("/x/a")).unwrap(), [3]);
        assert_eq!(x.get(&k("/a")).unwrap(), [3]);
        assert_eq!(root.get(&k("/x")).unwrap(), [4]);
        // An unused batch commits nothing and touches no child.
        m.batch().unwrap().commit().unwrap();
    }

    #[test]
    fn batch_commit_tries_every_child_and_joins_the_errors() {
        let good = mem();
        let bad = Arc::new(Probe::failing(ErrorKind::Io));
        let m = MountStore::new(vec![(k("/"), good.clone() as _), (k("/bad"), bad as _)]).unwrap();
        let mut b = m.batch().unwrap();
        b.put(k("/bad/x"), vec![1]).unwrap();
        b.put(k("/good"), vec![2]).unwrap();
        let err = b.commit().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string()
                .contains("committing batch to datastore at /bad"),
            "{err}"
        );
        // Not atomic across children: the good child's share was applied.
        assert_eq!(good.get(&k("/good")).unwrap(), [2]);
    }
}
