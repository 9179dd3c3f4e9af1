//! Bridges to other brokers (`[[bridge]]`): a site broker forwards chosen topics to a central
//! one and takes others from it, queuing what goes out while the link is down.
//!
//! The [`Bridges`] actor runs the bridges the configuration names, and on
//! [`ApplyBridges`] (start-up, SIGHUP) starts the added ones, stops the removed ones and restarts
//! the changed ones. Each `Bridge` (`link.rs`) is two managed connections from the device
//! actors' crate; `docs/bridges.md` walks through a site/central set-up.

pub mod config;
mod link;
mod status;
mod topics;

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use switchboard_actors::transport::BoxedStream;
use switchboard_actors::Connector;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use config::{BridgeConfig, BridgeProtocol, BridgeTls, BridgeTopic, Direction};
pub use link::BridgeEnvironment;
pub use status::{BridgeSnapshot, BridgeStatus, BridgeStatuses};
pub use topics::TopicMap;

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::registry::{Kick, ListClients};
use crate::session::{Session, SessionShared, INTERNAL_CLIENT_PREFIX};
use link::{Bridge, StopBridge};

/// How long applying bridges waits for their subscriptions on this broker to be answered.
const LOCAL_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An in-process pipe's buffer each way, between a bridge's local client and its Session.
const PIPE_BUFFER: usize = 256 * 1024;

/// A connector that opens an in-process connection to this broker: one end of a pipe goes to a
/// new internal Session on the caller's own thread (a worker: the bridge's), the other to the
/// caller. A message then goes from the bridge's Session to the bridge without crossing threads.
pub fn local_connector(shared: Arc<SessionShared>) -> Connector {
    Connector::new(move || {
        let (client, server) = tokio::io::duplex(PIPE_BUFFER);
        Session::start_internal(server, shared.clone());
        Box::pin(async move { Ok(Box::new(client) as BoxedStream) })
    })
}

/// Messages waiting in an in-process client's queue to be published here; the local side is
/// in-process and never down, so this only absorbs bursts.
const LOCAL_QUEUE: usize = 100_000;

/// Why a message from elsewhere (a bridge's remote, another cluster node) would break one of
/// this broker's `[limits]` if a broker-internal client published it here as it is: over
/// `max_packet_size` once encoded, or a topic over `max_topic_length` or `max_topic_levels`.
/// Such a message is dropped instead: published, it would close the internal client's
/// connection, and again after every reconnect, as the client sends it anew.
pub(crate) fn over_local_limits(
    limits: &crate::config::LimitsConfig,
    topic: &str,
    payload: usize,
    properties: Option<&switchboard_actors::MessageProperties>,
) -> Option<String> {
    let size = link::publish_size_bound(topic, payload, properties);
    if size > limits.max_packet_size {
        return Some(format!("{size} bytes, over limits.max_packet_size"));
    }
    if !limits.topic_within(topic) {
        return Some(format!(
            "a topic of {} bytes and {} levels, over limits.max_topic_length or limits.max_topic_levels",
            topic.len(),
            topic.split('/').count()
        ));
    }
    None
}

/// The options of a broker-internal MQTT 5 client of this broker (a bridge's local side, the
/// cluster link's) over `local`: No Local and Retain As Published on its subscriptions, manual
/// acknowledgements, its client id as its user name (what ACLs see), a deep queue and window.
pub fn in_process_options(
    client_id: &str,
    local: Connector,
    max_packet_size: usize,
) -> switchboard_actors::ConnectionOptions {
    use std::time::Duration;
    let mut options = switchboard_actors::ConnectionOptions::new("in-process", 0, client_id);
    options.protocol = switchboard_actors::ProtocolVersion::V5;
    options.bridge = true;
    options.manual_acks = true;
    options.keep_alive = Duration::from_secs(60);
    // The Session trusts an internal client; the user name is what ACLs see.
    options.credentials = Some((client_id.to_string(), String::new()));
    options.max_packet_size = max_packet_size;
    options.queue_capacity = LOCAL_QUEUE;
    options.inflight = 64;
    options.backoff = switchboard_actors::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
    };
    options.transport = switchboard_actors::Transport::Custom(local);
    options
}

/// Sent by the broker to [`Bridges`] at start-up and on SIGHUP: run exactly these bridges.
/// Checks them all first; on an error nothing changes and the error (naming the bridge and the
/// key) is the answer. Otherwise answers what changed, once every bridge it started is
/// subscribed on this broker (or after 5 s).
#[derive(Debug, Message)]
#[rtype(result = "Result<BridgeChanges, ConfigError>")]
pub struct ApplyBridges(pub Vec<BridgeConfig>);

/// Sent by the broker to [`Bridges`] when it shuts down: stop every bridge, keeping their local
/// sessions (and, with persistence, their queue files) for the next start. Answers when done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopBridges;

/// What an [`ApplyBridges`] changed, by bridge name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeChanges {
    /// Bridges started that were not running.
    pub added: Vec<String>,
    /// Bridges stopped because they are gone from the configuration.
    pub removed: Vec<String>,
    /// Bridges whose settings (or password file) changed: stopped, then started again.
    pub restarted: Vec<String>,
}

/// One running bridge, as the manager knows it.
struct Running {
    config: BridgeConfig,
    password: Option<String>,
    status: Arc<BridgeStatus>,
    bridge: Addr<Bridge>,
}

/// Runs the configured bridges. One per broker; each bridge (with its two connections and its
/// local client's Session) runs on one of the workers, in turn.
pub struct Bridges {
    environment: BridgeEnvironment,
    metrics: Arc<Metrics>,
    running: Vec<Running>,
    workers: Vec<ArbiterHandle>,
    next_worker: usize,
}

