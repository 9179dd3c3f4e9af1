//! Extending Switchboard with actors: a lifecycle logger and an access-policy interceptor for the
//! gate/radar fleet.
//!
//! Run it with `cargo run --example hooks` (broker on 127.0.0.1:1883), then try:
//!
//! ```text
//! mosquitto_sub -t 'detrd/#' -v -u app -P fleet-secret
//! mosquitto_pub -t 'legacy/detrd/status/request/1AB.ENTER.DETRD' -m ping -u gate -P fleet-secret
//! mosquitto_pub -t x -m y -u gate -P wrong      # refused: CONNACK 4
//! ```
//!
//! `tests/hooks.rs` runs this file's `install` against a real broker.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use switchboard::hooks::{
    AuthorizeConnect, AuthorizePublish, AuthorizeSubscribe, ClientConnected, ClientDisconnected,
    ClientSubscribed, ClientUnsubscribed, ConnectDecision, Interceptors, LifecycleHooks,
    PublishDecision, SubscribeDecision,
};
use switchboard::{Broker, Config, ConnectReturnCode, QoS};
use tracing::info;

/// Logs every lifecycle event and keeps a live count of connected clients per user-visible id.
#[derive(Default)]
pub struct LifecycleLogger {
    online: HashMap<Arc<str>, std::net::SocketAddr>,
}

impl Actor for LifecycleLogger {
    type Context = Context<Self>;
}

impl Handler<ClientConnected> for LifecycleLogger {
    type Result = ();
    fn handle(&mut self, e: ClientConnected, _: &mut Context<Self>) {
        self.online.insert(e.client_id.clone(), e.peer);
        info!(client_id = %e.client_id, online = self.online.len(), "hook: ClientConnected");
    }
}

impl Handler<ClientDisconnected> for LifecycleLogger {
    type Result = ();
    fn handle(&mut self, e: ClientDisconnected, _: &mut Context<Self>) {
        self.online.remove(&e.client_id);
        info!(client_id = %e.client_id, reason = %e.reason, online = self.online.len(), "hook: ClientDisconnected");
    }
}

impl Handler<ClientSubscribed> for LifecycleLogger {
    type Result = ();
    fn handle(&mut self, e: ClientSubscribed, _: &mut Context<Self>) {
        info!(client_id = %e.client_id, filter = %e.filter, "hook: ClientSubscribedTopic");
    }
}

impl Handler<ClientUnsubscribed> for LifecycleLogger {
    type Result = ();
    fn handle(&mut self, e: ClientUnsubscribed, _: &mut Context<Self>) {
        info!(client_id = %e.client_id, filter = %e.filter, "hook: ClientUnsubscribedTopic");
    }
}

/// The fleet's access policy, as one interceptor actor:
/// - CONNECT: a user name is required and the shared fleet password must match (else CONNACK 4);
///   the user `intruder` is never let in (CONNACK 5).
/// - PUBLISH: old firmware publishes under `legacy/detrd/...`; it is rewritten to `detrd/...`.
///   Nobody may publish under `admin/`: dropped.
/// - SUBSCRIBE: `#` (everything) is refused; QoS 2 is granted as QoS 1.
pub struct FleetPolicy {
    /// The shared password devices present.
    pub password: &'static [u8],
}

impl Actor for FleetPolicy {
    type Context = Context<Self>;
}

impl Handler<AuthorizeConnect> for FleetPolicy {
    type Result = ConnectDecision;
    fn handle(&mut self, q: AuthorizeConnect, _: &mut Context<Self>) -> ConnectDecision {
        match (q.username.as_deref(), q.password.as_deref()) {
            (Some("intruder"), _) => ConnectDecision::Refuse(ConnectReturnCode::NotAuthorized),
            (Some(_), Some(p)) if p == self.password => ConnectDecision::Accept,
            _ => ConnectDecision::Refuse(ConnectReturnCode::BadUsernameOrPassword),
        }
    }
}

impl Handler<AuthorizePublish> for FleetPolicy {
    type Result = PublishDecision;
    fn handle(&mut self, q: AuthorizePublish, _: &mut Context<Self>) -> PublishDecision {
        if q.topic.starts_with("admin/") {
            return PublishDecision::Drop;
        }
        match q.topic.strip_prefix("legacy/") {
            Some(rest) => PublishDecision::Rewrite {
                topic: rest.to_string(),
                payload: q.payload,
            },
            None => PublishDecision::Accept,
        }
    }
}

impl Handler<AuthorizeSubscribe> for FleetPolicy {
    type Result = SubscribeDecision;
    fn handle(&mut self, q: AuthorizeSubscribe, _: &mut Context<Self>) -> SubscribeDecision {
        match (q.filter.as_str(), q.qos) {
            ("#", _) => SubscribeDecision::Refuse,
            (_, QoS::ExactlyOnce) => SubscribeDecision::Rewrite {
                filter: q.filter,
                qos: QoS::AtLeastOnce,
            },
            _ => SubscribeDecision::Accept,
        }
    }
}

/// Starts the two actors and installs them on `broker`. Call inside the broker's actix `System`.
pub fn install(broker: Broker) -> Broker {
    let logger = LifecycleLogger::default().start();
    let policy = FleetPolicy {
        password: b"fleet-secret",
    }
    .start();
    broker
        .hooks(LifecycleHooks::all(&logger))
        .interceptors(Interceptors {
            connect: Some(policy.clone().recipient()),
            publish: Some(policy.clone().recipient()),
            subscribe: Some(policy.recipient()),
        })
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _log = switchboard::init_logging("info");
    let running = install(Broker::new(Config::default())).start().await?;
    info!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    running.stop();
    Ok(())
}
