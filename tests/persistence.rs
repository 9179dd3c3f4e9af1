//! Durable state (`[persistence]`): retained messages survive `kill -9` of the broker process
//! under each `fsync` policy, one broker per directory, the log stays bounded by live state,
//! and persistent sessions survive. Damaged logs are in `persistence_damaged.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::durable::{
    kill_9, start_broker, start_broker_and_http, start_broker_with, stream_then_kill, terminate,
};
use common::packets;
use common::Raw;
use switchboard::config::PersistenceConfig;
use switchboard::message::{Message, QoS};
use switchboard::persistence::{self, Record, SessionUser};

/// The allocator of the `switchboard` binary (`src/main.rs`), so that the recovery measured here
/// is the broker's: glibc's malloc spends about a quarter of a start-up of a million retained
/// messages consolidating and freeing chunks.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Every retained message under `filter`, by topic, as a new subscriber gets them.
async fn retained_under(addr: std::net::SocketAddr, filter: &str) -> Vec<(String, Vec<u8>)> {
    let (mut sub, _) = Raw::handshake(addr, "reader", true).await;
    sub.subscribe(1, &[(filter, 1)], &[1]).await;
    let mut got: Vec<(String, Vec<u8>)> = sub
        .drain_acking()
        .await
        .into_iter()
        .map(|p| {
            assert!(
                p.retain,
                "[MQTT-3.3.1-8] RETAIN 1 for a message sent for a subscription"
            );
            (p.topic, p.payload)
        })
        .collect();
    got.sort();
    got
}

async fn acknowledged_retained_messages_survive_kill_9(fsync: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, fsync);
    // A few set, replaced and cleared first, each acknowledged before the next.
    let (mut publisher, _) = Raw::handshake(addr, "setup", true).await;
    for (pid, topic, payload) in [
        (1, "site/a", &b"one"[..]),
        (2, "site/b", b"two"),
        (3, "site/a", b"three"),
        (4, "site/b", b""),
    ] {
        publisher
            .send(&packets::publish(topic, payload, 1, pid, true, false))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
    }
    drop(publisher);
    let acked = stream_then_kill(addr, child, 1000, |n| format!("gate/{n}/state"), true).await;
    assert!(acked.len() >= 1000, "{} PUBACKs", acked.len());

    let (child, _logs, addr) = start_broker(&state, fsync);
    assert_eq!(
        retained_under(addr, "site/#").await,
        vec![("site/a".to_string(), b"three".to_vec())],
        "replaced and cleared as published"
    );
    let gates = retained_under(addr, "gate/#").await;
    let topics: std::collections::HashSet<String> = gates.into_iter().map(|(t, _)| t).collect();
    for pid in &acked {
        let topic = format!("gate/{}/state", pid - 1);
        assert!(
            topics.contains(&topic),
            "{topic} was acknowledged and is gone"
        );
    }
    kill_9(child);
}

#[tokio::test]
async fn acknowledged_retained_messages_survive_kill_9_with_fsync_always() {
    acknowledged_retained_messages_survive_kill_9("always").await;
}

#[tokio::test]
async fn acknowledged_retained_messages_survive_kill_9_with_fsync_interval() {
    acknowledged_retained_messages_survive_kill_9("interval").await;
}

#[tokio::test]
async fn acknowledged_retained_messages_survive_kill_9_with_fsync_never() {
    acknowledged_retained_messages_survive_kill_9("never").await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (first, _logs, _) = start_broker(&state, "interval");
    let config = state.with_extension("toml").display().to_string();
    let second = std::process::Command::new(common::child::BIN)
        .args(["--port", "0", "--http-port", "0", "--config", &config])
        .output()
        .expect("runs");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another broker"),
        "stderr: {stderr}"
    );
    kill_9(first);
}

#[test]
fn a_directory_that_is_a_file_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state");
    std::fs::write(&file, b"not a directory").expect("write");
    // The file itself, and a path that would have to be made under it: each refused, naming
    // the file.
    for configured in [file.clone(), file.join("sessions")] {
        let stderr = refused_start(dir.path(), &configured);
        assert!(
            stderr.contains(&format!(
                "persistence.dir: {} is not a directory",
                file.display()
            )),
            "stderr: {stderr}"
        );
    }
}

