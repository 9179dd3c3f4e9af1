//! The Session actor: one per TCP connection. It owns the socket, the codec, keep-alive, the QoS
//! state of its client, and a bounded output buffer; it talks to the Registry only by messages.
//!
//! Lifecycle: `AwaitingConnect` -> `Connecting` (asking the interceptor, then the Registry) ->
//! `Connected` -> closing. A connected Session that closes sends [`Detach`], keeps collecting the
//! deliveries still on their way until [`Detached`](crate::registry::Detached), hands everything it holds back with
//! [`SessionEnded`], and stops.

mod acks;
mod closing;
mod connecting;
mod deadlines;
mod delivery_records;
mod durability;
mod from_registry;
mod hand_over;
mod inbound_qos2;
mod linger;
mod output;
mod output_pool;
mod packets;
mod peer;
mod read_access;
mod reader;
mod refusal_lines;
mod settlement;
mod socket;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, warn};

pub use linger::{ConnectionSlot, LINGER_BYTES, LINGER_TIME};
pub use state::{AckResult, Outbound};

use self::deadlines::{CompactInstant, NO_DEADLINE};
use self::peer::{OutboundAliases, PeerOptions};
use self::reader::{PacketReader, ReadEvent};
use self::socket::{SharedStream, Stream};
use crate::codec::{self, CodecError, MqttCodec, Packet};
use crate::config::Config;
use crate::drops::DropLog;
use crate::hooks::{DisconnectReason, Interceptors};
use crate::metrics::Metrics;
use crate::registry::{ClientKey, ConnId, Detach, Registry, SessionEnded};
use crate::routing::{Routes, Stored};

/// Most messages handed to the Registry in one [`Publish`](crate::registry::Publish); a burst
/// read from the socket is otherwise handed over at the end of the read turn.
const PUBLISH_BATCH: usize = 64;

pub use crate::registry::INTERNAL_CLIENT_PREFIX;

/// What every Session of one broker shares.
pub struct SessionShared {
    /// Broker configuration.
    pub config: Config,
    /// The Registry.
    pub registry: Addr<Registry>,
    /// The Registry, for deliveries to clients that are not connected.
    pub stored_to: Recipient<Stored>,
    /// The route table, read here to route what Sessions read.
    pub routes: Routes,
    /// Interceptors to consult.
    pub interceptors: Interceptors,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Authentication and authorisation.
    pub access: Arc<crate::auth::AccessControl>,
    /// Durable state (`[persistence]`), if configured.
    pub store: Option<crate::persistence::Store>,
    /// The lines about refused publishes and subscriptions, at most one a second for each kind
    /// over all Sessions: a client may send them as fast as it likes.
    refusal_lines: refusal_lines::RefusalLines,
    next_conn: AtomicU64,
}

impl SessionShared {
    /// Shared state for the Sessions of one broker.
    pub fn new(
        config: Config,
        registry: Addr<Registry>,
        routes: Routes,
        interceptors: Interceptors,
        metrics: Arc<Metrics>,
        access: Arc<crate::auth::AccessControl>,
        store: Option<crate::persistence::Store>,
    ) -> Self {
        SessionShared {
            config,
            stored_to: registry.clone().recipient(),
            registry,
            routes,
            interceptors,
            metrics,
            access,
            store,
            refusal_lines: refusal_lines::RefusalLines::new(),
            next_conn: AtomicU64::new(1),
        }
    }
}

/// How a Session's CONNECT is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// A client from the network: its user name and password, as `[auth]` says.
    Password,
    /// A TLS client under `tls.use_identity_as_username` ([`Session::start_certified`]): its
    /// certificate's Common Name, put in the Session's user name when it starts, is its user
    /// name; the CONNECT's user name and password are not looked at.
    Certificate,
    /// A broker-internal client ([`Session::start_internal`]): its CONNECT is trusted.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connecting,
    Connected { key: ClientKey, client_id: Arc<str> },
}

