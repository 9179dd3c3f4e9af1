//! The queued messages' part of a compaction on a thread, in slices (`queued_listing.rs` says
//! why). The writer walks the ids in the order their `Queued` records came
//! (`LiveState::queued_order`), 4,096 at a time between commits, listing each message still
//! queued as it stands when the walk reaches it, and pruning the order of the ids done since
//! as it goes; the compaction's thread sorts the listing into a snapshot's order. Once the
//! snapshot is written, the writer notes where each frame listed is now, by its message's id,
//! slice by slice too.
//!
//! A message is listed with its frames in the segments the snapshot supersedes only: whatever
//! was written since the compaction started (its `Sent`, `Released` or `Done`) is in the
//! segments after the snapshot, read back after it. A message done before the walk reaches it
//! is not listed (its `Done`, read back after the snapshot, finds nothing to remove), and one
//! whose session has gone since is dropped, as a compaction drops those of sessions gone.

use std::collections::HashMap;

use super::super::log::FrameAt;
use super::super::queued_listing::QueuedListing;
use super::{LiveState, QueuedFrames};

/// Below room for this many, a queued messages' map or order keeps what it has: not worth
/// making again.
const KEPT_ROOM: usize = 4096;

/// The queued messages' map is made again only while it holds at most this many, and their
/// order while it holds at most four times as many ids (2 MB): the writer moves them between
/// two commits.
const MOST_MOVED: usize = 65_536;

/// The room a spike of queued messages left in the writer's live state, taken out of it
/// ([`LiveState::take_spare_room`]): the old map and order, empty, their memory still
/// allocated, for the caller to free off the writer's thread.
#[derive(Default)]
pub struct SpareRoom {
    queued: HashMap<u64, QueuedFrames, foldhash::fast::FixedState>,
    order: Vec<u64>,
}

impl SpareRoom {
    /// The bytes of room it holds (the map's entries, not its control bytes).
    pub fn bytes(&self) -> usize {
        self.queued.capacity() * std::mem::size_of::<(u64, QueuedFrames)>()
            + self.order.capacity() * std::mem::size_of::<u64>()
    }
}

/// How far a compaction's walk of the queued messages has gone.
#[derive(Debug, Default)]
pub struct QueuedCursor {
    /// The next index of the order to look at.
    read: usize,
    /// Where the next id still queued goes: the order is pruned in place as the walk goes.
    kept: usize,
    /// The order's length when the walk started: the ids after it came since.
    end: usize,
    /// What is listed so far.
    listing: QueuedListing,
}

impl QueuedCursor {
    /// How many ids the walk looks at (queued messages, some done since).
    pub fn ids(&self) -> usize {
        self.end
    }

    /// What the walk listed, once it is done.
    pub fn take_listing(&mut self) -> QueuedListing {
        std::mem::take(&mut self.listing)
    }
}

impl LiveState {
    /// A walk of the queued messages for a compaction starting now.
    pub fn begin_queued_listing(&self) -> QueuedCursor {
        // Room for every message there is now, taken up as the walk goes: grown by doubling
        // instead, one step would copy the whole listing so far (24 MB for a million).
        let listing = QueuedListing {
            firsts: Vec::with_capacity(self.queued.len()),
            later: Vec::new(),
        };
        QueuedCursor {
            end: self.queued_order.len(),
            listing,
            ..QueuedCursor::default()
        }
    }

    /// Lists the next `max` ids of the queued messages' walk into its listing: each message
    /// still queued, with its frames in segments up to `superseded_up_to`. Returns whether the
    /// walk reached its end (then the order is pruned of what it passed over), and how many
    /// ids it looked at.
    pub fn list_queued(
        &mut self,
        cursor: &mut QueuedCursor,
        superseded_up_to: u64,
        max: usize,
    ) -> (bool, usize) {
        let start = cursor.read;
        let stop = cursor.end.min(start.saturating_add(max));
        for index in start..stop {
            let Some(&id) = self.queued_order.get(index) else {
                break;
            };
            let Some(entry) = self.queued.get(&id) else {
                // Done since it was queued.
                continue;
            };
            let slot = entry.slot;
            if self.slots[slot.index as usize].generation != slot.generation {
                // Its session is gone.
                self.queued.remove(&id);
                continue;
            }
            if let Some(kept) = self.queued_order.get_mut(cursor.kept) {
                *kept = id;
                cursor.kept += 1;
            }
            let listing = &mut cursor.listing;
            if entry.first.segment <= superseded_up_to {
                listing.firsts.push((id, entry.first));
            }
            let later = entry.rest.as_slice().iter().zip(0..);
            let superseded = later.filter(|(at, _)| at.segment <= superseded_up_to);
            listing
                .later
                .extend(superseded.map(|(&at, index)| (at, id, index)));
        }
        cursor.read = stop;
        let done = stop == cursor.end;
        if done {
            self.end_queued_listing(cursor);
        }
        (done, stop - start)
    }

