//! A quick load generator for the `pairs` scenario: N publishers, each to its own subscriber, over
//! raw TCP with pre-encoded, batched frames so the harness stays cheap. It gives the baseline
//! figure of the broker-core issue; the full harness (more scenarios, latency histograms,
//! Mosquitto comparison) is the bench issue's work.
//!
//! ```text
//! cargo bench --bench pairs -- [--addr HOST:PORT] [--pairs 8] [--qos 0|1] [--payload 64] [--secs 5]
//! ```
//! Without `--addr` it starts an embedded Switchboard on a free loopback port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use switchboard::codec::{write_publish, PublishHeader};
use switchboard::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: Option<SocketAddr>,
    pairs: usize,
    qos: u8,
    payload: usize,
    secs: u64,
    window: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: None,
        pairs: 8,
        qos: 0,
        payload: 64,
        secs: 5,
        window: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = Some(value().parse().expect("--addr HOST:PORT")),
            "--pairs" => args.pairs = value().parse().expect("--pairs N"),
            "--qos" => args.qos = value().parse().expect("--qos 0|1"),
            "--payload" => args.payload = value().parse().expect("--payload BYTES"),
            "--secs" => args.secs = value().parse().expect("--secs N"),
            "--window" => args.window = value().parse().expect("--window N"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(args.qos <= 1, "--qos 0 or 1");
    args
}

/// Encodes a packet with mqttbytes (CONNECT, SUBSCRIBE) into a fresh buffer.
fn encoded(write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> BytesMut {
    let mut buf = BytesMut::new();
    write(&mut buf).expect("encodable packet");
    buf
}

/// A PUBLISH frame, encoded by the broker's own writer.
fn publish_frame(topic: &str, payload: &[u8], qos: QoS, pid: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    let header = PublishHeader {
        qos,
        retain: false,
        dup: false,
        pid,
    };
    write_publish(&mut buf, topic, payload, header);
    buf
}

async fn connect(addr: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let connect = encoded(|b| mqttbytes::v4::Connect::new(id).write(b));
    s.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "connection refused");
    s
}

/// Splits complete frames off `buf`, calling `f(byte1, body)` for each.
fn drain_frames(buf: &mut Vec<u8>, mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    while let Some(&byte1) = buf.get(at) {
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        let complete = loop {
            let Some(&b) = buf.get(i) else { break false };
            len |= ((b & 0x7F) as usize) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break true;
            }
            shift += 7;
        };
        if !complete || buf.len() < i + len {
            break;
        }
        f(byte1, &buf[i..i + len]);
        at = i + len;
    }
    buf.drain(..at);
}

async fn subscriber(
    addr: SocketAddr,
    n: usize,
    qos: u8,
    delivered: Arc<AtomicU64>,
    ready: tokio::sync::mpsc::Sender<()>,
    closed: Arc<AtomicU64>,
) {
    let mut s = connect(addr, &format!("bench-sub-{n}")).await;
    let qos = if qos == 0 {
        mqttbytes::QoS::AtMostOnce
    } else {
        mqttbytes::QoS::AtLeastOnce
    };
    let mut subscribe = mqttbytes::v4::Subscribe::new(format!("bench/{n}"), qos);
    subscribe.pkid = 1;
    s.write_all(&encoded(|b| subscribe.write(b)))
        .await
        .expect("SUBSCRIBE");
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.expect("SUBACK");
    let _ = ready.send(()).await;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        let mut count = 0;
        drain_frames(&mut buf, |byte1, body| {
            if byte1 >> 4 == 3 {
                count += 1;
                if (byte1 >> 1) & 3 == 1 {
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    acks.extend([0x40, 2, body[2 + topic_len], body[3 + topic_len]]);
                }
            }
        });
        delivered.fetch_add(count, Ordering::Relaxed);
        if !acks.is_empty() {
            if s.write_all(&acks).await.is_err() {
                return;
            }
            acks.clear();
        }
    }
}

