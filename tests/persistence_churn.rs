//! Random churn over a broker with `[persistence]`, then a restart: what the broker held in
//! memory is what it reads back from disk.
//!
//! 32 clients at a time, MQTT 3.1.1 and 5 at random, from a pool of 60 client ids (so sessions
//! are taken over and resumed): persistent sessions (3.1.1 without clean session, MQTT 5 with
//! an expiry) and clean ones; subscriptions of every QoS, shared ones among them; publishes of
//! every QoS, some retained, some retained clears, some MQTT 5 ones with an expiry, each
//! payload naming its publisher's life and its place in it; wills that go out when a client
//! drops, half of them delayed past the run (so that sessions keep them); QoS 2 flows left at
//! every stage; clients that acknowledge what they get and clients that do not, so that
//! messages stay in flight and queue up. The log is kept small, so compactions run through the
//! churn; the rounds take the `fsync` policies in turn, and one worker thread or two.
//!
//! A round ends in one of three ways, in turn ([`Ending`]): once every client has gone (and,
//! before a SIGKILL, a third of the sessions resumed by idle clients that hold what they are
//! sent, so that the Sessions hold that state, not the Registry), the admin API's view
//! (`view.rs`) of the sessions (subscriptions with their options, the will
//! with when it is due, inbound QoS 2 ids, every message in flight and queued with its packet
//! id, stage and content) and of the retained messages is taken, the broker is killed with
//! SIGKILL or stopped with SIGTERM and started again on its directory, and the view must be the
//! same: messages in flight in the same order, queued ones the same with each publisher's in
//! its order; or the broker is killed in the middle of the churn at a compaction, and must
//! start again on what it left (the next round's comparison then starts from that). Every view
//! holds each publisher's messages in the order published (among those through plain MQTT 5
//! subscriptions). At the end each session's messages
//! are read back over MQTT and must be what the admin API listed.
//!
//! CI runs three short rounds, one of each ending; a long run is on demand:
//! `CHURN_ROUNDS=18 CHURN_SECS=10 cargo test --release --test persistence_churn -- --nocapture`

mod common;
#[path = "persistence_churn/view.rs"]
mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child::{listening_addr, spawn_with_log, BrokerProcess};
use common::durable::{kill_9, write_config};
use common::packets;
use common::rng::Rng;
use common::v5::{self, prop, Props, Will5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use view::{all_gone, held, listed, read_back, write_barrier};

/// Compacts once the log passes 1 MiB and twice the live state.
const SMALL_LOG: &str = "compact_min_bytes = 1048576";
/// Client ids `churn-0` ..: fewer than the clients over a run, so sessions are resumed.
const IDS: u64 = 60;
/// Clients at a time.
const CLIENTS: u64 = 32;
const TOPICS: [&str; 5] = [
    "churn/a/x",
    "churn/b/x",
    "churn/c/y",
    "other/d",
    "churn/a/z",
];
/// None of them matches `barrier/...` (see [`write_barrier`]).
const FILTERS: [&str; 7] = [
    "churn/+/x",
    "churn/#",
    "churn/a/x",
    "other/#",
    "+/a/+",
    "$share/g/churn/#",
    "$share/h/other/#",
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A broker process on this state directory, with its MQTT and HTTP addresses.
struct Broker {
    process: BrokerProcess,
    logs: Receiver<String>,
    mqtt: SocketAddr,
    http: SocketAddr,
}

/// The `fsync` policies (one state directory throughout).
const POLICIES: [&str; 3] = ["interval", "always", "never"];

/// Round `round`'s policy: over nine rounds each [`Ending`] meets each policy.
fn policy(round: u64) -> &'static str {
    POLICIES[((round + round / 3) % 3) as usize]
}

/// How a round ends, in turn.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ending {
    /// Once every client has gone: SIGKILL, and the state read back must be the same.
    Kill,
    /// In the middle of the churn, as a compaction starts (its snapshot is being written beside
    /// new records), or one done in place ends: SIGKILL, and the broker must start again on
    /// what is on disk.
    Crash,
    /// Once every client has gone: SIGTERM, and the state read back must be the same.
    Stop,
}

const ENDINGS: [Ending; 3] = [Ending::Kill, Ending::Crash, Ending::Stop];

/// Worker threads running Sessions in round `round`: one (the default on two cores) and two
/// in turn, so that Sessions of one client id also meet on different threads.
fn workers(round: u64) -> u64 {
    1 + round % 2
}

