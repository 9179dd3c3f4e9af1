//! A compaction on a thread of its own walks the writer's live state slice by slice between
//! commits (`compaction.rs`): first it lists the frames of the sessions and everything that
//! belongs to them, then those of the retained messages, for the snapshot; once the snapshot
//! is written it notes where they are now, in the same order. No commit waits for more than one
//! slice, however many sessions or retained messages there are.
//!
//! Sessions and what belongs to them must be read back as they stood at one moment: start-up
//! drops a subscription whose session it has not seen, so a snapshot that held a session's
//! subscriptions without the session's own record (replaced by a commit after the compaction
//! started, before the listing reached it) would lose them. So while they are listed, a key the
//! listing has not reached that a commit replaces or removes keeps its frames of the
//! compaction's start, for the listing (copy on write): the snapshot is the state at the start,
//! and every change since is in the segments after it. Retained messages are independent of
//! each other and of everything else: each is listed as it stands when the listing reaches it.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use super::{Frames, LiveState, AFTER_RETAINED, RETAINED_PREFIX};
use crate::persistence::log::FrameAt;

/// A range of keys in the live state.
type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Which keys of the live state a sliced walk goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    /// Sessions and what belongs to them (subscriptions, wills, inbound QoS 2 ids): every key
    /// but the retained messages'.
    Sessions,
    /// Retained messages.
    Retained,
}

/// Where a sliced walk over one [`KeyPart`] goes on from.
#[derive(Debug, Default)]
pub struct KeyCursor {
    /// The last key done (none: from the first).
    after: Option<Vec<u8>>,
}

impl KeyCursor {
    /// The ranges of `part`'s keys still to do, in order: the sessions' keys lie before the
    /// retained messages' and after them.
    fn ranges(&self, part: KeyPart) -> [Option<KeyRange<'_>>; 2] {
        let after = self.after.as_deref();
        match part {
            KeyPart::Retained => {
                let from = after.map_or(Bound::Included(RETAINED_PREFIX), Bound::Excluded);
                [Some((from, Bound::Excluded(AFTER_RETAINED))), None]
            }
            KeyPart::Sessions => match after {
                Some(key) if key >= AFTER_RETAINED => {
                    [Some((Bound::Excluded(key), Bound::Unbounded)), None]
                }
                _ => [
                    Some((
                        after.map_or(Bound::Unbounded, Bound::Excluded),
                        Bound::Excluded(RETAINED_PREFIX),
                    )),
                    Some((Bound::Included(AFTER_RETAINED), Bound::Unbounded)),
                ],
            },
        }
    }
}

/// The listing of the sessions' keys for a compaction, while it goes on: where it stands, and
/// the frames of the compaction's start of the keys ahead of it that commits have replaced or
/// removed since.
#[derive(Debug)]
pub(super) struct SessionListing {
    cursor: KeyCursor,
    /// The last segment the compaction's snapshot supersedes: a frame in a later one was
    /// written after it started.
    up_to: u64,
    /// Keys not yet listed that changed since the start -> their frames then.
    kept: BTreeMap<Vec<u8>, Vec<FrameAt>>,
}

impl SessionListing {
    /// Before a commit replaces or removes `key`, whose frames are `old`: a session's key the
    /// listing has not reached keeps its frames of the compaction's start (the first change
    /// alone: a later one finds them kept).
    pub(super) fn keep(&mut self, key: &[u8], old: &Frames) {
        let retained = (RETAINED_PREFIX..AFTER_RETAINED).contains(&key);
        let listed = self
            .cursor
            .after
            .as_deref()
            .is_some_and(|after| key <= after);
        if retained || listed || self.kept.contains_key(key) {
            return;
        }
        let then: Vec<FrameAt> = old
            .as_slice()
            .iter()
            .filter(|at| at.segment <= self.up_to)
            .copied()
            .collect();
        if !then.is_empty() {
            self.kept.insert(key.to_vec(), then);
        }
    }
}

/// How far the noting of a compaction's frames' new places has gone, slice by slice.
#[derive(Debug)]
pub struct SlicedRemap {
    /// Where the walk of the part under way stands.
    cursor: KeyCursor,
    /// The index among the listed frames the walk is at.
    next: usize,
    /// False once a frame listed was not found.
    found: bool,
}