async fn publisher(
    addr: SocketAddr,
    n: usize,
    args: Arc<Args>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let s = connect(addr, &format!("bench-pub-{n}")).await;
    let topic = format!("bench/{n}");
    let payload = vec![0x5A; args.payload];
    let (mut rd, mut wr) = s.into_split();
    if args.qos == 0 {
        let one = publish_frame(&topic, &payload, QoS::AtMostOnce, 0);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
        while !stop.load(Ordering::Relaxed) {
            if wr.write_all(&batch).await.is_err() {
                return;
            }
            sent.fetch_add(64, Ordering::Relaxed);
        }
        return;
    }
    // QoS 1, closed loop: keep `window` messages unacknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            while let Ok(n) = rd.read_buf(&mut buf).await {
                if n == 0 {
                    return;
                }
                let mut count = 0;
                drain_frames(&mut buf, |byte1, _| count += u64::from(byte1 == 0x40));
                acked.fetch_add(count, Ordering::Relaxed);
            }
        })
    };
    let notify = tokio::sync::Notify::new();
    let mut pid: u16 = 0;
    let mut out = Vec::with_capacity(args.window * (payload.len() + topic.len() + 8));
    let mut issued = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let room = args.window as u64 - (issued - acked.load(Ordering::Relaxed));
        if room == 0 {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::task::yield_now() => {}
            }
            continue;
        }
        out.clear();
        for _ in 0..room {
            pid = pid.wrapping_add(1).max(1);
            out.extend_from_slice(&publish_frame(&topic, &payload, QoS::AtLeastOnce, pid));
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        issued += room;
        sent.fetch_add(room, Ordering::Relaxed);
    }
    reader.abort();
}

fn main() {
    let args = Arc::new(parse_args());
    let _embedded;
    let addr = match args.addr {
        Some(addr) => addr,
        None => {
            let mut config = switchboard::Config::default();
            config.listener.port = 0;
            config.sessions.max_queued_messages = 100_000;
            let broker = switchboard::BackgroundBroker::start(config).expect("embedded broker");
            let addr = broker.local_addr();
            _embedded = broker;
            addr
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let delivered = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.pairs);
        for n in 0..args.pairs {
            let (delivered, ready, closed) = (delivered.clone(), ready_tx.clone(), closed.clone());
            tokio::spawn(subscriber(addr, n, args.qos, delivered, ready, closed));
        }
        for _ in 0..args.pairs {
            ready_rx.recv().await.expect("subscriber ready");
        }
        let cpu_start = cpu_seconds();
        for n in 0..args.pairs {
            tokio::spawn(publisher(addr, n, args.clone(), sent.clone(), stop.clone()));
        }
        // One second of warm-up, then the measured window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (s0, d0, t0) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed), Instant::now());
        let mut rates = Vec::new();
        for _ in 0..args.secs {
            let before = delivered.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            rates.push(delivered.load(Ordering::Relaxed) - before);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let (s1, d1) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed));
        stop.store(true, Ordering::Relaxed);
        rates.sort_unstable();
        let median = rates[rates.len() / 2];
        let cpu = cpu_seconds() - cpu_start;
        println!(
            "pairs={} qos={} payload={}B: sent {:.0} msgs/s, delivered {:.0} msgs/s (median 1 s window {median}), process CPU {:.2} s over {:.1} s{}",
            args.pairs,
            args.qos,
            args.payload,
            (s1 - s0) as f64 / elapsed,
            (d1 - d0) as f64 / elapsed,
            cpu,
            elapsed + 1.0,
            if args.addr.is_none() { " (broker and harness in one process)" } else { " (harness only)" },
        );
        let closed = closed.load(Ordering::Relaxed);
        if closed > 0 {
            println!(
                "warning: the broker closed {closed} of {} subscriber connections during the run \
                 (a broker that disconnects slow consumers does this when its queue bound is hit)",
                args.pairs
            );
        }
    });
}

/// User + system CPU seconds of this process, from /proc (0 where unavailable).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
