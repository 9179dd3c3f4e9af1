//! Tests of the MQTT 3.1.1 decoder (`decode.rs`).

use super::*;

/// Decodes `bytes` as the packet after a CONNECT (or as the CONNECT itself).
fn decode(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
    let mut codec = MqttCodec::new(1024);
    codec.first_packet = bytes.first() == Some(&0x10);
    codec.decode(&mut BytesMut::from(bytes))
}

#[test]
fn garbage_is_refused_on_its_first_byte() {
    let mut codec = MqttCodec::new(1024);
    assert!(codec
        .decode(&mut BytesMut::from(&b"GET / HTTP/1.1"[..]))
        .is_err());
    let mut codec = MqttCodec::new(1024);
    assert!(
        codec.decode(&mut BytesMut::from(&[0x30u8][..])).is_err(),
        "[MQTT-3.1.0-1]"
    );
    let mut codec = MqttCodec::new(1024);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&[0x10u8][..])),
        Ok(None)
    ));
}

#[test]
fn partial_frames_wait_for_more() {
    assert!(matches!(decode(&[0x30]), Ok(None)));
    assert!(matches!(decode(&[0x30, 0x05, 0x00]), Ok(None)));
}

#[test]
fn qos0_publish_keeps_its_frame() {
    let frame = [0x30, 0x06, 0x00, 0x01, b'a', b'x', b'y', b'z'];
    let Ok(Some(Packet::Publish(p))) = decode(&frame) else {
        panic!("not a publish")
    };
    assert_eq!(p.message.topic, "a");
    assert_eq!(&p.message.payload[..], b"xyz");
    assert_eq!(&p.message.qos0_frame()[..], &frame[..]);
}

#[test]
fn publish_rules() {
    // QoS 3 [MQTT-3.3.1-4]
    assert!(decode(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]).is_err());
    // DUP on QoS 0 [MQTT-3.3.1-2]
    assert!(decode(&[0x38, 0x03, 0x00, 0x01, b'a']).is_err());
    // wildcard in topic name [MQTT-3.3.2-2]
    assert!(decode(&[0x30, 0x03, 0x00, 0x01, b'#']).is_err());
    // packet id 0 at QoS 1 [MQTT-2.3.1-1]
    assert!(decode(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00]).is_err());
    // invalid UTF-8 [MQTT-1.5.3-1]
    assert!(matches!(
        decode(&[0x30, 0x03, 0x00, 0x01, 0xFF]),
        Err(CodecError::InvalidUtf8)
    ));
    // topic length beyond the frame
    assert!(decode(&[0x30, 0x03, 0x00, 0x09, b'a']).is_err());
}

#[test]
fn subscribe_rules() {
    let ok = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01];
    assert!(matches!(
        decode(&ok),
        Ok(Some(Packet::Subscribe { pid: 1, .. }))
    ));
    // wrong fixed header flags [MQTT-3.8.1-1]
    assert!(decode(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]).is_err());
    // no filter [MQTT-3.8.3-3]
    assert!(decode(&[0x82, 0x02, 0x00, 0x01]).is_err());
    // reserved bits in options [MQTT-3-8.3-4]
    assert!(decode(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x05]).is_err());
    // unsubscribe without filter [MQTT-3.10.3-2]
    assert!(decode(&[0xA2, 0x02, 0x00, 0x01]).is_err());
}

#[test]
fn mqtt_3_1_may_set_dup_on_pubrel_subscribe_and_unsubscribe() {
    let mut legacy = MqttCodec::new(1024);
    legacy.first_packet = false;
    legacy.protocol = ProtocolVersion::V3_1;
    let mut decode_3_1 = |bytes: &[u8]| legacy.decode(&mut BytesMut::from(bytes));
    // A PUBREL sent again after reconnecting, DUP set, as 3.1 clients do.
    assert!(matches!(
        decode_3_1(&[0x6A, 0x02, 0x00, 0x07]),
        Ok(Some(Packet::PubRel(7)))
    ));
    assert!(matches!(
        decode_3_1(&[0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]),
        Ok(Some(Packet::Subscribe { pid: 1, .. }))
    ));
    assert!(matches!(
        decode_3_1(&[0xAA, 0x05, 0x00, 0x02, 0x00, 0x01, b'a']),
        Ok(Some(Packet::Unsubscribe { pid: 2, .. }))
    ));
    // Other flags stay wrong, and 3.1.1 fixes them at 0010 [MQTT-3.6.1-1].
    assert!(decode_3_1(&[0x6B, 0x02, 0x00, 0x07]).is_err());
    assert!(decode(&[0x6A, 0x02, 0x00, 0x07]).is_err());
}

