//! The writer thread: takes everything submitted to the [`Store`](super::Store) in one drain,
//! appends it with one write (group commit), syncs by the `fsync` policy, reports what is
//! written and what is durable, and compacts when the log has grown to twice the live state.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info};

use super::backup::{copy_log, BackupFile, BackupRequest};
use super::batch_thread::run_as_batch_thread;
use super::compaction::{Compaction, COMPACT_ON_A_THREAD_FROM, COMPACT_ON_A_THREAD_FROM_RECORDS};
use super::frame::seal_frames;
use super::interval_sync::IntervalSyncer;
use super::live::{live_key_of_body, LiveKind};
use super::live_state::LiveState;
use super::log::{FrameAt, Log};
use super::record::{Record, FRAME_HEADER};
use super::snapshot::write_backup;
use super::store::{StoreShared, WriterState, NAP, NAPS_BEFORE_SLEEP};
use super::syncer::Syncer;
use crate::config::FsyncPolicy;

/// How long the writer waits before it tries a failed write or sync again.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The writer's state: the log, and the live records (for compaction).
pub struct Writer {
    pub(super) log: Log,
    /// Held for the broker's life: one broker per directory.
    pub(super) _lock: File,
    /// Where each live record's frames are in the log, which compaction reads back and
    /// writes out. Where, not a copy: a running broker holds each retained message once, in
    /// the Registry.
    pub(super) live: LiveState,
    /// The records read back at start, with their keys: the writer thread builds `live` from
    /// them before its first commit, while the Registry rebuilds its tables.
    pub(super) read_back: Vec<(LiveKind, Vec<u8>, FrameAt)>,
    pub(super) policy: FsyncPolicy,
    pub(super) interval: Duration,
    /// The log is compacted when it is larger than twice the live state and than this
    /// (`compact_min_bytes`).
    pub(super) compact_floor: u64,
    /// Backup threads started (joined at the end: `backup.rs`).
    pub(super) backups: Vec<std::thread::JoinHandle<()>>,
    /// How many backup threads still copy frames: each counts itself out before it wakes the
    /// writer, so a compaction waiting for it ends at once.
    pub(super) backups_copying: Arc<std::sync::atomic::AtomicUsize>,
    /// The compaction under way, if any (`compaction.rs`).
    pub(super) compaction: Option<Compaction>,
    /// Compactions still to run on a thread of their own after one on this thread found the
    /// disk slow to sync (`compaction.rs`).
    pub(super) slow_disk_compactions_left: u32,
}

/// What a backup's thread copies (`Writer::start_backup`).
enum BackupSource {
    /// The live frames, where they are in the log.
    Frames(Vec<FrameAt>),
    /// The log's segments, each with where its records end (`Log::segments_to_copy`).
    Log(Vec<(std::path::PathBuf, Option<u64>)>),
}

/// The syncing thread `thread` started, if one was asked for: on an error, none (logged), and the
/// writer syncs on its own.
fn started<T>(thread: Option<std::io::Result<T>>) -> Option<T> {
    thread?
        .map_err(|e| {
            error!(error = %e, "cannot start the persistence syncing thread; the writer syncs on its own")
        })
        .ok()
}

/// Room a drain buffer keeps, whatever came through it: far more than a busy drain takes (a
/// pipelined one takes a few KB).
const KEPT_DRAIN_ROOM: usize = 1 << 20;

/// Called by the writer once the drain in `frames` is written and tracked: a buffer with more
/// than [`KEPT_DRAIN_ROOM`] of room whose drain filled at most a quarter of it is made
/// smaller. The writer's buffer and the submitters' trade places at each drain
/// (`StoreShared::take_drain`), so the room one drain of a spike took (a message to tens of
/// thousands of offline sessions: a `Queued` record each, payload included) leaves both of them
/// within two ordinary drains instead of staying for the broker's life.
fn give_back_drain_room(frames: &mut Vec<u8>) {
    if frames.capacity() > KEPT_DRAIN_ROOM && frames.len() <= frames.capacity() / 4 {
        frames.clear();
        frames.shrink_to(KEPT_DRAIN_ROOM);
    }
}

/// The little-endian u32 at `at` of `bytes` (0 past the end), as a length.
fn u32_at(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b: [u8; 4]| u32::from_le_bytes(b) as usize)
}

