//! A disk that misbehaves under the persistence writer, made so by strace's fault injection.
//!
//! Slower than the network (issue 12: "a full writer queue pushes back like a full Registry
//! mailbox: Sessions stop reading"): every `fdatasync` is delayed by 2 s while a publisher
//! floods QoS 1 messages for an offline persistent session faster than the writer can commit
//! them. The publisher's Session stops reading once the writer is far behind, so TCP holds the
//! publisher back; every message is still acknowledged once durable, and after a SIGKILL and a
//! restart the subscriber gets them all.
//!
//! Full for a while: the log's writes fail with ENOSPC. Nothing is acknowledged until the writer
//! could write it (the log says why, naming the file), then everything is, and all of it is
//! there after a SIGKILL and a restart.
//!
//! Slow to sync, with `fsync = "always"`: a message every persistent subscriber of which is
//! connected and acknowledges it is acknowledged to its publisher without waiting for the sync
//! (there is nothing left for a power cut to lose), in order; one that an offline session keeps
//! still waits for it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::child::{listening_addr, log_number, spawn_command, wait_line, BIN};
use common::durable::{kill_9, start_broker_and_http, start_broker_with, write_config};
use common::faults::{assert_ready, inject, publish_until_acked, sample, stop_tracing};
use common::{browser_available, packets, run_browser_script, strace_available, Raw};

/// Messages published, and the payload of each: 48 MiB in all, three times what the writer may
/// have pending before Sessions stop reading (16 MiB).
const MESSAGES: u16 = 6144;
const PAYLOAD: usize = 8192;

/// Room for all of them in the offline session's queue.
const QUEUE_ROOM: &str =
    "[sessions]\nmax_queued_messages = 100000\nmax_queued_bytes = 1073741824\n";

/// The broker process under strace, killed when dropped; strace then exits once the broker has
/// (its lock on the directory released), having nothing left to trace.
struct SlowDiskBroker {
    strace: std::process::Child,
    broker_pid: i32,
}

impl Drop for SlowDiskBroker {
    fn drop(&mut self) {
        // SAFETY: a signal to a process this test started; a stale pid only fails the call.
        unsafe {
            libc::kill(self.broker_pid, libc::SIGKILL);
        }
        let _ = self.strace.wait();
    }
}

/// The pid of strace's one child, the broker (`/proc/<pid>/task/<pid>/children`).
fn traced_child(strace_pid: u32) -> i32 {
    let path = format!("/proc/{strace_pid}/task/{strace_pid}/children");
    let children = std::fs::read_to_string(&path).expect("strace's children");
    children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("strace has no child in {path}: {children:?}"))
}

