//! Property-based fuzzing of the codec wrapper (stable toolchain; no cargo-fuzz needed).
//!
//! Every byte stream, valid, mutated or random, must decode to packets or to an error, never
//! panic, never loop, and never report "need more bytes" for a stream that cannot become a packet
//! (the decoder stops at the first error, as the Session does).
//!
//! A short run is part of `cargo test`. A long run:
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_codec`

use bytes::BytesMut;
use proptest::prelude::*;
use switchboard::codec::MqttCodec;
use tokio_util::codec::Decoder;

/// Feeds `chunks` to a fresh codec the way a socket would, and decodes until it needs more or
/// fails. Returns how many packets decoded.
fn feed(chunks: &[Vec<u8>]) -> usize {
    feed_limited(64 * 1024, chunks)
}

/// [`feed`] with a maximum packet size of `max_packet_size`.
fn feed_limited(max_packet_size: usize, chunks: &[Vec<u8>]) -> usize {
    let mut codec = MqttCodec::new(max_packet_size).with_topic_alias_maximum(10);
    let mut buf = BytesMut::new();
    let mut packets = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {
                    packets += 1;
                    assert!(buf.len() < before, "a decoded packet consumes bytes");
                }
                Ok(None) => break,
                Err(_) => return packets,
            }
        }
    }
    packets
}

/// A valid CONNECT followed by a few valid packets: a seed for mutations.
fn valid_session() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06device");
    s.extend_from_slice(b"\x82\x08\x00\x01\x00\x03a/#\x01"); // SUBSCRIBE
    s.extend_from_slice(b"\x32\x0b\x00\x03a/b\x00\x07data"); // PUBLISH QoS 1
    s.extend_from_slice(b"\x62\x02\x00\x07"); // PUBREL
    s.extend_from_slice(b"\xa2\x05\x00\x02\x00\x01a"); // UNSUBSCRIBE
    s.extend_from_slice(b"\xc0\x00\xe0\x00"); // PINGREQ, DISCONNECT
    s
}

/// The MQTT 5 seed: CONNECT with properties, then packets with properties, topic aliases, a
/// Subscription Identifier, acknowledgements with reason codes and a DISCONNECT with a reason.
fn valid_session_v5() -> Vec<u8> {
    let mut s = Vec::new();
    // CONNECT level 5, clean start, keep-alive 60, Session Expiry 60, Receive Maximum 10.
    s.extend_from_slice(
        b"\x10\x1b\x00\x04MQTT\x05\x02\x00\x3c\x08\x11\x00\x00\x00\x3c\x21\x00\x0a\x00\x06device",
    );
    // SUBSCRIBE with Subscription Identifier 5, options: QoS 1, No Local, RAP, Retain Handling 1.
    s.extend_from_slice(b"\x82\x0b\x00\x01\x02\x0b\x05\x00\x03a/#\x1d");
    // PUBLISH QoS 1 with Topic Alias 1 and a user property; then one by alias only.
    s.extend_from_slice(b"\x32\x16\x00\x03a/b\x00\x07\x0a\x23\x00\x01\x26\x00\x01k\x00\x01vdata");
    s.extend_from_slice(b"\x30\x0a\x00\x00\x03\x23\x00\x01data");
    s.extend_from_slice(b"\x40\x03\x00\x07\x10"); // PUBACK with reason 0x10
    s.extend_from_slice(b"\x62\x02\x00\x07"); // PUBREL, short form
    s.extend_from_slice(b"\xa2\x06\x00\x02\x00\x00\x01a"); // UNSUBSCRIBE
    s.extend_from_slice(b"\xc0\x00\xe0\x01\x04"); // PINGREQ, DISCONNECT 0x04
    s
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for p in points {
        chunks.push(bytes[at..p.max(at)].to_vec());
        at = p.max(at);
    }
    chunks.push(bytes[at..].to_vec());
    chunks
}

#[test]
fn the_seed_session_decodes_whole_in_any_split() {
    let seed = valid_session();
    assert_eq!(feed(std::slice::from_ref(&seed)), 7);
    for cut in 0..seed.len() {
        assert_eq!(feed(&split(&seed, &[cut])), 7, "split at {cut}");
    }
}

#[test]
fn the_mqtt5_seed_session_decodes_whole_in_any_split() {
    let seed = valid_session_v5();
    assert_eq!(feed(std::slice::from_ref(&seed)), 9);
    for cut in 0..seed.len() {
        assert_eq!(feed(&split(&seed, &[cut])), 9, "split at {cut}");
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        feed(&split(&bytes, &cuts));
    }

    #[test]
    fn random_bytes_after_connect_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut stream = valid_session()[..20].to_vec();
        stream.extend(bytes);
        feed(&[stream]);
    }

    /// With a limit of 32 bytes, most PUBLISH packets are too large: from a 3.1.1 client at
    /// QoS 1 or 2 their heads are read and the rest skipped, in any split.
    #[test]
    fn packets_over_a_small_limit_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = valid_session()[..20].to_vec();
        stream.extend(bytes);
        feed_limited(32, &split(&stream, &cuts));
    }

    #[test]
    fn random_bytes_after_an_mqtt5_connect_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut stream = valid_session_v5()[..29].to_vec();
        stream.extend(bytes);
        feed(&[stream]);
    }

    #[test]
    fn mutated_mqtt5_sessions_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = valid_session_v5();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        feed(&split(&bytes, &cuts));
    }

    #[test]
    fn mutated_valid_sessions_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = valid_session();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        feed(&split(&bytes, &cuts));
    }
}
