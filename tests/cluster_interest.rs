//! Clustering on NATS: what a node tells the other nodes of its clients' filters as they come
//! and go. The Registry counts each filter's holders and tells the cluster link of a filter's
//! first holder and of its last one leaving, in order with every other change; the other nodes
//! then stop forwarding what nobody here reads at once, not at a periodic check. Nodes on a
//! Debian nats-server (a real one, on a free loopback port), rumqttc clients and raw bytes.

mod common;

use std::time::Duration;

use rumqttc::QoS;
use switchboard::registry::Kick;
use switchboard::BackgroundBroker;

use common::cluster::*;
use common::nats::Nats;
use common::{options, peer, Peer, Raw};

/// Subscribes `watcher` (on B) to `marker/{n}` and waits until A's link subscribes to it: every
/// change of B's filters before it has reached A by then (B announces its changes in order, and
/// A's link makes them in order). Answers A's link's other subscriptions, sorted: what A
/// forwards to B.
async fn after_marker(watcher: &mut Peer, a: &BackgroundBroker, n: u32) -> Vec<String> {
    let marker = format!("marker/{n}");
    watcher.subscribe(&marker, QoS::AtLeastOnce).await;
    common::eventually(|| async { link_subscriptions(a).await.contains(&marker) }).await;
    let mut filters = link_subscriptions(a).await;
    filters.retain(|filter| !filter.starts_with("marker/"));
    filters.sort();
    filters
}

/// 20 clients of `broker` with 1,000 filters each (`limits.max_subscriptions_per_client`),
/// `dev/{n}/cmd`: their connections, to keep open, and the filters.
async fn fleet_of_20_000(broker: &BackgroundBroker) -> (Vec<Raw>, Vec<String>) {
    let (mut fleet, mut held) = (Vec::new(), Vec::new());
    for client in 0..20u32 {
        let id = format!("fleet-{client}");
        let mut raw = Raw::handshake(broker.local_addr(), &id, true).await.0;
        let filters: Vec<String> = (0..1000)
            .map(|i| format!("dev/{}/cmd", client * 1000 + i))
            .collect();
        let pairs: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
        raw.subscribe(1, &pairs, &[0; 1000]).await;
        held.extend(filters);
        fleet.push(raw);
    }
    (fleet, held)
}

/// A filter held by two clients of B stays in the cluster when one unsubscribes, and leaves
/// it when the other's session ends [MQTT-3.1.2-6] (a clean session's DISCONNECT), a shared
/// group's with its last member; a stored session's filter leaves when the session is removed
/// (the admin API's kick, as at its expiry). Each one is gone from A before a subscription
/// B's client makes right after it reaches A: before 2026-12-07 the link learnt of a filter
/// nobody held by listing every client's filters, 1 s after an UNSUBSCRIBE, after a disconnect
/// only while shared groups were held, and otherwise every 30 s.
#[tokio::test]
async fn a_filter_leaves_the_cluster_with_its_last_holder_and_not_before() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let [a, b] = two_nodes(&nats).await;
    let mut watcher = peer(options(b.local_addr(), "b-watcher")).await;
    let mut first = peer(options(b.local_addr(), "b-first")).await;
    let mut last = peer(options(b.local_addr(), "b-last")).await;
    first.subscribe("gate/+/state", QoS::AtLeastOnce).await;
    last.subscribe("gate/+/state", QoS::AtLeastOnce).await;
    last.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await;
    let mut stored = options(b.local_addr(), "b-radar");
    stored.set_clean_session(false);
    let mut radar = peer(stored).await;
    radar.subscribe("radar/#", QoS::AtLeastOnce).await;
    radar.disconnect().await;
    common::eventually(|| async { has_session(&b, "b-radar").await == Some(false) }).await;
    assert_eq!(
        after_marker(&mut watcher, &a, 1).await,
        ["gate/+/state", "jobs/#", "radar/#"]
    );

    // One of the two holders lets go: the filter stays.
    first
        .client
        .unsubscribe("gate/+/state")
        .await
        .expect("queued");
    loop {
        if let Ok(rumqttc::Incoming::UnsubAck(_)) = first.next().await {
            break;
        }
    }
    assert_eq!(
        after_marker(&mut watcher, &a, 2).await,
        ["gate/+/state", "jobs/#", "radar/#"]
    );

    // The last holder's clean session ends with its connection: both of its filters go.
    last.disconnect().await;
    common::eventually(|| async { has_session(&b, "b-last").await.is_none() }).await;
    assert_eq!(after_marker(&mut watcher, &a, 3).await, ["radar/#"]);

    // The stored session is removed: its filter goes though no client was connected with it.
    let kicked = b
        .registry()
        .send(Kick {
            client_id: "b-radar".into(),
            remove_session: true,
        })
        .await
        .expect("registry")
        .expect("a known client");
    assert!(kicked.session_removed);
    assert!(after_marker(&mut watcher, &a, 4).await.is_empty());
    // Debug builds check B's counts of the filters' holders against a walk of its clients.
    b.registry()
        .send(switchboard::registry::GetStats)
        .await
        .expect("registry");
}

