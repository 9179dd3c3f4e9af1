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
//!
//! A sync nobody waits for is skipped: the job is parked instead, and the next sync covers
//! its bytes. That is where every wait was withdrawn (a publisher's PUBACK its subscribers
//! settled, `routing::Settlement`) or none was made (a subscriber's record of a PUBACK). The
//! syncing thread decides as it takes a job, which has waited behind the sync under way, and
//! the writer as it hands one over. Either way the skip is noted in the store before the
//! waiters are looked at once more, and a waiter looks at the skip after it is listed
//! (both sequentially consistent): a waiter listed meanwhile is either seen, and the sync
//! made, or sees the skip and asks for it ([`SyncerLink::sync_skipped`]). At most
//! [`MAX_UNSYNCED_BYTES`] go unsynced this way; a flush or the end syncs what is parked.
//!
//! A job whose only waiters are publishers their subscribers may settle
//! ([`Store::notify_when_durable_unless_settled`](super::Store::notify_when_durable_unless_settled))
//! is given [`SETTLE_GRACE`] from its write before the syncing thread decides: a commit is
//! written some 20 µs after its publish, before a device's subscriber can have answered, so
//! without it nearly every job found someone waiting.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use super::batch_thread::run_as_batch_thread;
use super::dir_entries::DirEntries;
use super::guarded::{Guarded, SyncingState};
use super::store::StoreShared;

/// How far the writer may append ahead of the last sync done ([`Syncer::wait_within`]).
pub(super) const MAX_UNSYNCED_BYTES: u64 = 4 << 20;

/// With `fsync = "always"`, how long after a commit's write the syncing thread waits before it
/// decides on its sync when the only waiters are publishers whose subscribers may settle their
/// acknowledgements first: a device's round trip on loopback. If they are all settled by then,
/// the sync is skipped (parked). With a waiter listed that no settlement may end, the sync is
/// made at once; one that lists itself during the grace waits out the rest of it. Measured in
/// `docs/benchmarks.md`, "Settlements given a moment before a lone commit's sync" (the grace
/// on the writer's lone commits only) and "The settlements' moment on the syncing thread".
pub(super) const SETTLE_GRACE: Duration = Duration::from_micros(200);

/// A sync the writer hands over: the change to report durable once `file` is synced, and where
/// the log ended then (for the debug line a power-loss test cuts the log back to).
pub(super) struct SyncJob {
    /// The last change appended.
    pub(super) seq: u64,
    /// The segment it was appended to (a second handle on it).
    pub(super) file: File,
    /// The log directory's entries not yet synced, synced after the segment.
    pub(super) entries: Arc<DirEntries>,
    /// That segment's path.
    pub(super) segment: PathBuf,
    /// The segment's length after the append.
    pub(super) offset: u64,
    /// The bytes the writer had appended in all, then.
    pub(super) appended: u64,
    /// When the writer had appended it: [`SETTLE_GRACE`] counts from here.
    pub(super) written: Instant,
}

impl SyncJob {
    /// Syncs the segment's data, then the log directory if a segment was started since its
    /// last sync (`dir_entries.rs`): only then is what was appended durable.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.entries.sync_if_changed()
    }
}

/// What the writer and the syncing thread share.
#[derive(Default)]
struct State {
    /// The next sync to make; a later hand-over replaces it (its sync covers the earlier one's
    /// bytes, or a compaction's synced snapshot superseded them).
    next: Option<SyncJob>,
    /// A sync skipped because nobody waited for it: made if someone asks, else covered by the
    /// next one.
    parked: Option<SyncJob>,
    /// A sync is under way, or the syncing thread gives a job's settlements their moment
    /// before it decides.
    busy: bool,
    /// [`SyncJob::appended`] of the last sync done.
    synced: u64,
    /// The writer is done: sync what is queued, then end.
    closed: bool,
}

struct Shared {
    /// The syncing thread waits on it for work, the writer for it to be idle.
    state: Guarded<State>,
    /// [`SETTLE_GRACE`] (longer in tests).
    grace: Duration,
}

impl std::ops::Deref for Shared {
    type Target = Guarded<State>;

    fn deref(&self) -> &Guarded<State> {
        &self.state
    }
}

impl SyncingState for State {
    fn busy_or_queued(&self) -> bool {
        self.busy || self.next.is_some()
    }

    fn close(&mut self) {
        self.closed = true;
    }
}

/// The store's handle on the syncing thread: for a waiter whose change's sync was skipped.
pub(super) struct SyncerLink(Arc<Shared>);

