//! MQTT 5 flow control: Receive Maximum both ways (also on a resumed session), and the
//! client's Maximum Packet Size (a message larger is not sent, nor is its topic alias used).
//! Raw bytes in, mqttbytes' v5 reader out.

mod common;

use common::v5::{connect5, disconnect_reason, prop, publish5, publish_of, subscriber5, Props};
use common::{broker, broker_with, broker_with_hooks, packets, Raw};

#[tokio::test]
async fn the_broker_sends_no_more_unacknowledged_messages_than_the_client_receive_maximum() {
    // [MQTT-3.3.4-9] and [MQTT-4.9.0-1]: its send quota starts at the client's Receive Maximum.
    // The messages go as QoS 1 PUBLISH packets with DUP 0 [MQTT-4.3.2-2], each with a packet
    // id not in use [MQTT-4.3.2-1] [MQTT-2.2.1-4], in the order they were published
    // [MQTT-4.6.0-5].
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = subscriber5(
        addr,
        "rm-sub",
        Props::new().u16(prop::RECEIVE_MAXIMUM, 2),
        "rm",
        1,
    )
    .await;
    let mut publisher = Raw::handshake5(addr, "rm-pub").await;
    for n in 1..=5u16 {
        publisher
            .send(&publish5("rm", &[n as u8], 1, n, false, &Props::new()))
            .await;
    }
    for _ in 1..=5 {
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    let first = publish_of(&sub.expect().await);
    let second = publish_of(&sub.expect().await);
    assert!(sub.sync5().await.is_empty(), "a third before any PUBACK");
    sub.send(&packets::ack(0x40, first.pkid)).await;
    let third = publish_of(&sub.expect().await);
    assert_eq!(
        (&second.payload[..], &third.payload[..]),
        (&[2u8][..], &[3u8][..])
    );
    for message in [&first, &second, &third] {
        assert_eq!((message.qos as u8, message.dup), (1, false));
        assert_ne!(message.pkid, 0);
    }
    assert_ne!(first.pkid, second.pkid);
    assert_ne!(third.pkid, second.pkid, "the id of one still in flight");
    assert!(sub.sync5().await.is_empty(), "still two in flight");
}

#[tokio::test]
async fn a_session_resumed_with_a_smaller_receive_maximum_gets_its_messages_again_within_it() {
    // [MQTT-4.4.0-1] the unacknowledged messages go again with DUP, and [MQTT-3.3.4-9] no more
    // at once than the new connection's Receive Maximum: the rest as PUBACKs make room.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let kept = Props::new().u32(prop::SESSION_EXPIRY, 3600);
    let mut sub = subscriber5(addr, "rm-resume", kept.clone(), "rm/#", 1).await;
    let mut publisher = Raw::handshake5(addr, "rm-resume-pub").await;
    for n in 1..=3u16 {
        publisher
            .send(&publish5("rm/a", &[n as u8], 1, n, false, &Props::new()))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    for _ in 1..=3 {
        publish_of(&sub.expect().await); // not acknowledged
    }
    drop(sub);
    // Until the broker has seen the connection end, a fourth message could still be sent on it
    // (and would then rightly come again with DUP): wait for the end first.
    hooks.disconnected("rm-resume").await;
    // Queued while it is away: it goes after the three.
    publisher
        .send(&publish5("rm/a", &[4], 1, 4, false, &Props::new()))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);

    let props = kept.u16(prop::RECEIVE_MAXIMUM, 1);
    let (mut sub, ack) = Raw::connect5(addr, &connect5("rm-resume", false, 60, &props, None)).await;
    assert!(ack.session_present);
    for n in 1..=4u8 {
        let frames = sub.sync5().await;
        assert_eq!(
            frames.len(),
            1,
            "message {n}: one at a time, got {frames:?}"
        );
        let publish = publish_of(&frames[0]);
        assert_eq!(&publish.payload[..], &[n][..], "in order");
        assert_eq!(publish.dup, n <= 3, "DUP on the ones sent before");
        sub.send(&packets::ack(0x40, publish.pkid)).await;
    }
    assert!(sub.sync5().await.is_empty());
}

#[tokio::test]
async fn more_inbound_qos2_than_the_receive_maximum_gets_disconnect_0x93() {
    // [MQTT-3.3.4-7] the client stays within the Receive Maximum the broker announced.
    let broker = broker_with(|c| c.limits.max_inbound_qos2 = 2);
    let mut raw = Raw::handshake5(broker.local_addr(), "rm-in").await;
    for n in 1..=3u16 {
        raw.send(&publish5("q2", b"x", 2, n, false, &Props::new()))
            .await;
    }
    assert_eq!(raw.expect().await.byte1, 0x50);
    assert_eq!(raw.expect().await.byte1, 0x50);
    assert_eq!(disconnect_reason(&raw.expect().await), 0x93);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_message_larger_than_the_client_maximum_packet_size_is_not_sent() {
    // [MQTT-3.1.2-24] [MQTT-3.1.2-25]: discarded as if sent; the next one still comes.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = subscriber5(
        addr,
        "small",
        Props::new().u32(prop::MAXIMUM_PACKET_SIZE, 64),
        "big/#",
        1,
    )
    .await;
    let mut publisher = Raw::handshake5(addr, "big-pub").await;
    publisher
        .send(&publish5("big/1", &[0u8; 100], 1, 1, false, &Props::new()))
        .await;
    publisher
        .send(&publish5("big/2", b"fits", 1, 2, false, &Props::new()))
        .await;
    let got = publish_of(&sub.expect().await);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("big/2", &b"fits"[..])
    );
    sub.send(&packets::ack(0x40, got.pkid)).await;
    assert!(sub.sync5().await.is_empty());
    assert_eq!(broker.metrics().snapshot().too_large_dropped, 1, "counted");
}

