//! A QoS 1 or 2 PUBLISH over MQTT 3.1.1 larger than the maximum packet size: its head (topic
//! and packet id) is read so that the receiver can acknowledge and drop it, and the rest is
//! skipped as it arrives, never held. Closing the connection instead would have a sender that
//! queues send it again after each reconnect [MQTT-4.4.0-1], forever, with everything it
//! queued behind it stuck: 3.1.1 has no other way to refuse it. Used by the broker's codec
//! (from clients) and by the device client's (from a broker). (Over MQTT 5 the limit was
//! announced, in CONNACK or CONNECT, and a larger packet breaks it: DISCONNECT 0x95.)

use bytes::{Buf, BytesMut};

use crate::message::QoS;

/// The head of a too-large QoS 1 or 2 PUBLISH over MQTT 3.1.1: what is needed to acknowledge
/// it and to say what was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedPublish {
    /// Its QoS (1 or 2).
    pub qos: QoS,
    /// Its packet identifier.
    pub pid: u16,
    /// Its topic, as far as it is UTF-8 (for the log).
    pub topic: String,
    /// Its remaining length.
    pub size: usize,
}

/// What reading the head of a too-large PUBLISH came to ([`read_oversized_head`]).
#[derive(Debug)]
pub enum OversizedHead {
    /// Not a PUBLISH that can be skipped (QoS 0, or its head is malformed): the packet is
    /// refused as too large, as any other.
    NotSkippable,
    /// The head is not all here yet.
    NeedMore,
    /// The head; `skip` more bytes of the packet are still to come, to be dropped as they
    /// arrive ([`skip_rest`]).
    Read {
        /// The head.
        head: OversizedPublish,
        /// Bytes of the packet not yet read.
        skip: usize,
    },
}

/// Reads the head of the too-large MQTT 3.1.1 PUBLISH at the start of `src`, whose first byte
/// is `byte1` (already judged) and whose announced length went over the limit, and takes what
/// `src` holds of the packet off `src`.
pub fn read_oversized_head(src: &mut BytesMut, byte1: u8) -> OversizedHead {
    let qos = match QoS::from_u8((byte1 >> 1) & 0b11) {
        Some(qos @ (QoS::AtLeastOnce | QoS::ExactlyOnce)) if byte1 >> 4 == 3 => qos,
        _ => return OversizedHead::NotSkippable,
    };
    let Some((remaining, header_len)) = remaining_length(src) else {
        return OversizedHead::NotSkippable;
    };
    let Some(topic_len) = u16_at(src, header_len) else {
        return OversizedHead::NeedMore;
    };
    let topic_len = usize::from(topic_len);
    // Topic length, topic and packet id: within the packet, or it is malformed.
    let head = 2 + topic_len + 2;
    if head > remaining {
        return OversizedHead::NotSkippable;
    }
    let Some(pid) = u16_at(src, header_len + 2 + topic_len) else {
        // At most 65,541 bytes of head: held until they are all here.
        src.reserve(header_len + head - src.len());
        return OversizedHead::NeedMore;
    };
    if pid == 0 {
        // [MQTT-2.3.1-1] a QoS 1 or 2 PUBLISH has a non-zero packet id.
        return OversizedHead::NotSkippable;
    }
    let Some(topic) = src.get(header_len + 2..header_len + 2 + topic_len) else {
        // Not reached: the packet id after the topic is here.
        return OversizedHead::NeedMore;
    };
    let topic = String::from_utf8_lossy(topic).into_owned();
    let total = header_len + remaining;
    let here = src.len().min(total);
    src.advance(here);
    OversizedHead::Read {
        head: OversizedPublish {
            qos,
            pid,
            topic,
            size: remaining,
        },
        skip: total - here,
    }
}

/// Drops from `src` what it holds of the `left` bytes still to skip, counting them off;
/// returns whether all are skipped (and the next packet may start in `src`).
pub fn skip_rest(left: &mut usize, src: &mut BytesMut) -> bool {
    let here = (*left).min(src.len());
    src.advance(here);
    *left -= here;
    *left == 0
}

/// The remaining length and the fixed header's length, if the fixed header is whole.
fn remaining_length(src: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (at, byte) in src.iter().enumerate().skip(1).take(4) {
        length += usize::from(byte & 0x7F) << (7 * (at - 1));
        if byte & 0x80 == 0 {
            return Some((length, at + 1));
        }
    }
    None
}

/// The big-endian u16 at `at`, if `src` holds it.
fn u16_at(src: &[u8], at: usize) -> Option<u16> {
    let bytes = src.get(at..at + 2)?;
    <[u8; 2]>::try_from(bytes).ok().map(u16::from_be_bytes)
}
