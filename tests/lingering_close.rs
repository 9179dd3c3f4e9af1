//! When the broker closes a connection itself it closes it gracefully: its last packet (a
//! DISCONNECT with a reason code, a refusing CONNACK) reaches a client that is still writing,
//! followed by an orderly end of stream, not a reset (the lingering close of
//! `src/session/linger.rs`). Paho's interoperability test `test_flow_control2` is this case.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::broker_with;
use common::packets;
use common::v5::{connect5, publish5, Props};

/// What follows the packet that makes the broker close: far more than the broker reads before
/// it closes (at most 16 KiB at a time), far less than its lingering bound (`LINGER_BYTES`).
const STILL_WRITING: usize = 64 * 1024;

/// What a client saw that wrote `burst` in one go (the broker closes partway through reading
/// it), then, once the broker's last packet (`last_byte1`) arrived, went on writing and read to
/// the end of the stream.
struct Seen {
    /// Every packet received, as (first byte, body).
    packets: Vec<(u8, Vec<u8>)>,
    /// The writes after the broker's last packet.
    write_after: std::io::Result<()>,
    /// The end of the stream: `Ok` for an orderly end, an error for a reset.
    end: std::io::Result<usize>,
}

fn write_while_closed(addr: std::net::SocketAddr, burst: &[u8], last_byte1: u8) -> Seen {
    write_while_closed_by(addr, burst, last_byte1, || ())
}

/// [`write_while_closed`], with `trigger` run after the burst was written.
fn write_while_closed_by(
    addr: std::net::SocketAddr,
    burst: &[u8],
    last_byte1: u8,
    trigger: impl FnOnce(),
) -> Seen {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(burst).expect("the burst is written");
    trigger();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !frames(&received).iter().any(|(b, _)| *b == last_byte1) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the broker's last packet: {e}"),
        }
    }
    // Still writing: PINGREQs the broker will never answer, one before the end of the stream
    // and one after it. A broker that closed its socket at once answers the first with a
    // reset, and the second fails with a broken pipe.
    let before_end = stream.write_all(&[0xC0, 0x00]);
    let end = stream.read_to_end(&mut received);
    let after_end = stream.write_all(&[0xC0, 0x00]);
    Seen {
        packets: frames(&received),
        write_after: before_end.and(after_end),
        end,
    }
}

/// Splits a byte stream into (first byte, body) packets, up to its last whole one.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((frame, used)) = packets::split_frame(bytes) {
        out.push((frame.byte1, frame.body));
        bytes = &bytes[used..];
    }
    out
}

#[test]
fn disconnect_0x93_reaches_a_client_that_is_still_writing() {
    // (5.0) [MQTT-3.3.4-9] a client sending more QoS 2 PUBLISHes than the Receive Maximum gets
    // DISCONNECT 0x93 (section 4.9), which the broker may send after CONNACK [MQTT-3.14.0-1].
    // The client goes on writing QoS 2 messages, as Paho's test_flow_control2 does.
    let broker = broker_with(|c| c.limits.max_inbound_qos2 = 2);
    let mut burst = connect5("still-writing", true, 60, &Props::new(), None);
    let mut pid = 1u16;
    while burst.len() < STILL_WRITING {
        burst.extend(publish5("flood", &[0u8; 200], 2, pid, false, &Props::new()));
        pid += 1;
    }
    // Five connections: a broker that resets instead shows it on at least one of them.
    for _ in 0..5 {
        let seen = write_while_closed(broker.local_addr(), &burst, 0xE0);
        check_disconnect_0x93(&seen);
    }
}

fn check_disconnect_0x93(seen: &Seen) {
    let codes: Vec<(u8, u8)> = seen
        .packets
        .iter()
        .map(|(b, body)| (*b, body.first().copied().unwrap_or(0)))
        .collect();
    // CONNACK (flags 0), PUBREC for the two within the Receive Maximum, DISCONNECT 0x93.
    assert_eq!(codes, vec![(0x20, 0), (0x50, 0), (0x50, 0), (0xE0, 0x93)]);
    assert!(
        seen.write_after.is_ok(),
        "writing after the DISCONNECT: {:?}",
        seen.write_after
    );
    assert!(
        seen.end.is_ok(),
        "an orderly end of stream, not {:?}",
        seen.end
    );
}

#[test]
fn a_refusing_connack_reaches_a_client_that_is_still_writing() {
    // [MQTT-3.2.2-5] a CONNACK with a non-zero return code, then the server closes the
    // connection; this client pipelines publishes after its CONNECT.
    let broker = broker_with(|c| c.auth.allow_anonymous = Some(false));
    let mut burst = packets::connect("anonymous", true, 60);
    while burst.len() < STILL_WRITING {
        burst.extend(packets::publish(
            "pipelined",
            &[1u8; 200],
            0,
            0,
            false,
            false,
        ));
    }
    for _ in 0..5 {
        let seen = write_while_closed(broker.local_addr(), &burst, 0x20);
        // 3.1.1: CONNACK return code 5, not authorized, and nothing else.
        assert_eq!(seen.packets, vec![(0x20, vec![0, 5])]);
        assert!(seen.write_after.is_ok(), "{:?}", seen.write_after);
        assert!(
            seen.end.is_ok(),
            "an orderly end of stream, not {:?}",
            seen.end
        );
    }
}

#[test]
fn disconnect_0x8e_reaches_a_client_taken_over_while_writing() {
    // (5.0) [MQTT-3.1.4-3] a second connection with the same client id takes over; the first
    // gets DISCONNECT 0x8E, Session taken over (section 4.13.2).
    let broker = broker_with(|_| {});
    let addr = broker.local_addr();
    let hello = connect5("twin", true, 60, &Props::new(), None);
    let mut burst = hello.clone();
    while burst.len() < STILL_WRITING {
        burst.extend(publish5(
            "twin/chatter",
            &[2u8; 200],
            0,
            0,
            false,
            &Props::new(),
        ));
    }
    let take_over = || {
        let mut twin = TcpStream::connect(addr).expect("connect");
        twin.write_all(&hello).expect("CONNECT");
        let mut connack = [0u8; 2];
        twin.read_exact(&mut connack).expect("CONNACK");
        assert_eq!(connack[0], 0x20);
    };
    let seen = write_while_closed_by(addr, &burst, 0xE0, take_over);
    let (first, last) = (seen.packets.first(), seen.packets.last());
    assert_eq!(first.map(|p| p.0), Some(0x20), "CONNACK first");
    assert_eq!(
        last.map(|(b, body)| (*b, body.first().copied())),
        Some((0xE0, Some(0x8E)))
    );
    assert!(seen.write_after.is_ok(), "{:?}", seen.write_after);
    assert!(
        seen.end.is_ok(),
        "an orderly end of stream, not {:?}",
        seen.end
    );
}
