//! The typed messages a [`ManagedConnection`](super::ManagedConnection) takes.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use switchboard_mqtt::QoS;

use crate::events::{ConnectionEvent, EnqueueError, MessageId, PendingAck};

/// Sent by the application (or a Publisher / Device) to a `ManagedConnection`: queue a message
/// for publishing. Answers its id, or why it was not taken.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<MessageId, EnqueueError>")]
pub struct Enqueue {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties; dropped on a 3.1.1 connection.
    pub properties: Option<Box<switchboard_mqtt::MessageProperties>>,
    /// (5.0) Message Expiry Interval in seconds, counted from now: sent as what remains of it
    /// [MQTT-3.3.2-6], and a message still queued when it runs out is dropped
    /// ([`DropReason::Expired`](crate::DropReason)). Not sent on a 3.1.1 connection.
    pub expiry: Option<u32>,
}

impl Enqueue {
    /// A non-retained message.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Enqueue {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: None,
            expiry: None,
        }
    }

    /// The same message with MQTT 5 properties.
    pub fn with_properties(mut self, properties: switchboard_mqtt::MessageProperties) -> Self {
        self.properties = Some(Box::new(properties));
        self
    }
}

/// Sent by anyone to a `ManagedConnection`: how many enqueued messages are not yet delivered
/// (queued plus in flight); the old client's `PendingApplicationMessagesCount`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct PendingCount;

/// Sent by the application (or a Consumer / Device) to a `ManagedConnection`: subscribe now and
/// after every reconnect on which the broker did not keep the session.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Topic filter.
    pub filter: String,
    /// Requested QoS.
    pub qos: QoS,
}

/// Sent by the application to a `ManagedConnection`: drop a subscription.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// Topic filter.
    pub filter: String,
}

/// A subscription as the connection tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionState {
    /// QoS asked for.
    pub requested: QoS,
    /// What the broker's last SUBACK said: `None` while unanswered (or since a reconnect without
    /// session), `Some(None)` refused, `Some(Some(qos))` granted.
    pub granted: Option<Option<QoS>>,
}

/// Sent by anyone to a `ManagedConnection`: the subscriptions and what the broker granted.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BTreeMap<String, SubscriptionState>")]
pub struct GetSubscriptions;

/// Sent by anyone to a `ManagedConnection`: send [`ConnectionEvent`]s to this recipient.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddListener(pub Recipient<ConnectionEvent>);

/// Sent by the application to a `ManagedConnection`: stop taking messages, try to deliver what is
/// pending within `deadline`, then DISCONNECT and stop. Answers what could not be delivered.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "StopReport")]
pub struct Stop {
    /// How long to keep trying to flush the queue.
    pub deadline: Duration,
}

/// The answer to [`Stop`].
#[derive(Debug, Clone, Default, PartialEq, Eq, MessageResponse)]
pub struct StopReport {
    /// Messages that were not delivered, in order. With a durable queue they stay on disk and are
    /// sent by the next connection that opens it.
    pub undelivered: Vec<MessageId>,
}

/// Sent by a listener of a connection with [`manual_acks`](crate::ConnectionOptions) to that
/// `ManagedConnection`: the message of this token is safe; acknowledge it to the broker
/// (PUBACK, or PUBREC for QoS 2). Tokens are to be sent back in the order they came.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Acknowledge(pub PendingAck);
