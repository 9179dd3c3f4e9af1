//! Unit tests of `writer.rs` and `compaction.rs`: no compaction deletes the segments a backup
//! is copying out of, and where a compaction runs.
//!
//! The writer's loop is driven by hand here (append a commit, track it, ask for a compaction),
//! and a backup thread's copying is stood for by its count, so that a test can hold the
//! "copy" open as long as it likes: a real copy of a few megabytes ends before a test could
//! catch a compaction under it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::PersistenceConfig;
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::persistence::compaction::{
    COMPACTION_SLICE, COMPACT_ON_A_THREAD_FROM, COMPACT_ON_A_THREAD_FROM_RECORDS,
    ON_A_THREAD_AFTER_A_SLOW_ONE, SLOW_IN_PLACE,
};
use crate::persistence::{open, restore, StoreShared};

/// The writer of a fresh log in `dir`, compacting from 64 KiB.
fn writer_in(dir: &std::path::Path) -> Writer {
    let config = PersistenceConfig {
        dir: Some(dir.to_path_buf()),
        fsync: FsyncPolicy::Never,
        compact_min_bytes: 64 * 1024,
        ..Default::default()
    };
    let mut recovered = open(&config).expect("open").expect("a directory");
    recovered.writer.take().expect("a writer")
}

/// Appends `records` as one commit and tracks them, as the writer's loop does.
fn commit(writer: &mut Writer, records: impl IntoIterator<Item = Record>) {
    let mut frames = Vec::new();
    for record in records {
        record.write_frame(&mut frames);
    }
    let at = writer.log.end();
    writer.log.append(&frames).expect("append");
    writer.track_all(at, &frames, &mut Vec::new());
}

fn retained(topic: &str, payload: &Bytes) -> Record {
    Record::RetainSet(Arc::new(Message::new(
        topic,
        payload.clone(),
        QoS::AtLeastOnce,
        true,
    )))
}

/// The log's segment files in `dir`, sorted.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// Waits until a compaction's thread has written its snapshot and woken the writer, and takes
/// the wake-up, as the writer's loop does.
fn wait_for_the_snapshot(shared: &StoreShared) {
    let mut pending = shared.lock_pending();
    while !pending.helper_done {
        let (p, timeout) = shared
            .wake_writer
            .wait_timeout(pending, Duration::from_secs(60))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pending = p;
        assert!(!timeout.timed_out(), "the snapshot was not written in 60 s");
    }
    pending.helper_done = false;
}

/// The retained messages a start reads back from `dir`: (topic, payload).
fn read_back(dir: &std::path::Path) -> Vec<(String, Bytes)> {
    read_back_all(dir).0
}

/// A session read back: its client id, its filters, how many messages it has queued or in
/// flight.
type SessionBack = (String, Vec<String>, usize);

/// The retained messages a start reads back from `dir`, (topic, payload), and its sessions.
fn read_back_all(dir: &std::path::Path) -> (Vec<(String, Bytes)>, Vec<SessionBack>) {
    let config = PersistenceConfig {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let recovered = open(&config).expect("reopen").expect("a directory");
    let mut all: Vec<_> = recovered
        .retained
        .iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    all.sort();
    let sessions = recovered
        .sessions
        .iter()
        .map(|s| {
            let filters = s.subscriptions.iter().map(|(f, _)| f.clone()).collect();
            (
                s.client_id.clone(),
                filters,
                s.state.inflight.len() + s.state.queue.len(),
            )
        })
        .collect();
    (all, sessions)
}

#[test]
fn a_small_compaction_waits_for_a_backup_copying_and_runs_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // One gate's state set 2,000 times: one live record, a log far past twice it.
    let payload = Bytes::from(vec![b'c'; 100]);
    for _ in 0..2_000 {
        commit(&mut writer, [retained("gate/1AB/state", &payload)]);
    }
    let before = (writer.log.total_bytes(), segments(dir.path()));
    assert!(before.0 > 64 * 1024, "past the floor: {}", before.0);

    writer.backups_copying.store(1, Ordering::Release);
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_none());
    assert_eq!(
        (writer.log.total_bytes(), segments(dir.path())),
        before,
        "no compaction while a backup copies frames out of the segments"
    );

    writer.backups_copying.store(0, Ordering::Release);
    writer.maybe_compact(&shared);
    assert!(
        writer.log.total_bytes() < before.0 / 10,
        "compacted once the copy is done: {} bytes of {}",
        writer.log.total_bytes(),
        before.0
    );
    drop(writer);
    assert_eq!(read_back(dir.path()), [("gate/1AB/state".into(), payload)]);
}

