//! The Bridge actor: one per `[[bridge]]`. It holds two managed connections from the device
//! actors' crate, so a bridge reconnects, re-subscribes, queues and windows exactly as a device
//! does:
//!
//! - the *remote* side, to the other broker: subscribed to the `in`/`both` filters, with the
//!   bridge bit (3.1.1) or No Local and Retain As Published (5), and a bounded queue for what goes
//!   out (on disk under `persistence.dir` when that is set);
//! - the *local* side, an in-process MQTT 5 client of this broker (`$bridge.<name>`): subscribed
//!   to the `out`/`both` filters with No Local, so what the bridge itself publishes here never
//!   comes back to it.
//!
//! A message read on one side is renamed by the [`TopicMap`] and enqueued on the other.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchboard_actors::{
    Acknowledge, Backoff, BrokerAddress, ConnectFailure, ConnectionEvent, ConnectionOptions,
    Connector, Enqueue, LinkDown, ManagedConnection, MessageId, Overflow, PendingAck, PendingCount,
    ProtocolVersion, QoS, Received, Stop, Subscribe, Transport,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::config::{BridgeConfig, BridgeOverflow, BridgeProtocol, BridgeSecrets};
use super::status::BridgeStatus;
use super::topics::TopicMap;

/// How often the Bridge asks its remote connection how many messages wait.
const QUEUE_POLL: Duration = Duration::from_millis(500);

/// What a Bridge needs from the broker it runs in.
#[derive(Clone)]
pub struct BridgeEnvironment {
    /// Opens an in-process connection to this broker (a Session on a worker).
    pub local: Connector,
    /// `[limits]`: `max_packet_size` is the largest packet either side takes; what would break
    /// a limit here is dropped (`bridge::over_local_limits`).
    pub limits: crate::config::LimitsConfig,
    /// Where the queue for the remote is kept (`<persistence.dir>/bridges`), if anywhere. With
    /// it, the local client's session is persistent too, so that this broker keeps what is
    /// routed to the bridge across a restart.
    pub queue_dir: Option<PathBuf>,
    /// The Registry, to end the local client's session when the bridge is removed.
    pub registry: Addr<crate::registry::Registry>,
}

/// The side of a bridge an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

/// Sent by a [`SideListener`] to its [`Bridge`]: an event of one of its two connections.
#[derive(Message)]
#[rtype(result = "()")]
struct SideEvent(Side, ConnectionEvent);

/// Listens to one of a bridge's connections and hands the events on, tagged with the side.
struct SideListener {
    side: Side,
    bridge: Addr<Bridge>,
}

impl Actor for SideListener {
    type Context = Context<Self>;
}

impl Handler<ConnectionEvent> for SideListener {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        if !self.bridge.connected() {
            return ctx.stop();
        }
        self.bridge.do_send(SideEvent(self.side, event));
    }
}

/// Sent by the [`Bridges`](super::Bridges) manager to a Bridge: stop both connections (what is
/// queued for the remote stays on disk with persistence) and then the Bridge. Answers when done.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopBridge {
    /// End the local client's session as well (the bridge is removed, or its topics changed),
    /// instead of leaving it for the next start to resume.
    pub end_local_session: bool,
}

/// One bridge.
pub struct Bridge {
    config: BridgeConfig,
    secrets: BridgeSecrets,
    environment: BridgeEnvironment,
    map: TopicMap,
    status: Arc<BridgeStatus>,
    remote: Option<Addr<ManagedConnection>>,
    local: Option<Addr<ManagedConnection>>,
    remote_up: bool,
    /// Subscriptions not granted yet, on each side (since start, or since a reconnect on which
    /// the broker had no session).
    ungranted: [BTreeSet<String>; 2],
    /// Messages from the remote being published here, by their id on the local side, with the
    /// acknowledgement the remote waits for until this broker has them.
    incoming: HashMap<MessageId, PendingAck>,
    /// Local subscriptions not answered yet, and who waits for them all to be.
    local_unanswered: BTreeSet<String>,
    local_ready: Option<oneshot::Sender<()>>,
}

