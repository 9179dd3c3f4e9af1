//! A Session's acknowledgements of what its client sent (PUBACK, PUBREC, PUBREL, PUBCOMP), in
//! the order the packets came `[MQTT-4.6.0-2]`: written at once, or held ([`HeldAcks`]) while
//! what they acknowledge waits: for the disk with `[persistence]` (`durability.rs`), and for an
//! MQTT 5 publisher until its burst is routed, so that one whose message reached no subscriber
//! says so (0x10 No matching subscribers).

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;

use super::packets::reason;
use super::peer::write_ack_coded;
use super::Session;
use crate::codec::{self, Ack};
use crate::message::QoS;
use crate::routing::Settlement;

/// What a batch of acknowledgements waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckWait {
    /// The Registry's [`Routed`](crate::registry::Routed) for a burst handed to it.
    Routed,
    /// The store change with this sequence number being durable (0: nothing).
    Durable(u64),
}

/// An acknowledgement held back: its packet, its packet identifier, and (MQTT 5) its reason
/// code, 0 for success.
type HeldAck = (Ack, u16, u8);

/// The most emptied batches of acknowledgements a Session keeps for reuse.
const SPARE_BATCHES: usize = 2;

/// Acknowledgements handed over together, and what they wait for.
struct Batch {
    /// What they wait for.
    wait: AckWait,
    /// The acknowledgements, in packet order.
    acks: Vec<HeldAck>,
    /// With `fsync = "always"`: the burst's deliveries whose PUBACKs end the wait too, if
    /// they come before the sync.
    settlement: Option<Arc<Settlement>>,
}

impl Batch {
    /// Whether the wait is over by `durable`, or settled by the subscribers' PUBACKs.
    fn is_ready(&self, durable: u64) -> bool {
        match self.wait {
            AckWait::Routed => false,
            AckWait::Durable(seq) => {
                seq <= durable || self.settlement.as_ref().is_some_and(|s| s.is_settled())
            }
        }
    }
}

/// Acknowledgements held back, in the order their packets came: those of packets not handed
/// over yet, then batches each waiting for a burst to be routed or a store change to be
/// durable.
#[derive(Default)]
pub(super) struct HeldAcks {
    /// Of packets not handed over yet.
    pending: Vec<HeldAck>,
    /// Handed over, each batch with what it waits for, oldest first.
    waiting: VecDeque<Batch>,
    /// Emptied batches kept for the next ones (at most [`SPARE_BATCHES`]): a pipelined
    /// publisher hands a batch over with every burst, which would otherwise grow a new list
    /// from nothing each time.
    spare: Vec<Vec<HeldAck>>,
    /// The store change the pending acknowledgements need themselves (a PUBREL's record).
    pub(super) pending_needs: u64,
    /// (MQTT 5) The pending acknowledgements of the messages in the burst being read, as
    /// (position in `pending`, position in the burst): once the burst is routed here, those
    /// whose message reached no subscriber carry 0x10 ([`HeldAcks::mark_unmatched`]).
    of_burst: Vec<(usize, usize)>,
    /// (MQTT 5) For each batch waiting for [`AckWait::Routed`], in order: its `of_burst`, to
    /// mark once the Registry's answer says which messages reached no subscriber.
    routed_marks: VecDeque<Vec<(usize, usize)>>,
}

impl HeldAcks {
    /// Holds `ack` of packet `pid`, with reason `code`, behind those held before it.
    pub(super) fn push(&mut self, ack: Ack, pid: u16, code: u8) {
        self.pending.push((ack, pid, code));
    }

    /// Holds the acknowledgement of message `routed` of the burst being read (MQTT 5), to be
    /// marked once the burst is routed.
    fn push_routed(&mut self, ack: Ack, pid: u16, routed: usize) {
        self.of_burst.push((self.pending.len(), routed));
        self.pending.push((ack, pid, 0));
    }

    /// The acknowledgements of the burst just routed whose message reached no subscriber (bit
    /// `i` of `unmatched` for message `i`) carry 0x10 No matching subscribers.
    fn mark_unmatched(&mut self, unmatched: u64) {
        mark(&mut self.pending, self.of_burst.drain(..), unmatched);
    }

