//! What the churn test reads of a broker through its admin API and its MQTT listener: every
//! session with what it holds (subscriptions with their options, its will, its messages in
//! flight and queued with their packet ids, stages and content, its inbound QoS 2 ids awaiting
//! PUBREL), the retained messages, and at the end each session's messages read back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::common::{packets, Raw};

/// GETs an admin API list page by page; returns its entries under `key`.
pub async fn list_all(http: SocketAddr, path: &str, key: &str) -> Vec<Value> {
    list_with_page(http, path, key).await.0
}

/// [`list_all`], and the last page read (what it says beside the entries).
async fn list_with_page(http: SocketAddr, path: &str, key: &str) -> (Vec<Value>, Value) {
    let mut all = Vec::new();
    loop {
        let page = crate::common::http::get(
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
            return (all, page);
        }
    }
}

/// What the broker holds: every session (as `GET /api/v1/clients/{id}` shows it, with
/// `messages` and `awaiting_pubrel` from `GET /api/v1/clients/{id}/messages`) and every retained
/// message, by client id and by topic.
#[derive(Debug, PartialEq)]
pub struct Held {
    pub sessions: BTreeMap<String, Value>,
    pub retained: BTreeMap<String, Value>,
}

impl Held {
    /// Messages in flight and queued over all sessions.
    pub fn messages(&self) -> usize {
        self.sessions.values().map(|s| listed(s).len()).sum()
    }
}

/// The messages a session in [`Held`] holds, in the order its client gets them.
pub fn listed(session: &Value) -> &[Value] {
    session["messages"].as_array().map_or(&[], Vec::as_slice)
}

pub async fn held(http: SocketAddr) -> Held {
    let mut sessions = BTreeMap::new();
    for mut client in list_all(http, "/api/v1/clients?", "clients").await {
        let id = client["client_id"].as_str().expect("id").to_string();
        let path = format!("/api/v1/clients/{id}/messages?");
        let (mut messages, page) = list_with_page(http, &path, "messages").await;
        for message in &mut messages {
            // What is left of an expiry counts down between two looks.
            message["message_expiry_interval"] = Value::Null;
        }
        client["awaiting_pubrel"] = page["awaiting_pubrel"].clone();
        client["messages"] = Value::Array(messages);
        sessions.insert(id, client);
    }
    let retained = list_all(http, "/api/v1/retained?filter=churn/%23&", "messages")
        .await
        .into_iter()
        .chain(list_all(http, "/api/v1/retained?filter=other/%23&", "messages").await)
        .map(|m| (m["topic"].as_str().expect("topic").to_string(), m))
        .collect();
    Held { sessions, retained }
}

/// Waits until no client is connected.
pub async fn all_gone(http: SocketAddr) {
    crate::common::eventually_within(Duration::from_secs(30), || async {
        let clients = list_all(http, "/api/v1/clients?", "clients").await;
        clients.iter().all(|c| c["connected"] == false)
    })
    .await;
}

/// Everything submitted to the writer before this is written once it returns: a retained QoS 1
/// message (and its clear) to a topic no filter matches, whose PUBACK waits for its record.
pub async fn write_barrier(mqtt: SocketAddr, http: SocketAddr) {
    let (mut raw, _) = Raw::handshake(mqtt, "churn-barrier", true).await;
    raw.publish_acked("barrier/marker", b"x", 1, true).await;
    raw.publish_acked("barrier/marker", b"", 2, true).await;
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;
    // The barrier client's clean session ends.
    crate::common::eventually_within(Duration::from_secs(30), || async {
        let path = "/api/v1/clients?search=churn-barrier&";
        let clients = list_all(http, path, "clients").await;
        !clients.iter().any(|c| c["client_id"] == "churn-barrier")
    })
    .await;
}

/// Resumes every `nth` session (MQTT 3.1.1) with a client that acknowledges nothing and stays
/// connected, once the Session has sent what it holds (messages in flight again, the window
/// filled from the queue) and handled everything before a barrier: returns the connections.
pub async fn resume_some(mqtt: SocketAddr, http: SocketAddr, nth: usize) -> Vec<Raw> {
    let clients = list_all(http, "/api/v1/clients?", "clients").await;
    let mut resumed = Vec::new();
    for client in clients.iter().step_by(nth) {
        let id = client["client_id"].as_str().expect("id");
        let (mut raw, present) = Raw::handshake(mqtt, id, false).await;
        assert!(present, "{id}'s session is there");
        raw.sync().await;
        resumed.push(raw);
    }
    resumed
}

