//! `GET /api/v1/clients/{id}/messages` and a client's `will` in the admin API, against a real
//! broker over real TCP: what a session holds (QoS 1/2 messages in flight with their packet ids
//! and stages, then queued, and inbound QoS 2 ids awaiting PUBREL), from a connected client's
//! Session and from an offline session the Registry stores; paging; a delayed will with when it
//! is due.

mod common;

use common::http::get;
use common::v5::{self, prop, Props, Will5};
use common::{broker_with_hooks, packets, Raw};
use serde_json::{json, Value};

/// The fields of a listed message this test checks (not the payload's base64 or the expiry).
fn brief(message: &Value) -> Value {
    json!({
        "state": message["state"], "pid": message["pid"], "topic": message["topic"],
        "payload": message["payload"], "qos": message["qos"], "retain": message["retain"],
        "subscription_ids": message["subscription_ids"],
    })
}

fn briefs(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(brief)
        .collect()
}

/// [MQTT-4.4.0-1] a session keeps its unacknowledged PUBLISH packets with their packet ids,
/// [MQTT-4.3.3-2] its inbound QoS 2 ids until PUBREL, and (MQTT 5) a will for its delay: the
/// API shows each as it stands, connected and offline.
#[tokio::test]
async fn a_sessions_messages_and_delayed_will_are_listed() {
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let will = Will5 {
        topic: "gate/7/state",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: Props::new().u32(prop::WILL_DELAY, 600),
    };
    let connect = v5::connect5(
        "gate-7",
        true,
        60,
        &Props::new().u32(prop::SESSION_EXPIRY, 3600),
        Some(&will),
    );
    let (mut gate, _) = Raw::connect5(addr, &connect).await;
    let sub_id = Props::new().var(prop::SUBSCRIPTION_ID, 9);
    gate.subscribe5(1, &sub_id, &[("gate/7/cmd", 2)]).await;
    // An inbound QoS 2 message left at PUBREC.
    gate.send(&v5::publish5(
        "gate/7/log",
        b"boot",
        2,
        77,
        false,
        &Props::new(),
    ))
    .await;
    assert_eq!(gate.expect().await.packet_type(), 5, "PUBREC");

    // Two messages the gate reads and does not acknowledge.
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.publish_acked("gate/7/cmd", b"open", 1, false).await;
    app.send(&packets::publish(
        "gate/7/cmd",
        b"close",
        2,
        2,
        false,
        false,
    ))
    .await;
    assert_eq!(app.expect().await.packet_type(), 5, "PUBREC");
    let open = v5::publish_of(&gate.expect().await);
    let close = v5::publish_of(&gate.expect().await);
    assert_eq!(
        (&open.payload[..], &close.payload[..]),
        (&b"open"[..], &b"close"[..])
    );
    let in_flight = vec![
        json!({"state": "awaiting_puback", "pid": open.pkid, "topic": "gate/7/cmd",
               "payload": "open", "qos": 1, "retain": false, "subscription_ids": [9]}),
        json!({"state": "awaiting_pubrec", "pid": close.pkid, "topic": "gate/7/cmd",
               "payload": "close", "qos": 2, "retain": false, "subscription_ids": [9]}),
    ];

    // Connected: the Session answers.
    let page = get(http, "/api/v1/clients/gate-7/messages", None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(page["connected"], true);
    assert_eq!(page["total"], 2);
    assert_eq!(page["awaiting_pubrel"], json!([77]));
    assert_eq!(briefs(&page), in_flight);
    let client = get(http, "/api/v1/clients/gate-7", None).await.json();
    assert_eq!(
        client["will"],
        json!({"topic": "gate/7/state", "payload": "offline", "payload_base64": "b2ZmbGluZQ==",
               "qos": 1, "retain": true, "delay": 600, "due_ms": null})
    );

    // The connection drops: the will waits for its delay, and the session is stored.
    let dropped_at = switchboard::persistence::unix_ms_now();
    drop(gate);
    hooks.disconnected("gate-7").await;
    app.publish_acked("gate/7/cmd", b"stop", 3, false).await;
    common::eventually(|| async {
        let page = get(http, "/api/v1/clients/gate-7/messages", None)
            .await
            .json();
        page["total"] == 3
    })
    .await;
    let page = get(http, "/api/v1/clients/gate-7/messages", None)
        .await
        .json();
    assert_eq!(page["connected"], false);
    assert_eq!(page["awaiting_pubrel"], json!([77]));
    let mut held = in_flight.clone();
    held.push(
        json!({"state": "queued", "pid": null, "topic": "gate/7/cmd", "payload": "stop",
                     "qos": 1, "retain": false, "subscription_ids": [9]}),
    );
    assert_eq!(briefs(&page), held);
    let client = get(http, "/api/v1/clients/gate-7", None).await.json();
    let due = client["will"]["due_ms"]
        .as_u64()
        .expect("a delayed will is due");
    let due_after = due - 600_000;
    assert!(
        (dropped_at..=switchboard::persistence::unix_ms_now()).contains(&due_after),
        "due {due}, dropped at {dropped_at}"
    );

    // Paged: the second message alone.
    let second = get(
        http,
        "/api/v1/clients/gate-7/messages?offset=1&limit=1",
        None,
    )
    .await
    .json();
    assert_eq!(second["total"], 3);
    assert_eq!(briefs(&second), vec![held[1].clone()]);

    // Resumed: the same messages go out again [MQTT-4.4.0-1], then the queued one.
    let resume = v5::connect5(
        "gate-7",
        false,
        60,
        &Props::new().u32(prop::SESSION_EXPIRY, 3600),
        None,
    );
    let (mut gate, ack) = Raw::connect5(addr, &resume).await;
    assert!(ack.session_present);
    let mut resent = Vec::new();
    for _ in 0..3 {
        let publish = v5::publish_of(&gate.expect().await);
        resent.push((publish.pkid, publish.dup, publish.payload.to_vec()));
    }
    assert_eq!(
        &resent[..2],
        &[
            (open.pkid, true, b"open".to_vec()),
            (close.pkid, true, b"close".to_vec())
        ]
    );
    assert_eq!((resent[2].1, resent[2].2.as_slice()), (false, &b"stop"[..]));
    let client = get(http, "/api/v1/clients/gate-7", None).await.json();
    assert_eq!(
        client["will"],
        Value::Null,
        "a reconnect cancels the delayed will"
    );
}

/// The route's answers to what it cannot serve: an unknown client, a query it does not take.
#[tokio::test]
async fn a_clients_messages_refuse_what_they_cannot_answer() {
    let (broker, _hooks) = broker_with_hooks(|_| {});
    let http = broker.http_local_addr().expect("http");
    let unknown = get(http, "/api/v1/clients/nobody/messages", None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let (_gate, _) = Raw::handshake(broker.local_addr(), "gate-1", false).await;
    let bad = get(http, "/api/v1/clients/gate-1/messages?search=x", None).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("offset and limit"), "{}", bad.body);
    let bad_limit = get(http, "/api/v1/clients/gate-1/messages?limit=0", None).await;
    assert_eq!(bad_limit.status, 400, "{}", bad_limit.body);
    let empty = get(http, "/api/v1/clients/gate-1/messages", None)
        .await
        .json();
    assert_eq!(
        (empty["total"].clone(), empty["messages"].clone()),
        (json!(0), json!([]))
    );
}
