//! Who hears of index changes that the filesystem did not make: values recorded by
//! [`Index::record_put`], [`Index::record_delete`] and [`Index::record_batch`], which is how the
//! command line (`dsfs put` and friends, through the store or the mounted daemon's control
//! socket), revalidation and following (another program writing a shared store) change the
//! index. The filesystem's own operations change it through other calls, and the kernel
//! learns of those from their replies.
//!
//! A mounted filesystem registers a listener so that it can tell the kernel to forget what it
//! cached about such keys. The listener is called after the change is committed to the index,
//! on the thread that made it, which may be serving a FUSE request: it must not block (queue
//! the keys and act on another thread).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Index;
use crate::datastore::Key;

/// A function told of keys changed outside the filesystem, with the change's sequence number
/// (to report back through [`Index::changes_handled`]).
pub type Listener = Box<dyn Fn(u64, &[Key]) + Send + Sync>;

/// The index's listener slot, and how far the listener got.
#[derive(Default)]
pub struct Changes {
    listener: OnceLock<Listener>,
    /// Sequence numbers: the last change told, the last one handled.
    seq: Mutex<(u64, u64)>,
    handled: Condvar,
}

impl Changes {
    /// Tells the listener, if any, that `keys` changed.
    pub(super) fn tell(&self, keys: &[Key]) {
        if let Some(listener) = self.listener.get()
            && !keys.is_empty()
        {
            let seq = {
                let mut s = self.seq.lock();
                s.0 += 1;
                s.0
            };
            listener(seq, keys);
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
