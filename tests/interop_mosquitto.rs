//! Stock clients work unchanged: mosquitto_pub and mosquitto_sub (Debian's mosquitto-clients)
//! against a real broker. `.ci/run` installs them; on a machine without them this test says so and
//! passes only when not under CI.

mod common;

use std::process::Command;

use common::{broker_with_hooks, mosquitto_clients_available};

#[tokio::test]
async fn mosquitto_sub_receives_what_mosquitto_pub_sends() {
    if !mosquitto_clients_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let port = broker.local_addr().port().to_string();
    let sub = common::spawn_mosquitto_sub(
        broker.local_addr().port(),
        &[
            "-i",
            "mosq-sub",
            "-q",
            "2",
            "-v",
            "-C",
            "3",
            "-W",
            "10",
            "-t",
            "detrd/status/response/+",
        ],
    );
    hooks
        .subscribed("mosq-sub", "detrd/status/response/+")
        .await;
    for (qos, body) in [("0", "ok-0"), ("1", "ok-1"), ("2", "ok-2")] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", qos])
            .args(["-t", "detrd/status/response/1AB.ENTER.DETRD", "-m", body])
            .status()
            .await
            .expect("mosquitto_pub runs");
        assert!(status.success());
    }
    let lines = common::mosquitto_client_lines(sub).await;
    assert_eq!(
        lines,
        vec![
            "detrd/status/response/1AB.ENTER.DETRD ok-0",
            "detrd/status/response/1AB.ENTER.DETRD ok-1",
            "detrd/status/response/1AB.ENTER.DETRD ok-2",
        ]
    );
}

#[tokio::test]
async fn under_an_acl_mosquitto_sub_on_everything_gets_all_but_the_denied_topics() {
    if !mosquitto_clients_available() {
        return;
    }
    // A dashboard's ACL as Mosquitto users write it: everything but the secrets.
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite #\ntopic deny secrets/#\nuser vault\ntopic readwrite secrets/#\ntopic readwrite plant/#\n",
    )
    .expect("acl");
    let (broker, mut hooks) = broker_with_hooks(|c| c.auth.acl_file = Some(acl));
    let port = broker.local_addr().port().to_string();
    let sub = common::spawn_mosquitto_sub(
        broker.local_addr().port(),
        &[
            "-i",
            "dashboard",
            "-q",
            "1",
            "-v",
            "-C",
            "2",
            "-W",
            "10",
            "-t",
            "#",
        ],
    );
    hooks.subscribed("dashboard", "#").await;
    for (topic, body) in [
        ("plant/a", "first"),
        ("secrets/key", "hidden"),
        ("plant/b", "second"),
    ] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-u", "vault"])
            .args(["-t", topic, "-m", body])
            .status()
            .await
            .expect("mosquitto_pub runs");
        assert!(status.success());
    }
    let lines = common::mosquitto_client_lines(sub).await;
    assert_eq!(lines, vec!["plant/a first", "plant/b second"]);
}

#[tokio::test]
async fn mosquitto_sub_gets_retained_message_with_retain_flag() {
    if !mosquitto_clients_available() {
        return;
    }
    let broker = common::broker();
    let port = broker.local_addr().port().to_string();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-r",
            "-q",
            "1",
            "-t",
            "gate/1AB/state",
            "-m",
            "closed",
        ])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success());
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "gate/#",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%r %t %p",
        ])
        .output()
        .await
        .expect("mosquitto_sub runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 gate/1AB/state closed"
    );
}

#[tokio::test]
async fn with_persistence_mosquitto_pub_gets_its_acknowledgement_when_nobody_subscribes() {
    // [MQTT-4.3.2-1] / [MQTT-4.3.3-1]: PUBACK, or PUBREC then PUBCOMP, for every QoS 1/2 PUBLISH,
    // whether or not a subscription matches. mosquitto_pub exits 0 only once it came.
    if !mosquitto_clients_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = common::broker_with(|c| c.persistence.dir = Some(dir.path().join("state")));
    let port = broker.local_addr().port().to_string();
    for qos in ["1", "2"] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", qos])
            .args(["-t", "nobody/listens", "-m", "x"])
            .status();
        let status = tokio::time::timeout(common::WAIT, status)
            .await
            .unwrap_or_else(|_| panic!("mosquitto_pub -q {qos} got no acknowledgement"))
            .expect("mosquitto_pub runs");
        assert!(status.success(), "mosquitto_pub -q {qos}");
    }
}

#[tokio::test]
async fn mosquitto_sub_gets_every_one_of_many_retained_messages() {
    // What a dashboard does after a restart: `mosquitto_sub -t 'gate/#'` over a fleet's
    // retained states, far more than the client's output bound (`max_outbound_bytes`) holds.
    // [MQTT-3.3.1-6] every one is sent; none is dropped as if the client were slow.
    if !mosquitto_clients_available() {
        return;
    }
    const GATES: usize = 20_000;
    let broker = common::broker_with(|c| c.sessions.max_outbound_bytes = 64 * 1024);
    let (mut publisher, _) = common::Raw::handshake(broker.local_addr(), "fleet", true).await;
    let mut burst = Vec::new();
    for i in 0..GATES {
        burst.extend(common::packets::publish(
            &format!("gate/{i}/state"),
            b"closed",
            0,
            0,
            true,
            false,
        ));
    }
    publisher.send(&burst).await;
    publisher.sync().await;
    let count = GATES.to_string();
    let sub = common::spawn_mosquitto_sub(
        broker.local_addr().port(),
        &["-t", "gate/#", "-C", &count, "-W", "10", "-F", "%r %t %p"],
    );
    let lines = common::mosquitto_client_lines(sub).await;
    assert_eq!(lines.len(), GATES);
    let mut topics: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert!(l.starts_with("1 ") && l.ends_with(" closed"), "{l}");
            &l[2..l.len() - 7]
        })
        .collect();
    topics.sort_unstable();
    topics.dedup();
    assert_eq!(topics.len(), GATES, "each gate once");
    assert_eq!(broker.metrics().snapshot().qos0_dropped_slow_consumer, 0);
}
