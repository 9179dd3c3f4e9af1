//! Scenarios that are not a message flow: a subscribe storm against retained messages, a connect
//! storm, and idle connections.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::Args;
use crate::wire::{self, PublishTemplate};

/// What a storm measured.
pub struct StormResult {
    /// Operations completed in the measured time (retained messages received, connections made).
    pub operations: u64,
    pub seconds: f64,
    /// Per-operation latency in microseconds (subscribe -> last retained message, connect ->
    /// CONNACK).
    pub latency: Histogram<u64>,
    pub broker_cpu: Option<f64>,
    pub harness_cpu: f64,
    /// Idle: broker RSS growth per connection, in bytes.
    pub rss_per_connection: Option<f64>,
    pub failures: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// How long a retained-scenario subscriber waits for more before it counts what it got.
const RETAINED_QUIET: Duration = Duration::from_secs(5);

/// `--topics` retained messages, then `--clients` subscribers to `bench/retained/#` at once; each
/// counts until it has all of them, or until the broker sends nothing for [`RETAINED_QUIET`]
/// (one that drops some: the subscriber is a failure, what it got still counts).
pub async fn retained(
    args: &Args,
    addr: SocketAddr,
    pid: Option<u32>,
) -> Result<StormResult, String> {
    let mut publisher = wire::handshake(addr, "bench-retainer")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in 0..args.topics {
        PublishTemplate::new(&format!("bench/retained/{i}"), args.payload, 1, true).write(
            &mut out,
            (i % 65_535 + 1) as u16,
            0,
            i as u64,
            0,
        );
    }
    publisher.write_all(&out).await.map_err(|e| e.to_string())?;
    // Every PUBACK back means every retained message is stored.
    let mut acked = 0;
    let mut buf = Vec::new();
    while acked < args.topics {
        if publisher
            .read_buf(&mut buf)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("broker closed the retainer".into());
        }
        let (frames, used) = wire::frames(&buf);
        acked += frames.iter().filter(|f| f.byte1 == 0x40).count();
        buf.drain(..used);
    }
    let cpu = crate::procstat::CpuClock::start(pid);
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let topics = args.topics;
    let results = local
        .run_until(async move {
            let mut tasks = Vec::new();
            for c in 0..args.clients {
                tasks.push(tokio::task::spawn_local(async move {
                    let io = |e: std::io::Error| (0, e.to_string());
                    let mut s = wire::handshake(addr, &format!("bench-storm-{c}"))
                        .await
                        .map_err(io)?;
                    let t0 = Instant::now();
                    s.write_all(&wire::subscribe(1, &["bench/retained/#".into()], 0))
                        .await
                        .map_err(io)?;
                    let (mut got, mut buf) = (0usize, Vec::with_capacity(64 * 1024));
                    while got < topics {
                        // A broker that dropped some (QoS 0 past an output bound) sends
                        // nothing more: count what came instead of waiting for ever.
                        let read = tokio::time::timeout(RETAINED_QUIET, s.read_buf(&mut buf));
                        match read.await {
                            Ok(Ok(0)) => return Err((got, "closed the connection".to_string())),
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Err((got, e.to_string())),
                            Err(_) => {
                                return Err((got, format!("sent nothing for {RETAINED_QUIET:?}")))
                            }
                        }
                        let (frames, used) = wire::frames(&buf);
                        got += frames.iter().filter(|f| f.byte1 >> 4 == 3).count();
                        buf.drain(..used);
                    }
                    Ok::<_, (usize, String)>(t0.elapsed())
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await);
            }
            out
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut latency = histogram();
    let (mut failures, mut operations) = (0, 0);
    for (c, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok(d)) => {
                let _ = latency.record(d.as_micros().max(1) as u64);
                operations += args.topics as u64;
            }
            Ok(Err((got, why))) => {
                eprintln!(
                    "subscriber {c} got {got} of {} retained messages: the broker {why}",
                    args.topics
                );
                failures += 1;
                operations += got as u64;
            }
            Err(e) => {
                eprintln!("subscriber {c} failed: {e}");
                failures += 1;
            }
        }
    }
    Ok(StormResult {
        operations,
        seconds,
        latency,
        broker_cpu: cpu.broker_seconds(),
        harness_cpu: cpu.harness_seconds(),
        rss_per_connection: None,
        failures,
    })
}

/// How a connection of the storm is made, beyond TCP.
#[derive(Clone, Copy)]
struct Over<'a> {
    /// TLS, with this client.
    tls: Option<&'a tokio_rustls::TlsConnector>,
    /// A PROXY protocol header first.
    proxy: bool,
    /// The CONNECT sent and the connection closed at once, no CONNACK awaited.
    close_at_once: bool,
    /// WebSocket at this path (only with `close_at_once`).
    ws_path: Option<&'a str>,
}

/// One connect of the storm: TCP (from a spread source address), a PROXY protocol header,
/// TLS or WebSocket, CONNECT, CONNACK, DISCONNECT, as `over` says. Returns the time from the
/// start to the CONNACK (with `close_at_once`: to the CONNECT sent, after which the connection
/// is closed, no CONNACK awaited).
async fn connect_once(
    addr: SocketAddr,
    id: &str,
    spread: u64,
    over: Over<'_>,
) -> std::io::Result<Duration> {
    let Over {
        tls,
        proxy,
        close_at_once,
        ws_path,
    } = over;
    let t0 = Instant::now();
    let mut tcp = wire::connect_spread(addr, spread).await?;
    tcp.set_nodelay(true)?;
    if proxy {
        tcp.write_all(&wire::proxy_v2_header(spread, addr)).await?;
    }
    if let Some(path) = ws_path.filter(|_| close_at_once) {
        // The CONNECT in a binary frame, a Close frame, end of stream.
        crate::ws::upgrade(&mut tcp, addr, path).await?;
        let mut frames = crate::ws::frame(0x2, &wire::connect(id, wire::KEEP_ALIVE, true));
        frames.extend(crate::ws::close());
        tcp.write_all(&frames).await?;
        tcp.shutdown().await?;
        return Ok(t0.elapsed());
    }
    if close_at_once && tls.is_none() {
        tcp.write_all(&wire::connect(id, wire::KEEP_ALIVE, true))
            .await?;
        return Ok(t0.elapsed());
    }
    let Some(tls) = tls else {
        let mut stream = wire::mqtt_connect(tcp, id, true).await?;
        let took = t0.elapsed();
        let _ = stream.write_all(&[0xE0, 0x00]).await;
        return Ok(took);
    };
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
        .map_err(std::io::Error::other)?;
    let mut stream = tls.connect(name, tcp).await?;
    if close_at_once {
        // A clean TLS close (close_notify, end of stream) right behind the CONNECT; the socket
        // is dropped after it, reset where the server's session tickets were not read.
        stream
            .write_all(&wire::connect(id, wire::KEEP_ALIVE, true))
            .await?;
        stream.shutdown().await?;
        return Ok(t0.elapsed());
    }
    let mut stream = wire::mqtt_connect(stream, id, true).await?;
    let took = t0.elapsed();
    // Counted once CONNACK came; the goodbye may fail without making it a failure.
    let _ = stream.write_all(&[0xE0, 0x00]).await;
    let _ = stream.shutdown().await;
    Ok(took)
}

/// CONNECT, CONNACK, DISCONNECT, close; `--concurrency` at a time for `--duration` seconds;
/// over TLS with `--tls-ca`, after a PROXY protocol header with `--proxy-protocol`; with
/// `--close-at-once` also over WebSocket (`--ws-path`).
pub async fn connect_storm(
    args: &Args,
    addr: SocketAddr,
    pid: Option<u32>,
) -> Result<StormResult, String> {
    let tls = args
        .tls_ca
        .as_deref()
        .map(|ca| crate::conn::tls_connector(ca, args.tls_resume))
        .transpose()?;
    let tls = Rc::new(tls);
    let (proxy, close_at_once) = (args.proxy_protocol, args.close_at_once);
    let ws_path: Rc<Option<String>> = Rc::new(args.ws_path.clone());
    let cpu = crate::procstat::CpuClock::start(pid);
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(args.duration);
    let latency = Rc::new(std::cell::RefCell::new(histogram()));
    let counts = Rc::new(std::cell::Cell::new((0u64, 0u64)));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut tasks = Vec::new();
            for worker in 0..args.concurrency.max(1) {
                let (latency, counts, tls) = (latency.clone(), counts.clone(), tls.clone());
                let ws_path = ws_path.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let mut n = 0u64;
                    while started.elapsed() < deadline {
                        let id = format!("bench-cs-{worker}-{n}");
                        n += 1;
                        let spread = (worker as u64).wrapping_mul(7919).wrapping_add(n);
                        let over = Over {
                            tls: tls.as_ref().as_ref(),
                            proxy,
                            close_at_once,
                            ws_path: ws_path.as_deref(),
                        };
                        match connect_once(addr, &id, spread, over).await {
                            Ok(took) => {
                                let _ = latency.borrow_mut().record(took.as_micros().max(1) as u64);
                                let (ok, fail) = counts.get();
                                counts.set((ok + 1, fail));
                            }
                            Err(_) => {
                                let (ok, fail) = counts.get();
                                counts.set((ok, fail + 1));
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    let latency = latency.borrow().clone();
    let (ok, failures) = counts.get();
    Ok(StormResult {
        operations: ok,
        seconds: started.elapsed().as_secs_f64(),
        latency,
        broker_cpu: cpu.broker_seconds(),
        harness_cpu: cpu.harness_seconds(),
        rss_per_connection: None,
        failures,
    })
}

/// Opens `count` idle connections, `concurrency` at a time, each subscribed to a topic of its own
/// (`bench/idle/{i}`, QoS 1), as a quiet device is. Returns the open sockets, the time each took
/// to connect and subscribe, and how many failed.
pub async fn open_idle(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    quiet: bool,
) -> (Vec<tokio::net::TcpStream>, Histogram<u64>, u64) {
    let mut latency = histogram();
    let mut open = Vec::with_capacity(count);
    let mut failures = 0;
    let local = tokio::task::LocalSet::new();
    let chunk = concurrency.max(1);
    let mut next = 0;
    while next < count {
        let upto = (next + chunk).min(count);
        let batch = local
            .run_until(async {
                let tasks: Vec<_> = (next..upto)
                    .map(|i| {
                        tokio::task::spawn_local(async move {
                            let t0 = Instant::now();
                            let id = format!("bench-idle-{i}");
                            let stream = wire::handshake_spread(addr, &id, i as u64).await?;
                            subscribe_one(stream, format!("bench/idle/{i}"))
                                .await
                                .map(|s| (s, t0.elapsed()))
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await);
                }
                out
            })
            .await;
        for r in batch {
            match r {
                Ok(Ok((s, d))) => {
                    let _ = latency.record(d.as_micros().max(1) as u64);
                    open.push(s);
                }
                _ => failures += 1,
            }
        }
        next = upto;
        if !quiet {
            eprint!("\ropen {:>6} connections", open.len());
        }
    }
    if !quiet {
        eprintln!();
    }
    (open, latency, failures)
}

/// SUBSCRIBE to `filter` at QoS 1 and wait for the SUBACK.
async fn subscribe_one(
    mut stream: tokio::net::TcpStream,
    filter: String,
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&wire::subscribe(1, &[filter], 1)).await?;
    let mut buf = Vec::with_capacity(64);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::other("closed before SUBACK"));
        }
        let (frames, _) = wire::frames(&buf);
        if frames.iter().any(|f| f.byte1 == 0x90) {
            return Ok(stream);
        }
    }
}

/// Opens `--clients` idle connections, each with one subscription, and reports the broker's RSS
/// growth per connection.
pub async fn idle(args: &Args, addr: SocketAddr, pid: Option<u32>) -> Result<StormResult, String> {
    let pid = pid.ok_or("idle needs the broker's pid (--broker-pid, or no --addr)")?;
    let before = crate::procstat::rss_bytes(pid);
    let started = Instant::now();
    let (open, latency, failures) =
        open_idle(addr, args.clients, args.concurrency, args.quiet).await;
    // Let the broker settle, then read its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = crate::procstat::rss_bytes(pid);
    let per = (after.saturating_sub(before)) as f64 / open.len().max(1) as f64;
    Ok(StormResult {
        operations: open.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latency,
        broker_cpu: None,
        harness_cpu: 0.0,
        rss_per_connection: Some(per),
        failures,
    })
}
