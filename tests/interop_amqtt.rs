//! amqtt, a Python asyncio client with MQTT 3.1.1 protocol code of its own (not paho's), against
//! a real broker, over TCP and over WebSocket (its transport there is the `websockets` library).
//! `.ci/run` installs it; on a machine without it this test says so and passes only when not
//! under CI.

mod common;

/// What the script prints for `tag`.
fn expected(tag: &str) -> Vec<String> {
    [
        // [MQTT-3.3.1-9] RETAIN 0 on a message sent to an established subscription, at the QoS
        // it was published with (the subscription's is higher) [MQTT-3.8.4-6].
        "detrd/status/response/q0 payload-0 0 0",
        "detrd/status/response/q1 payload-1 1 0",
        "detrd/status/response/q2 payload-2 2 0",
        "gate/1AB/state closed 1 0",
        // [MQTT-3.3.1-8] RETAIN 1 on a retained message sent because of a new subscription.
        "gate/1AB/state closed 1 1",
        // [MQTT-3.1.2-5] the QoS 1 messages published while a CleanSession 0 client was away
        // are stored and delivered when it comes back, in order [MQTT-4.6.0-6].
        "detrd/status/request/dev1 ask-0 1 0",
        "detrd/status/request/dev1 ask-1 1 0",
        "detrd/status/request/dev1 ask-2 1 0",
    ]
    .iter()
    .map(|line| format!("{tag}/{line}"))
    .collect()
}

#[test]
fn amqtt_client_round_trip_retained_and_a_persistent_session_over_tcp_and_websocket() {
    if !common::amqtt_available() {
        return;
    }
    let broker = common::broker_with(|c| c.websocket.port = Some(0));
    let tcp = format!("mqtt://127.0.0.1:{}/", broker.local_addr().port());
    let lines = common::run_interop_script_with("amqtt_roundtrip.py", &[&tcp, "tcp"]);
    assert_eq!(lines, expected("tcp"));
    let ws = broker.websocket_local_addr().expect("ws listener");
    let ws = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    let lines = common::run_interop_script_with("amqtt_roundtrip.py", &[&ws, "ws"]);
    assert_eq!(lines, expected("ws"));
}
