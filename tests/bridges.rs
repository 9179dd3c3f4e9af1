//! Outgoing bridges (`[[bridge]]`) against real remote brokers: Debian's Mosquitto over MQTT
//! 3.1.1 and 5, and another Switchboard. Out, in, both, prefixes both ways; messages queued while
//! the remote is down arrive in order; `both` on one topic does not echo.

mod common;

use std::net::SocketAddr;

use common::mosquitto::Mosquitto;
use common::{eventually, packets, Raw};
use switchboard::bridge::BridgeSnapshot;
use switchboard::{BackgroundBroker, Config};

/// A `[[bridge]]` named `central` to `address`, with these `topics` entries and extra keys.
fn bridge_toml(address: SocketAddr, protocol: &str, topics: &str, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"central\"\naddress = \"{address}\"\nprotocol = \"{protocol}\"\n\
         client_id = \"site-1AB\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"\n\
         {extra}\ntopics = [\n{topics}\n]\n"
    )
}

/// A site broker (test configuration) running the bridges of `toml`.
fn site(toml: &str, adjust: impl FnOnce(&mut Config)) -> BackgroundBroker {
    let bridges = Config::from_toml(toml).expect("bridge config").bridge;
    common::broker_with(|config| {
        config.bridge = bridges;
        adjust(config);
    })
}

fn status(broker: &BackgroundBroker) -> BridgeSnapshot {
    broker.metrics().bridges.snapshots().remove(0)
}

/// Waits until the bridge is connected and subscribed on both sides.
async fn bridge_ready(broker: &BackgroundBroker) {
    eventually(|| async { status(broker).subscribed }).await;
}

/// Reads PUBLISHes (acknowledging QoS 1) until one on `last`; returns their topics and payloads.
async fn read_until(raw: &mut Raw, last: &str) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let frame = raw.expect().await;
        if frame.packet_type() != 3 {
            continue;
        }
        let publish = packets::parse_publish(&frame);
        if publish.qos == 1 {
            raw.send(&packets::ack(0x40, publish.pid)).await;
        }
        let done = publish.topic == last;
        got.push((publish.topic, publish.payload));
        if done {
            return got;
        }
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn topics_of(got: &[(String, Vec<u8>)]) -> Vec<&str> {
    got.iter().map(|(topic, _)| topic.as_str()).collect()
}

/// A client that publishes QoS 1 and waits for each PUBACK.
async fn publish_all(raw: &mut Raw, topics: &[&str]) {
    for (i, topic) in topics.iter().enumerate() {
        let pid = i as u16 + 1;
        raw.send(&packets::publish(topic, b"m", 1, pid, false, false))
            .await;
        let ack = raw.expect().await;
        assert_eq!((ack.byte1, ack.pid()), (0x40, pid), "PUBACK for {topic}");
    }
}

