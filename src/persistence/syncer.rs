//! The syncing thread of `fsync = "always"`: it syncs what the writer appended while the writer
//! goes on appending the next commits. A Session held at its duplicate bound waits only for
//! its records to be written ([`Store::notify_when_written`](super::Store::notify_when_written)),
//! so under steady traffic it is not held behind an `fdatasync` as well; acknowledgements still
//! wait for the sync, which the syncing thread reports.
//!
//! The writer hands a sync over only while one is under way or more changes are already
//! waiting. Otherwise (a lone commit: a device's message and its PUBACK) it syncs on its own
//! thread as before, with no hand-over between threads on the acknowledgement's path. It runs
//! at most [`MAX_UNSYNCED_BYTES`] ahead of the syncs: on a slow disk its queue then fills, and
//! the Sessions stop reading, as without this thread.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::{debug, error};

use super::batch_thread::run_as_batch_thread;
use super::store::StoreShared;
use super::writer::RETRY_AFTER;

/// How far the writer may append ahead of the last sync done ([`Syncer::wait_within`]).
pub(super) const MAX_UNSYNCED_BYTES: u64 = 4 << 20;

/// A sync the writer hands over: the change to report durable once `file` is synced, and where
/// the log ended then (for the debug line a power-loss test cuts the log back to).
pub(super) struct SyncJob {
    /// The last change appended.
    pub(super) seq: u64,
    /// The segment it was appended to (a second handle on it).
    pub(super) file: File,
    /// That segment's path.
    pub(super) segment: PathBuf,
    /// The segment's length after the append.
    pub(super) offset: u64,
    /// The bytes the writer had appended in all, then.
    pub(super) appended: u64,
}

/// What the writer and the syncing thread share.
#[derive(Default)]
struct State {
    /// The next sync to make; a later hand-over replaces it (its sync covers the earlier one's
    /// bytes, or a compaction's synced snapshot superseded them).
    next: Option<SyncJob>,
    /// A sync is under way.
    busy: bool,
    /// [`SyncJob::appended`] of the last sync done.
    synced: u64,
    /// The writer is done: sync what is queued, then end.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The syncing thread waits on it for work, the writer for it to be idle.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits on [`Shared::changed`] while `blocked` holds for the state.
    fn wait_while(&self, blocked: impl FnMut(&mut State) -> bool) -> MutexGuard<'_, State> {
        self.changed
            .wait_while(self.lock(), blocked)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer's handle on its syncing thread; dropping it lets the thread finish what is
/// queued and joins it.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncing thread of `store`.
    pub(super) fn start(store: Arc<StoreShared>) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("switchboard-persistence-sync".into())
            .spawn(move || run(&for_thread, &store))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether a sync is under way or queued.
    pub(super) fn is_busy(&self) -> bool {
        let state = self.shared.lock();
        state.busy || state.next.is_some()
    }

    /// Queues `job`, after the sync under way if there is one.
    pub(super) fn hand(&self, job: SyncJob) {
        self.shared.lock().next = Some(job);
        self.shared.changed.notify_all();
    }

    /// Waits while the writer, having appended `appended` bytes in all, is more than
    /// [`MAX_UNSYNCED_BYTES`] ahead of the last sync done and a sync is under way or queued.
    pub(super) fn wait_within(&self, appended: u64) {
        drop(self.shared.wait_while(|state| {
            (state.busy || state.next.is_some())
                && appended.saturating_sub(state.synced) > MAX_UNSYNCED_BYTES
        }));
    }

    /// The writer synced itself everything up to `appended` bytes in all (a lone commit, or a
    /// flush): [`Syncer::wait_within`] counts from there.
    pub(super) fn note_synced(&self, appended: u64) {
        let mut state = self.shared.lock();
        state.synced = state.synced.max(appended);
    }

    /// Waits until no sync is under way or queued: every change handed over is durable and
    /// reported.
    pub(super) fn wait_idle(&self) {
        drop(
            self.shared
                .wait_while(|state| state.busy || state.next.is_some()),
        );
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The syncing thread: each queued job synced, then reported durable, until closed.
fn run(shared: &Shared, store: &Arc<StoreShared>) {
    run_as_batch_thread();
    let mut ready = Vec::new();
    loop {
        let job = {
            let mut state = shared.wait_while(|state| state.next.is_none() && !state.closed);
            let Some(job) = state.next.take() else {
                return;
            };
            state.busy = true;
            job
        };
        while let Err(e) = job.file.sync_data() {
            error!(error = %e, segment = %job.segment.display(), "cannot sync the persistence log; trying again in 1 s, nothing more is acknowledged until it can");
            std::thread::sleep(RETRY_AFTER);
        }
        // What a power-loss test cuts the log back to.
        debug!(segment = %job.segment.display(), offset = job.offset, "persistence log synced");
        store.report_durable(job.seq, &mut ready);
        {
            let mut state = shared.lock();
            state.busy = false;
            state.synced = state.synced.max(job.appended);
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job syncing a new file in `dir`, for change `seq`.
    fn job(dir: &std::path::Path, seq: u64) -> SyncJob {
        let segment = dir.join(format!("{seq}.log"));
        let file = File::create(&segment).expect("create");
        SyncJob {
            seq,
            file,
            segment,
            offset: 0,
            appended: seq,
        }
    }

    #[test]
    fn each_change_handed_over_is_reported_durable_once_synced_and_the_last_is_not_lost_at_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(StoreShared::new(1, true));
        let syncer = Syncer::start(store.clone()).expect("thread");
        assert!(!syncer.is_busy());
        syncer.hand(job(dir.path(), 5));
        syncer.wait_idle();
        assert_eq!(store.durable(), 5, "reported once synced");
        assert!(store.written() >= 5, "durable is written too");
        // Handed while one may be under way: the later one replaces what is queued.
        syncer.hand(job(dir.path(), 6));
        syncer.hand(job(dir.path(), 7));
        syncer.wait_idle();
        assert_eq!(store.durable(), 7);
        // Idle, the writer never waits for it, however far ahead it has appended.
        syncer.wait_within(u64::MAX);
        syncer.note_synced(100);
        // A job still queued when the writer ends is synced before the thread ends.
        syncer.hand(job(dir.path(), 8));
        drop(syncer);
        assert_eq!(store.durable(), 8);
    }
}
