//! Wills of persistent sessions across `kill -9` (`[persistence]`): a will armed when the
//! broker dies goes out at the next start, a delayed will keeps its wall-clock deadline, the end
//! of a session that expired while the broker was down publishes its will, and a normal
//! DISCONNECT leaves none behind.
//!
//! Each device publishes a retained "online" to its status topic, with a retained "offline"
//! will there: what a new subscriber reads back after the restart tells whether the will went
//! out. The device's own QoS 1 PUBACK of "online" is the barrier: retained publishes go through
//! the Registry, and their PUBACK waits until everything it recorded before (the will) is
//! durable.

mod common;

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::child::wait_line;
use common::durable::{kill_9, start_broker};
use common::v5::{connect5, disconnect5, prop, Props, Will5};
use common::{packets, Raw};
use switchboard::config::PersistenceConfig;
use switchboard::persistence;

/// Connects `device` as an MQTT 5 client with a persistent session (`expiry` seconds) and a
/// retained QoS 1 "offline" will on `topic` after `delay` seconds, and publishes a retained
/// "online" there; returns once its PUBACK came.
async fn device_online(
    addr: std::net::SocketAddr,
    device: &str,
    topic: &str,
    expiry: u32,
    delay: u32,
) -> Raw {
    let will = Will5 {
        topic,
        payload: b"offline",
        qos: 1,
        retain: true,
        props: Props::new().u32(prop::WILL_DELAY, delay),
    };
    let session = Props::new().u32(prop::SESSION_EXPIRY, expiry);
    let (mut raw, ack) =
        Raw::connect5(addr, &connect5(device, true, 60, &session, Some(&will))).await;
    assert_eq!(ack.code, mqttbytes::v5::ConnectReturnCode::Success);
    publish_retained(&mut raw, topic, b"online").await;
    raw
}

/// Publishes a retained QoS 1 message from `raw` and waits for its PUBACK.
async fn publish_retained(raw: &mut Raw, topic: &str, payload: &[u8]) {
    raw.send(&common::v5::publish5(
        topic,
        payload,
        1,
        1,
        true,
        &Props::new(),
    ))
    .await;
    let ack = raw.expect().await;
    assert_eq!(ack.byte1 >> 4, 4, "PUBACK");
}

/// The retained payload at `topic`, as a new subscriber gets it.
async fn retained_at(addr: std::net::SocketAddr, topic: &str) -> Option<Vec<u8>> {
    let (mut sub, _) = Raw::handshake(addr, "status-reader", true).await;
    sub.subscribe(1, &[(topic, 1)], &[1]).await;
    let got = sub.drain_acking().await;
    assert!(got.len() <= 1, "one retained message per topic");
    got.into_iter().next().map(|p| p.payload)
}

/// Drops `raw`'s connection without DISCONNECT and waits until the broker has handled it.
fn lose_connection(raw: Raw, device: &str, logs: &Receiver<String>) {
    drop(raw);
    loop {
        let line = wait_line(logs, "client disconnected");
        if line.contains(device) {
            return;
        }
    }
}

/// Makes everything the Registry recorded so far durable: a retained QoS 1 publish's PUBACK
/// waits for it.
async fn barrier(addr: std::net::SocketAddr) {
    let (mut raw, _) = Raw::handshake(addr, "barrier", true).await;
    raw.send(&packets::publish("barrier", b"", 1, 1, true, false))
        .await;
    assert_eq!(raw.expect().await.byte1 >> 4, 4, "PUBACK");
}

/// The will of `device`'s session as start-up reads it from `dir`, with what is left of its
/// delay.
fn will_on_disk(dir: &Path, device: &str) -> Option<Duration> {
    let config = PersistenceConfig {
        dir: Some(dir.to_path_buf()),
        ..PersistenceConfig::default()
    };
    let recovered = persistence::open(&config)
        .expect("the log reads back")
        .expect("a directory is configured");
    let session = recovered
        .sessions
        .iter()
        .find(|s| s.client_id == device)
        .expect("the session is kept");
    session.will.as_ref().map(|(will, due_ms)| {
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("gates/3/status", &b"offline"[..])
        );
        Duration::from_millis(due_ms.saturating_sub(persistence::unix_ms_now()))
    })
}

