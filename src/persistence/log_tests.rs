//! Unit tests of `log.rs`: torn tails, and a compaction's deletions cut short.

use super::*;

/// Segment `id` of `dir` holding its format record, `more` frames, then a record cut short.
fn segment(dir: &Path, id: u64, more: &[Record], torn: bool) {
    let mut bytes = Record::LogFormat(LOG_FORMAT).to_frame();
    for record in more {
        record.write_frame(&mut bytes);
    }
    if torn {
        let cut = Record::RetainClear("gate/1AB/state".into()).to_frame();
        bytes.extend_from_slice(&cut[..cut.len() - 3]);
    }
    fs::write(segment_path(dir, id), bytes).expect("write");
}

#[test]
fn a_crash_between_two_deletions_of_a_compaction_leaves_a_log_that_reads() {
    // Segments 1-3 superseded by the snapshot 4; the broker dies after deleting one of
    // them. Deleting the oldest first left 2, 3 and 4: the oldest neither the first nor a
    // snapshot, which start-up refuses as segments gone missing.
    let gate = || Record::RetainClear("gate/3EF/state".into());
    let dir = tempfile::tempdir().expect("tempdir");
    for id in 1..=3 {
        segment(dir.path(), id, &[gate()], false);
    }
    segment(dir.path(), 4, &[Record::Snapshot, gate()], false);
    let superseded = (1..=3).map(|id| segment_path(dir.path(), id)).collect();
    let mut deleted = 0;
    super::super::segment_deleter::delete_newest_first(superseded, |old| {
        if deleted == 1 {
            return Err(std::io::Error::other("the broker died here"));
        }
        deleted += 1;
        fs::remove_file(old)
    });
    assert!(
        scan(dir.path(), false).is_ok(),
        "{:?}",
        scan(dir.path(), false).err()
    );
}

#[test]
fn a_torn_tail_is_damage_but_where_a_compaction_superseded_it_unsynced() {
    let gate = || Record::RetainClear("gate/2CD/state".into());
    // Before a gap: a compaction had started segment 3; its snapshot (2) was not in place.
    let dir = tempfile::tempdir().expect("tempdir");
    segment(dir.path(), 1, &[gate()], true);
    segment(dir.path(), 3, &[gate()], false);
    assert!(
        scan(dir.path(), false).is_ok(),
        "torn before a compaction's gap"
    );
    // Before the snapshot that supersedes it.
    let dir = tempfile::tempdir().expect("tempdir");
    segment(dir.path(), 1, &[gate()], true);
    segment(dir.path(), 2, &[Record::Snapshot, gate()], false);
    assert!(scan(dir.path(), false).is_ok(), "torn before its snapshot");
    // Before a segment that simply follows it: damage.
    let dir = tempfile::tempdir().expect("tempdir");
    segment(dir.path(), 1, &[gate()], true);
    segment(dir.path(), 2, &[gate()], false);
    assert!(matches!(
        scan(dir.path(), false),
        Err(PersistenceError::Damaged { .. })
    ));
}
