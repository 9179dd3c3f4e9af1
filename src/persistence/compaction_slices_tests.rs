//! Unit tests of a compaction on a thread of its own taking its steps slice by slice between
//! commits (`compaction.rs`, `live_state_slices.rs`, `live_state_queued.rs`): whatever commits
//! change meanwhile, the snapshot holds the live state and the frames' new places are noted
//! right. The writer is driven by hand, as in `writer_tests.rs`, whose helpers these use.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::*;

#[test]
fn a_compaction_lists_and_notes_many_retained_messages_slice_by_slice_between_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // Three slices' worth of retained messages, set three times (the log is past twice the
    // live state), and a persistent session with a subscription and two messages queued: the
    // session is listed at once when the compaction starts, the retained messages slice by
    // slice.
    let count = 3 * COMPACTION_SLICE - 100;
    let topic = |n: usize| format!("gate/{n:06}/state");
    let mut model: BTreeMap<String, Bytes> = BTreeMap::new();
    let delivery = Delivery::new(
        Arc::new(Message::new(
            "q",
            Bytes::from_static(b"m"),
            QoS::AtLeastOnce,
            false,
        )),
        QoS::AtLeastOnce,
        false,
    );
    commit(
        &mut writer,
        [
            Record::SessionSet {
                client_id: "dev1".into(),
                expiry: 3600,
                offline_since: 0,
                user: None,
            },
            Record::Subscribe {
                client_id: "dev1".into(),
                filter: "detrd/status/request/dev1".into(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            },
            Record::queued("dev1".into(), 1, &delivery),
            Record::queued("dev1".into(), 2, &delivery),
        ],
    );
    for round in 0..3u8 {
        let payload = Bytes::from(vec![b'a' + round; 8]);
        let all: Vec<Record> = (0..count)
            .map(|n| {
                model.insert(topic(n), payload.clone());
                retained(&topic(n), &payload)
            })
            .collect();
        commit(&mut writer, all);
    }
    let set = |writer: &mut Writer, model: &mut BTreeMap<String, Bytes>, t: &str, v: &[u8]| {
        let payload = Bytes::copy_from_slice(v);
        model.insert(t.to_string(), payload.clone());
        commit(writer, [retained(t, &payload)]);
    };
    let clear = |writer: &mut Writer, model: &mut BTreeMap<String, Bytes>, t: &str| {
        model.remove(t);
        commit(writer, [Record::RetainClear(t.to_string())]);
    };

    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.as_ref().is_some_and(|c| c.listing()),
        "started, one slice listed"
    );
    // Changes behind the listing and ahead of it, while it goes on.
    set(&mut writer, &mut model, &topic(0), b"behind");
    set(&mut writer, &mut model, &topic(count - 1), b"ahead");
    clear(&mut writer, &mut model, &topic(1));
    clear(&mut writer, &mut model, &topic(count - 2));
    set(&mut writer, &mut model, "a/new/before", b"new");
    set(&mut writer, &mut model, "z/new/after", b"new");
    commit(
        &mut writer,
        [Record::Done {
            client_id: "dev1".into(),
            id: 1,
        }],
    );
    let steps = list_all(&mut writer, &shared);
    assert_eq!(steps, 2, "the other two slices, one step each");

    // The snapshot written; where its frames are is noted slice by slice too.
    wait_for_the_snapshot(&shared);
    writer.maybe_compact(&shared);
    assert!(writer.compaction.is_some(), "one slice noted");
    set(&mut writer, &mut model, &topic(2), b"during the noting");
    clear(&mut writer, &mut model, &topic(count - 3));
    let (mut steps, mut finished) = (0, false);
    while writer.compaction.is_some() {
        finished = writer.compaction_step(false);
        steps += 1;
        assert!(steps <= 3, "one step a slice");
    }
    assert_eq!(steps, 2);
    assert!(finished, "the compaction finished, not given up");
    writer.log.wait_deleted();
    assert!(
        writer.log.total_bytes() < 2 * writer.live.bytes(),
        "compacted: {} bytes for {} live",
        writer.log.total_bytes(),
        writer.live.bytes()
    );

    // The frames' new places are right: a second compaction, from them, reads them all back.
    let payload = Bytes::from_static(b"third round");
    let all: Vec<Record> = (0..count)
        .step_by(2)
        .map(|n| {
            model.insert(topic(n), payload.clone());
            retained(&topic(n), &payload)
        })
        .collect();
    commit(&mut writer, all.clone());
    commit(&mut writer, all);
    compact_from_the_noted_places(&mut writer, &shared);
    drop(writer);
    let (retained, sessions) = read_back_all(dir.path());
    let expected: Vec<(String, Bytes)> = model.into_iter().collect();
    assert!(
        retained == expected,
        "{} retained read back, {} expected",
        retained.len(),
        expected.len()
    );
    assert_eq!(
        sessions,
        [(
            "dev1".to_string(),
            vec!["detrd/status/request/dev1".to_string()],
            1
        )]
    );
}