impl SyncerLink {
    /// Queues the parked sync, if there is one and nothing is queued (what is queued covers
    /// it).
    pub(super) fn sync_skipped(&self) {
        let mut state = self.0.lock();
        if let Some(parked) = state.parked.take() {
            if state.next.is_none() {
                state.next = Some(parked);
            }
            drop(state);
            self.0.notify_all();
        }
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
        Syncer::start_with_grace(store, SETTLE_GRACE)
    }

    /// [`Syncer::start`] giving settlements `grace` instead of [`SETTLE_GRACE`].
    fn start_with_grace(store: Arc<StoreShared>, grace: Duration) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            state: Guarded::default(),
            grace,
        });
        store.link_syncer(SyncerLink(shared.clone()));
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
        state.busy_or_queued()
    }

    /// Whether the thread has a job in hand and none queued: syncing it, or giving its
    /// settlements their moment.
    #[cfg(test)]
    fn has_one_in_hand(&self) -> bool {
        let state = self.shared.lock();
        state.busy && state.next.is_none()
    }

    /// Queues `job`, after the sync under way if there is one.
    pub(super) fn hand(&self, job: SyncJob) {
        self.shared.lock().next = Some(job);
        self.shared.notify_all();
    }

    /// Hands `job` over unless nobody waits for it: then parks it (or, while a sync is under
    /// way, queues it, and the syncing thread decides as it takes it). Not beyond
    /// [`MAX_UNSYNCED_BYTES`] unsynced.
    pub(super) fn hand_or_park(&self, job: SyncJob, store: &StoreShared) {
        let state = self.shared.lock();
        let idle = !state.busy && state.next.is_none();
        let (mut state, job) = if idle && !must_sync(&state, &job, store) {
            match park(&self.shared, state, job, store) {
                Some(taken_back) => taken_back,
                None => return,
            }
        } else {
            (state, job)
        };
        state.next = Some(job);
        drop(state);
        self.shared.notify_all();
    }

    /// Waits until no sync is under way or queued ([`Syncer::wait_idle`]), then takes the
    /// parked sync off, for the writer to make (a flush); returns its change. Under one lock:
    /// a parked sync this thread took up meanwhile is done when this returns.
    pub(super) fn idle_and_take_parked(&self) -> Option<u64> {
        let mut state = self.shared.wait_while(|state| state.busy_or_queued());
        state.parked.take().map(|job| job.seq)
    }

    /// Waits while the writer, having appended `appended` bytes in all, is more than
    /// [`MAX_UNSYNCED_BYTES`] ahead of the last sync done and a sync is under way or queued.
    pub(super) fn wait_within(&self, appended: u64) {
        drop(self.shared.wait_while(|state| {
            state.busy_or_queued() && appended.saturating_sub(state.synced) > MAX_UNSYNCED_BYTES
        }));
    }

    /// The writer synced itself everything up to `appended` bytes in all (a lone commit, or a
    /// flush): [`Syncer::wait_within`] counts from there.
    pub(super) fn note_synced(&self, appended: u64) {
        let mut state = self.shared.lock();
        state.synced = state.synced.max(appended);
        // Covered; the writer reports its own change, a later one, durable next.
        if state
            .parked
            .as_ref()
            .is_some_and(|p| p.appended <= appended)
        {
            state.parked = None;
        }
    }

    /// Waits until no sync is under way or queued: every change handed over is durable and
    /// reported.
    pub(super) fn wait_idle(&self) {
        self.shared.wait_idle();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.close_and_join(&mut self.thread);
    }
}

/// Whether `job` must be synced: someone waits for a change up to it, or the writer has
/// appended too far beyond the last sync for it to wait longer.
fn must_sync(state: &State, job: &SyncJob, store: &StoreShared) -> bool {
    job.appended.saturating_sub(state.synced) > MAX_UNSYNCED_BYTES
        || store.anyone_waits_upto(job.seq)
}

/// Whether `job`'s sync may be spared if its waiters are settled within [`SETTLE_GRACE`]:
/// someone waits for it, but only publishers whose subscribers may settle them, and the
/// writer is not too far ahead of the syncs (nor closed) for it to wait.
fn settlements_may_spare(state: &State, job: &SyncJob, store: &StoreShared) -> bool {
    !state.closed
        && job.appended.saturating_sub(state.synced) <= MAX_UNSYNCED_BYTES
        && store.anyone_waits_upto(job.seq)
        && !store.anyone_firm_waits_upto(job.seq)
}