#[test]
fn other_packets() {
    assert!(matches!(decode(&[0xC0, 0x00]), Ok(Some(Packet::PingReq))));
    assert!(matches!(
        decode(&[0xE0, 0x00]),
        Ok(Some(Packet::Disconnect { reason: 0, .. }))
    ));
    assert!(matches!(
        decode(&[0x62, 0x02, 0x00, 0x07]),
        Ok(Some(Packet::PubRel(7)))
    ));
    assert!(
        decode(&[0x60, 0x02, 0x00, 0x07]).is_err(),
        "PUBREL flags [MQTT-3.6.1-1]"
    );
    assert!(
        decode(&[0xE1, 0x00]).is_err(),
        "reserved flags [MQTT-2.2.2-2]"
    );
    assert!(matches!(
        decode(&[0x00, 0x00]),
        Err(CodecError::InvalidPacketType(0))
    ));
    assert!(matches!(
        decode(&[0xF0, 0x00]),
        Err(CodecError::InvalidPacketType(15))
    ));
    assert!(matches!(
        decode(&[0x20, 0x02, 0, 0]),
        Err(CodecError::UnexpectedPacketType(2))
    ));
}

#[test]
fn oversized_and_bad_length() {
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    let mut codec = MqttCodec::new(1024);
    codec.first_packet = false;
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::PacketTooLarge { .. })
    ));
    assert!(decode(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
}

fn connect_frame(name: &str, level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(tail);
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend(body);
    frame
}

#[test]
fn connect_rules() {
    let id = [0u8, 1, b'c'];
    let ok = decode(&connect_frame("MQTT", 4, 0x02, &id));
    assert!(matches!(ok, Ok(Some(Packet::Connect(_)))));
    let v31 = decode(&connect_frame("MQIsdp", 3, 0x02, &id));
    assert!(
        matches!(v31, Ok(Some(Packet::Connect(c))) if c.protocol == crate::ProtocolVersion::V3_1)
    );
    assert!(matches!(
        decode(&connect_frame("MQTT", 6, 0x02, &id)),
        Err(CodecError::UnsupportedProtocolLevel(6))
    ));
    // A bridge's CONNECT: the protocol level with its high bit set (not for MQTT 5).
    let bridge = decode(&connect_frame("MQTT", 0x84, 0x02, &id));
    assert!(
        matches!(&bridge, Ok(Some(Packet::Connect(c))) if c.bridge && c.protocol == crate::ProtocolVersion::V3_1_1),
        "{bridge:?}"
    );
    assert!(matches!(
        decode(&connect_frame("MQTT", 4, 0x02, &id)),
        Ok(Some(Packet::Connect(c))) if !c.bridge
    ));
    assert!(matches!(
        decode(&connect_frame("MQTT", 0x85, 0x02, &id)),
        Err(CodecError::UnsupportedProtocolLevel(0x85))
    ));
    assert!(matches!(
        decode(&connect_frame("MQTX", 4, 0x02, &id)),
        Err(CodecError::InvalidProtocolName)
    ));
    // reserved flag [MQTT-3.1.2-3]
    assert!(decode(&connect_frame("MQTT", 4, 0x03, &id)).is_err());
    // will QoS without will flag [MQTT-3.1.2-13]
    assert!(decode(&connect_frame("MQTT", 4, 0x0A, &id)).is_err());
    // will retain without will flag [MQTT-3.1.2-15]
    assert!(decode(&connect_frame("MQTT", 4, 0x22, &id)).is_err());
    // password without user name [MQTT-3.1.2-22]
    assert!(decode(&connect_frame("MQTT", 4, 0x42, &[0, 1, b'c', 0, 1, b'p'])).is_err());
    // trailing garbage
    assert!(decode(&connect_frame("MQTT", 4, 0x02, &[0, 1, b'c', 9])).is_err());
}

/// A QoS `qos` PUBLISH to `topic` with packet id `pid` and `payload` bytes of payload.
fn publish_frame(qos: u8, topic: &str, pid: u16, payload: usize) -> Vec<u8> {
    let remaining = 2 + topic.len() + 2 + payload;
    let mut frame = vec![0x30 | (qos << 1)];
    let mut left = remaining;
    loop {
        let byte = (left % 128) as u8;
        left /= 128;
        frame.push(if left > 0 { byte | 0x80 } else { byte });
        if left == 0 {
            break;
        }
    }
    frame.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(&pid.to_be_bytes());
    frame.extend(std::iter::repeat_n(b'p', payload));
    frame
}

/// A codec past the CONNECT of a client of `protocol`, with a maximum packet size of 1 KiB.
fn connected(protocol: ProtocolVersion) -> MqttCodec {
    let mut codec = MqttCodec::new(1024);
    codec.first_packet = false;
    codec.protocol = protocol;
    codec
}

#[test]
fn a_too_large_mqtt311_qos1_publish_gives_its_head_and_the_rest_is_skipped() {
    let mut codec = connected(ProtocolVersion::V3_1_1);
    let mut wire = publish_frame(1, "gate/1/photo", 7, 5000);
    wire.extend_from_slice(&[0xC0, 0x00]); // PINGREQ behind it
                                           // As a socket gives it: in pieces, the head itself split.
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for piece in wire.chunks(9) {
        buf.extend_from_slice(piece);
        while let Some(packet) = codec.decode(&mut buf).expect("no error") {
            decoded.push(packet);
        }
        assert!(buf.len() < 64, "the skipped bytes are not held");
    }
    assert_eq!(decoded.len(), 2, "{decoded:?}");
    let Packet::OversizedPublish(head) = &decoded[0] else {
        panic!("not an oversized publish: {:?}", decoded[0]);
    };
    let expected = OversizedPublish {
        qos: QoS::AtLeastOnce,
        pid: 7,
        topic: "gate/1/photo".into(),
        size: 5016,
    };
    assert_eq!(head, &expected);
    assert!(matches!(decoded[1], Packet::PingReq));
}

#[test]
fn a_too_large_mqtt311_qos2_publish_read_whole_at_once_is_skipped_too() {
    let mut codec = connected(ProtocolVersion::V3_1_1);
    let mut wire = BytesMut::from(&publish_frame(2, "t", 9, 2000)[..]);
    let packet = codec.decode(&mut wire).expect("no error");
    assert!(matches!(
        packet,
        Some(Packet::OversizedPublish(OversizedPublish {
            qos: QoS::ExactlyOnce,
            pid: 9,
            ..
        }))
    ));
    assert!(wire.is_empty());
    assert_eq!(codec.skipping, 0);
}

#[test]
fn a_too_large_publish_that_cannot_be_skipped_is_refused() {
    // QoS 0: nothing to acknowledge; MQTT 5: the client was told the maximum (CONNACK);
    // a packet id of 0 [MQTT-2.3.1-1]; a topic longer than the packet.
    let cases = [
        (ProtocolVersion::V3_1_1, publish_frame(0, "t", 0, 2000)),
        (ProtocolVersion::V5, publish_frame(1, "t", 1, 2000)),
        (ProtocolVersion::V3_1_1, publish_frame(1, "t", 0, 2000)),
    ];
    for (protocol, frame) in cases {
        let mut codec = connected(protocol);
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&frame[..])),
            Err(CodecError::PacketTooLarge { .. })
        ));
    }
    let mut codec = connected(ProtocolVersion::V3_1_1);
    let mut frame = vec![0x32, 0x88, 0x08, 0xFF, 0xFF];
    frame.extend(std::iter::repeat_n(b't', 2000));
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&frame[..])),
        Err(CodecError::PacketTooLarge { .. })
    ));
}

