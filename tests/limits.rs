//! Per-client limits (`[limits]`): each is configurable, logged and counted, and affects only the
//! client that hit it.

mod common;

use std::time::{Duration, Instant};

use common::packets::{self, parse_publish, ConnectSpec};
use common::{broker_with, broker_with_hooks, v5, Raw};
use switchboard::hooks::DisconnectReason;
use switchboard::BackgroundBroker;

#[tokio::test]
async fn subscriptions_over_the_per_client_limit_get_0x80() {
    let broker = broker_with(|c| c.limits.max_subscriptions_per_client = 2);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "many", true).await;
    raw.subscribe(1, &[("a", 0), ("b", 1), ("c", 2)], &[0, 1, 0x80])
        .await;
    // Re-subscribing to a filter it holds replaces it: not a new subscription.
    raw.subscribe(2, &[("b", 2)], &[2]).await;
    raw.subscribe(3, &[("d", 0)], &[0x80]).await;
    // After an unsubscribe there is room again.
    raw.send(&packets::unsubscribe(4, &["a"])).await;
    assert_eq!(raw.expect().await.byte1, 0xB0);
    raw.subscribe(5, &[("d", 0)], &[0]).await;
    assert_eq!(broker.metrics().snapshot().limits_hit, 2);
}

/// A broker taking topics of at most 16 bytes and 3 levels.
fn topic_limited_broker() -> BackgroundBroker {
    broker_with(|c| {
        c.limits.max_topic_length = 16;
        c.limits.max_topic_levels = 3;
    })
}

#[tokio::test]
async fn topics_over_the_length_or_level_limit() {
    let broker = topic_limited_broker();
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    // Filters over a limit are refused, and the connection stays.
    witness
        .subscribe(
            1,
            &[
                ("a/b/c", 0),
                ("a/b/c/d", 0),
                ("this/filter/is/way/too/long", 0),
            ],
            &[0, 0x80, 0x80],
        )
        .await;
    // A QoS 0 PUBLISH over a limit closes only that connection (3.1.1 has no refusal short of
    // it, and no acknowledgement to carry one).
    let (mut deep, _) = Raw::handshake(addr, "deep", true).await;
    deep.send(&packets::publish("a/b/c/d", b"x", 0, 0, false, false))
        .await;
    deep.expect_closed().await;
    let (mut long, _) = Raw::handshake(addr, "long", true).await;
    long.send(&packets::publish(
        "abcdefghijklmnopq",
        b"x",
        0,
        0,
        false,
        false,
    ))
    .await;
    long.expect_closed().await;
    let (mut fine, _) = Raw::handshake(addr, "fine", true).await;
    fine.send(&packets::publish("a/b/c", b"ok", 0, 0, false, false))
        .await;
    fine.sync().await;
    let got: Vec<_> = witness.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"ok".to_vec());
    assert_eq!(broker.metrics().snapshot().limits_hit, 4);
}

#[tokio::test]
async fn an_mqtt311_qos1_or_2_publish_over_the_topic_limits_is_acknowledged_and_dropped() {
    let broker = topic_limited_broker();
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    witness.subscribe(1, &[("a/#", 1)], &[1]).await;
    let (mut device, _) = Raw::handshake(addr, "device", false).await;
    // 3.1.1 has no negative PUBACK: the refused ones are acknowledged as usual (as a publish the
    // ACL denies), in their place among the others [MQTT-4.6.0-2]; closing the connection
    // would have the device send them again after its reconnect, forever [MQTT-4.4.0-1].
    let mut burst = packets::publish("a/b/c", b"1", 1, 1, false, false);
    burst.extend(packets::publish("a/b/c/d", b"2", 1, 2, false, false));
    burst.extend(packets::publish(
        "a/abcdefghijklmnopq",
        b"3",
        2,
        3,
        false,
        false,
    ));
    burst.extend(packets::publish("a/b", b"4", 1, 4, false, false));
    device.send(&burst).await;
    let acks = device.sync_acks().await;
    assert_eq!(acks, vec![(0x40, 1), (0x40, 2), (0x50, 3), (0x40, 4)]);
    // The refused QoS 2 id completes its handshake [MQTT-4.3.3-2]: a DUP re-send of it is not
    // routed either, and PUBREL gets PUBCOMP.
    device
        .send(&packets::publish(
            "a/abcdefghijklmnopq",
            b"3",
            2,
            3,
            false,
            true,
        ))
        .await;
    device.send(&packets::ack(0x62, 3)).await;
    let acks = device.sync_acks().await;
    assert_eq!(acks, vec![(0x50, 3), (0x70, 3)]);
    let got = witness.drain_payloads().await;
    assert_eq!(
        got,
        vec![b"1".to_vec(), b"4".to_vec()],
        "the refused ones went nowhere, and the connection stayed"
    );
    assert_eq!(broker.metrics().snapshot().limits_hit, 3);
}

