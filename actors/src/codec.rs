//! The client side of the wire. Decoding of server-to-client packets uses mqttbytes (v4 for MQTT
//! 3.1.1, v5 for MQTT 5, guarded against its known faults; an MQTT 5 PUBLISH is read by the
//! broker's own codec, since mqttbytes misreads one with several Subscription Identifiers) into
//! one version-neutral [`Incoming`]; encoding uses mqttbytes for 3.1.1 CONNECT, SUBSCRIBE and
//! UNSUBSCRIBE, this file for their MQTT 5 forms, and the broker's own infallible writers for
//! PUBLISH and acknowledgements.

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes::{v4, v5};
use switchboard_mqtt::codec::properties::{id, put_var_int, var_int_len, PropertyWriter};
use switchboard_mqtt::codec::{
    decode_server_publish_v5, read_oversized_head, reserve_for_frame, skip_rest, write_publish,
    write_publish_v5, CodecError, OversizedHead, OversizedPublish, PublishExtras, PublishHeader,
};
use switchboard_mqtt::{MessageProperties, ProtocolVersion, QoS};

use crate::queue::Outgoing;
use thiserror::Error;
use tokio_util::codec::Decoder;

/// Why the broker's byte stream could not be decoded; ends the link.
#[derive(Debug, Error)]
pub enum ClientCodecError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// mqttbytes rejected a packet.
    #[error("malformed packet from the broker: {0:?}")]
    Malformed(mqttbytes::Error),
    /// An MQTT 5 PUBLISH from the broker broke the spec.
    #[error("invalid PUBLISH from the broker: {0}")]
    Invalid(#[from] CodecError),
}

/// A server-to-client packet, either protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// CONNACK: session present and the return/reason code (0 accepted).
    ConnAck {
        /// Session present flag.
        session_present: bool,
        /// 3.1.1 return code or MQTT 5 reason code.
        code: u8,
        /// (5.0) The largest packet the broker accepts, if it says.
        maximum_packet_size: Option<u32>,
        /// (5.0) With 0x9C Use another server or 0x9D Server moved: where to go instead.
        server_reference: Option<String>,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// QoS.
        qos: QoS,
        /// RETAIN flag.
        retain: bool,
        /// Packet id (0 at QoS 0).
        pid: u16,
        /// MQTT 5 properties the broker forwarded.
        properties: Option<MessageProperties>,
        /// (5.0) What remained of its Message Expiry Interval, in seconds.
        expiry: Option<u32>,
    },
    /// PUBACK with its (MQTT 5) reason code.
    PubAck(u16, u8),
    /// PUBREC with its (MQTT 5) reason code.
    PubRec(u16, u8),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBACK: packet id and the QoS granted per filter (`None`: refused).
    SubAck(u16, Vec<Option<QoS>>),
    /// (3.1.1) A QoS 1 or 2 PUBLISH larger than the connection's `max_packet_size`: its head,
    /// read so that it can be acknowledged and dropped (3.1.1 has no refusal, and a closed
    /// connection would have the broker send it again, forever); the codec skips the rest as
    /// it arrives.
    OversizedPublish(OversizedPublish),
    /// UNSUBACK.
    UnsubAck,
    /// PINGRESP.
    PingResp,
    /// An MQTT 5 server DISCONNECT with its reason code, and its Server Reference (with 0x9C Use
    /// another server or 0x9D Server moved: where to go instead).
    Disconnect(u8, Option<String>),
}

/// Decodes the packets a broker sends, in the protocol of the connection.
#[derive(Debug, Clone)]
pub struct ClientCodec {
    max_packet_size: usize,
    protocol: ProtocolVersion,
    /// Bytes of a too-large PUBLISH still to come, dropped as they arrive.
    skipping: usize,
}

impl ClientCodec {
    /// A codec refusing packets larger than `max_packet_size`.
    pub fn new(max_packet_size: usize, protocol: ProtocolVersion) -> Self {
        ClientCodec {
            max_packet_size,
            protocol,
            skipping: 0,
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Incoming;
    type Error = ClientCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ClientCodecError> {
        if self.skipping > 0 && !skip_rest(&mut self.skipping, src) {
            return Ok(None);
        }
        let Some(&byte1) = src.first() else {
            return Ok(None);
        };
        // Frame first: once a whole frame is split off, any error is fatal for the link, never
        // "need more bytes" (mqttbytes v5 reports a PUBLISH without its property length as
        // InsufficientBytes after consuming the frame).
        let header = match mqttbytes::check(src.iter(), self.max_packet_size) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(more)) => {
                reserve_for_frame(src, more);
                return Ok(None);
            }
            Err(e @ mqttbytes::Error::PayloadSizeLimitExceeded(_)) if !self.protocol.is_v5() => {
                return match read_oversized_head(src, byte1) {
                    OversizedHead::Read { head, skip } => {
                        self.skipping = skip;
                        Ok(Some(Incoming::OversizedPublish(head)))
                    }
                    OversizedHead::NeedMore => Ok(None),
                    OversizedHead::NotSkippable => Err(ClientCodecError::Malformed(e)),
                };
            }
            Err(e) => return Err(ClientCodecError::Malformed(e)),
        };
        let mut frame = src.split_to(header.frame_length());
        if self.protocol.is_v5() {
            if frame[..] == [0xE0, 0x00] {
                // mqttbytes v5 refuses a bare DISCONNECT (reason 0x00 by omission).
                return Ok(Some(Incoming::Disconnect(0, None)));
            }
            if frame[0] >> 4 == 3 {
                return publish_v5(frame.freeze()).map(Some);
            }
            return match v5::read(&mut frame, self.max_packet_size) {
                Ok(packet) => from_v5(packet).map(Some),
                Err(e) => Err(ClientCodecError::Malformed(e)),
            };
        }
        match v4::read(&mut frame, self.max_packet_size) {
            Ok(packet) => from_v4(packet).map(Some),
            Err(e) => Err(ClientCodecError::Malformed(e)),
        }
    }
}

