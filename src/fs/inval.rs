//! What the kernel must forget when a key changes outside the filesystem: the command line
//! writing a mounted store through the daemon's control socket, or revalidation learning that
//! another program changed a shared store (see `index::changes`). The kernel caches names and
//! attributes for the entry and attribute timeouts (30 s where [`DsFs::only_writer`] holds,
//! 1 s elsewhere), pages across opens (`FOPEN_KEEP_CACHE`) and directory listings across opens
//! (dsfs answers no OPENDIR, so every directory is opened with `FOPEN_CACHE_DIR |
//! FOPEN_KEEP_CACHE`); the FUSE adapter turns these into `inval_entry`/`inval_inode`
//! notifications, from a thread of its own (never inside a request).
//!
//! A directory's listing changes behind the kernel's back only through such changes (every
//! change made through the mount reaches the kernel with its reply, and the kernel drops the
//! listings it changes itself; `/.ipfs` and what is under it never change). For each change
//! the index names every entry it linked or unlinked ([`Listings`]): the listings of those
//! directories are dropped (`inval_inode` of the directory) and the names forgotten
//! (`inval_entry`). The index also moves each such directory's modification time, which the
//! kernel compares before it serves a cached listing, so a `READDIR` answered before the change
//! and cached after the notification is not served either.

use std::collections::BTreeSet;

use super::names::{NameRef, component_to_name, name_to_component};
use super::types::Ino;
use super::{DsFs, ipfs};
use crate::datastore::Key;
use crate::index::NodeKind;
use crate::index::changes::{Changed, Listings};

/// What the kernel must forget after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stale {
    /// Names to forget (dentries): (directory, name).
    pub entries: BTreeSet<(u64, Vec<u8>)>,
    /// Inodes whose attributes and pages to forget: those now at the changed keys, and every
    /// directory whose listing changed (a directory's pages hold its cached listing).
    pub inodes: BTreeSet<u64>,
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

    /// What the kernel may hold that `changed` made stale, as the index stands now (after the
    /// change).
    pub fn stale_of_change(&self, changed: &Changed) -> Stale {
        let mut stale = Stale::default();
        for key in &changed.keys {
            self.stale_of_key(key, &mut stale);
        }
        Self::stale_listings(&changed.listings, &mut stale);
        stale
    }

    /// Adds what the kernel may hold about `key` to `stale`: its name, and the inode at it (a
    /// directory's own listing shows its value as `.dsfs.value`).
    fn stale_of_key(&self, key: &Key, stale: &mut Stale) {
        if key.is_root() {
            stale.inodes.insert(crate::index::ROOT);
            return;
        }
        let index = self.store().index();
        match index.resolve(&key.parent()) {
            Ok(Some((dir, _))) => {
                let name = component_to_name(key.base_namespace());
                stale.entries.insert((dir, name.into_bytes()));
            }
            Ok(None) => {}
            Err(e) => log::debug!("{key}: no parent to invalidate ({e})"),
        }
        match index.resolve(key) {
            Ok(Some((id, node))) => {
                stale.inodes.insert(id);
                if node.kind == NodeKind::Dir {
                    stale.inodes.insert(Ino::dir_value(id).0);
                }
            }
            Ok(None) => {}
            Err(e) => log::debug!("{key}: no inode to invalidate ({e})"),
        }
    }

    /// Adds the changed listings and their entries to `stale`.
    fn stale_listings(listings: &Listings, stale: &mut Stale) {
        for (dir, component) in &listings.entries {
            stale
                .entries
                .insert((*dir, component_to_name(component).into_bytes()));
        }
        stale.inodes.extend(listings.dirs());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use crate::backend::MemStore;
    use crate::datastore::{Datastore, Key};
    use crate::fs::{Ctx, DsFs, FsOptions};
    use crate::index::changes::Changed;
    use crate::index::{Index, IndexOptions, IndexedStore, ROOT};

    /// A filesystem over a memory store whose index tells `heard` of every change.
    fn listened() -> (Arc<IndexedStore>, DsFs, Arc<Mutex<Vec<Changed>>>) {
        let index = Arc::new(Index::in_memory(IndexOptions::default()).unwrap());
        let store = Arc::new(IndexedStore::new(Arc::new(MemStore::new()), index.clone()));
        let fs = DsFs::new(store.clone(), FsOptions::default());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        assert!(index.listen_for_changes(Box::new(move |_, changed| {
            h.lock().unwrap().push(Changed {
                keys: changed.keys.clone(),
                listings: crate::index::changes::Listings {
                    entries: changed.listings.entries.clone(),
                },
            })
        })));
        (store, fs, heard)
    }

    fn entries(pairs: &[(u64, &str)]) -> BTreeSet<(u64, Vec<u8>)> {
        pairs
            .iter()
            .map(|(d, n)| (*d, n.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_key_put_beside_the_filesystem_is_heard_of_and_named() {
        let (store, fs, heard) = listened();
        // What the command line does: a put through the store, not through the filesystem.
        store.put(&Key::new("/d/f"), b"hello").unwrap();
        let change = heard.lock().unwrap().pop().unwrap();
        assert_eq!(change.keys, vec![Key::new("/d/f")]);
        let d = fs.lookup(ROOT, b"d").unwrap().ino;
        let f = fs.lookup(d, b"f").unwrap().ino;
        let s = fs.stale_of_change(&change);
        // The new name, and the implied directory's in the root: both listings changed.
        assert_eq!(s.entries, entries(&[(ROOT, "d"), (d, "f")]));
        assert_eq!(s.inodes, BTreeSet::from([ROOT, d, f]));
        store.delete(&Key::new("/d/f")).unwrap();
        let change = heard.lock().unwrap().pop().unwrap();
        // Gone, and its implied directory with it: the root's listing changed.
        let s = fs.stale_of_change(&change);
        assert_eq!(s.entries, entries(&[(ROOT, "d"), (d, "f")]));
        assert_eq!(s.inodes, BTreeSet::from([ROOT, d]));
    }

    #[test]
    fn a_value_removed_beside_the_filesystem_names_every_hard_link() {
        let (store, fs, heard) = listened();
        store.put(&Key::new("/a/f"), b"hello").unwrap();
        let ctx = Ctx { uid: 0, gid: 0 };
        let b = fs.mkdir(ctx, ROOT, b"b", 0o755, 0).unwrap().ino;
        let a = fs.lookup(ROOT, b"a").unwrap().ino;
        let f = fs.lookup(a, b"f").unwrap().ino;
        fs.link(f, b, b"g").unwrap();
        heard.lock().unwrap().clear();
        store.delete(&Key::new("/a/f")).unwrap();
        let change = heard.lock().unwrap().pop().unwrap();
        // The link in b went with the value: b's listing changed, though no key under b did.
        let s = fs.stale_of_change(&change);
        assert_eq!(s.entries, entries(&[(ROOT, "a"), (a, "f"), (b, "g")]));
        assert!(s.inodes.contains(&b), "{s:?}");
        assert!(fs.lookup(b, b"g").is_err());
    }
}
