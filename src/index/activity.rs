//! Operations of one kind in progress, counted so that another operation can tell whether any of
//! them overlapped it: it takes the [`Activity::quiet`] state before it reads and compares it with
//! the state after (or holds [`Activity::still_quiet`] while it acts on what it read). The index
//! keeps two: moves of values in the store ahead of the index ([`Index::begin_move`]) and its own
//! write transactions ([`Index::write_mark`]).
//!
//! [`Index::begin_move`]: super::Index::begin_move
//! [`Index::write_mark`]: super::Index::write_mark

use parking_lot::{Mutex, MutexGuard};

/// A count of operations in progress and begun.
#[derive(Default)]
pub(crate) struct Activity {
    state: Mutex<ActivityState>,
}

/// What an [`Activity`] has seen: equal states mean no operation began in between.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityState {
    /// Operations begun and not yet ended.
    in_flight: usize,
    /// Operations begun since the index was opened.
    begun: u64,
}

/// One operation in progress (see [`Activity::begin`]); dropping it ends the operation.
pub struct ActivityMark<'a> {
    activity: &'a Activity,
}

impl Drop for ActivityMark<'_> {
    fn drop(&mut self) {
        self.activity.state.lock().in_flight -= 1;
    }
}

impl Activity {
    /// Begins one operation, which lasts until the mark is dropped.
    pub(crate) fn begin(&self) -> ActivityMark<'_> {
        let mut st = self.state.lock();
        st.in_flight += 1;
        st.begun += 1;
        ActivityMark { activity: self }
    }

    /// The state to compare against later; `None` while an operation is in progress.
    pub(crate) fn quiet(&self) -> Option<ActivityState> {
        let st = *self.state.lock();
        (st.in_flight == 0).then_some(st)
    }

    /// `None` if an operation began since `since`; else a guard under which none begins.
    pub(crate) fn still_quiet(
        &self,
        since: ActivityState,
    ) -> Option<MutexGuard<'_, ActivityState>> {
        let st = self.state.lock();
        (*st == since).then_some(st)
    }
}
