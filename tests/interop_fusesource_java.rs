//! The FuseSource MQTT client for Java (Debian's `libmqtt-client-java`, the client of Apache
//! ActiveMQ's and Camel's MQTT tooling, compiled against with Debian's JDK) against the
//! broker: stop-and-wait publishing at each QoS over MQTT 3.1 (its default, protocol name
//! `MQIsdp`) and at QoS 1 over 3.1.1, a kept session, retained state, and a will when its
//! process is killed. The Java side is `tests/interop/fusesource/Scenarios.java`. `.ci/run`
//! installs both; without them (and not under CI) these tests say so and pass.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use common::{broker_with_hooks, fusesource_java_available, Raw, FUSESOURCE_CLASSPATH};

/// Compiles the Java program once per run of this binary; the directory of its classes.
fn java_classes() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let classes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fusesource");
        let output = std::process::Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .args(["-cp", FUSESOURCE_CLASSPATH])
            .arg("tests/interop/fusesource/Scenarios.java")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("javac runs");
        assert!(
            output.status.success(),
            "javac failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        classes
    })
}

/// The Java program in `mode` against `port`, its output piped.
fn java(mode: &str, port: u16) -> Command {
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!(
            "{}:{FUSESOURCE_CLASSPATH}",
            java_classes().display()
        ))
        .args(["Scenarios", mode, &port.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn the_fusesource_java_client_publishes_subscribes_keeps_sessions_and_retained_state() {
    if !fusesource_java_available() {
        return;
    }
    let broker = common::broker();
    let run = java("scenarios", broker.local_addr().port()).output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the Java scenarios finish within 90 s")
        .expect("the Java program runs");
    // Each scenario checks, on the Java side:
    // - stop_and_wait_31_qos0/1/2 (MQTT 3.1, `MQIsdp`) and stop_and_wait_311_qos1: 200
    //   messages, each publish waited for and then its delivery, arrive once each, in order,
    //   and an end marker after them finds nothing delivered twice ([MQTT-4.6.0-6] order;
    //   [MQTT-4.3.3-2] exactly once at QoS 2);
    // - kept_session: QoS 1 and 2 messages published while a CleanSession 0 subscriber was away
    //   arrive when it connects again, without subscribing again ([MQTT-3.1.2-4],
    //   [MQTT-3.1.2-5]);
    // - retained: a new subscription gets the retained message ([MQTT-3.3.1-6]), and after an
    //   empty retained message the next subscription's first message is one published after
    //   it subscribed ([MQTT-3.3.1-10]).
    common::assert_scenarios_passed(
        "FuseSource Java",
        &output,
        &[
            "stop_and_wait_31_qos0",
            "stop_and_wait_31_qos1",
            "stop_and_wait_31_qos2",
            "stop_and_wait_311_qos1",
            "kept_session",
            "retained",
        ],
    );
}

#[tokio::test]
async fn a_java_clients_will_is_published_when_its_process_is_killed() {
    // [MQTT-3.1.2-8]: the will is published when the connection closes without DISCONNECT.
    if !fusesource_java_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let (mut watcher, _) = Raw::handshake(addr, "watcher", true).await;
    watcher.subscribe(1, &[("java/will/+", 1)], &[1]).await;
    let mut gateway = java("hold-will", addr.port())
        .spawn()
        .expect("the Java program starts");
    let mut lines = BufReader::new(gateway.stdout.take().expect("piped stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the Java client connects in time")
        .expect("its output");
    assert_eq!(line.as_deref(), Some("connected"));
    hooks.connected("java-gateway").await;
    gateway.kill().await.expect("SIGKILL");
    hooks.disconnected("java-gateway").await;
    let will = common::packets::parse_publish(&watcher.expect().await);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..], will.qos),
        ("java/will/gateway", &b"gateway lost"[..], 1)
    );
}
