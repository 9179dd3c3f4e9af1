//! Clustering on NATS: Switchboard nodes that share one Debian nats-server (a real one, on a
//! free loopback port), each with clients of its own: rumqttc, and mosquitto_sub as a stock
//! client. What crosses the nodes: messages, retained messages, takeovers, bridges, MQTT 5
//! properties, over TLS too, and what a node shows of it. A SUBACK waits until the other nodes a
//! node knows of forward the filter (`cluster.subscribe_wait`), but nodes learn of each other a
//! moment after they start: a test first waits until they know each other, or sends probes until
//! they arrive, then the traffic it checks. How the nodes keep their view of each other right
//! (the SUBACK's wait, liveness, shared groups, retained messages after a cut) is in
//! `tests/cluster_consistency.rs`.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::nats::Nats;
use common::{broker_with_hooks, options, peer, Peer, Raw};
use rumqttc::QoS;
use switchboard::hooks::DisconnectReason;
use switchboard::{BackgroundBroker, Config};

/// [MQTT-4.6.0-5]: one publisher's messages reach every node's subscribers in order; each
/// subscribing client gets one copy, even when two of its node's filters match (NATS brings a
/// node one copy per message: its subscriptions share a queue group), and nothing loops back.
/// Node B has an ACL that lets its clients read `gate/#` only: the link is not held to it.
#[tokio::test]
async fn a_publish_on_one_node_reaches_every_node_once_and_in_order() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read gate/#\ntopic read probe/#\n").expect("acl");
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |config| {
        config.auth.acl_file = Some(acl.clone())
    });
    let c = node(&nats, "c", |_| {});

    let mut wide = peer(options(b.local_addr(), "b-wide")).await;
    wide.subscribe("gate/#", QoS::AtLeastOnce).await;
    wide.subscribe("probe/#", QoS::AtMostOnce).await;
    let mut narrow = peer(options(b.local_addr(), "b-narrow")).await;
    narrow.subscribe("gate/+/state", QoS::AtLeastOnce).await;
    narrow.subscribe("probe/+", QoS::AtMostOnce).await;
    let mut far = peer(options(c.local_addr(), "c-one")).await;
    far.subscribe("gate/1AB/state", QoS::AtLeastOnce).await;
    far.subscribe("probe/1", QoS::AtMostOnce).await;
    // A subscriber on the publisher's own node: a loop through the others would double it.
    let mut near = peer(options(a.local_addr(), "a-near")).await;
    near.subscribe("gate/#", QoS::AtLeastOnce).await;
    near.subscribe("probe/#", QoS::AtMostOnce).await;
    let publisher = peer(options(a.local_addr(), "a-gate")).await;
    until_routed(
        &publisher.client,
        &mut [&mut wide, &mut narrow, &mut far, &mut near],
        "probe/1",
    )
    .await;

    const COUNT: u32 = 300;
    for n in 0..COUNT {
        let payload = n.to_be_bytes().to_vec();
        publisher
            .client
            .publish("gate/1AB/state", QoS::AtLeastOnce, false, payload)
            .await
            .expect("queued");
    }
    publisher
        .client
        .publish("gate/1AB/state", QoS::AtLeastOnce, false, "end")
        .await
        .expect("queued");
    for subscriber in [&mut wide, &mut narrow, &mut far, &mut near] {
        for n in 0..COUNT {
            let (topic, payload) = next_payload(subscriber).await;
            assert_eq!(topic, "gate/1AB/state");
            assert_eq!(
                payload,
                n.to_be_bytes(),
                "message {n} out of order or missing"
            );
        }
        // No second copy comes before the marker sent after them all.
        assert_eq!(next_payload(subscriber).await.1, b"end");
    }
}