/// The broker for round `round`: its policy and workers, and for a crash the debug lines of
/// its compactions (where one starts).
fn start(state: &std::path::Path, round: u64) -> Broker {
    let more = format!("{SMALL_LOG}\n[listener]\nworkers = {}", workers(round));
    let config = write_config(state, policy(round), &more);
    let round = round as usize;
    let log = match ENDINGS[round % ENDINGS.len()] {
        Ending::Crash => "info,switchboard::persistence::compaction=debug",
        _ => "info",
    };
    let (child, logs) = spawn_with_log(&["--port", "0", "--config", &config], log);
    let process = BrokerProcess(child);
    let (mut mqtt, mut http) = (None, None);
    while mqtt.is_none() || http.is_none() {
        let line = logs
            .recv_timeout(Duration::from_secs(60))
            .expect("the broker starts and logs where it listens");
        if line.contains("switchboard listening on") {
            mqtt = Some(listening_addr(&line));
        }
        if let Some(rest) = line.split("admin API on http://").nth(1) {
            let addr = rest.trim_end_matches(|c: char| !c.is_ascii_digit());
            http = Some(addr.parse().expect("the HTTP address"));
        }
    }
    Broker {
        process,
        logs,
        mqtt: mqtt.expect("MQTT address"),
        http: http.expect("HTTP address"),
    }
}

/// Stops the broker with SIGTERM (a graceful stop that flushes) and waits for it.
async fn stop_gracefully(mut broker: Broker) {
    // SAFETY: kill(2) of our own child, which has not been reaped.
    unsafe { libc::kill(broker.process.0.id() as i32, libc::SIGTERM) };
    // The broker stops on SIGTERM.
    common::eventually_within(Duration::from_secs(30), || {
        let exited = broker.process.0.try_wait().expect("wait").is_some();
        async move { exited }
    })
    .await;
}

/// Reads whatever the broker sent, answering as a client that acknowledges (`acks`) or not:
/// PUBACK or PUBREC for a PUBLISH, PUBREL for a PUBREC of its own QoS 2 publish, PUBCOMP for a
/// PUBREL. Waits at most a millisecond for more.
async fn answer(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    acks: bool,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    while let Ok(read) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut chunk)).await {
        let n = read?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut out = Vec::new();
    while let Some((common::Frame { byte1, body }, used)) = packets::split_frame(buf) {
        if acks {
            match byte1 >> 4 {
                3 if (byte1 >> 1) & 3 > 0 => {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let pid = u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]]);
                    let ack = if (byte1 >> 1) & 3 == 1 { 0x40 } else { 0x50 };
                    out.extend(packets::ack(ack, pid));
                }
                5 => out.extend(packets::ack(0x62, u16::from_be_bytes([body[0], body[1]]))),
                6 => out.extend(packets::ack(0x70, u16::from_be_bytes([body[0], body[1]]))),
                _ => {}
            }
        }
        buf.drain(..used);
    }
    s.write_all(&out).await
}

/// One MQTT 5 packet of a client's life.
fn packet_v5(rng: &mut Rng, life: u64, pid: u16) -> Vec<u8> {
    let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
    match rng.next(6) {
        0 => {
            let no_local = !filter.starts_with("$share/") && rng.next(2) == 0;
            let opts = v5::options(
                rng.next(3) as u8,
                no_local,
                rng.next(2) == 0,
                rng.next(3) as u8,
            );
            // A shared subscription's identifiers from 10,000 on: what comes through one may
            // be a message another member left (see `view::out_of_order`).
            let id = match filter.starts_with("$share/") {
                true => view::SHARED_IDS + rng.next(1000) as u32,
                false => rng.next(1000) as u32 + 1,
            };
            let props = Props::new().var(prop::SUBSCRIPTION_ID, id);
            v5::subscribe5(pid, &props, &[(filter, opts)])
        }
        1 => v5::unsubscribe5(pid, &[filter]),
        _ => {
            let topic = TOPICS[rng.next(TOPICS.len() as u64) as usize];
            let mut props = Props::new();
            if rng.next(3) == 0 {
                props = props.u32(prop::MESSAGE_EXPIRY, 3600);
            }
            let retain = rng.next(8) == 0;
            let payload = payload(rng, retain, life, pid);
            v5::publish5(topic, &payload, rng.next(3) as u8, pid, retain, &props)
        }
    }
}

/// One MQTT 3.1.1 packet of a client's life.
fn packet_v3(rng: &mut Rng, life: u64, pid: u16) -> Vec<u8> {
    let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
    match rng.next(6) {
        0 => packets::subscribe(pid, &[(filter, rng.next(3) as u8)]),
        1 => packets::unsubscribe(pid, &[filter]),
        _ => {
            let topic = TOPICS[rng.next(TOPICS.len() as u64) as usize];
            let retain = rng.next(8) == 0;
            let payload = payload(rng, retain, life, pid);
            packets::publish(topic, &payload, rng.next(3) as u8, pid, retain, false)
        }
    }
}

