//! Runs a script against one broker over raw TCP, as MQTT 3.1.1 or MQTT 5 clients, and says
//! what each step showed.

use super::common::v5::{
    ack_codes, connect5, disconnect5, publish5, subscribe5, unsubscribe5, Props, Will5,
};
use super::common::{packets, Frame, Raw};
use super::script::{will_topic, MessageProps, Step, CLIENTS};
use super::servers::Server;
use switchboard_mqtt::codec::{decode_server_publish_v5, ServerPublish};

/// What a step and the barrier after it showed one broker's clients.
pub struct Observed {
    /// Acknowledgements and closes, a line each, in the order they came.
    pub acks: Vec<String>,
    /// The CONNACK's Session Present flag, for a CONNECT.
    pub session_present: Option<bool>,
    /// Each connected client's PUBLISH packets, in the order of the barrier.
    pub deliveries: Vec<(usize, Vec<Got>)>,
}

/// A PUBLISH a client got.
pub struct Got {
    pub publish: packets::Published,
    /// The properties it forwards, as they came (with MQTT 3.1.1, none).
    pub props: MessageProps,
    /// Its Subscription Identifiers, sorted (their order is not significant [MQTT-3.3.4-4]).
    pub identifiers: Vec<u32>,
}

/// Reads an MQTT 5 PUBLISH from a broker, with the broker's own reader of them (mqttbytes 0.6
/// misreads one with several Subscription Identifiers).
fn got_v5(frame: &Frame) -> Got {
    let bytes = bytes::Bytes::from(packets::frame(frame.byte1, &frame.body));
    let ServerPublish {
        topic,
        payload,
        qos,
        retain,
        dup,
        pid,
        properties,
        expiry,
        mut subscription_ids,
        topic_alias,
    } = decode_server_publish_v5(bytes)
        .unwrap_or_else(|e| panic!("a PUBLISH the spec allows, not {frame:?}: {e}"));
    assert_eq!(
        topic_alias, None,
        "no Topic Alias to a client that allows none"
    );
    subscription_ids.sort_unstable();
    Got {
        publish: packets::Published {
            topic,
            payload: payload.to_vec(),
            qos: qos as u8,
            pid,
            retain,
            dup,
        },
        props: MessageProps {
            utf8: properties.payload_format == Some(1),
            expiry,
            content_type: properties.content_type,
            response_topic: properties.response_topic,
            correlation_data: properties
                .correlation_data
                .map(|data| String::from_utf8_lossy(&data).into_owned()),
            user: properties.user_properties,
        },
        identifiers: subscription_ids,
    }
}

/// A script's [`MessageProps`] as the properties of an MQTT 5 PUBLISH.
fn publish_props(props: &MessageProps) -> Props {
    let mut encoded = Props::new();
    if props.utf8 {
        encoded = encoded.byte(0x01, 1);
    }
    if let Some(expiry) = props.expiry {
        encoded = encoded.u32(0x02, expiry);
    }
    if let Some(content_type) = &props.content_type {
        encoded = encoded.str(0x03, content_type);
    }
    if let Some(topic) = &props.response_topic {
        encoded = encoded.str(0x08, topic);
    }
    if let Some(data) = &props.correlation_data {
        // Binary Data is encoded as a UTF-8 string is: a two-byte length, then the bytes.
        encoded = encoded.str(0x09, data);
    }
    for (name, value) in &props.user {
        encoded = encoded.user(name, value);
    }
    encoded
}

/// One broker's clients.
pub struct Runner {
    server: Server,
    v5: bool,
    connections: Vec<Option<Raw>>,
    next_pid: u16,
    /// A connection of its own subscribed to every will (at QoS 0), so that the runner knows
    /// when a dropped connection's will has gone out; `None` until the first will.
    watcher: Option<Raw>,
    /// The payload of each connected client's will, if it has one.
    armed: Vec<Option<String>>,
    /// Whether each client acknowledges what it gets on its connection.
    acking: Vec<bool>,
    /// The topic each Topic Alias a client set stands for, on its connection (section
    /// 3.3.2.3.4: an alias lives as long as the connection).
    aliases: Vec<std::collections::HashMap<u16, String>>,
    /// For a connection that sets a Receive Maximum and acknowledges nothing: that maximum, and
    /// the QoS 1 and 2 messages it has got (all unacknowledged).
    windows: Vec<Option<(u16, usize)>>,
}