#[test]
fn sessions_are_listed_slice_by_slice_as_they_stood_when_the_compaction_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // Over two slices' worth of sessions with a subscription each (two keys a session), their
    // records written three times over: the log is past twice the live state.
    let count = COMPACTION_SLICE + 300;
    let client = |n: usize| format!("dev{n:05}");
    let mut model: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..3u32 {
        let all: Vec<Record> = (0..count)
            .flat_map(|n| {
                let id = client(n);
                model.insert(id.clone(), vec![request(&id)]);
                [session(&id, 3600 + round), subscribe(&id, &request(&id))]
            })
            .collect();
        commit(&mut writer, all);
    }

    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.as_ref().is_some_and(|c| c.listing()),
        "started on a thread, one slice of sessions listed"
    );
    // Commits while the listing goes on. Ahead of it: sessions stored again (a device
    // reconnecting), which replaces each one's own record while its subscription stays: a
    // snapshot of the sessions as they stand when the listing reaches them would hold the
    // subscription without the session, and start-up would drop it. And a subscription
    // removed, one added, a session gone and a new one.
    let ahead = |n: usize| client(count - 1 - n);
    for n in 0..50 {
        commit(&mut writer, [session(&ahead(n), 7200)]);
    }
    commit(&mut writer, [session(&ahead(0), 7201)]);
    commit(
        &mut writer,
        [Record::Unsubscribe {
            client_id: ahead(1),
            filter: request(&ahead(1)),
        }],
    );
    model.insert(ahead(1), vec![]);
    commit(&mut writer, [subscribe(&ahead(2), "cfg/#")]);
    model.insert(ahead(2), vec!["cfg/#".into(), request(&ahead(2))]);
    commit(&mut writer, [Record::SessionGone(ahead(3))]);
    model.remove(&ahead(3));
    commit(&mut writer, [Record::SessionGone(ahead(4))]);
    commit(&mut writer, [session(&ahead(4), 60)]);
    model.insert(ahead(4), vec![]);
    commit(
        &mut writer,
        [session("zz-new", 60), subscribe("zz-new", "cfg/#")],
    );
    model.insert("zz-new".into(), vec!["cfg/#".into()]);
    // Behind it.
    commit(&mut writer, [session(&client(0), 1)]);
    commit(&mut writer, [subscribe(&client(1), "cfg/#")]);
    model.insert(client(1), vec!["cfg/#".into(), request(&client(1))]);
    let steps = list_all(&mut writer, &shared);
    assert_eq!(steps, 2, "the other two slices of keys, one step each");

    wait_for_the_snapshot(&shared);
    let mut finished = false;
    let mut steps = 0;
    while writer.compaction.is_some() {
        finished = writer.compaction_step(false);
        steps += 1;
        if steps == 1 {
            // Noted slice by slice too: a change between the slices.
            commit(&mut writer, [Record::SessionGone(client(count / 2 + 7))]);
            model.remove(&client(count / 2 + 7));
        }
    }
    assert_eq!(steps, 3, "three slices of keys to note, one step each");
    assert!(finished, "every frame was found in the snapshot");
    writer.log.wait_deleted();
    // Read back as it stands now (from a copy: the writer holds the directory).
    assert_sessions_read_back(copy_of(dir.path()).path(), &model);

    // The frames' new places are right: a second compaction reads them all back.
    let all: Vec<Record> = model.keys().map(|id| session(id, 3600)).collect();
    for _ in 0..4 {
        commit(&mut writer, all.clone());
    }
    compact_from_the_noted_places(&mut writer, &shared);
    drop(writer);
    assert_sessions_read_back(dir.path(), &model);
}

