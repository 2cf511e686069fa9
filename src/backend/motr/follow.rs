//! What an index needs to follow a Motr index that other hosts write while it is mounted
//! (native layout): segments with change stamps, and one segment's keys, each in a few `NEXT`s.
//!
//! Keys fall into [`SEGMENTS`] segments by their FNV-1/128 hash. Every write of a value record
//! carries, in the same `PUT`, a member record `\0dsfs-seg/<NN>/<key>` (empty) and a new random
//! stamp in `\0dsfs-stamp/<NN>`; a delete removes the value and member records, then writes a
//! new stamp. Random stamps need no read first and never repeat, so two hosts writing one
//! segment at once still each leave a stamp the follower has not seen. A revalidation reads
//! every stamp with one `NEXT`; a changed segment is listed from its member records (a `NEXT`
//! per page) and its sizes taken from the value records (a `GET` per page): member records are
//! hints, the value records decide, so a member left by a crash between the two is ignored.
//!
//! An index written before member records existed is given them once, at open, by one scan
//! (found by the absence of every stamp record while value records exist). go-ds-motr's layout
//! has none of this (go-ds-motr would not maintain it): such an index is reconciled whole at
//! every open instead (`spec.rs`).

use super::{Inner, Layout, PAGE, Rec, corrupt, fnv1_128, motr_error, ops};
use crate::datastore::{Error, ErrorKind, Key, Result, Segment};

/// The number of segments.
pub(super) const SEGMENTS: usize = 64;
/// Stamp records: `STAMP_PREFIX ++ "NN"`.
const STAMP_PREFIX: &[u8] = b"\0dsfs-stamp/";
/// Member records: `MEMBER_PREFIX ++ "NN/" ++ key`.
const MEMBER_PREFIX: &[u8] = b"\0dsfs-seg/";
/// The stamp of a segment nothing was ever written to.
const NEVER: &str = "never";

fn segment_name(n: usize) -> String {
    format!("{n:02x}")
}

/// The segment of `key`.
pub(super) fn segment_of(key: &[u8]) -> String {
    segment_name((fnv1_128(key) % SEGMENTS as u128) as usize)
}

fn stamp_key(segment: &str) -> Vec<u8> {
    [STAMP_PREFIX, segment.as_bytes()].concat()
}

fn member_prefix(segment: &str) -> Vec<u8> {
    [MEMBER_PREFIX, segment.as_bytes(), b"/"].concat()
}

pub(super) fn member_key(key: &[u8]) -> Vec<u8> {
    [member_prefix(&segment_of(key)).as_slice(), key].concat()
}

/// A fresh stamp record for `key`'s segment.
pub(super) fn new_stamp(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut bytes = [0u8; 16];
    crate::datastore::key::fill_random(&mut bytes);
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (stamp_key(&segment_of(key)), text.into_bytes())
}

impl Inner {
    /// Whether records carry members and stamps (the native layout).
    pub(super) fn stamped(&self) -> bool {
        self.options.layout == Layout::Native
    }

