//! Encoding of server-to-client MQTT 5 packets. Like the 3.1.1 writers, these cannot fail; a
//! PUBLISH is measured first so that one too large for the client is not written at all.

use bytes::{BufMut, BytesMut};

use super::encode::{Ack, PublishHeader};
use super::properties::{id, put_var_int, var_int_len, PropertyWriter};
use crate::message::{MessageProperties, QoS};

/// The MQTT 5 extras of one outbound PUBLISH.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishExtras<'a> {
    /// The message's forwarded properties.
    pub properties: Option<&'a MessageProperties>,
    /// What remains of its Message Expiry Interval `[MQTT-3.3.2-6]`.
    pub expiry: Option<u32>,
    /// Topic Alias to send; with `topic` empty when the alias is already known to the client.
    pub topic_alias: Option<u16>,
    /// Subscription Identifiers of the matching subscriptions `[MQTT-3.3.4-3]`.
    pub subscription_ids: &'a [u32],
}

fn publish_properties(extras: &PublishExtras<'_>) -> PropertyWriter {
    let mut w = PropertyWriter::new();
    if let Some(p) = extras.properties {
        if let Some(format) = p.payload_format {
            w.byte(id::PAYLOAD_FORMAT, format);
        }
        if let Some(ct) = &p.content_type {
            w.string(id::CONTENT_TYPE, ct);
        }
        if let Some(rt) = &p.response_topic {
            w.string(id::RESPONSE_TOPIC, rt);
        }
        if let Some(cd) = &p.correlation_data {
            w.binary(id::CORRELATION_DATA, cd);
        }
        for (k, v) in &p.user_properties {
            w.user(k, v);
        }
    }
    if let Some(expiry) = extras.expiry {
        w.u32(id::MESSAGE_EXPIRY, expiry);
    }
    if let Some(alias) = extras.topic_alias {
        w.u16(id::TOPIC_ALIAS, alias);
    }
    for &sid in extras.subscription_ids {
        w.var_int(id::SUBSCRIPTION_ID, sid);
    }
    w
}

/// Writes an MQTT 5 PUBLISH unless its whole packet would exceed `max_packet_size`; returns
/// whether it was written `[MQTT-3.1.2-25]`.
pub fn write_publish_v5(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    header: PublishHeader,
    extras: &PublishExtras<'_>,
    max_packet_size: Option<u32>,
) -> bool {
    let has_pid = header.qos != QoS::AtMostOnce;
    let props = publish_properties(extras);
    let remaining =
        2 + topic.len() + if has_pid { 2 } else { 0 } + props.encoded_len() + payload.len();
    let total = 1 + var_int_len(remaining) + remaining;
    if max_packet_size.is_some_and(|max| total > max as usize) {
        return false;
    }
    super::encode::make_room(out, total);
    out.put_u8(header.byte1());
    put_var_int(out, remaining);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if has_pid {
        out.put_u16(header.pid);
    }
    props.finish(out);
    out.put_slice(payload);
    true
}

/// Writes an MQTT 5 CONNACK with a reason code and properties.
pub fn write_connack_v5(
    out: &mut BytesMut,
    session_present: bool,
    reason: u8,
    props: &PropertyWriter,
) {
    out.put_u8(0x20);
    put_var_int(out, 2 + props.encoded_len());
    out.put_u8(u8::from(session_present));
    out.put_u8(reason);
    props.finish(out);
}

/// Writes PUBACK, PUBREC, PUBREL, PUBCOMP with a reason code: the two-byte short form for
/// success (section 3.4.2.1), else packet id and reason code without properties.
pub fn write_ack_v5(out: &mut BytesMut, ack: Ack, pid: u16, reason: u8) {
    if reason == 0 {
        return super::write_ack(out, ack, pid);
    }
    out.put_slice(&[ack.byte1(), 3]);
    out.put_u16(pid);
    out.put_u8(reason);
}

/// Writes PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code and, if given and the packet stays
/// within the client's Maximum Packet Size, a reason string `[MQTT-3.4.2-2]`.
pub fn write_ack_v5_with_reason(
    out: &mut BytesMut,
    ack: Ack,
    pid: u16,
    reason: u8,
    reason_string: Option<&str>,
    max_packet_size: Option<u32>,
) {
    let Some(text) = reason_string else {
        return write_ack_v5(out, ack, pid, reason);
    };
    let mut props = PropertyWriter::new();
    props.string(id::REASON_STRING, text);
    let remaining = 3 + props.encoded_len();
    let total = 1 + var_int_len(remaining) + remaining;
    if max_packet_size.is_some_and(|max| total > max as usize) {
        return write_ack_v5(out, ack, pid, reason);
    }
    out.put_u8(ack.byte1());
    put_var_int(out, remaining);
    out.put_u16(pid);
    out.put_u8(reason);
    props.finish(out);
}

/// Writes an MQTT 5 SUBACK or UNSUBACK (`byte1` 0x90 or 0xB0): packet id, properties (a reason
/// string if given and the packet stays within the client's Maximum Packet Size [MQTT-3.9.2-1]
/// [MQTT-3.11.2-1]), one reason code per filter in order `[MQTT-3.9.3-1]` `[MQTT-3.11.3-1]`.
pub fn write_sub_unsub_ack_v5(
    out: &mut BytesMut,
    byte1: u8,
    pid: u16,
    codes: &[u8],
    reason_string: Option<&str>,
    max_packet_size: Option<u32>,
) {
    let mut props = PropertyWriter::new();
    if let Some(text) = reason_string {
        props.string(id::REASON_STRING, text);
        let remaining = 2 + props.encoded_len() + codes.len();
        if max_packet_size.is_some_and(|max| 1 + var_int_len(remaining) + remaining > max as usize)
        {
            props = PropertyWriter::new();
        }
    }
    out.put_u8(byte1);
    put_var_int(out, 2 + props.encoded_len() + codes.len());
    out.put_u16(pid);
    props.finish(out);
    out.put_slice(codes);
}