impl Runner {
    /// Clients of `server`, speaking MQTT 5 with `v5`.
    pub fn new(server: Server, v5: bool) -> Runner {
        Runner {
            server,
            v5,
            connections: (0..CLIENTS).map(|_| None).collect(),
            next_pid: 0,
            watcher: None,
            armed: vec![None; CLIENTS],
            acking: vec![true; CLIENTS],
            aliases: vec![Default::default(); CLIENTS],
            windows: vec![None; CLIENTS],
        }
    }

    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid % 60_000 + 1;
        self.next_pid
    }

    fn raw(&mut self, client: usize) -> &mut Raw {
        self.connections[client]
            .as_mut()
            .expect("the script acts only on connected clients")
    }

    /// Connects the will watcher, if it is not yet.
    async fn watch_wills(&mut self) {
        if self.watcher.is_some() {
            return;
        }
        let mut watcher = Raw::connect(self.server.addr()).await;
        watcher.stream.set_nodelay(true).expect("TCP_NODELAY");
        watcher.send(&packets::connect("watcher", true, 60)).await;
        assert_eq!(watcher.expect().await.byte1, 0x20, "CONNACK");
        let pid = self.pid();
        watcher.subscribe(pid, &[("will/#", 0)], &[0]).await;
        self.watcher = Some(watcher);
    }

    /// Waits until the watcher gets `client`'s will, `payload`.
    async fn will_seen(&mut self, client: usize, payload: &str) {
        let watcher = self.watcher.as_mut().expect("watching wills");
        loop {
            let publish = packets::parse_publish(&watcher.expect().await);
            if publish.topic == will_topic(client) && publish.payload == payload.as_bytes() {
                return;
            }
        }
    }

    /// Runs one step, then the barrier: every connected client, the one that acted first, takes
    /// what the broker sends it until a barrier brings nothing more.
    pub async fn step(&mut self, step: &Step) -> Observed {
        let mut acks = Vec::new();
        let mut session_present = None;
        let mut early = Vec::new();
        let client = step.client();
        match step {
            Step::Restart => {
                self.server.stop();
                for c in 0..CLIENTS {
                    if let Some(raw) = self.connections[c].take() {
                        acks.push(format!("c{c} shut down: {}", closing(raw).await));
                    }
                }
                self.server.start_again();
            }
            Step::Connect {
                clean_start,
                keep_session,
                will,
                acks: acking,
                receive_maximum,
                ..
            } => {
                let client = client.expect("a client connects");
                if will.is_some() {
                    self.watch_wills().await;
                }
                let id = format!("c{client}");
                let topic = will_topic(client);
                let connect = if self.v5 {
                    let expiry = if *keep_session { 3600 } else { 0 };
                    let will = will.as_ref().map(|w| Will5 {
                        topic: &topic,
                        payload: w.payload.as_bytes(),
                        qos: w.qos,
                        retain: w.retain,
                        props: Props::new(),
                    });
                    let mut props = Props::new().u32(0x11, expiry);
                    if let Some(receive_maximum) = receive_maximum {
                        props = props.u16(0x21, *receive_maximum);
                    }
                    connect5(&id, *clean_start, 60, &props, will.as_ref())
                } else {
                    packets::ConnectSpec {
                        client_id: &id,
                        clean: *clean_start,
                        will: will
                            .as_ref()
                            .map(|w| (topic.as_str(), w.payload.as_bytes(), w.qos, w.retain)),
                        ..Default::default()
                    }
                    .encode()
                };
                let mut raw = Raw::connect(self.server.addr()).await;
                // An acknowledgement and the barrier after it are two writes: without this,
                // the second waits for the broker's delayed ACK of the first.
                raw.stream.set_nodelay(true).expect("TCP_NODELAY");
                raw.send(&connect).await;
                if let Some(old) = self.connections[client].take() {
                    // Taken over: the broker closes the earlier connection (checked in
                    // `normalise`).
                    acks.push(format!("c{client} taken over: {}", closing(old).await));
                }
                let connack = raw.expect().await;
                assert_eq!(connack.byte1, 0x20, "CONNACK expected, got {connack:?}");
                acks.push(format!(
                    "c{client} CONNACK session_present={} code={:#04x}",
                    connack.body[0], connack.body[1]
                ));
                session_present = Some(connack.body[0] == 1);
                self.connections[client] = Some(raw);
                self.armed[client] = will.as_ref().map(|w| w.payload.clone());
                self.aliases[client].clear();
                self.acking[client] = *acking;
                self.windows[client] = receive_maximum.filter(|_| !acking).map(|max| (max, 0));
            }
            Step::Disconnect {
                dropped,
                with_will,
                end_session,
                ..
            } => {
                let client = client.expect("a client acts");
                let mut raw = self.connections[client].take().expect("connected");
                if !dropped {
                    let disconnect = if self.v5 {
                        let reason = if *with_will { 0x04 } else { 0x00 };
                        let mut props = Props::new();
                        if *end_session {
                            props = props.u32(0x11, 0);
                        }
                        disconnect5(reason, &props)
                    } else {
                        vec![0xE0, 0x00]
                    };
                    raw.send(&disconnect).await;
                    acks.push(format!("c{client} disconnected: {}", closing(raw).await));
                    if let (true, Some(payload)) = (*with_will, self.armed[client].take()) {
                        // DISCONNECT 0x04 asks for the will (section 3.14.2.1).
                        self.will_seen(client, &payload).await;
                    }
                } else if let Some(payload) = self.armed[client].take() {
                    drop(raw);
                    // The will of a dropped connection goes out [MQTT-3.1.2-8]; once the
                    // watcher has it, every subscriber's copy is on its way, and the barrier
                    // below takes them.
                    self.will_seen(client, &payload).await;
                }
                self.armed[client] = None;
            }
            Step::Subscribe {
                filters,
                identifier,
                ..
            } => {
                let client = client.expect("a client acts");
                let pid = self.pid();
                let v5 = self.v5;
                let raw = self.raw(client);
                if v5 {
                    let refs: Vec<(&str, u8)> = filters
                        .iter()
                        .map(|(f, o)| (f.as_str(), o.byte()))
                        .collect();
                    let props = match identifier {
                        Some(id) => Props::new().var(0x0B, *id),
                        None => Props::new(),
                    };
                    raw.send(&subscribe5(pid, &props, &refs)).await;
                } else {
                    let refs: Vec<(&str, u8)> =
                        filters.iter().map(|(f, o)| (f.as_str(), o.qos)).collect();
                    raw.send(&packets::subscribe(pid, &refs)).await;
                }
                let suback = until_ack(raw, 0x90, pid, &mut early).await;
                let codes = if v5 {
                    ack_codes(&suback)
                } else {
                    suback.body[2..].to_vec()
                };
                acks.push(format!("c{client} SUBACK {codes:x?}"));
            }
            Step::Unsubscribe { filter, .. } => {
                let client = client.expect("a client acts");
                let pid = self.pid();
                let v5 = self.v5;
                let raw = self.raw(client);
                if v5 {
                    raw.send(&unsubscribe5(pid, &[filter])).await;
                } else {
                    raw.send(&packets::unsubscribe(pid, &[filter])).await;
                }
                let unsuback = until_ack(raw, 0xB0, pid, &mut early).await;
                let codes = if v5 { ack_codes(&unsuback) } else { Vec::new() };
                acks.push(format!("c{client} UNSUBACK {codes:x?}"));
            }
            Step::Publish {
                topic,
                qos,
                retain,
                payload,
                props,
                alias,
                ..
            } => {
                let client = client.expect("a client publishes");
                let pid = self.pid();
                let v5 = self.v5;
                let mut props = publish_props(props);
                let mut sent_topic = topic.as_str();
                if let Some(alias) = alias {
                    props = props.u16(0x23, *alias);
                    match self.aliases[client].get(alias) {
                        Some(known) if known == topic => sent_topic = "",
                        _ => {
                            self.aliases[client].insert(*alias, topic.clone());
                        }
                    }
                }
                let raw = self.raw(client);
                let publish = if v5 {
                    publish5(sent_topic, payload.as_bytes(), *qos, pid, *retain, &props)
                } else {
                    packets::publish(topic, payload.as_bytes(), *qos, pid, *retain, false)
                };
                raw.send(&publish).await;
            }
        }
        let mut deliveries = Vec::new();
        let order = client
            .into_iter()
            .chain((0..CLIENTS).filter(|&c| Some(c) != client));
        for c in order {
            let v5 = self.v5;
            let Some(raw) = self.connections[c].as_mut() else {
                continue;
            };
            let frames = if Some(c) == client {
                std::mem::take(&mut early)
            } else {
                Vec::new()
            };
            let own = match step {
                Step::Publish { qos, .. } if Some(c) == client && *qos > 0 => 1,
                _ => 0,
            };
            let got = settle(raw, frames, own, self.acking[c], v5, c, &mut acks).await;
            if let Some((max, unacknowledged)) = &mut self.windows[c] {
                *unacknowledged += got.iter().filter(|g| g.publish.qos > 0).count();
                // Mosquitto 2.0.11 sends a resumed session all its unacknowledged messages
                // again, however small the new Receive Maximum (docs/conformance.md).
                let mosquitto = matches!(self.server, Server::Mosquitto(_));
                assert!(
                    mosquitto || *unacknowledged <= usize::from(*max),
                    "{}: c{c} got {unacknowledged} QoS 1 and 2 messages it did not \
                     acknowledge, over its Receive Maximum of {max} [MQTT-3.3.4-9]",
                    self.server.name()
                );
            }
            deliveries.push((c, got));
        }
        Observed {
            acks,
            session_present,
            deliveries,
        }
    }
}

