//! The ClusterLink actor: one per node. It joins this broker to the others through NATS.
//!
//! - Its *local* side is an in-process MQTT 5 client of this broker (`$bridge.$cluster`),
//!   subscribed to the filters the other nodes' clients hold (`gossip.rs`), with No Local,
//!   Retain As Published and no retained messages on subscribing: it reads the messages
//!   published here that some other node wants, and what it publishes here itself (from the
//!   other nodes) never comes back to it. The Registry hands it every retained message.
//! - Its *NATS* side publishes those on the subject of their topic, retained ones on the
//!   broadcast subject which every node takes (`outbound.rs`), and subscribes, in this node's
//!   queue group, to the subjects of the filters this node's clients hold: NATS then brings a
//!   message once, however many of them match it.
//!
//! A client that connects here is announced, and a node where the same client id is connected
//! since earlier ends that connection [MQTT-3.1.4-2]. A starting node asks one other node for
//! its retained messages.

mod barrier;
mod gossip;
mod liveness;
mod outbound;
mod outbox;
mod retained_sync;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_actors::{
    ConnectionEvent, ConnectionOptions, Connector, Enqueue, ManagedConnection,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::asked::AskedFilters;
use super::barrier::{Answers, Asks};
use super::cleared::ClearedTopics;
use super::envelope::{ClusterMessage, Envelope};
use super::full_announcement::FullAnnouncement;
use super::interest::Interest;
use super::liveness::Liveness;
use super::nats::{NatsClient, NatsEvent, NatsMessages, NatsServer};
use super::remote::RemoteInterest;
use super::subjects::Subjects;
use crate::drops::WARNING_INTERVAL;
use crate::hooks::{ClientConnected, LifecycleHooks};
use crate::log_gate::LogGate;
use crate::registry::{
    AddHooks, ConnectedElsewhere, HoldSubscribes, Registry, WatchRetained, INTERNAL_CLIENT_PREFIX,
};
use crate::routing::Share;
use outbox::Outbox;

pub use crate::registry::CLUSTER_CLIENT_ID;

/// How long a starting node waits for the retained messages of the cluster before it stops
/// guarding the newer ones that came live (no other node may be running).
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// The most QoS 0 messages the outbox holds (when NATS's queue is full); more are dropped.
/// QoS 1/2 ones are bounded by the link's inflight window on this broker instead.
const OUTBOX_QOS0: usize = 8192;

/// The most the outbox holds at all (retained messages wait for NATS; past this they are
/// dropped, and counted).
const OUTBOX_MAX: usize = 100_000;

// Subscription ids of the fixed subjects; a filter's subjects get ids from FIRST_FILTER_SID.
const SID_BROADCAST: u64 = 1;
const SID_CONNECTED: u64 = 2;
const SID_SYNC: u64 = 3;
const SID_INBOX: u64 = 4;
const SID_INTEREST: u64 = 5;
const FIRST_FILTER_SID: u64 = 100;

/// What the link needs from the broker it runs in.
pub struct ClusterEnvironment {
    /// The NATS servers (checked).
    pub servers: Vec<NatsServer>,
    /// TLS to them, with `cluster.tls`.
    pub tls: Option<switchboard_actors::TlsOptions>,
    /// The cluster's subjects, for this node.
    pub subjects: Subjects,
    /// This node's name.
    pub node: String,
    /// Opens an in-process connection to this broker.
    pub local: Connector,
    /// `[limits]`: `max_packet_size` for the local client; a message from another node over
    /// one is dropped (`bridge::over_local_limits`).
    pub limits: crate::config::LimitsConfig,
    /// The Registry: hooks, filters, retained messages, takeovers.
    pub registry: Addr<Registry>,
    /// Where the link's state is shown (`/metrics`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// `cluster.subscribe_wait`: how long a SUBACK waits for the other nodes (0: not at all).
    pub subscribe_wait: Duration,
    /// `cluster.node_timeout`: a node not heard from for this long is forgotten.
    pub node_timeout: Duration,
}

/// Sent by the broker to the link when it shuts down: stop both sides. Answers when done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopCluster;

/// The link.
pub struct ClusterLink {
    env: ClusterEnvironment,
    nats: Option<NatsClient>,
    /// The largest payload the NATS server takes.
    max_payload: usize,
    local: Option<Addr<ManagedConnection>>,
    /// This node's envelopes not yet in NATS's queue: announcements ahead of messages.
    outbox: Outbox,
    /// Whether the outbox waits for room in NATS's queue.
    pumping: bool,
    /// The filters of this node's clients, and the subjects they take on NATS.
    interest: Interest,
    /// The filters of the other nodes' clients: the link's local subscriptions.
    remote: RemoteInterest,
    /// An announcement of all this node's filters under way, a slice per turn (`gossip.rs`).
    announcing: Option<FullAnnouncement>,
    /// While a sync request is answered: the topics of retained messages that came live
    /// meanwhile (newer than the answer's).
    syncing: Option<HashSet<String>>,
    /// Counts the sync requests, so that an old one's timer leaves a newer one's guard alone.
    sync_round: u64,
    /// Topics of retained messages published here while NATS was down: newer than what a
    /// sync answers once it is back.
    retained_while_down: HashSet<String>,
    /// NATS was lost since the last connection: a sync follows the next one.
    resync_on_connect: bool,
    /// The topics whose retained message this node last saw cleared, for the nodes that ask
    /// for the retained messages (`retained_sync.rs`).
    cleared: ClearedTopics,
    local_ready: Option<oneshot::Sender<()>>,
    /// This node's SUBSCRIBEs waiting for the other nodes (`barrier.rs`).
    asks: Asks,
    /// The other nodes' asks this node answers.
    answers: Answers,
    /// Filters asked for whose SUBSCRIBEs the Registry may not have taken yet (it waits for
    /// the answers): held until the Registry has taken each SUBSCRIBE asked for
    /// ([`FilterChange::Held`](crate::registry::FilterChange::Held)), or until their wait is
    /// over (a SUBSCRIBE dropped with its connection), even when the Registry says another
    /// client let go of them meanwhile (`cluster/asked.rs`).
    asked_recently: AskedFilters,
    /// When the other nodes were last heard from (`liveness.rs`).
    liveness: Liveness,
    /// This node's share of each shared group (share name, filter) other nodes hold, as told
    /// to the Registry (`gossip.rs`).
    shares: BTreeMap<(String, String), Share>,
    /// Bytes on the cluster's subjects that are not an envelope of this version: one warning
    /// per [`WARNING_INTERVAL`] with their count, not one per message.
    foreign: LogGate,
}

impl ClusterLink {
    /// A link (not started); `local_ready` is told once its local client is connected.
    pub fn new(env: ClusterEnvironment, local_ready: oneshot::Sender<()>) -> Self {
        let liveness = Liveness::new(env.node_timeout);
        ClusterLink {
            env,
            nats: None,
            max_payload: 1024 * 1024,
            local: None,
            outbox: Outbox::default(),
            pumping: false,
            interest: Interest::new(FIRST_FILTER_SID),
            remote: RemoteInterest::new(),
            announcing: None,
            syncing: None,
            sync_round: 0,
            retained_while_down: HashSet::new(),
            resync_on_connect: false,
            cleared: ClearedTopics::default(),
            local_ready: Some(local_ready),
            asks: Asks::new(),
            answers: Answers::new(),
            asked_recently: AskedFilters::default(),
            liveness,
            shares: BTreeMap::new(),
            foreign: LogGate::new(WARNING_INTERVAL),
        }
    }

