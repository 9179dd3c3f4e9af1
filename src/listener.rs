//! The listeners: accept TCP connections and start one Session per connection.
//!
//! By default one listener on the System's thread hands connections round robin to the worker
//! Arbiters (one thread each). With `listener.reuse_port` each worker has a listening socket of
//! its own on the broker's address (`SO_REUSEPORT`, where the platform has it): the kernel spreads
//! new connections over them by a hash of their addresses, and a Session starts on the thread
//! that accepted its socket, with no hand-off.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_rt::ArbiterHandle;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::log_gate::LogGate;
use crate::session::{Session, SessionShared};

/// Connections waiting in a listener's accept queue; the kernel caps it at
/// `net.core.somaxconn` (4,096 on current kernels).
const BACKLOG: u32 = 4096;

/// Per-source-address token buckets for `limits.max_connection_rate`, shared by the listeners.
pub(crate) struct ConnectionRate {
    rate: f64,
    include_loopback: bool,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Refusals, logged at most once a second.
    refusals: LogGate,
}

impl ConnectionRate {
    /// Buckets of `rate` connections per second per address (0: no limit); loopback addresses
    /// are limited only with `include_loopback`.
    pub(crate) fn new(rate: u32, include_loopback: bool) -> Self {
        ConnectionRate {
            rate: f64::from(rate),
            include_loopback,
            buckets: HashMap::new(),
            refusals: LogGate::new(Duration::from_secs(1)),
        }
    }

    /// Whether a new connection from `ip` is within its rate; takes a token if so.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 || (ip.is_loopback() && !self.include_loopback) {
            return true;
        }
        if self.buckets.len() > 100_000 {
            // Forget addresses whose bucket has refilled: they are back to the default state.
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        false
    }

    /// Logs refusals at most once a second, with their count.
    fn refused(&mut self, ip: IpAddr, now: Instant) {
        if let Some(refused) = self.refusals.event(now) {
            warn!(addr = %ip, refused, rate = self.rate, "connection refused: over the per-address connection rate");
        }
    }
}

/// How long the accept loop waits after a failed accept before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Failed accepts, logged at most once a second with how many failed since the last line.
struct AcceptFailures(LogGate);

impl Default for AcceptFailures {
    fn default() -> Self {
        AcceptFailures(LogGate::new(Duration::from_secs(1)))
    }
}

impl AcceptFailures {
    fn failed(&mut self, error: &std::io::Error) {
        let Some(failed_accepts) = self.0.event(Instant::now()) else {
            return;
        };
        if crate::fd_limit::is_out_of_descriptors(error) {
            warn!(
                error = %error,
                failed_accepts,
                "cannot accept: out of file descriptors; new connections wait in the listen \
                 backlog until some close (raise the hard RLIMIT_NOFILE for more)"
            );
        } else {
            warn!(error = %error, failed_accepts, "accept failed");
        }
    }

    fn recovered(&mut self) {
        if self.0.reset() {
            info!("accepting connections again");
        }
    }
}

/// Binds `count` listening sockets on `addr` that share it (`SO_REUSEPORT`), one per worker; port
/// 0 picks one port for all. A plain bind first makes sure nothing else holds the address (a
/// second broker on it is refused, as it would be without the option). Returns one listener
/// where the option is missing, or for one worker.
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if count <= 1 {
        return Ok(vec![listen(addr, false)?]);
    }
    if addr.port() != 0 {
        drop(listen(addr, false)?);
    }
    let Ok(first) = listen(addr, true) else {
        return Ok(vec![listen(addr, false)?]);
    };
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(listen(bound, true)?);
    }
    Ok(all)
}

/// One listening socket on `addr`, sharing it with others when `reuse_port`.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
        socket.set_reuseport(true)?;
        #[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
        return Err(io::Error::new(io::ErrorKind::Unsupported, "SO_REUSEPORT"));
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// Where an accept loop starts the Sessions of what it accepts.
pub(crate) enum Placement {
    /// On the thread the loop runs on: its own listener, on a worker.
    Here,
    /// Round robin over these workers: the one listener, on the System's thread.
    RoundRobin(Vec<ArbiterHandle>),
}

