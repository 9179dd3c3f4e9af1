//! The seed's pattern at fleet scale (`--scenario fleet`): `--clients` devices, device `i`
//! subscribed to `detrd/status/request/{i}`, answering each request on
//! `detrd/status/response/{i}` and publishing telemetry on `detrd/telemetry/{i}` at
//! `--telemetry-rate` messages/s each; an app sending status requests to the devices in turn at
//! `--rate` requests/s in total (open loop), and timing each round trip; a collector on
//! `detrd/telemetry/+`. MQTT 3.1.1: the request's stamp (sequence number and send time) travels in
//! its payload and the device echoes it. MQTT 5 (`--mqtt 5`): the request carries a Response
//! Topic and Correlation Data, and the device answers there with the Correlation Data.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use switchboard::codec::{write_publish, write_publish_v5, PublishExtras, PublishHeader};
use switchboard::{MessageProperties, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::Args;
use crate::conn::{self, Conn};
use crate::report::Measured;
use crate::wire;

/// Requests per second when `--rate` is not given.
pub const DEFAULT_REQUEST_RATE: u64 = 1000;

/// What a fleet run measured: sent counts requests, responses and telemetry; delivered counts
/// requests to devices, responses to the app and telemetry to the collector; latency is the
/// round trip, request sent -> response read.
pub struct FleetResult {
    pub measured: Measured,
    /// Requests that never got their response (after a drain at the end).
    pub lost: u64,
}

/// Counters shared by every client of one run.
struct Counters {
    start: Instant,
    published: Cell<u64>,
    delivered: Cell<u64>,
    requests: Cell<u64>,
    responses: Cell<u64>,
    measuring: Cell<bool>,
    stop: Cell<bool>,
    latency: RefCell<Histogram<u64>>,
}

impl Counters {
    fn nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }
}

/// One client's side of the QoS 1/2 handshakes, and its PUBLISH encoder.
struct Link {
    stream: Conn,
    inbox: Vec<u8>,
    out: Vec<u8>,
    qos: u8,
    pid: u16,
    mqtt5: bool,
}

/// A PUBLISH the broker delivered: topic, MQTT 5 Response Topic and Correlation Data, payload.
struct Incoming {
    topic: String,
    response_topic: Option<String>,
    correlation: Option<Bytes>,
    payload: Vec<u8>,
}

impl Link {
    async fn open(addr: SocketAddr, id: &str, qos: u8, mqtt5: bool) -> std::io::Result<Link> {
        Ok(Link {
            // Every fleet client subscribes: with `--persistent-subscribers` all of them keep
            // a persistent session, as devices whose requests must wait for them do.
            stream: conn::handshake(addr, id, !wire::persistent_subscribers()).await?,
            inbox: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
            qos,
            pid: 0,
            mqtt5,
        })
    }

    async fn subscribe(&mut self, filter: &str) -> std::io::Result<()> {
        let frame = wire::subscribe(1, &[filter.to_string()], self.qos);
        self.stream.write_all(&frame).await?;
        // TLS may hold records back until flushed; on TCP this is free.
        self.stream.flush().await?;
        loop {
            if self.stream.read_buf(&mut self.inbox).await? == 0 {
                return Err(std::io::Error::other("closed before SUBACK"));
            }
            let (frames, used) = wire::frames(&self.inbox);
            if frames.iter().any(|f| f.byte1 == 0x90) {
                self.inbox.drain(..used);
                return Ok(());
            }
        }
    }

    fn publish(&mut self, topic: &str, payload: &[u8], properties: Option<&MessageProperties>) {
        self.pid = self.pid.wrapping_add(1).max(1);
        let header = PublishHeader {
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: false,
            dup: false,
            pid: self.pid,
        };
        let mut buf = BytesMut::new();
        if self.mqtt5 {
            let extras = PublishExtras {
                properties,
                ..PublishExtras::default()
            };
            write_publish_v5(&mut buf, topic, payload, header, &extras, None);
        } else {
            write_publish(&mut buf, topic, payload, header);
        }
        self.out.extend_from_slice(&buf);
    }

