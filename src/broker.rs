//! Assembling a broker: the Registry on its own Arbiter, worker Arbiters for Sessions, and the
//! listener.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix_rt::task::JoinHandle;
use actix_rt::ArbiterHandle;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::{AccessControl, AccessError};
use crate::bridge::{ApplyBridges, BridgeChanges, BridgeConfig, Bridges, StopBridges};
use crate::config::{Config, ConfigError};
use crate::hooks::{Interceptors, LifecycleHooks};
use crate::listener::{
    bind_listeners, start_accepting, AcceptShared, ConnectionRate, ProxyProtocol,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routing::Routes;
use crate::session::SessionShared;

/// Why a broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The configuration key of that port, so that the message says which one to change.
        key: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The password or ACL file could not be read or parsed.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The TLS certificates or key could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The persistence directory could not be opened or read back.
    #[error(transparent)]
    Persistence(#[from] crate::persistence::PersistenceError),
    /// The broker thread ended before the broker started.
    #[error("the broker thread exited during start-up")]
    ThreadExited,
}

/// A broker to be started: configuration plus the hooks and interceptors to install.
pub struct Broker {
    config: Config,
    hooks: LifecycleHooks,
    interceptors: Interceptors,
}

/// The error of a port that could not be bound: its address and its configuration key.
fn bind_error(addr: SocketAddr, key: &'static str) -> impl FnOnce(std::io::Error) -> BrokerError {
    move |source| BrokerError::Bind { addr, key, source }
}

impl Broker {
    /// A broker with this configuration, no hooks and no interceptors.
    pub fn new(config: Config) -> Self {
        Broker {
            config,
            hooks: LifecycleHooks::new(),
            interceptors: Interceptors::default(),
        }
    }

    /// Adds lifecycle hooks (they are cumulative).
    pub fn hooks(mut self, hooks: LifecycleHooks) -> Self {
        self.hooks.extend(hooks);
        self
    }

    /// Sets the interceptors.
    pub fn interceptors(mut self, interceptors: Interceptors) -> Self {
        self.interceptors = interceptors;
        self
    }

    /// Checks what [`Broker::start`] checks before it binds anything, and stops there: the
    /// configuration's values, the password and ACL files, and the TLS files (the binary's
    /// `switchboard check`). Binds no port and opens no persistence directory. Call inside an
    /// actix `System` (a password file starts the authenticator's thread).
    pub fn check(&self) -> Result<(), BrokerError> {
        Preflight::of(&self.config, self.interceptors.connect.is_some()).map(|_| ())
    }

    /// Binds the listener and starts the actors. Must run inside an actix `System`.
    pub async fn start(self) -> Result<RunningBroker, BrokerError> {
        let config = self.config;
        let Preflight {
            access,
            server_tls,
            cluster_tls,
        } = Preflight::of(&config, self.interceptors.connect.is_some())?;
        let bind = config.listener.bind;
        let addr = SocketAddr::new(config.listener.bind, config.listener.port);
        let worker_count = config.worker_count();
        let per_worker = if config.listener.reuse_port {
            worker_count
        } else {
            1
        };
        let key = "listener.port";
        let listeners = bind_listeners(addr, per_worker).map_err(bind_error(addr, key))?;
        let local_addr = listeners[0].local_addr().map_err(bind_error(addr, key))?;
        let tls = match (config.tls.port, &server_tls) {
            (Some(port), Some(server_tls)) => {
                let acceptor = Arc::clone(server_tls);
                let tls_addr = SocketAddr::new(config.tls.bind.unwrap_or(bind), port);
                let tls_listeners = bind_listeners(tls_addr, per_worker)
                    .map_err(bind_error(tls_addr, "tls.port"))?;
                Some((tls_listeners, acceptor, tls_addr))
            }
            _ => None,
        };
        // MQTT over WebSocket: ws:// and wss:// (with [tls]'s certificate), bound now so that a
        // taken port stops start-up before anything runs.
        let ws_bind = config.websocket.bind.unwrap_or(bind);
        let mut websockets = Vec::new();
        for (port, secure, key) in [
            (config.websocket.port, false, "websocket.port"),
            (config.websocket.tls_port, true, "websocket.tls_port"),
        ] {
            let Some(port) = port else {
                continue;
            };
            let ws_addr = SocketAddr::new(ws_bind, port);
            let acceptor = match secure {
                true => server_tls.clone(),
                false => None,
            };
            let listeners =
                bind_listeners(ws_addr, per_worker).map_err(bind_error(ws_addr, key))?;
            websockets.push((listeners, acceptor, key, ws_addr));
        }

        let metrics = Arc::new(Metrics::default());
        metrics.set_tls_certificate_expiry(
            server_tls
                .as_ref()
                .and_then(|tls| tls.certificate())
                .map(|c| c.not_after),
        );
        let routes = Routes::new(
            config.sessions.shared_subscription_strategy,
            Some(access.clone()),
        );
        let recovered = crate::persistence::open(&config.persistence)?;
        let workers: Vec<Arbiter> = (0..worker_count).map(|_| Arbiter::new()).collect();
        // With a single worker the Registry shares its thread: a connect then crosses no
        // thread. With more, it has one of its own.
        let registry_arbiter = (worker_count > 1).then(Arbiter::new);
        let registry_thread = registry_arbiter
            .as_ref()
            .or(workers.first())
            .map_or_else(Arbiter::current, Arbiter::handle);
        let registry = {
            let config = config.clone();
            let metrics = metrics.clone();
            let hooks = self.hooks;
            let routes = routes.clone();
            Registry::start_in_arbiter(&registry_thread, move |_| {
                Registry::new(&config, metrics, hooks, routes)
            })
        };
        // The Registry takes the store and the recovered state as its first message, before
        // any connection is accepted.
        let mut writer_ended = None;
        let store = match recovered {
            None => None,
            Some(mut recovered) => match recovered.start(metrics.persistence.clone()) {
                Ok((store, ended)) => {
                    writer_ended = Some(ended);
                    registry.do_send(crate::registry::Recover {
                        store: store.clone(),
                        retained: std::mem::take(&mut recovered.retained),
                        sessions: std::mem::take(&mut recovered.sessions),
                        ended: std::mem::take(&mut recovered.ended),
                        wills_of_ended: std::mem::take(&mut recovered.wills_of_ended),
                    });
                    Some(store)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the persistence writer; state is kept in memory only");
                    None
                }
            },
        };
        let stop_accepting = CancellationToken::new();
        let http_state = || {
            crate::http::HttpState::new(
                &config.http,
                registry.clone(),
                metrics.clone(),
                stop_accepting.clone(),
            )
        };
        let http = match crate::http::start(&config.http, http_state) {
            Ok(http) => http,
            Err(source) => {
                for arbiter in workers.iter().chain(&registry_arbiter) {
                    arbiter.stop();
                }
                let addr = SocketAddr::new(config.http.bind, config.http.port);
                let key = "http.port";
                return Err(BrokerError::Bind { addr, key, source });
            }
        };
        let shared = Arc::new(SessionShared::new(
            config,
            registry.clone(),
            routes,
            self.interceptors,
            metrics.clone(),
            access.clone(),
            store,
        ));
        let handles: Vec<_> = workers.iter().map(Arbiter::handle).collect();
        // The bridges start before the listeners, so that their local clients are subscribed
        // before anything from the network arrives. The manager runs on the System's thread;
        // each bridge on a worker.
        let bridges = {
            let environment = crate::bridge::BridgeEnvironment {
                local: crate::bridge::local_connector(shared.clone()),
                limits: shared.config.limits.clone(),
                queue_dir: shared
                    .config
                    .persistence
                    .dir
                    .as_ref()
                    .map(|dir| dir.join("bridges")),
                registry: registry.clone(),
            };
            Bridges::new(environment, metrics.clone(), handles.clone()).start()
        };
        let configured = ApplyBridges(shared.config.bridge.clone());
        match bridges.send(configured).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(BrokerError::ThreadExited),
        }
        let cluster =
            start_cluster(&shared, &registry, &handles, local_addr.port(), cluster_tls).await?;
        let memory_trim = actix_rt::spawn(crate::memory_trim::trim_after_spikes(metrics.clone()));
        if let Some(server_tls) = &server_tls {
            let every = shared.config.tls.watch_interval;
            crate::tls_watch::spawn(
                server_tls.clone(),
                metrics.clone(),
                every,
                stop_accepting.clone(),
            );
        }
        let limits = &shared.config.limits;
        let rate = Arc::new(Mutex::new(ConnectionRate::new(
            limits.max_connection_rate,
            limits.rate_limit_loopback,
        )));
        let ws_path: Arc<str> = Arc::from(shared.config.websocket.path.as_str());
        let config = &shared.config;
        let accept_shared = |tls, websocket, proxy_protocol| {
            AcceptShared::new(
                shared.clone(),
                tls,
                websocket,
                rate.clone(),
                stop_accepting.clone(),
                proxy_protocol,
            )
        };
        let listener = &config.listener;
        let proxied = ProxyProtocol::of(listener.proxy_protocol, listener.use_identity_as_username);
        let accepting = accept_shared(None, None, proxied);
        let loops =
            start_accepting(listeners, &handles, accepting).map_err(bind_error(addr, key))?;
        info!(
            workers = worker_count,
            listeners = loops,
            "switchboard listening on {local_addr}"
        );
        let tls_local_addr = match tls {
            Some((tls_listeners, acceptor, asked)) => {
                let key = "tls.port";
                let tls_addr = tls_listeners[0]
                    .local_addr()
                    .map_err(bind_error(asked, key))?;
                let proxied = ProxyProtocol::of(config.tls.proxy_protocol, false);
                let accepting = accept_shared(Some(acceptor), None, proxied);
                start_accepting(tls_listeners, &handles, accepting)
                    .map_err(bind_error(tls_addr, key))?;
                info!("switchboard listening for TLS on {tls_addr}");
                Some(tls_addr)
            }
            None => None,
        };
        let (mut websocket_addr, mut websocket_tls_addr) = (None, None);
        for (listeners, acceptor, key, asked) in websockets {
            let ws_addr = listeners[0].local_addr().map_err(bind_error(asked, key))?;
            let scheme = if acceptor.is_some() { "wss" } else { "ws" };
            start_accepting(
                listeners,
                &handles,
                accept_shared(
                    acceptor,
                    Some(ws_path.clone()),
                    ProxyProtocol::of(config.websocket.proxy_protocol, false),
                ),
            )
            .map_err(bind_error(ws_addr, key))?;
            info!("switchboard listening for MQTT over WebSocket on {scheme}://{ws_addr}{ws_path}");
            match scheme {
                "wss" => websocket_tls_addr = Some(ws_addr),
                _ => websocket_addr = Some(ws_addr),
            }
        }
        Ok(RunningBroker {
            local_addr,
            websocket_addr,
            websocket_tls_addr,
            tls_local_addr,
            http,
            access,
            server_tls,
            registry,
            metrics,
            memory_trim,
            stop_accepting,
            workers,
            registry_arbiter,
            bridges,
            cluster,
            writer_ended,
        })
    }
}