/// What a listener takes from the PROXY protocol header each of its connections starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyProtocol {
    /// No header: the socket's own address is the client's.
    Off,
    /// The client's address.
    Address,
    /// The client's address, and the Common Name of the client certificate the proxy verified
    /// (where it terminated TLS) as the client's user name.
    AddressAndIdentity,
}

impl ProxyProtocol {
    /// As a listener's `proxy_protocol` and `use_identity_as_username` keys say.
    pub(crate) fn of(on: bool, identity: bool) -> ProxyProtocol {
        match (on, identity) {
            (false, _) => ProxyProtocol::Off,
            (true, false) => ProxyProtocol::Address,
            (true, true) => ProxyProtocol::AddressAndIdentity,
        }
    }

    /// Whether the connections start with a header.
    fn expects_header(self) -> bool {
        self != ProxyProtocol::Off
    }
}

/// What every accept loop of one listening address shares.
pub(crate) struct AcceptShared {
    /// The Sessions' shared state.
    pub sessions: Arc<SessionShared>,
    /// With TLS, each connection first completes a handshake on its worker, within the CONNECT
    /// deadline.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// With WebSocket, each connection (after TLS, if any) completes a WebSocket handshake for
    /// this path on its worker, within the CONNECT deadline.
    pub websocket: Option<Arc<str>>,
    /// `limits.max_connection_rate`, over all the loops.
    pub rate: Arc<Mutex<ConnectionRate>>,
    /// Cancelled when the broker stops accepting.
    pub stop: CancellationToken,
    /// Whether each connection starts with a PROXY protocol header (read on its worker, before
    /// TLS and WebSocket, within the CONNECT deadline), and what is taken from it; the rate is
    /// then checked for the address it names.
    pub proxy_protocol: ProxyProtocol,
    /// Connections refused for their PROXY protocol header, logged at most once a second.
    pub proxy_refusals: Mutex<LogGate>,
}

impl AcceptShared {
    /// What the accept loops of a listener share: `proxy_protocol` as its configuration says.
    pub(crate) fn new(
        sessions: Arc<SessionShared>,
        tls: Option<Arc<crate::tls::ServerTls>>,
        websocket: Option<Arc<str>>,
        rate: Arc<Mutex<ConnectionRate>>,
        stop: CancellationToken,
        proxy_protocol: ProxyProtocol,
    ) -> Arc<AcceptShared> {
        Arc::new(AcceptShared {
            sessions,
            tls,
            websocket,
            rate,
            stop,
            proxy_protocol,
            proxy_refusals: Mutex::new(LogGate::new(Duration::from_secs(1))),
        })
    }

    /// Counts a connection refused for its PROXY protocol header as a protocol error and logs
    /// it (at most once a second, with how many since the last line). One that closed before
    /// its header was whole (a balancer's bare TCP health check) is only logged at debug level.
    fn proxy_refused(&self, peer: SocketAddr, error: &crate::proxy_protocol::ProxyHeaderError) {
        if let crate::proxy_protocol::ProxyHeaderError::Io(e) = error {
            debug!(addr = %peer, error = %e, "connection closed before its PROXY protocol header");
            return;
        }
        self.sessions.metrics.add_protocol_errors(1);
        // A poisoned lock only means a logging call panicked; the gate is still usable.
        let mut gate = self
            .proxy_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(refused) = gate.event(Instant::now()) {
            warn!(addr = %peer, refused, "connection refused: {error}");
        }
    }
}

