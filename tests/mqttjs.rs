//! MQTT.js (the npm package `mqtt`, version 5) against the broker with its default
//! configuration, as a new user would try it: a subscriber on `js/#` at QoS 2 and a publisher
//! sending 3,000 QoS 1 messages, 100 at a time. The scripts are in `tests/interop/mqttjs/`;
//! `.ci/run` installs their dependencies with `npm ci`.

mod common;

use std::process::Command;

use common::{mqttjs_available, mqttjs_dir};

/// Runs the script `name` with `args`; asserts it succeeded and returns the JSON line it
/// printed last.
fn run_script(name: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("node")
        .arg(mqttjs_dir().join(name))
        .args(args)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{name} printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{name} failed: {result}");
    result
}

/// Runs `burst.js` against the broker on `port`; returns the JSON line it printed.
fn burst(port: u16, protocol_version: &str) -> serde_json::Value {
    run_script(
        "burst.js",
        &[&port.to_string(), protocol_version, "3000", "100"],
    )
}

fn a_burst_keeps_the_subscriber_and_delivers_every_message(protocol_version: &str) {
    if !mqttjs_available() {
        return;
    }
    let broker = common::broker();
    let result = burst(broker.local_addr().port(), protocol_version);
    assert_eq!(result["received"], 3000, "{result}");
    assert_eq!(result["subscriber_closed"], false, "{result}");
    assert_eq!(result["duplicates"], 0, "{result}");
    // [MQTT-4.6.0-6] messages to one subscriber of one publisher keep their order.
    assert_eq!(result["out_of_order"], 0, "{result}");
    let m = broker.metrics().snapshot();
    assert_eq!(
        (m.online_queue_dropped, m.slow_consumer_disconnects),
        (0, 0)
    );
}

#[test]
fn mqttjs_burst_over_mqtt_3_1_1() {
    a_burst_keeps_the_subscriber_and_delivers_every_message("4");
}

#[test]
fn mqttjs_burst_over_mqtt_5() {
    a_burst_keeps_the_subscriber_and_delivers_every_message("5");
}

#[test]
fn mqttjs_takes_no_matching_subscribers_as_a_success() {
    // (5.0) section 3.4.2.1: 0x10 No matching subscribers is a success code; MQTT.js's publish
    // callback gets no error and the code, and its QoS 2 flow goes on after such a PUBREC.
    if !mqttjs_available() {
        return;
    }
    let broker = common::broker();
    let result = run_script(
        "no_subscribers.js",
        &[&broker.local_addr().port().to_string()],
    );
    assert_eq!(
        result["qos1"],
        serde_json::json!({"error": null, "reason_code": 16})
    );
    // The QoS 2 flow completed (its callback came after PUBCOMP) after a PUBREC with 0x10.
    assert_eq!(
        result["qos2"],
        serde_json::json!({"error": null, "reason_code": 16})
    );
    assert_eq!(
        result["listened"],
        serde_json::json!({"error": null, "reason_code": 0})
    );
}
