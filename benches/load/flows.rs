//! Publisher -> subscriber traffic: pairs, fan-in, fan-out and wildcard. Every client runs on one
//! single-threaded runtime; the harness's CPU share is reported so it can be checked not to be
//! the bottleneck.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::args::{Args, Scenario};
use crate::conn::{self, Conn};
use crate::report::Measured;
use crate::wire::{self, PublishTemplate};

/// Who publishes where and who subscribes to what.
pub struct Plan {
    /// Per publisher, the topics it cycles through.
    pub publishers: Vec<Vec<String>>,
    /// Per subscriber, its filters.
    pub subscribers: Vec<Vec<String>>,
    /// Subscribers that get each message.
    pub recipients: u64,
}

/// The topology of a flow scenario with `n` clients.
pub fn plan(scenario: Scenario, n: usize, topics: usize) -> Plan {
    let n = n.max(1);
    match scenario {
        Scenario::FanIn => Plan {
            publishers: (0..n).map(|i| vec![format!("bench/{i}")]).collect(),
            subscribers: vec![vec!["bench/+".into()]],
            recipients: 1,
        },
        Scenario::FanOut => Plan {
            publishers: vec![vec!["bench/0".into()]],
            subscribers: (0..n).map(|_| vec!["bench/0".into()]).collect(),
            recipients: n as u64,
        },
        Scenario::Wildcard => {
            let per = topics.clamp(1, 1000);
            Plan {
                publishers: (0..n)
                    .map(|i| (0..per).map(|k| format!("bench/{i}/{k}/data")).collect())
                    .collect(),
                // Each subscriber matches its publisher through a wildcard and holds ten filters
                // that match nothing, so the trie is not trivially small.
                subscribers: (0..n)
                    .map(|i| {
                        let main = if i % 2 == 0 {
                            format!("bench/{i}/+/data")
                        } else {
                            format!("bench/{i}/#")
                        };
                        let mut filters = vec![main];
                        filters.extend((0..10).map(|k| format!("other/{i}/{k}/+")));
                        filters
                    })
                    .collect(),
                recipients: 1,
            }
        }
        _ => Plan {
            publishers: (0..n).map(|i| vec![format!("bench/{i}")]).collect(),
            subscribers: (0..n).map(|i| vec![format!("bench/{i}")]).collect(),
            recipients: 1,
        },
    }
}

/// Counters shared by every client of one run.
pub struct Shared {
    pub start: Instant,
    pub sent: Cell<u64>,
    pub received: Cell<u64>,
    pub duplicated: Cell<u64>,
    pub measuring: Cell<bool>,
    pub stop: Cell<bool>,
    pub latency: RefCell<Histogram<u64>>,
    /// Per publisher: deliveries of its messages (summed over subscribers).
    pub delivered_from: Vec<Cell<u64>>,
    /// Per publisher: messages sent.
    pub sent_by: Vec<Cell<u64>>,
    pub wake: Vec<Notify>,
}

impl Shared {
    fn new(publishers: usize) -> Rc<Shared> {
        Rc::new(Shared {
            start: Instant::now(),
            sent: Cell::new(0),
            received: Cell::new(0),
            duplicated: Cell::new(0),
            measuring: Cell::new(false),
            stop: Cell::new(false),
            latency: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
            delivered_from: (0..publishers).map(|_| Cell::new(0)).collect(),
            sent_by: (0..publishers).map(|_| Cell::new(0)).collect(),
            wake: (0..publishers).map(|_| Notify::new()).collect(),
        })
    }