impl Bridges {
    /// A manager with no bridges running yet, placing them on `workers`.
    pub fn new(
        environment: BridgeEnvironment,
        metrics: Arc<Metrics>,
        workers: Vec<ArbiterHandle>,
    ) -> Self {
        Bridges {
            environment,
            metrics,
            running: Vec::new(),
            workers,
            next_worker: 0,
        }
    }
}

impl Bridges {
    /// Ends the stored sessions of bridges that are no longer configured (removed while the
    /// broker was down): nothing would resume them, and their queues would grow for ever.
    fn end_orphaned_sessions(&self, ctx: &mut Context<Self>) {
        if self.environment.queue_dir.is_none() {
            return; // without persistence, no session outlives the broker
        }
        let running: Vec<String> = self
            .running
            .iter()
            .map(|r| format!("{INTERNAL_CLIENT_PREFIX}{}", r.config.name))
            .collect();
        let registry = self.environment.registry.clone();
        let list = ListClients {
            offset: 0,
            limit: usize::MAX,
            search: Some(INTERNAL_CLIENT_PREFIX.to_string()),
        };
        let ending = async move {
            let Ok(page) = registry.send(list).await else {
                return;
            };
            for client in page.items {
                let orphan = client.client_id.starts_with(INTERNAL_CLIENT_PREFIX)
                    && !client.connected
                    && !running.contains(&client.client_id);
                if orphan {
                    info!(client_id = %client.client_id, "ending the stored session of a bridge no longer configured");
                    let _ = registry
                        .send(Kick {
                            client_id: client.client_id,
                            remove_session: true,
                        })
                        .await;
                }
            }
        };
        ctx.spawn(ending.into_actor(self));
    }
}

impl Actor for Bridges {
    type Context = Context<Self>;
}

impl Handler<StopBridges> for Bridges {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: StopBridges, _: &mut Context<Self>) -> Self::Result {
        let stopping: Vec<_> = std::mem::take(&mut self.running)
            .into_iter()
            .map(|running| {
                running.bridge.send(StopBridge {
                    end_local_session: false,
                })
            })
            .collect();
        self.metrics.bridges.replace(Vec::new());
        let stopped = async move {
            for stop in stopping {
                let _ = stop.await;
            }
        };
        AtomicResponse::new(Box::pin(stopped.into_actor(self)))
    }
}

impl Handler<ApplyBridges> for Bridges {
    type Result = AtomicResponse<Self, Result<BridgeChanges, ConfigError>>;

    fn handle(&mut self, msg: ApplyBridges, _: &mut Context<Self>) -> Self::Result {
        let wanted = msg.0;
        let secrets = match config::check_all(&wanted) {
            Ok(secrets) => secrets,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let mut changes = BridgeChanges::default();
        let mut stopping = Vec::new();
        let mut kept = Vec::new();
        for running in std::mem::take(&mut self.running) {
            let same = wanted.iter().zip(&secrets).any(|(config, secret)| {
                *config == running.config && secret.password == running.password
            });
            if same {
                kept.push(running);
                continue;
            }
            let name = running.config.name.clone();
            // The local session outlives a restart with the same topics only: it holds what
            // was routed to the bridge meanwhile.
            let successor = wanted.iter().find(|c| c.name == name);
            let end_local_session =
                successor.is_none_or(|next| next.topics != running.config.topics);
            match successor {
                Some(_) => changes.restarted.push(name),
                None => changes.removed.push(name),
            }
            stopping.push(running.bridge.send(StopBridge { end_local_session }));
        }
        let stopped = async move {
            for stop in stopping {
                let _ = stop.await;
            }
        };
        let started = stopped.into_actor(self).map(move |(), act, ctx| {
                let mut running = Vec::with_capacity(wanted.len());
                let mut readiness = Vec::new();
                for (config, secret) in wanted.into_iter().zip(secrets) {
                    if let Some(i) = kept.iter().position(|k| k.config.name == config.name) {
                        running.push(kept.swap_remove(i));
                        continue;
                    }
                    if !changes.restarted.contains(&config.name) {
                        changes.added.push(config.name.clone());
                    }
                    let status = Arc::new(BridgeStatus::new(&config.name, &config.address_list()));
                    let password = secret.password.clone();
                    let (ready, local_ready) = oneshot::channel();
                    readiness.push(local_ready);
                    let bridge = Bridge::new(
                        config.clone(),
                        secret,
                        act.environment.clone(),
                        status.clone(),
                        ready,
                    );
                    let bridge = match act.workers.get(act.next_worker % act.workers.len().max(1)) {
                        Some(worker) => Bridge::start_in_arbiter(worker, |_| bridge),
                        None => bridge.start(),
                    };
                    act.next_worker = act.next_worker.wrapping_add(1);
                    running.push(Running {
                        config,
                        password,
                        status,
                        bridge,
                    });
                }
                act.metrics
                    .bridges
                    .replace(running.iter().map(|r| r.status.clone()).collect());
                act.running = running;
                act.end_orphaned_sessions(ctx);
                if changes != BridgeChanges::default() {
                    info!(added = ?changes.added, removed = ?changes.removed, restarted = ?changes.restarted, "bridges applied");
                }
                (changes, readiness)
            });
        // Answered once every started bridge is subscribed here, so that the broker accepts
        // no connection whose messages a bridge would miss.
        let ready = started.then(|(changes, readiness), act, _| {
            async move {
                let all = futures_util::future::join_all(readiness);
                if tokio::time::timeout(LOCAL_READY_WAIT, all).await.is_err() {
                    warn!(
                        "a bridge's subscriptions on this broker were not answered within {LOCAL_READY_WAIT:?}; going on"
                    );
                }
                Ok(changes)
            }
            .into_actor(act)
        });
        AtomicResponse::new(Box::pin(ready))
    }
}