#[test]
fn a_header_announcing_a_large_packet_does_not_reserve_all_of_it() {
    let mut codec = MqttCodec::new(4 << 20);
    codec.first_packet = false;
    let wire = publish_frame(1, "t", 1, 1_000_000);
    // The header alone: the buffer takes no more than the most reserved ahead.
    let mut buf = BytesMut::from(&wire[..8]);
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert!(
        buf.capacity() <= 8 + MAX_RESERVE_AHEAD,
        "{} reserved on a header's word",
        buf.capacity()
    );
    // The rest as it comes: the buffer grows with it and the packet is whole.
    let mut decoded = None;
    for piece in wire[8..].chunks(100_000) {
        buf.extend_from_slice(piece);
        if let Some(packet) = codec.decode(&mut buf).expect("no error") {
            decoded = Some(packet);
        }
    }
    let Some(Packet::Publish(publish)) = decoded else {
        panic!("no PUBLISH");
    };
    assert_eq!(publish.message.payload.len(), 1_000_000);
}

#[test]
fn packets_back_to_back_are_each_taken_whole() {
    // Acknowledgements are read where they lie, PUBLISH frames split off: each leaves the
    // buffer at the next packet's first byte.
    let mut wire = Vec::new();
    wire.extend_from_slice(&[0x40, 0x02, 0x00, 0x07]); // PUBACK 7
    wire.extend_from_slice(&publish_frame(1, "a/b", 9, 3));
    wire.extend_from_slice(&[0x50, 0x02, 0x01, 0x00]); // PUBREC 256
    wire.extend_from_slice(&[0x31, 0x04, 0x00, 0x01, b'r', b'x']); // QoS 0, retained
    wire.extend_from_slice(&[0x70, 0x02, 0x00, 0x02]); // PUBCOMP 2
    wire.extend_from_slice(&[0xC0, 0x00]);
    let mut codec = connected(ProtocolVersion::V3_1_1);
    let mut buf = BytesMut::from(&wire[..]);
    let mut packets = Vec::new();
    while let Some(packet) = codec.decode(&mut buf).expect("no error") {
        packets.push(packet);
    }
    assert!(buf.is_empty());
    let [Packet::PubAck(7), Packet::Publish(qos1), Packet::PubRec(256, 0), Packet::Publish(retained), Packet::PubComp(2), Packet::PingReq] =
        &packets[..]
    else {
        panic!("{packets:?}")
    };
    assert_eq!((qos1.pid, &qos1.message.topic[..]), (9, "a/b"));
    assert_eq!(&qos1.message.payload[..], b"ppp");
    assert_eq!(qos1.message.qos, QoS::AtLeastOnce);
    assert!(retained.message.retain);
    assert_eq!(&retained.message.payload[..], b"x");
    // The packet id of an acknowledgement is 2 bytes exactly, and never 0 [MQTT-2.3.1-1].
    assert!(decode(&[0x40, 0x03, 0x00, 0x07, 0x00]).is_err());
    assert!(decode(&[0x40, 0x01, 0x07]).is_err());
    assert!(decode(&[0x40, 0x02, 0x00, 0x00]).is_err());
}