/// What a session holds in the test below: its messages in flight as (durable id, packet id)
/// in the order sent, and those queued by durable id.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    inflight: Vec<(u64, u16)>,
    queued: std::collections::BTreeSet<u64>,
}

#[test]
fn queued_messages_are_walked_and_noted_by_id_slice_by_slice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // Ten offline devices, each with a subscription and 1,000 messages held (10,000: three
    // slices to note), the first 20 of each sent in an order of their own; then churn (messages
    // queued and done) past twice the live state.
    let client = |n: usize| format!("dev{n:02}");
    let delivery = Delivery::new(
        Arc::new(Message::new(
            "cfg/all",
            Bytes::from_static(b"setting"),
            QoS::AtLeastOnce,
            false,
        )),
        QoS::AtLeastOnce,
        false,
    );
    let queued = |c: &str, id: u64| Record::queued(c.to_string(), id, &delivery);
    let sent = |c: &str, id: u64, pid: u16| Record::Sent {
        client_id: c.to_string(),
        id,
        pid,
    };
    let done = |c: &str, id: u64| Record::Done {
        client_id: c.to_string(),
        id,
    };
    let mut model: BTreeMap<String, Held> = BTreeMap::new();
    let mut next_id = 1u64;
    for n in 0..10 {
        let c = client(n);
        let held = model.entry(c.clone()).or_default();
        let mut records = vec![session(&c, 3600), subscribe(&c, "cfg/#")];
        let ids: Vec<u64> = (next_id..next_id + 1000).collect();
        next_id += 1000;
        records.extend(ids.iter().map(|&id| queued(&c, id)));
        held.queued.extend(&ids);
        // Sent from the 20th back to the first: the order read back is this one, not the ids'.
        for (pid, &id) in (1..).zip(ids[..20].iter().rev()) {
            records.push(sent(&c, id, pid));
            held.queued.remove(&id);
            held.inflight.push((id, pid));
        }
        commit(&mut writer, records);
    }
    for _ in 0..40 {
        let ids: Vec<u64> = (next_id..next_id + 500).collect();
        next_id += 500;
        commit(&mut writer, ids.iter().map(|&id| queued("dev00", id)));
        commit(&mut writer, ids.iter().map(|&id| done("dev00", id)));
    }

    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.as_ref().is_some_and(|c| c.listing()),
        "started on a thread, the sessions and the first ids of the queued messages listed"
    );
    // While the walk of the queued messages goes on (past id 4,076 now, of 30,000 to look
    // at: the churn's are done): messages done, sent; sessions gone with their messages; new
    // messages queued and sent; behind the walk and ahead of it.
    let first = |n: usize| 1 + 1000 * n as u64;
    let apply = |writer: &mut Writer, records: Vec<Record>, model: &mut BTreeMap<String, Held>| {
        for record in &records {
            match record {
                Record::Queued { client_id, id, .. } => {
                    model
                        .entry(client_id.clone())
                        .or_default()
                        .queued
                        .insert(*id);
                }
                Record::Sent { client_id, id, pid } => {
                    let held = model.entry(client_id.clone()).or_default();
                    held.queued.remove(id);
                    held.inflight.push((*id, *pid));
                }
                Record::Done { client_id, id } => {
                    let held = model.entry(client_id.clone()).or_default();
                    held.queued.remove(id);
                    held.inflight.retain(|(i, _)| i != id);
                }
                Record::SessionGone(client_id) => {
                    model.remove(client_id);
                }
                _ => {}
            }
        }
        commit(writer, records);
    };
    apply(
        &mut writer,
        vec![done("dev01", first(1)), done("dev01", first(1) + 500)],
        &mut model,
    );
    apply(
        &mut writer,
        vec![sent("dev03", first(3) + 700, 900)],
        &mut model,
    );
    apply(
        &mut writer,
        vec![Record::SessionGone(client(2))],
        &mut model,
    );
    apply(
        &mut writer,
        vec![queued("dev04", next_id), sent("dev04", next_id, 901)],
        &mut model,
    );
    next_id += 1;
    let ahead = vec![
        done("dev08", first(8) + 5),
        sent("dev09", first(9) + 600, 904),
        Record::SessionGone(client(6)),
    ];
    apply(&mut writer, ahead, &mut model);
    let steps = list_all(&mut writer, &shared);
    assert_eq!(steps, 7, "the other 25,924 ids, 4,096 a step");

    wait_for_the_snapshot(&shared);
    let (mut steps, mut finished) = (0, false);
    while writer.compaction.is_some() {
        finished = writer.compaction_step(false);
        steps += 1;
        if steps == 1 {
            // Between two slices of the noting (past id 4,078 now): ahead of it and behind it.
            let records = vec![
                done("dev01", first(1) + 900),
                sent("dev03", first(3) + 800, 903),
                done("dev09", first(9) + 999),
                sent("dev08", first(8) + 998, 902),
                done("dev05", first(5) + 19),
                Record::Released {
                    client_id: "dev07".into(),
                    id: first(7) + 3,
                },
                queued("dev07", next_id),
            ];
            next_id += 1;
            apply(&mut writer, records, &mut model);
        }
        assert!(steps <= 4, "one step a slice");
    }
    // 16 keys of sessions, then the frames listed: 8,999 first ones (dev02's among them: it
    // went behind the walk; not dev06's, nor the one done ahead of it) and 179 later ones,
    // 4,096 a step: three steps.
    assert_eq!(steps, 3, "noted slice by slice");
    assert!(finished, "every frame was found in the snapshot");
    writer.log.wait_deleted();
    assert_held_read_back(copy_of(dir.path()).path(), &model);

    // The frames' new places are right: a second compaction reads them all back.
    for _ in 0..40 {
        let ids: Vec<u64> = (next_id..next_id + 500).collect();
        next_id += 500;
        commit(&mut writer, ids.iter().map(|&id| queued("dev00", id)));
        commit(&mut writer, ids.iter().map(|&id| done("dev00", id)));
    }
    compact_from_the_noted_places(&mut writer, &shared);
    drop(writer);
    assert_held_read_back(dir.path(), &model);
}