impl Bridge {
    /// A bridge with these checked settings (not started). `local_ready` is told when this
    /// broker has answered every local subscription of the bridge: from then on, nothing
    /// published here that the bridge should forward misses it.
    pub fn new(
        config: BridgeConfig,
        secrets: BridgeSecrets,
        environment: BridgeEnvironment,
        status: Arc<BridgeStatus>,
        local_ready: oneshot::Sender<()>,
    ) -> Self {
        Bridge {
            map: TopicMap::new(&config.topics),
            config,
            secrets,
            environment,
            status,
            remote: None,
            local: None,
            remote_up: false,
            ungranted: Default::default(),
            incoming: HashMap::new(),
            local_unanswered: BTreeSet::new(),
            local_ready: Some(local_ready),
        }
    }

    fn remote_options(&self) -> ConnectionOptions {
        let config = &self.config;
        // Checked at start-up: an unparsable address cannot reach here.
        let mut brokers = config.brokers().unwrap_or_default().into_iter();
        let first = brokers.next().unwrap_or_else(|| BrokerAddress::new("", 0));
        let mut options = ConnectionOptions::new(first.host, first.port, config.remote_client_id());
        options.failover = brokers.collect();
        options.return_to_first = (!config.round_robin).then_some(config.reconnect_max);
        options.keep_alive = config.keep_alive;
        options.clean_session = config.clean_session;
        options.credentials = config
            .username
            .clone()
            .map(|user| (user, self.secrets.password.clone().unwrap_or_default()));
        options.max_packet_size = self.environment.limits.max_packet_size;
        options.backoff = Backoff {
            initial: config.reconnect_initial,
            max: config.reconnect_max,
        };
        options.queue_capacity = config.max_queued_messages;
        options.overflow = match config.queue_overflow {
            BridgeOverflow::DropOldest => Overflow::DropOldest,
            BridgeOverflow::DropNewest => Overflow::DropNewest,
        };
        options.inflight = config.max_inflight;
        options.durable_queue = self
            .environment
            .queue_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.queue", config.name)));
        options.protocol = match config.protocol {
            BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
            BridgeProtocol::V5 => ProtocolVersion::V5,
        };
        options.bridge = true;
        options.manual_acks = true;
        options.transport = match &self.secrets.tls {
            Some(tls) => Transport::Tls(tls.clone()),
            None => Transport::Tcp,
        };
        options
    }

    fn local_client_id(&self) -> String {
        format!(
            "{}{}",
            crate::session::INTERNAL_CLIENT_PREFIX,
            self.config.name
        )
    }

    fn local_options(&self) -> ConnectionOptions {
        let mut options = super::in_process_options(
            &self.local_client_id(),
            self.environment.local.clone(),
            self.environment.limits.max_packet_size,
        );
        options.clean_session = self.environment.queue_dir.is_none();
        options
    }

    fn connection(
        &self,
        options: ConnectionOptions,
        side: Side,
        bridge: Addr<Bridge>,
        subscriptions: Vec<(String, QoS)>,
    ) -> Addr<ManagedConnection> {
        let listener = SideListener { side, bridge }.start();
        let connection = ManagedConnection::start_with(options, vec![listener.recipient()]);
        for (filter, qos) in subscriptions {
            connection.do_send(Subscribe { filter, qos });
        }
        connection
    }

    /// Keeps the `subscribed` state: a connection without a session is subscribed afresh; each
    /// grant ticks one filter off.
    fn track_subscriptions(&mut self, side: Side, event: &ConnectionEvent) {
        let at = match side {
            Side::Local => 0,
            Side::Remote => 1,
        };
        match event {
            ConnectionEvent::Connected {
                session_present: false,
                ..
            } => {
                let filters = match side {
                    Side::Local => self.map.local_subscriptions(),
                    Side::Remote => self.map.remote_subscriptions(),
                };
                self.ungranted[at] = filters.into_iter().map(|(filter, _)| filter).collect();
            }
            ConnectionEvent::SubscriptionGranted { filter, granted } => {
                if granted.is_some() {
                    self.ungranted[at].remove(filter);
                }
                if side == Side::Local {
                    self.local_unanswered.remove(filter);
                    self.tell_local_ready_if_answered();
                }
            }
            ConnectionEvent::Connected { .. } | ConnectionEvent::Disconnected(_) => {}
            // Messages and their outcomes say nothing about subscriptions.
            _ => return,
        }
        let all = self.remote_up && self.ungranted.iter().all(BTreeSet::is_empty);
        self.status.set_subscribed(all);
    }

