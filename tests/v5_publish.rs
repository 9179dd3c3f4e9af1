//! MQTT 5 publishing: properties passed through, message expiry, topic aliases both ways, and
//! negative acknowledgements (flow control and the Maximum Packet Size: `v5_flow_control.rs`).
//! Raw bytes in, mqttbytes' v5 reader out; rumqttc's v5 client end to end.

mod common;

use std::time::Duration;

use common::v5::{connect5, disconnect_reason, prop, publish5, publish_of, subscriber5, Props};
use common::{broker, broker_with, packets, Raw};

#[tokio::test]
async fn message_properties_are_forwarded_unaltered_and_in_order() {
    // [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-16] correlation data, [MQTT-3.3.2-17]
    // [MQTT-3.3.2-18] user properties in order, [MQTT-3.3.2-20] content type, and the response
    // topic (section 3.3.2.3.5).
    let broker = broker();
    let mut sub = subscriber5(
        broker.local_addr(),
        "sub",
        Props::new(),
        "detrd/status/request/+",
        1,
    )
    .await;
    let mut publisher = Raw::handshake5(broker.local_addr(), "pub").await;
    let props = Props::new()
        .byte(prop::PAYLOAD_FORMAT, 1)
        .str(prop::CONTENT_TYPE, "application/json")
        .str(prop::RESPONSE_TOPIC, "detrd/status/response/1AB")
        .str(prop::CORRELATION_DATA, "req-42")
        .user("z", "1")
        .user("a", "2")
        .user("z", "3");
    publisher
        .send(&publish5(
            "detrd/status/request/1AB",
            b"{}",
            1,
            7,
            false,
            &props,
        ))
        .await;
    assert_eq!(
        publisher.expect().await,
        common::Frame {
            byte1: 0x40,
            body: vec![0, 7]
        }
    );
    let got = publish_of(&sub.expect().await);
    let p = got.properties.expect("properties forwarded");
    common::v5::assert_status_request_properties(&p, &[("z", "1"), ("a", "2"), ("z", "3")]);
    assert_eq!(p.message_expiry_interval, None);
}

#[tokio::test]
async fn a_response_topic_with_a_wildcard_is_a_protocol_error() {
    // [MQTT-3.3.2-14]
    let broker = broker();
    let mut raw = Raw::handshake5(broker.local_addr(), "wild").await;
    raw.send(&publish5(
        "a",
        b"x",
        0,
        0,
        false,
        &Props::new().str(prop::RESPONSE_TOPIC, "r/#"),
    ))
    .await;
    // DISCONNECT 0x82 Protocol Error (0x90 would name the PUBLISH's own Topic Name).
    assert_eq!(disconnect_reason(&raw.expect().await), 0x82);
    raw.expect_closed().await;
}

