//! Bad input closes that one connection, with a log line and a counted protocol error; it never
//! panics a Session and never reaches the Registry.

mod common;

use common::packets::{self, frame};
use common::{broker, broker_with, Frame, Raw};
use switchboard::registry::GetStats;

/// Sends `bad` after a valid CONNECT and asserts the connection is closed (a protocol violation
/// closes the connection it came on [MQTT-4.8.0-1]), that the broker keeps serving others, and
/// that the error was counted.
async fn closes_after_connect(bad: &[u8]) {
    let broker = broker();
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    witness.subscribe(1, &[("w", 0)], &[0]).await;
    let (mut raw, _) = Raw::handshake(addr, "offender", true).await;
    raw.send(bad).await;
    raw.expect_closed().await;
    common::eventually(|| async { broker.metrics().snapshot().protocol_errors == 1 }).await;
    // Everyone else is unaffected.
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("w", b"still here", 0, 0, false, false))
        .await;
    publisher.sync().await;
    assert_eq!(witness.sync().await.len(), 1);
}

#[tokio::test]
async fn reserved_fixed_header_flags() {
    // [MQTT-2.2.2-1] [MQTT-2.2.2-2]
    closes_after_connect(&[0xC1, 0x00]).await; // PINGREQ with flags
    closes_after_connect(&frame(0x80, &[0, 1, 0, 1, b'a', 0])).await; // SUBSCRIBE flags 0000 [MQTT-3.8.1-1]
    closes_after_connect(&frame(0xA0, &[0, 1, 0, 1, b'a'])).await; // UNSUBSCRIBE flags [MQTT-3.10.1-1]
    closes_after_connect(&frame(0x60, &[0, 1])).await; // PUBREL flags [MQTT-3.6.1-1]
}

#[tokio::test]
async fn invalid_packet_types() {
    closes_after_connect(&[0x00, 0x00]).await;
    closes_after_connect(&[0xF0, 0x00]).await;
    closes_after_connect(&[0x20, 0x02, 0x00, 0x00]).await; // CONNACK is server-to-client
    closes_after_connect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await; // SUBACK likewise
}

#[tokio::test]
async fn bad_remaining_length() {
    closes_after_connect(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await; // five length bytes
    closes_after_connect(&[0x40, 0x03, 0x00, 0x01, 0x00]).await; // PUBACK of length 3
}

#[tokio::test]
async fn publish_rules() {
    closes_after_connect(&packets::publish("a/+", b"x", 0, 0, false, false)).await; // [MQTT-3.3.2-2]
    closes_after_connect(&packets::publish("a/#", b"x", 1, 1, false, false)).await;
    closes_after_connect(&packets::publish("", b"x", 0, 0, false, false)).await; // [MQTT-4.7.3-1]
    closes_after_connect(&frame(0x36, &[0, 1, b'a', 0, 1])).await; // QoS 3 [MQTT-3.3.1-4]
    closes_after_connect(&packets::publish("a", b"x", 0, 0, false, true)).await; // DUP on QoS 0 [MQTT-3.3.1-2]
    closes_after_connect(&packets::publish("a", b"x", 1, 0, false, false)).await; // packet id 0 [MQTT-2.3.1-1]
    closes_after_connect(&frame(0x30, &[0, 2, 0xC3, 0x28])).await; // invalid UTF-8 [MQTT-1.5.3-1] [MQTT-3.3.2-1]
    closes_after_connect(&frame(0x30, &[0, 3, b'a', 0, b'b'])).await; // U+0000 [MQTT-1.5.3-2] [MQTT-4.7.3-2]
    closes_after_connect(&frame(0x30, &[0, 9, b'a'])).await; // topic longer than the packet
}

#[tokio::test]
async fn subscribe_rules() {
    closes_after_connect(&frame(0x82, &[0, 1])).await; // no filter [MQTT-3.8.3-3]
    closes_after_connect(&frame(0x82, &[0, 1, 0, 1, b'a', 0x04])).await; // reserved bits [MQTT-3-8.3-4]
    closes_after_connect(&frame(0x82, &[0, 1, 0, 1, b'a', 0x03])).await; // QoS 3 [MQTT-3-8.3-4]
    closes_after_connect(&frame(0xA2, &[0, 1])).await; // UNSUBSCRIBE without filter [MQTT-3.10.3-2]
    closes_after_connect(&frame(0x82, &[0, 1, 0, 2, 0xFF, 0xFE, 0])).await; // invalid UTF-8 filter [MQTT-3.8.3-1]
    closes_after_connect(&frame(0x82, &[0, 1, 0, 3, b'a', 0, b'b', 0])).await; // U+0000 in a filter [MQTT-4.7.3-2]
    closes_after_connect(&frame(0xA2, &[0, 1, 0, 2, 0xFF, 0xFE])).await; // invalid UTF-8 in UNSUBSCRIBE [MQTT-3.10.3-1]
}

#[tokio::test]
async fn packets_over_the_size_limit() {
    let broker = broker_with(|c| c.limits.max_packet_size = 1024);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "big", true).await;
    // Only the header is sent: the broker refuses on the announced length, before buffering.
    raw.send(&[0x30, 0x80, 0x80, 0x04]).await;
    raw.expect_closed().await;
    let (mut fits, _) = Raw::handshake(broker.local_addr(), "fits", true).await;
    fits.send(&packets::publish("t", &[0u8; 1000], 1, 1, false, false))
        .await;
    assert_eq!(fits.expect().await.byte1, 0x40);
}