    fn tell_local_ready_if_answered(&mut self) {
        if self.local_unanswered.is_empty() {
            if let Some(ready) = self.local_ready.take() {
                let _ = ready.send(());
            }
        }
    }

    fn on_remote(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        let name = self.config.name.as_str();
        match event {
            ConnectionEvent::Connected {
                session_present,
                broker,
            } => {
                self.status.link.set_connected(true);
                self.status.set_remote(Some(broker.to_string()));
                info!(bridge = %name, address = %broker, session_present, "bridge connected");
            }
            ConnectionEvent::Disconnected(LinkDown::BackToFirstBroker) => {
                self.status.link.set_connected(false);
                self.status.set_remote(None);
                info!(bridge = %name, address = %self.config.address_list(), "the bridge's first remote broker answers again; the bridge goes back to it");
            }
            ConnectionEvent::Disconnected(reason) => {
                self.status.link.set_connected(false);
                self.status.set_remote(None);
                warn!(bridge = %name, address = %self.config.address_list(), ?reason, "bridge link down; QoS 1/2 messages going out are queued until it returns");
            }
            ConnectionEvent::ConnectFailed {
                failure,
                retry_in,
                broker,
            } => {
                let retry_in = format!("{retry_in:.1?}");
                match failure {
                    ConnectFailure::Refused(code) => {
                        warn!(bridge = %name, address = %broker, code, %retry_in, "the remote broker refused the bridge's CONNECT (4 or 0x86: bad user name or password, 5 or 0x87: not authorized); retrying")
                    }
                    other => {
                        warn!(bridge = %name, address = %broker, failure = ?other, %retry_in, "cannot connect the bridge; retrying")
                    }
                }
            }
            ConnectionEvent::SubscriptionGranted { filter, granted } => match granted {
                Some(qos) => debug!(bridge = %name, %filter, ?qos, "remote subscription granted"),
                None => {
                    warn!(bridge = %name, %filter, "the remote broker refused the bridge's subscription")
                }
            },
            ConnectionEvent::MessageReceived(message) => self.take_in(message, None, ctx),
            ConnectionEvent::MessageToAcknowledge(message, ack) => {
                self.take_in(message, Some(ack), ctx)
            }
            ConnectionEvent::MessageDelivered(_) => self.status.link.add_sent(),
            ConnectionEvent::MessageDropped(_, reason) => {
                self.status.link.add_dropped();
                debug!(
                    bridge = %name,
                    ?reason,
                    "a message for the remote was dropped"
                );
            }
            // (3.1.1) Over `limits.max_packet_size`: acknowledged to the remote and dropped by
            // the link (which warned), so that the remote does not send it again forever.
            ConnectionEvent::MessageTooLarge { .. } => self.status.link.add_dropped(),
        }
    }

    fn on_local(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        let name = self.config.name.as_str();
        match event {
            ConnectionEvent::MessageReceived(message) => self.send_out(message, None, ctx),
            ConnectionEvent::MessageToAcknowledge(message, ack) => {
                self.send_out(message, Some(ack), ctx)
            }
            ConnectionEvent::MessageDelivered(id) => self.acknowledge_in(id),
            ConnectionEvent::MessageDropped(id, reason) => {
                self.status.link.add_dropped();
                warn!(
                    bridge = %name,
                    ?reason,
                    "a message from the remote could not be published here"
                );
                self.acknowledge_in(id);
            }
            ConnectionEvent::SubscriptionGranted {
                filter,
                granted: None,
            } => {
                warn!(bridge = %name, %filter, "this broker refused the bridge's subscription (ACL?)");
            }
            ConnectionEvent::ConnectFailed { failure, .. } => {
                warn!(
                    bridge = %name,
                    ?failure,
                    "the bridge's local client was refused (connect interceptor?); retrying"
                );
            }
            ConnectionEvent::Connected { .. } => {
                debug!(bridge = %name, "the bridge's local client is connected");
            }
            _ => {}
        }
    }

