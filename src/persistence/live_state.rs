//! The writer's live state: where each live record's frames are in the log, which compaction
//! reads back and writes out.
//!
//! Retained messages, sessions, subscriptions, wills and inbound QoS 2 ids sit in one map
//! ordered by key, so that a snapshot holds each session before what belongs to it. Queued
//! messages, three records per message delivered (`Queued`, `Sent`, `Done`), sit in a hash map
//! by their durable id (unique across sessions), each tagged with its session's slot: a
//! session that goes takes its queued messages with it by retiring the slot, without a scan,
//! and the next compaction drops the entries it left behind. A snapshot holds the queued
//! messages after every session, in id order.

use std::collections::{BTreeMap, HashMap};

use super::live::{split_queued_key, LiveKind};
use super::log::FrameAt;
#[cfg(test)]
use super::{log::Log, PersistenceError};

/// Where a live key's frames are: most keys have one (a retained message, a subscription).
#[derive(Debug)]
enum Frames {
    /// None (a queued message's frames after its first, before it is sent).
    None,
    /// One frame.
    One(FrameAt),
    /// Several, in order.
    Many(Vec<FrameAt>),
}

impl Frames {
    fn as_slice(&self) -> &[FrameAt] {
        match self {
            Frames::None => &[],
            Frames::One(at) => std::slice::from_ref(at),
            Frames::Many(all) => all,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [FrameAt] {
        match self {
            Frames::None => &mut [],
            Frames::One(at) => std::slice::from_mut(at),
            Frames::Many(all) => all,
        }
    }

    fn push(&mut self, at: FrameAt) {
        match self {
            Frames::None => *self = Frames::One(at),
            Frames::One(first) => *self = Frames::Many(vec![*first, at]),
            Frames::Many(all) => all.push(at),
        }
    }

    /// The bytes of its frames.
    fn bytes(&self) -> u64 {
        self.as_slice().iter().map(|at| u64::from(at.len)).sum()
    }
}

/// A live queued message: the session it belongs to, and its frames: its `Queued` record, then
/// those of its sending and release (held inline up to the first: a QoS 1 message sent costs
/// no allocation).
#[derive(Debug)]
struct QueuedFrames {
    slot: SlotRef,
    first: FrameAt,
    rest: Frames,
}

impl QueuedFrames {
    fn bytes(&self) -> u64 {
        u64::from(self.first.len) + self.rest.bytes()
    }
}

/// A session's slot, as a queued message refers to it: alive while the slot's generation is
/// still this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotRef {
    index: u32,
    generation: u32,
}

/// A session with queued messages.
#[derive(Debug, Default)]
struct Slot {
    /// Bumped when the session goes: its queued messages are no longer live.
    generation: u32,
    /// The bytes of its live queued messages' frames.
    bytes: u64,
}

/// The key prefix of every retained message in the live state.
const RETAINED_PREFIX: &[u8] = b"r:";

/// The first key after every retained message's (`;` follows `:`).
const AFTER_RETAINED: &[u8] = b"r;";

#[path = "live_state_slices.rs"]
mod slices;

#[path = "live_state_queued.rs"]
mod queued;

pub use queued::QueuedCursor;
pub use slices::{KeyCursor, KeyPart, SlicedRemap};
use slices::{RemapWalk, SessionListing};

/// The writer's live state (see the module doc).
#[derive(Default)]
pub struct LiveState {
    /// Key ([`Record::live_key`](super::Record::live_key)) -> its frames, but for queued
    /// messages.
    by_key: BTreeMap<Vec<u8>, Frames>,
    /// Queued messages by durable id. The ids are the broker's, not a client's: a fixed hash.
    queued: HashMap<u64, QueuedFrames, foldhash::fast::FixedState>,
    /// The ids of `queued` in the order their `Queued` records came, and of some done since
    /// (pruned by each compaction): what a compaction on a thread walks, slice by slice, to
    /// list them (`live_state_queued.rs`).
    queued_order: Vec<u64>,
    /// A session's key prefix -> its slot. Client ids are a client's: a seeded hash.
    slot_of: HashMap<Vec<u8>, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    /// Slots of sessions gone, to reuse (with their generation bumped).
    free_slots: Vec<u32>,
    /// The bytes of every live frame.
    bytes: u64,
    /// The listing of the sessions' keys for a compaction on a thread, while it goes on: it
    /// keeps what a commit changes ahead of it (`live_state_slices.rs`).
    listing: Option<SessionListing>,
}

impl LiveState {
    /// The bytes of every live frame: the size of a snapshot, give or take its marker.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many records the live state holds, queued messages of sessions gone included until
    /// the next compaction drops them: what a snapshot reads back, frame by frame.
    pub fn records(&self) -> usize {
        self.by_key.len() + self.queued.len()
    }

