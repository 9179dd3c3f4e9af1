//! Unit tests of `live_state.rs`: what a snapshot holds, and in which order.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::persistence::live::{queued_key, session_key};
use crate::persistence::log::scan;
use crate::persistence::Record;

fn at(offset: u64, len: u32) -> FrameAt {
    FrameAt {
        segment: 1,
        offset,
        len,
    }
}

fn queued(client_id: &str, id: u64) -> Vec<u8> {
    let mut key = Vec::new();
    queued_key(&mut key, client_id.as_bytes(), id);
    key
}

fn session(client_id: &str) -> Vec<u8> {
    let mut key = Vec::new();
    session_key(&mut key, client_id.as_bytes());
    key
}

#[test]
fn queued_messages_count_until_done_or_their_session_goes() {
    let mut live = LiveState::default();
    live.track(LiveKind::Set, &session("a"), at(0, 10));
    live.track(LiveKind::Set, &session("b"), at(10, 10));
    live.track(LiveKind::QueuedSet, &queued("a", 1), at(20, 100));
    live.track(LiveKind::QueuedSet, &queued("b", 2), at(120, 100));
    live.track(LiveKind::QueuedAppend, &queued("a", 1), at(220, 5));
    live.track(LiveKind::QueuedAppend, &queued("a", 1), at(225, 5));
    live.track(LiveKind::QueuedAppend, &queued("b", 2), at(230, 5));
    assert_eq!(live.bytes(), 20 + 110 + 105);
    live.track(LiveKind::QueuedRemove, &queued("a", 1), at(235, 5));
    assert_eq!(live.bytes(), 20 + 105);
    // A record of a message nobody holds any more changes nothing.
    live.track(LiveKind::QueuedAppend, &queued("a", 1), at(240, 5));
    live.track(LiveKind::QueuedRemove, &queued("a", 9), at(245, 5));
    assert_eq!(live.bytes(), 20 + 105);
    live.track(LiveKind::RemovePrefix, &session("b"), at(250, 5));
    assert_eq!(live.bytes(), 10, "session b went with its queued message");
    // Its late records change nothing; a new session of the same id starts afresh.
    live.track(LiveKind::QueuedAppend, &queued("b", 2), at(255, 5));
    live.track(LiveKind::QueuedRemove, &queued("b", 2), at(260, 5));
    assert_eq!(live.bytes(), 10);
    live.track(LiveKind::Set, &session("b"), at(265, 10));
    live.track(LiveKind::QueuedSet, &queued("b", 3), at(275, 100));
    live.track(LiveKind::QueuedSet, &queued("a", 4), at(375, 100));
    assert_eq!(live.bytes(), 20 + 200);
    live.track(LiveKind::RemovePrefix, &session("a"), at(475, 5));
    assert_eq!(live.bytes(), 10 + 100);
}

/// Appends `records` to `log`, tracking each in `live`, as the writer does.
fn append(log: &mut Log, live: &mut LiveState, records: &[Record]) {
    for record in records {
        let frame = record.to_frame();
        let end = log.end();
        log.append(&frame).expect("append");
        let mut key = Vec::new();
        let kind = record.live_key(&mut key);
        live.track(
            kind,
            &key,
            FrameAt {
                len: frame.len() as u32,
                ..end
            },
        );
    }
}