    /// Reads what is there (waiting for something), answers the broker's handshakes, and returns
    /// the PUBLISH packets delivered; `None` when the broker closed the connection.
    async fn read(&mut self) -> std::io::Result<Option<Vec<Incoming>>> {
        if self.stream.read_buf(&mut self.inbox).await? == 0 {
            return Ok(None);
        }
        let (frames, used) = wire::frames(&self.inbox);
        let mut delivered = Vec::new();
        for frame in frames {
            let body = &self.inbox[frame.body.clone()];
            let pid = wire::pid_bytes(body);
            match (frame.byte1 >> 4, pid) {
                (3, _) => {
                    if let Some((incoming, pid)) = parse_publish(frame.byte1, body, self.mqtt5) {
                        match (frame.byte1 >> 1) & 3 {
                            1 => self.out.extend([0x40, 2, (pid >> 8) as u8, pid as u8]),
                            2 => self.out.extend([0x50, 2, (pid >> 8) as u8, pid as u8]),
                            _ => {}
                        }
                        delivered.push(incoming);
                    }
                }
                (5, Some([hi, lo])) => self.out.extend([0x62, 2, hi, lo]), // PUBREC -> PUBREL
                (6, Some([hi, lo])) => self.out.extend([0x70, 2, hi, lo]), // PUBREL -> PUBCOMP
                _ => {}
            }
        }
        self.inbox.drain(..used);
        Ok(Some(delivered))
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Parses a delivered PUBLISH body; returns it with its packet identifier (0 for QoS 0).
fn parse_publish(byte1: u8, body: &[u8], mqtt5: bool) -> Option<(Incoming, u16)> {
    let qos = (byte1 >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = String::from_utf8_lossy(body.get(2..2 + topic_len)?).into_owned();
    let mut at = 2 + topic_len;
    let mut pid = 0;
    if qos > 0 {
        pid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    let (mut response_topic, mut correlation) = (None, None);
    if mqtt5 {
        let (len, n) = var_int(body.get(at..)?)?;
        at += n;
        let mut props = body.get(at..at + len)?;
        at += len;
        // Only what the app sends, or the broker may add unasked, is expected here.
        while let Some((&id, rest)) = props.split_first() {
            let string = |rest: &[u8]| -> Option<(Vec<u8>, usize)> {
                let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                Some((rest.get(2..2 + n)?.to_vec(), 2 + n))
            };
            let used = match id {
                0x08 => {
                    let (s, n) = string(rest)?;
                    response_topic = Some(String::from_utf8_lossy(&s).into_owned());
                    n
                }
                0x09 => {
                    let (s, n) = string(rest)?;
                    correlation = Some(Bytes::from(s));
                    n
                }
                0x01 => 1,
                0x02 => 4,
                0x23 => 2,
                0x0B => var_int(rest)?.1,
                _ => return None,
            };
            props = rest.get(used..)?;
        }
    }
    let payload = body.get(at..)?.to_vec();
    let incoming = Incoming {
        topic,
        response_topic,
        correlation,
        payload,
    };
    Some((incoming, pid))
}

fn var_int(bytes: &[u8]) -> Option<(usize, usize)> {
    let (mut value, mut shift) = (0usize, 0);
    for (i, &b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
    }
    None
}

/// The stamp of a request: sequence number and send time, 16 bytes.
fn stamp(seq: u64, nanos: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&seq.to_be_bytes());
    s[8..].copy_from_slice(&nanos.to_be_bytes());
    s
}

fn read_stamp(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?))
}

async fn device(
    addr: SocketAddr,
    index: usize,
    args: Rc<Args>,
    counters: Rc<Counters>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    let mqtt5 = args.mqtt == "5";
    let mut link = Link::open(addr, &format!("bench-device-{index}"), args.qos, mqtt5).await?;
    link.subscribe(&format!("detrd/status/request/{index}"))
        .await?;
    let _ = ready.send(()).await;
    let response_topic = format!("detrd/status/response/{index}");
    let telemetry_topic = format!("detrd/telemetry/{index}");
    let payload_len = args.payload.max(16);
    let mut telemetry = (args.telemetry_rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / args.telemetry_rate);
        // Spread the devices over the period instead of all at once.
        let offset = period.mul_f64((index as f64 * 0.618_034).fract());
        tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
    });
    loop {
        let tick = async {
            match telemetry.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = link.read() => {
                let Some(requests) = read? else { return Ok(()) };
                Counters::add(&counters.delivered, requests.len() as u64);
                for request in requests {
                    // 3.1.1: the stamp goes back in the payload; 5: as Correlation Data, to the
                    // Response Topic.
                    let mut payload = vec![0x5A; payload_len];
                    let (topic, properties) = match (&request.response_topic, request.correlation) {
                        (Some(topic), Some(correlation)) => (
                            topic.as_str(),
                            Some(MessageProperties {
                                correlation_data: Some(correlation),
                                ..MessageProperties::default()
                            }),
                        ),
                        _ => {
                            let n = request.payload.len().min(16);
                            payload[..n].copy_from_slice(&request.payload[..n]);
                            (response_topic.as_str(), None)
                        }
                    };
                    link.publish(topic, &payload, properties.as_ref());
                    Counters::add(&counters.published, 1);
                }
            }
            _ = tick => {
                if !counters.stop.get() {
                    link.publish(&telemetry_topic, &vec![0x33; payload_len], None);
                    Counters::add(&counters.published, 1);
                }
            }
        }
        link.flush().await?;
    }
}

