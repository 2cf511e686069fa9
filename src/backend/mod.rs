//! The stores. Each implements [`crate::datastore::Datastore`]; none knows about the index or
//! the filesystem above it.

pub mod flatfs;
pub mod mem;
pub mod motr;
pub mod mount;
#[cfg(feature = "rados")]
pub mod rados;
pub mod redb;
mod redb_pending;
pub mod spdk;
pub mod tiered;

pub use self::flatfs::FlatFsStore;
pub use self::mem::MemStore;
pub use self::motr::MotrStore;
pub use self::mount::MountStore;
#[cfg(feature = "rados")]
pub use self::rados::RadosStore;
pub use self::redb::RedbStore;
pub use self::spdk::SpdkStore;
pub use self::tiered::TieredStore;
