//! The device actors against Debian's Mosquitto, a broker a fleet may run before or beside
//! Switchboard: the gate answers status requests (MQTT 3.1.1 in the payload, MQTT 5 by Response
//! Topic and Correlation Data) and commands, the managed connection loses no QoS 1 message
//! across a Mosquitto killed and started again, and resumes a session Mosquitto kept without
//! subscribing again. `.ci/run` installs Mosquitto; without it (and not under CI) each test says
//! so and passes.

mod common;

use std::collections::BTreeMap;

use actix::prelude::*;
use common::interop::mosquitto_broker_available;
use common::mosquitto::MosquittoPeer;
use common::*;
use switchboard_actors::fleet::{
    command_topic, state_topic, status_request, BarrierState, GateBarrier, GateStatus,
};
use switchboard_actors::{
    ConnectionEvent, ConnectionOptions, DeviceActor, Enqueue, PendingCount, ProtocolVersion,
    Publish, QoS, Received, Requester,
};

fn speaking(port: u16, id: &str, protocol: ProtocolVersion) -> ConnectionOptions {
    let mut o = options(port, id);
    o.protocol = protocol;
    o
}

/// The gate's state as it announces it on `detrd/state/{id}`.
async fn announced(states: &mut Inbox<Received>, id: &str) -> GateStatus {
    let topic = state_topic(id);
    let r = states.find(|r| (r.topic == topic).then(|| r.clone())).await;
    serde_json::from_slice(&r.payload).expect("the gate's state")
}

#[actix_rt::test]
async fn a_gate_answers_requests_and_commands_through_mosquitto_over_mqtt_3_and_5() {
    if !mosquitto_broker_available() {
        return;
    }
    let mosquitto = MosquittoPeer::start();
    let port = mosquitto.addr.port();
    for (n, (device, app)) in [
        (ProtocolVersion::V3_1_1, ProtocolVersion::V3_1_1),
        (ProtocolVersion::V5, ProtocolVersion::V5),
        (ProtocolVersion::V3_1_1, ProtocolVersion::V5),
        (ProtocolVersion::V5, ProtocolVersion::V3_1_1),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("{n}AB.ENTER.GATE");
        let (_watch, mut states, _) = consumer_with(
            speaking(port, &format!("{id}-watch"), app),
            &state_topic(&id),
        )
        .await;
        let _gate = DeviceActor::start(GateBarrier::new(&id), speaking(port, &id, device));
        assert_eq!(
            announced(&mut states, &id).await.state,
            BarrierState::Closed
        );

        let (conn, mut events) = connection(speaking(port, &format!("{id}-app"), app));
        let requester = Requester::new(conn.clone(), "detrd/status/response/+", WAIT).start();
        granted(&mut events, "detrd/status/response/+").await;
        let status: GateStatus = serde_json::from_value(
            requester
                .send(status_request(&id))
                .await
                .expect("requester")
                .expect("answered through Mosquitto"),
        )
        .expect("gate status");
        assert_eq!(
            (status.device.as_str(), status.state, status.commands),
            (id.as_str(), BarrierState::Closed, 0),
            "device {device}, app {app}"
        );

        // A command through Mosquitto moves the barrier, and the gate announces it.
        let publisher = switchboard_actors::Publisher::new(conn).start();
        publisher
            .send(Publish {
                topic: command_topic(&id),
                payload: r#"{"action":"open"}"#.into(),
                qos: QoS::AtLeastOnce,
                retain: false,
            })
            .await
            .expect("publisher")
            .expect("queued");
        assert_eq!(announced(&mut states, &id).await.state, BarrierState::Open);
    }
}

#[actix_rt::test]
async fn an_mqtt5_answer_comes_back_on_the_response_topic_through_mosquitto() {
    if !mosquitto_broker_available() {
        return;
    }
    let mosquitto = MosquittoPeer::start();
    let port = mosquitto.addr.port();
    let id = "1AB.ENTER.GATE";
    let (_watch, mut states, _) = consumer_with(
        speaking(port, "watch", ProtocolVersion::V5),
        &state_topic(id),
    )
    .await;
    let _gate = DeviceActor::start(
        GateBarrier::new(id),
        speaking(port, id, ProtocolVersion::V5),
    );
    announced(&mut states, id).await;
    // The app listens on a topic of its own: only an answer the gate sends to the request's
    // Response Topic, with its Correlation Data, gets there and is matched.
    let (conn, mut events) = connection(speaking(port, "app", ProtocolVersion::V5));
    let requester = Requester::new(conn, "apps/app/answers", WAIT).start();
    granted(&mut events, "apps/app/answers").await;
    let body = requester
        .send(status_request(id).answer_on("apps/app/answers"))
        .await
        .expect("requester")
        .expect("answered");
    let status: GateStatus = serde_json::from_value(body).expect("gate status");
    assert_eq!(status.device, id);
}