/// Starts the cluster link if `[cluster]` names NATS servers, on the last worker, and waits
/// (up to 5 s) until its local client is connected.
async fn start_cluster(
    shared: &Arc<SessionShared>,
    registry: &Addr<Registry>,
    workers: &[ArbiterHandle],
    port: u16,
    tls: Option<switchboard_actors::TlsOptions>,
) -> Result<Option<Addr<crate::cluster::ClusterLink>>, BrokerError> {
    let cluster = &shared.config.cluster;
    let Some(servers) = cluster.servers()? else {
        return Ok(None);
    };
    let node = cluster.node_name(port);
    let environment = crate::cluster::ClusterEnvironment {
        servers,
        tls,
        subjects: crate::cluster::subjects::Subjects::new(&cluster.name, &node),
        node,
        local: crate::bridge::local_connector(shared.clone()),
        limits: shared.config.limits.clone(),
        registry: registry.clone(),
        metrics: shared.metrics.clone(),
        subscribe_wait: cluster.subscribe_wait,
        node_timeout: cluster.node_timeout,
    };
    let (ready, local_ready) = tokio::sync::oneshot::channel();
    let link = crate::cluster::ClusterLink::new(environment, ready);
    let link = match workers.last() {
        Some(worker) => crate::cluster::ClusterLink::start_in_arbiter(worker, |_| link),
        None => link.start(),
    };
    let wait = std::time::Duration::from_secs(5);
    if tokio::time::timeout(wait, local_ready).await.is_err() {
        tracing::warn!("the cluster link's local client did not connect within {wait:?}; going on");
    }
    Ok(Some(link))
}