/// What mqttbytes' `v4::Publish::read` made of a PUBLISH frame, with the checks the decoder
/// made around it before it read frames in place: the reference for the decoder's own reading.
fn publish_as_mqttbytes_read_it(frame: &[u8]) -> Result<(String, u16, Vec<u8>, u8, bool), String> {
    let byte1 = frame[0];
    if (byte1 >> 1) & 0x03 == 3 {
        return Err(format!(
            "{:?}",
            CodecError::Protocol("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        ));
    }
    if byte1 & 0x08 != 0 && (byte1 >> 1) & 0x03 == 0 {
        return Err(format!(
            "{:?}",
            CodecError::Protocol("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")
        ));
    }
    let header = mqttbytes::check(frame.iter(), 1024).expect("a whole frame");
    let publish =
        mqttbytes::v4::Publish::read(header, Bytes::copy_from_slice(frame)).map_err(|e| {
            format!(
                "{:?}",
                match e {
                    mqttbytes::Error::TopicNotUtf8 => CodecError::InvalidUtf8,
                    mqttbytes::Error::PacketIdZero => CodecError::Protocol(
                        "QoS > 0 PUBLISH with packet identifier 0 [MQTT-2.3.1-1]"
                    ),
                    other => CodecError::Malformed(other),
                }
            )
        })?;
    validate_topic_name(&publish.topic).map_err(|e| format!("{:?}", CodecError::Topic(e)))?;
    Ok((
        publish.topic,
        publish.pkid,
        publish.payload.to_vec(),
        publish.qos as u8,
        publish.retain,
    ))
}

proptest::proptest! {
    /// The decoder reads every PUBLISH as mqttbytes did, errors included: topic lengths
    /// short of, at and past the frame's end, topics with wildcards, U+0000 or bad UTF-8
    /// [MQTT-1.5.3-1] [MQTT-3.3.2-2], a missing or zero packet id [MQTT-2.3.1-1], QoS 3
    /// [MQTT-3.3.1-4] and DUP at QoS 0 [MQTT-3.3.1-2].
    #[test]
    fn publish_frames_read_as_mqttbytes_read_them(
        flags in 0u8..16,
        topic in proptest::collection::vec(proptest::sample::select(vec![b'a', b'/', b'#', b'+', 0, 0xC3, 0xA9, 0xFF]), 0..6),
        length_off in -2i32..3,
        pid in proptest::sample::select(vec![0u16, 1, 0x0100, 0xFFFF]),
        payload in proptest::collection::vec(proptest::num::u8::ANY, 0..5),
        cut in 0usize..20,
    ) {
        let topic_length = (topic.len() as i32 + length_off).max(0) as u16;
        let mut body = topic_length.to_be_bytes().to_vec();
        body.extend_from_slice(&topic);
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(&payload);
        body.truncate(body.len().saturating_sub(cut % 6));
        let mut frame = vec![0x30 | flags, body.len() as u8];
        frame.extend_from_slice(&body);
        let ours = match decode(&frame) {
            Ok(Some(Packet::Publish(p))) => Ok((
                p.message.topic.clone(),
                p.pid,
                p.message.payload.to_vec(),
                p.message.qos as u8,
                p.message.retain,
            )),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(format!("{e:?}")),
        };
        proptest::prop_assert_eq!(ours, publish_as_mqttbytes_read_it(&frame));
    }
}
