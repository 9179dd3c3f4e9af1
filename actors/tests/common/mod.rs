//! Test helpers for the device actors: event probes, a cuttable TCP proxy, brokers on loopback
//! (Switchboard in process, Mosquitto in a child process: [`mosquitto`]). Every wait has a
//! timeout; nothing sleeps to synchronise but the wait for a Mosquitto process to answer, which
//! gives no event.
#![allow(dead_code)]

/// The broker's own test helpers for external programs (whether they are installed, required
/// under CI; whether a port answers MQTT).
#[path = "../../../tests/common/interop.rs"]
pub mod interop;
pub mod mosquitto;

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use switchboard::{BackgroundBroker, Config};
use switchboard_actors::{
    Backoff, ConnectionEvent, ConnectionOptions, Consumer, ManagedConnection, QoS, Received,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long [`Inbox::find`] may skip other events before the one it waits for.
pub const FIND_WITHIN: Duration = Duration::from_secs(30);

/// A broker on `port` (0 = any free port).
pub fn broker_on(port: u16) -> BackgroundBroker {
    let mut config = Config::default();
    config.listener.port = port;
    config.listener.workers = 1;
    config.http.port = 0;
    BackgroundBroker::start(config).expect("broker starts")
}

/// Options with short reconnect delays for tests.
pub fn options(port: u16, client_id: &str) -> ConnectionOptions {
    let mut options = ConnectionOptions::new("127.0.0.1", port, client_id);
    options.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    options.connect_timeout = Duration::from_secs(2);
    options
}

/// Forwards every message it gets into a channel.
pub struct Probe<M: Message<Result = ()> + Send>(pub mpsc::UnboundedSender<M>);

impl<M: Message<Result = ()> + Send + 'static> Actor for Probe<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Send + 'static> Handler<M> for Probe<M> {
    type Result = ();
    fn handle(&mut self, msg: M, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// The receiving end of a [`Probe`].
pub struct Inbox<M>(pub mpsc::UnboundedReceiver<M>);

impl<M: std::fmt::Debug> Inbox<M> {
    /// The next message, or panic after [`WAIT`].
    pub async fn next(&mut self) -> M {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("an event within the timeout")
            .expect("probe alive")
    }

    /// Skips messages until `pick` returns `Some`; panics if none did within [`FIND_WITHIN`]
    /// (a stream of other events, such as failed attempts, does not make it wait for ever).
    pub async fn find<T>(&mut self, mut pick: impl FnMut(&M) -> Option<T>) -> T {
        let search = async {
            loop {
                let m = self.next().await;
                if let Some(found) = pick(&m) {
                    return found;
                }
            }
        };
        tokio::time::timeout(FIND_WITHIN, search)
            .await
            .expect("the awaited event within the timeout")
    }

    /// Messages already received, without waiting.
    pub fn drain_ready(&mut self) -> Vec<M> {
        let mut out = Vec::new();
        while let Ok(m) = self.0.try_recv() {
            out.push(m);
        }
        out
    }
}

/// A probe actor and its inbox.
pub fn probe<M: Message<Result = ()> + Send + 'static>() -> (Recipient<M>, Inbox<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Probe(tx).start().recipient(), Inbox(rx))
}

/// A managed connection whose events go to the returned inbox.
pub fn connection(options: ConnectionOptions) -> (Addr<ManagedConnection>, Inbox<ConnectionEvent>) {
    let (recipient, inbox) = probe();
    (
        ManagedConnection::start_with(options, vec![recipient]),
        inbox,
    )
}

/// A Consumer of `filter` at QoS 1 on its own connection with `options`: the connection, the
/// received-message inbox and the connection's events, once the subscription is granted.
pub async fn consumer_with(
    options: ConnectionOptions,
    filter: &str,
) -> (
    Addr<ManagedConnection>,
    Inbox<Received>,
    Inbox<ConnectionEvent>,
) {
    let (conn, mut events) = connection(options);
    let (sink, received) = probe::<Received>();
    Consumer::new(
        conn.clone(),
        vec![(filter.to_string(), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    granted(&mut events, filter).await;
    (conn, received, events)
}

/// Checks that a resumed connection `app`, consuming `keep/#` into `received`, subscribed to
/// nothing again: a message it sends itself to `keep/echo` comes back after any SUBACK would
/// have, and no `SubscriptionGranted` came before it.
pub async fn assert_not_subscribed_again(
    app: &Addr<ManagedConnection>,
    received: &mut Inbox<Received>,
    events: &mut Inbox<ConnectionEvent>,
) {
    app.send(switchboard_actors::Enqueue::new(
        "keep/echo",
        "echo",
        QoS::AtLeastOnce,
    ))
    .await
    .expect("the connection")
    .expect("queued");
    assert_eq!(receive(received, 1).await, vec!["echo"]);
    let resubscribed = events
        .drain_ready()
        .into_iter()
        .any(|e| matches!(e, ConnectionEvent::SubscriptionGranted { .. }));
    assert!(
        !resubscribed,
        "subscriptions are not sent again when the session is present"
    );
}

/// Waits for `Connected` and returns its session-present flag.
pub async fn connected(events: &mut Inbox<ConnectionEvent>) -> bool {
    events
        .find(|e| match e {
            ConnectionEvent::Connected {
                session_present, ..
            } => Some(*session_present),
            _ => None,
        })
        .await
}

/// Waits for SUBACK of `filter`.
pub async fn granted(events: &mut Inbox<ConnectionEvent>, filter: &str) {
    events
        .find(|e| match e {
            ConnectionEvent::SubscriptionGranted {
                filter: f,
                granted: Some(_),
            } if f == filter => Some(()),
            _ => None,
        })
        .await
}

/// Waits for SUBACKs of all `filters`, in any order.
pub async fn granted_all(events: &mut Inbox<ConnectionEvent>, filters: &[&str]) {
    let mut missing: std::collections::BTreeSet<String> =
        filters.iter().map(|f| f.to_string()).collect();
    while !missing.is_empty() {
        if let ConnectionEvent::SubscriptionGranted {
            filter,
            granted: Some(_),
        } = events.next().await
        {
            missing.remove(&filter);
        }
    }
}

/// Waits for `Disconnected`.
pub async fn disconnected(events: &mut Inbox<ConnectionEvent>) {
    events
        .find(|e| matches!(e, ConnectionEvent::Disconnected(_)).then_some(()))
        .await
}

/// Collects `n` received payloads (as UTF-8 strings).
pub async fn receive(inbox: &mut Inbox<Received>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = inbox.next().await;
        out.push(String::from_utf8_lossy(&r.payload).into_owned());
    }
    out
}

/// A TCP proxy in front of a broker, which a test can cut (closing every connection, and
/// closing each new one at once) and open again.
///
/// It keeps its port while cut: a proxy that stopped listening could not always listen there
/// again, as a client's outgoing connection (or the reconnecting client's own, connected to
/// itself) may take a released loopback port in between.
pub struct Proxy {
    pub port: u16,
    accept: JoinHandle<()>,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

/// Whether a [`Proxy`] lets connections through, and the ones it forwards.
struct ProxyState {
    open: bool,
    connections: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `port` (0 = any) and forwards to `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy binds");
        let port = listener.local_addr().expect("addr").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            open: true,
            connections: Vec::new(),
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Decided under the lock that `cut` takes: no connection slips past a cut.
                let mut state = shared.lock().expect("lock");
                if !state.open {
                    continue; // `client` is dropped: closed at once.
                }
                state.connections.push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            accept,
            state,
        }
    }

    /// Closes every proxied connection, and each new one until [`Proxy::resume`].
    pub fn cut(&mut self) {
        let mut state = self.state.lock().expect("lock");
        state.open = false;
        for conn in state.connections.drain(..) {
            conn.abort();
        }
    }

    /// Lets connections through again.
    pub fn resume(&mut self) {
        self.state.lock().expect("lock").open = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A port with nothing listening on it (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
