//! Clustering on NATS: how the nodes keep their view of each other right, against a real Debian
//! nats-server. A SUBACK waits until every node forwards the filter (`cluster.subscribe_wait`),
//! with a client's later requests (its PUBLISHes too) kept in order behind it; a node that
//! stops answering is waited for once, and forgotten after `cluster.node_timeout`; a wrong
//! picture of another node's filters is repaired by the heartbeat's digest; a shared group is
//! spread over the nodes that hold it; a node cut off from NATS takes the retained messages it
//! missed, and clears those cleared meanwhile.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::nats::Nats;
use common::{options, peer, Peer, Raw};
use rumqttc::QoS;

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
/// Sessions in the group"), and the nodes holding it share the load: each takes the messages
/// whose hash of topic and payload falls to it. When one node's last member leaves, the others
/// take all. A plain subscriber of the same filter gets every message.
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
    // Every node knows b and c hold the group, and says so; a question to each Registry
    // answered after that says the Registry took its share.
    let shared = serde_json::json!([{
        "group": "app", "filter": "detrd/status/response/+", "nodes": ["b", "c"],
    }]);
    for node in [&a, &b, &c] {
        common::eventually(|| async { cluster_api(node).await["shared_groups"] == shared }).await;
        let _ = node
            .registry()
            .send(switchboard::registry::GetClient("app-c".into()))
            .await;
    }

    let gate = peer(options(a.local_addr(), "gate-a")).await;
    const COUNT: u32 = 40;
    let topic = |n: u32| format!("detrd/status/response/{n}");
    for n in 0..COUNT {
        gate.client
            .publish(topic(n), QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .expect("queued");
    }
    for n in 0..COUNT {
        assert_eq!(&plain_c.next_publish().await.payload[..], n.to_be_bytes());
    }
    // Each message reaches one member: b (first of the two by name) those whose spread hash
    // is even, c the others, each in order.
    let to_b: Vec<u32> = (0..COUNT)
        .filter(|&n| {
            switchboard::routing::spread_hash(&topic(n), &n.to_be_bytes()).is_multiple_of(2)
        })
        .collect();
    let to_c: Vec<u32> = (0..COUNT).filter(|n| !to_b.contains(n)).collect();
    assert!(!to_b.is_empty() && !to_c.is_empty(), "{to_b:?}");
    for n in to_b {
        assert_eq!(&on_b.next_publish().await.payload[..], n.to_be_bytes());
    }
    for n in to_c {
        assert_eq!(&on_c.next_publish().await.payload[..], n.to_be_bytes());
    }

    // b's member leaves: c takes every message from then on.
    on_b.disconnect().await;
    // No other node holds the group then (about 1 s after the disconnect, at b's next look).
    common::eventually_within(Duration::from_secs(10), || async {
        cluster_api(&c).await["shared_groups"] == serde_json::json!([])
    })
    .await;
    let _ = c
        .registry()
        .send(switchboard::registry::GetClient("app-c".into()))
        .await;
    for n in 0..COUNT {
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
        assert_eq!(on_c.next_publish().await.payload, probe.as_bytes());
    }
}