/// Retained messages are kept by every node, whoever has subscribers, and a node that starts
/// later takes them from a running one: a stock client (mosquitto_sub) subscribing on any node
/// gets the gate's last state [MQTT-3.3.1-6].
#[tokio::test]
async fn retained_messages_reach_every_node_and_a_node_that_starts_later() {
    if !common::nats_available() || !common::mosquitto_clients_available() {
        return;
    }
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    // A subscriber on B tells when A's messages reach B at all.
    let mut watcher = peer(options(b.local_addr(), "b-watch")).await;
    watcher.subscribe("probe/#", QoS::AtMostOnce).await;
    watcher.subscribe("gate/#", QoS::AtLeastOnce).await;
    let mut gate = peer(options(a.local_addr(), "gate-1AB")).await;
    until_routed(&gate.client, &mut [&mut watcher], "probe/1").await;
    gate.client
        .publish("gate/1AB/state", QoS::AtLeastOnce, true, "closed")
        .await
        .expect("queued");
    gate.published().await;
    // What follows it on the same publisher's connection arrives after it on B.
    gate.client
        .publish("probe/after", QoS::AtLeastOnce, false, "after")
        .await
        .expect("queued");
    // A live subscriber on B gets it once (retained messages travel apart from the others).
    let mut states = 0;
    loop {
        let publish = watcher.next_publish().await;
        match publish.topic.as_str() {
            "gate/1AB/state" => states += 1,
            "probe/after" => break,
            _ => {}
        }
    }
    assert_eq!(states, 1);

    let sub =
        common::spawn_mosquitto_sub(b.local_addr().port(), &["-t", "gate/#", "-v", "-C", "1"]);
    assert_eq!(
        common::mosquitto_client_lines(sub).await,
        ["gate/1AB/state closed"]
    );

    // C starts after the message was published: it asks a running node for what it retains.
    let c = node(&nats, "c", |_| {});
    common::eventually(|| async {
        let (mut raw, _) = Raw::handshake(c.local_addr(), "c-look", true).await;
        raw.subscribe(1, &[("gate/#", 0)], &[0]).await;
        // The barrier brings every retained message the SUBSCRIBE matched.
        raw.sync().await.len() == 1
    })
    .await;
    let sub =
        common::spawn_mosquitto_sub(c.local_addr().port(), &["-t", "gate/#", "-v", "-C", "1"]);
    assert_eq!(
        common::mosquitto_client_lines(sub).await,
        ["gate/1AB/state closed"]
    );
    // C learned what B's clients hold though they subscribed before C started (B answers C's
    // Hello with all its filters): what C's clients publish reaches them.
    let from_c = peer(options(c.local_addr(), "c-gate")).await;
    until_routed(&from_c.client, &mut [&mut watcher], "probe/from-c").await;
}

/// [MQTT-3.1.4-2], across nodes: a client that connects on node B with the id of a client
/// connected on node A ends A's connection (reason: taken over), and with a clean start its
/// session there [MQTT-3.1.2-6]; a persistent session stays on A for when it comes back.
#[tokio::test]
async fn a_client_connecting_on_another_node_takes_over_its_connection() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let (a, mut hooks_a) = broker_with_hooks(|config| {
        config.cluster.nats_url = Some(nats.url());
        config.cluster.node = Some("a".into());
    });
    let b = node(&nats, "b", |_| {});
    common::eventually(|| async { linked(&a) && linked(&b) }).await;
    let mut first = peer(options(a.local_addr(), "radar-1")).await;
    first
        .subscribe("detrd/status/request/radar-1", QoS::AtLeastOnce)
        .await;
    hooks_a.connected("radar-1").await;

    let mut second = options(b.local_addr(), "radar-1");
    second.set_clean_session(true);
    let _second = peer(second).await;
    let ended = hooks_a.disconnected("radar-1").await;
    assert_eq!(ended.reason, DisconnectReason::TakenOver);
    // The first connection is closed by the broker, as on a single node.
    while first.next().await.is_ok() {}
    // Its session on A is gone with it.
    common::eventually(|| async { has_session(&a, "radar-1").await.is_none() }).await;

    // A persistent client moving from A to B: A's connection ends, its session stays.
    let mut persistent = options(a.local_addr(), "gate-7");
    persistent.set_clean_session(false);
    let mut first = peer(persistent.clone()).await;
    first.subscribe("gate/7/command", QoS::AtLeastOnce).await;
    hooks_a.connected("gate-7").await;
    let mut moved = options(b.local_addr(), "gate-7");
    moved.set_clean_session(false);
    let _moved = peer(moved).await;
    let ended = hooks_a.disconnected("gate-7").await;
    assert_eq!(ended.reason, DisconnectReason::TakenOver);
    while first.next().await.is_ok() {}
    assert_eq!(has_session(&a, "gate-7").await, Some(false));
}

