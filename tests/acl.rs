//! ACL files: a device confined to its own request/response topics; denied publishes dropped (and
//! still acknowledged); subscriptions that reach nothing readable refused with 0x80, and those
//! that reach readable and unreadable topics granted with each message checked (as Mosquitto
//! does), for live, retained and queued messages and for a session resumed by another user; a
//! shared group's messages go to members that may read them.

mod common;

use common::packets::{self, parse_publish};
use common::v5;
use common::{broker_with, Raw};

const ACL: &str = "
user app
topic readwrite detrd/#
pattern read detrd/status/request/%c
pattern write detrd/status/response/%c
";

/// A broker reading `acl` as its ACL file, and the directory holding the file.
fn broker_with_acl(acl: &str) -> (switchboard::BackgroundBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acl");
    std::fs::write(&path, acl).expect("write");
    (broker_with(|c| c.auth.acl_file = Some(path)), dir)
}

async fn login(addr: std::net::SocketAddr, id: &str, user: &str) -> Raw {
    Raw::connect_as(addr, id, user, true).await
}

#[tokio::test]
async fn a_device_is_confined_to_its_own_request_and_response_topics() {
    let (broker, _dir) = broker_with_acl(ACL);
    let addr = broker.local_addr();
    let mut app = login(addr, "detrd-app", "app").await;
    app.subscribe(1, &[("detrd/status/response/+", 1)], &[1])
        .await;

    let id = "1AB.ENTER.DETRD";
    let mut radar = login(addr, id, id).await;
    radar
        .subscribe(
            1,
            &[
                ("detrd/status/request/1AB.ENTER.DETRD", 1),
                ("detrd/status/request/2CD.EXIT.DETRD", 1),
                ("detrd/status/request/+", 1),
                ("#", 0),
            ],
            // The wildcards reach its own request topic and others': granted, and each
            // message is checked on its way out.
            &[1, 0x80, 1, 0],
        )
        .await;
    // Its own response goes through; a forged one for another device is acknowledged and dropped.
    radar
        .send(&packets::publish(
            "detrd/status/response/1AB.ENTER.DETRD",
            b"mine",
            1,
            1,
            false,
            false,
        ))
        .await;
    assert_eq!(radar.expect().await.byte1, 0x40);
    radar
        .send(&packets::publish(
            "detrd/status/response/2CD.EXIT.DETRD",
            b"forged",
            1,
            2,
            false,
            false,
        ))
        .await;
    assert_eq!(
        radar.expect().await.byte1,
        0x40,
        "a denied publish is still acknowledged"
    );
    assert!(
        radar.sync().await.is_empty(),
        "its own response came back through `#`: it may not read it"
    );
    let got: Vec<_> = app.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"mine".to_vec());
    // The app's request reaches the device.
    request_status(&mut app, "1AB.ENTER.DETRD", 1).await;
    let requests: Vec<_> = radar.sync().await.iter().map(parse_publish).collect();
    assert_eq!(
        requests.len(),
        1,
        "one delivery for three matching subscriptions"
    );
    assert_eq!(requests[0].topic, "detrd/status/request/1AB.ENTER.DETRD");
    // A request to another device is not delivered to this one through `+` or `#`.
    request_status(&mut app, "2CD.EXIT.DETRD", 2).await;
    assert!(radar.sync().await.is_empty());
    // One refused subscription, one denied publish, two messages not delivered.
    assert_eq!(broker.metrics().snapshot().acl_denied, 4);
}

/// The app asks `device` for its status (QoS 1, packet id `pid`) and waits until the request is
/// acknowledged and routed.
async fn request_status(app: &mut Raw, device: &str, pid: u16) {
    let topic = format!("detrd/status/request/{device}");
    app.send(&packets::publish(&topic, b"status?", 1, pid, false, false))
        .await;
    app.expect().await;
    app.sync().await;
}

/// Publishes each `(topic, qos, retain)` from `raw` and waits until all are routed.
async fn publish_all(raw: &mut Raw, messages: &[(&str, u8, bool)]) {
    for (i, (topic, qos, retain)) in messages.iter().enumerate() {
        let pid = u16::try_from(i + 1).expect("few");
        raw.send(&packets::publish(
            topic,
            topic.as_bytes(),
            *qos,
            pid,
            *retain,
            false,
        ))
        .await;
    }
    raw.sync().await;
}

fn topics(got: &[packets::Published]) -> Vec<(&str, u8)> {
    got.iter().map(|p| (p.topic.as_str(), p.qos)).collect()
}

