//! The managed connection actor: one MQTT 3.1.1 or MQTT 5 client connection that reconnects
//! forever with backoff and jitter, re-subscribes when the broker lost the session, queues
//! publishes in a bounded (optionally durable) queue, and pipelines QoS 1/2 with an inflight
//! window.

mod back_to_first;
mod brokers;
mod from_broker;
mod messages;
mod outgoing;
mod requests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use mqttbytes::v4;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

pub use messages::*;

use brokers::{AfterFailure, BrokerRotation};

use switchboard_mqtt::codec::{write_ack, Ack};
use switchboard_mqtt::QoS;

use crate::codec::{
    subscription_options, to_mqttbytes, write_connect_v5, write_publish_of, write_subscribe_v5,
    ClientCodec, ClientCodecError, Connect5, Incoming,
};
use crate::durable::DurableLog;
use crate::events::{ConnectFailure, ConnectionEvent, DropReason, LinkDown, MessageId};
use crate::options::{BrokerAddress, ConnectionOptions};
use crate::queue::{Outgoing, PendingQueue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Connecting,
    AwaitingConnAck { since: Instant },
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The acknowledgement an inflight QoS 1/2 message waits for.
enum Awaiting {
    /// PUBACK (QoS 1).
    Ack,
    /// PUBREC (QoS 2).
    Rec,
    /// PUBCOMP (QoS 2, after our PUBREL).
    Comp,
}

#[derive(Debug)]
struct Inflight {
    pid: u16,
    message: Outgoing,
    stage: Awaiting,
}

/// A packet from the current socket, or its end (`None`), tagged with the link generation so
/// that anything from an older socket is ignored.
struct LinkItem(u64, Option<Result<Incoming, ClientCodecError>>);

impl Message for LinkItem {
    type Result = ();
}

/// The managed connection actor. Start it with [`ManagedConnection::start_with`]; talk to it with
/// [`Enqueue`], [`Subscribe`], [`PendingCount`], [`Stop`]; hear from it with [`AddListener`].
pub struct ManagedConnection {
    options: ConnectionOptions,
    /// The brokers it may connect to, and which one it tries.
    brokers: BrokerRotation,
    /// The broker of the attempt under way, or of the link up.
    attempt_broker: BrokerAddress,
    /// When to look whether the first broker answers again (`return_to_first`).
    next_look_at_first: Option<Instant>,
    generation: u64,
    link: Link,
    read_handle: Option<SpawnHandle>,
    writer: Option<Box<dyn AsyncWrite + Unpin>>,
    out: BytesMut,
    queue: PendingQueue,
    inflight: VecDeque<Inflight>,
    last_pid: u16,
    next_id: MessageId,
    subscriptions: BTreeMap<String, SubscriptionState>,
    awaiting_suback: HashMap<u16, Vec<String>>,
    inbound_qos2: HashSet<u16>,
    listeners: Vec<Recipient<ConnectionEvent>>,
    attempt: u32,
    /// Session-present flag of the last CONNACK (told to listeners that join later).
    session_present: bool,
    last_sent: Instant,
    last_received: Instant,
    durable: Option<DurableLog>,
    stopping: Option<oneshot::Sender<StopReport>>,
    /// (5.0) The Maximum Packet Size of the last CONNACK.
    server_max_packet: Option<usize>,
}

impl ManagedConnection {
    /// A connection with these options (not started).
    pub fn new(options: ConnectionOptions) -> Self {
        let queue = PendingQueue::new(options.queue_capacity, options.overflow);
        ManagedConnection {
            brokers: BrokerRotation::new(&options),
            attempt_broker: BrokerAddress::new(options.host.clone(), options.port),
            next_look_at_first: None,
            options,
            generation: 0,
            link: Link::Down,
            read_handle: None,
            writer: None,
            out: BytesMut::new(),
            queue,
            inflight: VecDeque::new(),
            last_pid: 0,
            next_id: 1,
            subscriptions: BTreeMap::new(),
            awaiting_suback: HashMap::new(),
            inbound_qos2: HashSet::new(),
            listeners: Vec::new(),
            attempt: 0,
            session_present: false,
            last_sent: Instant::now(),
            last_received: Instant::now(),
            durable: None,
            stopping: None,
            server_max_packet: None,
        }
    }

    /// Starts a connection with these options and listeners already registered (so they see the
    /// first `Connected`).
    pub fn start_with(
        options: ConnectionOptions,
        listeners: Vec<Recipient<ConnectionEvent>>,
    ) -> Addr<ManagedConnection> {
        let mut connection = ManagedConnection::new(options);
        connection.listeners = listeners;
        connection.start()
    }

    fn emit(&self, event: ConnectionEvent) {
        for listener in &self.listeners {
            listener.do_send(event.clone());
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.link != Link::Down || self.stopping.is_some() {
            return;
        }
        self.link = Link::Connecting;
        self.generation += 1;
        let generation = self.generation;
        self.attempt_broker = self.brokers.current().clone();
        let open = crate::transport::open(
            self.options.transport.clone(),
            self.attempt_broker.host.clone(),
            self.attempt_broker.port,
        );
        let connect = tokio::time::timeout(self.options.connect_timeout, open);
        ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation {
                return;
            }
            match result {
                Ok(Ok((read, write))) => act.attach(read, write, ctx),
                Ok(Err(e)) => act.connect_failed(ctx, ConnectFailure::Network(e.to_string())),
                Err(_) => act.connect_failed(ctx, ConnectFailure::Timeout),
            }
        }));
    }

    fn attach(
        &mut self,
        read: Box<dyn AsyncRead + Unpin>,
        write: Box<dyn AsyncWrite + Unpin>,
        ctx: &mut Context<Self>,
    ) {
        let generation = self.generation;
        let protocol = self.options.protocol;
        let frames = FramedRead::new(
            read,
            ClientCodec::new(self.options.max_packet_size, protocol),
        );
        let items = futures_util::StreamExt::chain(
            futures_util::StreamExt::map(frames, move |item| LinkItem(generation, Some(item))),
            futures_util::stream::once(async move { LinkItem(generation, None) }),
        );
        self.read_handle = Some(ctx.add_stream(items));
        self.writer = Some(write);
        self.out.clear();
        let keep_alive = self.options.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
        if protocol.is_v5() {
            let options = &self.options;
            write_connect_v5(
                &mut self.out,
                &Connect5 {
                    client_id: &options.client_id,
                    keep_alive,
                    clean_start: options.clean_session,
                    session_expiry: if options.clean_session { 0 } else { u32::MAX },
                    maximum_packet_size: u32::try_from(options.max_packet_size).unwrap_or(u32::MAX),
                    credentials: options
                        .credentials
                        .as_ref()
                        .map(|(u, p)| (u.as_str(), p.as_str())),
                    will: options
                        .will
                        .as_ref()
                        .map(|w| (w.topic.as_str(), &w.payload[..], w.qos, w.retain)),
                },
            );
            self.link = Link::AwaitingConnAck {
                since: Instant::now(),
            };
            return self.flush(ctx);
        }
        let mut connect = v4::Connect::new(self.options.client_id.clone());
        connect.keep_alive = keep_alive;
        connect.clean_session = self.options.clean_session;
        if let Some((user, password)) = &self.options.credentials {
            connect.set_login(user.clone(), password.clone());
        }
        connect.last_will = self.options.will.as_ref().map(|w| {
            v4::LastWill::new(
                w.topic.clone(),
                w.payload.clone(),
                to_mqttbytes(w.qos),
                w.retain,
            )
        });
        if let Err(e) = connect.write(&mut self.out) {
            warn!(error = ?e, "cannot encode CONNECT");
            return self.drop_link(ctx, None, Some(ConnectFailure::Network(format!("{e:?}"))));
        }
        if self.options.bridge {
            crate::codec::set_bridge_bit(&mut self.out);
        }
        self.link = Link::AwaitingConnAck {
            since: Instant::now(),
        };
        self.flush(ctx);
    }

    /// An attempt failed: the next of the brokers at once (or the one the broker sent the
    /// connection to), or after the backoff when every one of them failed in this round.
    fn connect_failed(&mut self, ctx: &mut Context<Self>, failure: ConnectFailure) {
        self.link = Link::Down;
        let broker = self.attempt_broker.clone();
        let retry_in = if self.brokers.take_redirected() {
            Duration::ZERO
        } else {
            match self.brokers.failed() {
                AfterFailure::TryNext => Duration::ZERO,
                AfterFailure::BackOff => {
                    let delay = self.options.backoff.delay(self.attempt);
                    self.attempt = self.attempt.saturating_add(1);
                    delay
                }
            }
        };
        debug!(client_id = %self.options.client_id, %broker, ?failure, ?retry_in, next = %self.brokers.current(), "connect failed");
        self.emit(ConnectionEvent::ConnectFailed {
            failure,
            retry_in,
            broker,
        });
        self.schedule_reconnect(ctx, retry_in);
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        if self.stopping.is_some() {
            return;
        }
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    /// Tears the socket down. With `down` the link was up (a Disconnected event); with `failed`
    /// it was still connecting (a ConnectFailed event).
    fn drop_link(
        &mut self,
        ctx: &mut Context<Self>,
        down: Option<LinkDown>,
        failed: Option<ConnectFailure>,
    ) {
        if let Some(handle) = self.read_handle.take() {
            ctx.cancel_future(handle);
        }
        self.writer = None;
        self.out.clear();
        self.generation += 1;
        self.awaiting_suback.clear();
        self.link = Link::Down;
        if let Some(failure) = failed {
            return self.connect_failed(ctx, failure);
        }
        if let Some(reason) = down {
            info!(client_id = %self.options.client_id, broker = %self.attempt_broker, ?reason, "disconnected from the broker");
            self.emit(ConnectionEvent::Disconnected(reason));
            let retry_in = if self.brokers.take_redirected() {
                Duration::ZERO
            } else {
                let delay = self.options.backoff.delay(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                delay
            };
            self.schedule_reconnect(ctx, retry_in);
        }
    }

    fn link_lost(&mut self, ctx: &mut Context<Self>, reason: LinkDown) {
        match self.link {
            Link::Up => self.drop_link(ctx, Some(reason), None),
            Link::AwaitingConnAck { .. } | Link::Connecting => {
                let failure = match reason {
                    LinkDown::KeepAliveTimeout => ConnectFailure::Timeout,
                    LinkDown::Network(e) | LinkDown::Protocol(e) => ConnectFailure::Network(e),
                    LinkDown::DisconnectedByBroker(code) => ConnectFailure::Refused(code),
                    LinkDown::Stopped => ConnectFailure::Network("stopped".into()),
                    LinkDown::BackToFirstBroker => ConnectFailure::Network("moved".into()),
                };
                self.drop_link(ctx, None, Some(failure))
            }
            Link::Down => {}
        }
    }

    fn on_connected(&mut self, ctx: &mut Context<Self>, session_present: bool) {
        self.link = Link::Up;
        self.attempt = 0;
        self.brokers.reached();
        self.plan_return_to_first();
        let broker = self.attempt_broker.clone();
        info!(client_id = %self.options.client_id, %broker, session_present, "connected to the broker");
        self.emit(ConnectionEvent::Connected {
            session_present,
            broker,
        });
        self.session_present = session_present;
        // Without a session the broker has none of our subscriptions: send them all again. With
        // one, send only those never acknowledged (the link may have dropped before the SUBACK).
        if !session_present {
            for state in self.subscriptions.values_mut() {
                state.granted = None;
            }
        }
        let unacknowledged: Vec<(String, QoS)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.granted.is_none())
            .map(|(f, s)| (f.clone(), s.requested))
            .collect();
        self.send_subscribe(unacknowledged);
        // Unacknowledged messages go again, in order, with DUP [MQTT-4.4.0-1].
        let mut out = std::mem::take(&mut self.out);
        for entry in &self.inflight {
            match entry.stage {
                Awaiting::Comp => write_ack(&mut out, Ack::PubRel, entry.pid),
                _ => write_publish_of(
                    &mut out,
                    self.options.protocol,
                    &entry.message,
                    entry.pid,
                    true,
                ),
            }
        }
        self.out = out;
        self.pump();
        self.flush(ctx);
    }

    fn send_subscribe(&mut self, filters: Vec<(String, QoS)>) {
        if self.link != Link::Up || filters.is_empty() {
            return;
        }
        let pid = self.allocate_pid();
        if self.options.protocol.is_v5() {
            let options = subscription_options(self.options.bridge, self.options.skip_retained);
            write_subscribe_v5(&mut self.out, pid, &filters, options);
            self.awaiting_suback
                .insert(pid, filters.into_iter().map(|(f, _)| f).collect());
            return;
        }
        let subscribe = v4::Subscribe::new_many(
            filters
                .iter()
                .map(|(f, q)| v4::SubscribeFilter::new(f.clone(), to_mqttbytes(*q))),
        );
        let subscribe = v4::Subscribe {
            pkid: pid,
            ..subscribe
        };
        match subscribe.write(&mut self.out) {
            Ok(_) => {
                self.awaiting_suback
                    .insert(pid, filters.into_iter().map(|(f, _)| f).collect());
            }
            Err(e) => warn!(error = ?e, "cannot encode SUBSCRIBE"),
        }
    }

    fn allocate_pid(&mut self) -> u16 {
        loop {
            self.last_pid = self.last_pid.wrapping_add(1);
            let pid = self.last_pid;
            if pid != 0
                && !self.inflight.iter().any(|e| e.pid == pid)
                && !self.awaiting_suback.contains_key(&pid)
            {
                return pid;
            }
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.out.is_empty() {
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let buf = self.out.split().freeze();
        let generation = self.generation;
        self.last_sent = Instant::now();
        let write = async move {
            let result = writer.write_all(&buf).await;
            (writer, result)
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |(writer, result), act, ctx| {
                    if act.generation != generation {
                        return; // the link was replaced meanwhile: this socket is done
                    }
                    match result {
                        Ok(()) => {
                            act.writer = Some(writer);
                            act.flush(ctx);
                            act.check_stop(ctx);
                        }
                        Err(e) => act.link_lost(ctx, LinkDown::Network(e.to_string())),
                    }
                }),
        );
    }

    fn keep_alive_tick(&mut self, ctx: &mut Context<Self>) {
        let keep_alive = self.options.keep_alive;
        match self.link {
            Link::Up if !keep_alive.is_zero() => {
                if self.last_received.elapsed() > keep_alive.mul_f32(1.5) {
                    return self.link_lost(ctx, LinkDown::KeepAliveTimeout);
                }
                if self.last_sent.elapsed() >= keep_alive && self.writer.is_some() {
                    self.out.extend_from_slice(&[0xC0, 0x00]);
                    self.flush(ctx);
                }
                self.look_at_first_if_due(ctx);
            }
            Link::Up => self.look_at_first_if_due(ctx),
            Link::AwaitingConnAck { since } if since.elapsed() > self.options.connect_timeout => {
                self.drop_link(ctx, None, Some(ConnectFailure::Timeout));
            }
            _ => {}
        }
    }

    fn pending(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Finishes a requested stop once everything is delivered (the deadline calls it regardless).
    fn check_stop(&mut self, ctx: &mut Context<Self>) {
        if self.stopping.is_some() && self.pending() == 0 {
            self.finish_stop(ctx);
        }
    }

    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        let Some(reply) = self.stopping.take() else {
            return;
        };
        let mut undelivered: Vec<MessageId> = self.inflight.iter().map(|e| e.message.id).collect();
        undelivered.extend(self.queue.drain().map(|m| m.id));
        if self.durable.is_none() {
            for &id in &undelivered {
                self.emit(ConnectionEvent::MessageDropped(id, DropReason::Stopped));
            }
        }
        if self.link == Link::Up {
            if let Some(mut writer) = self.writer.take() {
                // DISCONNECT, so the broker discards the will [MQTT-3.14.4-3].
                let mut last = std::mem::take(&mut self.out);
                last.extend_from_slice(&[0xE0, 0x00]);
                actix_rt::spawn(async move {
                    let _ = writer.write_all(&last).await;
                    let _ = writer.shutdown().await;
                });
            }
            self.emit(ConnectionEvent::Disconnected(LinkDown::Stopped));
        }
        info!(client_id = %self.options.client_id, undelivered = undelivered.len(), "managed connection stopped");
        let _ = reply.send(StopReport { undelivered });
        ctx.stop();
    }
}

impl Actor for ManagedConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(path) = self.options.durable_queue.clone() {
            match DurableLog::open(&path) {
                Ok((log, restored)) => {
                    if !restored.is_empty() {
                        info!(count = restored.len(), path = %path.display(), "restored pending messages");
                    }
                    for message in restored {
                        self.next_id = self.next_id.max(message.id + 1);
                        self.queue.push_restored(message);
                    }
                    self.durable = Some(log);
                }
                Err(e) => {
                    warn!(error = %e, path = %path.display(), "cannot open the durable queue; continuing without it")
                }
            }
        }
        let tick = (self.options.keep_alive / 4)
            .min(self.options.connect_timeout / 4)
            .max(Duration::from_millis(50));
        ctx.run_interval(tick, |act, ctx| act.keep_alive_tick(ctx));
        self.connect(ctx);
    }
}

impl StreamHandler<LinkItem> for ManagedConnection {
    fn handle(&mut self, item: LinkItem, ctx: &mut Context<Self>) {
        let LinkItem(generation, item) = item;
        if generation != self.generation {
            return;
        }
        self.last_received = Instant::now();
        match item {
            Some(Ok(packet)) => self.on_packet(ctx, packet),
            Some(Err(e)) => self.link_lost(ctx, LinkDown::Protocol(e.to_string())),
            None => self.link_lost(
                ctx,
                LinkDown::Network("connection closed by the broker".into()),
            ),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Each socket's stream ends with its own `None` item; the actor lives on to reconnect.
    }
}