/// Asserts that a start reads back from `dir` the messages `model` says each session holds,
/// in flight in the order sent and queued in id order.
fn assert_held_read_back(dir: &std::path::Path, model: &BTreeMap<String, Held>) {
    let config = PersistenceConfig {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let recovered = open(&config).expect("reopen").expect("a directory");
    let read: BTreeMap<String, Held> = recovered
        .sessions
        .iter()
        .map(|s| {
            let inflight = s.state.inflight.iter();
            let queued = s.state.queue.iter();
            let id = |d: &Delivery| d.durable_id().unwrap_or(0);
            let held = Held {
                inflight: inflight.map(|e| (id(&e.delivery), e.pid)).collect(),
                queued: queued.map(id).collect(),
            };
            (s.client_id.clone(), held)
        })
        .collect();
    assert_eq!(read.len(), model.len(), "sessions read back");
    for (client_id, held) in model {
        assert_eq!(read.get(client_id), Some(held), "{client_id}");
    }
}

fn session(client_id: &str, expiry: u32) -> Record {
    Record::SessionSet {
        client_id: client_id.into(),
        expiry,
        offline_since: 0,
        user: None,
    }
}

fn subscribe(client_id: &str, filter: &str) -> Record {
    Record::Subscribe {
        client_id: client_id.into(),
        filter: filter.into(),
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
    }
}

fn request(client_id: &str) -> String {
    format!("detrd/status/request/{client_id}")
}

#[test]
fn at_shutdown_a_compaction_under_way_takes_every_step_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = writer_in(dir.path());
    let shared = Arc::new(StoreShared::new(1, false, Default::default()));
    // Over a slice's worth of sessions and of retained messages, written three times over.
    let count = COMPACTION_SLICE + 300;
    let mut sessions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut retained_model: BTreeMap<String, Bytes> = BTreeMap::new();
    for round in 0..3u8 {
        let payload = Bytes::from(vec![b'a' + round; 8]);
        let all: Vec<Record> = (0..count)
            .flat_map(|n| {
                let (id, topic) = (format!("dev{n:05}"), format!("gate/{n:06}/state"));
                sessions.insert(id.clone(), vec![request(&id)]);
                retained_model.insert(topic.clone(), payload.clone());
                [
                    session(&id, 3600),
                    subscribe(&id, &request(&id)),
                    retained(&topic, &payload),
                ]
            })
            .collect();
        commit(&mut writer, all);
    }
    writer.maybe_compact(&shared);
    assert!(
        writer.compaction.as_ref().is_some_and(|c| c.listing()),
        "started on a thread, one slice listed"
    );
    // What the writer does as it stops: the rest of the listing, the snapshot, every note.
    assert!(writer.compaction_step(true), "finished in one call");
    assert!(writer.compaction.is_none());
    drop(writer);
    assert_sessions_read_back(dir.path(), &sessions);
    let expected: Vec<(String, Bytes)> = retained_model.into_iter().collect();
    assert!(
        read_back(dir.path()) == expected,
        "every retained message read back"
    );
}

