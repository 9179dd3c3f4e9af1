//! MQTT 5: a PUBACK or PUBREC says 0x10 No matching subscribers when the message reached no one
//! (section 3.4.2.1: "If the Server knows that there are no matching subscribers, it MAY use
//! this Reason Code instead of 0x00", as Mosquitto does), so an app asking a gate that is not
//! there knows at once. A message queued for an offline persistent session, or taken by a
//! shared group, did reach a subscriber. 3.1.1 has no reason codes: its PUBACK stays plain.

mod common;

use common::v5::{ack_reasons, connect5, options, prop, publish5, subscribe5, Props};
use common::{broker, broker_with, packets, Frame, Raw};
use switchboard::registry::Freeze;

/// MQTT 5 PUBLISH packets without properties, one after another in one buffer: each as
/// (topic, payload, QoS, packet id, RETAIN).
fn publishes(messages: &[(&str, &[u8], u8, u16, bool)]) -> Vec<u8> {
    let none = Props::new();
    let mut burst = Vec::new();
    for &(topic, payload, qos, pid, retain) in messages {
        burst.extend(publish5(topic, payload, qos, pid, retain, &none));
    }
    burst
}

/// A v5 client with a session that outlives its connection by an hour.
async fn persistent(addr: std::net::SocketAddr, id: &str) -> Raw {
    let props = Props::new().u32(prop::SESSION_EXPIRY, 3600);
    let (raw, ack) = Raw::connect5(addr, &connect5(id, true, 60, &props, None)).await;
    assert_eq!(ack.code, mqttbytes::v5::ConnectReturnCode::Success);
    raw
}

/// The app's requests, in one burst, to the gates `1AB` (connected), `9ZZ` (offline, its
/// session kept), the shared group's topic, and `2CD` (not there at all), at QoS 1, 0 and 2;
/// returns the acknowledgements that came back, in order.
async fn requests_to_every_kind_of_gate(addr: std::net::SocketAddr) -> Vec<(u8, u16, u8)> {
    let mut present = Raw::handshake5(addr, "gate-1AB").await;
    assert_eq!(
        present
            .subscribe5(1, &Props::new(), &[("detrd/status/request/1AB", 1)])
            .await,
        vec![1]
    );
    let mut offline = persistent(addr, "gate-9ZZ").await;
    assert_eq!(
        offline
            .subscribe5(1, &Props::new(), &[("detrd/status/request/9ZZ", 1)])
            .await,
        vec![1]
    );
    offline
        .send(&common::v5::disconnect5(0, &Props::new()))
        .await;
    offline.expect_closed().await;
    let mut worker = Raw::handshake5(addr, "worker").await;
    assert_eq!(
        worker
            .subscribe5(1, &Props::new(), &[("$share/workers/jobs/#", 1)])
            .await,
        vec![1]
    );
    let mut app = Raw::handshake5(addr, "app").await;
    app.send(&publishes(&[
        ("detrd/status/request/1AB", b"status?", 1, 1, false),
        ("detrd/status/request/2CD", b"status?", 1, 2, false),
        ("detrd/status/request/2CD", b"qos 0", 0, 0, false),
        ("detrd/status/request/9ZZ", b"status?", 1, 3, false),
        ("jobs/1", b"job", 1, 4, false),
        ("detrd/status/request/2CD", b"status?", 2, 5, false),
    ]))
    .await;
    let mut got = ack_reasons(&app.sync5().await);
    // The QoS 2 flow goes on after a 0x10 PUBREC (a code below 0x80): PUBREL, PUBCOMP.
    app.send(&[0x62, 0x02, 0x00, 0x05]).await;
    got.extend(ack_reasons(&[app.expect().await]));
    got
}

/// What [`requests_to_every_kind_of_gate`] gets back: 0x10 for the requests to `2CD` only.
const EVERY_KIND_ACKNOWLEDGED: &[(u8, u16, u8)] = &[
    (0x40, 1, 0),
    (0x40, 2, 0x10),
    (0x40, 3, 0),
    (0x40, 4, 0),
    (0x50, 5, 0x10),
    (0x70, 5, 0),
];

#[tokio::test]
async fn an_acknowledgement_says_when_the_message_reached_no_subscriber() {
    // [MQTT-3.4.2-1] [MQTT-3.5.2-1]: a PUBACK or PUBREC reason code from the spec's list; 0x10
    // only where nothing matched, in the order the PUBLISH packets came [MQTT-4.6.0-2].
    let broker = broker();
    assert_eq!(
        requests_to_every_kind_of_gate(broker.local_addr()).await,
        EVERY_KIND_ACKNOWLEDGED
    );
}

