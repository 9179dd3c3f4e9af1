//! PUBLISH, SUBSCRIBE, UNSUBSCRIBE and the QoS flows (MQTT 3.1.1 sections 3.3-3.11, 4.3-4.7),
//! with rumqttc as an independent client and raw bytes where flags must be checked exactly.

mod common;

use common::packets::{self, parse_publish};
use common::{broker, broker_with_hooks, options, peer, Raw};
use rumqttc::{QoS, SubscribeReasonCode};
use switchboard::registry::Freeze;

#[tokio::test]
async fn qos_0_1_2_round_trip_between_independent_clients() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = peer(options(addr, "sub")).await;
    assert_eq!(
        sub.subscribe("detrd/status/response/+", QoS::ExactlyOnce)
            .await,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publisher = peer(options(addr, "pub")).await;
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("detrd/status/response/{n}");
        publisher
            .client
            .publish(&topic, qos, false, vec![n as u8; 10])
            .await
            .unwrap();
        if qos != QoS::AtMostOnce {
            publisher.published().await;
        }
        let got = sub.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), got.qos, &got.payload[..]),
            (topic.as_str(), qos, &[n as u8; 10][..])
        );
    }
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_published_and_granted() {
    // [MQTT-3.8.4-6] [MQTT-3.3.5-1]
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = peer(options(addr, "sub0")).await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let publisher = peer(options(addr, "pub2")).await;
    publisher
        .client
        .publish("t", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(sub.next_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn qos1_messages_arrive_in_order() {
    // [MQTT-4.6.0-6] ordered topic delivery.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = peer(options(addr, "ordered-sub")).await;
    sub.subscribe("seq/#", QoS::AtLeastOnce).await;
    let publisher = peer(options(addr, "ordered-pub")).await;
    for n in 0u32..300 {
        publisher
            .client
            .publish("seq/a", QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for n in 0u32..300 {
        assert_eq!(&sub.next_publish().await.payload[..], &n.to_be_bytes()[..]);
    }
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    // [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1]
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "wild", true).await;
    sub.subscribe(1, &[("detrd/+/request/#", 0), ("#", 0)], &[0, 0])
        .await;
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "pub", true).await;
    for topic in [
        "$monitor/uptime",
        "detrd/status/request/1AB.ENTER.DETRD",
        "other",
    ] {
        publisher
            .send(&packets::publish(topic, b"p", 0, 0, false, false))
            .await;
    }
    publisher.sync().await;
    let got: Vec<String> = sub
        .sync()
        .await
        .iter()
        .map(|f| parse_publish(f).topic)
        .collect();
    // `$monitor/uptime` matches neither `#` nor a filter starting with a wildcard; the request topic
    // matches both filters but arrives once [MQTT-3.3.5-1].
    assert_eq!(got, vec!["detrd/status/request/1AB.ENTER.DETRD", "other"]);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.5-1]
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "overlap", true).await;
    sub.subscribe(1, &[("a/+", 0), ("a/b", 2), ("#", 1)], &[0, 2, 1])
        .await;
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "pub", true).await;
    publisher
        .send(&packets::publish("a/b", b"once", 2, 5, false, false))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x50, "PUBREC");
    let frames = sub.sync().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(parse_publish(&frames[0]).qos, 2);
}

#[tokio::test]
async fn suback_codes_in_order_with_0x80_for_refused_filters() {
    // [MQTT-3.8.4-5] one return code per filter, in order; 0x80 marks a failure.
    let broker = broker();
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "codes", true).await;
    raw.subscribe(
        3,
        &[("ok/+", 1), ("bad/#/x", 1), ("", 0), ("a+", 2), ("fine", 2)],
        &[1, 0x80, 0x80, 0x80, 2],
    )
    .await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_acknowledged() {
    // [MQTT-3.10.4-1] [MQTT-3.10.4-4] [MQTT-3.10.4-5]
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "unsub", true).await;
    sub.subscribe(1, &[("x/y", 1)], &[1]).await;
    sub.send(&packets::unsubscribe(2, &["x/y", "never/subscribed"]))
        .await;
    let unsuback = sub.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 2));
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "pub", true).await;
    publisher
        .send(&packets::publish("x/y", b"late", 1, 1, false, false))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    assert!(sub.sync().await.is_empty());
    hooks
        .find(|e| {
            matches!(e, common::HookEvent::Unsubscribed(u) if u.filter == "x/y").then_some(())
        })
        .await;
}

