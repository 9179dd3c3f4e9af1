//! `[log] format = "json"`: the binary writes one JSON object per line, and each lifecycle
//! event (connected, subscribed, unsubscribed, disconnected) carries its fields.

mod common;

use common::child::{spawn, wait_line};
use common::{packets, Raw};

/// The next log line whose `message` starts with `message`, parsed; every line must be one JSON
/// object.
fn wait_event(logs: &std::sync::mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    loop {
        let line = wait_line(logs, message);
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        if event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message))
        {
            return event;
        }
    }
}

#[tokio::test]
async fn lifecycle_events_are_json_objects_with_their_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").expect("write");
    let (mut child, logs) = spawn(&["--port", "0", "-c", config.to_str().expect("utf-8")]);
    let listening = wait_event(&logs, "switchboard listening on");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "switchboard::broker");
    let addr: std::net::SocketAddr = listening["message"]
        .as_str()
        .and_then(|m| m.strip_prefix("switchboard listening on "))
        .and_then(|a| a.parse().ok())
        .expect("address");

    let mut raw = Raw::connect(addr).await;
    raw.send(&packets::connect("1AB.ENTER.DETRD", true, 60))
        .await;
    raw.expect().await;
    let connected = wait_event(&logs, "client connected");
    assert_eq!(connected["client_id"], "1AB.ENTER.DETRD");
    assert_eq!(connected["protocol"], "MQTT 3.1.1");
    assert_eq!(
        connected["addr"],
        raw.stream.local_addr().expect("addr").to_string()
    );
    raw.subscribe(1, &[("detrd/status/request/1AB.ENTER.DETRD", 1)], &[1])
        .await;
    let subscribed = wait_event(&logs, "client subscribed");
    assert_eq!(subscribed["client_id"], "1AB.ENTER.DETRD");
    assert_eq!(subscribed["filter"], "detrd/status/request/1AB.ENTER.DETRD");
    assert_eq!(subscribed["qos"], 1);
    raw.send(&packets::unsubscribe(
        2,
        &["detrd/status/request/1AB.ENTER.DETRD"],
    ))
    .await;
    raw.expect().await;
    let unsubscribed = wait_event(&logs, "client unsubscribed");
    assert_eq!(
        unsubscribed["filter"],
        "detrd/status/request/1AB.ENTER.DETRD"
    );
    raw.send(&[0xE0, 0x00]).await;
    let disconnected = wait_event(&logs, "client disconnected");
    assert_eq!(disconnected["client_id"], "1AB.ENTER.DETRD");
    assert_eq!(disconnected["reason"], "clean");
    drop(raw);
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn an_unknown_log_format_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, "[log]\nformat = \"xml\"\n").expect("write");
    let out = std::process::Command::new(common::child::BIN)
        .args(["--port", "0", "-c", config.to_str().expect("utf-8")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("log.format"), "{stderr}");
}
