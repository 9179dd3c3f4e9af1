//! Property-based fuzzing of the Session state machine over real TCP: after a valid CONNECT, an
//! arbitrary byte stream. The broker must never panic or stop serving: after every case a fresh
//! client still gets its CONNACK and PINGRESP, and the Registry's counts return to zero.
//!
//! A short run is part of `cargo test`. A long run:
//! `PROPTEST_CASES=20000 cargo test --release --test fuzz_session`

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;
use switchboard::registry::GetStats;
use switchboard::BackgroundBroker;

/// One broker per property: the two run in parallel and must not see each other's traffic.
fn broker_for_any_stream() -> &'static BackgroundBroker {
    static BROKER: OnceLock<BackgroundBroker> = OnceLock::new();
    BROKER.get_or_init(common::broker)
}

fn broker_for_valid_streams() -> &'static BackgroundBroker {
    static BROKER: OnceLock<BackgroundBroker> = OnceLock::new();
    BROKER.get_or_init(common::broker)
}

fn broker_for_mqtt5_streams() -> &'static BackgroundBroker {
    static BROKER: OnceLock<BackgroundBroker> = OnceLock::new();
    BROKER.get_or_init(common::broker)
}

fn broker_for_valid_mqtt5_streams() -> &'static BackgroundBroker {
    static BROKER: OnceLock<BackgroundBroker> = OnceLock::new();
    BROKER.get_or_init(common::broker)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Packets a client may legally send at any point after CONNECT.
fn valid_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\x30\x07\x00\x03a/bxy".to_vec()),
        Just(b"\x32\x06\x00\x01a\x00\x05z".to_vec()),
        Just(b"\x34\x06\x00\x01a\x00\x09z".to_vec()),
        Just(b"\x62\x02\x00\x09".to_vec()),
        Just(b"\x40\x02\x00\x01".to_vec()),
        Just(b"\x50\x02\x00\x01".to_vec()),
        Just(b"\x70\x02\x00\x01".to_vec()),
        Just(b"\x82\x06\x00\x02\x00\x01#\x02".to_vec()),
        Just(b"\xa2\x05\x00\x03\x00\x01#".to_vec()),
        Just(b"\xc0\x00".to_vec()),
    ]
}

/// MQTT 5 packets a client may legally send at any point after CONNECT: properties, topic
/// aliases (the first sets alias 1, later ones may use it alone), subscription options and
/// identifiers, shared subscriptions, acknowledgements with reason codes.
fn valid_packet_v5() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\x30\x0b\x00\x03a/b\x03\x23\x00\x01xy".to_vec()),
        Just(b"\x30\x09\x00\x03a/b\x02\x01\x01z".to_vec()),
        Just(b"\x32\x0e\x00\x01a\x00\x05\x07\x26\x00\x01k\x00\x01vz".to_vec()),
        Just(b"\x34\x0c\x00\x01a\x00\x09\x05\x02\x00\x00\x00\x0az".to_vec()),
        Just(b"\x62\x02\x00\x09".to_vec()),
        Just(b"\x62\x03\x00\x09\x92".to_vec()),
        Just(b"\x40\x03\x00\x01\x10".to_vec()),
        Just(b"\x50\x04\x00\x01\x80\x00".to_vec()),
        Just(b"\x70\x02\x00\x01".to_vec()),
        Just(b"\x82\x09\x00\x02\x02\x0b\x07\x00\x01#\x2e".to_vec()),
        Just(b"\x82\x10\x00\x03\x00\x00\x0a$share/g/#\x01".to_vec()),
        Just(b"\xa2\x06\x00\x03\x00\x00\x01#".to_vec()),
        Just(b"\xc0\x00".to_vec()),
    ]
}

/// An MQTT 5 CONNECT (clean start, keep-alive 60, Topic Alias Maximum 8) with this client id.
fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x05\x02\x00\x3c\x03\x22\x00\x08".to_vec();
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend(body);
    connect
}

/// After a case: a fresh client (connected as `fresh`) is still served, and everything the case
/// created is gone again (clean sessions only).
async fn assert_still_serving(broker: &BackgroundBroker, mut fresh: common::Raw) {
    fresh.ping().await;
    fresh.send(&[0xE0, 0x00]).await;
    fresh.expect_closed().await;
    common::eventually(|| async {
        let stats = broker
            .registry()
            .send(GetStats)
            .await
            .expect("registry alive");
        stats.clients_online + stats.sessions_offline == 0 && stats.subscriptions == 0
    })
    .await;
}

/// Valid packets and random bytes, as building blocks for the fuzzer.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        valid_packet()
    ]
}

proptest! {
    // 48 cases in `cargo test`; PROPTEST_CASES sets more for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_stream_after_connect_leaves_the_broker_serving(fragments in proptest::collection::vec(fragment(), 1..24)) {
        let broker = broker_for_any_stream();
        let addr = broker.local_addr();
        runtime().block_on(async move {
            let (mut raw, _) = common::Raw::handshake(addr, "fuzzed", true).await;
            for f in &fragments {
                // The broker closes the connection at the first bad packet; stop writing then.
                if tokio::io::AsyncWriteExt::write_all(&mut raw.stream, f).await.is_err() {
                    break;
                }
            }
            drop(raw);
            let (fresh, _) = common::Raw::handshake(addr, "probe", true).await;
            assert_still_serving(broker, fresh).await;
        });
    }

    #[test]
    fn valid_streams_keep_the_connection_open(packets in proptest::collection::vec(valid_packet(), 1..24)) {
        let addr = broker_for_valid_streams().local_addr();
        runtime().block_on(async move {
            let (mut raw, _) = common::Raw::handshake(addr, "valid", true).await;
            for p in &packets {
                raw.send(p).await;
            }
            // The same connection still answers: `sync` panics if it was closed.
            raw.sync().await;
            raw.send(&[0xE0, 0x00]).await;
            raw.expect_closed().await;
        });
    }

    #[test]
    fn any_stream_after_an_mqtt5_connect_leaves_the_broker_serving(
        fragments in proptest::collection::vec(
            prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), valid_packet_v5()],
            1..24,
        )
    ) {
        let broker = broker_for_mqtt5_streams();
        let addr = broker.local_addr();
        runtime().block_on(async move {
            let mut raw = common::Raw::handshake5(addr, "fuzzed5").await;
            for f in &fragments {
                if tokio::io::AsyncWriteExt::write_all(&mut raw.stream, f).await.is_err() {
                    break;
                }
            }
            drop(raw);
            let fresh = common::Raw::handshake5(addr, "probe5").await;
            assert_still_serving(broker, fresh).await;
        });
    }

    #[test]
    fn valid_mqtt5_streams_keep_the_connection_open(packets in proptest::collection::vec(valid_packet_v5(), 1..24)) {
        let addr = broker_for_valid_mqtt5_streams().local_addr();
        runtime().block_on(async move {
            let mut raw = common::Raw::connect(addr).await;
            raw.send(&connect_v5("valid5")).await;
            assert_eq!(raw.expect().await.byte1, 0x20);
            for p in &packets {
                raw.send(p).await;
            }
            // The same connection still answers: `sync5` panics if it was closed.
            raw.sync5().await;
            raw.send(&[0xE0, 0x00]).await;
            raw.expect_closed().await;
        });
    }
}
