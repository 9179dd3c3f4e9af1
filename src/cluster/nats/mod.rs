//! A NATS client of the core protocol, as much as a cluster link needs: connect (user and
//! password or token from the URL), subscribe with a queue group, unsubscribe, publish, answer
//! the server's PINGs and send its own, and reconnect to the next server of the list with
//! backoff, subscribing again. Every message of the connection comes in wire order as one
//! stream, whatever subscription it matched (NATS keeps one publisher's order), which is what
//! the link's ordering rests on.
//!
//! Protocol: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.

mod handshake;
mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use switchboard_actors::transport::TlsOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use wire::{parse_frame, put_pub, put_sub, Frame, NatsError};
pub use wire::{parse_urls, NatsServer};

/// How often the client PINGs an idle server; two unanswered PINGs end the connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long connecting, and the CONNECT's answer, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Publications waiting for the connection (room in it is the link's backpressure).
const PUBLISH_QUEUE: usize = 8192;
/// Most payload bytes handed to the owner in one `NatsMessages`, so that a read of many
/// (another node's whole fleet of filters, announced when it rejoins) is taken by the link in
/// turns of about one announcement each, with the other actors' turns on its thread between
/// them, not in one.
const HAND_OVER_BYTES: usize = 64 * 1024;
/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Sent by the NATS client to its owner (the cluster link) when the connection comes up or
/// goes down.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum NatsEvent {
    /// Connected to `server` and subscribed again to everything; `max_payload` is the largest
    /// message it takes.
    Up {
        /// The server's URL.
        server: String,
        /// The server's `max_payload`.
        max_payload: usize,
    },
    /// The connection ended; the client reconnects.
    Down {
        /// Why.
        error: String,
    },
}

