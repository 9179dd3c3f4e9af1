//! The managed connection against a real broker over loopback TCP: reconnects, re-subscribes,
//! queues, overflows, survives restarts (the byte-exact cases against a fake broker are in
//! `fake_broker.rs`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use common::*;
use switchboard_actors::{
    ConnectionEvent, DropReason, Enqueue, EnqueueError, GetSubscriptions, Overflow, PendingCount,
    QoS, Received, Stop,
};

/// A Consumer of `filter` on its own connection; returns the received-message inbox and the
/// connection's events, once the subscription is granted.
async fn consumer(
    port: u16,
    id: &str,
    filter: &str,
    adjust: impl FnOnce(&mut switchboard_actors::ConnectionOptions),
) -> (
    Addr<switchboard_actors::ManagedConnection>,
    Inbox<Received>,
    Inbox<ConnectionEvent>,
) {
    let mut opts = options(port, id);
    adjust(&mut opts);
    consumer_with(opts, filter).await
}

#[actix_rt::test]
async fn broker_restart_mid_stream_loses_no_qos1_message() {
    broker_restart_mid_stream(switchboard_actors::ProtocolVersion::V3_1_1).await;
}

#[actix_rt::test]
async fn broker_restart_mid_stream_loses_no_qos1_message_over_mqtt5() {
    broker_restart_mid_stream(switchboard_actors::ProtocolVersion::V5).await;
}

