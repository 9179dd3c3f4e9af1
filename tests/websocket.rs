//! MQTT over WebSocket (`[websocket]`, MQTT 5 chapter 6) with two independent clients, MQTT.js
//! (npm) and paho-mqtt (PyPI), both protocol versions; across transports (WebSocket publisher,
//! TCP subscriber and the reverse); over `wss://`; and raw frames: split packets, text
//! messages, malformed frames, a wrong path; clients that close while their password waits.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::packets::ConnectSpec;
use common::passwords::{
    app_sees_the_one_shot_state, closed_connects_ended_unchecked, one_shot_packets,
    set_password_rounds, CHECK_WAIT,
};
use common::{
    broker_with, eventually_within, mqttjs_available, mqttjs_dir, packets, paho_available, Raw,
};
use switchboard::BackgroundBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ws_broker() -> BackgroundBroker {
    broker_with(|c| c.websocket.port = Some(0))
}

/// Runs `ws_client.js` and returns its output lines as JSON, the process still running.
fn mqttjs(
    url: &str,
    version: &str,
    mode: &str,
    topic: &str,
    count: usize,
    tls: &[&std::path::Path],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut command = Command::new("node");
    command.arg(mqttjs_dir().join("ws_client.js")).args([
        url,
        version,
        mode,
        topic,
        &count.to_string(),
    ]);
    // The CA file, then a client certificate and key, if any.
    command.args(tls);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|e| serde_json::json!({ "unparsed": line, "why": e.to_string() }));
            let _ = tx.send(value);
        }
    });
    (child, rx)
}

fn next_line(rx: &std::sync::mpsc::Receiver<serde_json::Value>) -> serde_json::Value {
    rx.recv_timeout(std::time::Duration::from_secs(15))
        .expect("a line from ws_client.js")
}

fn expected(count: usize) -> serde_json::Value {
    serde_json::json!((0..count).map(|i| format!("m{i}")).collect::<Vec<_>>())
}

#[tokio::test]
async fn mqttjs_over_websocket_to_tcp_and_back_both_versions() {
    if !mqttjs_available() {
        return;
    }
    let broker = ws_broker();
    let ws = broker.websocket_local_addr().expect("ws listener");
    let url = format!("ws://{ws}/mqtt");
    for version in ["4", "5"] {
        // WebSocket publisher, TCP subscriber.
        let topic = format!("cross/ws-to-tcp/{version}");
        let (mut tcp_sub, _) = Raw::handshake(broker.local_addr(), "tcp-sub", true).await;
        tcp_sub.subscribe(1, &[(topic.as_str(), 1)], &[1]).await;
        let (mut publisher, lines) = mqttjs(&url, version, "pub", &topic, 5, &[]);
        assert_eq!(next_line(&lines), serde_json::json!({ "published": 5 }));
        assert!(publisher.wait().expect("node").success());
        let got: Vec<String> = tcp_sub
            .drain_acking()
            .await
            .into_iter()
            .map(|p| String::from_utf8(p.payload).expect("utf-8"))
            .collect();
        assert_eq!(
            serde_json::json!(got),
            expected(5),
            "in order [MQTT-4.6.0-6]"
        );

        // TCP publisher, WebSocket subscriber.
        let topic = format!("cross/tcp-to-ws/{version}");
        let (mut subscriber, lines) = mqttjs(&url, version, "sub", &topic, 5, &[]);
        assert_eq!(next_line(&lines), serde_json::json!({ "ready": true }));
        let (mut tcp_pub, _) = Raw::handshake(broker.local_addr(), "tcp-pub", true).await;
        for i in 0..5u16 {
            let payload = format!("m{i}");
            tcp_pub
                .send(&packets::publish(
                    &topic,
                    payload.as_bytes(),
                    1,
                    i + 1,
                    false,
                    false,
                ))
                .await;
            assert_eq!(tcp_pub.expect().await.byte1, 0x40);
        }
        assert_eq!(
            next_line(&lines),
            serde_json::json!({ "received": expected(5) })
        );
        assert!(subscriber.wait().expect("node").success());
    }
}

