//! Waking the writer thread after a submission: at once, or (with `fsync = "always"`, on an
//! actix thread) once the tasks ready on that thread have run, so that one sync takes a whole
//! turn of the worker's Sessions.

use std::cell::RefCell;
use std::sync::Arc;

use super::store::StoreShared;

thread_local! {
    /// The stores whose writer this thread is to wake once its ready tasks have run
    /// ([`wake_soon`]).
    pub(super) static TO_WAKE: RefCell<Vec<Arc<StoreShared>>> = const { RefCell::new(Vec::new()) };
}

/// Wakes `shared`'s writer. With `fsync = "always"`, on an actix thread, once the tasks ready
/// there have run: each commit then costs an `fdatasync`, and one commit takes a whole turn
/// of the worker's Sessions. Otherwise (another policy, another thread, or the thread's
/// Arbiter gone) at once: a commit is one cheap write, and waiting for the turn to end kept
/// acknowledgements, and output at the duplicate bound, waiting longer than the write takes.
pub(super) fn wake_soon(shared: &Arc<StoreShared>) {
    if shared.wake_at_once {
        shared.wake_writer.notify_one();
        return;
    }
    // A wake already scheduled on this thread takes this store along.
    let scheduled = TO_WAKE.with(|to_wake| {
        let mut to_wake = to_wake.borrow_mut();
        if to_wake.is_empty() {
            return false;
        }
        if !to_wake.iter().any(|s| Arc::ptr_eq(s, shared)) {
            to_wake.push(shared.clone());
        }
        true
    });
    if scheduled {
        return;
    }
    let Some(arbiter) = actix_rt::Arbiter::try_current() else {
        shared.wake_writer.notify_one();
        return;
    };
    TO_WAKE.with(|to_wake| to_wake.borrow_mut().push(shared.clone()));
    // Spawned on this thread's Arbiter, behind the tasks already ready here (never a panic:
    // sent through its channel, not spawned into a task set that may be shutting down).
    let sent = arbiter.spawn(async { wake_scheduled() });
    if !sent {
        wake_scheduled();
    }
}

/// Wakes the writers of the stores [`wake_soon`] listed on this thread.
fn wake_scheduled() {
    for shared in TO_WAKE.with(|to_wake| std::mem::take(&mut *to_wake.borrow_mut())) {
        shared.wake_writer.notify_one();
    }
}
