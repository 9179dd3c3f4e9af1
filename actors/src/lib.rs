//! Device-client actors for Switchboard.
//!
//! - [`ManagedConnection`]: one MQTT connection that reconnects forever (exponential backoff with
//!   jitter), re-subscribes when the broker did not keep the session, queues publishes in a
//!   bounded queue with an overflow strategy (optionally durable on disk), and pipelines QoS 1/2
//!   with an inflight window. It reports [`ConnectionEvent`]s to any registered `Recipient`.
//! - [`Publisher`] and [`Consumer`]: publishing on demand or on an interval, and forwarding the
//!   messages of some filters to a `Recipient`.
//! - [`Device`] and [`DeviceActor`]: a new device model is a small struct that says what it
//!   subscribes to and what it publishes; [`fleet`] has the gate barrier and the radar detector.
//! - [`Requester`]: request/response with a correlation id in the JSON payload and a timeout.
//!
//! `docs/devices.md` builds a device step by step.

#![warn(missing_docs)]

pub mod codec;
mod connection;
mod consumer;
mod device;
pub mod durable;
mod events;
pub mod fleet;
mod options;
mod publisher;
pub mod queue;
mod request;
pub mod transport;

pub use connection::{
    Acknowledge, AddListener, Enqueue, GetSubscriptions, ManagedConnection, PendingCount, Stop,
    StopReport, Subscribe, SubscriptionState, Unsubscribe,
};
pub use consumer::Consumer;
pub use device::{Device, DeviceActor, GetConnection, Outbox};
pub use events::{
    ConnectFailure, ConnectionEvent, DropReason, EnqueueError, LinkDown, MessageId, PendingAck,
    Received,
};
pub use options::{Backoff, BrokerAddress, ConnectionOptions, Overflow, Will};
pub use publisher::{Publish, PublishEvery, Publisher};
pub use request::{Envelope, Request, RequestError, Requester};
pub use switchboard_mqtt::{MessageProperties, ProtocolVersion, QoS};
pub use transport::{Connector, TlsOptions, Transport};
