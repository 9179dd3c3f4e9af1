//! Shared test helpers: a broker on a background thread bound to port 0, a raw-bytes MQTT client
//! (for what a real client would refuse to send, and for exact flag checks), a rumqttc wrapper,
//! and a hook probe actor. Every wait has a timeout; nothing sleeps to synchronise.
#![allow(dead_code)]

pub mod bridge;
pub mod child;
pub mod cluster;
pub mod durable;
pub mod faults;
pub mod forward;
pub mod haproxy;
pub mod http;
mod interop;
pub mod metrics;
pub mod mosquitto;
pub mod nats;
pub mod packets;
pub mod passwords;
pub mod pki;
pub mod rng;
pub mod tls;
pub mod v5;
pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Buf, BytesMut};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions};
use switchboard::hooks::{
    ClientConnected, ClientDisconnected, ClientSubscribed, ClientUnsubscribed, LifecycleHooks,
};
use switchboard::{BackgroundBroker, Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub use interop::*;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// Re-checks `condition` (yielding in between) until it holds; panics after [`WAIT`]. For state
/// that has no event of its own, such as counters.
pub async fn eventually<F, Fut>(condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(WAIT, condition).await;
}

/// [`eventually`] with a bound of its own, for state that takes longer to come (a reconnect
/// after a backoff).
pub async fn eventually_within<F, Fut>(within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident set size of this process in bytes (0 where /proc is not readable).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// An ACL for a shared group of jobs: `worker` may read every job, `intern` only the public ones
/// (`jobs/public/#`), `boss` publishes them. User `boss` comes last, so a test can grant it more
/// by appending `topic` lines.
pub const SHARED_JOBS_ACL: &str = "
user worker
topic read jobs/#
user intern
topic read jobs/public/#
user boss
topic write jobs/#
";

/// A test configuration: loopback, port 0, one worker.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listener.port = 0;
    config.listener.workers = 1;
    config.http.port = 0;
    config
}

/// A broker with the test configuration.
pub fn broker() -> BackgroundBroker {
    BackgroundBroker::start(test_config()).expect("broker starts")
}

/// A broker with an adjusted test configuration.
pub fn broker_with(adjust: impl FnOnce(&mut Config)) -> BackgroundBroker {
    let mut config = test_config();
    adjust(&mut config);
    BackgroundBroker::start(config).expect("broker starts")
}

/// Sends a CONNECT (client id `burst-N`) on each of `sockets` in turn; returns how many got an
/// answer (the others were closed: refused before their Session started).
pub async fn connects_accepted(sockets: &mut [Raw]) -> u64 {
    let mut accepted = 0;
    for (n, raw) in sockets.iter_mut().enumerate() {
        raw.send(&packets::connect(&format!("burst-{n}"), true, 60))
            .await;
        if raw.recv().await.is_some() {
            accepted += 1;
        }
    }
    accepted
}

/// A broker with a TLS listener on a free port serving `pki`'s server certificate, asking
/// clients for a certificate signed by its CA if `require_client_cert`.
pub fn tls_broker(pki: &pki::Pki, require_client_cert: bool) -> BackgroundBroker {
    broker_with(|c| {
        c.tls.port = Some(0);
        pki.serve(&mut c.tls, require_client_cert);
    })
}

/// A lifecycle event as seen by [`HookProbe`].
#[derive(Debug, Clone)]
pub enum HookEvent {
    Connected(ClientConnected),
    Disconnected(ClientDisconnected),
    Subscribed(ClientSubscribed),
    Unsubscribed(ClientUnsubscribed),
}

/// An actor that forwards every lifecycle event into a channel.
pub struct HookProbe(pub mpsc::UnboundedSender<HookEvent>);

impl Actor for HookProbe {
    type Context = Context<Self>;
}

macro_rules! forward {
    ($msg:ty, $variant:ident) => {
        impl Handler<$msg> for HookProbe {
            type Result = ();
            fn handle(&mut self, msg: $msg, _: &mut Context<Self>) {
                let _ = self.0.send(HookEvent::$variant(msg));
            }
        }
    };
}
forward!(ClientConnected, Connected);
forward!(ClientDisconnected, Disconnected);
forward!(ClientSubscribed, Subscribed);
forward!(ClientUnsubscribed, Unsubscribed);

/// Receiving end of a [`HookProbe`].
pub struct Hooks(pub mpsc::UnboundedReceiver<HookEvent>);

impl Hooks {
    /// The next event, or panic after [`WAIT`].
    pub async fn next(&mut self) -> HookEvent {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("hook event within the timeout")
            .expect("hook channel open")
    }

    /// Skips events until `pick` returns `Some`.
    pub async fn find<T>(&mut self, mut pick: impl FnMut(&HookEvent) -> Option<T>) -> T {
        loop {
            let event = self.next().await;
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    /// Waits for `client_id` to be subscribed to `filter`.
    pub async fn subscribed(&mut self, client_id: &str, filter: &str) {
        self.find(|e| match e {
            HookEvent::Subscribed(s) if &*s.client_id == client_id && s.filter == filter => {
                Some(())
            }
            _ => None,
        })
        .await
    }

    /// Waits for `client_id` to disconnect and returns the event.
    pub async fn disconnected(&mut self, client_id: &str) -> ClientDisconnected {
        self.find(|e| match e {
            HookEvent::Disconnected(d) if &*d.client_id == client_id => Some(d.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `client_id` to connect and returns the event.
    pub async fn connected(&mut self, client_id: &str) -> ClientConnected {
        self.find(|e| match e {
            HookEvent::Connected(c) if &*c.client_id == client_id => Some(c.clone()),
            _ => None,
        })
        .await
    }
}

/// A broker with a hook probe installed, plus `configure` for more.
pub fn broker_with_hooks_and(
    adjust: impl FnOnce(&mut Config),
    configure: impl FnOnce(Broker) -> Broker + Send + 'static,
) -> (BackgroundBroker, Hooks) {
    let mut config = test_config();
    adjust(&mut config);
    let (tx, rx) = mpsc::unbounded_channel();
    let broker = BackgroundBroker::start_with(config, move |broker| {
        let probe = HookProbe(tx).start();
        configure(broker.hooks(LifecycleHooks::all(&probe)))
    })
    .expect("broker starts");
    (broker, Hooks(rx))
}

/// A broker with a hook probe installed.
pub fn broker_with_hooks(adjust: impl FnOnce(&mut Config)) -> (BackgroundBroker, Hooks) {
    broker_with_hooks_and(adjust, |b| b)
}

/// One packet read off the wire by [`Raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub byte1: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// Bytes the frame took on the wire: its first byte, its Remaining Length and its body.
    pub fn wire_len(&self) -> u64 {
        let length_bytes = switchboard::codec::properties::var_int_len(self.body.len());
        (1 + length_bytes + self.body.len()) as u64
    }

    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    /// The packet id of an acknowledgement.
    pub fn pid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

/// A raw MQTT client over a plain TCP socket.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects from the loopback address `source` (127.0.0.2, ...: each a client address of
    /// its own to the broker).
    pub async fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source address");
        Raw {
            stream: socket.connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connects, sends the CONNECT described by `spec`, and returns the connection with the
    /// CONNACK return code.
    pub async fn connect_with(addr: SocketAddr, spec: packets::ConnectSpec<'_>) -> (Raw, u8) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&spec.encode()).await;
        let connack = raw.expect().await;
        assert_eq!(connack.byte1, 0x20, "CONNACK expected");
        (raw, connack.body[1])
    }

    /// Connects as `user` (no password) with client id `id`, clean or resuming its session,
    /// asserting CONNACK 0.
    pub async fn connect_as(addr: SocketAddr, id: &str, user: &str, clean: bool) -> Raw {
        let spec = packets::ConnectSpec {
            client_id: id,
            username: Some(user),
            clean,
            ..Default::default()
        };
        let (raw, code) = Raw::connect_with(addr, spec).await;
        assert_eq!(code, 0, "{id} connects as {user}");
        raw
    }

    /// Connects and completes a CONNECT/CONNACK handshake, asserting CONNACK 0.
    pub async fn handshake(addr: SocketAddr, client_id: &str, clean: bool) -> (Raw, bool) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&packets::connect(client_id, clean, 60)).await;
        let connack = raw.expect().await;
        assert_eq!(connack.byte1, 0x20, "CONNACK expected");
        assert_eq!(connack.body[1], 0, "CONNACK return code 0");
        (raw, connack.body[0] == 1)
    }

    /// Leaves a persistent session for `client_id` at `addr`, subscribed to `filter` at QoS 1 and
    /// offline: what matches is queued for it.
    pub async fn leave_subscribed(addr: SocketAddr, client_id: &str, filter: &str) {
        let (mut raw, _) = Raw::handshake(addr, client_id, false).await;
        raw.subscribe(1, &[(filter, 1)], &[1]).await;
        raw.send(&[0xE0, 0x00]).await;
        raw.expect_closed().await;
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet; `None` when the broker closed the connection. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or EOF within the timeout")
    }

    /// [`Raw::recv`], panicking after `within` instead of [`WAIT`].
    pub async fn recv_within(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, self.recv_inner())
            .await
            .expect("a packet or EOF within the timeout")
    }

    async fn recv_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn parse(&mut self) -> Option<Frame> {
        let (frame, used) = packets::split_frame(&self.buf)?;
        self.buf.advance(used);
        Some(frame)
    }

    /// The next packet; panics if the connection closed.
    pub async fn expect(&mut self) -> Frame {
        self.recv()
            .await
            .expect("a packet, not a closed connection")
    }

    /// Asserts the broker closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(frame) = self.recv().await {
            panic!("expected the connection to close, got {frame:?}");
        }
    }

    /// A barrier through the Registry: sends an UNSUBSCRIBE (of a filter nobody holds) and returns
    /// every packet received before its UNSUBACK. Everything this client published before has
    /// been routed by then, and everything routed to it before has arrived.
    pub async fn sync(&mut self) -> Vec<Frame> {
        self.send(&packets::unsubscribe(0xFFFF, &["test/sync/barrier"]))
            .await;
        let mut before = Vec::new();
        loop {
            let frame = self.expect().await;
            if frame.byte1 == 0xB0 && frame.pid() == 0xFFFF {
                return before;
            }
            before.push(frame);
        }
    }

    /// [`Raw::sync`], each packet as (first byte, packet id): for a client that only gets
    /// acknowledgements before the barrier.
    pub async fn sync_acks(&mut self) -> Vec<(u8, u16)> {
        let frames = self.sync().await;
        frames.iter().map(|f| (f.byte1, f.pid())).collect()
    }

    /// Receives everything the broker has for this client, acknowledging each QoS 1 PUBLISH as
    /// it comes (PUBACK), until a barrier through the Registry ([`Raw::sync`]) brings nothing
    /// more; returns the PUBLISH packets in the order they came.
    pub async fn drain_acking(&mut self) -> Vec<packets::Published> {
        let mut got = Vec::new();
        loop {
            let frames = self.sync().await;
            if frames.is_empty() {
                return got;
            }
            for frame in frames {
                let publish = packets::parse_publish(&frame);
                if publish.qos == 1 {
                    self.send(&packets::ack(0x40, publish.pid)).await;
                }
                got.push(publish);
            }
        }
    }

    /// [`Raw::drain_acking`], the payloads alone.
    pub async fn drain_payloads(&mut self) -> Vec<Vec<u8>> {
        let got = self.drain_acking().await;
        got.into_iter().map(|p| p.payload).collect()
    }

    /// Sends QoS 1 PUBLISH packets to `topic`, one per `(n, size)`: a payload of `size` bytes
    /// whose first byte is `n`, packet identifier `n + 1`.
    pub async fn publish_numbered(
        &mut self,
        topic: &str,
        messages: impl IntoIterator<Item = (u8, usize)>,
    ) {
        for (n, size) in messages {
            let mut payload = vec![0u8; size.max(1)];
            payload[0] = n;
            self.send(&packets::publish(
                topic,
                &payload,
                1,
                u16::from(n) + 1,
                false,
                false,
            ))
            .await;
        }
    }

    /// Publishes `payload` to `topic` at QoS 1 with packet identifier `pid` (retained if
    /// `retain`) and asserts the next packet is its PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: &[u8], pid: u16, retain: bool) {
        self.send(&packets::publish(topic, payload, 1, pid, retain, false))
            .await;
        let puback = self.expect().await;
        assert_eq!(puback.byte1, 0x40, "PUBACK expected, got {puback:?}");
        assert_eq!(puback.pid(), pid);
    }

    /// Sends PINGREQ and asserts the next packet is PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0x00]).await;
        assert_eq!(
            self.expect().await,
            Frame {
                byte1: 0xD0,
                body: vec![]
            }
        );
    }

    /// Subscribes and asserts the SUBACK return codes.
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)], expected_codes: &[u8]) {
        self.send(&packets::subscribe(pid, filters)).await;
        let suback = self.expect().await;
        assert_eq!(suback.byte1, 0x90, "SUBACK expected, got {suback:?}");
        assert_eq!(suback.pid(), pid);
        assert_eq!(&suback.body[2..], expected_codes);
    }
}