/// A PUBLISH as the client gets it: packet id (only for one sent before, which keeps its id),
/// DUP, topic, QoS, RETAIN, payload.
type Got = (Option<u16>, bool, String, u8, bool, Vec<u8>);

/// The PUBLISHes and PUBRELs a client resuming a session holding `listed` gets: each message
/// in flight at PUBLISH again with DUP and its packet id [MQTT-4.4.0-1], each past PUBREC as
/// a PUBREL with its id, then each queued one as a new PUBLISH.
fn expected(id: &str, listed: &[Value]) -> (Vec<Got>, BTreeSet<u16>) {
    let mut publishes = Vec::new();
    let mut pubrels = BTreeSet::new();
    for message in listed {
        let pid = message["pid"].as_u64().map(|p| p as u16);
        let state = message["state"].as_str().expect("a state");
        if state == "awaiting_pubcomp" {
            pubrels.insert(pid.expect("a packet id"));
            continue;
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(message["payload_base64"].as_str().expect("a payload"))
            .expect("base64");
        publishes.push((
            pid,
            state != "queued",
            message["topic"].as_str().expect("a topic").to_string(),
            message["qos"].as_u64().expect("a QoS") as u8,
            message["retain"].as_bool().expect("a RETAIN flag"),
            payload,
        ));
    }
    assert_eq!(
        publishes.iter().filter(|p| p.0.is_some()).count() + pubrels.len(),
        listed.iter().filter(|m| m["state"] != "queued").count(),
        "{id}: every message in flight has a packet id"
    );
    (publishes, pubrels)
}

/// Resumes `id`'s session (MQTT 3.1.1) and reads everything it has, acknowledging each message
/// through its QoS flow: what it gets must be what the admin API listed (`listed`), content,
/// order, packet ids and stages.
pub async fn read_back(mqtt: SocketAddr, id: &str, listed: &[Value]) {
    let (want_publishes, want_pubrels) = expected(id, listed);
    let (mut raw, present) = Raw::handshake(mqtt, id, false).await;
    assert!(present, "{id}'s session is there");
    let (mut publishes, mut pubrels) = (Vec::new(), BTreeSet::new());
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
                    publishes.push((
                        publish.dup.then_some(publish.pid),
                        publish.dup,
                        publish.topic,
                        publish.qos,
                        publish.retain,
                        publish.payload,
                    ));
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
                        assert!(pubrels.insert(frame.pid()), "{id}: PUBREL twice");
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
    let brief = |p: &[Got]| -> Vec<String> {
        p.iter()
            .map(|(pid, dup, topic, qos, retain, payload)| {
                format!(
                    "{pid:?} dup={dup} {topic} qos={qos} retain={retain} {}x{}",
                    payload.len(),
                    payload.first().map_or('-', |b| char::from(*b))
                )
            })
            .collect()
    };
    assert_eq!(
        brief(&publishes),
        brief(&want_publishes),
        "{id}: the PUBLISHes read back against what the admin API listed"
    );
    assert_eq!(publishes, want_publishes, "{id}: the payloads read back");
    assert_eq!(pubrels, want_pubrels, "{id}: the PUBRELs read back");
}

/// A message in a line: its state, packet id, topic, QoS, RETAIN and payload (its first bytes
/// and length), subscription ids.
fn message_line(m: &Value) -> String {
    let payload = m["payload"].as_str().unwrap_or("");
    format!(
        "{} pid={} {} qos={} retain={} {}({}) ids={}",
        m["state"].as_str().unwrap_or("?"),
        m["pid"],
        m["topic"].as_str().unwrap_or("?"),
        m["qos"],
        m["retain"],
        payload.get(..12).unwrap_or(payload),
        payload.len(),
        m["subscription_ids"],
    )
}

/// The publisher's life a churn message came from (the `{life}/` its payload starts with), if
/// it is one (a will is not).
fn life_of(message: &Value) -> Option<&str> {
    let payload = message["payload"].as_str()?;
    let (life, _) = payload.split_once('/')?;
    (life.len() == 8).then_some(life)
}

/// Each publisher life's queued messages in `messages`, in their order.
pub fn publisher_order(messages: &[&Value]) -> BTreeMap<String, Vec<Value>> {
    let mut by_life: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for message in messages {
        if let Some(life) = life_of(message) {
            by_life
                .entry(life.to_string())
                .or_default()
                .push((*message).clone());
        }
    }
    by_life
}

/// How two looks at one session differ (none: the same), field by field: what is in flight
/// must be the same, in the same order [MQTT-4.6.0-1], with the same packet ids and stages;
/// what is queued the
/// same messages, each publisher's in the same order [MQTT-4.6.0-6] (the order of different
/// publishers' messages is the order they took ids in, when read back, rather than the order
/// they reached the session in).
pub fn differences(before: &Value, after: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let empty = serde_json::Map::new();
    let fields = before.as_object().unwrap_or(&empty);
    // Where a client is connected from is not session state: a connected one is offline after
    // the restart.
    let connection = [
        "messages",
        "connected",
        "address",
        "protocol",
        "connected_since_ms",
    ];
    for (key, value) in fields {
        if !connection.contains(&key.as_str()) && after.get(key) != Some(value) {
            found.push(format!("{key}: {value} -> {:?}", after.get(key)));
        }
    }
    let split = |messages: &'_ [Value]| -> (Vec<Value>, Vec<Value>) {
        messages
            .iter()
            .cloned()
            .partition(|m| m["state"] != "queued")
    };
    let (was_sent, was_queued) = split(listed(before));
    let (now_sent, now_queued) = split(listed(after));
    for i in 0..was_sent.len().max(now_sent.len()) {
        if was_sent.get(i) != now_sent.get(i) {
            found.push(format!(
                "in flight {i}: {} -> {}",
                was_sent.get(i).map_or("none".into(), message_line),
                now_sent.get(i).map_or("none".into(), message_line),
            ));
        }
    }
    let sorted = |queued: &[Value]| -> Vec<String> {
        let mut all: Vec<String> = queued.iter().map(Value::to_string).collect();
        all.sort_unstable();
        all
    };
    if sorted(&was_queued) != sorted(&now_queued) {
        found.push(format!(
            "queued: {} messages -> {}, not the same ones",
            was_queued.len(),
            now_queued.len()
        ));
    }
    let was_order = publisher_order(&was_queued.iter().collect::<Vec<_>>());
    let now_order = publisher_order(&now_queued.iter().collect::<Vec<_>>());
    for (life, was) in &was_order {
        let now = now_order.get(life).map_or(&[][..], Vec::as_slice);
        if was.as_slice() != now {
            let lines = |m: &[Value]| m.iter().map(message_line).collect::<Vec<_>>().join(", ");
            found.push(format!(
                "queued from {life}: [{}] -> [{}]",
                lines(was),
                lines(now)
            ));
        }
    }
    found
}