#[tokio::test]
async fn inbound_qos2_is_routed_exactly_once() {
    // [MQTT-4.3.3-2] a re-sent PUBLISH with the same packet id before PUBREL is not delivered
    // again; PUBREL is answered with PUBCOMP.
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "eo-sub", true).await;
    sub.subscribe(1, &[("eo", 0)], &[0]).await;
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "eo-pub", true).await;
    publisher
        .send(&packets::publish("eo", b"one", 2, 7, false, false))
        .await;
    assert_eq!((publisher.expect().await.byte1, 7), (0x50, 7));
    publisher
        .send(&packets::publish("eo", b"one", 2, 7, false, true))
        .await;
    assert_eq!(
        publisher.expect().await.byte1,
        0x50,
        "PUBREC again for the DUP"
    );
    publisher.send(&packets::ack(0x62, 7)).await;
    let pubcomp = publisher.expect().await;
    assert_eq!((pubcomp.byte1, pubcomp.pid()), (0x70, 7));
    // After PUBREL the id is free again: a new message with it is routed.
    publisher
        .send(&packets::publish("eo", b"two", 2, 7, false, false))
        .await;
    publisher.expect().await;
    let payloads: Vec<Vec<u8>> = sub
        .sync()
        .await
        .iter()
        .map(|f| parse_publish(f).payload)
        .collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[tokio::test]
async fn outbound_qos2_handshake() {
    // [MQTT-4.3.3-1] PUBLISH QoS 2 -> PUBREC -> PUBREL (flags 0010) -> PUBCOMP.
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "q2-sub", true).await;
    sub.subscribe(1, &[("q2", 2)], &[2]).await;
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "q2-pub", true).await;
    publisher
        .send(&packets::publish("q2", b"payload", 2, 1, false, false))
        .await;
    publisher.expect().await;
    let published = parse_publish(&sub.expect().await);
    assert_eq!(
        (published.qos, published.dup, published.retain),
        (2, false, false)
    );
    assert_ne!(published.pid, 0, "[MQTT-2.3.1-1]");
    sub.send(&packets::ack(0x50, published.pid)).await;
    let pubrel = sub.expect().await;
    assert_eq!(
        (pubrel.byte1, pubrel.pid()),
        (0x62, published.pid),
        "[MQTT-3.6.1-1]"
    );
    sub.send(&packets::ack(0x70, published.pid)).await;
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn a_pubrec_or_pubrel_for_an_unknown_id_gets_the_next_step_of_its_flow() {
    // PUBREL for an id the broker does not hold: PUBCOMP [MQTT-4.3.3-2] (section 4.3.3 answers
    // every PUBREL); PUBREC for an id not in flight: PUBREL, so that a client whose session
    // state disagrees can finish, as Mosquitto answers.
    let broker = broker();
    let (mut client, _) = Raw::handshake(broker.local_addr(), "lost-ids", true).await;
    client.send(&packets::ack(0x62, 7)).await;
    let comp = client.expect().await;
    assert_eq!((comp.byte1, comp.body.clone()), (0x70, vec![0, 7]));
    client.send(&packets::ack(0x50, 8)).await;
    let rel = client.expect().await;
    assert_eq!((rel.byte1, rel.body.clone()), (0x62, vec![0, 8]));
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_with_its_packet_id() {
    // [MQTT-4.3.2-2] [MQTT-2.3.1-6]
    let broker = broker();
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "q1", true).await;
    publisher
        .send(&packets::publish("a", b"x", 1, 4242, false, false))
        .await;
    let puback = publisher.expect().await;
    assert_eq!((puback.byte1, puback.pid()), (0x40, 4242));
}

#[tokio::test]
async fn a_publish_right_behind_a_subscribe_or_unsubscribe_sees_the_change() {
    // A client's packets take effect in the order it sent them: its own PUBLISH sent right
    // after a SUBSCRIBE (before the SUBACK) reaches that subscription, as it would on
    // Mosquitto, and one sent right after an UNSUBSCRIBE does not, since the Server stops
    // adding new messages for the Client once it deleted the subscription [MQTT-3.10.4-2].
    // What was routed before the UNSUBACK arrives before it. All in one TCP write, so that the
    // broker reads them in one turn. With one worker (the Registry on it) and with two (the
    // Registry on a thread of its own).
    for workers in [1, 2] {
        own_publish_behind_subscription_changes(workers).await;
    }
}

