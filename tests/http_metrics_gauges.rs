//! The gauges of what the broker holds, in `/metrics`: messages kept for offline sessions and
//! the persistence writer's figures, retained bytes, and messages held for connected clients that
//! have not acknowledged them; each parsed by the official Prometheus parser.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::metrics::scrape;
use common::{broker_with, eventually, packets, prometheus_parser_available, Raw};

/// With `[persistence]`: what offline sessions hold, and the writer's commits, syncs and log
/// size, move with the traffic; without it, no `switchboard_persistence_*` family is shown.
#[tokio::test]
async fn offline_queues_and_the_persistence_writer_are_measured() {
    if !prometheus_parser_available() {
        return;
    }
    let in_memory = broker_with(|c| c.sys.interval = Duration::ZERO);
    let scraped = scrape(in_memory.http_local_addr().expect("http on"), None).await;
    assert!(
        !scraped
            .types
            .keys()
            .any(|name| name.starts_with("switchboard_persistence_")),
        "in memory: {:?}",
        scraped.types.keys()
    );
    assert_eq!(scraped.get("switchboard_offline_queued_messages{}"), 0.0);

    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with(|c| {
        c.sys.interval = Duration::ZERO;
        c.persistence.dir = Some(dir.path().join("state"));
        c.persistence.fsync = switchboard::config::FsyncPolicy::Always;
    });
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let before = scrape(http, None).await;
    for (name, kind) in [
        ("switchboard_offline_queued_messages", "gauge"),
        ("switchboard_offline_queued_bytes", "gauge"),
        ("switchboard_persistence_commits", "counter"),
        ("switchboard_persistence_appended_bytes", "counter"),
        ("switchboard_persistence_write_failures", "counter"),
        ("switchboard_persistence_sync_failures", "counter"),
        ("switchboard_persistence_compactions", "counter"),
        ("switchboard_persistence_log_bytes", "gauge"),
        ("switchboard_persistence_live_bytes", "gauge"),
        ("switchboard_persistence_writes_failing", "gauge"),
        ("switchboard_persistence_syncs_failing", "gauge"),
        ("switchboard_persistence_sync_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    assert_eq!(before.get("switchboard_offline_queued_messages{}"), 0.0);

    // A gate that went away subscribed; three commands for it are acknowledged, so kept.
    Raw::leave_subscribed(addr, "gate-away", "gate/+/cmd").await;
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    let payloads: [&[u8]; 3] = [b"open", b"close", b"open-slowly"];
    for (pid, payload) in (1..).zip(payloads) {
        app.publish_acked("gate/1/cmd", payload, pid, false).await;
    }
    let held = scrape(http, None).await;
    let delta = |sample: &str| held.get(sample) - before.get(sample);
    assert_eq!(held.get("switchboard_offline_queued_messages{}"), 3.0);
    let bytes: usize = payloads.iter().map(|p| "gate/1/cmd".len() + p.len()).sum();
    assert_eq!(
        held.get("switchboard_offline_queued_bytes{}"),
        bytes as f64,
        "topic and payload of each"
    );
    // Each PUBACK waited for its commit's sync (`always`, nobody online to settle it).
    assert!(delta("switchboard_persistence_commits_total{}") >= 3.0);
    assert!(delta("switchboard_persistence_appended_bytes_total{}") >= bytes as f64);
    assert!(delta("switchboard_persistence_sync_duration_seconds_count{}") >= 3.0);
    assert_eq!(
        held.get("switchboard_persistence_sync_duration_seconds_count{}"),
        held.get("switchboard_persistence_sync_duration_seconds_bucket{le=\"+Inf\"}"),
    );
    assert!(held.get("switchboard_persistence_log_bytes{}") >= bytes as f64);
    assert!(held.get("switchboard_persistence_live_bytes{}") >= bytes as f64);
    assert_eq!(
        held.get("switchboard_persistence_write_failures_total{}"),
        0.0
    );
    assert_eq!(
        held.get("switchboard_persistence_sync_failures_total{}"),
        0.0
    );
    for healthy in [
        "switchboard_persistence_writes_failing{}",
        "switchboard_persistence_syncs_failing{}",
    ] {
        assert_eq!(held.get(healthy), 0.0, "{healthy}");
    }

    // The gate comes back without subscribing again and takes them: nothing is held now.
    let (mut gate, present) = Raw::handshake(addr, "gate-away", false).await;
    assert!(present, "[MQTT-3.2.2-2] session present");
    let got = gate.drain_payloads().await;
    assert_eq!(got.len(), 3, "{got:?}");
    let resumed = scrape(http, None).await;
    assert_eq!(resumed.get("switchboard_offline_queued_messages{}"), 0.0);
    assert_eq!(resumed.get("switchboard_offline_queued_bytes{}"), 0.0);
}

#[tokio::test]
async fn retained_bytes_follow_every_set_replace_and_clear() {
    if !prometheus_parser_available() {
        return;
    }
    // No `$SYS` messages: the retained store holds only what the test publishes.
    let broker = broker_with(|c| c.sys.interval = Duration::ZERO);
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let (mut gate, _) = Raw::handshake(addr, "gate-1AB", true).await;
    let retained = |topic: &str, payload: &str| (topic.len() + payload.len()) as f64;
    let steps: [(&str, &str, f64); 4] = [
        ("gate/1/state", "closed", retained("gate/1/state", "closed")),
        // Replaced: the old message's bytes go.
        ("gate/1/state", "open", retained("gate/1/state", "open")),
        (
            "gate/2/state",
            "closed",
            retained("gate/1/state", "open") + retained("gate/2/state", "closed"),
        ),
        // An empty retained message clears the topic's [MQTT-3.3.1-10].
        ("gate/1/state", "", retained("gate/2/state", "closed")),
    ];
    for (pid, (topic, payload, bytes)) in (1..).zip(steps) {
        gate.publish_acked(topic, payload.as_bytes(), pid, true)
            .await;
        let scraped = scrape(http, None).await;
        assert_eq!(
            scraped.get("switchboard_retained_bytes{}"),
            bytes,
            "after {topic} = {payload:?}"
        );
    }
    let scraped = scrape(http, None).await;
    assert_eq!(scraped.types["switchboard_retained_bytes"], "gauge");
    assert_eq!(scraped.types["switchboard_sessions_expired"], "counter");
    assert_eq!(scraped.get("switchboard_sessions_expired_total{}"), 0.0);
}

/// QoS 1 messages waiting for a connected client that has not acknowledged them count in
/// `switchboard_online_queued_messages` (their bytes in `switchboard_online_queued_bytes`), in
/// flight and queued behind the client's window alike, and in
/// `$SYS/broker/store/messages/count` (Mosquitto's message store counts them too); they
/// leave it as the client acknowledges them, and move to the offline gauge when the client goes
/// away with a persistent session.
#[tokio::test]
async fn messages_held_for_connected_clients_are_measured() {
    if !prometheus_parser_available() {
        return;
    }
    let broker = broker_with(|c| {
        c.sys.interval = Duration::from_millis(100);
        c.sessions.max_inflight = 2;
    });
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    // (messages held for connected clients, their bytes, messages held offline)
    let held = || async move {
        let scraped = scrape(http, None).await;
        (
            scraped.get("switchboard_online_queued_messages{}"),
            scraped.get("switchboard_online_queued_bytes{}"),
            scraped.get("switchboard_offline_queued_messages{}"),
        )
    };
    assert_eq!(held().await, (0.0, 0.0, 0.0));
    let types = scrape(http, None).await.types;
    for name in [
        "switchboard_online_queued_messages",
        "switchboard_online_queued_bytes",
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some("gauge"), "{name}");
    }
    // What each message weighs: topic and payload.
    let open = ("gate/1/cmd".len() + "open".len()) as f64;
    let close = ("gate/1/cmd".len() + "close".len()) as f64;

    // A gate with a persistent session reads its commands but acknowledges none yet.
    let (mut gate, _) = Raw::handshake(addr, "gate-slow", false).await;
    gate.subscribe(1, &[("gate/+/cmd", 1)], &[1]).await;
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    for pid in 1..=5 {
        app.publish_acked("gate/1/cmd", b"open", pid, false).await;
    }
    // Its window of 2 went out; 3 wait behind it.
    let sent: Vec<_> = gate
        .sync()
        .await
        .iter()
        .map(packets::parse_publish)
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    eventually(|| async { held().await == (5.0, 5.0 * open, 0.0) }).await;

    // `$SYS`: the retained messages (the `$SYS` ones) and the 5.
    let (mut reader, _) = Raw::handshake(addr, "sys-reader", true).await;
    reader
        .subscribe(
            1,
            &[
                ("$SYS/broker/store/messages/count", 0),
                ("$SYS/broker/retained messages/count", 0),
            ],
            &[0, 0],
        )
        .await;
    let mut values = HashMap::new();
    while values.get("store") != values.get("retained").map(|r: &f64| r + 5.0).as_ref() {
        let publish = packets::parse_publish(&reader.expect().await);
        let value: f64 = String::from_utf8_lossy(&publish.payload)
            .parse()
            .expect("a number");
        let key = if publish.topic.contains("store") {
            "store"
        } else {
            "retained"
        };
        values.insert(key, value);
    }

    // Acknowledging the first lets the third out: 4 held.
    gate.send(&packets::ack(0x40, sent[0].pid)).await;
    let third = packets::parse_publish(&gate.expect().await);
    assert_eq!(third.payload, b"open");
    eventually(|| async { held().await == (4.0, 4.0 * open, 0.0) }).await;
    // Acknowledging the rest as they come: none held.
    gate.send(&packets::ack(0x40, sent[1].pid)).await;
    gate.send(&packets::ack(0x40, third.pid)).await;
    assert_eq!(gate.drain_acking().await.len(), 2);
    eventually(|| async { held().await == (0.0, 0.0, 0.0) }).await;

    // Two more, read and not acknowledged, and the gate's connection drops: its session keeps
    // them, and the gauges say where they are now.
    for pid in 6..=7 {
        app.publish_acked("gate/1/cmd", b"close", pid, false).await;
    }
    assert_eq!(gate.sync().await.len(), 2);
    eventually(|| async { held().await == (2.0, 2.0 * close, 0.0) }).await;
    drop(gate);
    eventually(|| async { held().await == (0.0, 0.0, 2.0) }).await;
}
