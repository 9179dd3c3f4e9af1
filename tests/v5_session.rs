//! MQTT 5 sessions: Clean Start with a Session Expiry Interval, sessions that really expire and
//! are freed, DISCONNECT changing the interval, the Will Delay Interval, and a resumed session
//! finishing a QoS 2 flow whose id the broker released already.

mod common;

use std::time::{Duration, Instant};

use common::v5::{connect5, disconnect5, prop, publish5, publish_of, Props, Will5};
use common::{broker, eventually, packets, Raw};
use switchboard::registry::GetStats;

async fn offline_sessions(broker: &switchboard::BackgroundBroker) -> usize {
    broker
        .registry()
        .send(GetStats)
        .await
        .expect("registry")
        .sessions_offline
}

#[tokio::test]
async fn a_session_is_kept_for_its_expiry_interval_then_freed() {
    // [MQTT-3.1.2-23] stored while the interval runs; then the session and its subscriptions go
    // [MQTT-4.1.0-2].
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new().u32(prop::SESSION_EXPIRY, 1);
    let (mut raw, _) = Raw::connect5(addr, &connect5("expiring", true, 60, &props, None)).await;
    raw.subscribe5(1, &Props::new(), &[("e/#", 1)]).await;
    raw.send(&disconnect5(0, &Props::new())).await;
    raw.expect_closed().await;
    eventually(|| async { offline_sessions(&broker).await == 1 }).await;
    let gone_at = Instant::now();
    eventually(|| async { offline_sessions(&broker).await == 0 }).await;
    assert!(gone_at.elapsed() < Duration::from_secs(3));
    let stats = broker.registry().send(GetStats).await.expect("registry");
    assert_eq!(
        stats.subscriptions, 0,
        "its subscriptions were freed with it"
    );
    // [MQTT-3.1.2-6] [MQTT-3.2.2-3] no session to resume now.
    let (_raw, ack) = Raw::connect5(addr, &connect5("expiring", false, 60, &props, None)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_with_the_connection() {
    // [MQTT-3.1.2-4] Clean Start discards; without an expiry the session does not outlive the
    // connection, so a later Clean Start 0 finds none [MQTT-3.2.2-3].
    let broker = broker();
    let addr = broker.local_addr();
    let mut raw = Raw::handshake5(addr, "short").await;
    raw.subscribe5(1, &Props::new(), &[("s/#", 1)]).await;
    raw.send(&disconnect5(0, &Props::new())).await;
    raw.expect_closed().await;
    eventually(|| async {
        let s = broker.registry().send(GetStats).await.expect("registry");
        s.sessions_offline == 0 && s.clients_online == 0
    })
    .await;
    let (_raw, ack) = Raw::connect5(addr, &connect5("short", false, 60, &Props::new(), None)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_can_end_a_session_early() {
    // Section 3.14.2.2.2: the DISCONNECT's Session Expiry Interval replaces the CONNECT's.
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new().u32(prop::SESSION_EXPIRY, 3600);
    let (mut raw, _) = Raw::connect5(addr, &connect5("early", true, 60, &props, None)).await;
    raw.send(&disconnect5(0, &Props::new().u32(prop::SESSION_EXPIRY, 0)))
        .await;
    raw.expect_closed().await;
    let (_raw, ack) = Raw::connect5(addr, &connect5("early", false, 60, &props, None)).await;
    assert!(!ack.session_present, "ended at the disconnect");
}

fn will(topic: &str, delay: u32) -> Will5<'_> {
    Will5 {
        topic,
        payload: b"gone",
        qos: 1,
        retain: false,
        props: Props::new()
            .u32(prop::WILL_DELAY, delay)
            .user("why", "lost"),
    }
}

#[tokio::test]
async fn a_delayed_will_is_published_after_the_delay_unless_the_client_returns() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut watcher = Raw::handshake5(addr, "will-watcher").await;
    watcher
        .subscribe5(1, &Props::new(), &[("wills/#", 1)])
        .await;
    let session = Props::new().u32(prop::SESSION_EXPIRY, 60);

    // Lost connection, no reconnect: the will comes after its 1 s delay [MQTT-3.1.2-8], with
    // its properties [MQTT-3.1.3-10].
    let (raw, _) = Raw::connect5(
        addr,
        &connect5("late", true, 60, &session, Some(&will("wills/late", 1))),
    )
    .await;
    let lost_at = Instant::now();
    drop(raw);
    let got = publish_of(&watcher.expect().await);
    assert_eq!(got.topic, "wills/late");
    assert!(
        lost_at.elapsed() >= Duration::from_millis(900),
        "not before the delay"
    );
    assert_eq!(
        got.properties.expect("will properties").user_properties,
        vec![("why".to_string(), "lost".to_string())]
    );
    watcher.send(&common::packets::ack(0x40, got.pkid)).await;

    // Lost connection, reconnect within the delay: no will [MQTT-3.1.3-9].
    let (raw, _) = Raw::connect5(
        addr,
        &connect5("back", true, 60, &session, Some(&will("wills/back", 1))),
    )
    .await;
    drop(raw);
    let (_back, ack) = Raw::connect5(addr, &connect5("back", false, 60, &session, None)).await;
    assert!(ack.session_present);
    // Waiting past the delay is the point of this check.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        watcher.sync5().await.is_empty(),
        "the returning client's will was cancelled"
    );
}

#[tokio::test]
async fn a_will_delayed_past_the_session_end_is_published_when_the_session_ends() {
    // [MQTT-3.1.2-8] whichever comes first: the delay (60 s) or the session's end (1 s).
    let broker = broker();
    let addr = broker.local_addr();
    let mut watcher = Raw::handshake5(addr, "end-watcher").await;
    watcher
        .subscribe5(1, &Props::new(), &[("wills/#", 0)])
        .await;
    let session = Props::new().u32(prop::SESSION_EXPIRY, 1);
    let (raw, _) = Raw::connect5(
        addr,
        &connect5(
            "ending",
            true,
            60,
            &session,
            Some(&will("wills/ending", 60)),
        ),
    )
    .await;
    drop(raw);
    let got = publish_of(&watcher.expect().await);
    assert_eq!(got.topic, "wills/ending");
    eventually(|| async { offline_sessions(&broker).await == 0 }).await;
}

/// The reason code of an MQTT 5 acknowledgement: 0 when the packet leaves it out (section
/// 3.4.2.1).
fn ack_code(ack: &common::Frame) -> u8 {
    ack.body.get(2).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_pubrel_repeated_in_a_resumed_session_completes_with_success() {
    // A QoS 2 flow whose PUBCOMP the client did not get before its connection went (or before
    // a broker with persistence was killed): it resumes the session and sends PUBREL again
    // [MQTT-4.4.0-1]. The id is released already; 0x92 Packet Identifier not found "is not an
    // error during recovery" (sections 3.6.2.1 and 3.7.2.1), and clients such as MQTT.js fail
    // the publish on it, so the answer is plain success [MQTT-4.3.3-11].
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new().u32(prop::SESSION_EXPIRY, 60);
    let connect = |clean| connect5("recovering", clean, 60, &props, None);
    let (mut raw, _) = Raw::connect5(addr, &connect(true)).await;
    raw.send(&publish5("r/1", b"once", 2, 7, false, &Props::new()))
        .await;
    let rec = raw.expect().await;
    assert_eq!((rec.byte1, rec.pid()), (0x50, 7), "{rec:?}");
    raw.send(&packets::ack(0x62, 7)).await;
    let comp = raw.expect().await;
    assert_eq!((comp.byte1, comp.pid(), ack_code(&comp)), (0x70, 7, 0));
    drop(raw);

    let (mut raw, ack) = Raw::connect5(addr, &connect(false)).await;
    assert!(ack.session_present, "[MQTT-3.2.2-3]");
    raw.send(&packets::ack(0x62, 7)).await;
    let comp = raw.expect().await;
    assert_eq!(
        (comp.byte1, comp.pid(), ack_code(&comp)),
        (0x70, 7, 0),
        "{comp:?}"
    );
    // Likewise a PUBREC for an id the broker no longer holds: PUBREL with success.
    raw.send(&packets::ack(0x50, 11)).await;
    let rel = raw.expect().await;
    assert_eq!((rel.byte1, rel.pid(), ack_code(&rel)), (0x62, 11, 0));
}

#[tokio::test]
async fn a_message_refused_with_a_reason_code_is_not_sent_again_on_resume() {
    // [MQTT-4.4.0-2] a PUBACK with a reason code of 0x80 or above acknowledges the message:
    // it is not sent again when the session resumes, though the one after it, never
    // acknowledged, is. [MQTT-3.2.2-2] a Clean Start 1 CONNECT gets Session Present 0 even
    // where a session existed, and [MQTT-3.1.4-4] starts a new one.
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new().u32(prop::SESSION_EXPIRY, 300);
    let (mut device, _) = Raw::connect5(addr, &connect5("refusing", true, 60, &props, None)).await;
    device.subscribe5(1, &Props::new(), &[("cmd/#", 1)]).await;
    let mut app = Raw::handshake5(addr, "commander").await;
    for (pid, payload) in [(1, &b"refused"[..]), (2, &b"unacked"[..])] {
        app.send(&publish5("cmd/1", payload, 1, pid, false, &Props::new()))
            .await;
        assert_eq!(app.expect().await.byte1, 0x40);
    }
    let refused = publish_of(&device.expect().await);
    assert_eq!(&refused.payload[..], b"refused");
    let [hi, lo] = refused.pkid.to_be_bytes();
    // PUBACK 0x80, Unspecified error (packet id, reason code, no properties).
    device.send(&packets::frame(0x40, &[hi, lo, 0x80])).await;
    let unacked = publish_of(&device.expect().await);
    assert_eq!(&unacked.payload[..], b"unacked");
    assert!(device.sync5().await.is_empty());
    drop(device);

    let (mut device, ack) =
        Raw::connect5(addr, &connect5("refusing", false, 60, &props, None)).await;
    assert!(ack.session_present);
    let again = publish_of(&device.expect().await);
    assert_eq!((&again.payload[..], again.dup), (&b"unacked"[..], true));
    device.send(&packets::ack(0x40, again.pkid)).await;
    assert!(
        device.sync5().await.is_empty(),
        "the refused one is not sent again"
    );
    drop(device);

    let (mut device, ack) =
        Raw::connect5(addr, &connect5("refusing", true, 60, &props, None)).await;
    assert!(!ack.session_present, "[MQTT-3.2.2-2]");
    app.send(&publish5("cmd/1", b"after", 1, 3, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40);
    assert!(
        device.sync5().await.is_empty(),
        "the new session has no subscription"
    );
}

#[tokio::test]
async fn a_qos_2_delivery_stays_unacknowledged_until_its_pubrec_even_across_a_resume() {
    // [MQTT-4.3.3-1] a packet id not in use, [MQTT-4.3.3-2] QoS 2 and DUP 0 the first time;
    // [MQTT-4.3.3-3] unacknowledged until the PUBREC: sent again (DUP 1) when the session
    // resumes, then PUBREL for the PUBREC and nothing more after the PUBCOMP.
    let broker = broker();
    let addr = broker.local_addr();
    let props = Props::new().u32(prop::SESSION_EXPIRY, 60);
    let (mut device, _) = Raw::connect5(addr, &connect5("q2-device", true, 60, &props, None)).await;
    device.subscribe5(1, &Props::new(), &[("q2/#", 2)]).await;
    let mut app = Raw::handshake5(addr, "q2-app").await;
    app.send(&publish5(
        "q2/1",
        b"exactly once",
        2,
        5,
        false,
        &Props::new(),
    ))
    .await;
    assert_eq!(app.expect().await.byte1, 0x50, "PUBREC");
    let first = publish_of(&device.expect().await);
    assert_eq!((first.qos as u8, first.dup), (2, false));
    assert_ne!(first.pkid, 0);
    drop(device);

    let (mut device, ack) =
        Raw::connect5(addr, &connect5("q2-device", false, 60, &props, None)).await;
    assert!(ack.session_present);
    let again = publish_of(&device.expect().await);
    assert_eq!(
        (again.pkid, again.qos as u8, again.dup, &again.payload[..]),
        (first.pkid, 2, true, &b"exactly once"[..])
    );
    device.send(&packets::ack(0x50, again.pkid)).await;
    let rel = device.expect().await;
    assert_eq!((rel.byte1, rel.pid()), (0x62, again.pkid), "PUBREL");
    device.send(&packets::ack(0x70, again.pkid)).await;
    assert!(device.sync5().await.is_empty(), "delivered once");
}

#[tokio::test]
async fn a_will_keeps_its_retain_flag() {
    // [MQTT-3.1.2-14] a will with Will Retain 0 is published as a plain message: delivered,
    // not kept; [MQTT-3.1.2-15] with Will Retain 1 it is kept as the topic's retained message.
    let broker = broker();
    let addr = broker.local_addr();
    let mut watcher = Raw::handshake5(addr, "will-watcher").await;
    watcher
        .subscribe5(1, &Props::new(), &[("wills/+/status", 0)])
        .await;
    for (device, retain) in [("plain", false), ("kept", true)] {
        let topic = format!("wills/{device}/status");
        let will = Will5 {
            topic: &topic,
            payload: b"offline",
            qos: 0,
            retain,
            props: Props::new(),
        };
        let (raw, _) = Raw::connect5(
            addr,
            &connect5(device, true, 60, &Props::new(), Some(&will)),
        )
        .await;
        drop(raw);
        let got = publish_of(&watcher.expect().await);
        assert_eq!(got.topic, topic);
        assert!(!got.retain, "a live delivery");
    }
    let mut late = Raw::handshake5(addr, "late-watcher").await;
    late.subscribe5(1, &Props::new(), &[("wills/+/status", 0)])
        .await;
    let kept = publish_of(&late.expect().await);
    assert_eq!(
        (kept.topic.as_str(), kept.retain),
        ("wills/kept/status", true)
    );
    assert!(late.sync5().await.is_empty(), "the plain will was not kept");
}

#[tokio::test]
async fn messages_sent_before_they_expired_are_sent_again_after_it() {
    // [MQTT-4.3.3-7] a QoS 2 PUBLISH once sent is not expired, and neither is a QoS 1 one whose
    // onward delivery began [MQTT-3.3.2-5]: unacknowledged, both come again (DUP 1) when the
    // session resumes after their Message Expiry Interval ran out.
    let broker = broker();
    let addr = broker.local_addr();
    let session = Props::new().u32(prop::SESSION_EXPIRY, 60);
    let (mut device, _) =
        Raw::connect5(addr, &connect5("exp-device", true, 60, &session, None)).await;
    device.subscribe5(1, &Props::new(), &[("sent/#", 2)]).await;
    let mut app = Raw::handshake5(addr, "exp-app").await;
    let short = Props::new().u32(prop::MESSAGE_EXPIRY, 1);
    app.send(&publish5("sent/q2", b"two", 2, 1, false, &short))
        .await;
    assert_eq!(app.expect().await.byte1, 0x50, "PUBREC");
    app.send(&publish5("sent/q1", b"one", 1, 2, false, &short))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    let q2 = publish_of(&device.expect().await);
    let q1 = publish_of(&device.expect().await);
    assert_eq!((q2.qos as u8, q1.qos as u8), (2, 1));
    device.send(&disconnect5(0, &Props::new())).await;
    device.expect_closed().await;
    // Letting the 1 s expiries pass is the point of this test.
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    let (mut device, ack) =
        Raw::connect5(addr, &connect5("exp-device", false, 60, &session, None)).await;
    assert!(ack.session_present);
    for sent in [&q2, &q1] {
        let again = publish_of(&device.expect().await);
        assert_eq!(
            (again.pkid, again.dup, &again.payload[..]),
            (sent.pkid, true, &sent.payload[..]),
            "sent again though expired"
        );
    }
    device.send(&packets::ack(0x50, q2.pkid)).await;
    let rel = device.expect().await;
    assert_eq!((rel.byte1, rel.pid()), (0x62, q2.pkid), "PUBREL");
    device.send(&packets::ack(0x70, q2.pkid)).await;
    device.send(&packets::ack(0x40, q1.pkid)).await;
    assert!(device.sync5().await.is_empty(), "nothing more");
}

#[tokio::test]
async fn a_session_outlives_its_expiry_interval_while_its_connection_is_open() {
    // [MQTT-4.1.0-1] the session state is not discarded while the connection is open: the
    // Session Expiry Interval counts from the end of the connection, not from the CONNECT.
    let broker = broker();
    let addr = broker.local_addr();
    let session = Props::new().u32(prop::SESSION_EXPIRY, 1);
    let (mut device, _) =
        Raw::connect5(addr, &connect5("long-lived", true, 60, &session, None)).await;
    device.subscribe5(1, &Props::new(), &[("held/#", 1)]).await;
    // Letting the 1 s interval pass while connected is the point of this test.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let mut app = Raw::handshake5(addr, "held-app").await;
    app.send(&publish5("held/1", b"still", 1, 1, false, &Props::new()))
        .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    let got = publish_of(&device.expect().await);
    assert_eq!(
        &got.payload[..],
        b"still",
        "the subscription is still there"
    );
    // Unacknowledged, then the connection ends: the session (and the message) are kept.
    drop(device);
    let (mut device, ack) =
        Raw::connect5(addr, &connect5("long-lived", false, 60, &session, None)).await;
    assert!(ack.session_present, "kept after the connection ended");
    let again = publish_of(&device.expect().await);
    assert_eq!((again.pkid, again.dup), (got.pkid, true));
}
