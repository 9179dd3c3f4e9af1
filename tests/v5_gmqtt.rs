//! gmqtt (Python, from PyPI), an asyncio MQTT 5 client whose protocol code is its own (not
//! paho's, not MQTT.js's), against a real broker. The Python side is
//! `tests/interop/gmqtt_v5.py`; `.ci/run` installs gmqtt, and on a machine without it this
//! test says so and passes only when not under CI.

mod common;

#[test]
fn gmqtt_speaks_mqtt5_with_the_broker() {
    if !common::gmqtt_available() {
        return;
    }
    let broker = common::broker();
    let output = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/gmqtt_v5.py"
        ))
        .arg(broker.local_addr().port().to_string())
        .output()
        .expect("python3 runs");
    // Each scenario checks, on the Python side (every wait bounded):
    // - request_response: 50 requests, each answered in turn, reach the device with their
    //   Response Topic and Correlation Data, and the answers reach the app with the same
    //   Correlation Data ([MQTT-3.3.2-15] [MQTT-3.3.2-16]);
    // - subscription_identifiers: a message matching subscriptions with identifiers 7 (QoS 0)
    //   and 9 (QoS 1) arrives once, at QoS 1, with both ([MQTT-3.3.4-2] [MQTT-3.3.4-3]
    //   [MQTT-3.3.4-4]); Mosquitto 2.0.11, which sends a copy per subscription (which the
    //   spec allows), fails this scenario, so it can fail;
    // - no_local_and_retain_handling: the client's own message on a No Local subscription is
    //   not sent to it ([MQTT-3.8.3-3]), and a Retain Handling 2 subscription gets no retained
    //   message ([MQTT-3.3.1-11]): the next message each time is one sent after;
    // - properties_pass_through: User Properties in order ([MQTT-3.3.2-17] [MQTT-3.3.2-18]),
    //   Content Type ([MQTT-3.3.2-20]) and Payload Format Indicator ([MQTT-3.3.2-4]) unchanged,
    //   and a Message Expiry Interval no larger than sent ([MQTT-3.3.2-6]);
    // - topic_aliases: after a PUBLISH that sets Topic Alias 3, 19 with the alias alone reach
    //   the subscriber under the full topic, in order ([MQTT-3.3.2-12]).
    common::assert_scenarios_passed(
        "gmqtt",
        &output,
        &[
            "request_response",
            "subscription_identifiers",
            "no_local_and_retain_handling",
            "properties_pass_through",
            "topic_aliases",
        ],
    );
}
