//! MQTT 5 subscriptions: No Local, Retain As Published, Retain Handling, Subscription
//! Identifiers, and the reason codes of SUBACK and UNSUBACK.

mod common;

use common::v5::{ack_codes, options, prop, publish5, publish_of, subscribe5, unsubscribe5, Props};
use common::{broker, broker_with, Raw};

#[tokio::test]
async fn no_local_keeps_a_client_own_messages_from_it() {
    // [MQTT-3.8.3-3]
    let broker = broker();
    let addr = broker.local_addr();
    let mut me = Raw::handshake5(addr, "me").await;
    let mut other = Raw::handshake5(addr, "other").await;
    let codes = me
        .subscribe5(1, &Props::new(), &[("chat/#", options(0, true, false, 0))])
        .await;
    assert_eq!(codes, vec![0]);
    me.send(&publish5("chat/room", b"mine", 0, 0, false, &Props::new()))
        .await;
    other
        .send(&publish5(
            "chat/room",
            b"theirs",
            0,
            0,
            false,
            &Props::new(),
        ))
        .await;
    assert_eq!(other.sync5().await.len(), 0);
    let got = publish_of(&me.expect().await);
    assert_eq!(&got.payload[..], b"theirs");
    assert!(
        me.sync5().await.is_empty(),
        "its own message never came back"
    );
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    // [MQTT-3.3.1-12] RAP 0 clears RETAIN on forwarded messages; [MQTT-3.3.1-13] RAP 1 keeps it.
    let broker = broker();
    let addr = broker.local_addr();
    let mut rap = Raw::handshake5(addr, "rap").await;
    let mut plain = Raw::handshake5(addr, "plain").await;
    rap.subscribe5(1, &Props::new(), &[("r/#", options(0, false, true, 0))])
        .await;
    plain
        .subscribe5(1, &Props::new(), &[("r/#", options(0, false, false, 0))])
        .await;
    let mut publisher = Raw::handshake5(addr, "r-pub").await;
    publisher
        .send(&publish5("r/1", b"state", 0, 0, true, &Props::new()))
        .await;
    assert!(publish_of(&rap.expect().await).retain);
    assert!(!publish_of(&plain.expect().await).retain);
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    // [MQTT-3.3.1-9] 0: sent at every subscribe; [MQTT-3.3.1-10] 1: only if the subscription is
    // new; [MQTT-3.3.1-11] 2: never. Retained messages sent at subscribe have RETAIN 1.
    let broker = broker();
    let addr = broker.local_addr();
    let mut publisher = Raw::handshake5(addr, "rh-pub").await;
    publisher
        .send(&publish5("rh/1", b"kept", 1, 1, true, &Props::new()))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);

    let mut client = Raw::handshake5(addr, "rh").await;
    for (pid, handling, resubscribe_gets) in [(1u16, 0u8, true), (3, 1, false), (5, 2, false)] {
        let filter = format!(
            "rh/{}",
            if handling == 0 {
                "#"
            } else if handling == 1 {
                "+"
            } else {
                "1"
            }
        );
        let opts = options(0, false, false, handling);
        client
            .subscribe5(pid, &Props::new(), &[(&filter, opts)])
            .await;
        let first = client.sync5().await;
        assert_eq!(
            first.len(),
            usize::from(handling != 2),
            "handling {handling}, new subscription"
        );
        if let Some(frame) = first.first() {
            assert!(
                publish_of(frame).retain,
                "[MQTT-3.3.1-8] RETAIN 1 at subscribe"
            );
        }
        client
            .subscribe5(pid + 1, &Props::new(), &[(&filter, opts)])
            .await;
        let again = client.sync5().await;
        assert_eq!(
            again.len(),
            usize::from(resubscribe_gets),
            "handling {handling}, existing subscription"
        );
    }
}