/// The link reconnects when NATS comes back, subscribes again, and the traffic between the
/// nodes goes on.
#[tokio::test]
async fn the_link_reconnects_to_nats_and_the_traffic_resumes() {
    if !common::nats_available() {
        return;
    }
    let mut nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    let mut subscriber = peer(options(b.local_addr(), "app")).await;
    subscriber
        .subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    let radar = peer(options(a.local_addr(), "radar-2")).await;
    until_routed(
        &radar.client,
        &mut [&mut subscriber],
        "detrd/status/response/probe",
    )
    .await;

    let connected = linked;
    assert!(connected(&a) && connected(&b));
    nats.stop();
    // `switchboard_cluster_nats_connected` in /metrics.
    common::eventually(|| async { !connected(&a) && !connected(&b) }).await;
    nats.resume();
    // Each link retries with a backoff of up to 2 s: give them that, and a loaded machine's
    // slack, before any traffic is expected.
    let relinked = || async { connected(&a) && connected(&b) };
    common::eventually_within(Duration::from_secs(20), relinked).await;
    until_routed(
        &radar.client,
        &mut [&mut subscriber],
        "detrd/status/response/probe",
    )
    .await;
    radar
        .client
        .publish(
            "detrd/status/response/radar-2",
            QoS::AtLeastOnce,
            false,
            "ok",
        )
        .await
        .expect("queued");
    assert_eq!(
        next_payload(&mut subscriber).await,
        ("detrd/status/response/radar-2".to_string(), b"ok".to_vec())
    );
    assert!(connected(&a) && connected(&b));
    let sent = a.metrics().cluster.snapshot().map(|s| s.sent);
    assert!(sent > Some(0), "{sent:?}");
}

/// How many messages `broker`'s link has handed to NATS.
fn sent(broker: &BackgroundBroker) -> u64 {
    let status = broker.metrics().cluster.snapshot();
    status.expect("the cluster link runs").sent
}

/// Publishes `topic` then `marker/<n>` (QoS 1) from `publisher`, waits for the marker at
/// `watcher` (which holds `marker/#`), and answers how many of the two the publisher's node
/// handed to NATS.
async fn handed_over(
    node: &BackgroundBroker,
    publisher: &mut Peer,
    watcher: &mut Peer,
    topic: &str,
    n: u32,
) -> u64 {
    let before = sent(node);
    let marker = format!("marker/{n}");
    for t in [topic, marker.as_str()] {
        publisher
            .client
            .publish(t, QoS::AtLeastOnce, false, "x")
            .await
            .expect("queued");
        publisher.published().await;
    }
    while watcher.next_publish().await.topic != marker {}
    sent(node) - before
}

/// A node hands NATS only what another node's clients subscribe to: its own clients' traffic
/// stays on it, and a filter the other node no longer holds stops travelling.
#[tokio::test]
async fn a_node_sends_the_cluster_only_what_other_nodes_subscribe_to() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    let mut watcher = peer(options(b.local_addr(), "b-app")).await;
    watcher.subscribe("marker/#", QoS::AtLeastOnce).await;
    watcher.subscribe("telemetry/#", QoS::AtLeastOnce).await;
    let mut local = peer(options(a.local_addr(), "a-local")).await;
    local.subscribe("local/#", QoS::AtLeastOnce).await;
    let mut device = peer(options(a.local_addr(), "a-device")).await;
    until_routed(&device.client, &mut [&mut watcher], "marker/probe").await;
    // Probes still on their way are counted before this marker arrives (one publisher's order).
    handed_over(&a, &mut device, &mut watcher, "marker/settle", 0).await;

    // Wanted on A only: delivered there, never handed to NATS; the marker is.
    assert_eq!(
        handed_over(&a, &mut device, &mut watcher, "local/1", 1).await,
        1
    );
    assert_eq!(next_payload(&mut local).await.0, "local/1");
    assert_eq!(
        handed_over(&a, &mut device, &mut watcher, "telemetry/1", 2).await,
        2
    );

    // B's client lets go of telemetry/#, its last holder there: B tells A, and A stops.
    watcher
        .client
        .unsubscribe("telemetry/#")
        .await
        .expect("queued");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    while handed_over(&a, &mut device, &mut watcher, "telemetry/2", n).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A still sends telemetry/#"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bridge's local client is per node: nodes may run bridges of the same name, and one's
