//! What a script has made of each client's subscriptions (the normalised lines that the two
//! brokers' observations are compared by are `normalise.rs`'s).

use std::collections::{BTreeMap, BTreeSet};

use super::script::{is_member, will_topic, Options, Step, CLIENTS};

/// A subscription as the spec has it, and as Mosquitto 2.0.11 holds it: subscribing to the
/// same filter again must replace the subscription, options and all [MQTT-3.8.4-3], and
/// Mosquitto takes the new QoS but keeps the first No Local and Retain As Published.
struct Subscription {
    now: Options,
    mosquitto: Options,
    /// Its MQTT 5 Subscription Identifier, if its SUBSCRIBE had one.
    identifier: Option<u32>,
}

impl Subscription {
    /// Whether the two brokers may route by different options.
    fn diverged(&self) -> bool {
        self.now.no_local != self.mosquitto.no_local
            || self.now.retain_as_published != self.mosquitto.retain_as_published
    }
}

/// Each client's subscriptions by filter (a member's by `$share/{group}/{filter}`), and whether
/// its session outlives its connection.
pub struct Model {
    subscriptions: Vec<BTreeMap<String, Subscription>>,
    kept: Vec<bool>,
    /// (client, payload) of each message routed to a client through overlapping
    /// subscriptions: whether Mosquitto sent it at QoS 0 or above, and so whether it is in
    /// flight to be sent again on resuming, is Mosquitto's pick (see [`normalise`]).
    pub overlapped: BTreeSet<(usize, Vec<u8>)>,
    /// (client, payload) of each message routed to a client while one of its matching
    /// subscriptions had options the brokers differ on (`Subscription::diverged`): sent again
    /// to a resumed session, its RETAIN flag is the one each broker routed it with, even once
    /// that subscription is gone (see [`normalise`]).
    pub diverged_routed: BTreeSet<(usize, Vec<u8>)>,
    /// The payload of each client's will while its connection has one.
    wills: Vec<Option<String>>,
    /// Whether each client's connection sets an MQTT 5 Receive Maximum and acknowledges
    /// nothing, so that its window fills (see [`normalise`]).
    pub held: Vec<bool>,
    /// Whether such a connection's window may hold other messages with each broker: it
    /// resumed a session, or it got a message through overlapping subscriptions or through a
    /// subscription whose options the brokers differ on (see `normalise.rs`).
    pub held_diverged: Vec<bool>,
    /// Whether each client's session went through such a connection since everything in it
    /// was last delivered: its messages may be in flight with one broker and queued with the
    /// other.
    session_diverged: Vec<bool>,
    /// Whether this step's CONNECT resumed such a session (see `normalise.rs`).
    pub resumed_diverged: Vec<bool>,
}

impl Model {
    pub fn new() -> Model {
        Model {
            subscriptions: (0..CLIENTS).map(|_| BTreeMap::new()).collect(),
            kept: vec![false; CLIENTS],
            overlapped: BTreeSet::new(),
            diverged_routed: BTreeSet::new(),
            wills: vec![None; CLIENTS],
            held: vec![false; CLIENTS],
            held_diverged: vec![false; CLIENTS],
            session_diverged: vec![false; CLIENTS],
            resumed_diverged: vec![false; CLIENTS],
        }
    }

    /// Applies a step, with Switchboard's CONNACK Session Present flag for a CONNECT (compared
    /// with Mosquitto's in the step's lines).
    pub fn apply(&mut self, step: &Step, session_present: Option<bool>) {
        match step {
            Step::Connect {
                client,
                keep_session,
                will,
                acks,
                receive_maximum,
                ..
            } => {
                self.wills[*client] = will.as_ref().map(|w| w.payload.clone());
                if session_present != Some(true) {
                    self.subscriptions[*client].clear();
                }
                self.kept[*client] = *keep_session;
                self.held[*client] = receive_maximum.is_some() && !acks;
                let resumed = session_present == Some(true);
                self.held_diverged[*client] = self.held[*client] && resumed;
                self.resumed_diverged[*client] = resumed && self.session_diverged[*client];
                // A connection without a full window takes all of it, in flight with both.
                self.session_diverged[*client] = self.held_diverged[*client];
            }
            Step::Disconnect {
                client,
                end_session,
                dropped,
                with_will,
            } => {
                // A dropped connection, or an MQTT 5 DISCONNECT 0x04, publishes the will: routed
                // by everyone's subscriptions as they are before this client's go.
                if let Some(payload) = self.wills[*client].take() {
                    if *dropped || *with_will {
                        self.routed(*client, &will_topic(*client), &payload);
                    }
                }
                if *end_session {
                    self.kept[*client] = false;
                }
                if !self.kept[*client] {
                    self.subscriptions[*client].clear();
                }
            }
            Step::Restart => {
                // Every connection closes: only the sessions kept outlive it.
                self.wills = vec![None; CLIENTS];
                for client in 0..CLIENTS {
                    if !self.kept[client] {
                        self.subscriptions[client].clear();
                    }
                }
            }
            Step::Subscribe {
                client,
                filters,
                identifier,
            } => {
                for (filter, options) in filters {
                    let mosquitto = match self.subscriptions[*client].get(filter) {
                        Some(old) => Options {
                            qos: options.qos,
                            ..old.mosquitto
                        },
                        None => *options,
                    };
                    let now = *options;
                    let subscription = Subscription {
                        now,
                        mosquitto,
                        identifier: *identifier,
                    };
                    self.subscriptions[*client].insert(filter.clone(), subscription);
                }
            }
            Step::Unsubscribe { client, filter } => {
                self.subscriptions[*client].remove(filter);
            }
            Step::Publish {
                client: publisher,
                topic,
                payload,
                ..
            } => self.routed(*publisher, topic, payload),
        }
    }

