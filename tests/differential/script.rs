//! The random scripts: a small generator, the steps, and the topics and filters they use.

/// Clients in a script: the first [`MEMBERS_FROM`] with sessions of every kind and plain
/// subscriptions, the rest members of shared subscriptions.
pub const CLIENTS: usize = 6;

/// The first client whose subscriptions are all shared (`$share/{group}/{filter}`, MQTT 5
/// section 4.8.2; Switchboard and Mosquitto take them from MQTT 3.1.1 clients too). Members
/// connect with clean sessions, without wills, and acknowledge what they get, so that a shared
/// subscription is always made of connected members with nothing in flight between steps:
/// which member gets a message is each broker's choice, and what a member that leaves leaves
/// behind differs by design (docs/conformance.md), so the scripts compare only how many
/// copies the members get together.
pub const MEMBERS_FROM: usize = 4;

/// Whether `client` is a member of shared subscriptions only (see [`MEMBERS_FROM`]).
pub fn is_member(client: usize) -> bool {
    client >= MEMBERS_FROM
}

/// The groups of shared subscriptions.
const GROUPS: [&str; 2] = ["a", "b"];

/// Steps per script.
pub const STEPS: usize = 120;

/// A small random generator (xorshift64*), so that a failing seed runs the same again.
pub struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A subscription's options (MQTT 3.1.1 has the QoS alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

impl Options {
    /// The options byte of an MQTT 5 SUBSCRIBE (3.8.3.1).
    pub fn byte(self) -> u8 {
        self.qos
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | (self.retain_handling << 4)
    }
}

/// A connection's will (no delay), to [`will_topic`].
#[derive(Debug, Clone)]
pub struct Will {
    pub qos: u8,
    pub retain: bool,
    /// `w{n}` for step `n`, the CONNECT's.
    pub payload: String,
}

/// The properties of an MQTT 5 PUBLISH that a broker forwards to its subscribers unaltered
/// (section 3.3.2.3; the Message Expiry Interval less the time the message waited): none with
/// MQTT 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    /// Payload Format Indicator 1: the payload is UTF-8.
    pub utf8: bool,
    /// Message Expiry Interval, seconds (an hour: no message expires in a script).
    pub expiry: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<String>,
    /// User Properties, in order, a name repeated (their order is kept [MQTT-3.3.2-18]).
    pub user: Vec<(String, String)>,
}

