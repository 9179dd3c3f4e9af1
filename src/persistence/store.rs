//! The [`Store`]: how the Registry and the Sessions hand changes to the writer thread.
//!
//! A submitter encodes its records straight into one shared buffer (under a lock that also
//! numbers the change), and wakes the writer if it sleeps. The writer swaps the buffer for an
//! empty one and appends all of it with one write: every drain is one group commit. Nothing
//! allocated by a submitter is freed by the writer, and nothing crosses a channel per record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use actix::Recipient;
use tracing::warn;

use super::backup::BackupRequest;
use super::durable_waiters::{DurableTo, Waiters, Watch};
use super::record::Record;
use super::record_ref::Framed;
use super::stats::PersistenceStats;
use super::syncer::SyncerLink;
use super::wake::wake_soon;
use super::Durable;

/// A Session stops reading its socket while this much is queued for the writer
/// ([`Store::is_behind`], [`Store::room`]).
const BEHIND_BYTES: usize = 16 << 20;

/// Any submitter's thread waits while this much is queued for the writer: the Registry (like
/// a full mailbox), or Sessions whose other submissions (bounded by their inflight windows)
/// piled up past [`BEHIND_BYTES`].
const MAX_PENDING_BYTES: usize = 32 << 20;

/// The next [`StoreShared::id`].
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

/// What the writer is doing, for whoever may have to wake it.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterState {
    /// Writing, or woken and about to: it takes what is pending when it is done.
    #[default]
    Busy,
    /// Asleep for at most [`NAP`]: a change submitted with [`Store::submit_all`], or one
    /// someone waits for, wakes it; others go out when the nap ends.
    Napping,
    /// Asleep until woken, after [`NAPS_BEFORE_SLEEP`] naps without a change: any change
    /// wakes it.
    Asleep,
}

/// The longest a change submitted quietly ([`Store::submit_quietly`]) stays in memory while
/// changes keep coming.
pub(super) const NAP: std::time::Duration = std::time::Duration::from_millis(2);

/// Naps without a change before the writer sleeps until woken (an idle broker does not poll).
pub(super) const NAPS_BEFORE_SLEEP: u32 = 50;

/// What is submitted and not yet taken by the writer.
#[derive(Default)]
pub(super) struct Pending {
    /// Framed records, in submission order (the writer reads each one's key in its live state
    /// back from its frame).
    pub(super) frames: Vec<u8>,
    /// The number of the last change submitted.
    pub(super) seq: u64,
    /// Whether `frames` holds changes up to `seq` not yet taken.
    pub(super) has_changes: bool,
    /// Who waits for everything submitted to be synced (graceful shutdown).
    pub(super) flushes: Vec<Sender<()>>,
    /// Who waits for a backup of everything submitted before they asked (`backup.rs`).
    pub(super) backups: Vec<BackupRequest>,
    /// How the writer sleeps on [`StoreShared::wake_writer`].
    pub(super) writer: WriterState,
    /// Submitters waiting on [`StoreShared::room`]: the writer wakes them after a drain only
    /// if there are any (a notify is a system call even with nobody waiting).
    pub(super) waiting_for_room: usize,
    /// Every [`Store`] is gone: the writer syncs and ends.
    pub(super) closed: bool,
    /// A compaction's or a backup's thread has finished: the writer ends the compaction.
    pub(super) helper_done: bool,
}

/// What the [`Store`] handles and the writer thread share.
pub struct StoreShared {
    pub(super) pending: Mutex<Pending>,
    /// The writer waits on it for changes.
    pub(super) wake_writer: Condvar,
    /// Submitters wait on it for room.
    pub(super) room: Condvar,
    /// Sessions wait on it, without blocking their thread, for the writer to catch up.
    pub(super) caught_up: tokio::sync::Notify,
    /// The bytes of `pending.frames`, readable without the lock ([`Store::is_behind`] is
    /// asked after every burst a Session routes).
    pub(super) pending_bytes: std::sync::atomic::AtomicUsize,
    /// The last change the writer reported durable.
    pub(super) durable: AtomicU64,
    /// The last change the writer reported written to the log (at least `durable`; more only
    /// while a commit is being synced, with `fsync = "always"`).
    written: AtomicU64,
    /// Who waits for a change to be durable, by thread.
    waiters: Waiters,
    /// Who waits for a change to be written (a Session at its duplicate bound, with
    /// `fsync = "always"`), by thread.
    written_waiters: Waiters,
    /// Tells this store from others, in the threads' own lists of waiters.
    pub(super) id: u64,
    /// The next durable id of a queued message.
    next_id: AtomicU64,
    /// Whether a submission wakes the writer at once, not once its thread's ready tasks ran
    /// ([`wake_soon`]): every policy but `fsync = "always"`.
    pub(super) wake_at_once: bool,
    /// Whether the writer syncs each commit after writing it (`fsync = "always"`), and so
    /// reports what is written before what is durable.
    syncs_each_commit: bool,
    /// With `fsync = "always"`: the last change whose sync was skipped because nobody waited
    /// for it (0: none); a waiter for it or an earlier one asks the syncing thread for it.
    skipped: AtomicU64,
    /// The syncing thread, once started: where that ask goes.
    syncer: OnceLock<SyncerLink>,
    /// What the writer and the syncing thread count, for `/metrics`.
    pub(super) stats: Arc<PersistenceStats>,
}

