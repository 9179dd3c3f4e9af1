//! When and how the writer compacts its log: once the log has grown past twice the live state,
//! a snapshot of the live frames replaces every segment before it. A small live state is
//! compacted on the writer's thread (the snapshot becomes the segment appended to), a large
//! one, or any soon after one on the writer's thread held it long (a disk slow to sync), on a
//! thread of its own while the writer goes on committing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info};

use super::log::{FrameAt, Rotated};
use super::snapshot::write_snapshot_segment;
use super::store::StoreShared;
use super::writer::Writer;
use super::PersistenceError;

/// A live state this large or larger is compacted on a thread of its own (its snapshot takes
/// the writer tens of milliseconds or more to write); a smaller one on the writer thread,
/// where the snapshot becomes the segment appended to and the one before needs no sync (a
/// compaction on a thread syncs it: with a small live state and fast churn, compactions come
/// several times a second, and those syncs cost 8% of the pipelined `interval` rate).
pub(super) const COMPACT_ON_A_THREAD_FROM: u64 = 8 << 20;

/// A live state of this many records or more is compacted on a thread of its own too, however
/// few its bytes: a snapshot reads each frame back from where it is in the log, and 10,000
/// persistent sessions (20,000 records, 1 MB) took the writer some 17 ms to copy, while the
/// listing and the walk the writer keeps on a thread's compaction cost it a few. Below it (a
/// pipelined stream's few hundred messages in flight) compacting here stays the cheaper.
pub(super) const COMPACT_ON_A_THREAD_FROM_RECORDS: usize = 4096;

/// A compaction on the writer's thread that held it this long or longer (every commit waited)
/// sends the next [`ON_A_THREAD_AFTER_A_SLOW_ONE`] to a thread of their own whatever the live
/// state's size. Mostly a disk slow to sync: such a compaction syncs its snapshot and the
/// directory before the next commit, about 1 ms here, tens of milliseconds or more on a memory
/// card or a network volume; one on a thread holds the writer for no sync (the directory's
/// sync for the segment it goes on in comes with the log's next sync: `dir_entries.rs`). A
/// live state near the thresholds above can
/// take that long to copy too, and is then as well served beside the writer.
pub(super) const SLOW_IN_PLACE: Duration = Duration::from_millis(5);

/// How many compactions go to a thread of their own after one on the writer's thread was slow,
/// before the writer tries one itself again (a disk slow for a moment is not taken as slow for
/// good: on a fast disk a compaction on a thread costs more, its syncs among them).
pub(super) const ON_A_THREAD_AFTER_A_SLOW_ONE: u32 = 16;

impl Writer {
    /// Compacts when the log has grown past twice the live state (and `compact_min_bytes`):
    /// starts a compaction, or ends the one under way once its thread is done.
    pub(super) fn maybe_compact(&mut self, shared: &Arc<StoreShared>) {
        if self.compaction.is_some() {
            // Not while a backup copies frames out of the segments it would delete.
            if !self.backing_up() && self.finish_compaction(false) {
                shared.stats.add_compaction();
            }
            return;
        }
        let total = self.log.total_bytes();
        if total <= self.compact_floor || total <= 2 * self.live.bytes() || self.backing_up() {
            return;
        }
        if self.live.bytes() < COMPACT_ON_A_THREAD_FROM
            && self.live.records() < COMPACT_ON_A_THREAD_FROM_RECORDS
            && self.slow_disk_compactions_left == 0
        {
            if self.compact_here(total) {
                shared.stats.add_compaction();
            }
        } else {
            self.slow_disk_compactions_left = self.slow_disk_compactions_left.saturating_sub(1);
            self.start_compaction(total, shared);
        }
    }

    /// A compaction of a small live state, on this thread: the snapshot becomes the segment
    /// appended to, so the one before needs no sync. Returns whether it was done.
    fn compact_here(&mut self, before_bytes: u64) -> bool {
        let started = Instant::now();
        self.live.drop_dead();
        let listed = self.live.live_frames();
        match self.log.compact_in_place(&listed) {
            Ok((moved, rotated)) => {
                // Nothing changed since the listing: every frame is found.
                if self.live.remap(&listed, &moved, rotated.snapshot_id - 1) {
                    self.log.finish_in_place(rotated);
                } else {
                    error!("persistence log compaction: a live record was not in the snapshot; keeping the older segments");
                    return false;
                }
                let took = started.elapsed();
                self.note_in_place_took(took);
                info!(
                    before_bytes,
                    after_bytes = self.log.total_bytes(),
                    millis = took.as_millis() as u64,
                    "persistence log compacted"
                );
                true
            }
            Err(e) => {
                error!(error = %e, "persistence log compaction failed; will retry");
                false
            }
        }
    }

