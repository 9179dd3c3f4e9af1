//! `fsync = "interval"` with a disk that syncs slowly or not at all, made so by strace's fault
//! injection under a running broker.
//!
//! Slow to sync: the periodic sync runs on a thread of its own, beside the writer, so a
//! message is acknowledged once written even while an `fdatasync` is held for seconds, and
//! nothing acknowledged is lost to a SIGKILL.
//!
//! Failing to sync: the writer writes nothing more until a retried sync succeeds, so nothing
//! more is acknowledged, and the broker says it is not ready meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::child::wait_line;
use common::durable::{kill_9, start_broker_and_http, start_broker_with};
use common::faults::{assert_ready, inject, publish_until_acked, sample, stop_tracing};
use common::{packets, strace_available, Raw};

/// How long strace holds each `fdatasync` of the slow-sync test.
const SYNC_DELAY: Duration = Duration::from_secs(2);

/// Room in the offline session's queue for every message the slow-sync test publishes.
const QUEUE_ROOM: &str =
    "[sessions]\nmax_queued_messages = 100000\nmax_queued_bytes = 1073741824\n";

/// The seconds the broker whose HTTP server is at `http` has spent in `fdatasync`s so far.
async fn seconds_syncing(http: std::net::SocketAddr) -> f64 {
    let value = sample(http, "switchboard_persistence_sync_duration_seconds_sum").await;
    value
        .parse()
        .unwrap_or_else(|_| panic!("a number: {value}"))
}

#[tokio::test]
async fn with_fsync_interval_a_slow_sync_holds_no_acknowledgement() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // Synced every 200 ms (`write_config`).
    let (broker, _logs, addr, http) =
        start_broker_and_http(&state, "interval", "info", QUEUE_ROOM, 0);
    Raw::leave_subscribed(addr, "gate-offline", "gate/+/events").await;
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    let before = seconds_syncing(http).await;
    let strace = inject(
        broker.0.id(),
        "fdatasync",
        &format!("delay_enter={}", SYNC_DELAY.as_micros()),
    );
    // A device's pattern, each message published once the last is acknowledged, until a sync
    // held for 2 s has been made: each PUBACK waits for its message to be written, never for
    // the sync under way.
    let mut slowest = Duration::ZERO;
    let mut published = 0u16;
    loop {
        published += 1;
        let sent = Instant::now();
        let topic = format!("gate/{}/events", published % 8);
        publish_until_acked(&mut publisher, &topic, &published.to_be_bytes(), published).await;
        slowest = slowest.max(sent.elapsed());
        if published.is_multiple_of(16) && seconds_syncing(http).await - before >= 1.9 {
            break;
        }
        assert!(published < u16::MAX, "no sync was made while publishing");
    }
    assert!(
        slowest < SYNC_DELAY / 2,
        "a PUBACK waited {slowest:?} while each sync took {SYNC_DELAY:?}"
    );
    stop_tracing(strace);

    // Every message acknowledged is on disk for the offline session: killed with SIGKILL and
    // started again, the broker hands them all to it, in order.
    kill_9(broker);
    let (_again, _logs, addr) = start_broker_with(&state, "interval", "info", QUEUE_ROOM);
    let (mut offline, present) = Raw::handshake(addr, "gate-offline", false).await;
    assert!(present, "the offline session was kept");
    let kept = offline.drain_payloads().await;
    let expected: Vec<Vec<u8>> = (1..=published).map(|n| n.to_be_bytes().to_vec()).collect();
    assert_eq!(kept, expected);
}

#[tokio::test]
async fn with_fsync_interval_a_failing_sync_holds_the_acknowledgements_and_readiness_until_one_succeeds(
) {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, logs, addr, http) = start_broker_and_http(&state, "interval", "info", "", 0);
    Raw::leave_subscribed(addr, "gate-offline", "gate/+/state").await;
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    // The writer's next two `fdatasync`s fail with EIO; it tries again each second.
    let strace = inject(broker.0.id(), "fdatasync", "error=EIO:when=1..2");
    // Acknowledged once written (`interval`), then synced within the second: that sync fails.
    publish_until_acked(&mut publisher, "gate/1/state", b"written", 1).await;
    let error = wait_line(&logs, "cannot sync the persistence log; trying again");
    assert!(error.contains("Input/output error"), "{error}");
    // The writer retries the sync before it writes anything more: this message waits.
    publisher
        .send(&packets::publish(
            "gate/1/state",
            b"held",
            1,
            2,
            false,
            false,
        ))
        .await;
    assert_ready(http, 503, "cannot be synced").await;
    assert_eq!(
        sample(http, "switchboard_persistence_syncs_failing").await,
        "1"
    );
    // The third try succeeds; then the held message is written and acknowledged.
    let frame = publisher
        .recv_within(Duration::from_secs(30))
        .await
        .expect("PUBACK once a sync succeeds");
    assert_eq!((frame.packet_type(), frame.pid()), (4, 2), "{frame:?}");
    stop_tracing(strace);
    assert_eq!(
        sample(http, "switchboard_persistence_syncs_failing").await,
        "0",
        "a sync has succeeded since"
    );
    assert_eq!(
        sample(http, "switchboard_persistence_sync_failures_total").await,
        "2",
        "one per failed sync"
    );
    assert_ready(http, 200, "ready").await;
    // Neither message was lost, nor the durability: no restart is needed.
    assert_eq!(
        sample(http, "switchboard_persistence_durability_lost").await,
        "0"
    );
    kill_9(broker);
    let (_again, _logs, addr) = start_broker_with(&state, "interval", "info", "");
    let (mut offline, present) = Raw::handshake(addr, "gate-offline", false).await;
    assert!(present, "the offline session was kept");
    let kept = offline.drain_payloads().await;
    assert_eq!(kept, [b"written".to_vec(), b"held".to_vec()]);
}
