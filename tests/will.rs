//! Last will (MQTT 3.1.1 section 3.1.2.5).

mod common;

use common::packets::{parse_publish, ConnectSpec};
use common::{broker_with_hooks, Raw};

async fn connect_with_will(addr: std::net::SocketAddr, id: &str, keep_alive: u16) -> Raw {
    let spec = ConnectSpec {
        client_id: id,
        keep_alive,
        will: Some(("gate/1AB/status", b"offline", 1, true)),
        ..Default::default()
    };
    let (raw, code) = Raw::connect_with(addr, spec).await;
    assert_eq!(code, 0);
    raw
}

#[tokio::test]
async fn will_is_published_when_the_connection_is_lost() {
    // [MQTT-3.1.2-8] published when the connection closes without DISCONNECT.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gate/+/status", 1)], &[1]).await;
    let gate = connect_with_will(addr, "gate-1AB", 60).await;
    drop(gate);
    hooks.disconnected("gate-1AB").await;
    let will = parse_publish(&watcher.expect().await);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..], will.qos),
        ("gate/1AB/status", &b"offline"[..], 1)
    );
    // The will was retained, as its Will Retain asked [MQTT-3.1.2-17]: a late subscriber sees
    // it too.
    let (mut late, _) = Raw::handshake(addr, "late", true).await;
    late.subscribe(1, &[("gate/1AB/status", 0)], &[0]).await;
    assert!(parse_publish(&late.sync().await[0]).retain);
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() {
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gate/#", 0)], &[0]).await;
    let _silent = connect_with_will(addr, "silent", 1).await;
    hooks.disconnected("silent").await;
    assert_eq!(
        parse_publish(&watcher.expect().await).payload,
        b"offline".to_vec()
    );
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    // [MQTT-3.1.2-10] [MQTT-3.14.4-3] DISCONNECT discards the will.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gate/#", 0)], &[0]).await;
    let mut gate = connect_with_will(addr, "polite", 60).await;
    gate.send(&[0xE0, 0x00]).await;
    gate.expect_closed().await;
    hooks.disconnected("polite").await;
    // The Registry handled the disconnect (and would have routed a will) before this sync.
    assert!(watcher.sync().await.is_empty());
    let (mut late, _) = Raw::handshake(addr, "late", true).await;
    late.subscribe(1, &[("gate/#", 0)], &[0]).await;
    assert!(late.sync().await.is_empty(), "no retained will either");
}

#[tokio::test]
async fn a_will_without_will_retain_is_not_retained_and_no_will_flag_means_no_will() {
    // [MQTT-3.1.2-16] Will Retain 0: published as a non-retained message. [MQTT-3.1.2-12] no
    // Will Flag: nothing is published when the connection ends.
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let spec = ConnectSpec {
        client_id: "unretained",
        will: Some(("gate/2/status", b"offline", 1, false)),
        ..Default::default()
    };
    let (unretained, code) = Raw::connect_with(addr, spec).await;
    assert_eq!(code, 0);
    let (no_will, _) = Raw::handshake(addr, "no-will", true).await;
    drop(no_will);
    hooks.disconnected("no-will").await;
    drop(unretained);
    hooks.disconnected("unretained").await;
    let got: Vec<_> = watcher.sync().await.iter().map(parse_publish).collect();
    assert_eq!(
        got.len(),
        1,
        "only the will of the client that had one: {got:?}"
    );
    assert_eq!(
        (got[0].topic.as_str(), got[0].retain),
        ("gate/2/status", false)
    );
    let (mut late, _) = Raw::handshake(addr, "late", true).await;
    late.subscribe(1, &[("gate/#", 0)], &[0]).await;
    assert!(late.sync().await.is_empty(), "not retained");
}

#[tokio::test]
async fn a_disconnect_with_reserved_flags_set_closes_the_connection_and_publishes_the_will() {
    // [MQTT-3.14.1-1] the server validates DISCONNECT's reserved bits and closes the connection
    // if they are not zero. That is a protocol error, not a DISCONNECT (section 3.1.2.5: the
    // will is published when the server closes the connection for a protocol error), so the
    // will goes out [MQTT-3.1.2-8].
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let mut gate = connect_with_will(addr, "reserved-bits", 60).await;
    gate.send(&[0xE1, 0x00]).await;
    gate.expect_closed().await;
    hooks.disconnected("reserved-bits").await;
    let will = parse_publish(&watcher.expect().await);
    assert_eq!(will.payload, b"offline".to_vec());
    assert_eq!(broker.metrics().snapshot().protocol_errors, 1);
}