/// The Session actor. Created by the listener with [`Session::start`].
pub struct Session {
    conn: ConnId,
    peer: SocketAddr,
    shared: Arc<SessionShared>,
    phase: Phase,
    /// User name of the CONNECT, for ACL checks (with [`Trust::Certificate`], the certificate's
    /// Common Name, from the start).
    username: Option<Box<str>>,
    /// Protocol and MQTT 5 wishes of the client.
    peer_options: PeerOptions,
    /// Topic aliases assigned towards the client (MQTT 5).
    aliases: OutboundAliases,
    /// An MQTT 5 reason code and string for the DISCONNECT sent on close, overriding the one
    /// the close reason implies (boxed: rare, and every idle connection pays for its width).
    disconnect_code: Option<Box<(u8, String)>>,
    /// Messages dropped for this client and not yet reported in a warning (boxed: rare).
    drops: Option<Box<DropLog>>,
    /// Session Expiry Interval from the client's DISCONNECT (MQTT 5).
    disconnect_expiry: Option<u32>,
    /// The CONNACK said no session was present: every subscription was made on this connection.
    fresh_session: bool,
    /// A `$share/` subscription was made on this connection.
    shared_subscriber: bool,
    /// Each outgoing message is checked against the ACL's read rules (see `read_access`).
    read_checks: bool,
    /// This Session's copy of the ACL, and the generation it was taken at.
    acl: (u64, Option<Arc<crate::auth::AclFile>>),
    /// When the last packet was read (8 bytes where an `Instant` takes 16: every idle
    /// connection keeps one).
    last_received: CompactInstant,
    /// One and a half times the keep-alive applied, in milliseconds, once connected
    /// `[MQTT-3.1.2-24]` (0: not yet). See [`Session::keep_alive_limit`].
    keep_alive_limit_ms: u32,
    /// The tick of this Session's entry on its worker's deadline wheel, or [`NO_DEADLINE`].
    deadline_tick: u64,
    /// Bytes waiting to be written.
    out: BytesMut,
    /// The connection's stream, also held by the packet reader; taken back on close.
    stream: SharedStream,
    /// The stream again, for writing; `None` while a write is in progress.
    writer: Option<SharedStream>,
    /// This connection's count in `connections_current`, until the socket is closed.
    slot: Option<ConnectionSlot>,
    /// Size of the write in progress.
    writing: u32,
    /// The packet reader, cancelled on close.
    read_handle: SpawnHandle,
    outbound: Outbound,
    inbound_qos2: inbound_qos2::InboundQos2,
    /// Messages read and not yet routed.
    to_route: Vec<Arc<crate::message::Message>>,
    /// [`Publish`](crate::registry::Publish)es sent to the Registry and not yet answered
    /// [`Routed`](crate::registry::Routed), and SUBSCRIBEs and UNSUBSCRIBEs not yet answered
    /// [`Subscribed`](crate::registry::Subscribed) or
    /// [`Unsubscribed`](crate::registry::Unsubscribed): while there are any, bursts go there
    /// too, so that none overtakes them (a PUBLISH right behind a SUBSCRIBE reaches it).
    via_registry: u32,
    /// With persistence: acknowledgements waiting for what they acknowledge to be durable,
    /// and deliveries waiting for a store change.
    deferred_acks: Option<Box<durability::DeferredAcks>>,
    route_scheduled: bool,
    /// A write of the output is scheduled for the end of this turn ([`Session::flush_after_turn`]).
    write_scheduled: bool,
    /// How its CONNECT is authenticated.
    trust: Trust,
    closing: bool,
    awaiting_detached: bool,
    socket_dead: bool,
}

impl Session {
    /// Starts a Session for an accepted plain TCP socket, on the current arbiter.
    pub fn start(stream: TcpStream, peer: SocketAddr, shared: Arc<SessionShared>) -> Addr<Session> {
        Session::start_with(Stream::Tcp(stream), peer, shared)
    }

