//! paho-mqtt (Python) speaking MQTT 5 against a real broker: request/response by Response Topic
//! and Correlation Data, user properties, content type and message expiry passed through
//! ([MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20] [MQTT-3.3.2-6]), a Subscription Identifier
//! ([MQTT-3.3.4-3]), a shared subscription, UNSUBACK reason codes ([MQTT-3.11.3-1]). `.ci/run`
//! installs paho-mqtt; on a machine without it this test says so and passes only when not under CI.

mod common;

use std::process::Command;

#[test]
fn paho_python_mqtt5_client() {
    if !common::paho_available() {
        return;
    }
    let broker = common::broker();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_v5.py");
    let out = Command::new("python3")
        .args([script, &broker.local_addr().port().to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "device suback [1]",
            "app suback [1]",
            "request detrd/status/request/1AB.ENTER.GATE response-topic=detrd/status/response/1AB.ENTER.GATE correlation=c-1 user=[('site', 'north')] content-type=application/json expiry-ok=True",
            "response detrd/status/response/1AB.ENTER.GATE {\"state\":\"closed\"} correlation=c-1 subscription-ids=[42]",
            "shared m1=2 m2=2",
            "unsuback [0, 17]",
        ]
    );
}
