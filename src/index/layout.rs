//! The index's records in one redb table.
//!
//! redb's cost per write commit grows with the number of tables a transaction touched, and a
//! file's create touches nodes, entries, cookies and keys. So every record lives in the one
//! table [`INDEX`] of byte keys and byte values: a key is a one-byte tag naming the kind of
//! record, then the record's own key, encoded so that byte order is the order redb gave the
//! typed key (a `u64` big-endian, a string last as its UTF-8 bytes). Every range the index
//! scans, `(parent, ..)`, `(dir, cookie..)`, key prefixes, `(node, ..)`, is then one byte range.
//! [`View`] and [`ViewMut`] read and write one kind of record with its typed key and value.
//!
//! The format version stays where older versions of dsfs look for it, in a `meta` table of its
//! own; an index in the older layout of seven tables is moved into this one by [`migrate`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Bound;

use redb::{ReadOnlyTable, ReadableTable, StorageError, Table, TableDefinition, WriteTransaction};

use super::node::Node;
use super::{IndexError, IndexResult};

/// The one table of records.
pub(super) const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index");

/// The table that holds only the format version (the name and type of the older layout's
/// `meta` table, which older versions of dsfs read first and refuse on a newer version).
pub(super) const VERSION: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The record of [`VERSION`].
pub(super) const VERSION_KEY: &str = "format_version";

/// The version of this layout. Version 1 was the seven-table layout.
pub(super) const FORMAT_VERSION: u64 = 2;

/// The format version of the seven-table layout.
pub(super) const OLD_FORMAT_VERSION: u64 = 1;