/// A SUBSCRIBE held at the subscribe barrier (a killed node is waited for) whose connection
/// ends before the Registry takes it leaves no filter behind: the link holds the filter it
/// announced for it through the wait and 10 s more, then the Registry, asked, says no client
/// holds it, and the node drops it and tells the others (they stop forwarding it).
#[tokio::test]
async fn a_filter_asked_for_by_a_subscribe_dropped_at_the_barrier_goes() {
    if !common::nats_available() {
        return;
    }
    const WAIT: Duration = Duration::from_secs(1);
    let nats = Nats::start();
    let [a, b] = two_nodes_and_a_killed_one(&nats, |config| {
        config.cluster.subscribe_wait = WAIT;
        // Heartbeats (and the check of filters asked for) every second.
        config.cluster.node_timeout = Duration::from_secs(3);
    })
    .await;

    let (mut device, _) = Raw::handshake(a.local_addr(), "a-device", true).await;
    device
        .send(&common::packets::subscribe(1, &[("orphan/#", 1)]))
        .await;
    // Announced at the ask, before the wait for c: b forwards it to a meanwhile.
    common::eventually(|| async { link_subscriptions(&b).await.contains(&"orphan/#".into()) })
        .await;
    drop(device);
    common::eventually(|| async { has_session(&a, "a-device").await.is_none() }).await;
    assert_eq!(cluster_api(&a).await["filters"], 1, "held while asked for");

    common::eventually_within(WAIT + Duration::from_secs(20), || async {
        cluster_api(&a).await["filters"] == 0
    })
    .await;
    common::eventually(|| async { link_subscriptions(&b).await.is_empty() }).await;
}

/// A node holding many filters gets back onto NATS while the other nodes are busy. Its link
/// subscribes to each filter's subject again with its CONNECT and counts as connected at the
/// PONG of the PING after them; NATS routes to a subscription as soon as it has taken it, so
/// a busy cluster's messages (here: each client connecting to A, announced to every node) come
/// before that PONG. Before 2026-12-07 the link took such a message for the server's error,
/// dropped the connection and tried again, 2 s later, into the same: B stayed off the cluster
/// for as long as A was busy (seen with 100,000 filters and a peer's Hello).
#[tokio::test]
async fn a_node_with_many_filters_rejoins_nats_while_the_others_are_busy() {
    if !common::nats_available() {
        return;
    }
    let mut nats = Nats::start();
    let [a, b] = two_nodes(&nats).await;
    let (_fleet, _) = fleet_of_20_000(&b).await;
    let mut app = peer(options(b.local_addr(), "app")).await;
    app.subscribe("detrd/status/response/+", QoS::AtLeastOnce)
        .await;
    let radar = peer(options(a.local_addr(), "radar-1")).await;
    let topic = "detrd/status/response/probe";
    until_routed(&radar.client, &mut [&mut app], topic).await;

    // Devices keep connecting to A, from before NATS goes until both links are back.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let churn = {
        let (busy, addr) = (busy.clone(), a.local_addr());
        tokio::spawn(async move {
            let mut connects = 0u32;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("gate-{connects}");
                let mut gate = Raw::handshake(addr, &id, true).await.0;
                gate.send(&[0xE0, 0x00]).await;
                gate.expect_closed().await;
                connects += 1;
            }
            connects
        })
    };
    nats.stop();
    common::eventually(|| async { !linked(&a) && !linked(&b) }).await;
    nats.resume();
    // Each link retries with a backoff of up to 2 s; B takes its 20,000 subscriptions again.
    let relinked = || async { linked(&a) && linked(&b) };
    common::eventually_within(Duration::from_secs(20), relinked).await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let connects = churn.await.expect("the devices' task");
    assert!(connects > 0);

    until_routed(&radar.client, &mut [&mut app], topic).await;
    radar
        .client
        .publish(
            "detrd/status/response/radar-1",
            QoS::AtLeastOnce,
            false,
            "ok",
        )
        .await
        .expect("queued");
    let answer = ("detrd/status/response/radar-1".to_string(), b"ok".to_vec());
    assert_eq!(next_payload(&mut app).await, answer);
}

/// A node's picture of another node that holds 20,000 filters is renewed in slices (about
/// 64 KiB of filters each, one per turn of the other node's link, since 2026-12-07): A is made
/// to picture B wrongly (a forged announcement adds a filter B never held and takes away the
/// last of B's in order), B's heartbeat disagrees, A asks B for everything again, and B
/// announces it slice by slice while one of its clients subscribes. The filter B never held
/// goes only at B's InterestEnd, after the last slice; the one taken away comes back with that
/// slice; the one subscribed during the slices stays. A's picture is then B's, exactly.
#[tokio::test]
async fn a_picture_renewed_in_slices_ends_as_the_nodes_filters_are() {
    if !common::nats_available() {
        return;
    }
    let nats = Nats::start();
    let [a, b] = two_nodes_timing_out(&nats, Duration::from_millis(1500));
    let (_fleet, mut held) = fleet_of_20_000(&b).await;
    held.sort();
    common::eventually(|| async { link_subscriptions(&a).await.len() == held.len() }).await;

    let last = held.last().expect("filters").clone();
    let forged = switchboard::cluster::Envelope::Interest {
        node: "b".into(),
        added: vec!["phantom/#".into()],
        removed: vec![last.clone()],
    };
    nats.publish("switchboard.i", &forged.encode());
    let wrong = || async {
        let filters = link_subscriptions(&a).await;
        filters.contains(&"phantom/#".to_string()) && !filters.contains(&last)
    };
    common::eventually(wrong).await;
    // B's next heartbeat disagrees with A's picture: B announces all of its filters again.
    let mut late = peer(options(b.local_addr(), "late")).await;
    late.subscribe("late/1", QoS::AtLeastOnce).await;
    held.push("late/1".to_string());
    held.sort();
    let exact = || async {
        let mut filters = link_subscriptions(&a).await;
        filters.sort();
        filters == held
    };
    common::eventually(exact).await;
    let device = peer(options(a.local_addr(), "a-device")).await;
    device
        .client
        .publish("late/1", QoS::AtLeastOnce, false, "t")
        .await
        .expect("queued");
    assert_eq!(late.next_publish().await.topic, "late/1");
}