/// A short English text for an MQTT 5 reason code the broker sends in acknowledgements.
pub fn reason_text(code: u8) -> &'static str {
    match code {
        0x11 => "no subscription existed",
        0x80 => "unspecified error",
        0x87 => "not authorized",
        0x8F => "topic filter invalid",
        0x92 => "packet identifier not found",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "refused",
    }
}

/// The reason string of a SUBACK or UNSUBACK: which filters failed and why, or `None` if none did.
pub fn ack_reason_string(codes: &[u8], failure_from: u8) -> Option<String> {
    let failures: Vec<String> = codes
        .iter()
        .enumerate()
        .filter(|(_, &c)| c >= failure_from)
        .map(|(i, &c)| format!("filter {}: {}", i + 1, reason_text(c)))
        .collect();
    (!failures.is_empty()).then(|| failures.join("; "))
}

/// Writes a server DISCONNECT with a reason code and, when given, a reason string, unless it
/// would make the packet larger than the client's Maximum Packet Size `[MQTT-3.14.2-3]`.
pub fn write_disconnect_v5(
    out: &mut BytesMut,
    reason: u8,
    reason_string: Option<&str>,
    max_packet_size: Option<u32>,
) {
    let mut props = PropertyWriter::new();
    if let Some(text) = reason_string {
        props.string(id::REASON_STRING, text);
        let remaining = 1 + props.encoded_len();
        if max_packet_size.is_some_and(|max| 1 + var_int_len(remaining) + remaining > max as usize)
        {
            props = PropertyWriter::new();
        }
    }
    out.put_u8(0xE0);
    put_var_int(out, 1 + props.encoded_len());
    out.put_u8(reason);
    props.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn publish_with_properties_round_trips_through_mqttbytes_v5() {
        let props = MessageProperties {
            payload_format: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(b"c1")),
            user_properties: vec![("k".into(), "v".into())],
        };
        let extras = PublishExtras {
            properties: Some(&props),
            expiry: Some(30),
            topic_alias: Some(2),
            subscription_ids: &[7],
        };
        let header = PublishHeader {
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pid: 9,
        };
        let mut out = BytesMut::new();
        assert!(write_publish_v5(
            &mut out, "a/b", b"hi", header, &extras, None
        ));
        let Ok(mqttbytes::v5::Packet::Publish(p)) = mqttbytes::v5::read(&mut out, 1024) else {
            panic!("mqttbytes could not read our PUBLISH")
        };
        let got = p.properties.expect("properties");
        assert_eq!(
            (p.topic.as_str(), p.pkid, &p.payload[..]),
            ("a/b", 9, &b"hi"[..])
        );
        assert_eq!(got.message_expiry_interval, Some(30));
        assert_eq!(got.topic_alias, Some(2));
        assert_eq!(got.response_topic.as_deref(), Some("r/1"));
        assert_eq!(
            got.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(got.subscription_identifiers, vec![7]);

        let mut small = BytesMut::new();
        assert!(
            !write_publish_v5(&mut small, "a/b", b"hi", header, &extras, Some(20)),
            "[MQTT-3.1.2-25] too large for the client: not written"
        );
        assert!(small.is_empty());
    }

    #[test]
    fn suback_reason_string_is_left_out_when_the_client_cannot_take_it() {
        let why = ack_reason_string(&[0, 0x8F], 0x80);
        assert_eq!(why.as_deref(), Some("filter 2: topic filter invalid"));
        let mut out = BytesMut::new();
        write_sub_unsub_ack_v5(&mut out, 0x90, 1, &[0, 0x8F], why.as_deref(), None);
        assert!(out.len() > 10);
        let mut small = BytesMut::new();
        // [MQTT-3.9.2-1] not beyond the client's Maximum Packet Size.
        write_sub_unsub_ack_v5(&mut small, 0x90, 1, &[0, 0x8F], why.as_deref(), Some(8));
        assert_eq!(&small[..], &[0x90, 5, 0, 1, 0, 0, 0x8F][..]);
    }

    #[test]
    fn disconnect_reason_string_only_within_the_client_maximum() {
        let mut out = BytesMut::new();
        write_disconnect_v5(&mut out, 0x8D, Some("keep-alive timeout"), None);
        assert!(out.len() > 20);
        let mut small = BytesMut::new();
        // [MQTT-3.14.2-3]
        write_disconnect_v5(&mut small, 0x8D, Some("keep-alive timeout"), Some(10));
        assert_eq!(&small[..], &[0xE0, 2, 0x8D, 0][..]);
    }

    #[test]
    fn acks_and_disconnect() {
        let mut out = BytesMut::new();
        write_ack_v5(&mut out, Ack::PubAck, 5, 0);
        write_ack_v5(&mut out, Ack::PubRec, 5, 0x87);
        write_sub_unsub_ack_v5(&mut out, 0x90, 3, &[1, 0x87], None, None);
        write_disconnect_v5(&mut out, 0x8E, None, None);
        assert_eq!(
            &out[..],
            &[0x40, 2, 0, 5, 0x50, 3, 0, 5, 0x87, 0x90, 5, 0, 3, 0, 1, 0x87, 0xE0, 2, 0x8E, 0][..]
        );
    }
}