async fn out_in_both_and_prefixes(protocol: &str) {
    if !common::mosquitto_broker_available() {
        return;
    }
    let central = Mosquitto::start("", false);
    let topics = r#"
  { pattern = "detrd/status/response/#", direction = "out", qos = 1 },
  { pattern = "detrd/status/request/#",  direction = "in",  qos = 1 },
  { pattern = "gate/#", direction = "both", qos = 1, local_prefix = "", remote_prefix = "site/1AB/" },
  { pattern = "cmd/#", direction = "in", qos = 1, local_prefix = "central/", remote_prefix = "ops/" },"#;
    let site = site(&bridge_toml(central.addr, protocol, topics, ""), |_| {});
    bridge_ready(&site).await;

    let (mut local_sub, _) = Raw::handshake(site.local_addr(), "site-sub", true).await;
    local_sub
        .subscribe(
            1,
            &[("detrd/#", 1), ("gate/#", 1), ("central/#", 1)],
            &[1, 1, 1],
        )
        .await;
    let (mut remote_sub, _) = Raw::handshake(central.addr, "central-sub", true).await;
    remote_sub
        .subscribe(
            1,
            &[("detrd/#", 1), ("site/#", 1), ("ops/#", 1)],
            &[1, 1, 1],
        )
        .await;
    let (mut local_pub, _) = Raw::handshake(site.local_addr(), "gate-1", true).await;
    let (mut remote_pub, _) = Raw::handshake(central.addr, "app", true).await;

    // Out: `out` and `both` entries go, renamed by the remote prefix; an `in` entry does not.
    let sent_here = [
        "detrd/status/response/1AB",
        "gate/1/state",
        "detrd/status/request/local",
        "gate/marker",
    ];
    publish_all(&mut local_pub, &sent_here).await;
    let at_remote = read_until(&mut remote_sub, "site/1AB/gate/marker").await;
    assert_eq!(
        topics_of(&at_remote),
        [
            "detrd/status/response/1AB",
            "site/1AB/gate/1/state",
            "site/1AB/gate/marker"
        ]
    );
    assert_eq!(
        topics_of(&read_until(&mut local_sub, "gate/marker").await),
        sent_here
    );

    // In: `in` and `both` entries come, renamed; an `out` entry does not. Nothing the bridge
    // sent out comes back here (it would arrive before `gate/back`, which was published after).
    let sent_there = [
        "detrd/status/request/1AB",
        "ops/cmd/open",
        "detrd/status/response/remote",
        "site/1AB/gate/back",
    ];
    publish_all(&mut remote_pub, &sent_there).await;
    assert_eq!(
        topics_of(&read_until(&mut local_sub, "gate/back").await),
        ["detrd/status/request/1AB", "central/cmd/open", "gate/back"]
    );
    // Nor does anything the bridge brought in go out again.
    publish_all(&mut local_pub, &["gate/marker2"]).await;
    let mut expected = sent_there.to_vec();
    expected.push("site/1AB/gate/marker2");
    assert_eq!(
        topics_of(&read_until(&mut remote_sub, "site/1AB/gate/marker2").await),
        expected
    );
    eventually(|| async {
        let s = status(&site);
        (s.sent, s.received, s.dropped, s.queued) == (4, 3, 0, 0)
    })
    .await;
}

#[tokio::test]
async fn out_in_both_and_prefixes_against_mosquitto_over_3_1_1() {
    out_in_both_and_prefixes("3.1.1").await;
}

#[tokio::test]
async fn out_in_both_and_prefixes_against_mosquitto_over_5() {
    out_in_both_and_prefixes("5").await;
}

async fn queued_while_down_arrive_in_order(protocol: &str) {
    if !common::mosquitto_broker_available() {
        return;
    }
    // Mosquitto saves its sessions when stopped: the subscriber's persists across its restart.
    let mut central = Mosquitto::start("", true);
    let (mut remote_sub, _) = Raw::handshake(central.addr, "central-sub", false).await;
    remote_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    remote_sub.send(&[0xE0, 0x00]).await;
    remote_sub.expect_closed().await;

    let topics = r#"{ pattern = "gate/#", direction = "out", qos = 1 },"#;
    let site = site(&bridge_toml(central.addr, protocol, topics, ""), |_| {});
    bridge_ready(&site).await;
    central.stop();
    eventually(|| async { !status(&site).connected }).await;

    let (mut local_pub, _) = Raw::handshake(site.local_addr(), "gate-1", true).await;
    const COUNT: usize = 200;
    for n in 0..COUNT {
        let pid = n as u16 + 1;
        let payload = n.to_string();
        local_pub
            .send(&packets::publish(
                "gate/1/event",
                payload.as_bytes(),
                1,
                pid,
                false,
                false,
            ))
            .await;
        assert_eq!(local_pub.expect().await.byte1, 0x40);
    }
    // QoS 0 is not queued while the link is down: dropped, and counted.
    for _ in 0..5 {
        local_pub
            .send(&packets::publish("gate/1/noise", b"x", 0, 0, false, false))
            .await;
    }
    local_pub.ping().await;
    eventually(|| async {
        let s = status(&site);
        (s.queued, s.dropped) == (COUNT as u64, 5)
    })
    .await;

    central.resume();
    let (mut remote_sub, present) = Raw::handshake(central.addr, "central-sub", false).await;
    assert!(present, "Mosquitto kept the subscriber's session");
    let mut payloads = Vec::new();
    while payloads.len() < COUNT {
        let frame = remote_sub.expect().await;
        if frame.packet_type() != 3 {
            continue;
        }
        let publish = packets::parse_publish(&frame);
        remote_sub.send(&packets::ack(0x40, publish.pid)).await;
        assert_eq!(publish.topic, "gate/1/event");
        payloads.push(String::from_utf8(publish.payload).expect("utf-8"));
    }
    let expected: Vec<String> = (0..COUNT).map(|n| n.to_string()).collect();
    assert_eq!(payloads, expected, "every message, in order, once");
    eventually(|| async {
        let s = status(&site);
        s.connected && (s.queued, s.sent) == (0, COUNT as u64)
    })
    .await;
}