async fn own_publish_behind_subscription_changes(workers: usize) {
    let broker = common::broker_with(|c| c.listener.workers = workers);
    let (mut client, _) = Raw::handshake(broker.local_addr(), "own", true).await;
    let mut burst = packets::subscribe(1, &[("own/t", 1)]);
    burst.extend(packets::publish("own/t", b"first", 1, 2, false, false));
    burst.extend(packets::unsubscribe(3, &["own/t"]));
    burst.extend(packets::publish("own/t", b"after", 1, 4, false, false));
    client.send(&burst).await;
    let frames = client.sync().await;
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f.packet_type() == 3)
        .map(|f| parse_publish(f).payload)
        .collect();
    assert_eq!(
        payloads,
        vec![b"first".to_vec()],
        "{workers} worker(s), frames: {frames:?}"
    );
    let position = |byte1: u8, pid: u16| {
        frames
            .iter()
            .position(|f| f.byte1 == byte1 && f.body.len() >= 2 && f.pid() == pid)
            .unwrap_or_else(|| panic!("no {byte1:#x} for {pid} in {frames:?}"))
    };
    let delivered = frames.iter().position(|f| f.packet_type() == 3);
    assert!(position(0x90, 1) < position(0xB0, 3));
    assert!(delivered < Some(position(0xB0, 3)), "frames: {frames:?}");
    // Both PUBLISHes were acknowledged (`position` panics when a packet is missing).
    assert!(position(0x40, 2) != position(0x40, 4));
}

/// The subscriber sends `change` (a SUBSCRIBE or UNSUBSCRIBE) and the publisher, without
/// waiting for its answer, a QoS 0 PUBLISH to `topic`; returns what reached the subscriber once
/// both connections' barriers answered (A's PUBLISH is routed once A's barrier through the
/// Registry answers; everything routed to B has arrived once B's does).
async fn change_then_publish(
    subscriber: &mut Raw,
    publisher: &mut Raw,
    change: &[u8],
    topic: &str,
) -> Vec<common::Frame> {
    subscriber.send(change).await;
    publisher
        .send(&packets::publish(topic, b"m", 0, 0, false, false))
        .await;
    publisher.sync().await;
    subscriber.sync().await
}

#[tokio::test]
async fn a_publish_read_right_behind_another_clients_subscribe_reaches_it() {
    // Two connections: B sends a SUBSCRIBE and, before its SUBACK, A publishes to the filter
    // (what the paho interoperability suite's test_request_response and
    // test_subscribe_options do). When one worker reads them in that order, the PUBLISH is
    // routed behind the subscription, as Mosquitto does, though the SUBSCRIBE is still on its
    // way to the Registry when the worker reads the PUBLISH; and a PUBLISH read right behind
    // B's UNSUBSCRIBE no longer reaches B [MQTT-3.10.4-2]. Which of two connections' packets a
    // broker reads first is up to its scheduler, not to the order they were sent in (now and
    // then the other connection's socket is polled first), so this counts rounds: on the build
    // before changes on their way were counted, 1 to 7 rounds in 20 reached the new
    // subscription and at most 4 were kept out; on this one 19 or 20 of each, under a CPU hog.
    let broker = common::broker_with(|c| c.listener.workers = 1);
    let addr = broker.local_addr();
    let (mut subscriber, _) = Raw::handshake(addr, "behind-b", true).await;
    let (mut publisher, _) = Raw::handshake(addr, "behind-a", true).await;
    for raw in [&subscriber, &publisher] {
        raw.stream.set_nodelay(true).expect("nodelay");
    }
    const ROUNDS: u16 = 20;
    let (mut reached, mut kept_out) = (0, 0);
    for round in 0..ROUNDS {
        let topic = format!("behind/{round}");
        let subscribe = packets::subscribe(round + 1, &[(topic.as_str(), 0)]);
        let frames = change_then_publish(&mut subscriber, &mut publisher, &subscribe, &topic).await;
        assert!(frames.iter().any(|f| f.byte1 == 0x90), "{frames:?}");
        reached += frames.iter().filter(|f| f.packet_type() == 3).count();
        let unsubscribe = packets::unsubscribe(round + 100, &[topic.as_str()]);
        let frames =
            change_then_publish(&mut subscriber, &mut publisher, &unsubscribe, &topic).await;
        assert!(frames.iter().any(|f| f.byte1 == 0xB0), "{frames:?}");
        kept_out += usize::from(frames.iter().all(|f| f.packet_type() != 3));
    }
    let enough = usize::from(ROUNDS) * 3 / 4;
    assert!(
        reached >= enough && kept_out >= enough,
        "of {ROUNDS} rounds, {reached} reached the new subscription and {kept_out} were kept \
         out by the UNSUBSCRIBE; expected at least {enough} of each"
    );
}