/// One message from NATS.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The subscription it matched.
    pub sid: u64,
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Sent by the NATS client to its owner: the messages of one read (or a part of them holding
/// `HAND_OVER_BYTES` of payload), in wire order. The client reads no more until this is
/// handled (the owner's backpressure on NATS).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct NatsMessages(pub Vec<Inbound>);

enum Control {
    Subscribe {
        sid: u64,
        subject: String,
        queue: Option<String>,
    },
    Unsubscribe {
        sid: u64,
    },
}

pub(super) struct Publication {
    pub(super) subject: String,
    pub(super) payload: Bytes,
}

/// The handle on a NATS connection running on the current arbiter. Dropping it ends the
/// connection once what was published is written.
#[derive(Clone)]
pub struct NatsClient {
    control: mpsc::UnboundedSender<Control>,
    publications: mpsc::Sender<Publication>,
}

impl NatsClient {
    /// Connects (and keeps reconnecting) to `servers` in turn as `name`, over TLS with `tls`,
    /// telling `events` and handing `messages` what arrives.
    pub fn start(
        servers: Vec<NatsServer>,
        tls: Option<TlsOptions>,
        name: String,
        events: Recipient<NatsEvent>,
        messages: Recipient<NatsMessages>,
    ) -> NatsClient {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let task = Task {
            servers,
            tls,
            name,
            events,
            messages,
            subscriptions: BTreeMap::new(),
            control: control_rx,
            publications: publication_rx,
        };
        actix_rt::spawn(task.run());
        NatsClient {
            control,
            publications,
        }
    }

    /// Subscribes `sid` to `subject` (in `queue`'s group), now and after every reconnect.
    pub fn subscribe(&self, sid: u64, subject: String, queue: Option<String>) {
        let _ = self.control.send(Control::Subscribe {
            sid,
            subject,
            queue,
        });
    }

    /// Ends subscription `sid`.
    pub fn unsubscribe(&self, sid: u64) {
        let _ = self.control.send(Control::Unsubscribe { sid });
    }

    /// Publishes, waiting while the queue for the connection is full (it is while the server
    /// is unreachable). False if the client is gone.
    pub async fn publish(&self, subject: String, payload: Bytes) -> bool {
        let publication = Publication { subject, payload };
        self.publications.send(publication).await.is_ok()
    }

    /// Publishes if the queue for the connection has room; false if it has none (or the
    /// client is gone).
    pub fn try_publish(&self, subject: &str, payload: &Bytes) -> bool {
        let Ok(permit) = self.publications.try_reserve() else {
            return false;
        };
        permit.send(Publication {
            subject: subject.to_string(),
            payload: payload.clone(),
        });
        true
    }

    /// Waits until the queue for the connection has room (false if the client is gone).
    pub async fn room(&self) -> bool {
        self.publications.reserve().await.is_ok()
    }
}

/// Messages read and not yet handed to the owner, and their payloads' bytes: while
/// connecting (bounded by `handshake::EARLY_BYTES`), and on a connection that is up (handed
/// over at `HAND_OVER_BYTES`).
#[derive(Default)]
struct Batch {
    messages: Vec<Inbound>,
    bytes: usize,
}

impl Batch {
    /// Adds `message`.
    fn push(&mut self, message: Inbound) {
        self.bytes += message.payload.len();
        self.messages.push(message);
    }

    /// Every message, leaving the batch empty.
    fn take(&mut self) -> Vec<Inbound> {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }
}

/// A connection to a NATS server: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin {}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for S {}

struct Task {
    servers: Vec<NatsServer>,
    tls: Option<TlsOptions>,
    name: String,
    events: Recipient<NatsEvent>,
    messages: Recipient<NatsMessages>,
    subscriptions: BTreeMap<u64, (String, Option<String>)>,
    control: mpsc::UnboundedReceiver<Control>,
    publications: mpsc::Receiver<Publication>,
}

/// The server's INFO, as much as is read.
#[derive(serde::Deserialize)]
struct Info {
    #[serde(default = "default_max_payload")]
    max_payload: usize,
    #[serde(default)]
    tls_required: bool,
}

fn default_max_payload() -> usize {
    1024 * 1024
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 0;
        loop {
            if self.servers.is_empty() {
                return; // `cluster.nats_url` names at least one: checked at start
            }
            let server = self.servers[next % self.servers.len()].clone();
            next += 1;
            match self.connect(&server).await {
                Ok(connected) => {
                    backoff = Duration::from_millis(100);
                    self.events.do_send(NatsEvent::Up {
                        server: server.to_string(),
                        max_payload: connected.max_payload,
                    });
                    let error = self
                        .serve(connected.stream, connected.buffer, connected.early)
                        .await;
                    self.events.do_send(NatsEvent::Down {
                        error: error.to_string(),
                    });
                }
                Err(e) => {
                    warn!(server = %server, error = %e, retry_in = ?backoff, "cannot connect to NATS");
                }
            }
            if !self.events.connected() || self.control.is_closed() {
                return; // the link is gone
            }
            // Subscriptions made while down are kept for the next connection.
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    control = self.control.recv() => match control {
                        Some(control) => self.remember(control),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn remember(&mut self, control: Control) {
        match control {
            Control::Subscribe {
                sid,
                subject,
                queue,
            } => {
                self.subscriptions.insert(sid, (subject, queue));
            }
            Control::Unsubscribe { sid } => {
                self.subscriptions.remove(&sid);
            }
        }
    }

    /// Hands `messages` to the owner, and waits until it has taken them.
    async fn hand_over(&self, messages: Vec<Inbound>) -> Result<(), NatsError> {
        match self.messages.send(NatsMessages(messages)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(NatsError::Protocol("the cluster link stopped".into())),
        }
    }

    /// Adds `message` to `batch`; a full batch goes to the owner, and then the thread's other
    /// tasks (its sockets) run before more is handed over: without that, this task and the
    /// link kept each other busy for 12-37 ms on a rejoining node's 100,000 filters.
    async fn add(&self, batch: &mut Batch, message: Inbound) -> Result<(), NatsError> {
        batch.push(message);
        if batch.bytes >= HAND_OVER_BYTES {
            self.hand_over(batch.take()).await?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Runs one connection until it fails; `early` (the messages that came before the
    /// connection was up) goes to the owner first.
    async fn serve(
        &mut self,
        stream: Box<dyn Stream>,
        mut buffer: BytesMut,
        early: Batch,
    ) -> NatsError {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut out = BytesMut::with_capacity(WRITE_BATCH);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let mut unanswered = 0u32;
        // What came before the connection was up goes first, in order.
        let mut batch = Batch::default();
        for message in early.messages {
            if let Err(e) = self.add(&mut batch, message).await {
                return e;
            }
        }
        loop {
            // What the server sent before is handled before more is read.
            loop {
                match parse_frame(&mut buffer) {
                    Ok(Some(Frame::Message(message))) => {
                        if let Err(e) = self.add(&mut batch, message).await {
                            return e;
                        }
                    }
                    Ok(Some(Frame::Ping)) => out.put_slice(b"PONG\r\n"),
                    Ok(Some(Frame::Pong)) => unanswered = 0,
                    Ok(Some(Frame::Other)) => {}
                    Ok(Some(Frame::Error(error))) => {
                        // Permission errors leave the connection open; others close it.
                        if error.contains("Permissions Violation") {
                            warn!(%error, "NATS refused an operation of the cluster link");
                        } else {
                            return NatsError::Server(error);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e,
                }
            }
            if !batch.messages.is_empty() {
                if let Err(e) = self.hand_over(batch.take()).await {
                    return e;
                }
            }
            if !out.is_empty() {
                if let Err(e) = writer.write_all(&out).await {
                    return e.into();
                }
                out.clear();
            }
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    let Some(control) = control else {
                        // The link stopped: what it published last (its goodbye) goes out.
                        while let Ok(last) = self.publications.try_recv() {
                            put_pub(&mut out, last);
                        }
                        let _ = writer.write_all(&out).await;
                        let _ = writer.flush().await;
                        return NatsError::Protocol("the cluster link stopped".into());
                    };
                    match &control {
                        Control::Subscribe { sid, subject, queue } => {
                            put_sub(&mut out, *sid, subject, queue.as_deref());
                        }
                        Control::Unsubscribe { sid } => {
                            out.put_slice(format!("UNSUB {sid}\r\n").as_bytes());
                        }
                    }
                    self.remember(control);
                }
                read = reader.read_buf(&mut buffer) => match read {
                    Ok(0) => return NatsError::Protocol("the server closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return e.into(),
                },
                publication = self.publications.recv() => {
                    let Some(first) = publication else {
                        return NatsError::Protocol("the cluster link stopped".into());
                    };
                    put_pub(&mut out, first);
                    while out.len() < WRITE_BATCH {
                        match self.publications.try_recv() {
                            Ok(next) => put_pub(&mut out, next),
                            Err(_) => break,
                        }
                    }
                }
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        return NatsError::Timeout(PING_INTERVAL * 2);
                    }
                    unanswered += 1;
                    out.put_slice(b"PING\r\n");
                }
            }
        }
    }
}
