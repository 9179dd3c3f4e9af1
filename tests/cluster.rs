//! Clustering on NATS: Switchboard nodes that share one Debian nats-server (a real one, on a
//! free loopback port), each with clients of its own: rumqttc, and mosquitto_sub as a stock
//! client. A SUBACK waits until the other nodes a node knows of forward the filter
//! (`cluster.subscribe_wait`), but nodes learn of each other a moment after they start: a test
//! first waits until they know each other, or sends probes until they arrive, then the traffic
//! it checks.

mod common;

use std::time::Duration;

use common::nats::Nats;
use common::{broker_with, broker_with_hooks, options, peer, Peer, Raw};
use rumqttc::{AsyncClient, QoS};
use switchboard::hooks::DisconnectReason;
use switchboard::{BackgroundBroker, Config};

/// A node of the cluster on `nats`.
fn node(nats: &Nats, name: &str, adjust: impl FnOnce(&mut Config)) -> BackgroundBroker {
    broker_with(|config| {
        config.cluster.nats_url = Some(nats.url());
        config.cluster.node = Some(name.to_string());
        adjust(config);
    })
}

/// Publishes QoS 0 probes on `topic` from `publisher` (every 20 ms) until each of
/// `subscribers` has one: the interest of their nodes has reached NATS. Probes still in flight
/// may arrive later; [`next_payload`] skips them.
async fn until_routed(publisher: &AsyncClient, subscribers: &mut [&mut Peer], topic: &str) {
    let probes = publisher.clone();
    let topic_owned = topic.to_string();
    let probing = tokio::spawn(async move {
        loop {
            let _ = probes
                .publish(&topic_owned, QoS::AtMostOnce, false, "probe")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for subscriber in subscribers.iter_mut() {
        while subscriber.next_publish().await.topic != topic {}
    }
    probing.abort();
}

/// The payload of the next PUBLISH that is not a probe.
async fn next_payload(peer: &mut Peer) -> (String, Vec<u8>) {
    loop {
        let publish = peer.next_publish().await;
        if &publish.payload[..] != b"probe" {
            return (publish.topic, publish.payload.to_vec());
        }
    }
}

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
        common::mosquitto_sub_lines(sub).await,
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
        common::mosquitto_sub_lines(sub).await,
        ["gate/1AB/state closed"]
    );
    // C learned what B's clients hold though they subscribed before C started (B answers C's
    // Hello with all its filters): what C's clients publish reaches them.
    let from_c = peer(options(c.local_addr(), "c-gate")).await;
    until_routed(&from_c.client, &mut [&mut watcher], "probe/from-c").await;
}

/// Whether `broker`'s cluster link is connected to NATS with its subscriptions made.
fn linked(broker: &BackgroundBroker) -> bool {
    let status = broker.metrics().cluster.snapshot();
    status.expect("the cluster link runs").connected
}

/// Whether node `broker` has a session (connected or stored) of `client_id`.
async fn has_session(broker: &BackgroundBroker, client_id: &str) -> Option<bool> {
    let client = broker
        .registry()
        .send(switchboard::registry::GetClient(client_id.into()))
        .await
        .expect("registry");
    client.map(|c| c.connected)
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

    // B's client lets go of telemetry/#: B tells A (1 s after an UNSUBSCRIBE), and A stops.
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

/// Whether `broker`'s link knows of each of `nodes` (and of no other).
async fn knows_nodes(broker: &BackgroundBroker, nodes: &[&str]) -> bool {
    let seen = cluster_api(broker).await;
    let names: Vec<&str> = seen["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|n| n["node"].as_str()).collect())
        .unwrap_or_default();
    names == nodes
}

/// Nodes a, b and c on `nats`, once each knows the other two: a SUBACK waits only for the
/// nodes its node knows of.
async fn three_nodes(nats: &Nats) -> [BackgroundBroker; 3] {
    let nodes = [
        node(nats, "a", |_| {}),
        node(nats, "b", |_| {}),
        node(nats, "c", |_| {}),
    ];
    for (broker, others) in nodes.iter().zip([["b", "c"], ["a", "c"], ["a", "b"]]) {
        common::eventually(|| async { knows_nodes(broker, &others).await }).await;
    }
    nodes
}

/// A node running as a child process of the binary; killed when dropped, so that a test that
/// fails before it ends the node leaves no broker behind.
struct ChildNode(std::process::Child);

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node `name` on `nats` as a child process of the binary (which a test can kill), with
/// `extra` lines in its `[cluster]` table: the process, its log lines and its MQTT address,
/// once it listens. Its configuration lives in `dir`.
fn child_node(
    nats: &Nats,
    name: &str,
    extra: &str,
    dir: &std::path::Path,
) -> (
    ChildNode,
    std::sync::mpsc::Receiver<String>,
    std::net::SocketAddr,
) {
    use common::child::{listening_addr, spawn, wait_line};
    let config = dir.join(format!("{name}.toml"));
    let toml = format!(
        "[cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\n{extra}",
        nats.url()
    );
    std::fs::write(&config, toml).expect("config");
    let (child, logs) = spawn(&["--port", "0", "-c", config.to_str().expect("utf-8")]);
    let child = ChildNode(child);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    (child, logs, addr)
}

/// A message published on another node right after the SUBACK reaches the new subscription,
/// as on one broker (section 3.8: the Server forwards what is published to topics that match
/// the subscription; [MQTT-3.8.4-1] the SUBACK answers it): the SUBACK waits until every other
/// node forwards the filter (`cluster.subscribe_wait`). Twenty new filters in a row, each
/// published to on two other nodes as soon as its SUBACK is in; a filter another client of the
/// node already holds does not wait again.
#[tokio::test]
async fn a_message_published_anywhere_after_the_suback_reaches_the_subscriber() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let [a, b, c] = three_nodes(&nats).await;
    let mut subscriber = peer(options(a.local_addr(), "a-app")).await;
    let on_b = peer(options(b.local_addr(), "b-gate")).await;
    let on_c = peer(options(c.local_addr(), "c-radar")).await;
    for n in 0..20 {
        let topic = format!("detrd/status/response/{n}");
        subscriber.subscribe(&topic, QoS::AtLeastOnce).await;
        for (publisher, from) in [(&on_b, "b"), (&on_c, "c")] {
            publisher
                .client
                .publish(&topic, QoS::AtLeastOnce, false, from)
                .await
                .expect("queued");
            let publish = subscriber.next_publish().await;
            assert_eq!(
                (publish.topic.as_str(), &publish.payload[..]),
                (topic.as_str(), from.as_bytes()),
                "the message published on {from} after the SUBACK"
            );
        }
    }
    // A second client of node a subscribing to a filter a holds: nothing new to wait for.
    let mut second = peer(options(a.local_addr(), "a-second")).await;
    second
        .subscribe("detrd/status/response/0", QoS::AtLeastOnce)
        .await;
    on_b.client
        .publish("detrd/status/response/0", QoS::AtLeastOnce, false, "again")
        .await
        .expect("queued");
    assert_eq!(&second.next_publish().await.payload[..], b"again");
}

/// Subscriptions coming and going on every node while messages are published on the others: a
/// message published after a SUBACK always arrives, whatever the other clients of the same
/// filters did just before. Six subscribers on three nodes take turns over four filters
/// (subscribe, a message from another node, unsubscribe), so a filter's interest keeps being
/// added under the barrier, dropped by the check that follows an UNSUBSCRIBE, and added again
/// on the other nodes, for three seconds.
#[tokio::test]
async fn churning_subscriptions_across_nodes_lose_nothing_published_after_a_suback() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let nodes = three_nodes(&nats).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let at = nodes[i % 3].local_addr();
        let from = nodes[(i + 1 + i / 3) % 3].local_addr();
        tasks.push(tokio::spawn(async move {
            let mut subscriber = peer(options(at, &format!("churn-sub-{i}"))).await;
            let publisher = peer(options(from, &format!("churn-pub-{i}"))).await;
            let mut rounds = 0u32;
            while tokio::time::Instant::now() < deadline {
                let filter = format!("churn/{}", (i + rounds as usize) % 4);
                subscriber.subscribe(&filter, QoS::AtLeastOnce).await;
                let mine = format!("{i}/{rounds}");
                publisher
                    .client
                    .publish(&filter, QoS::AtLeastOnce, false, mine.clone())
                    .await
                    .expect("queued");
                let arrived = tokio::time::timeout(Duration::from_secs(10), async {
                    // Other subscribers' messages on the same filter come too.
                    while subscriber.next_publish().await.payload != mine.as_bytes() {}
                })
                .await;
                assert!(
                    arrived.is_ok(),
                    "{mine} on {filter}, published after the SUBACK, lost"
                );
                subscriber
                    .client
                    .unsubscribe(&filter)
                    .await
                    .expect("queued");
                loop {
                    if let Ok(rumqttc::Incoming::UnsubAck(_)) = subscriber.next().await {
                        break;
                    }
                }
                rounds += 1;
            }
            rounds
        }));
    }
    for task in tasks {
        let rounds = task.await.expect("no panic");
        assert!(rounds > 10, "only {rounds} rounds in 3 s");
    }
}

