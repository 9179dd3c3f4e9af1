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

/// A connect interceptor that says on `asked` who it was asked about, and accepts: a client
/// whose id starts with `held-` once the test notifies `answer`, any other at once.
struct HeldAnswers {
    asked: tokio::sync::mpsc::UnboundedSender<String>,
    answer: std::sync::Arc<tokio::sync::Notify>,
}

impl actix::Actor for HeldAnswers {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchboard::hooks::AuthorizeConnect> for HeldAnswers {
    type Result = actix::ResponseFuture<switchboard::hooks::ConnectDecision>;

    fn handle(
        &mut self,
        q: switchboard::hooks::AuthorizeConnect,
        _: &mut Self::Context,
    ) -> Self::Result {
        let answer = self.answer.clone();
        let held = q.client_id.starts_with("held-");
        let _ = self.asked.send(q.client_id);
        Box::pin(async move {
            if held {
                answer.notified().await;
            }
            switchboard::hooks::ConnectDecision::Accept
        })
    }
}

/// A client that closes its connection while the connect interceptor has not answered (an
/// interceptor may ask a service of its own, and take its time) is not waited for: its
/// connection ends at once, and the interceptor's late answer connects nobody.
#[tokio::test]
async fn a_connect_closed_before_the_interceptor_answers_is_not_waited_for() {
    use actix::Actor;
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let answer = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = answer.clone();
    let broker = switchboard::BackgroundBroker::start_with(common::test_config(), move |b| {
        b.interceptors(switchboard::hooks::Interceptors {
            connect: Some(
                HeldAnswers {
                    asked: asked_tx,
                    answer: held,
                }
                .start()
                .recipient(),
            ),
            ..Default::default()
        })
    })
    .expect("broker starts");
    let addr = broker.local_addr();
    let metrics = broker.metrics();
    let mut gone = Raw::connect(addr).await;
    gone.send(&packets::connect("held-1AB", true, 60)).await;
    let client_id = tokio::time::timeout(common::WAIT, asked.recv())
        .await
        .expect("the interceptor is asked");
    assert_eq!(client_id.as_deref(), Some("held-1AB"));
    drop(gone);
    common::eventually(|| {
        let metrics = metrics.clone();
        async move { metrics.snapshot().connections_current == 0 }
    })
    .await;
    answer.notify_one();
    // The interceptor's answer goes nowhere; the broker serves the next client.
    let mut next = Raw::connect(addr).await;
    next.send(&packets::connect("next-1AB", true, 60)).await;
    assert_eq!(
        tokio::time::timeout(common::WAIT, asked.recv())
            .await
            .expect("asked"),
        Some("next-1AB".into())
    );
    let connack = next.expect().await;
    assert_eq!((connack.byte1, &connack.body[..]), (0x20, &[0u8, 0][..]));
    assert_eq!(
        metrics.snapshot().connects,
        1,
        "only the second client connected"
    );
}
