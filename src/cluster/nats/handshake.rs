//! Getting onto a NATS server: the TCP connection, its INFO, TLS, the CONNECT, and every
//! subscription taken again, before the connection counts as up.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::wire::{parse_frame, put_sub, read_line, Frame, NatsError, NatsServer};
use super::{Batch, Info, Stream, Task, CONNECT_TIMEOUT};

/// Subscriptions sent before each PING while connecting.
const SUBSCRIBE_CHUNK: usize = 10_000;
/// Subscriptions written out between two yields to the thread's other tasks: the walk of the
/// subscriptions and their lines take about 0.1-0.3 µs each (a chunk's 10,000 would be 1-3 ms
/// at once).
const FORMAT_SLICE: usize = 1_000;
/// Most payload bytes of messages kept while connecting (the server's own bound on what it
/// holds for a client is 64 MiB by default).
const EARLY_BYTES: usize = 64 * 1024 * 1024;

/// A connection the server has taken the CONNECT and every subscription of.
pub(super) struct Connected {
    /// The connection.
    pub(super) stream: Box<dyn Stream>,
    /// What was read past the last PONG.
    pub(super) buffer: BytesMut,
    /// The server's `max_payload`.
    pub(super) max_payload: usize,
    /// Messages that came before the last PONG, in wire order.
    pub(super) early: Batch,
}

impl Task {
    /// Connects to `server`, sends the CONNECT and every subscription, and waits until the
    /// server has taken them all. Answers the stream, what was read past the last PONG, the
    /// server's `max_payload`, and the messages that came before that PONG (the server routes
    /// to a subscription as soon as it has taken it), in wire order.
    pub(super) async fn connect(&mut self, server: &NatsServer) -> Result<Connected, NatsError> {
        let (mut stream, mut buffer, info) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.open(server))
                .await
                .map_err(|_| NatsError::Timeout(CONNECT_TIMEOUT))??;
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
        // Everything subscribed so far goes with the CONNECT, before `NatsEvent::Up`: a PING
        // after every `SUBSCRIBE_CHUNK` subscriptions, each PONG saying the server has taken
        // those, so that a node with a million filters makes progress within each timeout
        // instead of all of them within one.
        while let Ok(control) = self.control.try_recv() {
            self.remember(control);
        }
        let mut out = BytesMut::from(format!("CONNECT {connect}\r\n").as_bytes());
        let mut early = Batch::default();
        let mut subscriptions = self.subscriptions.iter().peekable();
        loop {
            let chunk = subscriptions.by_ref().take(SUBSCRIBE_CHUNK).enumerate();
            for (written, (sid, (subject, queue))) in chunk {
                put_sub(&mut out, *sid, subject, queue.as_deref());
                if written % FORMAT_SLICE == FORMAT_SLICE - 1 {
                    // The thread's other tasks (the Sessions beside the link) run between.
                    tokio::task::yield_now().await;
                }
            }
            out.extend_from_slice(b"PING\r\n");
            let taken = async {
                stream.write_all(&out).await?;
                until_pong(&mut stream, &mut buffer, &mut early).await
            };
            tokio::time::timeout(CONNECT_TIMEOUT, taken)
                .await
                .map_err(|_| NatsError::Timeout(CONNECT_TIMEOUT))??;
            out.clear();
            if subscriptions.peek().is_none() {
                break;
            }
        }
        Ok(Connected {
            stream,
            buffer,
            max_payload: info.max_payload,
            early,
        })
    }

    /// The TCP connection, the server's INFO, and TLS if asked for.
    async fn open(
        &self,
        server: &NatsServer,
    ) -> Result<(Box<dyn Stream>, BytesMut, Info), NatsError> {
        let mut tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
        tcp.set_nodelay(true)?;
        let mut buffer = BytesMut::with_capacity(16 * 1024);
        // The server's INFO comes in plain text; TLS, if any, starts after it.
        let info = read_line(&mut tcp, &mut buffer).await?;
        let info = info
            .strip_prefix("INFO ")
            .ok_or_else(|| NatsError::Protocol(format!("expected INFO, got `{info}`")))?;
        let info: Info =
            serde_json::from_str(info).map_err(|e| NatsError::Protocol(format!("INFO: {e}")))?;
        let stream: Box<dyn Stream> = match &self.tls {
            Some(tls) => Box::new(tls.connect(&server.host, tcp).await?),
            None if info.tls_required => {
                let why = "the NATS server requires TLS: set cluster.tls";
                return Err(NatsError::Protocol(why.into()));
            }
            None => Box::new(tcp),
        };
        Ok((stream, buffer, info))
    }
}