/// What a broker needs read and checked before it binds anything.
struct Preflight {
    access: Arc<AccessControl>,
    server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// TLS to the cluster's NATS servers (`cluster.tls`).
    cluster_tls: Option<switchboard_actors::TlsOptions>,
}

impl Preflight {
    /// Checks `config` (a connect interceptor stands in for a password file on a public bind),
    /// reads its password, ACL and TLS files (the cluster's too), and looks at the persistence
    /// directory's path without creating or locking it.
    fn of(config: &Config, has_interceptor: bool) -> Result<Preflight, BrokerError> {
        config.validate()?;
        let bind = config.listener.bind;
        let websocket_on = config.websocket.port.is_some() || config.websocket.tls_port.is_some();
        // A plain listener whose every client must bring a certificate name its balancer
        // verified (`listener.use_identity_as_username`) lets nobody in anonymously.
        let plain_open = !bind.is_loopback() && !config.listener.use_identity_as_username;
        let public = plain_open
            || config.tls.bind.is_some_and(|b| !b.is_loopback())
            || (websocket_on && config.websocket.bind.is_some_and(|b| !b.is_loopback()));
        if public
            && config.auth.password_file.is_none()
            && config.auth.allow_anonymous != Some(true)
            && !has_interceptor
        {
            return Err(ConfigError::Invalid {
                key: "auth.allow_anonymous",
                message: format!(
                    "binding {bind} without a password file would let anyone in: set auth.password_file, or auth.allow_anonymous = true to mean it"
                ),
            }
            .into());
        }
        let access = Arc::new(AccessControl::load(&config.auth, bind)?);
        if access.allow_anonymous() && !bind.is_loopback() {
            tracing::warn!(%bind, "anonymous clients are allowed on a non-loopback address");
        }
        // One server configuration for the TLS and `wss://` listeners, so that one reload
        // renews both.
        let server_tls = match config.tls.port.is_some() || config.websocket.tls_port.is_some() {
            true => Some(Arc::new(crate::tls::ServerTls::load(&config.tls)?)),
            false => None,
        };
        let cluster_tls = config.cluster.tls_options()?;
        if let Some(dir) = &config.persistence.dir {
            crate::persistence::check_dir(dir)?;
        }
        Ok(Preflight {
            access,
            server_tls,
            cluster_tls,
        })
    }
}