/// The properties of a publish in step `n` by `client`: each with some chance, with `v5`.
fn message_props(rng: &mut Rng, v5: bool, client: usize, n: usize) -> MessageProps {
    if !v5 {
        return MessageProps::default();
    }
    MessageProps {
        utf8: rng.chance(25),
        expiry: rng.chance(25).then_some(3600),
        content_type: rng.chance(25).then(|| "text/plain".to_string()),
        response_topic: rng.chance(25).then(|| format!("reply/c{client}")),
        correlation_data: rng.chance(25).then(|| format!("k{n}")),
        user: if rng.chance(25) {
            [("site", "A"), ("n", &n.to_string()), ("site", "B")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The topic of client `client`'s will.
pub fn will_topic(client: usize) -> String {
    format!("will/c{client}")
}

/// One operation of a script.
#[derive(Debug, Clone)]
pub enum Step {
    /// CONNECT (a takeover when the client is connected): MQTT 3.1.1's clean session is
    /// `clean_start` with `keep_session` its opposite; MQTT 5 sets them apart (a session expiry
    /// interval of an hour, or 0).
    Connect {
        client: usize,
        clean_start: bool,
        keep_session: bool,
        /// Its will, if it has one.
        will: Option<Will>,
        /// Whether the client acknowledges the QoS 1 and 2 messages it gets on this
        /// connection; if not, they stay in flight, to be sent again (DUP) when its session
        /// resumes [MQTT-4.4.0-1].
        acks: bool,
        /// Its MQTT 5 Receive Maximum, if it sets one (1 to 3): the broker sends it no more
        /// unacknowledged QoS 1 and 2 messages than that [MQTT-3.3.4-9] and keeps the rest
        /// queued, in order.
        receive_maximum: Option<u16>,
    },
    /// DISCONNECT, or the socket dropped without one.
    Disconnect {
        client: usize,
        dropped: bool,
        /// MQTT 5: DISCONNECT 0x04 Disconnect with Will Message, so that the will goes out
        /// (section 3.14.2.1).
        with_will: bool,
        /// MQTT 5: the DISCONNECT sets the Session Expiry Interval to 0, so that a kept
        /// session ends with its connection (section 3.14.2.2.2).
        end_session: bool,
    },
    Subscribe {
        client: usize,
        filters: Vec<(String, Options)>,
        /// Its MQTT 5 Subscription Identifier, if it has one (never a member's: which member
        /// gets a message must not show in it).
        identifier: Option<u32>,
    },
    Unsubscribe {
        client: usize,
        filter: String,
    },
    Publish {
        client: usize,
        topic: String,
        qos: u8,
        retain: bool,
        payload: String,
        props: MessageProps,
        /// An MQTT 5 Topic Alias (1 to 3) the publisher uses: the runner sends the topic with
        /// it where the alias stands for another topic on this connection (or none yet), and
        /// an empty topic where it already stands for this one (section 3.3.2.3.4).
        alias: Option<u16>,
    },
    /// The broker stops gracefully (closing every connection) and starts again on what it
    /// kept.
    Restart,
}

impl Step {
    /// The client that acts, if one does.
    pub fn client(&self) -> Option<usize> {
        match self {
            Step::Connect { client, .. }
            | Step::Disconnect { client, .. }
            | Step::Subscribe { client, .. }
            | Step::Unsubscribe { client, .. }
            | Step::Publish { client, .. } => Some(*client),
            Step::Restart => None,
        }
    }
}

/// A topic of two or three levels from a small space, so that filters often overlap.
fn topic(rng: &mut Rng) -> String {
    let mut levels = vec![
        rng.pick(&["gate", "radar"]),
        rng.pick(&["1AB", "2CD", "3EF"]),
    ];
    if rng.chance(70) {
        levels.push(rng.pick(&["state", "status"]));
    }
    levels.join("/")
}

/// A filter over that space: a topic with some levels made `+`, or cut short by `#`.
fn filter(rng: &mut Rng) -> String {
    if rng.chance(5) {
        return "#".into();
    }
    let topic = topic(rng);
    let mut levels: Vec<&str> = topic.split('/').collect();
    for level in levels.iter_mut() {
        if rng.chance(25) {
            *level = "+";
        }
    }
    if rng.chance(25) {
        let keep = 1 + rng.below(levels.len() as u64) as usize;
        levels.truncate(keep);
        levels.push("#");
    }
    levels.join("/")
}

/// A shared subscription's filter, `$share/{group}/{filter}`, and its options: the same for
/// every member that subscribes to it, so that the QoS and RETAIN flag of a copy do not depend
/// on which member a broker picks. No Local is never set: it is a Protocol Error on a shared
/// subscription [MQTT-3.8.3-4].
fn shared(rng: &mut Rng, v5: bool, max_qos: u8) -> (String, Options) {
    let full = format!("$share/{}/{}", rng.pick(&GROUPS), filter(rng));
    let hash = full
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let options = Options {
        qos: (hash % (u64::from(max_qos) + 1)) as u8,
        no_local: false,
        retain_as_published: v5 && (hash / 3) % 2 == 0,
        retain_handling: if v5 { ((hash / 7) % 3) as u8 } else { 0 },
    };
    (full, options)
}

/// Subscription options: the QoS (at most `max_qos`), and with `v5` the options MQTT 5 adds.
fn options(rng: &mut Rng, v5: bool, max_qos: u8) -> Options {
    Options {
        qos: rng.below(u64::from(max_qos) + 1) as u8,
        no_local: v5 && rng.chance(20),
        retain_as_published: v5 && rng.chance(30),
        retain_handling: if v5 { rng.below(3) as u8 } else { 0 },
    }
}

/// A script of [`STEPS`] steps from `seed`, over [`CLIENTS`] clients, for MQTT 5 with `v5`,
/// with broker restarts among them with `restarts`. A client whose socket was dropped
/// reconnects in the next step, so that nothing is published while the broker may not have
/// noticed the drop yet.
///
/// With `restarts` (the brokers keep their state on disk) the scripts keep to QoS 0 and 1:
/// with persistence on, Switchboard holds a QoS 2 delivery until its records are durable, so
/// it may come after the barrier's UNSUBACK, which the barrier cannot tell from a message that
/// never comes (QoS 2 across a crash is `tests/persistence*.rs`'s). And an MQTT 5 session is
/// kept after its connection exactly when it starts without Clean Start, as in MQTT 3.1.1:
/// across a restart, Mosquitto 2.0.11 goes by Clean Start alone, whatever the Session Expiry
/// Interval (it saves no session whose connection had Clean Start, and brings back one that
/// had neither Clean Start nor an expiry interval, which ended with its connection).
pub fn script(seed: u64, v5: bool, restarts: bool) -> Vec<Step> {
    let max_qos = if restarts { 1 } else { 2 };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut connected = [false; CLIENTS];
    let mut has_will = [false; CLIENTS];
    // Whether each client's connection sets a Receive Maximum and acknowledges nothing.
    let mut held = [false; CLIENTS];
    // Whether each client's session outlives its connection.
    let mut keeps = [false; CLIENTS];
    let mut subscribed: Vec<Vec<String>> = vec![Vec::new(); CLIENTS];
    // The topic each Topic Alias stands for on each client's connection.
    let mut aliases: Vec<std::collections::HashMap<u16, String>> =
        vec![Default::default(); CLIENTS];
    let mut steps = Vec::with_capacity(STEPS);
    let mut must_reconnect = None;
    while steps.len() < STEPS {
        if restarts && must_reconnect.is_none() && rng.chance(3) {
            steps.push(Step::Restart);
            connected = [false; CLIENTS];
            continue;
        }
        let client = match must_reconnect.take() {
            Some(client) => client,
            None => rng.below(CLIENTS as u64) as usize,
        };
        // A connection with a will is not taken over, so that its will has one way to go: its
        // socket dropped (without restarts, which end connections too).
        let take_over = !has_will[client] && rng.chance(4);
        let member = is_member(client);
        let step = if !connected[client] || take_over {
            let clean_start = member || rng.chance(40);
            let keep_session = match (v5, restarts) {
                _ if member => false,
                (false, _) => !clean_start,
                (true, false) => rng.chance(60),
                (true, true) => !clean_start,
            };
            let will = (!member && !restarts && rng.chance(30)).then(|| Will {
                qos: rng.below(u64::from(max_qos) + 1) as u8,
                retain: rng.chance(30),
                payload: format!("w{}", steps.len()),
            });
            Step::Connect {
                client,
                clean_start,
                keep_session,
                will,
                acks: member || rng.chance(75),
                receive_maximum: (v5 && !member && rng.chance(30)).then(|| 1 + rng.below(3) as u16),
            }
        } else {
            match rng.below(100) {
                0..=24 => {
                    let count = if rng.chance(20) { 2 } else { 1 };
                    let filters = (0..count)
                        .map(|_| {
                            if member {
                                shared(&mut rng, v5, max_qos)
                            } else {
                                let mut options = options(&mut rng, v5, max_qos);
                                if held[client] {
                                    // Which retained messages fill a full window first is each
                                    // broker's order (the spec gives none): none are sent.
                                    options.retain_handling = 2;
                                }
                                (filter(&mut rng), options)
                            }
                        })
                        .collect();
                    let identifier =
                        (v5 && !member && rng.chance(50)).then_some(steps.len() as u32 + 1);
                    Step::Subscribe {
                        client,
                        filters,
                        identifier,
                    }
                }
                25..=34 => {
                    let filter = match subscribed[client].len() {
                        n if n > 0 && rng.chance(80) => {
                            subscribed[client][rng.below(n as u64) as usize].clone()
                        }
                        _ if member => shared(&mut rng, v5, max_qos).0,
                        _ => filter(&mut rng),
                    };
                    Step::Unsubscribe { client, filter }
                }
                35..=89 => {
                    let retain = rng.chance(30);
                    let payload = if retain && rng.chance(20) {
                        String::new() // clears the retained message
                    } else {
                        format!("m{}", steps.len())
                    };
                    let alias = (v5 && rng.chance(30)).then(|| 1 + rng.below(3) as u16);
                    // Mostly the topic an alias already stands for, sent as an empty topic.
                    let topic = match alias.and_then(|a| aliases[client].get(&a)) {
                        Some(known) if rng.chance(70) => known.clone(),
                        _ => topic(&mut rng),
                    };
                    if let Some(alias) = alias {
                        aliases[client].insert(alias, topic.clone());
                    }
                    Step::Publish {
                        client,
                        topic,
                        qos: rng.below(u64::from(max_qos) + 1) as u8,
                        retain,
                        payload,
                        props: message_props(&mut rng, v5, client, steps.len()),
                        alias,
                    }
                }
                _ => {
                    let dropped = rng.chance(50);
                    let clean = v5 && !dropped;
                    Step::Disconnect {
                        client,
                        dropped,
                        with_will: clean && has_will[client] && rng.chance(50),
                        end_session: clean && keeps[client] && rng.chance(30),
                    }
                }
            }
        };
        match &step {
            Step::Connect {
                will,
                acks,
                receive_maximum,
                keep_session,
                ..
            } => {
                connected[client] = true;
                keeps[client] = *keep_session;
                has_will[client] = will.is_some();
                held[client] = receive_maximum.is_some() && !acks;
                aliases[client].clear();
            }
            Step::Disconnect { dropped, .. } => {
                connected[client] = false;
                if *dropped {
                    must_reconnect = Some(client);
                }
            }
            Step::Subscribe { filters, .. } => {
                subscribed[client].extend(filters.iter().map(|(f, _)| f.clone()));
            }
            Step::Unsubscribe { filter, .. } => subscribed[client].retain(|f| f != filter),
            Step::Publish { .. } | Step::Restart => {}
        }
        steps.push(step);
    }
    steps
}