/// A rumqttc client whose event loop runs in a task and reports incoming packets.
pub struct Peer {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    pub session_present: bool,
}

/// Options for a rumqttc client of the broker at `addr`.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Connects a rumqttc client and waits for its CONNACK (asserting it is accepted).
pub async fn peer(options: MqttOptions) -> Peer {
    let (client, eventloop) = AsyncClient::new(options, 1000);
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(drive(eventloop, tx));
    let session_present = loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Ok(Incoming::ConnAck(ack)))) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                break ack.session_present;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    };
    Peer {
        client,
        events,
        session_present,
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Result<Incoming, String>>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) => {
                if tx.send(Ok(packet)).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(_)) => {}
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

impl Peer {
    /// The next incoming packet other than acks of our own traffic.
    pub async fn next(&mut self) -> Result<Incoming, String> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the timeout")
            .expect("event loop alive")
    }

    /// The next PUBLISH received.
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Ok(Incoming::Publish(p)) => return p,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for a PUBLISH: {e}"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        loop {
            match self.next().await {
                Ok(Incoming::SubAck(ack)) => return ack.return_codes,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for SUBACK: {e}"),
            }
        }
    }

    /// Waits for the acknowledgement of our last QoS 1 (PUBACK) or QoS 2 (PUBCOMP) publish.
    pub async fn published(&mut self) {
        loop {
            match self.next().await {
                Ok(Incoming::PubAck(_)) | Ok(Incoming::PubComp(_)) => return,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for an ack: {e}"),
            }
        }
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return,
                Err(_) => panic!("event loop did not end after DISCONNECT"),
            }
        }
    }
}
