//! The `$SYS` topics (Mosquitto's names, `[sys] interval`) read with Debian's `mosquitto_sub`,
//! the traffic counters behind them moving by exactly the traffic a test sent, and clients kept
//! from publishing to `$SYS`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::v5::{self, Props};
use common::{broker_with, mosquitto_clients_available, packets, Frame, Raw};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What a test sent and received, to compare with the broker's counters.
#[derive(Default)]
struct Tally {
    packets_sent: u64,
    bytes_sent: u64,
    publishes_sent: [u64; 3],
    packets_received: u64,
    bytes_received: u64,
    publishes_received: [u64; 3],
}

impl Tally {
    async fn send(&mut self, raw: &mut Raw, bytes: &[u8]) {
        self.packets_sent += 1;
        self.bytes_sent += bytes.len() as u64;
        if bytes[0] >> 4 == 3 {
            self.publishes_sent[usize::from((bytes[0] >> 1) & 3)] += 1;
        }
        raw.send(bytes).await;
    }

    async fn expect(&mut self, raw: &mut Raw) -> Frame {
        let frame = raw.expect().await;
        self.packets_received += 1;
        self.bytes_received += frame.wire_len();
        if frame.packet_type() == 3 {
            self.publishes_received[usize::from((frame.byte1 >> 1) & 3)] += 1;
        }
        frame
    }
}

#[tokio::test]
async fn traffic_counters_move_by_exactly_the_traffic_sent() {
    // `$SYS` off: nothing but the test's own packets crosses the broker.
    let broker = broker_with(|c| c.sys.interval = Duration::ZERO);
    let addr = broker.local_addr();
    let mut tally = Tally::default();
    let mut sub = Raw::connect(addr).await;
    tally
        .send(&mut sub, &packets::connect("tally-sub", true, 60))
        .await;
    tally.expect(&mut sub).await; // CONNACK
    tally
        .send(&mut sub, &packets::subscribe(1, &[("tally/#", 2)]))
        .await;
    tally.expect(&mut sub).await; // SUBACK
    let mut publisher = Raw::connect(addr).await;
    tally
        .send(&mut publisher, &packets::connect("tally-pub", true, 60))
        .await;
    tally.expect(&mut publisher).await; // CONNACK
    for (qos, pid, size) in [(0u8, 0u16, 10usize), (1, 1, 300), (1, 2, 20_000), (0, 0, 1)] {
        let publish = packets::publish("tally/a", &vec![7; size], qos, pid, false, false);
        tally.send(&mut publisher, &publish).await;
        if qos == 1 {
            let puback = tally.expect(&mut publisher).await;
            assert_eq!(puback.byte1, 0x40);
        }
    }
    for _ in 0..4 {
        let frame = tally.expect(&mut sub).await;
        let publish = packets::parse_publish(&frame);
        if publish.qos == 1 {
            tally.send(&mut sub, &packets::ack(0x40, publish.pid)).await;
        }
    }
    tally.send(&mut publisher, &[0xC0, 0x00]).await; // PINGREQ
    assert_eq!(tally.expect(&mut publisher).await.byte1, 0xD0);
    tally.send(&mut sub, &[0xC0, 0x00]).await;
    assert_eq!(tally.expect(&mut sub).await.byte1, 0xD0);
    // The broker counts what it read as it reads it, and what it wrote once the write
    // completed: both within a moment of the PINGRESPs.
    let traffic = &broker.metrics().traffic;
    common::eventually(|| async {
        let t = traffic.totals();
        t.packets_received == tally.packets_sent && t.packets_sent == tally.packets_received
    })
    .await;
    let t = traffic.totals();
    assert_eq!(t.bytes_received, tally.bytes_sent);
    assert_eq!(t.bytes_sent, tally.bytes_received);
    assert_eq!(t.publishes_received, tally.publishes_sent);
    assert_eq!(t.publishes_received, [2, 2, 0]);
    assert_eq!(t.publishes_sent, tally.publishes_received);
}

/// Reads `mosquitto_sub -F '%t\t%p'` lines (topic, tab, payload) until `done` holds for what was read;
/// panics after 20 s.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    values: &mut HashMap<String, String>,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(values) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("$SYS values not reached within 20 s: {values:?}"))
            .expect("mosquitto_sub output")
            .expect("mosquitto_sub still running");
        if let Some((topic, payload)) = line.split_once('\t') {
            values.insert(topic.to_string(), payload.to_string());
        }
    }
}

