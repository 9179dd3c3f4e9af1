//! A Session's part in [`Settlement`]s (`fsync = "always"`): as a publisher, it offers one to
//! a burst it routes while its acknowledgements still held all wait for settlements (a few at
//! most), and releases the burst's
//! acknowledgements when it hears [`Settled`]; as a subscriber, it counts a settlement down
//! when its client acknowledges a delivery the settlement waits for.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;

use super::Session;
use crate::message::{Delivery, QoS};
use crate::routing::{Settled, Settlement};

/// The most deliveries a subscriber's Session keeps a settlement for. One its client never
/// acknowledges (dropped by the queue's bounds, or too large for the client) is forgotten once
/// this many came after it: that burst's acknowledgements then wait for the sync, as without
/// a settlement.
const MAX_SETTLING: usize = 1024;

/// The most bursts of a publisher whose acknowledgements wait for a settlement at once. A
/// client that publishes again before its PUBACK came (paced by its subscriber's answer, or
/// sending a few at a time) still has its next bursts settled; one with many bursts in flight
/// (pipelined) is spared the cost of a settlement per burst, an allocation and a wake-up of
/// its Session for each, where the sync releases a whole run of bursts at once.
const MAX_SETTLING_BURSTS: usize = 4;

/// What a Session keeps for settlements.
#[derive(Default)]
pub(super) struct Settling {
    /// This Session as the publisher its settlements tell, made with the first.
    publisher: Option<Arc<Recipient<Settled>>>,
    /// A settlement offered to a burst that did not arm it: the next burst gets it.
    spare: Option<Arc<Settlement>>,
    /// As a subscriber: (durable id, settlement) of the deliveries whose PUBACK counts towards a
    /// publisher's settlement, oldest first.
    deliveries: VecDeque<(u64, Arc<Settlement>)>,
}

impl Session {
    /// The settlement to offer the burst about to be routed: with `fsync = "always"`, where the
    /// acknowledgements would otherwise wait for a sync, and only while each of the
    /// publisher's earlier acknowledgements still held waits for a settlement too, and fewer
    /// than [`MAX_SETTLING_BURSTS`] of them. A client that publishes one message and waits
    /// for its PUBACK (a device) then gets it a round trip through the subscribers after the
    /// PUBLISH instead of after the sync; so does one that publishes again a little before
    /// (its PUBACKs still in order), and the sync is not needed for either. One with more
    /// bursts out, or behind a batch only the sync releases, is spared the settlement's cost.
    pub(super) fn offer_settlement(&mut self, ctx: &Context<Self>) -> Option<Arc<Settlement>> {
        if !self.shared.store.as_ref()?.syncs_each_commit() {
            return None;
        }
        let acks = self.deferred_acks.as_deref_mut()?;
        if !acks.acks.fewer_waiting_all_settling(MAX_SETTLING_BURSTS) {
            return None;
        }
        let settling = &mut acks.settling;
        if let Some(spare) = settling.spare.take() {
            return Some(spare);
        }
        let publisher = settling
            .publisher
            .get_or_insert_with(|| Arc::new(ctx.address().recipient()));
        Some(Arc::new(Settlement::new(Arc::clone(publisher))))
    }

    /// After the burst was routed: the settlement if it was `armed` (it goes with the burst's
    /// acknowledgements), else `None`, and it is kept for the next burst.
    pub(super) fn armed_settlement(
        &mut self,
        settlement: Option<Arc<Settlement>>,
        armed: bool,
    ) -> Option<Arc<Settlement>> {
        if armed {
            return settlement;
        }
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.settling.spare = settlement;
        }
        None
    }

    /// As a subscriber: the kept QoS 1 deliveries among `deliveries` count towards
    /// `settlement` when the client acknowledges them ([`Session::settle_delivery`]).
    pub(super) fn note_settling(&mut self, deliveries: &[Delivery], settlement: Arc<Settlement>) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        let settling = &mut acks.settling.deliveries;
        let kept = deliveries
            .iter()
            .filter(|d| d.qos == QoS::AtLeastOnce)
            .filter_map(Delivery::durable_id);
        for id in kept {
            if settling.len() >= MAX_SETTLING {
                settling.pop_front();
            }
            settling.push_back((id, Arc::clone(&settlement)));
        }
    }

    /// As a subscriber, once its client acknowledged the delivery kept on disk under durable
    /// id `id`: if that delivery counts towards a settlement, it now has.
    pub(super) fn settle_delivery(&mut self, id: u64) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        let settling = &mut acks.settling.deliveries;
        // PUBACKs come in the order of sending, nearly always: the oldest is the one.
        if let Some(at) = settling.iter().position(|(kept, _)| *kept == id) {
            if let Some((_, settlement)) = settling.remove(at) {
                settlement.acknowledged();
            }
        }
    }
}

