//! Retained messages (MQTT 3.1.1 section 3.3.1.3).

mod common;

use common::durable::{kill_9, start_broker_with};
use common::packets::{self, parse_publish};
use common::{broker, broker_with, Raw};

#[tokio::test]
async fn retained_messages_are_stored_replaced_deleted_and_matched_by_wildcards() {
    let broker = broker();
    let addr = broker.local_addr();
    let (mut publisher, _) = Raw::handshake(addr, "retainer", true).await;
    let publish = |topic: &str, payload: &[u8], qos: u8| {
        packets::publish(topic, payload, qos, 1, true, false)
    };
    publisher.send(&publish("gate/1/state", b"closed", 1)).await;
    publisher.send(&publish("gate/1/state", b"open", 1)).await; // [MQTT-3.3.1-5] replaces
    publisher.send(&publish("gate/2/state", b"closed", 0)).await;
    publisher.send(&publish("gate/3/state", b"gone", 0)).await;
    publisher.send(&publish("gate/3/state", b"", 0)).await; // [MQTT-3.3.1-10] deletes
    publisher
        .send(&publish("$monitor/retained", b"hidden", 0))
        .await;
    publisher.sync().await;

    // [MQTT-3.3.1-6] [MQTT-3.3.1-8] sent on subscribe with RETAIN 1, matched through wildcards.
    let (mut sub, _) = Raw::handshake(addr, "late", true).await;
    sub.subscribe(1, &[("gate/+/state", 1)], &[1]).await;
    let mut got: Vec<(String, Vec<u8>, bool, u8)> = sub
        .sync()
        .await
        .iter()
        .map(parse_publish)
        .map(|p| (p.topic, p.payload, p.retain, p.qos))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("gate/1/state".into(), b"open".to_vec(), true, 1),
            ("gate/2/state".into(), b"closed".to_vec(), true, 0),
        ]
    );
    let (mut all, _) = Raw::handshake(addr, "all", true).await;
    all.subscribe(1, &[("#", 0)], &[0]).await;
    let topics: Vec<String> = all
        .sync()
        .await
        .iter()
        .map(|f| parse_publish(f).topic)
        .collect();
    assert!(
        !topics.contains(&"$monitor/retained".to_string()),
        "[MQTT-4.7.2-1]"
    );

    // [MQTT-3.3.1-9] a live message to an existing subscription has RETAIN 0.
    publisher.send(&publish("gate/2/state", b"open", 0)).await;
    publisher.sync().await;
    let live: Vec<_> = sub.sync().await.iter().map(parse_publish).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (&live[0].payload[..], live[0].retain),
        (&b"open"[..], false)
    );
}

#[tokio::test]
async fn empty_retained_message_is_forwarded_but_not_stored() {
    // [MQTT-3.3.1-11]
    let broker = broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "sub", true).await;
    sub.subscribe(1, &[("t", 0)], &[0]).await;
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("t", b"", 0, 0, true, false))
        .await;
    publisher.sync().await;
    let forwarded = parse_publish(&sub.expect().await);
    assert_eq!(forwarded.payload, b"".to_vec());
    let (mut late, _) = Raw::handshake(addr, "late", true).await;
    late.subscribe(1, &[("t", 0)], &[0]).await;
    assert!(late.sync().await.is_empty());
}

#[tokio::test]
async fn resubscribing_resends_retained_messages() {
    // [MQTT-3.8.4-3]
    let broker = broker();
    let addr = broker.local_addr();
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("r", b"v", 0, 0, true, false))
        .await;
    publisher.sync().await;
    let (mut sub, _) = Raw::handshake(addr, "sub", true).await;
    for pid in 1..=2 {
        sub.subscribe(pid, &[("r", 0)], &[0]).await;
        let got = sub.sync().await;
        assert_eq!(got.len(), 1);
        assert!(parse_publish(&got[0]).retain);
    }
}

