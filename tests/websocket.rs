//! MQTT over WebSocket (`[websocket]`, MQTT 5 chapter 6) with two independent clients, MQTT.js
//! (npm) and paho-mqtt (PyPI), both protocol versions; across transports (WebSocket publisher,
//! TCP subscriber and the reverse); over `wss://`; and raw frames (`common/ws.rs`), both
//! protocol versions: split packets, text messages, malformed frames, a wrong path. Passwords
//! over WebSocket: `tests/websocket_auth.rs`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::ws::RawWs;
use common::{broker_with, mqttjs_available, mqttjs_dir, packets, paho_available, Raw};
use switchboard::BackgroundBroker;
use tokio::io::AsyncWriteExt;

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

/// The next `count` MQTT packets from binary frames, wherever the frames split them; `bytes`
/// holds what is read and not yet a whole packet.
async fn read_packets(conn: &mut RawWs, bytes: &mut Vec<u8>, count: usize) -> Vec<common::Frame> {
    let mut frames = Vec::new();
    while frames.len() < count {
        if let Some((frame, used)) = packets::split_frame(bytes) {
            bytes.drain(..used);
            frames.push(frame);
            continue;
        }
        let (opcode, payload) = conn.next().await.expect("a binary frame");
        assert_eq!(opcode, 0x2, "binary frames only [MQTT-6.0.0-1]");
        bytes.extend(payload);
    }
    frames
}

#[tokio::test]
async fn mqtt5_packets_split_and_joined_across_frames_and_a_text_message_closes() {
    // The same rules for an MQTT 5 client: the subprotocol `mqtt` selected [MQTT-6.0.0-4];
    // packets that do not align with frames [MQTT-6.0.0-2]: a CONNECT in two frames, then a
    // SUBSCRIBE and a PUBLISH in one; a text message closes the connection [MQTT-6.0.0-1].
    use common::v5::{connect5, decode5, publish5, subscribe5, Packet5, Props};
    let broker = ws_broker();
    let ws = broker.websocket_local_addr().expect("ws listener");
    let (mut conn, head) = RawWs::open(ws, "/mqtt").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{head}"
    );
    let connect = connect5("raw-ws-5", true, 60, &Props::new(), None);
    conn.binary(&connect[..7]).await;
    conn.binary(&connect[7..]).await;
    let mut bytes = Vec::new();
    let mut frames = read_packets(&mut conn, &mut bytes, 1).await;
    let mut both = subscribe5(1, &Props::new(), &[("raw5/#", 0)]);
    both.extend(publish5("raw5/t", b"over ws", 0, 0, false, &Props::new()));
    conn.binary(&both).await;
    frames.extend(read_packets(&mut conn, &mut bytes, 2).await);
    let kinds: Vec<u8> = frames.iter().map(|f| f.byte1 & 0xF0).collect();
    // The PUBLISH goes through the Registry after the SUBSCRIBE: the SUBACK comes first.
    assert_eq!(kinds, vec![0x20, 0x90, 0x30], "CONNACK, SUBACK, PUBLISH");
    match decode5(&frames[2]) {
        Packet5::Publish(p) => assert_eq!(&p.payload[..], b"over ws"),
        other => panic!("{other:?}"),
    }
    conn.frame(0x81, b"hello").await;
    conn.expect_closed().await;
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