    /// Notes what routing `payload`, published by `publisher` to `topic`, leaves the brokers
    /// free to differ on, client by client.
    fn routed(&mut self, publisher: usize, topic: &str, payload: &str) {
        for client in 0..CLIENTS {
            if self.matching(client, topic, Some(publisher)).len() > 1 {
                self.overlapped
                    .insert((client, payload.as_bytes().to_vec()));
                self.held_diverged[client] |= self.held[client];
                self.session_diverged[client] |= self.held[client];
            }
            if self.diverged_matches(client, topic) {
                self.diverged_routed
                    .insert((client, payload.as_bytes().to_vec()));
                // Routed by No Local with one broker and not the other, it may take room in
                // one broker's full window only.
                self.held_diverged[client] |= self.held[client];
                self.session_diverged[client] |= self.held[client];
            }
        }
    }

    fn matching_filters<'a>(
        &'a self,
        client: usize,
        topic: &'a str,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions[client]
            .iter()
            .filter(move |(filter, _)| matches(filter, topic))
            .map(|(_, subscription)| subscription)
    }

    /// The options of each of `client`'s subscriptions matching `topic`, leaving out No Local
    /// ones when `client` published it.
    pub fn matching(&self, client: usize, topic: &str, publisher: Option<usize>) -> Vec<Options> {
        self.matching_filters(client, topic)
            .map(|s| s.now)
            .filter(|o| !(o.no_local && publisher == Some(client)))
            .collect()
    }

    /// The Subscription Identifiers of `client`'s subscriptions matching `topic` (but No Local
    /// ones when `client` published it), sorted.
    pub fn matching_identifiers(
        &self,
        client: usize,
        topic: &str,
        publisher: Option<usize>,
    ) -> Vec<u32> {
        let mut identifiers: Vec<u32> = self
            .matching_filters(client, topic)
            .filter(|s| !(s.now.no_local && publisher == Some(client)))
            .filter_map(|s| s.identifier)
            .collect();
        identifiers.sort_unstable();
        identifiers
    }

    /// The shared subscriptions matching `topic`, each once (however many members it has),
    /// by `$share/{group}/{filter}`, with their options (every member's are the same).
    pub fn shared_matching(&self, topic: &str) -> BTreeMap<&str, Options> {
        (0..CLIENTS)
            .filter(|&c| is_member(c))
            .flat_map(|c| &self.subscriptions[c])
            .filter(|(full, _)| {
                let filter = full.splitn(3, '/').nth(2).unwrap_or_default();
                matches(filter, topic)
            })
            .map(|(full, subscription)| (full.as_str(), subscription.now))
            .collect()
    }

    /// Whether `publisher`'s message to `topic` matches only subscriptions of its own, one of
    /// them with No Local for either broker: whether anyone gets it may then differ.
    pub fn only_own_no_local(&self, publisher: usize, topic: &str) -> bool {
        let others = (0..CLIENTS)
            .filter(|&c| c != publisher)
            .any(|c| self.matching_filters(c, topic).next().is_some())
            || !self.shared_matching(topic).is_empty();
        !others
            && self
                .matching_filters(publisher, topic)
                .any(|s| s.now.no_local || s.mosquitto.no_local)
    }

    /// Whether a subscription of `client` matching `topic` has options the brokers differ on.
    pub fn diverged_matches(&self, client: usize, topic: &str) -> bool {
        self.matching_filters(client, topic)
            .any(Subscription::diverged)
    }
}

/// Whether `filter` matches `topic` (no `$` topics in these scripts).
fn matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (part, Some(level)) if part == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}
