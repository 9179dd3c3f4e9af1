//! The Eclipse Paho C client (Debian's `paho.mqtt.c-examples`: `paho_c_pub` and `paho_c_sub`),
//! the library many embedded devices are built on, with OpenSSL for TLS: MQTT 3.1.1 and 5 over
//! plain TCP, over TLS with the server's certificate checked against the CA and with a client
//! certificate, and over WebSocket (`ws://` and `wss://`, Paho's own WebSocket code). `.ci/run` installs it; on a machine without it these tests say so and
//! pass only when not under CI.

mod common;

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::pki::Pki;
use common::{broker_with_hooks, paho_c_available, Hooks, WAIT};

/// A `paho_c_sub` subscribed at QoS 1 to `topic` on `connection` (e.g. `tcp://127.0.0.1:1883`),
/// speaking MQTT `version` (`311` or `5`), with `extra` arguments (TLS files); and its output,
/// one line per message.
fn spawn_sub(
    connection: &str,
    id: &str,
    version: &str,
    topic: &str,
    extra: &[&std::ffi::OsStr],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new("paho_c_sub")
        .args([
            "-c", connection, "-i", id, "-V", version, "-q", "1", "-t", topic,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("paho_c_sub starts");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

/// Publishes `message` at QoS 1 with `paho_c_pub`, which exits 0 once its PUBACK came.
async fn publish(
    connection: &str,
    id: &str,
    version: &str,
    topic: &str,
    message: &str,
    extra: &[&std::ffi::OsStr],
) {
    let out = Command::new("paho_c_pub")
        .args(["-c", connection, "-i", id, "-V", version, "-q", "1"])
        .args(["-t", topic, "-m", message])
        .args(extra)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .unwrap_or_else(|_| panic!("paho_c_pub {id} did not finish"))
        .expect("paho_c_pub runs");
    assert!(
        out.status.success(),
        "paho_c_pub {id}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next message `paho_c_sub` printed.
async fn next_message(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a message in time")
        .expect("paho_c_sub output")
        .expect("paho_c_sub still running")
}

/// A status request from the app to gate `1AB` and back through the broker on `connection`,
/// for each MQTT version: `paho_c_sub` as the gate, `paho_c_pub` as the app.
async fn request_reaches_the_gate(
    connection: &str,
    hooks: &mut Hooks,
    extra: &[&std::ffi::OsStr],
    label: &str,
) {
    for version in ["311", "5"] {
        let gate = format!("paho-c-gate-{label}-{version}");
        let topic = "detrd/status/request/1AB.ENTER.DETRD";
        let (mut sub, mut lines) = spawn_sub(connection, &gate, version, topic, extra);
        hooks.subscribed(&gate, topic).await;
        let message = format!("status? ({label}, MQTT {version})");
        let app = format!("paho-c-app-{label}-{version}");
        publish(connection, &app, version, topic, &message, extra).await;
        assert_eq!(next_message(&mut lines).await, message);
        sub.kill().await.expect("paho_c_sub stops");
    }
}

#[tokio::test]
async fn paho_c_publishes_and_subscribes_over_mqtt_3_1_1_and_5() {
    // [MQTT-4.3.2-1] QoS 1: paho_c_pub exits 0 only once its PUBACK came.
    if !paho_c_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let connection = format!("tcp://127.0.0.1:{}", broker.local_addr().port());
    request_reaches_the_gate(&connection, &mut hooks, &[], "tcp").await;
}

#[tokio::test]
async fn paho_c_over_websocket_and_secure_websocket() {
    // Paho C's own WebSocket code (its `ws://` and `wss://` connections), MQTT 3.1.1 and 5:
    // the request reaches the gate, and a message longer than a WebSocket frame's 16-bit
    // length (so sent with the 64-bit one) arrives whole.
    if !paho_c_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.DETRD");
    let ca = pki.dir.path().join("ca.pem");
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.websocket.port = Some(0);
        c.websocket.tls_port = Some(0);
        pki.serve(&mut c.tls, false);
    });
    let ws = broker.websocket_local_addr().expect("WebSocket listener");
    let wss = broker
        .websocket_tls_local_addr()
        .expect("secure WebSocket listener");
    let connection = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    request_reaches_the_gate(&connection, &mut hooks, &[], "ws").await;
    let secure = format!("wss://127.0.0.1:{}/mqtt", wss.port());
    let extra: &[&std::ffi::OsStr] = &["--cafile".as_ref(), ca.as_os_str()];
    request_reaches_the_gate(&secure, &mut hooks, extra, "wss").await;

    let topic = "detrd/state/1AB.ENTER.DETRD";
    let (mut sub, mut lines) = spawn_sub(&connection, "paho-c-ws-watch", "5", topic, &[]);
    hooks.subscribed("paho-c-ws-watch", topic).await;
    let long: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    publish(&secure, "paho-c-wss-radar", "311", topic, &long, extra).await;
    assert_eq!(next_message(&mut lines).await, long);
    sub.kill().await.expect("paho_c_sub stops");
}

/// Writes the client certificate and key of `pki` as files, for OpenSSL-based clients.
fn client_files(pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        pki.dir.path().join("paho-gate.pem"),
        pki.dir.path().join("paho-gate.key"),
    );
    std::fs::write(&cert, &pki.client.0).expect("cert");
    std::fs::write(&key, &pki.client.1).expect("key");
    (cert, key)
}

#[tokio::test]
async fn paho_c_over_tls_checks_the_server_and_presents_its_certificate() {
    // OpenSSL under Paho C: the server's certificate is checked against the CA (by address:
    // the certificate names 127.0.0.1), then, with client certificates required, the device
    // presents its own.
    if !paho_c_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.DETRD");
    let ca = pki.dir.path().join("ca.pem");
    let (cert, key) = client_files(&pki);
    for require_client_cert in [false, true] {
        let (broker, mut hooks) = broker_with_hooks(|c| {
            c.tls.port = Some(0);
            pki.serve(&mut c.tls, require_client_cert);
        });
        let port = broker.tls_local_addr().expect("TLS listener").port();
        let connection = format!("ssl://127.0.0.1:{port}");
        let mut extra: Vec<&std::ffi::OsStr> = vec!["--cafile".as_ref(), ca.as_os_str()];
        if require_client_cert {
            extra.extend(["--cert".as_ref(), cert.as_os_str()]);
            extra.extend(["--key".as_ref(), key.as_os_str()]);
        }
        let label = if require_client_cert { "mtls" } else { "tls" };
        request_reaches_the_gate(&connection, &mut hooks, &extra, label).await;
    }
}

#[tokio::test]
async fn paho_c_refuses_a_server_its_ca_did_not_sign() {
    // The check is real: against another CA's bundle OpenSSL fails the handshake, Paho says
    // so, and no CONNECT reaches the broker. (paho_c_pub then keeps retrying: it is stopped
    // once it has reported the failure.)
    if !paho_c_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.DETRD");
    let stranger = Pki::new("stranger");
    let broker = common::tls_broker(&pki, false);
    let port = broker.tls_local_addr().expect("TLS listener").port();
    let other_ca: &Path = &stranger.dir.path().join("ca.pem");
    let mut publisher = Command::new("paho_c_pub")
        .args([
            "-c",
            &format!("ssl://127.0.0.1:{port}"),
            "-i",
            "paho-c-doubter",
        ])
        .args(["-q", "1", "-t", "detrd/status/request/x", "-m", "x"])
        .arg("--cafile")
        .arg(other_ca)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("paho_c_pub starts");
    let stderr = publisher.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let failed = async {
        while let Some(line) = lines.next_line().await.expect("paho_c_pub output") {
            let done = line.contains("Connect failed");
            said.push(line);
            if done {
                return true;
            }
        }
        false
    };
    let failed = tokio::time::timeout(WAIT, failed)
        .await
        .expect("paho_c_pub reports the failure in time");
    publisher.kill().await.expect("paho_c_pub stops");
    assert!(failed, "paho_c_pub ended without saying: {said:?}");
    assert!(
        said.iter().any(|l| l.contains("certificate verify failed")),
        "{said:?}"
    );
    assert_eq!(
        broker.metrics().snapshot().connects,
        0,
        "no CONNECT was accepted"
    );
}
