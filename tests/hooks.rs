//! Lifecycle hooks and interceptors, through the shipped example (`examples/hooks.rs`).

mod common;

#[allow(dead_code)]
#[path = "../examples/hooks.rs"]
mod hooks_example;

use common::packets::{self, parse_publish, ConnectSpec};
use common::{broker_with_hooks_and, HookEvent, Raw};
use switchboard::hooks::DisconnectReason;
use switchboard::ProtocolVersion;

fn fleet_broker() -> (switchboard::BackgroundBroker, common::Hooks) {
    broker_with_hooks_and(|_| {}, hooks_example::install)
}

async fn login(addr: std::net::SocketAddr, id: &str, user: &str, password: &[u8]) -> (Raw, u8) {
    let spec = ConnectSpec {
        client_id: id,
        username: Some(user),
        password: Some(password),
        ..Default::default()
    };
    Raw::connect_with(addr, spec).await
}

#[tokio::test]
async fn interceptor_refuses_connections_with_connack_4_and_5() {
    let (broker, _) = fleet_broker();
    let addr = broker.local_addr();
    let (mut bad, code) = login(addr, "gate", "gate", b"wrong").await;
    assert_eq!(code, 4);
    bad.expect_closed().await;
    let (mut banned, code) = login(addr, "x", "intruder", b"fleet-secret").await;
    assert_eq!(code, 5);
    banned.expect_closed().await;
    let (_ok, code) = login(addr, "gate", "gate", b"fleet-secret").await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn interceptor_rewrites_and_drops_publishes_and_refuses_subscriptions() {
    let (broker, _) = fleet_broker();
    let addr = broker.local_addr();
    let (mut app, _) = login(addr, "app", "app", b"fleet-secret").await;
    app.subscribe(
        1,
        &[("detrd/#", 2), ("#", 0), ("admin/#", 1)],
        &[1, 0x80, 1],
    )
    .await;
    let (mut gate, _) = login(addr, "gate", "gate", b"fleet-secret").await;
    gate.send(&packets::publish(
        "legacy/detrd/status/request/1AB.ENTER.DETRD",
        b"old",
        1,
        1,
        false,
        false,
    ))
    .await;
    assert_eq!(
        gate.expect().await.byte1,
        0x40,
        "a rewritten publish is still acknowledged"
    );
    gate.send(&packets::publish(
        "admin/reboot",
        b"now",
        1,
        2,
        false,
        false,
    ))
    .await;
    assert_eq!(
        gate.expect().await.byte1,
        0x40,
        "a dropped publish is still acknowledged"
    );
    gate.sync().await;
    let got: Vec<_> = app.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "detrd/status/request/1AB.ENTER.DETRD");
    assert_eq!(got[0].qos, 1, "QoS 2 was granted as 1");
}

#[tokio::test]
async fn lifecycle_events_reach_registered_actors() {
    let (broker, mut hooks) = fleet_broker();
    let addr = broker.local_addr();
    let (mut raw, _) = login(addr, "1AB.ENTER.DETRD", "radar", b"fleet-secret").await;
    raw.subscribe(1, &[("detrd/status/request/1AB.ENTER.DETRD", 1)], &[1])
        .await;
    raw.send(&packets::unsubscribe(
        2,
        &["detrd/status/request/1AB.ENTER.DETRD"],
    ))
    .await;
    assert_eq!(raw.expect().await.byte1, 0xB0);
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(hooks.next().await);
    }
    match &seen[..] {
        [HookEvent::Connected(c), HookEvent::Subscribed(s), HookEvent::Unsubscribed(u), HookEvent::Disconnected(d)] =>
        {
            assert_eq!(
                (&*c.client_id, c.protocol, c.clean_session),
                ("1AB.ENTER.DETRD", ProtocolVersion::V3_1_1, true)
            );
            assert_eq!(
                (s.filter.as_str(), s.qos),
                (
                    "detrd/status/request/1AB.ENTER.DETRD",
                    switchboard::QoS::AtLeastOnce
                )
            );
            assert_eq!(u.filter, s.filter);
            assert_eq!(d.reason, DisconnectReason::Clean);
            assert_eq!(d.peer, c.peer);
        }
        other => panic!("unexpected events: {other:?}"),
    }
}