#[tokio::test]
async fn messages_queued_while_a_mosquitto_3_1_1_remote_is_down_arrive_in_order() {
    queued_while_down_arrive_in_order("3.1.1").await;
}

#[tokio::test]
async fn messages_queued_while_a_mosquitto_5_remote_is_down_arrive_in_order() {
    queued_while_down_arrive_in_order("5").await;
}

/// Ten messages published on each side of a `both` bridge on `gate/#` (no prefixes), then a
/// marker each way: each side's subscriber sees exactly the 22 messages, and the bridge counts
/// exactly 11 each way. An echo, let alone a storm, would add to both.
async fn no_echo_with_both_on_one_topic(central: SocketAddr, protocol: &str) {
    let topics = r#"{ pattern = "gate/#", direction = "both", qos = 1 },"#;
    let site = site(&bridge_toml(central, protocol, topics, ""), |_| {});
    bridge_ready(&site).await;
    let (mut site_sub, _) = Raw::handshake(site.local_addr(), "site-sub", true).await;
    site_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut central_sub, _) = Raw::handshake(central, "central-sub", true).await;
    central_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut site_pub, _) = Raw::handshake(site.local_addr(), "site-pub", true).await;
    let (mut central_pub, _) = Raw::handshake(central, "central-pub", true).await;

    let at_site: Vec<String> = (0..10).map(|n| format!("gate/site/{n}")).collect();
    let at_central: Vec<String> = (0..10).map(|n| format!("gate/central/{n}")).collect();
    publish_all(&mut site_pub, &refs(&at_site)).await;
    publish_all(&mut central_pub, &refs(&at_central)).await;
    publish_all(&mut site_pub, &["gate/site/end"]).await;
    publish_all(&mut central_pub, &["gate/central/end"]).await;

    for sub in [&mut site_sub, &mut central_sub] {
        let mut seen = read_until(sub, "gate/central/end").await;
        if !topics_of(&seen).contains(&"gate/site/end") {
            seen.extend(read_until(sub, "gate/site/end").await);
        }
        let mut seen = topics_of(&seen);
        seen.sort_unstable();
        let mut expected = refs(&at_site);
        expected.extend(refs(&at_central));
        expected.extend(["gate/site/end", "gate/central/end"]);
        expected.sort_unstable();
        assert_eq!(seen, expected, "each message once on each side");
    }
    // Once more each way: had anything looped, it would be seen before these.
    publish_all(&mut site_pub, &["gate/site/last"]).await;
    assert_eq!(
        topics_of(&read_until(&mut central_sub, "gate/site/last").await),
        ["gate/site/last"]
    );
    publish_all(&mut central_pub, &["gate/central/last"]).await;
    let site_rest = read_until(&mut site_sub, "gate/central/last").await;
    assert_eq!(
        topics_of(&site_rest),
        ["gate/site/last", "gate/central/last"]
    );
    eventually(|| async {
        let s = status(&site);
        (s.sent, s.received) == (12, 12)
    })
    .await;
}

#[tokio::test]
async fn both_on_one_topic_does_not_echo_with_mosquitto_over_3_1_1() {
    if common::mosquitto_broker_available() {
        let central = Mosquitto::start("", false);
        no_echo_with_both_on_one_topic(central.addr, "3.1.1").await;
    }
}

#[tokio::test]
async fn both_on_one_topic_does_not_echo_with_mosquitto_over_5() {
    if common::mosquitto_broker_available() {
        let central = Mosquitto::start("", false);
        no_echo_with_both_on_one_topic(central.addr, "5").await;
    }
}