/// Accepts connections on `listener` until `shared.stop` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    placement: Placement,
    shared: Arc<AcceptShared>,
) {
    let mut next = 0usize;
    let mut accept_failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: the connection waits in the listen
                // backlog. Back off instead of spinning; log at most once a second.
                accept_failures.failed(&e);
                actix_rt::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        accept_failures.recovered();
        // Behind a proxy, the rate is checked for the client's address once the header names it.
        if !shared.proxy_protocol.expects_header() && !admitted(&shared, peer.ip()) {
            drop(stream);
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!(addr = %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let workers = match &placement {
            Placement::Here => {
                start_session(stream, peer, &shared);
                continue;
            }
            Placement::RoundRobin(workers) => workers,
        };
        // A tokio socket is bound to the runtime that made it: move it as a std socket and
        // register it again inside the worker's runtime.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(addr = %peer, error = %e, "cannot hand over accepted socket");
                continue;
            }
        };
        let worker = &workers[next % workers.len()];
        next = next.wrapping_add(1);
        let shared = shared.clone();
        let spawned = worker.spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => start_session(stream, peer, &shared),
                Err(e) => warn!(addr = %peer, error = %e, "cannot register socket on worker"),
            }
        });
        if !spawned {
            warn!(addr = %peer, "worker arbiter is gone; connection dropped");
        }
    }
}

/// Starts the accept loops of one address: one per worker on the worker's thread when there is a
/// listener for each (`SO_REUSEPORT`), else one on this thread that hands connections round robin
/// to the workers. Returns how many loops run.
pub(crate) fn start_accepting(
    listeners: Vec<std::net::TcpListener>,
    workers: &[ArbiterHandle],
    shared: Arc<AcceptShared>,
) -> std::io::Result<usize> {
    let count = listeners.len();
    if let (true, Some(listener)) = (shared.proxy_protocol.expects_header(), listeners.first()) {
        if let Ok(addr) = listener.local_addr() {
            info!("{addr} expects a PROXY protocol header on every connection: only the proxy should reach it");
        }
    }
    // One listener per worker (with `reuse_port`, or a single worker): each accepts on its own
    // worker's thread, so an accepted socket is not handed between threads.
    if count == workers.len() {
        for (listener, worker) in listeners.into_iter().zip(workers) {
            let shared = shared.clone();
            // Registered inside the worker's runtime: what it accepts belongs to that thread.
            let spawned = worker.spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, Placement::Here, shared).await,
                    Err(e) => {
                        error!(error = %e, "cannot register a listener on its worker")
                    }
                }
            });
            if !spawned {
                return Err(std::io::Error::other("a worker arbiter stopped at start"));
            }
        }
        return Ok(count);
    }
    for listener in listeners {
        let listener = TcpListener::from_std(listener)?;
        let placement = Placement::RoundRobin(workers.to_vec());
        actix_rt::spawn(accept_loop(listener, placement, shared.clone()));
    }
    Ok(count)
}

/// Whether a connection from `ip` is within `limits.max_connection_rate`; counts and logs it if
/// not.
fn admitted(shared: &AcceptShared, ip: IpAddr) -> bool {
    let now = Instant::now();
    // A poisoned lock only means another loop panicked mid-update; the buckets are still usable.
    let mut rate = shared.rate.lock().unwrap_or_else(|e| e.into_inner());
    if rate.admit(ip, now) {
        return true;
    }
    shared.sessions.metrics.add_limits_hit(1);
    rate.refused(ip, now);
    false
}

/// Starts the Session of an accepted socket on the current worker: at once, or after its PROXY
/// protocol header, TLS and WebSocket handshakes (all within the CONNECT deadline).
fn start_session(stream: TcpStream, peer: SocketAddr, shared: &Arc<AcceptShared>) {
    if !shared.proxy_protocol.expects_header() && shared.tls.is_none() && shared.websocket.is_none()
    {
        Session::start(stream, peer, shared.sessions.clone());
        return;
    }
    let shared = shared.clone();
    actix_rt::spawn(async move {
        let deadline = shared.sessions.config.limits.connect_timeout;
        match actix_rt::time::timeout(deadline, handshakes(stream, peer, &shared)).await {
            Ok(Ok(())) => {}
            Ok(Err(Refused::Proxy(e))) => shared.proxy_refused(peer, &e),
            Ok(Err(Refused::Handshake(client, why))) => debug!(addr = %client, "{why}"),
            Err(_) => debug!(addr = %peer, "handshake not done before the CONNECT deadline"),
        }
    });
}

