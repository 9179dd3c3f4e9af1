//! `mosquitto_rr` (Debian's mosquitto-clients), the stock request/response tool, playing the
//! seed's server-side app: it asks a radar device actor for its status through the broker and
//! prints the answer. Over MQTT 5 it names a Response Topic of its own and Correlation Data,
//! and only an answer sent there with that data reaches it; over MQTT 3.1.1 it waits on the
//! radar's response topic. `.ci/run` installs the clients; on a machine without them this test
//! says so and passes only when not under CI.

mod common;

use std::time::Duration;

use switchboard::BackgroundBroker;

use common::{
    broker_with_hooks, mosquitto_client_lines, mosquitto_clients_available, spawn_mosquitto_client,
    Hooks,
};
use switchboard_actors::fleet::{
    status_request_topic, status_response_topic, RadarDetector, RadarStatus,
};
use switchboard_actors::{ConnectionOptions, DeviceActor, Envelope, ProtocolVersion};

const RADAR: &str = "1AB.ENTER.DETRD";

/// A broker with a radar device actor speaking `protocol` to it, once the radar subscribed to
/// its status requests; the broker (kept running while held), its lifecycle events and its port.
async fn broker_with_radar(protocol: ProtocolVersion) -> (BackgroundBroker, Hooks, u16) {
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let port = broker.local_addr().port();
    let mut options = ConnectionOptions::new("127.0.0.1", port, RADAR);
    options.protocol = protocol;
    // One detection an hour: nothing but the answers on the wire.
    DeviceActor::start(
        RadarDetector::new(RADAR, Duration::from_secs(3600)),
        options,
    );
    hooks.subscribed(RADAR, &status_request_topic(RADAR)).await;
    (broker, hooks, port)
}

/// Runs `mosquitto_rr` against the broker on `port` (waiting 5 s at most for the answer);
/// asserts it succeeded and returns what it printed (one line per answer, as `args`' `-F`
/// format says).
async fn mosquitto_rr(port: u16, args: &[&str]) -> String {
    let rr = spawn_mosquitto_client("mosquitto_rr", port, &[args, &["-W", "5"]].concat());
    mosquitto_client_lines(rr).await.join("\n")
}

/// Decodes an answer's JSON envelope as a radar's status, with the correlation id in it.
fn radar_status(json: &str) -> (Option<String>, RadarStatus) {
    let envelope: Envelope = serde_json::from_str(json).expect("a JSON envelope");
    let status = serde_json::from_value(envelope.body).expect("a radar status");
    (envelope.correlation_id, status)
}

#[actix_rt::test]
async fn mosquitto_rr_over_mqtt_5_gets_the_radars_answer_on_its_own_response_topic() {
    if !mosquitto_clients_available() {
        return;
    }
    let (_broker, mut hooks, port) = broker_with_radar(ProtocolVersion::V5).await;

    // Three apps in turn, each with a response topic and correlation data of its own: each gets
    // its own answer (MQTT 5 section 4.10: the responder publishes to the Response Topic with
    // the request's Correlation Data).
    for n in 1..=3 {
        let app = format!("rr-app-{n}");
        let answers = format!("apps/{app}/answers");
        let request = format!(r#"{{"correlation_id":"req-{n}","body":{{}}}}"#);
        let correlation = format!("corr-{n}");
        let answer = mosquitto_rr(
            port,
            &[
                "-V",
                "5",
                "-q",
                "1",
                "-i",
                &app,
                "-t",
                &status_request_topic(RADAR),
                "-e",
                &answers,
                "-D",
                "publish",
                "correlation-data",
                &correlation,
                "-m",
                &request,
                "-F",
                "%D|%C|%F|%p",
            ],
        )
        .await;
        // The answer carries the Correlation Data back, says it is JSON, and holds the JSON
        // envelope's correlation id too.
        let fields: Vec<&str> = answer.splitn(4, '|').collect();
        assert_eq!(fields.len(), 4, "{answer}");
        assert_eq!(
            fields[..3],
            [&*correlation, "application/json", "1"],
            "{answer}"
        );
        let (correlation_id, status) = radar_status(fields[3]);
        assert_eq!(correlation_id, Some(format!("req-{n}")));
        assert_eq!(status.device, RADAR);
        assert!(status.healthy);
        hooks.subscribed(&app, &answers).await;
    }
}

#[actix_rt::test]
async fn mosquitto_rr_over_mqtt_3_1_1_gets_the_radars_answer_on_its_response_topic() {
    if !mosquitto_clients_available() {
        return;
    }
    let (_broker, _hooks, port) = broker_with_radar(ProtocolVersion::V3_1_1).await;

    // No Response Topic in MQTT 3.1.1: the radar answers on its own response topic, where
    // mosquitto_rr subscribed before it published the request.
    let answer = mosquitto_rr(
        port,
        &[
            "-V",
            "311",
            "-q",
            "1",
            "-t",
            &status_request_topic(RADAR),
            "-e",
            &status_response_topic(RADAR),
            "-m",
            r#"{"correlation_id":"req-311","body":{}}"#,
        ],
    )
    .await;
    let (correlation_id, status) = radar_status(&answer);
    assert_eq!(correlation_id.as_deref(), Some("req-311"));
    assert_eq!(status.device, RADAR);
}