    fn local_options(&self) -> ConnectionOptions {
        let mut options = crate::bridge::in_process_options(
            CLUSTER_CLIENT_ID,
            self.env.local.clone(),
            self.env.limits.max_packet_size,
        );
        options.skip_retained = true;
        options
    }

    /// A message from another node: published here, as it was there.
    fn take_in(&mut self, message: ClusterMessage) {
        let Some(local) = &self.local else { return };
        let properties = message.properties.as_ref();
        let (topic, payload) = (&message.topic, message.payload.len());
        if let Some(over) =
            crate::bridge::over_local_limits(&self.env.limits, topic, payload, properties)
        {
            // Another node took it under larger limits.
            self.status().add_dropped();
            warn!(topic = %message.topic, over, "a message from another node is over this node's limits; dropped");
            return;
        }
        self.status().add_received();
        local.do_send(Enqueue {
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            properties: message.properties.map(Box::new),
            expiry: message.expiry,
        });
    }

    fn on_envelope(&mut self, sid: u64, envelope: Envelope, ctx: &mut Context<Self>) {
        match (sid, envelope) {
            (SID_INBOX, Envelope::Message(message)) => {
                let newer = self
                    .syncing
                    .as_ref()
                    .is_some_and(|live| live.contains(&message.topic));
                if !newer {
                    if message.retain {
                        self.cleared
                            .note(&message.topic, message.payload.is_empty());
                    }
                    self.take_in(message);
                }
            }
            (SID_INBOX, Envelope::RetainCleared { node, topics }) => {
                self.take_cleared(&node, topics, ctx);
            }
            (SID_INBOX, Envelope::InterestReady { node, id }) => {
                self.heard(&node);
                self.asks.answered(&node, id);
            }
            (SID_INBOX, Envelope::Resync { node }) => self.on_resync(&node, ctx),
            (SID_INBOX, Envelope::SyncEnd { node, count }) => {
                self.syncing = None;
                info!(from = %node, retained = count, "cluster: took the retained messages of the cluster");
            }
            (SID_SYNC, Envelope::SyncRequest { node }) if node != self.env.node => {
                self.answer_sync(node, ctx);
            }
            (
                SID_CONNECTED,
                Envelope::Connected {
                    node,
                    client_id,
                    at_ms,
                    clean_start,
                },
            ) if node != self.env.node => {
                let wins_ties = node > self.env.node;
                self.env.registry.do_send(ConnectedElsewhere {
                    client_id,
                    node,
                    at_ms,
                    clean_start,
                    wins_ties,
                });
            }
            (SID_INTEREST, envelope) => self.on_interest(envelope, ctx),
            (SID_CONNECTED | SID_SYNC | SID_INBOX, _) => {}
            (_, Envelope::Message(message)) => {
                if message.retain {
                    if let Some(live) = &mut self.syncing {
                        live.insert(message.topic.clone());
                    }
                    self.cleared
                        .note(&message.topic, message.payload.is_empty());
                }
                self.take_in(message);
            }
            (_, other) => debug!(?other, "cluster: an envelope on a topic subject, ignored"),
        }
    }