impl SlicedRemap {
    /// A walk from the first frame listed.
    pub fn new() -> Self {
        SlicedRemap {
            cursor: KeyCursor::default(),
            next: 0,
            found: true,
        }
    }

    /// Whether every frame listed was found.
    pub fn found(&self) -> bool {
        self.found
    }

    /// Notes whether the frames of a part noted apart (the queued messages', by id) were
    /// found.
    pub fn note_found(&mut self, found: bool) {
        self.found &= found;
    }

    /// Goes on from the frame listed at `index`, after a part noted apart.
    pub fn go_on_from(&mut self, index: usize) {
        self.next = index;
    }
}

/// One walk of a remap: the frames listed when a compaction started (`listed`, in the order
/// the walk meets those still live) and where each is now (`moved`).
pub(super) struct RemapWalk<'a> {
    listed: &'a [FrameAt],
    moved: &'a [FrameAt],
    superseded_up_to: u64,
    /// The index in `listed` the walk is at.
    pub(super) next: usize,
    pub(super) all_found: bool,
}

impl<'a> RemapWalk<'a> {
    pub(super) fn new(listed: &'a [FrameAt], moved: &'a [FrameAt], superseded_up_to: u64) -> Self {
        RemapWalk {
            listed,
            moved,
            superseded_up_to,
            next: 0,
            all_found: true,
        }
    }

    /// Moves each of `frames` to where it is now, if it is in a superseded segment.
    pub(super) fn remap_all(&mut self, frames: &mut Frames) {
        frames
            .as_mut_slice()
            .iter_mut()
            .for_each(|at| self.remap(at));
    }

    /// Moves `at` to where it is now, if it is in a superseded segment.
    pub(super) fn remap(&mut self, at: &mut FrameAt) {
        if at.segment > self.superseded_up_to {
            return;
        }
        while self.next < self.listed.len() && self.listed[self.next] != *at {
            self.next += 1;
        }
        match self.moved.get(self.next) {
            Some(now) if self.next < self.listed.len() => {
                *at = *now;
                self.next += 1;
            }
            _ => self.all_found = false,
        }
    }
}

/// The next key of a listing of the sessions' keys, from the live state (`live`) or kept for
/// it (`kept`, which holds the compaction's start where both have the key): the key, its
/// frames, and whether they were kept.
fn next_listed<'a>(
    live: &mut Peekable<btree_map::Range<'a, Vec<u8>, Frames>>,
    kept: &mut Peekable<btree_map::Range<'a, Vec<u8>, Vec<FrameAt>>>,
) -> Option<(&'a [u8], &'a [FrameAt], bool)> {
    let from_kept = match (live.peek(), kept.peek()) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some((l, _)), Some((k, _))) => k <= l,
    };
    if from_kept {
        let (key, frames) = kept.next()?;
        if live.peek().is_some_and(|(l, _)| *l == key) {
            live.next();
        }
        Some((key, frames, true))
    } else {
        let (key, frames) = live.next()?;
        Some((key, frames.as_slice(), false))
    }
}

/// Lists into `out` the frames of at most `max` of `part`'s keys after `cursor`'s, each from
/// `kept` where it has the key (those already filtered), else from `live` those in segments up
/// to `up_to`. Returns the last key listed if it stopped at `max` (none: it reached the last),
/// and how many it listed. `max` is at least 1 (the callers answer 0 themselves).
fn list_keys(
    live: &BTreeMap<Vec<u8>, Frames>,
    kept: &BTreeMap<Vec<u8>, Vec<FrameAt>>,
    cursor: &KeyCursor,
    part: KeyPart,
    (up_to, max): (u64, usize),
    out: &mut Vec<FrameAt>,
) -> (Option<Vec<u8>>, usize) {
    let mut seen = 0;
    for range in cursor.ranges(part).into_iter().flatten() {
        let mut live = live.range::<[u8], _>(range).peekable();
        let mut kept = kept.range::<[u8], _>(range).peekable();
        while let Some((key, frames, was_kept)) = next_listed(&mut live, &mut kept) {
            if was_kept {
                out.extend_from_slice(frames);
            } else {
                out.extend(frames.iter().filter(|at| at.segment <= up_to));
            }
            seen += 1;
            if seen == max {
                return (Some(key.to_vec()), seen);
            }
        }
    }
    (None, seen)
}

