//! Compaction keeps the live state whole: the writer holds where each live record's frame is in
//! the log, not a copy, and a compaction reads the frames back from there. After several
//! compactions in a row (each reading what the one before it moved) and a `kill -9`, retained
//! messages, a persistent session, its messages in flight (sent, not acknowledged: re-sent with
//! DUP) and its queued messages all come back. A compaction writes its snapshot on a thread
//! of its own while the writer goes on: a `kill -9` in the middle of one loses nothing either.
//! The superseded segments are deleted on a thread of their own too: no acknowledgement waits
//! for their deletion.

mod common;

use std::time::{Duration, Instant};

use common::durable::{kill_9, start_broker_and_http, start_broker_with};
use common::faults::{inject, stop_tracing};
use common::packets::{self, parse_publish};
use common::{strace_available, Raw};

/// Compacts once the log passes 1 MiB and twice the live state.
const SMALL_LOG: &str = "compact_min_bytes = 1048576";

/// Publishes QoS 1 `(topic, payload, retain)` messages in one burst and waits for every PUBACK.
async fn publish_acked(publisher: &mut Raw, messages: &[(String, Vec<u8>, bool)]) {
    let burst: Vec<u8> = messages
        .iter()
        .enumerate()
        .flat_map(|(i, (topic, payload, retain))| {
            packets::publish(topic, payload, 1, (i % 65_000 + 1) as u16, *retain, false)
        })
        .collect();
    publisher.send(&burst).await;
    for _ in messages {
        assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
    }
}

/// Every retained message under `site/#`, as a new subscriber gets them, sorted by topic.
async fn retained_under_site(addr: std::net::SocketAddr) -> Vec<(String, Vec<u8>)> {
    retained_under(addr, &["site/#".to_string()]).await
}

/// Every retained message matching `filters`, each filter's as a new subscriber gets them
/// (fewer than a session's queue holds: 10,000), sorted by topic.
async fn retained_under(addr: std::net::SocketAddr, filters: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    for filter in filters {
        let (mut reader, _) = Raw::handshake(addr, "reader", true).await;
        reader.subscribe(1, &[(filter.as_str(), 1)], &[1]).await;
        got.extend(
            reader
                .drain_acking()
                .await
                .into_iter()
                .map(|p| (p.topic, p.payload)),
        );
    }
    got.sort();
    got
}

/// The `(topic, payload)` of retained `messages`, sorted by topic.
fn sorted_retained(messages: &[(String, Vec<u8>, bool)]) -> Vec<(String, Vec<u8>)> {
    let mut want: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(topic, payload, _)| (topic.clone(), payload.clone()))
        .collect();
    want.sort();
    want
}

/// `n` as the two-byte payload the checks below read back.
fn numbered(topic: String, n: u16, retain: bool) -> (String, Vec<u8>, bool) {
    (topic, n.to_be_bytes().to_vec(), retain)
}

#[tokio::test]
async fn live_state_survives_compactions_in_a_row_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_with(&state, "never", "info", SMALL_LOG);

    let (mut publisher, _) = Raw::handshake(addr, "site", true).await;
    let gates: Vec<_> = (0..300u16)
        .map(|n| numbered(format!("site/{n}/gate"), n, true))
        .collect();
    publish_acked(&mut publisher, &gates).await;

    // A persistent subscriber takes 10 messages without acknowledging them (in flight: their
    // `Sent` records join their `Queued` ones), leaves, and 20 more are queued for it.
    let (mut radar, _) = Raw::handshake(addr, "radar", false).await;
    radar.subscribe(1, &[("fleet/#", 1)], &[1]).await;
    let first: Vec<_> = (0..10u16)
        .map(|n| numbered(format!("fleet/{n}"), n, false))
        .collect();
    publish_acked(&mut publisher, &first).await;
    for n in 0..10u16 {
        let p = parse_publish(&radar.expect().await);
        assert_eq!(p.payload, n.to_be_bytes());
    }
    drop(radar);
    // Published once the broker has seen the connection end: sent into the closed connection
    // before that, some would be in flight too (and come again with DUP).
    common::child::wait_line(&logs, "client disconnected");
    let queued: Vec<_> = (10..30u16)
        .map(|n| numbered(format!("fleet/{n}"), n, false))
        .collect();
    publish_acked(&mut publisher, &queued).await;

    // One retained topic overwritten with 1 KB payloads, 1,500 at a time: each compaction
    // copies the live state above from where the one before it wrote it.
    let churn: Vec<_> = (0..1500)
        .map(|_| ("churn/one".to_string(), vec![7u8; 1000], true))
        .collect();
    for _ in 0..3 {
        publish_acked(&mut publisher, &churn).await;
        common::child::wait_line(&logs, "persistence log compacted");
    }
    kill_9(child);

    let (child, _logs, addr) = start_broker_with(&state, "never", "info", SMALL_LOG);
    assert_eq!(
        retained_under_site(addr).await,
        sorted_retained(&gates),
        "every retained message, with its payload"
    );

    // [MQTT-3.2.2-2] the session is there; [MQTT-4.4.0-1] the 10 in flight come again first,
    // with DUP, then the 20 queued, in order.
    let (mut radar, present) = Raw::handshake(addr, "radar", false).await;
    assert!(present, "the persistent session survived");
    let resumed = radar.drain_acking().await;
    let numbers: Vec<u16> = resumed
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    assert_eq!(numbers, (0..30).collect::<Vec<u16>>());
    assert!(resumed[..10].iter().all(|p| p.dup), "re-sent with DUP");
    assert!(
        resumed[10..].iter().all(|p| !p.dup),
        "sent for the first time"
    );
    kill_9(child);
}

