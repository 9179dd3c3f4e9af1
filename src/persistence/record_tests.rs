//! Tests of the records' byte encoding: round trips, keys, and damaged bodies.

use super::*;
use crate::message::MessageProperties;
use crate::persistence::LiveKind;
use bytes::Bytes;
use std::time::Instant;

fn body(frame: &[u8]) -> &[u8] {
    &frame[FRAME_HEADER..]
}

#[test]
fn a_will_with_its_properties_delay_and_deadline_round_trips() {
    let mut will = LastWill::new(
        "gates/1/status",
        Bytes::from_static(b"offline"),
        QoS::AtLeastOnce,
        true,
    );
    will.properties = Some(Box::new(MessageProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("why".into(), "lost".into())],
        ..MessageProperties::default()
    }));
    will.expiry = Some(60);
    will.delay = 30;
    let record = Record::WillSet {
        client_id: "gate-1".into(),
        deadline: 1_700_000_000_000,
        will: Box::new(will.clone()),
    };
    let frame = record.to_frame();
    let Record::WillSet {
        client_id,
        deadline,
        will: back,
    } = Record::decode(body(&frame)).expect("decodes")
    else {
        panic!("kind");
    };
    assert_eq!(
        (client_id.as_str(), deadline),
        ("gate-1", 1_700_000_000_000)
    );
    assert_eq!(*back, will);
    for cut in 0..body(&frame).len() {
        assert!(
            Record::decode(&body(&frame)[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_retained_message_with_properties_and_expiry_round_trips() {
    let props = MessageProperties {
        payload_format: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("r/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into())],
    };
    let message = Message::new(
        "gate/1/state",
        Bytes::from_static(b"closed"),
        QoS::AtLeastOnce,
        true,
    )
    .with_properties(Some(Box::new(props.clone())), Some(3600));
    let frame = Record::RetainSet(Arc::new(message)).to_frame();
    let Record::RetainSet(back) = Record::decode(body(&frame)).expect("decodes") else {
        panic!("kind");
    };
    assert_eq!(back.topic, "gate/1/state");
    assert_eq!(&back.payload[..], b"closed");
    assert_eq!(back.qos, QoS::AtLeastOnce);
    assert_eq!(back.properties.as_deref(), Some(&props));
    let left = back.remaining_expiry(Instant::now()).expect("expires");
    assert!((3598..=3600).contains(&left), "{left}");
}

#[test]
fn every_truncation_of_a_record_is_an_error_not_a_panic() {
    let message = Message::new("a/b", Bytes::from_static(b"xyz"), QoS::AtMostOnce, true);
    let frame = Record::RetainSet(Arc::new(message)).to_frame();
    let b = body(&frame);
    for cut in 0..b.len() {
        assert!(Record::decode(&b[..cut]).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        Record::decode(body(&Record::RetainClear("a".into()).to_frame())),
        Ok(Record::RetainClear(t)) if t == "a"
    ));
}

#[test]
fn queued_messages_and_their_progress_round_trip_and_key_by_session_and_id() {
    let message = Message::new("d/1", Bytes::from_static(b"on"), QoS::ExactlyOnce, true);
    let mut delivery =
        Delivery::new(Arc::new(message), QoS::AtLeastOnce, false).with_extras(vec![7, 9], None);
    delivery.set_durable_id(Some(42));
    let queued = Record::queued("c1".into(), 42, &delivery);
    let Record::Queued {
        client_id,
        id,
        qos,
        retain,
        subscription_ids,
        message,
    } = Record::decode(body(&queued.to_frame())).expect("decodes")
    else {
        panic!("kind");
    };
    assert_eq!(
        (client_id.as_str(), id, qos, retain),
        ("c1", 42, QoS::AtLeastOnce, false)
    );
    assert_eq!(subscription_ids, vec![7, 9]);
    assert!(message.retain, "the message's own RETAIN flag is kept");
    assert_eq!(&message.payload[..], b"on");
    let live = |record: &Record| {
        let mut key = Vec::new();
        let kind = record.live_key(&mut key);
        (kind, key)
    };
    assert_eq!(
        live(&Record::SessionGone("c1".into())),
        (LiveKind::RemovePrefix, b"s:c1\0".to_vec())
    );
    // The queued message is under its session (whose removal takes it); the records of its
    // progress find it by its id alone, which they share with it.
    let (kind, queued_key) = live(&queued);
    assert_eq!(kind, LiveKind::QueuedSet);
    assert!(queued_key.starts_with(b"s:c1\0\0q"), "{queued_key:?}");
    let queued_id = super::super::live::split_queued_key(&queued_key).map(|(_, id)| id);
    assert_eq!(queued_id, Some(42));
    for record in [
        Record::Sent {
            client_id: "c1".into(),
            id: 42,
            pid: 3,
        },
        Record::Released {
            client_id: "c1".into(),
            id: 42,
        },
        Record::Done {
            client_id: "c1".into(),
            id: 42,
        },
    ] {
        let back = Record::decode(body(&record.to_frame())).expect("decodes");
        assert_eq!(live(&back), live(&record));
        let (kind, key) = live(&record);
        assert!(
            matches!(kind, LiveKind::QueuedAppend | LiveKind::QueuedRemove),
            "{record:?}"
        );
        assert_eq!(key, [&b"\0q"[..], &42u64.to_be_bytes()].concat());
        let id = super::super::live::split_queued_key(&key).map(|(_, id)| id);
        assert_eq!(id, queued_id, "{record:?} finds its message");
    }
    for record in [
        Record::InboundQos2 {
            client_id: "c1".into(),
            pid: 5,
        },
        Record::InboundReleased {
            client_id: "c1".into(),
            pid: 5,
        },
    ] {
        let back = Record::decode(body(&record.to_frame())).expect("decodes");
        assert_eq!(live(&back), live(&record));
        let (kind, key) = live(&record);
        assert_ne!(kind, LiveKind::None);
        assert!(key.starts_with(b"s:c1\0\0"), "{key:?} is under the session");
    }
}

#[test]
fn a_sessions_user_round_trips_and_a_record_without_one_reads_as_unknown() {
    let session_set = |user| Record::SessionSet {
        client_id: "worker-1".into(),
        expiry: 3600,
        offline_since: 1_700_000_000_000,
        user,
    };
    let user_of = |frame: &[u8]| match Record::decode(body(frame)) {
        Ok(Record::SessionSet {
            client_id,
            expiry: 3600,
            offline_since: 1_700_000_000_000,
            user,
        }) if client_id == "worker-1" => user,
        other => panic!("not the session written: {other:?}"),
    };
    for user in [
        None,
        Some(SessionUser::Anonymous),
        Some(SessionUser::Named("worker".into())),
        Some(SessionUser::Named(String::new())),
    ] {
        assert_eq!(user_of(&session_set(user.clone()).to_frame()), user);
    }
    // A record written before users were kept ends after `offline_since`: its user is unknown.
    let mut old = vec![SESSION_SET];
    put_str(&mut old, "worker-1");
    old.extend_from_slice(&3600u32.to_le_bytes());
    old.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    let mut old_frame = vec![0; FRAME_HEADER];
    old_frame.extend_from_slice(&old);
    assert_eq!(user_of(&old_frame), None);
    // An unknown tag, or a name cut short, is an error, not a guess.
    let mut bad = old.clone();
    bad.push(7);
    assert!(Record::decode(&bad).is_err());
    let named = session_set(Some(SessionUser::Named("worker".into()))).to_frame();
    let cut = body(&named).len() - 1;
    assert!(Record::decode(&body(&named)[..cut]).is_err());
}

#[test]
fn a_log_format_round_trips_and_an_unknown_kind_says_so() {
    let frame = Record::LogFormat(LOG_FORMAT).to_frame();
    assert!(matches!(
        Record::decode(body(&frame)),
        Ok(Record::LogFormat(format)) if format == LOG_FORMAT
    ));
    // It keys nothing: compaction writes a new one at the head of its segment.
    let mut key = Vec::new();
    assert_eq!(
        crate::persistence::live::live_key_of_body(body(&frame), &mut key),
        LiveKind::None
    );
    assert_eq!(
        Record::decode(&[200, 1]).err(),
        Some(RecordError::UnknownKind(200))
    );
    assert_eq!(
        Record::decode(&[LOG_FORMAT_KIND, 2]).err(),
        Some(RecordError::Truncated)
    );
}
