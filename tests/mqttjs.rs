//! MQTT.js (the npm package `mqtt`, version 5) against the broker with its default
//! configuration, as a new user would try it: a subscriber on `js/#` at QoS 2 and a publisher
//! sending 3,000 QoS 1 messages, 100 at a time; an app hearing 0x10 No matching subscribers;
//! and MQTT.js using what MQTT 5 adds (topic aliases both ways, subscription identifiers,
//! properties, No Local, Retain Handling, request/response, a shared subscription, Maximum
//! Packet Size, UNSUBACK reason codes, a resumed session), over TCP and over WebSocket; and
//! MQTT.js over 3.1.1 sending messages over the broker's packet size limit. The
//! scripts are in `tests/interop/mqttjs/`; `.ci/run` installs their dependencies with `npm ci`.

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

#[test]
fn mqttjs_over_mqtt_3_1_1_gets_a_message_over_the_size_limit_acknowledged_and_goes_on() {
    // 3.1.1 has no refusal: a QoS 1/2 PUBLISH over `limits.max_packet_size` is acknowledged
    // and dropped, the connection kept. Closed instead, MQTT.js (a persistent session) sends
    // it again after each reconnect [MQTT-4.4.0-1], and what it queued behind it never goes.
    if !mqttjs_available() {
        return;
    }
    let broker = common::broker_with(|c| c.limits.max_packet_size = 64 * 1024);
    let result = run_script(
        "too_large.js",
        &[&broker.local_addr().port().to_string(), "200000"],
    );
    assert_eq!(result["large_qos1"], "acknowledged", "{result}");
    assert_eq!(result["large_qos2"], "acknowledged", "{result}");
    assert_eq!(result["small"], "acknowledged", "{result}");
    assert_eq!(result["connects"], 1, "no reconnect: {result}");
    assert_eq!(result["closes"], 0, "{result}");
    assert_eq!(broker.metrics().snapshot().limits_hit, 2);
}

#[test]
fn mqttjs_uses_what_mqtt_5_adds() {
    if !mqttjs_available() {
        return;
    }
    let broker = common::broker();
    let port = broker.local_addr().port().to_string();
    what_mqtt_5_adds_holds(&run_script("v5_features.js", &[&port]));
}

#[test]
fn mqttjs_uses_what_mqtt_5_adds_over_websocket() {
    // The same, as MQTT.js in a browser connects: MQTT over WebSocket.
    if !mqttjs_available() {
        return;
    }
    let broker = common::broker_with(|c| c.websocket.port = Some(0));
    let ws = broker.websocket_local_addr().expect("websocket listener");
    let url = format!("ws://{ws}/mqtt");
    let port = broker.local_addr().port().to_string();
    what_mqtt_5_adds_holds(&run_script("v5_features.js", &[&port, &url]));
}

/// Checks what `v5_features.js` printed.
fn what_mqtt_5_adds_holds(r: &serde_json::Value) {
    // Topic aliases both ways: MQTT.js sent its own [MQTT-3.3.2-12] and resolved the broker's,
    // which stay within the 5 it allowed [MQTT-3.3.2-11].
    assert!(r["server_alias_maximum"].as_u64() > Some(0), "{r}");
    assert!(r["client_aliased"].as_u64() >= Some(4), "{r}");
    assert!(r["broker_aliased"].as_u64() >= Some(4), "{r}");
    assert!(r["broker_alias_max"].as_u64() <= Some(5), "{r}");
    let fleet = r["fleet"].as_array().expect("fleet");
    assert_eq!(
        fleet.len(),
        5,
        "one copy each for the two subscriptions: {r}"
    );
    for (seq, m) in fleet.iter().enumerate() {
        // In order [MQTT-4.6.0-6], under its own topic, at the publish's QoS (the highest
        // granted is 2) [MQTT-3.3.4-2], with both identifiers [MQTT-3.3.4-3] [MQTT-3.3.4-4].
        assert_eq!(m["topic"], "fleet/1AB/state", "{m}");
        assert_eq!(m["payload"], format!("state-{seq}"), "{m}");
        assert_eq!(m["qos"], 1, "{m}");
        assert_eq!(m["subscription_ids"], serde_json::json!([7, 9]), "{m}");
        // Properties forwarded unaltered: [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-20]
        // content type, the response topic [MQTT-3.3.2-15], [MQTT-3.3.2-16] correlation data,
        // [MQTT-3.3.2-17] user properties; the expiry counted down [MQTT-3.3.2-6].
        assert_eq!(m["payload_format"], true, "{m}");
        assert_eq!(m["content_type"], "application/json", "{m}");
        assert_eq!(m["response_topic"], "detrd/status/response/1AB", "{m}");
        assert_eq!(m["correlation"], format!("corr-{seq}"), "{m}");
        assert_eq!(
            m["user"],
            serde_json::json!({"site": "north", "seq": seq.to_string()}),
            "{m}"
        );
        let expiry = m["expiry"].as_u64().expect("an expiry");
        assert!((1..=600).contains(&expiry), "{m}");
    }
    // No Local: not the publisher's own message, but another client's [MQTT-3.8.3-3].
    assert_eq!(r["no_local"], serde_json::json!(["from-another-client"]));
    // Retain Handling 2: none [MQTT-3.3.1-11]; 1: for a new subscription only
    // [MQTT-3.3.1-10]; 0: at every subscribe [MQTT-3.3.1-9]; RETAIN 1 on each of those.
    let closed = serde_json::json!([{"payload": "closed", "retain": true}]);
    let rh = &r["retain_handling"];
    assert_eq!(rh["never"], serde_json::json!([]), "{rh}");
    assert_eq!(rh["new_subscription"], closed, "{rh}");
    assert_eq!(rh["existing_subscription"], serde_json::json!([]), "{rh}");
    assert_eq!(rh["every_subscribe"], closed, "{rh}");
    // A live retained message to Retain As Published 0 subscriptions: RETAIN 0 [MQTT-3.3.1-12],
    // once for the two of them.
    assert_eq!(
        r["live_retained"],
        serde_json::json!([{"payload": "open", "retain": false}])
    );
    // The seed's request/response: the gate answered on the Response Topic with the app's
    // Correlation Data.
    assert_eq!(r["answer"]["correlation"], "req-42", "{r}");
    assert_eq!(
        r["answer"]["payload"],
        r#"{"gate":"1AB","state":"closed","asked":"status?"}"#
    );
    // A shared subscription: each message to one member (section 4.8.2).
    let shared = &r["shared"];
    assert_eq!(
        (shared["deliveries"].as_u64(), shared["distinct"].as_u64()),
        (Some(20), Some(20)),
        "{shared}"
    );
    // Over the client's Maximum Packet Size: not sent, and the next message still is
    // [MQTT-3.1.2-25].
    assert_eq!(r["max_packet"], serde_json::json!(["big/2"]));
    // UNSUBACK: 0x00 Success, 0x11 No subscription existed [MQTT-3.11.3-1].
    assert_eq!(r["unsuback"], serde_json::json!([0, 17]));
    // A session kept for its expiry interval: present [MQTT-3.2.2-3], with its subscription and
    // the message queued while it was away [MQTT-3.1.2-23].
    assert_eq!(
        r["resumed"],
        serde_json::json!({"session_present": true, "got": ["while away"]})
    );
}