/// A shared subscription group with members on several nodes gets each message once in the
/// whole cluster (MQTT 5 section 4.8.2: "each message is delivered to only one of the
/// Sessions in the group"): the node with the first name among those holding the group serves
/// it, and the others' members stand by, until that node has no member left. A plain
/// subscriber of the same filter on a standby node still gets every message.
#[tokio::test]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let [a, b, c] = three_nodes(&nats).await;
    const GROUP: &str = "$share/app/detrd/status/response/+";
    let mut on_b = peer(options(b.local_addr(), "app-b")).await;
    on_b.subscribe(GROUP, QoS::AtLeastOnce).await;
    let mut on_c = peer(options(c.local_addr(), "app-c")).await;
    on_c.subscribe(GROUP, QoS::AtLeastOnce).await;
    let mut plain_c = peer(options(c.local_addr(), "audit-c")).await;
    plain_c
        .subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    // c stands by once it knows b holds the group (b sorts first), and says so; a question to
    // c's Registry answered after that says the Registry took it.
    let standby = serde_json::json!([{ "group": "app", "filter": "detrd/status/response/+" }]);
    common::eventually(|| async { cluster_api(&c).await["standby_groups"] == standby }).await;
    assert_eq!(
        cluster_api(&b).await["standby_groups"],
        serde_json::json!([])
    );
    let _ = c
        .registry()
        .send(switchboard::registry::GetClient("app-c".into()))
        .await;

    let gate = peer(options(a.local_addr(), "gate-a")).await;
    const COUNT: u32 = 30;
    for n in 0..COUNT {
        gate.client
            .publish(
                format!("detrd/status/response/{n}"),
                QoS::AtLeastOnce,
                false,
                n.to_be_bytes().to_vec(),
            )
            .await
            .expect("queued");
    }
    for n in 0..COUNT {
        assert_eq!(&on_b.next_publish().await.payload[..], n.to_be_bytes());
        assert_eq!(&plain_c.next_publish().await.payload[..], n.to_be_bytes());
    }
    // A marker after them: the standby member got none of them.
    gate.client
        .publish("detrd/status/response/end", QoS::AtLeastOnce, false, "end")
        .await
        .expect("queued");
    assert_eq!(&on_b.next_publish().await.payload[..], b"end");
    assert_eq!(&plain_c.next_publish().await.payload[..], b"end");

    // b's member leaves: c serves the group from then on. Probes until c's member gets one;
    // the first thing it gets is a probe, so it got none of the messages above.
    on_b.disconnect().await;
    let mut n = 0;
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let probe = format!("probe-{n}");
            gate.client
                .publish(
                    "detrd/status/response/probe",
                    QoS::AtLeastOnce,
                    false,
                    probe.clone(),
                )
                .await
                .expect("queued");
            assert_eq!(plain_c.next_publish().await.payload, probe.as_bytes());
            // The group's copy comes well before the next probe if c serves it.
            if let Ok(Ok(rumqttc::Incoming::Publish(p))) =
                tokio::time::timeout(Duration::from_millis(200), on_c.next()).await
            {
                let got = String::from_utf8_lossy(&p.payload).to_string();
                assert!(got.starts_with("probe-"), "c's standby member got {got:?}");
                return;
            }
            n += 1;
        }
    })
    .await;
    assert!(served.is_ok(), "c never took the group over");
}