/// A started broker. Dropping it leaves the broker running until the `System` stops; call
/// [`RunningBroker::stop`] to stop it earlier.
pub struct RunningBroker {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    /// The `ws://` listener's address, if configured.
    websocket_addr: Option<SocketAddr>,
    /// The `wss://` listener's address, if configured.
    websocket_tls_addr: Option<SocketAddr>,
    /// The HTTP server (`[http]`), if enabled.
    http: Option<crate::http::RunningHttp>,
    access: Arc<AccessControl>,
    /// The TLS and `wss://` listeners' certificate, if either is configured.
    server_tls: Option<Arc<crate::tls::ServerTls>>,
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
    /// The memory trim, aborted on stop.
    memory_trim: JoinHandle<()>,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    workers: Vec<Arbiter>,
    /// The Registry's own thread; `None` when it shares the single worker's.
    registry_arbiter: Option<Arbiter>,
    /// The bridges' manager, on the System's thread.
    bridges: Addr<Bridges>,
    /// The cluster link, with `[cluster]`.
    cluster: Option<Addr<crate::cluster::ClusterLink>>,
    /// With `[persistence]`: tells when the writer thread has let go of the directory.
    writer_ended: Option<crate::persistence::WriterEnded>,
}

impl RunningBroker {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the TLS listener, if `[tls]` configures one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The Registry, e.g. to send it [`AddHooks`](crate::registry::AddHooks).
    pub fn registry(&self) -> &Addr<Registry> {
        &self.registry
    }