/// One kind of record: its tag and the encoding of its key and value.
pub(super) trait Record {
    /// The first byte of every key of this kind.
    const TAG: u8;
    /// The kind's name, for errors.
    const NAME: &'static str;
    /// The key as callers give it.
    type Key<'a>: Copy;
    /// The value as callers give it.
    type Val<'a>: Copy;
    /// The key as read back.
    type KeyOut;
    /// The value as read back.
    type ValOut;
    /// Appends the key (without the tag).
    fn put_key(k: Self::Key<'_>, out: &mut Vec<u8>);
    /// Appends the value.
    fn put_val(v: Self::Val<'_>, out: &mut Vec<u8>);
    /// Reads a key (without the tag).
    fn read_key(b: &[u8]) -> Option<Self::KeyOut>;
    /// Reads a value.
    fn read_val(b: &[u8]) -> IndexResult<Self::ValOut>;
}

/// The full key of `k`: tag, then the encoded key.
pub(super) fn key_bytes<R: Record>(k: R::Key<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(R::TAG);
    R::put_key(k, &mut out);
    out
}

fn val_bytes<R: Record>(v: R::Val<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    R::put_val(v, &mut out);
    out
}

/// The byte bounds of the typed bounds `lo`, `hi` (unbounded: every record of the kind).
pub(super) fn bounds<R: Record>(
    lo: Bound<R::Key<'_>>,
    hi: Bound<R::Key<'_>>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lo = match lo {
        Bound::Included(k) => Bound::Included(key_bytes::<R>(k)),
        Bound::Excluded(k) => Bound::Excluded(key_bytes::<R>(k)),
        Bound::Unbounded => Bound::Included(vec![R::TAG]),
    };
    let hi = match hi {
        Bound::Included(k) => Bound::Included(key_bytes::<R>(k)),
        Bound::Excluded(k) => Bound::Excluded(key_bytes::<R>(k)),
        Bound::Unbounded => Bound::Excluded(vec![R::TAG + 1]),
    };
    (lo, hi)
}

fn bad<R: Record>(what: &str) -> IndexError {
    IndexError::corrupt(format!("malformed {} {what}", R::NAME))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn str_from(b: &[u8], at: usize) -> Option<String> {
    std::str::from_utf8(b.get(at..)?).ok().map(str::to_owned)
}

/// `meta`: name → u64 (next node id, next cookie, open flag).
pub(super) struct Meta;
/// `nodes`: node id → encoded [`Node`].
pub(super) struct Nodes;
/// `dirents`: (parent, name) → (child, cookie).
pub(super) struct Dirents;
/// `cookies`: (parent, cookie) → (child, name).
pub(super) struct Cookies;
/// `keys`: datastore key → (node, value size).
pub(super) struct Keys;
/// `xattrs`: (node, attribute name) → value.
pub(super) struct Xattrs;
/// `aliases`: (node, parent, name) → nothing.
pub(super) struct Aliases;

impl Record for Meta {
    const TAG: u8 = b'm';
    const NAME: &'static str = "meta";
    type Key<'a> = &'a str;
    type Val<'a> = u64;
    type KeyOut = String;
    type ValOut = u64;
    fn put_key(k: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(k.as_bytes());
    }
    fn put_val(v: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    fn read_key(b: &[u8]) -> Option<String> {
        str_from(b, 0)
    }
    fn read_val(b: &[u8]) -> IndexResult<u64> {
        match b.len() {
            8 => u64_at(b, 0).ok_or_else(|| bad::<Self>("value")),
            _ => Err(bad::<Self>("value")),
        }
    }
}

impl Record for Nodes {
    const TAG: u8 = b'n';
    const NAME: &'static str = "node";
    type Key<'a> = u64;
    type Val<'a> = &'a [u8];
    type KeyOut = u64;
    type ValOut = Node;
    fn put_key(k: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&k.to_be_bytes());
    }
    fn put_val(v: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(v);
    }
    fn read_key(b: &[u8]) -> Option<u64> {
        (b.len() == 8).then(|| u64_at(b, 0)).flatten()
    }
    fn read_val(b: &[u8]) -> IndexResult<Node> {
        Node::decode(b)
    }
}

impl Record for Dirents {
    const TAG: u8 = b'd';
    const NAME: &'static str = "entry";
    type Key<'a> = (u64, &'a str);
    type Val<'a> = (u64, u64);
    type KeyOut = (u64, String);
    type ValOut = (u64, u64);
    fn put_key((parent, name): (u64, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&parent.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    fn put_val((child, cookie): (u64, u64), out: &mut Vec<u8>) {
        out.extend_from_slice(&child.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
    }
    fn read_key(b: &[u8]) -> Option<(u64, String)> {
        Some((u64_at(b, 0)?, str_from(b, 8)?))
    }
    fn read_val(b: &[u8]) -> IndexResult<(u64, u64)> {
        match (b.len(), u64_at(b, 0), u64_at(b, 8)) {
            (16, Some(child), Some(cookie)) => Ok((child, cookie)),
            _ => Err(bad::<Self>("value")),
        }
    }
}

impl Record for Cookies {
    const TAG: u8 = b'c';
    const NAME: &'static str = "cookie";
    type Key<'a> = (u64, u64);
    type Val<'a> = (u64, &'a str);
    type KeyOut = (u64, u64);
    type ValOut = (u64, String);
    fn put_key((parent, cookie): (u64, u64), out: &mut Vec<u8>) {
        out.extend_from_slice(&parent.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
    }
    fn put_val((child, name): (u64, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&child.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    fn read_key(b: &[u8]) -> Option<(u64, u64)> {
        (b.len() == 16)
            .then(|| Some((u64_at(b, 0)?, u64_at(b, 8)?)))
            .flatten()
    }
    fn read_val(b: &[u8]) -> IndexResult<(u64, String)> {
        match (u64_at(b, 0), str_from(b, 8)) {
            (Some(child), Some(name)) => Ok((child, name)),
            _ => Err(bad::<Self>("value")),
        }
    }
}

impl Record for Keys {
    const TAG: u8 = b'k';
    const NAME: &'static str = "key";
    type Key<'a> = &'a str;
    type Val<'a> = (u64, u64);
    type KeyOut = String;
    type ValOut = (u64, u64);
    fn put_key(k: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(k.as_bytes());
    }
    fn put_val((id, size): (u64, u64), out: &mut Vec<u8>) {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
    }
    fn read_key(b: &[u8]) -> Option<String> {
        str_from(b, 0)
    }
    fn read_val(b: &[u8]) -> IndexResult<(u64, u64)> {
        match (b.len(), u64_at(b, 0), u64_at(b, 8)) {
            (16, Some(id), Some(size)) => Ok((id, size)),
            _ => Err(bad::<Self>("value")),
        }
    }
}

impl Record for Xattrs {
    const TAG: u8 = b'x';
    const NAME: &'static str = "xattr";
    type Key<'a> = (u64, &'a str);
    type Val<'a> = &'a [u8];
    type KeyOut = (u64, String);
    type ValOut = Vec<u8>;
    fn put_key((id, name): (u64, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    fn put_val(v: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(v);
    }
    fn read_key(b: &[u8]) -> Option<(u64, String)> {
        Some((u64_at(b, 0)?, str_from(b, 8)?))
    }
    fn read_val(b: &[u8]) -> IndexResult<Vec<u8>> {
        Ok(b.to_vec())
    }
}

impl Record for Aliases {
    const TAG: u8 = b'a';
    const NAME: &'static str = "alias";
    type Key<'a> = (u64, u64, &'a str);
    type Val<'a> = ();
    type KeyOut = (u64, u64, String);
    type ValOut = ();
    fn put_key((id, parent, name): (u64, u64, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&parent.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    fn put_val((): (), _: &mut Vec<u8>) {}
    fn read_key(b: &[u8]) -> Option<(u64, u64, String)> {
        Some((u64_at(b, 0)?, u64_at(b, 8)?, str_from(b, 16)?))
    }
    fn read_val(b: &[u8]) -> IndexResult<()> {
        match b.len() {
            0 => Ok(()),
            _ => Err(bad::<Self>("value")),
        }
    }
}

/// Decodes one record of kind `R` read from the table.
pub(super) fn decode<R: Record>(k: &[u8], v: &[u8]) -> IndexResult<(R::KeyOut, R::ValOut)> {
    let key = match k.split_first() {
        Some((&tag, rest)) if tag == R::TAG => R::read_key(rest),
        _ => None,
    }
    .ok_or_else(|| bad::<R>("key"))?;
    Ok((key, R::read_val(v)?))
}

/// Changes held in memory over the table: a value, or `None` for a removed record (see
/// `held`).
pub(super) type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Records as a [`Source`] yields them in a range, in key order.
pub(super) type RawIter = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + Send>;

/// Something records are read from: the table of a transaction, or that table with changes
/// held in memory over it ([`Layers`]).
pub(super) trait Source {
    /// The value at `key`.
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// The records from `lo` to `hi`, in key order.
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError>;
}

impl<S: Source + ?Sized> Source for &S {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get_raw(key)
    }
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError> {
        (**self).range_raw(lo, hi)
    }
}

impl Source for ReadOnlyTable<&'static [u8], &'static [u8]> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get(key)?.map(|v| v.value().to_vec()))
    }
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError> {
        let range = self.range::<&[u8]>((lo, hi))?;
        Ok(Box::new(range.map(|item| {
            let (k, v) = item?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        })))
    }
}

/// The table of a write transaction, written directly (opening, closing, migrating, and
/// applying held changes).
impl<'t> Source for &mut Table<'t, &'static [u8], &'static [u8]> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(ReadableTable::get(&**self, key)?.map(|v| v.value().to_vec()))
    }
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError> {
        // A write transaction's range borrows its table: collected (nothing ranges over one
        // on a hot path).
        let mut out = Vec::new();
        for item in ReadableTable::range::<&[u8]>(&**self, (lo, hi))? {
            let (k, v) = item?;
            out.push(Ok((k.value().to_vec(), v.value().to_vec())));
        }
        Ok(Box::new(out.into_iter()))
    }
}

/// The committed table of a read transaction with the held changes over it, and over those
/// the changes of the write transaction running, if any: a record's newest layer answers.
#[derive(Clone, Copy)]
pub(super) struct Layers<'a> {
    pub(super) base: &'a ReadOnlyTable<&'static [u8], &'static [u8]>,
    pub(super) held: Option<&'a Overlay>,
    pub(super) local: Option<&'a Overlay>,
}

impl Layers<'_> {
    /// The entries of the overlays from `lo` to `hi`, the newer winning, in key order.
    fn overlay_range(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let layers: Vec<&Overlay> = [self.held, self.local]
            .into_iter()
            .flatten()
            .filter(|m| !m.is_empty())
            .collect();
        match layers.as_slice() {
            [] => Vec::new(),
            [one] => one
                .range::<[u8], _>((lo, hi))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => {
                let mut merged: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
                for m in layers {
                    for (k, v) in m.range::<[u8], _>((lo, hi)) {
                        merged.insert(k.as_slice(), v);
                    }
                }
                merged
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.clone()))
                    .collect()
            }
        }
    }
}

