//! Tests of the device client's codec (`codec.rs`).

use super::*;

fn decode_all(protocol: ProtocolVersion, bytes: &[u8]) -> Vec<Result<Incoming, String>> {
    let mut codec = ClientCodec::new(1024, protocol);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

#[test]
fn decodes_split_packets() {
    let mut codec = ClientCodec::new(1024, ProtocolVersion::V3_1_1);
    let mut buf = BytesMut::from(&[0x20u8, 0x02, 0x01][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(&[0x00, 0x90, 0x03, 0x00, 0x01, 0x80]);
    assert!(matches!(
        codec.decode(&mut buf).unwrap(),
        Some(Incoming::ConnAck {
            session_present: true,
            code: 0,
            maximum_packet_size: None,
            server_reference: None,
        })
    ));
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Incoming::SubAck(1, vec![None]))
    );
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(codec
        .decode(&mut BytesMut::from(&[0x00u8, 0x00][..]))
        .is_err());
}

#[test]
fn mqttbytes_v5_faults_are_guarded() {
    // The faults themselves, so that an mqttbytes upgrade that fixes them is noticed.
    let mut bare = BytesMut::from(&[0xE0u8, 0x00][..]);
    assert!(matches!(
        v5::read(&mut bare, 1024),
        Err(mqttbytes::Error::PayloadRequired)
    ));
    let mut no_props = BytesMut::from(&[0x30u8, 0x03, 0x00, 0x01, b'a', 0xD0, 0x00][..]);
    assert!(matches!(
        v5::read(&mut no_props, 1024),
        Err(mqttbytes::Error::InsufficientBytes(_))
    ));
    assert_eq!(
        no_props.len(),
        2,
        "the PUBLISH frame was consumed all the same"
    );

    // A bare DISCONNECT is reason 0x00; a PUBLISH without its property length ends the link
    // instead of waiting for bytes that belong to the next packet.
    let got = decode_all(ProtocolVersion::V5, &[0xE0, 0x00]);
    assert_eq!(got, vec![Ok(Incoming::Disconnect(0, None))]);
    let got = decode_all(
        ProtocolVersion::V5,
        &[0x30, 0x03, 0x00, 0x01, b'a', 0xD0, 0x00],
    );
    assert_eq!(got.len(), 1);
    assert!(got[0].is_err());
}

#[test]
fn an_mqtt5_publish_with_several_subscription_identifiers_keeps_its_payload() {
    // PUBLISH "t" QoS 0, properties: Content Type "x", then Subscription Identifiers 5, 6
    // and 7 (one copy for three overlapping subscriptions, [MQTT-3.3.4-4]), payload "ok".
    let frame = [
        0x30, 0x10, 0x00, 0x01, b't', 0x0A, 0x03, 0x00, 0x01, b'x', 0x0B, 5, 0x0B, 6, 0x0B, 7,
        b'o', b'k',
    ];
    let got = decode_all(ProtocolVersion::V5, &frame);
    let [Ok(Incoming::Publish {
        topic,
        payload,
        properties,
        ..
    })] = &got[..]
    else {
        panic!("one PUBLISH expected, got {got:?}");
    };
    assert_eq!((topic.as_str(), &payload[..]), ("t", &b"ok"[..]));
    assert_eq!(
        properties.as_ref().and_then(|p| p.content_type.as_deref()),
        Some("x")
    );
    // mqttbytes 0.6 reads the last identifier into the payload.
    match v5::read(&mut BytesMut::from(&frame[..]), 1024) {
        Ok(v5::Packet::Publish(p)) => assert_eq!(&p.payload[..], &[0x0B, 7, b'o', b'k']),
        other => panic!("mqttbytes read {other:?}"),
    }
    // This client allows no Topic Alias: one ends the link with a clear error.
    let aliased = [0x30, 0x08, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x01, b'x'];
    let got = decode_all(ProtocolVersion::V5, &aliased);
    assert!(
        matches!(&got[..], [Err(e)] if e.contains("topic alias")),
        "{got:?}"
    );
}

#[test]
fn mqtt5_connect_and_subscribe_are_read_back_by_the_broker_codec() {
    let mut out = BytesMut::new();
    write_connect_v5(
        &mut out,
        &Connect5 {
            client_id: "dev-1",
            keep_alive: 30,
            clean_start: false,
            session_expiry: u32::MAX,
            maximum_packet_size: 4096,
            credentials: Some(("u", "p")),
            will: Some(("w", b"bye", QoS::AtLeastOnce, true)),
        },
    );
    write_subscribe_v5(&mut out, 3, &[("a/+".to_string(), QoS::ExactlyOnce)], 0);
    write_subscribe_v5(
        &mut out,
        4,
        &[("b/#".to_string(), QoS::AtLeastOnce)],
        subscription_options(true, false),
    );
    let mut codec = switchboard_mqtt::codec::MqttCodec::new(1 << 20);
    let Ok(Some(switchboard_mqtt::codec::Packet::Connect(connect))) = codec.decode(&mut out) else {
        panic!("CONNECT not read back");
    };
    assert_eq!(connect.protocol, ProtocolVersion::V5);
    assert_eq!(connect.properties.session_expiry, u32::MAX);
    assert_eq!(connect.properties.maximum_packet_size, Some(4096));
    assert_eq!(connect.username.as_deref(), Some("u"));
    assert!(connect.will.is_some_and(|w| w.retain && w.topic == "w"));
    let Ok(Some(switchboard_mqtt::codec::Packet::Subscribe { pid, filters })) =
        codec.decode(&mut out)
    else {
        panic!("SUBSCRIBE not read back");
    };
    assert_eq!(
        (pid, filters[0].0.as_str(), filters[0].1.qos),
        (3, "a/+", QoS::ExactlyOnce)
    );
    assert!(!filters[0].1.no_local && !filters[0].1.retain_as_published);
    let Ok(Some(switchboard_mqtt::codec::Packet::Subscribe { pid, filters })) =
        codec.decode(&mut out)
    else {
        panic!("second SUBSCRIBE not read back");
    };
    // A bridge's subscriptions carry No Local and Retain As Published (section 3.8.3.1).
    assert_eq!((pid, filters[0].1.qos), (4, QoS::AtLeastOnce));
    assert!(filters[0].1.no_local && filters[0].1.retain_as_published);
}

#[test]
fn the_bridge_bit_lands_on_the_protocol_level() {
    let mut out = bytes::BytesMut::new();
    mqttbytes::v4::Connect::new("site-1AB")
        .write(&mut out)
        .expect("CONNECT");
    assert_eq!(&out[2..9], &[0, 4, b'M', b'Q', b'T', b'T', 4]);
    set_bridge_bit(&mut out);
    assert_eq!(out[8], 0x84);
    // A CONNECT longer than 127 bytes has a two-byte Remaining Length.
    let mut long = bytes::BytesMut::new();
    mqttbytes::v4::Connect::new("x".repeat(200))
        .write(&mut long)
        .expect("CONNECT");
    assert!(long[1] & 0x80 != 0);
    set_bridge_bit(&mut long);
    assert_eq!(&long[3..10], &[0, 4, b'M', b'Q', b'T', b'T', 0x84]);
}

#[test]
fn a_too_large_mqtt311_publish_gives_its_head_and_the_next_packet_follows() {
    // A QoS 1 PUBLISH of 2,000 bytes (over the 1,024 of `decode_all`), then PINGRESP.
    let mut wire = vec![0x32, 0xD7, 0x0F, 0, 3, b'c', b'a', b'm', 0, 5];
    wire.extend(std::iter::repeat_n(b'x', 2000));
    wire.extend_from_slice(&[0xD0, 0x00]);
    let decoded = decode_all(ProtocolVersion::V3_1_1, &wire);
    let expected = OversizedPublish {
        qos: QoS::AtLeastOnce,
        pid: 5,
        topic: "cam".into(),
        size: 2007,
    };
    assert_eq!(
        decoded,
        vec![
            Ok(Incoming::OversizedPublish(expected)),
            Ok(Incoming::PingResp)
        ]
    );
    // MQTT 5: the broker was told the maximum in CONNECT; breaking it closes the link.
    let decoded = decode_all(ProtocolVersion::V5, &wire);
    assert!(matches!(decoded[..], [Err(_)]), "{decoded:?}");
}