/// Up to 2 KB after `{life}/{pid}/` (which publisher's life, and where in it: see
/// [`view::publisher_order`]); a retained one empty one time in four (a clear).
fn payload(rng: &mut Rng, retain: bool, life: u64, pid: u16) -> Vec<u8> {
    if retain && rng.next(4) == 0 {
        return Vec::new();
    }
    let fill = char::from(b'a' + rng.next(26) as u8);
    let mut payload = format!("{life:08x}/{pid:02}/");
    payload.extend(std::iter::repeat_n(fill, rng.next(2048) as usize + 1));
    payload.into_bytes()
}

/// One client's life: connect, up to 30 packets, then DISCONNECT or a dropped connection.
async fn client_life(addr: SocketAddr, rng: &mut Rng) -> std::io::Result<()> {
    let id = format!("churn-{}", rng.next(IDS));
    let life = rng.next(1 << 32);
    let v5 = rng.next(2) == 0;
    let acks = rng.next(3) > 0;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let will_topic = format!("churn/will/{id}");
    let connect = if v5 {
        let expiry = [0, 3600, 3600][rng.next(3) as usize];
        let props = Props::new().u32(prop::SESSION_EXPIRY, expiry);
        // Half the wills wait for the session's end (a delay past the test's run), so that
        // dropped sessions keep theirs, on disk too.
        let will_props = match rng.next(2) {
            0 => Props::new(),
            _ => Props::new().u32(prop::WILL_DELAY, 7200),
        };
        let will = Will5 {
            topic: &will_topic,
            payload: b"gone",
            qos: rng.next(3) as u8,
            retain: rng.next(2) == 0,
            props: will_props,
        };
        let will = (rng.next(4) == 0).then_some(&will);
        v5::connect5(&id, rng.next(3) == 0, 60, &props, will)
    } else {
        packets::connect(&id, rng.next(3) == 0, 60)
    };
    s.write_all(&connect).await?;
    let mut buf = Vec::new();
    for n in 0..rng.next(30) + 1 {
        let pid = (n + 1) as u16;
        let packet = if v5 {
            packet_v5(rng, life, pid)
        } else {
            packet_v3(rng, life, pid)
        };
        s.write_all(&packet).await?;
        answer(&mut s, &mut buf, acks).await?;
    }
    if rng.next(2) == 0 {
        s.write_all(&[0xE0, 0x00]).await?;
    }
    Ok(())
}

/// Runs `CLIENTS` clients' lives at a time against `addr` for `churn_for`, or until `stop` is set;
/// returns the lives.
async fn churn(addr: SocketAddr, churn_for: Duration, round: u64, stop: Arc<AtomicBool>) -> u64 {
    let deadline = Instant::now() + churn_for;
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let seed = (round * CLIENTS + w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
            let mut lives = 0;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                // A life cut short by the broker (a takeover, a refused packet) is part of it.
                let _ = client_life(addr, &mut rng).await;
                lives += 1;
            }
            lives
        }));
    }
    let mut lives = 0;
    for w in workers {
        lives += w.await.expect("client task");
    }
    lives
}

/// How long a crash round's churn may go on for a compaction to start.
const COMPACTION_WAIT: Duration = Duration::from_secs(90);

/// Waits until the broker logs a compaction starting, or one done in place ending (from now on:
/// what it logged before is skipped).
fn compaction_started(logs: &Receiver<String>) {
    // What the broker logged before now: the round so far.
    while logs.try_recv().is_ok() {}
    let mut last = std::collections::VecDeque::new();
    loop {
        match logs.recv_timeout(COMPACTION_WAIT) {
            // One on a thread of its own starts (its snapshot is being written beside new
            // records), or a small one done in place has ended.
            Ok(line)
                if line.contains("persistence log compaction started")
                    || line.contains("persistence log compacted") =>
            {
                return
            }
            Ok(line) => {
                last.push_back(line);
                if last.len() > 40 {
                    last.pop_front();
                }
            }
            Err(e) => panic!(
                "no compaction started ({e}); the broker's last lines:\n{}",
                Vec::from(last).join("\n")
            ),
        }
    }
}