#[tokio::test]
async fn a_topic_alias_on_a_dropped_message_is_not_used_later() {
    // The oversized first message on a topic would have introduced its alias; the client never
    // saw it, so the next message on that topic carries the topic again [MQTT-3.1.2-25].
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new()
        .u32(prop::MAXIMUM_PACKET_SIZE, 64)
        .u16(prop::TOPIC_ALIAS_MAXIMUM, 4);
    let mut sub = subscriber5(addr, "aliased-small", props, "big/#", 0).await;
    let mut publisher = Raw::handshake5(addr, "big-alias-pub").await;
    publisher
        .send(&publish5("big/1", &[0u8; 100], 0, 0, false, &Props::new()))
        .await;
    publisher
        .send(&publish5("big/1", b"fits", 0, 0, false, &Props::new()))
        .await;
    let got = publish_of(&sub.expect().await);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("big/1", &b"fits"[..])
    );
    assert_eq!(got.properties.and_then(|p| p.topic_alias), Some(1));
}

#[tokio::test]
async fn a_client_at_its_receive_maximum_still_gets_every_other_packet() {
    // [MQTT-3.3.4-10] the broker does not hold back packets other than PUBLISH while the
    // client's Receive Maximum is used up, and goes on with them [MQTT-4.9.0-3]: PINGRESP
    // [MQTT-3.12.4-1],
    // SUBACK and UNSUBACK come at once, the held message once a PUBACK makes room.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = subscriber5(
        addr,
        "rm-full",
        Props::new().u16(prop::RECEIVE_MAXIMUM, 1),
        "full",
        1,
    )
    .await;
    let mut publisher = Raw::handshake5(addr, "rm-full-pub").await;
    for n in 1..=2u16 {
        publisher
            .send(&publish5("full", &[n as u8], 1, n, false, &Props::new()))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    let first = publish_of(&sub.expect().await);
    sub.send(&[0xC0, 0x00]).await;
    assert_eq!(
        sub.expect().await.byte1,
        0xD0,
        "PINGRESP while the window is full"
    );
    sub.send(&common::v5::subscribe5(7, &Props::new(), &[("other", 0)]))
        .await;
    let suback = sub.expect().await;
    assert_eq!((suback.byte1, suback.pid()), (0x90, 7));
    sub.send(&common::v5::unsubscribe5(8, &["other"])).await;
    let unsuback = sub.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 8));
    sub.send(&packets::ack(0x40, first.pkid)).await;
    let second = publish_of(&sub.expect().await);
    assert_eq!(&second.payload[..], &[2][..]);
}

#[tokio::test]
async fn a_reason_string_is_left_out_where_the_packet_would_exceed_the_client_maximum_size() {
    // [MQTT-3.9.2-1] a SUBACK, [MQTT-3.11.2-1] an UNSUBACK, [MQTT-3.4.2-2] a PUBACK and
    // [MQTT-3.14.2-3] a DISCONNECT carry their Reason String only where the packet then stays
    // within the client's Maximum Packet Size; the reason codes are sent either way. (With a
    // larger maximum they come with one: tests/v5_subscribe.rs, tests/v5_errors.rs.)
    let broker = broker();
    let props = Props::new().u32(prop::MAXIMUM_PACKET_SIZE, 16);
    let (mut client, _) = Raw::connect5(
        broker.local_addr(),
        &connect5("tight", true, 60, &props, None),
    )
    .await;
    client
        .send(&common::v5::subscribe5(
            1,
            &Props::new(),
            &[("a/#/b", 0), ("ok", 1)],
        ))
        .await;
    let suback = client.expect().await;
    assert_eq!(suback.byte1, 0x90);
    assert_eq!(common::v5::ack_codes(&suback), vec![0x8F, 1]);
    assert_eq!(common::v5::ack_reason_string(&suback), None);
    client.send(&common::v5::unsubscribe5(2, &["never"])).await;
    let unsuback = client.expect().await;
    assert_eq!(unsuback.byte1, 0xB0);
    assert_eq!(common::v5::ack_codes(&unsuback), vec![0x11]);
    assert_eq!(common::v5::ack_reason_string(&unsuback), None);
    // A payload that says it is UTF-8 and is not: PUBACK 0x99 (packet id, reason code, and no
    // property block, or an empty one).
    client
        .send(&publish5(
            "pfi",
            &[0xFF],
            1,
            9,
            false,
            &Props::new().byte(prop::PAYLOAD_FORMAT, 1),
        ))
        .await;
    let puback = client.expect().await;
    assert_eq!(
        (puback.byte1, puback.pid(), puback.body[2]),
        (0x40, 9, 0x99)
    );
    assert!(
        puback.body.len() == 3 || puback.body[3..] == [0],
        "{puback:?}"
    );
    // A SUBSCRIBE without a filter: DISCONNECT 0x82, without its reason string.
    client.send(&packets::frame(0x82, &[0, 3, 0])).await;
    let frame = client.expect().await;
    assert_eq!(frame.body, vec![0x82, 0], "reason code, empty properties");
    client.expect_closed().await;
}
