//! What a Session sends its client depends on the protocol and on what the client asked for in
//! CONNECT (MQTT 5: maximum packet size, topic aliases, problem information). This file holds
//! that, and writes outbound PUBLISH packets and acknowledgements accordingly.

use std::collections::HashMap;
use std::time::Instant;

use bytes::BytesMut;

use crate::codec::{self, PublishExtras, PublishHeader};
use crate::hooks::DisconnectReason;
use crate::message::{Delivery, ProtocolVersion, QoS};
use crate::traffic::Traffic;

/// Writes PUBACK, PUBREC, PUBREL or PUBCOMP: the plain packet for success (`code` 0), else
/// (MQTT 5) with its reason code and, if the client asked for problem information, the reason
/// in words.
pub(super) fn write_ack_coded(
    out: &mut BytesMut,
    peer: &PeerOptions,
    ack: codec::Ack,
    pid: u16,
    code: u8,
) {
    if code == 0 {
        return codec::write_ack(out, ack, pid);
    }
    // A reason string says why something was refused; success codes (0x10) go without.
    let why = (code >= 0x80 && peer.problem_information).then(|| ack_reason(code));
    codec::write_ack_v5_with_reason(out, ack, pid, code, why, peer.max_packet_size);
}

/// The reason string of an acknowledgement with reason `code`: a refused PUBLISH's says what
/// was refused; others are the code's name.
fn ack_reason(code: u8) -> &'static str {
    match code {
        0x87 => "not authorized to publish to this topic",
        0x99 => "payload is not valid UTF-8",
        _ => codec::reason_text(code),
    }
}

/// The client's side of the connection, from its CONNECT.
#[derive(Debug, Clone)]
pub(super) struct PeerOptions {
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// Largest packet the client accepts (MQTT 5), whole packet in bytes.
    pub max_packet_size: Option<u32>,
    /// Whether reason strings may go on acknowledgements `[MQTT-3.1.2-29]`.
    pub problem_information: bool,
    /// Session Expiry Interval of the CONNECT: a DISCONNECT may not raise it from 0 (section
    /// 3.14.2.2.2).
    pub session_expiry: u32,
    /// Another broker's bridge (protocol level with the bridge bit): its subscriptions neither
    /// echo its own messages back nor clear the RETAIN flag, so that nothing loops and retained
    /// messages propagate.
    pub bridge: bool,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            protocol: ProtocolVersion::V3_1_1,
            max_packet_size: None,
            problem_information: true,
            session_expiry: 0,
            bridge: false,
        }
    }
}

/// Topic aliases the broker assigns towards one MQTT 5 client, up to the client's Topic Alias
/// Maximum; once they are used up, further topics go unaliased. Valid for one connection only
/// `[MQTT-3.3.2-7]`, never above the client's maximum `[MQTT-3.1.2-26]` `[MQTT-3.1.2-27]`.
#[derive(Debug, Default)]
pub(super) struct OutboundAliases {
    maximum: u16,
    /// Allocated on first use: most connections never have aliases.
    // Boxed on purpose: a HashMap is 48 bytes inline and most connections never use one.
    #[allow(clippy::box_collection)]
    assigned: Option<Box<HashMap<String, u16>>>,
}

impl OutboundAliases {
    /// Aliases 1 to `maximum` may be used (0: none) `[MQTT-3.3.2-11]`.
    pub fn new(maximum: u16) -> Self {
        OutboundAliases {
            maximum,
            assigned: None,
        }
    }

    /// The alias to send with `topic`, and whether the topic itself must be sent too (the first
    /// time an alias is used).
    pub fn alias_for(&mut self, topic: &str) -> (Option<u16>, bool) {
        if self.maximum == 0 {
            return (None, true);
        }
        let assigned = self.assigned.get_or_insert_with(Default::default);
        if let Some(&alias) = assigned.get(topic) {
            return (Some(alias), false);
        }
        if assigned.len() < usize::from(self.maximum) {
            let alias = assigned.len() as u16 + 1;
            assigned.insert(topic.to_string(), alias);
            return (Some(alias), true);
        }
        (None, true)
    }

    /// Takes back the alias just assigned to `topic` by [`OutboundAliases::alias_for`] when the
    /// PUBLISH that would have told the client was not sent after all.
    pub fn forget(&mut self, topic: &str) {
        if let Some(assigned) = self.assigned.as_mut() {
            if assigned.len() == usize::from(assigned.get(topic).copied().unwrap_or(0)) {
                assigned.remove(topic);
            }
        }
    }
}