/// Reads until the acknowledgement of type `byte1` with packet id `pid`, keeping what comes
/// before it in `early`.
async fn until_ack(raw: &mut Raw, byte1: u8, pid: u16, early: &mut Vec<Frame>) -> Frame {
    loop {
        let frame = raw.expect().await;
        if frame.byte1 == byte1 && frame.pid() == pid {
            return frame;
        }
        early.push(frame);
    }
}

/// Reads a connection the broker is closing until it is closed, and says what came first.
async fn closing(mut raw: Raw) -> String {
    let mut said = Vec::new();
    while let Some(frame) = raw.recv().await {
        match frame.byte1 {
            0xE0 => said.push(format!(
                "DISCONNECT {:#04x}",
                frame.body.first().copied().unwrap_or(0)
            )),
            _ => panic!("a packet other than DISCONNECT on a closing connection: {frame:?}"),
        }
    }
    said.push("closed".into());
    said.join(", ")
}

/// Takes `early` and then everything the broker sends `raw` (client `client`) until a barrier
/// brings nothing more and `own` exchanges of its own publishes (QoS 1 and 2) have ended,
/// completing every QoS 1 and 2 exchange on the way (but with `acking` false, leaving the
/// messages it gets unacknowledged); notes the reason codes of MQTT 5 PUBACKs
/// in `acks` and returns the PUBLISH packets received. (With persistence on, a PUBACK or
/// PUBREC waits for its records to be durable, so it may come after the barrier's UNSUBACK.)
async fn settle(
    raw: &mut Raw,
    early: Vec<Frame>,
    mut own: usize,
    acking: bool,
    v5: bool,
    client: usize,
    acks: &mut Vec<String>,
) -> Vec<Got> {
    let mut got = Vec::new();
    let mut frames = early;
    loop {
        for frame in frames.drain(..) {
            match frame.byte1 >> 4 {
                3 => {
                    let received = if v5 {
                        got_v5(&frame)
                    } else {
                        Got {
                            publish: packets::parse_publish(&frame),
                            props: MessageProps::default(),
                            identifiers: Vec::new(),
                        }
                    };
                    let publish = &received.publish;
                    match publish.qos {
                        _ if !acking => {}
                        1 => raw.send(&packets::ack(0x40, publish.pid)).await,
                        2 => raw.send(&packets::ack(0x50, publish.pid)).await,
                        _ => {}
                    }
                    got.push(received);
                }
                // PUBACK: MQTT 5 says whether the message reached anyone (0x10 if not).
                4 => {
                    own -= 1;
                    if v5 {
                        let reason = frame.body.get(2).copied().unwrap_or(0);
                        acks.push(format!("c{client} PUBACK {reason:#04x}"));
                    }
                }
                // PUBREC for what this client published: PUBREL. Its reason code is not
                // compared: Mosquitto routes a QoS 2 message at its PUBREL and always says
                // 0x00 (docs/conformance.md).
                5 => raw.send(&packets::ack(0x62, frame.pid())).await,
                // PUBREL for what it received: PUBCOMP.
                6 => raw.send(&packets::ack(0x70, frame.pid())).await,
                // PUBCOMP: the exchange of its own QoS 2 publish ends.
                7 => own -= 1,
                _ => panic!("unexpected packet {frame:?}"),
            }
        }
        frames = if own > 0 {
            vec![raw.expect().await]
        } else if v5 {
            raw.sync5().await
        } else {
            raw.sync().await
        };
        if frames.is_empty() {
            return got;
        }
    }
}