#[tokio::test]
async fn message_expiry_counts_down_while_queued_and_expired_messages_are_dropped() {
    let broker = broker();
    let addr = broker.local_addr();
    // A persistent session (expiry 60 s) that goes offline.
    let session = Props::new().u32(prop::SESSION_EXPIRY, 60);
    let (mut sub, _) = Raw::connect5(addr, &connect5("offline", true, 60, &session, None)).await;
    assert_eq!(
        sub.subscribe5(1, &Props::new(), &[("exp/#", 1)]).await,
        vec![1]
    );
    sub.send(&common::v5::disconnect5(0, &Props::new())).await;
    sub.expect_closed().await;

    let mut publisher = Raw::handshake5(addr, "exp-pub").await;
    publisher
        .send(&publish5(
            "exp/short",
            b"1",
            1,
            1,
            false,
            &Props::new().u32(prop::MESSAGE_EXPIRY, 1),
        ))
        .await;
    publisher
        .send(&publish5(
            "exp/long",
            b"2",
            1,
            2,
            false,
            &Props::new().u32(prop::MESSAGE_EXPIRY, 100),
        ))
        .await;
    publisher
        .send(&publish5(
            "exp/retained",
            b"3",
            1,
            3,
            true,
            &Props::new().u32(prop::MESSAGE_EXPIRY, 1),
        ))
        .await;
    for _ in 0..3 {
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    // Letting the 1 s expiries pass is the point of this test.
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    let (mut sub, ack) = Raw::connect5(addr, &connect5("offline", false, 60, &session, None)).await;
    assert!(ack.session_present);
    // [MQTT-3.3.2-5] the expired message is not delivered; [MQTT-3.3.2-6] the other carries
    // what remains of its interval. Both were added to the offline session's state when the
    // broker took them [MQTT-4.5.0-1].
    let got = publish_of(&sub.expect().await);
    assert_eq!(got.topic, "exp/long");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("expiry forwarded");
    assert!((98..=99).contains(&left), "remaining interval {left}");
    sub.send(&packets::ack(0x40, got.pkid)).await;
    assert!(
        sub.sync5().await.is_empty(),
        "exp/short expired in the queue"
    );
    // exp/short and exp/retained (also queued for the offline session) expired there.
    assert_eq!(broker.metrics().snapshot().expired_dropped, 2, "counted");
    // An expired retained message is not sent to a new subscriber either.
    assert_eq!(
        sub.subscribe5(2, &Props::new(), &[("exp/retained", 1)])
            .await,
        vec![1]
    );
    assert!(sub.sync5().await.is_empty(), "the retained message expired");
}

#[tokio::test]
async fn inbound_topic_aliases_are_resolved_and_bad_ones_refused() {
    let broker = broker_with(|c| c.limits.topic_alias_maximum = 2);
    let addr = broker.local_addr();
    let mut sub = subscriber5(addr, "alias-sub", Props::new(), "alias/#", 0).await;
    let mut publisher = Raw::handshake5(addr, "alias-pub").await;
    // [MQTT-3.3.2-12] alias 1 set with the topic, then used alone.
    publisher
        .send(&publish5(
            "alias/one",
            b"a",
            0,
            0,
            false,
            &Props::new().u16(prop::TOPIC_ALIAS, 1),
        ))
        .await;
    publisher
        .send(&publish5(
            "",
            b"b",
            0,
            0,
            false,
            &Props::new().u16(prop::TOPIC_ALIAS, 1),
        ))
        .await;
    for payload in [&b"a"[..], b"b"] {
        let got = publish_of(&sub.expect().await);
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("alias/one", payload)
        );
    }
    // [MQTT-3.3.2-9] above the maximum announced: DISCONNECT 0x94.
    publisher
        .send(&publish5(
            "alias/x",
            b"c",
            0,
            0,
            false,
            &Props::new().u16(prop::TOPIC_ALIAS, 3),
        ))
        .await;
    assert_eq!(disconnect_reason(&publisher.expect().await), 0x94);
    publisher.expect_closed().await;
    // [MQTT-3.3.2-7] aliases do not carry over to a new connection: alias 1 is unknown there.
    let mut again = Raw::handshake5(addr, "alias-pub").await;
    again
        .send(&publish5(
            "",
            b"d",
            0,
            0,
            false,
            &Props::new().u16(prop::TOPIC_ALIAS, 1),
        ))
        .await;
    assert_eq!(disconnect_reason(&again.expect().await), 0x82);
    again.expect_closed().await;
}

#[tokio::test]
async fn outbound_topic_aliases_stay_within_the_client_maximum() {
    // [MQTT-3.1.2-26] [MQTT-3.3.2-11]: aliases 1..=2 only; [MQTT-3.1.2-27]: none for a client
    // without a Topic Alias Maximum.
    let broker = broker();
    let addr = broker.local_addr();
    let mut aliased = subscriber5(
        addr,
        "aliased",
        Props::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 2),
        "t/#",
        0,
    )
    .await;
    let mut plain = subscriber5(addr, "plain", Props::new(), "t/#", 0).await;
    let expected = [
        ("t/a", Some(1)),
        ("t/b", Some(2)),
        ("", Some(1)),
        ("t/c", None),
        ("", Some(2)),
    ];
    publish_and_expect_aliases(
        addr,
        &mut aliased,
        &["t/a", "t/b", "t/a", "t/c", "t/b"],
        &expected,
    )
    .await;
    for topic in ["t/a", "t/b", "t/a", "t/c", "t/b"] {
        let got = publish_of(&plain.expect().await);
        assert_eq!(got.topic, topic);
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None);
    }
}

