//! Soak test, bounded in time and not part of CI:
//!
//! ```text
//! SOAK_SECS=120 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! 64 clients connect, subscribe, publish (some retained), unsubscribe and drop, cleanly or not,
//! at random, for `SOAK_SECS` (default 120). Half the lives speak MQTT 5: sessions that expire
//! after 0-2 s, wills delayed by 1 s, shared subscriptions, No Local, topic aliases, message
//! expiry. Client ids come from a pool of 300, so takeovers happen too. Afterwards every session,
//! subscription and retained entry is gone (the Registry's counts return to zero but for the
//! broker's own retained `$SYS` topics) and the process RSS is reported against its idle level.

mod common;

use std::time::{Duration, Instant};

use common::rng::Rng;
use switchboard::registry::{GetStats, ListRetained, RegistryStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPICS: [&str; 4] = ["soak/a/x", "soak/b/x", "soak/c/x", "other/d"];
const FILTERS: [&str; 6] = [
    "soak/+/x",
    "soak/#",
    "soak/a/x",
    "other/#",
    "#",
    "$share/g/soak/#",
];

/// Reads the CONNACK (3.1.1: 4 bytes; MQTT 5: with properties).
async fn read_connack(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    let mut body = vec![0u8; usize::from(head[1] & 0x7F)];
    s.read_exact(&mut body).await?;
    Ok(())
}

/// One MQTT 5 packet of a soak life.
fn packet_v5(rng: &mut Rng, pid: u16) -> Vec<u8> {
    use common::v5::{options, prop, publish5, subscribe5, unsubscribe5, Props};
    let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
    match rng.next(5) {
        0 => {
            let no_local = !filter.starts_with("$share/") && rng.next(2) == 0;
            let opts = options(
                rng.next(3) as u8,
                no_local,
                rng.next(2) == 0,
                rng.next(3) as u8,
            );
            let props = Props::new().var(prop::SUBSCRIPTION_ID, rng.next(1000) as u32 + 1);
            subscribe5(pid, &props, &[(filter, opts)])
        }
        1 => unsubscribe5(pid, &[filter]),
        4 => vec![0xC0, 0x00],
        _ => {
            let topic = TOPICS[rng.next(TOPICS.len() as u64) as usize];
            let mut props = Props::new().u16(prop::TOPIC_ALIAS, rng.next(3) as u16 + 1);
            if rng.next(2) == 0 {
                props = props.u32(prop::MESSAGE_EXPIRY, rng.next(3) as u32);
            }
            let payload = vec![b'x'; rng.next(2048) as usize];
            let qos = rng.next(3) as u8;
            publish5(topic, &payload, qos, pid, rng.next(10) == 0, &props)
        }
    }
}

async fn client_life(addr: std::net::SocketAddr, rng: &mut Rng) -> std::io::Result<()> {
    use common::v5::{connect5, prop, Props, Will5};
    let id = format!("soak-{}", rng.next(300));
    let v5 = rng.next(2) == 0;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let connect = if v5 {
        let props = Props::new()
            .u32(prop::SESSION_EXPIRY, rng.next(3) as u32)
            .u16(prop::TOPIC_ALIAS_MAXIMUM, 4);
        let will = Will5 {
            topic: "soak/will/x",
            payload: b"gone",
            qos: 1,
            retain: false,
            props: Props::new().u32(prop::WILL_DELAY, 1),
        };
        let will = (rng.next(4) == 0).then_some(&will);
        connect5(&id, rng.next(2) == 0, 30, &props, will)
    } else {
        common::packets::connect(&id, true, 30)
    };
    s.write_all(&connect).await?;
    read_connack(&mut s).await?;
    let mut pid = 1u16;
    for _ in 0..rng.next(20) + 1 {
        pid = pid.wrapping_add(1).max(1);
        if v5 {
            s.write_all(&packet_v5(rng, pid)).await?;
            drain(&mut s).await?;
            continue;
        }
        let bytes = match rng.next(5) {
            0 => {
                let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
                common::packets::subscribe(pid, &[(filter, rng.next(3) as u8)])
            }
            1 => {
                let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
                common::packets::unsubscribe(pid, &[filter])
            }
            4 => vec![0xC0, 0x00],
            _ => {
                let topic = TOPICS[rng.next(TOPICS.len() as u64) as usize];
                let retain = rng.next(10) == 0;
                let payload = vec![b'x'; rng.next(2048) as usize];
                common::packets::publish(topic, &payload, rng.next(3) as u8, pid, retain, false)
            }
        };
        s.write_all(&bytes).await?;
        drain(&mut s).await?;
    }
    if rng.next(2) == 0 {
        s.write_all(&[0xE0, 0x00]).await?;
    }
    Ok(())
}

/// Reads whatever is there, without waiting: some clients keep up, some fall behind.
async fn drain(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut sink = [0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut sink)).await {
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: run on demand, see the module docs"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let broker = common::broker_with(|c| c.listener.workers = 0);
    let addr = broker.local_addr();
    let idle = common::rss_bytes();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..64u64 {
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut lives = 0u64;
            while Instant::now() < deadline {
                let _ = client_life(addr, &mut rng).await;
                lives += 1;
            }
            lives
        }));
    }
    let mut peak = idle;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await; // sampling memory once a second
        peak = peak.max(common::rss_bytes());
    }
    let mut lives = 0;
    for w in workers {
        lives += w.await.expect("worker");
    }
    // Retained messages are meant to stay: clear the ones the soak left, then everything is gone.
    let (mut cleaner, _) = common::Raw::handshake(addr, "soak-cleaner", true).await;
    for topic in TOPICS {
        cleaner
            .send(&common::packets::publish(topic, b"", 0, 0, true, false))
            .await;
    }
    cleaner.send(&[0xE0, 0x00]).await;
    // What is left is the broker's own `$SYS` statistics (retained, as Mosquitto's are).
    let sys_retained = || async {
        let sys = ListRetained {
            filter: "$SYS/#".into(),
            offset: 0,
            limit: 0,
        };
        broker.registry().send(sys).await.expect("registry").total
    };
    let started = Instant::now();
    let (stats, gone) = loop {
        let stats = broker.registry().send(GetStats).await.expect("registry");
        let gone = RegistryStats {
            retained: sys_retained().await,
            ..Default::default()
        };
        if stats == gone || started.elapsed() > Duration::from_secs(30) {
            break (stats, gone);
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling the Registry's counts
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // let freed memory settle before reading RSS
    let after = common::rss_bytes();
    let m = broker.metrics().snapshot();
    eprintln!(
        "soak {secs}s: {lives} client lives, {} connections, {} publishes received; \
         RSS idle {:.1} MB, peak {:.1} MB, after {:.1} MB; slow-consumer drops {} / disconnects {}, \
         protocol errors {}; registry after: {stats:?}",
        m.connections_total,
        broker.metrics().traffic.totals().publishes_received_total(),
        idle as f64 / 1e6,
        peak as f64 / 1e6,
        after as f64 / 1e6,
        m.qos0_dropped_slow_consumer,
        m.slow_consumer_disconnects,
        m.protocol_errors,
    );
    assert!(gone.retained > 0, "the $SYS topics are published");
    assert_eq!(
        stats, gone,
        "sessions, subscriptions or retained messages leaked"
    );
    assert!(
        after < idle + 64 * 1024 * 1024,
        "RSS did not come back near idle: {after} after, {idle} idle"
    );
}
