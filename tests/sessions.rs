//! Session takeover, clean and persistent sessions, offline queues and re-delivery
//! (MQTT 3.1.1 sections 3.1.2.4, 3.1.4, 4.1, 4.4).

mod common;

use common::packets::{self, parse_publish};
use common::{broker, broker_with_hooks, options, peer, HookEvent, Raw};
use rumqttc::QoS;
use switchboard::config::QueueOverflow;
use switchboard::hooks::DisconnectReason;
use switchboard::registry::GetStats;

#[tokio::test]
async fn same_client_id_takes_over_the_existing_connection() {
    // [MQTT-3.1.4-2] the server disconnects the existing client.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (mut first, _) = Raw::handshake(broker.local_addr(), "gate-1", true).await;
    let (mut second, _) = Raw::handshake(broker.local_addr(), "gate-1", true).await;
    first.expect_closed().await;
    let event = hooks.disconnected("gate-1").await;
    assert_eq!(event.reason, DisconnectReason::TakenOver);
    second.ping().await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_qos1_while_offline() {
    // [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2]
    let broker = broker();
    let addr = broker.local_addr();
    let mut opts = options(addr, "radar-app");
    opts.set_clean_session(false);
    let mut sub = peer(opts.clone()).await;
    assert!(!sub.session_present, "[MQTT-3.2.2-3] no stored session yet");
    sub.subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    sub.disconnect().await;

    let mut publisher = peer(options(addr, "radar")).await;
    for n in 0..5u8 {
        publisher
            .client
            .publish(
                "detrd/status/response/1AB.ENTER.DETRD",
                QoS::AtLeastOnce,
                false,
                vec![n],
            )
            .await
            .unwrap();
        publisher.published().await;
    }
    publisher
        .client
        .publish(
            "detrd/status/response/x",
            QoS::AtMostOnce,
            false,
            "qos0 not kept",
        )
        .await
        .unwrap();

    let mut sub = peer(opts).await;
    assert!(sub.session_present, "[MQTT-3.2.2-2]");
    for n in 0..5u8 {
        let p = sub.next_publish().await;
        assert_eq!((p.payload.to_vec(), p.qos), (vec![n], QoS::AtLeastOnce));
    }
    // Still subscribed without subscribing again.
    publisher
        .client
        .publish(
            "detrd/status/response/live",
            QoS::AtLeastOnce,
            false,
            "live",
        )
        .await
        .unwrap();
    assert_eq!(&sub.next_publish().await.payload[..], b"live");
}

#[tokio::test]
async fn clean_session_discards_the_stored_session() {
    // [MQTT-3.1.2-6] [MQTT-3.2.2-1]
    let broker = broker();
    let addr = broker.local_addr();
    let (mut raw, present) = Raw::handshake(addr, "cleaner", false).await;
    assert!(!present);
    raw.subscribe(1, &[("c", 1)], &[1]).await;
    drop(raw);
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("c", b"queued", 1, 1, false, false))
        .await;
    publisher.sync().await;
    let (mut raw, present) = Raw::handshake(addr, "cleaner", true).await;
    assert!(!present, "[MQTT-3.2.2-1] clean session: session present 0");
    assert!(raw.sync().await.is_empty(), "queued message discarded");
    publisher
        .send(&packets::publish("c", b"after", 1, 2, false, false))
        .await;
    publisher.sync().await;
    assert!(raw.sync().await.is_empty(), "subscription discarded");
    drop(raw);
    // A clean session ends with its connection: reconnecting persistent finds nothing.
    let (_raw, present) = Raw::handshake(addr, "cleaner", false).await;
    assert!(!present);
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1] re-send unacknowledged PUBLISH (DUP 1, same packet id) and PUBREL.
    let broker = broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "device", false).await;
    sub.subscribe(1, &[("q1", 1), ("q2", 2)], &[1, 2]).await;
    let (mut publisher, _) = Raw::handshake(addr, "app", true).await;
    publisher
        .send(&packets::publish("q1", b"one", 1, 1, false, false))
        .await;
    publisher
        .send(&packets::publish("q2", b"two", 2, 2, false, false))
        .await;
    publisher.sync().await;
    let first: Vec<_> = sub.sync().await.iter().map(parse_publish).collect();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|p| !p.dup));
    let q2 = first.iter().find(|p| p.topic == "q2").expect("q2").pid;
    // PUBREC the QoS 2 one, so the broker owes a PUBREL; acknowledge nothing else.
    sub.send(&packets::ack(0x50, q2)).await;
    let pubrel = sub.expect().await;
    assert_eq!((pubrel.byte1, pubrel.pid()), (0x62, q2));
    drop(sub);

    let (mut sub, present) = Raw::handshake(addr, "device", false).await;
    assert!(present);
    let again = sub.sync().await;
    assert_eq!(again.len(), 2, "{again:?}");
    let resent = parse_publish(&again[0]);
    assert_eq!(
        (resent.topic.as_str(), resent.dup, resent.pid),
        ("q1", true, first[0].pid)
    );
    assert_eq!(
        (again[1].byte1, again[1].pid()),
        (0x62, q2),
        "PUBREL re-sent"
    );
    sub.send(&packets::ack(0x40, resent.pid)).await;
    sub.send(&packets::ack(0x70, q2)).await;
    // The Session has read both acknowledgements once this barrier returns: the next
    // connection cannot take the session over before they count.
    assert!(sub.sync().await.is_empty());
    drop(sub);
    let (mut sub, _) = Raw::handshake(addr, "device", false).await;
    assert!(
        sub.sync().await.is_empty(),
        "acknowledged messages are not re-sent"
    );
}

