//! The listener: accepts TCP connections and starts one Session per connection, round robin over
//! the worker Arbiters (one thread each).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_rt::ArbiterHandle;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

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
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
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
