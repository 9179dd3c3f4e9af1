//! Debian's mosquitto clients speaking MQTT 5 (`-V mqttv5`), an MQTT 5 implementation independent
//! of ours, against a real broker. `.ci/run` installs them; on a machine without them this test
//! says so and passes only when not under CI.

mod common;

use common::{
    broker_with_hooks, mosquitto_client_lines, mosquitto_clients_available, spawn_mosquitto_sub,
};

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
    let sub = spawn_mosquitto_sub(
        broker.local_addr().port(),
        &[
            "-V",
            "mqttv5",
            "-i",
            "mosq5-sub",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-t",
            "detrd/status/request/+",
            "-F",
            "%t %p %C %R %P %D",
        ],
    );
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
    let lines = mosquitto_client_lines(sub).await;
    assert_eq!(
        lines,
        vec!["detrd/status/request/1AB.ENTER.DETRD status? text/plain detrd/status/response/1AB.ENTER.DETRD site:north c-1"]
    );
}

#[tokio::test]
async fn mosquitto_pub_speaking_mqtt5_takes_no_matching_subscribers_as_a_success() {
    // (5.0) section 3.4.2.1: 0x10 No matching subscribers is a success code [MQTT-3.4.2-1]:
    // mosquitto_pub prints it and exits 0, and its QoS 2 flow completes after such a PUBREC.
    if !mosquitto_clients_available() {
        return;
    }
    let broker = common::broker();
    let port = broker.local_addr().port().to_string();
    for qos in ["1", "2"] {
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-d"])
            .args(["-q", qos, "-t", "detrd/status/request/2CD", "-m", "status?"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(common::WAIT, out)
            .await
            .unwrap_or_else(|_| panic!("mosquitto_pub -q {qos} got no acknowledgement"))
            .expect("mosquitto_pub runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "mosquitto_pub -q {qos}: {said}");
        if qos == "1" {
            assert!(said.contains("received PUBACK (Mid: 1, RC:16)"), "{said}");
        } else {
            assert!(said.contains("received PUBCOMP"), "{said}");
        }
    }
}
