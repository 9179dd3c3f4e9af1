//! Slow subscribers cost bounded memory, and a saturated Registry slows down the publishers
//! whose messages go through it, through TCP instead of queueing without bound (DESIGN.md, "The
//! data path"); live publishes do not go through it at all.

mod common;

use std::time::{Duration, Instant};

use common::packets::{self, parse_publish};
use common::{broker_with, broker_with_hooks, Raw};
use switchboard::config::QueueOverflow;
use switchboard::hooks::DisconnectReason;
use switchboard::registry::Freeze;

/// The tests here measure memory and stall timing: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn subscriber_that_stops_reading_costs_bounded_memory_and_drops_qos0() {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(|c| c.sessions.max_outbound_bytes = 256 * 1024);
    let addr = broker.local_addr();
    let (mut stalled, _) = Raw::handshake(addr, "stalled", true).await;
    stalled.subscribe(1, &[("flood", 0)], &[0]).await;
    // From here on `stalled` never reads again.
    let (mut publisher, _) = Raw::handshake(addr, "flooder", true).await;
    let payload = vec![0xAB; 16 * 1024];
    let frame = packets::publish("flood", &payload, 0, 0, false, false);
    let before = common::rss_bytes();
    let total = 64 * 1024 * 1024;
    for _ in 0..total / frame.len() {
        publisher.send(&frame).await;
    }
    publisher.sync().await; // every publish was routed: the flooder was never blocked for good
    common::eventually(|| async { broker.metrics().snapshot().qos0_dropped_slow_consumer > 0 })
        .await;
    let grown = common::rss_bytes().saturating_sub(before);
    // 64 MiB went to a reader that took none of it; socket buffers plus the 256 KiB bound are
    // what may be held. Unbounded buffering would have grown by about 64 MiB.
    assert!(grown < 24 * 1024 * 1024, "RSS grew by {grown} bytes");
    drop(stalled);
}

#[tokio::test]
async fn qos1_subscriber_that_falls_behind_is_disconnected_when_so_configured() {
    let _serial = SERIAL.lock().await;
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.sessions.max_inflight = 10;
        c.sessions.max_queued_messages = 50;
        c.sessions.queue_overflow = QueueOverflow::Disconnect;
    });
    let addr = broker.local_addr();
    let (mut lazy, _) = Raw::handshake(addr, "lazy", true).await;
    lazy.subscribe(1, &[("work", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "boss", true).await;
    for n in 1..=100u16 {
        publisher
            .send(&packets::publish("work", b"job", 1, n, false, false))
            .await;
    }
    let event = hooks.disconnected("lazy").await;
    assert_eq!(event.reason, DisconnectReason::SlowConsumer);
    assert_eq!(broker.metrics().snapshot().slow_consumer_disconnects, 1);
    // It received its window before being cut off, and the connection is closed.
    let mut received = 0;
    while let Some(frame) = lazy.recv().await {
        assert_eq!(parse_publish(&frame).qos, 1);
        received += 1;
    }
    assert_eq!(received, 10);
}

/// What the flood of [`flood_while_registry_frozen`] goes through the Registry for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ThroughRegistry {
    /// Retained messages: the Registry stores and routes them.
    Retained,
    /// A subscriber that is not connected: the Registry stores its deliveries.
    OfflineSubscriber,
}

#[tokio::test]
async fn saturated_registry_pushes_back_on_a_retained_publisher_and_loses_nothing() {
    flood_while_registry_frozen(ThroughRegistry::Retained).await;
}

#[tokio::test]
async fn saturated_registry_pushes_back_on_a_publisher_to_offline_sessions_and_loses_nothing() {
    flood_while_registry_frozen(ThroughRegistry::OfflineSubscriber).await;
}