impl StoreShared {
    /// Shared state for a store whose next queued-message id is `next_id`, whose writer syncs
    /// each commit or not (`fsync = "always"`), and counts what it does into `stats`.
    pub(super) fn new(next_id: u64, syncs_each_commit: bool, stats: Arc<PersistenceStats>) -> Self {
        StoreShared {
            pending: Mutex::new(Pending::default()),
            wake_writer: Condvar::new(),
            room: Condvar::new(),
            caught_up: tokio::sync::Notify::new(),
            pending_bytes: std::sync::atomic::AtomicUsize::new(0),
            durable: AtomicU64::new(0),
            written: AtomicU64::new(0),
            waiters: Waiters::new(Watch::Durable),
            written_waiters: Waiters::new(Watch::Written),
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            next_id: AtomicU64::new(next_id),
            wake_at_once: !syncs_each_commit,
            syncs_each_commit,
            skipped: AtomicU64::new(0),
            syncer: OnceLock::new(),
            stats,
        }
    }

    /// The queue to the writer, even if a thread panicked holding it.
    pub(super) fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called by the writer with the queue locked: takes everything pending into `frames`,
    /// `flushes` and `backups` (swapping buffers, so that each side keeps reusing its own),
    /// lets go of the lock, and tells submitters there is room. Returns the last change taken (if any) and
    /// whether every [`Store`] is gone.
    pub(super) fn take_drain(
        &self,
        mut pending: MutexGuard<'_, Pending>,
        frames: &mut Vec<u8>,
        flushes: &mut Vec<Sender<()>>,
        backups: &mut Vec<BackupRequest>,
    ) -> (Option<u64>, bool) {
        pending.writer = WriterState::Busy;
        frames.clear();
        std::mem::swap(frames, &mut pending.frames);
        self.pending_bytes.store(0, Ordering::Relaxed);
        flushes.append(&mut pending.flushes);
        backups.append(&mut pending.backups);
        let seq = std::mem::take(&mut pending.has_changes).then_some(pending.seq);
        let closed = pending.closed;
        let room_waited = pending.waiting_for_room > 0;
        drop(pending);
        if room_waited {
            self.room.notify_all();
        }
        self.caught_up.notify_waiters();
        (seq, closed)
    }

    /// Called by a compaction's or a backup's thread when it is done: wakes the writer, which
    /// may be asleep with nothing to commit, to end the compaction.
    pub(super) fn helper_done(&self) {
        self.lock_pending().helper_done = true;
        self.wake_writer.notify_one();
    }

    /// The last change the writer reported durable.
    pub(super) fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// The last change the writer reported written to the log.
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Called by the writer: every change up to `seq` is durable (so written too); tells who
    /// waited for it, once per thread they run on (`ready` is the writer's scratch list).
    ///
    /// With `fsync = "always"` the syncing thread calls it, while the writer reports writes:
    /// the waiters on what is written are told by [`StoreShared::report_written`] alone, so
    /// that no list of waiters is reported on by two threads at once.
    pub(super) fn report_durable(self: &Arc<Self>, seq: u64, ready: &mut Vec<Recipient<Durable>>) {
        self.written.fetch_max(seq, Ordering::SeqCst);
        if self.syncs_each_commit && self.stats.durability_lost() {
            // A sync failed: nothing later is known to be on disk
            // (`PersistenceStats::lose_durability`); who waits for it waits for a restart.
            return;
        }
        self.durable.fetch_max(seq, Ordering::SeqCst);
        self.waiters.report(self, seq, ready);
    }

    /// Called by a writer that syncs each commit, after writing it and before syncing it:
    /// every change up to `seq` is written, and survives `kill -9`; tells who waits for that.
    pub(super) fn report_written(self: &Arc<Self>, seq: u64, ready: &mut Vec<Recipient<Durable>>) {
        self.written.fetch_max(seq, Ordering::SeqCst);
        self.written_waiters.report(self, seq, ready);
    }

    /// Whether a waiter is listed for change `seq` or an earlier one to be durable.
    pub(super) fn anyone_waits_upto(&self, seq: u64) -> bool {
        self.waiters.any_waiting_upto(seq)
    }