impl LiveState {
    /// Starts listing the sessions' keys for a compaction whose snapshot supersedes the
    /// segments up to `up_to` ([`list_sessions`](Self::list_sessions)): from now on, until
    /// the listing ends, a key it has not reached keeps its frames of now when a commit changes
    /// it.
    pub fn begin_session_listing(&mut self, up_to: u64) {
        self.listing = Some(SessionListing {
            cursor: KeyCursor::default(),
            up_to,
            kept: BTreeMap::new(),
        });
    }

    /// Ends the listing of the sessions' keys, done or abandoned.
    pub fn end_session_listing(&mut self) {
        self.listing = None;
    }

    /// Lists into `out` the frames of at most `max` more of the sessions' keys, as they stood
    /// when [`begin_session_listing`](Self::begin_session_listing) was called. Returns whether
    /// it reached the last (the listing is then over) and how many keys it listed.
    pub fn list_sessions(&mut self, max: usize, out: &mut Vec<FrameAt>) -> (bool, usize) {
        let Some(listing) = &mut self.listing else {
            return (true, 0);
        };
        if max == 0 {
            return (false, 0);
        }
        let (stopped_after, seen) = list_keys(
            &self.by_key,
            &listing.kept,
            &listing.cursor,
            KeyPart::Sessions,
            (listing.up_to, max),
            out,
        );
        match stopped_after {
            Some(after) => {
                listing.cursor.after = Some(after);
                (false, seen)
            }
            None => {
                self.listing = None;
                (true, seen)
            }
        }
    }

    /// Lists into `out` the frames of at most `max` retained messages after `cursor`'s key (from
    /// the first without one), those in segments up to `up_to` alone (a frame in a later
    /// segment was written after the compaction started, and is read back after its
    /// snapshot), and moves the cursor past them. Returns whether it reached the last and how
    /// many it listed.
    pub fn list_retained(
        &self,
        cursor: &mut KeyCursor,
        up_to: u64,
        max: usize,
        out: &mut Vec<FrameAt>,
    ) -> (bool, usize) {
        if max == 0 {
            return (false, 0);
        }
        // Retained messages are taken as they stand: nothing is kept for them.
        let (stopped_after, seen) = list_keys(
            &self.by_key,
            &BTreeMap::new(),
            cursor,
            KeyPart::Retained,
            (up_to, max),
            out,
        );
        let done = stopped_after.is_none();
        cursor.after = stopped_after;
        (done, seen)
    }

    /// After a compaction's snapshot, as [`remap`](Self::remap) for at most `max` of `part`'s
    /// keys after where `walk` stands, of the frames listed (`listed`, now at `moved`).
    /// Returns whether it reached the last of them (the walk's next part starts from the
    /// first) and how many it did.
    pub fn remap_keys(
        &mut self,
        part: KeyPart,
        walk: &mut SlicedRemap,
        (listed, moved): (&[FrameAt], &[FrameAt]),
        superseded_up_to: u64,
        max: usize,
    ) -> (bool, usize) {
        if max == 0 {
            return (false, 0);
        }
        let mut remap = RemapWalk::new(listed, moved, superseded_up_to);
        remap.next = walk.next;
        let mut seen = 0;
        let mut stopped_after = None;
        'ranges: for range in walk.cursor.ranges(part).into_iter().flatten() {
            for (key, frames) in self.by_key.range_mut::<[u8], _>(range) {
                remap.remap_all(frames);
                seen += 1;
                if seen == max {
                    stopped_after = Some(key.clone());
                    break 'ranges;
                }
            }
        }
        walk.next = remap.next;
        walk.found &= remap.all_found;
        let done = stopped_after.is_none();
        walk.cursor.after = stopped_after;
        (done, seen)
    }
}