impl Writer {
    /// Runs until every [`Store`](super::Store) is gone, then syncs and returns. What is
    /// durable is reported through `shared` to whoever waits for it.
    pub fn run(mut self, shared: Arc<StoreShared>) {
        run_as_batch_thread();
        // With `fsync = "always"`, a second thread syncs while this one appends.
        let syncer =
            started((self.policy == FsyncPolicy::Always).then(|| Syncer::start(shared.clone())));
        // With `fsync = "interval"`, one makes the periodic syncs while this one appends.
        let interval_syncer = started(
            (self.policy == FsyncPolicy::Interval).then(|| IntervalSyncer::start(shared.clone())),
        );
        self.build_live();
        shared.stats.note_started(self.policy);
        shared
            .stats
            .set_sizes(self.log.total_bytes(), self.live.bytes());
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut frames = Vec::new();
        let mut flushes = Vec::new();
        let mut backups = Vec::new();
        let mut ready = Vec::new();
        let mut key = Vec::new();
        let mut naps = 0;
        loop {
            if let Some(syncer) = &syncer {
                // On a slow disk the writer stops here, its queue fills, and the Sessions stop
                // reading, as when it syncs each commit itself.
                syncer.wait_within(self.log.appended());
            }
            // A compaction's next slice is taken without waiting for a change to commit.
            let compaction_ready = self.compaction_has_a_step();
            let (seq, closed) = {
                let mut pending = shared.lock_pending();
                while !pending.has_changes
                    && pending.flushes.is_empty()
                    && pending.backups.is_empty()
                    && !pending.helper_done
                    && !pending.closed
                    && !compaction_ready
                {
                    let sync_in = (unsynced && self.policy == FsyncPolicy::Interval)
                        .then(|| self.interval.saturating_sub(last_sync.elapsed()));
                    if sync_in == Some(Duration::ZERO) {
                        break;
                    }
                    let (state, nap) = if naps < NAPS_BEFORE_SLEEP {
                        (WriterState::Napping, NAP)
                    } else {
                        (WriterState::Asleep, Duration::from_secs(3600))
                    };
                    pending.writer = state;
                    let (p, timeout) = shared
                        .wake_writer
                        .wait_timeout(pending, sync_in.map_or(nap, |s| s.min(nap)))
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    pending = p;
                    if timeout.timed_out() && !pending.has_changes {
                        naps = naps.saturating_add(1);
                    }
                }
                if pending.has_changes {
                    naps = 0;
                }
                pending.helper_done = false;
                shared.take_drain(pending, &mut frames, &mut flushes, &mut backups)
            };
            if let Some(syncer) = &interval_syncer {
                // A failed sync holds every commit after it until one succeeds.
                syncer.wait_while_failing();
            }
            let frames_at = self.log.end();
            if !frames.is_empty() {
                // Submitters frame without the CRCs: computed here, off their threads.
                seal_frames(&mut frames);
                // Nothing of this commit (nor after it) is acknowledged until it is written:
                // the same bytes are written again at the same offset.
                while let Err(e) = self.log.append(&frames) {
                    shared.stats.add_write_failure();
                    error!(error = %e, "cannot write the persistence log; trying again in 1 s, nothing more is acknowledged until it can");
                    std::thread::sleep(RETRY_AFTER);
                }
                shared.stats.add_commit(frames.len());
                unsynced = true;
            }
            // Written is what survives `kill -9`: with a sync to come for this very commit,
            // whoever waits only for that (a Session at its duplicate bound) goes on now. Every
            // change taken is reported written here, so the waiters on writes need no other
            // report (the syncing thread reports to those on syncs).
            if let (Some(seq), FsyncPolicy::Always) = (seq, self.policy) {
                shared.report_written(seq, &mut ready);
            }
            let flushing = !flushes.is_empty() || closed;
            let mut to_report = seq;
            if let (Some(syncer), true) = (&syncer, flushing) {
                // What was handed over is synced before the flush's own sync is reported, and
                // a sync skipped because nobody waited is made now, by this thread.
                if let Some(parked) = syncer.idle_and_take_parked() {
                    unsynced = true;
                    to_report = to_report.max(Some(parked));
                }
            }
            let sync_due = match self.policy {
                // Every commit, even one that appended nothing: an earlier one's sync may
                // be parked, so that its report must come from a sync too.
                FsyncPolicy::Always => unsynced || seq.is_some(),
                FsyncPolicy::Interval => unsynced && last_sync.elapsed() >= self.interval,
                FsyncPolicy::Never => false,
            } || (flushing && unsynced);
            let handed = match (&syncer, seq) {
                (Some(syncer), Some(seq)) if !flushing => {
                    self.hand_sync(syncer, seq, sync_due, &shared)
                }
                _ => false,
            };
            // With `interval` a change is durable once written (reported below either way).
            let handed_interval = interval_syncer
                .as_ref()
                .is_some_and(|s| s.take_over(&self.log, seq, flushing, sync_due));
            if handed_interval {
                last_sync = Instant::now();
            }
            if handed || handed_interval {
                unsynced = false;
            } else if sync_due {
                let started = Instant::now();
                let mut synced = true;
                while let Err(e) = self.log.sync() {
                    if self.policy == FsyncPolicy::Always {
                        // Not retried: a later success would not say the data is on disk.
                        synced = false;
                        shared.stats.lose_durability(&e, &self.log.position().0);
                        break;
                    }
                    shared.stats.add_sync_failure();
                    error!(error = %e, "cannot sync the persistence log; trying again in 1 s, nothing more is acknowledged until it can");
                    std::thread::sleep(RETRY_AFTER);
                }
                last_sync = Instant::now();
                let (segment, offset) = self.log.position();
                unsynced = false;
                if let Some(syncer) = &syncer {
                    syncer.note_synced(self.log.appended());
                }
                if synced {
                    shared
                        .stats
                        .add_sync(last_sync.duration_since(started), &segment);
                    // What a power-loss test cuts the log back to.
                    debug!(segment = %segment.display(), offset, "persistence log synced");
                }
            }
            if let (Some(seq), false) = (to_report, handed) {
                shared.report_durable(seq, &mut ready);
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if closed {
                // Joins the syncing threads, idle since the flush above.
                drop(syncer);
                drop(interval_syncer);
                for backup in self.backups.drain(..) {
                    let _ = backup.join();
                }
                // Waits for a snapshot under way, so that the older segments go now, not at
                // the next compaction (a start reads the same state either way).
                self.compaction_step(true);
                return;
            }
            // After the waiters are told: keeping the live state current is for compaction,
            // which runs on this thread after it, and no acknowledgement waits for it.
            self.track_all(frames_at, &frames, &mut key);
            give_back_drain_room(&mut frames);
            // With this drain tracked, the live state holds everything submitted before each
            // backup was asked for.
            for request in backups.drain(..) {
                self.start_backup(request, &shared);
            }
            self.maybe_compact(&shared);
            shared
                .stats
                .set_sizes(self.log.total_bytes(), self.live.bytes());
        }
    }

    /// Hands the sync of everything up to change `seq` to `syncer` while it syncs (even with
    /// nothing new to sync: `seq` is durable only after the sync under way) or while more
    /// changes wait, so that this thread appends them meanwhile; returns whether it did. If
    /// not, this thread syncs (if `sync_due`) and reports, as a lone commit (a device's message
    /// and its PUBACK) is best served: with no hand-over between threads. Unless nobody
    /// waits for it (then it is parked with the syncing thread, and made only if someone asks
    /// before a later sync covers it), or only publishers whose subscribers may settle them
    /// (then the syncing thread gives them their moment, `syncer::SETTLE_GRACE`, and this
    /// thread goes on appending). Never while flushing: the syncing thread is idle then.
    fn hand_sync(&self, syncer: &Syncer, seq: u64, sync_due: bool, shared: &StoreShared) -> bool {
        let more_waiting = sync_due && shared.lock_pending().has_changes;
        if !syncer.is_busy() && !more_waiting {
            if !sync_due || shared.anyone_firm_waits_upto(seq) {
                return false;
            }
            return match self.log.sync_job(seq) {
                Some(job) => {
                    syncer.hand_or_park(job, shared);
                    true
                }
                None => false,
            };
        }
        match self.log.sync_job(seq) {
            Some(job) => {
                syncer.hand(job);
                true
            }
            None => {
                // No second handle on the segment: this thread syncs, after the sync under way.
                syncer.wait_idle();
                false
            }
        }
    }

    /// Keeps the live state current for a drain appended at `start`: each frame of `frames`
    /// (whole, sealed) keyed from its body, into the scratch buffer `key`.
    fn track_all(&mut self, start: FrameAt, frames: &[u8], key: &mut Vec<u8>) {
        let (mut at, mut offset) = (0, start.offset);
        while at + FRAME_HEADER <= frames.len() {
            let end = at + FRAME_HEADER + u32_at(frames, at);
            let Some(body) = frames.get(at + FRAME_HEADER..end) else {
                return;
            };
            key.clear();
            let kind = live_key_of_body(body, key);
            let len = (end - at) as u32;
            let frame = FrameAt {
                segment: start.segment,
                offset,
                len,
            };
            self.live.track(kind, key, frame);
            at = end;
            offset += u64::from(len);
        }
    }

    /// Notes one record read back at start, for [`Writer::build_live`].
    pub(super) fn note_read_back(&mut self, record: &Record, frame: FrameAt) {
        let mut key = Vec::with_capacity(32);
        let kind = record.live_key(&mut key);
        self.read_back.push((kind, key, frame));
    }

    /// Builds the live state from the records read back at start, on the writer's thread (so
    /// off the path of start-up: the Registry rebuilds its tables meanwhile, on another core).
    fn build_live(&mut self) {
        if self.read_back.is_empty() {
            return;
        }
        let started = Instant::now();
        let records = self.read_back.len();
        for (kind, key, frame) in std::mem::take(&mut self.read_back) {
            if kind == LiveKind::Set {
                // The common case: the key moves into the live state.
                self.live.set_owned(key, frame);
            } else {
                self.live.track(kind, &key, frame);
            }
        }
        debug!(
            records,
            live_bytes = self.live.bytes(),
            millis = started.elapsed().as_millis() as u64,
            "persistence writer: live state built"
        );
    }

    /// Starts writing a backup of the live state as it stands to a new file in the log's
    /// directory, on a thread of its own (`backup.rs`), and goes on committing while that
    /// thread copies (no compaction deletes a segment meanwhile:
    /// [`maybe_compact`](Self::maybe_compact) waits for it). Of a small live state this thread
    /// lists where the live frames are (a millisecond or less), and the backup holds them
    /// alone; a large one's listing would hold every commit for tens of milliseconds or more (a
    /// million retained messages: 37-175 ms), so the backup thread copies the log's records as
    /// they stand instead, those not compacted away yet included (at most about twice the live
    /// state: a compaction starts there). Either reads back as the log does now.
    fn start_backup(&mut self, request: BackupRequest, shared: &Arc<StoreShared>) {
        let listed = Instant::now();
        let large = self.live.bytes() >= COMPACT_ON_A_THREAD_FROM
            || self.live.records() >= COMPACT_ON_A_THREAD_FROM_RECORDS;
        let source = if large {
            BackupSource::Log(self.log.segments_to_copy())
        } else {
            BackupSource::Frames(self.live.live_frames())
        };
        let listed_micros = listed.elapsed().as_micros() as u64;
        let dir = self.log.dir().to_path_buf();
        let path = self.log.backup_path();
        let shared = shared.clone();
        let copying = self.backups_copying.clone();
        copying.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let copy = move || {
            let started = Instant::now();
            let (written, frames) = match &source {
                BackupSource::Frames(frames) => {
                    (write_backup(&dir, frames, &path), Some(frames.len()))
                }
                BackupSource::Log(segments) => (copy_log(segments, &path), None),
            };
            let written = written.map(|bytes| {
                info!(
                    bytes,
                    frames,
                    listed_micros,
                    millis = started.elapsed().as_millis() as u64,
                    "persistence backup written"
                );
                BackupFile { path, bytes }
            });
            if let Err(e) = &written {
                error!(error = %e, "persistence backup failed");
            }
            request.answer(written);
            copying.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            shared.helper_done();
        };
        match std::thread::Builder::new()
            .name("switchboard-backup".into())
            .spawn(copy)
        {
            Ok(thread) => {
                self.backups.retain(|thread| !thread.is_finished());
                self.backups.push(thread);
            }
            // The request went with the closure: its asker hears that no backup was written.
            Err(e) => {
                self.backups_copying
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                error!(error = %e, "cannot start a thread for a persistence backup")
            }
        }
    }

    /// Whether a backup thread is still copying frames out of the segments.
    pub(super) fn backing_up(&self) -> bool {
        self.backups_copying
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
