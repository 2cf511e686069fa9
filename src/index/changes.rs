//! Who hears of index changes that the filesystem did not make: values recorded by
//! [`Index::record_put`], [`Index::record_delete`] and [`Index::record_batch`], which is how the
//! command line (`dsfs put` and friends, through the store or the mounted daemon's control
//! socket), revalidation and following (another program writing a shared store) change the
//! index. The filesystem's own operations change it through other calls, and the kernel
//! learns of those from their replies.
//!
//! A mounted filesystem registers a listener so that it can tell the kernel to forget what it
//! cached about such keys, and about the directories whose listings changed with them: the
//! kernel may keep a directory's listing across opens, so every entry such a change links or
//! unlinks (a new key's implied directories, an emptied implied directory pruned, every hard
//! link of a removed value, a file turned into a directory) is noted in the write transaction
//! and told with the keys ([`Listings`]). The listener is called after the change is committed
//! to the index, on the thread that made it, which may be serving a FUSE request: it must not
//! block (queue the keys and act on another thread).

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::node::NodeId;
use super::{Index, Tx};
use crate::datastore::Key;

/// A function told of keys changed outside the filesystem, with the change's sequence number
/// (to report back through [`Index::changes_handled`]).
pub type Listener = Box<dyn Fn(u64, &Changed) + Send + Sync>;

/// One change told to the listener.
#[derive(Debug, Default)]
pub struct Changed {
    /// The keys put or deleted.
    pub keys: Vec<Key>,
    /// The directory entries the change linked, unlinked or retyped.
    pub listings: Listings,
}

/// The directory entries one index write linked, unlinked or changed the type of, as
/// (directory, name): the listings of those directories changed, and the kernel may hold a
/// name (or a negative answer) for each entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listings {
    /// (directory, name of the entry as an index component).
    pub entries: BTreeSet<(NodeId, String)>,
}

impl Listings {
    /// The directories whose listings changed.
    pub fn dirs(&self) -> BTreeSet<NodeId> {
        self.entries.iter().map(|(d, _)| *d).collect()
    }
}

impl Tx<'_> {
    /// Notes the listings this write changes from now on, if a listener is registered.
    pub(super) fn track_listings(&mut self, changes: &Changes) {
        if changes.listener.get().is_some() {
            self.listings = Some(Listings::default());
        }
    }

    /// Records that the entry `name` of `dir` was linked, unlinked or changed its type (when
    /// tracking; see [`Tx::track_listings`]).
    pub(super) fn note_listing(&mut self, dir: NodeId, name: &str) {
        if let Some(l) = &mut self.listings {
            l.entries.insert((dir, name.to_owned()));
        }
    }

    /// The listings noted so far (none when not tracking); tracking stops.
    pub(super) fn take_listings(&mut self) -> Listings {
        self.listings.take().unwrap_or_default()
    }
}

/// The index's listener slot, and how far the listener got.
#[derive(Default)]
pub struct Changes {
    listener: OnceLock<Listener>,
    /// Sequence numbers: the last change told, the last one handled.
    seq: Mutex<(u64, u64)>,
    handled: Condvar,
}

impl Changes {
    /// Tells the listener, if any, that `keys` changed, and with them `listings`.
    pub(super) fn tell(&self, keys: &[Key], listings: Listings) {
        if let Some(listener) = self.listener.get()
            && (!keys.is_empty() || !listings.entries.is_empty())
        {
            let seq = {
                let mut s = self.seq.lock();
                s.0 += 1;
                s.0
            };
            listener(
                seq,
                &Changed {
                    keys: keys.to_vec(),
                    listings,
                },
            );
        }
    }
}

impl Index {
    /// Registers the function told of keys changed outside the filesystem (see the module
    /// documentation). Only the first registration counts; returns whether this was it.
    pub fn listen_for_changes(&self, listener: Listener) -> bool {
        self.changes.listener.set(listener).is_ok()
    }

    /// The listener has acted on every change up to sequence number `seq`.
    pub fn changes_handled(&self, seq: u64) {
        let mut s = self.changes.seq.lock();
        s.1 = s.1.max(seq);
        self.changes.handled.notify_all();
    }

    /// Waits until the listener has acted on every change told so far, for at most
    /// `timeout`; returns whether it has. The control socket calls this before it answers a
    /// command, so that what the command changed is visible in the mount when it returns.
    pub fn wait_for_changes_handled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.changes.seq.lock();
        let target = s.0;
        while s.1 < target {
            if self
                .changes
                .handled
                .wait_until(&mut s, deadline)
                .timed_out()
            {
                return s.1 >= target;
            }
        }
        true
    }
}