/// Receives telemetry on `detrd/telemetry/+` and counts it.
async fn collector(
    addr: SocketAddr,
    args: Rc<Args>,
    counters: Rc<Counters>,
) -> std::io::Result<()> {
    let mut link = Link::open(addr, "bench-collector", args.qos, args.mqtt == "5").await?;
    link.subscribe("detrd/telemetry/+").await?;
    while let Some(got) = link.read().await? {
        Counters::add(&counters.delivered, got.len() as u64);
        link.flush().await?;
    }
    Ok(())
}

/// Sends requests to the devices in turn at `rate` per second and times their responses.
async fn app(
    addr: SocketAddr,
    args: Rc<Args>,
    rate: f64,
    counters: Rc<Counters>,
) -> std::io::Result<()> {
    let mqtt5 = args.mqtt == "5";
    let mut link = Link::open(addr, "bench-app", args.qos, mqtt5).await?;
    link.subscribe("detrd/status/response/+").await?;
    let devices = args.clients.max(1) as u64;
    let payload_len = args.payload.max(16);
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    let (mut budget, mut last, mut seq) = (0.0f64, Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick(), if !counters.stop.get() => {
                let now = Instant::now();
                budget = (budget + rate * now.duration_since(last).as_secs_f64()).min(rate);
                last = now;
                while budget >= 1.0 {
                    budget -= 1.0;
                    let device = seq % devices;
                    let stamp = stamp(seq, counters.nanos());
                    let topic = format!("detrd/status/request/{device}");
                    if mqtt5 {
                        let properties = MessageProperties {
                            response_topic: Some(format!("detrd/status/response/{device}")),
                            correlation_data: Some(Bytes::copy_from_slice(&stamp)),
                            ..MessageProperties::default()
                        };
                        link.publish(&topic, &vec![0x5A; payload_len], Some(&properties));
                    } else {
                        let mut payload = vec![0x5A; payload_len];
                        payload[..16].copy_from_slice(&stamp);
                        link.publish(&topic, &payload, None);
                    }
                    seq += 1;
                    Counters::add(&counters.requests, 1);
                    Counters::add(&counters.published, 1);
                }
            }
            read = link.read() => {
                let Some(responses) = read? else { return Ok(()) };
                let now = counters.nanos();
                Counters::add(&counters.delivered, responses.len() as u64);
                for response in responses {
                    debug_assert!(response.topic.starts_with("detrd/status/response/"));
                    let sent = match &response.correlation {
                        Some(c) => read_stamp(c),
                        None => read_stamp(&response.payload),
                    };
                    Counters::add(&counters.responses, 1);
                    if let (Some(sent), true) = (sent, counters.measuring.get()) {
                        let micros = now.saturating_sub(sent) / 1000;
                        let _ = counters.latency.borrow_mut().record(micros.max(1));
                    }
                }
            }
        }
        link.flush().await?;
    }
}