/// Starts the broker with `persistence.dir = configured` (its configuration file written in
/// `scratch`), checks that it refuses to start without a panic, and returns what it printed.
fn refused_start(scratch: &std::path::Path, configured: &std::path::Path) -> String {
    let config = scratch.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[persistence]\ndir = {:?}\n",
            configured.display().to_string()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(common::child::BIN)
        .args(["--port", "0", "--http-port", "0", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    stderr
}

#[test]
fn a_directory_that_cannot_be_made_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // procfs takes no new directories, even from root: the create fails as a missing parent
    // or a denied permission would.
    let stderr = refused_start(
        dir.path(),
        std::path::Path::new("/proc/switchboard-test/state"),
    );
    assert!(
        stderr.contains("persistence.dir: cannot use /proc/switchboard-test/state: ")
            && stderr.contains("the broker's user must be able to create it and write in it"),
        "stderr: {stderr}"
    );
}

/// Publishes `rounds` x 1,000 retained QoS 1 messages of 1,000 bytes to one topic, each round
/// waiting for its PUBACKs: a megabyte of log per round, one message of live state.
async fn overwrite_one_topic(publisher: &mut Raw, rounds: u16) {
    let payload = vec![7u8; 1000];
    for round in 0..rounds {
        let frames: Vec<u8> = (0..1000u16)
            .flat_map(|n| packets::publish("churn/one", &payload, 1, n + 1, true, false))
            .collect();
        publisher.send(&frames).await;
        for _ in 0..1000 {
            let ack = publisher.expect().await;
            assert_eq!(ack.byte1, 0x40, "PUBACK, round {round}");
        }
    }
}

#[test]
fn the_log_stays_bounded_by_live_state_under_churn() {
    // One topic overwritten many times: the log is compacted, not grown without bound.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config();
    config.persistence.dir = Some(dir.path().to_path_buf());
    config.persistence.fsync = switchboard::config::FsyncPolicy::Never;
    config.persistence.compact_min_bytes = 4 * 1024 * 1024;
    let broker = switchboard::BackgroundBroker::start(config).expect("starts");
    let addr = broker.local_addr();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let (mut publisher, _) = Raw::handshake(addr, "churn", true).await;
            overwrite_one_topic(&mut publisher, 20).await;
        });
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    // 20 MB were written; live state is one message.
    assert!(on_disk < 10 * 1024 * 1024, "{on_disk} bytes on disk");
    // `/metrics` counts it so: the bytes appended, the compactions, a log of a few MiB.
    let stats = broker
        .metrics()
        .persistence
        .snapshot()
        .expect("persistence on");
    assert!(
        stats.appended_bytes >= 20 * 1000 * 1000,
        "{} bytes appended",
        stats.appended_bytes
    );
    assert!(stats.compactions >= 2, "{} compactions", stats.compactions);
    assert!(stats.log_bytes < 10 * 1024 * 1024, "{stats:?}");
    assert!(
        stats.live_bytes < 64 * 1024,
        "one retained message: {stats:?}"
    );
    assert_eq!((stats.write_failures, stats.sync_failures), (0, 0));
}

#[tokio::test]
async fn what_was_read_back_at_start_survives_the_next_compaction() {
    // The writer rebuilds its live state from the records read back at start (on its own
    // thread); a compaction writes only that state, so anything missing from it would be lost.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let small = "compact_min_bytes = 1048576";
    let (child, _logs, addr) = start_broker_with(&state, "never", "info", small);
    let (mut publisher, _) = Raw::handshake(addr, "gate-1AB", true).await;
    publisher
        .send(&packets::publish(
            "gate/1AB/state",
            b"closed",
            1,
            1,
            true,
            false,
        ))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
    kill_9(child);

    let (child, logs, addr) = start_broker_with(&state, "never", "info", small);
    let (mut publisher, _) = Raw::handshake(addr, "churn", true).await;
    overwrite_one_topic(&mut publisher, 4).await;
    common::child::wait_line(&logs, "persistence log compacted");
    kill_9(child);

    let (child, _logs, addr) = start_broker(&state, "never");
    let retained = retained_under(addr, "gate/#").await;
    kill_9(child);
    assert_eq!(
        retained,
        vec![("gate/1AB/state".to_string(), b"closed".to_vec())],
        "the retained message read back at the second start was kept by its compaction"
    );
}

