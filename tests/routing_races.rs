//! Races between routing and the client table, with the subscriber and the publisher on
//! different worker threads (two workers; the listener deals connections out in turn): a
//! subscription changing while a burst is routed, and a persistent client moving to another
//! worker by reconnecting or by taking its session over while messages are on their way. What a
//! subscriber sees must not depend on how routing is spread over threads: every message, once,
//! in order.

mod common;

use common::packets::{self, parse_publish};
use common::{broker_with, Raw};

/// Messages in each burst.
const BURST: u16 = 3000;

/// Messages per chunk of the paced publisher.
const CHUNK: u16 = 100;

/// Two workers: connections 1, 3, 5, ... on one, 2, 4, 6, ... on the other.
fn two_worker_broker() -> switchboard::BackgroundBroker {
    broker_with(|c| {
        // Connections dealt out in turn, so the test knows which worker each is on.
        c.listener.workers = 2;
        c.listener.reuse_port = false;
    })
}

fn sequence(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A publisher on a connection of its own that sends `BURST` QoS 1 messages to `topic`, each
/// payload its sequence number (u16), one chunk of [`CHUNK`] at a time as the test asks: the
/// test keeps a few chunks in flight through the broker while it changes subscriptions or moves
/// the subscriber, so that those changes race with routing.
struct Paced {
    go: tokio::sync::mpsc::UnboundedSender<()>,
    done: tokio::task::JoinHandle<()>,
    chunks_asked: u16,
}

impl Paced {
    async fn start(addr: std::net::SocketAddr, id: &str, topic: &'static str) -> Paced {
        let (mut publisher, _) = Raw::handshake(addr, id, true).await;
        let (go, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
        let done = tokio::spawn(async move {
            let mut next = 0u16;
            while next < BURST && asked.recv().await.is_some() {
                let mut frames = Vec::new();
                for n in next..(next + CHUNK).min(BURST) {
                    frames.extend(packets::publish(
                        topic,
                        &n.to_be_bytes(),
                        1,
                        n + 1,
                        false,
                        false,
                    ));
                }
                publisher.send(&frames).await;
                next += CHUNK;
            }
            publisher.sync().await; // every message routed
        });
        Paced {
            go,
            done,
            chunks_asked: 0,
        }
    }

    /// Asks for chunks until `received + ahead` messages have been asked for.
    fn keep_ahead(&mut self, received: usize, ahead: u16) {
        while usize::from(self.chunks_asked) * usize::from(CHUNK) < received + usize::from(ahead)
            && self.chunks_asked * CHUNK < BURST
        {
            let _ = self.go.send(());
            self.chunks_asked += 1;
        }
    }

    /// Asks for everything left and waits until all of it is routed.
    async fn finish(mut self) {
        self.keep_ahead(usize::from(BURST), 0);
        self.done.await.expect("publisher");
    }
}

/// Reads one PUBLISH, acknowledges it, and records its sequence number and DUP flag.
async fn take_one(sub: &mut Raw, got: &mut Vec<(u16, bool)>) {
    let publish = parse_publish(&sub.expect().await);
    got.push((sequence(&publish.payload), publish.dup));
    sub.send(&packets::ack(0x40, publish.pid)).await;
}

#[tokio::test]
async fn subscriptions_changing_during_a_burst_lose_and_repeat_nothing() {
    // [MQTT-3.8.4-3] a SUBSCRIBE for a filter already held replaces it, and the flow of
    // publications is not interrupted; [MQTT-3.3.5-1] overlapping subscriptions deliver once;
    // [MQTT-4.6.0-6] per-publisher order for the same topic and QoS. The subscriber adds an
    // overlapping filter mid-burst, drops the first, then subscribes to the second again: at
    // every moment one of them matches. (The QoS stays 1: messages of different QoS need not
    // keep their order, and a QoS 0 message does overtake QoS 1 messages queued for the window.)
    let broker = two_worker_broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "changing", true).await;
    sub.subscribe(1, &[("burst/#", 1)], &[1]).await;
    let mut publisher = Paced::start(addr, "bursting", "burst/x").await;
    publisher.keep_ahead(0, 2 * CHUNK);
    let mut seen = Vec::new();
    // 0: `burst/#` only; 1: `burst/+` asked for; 2: both held, since `overlap_from` messages;
    // 3: `burst/#` dropped; 4: `burst/+` held alone; 5: `burst/+` asked for again; 6: done.
    let (mut step, mut overlap_from) = (0, 0);
    while seen.len() < usize::from(BURST) {
        let frame = sub.expect().await;
        match (frame.byte1 & 0xF0, step) {
            (0x30, _) => {
                let publish = parse_publish(&frame);
                seen.push(sequence(&publish.payload));
                assert_eq!(publish.qos, 1);
                sub.send(&packets::ack(0x40, publish.pid)).await;
                publisher.keep_ahead(seen.len(), 2 * CHUNK);
            }
            (0x90, 1) if frame.pid() == 2 => (step, overlap_from) = (2, seen.len()),
            (0xB0, 3) if frame.pid() == 3 => step = 4,
            (0x90, 5) if frame.pid() == 4 => step = 6,
            (other, _) => panic!("unexpected packet {other:#x} at step {step}"),
        }
        if step == 0 && seen.len() >= usize::from(BURST) / 4 {
            sub.send(&packets::subscribe(2, &[("burst/+", 1)])).await;
            step = 1;
        }
        // Both filters held while two more chunks are routed: each message once all the same.
        if step == 2 && seen.len() >= overlap_from + 2 * usize::from(CHUNK) {
            sub.send(&packets::unsubscribe(3, &["burst/#"])).await;
            step = 3;
        }
        if step == 4 && seen.len() >= 3 * usize::from(BURST) / 4 {
            sub.send(&packets::subscribe(4, &[("burst/+", 1)])).await;
            step = 5;
        }
    }
    publisher.finish().await;
    assert_eq!(
        seen,
        (0..BURST).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert_eq!(
        step, 6,
        "every subscription change happened during the burst"
    );
    assert!(
        sub.sync().await.is_empty(),
        "nothing after the last message"
    );
}

/// A persistent subscriber on `move/#` takes `BURST` messages; after a quarter, with chunks on
/// their way, it moves to a new connection on the other worker, by reconnecting after a dropped
/// connection (`takeover = false`) or by connecting while the old one is still up
/// (`takeover = true`). Returns the sequence numbers in the order they arrived, each with its
/// DUP flag.
async fn move_mid_burst(takeover: bool) -> Vec<(u16, bool)> {
    let broker = two_worker_broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "mover", false).await; // connection 1
    sub.subscribe(1, &[("move/#", 1)], &[1]).await;
    let mut publisher = Paced::start(addr, "streaming", "move/x").await; // connection 2
    publisher.keep_ahead(0, 2 * CHUNK);
    let mut got = Vec::new();
    while got.len() < usize::from(BURST) / 4 {
        take_one(&mut sub, &mut got).await;
        publisher.keep_ahead(got.len(), 2 * CHUNK);
    }
    // More chunks on their way while the subscriber moves.
    publisher.keep_ahead(got.len(), 4 * CHUNK);
    if !takeover {
        drop(sub);
    }
    // Connections alternate between the workers: 1 and 3 share one, 2 and 4 the other. A
    // spacer takes turn 3, so that the new connection (4) is on the other worker.
    let _spacer = Raw::connect(addr).await;
    let (mut sub, present) = Raw::handshake(addr, "mover", false).await;
    assert!(present, "[MQTT-3.2.2-3] the session is resumed");
    while got.len() < usize::from(BURST) / 2 {
        take_one(&mut sub, &mut got).await;
        publisher.keep_ahead(got.len(), 2 * CHUNK);
    }
    publisher.finish().await; // the whole burst is routed
    let rest = sub.drain_acking().await;
    got.extend(rest.iter().map(|p| (sequence(&p.payload), p.dup)));
    got
}

/// Every message arrives; one arrives again only as a re-send (DUP) of a message the old
/// connection may not have acknowledged, and first arrivals keep the publisher's order.
fn check_moved(got: &[(u16, bool)]) {
    let mut first = Vec::new();
    for &(seq, dup) in got {
        if first.contains(&seq) {
            assert!(dup, "message {seq} repeated without DUP [MQTT-3.3.1-1]");
        } else {
            first.push(seq);
        }
    }
    assert_eq!(
        first,
        (0..BURST).collect::<Vec<_>>(),
        "[MQTT-4.6.0-6] all, in order"
    );
}

#[tokio::test]
async fn a_persistent_client_reconnecting_on_another_worker_gets_the_rest_of_a_burst() {
    // [MQTT-4.4.0-1] unacknowledged messages re-sent on resume, queued ones after them.
    check_moved(&move_mid_burst(false).await);
}

#[tokio::test]
async fn a_session_taken_over_on_another_worker_gets_the_rest_of_a_burst() {
    // [MQTT-3.1.4-3] the new connection takes the session over; nothing routed to it is lost.
    check_moved(&move_mid_burst(true).await);
}

/// Messages in the stream of [`a_persistent_client_reconnecting_again_and_again_gets_every_message_in_order`].
const STREAM: u32 = 20_000;

/// Reconnections of its subscriber during the stream.
const MOVES: u32 = 40;

/// How far its publisher may run ahead of what the subscriber has: far enough that it is
/// routing whenever the subscriber reconnects.
const AHEAD: u32 = 4_000;

/// Messages per chunk of its publisher: small, so that it routes often.
const STREAM_CHUNK: u32 = 20;

#[tokio::test]
async fn a_persistent_client_reconnecting_again_and_again_gets_every_message_in_order() {
    // [MQTT-4.6.0-6] [MQTT-4.4.0-1]: a publisher streams QoS 1 messages without waiting while a
    // persistent subscriber reconnects 40 times, each time on the other worker. Each reconnection
    // attaches while the publisher's worker routes: what it routed to the Registry while the
    // subscriber was away must reach the subscriber before what it routes straight to the new
    // connection (once that went the other way round, and 68 messages came last).
    let broker = two_worker_broker();
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "hopper", false).await;
    sub.subscribe(1, &[("hop/#", 1)], &[1]).await;
    let (progress, mut subscriber_has) = tokio::sync::watch::channel(0u32);
    let publisher = tokio::spawn(async move {
        let (mut publisher, _) = Raw::handshake(addr, "streamer", true).await;
        let mut next = 0u32;
        while next < STREAM {
            subscriber_has
                .wait_for(|&has| next < has + AHEAD)
                .await
                .expect("the subscriber's progress");
            let mut frames = Vec::new();
            for n in next..(next + STREAM_CHUNK).min(STREAM) {
                let pid = u16::try_from(n % 65_535 + 1).expect("fits");
                frames.extend(packets::publish(
                    "hop/x",
                    &n.to_be_bytes(),
                    1,
                    pid,
                    false,
                    false,
                ));
            }
            publisher.send(&frames).await;
            next += STREAM_CHUNK;
        }
        publisher.sync().await; // every message routed
    });
    // Retained messages keep the Registry busy, so that what it has to do for a reconnection
    // waits behind them while the publisher's worker routes.
    let (stop_loading, mut loading_stopped) = tokio::sync::oneshot::channel::<()>();
    let loader = tokio::spawn(async move {
        let (mut loader, _) = Raw::handshake(addr, "retainer", true).await;
        let mut round = 0u16;
        while loading_stopped.try_recv().is_err() {
            let mut frames = Vec::new();
            for n in 0..CHUNK {
                let topic = format!("load/{n}");
                frames.extend(packets::publish(
                    &topic,
                    &round.to_be_bytes(),
                    0,
                    0,
                    true,
                    false,
                ));
            }
            loader.send(&frames).await;
            round = round.wrapping_add(1);
        }
    });
    let mut got: Vec<(u32, bool)> = Vec::new();
    let mut first = std::collections::HashSet::new();
    let mut moves = 0;
    while first.len() < STREAM as usize {
        let publish = parse_publish(&sub.expect().await);
        let n = sequence32(&publish.payload);
        got.push((n, publish.dup));
        sub.send(&packets::ack(0x40, publish.pid)).await;
        if first.insert(n) {
            let _ = progress.send(first.len() as u32);
        }
        if moves < MOVES && first.len() as u32 >= (moves + 1) * (STREAM / (MOVES + 1)) {
            // Dropped with messages unread; the next connection goes to the other worker.
            drop(sub);
            let present;
            (sub, present) = Raw::handshake(addr, "hopper", false).await;
            assert!(present, "[MQTT-3.2.2-3] the session is resumed");
            moves += 1;
        }
    }
    publisher.await.expect("publisher");
    let _ = stop_loading.send(());
    loader.await.expect("loader");
    let rest = sub.drain_acking().await;
    got.extend(rest.iter().map(|p| (sequence32(&p.payload), p.dup)));
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for &(n, dup) in &got {
        if seen.insert(n) {
            order.push(n);
        } else {
            assert!(dup, "message {n} repeated without DUP [MQTT-3.3.1-1]");
        }
    }
    let out_of_order = order.windows(2).find(|w| w[1] != w[0] + 1);
    assert_eq!(out_of_order, None, "[MQTT-4.6.0-6] in order");
    assert_eq!(order.len(), STREAM as usize, "every message");
}

/// The stream's sequence number: the payload's first four bytes.
fn sequence32(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
}
