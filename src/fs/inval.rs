//! What the kernel must forget when a key changes outside the filesystem: the command line
//! writing a mounted store through the daemon's control socket, or revalidation learning that
//! another program changed a shared store (see `index::changes`). The kernel caches names and
//! attributes for the entry and attribute timeouts (30 s where [`DsFs::only_writer`] holds,
//! 1 s elsewhere) and pages across opens (`FOPEN_KEEP_CACHE`); the FUSE adapter turns these
//! into `inval_entry`/`inval_inode` notifications, from a thread of its own (never inside a
//! request).

use super::names::{NameRef, component_to_name, name_to_component};
use super::types::Ino;
use super::{DsFs, ipfs};
use crate::datastore::Key;
use crate::index::NodeKind;

/// The kernel's view of one changed key.
#[derive(Debug, PartialEq, Eq)]
pub struct Stale {
    /// The directory holding the key's name, and that name (the dentry to forget), if the
    /// directory still exists.
    pub entry: Option<(u64, Vec<u8>)>,
    /// The inodes now at the key whose attributes and pages to forget.
    pub inodes: Vec<u64>,
}

impl DsFs {
    /// Whether nothing but this filesystem (and the command line, whose changes are
    /// invalidated) changes inode `ino`: no revalidation is configured, or its key is in no
    /// part of the store that other programs may write ([`crate::datastore::Datastore::shared`]).
    /// The kernel may then cache its name and attributes for the long timeout.
    pub fn only_writer(&self, ino: u64) -> bool {
        if ipfs::is_virtual(ino) {
            return false;
        }
        if self.store().revalidate_interval().is_zero() {
            return true;
        }
        match self.key_of(ino) {
            Ok(key) => !self.backend.shared(&key),
            Err(_) => false,
        }
    }

    /// [`DsFs::only_writer`] for the entries of directory `dir` named `names` (a readdirplus
    /// page), building each key from the directory's key instead of reading the index.
    pub fn only_writer_of_children<'n>(
        &self,
        dir: u64,
        names: impl Iterator<Item = (u64, &'n str)>,
    ) -> Vec<bool> {
        let always = self.store().revalidate_interval().is_zero();
        let dir_key = if always || ipfs::is_virtual(dir) {
            None
        } else {
            self.key_of(dir).ok()
        };
        names
            .map(|(ino, name)| {
                if always {
                    return true;
                }
                match (&dir_key, name_to_component(name.as_bytes())) {
                    (Some(k), Ok(NameRef::Component(c))) => match k.join_component(&c) {
                        Ok(key) => !self.backend.shared(&key),
                        Err(_) => false,
                    },
                    _ => self.only_writer(ino),
                }
            })
            .collect()
    }

    /// What the kernel may hold about `key`, as the index stands now (after the change).
    pub fn stale_of(&self, key: &Key) -> Stale {
        let mut stale = Stale {
            entry: None,
            inodes: Vec::new(),
        };
        if key.is_root() {
            return stale;
        }
        let index = self.store().index();
        match index.resolve(&key.parent()) {
            Ok(Some((dir, _))) => {
                let name = component_to_name(key.base_namespace());
                stale.entry = Some((dir, name.into_bytes()));
            }
            Ok(None) => {}
            Err(e) => log::debug!("{key}: no parent to invalidate ({e})"),
        }
        match index.resolve(key) {
            Ok(Some((id, node))) => {
                stale.inodes.push(id);
                if node.kind == NodeKind::Dir {
                    stale.inodes.push(Ino::dir_value(id).0);
                }
            }
            Ok(None) => {}
            Err(e) => log::debug!("{key}: no inode to invalidate ({e})"),
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::backend::MemStore;
    use crate::datastore::{Datastore, Key};
    use crate::fs::{DsFs, FsOptions};
    use crate::index::{Index, IndexOptions, IndexedStore, ROOT};

    #[test]
    fn a_key_put_beside_the_filesystem_is_heard_of_and_named() {
        let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
        let store = Arc::new(IndexedStore::new(Arc::new(MemStore::new()), index.clone()));
        let fs = DsFs::new(store.clone(), FsOptions::default());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        assert!(index.listen_for_changes(Box::new(move |_, keys| {
            h.lock().unwrap().extend(keys.iter().cloned())
        })));
        // What the command line does: a put through the store, not through the filesystem.
        store.put(&Key::new("/d/f"), b"hello").unwrap();
        assert_eq!(*heard.lock().unwrap(), vec![Key::new("/d/f")]);
        let d = fs.lookup(ROOT, b"d").unwrap().ino;
        let f = fs.lookup(d, b"f").unwrap().ino;
        let s = fs.stale_of(&Key::new("/d/f"));
        assert_eq!(s.entry, Some((d, b"f".to_vec())));
        assert_eq!(s.inodes, vec![f]);
        store.delete(&Key::new("/d/f")).unwrap();
        assert_eq!(heard.lock().unwrap().len(), 2);
        // Gone (and its implied directory with it): nothing left to name.
        let s = fs.stale_of(&Key::new("/d/f"));
        assert!(s.inodes.is_empty(), "{s:?}");
    }
}
