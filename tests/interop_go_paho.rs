//! Eclipse Paho's Go client (Debian's `golang-github-eclipse-paho.mqtt.golang-dev`, built with
//! Debian's `golang-go`), the client of many gateways and Go services in a fleet, against the
//! broker: stop-and-wait publishing at each QoS, a kept session, retained state, the seed's
//! request/response, a will when its process is killed, MQTT over WebSocket, and TLS through
//! Go's own stack (the server's certificate checked, a client certificate presented). The Go
//! side is `tests/interop/gopaho/main.go`. `.ci/run` installs both; without them (and not
//! under CI) these tests say so and pass.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use common::pki::Pki;
use common::{broker_with_hooks, go_paho_available, Raw, GO_PAHO_GOPATH, WAIT};

/// Builds the Go program once per run of this binary; its path.
fn go_program() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gopaho");
        let program = out_dir.join("gopaho");
        let output = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&program)
            .arg("./tests/interop/gopaho/")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("GO111MODULE", "off")
            .env("GOPATH", GO_PAHO_GOPATH)
            .env("GOCACHE", out_dir.join("cache"))
            .env("GOFLAGS", "")
            .env("GOENV", "off")
            .output()
            .expect("go build runs");
        assert!(
            output.status.success(),
            "go build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        program
    })
}

#[tokio::test]
async fn go_paho_publishes_subscribes_keeps_sessions_and_retained_state() {
    if !go_paho_available() {
        return;
    }
    let broker = common::broker();
    let run = Command::new(go_program())
        .arg("scenarios")
        .arg(broker.local_addr().port().to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Go scenarios finish within a minute")
        .expect("the Go program runs");
    // Each scenario checks, on the Go side:
    // - stop_and_wait_qos0/1/2: 300 messages, each waited for, arrive once each, in order, at
    //   their QoS ([MQTT-4.6.0-6] order; [MQTT-4.3.3-2] exactly once at QoS 2);
    // - kept_session: QoS 1 and 2 messages published while a CleanSession 0 subscriber was away
    //   arrive when it connects again, without subscribing again ([MQTT-3.1.2-4],
    //   [MQTT-3.1.2-5]);
    // - retained: a new subscription gets the retained state with RETAIN set ([MQTT-3.3.1-6],
    //   [MQTT-3.3.1-8]), and an empty retained message removes it ([MQTT-3.3.1-10]);
    // - request_response: 100 status requests answered on the response topic, in turn.
    common::assert_scenarios_passed(
        "Paho Go",
        &output,
        &[
            "stop_and_wait_qos0",
            "stop_and_wait_qos1",
            "stop_and_wait_qos2",
            "kept_session",
            "retained",
            "request_response",
        ],
    );
}

#[tokio::test]
async fn a_go_paho_clients_will_is_published_when_its_process_is_killed() {
    // [MQTT-3.1.2-8]: the will is published when the connection closes without DISCONNECT.
    if !go_paho_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("go/will/+", 1)], &[1]).await;
    let mut gateway = Command::new(go_program())
        .arg("hold-will")
        .arg(addr.port().to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the Go program starts");
    let mut lines = BufReader::new(gateway.stdout.take().expect("piped stdout")).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the Go client connects in time")
        .expect("its output");
    assert_eq!(line.as_deref(), Some("connected"));
    hooks.connected("go-gateway").await;
    gateway.kill().await.expect("SIGKILL");
    hooks.disconnected("go-gateway").await;
    let will = common::packets::parse_publish(&watcher.expect().await);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..], will.qos),
        ("go/will/gateway", &b"gateway lost"[..], 1)
    );
}

#[tokio::test]
async fn go_paho_over_websocket_streams_requests_in_order() {
    // golang.org/x/net's WebSocket under Paho Go (subprotocol "mqtt", each packet a binary
    // frame): 100 QoS 1 requests, each waited for, reach the gate once each, in order
    // ([MQTT-4.6.0-6]).
    if !go_paho_available() {
        return;
    }
    let broker = common::broker_with(|c| c.websocket.port = Some(0));
    let port = broker.websocket_local_addr().expect("ws listener").port();
    let result = go_result("ws", port, &[]).await;
    assert_eq!(result["ok"], true, "{}", result["detail"]);
}

/// Runs the Go program in `mode` against `port`, with these files after the port; its one
/// result line.
async fn go_result(mode: &str, port: u16, files: &[&std::path::Path]) -> serde_json::Value {
    let run = Command::new(go_program())
        .arg(mode)
        .arg(port.to_string())
        .args(files)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("the Go program ({mode}) finishes in time"))
        .expect("the Go program runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no result line ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn go_paho_over_tls_checks_the_server_and_presents_its_certificate() {
    // Go's own TLS stack (crypto/tls, neither OpenSSL nor rustls): the server's certificate is
    // checked against the CA (it names 127.0.0.1), then, with client certificates required, the
    // gateway presents its own.
    if !go_paho_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.GATE");
    let ca = pki.dir.path().join("ca.pem");
    let (cert, key) = (
        pki.dir.path().join("go-gate.pem"),
        pki.dir.path().join("go-gate.key"),
    );
    std::fs::write(&cert, &pki.client.0).expect("cert");
    std::fs::write(&key, &pki.client.1).expect("key");
    for require_client_cert in [false, true] {
        let broker = common::tls_broker(&pki, require_client_cert);
        let port = broker.tls_local_addr().expect("TLS listener").port();
        let result = if require_client_cert {
            go_result("tls", port, &[&ca, &cert, &key]).await
        } else {
            go_result("tls", port, &[&ca]).await
        };
        assert_eq!(
            result["ok"], true,
            "client certificate required: {require_client_cert}: {}",
            result["detail"]
        );
        if require_client_cert {
            // And the broker did ask for it: without one the gateway gets no session.
            let without = go_result("tls", port, &[&ca]).await;
            assert_eq!(without["ok"], false, "connected without a certificate");
        }
    }
}

#[tokio::test]
async fn go_paho_refuses_a_server_its_ca_did_not_sign() {
    // The check is real: against another CA, Go's TLS fails the handshake and says why.
    if !go_paho_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.GATE");
    let stranger = Pki::new("stranger");
    let broker = common::tls_broker(&pki, false);
    let port = broker.tls_local_addr().expect("TLS listener").port();
    let result = go_result("tls", port, &[&stranger.dir.path().join("ca.pem")]).await;
    assert_eq!(result["ok"], false);
    let detail = result["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("certificate signed by unknown authority"),
        "{detail}"
    );
}