/// Logs in as `user` with client id `id` and joins the shared group `g` on `jobs/#` (granted:
/// for a user that may read only part of it, with each message checked).
async fn join_jobs_group(addr: std::net::SocketAddr, id: &str, user: &str) -> Raw {
    let mut member = login(addr, id, user).await;
    member.subscribe(1, &[("$share/g/jobs/#", 1)], &[1]).await;
    member
}

/// A shared group's message goes to one member (MQTT 5 section 4.8.2), and with an ACL to one
/// that may read it: a member whose subscription reaches topics it may not read (granted, each
/// message checked) is passed over for those, so nothing is dropped while another member may
/// read it. (Mosquitto gives the message to the next member in turn and drops it if that one
/// may not read it.)
#[tokio::test]
async fn a_shared_groups_message_goes_to_a_member_that_may_read_it() {
    let (broker, _dir) = broker_with_acl(common::SHARED_JOBS_ACL);
    let addr = broker.local_addr();
    let mut worker = join_jobs_group(addr, "worker", "worker").await;
    let mut intern = join_jobs_group(addr, "intern", "intern").await;
    let mut boss = login(addr, "boss", "boss").await;
    // Ten the intern may not read, then ten it may: in turn, every other secret job would be
    // the intern's.
    let mut expected: Vec<String> = (0..10)
        .map(|n| format!("jobs/secret/{n}"))
        .chain((0..10).map(|n| format!("jobs/public/{n}")))
        .collect();
    let messages: Vec<(&str, u8, bool)> = expected.iter().map(|t| (t.as_str(), 1, false)).collect();
    publish_all(&mut boss, &messages).await;
    let to_worker: Vec<_> = worker.sync().await.iter().map(parse_publish).collect();
    let to_intern: Vec<_> = intern.sync().await.iter().map(parse_publish).collect();
    assert!(
        to_intern
            .iter()
            .all(|p| p.topic.starts_with("jobs/public/")),
        "the intern gets only what it may read: {:?}",
        topics(&to_intern)
    );
    assert!(!to_intern.is_empty(), "and still its share of that");
    let mut got: Vec<String> = to_worker
        .iter()
        .chain(&to_intern)
        .map(|p| p.topic.clone())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every message once, none dropped");
    assert_eq!(broker.metrics().snapshot().acl_denied, 0);
}

/// A member that leaves with QoS 1 messages unacknowledged hands them to another member (MQTT 5
/// section 4.8.2), and with an ACL to one that may read them.
#[tokio::test]
async fn a_leaving_members_messages_go_to_a_member_that_may_read_them() {
    let (broker, _dir) = broker_with_acl(common::SHARED_JOBS_ACL);
    let addr = broker.local_addr();
    let mut leaver = join_jobs_group(addr, "worker-1", "worker").await;
    let mut boss = login(addr, "boss", "boss").await;
    let secret = ["jobs/secret/0", "jobs/secret/1", "jobs/secret/2"];
    let messages: Vec<(&str, u8, bool)> = secret.iter().map(|t| (*t, 1, false)).collect();
    publish_all(&mut boss, &messages).await;
    let sent: Vec<_> = leaver.sync().await.iter().map(parse_publish).collect();
    assert_eq!(sent.len(), 3, "sent to the only member, never acknowledged");
    let mut intern = join_jobs_group(addr, "intern", "intern").await;
    let mut stayer = join_jobs_group(addr, "worker-2", "worker").await;
    // In turn the intern would get two of the three.
    drop(leaver);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(parse_publish(&stayer.expect().await).topic);
    }
    got.sort();
    assert_eq!(got, secret);
    assert!(intern.sync().await.is_empty(), "nothing for the intern");
    assert_eq!(broker.metrics().snapshot().acl_denied, 0);
}

const DASHBOARD_ACL: &str = "
topic readwrite #
topic deny secrets/#
user vault
topic readwrite secrets/#
topic readwrite plant/#
user auditor
topic read plant/#
";

