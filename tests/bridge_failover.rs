//! A bridge with several remote brokers (`address = ["central:1883", "standby:1883"]`), against
//! another Switchboard as the central broker and Debian's Mosquitto as its standby: when the
//! central broker goes, the bridge moves to the standby at once, subscribes there and sends what
//! it queued meanwhile, each QoS 1 message once and in order; the admin API names the broker the
//! bridge is on. With `round_robin = false` (the default) it goes back to the central broker
//! once that one answers again.

mod common;

use common::bridge::{
    bridge_ready, bridge_toml_to, publish_all, read_until, refs, site, status, topics_of,
};
use common::mosquitto::Mosquitto;
use common::{eventually, Raw};

#[tokio::test]
async fn a_bridge_moves_to_its_standby_when_the_central_broker_goes_and_loses_nothing() {
    if !common::mosquitto_broker_available() {
        return;
    }
    let central = common::broker();
    let central_addr = central.local_addr();
    let standby = Mosquitto::start("", false);
    let topics = r#"
  { pattern = "detrd/status/response/#", direction = "out", qos = 1 },
  { pattern = "detrd/status/request/#",  direction = "in",  qos = 1 },"#;
    // Brokers as equals: the bridge stays on the one it reached.
    let toml = bridge_toml_to(
        &[central_addr, standby.addr],
        "3.1.1",
        topics,
        "round_robin = true",
    );
    let site = site(&toml, |config| config.http.port = 0);
    bridge_ready(&site).await;
    let on_central = status(&site);
    assert_eq!(
        on_central.address,
        format!("{central_addr}, {}", standby.addr)
    );
    assert_eq!(on_central.connected_to, Some(central_addr.to_string()));

    let (mut central_sub, _) = Raw::handshake(central_addr, "central-app", true).await;
    central_sub.subscribe(1, &[("detrd/#", 1)], &[1]).await;
    let (mut radar, _) = Raw::handshake(site.local_addr(), "1AB.ENTER.DETRD", true).await;
    let first: Vec<String> = (0..5)
        .map(|n| format!("detrd/status/response/{n}"))
        .collect();
    publish_all(&mut radar, &refs(&first)).await;
    let got = read_until(&mut central_sub, "detrd/status/response/4").await;
    assert_eq!(topics_of(&got), refs(&first));
    eventually(|| async { status(&site).sent == 5 }).await;

    // The central broker goes. What the radar publishes meanwhile is queued by the bridge, then
    // sent to the standby, where an app waits for it.
    drop(central_sub);
    drop(central);
    let (mut standby_sub, _) = Raw::handshake(standby.addr, "standby-app", true).await;
    standby_sub.subscribe(1, &[("detrd/#", 1)], &[1]).await;
    let then: Vec<String> = (5..10)
        .map(|n| format!("detrd/status/response/{n}"))
        .collect();
    publish_all(&mut radar, &refs(&then)).await;
    let got = read_until(&mut standby_sub, "detrd/status/response/9").await;
    assert_eq!(topics_of(&got), refs(&then), "each once, in order");
    bridge_ready(&site).await;
    assert_eq!(
        status(&site).connected_to,
        Some(standby.addr.to_string()),
        "the bridge is on the standby"
    );

    // And the way in: the bridge subscribed again at the standby.
    let (mut site_app, _) = Raw::handshake(site.local_addr(), "site-app", true).await;
    site_app
        .subscribe(1, &[("detrd/status/request/#", 1)], &[1])
        .await;
    let (mut standby_app, _) = Raw::handshake(standby.addr, "central-app-2", true).await;
    publish_all(&mut standby_app, &["detrd/status/request/1AB.ENTER.DETRD"]).await;
    let got = read_until(&mut site_app, "detrd/status/request/1AB.ENTER.DETRD").await;
    assert_eq!(got.len(), 1);
    eventually(|| async {
        let s = status(&site);
        (s.sent, s.received, s.queued, s.dropped) == (10, 1, 0, 0)
    })
    .await;
}

#[tokio::test]
async fn a_bridge_goes_back_to_the_central_broker_once_it_answers_again() {
    if !common::mosquitto_broker_available() {
        return;
    }
    let central = common::broker();
    let central_addr = central.local_addr();
    let standby = Mosquitto::start("", false);
    let topics = r#"{ pattern = "gate/#", direction = "out", qos = 1 },"#;
    let toml = bridge_toml_to(&[central_addr, standby.addr], "3.1.1", topics, "");
    let site = site(&toml, |config| config.http.port = 0);
    bridge_ready(&site).await;
    drop(central);
    eventually(|| async { status(&site).connected_to == Some(standby.addr.to_string()) }).await;

    // The central broker is back on its port: the bridge looks at it every `reconnect_max`
    // (200 ms here) and goes back, subscribed and sending there.
    let central = common::broker_with(|config| config.listener.port = central_addr.port());
    let (mut central_sub, _) = Raw::handshake(central_addr, "central-app", true).await;
    central_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    eventually(|| async {
        let s = status(&site);
        s.subscribed && s.connected_to == Some(central_addr.to_string())
    })
    .await;
    let (mut gate, _) = Raw::handshake(site.local_addr(), "gate-1AB", true).await;
    publish_all(&mut gate, &["gate/1AB/state"]).await;
    let got = read_until(&mut central_sub, "gate/1AB/state").await;
    assert_eq!(topics_of(&got), ["gate/1AB/state"]);
    drop(central);
}