    /// The store changes the held acknowledgements wait for (some may be durable already).
    pub(super) fn awaited(&self) -> impl Iterator<Item = u64> + '_ {
        let batches = self.waiting.iter().filter_map(|batch| match batch.wait {
            AckWait::Durable(seq) => Some(seq),
            AckWait::Routed => None,
        });
        batches.chain([self.pending_needs])
    }

    /// Whether fewer than `most` batches wait and each of them may be settled by its
    /// subscribers' PUBACKs: a settlement offered to the next burst could then release its
    /// acknowledgements before a sync (a firm batch ahead would hold them until the sync).
    pub(super) fn fewer_waiting_all_settling(&self, most: usize) -> bool {
        self.waiting.len() < most && self.waiting.iter().all(|b| b.settlement.is_some())
    }

    /// Whether change `seq` is waited for here only by batches that their subscribers'
    /// PUBACKs may settle first: at least one batch waits for it, each with a settlement, and
    /// the pending acknowledgements do not need it themselves.
    pub(super) fn only_settling_wait_for(&self, seq: u64) -> bool {
        let mut for_seq = self
            .waiting
            .iter()
            .filter(|b| b.wait == AckWait::Durable(seq))
            .peekable();
        for_seq.peek().is_some()
            && for_seq.all(|b| b.settlement.is_some())
            && self.pending_needs != seq
    }

    /// Whether the oldest batch waits for a store change durable by `durable` (or settled):
    /// what [`HeldAcks::take_ready`] would release now.
    pub(super) fn has_ready(&self, durable: u64) -> bool {
        self.waiting.front().is_some_and(|b| b.is_ready(durable))
    }

    /// [`HeldAcks::hand_over_settled`] without a settlement.
    #[cfg(test)]
    pub(super) fn hand_over(&mut self, wait: AckWait) -> AckWait {
        self.hand_over_settled(wait, None).0
    }

    /// Moves the pending acknowledgements behind `wait`, or behind what they need themselves
    /// if that comes later; returns the wait, and whether the burst's `settlement` was kept
    /// for it. A wait for [`AckWait::Routed`] always gets a batch, empty or not: each of the
    /// Registry's answers is for one burst, in order. The burst's `settlement`, if any, ends
    /// the wait too when it is settled first; not when the acknowledgements need a change of
    /// their own (a PUBREL's record), which only its sync makes safe.
    pub(super) fn hand_over_settled(
        &mut self,
        wait: AckWait,
        settlement: Option<Arc<Settlement>>,
    ) -> (AckWait, bool) {
        let needs = std::mem::take(&mut self.pending_needs);
        let settlement = match settlement {
            Some(settlement) if needs != 0 || self.pending.is_empty() => {
                settlement.released();
                None
            }
            settlement => settlement,
        };
        let settles = settlement.is_some();
        let wait = match wait {
            // The Registry answers once everything submitted before the burst is durable, and
            // says which of its messages reached no subscriber.
            AckWait::Routed => {
                self.routed_marks
                    .push_back(std::mem::take(&mut self.of_burst));
                AckWait::Routed
            }
            AckWait::Durable(seq) => {
                // Not routed (or already marked): their acknowledgements keep their codes.
                self.of_burst.clear();
                AckWait::Durable(seq.max(needs))
            }
        };
        if !self.pending.is_empty() || wait == AckWait::Routed {
            let next = self.spare.pop().unwrap_or_default();
            let acks = std::mem::replace(&mut self.pending, next);
            self.waiting.push_back(Batch {
                wait,
                acks,
                settlement,
            });
        }
        (wait, settles)
    }

    /// Hands the pending acknowledgements to `each` at once when nothing before them waits and
    /// `wait` is over by `durable` (in memory, always), without moving them into a batch of
    /// their own; tells whether there were any. `None` when they must wait
    /// ([`HeldAcks::hand_over`]).
    fn release_at_once(
        &mut self,
        wait: AckWait,
        durable: u64,
        mut each: impl FnMut(Ack, u16, u8),
    ) -> Option<bool> {
        let AckWait::Durable(seq) = wait else {
            return None;
        };
        if !self.waiting.is_empty() || seq.max(self.pending_needs) > durable {
            return None;
        }
        self.pending_needs = 0;
        self.of_burst.clear();
        let any = !self.pending.is_empty();
        for (ack, pid, code) in self.pending.drain(..) {
            each(ack, pid, code);
        }
        Some(any)
    }

    /// The first batch waiting for the Registry's answer no longer does; (MQTT 5) the
    /// acknowledgements of its messages that reached no subscriber (bit `i` of `unmatched` for
    /// message `i`) carry 0x10 No matching subscribers.
    fn routed(&mut self, unmatched: u64) {
        let marks = self.routed_marks.pop_front().unwrap_or_default();
        if let Some(batch) = self.waiting.iter_mut().find(|b| b.wait == AckWait::Routed) {
            batch.wait = AckWait::Durable(0);
            mark(&mut batch.acks, marks, unmatched);
        }
    }

    /// Hands the acknowledgements whose wait is over by `durable` (or settled) to `each`, in
    /// order; tells whether there were any. Their emptied batches are kept for reuse.
    pub(super) fn take_ready(&mut self, durable: u64, mut each: impl FnMut(Ack, u16, u8)) -> bool {
        let mut any = false;
        while self.has_ready(durable) {
            if let Some(Batch {
                mut acks,
                settlement,
                ..
            }) = self.waiting.pop_front()
            {
                if let Some(settlement) = settlement {
                    settlement.released();
                }
                any |= !acks.is_empty();
                for (ack, pid, code) in acks.drain(..) {
                    each(ack, pid, code);
                }
                if self.spare.len() < SPARE_BATCHES {
                    self.spare.push(acks);
                }
            }
        }
        any
    }
}

