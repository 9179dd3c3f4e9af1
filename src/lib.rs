//! Switchboard: an MQTT broker on the actor model.
//!
//! Every TCP connection is a [`Session`](session::Session) actor; one [`Registry`](registry::Registry)
//! actor owns the client table, the topic trie, retained messages, stored sessions and the
//! lifecycle hooks. They talk only through typed messages (see [`registry`]). A publish is
//! matched on the worker that read it, against the route table the Registry keeps current
//! ([`routing`]).
//!
//! Start one inside an actix `System` with [`Broker`], or on a thread of its own with
//! [`BackgroundBroker`]. Extend it with actors: [`hooks`].
//!
//! # The modules, one job each
//!
//! | module | its job |
//! | --- | --- |
//! | `broker`, `background` | assemble and start a broker: Registry, worker Arbiters, listeners; shut it down |
//! | `listener` | accept TCP (and TLS, with [`tls`]: the certificate, reloaded on SIGHUP; WebSocket, with [`websocket`]) connections and start a Session for each |
//! | `tls_watch` | reload the TLS files when they change on disk (a renewal), as SIGHUP does |
//! | `proxy_protocol` | read the PROXY protocol header a load balancer sends first: the client's own address |
//! | [`session`] | the actor of one connection: socket, keep-alive, QoS windows, lingering close |
//! | [`registry`] | the actor that owns clients, subscriptions, retained messages, stored sessions, hooks |
//! | [`routing`] | the route table the Registry writes and every worker reads; matching one burst where it was read |
//! | [`session_state`] | what a session keeps across connections, handed between the two |
//! | [`queue`] | a client's bounded QoS 1/2 queue and its overflow policy |
//! | [`codec`], [`message`], [`topic`] | MQTT itself, from the `switchboard-mqtt` crate (`mqtt/`): packets, the application message, topics and the subscription trie |
//! | [`hooks`] | lifecycle events and interceptors: how users extend the broker |
//! | [`http`] | the HTTP server: the dashboard, Prometheus `/metrics`, health checks, the admin API |
//! | [`bridge`] | bridges to other brokers: two managed connections from `switchboard-actors` per bridge, reloaded on SIGHUP |
//! | [`cluster`] | clustering on NATS: the link that shares this node's traffic with the other nodes |
//! | [`auth`] | password file, ACL file, the authenticator thread |
//! | [`config`] | every setting, its default, loading and checking the TOML file |
//! | [`persistence`] | durable state: the log of changes, its writer thread, recovery at start, backups |
//! | [`metrics`], [`traffic`], [`drops`] | counters (traffic per worker thread); messages dropped for slow clients, with rate-limited warnings |
//! | `logging` | the `tracing` set-up of the binary and the examples |
//! | `log_gate` | at most one log line per interval about an event that comes in floods |

#![warn(missing_docs)]

pub mod auth;
mod background;
pub mod bridge;
mod broker;
pub mod cluster;
pub mod config;
pub mod drops;
pub mod fd_limit;
pub mod hooks;
pub mod http;
mod listener;
mod log_gate;
mod logging;
pub mod memory_trim;
pub mod metrics;
pub mod persistence;
mod proxy_protocol;
pub mod queue;
pub mod registry;
pub mod routing;
pub mod session;
pub mod session_state;
pub mod tls;
mod tls_watch;
pub mod traffic;
pub mod websocket;

pub use switchboard_mqtt::{codec, message, topic};

pub use background::BackgroundBroker;
pub use broker::{Broker, BrokerError, RunningBroker};
pub use config::Config;
pub use logging::{init_logging, init_logging_as, log_lines_dropped, LogGuard};
pub use message::{
    ConnectReturnCode, MessageProperties, ProtocolVersion, QoS, SubscriptionOptions,
};