#[tokio::test]
async fn a_publish_read_while_another_clients_subscribe_waits_for_the_registry_waits_too() {
    // The same order made certain: the Registry frozen on a thread of its own (two workers),
    // B's SUBSCRIBE is read (its PINGRESP, read behind it, comes back) but cannot reach the
    // table; A's PUBLISH, read after it, must not be routed by the table without it. Thawed, B
    // gets the SUBACK and then the message. The same for an UNSUBSCRIBE: a PUBLISH read while
    // it waits no longer reaches B [MQTT-3.10.4-2].
    let broker = common::broker_with(|c| c.listener.workers = 2);
    let addr = broker.local_addr();
    let (mut subscriber, _) = Raw::handshake(addr, "frozen-b", true).await;
    let (mut publisher, _) = Raw::handshake(addr, "frozen-a", true).await;
    const PINGREQ: [u8; 2] = [0xC0, 0x00];
    for (change, payload, reaches) in [
        (packets::subscribe(1, &[("frozen/t", 0)]), b"first", true),
        (packets::unsubscribe(2, &["frozen/t"]), b"after", false),
    ] {
        let (thaw, frozen) = std::sync::mpsc::channel::<()>();
        broker.registry().do_send(Freeze(frozen));
        let mut burst = change;
        burst.extend(PINGREQ);
        subscriber.send(&burst).await;
        assert_eq!(
            subscriber.expect().await.byte1,
            0xD0,
            "PINGRESP first: the Registry is frozen"
        );
        let mut burst = packets::publish("frozen/t", payload, 0, 0, false, false);
        burst.extend(PINGREQ);
        publisher.send(&burst).await;
        assert_eq!(publisher.expect().await.byte1, 0xD0);
        thaw.send(()).expect("the Registry is frozen");
        publisher.sync().await;
        let frames = subscriber.sync().await;
        let ack = frames
            .iter()
            .position(|f| matches!(f.byte1, 0x90 | 0xB0))
            .unwrap_or_else(|| panic!("no SUBACK or UNSUBACK in {frames:?}"));
        let delivered = frames.iter().position(|f| f.packet_type() == 3);
        match reaches {
            true => assert!(
                delivered > Some(ack),
                "SUBACK, then the message: {frames:?}"
            ),
            false => assert_eq!(delivered, None, "{frames:?}"),
        }
    }
}