    /// Starts a Session for any byte stream (TLS, a WebSocket connection, or both) whose
    /// handshakes are done, on the current arbiter.
    pub fn start_stream<S>(stream: S, peer: SocketAddr, shared: Arc<SessionShared>) -> Addr<Session>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        Session::start_with(Stream::other(stream), peer, shared)
    }

    /// Starts the Session of a broker-internal client (the local side of a bridge) on an
    /// in-process stream, on the current arbiter. Its CONNECT is trusted: no password is asked
    /// for and `limits.max_connections` does not apply; it must use a client id that starts
    /// with [`INTERNAL_CLIENT_PREFIX`] (clients from the network may not). The connect
    /// interceptor, hooks and ACLs see it as any other client, under its user name.
    pub fn start_internal<S>(stream: S, shared: Arc<SessionShared>) -> Addr<Session>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        Session::start_as(Stream::other(stream), peer, shared, Trust::Internal, None)
    }

    /// Starts a Session for a TLS connection, or a WebSocket over TLS, whose handshakes are
    /// done, under `tls.use_identity_as_username`: `identity` is the Common Name of the client's
    /// certificate, its user name ([`crate::tls::certificate_identity`]); with `None` (a
    /// certificate without one) its CONNECT is refused as not authorised.
    pub fn start_certified<S>(
        stream: S,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        identity: Option<String>,
    ) -> Addr<Session>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let username = identity.map(Box::from);
        Session::start_as(
            Stream::other(stream),
            peer,
            shared,
            Trust::Certificate,
            username,
        )
    }

    /// Starts a Session for a plain TCP socket behind a proxy that terminated TLS, under
    /// `listener.use_identity_as_username`: `identity` is the Common Name of the client
    /// certificate the proxy verified, from its PROXY protocol header, and is the client's user
    /// name; with `None` its CONNECT is refused as not authorised.
    pub fn start_vouched(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        identity: Option<String>,
    ) -> Addr<Session> {
        let username = identity.map(Box::from);
        let stream = Stream::Tcp(stream);
        Session::start_as(stream, peer, shared, Trust::Certificate, username)
    }

    fn start_with(stream: Stream, peer: SocketAddr, shared: Arc<SessionShared>) -> Addr<Session> {
        Session::start_as(stream, peer, shared, Trust::Password, None)
    }

    fn start_as(
        stream: Stream,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        trust: Trust,
        username: Option<Box<str>>,
    ) -> Addr<Session> {
        let conn = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
        let max_packet = shared.config.limits.max_packet_size;
        let alias_max = shared.config.limits.topic_alias_maximum;
        let acl = (shared.access.acl_generation(), shared.access.acl());
        let (slot, open) = ConnectionSlot::open(&shared.metrics);
        debug!(addr = %peer, conn = conn.0, open, "connection accepted");
        let stream = SharedStream::new(stream);
        Session::create(move |ctx| {
            let packets = PacketReader::new(
                stream.clone(),
                MqttCodec::new(max_packet).with_topic_alias_maximum(alias_max),
                shared.metrics.clone(),
            );
            let read_handle = ctx.add_stream(packets);
            let durable_acks = shared.store.is_some();
            Session {
                conn,
                peer,
                outbound: Outbound::new(shared.config.sessions.max_inflight),
                shared,
                phase: Phase::AwaitingConnect,
                username,
                peer_options: PeerOptions::default(),
                aliases: OutboundAliases::default(),
                disconnect_code: None,
                drops: None,
                disconnect_expiry: None,
                fresh_session: false,
                shared_subscriber: false,
                read_checks: false,
                acl,
                last_received: CompactInstant::now(),
                keep_alive_limit_ms: 0,
                deadline_tick: NO_DEADLINE,
                out: BytesMut::new(),
                writer: Some(stream.clone()),
                stream,
                slot: Some(slot),
                writing: 0,
                read_handle,
                inbound_qos2: Default::default(),
                to_route: Vec::new(),
                via_registry: 0,
                deferred_acks: durable_acks.then(Box::default),
                route_scheduled: false,
                write_scheduled: false,
                trust,
                closing: false,
                awaiting_detached: false,
                socket_dead: false,
            }
        })
    }

    fn client_id(&self) -> &str {
        match &self.phase {
            Phase::Connected { client_id, .. } => client_id,
            _ => "",
        }
    }

    fn protocol_error(&mut self, ctx: &mut Context<Self>, error: &CodecError) {
        self.shared.metrics.add_protocol_errors(1);
        self.disconnect_code = Some(Box::new((error.reason_code(), error.to_string())));
        warn!(
            addr = %self.peer,
            client_id = %self.client_id(),
            error = %error,
            "closing connection: bad input"
        );
        self.close(ctx, DisconnectReason::ProtocolError(error.to_string()));
    }

    /// Writes an MQTT 5 SUBACK (0x90) or UNSUBACK (0xB0), with a reason string naming the
    /// filters whose code is `failure_from` or above, if the client wants problem information
    /// `[MQTT-3.1.2-29]`.
    fn write_v5_ack(&mut self, byte1: u8, pid: u16, codes: &[u8], failure_from: u8) {
        let why = self
            .peer_options
            .problem_information
            .then(|| codec::ack_reason_string(codes, failure_from))
            .flatten();
        codec::write_sub_unsub_ack_v5(
            &mut self.out,
            byte1,
            pid,
            codes,
            why.as_deref(),
            self.peer_options.max_packet_size,
        );
    }

    /// Brings the Session's copy of the ACL up to date; it changes only when a reload replaced
    /// the ACL. Read it as `self.acl.1` afterwards (borrowed: no shared refcount per packet).
    fn refresh_acl(&mut self) {
        let generation = self.shared.access.acl_generation();
        if generation != self.acl.0 {
            self.acl = (generation, self.shared.access.acl());
            // Subscriptions judged under the ACL before are judged again per message.
            self.read_checks = true;
        }
        if self.trust == Trust::Internal && crate::registry::exempt_from_acl(self.client_id()) {
            self.acl.1 = None;
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A socket that never sends CONNECT is closed after the deadline.
        let deadline = Instant::now() + self.shared.config.limits.connect_timeout;
        self.arm_deadline(ctx, deadline);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.disarm_deadline();
        let held = self.outbound.uncount_held();
        self.shared.metrics.traffic.held_changed(held);
        if let Phase::Connected { client_id, .. } = &self.phase {
            DropLog::flush(&mut self.drops, client_id);
        }
        // Stopped without the detach handshake (the arbiter is shutting down): tell the Registry
        // anyway, so it does not keep routing to a dead Session.
        if let Phase::Connected { key, .. } = self.phase {
            if !self.closing {
                self.shared.registry.do_send(Detach {
                    key,
                    conn: self.conn,
                    reason: DisconnectReason::Network("session stopped".into()),
                    session_expiry: None,
                    ends_session: false,
                });
            }
            if self.closing && !self.awaiting_detached {
                return;
            }
            let state = self.state_for_registry();
            self.shared.registry.do_send(SessionEnded {
                key,
                conn: self.conn,
                state,
            });
        }
    }
}