#[tokio::test]
async fn an_mqtt311_qos1_or_2_publish_over_the_size_limit_is_acknowledged_and_dropped() {
    let broker = broker_with(|c| c.limits.max_packet_size = 1024);
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    witness.subscribe(1, &[("cam/#", 1)], &[1]).await;
    let (mut camera, _) = Raw::handshake(addr, "camera", false).await;
    // 3.1.1 has no negative acknowledgement: acknowledged and dropped, in order among the
    // others [MQTT-4.6.0-2], the connection kept, so that a client that queues does not send
    // it again after a reconnect [MQTT-4.4.0-1]. Its bytes are skipped, never held: 64 KiB
    // past the limit of 1 KiB.
    let mut burst = packets::publish("cam/1", b"small", 1, 1, false, false);
    burst.extend(packets::publish(
        "cam/1",
        &[7u8; 65_536],
        1,
        2,
        false,
        false,
    ));
    burst.extend(packets::publish("cam/1", &[8u8; 4_000], 2, 3, false, false));
    burst.extend(packets::publish("cam/1", b"after", 1, 4, false, false));
    camera.send(&burst).await;
    let acks = camera.sync_acks().await;
    assert_eq!(acks, vec![(0x40, 1), (0x40, 2), (0x50, 3), (0x40, 4)]);
    // The dropped QoS 2 message's flow completes [MQTT-4.3.3-2].
    camera.send(&packets::ack(0x62, 3)).await;
    assert_eq!(
        camera.expect().await,
        Frame {
            byte1: 0x70,
            body: vec![0, 3]
        }
    );
    assert_eq!(
        witness.drain_payloads().await,
        vec![b"small".to_vec(), b"after".to_vec()]
    );
    assert_eq!(broker.metrics().snapshot().limits_hit, 2);
}

#[tokio::test]
async fn bad_input_before_connect_never_reaches_the_registry() {
    let broker = broker();
    for bad in [
        &[0x10, 0x02, 0x00, 0x04][..],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut raw = Raw::connect(broker.local_addr()).await;
        raw.send(bad).await;
        raw.expect_closed().await;
    }
    let stats = broker.registry().send(GetStats).await.unwrap();
    assert_eq!(stats.clients_online + stats.sessions_offline, 0);
}

#[tokio::test]
async fn random_garbage_after_connect_never_takes_the_broker_down() {
    // A small deterministic stream of garbage (xorshift), not a fuzzer: every connection must end
    // cleanly or stay usable, and the broker must keep answering.
    let broker = broker();
    let addr = broker.local_addr();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..40 {
        let (mut raw, _) = Raw::handshake(addr, &format!("fuzz-{round}"), true).await;
        let mut garbage = Vec::new();
        for _ in 0..(16 + round * 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            garbage.push(seed as u8);
        }
        raw.send(&garbage).await;
        drop(raw);
    }
    let (mut alive, _) = Raw::handshake(addr, "alive", true).await;
    alive.ping().await;
}

/// Packets read before a malformed one in the same read are still served: the connection is
/// closed for the bad packet [MQTT-4.8.0-1], but the PUBLISH packets in front of it were valid
/// and reach their subscriber (a Session routes a read burst at the end of its turn, and a
/// close routes what is still queued).
#[tokio::test]
async fn publishes_read_in_front_of_a_malformed_packet_are_still_delivered() {
    let broker = broker();
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    witness.subscribe(1, &[("w", 1)], &[1]).await;
    let (mut raw, _) = Raw::handshake(addr, "offender", true).await;
    let mut burst = packets::publish("w", b"first", 0, 0, false, false);
    burst.extend(packets::publish("w", b"second", 1, 1, false, false));
    burst.extend([0xC1, 0x00]); // PINGREQ with flags [MQTT-2.2.2-2]
    raw.send(&burst).await;
    // The PUBACK of the valid QoS 1 PUBLISH may come before the close; nothing else does.
    while let Some(frame) = raw.recv().await {
        assert_eq!((frame.packet_type(), frame.pid()), (4, 1), "{frame:?}");
    }
    for payload in [&b"first"[..], b"second"] {
        let publish = packets::parse_publish(&witness.expect().await);
        assert_eq!(publish.payload, payload);
        if publish.qos > 0 {
            witness.send(&packets::ack(0x40, publish.pid)).await;
        }
    }
}
