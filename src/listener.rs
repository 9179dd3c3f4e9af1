//! The listener: accepts TCP connections and starts one Session per connection, round robin over
//! the worker Arbiters (one thread each).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_rt::ArbiterHandle;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::session::{Session, SessionShared};

/// Per-source-address token buckets for `limits.max_connection_rate`.
struct ConnectionRate {
    rate: f64,
    include_loopback: bool,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    refused_since_log: u64,
    last_log: Option<Instant>,
}

impl ConnectionRate {
    fn new(rate: u32, include_loopback: bool) -> Self {
        ConnectionRate {
            rate: f64::from(rate),
            include_loopback,
            buckets: HashMap::new(),
            refused_since_log: 0,
            last_log: None,
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
        self.refused_since_log += 1;
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            warn!(addr = %ip, refused = self.refused_since_log, rate = self.rate, "connection refused: over the per-address connection rate");
            self.refused_since_log = 0;
            self.last_log = Some(now);
        }
    }
}

/// How long the accept loop waits after a failed accept before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Failed accepts since the last log line about them.
#[derive(Default)]
struct AcceptFailures {
    since_log: u64,
    last_log: Option<Instant>,
}

impl AcceptFailures {
    fn failed(&mut self, error: &std::io::Error) {
        self.since_log += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        if crate::fd_limit::is_out_of_descriptors(error) {
            warn!(
                error = %error,
                failed_accepts = self.since_log,
                "cannot accept: out of file descriptors; new connections wait in the listen \
                 backlog until some close (raise the hard RLIMIT_NOFILE for more)"
            );
        } else {
            warn!(error = %error, failed_accepts = self.since_log, "accept failed");
        }
        self.since_log = 0;
        self.last_log = Some(now);
    }

    fn recovered(&mut self) {
        if self.last_log.take().is_some() {
            info!("accepting connections again");
            self.since_log = 0;
        }
    }
}

/// Accepts connections until the task is aborted. With `tls`, each connection first completes a
/// TLS handshake on its worker, within the CONNECT deadline.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    workers: Vec<ArbiterHandle>,
    shared: Arc<SessionShared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limits = &shared.config.limits;
    let mut rate = ConnectionRate::new(limits.max_connection_rate, limits.rate_limit_loopback);
    let mut next = 0usize;
    let mut accept_failures = AcceptFailures::default();
    loop {
        let (stream, peer) = match listener.accept().await {
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
        let now = Instant::now();
        if !rate.admit(peer.ip(), now) {
            shared.metrics.add_limits_hit(1);
            rate.refused(peer.ip(), now);
            drop(stream);
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!(addr = %peer, error = %e, "cannot set TCP_NODELAY");
        }
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
        let tls = tls.clone();
        let spawned = worker.spawn(async move {
            let stream = match TcpStream::from_std(std_stream) {
                Ok(stream) => stream,
                Err(e) => {
                    return warn!(addr = %peer, error = %e, "cannot register socket on worker")
                }
            };
            let Some(tls) = tls else {
                Session::start(stream, peer, shared);
                return;
            };
            let deadline = shared.config.limits.connect_timeout;
            match actix_rt::time::timeout(deadline, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    Session::start_tls(stream, peer, shared);
                }
                Ok(Err(e)) => debug!(addr = %peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    debug!(addr = %peer, "TLS handshake not done before the CONNECT deadline")
                }
            }
        });
        if !spawned {
            warn!(addr = %peer, "worker arbiter is gone; connection dropped");
        }
    }
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
