//! HAMT-sharded UnixFS directories, built the way `ipfs add -r` builds them and read by name
//! or in full.
//!
//! The format (UnixFS specification, `HAMTShard`):
//! * Every node of the shard is a dag-pb node whose UnixFS `Data` is `{Type: HAMTShard, Data:
//!   bitfield, hashType: 0x22, fanout}`. The bitfield has bit `i` set when slot `i` is used;
//!   it is written big-endian (slot 0 is the lowest bit of the last byte) without leading zero
//!   bytes.
//! * A name's hash is the first 64 bits (`h1`) of MurmurHash3 x64 128 (seed 0) of its bytes,
//!   taken big-endian. Level `d` of the tree uses bits `d*b .. (d+1)*b` from the top of it,
//!   `b = log2(fanout)` (8 for Kubo's fanout of 256).
//! * A slot holds one entry, linked under the name `XX` + entry name (`XX`: the slot index as
//!   upper-case hex, padded to the digits of `fanout - 1`), or a child shard, linked under `XX`
//!   alone, when two or more names fall into it. Links are in slot order.
//! * `Tsize` of a link is the whole sub-DAG under it, as in a plain directory.
//!
//! When Kubo shards: while a directory is built, the estimate `sum(len(name) + len(CID bytes))`
//! of its links is compared with 256 KiB (`HAMTShardingSize`). boxo since its IPIP-499 work and
//! the JS importer shard when the estimate is strictly greater; older boxo (and so older Kubo)
//! already did at exactly 262,144 bytes. dsfs uses `>`.

use std::collections::BTreeMap;

use cid::Cid;

use crate::datastore::{Datastore, Error, ErrorKind, Result};
use crate::unixfs::{BlockSink, ImportOptions, Link, NodeCache};

/// The multicodec of murmur3-x64-64, the only HAMT hash Kubo uses.
pub const HASH_MURMUR3: u64 = 0x22;
/// Kubo's shard width.
pub const FANOUT: u64 = 256;
/// The UnixFS type number of a shard node.
pub const TYPE_HAMT_SHARD: u64 = 5;

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn mix_k1(k1: u64) -> u64 {
    k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2)
}

fn mix_k2(k2: u64) -> u64 {
    k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1)
}

/// MurmurHash3 x64 128 of `data` with `seed`: `(h1, h2)`.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&block[..8]);
        hi.copy_from_slice(&block[8..]);
        h1 ^= mix_k1(u64::from_le_bytes(lo));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(u64::from_le_bytes(hi));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let mut k1 = 0u64;
    let mut k2 = 0u64;
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(b) << (8 * i);
        } else {
            k2 |= u64::from(b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= mix_k2(k2);
    }
    if !tail.is_empty() {
        h1 ^= mix_k1(k1);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The 64 hash bits a HAMT uses for `name`, the first consumed from the top.
pub fn name_hash(name: &[u8]) -> u64 {
    murmur3_x64_128(name, 0).0
}

/// The slot of a hash at `depth` in a shard of `bits` bits per level, if the hash has that
/// many bits left.
fn slot(hash: u64, depth: u32, bits: u32) -> Option<usize> {
    let end = depth.checked_add(1)?.checked_mul(bits)?;
    if end > 64 || bits == 0 {
        return None;
    }
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    Some(((hash >> (64 - end)) & mask) as usize)
}

/// The hex digits of a slot prefix in a shard of `fanout` slots.
fn pad_len(fanout: u64) -> usize {
    format!("{:X}", fanout.saturating_sub(1)).len()
}

fn corrupt(cid: &Cid, what: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("shard {cid}: {what}"))
}

/// A shard under construction: its used slots.
#[derive(Default)]
struct Table {
    slots: BTreeMap<usize, Slot>,
}

enum Slot {
    /// An index into the entries.
    Entry(usize),
    Shard(Box<Table>),
}

/// Bits per level of Kubo's shards.
const BITS: u32 = FANOUT.trailing_zeros();

fn insert(table: &mut Table, hashes: &[u64], i: usize, depth: u32) -> Result<()> {
    let idx = slot(hashes[i], depth, BITS).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            "two names of the directory share all 64 bits of their HAMT hash",
        )
    })?;
    match table.slots.remove(&idx) {
        None => {
            table.slots.insert(idx, Slot::Entry(i));
        }
        Some(Slot::Entry(j)) => {
            let mut child = Table::default();
            insert(&mut child, hashes, j, depth + 1)?;
            insert(&mut child, hashes, i, depth + 1)?;
            table.slots.insert(idx, Slot::Shard(Box::new(child)));
        }
        Some(Slot::Shard(mut child)) => {
            insert(&mut child, hashes, i, depth + 1)?;
            table.slots.insert(idx, Slot::Shard(child));
        }
    }
    Ok(())
}