/// A SUBSCRIBE that waits for the cluster keeps the client's later requests behind it: a
/// SUBSCRIBE and an UNSUBSCRIBE of the same filter sent back to back are answered in order, each
/// acknowledgement naming its request [MQTT-3.8.4-2] [MQTT-3.10.4-5], and the UNSUBSCRIBE
/// deletes what the SUBSCRIBE made [MQTT-3.10.4-1].
#[tokio::test]
async fn requests_sent_behind_a_waiting_subscribe_keep_their_order() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |_| {});
    common::eventually(|| async { knows_nodes(&a, &["b"]).await }).await;
    let spec = common::packets::ConnectSpec {
        client_id: "a-raw",
        ..Default::default()
    };
    let (mut raw, code) = Raw::connect_with(a.local_addr(), spec).await;
    assert_eq!(code, 0);
    let mut both = common::packets::subscribe(7, &[("gate/+/state", 1)]);
    both.extend(common::packets::unsubscribe(8, &["gate/+/state"]));
    raw.send(&both).await;
    let suback = raw.expect().await;
    assert_eq!((suback.byte1, suback.pid()), (0x90, 7), "SUBACK first");
    let unsuback = raw.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 8), "then UNSUBACK");
    let client = a
        .registry()
        .send(switchboard::registry::GetClient("a-raw".into()))
        .await
        .expect("registry")
        .expect("connected");
    assert!(
        client.subscriptions.is_empty(),
        "{:?}",
        client.subscriptions
    );
    drop(b);
}