/// Subscription identifiers from this on are those of shared subscriptions.
pub const SHARED_IDS: u32 = 10_000;

/// Whether `message` came through MQTT 5 subscriptions that are not shared: those whose
/// order the spec sets. One through a shared subscription may have been left by another
/// member of the group and come later than messages after it (MQTT 5 section 4.8.2); an MQTT
/// 3.1.1 session's do not say which subscription they came through.
fn through_plain_subscriptions(message: &Value) -> bool {
    let ids = message["subscription_ids"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    !ids.is_empty()
        && ids
            .iter()
            .all(|id| id.as_u64().is_some_and(|id| id < u64::from(SHARED_IDS)))
}

/// Where one publisher life's messages to one topic are out of the order it published them in
/// (its `{life}/{pid}/` payload prefixes), in `messages` (in flight then queued: the order the
/// client gets them) [MQTT-4.6.0-6], among those that came through plain MQTT 5 subscriptions
/// without RETAIN set (a retained message sent for a new subscription may be older than what
/// came before it); a message a session holds twice counts once.
pub fn out_of_order(messages: &[Value]) -> Vec<String> {
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for message in messages {
        let plain = message["retain"] == false && through_plain_subscriptions(message);
        let Some(life) = life_of(message).filter(|_| plain) else {
            continue;
        };
        let payload = message["payload"].as_str().unwrap_or("");
        let Some(seq) = payload
            .split('/')
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if !seen.insert((life.to_string(), seq)) {
            continue;
        }
        let topic = message["topic"].as_str().unwrap_or("").to_string();
        let key = (life.to_string(), topic);
        if let Some(before) = last.get(&key).filter(|before| **before > seq) {
            found.push(format!("{} after seq {before}", message_line(message)));
        }
        last.insert(key, seq);
    }
    found
}
