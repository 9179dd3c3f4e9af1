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

/// The writer's live state (see the module doc).
#[derive(Default)]
pub struct LiveState {
    /// Key ([`Record::live_key`](super::Record::live_key)) -> its frames, but for queued
    /// messages.
    by_key: BTreeMap<Vec<u8>, Frames>,
    /// Queued messages by durable id. The ids are the broker's, not a client's: a fixed hash.
    queued: HashMap<u64, QueuedFrames, foldhash::fast::FixedState>,
    /// A session's key prefix -> its slot. Client ids are a client's: a seeded hash.
    slot_of: HashMap<Vec<u8>, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    /// Slots of sessions gone, to reuse (with their generation bumped).
    free_slots: Vec<u32>,
    /// The bytes of every live frame.
    bytes: u64,
}

impl LiveState {
    /// The bytes of every live frame: the size of a snapshot, give or take its marker.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes `frame` the live value of `key` (a key read back at start, where most are set
    /// once): [`LiveState::track`] with [`LiveKind::Set`], without copying the key.
    pub fn set_owned(&mut self, key: Vec<u8>, frame: FrameAt) {
        self.bytes += u64::from(frame.len);
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
                if let Some(old) = self.queued.insert(id, entry) {
                    self.forget(&old);
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
        let ids = self.live_queued_ids();
        let firsts = ids
            .iter()
            .filter_map(|id| self.queued.get(id))
            .map(|entry| entry.first);
        let later = self.later_frames_in_log_order(&ids);
        self.by_key
            .values()
            .flat_map(Frames::as_slice)
            .copied()
            .chain(firsts)
            .chain(later.into_iter().map(|(at, _, _)| at))
            .collect()
    }

    /// Drops the entries of sessions gone (a compaction's first step).
    pub fn drop_dead(&mut self) {
        let slots = &self.slots;
        self.queued.retain(|_, entry| {
            slots[entry.slot.index as usize].generation == entry.slot.generation
        });
    }

    /// After a compaction's snapshot: every live frame in a segment up to `superseded_up_to`
    /// is one of the frames `listed` (by [`live_frames`](Self::live_frames) when the
    /// compaction started) and is now at the same place in `moved`. Since then entries were
    /// only added, removed or given frames in later segments, and the order (by key, by id,
    /// by place in the log) is as it was, so the frames still in those segments are
    /// `listed`'s, in its order: one walk finds them. Returns false if one was not found (then
    /// its segment must stay).
    pub fn remap(&mut self, listed: &[FrameAt], moved: &[FrameAt], superseded_up_to: u64) -> bool {
        let mut next = 0;
        let mut all_found = true;
        let mut remap_one = |at: &mut FrameAt| {
            if at.segment > superseded_up_to {
                return;
            }
            while next < listed.len() && listed[next] != *at {
                next += 1;
            }
            match moved.get(next) {
                Some(now) if next < listed.len() => {
                    *at = *now;
                    next += 1;
                }
                _ => all_found = false,
            }
        };
        for frames in self.by_key.values_mut() {
            frames.as_mut_slice().iter_mut().for_each(&mut remap_one);
        }
        let ids = self.live_queued_ids();
        let later = self.later_frames_in_log_order(&ids);
        for id in ids {
            if let Some(entry) = self.queued.get_mut(&id) {
                remap_one(&mut entry.first);
            }
        }
        for (_, id, i) in later {
            let entry = self.queued.get_mut(&id);
            if let Some(at) = entry.and_then(|e| e.rest.as_mut_slice().get_mut(i)) {
                remap_one(at);
            }
        }
        all_found
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
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
    use crate::persistence::live::{queued_key, session_key};
    use crate::persistence::log::scan;
    use crate::persistence::Record;

    fn at(offset: u64, len: u32) -> FrameAt {
        FrameAt {
            segment: 1,
            offset,
            len,
        }
    }

    fn queued(client_id: &str, id: u64) -> Vec<u8> {
        let mut key = Vec::new();
        queued_key(&mut key, client_id.as_bytes(), id);
        key
    }

    fn session(client_id: &str) -> Vec<u8> {
        let mut key = Vec::new();
        session_key(&mut key, client_id.as_bytes());
        key
    }

    #[test]
    fn queued_messages_count_until_done_or_their_session_goes() {
        let mut live = LiveState::default();
        live.track(LiveKind::Set, &session("a"), at(0, 10));
        live.track(LiveKind::Set, &session("b"), at(10, 10));
        live.track(LiveKind::QueuedSet, &queued("a", 1), at(20, 100));
        live.track(LiveKind::QueuedSet, &queued("b", 2), at(120, 100));
        live.track(LiveKind::QueuedAppend, &queued("a", 1), at(220, 5));
        live.track(LiveKind::QueuedAppend, &queued("a", 1), at(225, 5));
        live.track(LiveKind::QueuedAppend, &queued("b", 2), at(230, 5));
        assert_eq!(live.bytes(), 20 + 110 + 105);
        live.track(LiveKind::QueuedRemove, &queued("a", 1), at(235, 5));
        assert_eq!(live.bytes(), 20 + 105);
        // A record of a message nobody holds any more changes nothing.
        live.track(LiveKind::QueuedAppend, &queued("a", 1), at(240, 5));
        live.track(LiveKind::QueuedRemove, &queued("a", 9), at(245, 5));
        assert_eq!(live.bytes(), 20 + 105);
        live.track(LiveKind::RemovePrefix, &session("b"), at(250, 5));
        assert_eq!(live.bytes(), 10, "session b went with its queued message");
        // Its late records change nothing; a new session of the same id starts afresh.
        live.track(LiveKind::QueuedAppend, &queued("b", 2), at(255, 5));
        live.track(LiveKind::QueuedRemove, &queued("b", 2), at(260, 5));
        assert_eq!(live.bytes(), 10);
        live.track(LiveKind::Set, &session("b"), at(265, 10));
        live.track(LiveKind::QueuedSet, &queued("b", 3), at(275, 100));
        live.track(LiveKind::QueuedSet, &queued("a", 4), at(375, 100));
        assert_eq!(live.bytes(), 20 + 200);
        live.track(LiveKind::RemovePrefix, &session("a"), at(475, 5));
        assert_eq!(live.bytes(), 10 + 100);
    }

    /// Appends `records` to `log`, tracking each in `live`, as the writer does.
    fn append(log: &mut Log, live: &mut LiveState, records: &[Record]) {
        for record in records {
            let frame = record.to_frame();
            let end = log.end();
            log.append(&frame).expect("append");
            let mut key = Vec::new();
            let kind = record.live_key(&mut key);
            live.track(
                kind,
                &key,
                FrameAt {
                    len: frame.len() as u32,
                    ..end
                },
            );
        }
    }

    /// What a record read back is, in short.
    fn short(record: &Record) -> String {
        match record {
            Record::SessionSet { client_id, .. } => format!("session {client_id}"),
            Record::Subscribe {
                client_id, filter, ..
            } => format!("sub {client_id} {filter}"),
            Record::Queued { client_id, id, .. } => format!("queued {client_id} {id}"),
            Record::Sent { client_id, id, .. } => format!("sent {client_id} {id}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_holds_sessions_first_and_none_of_the_queued_messages_of_a_session_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = scan(dir.path(), false).expect("scan").log;
        let mut live = LiveState::default();
        let delivery = Delivery::new(
            Arc::new(Message::new(
                "t",
                Bytes::from_static(b"m"),
                QoS::AtLeastOnce,
                false,
            )),
            QoS::AtLeastOnce,
            false,
        );
        let session_set = |client_id: &str| Record::SessionSet {
            client_id: client_id.into(),
            expiry: 60,
            offline_since: 0,
            user: None,
        };
        let queued = |client_id: &str, id| Record::queued(client_id.into(), id, &delivery);
        let sent = |client_id: &str, id| Record::Sent {
            client_id: client_id.into(),
            id,
            pid: 1,
        };
        append(
            &mut log,
            &mut live,
            &[
                session_set("b"),
                queued("b", 1),
                session_set("a"),
                queued("a", 2),
                sent("b", 1),
                queued("b", 3),
                Record::SessionGone("b".into()),
                queued("a", 4),
                session_set("b"),
                Record::Subscribe {
                    client_id: "b".into(),
                    filter: "f".into(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                },
                queued("b", 5),
                sent("a", 2),
                sent("b", 3),
            ],
        );
        let bytes = live.bytes();
        live.compact_into(&mut log).expect("compact");
        let back = scan(dir.path(), false).expect("scan");
        let back: Vec<String> = back.records.iter().map(|(r, _)| short(r)).collect();
        assert_eq!(
            back,
            [
                "session a",
                "session b",
                "sub b f",
                "queued a 2",
                "queued a 4",
                "queued b 5",
                "sent a 2",
            ]
        );
        // The snapshot's segment: its format record, the marker and the live frames; the
        // segment started after it for what came meanwhile: its format record.
        let format_record = Record::LogFormat(crate::persistence::LOG_FORMAT)
            .to_frame()
            .len() as u64;
        assert_eq!(
            log.total_bytes(),
            bytes + format_record + Record::Snapshot.to_frame().len() as u64 + format_record
        );
        // The frames are where the snapshot put them: a second compaction copies them again.
        live.compact_into(&mut log).expect("compact again");
        let again = scan(dir.path(), false).expect("scan");
        assert_eq!(again.records.len(), 7);
    }

    /// [MQTT-4.6.0-1] messages in flight are sent again in the order they were first sent,
    /// which need not be the order of their ids (two workers route to one session; the
    /// Registry hands over what it held): a compaction keeps that order, and start-up reads
    /// it back.
    #[test]
    fn messages_sent_out_of_id_order_come_back_in_the_order_sent_after_a_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = scan(dir.path(), false).expect("scan").log;
        let mut live = LiveState::default();
        let message = |payload: &'static [u8]| {
            let message = Message::new("t", Bytes::from_static(payload), QoS::AtLeastOnce, false);
            Delivery::new(Arc::new(message), QoS::AtLeastOnce, false)
        };
        let (first, second, third) = (message(b"1"), message(b"2"), message(b"3"));
        let sent = |id, pid| Record::Sent {
            client_id: "a".into(),
            id,
            pid,
        };
        append(
            &mut log,
            &mut live,
            &[
                Record::SessionSet {
                    client_id: "a".into(),
                    expiry: 3600,
                    offline_since: 0,
                    user: None,
                },
                Record::queued("a".into(), 1, &first),
                Record::queued("a".into(), 2, &second),
                Record::queued("a".into(), 3, &third),
                sent(3, 10),
                sent(2, 11),
            ],
        );
        live.compact_into(&mut log).expect("compact");
        // Sent after the compaction: the last of the three.
        append(&mut log, &mut live, &[sent(1, 12)]);
        drop(log);
        let config = crate::config::PersistenceConfig {
            dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let recovered = crate::persistence::open(&config)
            .expect("reads back")
            .expect("a directory");
        let session = &recovered.sessions[0];
        let in_flight: Vec<(u16, &[u8])> = session
            .state
            .inflight
            .iter()
            .map(|e| (e.pid, &e.delivery.message.payload[..]))
            .collect();
        assert_eq!(
            in_flight,
            [(10, &b"3"[..]), (11, &b"2"[..]), (12, &b"1"[..])]
        );
    }
}