/// Waits, unlocked and counted busy (a flush waits for it, the writer queues the next job
/// meanwhile), until [`SETTLE_GRACE`] has passed since `job` was written; returns the lock
/// again with the thread not busy, for the decision.
fn give_settlements_their_moment<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    job: &SyncJob,
) -> MutexGuard<'a, State> {
    let left = (job.written + shared.grace).saturating_duration_since(Instant::now());
    if left.is_zero() {
        return state;
    }
    state.busy = true;
    drop(state);
    std::thread::sleep(left);
    let mut state = shared.lock();
    state.busy = false;
    state
}

/// Parks `job`, which nobody waits for, notes the skip in the store, and looks at the
/// waiters once more: if one listed itself meanwhile, takes the job back (if nobody else
/// did), under the lock it returns.
fn park<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    job: SyncJob,
    store: &StoreShared,
) -> Option<(MutexGuard<'a, State>, SyncJob)> {
    let seq = job.seq;
    state.parked = Some(job);
    drop(state);
    // The writer may wait for this thread to be idle (a flush).
    shared.notify_all();
    store.note_skipped(seq);
    if !store.anyone_waits_upto(seq) {
        return None;
    }
    let mut state = shared.lock();
    // None: taken by a flush, or queued by a waiter, and handled there.
    let job = state.parked.take()?;
    Some((state, job))
}