#[test]
fn paho_over_websocket_both_versions() {
    if !paho_available() {
        return;
    }
    let broker = ws_broker();
    let ws = broker.websocket_local_addr().expect("ws listener");
    let lines = common::run_interop_script_with("paho_ws.py", &[&ws.port().to_string(), "/mqtt"]);
    assert_eq!(
        lines,
        vec![
            "3.1.1 paho/ws/q0 3.1.1-0 0",
            "3.1.1 paho/ws/q1 3.1.1-1 1",
            "3.1.1 paho/ws/q2 3.1.1-2 2",
            "5 paho/ws/q0 5-0 0",
            "5 paho/ws/q1 5-1 1",
            "5 paho/ws/q2 5-2 2",
        ]
    );
}

/// A client-side WebSocket connection made by hand, for the frames no library would send: over
/// plain TCP, or over TLS (`wss://`).
struct RawWs<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends the opening handshake for `path` offering `mqtt`; returns the connection and the
    /// response head.
    async fn open(addr: SocketAddr, path: &str) -> (RawWs, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawWs::open_on(stream, addr, path).await
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawWs<S> {
    /// [`RawWs::open`] on `stream`, connected to `addr`.
    async fn open_on(mut stream: S, addr: SocketAddr, path: &str) -> (RawWs<S>, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(common::WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed during the handshake: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        (RawWs { stream, buf }, head)
    }

    /// Sends one masked frame (clients must mask, RFC 6455 section 5.3).
    async fn frame(&mut self, first_byte: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first_byte];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("write");
    }

    async fn binary(&mut self, payload: &[u8]) {
        self.frame(0x82, payload).await;
    }

    /// The next frame from the server: (opcode, payload); `None` once the server closed.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        self.next_within(common::WAIT).await
    }

    /// [`RawWs::next`], each read given `within`.
    async fn next_within(&mut self, within: std::time::Duration) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(self.buf[1] & 0x7f);
                let (len, at) = match len {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(within, self.stream.read(&mut chunk))
                .await
                .expect("a frame or EOF in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asserts the server ends the connection: a Close frame or EOF, and no MQTT data.
    async fn expect_closed(&mut self) {
        while let Some((opcode, payload)) = self.next().await {
            assert_eq!(
                opcode, 0x8,
                "expected a Close frame, got {opcode:#x} {payload:?}"
            );
        }
    }
}

#[tokio::test]
async fn packets_split_and_joined_across_frames() {
    // [MQTT-6.0.0-2] packets need not align with frames: a CONNECT in three frames, then a
    // SUBSCRIBE and a PINGREQ in one.
    let broker = ws_broker();
    let ws = broker.websocket_local_addr().expect("ws listener");
    let (mut conn, head) = RawWs::open(ws, "/mqtt").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "[MQTT-6.0.0-4] the server selects mqtt: {head}"
    );
    let connect = packets::connect("raw-ws", true, 60);
    conn.binary(&connect[..3]).await;
    conn.binary(&connect[3..9]).await;
    conn.binary(&connect[9..]).await;
    let (opcode, connack) = conn.next().await.expect("CONNACK");
    assert_eq!(
        (opcode, connack.as_slice()),
        (0x2, &[0x20, 0x02, 0x00, 0x00][..])
    );
    let mut both = packets::subscribe(1, &[("raw/#", 0)]);
    both.extend_from_slice(&[0xC0, 0x00]);
    conn.binary(&both).await;
    let mut replies = Vec::new();
    while replies.len() < 7 {
        let (opcode, payload) = conn.next().await.expect("SUBACK and PINGRESP");
        assert_eq!(opcode, 0x2, "binary frames only [MQTT-6.0.0-1]");
        replies.extend(payload);
    }
    // The SUBACK comes through the Registry, the PINGRESP at once: either may come first.
    let (suback, pingresp) = ([0x90, 0x03, 0x00, 0x01, 0x00], [0xD0, 0x00]);
    let in_either_order = [
        [&suback[..], &pingresp[..]].concat(),
        [&pingresp[..], &suback[..]].concat(),
    ];
    assert!(in_either_order.contains(&replies), "{replies:?}");
}

#[tokio::test]
async fn a_text_message_or_a_malformed_frame_closes_that_connection_only() {
    let broker = ws_broker();
    let ws = broker.websocket_local_addr().expect("ws listener");
    let (mut bystander, _) = Raw::handshake(broker.local_addr(), "bystander", true).await;

    // [MQTT-6.0.0-1] a data frame that is not binary closes the connection.
    let (mut text, _) = RawWs::open(ws, "/mqtt").await;
    text.binary(&packets::connect("text-ws", true, 60)).await;
    assert_eq!(text.next().await.expect("CONNACK").0, 0x2);
    text.frame(0x81, b"hello").await;
    text.expect_closed().await;

    // A frame with a reserved opcode (0x3) is malformed (RFC 6455 section 5.2).
    let (mut reserved, _) = RawWs::open(ws, "/mqtt").await;
    reserved.frame(0x83, b"\x10\x00").await;
    reserved.expect_closed().await;

    // An unmasked client frame is refused too (RFC 6455 section 5.1).
    let (mut unmasked, _) = RawWs::open(ws, "/mqtt").await;
    unmasked
        .stream
        .write_all(&[0x82, 0x02, 0xC0, 0x00])
        .await
        .expect("write");
    unmasked.expect_closed().await;

    // Garbage inside a binary frame is an MQTT protocol error, handled as on TCP.
    let (mut garbage, _) = RawWs::open(ws, "/mqtt").await;
    garbage.binary(&[0xF0, 0x00]).await;
    garbage.expect_closed().await;

    // The broker goes on: the TCP client is still served, and a new WebSocket client too.
    bystander.ping().await;
    let (mut fine, _) = RawWs::open(ws, "/mqtt").await;
    fine.binary(&packets::connect("fine-ws", true, 60)).await;
    assert_eq!(
        fine.next().await.expect("CONNACK").1,
        vec![0x20, 0x02, 0x00, 0x00]
    );
}

#[tokio::test]
async fn another_path_is_not_found_and_the_path_is_configurable() {
    let broker = broker_with(|c| {
        c.websocket.port = Some(0);
        c.websocket.path = "/broker".into();
    });
    let ws = broker.websocket_local_addr().expect("ws listener");
    let (_, head) = RawWs::open(ws, "/mqtt").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (mut conn, head) = RawWs::open(ws, "/broker").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.binary(&packets::connect("path-ws", true, 60)).await;
    assert_eq!(
        conn.next().await.expect("CONNACK").1,
        vec![0x20, 0x02, 0x00, 0x00]
    );
}

#[test]
fn websocket_is_off_unless_configured() {
    let broker = common::broker();
    assert_eq!(broker.websocket_local_addr(), None);
    assert_eq!(broker.websocket_tls_local_addr(), None);
}

#[test]
fn wss_needs_the_tls_certificate() {
    let mut config = common::test_config();
    config.websocket.tls_port = Some(0);
    let error = BackgroundBroker::start(config).err().expect("refused");
    assert!(error.to_string().contains("websocket.tls_port"), "{error}");
}

#[tokio::test]
async fn mqttjs_over_wss() {
    if !mqttjs_available() {
        return;
    }
    let pki = common::pki::Pki::new("ws-client");
    let broker = broker_with(|c| {
        c.websocket.tls_port = Some(0);
        pki.serve(&mut c.tls, false);
    });
    let wss = broker.websocket_tls_local_addr().expect("wss listener");
    let url = format!("wss://localhost:{}/mqtt", wss.port());
    let ca = pki.dir.path().join("ca.pem");
    mqttjs_round_trip(&url, "secure/ws", &[&ca]);
}

/// An MQTT.js subscriber and publisher (MQTT 5) on `topic` at `url`: three messages go from one
/// to the other. `tls`: the CA file, then a client certificate and key, if any.
fn mqttjs_round_trip(url: &str, topic: &str, tls: &[&std::path::Path]) {
    let (mut subscriber, sub_lines) = mqttjs(url, "5", "sub", topic, 3, tls);
    assert_eq!(next_line(&sub_lines), serde_json::json!({ "ready": true }));
    let (mut publisher, pub_lines) = mqttjs(url, "5", "pub", topic, 3, tls);
    assert_eq!(next_line(&pub_lines), serde_json::json!({ "published": 3 }));
    assert_eq!(
        next_line(&sub_lines),
        serde_json::json!({ "received": expected(3) })
    );
    assert!(publisher.wait().expect("node").success());
    assert!(subscriber.wait().expect("node").success());
}

#[tokio::test]
async fn mqttjs_over_wss_with_its_certificate_as_its_identity() {
    // tls.use_identity_as_username on the wss:// listener: MQTT.js presents a client certificate
    // (Common Name `ws-client`) and the ACL's %u is that name; without it the subscription and
    // the publishes would be denied and nothing would arrive.
    if !mqttjs_available() {
        return;
    }
    let pki = common::pki::Pki::new("ws-client");
    let acl = pki.dir.path().join("acl");
    std::fs::write(&acl, "pattern readwrite secure/%u/#\n").expect("acl");
    let broker = broker_with(|c| {
        c.websocket.tls_port = Some(0);
        pki.serve(&mut c.tls, true);
        c.tls.use_identity_as_username = true;
        c.auth.acl_file = Some(acl.clone());
    });
    let wss = broker.websocket_tls_local_addr().expect("wss listener");
    let url = format!("wss://localhost:{}/mqtt", wss.port());
    let (ca, cert, key) = (
        pki.dir.path().join("ca.pem"),
        pki.dir.path().join("client.pem"),
        pki.dir.path().join("client.key"),
    );
    std::fs::write(&cert, &pki.client.0).expect("cert");
    std::fs::write(&key, &pki.client.1).expect("key");
    mqttjs_round_trip(&url, "secure/ws-client/gate", &[&ca, &cert, &key]);
}

/// A broker with WebSocket listeners (`ws://`, and `wss://` with `pki`'s certificate) and a
/// password file holding `gate-1AB` (password `gate-secret`, 20,000 PBKDF2 rounds: some 300 ms
/// a check in a debug build).
fn ws_broker_with_a_gate(pki: &common::pki::Pki) -> (tempfile::TempDir, BackgroundBroker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwords");
    set_password_rounds(&path, "gate-1AB", "gate-secret", 20_000);
    let broker = broker_with(|c| {
        c.auth.password_file = Some(path);
        c.websocket.port = Some(0);
        c.websocket.tls_port = Some(0);
        pki.serve(&mut c.tls, false);
    });
    (dir, broker)
}

/// How the clients of [`ws_closed_while_the_password_waits`] leave.
#[derive(Clone, Copy, PartialEq)]
enum Leaving {
    /// A Close frame, what a WebSocket library sends; the TCP connection stays open for the
    /// server's Close, as a WebSocket client's does.
    Close,
    /// The TCP connection dropped.
    Dropped,
    /// Over `wss://`: a Close frame, then close_notify and end of stream.
    CloseOverTls,
}

/// Sends a Close frame (status 1000, normal closure).
async fn send_close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(conn: &mut RawWs<S>) {
    conn.frame(0x88, &[0x03, 0xE8]).await;
}

/// 20 WebSocket clients send a CONNECT with a wrong password and, once the broker has read it,
/// leave, `leaving` so. Their connections must end without waiting for the checks, and (but
/// for a few begun before the close was seen) none of them is checked and refused. Before the
/// Session read its stream while it waited (src/session/socket.rs, `peer_gone`), each waited
/// for its turn in the address's lane and its check: 20 refusals for nobody.
async fn ws_closed_while_the_password_waits(leaving: Leaving) {
    let pki = common::pki::Pki::new("ws-client");
    let (_dir, broker) = ws_broker_with_a_gate(&pki);
    let ws = broker.websocket_local_addr().expect("ws listener");
    let wss = broker.websocket_tls_local_addr().expect("wss listener");
    let tls = common::tls::client_config(&pki, &tokio_rustls::rustls::version::TLS13, false);
    let metrics = broker.metrics();
    let mut closed = Vec::new();
    let mut closed_over_tls = Vec::new();
    for i in 0..20u64 {
        let client_id = format!("gone-{i}");
        let connect = ConnectSpec {
            client_id: &client_id,
            username: Some("gate-1AB"),
            password: Some(b"guess"),
            ..Default::default()
        }
        .encode();
        let connect_read = || {
            eventually_within(common::WAIT, || {
                let read = metrics.traffic.totals().packets_received;
                async move { read == i + 1 }
            })
        };
        if leaving == Leaving::CloseOverTls {
            let tcp = TcpStream::connect(wss).await.expect("connect");
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let name = "localhost".try_into().expect("server name");
            let stream = connector.connect(name, tcp).await.expect("TLS handshake");
            let (mut conn, _) = RawWs::open_on(stream, wss, "/mqtt").await;
            conn.binary(&connect).await;
            connect_read().await;
            send_close(&mut conn).await;
            conn.stream.shutdown().await.expect("close_notify");
            closed_over_tls.push(conn);
            continue;
        }
        let (mut conn, _) = RawWs::open(ws, "/mqtt").await;
        conn.binary(&connect).await;
        connect_read().await;
        if leaving == Leaving::Close {
            send_close(&mut conn).await;
            closed.push(conn);
        } else {
            drop(conn);
        }
    }
    closed_connects_ended_unchecked(metrics, 20, "WebSocket CONNECTs").await;
}

#[tokio::test]
async fn websocket_connects_closed_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::Close).await;
}