#[tokio::test]
async fn overlapping_subscriptions_send_one_copy_with_every_identifier() {
    // [MQTT-3.3.4-2] the highest QoS, [MQTT-3.3.4-3] [MQTT-3.3.4-4] all identifiers in one copy.
    let broker = broker();
    let addr = broker.local_addr();
    let mut client = Raw::handshake5(addr, "ids").await;
    client
        .subscribe5(
            1,
            &Props::new().var(prop::SUBSCRIPTION_ID, 7),
            &[("ids/+", 0)],
        )
        .await;
    client
        .subscribe5(
            2,
            &Props::new().var(prop::SUBSCRIPTION_ID, 300),
            &[("ids/#", 1)],
        )
        .await;
    client.subscribe5(3, &Props::new(), &[("ids/x", 0)]).await;
    let mut publisher = Raw::handshake5(addr, "ids-pub").await;
    publisher
        .send(&publish5("ids/x", b"1", 1, 1, false, &Props::new()))
        .await;
    let got = publish_of(&client.expect().await);
    assert_eq!(got.qos, mqttbytes::QoS::AtLeastOnce);
    let mut ids = got.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 300]);
    client.send(&common::packets::ack(0x40, got.pkid)).await;
    assert!(client.sync5().await.is_empty(), "one copy only");
}

#[tokio::test]
async fn suback_and_unsuback_carry_mqtt5_reason_codes() {
    // [MQTT-3.8.4-6] [MQTT-3.9.3-1] one code per filter, in order: granted QoS, 0x8F Topic
    // Filter invalid, 0x97 Quota exceeded. [MQTT-3.11.3-1] UNSUBACK: 0x00, 0x11 No subscription
    // existed.
    let broker = broker_with(|c| c.limits.max_subscriptions_per_client = 2);
    let mut client = Raw::handshake5(broker.local_addr(), "codes").await;
    let codes = client
        .subscribe5(
            1,
            &Props::new(),
            &[
                ("ok/1", 2),
                ("bad/#/x", 0),
                ("$share//x", 0),
                ("ok/2", 1),
                ("ok/3", 0),
            ],
        )
        .await;
    assert_eq!(codes, vec![2, 0x8F, 0x8F, 1, 0x97]);
    client.send(&unsubscribe5(2, &["ok/1", "never"])).await;
    let unsuback = client.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 2));
    assert_eq!(ack_codes(&unsuback), vec![0x00, 0x11]);
    // With a Reason String naming the failed filters (problem information was not turned off).
    assert_eq!(
        common::v5::ack_reason_string(&unsuback).as_deref(),
        Some("filter 2: no subscription existed")
    );
    client
        .send(&subscribe5(3, &Props::new(), &[("bad/#/x", 0)]))
        .await;
    let suback = client.expect().await;
    assert_eq!(ack_codes(&suback), vec![0x8F]);
    assert_eq!(
        common::v5::ack_reason_string(&suback).as_deref(),
        Some("filter 1: topic filter invalid")
    );
}

#[tokio::test]
async fn malformed_subscription_options_close_the_connection() {
    // [MQTT-3.8.3-5] reserved bits; Retain Handling 3; [MQTT-3.8.3-4] No Local on a shared
    // subscription.
    let broker = broker();
    for (what, opts, filter, code) in [
        ("reserved bits", 0x40u8, "a", 0x81u8),
        ("retain handling 3", 0x30, "a", 0x81),
        (
            "no local on shared",
            options(0, true, false, 0),
            "$share/g/a",
            0x82,
        ),
    ] {
        let mut client = Raw::handshake5(broker.local_addr(), what).await;
        client
            .send(&subscribe5(1, &Props::new(), &[(filter, opts)]))
            .await;
        let frame = client.expect().await;
        assert_eq!(common::v5::disconnect_reason(&frame), code, "{what}");
        client.expect_closed().await;
    }
}

#[tokio::test]
async fn filters_that_break_the_wildcard_rules_are_refused_and_dollar_topics_escape_wildcards() {
    // [MQTT-4.7.1-1] `#` only last and alone in its level; [MQTT-4.7.1-2] `+` alone in its
    // level; [MQTT-4.7.3-1] at least one character: each refused with 0x8F, the valid ones
    // granted, one code per filter that shows the QoS granted or the failure [MQTT-3.8.4-7].
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = Raw::handshake5(addr, "rules").await;
    let codes = sub
        .subscribe5(
            1,
            &Props::new(),
            &[
                ("a/#/b", 0),
                ("a#", 0),
                ("a+/b", 0),
                ("", 0),
                ("#", 1),
                ("+/x", 1),
            ],
        )
        .await;
    assert_eq!(codes, vec![0x8F, 0x8F, 0x8F, 0x8F, 1, 1]);
    // [MQTT-4.7.2-1] a topic starting with `$` is matched by neither `#` nor `+/x`; the plain
    // one is, and comes with the Topic Name it was published to [MQTT-3.3.2-3] (once, for the
    // two filters that match it).
    let mut publisher = Raw::handshake5(addr, "rules-pub").await;
    for topic in ["$app/x", "app/x"] {
        publisher
            .send(&publish5(topic, b"m", 0, 0, false, &Props::new()))
            .await;
    }
    let got = publish_of(&sub.expect().await);
    assert_eq!(got.topic, "app/x");
    assert!(sub.sync5().await.is_empty(), "nothing from `$app/x`");
}

