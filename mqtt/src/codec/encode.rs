//! Encoding of server-to-client packets straight into a Session's output buffer.
//!
//! These writers are infallible: sizes are bounded by the inbound maximum packet size, which is
//! far below the 268,435,455 bytes a remaining length can express.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::put_var_int as put_remaining_length;
use crate::message::{ConnectReturnCode, QoS};

/// The least a write allocates when the output buffer has no room: a burst of small packets
/// (32 PUBACKs, a window of 64-byte PUBLISHes) then grows it once or twice, not once per
/// doubling from a few bytes.
pub const MIN_OUTPUT_ALLOCATION: usize = 1024;

/// Makes room for `n` more bytes in `out`, allocating at least [`MIN_OUTPUT_ALLOCATION`] when
/// it has to allocate.
pub fn make_room(out: &mut BytesMut, n: usize) {
    if out.capacity() - out.len() < n {
        out.reserve(n.max(MIN_OUTPUT_ALLOCATION));
    }
}

/// Parameters of one outbound PUBLISH.
#[derive(Debug, Clone, Copy)]
pub struct PublishHeader {
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag (re-delivery).
    pub dup: bool,
    /// Packet identifier; ignored at QoS 0.
    pub pid: u16,
}

impl PublishHeader {
    /// The first byte of the PUBLISH: type, DUP (never at QoS 0), QoS, RETAIN.
    pub fn byte1(&self) -> u8 {
        let has_pid = self.qos != QoS::AtMostOnce;
        0x30 | (u8::from(self.dup && has_pid) << 3)
            | ((self.qos as u8) << 1)
            | u8::from(self.retain)
    }
}

/// Writes a PUBLISH.
pub fn write_publish(out: &mut BytesMut, topic: &str, payload: &[u8], header: PublishHeader) {
    let has_pid = header.qos != QoS::AtMostOnce;
    let remaining = 2 + topic.len() + if has_pid { 2 } else { 0 } + payload.len();
    make_room(out, remaining + 5);
    out.put_u8(header.byte1());
    put_remaining_length(out, remaining);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if has_pid {
        out.put_u16(header.pid);
    }
    out.put_slice(payload);
}

/// The QoS 0, non-retained PUBLISH frame of a message.
pub fn encode_publish_frame(topic: &str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    write_publish(
        &mut out,
        topic,
        payload,
        PublishHeader {
            qos: QoS::AtMostOnce,
            retain: false,
            dup: false,
            pid: 0,
        },
    );
    out.freeze()
}

/// Writes a CONNACK.
pub fn write_connack(out: &mut BytesMut, session_present: bool, code: ConnectReturnCode) {
    out.put_slice(&[0x20, 0x02, u8::from(session_present), code as u8]);
}

/// The four acknowledgements that carry only a packet identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL (fixed header flags 0010 `[MQTT-3.6.1-1]`).
    PubRel,
    /// PUBCOMP.
    PubComp,
    /// UNSUBACK.
    UnsubAck,
}

/// Writes PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK.
pub fn write_ack(out: &mut BytesMut, ack: Ack, pid: u16) {
    make_room(out, 4);
    out.put_u8(ack.byte1());
    out.put_u8(2);
    out.put_u16(pid);
}

impl Ack {
    /// The first byte of the packet.
    pub fn byte1(self) -> u8 {
        match self {
            Ack::PubAck => 0x40,
            Ack::PubRec => 0x50,
            Ack::PubRel => 0x62,
            Ack::PubComp => 0x70,
            Ack::UnsubAck => 0xB0,
        }
    }
}

/// SUBACK return code for a refused filter.
pub const SUBACK_FAILURE: u8 = 0x80;

/// Writes a SUBACK with one return code per requested filter, in order `[MQTT-3.8.4-5]`.
pub fn write_suback(out: &mut BytesMut, pid: u16, codes: &[u8]) {
    out.put_u8(0x90);
    put_remaining_length(out, 2 + codes.len());
    out.put_u16(pid);
    out.put_slice(codes);
}

/// Writes a PINGRESP.
pub fn write_pingresp(out: &mut BytesMut) {
    out.put_slice(&[0xD0, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_mqttbytes() {
        let mut out = BytesMut::new();
        let payload = vec![7u8; 300];
        write_publish(
            &mut out,
            "a/b",
            &payload,
            PublishHeader {
                qos: QoS::ExactlyOnce,
                retain: true,
                dup: true,
                pid: 513,
            },
        );
        let Ok(mqttbytes::v4::Packet::Publish(p)) = mqttbytes::v4::read(&mut out, 4096) else {
            panic!("mqttbytes could not read our PUBLISH")
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, p.dup, p.retain),
            ("a/b", 513, true, true)
        );
        assert_eq!(p.qos, mqttbytes::QoS::ExactlyOnce);
        assert_eq!(&p.payload[..], &payload[..]);
    }

    #[test]
    fn small_packets() {
        let mut out = BytesMut::new();
        write_connack(&mut out, true, ConnectReturnCode::NotAuthorized);
        write_ack(&mut out, Ack::PubRel, 0x0102);
        write_suback(&mut out, 9, &[0, 2, SUBACK_FAILURE]);
        write_pingresp(&mut out);
        assert_eq!(
            &out[..],
            &[0x20, 2, 1, 5, 0x62, 2, 1, 2, 0x90, 5, 0, 9, 0, 2, 0x80, 0xD0, 0][..]
        );
    }
}
