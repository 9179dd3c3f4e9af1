//! Framing and decoding of client-to-server packets.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::connect::{parse_connect, Connect};
use super::oversized::{read_oversized_head, skip_rest, OversizedHead, OversizedPublish};
use super::CodecError;
use crate::message::{Message, ProtocolVersion, QoS, SubscriptionOptions};
use crate::topic::validate_topic_name;

/// A PUBLISH from a client.
#[derive(Debug)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// Packet identifier (0 for QoS 0).
    pub pid: u16,
    /// The application message; for QoS 0 non-retained messages it carries the inbound frame.
    pub message: Message,
    /// MQTT 5: the Payload Format Indicator says UTF-8 and the payload is not; the Session
    /// refuses the message with reason code 0x99 instead of forwarding it.
    pub payload_invalid: bool,
}

/// A client-to-server packet, validated.
#[derive(Debug)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK with its packet id.
    PubAck(u16),
    /// PUBREC with its packet id and (MQTT 5) reason code; 0x80 and above end the QoS 2 flow.
    PubRec(u16, u8),
    /// PUBREL with its packet id.
    PubRel(u16),
    /// PUBCOMP with its packet id.
    PubComp(u16),
    /// SUBSCRIBE: packet id and (filter, options) pairs, at least one. Filters are not yet
    /// validated: a bad filter is refused in the SUBACK, not by closing the connection.
    Subscribe {
        /// Packet identifier.
        pid: u16,
        /// Requested filters with their options (and the packet's Subscription Identifier).
        filters: Vec<(String, SubscriptionOptions)>,
    },
    /// UNSUBSCRIBE: packet id and filters, at least one.
    Unsubscribe {
        /// Packet identifier.
        pid: u16,
        /// Filters to remove.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// (3.1.1) A QoS 1 or 2 PUBLISH larger than the maximum packet size: its head, read so
    /// that it can be acknowledged and dropped; the codec skips the rest as it arrives.
    OversizedPublish(OversizedPublish),
    /// DISCONNECT, with its (MQTT 5) reason code and new Session Expiry Interval.
    Disconnect {
        /// Reason code (0 for MQTT 3.1.1): 0x04 asks for the will to be published.
        reason: u8,
        /// A new Session Expiry Interval, if the client sent one.
        session_expiry: Option<u32>,
    },
}

impl Packet {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::Publish(_) | Packet::OversizedPublish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(..) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe { .. } => "SUBSCRIBE",
            Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
            Packet::PingReq => "PINGREQ",
            Packet::Disconnect { .. } => "DISCONNECT",
        }
    }
}

/// Decoder of client-to-server MQTT 3.1, 3.1.1 and 5.0 packets, for `FramedRead`. It learns
/// the protocol from the CONNECT, and resolves inbound MQTT 5 topic aliases.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    max_packet_size: usize,
    /// No packet decoded yet: only CONNECT is acceptable.
    first_packet: bool,
    /// Protocol of the CONNECT, once decoded.
    protocol: ProtocolVersion,
    /// Highest inbound Topic Alias the broker accepts (announced in CONNACK).
    pub(super) topic_alias_maximum: u16,
    /// Inbound topic aliases of this connection `[MQTT-3.3.2-12]`, allocated on first use.
    // Boxed on purpose: a HashMap is 48 bytes inline and most connections never use one.
    #[allow(clippy::box_collection)]
    pub(super) aliases: Option<Box<HashMap<u16, String>>>,
    /// Packets decoded since the read buffer last ran dry.
    burst: u32,
    /// Bytes of a too-large PUBLISH still to come, dropped as they arrive
    /// ([`Packet::OversizedPublish`]).
    skipping: usize,
}

/// The most room reserved at once for the rest of a partly read packet. A header announces
/// up to `max_packet_size` (1 MiB by default, 256 MiB at most); the buffer grows towards it as
/// the bytes come, doubling, instead of taking it all on the header's word.
pub const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Makes room in `src` for the next read of a packet still `more` bytes short: all of it up to
/// [`MAX_RESERVE_AHEAD`]. Used by the broker's codec and the device client's.
pub fn reserve_for_frame(src: &mut BytesMut, more: usize) {
    src.reserve(more.min(MAX_RESERVE_AHEAD));
}

/// Least room for the next read into an empty buffer (frames split off it shrink what is left).
const MIN_READ_ROOM: usize = 256;
/// A connection that delivers this many packets per read gets a [`BURST_READ_BUFFER`].
const BURST_PACKETS: u32 = 4;
/// Read buffer of a busy connection: fewer, larger reads. The Session's reader
/// (`src/session/reader.rs`) reads straight into a buffer this large and holds none otherwise.
pub const BURST_READ_BUFFER: usize = 16 * 1024;