/// UnixFS `Data` of a shard node with `slots` used.
fn shard_data(slots: impl Iterator<Item = usize>) -> Vec<u8> {
    let bytes = (FANOUT as usize).div_ceil(8);
    let mut bitfield = vec![0u8; bytes];
    for s in slots {
        bitfield[bytes - 1 - s / 8] |= 1 << (s % 8);
    }
    let first = bitfield.iter().position(|b| *b != 0).unwrap_or(bytes);
    let mut data = Vec::with_capacity(bytes + 16);
    crate::unixfs::varint_field(&mut data, 1, TYPE_HAMT_SHARD);
    crate::unixfs::bytes_field(&mut data, 2, &bitfield[first..]);
    crate::unixfs::varint_field(&mut data, 5, HASH_MURMUR3);
    crate::unixfs::varint_field(&mut data, 6, FANOUT);
    data
}

fn write<S: BlockSink + ?Sized>(
    table: &Table,
    entries: &[(String, Link)],
    options: ImportOptions,
    sink: &mut S,
) -> Result<Link> {
    let pad = pad_len(FANOUT);
    let mut links: Vec<(Vec<u8>, String, u64)> = Vec::with_capacity(table.slots.len());
    for (idx, s) in &table.slots {
        let prefix = format!("{idx:0pad$X}");
        match s {
            Slot::Entry(i) => {
                let (name, link) = &entries[*i];
                links.push((link.cid.to_bytes(), prefix + name, link.tsize));
            }
            Slot::Shard(child) => {
                let link = write(child, entries, options, sink)?;
                links.push((link.cid.to_bytes(), prefix, link.tsize));
            }
        }
    }
    let refs: Vec<(&[u8], &str, u64)> = links
        .iter()
        .map(|(h, n, t)| (h.as_slice(), n.as_str(), *t))
        .collect();
    let block = crate::unixfs::pb_node(&refs, &shard_data(table.slots.keys().copied()));
    let cid = crate::unixfs::dag_pb_cid(options.cid_version, crate::cid::sha256_multihash(&block));
    sink.put_block(&cid, &block)?;
    Ok(Link {
        cid,
        tsize: block.len() as u64 + links.iter().map(|(_, _, t)| t).sum::<u64>(),
        filesize: 0,
    })
}

/// Builds the HAMT shard of a directory from its entries (names unique) and returns its root.
pub fn build<S: BlockSink + ?Sized>(
    entries: &[(String, Link)],
    options: ImportOptions,
    sink: &mut S,
) -> Result<Link> {
    let hashes: Vec<u64> = entries
        .iter()
        .map(|(n, _)| name_hash(n.as_bytes()))
        .collect();
    let mut root = Table::default();
    for i in 0..entries.len() {
        insert(&mut root, &hashes, i, 0)?;
    }
    write(&root, entries, options, sink)
}

/// The shape of a decoded shard node: bits per level and the hex digits of its link prefixes.
fn geometry(cid: &Cid, node: &crate::unixfs::Node) -> Result<(u32, usize)> {
    if node.kind != TYPE_HAMT_SHARD {
        return Err(corrupt(cid, "a shard links to a node that is not a shard"));
    }
    match node.hash_type {
        Some(HASH_MURMUR3) => {}
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("shard {cid}: hash function {other:#x} (only murmur3-x64-64 is read)"),
            ));
        }
        None => return Err(corrupt(cid, "no hash function")),
    }
    let fanout = node.fanout.ok_or_else(|| corrupt(cid, "no fanout"))?;
    if !fanout.is_power_of_two() || !(2..=1 << 16).contains(&fanout) {
        return Err(corrupt(cid, "the fanout is not a power of two up to 65536"));
    }
    Ok((fanout.trailing_zeros(), pad_len(fanout)))
}