#[test]
fn a_compaction_on_its_thread_deletes_nothing_until_a_backup_has_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // 2,200 topics of 4 KiB (past the 8 MiB a compaction's own thread takes), set three
    // times: the log is past twice the live state.
    let topics: Vec<String> = (0..2_200).map(|n| format!("gate/{n}/state")).collect();
    for round in 0..3u8 {
        let payload = Bytes::from(vec![b'a' + round; 4096]);
        commit(&mut writer, topics.iter().map(|t| retained(t, &payload)));
    }
    assert!(writer.live.bytes() >= COMPACT_ON_A_THREAD_FROM);
    let older = segments(dir.path());
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.is_some(),
        "a compaction on its own thread"
    );

    // A backup starts copying while the snapshot is written; the snapshot is done.
    writer.backups_copying.store(1, Ordering::Release);
    wait_for_the_snapshot(&shared);
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.is_some(),
        "not finished while a backup copies"
    );
    for name in &older {
        assert!(
            dir.path().join(name).exists(),
            "{name} deleted under a backup copying from it"
        );
    }

    writer.backups_copying.store(0, Ordering::Release);
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.is_none(),
        "finished once the copy is done"
    );
    writer.log.wait_deleted();
    let after = segments(dir.path());
    assert!(
        older.iter().all(|name| !after.contains(name)),
        "the superseded segments go: {older:?} -> {after:?}"
    );
    drop(writer);
    let last = Bytes::from(vec![b'c'; 4096]);
    let mut expected: Vec<(String, Bytes)> =
        topics.into_iter().map(|t| (t, last.clone())).collect();
    expected.sort();
    assert_eq!(read_back(dir.path()), expected);
}

#[test]
fn a_live_state_of_many_small_records_is_compacted_on_a_thread_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // 5,000 gates' states of 8 bytes, set twice (a snapshot would copy them frame by frame):
    // a live state far below 8 MiB, but of more records than the writer copies itself.
    let topics = gates_set_three_times(&mut writer, 5_000, 8);
    assert!(writer.live.bytes() < COMPACT_ON_A_THREAD_FROM);
    assert!(writer.live.records() >= COMPACT_ON_A_THREAD_FROM_RECORDS);
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.is_some(),
        "compacted beside the writer, not on it"
    );
    // Once the writer has listed the retained messages for the thread (two slices) and the
    // thread has written the snapshot, the writer notes where they are now (two slices) and
    // ends the compaction.
    assert_eq!(list_all(&mut writer, &shared), 1, "the second slice");
    wait_for_the_snapshot(&shared);
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_some(), "the first slice noted");
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_none(), "finished");
    drop(writer);
    let last = Bytes::from(vec![b'c'; 8]);
    let mut expected: Vec<(String, Bytes)> =
        topics.into_iter().map(|t| (t, last.clone())).collect();
    expected.sort();
    assert_eq!(read_back(dir.path()), expected);
}

