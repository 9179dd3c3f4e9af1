//! Decoding of client-to-server MQTT 5 packets (after a level-5 CONNECT).
//!
//! mqttbytes' v5 readers are not used: a bare DISCONNECT (`e0 00`) fails with `PayloadRequired`,
//! a PUBLISH missing its property length returns `InsufficientBytes` after its frame was consumed,
//! and no reader refuses a property repeated or sent in the wrong packet. Framing still uses
//! `mqttbytes::check`, and any error after it is fatal for the connection.

use bytes::{Buf, Bytes};

use super::connect::{parse_connect, take_message_property};
use super::decode::{fixed_header_len, read_pid, read_string, MqttCodec, Packet, Publish};
use super::properties::{id, read_properties};
use super::CodecError;
use crate::message::{Message, MessageProperties, QoS, SubscriptionOptions};
use crate::topic::validate_topic_name;

const PUBLISH_PROPERTIES: &[u8] = &[
    id::PAYLOAD_FORMAT,
    id::MESSAGE_EXPIRY,
    id::CONTENT_TYPE,
    id::RESPONSE_TOPIC,
    id::CORRELATION_DATA,
    id::TOPIC_ALIAS,
    id::USER_PROPERTY,
];
const ACK_PROPERTIES: &[u8] = &[id::REASON_STRING, id::USER_PROPERTY];
const SUBSCRIBE_PROPERTIES: &[u8] = &[id::SUBSCRIPTION_ID, id::USER_PROPERTY];
const UNSUBSCRIBE_PROPERTIES: &[u8] = &[id::USER_PROPERTY];
const DISCONNECT_PROPERTIES: &[u8] = &[
    id::SESSION_EXPIRY,
    id::REASON_STRING,
    id::USER_PROPERTY,
    id::SERVER_REFERENCE,
];

/// Largest Subscription Identifier (a variable byte integer, section 3.8.2.1.2).
const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

impl MqttCodec {
    /// Decodes one complete MQTT 5 frame; the fixed header was checked already.
    pub(super) fn decode_v5(&mut self, frame: Bytes) -> Result<Packet, CodecError> {
        let byte1 = frame[0];
        let packet_type = byte1 >> 4;
        // The frame becomes the body: no reference counted for a slice of it.
        let header_length = fixed_header_len(&frame);
        let mut body = frame;
        body.advance(header_length);
        match packet_type {
            1 => Ok(Packet::Connect(Box::new(parse_connect(body)?))),
            3 => self.decode_publish(byte1, body),
            4 => Ok(Packet::PubAck(read_ack(&mut body, "PUBACK")?.0)),
            5 => {
                let (pid, reason) = read_ack(&mut body, "PUBREC")?;
                Ok(Packet::PubRec(pid, reason))
            }
            6 => Ok(Packet::PubRel(read_ack(&mut body, "PUBREL")?.0)),
            7 => Ok(Packet::PubComp(read_ack(&mut body, "PUBCOMP")?.0)),
            8 => decode_subscribe(body),
            10 => decode_unsubscribe(body),
            12 if !body.is_empty() => Err(CodecError::Malformed5("PINGREQ", "has a body")),
            12 => Ok(Packet::PingReq),
            14 => decode_disconnect(body),
            other => Err(CodecError::InvalidPacketType(other)),
        }
    }

    fn decode_publish(&mut self, byte1: u8, mut body: Bytes) -> Result<Packet, CodecError> {
        let PublishHead {
            qos,
            dup,
            retain,
            mut topic,
            pid,
        } = read_publish_head(byte1, &mut body)?;
        let mut properties = MessageProperties::default();
        let (mut expiry, mut alias) = (None, None);
        for (identifier, value) in read_properties(&mut body, PUBLISH_PROPERTIES, "PUBLISH")? {
            if identifier == id::TOPIC_ALIAS {
                alias = Some(value.u16());
            } else {
                take_message_property(&mut properties, &mut expiry, identifier, value, "PUBLISH")?;
            }
        }
        if let Some(alias) = alias {
            // 0 [MQTT-3.3.2-8] and values above the maximum announced [MQTT-3.3.2-9] are
            // errors; 1 to the maximum are accepted [MQTT-3.3.2-12].
            if alias == 0 || alias > self.topic_alias_maximum {
                return Err(CodecError::TopicAliasInvalid(alias));
            }
            if topic.is_empty() {
                let known = self.aliases.as_ref().and_then(|a| a.get(&alias));
                topic = known.cloned().ok_or(CodecError::Protocol5(
                    "PUBLISH",
                    "empty topic with an alias that was never set",
                ))?;
            } else {
                validate_topic_name(&topic)?;
                self.aliases
                    .get_or_insert_with(Default::default)
                    .insert(alias, topic.clone());
            }
        }
        if topic.is_empty() {
            // Without a Topic Alias to stand for it (section 3.3.2.3.4).
            return Err(CodecError::Protocol5(
                "PUBLISH",
                "zero-length Topic Name without a Topic Alias",
            ));
        }
        validate_topic_name(&topic)?;
        let payload = body;
        if properties.payload_format == Some(1) && std::str::from_utf8(&payload).is_err() {
            // Checked here so that the Session can answer with 0x99 instead of forwarding it.
            return Ok(Packet::Publish(Publish {
                dup,
                pid,
                message: Message::new(topic, payload, qos, retain),
                payload_invalid: true,
            }));
        }
        // Boxed only when there is something to forward: no allocation for a bare PUBLISH.
        let properties = (!properties.is_empty()).then(|| Box::new(properties));
        let message = Message::new(topic, payload, qos, retain).with_properties(properties, expiry);
        Ok(Packet::Publish(Publish {
            dup,
            pid,
            message,
            payload_invalid: false,
        }))
    }
}