/// Publishes `count` retained QoS 0 messages on `many/{i}` and waits until they are stored.
async fn store_many_retained(addr: std::net::SocketAddr, count: usize) {
    let (mut publisher, _) = Raw::handshake(addr, "many-retainer", true).await;
    let mut burst = Vec::new();
    for i in 0..count {
        burst.extend(packets::publish(
            &format!("many/{i}"),
            &[0x5A; 64],
            0,
            0,
            true,
            false,
        ));
    }
    publisher.send(&burst).await;
    publisher.sync().await;
}

#[tokio::test]
async fn a_qos0_subscriber_gets_every_retained_message_however_many_its_output_bound_holds() {
    // [MQTT-3.3.1-6] every retained message matching a new subscription is sent. Live QoS 0
    // traffic for a client that does not keep up is dropped at `max_outbound_bytes`; the
    // retained messages of a SUBSCRIBE (here 300 times that bound) wait for room instead.
    const COUNT: usize = 5_000;
    let broker = broker_with(|c| c.sessions.max_outbound_bytes = 1024);
    let addr = broker.local_addr();
    store_many_retained(addr, COUNT).await;
    let (mut sub, _) = Raw::handshake(addr, "dashboard", true).await;
    sub.subscribe(1, &[("many/#", 0)], &[0]).await;
    // The UNSUBACK of this barrier comes after every retained message: an acknowledgement
    // does not overtake what was routed to the client before it.
    let got = sub.sync().await;
    let mut topics: Vec<String> = got.iter().map(|f| parse_publish(f).topic).collect();
    assert_eq!(
        topics.len(),
        COUNT,
        "every retained message, before the UNSUBACK"
    );
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), COUNT, "each once");
    assert!(
        got.iter().all(|f| parse_publish(f).retain),
        "[MQTT-3.3.1-8]"
    );
    assert_eq!(broker.metrics().snapshot().qos0_dropped_slow_consumer, 0);

    // Live traffic still flows once the retained messages are out.
    let (mut publisher, _) = Raw::handshake(addr, "live", true).await;
    publisher
        .send(&packets::publish("many/live", b"now", 0, 0, false, false))
        .await;
    publisher.sync().await;
    let live: Vec<_> = sub.sync().await.iter().map(parse_publish).collect();
    assert_eq!(live.len(), 1);
    assert_eq!((&live[0].payload[..], live[0].retain), (&b"now"[..], false));
}

#[tokio::test]
async fn a_second_subscribe_is_acknowledged_after_the_retained_messages_of_the_first() {
    // Retained messages arrive after their SUBACK [MQTT-3.8.4-3], and what was routed to the
    // client before an acknowledgement arrives before it: with the first SUBSCRIBE's retained
    // messages still waiting for room in the output, the second SUBACK comes after all of
    // them, and the second subscription's (QoS 1) retained message after its SUBACK.
    const COUNT: usize = 2_000;
    let broker = broker_with(|c| c.sessions.max_outbound_bytes = 1024);
    let addr = broker.local_addr();
    store_many_retained(addr, COUNT).await;
    let (mut publisher, _) = Raw::handshake(addr, "other", true).await;
    publisher
        .send(&packets::publish("other/x", b"q1", 1, 1, true, false))
        .await;
    publisher.sync().await;

    let (mut sub, _) = Raw::handshake(addr, "two-subscribes", true).await;
    let mut both = packets::subscribe(1, &[("many/#", 0)]);
    both.extend(packets::subscribe(2, &[("other/#", 1)]));
    sub.send(&both).await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("other/x") {
        let frame = sub.expect().await;
        seen.push(match frame.packet_type() {
            9 => format!("suback {}", frame.pid()),
            3 => parse_publish(&frame).topic,
            other => panic!("unexpected packet type {other}"),
        });
    }
    let many = |s: &String| s.starts_with("many/");
    assert_eq!(seen[0], "suback 1");
    assert!(
        seen[1..=COUNT].iter().all(many),
        "the first one's retained messages"
    );
    assert_eq!(seen[COUNT + 1], "suback 2");
    assert_eq!(seen[COUNT + 2..], ["other/x"]);
}