#[tokio::test]
async fn a_will_armed_when_the_broker_is_killed_is_published_at_the_next_start() {
    // The connection ends with the broker, without DISCONNECT: its will is due [MQTT-3.1.2-8].
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, "always");
    let _device = device_online(addr, "gate-1", "gates/1/status", 3600, 0).await;
    kill_9(child);

    let (restarted, _logs, addr) = start_broker(&state, "always");
    assert_eq!(
        retained_at(addr, "gates/1/status").await.as_deref(),
        Some(&b"offline"[..]),
        "the will went out at start"
    );
    kill_9(restarted);
}

#[tokio::test]
async fn a_delayed_will_due_while_the_broker_was_down_is_published_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker(&state, "interval");
    let device = device_online(addr, "gate-2", "gates/2/status", 3600, 1).await;
    lose_connection(device, "gate-2", &logs);
    let lost = Instant::now();
    barrier(addr).await;
    kill_9(child);
    // The broker is down while the 1 s Will Delay Interval passes (wall-clock time passing is
    // what is under test, not a synchronisation).
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(lost.elapsed()));

    let (restarted, _logs, addr) = start_broker(&state, "interval");
    assert_eq!(
        retained_at(addr, "gates/2/status").await.as_deref(),
        Some(&b"offline"[..]),
        "the delay passed while the broker was down: the will goes out at start"
    );
    kill_9(restarted);
}

#[tokio::test]
async fn a_delayed_will_not_yet_due_resumes_its_delay_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker(&state, "never");
    let device = device_online(addr, "gate-3", "gates/3/status", 3600, 3).await;
    let lost_at = Instant::now();
    lose_connection(device, "gate-3", &logs);
    let seen_at = Instant::now();
    barrier(addr).await;
    kill_9(child);
    // Down for a while: the deadline on disk is wall-clock, so what is left shrinks.
    std::thread::sleep(Duration::from_millis(300));
    let left = will_on_disk(&state, "gate-3").expect("the will is kept, delayed");
    let at_most = Duration::from_secs(3).saturating_sub(seen_at.elapsed());
    assert!(
        left <= at_most + Duration::from_millis(10),
        "{left:?} left of the delay: it resumes where it stood (at most {at_most:?}), not from \
         the start"
    );

    let (restarted, _logs, addr) = start_broker(&state, "never");
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("gates/3/status", 1)], &[1]).await;
    let first = packets::parse_publish(&watcher.expect().await);
    assert_eq!(first.payload, b"online", "not due yet at start");
    let will = packets::parse_publish(&watcher.expect().await);
    assert_eq!(will.payload, b"offline");
    // [MQTT-3.1.3-9] not before the delay, counted from when the connection was lost.
    assert!(
        lost_at.elapsed() >= Duration::from_millis(2950),
        "the will came {:?} after the connection was lost",
        lost_at.elapsed()
    );
    assert!(seen_at.elapsed() < Duration::from_secs(4));
    kill_9(restarted);
}

#[tokio::test]
async fn the_will_of_a_session_that_expired_while_the_broker_was_down_is_published_at_start() {
    // [MQTT-3.1.3-9] the will goes out when the session ends, if that comes before its delay.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker(&state, "always");
    let device = device_online(addr, "gate-4", "gates/4/status", 1, 3600).await;
    lose_connection(device, "gate-4", &logs);
    let lost = Instant::now();
    barrier(addr).await;
    kill_9(child);
    // Down while the 1 s session expiry passes.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(lost.elapsed()));

    let (restarted, _logs, addr) = start_broker(&state, "always");
    assert_eq!(
        retained_at(addr, "gates/4/status").await.as_deref(),
        Some(&b"offline"[..]),
        "the session ended while the broker was down: its will goes out at start"
    );
    let session = Props::new().u32(prop::SESSION_EXPIRY, 3600);
    let (_raw, ack) = Raw::connect5(addr, &connect5("gate-4", false, 60, &session, None)).await;
    assert!(!ack.session_present, "[MQTT-3.2.2-3] the session is gone");
    kill_9(restarted);
}

#[tokio::test]
async fn a_normal_disconnect_leaves_no_will_to_publish_after_a_restart() {
    // [MQTT-3.1.2-10] DISCONNECT with reason 0 discards the will.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker(&state, "always");
    let mut device = device_online(addr, "gate-5", "gates/5/status", 3600, 0).await;
    device.send(&disconnect5(0, &Props::new())).await;
    device.expect_closed().await;
    wait_line(&logs, "client disconnected");
    barrier(addr).await;
    kill_9(child);

    let (restarted, _logs, addr) = start_broker(&state, "always");
    assert_eq!(
        retained_at(addr, "gates/5/status").await.as_deref(),
        Some(&b"online"[..]),
        "no will went out"
    );
    kill_9(restarted);
}
