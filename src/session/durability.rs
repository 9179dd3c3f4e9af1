//! What a Session does when `[persistence]` is on: its acknowledgements wait, in order, for
//! what they acknowledge to be durable, and it holds deliveries that may reach the client only
//! once a change is durable. What it records of the deliveries kept on disk for its client is in
//! [`super::delivery_records`].

use std::collections::VecDeque;

use actix::prelude::*;

use super::peer::write_ack_coded;
use super::{Phase, Session};
use crate::codec::{self, Ack};
use crate::message::QoS;
use crate::persistence::{Durable, DurableTo, Record, Store};
use crate::routing::Deliver;
use crate::session::state::DurableChange;

/// A SUBACK or UNSUBACK that waits for the subscription change it acknowledges.
pub(super) enum Reply {
    /// SUBACK of SUBSCRIBE `pid`.
    SubAck {
        /// Packet identifier.
        pid: u16,
        /// Return / reason codes.
        codes: Vec<u8>,
    },
    /// UNSUBACK of UNSUBSCRIBE `pid`.
    UnsubAck {
        /// Packet identifier.
        pid: u16,
        /// Reason codes (MQTT 5).
        codes: Vec<u8>,
    },
}

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

/// PUBACK/PUBREC/PUBCOMP held back until what they acknowledge is durable, in the order the
/// packets came `[MQTT-4.6.0-2]`; and what the Session has to submit with its next burst.
#[derive(Default)]
pub(super) struct DeferredAcks {
    /// Of packets not handed over yet.
    pending: Vec<HeldAck>,
    /// Handed over, each batch with what it waits for, oldest first.
    waiting: VecDeque<(AckWait, Vec<HeldAck>)>,
    /// Emptied batches kept for the next ones (at most [`SPARE_BATCHES`]): a pipelined
    /// publisher hands a batch over with every burst, which would otherwise grow a new list
    /// from nothing each time.
    spare: Vec<Vec<HeldAck>>,
    /// The last store change known durable.
    pub(super) durable: u64,
    /// The store change the pending acknowledgements need themselves (a PUBREL's record).
    pending_needs: u64,
    /// Inbound QoS 2 ids taken since the last burst was routed, to record with it.
    pub(super) inbound_qos2: Vec<u16>,
    /// Deliveries that wait for a store change before they reach the client ([`Deliver::after`]).
    held: VecDeque<Deliver>,
    /// SUBACK/UNSUBACK waiting for their store change, in order.
    replies: VecDeque<(u64, Reply)>,
    /// The Session's own record that its output waits for (a QoS 2 sending, or the last of
    /// too many not yet durable).
    pub(super) output_after: u64,
    /// The Session's own submissions not yet known durable: (change number, `Done` records).
    pub(super) unconfirmed: VecDeque<(u64, usize)>,
    /// The `Done` records in `unconfirmed`: messages the client has acknowledged that a
    /// crash now would send again.
    pub(super) unconfirmed_done: usize,
    /// The last change the writer was asked to report for the output.
    pub(super) output_notified: u64,
    /// Scratch list of what happened to the deliveries kept on disk, between taking them from
    /// the outbound flow and submitting them.
    pub(super) changes: Vec<DurableChange>,
    /// This Session as the store's writer tells it, made at its first wait.
    durable_to: Option<DurableTo>,
    /// The change of a wait the store has not answered yet (0: none known). A later change
    /// waits behind it without a wait of its own: the [`Durable`] that answers it carries
    /// everything durable by then, and the Session then waits for what is still open
    /// ([`Session::wait_for_open`]). So a Session that hands over many bursts within one commit
    /// has one wait, and one [`Durable`] to handle, not one per burst.
    waiting_for: u64,
}

/// What a change a Session must wait for needs ([`DeferredAcks::wait_needed`]).
#[derive(Debug, PartialEq, Eq)]
enum WaitNeeded {
    /// Nothing: it is durable.
    Durable,
    /// Nothing more: a wait for an earlier change is out, and what answers it answers this.
    Behind,
    /// A wait of its own.
    Own,
}

impl DeferredAcks {
    /// Makes sure this Session hears once change `seq` is durable; true if it already is
    /// (then [`DeferredAcks::durable`] says so).
    pub(super) fn wait_for(&mut self, store: &Store, seq: u64, ctx: &Context<Session>) -> bool {
        match self.wait_needed(store.durable(), seq) {
            WaitNeeded::Durable => return true,
            WaitNeeded::Behind => return false,
            WaitNeeded::Own => {}
        }
        let to = self
            .durable_to
            .get_or_insert_with(|| DurableTo::new(ctx.address().recipient()));
        if store.notify_when_durable(seq, to) {
            self.durable = self.durable.max(seq);
            return true;
        }
        // A wait for a later change may still be out: it is answered too, and does no harm.
        self.waiting_for = seq;
        false
    }