/// reconnecting does not end the other's (the cluster-wide takeover of [MQTT-3.1.4-2] is for
/// clients from the network). A bridge is a subscriber like any other: what is published on
/// another node and matches its `out` topics reaches its remote broker.
#[tokio::test]
async fn bridges_on_cluster_nodes_forward_the_cluster_and_keep_their_own_local_clients() {
    if !common::nats_available() {
        return;
    }
    use common::bridge::bridge_toml;
    let nats = Nats::start();
    let central = common::broker();
    let bridge = |client_id: &str, pattern: &str| {
        let topics = format!("{{ pattern = \"{pattern}\", direction = \"out\", qos = 1 }},");
        let toml =
            bridge_toml(central.local_addr(), "5", &topics, "").replace("site-1AB", client_id);
        Config::from_toml(&toml).expect("bridge config").bridge
    };
    let (a, mut hooks_a) = broker_with_hooks(|config| {
        config.cluster.nats_url = Some(nats.url());
        config.cluster.node = Some("a".into());
        config.bridge = bridge("site-a", "gate/#");
    });
    let (b, mut hooks_b) = broker_with_hooks(|config| {
        config.cluster.nats_url = Some(nats.url());
        config.cluster.node = Some("b".into());
        config.bridge = bridge("site-b", "other/#");
    });
    common::eventually(|| async { linked(&a) && linked(&b) }).await;

    // B's bridge's local client reconnects while the cluster runs.
    let kick = switchboard::registry::Kick {
        client_id: "$bridge.central".into(),
        remove_session: false,
    };
    b.registry().send(kick).await.expect("registry");
    hooks_b.disconnected("$bridge.central").await;
    hooks_b.connected("$bridge.central").await;

    // Published on B, wanted by A's bridge: it reaches the central broker.
    let mut app = peer(options(central.local_addr(), "central-app")).await;
    app.subscribe("gate/#", QoS::AtLeastOnce).await;
    let gate = peer(options(b.local_addr(), "gate-1")).await;
    until_routed(&gate.client, &mut [&mut app], "gate/probe").await;

    // A client moving from A to B: once A has handled that, it has handled everything B
    // announced before, and its own bridge's local client was never taken over.
    let _on_a = peer(options(a.local_addr(), "mover")).await;
    let _on_b = peer(options(b.local_addr(), "mover")).await;
    loop {
        if let common::HookEvent::Disconnected(ended) = hooks_a.next().await {
            assert_ne!(&*ended.client_id, "$bridge.central", "{ended:?}");
            if &*ended.client_id == "mover" {
                break;
            }
        }
    }
}

/// MQTT 5 properties cross nodes unaltered, Message Expiry as what remains of it
/// [MQTT-3.3.2-6]: live to a subscriber on another node, and with a retained message kept by
/// that node (its copy expires too [MQTT-3.3.2-5]).
#[tokio::test]
async fn mqtt5_properties_and_message_expiry_cross_nodes() {
    use common::v5::{prop, publish5, publish_of, Props};
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    let mut watcher = peer(options(b.local_addr(), "b-watch")).await;
    watcher.subscribe("detrd/#", QoS::AtLeastOnce).await;
    let mut sub = Raw::handshake5(b.local_addr(), "b-app").await;
    sub.subscribe5(1, &Props::new(), &[("detrd/status/request/+", 1)])
        .await;
    let prober = peer(options(a.local_addr(), "a-prober")).await;
    until_routed(&prober.client, &mut [&mut watcher], "detrd/probe").await;

    let mut app = Raw::handshake5(a.local_addr(), "a-app").await;
    let props = Props::new()
        .byte(prop::PAYLOAD_FORMAT, 1)
        .u32(prop::MESSAGE_EXPIRY, 600)
        .str(prop::CONTENT_TYPE, "application/json")
        .str(prop::RESPONSE_TOPIC, "detrd/status/response/1AB")
        .str(prop::CORRELATION_DATA, "req-42")
        .user("z", "1")
        .user("a", "2");
    let request = publish5("detrd/status/request/1AB", b"{}", 1, 7, true, &props);
    app.send(&request).await;
    assert_eq!(app.expect().await.byte1, 0x40);
    let check = |frame: &common::Frame| {
        let got = publish_of(frame);
        assert_eq!(got.topic, "detrd/status/request/1AB");
        let p = got.properties.expect("properties forwarded");
        common::v5::assert_status_request_properties(&p, &[("z", "1"), ("a", "2")]);
        let expiry = p
            .message_expiry_interval
            .expect("what remains of the expiry");
        assert!((1..=600).contains(&expiry), "{expiry}");
    };
    check(&sub.expect().await);

    // Kept on B with its expiry: a late subscriber there gets it retained, counting down.
    let mut late = Raw::handshake5(b.local_addr(), "b-late").await;
    late.subscribe5(1, &Props::new(), &[("detrd/status/request/+", 1)])
        .await;
    let retained = late.sync5().await;
    assert_eq!(retained.len(), 1, "{retained:?}");
    check(&retained[0]);
}