    fn nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

async fn subscriber(
    addr: std::net::SocketAddr,
    index: usize,
    filters: Vec<String>,
    qos: u8,
    shared: Rc<Shared>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    let id = format!("bench-sub-{index}");
    let mut stream = conn::handshake(addr, &id, !wire::persistent_subscribers()).await?;
    stream.write_all(&wire::subscribe(1, &filters, qos)).await?;
    // TLS may hold records back until flushed; on TCP this is free.
    stream.flush().await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        stream.read_buf(&mut buf).await?;
        let (frames, used) = wire::frames(&buf);
        if frames.iter().any(|f| f.byte1 == 0x90) {
            buf.drain(..used);
            break;
        }
    }
    let _ = ready.send(()).await;
    let mut expected = vec![0u64; shared.delivered_from.len()];
    let mut acks = Vec::new();
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let now = shared.nanos();
        let (frames, used) = wire::frames(&buf);
        for frame in frames {
            match frame.byte1 >> 4 {
                3 => {
                    let Some(stamp) = wire::read_stamp(frame.byte1, &buf[frame.body.clone()])
                    else {
                        continue;
                    };
                    match (frame.byte1 >> 1) & 3 {
                        1 => acks.extend([0x40, 2, (stamp.pid >> 8) as u8, stamp.pid as u8]),
                        2 => acks.extend([0x50, 2, (stamp.pid >> 8) as u8, stamp.pid as u8]),
                        _ => {}
                    }
                    let p = stamp.publisher as usize;
                    let Some(next) = expected.get_mut(p) else {
                        continue;
                    };
                    if stamp.seq < *next {
                        shared.duplicated.set(shared.duplicated.get() + 1);
                        continue;
                    }
                    *next = stamp.seq + 1;
                    shared.received.set(shared.received.get() + 1);
                    let from = &shared.delivered_from[p];
                    from.set(from.get() + 1);
                    shared.wake[p].notify_one();
                    if shared.measuring.get() {
                        let micros = now.saturating_sub(stamp.nanos) / 1000;
                        let _ = shared.latency.borrow_mut().record(micros.max(1));
                    }
                }
                6 => {
                    // PUBREL -> PUBCOMP
                    if let Some([hi, lo]) = wire::pid_bytes(&buf[frame.body.clone()]) {
                        acks.extend([0x70, 2, hi, lo]);
                    }
                }
                _ => {}
            }
        }
        buf.drain(..used);
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
            stream.flush().await?;
            acks.clear();
        }
    }
}

struct Pacing {
    /// Open loop: this publisher's timetable.
    schedule: Option<Schedule>,
    /// Closed loop: messages not yet delivered everywhere.
    window: u64,
    recipients: u64,
    /// Closed loop with `--window-acked`: messages not yet acknowledged by the broker.
    acked_window: Option<u64>,
}

