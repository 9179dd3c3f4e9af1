//! The managed connection against a fake broker on a raw socket, where the test needs to see
//! or withhold exact bytes: the inflight window, keep-alive against a silent broker, manual
//! acknowledgements.

mod common;

use std::time::Duration;

use common::*;
use switchboard_actors::{ConnectionEvent, Enqueue, PendingCount, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[actix_rt::test]
async fn inflight_window_pipelines() {
    // A fake broker that accepts, answers CONNACK, and counts PUBLISHes before acknowledging any.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut opts = options(port, "pipelined");
    opts.inflight = 8;
    let (device, _events) = connection(opts);
    for n in 0..20 {
        device
            .send(Enqueue::new("p", format!("{n}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .unwrap();
    }
    let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let connect = read_frame(&mut socket).await;
    assert_eq!(connect[0], 0x10);
    socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    let mut pids = Vec::new();
    for _ in 0..8 {
        let publish = read_frame(&mut socket).await;
        assert_eq!(publish[0] & 0xF6, 0x32, "QoS 1 PUBLISH");
        let topic_len = u16::from_be_bytes([publish[2], publish[3]]) as usize;
        pids.push(u16::from_be_bytes([
            publish[4 + topic_len],
            publish[5 + topic_len],
        ]));
    }
    // Eight in flight at once, no acknowledgement yet: and not a ninth.
    let ninth = tokio::time::timeout(Duration::from_millis(300), read_frame(&mut socket)).await;
    assert!(ninth.is_err(), "the window of 8 was exceeded");
    assert_eq!(device.send(PendingCount).await.unwrap(), 20);
    socket
        .write_all(&[0x40, 0x02, (pids[0] >> 8) as u8, pids[0] as u8])
        .await
        .unwrap();
    let next = read_frame(&mut socket).await;
    assert_eq!(next[0] & 0xF6, 0x32, "one PUBACK frees one slot");
}

async fn read_frame(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = vec![0u8; 2];
    socket.read_exact(&mut head).await.unwrap();
    let mut len = (head[1] & 0x7F) as usize;
    let mut shift = 7;
    let mut last = head[1];
    while last & 0x80 != 0 {
        let mut b = [0u8; 1];
        socket.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
        len |= ((b[0] & 0x7F) as usize) << shift;
        shift += 7;
        last = b[0];
    }
    let mut body = vec![0u8; len];
    socket.read_exact(&mut body).await.unwrap();
    head.extend(body);
    head
}

#[actix_rt::test]
async fn a_silent_broker_is_detected_by_keep_alive() {
    // A fake broker that answers CONNACK and then nothing, not even PINGRESP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut opts = options(listener.local_addr().unwrap().port(), "watchful");
    opts.keep_alive = Duration::from_secs(1);
    let (_conn, mut events) = connection(opts);
    let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    read_frame(&mut socket).await;
    socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    connected(&mut events).await;
    let started = std::time::Instant::now();
    let pingreq = read_frame(&mut socket).await;
    assert_eq!(pingreq, vec![0xC0, 0x00], "PINGREQ after the keep-alive");
    events
        .find(|e| {
            matches!(
                e,
                ConnectionEvent::Disconnected(switchboard_actors::LinkDown::KeepAliveTimeout)
            )
            .then_some(())
        })
        .await;
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[actix_rt::test]
async fn with_manual_acks_a_delivery_is_acknowledged_only_when_the_listener_says_so() {
    // A fake broker: CONNACK, then a QoS 1 and a QoS 2 PUBLISH.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut opts = options(port, "bridge-side");
    opts.manual_acks = true;
    let (conn, mut events) = connection(opts);
    let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_frame(&mut socket).await[0], 0x10);
    socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    // PUBLISH QoS 1 "a" pid 7 "x"; PUBLISH QoS 2 "b" pid 8 "y".
    socket
        .write_all(&[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x07, b'x'])
        .await
        .unwrap();
    socket
        .write_all(&[0x34, 0x06, 0x00, 0x01, b'b', 0x00, 0x08, b'y'])
        .await
        .unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < 2 {
        if let ConnectionEvent::MessageToAcknowledge(message, token) = events.next().await {
            tokens.push((message.topic, token));
        }
    }
    assert_eq!((tokens[0].0.as_str(), tokens[1].0.as_str()), ("a", "b"));
    // Nothing acknowledged yet: the next frame on the wire is this QoS 0 publish.
    conn.send(Enqueue::new("c", "z", QoS::AtMostOnce))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_frame(&mut socket).await[0],
        0x30,
        "no PUBACK before the listener's word"
    );
    conn.do_send(switchboard_actors::Acknowledge(tokens[0].1));
    assert_eq!(
        read_frame(&mut socket).await,
        [0x40, 0x02, 0x00, 0x07],
        "PUBACK 7"
    );
    conn.do_send(switchboard_actors::Acknowledge(tokens[1].1));
    assert_eq!(
        read_frame(&mut socket).await,
        [0x50, 0x02, 0x00, 0x08],
        "PUBREC 8"
    );
}
