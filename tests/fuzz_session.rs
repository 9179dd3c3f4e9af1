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
            let (mut fresh, _) = common::Raw::handshake(addr, "probe", true).await;
            fresh.ping().await;
            fresh.send(&[0xE0, 0x00]).await;
            fresh.expect_closed().await;
            // Everything the case created is gone again (clean sessions only).
            common::eventually(|| async {
                let stats = broker.registry().send(GetStats).await.expect("registry alive");
                stats.clients_online + stats.sessions_offline == 0 && stats.subscriptions == 0
            })
            .await;
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
}