#[tokio::test]
async fn both_on_one_topic_does_not_echo_between_two_switchboards_over_3_1_1() {
    let central = common::broker();
    no_echo_with_both_on_one_topic(central.local_addr(), "3.1.1").await;
}

#[tokio::test]
async fn both_on_one_topic_does_not_echo_between_two_switchboards_over_5() {
    let central = common::broker();
    no_echo_with_both_on_one_topic(central.local_addr(), "5").await;
}

#[tokio::test]
async fn a_bridge_over_tls_with_a_client_certificate() {
    let pki = common::pki::Pki::new("site-1AB");
    let central = common::broker_with(|c| {
        c.tls.port = Some(0);
        c.tls.cert_file = Some(pki.dir.path().join("server.pem"));
        c.tls.key_file = Some(pki.dir.path().join("server.key"));
        c.tls.client_ca_file = Some(pki.dir.path().join("ca.pem"));
    });
    let (cert, key) = (
        pki.dir.path().join("site.pem"),
        pki.dir.path().join("site.key"),
    );
    std::fs::write(&cert, &pki.client.0).expect("write");
    std::fs::write(&key, &pki.client.1).expect("write");
    let tls = format!(
        "tls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?} }}",
        pki.dir.path().join("ca.pem").display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    );
    let topics = r#"{ pattern = "gate/#", direction = "out", qos = 1 },"#;
    let address = central.tls_local_addr().expect("TLS listener");
    let site = site(&bridge_toml(address, "3.1.1", topics, &tls), |_| {});
    bridge_ready(&site).await;
    let (mut central_sub, _) = Raw::handshake(central.local_addr(), "app", true).await;
    central_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut gate, _) = Raw::handshake(site.local_addr(), "gate-1", true).await;
    publish_all(&mut gate, &["gate/1/state"]).await;
    assert_eq!(
        topics_of(&read_until(&mut central_sub, "gate/1/state").await),
        ["gate/1/state"]
    );
}

