//! CONNECT and CONNACK conformance (MQTT 3.1.1 section 3.1 and 3.2), over real TCP.

mod common;

use std::time::{Duration, Instant};

use common::packets::{self, ConnectSpec};
use common::{broker, broker_with, broker_with_hooks, HookEvent, Raw};

async fn connack_for(spec: ConnectSpec<'_>) -> Option<common::Frame> {
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&spec.encode()).await;
    raw.recv().await
}

#[tokio::test]
async fn first_packet_from_server_is_connack_accepted() {
    // [MQTT-3.2.0-1] CONNACK is the first packet the server sends; 0x00 accepts.
    let frame = connack_for(ConnectSpec {
        client_id: "c1",
        ..Default::default()
    })
    .await
    .expect("CONNACK");
    assert_eq!((frame.byte1, frame.body.clone()), (0x20, vec![0, 0]));
}

#[tokio::test]
async fn mqtt_3_1_mqisdp_is_accepted() {
    let frame = connack_for(ConnectSpec {
        protocol_name: "MQIsdp",
        level: 3,
        client_id: "legacy",
        ..Default::default()
    })
    .await
    .expect("CONNACK");
    assert_eq!(frame.body, vec![0, 0]);
}

#[tokio::test]
async fn mqtt_3_1_client_ids_must_have_1_to_23_characters() {
    // MQTT 3.1 knew neither empty nor long client ids: CONNACK 2 (identifier rejected).
    for id in ["", "abcdefghijklmnopqrstuvwx"] {
        let frame = connack_for(ConnectSpec {
            protocol_name: "MQIsdp",
            level: 3,
            client_id: id,
            ..Default::default()
        })
        .await
        .expect("CONNACK");
        assert_eq!(frame.body, vec![0, 2], "id {id:?}");
    }
    // The same ids are fine in 3.1.1 [MQTT-3.1.3-5] [MQTT-3.1.3-6].
    for id in ["", "abcdefghijklmnopqrstuvwx"] {
        let frame = connack_for(ConnectSpec {
            client_id: id,
            ..Default::default()
        })
        .await
        .expect("CONNACK");
        assert_eq!(frame.body, vec![0, 0], "id {id:?}");
    }
}

#[tokio::test]
async fn unknown_protocol_level_gets_unacceptable_protocol_version_then_close() {
    // [MQTT-3.1.2-2] unsupported level (6; 3, 4 and 5 are served): CONNACK 0x01, then disconnect.
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(
        &ConnectSpec {
            level: 6,
            client_id: "v6",
            ..Default::default()
        }
        .encode(),
    )
    .await;
    let connack = raw.expect().await;
    assert_eq!((connack.byte1, connack.body), (0x20, vec![0, 1]));
    raw.expect_closed().await;
}

#[tokio::test]
async fn bad_protocol_name_closes_without_connack() {
    // [MQTT-3.1.2-1]
    let frame = connack_for(ConnectSpec {
        protocol_name: "MQTX",
        client_id: "x",
        ..Default::default()
    })
    .await;
    assert_eq!(frame, None);
}

#[tokio::test]
async fn reserved_connect_flag_closes() {
    // [MQTT-3.1.2-3]
    let frame = connack_for(ConnectSpec {
        client_id: "x",
        flags_override: Some(0x03),
        ..Default::default()
    })
    .await;
    assert_eq!(frame, None);
}

#[tokio::test]
async fn will_qos_without_will_flag_closes() {
    // [MQTT-3.1.2-13]
    let frame = connack_for(ConnectSpec {
        client_id: "x",
        flags_override: Some(0x02 | 0x08),
        ..Default::default()
    })
    .await;
    assert_eq!(frame, None);
}

#[tokio::test]
async fn password_without_username_closes() {
    // [MQTT-3.1.2-22]
    let frame = connack_for(ConnectSpec {
        client_id: "x",
        flags_override: Some(0x02 | 0x40),
        password: Some(b"secret"),
        ..Default::default()
    })
    .await;
    assert_eq!(frame, None);
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::subscribe(1, &[("a", 0)])).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_violation() {
    // [MQTT-3.1.0-2]
    let broker = broker();
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "twice", true).await;
    raw.send(&packets::connect("twice", true, 60)).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn zero_length_id_with_persistent_session_is_rejected() {
    // [MQTT-3.1.3-8] CONNACK 0x02, then close.
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::connect("", false, 60)).await;
    let connack = raw.expect().await;
    assert_eq!(connack.body, vec![0, 2]);
    raw.expect_closed().await;
}