/// Reads until the server's PONG. Messages for subscriptions already taken may come first
/// (the server routes to a subscription as soon as it has it, before it reaches the PING):
/// they are kept for the owner. The server's PINGs are answered; a permission error for one
/// subscription is logged and the rest go on, as on a connection that is up.
async fn until_pong<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    early: &mut Batch,
) -> Result<(), NatsError> {
    loop {
        match parse_frame(buffer)? {
            Some(Frame::Pong) => return Ok(()),
            Some(Frame::Ping) => stream.write_all(b"PONG\r\n").await?,
            Some(Frame::Message(message)) => {
                early.push(message);
                if early.bytes > EARLY_BYTES {
                    let why =
                        "more than 64 MiB of messages before the server took the subscriptions";
                    return Err(NatsError::Protocol(why.into()));
                }
            }
            Some(Frame::Other) => {}
            Some(Frame::Error(error)) if error.contains("Permissions Violation") => {
                warn!(%error, "NATS refused an operation of the cluster link");
            }
            Some(Frame::Error(error)) => return Err(NatsError::Server(error)),
            None => {
                if stream.read_buf(buffer).await? == 0 {
                    let why = "the server closed the connection";
                    return Err(NatsError::Protocol(why.into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::prelude::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};

    use crate::cluster::nats::{NatsClient, NatsEvent, NatsMessages, NatsServer};

    /// What the client told its owner.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Up,
        Down(String),
        Message(u64, Bytes),
    }

    struct Owner(mpsc::UnboundedSender<Seen>);

    impl Actor for Owner {
        type Context = Context<Self>;
    }

    impl Handler<NatsEvent> for Owner {
        type Result = ();
        fn handle(&mut self, event: NatsEvent, _: &mut Context<Self>) {
            let _ = self.0.send(match event {
                NatsEvent::Up { .. } => Seen::Up,
                NatsEvent::Down { error } => Seen::Down(error),
            });
        }
    }

    impl Handler<NatsMessages> for Owner {
        type Result = ();
        fn handle(&mut self, NatsMessages(messages): NatsMessages, _: &mut Context<Self>) {
            for message in messages {
                let _ = self.0.send(Seen::Message(message.sid, message.payload));
            }
        }
    }

    /// A NATS server as a script over real TCP: INFO, then a PONG for every PING, telling how
    /// many SUB lines it had read at each; before the first PONG it routes a message to
    /// subscription 1 (as a server does once it has taken that SUB), and after the last one
    /// another.
    async fn scripted_server(subscriptions: usize) -> (u16, oneshot::Receiver<Vec<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (told, told_rx) = oneshot::channel();
        actix_rt::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("the client connects");
            let info = b"INFO {\"server_id\":\"test\",\"max_payload\":1048576}\r\n";
            stream.write_all(info).await.expect("INFO");
            let (mut read, mut subs, mut at_pings) = (Vec::new(), 0, Vec::new());
            let mut chunk = [0u8; 64 * 1024];
            while at_pings.last() != Some(&subscriptions) {
                let n = stream.read(&mut chunk).await.expect("readable");
                assert!(n > 0, "the client closed the connection while connecting");
                read.extend_from_slice(&chunk[..n]);
                while let Some(end) = read.windows(2).position(|w| w == b"\r\n") {
                    let line: Vec<u8> = read.drain(..end + 2).collect();
                    if line.starts_with(b"SUB ") {
                        subs += 1;
                    } else if line.starts_with(b"PING") {
                        if at_pings.is_empty() {
                            stream
                                .write_all(b"MSG a.b 1 5\r\nearly\r\n")
                                .await
                                .expect("MSG");
                        }
                        at_pings.push(subs);
                        stream.write_all(b"PONG\r\n").await.expect("PONG");
                    }
                }
            }
            stream
                .write_all(b"MSG a.b 1 4\r\nlate\r\n")
                .await
                .expect("MSG");
            let _ = told.send(at_pings);
            // Open until the test ends.
            let _ = stream.read(&mut chunk).await;
        });
        (port, told_rx)
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the client tells its owner within 10 s")
            .expect("the owner is alive")
    }

    #[actix_rt::test]
    async fn messages_before_the_pong_are_kept_and_subscriptions_go_in_chunks() {
        let subscriptions = 25_000;
        let (port, told) = scripted_server(subscriptions).await;
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let owner = Owner(seen_tx).start();
        let server = NatsServer {
            host: "127.0.0.1".into(),
            port,
            user: None,
            token: None,
        };
        let client = NatsClient::start(
            vec![server],
            None,
            "test".into(),
            owner.clone().recipient(),
            owner.recipient(),
        );
        for sid in 1..=subscriptions as u64 {
            client.subscribe(sid, format!("a.{sid}"), None);
        }
        // Up, then the message routed before the PONG, then the one after, in wire order; no
        // reconnect in between (the client took the first for a server error before).
        assert_eq!(next(&mut seen).await, Seen::Up);
        assert_eq!(
            next(&mut seen).await,
            Seen::Message(1, Bytes::from("early"))
        );
        assert_eq!(next(&mut seen).await, Seen::Message(1, Bytes::from("late")));
        // A PING after every 10,000 subscriptions: each PONG is progress within the timeout.
        let at_pings = told.await.expect("the server's count");
        assert_eq!(at_pings, vec![10_000, 20_000, 25_000]);
    }
}
