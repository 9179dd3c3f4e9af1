//! Random churn over a broker with `[persistence]`, then a restart: what the broker held in
//! memory is what it reads back from disk.
//!
//! 32 clients at a time, MQTT 3.1.1 and 5 at random, from a pool of 60 client ids (so sessions
//! are taken over and resumed): persistent sessions (3.1.1 without clean session, MQTT 5 with
//! an expiry) and clean ones; subscriptions of every QoS, shared ones among them; publishes of
//! every QoS, some retained, some retained clears, some MQTT 5 ones with an expiry; wills that
//! go out when a client drops; QoS 2 flows left at every stage; clients that acknowledge what
//! they get and clients that do not, so that messages stay in flight and queue up. The log is
//! kept small, so compactions run through the churn; the rounds take the `fsync` policies in
//! turn, and one worker thread or two. A round ends in one of three ways, in turn ([`Ending`]): once every client has
//! gone, the admin API's view of the sessions (subscriptions with their options, messages in
//! flight and queued) and of the retained messages is taken, the broker is killed with SIGKILL
//! or stopped with SIGTERM and started again on its directory, and the view must be the same;
//! or the broker is killed in the middle of the churn at a compaction, and must start
//! again on what it left (the next round's comparison then starts from that). At the end each
//! session's messages are read back: as many as it had in flight and queued.
//!
//! CI runs three short rounds, one of each ending; a long run is on demand:
//! `CHURN_ROUNDS=18 CHURN_SECS=10 cargo test --release --test persistence_churn -- --nocapture`

mod common;

use std::collections::BTreeMap;
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
use common::Raw;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// The broker for round `round`: its policy and workers, and for a crash its writer's debug
/// lines (where a compaction starts).
fn start(state: &std::path::Path, round: u64) -> Broker {
    let more = format!("{SMALL_LOG}\n[listener]\nworkers = {}", workers(round));
    let config = write_config(state, policy(round), &more);
    let round = round as usize;
    let log = match ENDINGS[round % ENDINGS.len()] {
        Ending::Crash => "info,switchboard::persistence::writer=debug",
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.process.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the broker stops on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the child's exit
    }
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
    while let Some((byte1, body, used)) = split_frame(buf) {
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

/// The first whole packet in `buf`: its first byte, its body and the bytes it takes.
fn split_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let byte = *buf.get(i)?;
        len |= usize::from(byte & 0x7F) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let body = buf.get(i..i + len)?;
    Some((buf[0], body.to_vec(), i + len))
}

/// One MQTT 5 packet of a client's life.
fn packet_v5(rng: &mut Rng, pid: u16) -> Vec<u8> {
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
            let props = Props::new().var(prop::SUBSCRIPTION_ID, rng.next(1000) as u32 + 1);
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
            let payload = payload(rng, retain);
            v5::publish5(topic, &payload, rng.next(3) as u8, pid, retain, &props)
        }
    }
}

/// One MQTT 3.1.1 packet of a client's life.
fn packet_v3(rng: &mut Rng, pid: u16) -> Vec<u8> {
    let filter = FILTERS[rng.next(FILTERS.len() as u64) as usize];
    match rng.next(6) {
        0 => packets::subscribe(pid, &[(filter, rng.next(3) as u8)]),
        1 => packets::unsubscribe(pid, &[filter]),
        _ => {
            let topic = TOPICS[rng.next(TOPICS.len() as u64) as usize];
            let retain = rng.next(8) == 0;
            let payload = payload(rng, retain);
            packets::publish(topic, &payload, rng.next(3) as u8, pid, retain, false)
        }
    }
}

/// Up to 2 KB; a retained one empty one time in four (a clear).
fn payload(rng: &mut Rng, retain: bool) -> Vec<u8> {
    if retain && rng.next(4) == 0 {
        return Vec::new();
    }
    let fill = b'a' + rng.next(26) as u8;
    vec![fill; rng.next(2048) as usize + 1]
}