    /// Every segment with its stamp.
    pub(super) fn segments(&self) -> Result<Vec<Segment>> {
        let page = super::ops::next_records(&*self.motr, self.idx(), STAMP_PREFIX, SEGMENTS, 0)
            .map_err(|rc| motr_error("motr: reading the segment stamps", rc))?;
        let mut stamps = std::collections::HashMap::new();
        for (k, v) in page {
            let Some(name) = k.strip_prefix(STAMP_PREFIX) else {
                break;
            };
            stamps.insert(name.to_vec(), v);
        }
        Ok((0..SEGMENTS)
            .map(|n| {
                let name = segment_name(n);
                let stamp = match stamps.get(name.as_bytes()) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None => NEVER.to_owned(),
                };
                Segment {
                    name,
                    stamp,
                    // Random stamps never repeat: no settling time.
                    settled: true,
                }
            })
            .collect())
    }

    /// The keys of `segment` with their values' sizes.
    pub(super) fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        if !self.stamped() || !(0..SEGMENTS).any(|n| segment_name(n) == segment) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("motr: no segment {segment:?}"),
            ));
        }
        let prefix = member_prefix(segment);
        let mut out = Vec::new();
        let mut start = prefix.clone();
        let mut flags = 0;
        loop {
            let page = super::ops::next_records(&*self.motr, self.idx(), &start, PAGE, flags)
                .map_err(|rc| motr_error("motr: listing a segment", rc))?;
            let full = page.len() >= PAGE;
            let keys: Vec<Vec<u8>> = page
                .iter()
                .map_while(|(k, _)| k.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec))
                .collect();
            let ended = !full || keys.len() < page.len();
            if !keys.is_empty() {
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let got = self
                    .motr
                    .idx_get(self.idx(), &refs)
                    .map_err(|rc| motr_error("motr: reading a segment's records", rc))?;
                for (k, v) in keys.iter().zip(got) {
                    let v = match v {
                        Ok(v) => v,
                        Err(rc) if rc == ops::Rc::NOT_FOUND.0 => continue,
                        Err(rc) => {
                            return Err(motr_error(
                                "motr: reading a segment's records",
                                ops::Rc(rc),
                            ));
                        }
                    };
                    let text = String::from_utf8(k.clone())
                        .map_err(|_| corrupt("motr: a non-UTF-8 key"))?;
                    out.push((Key::from_raw(text)?, Rec::decode(&v)?.size()));
                }
            }
            if ended {
                return Ok(out);
            }
            if let Some((last, _)) = page.last() {
                start = last.clone();
                flags = ops::EXCLUDE_START_KEY;
            }
        }
    }

    /// Gives an index written before member records existed its members and stamps (one
    /// scan). Nothing to do when any stamp exists or the index holds no value.
    pub(super) fn add_members_if_missing(&self) -> Result<()> {
        if !self.stamped() {
            return Ok(());
        }
        let stamp = super::ops::next_records(&*self.motr, self.idx(), STAMP_PREFIX, 1, 0)
            .map_err(|rc| motr_error("motr: reading the segment stamps", rc))?;
        if stamp
            .first()
            .is_some_and(|(k, _)| k.starts_with(STAMP_PREFIX))
        {
            return Ok(());
        }
        let mut start = b"/".to_vec();
        let mut flags = 0;
        let mut added = 0usize;
        loop {
            let page = super::ops::next_records(&*self.motr, self.idx(), &start, PAGE, flags)
                .map_err(|rc| motr_error("motr: scanning the index", rc))?;
            let full = page.len() >= PAGE;
            let mut records: Vec<(Vec<u8>, Vec<u8>)> = page
                .iter()
                .map(|(k, _)| (member_key(k), Vec::new()))
                .collect();
            // One stamp per segment (no key twice in one operation).
            let stamps: std::collections::BTreeMap<_, _> =
                page.iter().map(|(k, _)| new_stamp(k)).collect();
            records.extend(stamps);
            if !records.is_empty() {
                let refs: Vec<(&[u8], &[u8])> = records
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                self.put_all(&refs, 0)?;
                added += page.len();
            }
            match page.last() {
                Some((last, _)) if full => {
                    start = last.clone();
                    flags = ops::EXCLUDE_START_KEY;
                }
                _ => break,
            }
        }
        if added > 0 {
            log::info!("motr: added segment member records for {added} keys");
        }
        Ok(())
    }

    /// One `PUT` (with `OVERWRITE`) of `records`; every record must succeed.
    pub(super) fn put_all(&self, records: &[(&[u8], &[u8])], flags: u32) -> Result<()> {
        let rcs = self
            .motr
            .idx_put(self.idx(), records, ops::OVERWRITE | flags)
            .map_err(|rc| motr_error("motr: writing index records", rc))?;
        if rcs.len() != records.len() {
            return Err(corrupt("motr: PUT returned the wrong number of codes"));
        }
        match rcs.into_iter().find(|&rc| rc != 0) {
            None => Ok(()),
            Some(rc) => Err(motr_error("motr: writing index records", ops::Rc(rc))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::fake::FakeMotr;
    use super::super::{Id128, MotrOps, MotrOptions, MotrStore};
    use super::*;
    use crate::datastore::Datastore;

    const IDX: Id128 = Id128 {
        hi: 0x7800_0000_0000_0001,
        lo: 0x30,
    };

    /// An index written before member records existed (value records only) gets them at the
    /// next open, so following it never drops its keys.
    #[test]
    fn an_index_without_member_records_gets_them_at_open() {
        let fake = Arc::new(FakeMotr::in_memory());
        fake.idx_create(IDX).unwrap();
        for i in 0..300 {
            let key = format!("/old/{i:03}");
            fake.idx_put(IDX, &[(key.as_bytes(), b"\0abc")], ops::OVERWRITE)
                .unwrap();
        }
        let s = MotrStore::open(fake.clone(), MotrOptions::new(IDX)).unwrap();
        let segments = s.segments().unwrap().unwrap();
        assert_eq!(segments.len(), SEGMENTS);
        let mut all = Vec::new();
        for seg in &segments {
            assert_ne!(seg.stamp, NEVER, "segment {} has no stamp", seg.name);
            all.extend(s.segment_keys(&seg.name).unwrap());
        }
        all.sort();
        assert_eq!(all.len(), 300);
        assert_eq!(all[7], (Key::new("/old/007"), 3));
        // Stamps change with writes to their segment only.
        let key = Key::new("/old/042");
        s.put(&key, b"longer").unwrap();
        let after = s.segments().unwrap().unwrap();
        let changed: Vec<&str> = after
            .iter()
            .zip(&segments)
            .filter(|(a, b)| a.stamp != b.stamp)
            .map(|(a, _)| a.name.as_str())
            .collect();
        assert_eq!(changed, vec![s.segment_of(&key).unwrap().as_str()]);
        s.delete(&key).unwrap();
        let keys = s.segment_keys(&s.segment_of(&key).unwrap()).unwrap();
        assert!(!keys.iter().any(|(k, _)| *k == key));
    }
}
