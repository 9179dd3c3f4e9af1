//! A NATS client of the core protocol, as much as a cluster link needs: connect (user and
//! password or token from the URL), subscribe with a queue group, unsubscribe, publish, answer
//! the server's PINGs and send its own, and reconnect to the next server of the list with
//! backoff, subscribing again. Every message of the connection comes in wire order as one
//! stream, whatever subscription it matched (NATS keeps one publisher's order), which is what
//! the link's ordering rests on.
//!
//! Protocol: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.

mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use switchboard_actors::transport::TlsOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::warn;

use wire::{parse_frame, put_pub, read_line, sub_line, Frame, NatsError};
pub use wire::{parse_urls, NatsServer};

/// How often the client PINGs an idle server; two unanswered PINGs end the connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long connecting, and the CONNECT's answer, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Publications waiting for the connection (room in it is the link's backpressure).
const PUBLISH_QUEUE: usize = 8192;
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

/// Sent by the NATS client to its owner: the messages of one read, in wire order. The client
/// reads no more until this is handled (the owner's backpressure on NATS).
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
                Ok((stream, buffer, max_payload)) => {
                    backoff = Duration::from_millis(100);
                    self.events.do_send(NatsEvent::Up {
                        server: server.to_string(),
                        max_payload,
                    });
                    let error = self.serve(stream, buffer).await;
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

    async fn connect(
        &mut self,
        server: &NatsServer,
    ) -> Result<(Box<dyn Stream>, BytesMut, usize), NatsError> {
        let connecting = async {
            let mut tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
            tcp.set_nodelay(true)?;
            let mut buffer = BytesMut::with_capacity(16 * 1024);
            // The server's INFO comes in plain text; TLS, if any, starts after it.
            let info = read_line(&mut tcp, &mut buffer).await?;
            let info = info
                .strip_prefix("INFO ")
                .ok_or_else(|| NatsError::Protocol(format!("expected INFO, got `{info}`")))?;
            let info: Info = serde_json::from_str(info)
                .map_err(|e| NatsError::Protocol(format!("INFO: {e}")))?;
            let mut stream: Box<dyn Stream> = match &self.tls {
                Some(tls) => Box::new(tls.connect(&server.host, tcp).await?),
                None if info.tls_required => {
                    let why = "the NATS server requires TLS: set cluster.tls";
                    return Err(NatsError::Protocol(why.into()));
                }
                None => Box::new(tcp),
            };
            let mut connect = serde_json::json!({
                "verbose": false,
                "pedantic": false,
                "echo": false,
                "lang": "rust-switchboard",
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": 1,
                "name": self.name,
            });
            if let Some((user, password)) = &server.user {
                connect["user"] = user.as_str().into();
                connect["pass"] = password.as_str().into();
            }
            if let Some(token) = &server.token {
                connect["auth_token"] = token.as_str().into();
            }
            // Everything subscribed so far goes with the CONNECT, before the PING: its PONG (and
            // so `NatsEvent::Up`) means the server has the subscriptions.
            while let Ok(control) = self.control.try_recv() {
                self.remember(control);
            }
            let mut out = format!("CONNECT {connect}\r\n").into_bytes();
            for (sid, (subject, queue)) in &self.subscriptions {
                out.extend_from_slice(sub_line(*sid, subject, queue.as_deref()).as_bytes());
            }
            out.extend_from_slice(b"PING\r\n");
            stream.write_all(&out).await?;
            // The PING's PONG says the CONNECT (and the subscriptions) were taken.
            loop {
                let line = read_line(&mut stream, &mut buffer).await?;
                match line.as_str() {
                    "PONG" => break,
                    "PING" => stream.write_all(b"PONG\r\n").await?,
                    "+OK" => {}
                    other if other.starts_with("INFO ") => {}
                    other => {
                        let error = other.strip_prefix("-ERR ").unwrap_or(other);
                        return Err(NatsError::Server(error.to_string()));
                    }
                }
            }
            Ok((stream, buffer, info.max_payload))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| NatsError::Timeout(CONNECT_TIMEOUT))?
    }

    /// Runs one connection until it fails.
    async fn serve(&mut self, stream: Box<dyn Stream>, mut buffer: BytesMut) -> NatsError {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut out = BytesMut::with_capacity(WRITE_BATCH);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let mut unanswered = 0u32;
        loop {
            // What the server sent before is handled before more is read.
            let mut inbound = Vec::new();
            loop {
                match parse_frame(&mut buffer) {
                    Ok(Some(Frame::Message(message))) => inbound.push(message),
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
            if !inbound.is_empty() && self.messages.send(NatsMessages(inbound)).await.is_err() {
                return NatsError::Protocol("the cluster link stopped".into());
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
                            out.put_slice(sub_line(*sid, subject, queue.as_deref()).as_bytes());
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