#[tokio::test]
async fn outbound_topic_aliases_stay_within_the_broker_maximum_too() {
    // A client announcing 65,535 gets at most `limits.outbound_topic_alias_maximum`: each
    // alias holds a topic for the connection's life. Within both maximums [MQTT-3.3.2-11].
    let broker = broker_with(|c| c.limits.outbound_topic_alias_maximum = 2);
    let addr = broker.local_addr();
    let mut aliased = subscriber5(
        addr,
        "greedy",
        Props::new().u16(prop::TOPIC_ALIAS_MAXIMUM, u16::MAX),
        "t/#",
        0,
    )
    .await;
    let expected = [
        ("t/a", Some(1)),
        ("t/b", Some(2)),
        ("t/c", None),
        ("", Some(1)),
        ("t/c", None),
    ];
    publish_and_expect_aliases(
        addr,
        &mut aliased,
        &["t/a", "t/b", "t/c", "t/a", "t/c"],
        &expected,
    )
    .await;
}

/// Publishes QoS 0 messages on `topics` from a new client, and checks that `subscriber` gets
/// each with the topic (empty when only the alias stands for it) and alias `expected` says.
async fn publish_and_expect_aliases(
    addr: std::net::SocketAddr,
    subscriber: &mut Raw,
    topics: &[&str],
    expected: &[(&str, Option<u16>)],
) {
    let mut publisher = Raw::handshake5(addr, "t-pub").await;
    for topic in topics {
        publisher
            .send(&publish5(topic, b"x", 0, 0, false, &Props::new()))
            .await;
    }
    for &(topic, alias) in expected {
        let got = publish_of(&subscriber.expect().await);
        assert_eq!(got.topic, topic);
        assert_eq!(got.properties.and_then(|p| p.topic_alias), alias);
    }
}

#[tokio::test]
async fn refused_publishes_get_negative_acknowledgements() {
    let broker = broker();
    let mut raw = Raw::handshake5(broker.local_addr(), "neg").await;
    // Payload Format Indicator 1 with bytes that are not UTF-8: PUBACK 0x99 (section 3.3.2.3.2).
    raw.send(&publish5(
        "a",
        &[0xFF, 0xFE],
        1,
        5,
        false,
        &Props::new().byte(prop::PAYLOAD_FORMAT, 1),
    ))
    .await;
    let ack = raw.expect().await;
    assert_eq!(
        (ack.byte1, ack.pid(), ack.body[2]),
        (0x40, 5, 0x99),
        "{ack:?}"
    );
    assert!(ack.body.len() > 3, "with a reason string");
    // PUBREL for an id never received: PUBCOMP 0x92 Packet Identifier not found [MQTT-3.7.2-1].
    raw.send(&packets::ack(0x62, 9)).await;
    let comp = raw.expect().await;
    assert_eq!((comp.byte1, comp.pid(), comp.body[2]), (0x70, 9, 0x92));
    assert!(
        String::from_utf8_lossy(&comp.body[3..]).contains("packet identifier not found"),
        "with a reason string: {comp:?}"
    );
    // PUBREC for an id never sent: PUBREL 0x92 Packet Identifier not found (section 3.6.2.1),
    // so that a client whose session state disagrees can finish its flow.
    raw.send(&packets::ack(0x50, 11)).await;
    let rel = raw.expect().await;
    assert_eq!((rel.byte1, rel.pid(), rel.body[2]), (0x62, 11, 0x92));
}