/// Publishes a retained QoS 1 marker and waits for its PUBACK. Changes are written in the order
/// they were made, so once the marker is acknowledged everything the broker did before it is
/// written too (SUBACK itself does not wait for the disk).
async fn written_up_to_here(addr: std::net::SocketAddr) {
    let (mut marker, _) = Raw::handshake(addr, "marker", true).await;
    marker
        .send(&packets::publish("marker", b"m", 1, 1, true, false))
        .await;
    assert_eq!(marker.expect().await.byte1, 0x40, "PUBACK");
}

#[tokio::test]
async fn persistent_sessions_and_their_subscriptions_survive_kill_9() {
    use common::v5::{connect5, disconnect5, prop, Props};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, "always");
    // radar-1 is offline at the kill, gate-2 online; clean-3 has a clean session.
    let (mut radar, _) = Raw::handshake(addr, "radar-1", false).await;
    radar
        .subscribe(
            1,
            &[("detrd/status/request/radar-1", 1), ("cfg/#", 0)],
            &[1, 0],
        )
        .await;
    radar.send(&[0xE0, 0x00]).await; // DISCONNECT
    radar.expect_closed().await;
    let (mut gate, _) = Raw::handshake(addr, "gate-2", false).await;
    gate.subscribe(1, &[("gate/2/cmd", 2)], &[2]).await;
    let (mut clean, _) = Raw::handshake(addr, "clean-3", true).await;
    clean.subscribe(1, &[("gate/2/cmd", 1)], &[1]).await;
    // MQTT 5, Session Expiry Interval 1 s: it expires while the broker is down.
    let props = Props::new().u32(prop::SESSION_EXPIRY, 1);
    let (mut short, _) = Raw::connect5(addr, &connect5("short", true, 60, &props, None)).await;
    short.subscribe5(1, &Props::new(), &[("short/#", 1)]).await;
    short.send(&disconnect5(0, &Props::new())).await;
    short.expect_closed().await;
    written_up_to_here(addr).await;
    kill_9(child);
    drop((gate, clean));
    // Wall-clock time passes while the broker is down: more than short's 1 s expiry.
    std::thread::sleep(Duration::from_millis(1100));

    let (child, _logs, addr, http) = start_broker_and_http(&state, "always", "info", "", 0);
    // [MQTT-3.2.2-2] the sessions are present, and their subscriptions work without a new
    // SUBSCRIBE, with the QoS granted before.
    let (mut radar, present) = Raw::handshake(addr, "radar-1", false).await;
    assert!(present, "radar-1's session was kept");
    let (mut gate, present) = Raw::handshake(addr, "gate-2", false).await;
    assert!(present, "gate-2's session was kept");
    let (mut clean, present) = Raw::handshake(addr, "clean-3", false).await;
    assert!(!present, "a clean session is not kept");
    let (_, ack) = Raw::connect5(addr, &connect5("short", false, 60, &Props::new(), None)).await;
    assert!(
        !ack.session_present,
        "[MQTT-3.1.2-23] expired while the broker was down"
    );
    let metrics = common::http::get(http, "/metrics", None).await;
    assert!(
        metrics
            .body
            .lines()
            .any(|line| line == "switchboard_sessions_expired_total 1"),
        "found expired at start, counted: {}",
        metrics.body
    );
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.send(&packets::publish(
        "detrd/status/request/radar-1",
        b"status?",
        1,
        1,
        false,
        false,
    ))
    .await;
    app.send(&packets::publish("cfg/rate", b"5", 0, 0, false, false))
        .await;
    app.send(&packets::publish("gate/2/cmd", b"open", 2, 2, false, false))
        .await;
    app.sync().await;
    let got: Vec<(String, u8)> = radar
        .drain_acking()
        .await
        .into_iter()
        .map(|p| (p.topic, p.qos))
        .collect();
    assert_eq!(
        got,
        vec![
            ("detrd/status/request/radar-1".to_string(), 1),
            ("cfg/rate".to_string(), 0)
        ]
    );
    let frame = gate.expect().await;
    let p = common::packets::parse_publish(&frame);
    assert_eq!((p.topic.as_str(), p.qos), ("gate/2/cmd", 2));
    assert!(
        clean.sync().await.is_empty(),
        "clean-3 has no subscription any more"
    );
    kill_9(child);
}