/// The syncing thread: each queued job synced, then reported durable, until closed; a job
/// nobody waits for is parked instead.
fn run(shared: &Shared, store: &Arc<StoreShared>) {
    run_as_batch_thread();
    let mut ready = Vec::new();
    loop {
        let job = {
            let mut state = shared.wait_while(|state| state.next.is_none() && !state.closed);
            // At the end, what is parked is synced too.
            let Some(job) = state.next.take().or_else(|| state.parked.take()) else {
                return;
            };
            let state = if settlements_may_spare(&state, &job, store) {
                give_settlements_their_moment(shared, state, &job)
            } else {
                state
            };
            let (mut state, job) = if state.closed || must_sync(&state, &job, store) {
                (state, job)
            } else {
                match park(shared, state, job, store) {
                    Some(taken_back) => taken_back,
                    None => continue,
                }
            };
            state.busy = true;
            job
        };
        let started = Instant::now();
        if let Err(e) = job.sync() {
            // Not retried: a later success would not say the data is on disk. Nothing is
            // reported durable from now on (`StoreShared::report_durable`).
            store.stats.lose_durability(&e, &job.segment);
        } else {
            store.stats.add_sync(started.elapsed(), &job.segment);
            // What a power-loss test cuts the log back to.
            debug!(segment = %job.segment.display(), offset = job.offset, "persistence log synced");
        }
        store.report_durable(job.seq, &mut ready);
        {
            let mut state = shared.lock();
            state.busy = false;
            state.synced = state.synced.max(job.appended);
            if state.parked.as_ref().is_some_and(|p| p.seq <= job.seq) {
                state.parked = None;
            }
        }
        shared.notify_all();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::persistence::durable_waiters::tests::{next_told, Waiter};
    use crate::persistence::durable_waiters::DurableTo;
    use crate::persistence::store::Store;
    use actix::Actor;

    /// A store with its syncing thread, no writer (the tests hand the jobs), and a directory
    /// for the jobs' files.
    struct Fixture {
        dir: tempfile::TempDir,
        shared: Arc<StoreShared>,
        store: Store,
        syncer: Syncer,
    }

    fn fixture() -> Fixture {
        fixture_with_grace(SETTLE_GRACE)
    }

    /// [`fixture`] whose syncing thread gives settlements `grace`.
    fn fixture_with_grace(grace: Duration) -> Fixture {
        let shared = Arc::new(StoreShared::new(1, true, Default::default()));
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            store: Store::new(shared.clone()),
            syncer: Syncer::start_with_grace(shared.clone(), grace).expect("thread"),
            shared,
        }
    }

    /// A job syncing a new file in `dir`, for change `seq`.
    pub(in crate::persistence) fn job(dir: &std::path::Path, seq: u64) -> SyncJob {
        let segment = dir.join(format!("{seq}.log"));
        let file = File::create(&segment).expect("create");
        SyncJob {
            seq,
            file,
            entries: Arc::new(DirEntries::new(dir.to_path_buf())),
            segment,
            offset: 0,
            appended: seq,
            written: Instant::now(),
        }
    }

    #[test]
    fn each_change_handed_over_is_reported_durable_once_synced_and_the_last_is_not_lost_at_close() {
        let Fixture {
            dir,
            shared,
            store,
            syncer,
        } = fixture();
        assert!(!syncer.is_busy());
        let (told, heard) = std::sync::mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            assert!(!store.notify_when_durable(5, &to));
            syncer.hand(job(dir.path(), 5));
            assert_eq!(next_told(&heard).await, 5, "reported once synced");
            assert!(shared.written() >= 5, "durable is written too");
            // Handed while one may be under way: the later one replaces what is queued.
            assert!(!store.notify_when_durable(6, &to));
            syncer.hand(job(dir.path(), 6));
            syncer.hand(job(dir.path(), 7));
            assert!(next_told(&heard).await >= 6);
        });
        // Idle, the writer never waits for it, however far ahead it has appended.
        syncer.wait_within(u64::MAX);
        syncer.note_synced(100);
        // A job still queued when the writer ends is synced before the thread ends, waited
        // for or not.
        syncer.hand(job(dir.path(), 8));
        drop(syncer);
        assert_eq!(shared.durable(), 8);
    }

    #[test]
    fn a_sync_nobody_waits_for_is_skipped_until_someone_asks_and_made_at_the_end() {
        let Fixture {
            dir,
            shared,
            store,
            syncer,
        } = fixture();
        let (told, heard) = std::sync::mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            // Nobody waits: parked, not synced, not reported.
            syncer.hand_or_park(job(dir.path(), 5), &shared);
            syncer.wait_idle();
            assert_eq!(shared.durable(), 0, "skipped");
            // A waiter listed after the skip asks for the sync.
            assert!(!store.notify_when_durable(4, &to));
            assert_eq!(next_told(&heard).await, 5, "synced once asked");
            // Queued while one is under way: the syncing thread decides as it takes it.
            syncer.hand(job(dir.path(), 6));
            syncer.wait_idle();
            assert_eq!(shared.durable(), 5, "nobody waited for 6");
            // A waiter listed first: synced at once.
            assert!(!store.notify_when_durable(7, &to));
            syncer.hand_or_park(job(dir.path(), 7), &shared);
            assert_eq!(next_told(&heard).await, 7);
            // A flush takes what is parked, to sync it itself.
            syncer.hand_or_park(job(dir.path(), 8), &shared);
            assert_eq!(syncer.idle_and_take_parked(), Some(8));
            assert_eq!(syncer.idle_and_take_parked(), None);
        });
        // The end syncs what is parked.
        syncer.hand_or_park(job(dir.path(), 9), &shared);
        syncer.wait_idle();
        assert_eq!(shared.durable(), 7);
        drop(syncer);
        assert_eq!(shared.durable(), 9, "synced at the end");
    }

    #[test]
    fn waits_a_settlement_may_end_are_given_their_moment_and_others_are_not() {
        // Long enough that the test's steps all fall within it.
        let grace = Duration::from_secs(1);
        let Fixture {
            dir,
            shared,
            store,
            syncer,
        } = fixture_with_grace(grace);
        let (told, heard) = std::sync::mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            // Only a publisher its subscribers may settle waits: the sync waits for the grace.
            assert!(!store.notify_when_durable_unless_settled(5, &to));
            syncer.hand_or_park(job(dir.path(), 5), &shared);
            while !syncer.has_one_in_hand() && shared.durable() == 0 {
                std::thread::yield_now();
            }
            assert_eq!(shared.durable(), 0, "not synced at once");
            // Settled within it: withdrawn, and the sync is skipped.
            store.withdraw_durable_wait(&to);
            syncer.wait_idle();
            assert_eq!(
                shared.durable(),
                0,
                "skipped: nobody waited after the grace"
            );
            // A wait no settlement may end: synced at once (the grace would outlast the
            // waiter's patience here).
            let asked = Instant::now();
            assert!(!store.notify_when_durable(6, &to));
            syncer.hand_or_park(job(dir.path(), 6), &shared);
            assert_eq!(next_told(&heard).await, 6);
            assert!(asked.elapsed() < grace, "synced without the grace");
            // One a settlement may end but that is not settled: synced after the grace.
            assert!(!store.notify_when_durable_unless_settled(7, &to));
            syncer.hand_or_park(job(dir.path(), 7), &shared);
            syncer.wait_idle();
            assert_eq!(shared.durable(), 7, "synced once the grace passed");
            assert_eq!(next_told(&heard).await, 7);
        });
    }

    #[test]
    fn a_sync_nobody_waits_for_is_made_anyway_past_the_unsynced_bound() {
        let Fixture {
            dir,
            shared,
            syncer,
            ..
        } = fixture();
        let mut far = job(dir.path(), 3);
        far.appended = MAX_UNSYNCED_BYTES + 1;
        syncer.hand_or_park(far, &shared);
        syncer.wait_idle();
        assert_eq!(shared.durable(), 3, "too far beyond the last sync to skip");
    }
}
