//! The seed's gate/radar scenario across two brokers joined by a bridge.

mod common;

use std::net::SocketAddr;

use common::bridge::{bridge_ready, bridge_toml, site};
use common::eventually;

/// The seed's scenario across two brokers: the gate and the radar on a site broker, the app on
/// a central one, a bridge between them. Every status request the app sends is answered.
async fn gate_demo_across_two_brokers(protocol: &str) {
    use actix::Actor;
    use switchboard_actors::fleet::{
        status_request_topic, status_response_topic, GateBarrier, RadarDetector,
    };
    use switchboard_actors::{
        ConnectionOptions, Consumer, DeviceActor, ManagedConnection, ProtocolVersion, QoS, Request,
        Requester,
    };
    const GATE: &str = "1AB.ENTER.GATE";
    const RADAR: &str = "1AB.ENTER.DETRD";

    let central = common::broker();
    let topics = r#"
  { pattern = "detrd/status/response/#", direction = "out", qos = 1 },
  { pattern = "detrd/state/#", direction = "out", qos = 1 },
  { pattern = "detrd/detection/#", direction = "out", qos = 1 },
  { pattern = "detrd/status/request/#", direction = "in", qos = 1 },
  { pattern = "detrd/command/#", direction = "in", qos = 1 },"#;
    let site = site(
        &bridge_toml(central.local_addr(), protocol, topics, ""),
        |_| {},
    );
    bridge_ready(&site).await;

    let version = match protocol {
        "5" => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    };
    let at = |addr: SocketAddr, id: &str| {
        let mut options = ConnectionOptions::new("127.0.0.1", addr.port(), id);
        options.protocol = version;
        options
    };
    // The app, on the central broker, first: it hears each device announce itself.
    let app = ManagedConnection::start_with(at(central.local_addr(), "detrd-app"), Vec::new());
    let (sink, mut states) = common::forward::forward();
    let filters = vec![("detrd/state/+".to_string(), QoS::AtLeastOnce)];
    Consumer::new(app.clone(), filters, sink).start();
    let requester = Requester::new(
        app.clone(),
        "detrd/status/response/+",
        std::time::Duration::from_secs(3),
    )
    .start();
    eventually(|| async {
        let subs = app
            .send(switchboard_actors::GetSubscriptions)
            .await
            .expect("app");
        subs.values().filter(|s| s.granted.is_some()).count() == 2
    })
    .await;
    let _gate = DeviceActor::start(GateBarrier::new(GATE), at(site.local_addr(), GATE));
    let _radar = DeviceActor::start(
        RadarDetector::new(RADAR, std::time::Duration::from_millis(200)),
        at(site.local_addr(), RADAR),
    );
    let mut online = std::collections::BTreeSet::new();
    while online.len() < 2 {
        let state = tokio::time::timeout(common::WAIT, states.recv())
            .await
            .expect("a device announces itself through the bridge")
            .expect("open");
        online.insert(state.topic);
    }

    let mut answered = 0;
    for _cycle in 0..4 {
        for id in [RADAR, GATE] {
            let request = Request::new(
                status_request_topic(id),
                serde_json::json!({ "ask": "status" }),
            )
            .answer_on(status_response_topic(id));
            let answer = requester.send(request).await.expect("requester");
            assert!(
                answer.is_ok(),
                "{id} answered through the bridge: {answer:?}"
            );
            answered += 1;
        }
    }
    assert_eq!(answered, 8);
}

#[actix_rt::test]
async fn the_gate_demo_runs_across_a_site_and_a_central_broker_over_3_1_1() {
    gate_demo_across_two_brokers("3.1.1").await;
}

#[actix_rt::test]
async fn the_gate_demo_runs_across_a_site_and_a_central_broker_over_5() {
    gate_demo_across_two_brokers("5").await;
}