    /// A message read here that an `out` or `both` entry matches: to the remote's queue. This
    /// broker has it acknowledged (`ack`) once it is queued there (on disk, with persistence).
    fn send_out(&mut self, message: Received, ack: Option<PendingAck>, ctx: &mut Context<Self>) {
        let (Some(topic), Some(remote)) = (self.map.to_remote(&message.topic), &self.remote) else {
            return self.acknowledge_local(ack);
        };
        if message.qos == QoS::AtMostOnce && !self.remote_up {
            // QoS 0 promises nothing: it is not queued while the link is down.
            self.status.link.add_dropped();
            return;
        }
        let enqueue = Enqueue {
            topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            properties: message.properties.map(Box::new),
            expiry: message.expiry,
        };
        remote
            .send(enqueue)
            .into_actor(self)
            .map(move |result, act, _| {
                if !matches!(result, Ok(Ok(_))) {
                    act.status.link.add_dropped();
                    warn!(bridge = %act.config.name, ?result, "a message for the remote was not queued");
                }
                act.acknowledge_local(ack);
            })
            .spawn(ctx);
    }

    fn acknowledge_local(&self, ack: Option<PendingAck>) {
        if let (Some(ack), Some(local)) = (ack, &self.local) {
            local.do_send(Acknowledge(ack));
        }
    }

    /// A message from the remote that an `in` or `both` entry matches: published here. The
    /// remote has it acknowledged (`ack`) once this broker has accepted it.
    fn take_in(&mut self, message: Received, ack: Option<PendingAck>, ctx: &mut Context<Self>) {
        let (Some(topic), Some(local)) = (self.map.to_local(&message.topic), &self.local) else {
            return self.acknowledge_remote(ack);
        };
        self.status.link.add_received();
        let limits = &self.environment.limits;
        if let Some(over) = super::over_local_limits(
            limits,
            &topic,
            message.payload.len(),
            message.properties.as_ref(),
        ) {
            self.status.link.add_dropped();
            warn!(bridge = %self.config.name, %topic, over, "a message from the remote, renamed for this broker, is over its limits; dropped");
            return self.acknowledge_remote(ack);
        }
        let enqueue = Enqueue {
            topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            properties: message.properties.map(Box::new),
            expiry: message.expiry,
        };
        local
            .send(enqueue)
            .into_actor(self)
            .map(move |result, act, _| match result {
                Ok(Ok(id)) => {
                    if let Some(ack) = ack {
                        act.incoming.insert(id, ack);
                    }
                }
                _ => {
                    act.status.link.add_dropped();
                    warn!(bridge = %act.config.name, "a message from the remote could not be published here");
                    act.acknowledge_remote(ack);
                }
            })
            .spawn(ctx);
    }

    /// The local side is done with message `id` (accepted, or dropped for good): the remote may
    /// forget it.
    fn acknowledge_in(&mut self, id: MessageId) {
        let ack = self.incoming.remove(&id);
        self.acknowledge_remote(ack);
    }

    fn acknowledge_remote(&self, ack: Option<PendingAck>) {
        if let (Some(ack), Some(remote)) = (ack, &self.remote) {
            remote.do_send(Acknowledge(ack));
        }
    }

    fn poll_queue(&mut self, ctx: &mut Context<Self>) {
        let Some(remote) = &self.remote else {
            return;
        };
        remote
            .send(PendingCount)
            .into_actor(self)
            .map(|count, act, _| {
                if let Ok(count) = count {
                    act.status.set_queued(count as u64);
                }
            })
            .spawn(ctx);
    }
}