#[tokio::test]
async fn a_dashboard_subscribed_to_everything_gets_all_but_the_denied_topics() {
    let (broker, _dir) = broker_with_acl(DASHBOARD_ACL);
    let addr = broker.local_addr();
    let mut vault = login(addr, "vault", "vault").await;
    publish_all(
        &mut vault,
        &[("secrets/key", 1, true), ("plant/temp", 1, true)],
    )
    .await;

    let (mut dashboard, _) = Raw::handshake(addr, "dashboard", true).await;
    // 0x80 Failure for a filter the ACL refuses, all of it denied (3.1.1 section 3.9.3: no other
    // code may say so [MQTT-3.9.3-2]).
    dashboard
        .subscribe(1, &[("secrets/#", 1), ("nothing/+", 0)], &[0x80, 0])
        .await;
    dashboard.subscribe(2, &[("#", 1)], &[1]).await;
    // Of the retained messages `#` matches, only the readable one.
    let retained = dashboard.drain_acking().await;
    assert_eq!(topics(&retained), vec![("plant/temp", 1)]);
    assert!(retained[0].retain);

    publish_all(
        &mut vault,
        &[
            ("secrets/a", 1, false),
            ("plant/a", 1, false),
            ("secrets/b", 0, false),
            ("plant/b", 0, false),
            ("secrets/c", 2, false),
            ("plant/c", 2, false),
        ],
    )
    .await;
    let live = dashboard.sync().await;
    let live: Vec<_> = live.iter().map(parse_publish).collect();
    assert_eq!(
        topics(&live),
        vec![("plant/a", 1), ("plant/b", 0), ("plant/c", 1)],
        "in order, none of the denied ones"
    );
    assert_eq!(
        (live[0].pid, live[2].pid),
        (retained[0].pid + 1, retained[0].pid + 2),
        "no packet identifier spent on a denied message"
    );
    // One refused subscription, four messages not delivered (one retained, three live).
    assert_eq!(broker.metrics().snapshot().acl_denied, 5);
}

#[tokio::test]
async fn a_resumed_session_gets_only_what_its_new_user_may_read() {
    let (broker, _dir) = broker_with_acl(DASHBOARD_ACL);
    let addr = broker.local_addr();
    // The vault's own session holds a subscription granted whole to the vault.
    let mut console = Raw::connect_as(addr, "console", "vault", false).await;
    console
        .subscribe(1, &[("secrets/#", 1), ("plant/#", 1)], &[1, 1])
        .await;
    // One message sent to the vault and not acknowledged: in flight when it goes.
    let mut vault = login(addr, "vault", "vault").await;
    publish_all(&mut vault, &[("secrets/in-flight", 1, false)]).await;
    let unacknowledged: Vec<_> = console.sync().await.iter().map(parse_publish).collect();
    assert_eq!(topics(&unacknowledged), vec![("secrets/in-flight", 1)]);
    drop(console);

    // Queued while nobody is connected to the session.
    publish_all(
        &mut vault,
        &[("secrets/a", 1, false), ("plant/a", 1, false)],
    )
    .await;

    // The same client id, another user: the session resumes with the vault's subscriptions
    // and its message in flight, but the auditor reads plant/# only: the message in flight is
    // not sent again [MQTT-4.4.0-1] to a client that may not read it.
    let mut auditor = Raw::connect_as(addr, "console", "auditor", false).await;
    assert_eq!(topics(&auditor.drain_acking().await), vec![("plant/a", 1)]);
    publish_all(
        &mut vault,
        &[("secrets/b", 1, false), ("plant/b", 0, false)],
    )
    .await;
    assert_eq!(topics(&auditor.drain_acking().await), vec![("plant/b", 0)]);
}

#[tokio::test]
async fn a_denied_publish_is_acknowledged_in_order_with_persistence_on() {
    // With `[persistence]`, a PUBLISH's acknowledgement waits for its burst to be routed (and
    // what it keeps on disk): the acknowledgement of a denied one, behind it in the same read,
    // must not overtake it [MQTT-4.6.0-2].
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite plant/#\n").expect("write");
    let state = dir.path().join("state");
    let broker = broker_with(|c| {
        c.auth.acl_file = Some(acl);
        c.persistence.dir = Some(state);
    });
    let (mut publisher, _) = Raw::handshake(broker.local_addr(), "publisher", true).await;
    let mut burst = packets::publish("plant/a", b"allowed", 1, 1, false, false);
    burst.extend(packets::publish("secrets/a", b"denied", 1, 2, false, false));
    burst.extend(packets::publish("plant/b", b"allowed", 1, 3, false, false));
    publisher.send(&burst).await;
    let acks = publisher.sync_acks().await;
    assert_eq!(acks, vec![(0x40, 1), (0x40, 2), (0x40, 3)]);

    // MQTT 5: the denied one's PUBACK carries 0x87 Not authorized, still in its place; the
    // others 0x10 No matching subscribers, since nobody subscribes to `plant/#`.
    let props = v5::Props::new();
    let connect = v5::connect5("publisher5", true, 60, &props, None);
    let (mut publisher, _) = Raw::connect5(broker.local_addr(), &connect).await;
    let mut burst = v5::publish5("plant/a", b"allowed", 1, 1, false, &props);
    burst.extend(v5::publish5("secrets/a", b"denied", 1, 2, false, &props));
    burst.extend(v5::publish5("plant/b", b"allowed", 1, 3, false, &props));
    publisher.send(&burst).await;
    let acks = v5::ack_reasons(&publisher.sync5().await);
    assert_eq!(
        acks,
        vec![(0x40, 1, 0x10), (0x40, 2, 0x87), (0x40, 3, 0x10)]
    );
}

