//! Decoding of a server-to-client MQTT 5 PUBLISH: the client side's reader (the device actors
//! and the bridges read their broker's PUBLISH packets with it).
//!
//! mqttbytes 0.6's v5 reader counts each Subscription Identifier one byte too long, so the
//! properties after the first few identifiers are left in the payload: a broker that sends one
//! copy for overlapping subscriptions with three identifiers ([MQTT-3.3.4-4]) gets its payload
//! delivered with the bytes of a property in front. This reader follows the property length.

use bytes::{Buf, Bytes};

use super::connect::take_message_property;
use super::decode::fixed_header_len;
use super::decode_v5::{read_publish_head, PublishHead};
use super::properties::{id, read_properties_repeating};
use super::CodecError;
use crate::message::{MessageProperties, QoS};
use crate::topic::validate_topic_name;

/// The properties a server's PUBLISH may carry (section 3.3.2.3).
const SERVER_PUBLISH_PROPERTIES: &[u8] = &[
    id::PAYLOAD_FORMAT,
    id::MESSAGE_EXPIRY,
    id::CONTENT_TYPE,
    id::RESPONSE_TOPIC,
    id::CORRELATION_DATA,
    id::TOPIC_ALIAS,
    id::USER_PROPERTY,
    id::SUBSCRIPTION_ID,
];

/// A PUBLISH as a server sends it to a client over MQTT 5.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPublish {
    /// Topic name (empty where a Topic Alias stands for it).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Packet id (0 at QoS 0).
    pub pid: u16,
    /// The message's properties, as the publisher set them.
    pub properties: MessageProperties,
    /// What is left of its Message Expiry Interval, in seconds.
    pub expiry: Option<u32>,
    /// The Subscription Identifiers of the subscriptions it came through, in wire order.
    pub subscription_ids: Vec<u32>,
    /// Its Topic Alias, if the server used one.
    pub topic_alias: Option<u16>,
}

/// Decodes a whole MQTT 5 PUBLISH frame (fixed header included) that a server sent.
pub fn decode_server_publish_v5(frame: Bytes) -> Result<ServerPublish, CodecError> {
    let byte1 = *frame
        .first()
        .ok_or(CodecError::Malformed5("PUBLISH", "empty frame"))?;
    if byte1 >> 4 != 3 {
        return Err(CodecError::Malformed5("PUBLISH", "not a PUBLISH"));
    }
    let mut body = frame.slice(fixed_header_len(&frame).min(frame.len())..);
    let PublishHead {
        qos,
        dup,
        retain,
        topic,
        pid,
    } = read_publish_head(byte1, &mut body)?;
    let mut properties = MessageProperties::default();
    let (mut expiry, mut topic_alias, mut subscription_ids) = (None, None, Vec::new());
    let read = read_properties_repeating(
        &mut body,
        SERVER_PUBLISH_PROPERTIES,
        &[id::USER_PROPERTY, id::SUBSCRIPTION_ID],
        "PUBLISH",
    )?;
    for (identifier, value) in read {
        match identifier {
            id::TOPIC_ALIAS => topic_alias = Some(value.u16()),
            id::SUBSCRIPTION_ID => subscription_ids.push(value.u32()),
            _ => take_message_property(&mut properties, &mut expiry, identifier, value, "PUBLISH")?,
        }
    }
    if !(topic.is_empty() && topic_alias.is_some()) {
        validate_topic_name(&topic)?;
    }
    let payload = body.copy_to_bytes(body.remaining());
    Ok(ServerPublish {
        topic,
        payload,
        qos,
        retain,
        dup,
        pid,
        properties,
        expiry,
        subscription_ids,
        topic_alias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::properties::PropertyWriter;
    use bytes::BufMut;

    /// A PUBLISH frame of `topic` at QoS 1 (packet id 7) with `props` and `payload`.
    fn frame(topic: &str, props: &PropertyWriter, payload: &[u8]) -> Bytes {
        let mut body = Vec::new();
        body.put_u16(topic.len() as u16);
        body.put_slice(topic.as_bytes());
        body.put_u16(7);
        props.finish(&mut body);
        body.put_slice(payload);
        let mut out = vec![0x32];
        crate::codec::properties::put_var_int(&mut out, body.len());
        out.extend(body);
        Bytes::from(out)
    }

    #[test]
    fn subscription_identifiers_after_the_other_properties_leave_the_payload_whole() {
        let mut props = PropertyWriter::new();
        props
            .byte(id::PAYLOAD_FORMAT, 1)
            .user("site", "A")
            .user("site", "B")
            .var_int(id::SUBSCRIPTION_ID, 22)
            .var_int(id::SUBSCRIPTION_ID, 300)
            .var_int(id::SUBSCRIPTION_ID, 24);
        let publish =
            decode_server_publish_v5(frame("gate/1AB/status", &props, b"m63")).expect("decodes");
        assert_eq!(publish.payload, Bytes::from_static(b"m63"));
        assert_eq!(publish.subscription_ids, vec![22, 300, 24]);
        assert_eq!(publish.properties.payload_format, Some(1));
        assert_eq!(
            publish.properties.user_properties,
            vec![("site".into(), "A".into()), ("site".into(), "B".into())]
        );
        assert_eq!((publish.qos, publish.pid), (QoS::AtLeastOnce, 7));

        // mqttbytes 0.6 reads the same frame with the last identifier in the payload: the
        // fault this reader exists for.
        let mut bytes = bytes::BytesMut::from(&frame("gate/1AB/status", &props, b"m63")[..]);
        match mqttbytes::v5::read(&mut bytes, 1024) {
            Ok(mqttbytes::v5::Packet::Publish(p)) => assert_ne!(&p.payload[..], b"m63"),
            other => panic!("mqttbytes read {other:?}"),
        }
    }

    #[test]
    fn a_bad_frame_is_an_error_not_a_panic() {
        let props = PropertyWriter::new();
        let good = frame("t", &props, b"x");
        for cut in 0..good.len() - 1 {
            let _ = decode_server_publish_v5(good.slice(..cut));
        }
        assert!(decode_server_publish_v5(Bytes::from_static(&[0x36, 0x00])).is_err());
        let mut wild = PropertyWriter::new();
        wild.byte(id::PAYLOAD_FORMAT, 1);
        assert!(decode_server_publish_v5(frame("a/+", &wild, b"x")).is_err());
        let mut repeated = PropertyWriter::new();
        repeated
            .byte(id::PAYLOAD_FORMAT, 1)
            .byte(id::PAYLOAD_FORMAT, 1);
        assert!(decode_server_publish_v5(frame("t", &repeated, b"x")).is_err());
    }
}