    /// The address of the `ws://` listener, if `websocket.port` is set.
    pub fn websocket_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// The address of the `wss://` listener, if `websocket.tls_port` is set.
    pub fn websocket_tls_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_tls_addr
    }

    /// The address of the HTTP server (metrics, health), if `[http]` is enabled.
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|http| http.local_addr)
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Re-reads the password and ACL files (the binary does this on SIGHUP). Connections stay;
    /// on an error the old rules stay in force.
    pub fn reload_access(&self) -> Result<(), AccessError> {
        self.access.reload()
    }

    /// Re-reads `[tls]`'s certificate, key, client CA and revocation list files from the paths
    /// the broker started with (the binary does this on SIGHUP), for the TLS and `wss://` handshakes that follow.
    /// Connections already open are not touched; on an error the certificate in use stays.
    /// `None` when no TLS listener is configured.
    pub fn reload_tls(&self) -> Option<Result<(), crate::tls::TlsError>> {
        let server_tls = self.server_tls.as_ref()?;
        Some(crate::tls_watch::reload(server_tls, &self.metrics))
    }

    /// Runs exactly these bridges (the binary does this on SIGHUP with the re-read config file):
    /// added ones start, removed ones stop, changed ones restart. On an error nothing changes.
    pub async fn reload_bridges(
        &self,
        bridges: Vec<BridgeConfig>,
    ) -> Result<BridgeChanges, ConfigError> {
        match self.bridges.send(ApplyBridges(bridges)).await {
            Ok(result) => result,
            Err(_) => Ok(BridgeChanges::default()),
        }
    }

    /// Shuts down gracefully: stops accepting, asks every Session to close (MQTT 5 clients get
    /// DISCONNECT 0x8B Server shutting down; wills are published as for any close the client did
    /// not ask for), waits up to `grace` for the connections to be written out and closed, then
    /// [`stop`](RunningBroker::stop)s.
    pub async fn shutdown(self, grace: std::time::Duration) {
        self.stop_accepting.cancel();
        // Bridges first: what they hold for the remote is written out (or kept on disk).
        let _ = tokio::time::timeout(grace, self.bridges.send(StopBridges)).await;
        if let Some(cluster) = &self.cluster {
            let _ = tokio::time::timeout(grace, cluster.send(crate::cluster::StopCluster)).await;
        }
        if self.registry.send(crate::registry::CloseAll).await.is_ok() {
            let deadline = tokio::time::Instant::now() + grace;
            // The connection count has no event of its own: look at it until it is 0.
            while self.metrics.snapshot().connections_current > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        // Everything changed so far is synced before the process goes.
        let _ = self.registry.send(crate::registry::FlushStore).await;
        self.stop();
    }

    /// Stops every thread the broker started and waits for them to end: the worker and
    /// Registry threads, and with `[persistence]` (up to `within`) the writer, once it has
    /// written what it was given and released the directory's lock, so that a broker started
    /// next on the same directory in this process is not refused as a second one. For use after
    /// the actix System's runner has returned and been dropped (its own tasks, the listeners
    /// among them, hold the store too); [`BackgroundBroker`](crate::BackgroundBroker) does so
    /// when dropped.
    pub fn stop_and_wait(self, within: std::time::Duration) {
        self.stop_accepting.cancel();
        for arbiter in self.workers.into_iter().chain(self.registry_arbiter) {
            arbiter.stop();
            let _ = arbiter.join();
        }
        if let Some(ended) = self.writer_ended {
            if !ended.wait(within) {
                tracing::warn!(waited = ?within, "the persistence writer has not ended: its directory may stay locked for a while");
            }
        }
        info!(addr = %self.local_addr, "switchboard stopped");
    }

    /// Stops accepting, drops every connection and stops the actors' threads at once.
    pub fn stop(self) {
        self.stop_accepting.cancel();
        if let Some(http) = &self.http {
            http.stop();
        }
        self.memory_trim.abort();
        for worker in &self.workers {
            worker.stop();
        }
        if let Some(registry_arbiter) = &self.registry_arbiter {
            registry_arbiter.stop();
        }
        info!(addr = %self.local_addr, "switchboard stopped");
    }
}