#[tokio::test]
async fn clients_without_rules_get_nothing() {
    let (broker, _dir) = broker_with_acl("user app\ntopic readwrite detrd/#\n");
    let (mut anonymous, _) = Raw::handshake(broker.local_addr(), "anon", true).await;
    anonymous.subscribe(1, &[("detrd/#", 0)], &[0x80]).await;
}

/// An interceptor that moves what the gate asks for elsewhere: subscriptions and publishes
/// under `gate/` are rewritten to the topics named after `->` in their last level.
struct Mover;

impl actix::Actor for Mover {
    type Context = actix::Context<Self>;
}

/// `gate/x->where/to` becomes `where/to`; anything else stays.
fn moved(topic: &str) -> Option<String> {
    topic.split_once("->").map(|(_, to)| to.to_string())
}

impl actix::Handler<switchboard::hooks::AuthorizeSubscribe> for Mover {
    type Result = switchboard::hooks::SubscribeDecision;

    fn handle(
        &mut self,
        q: switchboard::hooks::AuthorizeSubscribe,
        _: &mut Self::Context,
    ) -> Self::Result {
        use switchboard::hooks::SubscribeDecision;
        match moved(&q.filter) {
            Some(filter) => SubscribeDecision::Rewrite { filter, qos: q.qos },
            None => SubscribeDecision::Accept,
        }
    }
}

impl actix::Handler<switchboard::hooks::AuthorizePublish> for Mover {
    type Result = switchboard::hooks::PublishDecision;

    fn handle(
        &mut self,
        q: switchboard::hooks::AuthorizePublish,
        _: &mut Self::Context,
    ) -> Self::Result {
        use switchboard::hooks::PublishDecision;
        match moved(&q.topic) {
            Some(topic) => PublishDecision::Rewrite {
                topic,
                payload: q.payload,
            },
            None => PublishDecision::Accept,
        }
    }
}

#[tokio::test]
async fn an_interceptors_rewrite_is_judged_by_the_acl_as_the_clients_own_request_is() {
    use actix::Actor;
    // The interceptor may narrow what the ACL grants, never widen it: a rewritten filter or
    // topic the client could not have asked for itself is refused (SUBACK 0x80: the
    // subscription failed [MQTT-3.8.4-5]) or dropped (and still acknowledged), and so is a
    // rewrite into `$SYS`.
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user gate\ntopic readwrite gate/#\nuser app\ntopic read #\ntopic read $SYS/#\n",
    )
    .expect("write");
    let mut config = common::test_config();
    config.auth.acl_file = Some(acl);
    let broker = switchboard::BackgroundBroker::start_with(config, |b| {
        let mover = Mover.start();
        b.interceptors(switchboard::hooks::Interceptors {
            subscribe: Some(mover.clone().recipient()),
            publish: Some(mover.recipient()),
            ..Default::default()
        })
    })
    .expect("broker starts");
    let addr = broker.local_addr();
    let mut app = login(addr, "app", "app").await;
    app.subscribe(1, &[("#", 1), ("$SYS/broker/forged", 1)], &[1, 1])
        .await;
    let mut gate = login(addr, "gate", "gate").await;
    gate.subscribe(
        1,
        &[("gate/a->secret/#", 1), ("gate/b->gate/moved/#", 1)],
        &[0x80, 1],
    )
    .await;
    let mut burst = packets::publish("gate/x->secret/x", b"denied", 1, 1, false, false);
    burst.extend(packets::publish(
        "gate/y->$SYS/broker/forged",
        b"forged",
        1,
        2,
        false,
        false,
    ));
    burst.extend(packets::publish(
        "gate/z->gate/moved/z",
        b"allowed",
        1,
        3,
        false,
        false,
    ));
    gate.send(&burst).await;
    let acks: Vec<(u8, u16)> = gate
        .sync()
        .await
        .iter()
        .filter(|f| f.byte1 == 0x40)
        .map(|f| (f.byte1, f.pid()))
        .collect();
    assert_eq!(acks, vec![(0x40, 1), (0x40, 2), (0x40, 3)]);
    assert_eq!(topics(&app.drain_acking().await), vec![("gate/moved/z", 1)]);
    assert_eq!(broker.metrics().snapshot().acl_denied, 3);
}