    /// Whether someone no settlement may end waits for a change up to `seq` to be durable.
    pub(super) fn anyone_firm_waits_upto(&self, seq: u64) -> bool {
        self.waiters.any_firm_waiting_upto(seq)
    }

    /// Called by the syncing thread as it skips the sync of everything up to change `seq`,
    /// before it looks for waiters once more: a waiter listed meanwhile sees it.
    pub(super) fn note_skipped(&self, seq: u64) {
        self.skipped.fetch_max(seq, Ordering::SeqCst);
    }

    /// Called by a waiter for change `seq` once it is listed: if a sync covering it was
    /// skipped, the syncing thread makes it now.
    fn sync_if_skipped(&self, seq: u64) {
        if self.skipped.load(Ordering::SeqCst) >= seq {
            if let Some(syncer) = self.syncer.get() {
                syncer.sync_skipped();
            }
        }
    }

    /// Called once, as the syncing thread starts: where a skipped sync is asked for.
    pub(super) fn link_syncer(&self, syncer: SyncerLink) {
        let _ = self.syncer.set(syncer);
    }

    /// Whether the writer syncs each commit after writing it, and reports the write first
    /// ([`StoreShared::report_written`]).
    pub(super) fn syncs_each_commit(&self) -> bool {
        self.syncs_each_commit
    }
}

/// Ends the writer once the last [`Store`] is dropped.
struct Handle(Arc<StoreShared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock_pending().closed = true;
        self.0.wake_writer.notify_one();
    }
}

/// A handle on the writer thread, shared by the Registry and every Session.
#[derive(Clone)]
pub struct Store(Arc<Handle>);

impl Store {
    /// The handle on `shared`.
    pub(super) fn new(shared: Arc<StoreShared>) -> Self {
        Store(Arc::new(Handle(shared)))
    }

    pub(super) fn shared(&self) -> &Arc<StoreShared> {
        &self.0 .0
    }

    /// Submits a change; returns its sequence number, reported durable once it is. Waits only
    /// if the writer is `MAX_PENDING_BYTES` behind. The writer takes it at once (with
    /// `fsync = "always"`, on an actix thread: once the tasks ready there have run).
    pub fn submit(&self, record: Record) -> u64 {
        self.submit_all(std::iter::once(record))
    }

    /// Submits changes, in order, as one; returns the sequence number of the last. The writer
    /// takes them at once (with `fsync = "always"`, on an actix thread: once the tasks ready
    /// there have run).
    pub fn submit_all(&self, records: impl IntoIterator<Item = impl Framed>) -> u64 {
        self.enqueue(records, WriterState::Napping)
    }

    /// Submits changes nobody waits for yet (a Session's record of what it sent and what was
    /// acknowledged): the writer takes them with its next commit, within `NAP` while it
    /// naps, or at once for whoever asks [`Store::notify_when_durable`].
    pub fn submit_quietly(&self, records: impl IntoIterator<Item = impl Framed>) -> u64 {
        self.enqueue(records, WriterState::Asleep)
    }

    /// Queues `records` for the writer; wakes it if it is in state `wake` or sleeps deeper.
    fn enqueue(&self, records: impl IntoIterator<Item = impl Framed>, wake: WriterState) -> u64 {
        let shared = self.shared();
        let mut pending = shared.lock_pending();
        if pending.frames.len() >= MAX_PENDING_BYTES && !pending.closed {
            // Pushes back on whoever submits: a Session stops reading its socket, the
            // Registry its mailbox, until the writer catches up.
            warn!("the persistence writer is behind; waiting for it");
            while pending.frames.len() >= MAX_PENDING_BYTES && !pending.closed {
                pending.waiting_for_room += 1;
                pending = shared
                    .room
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                pending.waiting_for_room -= 1;
            }
        }
        let p = &mut *pending;
        for record in records {
            record.write_unsealed_frame(&mut p.frames);
        }
        shared
            .pending_bytes
            .store(p.frames.len(), Ordering::Relaxed);
        p.seq += 1;
        p.has_changes = true;
        let seq = p.seq;
        let wake = p.writer == WriterState::Asleep || p.writer == wake;
        if wake {
            // Woken once: later submitters and waiters need not wake it again before it runs.
            p.writer = WriterState::Busy;
        }
        drop(pending);
        if wake {
            wake_soon(shared);
        }
        seq
    }

    /// Whether the writer is so far behind that a Session should stop reading until
    /// [`Store::room`].
    pub fn is_behind(&self) -> bool {
        self.shared().pending_bytes.load(Ordering::Relaxed) >= BEHIND_BYTES
    }