/// A node that stops answering (killed, no goodbye) costs one SUBSCRIBE the wait, and is not
/// waited for after that; the nodes that answer still forward at once.
#[tokio::test]
async fn a_killed_node_is_waited_for_once_and_then_not() {
    if !common::nats_available() {
        return;
    }
    const WAIT: Duration = Duration::from_secs(3);
    let nats = Nats::start();
    let a = node(&nats, "a", |config| config.cluster.subscribe_wait = WAIT);
    let b = node(&nats, "b", |_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, _logs, _) = child_node(&nats, "c", "", dir.path());
    common::eventually(|| async { knows_nodes(&a, &["b", "c"]).await }).await;
    c.0.kill().expect("SIGKILL");
    c.0.wait().expect("reaped");

    let mut subscriber = peer(options(a.local_addr(), "a-app")).await;
    let on_b = peer(options(b.local_addr(), "b-gate")).await;
    let started = std::time::Instant::now();
    subscriber.subscribe("gate/1/state", QoS::AtLeastOnce).await;
    let first = started.elapsed();
    assert!(first >= WAIT, "the first SUBACK waited for c: {first:?}");
    let started = std::time::Instant::now();
    subscriber.subscribe("gate/2/state", QoS::AtLeastOnce).await;
    let second = started.elapsed();
    assert!(second < WAIT / 2, "c is not waited for again: {second:?}");
    let status = a
        .metrics()
        .cluster
        .snapshot()
        .expect("the cluster link runs");
    assert_eq!(
        (status.subscribe_waits, status.subscribe_wait_timeouts),
        (2, 1),
        "both SUBSCRIBEs waited (for b), one ran out (waiting for c)"
    );
    on_b.client
        .publish("gate/2/state", QoS::AtLeastOnce, false, "open")
        .await
        .expect("queued");
    assert_eq!(&subscriber.next_publish().await.payload[..], b"open");
}