#[tokio::test]
async fn the_acknowledgement_says_so_with_persistence_on_too() {
    // With `[persistence]` the acknowledgements wait for the disk; the codes are the same.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_path_buf();
    let broker = broker_with(|c| c.persistence.dir = Some(state));
    assert_eq!(
        requests_to_every_kind_of_gate(broker.local_addr()).await,
        EVERY_KIND_ACKNOWLEDGED
    );
}

#[tokio::test]
async fn a_publishers_own_no_local_subscription_is_no_subscriber() {
    // [MQTT-3.8.3-3]: with No Local the message does not go back to its publisher, so it
    // reached no one; a second client subscribed to it makes it 0x00 again.
    let broker = broker();
    let addr = broker.local_addr();
    let mut app = Raw::handshake5(addr, "app").await;
    // Options byte: QoS 1, No Local.
    let mut no_local = subscribe5(1, &Props::new(), &[("app/echo", 1)]);
    let last = no_local.len() - 1;
    no_local[last] = options(1, true, false, 0);
    app.send(&no_local).await;
    assert_eq!(app.expect().await.byte1, 0x90);
    app.send(&publish5("app/echo", b"me", 1, 1, false, &Props::new()))
        .await;
    assert_eq!(ack_reasons(&app.sync5().await), vec![(0x40, 1, 0x10)]);
    let mut other = Raw::handshake5(addr, "other").await;
    other.subscribe5(1, &Props::new(), &[("app/#", 1)]).await;
    app.send(&publish5("app/echo", b"you", 1, 2, false, &Props::new()))
        .await;
    assert_eq!(ack_reasons(&app.sync5().await), vec![(0x40, 2, 0)]);
}

#[tokio::test]
async fn a_311_publisher_gets_a_plain_puback() {
    // 3.1.1's PUBACK (section 3.4) is the packet id alone: remaining length 2.
    let broker = broker();
    let (mut app, _) = Raw::handshake(broker.local_addr(), "app", true).await;
    app.send(&packets::publish(
        "nobody/listens",
        b"x",
        1,
        7,
        false,
        false,
    ))
    .await;
    let ack = app.expect().await;
    assert_eq!((ack.byte1, ack.pid(), ack.body.len()), (0x40, 7, 2));
}

#[tokio::test]
async fn a_burst_the_registry_routes_says_so_too() {
    // A burst read while another client's SUBSCRIBE is on its way to the Registry goes
    // through the Registry (so that it is routed behind the change), as does a retained
    // message: its acknowledgements wait for the Registry's answer and say 0x10 where nothing
    // matched, as a burst routed on the worker's own thread does [MQTT-3.4.2-1]. The Registry
    // is frozen on a thread of its own (two workers) so that the burst is read while the
    // SUBSCRIBE waits.
    let broker = broker_with(|c| c.listener.workers = 2);
    let addr = broker.local_addr();
    let mut gate = Raw::handshake5(addr, "gate-1AB").await;
    let mut app = Raw::handshake5(addr, "app").await;
    let none = Props::new();
    let (thaw, frozen) = std::sync::mpsc::channel::<()>();
    broker.registry().do_send(Freeze(frozen));
    let mut burst = subscribe5(1, &none, &[("detrd/status/request/1AB", 1)]);
    burst.extend([0xC0, 0x00]); // PINGREQ
    gate.send(&burst).await;
    assert_eq!(
        gate.expect().await.byte1,
        0xD0,
        "PINGRESP: the Registry is frozen"
    );
    let mut burst = publishes(&[
        ("detrd/status/request/1AB", b"status?", 1, 1, false),
        ("detrd/status/request/2CD", b"status?", 1, 2, false),
        ("gate/2CD/state", b"closed", 1, 3, true),
    ]);
    burst.extend([0xC0, 0x00]);
    app.send(&burst).await;
    let mut frames = Vec::new();
    while frames.last().map(|f: &Frame| f.byte1) != Some(0xD0) {
        frames.push(app.expect().await);
    }
    thaw.send(()).expect("the Registry is frozen");
    frames.extend(app.sync5().await);
    assert_eq!(
        ack_reasons(&frames),
        vec![(0x40, 1, 0), (0x40, 2, 0x10), (0x40, 3, 0x10)],
        "{frames:?}"
    );
}