    /// Makes `frame` the live value of `key` (a key read back at start, where most are set
    /// once): [`LiveState::track`] with [`LiveKind::Set`], without copying the key.
    pub fn set_owned(&mut self, key: Vec<u8>, frame: FrameAt) {
        self.bytes += u64::from(frame.len);
        if let Some(listing) = &mut self.listing {
            if let Some(old) = self.by_key.get(&key) {
                listing.keep(&key, old);
            }
        }
        if let Some(old) = self.by_key.insert(key, Frames::One(frame)) {
            self.bytes -= old.bytes();
        }
    }

    /// Applies a record whose frame is `frame`, whose key is `key` and which does `kind`.
    pub fn track(&mut self, kind: LiveKind, key: &[u8], frame: FrameAt) {
        let len = u64::from(frame.len);
        match kind {
            LiveKind::None => {}
            LiveKind::Set => {
                self.bytes += len;
                if let Some(live) = self.by_key.get_mut(key) {
                    if let Some(listing) = &mut self.listing {
                        listing.keep(key, live);
                    }
                    self.bytes -= live.bytes();
                    *live = Frames::One(frame);
                } else {
                    self.by_key.insert(key.to_vec(), Frames::One(frame));
                }
            }
            LiveKind::Append => {
                if let Some(live) = self.by_key.get_mut(key) {
                    live.push(frame);
                    self.bytes += len;
                }
            }
            LiveKind::Remove => {
                if let Some(old) = self.by_key.remove(key) {
                    if let Some(listing) = &mut self.listing {
                        listing.keep(key, &old);
                    }
                    self.bytes -= old.bytes();
                }
            }
            LiveKind::RemovePrefix => self.remove_prefix(key),
            LiveKind::QueuedSet => {
                let Some((session, id)) = split_queued_key(key) else {
                    return;
                };
                let slot = self.slot_for(session);
                self.slots[slot.index as usize].bytes += len;
                self.bytes += len;
                let entry = QueuedFrames {
                    slot,
                    first: frame,
                    rest: Frames::None,
                };
                match self.queued.insert(id, entry) {
                    Some(old) => self.forget(&old),
                    None => self.queued_order.push(id),
                }
            }
            LiveKind::QueuedAppend => {
                let Some((_, id)) = split_queued_key(key) else {
                    return;
                };
                let Some(entry) = self.queued.get_mut(&id) else {
                    return;
                };
                let slot = &mut self.slots[entry.slot.index as usize];
                if slot.generation == entry.slot.generation {
                    entry.rest.push(frame);
                    slot.bytes += len;
                    self.bytes += len;
                } else {
                    // Its session is gone.
                    self.queued.remove(&id);
                }
            }
            LiveKind::QueuedRemove => {
                if let Some(old) = split_queued_key(key).and_then(|(_, id)| self.queued.remove(&id))
                {
                    self.forget(&old);
                }
            }
        }
    }

    /// Takes a queued message's bytes off its session's and the total, if its session lives.
    fn forget(&mut self, old: &QueuedFrames) {
        let slot = &mut self.slots[old.slot.index as usize];
        if slot.generation == old.slot.generation {
            let bytes = old.bytes();
            slot.bytes -= bytes;
            self.bytes -= bytes;
        }
    }