/// Gives 0x10 No matching subscribers to the acknowledgements in `acks` whose message reached
/// no subscriber: `marks` pairs an acknowledgement's position in `acks` with its message's
/// position in the burst, and bit `i` of `unmatched` is set for message `i`.
fn mark(acks: &mut [HeldAck], marks: impl IntoIterator<Item = (usize, usize)>, unmatched: u64) {
    for (at, routed) in marks {
        if routed < 64 && unmatched & (1 << routed) != 0 {
            if let Some(held) = acks.get_mut(at) {
                held.2 = reason::NO_MATCHING_SUBSCRIBERS;
            }
        }
    }
}

/// The acknowledgement of a PUBLISH taken at `qos` (none for QoS 0).
fn ack_for(qos: QoS) -> Option<Ack> {
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Ack::PubAck),
        QoS::ExactlyOnce => Some(Ack::PubRec),
    }
}

impl Session {
    /// Acknowledges a PUBLISH the broker took, in the order packets came `[MQTT-4.6.0-2]`:
    /// at once, or, where this Session holds its acknowledgements (persistence, an MQTT 5
    /// publisher), when the burst it is part of is handed over ([`Session::settle_acks`]). PUBACK once the broker owns the message [MQTT-4.3.2-2];
    /// PUBREC for QoS 2 [MQTT-4.3.3-2].
    pub(super) fn acknowledge_in_order(&mut self, qos: QoS, pid: u16) {
        let Some(ack) = ack_for(qos) else {
            return;
        };
        match self.deferred_acks.as_deref_mut() {
            Some(acks) => acks.acks.push(ack, pid, 0),
            None => codec::write_ack(&mut self.out, ack, pid),
        }
    }

