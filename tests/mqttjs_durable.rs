//! MQTT.js (the npm package `mqtt`, version 5) as a device fleet runs it, across a broker process
//! killed with SIGKILL in the middle of a stream and started again on the same port and
//! directory (`[persistence]`): the clients reconnect on their own, the devices with their
//! persistent sessions and without subscribing again, the app sending its unacknowledged
//! messages again. A device gets every message in order: at QoS 1 at least once, with at most
//! a window of duplicates; at QoS 2 exactly once. And a fleet of 1,000 devices finds every
//! session after the restart. The scripts are `tests/interop/mqttjs/durable.js` and
//! `fleet_durable.js`; `.ci/run` installs MQTT.js with `npm ci`.

mod common;

use std::process::{Command, Stdio};

use common::child::{spawn_reading_stdout, wait_line_within};
use common::durable::{kill_9, start_broker, start_broker_on};
use common::{mqttjs_available, mqttjs_dir};

/// Messages the app publishes.
const COUNT: u64 = 3000;
/// The app's messages unacknowledged at a time (the script's WINDOW).
const APP_WINDOW: u64 = 50;
/// The broker's default `sessions.max_inflight`: the most messages the device has
/// unacknowledged.
const DEVICE_WINDOW: u64 = 32;
/// Acknowledgements the app has had (PUBACK, or PUBCOMP at QoS 2) when the broker is killed.
const KILL_AFTER: u64 = 1000;

/// Runs the MQTT.js script `script` with the port of a broker (state in a new directory, the
/// `fsync` policy) and `args`; kills the broker with SIGKILL once the script prints `kill_at`,
/// starts it again on the same port and directory, and returns the JSON line the script printed
/// last, once it succeeded.
fn ride_through_kill_9(
    script: &str,
    args: &[String],
    kill_at: &str,
    fsync: &str,
) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, first_logs, addr) = start_broker(&state, fsync);
    let (node, lines) = spawn_reading_stdout(
        Command::new("node")
            .arg(mqttjs_dir().join(script))
            .arg(addr.port().to_string())
            .args(args)
            .stderr(Stdio::piped()),
    );
    wait_line_within(&lines, kill_at, common::WAIT * 4);
    kill_9(child);
    // Where the clients reconnect: the same port, as a restarted broker's clients find it.
    let (child, restarted_logs, _) = start_broker_on(&state, fsync, "info", "", addr.port());

    let out = node.wait_with_output().expect("node ends");
    // Every line it printed: the channel ends with its output. The result is the one JSON
    // object; an acknowledgement's line may come after it.
    let printed: Vec<String> = lines.iter().collect();
    let result = printed
        .iter()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| {
            panic!(
                "{script} printed no result: {printed:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    kill_9(child);
    if !out.status.success() {
        // What both brokers logged: where a stalled stream stopped.
        let first: Vec<String> = first_logs.try_iter().collect();
        let restarted: Vec<String> = restarted_logs.try_iter().collect();
        panic!(
            "{script} failed: {result}\nfirst broker's log:\n{}\nrestarted broker's log:\n{}",
            first.join("\n"),
            restarted.join("\n")
        );
    }
    result
}

fn a_device_and_an_app_ride_through_kill_9(protocol_version: &str, fsync: &str, qos: u8) {
    if !mqttjs_available() {
        return;
    }
    let args = [
        protocol_version.to_string(),
        COUNT.to_string(),
        APP_WINDOW.to_string(),
        qos.to_string(),
    ];
    let result = ride_through_kill_9("durable.js", &args, &format!("acked {KILL_AFTER}"), fsync);
    // Every message reached the device, though the broker was killed in the middle of the
    // stream: those acknowledged before the kill from the broker's log and the device's session,
    // the rest sent again by MQTT.js.
    assert_eq!(result["distinct"], COUNT, "{result}");
    // The device's session was there after the restart (3.1.1 [MQTT-3.2.2-2], 5.0
    // [MQTT-3.2.2-3]), and its subscription delivered without a new SUBSCRIBE (the script never
    // sends one again; 3.1.1 [MQTT-3.1.2-4], 5.0 [MQTT-3.1.2-5]).
    assert_eq!(
        result["device_sessions_present"],
        serde_json::json!([false, true]),
        "{result}"
    );
    // [MQTT-4.6.0-6] one topic is an ordered topic: the app's messages on it reached the
    // device in order (each counted at its first arrival; what came twice is below).
    assert_eq!(result["out_of_order"], 0, "{result}");
    // QoS 1 is at least once: the device's window may come again from the broker, and the
    // app's unacknowledged ones from MQTT.js, no more. QoS 2 (run over MQTT 5) is exactly once
    // across the kill [MQTT-4.3.3-10]: the broker kept the app's ids awaiting PUBREL and what
    // it had released to the device.
    let duplicates = result["duplicates"].as_u64().expect("duplicates");
    let bound = if qos == 2 {
        0
    } else {
        DEVICE_WINDOW + APP_WINDOW
    };
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates at QoS {qos}: at most {bound}: {result}"
    );
}

#[test]
fn mqttjs_clients_over_mqtt_3_1_1_lose_nothing_across_kill_9_with_fsync_always() {
    a_device_and_an_app_ride_through_kill_9("4", "always", 1);
}

#[test]
fn mqttjs_clients_over_mqtt_5_lose_nothing_across_kill_9_with_fsync_interval() {
    a_device_and_an_app_ride_through_kill_9("5", "interval", 1);
}

#[test]
fn mqttjs_clients_over_mqtt_5_get_qos_2_exactly_once_across_kill_9_with_fsync_never() {
    // Also what a PUBREL repeated after the restart gets: success, not 0x92, which MQTT.js
    // would take as the publish failing (tests/v5_session.rs).
    a_device_and_an_app_ride_through_kill_9("5", "never", 2);
}

#[test]
fn a_fleet_of_mqttjs_devices_resumes_its_sessions_after_kill_9() {
    // 1,000 devices with persistent MQTT 5 sessions reconnect at once to a broker started
    // again after `kill -9`: every one finds its session [MQTT-3.2.2-3] and gets all of its
    // commands through the subscription kept in it [MQTT-3.1.2-5] (MQTT 5's numbers).
    if !mqttjs_available() {
        return;
    }
    const DEVICES: u64 = 1000;
    const PER: u64 = 10;
    let args = [DEVICES.to_string(), PER.to_string()];
    let result = ride_through_kill_9("fleet_durable.js", &args, "half", "interval");
    assert_eq!(result["complete"], DEVICES, "{result}");
    assert_eq!(result["reconnects"], DEVICES, "{result}");
    assert_eq!(result["sessions_missing"], 0, "{result}");
}
