//! The device actors over MQTT 5: request/response by Response Topic and Correlation Data,
//! MQTT 5 and 3.1.1 devices and apps mixed, negative acknowledgements and server DISCONNECTs
//! reported as events.

mod common;

use actix::prelude::*;
use common::*;
use switchboard_actors::fleet::{status_request_topic, GateBarrier, GateStatus};
use switchboard_actors::{
    ConnectionEvent, ConnectionOptions, DeviceActor, Enqueue, LinkDown, MessageId, ProtocolVersion,
    QoS, Request, Requester,
};

fn speaking(port: u16, id: &str, protocol: ProtocolVersion) -> ConnectionOptions {
    let mut o = options(port, id);
    o.protocol = protocol;
    o
}

/// An app whose Requester listens on `filter`, over `protocol`.
async fn requester(port: u16, protocol: ProtocolVersion, filter: &str) -> Addr<Requester> {
    let (conn, mut events) = connection(speaking(port, "app", protocol));
    let requester = Requester::new(conn, filter, WAIT).start();
    granted(&mut events, filter).await;
    requester
}

async fn gate_ready(
    port: u16,
    id: &str,
    protocol: ProtocolVersion,
) -> Addr<DeviceActor<GateBarrier>> {
    // The gate announces its state once subscribed; a watcher waits for that.
    let (watch, mut events) = connection(speaking(
        port,
        &format!("{id}-watch"),
        ProtocolVersion::V3_1_1,
    ));
    let (sink, mut inbox) = probe::<switchboard_actors::Received>();
    switchboard_actors::Consumer::new(
        watch,
        vec![(format!("detrd/state/{id}"), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    granted(&mut events, &format!("detrd/state/{id}")).await;
    let gate = DeviceActor::start(GateBarrier::new(id), speaking(port, id, protocol));
    inbox.next().await;
    gate
}

#[actix_rt::test]
async fn an_mqtt5_request_is_answered_on_its_response_topic_with_its_correlation_data() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let _gate = gate_ready(port, "1AB.ENTER.GATE", ProtocolVersion::V5).await;
    // The app listens on a topic of its own: only an answer sent to the Response Topic gets there.
    let requester = requester(port, ProtocolVersion::V5, "apps/app/answers").await;
    let request = Request::new(
        status_request_topic("1AB.ENTER.GATE"),
        serde_json::json!({}),
    )
    .answer_on("apps/app/answers");
    let body = requester
        .send(request)
        .await
        .expect("requester")
        .expect("answered");
    let status: GateStatus = serde_json::from_value(body).expect("gate status");
    assert_eq!(status.device, "1AB.ENTER.GATE");
}

#[actix_rt::test]
async fn mqtt5_apps_and_mqtt311_devices_work_together_both_ways() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let _old_gate = gate_ready(port, "1AB.OLD.GATE", ProtocolVersion::V3_1_1).await;
    let _new_gate = gate_ready(port, "1AB.NEW.GATE", ProtocolVersion::V5).await;
    for app_protocol in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let requester = requester(port, app_protocol, "detrd/status/response/+").await;
        for id in ["1AB.OLD.GATE", "1AB.NEW.GATE"] {
            let request = switchboard_actors::fleet::status_request(id);
            let body = requester
                .send(request)
                .await
                .expect("requester")
                .expect("answered");
            let status: GateStatus = serde_json::from_value(body).expect("gate status");
            assert_eq!(status.device, id, "{app_protocol} app, device {id}");
        }
    }
}

#[actix_rt::test]
async fn a_taken_over_mqtt5_connection_reports_the_broker_disconnect_reason() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (_first, mut events) = connection(speaking(port, "twin", ProtocolVersion::V5));
    assert!(!connected(&mut events).await);
    // Another client takes the id over: the first hears DISCONNECT 0x8E (Session taken over).
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    // MQTT 5 CONNECT, clean start, keep-alive 30, no properties, client id "twin".
    let connect = [
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 4, b't', b'w', b'i', b'n',
    ];
    tokio::io::AsyncWriteExt::write_all(&mut raw, &connect)
        .await
        .expect("write");
    let reason = events
        .find(|e| match e {
            ConnectionEvent::Disconnected(reason) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason, LinkDown::DisconnectedByBroker(0x8E));
}

#[actix_rt::test]
async fn an_mqtt5_negative_puback_is_reported_as_a_dropped_message() {
    // The broker refuses a payload that is not the UTF-8 its format indicator claims (0x99).
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (conn, mut events) = connection(speaking(port, "sender", ProtocolVersion::V5));
    connected(&mut events).await;
    let bad = Enqueue::new("x", vec![0xFFu8, 0xFE], QoS::AtLeastOnce).with_properties(
        switchboard_actors::MessageProperties {
            payload_format: Some(1),
            ..Default::default()
        },
    );
    let id = conn.send(bad).await.expect("actor").expect("queued");
    let (dropped, why) = events
        .find(|e| match e {
            ConnectionEvent::MessageDropped(id, why) => Some((*id, *why)),
            _ => None,
        })
        .await;
    assert_eq!(
        (dropped, why),
        (id, switchboard_actors::DropReason::Refused(0x99))
    );
}