#[tokio::test]
async fn a_slow_disk_holds_the_publisher_back_and_loses_nothing() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = write_config(&state, "always", QUEUE_ROOM);
    let mut command = Command::new("strace");
    command
        .args(["-f", "--seccomp-bpf", "-qq", "-o", "/dev/null"])
        .args([
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_enter=2000000",
        ])
        .arg(BIN)
        .args(["--port", "0", "--http-port", "0", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info,switchboard::session::hand_over=debug")
        .stdin(Stdio::null());
    let (strace, logs) = spawn_command(command);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    let broker = SlowDiskBroker {
        broker_pid: traced_child(strace.id()),
        strace,
    };

    Raw::leave_subscribed(addr, "gate-offline", "gate/+/events").await;
    let (raw, _) = Raw::handshake(addr, "flooding-app", true).await;
    let (mut read, mut write) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        let payload = vec![0x5A; PAYLOAD];
        for n in 0..MESSAGES {
            let topic = format!("gate/{}/events", n % 8);
            let frame = packets::publish(&topic, &payload, 1, n + 1, false, false);
            write.write_all(&frame).await.expect("the broker reads on");
        }
        write
    });
    // Every PUBACK comes, each once the message is on disk; the writer commits a group per
    // 2 s sync, so this takes seconds, not the usual wait. The writer falls 16 MiB behind only
    // if the broker reads that much during one sync: with 300 ms, on some machines the broker
    // under strace read about 10 MiB per sync; with 1 s, one CI run in 8 never saw the pause
    // (a debug build on a busy machine may read less than 16 MiB in a second).
    let mut acked = vec![false; usize::from(MESSAGES)];
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    let mut count = 0;
    while count < usize::from(MESSAGES) {
        let n = tokio::time::timeout(Duration::from_secs(60), read.read(&mut chunk))
            .await
            .expect("PUBACKs keep coming")
            .expect("read");
        assert!(n > 0, "the broker closed the publisher's connection");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 4 {
            assert_eq!(buf[0], 0x40, "PUBACK");
            let pid = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            assert!(!acked[pid - 1], "PUBACK {pid} twice");
            acked[pid - 1] = true;
            count += 1;
            buf.drain(..4);
        }
    }
    let _write = writer.await.expect("writer");
    // The publisher's Session stopped reading while the writer was far behind.
    wait_line(&logs, "persistence writer behind: reading paused");

    // Nothing acknowledged was lost: killed (SIGKILL) and started again on the same directory
    // without strace, the broker delivers every message to the subscriber, in order.
    drop(broker);
    let (_again, _logs, addr) = start_broker_with(&state, "always", "info", QUEUE_ROOM);
    let (mut subscriber, present) = Raw::handshake(addr, "gate-offline", false).await;
    assert!(present, "the session was kept");
    for n in 0..MESSAGES {
        let frame = subscriber.expect().await;
        let publish = packets::parse_publish(&frame);
        assert_eq!(
            publish.topic,
            format!("gate/{}/events", n % 8),
            "message {n}"
        );
        assert_eq!(publish.payload.len(), PAYLOAD);
        subscriber.send(&packets::ack(0x40, publish.pid)).await;
    }
}

#[tokio::test]
async fn a_full_disk_delays_the_acknowledgements_and_loses_nothing() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, logs, addr, http) = start_broker_and_http(&state, "always", "info", "", 0);
    let (mut publisher, _) = Raw::handshake(addr, "gate-1AB", true).await;
    // The disk is full for the writer's next three writes (each retried a second later).
    let pid = broker.0.id();
    let strace = inject(pid, "pwrite64", "error=ENOSPC:when=1..3");
    for n in 1..=100u16 {
        let topic = format!("gate/{n}/state");
        let frame = packets::publish(&topic, b"closed", 1, n, true, false);
        publisher.send(&frame).await;
    }
    let error = wait_line(&logs, "cannot write the persistence log");
    assert!(error.contains("No space left on device"), "{error}");
    assert!(error.contains(".log"), "names the file: {error}");
    // Until a write succeeds (the third retry, 3 s on), `/metrics` says writes are failing,
    // and the broker is not ready: it acknowledges nothing that waits for the disk.
    assert_eq!(
        sample(http, "switchboard_persistence_writes_failing").await,
        "1"
    );
    assert_ready(http, 503, "cannot be written").await;
    // Acknowledged once written, each once, none lost.
    let mut acked = [false; 100];
    for _ in 0..100 {
        let frame = tokio::time::timeout(Duration::from_secs(30), publisher.recv())
            .await
            .expect("PUBACKs once the disk has room")
            .expect("PUBACK");
        assert_eq!(frame.packet_type(), 4, "PUBACK");
        let pid = usize::from(frame.pid());
        assert!(!acked[pid - 1], "PUBACK {pid} twice");
        acked[pid - 1] = true;
    }
    stop_tracing(strace);
    // `/metrics` counts the three failed writes.
    assert_eq!(
        sample(http, "switchboard_persistence_write_failures_total").await,
        "3",
        "one per failed write"
    );
    assert_eq!(
        sample(http, "switchboard_persistence_writes_failing").await,
        "0",
        "a write has succeeded since"
    );
    assert_ready(http, 200, "ready").await;
    kill_9(broker);

    let (_again, _logs, addr) = start_broker_with(&state, "always", "info", "");
    let (mut subscriber, _) = Raw::handshake(addr, "gate-watch", true).await;
    subscriber.subscribe(1, &[("gate/+/state", 1)], &[1]).await;
    let mut retained = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let publish = packets::parse_publish(&subscriber.expect().await);
        assert_eq!(publish.payload, b"closed");
        subscriber.send(&packets::ack(0x40, publish.pid)).await;
        retained.insert(publish.topic);
    }
    assert_eq!(retained.len(), 100, "every retained message, once");
}

