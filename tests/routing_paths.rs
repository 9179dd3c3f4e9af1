//! A live publish is routed on the worker that read it, straight to its subscribers; a retained
//! publish goes through the Registry, which stores it. These tests put the publisher and the
//! subscriber on different workers and check that messages taking different paths keep the
//! order a subscriber may rely on [MQTT-4.6.0-6]: per publisher and topic, and the retained
//! message a subscription gets before the live messages that follow it.

mod common;

use common::packets::{self, parse_publish};
use common::{broker_with, Raw};

/// Messages each publisher sends.
const MESSAGES: u16 = 3000;

/// Messages per write of the publisher: small, so that many reads hold no retained message.
const CHUNK: u16 = 10;

fn sequence(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

fn sequence32(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
}

/// Sends QoS 1 messages `first..MESSAGES` to `topic` in chunks of [`CHUNK`], the sequence
/// number as payload, retained when `retain(n)`; signals `started` after the first chunks, and
/// waits until every message is routed.
async fn publish_sequence(
    mut publisher: Raw,
    topic: &'static str,
    first: u16,
    retain: impl Fn(u16) -> bool,
    started: tokio::sync::oneshot::Sender<()>,
) {
    let mut started = Some(started);
    let mut n = first;
    while n < MESSAGES {
        let mut frames = Vec::new();
        for m in n..(n + CHUNK).min(MESSAGES) {
            frames.extend(packets::publish(
                topic,
                &m.to_be_bytes(),
                1,
                m + 1,
                retain(m),
                false,
            ));
        }
        publisher.send(&frames).await;
        n += CHUNK;
        if n >= first + 30 * CHUNK {
            signal_once(&mut started);
        }
    }
    publisher.sync().await; // every message routed
}

/// Tells the test the stream is under way (the first time only).
fn signal_once(started: &mut Option<tokio::sync::oneshot::Sender<()>>) {
    if let Some(started) = started.take() {
        let _ = started.send(());
    }
}

#[tokio::test]
async fn retained_and_live_messages_of_one_publisher_arrive_in_publish_order() {
    // Two workers: the subscriber's connection on one, the publisher's on the other.
    let broker = broker_with(|c| {
        // Connections dealt out in turn, so the test knows which worker each is on.
        c.listener.workers = 2;
        c.listener.reuse_port = false;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "mixed-reader", true).await;
    sub.subscribe(1, &[("mixed/t", 1)], &[1]).await;
    let (publisher, _) = Raw::handshake(addr, "mixed-writer", true).await;
    let (started, _) = tokio::sync::oneshot::channel();
    // One message in 50 is retained: it goes through the Registry, the others do not.
    let task = tokio::spawn(publish_sequence(
        publisher,
        "mixed/t",
        0,
        |n| n % 50 == 3,
        started,
    ));
    for expected in 0..MESSAGES {
        let p = parse_publish(&sub.expect().await);
        assert_eq!(
            sequence(&p.payload),
            expected,
            "messages of one publisher on one topic arrive in order [MQTT-4.6.0-6]"
        );
        // Towards an established subscription RETAIN is 0 [MQTT-3.3.1-9].
        assert!(!p.retain);
        sub.send(&packets::ack(0x40, p.pid)).await;
    }
    task.await.expect("publisher");
    assert!(sub.sync().await.is_empty(), "no duplicates");
}

/// Publishes live QoS 1 messages to `topic`, [`CHUNK`] per write, at most 20 chunks ahead of their
/// PUBACKs, so that it keeps publishing for as long as the test needs; signals `started`
/// after 30 chunks and stops when `stop` is set. Payloads are u32 sequence numbers from 1.
async fn publish_until_stopped(
    mut publisher: Raw,
    topic: &'static str,
    started: tokio::sync::oneshot::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut started = Some(started);
    let mut n = 1u32;
    let mut in_flight = 0;
    let chunk = u32::from(CHUNK);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut frames = Vec::new();
        for m in n..n + chunk {
            let pid = (m % 65535 + 1) as u16;
            frames.extend(packets::publish(
                topic,
                &m.to_be_bytes(),
                1,
                pid,
                false,
                false,
            ));
        }
        publisher.send(&frames).await;
        in_flight += CHUNK;
        // Up to 20 chunks ahead of their PUBACKs: the broker's worker is always routing.
        while in_flight > 20 * CHUNK {
            assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
            in_flight -= 1;
        }
        n += chunk;
        if n > 30 * chunk {
            signal_once(&mut started);
        }
    }
    publisher.sync().await; // every message routed
}

#[tokio::test]
async fn a_subscription_gets_the_retained_message_before_the_live_ones_after_it() {
    let broker = broker_with(|c| {
        // Connections dealt out in turn, so the test knows which worker each is on.
        c.listener.workers = 2;
        c.listener.reuse_port = false;
    });
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "late-reader", true).await;
    let (mut publisher, _) = Raw::handshake(addr, "state-writer", true).await;
    // Message 0 is retained; 1.. are live, published while the subscriber subscribes.
    publisher
        .send(&packets::publish(
            "state/x",
            &0u32.to_be_bytes(),
            1,
            1,
            true,
            false,
        ))
        .await;
    publisher.sync().await;
    let (started, going) = tokio::sync::oneshot::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = tokio::spawn(publish_until_stopped(
        publisher,
        "state/x",
        started,
        stop.clone(),
    ));
    going.await.expect("publisher started");
    // Ten subscriptions in turn, each racing with the stream.
    for round in 1..=10u16 {
        sub.subscribe(round, &[("state/x", 1)], &[1]).await;
        // [MQTT-3.8.4-3] the retained message comes for the new subscription, with RETAIN 1
        // [MQTT-3.3.1-8], and before any live message published after it.
        let first = parse_publish(&sub.expect().await);
        assert!(first.retain, "round {round}: the retained message first");
        assert_eq!(sequence32(&first.payload), 0);
        sub.send(&packets::ack(0x40, first.pid)).await;
        let mut last = 0;
        for _ in 0..100 {
            let frame = sub.expect().await;
            let p = take_in_order(&mut sub, &frame, &mut last).await;
            assert!(!p.retain, "live messages after the retained one");
        }
        // Unsubscribe; what was routed before the UNSUBACK may still come (the Session had it
        // queued), in order [MQTT-3.10.4-3]; then nothing.
        sub.send(&packets::unsubscribe(1000 + round, &["state/x"]))
            .await;
        loop {
            let frame = sub.expect().await;
            if frame.byte1 == 0xB0 {
                break;
            }
            take_in_order(&mut sub, &frame, &mut last).await;
        }
        for p in sub.drain_acking().await {
            let n = sequence32(&p.payload);
            assert!(
                n > last,
                "in publish order [MQTT-4.6.0-6]: {n} after {last}"
            );
            last = n;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.expect("publisher");
    assert!(sub.sync().await.is_empty(), "nothing after the UNSUBACK");
}

/// Parses a QoS 1 PUBLISH of the live stream, checks it comes after `last` in publish order
/// [MQTT-4.6.0-6], moves `last` on and acknowledges it.
async fn take_in_order(sub: &mut Raw, frame: &common::Frame, last: &mut u32) -> packets::Published {
    let p = parse_publish(frame);
    let n = sequence32(&p.payload);
    assert!(
        n > *last,
        "in publish order [MQTT-4.6.0-6]: {n} after {last}"
    );
    *last = n;
    sub.send(&packets::ack(0x40, p.pid)).await;
    p
}
