//! Damaged persistence logs (issue 12): truncation at any offset, flipped bytes, empty files,
//! zeros written ahead, records of a newer build, missing segments and a bad snapshot each give
//! a clean start, a repaired start (`persistence.repair`) or a clear error that names the file
//! and the offset, never a panic.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use switchboard::config::PersistenceConfig;
use switchboard::message::{Message, QoS};
use switchboard::persistence::{self, PersistenceError, Record};

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