impl Source for Layers<'_> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        for layer in [self.local, self.held].into_iter().flatten() {
            if let Some(v) = layer.get(key) {
                return Ok(v.clone());
            }
        }
        self.base.get_raw(key)
    }
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError> {
        let base = self.base.range_raw(lo, hi)?;
        let over = self.overlay_range(lo, hi);
        if over.is_empty() {
            return Ok(base);
        }
        Ok(Box::new(MergeOver {
            base: base.peekable(),
            over: over.into_iter().peekable(),
        }))
    }
}

/// Held changes in key order, as `Layers` merges them over the table.
type OverlayEntries = std::vec::IntoIter<(Vec<u8>, Option<Vec<u8>>)>;

/// The records of `base` with `over`'s entries in their place: both in key order.
struct MergeOver {
    base: std::iter::Peekable<RawIter>,
    over: std::iter::Peekable<OverlayEntries>,
}

impl Iterator for MergeOver {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_over = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.base.next(),
                (None, Some(_)) => true,
                (Some(Ok((bk, _))), Some((ok, _))) => match bk.as_slice().cmp(ok.as_slice()) {
                    std::cmp::Ordering::Less => return self.base.next(),
                    std::cmp::Ordering::Equal => {
                        // The overlay's entry replaces (or hides) the table's record.
                        self.base.next();
                        true
                    }
                    std::cmp::Ordering::Greater => true,
                },
            };
            if take_over && let Some((k, Some(v))) = self.over.next() {
                return Some(Ok((k, v)));
            }
            // A removal: nothing to yield for this key.
        }
    }
}