/// An upper bound of the remaining length of an MQTT 5 PUBLISH of this topic, payload and
/// properties with a packet id (section 3.3): each property counted with its identifier and
/// length prefix, a Message Expiry Interval (5 bytes) whether or not there is one, the property
/// length with its longest encoding.
pub(crate) fn publish_size_bound(
    topic: &str,
    payload: usize,
    properties: Option<&switchboard_actors::MessageProperties>,
) -> usize {
    let properties = properties.map_or(0, |p| {
        let strings = [&p.content_type, &p.response_topic]
            .iter()
            .filter(|s| s.is_some())
            .count();
        let data = usize::from(p.correlation_data.is_some());
        2 + 3 * (strings + data) + 5 * p.user_properties.len() + p.size()
    });
    2 + topic.len() + 2 + 4 + 5 + properties + payload
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(dir) = &self.environment.queue_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                warn!(bridge = %self.config.name, dir = %dir.display(), error = %e, "cannot create the bridge queue directory; the queue is kept in memory");
                self.environment.queue_dir = None;
            }
        }
        let me = ctx.address();
        let local = self.connection(
            self.local_options(),
            Side::Local,
            me.clone(),
            self.map.local_subscriptions(),
        );
        let filters = |subscriptions: Vec<(String, QoS)>| -> BTreeSet<String> {
            subscriptions
                .into_iter()
                .map(|(filter, _)| filter)
                .collect()
        };
        self.ungranted = [
            filters(self.map.local_subscriptions()),
            filters(self.map.remote_subscriptions()),
        ];
        self.local_unanswered = self.ungranted[0].clone();
        self.tell_local_ready_if_answered();
        let remote = self.connection(
            self.remote_options(),
            Side::Remote,
            me,
            self.map.remote_subscriptions(),
        );
        self.local = Some(local);
        self.remote = Some(remote);
        info!(bridge = %self.config.name, address = %self.config.address_list(), protocol = ?self.config.protocol, client_id = %self.config.remote_client_id(), "bridge started");
        ctx.run_interval(QUEUE_POLL, |act, ctx| act.poll_queue(ctx));
    }
}

impl Handler<SideEvent> for Bridge {
    type Result = ();

    fn handle(&mut self, SideEvent(side, event): SideEvent, ctx: &mut Context<Self>) {
        if side == Side::Remote {
            match event {
                ConnectionEvent::Connected { .. } => self.remote_up = true,
                ConnectionEvent::Disconnected(_) => self.remote_up = false,
                _ => {}
            }
        }
        self.track_subscriptions(side, &event);
        match side {
            Side::Remote => self.on_remote(event, ctx),
            Side::Local => self.on_local(event, ctx),
        }
    }
}

impl Handler<StopBridge> for Bridge {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: StopBridge, _: &mut Context<Self>) -> Self::Result {
        let stop = Stop {
            deadline: Duration::from_millis(500),
        };
        // Ending the session first (while the local client is attached) makes its close final;
        // the stop that follows keeps the connection from coming back.
        let end_session = msg.end_local_session.then(|| {
            self.environment.registry.send(crate::registry::Kick {
                client_id: self.local_client_id(),
                remove_session: true,
            })
        });
        let remote = self.remote.take();
        let local = self.local.take();
        self.status.link.set_connected(false);
        Box::pin(
            async move {
                if let Some(ending) = end_session {
                    let _ = ending.await;
                }
                let undelivered = match remote {
                    Some(remote) => remote
                        .send(stop)
                        .await
                        .map(|r| r.undelivered.len())
                        .unwrap_or(0),
                    None => 0,
                };
                if let Some(local) = local {
                    let _ = local.send(stop).await;
                }
                undelivered
            }
            .into_actor(self)
            .map(|undelivered, act, ctx| {
                info!(bridge = %act.config.name, undelivered, kept_on_disk = act.environment.queue_dir.is_some(), "bridge stopped");
                ctx.stop();
            }),
        )
    }
}