impl MqttCodec {
    /// A codec that refuses packets whose remaining length exceeds `max_packet_size`.
    pub fn new(max_packet_size: usize) -> Self {
        MqttCodec {
            max_packet_size,
            first_packet: true,
            protocol: ProtocolVersion::V3_1_1,
            topic_alias_maximum: 0,
            aliases: None,
            burst: 0,
            skipping: 0,
        }
    }

    /// Accepts inbound topic aliases 1 to `maximum` from MQTT 5 clients.
    pub fn with_topic_alias_maximum(mut self, maximum: u16) -> Self {
        self.topic_alias_maximum = maximum;
        self
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if self.skipping > 0 && !skip_rest(&mut self.skipping, src) {
            return Ok(None);
        }
        // Judge the first byte as soon as it arrives, so garbage is refused without waiting for
        // the length it seems to announce.
        let Some(&byte1) = src.first() else {
            // The buffer is empty, and the next read goes into what is left of it: leave room for
            // a whole small packet, or a PUBLISH would come in two reads.
            if src.capacity() < MIN_READ_ROOM {
                src.reserve(MIN_READ_ROOM);
            }
            return Ok(None);
        };
        check_first_byte(byte1, self.first_packet, self.protocol)?;
        let header = match mqttbytes::check(src.iter(), self.max_packet_size) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(more)) => {
                reserve_for_frame(src, more);
                return Ok(None);
            }
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
                if !self.first_packet && !self.protocol.is_v5() {
                    match read_oversized_head(src, byte1) {
                        OversizedHead::Read { head, skip } => {
                            self.skipping = skip;
                            return Ok(Some(Packet::OversizedPublish(head)));
                        }
                        OversizedHead::NeedMore => return Ok(None),
                        OversizedHead::NotSkippable => {}
                    }
                }
                let too_large = CodecError::PacketTooLarge {
                    size,
                    max: self.max_packet_size,
                };
                // An MQTT 5 CONNECT too large is answered with CONNACK 0x95 (section 4.13):
                // told by its protocol name and level, when the first read holds them.
                return Err(if self.first_packet && is_mqtt5_connect(src) {
                    CodecError::Connect5(Box::new(too_large))
                } else {
                    too_large
                });
            }
            Err(e) => return Err(CodecError::Malformed(e)),
        };
        let frame_length = header.frame_length();
        let packet = if self.protocol.is_v5() {
            let frame = src.split_to(frame_length).freeze();
            self.decode_v5(frame)
        } else {
            decode_frame(src, frame_length)
        };
        self.first_packet = false;
        self.burst += 1;
        if src.is_empty() {
            // The frames split off share the buffer's allocation; the next read needs a new one.
            // Size it by how busy the connection is.
            if self.burst >= BURST_PACKETS {
                src.reserve(BURST_READ_BUFFER);
            }
            self.burst = 0;
        }
        let packet = packet?;
        if let Packet::Connect(connect) = &packet {
            self.protocol = connect.protocol;
        }
        Ok(Some(packet))
    }
}

/// Validates packet type and fixed header flags `[MQTT-2.2.2-2]`, and that the first packet is a
/// CONNECT `[MQTT-3.1.0-1]`.
fn check_first_byte(
    byte1: u8,
    first_packet: bool,
    protocol: ProtocolVersion,
) -> Result<(), CodecError> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    match packet_type {
        // AUTH exists in MQTT 5, but only within an extended authentication, which the broker
        // never starts (it refuses every Authentication Method in CONNACK).
        // Its reserved flags are judged first: set, the packet is malformed [MQTT-3.15.1-1].
        15 if protocol.is_v5() && !first_packet && flags != 0 => {
            return Err(CodecError::InvalidFlags { packet_type, flags })
        }
        15 if protocol.is_v5() && !first_packet => {
            return Err(CodecError::Protocol5(
                "AUTH",
                "no extended authentication in progress (section 4.12)",
            ))
        }
        0 | 15 => return Err(CodecError::InvalidPacketType(packet_type)),
        2 | 9 | 11 | 13 => return Err(CodecError::UnexpectedPacketType(packet_type)),
        _ => {}
    }
    if first_packet && packet_type != 1 {
        return Err(CodecError::Protocol(
            "first packet must be CONNECT [MQTT-3.1.0-1]",
        ));
    }
    let expected_flags = match packet_type {
        3 => flags, // PUBLISH: checked with the frame
        // MQTT 3.1 gave these a QoS 1 header whose DUP flag a client sets on sending one
        // again (a PUBREL after reconnecting); 3.1.1 fixed the flags at 0010.
        6 | 8 | 10 if protocol == ProtocolVersion::V3_1 && flags == 0b1010 => flags,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(CodecError::InvalidFlags { packet_type, flags });
    }
    Ok(())
}