#[tokio::test]
async fn bridge_state_shows_in_sys_metrics_and_the_admin_api() {
    let central = common::broker();
    let topics = r#"{ pattern = "gate/#", direction = "both", qos = 1 },"#;
    let site = site(&bridge_toml(central.local_addr(), "5", topics, ""), |c| {
        c.sys.interval = std::time::Duration::from_millis(100)
    });
    bridge_ready(&site).await;
    let (mut gate, _) = Raw::handshake(site.local_addr(), "gate-1", true).await;
    publish_all(&mut gate, &["gate/1/state", "gate/1/state"]).await;
    let (mut app, _) = Raw::handshake(central.local_addr(), "app", true).await;
    publish_all(&mut app, &["gate/1/cmd"]).await;
    eventually(|| async {
        let s = status(&site);
        (s.connected, s.sent, s.received) == (true, 2, 1)
    })
    .await;

    // $SYS, retained: the latest values.
    let (mut sys, _) = Raw::handshake(site.local_addr(), "sys-reader", true).await;
    sys.send(&packets::subscribe(
        1,
        &[("$SYS/broker/bridges/central/+", 0)],
    ))
    .await;
    let mut values = std::collections::BTreeMap::new();
    while values.len() < 5 {
        let frame = sys.expect().await;
        if frame.packet_type() == 3 {
            let p = packets::parse_publish(&frame);
            values.insert(p.topic, String::from_utf8(p.payload).expect("utf-8"));
        }
    }
    let at = |what: &str| values[&format!("$SYS/broker/bridges/central/{what}")].clone();
    assert_eq!(
        [
            at("connected"),
            at("sent"),
            at("received"),
            at("dropped"),
            at("queued")
        ],
        ["1", "2", "1", "0", "0"]
    );

    let http = site.http_local_addr().expect("HTTP");
    let metrics = common::http::get(http, "/metrics", None).await.body;
    for line in [
        "switchboard_bridge_connected{bridge=\"central\"} 1",
        "switchboard_bridge_messages_sent_total{bridge=\"central\"} 2",
        "switchboard_bridge_messages_received_total{bridge=\"central\"} 1",
        "switchboard_bridge_messages_dropped_total{bridge=\"central\"} 0",
        "switchboard_bridge_queued_messages{bridge=\"central\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let api = common::http::get(http, "/api/v1/bridges", None)
        .await
        .json();
    assert_eq!(
        api["bridges"][0],
        serde_json::json!({
            "name": "central", "address": central.local_addr().to_string(),
            "connected": true, "subscribed": true, "queued": 0, "sent": 2, "received": 1,
            "dropped": 0,
        })
    );
}

/// Collects what a Consumer hands it into a channel.
struct Collect(tokio::sync::mpsc::UnboundedSender<switchboard_actors::Received>);

impl actix::Actor for Collect {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchboard_actors::Received> for Collect {
    type Result = ();
    fn handle(&mut self, msg: switchboard_actors::Received, _: &mut actix::Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// The seed's scenario across two brokers: the gate and the radar on a site broker, the app on
/// a central one, a bridge between them. Every status request the app sends is answered.
async fn gate_demo_across_two_brokers(protocol: &str) {
    use actix::Actor;
    use switchboard_actors::fleet::{
        status_request_topic, status_response_topic, GateBarrier, RadarDetector,
    };
    use switchboard_actors::{
        ConnectionOptions, Consumer, DeviceActor, ManagedConnection, ProtocolVersion, QoS, Request,
        Requester,
    };
    const GATE: &str = "1AB.ENTER.GATE";
    const RADAR: &str = "1AB.ENTER.DETRD";

    let central = common::broker();
    let topics = r#"
  { pattern = "detrd/status/response/#", direction = "out", qos = 1 },
  { pattern = "detrd/state/#", direction = "out", qos = 1 },
  { pattern = "detrd/detection/#", direction = "out", qos = 1 },
  { pattern = "detrd/status/request/#", direction = "in", qos = 1 },
  { pattern = "detrd/command/#", direction = "in", qos = 1 },"#;
    let site = site(
        &bridge_toml(central.local_addr(), protocol, topics, ""),
        |_| {},
    );
    bridge_ready(&site).await;

    let version = match protocol {
        "5" => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    };
    let at = |addr: SocketAddr, id: &str| {
        let mut options = ConnectionOptions::new("127.0.0.1", addr.port(), id);
        options.protocol = version;
        options
    };
    // The app, on the central broker, first: it hears each device announce itself.
    let app = ManagedConnection::start_with(at(central.local_addr(), "detrd-app"), Vec::new());
    let (tx, mut states) = tokio::sync::mpsc::unbounded_channel();
    let filters = vec![("detrd/state/+".to_string(), QoS::AtLeastOnce)];
    Consumer::new(app.clone(), filters, Collect(tx).start().recipient()).start();
    let requester = Requester::new(
        app.clone(),
        "detrd/status/response/+",
        std::time::Duration::from_secs(3),
    )
    .start();
    eventually(|| async {
        let subs = app
            .send(switchboard_actors::GetSubscriptions)
            .await
            .expect("app");
        subs.values().filter(|s| s.granted.is_some()).count() == 2
    })
    .await;
    let _gate = DeviceActor::start(GateBarrier::new(GATE), at(site.local_addr(), GATE));
    let _radar = DeviceActor::start(
        RadarDetector::new(RADAR, std::time::Duration::from_millis(200)),
        at(site.local_addr(), RADAR),
    );
    let mut online = std::collections::BTreeSet::new();
    while online.len() < 2 {
        let state = tokio::time::timeout(common::WAIT, states.recv())
            .await
            .expect("a device announces itself through the bridge")
            .expect("open");
        online.insert(state.topic);
    }

    let mut answered = 0;
    for _cycle in 0..4 {
        for id in [RADAR, GATE] {
            let request = Request::new(
                status_request_topic(id),
                serde_json::json!({ "ask": "status" }),
            )
            .answer_on(status_response_topic(id));
            let answer = requester.send(request).await.expect("requester");
            assert!(
                answer.is_ok(),
                "{id} answered through the bridge: {answer:?}"
            );
            answered += 1;
        }
    }
    assert_eq!(answered, 8);
}

#[actix_rt::test]
async fn the_gate_demo_runs_across_a_site_and_a_central_broker_over_3_1_1() {
    gate_demo_across_two_brokers("3.1.1").await;
}

#[actix_rt::test]
async fn the_gate_demo_runs_across_a_site_and_a_central_broker_over_5() {
    gate_demo_across_two_brokers("5").await;
}

#[tokio::test]
async fn the_acl_and_the_hooks_see_the_bridge_under_its_own_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    // Anonymous clients (the test's) may do anything; the bridge may read gate/# and write
    // detrd/status/request/# only.
    std::fs::write(
        &acl,
        "topic readwrite #\n\nuser $bridge.central\ntopic read gate/#\n\
         topic write detrd/status/request/#\n",
    )
    .expect("write");
    let central = common::broker();
    let topics = r#"
  { pattern = "gate/#", direction = "out", qos = 1 },
  { pattern = "detrd/#", direction = "in", qos = 1 },"#;
    let bridges = Config::from_toml(&bridge_toml(central.local_addr(), "5", topics, ""))
        .expect("config")
        .bridge;
    let (site, mut hooks) = common::broker_with_hooks(|c| {
        c.auth.acl_file = Some(acl);
        c.bridge = bridges;
    });
    let connected = hooks.connected("$bridge.central").await;
    assert_eq!(connected.protocol, switchboard::ProtocolVersion::V5);
    hooks.subscribed("$bridge.central", "gate/#").await;
    bridge_ready(&site).await;

    let (mut local_sub, _) = Raw::handshake(site.local_addr(), "site-sub", true).await;
    local_sub.subscribe(1, &[("detrd/#", 1)], &[1]).await;
    let (mut app, _) = Raw::handshake(central.local_addr(), "app", true).await;
    publish_all(
        &mut app,
        &[
            "detrd/secret/1",
            "detrd/status/request/1",
            "detrd/config/2",
            "detrd/status/request/2",
        ],
    )
    .await;
    assert_eq!(
        topics_of(&read_until(&mut local_sub, "detrd/status/request/2").await),
        ["detrd/status/request/1", "detrd/status/request/2"],
        "what the ACL denies the bridge is not published here"
    );
    assert_eq!(site.metrics().snapshot().acl_denied, 2);
}

#[tokio::test]
async fn a_full_queue_for_a_down_remote_drops_the_oldest_and_counts_it() {
    if !common::mosquitto_broker_available() {
        return;
    }
    let mut central = Mosquitto::start("", true);
    let (mut remote_sub, _) = Raw::handshake(central.addr, "central-sub", false).await;
    remote_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    remote_sub.send(&[0xE0, 0x00]).await;
    remote_sub.expect_closed().await;
    let topics = r#"{ pattern = "gate/#", direction = "out", qos = 1 },"#;
    let extra = "max_queued_messages = 10\nqueue_overflow = \"drop_oldest\"";
    let site = site(&bridge_toml(central.addr, "3.1.1", topics, extra), |_| {});
    bridge_ready(&site).await;
    central.stop();
    eventually(|| async { !status(&site).connected }).await;

    let (mut gate, _) = Raw::handshake(site.local_addr(), "gate-1", true).await;
    for n in 0..15u16 {
        gate.send(&packets::publish(
            "gate/1/event",
            n.to_string().as_bytes(),
            1,
            n + 1,
            false,
            false,
        ))
        .await;
        assert_eq!(gate.expect().await.byte1, 0x40);
    }
    eventually(|| async {
        let s = status(&site);
        (s.queued, s.dropped) == (10, 5)
    })
    .await;
    central.resume();
    let (mut remote_sub, _) = Raw::handshake(central.addr, "central-sub", false).await;
    let got = read_until(&mut remote_sub, "gate/1/event").await;
    let mut payloads = vec![String::from_utf8(got[0].1.clone()).expect("utf-8")];
    while payloads.len() < 10 {
        let p = packets::parse_publish(&remote_sub.expect().await);
        remote_sub.send(&packets::ack(0x40, p.pid)).await;
        payloads.push(String::from_utf8(p.payload).expect("utf-8"));
    }
    let expected: Vec<String> = (5..15).map(|n: u16| n.to_string()).collect();
    assert_eq!(payloads, expected, "the five oldest were dropped");
}