    /// Lists where the live frames are, starts a new segment for what comes next, and hands
    /// the writing of the snapshot to a thread of its own: this thread goes on committing.
    fn start_compaction(&mut self, before_bytes: u64, shared: &Arc<StoreShared>) {
        let started = Instant::now();
        self.live.drop_dead();
        let listed = self.live.live_frames();
        let rotated = match self.log.rotate_for_snapshot() {
            Ok(rotated) => rotated,
            Err(e) => {
                return error!(error = %e, "persistence log compaction could not start; will retry")
            }
        };
        let (dir, id, previous, shared) = (
            self.log.dir().to_path_buf(),
            rotated.snapshot_id,
            rotated.previous.clone(),
            shared.clone(),
        );
        debug!(
            segment = id,
            frames = listed.len(),
            "persistence log compaction started"
        );
        let (done, snapshotted) = std::sync::mpsc::channel();
        let write = move || {
            let written = write_snapshot_segment(&dir, id, Some(&previous), &listed).map(
                |(moved, written)| Snapshotted {
                    listed,
                    moved,
                    written,
                },
            );
            let _ = done.send(written);
            shared.helper_done();
        };
        match std::thread::Builder::new()
            .name("switchboard-compact".into())
            .spawn(write)
        {
            Ok(thread) => {
                self.compaction = Some(Compaction {
                    rotated,
                    snapshotted,
                    thread,
                    started,
                    paused_millis: started.elapsed().as_millis() as u64,
                    before_bytes,
                })
            }
            // The log stays whole: its segments follow on; the next drain tries again.
            Err(e) => error!(error = %e, "cannot start a thread for a persistence log compaction"),
        }
    }

    /// Takes the snapshot written by the compaction's thread, if it is done (with `wait`, once
    /// it is): where each live frame is now; then deletes the segments it supersedes. Returns
    /// whether a compaction finished so.
    pub(super) fn finish_compaction(&mut self, wait: bool) -> bool {
        let Some(compaction) = &self.compaction else {
            return false;
        };
        let result = if wait {
            compaction.snapshotted.recv().ok()
        } else {
            match compaction.snapshotted.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return false,
                result => result.ok(),
            }
        };
        let Some(compaction) = self.compaction.take() else {
            return false;
        };
        let _ = compaction.thread.join();
        let superseded_up_to = compaction.rotated.snapshot_id - 1;
        match result {
            Some(Ok(done)) => {
                let remapped = Instant::now();
                if !self.live.remap(&done.listed, &done.moved, superseded_up_to) {
                    // Never expected; the older segments stay, so nothing is lost.
                    self.log
                        .keep_snapshot_beside(compaction.rotated, done.written);
                    error!("persistence log compaction: a live record was not in the snapshot; keeping the older segments");
                    return false;
                }
                self.log.finish_snapshot(compaction.rotated, done.written);
                info!(
                    before_bytes = compaction.before_bytes,
                    after_bytes = self.log.total_bytes(),
                    millis = compaction.started.elapsed().as_millis() as u64,
                    paused_millis =
                        compaction.paused_millis + remapped.elapsed().as_millis() as u64,
                    "persistence log compacted"
                );
                true
            }
            Some(Err(e)) => {
                error!(error = %e, "persistence log compaction failed; will retry");
                false
            }
            None => {
                error!("persistence log compaction thread ended without a snapshot; will retry");
                false
            }
        }
    }

    /// A compaction on this thread took `took`: if that is [`SLOW_IN_PLACE`] or more, the next
    /// [`ON_A_THREAD_AFTER_A_SLOW_ONE`] go to a thread of their own.
    pub(super) fn note_in_place_took(&mut self, took: Duration) {
        if took >= SLOW_IN_PLACE {
            self.slow_disk_compactions_left = ON_A_THREAD_AFTER_A_SLOW_ONE;
        }
    }
}

/// A compaction under way (`maybe_compact`): its thread writes the snapshot segment.
pub(super) struct Compaction {
    rotated: Rotated,
    /// What the thread wrote, sent before it wakes this one.
    snapshotted: std::sync::mpsc::Receiver<Result<Snapshotted, PersistenceError>>,
    thread: std::thread::JoinHandle<()>,
    started: Instant,
    /// How long this thread spent starting it (listing and rotating).
    paused_millis: u64,
    before_bytes: u64,
}

/// What a compaction's thread wrote: the frames it was given, where each is now, and the
/// snapshot segment's size.
struct Snapshotted {
    listed: Vec<FrameAt>,
    moved: Vec<FrameAt>,
    written: u64,
}