fn number(values: &HashMap<String, String>, topic: &str) -> Option<f64> {
    values.get(&format!("$SYS/broker/{topic}"))?.parse().ok()
}

#[tokio::test]
async fn sys_topics_read_with_mosquitto_sub() {
    if !mosquitto_clients_available() {
        return;
    }
    let broker = broker_with(|c| c.sys.interval = Duration::from_millis(200));
    let addr = broker.local_addr();
    // A persistent session that goes offline: one disconnected client with one subscription.
    Raw::leave_subscribed(addr, "sys-away", "gate/+/cmd").await;
    let (mut sub, _) = Raw::handshake(addr, "sys-sub", true).await;
    sub.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut publisher, _) = Raw::handshake(addr, "sys-pub", true).await;
    publisher
        .send(&packets::publish(
            "gate/1/state",
            b"closed",
            1,
            1,
            true,
            false,
        ))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    for pid in 2..=10 {
        publisher
            .send(&packets::publish(
                "gate/1/event",
                b"opened",
                1,
                pid,
                false,
                false,
            ))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    // One command for the gate that is away: its session holds it.
    publisher
        .send(&packets::publish(
            "gate/1/cmd",
            b"open",
            1,
            11,
            false,
            false,
        ))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    assert_eq!(sub.drain_acking().await.len(), 11);

    let mut mosquitto_sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        // Topic and payload apart by a tab: one topic name holds a space.
        .args(["-i", "sys-reader", "-F", "%t\t%p", "-t", "$SYS/broker/#"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub starts");
    let stdout = mosquitto_sub.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut values = HashMap::new();
    read_until(&mut lines, &mut values, |v| {
        number(v, "publish/messages/received") == Some(11.0)
            && number(v, "clients/connected") == Some(3.0)
            && number(v, "subscriptions/count") == Some(3.0)
            && number(v, "load/sockets") == Some(3.0)
    })
    .await;
    // The topic names Mosquitto publishes, with values that follow the traffic above.
    let version = &values["$SYS/broker/version"];
    assert_eq!(
        version,
        &format!("switchboard version {}", env!("CARGO_PKG_VERSION"))
    );
    let uptime = &values["$SYS/broker/uptime"];
    assert!(
        uptime
            .strip_suffix(" seconds")
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        "{uptime}"
    );
    assert_eq!(number(&values, "clients/disconnected"), Some(1.0));
    assert_eq!(number(&values, "clients/total"), Some(4.0));
    // Every `$SYS` topic is retained, so all of them came on subscribing; the retained count
    // is those plus the test's one.
    read_until(&mut lines, &mut values, |v| {
        number(v, "retained messages/count") == Some(v.len() as f64 + 1.0)
    })
    .await;
    // The message store, as Mosquitto counts it: the retained messages and the one command
    // held for the gate that is away, and at least their topics' and payloads' bytes.
    read_until(&mut lines, &mut values, |v| {
        number(v, "store/messages/count")
            == number(v, "retained messages/count").map(|retained| retained + 1.0)
    })
    .await;
    let held = "gate/1/state".len() + "closed".len() + "gate/1/cmd".len() + "open".len();
    assert!(
        number(&values, "store/messages/bytes").is_some_and(|n| n >= held as f64),
        "{values:?}"
    );
    assert_eq!(number(&values, "clients/expired"), Some(0.0));
    // 11 publishes in, 11 deliveries out (plus the `$SYS` ones to mosquitto_sub).
    assert!(number(&values, "publish/messages/sent").is_some_and(|n| n >= 11.0));
    assert!(number(&values, "messages/received").is_some_and(|n| n > 10.0));
    assert!(number(&values, "bytes/received").is_some_and(|n| n > 0.0));
    assert!(number(&values, "bytes/sent").is_some_and(|n| n > 0.0));
    // The load averages (messages per minute over 1, 5 and 15 minutes) take the traffic in
    // at the publication after it.
    read_until(&mut lines, &mut values, |v| {
        ["messages", "publish", "bytes"].iter().all(|counter| {
            ["received", "sent"].iter().all(|direction| {
                ["1min", "5min", "15min"].iter().all(|window| {
                    number(v, &format!("load/{counter}/{direction}/{window}"))
                        .is_some_and(|n| n > 0.0)
                })
            })
        })
    })
    .await;
    // An MQTT 5 client whose session is kept 1 s after it goes: once that has passed, the
    // session is counted expired.
    let mut brief = Raw::connect(addr).await;
    brief
        .send(&v5::connect5(
            "sys-brief",
            true,
            60,
            &Props::new().u32(0x11, 1),
            None,
        ))
        .await;
    assert_eq!(brief.expect().await.byte1, 0x20, "CONNACK");
    brief.send(&[0xE0, 0x00]).await;
    brief.expect_closed().await;
    read_until(&mut lines, &mut values, |v| {
        number(v, "clients/expired") == Some(1.0) && number(v, "clients/disconnected") == Some(1.0)
    })
    .await;
    let _ = mosquitto_sub.kill().await;
}

#[tokio::test]
async fn clients_may_not_publish_to_sys_topics() {
    // Section 4.7.2: `$` topics are the Server's; it SHOULD prevent clients from using them
    // to exchange messages. A publish to `$SYS/...` is dropped (3.1.1: acknowledged as usual,
    // there is no negative PUBACK; 5.0: PUBACK 0x87 Not authorized), and so is a will.
    let (broker, mut hooks) =
        common::broker_with_hooks(|c| c.sys.interval = Duration::from_secs(3600));
    let addr = broker.local_addr();
    let version = format!("switchboard version {}", env!("CARGO_PKG_VERSION"));
    let (mut v3, _) = Raw::handshake(addr, "spoof-3", true).await;
    v3.send(&packets::publish(
        "$SYS/broker/version",
        b"spoof",
        1,
        1,
        true,
        false,
    ))
    .await;
    let puback = v3.expect().await;
    assert_eq!((puback.byte1, puback.pid()), (0x40, 1));
    let mut v5 = Raw::handshake5(addr, "spoof-5").await;
    v5.send(&v5::publish5(
        "$SYS/broker/uptime",
        b"spoof",
        1,
        7,
        true,
        &Props::new(),
    ))
    .await;
    let puback = v5.expect().await;
    assert_eq!(puback.byte1, 0x40);
    assert_eq!(puback.body[2], 0x87, "PUBACK reason Not authorized");
    // A will to `$SYS` is dropped at CONNECT.
    let (mut will, code) = Raw::connect_with(
        addr,
        packets::ConnectSpec {
            client_id: "spoof-will",
            will: Some(("$SYS/broker/clients/connected", b"spoof", 0, true)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code, 0);
    // Closed without DISCONNECT: the will would go out now, before the hook reports it.
    drop(will.stream.shutdown().await);
    hooks.disconnected("spoof-will").await;

    let (mut reader, _) = Raw::handshake(addr, "sys-reader", true).await;
    reader.subscribe(1, &[("$SYS/broker/#", 0)], &[0]).await;
    let values: Vec<(String, Vec<u8>)> = reader
        .sync()
        .await
        .iter()
        .map(packets::parse_publish)
        .map(|p| (p.topic, p.payload))
        .collect();
    assert!(
        values.contains(&("$SYS/broker/version".into(), version.into_bytes())),
        "{values:?}"
    );
    assert!(
        values.iter().all(|(_, payload)| payload != b"spoof"),
        "{values:?}"
    );
}

#[tokio::test]
async fn sys_topics_are_on_by_default_and_off_at_zero() {
    use switchboard::registry::GetStats;
    let on = broker_with(|_| {});
    assert!(
        on.registry().send(GetStats).await.expect("stats").retained > 0,
        "the first publication is at start"
    );
    let (mut reader, _) = Raw::handshake(on.local_addr(), "reader", true).await;
    reader
        .subscribe(1, &[("$SYS/broker/version", 0)], &[0])
        .await;
    let got = packets::parse_publish(&reader.expect().await);
    assert!(got.retain, "$SYS topics are retained");
    let off = broker_with(|c| c.sys.interval = Duration::ZERO);
    assert_eq!(
        off.registry().send(GetStats).await.expect("stats").retained,
        0
    );
}