/// Runs a second compaction to its end, which reads every live frame from where the first one
/// noted it: it finishes only if each was found there.
fn compact_from_the_noted_places(writer: &mut Writer, shared: &Arc<StoreShared>) {
    writer.maybe_compact(shared);
    assert!(writer.compaction.is_some(), "a second compaction");
    list_all(writer, shared);
    wait_for_the_snapshot(shared);
    let mut finished = false;
    while writer.compaction.is_some() {
        finished = writer.compaction_step(false);
    }
    assert!(
        finished,
        "the second compaction read every frame from where it was noted"
    );
}

/// A copy of the log's segment files in `dir`, in a directory of its own.
fn copy_of(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    for name in segments(dir) {
        std::fs::copy(dir.join(&name), copy.path().join(&name)).expect("copy a segment");
    }
    copy
}

/// Asserts that a start reads back from `dir` the sessions of `model` (client id -> its
/// filters, sorted), naming the first few that differ.
fn assert_sessions_read_back(dir: &std::path::Path, model: &BTreeMap<String, Vec<String>>) {
    let (_, sessions) = read_back_all(dir);
    let read: BTreeMap<String, Vec<String>> = sessions
        .into_iter()
        .map(|(id, mut filters, _)| {
            filters.sort();
            (id, filters)
        })
        .collect();
    let differ: Vec<_> = model
        .iter()
        .filter(|(id, filters)| read.get(*id) != Some(filters))
        .map(|(id, filters)| (id, filters, read.get(id)))
        .take(5)
        .collect();
    assert!(
        differ.is_empty() && read.len() == model.len(),
        "{} sessions read back, {} expected; (id, expected, read back): {differ:?}",
        read.len(),
        model.len()
    );
}
