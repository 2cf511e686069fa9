//! flatfs batches (spec §5.8), with last-operation-wins semantics.
//!
//! A batch stages each put in its own directory, `.temp/batch-<unix-nanos>-<random>/`, as
//! `<NAME>.data` (not sharded; mode 0666 minus the umask, as upstream's plain create). Nothing is
//! visible to the store before `commit`, because reads never look in `.temp` and queries skip
//! dot names. `commit` creates the shard directories, renames each staged file into place through
//! the store's per-key coordination and disk-usage accounting, applies the deletes, and with the
//! `sync` option fsyncs the touched shard directories and the root. Each rename is atomic; the
//! batch as a whole is not (a crash leaves some keys renamed and the rest as `.temp` debris,
//! which the next open removes). Dropping a batch, committed or not, removes its directory.
//!
//! **Semantics**: the last operation recorded on a key wins, including a put after a put,
//! as the shared suite requires. Upstream flatfs v0.6 keeps the *first* put of a key in a batch;
//! for content-addressed data (the same key always carries the same bytes) the two agree.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::datastore::{Batch, Error, Key, Result};

use super::FlatFsStore;
use super::encode::{EXTENSION, name_for};

/// The operation recorded for one stored name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchOp {
    /// `<staging>/<NAME>.data` holds the value.
    Put,
    /// Delete the key.
    Delete,
}

/// A flatfs batch; see the module documentation.
pub struct FlatFsBatch<'a> {
    store: &'a FlatFsStore,
    dir: PathBuf,
    ops: BTreeMap<String, BatchOp>,
}

impl<'a> FlatFsBatch<'a> {
    pub(crate) fn new(store: &'a FlatFsStore) -> Result<FlatFsBatch<'a>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut bytes = [0u8; 8];
        crate::datastore::key::fill_random(&mut bytes);
        let random = u64::from_le_bytes(bytes) >> 1; // a non-negative int63, as upstream
        let dir = store
            .staging_dir_path()
            .join(format!("batch-{nanos}-{random}"));
        DirBuilder::new().mode(0o755).create(&dir).map_err(|e| {
            Error::io(
                format!("flatfs: creating batch directory {}", dir.display()),
                e,
            )
        })?;
        Ok(FlatFsBatch {
            store,
            dir,
            ops: BTreeMap::new(),
        })
    }

    /// The batch's staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.dir
    }

    fn staged_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{EXTENSION}"))
    }
}

impl Batch for FlatFsBatch<'_> {
    fn put(&mut self, key: Key, value: Vec<u8>) -> Result<()> {
        let name = name_for(&key, self.store.options().encode_keys)?.into_owned();
        let path = self.staged_path(&name);
        let ctx = || format!("flatfs: staging {key} in {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(&path)
            .map_err(|e| Error::io(ctx(), e))?;
        file.write_all(&value).map_err(|e| Error::io(ctx(), e))?;
        if self.store.options().sync {
            file.sync_all().map_err(|e| Error::io(ctx(), e))?;
        }
        self.ops.insert(name, BatchOp::Put);
        Ok(())
    }

    fn delete(&mut self, key: Key) -> Result<()> {
        // A key flatfs cannot hold is never there: deleting it is a no-op, as upstream.
        let Ok(name) = name_for(&key, self.store.options().encode_keys) else {
            return Ok(());
        };
        let name = name.into_owned();
        let path = self.staged_path(&name);
        if self.ops.insert(name, BatchOp::Delete) == Some(BatchOp::Put) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("flatfs: removing staged {}", path.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.store.commit_batch(&self.dir, &self.ops)
    }
}

impl Drop for FlatFsBatch<'_> {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "flatfs: could not remove batch directory {}: {e}",
                self.dir.display()
            ),
        }
    }
}