/// Splits a shard link name into its slot prefix and the entry name (empty for a child shard).
fn split_link<'a>(cid: &Cid, name: &'a str, pad: usize) -> Result<(&'a str, &'a str)> {
    if name.len() < pad || !name.is_char_boundary(pad) {
        return Err(corrupt(cid, "a link name is shorter than its slot prefix"));
    }
    let (prefix, rest) = name.split_at(pad);
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return Err(corrupt(
            cid,
            "a link name does not start with its slot in hex",
        ));
    }
    Ok((prefix, rest))
}

/// Looks `name` up in the shard rooted at `root`, fetching only the shard nodes on its hash
/// path. `None` when the directory has no such entry.
pub fn find(
    store: &dyn Datastore,
    cache: &mut NodeCache,
    root: &Cid,
    name: &str,
) -> Result<Option<Cid>> {
    let hash = name_hash(name.as_bytes());
    let mut cid = *root;
    let mut depth = 0;
    'levels: loop {
        let node = cache.node(store, &cid)?;
        let (bits, pad) = geometry(&cid, &node)?;
        let idx = slot(hash, depth, bits)
            .ok_or_else(|| corrupt(&cid, "deeper than the hash has bits"))?;
        let want = format!("{idx:0pad$X}");
        for (child, link) in &node.links {
            let (prefix, entry) = split_link(&cid, link, pad)?;
            if prefix != want {
                continue;
            }
            if entry.is_empty() {
                cid = *child;
                depth += 1;
                continue 'levels;
            }
            return Ok((entry == name).then_some(*child));
        }
        return Ok(None);
    }
}

/// Every entry of the shard rooted at `root` (name, CID), in shard order.
pub fn list(store: &dyn Datastore, root: &Cid) -> Result<Vec<(String, Cid)>> {
    let mut out = Vec::new();
    let mut cache = NodeCache::default();
    list_into(store, &mut cache, root, 0, &mut out)?;
    Ok(out)
}