/// A new client `id` subscribes to `filters` (QoS 0 each); the retained messages it gets, as
/// (topic, payload), sorted.
async fn retained_on_subscribing(
    addr: std::net::SocketAddr,
    id: &str,
    filters: &[(&str, u8)],
) -> Vec<(String, Vec<u8>)> {
    let (mut late, _) = Raw::handshake(addr, id, true).await;
    let granted = vec![0; filters.len()];
    late.subscribe(1, filters, &granted).await;
    let mut got: Vec<(String, Vec<u8>)> = late
        .sync()
        .await
        .iter()
        .map(parse_publish)
        .map(|p| (p.topic, p.payload))
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn a_retained_limit_refuses_new_topics_but_not_updates_or_clears() {
    // limits.max_retained_messages (off by default): at the limit, a retained message for a
    // topic with none is delivered to the current subscribers but not stored (a configured
    // exception to [MQTT-3.3.1-5]) and counted in limits_hit; stored topics are still replaced
    // [MQTT-3.3.1-5] and cleared [MQTT-3.3.1-10], and a clear frees a place. The broker's own
    // $SYS topics, retained beside them, do not count.
    let broker = broker_with(|c| c.limits.max_retained_messages = 2);
    let addr = broker.local_addr();
    let (mut watch, _) = Raw::handshake(addr, "watch", true).await;
    watch.subscribe(1, &[("gate/+/state", 0)], &[0]).await;
    let (mut publisher, _) = Raw::handshake(addr, "retainer", true).await;
    let publish = |topic: &str, payload: &[u8]| packets::publish(topic, payload, 0, 1, true, false);
    for gate in 1..=3 {
        let topic = format!("gate/{gate}/state");
        publisher.send(&publish(&topic, b"closed")).await;
    }
    publisher.sync().await;
    let live: Vec<String> = watch
        .sync()
        .await
        .iter()
        .map(|f| parse_publish(f).topic)
        .collect();
    assert_eq!(
        live,
        ["gate/1/state", "gate/2/state", "gate/3/state"],
        "all delivered live"
    );
    assert_eq!(broker.metrics().snapshot().limits_hit, 1);

    let both = [("gate/+/state", 0), ("$SYS/#", 0)];
    let got = retained_on_subscribing(addr, "late-1", &both).await;
    let gates: Vec<_> = got.iter().filter(|(t, _)| t.starts_with("gate/")).collect();
    assert_eq!(
        gates,
        [
            &("gate/1/state".to_string(), b"closed".to_vec()),
            &("gate/2/state".to_string(), b"closed".to_vec()),
        ]
    );
    assert!(
        got.iter().any(|(t, _)| t.starts_with("$SYS/")),
        "$SYS topics are retained beside the two: {got:?}"
    );

    publisher.send(&publish("gate/1/state", b"open")).await;
    publisher.send(&publish("gate/2/state", b"")).await;
    publisher.send(&publish("gate/3/state", b"open")).await;
    publisher.sync().await;
    let got = retained_on_subscribing(addr, "late-2", &both).await;
    let gates: Vec<_> = got.iter().filter(|(t, _)| t.starts_with("gate/")).collect();
    assert_eq!(
        gates,
        [
            &("gate/1/state".to_string(), b"open".to_vec()),
            &("gate/3/state".to_string(), b"open".to_vec()),
        ]
    );
    assert_eq!(broker.metrics().snapshot().limits_hit, 1);
}

#[tokio::test]
async fn retained_messages_past_a_lowered_limit_are_kept_after_a_restart() {
    // The limit is lowered below what is on disk: start-up keeps every retained message (and
    // warns); a new topic is refused, an update is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, _logs, addr) = start_broker_with(&state, "always", "info", "");
    let (mut publisher, _) = Raw::handshake(addr, "retainer", true).await;
    for gate in 1..=3u16 {
        let topic = format!("gate/{gate}/state");
        publisher
            .send(&packets::publish(&topic, b"closed", 1, gate, true, false))
            .await;
        assert_eq!(publisher.expect().await.packet_type(), 4, "PUBACK");
    }
    kill_9(broker);

    let lowered = "[limits]\nmax_retained_messages = 2";
    let (_broker, _logs, addr) = start_broker_with(&state, "always", "info", lowered);
    let (mut publisher, _) = Raw::handshake(addr, "retainer", true).await;
    publisher
        .send(&packets::publish(
            "gate/4/state",
            b"closed",
            0,
            0,
            true,
            false,
        ))
        .await;
    publisher
        .send(&packets::publish(
            "gate/1/state",
            b"open",
            0,
            0,
            true,
            false,
        ))
        .await;
    publisher.sync().await;
    let got = retained_on_subscribing(addr, "late", &[("gate/+/state", 0)]).await;
    let expected = [
        ("gate/1/state", &b"open"[..]),
        ("gate/2/state", b"closed"),
        ("gate/3/state", b"closed"),
    ];
    let expected: Vec<(String, Vec<u8>)> = expected
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_vec()))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_qos0_retained_message_replaces_the_last_and_a_message_without_retain_changes_nothing() {
    // [MQTT-3.3.1-7] a QoS 0 message with RETAIN 1 discards the message retained before it
    // (this broker keeps the new one); [MQTT-3.3.1-12] one with RETAIN 0 is not stored and
    // neither removes nor replaces the retained message, an empty one included.
    let broker = broker();
    let addr = broker.local_addr();
    let (mut publisher, _) = Raw::handshake(addr, "replacer", true).await;
    publisher
        .send(&packets::publish(
            "gate/9/state",
            b"closed",
            1,
            1,
            true,
            false,
        ))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    publisher
        .send(&packets::publish(
            "gate/9/state",
            b"open",
            0,
            0,
            true,
            false,
        ))
        .await;
    publisher
        .send(&packets::publish(
            "gate/9/state",
            b"live",
            0,
            0,
            false,
            false,
        ))
        .await;
    publisher
        .send(&packets::publish("gate/9/state", b"", 1, 2, false, false))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    publisher.sync().await;
    let (mut late, _) = Raw::handshake(addr, "late-9", true).await;
    late.subscribe(1, &[("gate/9/state", 1)], &[1]).await;
    let got: Vec<_> = late.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1, "one retained message per topic");
    assert_eq!(
        (got[0].payload.as_slice(), got[0].qos, got[0].retain),
        (&b"open"[..], 0, true)
    );
}

