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