/// A node that crashed (SIGKILL: no goodbye) is forgotten once it has not been heard from for
/// `cluster.node_timeout`: the others stop reading what its clients wanted, and stop waiting
/// for it.
#[tokio::test]
async fn a_crashed_node_is_forgotten_after_the_node_timeout() {
    if !common::nats_available() {
        return;
    }
    let timeout = Duration::from_millis(1500);
    let nats = Nats::start();
    let a = node(&nats, "a", |config| config.cluster.node_timeout = timeout);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, _logs, c_addr) = child_node(&nats, "c", "node_timeout = \"1500ms\"\n", dir.path());
    let mut app = peer(options(c_addr, "c-app")).await;
    app.subscribe("telemetry/#", QoS::AtLeastOnce).await;
    common::eventually(|| async { link_subscriptions(&a).await == ["telemetry/#"] }).await;
    // Alive, it stays known well past the timeout.
    tokio::time::sleep(timeout * 2).await;
    assert!(knows_nodes(&a, &["c"]).await, "c is alive and known");

    c.0.kill().expect("SIGKILL");
    c.0.wait().expect("reaped");
    common::eventually(|| async {
        knows_nodes(&a, &[]).await && link_subscriptions(&a).await.is_empty()
    })
    .await;
    let http = a.http_local_addr().expect("HTTP");
    let metrics = common::http::get(http, "/metrics", None).await.body;
    for line in [
        "switchboard_cluster_nodes 0",
        "switchboard_cluster_nodes_timed_out_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

/// What a node pictures of another's filters is checked against that node's own count and
/// digest, said with each heartbeat: an announcement that never arrived, or one that was
/// wrong (forged here, straight into NATS), is repaired by asking the node for all its filters
/// again.
#[tokio::test]
async fn a_wrong_picture_of_another_nodes_filters_is_repaired() {
    if !common::nats_available() {
        return;
    }
    let timeout = Duration::from_millis(1500);
    let nats = Nats::start();
    let a = node(&nats, "a", |config| config.cluster.node_timeout = timeout);
    let b = node(&nats, "b", |config| config.cluster.node_timeout = timeout);
    let mut app = peer(options(b.local_addr(), "b-app")).await;
    app.subscribe("telemetry/#", QoS::AtLeastOnce).await;
    common::eventually(|| async { link_subscriptions(&a).await == ["telemetry/#"] }).await;

    let forged = switchboard::cluster::Envelope::Interest {
        node: "b".into(),
        added: vec!["phantom/#".into()],
        removed: vec!["telemetry/#".into()],
    };
    nats.publish("switchboard.i", &forged.encode());
    common::eventually(|| async { link_subscriptions(&a).await == ["phantom/#"] }).await;
    // b's next heartbeat disagrees: a asks, b announces all again, and a's picture is b's.
    common::eventually(|| async { link_subscriptions(&a).await == ["telemetry/#"] }).await;
    let device = peer(options(a.local_addr(), "a-device")).await;
    device
        .client
        .publish("telemetry/1", QoS::AtLeastOnce, false, "t")
        .await
        .expect("queued");
    assert_eq!(app.next_publish().await.topic, "telemetry/1");
}

/// The payload of the retained message `broker` holds for `topic`, if any.
async fn retained_on(broker: &BackgroundBroker, topic: &str) -> Option<Vec<u8>> {
    let page = broker
        .registry()
        .send(switchboard::registry::ListRetained {
            filter: topic.to_string(),
            offset: 0,
            limit: 1,
        })
        .await
        .expect("registry");
    page.items.first().map(|m| m.payload.to_vec())
}

/// A node cut off from NATS (its own connection broken, the other nodes' not) misses the
/// retained messages set meanwhile; once back, it asks a running node for all of them and has
/// them too [MQTT-3.3.1-5]. One it set itself while cut off is newer than that answer: it stays,
/// and reaches the other nodes.
#[tokio::test]
async fn a_node_cut_off_from_nats_takes_the_retained_messages_it_missed() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let proxy = common::nats::CutProxy::start(&nats).await;
    let a = node(&nats, "a", |_| {});
    let b = node(&nats, "b", |config| {
        config.cluster.nats_url = Some(proxy.url())
    });
    common::eventually(|| async { knows_nodes(&a, &["b"]).await && knows_nodes(&b, &["a"]).await })
        .await;
    let mut on_a = peer(options(a.local_addr(), "a-gate")).await;
    let mut on_b = peer(options(b.local_addr(), "b-gate")).await;
    let retain = |peer: &Peer, topic: &'static str, payload: &'static str| {
        let client = peer.client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .expect("queued");
        }
    };
    retain(&on_a, "gate/2/state", "old").await;
    on_a.published().await;
    common::eventually(|| async { retained_on(&b, "gate/2/state").await == Some(b"old".to_vec()) })
        .await;

    proxy.cut();
    common::eventually(|| async { !linked(&b) }).await;
    retain(&on_a, "gate/1/state", "open").await;
    on_a.published().await;
    retain(&on_b, "gate/2/state", "new").await;
    on_b.published().await;
    proxy.heal();
    // The link retries with a backoff of up to 2 s.
    common::eventually_within(Duration::from_secs(20), || async { linked(&b) }).await;
    common::eventually(|| async {
        retained_on(&b, "gate/1/state").await == Some(b"open".to_vec())
            && retained_on(&a, "gate/2/state").await == Some(b"new".to_vec())
    })
    .await;
    assert_eq!(
        retained_on(&b, "gate/2/state").await,
        Some(b"new".to_vec()),
        "b's own newer message stays"
    );
}

/// The filters the link of `broker` subscribes to locally: what the other nodes' clients hold.
async fn link_subscriptions(broker: &BackgroundBroker) -> Vec<String> {
    let link = broker
        .registry()
        .send(switchboard::registry::GetClient(
            switchboard::cluster::CLUSTER_CLIENT_ID.into(),
        ))
        .await
        .expect("registry")
        .expect("the link's local client");
    link.subscriptions.into_iter().map(|(f, _)| f).collect()
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
    let (mut b, logs, b_addr) = child_node(&nats, "b", "", dir.path());
    common::child::wait_line(&logs, "cluster: connected to NATS");
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

/// `GET /api/v1/cluster` on `broker`, as JSON.
async fn cluster_api(broker: &BackgroundBroker) -> serde_json::Value {
    let http = broker.http_local_addr().expect("HTTP");
    let body = common::http::get(http, "/api/v1/cluster", None).await.body;
    serde_json::from_str(&body).expect("JSON")
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