/// A SUBSCRIBE that waits for the cluster keeps the client's later requests behind it: a
/// SUBSCRIBE and an UNSUBSCRIBE of the same filter sent back to back are answered in order, each
/// acknowledgement naming its request [MQTT-3.8.4-2] [MQTT-3.10.4-5], and the UNSUBSCRIBE
/// deletes what the SUBSCRIBE made [MQTT-3.10.4-1]. The client's own PUBLISHes between them
/// wait too: the one after the SUBSCRIBE reaches it, the one after the UNSUBSCRIBE does not.
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
    // Its own PUBLISH right behind the SUBSCRIBE waits with it, and reaches the subscription;
    // the one behind the UNSUBSCRIBE does not [MQTT-3.10.4-2].
    let mut burst = common::packets::subscribe(7, &[("gate/+/state", 1)]);
    burst.extend(common::packets::publish(
        "gate/1/state",
        b"own",
        1,
        9,
        false,
        false,
    ));
    burst.extend(common::packets::unsubscribe(8, &["gate/+/state"]));
    burst.extend(common::packets::publish(
        "gate/1/state",
        b"after",
        1,
        10,
        false,
        false,
    ));
    raw.send(&burst).await;
    let mut frames = Vec::new();
    loop {
        let frame = raw.expect().await;
        if frame.packet_type() == 3 {
            let delivered = common::packets::parse_publish(&frame);
            raw.send(&common::packets::ack(0x40, delivered.pid)).await;
        }
        let unsuback = (frame.byte1, frame.body.get(..2)) == (0xB0, Some(&[0, 8][..]));
        frames.push(frame);
        if unsuback {
            break;
        }
    }
    frames.extend(raw.sync().await);
    let suback = frames.iter().position(|f| f.byte1 == 0x90).expect("SUBACK");
    assert_eq!(frames[suback].pid(), 7);
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f.packet_type() == 3)
        .map(|f| common::packets::parse_publish(f).payload)
        .collect();
    assert_eq!(payloads, vec![b"own".to_vec()], "frames: {frames:?}");
    let unsuback = frames
        .iter()
        .position(|f| f.byte1 == 0xB0)
        .expect("UNSUBACK");
    assert!(suback < unsuback, "SUBACK, then UNSUBACK: {frames:?}");
    let delivered = frames.iter().position(|f| f.packet_type() == 3);
    assert!(
        delivered < Some(unsuback),
        "delivered before the UNSUBACK: {frames:?}"
    );
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
    let [a, b] =
        two_nodes_and_a_killed_one(&nats, |config| config.cluster.subscribe_wait = WAIT).await;

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
    let nats = Nats::start();
    let [a, b] = two_nodes_timing_out(&nats, Duration::from_millis(1500));
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

/// Nodes a and b on `nats`, b's link through `proxy` (which can cut it off), once each knows
/// the other.
async fn a_and_b_through(
    nats: &Nats,
    proxy: &common::nats::CutProxy,
) -> (switchboard::BackgroundBroker, switchboard::BackgroundBroker) {
    let a = node(nats, "a", |_| {});
    let b = node(nats, "b", |config| {
        config.cluster.nats_url = Some(proxy.url())
    });
    common::eventually(|| async { knows_nodes(&a, &["b"]).await && knows_nodes(&b, &["a"]).await })
        .await;
    (a, b)
}

/// Cuts `b`'s link off from NATS (`proxy`), and waits until the link knows.
async fn cut_off(proxy: &common::nats::CutProxy, b: &switchboard::BackgroundBroker) {
    proxy.cut();
    common::eventually(|| async { !linked(b) }).await;
}

/// Lets `b`'s link reach NATS again, and waits until it is back (it retries with a backoff of
/// up to 2 s).
async fn heal(proxy: &common::nats::CutProxy, b: &switchboard::BackgroundBroker) {
    proxy.heal();
    common::eventually_within(Duration::from_secs(20), || async { linked(b) }).await;
}

