//! The HTTP server (`[http]`): Prometheus `/metrics` parsed by the official Python client's
//! parser, with counters that move by exactly the traffic the test sent; the health checks; the
//! bearer token; JSON errors.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::http::{get, request_with};
use common::{broker_with, eventually, packets, prometheus_parser_available, Raw};

/// Samples of one scrape, parsed by `tests/interop/parse_metrics.py`.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in {:?}", self.samples.keys()))
    }
}

/// Scrapes `/metrics` as Prometheus does (asking for OpenMetrics), or as a plain `curl` does
/// (the classic text format), and parses it with the matching official parser.
async fn scrape_as(addr: SocketAddr, token: Option<&str>, openmetrics: bool) -> Scrape {
    let accept = if openmetrics {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
    } else {
        ""
    };
    let response = request_with(addr, "GET", "/metrics", token, None, accept).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let (content_type, parser) = if openmetrics {
        ("application/openmetrics-text", "openmetrics")
    } else {
        ("text/plain; version=0.0.4", "classic")
    };
    assert!(
        response.headers["content-type"].starts_with(content_type),
        "{:?}",
        response.headers
    );
    let script = format!(
        "{}/tests/interop/parse_metrics.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = std::process::Command::new("python3")
        .args([script.as_str(), parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(response.body.as_bytes())
            .expect("to the parser");
    }
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        response.body
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let samples = parsed["samples"]
        .as_object()
        .expect("samples")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("number")))
        .collect();
    let types = parsed["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("type").to_string()))
        .collect();
    Scrape { samples, types }
}

async fn scrape(addr: SocketAddr, token: Option<&str>) -> Scrape {
    scrape_as(addr, token, true).await
}

/// Bytes a frame took on the wire.
fn wire_len(frame: &common::Frame) -> f64 {
    let mut length_bytes = 1;
    let mut n = frame.body.len() >> 7;
    while n > 0 {
        length_bytes += 1;
        n >>= 7;
    }
    (1 + length_bytes + frame.body.len()) as f64
}

#[tokio::test]
async fn metrics_move_by_exactly_the_traffic_sent() {
    if !prometheus_parser_available() {
        return;
    }
    // `$SYS` off: only the test's packets cross the broker. Anonymous clients are refused, so
    // that one CONNECT fails for its credentials; the others give a user name.
    let broker = broker_with(|c| {
        c.sys.interval = Duration::ZERO;
        c.auth.allow_anonymous = Some(false);
    });
    let (addr, http) = (
        broker.local_addr(),
        broker.http_local_addr().expect("http on"),
    );
    let before = scrape(http, None).await;
    for (name, kind) in [
        ("switchboard_connections", "gauge"),
        ("switchboard_messages_received", "counter"),
        ("switchboard_delivery_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }

    let (mut refused, code) = Raw::connect_with(
        addr,
        packets::ConnectSpec {
            client_id: "anonymous",
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code, 5, "CONNACK 5 not authorized");
    refused.expect_closed().await;
    let user = |id| packets::ConnectSpec {
        client_id: id,
        username: Some("app"),
        ..Default::default()
    };
    let (mut sub, _) = Raw::connect_with(addr, user("metrics-sub")).await;
    sub.subscribe(1, &[("m/#", 1)], &[1]).await;
    let (mut publisher, _) = Raw::connect_with(addr, user("metrics-pub")).await;
    let mut bytes_in = 0.0;
    for (qos, pid, size, retain) in [
        (0u8, 0u16, 10usize, false),
        (1, 1, 300, true),
        (1, 2, 5000, false),
        (0, 0, 1, false),
    ] {
        let publish = packets::publish("m/a", &vec![1; size], qos, pid, retain, false);
        bytes_in += publish.len() as f64;
        publisher.send(&publish).await;
        if qos == 1 {
            assert_eq!(publisher.expect().await.byte1, 0x40);
        }
    }
    // A publish to `$SYS` is dropped as not authorized.
    let denied = packets::publish("$SYS/broker/uptime", b"x", 0, 0, false, false);
    bytes_in += denied.len() as f64;
    publisher.send(&denied).await;
    let mut bytes_out = 0.0;
    for _ in 0..4 {
        let frame = sub.expect().await;
        bytes_out += wire_len(&frame);
        let publish = packets::parse_publish(&frame);
        if publish.qos == 1 {
            sub.send(&packets::ack(0x40, publish.pid)).await;
        }
    }
    // One leaves with DISCONNECT, the other by closing its socket.
    publisher.send(&[0xE0, 0x00]).await;
    publisher.expect_closed().await;
    drop(sub);
    common::eventually(|| async {
        let now = scrape(http, None).await;
        now.get("switchboard_connections{}") == before.get("switchboard_connections{}")
            && now.get("switchboard_disconnects_total{reason=\"network\"}")
                == before.get("switchboard_disconnects_total{reason=\"network\"}") + 1.0
            && now.get("switchboard_messages_sent_total{qos=\"1\"}")
                == before.get("switchboard_messages_sent_total{qos=\"1\"}") + 2.0
    })
    .await;
    let after = scrape(http, None).await;
    let delta = |sample: &str| after.get(sample) - before.get(sample);
    assert_eq!(delta("switchboard_messages_received_total{qos=\"0\"}"), 3.0);
    assert_eq!(delta("switchboard_messages_received_total{qos=\"1\"}"), 2.0);
    assert_eq!(delta("switchboard_messages_received_total{qos=\"2\"}"), 0.0);
    assert_eq!(delta("switchboard_messages_sent_total{qos=\"0\"}"), 2.0);
    assert_eq!(delta("switchboard_messages_sent_total{qos=\"1\"}"), 2.0);
    assert_eq!(
        delta("switchboard_messages_dropped_total{reason=\"not_authorized\"}"),
        1.0
    );
    assert_eq!(
        delta("switchboard_messages_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    assert_eq!(delta("switchboard_connects_total{}"), 2.0);
    assert_eq!(delta("switchboard_auth_failures_total{}"), 1.0);
    assert_eq!(
        delta("switchboard_disconnects_total{reason=\"client\"}"),
        1.0
    );
    assert_eq!(
        delta("switchboard_disconnects_total{reason=\"network\"}"),
        1.0
    );
    assert_eq!(after.get("switchboard_retained_messages{}"), 1.0);
    assert_eq!(after.get("switchboard_subscriptions{}"), 0.0);
    assert_eq!(after.get("switchboard_clients_connected{}"), 0.0);
    // Four live deliveries, each in the latency histogram (its +Inf bucket counts them all).
    assert_eq!(delta("switchboard_delivery_latency_seconds_count{}"), 4.0);
    assert_eq!(
        delta("switchboard_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
    assert!(delta("switchboard_delivery_latency_seconds_sum{}") > 0.0);
    // Bytes: the publishes above are exact; CONNECT, SUBSCRIBE, PUBACK, DISCONNECT and the
    // broker's CONNACK, SUBACK and PUBACKs come on top, so compare with the packets counted.
    assert!(delta("switchboard_bytes_received_total{}") > bytes_in);
    assert!(delta("switchboard_bytes_sent_total{}") > bytes_out);
    let traffic = broker.metrics().traffic.totals();
    assert_eq!(
        after.get("switchboard_bytes_received_total{}"),
        traffic.bytes_received as f64
    );
    assert_eq!(
        after.get("switchboard_bytes_sent_total{}"),
        traffic.bytes_sent as f64
    );
}

#[tokio::test]
async fn health_checks_and_json_errors() {
    let broker = broker_with(|_| {});
    let http = broker.http_local_addr().expect("http on by default");
    assert!(http.ip().is_loopback(), "on loopback by default");
    let live = get(http, "/api/v1/health/live", None).await;
    assert_eq!(live.status, 200);
    let body: serde_json::Value = serde_json::from_str(&live.body).expect("json");
    assert_eq!(body["status"], "live");
    let ready = get(http, "/api/v1/health/ready", None).await;
    assert_eq!(ready.status, 200);
    let body: serde_json::Value = serde_json::from_str(&ready.body).expect("json");
    assert_eq!(body["status"], "ready");
    let missing = get(http, "/api/v1/nothing", None).await;
    assert_eq!(missing.status, 404);
    let body: serde_json::Value = serde_json::from_str(&missing.body).expect("json");
    assert_eq!(body["error"], "no such endpoint: GET /api/v1/nothing");
}

#[tokio::test]
async fn a_token_guards_the_metrics_but_not_the_health_checks() {
    let broker = broker_with(|c| c.http.token = Some("s3cret-token".into()));
    let http = broker.http_local_addr().expect("http on");
    let none = get(http, "/metrics", None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let body: serde_json::Value = serde_json::from_str(&none.body).expect("json");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
        "{body}"
    );
    let wrong = get(http, "/metrics", Some("s3cret-tokeN")).await;
    assert_eq!(wrong.status, 401);
    let right = get(http, "/metrics", Some("s3cret-token")).await;
    assert_eq!(right.status, 200);
    assert!(right.body.contains("switchboard_connections"));
    assert!(
        !right.body.contains("# EOF"),
        "the classic text format, unless asked"
    );
    assert_eq!(get(http, "/api/v1/health/live", None).await.status, 200);
    assert_eq!(get(http, "/api/v1/health/ready", None).await.status, 200);
}

#[test]
fn a_non_loopback_bind_needs_a_token_and_off_means_off() {
    let mut config = common::test_config();
    config.http.bind = "0.0.0.0".parse().expect("address");
    let error = switchboard::BackgroundBroker::start(config)
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(text.contains("http.token"), "{text}");
    let off = broker_with(|c| c.http.enabled = false);
    assert_eq!(off.http_local_addr(), None);
}

#[test]
fn a_taken_http_port_is_a_clear_start_up_error() {
    let first = broker_with(|_| {});
    let taken = first.http_local_addr().expect("http on");
    let mut config = common::test_config();
    config.http.port = taken.port();
    let error = switchboard::BackgroundBroker::start(config)
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot listen on {taken}")),
        "{text}"
    );
}

#[tokio::test]
async fn both_exposition_formats_parse_with_their_types() {
    if !prometheus_parser_available() {
        return;
    }
    // With a TLS listener, so that its certificate's expiry gauge is parsed too.
    let pki = common::pki::Pki::new("metrics");
    let broker = common::tls_broker(&pki, false);
    let http = broker.http_local_addr().expect("http on");
    let openmetrics = scrape_as(http, None, true).await;
    let classic = scrape_as(http, None, false).await;
    // Both parsers see the same families with the same types; in the classic format a counter
    // family is named after its `_total` samples, else its samples would land in an untyped
    // family of their own.
    for (family, kind) in [
        ("switchboard_messages_received", "counter"),
        ("switchboard_disconnects", "counter"),
        ("switchboard_connections", "gauge"),
        ("switchboard_delivery_latency_seconds", "histogram"),
        (
            "switchboard_tls_certificate_expiry_timestamp_seconds",
            "gauge",
        ),
    ] {
        assert_eq!(
            openmetrics.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
        assert_eq!(
            classic.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert!(
        classic.types.values().all(|kind| kind != "unknown"),
        "{:?}",
        classic.types
    );
    assert_eq!(
        classic.get("switchboard_messages_received_total{qos=\"1\"}"),
        openmetrics.get("switchboard_messages_received_total{qos=\"1\"}")
    );
    let expiry = "switchboard_tls_certificate_expiry_timestamp_seconds{}";
    assert_eq!(openmetrics.get(expiry), pki.server_not_after as f64);
    assert_eq!(classic.get(expiry), pki.server_not_after as f64);
}

/// The bridges' families parse too, the one with two labels (which remote a bridge is on)
/// among them.
#[tokio::test]
async fn the_bridge_families_parse_with_their_types() {
    if !prometheus_parser_available() {
        return;
    }
    let central = common::broker();
    let topics = r#"{ pattern = "gate/#", direction = "out", qos = 1 },"#;
    let toml = common::bridge::bridge_toml(central.local_addr(), "3.1.1", topics, "");
    let site = common::bridge::site(&toml, |_| {});
    common::bridge::bridge_ready(&site).await;
    let http = site.http_local_addr().expect("http on");
    let remote = format!(
        "switchboard_bridge_remote{{address=\"{}\",bridge=\"central\"}}",
        central.local_addr()
    );
    for openmetrics in [true, false] {
        let scrape = scrape_as(http, None, openmetrics).await;
        for (family, kind) in [
            ("switchboard_bridge_connected", "gauge"),
            ("switchboard_bridge_remote", "gauge"),
            ("switchboard_bridge_messages_sent", "counter"),
        ] {
            assert_eq!(
                scrape.types.get(family).map(String::as_str),
                Some(kind),
                "{family}"
            );
        }
        assert_eq!(scrape.get(&remote), 1.0, "openmetrics: {openmetrics}");
    }
}

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