#[test]
fn after_a_slow_compaction_on_the_writer_the_next_ones_run_beside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // One gate's state set 2,000 times: one live record, a log far past twice it.
    let churn = |writer: &mut Writer, salt: u32| {
        let mut payload = Bytes::new();
        for round in 0..2_000u32 {
            payload = Bytes::from((round ^ salt).to_be_bytes().repeat(25));
            commit(writer, [retained("gate/1AB/state", &payload)]);
        }
        payload
    };
    // Nothing slow seen yet: the writer compacts the small live state itself, at once.
    churn(&mut writer, 0);
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.is_none(),
        "compacted on the writer's thread"
    );
    assert!(writer.log.total_bytes() < 64 * 1024, "compacted");

    // One took 5 ms or more (its syncs): the next ones go to a thread of their own, while the
    // writer goes on committing; after them it tries one itself again.
    writer.note_in_place_took(SLOW_IN_PLACE);
    for n in 0..ON_A_THREAD_AFTER_A_SLOW_ONE {
        let payload = churn(&mut writer, n + 1);
        writer.maybe_compact(&shared);
        assert!(
            writer.compaction.is_some(),
            "compaction {n} beside the writer"
        );
        // Committed while the snapshot is written, into the segment after it.
        commit(&mut writer, [retained("gate/1AB/state", &payload)]);
        wait_for_the_snapshot(&shared);
        writer.maybe_compact(&shared);
        assert!(writer.compaction.is_none(), "compaction {n} finished");
    }
    let last = churn(&mut writer, u32::MAX);
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_none(), "on the writer's thread again");
    drop(writer);
    assert_eq!(read_back(dir.path()), [("gate/1AB/state".into(), last)]);
}

/// `count` gates' states of `size` bytes, each set three times (payloads of `a`, `b`, then
/// `c`): their topics.
fn gates_set_three_times(writer: &mut Writer, count: usize, size: usize) -> Vec<String> {
    let topics: Vec<String> = (0..count).map(|n| format!("gate/{n}/state")).collect();
    for round in 0..3u8 {
        let payload = Bytes::from(vec![b'a' + round; size]);
        commit(writer, topics.iter().map(|t| retained(t, &payload)));
    }
    topics
}

/// Ends the compaction under way: lists it, waits for its snapshot, notes it.
fn finish_the_compaction(writer: &mut Writer, shared: &Arc<StoreShared>) {
    list_all(writer, shared);
    wait_for_the_snapshot(shared);
    while writer.compaction.is_some() {
        writer.maybe_compact(shared);
    }
}

/// Asks `writer` for a backup and waits for its thread's answer.
fn back_up(
    writer: &mut Writer,
    shared: &Arc<StoreShared>,
) -> Result<BackupFile, crate::persistence::PersistenceError> {
    let (request, answer) = crate::persistence::backup::BackupRequest::new();
    writer.start_backup(request, shared);
    answer.blocking_recv().expect("the backup thread answers")
}

