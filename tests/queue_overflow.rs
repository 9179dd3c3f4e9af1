//! A connected client that falls behind keeps its connection: its QoS 1/2 queue (beyond the
//! inflight window) is bounded in messages and in bytes, and `sessions.queue_overflow` decides
//! what is dropped; every drop is counted by reason. (`disconnect`, the old behaviour, is in
//! `tests/backpressure.rs`; offline sessions in `tests/sessions.rs`; MQTT.js under a burst in
//! `tests/mqttjs.rs`.)

mod common;

use common::{broker_with, Raw};
use switchboard::config::{Config, QueueOverflow};
use switchboard::BackgroundBroker;

/// First payload bytes of what [`Raw::drain_acking`] brings.
async fn drain_acking(sub: &mut Raw) -> Vec<u8> {
    sub.drain_acking()
        .await
        .iter()
        .map(|p| p.payload[0])
        .collect()
}

/// A subscriber to `q` at QoS 1 that reads nothing while a publisher sends `count` QoS 1
/// messages of `size` bytes (first byte: the sequence number); then it reads and acknowledges
/// everything. Returns what it got and the broker, for its counters.
async fn behind_by(
    count: u8,
    size: usize,
    adjust: impl FnOnce(&mut Config),
) -> (Vec<u8>, BackgroundBroker) {
    let broker = broker_with(adjust);
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "behind", true).await;
    sub.subscribe(1, &[("q", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "fast", true).await;
    publisher
        .publish_numbered("q", (0..count).map(|n| (n, size)))
        .await;
    // Every publish routed, and every delivery in the subscriber's Session, before it reads.
    publisher.sync().await;
    let got = drain_acking(&mut sub).await;
    sub.ping().await; // still connected
    (got, broker)
}

#[tokio::test]
async fn drop_oldest_keeps_the_connection_and_the_latest_messages() {
    let (got, broker) = behind_by(10, 1, |c| {
        c.sessions.max_inflight = 2;
        c.sessions.max_queued_messages = 3;
    })
    .await;
    // The window (0, 1) was sent; of the rest the queue kept the latest three.
    assert_eq!(got, vec![0, 1, 7, 8, 9]);
    let m = broker.metrics().snapshot();
    assert_eq!(
        (m.online_queue_dropped, m.slow_consumer_disconnects),
        (5, 0)
    );
}

#[tokio::test]
async fn drop_newest_keeps_the_connection_and_the_earliest_messages() {
    let (got, broker) = behind_by(10, 1, |c| {
        c.sessions.max_inflight = 2;
        c.sessions.max_queued_messages = 3;
        c.sessions.queue_overflow = QueueOverflow::DropNewest;
    })
    .await;
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    assert_eq!(broker.metrics().snapshot().online_queue_dropped, 5);
}

#[tokio::test]
async fn the_queue_is_bounded_in_bytes_too() {
    // Each message weighs 1 (topic) + 300 (payload) bytes: 1024 bytes hold three of them.
    let (got, broker) = behind_by(8, 300, |c| {
        c.sessions.max_inflight = 1;
        c.sessions.max_queued_bytes = 1024;
    })
    .await;
    assert_eq!(got, vec![0, 5, 6, 7]);
    assert_eq!(broker.metrics().snapshot().online_queue_dropped, 4);
}

#[tokio::test]
async fn a_message_larger_than_the_byte_bound_is_dropped_and_the_next_one_comes() {
    let broker = broker_with(|c| {
        c.sessions.max_inflight = 1;
        c.sessions.max_queued_bytes = 1024;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "small-queue", true).await;
    sub.subscribe(1, &[("big", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "big-sender", true).await;
    publisher
        .publish_numbered("big", [(0, 10), (1, 4000), (2, 10)])
        .await;
    publisher.sync().await;
    assert_eq!(drain_acking(&mut sub).await, vec![0, 2]);
    assert_eq!(broker.metrics().snapshot().online_queue_dropped, 1);
}