/// The last 40 of `history`'s lines about client `id`.
fn lines_of<'a>(history: &'a [String], id: &str) -> Vec<&'a String> {
    let field = format!("client_id={id}");
    let about: Vec<&String> = history
        .iter()
        .filter(|line| {
            line.split(&field)
                .skip(1)
                .any(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    about[about.len().saturating_sub(40)..].to_vec()
}

/// [MQTT-4.6.0-6] each session holds each publisher's messages to a topic in the order they
/// were published.
fn in_publishers_order(held: &view::Held, round: u64, when: &str) {
    let out_of_order: Vec<String> = held
        .sessions
        .iter()
        .flat_map(|(id, session)| {
            view::out_of_order(listed(session))
                .into_iter()
                .map(move |line| format!("{id}: {line}"))
        })
        .collect();
    assert!(
        out_of_order.is_empty(),
        "round {round}, {when}: messages out of their publisher's order: {out_of_order:#?}"
    );
}

/// [MQTT-3.1.2-4] / [MQTT-4.1.0-1]: a session's state (subscriptions, QoS 1/2 messages not
/// yet completed and queued) and the retained messages outlive the broker process, after any
/// history of takeovers, resumptions, clean starts, wills and compactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_churn_leaves_behind_survives_a_restart_whole() {
    let rounds = env_number("CHURN_ROUNDS", 3);
    let secs = env_number("CHURN_SECS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut broker = start(&state, 0);
    let mut compactions = 0;
    for round in 0..rounds {
        let ending = ENDINGS[round as usize % ENDINGS.len()];
        let policy = policy(round);
        if ending == Ending::Crash {
            let stop = Arc::new(AtomicBool::new(false));
            // Churn until a compaction starts after `secs` of it (the log must grow to twice
            // the live state first), and kill it then.
            let churn_for = Duration::from_secs(secs) + COMPACTION_WAIT;
            let churning = tokio::spawn(churn(broker.mqtt, churn_for, round, stop.clone()));
            tokio::time::sleep(Duration::from_secs(secs)).await; // a round's worth of churn first
            tokio::task::block_in_place(|| compaction_started(&broker.logs));
            kill_9(broker.process);
            stop.store(true, Ordering::Relaxed);
            let lives = churning.await.expect("churn");
            // Start-up truncates a torn tail and refuses any other damage: it must start.
            broker = start(&state, round + 1);
            let after = held(broker.http).await;
            in_publishers_order(&after, round, "after a crash");
            eprintln!(
                "round {round} (fsync = {policy:?}, workers = {}): {lives} client lives, SIGKILL at a compaction; started again with {} sessions, {} retained",
                workers(round),
                after.sessions.len(),
                after.retained.len(),
            );
            continue;
        }
        let no_stop = Arc::new(AtomicBool::new(false));
        let lives = churn(broker.mqtt, Duration::from_secs(secs), round, no_stop).await;
        all_gone(broker.http).await;
        // Before a SIGKILL a third of the sessions are resumed and left connected, holding
        // what they are sent: their state is then the Session's, not the Registry's.
        let resumed = match ending {
            Ending::Kill => view::resume_some(broker.mqtt, broker.http, 3).await,
            _ => Vec::new(),
        };
        write_barrier(broker.mqtt, broker.http).await;
        let before = held(broker.http).await;
        in_publishers_order(&before, round, "before the restart");
        let history: Vec<String> = broker.logs.try_iter().collect();
        compactions += history
            .iter()
            .filter(|l| l.contains("persistence log compacted"))
            .count();
        if ending == Ending::Kill {
            kill_9(broker.process);
            drop(resumed);
        } else {
            stop_gracefully(broker).await;
        }
        broker = start(&state, round + 1);
        let after = held(broker.http).await;
        in_publishers_order(&after, round, "after the restart");
        let messages = before.messages();
        eprintln!(
            "round {round} (fsync = {policy:?}, workers = {}): {lives} client lives, {} sessions ({} connected) holding {messages} messages, {} retained, {compactions} compactions so far, then {}",
            workers(round),
            before.sessions.len(),
            before.sessions.values().filter(|s| s["connected"] == true).count(),
            before.retained.len(),
            if ending == Ending::Kill { "SIGKILL" } else { "SIGTERM" },
        );
        let differ: Vec<&String> = before
            .sessions
            .iter()
            .filter(|(id, session)| {
                let after = after.sessions.get(*id).unwrap_or(&serde_json::Value::Null);
                !view::differences(session, after).is_empty()
            })
            .map(|(id, _)| id)
            .collect();
        for id in &differ {
            let after = after.sessions.get(*id).unwrap_or(&serde_json::Value::Null);
            eprintln!("{id} differs after the restart:");
            for difference in view::differences(&before.sessions[*id], after) {
                eprintln!("  {difference}");
            }
            eprintln!("what the broker logged of it:");
            for line in lines_of(&history, id) {
                eprintln!("  {line}");
            }
        }
        assert!(
            differ.is_empty(),
            "round {round}: sessions differ: {differ:?}"
        );
        assert_eq!(
            before.sessions.len(),
            after.sessions.len(),
            "round {round}: sessions"
        );
        assert_eq!(
            before.retained, after.retained,
            "round {round}: retained messages"
        );
    }
    assert!(compactions > 0, "the log was compacted during the churn");
    // Each session gives back what it held, as the admin API listed it.
    let last = held(broker.http).await;
    for (id, session) in &last.sessions {
        read_back(broker.mqtt, id, listed(session)).await;
    }
    kill_9(broker.process);
}