    /// Ends the queued messages' walk, whole or given up: drops from the order the ids it
    /// passed over that were not kept. (The ids after its end, which came since it started,
    /// stay.)
    pub fn end_queued_listing(&mut self, cursor: &mut QueuedCursor) {
        let passed = cursor.kept..cursor.read.min(self.queued_order.len());
        if !passed.is_empty() {
            self.queued_order.drain(passed);
        }
        let dropped = cursor.read - cursor.kept;
        cursor.end -= dropped.min(cursor.end);
        cursor.read = cursor.kept;
    }

    /// After a compaction's snapshot: notes where the frames of `listing` (sorted, as its
    /// thread wrote them) from index `*next` on are now, `max` at most; `moved` holds where each
    /// of its frames is now, in its order. A message done since the listing is passed over;
    /// one whose frame is not the one listed (never expected) clears `found`, and then the
    /// older segments stay. Returns whether it reached the end, and how many it noted.
    pub fn remap_queued_slice(
        &mut self,
        listing: &QueuedListing,
        moved: &[FrameAt],
        next: &mut usize,
        max: usize,
        found: &mut bool,
    ) -> (bool, usize) {
        let end = listing.len().min(next.saturating_add(max));
        let start = *next;
        let firsts = listing.firsts.len();
        for index in start..end {
            let Some(&now) = moved.get(index) else {
                *found = false;
                break;
            };
            let (old, id, later) = match index.checked_sub(firsts) {
                None => {
                    let (id, old) = listing.firsts[index];
                    (old, id, None)
                }
                Some(i) => {
                    let (old, id, later) = listing.later[i];
                    (old, id, Some(later as usize))
                }
            };
            let Some(entry) = self.queued.get_mut(&id) else {
                continue;
            };
            let frame = match later {
                None => Some(&mut entry.first),
                Some(later) => entry.rest.as_mut_slice().get_mut(later),
            };
            match frame {
                Some(frame) if *frame == old => *frame = now,
                _ => *found = false,
            }
        }
        *next = end;
        (end == listing.len(), end - start)
    }

    /// Gives back the room that a spike of queued messages gone left: a map and an order keep
    /// their room when entries leave them, so a broker that once held 400,000 messages for
    /// offline devices kept some 50 MB for them after they were delivered or dropped. Where
    /// either holds less than a quarter of its room (and at most [`MOST_MOVED`] messages, or
    /// four times as many ids), it is made again with room for twice what it holds; the old
    /// ones are returned (`None` if neither was). Called once a compaction has dropped what was
    /// done and what belonged to sessions gone.
    pub fn take_spare_room(&mut self) -> Option<SpareRoom> {
        let mut spare = SpareRoom::default();
        let held = self.queued.len();
        if held <= MOST_MOVED && self.queued.capacity() > 4 * held.max(KEPT_ROOM) {
            let hasher = self.queued.hasher().clone();
            let mut queued = HashMap::with_capacity_and_hasher(2 * held.max(KEPT_ROOM), hasher);
            queued.extend(self.queued.drain());
            spare.queued = std::mem::replace(&mut self.queued, queued);
        }
        let held = self.queued_order.len();
        if held <= 4 * MOST_MOVED && self.queued_order.capacity() > 4 * held.max(KEPT_ROOM) {
            let mut order = Vec::with_capacity(2 * held.max(KEPT_ROOM));
            order.extend_from_slice(&self.queued_order);
            spare.order = std::mem::replace(&mut self.queued_order, order);
        }
        (spare.bytes() > 0).then_some(spare)
    }
}
