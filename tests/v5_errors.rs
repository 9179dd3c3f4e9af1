//! MQTT 5 packets after the CONNECT that break a rule, each answered with the DISCONNECT reason
//! code the spec gives it (malformed, protocol error, topic invalid, too large) and a Reason
//! String, then the connection closes; and the client's own DISCONNECT. Raw bytes in,
//! mqttbytes' v5 reader out.

mod common;

use common::v5::{
    connect5, decode5, disconnect5, disconnect_reason, prop, publish5, Packet5, Props, Will5,
};
use common::{broker, broker_with, packets, Raw};
use mqttbytes::v5::ConnectReturnCode;

#[tokio::test]
async fn malformed_and_oversized_packets_get_the_right_disconnect_reason() {
    let broker = broker_with(|c| c.limits.max_packet_size = 64);
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        // A property not allowed in PUBLISH (Session Expiry): malformed, 0x81.
        (
            "foreign property",
            publish5(
                "a",
                b"x",
                0,
                0,
                false,
                &Props::new().u32(prop::SESSION_EXPIRY, 1),
            ),
            0x81,
        ),
        // A property twice: protocol error, 0x82 (section 2.2.2.2).
        (
            "duplicate property",
            publish5(
                "a",
                b"x",
                0,
                0,
                false,
                &Props::new()
                    .byte(prop::PAYLOAD_FORMAT, 0)
                    .byte(prop::PAYLOAD_FORMAT, 0),
            ),
            0x82,
        ),
        // Larger than the Maximum Packet Size announced: 0x95 (section 3.2.2.3.6).
        (
            "too large",
            publish5("a", &[0u8; 100], 0, 0, false, &Props::new()),
            0x95,
        ),
        // mqttbytes guard: a PUBLISH without its property length is malformed, and the
        // connection is closed rather than left waiting for bytes that belong to the next packet.
        (
            "missing property length",
            packets::frame(0x30, &[0, 1, b'a']),
            0x81,
        ),
        // Topic Alias 0 [MQTT-3.3.2-8].
        (
            "topic alias 0",
            publish5(
                "a",
                b"x",
                0,
                0,
                false,
                &Props::new().u16(prop::TOPIC_ALIAS, 0),
            ),
            0x94,
        ),
        // AUTH outside an extended authentication (section 4.12): a protocol error.
        ("unexpected AUTH", vec![0xF0, 0x00], 0x82),
        // Reserved flags in the fixed header [MQTT-2.1.3-1]: malformed, whatever the packet.
        // AUTH's are judged before it is refused as unexpected [MQTT-3.15.1-1]; SUBSCRIBE's
        // and UNSUBSCRIBE's must be 0010 [MQTT-3.8.1-1] [MQTT-3.10.1-1].
        ("AUTH with reserved flags", vec![0xF1, 0x00], 0x81),
        (
            "SUBSCRIBE with flags 0000",
            packets::frame(0x80, &[0, 1, 0, 0, 1, b'a', 0]),
            0x81,
        ),
        (
            "UNSUBSCRIBE with flags 0000",
            packets::frame(0xA0, &[0, 1, 0, 0, 1, b'a']),
            0x81,
        ),
        // A SUBSCRIBE or UNSUBSCRIBE without a filter: a protocol error [MQTT-3.8.3-2]
        // [MQTT-3.10.3-2].
        (
            "SUBSCRIBE without a filter",
            packets::frame(0x82, &[0, 1, 0]),
            0x82,
        ),
        (
            "UNSUBSCRIBE without a filter",
            packets::frame(0xA2, &[0, 1, 0]),
            0x82,
        ),
        // Both QoS bits set: malformed [MQTT-3.3.1-4]. (Topic `a`, packet id 1, no
        // properties.)
        ("QoS 3", packets::frame(0x36, &[0, 1, b'a', 0, 1, 0]), 0x81),
        // DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]: malformed.
        (
            "DUP at QoS 0",
            packets::frame(0x38, &[0, 1, b'a', 0, b'x']),
            0x81,
        ),
        // A wildcard in a Topic Name [MQTT-3.3.2-2] [MQTT-4.7.0-1]: 0x90, Topic Name invalid.
        (
            "wildcard in the Topic Name",
            publish5("a/+", b"x", 0, 0, false, &Props::new()),
            0x90,
        ),
        // A Topic Filter that is not UTF-8 [MQTT-3.8.3-1] [MQTT-3.10.3-1]: malformed.
        (
            "SUBSCRIBE filter not UTF-8",
            packets::frame(0x82, &[0, 1, 0, 0, 2, 0xC3, 0x28, 0]),
            0x81,
        ),
        (
            "UNSUBSCRIBE filter not UTF-8",
            packets::frame(0xA2, &[0, 1, 0, 0, 2, 0xC3, 0x28]),
            0x81,
        ),
        // A zero-length Topic Name without a Topic Alias: a protocol error (section 3.3.2.3.4).
        (
            "empty topic, no alias",
            publish5("", b"x", 0, 0, false, &Props::new()),
            0x82,
        ),
        // Topics that are not well-formed UTF-8 [MQTT-1.5.4-1] [MQTT-3.3.2-1] (ill-formed; a
        // surrogate) or that hold U+0000 [MQTT-1.5.4-2]: malformed. (Topic length, topic,
        // property length 0, payload.)
        (
            "ill-formed UTF-8",
            packets::frame(0x30, &[0, 2, 0xC3, 0x28, 0, b'x']),
            0x81,
        ),
        (
            "a surrogate",
            packets::frame(0x30, &[0, 3, 0xED, 0xA0, 0x80, 0, b'x']),
            0x81,
        ),
        (
            "U+0000",
            packets::frame(0x30, &[0, 3, b'a', 0, b'b', 0, b'x']),
            0x81,
        ),
    ];
    // A Malformed Packet or Protocol Error: DISCONNECT with its reason code, then the connection
    // closes [MQTT-4.13.1-1], as it must after any DISCONNECT of 0x80 or more [MQTT-4.13.2-1].
    for (what, bytes, code) in cases {
        let mut raw = Raw::handshake5(broker.local_addr(), what).await;
        raw.send(&bytes).await;
        let frame = raw.expect().await;
        assert_eq!(disconnect_reason(&frame), code, "{what}: {frame:?}");
        match decode5(&frame) {
            Packet5::Disconnect(d) => assert!(
                d.properties.and_then(|p| p.reason_string).is_some(),
                "{what}: a reason string"
            ),
            other => panic!("{what}: {other:?}"),
        }
        raw.expect_closed().await;
    }
}

