//! The Device pattern and the fleet's devices against a real broker: status requests with
//! correlation ids, commands, periodic reports, timeouts.

mod common;

use std::time::Duration;

use actix::prelude::*;
use common::*;
use switchboard_actors::fleet::{
    command_topic, detection_topic, state_topic, status_request_topic, BarrierState, Detection,
    GateBarrier, GateStatus, RadarDetector, RadarStatus,
};
use switchboard_actors::{
    Consumer, DeviceActor, Enqueue, Envelope, Publish, Publisher, QoS, Received, Request,
    RequestError, Requester,
};

struct App {
    requester: Addr<Requester>,
    publisher: Addr<Publisher>,
    states: Inbox<Received>,
}

/// The server-side app: a connection with a Requester, a Publisher, and a Consumer of device
/// states (each device announces itself there once it is subscribed).
async fn app(port: u16, timeout: Duration) -> App {
    let (conn, mut events) = connection(options(port, "detrd-app"));
    let (sink, states) = probe::<Received>();
    Consumer::new(
        conn.clone(),
        vec![("detrd/state/+".into(), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    let requester = Requester::new(conn.clone(), "detrd/status/response/+", timeout).start();
    granted_all(&mut events, &["detrd/status/response/+", "detrd/state/+"]).await;
    App {
        requester,
        publisher: Publisher::new(conn).start(),
        states,
    }
}

async fn state_of(app: &mut App, id: &str) -> serde_json::Value {
    let topic = state_topic(id);
    let r = app
        .states
        .find(|r| (r.topic == topic).then(|| r.clone()))
        .await;
    serde_json::from_slice(&r.payload).unwrap()
}

#[actix_rt::test]
async fn gate_barrier_answers_status_requests_and_commands() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let mut app = app(port, WAIT).await;
    let id = "1AB.ENTER.GATE";
    DeviceActor::start(GateBarrier::new(id), options(port, id));
    let announced: GateStatus = serde_json::from_value(state_of(&mut app, id).await).unwrap();
    assert_eq!(announced.state, BarrierState::Closed);

    let ask = || {
        Request::new(
            status_request_topic(id),
            serde_json::json!({"ask": "status"}),
        )
    };
    let status: GateStatus =
        serde_json::from_value(app.requester.send(ask()).await.unwrap().unwrap()).unwrap();
    assert_eq!(
        (status.device.as_str(), status.state, status.commands),
        (id, BarrierState::Closed, 0)
    );

    app.publisher
        .send(Publish {
            topic: command_topic(id),
            payload: r#"{"action":"open"}"#.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
        })
        .await
        .unwrap()
        .unwrap();
    let moved: GateStatus = serde_json::from_value(state_of(&mut app, id).await).unwrap();
    assert_eq!(moved.state, BarrierState::Open);
    let status: GateStatus =
        serde_json::from_value(app.requester.send(ask()).await.unwrap().unwrap()).unwrap();
    assert_eq!((status.state, status.commands), (BarrierState::Open, 1));
}

#[actix_rt::test]
async fn radar_answers_and_reports_detections_periodically() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (conn, mut events) = connection(options(port, "watcher"));
    let (sink, mut detections) = probe::<Received>();
    Consumer::new(conn, vec![(detection_topic("+"), QoS::AtMostOnce)], sink).start();
    granted(&mut events, "detrd/detection/+").await;
    let mut app = app(port, WAIT).await;
    let id = "1AB.ENTER.DETRD";
    DeviceActor::start(
        RadarDetector::new(id, Duration::from_millis(30)),
        options(port, id),
    );
    state_of(&mut app, id).await;

    let mut sequences = Vec::new();
    while sequences.len() < 3 {
        let d: Detection = serde_json::from_slice(&detections.next().await.payload).unwrap();
        assert_eq!(d.device, id);
        assert!((5..=40).contains(&d.speed_kmh));
        sequences.push(d.sequence);
    }
    assert!(sequences.windows(2).all(|w| w[1] > w[0]), "{sequences:?}");
    let body = app
        .requester
        .send(Request::new(
            status_request_topic(id),
            serde_json::json!({}),
        ))
        .await
        .unwrap()
        .unwrap();
    let status: RadarStatus = serde_json::from_value(body).unwrap();
    assert!(status.healthy && status.detections >= 3);
}

#[actix_rt::test]
async fn a_request_without_an_answer_is_reported_as_timed_out() {
    let broker = broker_on(0);
    let app = app(broker.local_addr().port(), Duration::from_millis(200)).await;
    let result = app
        .requester
        .send(Request::new(
            status_request_topic("9ZZ.EXIT.NOBODY"),
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    assert!(
        matches!(result, Err(RequestError::Timeout { .. })),
        "{result:?}"
    );
}

#[actix_rt::test]
async fn plain_seed_style_requests_are_answered_without_correlation() {
    // The app of the original C# scenario publishes the bare string "data".
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let mut app = app(port, WAIT).await;
    let id = "1AB.ENTER.DETRD";
    DeviceActor::start(
        RadarDetector::new(id, Duration::from_secs(3600)),
        options(port, id),
    );
    state_of(&mut app, id).await;
    let (conn, mut events) = connection(options(port, "seed-app"));
    let (sink, mut responses) = probe::<Received>();
    Consumer::new(
        conn.clone(),
        vec![(format!("detrd/status/response/{id}"), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    granted(&mut events, &format!("detrd/status/response/{id}")).await;
    conn.send(Enqueue::new(
        status_request_topic(id),
        "data",
        QoS::AtLeastOnce,
    ))
    .await
    .unwrap()
    .unwrap();
    let answer: Envelope = serde_json::from_slice(&responses.next().await.payload).unwrap();
    assert_eq!(answer.correlation_id, None);
    assert_eq!(answer.body["device"], id);
}

#[actix_rt::test]
async fn publisher_publishes_on_an_interval() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (conn, mut events) = connection(options(port, "listener"));
    let (sink, mut ticks) = probe::<Received>();
    Consumer::new(conn, vec![("tick".into(), QoS::AtMostOnce)], sink).start();
    granted(&mut events, "tick").await;
    let (publisher_conn, _) = connection(options(port, "ticker"));
    let publisher = Publisher::new(publisher_conn).start();
    let mut n = 0u32;
    publisher
        .send(switchboard_actors::PublishEvery {
            interval: Duration::from_millis(20),
            make: Box::new(move || {
                n += 1;
                Publish {
                    topic: "tick".into(),
                    payload: n.to_string().into(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                }
            }),
        })
        .await
        .unwrap();
    assert_eq!(receive(&mut ticks, 3).await, vec!["1", "2", "3"]);
}
