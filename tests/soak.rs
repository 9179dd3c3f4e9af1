//! Soak test, bounded in time and not part of CI:
//!
//! ```text
//! SOAK_SECS=120 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! 64 clients connect, subscribe, publish (some retained), unsubscribe and drop, cleanly or not,
//! at random, for `SOAK_SECS` (default 120). Client ids come from a pool of 300, so takeovers
//! happen too. Afterwards every session, subscription and retained entry is gone (the Registry's
//! counts return to zero) and the process RSS is reported against its idle level.

mod common;

use std::time::{Duration, Instant};

use switchboard::registry::GetStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

const TOPICS: [&str; 4] = ["soak/a/x", "soak/b/x", "soak/c/x", "other/d"];
const FILTERS: [&str; 5] = ["soak/+/x", "soak/#", "soak/a/x", "other/#", "#"];

async fn client_life(addr: std::net::SocketAddr, rng: &mut Rng) -> std::io::Result<()> {
    let id = format!("soak-{}", rng.next(300));
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&common::packets::connect(&id, true, 30))
        .await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    let mut pid = 1u16;
    for _ in 0..rng.next(20) + 1 {
        pid = pid.wrapping_add(1).max(1);
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
        // Read whatever is there, without waiting: some clients keep up, some fall behind.
        let mut sink = [0u8; 16 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut sink)).await
        {
            if n == 0 {
                return Ok(());
            }
        }
    }
    if rng.next(2) == 0 {
        s.write_all(&[0xE0, 0x00]).await?;
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
    let started = Instant::now();
    let stats = loop {
        let stats = broker.registry().send(GetStats).await.expect("registry");
        if stats == Default::default() || started.elapsed() > Duration::from_secs(30) {
            break stats;
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
        m.publishes_received,
        idle as f64 / 1e6,
        peak as f64 / 1e6,
        after as f64 / 1e6,
        m.qos0_dropped_slow_consumer,
        m.slow_consumer_disconnects,
        m.protocol_errors,
    );
    assert_eq!(
        stats,
        Default::default(),
        "sessions, subscriptions or retained messages leaked"
    );
    assert!(
        after < idle + 64 * 1024 * 1024,
        "RSS did not come back near idle: {after} after, {idle} idle"
    );
}