#[tokio::test]
async fn several_filters_in_one_subscribe_or_unsubscribe_act_as_several_packets_answered_once() {
    // [MQTT-3.8.4-4] a SUBSCRIBE of several filters is handled as a sequence of SUBSCRIBEs
    // with one SUBACK [MQTT-3.8.4-1], carrying the request's packet identifier
    // [MQTT-3.8.4-2] [MQTT-2.3.1-7] and one code per filter in their order [MQTT-3.9.3-1],
    // each one of 0x00, 0x01, 0x02 or 0x80 [MQTT-3.9.3-2]; an UNSUBSCRIBE of several filters
    // likewise, with one UNSUBACK [MQTT-3.10.4-6].
    let broker = broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "several", true).await;
    sub.subscribe(
        0xBEEF,
        &[("m/a", 0), ("m/b", 2), ("m/#/x", 1), ("m/c", 1)],
        &[0, 2, 0x80, 1],
    )
    .await;
    let (mut publisher, _) = Raw::handshake(addr, "several-pub", true).await;
    let on = |topic: &str, qos: u8| packets::publish(topic, topic.as_bytes(), qos, 7, false, false);
    for topic in ["m/a", "m/b", "m/c"] {
        publisher.send(&on(topic, 2)).await;
        assert_eq!(publisher.expect().await.byte1, 0x50, "PUBREC");
        publisher.send(&packets::ack(0x62, 7)).await;
        assert_eq!(publisher.expect().await.byte1, 0x70, "PUBCOMP");
    }
    publisher.sync().await;
    let got: Vec<(String, u8)> = sub
        .sync()
        .await
        .iter()
        .map(|frame| {
            let publish = parse_publish(frame);
            (publish.topic, publish.qos)
        })
        .collect();
    // Each filter granted its own QoS: as three SUBSCRIBEs would have.
    assert_eq!(
        got,
        [
            ("m/a".to_owned(), 0),
            ("m/b".to_owned(), 2),
            ("m/c".to_owned(), 1)
        ]
    );
    sub.send(&packets::unsubscribe(0xCAFE, &["m/a", "m/c", "m/none"]))
        .await;
    let unsuback = sub.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 0xCAFE));
    for topic in ["m/a", "m/b", "m/c"] {
        publisher.send(&on(topic, 0)).await;
    }
    publisher.sync().await;
    let left: Vec<String> = sub
        .sync()
        .await
        .iter()
        .map(|frame| parse_publish(frame).topic)
        .collect();
    assert_eq!(left, ["m/b"], "only the filter not unsubscribed is left");
}

#[tokio::test]
async fn a_delivery_has_the_brokers_own_dup_flag_not_the_publishers() {
    // [MQTT-3.3.1-3] the DUP flag of an incoming PUBLISH is not propagated: a first delivery
    // has DUP 0 at QoS 1 [MQTT-4.3.2-1] and at QoS 0 [MQTT-4.3.1-1], whatever the publisher sent.
    let broker = broker();
    let addr = broker.local_addr();
    let (mut at_qos1, _) = Raw::handshake(addr, "dup-1", true).await;
    at_qos1.subscribe(1, &[("dup/t", 1)], &[1]).await;
    let (mut at_qos0, _) = Raw::handshake(addr, "dup-0", true).await;
    at_qos0.subscribe(1, &[("dup/t", 0)], &[0]).await;
    let (mut publisher, _) = Raw::handshake(addr, "dup-pub", true).await;
    // A re-sent PUBLISH, as after a reconnect: DUP 1.
    publisher
        .send(&packets::publish("dup/t", b"again", 1, 9, false, true))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    let to_qos1 = parse_publish(&at_qos1.expect().await);
    assert_eq!(
        (to_qos1.qos, to_qos1.dup, to_qos1.retain),
        (1, false, false)
    );
    assert_ne!(to_qos1.pid, 0);
    let to_qos0 = parse_publish(&at_qos0.expect().await);
    assert_eq!(
        (to_qos0.qos, to_qos0.dup, to_qos0.retain),
        (0, false, false)
    );
}

#[tokio::test]
async fn topics_are_matched_byte_for_byte_with_a_byte_order_mark_kept() {
    // [MQTT-1.5.3-3] 0xEF 0xBB 0xBF is U+FEFF wherever it appears and is not stripped, and
    // matching normalises nothing [MQTT-4.7.3-4]: a topic that starts with it reaches only the
    // filter that starts with it too, and arrives with it.
    let broker = broker();
    let addr = broker.local_addr();
    let (mut with_bom, _) = Raw::handshake(addr, "bom", true).await;
    with_bom.subscribe(1, &[("\u{feff}gate/1", 0)], &[0]).await;
    let (mut plain, _) = Raw::handshake(addr, "no-bom", true).await;
    plain
        .subscribe(1, &[("gate/1", 0), ("GATE/1", 0)], &[0, 0])
        .await;
    let (mut publisher, _) = Raw::handshake(addr, "bom-pub", true).await;
    publisher
        .send(&packets::publish(
            "\u{feff}gate/1",
            b"x",
            0,
            0,
            false,
            false,
        ))
        .await;
    publisher.sync().await;
    let got = with_bom.sync().await;
    assert_eq!(got.len(), 1);
    assert_eq!(parse_publish(&got[0]).topic, "\u{feff}gate/1");
    assert!(plain.sync().await.is_empty(), "no normalised match");
}
