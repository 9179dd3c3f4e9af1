//! Switchboard: an MQTT broker on the actor model.
//!
//! Every TCP connection is a [`Session`](session::Session) actor; one [`Registry`](registry::Registry)
//! actor owns the client table, the topic trie, retained messages, stored sessions and the
//! lifecycle hooks. They talk only through typed messages (see [`registry`]).
//!
//! Start one inside an actix `System` with [`Broker`], or on a thread of its own with
//! [`BackgroundBroker`]. Extend it with actors: [`hooks`].

#![warn(missing_docs)]

pub mod auth;
mod background;
mod broker;
pub mod codec;
pub mod config;
pub mod drops;
pub mod hooks;
mod listener;
mod logging;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod registry;
pub mod session;
pub mod tls;
pub mod topic;

pub use background::BackgroundBroker;
pub use broker::{Broker, BrokerError, RunningBroker};
pub use config::Config;
pub use logging::init_logging;
pub use message::{
    ConnectReturnCode, MessageProperties, ProtocolVersion, QoS, SubscriptionOptions,
};
