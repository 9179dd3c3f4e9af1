//! When and how the writer compacts its log: once the log has grown past twice the live state,
//! a snapshot of the live frames replaces every segment before it. A small live state is
//! compacted on the writer's thread (the snapshot becomes the segment appended to), a large
//! one, or any soon after one on the writer's thread held it long (a disk slow to sync), on a
//! thread of its own while the writer goes on committing. The writer lists the frames for
//! that thread slice by slice between commits (sessions and what belongs to them as they stood
//! when it started, then the queued messages, then the retained messages) and, once the
//! snapshot is written, notes where they are now, slice by slice too: however many sessions,
//! queued or retained messages there are, no commit waits for more than one slice
//! (`live_state_slices.rs`, `live_state_queued.rs`).

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info};

use super::live_state::{KeyCursor, KeyPart, LiveState, QueuedCursor, SlicedRemap};
use super::log::Rotated;
use super::snapshot::{write_listed_snapshot_segment, Listed, ListedSnapshot};
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

/// How many keys (a session, a subscription, a retained message...) a compaction on a thread
/// lists, or notes the new places of, between two commits: a fraction of a millisecond of the
/// writer's time on a free core (a whole listing of 1,000,000 retained messages took 46 ms, the
/// noting after it 24 ms, timed alone in a scratch test; every commit waited for both). Under
/// load the longest step, 3-8 ms, is set by the scheduler more than by the slice: 16,384
/// measured 7-17 ms (docs/benchmarks.md, "A compaction's listing in slices").
pub(super) const COMPACTION_SLICE: usize = 4_096;

/// How many compactions go to a thread of their own after one on the writer's thread was slow,
/// before the writer tries one itself again (a disk slow for a moment is not taken as slow for
/// good: on a fast disk a compaction on a thread costs more, its syncs among them).
pub(super) const ON_A_THREAD_AFTER_A_SLOW_ONE: u32 = 16;