#[tokio::test]
async fn an_mqtt5_publish_over_the_topic_limits_is_refused_with_0x90_and_the_connection_stays() {
    let broker = topic_limited_broker();
    let addr = broker.local_addr();
    let props = v5::Props::new();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    witness.subscribe(1, &[("a/#", 1)], &[1]).await;
    let connect = v5::connect5("deep5", true, 60, &props, None);
    let (mut publisher, _) = Raw::connect5(addr, &connect).await;
    // QoS 1 and 2 over the levels or the length: PUBACK / PUBREC with 0x90 Topic Name Invalid
    // ("not accepted by this Server", section 3.4.2.1), in their place among the others
    // [MQTT-4.6.0-2], and no PUBREL is due after the error PUBREC (section 4.3.3).
    let mut burst = v5::publish5("a/b/c", b"1", 1, 1, false, &props);
    burst.extend(v5::publish5("a/b/c/d", b"2", 1, 2, false, &props));
    burst.extend(v5::publish5(
        "a/abcdefghijklmnopq",
        b"3",
        2,
        3,
        false,
        &props,
    ));
    burst.extend(v5::publish5("a/b", b"4", 1, 4, false, &props));
    publisher.send(&burst).await;
    let acks = v5::ack_reasons(&publisher.sync5().await);
    assert_eq!(
        acks,
        vec![(0x40, 1, 0), (0x40, 2, 0x90), (0x50, 3, 0x90), (0x40, 4, 0)]
    );
    let got: Vec<Vec<u8>> = witness.drain_payloads().await;
    assert_eq!(
        got,
        vec![b"1".to_vec(), b"4".to_vec()],
        "the refused ones went nowhere"
    );
    assert_eq!(broker.metrics().snapshot().limits_hit, 2);
    // QoS 0 has no acknowledgement to refuse with: DISCONNECT 0x90 says it.
    publisher
        .send(&v5::publish5("a/b/c/d", b"5", 0, 0, false, &props))
        .await;
    assert_eq!(v5::disconnect_reason(&publisher.expect().await), 0x90);
    publisher.expect_closed().await;
    assert_eq!(broker.metrics().snapshot().limits_hit, 3);
}

#[tokio::test]
async fn too_many_qos2_messages_awaiting_pubrel_close_the_connection() {
    let broker = broker_with(|c| c.limits.max_inbound_qos2 = 2);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "hoarder", true).await;
    for pid in [1u16, 2] {
        raw.send(&packets::publish("q2", b"x", 2, pid, false, false))
            .await;
        assert_eq!(raw.expect().await.byte1, 0x50);
    }
    // A re-sent one is still answered: it is not a new message.
    raw.send(&packets::publish("q2", b"x", 2, 1, false, true))
        .await;
    assert_eq!(raw.expect().await.byte1, 0x50);
    // Releasing one makes room.
    raw.send(&packets::ack(0x62, 1)).await;
    assert_eq!(raw.expect().await.byte1, 0x70);
    raw.send(&packets::publish("q2", b"x", 2, 3, false, false))
        .await;
    assert_eq!(raw.expect().await.byte1, 0x50);
    // Now 2 and 3 await PUBREL: a third closes the connection.
    raw.send(&packets::publish("q2", b"x", 2, 4, false, false))
        .await;
    raw.expect_closed().await;
    assert_eq!(broker.metrics().snapshot().limits_hit, 1);
}

#[tokio::test]
async fn keep_alive_is_capped_at_the_maximum() {
    // [MQTT-3.1.2-24] applied with the broker's maximum when the client asks for none (0).
    let (broker, mut hooks) =
        broker_with_hooks(|c| c.limits.max_keep_alive = Duration::from_secs(1));
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::connect("forever", true, 0)).await;
    assert_eq!(raw.expect().await.body, vec![0, 0]);
    let connected = Instant::now();
    raw.expect_closed().await;
    assert!(connected.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        hooks.disconnected("forever").await.reason,
        DisconnectReason::KeepAliveTimeout
    );
}

#[tokio::test]
async fn connections_over_the_per_address_rate_are_refused() {
    let broker = broker_with(|c| {
        c.limits.max_connection_rate = 5;
        c.limits.rate_limit_loopback = true;
    });
    // Ten connections back to back: a burst of 5 is allowed, the rest are closed at once.
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(Raw::connect(broker.local_addr()).await);
    }
    let accepted = common::connects_accepted(&mut sockets).await;
    // One token may have come back if the ten connects took over 200 ms.
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    assert_eq!(broker.metrics().snapshot().limits_hit, 10 - accepted);
}

/// A topic of `levels` levels of `level` (`a/a/...`).
fn deep_topic(level: &str, levels: usize) -> String {
    vec![level; levels].join("/")
}