/// Whether `src`, a CONNECT whose fixed header has been read whole, starts its variable header
/// with protocol name `MQTT` and level 5.
fn is_mqtt5_connect(src: &[u8]) -> bool {
    let header = fixed_header_len(src);
    src.get(header..header + 7) == Some(&[0, 4, b'M', b'Q', b'T', b'T', 5][..])
}

/// Length of the fixed header (type byte plus remaining-length bytes) of a complete frame.
pub(super) fn fixed_header_len(frame: &[u8]) -> usize {
    1 + frame[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1)
}

/// Decodes the complete MQTT 3.1.1 frame of `frame_length` bytes at the start of `src` and takes
/// it off. `mqttbytes::check` succeeded, so `src` holds at least those bytes, and they hold a
/// whole fixed header.
///
/// An acknowledgement is read where it lies and a PUBLISH's topic and packet id are read from
/// its frame in place: splitting a `Bytes` off a shared buffer counts a reference to the
/// buffer's allocation, an atomic operation, and dropping it another. A PUBLISH took eight of
/// them and a PUBACK four, now two and none (1-3% less CPU per message on pipelined pairs,
/// none measurable at window 1: docs/benchmarks.md, "Frames read in place").
fn decode_frame(src: &mut BytesMut, frame_length: usize) -> Result<Packet, CodecError> {
    let packet_type = src[0] >> 4;
    let header_length = fixed_header_len(src);
    if let 4..=7 = packet_type {
        let pid = read_ack(src.get(header_length..frame_length).unwrap_or_default());
        src.advance(frame_length);
        return pid.map(|pid| match packet_type {
            4 => Packet::PubAck(pid),
            5 => Packet::PubRec(pid, 0),
            6 => Packet::PubRel(pid),
            _ => Packet::PubComp(pid),
        });
    }
    let frame = src.split_to(frame_length).freeze();
    if packet_type == 3 {
        return decode_publish(frame, header_length);
    }
    let body = frame.slice(header_length..);
    match packet_type {
        1 => Ok(Packet::Connect(Box::new(parse_connect(body)?))),
        8 => decode_subscribe(body),
        10 => decode_unsubscribe(body),
        12 | 14 if !body.is_empty() => Err(CodecError::Protocol("PINGREQ/DISCONNECT with a body")),
        12 => Ok(Packet::PingReq),
        14 => Ok(Packet::Disconnect {
            reason: 0,
            session_expiry: None,
        }),
        other => Err(CodecError::InvalidPacketType(other)),
    }
}

/// An MQTT 3.1.1 PUBLISH from its whole `frame`, whose fixed header is `header_length` bytes.
/// Its errors are mqttbytes' (`v4::Publish::read`, whose reading this is, without a `Bytes`
/// split off for the topic): a frame too short for the topic's length or the packet id is
/// `MalformedPacket`, a topic longer than the frame `BoundaryCrossed`.
fn decode_publish(frame: Bytes, header_length: usize) -> Result<Packet, CodecError> {
    let byte1 = frame[0];
    let qos = match (byte1 >> 1) & 0x03 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(CodecError::Protocol("PUBLISH with QoS 3 [MQTT-3.3.1-4]")),
    };
    let dup = byte1 & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(CodecError::Protocol(
            "DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]",
        ));
    }
    let retain = byte1 & 0x01 != 0;
    let malformed = CodecError::Malformed;
    let body = frame.get(header_length..).unwrap_or_default();
    let Some(&[high, low]) = body.get(..2) else {
        return Err(malformed(mqttbytes::Error::MalformedPacket));
    };
    let topic_length = usize::from(u16::from_be_bytes([high, low]));
    let topic_end = 2 + topic_length;
    let topic = body
        .get(2..topic_end)
        .ok_or(malformed(mqttbytes::Error::BoundaryCrossed(topic_length)))?;
    let topic = std::str::from_utf8(topic).map_err(|_| CodecError::InvalidUtf8)?;
    let (pid, payload_start) = if qos == QoS::AtMostOnce {
        (0, topic_end)
    } else {
        let Some(&[high, low]) = body.get(topic_end..topic_end + 2) else {
            return Err(malformed(mqttbytes::Error::MalformedPacket));
        };
        match u16::from_be_bytes([high, low]) {
            0 => {
                return Err(CodecError::Protocol(
                    "QoS > 0 PUBLISH with packet identifier 0 [MQTT-2.3.1-1]",
                ))
            }
            pid => (pid, topic_end + 2),
        }
    };
    validate_topic_name(topic)?;
    let topic = topic.to_owned();
    let payload_start = header_length + payload_start;
    let message = if qos == QoS::AtMostOnce && !retain {
        Message::with_qos0_frame(topic, frame.slice(payload_start..), frame)
    } else {
        // The frame becomes the payload: no reference counted for it.
        let mut payload = frame;
        payload.advance(payload_start);
        Message::new(topic, payload, qos, retain)
    };
    Ok(Packet::Publish(Publish {
        dup,
        pid,
        message,
        payload_invalid: false,
    }))
}