#[actix_rt::test]
async fn a_mosquitto_killed_mid_stream_loses_no_qos1_message_over_mqtt_3() {
    killed_mid_stream(ProtocolVersion::V3_1_1).await;
}

#[actix_rt::test]
async fn a_mosquitto_killed_mid_stream_loses_no_qos1_message_over_mqtt_5() {
    killed_mid_stream(ProtocolVersion::V5).await;
}

/// Queues messages `numbers` (each its number as text) to `topic` at QoS 1 on `connection`.
async fn enqueue_numbered(
    connection: &Addr<switchboard_actors::ManagedConnection>,
    topic: &str,
    numbers: std::ops::Range<u32>,
) {
    for n in numbers {
        connection
            .send(Enqueue::new(topic, n.to_string(), QoS::AtLeastOnce))
            .await
            .expect("the connection")
            .expect("queued");
    }
}

/// A radar's QoS 1 stream to an app through Mosquitto; Mosquitto is killed (nothing saved) and
/// started again on the same port: what the radar queued meanwhile arrives once each, in order.
async fn killed_mid_stream(protocol: ProtocolVersion) {
    if !mosquitto_broker_available() {
        return;
    }
    let mut mosquitto = MosquittoPeer::start();
    let port = mosquitto.addr.port();
    let filter = "detrd/status/response/+";
    let (_app, mut received, mut app_events) =
        consumer_with(speaking(port, "app", protocol), filter).await;
    // The radar reaches Mosquitto through a proxy, so that the test lets it back only once the
    // app has subscribed again (a restarted Mosquitto has no sessions).
    let mut proxy = Proxy::start(0, mosquitto.addr).await;
    let (radar, mut radar_events) = connection(speaking(proxy.port, "1AB.ENTER.DETRD", protocol));
    connected(&mut radar_events).await;
    let topic = "detrd/status/response/1AB.ENTER.DETRD";
    enqueue_numbered(&radar, topic, 0..50).await;
    assert_eq!(
        receive(&mut received, 50).await,
        (0..50).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    radar_events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(50)).then_some(()))
        .await;

    mosquitto.kill();
    proxy.cut();
    disconnected(&mut radar_events).await;
    disconnected(&mut app_events).await;
    enqueue_numbered(&radar, topic, 50..100).await;
    assert_eq!(radar.send(PendingCount).await.expect("radar"), 50);

    mosquitto.restart();
    assert!(
        !connected(&mut app_events).await,
        "a restarted Mosquitto without persistence has no session"
    );
    granted(&mut app_events, filter).await;
    proxy.resume();
    connected(&mut radar_events).await;
    let mut counts = BTreeMap::new();
    let mut order = Vec::new();
    for payload in receive(&mut received, 50).await {
        let n: u32 = payload.parse().expect("a number");
        *counts.entry(n).or_insert(0) += 1;
        order.push(n);
    }
    for n in 50..100 {
        assert_eq!(counts.get(&n), Some(&1), "message {n}: {counts:?}");
    }
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
    radar_events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(100)).then_some(()))
        .await;
    assert_eq!(radar.send(PendingCount).await.expect("radar"), 0);
}

#[actix_rt::test]
async fn a_session_mosquitto_kept_is_resumed_without_subscribing_again_over_mqtt_3() {
    kept_session(ProtocolVersion::V3_1_1).await;
}

#[actix_rt::test]
async fn a_session_mosquitto_kept_is_resumed_without_subscribing_again_over_mqtt_5() {
    kept_session(ProtocolVersion::V5).await;
}

/// An app with a kept session loses its link; what is published meanwhile waits in Mosquitto,
/// and comes once the app is back, which sees Session Present and subscribes to nothing again.
async fn kept_session(protocol: ProtocolVersion) {
    if !mosquitto_broker_available() {
        return;
    }
    let mosquitto = MosquittoPeer::start();
    let mut proxy = Proxy::start(0, mosquitto.addr).await;
    let mut app_options = speaking(proxy.port, "app", protocol);
    app_options.clean_session = false;
    let (app, mut received, mut events) = consumer_with(app_options, "keep/#").await;
    let (publisher, mut publisher_events) =
        connection(speaking(mosquitto.addr.port(), "pub", protocol));

    proxy.cut();
    disconnected(&mut events).await;
    publisher
        .send(Enqueue::new("keep/a", "while away", QoS::AtLeastOnce))
        .await
        .expect("publisher")
        .expect("queued");
    // Acknowledged by Mosquitto while the app is away: it is in the app's session there.
    publisher_events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(1)).then_some(()))
        .await;
    proxy.resume();
    assert!(connected(&mut events).await, "Mosquitto kept the session");
    assert_eq!(receive(&mut received, 1).await, vec!["while away"]);
    assert_not_subscribed_again(&app, &mut received, &mut events).await;
}