#[tokio::test]
async fn a_will_topic_over_the_length_or_level_limit_refuses_the_connect() {
    // A will is published as a PUBLISH is, and may be retained: its topic is held to the same
    // limits. MQTT 5 refuses with 0x90 Topic Name invalid ("the Will Topic Name is not
    // malformed, but is not accepted by this Server", section 3.2.2.2); 3.1.1 with 5 Not
    // authorized; the connection is closed after the CONNACK [MQTT-3.2.2-5].
    let broker = broker_with(|_| {}); // defaults: 1,024 bytes, 32 levels
    let addr = broker.local_addr();
    let too_deep = deep_topic("a", 33);
    let too_long = "l".repeat(1025);
    let cases = [
        (4, too_deep.as_str(), 5),
        (5, &too_deep, 0x90),
        (4, &too_long, 5),
    ];
    for (level, topic, code) in cases {
        let spec = ConnectSpec {
            level,
            client_id: "deep-will",
            will: Some((topic, b"gone", 1, true)),
            ..Default::default()
        };
        let (mut refused, got) = Raw::connect_with(addr, spec).await;
        assert_eq!(
            got,
            code,
            "MQTT level {level}, a will topic of {} bytes",
            topic.len()
        );
        refused.expect_closed().await;
    }
    assert_eq!(broker.metrics().snapshot().limits_hit, 3);
    // At the limits it is accepted.
    let spec = ConnectSpec {
        client_id: "deep-will",
        will: Some((&deep_topic("a", 32), b"gone", 1, true)),
        ..Default::default()
    };
    assert_eq!(Raw::connect_with(addr, spec).await.1, 0);
}

#[tokio::test]
async fn topics_of_the_most_levels_are_routed_retained_and_cleared() {
    // With the limits raised to what the protocol allows (65,535 bytes [MQTT-4.7.3-3]), a topic
    // of 32,768 levels is matched by a filter of as many, retained, cleared and unsubscribed
    // from. Before 2026-12-05 matching, removing and freeing recursed per level, and a retained
    // will on such a topic overflowed a worker's stack and aborted the broker.
    let broker = broker_with(|c| {
        c.limits.max_topic_length = 65_535;
        c.limits.max_topic_levels = 40_000;
    });
    let addr = broker.local_addr();
    let deep = deep_topic("a", 32_768);
    let all_plus = deep_topic("+", 32_768);
    assert_eq!((deep.len(), all_plus.len()), (65_535, 65_535));
    let (mut plus, _) = Raw::handshake(addr, "plus", true).await;
    plus.subscribe(1, &[(&all_plus, 1)], &[1]).await;
    let (mut everything, _) = Raw::handshake(addr, "everything", true).await;
    everything.subscribe(1, &[("#", 1)], &[1]).await;
    let spec = ConnectSpec {
        client_id: "deep-will",
        will: Some((&deep, b"gone", 1, true)),
        ..Default::default()
    };
    let (gone, code) = Raw::connect_with(addr, spec).await;
    assert_eq!(code, 0);
    drop(gone);
    for subscriber in [&mut plus, &mut everything] {
        let will = parse_publish(&subscriber.expect().await);
        assert_eq!(
            (will.topic.len(), &will.payload[..]),
            (65_535, &b"gone"[..])
        );
        assert_eq!(will.topic, deep);
    }
    // Retained: a later subscriber to `#` gets it; cleared, the next one does not.
    let (mut late, _) = Raw::handshake(addr, "late", true).await;
    late.subscribe(1, &[("#", 0)], &[0]).await;
    let retained: Vec<_> = late.sync().await.iter().map(parse_publish).collect();
    assert_eq!(retained.len(), 1);
    assert!(retained[0].retain && retained[0].topic == deep);
    late.send(&packets::publish(&deep, b"", 0, 0, true, false))
        .await;
    late.sync().await;
    let (mut later, _) = Raw::handshake(addr, "later", true).await;
    later.subscribe(1, &[("#", 0)], &[0]).await;
    assert!(
        later.sync().await.is_empty(),
        "the retained message is cleared"
    );
    // The clearing message itself reaches the subscribers [MQTT-3.3.1-10], with RETAIN 0
    // [MQTT-3.3.1-9].
    let cleared: Vec<_> = plus.sync().await.iter().map(parse_publish).collect();
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].payload.is_empty() && !cleared[0].retain);
    // Unsubscribed, the deep filter matches nothing more; the broker serves on.
    plus.send(&packets::unsubscribe(2, &[&all_plus])).await;
    assert_eq!(plus.expect().await.byte1, 0xB0);
    late.send(&packets::publish(&deep, b"after", 0, 0, false, false))
        .await;
    late.sync().await;
    assert!(plus.sync().await.is_empty());
}