impl Handler<Settled> for Session {
    type Result = ();

    /// From a subscriber's Session: the deliveries of one of this publisher's bursts were all
    /// acknowledged; its acknowledgements go out, after those before them.
    fn handle(&mut self, _: Settled, ctx: &mut Context<Self>) {
        if self.release_acks() && !self.closing {
            self.flush(ctx);
        }
        // Nothing else waiting for the sync: it need not be made for this Session.
        self.withdraw_settled_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::super::acks::{AckWait, HeldAcks};
    use crate::codec::Ack;
    use crate::routing::settlement_tests::{settlement, Told};

    fn ready(acks: &mut HeldAcks, durable: u64) -> Vec<u16> {
        let mut ready = Vec::new();
        acks.take_ready(durable, |_, pid, _| ready.push(pid));
        ready
    }

    #[actix_rt::test]
    async fn a_settled_burst_is_acknowledged_before_its_sync_but_in_order() {
        let (first, _publisher) = settlement();
        let (second, publisher) = settlement();
        let mut acks = HeldAcks::default();
        first.arm(2);
        acks.push(Ack::PubAck, 1, 0);
        acks.hand_over_settled(AckWait::Durable(5), Some(first.clone()));
        second.arm(1);
        acks.push(Ack::PubAck, 2, 0);
        acks.hand_over_settled(AckWait::Durable(6), Some(second.clone()));
        // [MQTT-4.6.0-2] the second burst's PUBACK does not overtake the first's.
        second.acknowledged();
        assert!(
            ready(&mut acks, 0).is_empty(),
            "the first burst is not settled"
        );
        first.acknowledged();
        assert!(
            ready(&mut acks, 0).is_empty(),
            "one delivery of two acknowledged"
        );
        first.acknowledged();
        assert_eq!(ready(&mut acks, 0), vec![1, 2], "settled, before any sync");
        assert_eq!(publisher.send(Told).await.ok(), Some(1));
    }

    #[actix_rt::test]
    async fn the_sync_still_releases_a_burst_its_subscribers_have_not_acknowledged() {
        let (unsettled, publisher) = settlement();
        unsettled.arm(1);
        let mut acks = HeldAcks::default();
        acks.push(Ack::PubAck, 1, 0);
        acks.hand_over_settled(AckWait::Durable(5), Some(unsettled.clone()));
        assert!(ready(&mut acks, 4).is_empty());
        assert_eq!(ready(&mut acks, 5), vec![1]);
        // Released by the sync: the subscriber's PUBACK that comes after tells nobody.
        unsettled.acknowledged();
        assert_eq!(publisher.send(Told).await.ok(), Some(0));
    }

    #[actix_rt::test]
    async fn acknowledgements_that_need_a_change_of_their_own_wait_for_its_sync() {
        // A PUBCOMP held behind its release's record: the subscribers' PUBACKs of the burst
        // say nothing about that record.
        let (settled, _publisher) = settlement();
        settled.arm(1);
        let mut acks = HeldAcks::default();
        acks.push(Ack::PubComp, 1, 0);
        acks.pending_needs = 9;
        acks.push(Ack::PubAck, 2, 0);
        acks.hand_over_settled(AckWait::Durable(5), Some(settled.clone()));
        settled.acknowledged();
        assert!(
            ready(&mut acks, 5).is_empty(),
            "the PUBCOMP's record is not durable"
        );
        assert_eq!(ready(&mut acks, 9), vec![1, 2]);
    }
}