/// Why a connection ended before its Session started.
enum Refused {
    /// Its PROXY protocol header.
    Proxy(crate::proxy_protocol::ProxyHeaderError),
    /// Its TLS or WebSocket handshake, with the client's address (the one a PROXY protocol
    /// header named, if any).
    Handshake(SocketAddr, String),
}

/// Reads the PROXY protocol header (if the listener expects one), completes the TLS and
/// WebSocket handshakes (if it has them), then starts the Session.
async fn handshakes(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    shared: &AcceptShared,
) -> Result<(), Refused> {
    let (peer, identity) = if shared.proxy_protocol.expects_header() {
        let header = crate::proxy_protocol::read_header(&mut stream)
            .await
            .map_err(Refused::Proxy)?;
        let peer = header.client.unwrap_or(socket_peer);
        debug!(addr = %peer, proxy = %socket_peer, "PROXY protocol header read");
        if !admitted(shared, peer.ip()) {
            return Ok(());
        }
        (peer, header.verified_common_name)
    } else {
        (socket_peer, None)
    };
    let sessions = shared.sessions.clone();
    let max_packet = sessions.config.limits.max_packet_size;
    let (tls, identity_as_username) = match &shared.tls {
        Some(tls) => (Some(tls.acceptor()), tls.identity_as_username()),
        None => (None, false),
    };
    let tls_failed =
        |e: std::io::Error| Refused::Handshake(peer, format!("TLS handshake failed: {e}"));
    let ws_failed = |e| Refused::Handshake(peer, format!("WebSocket handshake failed: {e}"));
    match (tls, shared.websocket.as_deref()) {
        (Some(tls), None) => {
            let stream = tls.accept(stream).await.map_err(tls_failed)?;
            if identity_as_username {
                let identity = client_identity(&stream);
                Session::start_certified(stream, peer, sessions, identity);
            } else {
                Session::start_stream(stream, peer, sessions);
            }
        }
        (Some(tls), Some(path)) => {
            let stream = tls.accept(stream).await.map_err(tls_failed)?;
            let identity = identity_as_username.then(|| client_identity(&stream));
            let ws = crate::websocket::accept(stream, path, max_packet, peer)
                .await
                .map_err(ws_failed)?;
            match identity {
                Some(identity) => Session::start_certified(ws, peer, sessions, identity),
                None => Session::start_stream(ws, peer, sessions),
            };
        }
        (None, Some(path)) => {
            let ws = crate::websocket::accept(stream, path, max_packet, peer)
                .await
                .map_err(ws_failed)?;
            Session::start_stream(ws, peer, sessions);
        }
        (None, None) if shared.proxy_protocol == ProxyProtocol::AddressAndIdentity => {
            Session::start_vouched(stream, peer, sessions, identity);
        }
        (None, None) => {
            Session::start(stream, peer, sessions);
        }
    }
    Ok(())
}

/// The Common Name of the certificate the client presented in `stream`'s handshake.
fn client_identity(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let chain = stream.get_ref().1.peer_certificates()?;
    crate::tls::certificate_identity(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut rate = ConnectionRate::new(4, false);
        let t0 = Instant::now();
        assert_eq!(
            (0..6).filter(|_| rate.admit(ip, t0)).count(),
            4,
            "burst of 4"
        );
        assert!(!rate.admit(ip, t0 + Duration::from_millis(100)));
        assert!(
            rate.admit(ip, t0 + Duration::from_millis(300)),
            "one token back after 250 ms"
        );
        assert!(
            rate.admit([10, 0, 0, 2].into(), t0),
            "other addresses are not affected"
        );
        assert!(
            rate.admit([127, 0, 0, 1].into(), t0),
            "loopback is exempt by default"
        );
        assert!(ConnectionRate::new(0, true).admit(ip, t0), "0 turns it off");
    }
}