async fn publisher(
    addr: std::net::SocketAddr,
    index: usize,
    topics: Vec<String>,
    args: Rc<Args>,
    pacing: Pacing,
    shared: Rc<Shared>,
) -> std::io::Result<()> {
    let mut stream = conn::handshake(addr, &format!("bench-pub-{index}"), true).await?;
    let templates: Vec<PublishTemplate> = topics
        .iter()
        .map(|t| PublishTemplate::new(t, args.payload, args.qos, false))
        .collect();
    let mut out = Vec::with_capacity(64 * (args.payload + 64));
    let mut inbox = Vec::with_capacity(16 * 1024);
    let mut seq = 0u64;
    let mut pid = 0u16;
    let mut unacked = 0u32; // QoS 1/2 packet ids in use at the broker
    let mut schedule = pacing.schedule;
    if let Some(schedule) = &mut schedule {
        schedule.start(Instant::now());
    }
    let sent_by = &shared.sent_by[index];
    while !shared.stop.get() {
        let mut allowed = match &schedule {
            Some(schedule) => schedule.due(Instant::now()),
            None => {
                let delivered = shared.delivered_from[index].get();
                let in_pipe = (sent_by.get() * pacing.recipients).saturating_sub(delivered);
                (pacing.window * pacing.recipients).saturating_sub(in_pipe) / pacing.recipients
            }
        };
        if args.qos > 0 {
            let most_unacked = pacing.acked_window.unwrap_or(60_000);
            allowed = allowed.min(most_unacked.saturating_sub(u64::from(unacked)));
        }
        let batch = allowed.min(64);
        if batch > 0 {
            let nanos = shared.nanos();
            for _ in 0..batch {
                pid = pid.wrapping_add(1).max(1);
                let template = &templates[(seq % templates.len() as u64) as usize];
                template.write(&mut out, pid, index as u32, seq, nanos);
                seq += 1;
            }
            if args.qos > 0 {
                unacked += batch as u32;
            }
            if let Some(schedule) = &mut schedule {
                schedule.sent(batch, Instant::now());
            }
            sent_by.set(sent_by.get() + batch);
            shared.sent.set(shared.sent.get() + batch);
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
        // Acknowledgements from the broker (PUBACK / PUBREC -> PUBREL / PUBCOMP).
        match read_acks(&mut stream, &mut inbox, &mut out)? {
            // Acknowledgements read may allow more (`--window-acked`): look again at once.
            Some(done) if done > 0 && batch == 0 && out.is_empty() => {
                unacked = unacked.saturating_sub(done);
                continue;
            }
            Some(done) => unacked = unacked.saturating_sub(done),
            None => return Ok(()),
        }
        if batch == 0 && out.is_empty() {
            tokio::select! {
                _ = shared.wake[index].notified(), if schedule.is_none() => {}
                _ = next_due(&schedule) => {}
                _ = conn::readable(&stream) => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        } else if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
    }
    // Stay connected while the run drains (a broker may drop the unfinished QoS 1/2 messages of a
    // client that disconnects), answering PUBRECs, until the run drops this task.
    loop {
        conn::readable(&stream).await?;
        if read_acks(&mut stream, &mut inbox, &mut out)?.is_none() {
            return Ok(());
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
    }
}

/// An open-loop publisher's timetable: one message every `period`, from `next` on. The
/// publisher sends what is due and sleeps until the next message is, so messages leave one by
/// one at the rate asked (within the timer's millisecond), not in bursts on a coarser tick.
struct Schedule {
    period: Duration,
    /// When the next message is due.
    next: Instant,
}

impl Schedule {
    /// Most of a backlog kept when the harness falls behind: it catches up by at most one
    /// second's worth of messages, the rest is not sent.
    const MOST_BEHIND: Duration = Duration::from_secs(1);

    /// The timetable of publisher `index` of `publishers` sharing `rate` messages/s: its first
    /// message is due `index / publishers` of a period after `epoch`.
    fn new(rate: u64, index: usize, publishers: usize, epoch: Instant) -> Schedule {
        let publishers = publishers.max(1);
        let period = Duration::from_secs_f64(publishers as f64 / rate.max(1) as f64);
        let phase = period.mul_f64(index as f64 / publishers as f64);
        Schedule {
            period,
            next: epoch + phase,
        }
    }

    /// Moves a first message due before `now` (the publisher's handshake ended after it) to its
    /// next slot, so that late publishers keep their phases instead of all sending at once.
    fn start(&mut self, now: Instant) {
        if self.next < now {
            let behind = now.duration_since(self.next).as_nanos();
            self.advance(behind.div_ceil(self.period.as_nanos().max(1)));
        }
    }

    /// Moves the next message `periods` periods later.
    fn advance(&mut self, periods: impl TryInto<u32>) {
        self.next += self
            .period
            .saturating_mul(periods.try_into().unwrap_or(u32::MAX));
    }

    /// How many messages are due at `now`.
    fn due(&self, now: Instant) -> u64 {
        if now < self.next {
            return 0;
        }
        let late = now.duration_since(self.next).as_nanos() / self.period.as_nanos().max(1);
        u64::try_from(late).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Records `count` messages sent at `now`.
    fn sent(&mut self, count: u64, now: Instant) {
        self.advance(count);
        if let Some(oldest) = now.checked_sub(Self::MOST_BEHIND) {
            self.next = self.next.max(oldest);
        }
    }
}

/// Resolves when an open-loop publisher's next message is due; never for a closed loop.
async fn next_due(schedule: &Option<Schedule>) {
    match schedule {
        Some(schedule) => tokio::time::sleep_until(schedule.next.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads whatever the broker sent a publisher, without waiting: queues a PUBREL in `out` for
/// each PUBREC and returns how many messages were completed (PUBACK, PUBCOMP), or `None` at EOF.
///
/// Reads through `AsyncRead` polled once rather than `try_read_buf`: a read that leaves room in
/// the buffer shows the socket drained and clears tokio's readiness, so the next call costs no
/// system call until the broker sends again. `try_read_buf` clears it only on `EAGAIN`, which
/// cost one `recvfrom` more per PUBACK at window 1 (3.0 per message against the floor's 2.0).
fn read_acks(
    stream: &mut Conn,
    inbox: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> std::io::Result<Option<u32>> {
    loop {
        if inbox.capacity() - inbox.len() < 1024 {
            inbox.reserve(16 * 1024);
        }
        match stream.read_buf(inbox).now_or_never() {
            None => break,
            Some(Ok(0)) => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
        }
    }
    let (frames, used) = wire::frames(inbox);
    let mut completed = 0;
    for frame in frames {
        match frame.byte1 {
            0x40 | 0x70 => completed += 1,
            0x50 => {
                if let Some([hi, lo]) = wire::pid_bytes(&inbox[frame.body.clone()]) {
                    out.extend([0x62, 2, hi, lo]);
                }
            }
            _ => {}
        }
    }
    inbox.drain(..used);
    Ok(Some(completed))
}

/// What a flow run measured.
pub struct FlowResult {
    pub measured: Measured,
    pub total_sent: u64,
    pub total_received: u64,
    pub expected: u64,
    pub duplicated: u64,
}

/// Runs a flow scenario against `addr` and returns what it measured.
pub async fn run(
    args: Rc<Args>,
    addr: std::net::SocketAddr,
    broker_pid: Option<u32>,
) -> Result<FlowResult, String> {
    if let Some(ca) = &args.tls_ca {
        conn::use_tls(ca)?;
    }
    let plan = plan(args.scenario, args.clients, args.topics);
    let subscribe_addr = args.subscribe_addr.unwrap_or(addr);
    let shared = Shared::new(plan.publishers.len());
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(plan.subscribers.len());
            for (i, filters) in plan.subscribers.iter().cloned().enumerate() {
                let (shared, ready) = (shared.clone(), ready_tx.clone());
                let qos = args.qos;
                tokio::task::spawn_local(async move {
                    let subscribed = subscriber(subscribe_addr, i, filters, qos, shared, ready);
                    if let Err(e) = subscribed.await {
                        eprintln!("subscriber {i}: {e}");
                    }
                });
            }
            for _ in 0..plan.subscribers.len() {
                tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
                    .await
                    .map_err(|_| "subscribers did not get their SUBACK within 30 s".to_string())?;
            }
            let epoch = Instant::now();
            let publishers = plan.publishers.len();
            for (i, topics) in plan.publishers.iter().cloned().enumerate() {
                let pacing = Pacing {
                    schedule: args
                        .rate
                        .map(|rate| Schedule::new(rate, i, publishers, epoch)),
                    window: args.window.max(1),
                    recipients: plan.recipients,
                    acked_window: (args.window_acked && args.rate.is_none())
                        .then_some(args.window.max(1)),
                };
                let (args, shared) = (args.clone(), shared.clone());
                tokio::task::spawn_local(async move {
                    if let Err(e) = publisher(addr, i, topics, args, pacing, shared).await {
                        eprintln!("publisher {i}: {e}");
                    }
                });
            }
            let progress = |label: &str, t0: Instant, s0: u64, r0: u64| {
                if !args.quiet {
                    let secs = t0.elapsed().as_secs_f64().max(1e-9);
                    let p99 = shared.latency.borrow().value_at_quantile(0.99);
                    eprint!(
                        "\r{label} sent {:>9.0}/s delivered {:>9.0}/s p99 {:>7} us   ",
                        (shared.sent.get() - s0) as f64 / secs,
                        (shared.received.get() - r0) as f64 / secs,
                        p99
                    );
                }
            };
            let warm = Instant::now();
            while warm.elapsed().as_secs_f64() < args.warmup {
                tokio::time::sleep(Duration::from_millis(250)).await;
                progress("warm-up ", warm, 0, 0);
            }
            shared.latency.borrow_mut().reset();
            shared.measuring.set(true);
            let (s0, r0, t0) = (shared.sent.get(), shared.received.get(), Instant::now());
            let cpu = crate::procstat::CpuClock::start(broker_pid);
            while t0.elapsed().as_secs_f64() < args.duration {
                tokio::time::sleep(Duration::from_millis(250)).await;
                progress("measuring", t0, s0, r0);
            }
            let measured_seconds = t0.elapsed().as_secs_f64();
            let (s1, r1) = (shared.sent.get(), shared.received.get());
            let broker_cpu = cpu.broker_seconds();
            let broker_threads = cpu.broker_threads();
            let harness_cpu = cpu.harness_seconds();
            shared.measuring.set(false);
            shared.stop.set(true);
            // Drain: wait until everything sent has arrived, or nothing has moved for 2 s.
            let expected = || shared.sent.get() * plan.recipients;
            let mut last = (shared.received.get(), Instant::now());
            while shared.received.get() < expected() && last.1.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if shared.received.get() != last.0 {
                    last = (shared.received.get(), Instant::now());
                }
            }
            if !args.quiet {
                eprintln!();
            }
            let latency = shared.latency.borrow().clone();
            Ok(FlowResult {
                measured: Measured {
                    seconds: measured_seconds,
                    sent: s1 - s0,
                    delivered: r1 - r0,
                    latency,
                    broker_cpu,
                    broker_threads,
                    harness_cpu,
                },
                total_sent: shared.sent.get(),
                total_received: shared.received.get(),
                expected: expected(),
                duplicated: shared.duplicated.get(),
            })
        })
        .await
}