#[tokio::test]
async fn zero_length_id_with_clean_session_gets_a_unique_id() {
    // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (_a, _) = Raw::handshake(broker.local_addr(), "", true).await;
    let (_b, _) = Raw::handshake(broker.local_addr(), "", true).await;
    let mut ids = Vec::new();
    while ids.len() < 2 {
        if let HookEvent::Connected(c) = hooks.next().await {
            ids.push(c.client_id);
        }
    }
    assert!(!ids[0].is_empty() && !ids[1].is_empty());
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn server_unavailable_when_connection_limit_reached() {
    let broker = broker_with(|c| c.limits.max_connections = 1);
    let (_first, _) = Raw::handshake(broker.local_addr(), "first", true).await;
    let mut second = Raw::connect(broker.local_addr()).await;
    second.send(&packets::connect("second", true, 60)).await;
    let connack = second.expect().await;
    // [MQTT-3.2.2-4] a non-zero return code carries session present 0.
    assert_eq!(connack.body, vec![0, 3]);
    second.expect_closed().await;
}

#[tokio::test]
async fn socket_without_connect_is_closed_at_the_deadline() {
    // [MQTT-3.1.0-1] (a server "SHOULD" close a connection that does not send CONNECT in time).
    let broker = broker_with(|c| c.limits.connect_timeout = Duration::from_millis(300));
    let started = Instant::now();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn keep_alive_expiry_closes_at_one_and_a_half_times() {
    // [MQTT-3.1.2-24]
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::connect("sleepy", true, 1)).await;
    assert_eq!(raw.expect().await.body, vec![0, 0]);
    let connected = Instant::now();
    raw.expect_closed().await;
    let elapsed = connected.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed after {elapsed:?}"
    );
    let event = hooks.disconnected("sleepy").await;
    assert_eq!(
        event.reason,
        switchboard::hooks::DisconnectReason::KeepAliveTimeout
    );
}

#[tokio::test]
async fn pings_keep_a_connection_alive() {
    // [MQTT-3.12.4-1] PINGREQ is answered with PINGRESP, and counts as activity.
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::connect("pinger", true, 1)).await;
    raw.expect().await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await; // pacing the pings, not synchronising
        raw.ping().await;
    }
}

#[tokio::test]
async fn mqtt_3_1_connack_has_no_session_present_flag_yet_the_session_resumes() {
    // MQTT 3.1's CONNACK has a reserved first byte (0); the Session Present flag came with 3.1.1
    // [MQTT-3.2.2-2]. A 3.1 client with clean session 0 still gets its session back: what was
    // queued for it while it was away arrives.
    let broker = broker();
    let mut first = legacy_connect(broker.local_addr(), "legacy-gate").await;
    first.subscribe(1, &[("gate/1AB/cmd", 1)], &[1]).await;
    first.send(&[0xE0, 0x00]).await;
    first.expect_closed().await;

    let (mut app, _) = Raw::handshake(broker.local_addr(), "app", true).await;
    app.send(&packets::publish(
        "gate/1AB/cmd",
        b"open",
        1,
        1,
        false,
        false,
    ))
    .await;
    assert_eq!(app.expect().await.byte1, 0x40);

    let mut second = legacy_connect(broker.local_addr(), "legacy-gate").await;
    let queued = packets::parse_publish(&second.expect().await);
    assert_eq!(
        (queued.topic.as_str(), &queued.payload[..]),
        ("gate/1AB/cmd", &b"open"[..])
    );
}

#[tokio::test]
async fn mqtt_3_1_client_resending_pubrel_with_dup_completes_its_qos2_flow() {
    // MQTT 3.1 gave PUBREL (and SUBSCRIBE, UNSUBSCRIBE) a QoS 1 header whose DUP flag a client
    // sets when it sends one again, as after reconnecting; 3.1.1 fixed the flags at 0010
    // [MQTT-3.6.1-1], and holds its own clients to it. The message is delivered once.
    let broker = broker();
    let (mut subscriber, _) = Raw::handshake(broker.local_addr(), "watcher", true).await;
    subscriber.subscribe(1, &[("legacy/q2", 1)], &[1]).await;
    let mut first = legacy_connect(broker.local_addr(), "legacy-radar").await;
    first
        .send(&packets::publish("legacy/q2", b"once", 2, 1, false, false))
        .await;
    let pubrec = first.expect().await;
    assert_eq!((pubrec.byte1, pubrec.pid()), (0x50, 1));
    drop(first); // gone before its PUBREL

    let mut second = legacy_connect(broker.local_addr(), "legacy-radar").await;
    second.send(&[0x6A, 0x02, 0x00, 0x01]).await; // PUBREL, DUP set
    let pubcomp = second.expect().await;
    assert_eq!((pubcomp.byte1, pubcomp.pid()), (0x70, 1));
    // SUBSCRIBE sent again with DUP set is answered too.
    second
        .send(&[
            0x8A, 0x0A, 0x00, 0x02, 0x00, 0x05, b'a', b'/', b'b', b'/', b'c', 0x01,
        ])
        .await;
    let suback = second.expect().await;
    assert_eq!((suback.byte1, suback.body), (0x90, vec![0, 2, 1]));

    let delivered: Vec<Vec<u8>> = subscriber.drain_payloads().await;
    assert_eq!(delivered, vec![b"once".to_vec()]);
}