fn from_v4(packet: v4::Packet) -> Result<Incoming, ClientCodecError> {
    Ok(match packet {
        v4::Packet::ConnAck(ack) => Incoming::ConnAck {
            session_present: ack.session_present,
            code: ack.code as u8,
            maximum_packet_size: None,
            server_reference: None,
        },
        v4::Packet::Publish(p) => Incoming::Publish {
            topic: p.topic,
            payload: p.payload,
            qos: from_mqttbytes(p.qos),
            retain: p.retain,
            pid: p.pkid,
            properties: None,
            expiry: None,
        },
        v4::Packet::PubAck(a) => Incoming::PubAck(a.pkid, 0),
        v4::Packet::PubRec(a) => Incoming::PubRec(a.pkid, 0),
        v4::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v4::Packet::SubAck(a) => Incoming::SubAck(
            a.pkid,
            a.return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => Some(from_mqttbytes(q)),
                    v4::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        ),
        v4::Packet::UnsubAck(_) => Incoming::UnsubAck,
        v4::Packet::PingResp => Incoming::PingResp,
        _ => {
            return Err(ClientCodecError::Malformed(
                mqttbytes::Error::MalformedPacket,
            ))
        }
    })
}

/// An MQTT 5 PUBLISH frame from the broker, read by the broker's own codec (see the module doc).
fn publish_v5(frame: Bytes) -> Result<Incoming, ClientCodecError> {
    let publish = decode_server_publish_v5(frame)?;
    if let Some(alias) = publish.topic_alias {
        // This client announces no Topic Alias Maximum, so it allows none [MQTT-3.3.2-10].
        return Err(CodecError::TopicAliasInvalid(alias).into());
    }
    let properties = (!publish.properties.is_empty()).then_some(publish.properties);
    Ok(Incoming::Publish {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        pid: publish.pid,
        properties,
        expiry: publish.expiry,
    })
}

fn from_v5(packet: v5::Packet) -> Result<Incoming, ClientCodecError> {
    Ok(match packet {
        v5::Packet::ConnAck(ack) => Incoming::ConnAck {
            session_present: ack.session_present,
            code: ack.code as u8,
            maximum_packet_size: ack.properties.as_ref().and_then(|p| p.max_packet_size),
            server_reference: ack.properties.and_then(|p| p.server_reference),
        },
        // A PUBLISH never comes here: `publish_v5` reads it.
        v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid, a.reason as u8),
        v5::Packet::PubRec(a) => Incoming::PubRec(a.pkid, a.reason as u8),
        v5::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v5::Packet::SubAck(a) => Incoming::SubAck(
            a.pkid,
            a.return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::QoS0 => Some(QoS::AtMostOnce),
                    v5::SubscribeReasonCode::QoS1 => Some(QoS::AtLeastOnce),
                    v5::SubscribeReasonCode::QoS2 => Some(QoS::ExactlyOnce),
                    _ => None,
                })
                .collect(),
        ),
        v5::Packet::UnsubAck(_) => Incoming::UnsubAck,
        v5::Packet::PingResp => Incoming::PingResp,
        v5::Packet::Disconnect(d) => Incoming::Disconnect(
            d.reason_code as u8,
            d.properties.and_then(|p| p.server_reference),
        ),
        _ => {
            return Err(ClientCodecError::Malformed(
                mqttbytes::Error::MalformedPacket,
            ))
        }
    })
}

/// What an MQTT 5 CONNECT carries besides the 3.1.1 fields.
#[derive(Debug, Clone, Default)]
pub struct Connect5<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
    /// Clean Start.
    pub clean_start: bool,
    /// Session Expiry Interval.
    pub session_expiry: u32,
    /// Largest packet the client accepts.
    pub maximum_packet_size: u32,
    /// User name and password.
    pub credentials: Option<(&'a str, &'a str)>,
    /// Will: topic, payload, QoS, retain.
    pub will: Option<(&'a str, &'a [u8], QoS, bool)>,
}

fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// Sets the bridge bit (0x80) in the protocol level of the MQTT 3.1.1 CONNECT at the start of
/// `out`: after the fixed header's first byte, the Remaining Length and the protocol name
/// (`00 04 M Q T T`).
pub fn set_bridge_bit(out: &mut [u8]) {
    let length_bytes = out
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(0, |at| at + 1);
    let level = 1 + length_bytes + 6;
    if let Some(byte) = out.get_mut(level) {
        *byte |= 0x80;
    }
}

/// Writes an MQTT 5 CONNECT (section 3.1).
pub fn write_connect_v5(out: &mut BytesMut, c: &Connect5<'_>) {
    let mut props = PropertyWriter::new();
    if c.session_expiry > 0 {
        props.u32(id::SESSION_EXPIRY, c.session_expiry);
    }
    props.u32(id::MAXIMUM_PACKET_SIZE, c.maximum_packet_size);
    let mut body = BytesMut::new();
    put_binary(&mut body, b"MQTT");
    body.put_u8(5);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some((_, _, qos, retain)) = c.will {
        flags |= 0x04 | ((qos as u8) << 3) | (u8::from(retain) << 5);
    }
    if let Some((_, password)) = c.credentials {
        flags |= 0x80;
        if !password.is_empty() {
            flags |= 0x40;
        }
    }
    body.put_u8(flags);
    body.put_u16(c.keep_alive);
    props.finish(&mut body);
    put_binary(&mut body, c.client_id.as_bytes());
    if let Some((topic, payload, _, _)) = c.will {
        body.put_u8(0); // no will properties
        put_binary(&mut body, topic.as_bytes());
        put_binary(&mut body, payload);
    }
    if let Some((user, password)) = c.credentials {
        put_binary(&mut body, user.as_bytes());
        if !password.is_empty() {
            put_binary(&mut body, password.as_bytes());
        }
    }
    out.put_u8(0x10);
    put_var_int(out, body.len());
    out.put_slice(&body);
}

/// The subscription options byte of an MQTT 5 SUBSCRIBE (section 3.8.3.1), QoS aside: with
/// `bridge`, No Local and Retain As Published (the broker neither sends this client its own
/// messages back nor clears RETAIN on what it forwards); with `skip_retained`, Retain Handling 2
/// (no retained messages when subscribing).
pub fn subscription_options(bridge: bool, skip_retained: bool) -> u8 {
    let bridge = if bridge { 0x04 | 0x08 } else { 0 };
    let retain_handling = if skip_retained { 0x20 } else { 0 };
    bridge | retain_handling
}

/// Writes an MQTT 5 SUBSCRIBE (section 3.8) of (filter, QoS) pairs, each with the subscription
/// `options` of [`subscription_options`].
pub fn write_subscribe_v5(out: &mut BytesMut, pid: u16, filters: &[(String, QoS)], options: u8) {
    let len = 3 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    out.reserve(1 + var_int_len(len) + len);
    out.put_u8(0x82);
    put_var_int(out, len);
    out.put_u16(pid);
    out.put_u8(0);
    for (filter, qos) in filters {
        put_binary(out, filter.as_bytes());
        out.put_u8(*qos as u8 | options);
    }
}

/// Writes an MQTT 5 UNSUBSCRIBE (section 3.10).
pub fn write_unsubscribe_v5(out: &mut BytesMut, pid: u16, filters: &[String]) {
    let len = 3 + filters.iter().map(|f| 2 + f.len()).sum::<usize>();
    out.put_u8(0xA2);
    put_var_int(out, len);
    out.put_u16(pid);
    out.put_u8(0);
    for filter in filters {
        put_binary(out, filter.as_bytes());
    }
}

/// Converts between the broker's QoS and mqttbytes'.
/// Encodes a queued message as PUBLISH for the broker, in the connection's protocol (MQTT 5:
/// with its properties).
pub(crate) fn write_publish_of(
    out: &mut BytesMut,
    protocol: ProtocolVersion,
    message: &Outgoing,
    pid: u16,
    dup: bool,
) {
    let header = PublishHeader {
        qos: message.qos,
        retain: message.retain,
        dup,
        pid,
    };
    if protocol.is_v5() {
        let extras = PublishExtras {
            properties: message.properties.as_deref(),
            expiry: message
                .expires_at
                .and_then(|_| message.remaining_expiry(std::time::Instant::now())),
            ..PublishExtras::default()
        };
        write_publish_v5(out, &message.topic, &message.payload, header, &extras, None);
    } else {
        write_publish(out, &message.topic, &message.payload, header);
    }
}

pub(crate) fn to_mqttbytes(qos: QoS) -> mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

/// Converts mqttbytes' QoS to the broker's.
pub(crate) fn from_mqttbytes(qos: mqttbytes::QoS) -> QoS {
    match qos {
        mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