#[tokio::test]
async fn websocket_connects_dropped_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::Dropped).await;
}

#[tokio::test]
async fn wss_connects_closed_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::CloseOverTls).await;
}

/// A one-shot publisher over WebSocket sends its CONNECT and, once the broker has read it, a
/// retained PUBLISH and a DISCONNECT, then a Close frame, while its password is checked: the
/// PUBLISH is still served, as over plain TCP (`tests/auth.rs`) and TLS (`tests/tls_auth.rs`).
#[tokio::test]
async fn packets_sent_after_a_connect_over_websocket_are_served_though_the_client_closed() {
    let pki = common::pki::Pki::new("ws-client");
    let (_dir, broker) = ws_broker_with_a_gate(&pki);
    let ws = broker.websocket_local_addr().expect("ws listener");
    let metrics = broker.metrics();
    let gate = ConnectSpec {
        client_id: "gate-1AB",
        username: Some("gate-1AB"),
        password: Some(b"gate-secret"),
        ..Default::default()
    };
    let (mut one_shot, _) = RawWs::open(ws, "/mqtt").await;
    one_shot.binary(&gate.encode()).await;
    eventually_within(common::WAIT, || {
        let read = metrics.traffic.totals().packets_received;
        async move { read == 1 }
    })
    .await;
    one_shot.binary(&one_shot_packets()).await;
    send_close(&mut one_shot).await;
    let (opcode, connack) = one_shot.next_within(CHECK_WAIT).await.expect("a CONNACK");
    assert_eq!(
        (opcode, connack.as_slice()),
        (0x2, &[0x20, 0x02, 0x00, 0x00][..]),
        "accepted"
    );
    // The password verified, so the app's CONNECT with it is not checked again.
    app_sees_the_one_shot_state(broker.local_addr(), gate).await;
}
