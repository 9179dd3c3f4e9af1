//! How the broker reads packets off a socket (`src/session/reader.rs`): it holds no read
//! buffer between packets, so packets that arrive in pieces, packets larger than one read, and
//! bursts of many packets per read must all come through whole and in order.

mod common;

use common::packets::{self, parse_publish, ConnectSpec};
use common::{broker, Raw};
use tokio::io::AsyncWriteExt;

/// Writes `bytes` one byte per write, with Nagle off, so the broker sees packets in pieces.
async fn send_bytewise(raw: &mut Raw, bytes: &[u8]) {
    raw.stream.set_nodelay(true).expect("nodelay");
    for byte in bytes {
        raw.stream.write_all(&[*byte]).await.expect("write");
    }
}

#[tokio::test]
async fn packets_written_one_byte_at_a_time_arrive_whole() {
    // [MQTT-4.6.0-2] messages to a subscriber keep the order the publisher sent them in.
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "bytewise-sub", true).await;
    sub.subscribe(1, &[("pieces/#", 1)], &[1]).await;

    let mut publisher = Raw::connect(broker.local_addr()).await;
    send_bytewise(&mut publisher, &packets::connect("bytewise-pub", true, 60)).await;
    assert_eq!(publisher.expect().await.body, vec![0, 0], "CONNACK 0");
    for n in 0..5u16 {
        let payload = vec![n as u8; 300];
        let publish = packets::publish("pieces/a", &payload, 1, n + 1, false, false);
        send_bytewise(&mut publisher, &publish).await;
        let puback = publisher.expect().await;
        assert_eq!((puback.byte1, puback.pid()), (0x40, n + 1));
    }
    for n in 0..5u16 {
        let got = parse_publish(&sub.expect().await);
        assert_eq!(got.topic, "pieces/a");
        assert_eq!(got.payload, vec![n as u8; 300]);
    }
}

#[tokio::test]
async fn a_packet_larger_than_one_read_arrives_whole() {
    let broker = broker();
    let (mut sub, _) = Raw::handshake(broker.local_addr(), "large-sub", true).await;
    sub.subscribe(1, &[("large", 0)], &[0]).await;
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "large-pub", true).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    publisher
        .send(&packets::publish("large", &payload, 0, 0, false, false))
        .await;
    let got = parse_publish(&sub.expect().await);
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload == payload, "the payload arrived changed");
}

#[tokio::test]
async fn a_burst_of_packets_in_one_write_is_acknowledged_in_order() {
    // [MQTT-4.6.0-2] PUBACKs go out in the order the PUBLISH packets came.
    let broker = broker();
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "burst-pub", true).await;
    let mut burst = Vec::new();
    for pid in 1..=2_000u16 {
        burst.extend(packets::publish("burst", b"x", 1, pid, false, false));
    }
    publisher.send(&burst).await;
    for pid in 1..=2_000u16 {
        let puback = publisher.expect().await;
        assert_eq!((puback.byte1, puback.pid()), (0x40, pid));
    }
    // The connection reads on after the burst: a packet on its own still gets through.
    publisher.ping().await;
}

#[tokio::test]
async fn end_of_stream_inside_a_packet_is_an_abnormal_close_that_publishes_the_will() {
    // [MQTT-3.1.2-8] a network close without DISCONNECT publishes the will.
    let broker = broker();
    let (mut watcher, _) = Raw::handshake(broker.local_addr(), "will-watcher", true).await;
    watcher.subscribe(1, &[("gate/+/status", 0)], &[0]).await;
    let spec = ConnectSpec {
        client_id: "half-a-packet",
        will: Some(("gate/7/status", b"offline", 0, false)),
        ..Default::default()
    };
    let (mut device, code) = Raw::connect_with(broker.local_addr(), spec).await;
    assert_eq!(code, 0);
    let publish = packets::publish("gate/7/status", b"online-and-then-some", 0, 0, false, false);
    device.send(&publish[..publish.len() / 2]).await;
    device.stream.shutdown().await.expect("shutdown");
    device.expect_closed().await;
    let will = parse_publish(&watcher.expect().await);
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        ("gate/7/status", &b"offline"[..])
    );
}