async fn offline_queue_keeps(overflow: QueueOverflow) -> (Vec<u8>, u64) {
    let (broker, _hooks) = broker_with_hooks(|c| {
        c.sessions.max_queued_messages = 3;
        c.sessions.queue_overflow = overflow;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "offline", false).await;
    sub.subscribe(1, &[("o", 1)], &[1]).await;
    drop(sub);
    // Wait until the Registry has the session stored offline.
    common::eventually(|| async {
        let stats = broker.registry().send(GetStats).await.unwrap();
        stats.clients_online == 0 && stats.sessions_offline == 1
    })
    .await;
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    for n in 1..=5u8 {
        publisher
            .send(&packets::publish("o", &[n], 1, u16::from(n), false, false))
            .await;
    }
    publisher.sync().await;
    let (mut sub, _) = Raw::handshake(addr, "offline", false).await;
    let kept = sub
        .sync()
        .await
        .iter()
        .map(|f| parse_publish(f).payload[0])
        .collect();
    (kept, broker.metrics().snapshot().offline_queue_dropped)
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_oldest() {
    assert_eq!(
        offline_queue_keeps(QueueOverflow::DropOldest).await,
        (vec![3, 4, 5], 2)
    );
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_newest() {
    assert_eq!(
        offline_queue_keeps(QueueOverflow::DropNewest).await,
        (vec![1, 2, 3], 2)
    );
}

#[tokio::test]
async fn offline_queue_with_the_disconnect_policy_drops_oldest() {
    // Nobody is connected to disconnect: the stored session keeps the latest messages.
    assert_eq!(
        offline_queue_keeps(QueueOverflow::Disconnect).await,
        (vec![3, 4, 5], 2)
    );
}

/// The first byte of each message `sub` gets now, acknowledging each.
async fn first_bytes(sub: &mut Raw) -> Vec<u8> {
    let frames = sub.sync().await;
    for frame in &frames {
        let publish = parse_publish(frame);
        sub.send(&packets::ack(0x40, publish.pid)).await;
    }
    frames.iter().map(|f| parse_publish(f).payload[0]).collect()
}

#[tokio::test]
async fn all_offline_sessions_together_are_bounded_by_max_offline_queued_bytes() {
    // Each message weighs 2 + 300 bytes (topic and payload); each client's own bound is far.
    let (broker, _hooks) = broker_with_hooks(|c| c.sessions.max_offline_queued_bytes = 1024);
    let addr = broker.local_addr();
    for (id, topic) in [("away-a", "ta"), ("away-b", "tb")] {
        let (mut sub, _) = Raw::handshake(addr, id, false).await;
        sub.subscribe(1, &[(topic, 1)], &[1]).await;
    }
    common::eventually(|| async {
        let stats = broker.registry().send(GetStats).await.unwrap();
        stats.clients_online == 0 && stats.sessions_offline == 2
    })
    .await;
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    let mut pid = 0;
    let mut publish = |topic: &'static str, first: u8| {
        pid += 1;
        let mut payload = vec![0u8; 300];
        payload[0] = first;
        packets::publish(topic, &payload, 1, pid, false, false)
    };
    // 604 bytes for one client, then 302 for the other fit; the next two do not.
    for (topic, n) in [("ta", 1), ("ta", 2), ("tb", 1), ("tb", 2), ("tb", 3)] {
        publisher.send(&publish(topic, n)).await;
    }
    publisher.sync().await;
    let dropped = broker.metrics().snapshot();
    assert_eq!(
        (dropped.offline_total_dropped, dropped.offline_queue_dropped),
        (2, 0),
        "dropped for the bound on all offline sessions, not for a client's own"
    );
    // A client that resumes takes what it held out of the count: room again.
    let (mut a, _) = Raw::handshake(addr, "away-a", false).await;
    assert_eq!(first_bytes(&mut a).await, vec![1, 2]);
    publisher.send(&publish("tb", 4)).await;
    publisher.sync().await;
    let (mut b, _) = Raw::handshake(addr, "away-b", false).await;
    assert_eq!(
        first_bytes(&mut b).await,
        vec![1, 4],
        "kept in order, none after a drop lost"
    );
    assert_eq!(broker.metrics().snapshot().offline_total_dropped, 2);
    assert_eq!(broker.metrics().snapshot().messages_dropped(), 2);
}

/// Waits until the Registry counts `expected` (messages, bytes) held for offline sessions.
async fn held_offline_becomes(broker: &switchboard::BackgroundBroker, expected: (usize, usize)) {
    common::eventually(|| async {
        let stats = broker.registry().send(GetStats).await.unwrap();
        (stats.offline_messages, stats.offline_bytes) == expected
    })
    .await;
}

#[tokio::test]
async fn what_offline_sessions_hold_is_counted_exactly_through_every_change() {
    // The figures are kept as sessions change, not walked (a debug build also checks them
    // against a walk at every `GetStats`). Each message weighs its topic and payload: 2 bytes.
    let (broker, _hooks) = broker_with_hooks(|c| {
        c.sessions.max_queued_messages = 3;
        c.sessions.max_queued_bytes = 1024;
        c.sessions.queue_overflow = QueueOverflow::DropOldest;
    });
    let addr = broker.local_addr();
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    // "keeper" leaves with one message in flight, "away" with nothing.
    let (mut keeper, _) = Raw::handshake(addr, "keeper", false).await;
    keeper.subscribe(1, &[("k", 1)], &[1]).await;
    publisher
        .send(&packets::publish("k", &[0], 1, 1, false, false))
        .await;
    keeper.expect().await;
    drop(keeper);
    let (mut away, _) = Raw::handshake(addr, "away", false).await;
    away.subscribe(1, &[("o", 1)], &[1]).await;
    drop(away);
    held_offline_becomes(&broker, (1, 2)).await;
    // Five queued for "away", which keeps the newest 3 (its own bound); one over its byte
    // bound is not kept at all.
    for n in 1..=5u8 {
        publisher
            .send(&packets::publish(
                "o",
                &[n],
                1,
                u16::from(n) + 1,
                false,
                false,
            ))
            .await;
    }
    publisher
        .send(&packets::publish("o", &[9; 1100], 1, 7, false, false))
        .await;
    publisher.sync().await;
    held_offline_becomes(&broker, (4, 8)).await;
    // "keeper" resumes: its message is taken off; it leaves again without acknowledging the
    // copy sent again [MQTT-4.4.0-1], which is counted again.
    let (mut keeper, present) = Raw::handshake(addr, "keeper", false).await;
    assert!(present);
    assert!(parse_publish(&keeper.expect().await).dup);
    held_offline_becomes(&broker, (3, 6)).await;
    drop(keeper);
    held_offline_becomes(&broker, (4, 8)).await;
    // A clean start ends "away"'s session with what it held [MQTT-3.1.2-6].
    let (away, present) = Raw::handshake(addr, "away", true).await;
    assert!(!present);
    held_offline_becomes(&broker, (1, 2)).await;
    drop(away);
    // The admin API ends "keeper"'s session.
    let kicked = broker
        .registry()
        .send(switchboard::registry::Kick {
            client_id: "keeper".into(),
            remove_session: true,
        })
        .await
        .unwrap();
    assert!(kicked.is_some_and(|k| k.session_removed));
    held_offline_becomes(&broker, (0, 0)).await;
}

#[tokio::test]
async fn takeover_hands_the_session_to_the_new_connection() {
    // [MQTT-3.1.4-2] with clean session 0 the new connection resumes the session.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut old, _) = Raw::handshake(addr, "moving", false).await;
    old.subscribe(1, &[("m", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("m", b"unacked", 1, 1, false, false))
        .await;
    publisher.sync().await;
    assert_eq!(old.sync().await.len(), 1);
    let (mut new, present) = Raw::handshake(addr, "moving", false).await;
    assert!(present);
    old.expect_closed().await;
    let resent = parse_publish(&new.expect().await);
    assert_eq!((resent.payload, resent.dup), (b"unacked".to_vec(), true));
    let reasons: Vec<DisconnectReason> = vec![hooks.disconnected("moving").await.reason];
    assert_eq!(reasons, vec![DisconnectReason::TakenOver]);
    let connects = hooks.find(|e| match e {
        HookEvent::Connected(c) if &*c.client_id == "moving" && c.session_present => Some(()),
        _ => None,
    });
    connects.await;
}

#[tokio::test]
async fn a_clean_session_ends_with_its_connection_however_fast_the_client_comes_back() {
    // [MQTT-3.1.2-6] a clean session lasts as long as the connection: its subscriptions and the
    // messages on their way to it end with it, and the next connection starts empty. The
    // Session ends it in one message to the Registry (`Detach::ends_session`), so each round
    // here reconnects while the last is still being torn down.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut publisher, _) = Raw::handshake(addr, "churn-pub", true).await;
    for round in 0..30u8 {
        let (mut device, present) = Raw::handshake(addr, "churner", true).await;
        assert!(!present, "round {round}: no session present [MQTT-3.2.2-1]");
        device
            .subscribe(1, &[(&format!("churn/{round}"), 1)], &[1])
            .await;
        // One message on its way as it leaves.
        publisher
            .send(&packets::publish(
                &format!("churn/{round}"),
                &[round],
                1,
                1,
                false,
                false,
            ))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
        device.send(&[0xE0, 0x00]).await;
        // The message may come before the close, unacknowledged; nothing else may.
        while let Some(frame) = device.recv().await {
            assert_eq!(parse_publish(&frame).payload, vec![round]);
        }
        hooks.disconnected("churner").await;
    }
    // Nothing of the 30 sessions is left: no client, no subscription.
    common::eventually(|| async {
        let stats = broker.registry().send(GetStats).await.expect("registry");
        stats.clients_online == 1 && stats.sessions_offline == 0 && stats.subscriptions == 0
    })
    .await;
    // And a new connection with the id hears nothing of the old subscriptions.
    let (mut device, present) = Raw::handshake(addr, "churner", true).await;
    assert!(!present);
    publisher
        .send(&packets::publish("churn/0", b"late", 1, 2, false, false))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    assert!(device.sync().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_takes_over_a_clean_one_gets_nothing_routed_to_the_clean_one() {
    // [MQTT-3.1.2-6] the state of a clean session is not reused by any later one: a persistent
    // session that takes over a clean one's client id starts empty [MQTT-3.2.2-1], even while
    // messages are being routed to the clean one as it ends (a worker that matched one before
    // the clean session was cleared hands it to the Registry after).
    let broker = broker();
    let addr = broker.local_addr();
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Publishers keep the worker routing, so that a takeover lands while it matches.
    let mut streamers = Vec::new();
    for n in 0..4 {
        let streaming = streaming.clone();
        streamers.push(tokio::spawn(async move {
            let (mut publisher, _) = Raw::handshake(addr, &format!("streamer-{n}"), true).await;
            let burst: Vec<u8> = (1..=100u16)
                .flat_map(|pid| packets::publish("switch/t", b"m", 1, pid, false, false))
                .collect();
            while streaming.load(std::sync::atomic::Ordering::Relaxed) {
                publisher.send(&burst).await;
                for _ in 0..100 {
                    assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
                }
            }
        }));
    }
    for round in 0..200 {
        let (mut clean, _) = Raw::handshake(addr, "switching", true).await;
        // A shared subscriber's Session hands its state back to the Registry as it ends (for
        // the other members), as a resumed one's does: deliveries matched for it meanwhile
        // reach the Registry.
        clean
            .subscribe(1, &[("$share/g/switch/t", 1), ("switch/t", 1)], &[1, 1])
            .await;
        assert_eq!(
            clean.expect().await.packet_type(),
            3,
            "round {round}: a PUBLISH"
        );
        let (mut kept, present) = Raw::handshake(addr, "switching", false).await;
        assert!(!present, "round {round}: no session to resume");
        let got = kept.sync().await;
        assert!(
            got.is_empty(),
            "round {round}: the new session subscribed to nothing, yet got {} packets",
            got.len()
        );
    }
    streaming.store(false, std::sync::atomic::Ordering::Relaxed);
    for streamer in streamers {
        streamer.await.expect("streamer");
    }
}

#[tokio::test]
async fn an_unsubscribe_completes_the_deliveries_begun_and_starts_no_new_ones() {
    // [MQTT-3.10.4-3] QoS 1 and 2 messages sent before the UNSUBSCRIBE are delivered to the
    // end: the QoS 2 one's PUBREC gets its PUBREL after the UNSUBACK, and the unacknowledged
    // QoS 1 one comes again (DUP) when the session resumes; what is published after the UNSUBACK
    // is not sent [MQTT-3.10.4-2].
    let broker = broker();
    let addr = broker.local_addr();
    let (mut device, _) = Raw::handshake(addr, "un-device", false).await;
    device.subscribe(1, &[("un/#", 2)], &[2]).await;
    let (mut app, _) = Raw::handshake(addr, "un-app", true).await;
    app.send(&packets::publish("un/two", b"2", 2, 1, false, false))
        .await;
    assert_eq!(app.expect().await.byte1, 0x50, "PUBREC");
    app.publish_acked("un/one", b"1", 2, false).await;
    let two = parse_publish(&device.expect().await);
    let one = parse_publish(&device.expect().await);
    assert_eq!((two.qos, one.qos), (2, 1));
    device.send(&packets::unsubscribe(3, &["un/#"])).await;
    let unsuback = device.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 3), "UNSUBACK");
    app.publish_acked("un/three", b"3", 3, false).await;
    device.send(&packets::ack(0x50, two.pid)).await;
    let rel = device.expect().await;
    assert_eq!((rel.byte1, rel.pid()), (0x62, two.pid), "PUBREL");
    device.send(&packets::ack(0x70, two.pid)).await;
    drop(device);

    let (mut device, present) = Raw::handshake(addr, "un-device", false).await;
    assert!(present);
    let again = parse_publish(&device.expect().await);
    assert_eq!(
        (again.topic.as_str(), again.pid, again.dup),
        ("un/one", one.pid, true)
    );
    device.send(&packets::ack(0x40, again.pid)).await;
    assert!(device.sync().await.is_empty(), "un/three was not sent");
}
