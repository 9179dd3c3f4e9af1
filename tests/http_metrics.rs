//! The HTTP server (`[http]`): Prometheus `/metrics` parsed by the official Python client's
//! parser, with counters that move by exactly the traffic the test sent; the health checks; the
//! bearer token; JSON errors.

mod common;

use std::time::Duration;

use common::http::get;
use common::metrics::{scrape, scrape_as};
use common::{broker_with, packets, prometheus_parser_available, Raw};

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
        bytes_out += frame.wire_len() as f64;
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