/// A node that shuts down (the binary on SIGTERM) says so: the others stop reading what its
/// clients wanted.
#[tokio::test]
async fn a_node_that_shuts_down_takes_its_interest_with_it() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    // Whether b's link reaches NATS before or after it listens, it sends its clients' filters
    // once connected: the wait below does not depend on the order of its log lines.
    let (mut b, _logs, b_addr) = child_node(&nats, "b", "", dir.path());
    let mut app = peer(options(b_addr, "b-app")).await;
    app.subscribe("telemetry/#", QoS::AtLeastOnce).await;
    common::eventually(|| async { link_subscriptions(&a).await == ["telemetry/#"] }).await;

    // SAFETY: signalling a child process of this test.
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    common::eventually(|| async { link_subscriptions(&a).await.is_empty() }).await;
    let exit = tokio::task::spawn_blocking(move || b.0.wait()).await;
    assert!(exit.expect("wait task").expect("wait").success());
}

/// `cluster.tls`: the links reach a nats-server that speaks only TLS and verifies client
/// certificates, and the traffic goes between the nodes as over TCP.
#[tokio::test]
async fn the_nodes_reach_nats_over_tls_with_client_certificates() {
    if !common::nats_available() {
        return;
    }
    let pki = common::pki::Pki::new("node");
    let path = |name: &str| pki.dir.path().join(name);
    std::fs::write(path("node.pem"), &pki.client.0).expect("write");
    std::fs::write(path("node.key"), &pki.client.1).expect("write");
    let file = |name: &str| path(name).display().to_string();
    let nats = Nats::start_with(&[
        "--tls",
        "--tlscert",
        &file("server.pem"),
        "--tlskey",
        &file("server.key"),
        "--tlscacert",
        &file("ca.pem"),
        "--tlsverify",
    ]);
    let tls = || switchboard::bridge::BridgeTls {
        ca_file: path("ca.pem"),
        cert_file: Some(path("node.pem")),
        key_file: Some(path("node.key")),
    };
    let a = node(&nats, "a", |config| config.cluster.tls = Some(tls()));
    let b = node(&nats, "b", |config| config.cluster.tls = Some(tls()));
    let mut app = peer(options(b.local_addr(), "b-app")).await;
    app.subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    let radar = peer(options(a.local_addr(), "radar-3")).await;
    until_routed(
        &radar.client,
        &mut [&mut app],
        "detrd/status/response/probe",
    )
    .await;
    assert!(linked(&a) && linked(&b));
}

/// The admin API shows the node, its NATS connection and counts, and the other nodes with
/// the filters each holds; a broker without `[cluster]` says so.
#[tokio::test]
async fn the_admin_api_shows_the_cluster_as_a_node_sees_it() {
    if !common::nats_available() {
        return;
    }
    let alone = common::broker();
    assert_eq!(
        cluster_api(&alone).await,
        serde_json::json!({ "enabled": false })
    );
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    let mut app = peer(options(b.local_addr(), "b-app")).await;
    app.subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    app.subscribe("gate/#", QoS::AtLeastOnce).await;
    common::eventually(|| async {
        cluster_api(&a).await["nodes"] == serde_json::json!([{ "node": "b", "filters": 2 }])
    })
    .await;
    let seen = cluster_api(&a).await;
    assert_eq!(seen["node"], "a");
    assert_eq!(seen["nats_connected"], true);
    assert_eq!(seen["nats_server"], nats.url());
    assert_eq!(cluster_api(&b).await["filters"], 2);
}