    /// Publishes `envelope` on `subject` beside the outbox, not in its place among this node's
    /// messages: the news, requests and answers whose order matters only on their own subject.
    /// Nothing without a NATS client (the link stops).
    fn publish_now(&self, subject: String, envelope: &Envelope) {
        let Some(nats) = self.nats.clone() else {
            return;
        };
        let bytes = envelope.encode();
        actix_rt::spawn(async move {
            nats.publish(subject, bytes).await;
        });
    }

    fn status(&self) -> &crate::metrics::LinkCounters {
        &self.env.metrics.cluster.link
    }

    fn on_nats_up(&mut self, server: String, max_payload: usize, ctx: &mut Context<Self>) {
        self.status().set_connected(true);
        let current = server.clone();
        self.env
            .metrics
            .cluster
            .change_view(|view| view.server = Some(current));
        self.max_payload = max_payload;
        info!(%server, node = %self.env.node, filters = self.interest.len(), other_nodes_filters = self.remote.len(), "cluster: connected to NATS");
        self.hear_all_again();
        self.join(ctx);
        if std::mem::take(&mut self.resync_on_connect) {
            // Retained messages set or cleared elsewhere while this node was cut off reached
            // every node but this one.
            let newer = std::mem::take(&mut self.retained_while_down);
            self.request_sync(newer, ctx);
        }
    }
}

impl Actor for ClusterLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.env.metrics.cluster.set_enabled(&self.env.node);
        let me = ctx.address();
        let nats = NatsClient::start(
            self.env.servers.clone(),
            self.env.tls.clone(),
            format!("switchboard {}", self.env.node),
            me.clone().recipient(),
            me.clone().recipient(),
        );
        let subjects = &self.env.subjects;
        nats.subscribe(SID_BROADCAST, subjects.broadcast(), None);
        nats.subscribe(SID_CONNECTED, subjects.connected(), None);
        nats.subscribe(SID_SYNC, subjects.sync(), Some(subjects.sync_group()));
        nats.subscribe(SID_INBOX, subjects.inbox(), None);
        nats.subscribe(SID_INTEREST, subjects.interest(), None);
        self.nats = Some(nats);
        // Ask for the cluster's retained messages once subscribed (the client sends its
        // subscriptions before anything published).
        self.request_sync(HashSet::new(), ctx);
        let hooks = LifecycleHooks::new().on_connected(me.clone().recipient());
        self.env.registry.do_send(AddHooks(hooks));
        self.env
            .registry
            .do_send(WatchRetained(me.clone().recipient()));
        if !self.env.subscribe_wait.is_zero() {
            self.env
                .registry
                .do_send(HoldSubscribes(me.clone().recipient()));
        }
        let local = ManagedConnection::start_with(self.local_options(), vec![me.recipient()]);
        self.local = Some(local);
        self.watch_filters(ctx);
        self.watch_liveness(ctx);
        info!(node = %self.env.node, servers = ?self.env.servers.iter().map(ToString::to_string).collect::<Vec<_>>(), "cluster link started");
    }
}