/// The compaction's snapshot is written on a thread of its own while the writer appends to the
/// segment after it, and the older segments go only once the snapshot is in place: a `kill -9`
/// right after a compaction starts (so while its snapshot is being written) loses nothing.
/// Five rounds: churn until a compaction starts, kill, start again and check every retained
/// message acknowledged before.
#[tokio::test]
async fn kill_9_while_a_compaction_writes_its_snapshot_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // 40,000 retained messages of 250 bytes: a live state past 8 MiB, compacted on a thread
    // of its own (src/persistence/compaction.rs), its snapshot written over some milliseconds
    // while the writer lists the retained messages for it in ten slices between commits.
    let gates: Vec<_> = (0..40_000u16)
        .map(|n| {
            let mut payload = n.to_be_bytes().to_vec();
            payload.resize(250, 7);
            (format!("site/{}/{n}/gate", n / 5000), payload, true)
        })
        .collect();
    let churn: Vec<_> = (0..500)
        .map(|_| ("churn/one".to_string(), vec![7u8; 1000], true))
        .collect();
    let log = "info,switchboard::persistence::compaction=debug";
    for round in 0..5 {
        let (child, logs, addr) = start_broker_with(&state, "never", log, SMALL_LOG);
        let (mut publisher, _) = Raw::handshake(addr, "site", true).await;
        if round == 0 {
            publish_acked(&mut publisher, &gates).await;
        }
        // Churn until a compaction starts, then kill at once.
        let started = loop {
            publish_acked(&mut publisher, &churn).await;
            if let Ok(line) = logs.try_recv() {
                if line.contains("persistence log compaction started") {
                    break line;
                }
                continue;
            }
        };
        kill_9(child);
        assert!(started.contains("queued="), "{started}");

        let (child, _logs, addr) = start_broker_with(&state, "never", "info", SMALL_LOG);
        let groups: Vec<String> = (0..8).map(|k| format!("site/{k}/#")).collect();
        let got = retained_under(addr, &groups).await;
        let want = sorted_retained(&gates);
        assert!(
            got == want,
            "round {round}: {} of {} retained messages came back",
            got.len(),
            want.len()
        );
        kill_9(child);
    }
}

/// Deleting the segments a compaction superseded holds no commit: with every `unlink` held for
/// 2 s under strace, a publisher overwriting one retained message (so that the log is compacted
/// and its first segment superseded) has each PUBACK well within that, through the compaction
/// and until the first segment is gone. On the writer's thread a 67 MB segment's deletion took
/// 22 ms here, and every acknowledgement waited for it.
#[tokio::test]
async fn deleting_a_compacted_segment_holds_no_acknowledgement() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, _logs, addr, _http) = start_broker_and_http(&state, "never", "info", SMALL_LOG, 0);
    let first_segment = state.join("0000000000000001.log");
    assert!(first_segment.exists(), "the log starts in segment 1");
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    let strace = inject(broker.0.id(), "unlink", "delay_enter=2000000");
    let mut slowest = Duration::ZERO;
    let mut pid = 0u16;
    while first_segment.exists() {
        pid = pid % 65_000 + 1;
        let sent = Instant::now();
        let frame = packets::publish("gate/1AB/state", &[7u8; 1000], 1, pid, true, false);
        publisher.send(&frame).await;
        let ack = publisher
            .recv_within(Duration::from_secs(30))
            .await
            .expect("PUBACK, not a closed connection");
        assert_eq!((ack.packet_type(), ack.pid()), (4, pid), "{ack:?}");
        slowest = slowest.max(sent.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a PUBACK waited {slowest:?} while each unlink took 2 s"
    );
    stop_tracing(strace);
    kill_9(broker);
}

#[tokio::test]
async fn the_room_of_messages_held_for_a_session_gone_is_given_back_after_a_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let more = format!("{SMALL_LOG}\n[sessions]\nmax_queued_messages = 30000");
    let (child, logs, addr) = start_broker_with(&state, "never", "info", &more);

    // 20,000 messages held for a device that is away.
    let (mut device, _) = Raw::handshake(addr, "away", false).await;
    device.subscribe(1, &[("held/#", 1)], &[1]).await;
    drop(device);
    common::child::wait_line(&logs, "client disconnected");
    let (mut publisher, _) = Raw::handshake(addr, "app", true).await;
    let held: Vec<_> = (0..20_000u32)
        .map(|n| (format!("held/{}", n % 100), n.to_be_bytes().to_vec(), false))
        .collect();
    publish_acked(&mut publisher, &held).await;

    // The device comes back with a clean session: the 20,000 are dropped with its session
    // [MQTT-3.1.2-6]. The writer's live state kept their room until a compaction drops them.
    let (device, present) = Raw::handshake(addr, "away", true).await;
    assert!(!present, "a clean session starts empty");
    drop(device);
    let churn: Vec<_> = (0..1500)
        .map(|_| ("churn/one".to_string(), vec![7u8; 1000], true))
        .collect();
    publish_acked(&mut publisher, &churn).await;
    let line = common::child::wait_line(&logs, "after queued messages went");
    let room = common::child::log_number(&line, "room_bytes");
    // A map entry (its id, its session's slot, where its frames are) and an id in the order
    // for each message, at least.
    assert!(
        room >= 20_000 * 40,
        "room given back: {room} bytes ({line})"
    );
    kill_9(child);
}