    /// Whether change `seq` needs a wait of its own, given what the store says is durable.
    fn wait_needed(&mut self, store_durable: u64, seq: u64) -> WaitNeeded {
        self.durable = self.durable.max(store_durable);
        if seq <= self.durable {
            WaitNeeded::Durable
        } else if self.waiting_for != 0 && self.waiting_for <= seq {
            WaitNeeded::Behind
        } else {
            WaitNeeded::Own
        }
    }

    /// A [`Durable`] came: everything up to `durable` is; the wait it answers is over.
    fn answered(&mut self, durable: u64) {
        self.durable = self.durable.max(durable);
        if self.waiting_for <= self.durable {
            self.waiting_for = 0;
        }
    }

    /// The lowest change something here still waits for, if any is not durable.
    fn lowest_open(&self) -> Option<u64> {
        let durable = self.durable;
        let acks = self.waiting.iter().filter_map(|(wait, _)| match wait {
            AckWait::Durable(seq) => Some(*seq),
            AckWait::Routed => None,
        });
        acks.chain(self.held.front().map(|deliver| deliver.after))
            .chain(self.replies.front().map(|(after, _)| *after))
            .chain([self.output_after, self.pending_needs])
            .filter(|&seq| seq > durable)
            .min()
    }
}

impl DeferredAcks {
    /// Moves the pending acknowledgements behind `wait`, or behind what they need themselves
    /// if that comes later; returns the wait.
    fn hand_over(&mut self, wait: AckWait) -> AckWait {
        let needs = std::mem::take(&mut self.pending_needs);
        let wait = match wait {
            // The Registry answers once everything submitted before the burst is durable.
            AckWait::Routed => AckWait::Routed,
            AckWait::Durable(seq) => AckWait::Durable(seq.max(needs)),
        };
        if !self.pending.is_empty() {
            let next = self.spare.pop().unwrap_or_default();
            let acks = std::mem::replace(&mut self.pending, next);
            self.waiting.push_back((wait, acks));
        }
        wait
    }

    /// The first batch waiting for the Registry's answer no longer does.
    pub(super) fn routed(&mut self) {
        if let Some(entry) = self.waiting.iter_mut().find(|e| e.0 == AckWait::Routed) {
            entry.0 = AckWait::Durable(0);
        }
    }

    /// Hands the acknowledgements whose wait is over to `each`, in order; tells whether there
    /// were any. Their emptied batches are kept for reuse.
    fn take_ready(&mut self, mut each: impl FnMut(Ack, u16, u8)) -> bool {
        let mut any = false;
        while let Some((wait, _)) = self.waiting.front() {
            let done = match wait {
                AckWait::Routed => false,
                AckWait::Durable(seq) => *seq <= self.durable,
            };
            if !done {
                break;
            }
            if let Some((_, mut acks)) = self.waiting.pop_front() {
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

/// The acknowledgement of a PUBLISH taken at `qos` (none for QoS 0).
fn ack_for(qos: QoS) -> Option<Ack> {
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Ack::PubAck),
        QoS::ExactlyOnce => Some(Ack::PubRec),
    }
}

impl Session {
    /// The client id, if its session is kept on disk (persistence on, expiry above 0).
    pub(super) fn durable_client(&self) -> Option<&str> {
        self.shared.store.as_ref()?;
        match &self.phase {
            Phase::Connected { client_id, .. } if self.peer_options.session_expiry > 0 => {
                Some(client_id)
            }
            _ => None,
        }
    }

    /// Acknowledges a PUBLISH the broker took, in the order packets came `[MQTT-4.6.0-2]`:
    /// at once, or with persistence when the burst it is part of is handed over
    /// ([`Session::settle_acks`]). PUBACK once the broker owns the message [MQTT-4.3.2-2];
    /// PUBREC for QoS 2 [MQTT-4.3.3-2].
    pub(super) fn acknowledge_in_order(&mut self, qos: QoS, pid: u16) {
        let Some(ack) = ack_for(qos) else {
            return;
        };
        match self.deferred_acks.as_deref_mut() {
            Some(acks) => acks.pending.push((ack, pid, 0)),
            None => codec::write_ack(&mut self.out, ack, pid),
        }
    }

    /// Answers a PUBLISH the broker refuses with `ack` carrying reason `code` (0 for a plain
    /// acknowledgement), in the order packets came `[MQTT-4.6.0-2]`: with persistence behind
    /// the acknowledgements still held for the disk, and those of the burst being read.
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
        acks.pending.push((ack, pid, code));
        if self.to_route.is_empty() {
            self.settle_acks(AckWait::Durable(0), ctx);
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
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        if let AckWait::Durable(seq) = acks.hand_over(wait) {
            if let Some(store) = self.shared.store.as_ref() {
                acks.wait_for(store, seq, ctx);
            }
        }
        // Called after the read turn that took the packets (their burst is routed then): the
        // turn's own flush has passed, so what is released here is written now.
        if self.release_acks() {
            self.flush(ctx);
        }
    }

    /// The Registry answered a burst handed to it.
    pub(super) fn burst_routed(&mut self) {
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.routed();
        }
        self.release_acks();
    }

    /// Writes the acknowledgements whose wait is over; tells whether there were any.
    fn release_acks(&mut self) -> bool {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return false;
        };
        let (out, peer) = (&mut self.out, &self.peer_options);
        acks.take_ready(|ack, pid, code| write_ack_coded(out, peer, ack, pid, code))
    }