impl StreamHandler<ReadEvent> for Session {
    fn handle(&mut self, event: ReadEvent, ctx: &mut Context<Self>) {
        let item = match event {
            ReadEvent::Packet(item) => item,
            ReadEvent::TurnEnd => return self.end_turn(ctx),
        };
        if self.closing {
            return;
        }
        self.last_received = reader::packet_read_at();
        match item {
            Ok(packet) => {
                let publish_qos = match &packet {
                    Packet::Publish(publish) => Some(publish.message.qos as u8),
                    _ => None,
                };
                self.shared.metrics.traffic.packet_received(publish_qos);
                self.on_packet(packet, ctx)
            }
            Err(CodecError::Io(e)) => {
                self.socket_dead = true;
                self.close(ctx, DisconnectReason::Network(e.to_string()));
            }
            Err(e) => {
                if self.phase == Phase::AwaitingConnect {
                    self.refuse_bad_connect(&e);
                }
                self.protocol_error(ctx, &e);
            }
        }
        self.flush_after_turn(ctx);
        // The reader has just turned busy: a turn end asked of it may not come for a while.
        if self.stream.reader_busy() && self.stream.take_turn_end() {
            self.schedule_turn_end(ctx);
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.close(
            ctx,
            DisconnectReason::Network("connection closed by peer".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokio allocates a Session's task (actix's context around the Session) in 128-byte steps:
    /// at 328 bytes the task takes 768, at 329 it takes 896, and every idle connection pays
    /// for it. A field that pushes the Session over belongs in a box allocated when first used.
    #[test]
    fn the_session_fits_its_task_in_768_bytes() {
        let size = std::mem::size_of::<Session>();
        assert!(
            size <= 328,
            "Session is {size} bytes; its task would take 896"
        );
    }
}