#[tokio::test]
async fn bare_disconnect_ends_cleanly_and_drops_the_will_but_0x04_publishes_it() {
    // mqttbytes guard: `e0 00` (reason 0x00 by omission, section 3.14.2.1) is a clean
    // DISCONNECT, and the will is discarded [MQTT-3.1.2-10] [MQTT-3.14.4-3]; reason 0x04
    // publishes it [MQTT-3.1.2-8].
    let broker = broker();
    let mut watcher = Raw::handshake5(broker.local_addr(), "watcher").await;
    let codes = watcher
        .subscribe5(1, &Props::new(), &[("wills/#", 0)])
        .await;
    assert_eq!(codes, vec![0]);
    for (client, disconnect) in [
        ("bare", vec![0xE0, 0x00]),
        ("with-will", disconnect5(0x04, &Props::new())),
    ] {
        let will = Will5 {
            topic: &format!("wills/{client}"),
            payload: b"gone",
            qos: 0,
            retain: false,
            props: Props::new(),
        };
        let (mut raw, ack) = Raw::connect5(
            broker.local_addr(),
            &connect5(client, true, 30, &Props::new(), Some(&will)),
        )
        .await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        raw.send(&disconnect).await;
        raw.expect_closed().await;
    }
    // Only the second will arrives; the barrier proves the first one would have come before.
    let frame = watcher.expect().await;
    let publish = common::v5::publish_of(&frame);
    assert_eq!(publish.topic, "wills/with-will");
    assert!(watcher.sync5().await.is_empty());
}

#[tokio::test]
async fn disconnect_may_not_raise_a_session_expiry_of_zero() {
    // Section 3.14.2.2.2: a protocol error, so the broker answers DISCONNECT 0x82.
    let broker = broker();
    let mut raw = Raw::handshake5(broker.local_addr(), "zero").await;
    raw.send(&disconnect5(0, &Props::new().u32(prop::SESSION_EXPIRY, 60)))
        .await;
    let frame = raw.expect().await;
    assert_eq!(disconnect_reason(&frame), 0x82);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_second_connect_gets_disconnect_0x82_and_never_a_second_connack() {
    // [MQTT-3.1.0-2] a second CONNECT is a Protocol Error: DISCONNECT 0x82 and close, and no
    // second CONNACK [MQTT-3.2.0-2].
    let broker = broker();
    let mut raw = Raw::handshake5(broker.local_addr(), "twice").await;
    raw.send(&connect5("twice", true, 30, &Props::new(), None))
        .await;
    let frame = raw.expect().await;
    assert_eq!(disconnect_reason(&frame), 0x82);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_first_packet_other_than_connect_closes_the_connection_unanswered() {
    // [MQTT-3.1.0-1] the first packet from a client must be CONNECT: an MQTT 5 AUTH, PUBLISH or
    // SUBSCRIBE in its place gets neither a CONNACK nor a DISCONNECT (no protocol version is
    // known yet to write one in), and the connection closes.
    let broker = broker();
    let cases: [(&str, Vec<u8>); 3] = [
        ("AUTH", vec![0xF0, 0x00]),
        (
            "PUBLISH",
            publish5("first/publish", b"x", 0, 0, false, &Props::new()),
        ),
        (
            "SUBSCRIBE",
            common::v5::subscribe5(1, &Props::new(), &[("first/#", 0)]),
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = Raw::connect(broker.local_addr()).await;
        raw.send(&bytes).await;
        if let Some(frame) = raw.recv().await {
            panic!("{what} first: the connection closes unanswered, got {frame:?}");
        }
    }
    // Their connections are over on the broker's side too.
    common::eventually(|| async { broker.metrics().snapshot().connections_current == 0 }).await;
}

#[tokio::test]
async fn a_disconnect_with_a_reason_code_the_spec_does_not_define_publishes_the_will() {
    // Only reason 0x00 discards the will [MQTT-3.1.2-10]; a client DISCONNECT with a code the
    // spec does not define for it (0x05) is not a normal one, so the will goes out, as for
    // 0x04 and the error codes (docs/conformance.md, "Choices where the spec leaves room").
    let broker = broker();
    let mut watcher = Raw::handshake5(broker.local_addr(), "odd-watcher").await;
    watcher
        .subscribe5(1, &Props::new(), &[("odd-wills/#", 0)])
        .await;
    let will = Will5 {
        topic: "odd-wills/device",
        payload: b"gone",
        qos: 0,
        retain: false,
        props: Props::new(),
    };
    let (mut raw, _) = Raw::connect5(
        broker.local_addr(),
        &connect5("odd-device", true, 30, &Props::new(), Some(&will)),
    )
    .await;
    raw.send(&disconnect5(0x05, &Props::new())).await;
    raw.expect_closed().await;
    let publish = common::v5::publish_of(&watcher.expect().await);
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        ("odd-wills/device", &b"gone"[..])
    );
}
