//! curl as an MQTT client: the tool on every machine, with MQTT code of its own (libcurl's
//! `mqtt.c`, MQTT 3.1.1). `curl -d DATA mqtt://host:port/TOPIC` publishes one QoS 0 message;
//! `curl mqtt://host:port/TOPIC` subscribes at QoS 0 and writes each message it gets to stdout
//! as a 2-byte topic length, the topic and the payload. `.ci/run` installs Debian's curl; on a
//! machine without it this test says so and passes only when not under CI.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::packets::{self, ConnectSpec};
use common::{broker_with_hooks, curl_available, HookEvent, Raw};
use switchboard::hooks::DisconnectReason;
use switchboard::ProtocolVersion;
use tokio::io::AsyncReadExt;

/// `curl` with these arguments; its status and what it wrote to stderr.
async fn curl(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl ends")
    .expect("curl runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What curl's subscriber writes for one message: topic length, topic, payload.
fn curl_record(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = (topic.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn curl_publishes_reach_a_subscriber_whole_across_every_remaining_length_boundary() {
    if !curl_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|c| c.limits.max_packet_size = 3 << 20);
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::handshake(addr, "gate-watcher", true).await;
    sub.subscribe(1, &[("gate/#", 1)], &[1]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "gate/1AB/state";
    let overhead = 2 + topic.len();
    // Remaining lengths on each side of where their encoding grows a byte (127/128,
    // 16,383/16,384, 2,097,151/2,097,152), and every byte value in the payload.
    for remaining in [127usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let payload: Vec<u8> = (0..remaining - overhead).map(|i| (i % 256) as u8).collect();
        let file = dir.path().join(format!("payload-{remaining}"));
        std::fs::write(&file, &payload).expect("payload file");
        let url = format!("mqtt://{addr}/{topic}");
        let data = format!("@{}", file.display());
        let (status, stderr) = curl(&["--data-binary", &data, &url]).await;
        assert!(status.success(), "curl publish of {remaining}: {stderr}");

        // [MQTT-3.3.1-9]: a message routed to an established subscription has RETAIN 0;
        // [MQTT-3.8.4-6]: at the lower of the published QoS (curl's 0) and the granted one.
        let got = packets::parse_publish(&sub.recv().await.expect("PUBLISH"));
        assert_eq!(got.topic, topic);
        assert_eq!((got.qos, got.retain), (0, false));
        assert!(
            got.payload == payload,
            "payload of remaining length {remaining} arrived changed ({} bytes)",
            got.payload.len()
        );

        // curl's connection is visible to the hooks, and it says goodbye with DISCONNECT.
        let connected = hooks
            .find(|e| match e {
                HookEvent::Connected(c) if c.client_id.starts_with("curl") => Some(c.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connected.protocol, ProtocolVersion::V3_1_1);
        assert!(connected.clean_session);
        let gone = hooks.disconnected(&connected.client_id).await;
        assert_eq!(gone.reason, DisconnectReason::Clean);
    }

    // Over `limits.max_packet_size`: that connection is closed and its message goes nowhere;
    // the next publish is the next thing the subscriber gets.
    let file = dir.path().join("too-big");
    std::fs::write(&file, vec![b'x'; (3 << 20) + 1]).expect("payload file");
    let url = format!("mqtt://{addr}/{topic}");
    // (Whether curl notices depends on how much it had written when the socket closed.)
    curl(&["--data-binary", &format!("@{}", file.display()), &url]).await;
    let (status, stderr) = curl(&["-d", "after", &url]).await;
    assert!(status.success(), "{stderr}");
    let got = packets::parse_publish(&sub.recv().await.expect("PUBLISH"));
    assert_eq!(got.payload, b"after");
}

#[tokio::test]
async fn a_curl_subscriber_gets_the_retained_state_then_every_live_message_in_order() {
    if !curl_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut gate, _) = Raw::handshake(addr, "gate-1AB", true).await;
    gate.publish_acked("gate/1AB/state", b"closed", 1, true)
        .await;

    let mut curl_sub = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "30"])
        .arg(format!("mqtt://{addr}/gate/1AB/state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl starts");
    let client_id = hooks
        .find(|e| match e {
            HookEvent::Subscribed(s) if s.filter == "gate/1AB/state" => Some(s.client_id.clone()),
            _ => None,
        })
        .await;
    assert!(client_id.starts_with("curl"), "{client_id}");

    // The retained state first [MQTT-3.3.1-6], then the live messages at every QoS, in the
    // order published [MQTT-4.6.0-6]; curl acknowledges nothing, as a QoS 0 subscriber.
    let mut expected = curl_record("gate/1AB/state", b"closed");
    for i in 0..60u16 {
        let body = format!("state-{i}");
        let qos = (i % 3) as u8;
        gate.send(&packets::publish(
            "gate/1AB/state",
            body.as_bytes(),
            qos,
            i + 2,
            false,
            false,
        ))
        .await;
        expected.extend(curl_record("gate/1AB/state", body.as_bytes()));
        match qos {
            1 => assert_eq!(gate.recv().await.expect("PUBACK").packet_type(), 4),
            2 => {
                assert_eq!(gate.recv().await.expect("PUBREC").packet_type(), 5);
                gate.send(&packets::ack(0x62, i + 2)).await;
                assert_eq!(gate.recv().await.expect("PUBCOMP").packet_type(), 7);
            }
            _ => {}
        }
    }

    let mut stdout = curl_sub.stdout.take().expect("curl's stdout");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while got.len() < expected.len() {
            let n = stdout.read(&mut chunk).await.expect("read curl's stdout");
            assert!(
                n > 0,
                "curl ended early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("curl wrote every message within 10 s");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    curl_sub.kill().await.expect("stop curl");
    // Its socket closing without DISCONNECT is a network close to the hooks.
    let gone = hooks.disconnected(&client_id).await;
    assert!(
        matches!(gone.reason, DisconnectReason::Network(_)),
        "{:?}",
        gone.reason
    );
}

#[tokio::test]
async fn curl_with_a_password_file_user_gets_in_and_a_wrong_password_or_none_is_refused() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    // Written by `mosquitto_passwd -b -c FILE alice s3cret` (Mosquitto 2.0.11).
    std::fs::write(
        &passwords,
        "alice:$7$101$KkuAleRaWpH/W1vd$mcZbfAMv/O/YmRFUKsggMGcwepJcy/SpAw0aj3qmYLqiJpSnyOBWgR+ApMfuF+oeMfEGIFZbnsv+fCyJODFeqQ==\n",
    )
    .expect("password file");
    let (broker, _hooks) = broker_with_hooks(|c| c.auth.password_file = Some(passwords));
    let addr = broker.local_addr();
    let spec = ConnectSpec {
        client_id: "watcher",
        username: Some("alice"),
        password: Some(b"s3cret"),
        ..Default::default()
    };
    let (mut sub, code) = Raw::connect_with(addr, spec).await;
    assert_eq!(code, 0);
    sub.subscribe(1, &[("radar/#", 0)], &[0]).await;

    let url = format!("mqtt://{addr}/radar/2CD/speed");
    // A wrong password: CONNACK 4 (bad user name or password), which curl reports and exits on.
    let (status, stderr) = curl(&["-u", "alice:wrong", "-d", "99", &url]).await;
    assert!(!status.success());
    assert!(stderr.contains("0004"), "{stderr}");
    // No user name where a password file is set: CONNACK 5 (not authorized).
    let (status, stderr) = curl(&["-d", "98", &url]).await;
    assert!(!status.success());
    assert!(stderr.contains("0005"), "{stderr}");
    // The right one: the message arrives, and it is the only one.
    let (status, stderr) = curl(&["-u", "alice:s3cret", "-d", "42", &url]).await;
    assert!(status.success(), "{stderr}");
    let got = packets::parse_publish(&sub.recv().await.expect("PUBLISH"));
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("radar/2CD/speed", &b"42"[..])
    );
}
