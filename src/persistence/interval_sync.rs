//! The syncing thread of `fsync = "interval"`: every `fsync_interval` the writer hands it the
//! sync of the segment it appends to, and goes on appending. A commit, and the
//! acknowledgements that wait for it, then never wait behind an `fdatasync`: on the writer's own
//! thread each periodic sync held every commit for as long as it took (2.5-4 ms for a fleet's
//! second of records on this machine's disk, 16-50 ms under pipelined traffic, far longer on a
//! slow card or network volume).
//!
//! One sync at a time: a sync handed over while one is under way waits for it (a later one
//! replaces it, since it covers the same bytes and more). A failed sync is retried every
//! [`RETRY_AFTER`], and until one succeeds the writer writes nothing more
//! ([`IntervalSyncer::wait_while_failing`]), so nothing more is acknowledged, as when it synced
//! on its own thread. What power loss can take is then what was acknowledged in up to
//! `fsync_interval`, and during the sync under way.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, error};

use super::batch_thread::run_as_batch_thread;
use super::guarded::{Guarded, SyncingState};
use super::log::Log;
use super::store::StoreShared;
use super::syncer::SyncJob;
use super::writer::RETRY_AFTER;

/// What the writer and the syncing thread share (behind a [`Guarded`]: the thread waits on it
/// for work, the writer for it to be idle or no longer failing).
#[derive(Default)]
struct State {
    /// The next sync to make.
    next: Option<SyncJob>,
    /// A sync is under way.
    busy: bool,
    /// The last sync failed and none has succeeded since.
    failing: bool,
    /// The writer is done: make what is queued, then end.
    closed: bool,
}

impl SyncingState for State {
    fn busy_or_queued(&self) -> bool {
        self.busy || self.next.is_some()
    }

    fn close(&mut self) {
        self.closed = true;
    }
}

/// The writer's handle on its interval syncing thread; dropping it lets the thread make what is
/// queued and joins it.
pub(super) struct IntervalSyncer {
    shared: Arc<Guarded<State>>,
    thread: Option<JoinHandle<()>>,
}

impl IntervalSyncer {
    /// Starts the syncing thread; `store` is where it counts its syncs and failures.
    pub(super) fn start(store: Arc<StoreShared>) -> std::io::Result<IntervalSyncer> {
        let shared = Arc::new(Guarded::default());
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("switchboard-persistence-sync".into())
            .spawn(move || run(&for_thread, &store))?;
        Ok(IntervalSyncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues the sync of `job`, made once the one under way (if any) is done.
    fn hand(&self, job: SyncJob) {
        self.shared.lock().next = Some(job);
        self.shared.notify_all();
    }

    /// The writer's periodic sync after a commit of change `seq` to `log`: with a flush, waits
    /// for the sync under way and leaves the flush's own sync to the writer; with a sync due,
    /// hands it a second handle on the segment. Returns whether the sync was handed over (not
    /// if no second handle could be had: the writer syncs then).
    pub(super) fn take_over(
        &self,
        log: &Log,
        seq: Option<u64>,
        flushing: bool,
        sync_due: bool,
    ) -> bool {
        if flushing {
            self.wait_idle();
            return false;
        }
        if !sync_due {
            return false;
        }
        // With `interval` no waiter counts on the job's change: it was reported when written.
        match log.sync_job(seq.unwrap_or(0)) {
            Some(job) => {
                self.hand(job);
                true
            }
            None => false,
        }
    }

    /// Waits while the last sync failed and none has succeeded since: the writer calls it before
    /// each commit, so that nothing more is acknowledged until the log can be synced.
    pub(super) fn wait_while_failing(&self) {
        drop(
            self.shared
                .wait_while(|state| state.failing && !state.closed),
        );
    }

    /// Waits until no sync is under way or queued: everything handed over is synced.
    fn wait_idle(&self) {
        self.shared.wait_idle();
    }
}

impl Drop for IntervalSyncer {
    fn drop(&mut self) {
        self.shared.close_and_join(&mut self.thread);
    }
}

/// The syncing thread: each job synced (tried again every [`RETRY_AFTER`] until it succeeds),
/// until closed with nothing queued.
fn run(shared: &Guarded<State>, store: &StoreShared) {
    run_as_batch_thread();
    loop {
        let job = {
            let mut state = shared.wait_while(|state| state.next.is_none() && !state.closed);
            let Some(job) = state.next.take() else {
                return;
            };
            state.busy = true;
            job
        };
        let started = Instant::now();
        while let Err(e) = job.sync() {
            // Failing before the line is logged: whoever reads the line finds the writer held.
            shared.lock().failing = true;
            store.stats.add_sync_failure();
            error!(error = %e, segment = %job.segment.display(), "cannot sync the persistence log; trying again in 1 s, nothing more is acknowledged until it can");
            std::thread::sleep(RETRY_AFTER);
        }
        store.stats.add_sync(started.elapsed(), &job.segment);
        debug!(segment = %job.segment.display(), offset = job.offset, "persistence log synced");
        {
            let mut state = shared.lock();
            state.busy = false;
            state.failing = false;
        }
        shared.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncPolicy;
    use crate::persistence::syncer::tests::job;

    fn started_store() -> Arc<StoreShared> {
        let store = Arc::new(StoreShared::new(1, false, Default::default()));
        store.stats.note_started(FsyncPolicy::Interval);
        store
    }

    fn syncs(store: &StoreShared) -> u64 {
        store.stats.snapshot().expect("started").syncs
    }

    #[test]
    fn a_handed_sync_is_made_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = started_store();
        let syncer = IntervalSyncer::start(store.clone()).expect("thread");
        syncer.hand(job(dir.path(), 1));
        syncer.wait_idle();
        assert_eq!(syncs(&store), 1);
        // Nothing failed: the writer is not held.
        syncer.wait_while_failing();
        assert!(!store.stats.snapshot().expect("started").syncs_failing);
        syncer.hand(job(dir.path(), 2));
        syncer.wait_idle();
        assert_eq!(syncs(&store), 2);
    }

    #[test]
    fn the_last_sync_handed_is_made_before_the_thread_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = started_store();
        let syncer = IntervalSyncer::start(store.clone()).expect("thread");
        syncer.hand(job(dir.path(), 1));
        syncer.hand(job(dir.path(), 2));
        drop(syncer);
        // The first may have been replaced by the second before the thread took it; the last
        // one handed is made either way.
        let made = syncs(&store);
        assert!((1..=2).contains(&made), "{made}");
    }
}