/// Freezes the Registry, floods QoS 1 publishes that must go through it, and checks that the
/// publisher's socket stops being read within a bound, then that every message arrives once and
/// in order [MQTT-4.6.0-2] [MQTT-4.6.0-6] when the Registry thaws.
async fn flood_while_registry_frozen(path: ThroughRegistry) {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(|c| {
        // Two workers, so the Registry has a thread of its own (with one it shares the
        // worker's, and freezing it would stop the Sessions too, proving nothing about its
        // mailbox).
        c.listener.workers = 2;
        c.sessions.registry_mailbox = 16;
        c.sessions.max_queued_messages = 1_000_000;
        c.sessions.max_queued_bytes = usize::MAX;
        c.sessions.max_inflight = 65535;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "counter", false).await;
    sub.subscribe(1, &[("load", 1)], &[1]).await;
    if path == ThroughRegistry::OfflineSubscriber {
        sub.send(&[0xE0, 0x00]).await; // DISCONNECT
        sub.expect_closed().await;
    }
    let (mut publisher, _) = Raw::handshake(addr, "firehose", true).await;
    publisher.sync().await; // the subscriber's disconnect is done: its deliveries are stored

    // Block the Registry's thread: Sessions can no longer hand it anything.
    let (release, frozen) = std::sync::mpsc::channel::<()>();
    broker.registry().do_send(Freeze(frozen));

    // Write QoS 1 publishes without waiting, until the socket stays full for 500 ms.
    let payload = vec![7u8; 1024];
    let retain = path == ThroughRegistry::Retained;
    let mut sent = 0u32;
    let mut written = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut stalled_since: Option<Instant> = None;
    // Socket buffers on both sides hold a few MiB; past that only the broker could have kept it.
    let limit = 16 * 1024 * 1024;
    while written < limit {
        if pending.is_empty() {
            sent += 1;
            let pid = (sent % 65535 + 1) as u16;
            pending = packets::publish("load", &payload, 1, pid, retain, false);
        }
        match publisher.stream.try_write(&pending) {
            Ok(n) => {
                written += n;
                pending.drain(..n);
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await; // pacing retries of a full socket
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(
        written < limit,
        "the publisher was never slowed down ({written} bytes accepted)"
    );
    // Finish the partial frame so the stream stays well-formed, then let the Registry go.
    drop(release);
    if !pending.is_empty() {
        publisher.send(&pending).await;
    }
    let complete = sent;
    if path == ThroughRegistry::OfflineSubscriber {
        publisher.sync().await;
        let (again, present) = Raw::handshake(addr, "counter", false).await;
        assert!(present, "the session was kept");
        sub = again;
    }

    // Every message arrives, exactly once, in order.
    let mut got = 0u32;
    while got < complete {
        let frame = sub.expect().await;
        if frame.packet_type() == 4 {
            continue;
        }
        let p = parse_publish(&frame);
        sub.send(&packets::ack(0x40, p.pid)).await;
        got += 1;
    }
    assert!(sub.sync().await.is_empty(), "no duplicates");
    eprintln!("publisher stalled after {written} bytes ({complete} messages)");
}

/// A live publish to a connected subscriber is routed on the worker that read it: with the
/// Registry's thread blocked, it still arrives, in order.
#[tokio::test]
async fn live_publishes_do_not_wait_for_the_registry() {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(|c| {
        // Connections dealt out in turn, so the test knows which worker each is on.
        c.listener.workers = 2;
        c.listener.reuse_port = false;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "reader", true).await;
    sub.subscribe(1, &[("live/+", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "writer", true).await;
    let (release, frozen) = std::sync::mpsc::channel::<()>();
    broker.registry().do_send(Freeze(frozen));
    for n in 1..=100u16 {
        let payload = n.to_be_bytes();
        publisher
            .send(&packets::publish("live/x", &payload, 1, n, false, false))
            .await;
    }
    for n in 1..=100u16 {
        let p = parse_publish(&sub.expect().await);
        assert_eq!(p.payload, n.to_be_bytes(), "in order [MQTT-4.6.0-6]");
        sub.send(&packets::ack(0x40, p.pid)).await;
    }
    drop(release);
    assert!(sub.sync().await.is_empty(), "no duplicates");
}