/// Connects an MQTT 3.1 client with clean session 0 and checks its CONNACK: accepted, and the
/// first byte, which 3.1 reserves, 0 (even when the session is resumed).
async fn legacy_connect(addr: std::net::SocketAddr, client_id: &str) -> Raw {
    let spec = ConnectSpec {
        protocol_name: "MQIsdp",
        level: 3,
        clean: false,
        client_id,
        ..Default::default()
    };
    let mut raw = Raw::connect(addr).await;
    raw.send(&spec.encode()).await;
    let connack = raw.expect().await;
    assert_eq!((connack.byte1, connack.body), (0x20, vec![0, 0]));
    raw
}

#[tokio::test]
async fn connect_flags_and_the_fields_present_must_agree_or_the_connection_closes_unanswered() {
    // [MQTT-3.1.4-1] a CONNECT that does not conform closes the connection without a CONNACK
    // (3.1.1 has no return code for it [MQTT-3.2.2-6]). Each case breaks one rule of section 3.1.
    let will = Some(("gate/1/status", &b"offline"[..], 0, false));
    let cases: [(&str, ConnectSpec<'_>); 8] = [
        // [MQTT-3.1.2-11] no will flag, yet a will topic and message in the payload
        // (encoded, then the flag taken away).
        (
            "will fields without the will flag",
            ConnectSpec {
                will,
                flags_override: Some(0x02),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-15] will retain without the will flag.
        (
            "will retain without the will flag",
            ConnectSpec {
                flags_override: Some(0x02 | 0x20),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-14] will QoS 3.
        (
            "will QoS 3",
            ConnectSpec {
                will,
                flags_override: Some(0x02 | 0x04 | 0x18),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-9] the will flag, but no will topic and message.
        (
            "will flag without a will",
            ConnectSpec {
                flags_override: Some(0x02 | 0x04),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-18] a user name without the user name flag.
        (
            "user name without its flag",
            ConnectSpec {
                username: Some("gate"),
                flags_override: Some(0x02),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-19] the user name flag without a user name.
        (
            "user name flag without a user name",
            ConnectSpec {
                flags_override: Some(0x02 | 0x80),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-20] a password without the password flag.
        (
            "password without its flag",
            ConnectSpec {
                username: Some("gate"),
                password: Some(b"pw"),
                flags_override: Some(0x02 | 0x80),
                ..Default::default()
            },
        ),
        // [MQTT-3.1.2-21] the password flag without a password.
        (
            "password flag without a password",
            ConnectSpec {
                username: Some("gate"),
                flags_override: Some(0x02 | 0x80 | 0x40),
                ..Default::default()
            },
        ),
    ];
    let broker = broker();
    for (what, spec) in cases {
        let spec = ConnectSpec {
            client_id: "x",
            ..spec
        };
        let mut raw = Raw::connect(broker.local_addr()).await;
        raw.send(&spec.encode()).await;
        assert_eq!(raw.recv().await, None, "{what}: closed without CONNACK");
    }
    common::eventually(|| async { broker.metrics().snapshot().protocol_errors == 8 }).await;
}

#[tokio::test]
async fn nothing_a_client_sends_behind_a_refused_connect_is_processed() {
    // [MQTT-3.1.4-5] once the CONNECT is refused nothing after it is processed: a retained
    // PUBLISH written in the same segment as a CONNECT of an unsupported level, or of an
    // empty client id without clean session, is not stored. The refusal's CONNACK carries
    // Session Present 0 [MQTT-3.2.2-4] and the connection closes [MQTT-3.2.2-5].
    let broker = broker();
    let addr = broker.local_addr();
    let refused = [
        (
            ConnectSpec {
                client_id: "lvl",
                level: 6,
                ..Default::default()
            },
            0x01,
        ),
        (
            ConnectSpec {
                client_id: "",
                clean: false,
                ..Default::default()
            },
            0x02,
        ),
    ];
    for (spec, code) in refused {
        let mut bytes = spec.encode();
        bytes.extend(packets::publish(
            "refused/state",
            b"stored?",
            0,
            0,
            true,
            false,
        ));
        let mut raw = Raw::connect(addr).await;
        raw.send(&bytes).await;
        let connack = raw.expect().await;
        assert_eq!(
            (connack.byte1, connack.body.as_slice()),
            (0x20, &[0, code][..])
        );
        raw.expect_closed().await;
    }
    let (mut sub, _) = Raw::handshake(addr, "checker", true).await;
    sub.subscribe(1, &[("refused/#", 0)], &[0]).await;
    assert!(
        sub.sync().await.is_empty(),
        "no retained message was stored"
    );
}