/// Publishes `payload` retained at QoS 1 on `topic` from `peer`, and waits for its PUBACK.
async fn retain(peer: &mut Peer, topic: &str, payload: &str) {
    peer.client
        .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
        .await
        .expect("queued");
    peer.published().await;
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
    let (a, b) = a_and_b_through(&nats, &proxy).await;
    let mut on_a = peer(options(a.local_addr(), "a-gate")).await;
    let mut on_b = peer(options(b.local_addr(), "b-gate")).await;
    retain(&mut on_a, "gate/2/state", "old").await;
    common::eventually(|| async { retained_on(&b, "gate/2/state").await == Some(b"old".to_vec()) })
        .await;

    cut_off(&proxy, &b).await;
    retain(&mut on_a, "gate/1/state", "open").await;
    retain(&mut on_b, "gate/2/state", "new").await;
    heal(&proxy, &b).await;
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

/// A retained message cleared on one node while another is cut off from NATS is cleared on
/// that one too once it is back: the node that answers its sync request sends the topics it
/// last saw cleared, after the retained messages [MQTT-3.3.1-10]. One the cut-off node set
/// itself meanwhile is newer than that clear: it stays there, and reaches the other node.
#[tokio::test]
async fn a_retained_message_cleared_while_a_node_was_cut_off_is_cleared_there_too() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let proxy = common::nats::CutProxy::start(&nats).await;
    let (a, b) = a_and_b_through(&nats, &proxy).await;
    let mut on_a = peer(options(a.local_addr(), "a-gate")).await;
    let mut on_b = peer(options(b.local_addr(), "b-gate")).await;
    retain(&mut on_a, "gate/3/state", "closed").await;
    retain(&mut on_a, "gate/4/state", "closed").await;
    common::eventually(|| async {
        retained_on(&b, "gate/3/state").await.is_some()
            && retained_on(&b, "gate/4/state").await.is_some()
    })
    .await;

    cut_off(&proxy, &b).await;
    // Cleared on a while b is cut off; gate/4 set again on b meanwhile.
    retain(&mut on_a, "gate/3/state", "").await;
    retain(&mut on_a, "gate/4/state", "").await;
    retain(&mut on_b, "gate/4/state", "mine").await;
    common::eventually(|| async {
        retained_on(&a, "gate/3/state").await.is_none()
            && retained_on(&a, "gate/4/state").await.is_none()
    })
    .await;
    heal(&proxy, &b).await;
    common::eventually(|| async {
        retained_on(&b, "gate/3/state").await.is_none()
            && retained_on(&a, "gate/4/state").await == Some(b"mine".to_vec())
    })
    .await;
    assert_eq!(
        retained_on(&b, "gate/4/state").await,
        Some(b"mine".to_vec()),
        "b's own newer message stays"
    );
}

/// Bytes on the cluster's subjects that are not a node's envelope (another version, another
/// program) are ignored with a warning: one per 10 s with their count, not one per message, so
/// a flood of them cannot flood the log; and the node goes on taking the envelopes that are.
#[tokio::test]
async fn foreign_bytes_on_the_cluster_subjects_are_ignored_with_one_warning() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let b = node(&nats, "b", |_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let (_a, logs, a_addr) = child_node(&nats, "a", "", dir.path());
    let mut watcher = peer(options(a_addr, "a-watcher")).await;
    watcher.subscribe("probe/#", QoS::AtLeastOnce).await;
    let on_b = peer(options(b.local_addr(), "b-probe")).await;
    until_routed(&on_b.client, &mut [&mut watcher], "probe/1").await;

    const FOREIGN: usize = 50;
    for n in 0..FOREIGN {
        // Version 9 of the envelope, and then bytes that are nobody's.
        let bytes: &[u8] = if n % 2 == 0 { b"\x09\x01" } else { b"hello" };
        nats.publish("switchboard.i", bytes);
    }
    // Published after them, taken after them on a's NATS connection.
    on_b.client
        .publish("probe/2", QoS::AtLeastOnce, false, "after")
        .await
        .expect("queued");
    while watcher.next_publish().await.topic != "probe/2" {}
    // A line logged after all of them: the warnings before it are all there are.
    let _marker = peer(options(a_addr, "a-marker")).await;
    let mut warnings = Vec::new();
    loop {
        let line = common::child::wait_line(&logs, "");
        if line.contains("not a message of this cluster's nodes") {
            warnings.push(line);
        } else if line.contains("client connected") && line.contains("a-marker") {
            break;
        }
    }
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("ignored=1"), "{}", warnings[0]);
}