#[tokio::test]
async fn an_embedded_broker_dropped_lets_the_next_one_open_its_directory() {
    // A `BackgroundBroker` dropped waits for its writer to end: the lock is free at once for the
    // next one in this process, and what was acknowledged is there.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    for round in 0..3u8 {
        let broker = common::broker_with(|c| c.persistence.dir = Some(state.clone()));
        let addr = broker.local_addr();
        let kept: Vec<String> = retained_under(addr, "embedded/#")
            .await
            .into_iter()
            .map(|(topic, _)| topic)
            .collect();
        let expected: Vec<String> = (0..round).map(|n| format!("embedded/{n}")).collect();
        assert_eq!(kept, expected, "round {round}");
        let (mut publisher, _) = Raw::handshake(addr, "embedder", true).await;
        let topic = format!("embedded/{round}");
        publisher
            .send(&packets::publish(&topic, b"x", 1, 1, true, false))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
        drop((publisher, broker));
    }
}

/// `sessions.max_offline_queued_bytes = 1024` for [`start_broker_with`].
const OFFLINE_BOUND: &str = "\n[sessions]\nmax_offline_queued_bytes = 1024\n";

/// Subscribes `away` to `t` at QoS 1 with a persistent session and disconnects it (waiting for
/// the broker's log line: from there on its messages are held offline), then publishes five
/// QoS 1 messages of 1 + 300 bytes to `t` (the first payload byte numbers them) and waits for
/// their PUBACKs, each of which waits for what its message kept on disk.
async fn away_then_five(addr: std::net::SocketAddr, logs: &std::sync::mpsc::Receiver<String>) {
    let (mut sub, _) = Raw::handshake(addr, "away", false).await;
    sub.subscribe(1, &[("t", 1)], &[1]).await;
    sub.send(&[0xE0, 0x00]).await; // DISCONNECT
    sub.expect_closed().await;
    common::child::wait_line(logs, "client disconnected");
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    for n in 1..=5u8 {
        let mut payload = vec![0u8; 300];
        payload[0] = n;
        publisher
            .send(&packets::publish(
                "t",
                &payload,
                1,
                u16::from(n),
                false,
                false,
            ))
            .await;
    }
    publisher.sync_acks().await;
}

/// The first payload byte of each message `away` gets as it resumes.
async fn away_gets(addr: std::net::SocketAddr) -> Vec<u8> {
    let (mut sub, present) = Raw::handshake(addr, "away", false).await;
    assert!(present);
    sub.drain_acking()
        .await
        .iter()
        .map(|p| p.payload[0])
        .collect()
}

#[tokio::test]
async fn a_message_dropped_at_the_offline_bound_stays_dropped_after_a_restart() {
    // The worker that matched it for a persistent session kept it on disk: its drop at
    // `sessions.max_offline_queued_bytes` is recorded, so a restart does not bring it back.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_with(&state, "interval", "info", OFFLINE_BOUND);
    away_then_five(addr, &logs).await;
    terminate(child);
    let (child, _logs, addr) = start_broker_with(&state, "interval", "info", OFFLINE_BOUND);
    assert_eq!(
        away_gets(addr).await,
        vec![1, 2, 3],
        "three fit; the two dropped are not back"
    );
    kill_9(child);
}

