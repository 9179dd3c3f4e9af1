//! What a client's session keeps across connections: the messages it was sent and has not
//! acknowledged, the messages waiting for it, and the inbound QoS 2 identifiers awaiting PUBREL.
//! The Session builds it when its connection ends and the Registry stores it for the next one;
//! it lives here, apart from both, so that neither needs the other's internals.

use std::collections::{HashSet, VecDeque};

use crate::message::Delivery;
use crate::queue::DeliveryQueue;

/// Where an outbound QoS 1/2 message stands in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightStage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

/// An outbound QoS 1/2 message that has a packet identifier.
#[derive(Debug, Clone)]
pub struct InflightEntry {
    /// Packet identifier.
    pub pid: u16,
    /// The message.
    pub delivery: Delivery,
    /// Handshake stage.
    pub stage: InflightStage,
}

/// What a client's session keeps across connections (clean session 0): handed by the Session to
/// the Registry when the connection ends and back to the next Session on resume.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Sent and unacknowledged, in send order; re-sent on resume `[MQTT-4.4.0-1]`.
    pub inflight: VecDeque<InflightEntry>,
    /// Not sent yet, in order.
    pub queue: DeliveryQueue,
    /// Inbound QoS 2 packet identifiers whose PUBREL has not arrived: a re-sent PUBLISH with one of
    /// these is not routed again (exactly once).
    pub inbound_qos2: HashSet<u16>,
}

/// One QoS 1/2 message a session holds, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct HeldMessage {
    /// The message, with the QoS and RETAIN flag this client gets it with.
    pub delivery: Delivery,
    /// Its packet identifier and stage once sent; none while it is queued.
    pub sent: Option<(u16, InflightStage)>,
}

/// A page of what a session holds: its messages in flight (in send order) then queued (in
/// order), and its inbound QoS 2 identifiers awaiting PUBREL. Built by the Registry for an
/// offline session and by the Session for a connected one; read by the admin API.
#[derive(Debug, Clone, Default)]
pub struct HeldMessages {
    /// Messages in flight and queued, before paging.
    pub total: usize,
    /// The messages of the page.
    pub items: Vec<HeldMessage>,
    /// Inbound QoS 2 identifiers awaiting PUBREL, sorted.
    pub awaiting_pubrel: Vec<u16>,
}

impl HeldMessages {
    /// `limit` messages from `offset` of `inflight` followed by `queued`, and the inbound QoS 2
    /// identifiers `awaiting_pubrel`. Only the page's messages are cloned.
    pub fn page<'a>(
        inflight: impl Iterator<Item = &'a InflightEntry>,
        queued: impl Iterator<Item = &'a Delivery>,
        awaiting_pubrel: impl Iterator<Item = u16>,
        offset: usize,
        limit: usize,
    ) -> Self {
        let inflight = inflight.map(|entry| (&entry.delivery, Some((entry.pid, entry.stage))));
        let queued = queued.map(|delivery| (delivery, None));
        let (mut total, mut items) = (0, Vec::new());
        for (delivery, sent) in inflight.chain(queued) {
            if (offset..offset.saturating_add(limit)).contains(&total) {
                items.push(HeldMessage {
                    delivery: delivery.clone(),
                    sent,
                });
            }
            total += 1;
        }
        let mut awaiting_pubrel: Vec<u16> = awaiting_pubrel.collect();
        awaiting_pubrel.sort_unstable();
        HeldMessages {
            total,
            items,
            awaiting_pubrel,
        }
    }

    /// The page of a stored (offline) session.
    pub fn of_stored(state: &SessionState, offset: usize, limit: usize) -> Self {
        Self::page(
            state.inflight.iter(),
            state.queue.iter(),
            state.inbound_qos2.iter().copied(),
            offset,
            limit,
        )
    }
}
