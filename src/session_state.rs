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