#[tokio::test]
async fn one_subscribe_of_many_filters_is_handled_as_a_sequence_with_one_suback() {
    // [MQTT-3.8.4-1] a SUBACK, [MQTT-3.8.4-2] with the SUBSCRIBE's packet id (checked by
    // `Raw::subscribe5`), [MQTT-3.8.4-5] the filters taken in turn: the second `q/1` replaces
    // the first [MQTT-3.8.4-3], so a QoS 2 message comes once, at the QoS granted last.
    // [MQTT-3.8.4-8] a message comes at the lower of its own QoS and the QoS granted.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = Raw::handshake5(addr, "sequence").await;
    let codes = sub
        .subscribe5(0x1234, &Props::new(), &[("q/1", 0), ("q/1", 1), ("q/0", 0)])
        .await;
    assert_eq!(codes, vec![0, 1, 0]);
    let mut publisher = Raw::handshake5(addr, "sequence-pub").await;
    for (pid, topic) in [(1, "q/1"), (2, "q/0")] {
        publisher
            .send(&publish5(topic, b"m", 2, pid, false, &Props::new()))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x50, "PUBREC");
        publisher.send(&common::packets::ack(0x62, pid)).await;
        assert_eq!(publisher.expect().await.byte1, 0x70, "PUBCOMP");
    }
    let first = publish_of(&sub.expect().await);
    assert_eq!((first.topic.as_str(), first.qos as u8), ("q/1", 1));
    sub.send(&common::packets::ack(0x40, first.pkid)).await;
    let second = publish_of(&sub.expect().await);
    // A QoS 0 delivery: QoS 0 and DUP 0 [MQTT-4.3.1-1].
    assert_eq!(
        (second.topic.as_str(), second.qos as u8, second.dup),
        ("q/0", 0, false)
    );
    assert!(sub.sync5().await.is_empty(), "each once");
}

#[tokio::test]
async fn one_unsubscribe_of_many_filters_ends_them_in_turn_with_one_unsuback() {
    // [MQTT-3.10.4-1] a filter that matches a subscription deletes it, [MQTT-3.10.4-2] and no
    // message for it is added after; [MQTT-3.10.4-4] an UNSUBACK, [MQTT-3.10.4-5] also where a
    // filter deleted nothing; [MQTT-3.10.4-6] several filters are handled in turn, with one
    // UNSUBACK.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = Raw::handshake5(addr, "unsub").await;
    sub.subscribe5(1, &Props::new(), &[("u/1", 0), ("u/2", 0)])
        .await;
    sub.send(&unsubscribe5(7, &["u/1", "u/2", "u/3"])).await;
    let unsuback = sub.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 7));
    assert_eq!(ack_codes(&unsuback), vec![0x00, 0x00, 0x11]);
    let mut publisher = Raw::handshake5(addr, "unsub-pub").await;
    for topic in ["u/1", "u/2"] {
        publisher
            .send(&publish5(topic, b"m", 1, 1, false, &Props::new()))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    assert!(sub.sync5().await.is_empty(), "nothing after the UNSUBACK");
}