    /// Records an inbound QoS 2 id taken from a client whose session is on disk, with the
    /// burst it came in.
    pub(super) fn note_inbound_qos2(&mut self, pid: u16) {
        if self.durable_client().is_none() {
            return;
        }
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.inbound_qos2.push(pid);
        }
    }

    /// The records of the inbound QoS 2 ids noted since the last burst.
    pub(super) fn take_inbound_records(&mut self) -> Vec<Record> {
        let Some(client_id) = self.durable_client().map(str::to_string) else {
            return Vec::new();
        };
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return Vec::new();
        };
        acks.inbound_qos2
            .drain(..)
            .map(|pid| Record::InboundQos2 {
                client_id: client_id.clone(),
                pid,
            })
            .collect()
    }

    /// PUBCOMP for a PUBREL whose id the Session knew. With the session on disk the id's
    /// release is recorded first and PUBCOMP waits for it: after a crash, a new PUBLISH reusing
    /// the id must not look like a duplicate.
    pub(super) fn complete_inbound(&mut self, pid: u16, ctx: &mut Context<Self>) {
        let durable = self.durable_client().map(str::to_string);
        let seq = match (durable, self.shared.store.as_ref()) {
            (Some(client_id), Some(store)) => {
                store.submit(Record::InboundReleased { client_id, pid })
            }
            _ => 0,
        };
        self.ack_after(Ack::PubComp, pid, seq, ctx);
    }

    /// PUBREL for a PUBREC from the client. For a delivery kept on disk, its release is
    /// recorded first and PUBREL waits for it: after a crash the broker must re-send PUBREL,
    /// not the PUBLISH the client has already passed on.
    pub(super) fn release_outbound(&mut self, pid: u16, ctx: &mut Context<Self>) {
        let submitted = self.submit_durable_changes();
        let seq = submitted.as_ref().map_or(0, |s| s.seq);
        self.note_submitted(submitted);
        self.ack_after(Ack::PubRel, pid, seq, ctx);
    }

    /// Writes `ack` once store change `seq` is durable (0: nothing to wait for), after the
    /// acknowledgements before it.
    fn ack_after(&mut self, ack: Ack, pid: u16, seq: u64, ctx: &mut Context<Self>) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return codec::write_ack(&mut self.out, ack, pid);
        };
        acks.pending.push((ack, pid, 0));
        acks.pending_needs = acks.pending_needs.max(seq);
        if self.to_route.is_empty() {
            self.settle_acks(AckWait::Durable(0), ctx);
        }
    }

    /// is kept, and the writer asked to say when.
    pub(super) fn hold_delivery(
        &mut self,
        deliver: Deliver,
        ctx: &mut Context<Self>,
    ) -> Option<Deliver> {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return Some(deliver);
        };
        if acks.held.is_empty() {
            if deliver.after <= acks.durable {
                return Some(deliver);
            }
            if acks.wait_for(store, deliver.after, ctx) {
                return Some(deliver);
            }
        }
        acks.held.push_back(deliver);
        None
    }

    /// `reply` if it may go out now; else it is kept (behind any kept before it) until store
    /// change `after` is durable, and the writer asked to say when.
    pub(super) fn hold_reply(
        &mut self,
        after: u64,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) -> Option<Reply> {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return Some(reply);
        };
        if acks.replies.is_empty() {
            if after <= acks.durable {
                return Some(reply);
            }
            if acks.wait_for(store, after, ctx) {
                return Some(reply);
            }
        }
        acks.replies.push_back((after, reply));
        None
    }

    /// The kept SUBACK/UNSUBACKs whose store change is now durable, in order.
    fn ready_replies(&mut self) -> Vec<Reply> {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while acks
            .replies
            .front()
            .is_some_and(|(after, _)| *after <= acks.durable)
        {
            ready.extend(acks.replies.pop_front().map(|(_, reply)| reply));
        }
        ready
    }

    /// The held deliveries whose store change is now durable, in order.
    fn ready_deliveries(&mut self) -> Vec<Deliver> {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while acks.held.front().is_some_and(|d| d.after <= acks.durable) {
            ready.extend(acks.held.pop_front());
        }
        ready
    }

    /// Everything still held, for the stored session when the connection ends.
    pub(super) fn take_held(&mut self) -> Vec<Deliver> {
        self.deferred_acks
            .as_deref_mut()
            .map(|acks| acks.held.drain(..).collect())
            .unwrap_or_default()
    }
}