fn list_into(
    store: &dyn Datastore,
    cache: &mut NodeCache,
    cid: &Cid,
    depth: u32,
    out: &mut Vec<(String, Cid)>,
) -> Result<()> {
    let node = cache.node(store, cid)?;
    let (bits, pad) = geometry(cid, &node)?;
    if slot(0, depth, bits).is_none() {
        return Err(corrupt(cid, "deeper than the hash has bits"));
    }
    for (child, link) in &node.links {
        let (_, entry) = split_link(cid, link, pad)?;
        if entry.is_empty() {
            list_into(store, cache, child, depth + 1, out)?;
        } else {
            out.push((entry.to_string(), *child));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SMHasher's check of MurmurHash3_x64_128: hash `[]`, `[0]`, `[0, 1]`, ... `[0..255)` with
    /// seed `256 - len`, hash the concatenated results with seed 0; the first four bytes of that,
    /// little-endian, are 0x6384BA69 in the reference implementation.
    #[test]
    fn murmur3_passes_the_reference_verification() {
        let mut all = Vec::new();
        let key: Vec<u8> = (0..=255u8).collect();
        for len in 0..256usize {
            let (h1, h2) = murmur3_x64_128(&key[..len], 256 - len as u32);
            all.extend_from_slice(&h1.to_le_bytes());
            all.extend_from_slice(&h2.to_le_bytes());
        }
        let (h1, _) = murmur3_x64_128(&all, 0);
        assert_eq!(h1 as u32, 0x6384_BA69);
    }

    /// A directory of `names`, each a file holding its own name's bytes, as the reference
    /// importer gets it with `path: "d/<name>", content: <name>` (a `/` makes a subdirectory).
    fn dir_of(names: &[String], options: ImportOptions) -> Link {
        let mut top: Vec<(String, Link)> = Vec::new();
        let mut subs: BTreeMap<String, Vec<(String, Link)>> = BTreeMap::new();
        for n in names {
            let link =
                crate::unixfs::import_bytes(n.as_bytes(), options, &mut crate::unixfs::Discard)
                    .unwrap();
            match n.split_once('/') {
                Some((d, f)) => subs.entry(d.into()).or_default().push((f.into(), link)),
                None => top.push((n.clone(), link)),
            }
        }
        for (d, mut entries) in subs {
            let link = crate::unixfs::directory(&mut entries, options, &mut crate::unixfs::Discard)
                .unwrap();
            top.push((d, link));
        }
        crate::unixfs::directory(&mut top, options, &mut crate::unixfs::Discard).unwrap()
    }

    fn padded(n: usize, width: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:0width$}")).collect()
    }

    /// Root CIDs printed by the reference importer (ipfs-unixfs-importer 17.1.1, profile
    /// unixfs-v0-2015), run by hand, for: 10,000 short names (`f0`..`f9999`, nested shards);
    /// 2,000 names of 156 bytes; 4,096 names of 30 bytes (links of exactly 262,144 bytes with
    /// CIDv0: still flat) and 4,097 (sharded); 7,000 names and a subdirectory inside the shard.
    #[test]
    fn sharded_directories_match_the_reference_importer() {
        let v0 = ImportOptions::default();
        let v1 = ImportOptions {
            cid_version: 1,
            raw_leaves: true,
            ..ImportOptions::default()
        };
        let short: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
        let long: Vec<String> = (0..2000)
            .map(|i| format!("{i:05}-{}", "x".repeat(150)))
            .collect();
        let mut withsub: Vec<String> = (0..7000).map(|i| format!("entry-{i}")).collect();
        withsub.extend(["sub/a".to_string(), "sub/b".to_string()]);
        let cases: [(&str, &[String], &str, &str); 5] = [
            (
                "short",
                &short,
                "QmcktcCh8cB8Hz4QUZPe2b92TxQ5LNzExxR1TnfFRwskoK",
                "bafybeict4gwrhdqxokmbv425pgmwcane4azyqnz26a6mw2wtlgmzbs7nvu",
            ),
            (
                "long",
                &long,
                "QmTGJFpedH2TsmkiBjaNrNMJ1Lq7pWdHCvfFiJsDmfDsaX",
                "bafybeicjuz5qd6ct5jgeb6aocxdfisoksjli3zxplccsn6lbvphne7kna4",
            ),
            (
                "4096",
                &padded(4096, 30),
                "QmQbUBagvUwzusTv1r1oeE3M9HFH13MEGJFBBj5H68MTYW",
                "bafybeihngisskkqvwsqn6yxegsffw3avwwi46k2p5eb66gpzzjzuoto5zi",
            ),
            (
                "4097",
                &padded(4097, 30),
                "QmNcAeqeiYoYHfGWnAvHtG12PgqCz8WRrJT4vJ8sCMbgPC",
                "bafybeicish2hfs2cpy5wnztbtfk36yatjof3heaqdr3jzxj3s7m6ur5q64",
            ),
            (
                "withsub",
                &withsub,
                "Qmd4fSvFBqf2fbESa9JkDgEiNNBMqYyER7kzVCHkYgDbQf",
                "bafybeidyrlzbr7k4qfowfbor3jos3leaxcvqlhd2kq65xkhtbhejhvke2a",
            ),
        ];
        for (what, names, want0, want1) in cases {
            assert_eq!(dir_of(names, v0).cid.to_string(), want0, "{what}, CIDv0");
            assert_eq!(dir_of(names, v1).cid.to_string(), want1, "{what}, CIDv1");
        }
    }

    /// A lookup fetches only the shard nodes on its name's hash path (and the listing finds
    /// every entry once); a missing name is `None`; `resolve` goes through shards too.
    #[test]
    fn lookups_walk_only_their_buckets_and_listing_finds_every_entry() {
        use crate::unixfs::tests::Counting;
        use std::sync::atomic::Ordering;
        let store = Counting {
            inner: crate::backend::MemStore::new(),
            gets: Default::default(),
        };
        let options = ImportOptions::default();
        let mut entries: Vec<(String, Link)> = (0..10_000)
            .map(|i| {
                let name = format!("f{i}");
                let link =
                    crate::unixfs::import_bytes(name.as_bytes(), options, &mut &store).unwrap();
                (name, link)
            })
            .collect();
        let root = crate::unixfs::directory(&mut entries, options, &mut &store)
            .unwrap()
            .cid;
        for (name, link) in entries.iter().step_by(997) {
            store.gets.store(0, Ordering::Relaxed);
            let mut cache = NodeCache::default();
            let found = find(&store, &mut cache, &root, name).unwrap();
            assert_eq!(found, Some(link.cid), "{name}");
            // 10,000 names in 256 slots: the root, a child shard, rarely a grandchild.
            let gets = store.gets.load(Ordering::Relaxed);
            assert!((2..=4).contains(&gets), "{name}: {gets} blocks fetched");
            let via = crate::unixfs::resolve(&store, &root, &format!("/{name}")).unwrap();
            assert_eq!(via, link.cid);
        }
        for missing in ["f10000", "", "F1", "f1/"] {
            let mut cache = NodeCache::default();
            assert_eq!(find(&store, &mut cache, &root, missing).unwrap(), None);
        }
        let mut listed = list(&store, &root).unwrap();
        assert_eq!(listed.len(), entries.len());
        listed.sort();
        let mut want: Vec<(String, Cid)> =
            entries.iter().map(|(n, l)| (n.clone(), l.cid)).collect();
        want.sort();
        assert!(listed == want, "the listing differs from the entries");
    }

    #[test]
    fn a_damaged_shard_is_an_error_not_a_panic() {
        let store = crate::backend::MemStore::new();
        struct Into<'a>(&'a crate::backend::MemStore);
        impl BlockSink for Into<'_> {
            fn put_block(&mut self, cid: &Cid, bytes: &[u8]) -> Result<()> {
                self.0.put(&crate::cid::block_key(cid.hash()), bytes)
            }
        }
        let options = ImportOptions::default();
        let leaf = crate::unixfs::import_bytes(b"x", options, &mut Into(&store)).unwrap();
        // A node claiming to be a shard but with a link name that is not a slot prefix.
        let hash = leaf.cid.to_bytes();
        let mut data = Vec::new();
        crate::unixfs::varint_field(&mut data, 1, TYPE_HAMT_SHARD);
        crate::unixfs::bytes_field(&mut data, 2, &[1]);
        crate::unixfs::varint_field(&mut data, 5, HASH_MURMUR3);
        crate::unixfs::varint_field(&mut data, 6, FANOUT);
        for name in ["Zzname", "0"] {
            let block = crate::unixfs::pb_node(&[(&hash, name, 1)], &data);
            let cid = crate::unixfs::dag_pb_cid(0, crate::cid::sha256_multihash(&block));
            Into(&store).put_block(&cid, &block).unwrap();
            assert_eq!(list(&store, &cid).unwrap_err().kind(), ErrorKind::Corrupt);
        }
        // A fanout that is not a power of two, and another hash function.
        for (field, value, kind) in [
            (6, 100, ErrorKind::Corrupt),
            (5, 0x12, ErrorKind::Unsupported),
        ] {
            let mut data = Vec::new();
            crate::unixfs::varint_field(&mut data, 1, TYPE_HAMT_SHARD);
            crate::unixfs::bytes_field(&mut data, 2, &[1]);
            crate::unixfs::varint_field(
                &mut data,
                5,
                if field == 5 { value } else { HASH_MURMUR3 },
            );
            crate::unixfs::varint_field(&mut data, 6, if field == 6 { value } else { FANOUT });
            let block = crate::unixfs::pb_node(&[(&hash, "00x", 1)], &data);
            let cid = crate::unixfs::dag_pb_cid(0, crate::cid::sha256_multihash(&block));
            Into(&store).put_block(&cid, &block).unwrap();
            let mut cache = NodeCache::default();
            assert_eq!(
                find(&store, &mut cache, &cid, "x").unwrap_err().kind(),
                kind
            );
        }
    }
}