/// What a record read back is, in short.
fn short(record: &Record) -> String {
    match record {
        Record::SessionSet { client_id, .. } => format!("session {client_id}"),
        Record::Subscribe {
            client_id, filter, ..
        } => format!("sub {client_id} {filter}"),
        Record::Queued { client_id, id, .. } => format!("queued {client_id} {id}"),
        Record::Sent { client_id, id, .. } => format!("sent {client_id} {id}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_snapshot_holds_sessions_first_and_none_of_the_queued_messages_of_a_session_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = scan(dir.path(), false).expect("scan").log;
    let mut live = LiveState::default();
    let delivery = Delivery::new(
        Arc::new(Message::new(
            "t",
            Bytes::from_static(b"m"),
            QoS::AtLeastOnce,
            false,
        )),
        QoS::AtLeastOnce,
        false,
    );
    let session_set = |client_id: &str| Record::SessionSet {
        client_id: client_id.into(),
        expiry: 60,
        offline_since: 0,
        user: None,
    };
    let queued = |client_id: &str, id| Record::queued(client_id.into(), id, &delivery);
    let sent = |client_id: &str, id| Record::Sent {
        client_id: client_id.into(),
        id,
        pid: 1,
    };
    append(
        &mut log,
        &mut live,
        &[
            session_set("b"),
            queued("b", 1),
            session_set("a"),
            queued("a", 2),
            sent("b", 1),
            queued("b", 3),
            Record::SessionGone("b".into()),
            queued("a", 4),
            session_set("b"),
            Record::Subscribe {
                client_id: "b".into(),
                filter: "f".into(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            },
            queued("b", 5),
            sent("a", 2),
            sent("b", 3),
        ],
    );
    let bytes = live.bytes();
    live.compact_into(&mut log).expect("compact");
    // A scan of a directory whose superseded segments are being deleted could list one that is
    // gone by the time it opens it (start-up never scans beside a running log).
    log.wait_deleted();
    let back = scan(dir.path(), false).expect("scan");
    let back: Vec<String> = back.records.iter().map(|(r, _)| short(r)).collect();
    assert_eq!(
        back,
        [
            "session a",
            "session b",
            "sub b f",
            "queued a 2",
            "queued a 4",
            "queued b 5",
            "sent a 2",
        ]
    );
    // The snapshot's segment: its format record, the marker and the live frames; the
    // segment started after it for what came meanwhile: its format record.
    let format_record = Record::LogFormat(crate::persistence::LOG_FORMAT)
        .to_frame()
        .len() as u64;
    assert_eq!(
        log.total_bytes(),
        bytes + format_record + Record::Snapshot.to_frame().len() as u64 + format_record
    );
    // The frames are where the snapshot put them: a second compaction copies them again.
    live.compact_into(&mut log).expect("compact again");
    log.wait_deleted();
    let again = scan(dir.path(), false).expect("scan");
    assert_eq!(again.records.len(), 7);
}

/// [MQTT-4.6.0-1] messages in flight are sent again in the order they were first sent,
/// which need not be the order of their ids (two workers route to one session; the
/// Registry hands over what it held): a compaction keeps that order, and start-up reads
/// it back.
#[test]
fn messages_sent_out_of_id_order_come_back_in_the_order_sent_after_a_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = scan(dir.path(), false).expect("scan").log;
    let mut live = LiveState::default();
    let message = |payload: &'static [u8]| {
        let message = Message::new("t", Bytes::from_static(payload), QoS::AtLeastOnce, false);
        Delivery::new(Arc::new(message), QoS::AtLeastOnce, false)
    };
    let (first, second, third) = (message(b"1"), message(b"2"), message(b"3"));
    let sent = |id, pid| Record::Sent {
        client_id: "a".into(),
        id,
        pid,
    };
    append(
        &mut log,
        &mut live,
        &[
            Record::SessionSet {
                client_id: "a".into(),
                expiry: 3600,
                offline_since: 0,
                user: None,
            },
            Record::queued("a".into(), 1, &first),
            Record::queued("a".into(), 2, &second),
            Record::queued("a".into(), 3, &third),
            sent(3, 10),
            sent(2, 11),
        ],
    );
    live.compact_into(&mut log).expect("compact");
    // Sent after the compaction: the last of the three.
    append(&mut log, &mut live, &[sent(1, 12)]);
    drop(log);
    let config = crate::config::PersistenceConfig {
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let recovered = crate::persistence::open(&config)
        .expect("reads back")
        .expect("a directory");
    let session = &recovered.sessions[0];
    let in_flight: Vec<(u16, &[u8])> = session
        .state
        .inflight
        .iter()
        .map(|e| (e.pid, &e.delivery.message.payload[..]))
        .collect();
    assert_eq!(
        in_flight,
        [(10, &b"3"[..]), (11, &b"2"[..]), (12, &b"1"[..])]
    );
}

#[test]
fn the_room_of_queued_messages_gone_is_given_back_and_what_is_live_stays() {
    let mut live = LiveState::default();
    live.track(LiveKind::Set, &session("gone"), at(0, 10));
    live.track(LiveKind::Set, &session("stays"), at(10, 10));
    for id in 0..20_000 {
        live.track(LiveKind::QueuedSet, &queued("gone", id), at(20 + id, 1));
    }
    for id in 20_000..20_100 {
        live.track(LiveKind::QueuedSet, &queued("stays", id), at(20 + id, 1));
    }
    assert!(live.take_spare_room().is_none(), "all of it is live");
    live.track(LiveKind::RemovePrefix, &session("gone"), at(30_000, 5));
    live.drop_dead();
    let (records, bytes) = (live.records(), live.bytes());
    assert_eq!(records, 1 + 100, "the session that stays and its messages");
    let spare = live.take_spare_room().expect("room given back");
    assert!(spare.bytes() >= 20_000 * 40, "{} bytes", spare.bytes());
    assert!(live.queued.capacity() < 20_000 && live.queued_order.capacity() < 20_000);
    assert_eq!((live.records(), live.bytes()), (records, bytes));
    let mut ids = live.live_queued_ids();
    ids.sort_unstable();
    assert_eq!(ids, (20_000..20_100).collect::<Vec<u64>>());
    assert!(live.take_spare_room().is_none(), "once");
}