/// What became of the next `n` messages, in the order the events came: dropped (with why) or
/// delivered. Panics if the link drops meanwhile.
async fn outcomes(
    events: &mut Inbox<ConnectionEvent>,
    n: usize,
) -> Vec<(MessageId, Option<switchboard_actors::DropReason>)> {
    let mut outcomes = Vec::new();
    while outcomes.len() < n {
        match events.next().await {
            ConnectionEvent::MessageDropped(id, reason) => outcomes.push((id, Some(reason))),
            ConnectionEvent::MessageDelivered(id) => outcomes.push((id, None)),
            ConnectionEvent::Disconnected(why) => panic!("the link dropped: {why:?}"),
            _ => {}
        }
    }
    outcomes
}

#[actix_rt::test]
async fn a_message_over_the_brokers_maximum_packet_size_is_dropped_not_sent() {
    // [MQTT-3.2.2-15] the client must not send a packet over the Maximum Packet Size the
    // broker announced in CONNACK; the broker would close the connection on it, and the
    // message would come back after every reconnect.
    let mut config = switchboard::Config::default();
    config.listener.port = 0;
    config.http.port = 0;
    config.limits.max_packet_size = 200;
    let broker = switchboard::BackgroundBroker::start(config).expect("broker starts");
    let port = broker.local_addr().port();
    let (conn, mut events) = connection(speaking(port, "sender", ProtocolVersion::V5));
    assert!(!connected(&mut events).await);
    let big = conn
        .send(Enqueue::new("t/big", vec![b'x'; 500], QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    let small = conn
        .send(Enqueue::new("t/small", "ok", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcomes(&mut events, 2).await,
        [
            (big, Some(switchboard_actors::DropReason::TooLarge)),
            (small, None)
        ]
    );
}

#[actix_rt::test]
async fn a_topic_over_the_brokers_limits_is_refused_and_the_next_message_goes_on() {
    // The broker takes at most 32 topic levels by default: over MQTT 5 it refuses the message
    // with 0x90 and keeps the connection, so the queue behind it is not stuck behind a message
    // that a reconnect would only send again.
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (conn, mut events) = connection(speaking(port, "sender", ProtocolVersion::V5));
    connected(&mut events).await;
    let deep = vec!["level"; 40].join("/");
    let refused = conn
        .send(Enqueue::new(deep, "x", QoS::AtLeastOnce))
        .await
        .expect("actor")
        .expect("queued");
    let next = conn
        .send(Enqueue::new("t/next", "ok", QoS::AtLeastOnce))
        .await
        .expect("actor")
        .expect("queued");
    assert_eq!(
        outcomes(&mut events, 2).await,
        [
            (refused, Some(switchboard_actors::DropReason::Refused(0x90))),
            (next, None)
        ]
    );
}

#[actix_rt::test]
async fn message_expiry_is_sent_as_what_remains_and_a_message_that_ran_out_is_dropped() {
    // [MQTT-3.3.2-6] the interval sent is what remains of it; one that ran out while queued is
    // not sent at all ([MQTT-3.3.2-5] is the broker's side of the same rule).
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (sub, mut sub_events) = connection(speaking(port, "watcher", ProtocolVersion::V5));
    sub.do_send(switchboard_actors::Subscribe {
        filter: "t/#".into(),
        qos: QoS::AtLeastOnce,
    });
    granted(&mut sub_events, "t/#").await;
    let (conn, mut events) = connection(speaking(port, "sender", ProtocolVersion::V5));
    connected(&mut events).await;
    let mut expiring = Enqueue::new("t/expiring", "a", QoS::AtLeastOnce);
    expiring.expiry = Some(600);
    let mut ran_out = Enqueue::new("t/ran-out", "b", QoS::AtLeastOnce);
    ran_out.expiry = Some(0);
    conn.send(expiring).await.expect("actor").expect("queued");
    let gone = conn.send(ran_out).await.expect("actor").expect("queued");
    conn.send(Enqueue::new("t/last", "c", QoS::AtLeastOnce))
        .await
        .expect("actor")
        .expect("queued");
    let dropped = events
        .find(|e| match e {
            ConnectionEvent::MessageDropped(id, why) => Some((*id, *why)),
            _ => None,
        })
        .await;
    assert_eq!(dropped, (gone, switchboard_actors::DropReason::Expired));
    let mut got = Vec::new();
    while got.len() < 2 {
        if let ConnectionEvent::MessageReceived(m) = sub_events.next().await {
            got.push((m.topic, m.expiry));
        }
    }
    let (first, last) = (&got[0], &got[1]);
    assert_eq!(first.0, "t/expiring");
    assert!(first.1.is_some_and(|s| (1..=600).contains(&s)), "{first:?}");
    assert_eq!(last, &("t/last".to_string(), None));
}