#[test]
fn a_large_live_state_is_backed_up_as_its_log_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // 5,000 gates' states (more records than a backup lists at once), set three times, then
    // compacted: a snapshot segment, and the segment after it.
    let topics = gates_set_three_times(&mut writer, 5_000, 16);
    let set = |writer: &mut Writer, topics: &[String], round: u8| {
        let payload = Bytes::from(vec![round; 16]);
        commit(writer, topics.iter().map(|t| retained(t, &payload)));
    };
    writer.maybe_compact(&shared);
    finish_the_compaction(&mut writer, &shared);
    // After it: half the gates set again, the last 100 cleared, then every gate set twice
    // more, which starts the next compaction (its snapshot not in place yet: the segments
    // now are the snapshot, the one after it up to its zeros, and the one appended to).
    set(&mut writer, &topics[..2_500], b'd');
    commit(
        &mut writer,
        topics[4_900..]
            .iter()
            .map(|t| Record::RetainClear(t.clone())),
    );
    set(&mut writer, &topics[..4_900], b'e');
    set(&mut writer, &topics[..1_000], b'f');
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_some(), "a compaction under way");
    let live = writer.live.records();

    let backup = back_up(&mut writer, &shared).expect("a backup");
    let restored_dir = tempfile::tempdir().expect("tempdir");
    let restored = restore(&backup.path, &restored_dir.path().join("state")).expect("restored");
    drop(backup);
    assert!(
        restored.records > live,
        "the log's records copied, not the live ones listed: {} of {live} live",
        restored.records
    );
    finish_the_compaction(&mut writer, &shared);
    drop(writer);

    let mut expected: Vec<(String, Bytes)> = topics[..4_900]
        .iter()
        .enumerate()
        .map(|(n, t)| {
            (
                t.clone(),
                Bytes::from(vec![if n < 1_000 { b'f' } else { b'e' }; 16]),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(read_back(&restored_dir.path().join("state")), expected);
    assert_eq!(read_back(dir.path()), expected);
}

#[test]
fn a_damaged_record_fails_a_large_backup_with_its_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    gates_set_three_times(&mut writer, 5_000, 16);
    writer.maybe_compact(&shared);
    finish_the_compaction(&mut writer, &shared);
    writer.log.wait_deleted();
    // A byte of the snapshot segment flipped, past its first records.
    let snapshot = dir.path().join(&segments(dir.path())[0]);
    let mut bytes = std::fs::read(&snapshot).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&snapshot, &bytes).expect("write");

    match back_up(&mut writer, &shared) {
        Err(crate::persistence::PersistenceError::Damaged { path, offset, .. }) => {
            assert_eq!(path, snapshot);
            assert!(offset <= at as u64, "at {offset}, the flipped byte at {at}");
        }
        other => panic!("a damaged segment named: {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("backup-"))
        .collect();
    assert!(left.is_empty(), "no half-written backup left: {left:?}");
}

#[test]
fn a_log_copy_stops_at_the_zeros_written_ahead_however_few() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = Bytes::from_static(b"closed");
    let format = Record::LogFormat(crate::persistence::LOG_FORMAT).to_frame();
    let mut first = format.clone();
    retained("gate/1/state", &payload).write_frame(&mut first);
    let records = first.len() as u64;
    // Three zeros ahead: fewer than a record's header.
    first.extend_from_slice(&[0, 0, 0]);
    let mut second = format.clone();
    retained("gate/2/state", &payload).write_frame(&mut second);
    let second_end = second.len() as u64;
    // Records past the end given are not copied (the writer appends there meanwhile).
    retained("gate/3/state", &payload).write_frame(&mut second);
    second.resize(second.len() + 4096, 0);
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    std::fs::write(&a, &first).expect("write");
    std::fs::write(&b, &second).expect("write");
    let copy = dir.path().join("copy.log");
    let bytes = crate::persistence::backup::copy_log(&[(a, None), (b, Some(second_end))], &copy)
        .expect("copied");
    let copied = std::fs::read(&copy).expect("read");
    assert_eq!(bytes, copied.len() as u64);
    let mut expected = format.clone();
    expected.extend_from_slice(&first[format.len()..records as usize]);
    expected.extend_from_slice(&second[format.len()..second_end as usize]);
    expected.extend_from_slice(&format);
    assert_eq!(
        copied, expected,
        "the records of both, between a format and an end mark"
    );
}

/// Takes compaction steps until the listing of the frames for its thread is done; returns how
/// many it took.
fn list_all(writer: &mut Writer, shared: &Arc<StoreShared>) -> usize {
    let mut steps = 0;
    while writer.compaction.as_ref().is_some_and(|c| c.listing()) {
        writer.maybe_compact(shared);
        steps += 1;
    }
    steps
}

#[path = "compaction_slices_tests.rs"]
mod slices;

#[test]
fn a_drain_buffer_gives_back_a_spikes_room_once_ordinary_drains_follow() {
    // A spike's drain: 8 MiB, the room stays while that drain is in it.
    let mut frames = vec![0u8; 8 << 20];
    give_back_drain_room(&mut frames);
    assert!(
        frames.capacity() >= 8 << 20,
        "the drain that needed it keeps it"
    );

    // An ordinary drain through the same buffer next time: the room goes, to what is kept.
    frames.clear();
    frames.extend_from_slice(&[1u8; 4096]);
    give_back_drain_room(&mut frames);
    assert!(
        frames.capacity() <= KEPT_DRAIN_ROOM,
        "room kept: {}",
        frames.capacity()
    );

    // A busy drain within what is kept is left alone: no churn on steady traffic.
    let mut busy = Vec::with_capacity(KEPT_DRAIN_ROOM);
    busy.extend_from_slice(&[2u8; 1024]);
    let before = busy.as_ptr();
    give_back_drain_room(&mut busy);
    assert_eq!(busy.as_ptr(), before);
    assert_eq!(busy.len(), 1024);
}