    /// Resolves once the writer is no longer behind ([`Store::is_behind`]); a Session waits on
    /// it without reading, so TCP slows its publisher down, as when the Registry's mailbox is
    /// full.
    pub fn room(&self) -> impl std::future::Future<Output = ()> + 'static {
        let store = self.clone();
        async move {
            loop {
                let caught_up = store.shared().caught_up.notified();
                tokio::pin!(caught_up);
                // Registered before the check: a drain after it wakes this one.
                caught_up.as_mut().enable();
                if !store.is_behind() {
                    return;
                }
                caught_up.await;
            }
        }
    }

    /// The sequence number of the last change submitted (0: none yet).
    pub fn last_submitted(&self) -> u64 {
        self.shared().lock_pending().seq
    }

    /// The last change the writer reported durable.
    pub fn durable(&self) -> u64 {
        self.shared().durable()
    }

    /// The last change the writer reported written to the log: what survives `kill -9`. The
    /// same as [`Store::durable`] but while a commit is being synced with `fsync = "always"`.
    pub fn written(&self) -> u64 {
        self.shared().written()
    }

    /// Whether the writer syncs each commit after writing it (`fsync = "always"`): only then
    /// can [`Store::written`] run ahead of [`Store::durable`].
    pub fn syncs_each_commit(&self) -> bool {
        self.shared().syncs_each_commit()
    }

    /// Whether change `seq` is durable; if not, `to` gets [`Durable`] once it is (told on its
    /// own thread, with the other waiters there), and the writer is woken for it.
    pub fn notify_when_durable(&self, seq: u64, to: &DurableTo) -> bool {
        self.notify_when_durable_as(seq, to, true)
    }

    /// [`Store::notify_when_durable`] for a wait that a settlement may end first (a
    /// publisher's PUBACKs for a burst its subscribers may acknowledge before the sync; it is
    /// then withdrawn): with `fsync = "always"` the syncing thread gives such waits a moment
    /// (200 µs from the commit's write, `SETTLE_GRACE` in `syncer.rs`) before it syncs, and
    /// skips the sync if they were all withdrawn meanwhile.
    pub fn notify_when_durable_unless_settled(&self, seq: u64, to: &DurableTo) -> bool {
        self.notify_when_durable_as(seq, to, false)
    }

    fn notify_when_durable_as(&self, seq: u64, to: &DurableTo, firm: bool) -> bool {
        if self.durable() >= seq {
            return true;
        }
        let shared = self.shared();
        if shared.waiters.wait(shared, seq, to, firm) {
            return true;
        }
        shared.sync_if_skipped(seq);
        self.wake_for_waiter(firm);
        false
    }

    /// Takes back `to`'s wait for a change to be durable, made on this thread: it no longer
    /// needs it (with `fsync = "always"`, a sync that only it waited for is then skipped).
    pub fn withdraw_durable_wait(&self, to: &DurableTo) {
        let shared = self.shared();
        shared.waiters.withdraw(shared, to);
    }

    /// Whether change `seq` is written to the log; if not, `to` gets [`Durable`] (with what
    /// is durable then) once it is, and the writer is woken for it. For what only has to
    /// survive `kill -9`: a Session's duplicate bound.
    pub fn notify_when_written(&self, seq: u64, to: &DurableTo) -> bool {
        let shared = self.shared();
        if !shared.syncs_each_commit {
            // Written is durable: only a writer that syncs each commit reports writes.
            return self.notify_when_durable(seq, to);
        }
        if self.written() >= seq {
            return true;
        }
        if shared.written_waiters.wait(shared, seq, to, true) {
            return true;
        }
        self.wake_for_waiter(true);
        false
    }

    /// Someone waits for a change: the writer takes what is pending now, not when its nap ends;
    /// unless the wait is not `firm` (a settlement may end it first: the subscribers' PUBACKs
    /// usually come before a commit would be written and synced, and then neither is
    /// needed for it), and the writer naps: then the nap's end takes it, within [`NAP`].
    fn wake_for_waiter(&self, firm: bool) {
        let mut pending = self.shared().lock_pending();
        let sleeping = if firm {
            pending.writer != WriterState::Busy
        } else {
            pending.writer == WriterState::Asleep
        };
        if sleeping && pending.has_changes {
            pending.writer = WriterState::Busy;
            drop(pending);
            self.shared().wake_writer.notify_one();
        }
    }

    /// A new durable id for a queued message.
    pub fn next_id(&self) -> u64 {
        self.shared().next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Syncs everything submitted so far and waits for it (graceful shutdown).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        {
            let mut pending = self.shared().lock_pending();
            if pending.closed {
                return;
            }
            pending.flushes.push(done);
        }
        self.shared().wake_writer.notify_one();
        let _ = wait.recv();
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
