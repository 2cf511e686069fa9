//! The stores under test. Adding a store is one entry in [`all`].

use std::path::Path;
use std::sync::Arc;

use dsfs::Datastore;
use dsfs::backend::{MemStore, RedbStore};

/// Opens (or re-opens) a store whose files live in the given directory.
pub type OpenFn = Arc<dyn Fn(&Path) -> dsfs::Result<Arc<dyn Datastore>> + Send + Sync>;

/// How to make one kind of store. Every trial gets a fresh temporary directory and calls `open`
/// with it; cases that test persistence call `open` again on the same directory after closing
/// and dropping the previous handle.
#[derive(Clone)]
pub struct StoreFactory {
    /// The store's name: the first part of every trial name (`<name>::<case>`).
    pub name: &'static str,
    /// Opens (or re-opens) the store whose files live in `dir` (a fresh temp dir per trial).
    pub open: OpenFn,
}

impl StoreFactory {
    /// A factory named `name` that opens stores with `open`.
    pub fn new(
        name: &'static str,
        open: impl Fn(&Path) -> dsfs::Result<Arc<dyn Datastore>> + Send + Sync + 'static,
    ) -> StoreFactory {
        StoreFactory {
            name,
            open: Arc::new(open),
        }
    }
}

/// Every store the suite runs against, in the order their trials are listed.
pub fn all() -> Vec<StoreFactory> {
    vec![
        StoreFactory::new("mem", |_dir| Ok(Arc::new(MemStore::new()))),
        StoreFactory::new("redb", |dir| {
            Ok(Arc::new(RedbStore::open(
                dir.join("values.redb"),
                Default::default(),
            )?))
        }),
    ]
}