/// Runs the fleet scenario against `addr`.
pub async fn run(
    args: Rc<Args>,
    addr: SocketAddr,
    broker_pid: Option<u32>,
) -> Result<FleetResult, String> {
    if let Some(ca) = &args.tls_ca {
        conn::use_tls(ca)?;
    }
    let counters = Rc::new(Counters {
        start: Instant::now(),
        published: Cell::new(0),
        delivered: Cell::new(0),
        requests: Cell::new(0),
        responses: Cell::new(0),
        measuring: Cell::new(false),
        stop: Cell::new(false),
        latency: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ),
    });
    let rate = args.rate.unwrap_or(DEFAULT_REQUEST_RATE) as f64;
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let devices = args.clients.max(1);
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(devices);
            for i in 0..devices {
                let (args, counters, ready) = (args.clone(), counters.clone(), ready_tx.clone());
                tokio::task::spawn_local(async move {
                    if let Err(e) = device(addr, i, args, counters, ready).await {
                        eprintln!("device {i}: {e}");
                    }
                });
            }
            for _ in 0..devices {
                tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                    .await
                    .map_err(|_| "devices did not subscribe within 60 s".to_string())?;
            }
            let (a, c) = (args.clone(), counters.clone());
            tokio::task::spawn_local(async move {
                if let Err(e) = collector(addr, a, c).await {
                    eprintln!("collector: {e}");
                }
            });
            let (a, c) = (args.clone(), counters.clone());
            tokio::task::spawn_local(async move {
                if let Err(e) = app(addr, a, rate, c).await {
                    eprintln!("app: {e}");
                }
            });
            tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
            counters.latency.borrow_mut().reset();
            counters.measuring.set(true);
            let (p0, d0, t0) = (
                counters.published.get(),
                counters.delivered.get(),
                Instant::now(),
            );
            let cpu = crate::procstat::CpuClock::start(broker_pid);
            tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
            let measured_seconds = t0.elapsed().as_secs_f64();
            let (p1, d1) = (counters.published.get(), counters.delivered.get());
            let (broker_cpu, harness_cpu) = (cpu.broker_seconds(), cpu.harness_seconds());
            let broker_threads = cpu.broker_threads();
            counters.measuring.set(false);
            counters.stop.set(true);
            // Drain: until every request has its response, or nothing moved for 2 s.
            let mut last = (counters.responses.get(), Instant::now());
            while counters.responses.get() < counters.requests.get()
                && last.1.elapsed() < Duration::from_secs(2)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if counters.responses.get() != last.0 {
                    last = (counters.responses.get(), Instant::now());
                }
            }
            let latency = counters.latency.borrow().clone();
            Ok(FleetResult {
                measured: Measured {
                    seconds: measured_seconds,
                    sent: p1 - p0,
                    delivered: d1 - d0,
                    latency,
                    broker_cpu,
                    broker_threads,
                    harness_cpu,
                },
                lost: counters
                    .requests
                    .get()
                    .saturating_sub(counters.responses.get()),
            })
        })
        .await
}