/// Writes the PUBLISH of one delivery: for MQTT 3.1.1 the shared QoS 0 frame where it applies,
/// else an encoding with this subscriber's packet id and flags; for MQTT 5 with its properties,
/// remaining expiry, subscription identifiers and topic alias. Returns false (nothing written)
/// when the packet would exceed the client's Maximum Packet Size `[MQTT-3.1.2-24]`
/// `[MQTT-3.1.2-25]`.
pub(super) fn write_delivery(
    out: &mut BytesMut,
    peer: &PeerOptions,
    aliases: &mut OutboundAliases,
    delivery: &Delivery,
    pid: u16,
    dup: bool,
    now: Instant,
) -> bool {
    let message = &delivery.message;
    let header = PublishHeader {
        qos: delivery.qos,
        retain: delivery.retain,
        dup,
        pid,
    };
    if !peer.protocol.is_v5() {
        if delivery.qos == QoS::AtMostOnce && !delivery.retain {
            out.extend_from_slice(message.qos0_frame());
        } else {
            codec::write_publish(out, &message.topic, &message.payload, header);
        }
        return true;
    }
    let extras = PublishExtras {
        properties: message.properties.as_deref(),
        expiry: message.remaining_expiry(now),
        topic_alias: None,
        subscription_ids: delivery.subscription_ids(),
    };
    // A re-sent PUBLISH carries its topic: the alias may not be known on this connection.
    let (alias, send_topic) = if dup {
        (None, true)
    } else {
        aliases.alias_for(&message.topic)
    };
    let topic = if send_topic {
        message.topic.as_str()
    } else {
        ""
    };
    let extras = PublishExtras {
        topic_alias: alias,
        ..extras
    };
    let written = codec::write_publish_v5(
        out,
        topic,
        &message.payload,
        header,
        &extras,
        peer.max_packet_size,
    );
    if !written && send_topic && alias.is_some() {
        // The client never learnt this alias: later messages must not use it.
        aliases.forget(&message.topic);
    }
    written
}

/// Counts the in-broker latency of a delivery first written at `now` (not a re-send), unless it
/// is a retained message sent on subscribing or one the broker made itself.
pub(super) fn note_delivery_latency(traffic: &Traffic, delivery: &Delivery, now: Instant) {
    if let (Some(received_at), false) = (delivery.message.received_at, delivery.retain) {
        traffic.delivered_after(now.saturating_duration_since(received_at));
    }
}

/// The MQTT 5 reason code of the DISCONNECT a Session sends before closing for `reason`, if it
/// sends one (section 4.13: the broker says why it closes).
pub(super) fn disconnect_code(reason: &DisconnectReason) -> Option<u8> {
    match reason {
        DisconnectReason::Clean
        | DisconnectReason::ClientReason(_)
        | DisconnectReason::Network(_) => None,
        DisconnectReason::KeepAliveTimeout => Some(0x8D),
        DisconnectReason::TakenOver => Some(0x8E),
        DisconnectReason::ProtocolError(_) => Some(0x82),
        DisconnectReason::SlowConsumer => Some(0x97),
        DisconnectReason::ServerShutdown => Some(0x8B),
        DisconnectReason::Kicked => Some(0x98),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_assigned_up_to_the_client_maximum() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.alias_for("a"), (Some(1), true));
        assert_eq!(aliases.alias_for("a"), (Some(1), false));
        assert_eq!(aliases.alias_for("b"), (Some(2), true));
        assert_eq!(aliases.alias_for("c"), (None, true), "maximum reached");
        aliases.forget("c");
        assert_eq!(
            aliases.alias_for("b"),
            (Some(2), false),
            "only the last new alias is taken back"
        );
        let mut fresh = OutboundAliases::new(2);
        assert_eq!(fresh.alias_for("x"), (Some(1), true));
        fresh.forget("x");
        assert_eq!(
            fresh.alias_for("y"),
            (Some(1), true),
            "a forgotten alias is assigned again"
        );
        let mut none = OutboundAliases::new(0);
        assert_eq!(none.alias_for("a"), (None, true), "[MQTT-3.1.2-27]");
    }
}
