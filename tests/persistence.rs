//! Durable state (`[persistence]`): retained messages survive `kill -9` of the broker process
//! under each `fsync` policy, one broker per directory, and damaged logs give a clean start, a
//! repaired start or a clear error, never a panic.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::durable::{kill_9, start_broker, start_broker_with, stream_then_kill};
use common::packets;
use common::Raw;
use proptest::prelude::*;
use switchboard::config::PersistenceConfig;
use switchboard::message::{Message, QoS};
use switchboard::persistence::{self, PersistenceError, Record, SessionUser};

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
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!("[persistence]\ndir = {:?}\n", file.display().to_string()),
    )
    .expect("config");
    let out = std::process::Command::new(common::child::BIN)
        .args(["--port", "0", "--http-port", "0", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "persistence.dir {} is not a directory",
            file.display()
        )),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// A log of `n` retained messages, framed as the writer frames them.
fn log_of(n: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..n {
        let message = Message::new(
            format!("t/{i}"),
            Bytes::from(vec![i as u8; 40]),
            QoS::AtLeastOnce,
            true,
        );
        bytes.extend(Record::RetainSet(std::sync::Arc::new(message)).to_frame());
    }
    bytes
}

fn open_with(dir: &Path, segment: &[u8], repair: bool) -> Result<usize, PersistenceError> {
    open_segments(dir, &[(1, segment)], repair)
}

/// Opens a directory of the segments given (id, bytes): the retained messages read back.
fn open_segments(
    dir: &Path,
    segments: &[(u64, &[u8])],
    repair: bool,
) -> Result<usize, PersistenceError> {
    std::fs::create_dir_all(dir).expect("dir");
    for (id, bytes) in segments {
        std::fs::write(dir.join(format!("{id:016}.log")), bytes).expect("segment");
    }
    let config = PersistenceConfig {
        dir: Some(dir.to_path_buf()),
        repair,
        ..PersistenceConfig::default()
    };
    persistence::open(&config).map(|r| r.map_or(0, |r| r.retained.len()))
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = log_of(10);
    let cut = log.len() - 7;
    assert_eq!(
        open_with(dir.path(), &log[..cut], false).expect("starts"),
        9
    );
    let len = std::fs::metadata(dir.path().join("0000000000000001.log"))
        .expect("segment")
        .len();
    assert!(len < cut as u64, "the torn record is gone from the file");
}

#[test]
fn records_followed_by_the_zeros_written_ahead_read_back_whole() {
    // The writer extends the segment with zeros ahead of its records; the last record here
    // ends in a zero byte itself (no properties), and still reads back.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = log_of(10);
    let records = log.len() as u64;
    log.extend(vec![0u8; 1 << 20]);
    assert_eq!(open_with(dir.path(), &log, false).expect("starts"), 10);
    let len = std::fs::metadata(dir.path().join("0000000000000001.log"))
        .expect("segment")
        .len();
    assert!(
        len > records,
        "the space written ahead is kept, not cut as damage"
    );
}

#[test]
fn a_record_torn_in_the_zeros_written_ahead_is_a_torn_tail() {
    // A crash mid-write leaves the start of the last record and zeros where the rest of it
    // was not written yet.
    let dir = tempfile::tempdir().expect("tempdir");
    let full = log_of(10);
    let last_start = log_of(9).len();
    let mut log = full[..last_start + 20].to_vec();
    log.extend(vec![0u8; 1 << 20]);
    assert_eq!(open_with(dir.path(), &log, false).expect("starts"), 9);
}

#[test]
fn damage_before_the_tail_is_an_error_naming_file_and_offset_unless_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = log_of(10);
    let third = log.len() * 3 / 10 + 20;
    log[third] ^= 0x55;
    match open_with(dir.path(), &log, false) {
        Err(PersistenceError::Damaged { path, offset, .. }) => {
            assert!(path.ends_with("0000000000000001.log"));
            assert!(offset <= third as u64);
        }
        other => panic!("expected a damage error, got {other:?}"),
    }
    // The same damaged log in a directory of its own: the first attempt's lock is released
    // when it returns, but a child process that another test forks in that instant holds a
    // copy of its descriptor (and so the lock) until it execs, and once made this start fail
    // with `Locked` on CI.
    let again = tempfile::tempdir().expect("tempdir");
    let recovered = open_with(again.path(), &log, true).expect("repair starts");
    assert!((2..10).contains(&recovered), "{recovered}");
}

/// A frame around `body` with a checksum that holds, as a build writes its records.
fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(crc32fast::hash(body).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

#[test]
fn a_new_log_starts_with_its_format_and_a_log_without_one_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = PersistenceConfig {
        dir: Some(dir.path().to_path_buf()),
        ..PersistenceConfig::default()
    };
    let recovered = persistence::open(&config)
        .expect("opens")
        .expect("configured");
    drop(recovered);
    let segment = std::fs::read(dir.path().join("0000000000000001.log")).expect("segment");
    let format = Record::LogFormat(persistence::LOG_FORMAT).to_frame();
    assert_eq!(
        segment.get(..format.len()),
        Some(&format[..]),
        "the first record of a segment this build starts is its format"
    );
    // A log of an earlier build, with no format record, reads back as before.
    let older = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        open_with(older.path(), &log_of(10), false).expect("starts"),
        10
    );
}