impl Writer {
    /// Compacts when the log has grown past twice the live state (and `compact_min_bytes`):
    /// starts a compaction, or ends the one under way once its thread is done.
    pub(super) fn maybe_compact(&mut self, shared: &Arc<StoreShared>) {
        if self.compaction.is_some() {
            if self.compaction_step(false) {
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
                    self.give_back_spare_room();
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

    /// Starts a compaction beside this thread: starts a new segment for what comes next,
    /// hands the writing of the snapshot to a thread of its own, and lists the first slice of
    /// the sessions' frames for it. This thread goes on committing, and lists the rest slice
    /// by slice between commits ([`compaction_step`](Self::compaction_step)).
    fn start_compaction(&mut self, before_bytes: u64, shared: &Arc<StoreShared>) {
        let started = Instant::now();
        let queued = self.live.begin_queued_listing();
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
            queued = queued.ids(),
            "persistence log compaction started"
        );
        let (to_thread, slices) = std::sync::mpsc::channel();
        let (done, snapshotted) = std::sync::mpsc::channel();
        let write = move || {
            let written = write_listed_snapshot_segment(&dir, id, Some(&previous), &slices);
            let _ = done.send(written);
            shared.helper_done();
        };
        let thread = match std::thread::Builder::new()
            .name("switchboard-compact".into())
            .spawn(write)
        {
            Ok(thread) => thread,
            // The log stays whole: its segments follow on; the next drain tries again.
            Err(e) => {
                return error!(error = %e, "cannot start a thread for a persistence log compaction")
            }
        };
        // From here on a session's key changed ahead of the listing keeps its frames of now.
        self.live.begin_session_listing(rotated.snapshot_id - 1);
        self.compaction = Some(Compaction {
            rotated,
            listing: Some(Listing {
                part: ListPart::Sessions,
                queued,
                retained: KeyCursor::default(),
                to_thread,
            }),
            snapshotted,
            thread: Some(thread),
            remapping: None,
            started,
            paused: Pauses::default(),
            before_bytes,
        });
        let rotating = started.elapsed();
        // The first slice, in the same hold of this thread as the rotation before it.
        self.compaction_step(false);
        if let Some(compaction) = &mut self.compaction {
            compaction.paused.add_to_last(rotating);
        }
    }

    /// Takes the next step of the compaction under way, if any: lists the next slice of
    /// sessions or retained messages for its thread; or, once the thread has written the
    /// snapshot and no backup copies frames out of the segments it supersedes, notes where the
    /// frames it listed are now, slice by slice; then deletes those segments.
    /// Each step holds this thread (every commit) for one slice at most, whatever the live
    /// state's size. With `all` it takes every step at once, waiting for the thread (at
    /// shutdown). Returns whether a compaction finished so.
    pub(super) fn compaction_step(&mut self, all: bool) -> bool {
        let started = Instant::now();
        let max = if all { usize::MAX } else { COMPACTION_SLICE };
        let backing_up = self.backing_up();
        let Some(compaction) = &mut self.compaction else {
            return false;
        };
        if compaction.listing.is_some() {
            // With `all` there is no bound: one call lists every part (else the wait for the
            // snapshot below would wait for a listing nobody finishes).
            compaction.list_next(&mut self.live, max);
            debug_assert!(!all || compaction.listing.is_none(), "listed in one call");
            compaction.paused.add(started.elapsed());
            if !all {
                return false;
            }
        }
        // Not while a backup copies frames out of the segments it would delete.
        if backing_up && !all {
            return false;
        }
        if compaction.remapping.is_none() {
            match compaction.take_snapshot(all) {
                Taken::NotYet => return false,
                Taken::Failed => {
                    self.compaction = None;
                    return false;
                }
                Taken::Snapshot => {}
            }
        }
        // With `all`, as for the listing, one call notes every part.
        let last = compaction.remap_next(&mut self.live, max);
        debug_assert!(!all || last, "noted in one call");
        compaction.paused.add(started.elapsed());
        last && self.finish_compaction()
    }

    /// Ends the compaction whose every frame's new place is noted: deletes the segments it
    /// supersedes. Returns whether it did.
    fn finish_compaction(&mut self) -> bool {
        let Some(Compaction {
            rotated,
            remapping: Some(remapping),
            started,
            paused,
            before_bytes,
            ..
        }) = self.compaction.take()
        else {
            return false;
        };
        let written = remapping.done.written;
        free_beside(remapping.done);
        if !remapping.walk.found() {
            // Never expected; the older segments stay, so nothing is lost.
            self.log.keep_snapshot_beside(rotated, written);
            error!("persistence log compaction: a live record was not in the snapshot; keeping the older segments");
            return false;
        }
        self.log.finish_snapshot(rotated, written);
        self.give_back_spare_room();
        info!(
            before_bytes,
            after_bytes = self.log.total_bytes(),
            millis = started.elapsed().as_millis() as u64,
            paused_millis = paused.total.as_millis() as u64,
            longest_pause_micros = paused.longest.as_micros() as u64,
            steps = paused.steps,
            "persistence log compacted"
        );
        true
    }

    /// After a compaction: the room a spike of queued messages left, freed beside, and the
    /// pages it freed returned to the OS there.
    fn give_back_spare_room(&mut self) {
        if let Some(spare) = self.live.take_spare_room() {
            let room_bytes = spare.bytes();
            beside(move || {
                drop(spare);
                crate::memory_trim::trim_after_queued_messages_went(room_bytes);
            });
        }
    }

    /// Whether the compaction under way has a step to take now, without waiting for its
    /// thread: the writer does not sleep then.
    pub(super) fn compaction_has_a_step(&self) -> bool {
        self.compaction.as_ref().is_some_and(|compaction| {
            compaction.listing.is_some() || (compaction.remapping.is_some() && !self.backing_up())
        })
    }

    /// A compaction on this thread took `took`: if that is [`SLOW_IN_PLACE`] or more, the next
    /// [`ON_A_THREAD_AFTER_A_SLOW_ONE`] go to a thread of their own.
    pub(super) fn note_in_place_took(&mut self, took: Duration) {
        if took >= SLOW_IN_PLACE {
            self.slow_disk_compactions_left = ON_A_THREAD_AFTER_A_SLOW_ONE;
        }
    }
}

/// A compaction under way (`maybe_compact`): its thread writes the snapshot segment from what
/// this thread lists, slice by slice; then this thread notes where the frames are now, slice
/// by slice.
pub(super) struct Compaction {
    rotated: Rotated,
    /// The listing of the frames for the thread, while it goes on.
    listing: Option<Listing>,
    /// What the thread wrote, sent before it wakes this one.
    snapshotted: std::sync::mpsc::Receiver<Result<ListedSnapshot, PersistenceError>>,
    /// The thread, until it is joined.
    thread: Option<std::thread::JoinHandle<()>>,
    /// The noting of where the frames are now, once the snapshot is written.
    remapping: Option<Remapping>,
    started: Instant,
    /// How long this thread spent on it.
    paused: Pauses,
    before_bytes: u64,
}

/// What [`Compaction::take_snapshot`] found.
enum Taken {
    /// The thread is still writing the snapshot.
    NotYet,
    /// It failed (logged): the compaction is given up, the log stays whole.
    Failed,
    /// The snapshot is written.
    Snapshot,
}

impl Compaction {
    /// Whether the writer still lists frames for it.
    #[cfg(test)]
    pub(super) fn listing(&self) -> bool {
        self.listing.is_some()
    }

    /// The last segment the snapshot supersedes.
    fn superseded_up_to(&self) -> u64 {
        self.rotated.snapshot_id - 1
    }

    /// Lists the frames of the next `max` keys of `live` (or queued messages' ids) for the
    /// thread: sessions, then queued messages (sent to it in one go when their walk is done:
    /// it sorts them), then retained messages. The listing ends with the last, or when the
    /// thread is gone (its result says why).
    fn list_next(&mut self, live: &mut LiveState, max: usize) {
        let up_to = self.superseded_up_to();
        let Some(listing) = &mut self.listing else {
            return;
        };
        let mut frames = Vec::new();
        let mut left = max;
        let mut last = false;
        let mut sent = true;
        if listing.part == ListPart::Sessions {
            let (done, seen) = live.list_sessions(left, &mut frames);
            left -= seen;
            if done {
                listing.part = ListPart::Queued;
            }
        }
        if listing.part == ListPart::Queued {
            let (done, seen) = live.list_queued(&mut listing.queued, up_to, left);
            left -= seen;
            if done {
                let sessions = Listed::Frames(std::mem::take(&mut frames));
                let queued = Listed::Queued(listing.queued.take_listing());
                sent = listing.to_thread.send(sessions).is_ok()
                    && listing.to_thread.send(queued).is_ok();
                listing.part = ListPart::Retained;
            }
        }
        if listing.part == ListPart::Retained && left > 0 {
            let (done, _) = live.list_retained(&mut listing.retained, up_to, left, &mut frames);
            last = done;
        }
        sent = sent
            && listing.to_thread.send(Listed::Frames(frames)).is_ok()
            && (!last || listing.to_thread.send(Listed::End).is_ok());
        if last || !sent {
            // Abandoned with the thread, the listings keep nothing more.
            live.end_session_listing();
            live.end_queued_listing(&mut listing.queued);
            self.listing = None;
        }
    }

    /// Takes the snapshot from the thread if it is written (with `wait`, once it is).
    fn take_snapshot(&mut self, wait: bool) -> Taken {
        let result = if wait {
            self.snapshotted.recv().ok()
        } else {
            match self.snapshotted.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return Taken::NotYet,
                result => result.ok(),
            }
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let done = match result {
            Some(Ok(done)) => done,
            Some(Err(e)) => {
                error!(error = %e, "persistence log compaction failed; will retry");
                return Taken::Failed;
            }
            None => {
                error!("persistence log compaction thread ended without a snapshot; will retry");
                return Taken::Failed;
            }
        };
        self.remapping = Some(Remapping {
            done,
            walk: SlicedRemap::new(),
            part: RemapPart::Sessions,
        });
        Taken::Snapshot
    }

    /// Notes in `live` where the frames of the next `max` keys (or queued messages' frames)
    /// are now, in the order they were listed: sessions, then queued messages, then retained
    /// messages. Returns whether it reached the last.
    fn remap_next(&mut self, live: &mut LiveState, max: usize) -> bool {
        let up_to = self.superseded_up_to();
        let Some(remapping) = &mut self.remapping else {
            return false;
        };
        let done = &remapping.done;
        let frames = (done.listed.as_slice(), done.moved.as_slice());
        let mut left = max;
        if remapping.part == RemapPart::Sessions {
            let (done, seen) =
                live.remap_keys(KeyPart::Sessions, &mut remapping.walk, frames, up_to, left);
            left -= seen;
            if !done {
                return false;
            }
            remapping.part = RemapPart::Queued(0);
        }
        if let RemapPart::Queued(mut next) = remapping.part {
            if let Some((start, listing)) = &done.queued {
                let moved = done.moved.get(*start..).unwrap_or_default();
                let mut found = true;
                let (all, seen) =
                    live.remap_queued_slice(listing, moved, &mut next, left, &mut found);
                left -= seen;
                remapping.walk.note_found(found);
                if !all {
                    remapping.part = RemapPart::Queued(next);
                    return false;
                }
                remapping.walk.go_on_from(start + listing.len());
            }
            remapping.part = RemapPart::Retained;
        }
        if left == 0 {
            return false;
        }
        let (done, _) =
            live.remap_keys(KeyPart::Retained, &mut remapping.walk, frames, up_to, left);
        done
    }
}

/// The listing of a compaction's frames for its thread.
struct Listing {
    /// Which part is listed now.
    part: ListPart,
    /// How far the queued messages' walk has gone.
    queued: QueuedCursor,
    /// How far the retained messages are listed.
    retained: KeyCursor,
    to_thread: Sender<Listed>,
}

/// Frees what a compaction's thread listed and wrote on a thread of its own: with a million
/// frames, some 80 MB, whose unmapping took the writer's thread 10-12 ms of CPU in one step.
/// If no thread can be started, here.
fn free_beside(done: ListedSnapshot) {
    beside(move || drop(done));
}

/// Runs `free` on a thread of its own (`switchboard-free`), or here if none can be started.
fn beside(free: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("switchboard-free".into())
        .spawn(free)
    {
        debug!(error = %e, "cannot start a thread to free a compaction's listing; freed on the writer");
    }
}

/// The parts of a compaction's listing, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListPart {
    /// Sessions and what belongs to them, as they stood when the compaction started.
    Sessions,
    /// Queued messages, as they stand when the walk reaches them.
    Queued,
    /// Retained messages, as they stand when the listing reaches them.
    Retained,
}

/// Where the frames are noted so far, after the snapshot.
struct Remapping {
    done: ListedSnapshot,
    /// How far the sessions' and the retained messages' frames are noted.
    walk: SlicedRemap,
    /// Which frames are noted now.
    part: RemapPart,
}

/// Which part of a snapshot's frames a compaction notes the new places of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemapPart {
    /// The sessions', by key.
    Sessions,
    /// The queued messages', by id: the next index in their listing.
    Queued(usize),
    /// The retained messages', by key.
    Retained,
}

/// How long a compaction held the writer's thread, in all and at most at once.
#[derive(Default)]
struct Pauses {
    total: Duration,
    longest: Duration,
    last: Duration,
    steps: u32,
}

impl Pauses {
    fn add(&mut self, step: Duration) {
        self.total += step;
        self.longest = self.longest.max(step);
        self.last = step;
        self.steps += 1;
    }

    /// Adds `more` to the last step.
    fn add_to_last(&mut self, more: Duration) {
        self.total += more;
        self.last += more;
        self.longest = self.longest.max(self.last);
    }
}