#[tokio::test]
async fn rumqttc_v5_publishes_with_properties_end_to_end() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = broker();
    let addr = broker.local_addr();
    let mut options = MqttOptions::new("rumqttc-props", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("req/+", QoS::AtLeastOnce)
        .await
        .expect("queued");
    let run = async {
        loop {
            match eventloop.poll().await.expect("event loop") {
                Event::Incoming(Packet::SubAck(_)) => {
                    let props = PublishProperties {
                        response_topic: Some("resp/1".into()),
                        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
                        user_properties: vec![("device".into(), "gate".into())],
                        ..Default::default()
                    };
                    client
                        .publish_with_properties("req/1", QoS::AtLeastOnce, false, "status?", props)
                        .await
                        .expect("queued");
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    };
    let got = tokio::time::timeout(common::WAIT, run)
        .await
        .expect("round trip");
    let props = got.properties.expect("properties");
    assert_eq!(props.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(
        props.user_properties,
        vec![("device".to_string(), "gate".to_string())]
    );
}

#[tokio::test]
async fn no_reason_strings_on_acknowledgements_when_the_client_asks_for_none() {
    // [MQTT-3.1.2-29] Request Problem Information 0: no Reason String on PUBACK or SUBACK.
    let broker = broker();
    let props = Props::new().byte(prop::REQUEST_PROBLEM_INFO, 0);
    let (mut raw, _) = Raw::connect5(
        broker.local_addr(),
        &connect5("quiet", true, 60, &props, None),
    )
    .await;
    raw.send(&publish5(
        "a",
        &[0xFF],
        1,
        5,
        false,
        &Props::new().byte(prop::PAYLOAD_FORMAT, 1),
    ))
    .await;
    let ack = raw.expect().await;
    assert_eq!((ack.byte1, &ack.body[..]), (0x40, &[0, 5, 0x99][..]));
    raw.send(&common::v5::subscribe5(2, &Props::new(), &[("bad/#/x", 0)]))
        .await;
    let suback = raw.expect().await;
    assert_eq!(&suback.body[..], &[0, 2, 0, 0x8F][..], "no properties");
}

/// A publish interceptor that lets through only messages carrying a `tenant` user property, and
/// moves them under `tenants/<tenant>/`.
struct TenantPolicy;

impl actix::Actor for TenantPolicy {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchboard::hooks::AuthorizePublish> for TenantPolicy {
    type Result = switchboard::hooks::PublishDecision;

    fn handle(
        &mut self,
        q: switchboard::hooks::AuthorizePublish,
        _: &mut Self::Context,
    ) -> Self::Result {
        use switchboard::hooks::PublishDecision;
        let tenant = q.properties.as_ref().and_then(|p| {
            p.user_properties
                .iter()
                .find(|(k, _)| k == "tenant")
                .map(|(_, v)| v.clone())
        });
        match tenant {
            Some(tenant) => PublishDecision::Rewrite {
                topic: format!("tenants/{tenant}/{}", q.topic),
                payload: q.payload,
            },
            None => PublishDecision::Drop,
        }
    }
}

#[tokio::test]
async fn a_publish_interceptor_sees_mqtt5_properties_and_a_rewrite_keeps_them() {
    use actix::Actor;
    let broker = switchboard::BackgroundBroker::start_with(common::test_config(), |b| {
        b.interceptors(switchboard::hooks::Interceptors {
            publish: Some(TenantPolicy.start().recipient()),
            ..Default::default()
        })
    })
    .expect("broker starts");
    let addr = broker.local_addr();
    let mut sub = subscriber5(addr, "tenant-sub", Props::new(), "tenants/#", 0).await;
    let mut publisher = Raw::handshake5(addr, "tenant-pub").await;
    publisher
        .send(&publish5(
            "gate/1",
            b"no tenant",
            0,
            0,
            false,
            &Props::new(),
        ))
        .await;
    let props = Props::new()
        .user("tenant", "north")
        .str(prop::CONTENT_TYPE, "text/plain");
    publisher
        .send(&publish5("gate/1", b"north", 0, 0, false, &props))
        .await;
    let got = publish_of(&sub.expect().await);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("tenants/north/gate/1", &b"north"[..])
    );
    let p = got.properties.expect("properties kept");
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert!(
        sub.sync5().await.is_empty(),
        "the message without a tenant was dropped"
    );
}

#[tokio::test]
async fn an_inbound_qos_2_flow_completes_after_its_message_expired() {
    // [MQTT-4.3.3-13] the broker, as a QoS 2 receiver, answers the PUBREL with PUBCOMP though
    // the message's Message Expiry Interval ran out in between; the message reached its
    // subscriber once, when it was taken.
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = Raw::handshake5(addr, "late-sub").await;
    sub.subscribe5(1, &Props::new(), &[("late/#", 2)]).await;
    let mut publisher = Raw::handshake5(addr, "late-pub").await;
    let short = Props::new().u32(prop::MESSAGE_EXPIRY, 1);
    publisher
        .send(&publish5("late/1", b"slow", 2, 7, false, &short))
        .await;
    let rec = publisher.expect().await;
    assert_eq!((rec.byte1, rec.pid()), (0x50, 7), "PUBREC");
    let got = publish_of(&sub.expect().await);
    assert_eq!(&got.payload[..], b"slow");
    // Letting the 1 s expiry pass is the point of this test.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    publisher.send(&packets::ack(0x62, 7)).await;
    let comp = publisher.expect().await;
    assert_eq!((comp.byte1, comp.pid()), (0x70, 7), "PUBCOMP");
    assert_eq!(
        comp.body.get(2).copied().unwrap_or(0),
        0x00,
        "success (a PUBCOMP may leave a 0x00 out)"
    );
    sub.send(&packets::ack(0x50, got.pkid)).await;
    assert_eq!(sub.expect().await.byte1, 0x62, "PUBREL");
    sub.send(&packets::ack(0x70, got.pkid)).await;
    assert!(sub.sync5().await.is_empty(), "delivered once");
}

/// The bytes of a Variable Byte Integer's minimal encoding of `value`.
fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[tokio::test]
async fn remaining_lengths_are_encoded_in_the_fewest_bytes() {
    // [MQTT-1.5.5-1] the broker's PUBLISH to a subscriber uses the fewest bytes for its
    // Remaining Length on each side of every boundary: 127 and 128, 16,383 and 16,384.
    use tokio::io::AsyncReadExt;
    let broker = broker();
    let addr = broker.local_addr();
    let topic = "vbi/t";
    let mut sub = Raw::handshake5(addr, "vbi-sub").await;
    sub.subscribe5(1, &Props::new(), &[("vbi/#", 0)]).await;
    let mut publisher = Raw::handshake5(addr, "vbi-pub").await;
    // A QoS 0 PUBLISH to the subscriber: topic length and topic, an empty property length,
    // the payload.
    let overhead = 2 + topic.len() + 1;
    for remaining in [127usize, 128, 16_383, 16_384] {
        let payload = vec![b'x'; remaining - overhead];
        publisher
            .send(&publish5(topic, &payload, 0, 0, false, &Props::new()))
            .await;
        let mut first = [0u8; 1];
        sub.stream.read_exact(&mut first).await.expect("header");
        assert_eq!(first[0], 0x30, "a QoS 0 PUBLISH");
        let (mut value, mut bytes, mut shift) = (0usize, 0usize, 0);
        loop {
            let mut byte = [0u8; 1];
            sub.stream.read_exact(&mut byte).await.expect("length");
            value |= usize::from(byte[0] & 0x7F) << shift;
            bytes += 1;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        assert_eq!(value, remaining, "the PUBLISH as sent");
        assert_eq!(bytes, var_int_len(value), "{value} in the fewest bytes");
        let mut body = vec![0u8; value];
        sub.stream.read_exact(&mut body).await.expect("body");
    }
}
