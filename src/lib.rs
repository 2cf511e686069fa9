//! dsfs: an IPFS-style key-value datastore (go-datastore semantics) exposed as a filesystem.
//!
//! Layers, top to bottom (see `docs/ARCHITECTURE.md`): the `fs` module maps POSIX onto keys, the
//! `index` keeps the key tree and file metadata in redb, the `datastore` module is the contract,
//! and `backend` holds the stores. Data flows one way: nothing below knows what is above it.

#![deny(missing_docs)]

pub mod backend;
pub mod cid;
pub mod cli;
pub mod datastore;
pub mod fs;
pub mod group_commit;
pub mod hamt;
pub mod index;
pub mod redb_guard;
pub mod space;
pub mod spec;
pub mod sys;
pub mod unixfs;

pub use datastore::{Datastore, Error, ErrorKind, Key, Query, Result};
