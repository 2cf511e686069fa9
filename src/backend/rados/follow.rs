//! What an index needs to follow a RADOS namespace that other hosts write while it is mounted:
//! the store's identity, the omap index shards as segments with change stamps, and one
//! shard's keys.
//!
//! A shard's stamp is its object version: RADOS raises it with every write to the object,
//! omap updates included, so an unchanged version means an unchanged set of records. The
//! versions of all shards are asked at once (asynchronous stats, one round trip's wait), so a
//! revalidation of an unchanged store costs one round trip, whatever the number of keys. A
//! changed shard is listed again (one omap page per 1000 keys).

use crate::datastore::{Error, ErrorKind, Key, Result, Segment};

use super::{Inner, Record, decode_key, rados_error, shard_object};

/// The stamp of a shard object that does not exist yet (no record was ever written to it).
const ABSENT: &str = "absent";

impl Inner {
    /// Every index shard with its version (also the ones not created yet, so that a shard
    /// never "disappears" to the index).
    pub(super) fn segments(&self) -> Result<Vec<Segment>> {
        let names: Vec<String> = (0..self.shards).map(shard_object).collect();
        let versions = self
            .pool
            .versions(&names)
            .map_err(|e| rados_error("rados: reading the index shards' versions", e))?;
        Ok(names
            .into_iter()
            .zip(versions)
            .map(|(name, v)| Segment {
                name,
                stamp: match v {
                    Some((version, mtime)) => format!("{version}.{mtime}"),
                    None => ABSENT.to_owned(),
                },
                // Versions never repeat for a live object, so no settling time is needed.
                settled: true,
            })
            .collect())
    }

    /// The keys of shard `segment` with their values' sizes.
    pub(super) fn segment_keys(&self, segment: &str) -> Result<Vec<(Key, u64)>> {
        if !(0..self.shards).any(|n| shard_object(n) == segment) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("rados: no index shard {segment:?}"),
            ));
        }
        let mut out = Vec::new();
        for (ek, v) in self.shard_records(segment)? {
            let key = decode_key(&ek)?;
            out.push((key, Record::decode(&v)?.size()));
        }
        Ok(out)
    }
}
