//! An application message as it travels between nodes: its QoS and RETAIN flags, topic, MQTT 5
//! properties (a bit for each present), what remains of its expiry, then the payload.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{get_bytes, get_str, get_u32, get_u8, put_bytes, put_str};
use super::{EnvelopeError, KIND_MESSAGE};
use crate::message::{MessageProperties, QoS};

const HAS_PAYLOAD_FORMAT: u8 = 1;
const HAS_CONTENT_TYPE: u8 = 2;
const HAS_RESPONSE_TOPIC: u8 = 4;
const HAS_CORRELATION_DATA: u8 = 8;
const HAS_USER_PROPERTIES: u8 = 16;
const HAS_EXPIRY: u8 = 32;

/// An application message going from one node to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMessage {
    /// The MQTT topic (the subject it travels on may be escaped, or the broadcast subject).
    pub topic: String,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether it is retained (every node stores it).
    pub retain: bool,
    /// MQTT 5 properties, forwarded unaltered.
    pub properties: Option<MessageProperties>,
    /// (5.0) What remained of its Message Expiry Interval when it was sent, in seconds
    /// [MQTT-3.3.2-6].
    pub expiry: Option<u32>,
    /// The payload.
    pub payload: Bytes,
}

impl ClusterMessage {
    /// A retained message of this broker's as it goes to the other nodes, its expiry what
    /// remains of it at `now` [MQTT-3.3.2-6].
    pub fn retained(message: &crate::message::Message, now: std::time::Instant) -> Self {
        ClusterMessage {
            topic: message.topic.clone(),
            qos: message.qos,
            retain: true,
            properties: message.properties.as_deref().cloned(),
            expiry: message.remaining_expiry(now),
            payload: message.payload.clone(),
        }
    }
}

/// Appends `message` after the version byte: its kind, flags, topic, properties, payload.
pub(super) fn encode_message(message: &ClusterMessage, out: &mut BytesMut) {
    out.put_u8(KIND_MESSAGE);
    out.put_u8(message.qos as u8 | if message.retain { 4 } else { 0 });
    put_str(out, &message.topic);
    let p = message.properties.as_ref();
    let mut present = if message.expiry.is_some() {
        HAS_EXPIRY
    } else {
        0
    };
    if let Some(p) = p {
        for (set, bit) in [
            (p.payload_format.is_some(), HAS_PAYLOAD_FORMAT),
            (p.content_type.is_some(), HAS_CONTENT_TYPE),
            (p.response_topic.is_some(), HAS_RESPONSE_TOPIC),
            (p.correlation_data.is_some(), HAS_CORRELATION_DATA),
            (!p.user_properties.is_empty(), HAS_USER_PROPERTIES),
        ] {
            if set {
                present |= bit;
            }
        }
    }
    out.put_u8(present);
    if let Some(expiry) = message.expiry {
        out.put_u32(expiry);
    }
    if let Some(p) = p {
        if let Some(format) = p.payload_format {
            out.put_u8(format);
        }
        for s in [&p.content_type, &p.response_topic].into_iter().flatten() {
            put_str(out, s);
        }
        if let Some(data) = &p.correlation_data {
            put_bytes(out, data);
        }
        if !p.user_properties.is_empty() {
            out.put_u32(p.user_properties.len() as u32);
            for (key, value) in &p.user_properties {
                put_str(out, key);
                put_str(out, value);
            }
        }
    }
    out.put_slice(&message.payload);
}

/// Reads a message from what follows its kind byte.
pub(super) fn decode_message(mut bytes: Bytes) -> Result<ClusterMessage, EnvelopeError> {
    let flags = get_u8(&mut bytes)?;
    let qos = match flags & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        other => return Err(EnvelopeError::QoS(other)),
    };
    let retain = flags & 4 != 0;
    let topic = get_str(&mut bytes)?;
    let present = get_u8(&mut bytes)?;
    let expiry = match present & HAS_EXPIRY {
        0 => None,
        _ => Some(get_u32(&mut bytes)?),
    };
    let properties = if present & !HAS_EXPIRY == 0 {
        None
    } else {
        let mut p = MessageProperties::default();
        if present & HAS_PAYLOAD_FORMAT != 0 {
            p.payload_format = Some(get_u8(&mut bytes)?);
        }
        if present & HAS_CONTENT_TYPE != 0 {
            p.content_type = Some(get_str(&mut bytes)?);
        }
        if present & HAS_RESPONSE_TOPIC != 0 {
            p.response_topic = Some(get_str(&mut bytes)?);
        }
        if present & HAS_CORRELATION_DATA != 0 {
            p.correlation_data = Some(get_bytes(&mut bytes)?);
        }
        if present & HAS_USER_PROPERTIES != 0 {
            let count = get_u32(&mut bytes)?;
            for _ in 0..count {
                let key = get_str(&mut bytes)?;
                let value = get_str(&mut bytes)?;
                p.user_properties.push((key, value));
            }
        }
        Some(p)
    };
    Ok(ClusterMessage {
        topic,
        qos,
        retain,
        properties,
        expiry,
        payload: bytes,
    })
}