/// The layers of a write transaction, whose changes go to its own overlay.
pub(super) struct LayersMut<'a> {
    pub(super) base: &'a ReadOnlyTable<&'static [u8], &'static [u8]>,
    pub(super) held: Option<&'a Overlay>,
    pub(super) local: &'a mut Overlay,
}

impl LayersMut<'_> {
    fn layers(&self) -> Layers<'_> {
        Layers {
            base: self.base,
            held: self.held,
            local: Some(self.local),
        }
    }
}

impl Source for LayersMut<'_> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.layers().get_raw(key)
    }
    fn range_raw(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<RawIter, StorageError> {
        self.layers().range_raw(lo, hi)
    }
}

/// Something records are written to.
pub(super) trait Sink: Source {
    /// Writes `value` at `key` (`None` removes it); returns the value it replaced.
    fn put_raw(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes `value` at `key`, without reading what it replaces.
    fn set_raw(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Removes every record from `lo` to `hi`.
    fn clear_raw(&mut self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<(), StorageError>;
}

impl<'t> Sink for &mut Table<'t, &'static [u8], &'static [u8]> {
    fn put_raw(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let old = match value {
            Some(v) => self.insert(key, v)?,
            None => self.remove(key)?,
        };
        Ok(old.map(|g| g.value().to_vec()))
    }
    fn set_raw(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.insert(key, value)?;
        Ok(())
    }
    fn clear_raw(&mut self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<(), StorageError> {
        self.retain_in::<&[u8], _>((lo, hi), |_, _| false)
    }
}

impl Sink for LayersMut<'_> {
    fn put_raw(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let old = self.get_raw(key)?;
        if old.is_some() || value.is_some() {
            self.local.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        }
        Ok(old)
    }
    fn set_raw(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        // No read of the layers below: nothing is returned.
        self.local.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn clear_raw(&mut self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Result<(), StorageError> {
        let mut keys = Vec::new();
        for item in self.range_raw(lo, hi)? {
            keys.push(item?.0);
        }
        for k in keys {
            self.local.insert(k, None);
        }
        Ok(())
    }
}

/// Writes held changes into the table of a write transaction, in key order.
pub(super) fn apply(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    changes: &Overlay,
) -> Result<(), StorageError> {
    for (k, v) in changes {
        match v {
            Some(v) => {
                table.insert(k.as_slice(), v.as_slice())?;
            }
            None => {
                table.remove(k.as_slice())?;
            }
        }
    }
    Ok(())
}

/// The records of kind `R` in a [`Source`].
pub(super) struct View<S, R> {
    table: S,
    kind: PhantomData<R>,
}

impl<S: Source, R: Record> View<S, R> {
    pub(super) fn new(table: S) -> Self {
        View {
            table,
            kind: PhantomData,
        }
    }

    /// The value at `k`.
    pub(super) fn get(&self, k: R::Key<'_>) -> IndexResult<Option<R::ValOut>> {
        let key = key_bytes::<R>(k);
        match self
            .table
            .get_raw(key.as_slice())
            .map_err(|e| IndexError::redb(&format!("reading {}", R::NAME), e))?
        {
            Some(v) => Ok(Some(R::read_val(&v)?)),
            None => Ok(None),
        }
    }

    /// The records from `lo` to `hi`, in key order.
    pub(super) fn range(
        &self,
        lo: Bound<R::Key<'_>>,
        hi: Bound<R::Key<'_>>,
    ) -> IndexResult<impl Iterator<Item = IndexResult<(R::KeyOut, R::ValOut)>> + Send + 'static>
    {
        let (lo, hi) = bounds::<R>(lo, hi);
        let range = self
            .table
            .range_raw(as_slice(&lo), as_slice(&hi))
            .map_err(|e| IndexError::redb(&format!("scanning {}s", R::NAME), e))?;
        Ok(range.map(|item| {
            let (k, v) =
                item.map_err(|e| IndexError::redb(&format!("scanning {}s", R::NAME), e))?;
            decode::<R>(&k, &v)
        }))
    }

    /// Whether any record lies from `lo` to `hi`.
    pub(super) fn any_in(&self, lo: Bound<R::Key<'_>>, hi: Bound<R::Key<'_>>) -> IndexResult<bool> {
        let (lo, hi) = bounds::<R>(lo, hi);
        let mut range = self
            .table
            .range_raw(as_slice(&lo), as_slice(&hi))
            .map_err(|e| IndexError::redb(&format!("scanning {}s", R::NAME), e))?;
        match range.next() {
            Some(item) => {
                item.map_err(|e| IndexError::redb(&format!("scanning {}s", R::NAME), e))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

pub(super) fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The records of kind `R` in a [`Sink`].
pub(super) struct ViewMut<S, R> {
    table: S,
    kind: PhantomData<R>,
}

impl<S: Sink, R: Record> ViewMut<S, R> {
    pub(super) fn new(table: S) -> Self {
        ViewMut {
            table,
            kind: PhantomData,
        }
    }

    /// Writes `k` = `v`, where the caller needs no answer: in a write transaction's layers
    /// this costs no read of the table below (see [`ViewMut::insert`]).
    pub(super) fn set(&mut self, k: R::Key<'_>, v: R::Val<'_>) -> IndexResult<()> {
        let key = key_bytes::<R>(k);
        let val = val_bytes::<R>(v);
        self.table
            .set_raw(key.as_slice(), val.as_slice())
            .map_err(|e| IndexError::redb(&format!("writing {}", R::NAME), e))
    }

    /// Writes `k` = `v`; returns whether `k` held a value before.
    pub(super) fn insert(&mut self, k: R::Key<'_>, v: R::Val<'_>) -> IndexResult<bool> {
        let key = key_bytes::<R>(k);
        let val = val_bytes::<R>(v);
        Ok(self
            .table
            .put_raw(key.as_slice(), Some(val.as_slice()))
            .map_err(|e| IndexError::redb(&format!("writing {}", R::NAME), e))?
            .is_some())
    }

    /// Removes `k`; returns the value it held.
    pub(super) fn remove(&mut self, k: R::Key<'_>) -> IndexResult<Option<R::ValOut>> {
        let key = key_bytes::<R>(k);
        match self
            .table
            .put_raw(key.as_slice(), None)
            .map_err(|e| IndexError::redb(&format!("removing {}", R::NAME), e))?
        {
            Some(v) => Ok(Some(R::read_val(&v)?)),
            None => Ok(None),
        }
    }

    /// The sink below, for a view of another kind of record.
    pub(super) fn into_sink(self) -> S {
        self.table
    }

    /// Removes every record of kind `R`.
    pub(super) fn clear(&mut self) -> IndexResult<()> {
        let (lo, hi) = bounds::<R>(Bound::Unbounded, Bound::Unbounded);
        self.table
            .clear_raw(as_slice(&lo), as_slice(&hi))
            .map_err(|e| IndexError::redb(&format!("clearing {}s", R::NAME), e))
    }
}

/// The seven tables of format version 1, read only to migrate them (and to salvage from a
/// damaged file in that layout).
pub(super) mod old {
    use redb::TableDefinition;

    pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    pub(crate) const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
    pub(crate) const DIRENTS: TableDefinition<(u64, &str), (u64, u64)> =
        TableDefinition::new("dirents");
    pub(crate) const COOKIES: TableDefinition<(u64, u64), (u64, &str)> =
        TableDefinition::new("cookies");
    pub(crate) const KEYS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("keys");
    pub(crate) const XATTRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("xattrs");
    pub(crate) const ALIASES: TableDefinition<(u64, u64, &str), ()> =
        TableDefinition::new("aliases");

    /// The names of the tables the one table replaces (`meta` stays, holding the version).
    pub(crate) const MOVED: [&str; 6] =
        ["nodes", "dirents", "cookies", "keys", "xattrs", "aliases"];
}

/// How many records [`migrate`] moved.
#[derive(Debug, Default)]
pub(super) struct Migrated {
    pub(super) records: u64,
}

fn m<E: Into<redb::Error>>(e: E) -> IndexError {
    IndexError::redb("migrating the index to one table", e)
}

/// Copies every record of the seven-table layout into [`INDEX`] in `txn`, deletes the six
/// tables it replaces and leaves `meta` holding only the version, set to [`FORMAT_VERSION`].
/// The caller commits durably: until then the file keeps its old layout.
pub(super) fn migrate(txn: &WriteTransaction) -> IndexResult<Migrated> {
    let present: Vec<String> = txn
        .list_tables()
        .map_err(m)?
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    let has = |name: &str| present.iter().any(|p| p == name);
    let mut done = Migrated::default();
    let mut index = txn.open_table(INDEX).map_err(m)?;
    {
        let mut put = |k: Vec<u8>, v: Vec<u8>| -> IndexResult<()> {
            index.insert(k.as_slice(), v.as_slice()).map_err(m)?;
            done.records += 1;
            Ok(())
        };
        {
            let mut meta = txn.open_table(old::META).map_err(m)?;
            for item in meta.iter().map_err(m)? {
                let (k, v) = item.map_err(m)?;
                if k.value() != VERSION_KEY {
                    put(key_bytes::<Meta>(k.value()), val_bytes::<Meta>(v.value()))?;
                }
            }
            meta.retain(|k, _| k == VERSION_KEY).map_err(m)?;
            meta.insert(VERSION_KEY, FORMAT_VERSION).map_err(m)?;
        }
        // Every old table but `aliases` (whose value is `()`) copies the same way.
        macro_rules! copy {
            ($name:literal, $def:expr, $rec:ty) => {
                if has($name) {
                    let t = txn.open_table($def).map_err(m)?;
                    for item in t.iter().map_err(m)? {
                        let (k, v) = item.map_err(m)?;
                        put(key_bytes::<$rec>(k.value()), val_bytes::<$rec>(v.value()))?;
                    }
                }
            };
        }
        copy!("nodes", old::NODES, Nodes);
        copy!("dirents", old::DIRENTS, Dirents);
        copy!("cookies", old::COOKIES, Cookies);
        copy!("keys", old::KEYS, Keys);
        copy!("xattrs", old::XATTRS, Xattrs);
        if has("aliases") {
            let t = txn.open_table(old::ALIASES).map_err(m)?;
            for item in t.iter().map_err(m)? {
                let (k, _) = item.map_err(m)?;
                put(key_bytes::<Aliases>(k.value()), Vec::new())?;
            }
        }
    }
    drop(index);
    for name in old::MOVED {
        if has(name) {
            txn.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new(name))
                .map_err(m)?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redb::{Database, ReadableDatabase, backends::InMemoryBackend};

    const TYPED_DIRENTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("d");
    const TYPED_ALIASES: TableDefinition<(u64, u64, &str), ()> = TableDefinition::new("a");
    const TYPED_COOKIES: TableDefinition<(u64, u64), u64> = TableDefinition::new("c");
    const TYPED_KEYS: TableDefinition<&str, u64> = TableDefinition::new("k");

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    /// Names that share prefixes, differ in case, and leave ASCII (each char of the set is
    /// one, two, three or four bytes of UTF-8; `/` and bytes below it sort before letters).
    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!['a', 'b', 'A', '-', '/', '\u{1}', 'é', 'ÿ', '中', '😀']),
            0..5,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    /// Ids on both sides of byte boundaries, so that a little-endian or variable-length
    /// encoding would misorder them.
    fn id() -> impl Strategy<Value = u64> {
        proptest::sample::select(vec![
            0,
            1,
            2,
            255,
            256,
            257,
            65_535,
            65_536,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
        ])
    }

    /// Every record of kind `R` in `range`, decoded, as the one table yields them.
    fn scan<R: Record>(
        db: &Database,
        lo: Bound<R::Key<'_>>,
        hi: Bound<R::Key<'_>>,
    ) -> Vec<(R::KeyOut, R::ValOut)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(INDEX).unwrap();
        View::<_, R>::new(&table)
            .range(lo, hi)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every range the index scans selects the same records, in the same order, from the
        /// one table as redb's typed tables of the old layout did.
        #[test]
        fn byte_keys_order_and_ranges_match_redbs_typed_keys(
            entries in proptest::collection::vec((id(), id(), name()), 0..40),
            probe in id(),
            prefix in name(),
        ) {
            let db = db();
            let txn = db.begin_write().unwrap();
            {
                let mut d = txn.open_table(TYPED_DIRENTS).unwrap();
                let mut a = txn.open_table(TYPED_ALIASES).unwrap();
                let mut c = txn.open_table(TYPED_COOKIES).unwrap();
                let mut k = txn.open_table(TYPED_KEYS).unwrap();
                let mut one = txn.open_table(INDEX).unwrap();
                for (i, (x, y, n)) in entries.iter().enumerate() {
                    let i = i as u64;
                    let key = format!("/{n}");
                    d.insert((*x, n.as_str()), i).unwrap();
                    a.insert((*x, *y, n.as_str()), ()).unwrap();
                    c.insert((*x, *y), i).unwrap();
                    k.insert(key.as_str(), i).unwrap();
                    ViewMut::<_, Dirents>::new(&mut one).insert((*x, n), (i, 0)).unwrap();
                    ViewMut::<_, Aliases>::new(&mut one).insert((*x, *y, n), ()).unwrap();
                    ViewMut::<_, Cookies>::new(&mut one).insert((*x, *y), (i, "")).unwrap();
                    ViewMut::<_, Keys>::new(&mut one).insert(&key, (i, 0)).unwrap();
                }
            }
            txn.commit().unwrap();
            let txn = db.begin_read().unwrap();
            let d = txn.open_table(TYPED_DIRENTS).unwrap();
            let a = txn.open_table(TYPED_ALIASES).unwrap();
            let c = txn.open_table(TYPED_COOKIES).unwrap();
            let k = txn.open_table(TYPED_KEYS).unwrap();

            // A directory's entries: (probe, "")..(probe + 1, ""), and all of them.
            let next = probe.saturating_add(1);
            let want: Vec<(u64, String)> = d
                .range::<(u64, &str)>((probe, "")..(next, ""))
                .unwrap()
                .map(|e| { let (k, _) = e.unwrap(); let (x, n) = k.value(); (x, n.to_owned()) })
                .collect();
            let got: Vec<(u64, String)> =
                scan::<Dirents>(&db, Bound::Included((probe, "")), Bound::Excluded((next, "")))
                    .into_iter().map(|(k, _)| k).collect();
            prop_assert_eq!(got, want);
            let want: Vec<(u64, String)> = d
                .range::<(u64, &str)>(..)
                .unwrap()
                .map(|e| { let (k, _) = e.unwrap(); let (x, n) = k.value(); (x, n.to_owned()) })
                .collect();
            let got: Vec<(u64, String)> = scan::<Dirents>(&db, Bound::Unbounded, Bound::Unbounded)
                .into_iter().map(|(k, _)| k).collect();
            prop_assert_eq!(got, want);

            // A node's aliases: (probe, 0, "")..(probe + 1, 0, "").
            let want: Vec<(u64, u64, String)> = a
                .range::<(u64, u64, &str)>((probe, 0, "")..(next, 0, ""))
                .unwrap()
                .map(|e| { let (k, _) = e.unwrap(); let (x, y, n) = k.value(); (x, y, n.to_owned()) })
                .collect();
            let got: Vec<(u64, u64, String)> = scan::<Aliases>(
                &db,
                Bound::Included((probe, 0, "")),
                Bound::Excluded((next, 0, "")),
            )
            .into_iter().map(|(k, ())| k).collect();
            prop_assert_eq!(got, want);

            // A listing resumed after a cookie: (probe, after + 1)..=(probe, MAX).
            for after in [0, 1, 255, 256, u64::MAX - 1] {
                let lo = (probe, after.saturating_add(1));
                let want: Vec<(u64, u64)> = c
                    .range::<(u64, u64)>(lo..=(probe, u64::MAX))
                    .unwrap()
                    .map(|e| e.unwrap().0.value())
                    .collect();
                let got: Vec<(u64, u64)> = scan::<Cookies>(
                    &db,
                    Bound::Included(lo),
                    Bound::Included((probe, u64::MAX)),
                )
                .into_iter().map(|(k, _)| k).collect();
                prop_assert_eq!(got, want);
            }

            // Keys below a prefix, as `prefix_range` bounds them.
            let parent = crate::datastore::Key::new(format!("/{prefix}"));
            if let Some((lo, hi)) = crate::datastore::query::prefix_range(Some(&parent)) {
                let want: Vec<String> = k
                    .range::<&str>(lo.as_str()..hi.as_str())
                    .unwrap()
                    .map(|e| e.unwrap().0.value().to_owned())
                    .collect();
                let got: Vec<String> = scan::<Keys>(
                    &db,
                    Bound::Included(lo.as_str()),
                    Bound::Excluded(hi.as_str()),
                )
                .into_iter().map(|(k, _)| k).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    /// A byte key from a small set, so that layers often meet on one key.
    fn raw_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::sample::select(vec![0u8, 1, b'a', b'b', 255]),
            0..3,
        )
    }

    fn raw_bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            Just(Bound::Unbounded),
            raw_key().prop_map(Bound::Included),
            raw_key().prop_map(Bound::Excluded),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The table with held changes and a write's changes over it reads as one plain table
        /// with all of them applied in order: gets, ranges, inserts and removals through
        /// `LayersMut`, and the held changes applied by `apply`. Fails if a removal does not
        /// hide the table's record, or if an older layer wins over a newer one.
        #[test]
        fn layers_read_as_the_plain_table_they_stand_for(
            ops in proptest::collection::vec(
                (0..3u8, raw_key(), proptest::option::of(raw_key())),
                0..40,
            ),
            ranges in proptest::collection::vec((raw_bound(), raw_bound()), 1..6),
        ) {
            let db = db();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut held = Overlay::new();
            let mut local = Overlay::new();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(INDEX).unwrap();
                // The table's records come first, then the held changes, then the write's.
                for (layer, k, v) in ops.iter().filter(|op| op.0 == 0) {
                    let _ = layer;
                    match v {
                        Some(v) => { t.insert(k.as_slice(), v.as_slice()).unwrap(); }
                        None => { t.remove(k.as_slice()).unwrap(); }
                    }
                }
            }
            txn.commit().unwrap();
            for (_, k, v) in ops.iter().filter(|op| op.0 == 0) {
                match v {
                    Some(v) => { model.insert(k.clone(), v.clone()); }
                    None => { model.remove(k); }
                }
            }
            for (_, k, v) in ops.iter().filter(|op| op.0 == 1) {
                held.insert(k.clone(), v.clone());
                match v {
                    Some(v) => { model.insert(k.clone(), v.clone()); }
                    None => { model.remove(k); }
                }
            }
            let read = db.begin_read().unwrap();
            let base = read.open_table(INDEX).unwrap();
            {
                let mut sink = LayersMut { base: &base, held: Some(&held), local: &mut local };
                for (_, k, v) in ops.iter().filter(|op| op.0 == 2) {
                    let old = sink.put_raw(k, v.as_deref()).unwrap();
                    prop_assert_eq!(old.as_ref(), model.get(k));
                    match v {
                        Some(v) => { model.insert(k.clone(), v.clone()); }
                        None => { model.remove(k); }
                    }
                }
            }
            let layers = Layers { base: &base, held: Some(&held), local: Some(&local) };
            for k in model.keys().chain(ops.iter().map(|op| &op.1)) {
                let got = layers.get_raw(k).unwrap();
                prop_assert_eq!(got.as_ref(), model.get(k));
            }
            for (lo, hi) in &ranges {
                let (lo, hi) = (as_slice(lo), as_slice(hi));
                // redb refuses a range whose start is past its end, as BTreeMap panics on it.
                let empty = match (lo, hi) {
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                        a > b || (a == b && !(matches!(lo, Bound::Included(_)) && matches!(hi, Bound::Included(_))))
                    }
                    _ => false,
                };
                if empty {
                    continue;
                }
                let want: Vec<(Vec<u8>, Vec<u8>)> = model
                    .range::<[u8], _>((lo, hi))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let got: Vec<(Vec<u8>, Vec<u8>)> =
                    layers.range_raw(lo, hi).unwrap().map(Result::unwrap).collect();
                prop_assert_eq!(got, want);
            }
            // Applying the held changes and then the write's to the table gives the model.
            drop(base);
            drop(read);
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(INDEX).unwrap();
                apply(&mut t, &held).unwrap();
                apply(&mut t, &local).unwrap();
            }
            txn.commit().unwrap();
            let read = db.begin_read().unwrap();
            let t = read.open_table(INDEX).unwrap();
            let all: Vec<(Vec<u8>, Vec<u8>)> =
                t.range_raw(Bound::Unbounded, Bound::Unbounded).unwrap().map(Result::unwrap).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn records_of_one_kind_never_meet_another_kinds_range() {
        let db = db();
        let txn = db.begin_write().unwrap();
        {
            let mut one = txn.open_table(INDEX).unwrap();
            ViewMut::<_, Nodes>::new(&mut one)
                .insert(u64::MAX, b"n".as_slice())
                .unwrap();
            ViewMut::<_, Meta>::new(&mut one).insert("zzz", 1).unwrap();
            ViewMut::<_, Keys>::new(&mut one)
                .insert("", (1, 2))
                .unwrap();
            ViewMut::<_, Xattrs>::new(&mut one)
                .insert((0, ""), b"".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(
            scan::<Keys>(&db, Bound::Unbounded, Bound::Unbounded),
            vec![(String::new(), (1, 2))]
        );
        assert_eq!(
            scan::<Meta>(&db, Bound::Unbounded, Bound::Unbounded),
            vec![("zzz".to_owned(), 1)]
        );
        assert_eq!(
            scan::<Xattrs>(&db, Bound::Unbounded, Bound::Unbounded),
            vec![((0, String::new()), Vec::new())]
        );
    }
}