    /// Answers a PUBLISH the broker refuses with `ack` carrying reason `code` (0 for a plain
    /// acknowledgement), in the order packets came `[MQTT-4.6.0-2]`: with persistence behind
    /// the acknowledgements still held (for the disk, or for their burst's routing), and those
    /// of the burst being read.
    pub(super) fn acknowledge_refused(
        &mut self,
        ack: Ack,
        pid: u16,
        code: u8,
        ctx: &mut Context<Self>,
    ) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return write_ack_coded(&mut self.out, &self.peer_options, ack, pid, code);
        };
        acks.acks.push(ack, pid, code);
        if self.to_route.is_empty() {
            self.settle_acks(AckWait::Durable(0), ctx);
        }
    }

    /// [`Session::acknowledge_in_order`] for a PUBLISH routed with the burst being read (the
    /// next message of `to_route`). An MQTT 5 client's acknowledgement waits for the burst to
    /// be routed, and carries 0x10 No matching subscribers if the message reached no
    /// subscriber (a MAY of section 3.4.2.1, as Mosquitto does): a request to a device that is
    /// not there is known at once. A burst routed by the Registry (with a retained message, or
    /// behind a SUBSCRIBE) waits for its [`Routed`](crate::registry::Routed), which says so.
    pub(super) fn acknowledge_routed(&mut self, qos: QoS, pid: u16) {
        if !self.peer_options.protocol.is_v5() {
            return self.acknowledge_in_order(qos, pid);
        }
        let Some(ack) = ack_for(qos) else {
            return;
        };
        let routed = self.to_route.len();
        let acks = self.deferred_acks.get_or_insert_with(Box::default);
        acks.acks.push_routed(ack, pid, routed);
    }

    /// (MQTT 5) Whether the acknowledgements of a burst handed to the Registry wait for its
    /// answer: an MQTT 5 publisher's do, to learn which messages reached no subscriber.
    pub(super) fn acks_await_routing(&self) -> bool {
        self.peer_options.protocol.is_v5()
    }

    /// (MQTT 5) After the burst being read was routed here: the acknowledgements of its
    /// messages that reached no subscriber (bit `i` of `unmatched` for message `i`) carry
    /// 0x10 No matching subscribers.
    pub(super) fn mark_unmatched(&mut self, unmatched: u64) {
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.acks.mark_unmatched(unmatched);
        }
    }

    /// [`Session::acknowledge_in_order`] for a PUBLISH that is not routed (a duplicate QoS 2,
    /// one an interceptor dropped): it waits only for the acknowledgements before it.
    pub(super) fn acknowledge_unrouted(&mut self, qos: QoS, pid: u16, ctx: &mut Context<Self>) {
        self.acknowledge_in_order(qos, pid);
        if self.to_route.is_empty() {
            self.settle_acks(AckWait::Durable(0), ctx);
        }
    }

    /// Moves the pending acknowledgements behind `wait` (asking the writer to say when it is
    /// durable), and writes those whose wait is over.
    pub(super) fn settle_acks(&mut self, wait: AckWait, ctx: &mut Context<Self>) {
        self.settle_acks_or_settled(wait, None, ctx);
    }

    /// [`Session::settle_acks`], for a burst whose `settlement` ends the wait too if its
    /// subscribers acknowledge its deliveries before the sync (see
    /// [`Settlement`](crate::routing::Settlement)).
    pub(super) fn settle_acks_or_settled(
        &mut self,
        wait: AckWait,
        settlement: Option<Arc<Settlement>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        let (out, peer) = (&mut self.out, &self.peer_options);
        let written = acks
            .acks
            .release_at_once(wait, acks.durable, |ack, pid, code| {
                write_ack_coded(out, peer, ack, pid, code)
            });
        if let Some(any) = written {
            if let Some(settlement) = settlement {
                settlement.released();
            }
            if any && !self.closing {
                self.flush(ctx);
            }
            return;
        }
        if let (AckWait::Durable(seq), settles) = acks.acks.hand_over_settled(wait, settlement) {
            if let Some(store) = self.shared.store.as_ref() {
                if settles {
                    acks.wait_for_unless_settled(store, seq, ctx);
                } else {
                    acks.wait_for(store, seq, ctx);
                }
            }
        }
        // Called after the read turn that took the packets (their burst is routed then): the
        // turn's own flush has passed, so what is released here is written now. While closing,
        // `close` writes it, with the DISCONNECT after it.
        if self.release_acks() && !self.closing {
            self.flush(ctx);
        }
    }

    /// The Registry answered a burst handed to it: `unmatched` as in
    /// [`Routed`](crate::registry::Routed).
    pub(super) fn burst_routed(&mut self, unmatched: u64) {
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.acks.routed(unmatched);
        }
        self.release_acks();
    }

    /// Writes the acknowledgements whose wait is over; tells whether there were any.
    pub(super) fn release_acks(&mut self) -> bool {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return false;
        };
        let (out, peer) = (&mut self.out, &self.peer_options);
        let durable = acks.durable;
        acks.acks.take_ready(durable, |ack, pid, code| {
            write_ack_coded(out, peer, ack, pid, code)
        })
    }

    /// Writes `ack` once store change `seq` is durable (0: nothing to wait for), after the
    /// acknowledgements before it.
    pub(super) fn ack_after(&mut self, ack: Ack, pid: u16, seq: u64, ctx: &mut Context<Self>) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return codec::write_ack(&mut self.out, ack, pid);
        };
        acks.acks.push(ack, pid, 0);
        acks.acks.pending_needs = acks.acks.pending_needs.max(seq);
        if self.to_route.is_empty() {
            self.settle_acks(AckWait::Durable(0), ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(acks: &mut HeldAcks, durable: u64) -> Vec<(Ack, u16, u8)> {
        let mut ready = Vec::new();
        acks.take_ready(durable, |ack, pid, code| ready.push((ack, pid, code)));
        ready
    }

    #[test]
    fn released_batches_are_reused_for_the_next_bursts() {
        let mut acks = HeldAcks::default();
        for burst in 1..=3u64 {
            for pid in 0..50 {
                acks.push(Ack::PubAck, pid, 0);
            }
            acks.hand_over(AckWait::Durable(burst));
            let released = ready(&mut acks, burst);
            assert_eq!(released.len(), 50, "burst {burst}, in order");
            assert!(released.iter().map(|(_, pid, _)| *pid).eq(0..50));
        }
        // From the third burst on, acknowledgements go into an earlier burst's emptied list:
        // the fourth burst's is one with room already.
        assert!(acks.pending.is_empty());
        assert!(acks.pending.capacity() >= 50, "a list with room was reused");
        assert!(acks.spare.len() <= SPARE_BATCHES);
    }

    #[test]
    fn a_message_that_reached_no_subscriber_is_acknowledged_with_0x10() {
        // (5.0) section 3.4.2.1: the publisher of burst messages 0 and 2 (1 is QoS 0) hears
        // that message 2 reached no one; a refusal between them keeps its own code and place.
        let mut acks = HeldAcks::default();
        acks.push_routed(Ack::PubAck, 1, 0);
        acks.push(Ack::PubAck, 2, reason::NOT_AUTHORIZED);
        acks.push_routed(Ack::PubRec, 3, 2);
        acks.mark_unmatched(0b110);
        let mut written = Vec::new();
        let released = acks.release_at_once(AckWait::Durable(0), 0, |ack, pid, code| {
            written.push((ack, pid, code))
        });
        assert_eq!(released, Some(true));
        assert_eq!(
            written,
            vec![
                (Ack::PubAck, 1, 0),
                (Ack::PubAck, 2, reason::NOT_AUTHORIZED),
                (Ack::PubRec, 3, reason::NO_MATCHING_SUBSCRIBERS),
            ]
        );
        acks.push_routed(Ack::PubAck, 4, 0);
        acks.push_routed(Ack::PubAck, 5, 1);
        acks.mark_unmatched(0b10);
        acks.hand_over(AckWait::Durable(7));
        assert_eq!(
            acks.release_at_once(AckWait::Durable(0), 0, |_, _, _| {}),
            None,
            "behind the batch"
        );
        assert_eq!(
            ready(&mut acks, 7),
            vec![
                (Ack::PubAck, 4, 0),
                (Ack::PubAck, 5, reason::NO_MATCHING_SUBSCRIBERS)
            ]
        );
    }

    #[test]
    fn acknowledgements_of_a_burst_the_registry_routes_carry_its_answer() {
        let mut acks = HeldAcks::default();
        acks.push_routed(Ack::PubAck, 1, 0);
        acks.push_routed(Ack::PubAck, 2, 1);
        acks.hand_over(AckWait::Routed);
        // Marks of a burst routed here do not touch it.
        acks.mark_unmatched(u64::MAX);
        assert!(ready(&mut acks, 0).is_empty(), "waiting for Routed");
        acks.routed(0b10);
        assert_eq!(
            ready(&mut acks, 0),
            vec![
                (Ack::PubAck, 1, 0),
                (Ack::PubAck, 2, reason::NO_MATCHING_SUBSCRIBERS)
            ]
        );
    }

    #[test]
    fn each_answer_of_the_registry_releases_its_own_burst() {
        // A burst with nothing to acknowledge (QoS 0) still waits for its answer: the first
        // answer must not release the next burst's acknowledgements, which may not be routed,
        // nor durable, yet.
        let mut acks = HeldAcks::default();
        acks.hand_over(AckWait::Routed);
        acks.push_routed(Ack::PubAck, 7, 0);
        acks.hand_over(AckWait::Routed);
        acks.routed(0);
        assert!(
            ready(&mut acks, 0).is_empty(),
            "the second burst is not routed"
        );
        acks.routed(1);
        assert_eq!(
            ready(&mut acks, 0),
            vec![(Ack::PubAck, 7, reason::NO_MATCHING_SUBSCRIBERS)]
        );
    }
}