async fn broker_restart_mid_stream(protocol: switchboard_actors::ProtocolVersion) {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (_app, mut received, mut app_events) =
        consumer(port, "app", "detrd/status/response/+", |o| {
            o.protocol = protocol
        })
        .await;
    // The radar reaches the broker through a proxy, so the test decides when it may reconnect.
    let mut proxy = Proxy::start(0, broker.local_addr()).await;
    let mut radar_options = options(proxy.port, "1AB.ENTER.DETRD");
    radar_options.protocol = protocol;
    let (radar, mut radar_events) = connection(radar_options);
    connected(&mut radar_events).await;
    let topic = "detrd/status/response/1AB.ENTER.DETRD";
    for n in 0..50 {
        radar
            .send(Enqueue::new(topic, format!("{n}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
    }
    let first = receive(&mut received, 50).await;
    assert_eq!(first, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
    // All acknowledged, so nothing of the first batch is in flight when the link is cut.
    radar_events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(50)).then_some(()))
        .await;

    // The broker goes away; the radar keeps producing.
    drop(broker);
    proxy.cut();
    disconnected(&mut radar_events).await;
    disconnected(&mut app_events).await;
    for n in 50..100 {
        radar
            .send(Enqueue::new(topic, format!("{n}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(radar.send(PendingCount).await.unwrap(), 50);

    // A new broker on the same port: the app reconnects and, the session being gone,
    // subscribes again; only then is the radar let through.
    let _broker = broker_on(port);
    assert!(
        !connected(&mut app_events).await,
        "a restarted broker has no session"
    );
    granted(&mut app_events, "detrd/status/response/+").await;
    proxy.resume();
    connected(&mut radar_events).await;
    let mut counts = BTreeMap::new();
    for payload in receive(&mut received, 50).await {
        *counts.entry(payload.parse::<u32>().unwrap()).or_insert(0) += 1;
    }
    for n in 50..100 {
        assert_eq!(counts.get(&n), Some(&1), "message {n}: {counts:?}");
    }
    radar_events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(100)).then_some(()))
        .await;
    assert_eq!(radar.send(PendingCount).await.unwrap(), 0);
}

/// Five messages into a queue of three while the broker is unreachable, then the link opens.
/// Returns the Enqueue results, what arrived, and the drop events.
async fn overflow_run(
    overflow: Overflow,
) -> (
    Vec<Result<u64, EnqueueError>>,
    Vec<String>,
    Vec<(u64, DropReason)>,
) {
    let broker = broker_on(0);
    let (_app, mut received, _) = consumer(broker.local_addr().port(), "app", "q/#", |_| {}).await;
    let port = free_port();
    let mut opts = options(port, "device");
    opts.queue_capacity = 3;
    opts.overflow = overflow;
    let (device, mut events) = connection(opts);
    events
        .find(|e| matches!(e, ConnectionEvent::ConnectFailed { .. }).then_some(()))
        .await;
    let mut results = Vec::new();
    for n in 1..=5 {
        results.push(
            device
                .send(Enqueue::new("q/x", format!("{n}"), QoS::AtLeastOnce))
                .await
                .unwrap(),
        );
    }
    assert_eq!(device.send(PendingCount).await.unwrap(), 3);
    let _proxy = Proxy::start(port, broker.local_addr()).await;
    let got = receive(&mut received, 3).await;
    // Everything queued is delivered and the count goes back to zero; drop events came first.
    let last = if overflow == Overflow::DropOldest {
        5
    } else {
        3
    };
    let mut drops = Vec::new();
    loop {
        match events.next().await {
            ConnectionEvent::MessageDropped(id, why) => drops.push((id, why)),
            ConnectionEvent::MessageDelivered(id) if id == last => break,
            _ => {}
        }
    }
    assert_eq!(device.send(PendingCount).await.unwrap(), 0);
    (results, got, drops)
}

#[actix_rt::test]
async fn overflow_drop_oldest() {
    let (results, got, drops) = overflow_run(Overflow::DropOldest).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(got, vec!["3", "4", "5"]);
    assert_eq!(
        drops,
        vec![
            (1, DropReason::QueueOverflow),
            (2, DropReason::QueueOverflow)
        ]
    );
}

#[actix_rt::test]
async fn overflow_drop_newest() {
    let (results, got, drops) = overflow_run(Overflow::DropNewest).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(got, vec!["1", "2", "3"]);
    assert_eq!(
        drops,
        vec![
            (4, DropReason::QueueOverflow),
            (5, DropReason::QueueOverflow)
        ]
    );
}

#[actix_rt::test]
async fn overflow_refuse_lets_the_caller_back_off() {
    let (results, got, drops) = overflow_run(Overflow::Refuse).await;
    assert_eq!(
        results,
        vec![
            Ok(1),
            Ok(2),
            Ok(3),
            Err(EnqueueError::QueueFull),
            Err(EnqueueError::QueueFull)
        ]
    );
    assert_eq!(got, vec!["1", "2", "3"]);
    assert!(drops.is_empty());
}

#[actix_rt::test]
async fn session_present_means_no_resubscribe() {
    session_present_no_resubscribe(switchboard_actors::ProtocolVersion::V3_1_1).await;
}

#[actix_rt::test]
async fn session_present_means_no_resubscribe_over_mqtt5() {
    // MQTT 5: clean_session = false is Clean Start 0 with a session that never expires.
    session_present_no_resubscribe(switchboard_actors::ProtocolVersion::V5).await;
}

async fn session_present_no_resubscribe(protocol: switchboard_actors::ProtocolVersion) {
    let broker = broker_on(0);
    let mut proxy = Proxy::start(0, broker.local_addr()).await;
    let (app, mut received, mut events) = consumer(proxy.port, "app", "keep/#", |o| {
        o.clean_session = false;
        o.protocol = protocol;
    })
    .await;
    let (publisher, _) = connection(options(broker.local_addr().port(), "pub"));

    proxy.cut();
    disconnected(&mut events).await;
    // Published while the app is away: the broker keeps it in the app's session.
    publisher
        .send(Enqueue::new("keep/a", "while away", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    proxy.resume();
    assert!(connected(&mut events).await, "the broker kept the session");
    assert_eq!(receive(&mut received, 1).await, vec!["while away"]);
    assert_not_subscribed_again(&app, &mut received, &mut events).await;
    let subs = app.send(GetSubscriptions).await.unwrap();
    assert_eq!(subs["keep/#"].granted, Some(Some(QoS::AtLeastOnce)));
}

#[actix_rt::test]
async fn durable_queue_survives_a_restart_of_the_device_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("radar.queue");
    let port = free_port();
    // First "process": no broker reachable; five messages queue up and are left on disk.
    let mut opts = options(port, "radar");
    opts.durable_queue = Some(path.clone());
    let (first, mut events) = connection(opts.clone());
    events
        .find(|e| matches!(e, ConnectionEvent::ConnectFailed { .. }).then_some(()))
        .await;
    for n in 1..=5 {
        first
            .send(Enqueue::new("d/x", format!("{n}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
    }
    let report = first
        .send(Stop {
            deadline: Duration::from_millis(50),
        })
        .await
        .unwrap();
    assert_eq!(report.undelivered, vec![1, 2, 3, 4, 5]);

    // Second "process": the broker is up; the same file is opened and everything is sent.
    let broker = broker_on(0);
    let (_app, mut received, _) = consumer(broker.local_addr().port(), "app", "d/#", |_| {}).await;
    opts.port = broker.local_addr().port();
    let (second, mut events) = connection(opts);
    assert_eq!(
        receive(&mut received, 5).await,
        vec!["1", "2", "3", "4", "5"]
    );
    events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(5)).then_some(()))
        .await;
    // New messages get new ids.
    assert_eq!(
        second
            .send(Enqueue::new("d/x", "6", QoS::AtLeastOnce))
            .await
            .unwrap(),
        Ok(6)
    );
}

#[actix_rt::test]
async fn stop_flushes_the_queue_within_the_deadline() {
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (_app, mut received, _) = consumer(port, "app", "s/#", |_| {}).await;
    let (device, mut events) = connection(options(port, "device"));
    connected(&mut events).await;
    for n in 0..10 {
        device
            .send(Enqueue::new("s/x", format!("{n}"), QoS::ExactlyOnce))
            .await
            .unwrap()
            .unwrap();
    }
    let report = device.send(Stop { deadline: WAIT }).await.unwrap();
    assert!(report.undelivered.is_empty());
    assert_eq!(receive(&mut received, 10).await.len(), 10);
    assert_eq!(
        device
            .send(Enqueue::new("s/x", "late", QoS::AtMostOnce))
            .await
            .ok(),
        None,
        "a stopped connection takes nothing more"
    );
}

#[actix_rt::test]
async fn stop_reports_what_it_could_not_deliver() {
    let (device, mut events) = connection(options(free_port(), "offline"));
    events
        .find(|e| matches!(e, ConnectionEvent::ConnectFailed { .. }).then_some(()))
        .await;
    device
        .send(Enqueue::new("x", "1", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    device
        .send(Enqueue::new("x", "2", QoS::AtMostOnce))
        .await
        .unwrap()
        .unwrap();
    let report = device
        .send(Stop {
            deadline: Duration::from_millis(100),
        })
        .await
        .unwrap();
    assert_eq!(report.undelivered, vec![1, 2]);
    let dropped: Vec<_> = events
        .drain_ready()
        .into_iter()
        .filter(|e| matches!(e, ConnectionEvent::MessageDropped(_, DropReason::Stopped)))
        .collect();
    assert_eq!(dropped.len(), 2);
}

#[actix_rt::test]
async fn connect_failures_are_events_with_growing_delays() {
    let (_device, mut events) = connection(options(free_port(), "nobody-home"));
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let ConnectionEvent::ConnectFailed { retry_in, .. } = events.next().await {
            delays.push(retry_in);
        }
    }
    // 20 ms doubling, capped at 200 ms, each jittered into [d/2, d].
    for (attempt, d) in delays.iter().enumerate() {
        let full = Duration::from_millis(20 * (1 << attempt)).min(Duration::from_millis(200));
        assert!(*d >= full / 2 && *d <= full, "attempt {attempt}: {d:?}");
    }
}

#[actix_rt::test]
async fn idle_connection_pings_and_stays_up() {
    // Keep-alive 1 s: the broker would close the link after 1.5 s of silence [MQTT-3.1.2-24];
    // the client's PINGREQs keep it open.
    let broker = broker_on(0);
    let mut opts = options(broker.local_addr().port(), "idle");
    opts.keep_alive = Duration::from_secs(1);
    let (_conn, mut events) = connection(opts);
    connected(&mut events).await;
    tokio::time::sleep(Duration::from_millis(3500)).await; // idling is the point of this test
    let dropped = events
        .drain_ready()
        .into_iter()
        .any(|e| matches!(e, ConnectionEvent::Disconnected(_)));
    assert!(!dropped, "the link stayed up while idle");
}

#[actix_rt::test]
async fn credentials_are_sent_and_a_refusal_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    std::fs::write(
        &passwords,
        format!(
            "{}\n",
            switchboard::auth::hash_line("radar", b"pw", 1000).unwrap()
        ),
    )
    .unwrap();
    let mut config = switchboard::Config::default();
    config.listener.port = 0;
    config.listener.workers = 1;
    config.http.port = 0;
    config.auth.password_file = Some(passwords);
    let broker = switchboard::BackgroundBroker::start(config).unwrap();
    let port = broker.local_addr().port();

    let mut good = options(port, "radar");
    good.credentials = Some(("radar".into(), "pw".into()));
    let (_ok, mut events) = connection(good);
    connected(&mut events).await;

    let mut bad = options(port, "intruder");
    bad.credentials = Some(("radar".into(), "wrong".into()));
    let (_refused, mut events) = connection(bad);
    let failure = events
        .find(|e| match e {
            ConnectionEvent::ConnectFailed { failure, .. } => Some(failure.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        failure,
        switchboard_actors::ConnectFailure::Refused(4),
        "bad user name or password"
    );
}

#[actix_rt::test]
async fn the_will_is_published_when_the_link_is_lost() {
    let broker = broker_on(0);
    let (_watcher, mut received, _) = consumer(
        broker.local_addr().port(),
        "watcher",
        "detrd/state/+",
        |_| {},
    )
    .await;
    let mut proxy = Proxy::start(0, broker.local_addr()).await;
    let mut opts = options(proxy.port, "1AB.ENTER.GATE");
    opts.will = Some(switchboard_actors::Will {
        topic: "detrd/state/1AB.ENTER.GATE".into(),
        payload: br#"{"online":false}"#.to_vec(),
        qos: QoS::AtLeastOnce,
        retain: true,
    });
    let (_gate, mut events) = connection(opts);
    connected(&mut events).await;
    proxy.cut();
    assert_eq!(receive(&mut received, 1).await, vec![r#"{"online":false}"#]);
}

#[actix_rt::test]
async fn a_bridge_connection_gets_neither_its_own_messages_back_nor_retain_cleared() {
    // `bridge = true` sets the bridge bit in the 3.1.1 CONNECT (protocol level 0x84), which
    // Switchboard honours: No Local and Retain As Published on the bridge's subscriptions.
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (bridge, mut received, mut events) =
        consumer(port, "site-bridge", "site/#", |o| o.bridge = true).await;
    let own = bridge
        .send(Enqueue::new("site/own", "own", QoS::AtLeastOnce))
        .await
        .unwrap()
        .unwrap();
    events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(id) if *id == own).then_some(()))
        .await;
    // Routed after the bridge's own message: if that came back, it would come first.
    let (app, mut app_events) = connection(options(port, "central-app"));
    assert!(!connected(&mut app_events).await);
    let mut state = Enqueue::new("site/state", "closed", QoS::AtLeastOnce);
    state.retain = true;
    app.send(state).await.unwrap().unwrap();
    let first = received.next().await;
    assert_eq!(
        (first.topic.as_str(), first.retain),
        ("site/state", true),
        "not its own message; RETAIN as published"
    );
}

#[actix_rt::test]
async fn a_message_over_max_packet_size_from_an_mqtt311_broker_is_acknowledged_and_dropped() {
    // 3.1.1 cannot tell the broker the connection's limit, nor refuse a message: the
    // connection reads the head, skips the rest, acknowledges it and reports it. Closing the
    // link would have the broker send it again after every reconnect [MQTT-4.4.0-1].
    let broker = broker_on(0);
    let port = broker.local_addr().port();
    let (_app, mut received, mut events) = consumer(port, "camera-viewer", "cam/#", |o| {
        o.clean_session = false;
        o.max_packet_size = 512;
    })
    .await;
    let (publisher, _) = connection(options(port, "camera"));
    for (topic, size) in [("cam/1/photo", 4_000), ("cam/1/state", 5)] {
        publisher
            .send(Enqueue::new(topic, vec![b'x'; size], QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
    }
    let (topic, size) = events
        .find(|e| match e {
            ConnectionEvent::MessageTooLarge { topic, size } => Some((topic.clone(), *size)),
            ConnectionEvent::Disconnected(down) => panic!("the link went down: {down:?}"),
            _ => None,
        })
        .await;
    assert_eq!((topic.as_str(), size), ("cam/1/photo", 4_000 + 2 + 11 + 2));
    assert_eq!(receive(&mut received, 1).await, vec!["xxxxx"]);
    assert!(
        !events
            .drain_ready()
            .iter()
            .any(|e| matches!(e, ConnectionEvent::Disconnected(_))),
        "no reconnect"
    );
}
