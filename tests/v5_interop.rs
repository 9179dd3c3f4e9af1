//! MQTT 3.1.1 and MQTT 5.0 clients on the same topics, with rumqttc's v4 and v5 clients: every
//! QoS both ways, retained messages across versions, and MQTT 5 properties withheld from 3.1.1
//! subscribers.

mod common;

use bytes::Bytes;
use common::v5::peer5;
use common::{broker, options, peer};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v4_qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

#[tokio::test]
async fn mqtt5_to_mqtt311_and_back_at_every_qos() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut old = peer(options(addr, "gate-311")).await;
    let mut new = peer5(addr, "app-v5").await;
    old.subscribe("detrd/status/request/+", rumqttc::QoS::ExactlyOnce)
        .await;
    new.subscribe("detrd/status/response/+", v5_qos(2)).await;
    for q in 0..=2u8 {
        // 5.0 -> 3.1.1: the request, with properties a 3.1.1 client cannot receive.
        let props = PublishProperties {
            response_topic: Some("detrd/status/response/1AB".into()),
            correlation_data: Some(Bytes::from(vec![q])),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        new.client
            .publish_with_properties("detrd/status/request/1AB", v5_qos(q), false, vec![q], props)
            .await
            .expect("queued");
        let got = old.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..], got.qos),
            ("detrd/status/request/1AB", &[q][..], v4_qos(q))
        );

        // 3.1.1 -> 5.0: the answer arrives with no properties.
        old.client
            .publish("detrd/status/response/1AB", v4_qos(q), false, vec![q, q])
            .await
            .expect("queued");
        let got = new.next_publish().await;
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            (&b"detrd/status/response/1AB"[..], &[q, q][..])
        );
        assert_eq!(got.qos, v5_qos(q));
        assert!(got
            .properties
            .is_none_or(|p| p.user_properties.is_empty() && p.response_topic.is_none()));
    }
}

#[tokio::test]
async fn retained_messages_cross_versions() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut old = peer(options(addr, "retain-311")).await;
    old.client
        .publish("gate/1AB/state", rumqttc::QoS::AtLeastOnce, true, "open")
        .await
        .expect("queued");
    // The PUBACKs say the broker holds both retained messages before anyone subscribes.
    while !matches!(old.next().await, Ok(rumqttc::Incoming::PubAck(_))) {}
    let mut new = peer5(addr, "retain-v5").await;
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    new.client
        .publish_with_properties("radar/7/state", v5_qos(1), true, "idle", props)
        .await
        .expect("queued");
    while !matches!(new.next().await, rumqttc::v5::Incoming::PubAck(_)) {}

    // Each version's retained message reaches a subscriber of the other version, flagged RETAIN.
    let mut new_reader = peer5(addr, "reader-v5").await;
    new_reader.subscribe("gate/+/state", v5_qos(1)).await;
    let got = new_reader.next_publish().await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"open");
    let mut old_reader = peer(options(addr, "reader-311")).await;
    old_reader
        .subscribe("radar/+/state", rumqttc::QoS::AtLeastOnce)
        .await;
    let got = old_reader.next_publish().await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"idle");
}