#[tokio::test]
async fn offline_sessions_read_back_over_a_new_bound_are_kept_and_counted() {
    // Queued without a bound, read back with one they exceed: all kept, warned of, and the
    // next message for an offline client is dropped.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_with(&state, "interval", "info", "");
    away_then_five(addr, &logs).await;
    terminate(child);
    let (child, logs, addr) = start_broker_with(&state, "interval", "info", OFFLINE_BOUND);
    let (mut publisher, _) = Raw::handshake(addr, "pub", true).await;
    publisher
        .send(&packets::publish("t", &[6; 300], 1, 6, false, false))
        .await;
    publisher.sync_acks().await;
    // Dropped for the bound, against what was read back.
    let warning = common::child::wait_line(&logs, "max_offline_queued_bytes reached");
    assert_eq!(common::child::log_number(&warning, "held"), 5 * 301);
    assert_eq!(common::child::log_number(&warning, "dropped"), 1);
    assert_eq!(away_gets(addr).await, vec![1, 2, 3, 4, 5]);
    kill_9(child);
}

/// Recovery time at scale, measured by hand (`cargo test --release --test persistence -- --ignored
/// --nocapture`): a log of 1,000,000 retained messages (64-byte payloads) and 100,000 sessions
/// with two subscriptions each (and a user name each, as with an ACL), read back by
/// `persistence::open`. With `RECOVERY_COLD_CACHE=1`
/// (as root) the page cache is dropped before each read, so the log comes from the disk.
#[test]
#[ignore = "a measurement, not a check: run by hand"]
fn recovery_of_a_million_retained_messages_and_100k_sessions() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(dir.path().join("0000000000000001.log")).expect("segment"),
    );
    for i in 0..1_000_000u32 {
        let message = Message::new(
            format!("site/{}/gate/{i}/state", i % 100),
            Bytes::from(vec![b'x'; 64]),
            QoS::AtLeastOnce,
            true,
        );
        file.write_all(&Record::RetainSet(std::sync::Arc::new(message)).to_frame())
            .expect("write");
    }
    for i in 0..100_000u32 {
        let client_id = format!("device-{i}");
        file.write_all(
            &Record::SessionSet {
                client_id: client_id.clone(),
                expiry: u32::MAX,
                offline_since: 0,
                user: Some(SessionUser::Named(format!("user-{i}"))),
            }
            .to_frame(),
        )
        .expect("write");
        for filter in [format!("detrd/status/request/{i}"), "cfg/#".to_string()] {
            file.write_all(
                &Record::Subscribe {
                    client_id: client_id.clone(),
                    filter,
                    options: switchboard::SubscriptionOptions::qos(QoS::AtLeastOnce),
                }
                .to_frame(),
            )
            .expect("write");
        }
    }
    drop(file);
    let config = PersistenceConfig {
        dir: Some(dir.path().to_path_buf()),
        ..PersistenceConfig::default()
    };
    let log_bytes = std::fs::metadata(dir.path().join("0000000000000001.log"))
        .expect("segment")
        .len();
    eprintln!("log of {log_bytes} bytes");
    drop_page_cache_if_asked();
    let started = std::time::Instant::now();
    let recovered = persistence::open(&config)
        .expect("opens")
        .expect("configured");
    let elapsed = started.elapsed();
    assert_eq!(recovered.retained.len(), 1_000_000);
    assert_eq!(recovered.sessions.len(), 100_000);
    eprintln!("log read back (persistence::open) in {elapsed:?}");
    drop(recovered);
    // The whole start: the log read back, then the Registry's tables built from it.
    let mut broker_config = common::test_config();
    broker_config.persistence = config;
    drop_page_cache_if_asked();
    let started = std::time::Instant::now();
    let broker = switchboard::BackgroundBroker::start(broker_config).expect("starts");
    let stats = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(broker.registry().send(switchboard::registry::GetStats))
        .expect("stats");
    eprintln!(
        "broker started with {} retained messages, {} sessions, {} subscriptions in {:?}",
        stats.retained,
        stats.sessions_offline,
        stats.subscriptions,
        started.elapsed()
    );
}

/// With `RECOVERY_COLD_CACHE=1`, writes dirty pages back and drops the page cache (needs root), so
/// that a recovery measurement reads from the disk rather than from memory.
fn drop_page_cache_if_asked() {
    if std::env::var_os("RECOVERY_COLD_CACHE").is_none() {
        return;
    }
    let synced = std::process::Command::new("sync").status();
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3");
    eprintln!("page cache dropped: sync {synced:?}, drop_caches {dropped:?}");
}
