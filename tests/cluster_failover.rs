//! A device that knows two nodes of a cluster (the device actors' `failover` brokers) when its
//! node crashes: Debian's nats-server, node `a` as a child process killed with SIGKILL, node `b`
//! in process. The radar moves to `b` at once, subscribes there again, and what it published
//! before and after the crash reaches the app on `b`, each QoS 1 message once and in order.

mod common;

use std::time::Duration;

use actix::prelude::*;
use common::cluster::{child_node, next_payload, node, until_routed};
use common::forward::forward;
use common::nats::Nats;
use common::{options, peer};
use switchboard_actors::{
    Backoff, BrokerAddress, ConnectionEvent, ConnectionOptions, Consumer, Enqueue,
    ManagedConnection, QoS, Received,
};
use tokio::sync::mpsc;

/// The next event `pick` takes, skipping others; panics after 20 s.
async fn find<T>(
    events: &mut mpsc::UnboundedReceiver<ConnectionEvent>,
    mut pick: impl FnMut(&ConnectionEvent) -> Option<T>,
) -> T {
    let search = async {
        loop {
            let event = events.recv().await.expect("the connection's events");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), search)
        .await
        .expect("the event within 20 s")
}

async fn connected_to(events: &mut mpsc::UnboundedReceiver<ConnectionEvent>) -> BrokerAddress {
    find(events, |e| match e {
        ConnectionEvent::Connected { broker, .. } => Some(broker.clone()),
        _ => None,
    })
    .await
}

async fn granted(events: &mut mpsc::UnboundedReceiver<ConnectionEvent>, filter: &str) {
    find(events, |e| match e {
        ConnectionEvent::SubscriptionGranted {
            filter: f,
            granted: Some(_),
        } if f == filter => Some(()),
        _ => None,
    })
    .await
}

async fn enqueue(radar: &Addr<ManagedConnection>, topic: &str, range: std::ops::Range<u32>) {
    for n in range {
        radar
            .send(Enqueue::new(topic, format!("{n}"), QoS::AtLeastOnce))
            .await
            .expect("the radar's connection")
            .expect("queued");
    }
}

#[actix_rt::test]
async fn a_device_that_knows_two_nodes_moves_to_the_other_when_its_node_crashes() {
    if !common::nats_available() {
        return;
    }
    const RADAR: &str = "1AB.ENTER.DETRD";
    let response = format!("detrd/status/response/{RADAR}");
    let request = format!("detrd/status/request/{RADAR}");
    let nats = Nats::start();
    let b = node(&nats, "b", |_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, _logs, a_addr) = child_node(&nats, "a", "", dir.path());
    let mut app = peer(options(b.local_addr(), "app")).await;
    app.subscribe("detrd/status/response/+", rumqttc::QoS::AtLeastOnce)
        .await;
    let prober = peer(options(a_addr, "prober")).await;
    until_routed(
        &prober.client,
        &mut [&mut app],
        "detrd/status/response/probe",
    )
    .await;

    let mut radar_options = ConnectionOptions::new("127.0.0.1", a_addr.port(), RADAR);
    radar_options.failover = vec![BrokerAddress::new("127.0.0.1", b.local_addr().port())];
    radar_options.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    radar_options.connect_timeout = Duration::from_secs(2);
    let (listener, mut events) = forward::<ConnectionEvent>();
    let radar = ManagedConnection::start_with(radar_options, vec![listener]);
    let (sink, mut requests) = forward::<Received>();
    Consumer::new(
        radar.clone(),
        vec![(request.clone(), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    assert_eq!(connected_to(&mut events).await.port, a_addr.port());
    granted(&mut events, &request).await;
    enqueue(&radar, &response, 0..10).await;
    for n in 0..10 {
        assert_eq!(
            next_payload(&mut app).await,
            (response.clone(), n.to_string().into_bytes()),
            "through node a"
        );
    }

    // Node a crashes.
    a.0.kill().expect("SIGKILL");
    a.0.wait().expect("reaped");
    find(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected(_)).then_some(())
    })
    .await;
    enqueue(&radar, &response, 10..20).await;
    let (failed_at, retry_in) = find(&mut events, |e| match e {
        ConnectionEvent::ConnectFailed {
            broker, retry_in, ..
        } => Some((broker.clone(), *retry_in)),
        _ => None,
    })
    .await;
    assert_eq!((failed_at.port, retry_in), (a_addr.port(), Duration::ZERO));
    assert_eq!(connected_to(&mut events).await.port, b.local_addr().port());
    granted(&mut events, &request).await;
    for n in 10..20 {
        assert_eq!(
            next_payload(&mut app).await,
            (response.clone(), n.to_string().into_bytes()),
            "on node b, each once, in order"
        );
    }
    app.client
        .publish(&request, rumqttc::QoS::AtLeastOnce, false, "{}")
        .await
        .expect("queued");
    let asked = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("the request within 10 s")
        .expect("the radar's consumer");
    assert_eq!(&asked.payload[..], b"{}");
}
