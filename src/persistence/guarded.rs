//! A helper thread's state behind a mutex, with the condition its waiters wait on: the shape
//! the writer shares with its syncing threads (`syncer.rs`, `interval_sync.rs`).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A state behind a mutex, and the condition variable its changes are told on.
#[derive(Default)]
pub(super) struct Guarded<S> {
    state: Mutex<S>,
    changed: Condvar,
}

impl<S> Guarded<S> {
    /// The state, locked. A panic on another thread that held the lock leaves the state as it
    /// was then, which serves no worse than stopping persistence altogether would.
    pub(super) fn lock(&self) -> MutexGuard<'_, S> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for changes while `blocked` holds for the state; returns it locked.
    pub(super) fn wait_while(&self, blocked: impl FnMut(&mut S) -> bool) -> MutexGuard<'_, S> {
        self.changed
            .wait_while(self.lock(), blocked)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells every waiter to look at the state again.
    pub(super) fn notify_all(&self) {
        self.changed.notify_all();
    }
}

/// What the writer needs of a syncing thread's state: whether a sync is under way or queued, and
/// how to tell the thread to end once it has made what is queued.
pub(super) trait SyncingState {
    /// A sync is under way or queued.
    fn busy_or_queued(&self) -> bool;
    /// Tells the thread to end once nothing is queued.
    fn close(&mut self);
}

impl<S: SyncingState> Guarded<S> {
    /// Waits until no sync is under way or queued.
    pub(super) fn wait_idle(&self) {
        drop(self.wait_while(|state| state.busy_or_queued()));
    }

    /// Tells the thread to end and joins it (it makes what is queued first).
    pub(super) fn close_and_join(&self, thread: &mut Option<JoinHandle<()>>) {
        self.lock().close();
        self.notify_all();
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
    }
}