/// The packet id of an MQTT 3.1.1 PUBACK, PUBREC, PUBREL or PUBCOMP, from its `body`.
fn read_ack(body: &[u8]) -> Result<u16, CodecError> {
    let &[high, low] = body else {
        return Err(CodecError::Protocol(
            "acknowledgement with remaining length other than 2",
        ));
    };
    match u16::from_be_bytes([high, low]) {
        0 => Err(CodecError::Protocol("packet identifier 0 [MQTT-2.3.1-1]")),
        pid => Ok(pid),
    }
}

pub(super) fn read_pid(body: &mut Bytes) -> Result<u16, CodecError> {
    if body.remaining() < 2 {
        return Err(CodecError::Protocol(
            "packet truncated before packet identifier",
        ));
    }
    match body.get_u16() {
        0 => Err(CodecError::Protocol("packet identifier 0 [MQTT-2.3.1-1]")),
        pid => Ok(pid),
    }
}

fn decode_subscribe(mut body: Bytes) -> Result<Packet, CodecError> {
    let pid = read_pid(&mut body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = read_string(&mut body)?;
        if !body.has_remaining() {
            return Err(CodecError::Protocol(
                "SUBSCRIBE filter without requested QoS",
            ));
        }
        let options = body.get_u8();
        let qos = match (options & 0xFC, QoS::from_u8(options & 0x03)) {
            (0, Some(qos)) => qos,
            _ => {
                return Err(CodecError::Protocol(
                    "SUBSCRIBE reserved bits set or QoS 3 [MQTT-3-8.3-4]",
                ))
            }
        };
        filters.push((filter, SubscriptionOptions::qos(qos)));
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol(
            "SUBSCRIBE without a filter [MQTT-3.8.3-3]",
        ));
    }
    Ok(Packet::Subscribe { pid, filters })
}

fn decode_unsubscribe(mut body: Bytes) -> Result<Packet, CodecError> {
    let pid = read_pid(&mut body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(read_string(&mut body)?);
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol(
            "UNSUBSCRIBE without a filter [MQTT-3.10.3-2]",
        ));
    }
    Ok(Packet::Unsubscribe { pid, filters })
}

/// Reads a length-prefixed binary field.
pub(super) fn read_binary(body: &mut Bytes) -> Result<Bytes, CodecError> {
    let length = read_field_length(body)?;
    Ok(body.split_to(length))
}

/// Reads a field's two-byte length; `body` holds that many bytes after it.
fn read_field_length(body: &mut Bytes) -> Result<usize, CodecError> {
    // A packet that ends inside a field cannot be parsed: malformed (MQTT 5: 0x81).
    if body.remaining() < 2 {
        return Err(CodecError::Malformed5(
            "packet",
            "field truncated before its length",
        ));
    }
    let len = body.get_u16() as usize;
    if body.remaining() < len {
        return Err(CodecError::Malformed5(
            "packet",
            "field longer than the packet",
        ));
    }
    Ok(len)
}

/// Reads a length-prefixed UTF-8 string: well-formed, no U+0000 `[MQTT-1.5.3-1]` `[MQTT-1.5.3-2]`.
/// Read where it lies: no `Bytes` split off for it (a reference counted up and down).
pub(super) fn read_string(body: &mut Bytes) -> Result<String, CodecError> {
    let length = read_field_length(body)?;
    let text = std::str::from_utf8(&body[..length]).map_err(|_| CodecError::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(CodecError::InvalidUtf8);
    }
    let text = text.to_owned();
    body.advance(length);
    Ok(text)
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
