//! Helpers of the bridge tests: a site broker with a `[[bridge]]` to a given remote, its state,
//! and a raw client's publish and read loops.

use std::net::SocketAddr;

use switchboard::bridge::BridgeSnapshot;
use switchboard::{BackgroundBroker, Config};

use super::{eventually, packets, Raw};

/// A `[[bridge]]` named `central` to `address`, with these `topics` entries and extra keys.
pub fn bridge_toml(address: SocketAddr, protocol: &str, topics: &str, extra: &str) -> String {
    bridge_toml_to(&[address], protocol, topics, extra)
}

/// [`bridge_toml`] with several remote brokers, `address` as an array.
pub fn bridge_toml_to(
    addresses: &[SocketAddr],
    protocol: &str,
    topics: &str,
    extra: &str,
) -> String {
    let address = match addresses {
        [one] => format!("\"{one}\""),
        several => format!(
            "[{}]",
            several
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "[[bridge]]\nname = \"central\"\naddress = {address}\nprotocol = \"{protocol}\"\n\
         client_id = \"site-1AB\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"\n\
         {extra}\ntopics = [\n{topics}\n]\n"
    )
}

/// A site broker (test configuration) running the bridges of `toml`.
pub fn site(toml: &str, adjust: impl FnOnce(&mut Config)) -> BackgroundBroker {
    let bridges = Config::from_toml(toml).expect("bridge config").bridge;
    super::broker_with(|config| {
        config.bridge = bridges;
        adjust(config);
    })
}

/// The (first) bridge's state.
pub fn status(broker: &BackgroundBroker) -> BridgeSnapshot {
    broker.metrics().bridges.snapshots().remove(0)
}

/// Waits until the bridge is connected and subscribed on both sides.
pub async fn bridge_ready(broker: &BackgroundBroker) {
    eventually(|| async { status(broker).subscribed }).await;
}

/// Reads PUBLISHes (acknowledging QoS 1) until one on `last`; returns their topics and payloads.
pub async fn read_until(raw: &mut Raw, last: &str) -> Vec<(String, Vec<u8>)> {
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

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn topics_of(got: &[(String, Vec<u8>)]) -> Vec<&str> {
    got.iter().map(|(topic, _)| topic.as_str()).collect()
}

/// A client that publishes QoS 1 and waits for each PUBACK.
pub async fn publish_all(raw: &mut Raw, topics: &[&str]) {
    for (i, topic) in topics.iter().enumerate() {
        let pid = i as u16 + 1;
        raw.send(&packets::publish(topic, b"m", 1, pid, false, false))
            .await;
        let ack = raw.expect().await;
        assert_eq!((ack.byte1, ack.pid()), (0x40, pid), "PUBACK for {topic}");
    }
}

/// Publishes `count` QoS 1 messages to `topic` with payloads `"0"`, `"1"`, ... (packet ids from
/// 1), each after the PUBACK of the one before.
pub async fn publish_counting(raw: &mut Raw, topic: &str, count: u16) {
    for n in 0..count {
        let payload = n.to_string();
        raw.send(&packets::publish(
            topic,
            payload.as_bytes(),
            1,
            n + 1,
            false,
            false,
        ))
        .await;
        let ack = raw.expect().await;
        assert_eq!((ack.byte1, ack.pid()), (0x40, n + 1), "PUBACK for {n}");
    }
}
