//! The space a RADOS pool has, for `statfs` (`df`).
//!
//! With a manager daemon, `rados_cluster_stat` reports the cluster's raw capacity. Without one
//! (a small cluster like the test one: OSDs send their usage to the manager only), it reports
//! zeros; then each up OSD is asked for its BlueStore device's size and free space (the OSD
//! command `bluestore bluefs device info`, which needs a client allowed to send OSD commands,
//! such as `client.admin`). Raw figures are divided by the pool's replica count, so `df`
//! shows what the pool can still hold. When neither source answers, the space is unknown.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::datastore::{Result, Space};

use super::{Inner, rados_error};

impl Inner {
    pub(super) fn space(&self) -> Result<Option<Space>> {
        let (mut total, mut avail) = {
            let (total, _used, avail) = self
                .cluster
                .stat()
                .map_err(|e| rados_error("rados: cluster usage", e))?;
            (total, avail)
        };
        if total == 0 {
            match self.osd_space() {
                Some((t, a)) => (total, avail) = (t, a),
                None => return Ok(None),
            }
        }
        let copies = self.replicas().max(1);
        total /= copies;
        avail /= copies;
        Ok(Some(Space {
            total,
            free: avail,
            available: avail,
        }))
    }

    /// The pool's replica count (1 when the monitors do not say).
    fn replicas(&self) -> u64 {
        let cmd = serde_json::json!({
            "prefix": "osd pool get",
            "pool": self.options.pool,
            "var": "size",
            "format": "json",
        });
        let out = match self.cluster.mon_command(&cmd.to_string()) {
            Ok(out) => out,
            Err(e) => {
                log::debug!("rados: the pool's replica count: {e:?}");
                return 1;
            }
        };
        serde_json::from_slice::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v.get("size")?.as_u64())
            .unwrap_or(1)
    }

    /// The raw (total, free) bytes of every up OSD's main BlueStore device, or `None` when an
    /// OSD does not tell (not BlueStore, or this client may not send OSD commands).
    fn osd_space(&self) -> Option<(u64, u64)> {
        let dump = self
            .cluster
            .mon_command(r#"{"prefix": "osd dump", "format": "json"}"#)
            .map_err(|e| log::debug!("rados: osd dump: {e:?}"))
            .ok()?;
        let dump: serde_json::Value = serde_json::from_slice(&dump).ok()?;
        let up: Vec<i32> = dump
            .get("osds")?
            .as_array()?
            .iter()
            .filter(|o| o.get("up").and_then(|u| u.as_u64()) == Some(1))
            .filter_map(|o| i32::try_from(o.get("osd")?.as_i64()?).ok())
            .collect();
        if up.is_empty() {
            return None;
        }
        let (mut total, mut free) = (0u64, 0u64);
        for id in up {
            let out = self
                .cluster
                .osd_command(id, r#"{"prefix": "bluestore bluefs device info"}"#)
                .map_err(|e| log::debug!("rados: osd.{id} device info: {e:?}"))
                .ok()?;
            let (t, f) = main_device(&out)?;
            total += t;
            free += f;
        }
        Some((total, free))
    }
}

/// The (total, free) of the largest device in `bluestore bluefs device info`'s answer: an
/// object with one `"dev"` member per device (the same name repeated, so it is read member by
/// member rather than as a map).
fn main_device(json: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Device {
        total: u64,
        free: u64,
    }
    struct Devices(Vec<Device>);
    impl<'de> serde::Deserialize<'de> for Devices {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Devices, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Devices;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of devices")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Devices, A::Error> {
                    let mut out = Vec::new();
                    while let Some(name) = map.next_key::<String>()? {
                        if name == "dev" {
                            out.push(map.next_value::<Device>()?);
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Devices(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let Devices(devices) = serde_json::from_slice(json).ok()?;
    devices
        .into_iter()
        .max_by_key(|d| d.total)
        .map(|d| (d.total, d.free.min(d.total)))
}

#[cfg(test)]
mod tests {
    use super::main_device;

    #[test]
    fn the_largest_of_repeated_dev_members_is_the_main_device() {
        let shared = br#"{"dev": {"device": "BDEV_DB", "total": 4294967296, "free": 3990650880,
            "bluefs_used": 304218112, "bluefs max available": 3990421504}}"#;
        assert_eq!(main_device(shared), Some((4294967296, 3990650880)));
        let split = br#"{"dev": {"device": "BDEV_DB", "total": 1000, "free": 10},
            "dev": {"device": "BDEV_SLOW", "total": 9000, "free": 5000}}"#;
        assert_eq!(main_device(split), Some((9000, 5000)));
        assert_eq!(main_device(b"{}"), None);
        assert_eq!(main_device(b"not json"), None);
    }
}