/// How long strace holds each `fdatasync` of the settlement tests.
const SYNC_DELAY: Duration = Duration::from_secs(3);

/// Holds each `fdatasync` of the running broker `pid` for [`SYNC_DELAY`] until the strace it
/// returns is stopped ([`stop_tracing`]).
fn hold_every_sync(pid: u32) -> std::process::Child {
    inject(
        pid,
        "fdatasync",
        &format!("delay_enter={}", SYNC_DELAY.as_micros()),
    )
}

#[tokio::test]
async fn with_fsync_always_a_message_its_subscribers_acknowledged_is_acknowledged_before_the_sync()
{
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, logs, addr) = start_broker_with(&state, "always", "info", "");
    // A persistent subscriber that stays connected and acknowledges what it gets, and one that
    // is offline: what it matches is kept on disk for it.
    Raw::leave_subscribed(addr, "gate-offline", "gate/2/state").await;
    let (mut online, _) = Raw::handshake(addr, "gate-online", false).await;
    online.subscribe(1, &[("gate/+/state", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    let strace = hold_every_sync(broker.0.id());

    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 17 {
            let publish = packets::parse_publish(&online.expect().await);
            online.send(&packets::ack(0x40, publish.pid)).await;
            got.push((publish.topic, publish.payload));
        }
        (online, got)
    });
    // Each message goes to the connected subscriber alone: its PUBACK settles the message, and
    // the publisher's PUBACK goes out then, not after the sync (each one 3 s here, so 16 of
    // them would take 48 s and the first alone 3 s).
    let started = std::time::Instant::now();
    for n in 1..=16u8 {
        publish_until_acked(&mut publisher, "gate/1/state", &[n], u16::from(n)).await;
    }
    let settled_in = started.elapsed();
    assert!(
        settled_in < SYNC_DELAY,
        "16 PUBACKs took {settled_in:?}: they waited for a sync of {SYNC_DELAY:?}"
    );
    // One that the offline session keeps too waits for the sync that makes it durable (the
    // connected subscriber's PUBACK does not settle it).
    let started = std::time::Instant::now();
    publish_until_acked(&mut publisher, "gate/2/state", b"kept", 17).await;
    let synced_in = started.elapsed();
    assert!(
        synced_in >= SYNC_DELAY,
        "the PUBACK came after {synced_in:?}, before a sync of {SYNC_DELAY:?} could end"
    );
    // A sync that long is warned of, with how long it took.
    let slow = wait_line(&logs, "persistence log sync was slow");
    let millis = log_number(&slow, "millis");
    assert!(
        millis >= SYNC_DELAY.as_millis() as u64 - 100,
        "a sync held {SYNC_DELAY:?} took {millis} ms: {slow}"
    );
    let (_online, got) = reader.await.expect("reader");
    let expected: Vec<(String, Vec<u8>)> = (1..=16u8)
        .map(|n| ("gate/1/state".to_string(), vec![n]))
        .chain([("gate/2/state".to_string(), b"kept".to_vec())])
        .collect();
    assert_eq!(got, expected, "in order, each once");
    stop_tracing(strace);
    kill_9(broker);

    // What waited for the sync is there after a SIGKILL and a restart.
    let (_again, _logs, addr) = start_broker_with(&state, "always", "info", "");
    let (mut offline, present) = Raw::handshake(addr, "gate-offline", false).await;
    assert!(present, "the offline session was kept");
    let kept = offline.drain_acking().await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0].topic.as_str(), kept[0].payload.as_slice()),
        ("gate/2/state", &b"kept"[..])
    );
}

