//! MQTT over WebSocket from a real browser: MQTT.js's browser bundle in headless Chromium
//! (Debian's, driven by puppeteer-core) connects with the browser's own WebSocket (which offers
//! permessage-deflate; the broker's handshake declines it), over MQTT 3.1.1 and 5. A
//! retained state set over TCP reaches it, an upload it publishes reaches a TCP subscriber
//! unchanged, and what it publishes to its own subscription comes back in order; over `ws://`,
//! and over `wss://` with Chromium's own TLS (the test CA unchecked). `.ci/run`
//! installs Chromium and the npm packages; on a machine without them this test says so and
//! passes only when not under CI.

mod common;

use common::pki::Pki;
use common::{
    broker_with, browser_available, mqttjs_available, mqttjs_dir, packets, run_browser_script, Raw,
};

/// Bytes of the upload the page publishes: more than one 64 KiB read or frame.
const UPLOAD: usize = 200_000;

/// Runs `browser_mqtt.js` against the broker's WebSocket listener at `url` (`ws://` or
/// `wss://`) at `protocol_version` and returns what the page saw, asserting it succeeded.
fn run_page(url: String, protocol_version: u8) -> serde_json::Value {
    let bundle = mqttjs_dir().join("node_modules/mqtt/dist/mqtt.min.js");
    run_browser_script(
        "browser_mqtt.js",
        [
            url,
            bundle.display().to_string(),
            protocol_version.to_string(),
            UPLOAD.to_string(),
        ],
    )
}

/// The page's round trip at `protocol_version`, over `wss://` if `secure`.
async fn browser_round_trip(protocol_version: u8, secure: bool) {
    if !browser_available() || !mqttjs_available() {
        return;
    }
    let pki = Pki::new("browser");
    let broker = broker_with(|c| {
        if secure {
            c.websocket.tls_port = Some(0);
            pki.serve(&mut c.tls, false);
        } else {
            c.websocket.port = Some(0);
        }
    });
    let url = if secure {
        let wss = broker.websocket_tls_local_addr().expect("wss listener");
        format!("wss://{wss}/mqtt")
    } else {
        let ws = broker.websocket_local_addr().expect("websocket listener");
        format!("ws://{ws}/mqtt")
    };
    let (mut gate, _) = Raw::handshake(broker.local_addr(), "gate-1AB", true).await;
    gate.publish_acked("gate/1AB/state", b"closed", 1, true)
        .await;
    gate.subscribe(2, &[("browser/#", 1)], &[1]).await;

    let seen = tokio::task::spawn_blocking(move || run_page(url, protocol_version))
        .await
        .expect("the page ran");
    assert_eq!(seen["protocol"], protocol_version);
    assert_eq!(seen["granted"], serde_json::json!([1]));
    // [MQTT-3.3.1-6] the retained state on subscribing, [MQTT-3.3.1-8] with RETAIN set.
    assert_eq!(
        seen["retained"],
        serde_json::json!({ "topic": "gate/1AB/state", "text": "closed", "qos": 1 })
    );
    // [MQTT-4.6.0-6] its own 50 states back, in the order it published them.
    let states: Vec<String> = (0..50).map(|i| format!("state-{i}")).collect();
    assert_eq!(seen["states"], serde_json::json!(states));

    // The upload crossed from the browser's WebSocket to a TCP subscriber unchanged.
    let upload = packets::parse_publish(&gate.recv().await.expect("the browser's upload"));
    assert_eq!(upload.topic, "browser/upload");
    assert_eq!(upload.payload.len(), UPLOAD);
    assert!(upload
        .payload
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 256) as u8));
}

#[tokio::test]
async fn in_chromium_mqtt_js_over_websocket_speaks_mqtt_3_1_1() {
    browser_round_trip(4, false).await;
}

#[tokio::test]
async fn in_chromium_mqtt_js_over_websocket_speaks_mqtt_5() {
    browser_round_trip(5, false).await;
}

#[tokio::test]
async fn in_chromium_mqtt_js_over_secure_websocket_speaks_mqtt_5() {
    browser_round_trip(5, true).await;
}
