//! Debian's Mosquitto as a bridge peer: a site broker bridging `gate/#` both ways to Switchboard
//! with `try_private` (the bridge bit in the CONNECT protocol level, 0x84). Switchboard accepts
//! it, sends nothing back to the bridge that came from it (no loop), and keeps the RETAIN flag
//! on what it forwards (retained messages propagate).

mod common;

use common::mosquitto::Mosquitto;
use common::{broker_with_hooks, packets, Raw};

#[tokio::test]
async fn a_mosquitto_bridge_with_the_bridge_bit_neither_loops_nor_loses_retain() {
    if !common::mosquitto_broker_available() {
        return;
    }
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let central = broker.local_addr();
    let site = Mosquitto::start(
        &format!(
            "connection to-central\naddress {central}\nremote_clientid site-1AB\n\
         topic gate/# both 1\ntry_private true\ncleansession true\n\
         bridge_protocol_version mqttv311\nnotifications false\nrestart_timeout 1\n"
        ),
        false,
    );
    // Mosquitto connects with protocol level 0x84 and subscribes to gate/#.
    hooks.subscribed("site-1AB", "gate/#").await;

    let (mut site_sub, _) = Raw::handshake(site.addr, "site-sub", true).await;
    site_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut central_sub, _) = Raw::handshake(central, "central-sub", true).await;
    central_sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut central_pub, _) = Raw::handshake(central, "central-app", true).await;

    // Central -> site, retained: it arrives, and the site keeps it as retained.
    central_pub
        .send(&packets::publish(
            "gate/1/state",
            b"closed",
            1,
            1,
            true,
            false,
        ))
        .await;
    assert_eq!(central_pub.expect().await.byte1, 0x40);
    let got = packets::parse_publish(&site_sub.expect().await);
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("gate/1/state", &b"closed"[..])
    );
    site_sub.send(&packets::ack(0x40, got.pid)).await;
    assert_eq!(central_sub.drain_acking().await.len(), 1);
    let (mut late, _) = Raw::handshake(site.addr, "site-late", true).await;
    late.send(&packets::subscribe(1, &[("gate/1/state", 1)]))
        .await;
    let mut retained = None;
    while retained.is_none() {
        let frame = late.expect().await;
        if frame.packet_type() == 3 {
            retained = Some(packets::parse_publish(&frame));
        }
    }
    let retained = retained.expect("retained");
    assert!(
        retained.retain,
        "the bridge kept RETAIN, so the site stored it"
    );
    assert_eq!(retained.payload, b"closed");

    // Site -> central: arrives once at the central subscriber, and is not echoed back to the
    // site: the site subscriber sees it once, then the marker published after it.
    let (mut site_pub, _) = Raw::handshake(site.addr, "gate-2", true).await;
    site_pub
        .send(&packets::publish("gate/2/cmd", b"open", 1, 1, false, false))
        .await;
    assert_eq!(site_pub.expect().await.byte1, 0x40);
    let at_central = packets::parse_publish(&central_sub.expect().await);
    assert_eq!(at_central.topic, "gate/2/cmd");
    central_sub.send(&packets::ack(0x40, at_central.pid)).await;
    central_pub
        .send(&packets::publish("gate/9/marker", b"m", 1, 2, false, false))
        .await;
    assert_eq!(central_pub.expect().await.byte1, 0x40);
    let mut at_site = Vec::new();
    while at_site.last().map(String::as_str) != Some("gate/9/marker") {
        let p = packets::parse_publish(&site_sub.expect().await);
        if p.qos == 1 {
            site_sub.send(&packets::ack(0x40, p.pid)).await;
        }
        at_site.push(p.topic);
    }
    assert_eq!(at_site, vec!["gate/2/cmd", "gate/9/marker"], "no echo");
    // Nor did the marker come back to central from the site.
    let rest: Vec<String> = central_sub
        .drain_acking()
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(rest, vec!["gate/9/marker"]);
}