/// An MQTT 5 PUBLISH's fixed-header flags, topic name and packet id, either way.
pub(super) struct PublishHead {
    pub qos: QoS,
    pub dup: bool,
    pub retain: bool,
    /// As read: empty where a Topic Alias stands for it.
    pub topic: String,
    /// 0 at QoS 0.
    pub pid: u16,
}

/// Reads a PUBLISH's flags from `byte1` (QoS 3 and DUP at QoS 0 are errors) and its topic name
/// and packet id from `body`, which is left at the properties.
pub(super) fn read_publish_head(byte1: u8, body: &mut Bytes) -> Result<PublishHead, CodecError> {
    let qos = QoS::from_u8((byte1 >> 1) & 0x03)
        .ok_or(CodecError::Malformed5("PUBLISH", "QoS 3 [MQTT-3.3.1-4]"))?;
    let dup = byte1 & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(CodecError::Malformed5(
            "PUBLISH",
            "DUP set at QoS 0 [MQTT-3.3.1-2]",
        ));
    }
    let topic = read_string(body)?;
    let pid = if qos == QoS::AtMostOnce {
        0
    } else {
        read_pid(body)?
    };
    Ok(PublishHead {
        qos,
        dup,
        retain: byte1 & 0x01 != 0,
        topic,
        pid,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then an optional reason code and optional
/// properties (section 3.4.2.1: both may be omitted).
fn read_ack(body: &mut Bytes, packet: &'static str) -> Result<(u16, u8), CodecError> {
    let pid = read_pid(body)?;
    let reason = if body.has_remaining() {
        body.get_u8()
    } else {
        0
    };
    if body.has_remaining() {
        read_properties(body, ACK_PROPERTIES, packet)?;
    }
    if body.has_remaining() {
        return Err(CodecError::Malformed5(packet, "trailing bytes"));
    }
    Ok((pid, reason))
}

fn decode_subscribe(mut body: Bytes) -> Result<Packet, CodecError> {
    let pid = read_pid(&mut body)?;
    let mut subscription_id = None;
    for (identifier, value) in read_properties(&mut body, SUBSCRIBE_PROPERTIES, "SUBSCRIBE")? {
        if identifier == id::SUBSCRIPTION_ID {
            let value = value.u32();
            if value == 0 || value > MAX_SUBSCRIPTION_ID {
                return Err(CodecError::Protocol5(
                    "SUBSCRIBE",
                    "Subscription Identifier of 0 (section 3.8.2.1.2)",
                ));
            }
            subscription_id = Some(value);
        }
    }
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = read_string(&mut body)?;
        if !body.has_remaining() {
            return Err(CodecError::Malformed5(
                "SUBSCRIBE",
                "filter without subscription options",
            ));
        }
        let options = body.get_u8();
        // [MQTT-3.8.3-5] reserved bits 6 and 7 are 0; QoS 3 and Retain Handling 3 are errors.
        let qos = QoS::from_u8(options & 0x03);
        let retain_handling = (options >> 4) & 0x03;
        let (Some(qos), true, true) = (qos, options & 0xC0 == 0, retain_handling != 3) else {
            return Err(CodecError::Malformed5(
                "SUBSCRIBE",
                "reserved option bits, QoS 3 or Retain Handling 3 [MQTT-3.8.3-5]",
            ));
        };
        let no_local = options & 0x04 != 0;
        if no_local && filter.starts_with("$share/") {
            return Err(CodecError::Protocol5(
                "SUBSCRIBE",
                "No Local on a shared subscription [MQTT-3.8.3-4]",
            ));
        }
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
                id: subscription_id,
            },
        ));
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol5(
            "SUBSCRIBE",
            "no topic filter [MQTT-3.8.3-2]",
        ));
    }
    Ok(Packet::Subscribe { pid, filters })
}

fn decode_unsubscribe(mut body: Bytes) -> Result<Packet, CodecError> {
    let pid = read_pid(&mut body)?;
    read_properties(&mut body, UNSUBSCRIBE_PROPERTIES, "UNSUBSCRIBE")?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(read_string(&mut body)?);
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol5(
            "UNSUBSCRIBE",
            "no topic filter [MQTT-3.10.3-2]",
        ));
    }
    Ok(Packet::Unsubscribe { pid, filters })
}

/// DISCONNECT: a bare `e0 00` means reason 0 (section 3.14.2.1), which mqttbytes refuses.
fn decode_disconnect(mut body: Bytes) -> Result<Packet, CodecError> {
    if !body.has_remaining() {
        return Ok(Packet::Disconnect {
            reason: 0,
            session_expiry: None,
        });
    }
    let reason = body.get_u8();
    let mut session_expiry = None;
    if body.has_remaining() {
        for (identifier, value) in read_properties(&mut body, DISCONNECT_PROPERTIES, "DISCONNECT")?
        {
            if identifier == id::SESSION_EXPIRY {
                session_expiry = Some(value.u32());
            }
        }
    }
    if body.has_remaining() {
        return Err(CodecError::Malformed5("DISCONNECT", "trailing bytes"));
    }
    Ok(Packet::Disconnect {
        reason,
        session_expiry,
    })
}
