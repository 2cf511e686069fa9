//! A new empty value, created in place.
//!
//! Every other put writes a file in `.temp/` and renames it over the data file, so a reader (or
//! a crash) sees the old value or the whole new one. An empty value is different: the empty file
//! *is* the whole value, so creating the data file itself with `O_CREAT | O_EXCL` is just as
//! atomic. A reader sees no file (no value yet) or an empty file (the value), never a part; a
//! crash leaves the same two states; and no temporary name is left behind to clean up. That
//! saves a file creation in `.temp/`, a rename and a `stat` per empty file (every `touch`, every
//! empty file a create and close commits). go-ds-flatfs reads such a file like any other: it
//! opens `<shard>/<KEY>.data` and reads it to the end.
//!
//! Only a *new* value takes this path: if the data file exists (or anything else is in its
//! place), replacing it must stay a rename, and the caller falls back to that.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use super::durability::fsync_dir;
use super::{FlatFsStore, is_emfile_error};
use crate::datastore::{Error, Result};

/// What [`FlatFsStore::create_empty`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Created {
    /// The empty data file was created: the value is stored.
    Done,
    /// Something is at the data file's path already (or no descriptor was free): nothing was
    /// done, and the value must be written the usual way (temporary file and rename).
    Fallback,
}

impl FlatFsStore {
    /// Stores the empty value `name` in `shard` by creating its data file, if there is none yet.
    /// Runs under the name's operation slot (taken by the caller). With `durable` the file and
    /// its directory are fsynced before this returns; otherwise they are recorded for the next
    /// `sync`.
    pub(super) fn create_empty(&self, name: &str, shard: &str, durable: bool) -> Result<Created> {
        self.ensure_shard_dir(shard, durable)?;
        let dest = self.file_path(shard, name);
        self.settle_path(&dest)?;
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
        };
        let mut created = open();
        if let Err(e) = &created
            && e.kind() == io::ErrorKind::NotFound
        {
            // The shard directory vanished under us (removed by hand): recreate it, retry once.
            self.known_dirs.write().remove(shard);
            self.ensure_shard_dir(shard, durable)?;
            created = open();
        }
        let file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::Fallback),
            Err(e) => {
                let e = Error::io(format!("flatfs: creating {}", dest.display()), e);
                // The usual path retries when descriptors run out.
                if is_emfile_error(&e) {
                    return Ok(Created::Fallback);
                }
                return Err(e);
            }
        };
        let dir = self.root.join(shard);
        if durable {
            file.sync_all()
                .map_err(|e| Error::io(format!("flatfs: syncing {}", dest.display()), e))?;
            drop(file);
            fsync_dir(&dir)?;
        } else {
            drop(file);
            self.dirty.file(dest, &dir);
        }
        Ok(Created::Done)
    }
}
