//! A NATS client of the core protocol, as much as a cluster link needs: connect (user and
//! password or token from the URL), subscribe with a queue group, unsubscribe, publish, answer
//! the server's PINGs and send its own, and reconnect to the next server of the list with
//! backoff, subscribing again. Every message of the connection comes in wire order as one
//! stream, whatever subscription it matched (NATS keeps one publisher's order), which is what
//! the link's ordering rests on.
//!
//! Protocol: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The longest control line taken from the server (its `INFO` can be long in a big cluster).
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// How often the client PINGs an idle server; two unanswered PINGs end the connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long connecting, and the CONNECT's answer, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Publications waiting for the connection (room in it is the link's backpressure).
const PUBLISH_QUEUE: usize = 8192;
/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// One server of `cluster.nats_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// Host name or address.
    pub host: String,
    /// Port (default 4222).
    pub port: u16,
    /// User and password from the URL (`nats://user:password@host`).
    pub user: Option<(String, String)>,
    /// Token from the URL (`nats://token@host`).
    pub token: Option<String>,
}

impl std::fmt::Display for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nats://{}:{}", self.host, self.port)
    }
}

/// Parses `nats://[user:password@|token@]host[:port]`, several separated by commas.
pub fn parse_urls(urls: &str) -> Result<Vec<NatsServer>, String> {
    let mut servers = Vec::new();
    for url in urls.split(',').map(str::trim) {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| format!("`{url}` does not start with nats://"))?;
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{url}`: the port is not a number"))?;
                (host, port)
            }
            None => (address, 4222),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        let (user, token) = match credentials.map(|c| c.split_once(':')) {
            Some(Some((user, password))) => (Some((user.into(), password.into())), None),
            Some(None) => (None, credentials.map(String::from)),
            None => (None, None),
        };
        servers.push(NatsServer {
            host: host.to_string(),
            port,
            user,
            token,
        });
    }
    Ok(servers)
}

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

/// Why the connection ended.
#[derive(Debug, Error)]
enum NatsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server said: {0}")]
    Server(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

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

struct Publication {
    subject: String,
    payload: Bytes,
}

/// The handle on a NATS connection running on the current arbiter. Dropping it ends the
/// connection once what was published is written.
#[derive(Clone)]
pub struct NatsClient {
    control: mpsc::UnboundedSender<Control>,
    publications: mpsc::Sender<Publication>,
}

impl NatsClient {
    /// Connects (and keeps reconnecting) to `servers` in turn as `name`, telling `events` and
    /// handing `messages` what arrives.
    pub fn start(
        servers: Vec<NatsServer>,
        name: String,
        events: Recipient<NatsEvent>,
        messages: Recipient<NatsMessages>,
    ) -> NatsClient {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let task = Task {
            servers,
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

struct Task {
    servers: Vec<NatsServer>,
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
}

fn default_max_payload() -> usize {
    1024 * 1024
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 0;
        loop {
            if self.events.connected() && self.servers.is_empty() {
                return;
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
    ) -> Result<(TcpStream, BytesMut, usize), NatsError> {
        let connecting = async {
            let mut stream = TcpStream::connect((server.host.as_str(), server.port)).await?;
            stream.set_nodelay(true)?;
            let mut buffer = BytesMut::with_capacity(16 * 1024);
            let info = read_line(&mut stream, &mut buffer).await?;
            let info = info
                .strip_prefix("INFO ")
                .ok_or_else(|| NatsError::Protocol(format!("expected INFO, got `{info}`")))?;
            let info: Info = serde_json::from_str(info)
                .map_err(|e| NatsError::Protocol(format!("INFO: {e}")))?;
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
    async fn serve(&mut self, stream: TcpStream, mut buffer: BytesMut) -> NatsError {
        let (mut reader, mut writer) = stream.into_split();
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

fn sub_line(sid: u64, subject: &str, queue: Option<&str>) -> String {
    match queue {
        Some(queue) => format!("SUB {subject} {queue} {sid}\r\n"),
        None => format!("SUB {subject} {sid}\r\n"),
    }
}

fn put_pub(out: &mut BytesMut, publication: Publication) {
    let line = format!(
        "PUB {} {}\r\n",
        publication.subject,
        publication.payload.len()
    );
    out.put_slice(line.as_bytes());
    out.put_slice(&publication.payload);
    out.put_slice(b"\r\n");
}

/// Reads one control line (during the handshake).
async fn read_line(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<String, NatsError> {
    loop {
        if let Some(end) = find_crlf(buffer) {
            let line = buffer.split_to(end + 2);
            return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        if buffer.len() > MAX_CONTROL_LINE {
            return Err(NatsError::Protocol("control line too long".into()));
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(NatsError::Protocol(
                "the server closed the connection".into(),
            ));
        }
    }
}

fn find_crlf(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\r\n")
}

enum Frame {
    Message(Inbound),
    Ping,
    Pong,
    Error(String),
    Other,
}

/// Takes one whole frame off the front of `buffer`, if there is one.
fn parse_frame(buffer: &mut BytesMut) -> Result<Option<Frame>, NatsError> {
    let Some(end) = find_crlf(buffer) else {
        if buffer.len() > MAX_CONTROL_LINE {
            return Err(NatsError::Protocol("control line too long".into()));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buffer[..end])
        .map_err(|_| NatsError::Protocol("a control line is not UTF-8".into()))?;
    let mut words = line.split_ascii_whitespace();
    let frame = match words.next().unwrap_or("") {
        "MSG" => {
            let words: Vec<&str> = words.collect();
            // MSG <subject> <sid> [reply-to] <#bytes>
            let (subject, sid, size) = match words.as_slice() {
                [subject, sid, size] | [subject, sid, _, size] => (*subject, *sid, *size),
                _ => return Err(NatsError::Protocol(format!("bad MSG line `{line}`"))),
            };
            let sid = sid
                .parse()
                .map_err(|_| NatsError::Protocol(format!("bad sid in `{line}`")))?;
            let size: usize = size
                .parse()
                .map_err(|_| NatsError::Protocol(format!("bad size in `{line}`")))?;
            let subject = subject.to_string();
            let total = end + 2 + size + 2;
            if buffer.len() < total {
                buffer.reserve(total - buffer.len());
                return Ok(None);
            }
            buffer.advance(end + 2);
            let payload = buffer.split_to(size).freeze();
            buffer.advance(2);
            return Ok(Some(Frame::Message(Inbound {
                sid,
                subject,
                payload,
            })));
        }
        "PING" => Frame::Ping,
        "PONG" => Frame::Pong,
        "-ERR" => Frame::Error(line[4..].trim().trim_matches('\'').to_string()),
        "+OK" | "INFO" => Frame::Other,
        other => {
            debug!(frame = other, "an unexpected NATS frame, ignored");
            Frame::Other
        }
    };
    buffer.advance(end + 2);
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_tokens_and_lists() {
        let servers = parse_urls("nats://a:b@h1:4333, nats://tok@h2,nats://[::1]:5").unwrap();
        assert_eq!(servers[0].user, Some(("a".into(), "b".into())));
        assert_eq!((servers[0].host.as_str(), servers[0].port), ("h1", 4333));
        assert_eq!(servers[1].token.as_deref(), Some("tok"));
        assert_eq!(servers[1].port, 4222);
        assert_eq!((servers[2].host.as_str(), servers[2].port), ("::1", 5));
        assert!(parse_urls("tcp://h").is_err());
        assert!(parse_urls("nats://h:x").is_err());
        assert!(parse_urls("nats://").is_err());
    }

    #[test]
    fn frames_are_taken_whole_and_in_order() {
        let mut buffer = BytesMut::from(
            &b"PING\r\nMSG a.b 7 5\r\nhello\r\nMSG c 8 r.x 2\r\nhi\r\nMSG d 1 10\r\npart"[..],
        );
        assert!(matches!(parse_frame(&mut buffer), Ok(Some(Frame::Ping))));
        let Ok(Some(Frame::Message(m))) = parse_frame(&mut buffer) else {
            panic!("a message")
        };
        assert_eq!(
            (m.subject.as_str(), m.sid, &m.payload[..]),
            ("a.b", 7, &b"hello"[..])
        );
        let Ok(Some(Frame::Message(m))) = parse_frame(&mut buffer) else {
            panic!("a message with a reply subject")
        };
        assert_eq!((m.sid, &m.payload[..]), (8, &b"hi"[..]));
        assert!(matches!(parse_frame(&mut buffer), Ok(None)));
        buffer.put_slice(b"-more!\r\n-ERR 'Stale Connection'\r\n");
        assert!(matches!(
            parse_frame(&mut buffer),
            Ok(Some(Frame::Message(_)))
        ));
        let Ok(Some(Frame::Error(e))) = parse_frame(&mut buffer) else {
            panic!("an error")
        };
        assert_eq!(e, "Stale Connection");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"MSG a\r\n"[..],
            b"MSG a x 1\r\n",
            b"MSG a 1 -1\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse_frame(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let long = vec![b'a'; MAX_CONTROL_LINE + 1];
        assert!(parse_frame(&mut BytesMut::from(&long[..])).is_err());
    }
}