    /// The slot of the session whose key prefix is `session`, made if it has none.
    fn slot_for(&mut self, session: &[u8]) -> SlotRef {
        let index = match self.slot_of.get(session) {
            Some(&index) => index,
            None => {
                let index = self.free_slots.pop().unwrap_or_else(|| {
                    self.slots.push(Slot::default());
                    (self.slots.len() - 1) as u32
                });
                self.slot_of.insert(session.to_vec(), index);
                index
            }
        };
        SlotRef {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// No key starting with `prefix` is live: a session gone, with everything under it.
    fn remove_prefix(&mut self, prefix: &[u8]) {
        let gone: Vec<Vec<u8>> = self
            .by_key
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(old) = self.by_key.remove(&k) {
                if let Some(listing) = &mut self.listing {
                    listing.keep(&k, &old);
                }
                self.bytes -= old.bytes();
            }
        }
        // Queued messages are under the session's prefix, and the prefix ends the session's
        // key: its slot, if it has one.
        if let Some(index) = self.slot_of.remove(prefix) {
            let slot = &mut self.slots[index as usize];
            self.bytes -= slot.bytes;
            slot.bytes = 0;
            slot.generation = slot.generation.wrapping_add(1);
            self.free_slots.push(index);
        }
    }

    /// The ids of the live queued messages (of sessions still there), in order: a snapshot's
    /// order for them.
    fn live_queued_ids(&self) -> Vec<u64> {
        let slots = &self.slots;
        let mut ids: Vec<u64> = self
            .queued
            .iter()
            .filter(|(_, entry)| {
                slots[entry.slot.index as usize].generation == entry.slot.generation
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The frames of the live queued messages `ids` after their first (`Sent`, `Released`),
    /// in log order, each with its message's id and its index among them: a snapshot writes
    /// them in this order, so that a session's messages are read back as sent in the order
    /// they were sent [MQTT-4.6.0-1].
    fn later_frames_in_log_order(&self, ids: &[u64]) -> Vec<(FrameAt, u64, usize)> {
        let mut later: Vec<(FrameAt, u64, usize)> = ids
            .iter()
            .filter_map(|id| self.queued.get(id).map(|entry| (id, entry)))
            .flat_map(|(id, entry)| {
                let frames = entry.rest.as_slice().iter();
                frames.enumerate().map(move |(i, at)| (*at, *id, i))
            })
            .collect();
        later.sort_unstable_by_key(|(at, _, _)| (at.segment, at.offset));
        later
    }

    /// Where every live frame is, in a snapshot's order (each session before what belongs to
    /// it; then the queued messages' `Queued` records in id order; then their later records in
    /// log order), those of sessions gone left out: what a backup copies
    /// ([`write_backup`](super::snapshot::write_backup)).
    pub fn live_frames(&self) -> Vec<FrameAt> {
        let mut frames: Vec<FrameAt> = self
            .by_key
            .values()
            .flat_map(Frames::as_slice)
            .copied()
            .collect();
        frames.extend(self.live_queued_frames());
        frames
    }

    /// Where the live queued messages' frames are, in a snapshot's order: their `Queued`
    /// records in id order, then their later records in log order. A compaction on a thread
    /// lists them at once when it starts, and sends them to its thread after the sessions'.
    pub fn live_queued_frames(&self) -> Vec<FrameAt> {
        let ids = self.live_queued_ids();
        let firsts = ids
            .iter()
            .filter_map(|id| self.queued.get(id))
            .map(|entry| entry.first);
        let later = self.later_frames_in_log_order(&ids);
        firsts
            .chain(later.into_iter().map(|(at, _, _)| at))
            .collect()
    }

    /// Drops the entries of sessions gone (a compaction's first step).
    pub fn drop_dead(&mut self) {
        let slots = &self.slots;
        self.queued.retain(|_, entry| {
            slots[entry.slot.index as usize].generation == entry.slot.generation
        });
        // A compaction on this thread: a small live state, so the order is made again from it
        // (it needs none: a listing at once sorts by id).
        self.queued_order.clear();
        self.queued_order.extend(self.queued.keys());
    }

    /// After a compaction's snapshot: every live frame in a segment up to `superseded_up_to`
    /// is one of the frames `listed` (by [`live_frames`](Self::live_frames) when the
    /// compaction started) and is now at the same place in `moved`. Since then entries were
    /// only added, removed or given frames in later segments, and the order (by key, by id,
    /// by place in the log) is as it was, so the frames still in those segments are
    /// `listed`'s, in its order: one walk finds them. Returns false if one was not found (then
    /// its segment must stay).
    pub fn remap(&mut self, listed: &[FrameAt], moved: &[FrameAt], superseded_up_to: u64) -> bool {
        let mut walk = RemapWalk::new(listed, moved, superseded_up_to);
        for frames in self.by_key.values_mut() {
            walk.remap_all(frames);
        }
        self.remap_queued(&mut walk);
        walk.all_found
    }

    /// The queued messages' part of a remap: their first frames in id order, then their later
    /// ones in log order, as listed.
    fn remap_queued(&mut self, walk: &mut RemapWalk) {
        let ids = self.live_queued_ids();
        let later = self.later_frames_in_log_order(&ids);
        for id in ids {
            if let Some(entry) = self.queued.get_mut(&id) {
                walk.remap(&mut entry.first);
            }
        }
        for (_, id, i) in later {
            let entry = self.queued.get_mut(&id);
            if let Some(at) = entry.and_then(|e| e.rest.as_mut_slice().get_mut(i)) {
                walk.remap(at);
            }
        }
    }

    /// A whole compaction at once, on this thread: what the writer does with a thread between
    /// listing and remapping (`writer.rs`).
    #[cfg(test)]
    pub fn compact_into(&mut self, log: &mut Log) -> Result<(), PersistenceError> {
        self.drop_dead();
        let listed = self.live_frames();
        let rotated = log.rotate_for_snapshot()?;
        let (moved, written) = super::snapshot::write_snapshot_segment(
            log.dir(),
            rotated.snapshot_id,
            Some(&rotated.previous),
            &listed,
        )?;
        assert!(self.remap(&listed, &moved, rotated.snapshot_id - 1));
        log.finish_snapshot(rotated, written);
        Ok(())
    }
}

#[cfg(test)]
#[path = "live_state_tests.rs"]
mod tests;