#[test]
fn a_log_started_by_a_newer_build_is_refused_and_left_as_it_is() {
    let newer = persistence::LOG_FORMAT + 1;
    let mut log = Record::LogFormat(newer).to_frame();
    log.extend(log_of(10));
    // A record of a kind this build does not know, last: the newer build's.
    log.extend(frame_of(&[200, 1, 2, 3]));
    for repair in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = open_with(dir.path(), &log, repair).expect_err("a newer log is refused");
        let PersistenceError::NewerFormat { found, reads, .. } = &e else {
            panic!("expected the newer format refused (repair {repair}), got {e:?}");
        };
        assert_eq!((*found, *reads), (newer, persistence::LOG_FORMAT));
        let message = e.to_string();
        assert!(
            message.contains("newer Switchboard") && message.contains("0000000000000001.log"),
            "{message}"
        );
        let on_disk = std::fs::read(dir.path().join("0000000000000001.log")).expect("segment");
        assert_eq!(
            on_disk, log,
            "nothing of a newer log is cut (repair {repair})"
        );
    }
}

#[test]
fn a_whole_record_of_an_unknown_kind_is_not_cut_as_a_torn_tail() {
    // Its checksum holds, so no crash cut it short: dropping it as a torn tail would lose
    // what a newer build recorded. Only `repair` cuts it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = log_of(9);
    let at = log.len() as u64;
    log.extend(frame_of(&[200, 1, 2, 3]));
    match open_with(dir.path(), &log, false) {
        Err(PersistenceError::Damaged { offset, what, .. }) => {
            assert_eq!(offset, at);
            assert!(what.contains("newer Switchboard"), "{what}");
        }
        other => panic!("expected an error for the unknown record, got {other:?}"),
    }
    let on_disk = std::fs::read(dir.path().join("0000000000000001.log")).expect("segment");
    assert_eq!(on_disk, log, "the file is left as it was");
    let again = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        open_with(again.path(), &log, true).expect("repair starts"),
        9
    );
}

/// A compaction's segment as this build writes it: its format, the snapshot marker, then
/// `live` retained messages.
fn snapshot_segment(live: u16) -> Vec<u8> {
    let mut segment = Record::LogFormat(persistence::LOG_FORMAT).to_frame();
    segment.extend(Record::Snapshot.to_frame());
    segment.extend(log_of(live));
    segment
}

#[test]
fn a_missing_older_segment_is_harmless_and_missing_earlier_ones_are_an_error_unless_repair() {
    let first = log_of(5);
    let compacted = snapshot_segment(3);
    // What a crash between a compaction's rename and its deletions leaves: the snapshot
    // supersedes the older segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let both = [(1, &first[..]), (2, &compacted[..])];
    assert_eq!(open_segments(dir.path(), &both, false).expect("starts"), 3);
    // Without the older segment (deleted by the compaction, or lost): the same state.
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = [(2, &compacted[..])];
    assert_eq!(open_segments(dir.path(), &alone, false).expect("starts"), 3);
    // A later segment without a snapshot, alone: what came before it is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let orphan = log_of(4);
    match open_segments(dir.path(), &[(2, &orphan[..])], false) {
        Err(e @ PersistenceError::SegmentsMissing { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("0000000000000002.log") && message.contains("missing"),
                "{message}"
            );
        }
        other => panic!("expected the missing segments named, got {other:?}"),
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        open_segments(dir.path(), &[(2, &orphan[..])], true).expect("repair starts"),
        4
    );
}

#[test]
fn a_bad_snapshot_is_an_error_naming_its_segment_unless_repair() {
    let first = log_of(5);
    let mut compacted = snapshot_segment(3);
    let marker = Record::LogFormat(persistence::LOG_FORMAT).to_frame().len();
    // The snapshot marker's checksum no longer holds.
    compacted[marker + 5] ^= 0x40;
    let dir = tempfile::tempdir().expect("tempdir");
    match open_segments(dir.path(), &[(1, &first[..]), (2, &compacted[..])], false) {
        Err(PersistenceError::Damaged { path, offset, .. }) => {
            assert!(path.ends_with("0000000000000002.log"), "{path:?}");
            assert_eq!(offset, marker as u64);
        }
        other => panic!("expected the bad snapshot named, got {other:?}"),
    }
    // Repaired: the snapshot's segment is cut where it is bad; the older segment is what is
    // left.
    let dir = tempfile::tempdir().expect("tempdir");
    let repaired = open_segments(dir.path(), &[(1, &first[..]), (2, &compacted[..])], true);
    assert_eq!(repaired.expect("repair starts"), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Truncated, flipped or emptied, with or without zeros written ahead: a clean start, a
    /// repaired start, or a clear error.
    #[test]
    fn damaged_logs_never_panic(cut in 0usize..3000, flip in 0usize..3000, byte in 1u8..=255, repair: bool, zeros_ahead in 0usize..5000) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = log_of(30);
        if !log.is_empty() {
            let at = flip % log.len();
            log[at] ^= byte;
        }
        log.truncate(cut.min(log.len()));
        // The zeros the writer writes ahead of its records.
        log.extend(std::iter::repeat_n(0u8, zeros_ahead));
        match open_with(dir.path(), &log, repair) {
            Ok(n) => prop_assert!(n <= 30),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// A compacted log (an older segment and a snapshot's), with either segment missing, the
    /// snapshot's segment flipped or cut: a clean start, a repaired start, or a clear error.
    #[test]
    fn damaged_compacted_logs_never_panic(missing in 0u8..3, cut in 0usize..2000, flip in 0usize..2000, byte in 0u8..=255, repair: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = log_of(20);
        let mut compacted = snapshot_segment(15);
        let at = flip % compacted.len();
        compacted[at] ^= byte;
        compacted.truncate(cut.min(compacted.len()));
        let segments: Vec<(u64, &[u8])> = [(1, &first[..]), (2, &compacted[..])]
            .into_iter()
            .filter(|(id, _)| u64::from(missing) != *id)
            .collect();
        match open_segments(dir.path(), &segments, repair) {
            Ok(n) => prop_assert!(n <= 20),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
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

    let (child, _logs, addr) = start_broker(&state, "always");
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