impl Handler<Durable> for Session {
    type Result = ();

    /// From the store's writer thread: the change this Session waited for is durable.
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        acks.answered(msg.0);
        self.release_acks();
        // A SUBACK goes before the retained messages of its subscriptions.
        for reply in self.ready_replies() {
            self.write_reply(reply);
        }
        for deliver in self.ready_deliveries() {
            self.take_deliveries(deliver.deliveries, deliver.retained, ctx);
        }
        // Also while closing: what waited for the disk is the last output.
        self.flush(ctx);
        self.wait_for_open(ctx);
    }
}

impl Session {
    /// After a [`Durable`]: waits for the lowest change still open, which may have waited
    /// behind the one just answered. If it is durable by now, this Session tells itself.
    fn wait_for_open(&mut self, ctx: &mut Context<Self>) {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return;
        };
        let Some(lowest) = acks.lowest_open() else {
            return;
        };
        if acks.wait_for(store, lowest, ctx) {
            ctx.notify(Durable(acks.durable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(acks: &mut DeferredAcks) -> Vec<(Ack, u16)> {
        let mut ready = Vec::new();
        acks.take_ready(|ack, pid, _| ready.push((ack, pid)));
        ready
    }

    #[test]
    fn released_batches_are_reused_for_the_next_bursts() {
        let mut acks = DeferredAcks::default();
        for burst in 1..=3u64 {
            for pid in 0..50 {
                acks.pending.push((Ack::PubAck, pid, 0));
            }
            acks.hand_over(AckWait::Durable(burst));
            acks.answered(burst);
            let released = ready(&mut acks);
            assert_eq!(released.len(), 50, "burst {burst}, in order");
            assert!(released.iter().map(|(_, pid)| *pid).eq(0..50));
        }
        // From the third burst on, acknowledgements go into an earlier burst's emptied list:
        // the fourth burst's is one with room already.
        assert!(acks.pending.is_empty());
        assert!(acks.pending.capacity() >= 50, "a list with room was reused");
        assert!(acks.spare.len() <= SPARE_BATCHES);
    }

    #[test]
    fn later_changes_wait_behind_the_wait_that_is_out() {
        let mut acks = DeferredAcks::default();
        assert_eq!(acks.wait_needed(0, 5), WaitNeeded::Own);
        acks.waiting_for = 5;
        assert_eq!(acks.wait_needed(0, 7), WaitNeeded::Behind);
        assert_eq!(acks.wait_needed(0, 5), WaitNeeded::Behind);
        assert_eq!(
            acks.wait_needed(0, 3),
            WaitNeeded::Own,
            "an earlier change would wait too long behind a later one"
        );
        assert_eq!(acks.wait_needed(7, 7), WaitNeeded::Durable);
        assert_eq!(acks.durable, 7, "what the store said is kept");
    }

    #[test]
    fn an_answer_ends_the_wait_it_covers_and_leaves_what_is_still_open() {
        let mut acks = DeferredAcks {
            waiting_for: 5,
            output_after: 8,
            ..DeferredAcks::default()
        };
        acks.waiting
            .push_back((AckWait::Durable(5), vec![(Ack::PubAck, 1, 0)]));
        acks.waiting
            .push_back((AckWait::Durable(9), vec![(Ack::PubAck, 2, 0)]));
        acks.answered(4);
        assert_eq!(acks.waiting_for, 5, "not answered yet: still out");
        assert_eq!(acks.lowest_open(), Some(5));
        acks.answered(6);
        assert_eq!(acks.waiting_for, 0, "answered");
        assert_eq!(ready(&mut acks), vec![(Ack::PubAck, 1)]);
        assert_eq!(
            acks.lowest_open(),
            Some(8),
            "the output's change comes before the second batch's"
        );
        acks.answered(9);
        assert_eq!(acks.lowest_open(), None);
        assert_eq!(ready(&mut acks), vec![(Ack::PubAck, 2)]);
    }
}
