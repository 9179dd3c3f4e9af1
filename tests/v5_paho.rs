//! paho-mqtt (Python) speaking MQTT 5 against a real broker: request/response by Response Topic
//! and Correlation Data, user properties, content type and message expiry passed through
//! ([MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20] [MQTT-3.3.2-6]), a Subscription Identifier
//! ([MQTT-3.3.4-3]), a shared subscription, UNSUBACK reason codes ([MQTT-3.11.3-1]), and its
//! own PUBLISH sent right behind two overlapping SUBSCRIBEs reaching both, as one message with
//! both identifiers ([MQTT-3.3.4-3] [MQTT-3.3.4-4]). `.ci/run` installs paho-mqtt; on a machine
//! without it this test says so and passes only when not under CI.

mod common;

#[test]
fn paho_python_mqtt5_client() {
    if !common::paho_available() {
        return;
    }
    let broker = common::broker();
    let lines = common::run_interop_script("paho_v5.py", broker.local_addr().port());
    assert_eq!(
        lines,
        vec![
            "device suback [1]",
            "app suback [1]",
            "request detrd/status/request/1AB.ENTER.GATE response-topic=detrd/status/response/1AB.ENTER.GATE correlation=c-1 user=[('site', 'north')] content-type=application/json expiry-ok=True",
            "response detrd/status/response/1AB.ENTER.GATE {\"state\":\"closed\"} correlation=c-1 subscription-ids=[42]",
            "shared m1=2 m2=2",
            "unsuback [0, 17]",
            "behind the subscribes [('own/t', [2, 3]), ('own/t/last', [3])]",
        ]
    );
}