#[tokio::test]
async fn retained_messages_outlive_the_session_that_published_them() {
    // [MQTT-3.1.2-7] retained messages are not part of a session: they stay when the
    // publisher's session ends, a clean one by its disconnection and a persistent one by a
    // clean-session reconnection.
    let broker = broker();
    let addr = broker.local_addr();
    for (client_id, clean) in [("clean-publisher", true), ("kept-publisher", false)] {
        let (mut publisher, _) = Raw::handshake(addr, client_id, clean).await;
        let topic = format!("gate/{client_id}/state");
        publisher
            .send(&packets::publish(&topic, b"closed", 1, 1, true, false))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
        publisher.send(&[0xE0, 0x00]).await;
        publisher.expect_closed().await;
        if !clean {
            // Its session ends: a clean session takes its place, and is ended in turn.
            let (mut again, present) = Raw::handshake(addr, client_id, true).await;
            assert!(!present);
            again.send(&[0xE0, 0x00]).await;
            again.expect_closed().await;
        }
    }
    let (mut sub, _) = Raw::handshake(addr, "reader", true).await;
    sub.subscribe(1, &[("gate/+/state", 0)], &[0]).await;
    let mut topics: Vec<String> = sub
        .sync()
        .await
        .iter()
        .map(|frame| parse_publish(frame).topic)
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        ["gate/clean-publisher/state", "gate/kept-publisher/state"]
    );
}
