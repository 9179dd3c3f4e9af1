//! Running a broker on a thread of its own, for embedding in programs that are not actix
//! applications (and for tests).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix::prelude::*;

use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How long dropping a [`BackgroundBroker`] waits for its persistence writer to write what it
/// was given and release the directory.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A broker running in its own actix `System` on a background thread. Dropping it stops the
/// broker and waits for its threads, the persistence writer's included (up to 10 s): a broker
/// started next on the same directory is not refused.
pub struct BackgroundBroker {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    http_local_addr: Option<SocketAddr>,
    /// `ws://` and `wss://` listeners, if configured.
    websocket_addrs: (Option<SocketAddr>, Option<SocketAddr>),
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundBroker {
    /// Starts a broker with this configuration.
    pub fn start(config: Config) -> Result<Self, BrokerError> {
        Self::start_with(config, |broker| broker)
    }

    /// Starts a broker; `configure` runs inside the broker's `System` before start-up, so it can
    /// start hook and interceptor actors there and install them on the [`Broker`].
    pub fn start_with(
        config: Config,
        configure: impl FnOnce(Broker) -> Broker + Send + 'static,
    ) -> Result<Self, BrokerError> {
        let (started_tx, started_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("switchboard".into())
            .spawn(move || {
                let runner = System::new();
                let started = runner.block_on(async move {
                    let broker = configure(Broker::new(config));
                    broker.start().await
                });
                let running = match started {
                    Ok(running) => running,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(BackgroundBroker {
                    local_addr: running.local_addr(),
                    tls_local_addr: running.tls_local_addr(),
                    http_local_addr: running.http_local_addr(),
                    websocket_addrs: (
                        running.websocket_local_addr(),
                        running.websocket_tls_local_addr(),
                    ),
                    registry: running.registry().clone(),
                    metrics: running.metrics(),
                    system: System::current(),
                    thread: None,
                }));
                // The System's own tasks (the listeners, the bridges) go with its runner; then
                // the broker's threads end, and the store's writer lets go of its directory.
                let _ = runner.run();
                running.stop_and_wait(WRITER_GRACE);
            })
            .map_err(|_| BrokerError::ThreadExited)?;
        let mut broker = started_rx.recv().map_err(|_| BrokerError::ThreadExited)??;
        broker.thread = Some(thread);
        Ok(broker)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the TLS listener, if configured.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The address of the HTTP server (metrics, health), if `[http]` is enabled.
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http_local_addr
    }

    /// The address of the `ws://` listener, if `websocket.port` is set.
    pub fn websocket_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_addrs.0
    }

    /// The address of the `wss://` listener, if `websocket.tls_port` is set.
    pub fn websocket_tls_local_addr(&self) -> Option<SocketAddr> {
        self.websocket_addrs.1
    }

    /// The Registry.
    pub fn registry(&self) -> &Addr<Registry> {
        &self.registry
    }

    /// The broker's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Drop for BackgroundBroker {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
