//! The `spdk:` store spec: `spdk:aio=IMAGE?...` (the real SPDK on an AIO bdev over a file or
//! block device, feature `spdk`) or `spdk:fake=IMAGE?...` (the in-process blobstore).
//!
//! Options: `io_unit=512|4096` (the AIO bdev's block size, so the blobstore's io unit),
//! `cluster=BYTES` (the cluster size of a new blobstore, default 64 KiB; BlobFS's 1 MiB
//! wastes most of a cluster on block-sized values), `size=BYTES` (the size of a new fake
//! image, default 1 GiB), `mem=MIB` (SPDK's memory without hugepages, default 256).
//! A missing or empty image is formatted (blobstore type `BLOBFS`) on first open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fake::{FakeBlobstore, FakeGeometry};
use super::ops::BlobOps;
use super::{Recovery, SpdkStore};
use crate::datastore::{Error, ErrorKind, Result};

/// Which blobstore a `spdk:` spec names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// SPDK's AIO bdev over the image (feature `spdk`).
    Aio,
    /// The in-process blobstore in the image.
    Fake,
}

/// A parsed `spdk:` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdkSpec {
    /// Which blobstore.
    pub device: Device,
    /// The image file (or block device, for `aio`).
    pub image: PathBuf,
    /// The io unit (the bdev's block size).
    pub io_unit: u32,
    /// The cluster size of a new blobstore.
    pub cluster: u64,
    /// The size of a new fake image.
    pub size: u64,
    /// SPDK's memory in MiB.
    pub mem_mib: u32,
}

/// The options a `spdk:` spec takes beyond `index` and `durable`.
pub const OPTIONS: &[&str] = &["io_unit", "cluster", "size", "mem"];

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

impl SpdkSpec {
    /// Parses the argument of `spdk:` (`aio=PATH` or `fake=PATH`).
    pub fn parse(arg: &str) -> Result<SpdkSpec> {
        let (device, path) = match arg.split_once('=') {
            Some(("aio", p)) => (Device::Aio, p),
            Some(("fake", p)) => (Device::Fake, p),
            _ => {
                return Err(invalid(format!(
                    "spdk: needs aio=PATH or fake=PATH, not {arg:?}"
                )));
            }
        };
        if path.is_empty() {
            return Err(invalid("spdk: needs an image path"));
        }
        let g = FakeGeometry::default();
        Ok(SpdkSpec {
            device,
            image: PathBuf::from(path),
            io_unit: g.io_unit,
            cluster: g.cluster_size,
            size: g.size,
            mem_mib: 256,
        })
    }

    /// Applies option `name=value`; `Ok(false)` if `name` is not one of [`OPTIONS`].
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool> {
        let number =
            || {
                value.parse::<u64>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    invalid(format!("{name} takes a positive number, not {value:?}"))
                })
            };
        match name {
            "io_unit" => {
                self.io_unit = match number()? {
                    512 => 512,
                    4096 => 4096,
                    _ => return Err(invalid("io_unit is 512 or 4096")),
                }
            }
            "cluster" => {
                let c = number()?;
                if c % 4096 != 0 {
                    return Err(invalid("cluster is a multiple of 4096 bytes"));
                }
                self.cluster = c;
            }
            "size" => self.size = number()?,
            "mem" => {
                self.mem_mib = u32::try_from(number()?).map_err(|_| invalid("mem is in MiB"))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Where the index lives unless `index=` says otherwise: `IMAGE.index.redb`.
    pub fn default_index(&self) -> PathBuf {
        let mut s = self.image.as_os_str().to_owned();
        s.push(".index.redb");
        PathBuf::from(s)
    }

    fn staging_dir(&self) -> PathBuf {
        match self.image.parent() {
            Some(p) if p != Path::new("") => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// Loads (or formats) the blobstore and opens the store on it.
    pub fn open(&self) -> Result<(SpdkStore, Recovery)> {
        let bs: Arc<dyn BlobOps> = match self.device {
            Device::Fake => {
                let geometry = FakeGeometry {
                    size: self.size,
                    cluster_size: self.cluster,
                    io_unit: self.io_unit,
                };
                Arc::new(
                    FakeBlobstore::open_or_create(&self.image, geometry)
                        .map_err(|e| super::bs_error(e).context(self.image.display()))?,
                )
            }
            Device::Aio => open_aio(self)?,
        };
        SpdkStore::open(bs, self.staging_dir())
    }
}

#[cfg(all(feature = "spdk", spdk_linked))]
fn open_aio(spec: &SpdkSpec) -> Result<Arc<dyn BlobOps>> {
    let options = super::runtime::RuntimeOptions {
        image: spec.image.clone(),
        io_unit: spec.io_unit,
        cluster: spec.cluster,
        mem_mib: spec.mem_mib,
    };
    Ok(Arc::new(super::runtime::SpdkBlobstore::start(&options)?))
}

#[cfg(not(all(feature = "spdk", spdk_linked)))]
fn open_aio(_: &SpdkSpec) -> Result<Arc<dyn BlobOps>> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "this dsfs was built without SPDK (build with: cargo build --features spdk, with SPDK \
         installed where pkg-config finds it: PKG_CONFIG_PATH=<prefix>/lib/pkgconfig); \
         spdk:fake=PATH needs no SPDK",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_options_apply() {
        let mut s = SpdkSpec::parse("aio=/d/img").unwrap();
        assert_eq!(s.device, Device::Aio);
        assert!(s.set("cluster", "16384").unwrap());
        assert!(s.set("io_unit", "512").unwrap());
        assert!(!s.set("conf", "x").unwrap());
        assert_eq!((s.cluster, s.io_unit), (16384, 512));
        assert_eq!(s.default_index(), PathBuf::from("/d/img.index.redb"));
        for bad in ["", "aio=", "nvme=0000:01:00.0", "/d/img"] {
            assert!(SpdkSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(s.set("io_unit", "1024").is_err());
        assert!(s.set("cluster", "1000").is_err());
        assert!(s.set("mem", "0").is_err());
    }
}