#[tokio::test]
async fn a_retained_message_is_replaced_and_an_empty_one_clears_it() {
    // [MQTT-3.3.1-5] a retained PUBLISH replaces the topic's retained message; [MQTT-3.3.1-6]
    // one with an empty payload removes it (and is delivered to subscribers as usual), and
    // [MQTT-3.3.1-7] is not stored itself: a later subscriber gets nothing.
    let broker = broker();
    let addr = broker.local_addr();
    let mut publisher = Raw::handshake5(addr, "state-pub").await;
    for (pid, payload) in [(1, &b"open"[..]), (2, &b"closed"[..])] {
        publisher
            .send(&publish5(
                "gate/1/state",
                payload,
                1,
                pid,
                true,
                &Props::new(),
            ))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    let mut first = Raw::handshake5(addr, "state-sub-1").await;
    first
        .subscribe5(1, &Props::new(), &[("gate/+/state", 0)])
        .await;
    let kept = publish_of(&first.expect().await);
    assert_eq!((&kept.payload[..], kept.retain), (&b"closed"[..], true));
    assert!(
        first.sync5().await.is_empty(),
        "one retained message per topic"
    );

    publisher
        .send(&publish5("gate/1/state", b"", 1, 3, true, &Props::new()))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    let cleared = publish_of(&first.expect().await);
    assert!(cleared.payload.is_empty(), "delivered as usual");
    let mut second = Raw::handshake5(addr, "state-sub-2").await;
    second
        .subscribe5(1, &Props::new(), &[("gate/+/state", 0)])
        .await;
    assert!(second.sync5().await.is_empty(), "nothing retained now");
}

#[tokio::test]
async fn an_unsubscribe_completes_the_deliveries_begun_and_starts_no_new_ones() {
    // [MQTT-3.10.4-3] QoS 1 and 2 messages sent before the UNSUBSCRIBE are delivered to the
    // end: the QoS 2 one's PUBREC gets its PUBREL after the UNSUBACK, and the unacknowledged
    // QoS 1 one comes again (DUP) when the session resumes; what is published after the UNSUBACK
    // is not sent [MQTT-3.10.4-2].
    use common::v5::{connect5, disconnect5};
    let broker = broker();
    let addr = broker.local_addr();
    let session = Props::new().u32(prop::SESSION_EXPIRY, 60);
    let (mut device, _) =
        Raw::connect5(addr, &connect5("un-device", true, 60, &session, None)).await;
    device.subscribe5(1, &Props::new(), &[("un/#", 2)]).await;
    let mut app = Raw::handshake5(addr, "un-app").await;
    app.send(&publish5("un/two", b"2", 2, 1, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x50, "PUBREC");
    app.send(&publish5("un/one", b"1", 1, 2, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    let two = publish_of(&device.expect().await);
    let one = publish_of(&device.expect().await);
    assert_eq!((two.qos as u8, one.qos as u8), (2, 1));
    device.send(&unsubscribe5(3, &["un/#"])).await;
    let unsuback = device.expect().await;
    assert_eq!((unsuback.byte1, ack_codes(&unsuback)), (0xB0, vec![0x00]));
    app.send(&publish5("un/three", b"3", 1, 3, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    device.send(&common::packets::ack(0x50, two.pkid)).await;
    let rel = device.expect().await;
    assert_eq!((rel.byte1, rel.pid()), (0x62, two.pkid), "PUBREL");
    device.send(&common::packets::ack(0x70, two.pkid)).await;
    device.send(&disconnect5(0, &Props::new())).await;
    device.expect_closed().await;

    let (mut device, ack) =
        Raw::connect5(addr, &connect5("un-device", false, 60, &session, None)).await;
    assert!(ack.session_present);
    let again = publish_of(&device.expect().await);
    assert_eq!(
        (again.topic.as_str(), again.pkid, again.dup),
        ("un/one", one.pkid, true)
    );
    device.send(&common::packets::ack(0x40, again.pkid)).await;
    assert!(device.sync5().await.is_empty(), "un/three was not sent");
}

#[tokio::test]
async fn a_topic_and_a_filter_of_65535_bytes_are_served() {
    // [MQTT-4.7.3-3] a topic name or filter may encode to 65,535 bytes, no more: the longest
    // there can be is subscribed to exactly and through a wildcard, and published on, with
    // `limits.max_topic_length` raised to the protocol's own limit (its default of 1,024 bytes
    // refuses longer ones: tests/limits.rs).
    let broker = broker_with(|c| c.limits.max_topic_length = 65_535);
    let addr = broker.local_addr();
    let topic = format!("long/{}", "t".repeat(65_535 - 5));
    assert_eq!(topic.len(), 65_535);
    let mut exact = Raw::handshake5(addr, "long-exact").await;
    assert_eq!(
        exact.subscribe5(1, &Props::new(), &[(&topic, 1)]).await,
        vec![1]
    );
    let mut wild = Raw::handshake5(addr, "long-wild").await;
    assert_eq!(
        wild.subscribe5(1, &Props::new(), &[("long/+", 1)]).await,
        vec![1]
    );
    let mut app = Raw::handshake5(addr, "long-app").await;
    app.send(&publish5(&topic, b"far", 1, 1, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    for sub in [&mut exact, &mut wild] {
        let got = publish_of(&sub.expect().await);
        assert_eq!((got.topic.len(), &got.payload[..]), (65_535, &b"far"[..]));
    }
}
