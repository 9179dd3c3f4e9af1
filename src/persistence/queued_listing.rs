//! The queued messages' part of a compaction on a thread: where their frames were, as the
//! writer lists them between commits ([`LiveState::list_queued`], slice by slice, in the order
//! the messages were queued), sorted into a snapshot's order by the compaction's thread, and
//! read by the writer again to note by id where each frame is now
//! ([`LiveState::remap_queued_slice`]). So the writer, which every commit waits for, never
//! sorts them nor walks them all in one step: with a million messages held for offline
//! devices, listing them sorted when a compaction started and walking them in that order when
//! it ended held every commit 120-210 ms each time.
//!
//! [`LiveState::list_queued`]: super::live_state::LiveState::list_queued
//! [`LiveState::remap_queued_slice`]: super::live_state::LiveState::remap_queued_slice

use super::log::FrameAt;

/// Where the live queued messages' frames were when a compaction started.
#[derive(Debug, Default)]
pub struct QueuedListing {
    /// Each message's `Queued` frame, with its durable id.
    pub(super) firsts: Vec<(u64, FrameAt)>,
    /// Its later frames (`Sent`, `Released`), each with its message's id and its index among
    /// them.
    pub(super) later: Vec<(FrameAt, u64, u32)>,
}

impl QueuedListing {
    /// How many frames it lists.
    pub(super) fn len(&self) -> usize {
        self.firsts.len() + self.later.len()
    }

    /// Puts it in a snapshot's order, on the compaction's thread: the `Queued` frames by id
    /// (which keeps each publisher's order), then the later frames by place in the log, so
    /// that a session's messages are read back as sent in the order they were sent
    /// [MQTT-4.6.0-1].
    pub(super) fn sort(&mut self) {
        self.firsts.sort_unstable_by_key(|(id, _)| *id);
        self.later
            .sort_unstable_by_key(|(at, _, _)| (at.segment, at.offset));
    }

    /// Its frames in its order (a snapshot's, once sorted): the `Queued` frames, then the later
    /// ones.
    pub(super) fn frames(&self) -> impl Iterator<Item = FrameAt> + '_ {
        let firsts = self.firsts.iter().map(|(_, at)| *at);
        firsts.chain(self.later.iter().map(|(at, _, _)| *at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> FrameAt {
        FrameAt {
            segment,
            offset,
            len: 20,
        }
    }

    #[test]
    fn sorted_the_queued_frames_come_by_id_then_the_later_ones_by_place_in_the_log() {
        let mut listing = QueuedListing {
            firsts: vec![(9, at(1, 40)), (3, at(2, 0)), (5, at(1, 0))],
            later: vec![(at(2, 60), 3, 0), (at(1, 80), 9, 0), (at(2, 20), 5, 1)],
        };
        assert_eq!(listing.len(), 6);
        listing.sort();
        let frames: Vec<FrameAt> = listing.frames().collect();
        assert_eq!(
            frames,
            [
                at(2, 0),
                at(1, 0),
                at(1, 40),
                at(1, 80),
                at(2, 20),
                at(2, 60)
            ]
        );
        assert_eq!(QueuedListing::default().len(), 0);
    }
}