/// One client's life: connect, up to 30 packets, then DISCONNECT or a dropped connection.
async fn client_life(addr: SocketAddr, rng: &mut Rng) -> std::io::Result<()> {
    let id = format!("churn-{}", rng.next(IDS));
    let v5 = rng.next(2) == 0;
    let acks = rng.next(3) > 0;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let will_topic = format!("churn/will/{id}");
    let connect = if v5 {
        let expiry = [0, 3600, 3600][rng.next(3) as usize];
        let props = Props::new().u32(prop::SESSION_EXPIRY, expiry);
        let will = Will5 {
            topic: &will_topic,
            payload: b"gone",
            qos: rng.next(3) as u8,
            retain: rng.next(2) == 0,
            props: Props::new(),
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
            packet_v5(rng, pid)
        } else {
            packet_v3(rng, pid)
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

/// GETs an admin API list page by page; returns its entries under `key`.
async fn list_all(http: SocketAddr, path: &str, key: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    loop {
        let page = common::http::get(
            http,
            &format!("{path}offset={}&limit=1000", all.len()),
            None,
        )
        .await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let page = page.json();
        let items = page[key].as_array().expect("a list").clone();
        let total = page["total"].as_u64().expect("a total") as usize;
        let last = items.is_empty();
        all.extend(items);
        if all.len() >= total || last {
            return all;
        }
    }
}

/// What the broker holds: every session (subscriptions with their options, messages in flight and
/// queued) and every retained message, by client id and by topic.
#[derive(Debug, PartialEq)]
struct Held {
    sessions: BTreeMap<String, serde_json::Value>,
    retained: BTreeMap<String, serde_json::Value>,
}

async fn held(http: SocketAddr) -> Held {
    let sessions = list_all(http, "/api/v1/clients?", "clients")
        .await
        .into_iter()
        .map(|c| (c["client_id"].as_str().expect("id").to_string(), c))
        .collect();
    let retained = list_all(http, "/api/v1/retained?filter=churn/%23&", "messages")
        .await
        .into_iter()
        .chain(list_all(http, "/api/v1/retained?filter=other/%23&", "messages").await)
        .map(|m| (m["topic"].as_str().expect("topic").to_string(), m))
        .collect();
    Held { sessions, retained }
}

/// Waits until no client is connected.
async fn all_gone(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clients = list_all(http, "/api/v1/clients?", "clients").await;
        if clients.iter().all(|c| c["connected"] == false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "clients still connected: {clients:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the admin API
    }
}

/// Everything submitted to the writer before this is written once it returns: a retained QoS 1
/// message (and its clear) to a topic no filter matches, whose PUBACK waits for its record.
async fn write_barrier(mqtt: SocketAddr, http: SocketAddr) {
    let (mut raw, _) = Raw::handshake(mqtt, "churn-barrier", true).await;
    raw.publish_acked("barrier/marker", b"x", 1, true).await;
    raw.publish_acked("barrier/marker", b"", 2, true).await;
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while list_all(http, "/api/v1/clients?search=churn-barrier&", "clients")
        .await
        .iter()
        .any(|c| c["client_id"] == "churn-barrier")
    {
        assert!(
            Instant::now() < deadline,
            "the barrier client's clean session ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the admin API
    }
}

/// Resumes `id`'s session (MQTT 3.1.1) and reads everything it has, acknowledging each message
/// through its QoS flow; returns the PUBLISHes and PUBRELs (a QoS 2 message past PUBREC comes
/// back as its PUBREL).
async fn read_back(mqtt: SocketAddr, id: &str) -> usize {
    let (mut raw, present) = Raw::handshake(mqtt, id, false).await;
    assert!(present, "{id}'s session is there");
    let mut count = 0;
    // QoS 2 messages this connection answered with PUBREC: their PUBREL is not another message.
    let mut received = std::collections::HashSet::new();
    loop {
        let mut frames = raw.sync().await;
        if frames.is_empty() {
            if received.is_empty() {
                break;
            }
            // A PUBREL waits for its record, and may come after the barrier's UNSUBACK.
            frames.push(raw.expect().await);
        }
        for frame in frames {
            match frame.packet_type() {
                3 => {
                    let publish = packets::parse_publish(&frame);
                    count += 1;
                    match publish.qos {
                        1 => raw.send(&packets::ack(0x40, publish.pid)).await,
                        2 => {
                            received.insert(publish.pid);
                            raw.send(&packets::ack(0x50, publish.pid)).await
                        }
                        _ => {}
                    }
                }
                6 => {
                    if !received.remove(&frame.pid()) {
                        count += 1;
                    }
                    raw.send(&packets::ack(0x70, frame.pid())).await;
                }
                other => panic!("{id}: a packet of type {other} while reading back"),
            }
        }
    }
    // Leave the session empty rather than gone: a clean CONNECT would end it.
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;
    count
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
        write_barrier(broker.mqtt, broker.http).await;
        let before = held(broker.http).await;
        let history: Vec<String> = broker.logs.try_iter().collect();
        compactions += history
            .iter()
            .filter(|l| l.contains("persistence log compacted"))
            .count();
        if ending == Ending::Kill {
            kill_9(broker.process);
        } else {
            stop_gracefully(broker).await;
        }
        broker = start(&state, round + 1);
        let after = held(broker.http).await;
        let messages: u64 = before
            .sessions
            .values()
            .map(|s| s["inflight"].as_u64().unwrap_or(0) + s["queued"].as_u64().unwrap_or(0))
            .sum();
        eprintln!(
            "round {round} (fsync = {policy:?}, workers = {}): {lives} client lives, {} sessions holding {messages} messages, {} retained, {compactions} compactions so far, then {}",
            workers(round),
            before.sessions.len(),
            before.retained.len(),
            if ending == Ending::Kill { "SIGKILL" } else { "SIGTERM" },
        );
        let differ: Vec<&String> = before
            .sessions
            .iter()
            .filter(|(id, session)| after.sessions.get(*id) != Some(session))
            .map(|(id, _)| id)
            .collect();
        for id in &differ {
            eprintln!(
                "{id} before: {}\n{id} after: {:?}\nwhat the broker logged of it:",
                before.sessions[*id],
                after.sessions.get(*id)
            );
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
    // Each session gives back what it held.
    let last = held(broker.http).await;
    for (id, session) in &last.sessions {
        let holds =
            session["inflight"].as_u64().unwrap_or(0) + session["queued"].as_u64().unwrap_or(0);
        assert_eq!(
            read_back(broker.mqtt, id).await as u64,
            holds,
            "{id}'s messages"
        );
    }
    kill_9(broker.process);
}