impl Handler<ConnectionEvent> for ClusterLink {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        match event {
            ConnectionEvent::MessageReceived(message) => self.send_out(message, None, ctx),
            ConnectionEvent::MessageToAcknowledge(message, ack) => {
                self.send_out(message, Some(ack), ctx)
            }
            ConnectionEvent::SubscriptionGranted { filter, granted } => {
                if granted.is_none() {
                    warn!(%filter, "this broker refused the cluster link's subscription");
                }
                self.on_granted(&filter);
            }
            ConnectionEvent::Connected { .. } => {
                if let Some(ready) = self.local_ready.take() {
                    let _ = ready.send(());
                }
            }
            ConnectionEvent::MessageDropped(_, reason) => {
                self.status().add_dropped();
                warn!(
                    ?reason,
                    "a message from another node could not be published here"
                );
            }
            ConnectionEvent::ConnectFailed { failure, .. } => {
                warn!(
                    ?failure,
                    "the cluster link's local client was refused (connect interceptor?); retrying"
                );
            }
            _ => {}
        }
    }
}

impl Handler<NatsEvent> for ClusterLink {
    type Result = ();

    fn handle(&mut self, event: NatsEvent, ctx: &mut Context<Self>) {
        match event {
            NatsEvent::Up {
                server,
                max_payload,
            } => self.on_nats_up(server, max_payload, ctx),
            NatsEvent::Down { error } => {
                self.status().set_connected(false);
                // No node can answer now: SUBSCRIBEs waiting for them go on.
                self.asks.release_all();
                self.resync_on_connect = true;
                self.env
                    .metrics
                    .cluster
                    .change_view(|view| view.server = None);
                warn!(%error, "cluster: NATS connection lost; reconnecting (QoS 1/2 messages wait, QoS 0 ones are not sent meanwhile)");
            }
        }
    }
}

impl Handler<NatsMessages> for ClusterLink {
    type Result = ();

    fn handle(&mut self, NatsMessages(messages): NatsMessages, ctx: &mut Context<Self>) {
        for inbound in messages {
            match Envelope::decode(inbound.payload) {
                Ok(envelope) => self.on_envelope(inbound.sid, envelope, ctx),
                Err(error) => {
                    if let Some(ignored) = self.foreign.event(Instant::now()) {
                        warn!(subject = %inbound.subject, %error, ignored, "cluster: not a message of this cluster's nodes (another version, or not a node's), ignored; counted since the last such line");
                    }
                }
            }
        }
    }
}

impl Handler<ClientConnected> for ClusterLink {
    type Result = ();

    fn handle(&mut self, event: ClientConnected, _: &mut Context<Self>) {
        // Internal clients (bridges' local sides, the link) are per node, under the same ids
        // on every node.
        if event.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return;
        }
        let envelope = Envelope::Connected {
            node: self.env.node.clone(),
            client_id: event.client_id.to_string(),
            at_ms: crate::persistence::unix_ms_now(),
            clean_start: event.clean_session,
        };
        self.publish_now(self.env.subjects.connected(), &envelope);
    }
}

impl Handler<StopCluster> for ClusterLink {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopCluster, _: &mut Context<Self>) -> Self::Result {
        self.asks.release_all();
        let local = self.local.take();
        // The other nodes stop sending what this one's clients wanted.
        let bye = self.nats.take().map(|nats| {
            let subject = self.env.subjects.interest();
            let envelope = Envelope::Bye {
                node: self.env.node.clone(),
            };
            async move { nats.publish(subject, envelope.encode()).await }
        });
        self.status().set_connected(false);
        let counts = self.env.metrics.cluster.snapshot().unwrap_or_default();
        info!(
            sent = counts.sent,
            received = counts.received,
            dropped = counts.dropped,
            "cluster link stopping"
        );
        Box::pin(
            async move {
                if let Some(bye) = bye {
                    let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
                }
                if let Some(local) = local {
                    let stop = switchboard_actors::Stop {
                        deadline: Duration::from_millis(500),
                    };
                    let _ = local.send(stop).await;
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}
