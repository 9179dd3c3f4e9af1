//! Clustering on NATS, what the cluster tests share: nodes on a Debian nats-server (in the test's
//! process, or as a child process a test can kill), and what a node shows of the cluster.

use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use switchboard::{BackgroundBroker, Config};

use super::nats::Nats;
use super::{broker_with, Peer};

/// A node of the cluster on `nats`.
pub fn node(nats: &Nats, name: &str, adjust: impl FnOnce(&mut Config)) -> BackgroundBroker {
    broker_with(|config| {
        config.cluster.nats_url = Some(nats.url());
        config.cluster.node = Some(name.to_string());
        adjust(config);
    })
}

/// Publishes QoS 0 probes on `topic` from `publisher` (every 20 ms) until each of
/// `subscribers` has one: the interest of their nodes has reached NATS. Probes still in flight
/// may arrive later; [`next_payload`] skips them.
pub async fn until_routed(publisher: &AsyncClient, subscribers: &mut [&mut Peer], topic: &str) {
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
pub async fn next_payload(peer: &mut Peer) -> (String, Vec<u8>) {
    loop {
        let publish = peer.next_publish().await;
        if &publish.payload[..] != b"probe" {
            return (publish.topic, publish.payload.to_vec());
        }
    }
}

/// Whether `broker`'s cluster link is connected to NATS with its subscriptions made.
pub fn linked(broker: &BackgroundBroker) -> bool {
    let status = broker.metrics().cluster.snapshot();
    status.expect("the cluster link runs").connected
}

/// Whether `broker`'s link knows of each of `nodes` (and of no other).
pub async fn knows_nodes(broker: &BackgroundBroker, nodes: &[&str]) -> bool {
    let seen = cluster_api(broker).await;
    let names: Vec<&str> = seen["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|n| n["node"].as_str()).collect())
        .unwrap_or_default();
    names == nodes
}

/// Nodes a and b on `nats`, once each knows the other: a SUBACK waits only for the nodes its
/// node knows of.
pub async fn two_nodes(nats: &Nats) -> [BackgroundBroker; 2] {
    let nodes = [node(nats, "a", |_| {}), node(nats, "b", |_| {})];
    for (broker, other) in nodes.iter().zip(["b", "a"]) {
        super::eventually(|| async { knows_nodes(broker, &[other]).await }).await;
    }
    nodes
}

/// Nodes a and b on `nats`, each forgetting a node not heard from within `timeout`
/// (`cluster.node_timeout`): their heartbeats, three per timeout, come that much sooner.
pub fn two_nodes_timing_out(nats: &Nats, timeout: std::time::Duration) -> [BackgroundBroker; 2] {
    ["a", "b"].map(|name| node(nats, name, |config| config.cluster.node_timeout = timeout))
}

/// Nodes a (made with `adjust`) and b on `nats`, once a knows b and a node c, which was then
/// killed (SIGKILL: no goodbye): a's next SUBSCRIBE waits `cluster.subscribe_wait` for c.
pub async fn two_nodes_and_a_killed_one(
    nats: &Nats,
    adjust: impl FnOnce(&mut Config),
) -> [BackgroundBroker; 2] {
    let a = node(nats, "a", adjust);
    let b = node(nats, "b", |_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, _logs, _) = child_node(nats, "c", "", dir.path());
    super::eventually(|| async { knows_nodes(&a, &["b", "c"]).await }).await;
    c.0.kill().expect("SIGKILL");
    c.0.wait().expect("reaped");
    [a, b]
}

/// Nodes a, b and c on `nats`, once each knows the other two: a SUBACK waits only for the
/// nodes its node knows of.
pub async fn three_nodes(nats: &Nats) -> [BackgroundBroker; 3] {
    let nodes = [
        node(nats, "a", |_| {}),
        node(nats, "b", |_| {}),
        node(nats, "c", |_| {}),
    ];
    for (broker, others) in nodes.iter().zip([["b", "c"], ["a", "c"], ["a", "b"]]) {
        super::eventually(|| async { knows_nodes(broker, &others).await }).await;
    }
    nodes
}

/// Node `name` on `nats` as a child process of the binary (which a test can kill), with
/// `extra` lines in its `[cluster]` table: the process, its log lines and its MQTT address,
/// once it listens (killed when dropped, so that a test that fails before it ends the node
/// leaves no broker behind). Its configuration lives in `dir`.
pub fn child_node(
    nats: &Nats,
    name: &str,
    extra: &str,
    dir: &std::path::Path,
) -> (
    super::child::BrokerProcess,
    std::sync::mpsc::Receiver<String>,
    std::net::SocketAddr,
) {
    use super::child::{listening_addr, spawn, wait_line};
    let config = dir.join(format!("{name}.toml"));
    let toml = format!(
        "[cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\n{extra}",
        nats.url()
    );
    std::fs::write(&config, toml).expect("config");
    let (child, logs) = spawn(&["--port", "0", "-c", config.to_str().expect("utf-8")]);
    let child = super::child::BrokerProcess(child);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    (child, logs, addr)
}

/// Whether node `broker` has a session (connected or stored) of `client_id`: `None` if not,
/// else whether it is connected.
pub async fn has_session(broker: &BackgroundBroker, client_id: &str) -> Option<bool> {
    let client = broker
        .registry()
        .send(switchboard::registry::GetClient(client_id.into()))
        .await
        .expect("registry");
    client.map(|c| c.connected)
}

/// The payload of the retained message `broker` holds for `topic`, if any.
pub async fn retained_on(broker: &BackgroundBroker, topic: &str) -> Option<Vec<u8>> {
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

/// The filters the link of `broker` subscribes to locally: what the other nodes' clients hold.
pub async fn link_subscriptions(broker: &BackgroundBroker) -> Vec<String> {
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

/// `GET /api/v1/cluster` on `broker`, as JSON.
pub async fn cluster_api(broker: &BackgroundBroker) -> serde_json::Value {
    let http = broker.http_local_addr().expect("HTTP");
    let body = super::http::get(http, "/api/v1/cluster", None).await.body;
    serde_json::from_str(&body).expect("JSON")
}
