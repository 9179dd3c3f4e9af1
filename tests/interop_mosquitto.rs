//! Stock clients work unchanged: mosquitto_pub and mosquitto_sub (Debian's mosquitto-clients)
//! against a real broker. `.ci/run` installs them; on a machine without them this test says so and
//! passes only when not under CI.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::broker_with_hooks;

fn mosquitto_clients_available() -> bool {
    let found = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto-clients must be installed under CI (.ci/run installs them)"
        );
        eprintln!(
            "SKIPPED: mosquitto_pub not found; install Debian's mosquitto-clients to run this test"
        );
    }
    found
}

#[tokio::test]
async fn mosquitto_sub_receives_what_mosquitto_pub_sends() {
    if !mosquitto_clients_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let port = broker.local_addr().port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "mosq-sub",
            "-q",
            "2",
            "-v",
            "-C",
            "3",
            "-W",
            "10",
        ])
        .args(["-t", "detrd/status/response/+"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    hooks
        .subscribed("mosq-sub", "detrd/status/response/+")
        .await;
    for (qos, body) in [("0", "ok-0"), ("1", "ok-1"), ("2", "ok-2")] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", qos])
            .args(["-t", "detrd/status/response/1AB.ENTER.DETRD", "-m", body])
            .status()
            .await
            .expect("mosquitto_pub runs");
        assert!(status.success());
    }
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub ends after 3 messages")
        .expect("mosquitto_sub output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        vec![
            "detrd/status/response/1AB.ENTER.DETRD ok-0",
            "detrd/status/response/1AB.ENTER.DETRD ok-1",
            "detrd/status/response/1AB.ENTER.DETRD ok-2",
        ]
    );
}

#[tokio::test]
async fn mosquitto_sub_gets_retained_message_with_retain_flag() {
    if !mosquitto_clients_available() {
        return;
    }
    let broker = common::broker();
    let port = broker.local_addr().port().to_string();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-r",
            "-q",
            "1",
            "-t",
            "gate/1AB/state",
            "-m",
            "closed",
        ])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success());
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "gate/#",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%r %t %p",
        ])
        .output()
        .await
        .expect("mosquitto_sub runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 gate/1AB/state closed"
    );
}

#[tokio::test]
async fn mosquitto_clients_speaking_mqtt5_pass_properties_through() {
    // mosquitto_pub/sub -V mqttv5 are an independent MQTT 5 implementation: content type
    // [MQTT-3.3.2-20], response topic, user property [MQTT-3.3.2-17] and correlation data
    // [MQTT-3.3.2-16] arrive unaltered.
    if !mosquitto_clients_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let port = broker.local_addr().port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            "mosq5-sub",
        ])
        .args([
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-t",
            "detrd/status/request/+",
        ])
        .args(["-F", "%t %p %C %R %P %D"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    hooks
        .subscribed("mosq5-sub", "detrd/status/request/+")
        .await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
        .args([
            "-t",
            "detrd/status/request/1AB.ENTER.DETRD",
            "-m",
            "status?",
        ])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args([
            "-D",
            "publish",
            "response-topic",
            "detrd/status/response/1AB.ENTER.DETRD",
        ])
        .args(["-D", "publish", "user-property", "site", "north"])
        .args(["-D", "publish", "correlation-data", "c-1"])
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub ends after 1 message")
        .expect("mosquitto_sub output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "detrd/status/request/1AB.ENTER.DETRD status? text/plain detrd/status/response/1AB.ENTER.DETRD site:north c-1"
    );
}