#[tokio::test]
async fn with_fsync_always_a_publisher_ahead_of_its_pubacks_has_them_settled_before_the_sync() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, _logs, addr) = start_broker_with(&state, "always", "info", "");
    let (mut collector, _) = Raw::handshake(addr, "radar-collector", false).await;
    collector.subscribe(1, &[("radar/+/speed", 1)], &[1]).await;
    let (mut radar, _) = Raw::handshake(addr, "radar-7", true).await;
    let strace = hold_every_sync(broker.0.id());

    // Each message is published once the one before it has reached the collector, which holds
    // its PUBACKs back until it has all three: each is routed on its own while the radar's
    // PUBACKs of those before it are still held.
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    for n in 1..=3u8 {
        radar
            .send(&packets::publish(
                "radar/7/speed",
                &[n],
                1,
                u16::from(n),
                false,
                false,
            ))
            .await;
        let publish = packets::parse_publish(&collector.expect().await);
        assert_eq!(publish.payload, [n], "in order");
        received.push(publish.pid);
    }
    for pid in received {
        collector.send(&packets::ack(0x40, pid)).await;
    }
    // The collector has them all: the radar's PUBACKs go out without waiting for a sync (3 s
    // each here), in the order of its PUBLISH packets [MQTT-4.6.0-2].
    for pid in 1..=3u16 {
        let frame = radar
            .recv_within(Duration::from_secs(30))
            .await
            .expect("PUBACK, not a closed connection");
        assert_eq!((frame.packet_type(), frame.pid()), (4, pid), "{frame:?}");
    }
    let settled_in = started.elapsed();
    assert!(
        settled_in < SYNC_DELAY,
        "3 PUBACKs took {settled_in:?}: they waited for a sync of {SYNC_DELAY:?}"
    );
    stop_tracing(strace);
    kill_9(broker);
}

#[tokio::test]
async fn with_fsync_always_a_failed_sync_stops_the_acknowledgements_until_a_restart() {
    if !strace_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (broker, logs, addr, http) = start_broker_and_http(&state, "always", "info", "", 0);
    Raw::leave_subscribed(addr, "gate-offline", "gate/+/state").await;
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    publish_until_acked(&mut publisher, "gate/1/state", b"before", 1).await;
    // The next `fdatasync` fails with EIO. A later one would succeed, and say nothing about
    // what the failed one could not write: nothing is acknowledged that waits for the disk.
    let strace = inject(broker.0.id(), "fdatasync", "error=EIO:when=1");
    publisher
        .send(&packets::publish(
            "gate/1/state",
            b"unsure",
            1,
            2,
            false,
            false,
        ))
        .await;
    let error = wait_line(&logs, "cannot sync the persistence log");
    assert!(error.contains("until the broker restarts"), "{error}");
    publisher
        .send(&packets::publish(
            "gate/1/state",
            b"after",
            1,
            3,
            false,
            false,
        ))
        .await;
    let nothing = tokio::time::timeout(Duration::from_secs(3), publisher.recv()).await;
    assert!(
        nothing.is_err(),
        "a PUBACK (or a close) came for what a failed sync may not have written: {nothing:?}"
    );
    assert_ready(http, 503, "until the broker restarts").await;
    assert_eq!(
        sample(http, "switchboard_persistence_durability_lost").await,
        "1"
    );
    // The one failed sync is counted; it is not tried again.
    assert_eq!(
        sample(http, "switchboard_persistence_sync_failures_total").await,
        "1"
    );
    // The dashboard says so too.
    if browser_available() {
        let url = format!("http://{http}/");
        let shown = tokio::task::spawn_blocking(move || {
            run_browser_script(
                "drive.js",
                [url.as_str(), "--persistence", "durability-lost"],
            )
        })
        .await
        .expect("drive.js");
        assert!(
            shown["persistence"]
                .as_str()
                .is_some_and(|text| text.contains("until the broker restarts")),
            "{shown}"
        );
    }
    stop_tracing(strace);
    kill_9(broker);

    // Started again, the broker reads back what is on disk and acknowledges again.
    let (_again, _logs, addr) = start_broker_with(&state, "always", "info", "");
    let (mut offline, present) = Raw::handshake(addr, "gate-offline", false).await;
    assert!(present, "the offline session was kept");
    let kept = offline.drain_payloads().await;
    assert_eq!(
        kept.first().map(Vec::as_slice),
        Some(&b"before"[..]),
        "{kept:?}"
    );
    let (mut publisher, _) = Raw::handshake(addr, "gate-app", true).await;
    publish_until_acked(&mut publisher, "gate/1/state", b"again", 4).await;
}
